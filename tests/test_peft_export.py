"""training_export.export's adapter: it names its base, loads with AutoPeftModelForCausalLM, and the merged folder records it."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from affectverse.default.tiny import tiny_processor
from affectverse.training import arguments
from affectverse.training import export as training_export
from affectverse.training import model as training_model
from affectverse.training import trainer as training_trainer
from modeling_affectverse import AffectVerseForConditionalGeneration
from tests.helpers import build_batch, tiny
from tests.test_train import SpecDataset, collator, training_args


def trained_export(tmp_path, model_args, base):
    """Train LoRA + EWM on ``base`` for 2 steps and export; (out folder, merged model, a generation batch)."""
    config = base.config
    model = training_model.add_lora(base, model_args)
    trainer = training_trainer.AffectVerseTrainer(model=model, args=training_args(tmp_path / "run", learning_rate=5e-2),
                                       train_dataset=SpecDataset(4), data_collator=collator(config))
    trainer.train()
    out = tmp_path / "export"
    merged = training_export.export(trainer, tiny_processor(), model_args, arguments.DataArguments(), out)
    batch = build_batch(config, [(2, 60), (0, 50)], seed=3)
    batch.pop("labels")
    return out, merged.eval(), batch


def test_adapter_names_a_loadable_base_and_the_merged_folder_names_its_adapter(tmp_path):
    from peft import AutoPeftModelForCausalLM

    torch.manual_seed(0)
    base_dir = tmp_path / "base"
    AffectVerseForConditionalGeneration(tiny()).save_pretrained(base_dir)
    model_args = arguments.ModelArguments(model_name_or_path=str(base_dir))
    base = AffectVerseForConditionalGeneration.from_pretrained(base_dir)
    out, merged, batch = trained_export(tmp_path, model_args, base)

    record = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert record["base_model_name_or_path"] == str(base_dir.resolve()) and record["task_type"] == "CAUSAL_LM"
    loaded = AutoPeftModelForCausalLM.from_pretrained(str(out / "adapter"), trust_remote_code=True).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, merged(**batch).logits, atol=1e-4)
    sha = hashlib.sha256((out / "adapter" / "adapter_model.safetensors").read_bytes()).hexdigest()
    config = json.loads((out / "config.json").read_text())
    assert {k: config["merged_adapter"][k] for k in ("sha256", "folder")} == {"sha256": sha, "folder": "adapter"}
    assert "emotion-recognition" in config["custom_pipelines"] and (out / "pipeline_affectverse.py").is_file()


def test_tiny_preset_adapter_says_what_its_base_is(tmp_path):
    torch.manual_seed(0)
    out, _, _ = trained_export(tmp_path, arguments.ModelArguments(), AffectVerseForConditionalGeneration(tiny()))
    base = json.loads((out / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base.startswith("affectverse-tiny-random") and "tiny_config" in base and "set_seed(0)" in base


def test_the_merged_adapter_cannot_be_applied_twice(tmp_path):
    """Before: PeftModel.from_pretrained(merged folder, its adapter/) applied LoRA a second time (logits off by 7.7)."""
    from peft import PeftModel

    torch.manual_seed(0)
    base_dir = tmp_path / "base"
    AffectVerseForConditionalGeneration(tiny()).save_pretrained(base_dir)
    model_args = arguments.ModelArguments(model_name_or_path=str(base_dir))
    out, merged, batch = trained_export(tmp_path, model_args,
                                        AffectVerseForConditionalGeneration.from_pretrained(base_dir))
    reloaded = AffectVerseForConditionalGeneration.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).logits, merged(**batch).logits, atol=1e-4)  # no adapter: fine
    twice = PeftModel.from_pretrained(reloaded, str(out / "adapter")).eval()
    with torch.no_grad(), pytest.raises(ValueError, match="already merged into this model"):
        twice(**batch)
    # a fresh LoRA on the merged model (further fine-tuning) is allowed
    fresh = training_model.add_lora(AffectVerseForConditionalGeneration.from_pretrained(out), model_args).eval()
    with torch.no_grad():
        fresh(**batch)
