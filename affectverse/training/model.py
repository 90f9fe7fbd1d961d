"""A training run's model: the checkpoint checked, the config, processor and weights loaded, LoRA added."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, PreTrainedConfig, set_seed

from affectverse.default.tiny import tiny_config, tiny_processor
from affectverse.training import preflight
from affectverse.training.arguments import config_overrides
from configuration_affectverse import AffectVerseConfig
from modeling_affectverse import AffectVerseForConditionalGeneration
from processing_affectverse import AffectVerseProcessor

SUPPORTED_MODEL_TYPES = ("qwen2_5_omni", "qwen2_5_omni_thinker", "affectverse")


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


def lora_config(model, model_args, train_ewm: bool = True) -> LoraConfig:
    """LoRA on ``lora_target_modules``; with ``train_ewm`` the EWM is trained in full through modules_to_save.

    ``modules_to_save=["ewm"]`` rather than ``requires_grad_(True)``: peft then saves the EWM with the adapter
    (every Trainer checkpoint and the ``adapter/`` export hold it, and resuming restores it), ``merge_and_unload``
    puts the trained copy back in place, and ``disable_adapter()`` gives back the original EWM (GRPO's reference).
    """
    return LoraConfig(
        r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules,
        modules_to_save=["ewm"] if train_ewm and model.ewm is not None else None,
    )


def keep_trainable_fp32(model):
    """Cast the trainable parameters to fp32 in place (a bf16 backbone's LoRA and EWM copies are optimised in fp32)."""
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    return model


def add_lora(model, model_args):
    """Wrap ``model`` with LoRA and the trainable EWM (:func:`lora_config`); trainable weights in fp32."""
    return keep_trainable_fp32(get_peft_model(model, lora_config(model, model_args)))
