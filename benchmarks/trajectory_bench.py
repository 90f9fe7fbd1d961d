"""What a 10-ratio trajectory costs against independent predictions, side by side in one run.

    python -m benchmarks.trajectory_bench [--seconds 4 --new-tokens 20 --repeats 3 --layouts interleaved,separate]

Tiny preset (random weights) on one generated clip with its audio track and a 4-label set. For each audio layout
it prints the best of ``--repeats`` rounds (rounds alternate between the measurements, burn-in first) of

- **one prediction**: ``Engine.predict`` at ratio 1.0 (decode, generate, label scores);
- **10 independent**: one such prediction at each ratio 0.1, ..., 1.0 (``trajectory(reuse=False)``);
- **trajectory**: ``trajectory(reuse=True)``: decoded once, the 10 ratios in one batch;

and the trajectory's time over 10 independent (goal <= 0.35) and over one prediction (goal <= 3.5).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.clips import generate_clips
from benchmarks.engine import MODALITIES, Engine, Setting
from benchmarks.tiny import tiny_config, tiny_processor
from benchmarks.trajectory import DEFAULT_RATIOS, trajectory
from modeling_affectverse import AffectVerseForConditionalGeneration
from processing_affectverse import AffectVerseProcessor

logger = logging.getLogger("trajectory_bench")
LABELS = ["happy", "sad", "angry", "neutral"]


def measure(layout: str, row: dict, args) -> dict:
    torch.manual_seed(0)
    cfg = tiny_config()
    model = AffectVerseForConditionalGeneration(cfg).eval()
    model.generation_config.min_new_tokens = args.new_tokens  # the same work per prediction everywhere
    processor = AffectVerseProcessor.from_model_config(cfg, tiny_processor(), max_length=4096, audio_layout=layout)
    engine = Engine(model, processor, args.new_tokens, batch_size=1, num_workers=0, labels=LABELS)
    runs = {
        "one prediction": lambda: engine.predict(Setting(MODALITIES["avt"]), [row]),
        "10 independent": lambda: trajectory(model, processor, [row], DEFAULT_RATIOS, LABELS,
                                             max_new_tokens=args.new_tokens, reuse=False),
        "trajectory": lambda: trajectory(model, processor, [row], DEFAULT_RATIOS, LABELS,
                                         max_new_tokens=args.new_tokens, reuse=True),
    }
    for fn in runs.values():  # burn-in
        fn()
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    best = {name: min(t) for name, t in times.items()}
    return {"layout": layout, **best, "vs_independent": best["trajectory"] / best["10 independent"],
            "vs_one": best["trajectory"] / best["one prediction"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layouts", default="interleaved,separate")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        generate_clips(Path(tmp), n_clips=1, seconds=args.seconds, val_fraction=0.0, test_fraction=1.0)
        clip = next((Path(tmp) / "video").glob("*.mp4"))
        row = {"name": str(clip), "video": str(clip), "audio": "", "subtitle": "Oh no, not again."}
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        logger.info("tiny preset, one %.0f s clip, %d ratios, %d labels, %d new tokens, torch threads %d, "
                    "load average %.2f on %d cores", args.seconds, len(DEFAULT_RATIOS), len(LABELS), args.new_tokens,
                    torch.get_num_threads(), load, os.cpu_count())
        for layout in args.layouts.split(","):
            r = measure(layout.strip(), row, args)
            logger.info("%-11s one %.3f s | 10 independent %.3f s | trajectory %.3f s | trajectory / 10 independent "
                        "%.2f (goal <= 0.35) | trajectory / one %.2f (goal <= 3.5)", r["layout"],
                        r["one prediction"], r["10 independent"], r["trajectory"], r["vs_independent"], r["vs_one"])


if __name__ == "__main__":
    main()
