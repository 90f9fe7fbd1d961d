"""What a 10-ratio trajectory costs against independent predictions, side by side in one run.

    python -m benchmarks.trajectory_bench [--seconds 4 --new-tokens 20 --repeats 3 --layouts interleaved,separate
                                           --presets tiny,bench]

Random weights (``tiny``: the tiny preset; ``bench``: benchmarks/model_bench.py's dimensions, hidden 512, 8 layers,
vocab 152064) on one generated clip with its audio track and a 4-label set. For each preset and audio layout it
prints the best of ``--repeats`` rounds (rounds alternate between the measurements, burn-in first) of

- **one prediction**: ``Engine.predict`` at ratio 1.0 (decode, generate, label scores);
- **10 independent**: one such prediction at each ratio 0.1, ..., 1.0 (``trajectory(reuse=False)``);
- **batched**: ``trajectory(reuse=True, share_prefix=False)``: decoded once, the 10 ratios in one batch;
- **trajectory**: ``trajectory(reuse=True)``: batched, and the prompt pass shares its KV cache across ratios;

the trajectory's time over 10 independent (goal <= 0.35) and over one prediction (goal <= 3.5); then the prompt
pass's language-model work (rows x tokens, padding included) with and without the shared KV cache, and how many of
the 10 prompts' tokens the shared pass computed once instead of per ratio.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import torch
from transformers import DynamicCache

from affectverse.default.clips import generate_clips
from affectverse.default.tiny import tiny_config, tiny_processor
from affectverse.inference.engine import MODALITIES, Engine, Setting
from affectverse.inference.trajectory import DEFAULT_RATIOS, decode_trajectory, trajectory
from benchmarks.model_bench import bench_config
from modeling_affectverse import AffectVerseForConditionalGeneration
from processing_affectverse import AffectVerseProcessor

logger = logging.getLogger("trajectory_bench")
LABELS = ["happy", "sad", "angry", "neutral"]


@torch.no_grad()
def prompt_work(model, batch, share: bool) -> int:
    """Rows x tokens the language model ran over in one prompt pass of ``batch`` (pass 1 and pass 2, the
    reference prompt's shared pass included), padding included."""
    seen = []
    handle = model.model.language_model.register_forward_hook(
        lambda m, a, kw, out: seen.append(kw["inputs_embeds"].shape[0] * kw["inputs_embeds"].shape[1]),
        with_kwargs=True)
    try:
        model(**batch, cache=DynamicCache(), use_cache=True, logits_to_keep=1, share_prefix=share)
    finally:
        handle.remove()
    return sum(seen)


def measure(preset: str, layout: str, row: dict, args) -> dict:
    torch.manual_seed(0)
    cfg = tiny_config() if preset == "tiny" else bench_config(argparse.Namespace(hidden=512, layers=8, vocab=152064))
    model = AffectVerseForConditionalGeneration(cfg).eval()
    model.generation_config.min_new_tokens = args.new_tokens  # the same work per prediction everywhere
    processor = AffectVerseProcessor.from_model_config(cfg, tiny_processor(), max_length=4096, audio_layout=layout)
    engine = Engine(model, processor, args.new_tokens, batch_size=1, num_workers=0, labels=LABELS)
    curve = dict(max_new_tokens=args.new_tokens)
    runs = {
        "one prediction": lambda: engine.predict(Setting(MODALITIES["avt"]), [row]),
        "10 independent": lambda: trajectory(model, processor, [row], DEFAULT_RATIOS, LABELS, reuse=False, **curve),
        "batched": lambda: trajectory(model, processor, [row], DEFAULT_RATIOS, LABELS, share_prefix=False, **curve),
        "trajectory": lambda: trajectory(model, processor, [row], DEFAULT_RATIOS, LABELS, **curve),
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
    batch, _ = decode_trajectory(processor, [Setting(MODALITIES["avt"], r) for r in DEFAULT_RATIOS], row)
    return {"preset": preset, "layout": layout, **best, "tokens": int(batch["attention_mask"].sum()),
            "work": prompt_work(model, batch, False), "shared_work": prompt_work(model, batch, True),
            "vs_independent": best["trajectory"] / best["10 independent"],
            "batched_vs_independent": best["batched"] / best["10 independent"],
            "vs_one": best["trajectory"] / best["one prediction"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layouts", default="interleaved,separate")
    parser.add_argument("--presets", default="tiny", help="comma-separated: tiny, bench")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        generate_clips(Path(tmp), n_clips=1, seconds=args.seconds, val_fraction=0.0, test_fraction=1.0)
        clip = next((Path(tmp) / "video").glob("*.mp4"))
        row = {"name": str(clip), "video": str(clip), "audio": "", "subtitle": "Oh no, not again."}
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        logger.info("one %.0f s clip, %d ratios, %d labels, %d new tokens, torch threads %d, load average %.2f on %d "
                    "cores", args.seconds, len(DEFAULT_RATIOS), len(LABELS), args.new_tokens, torch.get_num_threads(),
                    load, os.cpu_count())
        for preset in args.presets.split(","):
            for layout in args.layouts.split(","):
                r = measure(preset.strip(), layout.strip(), row, args)
                name = f"{r['preset']} {r['layout']}"
                logger.info("%-17s one %.3f s | 10 independent %.3f s | batched %.3f s | trajectory %.3f s", name,
                            r["one prediction"], r["10 independent"], r["batched"], r["trajectory"])
                logger.info("%-17s trajectory / 10 independent %.2f (goal <= 0.35; batched without the shared cache "
                            "%.2f) | trajectory / one %.2f (goal <= 3.5)", name, r["vs_independent"],
                            r["batched_vs_independent"], r["vs_one"])
                logger.info("%-17s prompt pass: %d rows x tokens with the shared KV cache, %d without (%.2fx); the 10 "
                            "prompts hold %d tokens", name, r["shared_work"], r["work"], r["shared_work"] / r["work"],
                            r["tokens"])


if __name__ == "__main__":
    main()
