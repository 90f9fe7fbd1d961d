"""MER-UniBench sentiment: non-zero weighted F1 and Acc-2 (CMU-MOSI, CMU-MOSEI, CH-SIMS, CH-SIMS v2)."""

import datasets
import evaluate

try:  # indented, so evaluate does not ask to pip-install a package named `affectverse`
    from affectverse.scoring.metric_modules import CITATION
    from affectverse.scoring.scores import sentiment_scores
except ImportError as err:
    raise ImportError(
        f"mer_sentiment needs the AffectVerse `affectverse` package ({err}): pip install -e <repo>, "
        "run from the repository root, or load it with affectverse.scoring.metric_modules.load_metric('mer_sentiment')"
    ) from err

_DESCRIPTION = """\
Sentiment scores as AffectGPT's official MER-UniBench scorer computes them: a prediction "positive" -> 1,
"negative" -> -1, anything else -> 0; samples whose ground-truth valence is 0 are dropped; val > 0 is
compared with pred > 0 (a neutral prediction counts as negative). Main score: sklearn weighted F1 (WAF);
Acc-2 beside it.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of sentiment words ("positive", "negative", "neutral", other).
    references: list of ground-truth valences (MOSI/MOSEI in [-3, 3], SIMS in [-1, 1]).
Returns:
    weighted_f1 (main score), acc2, n_scored (non-zero ground truth count).
Example:
    >>> sentiment = evaluate.load("affectverse/scoring/metric_modules/mer_sentiment")
    >>> sentiment.compute(predictions=["positive", "neutral"], references=[1.2, -0.4])["acc2"]
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MerSentiment(evaluate.Metric):
    """Non-zero weighted F1 and Acc-2."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("float64")}
            ),
        )

    def _compute(self, predictions, references):
        return sentiment_scores(references, predictions)
