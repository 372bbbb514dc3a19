"""Explicit, idempotent seqio registration of the six pretraining tasks (STYLE.md B5.6).

Nothing registers on import: the harness calls ``register_pretraining_task`` with a data source and
a vocabulary it built, and reads the stream with ``get_dataset``. Caching is opt-in
(``get_dataset(use_cached=True)``); the tasks carry t5's ``CacheDatasetPlaceholder`` only so that an
offline cache is possible.

The study trains six (architecture, objective) pairs (PAPER.md 1.2, 3.2): "the causal decoder uses
either FLM or MLM, while the non-causal decoder and the encoder-decoder use either PLM or MLM"::

    cd: flm, mlm     nd: plm, mlm     ed: plm, mlm

Determinism: ``get_dataset(seed=...)`` passes the seed to seqio, which seeds the source shuffle, the
task's shuffle buffer and, through ``map_seed_manager``, every stateless random preprocessor (random
chunk, split point, noise mask) from it. The same seed, task and lengths give the same stream.

This module imports seqio (and TensorFlow) only inside functions, so ``check_compatible`` and the
tables cost nothing to import.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Any, Mapping, Optional

from objectives import lengths as lengths_lib

if TYPE_CHECKING:
    import seqio
    import tensorflow as tf

ARCHITECTURES = ("cd", "nd", "ed")
OBJECTIVES = ("flm", "plm", "mlm")
# PAPER.md 1.2 / 3.2: the objectives each architecture is pretrained with.
COMPATIBLE: Mapping[str, tuple[str, ...]] = {
    "cd": ("flm", "mlm"),
    "nd": ("plm", "mlm"),
    "ed": ("plm", "mlm"),
}


def check_compatible(architecture: str, objective: str) -> None:
    """Raises ``ValueError`` unless the study pretrains ``architecture`` with ``objective``.

    Names are lower case only ("cd", "flm", ...).
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture={architecture!r}: must be one of {list(ARCHITECTURES)}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective={objective!r}: must be one of {list(OBJECTIVES)}")
    if objective not in COMPATIBLE[architecture]:
        raise ValueError(f"objective={objective!r} is not trained with "
                         f"architecture={architecture!r}; the study pairs {architecture} with "
                         f"{list(COMPATIBLE[architecture])}")


@dataclasses.dataclass(frozen=True)
class _Definition:
    """What a registered task is built from; equal definitions build the same task."""

    objective: str
    architecture: str
    source: Any
    vocabulary: Any
    text_key: str

    def same_as(self, other: "_Definition") -> bool:
        # Sources have no value equality in seqio: the same object is the same source.
        return (self.objective == other.objective and self.architecture == other.architecture
                and self.source is other.source and self.vocabulary == other.vocabulary
                and self.text_key == other.text_key)


# Definitions of the tasks this module registered, by name.
_DEFINITIONS: dict[str, _Definition] = {}


def source_id(source: "seqio.DataSource") -> str:
    """A short name for a data source, for default task names.

    Uses the source's ``name`` attribute if it has one, the TFDS name of a ``TfdsDataSource``, the
    function name of a ``FunctionDataSource``, else the class name.
    """
    name = getattr(source, "name", None)
    if not isinstance(name, str) or not name:
        tfds = getattr(source, "tfds_dataset", None)
        name = getattr(tfds, "name", None)
    if not isinstance(name, str) or not name:
        function = getattr(source, "_dataset_fn", None)  # FunctionDataSource
        name = getattr(function, "__name__", None) or getattr(
            getattr(function, "func", None), "__name__", None)
    if not isinstance(name, str) or not name or name == "<lambda>":
        name = type(source).__name__
    return re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_").lower() or "source"


def default_task_name(objective: str, architecture: str, source: "seqio.DataSource") -> str:
    """``archobj_{architecture}_{objective}_{source_id}``, e.g. ``archobj_nd_plm_c4_en_3_1_0``."""
    return f"archobj_{architecture}_{objective}_{source_id(source)}"


def _build(definition: _Definition) -> tuple[list, Mapping[str, Any]]:
    """(preprocessors, output_features) of a definition."""
    if definition.objective == "flm":
        from objectives import full_lm as module
        return (module.preprocessors(definition.text_key),
                module.output_features(definition.vocabulary))
    if definition.objective == "plm":
        from objectives import prefix_lm as module
        return (module.preprocessors(definition.architecture, definition.text_key),
                module.output_features(definition.architecture, definition.vocabulary))
    from objectives import span_corruption as module
    return module.preprocessors(definition.text_key), module.output_features(definition.vocabulary)


def register_pretraining_task(objective: str, architecture: str, source: "seqio.DataSource",
                              vocabulary: "seqio.Vocabulary", *, name: Optional[str] = None,
                              lengths: Optional[Mapping[str, int]] = None,
                              text_key: str = "text") -> str:
    """Registers the seqio Task of one pretraining pair and returns its name.

    Idempotent: registering the same name again with an identical definition (objective,
    architecture, the same source object, an equal vocabulary, text key) is a no-op. A different
    definition under a registered name *replaces* the task (``TaskRegistry.remove`` then ``add``),
    so the latest call wins; pass distinct ``name`` s to keep several.

    Args:
      objective: "flm", "plm" or "mlm".
      architecture: "cd", "nd" or "ed"; PLM tasks differ by architecture (ND one example per row,
        ED two), FLM and MLM tasks do not (the converter does).
      source: yields examples with a string feature ``text_key``.
      vocabulary: the tokenizer; MLM needs sentinel ids (``extra_ids``).
      name: the task name; default ``default_task_name(objective, architecture, source)``.
      lengths: optional task feature lengths, only checked here (seqio takes lengths when reading,
        see ``get_dataset``), so that a bad configuration fails before any data is read.
      text_key: the source's text feature.

    Returns:
      The registered task name.

    Raises:
      ValueError: incompatible pair, MLM without sentinels, bad lengths or task name.
    """
    check_compatible(architecture, objective)
    if lengths is not None:
        lengths_lib.validate_task_feature_lengths(objective, architecture, lengths)
    import seqio

    if objective == "mlm":
        from objectives import span_corruption
        span_corruption.check_vocabulary(vocabulary, lengths)
    name = name or default_task_name(objective, architecture, source)
    if not re.fullmatch(r"[\w\d\.\:_#]+", name):
        raise ValueError(f"name={name!r}: task names may use letters, digits and '.:_#' only")
    definition = _Definition(objective, architecture, source, vocabulary, text_key)
    registered = name in seqio.TaskRegistry.names()
    if registered and name in _DEFINITIONS and _DEFINITIONS[name].same_as(definition):
        return name
    if registered:
        seqio.TaskRegistry.remove(name)
    preprocessors, output_features = _build(definition)
    seqio.TaskRegistry.add(name, source=source, preprocessors=preprocessors,
                           output_features=output_features, metric_fns=[])
    _DEFINITIONS[name] = definition
    return name


def get_dataset(task_name: str, architecture: str, objective: str, lengths: Mapping[str, int], *,
                split: str = "train", seed: Optional[int] = 0, shuffle: bool = True,
                shard_info: Optional["seqio.ShardInfo"] = None, pack: bool = True,
                num_epochs: Optional[int] = None, use_cached: bool = False) -> "tf.data.Dataset":
    """The stream of model features of a registered pretraining task.

    ``task.get_dataset(...)``, then ``features.feature_converter(architecture, objective, pack)``.

    Args:
      task_name: from ``register_pretraining_task``.
      architecture, objective: the pair (must match the task's registration).
      lengths: task feature lengths, from ``lengths.task_feature_lengths``.
      split: source split.
      seed: seeds the source shuffle, the shuffle buffer and every random preprocessor; the same
        seed gives the same stream. None draws fresh randomness (not reproducible).
      shuffle: shuffle the source and the preprocessed examples (buffer of seqio's default 1,000).
      shard_info: this host's shard, ``seqio.ShardInfo(index, num_shards)``.
      pack: pack examples into rows (ignored for PLM, which is always full rows).
      num_epochs: passes over the source; None repeats forever (training). The repeat comes before
        the random preprocessors, so each epoch draws new chunks, split points and masks.
      use_cached: read an offline cache made by seqio's cache job (opt-in).

    Returns:
      ``tf.data.Dataset`` of unbatched rows ``{model feature name: int32 [length]}``.

    Raises:
      ValueError: incompatible pair, bad lengths, unknown task, or a task registered for another
        pair.
    """
    check_compatible(architecture, objective)
    lengths_lib.validate_task_feature_lengths(objective, architecture, lengths)
    definition = _DEFINITIONS.get(task_name)
    # FLM and MLM tasks are the same for every architecture (the converter differs); PLM tasks are
    # not (ND packs one example per row, ED two).
    if definition is not None and (definition.objective != objective or (
            objective == "plm" and definition.architecture != architecture)):
        raise ValueError(f"task_name={task_name!r} was registered for "
                         f"{definition.architecture}:{definition.objective}, not "
                         f"{architecture}:{objective}")
    import seqio

    from objectives import features

    if task_name not in seqio.TaskRegistry.names():
        raise ValueError(f"task_name={task_name!r} is not registered; call "
                         "objectives.tasks.register_pretraining_task first")
    task = seqio.TaskRegistry.get(task_name)
    if objective == "mlm":
        from objectives import span_corruption
        span_corruption.check_vocabulary(task.output_features["targets"].vocabulary, lengths)
    lengths = dict(lengths)
    dataset = task.get_dataset(sequence_length=lengths, split=split, use_cached=use_cached,
                               shuffle=shuffle, seed=seed, shard_info=shard_info,
                               num_epochs=num_epochs)
    return features.feature_converter(architecture, objective, pack=pack)(dataset, lengths)
