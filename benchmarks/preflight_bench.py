"""Cost of train.py's pre-flight check on generated clips: ``python -m benchmarks.preflight_bench --n 200``."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from affectverse.data.readers import load_manifest
from affectverse.default.clips import generate_clips
from affectverse.default.tiny import tiny_processor
from affectverse.training.preflight import check_splits


def main(argv=None):
    """Time the check on generated clips (media + text with the tiny tokenizer): ``python -m benchmarks.preflight_bench
    --n 200 [--workers 2]``. Clip generation is not timed."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dir", default=None, help="clip folder (default: a temporary one)")
    args = parser.parse_args(argv)
    folder = Path(args.dir or tempfile.mkdtemp())
    manifest = folder / "manifest.csv"
    if not manifest.is_file():
        generate_clips(folder, n_clips=args.n, seed=0)
    ds, processor = load_manifest(manifest), tiny_processor()
    cache = folder / "preflight_cache.json"
    cache.unlink(missing_ok=True)
    t0 = time.perf_counter()
    bad = check_splits({"all": ds}, processor, cache_file=cache, workers=args.workers)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    check_splits({"all": ds}, processor, cache_file=cache, workers=args.workers)
    warm = time.perf_counter() - t0
    n = len(ds)
    print(f"{n} samples ({2 * n} files: mp4 with audio + wav; text), {args.workers} workers: {cold:.2f} s = "
          f"{1000 * cold / n:.1f} s per 1,000 samples (extrapolated from {n}); cached rerun {warm:.2f} s "
          f"({1000 * warm / n:.2f} s per 1,000); bad samples: {len(bad)}")


if __name__ == "__main__":
    main()
