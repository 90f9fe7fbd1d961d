"""Test helpers: tiny models re-exported from ``benchmarks.synthetic`` (shared with the benchmark scripts), the
training tests' common set-up (tests/test_train.py, tests/test_grpo.py), and where the reference files of ``../shared``
are."""

import os
from pathlib import Path

import torch
from transformers import TrainerCallback

from affectverse.default.tiny import tiny_config, tiny_processor
from affectverse.default.wheel import write_mini_wheel  # the tests' hand-made wheel (re-exported)
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


def tiny_model(seed: int = 0, **overrides) -> AffectVerseForConditionalGeneration:
    """The tiny preset (``tiny_config(**overrides)``) with random weights drawn from ``seed``."""
    torch.manual_seed(seed)
    return AffectVerseForConditionalGeneration(tiny_config(**overrides))


SHORT_CPU_RUN = dict(max_steps=2, logging_steps=1, save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True)


def cpu_run_args(cls, out, **kwargs):
    """``cls`` (TrainingArguments or a subclass) of a short, seeded, quiet CPU run into ``out`` (``SHORT_CPU_RUN``:
    two steps, each logged, no checkpoints); ``kwargs`` add to it or override it."""
    return cls(**{"output_dir": str(out), **SHORT_CPU_RUN, **kwargs})


class StopAt(TrainerCallback):
    """Stops training at the end of step ``step`` (an interrupted run, to be resumed)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def trainable(model) -> dict:
    """A copy of ``model``'s trainable parameters by name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def write_rules_wheel(folder: Path) -> Path:
    """The hand-made wheel (``write_mini_wheel``, every word of it mapped as there) plus words that exercise each rule
    of ``affectverse.scoring.wheel``, so that the rules are tested without ``../shared`` (tests/test_scoring.py):

    - "cheerfully" -> its base form "cheerful" -> (synonym run 3 only) "joy", a level-2 word of happy;
    - "gleefully" -> "gleeful" -> (run 6 only) "joyful", a level-3 word under happy > joy;
    - "bittersweet" -> the candidates joy (run 3) and sad (run 6): the alphabetically first, joy, decides;
    - "peacefully" -> "peaceful" -> (run 6) "tranquil", a level-3 word of a new tree calm > relaxed whose level1
      and level2 cells are merged over two rows (empty below the first).
    """
    import pandas as pd

    write_mini_wheel(folder)
    forms = pd.read_csv(folder / "format.csv")
    extra_forms = {"cheerful": "[cheerfully]", "gleeful": "[gleefully]", "bittersweet": "[]", "peaceful": "[peacefully]"}
    pd.concat([forms, pd.DataFrame({"name": list(extra_forms), "format": list(extra_forms.values())})]).to_csv(
        folder / "format.csv", index=False)
    runs = pd.read_excel(folder / "synonym.xlsx", engine="openpyxl")
    extra = {3: [("joy", "[cheerful, bittersweet]")],
             6: [("joyful", "[gleeful]"), ("sad", "[bittersweet]"), ("tranquil", "[peaceful]")]}
    width = max(len(rows) for rows in extra.values())
    pad = (runs["word_run1"][0], runs["synonym_run1"][0])  # a row every run already has: changes nothing
    added = {}
    for r in range(1, 9):
        rows = extra.get(r, []) + [pad] * (width - len(extra.get(r, [])))
        added[f"word_run{r}"], added[f"synonym_run{r}"] = [w for w, _ in rows], [s for _, s in rows]
    pd.concat([runs, pd.DataFrame(added)]).to_excel(folder / "synonym.xlsx", index=False)
    for wheel in sorted(folder.glob("wheel*.xlsx")):
        tree = pd.read_excel(wheel, engine="openpyxl")
        calm = pd.DataFrame([("calm", "relaxed", "serene"), (None, None, "tranquil")], columns=list(tree.columns))
        pd.concat([tree, calm]).to_excel(wheel, index=False)
    return folder
