"""The ``affectverse`` command: predict emotions for clips, export a Hub-ready folder, push it to the Hub.

    affectverse predict MODEL CLIPS... [--out preds.jsonl] [--batch-size 4] [--sentiment] [--explain] ...
    affectverse export MODEL_OR_TRAIN_OUTPUT OUT_DIR [--eval-summary scores.json] [--max-shard-size 2GB] ...
    affectverse push FOLDER REPO_ID [--private] [--revision REV] [--commit-message MSG] [--dry-run]

``predict`` loads ``MODEL`` (a folder or a Hub id) with ``AutoModelForCausalLM`` / ``AutoProcessor`` and
``trust_remote_code=True``, exactly as a Hub user would, and writes one JSON line per clip (see
``docs/usage.md`` for the fields); it resumes where an earlier run stopped. ``export`` writes what a Hub model
repository needs (sharded safetensors, config with ``auto_map``, processor and tokenizer files, the code files and
a model card) and ``push`` uploads a folder; both are :mod:`benchmarks.hub`.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from pathlib import Path

from benchmarks.hub import BASE_MODEL, export_for_hub, human_size, push_folder, upload_plan

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


def read_done(out: Path, retry_errors: bool = False) -> set[str]:
    """Paths already in ``out``. Lines cut short by an interrupted run (and, with ``retry_errors``, error lines)
    are removed from the file so that they run again."""
    if not out.is_file():
        return set()
    kept, dropped = [], 0
    for line in out.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or "path" not in record:
            dropped += 1
            continue
        if retry_errors and record.get("status") == "error":
            dropped += 1
            continue
        kept.append(record)
    if dropped:
        logger.warning("%s: removing %d line(s) to run again (incomplete%s)", out, dropped,
                       " or errors" if retry_errors else "")
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")
    return {r["path"] for r in kept}


def resolve_device(device: str, dtype: str):
    """(torch device, torch dtype); ``auto`` picks CUDA when present, and bfloat16 there (float16 without bf16
    support), float32 on the CPU."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        if device.startswith("cuda"):
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            dtype = "float32"
    return torch.device(device), getattr(torch, dtype)


def load_model(name: str, device, dtype):
    """The model and processor of ``name`` (a folder or a Hub id), as a Hub user loads them."""
    from transformers import AutoModelForCausalLM, AutoProcessor

    model = AutoModelForCausalLM.from_pretrained(name, trust_remote_code=True, dtype=dtype).to(device).eval()
    processor = AutoProcessor.from_pretrained(name, trust_remote_code=True)
    return model, processor


def belief_shares(attention) -> list[dict | None]:
    """Per sample, the share of MAMA attention mass on the video and on the audio memory.

    ``attention`` is `(B, 2*N_b, 2*S*N_s)` with the video memory's columns first; rows of unused belief slots
    are zero, so every used belief query counts equally.
    """
    half = attention.shape[-1] // 2
    video, audio = attention[..., :half].float().sum((1, 2)), attention[..., half:].float().sum((1, 2))  # (B,)
    total = video + audio
    return [None if t <= 0 else {"video": round(float(v / t), 4), "audio": round(float(a / t), 4)}
            for v, a, t in zip(video, audio, total)]


class Predictor:
    """Rows in, JSON records out: batched greedy generation, bad clips recorded, optional belief attention."""

    def __init__(self, model, processor, max_new_tokens: int = 64, sentiment: bool = False, explain: bool = False):
        from processing_affectverse import AffectVerseCollator  # the package's; it calls processor.encode/collate

        self.model, self.processor, self.max_new_tokens = model, processor, max_new_tokens
        self.sentiment, self.explain = sentiment, explain
        self.collator = AffectVerseCollator(processor, training=False, on_error="skip")

    def __call__(self, rows: list[dict]) -> list[dict]:
        """Records for ``rows`` (``name`` is the clip path); a batch that fails as a whole is retried clip by clip."""
        try:
            return self._batch(rows)
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as err:  # noqa: BLE001 - one bad clip must not stop a long run
            if len(rows) == 1:
                logger.warning("%s: %s", rows[0]["name"], err)
                return [self._error(rows[0], f"{type(err).__name__}: {err}", 0.0)]
            logger.warning("batch of %d failed (%s: %s); retrying clip by clip", len(rows), type(err).__name__, err)
            return [record for row in rows for record in self([row])]

    def _batch(self, rows):
        import torch

        from benchmarks.scoring import extract_labels, sentiment_from_labels

        start, n_skipped = time.perf_counter(), len(self.collator.skipped)
        try:
            batch = self.collator(rows)
        except ValueError:  # every clip of the batch failed: the reasons are in collator.skipped
            batch = None
        failed = dict(self.collator.skipped[n_skipped:])
        good = [row for row in rows if row["name"] not in failed]
        answers, shares = [], [None] * len(good)
        if good:
            batch = self._to_device(batch)
            with torch.no_grad():
                tokens = self.model.generate(**batch, max_new_tokens=self.max_new_tokens, do_sample=False)
                if self.explain:
                    out = self.model(**batch, output_belief_attention=True, logits_to_keep=1)
                    if out.belief_attention is not None:
                        shares = belief_shares(out.belief_attention)
            answers = self.processor.batch_decode(tokens[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        seconds = (time.perf_counter() - start) / len(rows)
        records = {row["name"]: self._error(row, failed[row["name"]], seconds) for row in rows if row["name"] in failed}
        for row, answer, share in zip(good, answers, shares):
            labels = extract_labels(answer)
            record = {"status": "ok", "labels": labels, "primary": labels[0] if labels else None}
            if self.sentiment:
                record["sentiment"] = sentiment_from_labels(labels)
            if self.explain:
                record["belief_attention"] = share
            records[row["name"]] = self._record(row, **record, answer=answer.strip(), seconds=round(seconds, 4))
        return [records[row["name"]] for row in rows]

    def _to_device(self, batch):
        """Move the batch; only the encoders' inputs take the model's dtype (positions stay float32)."""
        from benchmarks.run import to_device

        return to_device(batch, self.model)

    @staticmethod
    def _record(row, **fields) -> dict:
        path = Path(row["name"])
        return {"path": str(path), "name": path.stem, **fields}

    def _error(self, row, reason: str, seconds: float) -> dict:
        reason = reason.removeprefix(f"{row['name']}: ")  # MediaError and the collator name the file first
        # an empty prediction: benchmarks.score then counts a failed clip as a miss instead of refusing the file
        empty = {"labels": [], "sentiment": "neutral"} if self.sentiment else {"labels": []}
        return self._record(row, status="error", error=reason, **empty, seconds=round(seconds, 4))


def predict(args) -> int:
    from tqdm.auto import tqdm

    if args.batch_size < 1 or args.max_new_tokens < 1:
        raise ValueError("--batch-size and --max-new-tokens must be at least 1")
    clips, out = find_clips(args.clips), Path(args.out)
    done = read_done(out, args.retry_errors)
    todo = [clip for clip in clips if str(clip) not in done]
    logger.info("%d clips: %d already in %s, %d to predict", len(clips), len(clips) - len(todo), out, len(todo))
    counts = {"ok": 0, "error": 0}
    seconds = 0.0
    if todo:
        subtitles = read_subtitles(args.subtitle_file, args.subtitle_column) if args.subtitle_file else {}
        device, dtype = resolve_device(args.device, args.dtype)
        model, processor = load_model(args.model, device, dtype)
        logger.info("loaded %s (%s, %s)", args.model, device, dtype)
        predictor = Predictor(model, processor, args.max_new_tokens, args.sentiment, args.explain)
        audio = "video" if args.audio == "video" else None
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a", encoding="utf-8") as fh, tqdm(total=len(todo), unit="clip", disable=None) as bar:
            for i in range(0, len(todo), args.batch_size):
                rows = [{"name": str(clip), "video": str(clip), "audio": audio,
                         "subtitle": subtitles.get(clip.stem, "")} for clip in todo[i:i + args.batch_size]]
                for record in predictor(rows):
                    fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                    counts[record["status"]] += 1
                    seconds += record["seconds"]
                fh.flush()  # a stopped run loses at most the batch in flight
                bar.update(len(rows))
    per_clip = seconds / max(len(todo), 1)
    print(f"affectverse predict: {counts['ok']} predicted, {counts['error']} errors, {len(clips) - len(todo)} already "
          f"in {out} ({per_clip:.3f} s/clip)")
    return 0


# ============================================================================================== export
def export(args) -> int:
    source, out = Path(args.model), Path(args.out_dir)
    if source.exists() and out.exists() and source.resolve() == out.resolve():
        raise ValueError("OUT_DIR must differ from the source folder")
    if source.is_dir() and not (source / "config.json").is_file():
        hint = " (a train.py run without --export_merged: its adapter/ holds only LoRA + EWM)" \
            if (source / "adapter").is_dir() else ""
        raise ValueError(f"{source} holds no config.json{hint}")
    model, processor = load_model(args.model, "cpu", "auto")
    run_args = source / "run_args.json"
    training_args = json.loads(run_args.read_text()) if run_args.is_file() else None
    export_for_hub(model, processor, out, args.eval_summary, training_args, args.max_shard_size,
                   license=args.license, datasets=args.datasets, base_model=args.base_model, repo_id=args.repo_id)
    files = upload_plan(out)
    print(f"affectverse export: {len(files)} files ({human_size(sum(s for _, s in files))}) in {out}")
    return 0


# ============================================================================================== push
def push(args) -> int:
    result = push_folder(args.folder, args.repo_id, args.private or None, args.revision, args.commit_message,
                         args.dry_run)
    if args.dry_run:
        for path, size in result:
            print(f"{size:>14,d}  {path}")
        total = sum(size for _, size in result)
        print(f"affectverse push --dry-run: {len(result)} files ({human_size(total)}) would go to {args.repo_id}")
    else:
        print(f"affectverse push: uploaded {args.folder} to {args.repo_id} ({getattr(result, 'commit_url', result)})")
    return 0


# ============================================================================================== main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="affectverse", description=__doc__.split("\n\n")[0])
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("predict", help="predict emotions for video clips into a JSON-lines file")
    p.add_argument("model", help="model folder or Hub id (loaded with trust_remote_code)")
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
    p.set_defaults(func=predict)

    p = commands.add_parser("export", help="write a Hub-ready folder (weights, code, processor, model card)")
    p.add_argument("model", metavar="MODEL_OR_TRAIN_OUTPUT", help="model folder (a train.py output folder works)")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--eval-summary", help="MER-UniBench scores JSON (benchmarks.score reports) for the model-index")
    p.add_argument("--max-shard-size", default="2GB")
    p.add_argument("--license", default="apache-2.0")
    p.add_argument("--datasets", nargs="+", help="training datasets for the card metadata")
    p.add_argument("--base-model", default=BASE_MODEL)
    p.add_argument("--repo-id", help="Hub id shown in the card's usage snippet")
    p.set_defaults(func=export)

    p = commands.add_parser("push", help="upload an exported folder to the Hugging Face Hub")
    p.add_argument("folder", metavar="FOLDER")
    p.add_argument("repo_id", metavar="REPO_ID")
    p.add_argument("--private", action="store_true", help="create the repository private (if it is created)")
    p.add_argument("--revision", help="branch to upload to (created if missing)")
    p.add_argument("--commit-message")
    p.add_argument("--dry-run", action="store_true", help="list the files and sizes that would go up; no network")
    p.set_defaults(func=push)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=args.log_level.upper())
    if args.command != "push":
        import transformers

        transformers.utils.logging.set_verbosity_warning()
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as err:
        logger.error("%s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
