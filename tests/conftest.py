"""Shared pytest setup: offline Hugging Face, a writable module cache, deterministic seeds."""

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# transformers/evaluate copy remote code into HF_MODULES_CACHE (read at import): keep it writable, per run.
os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="hf_modules_"))
# the model-identity hash cache (affectverse.checkpoint.cache_dir): per run, not the user's ~/.cache
os.environ.setdefault("AFFECTVERSE_CACHE", tempfile.mkdtemp(prefix="affectverse_cache_"))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)



def pytest_report_header(config):
    from tests.helpers import SHARED, SHARED_ENV

    state = "present" if SHARED.is_dir() else "absent: tests that need its reference files skip"
    return f"../shared: {SHARED} ({state}; set {SHARED_ENV}=none to hide it, as on a user's clone)"
