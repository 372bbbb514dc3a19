"""The on-disk model format of the harness: ``config.json`` plus Orbax checkpoints.

A model (or run) directory looks like::

    <directory>/
      config.json          {"model": ModelConfig.to_dict(), ...any other keys the harness adds}
      checkpoints/         managed by orbax.checkpoint.CheckpointManager
        0/params/...       one subdirectory per step, a single item named "params"
        1000/params/...

``config.json`` is the only thing needed to rebuild the parameter shapes, so a checkpoint can be
restored straight onto any mesh (each host reads only its own shards) without first materialising
it on one device. Steps are written with ``ocp.args.StandardSave`` inside ``ocp.args.Composite`` so
that later items (optimizer state, data-iterator state) can sit beside ``params`` in the same step.

Every failure that a user can cause (wrong path, missing or corrupt files, a checkpoint that does
not belong to the config) is raised as one ``CheckpointError`` whose one-line message names the path
and the fix. Nothing here ever deletes or overwrites an existing checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
from typing import Any, Iterator, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import linen as nn

from harness.storage import orbax_damage
from models.config import ModelConfig
from models.transformer import abstract_params

PathLike = Union[str, os.PathLike]

CONFIG_FILE = "config.json"
CHECKPOINTS_DIR = "checkpoints"
PARAMS_ITEM = "params"
MODEL_KEY = "model"
# config.json's record of the tokenizer of a saved model; a training run's is "run"/"data".
VOCABULARY_KEY = "vocabulary"

# How many names an error message lists before it says "... and N more".
_MAX_NAMES = 5


class CheckpointError(ValueError):
    """A model directory or checkpoint that cannot be saved or loaded; the message says why."""


# -------------------------------------------------------------------------------------------------
# Public API.
# -------------------------------------------------------------------------------------------------

def save_model(directory: PathLike, config: ModelConfig, params: Any,
               step: int = 0, vocabulary: Optional[str] = None) -> pathlib.Path:
    """Writes ``config.json`` and the parameters of one step into a model directory.

    The parameters are checked against ``config`` (names and shapes) before anything is written, and
    are stored in ``config.param_dtype`` so that what is on disk is what ``config.json`` describes.
    Other top-level keys of an existing ``config.json`` are kept.

    Args:
      directory: the model directory; created if missing.
      config: the model's configuration.
      params: the parameter tree (``variables["params"]``; boxed or unboxed, numpy or jax arrays,
        sharded or not).
      step: the step number to save under ``checkpoints/<step>``.
      vocabulary: the tokenizer the model reads (``"t5"``, ``"byte"`` or a SentencePiece model; a
        relative path is looked up in the model directory first), recorded as ``"vocabulary"`` so
        that evaluation needs no ``--vocab`` (``read_vocabulary``).

    Returns:
      The path of the step directory that was written.

    Raises:
      CheckpointError: if the parameters do not match ``config``, if ``step`` already exists (it is
        never overwritten), if an existing ``config.json`` is unreadable, or if it describes a
        different model while checkpoints already exist.
    """
    directory = pathlib.Path(directory).absolute()  # orbax wants absolute paths
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"{directory}: step={step!r} must be a non-negative integer")
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"{directory}: exists and is not a directory; choose another path")

    # Boxed leaves (nn.Partitioned) carry logical axis names, not data the checkpoint needs.
    params = nn.meta.unbox(params)
    _check_params_match(params, config, where=f"{directory}: cannot save")
    params = _cast_params(params, jnp.dtype(config.param_dtype))

    checkpoints = directory / CHECKPOINTS_DIR
    existing_steps = _list_steps(checkpoints) if checkpoints.is_dir() else []
    if step in existing_steps:
        raise CheckpointError(
            f"{checkpoints / str(step)}: step {step} already exists and is never overwritten; "
            f"save under a new step (existing steps: {existing_steps})")

    # config.json first: a crash between the two writes leaves a config without checkpoints (which
    # load_model reports clearly), never a checkpoint without the config needed to read it.
    document = updated_config_document(directory, config, existing_steps)
    if vocabulary is not None:
        document[VOCABULARY_KEY] = str(vocabulary)
    directory.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        write_json_atomically(directory / CONFIG_FILE, document)

    # Synchronous saving: the caller gets a finished, committed step back (orbax writes into a
    # temporary directory and renames it, so an interrupted save never looks like a valid step).
    options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False, create=True)
    with ocp.CheckpointManager(checkpoints, options=options) as manager:
        # force=True: the default save-decision policy would silently skip a step lower than the
        # latest one; the caller asked for this exact step.
        manager.save(step, args=ocp.args.Composite(**{PARAMS_ITEM: ocp.args.StandardSave(params)}),
                     force=True)
        manager.wait_until_finished()
    return checkpoints / str(step)


def load_model(directory: PathLike, step: Optional[int] = None,
               shardings: Any = None) -> tuple[ModelConfig, Any]:
    """Reads ``config.json`` and restores the parameters of one step.

    Args:
      directory: a model directory written by ``save_model`` (or ``harness.storage.convert``).
      step: the step to restore; the latest one by default.
      shardings: where to put the parameters: a tree of ``jax.sharding.Sharding`` matching the
        parameter tree (e.g. ``logical_to_shardings(jax.eval_shape(init_fn(cfg), key), mesh)
        ["params"]``), or one ``Sharding`` for every leaf. Default: the first device, unsharded.
        Each device reads only its own shards.

    Returns:
      ``(config, params)``: the stored config and the parameters as ``jax.Array`` in the config's
      ``param_dtype``.

    Raises:
      CheckpointError: if the directory, ``config.json`` or the checkpoints are missing or invalid,
        if ``step`` does not exist, or if the checkpoint cannot be restored (corrupt, truncated, or
        a parameter tree that does not match the config).
    """
    directory = pathlib.Path(directory).absolute()
    config = read_config(directory)
    checkpoints = directory / CHECKPOINTS_DIR
    steps = _list_steps(checkpoints, require=True)
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise CheckpointError(
            f"{checkpoints / str(step)}: step {step} does not exist; available steps are {steps}")
    step_dir = checkpoints / str(step)

    expected = abstract_params(config)
    target = _restore_target(expected, shardings, directory)

    with _open_read_only(checkpoints) as manager:
        stored = _stored_params_metadata(manager, step, step_dir, steps)
        _check_stored_tree(stored, expected, step_dir, directory / CONFIG_FILE)
        fix = f"load another step (available: {steps}) or re-save it"
        problem = orbax_damage.missing_file(step_dir / PARAMS_ITEM, expected)
        if problem:
            raise CheckpointError(f"{step_dir}: cannot restore the parameters ({problem}); {fix}")
        # A failed read leaves no other read of the item running (to print tracebacks later).
        with orbax_damage.waits_for_failed_reads():
            try:
                restored = manager.restore(
                    step,
                    args=ocp.args.Composite(**{PARAMS_ITEM: ocp.args.StandardRestore(target)}))
            # Orbax and TensorStore raise many exception types (ValueError, OSError, RuntimeError,
            # tensorstore errors) for damaged files; all of them mean the same thing to the caller.
            except Exception as e:  # pylint: disable=broad-exception-caught
                reason = orbax_damage.describe(e, step_dir / PARAMS_ITEM)
                raise CheckpointError(
                    f"{step_dir}: cannot restore the parameters ({reason}); the step is corrupt "
                    f"or truncated: {fix}") from e
    return config, restored[PARAMS_ITEM]


def read_config(directory: PathLike) -> ModelConfig:
    """The ``ModelConfig`` stored in ``<directory>/config.json``.

    Raises:
      CheckpointError: if the directory or the file is missing, the file is not a JSON object with a
        valid "model" entry.
    """
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise CheckpointError(
            f"{directory}: model directory does not exist; pass a directory written by "
            "harness.storage.checkpoint.save_model (or harness.storage.convert)")
    document = _read_config_document(directory / CONFIG_FILE, required=True)
    return _model_config_from_document(document, directory / CONFIG_FILE)


def read_vocabulary(directory: PathLike) -> Optional[str]:
    """The vocabulary a model or run directory records, or None if it records none.

    A model saved with ``save_model(..., vocabulary=...)`` (or converted with its tokenizer) records
    ``"vocabulary"``; a training run records the ``data.vocabulary`` it was trained with in
    ``"run"``.

    Raises:
      CheckpointError: ``config.json`` is missing or not a JSON object.
    """
    document = _read_config_document(pathlib.Path(directory) / CONFIG_FILE, required=True)
    run = document.get("run")
    data = run.get("data") if isinstance(run, dict) else None
    for vocabulary in (document.get(VOCABULARY_KEY),
                       data.get("vocabulary") if isinstance(data, dict) else None):
        if isinstance(vocabulary, str) and vocabulary:
            return vocabulary
    return None


def update_config(directory: PathLike, entries: Mapping[str, Any]) -> None:
    """Sets top-level entries of ``<directory>/config.json`` (e.g. provenance), keeping the rest.

    Raises:
      CheckpointError: if ``config.json`` is missing or invalid, or if ``entries`` contains "model"
        (the model config changes only through ``save_model``, which checks it against the steps).
    """
    path = pathlib.Path(directory) / CONFIG_FILE
    if MODEL_KEY in entries:
        raise CheckpointError(
            f"{path}: update_config cannot change {MODEL_KEY!r}; save the model with save_model")
    document = _read_config_document(path, required=True)
    document.update(entries)
    if jax.process_index() == 0:
        write_json_atomically(path, document)


def available_steps(directory: PathLike) -> list[int]:
    """The saved steps of a model directory, ascending (empty if it has no checkpoints yet)."""
    checkpoints = pathlib.Path(directory) / CHECKPOINTS_DIR
    return _list_steps(checkpoints) if checkpoints.is_dir() else []


# -------------------------------------------------------------------------------------------------
# config.json.
# -------------------------------------------------------------------------------------------------

def _read_config_document(path: pathlib.Path, required: bool) -> Optional[dict[str, Any]]:
    """The parsed ``config.json``, or None if it is absent and not ``required``."""
    if not path.is_file():
        if not required:
            return None
        raise CheckpointError(
            f"{path}: config.json is missing; the model directory must hold the config written by "
            "harness.storage.checkpoint.save_model")
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"{path}: not valid JSON ({one_line(e)}); restore the file or re-save the model"
        ) from e
    if not isinstance(document, dict):
        raise CheckpointError(
            f"{path}: must hold a JSON object with a {MODEL_KEY!r} entry, found "
            f"{type(document).__name__}; re-save the model")
    return document


def _model_config_from_document(document: Mapping[str, Any], path: pathlib.Path) -> ModelConfig:
    if MODEL_KEY not in document:
        raise CheckpointError(
            f"{path}: has no {MODEL_KEY!r} entry (keys: {sorted(document)}); add the model's "
            "ModelConfig.to_dict() under 'model' or re-save the model")
    values = document[MODEL_KEY]
    if not isinstance(values, dict):
        raise CheckpointError(
            f"{path}: {MODEL_KEY!r} must be a JSON object of ModelConfig fields, found "
            f"{type(values).__name__}")
    try:
        return ModelConfig.from_dict(values)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid {MODEL_KEY!r} entry: {one_line(e)}") from e


def updated_config_document(directory: pathlib.Path, config: ModelConfig,
                             existing_steps: list[int]) -> dict[str, Any]:
    """The ``config.json`` content to write: the existing document with ``model`` set."""
    path = directory / CONFIG_FILE
    document = _read_config_document(path, required=False) or {}
    if MODEL_KEY in document and existing_steps:
        # The stored steps were saved for the existing config; replacing it would make them
        # unreadable (or silently reinterpreted), which counts as overwriting data.
        stored = _model_config_from_document(document, path)
        if stored != config:
            changed = sorted(k for k, v in config.to_dict().items() if stored.to_dict()[k] != v)
            raise CheckpointError(
                f"{path}: holds a different model (fields {changed} differ) and the directory "
                f"already has steps {existing_steps}; save into a new directory")
    document = dict(document)
    document[MODEL_KEY] = config.to_dict()
    return document


def write_json_atomically(path: pathlib.Path, document: Mapping[str, Any]) -> None:
    # Write-then-rename: a crash mid-write must not leave a truncated config.json behind.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


# -------------------------------------------------------------------------------------------------
# Checkpoints.
# -------------------------------------------------------------------------------------------------

class _DropReadOnlyNotices(logging.Filter):
    """Drops orbax's "directory is read only" warnings, which every read-only manager logs.

    Reading is the only thing a read-only manager is used for here, so the notices say nothing to a
    user and would clutter every CLI command that loads a model.
    """

    # ... and the notice that a training checkpoint's other items (optimizer state, meta, data
    # state) are not restored when only the parameters are loaded, which is what load_model asks
    # for: one line per item and load, three per evaluation in a grid's log.
    _PREFIXES = ("Given directory is read only", "CheckpointManagerOptions.read_only=True")
    _NOT_RESTORED = "was found in the checkpoint, but could not be restored"

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith(self._PREFIXES) or
                    (message.startswith('Item "') and self._NOT_RESTORED in message))


@contextlib.contextmanager
def _open_read_only(checkpoints: pathlib.Path) -> Iterator[ocp.CheckpointManager]:
    # read_only: loading must never create, clean up or delete anything in the directory.
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    notice_filter = _DropReadOnlyNotices()
    absl_logger = logging.getLogger("absl")
    absl_logger.addFilter(notice_filter)
    try:
        # Registering the handler up front lets item_metadata() work before any restore.
        with ocp.CheckpointManager(
                checkpoints, options=options,
                item_handlers={PARAMS_ITEM: ocp.StandardCheckpointHandler()}) as manager:
            yield manager
    finally:
        absl_logger.removeFilter(notice_filter)


def _list_steps(checkpoints: pathlib.Path, require: bool = False) -> list[int]:
    """Committed steps under ``checkpoints`` (ascending); unfinished temporary saves are ignored."""
    if not checkpoints.is_dir():
        if require:
            raise CheckpointError(
                f"{checkpoints}: checkpoints directory is missing; save a step with "
                "harness.storage.checkpoint.save_model")
        return []
    with _open_read_only(checkpoints) as manager:
        steps = sorted(int(s) for s in manager.all_steps())
    if not steps and require:
        raise CheckpointError(
            f"{checkpoints}: holds no saved step; save one with harness.storage.checkpoint.save_model")
    return steps


def _stored_params_metadata(manager: ocp.CheckpointManager, step: int, step_dir: pathlib.Path,
                            steps: list[int]) -> dict[str, tuple[int, ...]]:
    """``{path: shape}`` of the parameters stored in ``step``, from the checkpoint's metadata."""
    try:
        metadata = manager.item_metadata(step)[PARAMS_ITEM]
        tree = metadata.tree if hasattr(metadata, "tree") else metadata
        if tree is None:
            raise ValueError(f"no {PARAMS_ITEM!r} item")
        return {path_str(path): tuple(leaf.shape)
                for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
    # As in load_model: whatever orbax raises on a damaged step means "cannot be read".
    except Exception as e:  # pylint: disable=broad-exception-caught
        raise CheckpointError(
            f"{step_dir}: cannot read the checkpoint's metadata ({one_line(e)}); the step is "
            f"corrupt or truncated: load another step (available: {steps}) or re-save it") from e


def _check_stored_tree(stored: Mapping[str, tuple[int, ...]], expected: Any,
                       step_dir: pathlib.Path, config_path: pathlib.Path) -> None:
    """Raises if the stored parameter names/shapes are not those of the config's model."""
    want = {path_str(path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(expected)[0]}
    problems = tree_differences(want, stored)
    if problems:
        raise CheckpointError(
            f"{step_dir}: the stored parameters do not match the model in {config_path} "
            f"({problems}); load it with the config it was saved with, or re-save the model")


def _restore_target(expected: Any, shardings: Any, directory: pathlib.Path) -> Any:
    """``ShapeDtypeStruct`` tree (with shardings) that tells orbax what to restore and where."""
    if shardings is None:
        shardings = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=shardings), expected)
    # Boxed shardings (from a boxed abstract tree) would otherwise be leaves of the wrong type.
    shardings = nn.meta.unbox(shardings)
    want = {path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(expected)[0]}
    flat, _ = jax.tree_util.tree_flatten_with_path(
        shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    got = {path_str(p) for p, _ in flat}
    if want != got or not all(isinstance(s, jax.sharding.Sharding) for _, s in flat):
        detail = _name_differences(want, got) or "some leaves are not jax.sharding.Sharding"
        raise CheckpointError(
            f"{directory}: `shardings` does not match the parameter tree of its config ({detail}); "
            "build it from abstract params of the same config (models.sharding."
            "logical_to_shardings(...)['params'])")
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        expected, shardings)


# -------------------------------------------------------------------------------------------------
# Parameter trees.
# -------------------------------------------------------------------------------------------------

def _check_params_match(params: Any, config: ModelConfig, where: str) -> None:
    """Raises if ``params`` does not have exactly the names and shapes of ``config``'s model."""
    want = {path_str(path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params(config))[0]}
    try:
        got = {path_str(path): tuple(np.shape(leaf))
               for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: params is not a tree of arrays ({one_line(e)})") from e
    problems = tree_differences(want, got)
    if problems:
        hint = ""
        if set(got) and all(name.startswith("params/") for name in got):
            hint = " (pass variables['params'], not the whole variables dict)"
        raise CheckpointError(f"{where}: params do not match the config ({problems}){hint}")


def _cast_params(params: Any, dtype: np.dtype) -> Any:
    """Leaves in ``dtype``; leaves already in it are passed through untouched (bit-exact)."""
    def cast(leaf: Any) -> Any:
        if leaf.dtype == dtype:
            return leaf
        if isinstance(leaf, jax.Array):
            return leaf.astype(dtype)  # keeps the leaf's sharding
        return np.asarray(leaf).astype(dtype)
    return jax.tree.map(cast, params)


def tree_differences(want: Mapping[str, tuple[int, ...]],
                      got: Mapping[str, tuple[int, ...]]) -> str:
    """Missing/unexpected names and wrong shapes, as one short phrase ('' if identical)."""
    parts = []
    names = _name_differences(set(want), set(got))
    if names:
        parts.append(names)
    wrong = [f"{k} {got[k]} != expected {want[k]}"
             for k in sorted(set(want) & set(got)) if got[k] != want[k]]
    if wrong:
        parts.append("wrong shapes: " + abbreviate(wrong))
    return "; ".join(parts)


def _name_differences(want: set[str], got: set[str]) -> str:
    parts = []
    if want - got:
        parts.append("missing: " + abbreviate(sorted(want - got)))
    if got - want:
        parts.append("unexpected: " + abbreviate(sorted(got - want)))
    return "; ".join(parts)


def abbreviate(names: list[str]) -> str:
    """The first few of ``names``, comma-separated, with a count of the rest (for one-line errors)."""
    shown = ", ".join(names[:_MAX_NAMES])
    if len(names) > _MAX_NAMES:
        shown += f", ... and {len(names) - _MAX_NAMES} more"
    return shown


def path_str(path: tuple[Any, ...]) -> str:
    """``('decoder', 'layers', 'mlp', 'wo')`` key path -> ``'decoder/layers/mlp/wo'``."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception as one short line (orbax/tensorstore messages span many lines)."""
    text = " ".join(str(error).split()) or type(error).__name__
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"{type(error).__name__}: {text}"
