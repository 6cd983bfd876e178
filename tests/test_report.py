"""HTML reports built from real output files: content, self-containment, warnings."""

from __future__ import annotations

import base64
import html
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from bids_app import RESEARCH_USE_NOTICE
from bids_app._io import write_json
from bids_app.derivatives import failure_path
from bids_app.errors import NoInputError
from bids_app.group import run_group_level
from bids_app.report import write_group_report, write_participant_report
from bids_app.report.participant_report import NOT_VALIDATED_WARNING, SYNTHETIC_WARNING

from .group_fixtures import make_unit, prediction_row, write_maps, write_unit
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
    write_maps(out, unit, seed=1)
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
    pngs = _pngs(text)
    assert len(pngs) == 1 and pngs[0][:8] == b"\x89PNG\r\n\x1a\n" and len(pngs[0]) > 20_000
    refs = _refs(text)
    assert refs.src and all(s.startswith("data:image/png;base64,") for s in refs.src)  # self-contained
    assert refs.href == []


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
    assert "No predictions file" in text


def test_report_escapes_text_from_files(outputs, tmp_path):
    bids, out, _ = outputs
    unit = make_unit(bids, "10")
    write_json(failure_path(out, unit), {"reason": "<script>alert(1)</script>"})
    text = write_participant_report(out, unit).read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text


def test_group_report(outputs):
    bids, out, _ = outputs
    write_participant_report(out, make_unit(bids, "01"))
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
    assert len(pngs) == 3 and all(p[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    refs = _refs(text)
    assert all(s.startswith("data:") for s in refs.src)
    # links only to participant reports that exist (other tests of this module may have written more)
    assert "reports/sub-01_report.html" in refs.href and "reports/sub-03_report.html" not in refs.href
    assert all((out / h).is_file() for h in refs.href)


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
