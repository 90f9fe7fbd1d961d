"""The ``affectverse`` command: one subcommand per job (``affectverse --help`` lists them).

    affectverse train [ARGS]          (the same as python train.py ARGS; --method grpo for GRPO)
    affectverse evaluate --model MODEL (--data-root DIR --benchmarks ... | --manifest FILE) --out DIR ...
    affectverse score --benchmark NAME --labels FILE --predictions FILE ...
    affectverse report --run DIR
    affectverse clips --out DIR --n N
    affectverse predict MODEL CLIPS... [--out preds.jsonl] [--batch-size 4] [--sentiment] [--explain] ...
    affectverse predict MODEL CLIPS... --labels happy,sad,neutral [--trajectory [--ratios 0.1,...,1] --figure F.png]
    affectverse embed MODEL CLIPS... --out emb.safetensors (or .parquet)
    affectverse export MODEL_OR_TRAIN_OUTPUT OUT_DIR [--eval-summary scores.json] [--repo-id ID [--space]] ...
    affectverse push FOLDER REPO_ID [--private] [--revision REV] [--commit-message MSG] [--dry-run] [--space]
    affectverse demo MODEL [--host 127.0.0.1] [--port 7860] [--labels happy,sad,...] [--max-seconds 30]

``predict`` loads ``MODEL`` (a folder or a Hub id) with the project's own classes (the folder's Python files run
only with ``--trust-remote-code``) and writes one JSON line per clip into a prediction store
(:mod:`affectverse.inference.store`: a header with the run's settings, see ``docs/usage.md`` for the fields); it resumes
where an earlier run stopped, refuses to mix settings (``--new-run`` starts a fresh file beside it) and runs on
several GPUs with ``accelerate launch -m affectverse predict ...``. ``export`` writes what a Hub model
repository needs (sharded safetensors, config with ``auto_map``, processor and tokenizer files, the code files and
a model card) and ``push`` uploads a folder; both are :mod:`affectverse.hub`.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

from affectverse import demo as demo_page
from affectverse.default import clips
from affectverse.evaluation import report, runner
from affectverse.hub import BASE_MODEL, export_for_hub, human_size, push_folder, upload_plan, write_space
from affectverse.inference.embed import FORMATS as EMBED_FORMATS
from affectverse.inference.embed import KINDS, EmbedEngine, gather, store_path, write_part
from affectverse.inference.engine import (
    MODALITIES,
    Engine,
    Processes,
    Setting,
    checkpoint_record,
    load_model,
    parse_labels,
    predict_to_store,
    resolve_device,
)
from affectverse.inference.store import fresh_path
from affectverse.inference.trajectory import TrajectoryEngine, parse_ratios, plot_trajectories
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
    if args.batch_size < 1 or args.max_new_tokens < 1 or args.num_workers < 0:
        raise ValueError("--batch-size and --max-new-tokens must be at least 1, --num-workers at least 0")
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
            print(f"affectverse predict: figure {plot_trajectories(curves, args.figure, labels)}")
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

    def make_engine():
        model, processor = load_model(args.model, device, dtype, args.trust_remote_code)
        return EmbedEngine(model, processor, 1, args.batch_size, args.num_workers)

    def records(setting, rows, results):
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

    _, store, n_run = predict_to_store(store_path(out), record, args.model, ("path",), [(setting, r) for r in rows],
                                       lambda row: (row["name"],), make_engine, records,
                                       retry_errors=args.retry_errors, desc="embedding")
    if procs.main:
        wanted = [store.records.get((setting.id, row["name"])) for row in rows]
        done = [r for r in wanted if r is not None]
        gather(out, done)
        errors = sum(r["status"] == "error" for r in done)
        print(f"affectverse embed: {len(done) - errors} clips in {out}, {errors} errors ({n_run} computed now, "
              f"{len(done) - n_run} from {store_path(out)})")
    return 0


# ============================================================================================== export
def export(args) -> int:
    source, out = Path(args.model), Path(args.out_dir)
    if source.exists() and out.exists() and source.resolve() == out.resolve():
        raise ValueError("OUT_DIR must differ from the source folder")
    if args.space is not None and not args.repo_id:
        raise ValueError("--space needs --repo-id: the Hub id of the model the Space loads")
    space_id = (args.space or f"{args.repo_id}-demo") if args.space is not None else None
    if source.is_dir() and not (source / "config.json").is_file():
        hint = " (a train.py run without --export_merged: its adapter/ holds only LoRA + EWM)" \
            if (source / "adapter").is_dir() else ""
        raise ValueError(f"{source} holds no config.json{hint}")
    model, processor = load_model(args.model, "cpu", "auto", args.trust_remote_code)
    run_args = source / "run_args.json"
    training_args = json.loads(run_args.read_text()) if run_args.is_file() else None
    export_for_hub(model, processor, out, args.eval_summary, training_args, args.max_shard_size,
                   license=args.license, datasets=args.datasets, base_model=args.base_model, repo_id=args.repo_id,
                   space_id=space_id)
    files = upload_plan(out)
    print(f"affectverse export: {len(files)} files ({human_size(sum(s for _, s in files))}) in {out}")
    if space_id:
        folder = write_space(out, args.repo_id, demo_page.trained_labels(args.model), args.space_requirement,
                             model.num_parameters(), args.license)
        print(f"affectverse export: the demo Space in {folder} (affectverse push {folder} {space_id} --space)")
    return 0


# ============================================================================================== push
def push(args) -> int:
    result = push_folder(args.folder, args.repo_id, args.private or None, args.revision, args.commit_message,
                         args.dry_run, args.space)
    if args.dry_run:
        for path, size in result:
            print(f"{size:>14,d}  {path}")
        total = sum(size for _, size in result)
        print(f"affectverse push --dry-run: {len(result)} files ({human_size(total)}) would go to {args.repo_id}")
    else:
        print(f"affectverse push: uploaded {args.folder} to {args.repo_id} ({getattr(result, 'commit_url', result)})")
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
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in DELEGATED.items():
        commands.add_parser(name, help=help_text, add_help=False)

    p = commands.add_parser("predict", help="predict emotions for video clips into a JSON-lines file")
    p.add_argument("model", help="model folder or Hub id (the project's classes load it)")
    p.add_argument("clips", nargs="+", help="video files or folders (searched recursively for "
                                            f"{'/'.join(VIDEO_EXTENSIONS)})")
    p.add_argument("--out", default="preds.jsonl", help="JSON-lines output; clips already in it are skipped")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--sentiment", action="store_true", help="add positive/negative/neutral from the labels")
    p.add_argument("--explain", action="store_true", help="add the belief tokens' attention share on video vs audio "
                                                           "(one more forward pass per batch)")
    p.add_argument("--audio", choices=["video", "none"], default="video",
                   help="video: the clip's own sound track (default); none: no audio")
    p.add_argument("--subtitle-file", help="CSV with a name column and subtitles (see read_subtitles)")
    p.add_argument("--subtitle-column", help="subtitle column of --subtitle-file (default: first of "
                                             f"{', '.join(SUBTITLE_COLUMNS)})")
    p.add_argument("--retry-errors", action="store_true", help="run clips recorded as errors again")
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader workers decoding media ahead of the model")
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
                                                "(a rerun resumes) and FILE.parts/ holds the batches")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--audio", choices=["video", "none"], default="video")
    p.add_argument("--subtitle-file", help="CSV with a name column and subtitles (see read_subtitles)")
    p.add_argument("--subtitle-column")
    p.add_argument("--retry-errors", action="store_true", help="run clips recorded as errors again")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--trust-remote-code", action="store_true", help="load MODEL with its own Python code")
    p.set_defaults(func=embed)

    p = commands.add_parser("export", help="write a Hub-ready folder (weights, code, processor, model card)")
    p.add_argument("model", metavar="MODEL_OR_TRAIN_OUTPUT", help="model folder (a train.py output folder works)")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--eval-summary", help="MER-UniBench scores for the model-index: affectverse.evaluation.runner's scores.json or "
                                          "affectverse.scoring.score reports")
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

    p = commands.add_parser("push", help="upload an exported folder to the Hugging Face Hub")
    p.add_argument("folder", metavar="FOLDER")
    p.add_argument("repo_id", metavar="REPO_ID")
    p.add_argument("--private", action="store_true", help="create the repository private (if it is created)")
    p.add_argument("--revision", help="branch to upload to (created if missing)")
    p.add_argument("--commit-message")
    p.add_argument("--dry-run", action="store_true", help="list the files and sizes that would go up; no network")
    p.add_argument("--space", action="store_true", help="REPO_ID is a gradio Space (FOLDER: export --space's "
                                                         "OUT_DIR/space)")
    p.set_defaults(func=push)

    p = commands.add_parser("demo", help="a Gradio page for MODEL: a Clip tab and a Live tab (webcam, microphone)")
    p.add_argument("model", help="model folder or Hub id (the project's classes load it)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--labels", help="the page's default label set (default: the model's trained labels when its "
                                    f"folder records them, else {','.join(demo_page.DEFAULT_LABELS)})")
    p.add_argument("--max-seconds", type=float, default=demo_page.MAX_SECONDS, help="longest clip the page reads")
    p.add_argument("--ratios", default=None, help="the Clip tab's observation ratios (default 0.1,0.2,...,1.0)")
    p.add_argument("--max-new-tokens", type=int, default=demo_page.MAX_NEW_TOKENS)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--trust-remote-code", action="store_true", help="load MODEL with its own Python code")
    p.set_defaults(func=demo)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command in DELEGATED:  # its own parser reads the rest of the command line
        status = DELEGATED[args.command][0](rest)
        return status if isinstance(status, int) else 0  # train returns its results
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=args.log_level.upper())
    if args.command != "push":
        import transformers

        transformers.utils.logging.set_verbosity_warning()
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as err:  # StoreError is a ValueError
        logger.error("%s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
