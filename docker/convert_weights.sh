#!/usr/bin/env bash
# Convert the published BrainImageNet Keras files into vbm-predict model packages.
#
#   convert_weights.sh SRC_DIR OUT_DIR
#
# SRC_DIR holds what the image build copied from cgyan/brainimagenet: the sex model and the five AD
# folds of one generation (the newest complete one is taken: 20210106_0_* since the authors' "Better
# Model for AD", else 20200504_*; file names in bids_app/data/brainimagenet.json), and the brain mask
# Reslice_BrainMask_05_91x109x91.img/.hdr when the image has it. A missing model file stops the script
# with an error naming what was looked for (an image build must not ship without a model).
# The conversion uses vbm-predict's own importer (h5py only: no Keras, no TensorFlow, the files'
# Lambda bytecode is never executed); each package's model.json records the sha256 of every converted
# weights file and of every source H5 file and the generation; the packages are then loaded back,
# which re-verifies every checksum and the input specification. OUT_DIR/CONVERSION.json says which
# generation was converted and whether the mask was found; the mask goes to OUT_DIR/brain_mask/.
set -euo pipefail

SRC=${1:?usage: convert_weights.sh SRC_DIR OUT_DIR}
OUT=${2:?usage: convert_weights.sh SRC_DIR OUT_DIR}
PYTHON=${PYTHON:-python3}

# 1. which generation: only json here, so a missing file is reported before anything heavy is imported
CARD=$(dirname "$0")/../bids_app/data/brainimagenet.json
[ -f "$CARD" ] || CARD=$("$PYTHON" -c 'import bids_app, pathlib; print(pathlib.Path(bids_app.__file__).parent / "data" / "brainimagenet.json")')
GENERATION=$("$PYTHON" - "$SRC" "$CARD" <<'PY'
import json
import sys
from pathlib import Path

src, card = Path(sys.argv[1]), Path(sys.argv[2])
generations = json.loads(card.read_text())["generations"]  # newest first
missing = {}
for gen in generations:
    names = gen["files"]["sex"] + gen["files"]["ad"]
    missing[gen["id"]] = [n for n in names if not (src / n).is_file() or (src / n).stat().st_size == 0]
    print(f"generation {gen['id']}: {len(names) - len(missing[gen['id']])} of {len(names)} files in {src}", file=sys.stderr)
    if not missing[gen["id"]]:
        print(gen["id"])
        sys.exit(0)
for gen_id, names in missing.items():
    for n in names:
        print(f"ERROR: published weights file missing or empty (generation {gen_id}): {src / n}", file=sys.stderr)
sys.exit("ERROR: no complete generation of the published weights; the files above are expected in the "
         "cgyan/brainimagenet image")
PY
)
echo "converting the published generation ${GENERATION}"

# 2. convert, load back, record
mkdir -p "$OUT"
"$PYTHON" - "$SRC" "$OUT" "$GENERATION" <<'PY'
import json
import shutil
import sys
from pathlib import Path

from bids_app._io import sha256_file
from bids_app.models import load_package
from bids_app.models.keras_import import import_keras, published_info

src, out, gen_id = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
info = published_info()
chosen = next(g for g in info["generations"] if g["id"] == gen_id)
record = {"generation": chosen["id"], "note": chosen["note"], "packages": {}, "source_sha256": {}}
for task in ("sex", "ad"):
    files = [src / n for n in chosen["files"][task]]
    for f in files:
        record["source_sha256"][f.name] = sha256_file(f)
    pkg_dir = import_keras(files, task=task, out_dir=out / f"brainimagenet-{task}")
    pkg = load_package(pkg_dir)  # re-verifies sha256 of every fold and the input spec
    print(f"{pkg.name} {pkg.version}: {pkg.architecture}, {pkg.n_parameters:,} parameters per fold, "
          f"{len(pkg.folds)} fold(s)")
    record["packages"][pkg.name] = {"version": pkg.version, "architecture": pkg.architecture,
                                    "folds": [e["sha256"] for e in pkg.card["folds"]]}
    for entry in pkg.card["folds"]:
        print(f"  {entry['file']}  sha256 {entry['sha256']}")
# sha256sum's format, so `sha256sum -c` works in the source folder
(out / "SOURCE_SHA256SUMS").write_text("".join(f"{h}  {n}\n" for n, h in record["source_sha256"].items()))

mask = [src / n for n in info["mask"]["files"]]
if all(f.is_file() for f in mask):
    (out / "brain_mask").mkdir(exist_ok=True)
    for f in mask:
        shutil.copy2(f, out / "brain_mask" / f.name)
    record["mask"] = {f.name: sha256_file(f) for f in mask}
    print("published brain mask found: the model input uses it")
else:
    record["mask"] = None
    print("no published brain mask in the source image: the model input uses the derived mask")
(out / "CONVERSION.json").write_text(json.dumps(record, indent=2) + "\n")
PY
echo "model packages written to $OUT"
