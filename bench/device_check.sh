#!/usr/bin/env bash
# GPU check for a lent device machine: runs bench/device_check.py with the project's venv.
# Usage (repository root): bash bench/device_check.sh [--inputs 20] [--repeats 5]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
PYTHONPATH="$PWD" "$PY" bench/device_check.py "$@"
