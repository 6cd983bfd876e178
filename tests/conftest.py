"""Shared fixtures (real NIfTI files and BIDS trees made on the fly) and the CI rule on skips.

With ``CI=true`` a skipped test fails: what a test needs, CI installs (``scripts/install.sh --test``),
so a skip there means a requirement went missing. Elsewhere a test may skip, with its reason.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import nibabel as nib
import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")

# Clinica's own environment made by `scripts/install.sh --test`, found like the image's: CLINICA_PYTHON.
_CLINICA_VENV_PYTHON = ROOT / ".venv-clinica" / "bin" / "python"
if _CLINICA_VENV_PYTHON.is_file():
    os.environ.setdefault("CLINICA_PYTHON", str(_CLINICA_VENV_PYTHON))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "ci_may_skip(reason): may skip even with CI=true, for what no CI machine has (e.g. a GPU)"
    )


# ------------------------------------------------------------------ scheduling under pytest-xdist
# CI runs `pytest -n 2 --dist loadfile --no-loadscope-reorder`. --dist loadfile keeps each module on one
# worker, so a module-scoped fixture (two ANTs registrations of Colin27, a simulated cohort, an app run,
# the container study, a SLURM cluster) is computed once, not once per worker as when its tests
# alternate between the workers. (xdist_group marks and --dist loadgroup do not group anything with
# pytest 9.2 and xdist 3.8: xdist rewrites `item._nodeid`, which pytest 9.2 no longer reads.)
# The queue is longest module first (longest processing time first), so no long module starts last
# while the other worker sits idle: `--no-loadscope-reorder` keeps this order (xdist would sort modules
# by their number of tests). The figures are estimated seconds on the 2-core CI machine (README,
# "CI time"): only their order matters; refresh them from a clean CI run's `--durations` list. A module
# not listed keeps its collection order, after the listed ones.
LONG_MODULES: dict[str, float] = {
    "test_container": 900,
    "test_preproc_ants": 650,  # the staged-affine case on a simulated head; Colin27 moved to test_fidelity_real
    "test_fidelity_real": 700,
    "test_models_keras_import": 650,
    "test_synth": 400,
    "test_train_cli_families": 500,
    "test_train_pipeline": 300,
    "test_slurm": 200,
    "test_explain_occlusion": 170,
    "test_train_regional": 110,
    "test_models_cli": 90,
    "test_reliability_inputs": 80,
    "test_reliability_names": 60,
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not hasattr(config, "workerinput"):  # set in xdist workers only (not inherited by a pytest subprocess)
        return  # one process: collection order (quick unit tests of a module before its slow ones)

    def cost(item: pytest.Item) -> float:
        return LONG_MODULES.get(item.nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py"), 0.0)

    items.sort(key=lambda it: -cost(it))  # stable: a module's tests stay in their order


def _skip_reason(longrepr: object) -> str:
    return str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


def _fail_skip_in_ci(report: pytest.TestReport | pytest.CollectReport, allowed: bool = False) -> None:
    if IN_CI and report.skipped and not hasattr(report, "wasxfail") and not allowed:
        reason = _skip_reason(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped with CI=true, which counts as a failure (CI installs what tests need): {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    report = yield
    # the explicit allow-list: @pytest.mark.ci_may_skip(reason=...) for what no CI machine can have
    _fail_skip_in_ci(report, allowed=item.get_closest_marker("ci_may_skip") is not None)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> pytest.CollectReport:
    report = yield
    _fail_skip_in_ci(report)
    return report


def write_t1w(
    path: Path, *, shape=(48, 56, 48), zooms=(4.0, 4.0, 4.0), seed: int = 0, data: np.ndarray | None = None
) -> Path:
    """A small but real 3D T1w-like image (an ellipsoid 'head' with noise) in RAS+ world space."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if data is None:
        rng = np.random.default_rng(seed)
        grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
        head = ((grid**2).sum(0) < 0.8).astype(np.float32)
        data = head * (600 + 50 * rng.standard_normal(shape).astype(np.float32))
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = -np.array(zooms) * (np.array(shape) - 1) / 2
    img = nib.Nifti1Image(data.astype(np.float32), affine)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, path)
    return path


def make_bids(
    root: Path,
    units: Iterable[str] = (),
    *,
    participants: str | list[dict] | None = None,
    participants_json: dict | None = None,
    ext: str = ".nii.gz",
) -> Path:
    """A BIDS dataset with one real T1w per name in ``units`` (e.g. ``sub-01_ses-1``, ``sub-02_run-2``).

    ``participants``: the participants.tsv, as rows (dicts) or as the file's text; by default one row
    per subject of ``units``, and no file at all when there are neither units nor rows.
    ``participants_json``: written as participants.json when given.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "test", "BIDSVersion": "1.10.0", "DatasetType": "raw", "Authors": ["Test"]})
    )
    (root / "README").write_text("A test dataset made by the vbm-predict tests.\n")
    (root / "T1w.json").write_text(json.dumps({"MagneticFieldStrength": 3, "Manufacturer": "Test"}))
    subjects = []
    for i, name in enumerate(units):
        ents = dict(part.split("-", 1) for part in name.split("_"))
        sub = ents["sub"]
        subjects.append(sub)
        folder = root / f"sub-{sub}"
        if "ses" in ents:
            folder = folder / f"ses-{ents['ses']}"
        write_t1w(folder / "anat" / f"{name}_T1w{ext}", seed=i)
    if isinstance(participants, str):
        (root / "participants.tsv").write_text(participants)
    else:
        rows = participants or [{"participant_id": f"sub-{s}"} for s in dict.fromkeys(subjects)]
        if rows:
            cols = list(rows[0])
            lines = ["\t".join(cols)] + ["\t".join(str(r.get(c, "n/a")) for c in cols) for r in rows]
            (root / "participants.tsv").write_text("\n".join(lines) + "\n")
    if participants_json is not None:
        (root / "participants.json").write_text(json.dumps(participants_json))
    return root


@pytest.fixture(scope="session")
def mni_gm_maps() -> tuple[np.ndarray, np.ndarray]:
    """Real anatomy on the SPM grid: MNI152 GM probability as GMD and a modulated GMV."""
    from bids_app.grid import template_gm

    gmd = np.array(template_gm(), dtype=np.float32)
    return gmd, gmd * np.float32(1.1)


def write_grid_map(path: Path, data: np.ndarray) -> Path:
    from bids_app.grid import SPM_AFFINE

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.float32), SPM_AFFINE), path)
    return path


def tree_snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """(size, mtime_ns, first bytes) of every file below ``root``: to prove nothing changed."""
    snap = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() or p.is_symlink():
            st = p.lstat()
            snap[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, p.read_bytes()[:64] if p.is_file() else b"")
    return snap


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """A models directory with a 1-fold sex package and a 3-fold AD package (random weights)."""
    from .models_fixtures import make_package

    root = tmp_path_factory.mktemp("models")
    tiny = {"width": 0.0625, "blocks": [1, 1, 1], "version": "0.0.1", "preprocessing": ("clinica",),
            "randomise": False, "screening": False, "mask": "brain"}
    make_package(root / "sex", "sex", n_folds=1, seed=1, name="test-sex", **tiny)
    make_package(root / "ad", "ad", n_folds=3, seed=10, name="test-ad", **tiny)
    return root
