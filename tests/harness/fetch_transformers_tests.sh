#!/usr/bin/env bash
# Fetch transformers' own common test harness (ModelTesterMixin, GenerationTesterMixin, the Qwen2.5-Omni thinker
# tester) into the ignored folder .hf_harness/, for tests/test_hf_conformance.py (which skips when it is absent).
#   - the top-level tests/*.py come from the transformers sdist on the package index (pip download);
#   - the sdist lacks tests/generation, tests/exporters, tests/utils, tests/models and utils/test_module: they
#     come from $TRANSFORMERS_SRC (a transformers source checkout) when set; nothing is fetched from elsewhere.
# transformers' tests/ becomes the package `hf_tests` (the project has its own `tests`); its one absolute
# `from tests.` import is rewritten to match. Whatever it cannot get, it names and leaves out; it exits 0.
set -uo pipefail
VERSION="${TRANSFORMERS_VERSION:-5.24.0}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
HARNESS="$ROOT/.hf_harness"
EXTRA=(tests/generation/__init__.py tests/generation/test_utils.py tests/exporters/__init__.py
       tests/exporters/test_export.py tests/utils/__init__.py tests/utils/test_configuration_utils.py
       tests/models/__init__.py tests/models/qwen2_5_omni/__init__.py
       tests/models/qwen2_5_omni/test_modeling_qwen2_5_omni.py
       utils/test_module/__init__.py utils/test_module/custom_configuration.py)
rm -rf "$HARNESS"
mkdir -p "$HARNESS/hf_tests"
touch "$HARNESS/hf_tests/__init__.py"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
if python -m pip download -q --no-deps --no-binary :all: "transformers==$VERSION" -d "$TMP" >/dev/null 2>&1; then
  tar -xzf "$TMP/transformers-$VERSION.tar.gz" -C "$TMP" --wildcards "transformers-$VERSION/tests/*.py"
  find "$TMP/transformers-$VERSION/tests" -maxdepth 1 -name '*.py' ! -name conftest.py -exec cp {} "$HARNESS/hf_tests/" \;
else
  echo "fetch_transformers_tests: could not download the transformers $VERSION sdist" >&2
fi
for f in "${EXTRA[@]}"; do
  out="$HARNESS/${f/#tests\//hf_tests/}"
  mkdir -p "$(dirname "$out")"
  if [ -n "${TRANSFORMERS_SRC:-}" ] && [ -f "$TRANSFORMERS_SRC/$f" ]; then
    cp "$TRANSFORMERS_SRC/$f" "$out"
  else
    echo "fetch_transformers_tests: no $f (set TRANSFORMERS_SRC to a transformers $VERSION checkout)" >&2
  fi
done
# test_pipeline_mixin.py reads these at import: an empty `transformers` stub that direct_transformers_import
# executes (returning the installed package) and an empty tiny-model summary (the thinker test maps no pipelines).
mkdir -p "$HARNESS/src/transformers" "$HARNESS/tests/utils"
: > "$HARNESS/src/transformers/__init__.py"
echo '{}' > "$HARNESS/tests/utils/tiny_model_summary.json"
find "$HARNESS/hf_tests" -name '*.py' -exec sed -i 's/^from tests\./from hf_tests./' {} +
echo "$VERSION" > "$HARNESS/VERSION"
