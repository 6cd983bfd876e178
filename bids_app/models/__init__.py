"""Networks, model packages and the predictor (no BIDS, no preprocessing, no file I/O beyond packages).

* :func:`build_network` -- the BrainImageNet 3D Inception-ResNet-V2 family (``irv2_sex``,
  ``irv2_ad_optimised``, ``irv2_ad_intact``) with Keras layer names; ``forward`` returns logits (N,).
* :func:`save_package` / :func:`load_package` / :func:`find_packages` -- ``model.json`` +
  ``fold{k}.safetensors`` directories, sha256-verified, input spec checked against :mod:`bids_app.grid`
  for its input kind; schema 2 cards carry a family and heads (:class:`HeadSpec`), schema 1 still loads.
* :func:`predict` -- every head's outputs for every fold (sigmoid, softmax or a value in its unit),
  mean and spread (:class:`bids_app.types.ModelScores`).
* :func:`import_keras` (in :mod:`bids_app.models.keras_import`) -- Keras 2/3 full-model H5 files
  read with h5py only.
"""

from .graph import GraphNet, KerasBatchNorm3d, Node, SameConv3d
from .heads import HeadSpec
from .irv2 import ARCHITECTURES, STEM_END, IRV2Net, build_network
from .keras_import import KerasImportError, import_keras, read_keras_h5
from .package import (
    TASK_LABELS,
    ModelPackage,
    find_packages,
    input_spec,
    load_package,
    network_from_architecture,
    save_package,
    upgrade_card,
    validate_card,
)
from .predict import PRECISIONS, default_precision, predict

__all__ = [
    "ARCHITECTURES",
    "STEM_END",
    "TASK_LABELS",
    "PRECISIONS",
    "GraphNet",
    "HeadSpec",
    "IRV2Net",
    "KerasBatchNorm3d",
    "KerasImportError",
    "ModelPackage",
    "Node",
    "SameConv3d",
    "build_network",
    "default_precision",
    "find_packages",
    "import_keras",
    "input_spec",
    "load_package",
    "network_from_architecture",
    "predict",
    "read_keras_h5",
    "save_package",
    "upgrade_card",
    "validate_card",
]
