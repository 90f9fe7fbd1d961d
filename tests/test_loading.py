"""Lossless loading of Qwen2.5-Omni checkpoints, safetensors saving, and the remote-code round trip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from modeling_affectverse import AffectVerseForConditionalGeneration
from tests.helpers import build_batch, tiny, tiny_full_omni


def _assert_backbone_loaded(thinker_state, model, info):
    assert not [k for k in info["missing_keys"] if not k.startswith("ewm.")], info["missing_keys"]
    state = model.state_dict()
    assert set(thinker_state) <= set(state)
    for key, value in thinker_state.items():
        assert torch.equal(value, state[key]), key
    for name, p in model.ewm.named_parameters():
        assert torch.isfinite(p).all(), name
    # raw parameters went through _init_weights, not left as uninitialised memory
    assert model.ewm.residual_scale.item() == pytest.approx(model.config.residual_scale_init)
    assert 0.005 < model.ewm.imagine_video.future_queries.std().item() < 0.05


def test_load_full_omni_checkpoint(tmp_path):
    omni = tiny_full_omni()
    omni.save_pretrained(tmp_path)
    model, info = AffectVerseForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert model.config.model_type == "affectverse"
    _assert_backbone_loaded(omni.thinker.state_dict(), model, info)


def test_load_thinker_only_checkpoint(tmp_path):
    omni = tiny_full_omni()
    omni.thinker.save_pretrained(tmp_path)
    model, info = AffectVerseForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    _assert_backbone_loaded(omni.thinker.state_dict(), model, info)


def test_ewm_overrides_when_loading_a_base_checkpoint(tmp_path):
    tiny_full_omni().save_pretrained(tmp_path)
    model = AffectVerseForConditionalGeneration.from_pretrained(tmp_path, rollout_steps=5, injection="single")
    assert model.config.rollout_steps == 5 and model.ewm.imagine_video.step_embeddings.shape[0] == 5


REMOTE = textwrap.dedent("""
    import sys, json
    for name in ("modeling_affectverse", "configuration_affectverse", "ewm_affectverse",
                 "processing_affectverse", "benchmarks", "tests"):
        sys.modules[name] = None  # the project must not be importable: only the folder's code may run
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
    folder, inputs_path, out_path = sys.argv[1:4]
    batch = load_file(inputs_path)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    assert type(config).__name__ == "AffectVerseConfig", type(config)
    out = {}
    for auto in (AutoModelForCausalLM, AutoModel):
        model = auto.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(model).__name__ == "AffectVerseForConditionalGeneration"
        assert not type(model).__module__.startswith("modeling_affectverse")
        with torch.no_grad():
            out[auto.__name__] = model(**batch).logits.contiguous()
    save_file(out, out_path)
""")


def test_save_and_reload_with_trust_remote_code_in_a_fresh_process(tmp_path):
    model = AffectVerseForConditionalGeneration(tiny()).eval()
    folder = tmp_path / "ckpt"
    model.save_pretrained(folder)
    files = {p.name for p in folder.iterdir()}
    assert {"configuration_affectverse.py", "modeling_affectverse.py", "ewm_affectverse.py"} <= files
    assert any(f.endswith(".safetensors") for f in files) and not any(f.endswith(".bin") for f in files)
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert set(auto_map) >= {"AutoConfig", "AutoModelForCausalLM", "AutoModel"}

    batch = {k: v for k, v in build_batch(model.config, [(2, 40), (0, 30)]).items() if k != "labels"}
    save_file({k: v.contiguous() for k, v in batch.items()}, tmp_path / "inputs.safetensors")
    with torch.no_grad():
        expected = model(**batch).logits
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", REMOTE, str(folder), str(tmp_path / "inputs.safetensors"),
                    str(tmp_path / "out.safetensors")], cwd=elsewhere, env=env, check=True, timeout=300)
    got = load_file(tmp_path / "out.safetensors")
    torch.testing.assert_close(got["AutoModelForCausalLM"], expected)
    torch.testing.assert_close(got["AutoModel"], expected)
