"""The synthetic clip generator: determinism, decodable media, a label signal that unfolds in time, bad media."""

import csv
import wave

import av
import numpy as np
import pytest

from affectverse.data.readers import decode_label, load_manifest
from affectverse.default.clips import LABEL_STATES, generate_clips, main, write_bad_media

N = 8  # labels cycle: clips i and i + 4 share a label


def frame_means(path) -> np.ndarray:
    """Mean RGB of each decoded frame, (T, 3)."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24").reshape(-1, 3).mean(0) for f in container.decode(video=0)])


def read_manifest(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Two runs with seed 0, one with seed 1, and one without misleading openings."""
    out = {key: tmp_path_factory.mktemp(key) for key in ("a", "b", "c", "plain")}
    generate_clips(out["a"], n_clips=N, seed=0)
    generate_clips(out["b"], n_clips=N, seed=0)
    generate_clips(out["c"], n_clips=N, seed=1)
    generate_clips(out["plain"], n_clips=N, seed=0, misleading_fraction=0.0)
    return out


def test_deterministic_by_seed(clips):
    a, b, c = (clips[k] / "manifest.csv" for k in "abc")
    assert a.read_bytes() == b.read_bytes()
    for row in read_manifest(a):
        np.testing.assert_array_equal(frame_means(clips["a"] / row["video"]), frame_means(clips["b"] / row["video"]))
        for column in ("video", "audio"):
            assert (clips["a"] / row[column]).read_bytes() == (clips["b"] / row[column]).read_bytes()
    first = read_manifest(a)[0]["video"]
    assert not np.allclose(frame_means(clips["a"] / first), frame_means(clips["c"] / first))


def test_manifest_columns_splits_and_reader(clips):
    rows = read_manifest(clips["a"] / "manifest.csv")
    assert list(rows[0]) == ["video", "audio", "subtitle", "label", "split", "name", "onset"]
    assert [r["split"] for r in rows].count("test") == round(N * 0.2)
    assert [r["split"] for r in rows].count("val") == round(N * 0.1)
    assert [r["label"] for r in rows] == ["happy", "sad", "angry", "neutral"] * 2
    assert all(not r["video"].startswith("/") for r in rows)
    ds = load_manifest(clips["a"] / "manifest.csv", check_media=True)
    assert len(ds) == N and decode_label(ds[0]["label"]) == "happy" and ds[0]["video"].startswith(str(clips["a"]))


def test_clips_decode_with_expected_size_duration_and_audio(clips):
    row = read_manifest(clips["a"] / "manifest.csv")[0]
    with av.open(str(clips["a"] / row["video"])) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.name, video.width, video.height) == ("h264", 224, 224)
        assert video.codec_context.pix_fmt == "yuv420p"
        assert (audio.codec_context.name, audio.sample_rate, audio.channels) == ("aac", 16000, 1)
        assert container.duration / 1e6 == pytest.approx(3.0, abs=0.1)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 18 and frames[0].shape == (224, 224, 3)
    with wave.open(str(clips["a"] / row["audio"])) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth(), wav.getnframes()) == (16000, 1, 2, 48000)


def test_label_signal_unfolds_in_time(clips):
    rows = read_manifest(clips["plain"] / "manifest.csv")
    end = {r["label"]: frame_means(clips["plain"] / r["video"])[-1] for r in rows[:4]}
    for label, rgb in end.items():  # the last frame shows the label's colour
        assert np.abs(rgb - LABEL_STATES[label].rgb).max() < 40, label
    labels = list(end)
    assert min(np.abs(end[x] - end[y]).max() for x in labels for y in labels if x != y) > 60
    for r in rows:  # without a misleading cue every clip opens in the neutral baseline
        assert r["onset"] == "baseline"
        assert np.abs(frame_means(clips["plain"] / r["video"])[0] - LABEL_STATES["neutral"].rgb).max() < 40


def test_misleading_cue_opens_with_another_label(clips):
    rows = read_manifest(clips["c"] / "manifest.csv")
    cued = [r for r in rows if r["onset"] != "baseline"]
    assert cued, "seed 1 has no misleading clip among 8"
    for r in cued:
        means = frame_means(clips["c"] / r["video"])
        assert r["onset"] != r["label"]
        assert np.abs(means[0] - LABEL_STATES[r["onset"]].rgb).max() < 40
        assert np.abs(means[-1] - LABEL_STATES[r["label"]].rgb).max() < 40


def test_cli(tmp_path, capsys):
    main(["--out", str(tmp_path), "--n", "2", "--seed", "3", "--labels", "calm,tense"])
    assert "manifest.csv" in capsys.readouterr().out
    assert [r["label"] for r in read_manifest(tmp_path / "manifest.csv")] == ["calm", "tense"]


def test_bad_media(tmp_path):
    bad = write_bad_media(tmp_path)
    assert not bad["missing"].exists()
    assert bad["empty"].stat().st_size == 0
    assert bad["truncated"].stat().st_size == int(0.4 * bad["good"].stat().st_size)
    with pytest.raises(av.FFmpegError):
        av.open(str(bad["corrupt"]))
    with av.open(str(bad["no_audio"])) as container:
        assert len(container.streams.video) == 1 and len(container.streams.audio) == 0
    with av.open(str(bad["good"])) as container:
        assert len(container.streams.audio) == 1
    with wave.open(str(bad["truncated_wav"])) as wav:  # the header promises more frames than the file holds
        assert len(wav.readframes(wav.getnframes())) < 2 * wav.getnframes()


def test_temporal_clips_label_is_the_trend_and_the_end(tmp_path):
    """The level (frame brightness along the LOW->HIGH colour axis) rises or falls as the label says, ends on the
    label's side of 0.5, and the openings of different classes overlap."""
    from affectverse.default.clips import LEVEL_HIGH, LEVEL_LOW, TEMPORAL_LABELS, generate_temporal_clips

    manifest = generate_temporal_clips(tmp_path, n_clips=16, seed=3, seconds=2.0)
    rows = read_manifest(manifest)
    assert sorted({r["label"] for r in rows}) == sorted(TEMPORAL_LABELS.values())
    low, high = np.array(LEVEL_LOW.rgb), np.array(LEVEL_HIGH.rgb)
    by_label, starts = {v: k for k, v in TEMPORAL_LABELS.items()}, {}
    for row in rows:
        means = frame_means(tmp_path / row["video"])
        level = (means - low) @ (high - low) / ((high - low) @ (high - low))  # (T,) projection on the level axis
        trend, end = by_label[row["label"]]
        assert (level[-1] > level[0]) == (trend == "up"), row
        assert (level[-1] > 0.5) == (end == "high"), row
        starts.setdefault(row["label"], []).append(level[0])
    ranges = [(min(v), max(v)) for v in starts.values()]
    overlapping = sum(lo < hi2 and lo2 < hi for (lo, hi) in ranges for (lo2, hi2) in ranges) - len(ranges)
    assert overlapping > 0  # the opening alone does not separate the classes
    assert manifest.read_bytes() == generate_temporal_clips(tmp_path / "again", n_clips=16, seed=3,
                                                            seconds=2.0).read_bytes()
