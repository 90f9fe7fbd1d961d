"""train.py's arguments: the model, data and training options, with the paper's recipe (A.3) as defaults."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers import TrainingArguments
from transformers.trainer_utils import SchedulerType
from trl import GRPOConfig

from affectverse.training.rewards import DEFAULT_REWARDS, parse_rewards
from configuration_affectverse import AffectVerseConfig, list_presets, preset_fields

# The language model's attention projections only. A plain ["q_proj", "k_proj", "v_proj", "o_proj"] would also
# wrap the audio tower's self_attn.{q,k,v}_proj; peft full-matches this regex against module names.
LORA_TARGET = r"model\.language_model\.layers\.\d+\.self_attn\.(q|k|v|o)_proj"
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

# `train.py --method grpo` without --model_name_or_path: a short sft run of the tiny preset on the same clips is the
# starting model (3 epochs instead of 4: it answers about 4 held-out clips in 10 right and half of its answers are
# malformed, so GRPO has room to improve), then GRPO from it with these arguments (given arguments come after, so
# they win): 40 steps of 4 clips x 4 sampled answers at temperature 0.7, held-out rewards on the 24 test clips.
TINY_GRPO_START = "outputs/affectverse-tiny-grpo-start"
TINY_GRPO_START_ARGS = ["--output_dir", TINY_GRPO_START, "--num_train_epochs", "3", "--generation_eval_samples", "0",
                        "--eval_strategy", "no"]
TINY_GRPO_ARGS = [
    "--output_dir", "outputs/affectverse-tiny-grpo", "--emotion_wheel", "data/tiny_clips/emotion_wheel",
    "--generate_wheel", "--num_generations", "4", "--per_device_train_batch_size", "16",
    "--max_completion_length", "16", "--length_budget", "12", "--temperature", "0.7", "--learning_rate", "1e-3",
    "--max_steps", "40", "--save_steps", "20", "--held_out_samples", "24", "--eval_split", "test",
]


METHODS = ("sft", "grpo")


@dataclass
class ModelArguments:
    """Which model to start from, the EWM configuration and the LoRA adapter."""

    model_name_or_path: str | None = field(default=None, metadata={"help": (
        "Qwen2.5-Omni checkpoint folder (full omni or thinker-only; config model_type qwen2_5_omni, "
        "qwen2_5_omni_thinker or affectverse). Unset: the tiny random preset of affectverse/default/tiny.py, built "
        "from --seed (the embedded default).")})
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
    method: str = field(default="sft", metadata={"help": (
        "sft: supervised fine-tuning with the paper's recipe (A.3). grpo: reinforcement fine-tuning with trl's GRPO on "
        "the emotion-wheel reward (affectverse/training/grpo.py), from an AffectVerse folder (typically an sft run's "
        "output); without --model_name_or_path the embedded default first trains a short sft warm start.")})

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"--method {self.method!r}; expected one of {', '.join(METHODS)}")
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
        "affectverse.data.readers.load_manifest); merged with --benchmarks.")})
    generate_clips: int = field(default=0, metadata={"help": (
        "If > 0 and the --manifest file does not exist, first write this many synthetic clips and their manifest "
        "there (affectverse.default.clips).")})
    train_split: str = field(default="train", metadata={"help": "Split trained on."})
    eval_split: str = field(default="test", metadata={"help": (
        "Held-out split for the eval loss and the generation accuracy ('none' to skip evaluation). The paper has no "
        "model selection, so evaluating on test does not leak; use 'val' where a benchmark has one to select.")})
    label_set: str = field(default="", metadata={"help": (
        "Comma-separated closed label set for emotion-word samples; labels outside it are an error. Unset: each "
        "packaged benchmark's own set (MER 6-way, MELD 7, IEMOCAP 4); for manifests, the labels of its train split.")})
    max_length: int = field(default=1024, metadata={"help": "Maximum tokens per sample, belief tokens included (A.3)."})
    audio_layout: str = field(default="interleaved", metadata={"help": (
        "'interleaved' (audio inside the video block in 2 s chunks: Qwen2.5-Omni's native use_audio_in_video layout, "
        "which `affectverse live` needs) or 'separate' (an audio block after the video block). A batch must not "
        "mix samples with and without audio in the interleaved layout; the readers give every video its audio. "
        "docs/design.md, 'Which layout train.py trains'.")})
    audio_features: str = field(default="window", metadata={"help": (
        "'window' (Whisper's log-mel per 2 s audio-encoder window, prefix-stable: what `affectverse live` computes) "
        "or 'clip' (over the whole clip, the stock processor).")})
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


@dataclass
class AffectVerseGRPOConfig(GRPOConfig):
    """trl's GRPOConfig for ``train.py --method grpo``: AffectVerse's defaults, the rewards and the EWM options.

    Every trl option stays available (``--num_generations``, ``--beta``, ``--temperature``, ``--loss_type``, ...);
    ``--use_vllm`` is refused (vLLM would generate without the Emotion World Module).
    """

    output_dir: str | None = field(default="outputs/affectverse-grpo", metadata={"help": (
        "Run folder: run_args.json, checkpoints, the merged export, adapter/ and results.json.")})
    learning_rate: float = field(default=1e-5, metadata={"help": (
        "Peak AdamW learning rate of LoRA and the EWM (trl's 1e-6 default is meant for full fine-tuning).")})
    beta: float = field(default=0.04, metadata={"help": (
        "KL coefficient against the reference policy, the adapter-disabled model (LoRA off, the EWM as loaded: no "
        "second copy in memory). 0.04 is DeepSeekMath's GRPO value; trl's default 0 drops the KL term.")})
    num_generations: int | None = field(default=8, metadata={"help": "Sampled answers per prompt (the group, G)."})
    max_completion_length: int | None = field(default=64, metadata={"help": (
        "Token budget of each sampled answer (AffectVerse answers in one sentence).")})
    per_device_train_batch_size: int = field(default=8, metadata={"help": (
        "Completions per device per step: per_device_train_batch_size x processes x steps_per_generation must be a "
        "multiple of --num_generations.")})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs over the training prompts."})
    logging_steps: float = field(default=1, metadata={"help": (
        "Log every N steps: each reward's mean and std, KL, completion lengths, truncated (completions/clipped_ratio) "
        "and PPO-clipped (clip_ratio/*) fractions, entropy.")})
    save_steps: float = field(default=50, metadata={"help": "Checkpoint every N optimizer steps."})
    save_total_limit: int | None = field(default=3, metadata={"help": "Keep at most this many checkpoints."})
    bf16: bool | None = field(default=None, metadata={"help": (
        "bf16 mixed precision. Unset: on when a CUDA GPU supports bf16, off otherwise (CPU).")})
    gradient_checkpointing: bool = field(default=False, metadata={"help": (
        "Recompute activations in the backward pass (trl's default is on; off here as in sft).")})
    disable_dropout: bool = field(default=True, metadata={"help": (
        "Set every dropout to 0 (LoRA's too), so the policy's log-prob pass scores the answers of the model that "
        "sampled them.")})
    ddp_find_unused_parameters: bool | None = field(default=True, metadata={"help": (
        "DDP: True because the EWM skips branches per batch.")})
    dataloader_num_workers: int = field(default=0, metadata={"help": (
        "DataLoader workers; the rows are file names, media are decoded when a prompt is rolled out.")})
    report_to: None | str | list[str] = field(default="none", metadata={"help": (
        "Experiment trackers (none, tensorboard, wandb, ...).")})
    trust_remote_code: bool = field(default=False, init=False)  # --trust_remote_code is ModelArguments'
    # -- not in GRPOConfig --
    rewards: str = field(default=DEFAULT_REWARDS, metadata={"help": (
        "Rewards and their weights, name=weight pairs (affectverse/training/rewards.py): emotion_wheel (the "
        "MER-UniBench emotion-wheel score, needs --emotion_wheel), accuracy (closed-set accuracy), answer_format "
        "(the trained answer form, ended), length_penalty (0 up to --length_budget tokens, down to -1).")})
    emotion_wheel: str | None = field(default=None, metadata={"help": (
        "MER-UniBench's emotion_wheel/ folder (format.csv, synonym.xlsx, wheel1..5.xlsx) for the emotion_wheel "
        "reward.")})
    wheel_level: int = field(default=1, metadata={"help": (
        "Wheel level the emotion_wheel reward matches at: 1 (MER-UniBench's clusters), 2 or 3 (finer rings).")})
    length_budget: int = field(default=32, metadata={"help": "Completion tokens the length penalty lets pass."})
    freeze_ewm: bool = field(default=False, metadata={"help": "Train LoRA only; the EWM stays as loaded."})
    imagination_weight: float = field(default=0.0, metadata={"help": (
        "Add this weight x the imagination loss L_img (Eq. 21; one more forward per micro-batch, in training mode "
        "with the temporal split) to the GRPO loss. 0: off.")})
    generate_wheel: bool = field(default=False, metadata={"help": (
        "If --emotion_wheel does not exist, write the hand-made mini wheel there (affectverse/default/wheel.py; the "
        "embedded default's stand-in for MER-UniBench's).")})
    held_out_samples: int = field(default=64, metadata={"help": (
        "Before and after training, greedy answers for this many --eval_split samples: each reward's mean and "
        "closed-set accuracy (0: skip).")})
    overwrite_output_dir: bool = field(default=False, metadata={"help": (
        "Start afresh in an --output_dir that holds another run (files there are overwritten, not deleted).")})
    export_merged: bool = field(default=True, metadata={"help": (
        "After training, write the merged model and processor to --output_dir and LoRA + EWM to "
        "--output_dir/adapter.")})

    def __post_init__(self):
        if self.bf16 is None:
            self.bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        if self.use_vllm:
            raise ValueError("--use_vllm is refused: vLLM would sample from its own copy of the language model, "
                             "without the Emotion World Module's beliefs, so the rollouts would not be this model's")
        if self.wheel_level not in (1, 2, 3):
            raise ValueError(f"--wheel_level {self.wheel_level}: expected 1, 2 or 3")
        if self.imagination_weight < 0:
            raise ValueError(f"--imagination_weight {self.imagination_weight}: must be >= 0")
        if any(name == "emotion_wheel" for name, _ in parse_rewards(self.rewards)) and not self.emotion_wheel:
            raise ValueError("--rewards emotion_wheel needs --emotion_wheel DIR (MER-UniBench's emotion_wheel/ "
                             "folder); or leave emotion_wheel out of --rewards")
        super().__post_init__()


# The arguments that define a run (compared against an existing output folder's run_args.json). Logging,
# saving, evaluation and export options may change between a run and its resumption.
RUN_TRAINING_KEYS = (
    "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon",
    "max_grad_norm", "optim", "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs",
    "max_steps", "seed", "data_seed", "bf16", "fp16",
)
GRPO_RUN_KEYS = RUN_TRAINING_KEYS + (
    "num_generations", "max_completion_length", "temperature", "top_p", "top_k", "beta", "epsilon", "epsilon_high",
    "loss_type", "scale_rewards", "importance_sampling_level", "num_iterations", "steps_per_generation",
    "mask_truncated_completions", "disable_dropout", "rewards", "emotion_wheel", "wheel_level", "length_budget",
    "freeze_ewm", "imagination_weight",
)
RUN_DATA_EXCLUDED = ("check_media", "max_eval_samples", "eval_split", "preflight_workers")
RUN_MODEL_EXCLUDED = ("trust_remote_code",)
# What a run_args.json written before a field existed trained with (audio: the separate layout and whole-clip
# features were the only ones before issue 20).
RECORD_DEFAULTS = {"method": "sft", "audio_layout": "separate", "audio_features": "clip"}


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


def run_record(model_args, data_args, training_args, keys=RUN_TRAINING_KEYS) -> dict:
    """What defines this run, as written to run_args.json (``keys``: the training arguments that count)."""
    model = {k: v for k, v in asdict(model_args).items() if k not in RUN_MODEL_EXCLUDED}
    data = {k: v for k, v in asdict(data_args).items() if k not in RUN_DATA_EXCLUDED}
    train = {k: getattr(training_args, k) for k in keys}
    return json.loads(json.dumps({"model": model, "data": data, "training": train}, default=str))
