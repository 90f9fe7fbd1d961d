"""Deterministic generator of short, real audio-video clips whose affect unfolds in time.

The clips stand in for MER data in tests and in the embedded default dataset: every file is a genuine
h264/AAC ``.mp4`` plus a 16 kHz ``.wav``, decodable by PyAV and decord, small enough to train a tiny
model on a CPU, and built so that a model which anticipates where a clip is heading does better than one
that only looks at the opening.

Generative rule (for clip ``i`` of ``n``, with ``seed``):

1. **Plan** (``numpy.random.default_rng(seed)``): labels cycle through ``labels`` (balanced), then one
   permutation assigns the first ``round(n * test_fraction)`` clips to ``test``, the next
   ``round(n * val_fraction)`` to ``val`` and the rest to ``train``. Each clip independently opens with a
   *misleading cue* with probability ``misleading_fraction`` (default 0.3): its start state is the end
   state of another label drawn uniformly (a ``neutral`` cue looks like the baseline); otherwise it
   starts in the shared ``baseline`` state. The subtitle is drawn uniformly from ``SUBTITLES`` (16 neutral
   sentences), independently of the label, so text alone carries no label information.
2. **States.** Each label has an end state: an RGB colour and a tone (frequency in Hz, amplitude).
   ``LABEL_STATES`` fixes them for the MER words (happy: warm yellow, 523 Hz, loud; sad: dark blue,
   196 Hz, quiet; angry: red, 370 Hz, loud; neutral: grey, 262 Hz, medium; ...); any other word gets a
   colour of hue ``crc32(word) / 2**32`` and a pitch between 200 and 600 Hz from the same hash. The
   ``baseline`` start state is the neutral grey at 262 Hz (a neutral clip without a cue stays constant).
3. **Trajectory.** With ``t`` in [0, 1] the clip's relative time and a per-clip midpoint
   ``m ~ U(0.4, 0.6)``, the progress is ``p(t) = smoothstep((t - m + 0.3) / 0.6)``: the start state is
   held until ``t = m - 0.3``, drifts to the end state, and the end state is held from ``t = m + 0.3``.
   Colour, tone frequency and tone amplitude are all ``(1 - p) * start + p * end``. So the last 10-30 %
   of a clip shows its label plainly, the first 10-30 % shows only the cue (or the baseline), and the
   middle shows the direction of travel.
4. **Noise** (``numpy.random.default_rng([seed, i + 1])``): a per-clip colour offset ``N(0, 10)`` per
   channel; per-frame noise ``N(0, 6)`` on a 28x28 grid upsampled to 224x224 (blocks of 8 px survive
   h264 compression); per-clip tone pitch factor ``1 + N(0, 0.02)`` and loudness factor ``U(0.8, 1.2)``;
   white audio noise ``N(0, 0.01)``.
5. **Files.** ``video/clip_{i:05d}.mp4``: h264 yuv420p 224x224 at ``fps`` (default 6) for ``seconds``
   (default 3.0) with a mono AAC track at ``sample_rate`` (default 16 kHz); ``audio/clip_{i:05d}.wav``:
   the same waveform as 16-bit PCM mono. ``manifest.csv``: columns ``video, audio, subtitle, label,
   split, name, onset`` with paths relative to the manifest (``onset`` is ``baseline`` or the label whose
   cue opens the clip); it reads with :func:`affectverse.data.readers.load_manifest`.

Speed (one process, libx264 ``veryfast``): about 55 ms of CPU per default clip; 300 clips took 17 s of
CPU (20 s wall on a busy 2-core machine) and 52 MB. The bytes of every file depend only on the
arguments (x264 runs without macroblock-tree rate control, which is not reproducible at 224 px).

**Temporal-affect clips** (:func:`generate_temporal_clips`, ``--temporal``; the miniature ablation's data): one
affect level moves linearly from ``v0`` to ``v1`` over the whole clip and the label is the pair (trend, end):
rising and ending above 0.5 is ``happy``, falling but ending above 0.5 ``neutral``, rising but ending below 0.5
``worried``, falling to below 0.5 ``sad``. Starts overlap between classes, so a truncated clip shows the trend but
not the end, and the end has to be extrapolated.

CLI: ``affectverse clips --out DIR --n N --seed S [--temporal]``.
"""

from __future__ import annotations

import argparse
import colorsys
import csv
import logging
import time
import wave
import zlib
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from affectverse import ownership
from affectverse.options import positive_int, positive_number

logger = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("video", "audio", "subtitle", "label", "split", "name", "onset")

SUBTITLES = (
    "I went to the store this morning.",
    "The meeting is scheduled for three o'clock.",
    "We talked about it on the way home.",
    "She said the train would be late today.",
    "I think the report is on the table.",
    "He called me after lunch.",
    "Let's look at the numbers again.",
    "The weather changed in the afternoon.",
    "They moved into the new flat last week.",
    "I need to check my messages first.",
    "We can finish this tomorrow.",
    "The door was open when I arrived.",
    "My brother is coming over on Sunday.",
    "It took longer than I expected.",
    "You should read the second page.",
    "That is what he told everyone.",
)


@dataclass(frozen=True)
class State:
    """An affective state as rendered: frame colour (RGB, 0-255) and tone (Hz, amplitude 0-1)."""

    rgb: tuple[float, float, float]
    freq: float
    amp: float


LABEL_STATES = {
    "happy": State((235, 190, 60), 523.0, 0.50),
    "sad": State((45, 65, 150), 196.0, 0.15),
    "angry": State((205, 40, 40), 370.0, 0.60),
    "neutral": State((128, 128, 128), 262.0, 0.30),
    "worried": State((120, 90, 165), 294.0, 0.25),
    "surprise": State((60, 200, 205), 698.0, 0.45),
}
BASELINE = LABEL_STATES["neutral"]


def label_state(label: str) -> State:
    """The end state of ``label``: from ``LABEL_STATES``, else derived from ``crc32(label)``."""
    if label in LABEL_STATES:
        return LABEL_STATES[label]
    h = zlib.crc32(label.encode("utf-8"))
    rgb = colorsys.hsv_to_rgb(h / 2**32, 0.75, 0.85)
    return State(tuple(255 * c for c in rgb), 200.0 + 400.0 * ((h >> 8) % 1000) / 1000, 0.35)


def progress(t: np.ndarray, midpoint: float) -> np.ndarray:
    """Smoothstep from 0 at ``midpoint - 0.3`` to 1 at ``midpoint + 0.3``; ``t`` is relative time in [0, 1]."""
    x = np.clip((t - midpoint + 0.3) / 0.6, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def render_frames(start: State, end: State, n_frames: int, size: int, midpoint: float, rng) -> np.ndarray:
    """Frames drifting from ``start`` to ``end`` colour with noise. Returns uint8 (T, size, size, 3)."""
    t = (np.arange(n_frames) + 0.5) / n_frames
    return frames_along(start, end, progress(t, midpoint), size, rng)


def frames_along(start: State, end: State, p: np.ndarray, size: int, rng) -> np.ndarray:
    """One noisy frame per value of ``p`` (T,): the colour ``(1 - p) * start + p * end``; uint8 (T, size, size, 3)."""
    n_frames, p = len(p), np.asarray(p, dtype=float)[:, None]  # (T, 1)
    rgb = (1 - p) * np.array(start.rgb) + p * np.array(end.rgb) + rng.normal(0, 10, 3)  # (T, 3)
    cells = -(-size // 8)
    noise = rng.normal(0, 6, (n_frames, cells, cells, 3)).repeat(8, 1).repeat(8, 2)[:, :size, :size]
    return np.clip(rgb[:, None, None, :] + noise, 0, 255).astype(np.uint8)


def render_audio(start: State, end: State, n_samples: int, sample_rate: int, midpoint: float, rng) -> np.ndarray:
    """A tone gliding from ``start`` to ``end`` pitch and loudness, with noise. Returns float32 (n_samples,)."""
    t = (np.arange(n_samples) + 0.5) / n_samples
    return audio_along(start, end, progress(t, midpoint), sample_rate, rng)


def audio_along(start: State, end: State, p: np.ndarray, sample_rate: int, rng) -> np.ndarray:
    """A noisy tone whose pitch and loudness follow ``(1 - p) * start + p * end`` per sample; float32 (len(p),)."""
    n_samples = len(p)
    freq = ((1 - p) * start.freq + p * end.freq) * (1 + rng.normal(0, 0.02))
    amp = ((1 - p) * start.amp + p * end.amp) * rng.uniform(0.8, 1.2)
    phase = 2 * np.pi * np.cumsum(freq) / sample_rate
    wav = amp * np.sin(phase) + rng.normal(0, 0.01, n_samples)
    return np.clip(wav, -1, 1).astype(np.float32)


def write_mp4(path: Path, frames: np.ndarray, fps: int, audio: np.ndarray | None = None, sample_rate: int = 16000,
              faststart: bool = False):
    """Write ``frames`` (T, H, W, 3) uint8 as h264 yuv420p, plus a mono AAC track when ``audio`` is given;
    ``faststart`` puts the index before the data."""
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as container:
        # mbtree=0: with x264's macroblock-tree rate control, 224-px-wide frames encode differently from run
        # to run (measured: 256 px does not); without it the bytes depend only on the input.
        options = {"crf": "20", "preset": "veryfast", "x264-params": "mbtree=0"}
        video = container.add_stream("libx264", rate=fps, options=options)
        video.height, video.width = frames.shape[1:3]
        video.pix_fmt = "yuv420p"
        sound = None if audio is None else container.add_stream("aac", rate=sample_rate, layout="mono")
        for frame in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(video.encode())
        if sound is not None:
            chunk = av.AudioFrame.from_ndarray(audio[None, :], format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = sample_rate, 0
            container.mux(sound.encode(chunk))
            container.mux(sound.encode())


def write_wav(path: Path, audio: np.ndarray, sample_rate: int):
    """Write float ``audio`` in [-1, 1] as 16-bit PCM mono."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes((audio * 32767).astype("<i2").tobytes())


def plan_clips(n_clips: int, seed: int, labels, misleading_fraction: float, val_fraction: float, test_fraction: float):
    """The per-clip plan (label, split, onset label or None, subtitle), drawn from ``default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    clip_labels = [labels[i % len(labels)] for i in range(n_clips)]
    n_test, n_val = round(n_clips * test_fraction), round(n_clips * val_fraction)
    order = rng.permutation(n_clips)
    splits = ["train"] * n_clips
    for rank, i in enumerate(order[: n_test + n_val]):
        splits[i] = "test" if rank < n_test else "val"
    plan = []
    for i, label in enumerate(clip_labels):
        others = [x for x in labels if x != label]
        misleading = bool(others) and rng.random() < misleading_fraction
        onset = others[rng.integers(len(others))] if misleading else None
        plan.append((label, splits[i], onset, SUBTITLES[rng.integers(len(SUBTITLES))]))
    return plan


def generate_clips(
    out_dir,
    n_clips: int = 200,
    seed: int = 0,
    seconds: float = 3.0,
    fps: int = 6,
    size: int = 224,
    sample_rate: int = 16000,
    labels=("happy", "sad", "angry", "neutral"),
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    misleading_fraction: float = 0.3,
    overwrite: bool = False,
) -> Path:
    """Write ``n_clips`` clips and ``manifest.csv`` under ``out_dir``; return the manifest path.

    The output depends only on the arguments (see the module docstring for the rule). The folder is written
    whole (beside, then swapped in: :func:`affectverse.ownership.write_folder`): a new or empty ``out_dir``, or
    one generated earlier with ``overwrite`` (replaced entirely); any other folder is refused, untouched.

    Example:
        >>> manifest = generate_clips("/tmp/clips", n_clips=8, seed=0)
        >>> from affectverse.data.readers import load_manifest
        >>> ds = load_manifest(manifest, split="train")
    """
    def fill(out: Path):
        (out / "video").mkdir(parents=True, exist_ok=True)
        (out / "audio").mkdir(parents=True, exist_ok=True)
        n_frames, n_samples = round(seconds * fps), round(seconds * sample_rate)
        plan = plan_clips(n_clips, seed, tuple(labels), misleading_fraction, val_fraction, test_fraction)
        rows, t0 = [], time.perf_counter()
        for i, (label, split, onset, subtitle) in enumerate(plan):
            rng = np.random.default_rng([seed, i + 1])
            start = label_state(onset) if onset else BASELINE
            end, midpoint = label_state(label), rng.uniform(0.4, 0.6)
            frames = render_frames(start, end, n_frames, size, midpoint, rng)
            audio = render_audio(start, end, n_samples, sample_rate, midpoint, rng)
            name = f"clip_{i:05d}"
            write_mp4(out / "video" / f"{name}.mp4", frames, fps, audio, sample_rate)
            write_wav(out / "audio" / f"{name}.wav", audio, sample_rate)
            rows.append((f"video/{name}.mp4", f"audio/{name}.wav", subtitle, label, split, name, onset or "baseline"))
        manifest = out / "manifest.csv"
        with open(manifest, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(MANIFEST_COLUMNS)
            writer.writerows(rows)
        logger.info("wrote %d clips to %s in %.1f s", n_clips, out_dir, time.perf_counter() - t0)

    return ownership.write_folder(out_dir, "clips", fill, overwrite=overwrite) / "manifest.csv"


# --------------------------------------------------------------------------------- temporal-affect clips
# The label of a temporal-affect clip is a function of its trend and of where it ends (issue 13, the miniature
# ablation): (rising, ends high) happy, (falling, ends high) neutral, (rising, ends low) worried, (falling, ends
# low) sad. One affect level v(t) in [0, 1] drives colour, pitch and loudness together.
TEMPORAL_LABELS = {("up", "high"): "happy", ("down", "high"): "neutral", ("up", "low"): "worried",
                   ("down", "low"): "sad"}
LEVEL_LOW = State((45, 65, 150), 196.0, 0.15)  # v = 0: dark blue, low quiet tone
LEVEL_HIGH = State((235, 190, 60), 523.0, 0.50)  # v = 1: warm yellow, high loud tone


def temporal_levels(trend: str, end: str, rng, margin: float = 0.08) -> tuple[float, float]:
    """(v0, v1): start and end level of a clip of class (``trend``, ``end``), by rejection sampling.

    ``v0 ~ U(0.2, 0.8)`` and a change ``|v1 - v0| ~ U(0.15, 0.5)`` in the trend's direction, kept when the end lies
    on the requested side of 0.5 by at least ``margin`` and inside [0, 1]. Starts of all four classes overlap, so
    the opening alone does not give the label: the trend and the end do.
    """
    while True:
        v0, change = rng.uniform(0.2, 0.8), rng.uniform(0.15, 0.5)
        v1 = v0 + change if trend == "up" else v0 - change
        if 0.0 <= v1 <= 1.0 and (v1 >= 0.5 + margin if end == "high" else v1 <= 0.5 - margin):
            return v0, v1


def generate_temporal_clips(out_dir, n_clips: int = 160, seed: int = 0, seconds: float = 4.0, fps: int = 6,
                            size: int = 224, sample_rate: int = 16000, val_fraction: float = 0.0,
                            test_fraction: float = 0.3, overwrite: bool = False) -> Path:
    """Write ``n_clips`` temporal-affect clips and ``manifest.csv`` (the columns of :func:`generate_clips`, with
    ``onset`` holding ``v0->v1``); return the manifest path.

    Rule: classes cycle through ``TEMPORAL_LABELS`` (balanced) and splits are drawn as in :func:`plan_clips`; per
    clip (``default_rng([seed, i + 1])``) the levels come from :func:`temporal_levels` and the level moves
    linearly, ``v(t) = v0 + (v1 - v0) t`` over the whole clip, so every prefix shows the trend and how fast it goes,
    and only the last part shows the end. Colour, pitch and loudness are ``(1 - v) * LEVEL_LOW + v * LEVEL_HIGH``,
    with the noise of :func:`generate_clips`. A model that sees the first kappa of a clip sees the level at
    ``v(kappa)``: reading "where it is now" gives the wrong end class for clips that cross 0.5 later, while
    extrapolating the trend (imagining the future) gives the right one. Written whole, as :func:`generate_clips`.
    """
    def fill(out: Path):
        (out / "video").mkdir(parents=True, exist_ok=True)
        (out / "audio").mkdir(parents=True, exist_ok=True)
        classes = list(TEMPORAL_LABELS)
        labels = tuple(TEMPORAL_LABELS[c] for c in classes)
        n_frames, n_samples = round(seconds * fps), round(seconds * sample_rate)
        plan = plan_clips(n_clips, seed, labels, 0.0, val_fraction, test_fraction)
        rows = []
        for i, (label, split, _, subtitle) in enumerate(plan):
            rng = np.random.default_rng([seed, i + 1])
            v0, v1 = temporal_levels(*classes[labels.index(label)], rng)
            frames = frames_along(LEVEL_LOW, LEVEL_HIGH, v0 + (v1 - v0) * (np.arange(n_frames) + 0.5) / n_frames,
                                  size, rng)
            audio = audio_along(LEVEL_LOW, LEVEL_HIGH, v0 + (v1 - v0) * (np.arange(n_samples) + 0.5) / n_samples,
                                sample_rate, rng)
            name = f"clip_{i:05d}"
            write_mp4(out / "video" / f"{name}.mp4", frames, fps, audio, sample_rate)
            write_wav(out / "audio" / f"{name}.wav", audio, sample_rate)
            rows.append((f"video/{name}.mp4", f"audio/{name}.wav", subtitle, label, split, name, f"{v0:.3f}->{v1:.3f}"))
        manifest = out / "manifest.csv"
        with open(manifest, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(MANIFEST_COLUMNS)
            writer.writerows(rows)

    return ownership.write_folder(out_dir, "clips", fill, overwrite=overwrite) / "manifest.csv"


def write_bad_media(out_dir) -> dict[str, Path]:
    """Write deliberately broken media for tests; return ``{case: path}``.

    Cases: ``missing`` (a path that does not exist), ``empty`` (zero-byte mp4), ``truncated`` (the first 40 %
    of the bytes of ``good``), ``corrupt`` (random bytes named .mp4), ``no_audio`` (a valid mp4 without an
    audio track), ``truncated_wav`` (a wav cut mid-file: its header still announces the full length). The
    intact sources are included as ``good`` (mp4 with audio) and ``good_wav``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    start, end = LABEL_STATES["angry"], LABEL_STATES["neutral"]
    frames = render_frames(start, end, 12, 224, 0.5, rng)
    audio = render_audio(start, end, 32000, 16000, 0.5, rng)
    paths = {name: out / f"{name}.{ext}" for name, ext in [
        ("good", "mp4"), ("good_wav", "wav"), ("missing", "mp4"), ("empty", "mp4"), ("truncated", "mp4"),
        ("corrupt", "mp4"), ("no_audio", "mp4"), ("truncated_wav", "wav")]}
    write_mp4(paths["good"], frames, 6, audio, 16000)
    write_wav(paths["good_wav"], audio, 16000)
    paths["missing"].unlink(missing_ok=True)
    paths["empty"].write_bytes(b"")
    good = paths["good"].read_bytes()
    paths["truncated"].write_bytes(good[: int(0.4 * len(good))])
    paths["corrupt"].write_bytes(rng.integers(0, 256, 20000, dtype=np.uint8).tobytes())
    write_mp4(paths["no_audio"], frames, 6)
    wav = paths["good_wav"].read_bytes()
    paths["truncated_wav"].write_bytes(wav[: len(wav) // 2])
    return paths


def write_truncated_faststart(path, seed: int = 0) -> Path:
    """A faststart mp4 (index first) of random 224 px frames with audio, cut to its first 60 %: it opens and
    decodes partially, then fails mid-stream. Returns its path; the intact file is kept beside it."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    whole = path.with_name("faststart.mp4")
    write_mp4(whole, rng.integers(0, 255, (24, 224, 224, 3), dtype=np.uint8), 6,
              rng.normal(0, 0.1, 64000).astype(np.float32), 16000, faststart=True)
    data = whole.read_bytes()
    path.write_bytes(data[: int(0.6 * len(data))])
    return path


def main(argv=None):
    """CLI: ``affectverse clips --out DIR --n N --seed S``."""
    parser = argparse.ArgumentParser(prog="affectverse clips",
                                     description="Generate deterministic synthetic affective clips and a manifest.")
    parser.add_argument("--out", required=True, help="output folder (manifest.csv, video/, audio/): new or empty")
    parser.add_argument("--overwrite", action="store_true", help="replace clips generated earlier into --out")
    parser.add_argument("--n", type=positive_int, default=200, help="number of clips")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=positive_number, default=3.0)
    parser.add_argument("--fps", type=positive_int, default=6)
    parser.add_argument("--labels", default="happy,sad,angry,neutral", help="comma-separated label words")
    parser.add_argument("--misleading", type=float, default=0.3,
                        help="fraction of clips opening with another label's cue")
    parser.add_argument("--temporal", action="store_true",
                        help="temporal-affect clips instead: the label is the trend and the end (--labels ignored)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    if args.temporal:
        manifest = generate_temporal_clips(args.out, n_clips=args.n, seed=args.seed, seconds=args.seconds,
                                           fps=args.fps, overwrite=args.overwrite)
    else:
        manifest = generate_clips(args.out, n_clips=args.n, seed=args.seed, seconds=args.seconds, fps=args.fps,
                                  labels=tuple(args.labels.split(",")), misleading_fraction=args.misleading,
                                  overwrite=args.overwrite)
    print(f"{manifest} ({args.n} clips, {time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
