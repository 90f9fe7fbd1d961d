"""MER-UniBench metrics as Hugging Face ``evaluate`` modules, one folder each, loaded from local paths.

>>> from affectverse.scoring.metric_modules import load_metric
>>> hit = load_metric("mer_hit")  # doctest: +SKIP
>>> wheel = "shared/merunibench/emotion_wheel"
>>> hit.compute(predictions=[["joyful"]], references=["happy"], emotion_wheel=wheel)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent
METRIC_NAMES = ("mer_hit", "mer_sentiment", "ovmerd_f", "closed_set")

CITATION = """\
@inproceedings{lian2025affectgpt,
  title     = {AffectGPT: A New Dataset, Model, and Benchmark for Emotion Understanding with Multimodal Large Language
  Models},
  author    = {Lian, Zheng and others},
  booktitle = {International Conference on Machine Learning (ICML)},
  year      = {2025}
}
"""

def metric_path(name: str) -> Path:
    """Absolute folder of the metric ``name`` (one of :data:`METRIC_NAMES`)."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; choose from {list(METRIC_NAMES)}")
    return METRICS_DIR / name


def load_metric(name: str, **kwargs):
    """``evaluate.load`` of the local metric folder ``name``; ``kwargs`` go to ``evaluate.load``."""
    import evaluate

    return evaluate.load(str(metric_path(name)), **kwargs)
