#!/usr/bin/env bash
# All tests: set up, then pytest (unit tests, multi-rank CPU tests, a few real-launcher tests).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
export OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu
exec python -m pytest -q "$@"
