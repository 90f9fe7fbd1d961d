"""Live input (issue 20): readings chunk by chunk equal ``predict`` on the clip cut there, sources through PyAV,
bounded windows, the ``affectverse live`` command."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from affectverse import cli
from affectverse.default.clips import write_mp4
from affectverse.inference.engine import Engine
from affectverse.inference.live import Event, LiveSession, Reading, StreamReader, live, parse_source
from media_affectverse import load_audio, load_video
from modeling_affectverse import AffectVerseForConditionalGeneration
from processing_affectverse import AffectVerseProcessor, window_features
from tests.helpers import ROOT, save_tiny_model, tiny_config, tiny_processor

LABELS = ["happy", "sad", "angry"]
SIZE, FPS, SR = 56, 3.0, 16000  # 56 px: the smallest frame the video processor keeps (12 video tokens per chunk)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return AffectVerseForConditionalGeneration(tiny_config()).eval()


@pytest.fixture(scope="module")
def processor():
    processor = tiny_processor()
    processor.frame_size = SIZE
    return processor


def media(seconds: float, seed: int = 0):
    """Frames at 3 fps `(T, 56, 56, 3)` and 16 kHz audio whose content changes over time."""
    rng = np.random.default_rng(seed)
    n = round(seconds * FPS)
    frames = (rng.integers(0, 60, (n, SIZE, SIZE, 3)) + np.linspace(0, 190, n)[:, None, None, None]).astype(np.uint8)
    t = np.arange(round(seconds * SR)) / SR
    audio = (0.3 * np.sin(2 * np.pi * (200 + 40 * t) * t) + 0.02 * rng.standard_normal(len(t))).astype(np.float32)
    return frames, audio


def offline(model, processor, frames, audio, max_new_tokens=8):
    """``predict``'s reading (Engine.generate) of a clip in live's processor settings, and its prompt logits."""
    settings = AffectVerseProcessor.from_model_config(model.config, processor, audio_layout="interleaved",
                                                      audio_features="window", max_length=8192)
    batch = settings.prepare({"video": frames, "fps": FPS, "audio": audio}, training=False)
    with first_logits(model) as logits:
        answers, _, scores = Engine(model, settings, max_new_tokens, 1, 0, labels=LABELS).generate(batch, LABELS)
    return answers[0], scores[0], logits[0]


class first_logits:
    """Collect every lm_head output while open (the first is the prompt's last position)."""

    def __init__(self, model):
        self.model, self.out = model, []

    def __enter__(self):
        self.hook = self.model.lm_head.register_forward_hook(lambda m, i, o: self.out.append(o[0, -1].detach()))
        return self.out

    def __exit__(self, *exc):
        self.hook.remove()


def assert_same_reading(reading: Reading, expected):
    answer, scores, _ = expected
    assert reading.answer == answer
    assert reading.label == max(scores, key=scores.get)
    for label in LABELS:
        assert reading.label_scores[label] == pytest.approx(scores[label], abs=2e-5)


@pytest.mark.parametrize("modality", ["avt", "vt", "at"])
def test_a_reading_after_k_chunks_equals_predict_on_the_clip_cut_there(model, processor, modality):
    frames, audio = media(6.0)
    session = LiveSession(model, processor, LABELS, modality, max_new_tokens=8)
    for k in range(1, 4):
        with first_logits(model) as logits:
            [reading] = session.push(frames=frames[6 * (k - 1):6 * k] if modality != "at" else None,
                                     audio=audio[32000 * (k - 1):32000 * k] if modality != "vt" else None)
        expected = offline(model, processor, frames[:6 * k] if modality != "at" else None,
                           audio[:32000 * k] if modality != "vt" else None)
        assert (reading.seconds, reading.chunk, reading.window_start) == (2.0 * k, k - 1, 0.0)
        assert_same_reading(reading, expected)
        torch.testing.assert_close(logits[0], expected[2], atol=1e-4, rtol=1e-4)
        assert (reading.belief_shift is None) == (k == 1)
        assert reading.latency > 0


@pytest.mark.parametrize("construction", ["none", "pooling"])
def test_other_belief_constructions_read_live_as_predict(processor, construction):
    """The stock thinker's path ("none": no beliefs) and pooled beliefs give the offline reading too."""
    torch.manual_seed(0)
    model = AffectVerseForConditionalGeneration(tiny_config(belief_construction=construction)).eval()
    settings = AffectVerseProcessor.from_model_config(model.config, processor)
    frames, audio = media(4.0, seed=6)
    readings = LiveSession(model, settings, LABELS, max_new_tokens=8).push(frames=frames, audio=audio)
    assert_same_reading(readings[-1], offline(model, settings, frames, audio))
    assert (readings[-1].belief_shift is None) == (construction == "none")


def test_a_push_read_last_reads_only_its_last_chunk_as_predict_there(model, processor):
    """A reader that fell behind (the demo's page) catches up with one reading: the newest chunk's."""
    frames, audio = media(6.0, seed=3)
    session = LiveSession(model, processor, LABELS, max_new_tokens=8)
    assert session.push(frames=frames[:3], audio=audio[:16000], read="last") == []  # half a chunk: nothing to read
    [reading] = session.push(frames=frames[3:], audio=audio[16000:], read="last")
    assert (reading.seconds, reading.chunk, reading.belief_shift) == (6.0, 2, None)  # the first reading of the session
    assert_same_reading(reading, offline(model, processor, frames, audio))
    with pytest.raises(ValueError, match="read='newest'"):
        session.push(frames=frames[:6], audio=audio[:32000], read="newest")


def test_a_window_reads_the_stretch_it_holds_as_predict_on_that_stretch(model, processor):
    frames, audio = media(10.0, seed=1)
    session = LiveSession(model, processor, LABELS, window_seconds=4.0, max_new_tokens=8)
    readings = session.push(frames=frames, audio=audio)
    assert [r.window_start for r in readings] == [0.0, 0.0, 2.0, 4.0, 6.0]  # the last 2 to 4 s
    assert len(session.contexts) == 2
    for r in readings[2:]:
        a, b = round(r.window_start * FPS), round(r.seconds * FPS)
        assert_same_reading(r, offline(model, processor, frames[a:b], audio[round(r.window_start * SR):
                                                                             round(r.seconds * SR)]))
    prefix = max(c.cache.get_seq_length() for c in session.contexts)
    assert prefix == len(session.layout.head) + 2 * len(session.layout.chunk)  # two chunks at most, nothing left over


def test_window_features_are_prefix_stable_where_whole_clip_features_are_not(processor):
    _, audio = media(6.0)
    audio[40000:] *= 20  # a louder last part raises the whole clip's log-mel floor
    whole, mask = window_features(processor.feature_extractor, audio)
    cut, _ = window_features(processor.feature_extractor, audio[:32000])
    assert whole.shape[-1] == int(mask.sum()) == 600
    torch.testing.assert_close(cut, whole[..., :200], atol=0, rtol=0)
    stock = lambda x: processor.feature_extractor(x, sampling_rate=SR, max_length=len(x), truncation=True,  # noqa: E731
                                                  padding="max_length", return_tensors="pt")["input_features"]
    assert not torch.allclose(stock(audio[:32000]), stock(audio)[..., :200], atol=1e-3)
    windowed = AffectVerseProcessor.from_model_config(tiny_config(), processor, audio_features="window")
    batch = windowed.prepare({"audio": audio}, training=False)
    torch.testing.assert_close(batch["input_features"], whole)


def test_a_layout_that_is_not_live_s_is_named_in_a_warning(model, processor, caplog):
    with caplog.at_level("WARNING"):
        LiveSession(model, processor, LABELS)
    assert "audio_layout='separate'" in caplog.text and "8.5 points" in caplog.text
    caplog.clear()
    trained = AffectVerseProcessor.from_model_config(model.config, processor, audio_layout="interleaved",
                                                     audio_features="window")
    with caplog.at_level("WARNING"):
        LiveSession(model, trained, LABELS)
        LiveSession(model, processor, LABELS, modality="vt")  # one modality: no layout to differ
    assert "audio_layout" not in caplog.text


def test_a_window_beyond_the_thinker_s_positions_is_refused(model, processor):
    with pytest.raises(ValueError, match="max_position_embeddings=4096"):
        LiveSession(model, processor, LABELS, window_seconds=600)


# ----------------------------------------------------------------------------------------------- sources
@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    """A 6 s h264/AAC mp4 at 6 fps of the test media."""
    frames, audio = media(6.0, seed=2)
    path = tmp_path_factory.mktemp("live") / "clip.mp4"
    write_mp4(path, np.repeat(frames, 2, axis=0), 6, audio, SR)
    return path


def test_a_file_source_decodes_what_predict_decodes_and_reads_the_same(model, processor, clip_file):
    reader = StreamReader(str(clip_file), FPS, SIZE, SR)
    items = list(reader)
    frames = np.concatenate([i.payload for i in items if i.kind == "video"])
    audio = np.concatenate([i.payload for i in items if i.kind == "audio"])
    assert items[-1].kind == "end" and items[-1].payload == "the source ended"
    clip = load_video(clip_file, FPS, SIZE, backend="av")
    wave = load_audio(clip_file, SR, expected_duration=6.0)
    np.testing.assert_array_equal(frames, clip.frames)
    np.testing.assert_array_equal(audio[:len(wave)], wave)
    out = list(live(model, processor, str(clip_file), LABELS, max_new_tokens=8))
    readings = [r for r in out if isinstance(r, Reading)]
    assert [r.seconds for r in readings] == [2.0, 4.0, 6.0] and out[-1].kind == "end"
    assert_same_reading(readings[1], offline(model, processor, clip.frames[:12], wave[:64000]))


def test_lavfi_sources_play_live_with_and_without_audio(model, processor):
    video_only = list(live(model, processor, "lavfi:testsrc=size=64x64:rate=6:duration=4", LABELS, "vt",
                           max_new_tokens=2))
    both = list(live(model, processor, "lavfi:testsrc=size=64x64:rate=6:duration=4[out0];"
                                       "sine=frequency=440:duration=4[out1]", LABELS, max_new_tokens=2))
    for items in (video_only, both):
        assert [type(i).__name__ for i in items] == ["Reading", "Reading", "Event"]
        assert items[-1].kind == "end" and items[1].seconds == 4.0
        assert sum(items[1].label_scores.values()) == pytest.approx(1, abs=1e-5)


def test_a_bad_source_is_one_line_naming_it():
    with pytest.raises(ValueError, match="no such file"):
        parse_source("missing.mp4")
    with pytest.raises(ValueError, match="'nosuchformat' is not an FFmpeg input format"):
        parse_source("nosuchformat:whatever")
    assert parse_source("rtsp://camera/stream") == ("rtsp://camera/stream", None)
    assert parse_source("lavfi:sine") == ("sine", "lavfi")
    with pytest.raises(ValueError, match="has no audio stream"):
        StreamReader("lavfi:testsrc=size=64x64:rate=6:duration=1", FPS, SIZE)


def write_fragmented_mp4(path, frames, audio):
    """A fragmented mp4 (index up front, a fragment per keyframe), as recorders write for live reading."""
    with av.open(str(path), "w", format="mp4", options={"movflags": "frag_keyframe+empty_moov+default_base_moof"}) \
            as container:
        video = container.add_stream("libx264", rate=6, options={"g": "6"})
        video.height, video.width, video.pix_fmt = frames.shape[1], frames.shape[2], "yuv420p"
        sound = container.add_stream("aac", rate=SR, layout="mono")
        for image in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(video.encode())
        chunk = av.AudioFrame.from_ndarray(audio[None], format="fltp", layout="mono")
        chunk.sample_rate, chunk.pts = SR, 0
        container.mux(sound.encode(chunk))
        container.mux(sound.encode())


@pytest.mark.parametrize("container", ["ts", "mkv", "mp4"])
def test_a_growing_recording_is_followed_and_its_stalls_and_end_reported(model, processor, tmp_path, container):
    frames, audio = media(6.0, seed=3)
    source = tmp_path / f"source.{container}"
    write = write_fragmented_mp4 if container == "mp4" else lambda p, f, a: write_mp4(p, f, 6, a, SR)
    write(source, np.repeat(frames, 2, axis=0), audio)
    data, target = source.read_bytes(), tmp_path / f"recording.{container}"
    target.write_bytes(data[: len(data) // 3])

    def record():  # a recorder still writing: the rest arrives later, after a pause longer than the stall timeout
        time.sleep(1.5)
        with open(target, "ab") as fh:
            fh.write(data[len(data) // 3:])

    writer = threading.Thread(target=record)
    writer.start()
    items = list(live(model, processor, str(target), LABELS, max_new_tokens=2, follow=True, stall_timeout=0.5,
                      give_up=2.0))
    writer.join()
    readings = [i for i in items if isinstance(i, Reading)]
    events = [i for i in items if isinstance(i, Event)]
    assert [r.seconds for r in readings] == [2.0, 4.0, 6.0]
    assert any(e.kind == "stall" for e in events) and events[-1].kind == "end"


def test_frames_a_source_skips_are_counted_as_dropped(model, processor, tmp_path):
    path = tmp_path / "gap.mkv"
    frames, audio = media(6.0, seed=4)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=6)
        stream.height = stream.width = SIZE
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, 6)
        for i, image in enumerate(np.repeat(frames, 2, axis=0)):
            if 14 <= i < 20:  # one second of the camera lost: frames 14-19 never arrive
                continue
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    readings = [r for r in live(model, processor, str(path), LABELS, "vt", max_new_tokens=2)
                if isinstance(r, Reading)]
    assert [r.seconds for r in readings] == [2.0, 4.0, 6.0]
    assert sum(r.dropped_frames for r in readings) == 3  # slots 7, 8, 9 (source frames 14, 16, 18) had no frame


# ----------------------------------------------------------------------------------------------- command
def test_the_live_command_writes_a_line_per_reading_and_a_figure(tmp_path, capsys):
    folder = tmp_path / "model"
    save_tiny_model(folder)
    out, figure = tmp_path / "live.jsonl", tmp_path / "live.png"
    source = "lavfi:testsrc=size=64x64:rate=6:duration=6[out0];sine=frequency=300:duration=6[out1]"
    args = ["live", str(folder), source, "--labels", "happy,sad", "--out", str(out), "--figure", str(figure),
            "--max-new-tokens", "2", "--dtype", "float32", "--device", "cpu"]
    assert cli.main(args) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["type"] == "header" and lines[0]["labels"] == ["happy", "sad"]
    assert [r["seconds"] for r in lines if r["type"] == "reading"] == [2.0, 4.0, 6.0]
    assert lines[-1] == {"type": "event", "kind": "end", "seconds": 6.0, "detail": "the source ended"}
    assert figure.stat().st_size > 0 and "3 readings" in capsys.readouterr().out
    before = out.read_bytes()
    assert cli.main(args) == 2  # an existing --out is never written into
    assert out.read_bytes() == before
    assert cli.main(["live", str(folder), "no-such.mp4", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.slow
def test_a_killed_live_run_leaves_only_whole_lines(tmp_path):
    """SIGKILL while a real-time stream is being read: every line written so far parses, the last one ends."""
    folder, out = tmp_path / "model", tmp_path / "live.jsonl"
    save_tiny_model(folder)
    source = "lavfi:testsrc=size=64x64:rate=6:duration=60[out0];sine=frequency=300:duration=60[out1]"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen([sys.executable, "-m", "affectverse", "live", str(folder), source, "--labels", "happy,sad",
                            "--out", str(out), "--realtime", "--max-new-tokens", "2"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not out.exists() or out.read_text().count('"reading"') < 2):
            time.sleep(0.2)
        run.send_signal(signal.SIGKILL)
    finally:
        run.wait()
    text = out.read_text()
    assert text.endswith("\n") and text.count('"reading"') >= 2
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["type"] == "header" and all(r["type"] == "reading" for r in lines[1:])


# ----------------------------------------------------------------------------------------------- long streams
@pytest.mark.slow
def test_a_thirty_minute_stream_keeps_its_caches_positions_and_past_bounded(model, processor):
    """30 minutes of generated 56 px frames and audio, pushed chunk by chunk with a 60 s window: the caches, the
    EWM's stored past and the positions stay within the window's size, and readings keep coming."""
    session = LiveSession(model, processor, LABELS, window_seconds=60, max_new_tokens=0)
    rng = np.random.default_rng(5)
    bound = len(session.layout.head) + 30 * len(session.layout.chunk)
    readings, largest = [], 0
    for n in range(900):  # 900 chunks of 2 s
        frames = rng.integers(0, 255, (6, SIZE, SIZE, 3), dtype=np.uint8)
        audio = (0.1 * rng.standard_normal(32000)).astype(np.float32)
        readings += session.push(frames=frames, audio=audio, read=n % 100 == 99)
        largest = max(largest, *(c.cache.get_seq_length() for c in session.contexts))
        assert len(session.contexts) <= 2
        assert all(len(c.video) <= 30 and c.top < 4096 for c in session.contexts)
    assert largest == bound
    assert [r.seconds for r in readings] == [200.0 * i for i in range(1, 10)]
    assert all(r.window_start >= r.seconds - 60 for r in readings)
    assert all(abs(sum(r.label_scores.values()) - 1) < 1e-4 for r in readings)
