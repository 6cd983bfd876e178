#!/usr/bin/env bash
# Fresh-machine install into ./.venv (CPU PyTorch). Usage: scripts/install.sh [--test]
#   --test  also installs the test tools and the reference Keras stack (tensorflow-cpu, tf-keras)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# CPU build of PyTorch first: an unpinned torch would pull a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0"
extras=""
if [ "${1:-}" = "--test" ]; then extras="[test,keras-ref,container-tools,engines]"; fi
python -m pip install -q -e ".${extras}"
# Real single-subject anatomy (Colin27 head, AAL atlas) used by tests and the simulator when present.
if [ ! -e /usr/share/mricron/templates/ch2.nii.gz ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mricron-data) >/dev/null 2>&1 \
    || echo "note: mricron-data (Colin27) not installed; tests that need it will be skipped" >&2
fi
echo "vbm-predict installed in $(pwd)/.venv"
