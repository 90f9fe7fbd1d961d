"""affectverse/training/preflight.py: media probed with PyAV, text measured with the tokenizer, verdicts cached by file stamp."""

from __future__ import annotations

import os
from pathlib import Path

import av
import datasets
import pytest

from affectverse.default.clips import write_bad_media
from affectverse.default.tiny import tiny_processor
from affectverse.training import preflight


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """write_bad_media's cases plus a text file named .mp4 and an mp4 with its index first, cut short."""
    folder = tmp_path_factory.mktemp("bad")
    paths = write_bad_media(folder)
    paths["text"] = folder / "text.mp4"
    paths["text"].write_text("this is a subtitle file, not a video\n" * 20)
    paths["faststart_cut"] = folder / "faststart_cut.mp4"
    with av.open(str(paths["good"])) as src, av.open(str(folder / "fast.mp4"), "w",
                                                      options={"movflags": "faststart"}) as dst:
        streams = {s.index: dst.add_stream_from_template(s) for s in src.streams}
        for packet in src.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                dst.mux(packet)
    data = (folder / "fast.mp4").read_bytes()
    paths["faststart_cut"].write_bytes(data[: int(0.6 * len(data))])  # the index announces what is gone
    return paths


@pytest.mark.parametrize("case, video, audio, reason", [
    ("good", True, True, None),
    ("good_wav", False, True, None),
    ("no_audio", True, False, None),  # a video-only sample needs no audio track
    ("missing", True, True, "file not found"),
    ("empty", True, True, "empty file (0 bytes)"),
    ("truncated", True, False, "unreadable, truncated or corrupt"),
    ("corrupt", True, False, "unreadable, truncated or corrupt"),
    ("text", True, False, "unreadable, truncated or corrupt"),
    ("faststart_cut", True, True, "truncated or corrupt"),
    ("faststart_cut", False, True, "near the end"),
    ("no_audio", True, True, "no audio track"),
    ("truncated_wav", False, True, "truncated audio: the header announces 2.00 s, the file holds 1.00 s"),
])
def test_probe_names_what_is_wrong(bad, case, video, audio, reason):
    got = preflight.probe(str(bad[case]), video, audio)
    if reason is None:
        assert got is None
    else:
        assert got is not None and reason in got, got


def _rows(bad, cases, subtitle="hello"):
    return datasets.Dataset.from_list([
        {"name": case, "video": str(bad[case]) if not case.endswith("wav") else str(bad["good"]),
         "audio": str(bad[case]) if case.endswith("wav") else "", "subtitle": subtitle, "label": '"happy"'}
        for case in cases])


def test_check_splits_lists_every_bad_sample_with_file_and_reason(bad):
    train = _rows(bad, ["good", "empty", "no_audio", "text", "truncated_wav"])
    evaluation = _rows(bad, ["good", "corrupt"])
    found = preflight.check_splits({"train": train, "eval": evaluation}, tiny_processor())
    assert [(b.split, b.name, Path(b.file).name) for b in found] == [
        ("train", "empty", "empty.mp4"), ("train", "no_audio", "no_audio.mp4"), ("train", "text", "text.mp4"),
        ("train", "truncated_wav", "truncated_wav.wav"), ("eval", "corrupt", "corrupt.mp4")]
    kept = preflight.drop_bad(train, found, "train")
    assert kept["name"] == ["good"] and preflight.drop_bad(evaluation, found, "eval")["name"] == ["good"]
    assert "train empty: " in preflight.describe(found) and "no audio track" in preflight.describe(found)


def test_a_subtitle_longer_than_max_length_is_caught_by_the_tokenizer(bad):
    processor = tiny_processor(max_length=1024)
    long = _rows(bad, ["good"], subtitle="word " * 20_000)  # 100k characters
    short = _rows(bad, ["good"], subtitle="word " * 50)
    assert preflight.text_problems(short.to_list(), processor) == {}
    problem = preflight.text_problems(long.to_list(), processor)[0]
    assert "text too long" in problem and "max_length=1024" in problem and "100000 characters" in problem


def test_the_text_rule_matches_the_processor_at_the_limit(bad):
    """Subtitles just inside and just outside the budget: the pre-flight verdict equals the processor's own."""
    from processing_affectverse import AffectVerseCollator

    processor = tiny_processor(max_length=200)
    collate = AffectVerseCollator(processor, training=True)
    verdicts = []
    for words in range(4, 64, 4):
        row = _rows(bad, ["good"], subtitle="word " * words).to_list()[0]
        flagged = bool(preflight.text_problems([row], processor))
        try:
            collate([row])
            refused = False
        except ValueError:
            refused = True
        verdicts.append((words, flagged, refused))
    assert all(flagged == refused for _, flagged, refused in verdicts), verdicts
    assert any(f for _, f, _ in verdicts) and not all(f for _, f, _ in verdicts)  # both sides were tried


def test_verdicts_are_cached_by_path_size_and_mtime(bad, tmp_path, monkeypatch):
    import shutil

    clip = tmp_path / "clip.mp4"
    shutil.copy(bad["good"], clip)
    rows = datasets.Dataset.from_list([{"name": "a", "video": str(clip), "audio": "", "subtitle": "", "label": '"x"'}])
    cache = tmp_path / "preflight_cache.json"
    assert preflight.check_splits({"train": rows}, cache_file=cache) == []
    assert cache.is_file() and not cache.read_text().startswith("\x80")  # JSON, not pickle
    monkeypatch.setattr(preflight, "probe", lambda *a: pytest.fail("probed again although unchanged"))
    assert preflight.check_splits({"train": rows}, cache_file=cache) == []
    clip.write_bytes(b"")  # the file changed (size, mtime): probed again
    os.utime(clip, ns=(1, 1))
    monkeypatch.undo()
    found = preflight.check_splits({"train": rows}, cache_file=cache)
    assert [b.reason for b in found] == ["empty file (0 bytes)"]


def test_safetensors_problem_reads_only_the_header(tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(1000)}, path)
    assert preflight.safetensors_problem(path) is None
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "truncated" in preflight.safetensors_problem(path)
    path.write_bytes(b"PK\x03\x04 a zip archive, not safetensors")
    assert "not a safetensors file" in preflight.safetensors_problem(path)
