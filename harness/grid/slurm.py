"""The SLURM executor of the grid: one batch job per stage, chained by dependencies, through submitit.

    archobj grid experiments/paper.yaml --executor slurm      # submit what is missing, then exit
    archobj status experiments/paper.yaml                     # reconciles with sacct, then prints

``submit`` turns every selected stage that is not done into one ``sbatch`` job, in plan order. A
job runs ``archobj grid FILE --runs R --set ... --stage NAME`` (``runner.run_stage``: it takes the
stage's lock and writes its events) on every task under ``srun``; ``harness/train/distributed.py``
reads SLURM's task variables to start multi-host JAX. A stage's job waits for its upstream stage's
job with ``--dependency=afterok:<id>``, so nothing has to stay alive on the login node. The
resources come from the grid file's ``slurm:`` section (per stage kind ``train``/``eval``/
``import``, or per pretraining pair; keys in ``spec.SLURM_KEYS``). Submitit keeps its files (the
batch script, the pickled job, logs) in ``<stage dir>/slurm/``; the job id goes into the stage's
events (``state.mark_submitted``), where ``archobj status`` shows it.

**Time limits and preemption.** The job asks SLURM for ``USR2`` ``signal_delay_s`` (default 120)
seconds before its time limit (``--signal=USR2@120``). A training stage that gets USR2 or TERM saves
the step it reached and exits 75; run again it resumes exactly (``harness/train/loop.py``). The job
is checkpointable in submitit's sense (``StageJob`` has ``checkpoint``) that runs the stage as a child process, so
the requeue is submitit's own: its USR2 handler (task 0) calls ``StageJob.checkpoint``, which
waits for the child to save and exit, and returns the job itself; submitit pickles it and runs
``scontrol requeue``, and the requeued job (same id, so dependent jobs keep waiting on it) starts
the stage again, which resumes. ``StageJob`` forwards USR2 and TERM to its child before submitit
sees them, on every task, so the stage saves whether or not SLURM signals the whole process tree
(a second copy of the signal is harmless). SLURM's own preemption (TERM, then requeue by the
scheduler, where the partition is set up so) goes through the same save. Hitting the time limit
counts against ``max_num_timeout`` (default 100) requeues; preemption does not.

**Reconciliation.** A job that dies without the stage recording ``finished`` or ``failed`` (killed
at its time limit before saving, out of memory, a node failure, cancelled by hand) leaves its
dependent jobs waiting forever (``DependencyNeverSatisfied``). ``reconcile`` asks ``sacct`` about
the stages whose newest job has not ended in the events, records ``failed`` (the job id and its
SLURM state) for dead ones, and ``scancel``s the queued jobs of every stage downstream of a failed
stage, recording ``cancelled``. ``archobj status`` and ``archobj grid`` call it; it reads event
files only and calls ``sacct`` only when some stage has an outstanding job, imports neither JAX
nor submitit, and where ``sacct`` is missing it says so once and changes nothing.
"""

from __future__ import annotations

import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

from harness.grid import state
from harness.train.run_record import PREEMPTED_EXIT_STATUS

if TYPE_CHECKING:
    from harness.grid.plan import Plan

DEFAULT_SIGNAL_DELAY_S = 120
DEFAULT_MAX_NUM_TIMEOUT = 100
FORWARDED_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)
SLURM_FOLDER = "slurm"
# sacct states of a job that will not run its stage again (a requeued job reads PENDING/REQUEUED).
DEAD_STATES = ("BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
               "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT", "REVOKED")
QUERY_TIMEOUT_S = 20.0
_OPEN_AFTER_SUBMIT = ("started", "interrupted")   # events that leave a job outstanding


# ------------------------------------------------------------------------------------- the job

class StageJob:
    """What one SLURM task runs: the stage's command as a child process (see the module doc).

    Checkpointable as submitit understands it: its USR2 handler calls ``checkpoint`` on any job
    function that has one (``submitit/core/job_environment.py``), which is all
    ``submitit.helpers.Checkpointable`` adds; not deriving from it keeps submitit out of
    ``archobj status`` (this module is imported there, for ``reconcile``).

    Args:
      command: the argv of ``archobj grid ... --stage NAME``.
      cwd: its working directory (where the grid was submitted from: relative paths in ``--set``).
      grace_s: how long ``checkpoint`` waits for the child to save and exit.
    """

    def __init__(self, command: Sequence[str], cwd: str, grace_s: float) -> None:
        self.command = list(command)
        self.cwd = cwd
        self.grace_s = grace_s
        self._child: Optional[subprocess.Popen] = None
        self._returncode: Optional[int] = None

    def __getstate__(self) -> dict[str, Any]:   # what submitit pickles: never the live child
        return {"command": self.command, "cwd": self.cwd, "grace_s": self.grace_s}

    def __setstate__(self, document: Mapping[str, Any]) -> None:
        self.__init__(document["command"], document["cwd"], document["grace_s"])

    def __call__(self) -> int:
        """Runs the stage; returns 0, or raises when it failed (the job then reads FAILED)."""
        self._returncode = None
        self._child = subprocess.Popen(self.command, cwd=self.cwd)
        # A thread reaps the child and the main thread polls a plain attribute: the signal
        # handlers (main thread) then never wait on a lock the interrupted main thread holds.
        threading.Thread(target=self._reap, daemon=True).start()
        previous = {signum: signal.getsignal(signum) for signum in FORWARDED_SIGNALS}
        for signum in FORWARDED_SIGNALS:
            signal.signal(signum, lambda number, frame: self._forward(number, frame, previous))
        try:
            while self._returncode is None:
                time.sleep(0.2)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if self._returncode is None:  # leaving early (a cancel's SIGINT): no orphaned stage
                self._child.kill()
                self._child.wait()
        status = self._returncode
        if status == 0:
            return 0
        if status == PREEMPTED_EXIT_STATUS:
            # Saved and stopped: task 0's USR2 handler is requeueing the job, or the scheduler is
            # preempting it; wait to be ended rather than end the job first.
            time.sleep(self.grace_s)
            raise RuntimeError(f"{shlex.join(self.command)}: the stage saved and stopped (exit "
                               f"{status}), but the job was not requeued within {self.grace_s} s")
        raise RuntimeError(f"{shlex.join(self.command)}: exited with status {status}; the stage's "
                           "error.txt and this job's log say why")

    def _reap(self) -> None:
        assert self._child is not None
        self._returncode = self._child.wait()

    def _forward(self, signum: int, frame: Optional[types.FrameType],
                 previous: Mapping[int, Any]) -> None:
        if self._child is not None and self._returncode is None:
            try:
                os.kill(self._child.pid, signum)
            except ProcessLookupError:
                pass
        handler = previous.get(signum)
        if callable(handler):   # submitit's: requeue on USR2 (task 0), log on TERM
            handler(signum, frame)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit's USR2 handler: waits for the stage to save, then resubmits this job."""
        from submitit.helpers import DelayedSubmission

        deadline = time.monotonic() + self.grace_s
        while self._returncode is None and time.monotonic() < deadline:
            time.sleep(0.2)
        return DelayedSubmission(StageJob(self.command, self.cwd, self.grace_s), *args, **kwargs)


# ---------------------------------------------------------------------------------- submission

def resources(plan: Plan, name: str) -> dict[str, Any]:
    """The grid file's ``slurm:`` values for one stage: its kind's, updated by its pair's (a
    training stage of that architecture and objective: pretraining and adaptations)."""
    stage = plan.stages[name]
    values = dict(plan.grid.slurm.get(stage.kind, {}))
    if stage.kind == "train":   # a pair's section: every stage that trains the pair
        values.update(plan.grid.slurm.get(
            f"{stage.config.model.architecture}_{stage.config.data.objective}", {}))
    return values


def stage_command(plan: Plan, name: str, *, grid_file: str | os.PathLike, runs: Optional[str],
                  overrides: Sequence[str], retry_failed: bool = False,
                  python: str = sys.executable) -> list[str]:
    """The argv a job runs: ``python -m harness.cli grid FILE --runs R --set ... --stage NAME``."""
    command = [python, "-m", "harness.cli", "grid", str(pathlib.Path(grid_file).resolve())]
    command += ["--runs", str(pathlib.Path(runs if runs is not None else plan.root.parent)
                              .resolve())]
    for entry in overrides:
        command += ["--set", str(entry)]
    if plan.grid.variant:
        command += ["--variant", plan.grid.variant]
    if plan.grid.seed:
        command += ["--seed", str(plan.grid.seed)]
    if retry_failed:
        command.append("--retry-failed")
    return [*command, "--stage", name]


def outstanding_job(stage_dir: pathlib.Path) -> Optional[str]:
    """The job id of the stage's newest ``submitted`` event when nothing after it ended the job's
    attempt (``finished``, ``failed``, ``cancelled``); else None."""
    events = state.read_events(stage_dir)
    for event in reversed(events):
        if event["event"] == "submitted":
            return str(event.get("job_id"))
        if event["event"] not in _OPEN_AFTER_SUBMIT:
            return None
    return None


def _parameters(values: Mapping[str, Any], name: str, dependency: Optional[str],
                command: Sequence[str]) -> dict[str, Any]:
    """``SlurmExecutor.update_parameters`` arguments from the grid's ``slurm:`` values."""
    parameters: dict[str, Any] = {
        "job_name": name, "nodes": values.get("nodes", 1),
        "ntasks_per_node": values.get("tasks_per_node", 1),
        "time": values.get("timeout_min", 60),
        "signal_delay_s": values.get("signal_delay_s", DEFAULT_SIGNAL_DELAY_S),
        "setup": [f"# archobj stage: {shlex.join(command)}", *values.get("setup", [])],
        "stderr_to_stdout": True,
    }
    for key in ("gpus_per_node", "cpus_per_task", "partition", "account", "constraint", "qos"):
        if key in values:
            parameters[key] = values[key]
    if "mem_gb" in values:
        parameters["mem"] = f"{values['mem_gb']}GB"
    if dependency:
        parameters["dependency"] = dependency
    if values.get("additional_parameters"):
        parameters["additional_parameters"] = dict(values["additional_parameters"])
    return parameters


def submit(plan: Plan, names: Sequence[str], *, grid_file: str | os.PathLike,
           runs: Optional[str], overrides: Sequence[str] = (), retry_failed: bool = False,
           report: Callable[[str], None] = print) -> dict[str, str]:
    """Submits one SLURM job per selected stage that is not done; returns {stage: job id}.

    Stages whose job is still outstanding are not submitted again: their dependents wait on that
    job. A failed stage is submitted only with ``retry_failed`` (else it and its dependents are
    skipped, with a line each). Everything is decided before the first ``sbatch``.

    Raises:
      ValueError: a stage whose upstream is neither done nor has a job (e.g. it runs elsewhere
        without SLURM), one line naming both.
    """
    from harness.grid import runner

    current = runner.statuses(plan, names)
    jobs: dict[str, str] = {}            # every stage with a job: outstanding or new
    todo: list[tuple[str, Optional[str]]] = []   # (stage, upstream job id)
    skipped: set[str] = set()
    for name in names:
        stage = plan.stages[name]
        if current[name] == "done":
            continue
        existing = outstanding_job(stage.directory)
        if existing is not None and current[name] != "failed":
            jobs[name] = existing
            report(f"{name}: already submitted as job {existing}")
            continue
        if current[name] == "running":   # a runner without SLURM holds its lock
            report(f"{name}: not submitted: it is running elsewhere "
                   f"(host {state.stage_status(stage.directory).host})")
            continue
        upstream = stage.upstream
        if upstream in skipped or (current[name] == "failed" and not retry_failed):
            skipped.add(name)
            report(f"{name}: not submitted: " + (f"upstream {upstream} is not submitted"
                                                 if upstream in skipped else
                                                 "failed before; pass --retry-failed"))
            continue
        upstream_state = runner.statuses(plan, [upstream])[upstream] if upstream else "done"
        if upstream is not None and upstream_state != "done" and upstream not in jobs:
            raise ValueError(f"stage {name}: its upstream {upstream} is {upstream_state} without a "
                             "SLURM job; let it finish (archobj status) or select it too")
        todo.append((name, upstream if upstream in jobs else None))
        jobs[name] = ""   # filled below; marks it as having a job for its dependents

    if not todo:
        report(f"{plan.grid.name}: nothing to submit")
        return {}
    import submitit

    cwd = os.getcwd()
    submitted: dict[str, str] = {}
    for name, upstream in todo:
        stage = plan.stages[name]
        values = resources(plan, name)
        dependency = f"afterok:{jobs[upstream]}" if upstream is not None else None
        command = stage_command(plan, name, grid_file=grid_file, runs=runs, overrides=overrides,
                                retry_failed=current[name] == "failed")
        executor = submitit.SlurmExecutor(
            folder=stage.directory / SLURM_FOLDER,
            max_num_timeout=values.get("max_num_timeout", DEFAULT_MAX_NUM_TIMEOUT))
        executor.update_parameters(**_parameters(values, name, dependency, command))
        delay = values.get("signal_delay_s", DEFAULT_SIGNAL_DELAY_S)
        job = executor.submit(StageJob(command, cwd, grace_s=max(delay - 10, 10)))
        state.mark_submitted(stage.directory, job.job_id)
        jobs[name] = submitted[name] = str(job.job_id)
        report(f"{name}: job {job.job_id}" + (f" after {dependency}" if dependency else ""))
    return submitted


# ------------------------------------------------------------------------------ reconciliation

def job_states(job_ids: Sequence[str]) -> Optional[dict[str, str]]:
    """SLURM's state of each job (``sacct``'s first word: FAILED, RUNNING, ...), or None when
    SLURM cannot be queried. Jobs sacct does not know yet are left out."""
    if not job_ids:
        return {}
    if shutil.which("sacct") is None:
        return None
    try:
        done = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j",
                               ",".join(job_ids)], capture_output=True, text=True,
                              timeout=QUERY_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    states: dict[str, str] = {}
    for line in done.stdout.splitlines():
        job_id, _, job_state = line.strip().partition("|")
        if job_id and job_state:
            states[job_id] = job_state.split()[0]   # "CANCELLED by 1234" -> "CANCELLED"
    return states


def cancel(job_ids: Sequence[str]) -> None:
    """``scancel`` the jobs (a job that has already ended is no error)."""
    if job_ids and shutil.which("scancel") is not None:
        subprocess.run(["scancel", *job_ids], capture_output=True, timeout=QUERY_TIMEOUT_S,
                       check=False)


def reconcile(plan: Plan, report: Callable[[str], None] = print) -> dict[str, str]:
    """Records the stages whose job died (``failed``) and cancels the queued jobs below failed
    stages (``cancelled``); returns {stage: what was recorded}. See the module docstring."""
    outstanding = {name: job for name, stage in plan.stages.items()
                   if (job := outstanding_job(stage.directory)) is not None}
    changed: dict[str, str] = {}
    if outstanding:
        states = job_states(sorted(set(outstanding.values())))
        if states is None:
            report(f"{plan.grid.name}: SLURM cannot be queried (no sacct here); the states of "
                   f"{len(outstanding)} submitted stages are as their events last say")
            states = {}
        for name, job in outstanding.items():
            job_state = states.get(job)
            if job_state not in DEAD_STATES:
                continue
            stage_dir = plan.stages[name].directory
            now = state.stage_status(stage_dir)
            if now.state in ("done", "failed", "running"):
                continue
            state.append_event(stage_dir, "failed", job_id=job, slurm_state=job_state,
                               error=f"SLURM job {job} ended {job_state} without the stage "
                                     "finishing; see its log in " + str(stage_dir / SLURM_FOLDER),
                               attempt=now.attempts)
            changed[name] = "failed"
            report(f"{name}: SLURM job {job} ended {job_state}: recorded as failed")
    # Queued jobs below a failed stage would wait forever (afterok): cancel them.
    failed = [name for name, stage in plan.stages.items()
              if state.stage_status(stage.directory).state == "failed"]
    for name in failed:
        below = [(down, job) for down in plan.downstream_of(name)
                 if (events := state.read_events(plan.stages[down].directory))
                 and events[-1]["event"] == "submitted" and (job := str(events[-1]["job_id"]))]
        if not below:
            continue
        cancel([job for _, job in below])
        for down, job in below:
            state.append_event(plan.stages[down].directory, "cancelled", job_id=job,
                               reason=f"upstream {name} failed")
            changed[down] = "cancelled"
        report(f"{name} failed: cancelled the jobs of {len(below)} stages below it "
               f"({', '.join(job for _, job in below)})")
    return changed
