"""Evaluate an AffectVerse checkpoint on MER-UniBench: generation, scoring and the paper's tables and figures.

``affectverse evaluate --model PATH --data-root DIR --out DIR`` runs every benchmark x modality setting x
keep ratio asked for, then scores and reports:

- **Modality settings** (Table 1): ``avt`` A+V+T (Full), ``at`` A+T (No Video), ``vt`` V+T (No Audio). A
  dropped modality is removed at the input: no frames, or no audio track (A+T reads the audio of the wav, or of
  the video file when the sample has no wav, without decoding its frames). The subtitle is always kept.
- **Keep ratios** (Table 2): the observed audio and video are cut to their first kappa at inference (the media
  loaders' ``keep_ratio``); 1.0 is the full clip.
- **Generation**: :class:`affectverse.inference.engine.Engine`: batched (left padding), greedy, AffectGPT's question;
  ``--num-workers`` DataLoader workers decode the media ahead of the model; progress as a tqdm bar with ok/error
  counts (a log line every 5% or 30 s when the output is not a terminal).
- **Predictions**: ``OUT/predictions.jsonl``, a :class:`affectverse.inference.store.PredictionStore`: a header with the
  run's settings (model fingerprint, processor, dtype, generation, extractor), then one line per clip and
  setting, fsynced per batch::

      {"setting_id": "avt-k1", "modality", "keep_ratio", "name", "benchmark", "task", "setting",
       "status": "ok" | "error", "answer", "labels", "sentiment" (sentiment benchmarks), "seconds",
       "reason" (errors)}

  ``seconds`` is the batch's media decoding + generation time divided by its clips. A rerun with the same
  ``--out`` skips every (setting, benchmark, name) already in the file, so an interrupted run resumes without
  recomputing anything (an unterminated last line is dropped); a rerun with another model or other settings stops
  with the differences (``--new-run``: a fresh folder ``OUT-2`` beside it). A clip whose media cannot be loaded is
  recorded with ``status: "error"`` and its reason; pass ``--retry-errors`` to try those again.
- **Several processes**: ``accelerate launch -m affectverse evaluate ...`` splits the clips between the processes (one
  GPU each); each writes ``predictions.shardRofN.jsonl``, the main process merges them into ``predictions.jsonl``
  and scores once. An interrupted sharded run resumes from its shards.
- **No code execution**: the project's own classes load ``--model``; its Python files run only with
  ``--trust-remote-code``.
- **Scoring** (``OUT/scores.json``): per benchmark x setting x kappa, the MER-UniBench main score (HIT, non-zero
  WAF or the OV-MERD+ set F-score, see ``affectverse/scoring/score.py``) and the closed-set alternative (weighted F1
  over the dataset's label set, or Acc-2 for sentiment), x100. A clip that failed to load counts as an empty answer.
  A manifest's own benchmarks (e.g. the synthetic clips) use the set of their ground-truth words as label set.
- **Label scores and calibration**: for the closed-set (HIT) benchmarks the engine also scores each label of the
  set as the answer (``label_scores``, ``label`` in each record; ``--no-label-scores`` skips it), and
  ``scores.json`` gets, per setting and kappa, the expected calibration error ``ece`` (top label, 10 bins) and
  the Brier score ``brier`` of those probabilities (``affectverse.scoring.scores.calibration_scores``; not x100), and
  the top label's accuracy ``label_score_accuracy`` (x100).
- **Report** (``affectverse.evaluation.report``): Table 1 / Table 2 layouts (markdown + CSV), keep-ratio robustness,
  per-step imagination cosine (Table 8) and a MAMA attention map (Figure 3) as PNGs.

Example (the synthetic clips and a tiny model; see tests/test_run.py)::

    affectverse evaluate --model ckpt/ --manifest clips/manifest.csv --split all \\
        --modalities avt,at,vt --keep-ratios 1.0,0.5 --out runs/tiny --max-new-tokens 8

Full MER-UniBench on a GPU::

    affectverse evaluate --model ckpt/ --data-root /data/merunibench --emotion-wheel /data/emotion_wheel \\
        --benchmarks mer2023,mer2024,meld,iemocap,mosi,mosei,sims,simsv2,ovmerdplus \\
        --modalities avt,at,vt --keep-ratios 1.0,0.7,0.5,0.3,0.1 --out runs/affectverse --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from affectverse import ownership
from affectverse.data.readers import BENCHMARKS as DATASETS
from affectverse.data.readers import canonical_name, label_value, load_benchmark, load_manifest
from affectverse.evaluation.report import KIND, PREDICTIONS, belief_attention, imagination_quality, owned, write_report
from affectverse.inference.engine import (
    MEDIA_ERRORS,
    MODALITIES,
    Engine,
    Modality,  # noqa: F401 - re-exported: the modality settings are part of this module's interface
    Processes,
    Setting,
    checkpoint_record,
    load_model,
    modality_row,  # noqa: F401 - re-exported
    predict_to_store,
    resolve_device,
)
from affectverse.inference.store import PredictionStore, StoreError, fresh_path
from affectverse.options import non_negative_int, positive_int, unit_fraction, unit_fractions
from affectverse.scoring.score import BENCHMARKS as SCORERS
from affectverse.scoring.score import KINDS, MAIN_METRICS
from affectverse.scoring.scores import (
    LLMExtractor,
    bootstrap_interval,
    calibration_scores,
    closed_set_scores,
    extract_labels,
    hit_score,
    ovmerd_scores,
    sentiment_from_answer,
    sentiment_scores,
)
from affectverse.scoring.wheel import load_wheel

logger = logging.getLogger(__name__)

SCORES = "scores.json"
IMAGINATION = "imagination.json"
ATTENTION = "belief_attention.json"
ERROR_SCORING = ("a clip that failed to load counts as an empty answer: no label (a miss) or, for sentiment, "
                 "neutral (which the protocol counts as negative)")


def work_key(row: dict) -> tuple:
    """A clip's key within a setting in the store."""
    return row["benchmark"], row["name"]


def store_key(benchmark: str, modality: str, keep_ratio: float, name: str) -> tuple:
    return Setting(MODALITIES[modality], keep_ratio).id, benchmark, name


# ------------------------------------------------------------------------------------------- model and data
def load_rows(args) -> dict[str, list[dict]]:
    """``{benchmark: rows}`` from ``--manifest`` (grouped by its ``benchmark`` column) or ``--data-root``."""
    split = None if args.split == "all" else args.split
    wanted = [b.strip() for b in args.benchmarks.split(",") if b.strip()] if args.benchmarks else None
    groups: dict[str, list[dict]] = {}
    if args.manifest:
        for row in load_manifest(args.manifest, split=split):
            groups.setdefault(row["benchmark"], []).append(row)
        if wanted:
            missing = sorted(set(wanted) - set(groups))
            if missing:
                raise ValueError(f"{args.manifest}: no rows for benchmark(s) {missing}; it has {sorted(groups)}")
            groups = {b: groups[b] for b in wanted}
    else:
        for name in wanted or list(DATASETS):
            groups[canonical_name(name)] = list(load_benchmark(name, args.data_root, split or "test"))
    if args.limit:
        groups = {b: rows[: args.limit] for b, rows in groups.items()}
    for bench, rows in groups.items():
        names = [r["name"] for r in rows]
        if len(set(names)) != len(names):
            raise ValueError(f"{bench}: sample names are not unique; predictions are keyed by name")
        if len({r["task"] for r in rows}) > 1:
            raise ValueError(f"{bench}: rows of several tasks {sorted({r['task'] for r in rows})}; give each task "
                             "its own 'benchmark' name in the manifest")
    return {b: rows for b, rows in groups.items() if rows}


# ------------------------------------------------------------------------------------------------ extraction
class RuleExtractor:
    """Rule-based text -> labels (``extract_labels``) and sentiment (``sentiment_from_answer``)."""

    name = "rule"

    def labels(self, answers: Sequence[str]) -> list[list[str]]:
        return [extract_labels(a) for a in answers]

    def sentiments(self, answers: Sequence[str], label_lists: Sequence[list[str]]) -> list[str]:
        return [sentiment_from_answer(a) for a in answers]


class LLMLabeler:
    """The official two-step LLM extraction (answer -> label list -> sentiment), see ``LLMExtractor``."""

    name = "llm"

    def __init__(self, model_path: str, device: str | None = None, batch_size: int = 8):
        self.llm = LLMExtractor(model_path, device=device, batch_size=batch_size)

    def labels(self, answers):
        return self.llm.labels(answers)

    def sentiments(self, answers, label_lists):
        return self.llm.sentiments(label_lists)


# ------------------------------------------------------------------------------------------------ generation
def to_records(extractor, setting: Setting, rows: list[dict], results: list[dict]) -> list[dict]:
    """Prediction records for one engine batch (errors included), in row order."""
    ok = [i for i, r in enumerate(results) if r["status"] == "ok"]
    answers = [results[i]["answer"] for i in ok]
    labels = dict(zip(ok, extractor.labels(answers))) if answers else {}
    sentiment = [i for i in ok if rows[i]["task"] == "sentiment"]
    sentiments = dict(zip(sentiment, extractor.sentiments([results[i]["answer"] for i in sentiment],
                                                          [labels[i] for i in sentiment]))) if sentiment else {}
    records = []
    for i, (row, result) in enumerate(zip(rows, results)):
        record = {"name": row["name"], "benchmark": row["benchmark"], "task": row["task"],
                  "setting": setting.modality.name, "status": result["status"]}
        if result["status"] == "error":
            record.update(reason=result["reason"], answer="", labels=[])
        else:
            record.update(answer=result["answer"], labels=labels[i])
            if "label_scores" in result:  # closed-set benchmarks: each label's probability as the answer
                record.update(label=result["label"], label_scores=result["label_scores"])
            if i in sentiments:
                record["sentiment"] = sentiments[i]
        record["seconds"] = result["seconds"]
        records.append(record)
    return records


def predict(groups, modalities, keep_ratios, args, run_record: dict, get_model) -> tuple[bool, PredictionStore]:
    """Run every pending (benchmark, modality, kappa, clip); False when ``--max-batches`` stopped the run early."""
    work = []
    for bench, rows in groups.items():
        for modality in modalities:
            for kappa in keep_ratios:
                setting = Setting(modality, kappa)
                work += [(setting, row) for row in rows]
    extractor = []
    label_sets = {} if args.no_label_scores else closed_label_sets(groups)

    def make_engine():
        model, processor = get_model()
        extractor.append(RuleExtractor() if args.extractor == "rule" else
                         LLMLabeler(args.extractor_model, device=str(model.device), batch_size=args.batch_size))
        return Engine(model, processor, args.max_new_tokens, args.batch_size, args.num_workers,
                      labels=lambda row: label_sets.get(row["benchmark"]))

    finished, store, _ = predict_to_store(
        Path(args.out) / PREDICTIONS, run_record, str(args.model), ("benchmark", "name"), work, work_key,
        make_engine, lambda setting, rows, results: to_records(extractor[0], setting, rows, results),
        retry_errors=args.retry_errors, max_batches=args.max_batches, desc="generating",
        claim=lambda: claim(Path(args.out)))
    return finished, store


# --------------------------------------------------------------------------------------------------- scoring
def _pct(value) -> float | None:
    return None if value is None else round(float(value) * 100, 2)


def label_set_of(benchmark: str, gts: list) -> tuple[str, ...]:
    """The closed label set: the benchmark's own (MER-UniBench) or, for a manifest, its ground-truth words."""
    if benchmark in SCORERS and SCORERS[benchmark].label_set:
        return SCORERS[benchmark].label_set
    return tuple(sorted({str(g).lower().strip() for g in gts}))


def closed_label_sets(groups) -> dict[str, list[str]]:
    """``{benchmark: label set}`` of the closed-set (HIT) benchmarks: the engine scores each of its labels."""
    return {bench: list(label_set_of(bench, [label_value(r) for r in rows])) for bench, rows in groups.items()
            if KINDS[rows[0]["task"]] == "hit"}


def _interval(score, values: tuple[list, list], n_boot: int) -> list[float] | None:
    """95% bootstrap interval over clips, x100, of ``score(truths, predictions)`` (None when ``n_boot`` is 0)."""
    truths, preds = values
    ci = bootstrap_interval(lambda idx: score([truths[i] for i in idx], [preds[i] for i in idx]), len(truths),
                            n_boot) if n_boot else None
    return None if ci is None else [_pct(ci[0]), _pct(ci[1])]


def score_setting(benchmark: str, task: str, gts: list, records: list[dict], wheel, n_boot: int = 0) -> dict:
    """Main score (MER-UniBench) and the closed-set alternative for one benchmark x setting x kappa, x100, each
    with its 95% bootstrap interval over clips (``<key>_ci``) when ``n_boot`` > 0."""
    kind = KINDS[task]
    preds = [r["labels"] if r.get("status") == "ok" else [] for r in records]
    out = {"main_metric": MAIN_METRICS[kind], "main_score": None}
    if kind == "sentiment":
        sentiments = [r.get("sentiment", "") if r.get("status") == "ok" else "" for r in records]
        s = sentiment_scores(gts, sentiments)
        out.update(main_score=_pct(s["weighted_f1"]), acc2=_pct(s["acc2"]), n_scored=s["n_scored"],
                   closed_set_metric="Acc-2 (non-zero)", closed_set_score=_pct(s["acc2"]),
                   main_score_ci=_interval(lambda g, p: sentiment_scores(g, p)["weighted_f1"], (gts, sentiments),
                                           n_boot),
                   closed_set_score_ci=_interval(lambda g, p: sentiment_scores(g, p)["acc2"], (gts, sentiments),
                                                 n_boot))
        return out
    if wheel is None:
        out["main_note"] = "needs --emotion-wheel"
    elif kind == "hit":
        s = hit_score(gts, preds, wheel)
        out.update(main_score=_pct(s["hit"]), per_wheel=[_pct(v) for v in s["per_wheel"]], n_scored=s["n_scored"],
                   main_score_ci=_interval(lambda g, p: hit_score(g, p, wheel)["hit"], (gts, preds), n_boot))
    else:
        s = ovmerd_scores(gts, preds, wheel)
        out.update(main_score=_pct(s["f1"]), precision=_pct(s["precision"]), recall=_pct(s["recall"]),
                   n_scored=s["n_scored"],
                   main_score_ci=_interval(lambda g, p: ovmerd_scores(g, p, wheel)["f1"], (gts, preds), n_boot))
    if kind == "hit":
        label_set = label_set_of(benchmark, gts)
        c = closed_set_scores(gts, preds, label_set)
        out.update(closed_set_metric="weighted F1 over the label set", closed_set_score=_pct(c["weighted_f1"]),
                   closed_set_accuracy=_pct(c["accuracy"]), closed_set_n_unmapped=c["n_unmapped"],
                   label_set=list(label_set),
                   closed_set_score_ci=_interval(lambda g, p: closed_set_scores(g, p, label_set)["weighted_f1"],
                                                 (gts, preds), n_boot))
        probs = [r.get("label_scores") if r.get("status") == "ok" else None for r in records]
        if any(probs):  # calibration of the label scores (ECE in [0, 1], Brier in [0, 2]; not x100)
            cal = calibration_scores(gts, probs, label_set)
            out.update(ece=round(cal["ece"], 4), brier=round(cal["brier"], 4),
                       label_score_accuracy=_pct(cal["accuracy"]), n_calibrated=cal["n_scored"])
    else:
        out.update(closed_set_metric=None, closed_set_score=None)  # open vocabulary: no closed label set
    return out


def score_run(groups, modalities, keep_ratios, store, wheel, n_boot: int = 0) -> dict:
    """``scores.json``: one entry per benchmark x modality x kappa that has a prediction for every clip."""
    results = []
    for bench, rows in groups.items():
        task = rows[0]["task"]
        gts = [label_value(r) for r in rows]
        for modality in modalities:
            for kappa in keep_ratios:
                records = [store.records.get(store_key(bench, modality.key, kappa, r["name"])) for r in rows]
                if any(r is None for r in records):
                    logger.warning("%s %s kappa=%g: %d clips have no prediction; not scored", bench, modality.name,
                                   kappa, sum(r is None for r in records))
                    continue
                entry = {"benchmark": bench, "task": task, "modality": modality.key, "setting": modality.name,
                         "ablation": modality.ablation, "keep_ratio": float(kappa), "n": len(rows),
                         "n_errors": sum(r["status"] == "error" for r in records),
                         "seconds_per_clip": round(sum(r["seconds"] for r in records) / len(records), 4)}
                entry.update(score_setting(bench, task, gts, records, wheel, n_boot))
                results.append(entry)
    return {"errors": ERROR_SCORING, "results": results}


# ------------------------------------------------------------------------------------------------------- CLI
def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="affectverse evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="AffectVerse checkpoint folder (model + processor)")
    src = p.add_argument_group("data")
    src.add_argument("--data-root", help="folder of the packaged MER-UniBench benchmarks (*-process folders)")
    src.add_argument("--manifest", help="CSV/JSONL manifest (affectverse.data.readers.load_manifest), grouped by its "
                                        "'benchmark' column; replaces --data-root as the source of samples")
    p.add_argument("--benchmarks", default=None,
                   help="comma-separated, e.g. mer2023,meld (default: all nine, or every benchmark of the manifest)")
    p.add_argument("--split", default="test", help="test (MER-UniBench), train, val, or all (manifests)")
    p.add_argument("--modalities", default="avt,at,vt", help=f"comma-separated of {list(MODALITIES)}")
    p.add_argument("--keep-ratios", default="1.0", type=unit_fractions,
                   help="comma-separated kappa in (0, 1], e.g. 1.0,0.7,0.5,0.3,0.1")
    p.add_argument("--out", required=True, help="run folder (predictions, scores, tables, plots); reruns resume; a "
                                                "folder evaluate did not write is refused")
    p.add_argument("--batch-size", type=positive_int, default=4)
    p.add_argument("--device", default=None, help="cpu or cuda[:i] (default: this process's GPU under accelerate "
                                                  "launch, else cuda when available)")
    p.add_argument("--num-workers", type=non_negative_int, default=2,
                   help="DataLoader workers decoding media ahead of the model")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="load the model folder with its own Python code (default: the project's classes; the "
                        "folder's code never runs)")
    p.add_argument("--new-run", action="store_true",
                   help="start a fresh run in a new folder beside --out (OUT-2, ...) instead of resuming OUT")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--max-new-tokens", type=positive_int, default=64)
    p.add_argument("--emotion-wheel", default=None,
                   help="emotion_wheel folder (HIT, OV-MERD+); default: DATA_ROOT/emotion_wheel when it exists")
    p.add_argument("--extractor", choices=["rule", "llm"], default="rule", help="answer -> labels/sentiment")
    p.add_argument("--extractor-model", default=None, help="local causal LM for --extractor llm (Qwen2.5-7B-Instruct)")
    p.add_argument("--limit", type=positive_int, default=None, help="first N clips of each benchmark (smoke runs)")
    p.add_argument("--max-batches", type=positive_int, default=None, help="stop after N new batches (resume later)")
    p.add_argument("--retry-errors", action="store_true", help="run clips recorded as errors again")
    p.add_argument("--imagination-clips", type=non_negative_int, default=8,
                   help="clips for the Table 8 imagination cosine (0: skip the imagination and attention plots)")
    p.add_argument("--imagination-keep-ratio", type=unit_fraction, default=0.7, help="kappa fixed for Table 8")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bootstrap", type=non_negative_int, default=200,
                   help="bootstrap resamples over clips for the 95%% intervals of every score (0: none)")
    p.add_argument("--no-label-scores", action="store_true",
                   help="skip the closed-set label scores (and so ECE / Brier) of the HIT benchmarks")
    args = p.parse_args(argv)
    if not (args.data_root or args.manifest):
        p.error("give --data-root or --manifest")
    if args.data_root and args.manifest:
        logger.warning("--manifest gives the samples; --data-root is used only to find DATA_ROOT/emotion_wheel")
    if args.extractor == "llm" and not args.extractor_model:
        p.error("--extractor llm needs --extractor-model")
    try:
        args.modality_list = [MODALITIES[m.strip()] for m in args.modalities.split(",") if m.strip()]
    except KeyError as err:
        p.error(f"unknown modality setting {err.args[0]!r}; choose from {list(MODALITIES)}")
    args.keep_ratio_list = list(dict.fromkeys(args.keep_ratios))
    if args.emotion_wheel is None and args.data_root and (Path(args.data_root) / "emotion_wheel").is_dir():
        args.emotion_wheel = str(Path(args.data_root) / "emotion_wheel")
    return args


def diagnostics(get_model, groups, args, out: Path):
    """Table 8 (imagination cosine) and Figure 3 (MAMA attention) data, computed once per run folder."""
    rows = [r for rs in groups.values() for r in rs][: max(args.imagination_clips, 0)]
    if not rows or ((out / IMAGINATION).exists() and (out / ATTENTION).exists()):
        return
    model, processor = get_model()
    if not (out / IMAGINATION).exists():
        try:
            result = imagination_quality(model, processor, rows, keep_ratio=args.imagination_keep_ratio,
                                         batch_size=args.batch_size)
            ownership.atomic_write(out / IMAGINATION, json.dumps(result, indent=2))
        except ValueError as err:  # e.g. every clip failed to load: the run's results stand without the plot
            logger.warning("imagination quality not computed: %s", err)
    if not (out / ATTENTION).exists():
        for row in rows:  # the first clip whose media load
            try:
                result = belief_attention(model, processor, row)
            except MEDIA_ERRORS as err:
                logger.warning("belief attention: skipping %s (%s)", row["name"], err)
                continue
            ownership.atomic_write(out / ATTENTION, json.dumps(result, indent=2))
            break


def main(argv=None) -> int:
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)
    procs = Processes()
    try:
        groups = load_rows(args)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    if not groups:
        raise SystemExit("error: no samples to evaluate")
    out = Path(args.out)
    if args.new_run:  # the main process's choice holds for every process
        out = Path(procs.from_main(str(fresh_path(out) if (out / PREDICTIONS).exists() else out)))
        logger.info("--new-run: a fresh run in %s", out)
    args.out = str(out)
    try:  # a folder evaluate did not write is refused before anything else (and nothing is created yet)
        ownership.check_folder(out, KIND, legacy=owned)
    except ownership.OwnershipError as err:
        raise SystemExit(f"error: {err}") from None
    procs.barrier()
    wheel = None
    if args.emotion_wheel and any(rows[0]["task"] != "sentiment" for rows in groups.values()):
        wheel = load_wheel(args.emotion_wheel)
    device, dtype = resolve_device(args.device, args.dtype)
    loaded = []

    def get_model():
        if not loaded:
            loaded.extend(load_model(args.model, device, dtype, args.trust_remote_code))
        return loaded

    record = {"model": checkpoint_record(args.model), "dtype": str(dtype).replace("torch.", ""),
              "generation": {"max_new_tokens": args.max_new_tokens, "do_sample": False},
              "extractor": {"name": args.extractor, "model": args.extractor_model},
              # only when on: a run folder of an earlier version resumes with --no-label-scores
              **({} if args.no_label_scores else {"label_scores": True})}
    t0 = time.perf_counter()
    try:
        finished, store = predict(groups, args.modality_list, args.keep_ratio_list, args, record, get_model)
    except StoreError as err:
        raise SystemExit(f"error: {err}") from None
    logger.info("generation: %.1f s", time.perf_counter() - t0)
    if not procs.main:
        return 0
    claim(out)
    ownership.atomic_write(out / "run.json", json.dumps({
        "model": str(Path(args.model).resolve()), "device": str(device), "dtype": record["dtype"],
        "benchmarks": {b: len(r) for b, r in groups.items()}, "modalities": [m.key for m in args.modality_list],
        "keep_ratios": args.keep_ratio_list, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
        "extractor": args.extractor, "emotion_wheel": args.emotion_wheel, "split": args.split,
        "manifest": args.manifest, "processes": procs.world}, indent=2))
    if not finished:
        return 0
    scores = score_run(groups, args.modality_list, args.keep_ratio_list, store, wheel, args.bootstrap)
    ownership.atomic_write(out / SCORES, json.dumps(scores, indent=2))
    if args.imagination_clips > 0:
        diagnostics(get_model, groups, args, out)
    for path in write_report(out):
        logger.info("wrote %s", path)
    return 0


def claim(out: Path):
    """The evaluation folder, created with its record (or an earlier one's record added) when first written."""
    return ownership.claim_folder(out, KIND, legacy=owned)


if __name__ == "__main__":
    sys.exit(main())
