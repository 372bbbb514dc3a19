"""Running a plan on this machine: what is missing, in dependency order, each stage once.

    plan  = make_plan(load_grid("experiments/tiny.yaml"))
    table = status_table(plan)                 # from disk only: done / pending / running / ...
    run_plan(plan, only="cd_flm_64$")          # runs the matching cells and what they need

Status lives on disk (``harness/grid/state.py``): each stage directory holds an append-only event
file and a lock. A stage is run only by the process that holds its lock, so two runners on one
run directory never train the same stage at once; one whose runner died (lock free, last event
"started") is interrupted and resumes from its newest checkpoint (``harness/train/loop.py``'s exact
resume). A failing stage records its error, its dependents are dep-failed, and independent stages
go on; a failed stage is retried only with ``retry_failed``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import time
from typing import Callable, Iterable, Optional

from harness.grid import state, timing
from harness.grid.plan import Plan, Stage, identity_record
from harness.train.run_record import Preempted

STATES = ("done", "running", "pending", "interrupted", "failed", "dep-failed")


@dataclasses.dataclass
class RunSummary:
    """What ``run_plan`` did."""

    ran: list[str] = dataclasses.field(default_factory=list)
    failed: list[str] = dataclasses.field(default_factory=list)
    dep_failed: list[str] = dataclasses.field(default_factory=list)
    busy: list[str] = dataclasses.field(default_factory=list)   # running elsewhere

    @property
    def ok(self) -> bool:
        return not (self.failed or self.dep_failed or self.busy)


def select(plan: Plan, only: Optional[str] = None) -> list[str]:
    """The stages of the cells whose names match ``only`` (a regex; all cells if None), with
    everything they need, in plan order.

    Raises:
      ValueError: a bad regex, or one that matches no cell.
    """
    if only is None:
        wanted = set(plan.stages)
    else:
        try:
            pattern = re.compile(only)
        except re.error as e:
            raise ValueError(f"--only {only!r}: not a regular expression ({e})") from None
        cells = [cell for cell in plan.cells if pattern.search(cell)]
        if not cells:
            raise ValueError(f"--only {only!r}: matches no cell of {plan.grid.path}; cells are "
                             f"e.g. {list(plan.cells)[:3]} (archobj status lists them)")
        wanted = {name for cell in cells for name in plan.cells[cell]}
        wanted |= {up for name in list(wanted) for up in plan.upstream_of(name)}
    return [name for name in plan.stages if name in wanted]


def statuses(plan: Plan, names: Optional[Iterable[str]] = None) -> dict[str, str]:
    """Each stage's state, read from disk, with dep-failed derived from the DAG."""
    names = list(plan.stages if names is None else names)
    raw = {name: state.stage_status(plan.stages[name].directory).state for name in names}
    upstream = {name: [plan.stages[name].upstream] if plan.stages[name].upstream in raw else []
                for name in names}
    return state.derive(raw, upstream)


def run_plan(plan: Plan, only: Optional[str] = None, *, retry_failed: bool = False,
             force: Iterable[str] = (), report: Callable[[str], None] = print,
             ledger: Optional[timing.Ledger] = None,
             compilation_cache: Optional[str | os.PathLike] = None,
             estimator: Optional[timing.Estimator] = None) -> RunSummary:
    """Runs every selected stage that is not done, upstream first; see the module docstring.

    Args:
      plan: the plan.
      only: a regex on cell names (``select``).
      retry_failed: run failed stages again (never done silently).
      force: stages to run again although they are done: their directory is moved aside
        (``<dir>.replaced-<time>``, never deleted) and the stage runs afresh.
      report: receives one line per stage started or finished, with the time elapsed and an
        estimate of the time left.
      ledger: adds up where the time goes (``timing.Ledger``); a new one if None.
      compilation_cache: JAX's persistent compilation cache directory for this process (the CLI
        passes ``<runs>/.jax_cache``); None leaves JAX's setting alone.
      estimator: what the time-left estimate has learned so far (the CLI passes one to every
        replicate it runs); a new one from the grid file's ``compute`` if None. Either way it
        first learns from the stages of the plan already done (their recorded wall times).
    """
    names = select(plan, only)
    summary = RunSummary()
    ledger = ledger if ledger is not None else timing.Ledger()
    plan.root.mkdir(parents=True, exist_ok=True)
    for name in force:
        directory = plan.stages[name].directory
        if directory.exists():
            aside = directory.with_name(f"{directory.name}.replaced-{time.strftime('%Y%m%dT%H%M%S')}")
            directory.rename(aside)
            report(f"{name}: moved the previous run aside to {aside.name}")
    todo = [n for n, s in statuses(plan, names).items() if s != "done"]
    started = time.perf_counter()
    if todo:
        prepare(plan, ledger, report, compilation_cache)
    from harness.train.data import shared_streams  # no TensorFlow until a pipeline is built

    try:
        # The stages that read one stream (every MTF of an architecture, the adaptations to one
        # objective) build its pipeline once: harness/train/data.py.
        with shared_streams() as close_streams:
            _run_stages(plan, todo, summary, ledger, retry_failed, report, estimator)
            if todo:  # TensorFlow stops the kept pipelines' threads: part of the time to account
                with ledger.phase("input pipelines (closing)"):
                    close_streams()
    finally:
        ledger.stop_listening()
    report(f"{plan.grid.name}: {len(todo)} stages considered in "
           f"{timing.format_seconds(time.perf_counter() - started)}")
    summary.dep_failed.extend(n for n, s in statuses(plan, names).items()
                              if s == "dep-failed" and n not in summary.dep_failed)
    return summary


def new_estimator(plan: Plan) -> timing.Estimator:
    """A time-left estimator whose prior is the grid file's ``compute`` (peak FLOP/s x MFU for
    training, ``eval_seconds`` per evaluation stage)."""
    compute = plan.grid.compute
    return timing.Estimator(flops_per_second=compute.peak_tflops * 1e12 * compute.mfu,
                            eval_seconds=compute.eval_seconds)


def _learn_from_done(estimator: timing.Estimator, plan: Plan, todo: Iterable[str]) -> int:
    """Feeds ``estimator`` the recorded wall time of every done stage of ``plan`` (an earlier
    run of this grid, a cell re-run after a change): this machine's speed, where the grid file's
    ``compute`` is only a prior. Returns how many stages it learned from."""
    pending = set(todo)
    learned = 0
    for name, stage in plan.stages.items():
        if name in pending or stage.kind not in ("train", "eval"):
            continue
        status = state.stage_status(stage.directory)
        if status.state == "done" and status.attempts == 1 and status.duration_s:
            kind, flops, suite = _cost(stage)
            estimator.observe(kind, status.duration_s, flops=flops, suite=suite)
            learned += 1
    return learned


def _run_stages(plan: Plan, todo: list[str], summary: RunSummary, ledger: timing.Ledger,
                retry_failed: bool, report: Callable[[str], None],
                estimator: Optional[timing.Estimator] = None) -> None:
    """Runs ``todo`` in order, each line prefixed with the time elapsed and an estimate of the
    time left (``timing.Estimator``, learning from the stages done before and as they finish)."""
    started = time.perf_counter()
    estimator = estimator if estimator is not None else new_estimator(plan)
    _learn_from_done(estimator, plan, todo)
    for index, name in enumerate(todo, 1):
        stage = plan.stages[name]
        left = estimator.remaining({n: _cost(plan.stages[n]) for n in todo[index - 1:]})
        clock = (f"[{index}/{len(todo)} {timing.format_seconds(time.perf_counter() - started)}"
                 f" elapsed, ~{timing.format_seconds(left)} left]")
        stage_start = time.perf_counter()
        phase = {"train": "training", "eval": f"evaluation ({stage.suite})"}.get(
            stage.kind, "baseline import")
        with ledger.phase(phase):
            outcome = run_stage(plan, name, retry_failed=retry_failed,
                                report=lambda line, c=clock: report(f"{c} {line}"))
        if outcome == "ran":
            kind, flops, suite = _cost(stage)
            estimator.observe(kind, time.perf_counter() - stage_start, flops=flops, suite=suite)
        if outcome != "skipped":
            getattr(summary, outcome.replace("-", "_")).append(name)
        write_index(plan)


def prepare(plan: Plan, ledger: timing.Ledger, report: Callable[[str], None] = print,
            compilation_cache: Optional[str | os.PathLike] = None) -> None:
    """What every stage of this process shares, paid once: the built-in world (written if this
    runs root does not have it yet), the imports of JAX and the data pipelines, JAX's persistent
    compilation cache (if given), then compile-time accounting."""
    if plan.world is not None:
        with ledger.phase("world (generate once)"):
            write_world(plan, report)
    with ledger.phase("start-up (imports)"):
        import harness.train.loop  # noqa: F401  JAX, Flax, orbax
        import objectives.tasks  # noqa: F401  seqio
        from harness.train.data import hide_gpus_from_tensorflow

        hide_gpus_from_tensorflow()  # TensorFlow itself (~10 s), which seqio imports lazily
    if compilation_cache is not None and timing.enable_compilation_cache(compilation_cache) is None:
        report("persistent compilation cache off: XLA:CPU deadlocks on sharded executables read "
               "back from it (more than one CPU device here; see timing.enable_compilation_cache)")
    ledger.listen_to_compiles()


def write_world(plan: Plan, report: Callable[[str], None] = print) -> None:
    """Writes the grid's built-in world into ``plan.world`` unless it is there already."""
    from objectives import world as world_lib

    world = plan.grid.world
    assert world is not None and plan.world is not None
    if world_lib.read_manifest(plan.world) is not None:
        return
    start = time.perf_counter()
    world_lib.write_world(plan.world, seed=world.seed, size=world.size)
    report(f"world: seed {world.seed}, size {world.size} written to {plan.world} in "
           f"{time.perf_counter() - start:.1f} s")


def _cost(stage: Stage) -> tuple[str, float, Optional[str]]:
    return stage.kind, stage.flops, stage.suite


def run_stage(plan: Plan, name: str, *, retry_failed: bool = False, primary: bool = True,
              report: Callable[[str], None] = print) -> str:
    """Runs one stage under its lock, if its upstream is done and it is not.

    What a cluster job runs (``archobj grid FILE --stage NAME``); ``run_plan`` calls it for each
    stage in turn. In a job of several processes every process runs the stage (its steps are
    collective), and only the ``primary`` one (JAX process 0) takes the lock and writes events;
    the others make the same read-only decision from the shared run directory.

    Returns:
      "ran", "failed" (now, or before and not retried), "dep-failed" (an upstream stage is not
      done), "busy" (another runner holds it) or "skipped" (done, possibly by another runner).
    """
    stage = plan.stages[name]
    current = statuses(plan, [*plan.upstream_of(name), name])
    if current[name] == "done":
        return "skipped"
    if stage.upstream is not None and current[stage.upstream] != "done":
        report(f"{name}: skipped, upstream {stage.upstream} is {current[stage.upstream]}")
        return "dep-failed"
    if current[name] == "failed" and not retry_failed:
        report(f"{name}: failed before; not retried without --retry-failed "
               f"({state.stage_status(stage.directory).error})")
        return "failed"
    if not primary:
        execute(plan, stage)
        return "ran"
    try:
        lock = state.StageLock(stage.directory).acquire()
    except state.StageBusy as e:
        report(f"{name}: {e}")
        return "busy"
    try:
        # Decided again under the lock: another runner may have finished it meanwhile.
        now = state.stage_status(stage.directory).state
        if now == "done":
            return "skipped"
        if now == "failed" and not retry_failed:
            return "failed"
        report(f"{name}: {_describe(stage)} ...")
        state.write_provenance(stage.directory, {
            "identity": stage.identity, "identity_record": identity_record(plan, name)})
        state.mark_started(stage.directory)
        start = time.perf_counter()
        try:
            execute(plan, stage)
        except Exception as error:  # pylint: disable=broad-exception-caught
            if isinstance(error, Preempted):  # saved where it stopped; the next run resumes
                state.append_event(stage.directory, "interrupted", reason=str(error))
                raise
            state.mark_failed(stage.directory, error)
            report(f"{name}: FAILED: {' '.join(str(error).split())[:300]} "
                   f"(traceback in {stage.directory / 'error.txt'})")
            return "failed"
        state.mark_finished(stage.directory)
        state.point(plan.root, name, stage.directory.name)
        report(f"{name}: done in {time.perf_counter() - start:.0f} s")
        return "ran"
    finally:
        lock.release()


def execute(plan: Plan, stage: Stage) -> None:
    """Runs one stage in this process (its lock is held by the caller)."""
    if stage.kind == "train":
        from harness.train.loop import run  # JAX: only when something trains

        run(stage.config, progress=False)
    elif stage.kind == "import":
        from harness.storage.convert import convert_hf_t5

        convert_hf_t5(stage.source, stage.directory)
        if stage.vocabulary:
            from harness.storage import checkpoint

            checkpoint.update_config(stage.directory, {checkpoint.VOCABULARY_KEY: stage.vocabulary})
    else:
        from harness.eval.evaluate import evaluate_checkpoint, split_tasks

        upstream = plan.stages[stage.upstream]
        settings = plan.grid.eval
        tasks = settings.tasks
        if tasks is not None:  # one list for every suite: each stage takes its own suite's
            tasks = split_tasks(list(dict.fromkeys([*settings.suites, stage.suite])),
                                tasks).get(stage.suite)
            if not tasks:
                raise ValueError(f"eval.tasks {list(settings.tasks)}: none is a task of suite "
                                 f"{stage.suite!r}; add one, or drop the suite from this cell")
        results = stage.directory / "results"
        if results.exists():  # an interrupted evaluation starts over; its results were partial
            shutil.rmtree(results)
        evaluate_checkpoint(upstream.directory, [stage.suite], step=stage.upstream_step,
                            tasks=tasks, limit=settings.limit,
                            data_dir=settings.data_dir, fixtures=settings.fixtures,
                            batch_size=settings.batch_size, out_dir=results,
                            length_buckets=settings.length_buckets,
                            bootstrap_iters=settings.bootstrap_iters,
                            max_prompts=settings.max_prompts,
                            report=lambda line: None, progress=False)


def write_index(plan: Plan) -> None:
    """``<runs>/<grid>/index.md`` and ``index.json``: every stage, its status and directory."""
    current = statuses(plan)
    rows = [{"stage": name, "kind": stage.kind, "status": current[name],
             "directory": stage.directory.name, "identity": stage.identity[:12],
             "cells": ", ".join(stage.cells)}
            for name, stage in plan.stages.items()]
    grid = plan.grid
    state.write_index(plan.root, rows, grid={
        "grid": grid.name, "grid_file": str(grid.path), "scale": grid.scale,
        "pretrain_steps": grid.pretrain_steps, "seed": grid.seed, "variant": grid.variant,
        "world": None if grid.world is None else {**dataclasses.asdict(grid.world),
                                                  "directory": str(plan.world)},
        "compute": dataclasses.asdict(grid.compute)})


def _describe(stage: Stage) -> str:
    if stage.kind == "train":
        config = stage.config
        return (f"{config.stage.kind} {config.model.architecture}:{config.data.objective}, "
                f"{stage.steps} steps")
    if stage.kind == "eval":
        return f"{stage.suite} on {stage.upstream} step {stage.upstream_step}"
    return f"convert {stage.source}"
