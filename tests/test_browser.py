"""The reports rendered in a real browser: Debian's headless ``chromium``, driven over the DevTools pipe.

Each report must load with no console error, no uncaught exception, no request for anything but
itself and its inlined ``data:`` images, every image decoded, every expected figure present, and
nothing wider than the window. A full-page screenshot of each is written to
``test-results/screenshots/`` (kept by CI as an artefact). With ``CI=true`` a missing chromium is a
failure (``.ci/chromium.sh`` installs it); elsewhere the tests skip and say why.
"""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import pytest

from bids_app.group import run_group_level
from bids_app.report import write_participant_report

from .browser import Chromium, find_chromium
from .group_fixtures import make_unit, prediction_row, write_unit
from .report_fixtures import write_explanation, write_gm_maps, write_warped_t1w
from .test_group import build_cohort

SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-results" / "screenshots"
WIDTH = 1200


@pytest.fixture(scope="module")
def browser():
    exe = find_chromium()
    if exe is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is not installed; CI must install it (.ci/chromium.sh)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    with Chromium(exe) as b:
        yield b


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    bids, out = build_cohort(tmp_path_factory.mktemp("browser"))
    unit = make_unit(bids, "09", "1", "2")
    write_unit(out, unit, [
        prediction_row(unit, bids, "sex", 0.81, validated=False, qc_pass=False, synthetic=True, model_name="demo-sex"),
        prediction_row(unit, bids, "ad", 0.33, validated=False, qc_pass=False, synthetic=True, model_name="demo-ad"),
    ])
    write_gm_maps(out, unit, seed=1, qc_pass=False)
    write_warped_t1w(out, unit)
    write_explanation(out, unit, "occlusionAD", peak_mm=(-26, -20, -14), signed=True)
    write_explanation(out, unit, "gradcamAD", peak_mm=(30, -10, 10), regions=False)
    for sub in ("01", "03"):  # an AD and an MCI participant with maps, for the group's mean maps
        u = make_unit(bids, sub)
        write_explanation(out, u, "occlusionAD", peak_mm=(-20, -25, -10), signed=True)
    participant = write_participant_report(out, unit)
    group = run_group_level(bids, out).report_path
    return participant, group


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "the screenshot is not a PNG"
    return struct.unpack(">II", png[16:24])


def _check(result, expected_figures: set[str], expected_sections: list[str], name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS / f"{name}.png").write_bytes(result.screenshot)
    assert result.errors == [], result.errors
    assert result.external_requests == [], result.external_requests
    assert result.broken_images == [], result.broken_images
    facts = result.facts
    images = facts["images"]
    assert images and all(i["src"].startswith("data:image/png;base64,") for i in images)
    assert all(i["width"] >= 300 and i["height"] >= 100 for i in images), images
    alts = {f["alt"] for f in facts["figures"]}
    assert expected_figures <= alts, f"missing figures: {expected_figures - alts}"
    assert all(f["caption"].strip() for f in facts["figures"]), "a figure has no caption"
    assert facts["sections"] == expected_sections
    assert facts["scripts"] == 0 and facts["stylesheets"] == [None]  # one inline <style>, nothing linked
    assert facts["details"] and not any(facts["details"]), "provenance should be folded"
    assert facts["width"] <= facts["viewport"], "something is wider than the window (a table runs off the page)"
    width, height = _png_size(result.screenshot)
    assert width == WIDTH and height >= min(facts["height"], 16000) - 1


def test_participant_report_in_chromium(browser, reports):
    participant, _ = reports
    result = browser.render(participant, width=WIDTH)
    _check(
        result,
        {"scores against thresholds", "registration check over the warped T1w", "GM maps over the template",
         "explanation map occlusionAD", "explanation map gradcamAD"},
        ["scores", "registration", "maps", "qc", "explanations", "methods", "provenance"],
        "participant_report",
    )
    text = result.facts["text"]
    assert "Research use only" in text and "Shown over: warped T1w" in text
    assert "References" in text and "J Big Data. 2022;9:101" in text


def test_group_report_in_chromium(browser, reports):
    _, group = reports
    result = browser.render(group, width=WIDTH)
    _check(
        result,
        {"group figure scores", "group figure roc", "group figure mmse", "mean explanation map occlusionAD",
         "mean explanation map gradcamAD", "QC distribution"},
        ["overview", "evaluation", "figures", "scores", "explanations", "qc", "methods", "provenance"],
        "group_report",
    )
    text = result.facts["text"]
    assert "Images that failed QC" in text and "Images that failed processing" in text


def test_the_browser_checks_catch_a_bad_page(browser, tmp_path):
    """The checks above can fail: a page with each fault is caught on each count."""
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>bad</title></head><body>"
        "<figure><img alt='external' src='http://127.0.0.1:9/x.png'><figcaption>x</figcaption></figure>"
        "<img alt='broken' src='data:image/png;base64,AAAA'>"
        "<script>console.error('boom'); undefined_function();</script>"
        f"<table><tr><td style='white-space:nowrap'>{'wide ' * 400}</td></tr></table>"
        "</body></html>",
        encoding="utf-8",
    )
    result = browser.render(page, width=WIDTH)
    assert any("boom" in e for e in result.errors)
    assert any("undefined_function" in e for e in result.errors)
    assert "http://127.0.0.1:9/x.png" in result.external_requests
    assert {i["alt"] for i in result.broken_images} == {"external", "broken"}
    assert result.facts["width"] > result.facts["viewport"]
    assert result.facts["scripts"] == 1
    shutil.rmtree(tmp_path, ignore_errors=True)
