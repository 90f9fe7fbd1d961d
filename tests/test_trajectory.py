"""Issue 14: closed-set label scores, the observation-ratio trajectory, calibration metrics, the figure, embed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from affectverse.default.clips import generate_clips
from affectverse.default.tiny import tiny_config, tiny_processor
from affectverse.inference.engine import MODALITIES, Engine, Setting, decode, label_candidates, modality_row, to_device
from modeling_affectverse import AffectVerseForConditionalGeneration
from pipeline_affectverse import label_scores
from processing_affectverse import AffectVerseCollator, AffectVerseProcessor

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
    # the engine reuses generate's prompt pass (first-step logits, cache cut to the prompt): the same scores
    batch, _ = decode(processor, AVT, rows)
    direct = label_scores(model, batch, label_candidates(processor, LABELS))
    for r, p in zip(results, direct):
        assert list(r["label_scores"].values()) == pytest.approx(p.tolist(), abs=1e-5)
    with pytest.raises(ValueError, match="duplicates"):
        label_candidates(processor, ["happy", "happy"])


# ============================================================================================== trajectory
RATIOS = (0.1, 0.3, 0.6, 1.0)


def _direct(model, processor, row, ratio):
    """An independent prediction at ``ratio``, without the engine: the processor on the clip at that keep_ratio,
    greedy ``generate``, and label scores from a fresh prompt pass (answer, {label: probability})."""
    batch = processor([{"video": row["video"], "audio": "video", "subtitle": row["subtitle"]}], training=False,
                      keep_ratio=ratio)
    with torch.no_grad():
        tokens = model.generate(**batch, max_new_tokens=4, do_sample=False,
                                pad_token_id=processor.tokenizer.pad_token_id)
    answer = processor.batch_decode(tokens[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)[0].strip()
    return answer, dict(zip(LABELS, label_scores(model, batch, label_candidates(processor, LABELS))[0].tolist()))


@pytest.mark.parametrize("reuse,share", [(True, True), (True, False), (False, False)])
def test_trajectory_equals_independent_predictions(tiny, reuse, share):
    """Each ratio's answer and label scores are those of an independent prediction at that keep_ratio (the
    processor and the model called directly): decoded once and batched, with and without the KV cache shared
    across ratios, or one engine prediction per ratio."""
    from affectverse.inference.trajectory import trajectory

    model, processor, rows = tiny
    curves = trajectory(model, processor, rows, RATIOS, labels=LABELS, max_new_tokens=4, reuse=reuse,
                        share_prefix=share)
    for row, curve in zip(rows, curves):
        assert [r["keep_ratio"] for r in curve] == list(RATIOS)
        for r in curve:
            answer, scores = _direct(model, processor, row, r["keep_ratio"])
            assert r["status"] == "ok" and r["answer"] == answer
            for label in LABELS:
                assert abs(r["label_scores"][label] - scores[label]) < 1e-4, (r, scores)
    # the ratios do see different inputs: the scores move along the trajectory
    assert len({tuple(r["label_scores"].values()) for r in curves[0]}) == len(RATIOS)


def test_trajectory_engine_shares_the_prefix_only_where_the_model_takes_it(tiny):
    """The batched trajectory passes share_prefix to the model; a folder's older model code without that input
    (or reuse=False) gets nothing extra, instead of failing every batch."""
    from affectverse.inference.trajectory import TrajectoryEngine

    model, processor, _ = tiny

    class Older(torch.nn.Module):
        def forward(self, input_ids=None, reuse_prefix_cache=True, **kwargs):
            return None

    def made(m, **kw):
        return TrajectoryEngine(m, processor, 2, batch_size=1, num_workers=0, **kw)

    assert made(model).forward_kwargs == {"share_prefix": True}
    assert made(model, share_prefix=False).forward_kwargs == made(model, reuse=False).forward_kwargs == {}
    assert made(Older()).forward_kwargs == {}


@pytest.mark.parametrize("layer", [-1, 1])
@pytest.mark.parametrize("layout", ["interleaved", "separate"])
def test_share_prefix_computes_the_shared_tokens_once_and_changes_nothing(tiny, layer, layout):
    """Before: every ratio's prompt pass ran over its whole prompt. With share_prefix the tokens a shorter ratio
    shares with the full clip's prompt are computed once (on that prompt alone): fewer language-model tokens,
    the same logits, cache and greedy tokens, for the EWM reading the last or an intermediate layer."""
    from transformers import DynamicCache

    from affectverse.inference.trajectory import decode_trajectory
    from benchmarks.trajectory_bench import prompt_work

    _, _, rows = tiny
    torch.manual_seed(0)
    cfg = tiny_config(ewm_hidden_layer=layer)
    model = AffectVerseForConditionalGeneration(cfg).eval()
    processor = AffectVerseProcessor.from_model_config(cfg, tiny_processor(), max_length=4096, audio_layout=layout)
    settings = [Setting(MODALITIES["avt"], r) for r in (0.3, 0.6, 0.8, 1.0)]
    batch, _ = decode_trajectory(processor, settings, rows[0])
    mask = batch["attention_mask"].bool()
    results = {}
    for share in (False, True):
        with torch.no_grad():
            out = model(**batch, cache=DynamicCache(), use_cache=True, logits_to_keep=1, share_prefix=share)
            tokens = model.generate(**batch, max_new_tokens=6, do_sample=False, share_prefix=share)
        keys = out.cache.layers[-1].keys  # (B, H, L, D)
        results[share] = out.logits[:, -1], keys, tokens, prompt_work(model, batch, share)
    (logits, keys, tokens, work), (s_logits, s_keys, s_tokens, s_work) = results[False], results[True]
    torch.testing.assert_close(s_logits, logits, atol=1e-4, rtol=1e-4)
    real = mask[:, None, :keys.shape[2], None].expand_as(keys)
    torch.testing.assert_close(s_keys[real], keys[real], atol=1e-4, rtol=1e-4)
    assert torch.equal(s_tokens, tokens)
    assert s_work < 0.8 * work, (s_work, work)  # the prompt pass did less: what it shares is not recomputed


def test_share_prefix_without_a_generation_cache_and_with_right_padding(tiny):
    """The shared pass also serves a forward that returns every position's logits (no generation cache: the
    language model reruns the whole prompt after it) and right-padded rows (all rows start at column 0)."""
    from affectverse.inference.trajectory import ratio_samples

    model, processor, rows = tiny
    sample = AffectVerseCollator(processor, training=False).sample(modality_row(rows[0], MODALITIES["avt"]))
    encoded = [processor.encode(s, False, keep, i)
               for i, (s, keep) in enumerate(ratio_samples(processor, sample, [0.5, 1.0]))]
    for side in ("left", "right"):
        batch = processor.collate(encoded, padding_side=side)
        mask = batch["attention_mask"].bool()
        with torch.no_grad():
            plain = model(**batch, output_hidden_states=True)
            shared = model(**batch, output_hidden_states=True, share_prefix=True)
        torch.testing.assert_close(shared.logits[mask], plain.logits[mask], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(shared.hidden_states[-1][mask], plain.hidden_states[-1][mask], atol=1e-4,
                                   rtol=1e-4)


@pytest.mark.parametrize("modality", ["avt", "at", "vt"])
def test_shared_decoding_gives_the_files_inputs_at_each_ratio(tiny, modality):
    """Decoded once, each ratio's ids, audio features and video patches are the file's own at that keep_ratio
    (A+T reads the clip's audio as a file, V+T has no audio)."""
    from affectverse.inference.trajectory import decode_trajectory

    model, processor, rows = tiny
    settings = [Setting(MODALITIES[modality], r) for r in RATIOS]
    shared, reason = decode_trajectory(processor, settings, rows[0])
    assert reason is None
    grids = shared.get("video_grid_thw")
    patches = grids.prod(-1).tolist() if grids is not None else []
    for i, setting in enumerate(settings):
        alone, _ = decode(processor, setting, rows[:1])
        n = int(alone["attention_mask"].sum())
        assert shared["input_ids"][i, -n:].tolist() == alone["input_ids"][0].tolist()
        if "a" in modality:
            frames = int(alone["feature_attention_mask"].sum())
            assert int(shared["feature_attention_mask"][i].sum()) == frames
            assert torch.equal(shared["input_features"][i, :, :frames], alone["input_features"][0, :, :frames])
        if "v" in modality:
            assert torch.equal(grids[i], alone["video_grid_thw"][0])
            rows_i = shared["pixel_values_videos"][sum(patches[:i]):sum(patches[:i + 1])]
            assert torch.equal(rows_i, alone["pixel_values_videos"])
        else:
            assert "pixel_values_videos" not in alone and grids is None


def test_trajectory_of_a_bad_clip_is_an_error_per_ratio(tiny, tmp_path):
    from affectverse.inference.trajectory import trajectory

    model, processor, _ = tiny
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"not a video")
    [curve] = trajectory(model, processor, [{"name": str(bad), "video": str(bad), "audio": ""}], RATIOS,
                         max_new_tokens=2)
    assert [r["status"] for r in curve] == ["error"] * len(RATIOS) and "corrupt.mp4" in curve[0]["reason"]


def test_the_trajectory_figure_renders(tiny, tmp_path):
    from affectverse.inference.trajectory import plot_trajectories

    curves = {f"clip{i}.mp4": [{"keep_ratio": r, "label_scores": {"happy": r, "sad": 1 - r}} for r in RATIOS]
              for i in range(3)}
    path = plot_trajectories(curves, tmp_path / "fig" / "trajectory.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    with pytest.raises(ValueError, match="--labels"):
        plot_trajectories({"a": [{"keep_ratio": 1.0, "answer": "x"}]}, tmp_path / "none.png")


# ===================================================================================================== CLI
@pytest.fixture(scope="module")
def folder(tiny, tmp_path_factory):
    model, processor, rows = tiny
    out = tmp_path_factory.mktemp("tiny_folder")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _records(path):
    import json

    lines = [json.loads(line) for line in Path(path).read_text().splitlines()]
    return [r for r in lines if "setting_id" in r and r.get("kind") != "setting"]


def test_cli_predict_labels_and_trajectory_resume_and_figure(folder, tiny, tmp_path):
    from affectverse import cli

    _, _, rows = tiny
    clips = [r["video"] for r in rows]
    out = tmp_path / "traj.jsonl"
    args = ["predict", str(folder), *clips, "--out", str(out), "--labels", ",".join(LABELS), "--trajectory",
            "--ratios", "0.5,1", "--max-new-tokens", "3", "--num-workers", "0", "--figure", str(tmp_path / "t.png")]
    assert cli.main(args) == 0
    records = _records(out)
    assert [(Path(r["path"]).name, r["keep_ratio"]) for r in records] == [
        (Path(c).name, k) for c in clips for k in (0.5, 1.0)]
    for r in records:
        assert r["status"] == "ok" and abs(sum(r["label_scores"].values()) - 1) < 1e-4 and r["label"] in LABELS
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    before = out.read_bytes()
    assert cli.main(args) == 0 and out.read_bytes() == before  # resumed: nothing left to do
    plain = tmp_path / "plain.jsonl"
    assert cli.main(["predict", str(folder), clips[0], "--out", str(plain), "--labels", "happy, sad",
                     "--max-new-tokens", "3", "--num-workers", "0"]) == 0
    [one] = _records(plain)
    assert one["keep_ratio"] == 1.0 and set(one["label_scores"]) == {"happy", "sad"}
    assert cli.main(["predict", str(folder), clips[0], "--out", str(tmp_path / "x.jsonl"), "--figure", "f.png"]) == 2
    assert cli.main(["predict", str(folder), clips[0], "--out", str(tmp_path / "y.jsonl"), "--trajectory",
                     "--ratios", "0,0.5"]) == 2  # a ratio outside (0, 1]
    assert not (tmp_path / "x.jsonl").exists() and not (tmp_path / "y.jsonl").exists()


# ==================================================================================================== embed
@pytest.mark.parametrize("suffix", [".safetensors", ".parquet"])
def test_embed_is_resumable_and_matches_a_direct_forward(folder, tiny, tmp_path, suffix):
    from affectverse import cli
    from affectverse.inference.embed import embed_batch, read_embeddings, store_path

    model, processor, rows = tiny
    clips = [r["video"] for r in rows]
    out = tmp_path / f"emb{suffix}"
    base = ["embed", str(folder), "--out", str(out), "--num-workers", "0", "--batch-size", "2"]
    assert cli.main(base + [clips[0]]) == 0
    first = read_embeddings(out)
    assert cli.main(base + clips) == 0  # resumes: only the second clip is computed
    assert sum(1 for r in _records(store_path(out))) == 2
    got = read_embeddings(out)
    assert list(got) == [Path(c).stem for c in clips]
    twin = tmp_path / "other" / Path(clips[0]).name
    twin.parent.mkdir()
    twin.write_bytes(Path(clips[0]).read_bytes())
    assert cli.main(base + [clips[0], str(twin)]) == 2  # two clips, one name: refused before anything runs
    for kind, value in first[Path(clips[0]).stem].items():
        assert torch.equal(value, got[Path(clips[0]).stem][kind])
    for row in rows:  # each row against a direct forward of that clip alone (the CLI passes no subtitle here)
        batch, _ = decode(processor, AVT, [dict(row, subtitle="")])
        vec = got[Path(row["video"]).stem]
        assert set(vec) == {"belief_tokens", "belief_embeddings", "video_hidden", "audio_hidden", "answer_hidden"}
        with torch.no_grad():
            logits = model(**batch, logits_to_keep=1).logits[0, -1]
        head = model.lm_head(vec["answer_hidden"])
        real = torch.arange(head.shape[0]) != model.config.belief_token_id  # the forward masks <|belief|>'s logit
        assert torch.allclose(head[real], logits[real], atol=1e-4)
        direct = embed_batch(model, batch)[0]
        for kind in vec:
            assert torch.allclose(vec[kind], direct[kind], atol=1e-4), kind
        assert vec["belief_tokens"].shape == (4, model.config.ewm_hidden_size)
        assert vec["belief_embeddings"].shape == (4, model.config.text_config.hidden_size)


def test_embed_rows_do_not_depend_on_the_batch(tiny):
    from affectverse.inference.embed import embed_batch

    model, processor, rows = tiny
    together = embed_batch(model, decode(processor, AVT, rows)[0])
    for row, vec in zip(rows, together):
        alone = embed_batch(model, decode(processor, AVT, [row])[0])[0]
        assert set(alone) == set(vec)
        for kind in vec:
            assert torch.allclose(vec[kind], alone[kind], atol=1e-4), kind


def test_engine_batches_never_mix_label_sets(tiny):
    """affectverse.evaluation.runner gives each benchmark its own label set: a batch holds one (the scores normalise over it)."""
    model, processor, rows = tiny
    sets = {"a": ["happy", "sad"], "b": ["angry", "neutral", "happy"], "c": None}
    engine = Engine(model, processor, max_new_tokens=2, batch_size=4, num_workers=0,
                    labels=lambda row: sets[row["benchmark"]])
    work = [(AVT, dict(rows[0], benchmark=b, name=f"{b}{i}")) for b in "aabbc" for i in range(1)]
    jobs = engine.batches(work)
    assert [[r["benchmark"] for r in batch] for _, batch in jobs] == [["a", "a"], ["b", "b"], ["c"]]
    results = engine.predict(AVT, [dict(rows[0], benchmark="b"), dict(rows[1], benchmark="b")])
    assert all(set(r["label_scores"]) == set(sets["b"]) for r in results)
    assert "label_scores" not in engine.predict(AVT, [dict(rows[0], benchmark="c")])[0]


def test_label_scores_agree_with_greedy_generation_where_the_answer_is_a_label(tiny):
    """A tiny model fitted to answer "sad" for a clip: greedy generation gives that label's answer and the label
    scores put "sad" on top (the other test covers any greedy continuation, label or not)."""
    from processing_affectverse import AffectVerseCollator, answer_from_label

    _, processor, rows = tiny
    torch.manual_seed(0)
    cfg = tiny_config()
    model = AffectVerseForConditionalGeneration(cfg)
    processor = AffectVerseProcessor.from_model_config(cfg, processor, max_length=4096)
    row = dict(rows[0], label="sad")
    train = AffectVerseCollator(processor, training=True)([row])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(40):
        loss = model(**train).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    batch, _ = decode(processor, AVT, [row])
    with torch.no_grad():
        tokens = model.generate(**batch, max_new_tokens=16, do_sample=False)[:, batch["input_ids"].shape[1]:]
    assert processor.batch_decode(tokens, skip_special_tokens=True)[0].strip() == answer_from_label("sad")
    probs = label_scores(model, batch, label_candidates(processor, LABELS))[0]
    assert LABELS[int(probs.argmax())] == "sad" and float(probs.max()) > 0.5
