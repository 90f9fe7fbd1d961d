"""Issue-13 options of the forward pass: each changes what it says and nothing else.

- ``ewm_observation="past"``: the EWM's past inputs come from states that never saw the truncated future.
- ``modality_dropout_scope="both"``: the dropped modality also leaves the language-model pass.
- ``eval_keep_ratio``: imagination loss, per-step cosine and MSE on held-out data at a fixed kappa.
"""

import pytest
import torch

from modeling_affectverse import AffectVerseForConditionalGeneration
from tests.helpers import build_batch, tiny

N_VIDEO, N_AUDIO = 16, 20  # 4 temporal grids x 4 tokens; 80 mel frames -> 20 tokens
SPLIT = dict(keep_ratio_min=0.5, keep_ratio_max=0.5, modality_dropout=0.0)


def model_for(**overrides):
    torch.manual_seed(0)
    return AffectVerseForConditionalGeneration(tiny(**overrides))


def ewm_inputs(model, batch, **kwargs):
    """(output, the EWM's positional inputs): video, video_len, video_past, audio, audio_len, audio_past, use_video,
    use_audio."""
    seen = {}
    handle = model.ewm.register_forward_pre_hook(lambda module, args: seen.update(args=args))
    try:
        with torch.no_grad():
            out = model(**batch, **kwargs)
    finally:
        handle.remove()
    return out, seen["args"]


def perturb_future_video(batch):
    """The same batch with the last two of four temporal grids of the video changed (16 patches per grid)."""
    changed = dict(batch)
    pixels = batch["pixel_values_videos"].clone()
    pixels[32:] += 3 * torch.randn_like(pixels[32:])
    changed["pixel_values_videos"] = pixels
    return changed


# -- ewm_observation -----------------------------------------------------------------------------------------------
def test_past_observation_hides_the_future_from_the_ewm_and_the_language_model():
    batch = build_batch(tiny(), [(4, 80)])
    other = perturb_future_video(batch)
    results = {}
    for mode in ("full", "past"):
        model = model_for(ewm_observation=mode, **SPLIT).train()
        (out, args), (out2, args2) = ewm_inputs(model, batch), ewm_inputs(model, other)
        past_v, past_a = int(args[2][0]), int(args[5][0])
        assert (past_v, past_a) == (N_VIDEO // 2, N_AUDIO // 2)
        results[mode] = dict(
            audio_past_change=(args[3][0, :past_a] - args2[3][0, :past_a]).abs().max().item(),
            video_past_change=(args[0][0, :past_v] - args2[0][0, :past_v]).abs().max().item(),
            future_change=(args[0][0, past_v:N_VIDEO] - args2[0][0, past_v:N_VIDEO]).abs().max().item(),
            logits_change=(out.logits - out2.logits).abs().max().item(),
            future=(args[0][0, past_v:N_VIDEO], args[3][0, past_a:N_AUDIO]),
            lm_loss=out.lm_loss, img_loss=out.imagination_loss)
    full, past = results["full"], results["past"]
    # the leak of the issue: in the layout [video; audio] the past audio states attend to the future video
    assert full["audio_past_change"] > 1e-3 and full["logits_change"] > 1e-4
    # "past": every past input of the EWM, hence the beliefs and the language model's logits, ignore the future
    assert past["audio_past_change"] == 0 and past["video_past_change"] == 0 and past["logits_change"] < 1e-6
    # ... while the imagination targets still come from the full pass (they see the future, as they must)
    assert past["future_change"] > 1e-3
    for a, b in zip(full["future"], past["future"]):
        torch.testing.assert_close(a, b)


def test_past_observation_changes_nothing_at_inference():
    batch = build_batch(tiny(), [(4, 80), (2, 0), (0, 40)])
    logits = {}
    for mode in ("full", "past"):
        model = model_for(ewm_observation=mode).eval()
        with torch.no_grad():
            logits[mode] = model(**batch).logits
    torch.testing.assert_close(logits["full"], logits["past"])


def test_past_observation_without_a_split_equals_full():
    """temporal_split off: nothing is cut, so "past" reads exactly what "full" reads."""
    batch = build_batch(tiny(), [(4, 80), (0, 40)])
    losses = {}
    for mode in ("full", "past"):
        model = model_for(ewm_observation=mode, temporal_split=False, modality_dropout=0.0).train()
        with torch.no_grad():
            losses[mode] = model(**batch).loss
    torch.testing.assert_close(losses["full"], losses["past"])


# -- modality_dropout_scope ----------------------------------------------------------------------------------------
def _kept(model, batch):
    """The keep mask of the language-model pass and which modalities the EWM read, from one training forward."""
    seen = {}
    original = model._compact

    def spy(embeds, keep, position_ids, labels, ewm_out):
        seen["keep"] = keep
        return original(embeds, keep, position_ids, labels, ewm_out)

    model._compact = spy
    torch.manual_seed(1)
    try:
        _, args = ewm_inputs(model, batch)
    finally:
        del model._compact
    return seen["keep"], args[6], args[7]


@pytest.mark.parametrize("scope", ["ewm", "both"])
def test_dropout_scope_decides_whether_the_language_model_loses_the_modality(scope):
    model = model_for(keep_ratio_min=0.5, keep_ratio_max=0.5, modality_dropout=1.0,
                      modality_dropout_scope=scope).train()
    cfg = model.config
    batch = build_batch(cfg, [(4, 80)] * 6 + [(2, 0), (0, 40)])
    keep, use_video, use_audio = _kept(model, batch)
    is_video, is_audio = batch["input_ids"] == cfg.video_token_id, batch["input_ids"] == cfg.audio_token_id
    video_kept, audio_kept = (keep & is_video).sum(1), (keep & is_audio).sum(1)
    both = slice(0, 6)
    assert bool((use_video[both] ^ use_audio[both]).all())  # p = 1: each two-modality row dropped one
    assert {bool(v) for v in use_video[both]} == {True, False}  # both kinds occur with this seed
    if scope == "both":  # the dropped modality's tokens are gone from the language-model pass, the other's past kept
        assert torch.equal(video_kept[both] > 0, use_video[both]) and torch.equal(audio_kept[both] > 0, use_audio[both])
        assert bool((video_kept[both][use_video[both]] == N_VIDEO // 2).all())
    else:  # literal D.1: the language model still sees both pasts
        assert bool((video_kept[both] == N_VIDEO // 2).all()) and bool((audio_kept[both] == N_AUDIO // 2).all())
    # single-modality rows are never dropped and keep their past under both scopes
    assert (int(video_kept[6]), int(audio_kept[7])) == (4, 5)  # half of 8 video / 10 audio tokens


def test_dropout_scope_both_with_no_dropout_changes_nothing():
    batch = build_batch(tiny(), [(4, 80), (2, 0)])
    losses = {}
    for scope in ("ewm", "both"):
        model = model_for(modality_dropout_scope=scope, **SPLIT).train()
        with torch.no_grad():
            losses[scope] = model(**batch).loss
    torch.testing.assert_close(losses["ewm"], losses["both"])


# -- eval_keep_ratio and per-step imagination quality ------------------------------------------------------------
def test_training_returns_per_step_cosine_and_mse_that_make_up_the_loss():
    model = model_for(**SPLIT).train()
    with torch.no_grad():
        out = model(**build_batch(model.config, [(4, 80)]), output_imagination=True)
    steps = model.config.rollout_steps
    assert out.imagination_cosine.shape == out.imagination_mse.shape == (steps,)
    expected = (out.imagination_mse + model.config.imagination_cosine_weight * (1 - out.imagination_cosine)).mean()
    torch.testing.assert_close(out.imagination_loss, expected)


def test_fixed_evaluation_kappa_measures_held_out_imagination_deterministically():
    model = model_for(eval_keep_ratio=0.5).eval()
    batch = build_batch(model.config, [(4, 80), (4, 80)])
    with torch.no_grad():
        first, second = (model(**batch, output_imagination=True) for _ in range(2))
    assert first.imagination_loss is not None and first.imagination_mse.shape == (model.config.rollout_steps,)
    torch.testing.assert_close(first.imagination_cosine, second.imagination_cosine)  # no random kappa or dropout
    torch.testing.assert_close(first.logits, second.logits)
    # the language model sees each modality's first half, as in training at kappa = 0.5
    assert first.logits.shape[1] == batch["input_ids"].shape[1] - N_VIDEO // 2 - N_AUDIO // 2
    torch.testing.assert_close(first.loss, first.lm_loss + model.config.imagination_loss_weight
                               * first.imagination_loss)


def test_default_evaluation_splits_nothing_and_generate_ignores_the_evaluation_kappa():
    base, fixed = model_for().eval(), model_for(eval_keep_ratio=0.5).eval()
    batch = build_batch(base.config, [(4, 80)])
    with torch.no_grad():
        out = base(**batch, output_imagination=True)
    assert out.imagination_loss is None and out.imagination_cosine is None and out.imagination_mse is None
    assert out.logits.shape[1] == batch["input_ids"].shape[1]
    prompt = build_batch(base.config, [(4, 80)], padding="left", generation=True)
    suppress = [base.config.belief_token_id]
    a = base.generate(**prompt, max_new_tokens=3, do_sample=False, suppress_tokens=suppress)
    b = fixed.generate(**prompt, max_new_tokens=3, do_sample=False, suppress_tokens=suppress)
    torch.testing.assert_close(a, b)
