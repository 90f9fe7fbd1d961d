"""Hub export: the model card, the Hub-ready folder and the upload.

:func:`export_for_hub` writes what a Hub model repository needs (sharded safetensors, config with ``auto_map``,
processor and tokenizer files, the code files and a model card); :func:`push_folder` uploads a folder with
``huggingface_hub``. Used by the ``affectverse`` command and by ``train.py``; its network calls are tested
against a mocked ``HfApi`` only (``tests/test_cli.py``).
"""

from __future__ import annotations

import fnmatch
import glob
import json
import logging
import re
from importlib import metadata
from pathlib import Path

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, SpaceCard, SpaceCardData
from transformers.dynamic_module_utils import custom_object_save

from affectverse import checkpoint, ownership
from affectverse.scoring.score import BENCHMARKS
from pipeline_affectverse import CUSTOM_PIPELINES, EmotionRecognitionPipeline

logger = logging.getLogger("affectverse")

SUBTITLE_COLUMNS = ("subtitle", "english", "sentence", "text", "chinese")  # first one present is read
REMOTE_CODE_FILES = ("configuration_affectverse.py", "modeling_affectverse.py", "ewm_affectverse.py",
                     "processing_affectverse.py", "media_affectverse.py", "pipeline_affectverse.py")
BASE_MODEL = "Qwen/Qwen2.5-Omni-7B"
PAPER = "https://arxiv.org/abs/2605.19950"
# Title and authors as on the paper's first page (arXiv:2605.19950v1, cs.CV, 19 May 2026).
BIBTEX = """\
@misc{zhao2026affectverse,
  title         = {AffectVerse: Emotional World Models for Multimodal Affective Computing},
  author        = {Zhao, Bo and Ye, Fanghua and Ji, Yixin and Zhao, Sicheng and Peng, Xiaojiang and Yu, Zitong},
  year          = {2026},
  eprint        = {2605.19950},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CV},
  url           = {https://arxiv.org/abs/2605.19950}
}"""
# The Hub task that matches what the model does: video (+ audio) + text in, text out. "any-to-any" would promise
# generated audio or images, but AffectVerse keeps only the thinker (no talker): its output is always text.
PIPELINE_TAG = "video-text-to-text"
TAGS = ["affective-computing", "emotion-recognition", "multimodal", "qwen2.5-omni", "custom_code"]
# push: what a train.py output folder holds besides the model (uploaded only with --include-training-state), what
# never goes (paths of the user's machine), and names that look like secrets (never, whatever the flags).
TRAINING_STATE = ("checkpoint-*", "adapter", "run_args.json", "results.json", "trainer_state.json",
                  "training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state*.pth", "all_results.json",
                  "train_results.json", "eval_results.json")
LOCAL_ONLY = ("preflight_cache.json", "bad_samples.jsonl", ownership.RECORD, "*.lock", "__pycache__", "*.pyc",
              ".ipynb_checkpoints", ".git", ".cache")
SECRET_NAMES = (".env", ".env.*", "*.env", ".envrc", "*.pem", "*.key", "*.p12", "*.pfx", "*.keystore", "id_rsa*",
                "id_dsa*", "id_ecdsa*", "id_ed25519*", ".netrc", "_netrc", ".git-credentials", ".pypirc", ".npmrc",
                "credentials", "credentials.*", "*secret*", "*password*", "token", "hf_token", ".huggingface",
                ".ssh", ".aws", ".gnupg")
SECRET_CONTENT = re.compile(rb"hf_[A-Za-z0-9]{30,}|-----BEGIN [A-Z ]*PRIVATE KEY-----|AKIA[0-9A-Z]{16}|"
                            rb"ghp_[A-Za-z0-9]{36}|sk-[A-Za-z0-9]{32,}")
TEXT_SUFFIXES = (".json", ".md", ".py", ".txt", ".jinja", ".yaml", ".yml", ".cfg", ".toml", ".jsonl", ".csv")
# export --space writes the demo Space into this subfolder of the model folder; the model's upload leaves it out
SPACE_FOLDER = "space"
SPACE_FILES = ("app.py", "requirements.txt", "README.md")  # what write_space writes: a Space's upload
GRADIO_TESTED = "6.31.0"  # the Space's sdk_version when gradio is not installed where the export runs
LARGE_MODEL = 2e9  # parameters from which a Space suggests a GPU (a10g-large: 24 GB for the 7B in bfloat16)

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

# MER-UniBench benchmarks (keys of affectverse.scoring.score) as the model card names them: (dataset, task, split).
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


def _run_scores(summary: dict, lookup: dict) -> dict:
    """``{benchmark: entry}`` of a ``affectverse.evaluation.runner`` ``scores.json``: the A+V+T entry at kappa = 1
    (the model card's setting, as Table 1); benchmarks outside MER-UniBench and entries without a main score are
    skipped."""
    chosen = {}
    for entry in summary["results"]:
        if entry.get("modality") != "avt" or float(entry.get("keep_ratio", 1.0)) != 1.0:
            continue
        if lookup.get(_norm(entry.get("benchmark"))) is None:
            logger.warning("evaluation summary: %s is not a MER-UniBench benchmark; not in the card",
                           entry.get("benchmark"))
        elif entry.get("main_score") is None:
            logger.warning("evaluation summary: %s has no main score (%s); not in the card", entry["benchmark"],
                           entry.get("main_note", "not scored"))
        else:
            chosen[entry["benchmark"]] = entry
    if not chosen:
        raise ValueError("evaluation summary (affectverse.evaluation.runner scores.json): no scored MER-UniBench "
                         "benchmark in the A+V+T setting at keep ratio 1.0")
    return chosen


def read_eval_summary(summary) -> dict[str, dict]:
    """``{benchmark key: score report}`` from an evaluation summary: a path to JSON, or already-loaded JSON.

    Accepted: ``affectverse.evaluation.runner``'s ``scores.json`` (``{"errors": ..., "results": [...]}``: its A+V+T
    entries at
    keep ratio 1.0), one ``affectverse score`` report (``{"benchmark": ..., "main_score": ...}``; with
    several checkpoints its ``best``), a list of them, or ``{benchmark: report or main score}``. Benchmark names are
    matched loosely ("CMU-MOSI", "mosi", "OV-MERD+" all work); scores are on the 0-100 scale of the scorer.
    """
    if isinstance(summary, (str, Path)):
        summary = json.loads(Path(summary).read_text(encoding="utf-8"))
    if isinstance(summary, dict) and "benchmark" in summary:
        summary = [summary]
    if isinstance(summary, list):
        summary = {report["benchmark"]: report for report in summary}
    lookup = {_norm(key): key for key in MER_UNIBENCH} | {_norm(v[0]): key for key, v in MER_UNIBENCH.items()}
    if isinstance(summary, dict) and isinstance(summary.get("results"), list):
        summary = _run_scores(summary, lookup)
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
    lines = ["| benchmark | main metric | score | other |", "|---|---|---|---|"]
    for key, report in reports.items():
        metrics = METRICS[BENCHMARKS[key].kind]
        other = ", ".join(f"{name} {report[field]:.2f}" for field, _, name in metrics[1:]
                          if isinstance(report.get(field), (int, float)))
        lines.append(f"| {MER_UNIBENCH[key][0]} | {metrics[0][2]} | {report['main_score']:.2f} | {other} |")
    return "\n".join(lines) + ("\n\nScores x100, by the MER-UniBench rules (the project's "
                               "`affectverse/scoring/score.py`).")


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


def transformers_pin() -> str:
    """``transformers==X.Y.Z`` of the installed release (the one the model was saved with)."""
    try:
        return f"transformers=={metadata.version('transformers')}"
    except metadata.PackageNotFoundError:  # pragma: no cover - an unusual install without metadata
        import transformers

        return f"transformers=={transformers.__version__}"


def card_datasets(training_args) -> list[str] | None:
    """The Hub ``datasets`` of a run: its ``--benchmarks`` (from run_args.json or a dict), None without any."""
    if training_args is None:
        return None
    benchmarks = _flatten(training_args).get("data.benchmarks")
    if not isinstance(benchmarks, str):
        return None
    return [b.strip() for b in benchmarks.split(",") if b.strip()] or None


def run_lines(run: dict) -> list[str]:
    """What a run did, a sentence a fact: base model and data as they were, the run's own losses and accuracy
    (``affectverse.training.export.card_facts``); the model card's "This run" and train.py's closing summary."""
    def number(value, fmt=".4f"):
        return "not measured" if value is None else format(value, fmt)

    skipped = f"; {run['bad_samples']} bad samples left out by the pre-flight check" if run.get("bad_samples") else ""
    grpo = run.get("method") == "grpo"
    lines = [f"Base model: {run.get('base')}",
             f"Data: {run.get('data') or 'not recorded'} ({run.get('train_samples')} training samples{skipped})",
             f"Training{' (GRPO, rewards ' + str(run.get('rewards')) + ')' if grpo else ''}: {run.get('steps')} "
             f"optimizer steps ({run.get('epochs')} epochs), training loss {number(run.get('train_loss'))} (mean over "
             "the whole run)"]
    if grpo:
        curve, held = run.get("curve") or {}, run.get("held_out") or {}
        if curve:
            lines.append(f"Training reward (sampled answers): {number(curve.get('first_fifth'))} over the first fifth "
                         f"of the steps, {number(curve.get('last_fifth'))} over the last fifth")
        if held.get("before") or held.get("after"):
            n = (held.get("after") or held.get("before")).get("n")
            lines.append(f"Held-out reward (greedy answers, {n} samples): "
                         f"{number((held.get('before') or {}).get('reward'))} before GRPO, "
                         f"{number((held.get('after') or {}).get('reward'))} after")
    if run.get("eval_split") and not grpo:
        lines.append(f"Held-out `{run['eval_split']}` split ({run.get('eval_samples')} samples): eval loss "
                     f"{number(run.get('eval_loss'))}")
    gen = run.get("generation")
    if gen and "accuracy" in gen:
        chance = f", chance {1 / len(gen['label_set']):.3f}" if gen.get("label_set") else ""
        lines.append(f"Greedy-generation accuracy on {gen['n']} held-out samples: {gen['accuracy']:.3f}{chance}")
    else:
        lines.append("Greedy-generation accuracy: not measured")
    return lines


TINY_NOTICE = ("> **This is not a usable emotion model.** It is the tiny preset of `train.py`: a small random "
               "AffectVerse (not Qwen2.5-Omni-7B) fine-tuned on {data}. It exists to test the training, export and "
               "loading pipeline; its numbers below say nothing about emotion recognition.")
GENERATED_DATA = "synthetic clips generated by `affectverse/default/clips.py` (not MER-UniBench)"


def model_card(model, reports=None, training_args=None, license="apache-2.0", datasets=None,
               base_model=BASE_MODEL, repo_id=None, run=None, space_id=None) -> ModelCard:
    """The model card: Hub metadata (``ModelCardData``, model-index from ``reports``) and a body for users.
    ``space_id``: the demo Space the card links (``affectverse export --space``).

    ``run``: what ``train.py`` knows about the run that made this checkpoint
    (``affectverse.training.export.card_facts``: base model,
    data, losses, generation accuracy; ``tiny`` marks the random tiny preset). ``base_model=None`` leaves it out
    of the metadata (a random or local base).
    """
    reports = reports or {}
    run = run or {}
    tiny = bool(run.get("tiny"))
    results = eval_results(reports)
    data = ModelCardData(
        library_name="transformers", base_model=None if tiny else base_model, pipeline_tag=PIPELINE_TAG,
        license=license, tags=list(TAGS) + (["tiny-random", "synthetic-data"] if tiny else []),
        datasets=list(datasets) if datasets else None,
        model_name="AffectVerse" if results else None, eval_results=results or None,  # model-index only
    )
    config, ewm = model.config, getattr(model, "ewm", None)
    facts = (f"{_count(model.num_parameters())} parameters, of which "
             f"{_count(sum(p.numel() for p in ewm.parameters()) if ewm is not None else 0)} in the Emotion World "
             f"Module (`belief_construction={config.belief_construction!r}`, {config.num_belief_queries} belief "
             f"queries per modality, {config.rollout_steps} rollout steps)")
    run_args = ""
    if training_args is not None:
        rows = "\n".join(f"| `{k}` | `{json.dumps(v, default=str)}` |" for k, v in _flatten(training_args).items())
        run_args = ("\n\n<details><summary>This checkpoint's run</summary>\n\n| argument | value |\n|---|---|\n"
                    f"{rows}\n\n</details>")
    recipe = "\n".join(f"| {name} | {value} |" for name, value in PAPER_RECIPE)
    this_run = "\n## This run\n\n" + "".join(f"- {line}\n" for line in run_lines(run)) if run else ""
    recipe_note = ("The paper's recipe, for reference; this tiny run used its own arguments (below)." if tiny else
                   "This run's own arguments are listed below the table." if training_args is not None else "")
    data_words = GENERATED_DATA if run.get("generated") else "the data listed under \"This run\""
    limitations = (f"A random tiny model fine-tuned on {data_words}: it must not be used on real data." if tiny else
                   "Emotion answers are free text: a label list is extracted from them by rule, which can miss "
                   "paraphrases. The model inherits the biases of its base model and of the MER-UniBench training "
                   "data (acted and TV speech, mostly English and Chinese); it describes perceived emotion and is "
                   "not fit for decisions about people.")
    pin = transformers_pin()
    body = f"""
# AffectVerse{" (tiny random test model)" if tiny else ""}
{chr(10) + TINY_NOTICE.format(data=data_words) + chr(10) if tiny else ""}
AffectVerse ([arXiv:2605.19950]({PAPER})) is the Qwen2.5-Omni thinker with an **Emotion World Module**: it reads
the video and audio of a clip, imagines where the affect is heading, and injects the result as belief tokens
before the model answers. It answers in text, e.g. "The character's emotional state is happy, surprise."

This checkpoint: {facts}. Weights are safetensors; the model code ships in this repository
(`trust_remote_code=True`; it imports only torch and transformers, and decord or PyAV to read video files).
Saved with `{pin}`: install that release (`pip install "{pin}"`); the code follows its Qwen2.5-Omni thinker API.
{this_run}
## Usage

```python
{USAGE_SNIPPET.format(model=repo_id or "path/to/this/folder").strip()}
```

`audio="video"` reads the clip's own sound track; `audio=None` leaves audio out, and `subtitle` may be empty.
For many clips, the project's command line batches, resumes and records bad files:
`affectverse predict {repo_id or "path/to/this/folder"} clips/ --out predictions.jsonl --sentiment`.

## Demo

{demo_text(repo_id or "path/to/this/folder", space_id)}

## Evaluation (MER-UniBench)

{_results_table(reports)}

## Training recipe (paper, Appendix A.3)

{recipe_note}

| | |
|---|---|
{recipe}{run_args}

## Limitations

{limitations}

## Citation

```bibtex
{BIBTEX}
```
"""
    return ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n{{ body }}", body=body)


def demo_text(model: str, space_id: str | None) -> str:
    """The model card's "Demo" section: the Space's link, when there is one, and the command that runs the page."""
    space = (f"Try it in your browser: [{space_id}](https://huggingface.co/spaces/{space_id}) (a clip, or your "
             "webcam and microphone live). ") if space_id else ""
    return (f"{space}The same page runs on your machine: `pip install \"affectverse[demo]\"`, then "
            f"`affectverse demo {model}` (a Clip tab with the answer, label scores, their trajectory over the clip "
            "and the belief tokens' attention; a Live tab for webcam and microphone).")


def export_for_hub(model, processor, out_dir, eval_summary=None, training_args=None, max_shard_size="2GB", *,
                   license="apache-2.0", datasets=None, base_model=BASE_MODEL, repo_id=None, run=None,
                   space_id=None) -> Path:
    """Write a Hub-ready AffectVerse folder and return its path.

    Args:
        model: an AffectVerse model; a peft-wrapped one has its LoRA merged in first (in place).
        processor: its ``AffectVerseProcessor`` (checked against the model's belief settings).
        out_dir: the folder to write into (created if missing).
        eval_summary: MER-UniBench scores for the card's model-index: a JSON path or loaded JSON, see
            :func:`read_eval_summary`. None: no model-index.
        training_args: this run's arguments for the card (``run_args.json`` of ``train.py``, a dict, or
            ``TrainingArguments``); the paper's recipe is always shown.
        max_shard_size: safetensors shard size (``save_pretrained``'s argument).
        license, datasets, base_model: card metadata; ``repo_id`` goes into the card's usage snippet.
        run: what train.py knows about the run (``affectverse.training.export.card_facts``), for the card's "This run"
        section.
        space_id: the demo Space the card links (:func:`write_space` writes it).

    Writes ``model*.safetensors`` (+ index when sharded), ``config.json`` with ``auto_map``, ``generation_config.json``,
    the processor and tokenizer files, the ``*_affectverse.py`` code files and ``README.md``. It writes into
    ``out_dir`` as it is: the ``affectverse export`` command uses :func:`export_folder`, train.py its own run folder.
    """
    out = Path(out_dir)
    model = _merged(model)
    _check_pair(model, processor)
    model.config.custom_pipelines = CUSTOM_PIPELINES  # pipeline("emotion-recognition", model=out, ...)
    reports = read_eval_summary(eval_summary) if eval_summary is not None else {}
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, max_shard_size=max_shard_size)
    processor.save_pretrained(out)
    custom_object_save(EmotionRecognitionPipeline, out)  # the pipelines' code that custom_pipelines names
    missing = [name for name in REMOTE_CODE_FILES if not (out / name).is_file()]
    if missing:
        raise RuntimeError(f"{out}: save_pretrained did not copy {missing}; the folder would not load with "
                           "trust_remote_code (is the class registered with register_for_auto_class?)")
    if datasets is None:
        datasets = card_datasets(training_args)
    model_card(model, reports, training_args, license, datasets, base_model, repo_id, run,
               space_id).save(out / "README.md")
    logger.info("exported %s (%s)", out, human_size(sum(size for _, size in upload_plan(out)[0])))
    return out


def export_folder(model, processor, out_dir, *args, overwrite: bool = False, then=None, **kwargs) -> Path:
    """:func:`export_for_hub` into ``out_dir`` as a whole: written beside it and swapped in, so the folder holds
    exactly this export (an earlier export there is replaced only with ``overwrite``; any other non-empty folder is
    refused, untouched). ``then(folder)`` writes more into it before the swap (the demo Space,
    :func:`write_space`). Its record ``.affectverse.json`` lists the files and the model's identity."""
    def fill(tmp):
        export_for_hub(model, processor, tmp, *args, **kwargs)
        if then is not None:
            then(tmp)

    return ownership.write_folder(out_dir, "export", fill, overwrite=overwrite, option="OUT_DIR",
                                  record=lambda tmp: {"identity": checkpoint.identity_record(tmp)})


SPACE_APP = '''\
"""The AffectVerse demo Space of {model}, written by `affectverse export --space`.

The page is `affectverse demo` (affectverse/demo.py of the affectverse package); the model loads with
trust_remote_code=True, i.e. with the code files of its own repository.
"""
from affectverse.demo import build_demo, launch

demo = build_demo({model!r}, labels={labels!r}, trust_remote_code=True)

if __name__ == "__main__":
    launch(demo)  # on GRADIO_SERVER_NAME:GRADIO_SERVER_PORT, which a Space sets
'''


def package_requirement() -> str:
    """``affectverse[demo]==X.Y.Z`` of the installed release: what a Space installs to run the page."""
    try:
        return f"affectverse[demo]=={metadata.version('affectverse')}"
    except metadata.PackageNotFoundError:  # run from a clone that was never installed
        return "affectverse[demo]"


def write_space(out_dir, model_id: str, labels=None, requirement: str | None = None,
                n_parameters: int = 0, license: str = "apache-2.0") -> Path:
    """Write the demo Space of ``model_id`` into ``out_dir/space`` and return that folder: ``app.py`` (the
    ``affectverse demo`` page, the model loaded by id with trust_remote_code), ``requirements.txt``
    (``requirement``, default :func:`package_requirement`) and ``README.md`` whose YAML header is the Space's
    configuration (gradio SDK and version, Python, the model it uses, suggested hardware). Upload it with
    ``affectverse push OUT/space SPACE_ID --space``. ``labels``: the page's default label set (None: the page's own
    default)."""
    folder = Path(out_dir) / SPACE_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    try:
        gradio = metadata.version("gradio")
    except metadata.PackageNotFoundError:
        gradio = GRADIO_TESTED
    (folder / "app.py").write_text(SPACE_APP.format(model=model_id, labels=list(labels) if labels else None))
    (folder / "requirements.txt").write_text((requirement or package_requirement()) + "\n")
    data = SpaceCardData(
        title="AffectVerse demo", sdk="gradio", sdk_version=gradio, python_version="3.11", app_file="app.py",
        license=license, models=[model_id], tags=["affective-computing", "emotion-recognition", "multimodal"],
        emoji="🎭", colorFrom="indigo", colorTo="pink", pinned=False,
        short_description="Emotion from a clip or a webcam, over time",
        suggested_hardware="a10g-large" if n_parameters >= LARGE_MODEL else "cpu-basic")
    body = f"""
# AffectVerse demo

The `affectverse demo` page for the model [{model_id}](https://huggingface.co/{model_id}) (AffectVerse,
[arXiv:2605.19950]({PAPER})): upload or record a clip for its answer, its label scores, how they change over the
clip, and what the belief tokens attend to; or stream your webcam and microphone for a live reading.

Written by `affectverse export --space`. The model loads with `trust_remote_code=True` (the code files of its
repository); the page is the `affectverse` package's (`{requirement or package_requirement()}`).
"""
    SpaceCard.from_template(data, template_str="---\n{{ card_data }}\n---\n{{ body }}", body=body).save(
        folder / "README.md")
    logger.info("wrote the demo Space of %s to %s", model_id, folder)
    return folder


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def _looks_secret(path: Path) -> bool:
    if path.suffix.lower() not in TEXT_SUFFIXES or path.stat().st_size > 50 * 2**20:
        return False
    return SECRET_CONTENT.search(path.read_bytes()) is not None


def upload_plan(folder, include_training_state: bool = False, space: bool = False
                ) -> tuple[list[tuple[str, int]], list[tuple[str, int, str]]]:
    """(uploaded: (path in repo, size), skipped: (path, size, reason)) of ``folder``: an allowlist.

    Uploaded: the top-level files ``from_pretrained`` of the model and the processor, the remote code and the model
    card read (:data:`affectverse.checkpoint.HUB_FILES`; weight shards only those the index names), plus, with
    ``include_training_state``, a train.py run's checkpoints, adapter and run records (:data:`TRAINING_STATE`).
    Never: names that look like secrets (:data:`SECRET_NAMES`), text files holding what looks like an access token
    or a private key, files with paths of this machine (:data:`LOCAL_ONLY`). Everything else is skipped, with why.
    ``space``: the folder is a demo Space (``export --space``'s ``OUT_DIR/space``): its :data:`SPACE_FILES` go.
    """
    folder = Path(folder)
    index = folder / checkpoint.WEIGHT_INDEX
    try:
        shards = set(json.loads(index.read_text())["weight_map"].values()) if index.is_file() else None
    except (ValueError, KeyError, TypeError, AttributeError):
        shards = None
    uploaded, skipped = [], []

    def size_of(path: Path) -> int:
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size

    def consider(path: Path, name: str):
        if _matches(path.name, SECRET_NAMES):
            skipped.append((name, size_of(path), "looks like a secret: never uploaded"))
        elif _matches(path.name, LOCAL_ONLY):
            skipped.append((name, size_of(path), "affectverse's local bookkeeping: never uploaded"))
        elif path.is_dir():
            for child in sorted(path.iterdir()):
                consider(child, f"{name}/{child.name}")
        elif _looks_secret(path):
            skipped.append((name, path.stat().st_size, "holds what looks like an access token or a private key: "
                                                        "never uploaded"))
        else:
            uploaded.append((name, path.stat().st_size))

    for path in sorted(folder.iterdir()):
        name = path.name
        if space:
            if path.is_file() and name in SPACE_FILES and not _matches(name, SECRET_NAMES):
                consider(path, name)
            else:
                skipped.append((name + ("/" if path.is_dir() else ""), size_of(path),
                                "looks like a secret: never uploaded" if _matches(name, SECRET_NAMES) else
                                "not part of the Space (app.py, requirements.txt and README.md are)"))
        elif _matches(name, SECRET_NAMES):
            skipped.append((name + ("/" if path.is_dir() else ""), size_of(path),
                            "looks like a secret: never uploaded"))
        elif _matches(name, LOCAL_ONLY):
            skipped.append((name + ("/" if path.is_dir() else ""), size_of(path),
                            "affectverse's local bookkeeping (paths of this machine): never uploaded"))
        elif _matches(name, TRAINING_STATE):
            if include_training_state:
                consider(path, name)
            else:
                skipped.append((name + ("/" if path.is_dir() else ""), size_of(path),
                                "training state: pass --include-training-state to upload it"))
        elif name == SPACE_FOLDER and path.is_dir():
            skipped.append((name + "/", size_of(path), f"the demo Space: affectverse push {path} SPACE_ID --space"))
        elif path.is_file() and _matches(name, checkpoint.HUB_FILES):
            if shards is not None and fnmatch.fnmatch(name, "model*.safetensors") and name not in shards:
                skipped.append((name, path.stat().st_size, f"not a shard {checkpoint.WEIGHT_INDEX} names"))
            else:
                consider(path, name)
        else:
            skipped.append((name + ("/" if path.is_dir() else ""), size_of(path),
                            "not part of the model (neither from_pretrained, the processor, the code nor the card "
                            "reads it)"))
    return uploaded, skipped


def push_folder(folder, repo_id: str, private: bool | None = None, revision: str | None = None,
                commit_message: str | None = None, dry_run: bool = False, include_training_state: bool = False,
                space: bool = False):
    """Upload the allowlist of ``folder`` (:func:`upload_plan`) to the model repository ``repo_id`` (``space``: the
    gradio Space ``repo_id``; created if missing); return (commit info or None for ``dry_run``, uploaded, skipped).

    Calls ``HfApi().create_repo(repo_id, private=..., exist_ok=True, repo_type=...)`` (with ``space_sdk="gradio"``
    for a Space), then ``create_branch`` when ``revision`` names a branch other than main, then ``upload_folder``
    with exactly the planned files as ``allow_patterns``. ``private`` only applies when the repository is created.
    ``dry_run``: calls nothing.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    uploaded, skipped = upload_plan(folder, include_training_state, space)
    names = {name for name, _ in uploaded}
    needed, made_by = (("README.md", "app.py"), "`affectverse export --space` Space") if space else \
        (("README.md", "config.json"), "`affectverse export`")
    missing = [name for name in needed if name not in names]
    if missing:
        logger.warning("%s has no %s: is it an %s folder?", folder, " or ".join(missing), made_by)
    if not space and not any(fnmatch.fnmatch(name, "model*.safetensors") for name in names):
        logger.warning("%s: no model weights would be uploaded", folder)
    if dry_run:
        return None, uploaded, skipped
    if not uploaded:
        raise ValueError(f"{folder}: nothing to upload (every file was skipped; see --dry-run)")
    api, kind = HfApi(), "space" if space else "model"
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type=kind,
                    **({"space_sdk": "gradio"} if space else {}))
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type=kind)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type=kind, revision=revision,
                             commit_message=commit_message or "Upload AffectVerse",
                             allow_patterns=[glob.escape(name) for name, _ in uploaded])
    return info, uploaded, skipped
