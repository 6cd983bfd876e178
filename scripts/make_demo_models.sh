#!/usr/bin/env bash
# The exact commands that made bids_app/data/demo_models: one small-width, float16 package per model
# family, trained by `vbm-predict train` on a simulated cohort (trained on synthetic data; not for
# any real use). Their leave-sites-out metrics in the model cards come from held-out synthetic
# sites; the `ants_heldout_*` metrics from ANTs-made maps of simulated participants that no step saw.
#
# The distribution shift (docs/demo_models.md): the demo reads maps that the ANTs backend makes from
# simulated T1w, which differ from the simulator's ground truth. An ANTs-made training cohort costs
# minutes per T1w, so:
#   1. a training cohort of true maps (80 participants, 8 sites, CN / MCI / AD, with the true T1w in
#      MNI space for SFCN), seconds per participant;
#   2. a shift cohort: 8 other simulated participants with T1w (seed 7), preprocessed by the ANTs
#      backend;
#   3. the shift GM_ants = scale * smooth(GM_true) + offset map + residual noise, fitted on the shift
#      cohort's heads that pass the app's QC (all 8 since the staged affine restart);
#   4. every family trained on the training cohort's true maps carried through that shift, each
#      participant with its own draw of the fitted residuals (the ANTs noise the truth does not predict);
#   5. a held-out cohort: 8 more simulated participants (seed 12: 3 CN, 2 MCI, 3 AD; 4 women) through
#      the ANTs backend, seen by no step above; the app itself on their ANTs-made maps, its group
#      evaluation (every family) into the cards as ants_heldout_*.
# SFCN reads the T1w, not GM maps: it is trained on the true skull-stripped T1w in MNI space (the
# shift is not applied to it) and checked on the ANTs-made T1w like the others.
#
# Usage: scripts/make_demo_models.sh [WORK_DIR] [DEST_DIR]
#   VBM        how to call the app (default: "python -m bids_app"); PY the Python (default: python)
#   The DEMO_* variables exist so that a test can run the same commands at tiny scale; the
#   committed models were made with the defaults below. DEMO_SHIFT=none trains on the true maps
#   (no ANTs shift cohort, no held-out check: what tests/test_train_pipeline.py runs, in minutes);
#   DEMO_FAMILIES limits the families (default: all five).
set -euo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the scripts import this checkout's bids_app

WORK=${1:-/tmp/vbm-predict-demo-models}
DEST=${2:-bids_app/data/demo_models}
PY=${PY:-python}
VBM=${VBM:-$PY -m bids_app}
PARTICIPANTS=${DEMO_PARTICIPANTS:-80}
SITES=${DEMO_SITES:-8}
FOLDS=${DEMO_FOLDS:-2}
EPOCHS=${DEMO_EPOCHS:-4}
CNN_EPOCHS=${DEMO_CNN_EPOCHS:-12}
LIU_EPOCHS=${DEMO_LIU_EPOCHS:-6}
SFCN_EPOCHS=${DEMO_SFCN_EPOCHS:-4}
ALLOCATIONS=${DEMO_ALLOCATIONS:-10000}
SHIFT=${DEMO_SHIFT:-ants}
MCI_FRACTION=${DEMO_MCI_FRACTION:-0.34}
FAMILIES=${DEMO_FAMILIES:-brainimagenet cnn liu_mox sfcn regional}
VERSION=0.2.0-synthetic
SEED=2026
COMMON=(--folds "$FOLDS" --allocations "$ALLOCATIONS" --val-fraction 0.2 --seed "$SEED" --device cpu
        --weights-dtype float16 --name-prefix vbm-predict-demo --model-version "$VERSION" --no-progress)

has() { [[ " $FAMILIES " == *" $1 "* ]]; }

mkdir -p "$WORK"
# 1. the training cohort (true maps only)
T1W_MNI=()
has sfcn && T1W_MNI=(--t1w-mni)  # the true T1w in MNI space: SFCN's input
[ -f "$WORK/cohort/participants.tsv" ] || \
    $VBM simulate "$WORK/cohort" --n-participants "$PARTICIPANTS" --sites "$SITES" --seed "$SEED" --nprocs 2 \
        --maps-only --mci-fraction "$MCI_FRACTION" "${T1W_MNI[@]}"
# every head of the shift cohort passes the app's QC since the staged affine restart (before it, sub-003
# had grown the template brain over the skull and was left out)
FIT=(001 002 003 004 005 006 007 008)
if [ "$SHIFT" = ants ]; then
    # 2. the shift cohort: simulated T1w (seed 7) through the ANTs backend (two at a time)
    $PY scripts/make_ants_maps.py "$WORK/shift" 8 7
    # 3. the shift
    $PY -m bids_app.train.shift fit --backend "$WORK/shift/derivatives/ants" \
        --truth "$WORK/shift/bids/derivatives/ground-truth" --participant-label "${FIT[@]}" -o "$WORK/shift.npz" \
        | tee "$WORK/shift_figures.json"
    rm -rf "$WORK/shifted"
    $PY -m bids_app.train.shift apply "$WORK/shift.npz" --truth "$WORK/cohort/derivatives/ground-truth" \
        -o "$WORK/shifted" --noise residual --seed "$SEED"
    MAPS="$WORK/shifted"
else
    MAPS="$WORK/cohort/derivatives/ground-truth"
fi

# 4. every family on those maps
TRAIN=(--derivatives "$MAPS" --participants "$WORK/cohort/participants.tsv")
PACKAGES=()
if has brainimagenet; then  # BrainImageNet sex -> AD transfer (the reference pipeline)
    $VBM train "${TRAIN[@]}" --out "$WORK/train" "${COMMON[@]}" \
        --width 0.0625 --blocks 1,1,1 --optimizer adam --sex-lr 1e-3 --sex-decay 0 --ad-lr 1e-3 --ad-decay 0 \
        --epochs "$EPOCHS" --batch-size 2
    PACKAGES+=(sex:train/models/sex ad:train/models/ad)
fi
if has cnn; then  # CNN-5 (filters 8-16-32-64-128 x 0.125), AD vs CN
    $VBM train "${TRAIN[@]}" --out "$WORK/train_cnn" "${COMMON[@]}" --family cnn --task ad \
        --width 0.125 --lr 1e-3 --batch-size 4 --epochs "$CNN_EPOCHS" --patience 4
    PACKAGES+=(cnn_ad:train_cnn/models/cnn_ad)
fi
if has liu_mox; then  # Liu/MOX (channels 32-256-512-512 and MLP 1024-512 x 1/32), CN / MCI / AD
    $VBM train "${TRAIN[@]}" --out "$WORK/train_liu" "${COMMON[@]}" --family liu_mox --task cn_mci_ad \
        --width 0.03125 --lr 1e-3 --batch-size 4 --epochs "$LIU_EPOCHS" --patience 4
    PACKAGES+=(liu_mox_cn_mci_ad:train_liu/models/liu_mox_cn_mci_ad)
fi
if has sfcn; then  # SFCN (channels 32-64-128-256-256-64 x 1/16), brain age
    $VBM train "${TRAIN[@]}" --out "$WORK/train_sfcn" "${COMMON[@]}" --family sfcn --task brain_age \
        --width 0.0625 --optimizer adam --lr 1e-3 --batch-size 4 --epochs "$SFCN_EPOCHS" --patience 4
    PACKAGES+=(sfcn_brain_age:train_sfcn/models/sfcn_brain_age)
fi
if has regional; then  # the regional-volume baseline (AAL, logistic regression), AD vs CN
    $VBM train "${TRAIN[@]}" --out "$WORK/train_regional" "${COMMON[@]}" --family regional --task ad
    PACKAGES+=(regional_ad:train_regional/models/regional_ad)
fi

mkdir -p "$DEST"
rm -f "$DEST"/*.tsv
for pair in "${PACKAGES[@]}"; do
    name=${pair%%:*}
    src="$WORK/${pair#*:}"
    rm -rf "${DEST:?}/$name"
    cp -r "$src" "$DEST/$name"
    report="$(dirname "$(dirname "$src")")/report"
    for f in "$report/${name}_pooled.tsv" "$report/${name}_folds.tsv"; do
        if [ -f "$f" ]; then cp "$f" "$DEST/"; fi
    done
done

if [ "$SHIFT" = ants ]; then
    # 5. the held-out cohort (seed 12) through the ANTs backend, then the app itself (derivatives backend)
    #    on those maps and its group evaluation into the cards as ants_heldout_*
    $PY scripts/make_ants_maps.py "$WORK/heldout_maps" 8 12
    rm -rf "$WORK/heldout"
    $VBM "$WORK/heldout_maps/bids" "$WORK/heldout" participant --skip-bids-validation --preproc derivatives \
        --derivatives "$WORK/heldout_maps/derivatives/ants" --models "$DEST" --no-reports
    $VBM "$WORK/heldout_maps/bids" "$WORK/heldout" group
    $PY scripts/demo_card_validation.py "$DEST" "$WORK/heldout/group_evaluation.tsv" --note "ANTs-made maps of 8 \
simulated participants (seed 12) that neither the shift fit nor any training saw"
    cp "$WORK/heldout/group_evaluation.tsv" "$DEST/ants_heldout_evaluation.tsv"
    # then `vbm-predict demo` (its 4 participants, seed 37, are held out from every step above) shows the
    # same check on the demo's own ANTs-made maps
fi
echo "demo models written to $DEST"
