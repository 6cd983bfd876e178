"""The bundled demo models and the ``demo`` command's parts (the full run, about 10 minutes, is not run here)."""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_app.cli import demo_cmd
from bids_app.grid import make_model_input
from bids_app.models import find_packages, load_package, predict
from bids_app.synth import simulate_dataset, truth_paths


def test_demo_models_are_bundled_small_and_honest() -> None:
    root = demo_cmd.demo_models_dir()
    assert [p.name for p in find_packages(root)] == ["ad", "sex"]
    total = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    assert total < 5 * 1024**2
    for task in ("sex", "ad"):
        pkg = load_package(root / task)
        assert pkg.task == task
        assert pkg.trained_on_synthetic
        assert pkg.card["training"]["data"].startswith("trained on synthetic data; not for any real use")
        assert pkg.validated_preprocessing == ("synthetic-ground-truth",)
        assert pkg.n_folds >= 2
        pooled = {m["name"]: m for m in pkg.card["metrics"]}
        assert "leave-sites-out" in pooled["pooled_accuracy"]["source"]
        assert 0.0 <= pooled["pooled_accuracy"]["value"] <= 1.0
        assert "demo" in pkg.name


def test_demo_models_score_a_synthetic_participant(tmp_path: Path) -> None:
    ds = simulate_dataset(tmp_path / "ds", participants=1, sites=1, seed=123, maps_only=True)
    p = truth_paths(ds, "sub-001")
    x = make_model_input(np.asarray(nib.load(str(p["gmd"])).dataobj, np.float32),
                         np.asarray(nib.load(str(p["gmv"])).dataobj, np.float32))
    for task in ("sex", "ad"):
        scores = predict(load_package(demo_cmd.demo_models_dir() / task), x, device="cpu")
        assert np.all(np.isfinite(scores.fold_scores)) and np.all((scores.mean > 0) & (scores.mean < 1))


def test_demo_parser_defaults() -> None:
    parser = argparse.ArgumentParser()
    demo_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["demo", "out"])
    assert (args.n_participants, args.nprocs, args.seed) == (3, 2, 0)
    assert args.func is demo_cmd.run
