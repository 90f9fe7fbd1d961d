"""The ``affectverse`` command: predict emotions for clips, export a Hub-ready folder, push it to the Hub.

    affectverse predict MODEL CLIPS... [--out preds.jsonl] [--batch-size 4] [--sentiment] [--explain] ...
    affectverse export MODEL_OR_TRAIN_OUTPUT OUT_DIR [--eval-summary scores.json] [--max-shard-size 2GB] ...
    affectverse push FOLDER REPO_ID [--private] [--revision REV] [--commit-message MSG] [--dry-run]

``predict`` loads ``MODEL`` (a folder or a Hub id) with ``AutoModelForCausalLM`` / ``AutoProcessor`` and
``trust_remote_code=True``, exactly as a Hub user would, and writes one JSON line per clip (see
``docs/usage.md`` for the fields); it resumes where an earlier run stopped. ``export`` writes what a Hub model
repository needs (sharded safetensors, config with ``auto_map``, processor and tokenizer files, the code files and
a model card); :func:`export_for_hub` does the same from Python (``train.py`` calls it). ``push`` uploads a folder
with ``huggingface_hub``; its network calls are tested against a mocked ``HfApi`` only (``tests/test_cli.py``).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from pathlib import Path

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import filter_repo_objects

logger = logging.getLogger("affectverse")

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov")
SUBTITLE_COLUMNS = ("subtitle", "english", "sentence", "text", "chinese")  # first one present is read
REMOTE_CODE_FILES = ("configuration_affectverse.py", "modeling_affectverse.py", "ewm_affectverse.py",
                     "processing_affectverse.py")
BASE_MODEL = "Qwen/Qwen2.5-Omni-7B"
PAPER = "https://arxiv.org/abs/2605.19950"
# The Hub task that matches what the model does: video (+ audio) + text in, text out. "any-to-any" would promise
# generated audio or images, but AffectVerse keeps only the thinker (no talker): its output is always text.
PIPELINE_TAG = "video-text-to-text"
TAGS = ["affective-computing", "emotion-recognition", "multimodal", "qwen2.5-omni", "custom_code"]
UPLOAD_IGNORE = ["__pycache__", "__pycache__/*", "*/__pycache__/*", "*.pyc", ".ipynb_checkpoints/*"]

# docs/usage.md holds this snippet verbatim (with MODEL = "your-name/affectverse-7b"); tests run it.
USAGE_SNIPPET = """\
from transformers import AutoModelForCausalLM, AutoProcessor

model = AutoModelForCausalLM.from_pretrained("{model}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{model}", trust_remote_code=True)
inputs = processor(video="clip.mp4", audio="video", subtitle="I can't believe it.")
answer = processor.batch_decode(model.generate(**inputs, max_new_tokens=64)[:, inputs["input_ids"].shape[1]:],
                                skip_special_tokens=True)[0]
print(answer)  # e.g. "The character's emotional state is surprise."
"""

# MER-UniBench benchmarks (keys of benchmarks.score) as the model card names them: (dataset, task, split).
MER_UNIBENCH = {
    "mer2023": ("MER2023", "Multimodal emotion recognition", "test1"),
    "mer2024": ("MER2024", "Multimodal emotion recognition", "test1"),
    "meld": ("MELD", "Multimodal emotion recognition", "test"),
    "iemocap": ("IEMOCAP", "Multimodal emotion recognition", "session5"),
    "mosi": ("CMU-MOSI", "Multimodal sentiment analysis", "test"),
    "mosei": ("CMU-MOSEI", "Multimodal sentiment analysis", "test"),
    "sims": ("CH-SIMS", "Multimodal sentiment analysis", "test"),
    "simsv2": ("CH-SIMS v2", "Multimodal sentiment analysis", "test"),
    "ovmerdplus": ("OV-MERD+", "Open-vocabulary emotion recognition", "test"),
}
# (report key, metric type, metric name) per scorer kind; the first entry is the benchmark's main score.
METRICS = {
    "hit": [("main_score", "hit", "HIT (mean over the 5 emotion wheels)"),
            ("closed_set_weighted_f1", "f1", "closed-set weighted F1")],
    "sentiment": [("main_score", "f1", "non-zero weighted F1 (WAF)"), ("acc2", "accuracy", "non-zero Acc-2")],
    "ovmerd": [("main_score", "f1", "emotion-wheel set F-score")],
}

# The paper's training recipe (Appendix A.3), for the model card.
PAPER_RECIPE = [
    ("Backbone", f"{BASE_MODEL} thinker, frozen"),
    ("LoRA", "r=16, alpha=32, dropout 0.05 on the language model's q/k/v/o projections"),
    ("Emotion World Module", "fully trained; d_w=512, N_s=8 future queries, S=3 rollout steps "
                             "(2-layer cross-attention, 8 heads), N_b=4 belief queries (8 with audio and video)"),
    ("Optimiser", "AdamW, lr 2e-4, cosine schedule, 3% linear warm-up, weight decay 0.01"),
    ("Batch", "4 per GPU x 8 gradient-accumulation steps (32 per step), 3 epochs"),
    ("Temporal split", "kappa ~ U[0.7, 1) in training, 1 at inference"),
    ("Modality dropout", "p_drop = 0.15"),
    ("Loss", "L_lm + lambda * L_img with lambda = 1"),
    ("Inputs", "video at 3 fps, 224 x 224; at most 1024 tokens per sample"),
    ("Data", "the merged training sets of the nine MER-UniBench benchmarks"),
]


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
def _merged(model):
    """A peft-wrapped model with LoRA folded in (in place); other models unchanged."""
    if hasattr(model, "peft_config") and hasattr(model, "merge_and_unload"):
        logger.info("merging the LoRA adapter into the model")
        return model.merge_and_unload()
    return model


def _check_pair(model, processor):
    """The processor must be an AffectVerseProcessor with the model's belief settings (names, not isinstance: the
    class may come from the package or from a checkpoint's remote code)."""
    if type(processor).__name__ != "AffectVerseProcessor":
        raise ValueError(f"export needs an AffectVerseProcessor, got {type(processor).__name__}; build one with "
                         "AffectVerseProcessor.from_model_config(model.config, processor)")
    config = model.config
    for key in ("belief_token_id", "num_belief_queries", "injection", "belief_construction"):
        if getattr(processor, key) != getattr(config, key):
            raise ValueError(f"processor {key}={getattr(processor, key)!r} but the model has {getattr(config, key)!r}")


def _norm(name) -> str:
    """A benchmark name reduced to lower-case letters and digits ("CMU-MOSI" -> "cmumosi")."""
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def read_eval_summary(summary) -> dict[str, dict]:
    """``{benchmark key: score report}`` from an evaluation summary: a path to JSON, or already-loaded JSON.

    Accepted: one ``python -m benchmarks.score`` report (``{"benchmark": ..., "main_score": ...}``; with several
    checkpoints its ``best``), a list of them, or ``{benchmark: report or main score}``. Benchmark names are
    matched loosely ("CMU-MOSI", "mosi", "OV-MERD+" all work); scores are on the 0-100 scale of the scorer.
    """
    if isinstance(summary, (str, Path)):
        summary = json.loads(Path(summary).read_text(encoding="utf-8"))
    if isinstance(summary, dict) and "benchmark" in summary:
        summary = [summary]
    if isinstance(summary, list):
        summary = {report["benchmark"]: report for report in summary}
    lookup = {_norm(key): key for key in MER_UNIBENCH} | {_norm(v[0]): key for key, v in MER_UNIBENCH.items()}
    reports = {}
    for name, report in summary.items():
        key = lookup.get(_norm(name))
        if key is None:
            raise ValueError(f"evaluation summary: unknown benchmark {name!r}; expected one of {sorted(MER_UNIBENCH)}")
        report = report if isinstance(report, dict) else {"main_score": report}
        report = report.get("best", report)
        if not isinstance(report.get("main_score"), (int, float)):
            raise ValueError(f"evaluation summary: {name} has no numeric main_score: {report}")
        reports[key] = report
    return reports


def eval_results(reports: dict[str, dict]) -> list[EvalResult]:
    """The model-index entries of the card: every metric each benchmark's report holds, plus the MER-UniBench mean
    when all nine are there."""
    from benchmarks.score import BENCHMARKS

    results = []
    for key, report in reports.items():
        dataset, task, split = MER_UNIBENCH[key]
        for field, metric_type, metric_name in METRICS[BENCHMARKS[key].kind]:
            if isinstance(report.get(field), (int, float)):
                results.append(EvalResult(
                    task_type=PIPELINE_TAG, task_name=task, dataset_type=key, dataset_name=dataset,
                    dataset_split=split, metric_type=metric_type, metric_name=metric_name,
                    metric_value=round(float(report[field]), 2)))
    if set(reports) == set(MER_UNIBENCH):
        mean = sum(float(r["main_score"]) for r in reports.values()) / len(reports)
        results.append(EvalResult(
            task_type=PIPELINE_TAG, task_name="Multimodal emotion understanding", dataset_type="merunibench",
            dataset_name="MER-UniBench", metric_type="mean", metric_name="mean of the nine main scores",
            metric_value=round(mean, 2)))
    return results


def _results_table(reports: dict[str, dict]) -> str:
    if not reports:
        return "No evaluation summary was given when this folder was exported."
    from benchmarks.score import BENCHMARKS

    lines = ["| benchmark | main metric | score | other |", "|---|---|---|---|"]
    for key, report in reports.items():
        metrics = METRICS[BENCHMARKS[key].kind]
        other = ", ".join(f"{name} {report[field]:.2f}" for field, _, name in metrics[1:]
                          if isinstance(report.get(field), (int, float)))
        lines.append(f"| {MER_UNIBENCH[key][0]} | {metrics[0][2]} | {report['main_score']:.2f} | {other} |")
    return "\n".join(lines) + "\n\nScores x100, by the MER-UniBench rules (the project's `benchmarks/score.py`)."


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def _flatten(args) -> dict:
    """Training arguments as flat ``{name: value}`` (a run_args.json record, a dict, or TrainingArguments)."""
    args = args.to_dict() if hasattr(args, "to_dict") else dict(args)
    flat = {}
    for key, value in args.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def model_card(model, reports=None, training_args=None, license="apache-2.0", datasets=None,
               base_model=BASE_MODEL, repo_id=None) -> ModelCard:
    """The model card: Hub metadata (``ModelCardData``, model-index from ``reports``) and a body for users."""
    reports = reports or {}
    results = eval_results(reports)
    data = ModelCardData(
        library_name="transformers", base_model=base_model, pipeline_tag=PIPELINE_TAG, license=license,
        tags=list(TAGS), datasets=list(datasets) if datasets else None,
        model_name="AffectVerse" if results else None, eval_results=results or None,  # model-index only
    )
    config, ewm = model.config, getattr(model, "ewm", None)
    facts = (f"{_count(model.num_parameters())} parameters, of which "
             f"{_count(sum(p.numel() for p in ewm.parameters()) if ewm is not None else 0)} in the Emotion World "
             f"Module (`belief_construction={config.belief_construction!r}`, {config.num_belief_queries} belief "
             f"queries per modality, {config.rollout_steps} rollout steps)")
    run = ""
    if training_args is not None:
        rows = "\n".join(f"| `{k}` | `{json.dumps(v, default=str)}` |" for k, v in _flatten(training_args).items())
        run = ("\n\n<details><summary>This checkpoint's run</summary>\n\n| argument | value |\n|---|---|\n"
               f"{rows}\n\n</details>")
    recipe = "\n".join(f"| {name} | {value} |" for name, value in PAPER_RECIPE)
    body = f"""
# AffectVerse

AffectVerse ([arXiv:2605.19950]({PAPER})) is the Qwen2.5-Omni thinker with an **Emotion World Module**: it reads
the video and audio of a clip, imagines where the affect is heading, and injects the result as belief tokens
before the model answers. It answers in text, e.g. "The character's emotional state is happy, surprise."

This checkpoint: {facts}. Weights are safetensors; the model code ships in this repository
(`trust_remote_code=True`; it imports only torch and transformers, and decord to read video files).

## Usage

```python
{USAGE_SNIPPET.format(model=repo_id or "path/to/this/folder").strip()}
```

`audio="video"` reads the clip's own sound track; `audio=None` leaves audio out, and `subtitle` may be empty.
For many clips, the project's command line batches, resumes and records bad files:
`affectverse predict {repo_id or "path/to/this/folder"} clips/ --out predictions.jsonl --sentiment`.

## Evaluation (MER-UniBench)

{_results_table(reports)}

## Training recipe (paper, Appendix A.3)

| | |
|---|---|
{recipe}{run}

## Limitations

Emotion answers are free text: a label list is extracted from them by rule, which can miss paraphrases. The
model inherits the biases of its base model and of the MER-UniBench training data (acted and TV speech, mostly
English and Chinese); it describes perceived emotion and is not fit for decisions about people.

## Citation

AffectVerse, arXiv:2605.19950 ({PAPER}).
"""
    return ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n{{ body }}", body=body)


def export_for_hub(model, processor, out_dir, eval_summary=None, training_args=None, max_shard_size="2GB", *,
                   license="apache-2.0", datasets=None, base_model=BASE_MODEL, repo_id=None) -> Path:
    """Write a Hub-ready AffectVerse folder and return its path.

    Args:
        model: an AffectVerse model; a peft-wrapped one has its LoRA merged in first (in place).
        processor: its ``AffectVerseProcessor`` (checked against the model's belief settings).
        out_dir: the folder to write (created; files of the same names are overwritten).
        eval_summary: MER-UniBench scores for the card's model-index: a JSON path or loaded JSON, see
            :func:`read_eval_summary`. None: no model-index.
        training_args: this run's arguments for the card (``run_args.json`` of ``train.py``, a dict, or
            ``TrainingArguments``); the paper's recipe is always shown.
        max_shard_size: safetensors shard size (``save_pretrained``'s argument).
        license, datasets, base_model: card metadata; ``repo_id`` goes into the card's usage snippet.

    Writes ``model*.safetensors`` (+ index when sharded), ``config.json`` with ``auto_map``, ``generation_config.json``,
    the processor and tokenizer files, the four ``*_affectverse.py`` code files and ``README.md``.
    """
    out = Path(out_dir)
    model = _merged(model)
    _check_pair(model, processor)
    reports = read_eval_summary(eval_summary) if eval_summary is not None else {}
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, max_shard_size=max_shard_size)
    processor.save_pretrained(out)
    missing = [name for name in REMOTE_CODE_FILES if not (out / name).is_file()]
    if missing:
        raise RuntimeError(f"{out}: save_pretrained did not copy {missing}; the folder would not load with "
                           "trust_remote_code (is the class registered with register_for_auto_class?)")
    if datasets is None and training_args is not None:
        benchmarks = _flatten(training_args).get("data.benchmarks")
        datasets = [b.strip() for b in benchmarks.split(",") if b.strip()] if isinstance(benchmarks, str) else None
    model_card(model, reports, training_args, license, datasets, base_model, repo_id).save(out / "README.md")
    logger.info("exported %s (%s)", out, _size(sum(size for _, size in upload_plan(out))))
    return out


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
    print(f"affectverse export: {len(files)} files ({_size(sum(s for _, s in files))}) in {out}")
    return 0


# ============================================================================================== push
def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def upload_plan(folder) -> list[tuple[str, int]]:
    """(path in repo, size) of each file ``push`` uploads: what ``upload_folder`` sends with ``UPLOAD_IGNORE``."""
    try:
        from huggingface_hub.hf_api import DEFAULT_IGNORE_PATTERNS  # upload_folder's own exclusions (.git, cache)
    except ImportError:  # pragma: no cover - moved in another huggingface_hub release
        DEFAULT_IGNORE_PATTERNS = [".git", ".git/*", "*/.git", "**/.git/**", ".cache/huggingface/**"]
    folder = Path(folder)
    sizes = {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
    kept = filter_repo_objects(sizes, ignore_patterns=UPLOAD_IGNORE + list(DEFAULT_IGNORE_PATTERNS))
    return [(path, sizes[path]) for path in kept]


def push_folder(folder, repo_id: str, private: bool | None = None, revision: str | None = None,
                commit_message: str | None = None, dry_run: bool = False):
    """Upload ``folder`` to the model repository ``repo_id`` (created if missing) and return the commit info.

    Calls ``HfApi().create_repo(repo_id, private=..., exist_ok=True, repo_type="model")``, then
    ``create_branch`` when ``revision`` names a branch other than main, then ``upload_folder``. ``private`` only
    applies when the repository is created. ``dry_run``: returns the upload plan and calls nothing.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    plan = upload_plan(folder)
    missing = [name for name in ("README.md", "config.json") if name not in dict(plan)]
    if missing:
        logger.warning("%s has no %s: is it an `affectverse export` folder?", folder, " or ".join(missing))
    if dry_run:
        return plan
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    return api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", revision=revision,
                             commit_message=commit_message or "Upload AffectVerse", ignore_patterns=list(UPLOAD_IGNORE))


def push(args) -> int:
    result = push_folder(args.folder, args.repo_id, args.private or None, args.revision, args.commit_message,
                         args.dry_run)
    if args.dry_run:
        for path, size in result:
            print(f"{size:>14,d}  {path}")
        total = sum(size for _, size in result)
        print(f"affectverse push --dry-run: {len(result)} files ({_size(total)}) would go to {args.repo_id}")
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
