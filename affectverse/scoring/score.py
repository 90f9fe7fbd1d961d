"""Score MER-UniBench predictions: ``affectverse score --benchmark NAME --labels FILE --predictions FILE``.

Prints JSON: the official main score (x100, two decimals), Acc-2 / precision / recall where they apply,
the number of scored samples, and for emotion-set benchmarks the closed-set alternative
(``closed_set_weighted_f1``, ``closed_set_accuracy``), named apart from the official HIT.

Predictions are either our JSONL (one object per line: ``name`` and ``labels`` (list) or ``answer`` (free
text, labels then extracted by rule); optional ``sentiment``; a prediction store of ``affectverse predict`` or
``affectverse.evaluation.runner`` works as is: lines of other benchmarks are skipped, and a file holding several
settings needs
``--modality`` / ``--keep-ratio`` to choose one) or AffectGPT's ``-openset.npz`` /
``-openset-sentiment.npz`` / raw ``checkpoint_*.npz`` (``name2reason``). Give ``--predictions`` several
times, or a folder, to score checkpoints side by side; the best one is then picked by the oracle rule of
AffectGPT's table (highest main score).

Example:
    affectverse score --benchmark mer2023 \\
        --labels shared/merunibench/labels/mer2023-dataset-process/label-6way.npz \\
        --predictions shared/merunibench/affectgpt_outputs/results-mer2023 \\
        --emotion-wheel shared/merunibench/emotion_wheel
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from affectverse.data import readers as data
from affectverse.data.safe_npz import load_npz
from affectverse.inference.store import FORMAT as STORE_FORMAT
from affectverse.scoring.scores import (
    closed_set_scores,
    extract_labels,
    hit_score,
    ovmerd_scores,
    sentiment_from_labels,
    sentiment_scores,
)
from affectverse.scoring.wheel import EmotionWheelError, load_wheel, parse_label_list

logger = logging.getLogger(__name__)

SELECTION_RULE = "oracle best main score, as AffectGPT's table does (first checkpoint in name order on ties)"
MER_LABELS = ("neutral", "angry", "happy", "sad", "worried", "surprise")
MAIN_METRICS = {
    "hit": "HIT (mean over the 5 emotion wheels)",
    "sentiment": "non-zero weighted F1 (WAF)",
    "ovmerd": "emotion-wheel level-1 set F-score (mean over the 5 wheels)",
}
KINDS = {"emotion": "hit", "sentiment": "sentiment", "openset": "ovmerd"}  # data.py task -> scorer


@dataclass(frozen=True)
class Benchmark:
    """How a benchmark is scored; where its labels live is ``affectverse.data.readers.BENCHMARKS[name]``."""

    kind: str  # "hit" | "sentiment" | "ovmerd"
    label_file: str  # default file name inside the dataset folder
    label_set: tuple[str, ...] | None = None  # closed label set of the emotion benchmarks


def _label_set(spec: data.BenchmarkSpec) -> tuple[str, ...] | None:
    if spec.task != "emotion":
        return None
    return spec.classes or MER_LABELS  # MER2023/MER2024 store the words themselves


BENCHMARKS = {
    name: Benchmark(KINDS[spec.task], spec.label_file, _label_set(spec)) for name, spec in data.BENCHMARKS.items()
}


# ------------------------------------------------------------------------------------------------ labels
def _read_ov_labels(path: Path) -> dict[str, list[str]]:
    """OV-MERD+ sets as written (an empty set stays ``[]``; ``data.py``'s reader turns it into ``["neutral"]``)."""
    frame = pd.read_csv(path)
    missing = {"name", "openset"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}; found {list(frame.columns)}")
    return {str(name): parse_label_list(openset) for name, openset in zip(frame["name"], frame["openset"])}


def _read_npz_labels(benchmark: str, path: Path) -> dict[str, object]:
    """The test split of a label npz through ``affectverse.data.readers``'s reader, with its errors as ValueError."""
    try:
        labels = data.npz_labels(path, data.BENCHMARKS[benchmark], "test")
    except KeyError as err:  # data.py names a missing split key itself; a missing field is a bare key
        message = str(err.args[0]) if err.args else ""
        raise ValueError(message if message.startswith(str(path)) else f"{path}: a sample has no {message!r} field") \
            from None
    except (TypeError, ValueError, IndexError, AttributeError) as err:
        raise ValueError(f"{path}: malformed {benchmark} label file ({type(err).__name__}: {err})") from None
    return {name: value if isinstance(value, float) else value.lower().strip() for name, value in labels.items()}


def read_labels(benchmark: str, path: str | Path) -> dict[str, object]:
    """Ground truth ``{name: label}`` (hit), ``{name: valence}`` (sentiment) or ``{name: [labels]}`` (ovmerd).

    ``path`` is the label file or the dataset folder holding it under its usual name. The npz files are read
    by :mod:`affectverse.data.readers` (the test split, IEMOCAP Session 5, integer classes as words).
    """
    bench = BENCHMARKS[benchmark]
    path = Path(path)
    path = path / bench.label_file if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: label file not found (expected {bench.label_file} for {benchmark})")
    labels = _read_ov_labels(path) if bench.kind == "ovmerd" else _read_npz_labels(benchmark, path)
    if not labels:
        raise ValueError(f"{path}: no ground-truth samples for {benchmark}")
    return labels


# ------------------------------------------------------------------------------------------- predictions
@dataclass
class Predictions:
    """One checkpoint's predictions; either field may be missing."""

    source: Path
    labels: dict[str, list[str]] | None = None
    sentiments: dict[str, str] | None = None


def _jsonl_rows(path: Path, benchmark: str | None) -> list[tuple[int, dict]]:
    """(line number, object) of the prediction lines; a prediction store's header and setting lines are skipped,
    and so are lines of another ``benchmark`` (a ``affectverse.evaluation.runner`` file holds every benchmark of the
    run)."""
    rows = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{line_no}: not JSON ({err.msg})") from err
        if isinstance(row, dict) and (row.get("format") == STORE_FORMAT or row.get("kind") == "setting"):
            continue
        if not isinstance(row, dict) or "name" not in row:
            raise ValueError(f"{path}:{line_no}: each line needs an object with a 'name'")
        if benchmark is not None and row.get("benchmark", benchmark) != benchmark:
            continue
        rows.append((line_no, row))
    return rows


def _one_setting(path: Path, rows: list, modality: str | None, keep_ratio: float | None) -> list:
    """The rows of one setting (modality x keep ratio): the one chosen, or the only one in the file."""
    def setting(row):
        kappa = row.get("keep_ratio")
        return row.get("modality"), None if kappa is None else round(float(kappa), 6)

    for field, wanted in (("modality", modality), ("keep_ratio", keep_ratio)):
        if wanted is not None and any(field not in row for _, row in rows):
            raise ValueError(f"{path}: --{field.replace('_', '-')} given but its lines have no {field!r} field")
    rows = [(n, r) for n, r in rows if (modality is None or r["modality"] == modality)
            and (keep_ratio is None or round(float(r["keep_ratio"]), 6) == round(float(keep_ratio), 6))]
    found = sorted({setting(r) for _, r in rows}, key=str)
    if len(found) > 1:
        names = ", ".join(f"modality={m} keep_ratio={k:g}" if k is not None else f"modality={m}" for m, k in found)
        raise ValueError(f"{path}: holds predictions of {len(found)} settings ({names}); choose one with "
                         "--modality and/or --keep-ratio")
    if not rows and (modality is not None or keep_ratio is not None):
        raise ValueError(f"{path}: no predictions with modality={modality} keep_ratio={keep_ratio}")
    return rows


def _read_jsonl(path: Path, benchmark: str | None = None, modality: str | None = None,
                keep_ratio: float | None = None) -> Predictions:
    labels, sentiments = {}, {}
    for line_no, row in _one_setting(path, _jsonl_rows(path, benchmark), modality, keep_ratio):
        name = str(row["name"])
        if "labels" in row:
            labels[name] = [label.lower() for label in parse_label_list(row["labels"])]
        elif "answer" in row:
            labels[name] = extract_labels(row["answer"])
        if "sentiment" in row:
            sentiments[name] = str(row["sentiment"]).lower().strip()
        if "labels" not in row and "answer" not in row and "sentiment" not in row:
            raise ValueError(f"{path}:{line_no}: sample {name} has neither 'labels', 'answer' nor 'sentiment'")
    return Predictions(path, labels or None, sentiments or None)


def _read_affectgpt_npz(path: Path) -> Predictions:
    arrays = load_npz(path)
    if "name2reason" in arrays:  # raw answers: rule-based extraction
        reasons = arrays["name2reason"]
        return Predictions(path, labels={str(n): extract_labels(r) for n, r in reasons.items()})
    if not {"filenames", "fileitems"} <= set(arrays):
        raise ValueError(
            f"{path}: expected arrays 'filenames' and 'fileitems' (or 'name2reason'); found {sorted(arrays)}"
        )
    names, items = [str(n) for n in arrays["filenames"]], [str(i) for i in arrays["fileitems"]]
    if len(names) != len(items):
        raise ValueError(f"{path}: {len(names)} filenames but {len(items)} fileitems")
    if path.name.endswith("-openset-sentiment.npz"):
        return Predictions(path, sentiments={n: i.lower().strip() for n, i in zip(names, items)})
    return Predictions(path, labels={n: [x.lower() for x in parse_label_list(i)] for n, i in zip(names, items)})


def read_predictions(path: str | Path, benchmark: str | None = None, modality: str | None = None,
                     keep_ratio: float | None = None) -> Predictions:
    """Predictions from a ``.jsonl`` file or an AffectGPT ``.npz`` file.

    A ``.jsonl`` holding several settings (a ``affectverse.evaluation.runner`` file: modality x keep ratio per clip) is
    refused
    unless ``modality`` / ``keep_ratio`` choose one; lines of another ``benchmark`` are skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: predictions file not found")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: predictions file is empty")
    if path.suffix == ".jsonl":
        preds = _read_jsonl(path, benchmark, modality, keep_ratio)
    elif modality is not None or keep_ratio is not None:
        raise ValueError(f"{path}: --modality / --keep-ratio apply to .jsonl predictions only")
    else:
        preds = _read_affectgpt_npz(path)
    if not (preds.labels or preds.sentiments):
        raise ValueError(f"{path}: no predictions in the file")
    return preds


_NPZ_SUFFIXES = ("-openset-sentiment.npz", "-openset.npz", ".npz")


def _checkpoint_stem(name: str) -> tuple[str, int]:
    """``checkpoint_30-openset.npz`` -> ("checkpoint_30", 1): its stem and the rank of its suffix."""
    for rank, suffix in enumerate(_NPZ_SUFFIXES):
        if name.endswith(suffix):
            return name[: -len(suffix)], rank
    raise ValueError(name)


def expand_predictions(paths: Sequence[str | Path], kind: str) -> list[Path]:
    """Files to score: files as given; a folder gives its ``.jsonl`` files and one ``.npz`` per checkpoint.

    Per checkpoint stem, the preferred npz is ``-openset-sentiment`` (sentiment benchmarks only), then
    ``-openset``, then the raw ``name2reason`` file.
    """
    files: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            files.append(path)
            continue
        chosen: dict[str, tuple[int, Path]] = {}
        for npz in sorted(path.glob("*.npz")):
            stem, rank = _checkpoint_stem(npz.name)
            if kind != "sentiment" and rank == 0:
                continue
            if stem not in chosen or rank < chosen[stem][0]:
                chosen[stem] = (rank, npz)
        found = sorted(path.glob("*.jsonl")) + sorted((npz for _, npz in chosen.values()), key=lambda p: p.name)
        if not found:
            raise ValueError(f"{path}: no .jsonl or .npz predictions in the folder")
        files.extend(found)
    return files


def _aligned(gt: dict, pred: dict, source: Path, what: str) -> list:
    """Predictions in ground-truth order; unknown or missing names are errors."""
    unknown = sorted(set(pred) - set(gt))
    if unknown:
        raise ValueError(f"{source}: {len(unknown)} {what} for names not in the labels, e.g. {unknown[:5]}")
    missing = sorted(set(gt) - set(pred))
    if missing:
        raise ValueError(f"{source}: no {what} for {len(missing)} of {len(gt)} labelled samples, e.g. {missing[:5]}")
    return [pred[name] for name in gt]


# ------------------------------------------------------------------------------------------------ scoring
def _pct(value: float) -> float:
    return round(float(value) * 100, 2)


def _score_hit(bench: Benchmark, gt: dict, preds: Predictions, wheel) -> dict:
    if preds.labels is None:
        raise ValueError(f"{preds.source}: holds no label lists, which {MAIN_METRICS['hit']} needs")
    pred = _aligned(gt, preds.labels, preds.source, "label lists")
    hit = hit_score(list(gt.values()), pred, wheel)
    closed = closed_set_scores(list(gt.values()), pred, bench.label_set)
    return {
        "main_score": _pct(hit["hit"]),
        "per_wheel": [_pct(v) for v in hit["per_wheel"]],
        "n_scored": hit["n_scored"],
        "closed_set_weighted_f1": _pct(closed["weighted_f1"]),
        "closed_set_accuracy": _pct(closed["accuracy"]),
        "closed_set_n_unmapped": closed["n_unmapped"],
    }


def _score_sentiment(bench: Benchmark, gt: dict, preds: Predictions, wheel) -> dict:
    if preds.sentiments is not None:
        pred, source = _aligned(gt, preds.sentiments, preds.source, "sentiments"), "file"
    elif preds.labels is not None:
        labels = _aligned(gt, preds.labels, preds.source, "label lists")
        pred, source = [sentiment_from_labels(x) for x in labels], "rule-based from labels"
        logger.warning("%s: no sentiments given; derived them from the labels by word lists", preds.source)
    else:
        raise ValueError(f"{preds.source}: holds neither sentiments nor labels")
    scores = sentiment_scores(list(gt.values()), pred)
    return {
        "main_score": _pct(scores["weighted_f1"]),
        "acc2": _pct(scores["acc2"]),
        "n_scored": scores["n_scored"],
        "sentiment_source": source,
    }


def _score_ovmerd(bench: Benchmark, gt: dict, preds: Predictions, wheel) -> dict:
    if preds.labels is None:
        raise ValueError(f"{preds.source}: holds no label lists, which {MAIN_METRICS['ovmerd']} needs")
    scores = ovmerd_scores(list(gt.values()), _aligned(gt, preds.labels, preds.source, "label lists"), wheel)
    return {
        "main_score": _pct(scores["f1"]),
        "precision": _pct(scores["precision"]),
        "recall": _pct(scores["recall"]),
        "n_scored": scores["n_scored"],
    }


_SCORERS = {"hit": _score_hit, "sentiment": _score_sentiment, "ovmerd": _score_ovmerd}


def score(benchmark: str, labels: str | Path, predictions: Sequence[str | Path], emotion_wheel=None,
          modality: str | None = None, keep_ratio: float | None = None) -> dict:
    """Score one or more prediction files; the JSON-ready report of the CLI (``modality`` / ``keep_ratio``
    choose one setting of a file that holds several)."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose from {sorted(BENCHMARKS)}")
    bench = BENCHMARKS[benchmark]
    wheel = None
    if bench.kind != "sentiment":
        if emotion_wheel is None:
            raise ValueError(f"{benchmark} needs --emotion-wheel (the folder of format.csv, synonym.xlsx, "
                             "wheel1..5.xlsx)")
        wheel = load_wheel(emotion_wheel)
    gt = read_labels(benchmark, labels)
    files = expand_predictions(predictions, bench.kind)
    results = [
        {"predictions": str(f),
         **_SCORERS[bench.kind](bench, gt, read_predictions(f, benchmark, modality, keep_ratio), wheel)}
        for f in files
    ]
    report = {"benchmark": benchmark, "main_metric": MAIN_METRICS[bench.kind], "n_labels": len(gt)}
    if modality is not None or keep_ratio is not None:
        report.update(modality=modality, keep_ratio=keep_ratio)
    if len(results) == 1:
        return {**report, **results[0]}
    best = int(np.argmax([r["main_score"] for r in results]))
    return {**report, "checkpoints": results, "best": results[best], "selection_rule": SELECTION_RULE}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="affectverse score", description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", required=True, choices=sorted(BENCHMARKS))
    parser.add_argument("--labels", required=True, help="label file (or the dataset folder holding it)")
    parser.add_argument(
        "--predictions", required=True, action="append", help="a .jsonl / .npz file or a folder; repeatable"
    )
    parser.add_argument("--emotion-wheel", help="emotion_wheel folder (needed except for sentiment benchmarks)")
    parser.add_argument("--modality", help="score this modality setting of a multi-setting file (avt, at, vt)")
    parser.add_argument("--keep-ratio", type=float, help="score this keep ratio of a multi-setting file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = score(args.benchmark, args.labels, args.predictions, args.emotion_wheel, args.modality,
                       args.keep_ratio)
    except (ValueError, FileNotFoundError, EmotionWheelError) as err:
        parser.exit(2, f"error: {err}\n")
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
