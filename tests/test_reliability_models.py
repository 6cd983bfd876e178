"""Model packages and the device: a card pinned with its weights, copies applied once, an empty
``--models`` a missing input, a bad ``--device`` a usage error before anything runs."""

from __future__ import annotations

import json
import shutil

import pytest

from bids_app.cli.main import main
from bids_app.errors import EXIT_NO_INPUT, EXIT_USAGE, ModelPackageError, UsageError
from bids_app.models import load_package
from bids_app.models.device import resolve_device
from bids_app.models.package import unique_packages

from .conftest import make_bids
from .models_fixtures import make_package


def make_tiny_package(out, task, *, seed=0, synthetic=True):
    """A one-fold, narrow package named ``test-<task>`` (real weights, the app's own writer)."""
    return make_package(out, task, n_folds=1, seed=seed, name=f"test-{task}", synthetic=synthetic,
                        width=0.0625, blocks=[1, 1, 1])


def test_edited_card_is_refused(tmp_path):
    pkg = make_tiny_package(tmp_path / "sex", "sex", synthetic=True)
    load_package(pkg)
    card = json.loads((pkg / "model.json").read_text())
    card["training"]["synthetic"] = False  # the edit the issue names: a demo model passed off as real
    (pkg / "model.json").write_text(json.dumps(card, indent=2))
    with pytest.raises(ModelPackageError, match="the card was edited after the weights were written"):
        load_package(pkg)


def test_card_not_pinned_by_its_weights_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    from bids_app._io import sha256_file

    pkg = make_tiny_package(tmp_path / "sex", "sex")
    weights = pkg / "fold0.safetensors"
    save_file(load_file(weights), weights, metadata={"task": "sex"})  # an old-style file: no card_sha256
    card = json.loads((pkg / "model.json").read_text())
    card["folds"][0]["sha256"] = sha256_file(weights)
    (pkg / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelPackageError, match="does not pin its model card"):
        load_package(pkg)


def test_the_shipped_demo_models_are_pinned():
    from bids_app.workflows import DEMO_MODELS

    for task in ("sex", "ad"):
        assert load_package(DEMO_MODELS / task).trained_on_synthetic is True


def test_a_package_copied_into_a_subfolder_is_applied_once(tmp_path):
    from bids_app.workflows import _load_packages

    models = tmp_path / "models"
    make_tiny_package(models / "sex", "sex")
    shutil.copytree(models / "sex", models / "backup" / "sex")
    packages = _load_packages(models, "cpu")
    assert [p.name for p in packages] == ["test-sex"]
    other = make_tiny_package(tmp_path / "other", "sex", seed=5)  # same name, other weights
    with pytest.raises(ModelPackageError, match="two different model packages are named 'test-sex'"):
        unique_packages([*packages, load_package(other)])


def test_empty_models_dir_is_a_missing_input(tmp_path, capsys):
    bids = make_bids(tmp_path / "bids", ["sub-01"])
    (tmp_path / "models").mkdir()
    code = main([str(bids), str(tmp_path / "out"), "participant", "--skip-bids-validation",
                 "--models", str(tmp_path / "models")])
    assert code == EXIT_NO_INPUT
    assert "no model package" in capsys.readouterr().err


def test_device_resolver():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(UsageError, match="--device must be one of auto, cpu, cuda"):
        resolve_device("gpu")
    with pytest.raises(UsageError, match="cuda or cuda:N"):
        resolve_device("cuda:x")


def test_unusable_device_stops_the_run_before_anything(tmp_path, capsys, tiny_models):
    import torch

    bids = make_bids(tmp_path / "bids", ["sub-01"])
    out = tmp_path / "out"
    bad = "cuda:99" if torch.cuda.is_available() else "cuda"
    code = main([str(bids), str(out), "participant", "--skip-bids-validation", "--preproc", "ants",
                 "--models", str(tiny_models), "--device", bad])
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"--device '{bad}'" in err and "Traceback" not in err
    assert not out.exists()  # checked before preprocessing, before any output


def test_models_score_with_an_unusable_device_is_a_usage_error(tmp_path, capsys, tiny_models):
    import numpy as np
    import torch

    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 2, 96, 120, 86), np.float32))
    bad = "cuda:99" if torch.cuda.is_available() else "cuda"
    code = main(["models", "score", str(tiny_models / "sex"), "--input", str(x), "--device", bad])
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "CUDA" in err or "cuda" in err
    assert "Traceback" not in err
