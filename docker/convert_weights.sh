#!/usr/bin/env bash
# Convert the published BrainImageNet Keras files into vbm-predict model packages.
#
#   convert_weights.sh SRC_DIR OUT_DIR
#
# SRC_DIR must hold the six H5 files of the cgyan/brainimagenet image (1 sex model, 5 AD folds).
# Every file must exist and be non-empty, or the script stops with an error naming the file
# (so an image build that lost a file fails loudly instead of shipping without a model).
# The conversion uses vbm-predict's own importer (h5py only: no Keras, no TensorFlow, the
# files' Lambda bytecode is never executed); each package's model.json records the sha256 of
# every converted weights file and of every source H5 file; the packages are then loaded
# back, which re-verifies every checksum and the input specification.
set -euo pipefail

SRC=${1:?usage: convert_weights.sh SRC_DIR OUT_DIR}
OUT=${2:?usage: convert_weights.sh SRC_DIR OUT_DIR}
PYTHON=${PYTHON:-python3}

SEX_FILE=20200427_Phase4_FromScratch_Gender_IncepResN_lr01_AllIn.h5
AD_FILES=()
for k in 0 1 2 3 4; do
    AD_FILES+=("20200504_Phase4_Trans_AD_IncepResN_lr0003_Lfso_Fold${k}.h5")
done

missing=0
for f in "$SEX_FILE" "${AD_FILES[@]}"; do
    if [ ! -s "$SRC/$f" ]; then
        echo "ERROR: published weights file missing or empty: $SRC/$f" >&2
        missing=1
    fi
done
if [ "$missing" -ne 0 ]; then
    echo "ERROR: cannot build the model packages; the files above are expected in the cgyan/brainimagenet image" >&2
    exit 1
fi

mkdir -p "$OUT"
echo "source files (sha256):"
(cd "$SRC" && sha256sum "$SEX_FILE" "${AD_FILES[@]}") | tee "$OUT/SOURCE_SHA256SUMS"

AD_PATHS=()
for f in "${AD_FILES[@]}"; do AD_PATHS+=("$SRC/$f"); done

"$PYTHON" - "$SRC/$SEX_FILE" "$OUT" "${AD_PATHS[@]}" <<'PY'
import sys
from pathlib import Path

from bids_app.models import load_package
from bids_app.models.keras_import import import_keras

sex_file, out = Path(sys.argv[1]), Path(sys.argv[2])
ad_files = [Path(p) for p in sys.argv[3:]]
for task, files, name in (("sex", [sex_file], "brainimagenet-sex"), ("ad", ad_files, "brainimagenet-ad")):
    pkg_dir = import_keras(files, task=task, out_dir=out / name)
    pkg = load_package(pkg_dir)  # re-verifies sha256 of every fold and the input spec
    print(f"{pkg.name} {pkg.version}: {pkg.architecture}, {pkg.n_parameters:,} parameters per fold, "
          f"{len(pkg.folds)} fold(s)")
    for entry in pkg.card["folds"]:
        print(f"  {entry['file']}  sha256 {entry['sha256']}")
PY
echo "model packages written to $OUT"
