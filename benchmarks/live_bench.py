"""What a live update costs as the stream grows, side by side in one run (issue 20).

    python -m benchmarks.live_bench [--presets tiny,bench --minutes 1,10,30 --repeats 3 --frame-size 112
                                     --window 60 --new-tokens 16]

Random weights (``tiny``: the tiny preset; ``bench``: benchmarks/model_bench.py's dimensions, hidden 512, 8 layers,
vocab 152064). A generated stream (noisy frames whose brightness drifts, a gliding tone with noise) is pushed 2 s
chunk by chunk into a :class:`~affectverse.inference.live.LiveSession` (4 labels, ``--new-tokens`` of free text,
``--window`` seconds); between the measured minutes the chunks only extend the caches (``read=False``). Prints, per
preset:

- **per-update cost** (encode the chunk + extend the caches + the reading) at each of ``--minutes``: the median (and
  the fastest) of ``--repeats`` consecutive updates ending there, and the ratio last minute / first minute (goal
  <= 1.2);
- **live vs offline at minute 5**: that update against ``predict`` recomputing the whole observed prefix
  (the processor's batch of the 5-minute clip in live's layout, then ``Engine.generate`` with the same labels and
  tokens; goal <= 0.1);
- **real-time factor**: update time / 2 s of stream;

and, for the tiny preset in a fresh process each, the **peak memory** (max RSS) of a stream as long as the last
minute against a 1-minute one (goal <= 1.2).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from affectverse.default.tiny import tiny_config, tiny_processor
from affectverse.inference.engine import Engine
from affectverse.inference.live import LiveSession
from benchmarks.model_bench import bench_config
from modeling_affectverse import AffectVerseForConditionalGeneration
from processing_affectverse import AffectVerseProcessor

logger = logging.getLogger("live_bench")
LABELS = ["happy", "sad", "angry", "neutral"]
CHUNK = 2.0


def chunk_media(n: int, size: int):
    """Chunk ``n`` of the generated stream: 6 frames `(6, size, size, 3)` at 3 fps and 2 s of 16 kHz audio."""
    rng = np.random.default_rng(n)
    level = 128 + 100 * np.sin(n / 20)
    frames = np.clip(rng.normal(level, 30, (6, size, size, 3)), 0, 255).astype(np.uint8)
    t = np.arange(32000) / 16000 + 2 * n
    audio = 0.2 * np.sin(2 * np.pi * (220 + 30 * np.sin(n / 15)) * t) + 0.02 * rng.standard_normal(32000)
    return frames, audio.astype(np.float32)


def build(preset: str, size: int):
    torch.manual_seed(0)
    cfg = tiny_config() if preset == "tiny" else bench_config(argparse.Namespace(hidden=512, layers=8, vocab=152064))
    model = AffectVerseForConditionalGeneration(cfg).eval()
    processor = AffectVerseProcessor.from_model_config(cfg, tiny_processor(), frame_size=size,
                                                       audio_layout="interleaved", audio_features="window")
    return model, processor


def session_of(model, processor, args):
    model.generation_config.min_new_tokens = args.new_tokens  # the same work at every reading
    return LiveSession(model, processor, LABELS, window_seconds=args.window, max_new_tokens=args.new_tokens)


def measure(preset: str, args) -> dict:
    model, processor = build(preset, args.frame_size)
    session = session_of(model, processor, args)
    marks = {round(m * 60 / CHUNK): m for m in args.minutes}  # chunk count at the end of each measured minute
    marks.setdefault(round(5 * 60 / CHUNK), 5)
    last = max(marks)
    updates = {m: [] for m in marks.values()}
    start = time.perf_counter()
    for n in range(last):
        frames, audio = chunk_media(n, args.frame_size)
        mark = next((m for end, m in marks.items() if end - args.repeats <= n < end), None)
        readings = session.push(frames=frames, audio=audio, read=mark is not None)
        if mark is not None:
            updates[mark].append(readings[0].latency)
    stream_seconds = time.perf_counter() - start
    cost = {m: statistics.median(t) for m, t in updates.items()}
    fastest = {m: min(t) for m, t in updates.items()}
    # predict on the whole 5-minute prefix: the processor's batch in live's layout, then the engine's generate
    offline_processor = AffectVerseProcessor.from_model_config(model.config, processor, max_length=10**7)
    engine = Engine(model, offline_processor, args.new_tokens, 1, 0, labels=LABELS)
    media = [chunk_media(n, args.frame_size) for n in range(round(5 * 60 / CHUNK))]
    sample = {"video": np.concatenate([f for f, _ in media]), "fps": 3.0,
              "audio": np.concatenate([a for _, a in media])}
    times = []
    with torch.no_grad():
        for _ in range(max(1, min(args.repeats, 2))):
            t0 = time.perf_counter()
            batch = offline_processor.prepare(sample, training=False)
            engine.generate(batch, LABELS)
            times.append(time.perf_counter() - t0)
    return {"cost": cost, "fastest": fastest, "offline_5min": statistics.median(times),
            "prompt_5min": int(batch["input_ids"].shape[1]),
            "stream_seconds": stream_seconds}


def child(minutes: float, args) -> int:
    """One stream of ``minutes`` (tiny preset) in this process; prints its peak RSS in MB."""
    model, processor = build("tiny", args.frame_size)
    session = session_of(model, processor, args)
    chunks = round(minutes * 60 / CHUNK)
    for n in range(chunks):
        frames, audio = chunk_media(n, args.frame_size)
        session.push(frames=frames, audio=audio, read=n % 30 == 29 or n == chunks - 1)
    print(json.dumps({"peak_mb": peak_mb()}))
    return 0


def peak_mb() -> float:
    """This process's peak RSS in MB: the kernel's high-water mark of its memory map (``VmHWM``, new at exec;
    ``ru_maxrss`` would carry the parent's peak into a child on Linux), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory(minutes: float, args) -> float:
    command = [sys.executable, "-m", "benchmarks.live_bench", "--child", str(minutes), "--frame-size",
               str(args.frame_size), "--window", str(args.window), "--new-tokens", str(args.new_tokens)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mb"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny,bench")
    parser.add_argument("--minutes", default="1,10,30")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frame-size", type=int, default=112)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--child", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("affectverse").setLevel(logging.ERROR)
    if args.child is not None:
        return child(args.child, args)
    args.minutes = [float(m) for m in args.minutes.split(",")]
    first, last = args.minutes[0], args.minutes[-1]
    if not args.no_memory:  # first, while this process is small (a child's fork starts from it)
        short, long = peak_memory(first, args), peak_memory(last, args)
    logger.info("live_bench: %d px frames at 3 fps + 16 kHz audio, %g s window, %d new tokens, %d labels, median of "
                "%d updates; torch threads %d", args.frame_size, args.window, args.new_tokens, len(LABELS),
                args.repeats, torch.get_num_threads())
    for preset in args.presets.split(","):
        r = measure(preset, args)
        cost = r["cost"]
        logger.info("[%s] stream of %g min pushed in %.0f s", preset, last, r["stream_seconds"])
        fastest = r["fastest"]
        for minute in args.minutes:
            logger.info("  update at minute %-4g %.3f s, fastest %.3f s  (real-time factor %.3f)", minute, cost[minute],
                        fastest[minute], cost[minute] / CHUNK)
        logger.info("  per-update cost minute %g / minute %g: %.2f (goal <= 1.2; fastest updates %.2f)", last, first,
                    cost[last] / cost[first], fastest[last] / fastest[first])
        logger.info("  minute 5: live update %.3f s vs predict on the 5-minute prefix (%d tokens) %.3f s: %.3f "
                    "(goal <= 0.1)", cost[5], r["prompt_5min"], r["offline_5min"], cost[5] / r["offline_5min"])
    if not args.no_memory:
        logger.info("[tiny] peak RSS, %g-minute stream %.0f MB vs %g-minute %.0f MB: %.2f (goal <= 1.2)", last, long,
                    first, short, long / short)
    return 0


if __name__ == "__main__":
    sys.exit(main())
