"""Issue 14: closed-set label scores, the observation-ratio trajectory, calibration metrics, the figure, embed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.clips import generate_clips
from benchmarks.engine import MODALITIES, Engine, Setting, decode, label_candidates, to_device
from benchmarks.tiny import tiny_config, tiny_processor
from modeling_affectverse import AffectVerseForConditionalGeneration
from pipeline_affectverse import label_scores
from processing_affectverse import AffectVerseProcessor

AVT = Setting(MODALITIES["avt"])
LABELS = ["happy", "sad", "angry", "neutral"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    cfg = tiny_config()
    model = AffectVerseForConditionalGeneration(cfg).eval()
    processor = AffectVerseProcessor.from_model_config(cfg, tiny_processor(), max_length=4096,
                                                       audio_layout="interleaved")
    out = tmp_path_factory.mktemp("clips")
    generate_clips(out, n_clips=2, seconds=2.0, val_fraction=0.0, test_fraction=1.0)
    rows = [{"name": str(p), "video": str(p), "audio": "", "subtitle": "Oh no, not again."}
            for p in sorted((out / "video").glob("*.mp4"))]
    return model, processor, rows


def _full_logp(model, batch, tokens):
    """Reference: log P(tokens | prompt) from one no-cache forward over prompt + tokens, row by row."""
    out = []
    for b in range(batch["input_ids"].shape[0]):
        row = {k: v for k, v in batch.items()}
        ids = torch.cat([batch["input_ids"][b:b + 1], torch.tensor([tokens])], 1)
        row = dict(batch, input_ids=ids, attention_mask=torch.cat([batch["attention_mask"][b:b + 1],
                                                                   torch.ones(1, len(tokens), dtype=torch.long)], 1))
        if batch["input_ids"].shape[0] > 1:
            raise AssertionError("reference is for single-row batches")
        logits = model(**row).logits[0, -len(tokens) - 1:-1].float().log_softmax(-1)
        out.append(float(logits.gather(-1, torch.tensor(tokens)[:, None]).sum()))
    return out


def test_label_scores_sum_to_one_and_match_a_full_forward(tiny):
    """Before: no label scores at all. The cached, batched candidate pass equals one full forward per label."""
    model, processor, rows = tiny
    candidates = label_candidates(processor, LABELS)
    assert len({tuple(c) for c in candidates}) == len(LABELS)
    batch, _ = decode(processor, AVT, rows)
    batch = to_device(batch, model)
    probs = label_scores(model, batch, candidates)
    assert probs.shape == (2, len(LABELS)) and torch.allclose(probs.sum(-1), torch.ones(2), atol=1e-5)
    logp = label_scores(model, batch, candidates, normalise=False)
    single, _ = decode(processor, AVT, rows[:1])
    with torch.no_grad():
        ref = torch.tensor([_full_logp(model, single, c)[0] for c in candidates])
        alone = label_scores(model, single, candidates, normalise=False)[0]
    assert torch.allclose(alone, ref, atol=1e-3), (alone, ref)
    assert torch.allclose(logp[0], ref, atol=1e-3), (logp[0], ref)  # batched with a longer/shorter row


def test_label_scores_agree_with_greedy_generation(tiny):
    """Candidates that differ only in their last token: the greedy continuation is the most probable one."""
    model, processor, rows = tiny
    batch, _ = decode(processor, AVT, rows[:1])
    with torch.no_grad():
        greedy = model.generate(**batch, max_new_tokens=4, do_sample=False)[0, batch["input_ids"].shape[1]:].tolist()
    others = [t for t in range(40, 60) if t != greedy[-1]][:4]
    candidates = [greedy] + [greedy[:-1] + [t] for t in others]
    probs = label_scores(model, batch, candidates)[0]
    assert int(probs.argmax()) == 0, probs


def test_engine_and_pipeline_give_label_scores(tiny):
    model, processor, rows = tiny
    results = Engine(model, processor, max_new_tokens=3, batch_size=2, num_workers=0, labels=LABELS).predict(AVT, rows)
    for r in results:
        assert r["status"] == "ok" and set(r["label_scores"]) == set(LABELS)
        assert abs(sum(r["label_scores"].values()) - 1) < 1e-4
        assert r["label"] == max(r["label_scores"], key=r["label_scores"].get) and r["answer"]
    with pytest.raises(ValueError, match="duplicates"):
        label_candidates(processor, ["happy", "happy"])
