"""``affectverse demo MODEL``: a Gradio page with a Clip tab and a Live tab (issue 21).

- **Clip**: upload or record a clip, with an optional subtitle. One
  :func:`affectverse.inference.trajectory.trajectory` call (the engine of ``affectverse predict --trajectory``)
  reads it at every observation ratio: the answer, the label scores and the MAMA weights (Figure 3) of the whole
  clip, and each label's probability over the observed fraction (Figure 7).
- **Live**: webcam frames and microphone audio stream into a :class:`LiveStream`; every ``LIVE_EVERY`` seconds
  :func:`live_reading` turns what has arrived into a reading ``{"seconds", "answer", "label_scores"}``, shown as
  the current answer, the label scores and a running timeline.

Both tabs score the label set of the field above them (default: the model's trained labels when its folder records
them, else MER2023's six). One model call at a time, through gradio's queue. gradio is an optional extra
(``pip install "affectverse[demo]"``), imported when a page is built; everything else here runs without it.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path

import av
import numpy as np

from affectverse.default.clips import write_mp4, write_wav
from affectverse.evaluation.report import belief_attention_figure
from affectverse.inference.engine import MODALITIES, Engine, Setting, load_model, parse_labels, resolve_device
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
LIVE_FPS = 2  # 1 / STREAM_EVERY: the frame rate of a live window's clip
LIVE_WINDOW = 8.0  # seconds of stream each live reading reads
LIVE_EVERY = 2.0  # seconds between live readings
LIVE_MIN_SECONDS = 1.0  # stream needed before the first reading


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
    """What a live session has received: webcam frames and microphone audio with their arrival times (seconds since
    the stream's first chunk), kept for the last ``window`` seconds, and the readings made so far. Each list has
    one writer (the webcam's, the microphone's and the reading's gradio events), so no lock is needed."""

    def __init__(self, window: float = LIVE_WINDOW):
        self.window, self.start, self.sample_rate = window, None, None
        self.frames: list[tuple[float, np.ndarray]] = []
        self.audio: list[tuple[float, np.ndarray]] = []  # (arrival, mono float32 samples)
        self.readings: list[dict] = []

    def clock(self) -> float:
        now = time.monotonic()
        if self.start is None:
            self.start = now
        return now - self.start

    def add_frame(self, frame: np.ndarray):
        t = self.clock()
        frame = even(frame)
        self.frames = [(s, f) for s, f in self.frames if s >= t - self.window and f.shape == frame.shape]
        self.frames.append((t, frame))

    def add_audio(self, sample_rate: int, samples: np.ndarray):
        t = self.clock()
        if sample_rate != self.sample_rate:
            self.audio, self.sample_rate = [], sample_rate
        self.audio = [(s, a) for s, a in self.audio if s >= t - self.window - 1] + [(t, mono(samples))]

    @property
    def latest(self) -> float:
        """Arrival time of the newest chunk (0 before any)."""
        return max((chunks[-1][0] for chunks in (self.frames, self.audio) if chunks), default=0.0)

    def window_media(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(frames at ``LIVE_FPS``, audio samples) of the last ``window`` seconds, each None with less than
        ``LIVE_MIN_SECONDS`` of it; with both, the newest stretch of each of one duration (the loader checks that
        the tracks agree)."""
        start = self.latest - self.window
        frames = [(t, f) for t, f in self.frames if t >= start]
        frames = constant_rate(frames, LIVE_FPS) if frames and frames[-1][0] - frames[0][0] >= LIVE_MIN_SECONDS \
            else None
        chunks = [a for t, a in self.audio if t > start]  # a chunk's samples end when it arrives
        audio = np.concatenate(chunks)[-int(self.window * self.sample_rate):] if chunks else None
        if audio is not None and len(audio) < LIVE_MIN_SECONDS * self.sample_rate:
            audio = None
        if frames is not None and audio is not None:
            frames = frames[-int(min(len(frames) / LIVE_FPS, len(audio) / self.sample_rate) * LIVE_FPS):]
            audio = audio[-round(len(frames) / LIVE_FPS * self.sample_rate):]
        return frames, audio


def live_reading(engine: Engine, stream: LiveStream) -> dict | None:
    """A reading of the stream so far, ``{"seconds", "answer", "label_scores"}``, or None before
    ``LIVE_MIN_SECONDS`` of it have arrived.

    The seam between the Live tab and the model. For now the engine reads the last ``stream.window`` seconds as a
    clip (written to a temporary mp4 with PyAV, as ``affectverse predict`` would read it); with the live session of
    issue 20 this becomes its incremental update (docs/design.md, "Demo").
    """
    frames, audio = stream.window_media()
    if frames is None and audio is None:
        return None
    with tempfile.TemporaryDirectory(prefix="affectverse-live-") as folder:
        if frames is not None:
            row = {"name": "live", "video": f"{folder}/live.mp4", "audio": ""}
            write_mp4(Path(row["video"]), frames, LIVE_FPS, audio, stream.sample_rate or 16000)
            modality = "avt" if audio is not None else "vt"
        else:
            row, modality = {"name": "live", "video": "", "audio": f"{folder}/live.wav"}, "at"
            write_wav(Path(row["audio"]), audio, stream.sample_rate)
        [result] = engine.predict(Setting(MODALITIES[modality]), [row])
    if result["status"] != "ok":
        raise ClipProblem(f"live stream: {result['reason']}")
    return {"seconds": round(stream.latest, 2), "answer": result["answer"], "label_scores": result["label_scores"]}


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

    def on_frame(frame, stream):
        if frame is not None:
            stream.add_frame(frame)
        return gr.Timer(active=True) if frame is not None and len(stream.frames) == 1 else gr.skip()

    def on_audio(chunk, stream):
        if chunk is not None and np.size(chunk[1]):
            stream.add_audio(*chunk)
        return gr.Timer(active=True) if chunk is not None and len(stream.audio) == 1 else gr.skip()

    def on_tick(stream, labels_text):
        last = stream.readings[-1]["seconds"] if stream.readings else -1.0
        if stream.latest <= last:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        try:
            engine = Engine(net, processor, max_new_tokens, batch_size=1, num_workers=0,
                            labels=page_labels(labels_text))
            reading = live_reading(engine, stream)
        except ClipProblem as err:
            return gr.skip(), gr.skip(), gr.skip(), str(err)
        if reading is None:
            return gr.skip(), gr.skip(), gr.skip(), "Waiting for a second of webcam or microphone stream ..."
        stream.readings.append(reading)
        timeline = _scores_frame([(r["seconds"], r["label_scores"]) for r in stream.readings], "seconds")
        top = max(reading["label_scores"], key=reading["label_scores"].get)
        sources = " and ".join(name for name, chunks in (("webcam", stream.frames), ("microphone", stream.audio))
                               if chunks)
        status = (f"Reading {len(stream.readings)} at {reading['seconds']:.1f} s of stream: **{top}** (the last "
                  f"{stream.window:g} s of {sources}).")
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
                                              f"{LIVE_EVERY:g} s of the last {LIVE_WINDOW:g} s.",
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
