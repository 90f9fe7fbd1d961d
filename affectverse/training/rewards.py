"""GRPO rewards as plain functions with trl's reward-function signature, and the ``--rewards`` weights.

trl calls each with ``prompts``, ``completions`` (the decoded answers), ``completion_ids`` and every dataset column as
a keyword list (``task``, ``emotion``, ``labels``, ``benchmark``, ...); each returns one float per completion, or None
where it does not apply (trl then leaves it out of that completion's sum and of the reward's mean). The answer's labels
are read by the project's one rule, ``processing_affectverse.extract_labels``, as the MER-UniBench scorers read them.

- :func:`emotion_wheel`: the MER-UniBench emotion-wheel score of one answer (``affectverse.scoring.scores``: HIT for an
  emotion word, the set F-score for an open-vocabulary set) at a chosen wheel level, averaged over the wheels that
  score the sample; None where every wheel skips it (a ``neutral`` truth, sentiment rows).
- :func:`accuracy`: closed-set accuracy (``map_to_label_set``, as ``generation_accuracy`` and ``closed_set_scores``).
- :func:`answer_format`: 1 for the trained answer form that names a label and ends its turn, else 0.
- :func:`length_penalty`: 0 up to a token budget, then down to -1: listing every emotion would otherwise win HIT.
"""

from __future__ import annotations

import functools
import re

import numpy as np

from affectverse.scoring.scores import map_to_label_set, sample_hits, sample_set_scores
from affectverse.scoring.wheel import EmotionWheel
from processing_affectverse import ANSWER_TEMPLATE, extract_labels

ANSWER_FORM = re.compile(re.escape(ANSWER_TEMPLATE).replace(re.escape("{label}"), "(.+)"), flags=re.DOTALL)
REWARDS = ("emotion_wheel", "accuracy", "answer_format", "length_penalty")
DEFAULT_REWARDS = "emotion_wheel=1,accuracy=1,answer_format=0.5,length_penalty=0.5"


def _f_score(precision: float, recall: float) -> float:
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def emotion_wheel(completions, task, emotion, labels, wheel: EmotionWheel, level: int = 1, **kwargs):
    """Per answer, the emotion-wheel score of its labels against the truth, averaged over the wheels that score it.

    One emotion word (MER2023, MER2024, MELD, IEMOCAP): the sample's HIT per wheel (``scores.sample_hits``), whose
    mean over samples and wheels is the benchmark's HIT. A label set (OV-MERD+): per wheel the F-score of the
    sample's own set precision and recall (``scores.sample_set_scores``; the benchmark averages P and R over samples
    before taking F). None where no wheel maps the truth.
    """
    scores = []
    for answer, kind, word, words in zip(completions, task, emotion, labels):
        pred = extract_labels(answer)
        if kind == "emotion" and word:
            values = [h for h in sample_hits(word, pred, wheel, level) if h is not None]
        elif kind == "openset" and words:
            values = [_f_score(*pr) for pr in sample_set_scores(list(words), pred, wheel, level) if pr is not None]
        else:
            values = []
        scores.append(float(np.mean(values)) if values else None)
    return scores


def accuracy(completions, task, emotion, benchmark, label_sets: dict, **kwargs):
    """1.0 when the answer's labels map onto the truth's member of its benchmark's closed label set, 0.0 when they
    map elsewhere or nowhere; None for rows without a closed set (sentiment, open-vocabulary)."""
    scores = []
    for answer, kind, word, bench in zip(completions, task, emotion, benchmark):
        label_set = label_sets.get(bench)
        if kind != "emotion" or not word or not label_set:
            scores.append(None)
            continue
        truth = map_to_label_set([str(word).lower()], label_set)
        scores.append(float(truth is not None and map_to_label_set(extract_labels(answer), label_set) == truth))
    return scores


def answer_format(completions, completion_ids, eos_token_ids, **kwargs):
    """1.0 for an answer in the trained form (``ANSWER_TEMPLATE``: "The character's emotional state is X.") that
    names at least one label and ends its turn with an end-of-turn token (not cut at the length limit), else 0.0."""
    eos = set(eos_token_ids)
    return [float(bool(ids) and ids[-1] in eos and ANSWER_FORM.fullmatch(answer.strip()) is not None
                  and bool(extract_labels(answer)))
            for answer, ids in zip(completions, completion_ids)]


def length_penalty(completion_ids, budget: int, **kwargs):
    """0 for completions of at most ``budget`` tokens, then -(tokens over budget) / budget, at least -1."""
    return [-min(1.0, max(0, len(ids) - budget) / budget) for ids in completion_ids]


def parse_rewards(text: str) -> list[tuple[str, float]]:
    """``"emotion_wheel=1,accuracy=0.5"`` -> ``[("emotion_wheel", 1.0), ("accuracy", 0.5)]``; names checked."""
    pairs = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, weight = item.partition("=")
        name = name.strip()
        if name not in REWARDS:
            raise ValueError(f"--rewards: unknown reward {name!r}; known: {', '.join(REWARDS)}")
        try:
            pairs.append((name, float(weight) if sep else 1.0))
        except ValueError:
            raise ValueError(f"--rewards: {item!r}: the weight is not a number") from None
    if not pairs:
        raise ValueError(f"--rewards is empty; give name=weight pairs of {', '.join(REWARDS)}")
    if len({name for name, _ in pairs}) != len(pairs):
        raise ValueError(f"--rewards names a reward twice: {text!r}")
    return pairs


def build_rewards(text: str, label_sets: dict, eos_token_ids, wheel: EmotionWheel | None = None, level: int = 1,
                  budget: int = 32):
    """(reward functions, weights) for trl from ``--rewards``; the functions carry their settings (partials keep
    the function's name, which trl logs as ``rewards/<name>/mean`` and ``/std``)."""
    pairs = parse_rewards(text)
    if any(name == "emotion_wheel" for name, _ in pairs) and wheel is None:
        raise ValueError("--rewards emotion_wheel needs --emotion_wheel DIR (MER-UniBench's emotion_wheel/ folder)")
    if budget < 1:
        raise ValueError(f"--length_budget {budget}: must be at least 1 token")
    made = {
        "emotion_wheel": lambda: functools.partial(emotion_wheel, wheel=wheel, level=level),
        "accuracy": lambda: functools.partial(accuracy, label_sets=dict(label_sets)),
        "answer_format": lambda: functools.partial(answer_format, eos_token_ids=list(eos_token_ids)),
        "length_penalty": lambda: functools.partial(length_penalty, budget=budget),
    }
    return [made[name]() for name, _ in pairs], [weight for _, weight in pairs]
