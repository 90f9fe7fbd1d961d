"""AffectVerse model: config, EWM, two-pass forward, positions, generation (tiny random configs, CPU)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.hub import REMOTE_CODE_FILES
from configuration_affectverse import AffectVerseConfig
from modeling_affectverse import AffectVerseForConditionalGeneration
from tests.helpers import build_batch, tiny

ROOT = Path(__file__).resolve().parents[1]
MIXED = [(2, 40), (1, 0), (0, 30), (0, 0)]  # A+V, V only, A only, text only


def model_for(**overrides):
    return AffectVerseForConditionalGeneration(tiny(**overrides))


def suppress(cfg):
    return [cfg.video_token_id, cfg.audio_token_id, cfg.image_token_id, cfg.belief_token_id]


# -- config ------------------------------------------------------------------------------------------------------
def test_default_config_is_7b_with_paper_ewm():
    cfg = AffectVerseConfig()
    assert cfg.text_config.hidden_size == 3584 and cfg.text_config.num_hidden_layers == 28
    assert (cfg.ewm_hidden_size, cfg.future_queries, cfg.imagination_layers, cfg.ewm_num_heads) == (512, 8, 2, 8)
    assert (cfg.rollout_steps, cfg.num_belief_queries, cfg.aggregator_layers, cfg.num_type_embeddings) == (3, 4, 1, 6)
    assert (cfg.modality_dropout, cfg.residual_scale_init, cfg.keep_ratio_min, cfg.imagination_loss_weight) == (
        0.15, 0.1, 0.7, 1.0)
    assert cfg.belief_split(2) == (4, 4) and cfg.belief_split(1) == (2, 2) and cfg.belief_split(0) == (0, 0)


def test_config_round_trip(tmp_path):
    cfg = tiny(rollout_steps=5, injection="single", imagination_context="cross")
    cfg.save_pretrained(tmp_path)
    loaded = AffectVerseConfig.from_pretrained(tmp_path)
    skip = {"transformers_version", "_name_or_path"}
    assert {k: v for k, v in loaded.to_dict().items() if k not in skip} == {
        k: v for k, v in cfg.to_dict().items() if k not in skip}


@pytest.mark.parametrize("field,value", [("injection", "middle"), ("belief_construction", "magic"),
                                         ("keep_ratio_min", 0.0), ("ewm_num_heads", 5), ("rollout_steps", 0)])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        tiny(**{field: value})


def test_config_from_full_omni_folder_takes_thinker_part(tmp_path):
    from transformers import Qwen2_5OmniConfig

    thinker = tiny().to_dict()
    thinker["model_type"] = "qwen2_5_omni_thinker"
    Qwen2_5OmniConfig(thinker_config=thinker).save_pretrained(tmp_path)
    cfg = AffectVerseConfig.from_pretrained(tmp_path)
    assert cfg.model_type == "affectverse" and cfg.text_config.hidden_size == 64


def test_ewm_parameter_count_at_7b():
    """Paper A.3 / Table 7: ~25M EWM parameters at the 7B dimensions (built on the meta device)."""
    with torch.device("meta"):
        model = AffectVerseForConditionalGeneration(AffectVerseConfig())
    n = sum(p.numel() for p in model.ewm.parameters())
    assert 23e6 <= n <= 27e6, n


# -- forward -----------------------------------------------------------------------------------------------------
def test_train_forward_outputs_and_shapes():
    model = model_for().train()
    out = model(**build_batch(model.config, MIXED), output_imagination=True, output_belief_attention=True)
    assert out.loss is not None and out.lm_loss is not None and out.imagination_loss is not None
    torch.testing.assert_close(out.loss, out.lm_loss + model.config.imagination_loss_weight * out.imagination_loss)
    assert out.imagination_cosine.shape == (model.config.rollout_steps,)
    nb, sn = model.config.num_belief_queries, model.config.rollout_steps * model.config.future_queries
    assert out.belief_attention.shape == (4, 2 * nb, 2 * sn)
    assert out.logits.shape[:2] == out.labels.shape


def test_inference_forward_keeps_every_token():
    model = model_for().eval()
    batch = build_batch(model.config, MIXED)
    with torch.no_grad():
        out = model(**batch)
    assert out.imagination_loss is None
    assert out.logits.shape[:2] == batch["input_ids"].shape
    torch.testing.assert_close(out.labels, batch["labels"])


def test_training_truncates_each_modality_to_its_past():
    cfg = tiny(keep_ratio_min=0.5, keep_ratio_max=0.5, modality_dropout=0.0)
    model = AffectVerseForConditionalGeneration(cfg).train()
    batch = build_batch(cfg, [(2, 40)])
    prepared, _ = model._prepare(batch["input_ids"], batch["attention_mask"], batch["labels"], batch)
    n_video, n_audio = 8, 10  # 2 grids x 4 tokens; 40 mel frames -> 10 tokens
    assert prepared.embeds.shape[1] == batch["input_ids"].shape[1] - (n_video - 4) - (n_audio - 5)
    # labels are carried along: the same answer tokens, nothing else supervised
    kept = prepared.labels[prepared.labels != -100]
    torch.testing.assert_close(kept, batch["labels"][batch["labels"] != -100])


def test_every_ewm_parameter_gets_gradient_and_no_frozen_weight_does():
    model = model_for(modality_dropout=0.0).train()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("ewm."))
    out = model(**build_batch(model.config, [(2, 40), (2, 40), (1, 0), (0, 30)]))
    out.loss.backward()
    missing = [n for n, p in model.ewm.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("ewm."))


def test_imagination_loss_falls_when_the_ewm_alone_is_optimised():
    cfg = tiny(keep_ratio_min=0.7, keep_ratio_max=0.7, modality_dropout=0.0)
    model = AffectVerseForConditionalGeneration(cfg).train()
    batch = build_batch(cfg, [(3, 60), (3, 60)])
    optimizer = torch.optim.Adam(model.ewm.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = model(**batch).imagination_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses


def test_belief_construction_none_equals_stock_thinker():
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

    cfg = tiny(belief_construction="none")
    model = AffectVerseForConditionalGeneration(cfg).eval()
    stock_cfg = Qwen2_5OmniThinkerConfig(**{k: v for k, v in cfg.to_dict().items() if k != "model_type"})
    stock = Qwen2_5OmniThinkerForConditionalGeneration(stock_cfg).eval()
    stock.load_state_dict(model.state_dict())
    batch = build_batch(cfg, MIXED, padding="left")
    batch.pop("labels")
    with torch.no_grad():
        ours, theirs = model(**batch).logits, stock(**batch).logits
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[mask], theirs[mask], atol=1e-5, rtol=1e-5)


ABLATIONS = [
    {"temporal_split": False}, {"belief_construction": "none"}, {"belief_construction": "random"},
    {"belief_construction": "pooling"}, {"belief_construction": "imagination"}, {"injection": "single"},
    {"residual_boundary": False}, {"imagination_context": "self"}, {"imagination_context": "cross"},
    {"rollout_steps": 1}, {"rollout_steps": 5}, {"num_belief_queries": 1}, {"num_belief_queries": 16},
    {"modality_dropout": 0.0}, {"modality_dropout": 1.0}, {"imagination_loss_weight": 0.0},
    {"imagination_loss_weight": 5.0}, {"ewm_hidden_layer": 0}, {"ewm_hidden_layer": 1},
    {"keep_ratio_min": 0.1, "keep_ratio_max": 0.1},
]


@pytest.mark.parametrize("overrides", ABLATIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_every_ablation_runs_forward_and_backward(overrides):
    model = model_for(**overrides).train()
    out = model(**build_batch(model.config, MIXED))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(**build_batch(model.config, MIXED)).logits).all()


# -- bad input ---------------------------------------------------------------------------------------------------
def test_wrong_belief_placeholder_count_is_a_clear_error():
    model = model_for().eval()
    batch = build_batch(model.config, [(2, 40)])
    ids = batch["input_ids"]
    ids[0, (ids[0] == model.config.belief_token_id).nonzero()[0]] = 100
    with pytest.raises(ValueError, match=r"sample 0: input_ids hold 3 <\|belief\|> .* need 4"):
        model(**batch)


def test_mismatched_media_placeholders_is_a_clear_error():
    model = model_for().eval()
    batch = build_batch(model.config, [(2, 40)])
    batch["pixel_values_videos"] = batch["pixel_values_videos"][:16]
    batch["video_grid_thw"] = torch.tensor([[1, 4, 4]])
    with pytest.raises(ValueError, match="video features and video placeholder tokens do not match"):
        model(**batch)


def test_span_too_short_to_split_falls_back_with_a_warning(caplog):
    model = model_for(modality_dropout=0.0).train()
    batch = build_batch(model.config, [(2, 3)])  # 3 mel frames -> a single audio token
    with caplog.at_level("WARNING"):
        out = model(**batch)
    assert "too short to split" in caplog.text and torch.isfinite(out.loss)


# -- positions ---------------------------------------------------------------------------------------------------
def test_positions_agree_with_the_thinkers_get_rope_index():
    """Beliefs get text positions; every other token keeps the stock position, shifted by the beliefs before it."""
    model = model_for().eval()
    batch = build_batch(model.config, [(2, 40), (1, 0)], padding="left")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    media = {k: batch.get(k) for k in ("video_grid_thw", "feature_attention_mask", "video_second_per_grid")}
    ours, _ = model._positions(ids, mask, None, media["video_grid_thw"], media["feature_attention_mask"], False,
                               media["video_second_per_grid"])
    for b in range(ids.shape[0]):
        real = ids[b][mask[b].bool()]
        belief = real == model.config.belief_token_id
        plain = real[~belief][None]
        stock, _ = model.get_rope_index(plain, None, media["video_grid_thw"][b:b + 1],
                                        torch.ones_like(plain), False,
                                        media["feature_attention_mask"][:1].sum(-1) if b == 0 else None,
                                        media["video_second_per_grid"][b:b + 1])
        shift = belief.long().cumsum(0)[~belief]
        torch.testing.assert_close(ours[:, b][:, mask[b].bool()][:, ~belief], stock[:, 0] + shift)
        # beliefs are text: the same index on all three axes, right after their neighbour
        pos = ours[:, b][:, mask[b].bool()][:, belief]
        assert (pos[0] == pos[1]).all() and (pos[1] == pos[2]).all()


# -- generation --------------------------------------------------------------------------------------------------
def test_cached_generate_equals_uncached_on_a_mixed_batch():
    model = model_for().eval()
    batch = build_batch(model.config, MIXED, padding="left", generation=True)
    kw = dict(max_new_tokens=6, do_sample=False, suppress_tokens=suppress(model.config),
              return_dict_in_generate=True, output_logits=True)
    cached = model.generate(**batch, **kw)
    uncached = model.generate(**batch, use_cache=False, **kw)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(cached.logits[0], uncached.logits[0], atol=1e-4, rtol=1e-4)
    assert cached.sequences.shape[1] == batch["input_ids"].shape[1] + 6
    assert torch.equal(cached.sequences[:, : batch["input_ids"].shape[1]], batch["input_ids"])


def test_batched_generate_equals_single_sample_generate():
    model = model_for().eval()
    kw = dict(max_new_tokens=5, do_sample=False, suppress_tokens=suppress(model.config))
    batched = model.generate(**build_batch(model.config, MIXED, padding="left", generation=True), **kw)
    for i in range(len(MIXED)):
        one = build_batch(model.config, MIXED, padding="left", generation=True)  # sample i, with its media
        keep = torch.zeros(len(MIXED), dtype=torch.bool)
        keep[i] = True
        single = _select(one, keep, model.config)
        out = model.generate(**single, **kw)
        assert torch.equal(out[0, -5:], batched[i, -5:]), i


def _select(batch, keep, cfg):
    """Rows ``keep`` of a batch, with their media tensors and the padding columns they no longer need."""
    ids, mask = batch["input_ids"][keep], batch["attention_mask"][keep]
    start = int(mask[0].argmax())
    out = {"input_ids": ids[:, start:], "attention_mask": mask[:, start:]}
    idx = int(keep.nonzero())
    has_v = [bool((r == cfg.video_token_id).any()) for r in batch["input_ids"]]
    has_a = [bool((r == cfg.audio_token_id).any()) for r in batch["input_ids"]]
    if has_v[idx]:
        v = sum(has_v[:idx])
        grids = batch["video_grid_thw"]
        rows = [int(g.prod()) for g in grids]
        off = sum(rows[:v])
        out["pixel_values_videos"] = batch["pixel_values_videos"][off:off + rows[v]]
        out["video_grid_thw"] = grids[v:v + 1]
        out["video_second_per_grid"] = batch["video_second_per_grid"][v:v + 1]
    if has_a[idx]:
        a = sum(has_a[:idx])
        n = int(batch["feature_attention_mask"][a].sum())
        out["input_features"] = batch["input_features"][a:a + 1, :, :n]
        out["feature_attention_mask"] = batch["feature_attention_mask"][a:a + 1, :n]
    return out


def test_generate_runs_the_encoders_once():
    model = model_for().eval()
    calls = {"audio": 0, "video": 0}
    model.model.audio_tower.register_forward_hook(lambda *a: calls.__setitem__("audio", calls["audio"] + 1))
    model.model.visual.register_forward_hook(lambda *a: calls.__setitem__("video", calls["video"] + 1))
    model.generate(**build_batch(model.config, MIXED, padding="left", generation=True), max_new_tokens=3,
                   do_sample=False, suppress_tokens=suppress(model.config))
    assert calls == {"audio": 1, "video": 1}
    model.train()
    model(**build_batch(model.config, MIXED))
    assert calls == {"audio": 2, "video": 2}


# -- remote-code hygiene -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", REMOTE_CODE_FILES)
def test_model_files_import_only_torch_transformers_and_each_other(name):
    path = ROOT / name
    siblings = {Path(f).stem for f in REMOTE_CODE_FILES}
    allowed = {"torch", "transformers"} | set(sys.stdlib_module_names) | siblings  # third-party: behind a guard
    tree = ast.parse(path.read_text())
    for node in tree.body:  # module level only; guarded imports live inside functions or try blocks
        if isinstance(node, ast.Try):
            for handler_node in ast.walk(node):
                if isinstance(handler_node, ast.ImportFrom) and handler_node.level == 0:
                    assert handler_node.module in siblings, handler_node.module
            continue
        if isinstance(node, ast.Import):
            assert all(a.name.split(".")[0] in allowed for a in node.names), ast.dump(node)
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            assert node.module.split(".")[0] in allowed, node.module


def test_removing_the_future_equals_masking_it(monkeypatch):
    """The rebuilt (shortened, re-padded) sequence gives the logits of the full one with the dropped tokens masked."""
    model = model_for(keep_ratio_min=0.5, keep_ratio_max=0.5, modality_dropout=1.0).train()
    seen = {}
    original = AffectVerseForConditionalGeneration._compact

    def spy(embeds, keep, position_ids, labels, ewm_out):
        seen.update(embeds=embeds, keep=keep, positions=position_ids)
        return original(embeds, keep, position_ids, labels, ewm_out)

    monkeypatch.setattr(AffectVerseForConditionalGeneration, "_compact", staticmethod(spy))
    batch = build_batch(model.config, [(2, 40), (3, 0), (0, 0)])
    with torch.no_grad():
        prepared, _ = model._prepare(batch["input_ids"], batch["attention_mask"], batch["labels"], batch)
        short = model._language_model(prepared.embeds, prepared.attention_mask, prepared.position_ids, None,
                                      False, 0, None)[1]
        full = model._language_model(seen["embeds"], seen["keep"].long(), seen["positions"], None, False, 0, None)[1]
    assert not seen["keep"][batch["attention_mask"].bool()].all()  # something was removed
    for b in range(full.shape[0]):
        n = int(seen["keep"][b].sum())
        torch.testing.assert_close(short[b, :n], full[b][seen["keep"][b]], atol=1e-5, rtol=1e-5)


def test_a_generate_call_leaves_no_stale_state_for_the_next_forward():
    """The thinker caches ``rope_deltas`` on the model; AffectVerse passes explicit positions, so nothing leaks."""
    model = model_for().eval()
    batch = build_batch(model.config, MIXED, padding="left")
    with torch.no_grad():
        before = model(**batch).logits
        model.generate(**build_batch(model.config, [(1, 30)], padding="left", generation=True), max_new_tokens=3,
                       do_sample=False, suppress_tokens=suppress(model.config))
        after = model(**batch).logits
    torch.testing.assert_close(before, after)
