"""`--version` provenance and container detection (the parts that need no container engine)."""

from __future__ import annotations

import json

import pytest

from bids_app import __version__, workflows
from bids_app.cli.main import main
from bids_app.workflows import DEMO_MODELS


def test_version_names_the_app_every_package_and_the_tools(monkeypatch, capsys):
    monkeypatch.setenv("VBM_PREDICT_MODELS", str(DEMO_MODELS))
    monkeypatch.delenv("SPMSTANDALONE_HOME", raising=False)
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"vbm-predict {__version__}"
    for task in ("sex", "ad"):
        card = json.loads((DEMO_MODELS / task / "model.json").read_text())
        assert f"{card['name']} {card['version']} ({task}, {len(card['folds'])} fold(s))" in out
        assert all(f"sha256 {f['sha256']}" in out for f in card["folds"])
    assert "antspyx 0." in out and "SPM standalone not configured" in out


def test_version_reports_spm_and_clinica_when_configured(monkeypatch, capsys, tmp_path):
    spm = tmp_path / "spm25"
    spm.mkdir()
    (spm / "VERSION.vbm-predict").write_text(
        "SPM 25.01.02 standalone (spm_standalone_25.01.02_Linux.zip), MATLAB Runtime R2024b\n"
    )
    venv = tmp_path / "clinica-venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    (venv / "lib" / "python3.11" / "site-packages" / "clinica-0.12.0.dist-info").mkdir(parents=True)
    monkeypatch.setenv("SPMSTANDALONE_HOME", str(spm))
    monkeypatch.setenv("CLINICA_PYTHON", str(venv / "bin" / "python"))
    monkeypatch.delenv("VBM_PREDICT_MODELS", raising=False)
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert "SPM standalone SPM 25.01.02 standalone" in out and "Clinica 0.12.0" in out
    assert "none found" in out


@pytest.mark.parametrize(
    "env,files,kind",
    [
        ({"APPTAINER_NAME": "vbm-predict.sif"}, (), "apptainer"),
        ({"SINGULARITY_NAME": "vbm-predict.sif"}, (), "singularity"),
        ({}, ("/run/.containerenv",), "podman"),
        ({}, ("/.dockerenv",), "docker"),
        ({}, (), None),
    ],
)
def test_container_detection(monkeypatch, env, files, kind):
    for var in ("APPTAINER_NAME", "SINGULARITY_NAME", "APPTAINER_CONTAINER", "SINGULARITY_CONTAINER"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(workflows.os.path, "exists", lambda p: p in files)
    info = workflows._container_info()
    assert (info or {}).get("Type") == kind


def test_auto_backend_needs_an_installed_spm(monkeypatch, tmp_path):
    """The image sets SPMSTANDALONE_HOME in every flavour; `auto` picks clinica only where SPM is installed."""
    from bids_app.preproc import resolve_backend_name

    monkeypatch.setenv("MCR_HOME", str(tmp_path / "mcr"))
    monkeypatch.setenv("SPMSTANDALONE_HOME", str(tmp_path / "spm25"))
    assert resolve_backend_name("auto") == "ants"
    (tmp_path / "spm25").mkdir()
    assert resolve_backend_name("auto") == "clinica"
