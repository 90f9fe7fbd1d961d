"""Emotion-wheel mapping of MER-UniBench: an open-vocabulary emotion word -> a level-1 wheel cluster.

The rules are those of AffectGPT's official scorer (see ``shared/merunibench/README.md``):

1. lower-case and strip the word; look it up in ``format.csv`` (each inflected form, and the base word
   itself, map to the base word); not found -> unmapped;
2. map each base word through the 8 merged synonym runs of ``synonym.xlsx`` to wheel words;
3. among those candidates, sorted alphabetically, the first that occurs in wheel ``w`` gives its level-1
   root; none -> unmapped.

``level=2`` (or 3) keeps the same rules but stops at a finer ring of the wheel: a word maps to its ancestor at that
level, or to itself when it sits above it (a level-1 root stays itself). MER-UniBench scores level 1 only; the finer
levels serve the GRPO reward (``affectverse.training.rewards``), which may ask for a finer match
(docs/design_training.md).

Example:
    >>> wheel = EmotionWheel("shared/merunibench/emotion_wheel")  # doctest: +SKIP
    >>> wheel.cluster("Happiness", 1), wheel.cluster("neutral", 1)  # doctest: +SKIP
    ('happy', None)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import pandas as pd

N_WHEELS = 5
N_SYNONYM_RUNS = 8
WHEEL_LEVELS = ("level1", "level2", "level3")


class EmotionWheelError(ValueError):
    """An emotion-wheel file is missing or does not have the expected layout."""


def parse_label_list(text) -> list[str]:
    """Split a list-like string such as ``"[a, 'b', c]"`` into stripped items (AffectGPT's ``string_to_list``).

    Lists pass through; ``None``, NaN and ``""`` give ``[]``. Case is kept.
    """
    if isinstance(text, (list, tuple)):
        return [str(item).strip() for item in text if str(item).strip()]
    if text is None or (isinstance(text, float) and pd.isna(text)):
        return []
    text = str(text).strip()
    if text.startswith("["):
        text = text[1:]
    if text.endswith("]"):
        text = text[:-1]
    return [item.strip() for item in re.split(r"['\",]", text) if item.strip()]


def _require(path: Path) -> Path:
    if not path.is_file():
        raise EmotionWheelError(f"{path}: emotion-wheel file not found (MER-UniBench emotion_wheel/ holds it)")
    return path


def _read_table(path: Path, columns: Iterable[str]) -> pd.DataFrame:
    """Read a .csv or .xlsx file and check that it has ``columns``."""
    _require(path)
    try:
        frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_excel(path, engine="openpyxl")
    except Exception as err:  # unreadable or corrupt spreadsheet
        raise EmotionWheelError(f"{path}: cannot read ({err})") from err
    missing = [col for col in columns if col not in frame.columns]
    if missing:
        raise EmotionWheelError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}")
    return frame


def _read_forms(path: Path) -> dict[str, set[str]]:
    """``format.csv`` -> {form: {base words}}; every base word also maps to itself."""
    frame = _read_table(path, ["name", "format"])
    forms: dict[str, set[str]] = {}
    for base, inflected in zip(frame["name"], frame["format"]):
        base = str(base).strip()
        for form in parse_label_list(inflected) + [base]:
            forms.setdefault(form, set()).add(base)
    return forms


def _read_synonyms(path: Path) -> dict[str, set[str]]:
    """``synonym.xlsx`` -> {word: {wheel words}}, the union of the 8 runs; wheel words map to themselves."""
    runs = range(1, N_SYNONYM_RUNS + 1)
    frame = _read_table(path, [f"{kind}_run{r}" for r in runs for kind in ("word", "synonym")])
    synonyms: dict[str, set[str]] = {}
    for r in runs:
        for word, similar in zip(frame[f"word_run{r}"], frame[f"synonym_run{r}"]):
            word = str(word).strip().lower()
            for item in [word] + [s.lower() for s in parse_label_list(similar)]:
                synonyms.setdefault(item, set()).add(word)
    return synonyms


def _read_wheel(path: Path, level: int = 1) -> dict[str, str]:
    """``wheelN.xlsx`` -> {word at any level: its ancestor at ``level``, itself above it}; merged cells are
    forward-filled per column. With ``level=1`` every word maps to its level-1 root (the official scorer).

    Words are assigned level1 by level1, then level2, then level3 in file order, a later assignment winning,
    as in the official scorer.
    """
    frame = _read_table(path, WHEEL_LEVELS)[list(WHEEL_LEVELS)].ffill()
    if frame.isna().any().any():
        raise EmotionWheelError(f"{path}: the first row must fill level1, level2 and level3")
    tree: dict[str, dict[str, list[str]]] = {}
    for level1, level2, level3 in frame.itertuples(index=False):
        level1, level2, level3 = (str(v).strip().lower() for v in (level1, level2, level3))
        tree.setdefault(level1, {}).setdefault(level2, []).append(level3)
    node_of: dict[str, str] = {}
    for level1, branches in tree.items():
        node_of[level1] = level1
        for level2, leaves in branches.items():
            node_of[level2] = level1 if level == 1 else level2
            node_of.update({leaf: (level1, level2, leaf)[min(level, 3) - 1] for leaf in leaves})
    return node_of


class EmotionWheel:
    """The five MER-UniBench emotion wheels plus the word-form and synonym tables, loaded once.

    Args:
        directory: folder holding ``format.csv``, ``synonym.xlsx`` and ``wheel1.xlsx`` .. ``wheel5.xlsx``.

    Wheels are numbered 1..5 as in their file names.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise EmotionWheelError(f"{self.directory}: emotion-wheel folder not found")
        self._forms = _read_forms(self.directory / "format.csv")
        self._synonyms = _read_synonyms(self.directory / "synonym.xlsx")
        self._wheels = {level: [_read_wheel(self.directory / f"wheel{w}.xlsx", level) for w in range(1, N_WHEELS + 1)]
                        for level in range(1, len(WHEEL_LEVELS) + 1)}  # {level: [word -> node] per wheel}
        self.cluster = lru_cache(maxsize=None)(self._cluster)

    def candidates(self, word: str) -> list[str]:
        """Wheel words reachable from ``word`` through its base forms and their synonyms, sorted."""
        bases = self._forms.get(str(word).strip().lower(), ())
        return sorted({c for base in bases for c in self._synonyms.get(base, ())})

    def _cluster(self, word: str, wheel_index: int, level: int = 1) -> str | None:
        """Level-1 root (or node at ``level``, see the module docstring) of ``word`` in wheel ``wheel_index``
        (1..5), or ``None`` when unmapped."""
        if not 1 <= wheel_index <= N_WHEELS:
            raise ValueError(f"wheel_index must be in 1..{N_WHEELS}, got {wheel_index}")
        if level not in self._wheels:
            raise ValueError(f"wheel level must be one of {sorted(self._wheels)}, got {level}")
        nodes = self._wheels[level][wheel_index - 1]
        return next((nodes[c] for c in self.candidates(word) if c in nodes), None)

    def clusters(self, words: Iterable[str], wheel_index: int, level: int = 1) -> set[str]:
        """The set of level-1 roots (nodes at ``level``) of ``words`` in one wheel; unmapped words are dropped."""
        mapped = (self.cluster(str(w).strip().lower(), wheel_index, level) for w in words)
        return {c for c in mapped if c is not None}

    @property
    def wheel_indices(self) -> range:
        """``range(1, 6)``: the wheel numbers."""
        return range(1, N_WHEELS + 1)


@lru_cache(maxsize=4)
def _load_wheel(directory: str) -> EmotionWheel:
    return EmotionWheel(directory)


def load_wheel(wheel: str | Path | EmotionWheel) -> EmotionWheel:
    """An :class:`EmotionWheel` from a folder (loaded once per process and folder) or passed through."""
    if isinstance(wheel, EmotionWheel):
        return wheel
    if wheel is None:
        raise EmotionWheelError("an emotion-wheel folder is required (emotion_wheel=<path to emotion_wheel/>)")
    return _load_wheel(str(Path(wheel).resolve()))
