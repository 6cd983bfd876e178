"""The CI rule of tests/conftest.py: with CI=true a skipped test fails (unless marked ``ci_may_skip``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_SAMPLE = '''
import pytest

pytest.importorskip("a_module_that_does_not_exist")
'''

_SAMPLE_TEST = '''
import pytest


def test_needs_a_tool():
    pytest.skip("the tool is not installed")


@pytest.mark.ci_may_skip(reason="needs a GPU")
def test_needs_a_gpu():
    pytest.skip("no GPU here")


@pytest.mark.xfail(reason="known", strict=True)
def test_known_failure():
    assert False
'''


def _pytest(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-q", "-rA",
         "--continue-on-collection-errors",
         "--rootdir", str(tmp_path), str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
    )


@pytest.fixture
def samples(tmp_path: Path) -> Path:
    (tmp_path / "test_sample_module.py").write_text(_SAMPLE)
    (tmp_path / "test_sample.py").write_text(_SAMPLE_TEST)
    return tmp_path


def test_skips_fail_in_ci_but_xfail_stays(samples):
    proc = _pytest(samples, "true")
    assert proc.returncode == 1, proc.stdout
    assert "counts as a failure" in proc.stdout and "the tool is not installed" in proc.stdout
    assert "a_module_that_does_not_exist" in proc.stdout
    assert "1 xfailed" in proc.stdout and "SKIPPED" in proc.stdout and "no GPU here" in proc.stdout
    assert "2 errors" not in proc.stdout


def test_skips_stay_skips_outside_ci(samples):
    proc = _pytest(samples, None)
    assert proc.returncode == 0, proc.stdout
    assert "3 skipped" in proc.stdout and "1 xfailed" in proc.stdout
