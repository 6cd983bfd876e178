"""Output identity: every entity that tells one T1w from another is in its output names.

Layouts combine every entity BIDS allows in a T1w name (sub, ses, task, acq, ce, rec, run, echo,
flip, inv, mt, part, chunk); no two T1w may map to one output, and a ``.nii`` / ``.nii.gz`` twin
(which would) is refused before anything is written.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from bids_app.cli.main import main
from bids_app.derivatives import failure_path, log_path, map_path, predictions_path
from bids_app.discovery import discover_units
from bids_app.errors import EXIT_DATA, InputDataError
from bids_app.validation import run_validator

from .conftest import make_bids, write_grid_map, write_t1w
from .test_app_end_to_end import unit_maps, write_bids_derivatives

#: each T1w entity with two values (BIDS schema: anat nonparametric T1w entities)
T1W_ENTITIES = {  # inv, flip, mt: pybids parses them, BIDS allows them for other anat suffixes
    "task": ("rest", "motor"),
    "acq": ("mprage", "spgr"),
    "ce": ("gad", "none"),
    "rec": ("norm", "orig"),
    "run": ("1", "2"),
    "echo": ("1", "2"),
    "flip": ("1", "2"),
    "inv": ("1", "2"),
    "mt": ("on", "off"),
    "part": ("mag", "phase"),
    "chunk": ("1", "2"),
}
ORDER = ["task", "acq", "ce", "rec", "run", "echo", "flip", "inv", "mt", "part", "chunk"]


def _layout_names() -> list[str]:
    """Names that differ in one entity, in two, and in all at once, with and without sessions."""
    names = set()
    for ses in ("", "_ses-1"):
        base = f"sub-01{ses}"
        names.add(base)
        for ent in ORDER:  # one entity, either value
            for v in T1W_ENTITIES[ent]:
                names.add(f"{base}_{ent}-{v}")
        for a, b in itertools.combinations(ORDER, 2):  # pairs: the first value of each
            first, second = sorted((a, b), key=ORDER.index)
            names.add(f"{base}_{first}-{T1W_ENTITIES[first][0]}_{second}-{T1W_ENTITIES[second][1]}")
        for which in (0, 1):  # all of them
            names.add(base + "".join(f"_{e}-{T1W_ENTITIES[e][which]}" for e in ORDER))
    return sorted(names)


def _tiny_bids(root: Path, names: list[str]) -> Path:
    make_bids(root, [], participants=[{"participant_id": "sub-01"}])
    for name in names:
        ents = dict(p.split("-", 1) for p in name.split("_"))
        folder = root / f"sub-{ents['sub']}" / (f"ses-{ents['ses']}" if "ses" in ents else "") / "anat"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}_T1w.nii.gz").write_bytes(b"")  # discovery reads names only
    (root / "participants.tsv").write_text("participant_id\nsub-01\n")
    return root


def test_every_t1w_entity_combination_gets_its_own_outputs(tmp_path):
    names = _layout_names()
    bids = _tiny_bids(tmp_path / "bids", names)
    units = discover_units(bids)
    assert len(units) == len(names) > 100
    out = tmp_path / "out"
    for make in (lambda u: map_path(out, u, "GMD"), lambda u: map_path(out, u, "GMV"),
                 lambda u: predictions_path(out, u), lambda u: failure_path(out, u), lambda u: log_path(out, u)):
        paths = [make(u) for u in units]
        assert len(set(paths)) == len(units)
    for u in units:  # the source entities are kept, in BIDS order (chunk after space), in the output name
        source = u.path.name.replace("_T1w.nii.gz", "")
        name = map_path(out, u, "GMD").name
        if "_chunk-" in source:
            head, chunk = source.rsplit("_chunk-", 1)
            assert name == f"{head}_space-IXI549Space_chunk-{chunk}_label-GM_probseg.nii.gz"
        else:
            assert name == f"{source}_space-IXI549Space_label-GM_probseg.nii.gz"
        assert predictions_path(out, u).name == f"{source}_predictions.tsv"


def test_nii_and_niigz_twins_are_refused_before_anything_is_written(tmp_path, tiny_models, capsys):
    bids = make_bids(tmp_path / "bids", ["sub-01", "sub-02"])
    write_t1w(bids / "sub-01" / "anat" / "sub-01_T1w.nii")  # a twin of sub-01_T1w.nii.gz
    with pytest.raises(InputDataError, match=r"sub-01_T1w\.nii.* and .*sub-01_T1w\.nii"):
        discover_units(bids)
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "--skip-bids-validation", "--models", str(tiny_models)])
    assert code == EXIT_DATA
    err = capsys.readouterr().err
    assert "would overwrite each other's outputs" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.slow
def test_t1w_differing_in_echo_part_chunk_task_get_distinct_valid_outputs(tmp_path, mni_gm_maps, tiny_models):
    """ds004332 / mri_chunk-like layouts: 6 T1w of one participant, 6 sets of outputs, a valid dataset.

    (Every entity the BIDS schema allows for a T1w: task, acq, ce, rec, run, echo, part, chunk.)"""
    units = ["sub-01_echo-1", "sub-01_echo-2", "sub-01_part-mag_chunk-1", "sub-01_part-mag_chunk-2",
             "sub-01_task-rest_acq-mprage", "sub-01_task-rest_acq-mprage_rec-norm_run-1"]
    bids = make_bids(tmp_path / "bids", units)
    maps = tmp_path / "maps"  # maps named as this app names them (chunk after space)
    write_bids_derivatives(maps, mni_gm_maps[0], units=[])
    for i, unit in enumerate(discover_units(bids)):
        d, v = unit_maps(mni_gm_maps[0], i)
        write_grid_map(map_path(maps, unit, "GMD"), d)
        write_grid_map(map_path(maps, unit, "GMV"), v)
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "--skip-bids-validation", "--preproc", "derivatives",
                 "--derivatives", str(maps), "--models", str(tiny_models), "--no-reports"])
    assert code == 0
    tables = sorted(p.name for p in out.rglob("*_predictions.tsv"))
    assert tables == sorted(f"{u}_predictions.tsv" for u in units)
    assert len(list(out.rglob("*_probseg.nii.gz"))) == 2 * len(units)
    report = run_validator(out)
    assert report.errors == [], "\n".join(map(str, report.errors))
