"""Multi-process start: ``jax.distributed.initialize()`` when, and only when, the job has several processes.

One training stage runs the same program on every host (SPMD). Before any JAX computation, each
process of a multi-process job must join the others through ``jax.distributed.initialize``. A
single process (a laptop, one GPU machine, the tests) must not: there is no coordinator to join.

``archobj train`` calls ``initialize_if_multiprocess`` first. A job counts as multi-process when:

- explicit flags or variables name a coordinator: ``--coordinator-address/--num-processes/
  --process-id``, or ``JAX_COORDINATOR_ADDRESS`` (with ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``);
- SLURM launched more than one task for the step (``SLURM_STEP_NUM_TASKS`` or ``SLURM_NTASKS`` > 1
  under ``srun``); JAX reads the coordinator, process count and id from SLURM's variables;
- a Cloud TPU pod slice has more than one worker (``TPU_WORKER_HOSTNAMES`` lists several hosts, or
  ``MEGASCALE_COORDINATOR_ADDRESS`` is set); JAX asks the TPU metadata for the rest;
- Open MPI launched more than one rank (``OMPI_COMM_WORLD_SIZE`` > 1).

The decision is a pure function of the environment (``launch_plan``), so it is tested without a
cluster; ``initialize_if_multiprocess`` only acts on it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Mapping, Optional

log = logging.getLogger("archobj.distributed")


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
    """How this process joins its job.

    Attributes:
      multiprocess: whether to call ``jax.distributed.initialize``.
      source: what decided it ("flags", "env", "slurm", "tpu", "mpi" or "single").
      coordinator_address, num_processes, process_id: explicit arguments; None lets JAX detect
        them from the cluster environment.
    """

    multiprocess: bool
    source: str
    coordinator_address: Optional[str] = None
    num_processes: Optional[int] = None
    process_id: Optional[int] = None


def _int(env: Mapping[str, str], name: str) -> Optional[int]:
    value = env.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"${name}={value!r}: must be an integer") from None


def launch_plan(env: Mapping[str, str] = os.environ, *, coordinator_address: Optional[str] = None,
                num_processes: Optional[int] = None, process_id: Optional[int] = None
                ) -> LaunchPlan:
    """Decides whether (and how) this process joins a multi-process job; see the module doc.

    Raises:
      ValueError: explicit settings that are incomplete or inconsistent (one line).
    """
    address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS") or None
    count = num_processes if num_processes is not None else _int(env, "JAX_NUM_PROCESSES")
    index = process_id if process_id is not None else _int(env, "JAX_PROCESS_ID")
    explicit = coordinator_address is not None or num_processes is not None or process_id is not None
    if address or count is not None or index is not None:
        source = "flags" if explicit else "env"
        missing = [name for name, value in (("coordinator address", address),
                                            ("number of processes", count),
                                            ("process id", index)) if value is None]
        if missing:
            raise ValueError(
                f"multi-process start: {', '.join(missing)} not given; pass all three of "
                "--coordinator-address, --num-processes and --process-id (or JAX_COORDINATOR_"
                "ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)")
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"multi-process start: process id {index} is not in [0, {count}) "
                             "(--process-id must be below --num-processes)")
        return LaunchPlan(count > 1, source, address, count, index)

    slurm_tasks = _int(env, "SLURM_STEP_NUM_TASKS") or _int(env, "SLURM_NTASKS")
    if env.get("SLURM_JOB_ID") and env.get("SLURM_STEP_ID") is not None and (slurm_tasks or 1) > 1:
        return LaunchPlan(True, "slurm")
    tpu_hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(tpu_hosts) > 1 or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return LaunchPlan(True, "tpu")
    if (_int(env, "OMPI_COMM_WORLD_SIZE") or 1) > 1:
        return LaunchPlan(True, "mpi")
    return LaunchPlan(False, "single")


def initialize_if_multiprocess(plan: Optional[LaunchPlan] = None) -> LaunchPlan:
    """Calls ``jax.distributed.initialize`` if ``plan`` (default: ``launch_plan()``) says so.

    Must run before anything touches JAX devices.
    """
    plan = plan or launch_plan()
    if plan.multiprocess:
        import jax

        jax.distributed.initialize(coordinator_address=plan.coordinator_address,
                                   num_processes=plan.num_processes, process_id=plan.process_id)
        log.info("joined a %d-process job (%s) as process %d", jax.process_count(), plan.source,
                 jax.process_index())
    return plan
