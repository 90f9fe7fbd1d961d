"""Test helpers: tiny models re-exported from ``benchmarks.synthetic`` (shared with the benchmark scripts), and
where the reference files of ``../shared`` are."""

import os
from pathlib import Path

import torch

from affectverse.default.tiny import tiny_config, tiny_processor
from benchmarks.synthetic import PATCH_DIM, audio_tokens, build_batch, build_sample, tiny, tiny_full_omni  # noqa: F401
from modeling_affectverse import AffectVerseForConditionalGeneration

ROOT = Path(__file__).resolve().parents[1]
SHARED_ENV = "AFFECTVERSE_SHARED"


def locate_shared() -> Path:
    """``../shared`` beside the checkout (MER-UniBench reference files), where every test looks for it.

    ``AFFECTVERSE_SHARED=DIR`` points elsewhere; ``AFFECTVERSE_SHARED=none`` hides it, as on a user's clone (CI's
    second pass): the path returned then does not exist, and each test that needs it skips, naming it.
    """
    value = os.environ.get(SHARED_ENV)
    if value is None:
        return ROOT.parent / "shared"
    if value.strip().lower() in ("", "none"):
        return Path(f"<../shared hidden by {SHARED_ENV}={value}>")
    return Path(value)


SHARED = locate_shared()


def save_tiny_model(folder: Path):
    """The tiny preset (seed 0), eval mode, saved with its processor to ``folder`` as a model folder; returned."""
    torch.manual_seed(0)
    model = AffectVerseForConditionalGeneration(tiny_config()).eval()
    model.save_pretrained(folder)
    tiny_processor().save_pretrained(folder)
    return model


def write_mini_wheel(folder: Path) -> Path:
    """A hand-made emotion-wheel folder in the MER-UniBench layout (``format.csv``, ``synonym.xlsx``,
    ``wheel1..5.xlsx``): happy/joy, sad, angry, surprise in wheels 1-4; wheel 5 lacks surprise; neutral maps to
    nothing. Tests of the scorers' arithmetic use it where ``../shared`` (the real wheel) is absent."""
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    forms = {"happy": "[happiness, happily]", "joy": "[joyful]", "sad": "[sadness]", "angry": "[anger, mad]",
             "surprise": "[surprised]", "neutral": "[]"}
    pd.DataFrame({"name": list(forms), "format": list(forms.values())}).to_csv(folder / "format.csv", index=False)
    synonyms = {"happy": "[joy, joyful]", "sad": "[sadness]", "angry": "[anger, mad]", "surprise": "[surprised]"}
    runs = {}
    for r in range(1, 9):
        runs[f"word_run{r}"], runs[f"synonym_run{r}"] = list(synonyms), list(synonyms.values())
    pd.DataFrame(runs).to_excel(folder / "synonym.xlsx", index=False)
    tree = [("happy", "joy", "joyful"), ("sad", "sad", "sad"), ("angry", "angry", "mad"),
            ("surprise", "surprise", "surprised")]
    for w in range(1, 6):
        rows = [t for t in tree if w < 5 or t[0] != "surprise"]
        pd.DataFrame(rows, columns=["level1", "level2", "level3"]).to_excel(folder / f"wheel{w}.xlsx", index=False)
    return folder
