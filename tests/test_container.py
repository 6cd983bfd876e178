"""The image, run as a user would: `docker run` on a real engine, read-only, no network, a foreign uid.

The image under test is ``$VBM_PREDICT_TEST_IMAGE`` (default ``vbm-predict:ci``, the ANTs-only,
demo-models flavour that ``.ci/container.sh start`` builds), reached through ``$DOCKER_HOST`` (default:
the socket of the engine ``.ci/container.sh`` starts, when it is there). In CI (``CI=true``) a missing
engine or image is a failure; elsewhere these tests skip and say why.

Every run uses ``--network none --user 4242:4242`` (a uid that the image does not know) with
``HOME`` pointing at a folder that does not exist, and the input mounted read-only; most runs also
use ``--read-only``, the way Apptainer runs an image; all get a private ``--tmpfs /tmp``. The run
that is not read-only is checked with ``docker diff``: nothing may be written outside the mounted
output and work dirs and that ``/tmp``.
The output and work dirs live in one writable mount (``/data``), so the participant level works
with the work dir's default location (a sibling of the output dir before the default moved to
``<output_dir>/.work/``, inside it after). Apptainer itself is not packaged for this machine; these
runs check what it would: a read-only image, no root, no writable HOME.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from bids_app import __version__

ROOT = Path(__file__).resolve().parent.parent
EXPECTED_FILES = Path(__file__).resolve().parent / "data" / "container_outputs.txt"
CI_SOCKET = Path("/tmp/vbm-predict-ci-docker/docker.sock")  # where .ci/container.sh starts its engine
IMAGE = os.environ.get("VBM_PREDICT_TEST_IMAGE", "vbm-predict:ci")
UID_GID = "4242:4242"
WORK_DIRS = (".work",)  # scratch inside output_dir (the default work dir); not part of the outputs

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("container")]  # one engine user, one study


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"container tests cannot run in CI: {reason}")
    pytest.skip(reason)


def _docker_env() -> dict[str, str]:
    env = dict(os.environ)
    if "DOCKER_HOST" not in env and CI_SOCKET.exists():
        env["DOCKER_HOST"] = f"unix://{CI_SOCKET}"
    return env


def _docker_bin() -> str | None:
    for candidate in (os.environ.get("VBM_PREDICT_DOCKER"), "/usr/bin/docker", shutil.which("docker")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def _wait_for_the_image_build() -> None:
    """``.ci/run`` builds the image in the background (``.ci/container.sh start-bg``) while the other
    tests run; its status file appears when the build ends: "ok", or why it failed (a failure here)."""
    status_file = os.environ.get("VBM_PREDICT_IMAGE_STATUS")
    if not status_file:
        return
    status, log = Path(status_file), Path(status_file).with_name("start.log")
    deadline = time.monotonic() + float(os.environ.get("VBM_PREDICT_IMAGE_WAIT_S", "3600"))
    pid_file = status.with_name("start-bg.pid")
    while not status.exists():
        builder_alive = pid_file.is_file() and Path(f"/proc/{pid_file.read_text().strip()}").exists()
        if not builder_alive and not status.exists():
            if not pid_file.is_file():
                return  # no background build in progress: the engine and image are checked below
            pytest.fail(f"the background image build ended without writing {status}; its log:\n{_tail(log)}")
        if time.monotonic() > deadline:
            pytest.fail(f"the image build did not finish in time ({status} missing); its log:\n{_tail(log)}")
        time.sleep(5)
    text = status.read_text().strip()
    if text != "ok":
        pytest.fail(f"the image build {text}; the end of its log ({log}):\n{_tail(log)}")


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else "(no log)"


@pytest.fixture(scope="module")
def docker():
    """A function running the docker client against the test engine (after the image build, if one runs)."""
    _wait_for_the_image_build()
    binary = _docker_bin()
    if binary is None:
        _unavailable("no docker client (apt-get install docker.io; .ci/container.sh start)")
    env = _docker_env()

    def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([binary, *args], capture_output=True, text=True, env=env, timeout=timeout)

    probe = run("version", "--format", "{{.Server.Version}}", timeout=60)
    if probe.returncode != 0:
        _unavailable(
            f"no Docker engine answers ({env.get('DOCKER_HOST', 'default socket')}): {probe.stderr.strip()[:300]}"
        )
    if run("image", "inspect", IMAGE, timeout=60).returncode != 0:
        _unavailable(f"image {IMAGE} not built (.ci/container.sh start builds it)")
    return run


@pytest.fixture(scope="module")
def flavour(docker) -> dict[str, bool]:
    """Which flavour the image is (its labels): SPM installed, published weights converted."""
    res = docker("image", "inspect", "--format", "{{json .Config.Labels}}", IMAGE, timeout=60)
    labels = json.loads(res.stdout)
    prefix = "io.github.vbm-predict.flavour."
    return {"spm": labels.get(prefix + "spm") == "1", "weights": labels.get(prefix + "published-weights") == "1"}


def _app(docker, args, *, mounts, read_only=True, name=None, timeout=1800, remove=True):
    """``docker run`` of the image's entrypoint with the user-like restrictions described above."""
    cmd = ["run", "--network", "none", "--user", UID_GID, "-e", "HOME=/home/nobody", "--tmpfs", "/tmp"]
    if read_only:
        cmd.append("--read-only")
    if remove:
        cmd.append("--rm")
    if name:
        cmd += ["--name", name]
    for host, target, mode in mounts:
        cmd += ["-v", f"{host}:{target}:{mode}"]
    return docker(*cmd, IMAGE, *args, timeout=timeout)


def _writable(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)  # the container's uid 4242 writes here
    return path


def _output_files(out: Path) -> list[str]:
    files = []
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out)
        if rel.parts[0] in WORK_DIRS or p.is_dir():
            continue
        files.append(rel.as_posix())
    return sorted(files)


@pytest.fixture(scope="module")
def study(docker, tmp_path_factory):
    """Three simulated participants: sub-001 through ANTs inside the container, sub-002 and sub-003
    through --derivatives (their ground-truth maps); then the group level."""
    from bids_app.synth import simulate_dataset

    from .conftest import tree_snapshot

    root = tmp_path_factory.mktemp("container")
    bids = simulate_dataset(root / "bids", participants=3, sites=1, seed=7, nprocs=2, t1w_mni=True)
    os.chmod(root, 0o755)
    data = _writable(root / "data")
    out = _writable(data / "out")
    before = tree_snapshot(bids)
    # only the output dir is mounted: the default work dir (<output_dir>/.work) must live inside it
    mounts = [(bids, "/bids", "ro"), (out, "/out", "rw")]
    runs = {}
    runs["ants"] = _app(
        docker,
        [
            "/bids",
            "/out",
            "participant",
            "--participant-label",
            "001",
            "--preproc",
            "ants",
            "--models",
            "demo",
            "--nprocs",
            "2",
        ],
        mounts=mounts,
    )
    name = f"vbm-test-{uuid.uuid4().hex[:8]}"
    runs["derivatives"] = _app(
        docker,
        [
            "/bids",
            "/out",
            "participant",
            "--participant-label",
            "002",
            "003",
            "--derivatives",
            "/bids/derivatives/ground-truth",
            "--models",
            "demo",
        ],
        mounts=mounts,
        read_only=False,
        name=name,
        remove=False,
    )
    diff = docker("diff", name, timeout=60)
    docker("rm", "-f", name, timeout=60)
    runs["group"] = _app(docker, ["/bids", "/out", "group"], mounts=mounts)
    return {"bids": bids, "out": out, "runs": runs, "diff": diff, "before": before, "data": data}


def _show(res: subprocess.CompletedProcess) -> str:
    return f"exit {res.returncode}\nstdout:\n{res.stdout[-3000:]}\nstderr:\n{res.stderr[-3000:]}"


def test_participant_and_group_levels_succeed(study, flavour):
    for step, res in study["runs"].items():
        assert res.returncode == 0, f"{step}: {_show(res)}"
    preds = sorted(study["out"].glob("sub-*/anat/*_predictions.tsv"))
    assert [p.name.split("_")[0] for p in preds] == ["sub-001", "sub-002", "sub-003"]
    sidecar = json.loads(next(study["out"].glob("sub-001/anat/*_label-GM_probseg.json")).read_text())
    assert sidecar["PreprocBackend"] == "ants"
    # the published mask is in the image only when the build found it beside the published weights
    assert sidecar["ModelInputMask"]["Mask"] in (("derived", "published") if flavour["weights"] else ("derived",))
    desc = json.loads((study["out"] / "dataset_description.json").read_text())
    assert desc["GeneratedBy"][0]["Container"]["Type"] == "docker"
    assert (study["out"] / "group_predictions.tsv").is_file()


def test_input_untouched(study):
    from .conftest import tree_snapshot

    assert tree_snapshot(study["bids"]) == study["before"]


def test_output_passes_the_official_validator(study):
    from bids_app.validation import run_validator

    report = run_validator(study["out"])
    assert report.errors == [], "\n".join(map(str, report.errors))


def test_output_file_list_is_the_checked_in_list(study):
    """MRIQC's habit: a new or a missing output fails until tests/data/container_outputs.txt is updated."""
    got = _output_files(study["out"])
    expected = [line for line in EXPECTED_FILES.read_text().splitlines() if line and not line.startswith("#")]
    assert got == expected, (
        f"only in the output: {sorted(set(got) - set(expected))}; only in the list: {sorted(set(expected) - set(got))}"
    )


def test_nothing_written_outside_the_output_and_work_dirs(study):
    assert study["diff"].returncode == 0, study["diff"].stderr
    # the mount points themselves (/bids, /out, /tmp) are made by the engine, not written by the app
    changes = [line for line in study["diff"].stdout.splitlines() if line.split()[-1] not in ("/bids", "/out", "/tmp")]
    assert changes == [], "the container changed its file system:\n" + "\n".join(changes)
    outside = [p.name for p in study["data"].iterdir() if p.name != "out"]
    assert outside == [], f"written next to the output dir: {outside}"


def test_version_lists_app_models_and_tools(docker, flavour):
    res = _app(docker, ["--version"], mounts=[])
    assert res.returncode == 0, _show(res)
    lines = res.stdout.splitlines()
    assert lines[0] == f"vbm-predict {__version__}"
    assert "container: docker" in res.stdout
    if flavour["weights"]:
        assert "brainimagenet-sex 2020.04.27" in res.stdout and "brainimagenet-ad 20" in res.stdout
    else:  # the demo flavour ships the demo packages; their cards' sha256 are listed
        for task in ("sex", "ad"):
            card = json.loads((ROOT / "bids_app" / "data" / "demo_models" / task / "model.json").read_text())
            assert f"{card['name']} {card['version']}" in res.stdout
            for fold in card["folds"]:
                assert f"sha256 {fold['sha256']}" in res.stdout
    assert "antspyx " in res.stdout
    if flavour["spm"]:
        assert "SPM standalone SPM 25" in res.stdout and "Clinica 0.12" in res.stdout
    else:
        assert "SPM standalone not configured" in res.stdout


def test_help(docker):
    res = _app(docker, ["--help"], mounts=[])
    assert res.returncode == 0, _show(res)
    assert res.stdout.startswith("usage: vbm-predict") and "--participant-label" in res.stdout


def test_unknown_analysis_level_exits_17(docker, tmp_path):
    bids = tmp_path / "bids"
    bids.mkdir()
    res = _app(
        docker,
        ["/bids", "/data/out", "session"],
        mounts=[(bids, "/bids", "ro"), (_writable(tmp_path / "d"), "/data", "rw")],
    )
    assert res.returncode == 17, _show(res)
    assert "unknown analysis level 'session'" in res.stderr


def test_broken_t1w_exits_65_and_names_the_file(docker, tmp_path):
    from .conftest import make_bids

    bids = make_bids(tmp_path / "bids", ["sub-01"])
    t1w = bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    t1w.write_bytes(gzip.compress(b"not a NIfTI header" * 20))
    data = _writable(tmp_path / "data")
    res = _app(
        docker,
        ["/bids", "/data/out", "participant", "--skip-bids-validation", "--preproc", "ants", "--models", "demo"],
        mounts=[(bids, "/bids", "ro"), (data, "/data", "rw")],
    )
    assert res.returncode == 65, _show(res)
    failure = json.loads(next((data / "out").glob("sub-01/anat/*_failure.json")).read_text())
    assert "sub-01_T1w.nii.gz" in json.dumps(failure)


def test_the_uid_is_unknown_to_the_image_and_home_is_not_writable(docker):
    res = docker(
        "run",
        "--rm",
        "--network",
        "none",
        "--read-only",
        "--user",
        UID_GID,
        "-e",
        "HOME=/home/nobody",
        "--entrypoint",
        "/bin/sh",
        IMAGE,
        "-c",
        "getent passwd 4242 || echo no-passwd-entry; echo uid=$(id -u);"
        " touch $HOME/x 2>/dev/null && echo home-writable || echo home-read-only",
        timeout=120,
    )
    assert res.returncode == 0, _show(res)
    assert res.stdout.split() == ["no-passwd-entry", "uid=4242", "home-read-only"]


@pytest.mark.ci_may_skip(
    reason="SPM25 and its MATLAB Runtime come from GitHub releases, which .ci/run cannot reach; the CircleCI "
    "container job builds the full image and sets VBM_PREDICT_TEST_SPM=1"
)
def test_clinica_spm_participant(docker, flavour, tmp_path):
    """One T1w through Clinica + SPM25 standalone inside the full image (the CircleCI container job)."""
    if os.environ.get("VBM_PREDICT_TEST_SPM") != "1":
        pytest.skip("the SPM flavour is tested where it can be built (CircleCI container job, VBM_PREDICT_TEST_SPM=1)")
    assert flavour["spm"], f"{IMAGE} was built with WITH_SPM=0"
    from bids_app.synth import simulate_dataset

    bids = simulate_dataset(tmp_path / "bids", participants=1, sites=1, seed=3)
    data = _writable(tmp_path / "data")
    res = _app(
        docker,
        ["/bids", "/data/out", "participant", "--preproc", "clinica", "--models", "demo"],
        mounts=[(bids, "/bids", "ro"), (data, "/data", "rw")],
        timeout=3600,
    )
    assert res.returncode == 0, _show(res)
    sidecar = json.loads(next((data / "out").glob("sub-001/anat/*_label-GM_probseg.json")).read_text())
    assert sidecar["PreprocBackend"] == "clinica"


def test_read_only_without_a_tmpfs_says_what_is_missing(docker):
    res = docker("run", "--rm", "--network", "none", "--read-only", "--user", UID_GID, IMAGE, "--version", timeout=120)
    assert res.returncode == 73, _show(res)
    assert "no writable temporary directory" in res.stderr and "--tmpfs /tmp" in res.stderr
    assert "Traceback" not in res.stderr
