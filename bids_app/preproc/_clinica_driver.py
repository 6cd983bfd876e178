"""Run one Clinica pipeline from a JSON request, inside Clinica's own Python environment.

Why a separate script: Clinica 0.12 pins versions the app does not use (nilearn < 0.14, pandas < 3),
so the container installs it in its own virtual environment and the app calls this file with that
environment's interpreter (``CLINICA_PYTHON``). It imports only the standard library and Clinica,
never ``bids_app``.

    python _clinica_driver.py request.json

The request names the pipeline (``segmentation``, ``register_dartel``, ``dartel2mni``), the BIDS
view, CAPS, subjects/sessions TSV, nipype work dir, parameters, ``n_procs`` and the crash-file
folder, and where to write the result JSON. ``Pipeline.run(bypass_check=True)`` skips Clinica's
disk-space and ``n_procs`` prompts; the session-ful view avoids its "add sessions?" prompt; stdin is
closed by the caller so that any other prompt fails instead of hanging.

``dry_run`` builds the pipeline's input selection without SPM (``ignore_dependencies``) and reports
which subject, session and T1w Clinica would process: the tests use it to prove Clinica accepts the
view, the TSV and the parameter names, without pretending to run SPM.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

__all__ = ["main"]

# Run by path, Python puts this file's folder first on sys.path, where the app's own ``clinica.py``
# module would shadow the real Clinica package: drop it.
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if p and str(Path(p).resolve()) != _HERE]


def _pipeline(req: dict):
    common = dict(
        bids_directory=req["bids_dir"],
        caps_directory=req["caps_dir"],
        tsv_file=req["tsv"],
        base_dir=req["base_dir"],
        parameters=req["parameters"],
    )
    if req.get("dry_run"):
        common["ignore_dependencies"] = ["spm standalone"]
    kind = req["pipeline"]
    if kind == "segmentation":
        from clinica.pipelines.t1_volume_tissue_segmentation.t1_volume_tissue_segmentation_pipeline import (
            T1VolumeTissueSegmentation,
        )

        return T1VolumeTissueSegmentation(name="t1-volume-tissue-segmentation", **common)
    if kind == "register_dartel":
        from clinica.pipelines.t1_volume_register_dartel.t1_volume_register_dartel_pipeline import (
            T1VolumeRegisterDartel,
        )

        return T1VolumeRegisterDartel(name="t1-volume-register-dartel", group_label=req["group_label"], **common)
    if kind == "dartel2mni":
        from clinica.pipelines.t1_volume_dartel2mni.t1_volume_dartel2mni_pipeline import T1VolumeDartel2MNI

        return T1VolumeDartel2MNI(name="t1-volume-dartel2mni", group_label=req["group_label"], **common)
    raise ValueError(f"unknown pipeline {kind!r}")


def main(argv: list[str]) -> int:
    req = json.loads(Path(argv[1]).read_text())
    result: dict = {"ok": False, "pipeline": req.get("pipeline")}
    try:
        import clinica

        result["clinica_version"] = clinica.__version__
        pipeline = _pipeline(req)
        pipeline.config["execution"]["crashdump_dir"] = req["crash_dir"]
        pipeline.config["execution"]["crashfile_format"] = "txt"
        if req.get("dry_run"):
            pipeline.determine_subject_and_session_to_process()
            pipeline._build_input_node()
            result.update(
                subjects=list(pipeline.subjects),
                sessions=list(pipeline.sessions),
                parameters=dict(pipeline.parameters),
            )
        else:
            pipeline.run(plugin="MultiProc", plugin_args={"n_procs": int(req["n_procs"])}, bypass_check=True)
        result["ok"] = True
    except BaseException as exc:  # report everything, including click.Abort from an unexpected prompt
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()[-4000:]
    Path(req["result"]).write_text(json.dumps(result, indent=2, default=str))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
