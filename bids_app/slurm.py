"""SLURM job arrays for the participant level, and the group level after them.

:func:`write_slurm_job` turns one BIDS-App call into files SLURM runs (nothing is scheduled here:
SLURM does the scheduling, retries and accounting):

* ``tasks.tsv``: one line per array task, the selection arguments of that task (tab-separated):
  ``--participant-label 01`` (one participant per task), or ``--participant-label 01 --t1w
  sub-01/anat/sub-01_T1w.nii.gz`` (``per_t1w``; also when only some T1w of a participant lack outputs);
* ``array.sbatch``: the job array; each task reads its line and runs the participant level for it,
  with ``--nprocs`` = the CPUs SLURM gave it and ``--mem-gb`` = its memory request, in the
  installed environment or, with ``image``, in ``apptainer run --cleanenv`` with the input bound
  read-only and the output, work and model folders bound at the same paths; one log per task;
* ``group.sbatch``: the group level, submitted with ``--dependency=afterany:<array>`` so it runs
  once every task has ended, whatever their outcome (failed T1w leave failure records it reports);
* ``submit.sh``: the two ``sbatch`` calls, for users who look before they submit.

Only T1w without a predictions table get a task, so running the same command again after some
tasks failed submits exactly what is missing. The input is validated once here, not in every task.

Resource requests come from measured figures (:data:`TASK_FIGURES`; README, "Sizing"), scaled by
the largest number of T1w one task holds, with a safety factor; each can be overridden.
"""

from __future__ import annotations

import json
import math
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ._io import write_text
from .errors import BackendUnavailableError, UsageError
from .types import T1wUnit

__all__ = ["TaskFigures", "TASK_FIGURES", "SlurmOptions", "SlurmJob", "plan_tasks", "write_slurm_job", "submit"]


@dataclass(frozen=True)
class TaskFigures:
    """Measured cost of one T1w for a backend (README, "Sizing"), and what a task asks SLURM for."""

    cpus: int
    mem_gb: float
    minutes_per_t1w: float
    startup_minutes: float = 5.0  # imports, pybids indexing, loading the models

    def time_limit(self, t1w_per_task: int, safety: float = 3.0) -> int:
        """Minutes to request for a task of ``t1w_per_task`` T1w."""
        return int(math.ceil(self.startup_minutes + safety * self.minutes_per_t1w * max(1, t1w_per_task)))


#: ants: 1.6-2.2 min per 1 mm T1w on 2 threads (bench/preproc.py, Xeon), 2.0-2.1 min with the
#: current defaults (AMD EPYC, 2026-12-03), 2.3-3.2 min in a slow phase, peak 2.45-2.56 GB;
#: full-size model inference 25 s, 2.24 GB (bench/inference.py). clinica: Clinica's
#: own estimate of ~10 min per image for SPM segmentation, one core (SPM standalone is single
#: threaded); its memory is not measured here. derivatives: inference only.
TASK_FIGURES: dict[str, TaskFigures] = {
    "ants": TaskFigures(cpus=2, mem_gb=4.0, minutes_per_t1w=3.5),
    "clinica": TaskFigures(cpus=1, mem_gb=6.0, minutes_per_t1w=12.0),
    "derivatives": TaskFigures(cpus=2, mem_gb=3.5, minutes_per_t1w=1.0),
}
#: the group level: bench/group_scale.py (README, "Sizing")
GROUP_CPUS = 2
GROUP_MEM_GB = 6.0
GROUP_MINUTES = 30


@dataclass(frozen=True)
class SlurmOptions:
    """What the SLURM command adds to the BIDS-App options."""

    per_t1w: bool = False
    image: Path | None = None
    partition: str | None = None
    account: str | None = None
    array_limit: int | None = None
    cpus_per_task: int | None = None
    mem_gb_per_task: float | None = None
    minutes_per_task: int | None = None
    job_name: str = "vbm-predict"


@dataclass(frozen=True)
class SlurmJob:
    """The files written for one submission, and what they hold."""

    folder: Path
    array_script: Path | None
    group_script: Path
    submit_script: Path
    tasks: tuple[tuple[str, ...], ...]
    log_dir: Path
    n_t1w: int
    n_done: int
    cpus: int
    mem_gb: float
    minutes: int
    job_ids: dict[str, str] = field(default_factory=dict)

    def text(self) -> str:
        lines = [f"{self.n_t1w} T1w selected, {self.n_done} already have outputs: "
                 f"{len(self.tasks)} array task(s) to run"]
        if self.array_script:
            lines.append(f"  each task: {self.cpus} CPU(s), {self.mem_gb:g} GB, {self.minutes} min")
        lines.append(f"  scripts: {self.folder} (submit with: bash {self.submit_script})")
        lines.append(f"  logs: {self.log_dir}")
        if self.job_ids:
            lines.append("  submitted: " + ", ".join(f"{k} job {v}" for k, v in self.job_ids.items()))
        return "\n".join(lines)


def plan_tasks(
    units: Sequence[T1wUnit], output_dir: Path, bids_dir: Path, *, per_t1w: bool
) -> tuple[list[tuple[str, ...]], int]:
    """Selection arguments of every task, for the T1w without a predictions table; and how many
    T1w already have one."""
    from .derivatives import predictions_path

    todo: dict[str, list[T1wUnit]] = {}
    n_all: dict[str, int] = {}
    done = 0
    for unit in units:
        n_all[unit.subject] = n_all.get(unit.subject, 0) + 1
        if predictions_path(output_dir, unit).exists():
            done += 1
            continue
        todo.setdefault(unit.subject, []).append(unit)
    tasks: list[tuple[str, ...]] = []
    for subject, missing in todo.items():
        rel = [str(Path(u.path).resolve().relative_to(bids_dir)) for u in missing]
        if per_t1w:
            tasks.extend(("--participant-label", subject, "--t1w", r) for r in rel)
        elif len(missing) == n_all[subject]:
            tasks.append(("--participant-label", subject))
        else:  # rerun: only the T1w of this participant that have no outputs yet
            tasks.append(("--participant-label", subject, *[a for r in rel for a in ("--t1w", r)]))
    return tasks, done


def _hhmmss(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def _runner(image: Path | None, binds: Sequence[tuple[Path, str]]) -> list[str]:
    if image is None:
        return [sys.executable, "-m", "bids_app"]
    args = ["apptainer", "run", "--cleanenv"]
    for path, mode in binds:
        args += ["-B", f"{path}:{path}" + (":ro" if mode == "ro" else "")]
    return [*args, str(image)]


def _header(name: str, log: Path, cpus: int, mem_gb: float, minutes: int, opts: SlurmOptions) -> list[str]:
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={name}",
        f"#SBATCH --cpus-per-task={cpus}",
        f"#SBATCH --mem={int(math.ceil(mem_gb * 1024))}M",
        f"#SBATCH --time={_hhmmss(minutes)}",
        f"#SBATCH --output={log}",
        "#SBATCH --ntasks=1",
    ]
    if opts.partition:
        lines.append(f"#SBATCH --partition={opts.partition}")
    if opts.account:
        lines.append(f"#SBATCH --account={opts.account}")
    return lines


def write_slurm_job(
    bids_dir: Path,
    output_dir: Path,
    units: Sequence[T1wUnit],
    app_args: Sequence[str],
    *,
    backend: str,
    options: SlurmOptions = SlurmOptions(),
    work_dir: Path,
    bind: Sequence[tuple[Path, str]] = (),
    stamp: str,
) -> SlurmJob:
    """Write ``tasks.tsv``, ``array.sbatch``, ``group.sbatch`` and ``submit.sh`` under
    ``output_dir/code/slurm/<stamp>/`` (``code/`` is ignored by the BIDS validator) and create the
    log folder ``output_dir/logs/slurm/<stamp>/`` (SLURM does not create it).

    ``app_args`` are the BIDS-App options every task gets (no participant selection, no
    ``--nprocs``: both are set per task); ``bind`` lists further folders the tasks read (models,
    derivatives, templates) with ``ro`` or ``rw``.
    """
    bids_dir, output_dir, work_dir = Path(bids_dir), Path(output_dir), Path(work_dir)
    figures = TASK_FIGURES[backend]
    tasks, done = plan_tasks(units, output_dir, bids_dir, per_t1w=options.per_t1w)
    per_task = max((sum(a == "--t1w" for a in t) or _count(units, t[1]) for t in tasks), default=1)
    cpus = options.cpus_per_task or figures.cpus
    mem_gb = options.mem_gb_per_task or figures.mem_gb
    minutes = options.minutes_per_task or figures.time_limit(per_task)
    folder = output_dir / "code" / "slurm" / stamp
    log_dir = output_dir / "logs" / "slurm" / stamp
    folder.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    binds = [(bids_dir, "ro"), (output_dir, "rw"), *([] if work_dir.is_relative_to(output_dir) else [(work_dir, "rw")]),
             *bind]
    runner = _runner(options.image, binds)
    q = shlex.quote
    common = [*map(str, app_args), "-w", str(work_dir), "--skip-bids-validation"]

    array_script = None
    if tasks:
        tasks_file = folder / "tasks.tsv"
        write_text(tasks_file, "".join("\t".join(t) + "\n" for t in tasks))
        array = _header(options.job_name, log_dir / "task-%a_job-%A.log", cpus, mem_gb, minutes, options)
        limit = f"%{options.array_limit}" if options.array_limit else ""
        array.insert(2, f"#SBATCH --array=1-{len(tasks)}{limit}")
        array += [
            "set -euo pipefail",
            f"line=$(sed -n \"${{SLURM_ARRAY_TASK_ID}}p\" {q(str(tasks_file))})",
            "IFS=$'\\t' read -r -a selection <<< \"$line\"",
            'echo "vbm-predict task ${SLURM_ARRAY_TASK_ID} on $(hostname): ${selection[*]}"',
            " ".join(map(q, [*runner, str(bids_dir), str(output_dir), "participant"]))
            + ' "${selection[@]}" '
            + " ".join(map(q, common))
            + f" --nprocs \"${{SLURM_CPUS_PER_TASK:-{cpus}}}\" --mem-gb {mem_gb:g}",
        ]
        array_script = folder / "array.sbatch"
        write_text(array_script, "\n".join(array) + "\n")

    group = _header(f"{options.job_name}-group", log_dir / "group_job-%j.log", GROUP_CPUS, GROUP_MEM_GB, GROUP_MINUTES,
                    options)
    group += [
        "set -euo pipefail",
        " ".join(map(q, [*runner, str(bids_dir), str(output_dir), "group"])),
    ]
    group_script = folder / "group.sbatch"
    write_text(group_script, "\n".join(group) + "\n")

    submit_lines = ["#!/bin/bash", "# Submit the participant-level array, then the group level after it (afterany).",
                    "set -euo pipefail", 'cd "$(dirname "$0")"']
    if array_script:
        submit_lines += [
            "array=$(sbatch --parsable array.sbatch)",
            "array=${array%%;*}",
            "group=$(sbatch --parsable --dependency=afterany:${array} group.sbatch)",
            'echo "participant array job ${array}; group job ${group%%;*}"',
        ]
    else:
        submit_lines += ["group=$(sbatch --parsable group.sbatch)", 'echo "group job ${group%%;*}"']
    submit_script = folder / "submit.sh"
    write_text(submit_script, "\n".join(submit_lines) + "\n")
    submit_script.chmod(0o755)
    return SlurmJob(folder=folder, array_script=array_script, group_script=group_script, submit_script=submit_script,
                    tasks=tuple(tasks), log_dir=log_dir, n_t1w=len(units), n_done=done, cpus=cpus, mem_gb=mem_gb,
                    minutes=minutes)


def _count(units: Sequence[T1wUnit], subject: str) -> int:
    return sum(u.subject == subject for u in units)


def submit(job: SlurmJob) -> SlurmJob:
    """Submit the array (when there are tasks) and the group job after it with ``sbatch``."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise BackendUnavailableError(f"--submit needs SLURM's sbatch on PATH; the scripts are written in {job.folder}")

    def run(*args: str) -> str:
        proc = subprocess.run([sbatch, "--parsable", *args], capture_output=True, text=True, cwd=job.folder)
        if proc.returncode != 0:
            raise UsageError(f"sbatch {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout.strip().split(";")[0]

    ids: dict[str, str] = {}
    if job.array_script:
        ids["participant array"] = run(str(job.array_script))
        ids["group"] = run(f"--dependency=afterany:{ids['participant array']}", str(job.group_script))
    else:
        ids["group"] = run(str(job.group_script))
    write_text(job.folder / "jobs.json", json.dumps(ids, indent=2) + "\n")
    return SlurmJob(**{**job.__dict__, "job_ids": ids})


def app_arguments(args: Any) -> list[str]:
    """The BIDS-App options of a parsed command line that every task repeats (selection by
    participant and ``--nprocs`` / ``--mem-gb`` are set per task)."""
    out: list[str] = []
    if args.session_label:
        out += ["--session-label", *args.session_label]
    out += ["--preproc", args.preproc]
    for flag, value in (("--derivatives", args.derivatives), ("--dartel-template", args.dartel_template),
                        ("--models", args.models), ("--omp-nthreads", args.omp_nthreads)):
        if value is not None:
            out += [flag, str(value)]
    out += ["--device", args.device, "--ad-threshold", f"{args.ad_threshold:g}"]
    if not args.reports:
        out.append("--no-reports")
    if args.verbose:
        out.append("-" + "v" * args.verbose)
    return out
