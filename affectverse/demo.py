"""``affectverse demo MODEL``: a Gradio page with a Clip tab and a Live tab (issue 21).

- **Clip**: upload or record a clip, with an optional subtitle. One
  :func:`affectverse.inference.trajectory.trajectory` call (the engine of ``affectverse predict --trajectory``)
  reads it at every observation ratio: the answer, the label scores and the MAMA weights (Figure 3) of the whole
  clip, and each label's probability over the observed fraction (Figure 7).
- **Live**: webcam frames and microphone audio stream into a :class:`LiveStream`; every ``LIVE_EVERY`` seconds
  :func:`live_readings` pushes what has arrived into the visitor's live session (:class:`LiveSession`, the engine of
  ``affectverse live``), which reads each completed 2 s chunk on top of its KV cache; its readings show as the
  current answer, the label scores and a running timeline.

Both tabs score the label set of the field above them (default: the model's trained labels when its folder records
them, else MER2023's six). One model call at a time, through gradio's queue. gradio is an optional extra
(``pip install "affectverse[demo]"``), imported when a page is built; everything else here runs without it.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import deque
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path

import av
import numpy as np

from affectverse.default.clips import write_mp4
from affectverse.evaluation.report import belief_attention_figure
from affectverse.inference.engine import load_model, parse_labels, resolve_device
from affectverse.inference.live import LiveSession
from affectverse.inference.trajectory import parse_ratios, trajectory
from affectverse.scoring.score import BENCHMARKS
from media_affectverse import MediaError, decoder_reason, probe, single_threaded

DEFAULT_LABELS = BENCHMARKS["mer2023"].label_set  # neutral, angry, happy, sad, worried, surprise
MAX_SECONDS = 30.0  # longest clip the Clip tab reads (Qwen2.5-Omni's audio encoder takes 30 s per item)
MAX_NEW_TOKENS = 64
MAX_FILE_SIZE = "200mb"  # gradio refuses larger uploads before they reach the model
QUEUE_SIZE = 16  # requests waiting for the model; more are refused with "queue full"
RECORD_FPS = 6  # frame rate of a browser recording re-encoded for the engine (:func:`transcode`)
STREAM_EVERY = 0.5  # seconds between the webcam frames / microphone chunks the browser sends
LIVE_WINDOW = 30.0  # a live reading sees the last 15 to 30 s (LiveSession's window: bounded memory per visitor)
LIVE_EVERY = 2.0  # seconds between the timer's looks at the stream (a reading per completed 2 s chunk)


class ClipProblem(ValueError):
    """A clip the demo does not read, with the message the page shows."""


def gradio_missing() -> str | None:
    """Why the page cannot be built here (gradio absent), or None."""
    try:
        metadata.version("gradio")
    except metadata.PackageNotFoundError:
        return 'gradio is not installed: pip install "affectverse[demo]"'
    return None


def trained_labels(model: str) -> list[str] | None:
    """The label set the model was trained on, when its folder records it: train.py's ``results.json`` (the label
    set of its generation check) or ``run_args.json`` (``--label_set``); None otherwise (a Hub id, an export)."""
    folder = Path(model)
    if (folder / "results.json").is_file():
        found = (json.loads((folder / "results.json").read_text()).get("generation") or {}).get("label_set")
        if found:
            return [str(label) for label in found]
    if (folder / "run_args.json").is_file():
        text = (json.loads((folder / "run_args.json").read_text()).get("data") or {}).get("label_set")
        if text:
            return parse_labels(text)
    return None


def page_labels(text: str) -> list[str]:
    """The label field's set; a :class:`ClipProblem` for an empty or repeated one."""
    try:
        return parse_labels(text or "")
    except ValueError:
        raise ClipProblem(f"Labels {text!r}: give a comma-separated list of distinct labels, e.g. "
                          f"{','.join(DEFAULT_LABELS)}.") from None


# ============================================================================================ clips
def constant_rate(timed_frames: Iterable[tuple[float, np.ndarray]], fps: float) -> np.ndarray:
    """`(T, H, W, 3)` frames at a constant ``fps`` from frames with their times (s, ascending): at each tick from the
    first frame's time to the last's, the latest frame shown by then. Frames are read one by one and only those
    kept are held, so a long recording at 30 fps costs the memory of its ``fps`` frames."""
    out, start, pending, last = [], None, None, None
    for t, frame in timed_frames:
        start = t if start is None else start
        while start + len(out) / fps < t - 1e-6:  # the ticks before this frame show the one before it
            out.append(pending)
        pending, last = frame, t
    if start is None:
        return np.empty((0, 0, 0, 3), np.uint8)
    while start + len(out) / fps <= last + 1e-6:
        out.append(pending)
    return np.stack(out)


def even(frame: np.ndarray) -> np.ndarray:
    """An RGB frame cropped to even height and width (h264's 4:2:0 needs them)."""
    frame = np.asarray(frame)[..., :3]
    return frame[: frame.shape[0] // 2 * 2, : frame.shape[1] // 2 * 2]


def transcode(path, out: Path, max_seconds: float, fps: int = RECORD_FPS, sample_rate: int = 16000) -> Path:
    """A browser recording (MediaRecorder's webm has no duration or frame count in its header, so the engine cannot
    plan its frames) re-encoded as an mp4: its frames at ``fps`` and its sound as mono AAC. Stops with a
    :class:`ClipProblem` past ``max_seconds``."""
    audio = []
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)

    def frames(container, streams):  # the video frames with their times; the sound goes to ``audio`` on the way
        seconds = 0.0
        for frame in container.decode(*streams):
            seconds = frame.time if frame.time is not None else seconds
            if seconds > max_seconds:
                raise ClipProblem(too_long(path, seconds, max_seconds, "more than "))
            if isinstance(frame, av.VideoFrame):
                yield seconds, even(frame.to_ndarray(format="rgb24"))
            else:
                audio.extend(chunk.to_ndarray()[0] for chunk in resampler.resample(frame))

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(path, "no video track")
            streams = [single_threaded(s) for s in (container.streams.video[:1] + container.streams.audio[:1])]
            video = constant_rate(frames(container, streams), fps)
            audio.extend(chunk.to_ndarray()[0] for chunk in resampler.resample(None))
    except av.FFmpegError as err:
        raise MediaError(path, f"unreadable, truncated or corrupt video ({decoder_reason(err)})") from None
    if not len(video):
        raise MediaError(path, "no video frames")
    write_mp4(out, video, fps, np.concatenate(audio) if audio else None, sample_rate)
    return out


def too_long(path, seconds: float, max_seconds: float, more: str = "") -> str:
    return (f"{Path(path).name} lasts {more}{seconds:.1f} s; this demo reads clips of at most {max_seconds:g} s. "
            "Cut it shorter and upload it again.")


def check_clip(path, max_seconds: float, folder: Path):
    """(the path the engine reads, its ``MediaInfo``) of an uploaded or recorded clip; a :class:`ClipProblem` with
    the page's message for a file that is not a video or lasts longer than ``max_seconds``. A clip without audio
    passes (``audio_duration`` None)."""
    if not path:
        raise ClipProblem("Upload or record a clip first.")
    name = Path(path).name
    try:
        try:
            info = probe(path, "av")
        except MediaError as err:
            if err.reason != "no video frames":  # MediaRecorder's webm: no frame count until decoded
                raise
            path = transcode(path, folder / f"{Path(path).stem}.mp4", max_seconds)
            info = probe(path, "av")
    except MediaError as err:
        raise ClipProblem(f"{name} is not a video this demo can read ({err.reason}). Upload a video file such as "
                          "an mp4 with its sound track.") from None
    if info.duration > max_seconds:
        raise ClipProblem(too_long(name, info.duration, max_seconds))
    return str(path), info


def read_clip(model, processor, path, subtitle: str = "", labels: Sequence[str] = DEFAULT_LABELS,
              ratios=None, max_seconds: float = MAX_SECONDS, max_new_tokens: int = MAX_NEW_TOKENS) -> dict:
    """The Clip tab's reading: ``{"name", "info", "modality", "full", "curve"}``: the checked clip, its modality
    setting (``"vt"`` without an audio track), the engine's result for the whole clip (answer, ``label_scores``,
    ``belief_attention`` with the MAMA ``weights``) and its results at every observation ratio (1.0 included)."""
    with tempfile.TemporaryDirectory(prefix="affectverse-demo-") as folder:
        path, info = check_clip(path, max_seconds, Path(folder))
        modality = "avt" if info.audio_duration else "vt"
        row = {"name": Path(path).name, "video": path, "audio": "", "subtitle": subtitle or ""}
        [curve] = trajectory(model, processor, [row], sorted({*parse_ratios(ratios), 1.0}), list(labels), modality,
                             max_new_tokens, explain="weights")
    full = curve[-1]
    if full["status"] != "ok":
        raise ClipProblem(f"{row['name']}: {full['reason'].removeprefix(path + ': ')}")
    return {"name": row["name"], "info": info, "modality": modality, "full": full, "curve": curve}


# ============================================================================================ live
def mono(samples: np.ndarray) -> np.ndarray:
    """Microphone samples (int or float, `(n,)` or `(n, channels)`) as float32 mono in [-1, 1]."""
    samples = np.asarray(samples)
    scale = float(np.iinfo(samples.dtype).max) if samples.dtype.kind in "iu" else 1.0
    samples = samples.astype(np.float32) / scale
    return samples.mean(1) if samples.ndim == 2 else samples


class LiveStream:
    """A visitor's live stream and the live session reading it (:class:`LiveSession`, as ``affectverse live``).

    The webcam and microphone events append to ``frames`` and ``audio``, stamped with their arrival (seconds since
    the first of them); the timer's event (:func:`live_readings`) takes them out, samples the frames on the
    session's clock (at its processor's fps, each slot showing the newest frame that had arrived by then), resamples
    the sound to 16 kHz and pushes both into the session. The queues are deques (append and popleft are thread-safe),
    and everything else has one writer, the timer's event."""

    def __init__(self):
        self.start = None
        self.frames: deque = deque()  # (arrival, (H, W, 3) uint8)
        self.audio: deque = deque()  # (arrival, sample rate, mono float32 samples)
        self.has_video = self.has_audio = False
        self.readings: list[dict] = []
        self.session: LiveSession | None = None
        self.key = None  # (modality, labels) the session reads
        self.offset = 0.0  # stream time of the session's start
        self.slot = 0  # the session's next video slot
        self.frame = None  # the newest frame taken (resized): it fills the slots until a newer one arrives
        self.audio_started = False  # whether the session has been pushed any sound yet
        self.resampler, self.rate = None, None

    def clock(self) -> float:
        now = time.monotonic()
        if self.start is None:
            self.start = now
        return now - self.start

    def add_frame(self, frame: np.ndarray):
        self.frames.append((self.clock(), np.ascontiguousarray(np.asarray(frame)[..., :3])))
        self.has_video = True

    def add_audio(self, sample_rate: int, samples: np.ndarray):
        self.audio.append((self.clock(), sample_rate, mono(samples)))
        self.has_audio = True

    @property
    def modality(self) -> str | None:
        """What the stream has brought so far: ``"avt"``, ``"vt"``, ``"at"`` or None."""
        return {(True, True): "avt", (True, False): "vt", (False, True): "at"}.get((self.has_video, self.has_audio))

    def begin(self, model, processor, modality: str, labels: Sequence[str], max_new_tokens: int):
        """A new session from now on (from the stream's start for the first one): a source that joins, a new label
        set, or a failed reading starts the reading again; media that arrived before are dropped."""
        self.offset = 0.0 if self.key is None else self.clock()  # key: None until the first session
        self.session = LiveSession(model, processor, labels, modality, window_seconds=LIVE_WINDOW,
                                   max_new_tokens=max_new_tokens)
        self.key = (modality, tuple(labels))
        self.slot, self.frame, self.audio_started, self.resampler, self.rate = 0, None, False, None, None

    def take_frames(self) -> np.ndarray | None:
        """`(F, S, S, 3)` frames for the session's slots up to the newest arrival, S its processor's frame size."""
        fps, size = self.session.processor.fps, self.session.processor.frame_size
        out = []
        while self.frames and self.offset + self.slot / fps <= self.frames[-1][0]:
            t = self.offset + self.slot / fps
            while self.frames and (self.frames[0][0] <= t or self.frame is None):  # slots before the first frame: it
                self.frame = resize(self.frames.popleft()[1], size)
            out.append(self.frame)
            self.slot += 1
        return np.stack(out) if out else None

    def take_audio(self) -> np.ndarray | None:
        """The microphone's samples since the last call at 16 kHz; the session's first ones are preceded by silence
        back to its start (or cut to it), so the sound stays in step with the frames."""
        sr, out = self.session.layout.sr, []
        while self.audio:
            arrival, rate, samples = self.audio.popleft()
            begins = arrival - len(samples) / rate
            if arrival <= self.offset:
                continue
            if rate != self.rate:
                self.resampler, self.rate = av.AudioResampler(format="flt", layout="mono", rate=sr), rate
            frame = av.AudioFrame.from_ndarray(samples[None], format="flt", layout="mono")
            frame.sample_rate = rate
            chunk = np.concatenate([f.to_ndarray().reshape(-1) for f in self.resampler.resample(frame)] or [[]])
            if not self.audio_started:
                gap = round((begins - self.offset) * sr)
                chunk = np.concatenate([np.zeros(gap, np.float32), chunk]) if gap > 0 else chunk[-gap:]
                self.audio_started = True
            out.append(chunk.astype(np.float32))
        return np.concatenate(out) if out else None


def resize(frame: np.ndarray, size: int) -> np.ndarray:
    """An RGB frame at ``size`` x ``size``, resized as ``load_video`` resizes a file's frames (PyAV, bilinear)."""
    return av.VideoFrame.from_ndarray(frame, format="rgb24").to_ndarray(width=size, height=size, format="rgb24",
                                                                         interpolation="BILINEAR")


def live_readings(model, processor, stream: LiveStream, labels: Sequence[str],
                  max_new_tokens: int = MAX_NEW_TOKENS) -> list[dict]:
    """The reading of the newest chunk completed since the last call, ``[{"seconds", "window_start", "answer",
    "label_scores"}]`` (stream times; ``[]`` when no chunk was completed): what has arrived goes into the stream's
    live session, which encodes each new 2 s chunk on top of its KV cache and reads the last (:meth:`LiveSession.push`
    with ``read="last"``: a page that fell behind the stream catches up with one reading; a reading equals
    ``predict`` on the stream cut there, tests/test_live.py)."""
    modality = stream.modality
    if modality is None:
        return []
    if stream.session is None or stream.key != (modality, tuple(labels)):
        stream.begin(model, processor, modality, labels, max_new_tokens)
    session = stream.session
    frames = stream.take_frames() if session.has_video else None
    audio = stream.take_audio() if session.has_audio else None
    return [{"seconds": round(stream.offset + r.seconds, 2), "window_start": round(stream.offset + r.window_start, 2),
             "answer": r.answer, "label_scores": r.label_scores}
            for r in session.push(frames=frames, audio=audio, read="last")]  # behind the stream: only the newest


# ============================================================================================ page
def _gradio():
    """gradio, imported when a page is built (an optional extra, slow to import)."""
    problem = gradio_missing()
    if problem:
        raise ImportError(problem)
    import gradio

    return gradio


def _scores_frame(rows: list[tuple[float, dict]], x: str):
    """A long table (``x``, label, probability) of label scores for gradio's LinePlot."""
    import pandas as pd

    return pd.DataFrame([(at, label, p) for at, scores in rows for label, p in scores.items()],
                        columns=[x, "label", "probability"])


def _attention_plot(result: dict, name: str):
    """Figure 3 of one clip (a closed matplotlib figure: gradio only saves it), or None without belief tokens."""
    from matplotlib import pyplot as plt

    weights = (result.get("belief_attention") or {}).get("weights")
    if not weights:
        return None
    fig = belief_attention_figure({"attention": weights, "n_video_memory": len(weights[0]) // 2, "name": name})
    plt.close(fig)
    return fig


def clip_outputs(reading: dict, seconds: float) -> tuple:
    """The Clip tab's outputs of a :func:`read_clip` reading: answer, label scores, trajectory, attention, status."""
    full, info, name = reading["full"], reading["info"], reading["name"]
    curve = [(r["keep_ratio"], r["label_scores"]) for r in reading["curve"] if r["status"] == "ok"]
    label = full["label"]
    sound = "video and audio" if reading["modality"] == "avt" else \
        "video only: **the clip has no audio track**, so the answer rests on the frames and the subtitle"
    attention = _attention_plot(full, name)
    status = (f"Read **{name}** ({info.duration:.1f} s, {sound}) at {len(curve)} observation ratios in "
              f"{seconds:.1f} s. Most probable label: **{label}** ({full['label_scores'][label]:.0%})."
              + ("" if attention is not None else " This model has no belief tokens to show."))
    return full["answer"], full["label_scores"], _scores_frame(curve, "observed"), attention, status


def build_demo(model: str, labels: Sequence[str] | None = None, *, device: str = "auto", dtype: str = "auto",
               trust_remote_code: bool = False, max_seconds: float = MAX_SECONDS, ratios=None,
               max_new_tokens: int = MAX_NEW_TOKENS):
    """The page (a ``gr.Blocks`` with its queue set) for ``model`` (a folder or a Hub id, loaded as
    ``affectverse predict`` loads it). ``labels``: the label field's default (None: :func:`trained_labels`, else
    ``DEFAULT_LABELS``); ``ratios``: the Clip tab's observation ratios (default 0.1, ..., 1.0)."""
    gr = _gradio()
    labels = list(labels or trained_labels(model) or DEFAULT_LABELS)
    parse_ratios(ratios)  # bad settings fail before the model loads
    if max_seconds <= 0 or max_new_tokens < 1:
        raise ValueError(f"max_seconds={max_seconds} must be positive and max_new_tokens={max_new_tokens} at least 1")
    net, processor = load_model(model, *resolve_device(device, dtype), trust_remote_code=trust_remote_code)

    def on_clip(path, subtitle, labels_text):
        start = time.perf_counter()
        try:
            reading = read_clip(net, processor, path, subtitle, page_labels(labels_text), ratios, max_seconds,
                                max_new_tokens)
        except ClipProblem as err:
            raise gr.Error(str(err), title="Cannot read this clip") from None
        if reading["modality"] == "vt":
            gr.Warning(f"{reading['name']} has no audio track: read from the video alone.")
        return clip_outputs(reading, time.perf_counter() - start)

    def on_frame(frame, stream):  # a source's first media start the timer (the queues are emptied as it reads)
        if frame is None:
            return gr.skip()
        first = not stream.has_video
        stream.add_frame(frame)
        return gr.Timer(active=True) if first else gr.skip()

    def on_audio(chunk, stream):
        if chunk is None or not np.size(chunk[1]):
            return gr.skip()
        first = not stream.has_audio
        stream.add_audio(*chunk)
        return gr.Timer(active=True) if first else gr.skip()

    def on_tick(stream, labels_text):
        try:
            new = live_readings(net, processor, stream, page_labels(labels_text), max_new_tokens)
        except (ClipProblem, ValueError, RuntimeError) as err:  # e.g. a label set edited into a bad one
            stream.session = None
            return gr.skip(), gr.skip(), gr.skip(), str(err)
        if not new:
            waiting = f"Waiting for the first {net.config.seconds_per_chunk:g} s of webcam or microphone stream ..."
            return gr.skip(), gr.skip(), gr.skip(), gr.skip() if stream.readings else waiting
        stream.readings.extend(new)
        reading = new[-1]
        timeline = _scores_frame([(r["seconds"], r["label_scores"]) for r in stream.readings], "seconds")
        top = max(reading["label_scores"], key=reading["label_scores"].get)
        sources = {"avt": "webcam and microphone", "vt": "webcam", "at": "microphone"}[stream.key[0]]
        status = (f"Reading {len(stream.readings)} at {reading['seconds']:.1f} s of stream: **{top}** ({sources}, "
                  f"read from {reading['window_start']:g} s on).")
        return reading["answer"], reading["label_scores"], timeline, status

    with gr.Blocks(title="AffectVerse demo", analytics_enabled=False) as demo:
        gr.Markdown(f"# AffectVerse\nEmotion from video, audio and text with `{model}` "
                    f"([paper](https://arxiv.org/abs/2605.19950)). Label scores are the model's probabilities of "
                    "answering each label of the set below.")
        labels_box = gr.Textbox(",".join(labels), label="Labels (comma-separated)", elem_id="labels")
        with gr.Tab("Clip", elem_id="tab-clip"):
            with gr.Row():
                with gr.Column():
                    video = gr.Video(sources=["upload", "webcam"], label=f"Clip (at most {max_seconds:g} s)",
                                     include_audio=True, height=320, elem_id="clip-video")
                    subtitle = gr.Textbox(label="Subtitle (optional)", elem_id="clip-subtitle")
                    run = gr.Button("Read the clip", variant="primary", elem_id="clip-run")
                with gr.Column():
                    answer = gr.Textbox(label="Answer", interactive=False, elem_id="clip-answer")
                    scores = gr.Label(label="Label scores (whole clip)", elem_id="clip-scores")
                    status = gr.Markdown(elem_id="clip-status")
            with gr.Row():
                curve = gr.LinePlot(x="observed", y="probability", color="label", x_lim=[0, 1], y_lim=[0, 1],
                                    label="Label scores over the observed fraction of the clip",
                                    elem_id="clip-trajectory")
                attention = gr.Plot(label="What the belief tokens attend to (MAMA weights, Figure 3)",
                                    elem_id="clip-attention")
            run.click(on_clip, [video, subtitle, labels_box], [answer, scores, curve, attention, status],
                      api_name="read_clip", concurrency_id="model", concurrency_limit=1)
        with gr.Tab("Live", elem_id="tab-live"):
            stream = gr.State(LiveStream())  # deep-copied for each visitor
            timer = gr.Timer(LIVE_EVERY, active=False)
            with gr.Row():
                with gr.Column():
                    camera = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Webcam", height=320,
                                      elem_id="live-camera")
                    microphone = gr.Audio(sources=["microphone"], streaming=True, type="numpy", label="Microphone",
                                          elem_id="live-microphone")
                with gr.Column():
                    live_answer = gr.Textbox(label="Current answer", interactive=False, elem_id="live-answer")
                    live_scores = gr.Label(label="Current label scores", elem_id="live-scores")
                    live_status = gr.Markdown(f"Start the webcam and/or the microphone: a reading every "
                                              f"{net.config.seconds_per_chunk:g} s of stream, of at most its last "
                                              f"{LIVE_WINDOW:g} s.",
                                              elem_id="live-status")
            timeline = gr.LinePlot(x="seconds", y="probability", color="label", y_lim=[0, 1],
                                   label="Label scores over the stream", elem_id="live-timeline")
            camera.stream(on_frame, [camera, stream], [timer], stream_every=STREAM_EVERY, time_limit=None,
                          api_name=False, concurrency_limit=None, show_progress="hidden")
            microphone.stream(on_audio, [microphone, stream], [timer], stream_every=STREAM_EVERY, time_limit=None,
                              api_name=False, concurrency_limit=None, show_progress="hidden")
            timer.tick(on_tick, [stream, labels_box], [live_answer, live_scores, timeline, live_status],
                       api_name=False, concurrency_id="model", concurrency_limit=1, show_progress="hidden")
    return demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)


def launch(demo, host: str | None = None, port: int | None = None, **kwargs):
    """Serve ``demo`` (what ``affectverse demo`` and an exported Space's ``app.py`` run) on ``host:port`` (None:
    gradio's ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``, else 127.0.0.1:7860); ``kwargs`` go to
    ``gr.Blocks.launch``. The theme uses the system's fonts, so the page loads nothing from the internet."""
    gr = _gradio()
    system = ["ui-sans-serif", "system-ui", "sans-serif"]
    theme = gr.themes.Default(font=system, font_mono=["ui-monospace", "monospace"])
    return demo.launch(server_name=host, server_port=port, max_file_size=MAX_FILE_SIZE, theme=theme, **kwargs)
