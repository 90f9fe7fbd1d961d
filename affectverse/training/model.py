"""A training run's model: the checkpoint checked, the config, processor and weights loaded, LoRA added."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, set_seed

from affectverse import checkpoint
from affectverse.default.tiny import tiny_config, tiny_processor
from affectverse.training.arguments import config_overrides
from configuration_affectverse import AffectVerseConfig
from modeling_affectverse import AffectVerseForConditionalGeneration
from processing_affectverse import AffectVerseProcessor

SUPPORTED_MODEL_TYPES = checkpoint.BASE_TYPES + checkpoint.AFFECTVERSE_TYPES
OPTION = "--model_name_or_path"


def check_checkpoint(path: str) -> str:
    """The checkpoint's model_type; a clear error for a folder that is not a Qwen2.5-Omni/AffectVerse model
    (:func:`affectverse.checkpoint.inspect`: config, weight files, what the folder is instead)."""
    folder = checkpoint.resolve(path, OPTION)
    return checkpoint.inspect(folder, OPTION, allowed=SUPPORTED_MODEL_TYPES)["model_type"]


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
        checkpoint.register_local_classes()
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
    return build(config, base, max_length=data_args.max_length, audio_layout=data_args.audio_layout,
                 audio_features=data_args.audio_features)


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
    kwargs = {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}
    folder = checkpoint.resolve(model_args.model_name_or_path, OPTION)
    # verified: weights checked against the config before allocation; from a Qwen2.5-Omni base the EWM is new
    model = checkpoint.load_verified(folder, getattr(torch, dtype), trust_remote_code=model_args.trust_remote_code,
                                     option=OPTION, allowed=SUPPORTED_MODEL_TYPES,
                                     overrides=config_overrides(model_args), **kwargs)
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
