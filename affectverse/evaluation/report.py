"""Tables and figures of a ``affectverse.evaluation.runner`` folder: ``affectverse report --run DIR``.

Reads ``scores.json`` (and, when present, ``imagination.json`` / ``belief_attention.json``) and writes:

- ``table1.md`` / ``table1.csv``: the layout of the paper's Table 1: one row per modality setting (A+T, V+T,
  A+V+T) at kappa = 1.0 (else the largest kappa run, noted), one column per MER-UniBench benchmark and the
  MER-UniBench Mean (plain mean of the nine main scores over the benchmarks present, with the missing ones
  named). Benchmarks outside the nine (e.g. a manifest's) follow the Mean and do not enter it.
- ``table2.md`` / ``table2.csv``: the layout of Table 2: dataset x setting (Full, No Audio, No Video) x keep
  ratio, with a per-row Avg. and an Avg. block per task group (sentiment, emotion, ...).
- ``table1_closed_set.*`` / ``table2_closed_set.*``: the same with the closed-set alternative (weighted F1 over
  the label set; Acc-2 for sentiment), so the two are never mixed up.
- ``robustness.png`` (main score against kappa, per dataset and setting), ``imagination.png`` (Table 8: cosine
  of each rollout step with the real future) and ``belief_attention.png`` (Figure 3: belief tokens x imagined
  memory tokens, with each belief's video / audio attention mass beside it).
- ``report.md``: all of it on one page.

:func:`imagination_quality` and :func:`belief_attention` compute the data of the last two plots from a model
(``affectverse.evaluation.runner`` calls them and stores their JSON).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from pathlib import Path

from affectverse import ownership
from affectverse.inference.engine import to_device
from affectverse.inference.store import is_store, shard_files
from affectverse.scoring.scores import bootstrap_interval
from processing_affectverse import AffectVerseCollator

logger = logging.getLogger(__name__)

# The nine MER-UniBench benchmarks in the paper's column order, with their column titles.
UNIBENCH = {
    "mer2023": "MER2023", "mer2024": "MER2024", "meld": "MELD", "iemocap": "IEMOCAP", "mosi": "MOSI",
    "mosei": "MOSEI", "sims": "SIMS", "simsv2": "SIMS v2", "ovmerdplus": "OV-MERD+",
}
SETTING_ORDER = ("at", "vt", "avt")  # Table 1 row order
ABLATION_ORDER = ("avt", "vt", "at")  # Table 2 row order: Full, No Audio, No Video
GROUPS = (("sentiment", "Sentiment (main: non-zero WAF)"), ("emotion", "Emotion (main: HIT)"),
          ("openset", "Open vocabulary (main: set F)"))
METRICS = {"main": ("main_score", "MER-UniBench main score"),
           "closed_set": ("closed_set_score", "closed-set alternative (weighted F1; Acc-2 for sentiment)")}
MISSING = "—"


# ------------------------------------------------------------------------------------------------- numbers
def unibench_mean(scores: dict) -> tuple[float | None, list[str]]:
    """MER-UniBench Mean: the plain mean of the nine main scores (x100 already), two decimals.

    Args:
        scores: ``{benchmark: main score or None}``; keys outside the nine are ignored.

    Returns:
        (mean over the benchmarks present, or None when none is; the missing benchmarks in column order).
    """
    present = [float(scores[b]) for b in UNIBENCH if scores.get(b) is not None]
    missing = [b for b in UNIBENCH if scores.get(b) is None]
    return (round(sum(present) / len(present), 2) if present else None), missing


def _fmt(value, digits: int = 2) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def _ratio(kappa: float) -> str:
    """``1.0``, ``0.7``, ``0.25``: one decimal at least, as the paper's column titles."""
    return f"{kappa:.1f}" if round(kappa, 1) == kappa else f"{kappa:g}"


def _name(benchmark: str) -> str:
    return UNIBENCH.get(benchmark, benchmark)


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def _write(path: Path, header, rows, note: str = "") -> tuple[Path, Path]:
    """``path.md`` (table and note) and ``path.csv``, each written atomically."""
    md, csv_path = path.with_suffix(".md"), path.with_suffix(".csv")
    ownership.atomic_write(md, _markdown(header, rows) + (f"\n{note}\n" if note else ""))
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows([["" if c == MISSING else c for c in r] for r in rows])
    ownership.atomic_write(csv_path, text.getvalue())
    return md, csv_path


# --------------------------------------------------------------------------------------------------- tables
def table1(results: list[dict], metric: str = "main") -> tuple[list[str], list[list[str]], str]:
    """Table 1 layout: (header, rows, note) with one row per modality setting."""
    key = METRICS[metric][0]
    ratios = sorted({r["keep_ratio"] for r in results})
    kappa = 1.0 if 1.0 in ratios else ratios[-1]
    chosen = [r for r in results if r["keep_ratio"] == kappa]
    extra = sorted({r["benchmark"] for r in chosen} - set(UNIBENCH))
    header = ["Setting", *UNIBENCH.values(), "Mean", *extra]
    rows, missing_all = [], set()
    settings = [m for m in SETTING_ORDER if any(r["modality"] == m for r in chosen)]
    settings += sorted({r["modality"] for r in chosen} - set(settings))
    for modality in settings:
        cells = {r["benchmark"]: r.get(key) for r in chosen if r["modality"] == modality}
        mean, missing = unibench_mean(cells)
        missing_all.update(missing)
        setting = next(r["setting"] for r in chosen if r["modality"] == modality)
        rows.append([setting, *(_fmt(cells.get(b)) for b in UNIBENCH), _fmt(mean),
                     *(_fmt(cells.get(b)) for b in extra)])
    note = f"{METRICS[metric][1]}, x100, at keep ratio {_ratio(kappa)}."
    if kappa != 1.0:
        note += " (kappa = 1.0 was not run: Table 1 shows the largest keep ratio run.)"
    if missing_all:
        names = ", ".join(_name(b) for b in UNIBENCH if b in missing_all)
        note += f" Mean over the benchmarks present; missing: {names}."
    else:
        note += " Mean over all nine benchmarks."
    if extra:
        note += f" Not in the Mean (not MER-UniBench): {', '.join(extra)}."
    return header, rows, note


def table2(results: list[dict], metric: str = "main") -> tuple[list[str], list[list[str]], str]:
    """Table 2 layout: (header, rows, note) with dataset x setting rows and keep-ratio columns, Avg. per group."""
    key = METRICS[metric][0]
    ratios = sorted({r["keep_ratio"] for r in results}, reverse=True)
    header = ["Dataset", "Setting", *map(_ratio, ratios), "Avg."]
    value = {(r["benchmark"], r["modality"], r["keep_ratio"]): r.get(key) for r in results}
    ablation = {r["modality"]: r["ablation"] for r in results}
    modalities = [m for m in ABLATION_ORDER if m in ablation] + sorted(set(ablation) - set(ABLATION_ORDER))
    order = list(UNIBENCH) + sorted({r["benchmark"] for r in results} - set(UNIBENCH))
    tasks = {r["benchmark"]: r["task"] for r in results}

    def mean(values):
        values = [v for v in values if v is not None]
        return round(sum(values) / len(values), 2) if values else None

    rows = []
    for task, _ in GROUPS:
        benches = [b for b in order if tasks.get(b) == task]
        for bench in benches:
            for m in modalities:
                cells = [value.get((bench, m, k)) for k in ratios]
                if any(c is not None for c in cells):
                    rows.append([_name(bench), ablation[m], *map(_fmt, cells), _fmt(mean(cells))])
        if len(benches) > 1:
            for m in modalities:
                cells = [mean([value.get((b, m, k)) for b in benches]) for k in ratios]
                rows.append([f"Avg. ({task})", ablation[m], *map(_fmt, cells), _fmt(mean(cells))])
    note = (f"{METRICS[metric][1]}, x100. Full = A+V+T, No Audio = V+T, No Video = A+T; the observed audio/video "
            "cut to their first kappa at inference. Avg. rows: mean over the datasets of the group.")
    return header, rows, note


# ---------------------------------------------------------------------------------------------------- plots
# Every figure: the metric named on its axis, kappa as the Greek letter, n per point, a chance line where one exists,
# 95% bootstrap intervals where the data carry them, one y-scale across the panels, legends outside the data, and
# both a 200-dpi PNG and a PDF beside it.
DPI = 200
PALETTE = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """``path`` as a 200-dpi PNG and the same stem as PDF; returns the PNG path."""
    path = Path(path)
    with ownership.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png")
    with ownership.atomic_path(path.with_suffix(".pdf")) as tmp:
        fig.savefig(tmp, bbox_inches="tight", format="pdf")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _metric_axis(result: dict, key: str) -> str:
    """Axis title naming the metric of a score entry, in percent."""
    if key == "closed_set_score":
        metric = result.get("closed_set_metric") or "closed-set score"
        return "Acc-2 %" if metric.startswith("Acc-2") else "weighted F1 %"
    return f"{result.get('main_metric') or 'main score'} %"


def _chance(result: dict, key: str) -> float | None:
    """Chance level in percent: 1/k for a k-label closed set, 50 for Acc-2; None for the open main scores."""
    if key == "closed_set_score":
        if (result.get("closed_set_metric") or "").startswith("Acc-2"):
            return 50.0
        labels = result.get("label_set")
        return 100.0 / len(labels) if labels else None
    return 50.0 if result.get("task") == "sentiment" else None


def _limits(values, pad_fraction=0.1, floor=None, ceil=None, min_span=0.0):
    """Axis limits around ``values``, padded, at least ``min_span`` wide, within ``floor`` / ``ceil``."""
    values = [v for v in values if v is not None]
    lo, hi = min(values), max(values)
    pad = max((hi - lo) * pad_fraction, 1e-3 if hi - lo < 1 else 1.0, (min_span - (hi - lo)) / 2)
    lo, hi = lo - pad, hi + pad
    if floor is not None and lo < floor:
        lo, hi = floor, hi + (floor - lo)
    if ceil is not None and hi > ceil:
        lo, hi = (lo - (hi - ceil) if floor is None else max(floor, lo - (hi - ceil))), ceil
    return lo, hi


def plot_robustness(results: list[dict], path: Path, names: dict | None = None) -> Path:
    """Score against kappa, one panel per benchmark, one line per modality setting (Table 2 as a figure).

    Each panel uses the main score when every setting has one, else the closed-set alternative; the axis names the
    metric. Points carry their 95% bootstrap interval when the entry has ``<key>_ci`` (scores.json of
    affectverse.evaluation.runner). ``names`` maps a benchmark key to its title (default: the MER-UniBench name, or the
    key).
    """
    plt = _pyplot()
    names = names or {}
    benches = [b for b in UNIBENCH if any(r["benchmark"] == b for r in results)]
    benches += sorted({r["benchmark"] for r in results} - set(benches))
    cols = min(len(benches), 3)
    rows = -(-len(benches) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 3.2 * rows), squeeze=False, sharey=True)
    modalities = list(ABLATION_ORDER) + sorted({r["modality"] for r in results} - set(ABLATION_ORDER))
    colour = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(modalities)}
    everything, handles = [], {}
    for ax, bench in zip(axes.flat, benches):
        mine = [r for r in results if r["benchmark"] == bench]
        key = "main_score" if all(r.get("main_score") is not None for r in mine) else "closed_set_score"
        for modality in modalities:
            points = sorted((r["keep_ratio"], r) for r in mine if r["modality"] == modality and r.get(key) is not None)
            if not points:
                continue
            x = [k for k, _ in points]
            y = [r[key] for _, r in points]
            cis = [r.get(f"{key}_ci") for _, r in points]
            everything += y + [c for ci in cis if ci for c in ci]
            err = None
            if all(cis):
                err = [[v - ci[0] for v, ci in zip(y, cis)], [ci[1] - v for v, ci in zip(y, cis)]]
            n = sorted({r["n"] for _, r in points})
            label = f"{points[0][1]['ablation']} ({points[0][1]['setting']}), n={'/'.join(map(str, n))}"
            line = ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=3, color=colour[modality], label=label)
            handles.setdefault(label, line)
        chance = _chance(mine[0], key)
        if chance is not None:
            ax.axhline(chance, color="gray", ls=":", lw=1)
            handles.setdefault(f"chance ({chance:.3g}%)", ax.lines[-1])
            everything.append(chance)
        ax.set_title(names.get(bench, _name(bench)))
        ax.set_xlabel("κ (observed fraction of each clip)")
        ax.set_ylabel(_metric_axis(mine[0], key))
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(benches):]:
        ax.axis("off")
    if everything:
        axes.flat[0].set_ylim(*_limits(everything, floor=0.0, ceil=100.0, min_span=10.0))  # % points
    interval = "95% bootstrap intervals over clips" if any(r.get("main_score_ci") or r.get("closed_set_score_ci")
                                                           for r in results) else "no intervals in scores.json"
    fig.suptitle(f"Robustness to truncation and missing modalities ({interval})")
    fig.legend(list(handles.values()), list(handles), loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=min(len(handles), 3), fontsize=8, frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def plot_imagination(result: dict, path: Path, title: str = "") -> Path:
    """Table 8 as a zoomed dot plot: per-step cosine (and MSE when given) with 95% bootstrap intervals over clips.

    ``result`` is :func:`imagination_quality`'s output (``cosine_per_step``, optional ``cosine_ci``,
    ``mse_per_step``, ``mse_ci``, ``keep_ratio``, ``n_clips``).
    """
    plt = _pyplot()
    panels = [("cosine_per_step", "cosine_ci", "cosine with the real future ↑")]
    if result.get("mse_per_step"):
        panels.append(("mse_per_step", "mse_ci", "MSE to the real future ↓"))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels) + 0.6, 3.0), squeeze=False)
    for ax, (key, ci_key, ylabel) in zip(axes.flat, panels):
        values = result[key]
        steps = list(range(1, len(values) + 1))
        cis = result.get(ci_key)
        err = None
        if cis:
            err = [[v - c[0] for v, c in zip(values, cis)], [c[1] - v for v, c in zip(values, cis)]]
        ax.errorbar(steps, values, yerr=err, fmt="o", ms=5, capsize=4, color=PALETTE[0])
        for x, v in zip(steps, values):
            ax.annotate(f"{v:.4f}", (x, v), textcoords="offset points", xytext=(8, 0), fontsize=7, va="center")
        ax.set_xticks(steps)
        ax.set_xticklabels([f"step {s}" for s in steps])
        ax.set_xlim(0.5, len(steps) + 0.7)
        ax.set_ylim(*_limits(values + ([c for ci in cis for c in ci] if cis else []), pad_fraction=0.25))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, axis="y")
    interval = "95% bootstrap intervals over clips" if result.get("cosine_ci") else "no intervals"
    head = f"{title}: " if title else ""
    fig.suptitle(f"{head}imagination quality at κ = {result['keep_ratio']:g}, n = {result['n_clips']} clips "
                 f"({interval}; y-axis zoomed)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_belief_attention(result: dict, path: Path) -> Path:
    """Figure 3 (:func:`belief_attention_figure`) as a PNG and a PDF."""
    return _save(belief_attention_figure(result), path)


def belief_attention_figure(result: dict):
    """Figure 3: belief tokens B1..Bk x memory tokens V1..Vn / A1..An, with a modality-mass side panel.
    ``result``: ``{"attention": (k, n_video + n_audio) nested lists, "n_video_memory", "name"}``."""
    import numpy as np

    plt = _pyplot()
    att = np.asarray(result["attention"], dtype=float)  # (k, n_video + n_audio)
    n_video = result["n_video_memory"]
    mass = np.stack([att[:, :n_video].sum(1), att[:, n_video:].sum(1)], 1)  # (k, 2)
    fig, (ax, side) = plt.subplots(1, 2, figsize=(min(2 + 0.28 * att.shape[1], 16), 1.5 + 0.35 * att.shape[0]),
                                   gridspec_kw={"width_ratios": [5, 1]}, sharey=True)
    image = ax.imshow(att, aspect="auto", cmap="viridis")
    ax.axvline(n_video - 0.5, color="white", lw=1.5)
    ax.set_xticks(range(att.shape[1]))
    ax.set_xticklabels([f"V{i + 1}" for i in range(n_video)] + [f"A{i + 1}" for i in range(att.shape[1] - n_video)],
                       fontsize=6, rotation=90)
    ax.set_yticks(range(att.shape[0]))
    ax.set_yticklabels([f"B{i + 1}" for i in range(att.shape[0])], fontsize=7)
    ax.set_xlabel("imagined memory tokens (video | audio)")
    ax.set_title(f"MAMA belief-to-memory attention: {result.get('name', '')}")
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01)
    y = np.arange(att.shape[0])
    side.barh(y, mass[:, 0], color=PALETTE[0], label="video")
    side.barh(y, mass[:, 1], left=mass[:, 0], color=PALETTE[1], label="audio")
    side.set_xlim(0, max(1.0, float(mass.sum(1).max())))
    side.set_xlabel("attention mass")
    side.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def plot_ablation_kappa(summary: dict, path: Path, title: str = "temporal-affect clips") -> Path:
    """The miniature ablation's robustness figure (benchmarks.ablation): score against kappa per row (left) and with
    each modality removed at kappa = 1 (right), one y-scale; points are the mean over seeds with a 95% bootstrap
    interval over clips (``ci`` of a cell) or, without one, +- the std over seeds."""
    plt = _pyplot()
    rows = {k: r for k, r in summary["rows"].items() if r["seeds"]}
    kappas = [s for s in summary["settings"] if s.startswith("avt@")]
    others = ["avt@1"] + [s for s in summary["settings"] if not s.startswith("avt@")]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.6), sharey=True, gridspec_kw={"width_ratios": [3, 2]})
    everything, n_clips = [], set()
    for i, (name, r) in enumerate(rows.items()):
        colour, shift = PALETTE[i % len(PALETTE)], (i - (len(rows) - 1) / 2) * 0.006
        for ax, settings, xs in ((left, kappas, [float(s[4:]) + shift for s in kappas]),
                                 (right, others, [j + shift * 12 for j in range(len(others))])):
            cells = [r["cells"][s] for s in settings]
            keep = [j for j, c in enumerate(cells) if c["mean"] is not None]
            y = [cells[j]["mean"] for j in keep]
            if not keep:
                continue
            err = [[cells[j]["mean"] - (cells[j]["ci"][0] if cells[j].get("ci") else cells[j]["mean"] - cells[j]["std"])
                    for j in keep],
                   [(cells[j]["ci"][1] if cells[j].get("ci") else cells[j]["mean"] + cells[j]["std"]) - cells[j]["mean"]
                    for j in keep]]
            everything += [v - e for v, e in zip(y, err[0])] + [v + e for v, e in zip(y, err[1])]
            n_clips.update(str(cells[j]["n_clips"]) for j in keep)
            ax.errorbar([xs[j] for j in keep], y, yerr=err, marker="o", ms=4, capsize=3, color=colour,
                        ls="-" if ax is left else "none", label=f"{r['label']} ({len(r['seeds'])} seeds)"
                        if ax is left else None)
    for ax in (left, right):
        ax.axhline(25.0, color="gray", ls=":", lw=1, label="chance (4 labels)" if ax is left else None)
        ax.grid(alpha=0.3)
    everything.append(25.0)
    left.set_xlabel("κ (observed fraction of each test clip, A+V+T)")
    left.set_ylabel("weighted F1 % (4 labels)")
    left.invert_xaxis()
    right.set_xticks(range(len(others)))
    right.set_xticklabels(["A+V+T"] + ["No Audio" if s == "vt" else "No Video" if s == "at" else s
                                       for s in others[1:]])
    right.set_xlabel("modalities at κ = 1.0")
    left.set_ylim(*_limits(everything, floor=0.0, ceil=100.0))
    has_ci = any(c.get("ci") for r in rows.values() for c in r["cells"].values())
    interval = "95% bootstrap intervals over clips" if has_ci else "± std over seeds"
    fig.suptitle(f"Miniature ablation on {title}: mean over seeds ({interval}), n = {'/'.join(sorted(n_clips))} "
                 "clips per point and seed", fontsize=9)
    fig.legend(loc="upper left", bbox_to_anchor=(1.0, 0.9), fontsize=7, frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def plot_ablation_imagination(summary: dict, path: Path, title: str = "temporal-affect clips") -> Path:
    """The miniature ablation's imagination figure: per-step cosine and MSE (held-out, fixed kappa) per row, mean
    +- std over seeds, zoomed, with the values printed: step-to-step differences stay visible."""
    plt = _pyplot()
    rows = {k: r for k, r in summary["rows"].items() if r["imagination"] and r.get("imagination_supervised", True)}
    panels = [("cosine", "cosine with the real future ↑"), ("mse", "MSE to the real future ↓")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    meta = next(iter(rows.values()))["imagination"]
    for ax, (key, ylabel) in zip(axes, panels):
        everything = []
        for i, r in enumerate(rows.values()):
            values = r["imagination"][key]
            if not values:
                continue
            steps = [s + 1 + (i - (len(rows) - 1) / 2) * 0.08 for s in range(len(values))]
            mean = [m for m, _ in values]
            std = [s for _, s in values]
            everything += [m - s for m, s in values] + [m + s for m, s in values]
            ax.errorbar(steps, mean, yerr=std, fmt="o-", ms=4, capsize=3, lw=0.8, color=PALETTE[i % len(PALETTE)],
                        label=f"{r['label']} ({r['imagination']['n_seeds']} seeds)" if key == "cosine" else None)
        n_steps = max(len(r["imagination"]["cosine"]) for r in rows.values())
        ax.set_xticks(range(1, n_steps + 1))
        ax.set_xticklabels([f"step {s}" for s in range(1, n_steps + 1)])
        if everything:
            ax.set_ylim(*_limits(everything, pad_fraction=0.15))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"Imagination quality on held-out {title} at κ = {meta['keep_ratio']:g}, n = {meta['n_clips']} "
                 "clips per seed (mean ± std over seeds; y-axes zoomed)", fontsize=9)
    fig.legend(loc="upper left", bbox_to_anchor=(1.0, 0.9), fontsize=7, frameon=False)
    fig.tight_layout()
    return _save(fig, path)


# ------------------------------------------------------------------------------------------ model diagnostics
def imagination_quality(model, processor, rows: list[dict], keep_ratio: float = 0.7, batch_size: int = 1,
                        n_boot: int = 1000) -> dict:
    """Table 8 / Figure 4 on held-out clips: per-step cosine and MSE of the imagined with the real future, kappa fixed.

    The model runs in evaluation mode with ``config.eval_keep_ratio = keep_ratio`` and labels (the rows' answers):
    each clip is split at kappa as in training, without modality dropout or any randomness, under
    ``torch.no_grad``; the config is restored afterwards. Clips run one per forward (``batch_size`` is accepted for
    compatibility), so the 95% bootstrap intervals are over clips. Clips whose media fail to load are skipped.

    Returns:
        ``{"keep_ratio", "n_clips", "cosine_per_step": [S], "cosine_ci": [S x (lo, hi)], "mse_per_step",
        "mse_ci", "cosine_mean", "mse_mean", "imagination_loss", "skipped"}``.
    """
    import numpy as np
    import torch

    cfg = model.config
    saved = (cfg.eval_keep_ratio, model.training)
    cfg.eval_keep_ratio = float(keep_ratio)
    collator = AffectVerseCollator(processor, training=True, on_error="skip")
    cosines, mses, losses = [], [], []
    try:
        model.eval()
        with torch.no_grad():
            for row in rows:
                try:
                    batch = to_device(collator([row]), model)
                except ValueError as err:  # the clip failed to load
                    logger.warning("imagination: %s", err)
                    continue
                out = model(**batch, output_imagination=True)
                if out.imagination_cosine is None:
                    continue
                cosines.append(out.imagination_cosine.float().cpu().numpy())
                mses.append(out.imagination_mse.float().cpu().numpy())
                losses.append(float(out.imagination_loss))
    finally:
        cfg.eval_keep_ratio = saved[0]
        model.train(saved[1])
    if not cosines:
        raise ValueError("imagination_quality: no clip gave an imagination cosine (no audio/video, or all failed)")
    cos, mse = np.stack(cosines), np.stack(mses)  # (n, S)

    def intervals(values):
        return [bootstrap_interval(lambda idx, j=j: float(values[idx, j].mean()), len(values), n_boot)
                for j in range(values.shape[1])]

    return {"keep_ratio": float(keep_ratio), "n_clips": len(cos), "cosine_per_step": cos.mean(0).tolist(),
            "cosine_ci": intervals(cos), "mse_per_step": mse.mean(0).tolist(), "mse_ci": intervals(mse),
            "cosine_mean": float(cos.mean()), "mse_mean": float(mse.mean()), "imagination_loss": float(np.mean(losses)),
            "skipped": [list(s) for s in collator.skipped]}


def belief_attention(model, processor, row: dict, keep_ratio: float = 1.0) -> dict:
    """Figure 3: MAMA attention of one clip with audio and video, in eval mode (kappa = 1 unless given).

    Returns:
        ``{"name", "attention": (k, n_video + n_audio) nested lists, "n_video_memory", "n_audio_memory"}``
        with k belief tokens (2 * N_b with both modalities) and the video memory first.
    """
    import torch

    collator = AffectVerseCollator(processor, training=False, on_error="raise", keep_ratio=keep_ratio)
    batch = to_device(collator([row]), model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(**batch, output_belief_attention=True, logits_to_keep=1)
    finally:
        model.train(was_training)
    if out.belief_attention is None:
        raise ValueError(f"{row['name']}: the model returned no belief attention (belief_construction is not 'ewm')")
    cfg = model.config
    n_memory = cfg.rollout_steps * cfg.future_queries  # per modality
    ids = batch["input_ids"][0]
    has_video, has_audio = bool((ids == cfg.video_token_id).any()), bool((ids == cfg.audio_token_id).any())
    k = cfg.num_belief_queries * (2 if has_video and has_audio else 1)
    att = out.belief_attention[0, :k].float().cpu()
    return {"name": row["name"], "attention": att.tolist(), "n_video_memory": n_memory, "n_audio_memory": n_memory,
            "has_video": has_video, "has_audio": has_audio}


# ------------------------------------------------------------------------------------------------------ CLI
def calibration_table(results: list[dict]) -> tuple[list[str], list[list[str]], str]:
    """ECE / Brier of the label scores per benchmark x setting (rows) and keep ratio (columns)."""
    scored = [r for r in results if r.get("ece") is not None]
    ratios = sorted({r["keep_ratio"] for r in scored})
    cell = {(r["benchmark"], r["setting"], r["keep_ratio"]): r for r in scored}
    rows = []
    for bench, setting in dict.fromkeys((r["benchmark"], r["setting"]) for r in scored):
        found = [cell.get((bench, setting, k)) for k in ratios]
        rows.append([_name(bench), setting, *(MISSING if r is None else f"{r['ece']:.3f} / {r['brier']:.3f}"
                                              for r in found)])
    note = ("Expected calibration error (top label, 10 equal-width bins) / multi-class Brier score of the closed-set "
            "label scores, per keep ratio (the observed first fraction of each clip); lower is better.")
    return ["Benchmark", "Setting", *(_ratio(k) for k in ratios)], rows, note


def no_main_score_note(results: list[dict]) -> str:
    """Why main-score cells are empty: the emotion benchmarks' HIT / set-F score was run without the wheel."""
    names = sorted({_name(r["benchmark"]) for r in results if r.get("main_note")})
    if not names:
        return ""
    return (f"No main score for {', '.join(names)}: the MER-UniBench main score needs --emotion-wheel DIR (the "
            "emotion-wheel files); their rows are left out here, and the closed-set tables (table1_closed_set, "
            "table2_closed_set) hold the closed-set alternative.")


def manifest_title(manifest: str) -> str:
    """A figure title for a manifest's samples: its file stem, or its folder's name for a plain manifest.csv."""
    path = Path(manifest)
    return f"{path.stem if path.stem != 'manifest' else path.parent.name} (manifest)"


def imagination_table(result: dict) -> str:
    """Table 8 as markdown: per-step cosine and MSE with their 95% bootstrap intervals over clips."""
    cis = result.get("cosine_ci") or [None] * len(result["cosine_per_step"])
    mse = result.get("mse_per_step") or [None] * len(cis)
    mse_cis = result.get("mse_ci") or [None] * len(cis)

    def cell(value, ci, digits=4):
        if value is None:
            return MISSING
        return f"{value:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")

    rows = [[f"step {i + 1}", cell(c, ci), cell(m, mci)]
            for i, (c, ci, m, mci) in enumerate(zip(result["cosine_per_step"], cis, mse, mse_cis))]
    note = (f"Imagination quality at κ = {result['keep_ratio']:g} on {result['n_clips']} held-out clips: mean and 95% "
            "bootstrap interval over clips.")
    return _markdown(["Rollout step", "cosine ↑", "MSE ↓"], rows) + "\n" + note


KIND = "evaluate"  # the record of an evaluation folder (affectverse.ownership)
PREDICTIONS = "predictions.jsonl"


def owned(folder: Path) -> bool:
    """An evaluation folder from before records (``.affectverse.json``): its predictions file (or a shard of it
    left by an interrupted sharded run) is a store."""
    return any(is_store(p) for p in (folder / PREDICTIONS, *shard_files(folder / PREDICTIONS)))


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); rerun affectverse evaluate to rewrite it") from None


# Every file a report may write: one rewrite leaves none of an earlier report's files it did not write again.
REPORT_FILES = ("table1.*", "table2.*", "table1_closed_set.*", "table2_closed_set.*", "calibration.*",
                "robustness.*", "imagination.png", "imagination.pdf", "belief_attention.png", "belief_attention.pdf",
                "report.md")


def write_report(run_dir) -> list[Path]:
    """Write the tables, plots and ``report.md`` of a run folder (one ``affectverse evaluate`` wrote: any other is
    refused); return the written paths. Report files of an earlier report that this one does not write are
    removed."""
    run = Path(run_dir)
    if ownership.check_folder(run, KIND, "--run", legacy=owned) is None:
        raise FileNotFoundError(f"--run {run}: no evaluation folder there; run affectverse evaluate first")
    scores_path = run / "scores.json"
    if not scores_path.is_file():
        raise FileNotFoundError(f"{scores_path}: no scores; run affectverse.evaluation.runner to the end first")
    results = _read_json(scores_path)["results"]
    if not results:
        raise ValueError(f"{scores_path}: no scored settings")
    written, page = [], ["# AffectVerse evaluation report", ""]
    failed = [r for r in results if r.get("n_errors")]
    errors = "" if not failed else (
        f" {len(failed)} scored setting(s) include clips that failed to load (up to "
        f"{max(r['n_errors'] for r in failed)} per setting); they count as empty answers (status 'error' in "
        "predictions.jsonl).")
    no_wheel = no_main_score_note(results)
    if no_wheel:
        logger.warning("%s", no_wheel)
    for metric in METRICS:
        suffix = "" if metric == "main" else "_closed_set"
        for title, build, stem in (("Table 1", table1, "table1"), ("Table 2", table2, "table2")):
            header, rows, note = build(results, metric)
            note += errors + (f" {no_wheel}" if metric == "main" and no_wheel else "")
            written += _write(run / f"{stem}{suffix}", header, rows, note)
            page += [f"## {title} layout: {METRICS[metric][1]}", "", _markdown(header, rows), note, ""]
    if any(r.get("ece") is not None for r in results):
        header, rows, note = calibration_table(results)
        written += _write(run / "calibration", header, rows, note)
        page += ["## Calibration of the label scores (ECE / Brier by keep ratio)", "", _markdown(header, rows), note,
                 ""]
    info = _read_json(run / "run.json") if (run / "run.json").is_file() else {}
    names = {"manifest": manifest_title(info["manifest"])} if info.get("manifest") else {}
    written.append(plot_robustness(results, run / "robustness.png", names))
    page += ["## Figures", "", "![keep-ratio robustness](robustness.png)", ""]
    for name, plot, png, caption in (("imagination.json", plot_imagination, "imagination.png", "imagination (Table 8)"),
                                     ("belief_attention.json", plot_belief_attention, "belief_attention.png",
                                      "MAMA attention (Figure 3)")):
        if (run / name).is_file():
            data = _read_json(run / name)
            written.append(plot(data, run / png))
            page += [f"![{caption}]({png})", ""]
            if name == "imagination.json":
                page += [imagination_table(data), ""]
        else:
            logger.warning("%s: missing; %s not drawn", run / name, png)
    ownership.atomic_write(run / "report.md", "\n".join(page))
    written.append(run / "report.md")
    now = {p.name for p in written} | {p.with_suffix(".pdf").name for p in written if p.suffix == ".png"}
    stale = sorted({p.name for pattern in REPORT_FILES for p in run.glob(pattern)} - now)
    for name in ownership.remove_own(run, stale):
        logger.info("removed %s (an earlier report's; this one has no such table or figure)", run / name)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="affectverse report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a affectverse.evaluation.runner output folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        paths = write_report(args.run)
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
