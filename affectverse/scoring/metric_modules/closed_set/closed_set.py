"""Closed-set alternative to MER-UniBench: sklearn weighted F1 and accuracy over a dataset's label set."""

import datasets
import evaluate

try:  # indented, so evaluate does not ask to pip-install a package named `affectverse`
    from affectverse.scoring.metric_modules import CITATION
    from affectverse.scoring.scores import closed_set_scores
except ImportError as err:
    raise ImportError(
        f"closed_set needs the AffectVerse `affectverse` package ({err}): pip install -e <repo>, "
        "run from the repository root, or load it with affectverse.scoring.metric_modules.load_metric('closed_set')"
    ) from err

_DESCRIPTION = """\
The "weighted F1" that the AffectVerse paper's text names for emotion sets, as opposed to the official
MER-UniBench HIT. Each predicted label list is mapped to the first label of the dataset's label set (in
the set's order) that it names, by itself or an alias (joy/happy, angry/anger, sadness/sad, ...); a list
naming none counts as wrong. Scores: sklearn f1_score(average="weighted") and accuracy.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of predicted label lists.
    references: list of ground-truth labels, each in label_set (or an alias of one).
    label_set: the dataset's labels, e.g. ["neutral", "angry", "happy", "sad", "worried", "surprise"].
Returns:
    weighted_f1, accuracy, n_scored, n_unmapped (predictions naming no label of the set).
Example:
    >>> closed = evaluate.load("affectverse/scoring/metric_modules/closed_set")
    >>> closed.compute(predictions=[["joy"]], references=["happy"], label_set=["happy", "sad"])["accuracy"]
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ClosedSet(evaluate.Metric):
    """Weighted F1 and accuracy over a closed label set."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("string")), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, label_set=None):
        if not label_set:
            raise ValueError("closed_set needs label_set=[...], the dataset's labels")
        return closed_set_scores(references, predictions, label_set)
