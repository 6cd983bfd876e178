"""Model inputs: the array a model package reads, built from a backend's maps for the package's input kind.

A package's card names its input in ``input.kind`` (:data:`bids_app.types.InputKind`); this module is
the one place that turns :class:`~bids_app.types.GMMaps` into that array, so every package of a kind
sees exactly the same input:

``gm_crop2``  (BrainImageNet IRv2) float32 2 x 96 x 120 x 86: GMD and GMV times the model-input brain
              mask, NaN set to 0, cropped (:func:`bids_app.grid.make_model_input`, the reference recipe).
``gm_spm1``   (CNN-5/7/10/12, Liu/MOX, the regional baseline) float32 1 x 121 x 145 x 121: ONE map on
              the SPM 1.5 mm grid, uncropped, NaN set to 0. ``input.channels`` names it (``["GMV"]``:
              modulated GM, Clinica's ``mwc1`` as ClinicaDL and the MOX reproduction use; or ``["GMD"]``);
              ``input.mask`` is ``"none"`` or ``"brain"`` (times the model-input brain mask).
``t1w_mni1mm`` (SFCN) float32 1 x 160 x 192 x 160: the T1w affinely registered to MNI152 at 1 mm,
              skull-stripped and N4-corrected (:attr:`GMMaps.t1w_mni`), centre-cropped
              (:data:`bids_app.grid.SFCN_CROP`) and divided by its mean over the brain, as Peng et al.
              (2021) prepared SFCN's input. The brain is the skull-stripped image's non-zero voxels: the
              backend set everything outside its brain mask to 0.

:func:`needed_outputs` says which maps a run's kinds need, so the participant level makes only those.
"""

from __future__ import annotations

from typing import Any, Collection, Mapping

import numpy as np

from .errors import InputDataError, ModelPackageError, NoInputError
from .grid import (
    MNI1MM_SHAPE,
    MODEL_INPUT_SHAPE,
    SFCN_CROP,
    SFCN_INPUT_SHAPE,
    SPM_SHAPE,
    make_model_input,
    model_input_mask,
)
from .types import INPUT_KINDS, GMMaps, InputKind

__all__ = ["INPUT_SHAPES", "GM_CHANNELS", "GM_MASKS", "DEFAULT_KIND", "input_kind", "make_input", "needed_outputs"]

#: the array shape (channels first, no batch axis) of each input kind
INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "gm_crop2": MODEL_INPUT_SHAPE,
    "gm_spm1": (1, *SPM_SHAPE),
    "t1w_mni1mm": SFCN_INPUT_SHAPE,
}
#: the map names ``input.channels`` may hold for a GM input, and the :class:`GMMaps` field of each
GM_CHANNELS: dict[str, str] = {"GMD": "gmd", "GMV": "gmv"}
#: ``input.mask`` values of ``gm_spm1``
GM_MASKS: tuple[str, ...] = ("none", "brain")
#: the kind of a card that names none (schema version 1: BrainImageNet)
DEFAULT_KIND: InputKind = "gm_crop2"

#: the GMMaps fields each kind is built from
_NEEDS: dict[str, frozenset[str]] = {
    "gm_crop2": frozenset({"gmd", "gmv"}),
    "gm_spm1": frozenset({"gmd", "gmv"}),
    "t1w_mni1mm": frozenset({"t1w_mni"}),
}


def input_kind(spec: Mapping[str, Any]) -> str:
    """The input kind a card's ``input`` section asks for (``gm_crop2`` when it names none)."""
    return str(spec.get("kind", DEFAULT_KIND))


def needed_outputs(kinds: Collection[str]) -> frozenset[str]:
    """The :class:`GMMaps` fields that inputs of ``kinds`` are built from (``gmd``, ``gmv``, ``t1w_mni``).

    A backend is asked for ``t1w_mni`` only when this holds it. Raises :class:`ModelPackageError` for a
    kind that is not an :data:`~bids_app.types.InputKind`."""
    out: set[str] = set()
    for kind in kinds:
        if kind not in _NEEDS:
            raise ModelPackageError(f"unknown input kind {kind!r}; known kinds: {', '.join(INPUT_KINDS)}")
        out |= _NEEDS[kind]
    return frozenset(out)


def make_input(kind: str, maps: GMMaps, spec: Mapping[str, Any] | None = None) -> np.ndarray:
    """The float32 model input (channels first, shape :data:`INPUT_SHAPES` ``[kind]``) for one T1w.

    ``spec`` is the card's ``input`` section (``channels`` and ``mask`` matter for ``gm_spm1``).
    Raises :class:`ModelPackageError` for an unknown kind or a spec this module cannot follow,
    :class:`NoInputError` when ``maps`` lack what the kind is made from (e.g. no ``t1w_mni``: the
    backend was not asked for it or cannot make it) and :class:`InputDataError` for maps of the wrong
    shape or an empty brain.
    """
    spec = {} if spec is None else spec
    if kind == "gm_crop2":
        _check_channels(spec, ("GMD", "GMV"), kind)
        _check_gm(maps, ("gmd", "gmv"))
        mask, _ = model_input_mask()
        return make_model_input(maps.gmd, maps.gmv, mask=mask)
    if kind == "gm_spm1":
        return _gm_spm1(maps, spec)
    if kind == "t1w_mni1mm":
        return _t1w_mni1mm(maps)
    raise ModelPackageError(f"unknown input kind {kind!r}; known kinds: {', '.join(INPUT_KINDS)}")


def _check_channels(spec: Mapping[str, Any], expected: tuple[str, ...], kind: str) -> None:
    channels = spec.get("channels")
    if channels is not None and tuple(channels) != expected:
        raise ModelPackageError(f"input kind {kind} has the channels {list(expected)}; the card asks for {channels!r}")


def _check_gm(maps: GMMaps, fields: Collection[str]) -> None:
    for name in fields:
        data = getattr(maps, name)
        if data is None:
            raise NoInputError(f"the {maps.backend} backend's maps hold no {name.upper()} map")
        if data.shape != SPM_SHAPE:
            raise InputDataError(f"the {name.upper()} map must be on the SPM grid {SPM_SHAPE}; got {data.shape}")


def _gm_spm1(maps: GMMaps, spec: Mapping[str, Any]) -> np.ndarray:
    channels = spec.get("channels", ["GMV"])
    if not isinstance(channels, (list, tuple)) or len(channels) != 1 or channels[0] not in GM_CHANNELS:
        raise ModelPackageError(
            f"input kind gm_spm1 reads one map: input.channels must be [\"GMV\"] or [\"GMD\"]; got {channels!r}"
        )
    mask_name = spec.get("mask", "none")
    if mask_name not in GM_MASKS:
        raise ModelPackageError(f"input kind gm_spm1: input.mask must be one of {list(GM_MASKS)}; got {mask_name!r}")
    field = GM_CHANNELS[channels[0]]
    _check_gm(maps, (field,))
    data = np.nan_to_num(np.asarray(getattr(maps, field), dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if mask_name == "brain":
        data = data * model_input_mask()[0]
    return np.ascontiguousarray(data[None], dtype=np.float32)


def _t1w_mni1mm(maps: GMMaps) -> np.ndarray:
    if maps.t1w_mni is None:
        raise NoInputError(
            f"the {maps.backend} backend's maps hold no T1w in MNI152 1 mm space (t1w_mni), which input kind "
            "t1w_mni1mm is made from: the backend was not asked for it or could not make it"
        )
    t1 = np.nan_to_num(np.asarray(maps.t1w_mni, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if t1.shape != MNI1MM_SHAPE:
        raise InputDataError(f"the T1w in MNI space must be on the 1 mm grid {MNI1MM_SHAPE}; got {t1.shape}")
    brain = t1 > 0
    if not brain.any():
        raise InputDataError("the T1w in MNI space is empty (no voxel above 0): nothing to normalise")
    mean = float(t1[brain].mean(dtype=np.float64))
    out = t1[SFCN_CROP] / np.float32(mean)
    return np.ascontiguousarray(out[None], dtype=np.float32)
