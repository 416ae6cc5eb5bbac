#!/usr/bin/env bash
# Create (or reuse) .venv with the CPU build of torch and ds-tp installed in editable mode.
# Sourced by quickstart.sh and test.sh, so each of them works on a fresh machine.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DS_TP_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.ds-tp-installed"
if [ ! -f "$stamp" ] || [ "$ROOT/setup.cfg" -nt "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # The CPU build of torch lies on this kind of machine's disk; a bare `torch` would pull a CUDA build.
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  # DS_BUILD_OPS=0: DeepSpeed installs as pure Python, nothing compiled.
  DS_BUILD_OPS=0 "$VENV/bin/python" -m pip install -q -e "$ROOT[test]"
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
