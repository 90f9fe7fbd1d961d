"""media_affectverse: both video backends give the same frames; only what the length rule keeps is decoded."""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys

import numpy as np
import pytest

import media_affectverse
from affectverse.default.clips import write_bad_media, write_mp4, write_truncated_faststart
from affectverse.default.tiny import TINY_IDS, tiny_processor
from media_affectverse import load_audio, load_video, probe, video_backend

HAS_DECORD = importlib.util.find_spec("decord") is not None
BACKENDS = [pytest.param("decord", marks=pytest.mark.skipif(not HAS_DECORD, reason="decord is not installed")), "av"]
ANSWER = "The character's emotional state is happy."


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    return {k: str(v) for k, v in write_bad_media(tmp_path_factory.mktemp("media")).items()}


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    """60 s at 6 fps, 64x64 (360 frames), with a 60 s AAC track."""
    path = tmp_path_factory.mktemp("long") / "long.mp4"
    rng = np.random.default_rng(0)
    frames = np.repeat(rng.integers(0, 255, (360, 1, 1, 3), dtype=np.uint8), 64, axis=1).repeat(64, axis=2)
    write_mp4(path, frames, 6, rng.normal(0, 0.1, 60 * 16000).astype(np.float32), 16000)
    return str(path)


@pytest.mark.skipif(not HAS_DECORD, reason="decord is not installed")
@pytest.mark.parametrize("size,tolerance", [(224, 0), (112, 8)])
@pytest.mark.parametrize("fps,keep_ratio,max_frames", [(3.0, 1.0, None), (6.0, 0.5, None), (3.0, 1.0, 4)])
def test_backends_decode_the_same_frames(media, size, tolerance, fps, keep_ratio, max_frames):
    """Same indices, timestamps and fps; pixels equal at the source size, within a few grey levels when resized."""
    clips = [load_video(media["good"], fps, size, keep_ratio, max_frames, backend=b) for b in ("decord", "av")]
    assert clips[0].fps == clips[1].fps and clips[0].timestamps == clips[1].timestamps
    assert clips[0].duration == clips[1].duration and clips[0].frames.shape == clips[1].frames.shape
    assert np.abs(clips[0].frames.astype(int) - clips[1].frames.astype(int)).max() <= tolerance
    assert probe(media["good"], "decord") == probe(media["good"], "av")


def test_auto_backend_is_decord_where_it_imports_else_pyav(monkeypatch):
    monkeypatch.delenv("AFFECTVERSE_VIDEO_BACKEND", raising=False)
    assert video_backend() == ("decord" if HAS_DECORD else "av")
    monkeypatch.setattr(media_affectverse.importlib.util, "find_spec", lambda name: None)
    assert video_backend() == "av"
    monkeypatch.setenv("AFFECTVERSE_VIDEO_BACKEND", "decord")
    assert video_backend() == "decord" and video_backend("av") == "av"
    with pytest.raises(ValueError, match="opencv"):
        video_backend("opencv")


def test_remote_code_imports_without_decord_and_pyav(media):
    """A machine without decord (macOS arm64): the remote-code files import and decode with PyAV alone."""
    code = ("import sys; sys.modules['decord'] = None\n"
            "import media_affectverse, processing_affectverse\n"
            "assert media_affectverse.video_backend() == 'av'\n"
            f"clip = media_affectverse.load_video({media['good']!r})\n"
            "assert clip.frames.shape == (6, 224, 224, 3)\n"
            "sys.modules['av'] = None\n"
            "import importlib; importlib.reload(processing_affectverse)\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "AFFECTVERSE_VIDEO_BACKEND"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_kept_frames_and_audio_are_decoded(long_clip, backend, monkeypatch, caplog):
    """A 60 s clip: the length rule keeps 6 of 180 frames and the audio encoder's 30 s, and only those are decoded;
    the warning says exactly that."""
    decoded = {}
    frames_fn = "_decord_frames" if backend == "decord" else "_av_frames"
    real_frames, real_audio = getattr(media_affectverse, frames_fn), media_affectverse._av_audio

    def spy_frames(path, indices, *args):
        decoded["frames"] = len(indices)
        return real_frames(path, indices, *args)

    def spy_audio(path, sr, max_samples):
        out = real_audio(path, sr, max_samples)
        decoded["audio"] = len(out)
        return out

    monkeypatch.setattr(media_affectverse, frames_fn, spy_frames)
    monkeypatch.setattr(media_affectverse, "_av_audio", spy_audio)
    proc = tiny_processor(video_backend=backend)
    with caplog.at_level(logging.WARNING):
        batch = proc([{"name": "long", "video": long_clip, "audio": "video", "subtitle": "Hi.", "answer": ANSWER}])
    kept = int(batch["video_grid_thw"][0, 0]) * 2
    assert decoded["frames"] == kept < 180 and len(batch["input_ids"][0]) <= proc.max_length
    assert decoded["audio"] == 30 * 16000 == int(batch["feature_attention_mask"].sum()) * 160
    assert f"kept {kept} of 180 frames" in caplog.text
    assert "the first 30.00 s of 60.00 s of audio" in caplog.text and "30 s" in caplog.text


def test_audio_over_30_s_is_reported_not_silently_cut(caplog):
    """Audio alone, well within max_length by token count after the 30 s cap: the cap is reported."""
    proc = tiny_processor(max_length=4096)
    wave_ = np.random.default_rng(0).normal(0, 0.1, 40 * 16000).astype(np.float32)
    with caplog.at_level(logging.WARNING):
        batch = proc([{"name": "forty", "audio": wave_, "subtitle": "Hi.", "answer": ANSWER}])
    assert int((batch["input_ids"][0] == TINY_IDS["<|AUDIO|>"]).sum()) == 750  # the encoder's 30 s
    assert "forty: kept the first 30.00 s of 40.00 s of audio" in caplog.text


@pytest.mark.parametrize("backend", BACKENDS)
def test_audio_prefix_decoding_stops_at_max_samples(long_clip, backend):
    audio = load_audio(long_clip, max_samples=16000, expected_duration=60.0)
    assert audio.shape == (16000,) and audio.dtype == np.float32
    full = load_audio(long_clip, expected_duration=60.0)
    assert full.shape == (60 * 16000,) and np.array_equal(full[:16000], audio)


def test_pyav_seeking_gives_the_frames_of_a_full_decode(long_clip, monkeypatch):
    seeked = load_video(long_clip, max_frames=6, backend="av")
    monkeypatch.setattr(media_affectverse, "SEEK_GAP", float("inf"))  # decode every frame from the start
    assert np.array_equal(seeked.frames, load_video(long_clip, max_frames=6, backend="av").frames)
    assert seeked.timestamps == pytest.approx([5, 15, 25, 35, 45, 55], abs=1 / 3)
    if HAS_DECORD:
        other = load_video(long_clip, max_frames=6, backend="decord")
        assert other.timestamps == seeked.timestamps
        assert np.abs(other.frames.astype(int) - seeked.frames.astype(int)).max() <= 8


@pytest.mark.parametrize("platform,machine,installs", [
    ("linux", "x86_64", True), ("win32", "AMD64", True), ("darwin", "arm64", False), ("darwin", "x86_64", False),
    ("linux", "aarch64", False),
])
def test_decord_is_required_only_where_it_has_a_wheel(platform, machine, installs):
    """decord 0.6.0's wheels: manylinux2010_x86_64 and win_amd64 only; elsewhere pip must not ask for it."""
    import sys
    from pathlib import Path

    from packaging.requirements import Requirement

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10 (supported): pip's own copy of tomli, the module tomllib came from (it skipped here before)
        from pip._vendor import tomli as tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    decord = [Requirement(r) for r in pyproject["project"]["dependencies"] if r.startswith("decord")]
    assert len(decord) == 1 and decord[0].marker.evaluate({"sys_platform": platform, "platform_machine": machine}) \
        is installs
    assert any(r.startswith("av") for r in pyproject["project"]["dependencies"])  # the fallback is always there


@pytest.mark.parametrize("backend", BACKENDS)
def test_planned_decoding_equals_decoding_everything_first(long_clip, backend):
    """Decoding only the kept frames and audio gives the batch that decoding the whole clip and then applying the
    length rule gives (the same frames, the same 30 s of audio)."""
    import torch

    proc = tiny_processor(video_backend=backend)
    planned = proc([{"video": long_clip, "audio": "video", "subtitle": "Hi.", "answer": ANSWER}])
    clip = load_video(long_clip, proc.fps, proc.frame_size, backend=backend)
    everything = proc([{"video": clip, "audio": load_audio(long_clip, expected_duration=clip.duration),
                        "subtitle": "Hi.", "answer": ANSWER}])
    assert clip.frames.shape[0] == 180
    for key in ("input_ids", "labels", "pixel_values_videos", "video_grid_thw", "video_second_per_grid",
                "input_features", "feature_attention_mask"):
        assert torch.equal(planned[key], everything[key]), key


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork (DataLoader workers fork here)")
def test_a_failed_decode_leaves_nothing_that_hangs_a_forked_worker(tmp_path):
    """Before: a truncated file's PyAV stream, kept alive by its error's traceback, held FFmpeg slice threads; the
    garbage collector of a forked DataLoader worker freed it and waited forever on the parent's threads."""
    import gc
    import os
    import time

    truncated = str(write_truncated_faststart(tmp_path / "truncated_faststart.mp4"))
    kept = []
    gc.disable()
    try:
        for _ in range(3):
            try:
                load_video(truncated, backend="av")
            except media_affectverse.MediaError as err:
                cycle = {"err": err}
                cycle["self"] = cycle  # as pytest and loggers keep errors: freed only by the collector
                kept.append(cycle)
        del kept
        pid = os.fork()
        if pid == 0:
            gc.collect()
            os._exit(0)
    finally:
        gc.enable()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung while collecting the parent's PyAV objects")
