"""The SPM backend: Clinica 0.12 ``t1-volume-tissue-segmentation`` (SPM25 standalone), per participant.

This is the route closest to the reference system's SPM/DPARSF maps. Clinica is built for whole
datasets and interactive use; to run it as one independent, unattended job per T1w:

* **a session-ful view** (:func:`make_session_view`): Clinica asks interactively to rewrite datasets
  without sessions. The job builds, in its own work dir, a tiny BIDS dataset holding only this T1w as
  a symlink, with a ``ses-`` label added when the file has none (:data:`DEFAULT_SESSION`), and a
  ``dataset_description.json`` carrying ``DatasetType: raw`` and the source's ``BIDSVersion``
  (Clinica refuses a CAPS whose BIDS version differs from its input's);
* **a subjects/sessions TSV** naming exactly that visit, so Clinica selects nothing else;
* **one CAPS and one nipype work dir per job** (Clinica rewrites the CAPS description without a
  lock), and ``Pipeline.run(bypass_check=True)``, which skips the disk-space and ``n_procs`` prompts;
* **parameters** (:func:`segmentation_parameters`): tissues 1-3, warped unmodulated *and* warped
  modulated GM (``save_warped_modulated``), SPM's own TPM; no smoothing, no group template;
* **optional DARTEL route** (``dartel_template``): the 7 files of an existing group template are
  linked into the job's CAPS, then ``t1-volume-register-dartel`` and ``t1-volume-dartel2mni`` run
  twice (modulate on / off), without smoothing;
* **outputs** (:func:`caps_to_gmmaps`): the CAPS maps
  ``<src>_segm-graymatter_space-Ixi549Space_modulated-{off,on}_probability.nii.gz`` become a
  :class:`~bids_app.types.GMMaps` on the SPM grid;
* **failures**: Clinica's ``run`` swallows nipype's "did not execute cleanly" error; the backend
  checks for the outputs itself and, when missing, names the nipype crash files and the node that
  failed (read from the file name, never unpickled: :func:`crash_summary`).

Clinica pins its own dependency versions (0.12.0 wants nilearn < 0.14 and pandas < 3), so it lives
in its own virtual environment and is driven through :mod:`bids_app.preproc._clinica_driver`, run
with that environment's interpreter (:func:`clinica_python`); the app never imports clinica.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

import nibabel as nib
import numpy as np

from .._io import safe_join, write_json, write_text
from ..errors import BackendUnavailableError, InputDataError, PreprocessingError
from ..grid import to_grid
from ..types import GMMaps, T1wUnit

__all__ = [
    "DEFAULT_SESSION",
    "CLINICA_BIDS_VERSION",
    "SpmStatus",
    "SessionView",
    "ClinicaBackend",
    "spm_standalone_status",
    "make_session_view",
    "write_subjects_sessions_tsv",
    "segmentation_parameters",
    "dartel_parameters",
    "caps_map_paths",
    "caps_to_gmmaps",
    "crash_summary",
    "link_dartel_template",
    "clinica_python",
    "run_driver",
]

#: session label given to datasets without sessions (Clinica's own baseline label)
DEFAULT_SESSION = "M000"
#: BIDS version Clinica 0.12 assumes when a dataset declares none
CLINICA_BIDS_VERSION = "1.7.0"
#: label of the group a --dartel-template is linked in as
DARTEL_GROUP = "vbmpredict"
_ENTITY_ORDER = ("sub", "ses", "acq", "ce", "rec", "run")


@dataclass(frozen=True)
class SpmStatus:
    """Where SPM standalone and the MATLAB Runtime are, and what is wrong if they are not usable."""

    spm_home: Path | None
    run_script: Path | None
    tpm: Path | None
    mcr_home: Path | None
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def spm_standalone_status(env: Mapping[str, str] | None = None) -> SpmStatus:
    """Check SPM standalone the way Clinica will use it (exactly one ``run_spm*.sh`` and one
    ``TPM.nii`` below ``SPMSTANDALONE_HOME``; ``MCR_HOME`` an existing folder)."""
    env = os.environ if env is None else env
    problems: list[str] = []
    spm_home = Path(env["SPMSTANDALONE_HOME"]) if env.get("SPMSTANDALONE_HOME") else None
    mcr_home = Path(env["MCR_HOME"]) if env.get("MCR_HOME") else None
    run_script = tpm = None
    if spm_home is None:
        problems.append("SPMSTANDALONE_HOME is not set (the unpacked SPM25 standalone folder with run_spm25.sh)")
    elif not spm_home.is_dir():
        problems.append(f"SPMSTANDALONE_HOME={spm_home} is not a folder")
    else:
        scripts = sorted(spm_home.rglob("run_spm*.sh"))
        if len(scripts) != 1:
            problems.append(f"expected exactly one run_spm*.sh below {spm_home}, found {len(scripts)}")
        else:
            run_script = scripts[0]
        tpms = sorted(spm_home.rglob("TPM.nii"))
        if len(tpms) != 1:
            problems.append(
                f"expected exactly one TPM.nii below {spm_home}, found {len(tpms)} "
                "(the compiled SPM archive must be unpacked at image build)"
            )
        else:
            tpm = tpms[0]
    if mcr_home is None:
        problems.append("MCR_HOME is not set (MATLAB Runtime R2024b)")
    elif not mcr_home.is_dir():
        problems.append(f"MCR_HOME={mcr_home} is not a folder")
    return SpmStatus(spm_home, run_script, tpm, mcr_home, tuple(problems))


@dataclass(frozen=True)
class SessionView:
    """A one-T1w BIDS dataset that Clinica can read without asking anything."""

    bids_dir: Path
    participant_id: str  # "sub-01"
    session_id: str  # "ses-M000"
    t1w: Path  # the symlink inside the view
    source: Path  # the original T1w
    session_added: bool


def _find_dataset_root(t1w: Path, subject: str) -> Path | None:
    for parent in t1w.resolve().parents:
        if parent.name == f"sub-{subject}":
            return parent.parent
        if (parent / "dataset_description.json").is_file():
            return parent
    return None


def make_session_view(unit: T1wUnit, view_dir: Path) -> SessionView:
    """Build the session-ful symlink view of ``unit`` below ``view_dir`` (idempotent).

    The T1w (and its JSON sidecar when present) is linked as
    ``sub-X/ses-Y/anat/sub-X_ses-Y[_acq-..][_ce-..][_rec-..][_run-..]_T1w.nii[.gz]``; ``Y`` is the
    unit's session or :data:`DEFAULT_SESSION`.
    """
    src = Path(unit.path)
    if not src.is_file():
        raise InputDataError(f"{src}: T1w file not found for the Clinica view")
    ext = ".nii.gz" if src.name.endswith(".nii.gz") else ".nii"
    entities = dict(unit.entities)
    added = not entities.get("ses")
    if added:
        entities["ses"] = DEFAULT_SESSION
    prefix = "_".join(f"{k}-{entities[k]}" for k in _ENTITY_ORDER if entities.get(k))
    participant_id, session_id = f"sub-{entities['sub']}", f"ses-{entities['ses']}"
    anat = safe_join(view_dir, participant_id, session_id, "anat")
    anat.mkdir(parents=True, exist_ok=True)
    link = anat / f"{prefix}_T1w{ext}"
    _symlink(src.resolve(), link)
    sidecar = src.with_name(src.name[: -len(ext)] + ".json")
    if sidecar.is_file():
        _symlink(sidecar.resolve(), anat / f"{prefix}_T1w.json")

    root = _find_dataset_root(src, entities["sub"])
    description: dict[str, Any] = {}
    if root is not None and (root / "dataset_description.json").is_file():
        try:
            description = json.loads((root / "dataset_description.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            description = {}
    view_desc = {
        "Name": str(description.get("Name", "vbm-predict Clinica view")),
        "BIDSVersion": str(description.get("BIDSVersion", CLINICA_BIDS_VERSION)),
        "DatasetType": "raw",
    }
    write_json(view_dir / "dataset_description.json", view_desc)
    write_text(view_dir / "participants.tsv", f"participant_id\n{participant_id}\n")
    return SessionView(view_dir, participant_id, session_id, link, src, added)


def _symlink(target: Path, link: Path) -> None:
    if link.is_symlink() or link.exists():
        if link.is_symlink() and Path(os.readlink(link)) == target:
            return
        link.unlink()
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def write_subjects_sessions_tsv(path: Path, view: SessionView) -> Path:
    """The ``-tsv`` file Clinica reads: exactly this one visit."""
    return write_text(path, f"participant_id\tsession_id\n{view.participant_id}\t{view.session_id}\n")


def segmentation_parameters(tpm: Path | None = None) -> dict[str, Any]:
    """Parameters for ``T1VolumeTissueSegmentation`` (names as in Clinica 0.12's pipeline class).

    ``tissue_probability_maps=None`` lets Clinica use SPM's own ``TPM.nii``.
    """
    return {
        "tissue_classes": [1, 2, 3],
        "dartel_tissues": [1, 2, 3],
        "tissue_probability_maps": str(tpm) if tpm else None,
        "save_warped_unmodulated": True,
        "save_warped_modulated": True,
    }


def dartel_parameters(modulate: bool) -> dict[str, Any]:
    """Parameters for ``T1VolumeDartel2MNI``: GM only, no smoothing, SPM-grid voxels kept."""
    return {"tissues": [1], "voxel_size": None, "modulate": bool(modulate), "smooth": []}


def caps_map_paths(caps: Path, view: SessionView, *, dartel: bool = False) -> dict[str, Path]:
    """Where the GMD (``modulated-off``) and GMV (``modulated-on``) maps of ``view`` are in ``caps``."""
    base = safe_join(caps, "subjects", view.participant_id, view.session_id, "t1", "spm")
    folder = base / "dartel" / f"group-{DARTEL_GROUP}" if dartel else base / "segmentation" / "normalized_space"
    stem = view.t1w.name.split(".nii")[0]
    return {
        kind: folder / f"{stem}_segm-graymatter_space-Ixi549Space_modulated-{mod}_probability.nii.gz"
        for kind, mod in (("gmd", "off"), ("gmv", "on"))
    }


def caps_to_gmmaps(
    paths: Mapping[str, Path], *, backend_version: str, provenance: Mapping[str, Any] | None = None
) -> GMMaps:
    """Read Clinica's two GM maps into :class:`GMMaps` (resampled onto the SPM grid only if needed)."""
    arrays = {}
    for kind in ("gmd", "gmv"):
        path = Path(paths[kind])
        if not path.is_file():
            raise PreprocessingError(f"Clinica did not write the expected map {path}")
        try:
            img = nib.load(str(path))
            arrays[kind] = np.nan_to_num(to_grid(img)).astype(np.float32)
        except Exception as exc:
            raise PreprocessingError(f"{path}: cannot read Clinica's map ({exc})") from exc
    return GMMaps(
        gmd=arrays["gmd"],
        gmv=arrays["gmv"],
        backend="clinica",
        backend_version=backend_version,
        provenance=dict(provenance or {}),
        qc={},
        source_files=tuple(Path(paths[k]) for k in ("gmd", "gmv")),
    )


_CRASH_RE = re.compile(r"^crash-(?P<stamp>\d{8}-\d{6})-(?P<user>[^-]*)-(?P<node>.+?)-(?P<uuid>[0-9a-f-]{36})\.pklz$")


def crash_summary(search_dirs: list[Path]) -> str:
    """Name nipype crash files and their failed nodes without unpickling them.

    nipype names crash files ``crash-<date>-<time>-<user>-<node>-<uuid>.pklz``; the node name is
    what a user needs to find the step (the file itself is a pickle and is never loaded here).
    """
    lines = []
    for d in search_dirs:
        if not Path(d).is_dir():
            continue
        for f in sorted(Path(d).rglob("crash-*.pklz")) + sorted(Path(d).rglob("crash-*.txt")):
            m = _CRASH_RE.match(f.name)
            node = m.group("node") if m else f.stem
            lines.append(f"node {node!r}: {f}")
    if not lines:
        return "no nipype crash file was found"
    return "nipype crash files (inspect with `nipypecli crash FILE`): " + "; ".join(lines)


def link_dartel_template(template_dir: Path, caps: Path) -> list[Path]:
    """Link an existing DARTEL template (``*iteration-{1..6}_template.nii*`` and the final
    ``*_template.nii*``) into ``caps/groups/group-vbmpredict/t1`` under Clinica's names."""
    template_dir = Path(template_dir)
    if not template_dir.is_dir():
        raise InputDataError(f"{template_dir}: --dartel-template must be a folder with the 7 DARTEL template files")
    found: dict[str, Path] = {}
    for f in sorted(template_dir.iterdir()):
        m = re.search(r"iteration-([1-6])_template\.nii(\.gz)?$", f.name)
        if m:
            found[f"iteration-{m.group(1)}"] = f
        elif re.search(r"_template\.nii(\.gz)?$", f.name):
            found["final"] = f
    missing = [k for k in [f"iteration-{i}" for i in range(1, 7)] + ["final"] if k not in found]
    if missing:
        raise InputDataError(
            f"{template_dir}: the DARTEL template is incomplete; missing {', '.join(missing)} "
            "(expected group-<label>_iteration-1..6_template.nii.gz and group-<label>_template.nii.gz)"
        )
    dest = caps / "groups" / f"group-{DARTEL_GROUP}" / "t1"
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for key, src in found.items():
        ext = ".nii.gz" if src.name.endswith(".gz") else ".nii"
        name = f"group-{DARTEL_GROUP}_{key}_template{ext}" if key != "final" else f"group-{DARTEL_GROUP}_template{ext}"
        _symlink(src.resolve(), dest / name)
        out.append(dest / name)
    return out


def clinica_python(env: Mapping[str, str] | None = None) -> Path | None:
    """The interpreter that has Clinica: ``CLINICA_PYTHON``, else ``/opt/clinica-venv/bin/python``
    (the container's), else this interpreter when it can import clinica; None when none has it."""
    env = os.environ if env is None else env
    if env.get("CLINICA_PYTHON"):
        return Path(env["CLINICA_PYTHON"])
    container = Path("/opt/clinica-venv/bin/python")
    if container.is_file():
        return container
    import importlib.util

    return Path(sys.executable) if importlib.util.find_spec("clinica") is not None else None


def run_driver(request: Mapping[str, Any], work_dir: Path, python: Path, *, timeout_s: float | None = None) -> dict:
    """Run :mod:`bids_app.preproc._clinica_driver` with ``python`` on ``request``; return its result.

    stdin is closed, so an unexpected Clinica prompt aborts instead of hanging the job; stdout and
    stderr go to a log file in ``work_dir`` that error messages name.
    """
    work_dir = Path(work_dir)
    tag = f"{request['pipeline']}{request.get('tag', '')}"
    req = dict(request)
    req["result"] = str(work_dir / f"clinica_{tag}_result.json")
    req_path = write_json(work_dir / f"clinica_{tag}_request.json", req)
    log = work_dir / f"clinica_{tag}.log"
    env = dict(os.environ)
    env.setdefault("MCR_INHIBIT_CTF_LOCK", "1")
    env.setdefault("MCR_CACHE_ROOT", str(work_dir / "mcr_cache"))
    env.pop("PYTHONPATH", None)  # Clinica's venv must see its own pinned packages only
    with open(log, "wb") as fh:
        try:
            proc = subprocess.run(
                [str(python), str(Path(__file__).with_name("_clinica_driver.py")), str(req_path)],
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=str(work_dir),
                env=env,
                timeout=timeout_s,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PreprocessingError(f"Clinica ({python}) could not run: {exc}; log {log}") from exc
    result_path = Path(req["result"])
    if not result_path.is_file():
        raise PreprocessingError(f"Clinica ({python}) exited with code {proc.returncode} without a result; log {log}")
    result = json.loads(result_path.read_text(encoding="utf-8"))
    result["log"] = str(log)
    result["returncode"] = proc.returncode
    return result


@dataclass
class ClinicaBackend:
    """Clinica ``t1-volume`` with SPM25 standalone, one independent job per T1w."""

    nprocs: int = 1
    dartel_template: Path | None = None
    env: Mapping[str, str] | None = field(default=None, repr=False)
    name: ClassVar[str] = "clinica"
    #: Clinica t1-volume makes GM maps only (no T1w in MNI 1 mm space)
    provides: ClassVar[frozenset[str]] = frozenset({"gm_crop2", "gm_spm1"})

    def status(self) -> SpmStatus:
        return spm_standalone_status(self.env)

    def available(self) -> bool:
        return self.status().ok and clinica_python(self.env) is not None

    def version(self) -> str:
        st = self.status()
        spm = st.run_script.name.replace("run_", "").replace(".sh", "").upper() if st.run_script else "SPM not found"
        mcr = st.mcr_home.name if st.mcr_home else "MCR not found"
        return f"clinica {self._clinica_version()}; {spm} standalone; MATLAB Runtime {mcr}"

    def _clinica_version(self) -> str:
        py = clinica_python(self.env)
        if py is None:
            return "not installed"
        try:
            out = subprocess.run(
                [str(py), "-c", "from importlib.metadata import version; print(version('clinica'))"],
                capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return "unknown"
        return out.stdout.strip() or "unknown"

    def _require(self) -> tuple[SpmStatus, Path]:
        st = self.status()
        problems = list(st.problems)
        py = clinica_python(self.env)
        if py is None:
            problems.append(
                "Clinica is not installed (no CLINICA_PYTHON, no /opt/clinica-venv; pip install clinica==0.12.0 "
                "in a separate virtual environment and set CLINICA_PYTHON to its python)"
            )
        if problems:
            raise BackendUnavailableError(
                "--preproc clinica cannot run: " + "; ".join(problems) + ". Install SPM25 standalone and "
                "MATLAB Runtime R2024b (the container does), or use --preproc ants for the SPM-free backend."
            )
        return st, py  # type: ignore[return-value]

    def requests(self, view: SessionView, tsv: Path, work_dir: Path, tpm: Path | None) -> list[dict[str, Any]]:
        """The driver requests of one job, in order: what Clinica receives, for tests and provenance."""
        caps = work_dir / "caps"
        base = {
            "bids_dir": str(view.bids_dir),
            "caps_dir": str(caps),
            "tsv": str(tsv),
            "n_procs": max(int(self.nprocs), 1),
            "crash_dir": str(work_dir / "crash"),
        }
        reqs = [
            base
            | {
                "pipeline": "segmentation",
                "base_dir": str(work_dir / "nipype" / "segmentation"),
                "parameters": segmentation_parameters(tpm),
            }
        ]
        if self.dartel_template is not None:
            reqs.append(
                base
                | {
                    "pipeline": "register_dartel",
                    "group_label": DARTEL_GROUP,
                    "base_dir": str(work_dir / "nipype" / "register_dartel"),
                    "parameters": {"tissues": [1, 2, 3]},
                }
            )
            for modulate in (False, True):
                reqs.append(
                    base
                    | {
                        "pipeline": "dartel2mni",
                        "tag": f"_mod{int(modulate)}",
                        "group_label": DARTEL_GROUP,
                        "base_dir": str(work_dir / "nipype" / f"dartel2mni_mod{int(modulate)}"),
                        "parameters": dartel_parameters(modulate),
                    }
                )
        return reqs

    def run(self, unit: T1wUnit, work_dir: Path) -> GMMaps:
        st, py = self._require()
        work_dir = Path(work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / "crash").mkdir(exist_ok=True)
        view = make_session_view(unit, work_dir / "bids")
        tsv = write_subjects_sessions_tsv(work_dir / "subjects_sessions.tsv", view)
        caps = work_dir / "caps"
        dartel = self.dartel_template is not None
        paths = caps_map_paths(caps, view, dartel=dartel)
        reqs = self.requests(view, tsv, work_dir, st.tpm)
        if dartel:
            link_dartel_template(Path(self.dartel_template), caps)  # type: ignore[arg-type]
        if not all(p.is_file() for p in paths.values()):  # resume: finished maps are reused
            for req in reqs:
                result = run_driver(req, work_dir, py)
                if not result.get("ok"):
                    raise PreprocessingError(
                        f"Clinica {req['pipeline']} failed for {unit.path}: {result.get('error')}; "
                        f"log {result['log']}; " + crash_summary([work_dir / "crash", work_dir / "nipype"])
                    )
            missing = [str(p) for p in paths.values() if not p.is_file()]
            if missing:
                raise PreprocessingError(
                    f"Clinica finished without writing {', '.join(missing)} for {unit.path}; "
                    + crash_summary([work_dir / "crash", work_dir / "nipype"])
                )
        provenance: dict[str, Any] = {
            "Backend": "clinica",
            "Software": self.version(),
            "Pipelines": [r["pipeline"] for r in reqs],
            "Parameters": [r["parameters"] for r in reqs],
            "SessionAdded": view.session_added,
            "DartelTemplate": str(self.dartel_template) if dartel else None,
        }
        return caps_to_gmmaps(paths, backend_version=self.version(), provenance=provenance)
