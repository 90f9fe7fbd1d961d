"""MER-UniBench scores as pure functions, following AffectGPT's official scorer.

* :func:`hit_score`: HIT for one-label emotion sets (MER2023, MER2024, MELD, IEMOCAP).
* :func:`sentiment_scores`: non-zero weighted F1 and Acc-2 (CMU-MOSI, CMU-MOSEI, CH-SIMS, CH-SIMS v2).
* :func:`ovmerd_scores`: emotion-wheel set F-score (OV-MERD+).
* :func:`closed_set_scores`: the paper-text alternative (sklearn weighted F1 / accuracy over the label set).
* :func:`sentiment_from_labels`, :func:`sentiment_from_answer`: rule-based text -> sentiment (the labels come from
  ``processing_affectverse.extract_labels``, the inverse of the answer form the model is trained on).
* :class:`LLMExtractor`: the official LLM extraction (any local causal LM through transformers).

All scores are fractions in [0, 1]; the CLI multiplies by 100.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from affectverse.scoring.wheel import EmotionWheel, parse_label_list
from processing_affectverse import extract_labels

logger = logging.getLogger(__name__)

# Ground-truth aliases of the official scorer (the pairs map to the same wheel clusters), plus inflections
# that the closed-set mapping also accepts for a label.
LABEL_ALIASES: dict[str, tuple[str, ...]] = {
    "happy": ("joy", "happiness"),
    "joy": ("happy", "happiness"),
    "anger": ("angry",),
    "angry": ("anger",),
    "sad": ("sadness",),
    "sadness": ("sad",),
    "surprise": ("surprised",),
    "worried": ("worry",),
    "disgust": ("disgusted",),
    "fear": ("fearful",),
}
NO_PREDICTION = "<none>"  # closed-set stand-in for a prediction that names no label of the set


def _as_label_list(item) -> list[str]:
    """A prediction as a lower-cased label list; accepts a list or a list-like string ``"[a, b]"``."""
    return [label.lower().strip() for label in parse_label_list(item)]


def _mean(values: Sequence[float], what: str) -> float:
    if not values:
        logger.warning("no sample scored for %s; counting it as 0", what)
        return 0.0
    return float(np.mean(values))


# ----------------------------------------------------------------------------------------------------- HIT
def sample_hits(gt, pred, wheel: EmotionWheel, level: int = 1) -> list[float | None]:
    """One sample's HIT in each wheel: 1.0 when a predicted label falls into a ground-truth cluster, 0.0 when
    none does, None where the ground truth maps to no cluster (that wheel skips the sample)."""
    gt, pred = _as_label_list(gt), _as_label_list(pred)
    hits = []
    for w in wheel.wheel_indices:
        gt_clusters = wheel.clusters(gt, w, level)
        hits.append(float(bool(gt_clusters & wheel.clusters(pred, w, level))) if gt_clusters else None)
    return hits


def hit_score(gt_labels: Sequence, pred_label_lists: Sequence, wheel: EmotionWheel, level: int = 1) -> dict:
    """HIT rate averaged over the five emotion wheels.

    Per wheel, a sample whose ground truth maps to no cluster (e.g. ``neutral``) is skipped; otherwise it
    scores 1 when any predicted label falls into a ground-truth cluster. Extra predictions cost nothing.
    The official ground-truth aliases (happy/joy, anger/angry, sad/sadness) map to the same clusters in every
    wheel, so either spelling scores the same.

    Args:
        gt_labels: one ground-truth label per sample (a string, or a list of labels).
        pred_label_lists: one predicted label list per sample (a list, or a string like ``"[a, b]"``).
        wheel: the loaded :class:`~affectverse.scoring.wheel.EmotionWheel`.
        level: wheel level of the clusters (MER-UniBench: 1; see ``affectverse.scoring.wheel``).

    Returns:
        ``{"hit": mean over wheels, "per_wheel": [5 hit rates], "n_scored": [5 counts]}``.
    """
    if len(gt_labels) != len(pred_label_lists):
        raise ValueError(f"{len(gt_labels)} ground-truth labels but {len(pred_label_lists)} predictions")
    by_wheel = zip(*(sample_hits(g, p, wheel, level) for g, p in zip(gt_labels, pred_label_lists))) \
        if len(gt_labels) else [()] * len(wheel.wheel_indices)
    per_wheel, n_scored = [], []
    for w, column in zip(wheel.wheel_indices, by_wheel):
        hits = [h for h in column if h is not None]
        per_wheel.append(_mean(hits, f"HIT wheel {w}"))
        n_scored.append(len(hits))
    return {"hit": float(np.mean(per_wheel)), "per_wheel": per_wheel, "n_scored": n_scored}


# ----------------------------------------------------------------------------------------------- sentiment
def sentiment_value(prediction) -> float:
    """positive -> 1, negative -> -1, anything else (neutral, mixed, empty) -> 0; numbers pass through."""
    if isinstance(prediction, (int, float, np.number)) and not isinstance(prediction, bool):
        return float(prediction)
    return {"positive": 1.0, "negative": -1.0}.get(str(prediction).strip().lower(), 0.0)


def sentiment_scores(gt_vals: Sequence[float], pred_sentiments: Sequence) -> dict:
    """Non-zero weighted F1 (the main score) and Acc-2.

    Samples whose ground-truth valence is 0 are dropped; ``val > 0`` is compared with ``pred > 0``, so a
    neutral prediction counts as negative.

    Returns:
        ``{"weighted_f1": ..., "acc2": ..., "n_scored": int}``.
    """
    if len(gt_vals) != len(pred_sentiments):
        raise ValueError(f"{len(gt_vals)} ground-truth values but {len(pred_sentiments)} predictions")
    gt = np.asarray(gt_vals, dtype=float)
    pred = np.asarray([sentiment_value(p) for p in pred_sentiments], dtype=float)
    keep = gt != 0
    if not keep.any():
        raise ValueError("every ground-truth valence is 0: nothing to score")
    y_true, y_pred = gt[keep] > 0, pred[keep] > 0
    return {
        "weighted_f1": float(f1_score(y_true, y_pred, average="weighted")),
        "acc2": float(accuracy_score(y_true, y_pred)),
        "n_scored": int(keep.sum()),
    }


# ------------------------------------------------------------------------------------------------ OV-MERD+
def _set_precision_recall(gt: set[str], pred: set[str]) -> tuple[float, float]:
    if not pred:
        return 0.0, 0.0
    overlap = len(gt & pred)
    return overlap / len(pred), overlap / len(gt)


def sample_set_scores(gt, pred, wheel: EmotionWheel, level: int = 1) -> list[tuple[float, float] | None]:
    """One sample's set (precision, recall) in each wheel, None where the ground truth maps to nothing."""
    gt, pred = _as_label_list(gt), _as_label_list(pred)
    pairs = [(wheel.clusters(gt, w, level), wheel.clusters(pred, w, level)) for w in wheel.wheel_indices]
    return [_set_precision_recall(g, p) if g else None for g, p in pairs]


def ovmerd_scores(gt_sets: Sequence, pred_sets: Sequence, wheel: EmotionWheel, level: int = 1) -> dict:
    """Emotion-wheel level-1 set precision, recall and F-score, averaged over the five wheels.

    Per wheel: samples whose ground truth maps to nothing are skipped; an empty mapped prediction gives
    P = R = 0; P_w, R_w are means over samples and F_w = 2 P_w R_w / (P_w + R_w). ``level``: wheel level of the
    clusters (MER-UniBench: 1).

    Returns:
        ``{"f1", "precision", "recall"}`` (means over wheels), ``"per_wheel"`` (5 dicts) and ``"n_scored"``.
    """
    if len(gt_sets) != len(pred_sets):
        raise ValueError(f"{len(gt_sets)} ground-truth sets but {len(pred_sets)} predictions")
    by_wheel = zip(*(sample_set_scores(g, p, wheel, level) for g, p in zip(gt_sets, pred_sets))) \
        if len(gt_sets) else [()] * len(wheel.wheel_indices)
    per_wheel, n_scored = [], []
    for w, column in zip(wheel.wheel_indices, by_wheel):
        scored = [pr for pr in column if pr is not None]
        precision = _mean([p for p, _ in scored], f"OV precision wheel {w}")
        recall = _mean([r for _, r in scored], f"OV recall wheel {w}")
        f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
        per_wheel.append({"f1": f1, "precision": precision, "recall": recall})
        n_scored.append(len(scored))
    means = {key: float(np.mean([s[key] for s in per_wheel])) for key in ("f1", "precision", "recall")}
    return {**means, "per_wheel": per_wheel, "n_scored": n_scored}


# ------------------------------------------------------------------------------------------------ closed set
def _label_forms(label: str) -> set[str]:
    return {label, *LABEL_ALIASES.get(label, ())}


def map_to_label_set(pred_labels, label_set: Sequence[str]) -> str | None:
    """The first label of ``label_set`` (in its order) that the prediction names, by itself or an alias."""
    words = set(_as_label_list(pred_labels))
    return next((label for label in label_set if _label_forms(label) & words), None)


def canonical_label(label: str, label_set: Sequence[str]) -> str:
    """A ground-truth label written as the member of ``label_set`` it names (``joy`` -> ``happy``)."""
    found = map_to_label_set([label], label_set)
    if found is None:
        raise ValueError(f"ground-truth label {label!r} is not in the label set {list(label_set)}")
    return found


def closed_set_scores(gt: Sequence[str], pred: Sequence, label_set: Sequence[str]) -> dict:
    """sklearn weighted F1 and accuracy after mapping each prediction list onto the dataset's label set.

    A prediction that names no label of the set counts as wrong for its sample.

    Returns:
        ``{"weighted_f1": ..., "accuracy": ..., "n_scored": int, "n_unmapped": int}``.
    """
    if len(gt) != len(pred):
        raise ValueError(f"{len(gt)} ground-truth labels but {len(pred)} predictions")
    label_set = [label.lower() for label in label_set]
    y_true = [canonical_label(str(g).lower().strip(), label_set) for g in gt]
    y_pred = [map_to_label_set(p, label_set) or NO_PREDICTION for p in pred]
    f1 = f1_score(y_true, y_pred, labels=sorted(set(y_true)), average="weighted", zero_division=0)
    return {
        "weighted_f1": float(f1),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "n_scored": len(y_true),
        "n_unmapped": y_pred.count(NO_PREDICTION),
    }


# ------------------------------------------------------------------------------------------------ calibration
def calibration_scores(gt: Sequence[str], probs: Sequence[dict | None], label_set: Sequence[str],
                       n_bins: int = 10) -> dict:
    """Calibration of closed-set label scores (``{label: probability}`` per sample, as ``--labels`` gives them).

    - ``ece``: expected calibration error of the top label (Guo et al. 2017): samples binned by their top
      probability into ``n_bins`` equal-width bins ``(i/n, (i+1)/n]``; sum over bins of
      ``|bin| / N * |accuracy(bin) - mean confidence(bin)|``.
    - ``brier``: multi-class Brier score, the mean over samples of ``sum_k (p_k - [k = truth])^2`` over the label
      set (a label missing from a sample's scores counts as probability 0); 0 is perfect, 2 the worst.
    - ``accuracy``: of the top label. Samples without scores (a clip that failed) are left out (``n_missing``).

    The paper says the belief becomes "more calibrated" as evidence arrives (Appendix A.4): per observation
    ratio, these make that measurable.
    """
    if len(gt) != len(probs):
        raise ValueError(f"{len(gt)} ground-truth labels but {len(probs)} label-score dicts")
    label_set = [label.lower() for label in label_set]
    rows = [(canonical_label(str(g).lower().strip(), label_set), {str(k).lower(): float(v) for k, v in p.items()})
            for g, p in zip(gt, probs) if p]
    out = {"n_scored": len(rows), "n_missing": len(gt) - len(rows)}
    if not rows:
        return {**out, "ece": None, "brier": None, "accuracy": None}
    truth = np.array([label_set.index(t) for t, _ in rows])
    matrix = np.array([[p.get(label, 0.0) for label in label_set] for _, p in rows])  # (N, K)
    confidence, top = matrix.max(1), matrix.argmax(1)
    correct = (top == truth).astype(float)
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece = sum(abs(correct[bins == b].mean() - confidence[bins == b].mean()) * (bins == b).sum()
              for b in range(n_bins) if (bins == b).any()) / len(rows)
    onehot = np.eye(len(label_set))[truth]
    return {**out, "ece": float(ece), "brier": float(((matrix - onehot) ** 2).sum(1).mean()),
            "accuracy": float(correct.mean())}


# -------------------------------------------------------------------------------- rule-based text -> labels
_POSITIVE_WORDS = frozenset(
    "positive happy happiness joy joyful excited excitement pleased pleasure delighted delight cheerful "
    "content contented contentment satisfied satisfaction glad grateful gratitude thankful love loving "
    "affection affectionate hopeful hope optimistic optimism proud pride amused amusement relieved relief "
    "relaxed calm peaceful confident confidence enthusiastic enthusiasm eager admiration friendly playful "
    "comfortable comforted encouraged encouraging supportive warm warmth touched inspired interested "
    "curious triumphant elated ecstatic blissful appreciative appreciation".split()
)
_NEGATIVE_WORDS = frozenset(
    "negative sad sadness angry anger mad furious rage frustrated frustration annoyed annoyance irritated "
    "irritation worried worry anxious anxiety fear fearful scared afraid nervous nervousness stress "
    "stressed tense tension disgust disgusted disappointed disappointment upset depressed depression lonely "
    "loneliness hurt guilty guilt shame ashamed embarrassed embarrassment jealous jealousy envy envious "
    "resentful resentment contempt helpless helplessness hopeless despair desperate grief sorrow sorrowful "
    "regret impatient impatience dissatisfied dissatisfaction concerned concern uneasy unease distress "
    "distressed pain painful bitter bitterness hostile hostility panic terrified overwhelmed pressure "
    "sarcastic skeptical suspicious doubt doubtful confused confusion agitated agitation miserable "
    "heartbroken hatred hate dismayed troubled unhappy".split()
)


def sentiment_from_labels(labels: Iterable[str]) -> str:
    """``positive`` / ``negative`` / ``neutral`` by a majority vote of known positive and negative words."""
    words = _as_label_list(list(labels))
    positive = sum(word in _POSITIVE_WORDS for word in words)
    negative = sum(word in _NEGATIVE_WORDS for word in words)
    if positive == negative:
        return "neutral"
    return "positive" if positive > negative else "negative"


def sentiment_from_answer(answer: str) -> str:
    """A sentiment answer: its first ``positive``/``negative``/``neutral`` word, else the labels' vote."""
    found = re.search(r"\b(positive|negative|neutral)\b", str(answer or ""), flags=re.IGNORECASE)
    return found.group(1).lower() if found else sentiment_from_labels(extract_labels(answer))


# --------------------------------------------------------------------------------------- LLM extraction
LABEL_PROMPT = (
    "Please assume the role of an expert in the field of emotions. We provide clues that may be related to "
    "the emotions of the characters. Based on the provided clues, please identify the emotional states of the "
    "main character. The main character is the one with the most detailed clues. Please separate different "
    "emotional categories with commas and output only the clearly identifiable emotional categories in a list "
    "format. If none are identified, please output an empty list. Input: We cannot recognize his emotional "
    "state; Output: [] Input: His emotional state is happy, sad, and angry; Output: [happy, sad, angry] "
    "Input: {answer}; Output: "
)
SENTIMENT_PROMPT = (
    "Please act as an expert in the field of emotions. We provide a few words to describe the emotions of a "
    "character. Please choose the most likely sentiment from the given candidates: [positive, negative, "
    "neutral] Please direct output answer without analyzing process. Input: [joyful]; Output: positive "
    "Input: []; Output: neutral Input: {labels}; Output: "
)
# Official sampling settings (AffectGPT's ew_metric.py, vLLM SamplingParams).
SAMPLING = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "repetition_penalty": 1.05, "max_new_tokens": 512}


def clean_llm_output(text: str) -> str:
    """Strip a leading ``Output``/``Input`` and ``:`` and every newline, as the official post-processing does."""
    text = text.strip()
    for prefix in ("output", "Output", "input", "Input"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    text = text.strip()
    for colon in (":", "\uff1a"):
        if text.startswith(colon):
            text = text[len(colon):]
    return text.strip().replace("\n", "").strip()


def parse_llm_labels(text: str) -> list[str]:
    """A cleaned LLM answer such as ``"[Happy, sad]"`` as a lower-cased, de-duplicated label list."""
    return list(dict.fromkeys(_as_label_list(clean_llm_output(text))))


def format_label_list(labels: Iterable[str]) -> str:
    """``["a", "b"]`` -> ``"[a, b]"``, the form the official files store."""
    return "[" + ", ".join(labels) + "]"


class LLMExtractor:
    """The official text -> labels -> sentiment extraction with a local causal LM (e.g. Qwen2.5-7B-Instruct).

    Each prompt is one user message through the tokenizer's chat template with the generation prompt,
    sampled with :data:`SAMPLING`; so, as officially, results drift slightly between runs.

    Args:
        model_name_or_path: a local model folder or Hub id readable by ``AutoModelForCausalLM``.
        device: torch device for the model; ``None`` lets transformers pick (``device_map="auto"``).

    Example:
        >>> extractor = LLMExtractor("Qwen/Qwen2.5-7B-Instruct")  # doctest: +SKIP
        >>> extractor.labels(["He seems happy but also a bit nervous."])  # doctest: +SKIP
        [['happy', 'nervous']]
    """

    def __init__(self, model_name_or_path: str, device: str | None = None, batch_size: int = 8):
        self.model_name_or_path = model_name_or_path
        self.device = device
        self.batch_size = batch_size
        self._tokenizer = None
        self._model = None

    @staticmethod
    def label_prompt(answer: str) -> str:
        return LABEL_PROMPT.format(answer=answer)

    @staticmethod
    def sentiment_prompt(labels) -> str:
        labels = labels if isinstance(labels, str) else format_label_list(labels)
        return SENTIMENT_PROMPT.format(labels=labels)

    def chat_text(self, prompt: str) -> str:
        """The prompt as one user turn of the chat template, ending with the assistant generation prompt."""
        messages = [{"role": "user", "content": prompt}]
        return self._load()[0].apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _load(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model_name_or_path, padding_side="left")
        if self._model is None:
            from transformers import AutoModelForCausalLM

            device_map = self.device if self.device is not None else "auto"
            self._model = AutoModelForCausalLM.from_pretrained(
                self.model_name_or_path, dtype="auto", device_map=device_map
            ).eval()
        return self._tokenizer, self._model

    def generate(self, prompts: Sequence[str]) -> list[str]:
        """Cleaned completions of ``prompts``, in batches of ``batch_size``."""
        import torch

        tokenizer, model = self._load()
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        outputs: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            texts = [self.chat_text(p) for p in prompts[start : start + self.batch_size]]
            batch = tokenizer(texts, return_tensors="pt", padding=True).to(model.device)
            with torch.inference_mode():
                generated = model.generate(**batch, **SAMPLING, pad_token_id=tokenizer.pad_token_id)
            new_tokens = generated[:, batch["input_ids"].shape[1] :]
            decoded = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            outputs.extend(clean_llm_output(text) for text in decoded)
        return outputs

    def labels(self, answers: Sequence[str]) -> list[list[str]]:
        """Free-text answers -> label lists (the ``-openset.npz`` step)."""
        return [parse_llm_labels(text) for text in self.generate([self.label_prompt(a) for a in answers])]

    def sentiments(self, label_lists: Sequence) -> list[str]:
        """Label lists -> ``positive``/``negative``/``neutral``/other (the ``-openset-sentiment.npz`` step)."""
        replies = self.generate([self.sentiment_prompt(labels) for labels in label_lists])
        return [reply.strip().lower() for reply in replies]


def bootstrap_interval(score, n: int, n_boot: int = 1000, seed: int = 0, level: float = 0.95):
    """Percentile bootstrap interval of ``score(indices)`` over ``n`` items resampled with replacement.

    Args:
        score: maps an index array (n,) to a number (e.g. weighted F1 of those clips).
        n: number of items (clips).

    Returns:
        ``(low, high)``, or None for ``n == 0``.
    """
    if n == 0:
        return None
    rng = np.random.default_rng(seed)
    values = np.sort([score(rng.integers(0, n, n)) for _ in range(n_boot)])
    tail = (1 - level) / 2
    return float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail))
