"""The miniature ablation: ``python -m benchmarks.ablation --out runs/ablation``.

On generated temporal-affect clips (``affectverse.default.clips.generate_temporal_clips``: the label is the trend and
the end
of the clip), on CPU, each row below is trained with ``training_run.main`` (the tiny random preset plus the row's
preset)
for every seed and evaluated with ``affectverse.evaluation.runner.main``:

- keep ratio kappa = 1.0, 0.7, 0.5, 0.3 with all modalities (A+V+T), and at kappa = 1.0 with each modality removed
  (V+T = No Audio, A+T = No Video);
- imagination quality at a fixed kappa (``--imagination-keep-ratio``, 0.7) on every test clip, for the rows that
  imagine: per-step cosine and MSE of the imagined with the real (pooled, projected) future
  (``affectverse.evaluation.report.imagination_quality``, the function behind affectverse.evaluation.runner's
  ``imagination.json``).

Each row x seed has a folder of its own, ``OUT/<row>/seed<k>/{model,eval_kappa,eval_modality,imagination.json}``
plus ``code.json`` (the git commit that trained it): a finished step is skipped, an interrupted training resumes
from its last checkpoint (train.py) and an interrupted evaluation from its predictions (affectverse.evaluation.runner).
``--no-imagination`` leaves the imagination step for a later invocation. Rerunning the same command after an
interruption finishes the study; with everything done it only rewrites the summary: ``OUT/summary.json`` and the
markdown page (``--doc``, default ``docs/ablation.md``) with the table (mean +- std over seeds, 95% bootstrap
intervals over clips, n clips per cell), the kappa-robustness and the imagination-quality figures, and the verdict
of EWM against none, random and pooling (and against its variations).

``--rows``/``--seeds`` select a subset, ``--max-steps`` caps training (the CI-sized run of tests/test_ablation.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from affectverse.data.readers import decode_label, load_manifest
from affectverse.default.clips import generate_temporal_clips
from affectverse.evaluation import runner as run
from affectverse.evaluation.report import imagination_quality, plot_ablation_imagination, plot_ablation_kappa
from affectverse.inference.engine import load_model
from affectverse.scoring.scores import bootstrap_interval, map_to_label_set
from affectverse.training import arguments
from affectverse.training import run as training_run
from configuration_affectverse import AffectVerseConfig

logger = logging.getLogger(__name__)

# Row name -> (label, preset, extra ewm overrides). The presets are the paper's rows (configuration_affectverse).
ROWS = {
    "none": ("None (LoRA only)", "table4_none", ""),
    "random": ("Random tokens", "table4_random", ""),
    "pooling": ("Pooling", "table4_pooling", ""),
    "self": ("Self-modal imagination", "table5_self", ""),
    "ewm": ("EWM (full)", "table4_ewm", ""),
    "ewm_past": ("EWM, ewm_observation=past", "table4_ewm", "ewm_observation=past"),
    "ewm_both": ("EWM, modality_dropout_scope=both", "table4_ewm", "modality_dropout_scope=both"),
    "lambda0": ("EWM, lambda_img = 0", "table6_lambda0", ""),
    "s1": ("EWM, rollout S = 1", "fig4_s1", ""),
}
KAPPAS = (1.0, 0.7, 0.5, 0.3)
MODALITY_SETTINGS = (("vt", "No Audio"), ("at", "No Video"))
BASELINES = ("none", "random", "pooling")
METRIC = "closed_set_score"  # weighted F1 over the 4 labels, x100
METRIC_NAME = "weighted F1 %"
IMAGINATION = "imagination.json"
HAND_WRITTEN = "<!-- hand-written below: kept when the page is regenerated -->"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.ablation", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/ablation", help="study folder (one sub-folder per row x seed); reruns resume")
    p.add_argument("--doc", default="docs/ablation.md", help="markdown page written at the end (figures beside it)")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated of {list(ROWS)}")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--clips", type=int, default=140, help="temporal-affect clips (30%% test)")
    p.add_argument("--clip-seconds", type=float, default=4.0)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--max-steps", type=int, default=-1, help="cap training steps (-1: --epochs)")
    p.add_argument("--max-new-tokens", type=int, default=10)
    p.add_argument("--imagination-keep-ratio", type=float, default=0.7)
    p.add_argument("--no-imagination", action="store_true", help="skip the imagination step (a later run adds it)")
    p.add_argument("--report-only", action="store_true", help="only rewrite the summary from the finished folders")
    args = p.parse_args(argv)
    args.row_list = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in args.row_list if r not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    return args


# ----------------------------------------------------------------------------------------------- one row x seed
def row_config(row: str):
    """The row's EWM settings on the paper's defaults (what its preset and overrides set)."""
    _, preset, overrides = ROWS[row]
    return AffectVerseConfig.from_preset(preset, **arguments.parse_overrides(overrides))


def train_row(row: str, seed: int, manifest: Path, folder: Path, args) -> Path:
    """Train (or resume) one row x seed with train.py's entry; the exported model folder."""
    model = folder / "model"
    if (model / "results.json").is_file() and (model / "config.json").is_file():
        return model
    _, preset, overrides = ROWS[row]
    argv = ["--preset", preset, "--output_dir", str(model), "--manifest", str(manifest), "--seed", str(seed),
            "--num_train_epochs", str(args.epochs), "--max_steps", str(args.max_steps), "--eval_strategy", "no",
            "--save_strategy", "epoch", "--save_total_limit", "1", "--generation_eval_samples", "0",
            "--eval_split", "none", "--check_media", "false", "--logging_steps", "20"]
    if overrides:
        argv += ["--ewm_overrides", overrides]
    training_run.main(argv)
    return model


def evaluate_row(model: Path, manifest: Path, folder: Path, seed: int, args):
    """affectverse.evaluation.runner at every kappa (A+V+T) and with each modality removed (kappa 1), each in its own
    folder."""
    common = ["--model", str(model), "--manifest", str(manifest), "--split", "test", "--device", "cpu",
              "--max-new-tokens", str(args.max_new_tokens), "--batch-size", "8", "--seed", str(seed)]
    if not (folder / "eval_kappa" / run.SCORES).is_file():
        run.main(common + ["--out", str(folder / "eval_kappa"), "--modalities", "avt",
                           "--keep-ratios", ",".join(map(str, KAPPAS)), "--imagination-clips", "0"])
    if not (folder / "eval_modality" / run.SCORES).is_file():
        run.main(common + ["--out", str(folder / "eval_modality"), "--modalities",
                           ",".join(m for m, _ in MODALITY_SETTINGS), "--keep-ratios", "1.0",
                           "--imagination-clips", "0"])


def imagine_row(model: Path, manifest: Path, folder: Path, args):
    """Held-out imagination quality at a fixed kappa on every test clip (rows whose beliefs come from imagination)."""

    path = folder / IMAGINATION
    if path.is_file() or not AffectVerseConfig.from_pretrained(model).uses_imagination:
        return
    net, processor = load_model(str(model), "cpu", torch.float32)
    rows = list(load_manifest(manifest, split="test"))
    result = imagination_quality(net, processor, rows, keep_ratio=args.imagination_keep_ratio)
    path.write_text(json.dumps(result, indent=2))


def code_version() -> dict:
    """The git commit of this checkout and whether tracked files differ from it, read once when the study starts
    (the code a process runs is the code it imported)."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True).stdout.strip())
    except OSError:
        head, dirty = "", None
    return {"commit": head, "local_changes": dirty}


def code_stamp(folder: Path, version: dict):
    """``code.json``: the code version that trained this folder, written when its training starts."""
    path = folder / "code.json"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(version) + "\n")


def read_row(folder: Path) -> dict | None:
    """{setting: {"score", "accuracy", "n"}, "imagination": {...} or None} of a finished row x seed, else None."""
    kappa, modality = folder / "eval_kappa" / run.SCORES, folder / "eval_modality" / run.SCORES
    if not (kappa.is_file() and modality.is_file()):
        return None
    cells = {}
    for path in (kappa, modality):
        for r in json.loads(path.read_text())["results"]:
            key = f"avt@{r['keep_ratio']:g}" if r["modality"] == "avt" else r["modality"]
            cells[key] = {"score": r.get(METRIC), "accuracy": r.get("closed_set_accuracy"), "n": r["n"]}
    imagination = folder / IMAGINATION
    cells["imagination"] = json.loads(imagination.read_text()) if imagination.is_file() else None
    return cells


# ------------------------------------------------------------------------------------------------------ summary
def weighted_f1(truth, pred) -> float:
    """Weighted F1 (x100) over the classes present in ``truth`` (int arrays; -1 = no label named), as
    ``affectverse.scoring.scores.closed_set_scores`` computes it with sklearn, in numpy for the bootstrap."""
    classes, support = np.unique(truth, return_counts=True)
    f1 = [2 * np.sum((truth == c) & (pred == c)) / (np.sum(truth == c) + np.sum(pred == c)) for c in classes]
    return float(100 * np.dot(f1, support) / len(truth))


def clip_outcomes(folder: Path, test_rows: list[dict]) -> dict:
    """{setting: (truth, prediction)} int arrays over ``test_rows`` from a row x seed's predictions.jsonl files
    (label index in the sorted ground-truth label set, -1 where the answer names none of them)."""

    gts = [str(decode_label(r["label"])).lower().strip() for r in test_rows]
    label_set = sorted(set(gts))
    truth = np.array([label_set.index(g) for g in gts])
    found = {}
    for part in ("eval_kappa", "eval_modality"):
        path = folder / part / "predictions.jsonl"
        for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a half-written last line
                continue
            if "name" not in record or "labels" not in record:  # header / setting lines of the store
                continue
            key = f"avt@{record['keep_ratio']:g}" if record["modality"] == "avt" else record["modality"]
            label = map_to_label_set(record["labels"], label_set) if record.get("status") == "ok" else None
            found.setdefault(key, {})[record["name"]] = label_set.index(label) if label else -1
    return {key: (truth, np.array([by_name[r["name"]] for r in test_rows])) for key, by_name in found.items()
            if all(r["name"] in by_name for r in test_rows)}


def seed_mean_interval(outcomes: list[tuple], n_boot: int = 1000):
    """95% bootstrap interval over clips of the seeds' mean weighted F1 (the same clips resampled for every seed)."""
    truth = outcomes[0][0]
    return bootstrap_interval(lambda idx: sum(weighted_f1(t[idx], p[idx]) for t, p in outcomes) / len(outcomes),
                              len(truth), n_boot)


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (0 for one value); (None, None) for none."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def summarize(out: Path, rows: list[str], seeds: list[int]) -> dict:
    """Per row and setting: mean, std, 95% bootstrap interval over clips, the seeds that finished, clips per seed."""
    settings = [f"avt@{k:g}" for k in KAPPAS] + [m for m, _ in MODALITY_SETTINGS]
    summary = {"metric": METRIC_NAME, "settings": settings, "rows": {}}
    manifest = out / "clips" / "manifest.csv"
    test_rows = list(load_manifest(manifest, split="test")) if manifest.is_file() else []
    for row in rows:
        done = {s: read_row(out / row / f"seed{s}") for s in seeds}
        done = {s: c for s, c in done.items() if c is not None}
        outcomes = {s: clip_outcomes(out / row / f"seed{s}", test_rows) for s in done} if test_rows else {}
        entry = {"label": ROWS[row][0], "preset": ROWS[row][1], "overrides": ROWS[row][2], "seeds": sorted(done),
                 "cells": {}, "imagination": None,
                 "imagination_supervised": row_config(row).imagination_loss_weight > 0}
        for setting in settings:
            values = [c[setting]["score"] for c in done.values() if setting in c]
            accuracy = [c[setting]["accuracy"] for c in done.values() if setting in c]
            n = sorted({c[setting]["n"] for c in done.values() if setting in c})
            mean, std = mean_std(values)
            per_seed = [o[setting] for o in outcomes.values() if setting in o]
            ci = seed_mean_interval(per_seed) if per_seed and len(per_seed) == len(values) else None
            entry["cells"][setting] = {"mean": mean, "std": std, "values": values, "n_seeds": len(values),
                                       "n_clips": n[0] if len(n) == 1 else n, "ci": ci,
                                       "accuracy_mean": mean_std(accuracy)[0]}
        quality = [c["imagination"] for c in done.values() if c.get("imagination")]
        if quality:
            steps = len(quality[0]["cosine_per_step"])
            entry["imagination"] = {
                "keep_ratio": quality[0]["keep_ratio"], "n_clips": quality[0]["n_clips"], "n_seeds": len(quality),
                "cosine": [mean_std([q["cosine_per_step"][i] for q in quality]) for i in range(steps)],
                "mse": [mean_std([q["mse_per_step"][i] for q in quality]) for i in range(steps)]
                if all("mse_per_step" in q for q in quality) else None,
                "per_seed_cosine": [q["cosine_per_step"] for q in quality],
                "per_seed_mse": [q.get("mse_per_step") for q in quality]}
        summary["rows"][row] = entry
    return summary


def _cell(cell: dict) -> str:
    if cell["mean"] is None:
        return "not run"
    return f"{cell['mean']:.1f} ± {cell['std']:.1f}"


def compare(summary: dict, row: str, other: str) -> str:
    """One line: ``row`` against ``other`` per setting; beyond the spread when the gap exceeds the sum of both
    stds over seeds (and, with one seed each, never)."""
    rows = summary["rows"]
    if not rows.get(other, {}).get("seeds"):
        return f"- vs {rows.get(other, {}).get('label', other)}: not run."
    parts, wins, losses = [], 0, 0
    for setting in summary["settings"]:
        a, b = rows[row]["cells"][setting], rows[other]["cells"][setting]
        if a["mean"] is None or b["mean"] is None:
            continue
        gap, spread = a["mean"] - b["mean"], a["std"] + b["std"]
        beyond = abs(gap) > spread and min(a["n_seeds"], b["n_seeds"]) > 1
        wins += beyond and gap > 0
        losses += beyond and gap < 0
        parts.append(f"{setting_title(setting)} {gap:+.1f}{' (beyond)' if beyond else ''}")
    return (f"- vs {rows[other]['label']}: {rows[row]['label']} better beyond the spread in {wins} of {len(parts)} "
            f"settings, worse beyond it in {losses}; gaps ({row} - {other}, points): {', '.join(parts)}.")


def verdicts(summary: dict) -> list[str]:
    """EWM (full) against none, random and pooling, then against its own variations."""
    rows = summary["rows"]
    if not rows.get("ewm", {}).get("seeds"):
        return ["EWM (full) did not finish: no verdict."]
    lines = [compare(summary, "ewm", base) for base in BASELINES]
    variations = [r for r in rows if r not in BASELINES and r != "ewm" and rows[r]["seeds"]]
    if variations:
        lines += ["", "EWM (full) against its variations:", ""]
        lines += [compare(summary, "ewm", other) for other in variations]
    return lines


def setting_title(setting: str) -> str:
    if setting.startswith("avt@"):
        return f"κ={float(setting[4:]):.1f}"
    return dict(MODALITY_SETTINGS)[setting]


def write_doc(summary: dict, doc: Path, args, seconds: float | None) -> Path:
    """The markdown page: set-up, table, figures, verdict. Numbers come only from ``summary``."""
    doc.parent.mkdir(parents=True, exist_ok=True)
    stem = doc.with_suffix("")
    figures = []
    if any(r["seeds"] for r in summary["rows"].values()):
        figures.append(("kappa robustness", plot_ablation_kappa(summary, Path(f"{stem}_kappa.png"))))
    if any(r["imagination"] and r["imagination_supervised"] for r in summary["rows"].values()):
        figures.append(("imagination quality", plot_ablation_imagination(summary, Path(f"{stem}_imagination.png"))))
    rows = summary["rows"]
    header = ["Row", "preset", "seeds", *map(setting_title, summary["settings"])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, r in rows.items():
        preset = r["preset"] + (f" + {r['overrides']}" if r["overrides"] else "")
        lines.append(f"| {r['label']} | `{preset}` | {len(r['seeds'])} | "
                     + " | ".join(_cell(r["cells"][s]) for s in summary["settings"]) + " |")
    n_clips = sorted({str(c["n_clips"]) for r in rows.values() for c in r["cells"].values() if c["n_seeds"]})
    img = ["| Row | seeds | clips | " + " | ".join(f"cos step {i + 1}" for i in range(5)) + " | MSE per step |",
           "|---|---|---|" + "---|" * 5 + "---|"]
    unsupervised = [r["label"] for r in rows.values() if r["imagination"] and not r["imagination_supervised"]]
    for r in rows.values():
        q = r["imagination"]
        if not q:
            continue
        cos = [f"{m:.3f} ± {s:.3f}" for m, s in q["cosine"]] + ["—"] * (5 - len(q["cosine"]))
        mse = ", ".join(f"{m:.3f} ± {s:.3f}" for m, s in q["mse"]) if q["mse"] else "—"
        img.append(f"| {r['label']} | {q['n_seeds']} | {q['n_clips']} | " + " | ".join(cos) + f" | {mse} |")
    unfinished = [f"{r['label']} (seeds {sorted(set(args.seed_list) - set(r['seeds']))} missing)"
                  for r in rows.values() if set(r["seeds"]) != set(args.seed_list)]
    page = [
        "# Miniature ablation (CPU, generated temporal-affect clips)", "",
        "Generated by `python -m benchmarks.ablation " + " ".join(args.argv) + "`; every number below is read from "
        f"the run folders under `{args.out}` (`summary.json`). Re-running the command resumes an unfinished study and "
        "rewrites this page.", "",
        "## Set-up", "",
        f"- **Data**: {args.clips} temporal-affect clips of {args.clip_seconds:g} s (`affectverse/default/clips.py`, "
        "`generate_temporal_clips`, seed 0), 30% test. One affect level moves linearly from v0 to v1 over the clip "
        "and drives colour, pitch and loudness together; the label is the pair (trend, end): rising and ending above "
        "0.5 `happy`, falling but ending above 0.5 `neutral`, rising but ending below 0.5 `worried`, falling to below "
        "0.5 `sad`. The starts of the four classes overlap, so a clip cut to its first kappa shows the trend but not "
        "the end: the end has to be extrapolated, which is what imagining the future could help with. The subtitle "
        "is a neutral sentence independent of the label. Chance: 25% accuracy.",
        "- **Model**: the tiny random AffectVerse of `affectverse/default/tiny.py` (2 layers, 64 wide), LoRA + EWM "
        f"trained with `training_run.main` for {args.epochs:g} epochs"
        + (f" capped at {args.max_steps} steps" if args.max_steps > 0 else "")
        + " at the tiny preset's recipe; each row adds its preset (`AffectVerseConfig.from_preset`). Seeds: "
        f"{', '.join(map(str, args.seed_list))} (the seed sets the random backbone, the EWM init and the data order).",
        "- **Evaluation**: `affectverse.evaluation.runner` on the test clips, greedy answers mapped onto the 4 labels; "
        f"{METRIC_NAME} (closed set). κ = the observed fraction of each clip at inference (A+V+T); No Audio / No "
        f"Video at κ = 1.0. Imagination quality: per-step cosine and MSE between the imagined and the real future "
        f"at a fixed κ = {args.imagination_keep_ratio:g} in evaluation mode (`eval_keep_ratio`), all test clips.",
        f"- Cells: mean ± sample std over the seeds that finished; n = {', '.join(n_clips) or '—'} test clips per "
        "cell and seed.", "",
        f"## Results ({METRIC_NAME}, mean ± std over seeds)", "", *lines, "",
    ]
    if unfinished:
        page += ["**Incomplete**: " + "; ".join(unfinished) + ".", ""]
    page += ["## Imagination quality (held-out, fixed κ)", "", *img, ""]
    if unsupervised:
        page += [f"Not in the figure: {', '.join(unsupervised)} (lambda_img = 0: the imagination is never trained "
                 "to predict the future, so its MSE is on another scale; the EWM still learns through L_lm).", ""]
    page += [f"![{caption}]({path.name})" for caption, path in figures] + [""]
    page += ["## Verdict: EWM against none, random and pooling", "",
             "A gap counts as beyond the spread when |mean(EWM) - mean(other)| exceeds std(EWM) + std(other) over "
             "seeds (never with a single seed). The 95% intervals in the figure are over clips.",
             "", *verdicts(summary), ""]
    if seconds is not None:
        page += [f"Wall time of this invocation: {seconds / 60:.1f} min on the machine's 2 shared cores.", ""]
    kept = ""
    if doc.is_file() and HAND_WRITTEN in doc.read_text(encoding="utf-8"):  # a reader's notes survive a rewrite
        kept = doc.read_text(encoding="utf-8").split(HAND_WRITTEN, 1)[1]
    doc.write_text("\n".join(page) + (HAND_WRITTEN + kept if kept else ""), encoding="utf-8")
    return doc


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    args.argv = argv
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    version = code_version()
    manifest = out / "clips" / "manifest.csv"
    if not args.report_only:
        if not manifest.is_file():
            generate_temporal_clips(out / "clips", n_clips=args.clips, seed=0, seconds=args.clip_seconds)
        for seed in args.seed_list:  # seed-major: a study cut short still has every row at the first seeds
            for row in args.row_list:
                folder = out / row / f"seed{seed}"
                start = time.perf_counter()
                code_stamp(folder, version)
                model = train_row(row, seed, manifest, folder, args)
                evaluate_row(model, manifest, folder, seed, args)
                if not args.no_imagination:
                    imagine_row(model, manifest, folder, args)
                logger.info("ablation %s seed %d: done in %.0f s", row, seed, time.perf_counter() - start)
                summary = summarize(out, args.row_list, args.seed_list)
                (out / "summary.json").write_text(json.dumps(summary, indent=2))
    summary = summarize(out, args.row_list, args.seed_list)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    doc = write_doc(summary, Path(args.doc), args, None if args.report_only else time.perf_counter() - t0)
    print(f"{doc} ({sum(len(r['seeds']) for r in summary['rows'].values())} row x seed runs finished)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
