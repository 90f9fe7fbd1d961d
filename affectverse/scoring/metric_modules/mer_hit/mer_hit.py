"""MER-UniBench HIT: emotion-wheel hit rate for one-label emotion benchmarks (MER2023, MER2024, MELD, IEMOCAP)."""

import datasets
import evaluate

try:  # indented, so evaluate does not ask to pip-install a package named `affectverse`
    from affectverse.scoring.metric_modules import CITATION
    from affectverse.scoring.scores import hit_score
    from affectverse.scoring.wheel import load_wheel
except ImportError as err:
    raise ImportError(
        f"mer_hit needs the AffectVerse `affectverse` package ({err}): pip install -e <repo>, "
        "run from the repository root, or load it with affectverse.scoring.metric_modules.load_metric('mer_hit')"
    ) from err

_DESCRIPTION = """\
HIT as AffectGPT's official MER-UniBench scorer computes it. Each label is mapped to a level-1 cluster of
five emotion wheels (word forms -> 8 merged synonym runs -> first wheel word in alphabetical order). Per
wheel, samples whose ground truth maps to nothing (e.g. neutral) are skipped; a sample scores 1 when any
predicted label lands in the ground-truth cluster. The score is the mean over wheels of the mean hit.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of predicted label lists, e.g. [["happy", "excited"], ...].
    references: list of ground-truth labels, e.g. ["happy", ...] (aliases joy/angry/sadness also work).
    emotion_wheel: folder with format.csv, synonym.xlsx, wheel1..5.xlsx, or a loaded EmotionWheel.
Returns:
    hit: mean over the five wheels (0..1); per_wheel: the five hit rates; n_scored: samples scored per wheel.
Example:
    >>> hit = evaluate.load("affectverse/scoring/metric_modules/mer_hit")
    >>> hit.compute(predictions=[["joyful"]], references=["happy"], emotion_wheel="emotion_wheel")["hit"]
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MerHit(evaluate.Metric):
    """HIT over the five emotion wheels."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("string")), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, emotion_wheel=None):
        return hit_score(references, predictions, load_wheel(emotion_wheel))
