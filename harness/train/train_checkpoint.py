"""Checkpoints of a whole training stage: parameters, optimizer state and loop state.

A training run uses the same directory format as ``harness.storage.checkpoint`` (``config.json`` plus
``checkpoints/<step>/``), with two items beside ``params``::

    <run_dir>/
      config.json                 {"model": ModelConfig.to_dict(), ...}
      checkpoints/
        2000/params/...           ocp.args.StandardSave, exactly as save_model writes it
        2000/opt_state/...        ocp.args.StandardSave of the optimizer state pytree
        2000/meta/metadata        ocp.args.JsonSave: {"step", "rng", "rng_impl", "data_position",
                                  "tokens_seen", ...extra keys of the loop}
        2000/data/iterator-0-of-1.index, .data-00000-of-00001
                                  the input pipeline's state (``save(data=...)``): one
                                  ``tf.train.Checkpoint`` of the tf.data iterator per process,
                                  named ``iterator-<process index>-of-<process count>`` (t5x's
                                  ``save_dataset``); absent in checkpoints saved without it

so ``harness.storage.checkpoint.load_model(run_dir)`` loads the parameters of any training step.

The data state is written inside the step, before ``save`` returns, while orbax still writes into
the step's temporary directory: it is committed with the step, or not at all. It is optional on
restore: ``data_state(step)`` says whether this process's file is there, and the caller
(``harness/train/loop.py``) restores it with ``harness.train.data.Batches.restore_state``, or
replays the stream when it is absent (a checkpoint written before data states were saved) or
damaged. A step is never skipped for its data state: replaying is exact, only slower.

Which steps survive garbage collection: the newest ``keep`` steps, plus every step named in
``keep_steps`` (the study's 42B/84B/168B-token checkpoints), forever. orbax 0.12.8 has no
``should_keep_fn``; ``CheckpointManagerOptions.preservation_policy`` takes the place of
``max_to_keep``/``keep_period`` (the two are mutually exclusive): here ``AnyPreservationPolicy(
[LatestN(keep), CustomSteps(keep_steps)])``.

Resuming after a crash: ``restore()`` without a step tries the newest step first. A step that was
never committed (an orphaned ``<step>.orbax-checkpoint-tmp`` directory: the process died mid-save)
or whose files are missing or truncated (restoring it raises) is skipped, and the previous step is
tried, and so on (each attempt logged at DEBUG). Nothing is deleted while doing so. Once a step is
restored, one warning per skipped step names it and why (a few words: "params: data truncated in
<array>", "opt_state: file missing: <path>"), and ``last_restore`` tells the caller which step was
used and which were skipped. If no step can be restored, ``CheckpointError`` lists every step tried
and why, in one line; the caller never silently starts from scratch. A failed read leaves nothing
running behind it (orbax's other reads of the item are waited for), so nothing else is printed.

The next ``save`` moves every committed step that failed to restore aside to
``checkpoints/<step>.corrupt-<time>``, and the orphaned temporary directory of the step it saves
(which orbax would delete) to ``<step>.partial-<time>``. Orbax and ``load_model`` ignore those
names, so they are kept for inspection, never garbage collected, and the resumed run can write the
step afresh when it gets there again (a named step is never lost to damage).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import re
import time
from typing import Any, Iterable, Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import linen as nn

from harness.storage import orbax_damage
from harness.storage.checkpoint import (CHECKPOINTS_DIR, CONFIG_FILE, PARAMS_ITEM, CheckpointError,
                                PathLike, one_line, path_str, tree_differences,
                                updated_config_document, write_json_atomically, abbreviate,
                                available_steps)
from models.config import ModelConfig
from models.transformer import abstract_params as model_abstract_params

OPT_STATE_ITEM = "opt_state"
META_ITEM = "meta"
DATA_ITEM = "data"
# Keys of the "meta" item that the checkpointer fills in itself; the loop may add any others.
META_KEYS = ("step", "rng", "rng_impl", "data_position", "tokens_seen")

# orbax writes a step into "<step>.orbax-checkpoint-tmp" and renames it when the save is committed.
_TMP_SUFFIX = ".orbax-checkpoint-tmp"
_TMP_NAME = re.compile(r"^(0|[1-9]\d*)" + re.escape(_TMP_SUFFIX))

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RestoreReport:
    """What ``TrainCheckpointer.restore`` did.

    Attributes:
      step: the step that was restored.
      skipped: ``(step, reason)`` for every newer step that could not be restored, newest first.
    """

    step: int
    skipped: tuple[tuple[int, str], ...] = ()


class TrainCheckpointer:
    """Saves and restores whole training states in ``<run_dir>/checkpoints`` (see module doc).

    Use it as a context manager, or call ``close()``: an asynchronous save is only durable once
    ``wait()`` (or ``close()``) has returned.
    """

    def __init__(self, run_dir: PathLike, *, every: int, keep: Optional[int] = 3,
                 keep_steps: Iterable[int] = (), async_save: bool = True,
                 model_config: Optional[ModelConfig] = None) -> None:
        """Opens (or creates) the checkpoints of a run directory.

        Args:
          run_dir: the run directory (``runs/<cell>/<stage>``); created if missing.
          every: save every ``every`` steps (``save`` without ``force`` skips other steps).
          keep: how many of the newest steps to keep; None keeps every step.
          keep_steps: steps that are always saved (even off the ``every`` grid) and never garbage
            collected.
          async_save: write in a background thread; ``save`` returns after the device-to-host copy.
          model_config: if given, ``config.json`` is made to hold it (written if missing, other keys
            kept), and every ``save`` checks the parameter names and shapes against it, so that
            ``harness.storage.checkpoint.load_model(run_dir)`` can read the run.

        Raises:
          CheckpointError: for a bad option, or a ``config.json`` that holds a different model
            while checkpoints already exist.
        """
        self.run_dir = pathlib.Path(run_dir).absolute()  # orbax wants absolute paths
        self.directory = self.run_dir / CHECKPOINTS_DIR
        if not _is_count(every) or every < 1:
            raise CheckpointError(f"{self.run_dir}: every={every!r} must be an integer >= 1")
        if keep is not None and (not _is_count(keep) or keep < 1):
            raise CheckpointError(
                f"{self.run_dir}: keep={keep!r} must be an integer >= 1, or None to keep all steps")
        keep_steps = tuple(keep_steps)
        if not all(_is_count(s) and s >= 0 for s in keep_steps):
            raise CheckpointError(
                f"{self.run_dir}: keep_steps={keep_steps!r} must be non-negative integers")
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise CheckpointError(f"{self.run_dir}: exists and is not a directory")
        self.every = every
        self.keep = keep
        self.keep_steps = frozenset(keep_steps)
        self.model_config = model_config
        self.last_restore: Optional[RestoreReport] = None
        # Committed steps that ``restore`` found damaged, with the reason; the next save moves
        # them aside (so garbage collection never deletes them).
        self._unrestorable: dict[int, str] = {}
        self._expected_params: Optional[dict[str, tuple[int, ...]]] = None
        self._barriers = 0  # makes the names of multi-process barriers unique

        if model_config is not None:
            document = updated_config_document(self.run_dir, model_config,
                                                available_steps(self.run_dir))
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if jax.process_index() == 0:
                write_json_atomically(self.run_dir / CONFIG_FILE, document)

        options = ocp.CheckpointManagerOptions(
            save_interval_steps=every,
            save_on_steps=self.keep_steps,
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy([
                ocp.checkpoint_managers.LatestN(n=keep),
                ocp.checkpoint_managers.CustomSteps(sorted(self.keep_steps))]),
            enable_async_checkpointing=async_save,
            create=True,
            # Orphaned temporary directories are evidence of a crash: keep them for inspection.
            cleanup_tmp_directories=False)
        self._manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={PARAMS_ITEM: ocp.StandardCheckpointHandler(),
                           OPT_STATE_ITEM: ocp.StandardCheckpointHandler(),
                           META_ITEM: ocp.JsonCheckpointHandler(),
                           DATA_ITEM: DataStateHandler()})

    # ---------------------------------------------------------------------------------------------
    # Saving.
    # ---------------------------------------------------------------------------------------------

    def should_save(self, step: int) -> bool:
        """Whether ``save(step, ...)`` without ``force`` writes: on the ``every`` grid or named."""
        return step in self.keep_steps or step % self.every == 0

    def save(self, step: int, params: Any, opt_state: Any, meta: Mapping[str, Any], *,
             force: bool = False, data: Any = None) -> bool:
        """Saves one training state under ``checkpoints/<step>`` (asynchronously if configured).

        Returns once the arrays are copied to host memory: the caller may then donate or overwrite
        them. A save issued while the previous one is still being written first waits for it.

        Args:
          step: the training step (number of optimizer updates applied to ``params``).
          params: the parameter tree (boxed or not), stored exactly as given (no cast).
          opt_state: the optimizer state pytree (e.g. an optax state).
          meta: ``{"rng": PRNG key (typed or raw uint32), "tokens_seen": int, "data_position":
            int (default: step), ...}``; extra keys must be JSON-serialisable (numpy and jax scalars
            and arrays are converted). ``"step"``, if present, must equal ``step``.
          force: save even if ``should_save(step)`` is False.
          data: the input stream (``harness.train.data.Batches``) positioned at the first batch of
            step ``step``, or None; its state is written into the step (module doc) before this
            returns, so the caller may read on at once.

        Returns:
          True if a save was started, False if the step is not on the schedule.

        Raises:
          CheckpointError: before anything is written, if ``step`` already exists (it is never
            overwritten; one that this checkpointer found damaged is moved aside first), if
            ``meta`` is invalid or if the parameters do not match ``model_config``; or if a
            previous asynchronous save failed.
        """
        if not _is_count(step) or step < 0:
            raise CheckpointError(f"{self.directory}: step={step!r} must be a non-negative integer")
        if not force and not self.should_save(step):
            return False
        damaged = step in self._manager.all_steps() and step in self._unrestorable
        if step in self._manager.all_steps() and not damaged:
            raise CheckpointError(
                f"{self.directory / str(step)}: step {step} already exists and is never "
                f"overwritten; save a later step (latest saved: {self._manager.latest_step()})")
        document = _meta_document(step, meta, where=f"{self.directory / str(step)}")
        params = nn.meta.unbox(params)
        self._check_params(params, step)

        # Damaged leftovers are moved aside, never deleted: the committed steps that failed to
        # restore (else garbage collection would delete them later), and this step's uncommitted
        # temporary directory (which orbax would delete before writing the step).
        leftovers = [(s, self.directory / str(s), "corrupt") for s in sorted(self._unrestorable)
                     if (self.directory / str(s)).is_dir()]
        leftovers += [(step, path, "partial") for path in self._orphans().get(step, [])]
        if leftovers:
            self.wait()  # reload() below must not lose track of a save still in flight
            for old_step, path, kind in leftovers:
                kept = self._set_aside(path, old_step, kind)
                logger.warning("%s: moved the %s step %d aside to %s (kept for inspection)",
                               self.directory, kind, old_step, kept.name)
            self._unrestorable.clear()
            self._manager.reload()

        items = {PARAMS_ITEM: ocp.args.StandardSave(params),
                 OPT_STATE_ITEM: ocp.args.StandardSave(opt_state),
                 META_ITEM: ocp.args.JsonSave(document)}
        if data is not None:
            items[DATA_ITEM] = DataStateSave(data)
        args = ocp.args.Composite(**items)
        try:
            # force=True: the schedule was decided above; orbax's own policy would also skip
            # every step below the newest one on disk, even one that was skipped as damaged.
            return self._manager.save(step, args=args, force=True)
        except CheckpointError:
            raise
        except Exception as e:  # pylint: disable=broad-exception-caught
            # Includes the failure of a previous asynchronous save, which orbax re-raises here.
            raise CheckpointError(
                f"{self.directory}: saving step {step} failed ({one_line(e)})") from e

    def wait(self) -> None:
        """Blocks until every save in flight is committed.

        Raises:
          CheckpointError: if a background save failed.
        """
        try:
            self._manager.wait_until_finished()
            self._manager.check_for_errors()
        except Exception as e:  # pylint: disable=broad-exception-caught
            raise CheckpointError(
                f"{self.directory}: a background save failed ({one_line(e)}); the step it was "
                "writing is not committed") from e

    def close(self) -> None:
        """Waits for saves in flight (raising if one failed) and releases the manager."""
        try:
            self.wait()
        finally:
            self._manager.close()

    def __enter__(self) -> "TrainCheckpointer":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------------
    # Reading.
    # ---------------------------------------------------------------------------------------------

    def all_steps(self) -> list[int]:
        """Committed steps, ascending (waits for saves in flight; includes damaged steps)."""
        self.wait()
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def partial_steps(self) -> list[int]:
        """Steps that have only an uncommitted temporary directory (a save that never finished)."""
        self.wait()
        return sorted(s for s in self._orphans() if s not in self._manager.all_steps())

    def is_empty(self) -> bool:
        """True if the run has neither a committed step nor a partial save: start from scratch."""
        return not self.all_steps() and not self.partial_steps()

    def data_state(self, step: int) -> Optional[pathlib.Path]:
        """This process's data-state prefix in committed step ``step``, or None if it has none.

        None for a checkpoint written without a stream (before data states were saved, or by a
        pipeline that cannot save one) or by another number of processes. Whether the files read
        is for the stream's ``restore_state`` to say.
        """
        prefix = self.directory / str(step) / DATA_ITEM / data_state_name()
        return prefix if prefix.with_name(prefix.name + ".index").is_file() else None

    def restore(self, step: Optional[int] = None, *, abstract_params: Any,
                abstract_opt_state: Any, shardings: Optional[Mapping[str, Any]] = None,
                ) -> tuple[int, Any, Any, dict[str, Any]]:
        """Restores a training state, by default the newest one that can be restored.

        Args:
          step: the step to restore; None tries the newest step and falls back to older ones
            (see module doc). An explicit step never falls back.
          abstract_params: the parameter tree of ``jax.ShapeDtypeStruct`` (or arrays; boxed or
            not), e.g. ``models.transformer.abstract_params(config)``.
          abstract_opt_state: the optimizer state's tree, e.g. ``jax.eval_shape(tx.init,
            abstract_params)``.
          shardings: where to put each item: ``{"params": ..., "opt_state": ...}``, each a tree of
            ``jax.sharding.Sharding`` matching the abstract tree, or one ``Sharding`` for every
            leaf. An item left out uses its abstract leaves' ``.sharding`` if set, else the first
            device. The mesh need not be the one the checkpoint was saved from.

        Returns:
          ``(step, params, opt_state, meta)``; ``meta`` as saved (``rng_from_meta(meta)`` rebuilds
          the key). ``self.last_restore`` says which steps were skipped, and why; each is also
          logged as one warning.

        Raises:
          CheckpointError: if no step (or not the requested one) can be restored, listing each
            step tried and why; or at once if the stored trees do not match the abstract ones or
            ``shardings`` does not match them (a caller error, not damage: no fallback).
        """
        unknown = sorted(set(shardings or {}) - {PARAMS_ITEM, OPT_STATE_ITEM})
        if unknown:
            raise CheckpointError(f"{self.directory}: shardings has unknown items {unknown}; "
                                  f"allowed: {[PARAMS_ITEM, OPT_STATE_ITEM]}")
        targets = {
            PARAMS_ITEM: _restore_target(nn.meta.unbox(abstract_params), shardings, PARAMS_ITEM,
                                         self.directory),
            OPT_STATE_ITEM: _restore_target(abstract_opt_state, shardings, OPT_STATE_ITEM,
                                            self.directory)}
        committed = self.all_steps()
        orphans = self._orphans()
        if step is not None:
            if step not in committed:
                partial = " (only a partial save exists)" if step in orphans else ""
                raise CheckpointError(
                    f"{self.directory / str(step)}: step {step} was never committed{partial}; "
                    f"committed steps: {committed}")
            candidates = [step]
        else:
            candidates = sorted(set(committed) | set(orphans), reverse=True)
        if not candidates:
            raise CheckpointError(
                f"{self.directory}: holds no checkpoint to restore; start from scratch only when "
                "is_empty() says so")

        skipped: list[tuple[int, str]] = []
        # orbax reads the arrays of an item concurrently and, when one read fails, raises at once
        # and closes its event loop with the other reads still running; they then print hundreds of
        # lines of asyncio tracebacks. While restoring, orbax waits for them instead (see
        # orbax_damage.waits_for_failed_reads), so that a damaged step leaves nothing behind.
        with orbax_damage.waits_for_failed_reads():
            for i, candidate in enumerate(candidates):
                if candidate not in committed:
                    names = ", ".join(p.name for p in orphans[candidate])
                    reason = f"partial save, never committed (orphaned temporary directory {names})"
                else:
                    try:
                        params, opt_state, meta = self._restore_step(candidate, targets)
                    except _DamagedStep as e:
                        reason = str(e)
                        self._unrestorable[candidate] = reason
                    else:
                        self._unrestorable.pop(candidate, None)
                        self.last_restore = RestoreReport(candidate, tuple(skipped))
                        for skipped_step, skipped_reason in skipped:
                            logger.warning("%s: checkpoint %d could not be restored (%s); restored "
                                           "step %d instead", self.directory, skipped_step,
                                           skipped_reason, candidate)
                        return candidate, params, opt_state, meta
                skipped.append((candidate, reason))
                # Progress only: the outcome is one warning per skipped step, or the error below.
                logger.debug("%s: cannot restore step %d (%s); %s", self.directory, candidate,
                             reason, f"trying step {candidates[i + 1]}" if i + 1 < len(candidates)
                             else "no older step to try")
        tried = "; ".join(f"step {s}: {reason}" for s, reason in skipped)
        raise CheckpointError(
            f"{self.directory}: no step can be restored (nothing was deleted) - {tried}")

    def _restore_step(self, step: int, targets: Mapping[str, Any]) -> tuple[Any, Any, dict]:
        """One step's items; raises ``_DamagedStep`` for damage, ``CheckpointError`` on mismatch."""
        step_dir = self.directory / str(step)
        # Missing files are found without reading anything (the common damage: a deleted item
        # directory or manifest); anything else shows when the item is read.
        for item in (META_ITEM, PARAMS_ITEM, OPT_STATE_ITEM):
            problem = orbax_damage.missing_file(step_dir / item, targets.get(item),
                                                json_item=item == META_ITEM)
            if problem:
                raise _DamagedStep(f"{item}: {problem}")
        self._check_stored_trees(step, targets, step_dir)
        # One item at a time, so that the reason names the damaged item; the small "meta" first,
        # so that a damaged one costs no read of the arrays.
        restored = {}
        for item, args in ((META_ITEM, ocp.args.JsonRestore()),
                           (PARAMS_ITEM, ocp.args.StandardRestore(targets[PARAMS_ITEM])),
                           (OPT_STATE_ITEM, ocp.args.StandardRestore(targets[OPT_STATE_ITEM]))):
            try:
                restored[item] = self._manager.restore(
                    step, args=ocp.args.Composite(**{item: args}))[item]
            # orbax and TensorStore raise many types (ValueError, OSError, JSONDecodeError, bare
            # Exception) for missing or truncated files; each means the step cannot be used.
            except Exception as e:  # pylint: disable=broad-exception-caught
                raise _DamagedStep(f"{item}: {orbax_damage.describe(e, step_dir / item)}") from e
            if item == META_ITEM:
                problem = _meta_problem(restored[item], step)
                if problem:
                    raise _DamagedStep(f"{META_ITEM}: {problem}")
        return restored[PARAMS_ITEM], restored[OPT_STATE_ITEM], dict(restored[META_ITEM])

    def _check_stored_trees(self, step: int, targets: Mapping[str, Any],
                            step_dir: pathlib.Path) -> None:
        """Raises ``CheckpointError`` if readable metadata disagrees with the abstract trees.

        Unreadable metadata is left to the restore itself, which is the authority on damage
        (orbax restores a step whose ``_sharding`` file is damaged, for instance).
        """
        try:
            metadata = self._manager.item_metadata(step)
        except Exception:  # pylint: disable=broad-exception-caught
            return
        for item, target in targets.items():
            try:
                stored = metadata[item]
            except (KeyError, TypeError):
                continue
            tree = getattr(stored, "tree", stored)
            if tree is None:
                continue
            want = _leaf_specs(target)
            got = _leaf_specs(tree)
            problems = tree_differences({k: v[0] for k, v in want.items()},
                                         {k: v[0] for k, v in got.items()})
            dtypes = [f"{k} {got[k][1]} != expected {want[k][1]}"
                      for k in sorted(set(want) & set(got))
                      if None not in (got[k][1], want[k][1]) and got[k][1] != want[k][1]]
            if dtypes:
                problems = "; ".join(filter(None, [problems,
                                                   "wrong dtypes: " + abbreviate(dtypes)]))
            if problems:
                raise CheckpointError(
                    f"{step_dir / item}: the stored {item} do not match abstract_{item} "
                    f"({problems}); restore with the model and optimizer the run was saved with")

    # ---------------------------------------------------------------------------------------------
    # Helpers.
    # ---------------------------------------------------------------------------------------------

    def _check_params(self, params: Any, step: int) -> None:
        if self.model_config is None:
            return
        if self._expected_params is None:
            self._expected_params = {k: v[0] for k, v in
                                     _leaf_specs(model_abstract_params(self.model_config)).items()}
        try:
            got = {k: v[0] for k, v in _leaf_specs(params).items()}
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{self.directory / str(step)}: params is not a tree of arrays "
                                  f"({one_line(e)})") from e
        problems = tree_differences(self._expected_params, got)
        if problems:
            raise CheckpointError(
                f"{self.directory / str(step)}: cannot save, params do not match the model in "
                f"{self.run_dir / CONFIG_FILE} ({problems})")

    def _orphans(self) -> dict[int, list[pathlib.Path]]:
        """Uncommitted temporary step directories, by step."""
        found: dict[int, list[pathlib.Path]] = {}
        if self.directory.is_dir():
            for path in sorted(self.directory.iterdir()):
                match = _TMP_NAME.match(path.name)
                if match and path.is_dir():
                    found.setdefault(int(match.group(1)), []).append(path)
        return found

    def _set_aside(self, path: pathlib.Path, step: int, kind: str) -> pathlib.Path:
        """Renames ``path`` to ``<step>.<kind>-<mtime, UTC>`` (a name orbax never reads as a step).

        Every process computes the same name (from the shared directory, before anyone renames);
        the first one renames.
        """
        self._barriers += 1
        ocp.multihost.sync_global_processes(f"TrainCheckpointer:set_aside:{self._barriers}:start")
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(path.stat().st_mtime))
        target = path.with_name(f"{step}.{kind}-{stamp}")
        suffix = 1
        while target.exists():
            target = path.with_name(f"{step}.{kind}-{stamp}-{suffix}")
            suffix += 1
        ocp.multihost.sync_global_processes(f"TrainCheckpointer:set_aside:{self._barriers}:named")
        if jax.process_index() == 0:
            os.rename(path, target)
        ocp.multihost.sync_global_processes(f"TrainCheckpointer:set_aside:{self._barriers}:done")
        return target


class _DamagedStep(Exception):
    """A committed step whose files cannot be restored (the message is one line)."""


# -------------------------------------------------------------------------------------------------
# The "data" item: the input pipeline's state, one file per process.
# -------------------------------------------------------------------------------------------------

def data_state_name(process_index: Optional[int] = None,
                    process_count: Optional[int] = None) -> str:
    """The file prefix of one process's data state in ``<step>/data/``."""
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    return f"iterator-{index}-of-{count}"


class DataStateHandler(ocp.CheckpointHandler):
    """Writes (and reads) each process's input-pipeline state into the ``data`` item directory.

    The stream is anything with ``save_state(prefix)`` and ``restore_state(prefix)``
    (``harness.train.data.Batches``): TensorFlow is imported by the stream, not here. Synchronous:
    the state is the stream's position when ``save`` is called, not later.

    A stream that cannot be saved (its ``save_state`` raises ``ValueError``: a dataset tf.data
    cannot checkpoint) costs the step its data state, not the step: the reason is logged once, the
    item stays empty, and a restart from the step replays the stream (exact, slower).
    """

    def __init__(self) -> None:
        self._warned = False

    def save(self, directory: Any, args: "DataStateSave") -> None:
        try:
            args.stream.save_state(os.fspath(pathlib.Path(directory) / data_state_name()))
        except ValueError as e:
            if not self._warned:
                logger.warning("%s: %s; checkpoints hold no data state, and a restart replays the "
                               "stream to its step", pathlib.Path(directory).parent, one_line(e))
                self._warned = True

    def restore(self, directory: Any, args: Optional["DataStateRestore"] = None) -> Any:
        if args is None:
            raise CheckpointError(f"{directory}: restoring a data state needs the stream to restore "
                                  "into (DataStateRestore(stream))")
        args.stream.restore_state(os.fspath(pathlib.Path(directory) / data_state_name()))
        return args.stream


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
    """Save args of the ``data`` item: the stream whose state is written."""

    stream: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
    """Restore args of the ``data`` item: the (new, unread) stream to restore into."""

    stream: Any


# -------------------------------------------------------------------------------------------------
# The "meta" item.
# -------------------------------------------------------------------------------------------------

def rng_from_meta(meta: Mapping[str, Any]) -> jax.Array:
    """The PRNG key saved in ``meta``: a typed key of the saved implementation, or raw uint32."""
    data = np.asarray(meta["rng"], dtype=np.uint32)
    impl = meta.get("rng_impl")
    return jax.random.wrap_key_data(data, impl=impl) if impl else jax.numpy.asarray(data)


def _meta_document(step: int, meta: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The JSON document of the "meta" item (validated and normalised to plain JSON types)."""
    if not isinstance(meta, Mapping) or not all(isinstance(k, str) for k in meta):
        raise CheckpointError(f"{where}: meta must be a dict with string keys, got {type(meta)}")
    for key in ("rng", "tokens_seen"):
        if key not in meta:
            raise CheckpointError(f"{where}: meta has no {key!r} entry (keys: {sorted(meta)})")
    if "step" in meta and _as_int(meta["step"]) != step:
        raise CheckpointError(f"{where}: meta['step']={meta['step']!r} differs from step={step}")
    document = {k: v for k, v in meta.items() if k not in META_KEYS}
    key = meta["rng"]
    try:
        typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
        data = np.asarray(jax.random.key_data(key) if typed else key)
    except (AttributeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: meta['rng'] must be a single PRNG key, got "
                              f"{type(key).__name__} ({one_line(e)})") from e
    if data.dtype != np.uint32 or data.ndim != 1:
        raise CheckpointError(f"{where}: meta['rng'] must be a single PRNG key (typed, or raw "
                              f"uint32 of shape [n]); got {data.dtype}{list(data.shape)}")
    document["rng"] = [int(x) for x in data]
    document["rng_impl"] = str(jax.random.key_impl(key)) if typed else None
    for key_name, default in (("data_position", step), ("tokens_seen", None)):
        value = _as_int(meta.get(key_name, default))
        if value is None or value < 0:
            raise CheckpointError(f"{where}: meta[{key_name!r}]={meta.get(key_name)!r} must be a "
                                  "non-negative integer")
        document[key_name] = value
    document["step"] = step
    try:
        # Round trip through JSON so that restore returns exactly what was stored.
        return json.loads(json.dumps(document, default=_json_default))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: meta is not JSON-serialisable ({one_line(e)})") from e


def _meta_problem(meta: Any, step: int) -> str:
    """'' if a restored "meta" item is well formed, else what is wrong with it."""
    if not isinstance(meta, dict):
        return f"not a JSON object: {type(meta).__name__}"
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        return f"missing keys {missing}"
    if meta["step"] != step:
        return f"step {meta['step']!r} != {step}"
    if not isinstance(meta["rng"], list) or not all(isinstance(x, int) for x in meta["rng"]):
        return "rng is not a list of integers"
    return ""


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, jax.Array)):
        return np.asarray(value).tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _as_int(value: Any) -> Optional[int]:
    """``value`` as a Python int if it is an integer (numpy/jax scalars too), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (np.ndarray, jax.Array)) and value.shape == () \
            and np.issubdtype(value.dtype, np.integer):
        return int(value)
    return None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# -------------------------------------------------------------------------------------------------
# Trees.
# -------------------------------------------------------------------------------------------------

def _leaf_specs(tree: Any) -> dict[str, tuple[tuple[int, ...], Optional[np.dtype]]]:
    """``{path: (shape, dtype)}`` of a tree of arrays, ShapeDtypeStructs or orbax metadata."""
    specs = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        dtype = getattr(leaf, "dtype", None)
        shape = leaf.shape if hasattr(leaf, "shape") else np.shape(leaf)
        specs[path_str(path)] = (tuple(shape), None if dtype is None else np.dtype(dtype))
    return specs


def _restore_target(abstract: Any, shardings: Optional[Mapping[str, Any]], item: str,
                    directory: pathlib.Path) -> Any:
    """``ShapeDtypeStruct`` tree with the shardings that ``item`` is to be restored onto."""
    chosen = None if shardings is None else shardings.get(item)
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def own(leaf: Any) -> jax.sharding.Sharding:
        return getattr(leaf, "sharding", None) or default

    if chosen is None:
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=own(a)),
                            abstract)
    if isinstance(chosen, jax.sharding.Sharding):
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=chosen),
                            abstract)
    chosen = nn.meta.unbox(chosen)
    want = set(_leaf_specs(abstract))
    flat, _ = jax.tree_util.tree_flatten_with_path(
        chosen, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    got = {path_str(p) for p, _ in flat}
    if want != got or not all(isinstance(s, jax.sharding.Sharding) for _, s in flat):
        detail = tree_differences({k: () for k in want}, {k: () for k in got}) \
            or "some leaves are not jax.sharding.Sharding"
        raise CheckpointError(
            f"{directory}: shardings[{item!r}] does not match abstract_{item} ({detail}); build it "
            f"with jax.tree.map over abstract_{item}")
    try:
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, chosen)
    except ValueError as e:  # same leaf names, different containers (e.g. tuple vs list)
        raise CheckpointError(f"{directory}: shardings[{item!r}] has another tree structure than "
                              f"abstract_{item} ({one_line(e)})") from e
