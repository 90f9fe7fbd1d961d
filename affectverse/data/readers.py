"""Dataset readers: the nine MER-UniBench benchmarks, MELD's and MMSA's original releases, and manifests.

Every reader returns a :class:`datasets.Dataset` with the columns of :data:`FEATURES`:

- ``name``: sample id (``sample_00002721``, ``test_dia12_utt3``, ``Ses05F_script03_1_F033``, ...);
- ``benchmark``: ``mer2023``, ``mer2024``, ``meld``, ``iemocap``, ``mosi``, ``mosei``, ``sims``, ``simsv2``,
  ``ovmerdplus`` (or what a manifest names); ``task``: ``emotion``, ``sentiment`` or ``openset``;
- ``split``: ``train``, ``val`` or ``test``;
- ``video``, ``audio``: absolute paths (not opened here). ``audio`` is ``""`` when the sample's audio is
  the video's own track (MELD and MMSA originals, manifests without a wav);
- ``subtitle``: the transcript, ``""`` where the subtitle file has an empty cell or no row;
- the label, typed, in the one of three columns that applies (the other two are None, so every benchmark
  shares one schema and merges): ``emotion`` (``str``, emotion sets), ``valence`` (``float``, sentiment sets),
  ``labels`` (``list[str]``, OV-MERD+ and open-set manifests); :func:`label_value` returns whichever is set;
- ``label``: the same label as a JSON string (kept for older callers; :func:`decode_label` reads it).

Packaged layout (AffectGPT's MER-UniBench release): ``root`` holds one folder per benchmark, named as in
:data:`BENCHMARKS` (``mer2023-dataset-process``, ``cmumosi-process``, ...), each with its label file,
subtitle file and media folders (``{video_dir}/{name}.mp4`` or ``.avi``, ``{audio_dir}/{name}.wav``).
``root`` may also be that benchmark folder itself. Label ``.npz`` files are read only through
:func:`affectverse.data.safe_npz.load_npz`, which never runs pickled code.

Splits: ``test`` is the MER-UniBench test set (MER2023/MER2024 ``test1_corpus``, IEMOCAP Session 5 of
``whole_corpus``, the others ``test_corpus``; OV-MERD+ has only ``test``). ``train`` comes from
``train_corpus`` (IEMOCAP: Sessions 1-4) and ``val`` from ``val_corpus`` where the file has one (MELD,
MOSI, MOSEI, SIMS, SIMS v2). OV-MERD+ labels follow the official reader: an empty set becomes
``["neutral"]``, which the scorer skips like an empty one.

Example:
    >>> ds = load_benchmark("meld", "/data/merunibench")            # 2610 test samples
    >>> ds[0]["emotion"], ds[0]["valence"], ds[0]["labels"]
    ('surprise', None, None)
    >>> train = merge_benchmarks([load_benchmark(n, "/data/merunibench", "train") for n in ("mer2023", "meld")])
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import datasets
import pandas as pd

from affectverse.data.safe_npz import load_npz

logger = logging.getLogger(__name__)

TASKS = ("emotion", "sentiment", "openset")
SPLITS = ("train", "val", "test")
FEATURES = datasets.Features({
    **{c: datasets.Value("string") for c in ("name", "benchmark", "task", "split", "video", "audio", "subtitle")},
    "emotion": datasets.Value("string"),  # emotion sets; None elsewhere
    "valence": datasets.Value("float64"),  # sentiment sets; None elsewhere
    "labels": datasets.List(datasets.Value("string")),  # open sets; None elsewhere
    "label": datasets.Value("string"),  # JSON of whichever of the three applies
})
TYPED_LABELS = ("emotion", "valence", "labels")
TRAIN_VAL_TEST = {"train": "train_corpus", "val": "val_corpus", "test": "test_corpus"}


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where one packaged benchmark keeps its labels, subtitles and media, and how to read them."""

    folder: str
    task: str
    label_file: str
    splits: dict[str, str]  # split -> npz key
    video_dir: str
    audio_dir: str
    test_size: int
    classes: tuple[str, ...] | None = None  # int label -> word
    video_exts: tuple[str, ...] = (".mp4", ".avi")  # first existing wins; the first is the default
    subtitle_file: str = "transcription-engchi-polish.csv"
    subtitle_column: str = "english"
    holdout_session: str | None = None  # IEMOCAP: test = names with name[4] == this, train = the rest


BENCHMARKS = {
    "mer2023": BenchmarkSpec("mer2023-dataset-process", "emotion", "label-6way.npz",
                             {"train": "train_corpus", "test": "test1_corpus"}, "video", "audio", 411),
    "mer2024": BenchmarkSpec("mer2024-dataset-process", "emotion", "label-6way.npz",
                             {"train": "train_corpus", "test": "test1_corpus"}, "video", "audio", 1169,
                             subtitle_file="transcription_merge.csv", subtitle_column="chinese"),
    "meld": BenchmarkSpec("meld-process", "emotion", "label.npz", TRAIN_VAL_TEST, "subvideo", "subaudio", 2610,
                          classes=("anger", "joy", "sadness", "neutral", "disgust", "fear", "surprise")),
    "iemocap": BenchmarkSpec("iemocap-process", "emotion", "label_4way.npz",
                             {"train": "whole_corpus", "test": "whole_corpus"}, "subvideo-tgt", "subaudio", 1241,
                             classes=("happy", "sad", "neutral", "anger"), video_exts=(".avi", ".mp4"),
                             holdout_session="5"),
    "mosi": BenchmarkSpec("cmumosi-process", "sentiment", "label.npz", TRAIN_VAL_TEST, "subvideo", "subaudio", 686),
    "mosei": BenchmarkSpec("cmumosei-process", "sentiment", "label.npz", TRAIN_VAL_TEST, "subvideo_new", "subaudio",
                           4659),
    "sims": BenchmarkSpec("sims-process", "sentiment", "label.npz", TRAIN_VAL_TEST, "video", "audio", 457),
    "simsv2": BenchmarkSpec("simsv2-process", "sentiment", "label.npz", TRAIN_VAL_TEST, "video_new", "audio", 1034),
    # OV-MERD+ labels come from a CSV, not an npz: its one split has no npz key.
    "ovmerdplus": BenchmarkSpec("ovmerdplus-process", "openset", "ovlabel.csv", {"test": ""}, "video", "audio", 532,
                                subtitle_file="subtitle_eng.csv", subtitle_column="sentence"),
}
ALIASES = {"cmumosi": "mosi", "cmumosei": "mosei", "iemocapfour": "iemocap", "ovmerd+": "ovmerdplus"}

# MELD's original release: split -> (label csv, video folder as extracted from MELD.Raw's tarballs).
MELD_ORIGINAL = {
    "train": ("train_sent_emo.csv", "train_splits"),
    "val": ("dev_sent_emo.csv", "dev_splits_complete"),
    "test": ("test_sent_emo.csv", "output_repeated_splits_test"),
}
MMSA_MODES = {"train": "train", "val": "valid", "valid": "valid", "test": "test"}  # split -> label.csv mode


# ----------------------------------------------------------------------------- labels


def encode_label(value) -> str:
    """JSON text of a label (str, float or list of str), as stored in the ``label`` column."""
    return json.dumps(value, ensure_ascii=False)


def decode_label(label: str):
    """The label of a ``label`` cell: ``str`` (emotion), ``float`` (sentiment) or ``list[str]`` (openset)."""
    return json.loads(label)


def typed_label(value) -> dict:
    """``{"emotion", "valence", "labels"}`` of a label: the one its type fits is set, the others None."""
    if isinstance(value, (list, tuple)):
        return {"emotion": None, "valence": None, "labels": [str(w) for w in value]}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {"emotion": None, "valence": float(value), "labels": None}
    return {"emotion": str(value), "valence": None, "labels": None}


def label_value(row: dict):
    """The label of a row from these readers: its ``emotion`` (str), ``valence`` (float) or ``labels`` (list)."""
    for column in TYPED_LABELS:
        if row.get(column) is not None:
            return row[column]
    if "label" in row:  # a row from before the typed columns
        return decode_label(row["label"])
    raise KeyError(f"row {row.get('name')!r} has no label column ({', '.join(TYPED_LABELS)}, label)")


def parse_word_list(text: str) -> list[str]:
    """``"[worried, sad]"`` / ``"['a', 'b']"`` / ``"a, b"`` -> ``["worried", "sad"]``; ``"[]"`` -> ``[]``."""
    text = str(text).strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    words = (w.strip().strip("'\"").strip() for w in re.split(r"[,，、;]", text))
    return [w for w in words if w]


# ----------------------------------------------------------------------------- shared helpers


def _to_dataset(rows: list[dict], extra_columns: tuple[str, ...] = ()) -> datasets.Dataset:
    """A Dataset of ``rows`` with the FEATURES columns (plus ``extra_columns``, as strings); the typed label
    columns come from each row's JSON ``label``."""
    rows = [{**r, **typed_label(decode_label(r["label"]))} for r in rows]
    features = datasets.Features({**FEATURES, **{c: datasets.Value("string") for c in extra_columns}})
    return datasets.Dataset.from_dict({c: [r[c] for r in rows] for c in features}, features=features)


def _check_media(rows: list[dict], source) -> None:
    """Raise FileNotFoundError naming the missing media files of ``rows`` (empty audio means: in the video)."""
    missing = [p for r in rows for p in (r["video"], r["audio"]) if p and not os.path.exists(p)]
    if missing:
        shown = "\n  ".join(missing[:5])
        raise FileNotFoundError(f"{source}: {len(missing)} media files missing, e.g.\n  {shown}")


def _read_csv(path: Path) -> pd.DataFrame:
    """All cells as strings, empty cells as ``""``; MELD's CSVs are not always UTF-8 (cp1252 fallback)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except UnicodeDecodeError:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="cp1252")


def _require_columns(df: pd.DataFrame, columns, path: Path) -> None:
    """Raise KeyError naming the file and the first missing column."""
    for column in columns:
        if column not in df.columns:
            raise KeyError(f"{path}: no column '{column}' (has {list(df.columns)})")


def _absolute(path) -> Path:
    """``path`` made absolute and normalised (``..`` removed) without resolving symlinks."""
    return Path(os.path.abspath(os.path.expanduser(path)))


def _media_path(folder: Path, name: str, exts: tuple[str, ...], folder_exists: bool) -> str:
    """``folder/name.ext`` for the first ext that exists, else with the first ext."""
    if folder_exists:
        for ext in exts:
            if (folder / f"{name}{ext}").exists():
                return str(folder / f"{name}{ext}")
    return str(folder / f"{name}{exts[0]}")


# ----------------------------------------------------------------------------- packaged MER-UniBench


def canonical_name(name: str) -> str:
    """The key in BENCHMARKS for ``name`` (case-insensitive; ``CMU-MOSI``, ``IEMOCAPFour`` etc. accepted)."""
    key = name.lower().replace("-", "").replace("_", "")
    key = ALIASES.get(key, key)
    if key not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {sorted(BENCHMARKS)}")
    return key


def _benchmark_dir(root, spec: BenchmarkSpec) -> Path:
    """``root/<spec.folder>``, or ``root`` itself when it already holds the label file."""
    root = _absolute(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: benchmark root does not exist")
    if (root / spec.label_file).is_file() and not (root / spec.folder).is_dir():
        return root
    return root / spec.folder


def npz_labels(path: Path, spec: BenchmarkSpec, split: str) -> dict:
    """``{name: label}`` for ``split`` from a label npz (emo word or int class, or float ``val``)."""
    key = spec.splits[split]
    corpora = load_npz(path)
    if key not in corpora:
        raise KeyError(f"{path}: no key '{key}' for split '{split}' (has {sorted(corpora)})")
    corpus = corpora[key]
    if spec.holdout_session is not None:
        corpus = {n: v for n, v in corpus.items() if (n[4] == spec.holdout_session) == (split == "test")}
    labels = {}
    for n, v in corpus.items():
        try:
            if spec.task == "sentiment":
                labels[n] = float(v["val"])
                if not math.isfinite(labels[n]):
                    raise ValueError(f"not a finite number: {v['val']!r}")
            elif spec.classes:
                index = int(v["emo"])
                if not 0 <= index < len(spec.classes):
                    raise ValueError(f"class {index} outside 0..{len(spec.classes) - 1} ({', '.join(spec.classes)})")
                labels[n] = spec.classes[index]
            else:
                labels[n] = str(v["emo"]).strip()
                if not labels[n]:
                    raise ValueError("empty label")
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise ValueError(f"{path}, {key}, sample {n!r}: unusable label ({type(err).__name__}: {err}); fix the "
                             "file or use the released one") from None
    return labels


def _openset_labels(path: Path) -> dict:
    """``{name: [words]}`` from ``ovlabel.csv``; an empty set becomes ``["neutral"]`` as officially."""
    df = _read_csv(path)
    _require_columns(df, ("name", "openset"), path)
    return {n: parse_word_list(s) or ["neutral"] for n, s in zip(df["name"], df["openset"])}


def _subtitles(path: Path, column: str) -> dict[str, str]:
    """``{name: subtitle}`` from a subtitle CSV; empty cells give ``""``."""
    df = _read_csv(path)
    _require_columns(df, ("name", column), path)
    return dict(zip(df["name"], df[column]))


def load_benchmark(name: str, root, split: str = "test", check_media: bool = False) -> datasets.Dataset:
    """Read one MER-UniBench benchmark in its packaged layout.

    Args:
        name: ``mer2023``, ``mer2024``, ``meld``, ``iemocap``, ``mosi``, ``mosei``, ``sims``, ``simsv2`` or
        ``ovmerdplus``.
        root: the folder holding the ``*-process`` benchmark folders (or one benchmark folder itself).
        split: ``test``, ``train``, or ``val`` where the label file has one.
        check_media: raise FileNotFoundError listing missing video/audio files (off: paths are not checked).

    Returns:
        A Dataset with the columns of FEATURES; ``label`` is JSON (see :func:`decode_label`).
    """
    bench = canonical_name(name)
    spec = BENCHMARKS[bench]
    if split not in spec.splits:
        raise ValueError(f"{bench} has no split {split!r}; it has {list(spec.splits)}")
    folder = _benchmark_dir(root, spec)
    label_path = folder / spec.label_file
    if not label_path.is_file():
        raise FileNotFoundError(f"{label_path}: no such label file for {bench}")
    labels = _openset_labels(label_path) if spec.task == "openset" else npz_labels(label_path, spec, split)
    subtitles = _subtitles(folder / spec.subtitle_file, spec.subtitle_column)
    video_dir, audio_dir = folder / spec.video_dir, folder / spec.audio_dir
    has_videos = video_dir.is_dir()
    rows = [
        {"name": n, "benchmark": bench, "task": spec.task, "split": split,
         "video": _media_path(video_dir, n, spec.video_exts, has_videos), "audio": str(audio_dir / f"{n}.wav"),
         "subtitle": subtitles.get(n, ""), "label": encode_label(label)}
        for n, label in labels.items()
    ]
    if missing := sum(n not in subtitles for n in labels):
        logger.warning("%s: %d of %d %s samples have no subtitle row; using ''", folder / spec.subtitle_file, missing,
                       len(rows), split)
    if split == "test" and len(rows) != spec.test_size:
        logger.warning("%s test split has %d samples; MER-UniBench has %d", bench, len(rows), spec.test_size)
    if check_media:
        _check_media(rows, folder)
    return _to_dataset(rows)


# ----------------------------------------------------------------------------- original releases


def load_meld_original(root, split: str, check_media: bool = False, video_dir: str | None = None) -> datasets.Dataset:
    """Read MELD's original release (MELD.Raw): ``{train,dev,test}_sent_emo.csv`` beside the video folders.

    Videos are ``root/<folder>/dia{D}_utt{U}.mp4`` with the folders as MELD.Raw's tarballs extract them:
    ``train_splits``, ``dev_splits_complete``, ``output_repeated_splits_test`` (``video_dir`` overrides).
    Names follow the packaged layout (``train_``/``val_``/``test_`` + ``dia{D}_utt{U}``); labels are the
    ``Emotion`` column lower-cased (the same seven words as the packaged MELD); audio is the video's track.

    Args:
        split: ``train``, ``val`` (or ``dev``) or ``test``.
    """
    split = "val" if split == "dev" else split
    if split not in MELD_ORIGINAL:
        raise ValueError(f"MELD has no split {split!r}; expected train, dev/val or test")
    csv_name, default_dir = MELD_ORIGINAL[split]
    root = _absolute(root)
    path = root / csv_name
    df = _read_csv(path)
    _require_columns(df, ("Utterance", "Emotion", "Dialogue_ID", "Utterance_ID"), path)
    videos = root / (video_dir or default_dir)
    rows = []
    for d, u, text, emotion in zip(df["Dialogue_ID"], df["Utterance_ID"], df["Utterance"], df["Emotion"]):
        clip = f"dia{d.strip()}_utt{u.strip()}"
        rows.append({"name": f"{split}_{clip}", "benchmark": "meld", "task": "emotion", "split": split,
                     "video": str(videos / f"{clip}.mp4"), "audio": "", "subtitle": text,
                     "label": encode_label(emotion.strip().lower())})
    if check_media:
        _check_media(rows, path)
    return _to_dataset(rows)


def load_mmsa(root, split: str, name: str, check_media: bool = False) -> datasets.Dataset:
    """Read an MMSA release (MOSI, MOSEI, SIMS, SIMS v2): ``root/label.csv`` and ``root/Raw/{video_id}/{clip_id}.mp4``.

    Columns are read by name (``video_id, clip_id, text, label, mode``; others ignored); ids stay strings so
    zero-padded clip ids (``0001``) keep their padding. Names are ``{video_id}_{clip_id}``; ``label`` is the
    float ``label`` column; audio is the video's track.

    Args:
        split: ``train``, ``valid`` (or ``val``) or ``test``, matched against the ``mode`` column.
        name: the benchmark name stored in the ``benchmark`` column (``mosi``, ``mosei``, ``sims``, ``simsv2``).
    """
    if split not in MMSA_MODES:
        raise ValueError(f"MMSA has no split {split!r}; expected train, valid/val or test")
    bench, mode = canonical_name(name), MMSA_MODES[split]
    root = _absolute(root)
    path = root / "label.csv"
    df = _read_csv(path)
    _require_columns(df, ("video_id", "clip_id", "text", "label", "mode"), path)
    rows = []
    for line, r in enumerate(df.itertuples(index=False), 2):  # line 1 is the header
        if r.mode.strip() != mode:
            continue
        try:
            value = float(r.label)
            if not math.isfinite(value):
                raise ValueError
        except ValueError:
            raise ValueError(f"{path}, line {line}, field 'label': not a finite number: {r.label!r}") from None
        rows.append({"name": f"{r.video_id}_{r.clip_id}", "benchmark": bench, "task": "sentiment",
                     "split": "val" if mode == "valid" else mode,
                     "video": str(root / "Raw" / r.video_id / f"{r.clip_id}.mp4"),
                     "audio": "", "subtitle": r.text, "label": encode_label(value)})
    if check_media:
        _check_media(rows, path)
    return _to_dataset(rows)


# ----------------------------------------------------------------------------- manifests


def _manifest_records(path: Path):
    """Yield ``(line number, dict)`` for each row of a CSV or JSONL manifest."""
    if path.suffix.lower() in (".jsonl", ".json"):
        with open(path, encoding="utf-8-sig") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}, line {line_no}: not valid JSON ({err})") from None
                if not isinstance(record, dict):
                    raise ValueError(f"{path}, line {line_no}: expected a JSON object, got {type(record).__name__}")
                yield line_no, record
        return
    with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: a spreadsheet's byte-order mark is no column
        reader = csv.DictReader(fh)
        for column in ("video", "label", "split"):
            if column not in (reader.fieldnames or ()):
                raise ValueError(f"{path}: no column '{column}' (has {reader.fieldnames})")
        for record in reader:
            yield reader.line_num, record


def _manifest_label(raw, task: str):
    """``(label, task)`` from a manifest cell: a number is a valence, ``[a, b]`` or a JSON list a word set, else
    a word; ``task`` ("" to infer) must agree, except that ``openset`` turns one word into a one-word set."""
    if isinstance(raw, list):
        value = [str(w).strip() for w in raw]
    elif isinstance(raw, (int, float)) and not isinstance(raw, bool):
        value = float(raw)
    elif isinstance(raw, str) and raw.strip():
        text = raw.strip()
        try:
            value = float(text)
        except ValueError:
            value = parse_word_list(text) if text.startswith("[") else text
    else:
        raise ValueError(f"empty or invalid label: {raw!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"not a finite number: {raw!r}")
    inferred = {str: "emotion", float: "sentiment", list: "openset"}[type(value)]
    if task == "openset" and inferred == "emotion":  # one word is a one-word set
        value, inferred = [value], "openset"
    if task and task != inferred:
        raise ValueError(f"label {raw!r} does not fit task '{task}'")
    return value, inferred


def _manifest_row(record: dict, base: Path) -> dict:
    """One dataset row from a manifest record; raises ``ValueError("field 'x': ...")`` on a bad field."""
    def text(column, required=False):
        value = record.get(column, "")
        value = "" if value is None else value
        if not isinstance(value, str):
            raise ValueError(f"field '{column}': expected a string, got {value!r}")
        if required and not value.strip():
            raise ValueError(f"field '{column}': empty")
        return value.strip()

    video, audio, split, task = text("video", True), text("audio"), text("split", True), text("task")
    if split not in SPLITS:
        raise ValueError(f"field 'split': {split!r} is not one of {SPLITS}")
    if task and task not in TASKS:
        raise ValueError(f"field 'task': {task!r} is not one of {TASKS}")
    try:
        label, task = _manifest_label(record.get("label"), task)
    except ValueError as err:
        raise ValueError(f"field 'label': {err}") from None
    return {"name": text("name") or Path(video).stem, "benchmark": text("benchmark") or "manifest", "task": task,
            "split": split, "video": str(_absolute(base / video)),
            "audio": str(_absolute(base / audio)) if audio else "",
            "subtitle": text("subtitle"), "label": encode_label(label)}


def load_manifest(path, split: str | None = None, check_media: bool = False) -> datasets.Dataset:
    """Read a CSV or JSONL (``.jsonl``/``.json``) manifest of samples.

    Columns: ``video`` (required), ``audio`` (optional; empty: the video's own track), ``subtitle``
    (optional), ``label`` (required: an emotion word, a number for a valence, or ``[a, b]`` / a JSON list
    for an open set), ``split`` (required: train, val or test); optional ``name`` (default: the video's
    stem), ``benchmark`` (default ``manifest``) and ``task`` (default: inferred from the label). Relative
    media paths are resolved against the manifest's folder. Other columns are kept as strings.

    Args:
        split: keep only this split (None: all rows).
        check_media: raise FileNotFoundError listing missing media files.

    Raises:
        ValueError: a bad row, naming the file, line and field.
    """
    path = _absolute(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such manifest")
    rows, extras = [], {}
    for line_no, record in _manifest_records(path):
        try:
            if None in record:
                raise ValueError("more fields than the header has columns")
            row = _manifest_row(record, path.parent)
        except ValueError as err:
            raise ValueError(f"{path}, line {line_no}, {err}") from None
        for column, value in record.items():
            if column not in FEATURES:
                extras[column] = None
                row[column] = (value if isinstance(value, str) else "" if value is None
                               else json.dumps(value, ensure_ascii=False))
        if split is None or row["split"] == split:
            rows.append(row)
    for row in rows:
        for column in extras:
            row.setdefault(column, "")
    if check_media:
        _check_media(rows, path)
    return _to_dataset(rows, tuple(extras))


def merge_benchmarks(parts) -> datasets.Dataset:
    """Concatenate datasets from these readers (e.g. the training sets of all nine), keeping the FEATURES columns.
    A dataset from before the typed label columns gets them from its JSON ``label``."""
    parts = list(parts)
    if not parts:
        raise ValueError("merge_benchmarks: no datasets given")
    for i, part in enumerate(parts):
        if "label" in part.column_names and not set(TYPED_LABELS) & set(part.column_names):
            typed = [typed_label(decode_label(x)) for x in part["label"]]
            for column in TYPED_LABELS:
                part = part.add_column(column, [t[column] for t in typed], feature=FEATURES[column])
            parts[i] = part
        missing = [c for c in FEATURES if c not in part.column_names]
        if missing:
            raise ValueError(f"merge_benchmarks: dataset {i} lacks columns {missing}")
    parts = [p.select_columns(list(FEATURES)) for p in parts]
    return datasets.concatenate_datasets([p if p.features == FEATURES else p.cast(FEATURES) for p in parts])
