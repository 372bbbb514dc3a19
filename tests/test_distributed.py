"""Multi-process start (harness/train/distributed.py): when ``jax.distributed.initialize`` is called."""

from __future__ import annotations

import pytest

from helpers import assert_one_line_error
from harness.train.distributed import LaunchPlan, initialize_if_multiprocess, launch_plan


@pytest.mark.parametrize("env, source", [
    ({}, "single"),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1", "SLURM_STEP_ID": "0"}, "single"),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "8"}, "single"),  # sbatch script, not inside srun
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "8"}, "slurm"),
    ({"TPU_WORKER_HOSTNAMES": "t1"}, "single"),
    ({"TPU_WORKER_HOSTNAMES": "t1,t2,t3,t4"}, "tpu"),
    ({"OMPI_COMM_WORLD_SIZE": "4"}, "mpi"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"},
     "env"),
])
def test_launch_plan_follows_the_environment(env, source):
    plan = launch_plan(env)
    assert plan.source == source
    assert plan.multiprocess == (source not in ("single",))


def test_explicit_flags_win_and_are_checked():
    plan = launch_plan({}, coordinator_address="h:1", num_processes=4, process_id=3)
    assert plan == LaunchPlan(True, "flags", "h:1", 4, 3)
    assert not launch_plan({}, coordinator_address="h:1", num_processes=1, process_id=0).multiprocess
    with pytest.raises(ValueError) as excinfo:
        launch_plan({}, coordinator_address="h:1")
    assert_one_line_error(excinfo, "number of processes", "--num-processes")
    with pytest.raises(ValueError) as excinfo:
        launch_plan({}, coordinator_address="h:1", num_processes=2, process_id=2)
    assert_one_line_error(excinfo, "process id 2")
    with pytest.raises(ValueError) as excinfo:
        launch_plan({"JAX_NUM_PROCESSES": "two"})
    assert_one_line_error(excinfo, "JAX_NUM_PROCESSES")


def test_single_process_does_not_initialize(monkeypatch):
    import jax

    def refuse(**kwargs):
        raise AssertionError("initialize called for a single process")

    monkeypatch.setattr(jax.distributed, "initialize", refuse)
    assert initialize_if_multiprocess(LaunchPlan(False, "single")).multiprocess is False
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    initialize_if_multiprocess(LaunchPlan(True, "flags", "h:1", 2, 0))
    assert calls == [{"coordinator_address": "h:1", "num_processes": 2, "process_id": 0}]
