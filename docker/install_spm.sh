#!/usr/bin/env bash
# Install SPM25 standalone + its MATLAB Runtime + Clinica 0.12 for vbm-predict's clinica backend.
#
# Why each step (facts: DESIGN §3 and §7; SPM's own install test, spm/spm
# .github/workflows/install_test_standalone.yml; Clinica 0.12's clinica/utils/spm.py):
# * The release zip spm_standalone_<tag>_Linux.zip holds `spm_standalone/` (the compiled SPM) and
#   `runtime_installer/` (a MATLAB Runtime installer `*.install` made for exactly that build). That
#   installer is used, as SPM's own test does; MCR_URL (MathWorks' full Runtime) only when it is absent.
# * Clinica 0.11+ drives SPM only as SPM25 *standalone*: it globs exactly one run_spm*.sh and one
#   TPM.nii below $SPMSTANDALONE_HOME, so the compiled archive (CTF) is unpacked here, at build time, by
#   running the standalone once (a read-only image could not unpack it later).
# * Clinica reads the Runtime's version from the *parent* folder name of $MCR_HOME ("2024b" -> 24.2),
#   so the Runtime is installed into /opt/mcr/2024b and MCR_HOME=/opt/mcr/2024b/R2024b.
# * The Runtime installer can exit 0 without installing when a system library is missing (libsndfile1,
#   libxxf86vm1, libgl1, libltdl7, gstreamer, procps...: installed by the Dockerfile); every step is
#   therefore checked by what it leaves on disk, and anything missing stops the build with a message.
# * Clinica 0.12 pins nilearn<1, pandas<3 and more, which the app does not need: it goes into its own
#   virtual environment (/opt/clinica-venv); the app runs it as a subprocess (CLINICA_PYTHON).
#
# Usage (as root, at image build):  install_spm.sh
# Env overrides: SPM_VERSION, SPM_URL, MCR_URL, MCR_RELEASE, CLINICA_VERSION, PREFIX
set -euo pipefail

SPM_VERSION="${SPM_VERSION:-25.01.02}"
SPM_URL="${SPM_URL:-https://github.com/spm/spm/releases/download/${SPM_VERSION}/spm_standalone_${SPM_VERSION}_Linux.zip}"
MCR_RELEASE="${MCR_RELEASE:-R2024b}"
MCR_URL="${MCR_URL:-https://ssd.mathworks.com/supportfiles/downloads/${MCR_RELEASE}/Release/0/deployment_files/installer/complete/glnxa64/MATLAB_Runtime_${MCR_RELEASE}_glnxa64.zip}"
CLINICA_VERSION="${CLINICA_VERSION:-0.12.0}"
PREFIX="${PREFIX:-/opt}"
SPM_HOME="${PREFIX}/spm25"
MCR_ROOT="${PREFIX}/mcr/${MCR_RELEASE#R}"
MCR_HOME="${MCR_ROOT}/${MCR_RELEASE}"

die() { echo "[install_spm] ERROR: $*" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "${tmp}"' EXIT

echo "[install_spm] SPM ${SPM_VERSION} standalone from ${SPM_URL}"
curl -fsSL --retry 3 -o "${tmp}/spm.zip" "${SPM_URL}" || die "cannot download ${SPM_URL}"
unzip -q "${tmp}/spm.zip" -d "${tmp}/spm" || die "cannot unpack ${SPM_URL}"
rm -f "${tmp}/spm.zip"
[ -d "${tmp}/spm/spm_standalone" ] || die "the SPM zip has no spm_standalone/ folder: $(ls "${tmp}/spm")"

echo "[install_spm] MATLAB Runtime ${MCR_RELEASE} -> ${MCR_ROOT}"
installer="$(find "${tmp}/spm/runtime_installer" -maxdepth 1 -name '*.install' 2>/dev/null | head -n 1 || true)"
if [ -n "${installer}" ]; then
  chmod +x "${installer}"
  "${installer}" -agreeToLicense yes -destinationFolder "${MCR_ROOT}" || die "the Runtime installer ${installer} failed"
else
  echo "[install_spm] the SPM zip has no runtime_installer/*.install; using ${MCR_URL}"
  curl -fsSL --retry 3 -o "${tmp}/mcr.zip" "${MCR_URL}" || die "cannot download ${MCR_URL}"
  unzip -q "${tmp}/mcr.zip" -d "${tmp}/mcr"
  "${tmp}/mcr/install" -destinationFolder "${MCR_ROOT}" -agreeToLicense yes -mode silent || die "the Runtime installer failed"
  rm -rf "${tmp}/mcr" "${tmp}/mcr.zip"
fi
[ -d "${MCR_HOME}/runtime/glnxa64" ] || die "no MATLAB Runtime in ${MCR_HOME} after the installer ran (found: $(ls "${MCR_ROOT}" 2>&1)); a missing system library makes it fail silently"
rm -rf "${tmp}/spm/runtime_installer"

echo "[install_spm] SPM -> ${SPM_HOME}"
mkdir -p "${SPM_HOME}"
cp -a "${tmp}/spm/spm_standalone/." "${SPM_HOME}/"
rm -rf "${tmp}/spm"
n_run="$(find "${SPM_HOME}" -maxdepth 1 -name 'run_spm*.sh' | wc -l)"
[ "${n_run}" = 1 ] || die "expected one run_spm*.sh in ${SPM_HOME} (Clinica needs it); found ${n_run}"
chmod +x "${SPM_HOME}"/run_spm*.sh "${SPM_HOME}"/spm[0-9]*
# unpack the compiled archive now (creates TPM.nii below SPM_HOME) and prove SPM runs
export MCR_INHIBIT_CTF_LOCK=1 MCR_CACHE_ROOT="${tmp}/mcr_cache" SPM_HTML_BROWSER=0
"${SPM_HOME}"/run_spm*.sh "${MCR_HOME}" function exit || die "SPM standalone did not run with the Runtime in ${MCR_HOME}"
n_tpm="$(find "${SPM_HOME}" -name 'TPM.nii' | wc -l)"
[ "${n_tpm}" = 1 ] || die "expected one TPM.nii below ${SPM_HOME} after the first run; found ${n_tpm}"
"${SPM_HOME}"/run_spm*.sh "${MCR_HOME}" --version || die "SPM standalone --version failed"
echo "SPM ${SPM_VERSION} standalone (${SPM_URL##*/}), MATLAB Runtime ${MCR_RELEASE}" > "${SPM_HOME}/VERSION.vbm-predict"
chmod -R a+rX "${SPM_HOME}" "${PREFIX}/mcr"

echo "[install_spm] Clinica ${CLINICA_VERSION} -> ${PREFIX}/clinica-venv"
python3 -m venv "${PREFIX}/clinica-venv"
"${PREFIX}/clinica-venv/bin/pip" install --no-cache-dir "clinica==${CLINICA_VERSION}" || die "pip install clinica failed"
"${PREFIX}/clinica-venv/bin/python" -c "import clinica, nipype; print('clinica', clinica.__version__, 'nipype', nipype.__version__)" \
  || die "Clinica does not import"
echo "[install_spm] done"
