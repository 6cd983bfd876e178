"""CI's xdist options (.ci/run): a module's tests that share a module-scoped fixture run on one worker, so
the fixture is computed once per run (CI's wall time depends on it: README, "CI time"). With pytest 9.2
and xdist 3.8, --dist loadgroup does not do this (xdist_group marks are lost); --dist loadfile does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_SAMPLE = '''
import os
from pathlib import Path

import pytest

LOG = Path(os.environ["SCHEDULING_LOG"])


@pytest.fixture(scope="module")
def shared():
    worker = os.environ["PYTEST_XDIST_WORKER"]
    (LOG / f"fixture-{worker}").write_text("computed")
    return worker


@pytest.mark.parametrize("i", range(8))
def test_uses_the_shared_fixture(shared, i):
    (LOG / f"shared-{i}-{os.environ['PYTEST_XDIST_WORKER']}").write_text("")


@pytest.mark.parametrize("i", range(8))
def test_free(i):
    (LOG / f"free-{i}-{os.environ['PYTEST_XDIST_WORKER']}").write_text("")
'''


def _ci_xdist_options() -> list[str]:
    line = next(ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if "-m pytest" in ln)
    words = line.split()
    return words[words.index("-n"): words.index("--durations=25")]


def test_tests_sharing_a_module_fixture_run_on_one_worker(tmp_path: Path) -> None:
    (tmp_path / "test_sample.py").write_text(_SAMPLE)
    log = tmp_path / "log"
    log.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    env.update(PYTHONPATH=str(ROOT), SCHEDULING_LOG=str(log))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-q",
         *_ci_xdist_options(), "--rootdir", str(tmp_path), str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "16 passed" in proc.stdout, proc.stdout
    names = sorted(p.name for p in log.iterdir())
    assert len([n for n in names if n.startswith("fixture-")]) == 1, names
    workers = {n.rsplit("-", 1)[1] for n in names if n.startswith("shared-")}
    assert len([n for n in names if n.startswith("shared-")]) == 8 and len(workers) == 1, names
