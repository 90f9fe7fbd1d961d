"""A hand-made emotion wheel in the MER-UniBench layout: the embedded default's stand-in for the real one.

The real wheel (253 words, 5 wheels) is a MER-UniBench file that is not shipped; the embedded default's GRPO run
(``python train.py --method grpo``) scores its emotion-wheel reward on this one, and the scorers' tests use it where
``../shared`` is absent. It covers the generated clips' labels (``affectverse/default/clips.py``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from affectverse import ownership
from affectverse.scoring.wheel import N_SYNONYM_RUNS, N_WHEELS


def write_mini_wheel(folder) -> Path:
    """A hand-made emotion-wheel folder (``format.csv``, ``synonym.xlsx``, ``wheel1..5.xlsx``): happy/joy, sad,
    angry, surprise in wheels 1-4; wheel 5 lacks surprise; neutral maps to nothing (as in the real wheel). Written
    whole into a new or empty ``folder`` (:func:`affectverse.ownership.write_folder`); any other is refused."""
    def fill(out: Path):
        forms = {"happy": "[happiness, happily]", "joy": "[joyful]", "sad": "[sadness]", "angry": "[anger, mad]",
                 "surprise": "[surprised]", "neutral": "[]"}
        pd.DataFrame({"name": list(forms), "format": list(forms.values())}).to_csv(out / "format.csv", index=False)
        synonyms = {"happy": "[joy, joyful]", "sad": "[sadness]", "angry": "[anger, mad]", "surprise": "[surprised]"}
        runs = {}
        for r in range(1, N_SYNONYM_RUNS + 1):
            runs[f"word_run{r}"], runs[f"synonym_run{r}"] = list(synonyms), list(synonyms.values())
        pd.DataFrame(runs).to_excel(out / "synonym.xlsx", index=False)
        tree = [("happy", "joy", "joyful"), ("sad", "sad", "sad"), ("angry", "angry", "mad"),
                ("surprise", "surprise", "surprised")]
        for w in range(1, N_WHEELS + 1):
            rows = [t for t in tree if w < N_WHEELS or t[0] != "surprise"]
            pd.DataFrame(rows, columns=["level1", "level2", "level3"]).to_excel(out / f"wheel{w}.xlsx", index=False)

    return ownership.write_folder(folder, "wheel", fill, option="--emotion_wheel")
