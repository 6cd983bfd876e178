#!/usr/bin/env bash
# Static checks: ruff (style and likely bugs), mypy (types of the package), import-linter (layers).
# Settings are in pyproject.toml; the tools come with `scripts/install.sh --test` (extra `lint`).
# Usage: .ci/lint.sh [PYTHON]   (default: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
BIN=$(dirname "$PY")
status=0
echo "== ruff"; "$BIN/ruff" check . || status=1
echo "== mypy"; "$PY" -m mypy || status=1
echo "== import-linter"; PYTHONPATH=$PWD "$BIN/lint-imports" || status=1
exit $status
