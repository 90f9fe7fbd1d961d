"""Tables and figures of a ``benchmarks.run`` folder: ``python -m benchmarks.report --run DIR``.

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
(``benchmarks.run`` calls them and stores their JSON).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

from benchmarks.engine import to_device

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
    """``path.md`` (table and note) and ``path.csv``."""
    md, csv_path = path.with_suffix(".md"), path.with_suffix(".csv")
    md.write_text(_markdown(header, rows) + (f"\n{note}\n" if note else ""), encoding="utf-8")
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows([["" if c == MISSING else c for c in r] for r in rows])
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
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_robustness(results: list[dict], path: Path) -> Path:
    """Main score (closed-set where the main one is missing) against kappa, one panel per dataset."""
    plt = _pyplot()
    benches = [b for b in UNIBENCH if any(r["benchmark"] == b for r in results)]
    benches += sorted({r["benchmark"] for r in results} - set(benches))
    cols = min(len(benches), 3)
    rows = -(-len(benches) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, bench in zip(axes.flat, benches):
        mine = [r for r in results if r["benchmark"] == bench]
        use_main = all(r.get("main_score") is not None for r in mine)
        key = "main_score" if use_main else "closed_set_score"
        for modality in ABLATION_ORDER + tuple(sorted({r["modality"] for r in mine} - set(ABLATION_ORDER))):
            points = sorted((r["keep_ratio"], r.get(key)) for r in mine if r["modality"] == modality
                            and r.get(key) is not None)
            if points:
                label = next(f"{r['ablation']} ({r['setting']})" for r in mine if r["modality"] == modality)
                ax.plot(*zip(*points), marker="o", label=label)
        values = [r[key] for r in mine if r.get(key) is not None]
        if values:  # scores are x100: keep the axis inside [0, 100] with a margin
            pad = max(2.0, 0.15 * (max(values) - min(values)))
            ax.set_ylim(max(0.0, min(values) - pad), min(100.0, max(values) + pad))
        ax.set_title(f"{_name(bench)} ({'main' if use_main else 'closed-set'})")
        ax.set_xlabel("keep ratio kappa")
        ax.set_ylabel("score (x100)")
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(benches):]:
        ax.axis("off")
    fig.suptitle("Keep-ratio robustness (Table 2)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_imagination(result: dict, path: Path) -> Path:
    """Per-step imagination cosine (Table 8)."""
    plt = _pyplot()
    steps = result["cosine_per_step"]
    fig, ax = plt.subplots(figsize=(1.2 * len(steps) + 3, 3.2))
    bars = ax.bar([f"Step {i + 1}" for i in range(len(steps))], steps, color="#4C72B0")
    ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.axhline(result["cosine_mean"], color="gray", ls="--", lw=1, label=f"Avg Cos {result['cosine_mean']:.3f}")
    ax.set_ylim(min(0.0, min(steps) - 0.05), 1.0)
    ax.set_ylabel("cosine with the real future")
    ax.set_title(f"Imagination quality (Table 8): kappa={result['keep_ratio']:g}, {result['n_clips']} clips")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_belief_attention(result: dict, path: Path) -> Path:
    """Figure 3: belief tokens B1..Bk x memory tokens V1..Vn / A1..An, with a modality-mass side panel."""
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
    side.barh(y, mass[:, 0], color="#4C72B0", label="video")
    side.barh(y, mass[:, 1], left=mass[:, 0], color="#DD8452", label="audio")
    side.set_xlim(0, max(1.0, float(mass.sum(1).max())))
    side.set_xlabel("modality mass")
    side.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------ model diagnostics
def _batches(rows, size):
    return [rows[i:i + size] for i in range(0, len(rows), size)]


def imagination_quality(model, processor, rows: list[dict], keep_ratio: float = 0.7, batch_size: int = 4) -> dict:
    """Table 8: per-step cosine between the imagined and the real future, with kappa fixed.

    The model runs in train mode with labels (the answers of the rows' labels), ``keep_ratio_min =
    keep_ratio_max = keep_ratio`` and no modality dropout, under ``torch.no_grad``; its config and mode are
    restored afterwards. Clips whose media fail to load are skipped.

    Args:
        rows: dataset rows (``benchmarks.data``), with both modalities for the full picture.

    Returns:
        ``{"keep_ratio", "n_clips", "cosine_per_step": [S], "cosine_mean", "imagination_loss", "skipped"}``.
    """
    import torch

    from processing_affectverse import AffectVerseCollator

    cfg = model.config
    saved = (cfg.keep_ratio_min, cfg.keep_ratio_max, cfg.modality_dropout, model.training)
    cfg.keep_ratio_min = cfg.keep_ratio_max = float(keep_ratio)
    cfg.modality_dropout = 0.0
    collator = AffectVerseCollator(processor, training=True, on_error="skip")
    total, loss_sum, n = None, 0.0, 0
    try:
        model.train()
        with torch.no_grad():
            for chunk in _batches(rows, batch_size):
                try:
                    batch = to_device(collator(chunk), model)
                except ValueError as err:  # every clip of the chunk failed
                    logger.warning("imagination: %s", err)
                    continue
                out = model(**batch, output_imagination=True)
                if out.imagination_cosine is None:
                    continue
                size = batch["input_ids"].shape[0]
                cos = out.imagination_cosine.float().cpu() * size
                total = cos if total is None else total + cos
                loss_sum += float(out.imagination_loss) * size
                n += size
    finally:
        cfg.keep_ratio_min, cfg.keep_ratio_max, cfg.modality_dropout = saved[:3]
        model.train(saved[3])
    if not n:
        raise ValueError("imagination_quality: no clip gave an imagination cosine (no audio/video, or all failed)")
    steps = (total / n).tolist()
    return {"keep_ratio": float(keep_ratio), "n_clips": n, "cosine_per_step": steps,
            "cosine_mean": sum(steps) / len(steps), "imagination_loss": loss_sum / n,
            "skipped": [list(s) for s in collator.skipped]}


def belief_attention(model, processor, row: dict, keep_ratio: float = 1.0) -> dict:
    """Figure 3: MAMA attention of one clip with audio and video, in eval mode (kappa = 1 unless given).

    Returns:
        ``{"name", "attention": (k, n_video + n_audio) nested lists, "n_video_memory", "n_audio_memory"}``
        with k belief tokens (2 * N_b with both modalities) and the video memory first.
    """
    import torch

    from processing_affectverse import AffectVerseCollator

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


def write_report(run_dir) -> list[Path]:
    """Write the tables, plots and ``report.md`` of a run folder; return the written paths."""
    run = Path(run_dir)
    scores_path = run / "scores.json"
    if not scores_path.is_file():
        raise FileNotFoundError(f"{scores_path}: no scores; run benchmarks.run to the end first")
    results = json.loads(scores_path.read_text())["results"]
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
    written.append(plot_robustness(results, run / "robustness.png"))
    page += ["## Figures", "", "![keep-ratio robustness](robustness.png)", ""]
    for name, plot, png, caption in (("imagination.json", plot_imagination, "imagination.png", "imagination (Table 8)"),
                                     ("belief_attention.json", plot_belief_attention, "belief_attention.png",
                                      "MAMA attention (Figure 3)")):
        if (run / name).is_file():
            written.append(plot(json.loads((run / name).read_text()), run / png))
            page += [f"![{caption}]({png})", ""]
        else:
            logger.warning("%s: missing; %s not drawn", run / name, png)
    (run / "report.md").write_text("\n".join(page), encoding="utf-8")
    written.append(run / "report.md")
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a benchmarks.run output folder")
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
