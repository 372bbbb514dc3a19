"""Batches of seqio model features for training: deterministic, sharded per host, resumable.

``pretraining_batches`` registers the (architecture, objective) task over a text source, runs seqio's
pipeline and converter (objectives/), and yields numpy batches keyed by seqio's model feature names
(PAPER.md 6.3), ready for ``jax.device_put``.

Determinism and resume. One seed fixes everything random: the order of source files, seqio's shuffle
buffer and the seeds of the stateless random preprocessors (chunking, span-corruption noise, PLM split
points). Batch ``k`` is therefore a pure function of (task, seed, shard, k). Starting at ``start_step=k``
skips the first ``k`` batches of that same stream, so a run restarted at step k sees exactly the
batches an uninterrupted run would have seen from step k: no repeats, no skips. Skipping costs running
the pipeline over the skipped batches (about ``k * batch / examples_per_second``; ``archobj data bench``
measures the rate).

Multi-host. Host ``i`` of ``n`` reads shard ``i`` of the source (``seqio.ShardInfo``) and builds
``global_batch / n`` rows of every global batch; the shards are disjoint and together cover the corpus.

TensorFlow is imported here (through seqio) and GPUs are hidden from it, so that it never takes
accelerator memory from JAX. Only processes that read data import this module.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterator, Mapping, Optional

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
    any graph, raising one-line ``ValueError`` s.
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
    dataset = tasks.get_dataset(task_name, spec.architecture, spec.objective, feature_lengths,
                                split=split, seed=spec.seed, shuffle=shuffle,
                                shard_info=shard_info, pack=spec.pack, num_epochs=num_epochs)
    if batch_size is not None:
        dataset = dataset.batch(batch_size, drop_remainder=True)
    return dataset


def pretraining_batches(spec: DataSpec, global_batch_size: int, *, start_step: int = 0,
                        host_index: int = 0, num_hosts: int = 1,
                        split: str = "train") -> Iterator[Mapping[str, np.ndarray]]:
    """Yields this host's share of every global batch, from ``start_step`` on.

    Args:
      spec: the stream.
      global_batch_size: rows per step over all hosts; must divide evenly among hosts.
      start_step: first step to yield (resume); batches before it are skipped, not repeated.
      host_index: this host (``jax.process_index()``).
      num_hosts: number of hosts (``jax.process_count()``).
      split: source split.

    Yields:
      ``{feature name: np.ndarray [global_batch_size / num_hosts, length]}``.
    """
    _check_stream(global_batch_size, num_hosts, start_step)
    dataset = build_dataset(spec, batch_size=global_batch_size // num_hosts, split=split,
                            shard_index=host_index, num_shards=num_hosts)
    return _from_step(dataset, start_step)


def _check_stream(global_batch_size: int, num_hosts: int, start_step: int) -> None:
    if global_batch_size % num_hosts:
        raise ValueError(f"global_batch_size={global_batch_size}: must divide evenly among "
                         f"num_hosts={num_hosts}")
    if start_step < 0:
        raise ValueError(f"start_step={start_step}: must be >= 0")


def _from_step(dataset, start_step: int) -> Iterator[Mapping[str, np.ndarray]]:
    """Numpy batches of ``dataset`` from batch ``start_step`` on, in a fixed order."""
    import tensorflow as tf

    options = tf.data.Options()
    options.deterministic = True  # parallel maps must not reorder elements
    dataset = dataset.with_options(options).skip(start_step).prefetch(tf.data.AUTOTUNE)
    return dataset.as_numpy_iterator()


def mtf_batches(architecture: str, source: str, vocabulary: str, global_batch_size: int, *,
                inputs_length: int, targets_length: int, seed: int = 0, pack: bool = True,
                start_step: int = 0, host_index: int = 0, num_hosts: int = 1,
                ) -> Iterator[Mapping[str, np.ndarray]]:
    """Multitask-finetuning batches from the T0 training mixture (PAPER.md 3.3), like
    ``pretraining_batches``: deterministic in ``seed``, this host's share, resumable by skipping.

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
    dataset = mixture.get_dataset(sequence_length=lengths, split="train", shuffle=True, seed=seed,
                                  shard_info=shard_info, num_epochs=None)
    converter = (seqio.EncDecFeatureConverter(pack=pack) if architecture == "ed" else
                 seqio.PrefixLMFeatureConverter(pack=pack, loss_on_targets_only=True))
    dataset = converter(dataset, lengths).batch(global_batch_size // num_hosts,
                                                drop_remainder=True)
    return _from_step(dataset, start_step)


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
