"""Batches of seqio model features for training: deterministic, sharded per host, resumable.

``pretraining_batches`` registers the (architecture, objective) task over a text source, runs seqio's
pipeline and converter (objectives/), and yields numpy batches keyed by seqio's model feature names
(PAPER.md 6.3), ready for ``jax.device_put``.

Determinism. One seed fixes everything random: the order of source files, seqio's shuffle buffer and
the seeds of the stateless random preprocessors (chunking, span-corruption noise, PLM split points).
Batch ``k`` is therefore a pure function of (task, seed, shard, k).

Resume, two ways (``Batches``), both exact: a run restarted at step k sees exactly the batches an
uninterrupted run would have seen from step k, no repeats, no skips.

* From the saved state (t5x's ``save_dataset``): the training loop saves the tf.data iterator's
  state (``tf.train.Checkpoint(iterator=...)``: shuffle buffers, packing buffers, prefetched
  batches, each source's read position) with every checkpoint, one file per host
  (``harness/train/train_checkpoint.py``), and ``Batches.restore_state`` puts it back: the cost does
  not grow with k, except for re-opening each text source at its position (below).
* By replay (``Batches.skip``): run the pipeline over the first k batches and drop them, about
  ``k * batch / examples_per_second`` (``archobj data bench`` measures the rate); what a checkpoint
  written before iterator states were saved, or one whose state cannot be read, resumes with.

Checkpointable sources. tf.data cannot save a ``Dataset.from_generator`` ("GeneratorDataset does not
support checkpointing"), and every local or Hugging Face source of this project (text, JSONL, the
T0 mixture's files, objectives/sources.py and objectives/t0.py) is one. While this module builds a
pipeline, ``Dataset.from_generator`` builds ``checkpointable_from_generator`` instead: the same
elements in the same order, numbered by a ``Dataset.range`` (whose position tf.data saves) and read
by a Python reader that, after a restore, re-opens its generator and skips the elements already read.
That skip reads raw records only (no tokenizing, no packing: about 10^5 documents/s); TFDS sources
(``c4``, the study's) are checkpointed by tf.data itself and skip nothing.

State size. The state holds every buffer of the pipeline: seqio's shuffle buffer of 1,000 examples
per task (token ids and their text), packing buffers, prefetched batches. Measured on one host with
2,048 rows: cd:mlm at 626 tokens 17 MB; MTF at 1,024 + 256 tokens over the built-in world's 20-task
mixture 41 MB, about 2 MB per task, so the T0 mixture's few hundred tasks would take about 0.5-1 GB
per host per checkpoint (longer prompts: more).

Build time. While it builds, this module also traces the seqio tasks' preprocessors without
autograph (``tasks_without_autograph``), which halves a pipeline's first build in a process; the
stream is the same element for element (tests/test_data_state.py compares it with the pipeline
TensorFlow and autograph build).

Multi-host. Host ``i`` of ``n`` reads shard ``i`` of the source (``seqio.ShardInfo``) and builds
``global_batch / n`` rows of every global batch; the shards are disjoint and together cover the corpus.

TensorFlow is imported here (through seqio) and GPUs are hidden from it, so that it never takes
accelerator memory from JAX. Only processes that read data import this module.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import logging
import os
import re
import threading
import weakref
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

import numpy as np

# Quieten TensorFlow's C++ logging before it is first imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def hide_gpus_from_tensorflow() -> None:
    """Keeps TensorFlow on the CPU: the accelerators belong to JAX (STYLE.md B5.7)."""
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # already initialised; the devices were fixed before we got here
        pass


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What a pretraining stream reads and how.

    Attributes:
      architecture: "cd", "nd" or "ed".
      objective: "flm", "plm" or "mlm".
      source: "c4" (TFDS), "c4-hf" (Hugging Face copy) or a local path (text, directory, JSONL).
      vocabulary: "t5", "byte" or a path to a SentencePiece model.
      total_length: tokens per sequence seen (626 in the study, PAPER.md 1.2); the objective's
        feature lengths are derived from it (objectives/lengths.py).
      text_field: JSONL field holding the text.
      seed: the one seed of the stream.
      pack: pack examples into rows (the study packs every pretraining objective).
    """

    architecture: str
    objective: str
    source: str
    vocabulary: str = "t5"
    total_length: int = 626
    text_field: str = "text"
    seed: int = 0
    pack: bool = True


def build_dataset(spec: DataSpec, *, batch_size: Optional[int] = None, split: str = "train",
                  shard_index: int = 0, num_shards: int = 1, shuffle: bool = True,
                  num_epochs: Optional[int] = None):
    """The ``tf.data.Dataset`` of model features for ``spec`` (batched if ``batch_size``).

    Validates everything the user typed (pair, source, vocabulary, lengths) before TensorFlow builds
    any graph, raising one-line ``ValueError`` s. Generator sources are built checkpointable
    (module docstring).
    """
    hide_gpus_from_tensorflow()  # before seqio or anything else touches TensorFlow's devices
    from objectives import lengths as objective_lengths
    from objectives import sources, tasks, vocab

    tasks.check_compatible(spec.architecture, spec.objective)
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index={shard_index}: must be in [0, num_shards={num_shards})")
    vocabulary = vocab.load_vocabulary(spec.vocabulary)
    source = sources.make_data_source(sources.parse_source(spec.source, spec.text_field))
    feature_lengths = objective_lengths.task_feature_lengths(
        spec.objective, spec.architecture, total_length=spec.total_length)
    import seqio

    task_name = tasks.register_pretraining_task(spec.objective, spec.architecture, source,
                                                vocabulary)
    shard_info = seqio.ShardInfo(shard_index, num_shards) if num_shards > 1 else None
    with _building():
        dataset = tasks.get_dataset(task_name, spec.architecture, spec.objective, feature_lengths,
                                    split=split, seed=spec.seed, shuffle=shuffle,
                                    shard_info=shard_info, pack=spec.pack, num_epochs=num_epochs)
    if batch_size is not None:
        dataset = dataset.batch(batch_size, drop_remainder=True)
    return dataset


def pretraining_batches(spec: DataSpec, global_batch_size: int, *, start_step: int = 0,
                        host_index: int = 0, num_hosts: int = 1,
                        split: str = "train") -> "Batches":
    """This host's share of every global batch, from ``start_step`` on.

    Args:
      spec: the stream.
      global_batch_size: rows per step over all hosts; must divide evenly among hosts.
      start_step: first step to yield; the batches before it are replayed and dropped (resume
        from a saved state instead: ``start_step=0``, then ``Batches.restore_state``).
      host_index: this host (``jax.process_index()``).
      num_hosts: number of hosts (``jax.process_count()``).
      split: source split.

    Returns:
      ``Batches``, an iterator of ``{feature name: np.ndarray [global_batch_size / num_hosts,
      length]}``.
    """
    _check_stream(global_batch_size, num_hosts, start_step)
    key = ("pretraining", dataclasses.astuple(spec), global_batch_size, split, host_index,
           num_hosts)
    return _stream(key, (spec.source, spec.vocabulary), lambda: Batches(functools.partial(
        build_dataset, spec, batch_size=global_batch_size // num_hosts, split=split,
        shard_index=host_index, num_shards=num_hosts))).skip(start_step)


def _check_stream(global_batch_size: int, num_hosts: int, start_step: int) -> None:
    if global_batch_size % num_hosts:
        raise ValueError(f"global_batch_size={global_batch_size}: must divide evenly among "
                         f"num_hosts={num_hosts}")
    if start_step < 0:
        raise ValueError(f"start_step={start_step}: must be >= 0")


def mtf_batches(architecture: str, source: str, vocabulary: str, global_batch_size: int, *,
                inputs_length: int, targets_length: int, seed: int = 0, pack: bool = True,
                start_step: int = 0, host_index: int = 0, num_hosts: int = 1,
                ) -> "Batches":
    """Multitask-finetuning batches from the T0 training mixture (PAPER.md 3.3), like
    ``pretraining_batches``: deterministic in ``seed``, this host's share, resumable.

    The prompted examples (``inputs`` without EOS, ``targets`` with it, as T0 built them) go
    through the architecture's converter, as the study's MTF gins did: ED ``EncDecFeatureConverter``
    (inputs to the encoder); CD and ND ``PrefixLMFeatureConverter`` (inputs + targets in one
    decoder row of ``inputs_length + targets_length`` tokens, loss on the targets, and
    ``decoder_causal_attention`` over inputs + 1 positions, which ND reads and CD ignores).

    Args:
      architecture: "cd", "nd" or "ed".
      source: "t0-hf" (Hugging Face datasets, templates applied at read time) or a local directory
        of prompted JSONL files (``objectives.t0.write_prompted_jsonl``).
      vocabulary: "t5", "byte" or a SentencePiece model path.
      global_batch_size: rows per step over all hosts.
      inputs_length, targets_length: task feature lengths (1024 / 256 in the study).
      seed: the stream's one seed (mixture sampling, shuffling).
      pack: pack several examples per row (the study packs MTF).
      start_step, host_index, num_hosts: as ``pretraining_batches``.
    """
    _check_stream(global_batch_size, num_hosts, start_step)
    if architecture not in ("cd", "nd", "ed"):
        raise ValueError(f"architecture={architecture!r}: must be one of ['cd', 'nd', 'ed']")

    def make() -> Batches:
        hide_gpus_from_tensorflow()
        from objectives import t0, vocab

        vocab_ = vocab.load_vocabulary(vocabulary)
        if source == "t0-hf":
            mixture = t0.register_t0_mixture_from_hf(vocab_)
        else:  # T0's rates and 500,000 cap over the local files (objectives/t0.py)
            mixture = t0.register_t0_mixture_from_jsonl(source, vocab_)
        import seqio

        lengths = {"inputs": inputs_length, "targets": targets_length}
        shard_info = seqio.ShardInfo(host_index, num_hosts) if num_hosts > 1 else None

        def build() -> Any:
            with _building():
                dataset = mixture.get_dataset(sequence_length=lengths, split="train",
                                              shuffle=True, seed=seed, shard_info=shard_info,
                                              num_epochs=None)
            converter = (seqio.EncDecFeatureConverter(pack=pack) if architecture == "ed" else
                         seqio.PrefixLMFeatureConverter(pack=pack, loss_on_targets_only=True))
            return converter(dataset, lengths).batch(global_batch_size // num_hosts,
                                                     drop_remainder=True)

        return Batches(build)

    key = ("mtf", architecture, source, vocabulary, global_batch_size, inputs_length,
           targets_length, seed, pack, host_index, num_hosts)
    return _stream(key, (source, vocabulary), make).skip(start_step)


# -------------------------------------------------------------------------------------------------
# The iterator and its state.
# -------------------------------------------------------------------------------------------------

class DataStateError(ValueError):
    """A saved iterator state that cannot be restored (missing, damaged, another pipeline)."""


class Batches:
    """Numpy batches from one ``tf.data`` iterator whose position can be saved and restored.

    The iterator (created on first use) is a plain ``tf.data`` iterator, not ``as_numpy_iterator``,
    so that ``tf.train.Checkpoint(iterator=...)`` can save it; batches are converted to numpy one by
    one. Nothing reads ahead outside tf.data (its own prefetch buffer is part of the saved state), so
    the state saved after ``n`` batches were taken is exactly "the next batch is batch ``n``".

    Only the first iterator of a dataset is the stream: tf.data draws new shuffle seeds for every
    further pass over a dataset object (``reshuffle_each_iteration``), so after a failed
    ``restore_state`` the pipeline is built again (``build``), never iterated a second time.
    """

    def __init__(self, build: Callable[[], Any]) -> None:
        """Builds the (batched) dataset with ``build()`` and sets the options that make its order
        deterministic; ``build`` is called again only after a failed ``restore_state``."""
        self._build = build
        self._dataset = self._prepare(build())
        self._iterator = None
        self._taken = 0  # batches taken from this iterator (replayed ones included)
        self._problem: Optional[str] = None  # why save_state failed, once it has
        _OPEN.add(self)

    @staticmethod
    def _prepare(dataset: Any) -> Any:
        import tensorflow as tf

        options = tf.data.Options()
        options.deterministic = True  # parallel maps must not reorder elements
        # The sources' readers (checkpointable_from_generator) are Python functions, which tf.data
        # counts as external state; their position is the saved Dataset.range's, so their own
        # state is not needed. (seqio's random preprocessors are stateless; a stateful op elsewhere
        # would restart on restore, which the exact-resume tests would show.)
        options.experimental_external_state_policy = (
            tf.data.experimental.ExternalStatePolicy.IGNORE)
        # No autotuning model. Its optimisation thread ("tf_data_model") is joined when the
        # iterator is dropped, and in a long grid process that join took 6-63 s after the last
        # stage (a stack dump: the main thread in RootDataset::Iterator's destructor, waiting on
        # that thread). Without it, AUTOTUNE prefetch and parallel maps keep tf.data's fixed
        # defaults instead of tuned ones; on the tiny grid's streams that is faster, not
        # slower (2 cores, batches/s on -> off: cd:flm 186 -> 214, nd:mlm 132 -> 165, cd:mtf
        # 103 -> 149), for a step that takes about 7 batches/s. The elements and their order
        # do not depend on it (deterministic above).
        options.autotune.enabled = False
        return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)

    def _tf_iterator(self) -> Any:
        if self._iterator is None:
            self._iterator = iter(self._dataset)
        return self._iterator

    def __iter__(self) -> "Batches":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        element = next(self._tf_iterator())
        self._taken += 1
        return {name: tensor.numpy() for name, tensor in element.items()}

    def close(self) -> None:
        """Drops the iterator (its threads stop); the stream cannot be read after this."""
        self._iterator = None
        self._dataset = None

    def skip(self, count: int) -> "Batches":
        """Replays and drops the next ``count`` batches (resume without a saved state)."""
        iterator = self._tf_iterator()
        for _ in range(count):
            next(iterator)  # tensors only: no numpy copies of batches that are dropped
        self._taken += count
        return self

    def save_state(self, prefix: str) -> None:
        """Writes the iterator's state to ``prefix.index`` and ``prefix.data-*`` (synchronously).

        Raises:
          DataStateError: in one line, if the pipeline cannot be saved (a dataset tf.data cannot
            checkpoint, such as TensorFlow's own ``from_generator``); once it has failed, every
            later call fails at once with the same reason and writes nothing.
        """
        import tensorflow as tf

        if self._problem is None:
            try:
                tf.train.Checkpoint(iterator=self._tf_iterator()).write(prefix)
                return
            except (tf.errors.OpError, ValueError, TypeError) as e:
                self._problem = _one_line(e)
        raise DataStateError(f"the input pipeline's state cannot be saved ({self._problem})")

    def restore_state(self, prefix: str) -> None:
        """Puts back a state written by ``save_state``; the next batch is the one that was next.

        Raises:
          DataStateError: in one line, if the state cannot be read or does not fit this pipeline;
            the stream is then at its start again (a newly built pipeline: ``skip`` from there).
          ValueError: if batches were already taken from this iterator.
        """
        import tensorflow as tf

        if self._taken:
            raise ValueError(f"restore_state({prefix}): {self._taken} batches were already taken; "
                             "restore into a new iterator")
        try:
            tf.train.Checkpoint(iterator=self._tf_iterator()).read(prefix).assert_consumed()
        # TensorFlow's checkpoint reader raises many types for damaged files (OpError, IndexError
        # "Read less bytes than requested", AssertionError for a state of another pipeline...).
        except Exception as e:  # pylint: disable=broad-exception-caught
            # Neither the half-restored iterator nor a second pass over its dataset is the stream.
            self._iterator = None
            self._dataset = self._prepare(self._build())
            raise DataStateError(f"{prefix}: {_one_line(e)}") from e


# Every Batches not yet garbage collected. Their iterators are dropped before the interpreter shuts
# down: a tf.data thread calling into Python (a source reader) while the interpreter finalizes
# waits for the GIL forever, and so does the finalizing thread that destroys the iterator (seen
# with a busy pipeline held by a module global at exit).
_OPEN: "weakref.WeakSet[Batches]" = weakref.WeakSet()


@atexit.register
def _close_open_batches() -> None:
    for batches in list(_OPEN):
        batches.close()


# -------------------------------------------------------------------------------------------------
# Streams shared by the stages of one process.
# -------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def shared_streams(max_bytes: int = 1 << 30) -> Iterator[Callable[[], None]]:
    """While active, the stages of this process that read the same stream share one pipeline.

    A grid runs its stages one after another in one process (``harness/grid/runner.py``), and many
    of them read a stream another stage has read: every multitask finetuning of one architecture
    reads the same mixture from its start, and an adaptation reads a pretraining objective's stream
    from its start. Batch ``k`` of a stream is a pure function of what decides the stream (the key:
    every setting of the pipeline, this host's shard, and the size and modification time of the
    source and vocabulary files), so each batch is built once per process: the first pipeline of
    a stream is kept, positioned after the last batch any stage took from it, together with those
    batches (numpy, read-only); a later stage reads the batches before that position from memory
    and the rest from the kept pipeline. That saves what every stage would otherwise pay again: the
    build (tracing the tasks' preprocessors: 3-6 s for the tiny grid's pipelines) and the first
    batch (filling the shuffle buffers: 1-4 s).

    Data states stay exact. A stage that saves its state where the kept pipeline is saves that
    pipeline's state: the same stream at the same position. One that saves behind it (a shorter
    stage on a longer stage's stream) builds a pipeline of its own for the save, replayed to its
    position, and reads from that one from then on. Restoring a state (a resumed stage) always
    restores into a new pipeline of the stage's own.

    Yields ``close``: call it to drop the kept pipelines and batches before the block ends (a grid
    times it); the block's end does it otherwise. Nested inside another ``shared_streams``, the
    outer one serves, and ``close`` does nothing.

    Args:
      max_bytes: the memory that kept batches may take, all streams together. A stream whose next
        batch would pass it keeps what it has; a stage that needs a batch no longer held builds its
        own pipeline, as without sharing.
    """
    global _SHARED
    if _SHARED is not None:  # nested: the outer registry serves
        yield lambda: None
        return
    _SHARED = _SharedStreams(max_bytes)
    try:
        yield _SHARED.close
    finally:
        registry, _SHARED = _SHARED, None
        registry.close()


def _stream(key: tuple, files: Iterable[str], make: Callable[[], Batches]) -> Any:
    """A new reader of the stream ``key`` at its first batch: a ``Batches`` of its own (``make()``),
    or, inside ``shared_streams``, a ``_SharedReader``; there the signatures of the local ``files``
    it reads (source, vocabulary) join the key."""
    if _SHARED is None:
        return make()
    key = (*key, *(_files_signature(path) for path in files))
    return _SharedReader(_SHARED.recording(key, make), make)


def _files_signature(path: str) -> Optional[tuple]:
    """``(relative path, size, modification time)`` of ``path`` and the files under it, or None
    where ``path`` names no local file (``c4``, ``t5``): part of a shared stream's key, so that a
    file changed between two stages of one process is never read from the first stage's batches."""
    if not os.path.exists(path):
        return None
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
    stats = [(os.path.relpath(f, path), os.stat(f)) for f in files]
    return tuple((name, stat.st_size, stat.st_mtime_ns) for name, stat in stats)


class _Recording:
    """One stream in ``shared_streams``: its kept pipeline and the batches taken from it."""

    def __init__(self, pipeline: Batches) -> None:
        self.pipeline = pipeline
        self.batches: list[dict[str, np.ndarray]] = []  # batch i is batches[i] while it is kept
        self.head = 0                # the kept pipeline's position: batches taken from it
        self.keeping = True          # False once the memory budget stopped keeping batches

    def take(self, registry: "_SharedStreams") -> dict[str, np.ndarray]:
        batch = next(self.pipeline)
        for array in batch.values():
            array.flags.writeable = False  # shared by every reader of the stream
        if self.keeping and registry.admit(sum(a.nbytes for a in batch.values())):
            self.batches.append(batch)
        else:
            self.keeping = False
        self.head += 1
        return batch


class _SharedStreams:
    """The registry of ``shared_streams``: key -> ``_Recording``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.recordings: dict[tuple, _Recording] = {}

    def recording(self, key: tuple, make: Callable[[], Batches]) -> _Recording:
        if key not in self.recordings:
            self.recordings[key] = _Recording(make())
        return self.recordings[key]

    def admit(self, nbytes: int) -> bool:
        if self.nbytes + nbytes > self.max_bytes:
            return False
        self.nbytes += nbytes
        return True

    def close(self) -> None:
        """Closes the kept pipelines (their threads stop) and drops the kept batches; idempotent."""
        for recording in self.recordings.values():
            recording.pipeline.close()
        self.recordings.clear()
        self.nbytes = 0


class _SharedReader:
    """One stage's reader of a shared stream, with ``Batches``' interface (``shared_streams``).

    Batch ``i`` comes from the recording's memory if it is kept there, from the kept pipeline if
    that is at ``i``, and otherwise from a pipeline of the reader's own (built once, replayed to
    ``i``), which serves it from then on.
    """

    def __init__(self, recording: _Recording, make: Callable[[], Batches]) -> None:
        self._recording = recording
        self._make = make
        self._position = 0
        self._own: Optional[Batches] = None

    def __iter__(self) -> "_SharedReader":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._own is None:
            recording = self._recording
            if self._position < len(recording.batches):
                batch = recording.batches[self._position]
            elif self._position == recording.head:
                batch = recording.take(_SHARED) if _SHARED is not None else None
            else:
                batch = None
            if batch is not None:
                self._position += 1
                return dict(batch)
            self._detach()
        self._position += 1
        return next(self._own)

    def _detach(self) -> Batches:
        """A pipeline of this reader's own, at its position."""
        if self._own is None:
            self._own = self._make().skip(self._position)
        return self._own

    def skip(self, count: int) -> "_SharedReader":
        if self._own is not None:
            self._own.skip(count)
            self._position += count
        else:
            for _ in range(count):
                next(self)
        return self

    def save_state(self, prefix: str) -> None:
        """As ``Batches.save_state``: the kept pipeline's state if it is at this reader's position,
        else that of a pipeline of the reader's own."""
        if self._own is None and self._position == self._recording.head:
            self._recording.pipeline.save_state(prefix)
        else:
            self._detach().save_state(prefix)

    def restore_state(self, prefix: str) -> None:
        """As ``Batches.restore_state``, into a new pipeline of the reader's own."""
        if self._position:
            raise ValueError(f"restore_state({prefix}): {self._position} batches were already "
                             "taken; restore into a new iterator")
        self._own = self._make()
        self._own.restore_state(prefix)

    def close(self) -> None:
        if self._own is not None:
            self._own.close()
            self._own = None


_SHARED: Optional[_SharedStreams] = None


def _one_line(error: BaseException, limit: int = 300) -> str:
    """A TensorFlow error's first line (they carry graph dumps below), at most ``limit`` chars."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# -------------------------------------------------------------------------------------------------
# While a pipeline is built: checkpointable generator sources, tasks traced without autograph.
# -------------------------------------------------------------------------------------------------

_INT64_MAX = np.iinfo(np.int64).max
_TASK_PATCH_LOCK = threading.Lock()
_GENERATOR_PATCH_LOCK = threading.Lock()


@contextlib.contextmanager
def _building() -> Iterator[None]:
    """What this module changes while it builds a pipeline (``checkpointable_sources`` and
    ``tasks_without_autograph``); neither changes an element of the stream. seqio's advice to cache
    a generator-backed task before training on it is dropped meanwhile (``_UncachedNotice``)."""
    notice = _UncachedNotice()
    absl_logger = logging.getLogger("absl")
    absl_logger.addFilter(notice)
    try:
        with checkpointable_sources(), tasks_without_autograph():
            yield
    finally:
        absl_logger.removeFilter(notice)


class _UncachedNotice(logging.Filter):
    """Drops seqio's "Using an uncached FunctionDataset for training is not recommended since it
    often results in insufficient shuffling on restarts", logged once per task per build (twenty
    lines for each MTF stage of the tiny grid). Its concern does not hold here: a restart restores
    the pipeline's saved state, shuffle buffers included, or replays the stream, and either gives
    the uninterrupted run's batches exactly (module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Using an uncached FunctionDataset for training")


@contextlib.contextmanager
def tasks_without_autograph() -> Iterator[None]:
    """While active, ``seqio.Task.get_dataset`` traces its preprocessors without autograph.

    Autograph rewrites every function a ``Dataset.map`` traces so that Python control flow on
    tensors becomes graph control flow; converting the t5/seqio preprocessors costs about half of a
    pipeline's first build in a process (measured: 10 s -> 5 s for nd:mlm's task, 6 s -> 3.5 s per
    build for the 20-task MTF mixture of the tiny world). None of this project's task preprocessors
    branch on tensors, and any that did would fail loudly when traced without autograph
    (``OperatorNotAllowedInGraphError``, a ``TypeError``), never change silently: such a task is
    traced again with autograph. The feature converters, whose packing loops over tensors, keep it.
    """
    import seqio
    from tensorflow.python.autograph.core import ag_ctx  # the switch tf.function's autograph reads

    with _TASK_PATCH_LOCK:
        original = seqio.Task.__dict__["get_dataset"]

        @functools.wraps(original)
        def get_dataset(self, *args, **kwargs):
            try:
                with ag_ctx.ControlStatusCtx(status=ag_ctx.Status.DISABLED):
                    return original(self, *args, **kwargs)
            except TypeError:
                return original(self, *args, **kwargs)

        seqio.Task.get_dataset = get_dataset
        try:
            yield
        finally:
            seqio.Task.get_dataset = original


@contextlib.contextmanager
def checkpointable_sources() -> Iterator[None]:
    """While active, ``tf.data.Dataset.from_generator(gen, output_signature=...)`` builds
    ``checkpointable_from_generator(gen, output_signature)``: the same elements, in the same order.

    objectives/sources.py and objectives/t0.py build their datasets with ``from_generator``; this
    swaps the op under them while this module builds a pipeline, and only then (other callers, and
    other forms of the call, get TensorFlow's).
    """
    import tensorflow as tf

    with _GENERATOR_PATCH_LOCK:
        descriptor = tf.data.Dataset.__dict__["from_generator"]
        original = tf.data.Dataset.from_generator

        def from_generator(generator, output_types=None, output_shapes=None, args=None,
                           output_signature=None, name=None):
            if output_signature is None or args is not None or output_types is not None \
                    or output_shapes is not None:
                return original(generator, output_types, output_shapes, args, output_signature,
                                name)
            return checkpointable_from_generator(generator, output_signature)

        tf.data.Dataset.from_generator = staticmethod(from_generator)
        try:
            yield
        finally:
            tf.data.Dataset.from_generator = descriptor


def checkpointable_from_generator(generator: Callable[[], Iterable[Any]],
                                  output_signature: Any) -> Any:
    """``tf.data.Dataset.from_generator(generator, output_signature=...)`` that tf.data can save.

    Element ``i`` of a pass is read by a Python function called with ``i`` from a
    ``Dataset.range``, so the saved state of a pass is the range's position. The reader keeps one
    open generator and its position: reading ``i`` at the position is ``next()``; any other ``i``
    (after a restore, or a new pass) re-opens the generator and skips to ``i``. ``generator`` must
    give the same sequence each time it is called (a seeded source does). One pass at a time: two
    iterators read at once would re-open the generator as they interleave (correct, but slow).

    Args:
      generator: a callable returning an iterable of elements (re-called for every pass).
      output_signature: a nest of ``tf.TensorSpec`` (dicts, tuples, lists) of one element.

    Returns:
      A ``tf.data.Dataset`` of the generator's elements.
    """
    import tensorflow as tf

    specs = tf.nest.flatten(output_signature)
    reader = _SourceReader(generator, output_signature, specs)

    def read(index: Any) -> Any:
        # Stateful: tf.data keeps the calls sequential and in order (never parallel).
        flags_and_values = tf.numpy_function(reader.read, [index],
                                             [tf.bool] + [s.dtype for s in specs], stateful=True)
        flags_and_values[0].set_shape(())
        for tensor, spec in zip(flags_and_values[1:], specs):
            tensor.set_shape(spec.shape)  # numpy_function drops shapes
        return tuple(flags_and_values)

    def unflatten(more: Any, *values: Any) -> Any:
        del more
        return tf.nest.pack_sequence_as(output_signature, list(values))

    return (tf.data.Dataset.range(_INT64_MAX).map(read)
            .take_while(lambda more, *values: more).map(unflatten))


class _SourceReader:
    """The Python side of ``checkpointable_from_generator``: element ``i`` of the generator."""

    def __init__(self, generator: Callable[[], Iterable[Any]], signature: Any,
                 specs: list) -> None:
        self.generator = generator
        self.signature = signature
        self.dtypes = [spec.dtype.as_numpy_dtype for spec in specs]
        self.end = [np.bool_(False)] + [
            np.zeros([0 if d is None else d for d in spec.shape.as_list()],
                     spec.dtype.as_numpy_dtype) for spec in specs]
        self.lock = threading.Lock()
        self.iterator: Optional[Iterator[Any]] = None
        self.position = 0  # index of the element the open generator yields next
        self.reopened = 0  # times the generator was (re-)opened, for tests and benchmarks

    def read(self, index: Any) -> list:
        index = int(index)
        with self.lock:
            if self.iterator is None or index < self.position:
                self.iterator, self.position = iter(self.generator()), 0
                self.reopened += 1
            try:
                while self.position < index:  # after a restore: skip what was read before
                    next(self.iterator)
                    self.position += 1
                element = next(self.iterator)
                self.position += 1
            except StopIteration:
                return self.end
        return [np.bool_(True)] + [np.asarray(value, dtype) for value, dtype in
                                   zip(_flatten_like(self.signature, element), self.dtypes)]


def _flatten_like(signature: Any, value: Any) -> list:
    """``value``'s leaves in ``tf.nest.flatten(signature)`` order (dict keys sorted)."""
    if isinstance(signature, Mapping):
        return [leaf for key in sorted(signature) for leaf in
                _flatten_like(signature[key], value[key])]
    if isinstance(signature, (tuple, list)):
        return [leaf for spec, item in zip(signature, value) for leaf in _flatten_like(spec, item)]
    return [value]

# -------------------------------------------------------------------------------------------------
# Inspection: what exactly is the model fed (``archobj data preview``), and how fast
# (``archobj data bench``).
# -------------------------------------------------------------------------------------------------

def describe_example(example: Mapping[str, np.ndarray], vocabulary) -> dict:
    """One row of model features as decoded text, segment by segment.

    For each packed segment, the decoder tokens are split into ``context`` (no loss: the prefix an
    nd model sees bidirectionally, or the corrupted input of a decoder-only MLM row) and
    ``targets`` (the tokens with loss); an encoder-decoder row also shows its ``encoder`` text.
    Arrays are trimmed of trailing padding.
    """
    def segments_of(prefix: str) -> np.ndarray:
        tokens = example[f"{prefix}_target_tokens" if prefix == "decoder" else
                         f"{prefix}_input_tokens"]
        ids = example.get(f"{prefix}_segment_ids")
        return np.where(tokens > 0, 1, 0) if ids is None else ids

    def decode(ids: np.ndarray) -> str:
        return vocabulary.decode([int(t) for t in ids])

    targets = example["decoder_target_tokens"]
    weights = example.get("decoder_loss_weights", (targets > 0).astype(np.int32))
    decoder_segments = segments_of("decoder")
    described = []
    for segment in [s for s in np.unique(decoder_segments) if s > 0]:
        where = decoder_segments == segment
        entry = {"segment": int(segment),
                 "context": decode(targets[where & (weights == 0)]),
                 "targets": decode(targets[where & (weights > 0)])}
        if "encoder_input_tokens" in example:
            encoder_where = segments_of("encoder") == segment
            entry["encoder"] = decode(example["encoder_input_tokens"][encoder_where])
        described.append(entry)

    def trimmed(array: np.ndarray) -> list[int]:
        nonzero = np.nonzero(array)[0]
        return [int(x) for x in array[: nonzero[-1] + 1]] if len(nonzero) else []

    return {"features": {name: trimmed(array) for name, array in sorted(example.items())},
            "lengths": {name: int(array.shape[0]) for name, array in sorted(example.items())},
            "segments": described}


def format_description(index: int, description: Mapping) -> str:
    """Human-readable rendering of ``describe_example``'s output."""
    lines = [f"== example {index} =="]
    for name, values in description["features"].items():
        shown = " ".join(str(v) for v in values[:24]) + (" ..." if len(values) > 24 else "")
        lines.append(f"  {name:26s} [{description['lengths'][name]}] {shown}")
    for entry in description["segments"]:
        lines.append(f"  -- segment {entry['segment']}")
        if "encoder" in entry:
            lines.append(f"     encoder : {entry['encoder']!r}")
        if entry["context"]:
            lines.append(f"     context : {entry['context']!r}")
        lines.append(f"     targets : {entry['targets']!r}")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class PipelineRate:
    """Throughput of one objective's input pipeline."""

    architecture: str
    objective: str
    batches: int
    batch_size: int
    seconds: float
    startup_seconds: float
    real_tokens: int
    padded_tokens: int

    @property
    def examples_per_second(self) -> float:
        return self.batches * self.batch_size / self.seconds

    @property
    def tokens_per_second(self) -> float:
        return self.real_tokens / self.seconds

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.real_tokens / max(self.padded_tokens, 1)


def measure_pipeline(spec: DataSpec, batch_size: int, batches: int) -> PipelineRate:
    """Times ``batches`` batches after the first (which pays graph building and file opening)."""
    import time

    start = time.perf_counter()
    iterator = pretraining_batches(spec, batch_size)
    next(iterator)
    startup = time.perf_counter() - start
    real = padded = 0
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
        for name in ("decoder_target_tokens", "encoder_input_tokens"):
            if name in batch:
                real += int(np.count_nonzero(batch[name]))
                padded += int(batch[name].size)
    return PipelineRate(spec.architecture, spec.objective, batches, batch_size,
                        time.perf_counter() - start, startup, real, padded)
