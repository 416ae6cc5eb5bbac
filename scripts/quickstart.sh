#!/usr/bin/env bash
# The main job: set up, then train the embedded tiny Llama (2 CPU ranks, ZeRO-3) and check the result.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
ds-tp train examples/quickstart.yaml --overwrite "$@"
python scripts/check_quickstart.py "${QUICKSTART_OUT:-outputs/quickstart}"
