"""HTML reports built from real output files: content, self-containment, warnings."""

from __future__ import annotations

import base64
import html
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_app import RESEARCH_USE_NOTICE
from bids_app._io import write_json
from bids_app.derivatives import failure_path
from bids_app.errors import NoInputError
from bids_app.group import run_group_level
from bids_app.report import figures, write_group_report, write_participant_report
from bids_app.report.group_report import MAX_LISTED, GroupReportInputs
from bids_app.report.methods import REFERENCES
from bids_app.report.participant_report import (
    NOT_VALIDATED_WARNING,
    SYNTHETIC_WARNING,
    qc_rows,
)

from .group_fixtures import make_unit, prediction_row, write_unit
from .report_fixtures import write_explanation, write_gm_maps, write_warped_t1w
from .test_group import build_cohort


class _Refs(HTMLParser):
    """Collects every URL an HTML page would fetch or link to."""

    def __init__(self):
        super().__init__()
        self.src: list[str] = []
        self.href: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "src" in a:
            self.src.append(a["src"])
        if "href" in a:
            self.href.append(a["href"])


def _refs(text: str) -> _Refs:
    parser = _Refs()
    parser.feed(text)
    return parser


def _pngs(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    bids, out = build_cohort(tmp_path_factory.mktemp("report"))
    unit = make_unit(bids, "09", "1", "2")
    rows = [
        prediction_row(unit, bids, "sex", 0.81, validated=False, qc_pass=False, synthetic=True, model_name="demo-sex",
                       model_version="0.1.0"),
        prediction_row(unit, bids, "ad", 0.33, validated=False, qc_pass=False, synthetic=True, model_name="demo-ad"),
    ]
    rows[1]["model_sha256"] = ";".join(f"{i:064x}" for i in range(5))
    write_unit(out, unit, rows)
    write_gm_maps(out, unit, seed=1, qc_pass=False)
    write_explanation(out, unit, "occlusionAD", peak_mm=(-26, -20, -14), signed=True)
    write_explanation(out, unit, "gradcamAD", peak_mm=(30, -10, 10), regions=False)
    return bids, out, unit


def test_participant_report_content(outputs):
    bids, out, unit = outputs
    path = write_participant_report(out, unit)
    assert path == out / "reports" / "sub-09_ses-1_run-2_report.html"
    text = path.read_text()
    assert RESEARCH_USE_NOTICE in text
    assert html.escape(SYNTHETIC_WARNING) in text  # models trained on synthetic data say so
    assert html.escape(NOT_VALIDATED_WARNING) in text and html.escape("preprocessing differs from the model's") in text
    for needle in ("demo-sex", "0.1.0", "demo-ad", f"{4:064x}", "0.810", "0.330", "gmv_template_correlation",
                   "0.410", "ants", "antspyx 0.5", "IXI549Space", "sub-09_ses-1_run-2"):
        assert needle in text, needle
    # the AD fold spread is shown next to the score: folds .31 .35 .33 .32 .34 -> SD 0.014, range .31-.35
    assert "SD 0.014; 0.310 to 0.350 (5 folds)" in text
    # QC appears once, as one table with threshold and verdict per metric (the failed one first)
    assert text.count('id="qc"') == 1 and text.count("<th>verdict</th>") == 1
    assert re.search(r"gmv_template_correlation</code></td><td class=\"num\">0\.410</td><td>≥ 0\.641</td>"
                     r"<td><span class=\"badge fail\">fail</span>", text)
    assert re.search(r"total_gmv_ml</code></td><td class=\"num\">640\.200</td><td>300 to 1200</td>"
                     r"<td><span class=\"badge pass\">pass</span>", text)
    # without a warped T1w the registration check is drawn over the GM map, and says so
    assert "Shown over: <strong>GM density map</strong>" in text
    # explanation maps: one figure each (sorted by desc), their atlas regions, and the methods cite them
    assert text.index("gradcam, demo-ad 0.1.0") < text.index("occlusion, demo-ad 0.1.0")
    assert "Hippocampus_L" in text and "CubeMM 18" in text
    assert "through the map&#x27;s peak (MNI -26, -20, -14 mm)" in text
    pngs = _pngs(text)
    # scores, registration, GM maps, two explanation maps
    assert len(pngs) == 5 and all(p[:8] == b"\x89PNG\r\n\x1a\n" and len(p) > 5_000 for p in pngs)
    refs = _refs(text)
    assert refs.src and all(s.startswith("data:image/png;base64,") for s in refs.src)  # self-contained
    assert refs.href and all(h.startswith("#") for h in refs.href)  # only links within the page
    assert "<script" not in text and "<link" not in text and "@import" not in text and "url(" not in text
    # methods paragraph: backend parameters, model versions, and the references of what ran
    methods = text[text.index('id="methods"'):text.index('id="provenance"')]
    for needle in ("SyN iterations 70x50x10", "demo-ad version 1.10", "threshold 0.5", "occlusion maps for demo-ad"):
        assert needle in methods, needle
    for key in ("lu2022", "avants2008", "tustison2010", "zeiler2014", "selvaraju2017"):
        assert html.escape(REFERENCES[key]) in methods, key
    assert html.escape(REFERENCES["routier2021"]) not in methods  # Clinica did not run
    # provenance folded away at the end, with the full sidecar
    tail = text[text.index('id="provenance"'):]
    assert "<details>" in tail and "&quot;syn_iterations&quot;" in tail


def test_registration_check_uses_the_warped_t1w_when_there_is_one(outputs):
    bids, out, _ = outputs
    unit = make_unit(bids, "01")
    write_gm_maps(out, unit)
    write_warped_t1w(out, unit)
    text = write_participant_report(out, unit).read_text()
    assert "Shown over: <strong>warped T1w</strong>" in text
    assert 'id="explanations"' not in text  # no maps: the section is simply omitted
    assert "Every QC check passed." in text


def test_qc_rows_from_a_predictions_row_when_the_sidecar_has_no_qc():
    rows = qc_rows(None, {"qc_gmv_template_correlation": 0.5, "qc_flags": "gmv_template_correlation", "qc_pass": False})
    assert [(r["metric"], r["value"], r["verdict"]) for r in rows] == [("gmv_template_correlation", 0.5, False)]
    rows = qc_rows({"Metrics": {"brain_mask_dice": 0.9, "jacobian_min": 0.2}, "Flags": [], "Thresholds": {}})
    assert [(r["metric"], r["threshold"], r["verdict"]) for r in rows] == [
        ("jacobian_min", "> 0", True), ("brain_mask_dice", "reported only", None)]


def test_peak_voxel_and_orientation():
    vol = np.zeros((5, 6, 7), dtype=np.float32)
    vol[1, 2, 3] = -4.0
    vol[3, 3, 3] = 2.0
    assert figures.peak_voxel(vol) == (1, 2, 3)
    flipped = figures.ras_volume(vol, np.diag([-1.5, 1.5, 1.5, 1.0]))
    assert flipped[5 - 1 - 1, 2, 3] == -4.0  # x flipped so left is on the left


def test_participant_report_without_synthetic_models_has_no_synthetic_warning(outputs):
    bids, out, _ = outputs
    text = write_participant_report(out, make_unit(bids, "02", "1")).read_text()
    assert html.escape(SYNTHETIC_WARNING) not in text and html.escape(NOT_VALIDATED_WARNING) not in text
    assert "No grey-matter maps were found" in text and RESEARCH_USE_NOTICE in text
    assert "test-ad" in text and "1.10" in text


def test_participant_report_of_a_failed_t1w_shows_the_reason(outputs):
    bids, out, _ = outputs
    text = write_participant_report(out, make_unit(bids, "08")).read_text()
    assert "could not be processed" in text and "corrupt gzip: sub-08_T1w.nii.gz" in text
    # nothing was written for it, so the report shows the failure and no empty sections
    assert 'id="failure"' in text and 'id="scores"' not in text and 'id="maps"' not in text


def test_report_escapes_text_from_files(outputs, tmp_path):
    bids, out, _ = outputs
    unit = make_unit(bids, "10")
    write_json(failure_path(out, unit), {"reason": "<script>alert(1)</script>"})
    text = write_participant_report(out, unit).read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text


def test_group_report(outputs):
    bids, out, _ = outputs
    write_participant_report(out, make_unit(bids, "01"))
    # the QC-flagged T1w's report is linked only when it exists: write it here, whichever xdist
    # worker ran the other tests of this module
    write_participant_report(out, make_unit(bids, "09", "1", "2"))
    summary = run_group_level(bids, out)
    text = summary.report_path.read_text()
    assert summary.report_path == out / "group_report.html"
    assert RESEARCH_USE_NOTICE in text
    assert "demo-sex" in text and html.escape(SYNTHETIC_WARNING) in text
    assert "corrupt gzip: sub-08_T1w.nii.gz" in text  # failures listed
    # AD 'all' row of the hand-computed cohort (sub-09 is unlabelled and adds nothing): ACC 0.600, AUC 0.833
    assert re.search(r"<td>0\.600 \[0\.\d{3}, \d\.\d{3}\]</td>", text)
    assert re.search(r"<td>0\.833 \[0\.\d{3}, 1\.000\]</td>", text)
    assert "-0.90 (p=" in text  # Spearman r with MMSE
    pngs = _pngs(text)
    # 3 group figures, 2 mean explanation maps (occlusionAD, gradcamAD), the QC distribution
    assert len(pngs) == 6 and all(p[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    refs = _refs(text)
    assert all(s.startswith("data:") for s in refs.src)
    # no per-participant rows: only the QC-flagged T1w (sub-09) and the failed one (sub-08) are listed
    links = [h for h in refs.href if not h.startswith("#")]
    assert "reports/sub-09_ses-1_run-2_report.html" in links and "sub-08/anat/sub-08_failure.json" in links
    assert "reports/sub-01_report.html" not in links
    assert all((out / h).is_file() for h in links)
    assert "1 T1w image failed QC, worst first." in text
    methods = text[text.index('id="methods"'):text.index('id="provenance"')]
    n_failed = len(summary.failures)  # sub-08, and sub-10 when the escaping test ran first
    expected = f"10 T1-weighted images of 8 participants were processed with vbm-predict 0.1.0 ({n_failed} further"
    assert expected in methods
    assert "1,000 random subsamples of 50%" in methods and html.escape(REFERENCES["lu2022"]) in methods
    # the ANTs parameters come from a map sidecar of an image made with it (sub-09)
    assert "SyN iterations 70x50x10" in methods and html.escape(REFERENCES["routier2021"]) in methods


def test_group_report_stays_small_at_scale(tmp_path):
    """20,000 participants: summaries only, lists capped at MAX_LISTED with complete counts."""
    n = 20_000
    rng = np.random.default_rng(1)
    ids = [f"sub-{i:05d}" for i in range(n)]
    corr = rng.uniform(0.55, 0.95, n)
    qc_pass = corr >= 0.6414
    base = {
        "participant_id": ids, "session_id": None, "run_id": None,
        "source_file": [f"{i}/anat/{i}_T1w.nii.gz" for i in ids],
        "model_version": "1.0", "model_trained_on_synthetic": False, "n_folds": 1, "fold_scores": None,
        "fold_score_sd": 0.0, "qc_pass": qc_pass,
        "qc_flags": np.where(qc_pass, None, "gmv_template_correlation"), "qc_gmv_template_correlation": corr,
        "preproc_backend": "clinica", "preproc_backend_version": "clinica 0.12.0; SPM25 25.01.02",
        "validated_input": qc_pass, "warnings": np.where(qc_pass, None, "QC failed: gmv_template_correlation"),
        "notice": RESEARCH_USE_NOTICE, "threshold": 0.5,
    }
    frames = []
    for task, name, labels in (("sex", "m-sex", ("male", "female")), ("ad", "m-ad", ("AD", "CN"))):
        score = rng.uniform(0, 1, n)
        frames.append(pd.DataFrame(dict(base, target=task, model_name=name, model_sha256="ef" * 32, score=score,
                                        predicted_label=np.where(score >= 0.5, *labels))))
    predictions = pd.concat(frames, ignore_index=True)
    inputs = GroupReportInputs(predictions=predictions)
    text = write_group_report(tmp_path, inputs).read_text()
    n_flagged = int((~qc_pass).sum())
    assert n_flagged > MAX_LISTED
    assert f"{n_flagged:,} T1w images failed QC; the {MAX_LISTED} with the lowest GMV-template correlation" in text
    assert text.count("<tr>") < 3 * MAX_LISTED  # no per-participant table
    assert f"<td>{n:,}</td>" in text  # T1w per model in the score summary
    assert len(text) < 1_500_000
    # the worst image is listed first
    worst = ids[int(np.argmin(corr))]
    qc = text[text.index("Images that failed QC"):]
    assert qc.index(worst) < qc.index(ids[int(np.argsort(corr)[1])])


def test_group_report_needs_the_group_table(tmp_path):
    with pytest.raises(NoInputError, match=r"group_predictions\.tsv"):
        write_group_report(tmp_path)


def test_figures_leave_matplotlib_global_state_alone(tmp_path):
    """Making figures must not import pyplot or switch the global backend (no import side effects)."""
    code = (
        "import sys, matplotlib\n"
        "raw = lambda: dict.__getitem__(matplotlib.rcParams, 'backend')  # get_backend() would resolve it\n"
        "before = raw()\n"
        "import numpy as np\n"
        "from bids_app.report import figures\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "fig = figures.roc_figure([('ad', 'm', np.array([0, 1, 1, 0]), np.array([.1, .8, .6, .4]))])\n"
        "png = figures.figure_png(fig)\n"
        "assert png[:4] == b'\\x89PNG'\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "assert raw() == before\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert proc.returncode == 0, proc.stderr
