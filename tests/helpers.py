"""Test helpers: re-exported from ``benchmarks.synthetic`` (shared with the benchmark scripts)."""

from benchmarks.synthetic import PATCH_DIM, audio_tokens, build_batch, build_sample, tiny, tiny_full_omni  # noqa: F401
