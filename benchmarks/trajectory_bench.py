"""What a 10-ratio trajectory costs against independent predictions, side by side in one run.

    python -m benchmarks.trajectory_bench [--seconds 4 --new-tokens 20 --repeats 3 --layouts interleaved,separate]

Tiny preset (random weights) on one generated clip with its audio track and a 4-label set. For each audio layout
it prints the best of ``--repeats`` rounds (rounds alternate between the measurements, burn-in first) of

- **one prediction**: ``Engine.predict`` at ratio 1.0 (decode, generate, label scores);
- **10 independent**: one such prediction at each ratio 0.1, ..., 1.0 (``trajectory(reuse=False)``);
- **trajectory**: ``trajectory(reuse=True)``: decoded once, the 10 ratios in one batch;

and the trajectory's time over 10 independent (goal <= 0.35) and over one prediction (goal <= 3.5); then how many
of the 10 prompts' tokens equal the ratio-1.0 prompt's (the most a cross-ratio KV-cache reuse could skip; that reuse
is not implemented, see docs/design.md).
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
from benchmarks.trajectory import DEFAULT_RATIOS, decode_trajectory, trajectory
from modeling_affectverse import AffectVerseForConditionalGeneration
from processing_affectverse import AffectVerseProcessor

logger = logging.getLogger("trajectory_bench")
LABELS = ["happy", "sad", "angry", "neutral"]


@torch.no_grad()
def shared_prefix(model, processor, row: dict) -> tuple[int, int]:
    """(prompt tokens of the 10 ratios, tokens of the 9 shorter ratios whose id, embedding after the media
    scatter (within 1e-5) and TMRoPE position equal those of the ratio-1.0 prompt at the same index, with every
    token before them): what a cross-ratio KV-cache reuse could skip at most. Uses the model's private
    ``_embed`` / ``_positions`` (a measurement, not a code path)."""
    settings = [Setting(MODALITIES["avt"], r) for r in DEFAULT_RATIOS]
    batch, _ = decode_trajectory(processor, settings, row)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    embeds, _ = model._embed(ids, batch["input_features"], batch["feature_attention_mask"], None, None,
                             batch.get("pixel_values_videos"), batch.get("video_grid_thw"))
    positions, _ = model._positions(ids, mask, None, batch.get("video_grid_thw"), batch["feature_attention_mask"],
                                    batch["use_audio_in_video"], batch.get("video_second_per_grid"))
    rows = []
    for i in range(ids.shape[0]):  # left padding: the real tokens are the last n of each row
        n = int(mask[i].sum())
        rows.append((ids[i, -n:], embeds[i, -n:], positions[:, i, -n:]))
    full, total, shared = rows[-1], sum(len(r[0]) for r in rows), 0
    for r in rows[:-1]:
        m = min(len(r[0]), len(full[0]))
        close = ((r[1][:m] - full[1][:m]).abs() <= 1e-5).all(-1)
        same = (r[0][:m] == full[0][:m]) & close & (r[2][:, :m] == full[2][:, :m]).all(0)
        shared += int(same.long().cumprod(0).sum())
    return total, shared


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
    total, shared = shared_prefix(model, processor, row)
    return {"layout": layout, **best, "tokens": total, "shared_with_full": shared,
            "vs_independent": best["trajectory"] / best["10 independent"],
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
            logger.info("%-11s prompt tokens over the 10 ratios %d, of which %d (%.0f %%) equal the ratio-1.0 "
                        "prompt's (id, embedding, position): the most a cross-ratio KV reuse could skip (not done)",
                        r["layout"], r["tokens"], r["shared_with_full"], 100 * r["shared_with_full"] / r["tokens"])


if __name__ == "__main__":
    main()
