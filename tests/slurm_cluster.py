"""A real single-node SLURM cluster on localhost for the tests: munged, slurmctld and slurmd from
Debian's ``munge`` and ``slurm-wlm`` (installed by ``.ci/slurm.sh``), started in the foreground
with a generated ``slurm.conf`` in a temporary folder, and stopped by PID. No test functions here."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Cluster", "missing_tools", "start_cluster"]

TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo")


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")


def missing_tools() -> list[str]:
    """Programs the cluster needs that are not installed (``.ci/slurm.sh`` installs them)."""
    missing = [t for t in TOOLS if _which(t) is None]
    if os.geteuid() != 0:
        missing.append("root (slurmd runs jobs as root here)")
    return missing


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    root: Path
    conf: Path
    host: str
    env: dict[str, str]
    procs: list[subprocess.Popen] = field(default_factory=list)

    def run(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run([_which(args[0]) or args[0], *args[1:]], capture_output=True, text=True, env=self.env,
                              timeout=60)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr}\n{self.logs()}")
        return proc.stdout

    def jobs(self) -> list[str]:
        """Jobs SLURM still lists (pending, running, completing)."""
        return [line for line in self.run("squeue", "-h", "-o", "%i %T %r").splitlines() if line.strip()]

    def wait_empty(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not self.jobs():
                return
            time.sleep(1.0)
        raise TimeoutError(f"jobs still queued after {timeout:.0f} s: {self.jobs()}\n{self.logs()}")

    def logs(self) -> str:
        out = []
        for name in ("munged.log", "slurmctld.log", "slurmd.log"):
            p = self.root / name
            if p.exists():
                out.append(f"--- {name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-25:]))
        return "\n".join(out)

    def stop(self) -> None:
        try:
            ids = self.run("squeue", "-h", "-o", "%i", check=False).split()
            if ids:
                self.run("scancel", *ids, check=False)
        except (OSError, subprocess.SubprocessError):
            pass
        for proc in reversed(self.procs):  # slurmd, slurmctld, then munged
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(cpus: int = 2) -> Cluster:
    """Start munged, slurmctld and slurmd; return once the node accepts jobs."""
    root = Path(tempfile.mkdtemp(prefix="vbm-slurm-", dir="/tmp"))  # short: the socket path has a length limit
    host = socket.gethostname().split(".")[0]
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    sock = root / "munge.socket"
    mem_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**2 * 0.8)
    for d in ("state", "spool"):
        (root / d).mkdir()
    conf = root / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=vbmtest",
        f"SlurmctldHost={host}(127.0.0.1)",
        "SlurmUser=root",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={sock}",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SwitchType=switch/none",
        "MpiDefault=none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "SlurmdParameters=config_overrides",
        "ReturnToService=2",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=60",
        "MinJobAge=30",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN",
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
        "",
    ]))
    env = dict(os.environ, SLURM_CONF=str(conf))
    cluster = Cluster(root=root, conf=conf, host=host, env=env)
    try:
        log = open(root / "munged.log", "w")  # noqa: SIM115 - closed with the process
        cluster.procs.append(subprocess.Popen(
            [_which("munged"), "-F", "--force", f"--key-file={key}", f"--socket={sock}",
             f"--pid-file={root / 'munged.pid'}", f"--seed-file={root / 'munge.seed'}",
             f"--log-file={root / 'munged.log'}"],
            stdout=log, stderr=subprocess.STDOUT, env=env))
        _wait(lambda: sock.exists(), 20, "munged did not create its socket", cluster)
        cluster.procs.append(subprocess.Popen([_which("slurmctld"), "-D", "-i", "-f", str(conf)], env=env,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait(lambda: "UP" in cluster.run("scontrol", "ping", check=False), 40, "slurmctld did not come up", cluster)
        cluster.procs.append(subprocess.Popen([_which("slurmd"), "-D", "-f", str(conf), "-N", host], env=env,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait(lambda: cluster.run("sinfo", "-h", "-o", "%T", check=False).strip() in ("idle", "mixed", "allocated"),
              60, "the node did not become idle", cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait(condition, timeout: float, message: str, cluster: Cluster) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for proc in cluster.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{message}: {proc.args[0]} exited with {proc.returncode}\n{cluster.logs()}")
        if condition():
            return
        time.sleep(0.5)
    raise RuntimeError(f"{message} within {timeout:.0f} s\n{cluster.logs()}")
