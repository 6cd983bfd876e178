"""What the reports read: the template background, the files of one T1w, explanation maps.

Every reader here takes paths in ``output_dir`` and returns plain data (arrays, dicts, records);
figures are made from that data by :mod:`bids_app.report.figures` and laid out by the report
builders. Unreadable files are logged and left out: a report never fails because a figure's input
is damaged (the participant and group levels record real failures themselves).

Names follow the output contract: explanation maps are
``<unit prefix>_space-IXI549Space_desc-<method><Model>_explanation.nii.gz`` with a JSON sidecar and
an atlas summary ``..._desc-<method><Model>_regions.tsv`` beside them; the warped T1w, when a backend
writes it, is ``<unit prefix>_space-IXI549Space_desc-preproc_T1w.nii.gz`` (fMRIPrep's name for a
preprocessed T1w in a template space).
"""

from __future__ import annotations

import functools
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..derivatives import SPACE

__all__ = [
    "ExplanationMap",
    "read_json",
    "load_volume",
    "template_t1",
    "warped_t1w_path",
    "find_explanations",
    "read_explanation",
    "read_regions",
    "unit_location",
]

logger = logging.getLogger(__name__)

_EXPLANATION_RE = re.compile(rf"^(?P<prefix>.+)_space-{SPACE}_desc-(?P<desc>[A-Za-z0-9]+)_explanation\.nii\.gz$")


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None (and a log line) when missing or unreadable."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        logger.warning("%s: unreadable JSON (%s); left out of the report", path, exc)
        return None
    return data if isinstance(data, dict) else {"value": data}


def load_volume(path: Path) -> np.ndarray | None:
    """A 3-D image from ``path`` on the SPM grid (resampled only if it is on another grid).

    None (and a log line) when missing or unreadable; figures are then simply left out.
    """
    import nibabel as nib

    from ..grid import to_grid

    if not path.is_file():
        return None
    try:
        img = nib.load(path)
        if not isinstance(img, nib.spatialimages.SpatialImage):
            raise TypeError(f"not a spatial image ({type(img).__name__})")
        return to_grid(img)
    except Exception as exc:
        logger.warning("%s: cannot be read (%s); left out of the report", path, exc)
        return None


@functools.lru_cache(maxsize=1)
def template_t1() -> np.ndarray:
    """nilearn's MNI152 (2009) T1 template on the SPM grid: the background of every brain figure."""
    from nilearn.datasets import load_mni152_template

    from ..grid import to_grid

    out = to_grid(load_mni152_template(resolution=1))
    out.setflags(write=False)
    return out


def warped_t1w_path(unit_dir: Path, prefix: str) -> Path:
    """Where a backend writes the T1w warped to the template (it may not exist)."""
    return unit_dir / f"{prefix}_space-{SPACE}_desc-preproc_T1w.nii.gz"


@dataclass(frozen=True)
class ExplanationMap:
    """One explanation map file and what its sidecar says about it."""

    path: Path
    desc: str
    sidecar: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str | None:
        """``ad`` or ``sex`` from the desc label's suffix (``<method><Model>``, Model = AD or Sex)."""
        for suffix, task in (("AD", "ad"), ("Sex", "sex")):
            if self.desc.endswith(suffix) and len(self.desc) > len(suffix):
                return task
        return None

    @property
    def method(self) -> str:
        if self.sidecar.get("Method"):
            return str(self.sidecar["Method"])
        suffix = {"ad": "AD", "sex": "Sex"}.get(self.task or "", "")
        return self.desc[: len(self.desc) - len(suffix)] if suffix else self.desc

    @property
    def model(self) -> str:
        return str(self.sidecar.get("Model") or {"ad": "AD model", "sex": "sex model"}.get(self.task or "", "model"))

    @property
    def regions_path(self) -> Path:
        return self.path.with_name(self.path.name.replace("_explanation.nii.gz", "_regions.tsv"))

    @property
    def title(self) -> str:
        version = self.sidecar.get("ModelVersion")
        return f"{self.method}, {self.model}" + (f" {version}" if version else "")


def find_explanations(unit_dir: Path, prefix: str) -> list[ExplanationMap]:
    """The explanation maps of one T1w (``prefix``) in ``unit_dir``, sorted by their desc label."""
    if not unit_dir.is_dir():
        return []
    found = []
    for path in sorted(unit_dir.glob(f"{prefix}_space-{SPACE}_desc-*_explanation.nii.gz")):
        match = _EXPLANATION_RE.match(path.name)
        if not match or match["prefix"] != prefix:
            continue
        side = read_json(path.with_name(path.name.replace(".nii.gz", ".json"))) or {}
        found.append(ExplanationMap(path=path, desc=match["desc"], sidecar=side))
    return found


def read_explanation(item: ExplanationMap) -> np.ndarray | None:
    """The map's values on the SPM grid (None when unreadable)."""
    return load_volume(item.path)


def read_regions(item: ExplanationMap, limit: int = 8) -> list[dict[str, Any]] | None:
    """The first ``limit`` rows of the map's atlas summary (None when there is none or it is unreadable)."""
    import pandas as pd

    path = item.regions_path
    if not path.is_file():
        return None
    try:
        table = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False, nrows=limit)
    except Exception as exc:
        logger.warning("%s: unreadable (%s); left out of the report", path, exc)
        return None
    return table.astype(object).where(table.notna(), None).to_dict(orient="records")


def unit_location(output_dir: Path, source_file: str) -> tuple[Path, str]:
    """(folder of a T1w's outputs, its file-name prefix) from the ``source_file`` of a predictions row.

    ``source_file`` is relative to the input dataset (``sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz``);
    the outputs mirror that folder and take the name up to ``_T1w``.
    """
    rel = Path(str(source_file))
    prefix = rel.name.split("_T1w")[0]
    parts = list(rel.parent.parts)
    start = next((i for i, part in enumerate(parts) if part.startswith("sub-")), len(parts))
    folder = Path(output_dir).joinpath(*[p for p in parts[start:] if p not in ("", ".", "..", "/")])
    return folder, prefix
