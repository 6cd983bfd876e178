#!/usr/bin/env bash
# Fresh-machine install into ./.venv (CPU PyTorch). Usage: scripts/install.sh [--test]
#   --test  also installs the test tools, the linters, the reference Keras stack (tensorflow-cpu,
#           tf-keras) and Clinica 0.12 in its own ./.venv-clinica (as the image does in
#           /opt/clinica-venv; the app finds it through CLINICA_PYTHON). VBM_PREDICT_NO_CLINICA=1 skips it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BASE_PY="$(command -v "$PY")"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
clinica_pid=""
if [ "${1:-}" = "--test" ] && [ "${VBM_PREDICT_NO_CLINICA:-0}" != 1 ]; then
  # Clinica pins its own dependencies (they clash with the app's): a separate venv, driven as a
  # subprocess. uv resolves and downloads its ~2.8 GB of wheels in parallel (pip: 4x slower). Both
  # installs are mostly downloads and share nothing, so Clinica's runs while pip fills .venv.
  python -m pip install -q "uv>=0.4"
  [ -x .venv-clinica/bin/python ] || uv venv -q --python "$BASE_PY" .venv-clinica
  uv pip install -q --python .venv-clinica/bin/python "clinica==0.12.0" >.venv-clinica/install.log 2>&1 &
  clinica_pid=$!
  trap 'kill "$clinica_pid" 2>/dev/null || true' EXIT  # a pip failure below must not leave it running
fi
# CPU build of PyTorch first: an unpinned torch would pull a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0"
extras=""
if [ "${1:-}" = "--test" ]; then extras="[test,lint,keras-ref,container-tools,engines]"; fi
python -m pip install -q -e ".${extras}"
if [ -n "$clinica_pid" ]; then
  if ! wait "$clinica_pid"; then cat .venv-clinica/install.log >&2; echo "Clinica install into .venv-clinica failed" >&2; exit 1; fi
  .venv-clinica/bin/python -c "import clinica, nipype; print('clinica', clinica.__version__, 'in .venv-clinica')"
fi
# Real single-subject anatomy (Colin27 head, AAL atlas) used by tests and the simulator when present.
if [ ! -e /usr/share/mricron/templates/ch2.nii.gz ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mricron-data) >/dev/null 2>&1 \
    || echo "note: mricron-data (Colin27) not installed; tests that need it will be skipped" >&2
fi
echo "vbm-predict installed in $(pwd)/.venv"
