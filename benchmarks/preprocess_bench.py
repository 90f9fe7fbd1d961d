"""Preprocessing throughput: generated clips through a torch DataLoader with ``AffectVerseCollator``.

Each clip is decoded (video at 3 fps, 224x224, with each ``--backends`` value: decord and PyAV; its 16 kHz wav with
PyAV) and processed (chat, stock Qwen2.5-Omni video processor and Whisper features, padding) inside the DataLoader
workers. Reports, per backend, clips/s in total and per worker for each ``--workers`` value (steady state: the first
batch of each worker is burn-in), then, in the main process, the time per clip decoding video, decoding audio and in
the processor (on the decoded media). Each measurement is the fastest of ``--repeats`` passes (other processes share
the cores). A backend that is not installed is reported as such.

    python -m benchmarks.preprocess_bench --n-clips 64 --workers 0 2 --backends decord av
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time

import torch

from affectverse.data.readers import load_manifest
from affectverse.default.clips import generate_clips
from affectverse.default.tiny import tiny_processor
from processing_affectverse import AffectVerseCollator, answer_from_label, load_audio, load_video


def loader_throughput(rows, collate, workers: int, batch_size: int) -> tuple[float, float]:
    """(steady-state clips/s, clips/s including worker start-up) of one pass over ``rows``."""
    loader = torch.utils.data.DataLoader(rows, batch_size=batch_size, num_workers=workers, collate_fn=collate)
    burn_in = max(1, workers)
    t0 = time.perf_counter()
    t_steady, n_steady = None, 0
    for i, batch in enumerate(loader):
        if i == burn_in - 1:
            t_steady = time.perf_counter()
        elif i >= burn_in:
            n_steady += batch["input_ids"].shape[0]
    end = time.perf_counter()
    return n_steady / (end - t_steady), len(rows) / (end - t0)


def time_share(rows, processor, batch_size: int, backend: str) -> dict[str, float]:
    """Seconds per clip decoding video, decoding audio, and in the processor given decoded media (main process)."""
    seconds = {"video": 0.0, "audio": 0.0, "processor": 0.0}
    for start in range(0, len(rows), batch_size):
        samples = []
        for row in rows[start:start + batch_size]:
            t0 = time.perf_counter()
            clip = load_video(row["video"], processor.fps, processor.frame_size, backend=backend)
            t1 = time.perf_counter()
            audio = load_audio(row["audio"], processor.feature_extractor.sampling_rate)
            seconds["video"] += t1 - t0
            seconds["audio"] += time.perf_counter() - t1
            samples.append({"video": clip, "audio": audio, "subtitle": row["subtitle"],
                            "answer": answer_from_label(row["label"])})
        t0 = time.perf_counter()
        processor(samples)
        seconds["processor"] += time.perf_counter() - t0
    return {k: v / len(rows) for k, v in seconds.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-clips", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0, help="clip length (clips.py writes 6 fps video)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--repeats", type=int, default=3, help="passes per measurement; the fastest is reported")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the main process (workers use 1)")
    parser.add_argument("--backends", nargs="+", default=["decord", "av"], choices=["decord", "av"],
                        help="video backends to compare (media_affectverse)")
    parser.add_argument("--out", default=None, help="clip folder (default: a temporary one)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    out = args.out or tempfile.mkdtemp(prefix="affectverse_clips_")
    rows = list(load_manifest(generate_clips(out, n_clips=args.n_clips, seed=0, seconds=args.seconds)))
    print(f"{len(rows)} clips of {args.seconds:.1f} s (224x224, 6 fps + 16 kHz wav), batch {args.batch_size}, "
          f"{len(os.sched_getaffinity(0))} CPU cores, torch {torch.get_num_threads()} threads")
    results = {}
    for backend in args.backends:
        if backend == "decord" and importlib.util.find_spec("decord") is None:
            print(f"[{backend}] not installed: skipped")
            continue
        results[backend] = bench_backend(rows, backend, args)
    if len(results) > 1:
        names = list(results)
        for workers in args.workers:
            ratio = " / ".join(f"{results[n][workers]:.1f}" for n in names)
            print(f"num_workers={workers}: clips/s {' / '.join(names)} = {ratio} "
                  f"({names[1]} / {names[0]} = {results[names[1]][workers] / results[names[0]][workers]:.2f}x)")


def bench_backend(rows, backend: str, args) -> dict[int, float]:
    """Print and return {workers: steady clips/s} for one video backend."""
    processor = tiny_processor(video_backend=backend)
    collate = AffectVerseCollator(processor, training=True)
    sample = collate(rows[:1])
    print(f"[{backend}] {sample['input_ids'].shape[1]} tokens, video grid {sample['video_grid_thw'][0].tolist()}")
    collate(rows[: args.batch_size])  # warm-up (page cache, lazy imports)
    steady_by_workers = {}
    for workers in args.workers:
        runs = [loader_throughput(rows, collate, workers, args.batch_size) for _ in range(args.repeats)]
        steady, overall = max(runs)
        steady_by_workers[workers] = steady
        print(f"[{backend}] num_workers={workers}: {steady:6.1f} clips/s total, {steady / max(1, workers):6.1f} "
              f"clips/s per worker (with start-up: {overall:.1f} clips/s)")
    share = min((time_share(rows, processor, args.batch_size, backend) for _ in range(args.repeats)),
                key=lambda s: sum(s.values()))
    total = sum(share.values())
    names = {"video": "video decoding", "audio": "audio decoding", "processor": "processor"}
    parts = " + ".join(f"{names[k]} {1000 * v:.1f} ms ({100 * v / total:.0f} %)" for k, v in share.items())
    print(f"[{backend}] main process, per clip: {1000 * total:.1f} ms = {parts}")
    return steady_by_workers


if __name__ == "__main__":
    main()
