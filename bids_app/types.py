"""The interfaces between the app's stages, in one place.

Each stage of the data flow hands the next one of these frozen dataclasses:

* :class:`T1wUnit`   discovery -> participant workflow (one T1w file = one unit of work)
* :class:`GMMaps`    preprocessing backend -> QC / model input / derivatives writer
* :class:`QCResult`  :mod:`bids_app.qc` -> predictions and sidecars
* :class:`ModelScores` predictor -> derivatives writer (one :class:`HeadScores` per head)

and the only contract a preprocessing backend must honour is :class:`PreprocBackend`.
Nothing here imports torch, pybids or the CLI, so every layer may import this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Protocol, get_args, runtime_checkable

import numpy as np

__all__ = [
    "ENTITY_ORDER",
    "AFTER_SPACE",
    "AnalysisLevel",
    "ANALYSIS_LEVELS",
    "PreprocName",
    "PREPROC_CHOICES",
    "BackendName",
    "BACKEND_NAMES",
    "DeviceName",
    "DEVICE_CHOICES",
    "Precision",
    "PRECISION_CHOICES",
    "TaskName",
    "TASK_NAMES",
    "TASK_CHOICES",
    "TASK_NAME_PATTERN",
    "InputKind",
    "INPUT_KINDS",
    "ModelFamily",
    "MODEL_FAMILIES",
    "HeadKind",
    "HEAD_KINDS",
    "ADArchitecture",
    "AD_ARCHITECTURES",
    "OptimizerName",
    "OPTIMIZER_CHOICES",
    "FreezeName",
    "FREEZE_CHOICES",
    "WeightsDtype",
    "WEIGHTS_DTYPES",
    "T1wUnit",
    "GMMaps",
    "QCResult",
    "HeadScores",
    "ModelScores",
    "PreprocBackend",
    "reuses_existing_maps",
    "backend_provides",
]

#: BIDS entities, short keys, in the order BIDS prescribes (schema ``rules/entities``). A T1w may carry
#: sub, ses, task, acq, ce, rec, run, echo, part, chunk (BIDS 1.11 schema); the others (flip, inv, mt, ...)
#: are listed so that any entity pybids parses keeps its BIDS place and still tells two images apart. Output
#: names keep every source entity in this order (BIDS-Derivatives: source entities are kept), then add
#: ``space``/``res``/``label``/``desc``.
ENTITY_ORDER: tuple[str, ...] = (
    "sub", "ses", "sample", "task", "tracksys", "acq", "nuc", "voi", "ce", "trc", "stain", "rec", "dir",
    "run", "mod", "echo", "flip", "inv", "mt", "part", "proc", "hemi", "split", "recording", "chunk",
)
#: entities BIDS places after ``space`` in a derivative's name (schema ``rules/entities``)
AFTER_SPACE: tuple[str, ...] = ("split", "recording", "chunk")

# Every option's allowed values, spelled once. The Literal is for signatures and mypy; its tuple
# (``get_args``) is for argparse ``choices`` and run-time checks, so the two cannot drift apart.

#: BIDS-App analysis levels.
AnalysisLevel = Literal["participant", "group"]
ANALYSIS_LEVELS: tuple[AnalysisLevel, ...] = get_args(AnalysisLevel)

#: Concrete VBM preprocessing backends (one module each in :mod:`bids_app.preproc`).
BackendName = Literal["clinica", "ants", "derivatives"]
BACKEND_NAMES: tuple[BackendName, ...] = get_args(BackendName)

#: ``--preproc``: a backend, or ``auto`` (derivatives with ``--derivatives``, clinica with SPM, else ants).
PreprocName = Literal["auto", "clinica", "ants", "derivatives"]
PREPROC_CHOICES: tuple[PreprocName, ...] = get_args(PreprocName)

#: ``--device``: where the networks run; ``auto`` = CUDA when available, else CPU.
DeviceName = Literal["auto", "cpu", "cuda"]
DEVICE_CHOICES: tuple[DeviceName, ...] = get_args(DeviceName)

#: ``--precision`` of the forward passes (see :mod:`bids_app.models.predict`).
Precision = Literal[
    "auto", "fp32", "fast", "fused", "bf16", "fp16", "openvino", "openvino-bf16", "onnxruntime", "compile"
]
PRECISION_CHOICES: tuple[Precision, ...] = get_args(Precision)

#: Prediction tasks the app's model families serve (a card's ``task``; any name matching
#: :data:`TASK_NAME_PATTERN` is a valid card task, these are the ones the app knows by name).
TaskName = Literal["sex", "ad", "cn_mci_ad", "pmci", "brain_age", "multitask"]
TASK_NAMES: tuple[TaskName, ...] = get_args(TaskName)
#: The BrainImageNet (IRv2) tasks: what ``train --tasks`` and ``models import --task`` serve today.
TASK_CHOICES: tuple[TaskName, ...] = ("sex", "ad")
#: What a card's ``task`` and a head's ``name`` must look like (lower-case letters, digits, ``_``).
TASK_NAME_PATTERN = r"^[a-z0-9_]+$"


#: Model families (``family`` of a schema-2 card).
ModelFamily = Literal["brainimagenet", "cnn", "liu_mox", "sfcn", "regional"]
MODEL_FAMILIES: tuple[ModelFamily, ...] = get_args(ModelFamily)

#: What one head of a package predicts: P(positive) of two classes, probabilities of several
#: classes (softmax over the head's outputs), or a value with a unit.
HeadKind = Literal["binary", "multiclass", "regression"]
HEAD_KINDS: tuple[HeadKind, ...] = get_args(HeadKind)

#: The two AD networks of the reference system (optimised head, or the sex network's head intact).
ADArchitecture = Literal["irv2_ad_optimised", "irv2_ad_intact"]
AD_ARCHITECTURES: tuple[ADArchitecture, ...] = get_args(ADArchitecture)

#: Training optimisers.
OptimizerName = Literal["sgd", "adam"]
OPTIMIZER_CHOICES: tuple[OptimizerName, ...] = get_args(OptimizerName)

#: Fine-tuning: which layers stay fixed (``low``: the stem; ``high``: every layer after the stem).
FreezeName = Literal["none", "low", "high"]
FREEZE_CHOICES: tuple[FreezeName, ...] = get_args(FreezeName)

#: Storage dtype of the weights in a model package.
WeightsDtype = Literal["float32", "float16"]
WEIGHTS_DTYPES: tuple[WeightsDtype, ...] = get_args(WeightsDtype)


#: What a model package reads (its card's ``input.kind``; see :mod:`bids_app.model_input`):
#: ``gm_crop2`` GMD + GMV, masked and cropped (BrainImageNet); ``gm_spm1`` one GM map on the SPM grid
#: (Clinica t1-volume: CNN-5 variants, Liu/MOX, the regional baseline); ``t1w_mni1mm`` the T1w affinely
#: registered to MNI152 at 1 mm, skull-stripped, bias-corrected, cropped and mean-normalised (SFCN).
InputKind = Literal["gm_crop2", "gm_spm1", "t1w_mni1mm"]
INPUT_KINDS: tuple[InputKind, ...] = get_args(InputKind)


@dataclass(frozen=True)
class T1wUnit:
    """One T1w image: the unit of work of the participant level.

    Attributes
    ----------
    path : Path
        The T1w NIfTI inside the BIDS dataset (never written to).
    entities : Mapping[str, str]
        Every BIDS entity of the file with short keys (``sub``, ``ses``, ``acq``, ``run``, ``echo``,
        ``part``, ...; see :data:`ENTITY_ORDER`), labels without prefixes. Every output name of
        this unit carries them, so two T1w images never share an output.
    metadata : Mapping[str, Any]
        The merged JSON sidecar (inheritance principle applied by pybids).
    """

    path: Path
    entities: Mapping[str, str]
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def subject(self) -> str:
        return self.entities["sub"]

    @property
    def session(self) -> str | None:
        return self.entities.get("ses")

    @property
    def run(self) -> str | None:
        return self.entities.get("run")

    @property
    def prefix(self) -> str:
        """``sub-01_ses-1_run-2``: the entity part of every output name of this unit."""
        return "_".join(f"{k}-{self.entities[k]}" for k in self._keys())

    def _keys(self) -> list[str]:
        known = [k for k in ENTITY_ORDER if self.entities.get(k)]
        return known + sorted(k for k in self.entities if k not in ENTITY_ORDER and self.entities.get(k))

    def with_space(self, space: str) -> str:
        """``sub-01_part-mag_space-X_chunk-2``: the entity part of a derivative in ``space``, with
        ``space`` where BIDS puts it (before ``split``, ``recording`` and ``chunk``)."""
        keys = self._keys()
        before = [f"{k}-{self.entities[k]}" for k in keys if k not in AFTER_SPACE]
        after = [f"{k}-{self.entities[k]}" for k in keys if k in AFTER_SPACE]
        return "_".join([*before, f"space-{space}", *after])

    @property
    def subdir(self) -> Path:
        """``sub-01/ses-1/anat``: where this unit's outputs go inside the output dataset."""
        parts = [f"sub-{self.subject}"]
        if self.session:
            parts.append(f"ses-{self.session}")
        return Path(*parts, "anat")


@dataclass(frozen=True)
class GMMaps:
    """What every preprocessing backend returns for one T1w.

    Both maps are 3D float32 arrays on the SPM 1.5 mm MNI grid (:data:`bids_app.grid.SPM_SHAPE`,
    :data:`bids_app.grid.SPM_AFFINE`), in the reference system's units:

    * ``gmd``: grey-matter density (SPM ``wc1``): GM probability in template space, unmodulated, 0..1.
    * ``gmv``: grey-matter volume (SPM ``mwc1``): ``gmd`` times the Jacobian determinant of the
      native-to-template warp, so that ``gmv.sum() * voxel_volume`` equals the native GM volume.

    Attributes
    ----------
    backend : str
        ``clinica``, ``ants`` or ``derivatives``; written into every output.
    backend_version : str
        Versions of the tools that made the maps (e.g. ``"clinica 0.12.0; SPM25 25.01.02"``).
    provenance : dict
        Parameters and tool versions, copied into the map sidecars.
    qc : dict
        Backend-specific QC metrics (e.g. ``brain_mask_dice``); :mod:`bids_app.qc` adds its own.
    source_files : tuple[Path, ...]
        Files the maps were read from or made from (for ``Sources`` in sidecars).
    t1w_mni : np.ndarray or None
        The T1w, N4 bias-corrected, skull-stripped and affinely registered to MNI152 on the 1 mm grid
        (:data:`bids_app.grid.MNI1MM_SHAPE`, :data:`bids_app.grid.MNI1MM_AFFINE`), float32, 0 outside
        the brain, neither cropped nor normalised; made only when a package reads ``t1w_mni1mm``.
    """

    gmd: np.ndarray
    gmv: np.ndarray
    backend: str
    backend_version: str
    provenance: Mapping[str, Any] = field(default_factory=dict)
    qc: Mapping[str, float] = field(default_factory=dict)
    source_files: tuple[Path, ...] = ()
    t1w_mni: np.ndarray | None = None


@dataclass(frozen=True)
class QCResult:
    """Quality-control outcome for one T1w.

    ``metrics`` maps metric names to values (e.g. ``gmv_template_correlation``); ``flags`` lists the
    names of failed checks (empty = passed). Predictions made when ``passed`` is False are still
    written, marked as made on inputs the model was not validated for.
    """

    metrics: Mapping[str, float]
    flags: tuple[str, ...] = ()
    thresholds: Mapping[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.flags


@dataclass(frozen=True)
class HeadScores:
    """What one head of a package gave for N inputs, for every fold.

    ``fold_outputs`` is N x F x K float64: for a ``binary`` head K = 1 and the values are
    P(``labels[1]``) (the positive label); for a ``multiclass`` head K = ``len(labels)`` and the
    values are the softmax probabilities in label order; for a ``regression`` head K = 1 and the
    values are in ``unit`` (raw output x scale + offset). ``mean`` (N x K) is the ensemble over
    folds, ``spread`` (N x K) its standard deviation.
    """

    name: str
    kind: HeadKind
    target: str
    labels: tuple[str, ...]
    fold_outputs: np.ndarray
    unit: str | None = None

    @property
    def mean(self) -> np.ndarray:
        return self.fold_outputs.mean(axis=1)

    @property
    def spread(self) -> np.ndarray:
        return self.fold_outputs.std(axis=1)


@dataclass(frozen=True)
class ModelScores:
    """Outputs of one model package (all its folds and heads) for a batch of N inputs.

    ``heads`` holds one :class:`HeadScores` per head of the package, in card order. For a package
    with a single binary head (every BrainImageNet package) ``fold_scores`` is N x F (P(positive),
    one column per fold), ``mean`` their mean over folds (the reference system's ensemble rule)
    and ``spread`` their standard deviation; for other packages read the heads (:meth:`head`).
    ``engine`` says what computed them (engine, version, precision, device, CPU, self-check; see
    :class:`bids_app.models.engines.EngineInfo`), for the prediction's provenance.
    """

    model_name: str
    task: str
    heads: tuple[HeadScores, ...]
    engine: Mapping[str, Any] = field(default_factory=dict)

    def head(self, name: str) -> HeadScores:
        """The outputs of the head called ``name`` (KeyError naming the heads there are)."""
        for h in self.heads:
            if h.name == name:
                return h
        raise KeyError(f"model {self.model_name} has no head {name!r}; its heads: {[h.name for h in self.heads]}")

    def _binary(self) -> HeadScores:
        if len(self.heads) != 1 or self.heads[0].kind != "binary":
            kinds = ", ".join(f"{h.name} ({h.kind})" for h in self.heads)
            raise ValueError(
                f"model {self.model_name} has heads {kinds}: fold_scores / mean / spread exist for a single "
                "binary head only; read scores.heads or scores.head(name)"
            )
        return self.heads[0]

    @property
    def fold_scores(self) -> np.ndarray:
        return self._binary().fold_outputs[:, :, 0]

    @property
    def mean(self) -> np.ndarray:
        return self.fold_scores.mean(axis=1)

    @property
    def spread(self) -> np.ndarray:
        return self.fold_scores.std(axis=1)


@runtime_checkable
class PreprocBackend(Protocol):
    """A VBM preprocessing backend: one T1w in, :class:`GMMaps` out.

    Implementations live in :mod:`bids_app.preproc` (one module each) and must be independent of
    every other job: all scratch files go below ``work_dir``, which is private to this unit, and a
    second call with the same ``work_dir`` may reuse finished steps (resume after a kill).

    Optional class attribute: ``reuses_existing_maps = True`` for a backend that reads maps made
    elsewhere (the T1w is then checked only for readability, and its maps are never cached).
    Read it with :func:`reuses_existing_maps`; absent means False.

    Optional attribute ``provides``: a frozenset of the :data:`InputKind` values the backend can make
    (read it with :func:`backend_provides`; absent means ``gm_crop2`` and ``gm_spm1``, which every
    backend's GMD and GMV maps give). A backend that can make ``t1w_mni1mm`` also has a boolean
    ``make_t1w_mni``: it fills :attr:`GMMaps.t1w_mni` only when that is set.
    """

    @property
    def name(self) -> str:
        """The backend's name (``clinica``, ``ants``, ``derivatives``), written into every output."""
        ...

    def available(self) -> bool:
        """True when the backend's external tools are installed."""
        ...

    def version(self) -> str:
        """Versions of the tools the backend uses, for provenance."""
        ...

    def run(self, unit: T1wUnit, work_dir: Path) -> GMMaps:
        """Preprocess one T1w; raise :class:`bids_app.errors.InputDataError` for bad input and
        :class:`bids_app.errors.PreprocessingError` when a step fails."""
        ...


def reuses_existing_maps(backend: PreprocBackend) -> bool:
    """True when ``backend`` reads maps made elsewhere instead of processing the T1w."""
    return bool(getattr(backend, "reuses_existing_maps", False))


def backend_provides(backend: PreprocBackend) -> frozenset[str]:
    """The input kinds ``backend`` can make (its ``provides``; GM maps only when it says nothing)."""
    return frozenset(getattr(backend, "provides", ("gm_crop2", "gm_spm1")))
