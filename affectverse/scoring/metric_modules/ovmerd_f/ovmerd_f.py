"""MER-UniBench OV-MERD+: emotion-wheel level-1 set F-score averaged over five wheels."""

import datasets
import evaluate

try:  # indented, so evaluate does not ask to pip-install a package named `affectverse`
    from affectverse.scoring.metric_modules import CITATION
    from affectverse.scoring.scores import ovmerd_scores
    from affectverse.scoring.wheel import load_wheel
except ImportError as err:
    raise ImportError(
        f"ovmerd_f needs the AffectVerse `affectverse` package ({err}): pip install -e <repo>, "
        "run from the repository root, or load it with affectverse.scoring.metric_modules.load_metric('ovmerd_f')"
    ) from err

_DESCRIPTION = """\
OV-MERD+ score as AffectGPT's official scorer computes it. Per emotion wheel, ground-truth and predicted
label sets are mapped to level-1 clusters; samples whose ground truth maps to nothing are skipped; an empty
prediction gives P = R = 0, else P_i = |G & P| / |P| and R_i = |G & P| / |G|; P_w and R_w are means and
F_w = 2 P_w R_w / (P_w + R_w). The score is the mean of F_w over the five wheels.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of predicted label lists.
    references: list of ground-truth label lists.
    emotion_wheel: folder with format.csv, synonym.xlsx, wheel1..5.xlsx, or a loaded EmotionWheel.
Returns:
    f1 (main score), precision, recall (each a mean over wheels), per_wheel, n_scored.
Example:
    >>> ov = evaluate.load("affectverse/scoring/metric_modules/ovmerd_f")
    >>> ov.compute(predictions=[["happy"]], references=[["joyful"]], emotion_wheel="emotion_wheel")["f1"]
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class OvmerdF(evaluate.Metric):
    """Emotion-wheel set F-score."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("string")),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    def _compute(self, predictions, references, emotion_wheel=None):
        return ovmerd_scores(references, predictions, load_wheel(emotion_wheel))
