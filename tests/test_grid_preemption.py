"""A simulated preemption of a grid stage's job, end to end on this machine: submitit's local
controller runs ``harness.grid.slurm.StageJob`` as a SLURM job would run it, sends it USR2
``signal_delay_s`` before its time limit, and requeues it when submitit's handler has checkpointed
it; the requeued job resumes the stage, whose losses equal an uninterrupted run's bit for bit.

The timer is submitit's own (``submitit/local/local.py``, ``Controller.wait``): USR2 goes to the
job's task ``timeout_min * 60 - signal_delay_s`` seconds after the task started, whole seconds
(``int(60 * timeout_min)``), so the test waits that long once. It must exceed the stage process's
start-up (imports, the data pipeline, compiling) or the signal lands before the stage handles it;
the test then fails saying so.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import textwrap
import time

import pytest

from harness.grid import slurm, state
from harness.grid.plan import make_plan
from harness.grid.spec import load_grid
from helpers import write_corpus

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Far more steps than one time limit allows: the stage is stopped twice, never finishes.
GRID = """
grid: preemption_test
architectures:
  cd: {{model.preset: tiny, model.dtype: float32}}
base:
  data.source: {corpus}
  data.vocabulary: byte
  data.total_length: 32
  train.batch_size: 8
  train.log_every: 1
  checkpoint.every: 1000
  checkpoint.async_save: false
pretrain: {{steps: 100000, pairs: [cd_flm]}}
eval: {{suites: [t0], tasks: [copa], fixtures: true, limit: 1}}
cells:
  - "cd_flm"
"""

# USR2 this long after the job's task starts: above the stage's start-up on a loaded 2-core
# machine (about 45 s measured while the test suite ran beside it: bytecode is not cached here).
SIGNAL_AT_S = 75
SIGNAL_DELAY_S = 30           # then the save must be done: the controller kills the task after it
GRACE_S = SIGNAL_DELAY_S - 10  # as slurm.submit sets it
STEPS_AFTER_RESUME = 5
WAIT_S = 300


def _alive(pid: int) -> bool:
    try:
        status = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return status.rsplit(")", 1)[1].split()[0] != "Z"


def _metrics(directory: pathlib.Path) -> list[dict]:
    path = directory / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:   # a line being written
            pass
    return records


def _kinds(directory: pathlib.Path) -> list[str]:
    return [event["event"] for event in state.read_events(directory)]


@pytest.mark.slow
def test_a_preempted_job_is_requeued_by_submitit_and_resumes_bit_exactly(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    from harness.train import run_record
    from harness.train.config import with_overrides
    from harness.train.loop import run

    # The job's processes inherit this environment (conftest.py's XLA flags and compilation
    # cache); its JAX computes as this process's does.
    monkeypatch.setenv("JAX_DEFAULT_MATMUL_PRECISION", "highest")
    corpus = write_corpus(tmp_path / "docs.txt")
    path = tmp_path / "grid.yaml"
    path.write_text(textwrap.dedent(GRID.format(corpus=corpus)))
    runs = tmp_path / "runs"
    plan = make_plan(load_grid(path), runs=runs)
    stage = plan.stages["cd_flm"]
    directory = stage.directory
    command = slurm.stage_command(plan, "cd_flm", grid_file=path, runs=str(runs), overrides=())

    executor = submitit.LocalExecutor(folder=directory / slurm.SLURM_FOLDER, max_num_timeout=3)
    timeout_min = (SIGNAL_AT_S + SIGNAL_DELAY_S) / 60
    assert int(60 * timeout_min) == SIGNAL_AT_S + SIGNAL_DELAY_S   # what the controller reads
    executor.update_parameters(timeout_min=timeout_min, signal_delay_s=SIGNAL_DELAY_S)
    start = time.monotonic()
    job = executor.submit(slurm.StageJob(command, str(ROOT), grace_s=GRACE_S))
    state.mark_submitted(directory, job.job_id)
    log = ""
    try:
        # 1. Submitit's USR2, SIGNAL_AT_S after the task started: the stage saves off the
        #    checkpoint grid and exits 75; submitit's handler checkpoints and requeues the job,
        #    and the controller starts it again; the stage resumes. Wait for a few steps of that.
        deadline = start + WAIT_S
        while time.monotonic() < deadline and not job.done():
            kinds = _kinds(directory)
            if kinds.count("started") >= 2 and "interrupted" in kinds:
                (first,) = [e for e in state.read_events(directory) if e["event"] == "interrupted"]
                steps = [r["step"] for r in _metrics(directory)]
                if steps and steps[-1] >= _saved_step(first) + STEPS_AFTER_RESUME:
                    break
            time.sleep(0.5)
        resumed_s = time.monotonic() - start
        assert not job.done(), f"the job ended: {_kinds(directory)}"
        assert time.monotonic() < deadline, f"no resume within {WAIT_S} s: {_kinds(directory)}"

        # 2. Stop the requeued attempt as SLURM stops a job (TERM, here to the controller, which
        #    forwards it to the task; StageJob forwards it to the stage), then end the job. LocalJob
        #    has no public way to send TERM (cancel() sends INT to the controller, which does not
        #    reach the stage: it would outlive the job, where SLURM would kill its cgroup).
        job._process.send_signal(signal.SIGTERM)
        while _kinds(directory).count("interrupted") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        stage_pid = [e for e in state.read_events(directory) if e["event"] == "started"][-1]["pid"]
        while _alive(stage_pid) and time.monotonic() < deadline:   # saved; now exiting
            time.sleep(0.2)
        # StageJob now waits GRACE_S to be requeued (SLURM would requeue a preempted job): end it.
        job.cancel()
        while not job.done() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert job.done()
        stopped_s = time.monotonic() - start
    finally:
        if not job.done():
            job.cancel()
        for event in state.read_events(directory):   # no stage process outlives the test
            if event["event"] == "started" and _alive(event["pid"]):
                os.kill(event["pid"], signal.SIGKILL)
        for name in (f"{job.job_id}_0_log.out", f"{job.job_id}_0_log.err"):
            file = directory / slurm.SLURM_FOLDER / name
            if file.is_file():
                log += file.read_text()
    print(f"USR2 at {SIGNAL_AT_S} s; resumed and trained {STEPS_AFTER_RESUME} steps after "
          f"{resumed_s:.0f} s; the job ended after {stopped_s:.0f} s")

    events = state.read_events(directory)
    kinds = [event["event"] for event in events]
    tail = log[-3000:]
    if "interrupted" not in kinds[:3]:
        pytest.fail(f"USR2 came {SIGNAL_AT_S} s after the job started, before the stage could "
                    f"handle it (its start-up took longer: a loaded machine?); events {kinds}; "
                    f"log:\n{tail}")
    assert kinds == ["submitted", "started", "interrupted", "started", "interrupted"], (kinds, tail)
    first, second = [e for e in events if e["event"] == "interrupted"]
    assert "stopped by SIGUSR2" in first["reason"], first
    assert "stopped by SIGTERM" in second["reason"], second
    k1, k2 = _saved_step(first), _saved_step(second)
    assert k1 % 1000 != 0 and k2 > k1 + STEPS_AFTER_RESUME - 1, (k1, k2)
    assert k2 in run_record.committed_steps(directory)
    pids = [e["pid"] for e in events if e["event"] == "started"]
    assert pids[0] != pids[1] and not any(_alive(pid) for pid in pids)
    # Submitit's side: its USR2 handler called StageJob.checkpoint and requeued; the controller
    # ran the job again under the same id (one log).
    for line in ("Caught signal SIGUSR2", "Calling checkpoint method", f"Requeued job {job.job_id}",
                 "Bypassing signal SIGTERM"):
        assert line in log, (line, tail)
    assert log.count("Starting with JobEnvironment") == 2, tail

    # Every step once, and the losses of an uninterrupted run of the same config, bit for bit.
    records = _metrics(directory)
    assert [r["step"] for r in records] == list(range(1, k2 + 1))
    reference = with_overrides(stage.config, {"run_dir": str(tmp_path / "reference"),
                                              "train.steps": k2})
    reference_start = time.monotonic()
    run(reference, progress=False)
    expected = _metrics(tmp_path / "reference")
    for key in ("loss", "grad_norm", "tokens_seen"):
        assert [r[key] for r in records] == [r[key] for r in expected], key
    print(f"interrupted at steps {k1} (USR2) and {k2} (TERM); {k2} losses equal; the reference "
          f"run took {time.monotonic() - reference_start:.0f} s")


def _saved_step(event: dict) -> int:
    """The step an ``interrupted`` event's stage saved (``run_record.Preempted``'s message)."""
    words = event["reason"].split("after saving step ")[1]
    return int(words.split(";")[0])
