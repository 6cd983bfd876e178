# vbm-predict: the BIDS App image. One Dockerfile, flavours chosen by build arguments:
#
#   docker build -t vbm-predict .                                      # SPM25 + Clinica, published models
#   docker build -t vbm-predict:ants --build-arg WITH_SPM=0 .           # ANTs backend only, published models
#   docker build -t vbm-predict:demo --build-arg WITH_SPM=0 \
#       --build-arg WITH_PUBLISHED_WEIGHTS=0 --build-arg BRAINIMAGENET_IMAGE= .   # offline: demo models only
#
# Build arguments
#   BASE_IMAGE              Debian bookworm with python3 (3.10-3.13) and python3-venv
#   WITH_SPM                1: SPM25 standalone + MATLAB Runtime R2024b + Clinica 0.12 (docker/install_spm.sh);
#                           0: the SPM-free ANTs backend only
#   WITH_PUBLISHED_WEIGHTS  1: convert the authors' Keras files (newest generation found) into model packages,
#                           with their brain mask when the source holds it (docker/convert_weights.sh);
#                           0: the synthetic demo models only (not for any real use)
#   BRAINIMAGENET_IMAGE     the authors' image the H5 files are read from (cgyan/brainimagenet); empty = the base
#                           image, so nothing is pulled (the legacy builder builds every stage, used or not)
#   BRAINIMAGENET_DIR       where the files sit in that image (/tf: its WORKDIR, `COPY . .`)
#   TORCH_INDEX             pip index for torch when docker/wheels/ holds no torch wheel (default: CPU builds;
#                           https://download.pytorch.org/whl/cu124 for CUDA)
#   VERSION, VCS_REF        recorded in the OCI labels
# Local files the build uses when present (both folders are git-ignored apart from their README):
#   docker/wheels/*.whl     wheels installed before anything is fetched (e.g. the CPU torch wheel)
#   docker/context-extra/   pip.conf and CA bundle for pip during the build only (not in the image)
#
# The repository never contains the published weights; the build fetches and converts them for the user.
# Their licence: "for research purpose only; all rights reserved; contact the authors for commercial use"
# (Chaogan-Yan/BrainImageNet). The image is for research use only.

ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG BRAINIMAGENET_IMAGE=cgyan/brainimagenet:latest

# ---------------------------------------------------------------------------------------------
FROM ${BRAINIMAGENET_IMAGE:-${BASE_IMAGE}} AS brainimagenet

# ---------------------------------------------------------------------------------------------
# The app's Python environment in /opt/venv; build-only files (wheels, pip settings) stay in this stage.
FROM ${BASE_IMAGE} AS pyenv
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
COPY docker/context-extra/ /opt/vbm-build/
COPY docker/wheels/ /opt/vbm-build/wheels/
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
RUN if [ -f /opt/vbm-build/pip.conf ]; then export PIP_CONFIG_FILE=/opt/vbm-build/pip.conf; fi \
 && python3 -m venv /opt/venv \
 && wheel="$(find /opt/vbm-build/wheels -name "torch-${TORCH_VERSION}*.whl" | head -n 1)" \
 && if [ -n "${wheel}" ]; then /opt/venv/bin/pip install "${wheel}"; \
    else /opt/venv/bin/pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"; fi
# dependencies first (from pyproject.toml and the version file only), so a code change rebuilds one small layer
COPY pyproject.toml README.md run.py /opt/vbm-predict/
COPY bids_app/__init__.py /opt/vbm-predict/bids_app/__init__.py
RUN if [ -f /opt/vbm-build/pip.conf ]; then export PIP_CONFIG_FILE=/opt/vbm-build/pip.conf; fi \
 && /opt/venv/bin/pip install "/opt/vbm-predict[engines]"
COPY bids_app /opt/vbm-predict/bids_app
RUN if [ -f /opt/vbm-build/pip.conf ]; then export PIP_CONFIG_FILE=/opt/vbm-build/pip.conf; fi \
 && /opt/venv/bin/pip install --no-deps --force-reinstall /opt/vbm-predict \
 && rm -rf /opt/vbm-predict/build /opt/vbm-predict/*.egg-info \
 && /opt/venv/bin/python -c "import bids_app, torch; print('vbm-predict', bids_app.__version__, 'torch', torch.__version__)"

# ---------------------------------------------------------------------------------------------
# Model packages in /models: the published networks converted by our importer (h5py only, no code from
# the files executed, sha256 of every source and converted file recorded), or the demo models.
FROM pyenv AS weights
ARG WITH_PUBLISHED_WEIGHTS=1
ARG BRAINIMAGENET_DIR=/tf
# /etc/os-release makes the COPY valid when the source image holds none of the patterns (demo flavour).
COPY --from=brainimagenet /etc/os-release ${BRAINIMAGENET_DIR}/*.h5 ${BRAINIMAGENET_DIR}/Reslice_BrainMask_05_91x109x91.* /h5/
COPY docker/convert_weights.sh /tmp/convert_weights.sh
RUN if [ "${WITH_PUBLISHED_WEIGHTS}" = 1 ]; then \
      PYTHON=/opt/venv/bin/python bash /tmp/convert_weights.sh /h5 /models; \
    else \
      mkdir -p /models \
      && /opt/venv/bin/python -c "import bids_app, pathlib, shutil; src = pathlib.Path(bids_app.__file__).parent / 'data' / 'demo_models'; [shutil.copytree(p, f'/models/{p.name}') for p in src.iterdir() if (p / 'model.json').is_file()]" \
      && echo "demo models only (trained on synthetic data; not for any real use)" > /models/README; \
    fi \
 && rm -rf /h5

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS app
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# mricron-data: the AAL atlas and Colin27 head used for the explanation maps' region summaries.
# procps: `ps`, which the MATLAB Runtime needs; the others are the Runtime's documented Linux dependencies.
ARG WITH_SPM=1
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ca-certificates mricron-data procps \
 && if [ "${WITH_SPM}" = 1 ]; then \
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl unzip \
        libxt6 libxext6 libxrender1 libxtst6 libxi6 libxcomposite1 libxcursor1 libxdamage1 libxrandr2 \
        libxxf86vm1 libxfixes3 libx11-6 libxmu6 libasound2 libgtk-3-0 libnss3 libgbm1 libgomp1 libgl1 \
        libsndfile1 libltdl7 libgstreamer1.0-0 libgstreamer-plugins-base1.0-0 libcap2 libcups2 libpam0g \
        libuuid1 libglib2.0-0 libfontconfig1 libfreetype6 libpango-1.0-0 libcairo2 zlib1g; \
    fi \
 && rm -rf /var/lib/apt/lists/*
COPY --from=pyenv /opt/venv /opt/venv
COPY --from=pyenv /opt/vbm-predict /opt/vbm-predict
COPY docker/install_spm.sh /tmp/install_spm.sh
RUN if [ "${WITH_SPM}" = 1 ]; then PYTHON=/opt/venv/bin/python bash /tmp/install_spm.sh; fi && rm -f /tmp/install_spm.sh
COPY --from=weights /models /opt/vbm-predict/models
# --preproc auto picks clinica when the SPM folder below exists (WITH_SPM=1), ants otherwise. Caches (MCR,
# matplotlib, torch, Deno) go below $TMPDIR at run time, so the image can run read-only (Apptainer) with
# any uid and no writable HOME.
ENV PATH=/opt/venv/bin:${PATH} \
    SPMSTANDALONE_HOME=/opt/spm25 \
    MCR_HOME=/opt/mcr/2024b/R2024b \
    MCR_INHIBIT_CTF_LOCK=1 \
    SPM_HTML_BROWSER=0 \
    CLINICA_PYTHON=/opt/clinica-venv/bin/python \
    VBM_PREDICT_MODELS=/opt/vbm-predict/models \
    VBM_PREDICT_BRAIN_MASK=/opt/vbm-predict/models/brain_mask/Reslice_BrainMask_05_91x109x91.hdr \
    VBM_PREDICT_IMAGE=vbm-predict \
    MPLBACKEND=Agg \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
ARG VERSION=0.1.0
ARG VCS_REF=unknown
ARG WITH_PUBLISHED_WEIGHTS=1
LABEL org.opencontainers.image.title="vbm-predict" \
      org.opencontainers.image.description="BIDS App: T1w MRI -> VBM grey-matter maps -> sex and AD predictions (research use only)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.source="https://github.com/vbm-predict/vbm-predict" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="vbm-predict" \
      io.github.vbm-predict.flavour.spm="${WITH_SPM}" \
      io.github.vbm-predict.flavour.published-weights="${WITH_PUBLISHED_WEIGHTS}"
RUN groupadd --gid 1000 vbm && useradd --no-create-home --uid 1000 --gid 1000 --home-dir /tmp vbm
USER 1000:1000
WORKDIR /tmp
ENTRYPOINT ["/opt/venv/bin/python", "/opt/vbm-predict/run.py"]
