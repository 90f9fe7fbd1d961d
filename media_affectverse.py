"""AffectVerse media loading: video frames with decord or PyAV, audio with PyAV, only what will be kept.

Remote code: imports only the standard library at module level; decord and PyAV are imported inside the loaders
(a checkpoint folder loads without either). Shapes: T frames, N audio samples.

Backends. ``decord`` (the default where it imports: it has wheels for Linux x86_64 and Windows x86_64 only) or
``av`` (PyAV, wheels everywhere); ``AFFECTVERSE_VIDEO_BACKEND=decord|av`` or the ``backend`` argument picks one.
Both give the same frame indices (index i = the i-th frame in presentation order, from PyAV's timestamps) and the
same :class:`MediaError` reasons. Pixels differ by rounding only: decord scales with FFmpeg's bicubic filter,
PyAV with swscale's bicubic too, so at 224 px from 224 px sources the frames are identical and resized frames
differ by a few grey levels (docs/design.md). Audio is always decoded with PyAV (a PCM wav with the standard
``wave`` module): decord's ``AudioReader`` decodes the whole file when it is constructed, so its memory grows with
the clip, while PyAV stops after the samples that will be kept.

Bounded memory (``max_frames``, ``max_samples``): :func:`probe` reads the container's metadata without decoding,
the processor works out from it how many frames and audio samples its length rule keeps, and the loaders decode
only those (decord seeks to each kept frame; PyAV seeks when the next kept frame is over ``SEEK_GAP`` s ahead).
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import wave
from typing import NamedTuple

VIDEO_BACKENDS = ("decord", "av")
AUDIO_SHORTFALL = (0.25, 0.10)  # decoded audio may fall short of the expected length by max(0.25 s, 10 %)
SEEK_GAP = 2.0  # PyAV seeks when the next kept frame is more than this many seconds ahead


class MediaError(ValueError):
    """A media file that cannot be used (missing, empty, unreadable, truncated, no audio track), naming the file."""

    def __init__(self, path, reason: str | None = None):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}" if reason is not None else str(path))

    def __reduce__(self):  # DataLoader workers pickle exceptions
        return type(self), (self.path, self.reason)


class VideoClip(NamedTuple):
    """Decoded video: ``frames`` `(T, size, size, 3)` uint8, sampling ``fps``, frame ``timestamps`` (s), file
    ``duration`` (s, before ``keep_ratio``)."""

    frames: object
    fps: float
    timestamps: list
    duration: float


class MediaInfo(NamedTuple):
    """What a file's metadata says, before any decoding: video ``n_frames`` and ``fps`` (0 for an audio file),
    ``duration`` (s) and ``audio_duration`` (s; None when there is no audio track)."""

    n_frames: int
    fps: float
    duration: float
    audio_duration: float | None


def video_backend(name: str | None = None) -> str:
    """The video backend to use: ``name``, else ``$AFFECTVERSE_VIDEO_BACKEND``, else decord where it imports."""
    name = name or os.environ.get("AFFECTVERSE_VIDEO_BACKEND") or "auto"
    if name == "auto":
        return "decord" if importlib.util.find_spec("decord") is not None else "av"
    if name not in VIDEO_BACKENDS:
        raise ValueError(f"video backend {name!r}; expected one of {VIDEO_BACKENDS} or 'auto'")
    return name


def _import(name: str):
    try:
        return __import__(name)
    except ImportError as err:
        hint = "pip install av" if name == "av" else "pip install decord (Linux/Windows x86_64), or use backend='av'"
        raise ImportError(f"AffectVerse media loading with {name} needs it installed: {hint}") from err


def decoder_reason(err: Exception) -> str:
    """The informative part of a decoder error (without decord's ``[time] source.cc:line:`` prefixes)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    text = re.sub(r"^\[Errno -?\d+\] |: '[^']*'$", "", text)  # PyAV's errno prefix and file name suffix
    return re.sub(r"^(\[[\d:]+\] \S+:\d+: )+", "", text)


def _check_file(path) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MediaError(path, "file not found")
    if os.path.getsize(path) == 0:
        raise MediaError(path, "empty file (0 bytes)")
    return path


def _decoder_errors(backend: str) -> tuple:
    """The exceptions a backend raises on unreadable input."""
    if backend == "decord":
        return (RuntimeError, _import("decord").DECORDError)
    return (_import("av").FFmpegError, RuntimeError, ValueError, IndexError)


def sample_indices(n_frames: int, src_fps: float, fps: float, keep_ratio: float = 1.0) -> tuple[list[int], float]:
    """Frame indices at ``fps`` (capped at ``src_fps``) over the first ``keep_ratio`` of ``n_frames``;
    (indices, fps)."""
    kept = max(1, math.ceil(n_frames * keep_ratio - 1e-9))
    rate = min(fps, src_fps)
    count = max(1, int(kept / src_fps * rate + 1e-6))
    return [min(kept - 1, int(k * src_fps / rate + 1e-6)) for k in range(count)], rate


def uniform_subset(count: int, keep: int) -> list[int]:
    """``keep`` positions spread uniformly over ``range(count)`` (the centre of each of ``keep`` equal parts)."""
    return [(2 * k + 1) * count // (2 * keep) for k in range(keep)] if keep < count else list(range(count))


def wav_duration(path: str) -> float | None:
    """Duration the header of a PCM wav declares (None when it is not one the ``wave`` module reads)."""
    try:
        with wave.open(path, "rb") as wav:
            frames, rate, width = wav.getnframes(), wav.getframerate(), wav.getsampwidth() * wav.getnchannels()
    except (wave.Error, EOFError, OSError):
        return None
    streamed = frames * width >= 0xFFFFFFF0  # a streaming writer's placeholder size, not a length
    return frames / rate if rate and not streamed else None


# ----------------------------------------------------------------------------- probing (no decoding)


def probe(path, backend: str | None = None) -> MediaInfo:
    """Frame count, fps and durations from ``path``'s metadata; nothing is decoded. Raises MediaError."""
    path = _check_file(path)
    if video_backend(backend) == "av":
        return _probe_av(path)
    info = _probe_decord(path)
    try:  # decord's metadata has no audio duration
        return info._replace(audio_duration=_probe_av(path).audio_duration)
    except MediaError:
        return info


def _probe_decord(path: str) -> MediaInfo:
    decord = _import("decord")
    try:
        reader = decord.VideoReader(path, width=16, height=16, num_threads=1)
        n_frames, fps = len(reader), float(reader.get_avg_fps())
    except _decoder_errors("decord") as err:
        raise MediaError(path, f"unreadable, truncated or corrupt video ({decoder_reason(err)})") from None
    if n_frames == 0 or fps <= 0:
        raise MediaError(path, "no video frames")
    return MediaInfo(n_frames, fps, n_frames / fps, None)


def stream_seconds(stream, container) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return container.duration / 1e6 if container.duration else None


def _probe_av(path: str, what: str = "video") -> MediaInfo:
    """Video frames, fps and duration, and the audio track's duration (None: no track), from PyAV's metadata;
    ``what="audio"`` accepts a file without video."""
    av = _import("av")
    try:
        with av.open(path) as container:
            audio = container.streams.audio[0] if container.streams.audio else None
            audio_seconds = None if audio is None else (stream_seconds(audio, container) or 0.0)
            if not container.streams.video and what == "audio":
                return MediaInfo(0, 0.0, audio_seconds or 0.0, audio_seconds)
            if not container.streams.video:
                raise MediaError(path, "no video track")
            video = container.streams.video[0]
            fps = float(video.average_rate or video.guessed_rate or 0)
            seconds = stream_seconds(video, container) or 0.0
            n_frames = video.frames or int(seconds * fps + 1e-3)  # no frame count in the header: never overestimate
    except MediaError:
        raise
    except _decoder_errors("av") as err:
        raise MediaError(path, f"unreadable, truncated or corrupt {what} ({decoder_reason(err)})") from None
    if n_frames == 0 or fps <= 0:
        raise MediaError(path, "no video frames")
    return MediaInfo(n_frames, fps, n_frames / fps, audio_seconds)


def audio_seconds(path) -> float | None:
    """Duration of an audio file's track from its wav header or metadata (None when unknown). Raises MediaError."""
    path = _check_file(path)
    declared = wav_duration(path) if path.lower().endswith(".wav") else None
    return declared if declared is not None else _probe_av(path, "audio").audio_duration


# ----------------------------------------------------------------------------- video


def load_video(path, fps: float = 3.0, size: int = 224, keep_ratio: float = 1.0, max_frames: int | None = None,
               backend: str | None = None, info: MediaInfo | None = None) -> VideoClip:
    """Decode ``path``: frames at ``fps`` from t = 0 over the first ``keep_ratio`` of the clip, resized to
    `(size, size)`; with ``max_frames``, only that many of them, spread uniformly (the sampling fps scales by the
    kept share). Only the returned frames are decoded. Returns a [`VideoClip`] (frames `(T, size, size, 3)` uint8).
    ``info``: the file's [`probe`] result, when already known. Raises MediaError."""
    backend = video_backend(backend)
    info = info or probe(path, backend)
    path = os.fspath(path)
    indices, rate = sample_indices(info.n_frames, info.fps, fps, keep_ratio)
    if max_frames is not None and max_frames < len(indices):
        rate, indices = rate * max_frames / len(indices), [indices[i] for i in uniform_subset(len(indices), max_frames)]
    try:
        frames = _decord_frames(path, indices, size) if backend == "decord" else \
            _av_frames(path, indices, info.fps, size)
    except _decoder_errors(backend) as err:
        raise MediaError(path, f"unreadable, truncated or corrupt video ({decoder_reason(err)})") from None
    return VideoClip(frames, rate, [i / info.fps for i in indices], info.duration)


def _decord_frames(path: str, indices: list[int], size: int):
    decord = _import("decord")
    # the reader lives only in this call: never share one across DataLoader workers
    reader = decord.VideoReader(path, width=size, height=size, num_threads=1)
    return reader.get_batch(indices).asnumpy()  # (T, size, size, 3)


def single_threaded(stream):
    """``stream`` set to decode without FFmpeg's threads. A decoded stream that outlives its file (held by an
    error's traceback until the garbage collector frees it) would otherwise be freed in a forked DataLoader worker,
    which then waits forever on the parent's decoding threads."""
    stream.codec_context.thread_type = "NONE"
    stream.codec_context.thread_count = 1
    return stream


def _av_frames(path: str, indices: list[int], src_fps: float, size: int):
    """Frames ``indices`` (sorted) of ``path`` as `(T, size, size, 3)` uint8, seeking over long gaps."""
    import numpy as np

    av = _import("av")
    out, want, current = [], 0, -1  # want: position in ``indices`` of the next frame; current: last decoded index
    with av.open(path) as container:
        stream = single_threaded(container.streams.video[0])
        base, tb = stream.start_time or 0, stream.time_base
        while want < len(indices):
            if indices[want] - current > SEEK_GAP * src_fps:  # jump to the keyframe before the next kept frame
                container.seek(base + int(indices[want] / src_fps / tb), stream=stream, backward=True)
            reached = False  # decode on from the seek point at least until the next kept frame
            for frame in container.decode(stream):
                current = round(float((frame.pts - base) * tb) * src_fps) if frame.pts is not None else current + 1
                while want < len(indices) and indices[want] <= current:
                    out.append(frame.to_ndarray(width=size, height=size, format="rgb24", interpolation="BILINEAR"))
                    want, reached = want + 1, True
                if want == len(indices) or reached and indices[want] - current > SEEK_GAP * src_fps:
                    break
            else:
                if want < len(indices):
                    raise RuntimeError(f"the stream ends at frame {current + 1}, frame {indices[want]} requested")
    return np.stack(out)


# ----------------------------------------------------------------------------- audio


def load_audio(path_or_video, sr: int = 16000, keep_ratio: float = 1.0, expected_duration: float | None = None,
               max_samples: int | None = None):
    """Decode the audio of a file (a wav, or a video's own track) with PyAV: mono float32 `(N,)` at ``sr``.

    Keeps the first ``keep_ratio`` of the track, and at most ``max_samples``: decoding stops there. A file may
    decode to less than its length without an error (a truncated file), so the decoded length is checked against
    what the file should give: the wav header's declared length, else ``expected_duration`` (e.g. the video's
    duration), else the track's metadata; a shortfall over ``max(0.25 s, 10 %)`` raises. Raises MediaError.
    """
    path = _check_file(path_or_video)
    declared = wav_duration(path) if path.lower().endswith(".wav") else None
    expected = declared if declared is not None else expected_duration
    if expected is None:
        expected = _probe_av(path, "audio").audio_duration
    want = None if expected is None else max(1, round(expected * keep_ratio * sr))
    if max_samples is not None:
        want = max_samples if want is None else min(want, max_samples)
    audio = _av_audio(path, sr, want)
    if expected is not None:
        needed = min(expected, (want or 0) / sr)  # only what is kept must be there
        seconds = len(audio) / sr
        if needed - seconds > max(AUDIO_SHORTFALL[0], AUDIO_SHORTFALL[1] * needed):
            raise MediaError(path, f"truncated audio: {seconds:.2f} s decoded, {expected:.2f} s expected")
    if want is None:
        want = max(1, round(len(audio) * keep_ratio))
    return audio[:want]


def _av_audio(path: str, sr: int, max_samples: int | None):
    """Mono float32 `(N,)` resampled to ``sr``, decoding stopped after ``max_samples``."""
    import numpy as np

    av = _import("av")
    chunks, total = [], 0
    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise MediaError(path, "no audio track")
            stream = single_threaded(container.streams.audio[0])
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)
            frames = (f for packet in container.demux(stream) for f in packet.decode())
            for frame in _chain(frames, [None]):  # None flushes the resampler
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    total += chunks[-1].shape[0]
                if max_samples is not None and total >= max_samples:
                    break
    except MediaError:
        raise
    except _decoder_errors("av") as err:
        if total == 0:
            raise MediaError(path, f"unreadable, truncated or corrupt audio ({decoder_reason(err)})") from None
        # a truncated file: keep what decoded, the length check of load_audio decides
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return audio[:max_samples].astype("float32", copy=False)


def _chain(*iterables):
    for it in iterables:
        yield from it


__all__ = ["MediaError", "MediaInfo", "VideoClip", "audio_seconds", "load_audio", "load_video", "probe",
           "sample_indices",
           "uniform_subset", "video_backend"]
