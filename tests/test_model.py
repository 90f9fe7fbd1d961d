"""AffectVerse model: config, EWM, two-pass forward, positions, generation (tiny random configs, CPU)."""

from __future__ import annotations

import ast
import math
import sys
from pathlib import Path

import pytest
import torch

from affectverse.hub import REMOTE_CODE_FILES
from configuration_affectverse import AffectVerseConfig
from modeling_affectverse import AffectVerseForConditionalGeneration
from tests.helpers import build_batch, tiny

ROOT = Path(__file__).resolve().parents[1]
MIXED = [(2, 40), (1, 0), (0, 30), (0, 0)]  # A+V, V only, A only, text only


def model_for(**overrides):
    return AffectVerseForConditionalGeneration(tiny(**overrides))


def prepare(model, batch):
    """The EWM pass alone (no language-model pass 2): positions as the forward computes them, then `_prepare`."""
    positions, _ = model._positions(batch["input_ids"], batch["attention_mask"], batch.get("image_grid_thw"),
                                    batch.get("video_grid_thw"), batch.get("feature_attention_mask"),
                                    batch.get("use_audio_in_video"), batch.get("video_second_per_grid"))
    return model._prepare(batch["input_ids"], batch["attention_mask"], positions, batch["labels"], batch)


def logits_of(model, embeds, mask, positions):
    """The language model + lm_head over given embeddings (pass 2 alone)."""
    return model._head(model.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                   use_cache=False).last_hidden_state, 0, None)[0]


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
    prepared = prepare(model, batch)
    n_video, n_audio = 8, 10  # 2 grids x 4 tokens; 40 mel frames -> 10 tokens
    assert prepared.embeds.shape[1] == batch["input_ids"].shape[1] - (n_video - 4) - (n_audio - 5)
    # labels are carried along: the same answer tokens, nothing else supervised
    kept = prepared.labels[prepared.labels != -100]
    torch.testing.assert_close(kept, batch["labels"][batch["labels"] != -100])


@pytest.mark.parametrize("dropout", [0.0, 1.0])
def test_rebuilt_sequence_keeps_each_past_and_realigns_labels_mask_and_positions(dropout):
    """D.4, computed here by hand: each modality keeps its first floor(kappa * T) tokens (Eq. 11), a sample whose
    EWM lost one modality to dropout (D.1) keeps N_b of its 2 N_b placeholders (the first ones of each group), and
    the rows are rebuilt left-aligned: embeddings, labels, positions and mask follow the kept tokens; the padding
    after them is masked and labelled -100."""
    kappa = 0.7
    cfg = tiny(keep_ratio_min=kappa, keep_ratio_max=kappa, modality_dropout=dropout)
    model = AffectVerseForConditionalGeneration(cfg).train()
    batch = build_batch(cfg, [(3, 30), (3, 0), (0, 30), (0, 0)])  # 12 video, 7 audio tokens: 8.4 and 4.9 kept
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    positions, _ = model._positions(ids, mask, None, batch["video_grid_thw"], batch["feature_attention_mask"],
                                    None, batch["video_second_per_grid"])
    embeds, _ = model.embed_media(ids, batch["input_features"], batch["feature_attention_mask"],
                                  pixel_values_videos=batch["pixel_values_videos"], video_grid_thw=batch["video_grid_thw"])
    with torch.no_grad():
        prepared = prepare(model, batch)
    nb = cfg.num_belief_queries
    kept_rows = []
    for b in range(ids.shape[0]):
        row = ids[b].tolist()
        video = [i for i, t in enumerate(row) if t == cfg.video_token_id]
        audio = [i for i, t in enumerate(row) if t == cfg.audio_token_id]
        beliefs = [i for i, t in enumerate(row) if t == cfg.belief_token_id]
        removed = set(video[math.floor(kappa * len(video)):]) | set(audio[math.floor(kappa * len(audio)):])
        if dropout and video and audio:  # one modality left for the EWM: N_b beliefs, ceil(N_b / 2) first
            first, second = beliefs[:nb], beliefs[nb:]
            removed |= set(first[(nb + 1) // 2:]) | set(second[nb // 2:])
        kept_rows.append([i for i in range(len(row)) if mask[b, i] and i not in removed])
    assert [len(k) for k in kept_rows][:3] == [int(mask[0].sum()) - 4 - 3 - 2 * bool(dropout),
                                               int(mask[1].sum()) - 4, int(mask[2].sum()) - 3]
    length = max(len(k) for k in kept_rows)
    assert prepared.embeds.shape[1] == length
    for b, kept in enumerate(kept_rows):
        n = len(kept)
        assert prepared.attention_mask[b].tolist() == [1] * n + [0] * (length - n)
        assert prepared.labels[b].tolist() == labels[b, kept].tolist() + [-100] * (length - n)
        assert torch.equal(prepared.position_ids[:, b, :n], positions[:, b, kept])
        text = [j for j, i in enumerate(kept) if ids[b, i] != cfg.belief_token_id]
        torch.testing.assert_close(prepared.embeds[b, text], embeds[b, [kept[j] for j in text]])


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
        prepared = prepare(model, batch)
        short = logits_of(model, prepared.embeds, prepared.attention_mask, prepared.position_ids)
        full = logits_of(model, seen["embeds"], seen["keep"].long(), seen["positions"])
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


# -- Hugging Face conformance (issue 10 items 1-3) -----------------------------------------------------------------
def _stock_twin(model):
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

    cfg = Qwen2_5OmniThinkerConfig(**{k: v for k, v in model.config.to_dict().items() if k != "model_type"})
    stock = Qwen2_5OmniThinkerForConditionalGeneration(cfg).eval()
    stock.load_state_dict(model.state_dict(), strict=False)
    return stock


def _gen_batch(cfg, specs=((2, 40), (1, 0))):
    return build_batch(cfg, list(specs), padding="left", generation=True)


@pytest.mark.parametrize("construction", ["none", "ewm"])
def test_forward_returns_hidden_states_attentions_and_tuples(construction):
    model = model_for(belief_construction=construction).eval()
    model.set_attn_implementation("eager")
    batch = build_batch(model.config, [(2, 40), (1, 0)])
    batch.pop("labels")
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True, output_attentions=True)
        as_tuple = model(**batch, return_dict=False)
    b, length = batch["input_ids"].shape
    n_layers, heads = model.config.text_config.num_hidden_layers, model.config.text_config.num_attention_heads
    assert len(out.hidden_states) == n_layers + 1 and out.hidden_states[0].shape[:2] == (b, length)
    assert len(out.attentions) == n_layers and out.attentions[0].shape == (b, heads, length, length)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], out.logits)
    if construction == "none":  # the stock thinker's fields, bit for bit
        with torch.no_grad():
            theirs = _stock_twin(model)(**batch, output_hidden_states=True)
        torch.testing.assert_close(out.hidden_states[-1], theirs.hidden_states[-1])


@pytest.mark.parametrize("construction", ["none", "ewm"])
def test_generate_dict_outputs_with_hidden_states_and_attentions(construction):
    model = model_for(belief_construction=construction).eval()
    model.set_attn_implementation("eager")
    batch = _gen_batch(model.config)
    out = model.generate(**batch, max_new_tokens=3, do_sample=False, return_dict_in_generate=True,
                         output_hidden_states=True, output_attentions=True, output_scores=True)
    n_layers = model.config.text_config.num_hidden_layers
    assert len(out.hidden_states) == 3 and len(out.hidden_states[0]) == n_layers + 1
    assert out.hidden_states[0][0].shape[1] == batch["input_ids"].shape[1]  # the prompt the LM saw, beliefs included
    assert len(out.attentions) == 3 and out.attentions[1][0].shape[-2] == 1


@pytest.mark.parametrize("construction", ["none", "ewm"])
def test_beam_search_and_several_return_sequences_equal_the_uncached_reference(construction):
    model = model_for(belief_construction=construction).eval()
    batch = _gen_batch(model.config, [(0, 40), (0, 30)])  # audio: the stock beam expansion interleaves video patches
    kw = dict(max_new_tokens=4, num_beams=3, num_return_sequences=2, do_sample=False, return_dict_in_generate=True,
              output_scores=True, suppress_tokens=suppress(model.config))
    cached = model.generate(**batch, **kw)
    assert cached.sequences.shape == (4, batch["input_ids"].shape[1] + 4)
    # "none" is the stock thinker's path: its beams; the EWM reuses the prefix cache: the uncached beams. Scores,
    # not tokens: the tiny random model has near-ties that float noise may order either way.
    reference = _stock_twin(model) if construction == "none" else model
    expected = reference.generate(**batch, use_cache=construction == "none", **kw)
    torch.testing.assert_close(cached.sequences_scores, expected.sequences_scores, atol=1e-4, rtol=1e-4)


def test_beam_sampling_runs_with_beliefs():
    model = model_for().eval()
    out = model.generate(**_gen_batch(model.config), max_new_tokens=3, num_beams=2, do_sample=True,
                         num_return_sequences=2)
    assert out.shape[0] == 4


@pytest.mark.parametrize("mode", [dict(prompt_lookup_num_tokens=2), "draft", dict(cache_implementation="static")])
def test_assisted_and_static_cache_generate_equal_greedy(mode):
    model = model_for().eval()
    batch = _gen_batch(model.config, [(2, 40)])
    kw = dict(max_new_tokens=5, do_sample=False, suppress_tokens=suppress(model.config))
    if mode == "draft":
        mode = dict(assistant_model=model_for(belief_construction="none").eval())
    assert torch.equal(model.generate(**batch, **mode, **kw), model.generate(**batch, **kw))


@pytest.mark.parametrize("construction", ["none", "ewm"])
def test_generate_continues_from_a_returned_cache(construction):
    model = model_for(belief_construction=construction).eval()
    batch = _gen_batch(model.config)
    kw = dict(do_sample=False, suppress_tokens=suppress(model.config))
    full = model.generate(**batch, max_new_tokens=6, **kw)
    first = model.generate(**batch, max_new_tokens=3, return_dict_in_generate=True, **kw)
    assert first.cache.get_seq_length() == first.sequences.shape[1] - 1  # the cache describes `sequences`
    mask = torch.cat([batch["attention_mask"], torch.ones_like(first.sequences[:, batch["input_ids"].shape[1]:])], 1)
    rest = model.generate(input_ids=first.sequences, attention_mask=mask, cache=first.cache, max_new_tokens=3, **kw)
    assert torch.equal(rest, full)


@pytest.mark.parametrize("construction", ["none", "ewm"])
def test_forward_honours_user_position_ids(construction):
    """Positions built for another video frame rate (the processor's `video_second_per_grid`) must be used."""
    model = model_for(belief_construction=construction).eval()
    batch = build_batch(model.config, [(2, 40)])
    batch.pop("labels")
    slow = dict(batch, video_second_per_grid=torch.tensor([4.0]))
    positions, _ = model._positions(batch["input_ids"], batch["attention_mask"], None, batch["video_grid_thw"],
                                    batch["feature_attention_mask"], False, slow["video_second_per_grid"])
    with torch.no_grad():
        given = model(**batch, position_ids=positions).logits
        reference, default = model(**slow).logits, model(**batch).logits
    torch.testing.assert_close(given, reference)
    assert not torch.allclose(given, default, atol=1e-3)


@pytest.mark.parametrize("construction", ["none", "ewm"])
def test_forward_accepts_a_4d_attention_mask(construction):
    model = model_for(belief_construction=construction).eval()
    batch = build_batch(model.config, [(2, 40), (1, 0)], padding="left")
    batch.pop("labels")
    mask = batch["attention_mask"].bool()
    causal = torch.ones(mask.shape[1], mask.shape[1], dtype=torch.bool).tril()
    float4d = torch.zeros(mask.shape[0], 1, *causal.shape).masked_fill(
        ~(causal[None] & mask[:, None, :])[:, None], torch.finfo(torch.float32).min)  # (B, 1, L, L)
    # as for the stock thinker, a 4D mask comes with positions (get_rope_index needs the 2D padding mask)
    positions, _ = model._positions(batch["input_ids"], batch["attention_mask"], None, batch["video_grid_thw"],
                                    batch["feature_attention_mask"], False, batch.get("video_second_per_grid"))
    with torch.no_grad():
        ours = model(**dict(batch, attention_mask=float4d, position_ids=positions)).logits
        reference = model(**batch).logits
    torch.testing.assert_close(ours[mask], reference[mask], atol=1e-4, rtol=1e-4)


def test_past_key_values_gives_the_stock_deprecation_warning():
    from transformers import DynamicCache

    model = model_for().eval()
    batch = build_batch(model.config, [(2, 40)])
    batch.pop("labels")
    with pytest.warns(FutureWarning, match="past_key_values"), torch.no_grad():
        out = model(**batch, past_key_values=DynamicCache(config=model.config), use_cache=True)
    assert out.cache.get_seq_length() == batch["input_ids"].shape[1]


@pytest.mark.parametrize("construction", ["none", "ewm"])
def test_packed_padding_free_row_equals_the_padded_batch(construction):
    """Two prompts packed into one row (text positions restart at 0, no attention mask) give each prompt's logits."""
    model = model_for(belief_construction=construction).eval()
    batch = build_batch(model.config, [(2, 40), (1, 30)])
    batch.pop("labels")
    mask = batch["attention_mask"].bool()
    positions, _ = model._positions(batch["input_ids"], batch["attention_mask"], None, batch["video_grid_thw"],
                                    batch["feature_attention_mask"], False, batch.get("video_second_per_grid"))
    text = torch.cat([torch.arange(int(n)) for n in mask.sum(1)])[None]  # (1, total)
    packed = dict(batch, input_ids=batch["input_ids"][mask][None], attention_mask=None,
                  position_ids=torch.cat([text, positions[:, mask]])[:, None])
    with torch.no_grad():
        padded, free = model(**batch).logits, model(**packed, use_cache=False).logits  # as the stock harness
    torch.testing.assert_close(free[0], padded[mask], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("construction", ["none", "ewm"])
def test_beam_expansion_keeps_each_samples_video_frames(construction):
    """Each expanded copy (beams / num_return_sequences) sees its own sample's video: the same logits."""
    model = model_for(belief_construction=construction).eval()
    batch = _gen_batch(model.config, [(2, 40), (3, 0)])
    ids, expanded = model._expand_inputs_for_generation(2, input_ids=batch["input_ids"],
                                                        **{k: v for k, v in batch.items() if k != "input_ids"})
    with torch.no_grad():
        once, twice = model(**batch).logits, model(input_ids=ids, **expanded).logits
    torch.testing.assert_close(twice[::2], once, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(twice[1::2], once, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("reuse", [True, False])
def test_generate_prefills_the_prompt_once_through_the_prefix_cache(reuse):
    """Pass 1 fills the generation cache up to the first belief placeholder; pass 2 runs only after it."""
    model = model_for().eval()
    batch = _gen_batch(model.config, [(2, 40)])
    seen = []
    model.model.language_model.register_forward_hook(lambda m, a, kw, out: seen.append(kw["inputs_embeds"].shape[1]),
                                                     with_kwargs=True)
    kw = dict(max_new_tokens=2, do_sample=False, suppress_tokens=suppress(model.config))
    out = model.generate(**batch, reuse_prefix_cache=reuse, **kw)
    length = batch["input_ids"].shape[1]
    prefix = int(model._prefix_end(batch["input_ids"]).max())
    first_belief = int((batch["input_ids"][0] == model.config.belief_token_id).nonzero()[0])
    assert seen[:2] == ([prefix, length - min(prefix, first_belief)] if reuse else [prefix, length])
    assert torch.equal(out, model.generate(**batch, reuse_prefix_cache=not reuse, **kw))


@pytest.mark.slow
@pytest.mark.parametrize("construction", ["none", "ewm"])
def test_generate_compiles_the_decoding_step_with_fullgraph(construction):
    """`_can_compile_fullgraph` stays True: the belief path runs only on the (uncompiled) prefill."""
    from transformers import CompileConfig

    torch.compiler.reset()
    model = model_for(belief_construction=construction).eval()
    batch = _gen_batch(model.config)
    compile_config = CompileConfig(fullgraph=True, dynamic=False)
    compile_config._compile_all_devices = True  # as transformers' own test: compile on CPU too
    kw = dict(max_new_tokens=4, do_sample=False, suppress_tokens=suppress(model.config), cache_implementation="static")
    compiled = model.generate(**batch, compile_config=compile_config, **kw)
    assert model._can_compile_fullgraph and hasattr(model, "_compiled_call")
    assert torch.equal(compiled, model.generate(**batch, disable_compile=True, **kw))


def test_the_belief_placeholder_is_never_generated():
    """A generated `<|belief|>` would be taken for a belief slot at the next uncached step."""
    model = model_for().eval()
    with torch.no_grad():
        model.lm_head.weight[model.config.belief_token_id] = 50 * model.lm_head.weight.abs().max()
    batch = _gen_batch(model.config, [(2, 40)])
    out = model.generate(**batch, max_new_tokens=3, do_sample=False, use_cache=False)
    assert not (out[:, batch["input_ids"].shape[1]:] == model.config.belief_token_id).any()
