#!/usr/bin/env bash
# The differential tier's reference (tests/axolotl_diff): Axolotl 0.21.0 itself, without its GPU
# dependencies. It declares Python >= 3.12, but its tokenization code runs on 3.11; --no-deps keeps
# the CPU torch build in place. Its tokenization imports need only colorama and addict beyond ds-tp's
# own requirements (setup.cfg's axolotl-diff extra).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
if ! python -c "import axolotl, importlib.metadata as m; assert m.version('axolotl') == '0.21.0'" 2>/dev/null; then
  python -m pip install -q --no-deps --ignore-requires-python "axolotl==0.21.0"
fi
python -m pip install -q -e "$ROOT[axolotl-diff]"
