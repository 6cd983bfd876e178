#!/usr/bin/env bash
# The exact commands that made bids_app/data/demo_models/{sex,ad}: small-width BrainImageNet
# networks trained by `vbm-predict train` on the ground-truth SPM-grid GM maps of a simulated
# cohort (trained on synthetic data; not for any real use). Their leave-sites-out metrics in the
# model cards come from held-out synthetic sites.
#
# Usage: scripts/make_demo_models.sh [WORK_DIR] [DEST_DIR]
#   VBM        how to call the app (default: "python -m bids_app")
#   The DEMO_* variables exist so that the test can run the same commands at tiny scale; the
#   committed models were made with the defaults below.
set -euo pipefail

WORK=${1:-/tmp/vbm-predict-demo-models}
DEST=${2:-bids_app/data/demo_models}
VBM=${VBM:-python -m bids_app}
PARTICIPANTS=${DEMO_PARTICIPANTS:-36}
SITES=${DEMO_SITES:-6}
FOLDS=${DEMO_FOLDS:-3}
EPOCHS=${DEMO_EPOCHS:-4}
ALLOCATIONS=${DEMO_ALLOCATIONS:-10000}
SEED=2026

rm -rf "$WORK"
$VBM simulate "$WORK/cohort" --n-participants "$PARTICIPANTS" --sites "$SITES" --seed "$SEED" --nprocs 2 --maps-only
$VBM train \
    --derivatives "$WORK/cohort/derivatives/ground-truth" \
    --participants "$WORK/cohort/participants.tsv" \
    --out "$WORK/train" \
    --folds "$FOLDS" --allocations "$ALLOCATIONS" --val-fraction 0.2 \
    --width 0.0625 --blocks 1,1,1 \
    --optimizer adam --sex-lr 1e-3 --sex-decay 0 --ad-lr 1e-3 --ad-decay 0 \
    --epochs "$EPOCHS" --batch-size 2 --seed "$SEED" --device cpu \
    --weights-dtype float16 --name-prefix vbm-predict-demo --model-version "0.1.0-synthetic" \
    --no-progress
mkdir -p "$DEST"
for task in sex ad; do
    rm -rf "${DEST:?}/$task"
    cp -r "$WORK/train/models/$task" "$DEST/$task"
done
cp "$WORK/train/report/sex_folds.tsv" "$WORK/train/report/ad_folds.tsv" \
   "$WORK/train/report/sex_pooled.tsv" "$WORK/train/report/ad_pooled.tsv" "$DEST/"
echo "demo models written to $DEST"
