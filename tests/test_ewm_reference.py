"""The Emotion World Module against a reference written from the paper (sections 3.2-3.3, appendix D, Eqs. 2-21).

The reference is plain torch, one sample at a time (no padding, no key masks), and reads the module's weights by
name; it calls none of the module's code. Forward hooks record what the module computed: the thinker states H the
EWM reads (Eq. 1), each branch's rollout (Eq. 4), the MAMA memory and beliefs (Eq. 6-7), and the sequence the
language model reads (Eq. 8). Where the paper leaves a choice open, the reference follows docs/design.md and says
so. ``tests/mutations_ewm.py`` lists module bugs, each caught by these tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from configuration_affectverse import AffectVerseConfig, list_presets, preset_fields
from modeling_affectverse import AffectVerseForConditionalGeneration
from tests.helpers import build_batch, tiny

MODALITIES = ("video", "audio")
TYPE_ID = {"video": 0, "audio": 1}  # Eq. 17
BATCHES = {  # (video temporal grids, audio mel frames) per sample: 4 video tokens a grid, 40 frames -> 10 tokens
    "mixed": [(2, 40), (1, 0), (0, 30), (0, 0)],  # A+V, V only, A only, text only
    "both": [(2, 40), (3, 60)],
    "video": [(2, 0), (3, 0)],
    "audio": [(0, 40), (0, 60)],
}


def close(actual, expected, what):
    """Equal within float32 noise, which grows with the values' scale (the tiny EWM's states reach ~30)."""
    atol = 2e-5 * max(1.0, float(expected.detach().abs().max())) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, atol=atol, rtol=1e-4, msg=lambda detail: f"{what}: {detail}")


# -- the reference: the paper's equations, one sample at a time ------------------------------------------------
def linear(p, name, x):
    """W x + b. The module's W_v, W_a (Eq. 2), W_out (Eq. 4) and W_r (3.2) carry a bias the paper does not write."""
    return x @ p[f"{name}.weight"].T + p[f"{name}.bias"]


def layer_norm(p, name, x):
    return F.layer_norm(x, x.shape[-1:], p[f"{name}.weight"], p[f"{name}.bias"])


def attention(p, name, x, context, heads):
    """Multi-head attention of x (Q, w) over context (L, w): softmax(q k^T / sqrt(d_h)) v per head, then W_o."""
    (wq, wk, wv), (bq, bk, bv) = p[f"{name}.in_proj_weight"].chunk(3), p[f"{name}.in_proj_bias"].chunk(3)
    q, k, v = ((t @ w.T + bias).unflatten(-1, (heads, -1)).transpose(0, 1)  # (h, L, d_h)
               for t, w, bias in ((x, wq, bq), (context, wk, bk), (context, wv, bv)))
    weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)  # (h, Q, L)
    return linear(p, f"{name}.out_proj", (weights @ v).transpose(0, 1).flatten(1))


def cross_attn(p, name, x, context, cfg, layers):
    """CrossAttn of D.2 and Eq. 19: per layer, Pre-LN cross-attention, then a GELU FFN, both residual."""
    for i in range(layers):
        at = f"{name}.layers.{i}"
        kv = layer_norm(p, f"{at}.norm_kv", context)
        x = x + attention(p, f"{at}.attn", layer_norm(p, f"{at}.norm_q", x), kv, cfg.ewm_num_heads)
        x = x + linear(p, f"{at}.ff.2", F.gelu(linear(p, f"{at}.ff.0", layer_norm(p, f"{at}.norm_ff", x))))
    return x


def pool(tokens, bins):
    """AdaptiveAvgPool1D over time (Eq. 5): (L, w) -> (bins, w)."""
    return F.adaptive_avg_pool1d(tokens.T[None], bins)[0].T


def split_point(length, kappa):
    """T_p = floor(kappa * L) (Eq. 11). A span too short to split (T_p = 0) stays whole and unread (docs/design.md)."""
    past = math.floor(kappa * length)
    return past if past > 0 else length


def context_of(p, cfg, m, z_past):
    """C_m^(1) (Eq. 3, 13): [own past + e_self; other past + e_cross]. Table 5's "self" keeps the first part,
    "cross" the second; without the other modality both fall back to the own past (3.2; docs/design.md)."""
    own = z_past[m] + p["tags"][0]
    other = [z_past[o] + p["tags"][1] for o in z_past if o != m]
    if not other or cfg.imagination_context == "self":
        return own
    return other[0] if cfg.imagination_context == "cross" else torch.cat([own, other[0]])


def rollout(p, cfg, name, context):
    """Eq. 4, 14-16: S steps of one shared CrossAttn; C^(s+1) = [C^(1); Y^(s)], Y untagged (docs/design.md)."""
    steps, c = [], context
    for s in range(cfg.rollout_steps):
        queries = p[f"{name}.future_queries"] + p[f"{name}.step_embeddings"][s]  # Eq. 14
        steps.append(linear(p, f"{name}.out", cross_attn(p, f"{name}.block", queries, c, cfg, cfg.imagination_layers)))
        c = torch.cat([context, steps[-1]])
    return torch.stack(steps)  # (S, N_s, w)


def imagination_loss(cfg, imagined, future):
    """Eq. 5 per step, (S,) each: MSE + 1/2 (1 - cos) against the pooled, detached future. MSE over all elements,
    cosine over d_w per future bin then averaged over bins (docs/design.md)."""
    target = pool(future.detach(), cfg.future_queries)  # Z-bar^fut (N_s, w), a detached target (3.2, D.5)
    mse = (imagined - target).pow(2).mean((1, 2))
    cos = F.cosine_similarity(imagined, target.expand_as(imagined), dim=-1).mean(1)
    return mse + cfg.imagination_cosine_weight * (1 - cos), cos, mse


def up(p, beliefs):
    """B_inject = LayerNorm(W_ep b + b_ep) (3.2, D.4)."""
    return layer_norm(p, "up_norm", linear(p, "up", beliefs))


def first_group(cfg, n):
    """Eq. 20: the first half after the media, the rest before the answer. An odd N_q keeps its extra token first;
    single injection (Table 3 d) puts all N_q first (docs/design.md)."""
    return (n + 1) // 2 if cfg.injection == "interleaved" else n


@dataclass
class Reference:
    """The reference's result for one sample; modality-keyed dicts hold the modalities the EWM reads."""

    past: dict  # T_p,m of each present modality
    read: tuple  # the available modalities S after splitting and modality dropout
    imagined: dict = field(default_factory=dict)  # Y-hat_m^(1:S), (S, N_s, w)
    loss: dict = field(default_factory=dict)  # L_imagine,m^(s), (S,); also cos and mse
    cos: dict = field(default_factory=dict)
    mse: dict = field(default_factory=dict)
    memory: torch.Tensor | None = None  # M (N_M, w), Eq. 6
    aggregated: torch.Tensor | None = None  # b^(out) (N_q, w), Eq. 7
    beliefs: torch.Tensor | None = None  # B_inject (N_q, d)
    row: torch.Tensor | None = None  # the language model's input row (Eq. 8), (L', d)
    labels: torch.Tensor | None = None  # (L',)


def reference_ewm(p, cfg, hidden, ref):
    """Eqs. 2-7 and 11-21, the residual boundary and the up-projection for one sample; hidden {m: H_m (L_m, d)}."""
    nb, construction = cfg.num_belief_queries, cfg.belief_construction
    if construction == "random":  # learned input-independent tokens, no residual (Table 4; docs/design.md)
        ref.beliefs = up(p, p["random_beliefs"][: nb * len(ref.read)])
        return
    if not ref.read:
        return
    z = {m: linear(p, f"down_{m}", h) for m, h in hidden.items()}  # Eq. 2
    z_past = {m: z[m][: ref.past[m]] for m in ref.read}  # Eq. 11
    if construction in ("imagination", "ewm"):
        for m in ref.read:  # one unshared branch per modality
            ref.imagined[m] = rollout(p, cfg, f"imagine_{m}", context_of(p, cfg, m, z_past))
            if ref.past[m] < len(z[m]):  # Eq. 5 against Z_m^fut = Z_m[T_p:]; no future at inference
                ref.loss[m], ref.cos[m], ref.mse[m] = imagination_loss(cfg, ref.imagined[m], z[m][ref.past[m]:])
    if construction == "pooling":  # Table 4: observed past states pooled to N_b each, video first (docs/design.md)
        beliefs = torch.cat([pool(z_past[m], nb) for m in ref.read])
    elif construction == "imagination":  # Table 3 b-c: imagined memory pooled to N_b each (docs/design.md)
        beliefs = torch.cat([pool(ref.imagined[m].flatten(0, 1), nb) for m in ref.read])
    else:  # MAMA: typed memory (Eq. 6, 17), 2 N_b or N_b queries with their own aggregator (Eq. 18), Eq. 7 / 19
        ref.memory = torch.cat([ref.imagined[m].flatten(0, 1) + p["type_embeddings.weight"][TYPE_ID[m]]
                                for m in ref.read])
        regime = "dual" if len(ref.read) == 2 else "single"
        beliefs = ref.aggregated = cross_attn(p, f"aggregate_{regime}.block", p[f"aggregate_{regime}.queries"],
                                              ref.memory, cfg, cfg.aggregator_layers)
    if cfg.residual_boundary:  # b + alpha W_r mean(v_b, a_b), v_b = Z_v[T_p,v - 1]: the LAST past token (Eq. 11)
        boundary = torch.stack([z[m][ref.past[m] - 1] for m in ref.read]).mean(0)
        beliefs = beliefs + p["residual_scale"] * linear(p, "residual", boundary)
    ref.beliefs = up(p, beliefs)


def reference_row(cfg, ids, labels, mask, inputs, beliefs, kept):
    """The row the language model reads, and its labels: beliefs in their placeholders (Eq. 8, 20), each modality's
    tokens past its first ``kept[m]`` removed (D.4: "the first kappa fraction of each contiguous region", i.e.
    T_p,m of Eq. 11 with one block per modality), padding removed. A row whose EWM reads fewer modalities than its
    placeholders were laid out for fills the first placeholders of each group (docs/design.md)."""
    media = {cfg.video_token_id: "video", cfg.audio_token_id: "audio"}
    slots = (ids == cfg.belief_token_id).nonzero().flatten().tolist()
    groups = slots[: first_group(cfg, len(slots))], slots[first_group(cfg, len(slots)):]
    if slots:  # Eq. 8: group 1 right after the last media block (its closing token), group 2 right before the answer
        last_media = max(t for t, i in enumerate(ids.tolist()) if i in media)
        assert groups[0][0] == last_media + 2 and groups[0] == list(range(groups[0][0], groups[0][-1] + 1))
        if groups[1]:
            assert groups[1][-1] + 1 == int((labels != -100).nonzero()[0])
    n1 = first_group(cfg, len(beliefs))
    fill = {**dict(zip(groups[0][:n1], beliefs[:n1])), **dict(zip(groups[1], beliefs[n1:]))}
    seen, rows, row_labels = dict.fromkeys(MODALITIES, 0), [], []
    for t, i in enumerate(ids.tolist()):
        if i in media:
            seen[media[i]] += 1
        future = i in media and seen[media[i]] > kept[media[i]]
        if not mask[t] or future or (i == cfg.belief_token_id and t not in fill):
            continue
        rows.append(fill.get(t, inputs[t]))
        row_labels.append(int(labels[t]))
    return torch.stack(rows), torch.tensor(row_labels)


@torch.no_grad()
def reference_inputs(model, batch):
    """Eq. 1's input, (B, L, d): embedding-table rows, and the stock encoders' features in the media placeholders."""
    cfg, ids = model.config, batch["input_ids"]
    inputs = model.get_input_embeddings().weight[ids].clone()
    if "pixel_values_videos" in batch:
        video = model.get_video_features(batch["pixel_values_videos"], batch["video_grid_thw"], return_dict=True)
        inputs[ids == cfg.video_token_id] = torch.cat(video.pooler_output)
    if "input_features" in batch:
        audio = model.get_audio_features(batch["input_features"], batch["feature_attention_mask"], return_dict=True)
        inputs[ids == cfg.audio_token_id] = audio.last_hidden_state
    return inputs


def reference(model, batch, rec, kappa, dropped=None, scope="ewm"):
    """One Reference per sample. kappa = 1: inference. ``dropped`` {sample: modality} is the module's (random)
    modality-dropout draw; ``scope="both"`` also removes that modality from the language model's row (D.1)."""
    cfg, p, dropped = model.config, dict(model.ewm.named_parameters()), dropped or {}
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    token = {"video": cfg.video_token_id, "audio": cfg.audio_token_id}
    inputs = reference_inputs(model, batch)
    hidden = None  # "random" beliefs read nothing: no pass 1
    if len(rec.lm) == 2:  # pass 1 over the prompt prefix: H of Eq. 1, the last hidden state
        pass1_inputs, hidden = rec.lm[0][0]["inputs_embeds"], rec.lm[0][1].last_hidden_state
        close(pass1_inputs, inputs[:, : hidden.shape[1]], "pass-1 input")
    refs = []
    for b in range(ids.shape[0]):
        present = [m for m in MODALITIES if (ids[b] == token[m]).any()]
        lengths = {m: int((ids[b] == token[m]).sum()) for m in present}
        past = {m: split_point(lengths[m], kappa) for m in present}
        read = tuple(m for m in present if (kappa == 1.0 or past[m] < lengths[m]) and dropped.get(b) != m)
        ref = Reference(past, read)
        prefix = ids[b, : 0 if hidden is None else hidden.shape[1]]
        reference_ewm(p, cfg, {m: hidden[b][prefix == token[m]] for m in present if hidden is not None}, ref)
        kept = {**dict.fromkeys(MODALITIES, 0), **past}
        if scope == "both" and b in dropped:
            kept[dropped[b]] = 0
        beliefs = ref.beliefs if ref.beliefs is not None else inputs[b, :0]
        ref.row, ref.labels = reference_row(cfg, ids[b], labels[b], mask[b], inputs[b], beliefs, kept)
        refs.append(ref)
    return refs


def reference_loss(refs):
    """Eq. 21: mean over steps and the sample's available modalities, then over the samples that have any."""
    per_sample = [torch.stack([r.loss[m].mean() for m in r.loss]).mean() for r in refs if r.loss]
    return torch.stack(per_sample).mean() if per_sample else None


# -- the module, observed at its seams --------------------------------------------------------------------------
def ewm_model(preset=None, seed=0, **overrides):
    """The tiny model with ``preset``'s fields, modality dropout off unless asked, and every EWM weight moved off its
    initial value: at initialisation biases are 0, norms 1 and alpha 0.1, where a missing term could hide."""
    fields = {**(preset_fields(preset) if preset else {}), "modality_dropout": 0.0, **overrides}
    torch.manual_seed(seed)
    model = AffectVerseForConditionalGeneration(tiny(**fields))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.ewm.parameters():
            param.add_(0.2 * torch.randn(param.shape, generator=generator))
    return model


def fixed_kappa(kappa, **overrides):
    return dict(keep_ratio_min=kappa, keep_ratio_max=kappa, **overrides)


def run(model, batch, labels=True):
    """The module's forward with hooks: the language model's calls (pass 1, pass 2), the EWM's inputs and output,
    each imagination branch's rollout and each MAMA aggregator's memory, key mask and beliefs."""
    rec = SimpleNamespace(lm=[], ewm=None, imagined={}, mama={})
    ewm = model.ewm
    hooks = [model.model.language_model.register_forward_hook(lambda m, a, kw, out: rec.lm.append((kw, out)),
                                                              with_kwargs=True),
             ewm.register_forward_hook(lambda m, args, out: setattr(rec, "ewm", (args, out)))]
    for m in MODALITIES:
        if hasattr(ewm, f"imagine_{m}"):
            hooks.append(getattr(ewm, f"imagine_{m}").register_forward_hook(
                lambda mod, args, out, m=m: rec.imagined.__setitem__(m, out)))
    for regime in ("dual", "single"):
        if hasattr(ewm, f"aggregate_{regime}"):
            hooks.append(getattr(ewm, f"aggregate_{regime}").register_forward_hook(
                lambda mod, args, out, r=regime: rec.mama.__setitem__(r, (args[0], args[1], out[0]))))
    try:
        out = model(**{k: v for k, v in batch.items() if labels or k != "labels"}, output_imagination=True)
    finally:
        for hook in hooks:
            hook.remove()
    return out, rec


def dropped_by_module(rec, refs):
    """{sample: modality} the module's modality dropout removed from the EWM's input (a random draw)."""
    args = rec.ewm[0]
    use = {"video": args[6], "audio": args[7]}
    return {b: m for b, r in enumerate(refs) for m in r.read if len(r.read) == 2 and not use[m][b]}


def assert_matches(model, batch, rec, out, refs):
    """Every recorded intermediate and output of the module equals the reference's."""
    cfg = model.config
    (video, _, video_past, audio, _, audio_past, use_video, use_audio), ewm_out = rec.ewm
    assert not video.requires_grad and not audio.requires_grad  # pass 1 is no-grad (Algorithm 1, step 2)
    use, past = {"video": use_video, "audio": use_audio}, {"video": video_past, "audio": audio_past}
    for b, ref in enumerate(refs):
        assert [m for m in MODALITIES if use[m][b]] == list(ref.read), f"sample {b}: modalities the EWM reads"
        assert {m: int(past[m][b]) for m in ref.past} == ref.past, f"sample {b}: T_p (Eq. 11)"
    for m in MODALITIES:  # Eq. 4: every rollout step of each branch
        rows = [b for b, r in enumerate(refs) if m in r.imagined]
        assert (m in rec.imagined) == bool(rows), m
        for i, b in enumerate(rows):
            close(rec.imagined[m][i], refs[b].imagined[m], f"{m} rollout, sample {b}")
    for regime, n in (("dual", 2), ("single", 1)):  # Eq. 6-7: memory bank and aggregated beliefs
        rows = [b for b, r in enumerate(refs) if r.memory is not None and len(r.read) == n]
        assert (regime in rec.mama) == bool(rows), regime
        for i, b in enumerate(rows):
            memory, valid, aggregated = (t[i] for t in rec.mama[regime])
            close(memory[valid], refs[b].memory, f"memory bank, sample {b}")
            close(aggregated, refs[b].aggregated, f"MAMA beliefs, sample {b}")
    for b, ref in enumerate(refs):  # the up-projected beliefs, N_q of them (Eq. 18)
        n = 0 if ref.beliefs is None else len(ref.beliefs)
        assert int(ewm_out.n_beliefs[b]) == n, f"sample {b}: N_q"
        if n:
            close(ewm_out.beliefs[b, :n], ref.beliefs, f"beliefs, sample {b}")

    want = reference_loss(refs)  # Eq. 5, 21
    assert (out.imagination_loss is None) == (want is None)
    if want is not None:
        close(out.imagination_loss, want, "imagination loss (Eq. 21)")
        pairs = [(r.cos[m], r.mse[m]) for r in refs for m in r.loss]
        close(out.imagination_cosine, torch.stack([c for c, _ in pairs]).mean(0), "cosine per step")
        close(out.imagination_mse, torch.stack([e for _, e in pairs]).mean(0), "MSE per step")

    pass2, _ = rec.lm[-1]  # Eq. 8: the injected (and, in training, truncated) sequence
    embeds, mask = pass2["inputs_embeds"], pass2["attention_mask"]
    for b, ref in enumerate(refs):
        real = mask[b].bool()
        close(embeds[b][real], ref.row, f"language-model input, sample {b}")
        if out.labels is not None:
            assert out.labels[b][real].tolist() == ref.labels.tolist() and (out.labels[b][~real] == -100).all()

    if out.labels is not None:  # Eq. 9-10
        lm = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), out.labels[:, 1:].flatten(), ignore_index=-100)
        close(out.lm_loss, lm, "language-model loss (Eq. 9)")
        total = lm if want is None else lm + cfg.imagination_loss_weight * want
        close(out.loss, total, "total loss (Eq. 10)")


def check(model, batch, kappa, labels=True):
    """Run the module, build the reference at ``kappa``, compare everything; returns (output, record, refs)."""
    out, rec = run(model, batch, labels)
    refs = reference(model, batch, rec, kappa)
    assert_matches(model, batch, rec, out, refs)
    return out, rec, refs


def _distinct_presets():
    """Each preset that builds beliefs, once per distinct computation (modality dropout, a random draw, is set to 0
    here and has its own test)."""
    fields = sorted(set().union(*map(preset_fields, list_presets())) - {"modality_dropout"})
    seen, names = set(), []
    for name in list_presets():
        config = AffectVerseConfig.from_preset(name)
        key = tuple(getattr(config, f) for f in fields)
        if config.belief_construction != "none" and key not in seen:
            seen.add(key)
            names.append(name)
    return names


# -- tests --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(BATCHES))
@pytest.mark.parametrize("preset", _distinct_presets())
def test_each_preset_matches_the_reference_in_training(preset, kind):
    """Both modalities, each alone, and a mixed padded batch; kappa = 0.6 (floor: 8 -> 4, 10 -> 6, 7 -> 4 tokens)."""
    model = ewm_model(preset, **fixed_kappa(0.6)).train()
    check(model, build_batch(model.config, BATCHES[kind]), kappa=0.6)


@pytest.mark.parametrize("kappa", [0.15, 0.3, 0.5, 0.75, 0.95])
def test_each_keep_ratio_matches_the_reference(kappa):
    """kappa = 0.15 leaves the 4-token video of sample 1 too short to split: whole and unread (docs/design.md)."""
    model = ewm_model(**fixed_kappa(kappa)).train()
    check(model, build_batch(model.config, BATCHES["mixed"] + [(3, 60)]), kappa=kappa)


def test_evaluation_at_a_fixed_keep_ratio_matches_the_reference():
    """eval_keep_ratio < 1 splits as training does (docs/design.md), without modality dropout (training only)."""
    model = ewm_model(eval_keep_ratio=0.6, modality_dropout=1.0).eval()
    check(model, build_batch(model.config, BATCHES["mixed"]), kappa=0.6)


@pytest.mark.parametrize("scope", ["ewm", "both"])
def test_modality_dropout_matches_the_reference(scope):
    """D.1: p = 1 drops one modality of every two-modality sample, for the EWM (and, scope "both", the language
    model); the reference takes the module's random choice of which one."""
    model = ewm_model(**fixed_kappa(0.6, modality_dropout=1.0, modality_dropout_scope=scope)).train()
    batch = build_batch(model.config, [(2, 40), (3, 60), (2, 30), (1, 40), (1, 0)])
    out, rec = run(model, batch)
    dropped = dropped_by_module(rec, reference(model, batch, rec, 0.6))
    assert sorted(dropped) == [0, 1, 2, 3] and set(dropped.values()) == set(MODALITIES)  # both drawn (seed 0)
    assert_matches(model, batch, rec, out, reference(model, batch, rec, 0.6, dropped, scope))


@pytest.mark.parametrize("mode", ["eval", "eval_with_labels", "train_without_split"])
def test_nothing_is_truncated_at_inference(mode):
    """kappa = 1 (Eq. 12): every audio/video token reaches the language model next to the beliefs, the EWM reads
    everything, and there is no future to imagine, so no imagination loss."""
    model = ewm_model(temporal_split=mode != "train_without_split", **fixed_kappa(0.5))
    model.train(mode == "train_without_split")
    batch = build_batch(model.config, BATCHES["mixed"])
    with torch.no_grad():
        out, rec, _ = check(model, batch, kappa=1.0, labels=mode != "eval")
    args = rec.ewm[0]
    assert torch.equal(args[2], args[1]) and torch.equal(args[5], args[4])  # T_p = L for both modalities
    assert rec.lm[-1][0]["inputs_embeds"].shape[1] == batch["input_ids"].shape[1]
    assert out.imagination_loss is None


def test_the_imagination_loss_sends_no_gradient_to_the_future_states():
    """3.2 / D.5: Z^fut is a detached target. From L_imagine alone the future hidden states (whose only path is the
    target) get no gradient; the past ones (the context) do."""
    model = ewm_model().train()
    d = model.config.text_config.hidden_size
    video_len, video_past = torch.tensor([8, 6, 0]), torch.tensor([5, 3, 0])
    audio_len, audio_past = torch.tensor([10, 0, 7]), torch.tensor([6, 0, 4])
    video = torch.randn(3, 8, d, requires_grad=True)
    audio = torch.randn(3, 10, d, requires_grad=True)
    out = model.ewm(video, video_len, video_past, audio, audio_len, audio_past, video_len > 0, audio_len > 0)
    out.imagination_loss.backward()
    for states, lengths, past in ((video, video_len, video_past), (audio, audio_len, audio_past)):
        for b in range(3):
            t, n = int(past[b]), int(lengths[b])
            assert not states.grad[b, t:n].any(), f"future states of sample {b} got a gradient"
            assert states.grad[b, :t].abs().sum() > 0 or t == 0


def test_the_imagination_loss_gradient_equals_the_references():
    """In the full model H comes from a no-grad pass, so the one way around the detached target would be through
    W_v / W_a: every EWM weight's gradient of L_imagine equals the reference's, whose target is detached."""
    model = ewm_model(**fixed_kappa(0.6)).train()
    batch = build_batch(model.config, BATCHES["mixed"])
    out, rec = run(model, batch)
    want_loss = reference_loss(reference(model, batch, rec, 0.6))
    names, params = zip(*model.ewm.named_parameters())
    got = torch.autograd.grad(out.imagination_loss, params, allow_unused=True)
    want = torch.autograd.grad(want_loss, params, allow_unused=True)
    for name, param, g, w in zip(names, params, got, want):
        zero = torch.zeros_like(param)
        close(zero if g is None else g, zero if w is None else w, f"gradient of {name}")
    assert want[names.index("down_video.weight")].abs().sum() > 0  # the past path is there
