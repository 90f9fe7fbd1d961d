"""Fine-tune AffectVerse (arXiv 2605.19950, Appendix A.3): LoRA on the thinker's language model + the full EWM.

``python train.py`` with no arguments runs the embedded default (``TINY_TRAINING_ARGS``, ``TINY_DATA_ARGS`` below):
a tiny random AffectVerse (``benchmarks/tiny.py``) on synthetic clips (``benchmarks/clips.py``, generated into
``data/tiny_clips`` if absent), under a minute on an idle 2-core CPU. A real run names a checkpoint and data:

    accelerate launch --config_file configs/accelerate_deepspeed_zero2.yaml train.py \\
        --model_name_or_path /models/Qwen2.5-Omni-7B --benchmarks mer2023,mer2024,meld,iemocap,mosi,mosei,sims,simsv2 \\
        --data_root /data/merunibench --output_dir outputs/affectverse-7b

Every other default is the paper's recipe (A.3): LoRA r=16, alpha=32, dropout 0.05 on the language model's
q/k/v/o projections; the EWM fully trained; everything else frozen; AdamW, lr 2e-4, cosine with 3% linear
warm-up, weight decay 0.01, 4 per device x 8 accumulation steps, 3 epochs, bf16 where the GPU has it, max length
1024. ``python train.py --help`` lists every option. The script reads top to bottom: arguments, checks of the
inputs (all before any training), data, model, the Trainer, training, evaluation, export.

Before any model loads, a pre-flight check (``benchmarks/preflight.py``) probes every sample's video/audio and measures
its text against ``--max_length``; bad samples stop the run, listed with file and reason, or with
``--skip_bad_samples`` leave every split and are recorded in ``bad_samples.jsonl``.

Output folder: ``run_args.json`` (what makes this run this run; a second launch with the same arguments resumes
from the newest complete checkpoint, different arguments are refused), ``checkpoint-N/`` (Trainer checkpoints: LoRA
adapter and EWM weights in ``adapter_model.safetensors``, optimizer, scheduler, RNG states), the merged model at the
top level (LoRA folded in; ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)``) with the processor
files and the model card ``README.md``, ``adapter/`` (LoRA + EWM weights alone, for ``PeftModel.from_pretrained``),
``results.json`` (written once training finished, whatever fails after), ``preflight_cache.json`` and
``bad_samples.jsonl``.
"""

from __future__ import annotations

import argparse
import copy
import errno
import fnmatch
import hashlib
import json
import logging
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (AutoConfig, HfArgumentParser, PreTrainedConfig, Trainer, TrainerCallback, TrainingArguments,
                          set_seed)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, SchedulerType

from benchmarks import hub, preflight
from benchmarks.clips import generate_clips
from benchmarks.data import load_benchmark, load_manifest, merge_benchmarks
from benchmarks.engine import MODALITIES, Engine, Setting
from benchmarks.score import BENCHMARKS as SCORED
from benchmarks.scoring import extract_labels, map_to_label_set
from benchmarks.tiny import tiny_config, tiny_processor
from configuration_affectverse import AffectVerseConfig, list_presets, preset_fields
from modeling_affectverse import AffectVerseForConditionalGeneration
from processing_affectverse import AffectVerseCollator, AffectVerseProcessor

logger = logging.getLogger("train")

# The language model's attention projections only. A plain ["q_proj", "k_proj", "v_proj", "o_proj"] would also
# wrap the audio tower's self_attn.{q,k,v}_proj; peft full-matches this regex against module names.
LORA_TARGET = r"model\.language_model\.layers\.\d+\.self_attn\.(q|k|v|o)_proj"
SUPPORTED_MODEL_TYPES = ("qwen2_5_omni", "qwen2_5_omni_thinker", "affectverse")
TINY_CLIPS = "data/tiny_clips/manifest.csv"

# Without --model_name_or_path the tiny preset trains with these arguments (given arguments come after, so they win),
# and without --manifest/--benchmarks on the generated clips (84 train / 12 val / 24 test). The paper's 32-sample
# steps would leave ~3 steps per epoch here, hence 4 x 1 and a higher learning rate for the random tiny backbone.
TINY_TRAINING_ARGS = [
    "--output_dir", "outputs/affectverse-tiny", "--per_device_train_batch_size", "4",
    "--gradient_accumulation_steps", "1", "--learning_rate", "5e-3", "--num_train_epochs", "4", "--logging_steps", "5",
    "--eval_strategy", "epoch", "--save_strategy", "epoch", "--dataloader_num_workers", "0",
    "--dataloader_pin_memory", "false",
    "--generation_eval_samples", "16",
]
TINY_DATA_ARGS = ["--manifest", TINY_CLIPS, "--generate_clips", "120"]


# ----------------------------------------------------------------------------------------------------- arguments
@dataclass
class ModelArguments:
    """Which model to start from, the EWM configuration and the LoRA adapter."""

    model_name_or_path: str | None = field(default=None, metadata={"help": (
        "Qwen2.5-Omni checkpoint folder (full omni or thinker-only; config model_type qwen2_5_omni, "
        "qwen2_5_omni_thinker or affectverse). Unset: the tiny random preset of benchmarks/tiny.py, built from "
        "--seed (the embedded default).")})
    preset: str | None = field(default=None, metadata={"help": (
        "An ablation row of the paper as config values, applied before --ewm_overrides (README, 'Ablation presets'): "
        + ", ".join(list_presets()) + ".")})
    ewm_overrides: str = field(default="", metadata={"help": (
        "Comma-separated key=value pairs forwarded to AffectVerseConfig, e.g. "
        "'rollout_steps=2,injection=single,imagination_loss_weight=0.5'. Any AffectVerseConfig field: "
        + ", ".join(AffectVerseConfig.__annotations__) + ".")})
    model_dtype: str = field(default="auto", metadata={"help": (
        "dtype of the frozen backbone: 'auto' (bfloat16 when --bf16, else float32), 'bfloat16' or 'float32'. "
        "Trainable parameters (LoRA, EWM) are always kept in float32.")})
    attn_implementation: str | None = field(default=None, metadata={"help": (
        "Attention kernel for from_pretrained ('sdpa', 'flash_attention_2', 'eager'); unset: transformers' choice.")})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank r (A.3: 16)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha (A.3: 32)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout (A.3: 0.05)."})
    lora_target_modules: str = field(default=LORA_TARGET, metadata={"help": (
        "Regex (full match on module names) of the Linear layers that get LoRA. Default: the language model's "
        "q/k/v/o projections only; a plain name list would also wrap the audio tower.")})
    trust_remote_code: bool = field(default=False, metadata={"help": (
        "Run the Python code of the --model_name_or_path folder (its auto_map classes) instead of this project's "
        "classes. Off by default: an AffectVerse folder loads with the project's own classes, no code of the folder "
        "runs and nothing prompts.")})

    def __post_init__(self):
        if self.preset is not None:
            preset_fields(self.preset)  # an unknown name is an error naming the known ones
        if self.model_dtype not in ("auto", "bfloat16", "float32"):
            raise ValueError(f"--model_dtype {self.model_dtype!r}; expected auto, bfloat16 or float32")


@dataclass
class DataArguments:
    """Where the training and evaluation samples come from and how they become batches."""

    benchmarks: str = field(default="", metadata={"help": (
        "Comma-separated MER-UniBench benchmarks read from --data_root (mer2023, mer2024, meld, iemocap, mosi, mosei, "
        "sims, simsv2, ovmerdplus); merged with --manifest.")})
    data_root: str | None = field(default=None, metadata={"help": "Folder holding the packaged benchmark folders."})
    manifest: str = field(default="", metadata={"help": (
        "Comma-separated CSV/JSONL manifests (columns video, audio, subtitle, label, split; see "
        "benchmarks.data.load_manifest); merged with --benchmarks.")})
    generate_clips: int = field(default=0, metadata={"help": (
        "If > 0 and the --manifest file does not exist, first write this many synthetic clips and their manifest "
        "there (benchmarks.clips).")})
    train_split: str = field(default="train", metadata={"help": "Split trained on."})
    eval_split: str = field(default="test", metadata={"help": (
        "Held-out split for the eval loss and the generation accuracy ('none' to skip evaluation). The paper has no "
        "model selection, so evaluating on test does not leak; use 'val' where a benchmark has one to select.")})
    label_set: str = field(default="", metadata={"help": (
        "Comma-separated closed label set for emotion-word samples; labels outside it are an error. Unset: each "
        "packaged benchmark's own set (MER 6-way, MELD 7, IEMOCAP 4); for manifests, the labels of its train split.")})
    max_length: int = field(default=1024, metadata={"help": "Maximum tokens per sample, belief tokens included (A.3)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N training samples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only the first N evaluation samples."})
    check_media: bool = field(default=True, metadata={"help": (
        "Pre-flight check before any model loads: every sample's video/audio is opened and probed (streams, "
        "duration, decoding at start and end) and its text length checked against --max_length; results are cached "
        "in the run folder (preflight_cache.json). Bad samples are listed with file and reason, then the run stops "
        "unless --skip_bad_samples. Off: no check (a bad sample then fails in the middle of training).")})
    skip_bad_samples: bool = field(default=False, metadata={"help": (
        "Leave the samples the pre-flight check finds bad out of every split (training, evaluation, generation "
        "accuracy) and record them in the run folder's bad_samples.jsonl, instead of stopping. The collator also "
        "skips a sample that still fails to decode.")})
    preflight_workers: int = field(default=2, metadata={"help": "Threads probing media in the pre-flight check."})


@dataclass
class AffectVerseTrainingArguments(TrainingArguments):
    """transformers.TrainingArguments with the paper's recipe as defaults, plus export and generation evaluation."""

    output_dir: str | None = field(default="outputs/affectverse", metadata={"help": (
        "Run folder: run_args.json, checkpoints, the merged export, adapter/ and results.json.")})
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak AdamW learning rate (A.3: 2e-4)."})
    lr_scheduler_type: SchedulerType | str = field(default="cosine", metadata={"help": (
        "Learning-rate schedule (A.3: cosine).")})
    warmup_steps: float = field(default=0.03, metadata={"help": (
        "Linear warm-up: steps (int) or a ratio of all steps in [0, 1) (A.3: 3%%).")})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (A.3: 0.01)."})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "Samples per device per step (A.3: 4)."})
    per_device_eval_batch_size: int = field(default=4, metadata={"help": "Samples per device per eval step."})
    gradient_accumulation_steps: int = field(default=8, metadata={"help": (
        "Micro-batches per optimizer step (A.3: 8, 'effective batch 32 = 4 per GPU x 8'; on 8 GPUs that reading "
        "gives 256 per step: use 1 to keep 32).")})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs over the merged training set (A.3: 3)."})
    bf16: bool | None = field(default=None, metadata={"help": (
        "bf16 mixed precision. Unset: on when a CUDA GPU supports bf16, off otherwise (CPU).")})
    remove_unused_columns: bool = field(default=False, metadata={"help": (
        "Must stay False: the collator needs the raw dataset columns (video, audio, subtitle, label).")})
    logging_steps: float = field(default=10, metadata={"help": "Log loss, lm_loss, imagination_loss every N steps."})
    save_steps: float = field(default=200, metadata={"help": "Checkpoint every N optimizer steps."})
    save_total_limit: int | None = field(default=3, metadata={"help": "Keep at most this many checkpoints."})
    include_num_input_tokens_seen: str | bool = field(default=True, metadata={"help": (
        "Count input tokens (padding included) and log num_input_tokens_seen and train_tokens_per_second at every "
        "logging step.")})
    activation_checkpointing_kwargs: dict[str, Any] | str | None = field(
        default_factory=lambda: {"use_reentrant": False}, metadata={"help": (
            "Options of --activation_checkpointing (alias --gradient_checkpointing, off by default); non-reentrant so "
            "LoRA on a frozen backbone gets gradients without enable_input_require_grads.")})
    ddp_find_unused_parameters: bool | None = field(default=True, metadata={"help": (
        "DDP: True because the EWM skips branches per batch (the single-modality aggregator when every sample has "
        "both modalities, an imagination branch when a modality is absent).")})
    dataloader_num_workers: int = field(default=4, metadata={"help": "Worker processes decoding video/audio."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": (
        "Experiment trackers (none, tensorboard, wandb, ...).")})
    # -- not in TrainingArguments --
    overwrite_output_dir: bool = field(default=False, metadata={"help": (
        "Start afresh in an --output_dir that holds another run (files there are overwritten, not deleted).")})
    export_merged: bool = field(default=True, metadata={"help": (
        "After training, write the merged model (LoRA folded in) and processor to --output_dir and the adapter + "
        "EWM weights to --output_dir/adapter.")})
    generation_eval_samples: int = field(default=64, metadata={"help": (
        "After training, greedy-generate answers for this many held-out emotion samples and report accuracy "
        "against the closed label set (0: skip).")})
    generation_max_new_tokens: int = field(default=16, metadata={"help": "Token budget of each generated answer."})

    def __post_init__(self):
        if self.bf16 is None:
            self.bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        if self.label_smoothing_factor:  # Trainer would pop the labels: no truncation, no L_img, misaligned logits
            raise ValueError("--label_smoothing_factor is not supported: AffectVerse's forward computes its own loss "
                             "(L_lm + lambda * L_img) from the labels")
        super().__post_init__()


# The arguments that define a run (compared against an existing output folder's run_args.json). Logging,
# saving, evaluation and export options may change between a run and its resumption.
RUN_TRAINING_KEYS = (
    "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon",
    "max_grad_norm", "optim", "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs",
    "max_steps", "seed", "data_seed", "bf16", "fp16",
)
RUN_DATA_EXCLUDED = ("check_media", "max_eval_samples", "eval_split", "preflight_workers")
RUN_MODEL_EXCLUDED = ("trust_remote_code",)
# Files the pre-flight check writes into a run folder before run_args.json exists (the folder still counts as new).
PREFLIGHT_FILES = ("preflight_cache.json", "bad_samples.jsonl")
# What a checkpoint needs to be resumed from: any file matching one pattern of each part.
CHECKPOINT_PARTS = {
    "weights": ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json",
                "pytorch_model_fsdp*"),
    "optimizer": ("optimizer.pt", "optimizer_0", "global_step*"),  # global_step*: a DeepSpeed checkpoint
    "scheduler": ("scheduler.pt", "global_step*"),
    "trainer state": ("trainer_state.json",),
    "RNG state": ("rng_state.pth", "rng_state_*.pth"),
}


def parse_args(argv=None):
    """(ModelArguments, DataArguments, AffectVerseTrainingArguments); the tiny preset's defaults without a model."""
    argv = sys.argv[1:] if argv is None else list(argv)
    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    if "--model_name_or_path" not in given:
        argv = TINY_TRAINING_ARGS + ([] if given & {"--manifest", "--benchmarks"} else TINY_DATA_ARGS) + argv
    parser = HfArgumentParser((ModelArguments, DataArguments, AffectVerseTrainingArguments), description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser.parse_args_into_dataclasses(args=argv)


# ------------------------------------------------------------------------------------------- checks of the inputs
def parse_overrides(text: str) -> dict:
    """``"a=1,b=x,c=true"`` -> ``{"a": 1, "b": "x", "c": True}``, keys checked against AffectVerseConfig."""
    overrides = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"--ewm_overrides: {item!r} is not key=value")
        if key not in AffectVerseConfig.__annotations__:
            raise ValueError(f"--ewm_overrides: unknown AffectVerseConfig field {key!r}; known: "
                             f"{', '.join(AffectVerseConfig.__annotations__)}")
        try:
            overrides[key] = json.loads(value.strip())
        except json.JSONDecodeError:
            overrides[key] = value.strip()
        kind = type(getattr(AffectVerseConfig, key))
        if kind is float and isinstance(overrides[key], int) and not isinstance(overrides[key], bool):
            overrides[key] = float(overrides[key])
        if not isinstance(overrides[key], kind):
            raise ValueError(f"--ewm_overrides: {key}={value!r} is not a {kind.__name__}")
    AffectVerseConfig(**overrides)  # the config's own checks (choices, ranges) before anything is loaded
    return overrides


def config_overrides(model_args) -> dict:
    """The config fields this run sets: the --preset's, then --ewm_overrides (which win)."""
    preset = preset_fields(model_args.preset) if model_args.preset else {}
    return {**preset, **parse_overrides(model_args.ewm_overrides)}


def check_checkpoint(path: str) -> str:
    """The checkpoint's model_type; a clear error for a folder that is not a Qwen2.5-Omni/AffectVerse model."""
    if Path(path).is_dir() and not (Path(path) / "config.json").is_file():
        raise ValueError(f"--model_name_or_path {path!r}: no config.json in this folder (not a model checkpoint)")
    try:
        config, _ = PreTrainedConfig.get_config_dict(path)
    except OSError as err:
        raise ValueError(f"--model_name_or_path {path!r}: no readable config.json ({err})") from None
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"--model_name_or_path {path!r} is a {model_type!r} checkpoint; AffectVerse fine-tunes "
                         f"Qwen2.5-Omni (config model_type one of {SUPPORTED_MODEL_TYPES})")
    if Path(path).is_dir():
        check_weight_files(Path(path))
    return model_type


def check_weight_files(folder: Path):
    """Safetensors weights whose header and size agree, every shard an index names present; pickle weights refused.

    Reads only headers, so a truncated or missing file is named before anything loads.
    """
    index = folder / "model.safetensors.index.json"
    shards = sorted(folder.glob("*.safetensors"))
    if index.is_file():
        try:
            named = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{index}: unreadable shard index ({err})") from None
        missing = [name for name in named if not (folder / name).is_file()]
        if missing:
            raise ValueError(f"{index} names shards that are missing: {', '.join(missing)}")
    if not shards:
        pickles = sorted(p.name for pattern in ("*.bin", "*.pt", "*.pth", "*.ckpt") for p in folder.glob(pattern))
        detail = (f"it holds only pickle weights ({', '.join(pickles)}), which are refused: loading them can run code; "
                  "convert them to safetensors") if pickles else "it holds no *.safetensors weights"
        raise ValueError(f"--model_name_or_path {folder}: {detail}")
    for shard in shards:
        problem = preflight.safetensors_problem(shard)
        if problem:
            raise ValueError(f"{shard}: {problem}")


def run_record(model_args, data_args, training_args) -> dict:
    """What defines this run, as written to run_args.json."""
    model = {k: v for k, v in asdict(model_args).items() if k not in RUN_MODEL_EXCLUDED}
    data = {k: v for k, v in asdict(data_args).items() if k not in RUN_DATA_EXCLUDED}
    train = {k: getattr(training_args, k) for k in RUN_TRAINING_KEYS}
    return json.loads(json.dumps({"model": model, "data": data, "training": train}, default=str))


def check_writable(folder: Path):
    """Create ``folder`` and write a file in it, or raise ValueError naming it (before data or model load)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as err:
        raise ValueError(f"--output_dir {folder}: cannot write there ({err.strerror or err}); choose a writable "
                         "folder") from None


def checkpoint_problems(folder: Path) -> list[str]:
    """What keeps ``folder`` from being resumed: missing parts of CHECKPOINT_PARTS, unreadable state or weights."""
    names = [p.name for p in folder.iterdir()]
    problems = [f"no {part} ({' or '.join(patterns)})" for part, patterns in CHECKPOINT_PARTS.items()
                if not any(fnmatch.filter(names, pattern) for pattern in patterns)]
    state = folder / "trainer_state.json"
    if state.is_file():
        try:
            json.loads(state.read_text())
        except ValueError:
            problems.append("trainer_state.json is not valid JSON (cut short)")
    for weights in sorted(folder.glob("*.safetensors")):
        problem = preflight.safetensors_problem(weights)
        if problem:
            problems.append(f"{weights.name}: {problem}")
    return problems


def checkpoints(out: Path) -> list[Path]:
    """The ``checkpoint-N`` folders of ``out``, oldest step first."""
    found = [p for p in out.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def last_complete_checkpoint(out: Path) -> str | None:
    """The newest checkpoint holding everything a resume needs; each newer incomplete one is named in a warning
    and left as it is (a run killed or out of space while saving leaves one)."""
    for folder in reversed(checkpoints(out)):
        problems = checkpoint_problems(folder)
        if not problems:
            return str(folder)
        logger.warning("checkpoint %s is incomplete (%s): not resumed from, left in place", folder,
                       "; ".join(problems))
    return None


def check_output_dir(training_args, record: dict) -> str | None:
    """Refuse an output folder holding another run; return the checkpoint to resume from (None: start afresh).

    The same run resumes from ``--resume_from_checkpoint`` if given, else from its newest complete ``checkpoint-N``.
    """
    out, resume = Path(training_args.output_dir), training_args.resume_from_checkpoint
    if resume:
        if not Path(resume).is_dir():
            raise ValueError(f"--resume_from_checkpoint {resume}: no such checkpoint folder (the last checkpoint of "
                             "the same run in --output_dir is resumed without it)")
        problems = checkpoint_problems(Path(resume))
        if problems:
            raise ValueError(f"--resume_from_checkpoint {resume} cannot be resumed: {'; '.join(problems)}")
    fresh = not out.is_dir() or all(p.name in PREFLIGHT_FILES or p.name.startswith(".write-check-")
                                    for p in out.iterdir())
    if training_args.overwrite_output_dir or fresh:
        return resume or None
    saved = out / "run_args.json"
    if not saved.is_file():
        raise ValueError(f"--output_dir {out} is not empty and holds no run_args.json (not a train.py run); choose "
                         "another folder or pass --overwrite_output_dir")
    old = json.loads(saved.read_text())
    diffs = [f"{group}.{key}: {old.get(group, {}).get(key)!r} -> {value!r}"
             for group, values in record.items() for key, value in values.items()
             if old.get(group, {}).get(key) != value]
    if diffs:
        raise ValueError(f"--output_dir {out} holds a different run ({'; '.join(diffs)}); choose another folder, "
                         "pass the same arguments to resume it, or --overwrite_output_dir")
    return resume or last_complete_checkpoint(out)


# ----------------------------------------------------------------------------------------------------------- data
def closed_label_set(benchmark: str, data_args, train_labels: set[str]) -> tuple[str, ...]:
    """The label set emotion-word samples of ``benchmark`` must use."""
    if data_args.label_set:
        return tuple(s.strip().lower() for s in data_args.label_set.split(",") if s.strip())
    if benchmark in SCORED and SCORED[benchmark].label_set:
        return SCORED[benchmark].label_set
    return tuple(sorted(train_labels))


def check_labels(train, evaluation, data_args) -> dict[str, tuple[str, ...]]:
    """Every emotion-word label must be in its benchmark's closed set; returns {benchmark: label set}."""
    seen = {}  # benchmark -> [(split, label, name)]
    for split, ds in (("train", train), ("eval", evaluation)):
        columns = (ds[c] for c in ("benchmark", "task", "emotion", "name")) if ds is not None else ((),)
        for bench, task, label, name in zip(*columns):
            if task == "emotion":
                seen.setdefault(bench, []).append((split, str(label).lower().strip(), name))
    sets, problems = {}, []
    for bench, items in seen.items():
        label_set = closed_label_set(bench, data_args, {label for split, label, _ in items if split == "train"})
        sets[bench] = label_set
        unknown = {}
        for split, label, name in items:
            if map_to_label_set([label], label_set) is None:
                unknown.setdefault((split, label), []).append(name)
        problems += [f"{bench} {split}: {label!r} x{len(names)} (e.g. {names[0]}); expected one of {list(label_set)}"
                     for (split, label), names in unknown.items()]
    if problems:
        raise ValueError("unknown labels for closed-set data (declare the set with --label_set):\n  "
                         + "\n  ".join(problems))
    return sets


def load_split(data_args, split: str):
    """The merged dataset of all sources for ``split``; a clear error when a source gives nothing."""
    parts, skipped = [], []
    for path in filter(None, (p.strip() for p in data_args.manifest.split(","))):
        ds = load_manifest(path, split=split)  # media: the pre-flight check (screen_data) probes every file
        parts.append((path, ds))
    names = [n.strip() for n in data_args.benchmarks.split(",") if n.strip()]
    if names and not data_args.data_root:
        raise ValueError("--benchmarks needs --data_root (the folder holding the packaged benchmarks)")
    for name in names:
        try:
            ds = load_benchmark(name, data_args.data_root, split)
        except ValueError as err:  # a benchmark without this split (e.g. no val): skip it, say so
            if "has no split" not in str(err):
                raise
            logger.warning("%s", err)
            skipped.append(name)
            continue
        parts.append((name, ds))
    if not parts and skipped:
        raise ValueError(f"split {split!r}: none of {skipped} has it")
    if not parts:
        raise ValueError("no data: give --manifest FILE[,FILE] and/or --benchmarks NAMES --data_root DIR")
    empty = [source for source, ds in parts if len(ds) == 0]
    if empty:
        raise ValueError(f"split {split!r} is empty in: {', '.join(empty)}")
    return merge_benchmarks([ds for _, ds in parts])


def load_data(data_args):
    """(train, eval or None, label sets); all data errors surface here, before any model is loaded."""
    manifest = data_args.manifest.split(",")[0].strip()
    if data_args.generate_clips > 0 and manifest and not Path(manifest).exists():
        logger.info("generating %d synthetic clips into %s", data_args.generate_clips, Path(manifest).parent)
        generate_clips(Path(manifest).parent, n_clips=data_args.generate_clips, seed=0)
    train = load_split(data_args, data_args.train_split)
    evaluation = None if data_args.eval_split.lower() == "none" else load_split(data_args, data_args.eval_split)
    if data_args.max_train_samples:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    if evaluation is not None and data_args.max_eval_samples:
        evaluation = evaluation.select(range(min(data_args.max_eval_samples, len(evaluation))))
    return train, evaluation, check_labels(train, evaluation, data_args)


def screen_data(train, evaluation, processor, data_args, out: Path, main_process: bool = True):
    """The pre-flight check (``benchmarks.preflight``): (train, eval) without bad samples, or ValueError listing them.

    Every sample's media are probed and its text measured against ``max_length`` (cache: ``out/preflight_cache.json``).
    By default any bad sample stops the run; with ``--skip_bad_samples`` bad samples leave both splits (so no batch,
    evaluation or generation meets them) and are written to ``out/bad_samples.jsonl``.
    """
    if not data_args.check_media:
        return train, evaluation
    bad = preflight.check_splits({"train": train, "eval": evaluation}, processor, out / "preflight_cache.json",
                                 data_args.preflight_workers, save_cache=main_process)
    if not bad:
        logger.info("pre-flight check: all %d samples usable", len(train) + (len(evaluation) if evaluation else 0))
        return train, evaluation
    if not data_args.skip_bad_samples:
        raise ValueError(f"pre-flight check: {len(bad)} bad samples; nothing was trained. Fix or remove them, or pass "
                         f"--skip_bad_samples to leave them out (recorded in bad_samples.jsonl):\n"
                         + preflight.describe(bad))
    if main_process:
        preflight.write_bad_samples(out / "bad_samples.jsonl", bad)
    logger.warning("pre-flight check: leaving out %d bad samples (listed in %s):\n%s", len(bad),
                   out / "bad_samples.jsonl", preflight.describe(bad, limit=10))
    train, evaluation = preflight.drop_bad(train, bad, "train"), preflight.drop_bad(evaluation, bad, "eval")
    for role, ds in (("train", train), ("eval", evaluation)):
        if ds is not None and len(ds) == 0:
            raise ValueError(f"pre-flight check: every {role} sample is bad (see {out / 'bad_samples.jsonl'})")
    return train, evaluation


# ---------------------------------------------------------------------------------------------------------- model
def register_local_classes():
    """Let transformers' Auto classes resolve ``model_type: affectverse`` to this project's config class, so a
    tokenizer or processor load from an AffectVerse folder neither runs the folder's code nor prompts y/N."""
    AutoConfig.register(AffectVerseConfig.model_type, AffectVerseConfig, exist_ok=True)


PROCESSOR_FILES = {  # what AffectVerseProcessor.from_pretrained needs in a folder: one file (set) of each entry
    "tokenizer": (("tokenizer.json",), ("vocab.json", "merges.txt")),
    "tokenizer config": (("tokenizer_config.json",),),
    "processor config": (("processor_config.json",), ("preprocessor_config.json",)),
}


def load_config(model_args):
    """The AffectVerseConfig of the run (EWM overrides applied), without loading any weights."""
    overrides = config_overrides(model_args)
    if model_args.model_name_or_path is None:
        return tiny_config(**overrides)
    path = model_args.model_name_or_path
    if model_args.trust_remote_code:
        return AutoConfig.from_pretrained(path, trust_remote_code=True, **overrides)
    return AffectVerseConfig.from_pretrained(path, **overrides)


def load_processor(model_args, data_args, config):
    """The run's AffectVerseProcessor (belief settings from ``config``, ``max_length`` from the data arguments);
    a folder lacking processor or tokenizer files is named with what is missing."""
    path = model_args.model_name_or_path
    if path is None:
        base = tiny_processor()
    else:
        register_local_classes()
        folder = Path(path)
        if folder.is_dir():
            missing = [part + " (" + " or ".join(" + ".join(s) for s in options) + ")"
                       for part, options in PROCESSOR_FILES.items()
                       if not any(all((folder / f).is_file() for f in files) for files in options)]
            if missing:
                raise ValueError(f"--model_name_or_path {path}: no processor files for {'; '.join(missing)}; copy them "
                                 "from the base model's folder (e.g. Qwen2.5-Omni-7B)")
        try:
            if model_args.trust_remote_code:
                from transformers import AutoProcessor

                base = AutoProcessor.from_pretrained(path, trust_remote_code=True)
            else:
                base = AffectVerseProcessor.from_pretrained(path)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"--model_name_or_path {path}: the processor/tokenizer does not load "
                             f"({type(err).__name__}: {err})") from None
    build = getattr(type(base), "from_model_config", AffectVerseProcessor.from_model_config)
    return build(config, base, max_length=data_args.max_length)


def load_model(model_args, data_args, training_args, processor=None):
    """(AffectVerse model, processor): the tiny random preset or a Qwen2.5-Omni / AffectVerse checkpoint.

    The processor takes its belief settings (N_b, injection, construction) from the model's config, so EWM overrides
    reach both, and ``max_length`` from the data arguments; pass the one :func:`load_processor` built to reuse it.
    """
    config = load_config(model_args)
    processor = processor if processor is not None else load_processor(model_args, data_args, config)
    if model_args.model_name_or_path is None:
        set_seed(training_args.seed)  # the random backbone is a function of the seed (resuming rebuilds it)
        return AffectVerseForConditionalGeneration(config), processor
    dtype = model_args.model_dtype
    if dtype == "auto":
        dtype = "bfloat16" if training_args.bf16 else "float32"
    kwargs = {"dtype": getattr(torch, dtype)}
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    path, overrides = model_args.model_name_or_path, config_overrides(model_args)
    try:
        if model_args.trust_remote_code:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, **kwargs, **overrides)
        else:
            model = AffectVerseForConditionalGeneration.from_pretrained(path, **kwargs, **overrides)
    except (OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"--model_name_or_path {path}: the model does not load ({type(err).__name__}: {err})") \
            from None
    return model, processor


def add_lora(model, model_args):
    """Wrap ``model`` with LoRA on ``lora_target_modules``; the EWM is trained in full through modules_to_save.

    ``modules_to_save=["ewm"]`` rather than ``requires_grad_(True)``: peft then saves the EWM with the adapter
    (every Trainer checkpoint and the ``adapter/`` export hold it, and resuming restores it), and
    ``merge_and_unload`` puts the trained copy back in place.
    """
    config = LoraConfig(
        r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules,
        modules_to_save=["ewm"] if model.ewm is not None else None,
    )
    model = get_peft_model(model, config)
    for param in model.parameters():  # bf16 backbone: keep the optimised weights in fp32
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    return model


# -------------------------------------------------------------------------------------------------------- trainer
class AffectVerseTrainer(Trainer):
    """Trainer that logs L_lm, L_img and the per-step imagination cosine next to the total loss.

    The model's ``loss`` is already L_lm + lambda * L_img (Eq. 10) and a per-batch mean; the model declares
    ``accepts_loss_kwargs = False`` so Trainer divides it by the accumulation steps. The extra terms are summed
    over every training micro-batch since the last log, summed across processes and divided by the micro-batch
    count, so they average exactly like Trainer's ``loss``. At evaluation they are dropped (``EVAL_IGNORE_KEYS``)
    and never reach ``compute_metrics``; the eval loss is L_lm at inference conditions (kappa = 1, no dropout).
    """

    EVAL_IGNORE_KEYS = ("lm_loss", "imagination_loss", "imagination_cosine", "belief_attention", "cache",
                        "hidden_states", "labels")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_callback(LogAtCheckpoints)
        steps = self.accelerator.unwrap_model(self.model).config.rollout_steps
        # [micro-batches, sum lm_loss, n with L_img, sum L_img, n with cosine, sum cosine per step (S)]
        self._sums = torch.zeros(5 + steps, dtype=torch.float64, device=self.args.device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        training = model.training
        if training:
            inputs = {**inputs, "output_imagination": True}
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if training:
            self._accumulate(outputs)
        return (loss, outputs) if return_outputs else loss

    @torch.no_grad()
    def _accumulate(self, outputs):
        sums = self._sums
        sums[0] += 1
        sums[1] += outputs.lm_loss.detach().double()
        if outputs.imagination_loss is not None:
            sums[2] += 1
            sums[3] += outputs.imagination_loss.detach().double()
        if outputs.imagination_cosine is not None:
            sums[4] += 1
            sums[5:] += outputs.imagination_cosine.detach().double()

    def log(self, logs, start_time=None):
        if "loss" in logs:  # a training log: every process gets here at the same step
            sums = self.accelerator.reduce(self._sums.clone(), reduction="sum")
            self._sums.zero_()
            n, n_img, n_cos = sums[0].item(), sums[2].item(), sums[4].item()
            if n:
                logs["lm_loss"] = round(sums[1].item() / n, 6)
            if n_img:
                logs["imagination_loss"] = round(sums[3].item() / n_img, 6)
            if n_cos:
                for step, value in enumerate(sums[5:].tolist(), 1):
                    logs[f"imagination_cosine_s{step}"] = round(value / n_cos, 6)
        super().log(logs, start_time)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        ignore = list(self.EVAL_IGNORE_KEYS) + list(ignore_keys or [])
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore)

    def _save_checkpoint(self, model, trial):
        folder = Path(self.args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        with explain_disk_full(folder, "saving checkpoint"):
            super()._save_checkpoint(model, trial)


# ------------------------------------------------------------------------------------------------ disk, losses
DISK_FULL_SIGNS = ("no space left", "unexpected pos", "storagefull", "code: 28", "disk quota", "file write failed")


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` (or what caused it) is a write that ran out of space: ENOSPC/EDQUOT, torch's zip writer
    ("inline_container.cc ... unexpected pos") or safetensors' ("StorageFull")."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(sign in str(err).lower() for sign in DISK_FULL_SIGNS):
            return True
        err = err.__cause__ or err.__context__
    return False


@contextmanager
def explain_disk_full(folder: Path, what: str):
    """Turn a write that ran out of space inside the block into an OSError(ENOSPC) naming ``folder`` and the free
    space of its file system; any other error passes unchanged."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        if not is_disk_full(err):
            raise
        probe = Path(folder)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        raise OSError(errno.ENOSPC, f"{what} {folder}: no space left on the device ({free / 2**30:.2f} GiB free "
                      f"there). The folder is incomplete: a resume skips it and starts from the newest complete "
                      f"checkpoint. Free some space (or lower --save_total_limit) and run the same command again "
                      f"({type(err).__name__}: {str(err)[:200]})") from err


def whole_run_train_loss(log_history: list[dict], session_loss: float, first_step: int, last_step: int) -> float:
    """Mean training loss per optimizer step over the whole run, resumed or not.

    Trainer's ``train_loss`` covers only this call's steps ``(first_step, last_step]``. The log history (restored
    with the checkpoint) gives each logged interval's mean loss: the steps before ``first_step`` come from it (every
    checkpoint step is logged, see :class:`LogAtCheckpoints`, so it covers them all), the others from
    ``session_loss``. Steps an older checkpoint never logged are left out of the mean.
    """
    before, previous = 0.0, 0
    for entry in log_history:
        if "loss" in entry and "step" in entry and previous < entry["step"] <= first_step:
            before += entry["loss"] * (entry["step"] - previous)
            previous = entry["step"]
    steps = previous + last_step - first_step
    return (before + session_loss * (last_step - first_step)) / steps if steps > 0 else float("nan")


class LogAtCheckpoints(TrainerCallback):
    """Log the training loss at every step that saves a checkpoint, so the checkpoint's log history covers every
    step before it (a resumed run then knows the loss of the whole run)."""

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:
            control.should_log = True

    on_epoch_end = on_step_end


# --------------------------------------------------------------------------------------------- evaluation, export
@torch.no_grad()
def generation_accuracy(model, processor, dataset, label_sets, n_samples: int, max_new_tokens: int,
                        batch_size: int = 4) -> dict | None:
    """Greedy answers for the first ``n_samples`` held-out emotion samples, mapped onto their closed label set.

    Runs on ``benchmarks.engine.Engine`` (media decoded in this process; a clip that fails counts as wrong)."""
    rows = [r for r in dataset if r["task"] == "emotion" and r["benchmark"] in label_sets][:n_samples]
    if not rows:
        return None
    model.eval()
    engine = Engine(model, processor, max_new_tokens, batch_size, num_workers=0)
    correct, examples = 0, []
    for _, chunk, results in engine.run(engine.batches([(Setting(MODALITIES["avt"]), row) for row in rows])):
        for row, result in zip(chunk, results):
            label_set = label_sets[row["benchmark"]]
            truth = map_to_label_set([row["emotion"].lower()], label_set)
            answer = result.get("answer", "")
            guess = map_to_label_set(extract_labels(answer), label_set) if result["status"] == "ok" else None
            correct += result["status"] == "ok" and guess == truth
            examples.append({"name": row["name"], "label": truth, "answer": answer, "prediction": guess,
                             **({"error": result["reason"]} if result["status"] == "error" else {})})
    sets = {tuple(label_sets[r["benchmark"]]) for r in rows}
    label_set = list(sets.pop()) if len(sets) == 1 else None  # for the chance level, when there is one set
    return {"accuracy": correct / len(rows), "n": len(rows), "label_set": label_set, "examples": examples[:8]}


def export(trainer, processor, model_args, data_args, out: Path, record: dict | None = None,
           facts: dict | None = None):
    """Write the adapter + EWM weights to out/adapter, and the merged model, processor and model card to out.

    ``adapter/adapter_config.json`` records the base: ``base_model_name_or_path`` is ``--model_name_or_path``
    (absolute when it is a local folder, so ``AutoPeftModelForCausalLM.from_pretrained(out / "adapter",
    trust_remote_code=True)`` loads base + adapter), or, for the tiny preset, a description of the random base (it is
    not saved: rebuild it from the seed), and ``task_type`` CAUSAL_LM. The merged ``config.json`` records the
    adapter it folded in (``merged_adapter``: its sha256), so a loader can refuse to apply it a second time, and the
    pipelines (``custom_pipelines``; the processor's code files include ``pipeline_affectverse.py``).
    Returns the merged model on the main process (None elsewhere). Merging folds LoRA into the trainer's model in
    place: call it after training. ``record`` (run_args.json) and ``facts`` (:func:`card_facts`) go into the card.
    """
    with explain_disk_full(out / "adapter", "exporting the adapter to"):
        trainer.save_model(str(out / "adapter"))  # gathers sharded (FSDP/ZeRO) weights; the main process writes
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():
        return None
    adapter_config = out / "adapter" / "adapter_config.json"
    adapter = json.loads(adapter_config.read_text())
    base = model_args.model_name_or_path
    adapter["base_model_name_or_path"] = str(Path(base).resolve()) if base and Path(base).is_dir() else base or (
        f"affectverse-tiny-random: not saved; AffectVerseForConditionalGeneration(benchmarks.tiny.tiny_config("
        f"{model_args.ewm_overrides or ''})) built after transformers.set_seed({trainer.args.seed})")
    adapter["task_type"] = "CAUSAL_LM"
    adapter_config.write_text(json.dumps(adapter, indent=2, sort_keys=True) + "\n")
    if trainer.is_fsdp_enabled:  # parameters are sharded: rebuild from the saved adapter on the CPU
        base, _ = load_model(model_args, data_args, trainer.args)
        model = PeftModel.from_pretrained(base, str(out / "adapter"))
    else:
        model = trainer.accelerator.unwrap_model(trainer.model)
    probe = model.get_base_model().lora_probe()  # before merging: how the merged model recognises this adapter
    merged = model.merge_and_unload()
    merged.config = copy.deepcopy(merged.config)  # the record is the merged model's: not of models sharing the config
    merged.config.merged_adapter = {"sha256": hashlib.sha256((out / "adapter" / "adapter_model.safetensors")
                                                             .read_bytes()).hexdigest(), "folder": "adapter",
                                    "probe": probe}
    with explain_disk_full(out, "exporting the merged model to"):
        # the classes register for auto classes: code files and auto_map come along; README.md is the model card
        hub.export_for_hub(merged, processor, out, training_args=record, base_model=card_base_model(model_args),
                           run=facts)
    return merged


def card_base_model(model_args) -> str | None:
    """The model card's ``base_model``: none for the tiny preset or an unnamed local folder, the Hub id otherwise."""
    path = model_args.model_name_or_path
    if path is None:
        return None
    if not Path(path).exists():
        return path  # a Hub id
    return hub.BASE_MODEL if Path(path).name.lower() == hub.BASE_MODEL.split("/")[1].lower() else None


def card_facts(results: dict, model_args, data_args, state, n_train: int, eval_ds, n_bad: int) -> dict:
    """What the model card says about this run: its base model and data as they were, its losses and accuracy."""
    tiny = model_args.model_name_or_path is None
    data = [f"MER-UniBench packaged benchmarks {data_args.benchmarks} from {data_args.data_root}"] \
        if data_args.benchmarks else []
    manifests = [m.strip() for m in data_args.manifest.split(",") if m.strip()]
    generated = data_args.generate_clips > 0 and bool(manifests)  # load_data generates the first manifest's clips
    for i, manifest in enumerate(manifests):
        data.append(f"manifest {manifest}" + (" (synthetic clips generated by benchmarks/clips.py)"
                                              if generated and i == 0 else ""))
    return {
        "tiny": tiny, "generated": generated and len(data) == 1,
        "base": ("a random tiny AffectVerse built from the seed (benchmarks/tiny.py), not Qwen2.5-Omni-7B" if tiny
                 else f"{model_args.model_name_or_path}"),
        "data": "; ".join(data), "train_samples": n_train, "bad_samples": n_bad,
        "steps": state.global_step, "epochs": round(state.epoch or 0, 3),
        "train_loss": (results.get("train") or {}).get("train_loss"),
        "eval_split": data_args.eval_split if eval_ds is not None else None,
        "eval_samples": len(eval_ds) if eval_ds is not None else 0,
        "eval_loss": (results.get("eval") or {}).get("eval_loss"),
        "generation": {k: v for k, v in (results.get("generation") or {}).items() if k != "examples"} or None,
    }


def write_results(out: Path, results: dict):
    """results.json, replaced atomically (a kill while writing leaves the previous one)."""
    with explain_disk_full(out, "writing results.json to"):
        tmp = out / "results.json.tmp"
        tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
        tmp.replace(out / "results.json")


# ----------------------------------------------------------------------------------------------------------- main
def main(argv=None):
    model_args, data_args, training_args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    t0 = time.time()
    out, is_main = Path(training_args.output_dir), training_args.process_index == 0

    # 1. Inputs, all checked before anything heavy is loaded: output folder, checkpoint files, data, processor,
    #    then every sample's media and text (the pre-flight check).
    check_writable(out)
    if model_args.model_name_or_path is not None:
        check_checkpoint(model_args.model_name_or_path)
    config_overrides(model_args)
    record = run_record(model_args, data_args, training_args)
    resume = check_output_dir(training_args, record)
    with training_args.main_process_first(desc="data"):
        train_ds, eval_ds, label_sets = load_data(data_args)
    processor = load_processor(model_args, data_args, load_config(model_args))
    n_before = len(train_ds) + (len(eval_ds) if eval_ds is not None else 0)
    with training_args.main_process_first(desc="pre-flight check"):
        train_ds, eval_ds = screen_data(train_ds, eval_ds, processor, data_args, out, is_main)
    n_bad = n_before - len(train_ds) - (len(eval_ds) if eval_ds is not None else 0)
    logger.info("data: %d train / %s eval samples; closed label sets %s", len(train_ds),
                len(eval_ds) if eval_ds is not None else 0, label_sets)

    # 2. Model: AffectVerse + LoRA on the language model's q/k/v/o + the full EWM; the rest frozen.
    model, processor = load_model(model_args, data_args, training_args, processor)
    model = add_lora(model, model_args)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("trainable parameters: %d of %d (%.2f%%)", trainable, total, 100 * trainable / total)

    # 3. Train.
    collator = AffectVerseCollator(processor, training=True,
                                   on_error="skip" if data_args.skip_bad_samples else "raise")
    trainer = AffectVerseTrainer(model=model, args=training_args, train_dataset=train_ds, eval_dataset=eval_ds,
                                 data_collator=collator, processing_class=processor)
    if is_main:
        (out / "run_args.json").write_text(json.dumps(record, indent=2) + "\n")
    if resume:
        logger.info("resuming from %s", resume)
    first_step = json.loads((Path(resume) / "trainer_state.json").read_text())["global_step"] if resume else 0
    train_result = trainer.train(resume_from_checkpoint=resume)
    metrics = dict(train_result.metrics)
    metrics["train_loss_this_call"] = metrics.get("train_loss")
    metrics["train_loss"] = whole_run_train_loss(trainer.state.log_history, train_result.training_loss, first_step,
                                                 trainer.state.global_step)
    results = {"train": metrics, "bad_samples": n_bad}
    if is_main:  # from here on results.json always exists; each later stage adds to it
        write_results(out, results)

    # 4. Evaluate (eval loss on the held-out split), export (merged model, processor, adapter, model card), then
    #    greedy-generation accuracy on the merged model. A failing stage is recorded and the next ones still run.
    failed = []

    def attempt(stage, run):
        try:
            return run()
        except Exception as err:  # noqa: BLE001 - recorded, reported, re-raised at the end
            logger.exception("%s failed", stage)
            results.setdefault("errors", {})[stage] = f"{type(err).__name__}: {err}"
            failed.append((stage, err))
            return None

    if eval_ds is not None:
        results["eval"] = attempt("eval", trainer.evaluate)

    def facts():
        return card_facts(results, model_args, data_args, trainer.state, len(train_ds), eval_ds, n_bad)

    merged = None
    if training_args.export_merged:
        merged = attempt("export", lambda: export(trainer, processor, model_args, data_args, out, record, facts()))
    if eval_ds is not None and training_args.generation_eval_samples > 0 and trainer.is_world_process_zero():
        model = merged if merged is not None else trainer.accelerator.unwrap_model(trainer.model)
        results["generation"] = attempt("generation accuracy", lambda: generation_accuracy(
            model, processor, eval_ds, label_sets, training_args.generation_eval_samples,
            training_args.generation_max_new_tokens, training_args.per_device_eval_batch_size))
        if merged is not None:  # the card gains the accuracy
            attempt("model card", lambda: hub.model_card(
                merged, training_args=record, base_model=card_base_model(model_args),
                datasets=hub.card_datasets(record), run=facts()).save(out / "README.md"))
    if trainer.is_world_process_zero():
        write_results(out, results)
        summarize(facts(), out, time.time() - t0, merged is not None)
    if failed:
        stage, err = failed[0]
        raise RuntimeError(f"{', '.join(s for s, _ in failed)} failed after training (results.json records the "
                           f"rest; the checkpoints are intact): {stage}: {err}") from err
    return results


def summarize(run: dict, out: Path, seconds: float, exported: bool):
    """Print what the run did (``card_facts``, as the model card says it) and where it wrote."""
    lines = [f"Trained AffectVerse in {seconds / 60:.1f} min.", *hub.run_lines(run)]
    if run.get("bad_samples"):
        lines.append(f"The bad samples are listed in {out / 'bad_samples.jsonl'}.")
    lines.append(f"Wrote to {out.resolve()}:")
    if exported:
        lines.append("  merged model + processor + model card README.md "
                     "(AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True))")
        lines.append(f"  {out / 'adapter'}: LoRA adapter + EWM weights (PeftModel.from_pretrained)")
    lines.append(f"  checkpoints: {', '.join(p.name for p in checkpoints(out)) or 'none'}; "
                 "results.json, run_args.json")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
