"""One training stage: a ``RunConfig`` in, a run directory out (STYLE.md B1, B2.5-B2.7).

    runs/<name>/config.json      the fully resolved config, written before step 0
    runs/<name>/metrics.jsonl    one JSON object per logged step
    runs/<name>/checkpoints/     params + optimizer state + meta (step, rng, data position)

Stages (PAPER.md 1.3):
  pretrain   parameters from scratch.
  adapt      parameters from ``stage.init_from`` (another run directory); the architecture may switch
             between cd and nd (same parameter tree) and the objective may change: LM-adaptation of
             nd:mlm into cd:flm, non-causal MLM adaptation of cd:flm into nd:mlm.
  finetune   parameters from ``stage.init_from``, multitask data.
The optimizer state starts fresh when a stage starts from another run, unless ``optim.carry_state``.

Resume is exact: a stage restarted in the same run directory restores parameters, optimizer state,
step and RNG from the newest restorable checkpoint, and its data stream restarts at that step
(``harness/train/data.py``), so the losses continue bit for bit as if the run had never stopped. It
resumes only with the configuration it started with, records the restart in ``config.json`` and
logs each step once (``harness/train/run_record.py``).

The data stream resumes from the input pipeline's state saved in the checkpoint (t5x's
``save_dataset``: a cost that does not grow with the step), or, for a checkpoint without one (written
before states were saved) or with one that cannot be read, by replaying the stream up to the step;
one log line says which. Both are exact. A pipeline whose state cannot be saved is said once (by the
checkpointer), and its checkpoints hold none.

Start-up is logged in one line when the first step of an invocation is done: how long each phase
took (checks, model state, data: build, position, first batch; compile and first step) and the wall
time (``first step done at <unix time>``, which ``archobj bench resume`` reads).

Nothing is written and nothing compiled before ``preflight`` has checked the configuration, the
files it names and the run directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import pathlib
import signal
import sys
import threading
import time
from typing import Any, Iterator, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec

from harness.train import config as config_lib
from harness.train import run_record
from harness.storage.checkpoint import load_model, read_config, tree_differences
from harness.train.optim import logical_axes_of, make_optimizer, make_schedule
from harness.train.state import TrainState, create_train_state, state_shardings
from harness.train.steps import make_train_step
from harness.train.train_checkpoint import TrainCheckpointer, rng_from_meta
from models import sharding
from models.transformer import Transformer, init_fn
from models.transformer import abstract_params as models_abstract_params

log = logging.getLogger("archobj.train")
METRICS_FILE = run_record.METRICS_FILE


class NonFiniteError(RuntimeError):
    """The loss or gradient became NaN or infinite; the bad update was not applied or saved."""


# Signals that ask a stage to stop soon: SLURM sends SIGUSR2 before a time limit or preemption
# (sbatch --signal) and SIGTERM before it kills; `kill PID` sends SIGTERM. Ctrl-C (SIGINT) still
# stops at once. The stage saves where it is and raises run_record.Preempted.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)
STOP_CHECK_EVERY = 10  # steps between the hosts' agreement on a stop (several hosts only)


@dataclasses.dataclass(frozen=True)
class StageResult:
    """What a finished (or resumed-and-finished) stage reports."""

    run_dir: pathlib.Path
    first_step: int            # the step this invocation started from (0, or the resumed step)
    last_step: int
    losses: list[float]        # per step of this invocation, in order
    skipped_checkpoints: tuple  # damaged checkpoints skipped on restore: ((step, reason), ...)


def _batches(config: config_lib.RunConfig, start_step: int = 0) -> Any:
    """The stage's ``harness.train.data.Batches``, replayed to ``start_step``."""
    from harness.train import data

    host = {"start_step": start_step, "host_index": jax.process_index(),
            "num_hosts": jax.process_count()}
    if config.data.objective == "mtf":
        lengths = config.task_lengths()
        return data.mtf_batches(config.model.architecture, config.data.source,
                                config.data.vocabulary, config.train.batch_size,
                                inputs_length=lengths["inputs"], targets_length=lengths["targets"],
                                seed=config.data.seed, pack=config.data.pack, **host)
    spec = data.DataSpec(architecture=config.model.architecture, objective=config.data.objective,
                         source=config.data.source, vocabulary=config.data.vocabulary,
                         total_length=config.data.total_length, text_field=config.data.text_field,
                         seed=config.data.seed, pack=config.data.pack)
    return data.pretraining_batches(spec, config.train.batch_size, **host)


def _position_stream(batches: Any, checkpointer: TrainCheckpointer, start: int) -> str:
    """Positions a fresh stream at the first batch of step ``start``; returns how, in a few words.

    From the data state saved with checkpoint ``start`` if it has one that restores; else by
    replaying ``start`` batches (exact too, and what checkpoints written before data states were
    saved resume with). One log line says which.
    """
    from harness.train.data import DataStateError

    if start == 0:
        return "from the start"
    prefix = checkpointer.data_state(start)
    if prefix is None:
        log.warning("data: checkpoint %d holds no input-pipeline state (written before states were "
                    "saved, by another number of processes, or by a pipeline that cannot save "
                    "one); replaying %d batches", start, start)
    else:
        try:
            batches.restore_state(str(prefix))
            log.info("data: restored the input pipeline's state saved at step %d", start)
            return "restored state"
        except DataStateError as e:
            log.warning("data: cannot restore the input pipeline's state (%s); replaying %d "
                        "batches instead", e, start)
    batches.skip(start)
    return f"replayed {start} batches"


def _initial_params(config: config_lib.RunConfig, abstract_params: Any, param_shardings: Any,
                    mesh: Any, check_only: bool = False) -> Any:
    """Parameters for step 0: fresh (pretrain) or from ``stage.init_from`` (adapt, finetune).

    ``check_only``: only compare ``stage.init_from``'s parameter tree with the model's.
    """
    if config.stage.init_from is None:
        variables, _ = sharding.init_sharded(init_fn(config.model_config()),
                                             jax.random.key(config.train.seed), mesh)
        return variables["params"]
    # Compare the trees from the stored config before reading any weights: cd and nd share one
    # tree (the study's adaptations switch between them); anything else must match exactly.
    stored_config = read_config(config.stage.init_from)
    want = {p: tuple(l.shape) for p, l in _flat(abstract_params).items()}
    got = {p: tuple(l.shape) for p, l in _flat(models_abstract_params(stored_config)).items()}
    if want != got:
        raise ValueError(
            f"stage.init_from={config.stage.init_from}: its {stored_config.architecture} parameter "
            f"tree does not fit the {config.model.architecture} model: {tree_differences(want, got)}")
    if check_only:
        return None
    _, params = load_model(config.stage.init_from, step=config.stage.init_step,
                           shardings=param_shardings)
    return params


def _carried_state(config: config_lib.RunConfig, abstract_params: Any, abstract_opt: Any,
                   shardings: Any) -> tuple[Any, Any, int]:
    """``optim.carry_state``: the optimizer state and step count of ``stage.init_from``.

    The upstream run is only read (no ``model_config``: its ``config.json`` stays as it is).
    """
    upstream = TrainCheckpointer(config.stage.init_from, every=1, keep=None)
    try:
        if upstream.is_empty():
            raise ValueError(
                f"optim.carry_state=True: {config.stage.init_from} has no training checkpoints "
                "with optimizer state (a converted or exported model has parameters only); set "
                "optim.carry_state=false")
        step = config.stage.init_step
        if step is None:
            step = max(upstream.all_steps())
        _, params, opt_state, meta = upstream.restore(
            step, abstract_params=abstract_params, abstract_opt_state=abstract_opt,
            shardings={"params": shardings.params, "opt_state": shardings.opt_state})
    finally:
        upstream.close()
    return params, opt_state, int(meta["state_step"])


def _flat(tree: Any) -> dict[str, Any]:
    return {"/".join(str(getattr(k, "key", k)) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


class _MetricsWriter:
    """``metrics.jsonl`` (appended, so a resumed run continues the file) plus TensorBoard.

    ``purge_step``: a resumed run logs again from this step on; TensorBoard hides what an earlier
    events file holds from there (``metrics.jsonl`` was cut back by ``run_record``).
    """

    def __init__(self, run_dir: pathlib.Path, enabled: bool,
                 purge_step: Optional[int] = None) -> None:
        self.enabled = enabled
        self.file = open(run_dir / METRICS_FILE, "a") if enabled else None
        self.tensorboard = None
        if enabled:
            try:
                from tensorboardX import SummaryWriter
                self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"),
                                                 purge_step=purge_step)
            except ImportError:  # TensorBoard is optional; metrics.jsonl is the record
                pass

    def write(self, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tensorboard is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def preflight(config: config_lib.RunConfig) -> Optional[dict[str, list[Any]]]:
    """Every check a stage makes before it writes or compiles anything, in well under a second.

    The sections fit together and the devices (``config.validate``), the files the stage reads are
    there (``config.check_inputs``), and the run directory is new or holds this very run
    (``run_record.check_resume``).

    Returns:
      ``run_record.check_resume``'s answer: None for a new run, else the resumable fields that
      changed.

    Raises:
      ValueError: the first problem, in one line.
    """
    config_lib.validate(config, jax.device_count())
    config_lib.check_inputs(config)
    return run_record.check_resume(config)


def run(config: config_lib.RunConfig, progress: Optional[bool] = None) -> StageResult:
    """Runs (or resumes) one training stage; see the module docstring."""
    clock = _StartupClock()
    changed = preflight(config)  # None: a new run
    clock.mark("checks")
    run_dir = pathlib.Path(config.run_dir)
    model_config = config.model_config()
    train, optim = config.train, config.optim
    # Shapes and logical axes, computed before entering the mesh context: unboxing there would try
    # to apply sharding constraints to abstract values.
    abstract = jax.eval_shape(init_fn(model_config), jax.random.key(0))
    schedule = make_schedule(optim.schedule, optim.learning_rate, optim.warmup_steps, train.steps,
                             offset=optim.schedule_offset)
    optimizer = make_optimizer(optim.name, schedule, logical_axes=logical_axes_of(
                                   abstract["params"]), decay_rate=optim.decay_rate,
                               weight_decay=optim.weight_decay, beta1=optim.beta1,
                               beta2=optim.beta2, grad_clip=optim.grad_clip)
    is_main = jax.process_index() == 0
    if is_main and changed is None:
        config_lib.write_resolved(config)
    mesh = sharding.make_mesh(*config.mesh.shape(jax.device_count()))
    losses: list[float] = []

    param_shardings = sharding.logical_to_shardings(abstract, mesh)["params"]
    abstract_params = nn.meta.unbox(abstract)["params"]

    with sharding.mesh_context(mesh), contextlib.ExitStack() as stack:
        shardings = state_shardings(param_shardings, optimizer, abstract_params, mesh)
        checkpointer = TrainCheckpointer(
            run_dir, every=config.checkpoint.every, keep=config.checkpoint.keep,
            keep_steps=config.checkpoint.keep_steps, async_save=config.checkpoint.async_save,
            model_config=model_config)
        make_state = jax.jit(lambda p: create_train_state(p, optimizer), out_shardings=shardings)
        skipped: tuple = ()
        partial = checkpointer.partial_steps()
        if partial and not checkpointer.all_steps():
            # The stop came during the first save: there is nothing to resume from. The partial
            # save is set aside (not deleted) by the next save.
            log.warning("checkpoint %s was never committed (the run stopped while saving it); "
                        "starting from step 0", ", ".join(map(str, partial)))
        if checkpointer.all_steps():
            abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
            start, params, opt_state, meta = checkpointer.restore(
                abstract_params=abstract_params, abstract_opt_state=abstract_opt,
                shardings={"params": shardings.params, "opt_state": shardings.opt_state})
            skipped = checkpointer.last_restore.skipped  # each logged once by the checkpointer
            state = TrainState(step=jax.device_put(jnp.int32(meta["state_step"]), shardings.step),
                               params=params, opt_state=opt_state)
            rng, tokens_seen = rng_from_meta(meta), int(meta["tokens_seen"])
            tokens_trained = float(meta.get("tokens_trained", 0.0))
            log.info("resumed %s at step %d", run_dir, start)
            clock.mark("model state (restored)")
        elif optim.carry_state:
            start, rng, tokens_seen, tokens_trained = 0, jax.random.key(train.seed), 0, 0.0
            _initial_params(config, abstract_params, None, mesh, check_only=True)
            params, opt_state, upstream_step = _carried_state(
                config, abstract_params, jax.eval_shape(optimizer.init, abstract_params),
                shardings)
            state = TrainState(step=jax.device_put(jnp.int32(upstream_step), shardings.step),
                               params=params, opt_state=opt_state)
            log.info("carried optimizer state and step %d from %s", upstream_step,
                     config.stage.init_from)
            clock.mark("model state (carried)")
        else:
            start, rng, tokens_seen, tokens_trained = 0, jax.random.key(train.seed), 0, 0.0
            state = make_state(_initial_params(config, abstract_params, param_shardings, mesh))
            clock.mark("model state (new)" if config.stage.init_from is None else
                       "model state (from stage.init_from)")

        if changed is not None and (start < train.steps or changed):
            # A restart: each step is logged once, and the restart is recorded, never rewritten.
            dropped = run_record.drop_metrics_after(run_dir, start) if is_main else 0
            if dropped:
                log.info("dropped %d metric records past step %d (they are logged again)",
                         dropped, start)
            if is_main:
                config_lib.write_resolved(
                    config, resume=run_record.resume_entry(start, changed, dropped))
        if start >= train.steps:
            checkpointer.close()
            return StageResult(run_dir=run_dir, first_step=start, last_step=start, losses=[],
                               skipped_checkpoints=skipped)

        batch_sharding = NamedSharding(mesh, PartitionSpec(sharding.DATA))
        step_fn = _jitted_step(config, mesh, lambda: jax.jit(
            make_train_step(Transformer(model_config, enable_dropout=True), optimizer, schedule,
                            z_loss=train.z_loss, loss_normalization=train.loss_normalization,
                            num_microbatches=train.microbatches),
            in_shardings=(shardings, batch_sharding, None), out_shardings=(shardings, None),
            donate_argnums=0))
        writer = _MetricsWriter(run_dir, is_main,
                                purge_step=None if changed is None else start + 1)
        bar = _progress_bar(start, train.steps, progress)
        flops_per_step = config_lib.flops_per_row(config) * train.batch_size
        batches = _batches(config)
        clock.mark("data: build")
        clock.mark(f"data: position ({_position_stream(batches, checkpointer, start)})")
        stop = stack.enter_context(_stop_on_signals())
        pending: Optional[tuple[int, Any, int]] = None  # (step, metrics, tokens seen), one step late
        window_start, window_tokens = time.perf_counter(), 0

        def finish(step: int, metrics: Any, seen_so_far: int) -> None:
            """Host side of ``step`` (1-based): finiteness, logging. Runs one step late."""
            nonlocal window_start, window_tokens, tokens_trained
            values = jax.device_get(metrics)
            if not values["finite"]:
                raise NonFiniteError(
                    f"step {step}: loss or gradient is not finite (loss={float(values['loss'])}, "
                    f"grad_norm={float(values['grad_norm'])}); the update was not applied and no "
                    f"checkpoint after step {step - 1} was written; lower optim.learning_rate or "
                    "restart from the last checkpoint")
            losses.append(float(values["loss"]))
            tokens_trained += float(values["tokens_trained"])  # cumulative, like tokens_seen
            if step % train.log_every == 0 or step == train.steps:
                elapsed = time.perf_counter() - window_start
                steps_in_window = min(train.log_every, step - start) or 1
                record = {**{k: float(v) for k, v in values.items()},
                          "step": step, "tokens_seen": seen_so_far,
                          "tokens_trained": tokens_trained,
                          "step_seconds": elapsed / steps_in_window,
                          "tokens_per_second": window_tokens / elapsed,
                          "model_flops_per_second": flops_per_step * steps_in_window / elapsed}
                writer.write(record)
                bar.update(step, record)
                window_start, window_tokens = time.perf_counter(), 0

        try:
            for step in range(start, train.steps):
                if _stop_requested(stop, step):
                    # Save where we are (off the checkpoint.every grid) and leave: the restarted
                    # stage resumes from exactly this step.
                    if pending is not None:
                        finish(*pending)
                        pending = None
                    if step > start:
                        checkpointer.save(step, state.params, state.opt_state,
                                          {"rng": rng, "tokens_seen": tokens_seen,
                                           "tokens_trained": tokens_trained,
                                           "state_step": int(state.step)}, force=True,
                                          data=batches)
                    checkpointer.wait()
                    raise run_record.Preempted(run_dir, step, stop[0])
                batch = next(batches)
                if step == start:
                    clock.mark("data: first batch")
                seen = sum(int(np.count_nonzero(batch[k])) for k in
                           ("decoder_target_tokens", "encoder_input_tokens") if k in batch)
                state, metrics = step_fn(state, jax.device_put(dict(batch), batch_sharding), rng)
                if step == start:  # one wait, for the start-up record
                    jax.block_until_ready(metrics)
                    clock.mark("compile and first step")
                    clock.report(step + 1)
                if pending is not None:
                    finish(*pending)
                tokens_seen += seen * jax.process_count()
                window_tokens += seen * jax.process_count()
                pending = (step + 1, metrics, tokens_seen)
                if checkpointer.should_save(step + 1) or step + 1 == train.steps:
                    finish(*pending)  # never checkpoint a state whose update was rejected
                    pending = None
                    # The stage's last step is saved even off the checkpoint.every grid: it is
                    # what the next stage starts from and what a re-run finds finished.
                    checkpointer.save(step + 1, state.params, state.opt_state,
                                      {"rng": rng, "tokens_seen": tokens_seen,
                                       "tokens_trained": tokens_trained,
                                       "state_step": int(state.step)},
                                      force=step + 1 == train.steps, data=batches)
            if pending is not None:
                finish(*pending)
        finally:
            checkpointer.close()
            writer.close()
            bar.close()
    return StageResult(run_dir=run_dir, first_step=start, last_step=train.steps, losses=losses,
                       skipped_checkpoints=skipped)


# The jitted training steps of this process, by what decides them (``_jitted_step``).
_STEPS: dict[str, Any] = {}
_MAX_STEPS = 8


def _jitted_step(config: config_lib.RunConfig, mesh: Any, make: Any) -> Any:
    """The jitted step of ``config`` on ``mesh``: ``make()``, or the one an earlier stage of this
    process made for the same step.

    A grid runs many stages in one process, and many of them step the same function: every MTF of
    an architecture, or pretrainings of one architecture with different objectives (the objective
    lives in the batches, not the step). Reusing the jitted function reuses its compiled
    executable, where a new one traces and lowers the step again and looks it up in the persistent
    cache: about 2 s per stage of the tiny grid. The step is decided by the model, optimizer and
    training settings and by the mesh, and all of them are the key; a stage whose key differs in
    any field, even one the step does not read (``train.log_every``), makes its own.
    """
    key = json.dumps({"model": config.model_config().to_dict(),
                      "optim": dataclasses.asdict(config.optim),
                      "train": dataclasses.asdict(config.train),
                      "mesh": [list(mesh.axis_names), list(mesh.devices.shape),
                               [int(d.id) for d in mesh.devices.flat]]},
                     sort_keys=True, default=str)
    if key not in _STEPS:
        if len(_STEPS) >= _MAX_STEPS:  # the oldest goes: a grid moves from stage to stage
            del _STEPS[next(iter(_STEPS))]
        _STEPS[key] = make()
    return _STEPS[key]


class _StartupClock:
    """Times the phases of a stage's start-up; ``report`` logs them in one line."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.phases: list[tuple[str, float]] = []

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases.append((phase, now - self.last))
        self.last = now

    def report(self, step: int) -> None:
        phases = ", ".join(f"{name} {seconds:.2f}" for name, seconds in self.phases)
        log.info("start-up: %.2f s to step %d (%s); first step done at %.3f",
                 self.last - self.start, step, phases, time.time())


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[list[int]]:
    """While active, ``STOP_SIGNALS`` are recorded in the yielded list instead of killing us."""
    requested: list[int] = []
    if threading.current_thread() is not threading.main_thread():  # signals need the main thread
        yield requested
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda number, frame: requested.append(number))
    try:
        yield requested
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stop_requested(requested: list[int], step: int) -> bool:
    """Whether to stop now; on several hosts, every host stops at the same step.

    Hosts agree through an all-gather, which waits for the host; so they ask only every
    ``STOP_CHECK_EVERY`` steps, keeping the step loop asynchronous in between (SLURM's warning
    comes minutes ahead).
    """
    if jax.process_count() == 1:
        return bool(requested)
    if step % STOP_CHECK_EVERY:
        return False
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(bool(requested)))))


class _progress_bar:
    """tqdm with ETA on a terminal; plain log lines otherwise."""

    def __init__(self, start: int, total: int, enabled: Optional[bool]) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.bar = None
        if self.enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
        self.last = start

    def update(self, step: int, record: Mapping[str, Any]) -> None:
        if self.bar is not None:
            self.bar.update(step - self.last)
            self.bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_second']:,.0f}")
        else:
            log.info("step %d loss %.4f lr %.3g %.0f tokens/s", step, record["loss"],
                     record["learning_rate"], record["tokens_per_second"])
        self.last = step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
