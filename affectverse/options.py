"""Option values a command can trust: argparse types that refuse what they cannot use.

argparse turns the ValueError of a ``type=`` function into a one-line error naming the option
(``affectverse evaluate: error: argument --limit: must be a whole number >= 1, got '-1'``), before anything runs.
"""

from __future__ import annotations

import argparse
import math


def _integer(text: str, low: int) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        value = None
    if value is None or value < low:
        raise argparse.ArgumentTypeError(f"must be a whole number >= {low}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """A whole number >= 1 (``--limit``, ``--batch-size``, ``--max-new-tokens``)."""
    return _integer(text, 1)


def non_negative_int(text: str) -> int:
    """A whole number >= 0 (``--num-workers``, ``--bootstrap``)."""
    return _integer(text, 0)


def positive_number(text: str) -> float:
    """A finite number > 0 (``--seconds``)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def non_negative_number(text: str) -> float:
    """A finite number >= 0 (``--window``, where 0 means none)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def unit_fraction(text: str) -> float:
    """A number in (0, 1] (a keep ratio)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not 0 < value <= 1:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}")
    return value


def unit_fractions(text: str) -> list[float]:
    """Comma-separated numbers in (0, 1], e.g. ``1.0,0.7,0.5`` (``--keep-ratios``, ``--ratios``)."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers in (0, 1], got {text!r}")
    try:
        return [unit_fraction(p) for p in parts]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers in (0, 1], got {text!r}") from None
