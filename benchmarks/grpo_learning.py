"""Does GRPO learn on the embedded default? ``python -m benchmarks.grpo_learning [--seeds 42,1,2]``.

Runs ``train.py --method grpo`` (the embedded default: a 3-epoch sft warm start of the tiny preset, then 40 GRPO
steps on the generated clips, held-out rewards on the 24 test clips before and after) once per seed, one after the
other in this process, and prints per seed the training reward of the first and last fifth of the steps and the
held-out reward and accuracy (greedy answers) before and after; then whether the held-out reward rose by more than
its spread over the seeds. Seed 42 is the embedded default's own run (``outputs/affectverse-tiny-grpo``, reused when
it is there); the other seeds write ``outputs/affectverse-tiny-grpo-seed<k>``. A finished seed is read back, an
interrupted one resumes. The starting model is the same for every seed (``outputs/affectverse-tiny-grpo-start``), so
the held-out "before" is one number; the seed moves the GRPO sampling and the LoRA initialisation.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from affectverse.training import run as training_run
from affectverse.training.arguments import TINY_GRPO_ARGS

DEFAULT_OUT = TINY_GRPO_ARGS[TINY_GRPO_ARGS.index("--output_dir") + 1]


def run_seed(seed: int) -> dict:
    """results.json of the embedded default's GRPO run with ``seed`` (trained unless finished)."""
    out = Path(DEFAULT_OUT if seed == 42 else f"{DEFAULT_OUT}-seed{seed}")
    results = out / "results.json"
    done = results.is_file() and "held_out_after" in json.loads(results.read_text())
    if not done:
        training_run.main(["--method", "grpo", "--seed", str(seed), "--output_dir", str(out)]
                          + (["--export_merged", "false"] if seed != 42 else []))
    return json.loads(results.read_text())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="42,1,2", help="comma-separated GRPO seeds (default 42,1,2)")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = {seed: run_seed(seed) for seed in seeds}
    print(f"{'seed':>5} | train reward first 1/5 -> last 1/5 | held-out reward before -> after | "
          "accuracy before -> after | answer form before -> after")
    for seed, r in rows.items():
        b, a, c = r["held_out_before"], r["held_out_after"], r["curve"]
        print(f"{seed:>5} | {c['first_fifth']:.3f} -> {c['last_fifth']:.3f} | {b['reward']:.3f} -> {a['reward']:.3f} | "
              f"{b['accuracy']:.3f} -> {a['accuracy']:.3f} | {b['answer_format']:.3f} -> {a['answer_format']:.3f}")
    before = np.array([r["held_out_before"]["reward"] for r in rows.values()])
    after = np.array([r["held_out_after"]["reward"] for r in rows.values()])
    rise, spread = float(after.mean() - before.mean()), float(after.max() - after.min())
    verdict = "rises beyond" if rise > spread and (after > before).all() else "does NOT rise beyond"
    print(f"held-out reward: before {before.mean():.3f}, after {after.mean():.3f} +- {after.std(ddof=1):.3f} (std over "
          f"{len(seeds)} seeds), range {spread:.3f}; rise {rise:.3f}: it {verdict} its spread over the seeds")
    return rows


if __name__ == "__main__":
    main()
