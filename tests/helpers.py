"""Test helpers: tiny models re-exported from ``benchmarks.synthetic`` (shared with the benchmark scripts), and
where the reference files of ``../shared`` are."""

import os
from pathlib import Path

import torch

from affectverse.default.tiny import tiny_config, tiny_processor
from affectverse.default.wheel import write_mini_wheel  # noqa: F401 (the tests' hand-made wheel)
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
