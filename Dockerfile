# syntax=docker/dockerfile:1.7
# vbm-predict: BIDS App image.
#
#   docker build -t vbm-predict .
#   docker run --rm -v /data/bids:/bids:ro -v /data/out:/out vbm-predict /bids /out participant
#   apptainer build vbm-predict.sif docker-daemon://vbm-predict:latest
#
# Stages: `brainimagenet` (the authors' published image, only read for its Keras H5 weights),
# `spm` (SPM25 standalone + MATLAB Runtime for Clinica), `app` (Python environment), `models`
# (weights converted to safetensors packages with our importer, sha256 recorded), and the final
# image. The repository itself never contains the published weights; the build fetches them for
# the user. Their licence: "for research purpose only; all rights reserved; contact the authors
# for commercial use" (Chaogan-Yan/BrainImageNet).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG BRAINIMAGENET_IMAGE=cgyan/brainimagenet:latest

FROM ${BRAINIMAGENET_IMAGE} AS brainimagenet

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS spm
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl unzip \
    && rm -rf /var/lib/apt/lists/*
COPY docker/install_spm.sh /tmp/install_spm.sh
RUN bash /tmp/install_spm.sh /opt/spm25 /opt/mcr

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS app
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN apt-get update && apt-get install -y --no-install-recommends \
        libxt6 libxext6 libxmu6 libxpm4 libglu1-mesa libgomp1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/vbm-predict
COPY pyproject.toml README.md run.py ./
COPY bids_app ./bids_app
# CPU PyTorch (the CUDA build is chosen with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124)
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install "torch>=2.3" --index-url ${TORCH_INDEX} \
    && pip install ".[clinica]"

# ---------------------------------------------------------------------------------------------
FROM app AS models
# Published Keras 2.2.4 full-model H5 files (see docker/convert_weights.sh for the paths and checks).
COPY --from=brainimagenet /BrainImageNet /tmp/brainimagenet
COPY docker/convert_weights.sh /tmp/convert_weights.sh
RUN bash /tmp/convert_weights.sh /tmp/brainimagenet /opt/vbm-predict/models

# ---------------------------------------------------------------------------------------------
FROM app
COPY --from=spm /opt/spm25 /opt/spm25
COPY --from=spm /opt/mcr /opt/mcr
COPY --from=models /opt/vbm-predict/models /opt/vbm-predict/models
ENV SPMSTANDALONE_HOME=/opt/spm25 \
    MCR_HOME=/opt/mcr/R2024b \
    MCR_INHIBIT_CTF_LOCK=1 \
    VBM_PREDICT_MODELS=/opt/vbm-predict/models \
    VBM_PREDICT_IMAGE=vbm-predict \
    MPLBACKEND=Agg \
    HOME=/tmp
# Caches (MCR, matplotlib, torch, Deno) go below $TMPDIR at run time: the image stays read-only
# (Apptainer) and no writable HOME is needed. Run as a non-root user.
RUN useradd --no-create-home --uid 1000 vbm
USER vbm
ENTRYPOINT ["python", "/opt/vbm-predict/run.py"]
