# syntax=docker/dockerfile:1.7
# vbm-predict: BIDS App image.
#
#   docker build -t vbm-predict .
#   docker run --rm -v /data/bids:/bids:ro -v /data/out:/out vbm-predict /bids /out participant
#   apptainer build vbm-predict.sif docker-daemon://vbm-predict:latest
#
# Stages:
#   brainimagenet  the authors' public image, read only for its Keras H5 weights
#   weights        those weights converted into model packages by our importer (sha256 recorded);
#                  a missing file fails the build (COPY of a missing path, then convert_weights.sh)
#   app            Python environment of the app, SPM25 standalone + MATLAB Runtime R2024b, and
#                  Clinica 0.12 in its own venv (docker/install_spm.sh explains each step)
# The repository never contains the published weights; the build fetches them for the user.
# Their licence: "for research purpose only; all rights reserved; contact the authors for
# commercial use" (Chaogan-Yan/BrainImageNet). The image is for research use only.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG BRAINIMAGENET_IMAGE=cgyan/brainimagenet:latest

# ---------------------------------------------------------------------------------------------
FROM ${BRAINIMAGENET_IMAGE} AS brainimagenet

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS base
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/vbm-predict
COPY pyproject.toml README.md run.py ./
COPY bids_app ./bids_app
# CPU PyTorch by default; a CUDA build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install "torch>=2.3" --index-url ${TORCH_INDEX} && pip install .

# ---------------------------------------------------------------------------------------------
FROM base AS weights
# Where the H5 files are inside cgyan/brainimagenet (an assumption from the authors' local/Dockerfile
# and prediction scripts): the image is built FROM tensorflow/tensorflow:1.13.1-py3-jupyter, whose
# WORKDIR is /tf, with `COPY . .`, and the scripts load the models by bare file name, so the files
# sit in /tf. Override with --build-arg BRAINIMAGENET_DIR=... if the image differs.
ARG BRAINIMAGENET_DIR=/tf
COPY --from=brainimagenet ${BRAINIMAGENET_DIR}/20200427_Phase4_FromScratch_Gender_IncepResN_lr01_AllIn.h5 /h5/
COPY --from=brainimagenet ${BRAINIMAGENET_DIR}/20200504_Phase4_Trans_AD_IncepResN_lr0003_Lfso_Fold0.h5 /h5/
COPY --from=brainimagenet ${BRAINIMAGENET_DIR}/20200504_Phase4_Trans_AD_IncepResN_lr0003_Lfso_Fold1.h5 /h5/
COPY --from=brainimagenet ${BRAINIMAGENET_DIR}/20200504_Phase4_Trans_AD_IncepResN_lr0003_Lfso_Fold2.h5 /h5/
COPY --from=brainimagenet ${BRAINIMAGENET_DIR}/20200504_Phase4_Trans_AD_IncepResN_lr0003_Lfso_Fold3.h5 /h5/
COPY --from=brainimagenet ${BRAINIMAGENET_DIR}/20200504_Phase4_Trans_AD_IncepResN_lr0003_Lfso_Fold4.h5 /h5/
COPY docker/convert_weights.sh /tmp/convert_weights.sh
RUN bash /tmp/convert_weights.sh /h5 /models && rm -rf /h5

# ---------------------------------------------------------------------------------------------
FROM base AS app
RUN apt-get update -qq \
 && apt-get install -yq --no-install-recommends curl unzip ca-certificates python3-venv \
      libxt6 libxext6 libxrender1 libxtst6 libxi6 libxcomposite1 libxcursor1 libxdamage1 \
      libxrandr2 libasound2 libgtk-3-0 libnss3 libgbm1 libgomp1 \
 && rm -rf /var/lib/apt/lists/*
COPY docker/install_spm.sh /tmp/install_spm.sh
RUN bash /tmp/install_spm.sh && rm -f /tmp/install_spm.sh
COPY --from=weights /models /opt/vbm-predict/models
# --preproc auto picks clinica because SPMSTANDALONE_HOME and MCR_HOME are set. Caches (MCR,
# matplotlib, torch, Deno) go below $TMPDIR at run time, so the image can stay read-only
# (Apptainer) and needs no writable HOME.
ENV SPMSTANDALONE_HOME=/opt/spm25 \
    MCR_HOME=/opt/mcr/2024b/R2024b \
    MCR_INHIBIT_CTF_LOCK=1 \
    SPM_HTML_BROWSER=0 \
    CLINICA_PYTHON=/opt/clinica-venv/bin/python \
    VBM_PREDICT_MODELS=/opt/vbm-predict/models \
    VBM_PREDICT_IMAGE=vbm-predict \
    MPLBACKEND=Agg \
    HOME=/tmp
RUN useradd --no-create-home --uid 1000 vbm
USER vbm
ENTRYPOINT ["python", "/opt/vbm-predict/run.py"]
