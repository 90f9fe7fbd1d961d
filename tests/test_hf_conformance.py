"""transformers' own common test suites (ModelTesterMixin + GenerationTesterMixin) with AffectVerse swapped in.

The stock Qwen2.5-Omni thinker's test class runs with the model class replaced by AffectVerse, once with
``belief_construction="none"`` and once with the default EWM. The harness is not in the transformers wheel:
``tests/harness/fetch_transformers_tests.sh`` fetches it into ``.hf_harness/`` (ignored); without it this module
skips. The tester here writes the ``<|belief|>`` placeholders the EWM construction needs into the harness's
inputs (audio is the prompt's one audio/video modality: first group after the audio block, second before the
image block). ``AFFECTVERSE_CONFORMANCE_STOCK=1`` also runs the stock class itself (the baseline). Marked slow:
the two classes take about a minute on 2 CPU cores.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / ".hf_harness"
NEEDED = ["hf_tests/test_modeling_common.py", "hf_tests/test_configuration_common.py",
          "hf_tests/test_pipeline_mixin.py", "hf_tests/generation/test_utils.py", "hf_tests/exporters/test_export.py",
          "hf_tests/utils/test_configuration_utils.py", "hf_tests/models/qwen2_5_omni/test_modeling_qwen2_5_omni.py",
          "utils/test_module/custom_configuration.py"]
missing = [p for p in NEEDED if not (HARNESS / p).is_file()]
if missing:
    pytest.skip(f"transformers' test harness is absent ({', '.join(missing)} under {HARNESS}); run "
                "tests/harness/fetch_transformers_tests.sh", allow_module_level=True)
for module in ("parameterized", "httpx"):  # the harness's own test dependencies (the project's dev extras)
    pytest.importorskip(module, reason=f"transformers' test harness needs the `{module}` package")

sys.path.append(str(HARNESS))  # last: the harness folder also holds `tests/` and `utils/` data folders
import transformers.testing_utils  # noqa: E402,F401  (before the stub below: transformers probes librosa at import)
from hf_tests.test_configuration_common import ConfigTester  # noqa: E402
from hf_tests.test_modeling_common import ModelTesterMixin  # noqa: E402,F401

from configuration_affectverse import AffectVerseConfig  # noqa: E402
from modeling_affectverse import AffectVerseForConditionalGeneration  # noqa: E402

try:
    import librosa  # noqa: F401
    from hf_tests.models.qwen2_5_omni import test_modeling_qwen2_5_omni as stock
except ImportError:  # imported at the top of the thinker's test file, used only by its Hub integration tests
    sys.modules["librosa"] = types.ModuleType("librosa")
    try:
        from hf_tests.models.qwen2_5_omni import test_modeling_qwen2_5_omni as stock
    finally:
        del sys.modules["librosa"]

pytestmark = pytest.mark.slow
BELIEF_ID = 10  # a low id: the harness clamps ids below the vocabulary size when it shrinks the embeddings


class AffectVerseTester(stock.Qwen2_5OmniThinkerForConditionalGenerationTester):
    """The thinker's tester with an AffectVerse config and belief placeholders in ``input_ids``."""

    construction = "ewm"

    def get_config(self):
        thinker = super().get_config().to_dict()
        for key in ("model_type", "architectures", "transformers_version"):
            thinker.pop(key, None)
        return AffectVerseConfig(**thinker, belief_token_id=BELIEF_ID, belief_construction=self.construction,
                                 ewm_hidden_size=16, ewm_num_heads=2, ewm_ffn_mult=2, future_queries=2,
                                 num_belief_queries=2, rollout_steps=2)

    def prepare_config_and_inputs_for_common(self):
        config, inputs = super().prepare_config_and_inputs_for_common()
        ids = inputs["input_ids"]
        # random text must not look like a placeholder; nor like video (the harness's prompts hold none, but its
        # random ids include the video id, which would make AffectVerse count a second modality)
        ids[(ids == BELIEF_ID) | (ids == config.video_token_id)] = 9
        first, second = config.belief_split(1)  # the harness's prompts hold audio as their one AV modality
        after_audio = int((ids[0] == config.audio_end_token_id).nonzero()[-1]) + 1
        before_image = int((ids[0] == config.vision_start_token_id).nonzero()[0])
        ids[:, after_audio:after_audio + first] = BELIEF_ID
        ids[:, before_image - second:before_image] = BELIEF_ID
        return config, inputs


def _affectverse_case(construction):
    class Case(stock.Qwen2_5OmniThinkerForConditionalGenerationModelTest):
        all_model_classes = (AffectVerseForConditionalGeneration,)
        all_generative_model_classes = (AffectVerseForConditionalGeneration,)

        def setUp(self):
            self.model_tester = AffectVerseTester(self)
            self.model_tester.construction = construction
            self.config_tester = ConfigTester(self, config_class=AffectVerseConfig, has_text_modality=False)

    Case.__name__ = Case.__qualname__ = f"TestAffectVerse_{construction}"
    return Case


TestAffectVerse_none = _affectverse_case("none")
TestAffectVerse_ewm = _affectverse_case("ewm")

if os.environ.get("AFFECTVERSE_CONFORMANCE_STOCK") == "1":
    class TestStockThinker(stock.Qwen2_5OmniThinkerForConditionalGenerationModelTest):
        """The baseline: transformers' own thinker class, unchanged."""
