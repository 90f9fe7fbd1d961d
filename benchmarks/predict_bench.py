"""End-to-end prediction throughput against the model alone, side by side in one run on the same clips.

    python -m benchmarks.predict_bench [--clips 16 --seconds 4 --batch 2 --workers 2 --new-tokens 20 --repeats 3]

For each preset (``bench``: benchmarks/model_bench.py's dimensions, hidden 512, 8 layers, vocab 152064, where the
model's cost dominates decoding as it does at 7B on a GPU; ``tiny``: the tiny test model, where decoding dominates)
it prints clips/s of

- **end to end**: :class:`affectverse.inference.engine.Engine` as ``affectverse predict`` runs it: ``--workers``
DataLoader
  workers decode the generated mp4 clips (frames and audio) ahead of the model, which generates;
- **model only**: the same batches decoded beforehand, generation alone;

and their ratio (1.0: decoding is entirely hidden behind the model). Rounds alternate between the two (burn-in
first) and the best round of each is reported (on a shared machine the fastest round is the least disturbed). Decoding
and the model share the machine's cores: on a small CPU the workers
slow the model down, on a GPU machine they do not.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from affectverse.default.clips import generate_clips
from affectverse.default.tiny import tiny_config, tiny_processor
from affectverse.inference.engine import MODALITIES, Engine, Setting, decode
from benchmarks.model_bench import bench_config
from modeling_affectverse import AffectVerseForConditionalGeneration
from processing_affectverse import AffectVerseProcessor

logger = logging.getLogger("predict_bench")


def build(preset: str, args):
    """(model, processor) of a preset, random weights, in eval mode."""
    torch.manual_seed(0)
    cfg = tiny_config() if preset == "tiny" else bench_config(argparse.Namespace(hidden=512, layers=8, vocab=152064))
    model = AffectVerseForConditionalGeneration(cfg).to(args.device).eval()
    model.generation_config.min_new_tokens = args.new_tokens  # the same work per clip in both measurements
    processor = AffectVerseProcessor.from_model_config(cfg, tiny_processor(), max_length=4096)
    return model, processor


def measure(preset: str, rows: list[dict], args) -> dict:
    model, processor = build(preset, args)
    engine = Engine(model, processor, args.new_tokens, args.batch, args.workers)
    jobs = engine.batches([(Setting(MODALITIES["avt"]), row) for row in rows])
    start = time.perf_counter()
    decoded = [decode(processor, setting, chunk)[0] for setting, chunk in jobs]
    decode_s = (time.perf_counter() - start) / len(rows)
    engine.generate(decoded[0])  # burn-in

    def model_only():
        for batch in decoded:
            engine.generate(batch)

    def end_to_end():
        results = [r for _, _, rs in engine.run(jobs) for r in rs]
        assert all(r["status"] == "ok" for r in results), results

    times = {"model only": [], "end to end": []}
    for _ in range(args.repeats):
        for name, fn in (("model only", model_only), ("end to end", end_to_end)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    rate = {name: len(rows) / min(t) for name, t in times.items()}
    tokens = int(decoded[0]["input_ids"].shape[1])
    return {"preset": preset, "decode_s_per_clip": decode_s, "prompt_tokens": tokens, **rate,
            "ratio": rate["end to end"] / rate["model only"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="bench,tiny", help="comma-separated of bench, tiny")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=4.0, help="clip length (4 s at 3 fps: 6 video grids)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        generate_clips(Path(tmp), n_clips=args.clips, seconds=args.seconds, val_fraction=0.0, test_fraction=1.0)
        rows = [{"name": str(p), "video": str(p), "audio": ""} for p in sorted((Path(tmp) / "video").glob("*.mp4"))]
        logger.info("device %s, %d clips of %.0f s, batch %d, %d workers, %d new tokens, torch threads %d",
                    args.device, len(rows), args.seconds, args.batch, args.workers, args.new_tokens,
                    torch.get_num_threads())
        for preset in args.presets.split(","):
            r = measure(preset.strip(), rows, args)
            logger.info("%-6s prompt %4d tokens | decode %.3f s/clip | model only %6.2f clips/s | end to end "
                        "%6.2f clips/s | ratio %.2f (goal >= 0.9 for bench)", r["preset"], r["prompt_tokens"],
                        r["decode_s_per_clip"], r["model only"], r["end to end"], r["ratio"])


if __name__ == "__main__":
    main()
