"""What a finished run writes: the adapter, the merged model with its model card, and the card's facts."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

from peft import PeftModel

from affectverse import checkpoint, hub, ownership
from affectverse.training.model import load_model
from affectverse.training.run_folder import claim, explain_disk_full


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
    if trainer.is_world_process_zero():
        claim(out)  # the run folder (its record gets the merged model's identity below)
    with explain_disk_full(out / "adapter", "exporting the adapter to"):
        trainer.save_model(str(out / "adapter"))  # gathers sharded (FSDP/ZeRO) weights; the main process writes
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():
        return None
    adapter_config = out / "adapter" / "adapter_config.json"
    adapter = json.loads(adapter_config.read_text())
    base = model_args.model_name_or_path
    adapter["base_model_name_or_path"] = str(Path(base).resolve()) if base and Path(base).is_dir() else base or (
        f"affectverse-tiny-random: not saved; AffectVerseForConditionalGeneration(affectverse.default.tiny.tiny_config("
        f"{model_args.ewm_overrides or ''})) built after transformers.set_seed({trainer.args.seed})")
    adapter["task_type"] = "CAUSAL_LM"
    ownership.atomic_write(adapter_config, json.dumps(adapter, indent=2, sort_keys=True) + "\n")
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
        ownership.update_record(out, identity=checkpoint.identity_record(out))  # computed once, at the save
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
        data.append(f"manifest {manifest}" + (" (synthetic clips generated by affectverse/default/clips.py)"
                                              if generated and i == 0 else ""))
    return {
        "tiny": tiny, "generated": generated and len(data) == 1,
        "base": ("a random tiny AffectVerse built from the seed (affectverse/default/tiny.py), not Qwen2.5-Omni-7B"
                 if tiny else f"{model_args.model_name_or_path}"),
        "data": "; ".join(data), "train_samples": n_train, "bad_samples": n_bad,
        "steps": state.global_step, "epochs": round(state.epoch or 0, 3),
        "train_loss": (results.get("train") or {}).get("train_loss"),
        "eval_split": data_args.eval_split if eval_ds is not None else None,
        "eval_samples": len(eval_ds) if eval_ds is not None else 0,
        "eval_loss": (results.get("eval") or {}).get("eval_loss"),
        "generation": {k: v for k, v in (results.get("generation") or {}).items() if k != "examples"} or None,
    }
