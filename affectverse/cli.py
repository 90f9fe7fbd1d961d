"""The ``affectverse`` command: one subcommand per job (``affectverse --help`` lists them).

    affectverse train [ARGS]          (the same as python train.py ARGS; --method grpo for GRPO)
    affectverse evaluate --model MODEL (--data-root DIR --benchmarks ... | --manifest FILE) --out DIR ...
    affectverse score --benchmark NAME --labels FILE --predictions FILE ...
    affectverse report --run DIR
    affectverse clips --out DIR --n N
    affectverse predict MODEL CLIPS... [--out preds.jsonl] [--batch-size 4] [--sentiment] [--explain] ...
    affectverse predict MODEL CLIPS... --labels happy,sad,neutral [--trajectory [--ratios 0.1,...,1] --figure F.png]
    affectverse embed MODEL CLIPS... --out emb.safetensors (or .parquet)
    affectverse live MODEL SOURCE --labels a,b,c --out live.jsonl [--realtime] [--figure live.png]
    affectverse export MODEL_OR_TRAIN_OUTPUT OUT_DIR [--eval-summary scores.json] [--repo-id ID [--space]] ...
    affectverse push FOLDER REPO_ID [--private] [--revision REV] [--commit-message MSG] [--dry-run] [--space]
                     [--include-training-state]
    affectverse demo MODEL [--host 127.0.0.1] [--port 7860] [--labels happy,sad,...] [--max-seconds 30]

``predict`` loads ``MODEL`` (a folder or a Hub id) with the project's own classes (the folder's Python files run
only with ``--trust-remote-code``) and writes one JSON line per clip into a prediction store
(:mod:`affectverse.inference.store`: a header with the run's settings, see ``docs/usage.md`` for the fields); it resumes
where an earlier run stopped, refuses to mix settings (``--new-run`` starts a fresh file beside it) and runs on
several GPUs with ``accelerate launch -m affectverse predict ...``. ``export`` writes what a Hub model
repository needs (sharded safetensors, config with ``auto_map``, processor and tokenizer files, the code files and
a model card) and ``push`` uploads what of a folder the model needs; both are :mod:`affectverse.hub`.

Every subcommand that writes follows :mod:`affectverse.ownership`: it writes only what it owns, creates nothing
before its fast checks passed (options, device, model, first batch) and replaces its own earlier output only with
``--overwrite``. An error is one line naming the file or option (``--log-level DEBUG`` adds the traceback).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch
import transformers

from affectverse import demo as demo_page
from affectverse import ownership
from affectverse.default import clips
from affectverse.evaluation import report, runner
from affectverse.hub import BASE_MODEL, SPACE_FOLDER, export_folder, human_size, push_folder, write_space
from affectverse.inference.embed import FORMATS as EMBED_FORMATS
from affectverse.inference.embed import KINDS, EmbedEngine, gather, store_path, write_part
from affectverse.inference.embed import REMEDY as EMBED_REMEDY
from affectverse.inference.embed import Outputs as EmbedOutputs
from affectverse.inference.engine import (
    MODALITIES,
    Engine,
    NonFiniteError,
    Processes,
    Setting,
    checkpoint_record,
    load_model,
    parse_labels,
    predict_to_store,
    resolve_device,
)
from affectverse.inference.live import DEFAULT_WINDOW_SECONDS, Event, live, parse_source
from affectverse.inference.store import fresh_path
from affectverse.ownership import Lock
from affectverse.inference.trajectory import TrajectoryEngine, is_figure, parse_ratios, plot_trajectories
from affectverse.options import non_negative_int, non_negative_number, positive_int, positive_number
from affectverse.scoring import score
from affectverse.scoring.scores import sentiment_from_labels
from affectverse.training import run as training
from processing_affectverse import extract_labels

logger = logging.getLogger("affectverse")

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov")
SUBTITLE_COLUMNS = ("subtitle", "english", "sentence", "text", "chinese")  # first one present is read


# ============================================================================================== predict
def find_clips(paths) -> list[Path]:
    """Video files among ``paths``: files as given, folders searched recursively; absolute, without duplicates."""
    clips = []
    for path in map(Path, paths):
        if path.is_dir():
            clips += sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
        else:
            clips.append(path)  # a missing or unreadable file is recorded as an error, not dropped
    return list(dict.fromkeys(p.absolute() for p in clips))


def read_subtitles(path, column: str | None = None) -> dict[str, str]:
    """``{clip name: subtitle}`` from a CSV with a ``name`` column and ``column`` (default: the first of
    ``SUBTITLE_COLUMNS`` present; MER-UniBench's ``transcription*.csv`` and OV-MERD+'s ``subtitle_eng.csv`` fit)."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        column = column or next((c for c in SUBTITLE_COLUMNS if c in header), None)
        if "name" not in header or column not in header:
            raise ValueError(f"{path}: needs a 'name' column and a subtitle column ({column or SUBTITLE_COLUMNS}); "
                             f"found {header}")
        return {Path(row["name"]).stem: row[column] or "" for row in reader}


def to_records(sentiment: bool, setting, rows: list[dict], results: list[dict]) -> list[dict]:
    """predict's JSON lines for one engine batch: labels (and sentiment) by rule, errors with their reason."""
    records = []
    for row, result in zip(rows, results):
        path = Path(row["name"])
        record = {"path": str(path), "name": path.stem, "status": result["status"]}
        if result["status"] == "error":
            # an empty prediction: affectverse.scoring.score then counts a failed clip as a miss instead of refusing the
            # file
            record.update(error=result["reason"].removeprefix(f"{row['name']}: "), labels=[])
            if sentiment:
                record["sentiment"] = "neutral"
        else:
            labels = extract_labels(result["answer"])
            record.update(labels=labels, primary=labels[0] if labels else None)
            if sentiment:
                record["sentiment"] = sentiment_from_labels(labels)
            if "belief_attention" in result:
                record["belief_attention"] = result["belief_attention"]
            if "label_scores" in result:  # --labels: the closed-set reading beside the free text
                record.update(label=result["label"], label_scores=result["label_scores"])
            record["answer"] = result["answer"]
        record["seconds"] = result["seconds"]
        records.append(record)
    return records


def _file_hash(path) -> str | None:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None


def predict(args) -> int:
    procs = Processes()
    clips, out = find_clips(args.clips), Path(args.out)
    if args.new_run:  # the main process's choice holds for every process
        out = Path(procs.from_main(str(fresh_path(out) if out.exists() else out)))
        logger.info("--new-run: a fresh run in %s", out)
    rows = clip_rows(clips, args)
    modality = MODALITIES["avt" if args.audio == "video" else "vt"]
    labels = parse_labels(args.labels)
    ratios = parse_ratios(args.ratios) if args.trajectory else (1.0,)
    if args.figure and not (args.trajectory and labels):
        raise ValueError("--figure draws label scores over the observed fraction: it needs --trajectory and --labels")
    if args.figure:  # a file of someone else's named --figure is refused before anything runs
        ownership.check_file(args.figure, is_figure, "predict --figure", option="--figure")
    device, dtype = resolve_device(args.device, args.dtype)
    record = {"model": checkpoint_record(args.model), "dtype": str(dtype).replace("torch.", ""),
              "generation": {"max_new_tokens": args.max_new_tokens, "do_sample": False},
              "extractor": {"name": "rule"}, "sentiment": args.sentiment, "explain": args.explain,
              "subtitles": {"sha256": _file_hash(args.subtitle_file), "column": args.subtitle_column},
              # recorded only when used, so a file of an earlier version (without these fields) still resumes
              **({"labels": labels} if labels else {}), **({"trajectory": list(ratios)} if args.trajectory else {})}
    counts = {"ok": 0, "error": 0}

    def make_engine():
        model, processor = load_model(args.model, device, dtype, args.trust_remote_code)
        logger.info("loaded %s (%s, %s)", args.model, device, dtype)
        kind = TrajectoryEngine if args.trajectory else Engine
        return kind(model, processor, args.max_new_tokens, args.batch_size, args.num_workers, args.explain,
                    labels=labels)

    def records(setting, rows, results):
        found = to_records(args.sentiment, setting, rows, results)
        for r in found:
            counts[r["status"]] += 1
        return found

    start = time.perf_counter()
    work = [(Setting(modality, r), row) for row in rows for r in ratios]  # a trajectory: a clip's ratios together
    _, store, n_run = predict_to_store(out, record, args.model, ("path",), work, lambda row: (row["name"],),
                                       make_engine, records, retry_errors=args.retry_errors, desc="predicting")
    ok, errors = procs.total(counts["ok"]), procs.total(counts["error"])  # every process's clips
    if procs.main:
        per_clip = (time.perf_counter() - start) / max(n_run, 1)
        what = f"{len(ratios)} ratios x " if args.trajectory else ""
        print(f"affectverse predict: {ok} predicted, {errors} errors, {len(work) - n_run} already in {out} "
              f"({what}{len(clips)} clips; {per_clip:.3f} s/prediction)"
              f"{'' if procs.world == 1 else f', {procs.world} processes'}")
        if args.figure:
            curves = {}
            for row in rows:  # this command's clips and ratios, ok or not
                for setting, _ in work[:len(ratios)]:
                    r = store.records.get((setting.id, row["name"]))
                    if r is not None and r["status"] == "ok":
                        curves.setdefault(row["name"], []).append(r)
            print(f"affectverse predict: figure {plot_trajectories(curves, args.figure, labels, source=out)}")
    return 0


def clip_rows(clips, args) -> list[dict]:
    """Engine rows of the clips: the video, its own track (or no audio) and the subtitle of --subtitle-file."""
    subtitles = read_subtitles(args.subtitle_file, args.subtitle_column) if args.subtitle_file else {}
    return [{"name": str(clip), "video": str(clip), "audio": "", "subtitle": subtitles.get(clip.stem, "")}
            for clip in clips]


# ============================================================================================== embed
def embed(args) -> int:
    out, procs = Path(args.out), Processes()
    if out.suffix not in EMBED_FORMATS:
        raise ValueError(f"--out {out}: must end in {' or '.join(EMBED_FORMATS)}")
    clips = find_clips(args.clips)
    stems = [clip.stem for clip in clips]
    twins = sorted({str(c) for c in clips if stems.count(c.stem) > 1})
    if twins:  # the output is keyed by clip name
        raise ValueError(f"clips with the same file name (the output's key): {twins}")
    rows = clip_rows(clips, args)
    setting = Setting(MODALITIES["avt" if args.audio == "video" else "vt"])
    device, dtype = resolve_device(args.device, args.dtype)
    record = {"model": checkpoint_record(args.model), "dtype": str(dtype).replace("torch.", ""), "embed": list(KINDS),
              "subtitles": {"sha256": _file_hash(args.subtitle_file), "column": args.subtitle_column}}
    outputs = EmbedOutputs(out, record, args.overwrite) if procs.main else None  # foreign or other run: refused
    started: list[bool] = []

    def make_engine():
        model, processor = load_model(args.model, device, dtype, args.trust_remote_code)
        return EmbedEngine(model, processor, 1, args.batch_size, args.num_workers)

    def records(setting, rows, results):
        if not started and procs.main:  # the first batch went through: the earlier outputs (--overwrite) go
            outputs.begin()
            started.append(True)
        ok = [(row, r) for row, r in zip(rows, results) if r["status"] == "ok"]
        part = write_part(out, [Path(row["name"]).stem for row, _ in ok], [r["vectors"] for _, r in ok]) if ok else None
        found, index = [], 0
        for row, r in zip(rows, results):
            rec = {"path": row["name"], "name": Path(row["name"]).stem, "status": r["status"], "seconds": r["seconds"]}
            if r["status"] == "ok":
                rec.update(part=part, index=index)
                index += 1
            else:
                rec["error"] = r["reason"]
            found.append(rec)
        return found

    if outputs is not None:
        outputs.set_aside()
    try:
        _, store, n_run = predict_to_store(store_path(out), record, args.model, ("path",), [(setting, r) for r in rows],
                                           lambda row: (row["name"],), make_engine, records,
                                           retry_errors=args.retry_errors, desc="embedding",
                                           remedy=EMBED_REMEDY)
    except BaseException:
        if outputs is not None:
            outputs.restore()  # nothing was written: the earlier outputs stay as they were
        raise
    if procs.main:
        if outputs.aside:  # nothing to compute (no clips): the earlier outputs are replaced all the same
            outputs.begin()
        done = [r for key, r in store.records.items() if key[0] == setting.id]  # this command's and earlier ones'
        ours = {row["name"] for row in rows}
        with Lock(store_path(out)):
            gather(out, done, record, list(store.records.values()))
        errors = sum(r["status"] == "error" for r in done)
        mine = [r for r in done if r["path"] in ours]
        print(f"affectverse embed: {len(done) - errors} clips in {out}, {errors} errors ({n_run} computed now, "
              f"{len(mine) - n_run} of this command's from {store_path(out)}, {len(done) - len(mine)} from earlier "
              "commands)")
    return 0


# ============================================================================================== live
class LiveLog:
    """live's JSON-lines file: created only when absent, a header line, then one line per reading or event, each
    written whole by one ``os.write`` on an append-only descriptor (a kill leaves every line written complete)."""

    def __init__(self, path: Path, header: dict):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        except FileExistsError:
            raise ValueError(f"--out {path} exists; choose another file (a live run never writes into one it "
                             "did not start)") from None
        self.write({"type": "header", **header})

    def write(self, record: dict):
        os.write(self.fd, (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))

    def close(self):
        os.close(self.fd)

    def readings(self) -> list[dict]:
        with open(self.path, encoding="utf-8") as fh:
            return [r for r in map(json.loads, fh) if r.get("type") == "reading"]


class StatusLine:
    """The one-line live status on a terminal (rewritten in place); elsewhere a log line every 30 s."""

    def __init__(self, file=None):
        self.file = file if file is not None else sys.stderr
        self.tty = getattr(self.file, "isatty", lambda: False)()
        self.last = 0.0

    def show(self, item, chunk_seconds: float):
        if isinstance(item, Event):
            text = f"[{item.seconds:7.1f} s] {item.kind}: {item.detail}" + (
                f" ({item.waited:g} s)" if item.waited else "")
        else:
            scores = sorted((item.label_scores or {}).items(), key=lambda kv: -kv[1])[:3]
            top = "  ".join(f"{k} {v:.2f}" for k, v in scores) or (item.answer or "")[:40]
            shift = "-" if item.belief_shift is None else f"{item.belief_shift:.3f}"
            text = (f"[{item.seconds:7.1f} s] {top} | belief shift {shift} | {item.latency:.2f} s/update "
                    f"(x{item.latency / chunk_seconds:.2f} real time)"
                    + (f" | {item.dropped_frames} frames dropped" if item.dropped_frames else ""))
        if self.tty:
            self.file.write("\r" + text[:200].ljust(120))
            self.file.flush()
        elif isinstance(item, Event) or time.monotonic() - self.last >= 30:
            self.last = time.monotonic()
            logger.info("%s", text)

    def close(self):
        if self.tty:
            self.file.write("\n")
            self.file.flush()


def parse_options(items) -> dict:
    """``["video_size=640x480", "framerate=30"]`` -> an FFmpeg options dict."""
    options = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--source-option {item!r}: expected KEY=VALUE (an FFmpeg input option)")
        options[key.strip()] = value.strip()
    return options


def live_command(args) -> int:
    out = Path(args.out)
    labels = parse_labels(args.labels)
    if out.exists():
        raise ValueError(f"--out {out} exists; choose another file (a live run never writes into one it did not "
                         "start)")
    if args.figure and not labels:
        raise ValueError("--figure draws label scores over time: it needs --labels")
    if args.figure:  # a file of someone else's named --figure is refused before anything runs
        ownership.check_file(args.figure, is_figure, "live --figure", option="--figure")
    parse_source(args.source)  # a bad SOURCE or option is named before the model loads
    parse_options(args.source_option)
    device, dtype = resolve_device(args.device, args.dtype)
    model, processor = load_model(args.model, device, dtype, args.trust_remote_code)
    readings = live(model, processor, args.source, labels, args.modality, args.subtitle or "",
                    window_seconds=args.window or None, max_new_tokens=args.max_new_tokens, realtime=args.realtime,
                    follow=args.follow, stall_timeout=args.stall_timeout, give_up=args.give_up,
                    max_seconds=args.max_seconds, options=parse_options(args.source_option))
    first = next(readings, None)  # the session and the source are set up (and checked) before the file exists
    header = {"model": checkpoint_record(args.model), "model_path": args.model, "source": args.source,
              "source_options": parse_options(args.source_option), "realtime": args.realtime, "follow": args.follow,
              "labels": labels, "modality": args.modality, "subtitle": args.subtitle or "",
              "window_seconds": args.window or None, "max_new_tokens": args.max_new_tokens, "dtype": str(dtype),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    log, status, seconds = LiveLog(out, header), StatusLine(), 0.0
    chunk = float(model.config.seconds_per_chunk)
    try:
        for item in itertools.chain([first] if first is not None else [], readings):
            log.write(item.record())
            status.show(item, chunk)
            seconds = item.seconds
    except KeyboardInterrupt:
        log.write(Event("end", seconds, "interrupted (Ctrl-C)").record())
    finally:
        readings.close()
        status.close()
        log.close()
    records = log.readings()
    print(f"affectverse live: {len(records)} readings of {args.source} in {out}"
          + (f" ({records[-1]['seconds']:g} s observed, {sum(r['latency'] for r in records) / len(records):.3f} "
             "s/update)" if records else ""))
    if args.figure and records:
        name = args.source if len(args.source) <= 60 else args.source[:57] + "..."
        figure = plot_trajectories({name: records}, args.figure, labels, source=out, x="seconds")
        print(f"affectverse live: figure {figure}")
    return 0


# ============================================================================================== export
def export(args) -> int:
    source, out = Path(args.model), Path(args.out_dir)
    if source.exists() and out.exists() and source.resolve() == out.resolve():
        raise ValueError("OUT_DIR must differ from the source folder")
    if args.space is not None and not args.repo_id:
        raise ValueError("--space needs --repo-id: the Hub id of the model the Space loads")
    space_id = (args.space or f"{args.repo_id}-demo") if args.space is not None else None
    record = ownership.check_folder(out, "export", option="OUT_DIR")  # a folder of someone else's: refused now
    if record is not None and not args.overwrite:
        raise ownership.OwnershipError(f"OUT_DIR {out} holds an earlier affectverse export; pass --overwrite to "
                                       "replace it (everything it wrote goes), or choose another folder")
    model, processor = load_model(args.model, "cpu", "auto", args.trust_remote_code)
    run_args = source / "run_args.json"
    try:
        training_args = json.loads(run_args.read_text()) if run_args.is_file() else None
    except ValueError as err:
        raise ValueError(f"{run_args}: not valid JSON ({err})") from None
    labels = demo_page.trained_labels(args.model) if space_id else None

    def space(tmp):  # the demo Space goes into the same folder, written (and replaced) with it
        write_space(tmp, args.repo_id, labels, args.space_requirement, model.num_parameters(), args.license)

    export_folder(model, processor, out, args.eval_summary, training_args, args.max_shard_size,
                  overwrite=args.overwrite, then=space if space_id else None, license=args.license,
                  datasets=args.datasets,
                  base_model=args.base_model, repo_id=args.repo_id, space_id=space_id)
    files = ownership.listing(out)
    print(f"affectverse export: {len(files)} files ({human_size(sum(files.values()))}) in {out}")
    if space_id:
        folder = out / SPACE_FOLDER
        print(f"affectverse export: the demo Space in {folder} (affectverse push {folder} {space_id} --space)")
    return 0


# ============================================================================================== push
def push(args) -> int:
    info, uploaded, skipped = push_folder(args.folder, args.repo_id, args.private or None, args.revision,
                                          args.commit_message, args.dry_run, args.include_training_state, args.space)
    total = human_size(sum(size for _, size in uploaded))
    if args.dry_run:
        for path, size in uploaded:
            print(f"{size:>14,d}  {path}")
        for path, size, why in skipped:
            print(f"{'skipped':>14}  {path} ({human_size(size)}): {why}")
        print(f"affectverse push --dry-run: {len(uploaded)} files ({total}) would go to {args.repo_id}; "
              f"{len(skipped)} skipped")
    else:
        print(f"affectverse push: uploaded {len(uploaded)} files ({total}) of {args.folder} to {args.repo_id} "
              f"({getattr(info, 'commit_url', info)}); {len(skipped)} skipped (--dry-run lists them)")
    return 0


# ============================================================================================== demo
def demo(args) -> int:
    problem = demo_page.gradio_missing()
    if problem:
        raise ValueError(f"affectverse demo: {problem}")
    page = demo_page.build_demo(args.model, parse_labels(args.labels), device=args.device,
                                dtype=args.dtype, trust_remote_code=args.trust_remote_code,
                                max_seconds=args.max_seconds, ratios=args.ratios, max_new_tokens=args.max_new_tokens)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own requests to the page, one line each
    demo_page.launch(page, args.host, args.port)
    return 0


# ============================================================================================== main
# Subcommands whose options are parsed by their job's own ``main(argv)`` (``affectverse NAME --help`` shows them).
DELEGATED = {
    "train": (training.main, "fine-tune with LoRA + the EWM (the same as python train.py; --method grpo: "
                             "reinforcement fine-tuning on the emotion-wheel reward)"),
    "evaluate": (runner.main, "evaluate on MER-UniBench or a manifest: predictions, scores, the paper's tables"),
    "score": (score.main, "score a predictions file against MER-UniBench labels"),
    "report": (report.main, "redraw the tables and figures of an evaluation folder"),
    "clips": (clips.main, "generate synthetic clips and their manifest (the embedded default's data)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="affectverse", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                        help="logging level (default INFO); DEBUG also shows the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in DELEGATED.items():
        commands.add_parser(name, help=help_text, add_help=False)

    p = commands.add_parser("predict", help="predict emotions for video clips into a JSON-lines file")
    p.add_argument("model", help="model folder or Hub id (the project's classes load it)")
    p.add_argument("clips", nargs="+", help="video files or folders (searched recursively for "
                                            f"{'/'.join(VIDEO_EXTENSIONS)})")
    p.add_argument("--out", default="preds.jsonl", help="JSON-lines output; clips already in it are skipped (a file "
                                                        "predict did not write is refused)")
    p.add_argument("--batch-size", type=positive_int, default=4)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--max-new-tokens", type=positive_int, default=64)
    p.add_argument("--sentiment", action="store_true", help="add positive/negative/neutral from the labels")
    p.add_argument("--explain", action="store_true", help="add the belief tokens' attention share on video vs audio "
                                                           "(one more forward pass per batch)")
    p.add_argument("--audio", choices=["video", "none"], default="video",
                   help="video: the clip's own sound track (default); none: no audio")
    p.add_argument("--subtitle-file", help="CSV with a name column and subtitles (see read_subtitles)")
    p.add_argument("--subtitle-column", help="subtitle column of --subtitle-file (default: first of "
                                             f"{', '.join(SUBTITLE_COLUMNS)})")
    p.add_argument("--retry-errors", action="store_true", help="run clips recorded as errors again")
    p.add_argument("--num-workers", type=non_negative_int, default=2,
                   help="DataLoader workers decoding media ahead of the model")
    p.add_argument("--new-run", action="store_true", help="start a fresh file beside --out (preds-2.jsonl, ...) "
                                                          "instead of resuming it")
    p.add_argument("--labels", help="comma-separated closed label set: add each label's probability as the answer "
                                    "(label_scores, summing to 1) and the most probable label")
    p.add_argument("--trajectory", action="store_true", help="predict at each observation ratio of --ratios (the "
                                                             "first fraction of the clip), one line per clip and ratio")
    p.add_argument("--ratios", default=None, help="observation ratios of --trajectory (default 0.1,0.2,...,1.0)")
    p.add_argument("--figure", help="with --trajectory and --labels: a PNG of each clip's top label and label "
                                    "curves over the observed fraction (a grid for several clips)")
    p.add_argument("--trust-remote-code", action="store_true", help="load MODEL with its own Python code")
    p.set_defaults(func=predict)

    p = commands.add_parser("embed", help="write per clip the belief tokens and pooled hidden states "
                                          "(safetensors or parquet)")
    p.add_argument("model", help="model folder or Hub id (the project's classes load it)")
    p.add_argument("clips", nargs="+", help="video files or folders")
    p.add_argument("--out", required=True, help="FILE.safetensors or FILE.parquet; FILE.jsonl records progress "
                                                "(a rerun resumes, and FILE gathers every clip of the run) and "
                                                "FILE.parts/ holds the batches")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier embed output of other settings "
                                                            "(FILE, FILE.jsonl, FILE.parts/)")
    p.add_argument("--batch-size", type=positive_int, default=4)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--audio", choices=["video", "none"], default="video")
    p.add_argument("--subtitle-file", help="CSV with a name column and subtitles (see read_subtitles)")
    p.add_argument("--subtitle-column")
    p.add_argument("--retry-errors", action="store_true", help="run clips recorded as errors again")
    p.add_argument("--num-workers", type=non_negative_int, default=2)
    p.add_argument("--trust-remote-code", action="store_true", help="load MODEL with its own Python code")
    p.set_defaults(func=embed)

    p = commands.add_parser("live", help="read a live stream and write a reading (answer, label scores) per 2 s")
    p.add_argument("model", help="model folder or Hub id (the project's classes load it)")
    p.add_argument("source", help="a file, a URL (rtsp://, http://, srt://...) or FORMAT:INPUT for an FFmpeg input "
                                  "format, e.g. lavfi:testsrc=size=64x64:rate=6:duration=8, v4l2:/dev/video0")
    p.add_argument("--labels", help="comma-separated label set: each reading's label scores and top label")
    p.add_argument("--out", default="live.jsonl", help="JSON lines: a header, then one line per reading or event "
                                                      "(stall, end), each flushed as it is made; must not exist")
    p.add_argument("--figure", help="a PNG of the label scores over stream time, drawn when the stream ends")
    p.add_argument("--realtime", action="store_true", help="pace a file at its own speed (default: as fast as "
                                                           "the model reads)")
    p.add_argument("--follow", action="store_true", help="the file is still being written (fragmented mp4, mkv, "
                                                         "ts): wait for more data until --give-up")
    p.add_argument("--modality", choices=["avt", "vt", "at"], default="avt",
                   help="avt: video and audio (default); vt: video only; at: audio only")
    p.add_argument("--subtitle", help="the transcript shown to the model with every reading")
    p.add_argument("--window", type=non_negative_number, default=DEFAULT_WINDOW_SECONDS,
                   help=f"seconds a reading sees at most (default {DEFAULT_WINDOW_SECONDS:g}; flat memory and cost); "
                        "0: the whole stream")
    p.add_argument("--max-new-tokens", type=non_negative_int, default=16,
                   help="free-text answer budget (0: label scores only)")
    p.add_argument("--stall-timeout", type=positive_number, default=5.0,
                   help="report a stall after this many seconds without media")
    p.add_argument("--give-up", type=positive_number, default=60.0,
                   help="end the stream after this many seconds without data")
    p.add_argument("--max-seconds", type=positive_number, help="stop after this much stream time")
    p.add_argument("--source-option", action="append", metavar="KEY=VALUE",
                   help="an FFmpeg input option, repeatable (video_size=640x480, framerate=30, rtsp_transport=tcp)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--trust-remote-code", action="store_true", help="load MODEL with its own Python code")
    p.set_defaults(func=live_command)

    p = commands.add_parser("export", help="write a Hub-ready folder (weights, code, processor, model card)")
    p.add_argument("model", metavar="MODEL_OR_TRAIN_OUTPUT", help="model folder (a train.py output folder works)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="a new or empty folder (or an earlier export, with --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier export in OUT_DIR (nothing of it stays)")
    p.add_argument("--eval-summary", help="MER-UniBench scores for the model-index: affectverse evaluate's "
                                          "scores.json or affectverse score reports")
    p.add_argument("--max-shard-size", default="2GB")
    p.add_argument("--license", default="apache-2.0")
    p.add_argument("--datasets", nargs="+", help="training datasets for the card metadata")
    p.add_argument("--base-model", default=BASE_MODEL)
    p.add_argument("--repo-id", help="Hub id shown in the card's usage snippet")
    p.add_argument("--space", nargs="?", const="", metavar="SPACE_ID",
                   help="also write OUT_DIR/space/, a Hugging Face Space running `affectverse demo` on --repo-id "
                        "(app.py, requirements.txt, README.md with the Space metadata), and link it from the model "
                        "card; SPACE_ID defaults to REPO_ID-demo")
    p.add_argument("--space-requirement", help="the Space's requirements.txt line for this package (default: "
                                               "affectverse[demo]==<this version>; a git URL works too)")
    p.add_argument("--trust-remote-code", action="store_true", help="load MODEL with its own Python code")
    p.set_defaults(func=export)

    p = commands.add_parser("push", help="upload what a model folder's model needs to the Hugging Face Hub")
    p.add_argument("folder", metavar="FOLDER", help="an export folder or a train.py output folder: only the files "
                                                    "from_pretrained, the processor, the code and the card read go")
    p.add_argument("repo_id", metavar="REPO_ID")
    p.add_argument("--private", action="store_true", help="create the repository private (if it is created)")
    p.add_argument("--revision", help="branch to upload to (created if missing)")
    p.add_argument("--commit-message")
    p.add_argument("--dry-run", action="store_true", help="list the files that would go up and those skipped (with "
                                                          "why); no network")
    p.add_argument("--include-training-state", action="store_true",
                   help="also upload a train.py run's checkpoints (optimizer, RNG and scheduler states: pickles), "
                        "adapter/ and run records")
    p.add_argument("--space", action="store_true", help="REPO_ID is a gradio Space (FOLDER: export --space's "
                                                         "OUT_DIR/space)")
    p.set_defaults(func=push)

    p = commands.add_parser("demo", help="a Gradio page for MODEL: a Clip tab and a Live tab (webcam, microphone)")
    p.add_argument("model", help="model folder or Hub id (the project's classes load it)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--labels", help="the page's default label set (default: the model's trained labels when its "
                                    f"folder records them, else {','.join(demo_page.DEFAULT_LABELS)})")
    p.add_argument("--max-seconds", type=positive_number, default=demo_page.MAX_SECONDS,
                   help="longest clip the page reads")
    p.add_argument("--ratios", default=None, help="the Clip tab's observation ratios (default 0.1,0.2,...,1.0)")
    p.add_argument("--max-new-tokens", type=positive_int, default=demo_page.MAX_NEW_TOKENS)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--trust-remote-code", action="store_true", help="load MODEL with its own Python code")
    p.set_defaults(func=demo)
    return parser


def run_job(job, argv, debug: bool = False) -> int:
    """``job(argv)`` with its errors as one line naming what failed (the traceback only with ``debug``);
    ``python train.py`` runs through here too. A process group the job joined (``accelerate launch``) is destroyed
    before the process exits, as accelerate's ``end_training`` does: gloo's threads otherwise abort the exit."""
    try:
        status = job(argv)
    except KeyboardInterrupt:
        logger.error("interrupted; rerun the same command to resume")
        return 130
    except Exception as err:  # noqa: BLE001 - every error ends as one line (and the traceback at DEBUG)
        expected = isinstance(err, (ValueError, OSError, NonFiniteError))  # ours: named and explained
        message = str(err) if expected else f"{type(err).__name__}: {err} (unexpected: --log-level DEBUG shows where)"
        if isinstance(err, OSError) and err.strerror and err.filename is None and err.errno:
            message = err.strerror  # our own OSErrors name the file in their text: no "[Errno N]" prefix
        if debug:
            logger.exception("%s", message)
        else:
            logger.error("%s", message)
        return 2
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return status if isinstance(status, int) else 0  # train returns its results


def main(argv=None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=args.log_level)
    transformers.utils.logging.set_verbosity_warning()
    debug = args.log_level == "DEBUG"
    if args.command in DELEGATED:  # its own parser reads the rest of the command line
        return run_job(DELEGATED[args.command][0], rest, debug)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return run_job(lambda _: args.func(args), None, debug)


if __name__ == "__main__":
    sys.exit(main())
