"""Peak memory of preprocessing one clip against its length: a 10 s clip and a 30-minute clip, side by side.

Writes two clips with PyAV (h264 ``--size`` px at ``--fps``, a mono 16 kHz AAC track: tiny frames keep the
30-minute file small and quick to write; the processor still decodes at 224x224 and 3 fps), then processes each one
in a fresh subprocess (``tiny_processor``, ``max_length`` 1024, video + its own audio track, one training sample) and
reports that process's peak RSS (``ru_maxrss``). Two modes:

- ``planned``: the processor (frames and audio budgeted from the metadata, only those decoded);
- ``decode-all``: what preprocessing did before: the whole clip decoded at 3 fps and all its audio loaded, then the
  processor on those arrays (the same length rule afterwards).

Goal (issue 11, item 5): peak for the 30-minute clip within 1.2x that of the 10 s clip in ``planned`` mode.

    python -m benchmarks.memory_bench --long-seconds 1800
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

ANSWER = "The character's emotional state is happy."

CHILD = r"""
import json, logging, resource, sys, time
logging.disable(logging.WARNING)
from affectverse.default.tiny import tiny_processor
from media_affectverse import load_audio, load_video
path, mode = sys.argv[1], sys.argv[2]
proc = tiny_processor()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
sample = {"video": path, "audio": "video", "subtitle": "Hello.", "answer": %r}
if mode == "decode-all":
    clip = load_video(path, proc.fps, proc.frame_size)
    sample = {**sample, "video": clip, "audio": load_audio(path, expected_duration=clip.duration)}
batch = proc([sample])
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "before_mb": before / 1024, "seconds": time.perf_counter() - t0,
                  "frames": int(batch["video_grid_thw"][0, 0]) * 2,
                  "audio_s": int(batch["feature_attention_mask"].sum()) * 160 / 16000,
                  "tokens": int(batch["input_ids"].shape[1])}))
""" % ANSWER


def write_clip(path: Path, seconds: float, fps: int, size: int, sample_rate: int = 16000) -> Path:
    """A clip of ``seconds`` written frame by frame (memory independent of its length): slowly changing colour
    with noise, a tone with noise."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "30"})
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        sound = container.add_stream("aac", rate=sample_rate, layout="mono")
        n_frames, chunk = int(seconds * fps), sample_rate  # one second of audio per chunk
        for i in range(n_frames):
            colour = (np.array([128, 64, 192]) + 60 * np.sin(i / fps / 7 + np.arange(3))).astype(np.uint8)
            frame = np.clip(colour + rng.integers(-8, 8, (size, size, 3)), 0, 255).astype(np.uint8)
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(video.encode())
        for start in range(0, int(seconds * sample_rate), chunk):
            t = (start + np.arange(chunk)) / sample_rate
            wave_ = (0.2 * np.sin(2 * np.pi * 262 * t) + rng.normal(0, 0.01, chunk)).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(wave_[None, :], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = sample_rate, start
            container.mux(sound.encode(frame))
        container.mux(sound.encode())
    return path


def measure(path: Path, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short-seconds", type=float, default=10.0)
    parser.add_argument("--long-seconds", type=float, default=1800.0)
    parser.add_argument("--fps", type=int, default=6, help="frame rate of the written clips")
    parser.add_argument("--size", type=int, default=64, help="frame size of the written clips (px)")
    parser.add_argument("--modes", nargs="+", default=["planned", "decode-all"], choices=["planned", "decode-all"])
    parser.add_argument("--out", default=None, help="folder for the clips (default: a temporary one)")
    args = parser.parse_args(argv)

    out = Path(args.out or tempfile.mkdtemp(prefix="affectverse_memory_"))
    out.mkdir(parents=True, exist_ok=True)
    clips = {}
    for seconds in (args.short_seconds, args.long_seconds):
        t0 = time.perf_counter()
        clips[seconds] = write_clip(out / f"clip_{seconds:g}s.mp4", seconds, args.fps, args.size)
        print(f"wrote {clips[seconds]} ({clips[seconds].stat().st_size / 1e6:.1f} MB) in "
              f"{time.perf_counter() - t0:.1f} s")
    for mode in args.modes:
        short, long_ = (measure(clips[s], mode) for s in (args.short_seconds, args.long_seconds))
        for seconds, r in ((args.short_seconds, short), (args.long_seconds, long_)):
            print(f"{mode:>10} {seconds:7g} s clip: peak RSS {r['peak_mb']:7.1f} MB (after imports "
                  f"{r['before_mb']:.1f} MB), {r['seconds']:.2f} s; kept {r['frames']} frames, {r['audio_s']:.2f} s "
                  f"of audio, {r['tokens']} tokens")
        print(f"{mode:>10} peak ratio {args.long_seconds:g} s / {args.short_seconds:g} s = "
              f"{long_['peak_mb'] / short['peak_mb']:.2f}x")


if __name__ == "__main__":
    main()
