#!/usr/bin/env bash
# Lint (ruff) over the repository, the format check and a type check (mypy) on translators/ and ds_tp/config/.
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check .
ruff format --check translators ds_tp/config
mypy --ignore-missing-imports --follow-imports=silent translators ds_tp/config
