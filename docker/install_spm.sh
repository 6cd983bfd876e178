#!/usr/bin/env bash
# Install SPM25 standalone + MATLAB Runtime R2024b + Clinica 0.12 for vbm-predict's clinica backend.
#
# Why each step (facts: DESIGN §3, Clinica 0.12's clinica/utils/spm.py and check_dependency.py):
# * Clinica 0.11+ drives SPM only as SPM25 *standalone*: it globs exactly one run_spm*.sh and one
#   TPM.nii below $SPMSTANDALONE_HOME, so the compiled archive (spm25.ctf) is unpacked here, at build
#   time, by running the standalone once (a read-only Apptainer image could not unpack it later).
# * Clinica reads the Runtime's version from the *parent* folder name of $MCR_HOME ("2024b" -> 24.2),
#   so the Runtime is installed into /opt/mcr/2024b and MCR_HOME=/opt/mcr/2024b/R2024b.
# * Clinica 0.12 pins nilearn<0.14 and pandas<3, which the app itself does not need: it goes into
#   its own virtual environment (/opt/clinica-venv); the app runs it as a subprocess with that
#   interpreter (CLINICA_PYTHON), through bids_app/preproc/_clinica_driver.py.
#
# Usage (as root, at image build):  install_spm.sh
# Env overrides: SPM_VERSION, SPM_URL, MCR_URL, CLINICA_VERSION, PREFIX
set -euo pipefail

SPM_VERSION="${SPM_VERSION:-25.01.02}"
SPM_URL="${SPM_URL:-https://github.com/spm/spm/releases/download/${SPM_VERSION}/spm_standalone_${SPM_VERSION}_Linux.zip}"
MCR_URL="${MCR_URL:-https://ssd.mathworks.com/supportfiles/downloads/R2024b/Release/0/deployment_files/installer/complete/glnxa64/MATLAB_Runtime_R2024b_glnxa64.zip}"
CLINICA_VERSION="${CLINICA_VERSION:-0.12.0}"
PREFIX="${PREFIX:-/opt}"
SPM_HOME="${PREFIX}/spm25"
MCR_ROOT="${PREFIX}/mcr/2024b"
MCR_HOME="${MCR_ROOT}/R2024b"

tmp="$(mktemp -d)"
trap 'rm -rf "${tmp}"' EXIT

echo "[install_spm] MATLAB Runtime R2024b -> ${MCR_ROOT}"
curl -fsSL --retry 3 -o "${tmp}/mcr.zip" "${MCR_URL}"
mkdir -p "${tmp}/mcr"
unzip -q "${tmp}/mcr.zip" -d "${tmp}/mcr"
"${tmp}/mcr/install" -destinationFolder "${MCR_ROOT}" -agreeToLicense yes -mode silent
rm -rf "${tmp}/mcr" "${tmp}/mcr.zip"
test -d "${MCR_HOME}/runtime/glnxa64" || { echo "MATLAB Runtime not found in ${MCR_HOME}" >&2; exit 1; }

echo "[install_spm] SPM ${SPM_VERSION} standalone -> ${SPM_HOME}"
curl -fsSL --retry 3 -o "${tmp}/spm.zip" "${SPM_URL}"
mkdir -p "${SPM_HOME}"
unzip -q "${tmp}/spm.zip" -d "${tmp}/spm"
# the archive holds one top folder (spm25 or spm_standalone...); move its content to SPM_HOME
top="$(find "${tmp}/spm" -name 'run_spm*.sh' -printf '%h\n' | head -n 1)"
cp -a "${top}/." "${SPM_HOME}/"
chmod +x "${SPM_HOME}"/run_spm*.sh "${SPM_HOME}"/spm* 2>/dev/null || true
# unpack the compiled archive now (creates TPM.nii below SPM_HOME) and prove SPM runs
export MCR_INHIBIT_CTF_LOCK=1 MCR_CACHE_ROOT="${tmp}/mcr_cache"
"${SPM_HOME}"/run_spm*.sh "${MCR_HOME}" function exit
n_run="$(find "${SPM_HOME}" -name 'run_spm*.sh' | wc -l)"
n_tpm="$(find "${SPM_HOME}" -name 'TPM.nii' | wc -l)"
if [ "${n_run}" != 1 ] || [ "${n_tpm}" != 1 ]; then
  echo "expected one run_spm*.sh and one TPM.nii below ${SPM_HOME}; found ${n_run} and ${n_tpm}" >&2
  exit 1
fi
chmod -R a+rX "${SPM_HOME}" "${PREFIX}/mcr"

echo "[install_spm] Clinica ${CLINICA_VERSION} -> ${PREFIX}/clinica-venv"
python3 -m venv "${PREFIX}/clinica-venv"
"${PREFIX}/clinica-venv/bin/pip" install --no-cache-dir "clinica==${CLINICA_VERSION}"
"${PREFIX}/clinica-venv/bin/python" -c "import clinica, nipype; print('clinica', clinica.__version__, 'nipype', nipype.__version__)"
echo "[install_spm] done"
