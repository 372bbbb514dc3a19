"""Exact, fast zero-shot scoring and greedy generation for cd, nd and ed models (PAPER.md 3.1, 3.2).

``Scorer`` answers the two questions every zero-shot benchmark asks of a model:

* ``loglikelihood([(context_ids, continuation_ids), ...])`` -> ``[(sum of log p(continuation),
  is_greedy), ...]``: lm-evaluation-harness's ``loglikelihood`` and T0's rank classification;
* ``generate(contexts, max_new_tokens, stop)``: greedy continuations (lm-eval's ``generate_until``).

Rows are those of training (PAPER.md 3.1, "How it runs on T5X models"; seqio's converters, 6.3):

  cd  one causal row ``[context, continuation]`` (decoder inputs shifted right with BOS 0), the loss
      on the continuation.
  nd  the same row with ``decoder_causal_attention`` over the context + 1 positions: the position
      whose input is the last context token (and which predicts the first continuation token)
      belongs to the bidirectional prefix.
  ed  the context to the encoder, the continuation to the decoder (BOS 0, shifted right).

How it is computed (PERF.md, "Zero-shot evaluation throughput"). Everything that depends on the
context alone is computed once per distinct context, however many continuations it has:

  prefix pass   decoders: the n + 1 prefix positions ``[BOS, c_0 .. c_{n-1}]`` are prefilled into a
                KV cache (causally for cd, bidirectionally for nd: exactly the prefix of the full
                row, since no prefix position can see a continuation token in either mask);
                ed: the encoder runs once and the decoder's BOS step fills the cross-attention
                cache. Either way the last prefix position's output is the distribution of the
                first continuation token, so single-token continuations (many answer choices)
                need nothing else.
  continuation  the remaining tokens of all of a context's continuations are packed side by side
                into one row after its prefix (each continuation its own segment: it sees the
                prefix and its own earlier tokens, at the positions it would have in its own
                row), so one pass serves every choice of ``batch_size`` contexts with no copy of
                any cache; only this pass's positions (never the prefix's) are projected to the
                vocabulary.

The two passes give the full row's numbers exactly (up to float reassociation): the causal decoder's
positions never look ahead, and the non-causal decoder's prefix (context + 1) never sees the
continuation, so splitting the row at the end of the prefix changes no attention pattern; packing
changes none either, since each packed token sees exactly the keys, at exactly the relative
positions, that it sees in its own row (``models.masks.make_cache_mask``'s segments).

Shapes are static: contexts are padded to a small set of length buckets, packed continuations
likewise, and every call has ``batch_size`` rows (the last batch is padded), so each (bucket,
bucket) shape compiles once. Contexts are sorted by length so that batches are tight.

Truncation: an over-long context loses its oldest tokens (left truncation). For ed the context is
cut to ``max_inputs_length``; for the decoders the whole row (context + continuation) to
``max_inputs_length + max_targets_length``, keeping the whole continuation. A continuation longer
than that budget is an error, never silently cut.

This module imports neither lm-eval nor TensorFlow (``harness/eval/lm_eval_adapter.py`` wraps it).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from models.config import ARCHITECTURES, DTYPES, ModelConfig
from models.decoding import EOS_ID, PAD_ID, init_cache
from models.losses import token_log_probs
from models.transformer import Transformer

Array = jax.Array
PathLike = Union[str, os.PathLike]
Request = tuple[Sequence[int], Sequence[int]]
StopSpec = Union[None, Sequence[Sequence[int]], Callable[[list[int]], bool]]

# Padded lengths (capped at the limit of each axis, which is always a bucket itself): doubling up
# to 64, then steps of 1.5x, where padding would cost most (a sixth of the work on average, not a
# third). Every bucket is one more compile per shape it enters.
DEFAULT_LENGTH_BUCKETS = (8, 16, 32, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072,
                          4096)
# Packed continuation tokens per context and pass (more go to a second pass; a single longer
# continuation gets a pass of its own width).
PACKED_WIDTH = 128
# Greedy decoding runs this many steps per device call between host-side stop checks.
DEFAULT_GENERATE_CHUNK = 16
# Context batches queued on the device before the host waits for the oldest one's scores.
_MAX_BATCHES_IN_FLIGHT = 4


def with_dtype(config: ModelConfig, dtype: Optional[str]) -> ModelConfig:
    """``config`` with its compute dtype replaced (None keeps it).

    Raises:
      ValueError: a dtype that is not one of ``models.config.DTYPES``, in one line.
    """
    if dtype is None or dtype == config.dtype:
        return config
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: must be one of {list(DTYPES)}")
    return dataclasses.replace(config, dtype=dtype)


def inference_config(config: ModelConfig) -> ModelConfig:
    """``config`` without the fields that only training reads (dropout, rematerialisation).

    The jitted passes below take the config as a static argument, so two checkpoints whose configs
    differ only there (a pretrained model and its multitask finetuning at dropout 0.1) share every
    compile instead of compiling each shape twice. Inference never drops out nor differentiates,
    so the numbers are the same.
    """
    return config.replace(dropout_rate=0.0, remat_policy="none")


def resolve_architecture(config: ModelConfig, architecture: Optional[str]) -> ModelConfig:
    """The config to evaluate with: ``config`` itself, or cd <-> nd switched (PAPER.md 3.1).

    The causal and non-causal decoders share one parameter tree, so a checkpoint of either can be
    evaluated as the other (the study's ``OPPOSITE_ARCHITECTURE``); an encoder-decoder cannot.

    Raises:
      ValueError: an unknown architecture, or a switch between ed and a decoder-only model.
    """
    if architecture is None or architecture == config.architecture:
        return config
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture={architecture!r}: must be one of "
                         f"{', '.join(ARCHITECTURES)} (or None for the checkpoint's own)")
    if config.is_encoder_decoder or architecture == "ed":
        raise ValueError(
            f"architecture={architecture!r}: the checkpoint is {config.architecture!r}; only "
            "'cd' and 'nd' share a parameter tree, so only they can be evaluated as each other "
            "(leave architecture unset)")
    return config.replace(architecture=architecture)


@dataclasses.dataclass
class _Prefix:
    """Device-side results of one prefix pass over ``batch_size`` contexts."""

    cache: Any                          # KV caches, leading layers axis, batch axis 1
    first_log_probs: Array              # [batch, vocab] log p(first continuation token)
    encoder_tokens: Optional[Array]     # [batch, encoder_length] (ed), for the cross mask
    lengths: np.ndarray                 # [batch] context lengths n (host)


@dataclasses.dataclass
class _Block:
    """Where one request's continuation (after its first token) sits in a packed pass."""

    request: int   # index into the requests
    row: int       # its context's row in the batch
    offset: int    # first packed position
    length: int    # tokens (the continuation's length - 1)


@dataclasses.dataclass
class _BatchScores:
    """Device-side scores of one batch of contexts, and the host-side map back to requests."""

    firsts: list[tuple[int, int]]       # (request, row) in the order of ``first``
    first: tuple[Array, Array]          # log p and is_greedy of each first token
    passes: list[tuple[list[_Block], tuple[Array, Array]]]  # blocks, ([b, p] log p, is_greedy)


class Scorer:
    """Log-likelihood scoring and greedy generation over one model's parameters.

    Args:
      model_config: the model's config (from the checkpoint).
      params: its parameters (``variables["params"]``); moved to the default device once.
      architecture: evaluate a cd checkpoint as nd or the reverse (None: the config's own).
      batch_size: rows per device call (contexts per prefix pass, continuations per
        continuation pass, prompts per generation batch).
      max_inputs_length: ed: the encoder's context budget; decoders: with ``max_targets_length``,
        the row budget (context + continuation). Also the context budget of ``generate``.
      max_targets_length: the longest continuation (ed); see ``max_inputs_length`` (decoders).
      length_buckets: the padded lengths to use (each axis adds its own limit as the last bucket);
        default ``DEFAULT_LENGTH_BUCKETS``.
      generate_chunk: greedy steps per device call in ``generate`` (stops are checked between).
      mesh: a ``(data, model)`` device mesh (``models.sharding.make_mesh``) whose parameters are
        sharded by the model's logical axis rules, as in training: the model axis splits heads,
        MLP and vocabulary, so a model too large for one device is scored across several. None
        (the default) puts the parameters on one device.

    Raises:
      ValueError: a bad argument or architecture switch (one line, before any compile).
    """

    def __init__(self, model_config: ModelConfig, params: Any, *,
                 architecture: Optional[str] = None, batch_size: int = 8,
                 max_inputs_length: int = 512, max_targets_length: int = 114,
                 length_buckets: Optional[Sequence[int]] = None,
                 generate_chunk: int = DEFAULT_GENERATE_CHUNK, mesh: Any = None) -> None:
        for name, value in (("batch_size", batch_size), ("max_inputs_length", max_inputs_length),
                            ("max_targets_length", max_targets_length),
                            ("generate_chunk", generate_chunk)):
            _check_positive_int(name, value)
        buckets = DEFAULT_LENGTH_BUCKETS if length_buckets is None else tuple(length_buckets)
        if not buckets:
            raise ValueError("length_buckets=(): give at least one length (or None for the "
                             "default)")
        for value in buckets:
            _check_positive_int("length_buckets", value)
        self.config = inference_config(resolve_architecture(model_config, architecture))
        self.mesh = mesh
        self.params = (jax.device_put(params) if mesh is None
                       else jax.device_put(params, param_shardings(self.config, mesh)))
        self.batch_size = batch_size
        self.max_inputs_length = max_inputs_length
        self.max_targets_length = max_targets_length
        self.length_buckets = tuple(sorted(set(buckets)))
        self.generate_chunk = generate_chunk

    @classmethod
    def from_checkpoint(cls, path: PathLike, step: Optional[int] = None,
                        architecture: Optional[str] = None,
                        mesh_shape: Optional[tuple[int, int]] = None,
                        dtype: Optional[str] = None, **kwargs: Any) -> "Scorer":
        """A ``Scorer`` over a model or run directory (``harness.storage.checkpoint`` format).

        The architecture switch is checked against ``config.json`` before any parameter is read.
        With ``mesh_shape=(data, model)`` (-1 fills the devices), each device reads only its own
        shards of the parameters. ``dtype`` overrides the stored compute dtype (``"float32"`` to
        score a bfloat16-trained or converted model in full precision); the parameters stay as
        stored.

        Raises:
          harness.storage.checkpoint.CheckpointError: a missing or invalid directory, step or checkpoint.
          ValueError: a bad argument or architecture switch.
        """
        from harness.storage import checkpoint  # orbax: only needed here

        config = checkpoint.read_config(path)
        resolve_architecture(config, architecture)
        compute = with_dtype(config, dtype)
        mesh = None
        if mesh_shape is not None:
            from models import sharding

            data, model = mesh_shape
            try:
                mesh = sharding.make_mesh(data, model)  # checks that it covers the devices
            except ValueError as error:
                raise ValueError(f"mesh_shape={tuple(mesh_shape)}: {error}") from None
            for name in ("num_heads", "d_ff", "vocab_size"):
                if getattr(config, name) % model:
                    raise ValueError(f"mesh_shape={tuple(mesh_shape)}: the model axis {model} "
                                     f"must divide {name}={getattr(config, name)}")
        _, params = checkpoint.load_model(
            path, step, shardings=None if mesh is None else param_shardings(config, mesh))
        return cls(compute, params, architecture=architecture, mesh=mesh, **kwargs)

    # ---------------------------------------------------------------------------------------------
    # Public API.
    # ---------------------------------------------------------------------------------------------

    @property
    def architecture(self) -> str:
        return self.config.architecture

    @property
    def row_budget(self) -> int:
        """Decoders: the most tokens of context + continuation in one row."""
        return self.max_inputs_length + self.max_targets_length

    def loglikelihood(self, requests: Sequence[Request]) -> list[tuple[float, bool]]:
        """Summed log-probabilities of continuations given contexts, in request order.

        Args:
          requests: ``(context ids, continuation ids)`` pairs. The context may be empty (the
            decoders' BOS then predicts the first token; the encoder sees only padding). An empty
            continuation scores ``(0.0, True)``.

        Returns:
          ``(log p(continuation | context), is_greedy)`` per request: is_greedy says whether each
          continuation token is the argmax of its position's distribution.

        Raises:
          ValueError: a token id outside the model's vocabulary or a continuation longer than the
            budget, naming the request; raised before anything is computed.
        """
        with self._on_mesh():
            return self._loglikelihood(requests)

    def _on_mesh(self):
        """The mesh and logical axis rules the model's sharding constraints resolve against."""
        import contextlib

        if self.mesh is None:
            return contextlib.nullcontext()
        from models import sharding

        return sharding.mesh_context(self.mesh)

    def _loglikelihood(self, requests: Sequence[Request]) -> list[tuple[float, bool]]:
        prepared = [self._prepare(index, context, continuation)
                    for index, (context, continuation) in enumerate(requests)]
        results: list[Optional[tuple[float, bool]]] = [None] * len(prepared)
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, (context, continuation) in enumerate(prepared):
            if not continuation:
                results[index] = (0.0, True)
            else:
                groups.setdefault(context, []).append(index)

        # Longest contexts first, so that similar lengths share a batch (and a failure from memory
        # shows up at once, not at the end); within one padded length, by the length of the
        # packed continuations, so that those share a batch too.
        def order(context: tuple[int, ...]) -> tuple[int, int]:
            packed = sum(len(prepared[index][1]) - 1 for index in groups[context])
            return self._prefix_width(len(context)), packed

        contexts = sorted(groups, key=order, reverse=True)
        pending: list[_BatchScores] = []
        collected = 0
        for start in range(0, len(contexts), self.batch_size):
            chunk = contexts[start:start + self.batch_size]
            prefix = self._run_prefix(chunk)
            pending.append(self._score_batch(prefix, [groups[c] for c in chunk], prepared))
            # Dispatch is asynchronous: let the host run ahead by a few batches (to keep the
            # device busy), but not by the whole evaluation, whose prefix caches would all be
            # allocated at once.
            while len(pending) - collected > _MAX_BATCHES_IN_FLIGHT:
                self._collect(pending[collected], results)
                collected += 1
        for item in pending[collected:]:
            self._collect(item, results)
        return results  # type: ignore[return-value]

    def generate(self, contexts: Sequence[Sequence[int]], max_new_tokens: int,
                 stop: StopSpec = None) -> list[list[int]]:
        """Greedy continuations of ``contexts`` with the KV cache, in input order.

        Each context is left-truncated to ``max_inputs_length``. A row ends at EOS (not returned),
        after ``max_new_tokens`` tokens, or when ``stop`` says so. Padding (id 0) is never
        generated.

        Args:
          contexts: prompt ids (decoders: the prefix, bidirectional for nd; ed: the encoder input).
          max_new_tokens: the most tokens to generate per row.
          stop: token sequences (a row ends before the first occurrence of any, which is not
            returned), or ``callable(generated ids) -> bool`` (checked every ``generate_chunk``
            tokens; the row's tokens up to that check are returned, and the caller trims them, as
            lm-eval does with ``until`` strings), or None.

        Returns:
          The generated ids of each context.

        Raises:
          ValueError: bad ``max_new_tokens``, ``stop`` or token ids (one line).
        """
        with self._on_mesh():
            return self._generate(contexts, max_new_tokens, stop)

    def _generate(self, contexts: Sequence[Sequence[int]], max_new_tokens: int,
                  stop: StopSpec) -> list[list[int]]:
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) \
                or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens!r}: must be an integer >= 0")
        stop_sequences: list[list[int]] = []
        stop_fn: Optional[Callable[[list[int]], bool]] = None
        if callable(stop):
            stop_fn = stop
        elif stop is not None:
            stop_sequences = [list(map(int, s)) for s in stop]
            if any(not s for s in stop_sequences):
                raise ValueError("stop: an empty stop sequence would stop at once; remove it")
            stop_fn = lambda ids: _find_stop(ids, stop_sequences) is not None  # noqa: E731
        prepared = [self._check_ids(index, "context", context)[-self.max_inputs_length:]
                    for index, context in enumerate(contexts)]
        outputs: list[list[int]] = [[] for _ in prepared]
        if max_new_tokens == 0 or not prepared:
            return outputs

        order = sorted(range(len(prepared)), key=lambda i: len(prepared[i]), reverse=True)
        steps = max_new_tokens - 1
        chunk = min(self.generate_chunk, max(steps, 1))
        extra_slots = math.ceil(steps / chunk) * chunk
        for start in range(0, len(order), self.batch_size):
            indices = order[start:start + self.batch_size]
            generated = self._generate_batch([tuple(prepared[i]) for i in indices], extra_slots,
                                             chunk, max_new_tokens, stop_fn)
            for index, tokens in zip(indices, generated):
                outputs[index] = tokens

        for tokens in outputs:
            if EOS_ID in tokens:
                del tokens[tokens.index(EOS_ID):]
            del tokens[max_new_tokens:]
            if stop_sequences:
                position = _find_stop(tokens, stop_sequences)
                if position is not None:
                    del tokens[position:]
        return outputs

    # ---------------------------------------------------------------------------------------------
    # Host side: preparing, bucketing and batching.
    # ---------------------------------------------------------------------------------------------

    @staticmethod
    def _collect(scores: _BatchScores, results: list[Optional[tuple[float, bool]]]) -> None:
        """Copies one batch's scores to the host (waits for them) and sums each request's."""
        first_log_prob, first_greedy = (np.asarray(a) for a in scores.first)
        total = {request: (float(first_log_prob[i]), bool(first_greedy[i]))
                 for i, (request, _) in enumerate(scores.firsts)}
        for blocks, (log_probs, greedy) in scores.passes:
            log_probs, greedy = np.asarray(log_probs, np.float64), np.asarray(greedy)
            for block in blocks:
                span = slice(block.offset, block.offset + block.length)
                log_prob, is_greedy = total[block.request]
                total[block.request] = (log_prob + float(log_probs[block.row, span].sum()),
                                        is_greedy and bool(greedy[block.row, span].all()))
        for request, value in total.items():
            results[request] = value

    def _check_ids(self, index: int, what: str, ids: Sequence[int]) -> list[int]:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 < i < self.config.vocab_size]
        if bad:
            raise ValueError(
                f"request {index}: {what} token id {bad[0]} is outside "
                f"1..{self.config.vocab_size - 1} (0 is padding); the tokenizer does not match "
                f"the model's vocab_size={self.config.vocab_size}")
        return ids

    def _prepare(self, index: int, context: Sequence[int],
                 continuation: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Checked, truncated ``(context, continuation)``."""
        context = self._check_ids(index, "context", context)
        continuation = self._check_ids(index, "continuation", continuation)
        if self.config.is_encoder_decoder:
            if len(continuation) > self.max_targets_length:
                raise ValueError(
                    f"request {index}: continuation of {len(continuation)} tokens exceeds "
                    f"max_targets_length={self.max_targets_length}; raise max_targets_length")
            keep = self.max_inputs_length
        else:
            if len(continuation) > self.row_budget:
                raise ValueError(
                    f"request {index}: continuation of {len(continuation)} tokens exceeds the row "
                    f"budget max_inputs_length + max_targets_length = {self.row_budget}; raise "
                    "max_targets_length")
            keep = self.row_budget - len(continuation)
        context = context[len(context) - keep:] if len(context) > keep else context
        return tuple(context), tuple(continuation)

    def _bucket(self, length: int, limit: int) -> int:
        """The smallest bucket >= ``length`` among the buckets below ``limit``, and ``limit``."""
        for size in self.length_buckets:
            if size >= limit:
                break
            if size >= length:
                return size
        return limit

    def _prefix_width(self, longest_context: int) -> int:
        """Padded width of the prefix pass: decoders n + 1 positions, ed n encoder tokens."""
        if self.config.is_encoder_decoder:
            return self._bucket(max(longest_context, 1), self.max_inputs_length)
        return self._bucket(longest_context + 1, self.row_budget)

    def _run_prefix(self, contexts: Sequence[tuple[int, ...]]) -> _Prefix:
        """The prefix pass over up to ``batch_size`` contexts (padded with empty ones)."""
        lengths = np.zeros((self.batch_size,), np.int32)
        lengths[:len(contexts)] = [len(c) for c in contexts]
        width = self._prefix_width(int(lengths.max()))
        tokens = np.zeros((self.batch_size, width), np.int32)
        offset = 0 if self.config.is_encoder_decoder else 1  # decoders: BOS 0 first
        for row, context in enumerate(contexts):
            tokens[row, offset:offset + len(context)] = context
        cache, first_log_probs = _prefill(self.config, self.params, tokens, lengths)
        encoder_tokens = jnp.asarray(tokens) if self.config.is_encoder_decoder else None
        return _Prefix(cache, first_log_probs, encoder_tokens, lengths)

    def _score_batch(self, prefix: _Prefix, requests: Sequence[Sequence[int]],
                     prepared: Sequence[tuple[tuple[int, ...], tuple[int, ...]]]) -> _BatchScores:
        """Dispatches the scoring of every request of one batch of contexts (row ``b`` of the
        prefix pass holds the context of ``requests[b]``): first tokens from the prefix pass, the
        rest in packed continuation passes."""
        firsts = [(index, row) for row, indices in enumerate(requests) for index in indices]
        size = -(-len(firsts) // self.batch_size) * self.batch_size
        rows = np.zeros((size,), np.int32)
        first = np.zeros((size,), np.int32)
        for i, (index, row) in enumerate(firsts):
            rows[i], first[i] = row, prepared[index][1][0]
        scores = _BatchScores(firsts, _first_only(prefix.first_log_probs, rows, first), [])

        # Packing: each context's longer continuations, longest first, side by side in passes of
        # at most ``width`` tokens per row.
        limit = (self.max_targets_length if self.config.is_encoder_decoder
                 else self.row_budget) - 1
        rests = [[(len(prepared[i][1]) - 1, i) for i in indices if len(prepared[i][1]) > 1]
                 for indices in requests]
        longest = max((length for blocks in rests for length, _ in blocks), default=0)
        if longest == 0:  # every continuation is one token: the prefix pass has it all
            return scores
        width = max(min(PACKED_WIDTH, limit), longest)
        passes: list[list[_Block]] = []
        for row, blocks in enumerate(rests):
            lane, used = 0, 0
            for length, index in sorted(blocks, reverse=True):
                if used + length > width:
                    lane, used = lane + 1, 0
                if lane == len(passes):
                    passes.append([])
                passes[lane].append(_Block(index, row, used, length))
                used += length
        for blocks in passes:
            scores.passes.append((blocks, self._run_packed(prefix, blocks, prepared, limit)))
        return scores

    def _run_packed(self, prefix: _Prefix, blocks: Sequence[_Block],
                    prepared: Sequence[tuple[tuple[int, ...], tuple[int, ...]]],
                    limit: int) -> tuple[Array, Array]:
        """One packed continuation pass: ``([b, p] log p, [b, p] is_greedy)`` of each position.

        Row ``b`` runs its blocks' tokens against the prefix cache of row ``b``, from the first
        free slot (n + 1 for decoders, 1 after ed's BOS). Each block is a segment: it sees the
        prefix and its own earlier tokens, at the positions of its own row.
        """
        size = self.batch_size
        used = np.zeros((size,), np.int32)
        for block in blocks:
            used[block.row] = max(used[block.row], block.offset + block.length)
        packed = self._bucket(int(used.max()), limit)
        starts = (np.ones((size,), np.int32) if self.config.is_encoder_decoder
                  else prefix.lengths + 1)
        slots = prefix.cache["self"]["key"].shape[2] + packed
        inputs = np.zeros((size, packed), np.int32)
        targets = np.zeros((size, packed), np.int32)
        positions = np.repeat(starts[:, None], packed, axis=1)  # padding: at the prefix's end
        query_segments = np.zeros((size, packed), np.int32)    # padding: sees the prefix only
        key_positions = np.broadcast_to(np.arange(slots, dtype=np.int32), (size, slots)).copy()
        key_segments = np.where(key_positions < starts[:, None], 0, -1).astype(np.int32)
        for segment, block in enumerate(blocks, start=1):
            continuation = prepared[block.request][1]
            span = slice(block.offset, block.offset + block.length)
            steps = np.arange(block.length, dtype=np.int32)
            inputs[block.row, span] = continuation[:-1]
            targets[block.row, span] = continuation[1:]
            positions[block.row, span] = starts[block.row] + steps
            query_segments[block.row, span] = segment
            key_span = slice(starts[block.row] + block.offset,
                             starts[block.row] + block.offset + block.length)
            key_positions[block.row, key_span] = starts[block.row] + steps
            key_segments[block.row, key_span] = segment
        return _continue(self.config, self.params, prefix.cache, prefix.encoder_tokens, inputs,
                         targets, positions, query_segments, key_positions, key_segments, starts)

    def _generate_batch(self, contexts: Sequence[tuple[int, ...]], extra_slots: int, chunk: int,
                        max_new_tokens: int, stop_fn: Optional[Callable[[list[int]], bool]],
                        ) -> list[list[int]]:
        prefix = self._run_prefix(contexts)
        count = len(contexts)
        cache, token, done = _start_generation(prefix.cache, prefix.first_log_probs,
                                               extra_slots=extra_slots)
        if self.config.is_encoder_decoder:
            positions = np.ones((self.batch_size,), np.int32)
        else:
            positions = prefix.lengths + 1
        prefix_lengths = prefix.lengths + 1
        generated = [[int(t)] for t in np.asarray(token)[:count]]
        finished = np.asarray(done).copy()
        finished[count:] = True
        for row in range(count):
            finished[row] |= bool(stop_fn and stop_fn(generated[row]))
        produced = 1
        while produced < max_new_tokens and not finished.all():
            cache, token, positions, done, tokens = _decode_chunk(
                self.config, self.params, cache, token, positions, jnp.asarray(finished),
                prefix_lengths, prefix.encoder_tokens, steps=chunk)
            tokens = np.asarray(tokens)
            finished = np.asarray(done).copy()
            for row in range(count):
                if not generated[row] or generated[row][-1] != EOS_ID:
                    generated[row].extend(int(t) for t in tokens[row] if t != PAD_ID)
                if stop_fn and not finished[row]:
                    finished[row] = stop_fn(generated[row])
            produced += chunk
        return generated


# -------------------------------------------------------------------------------------------------
# Device side: jitted functions of (static) config and arrays, so that every Scorer over the same
# config shares their compiles (several checkpoints of one run compile once). Static shapes, no
# host syncs.
# -------------------------------------------------------------------------------------------------

def param_shardings(config: ModelConfig, mesh: Any) -> Any:
    """The parameters' ``NamedSharding`` s on ``mesh`` by the logical axis rules (training's)."""
    from models import sharding
    from models.transformer import init_fn

    abstract = jax.eval_shape(init_fn(config), jax.random.key(0))
    return sharding.logical_to_shardings(abstract, mesh)["params"]


def _apply(config: ModelConfig, params: Any, *args: Any, **kwargs: Any) -> Any:
    return Transformer(config).apply({"params": params}, *args, **kwargs)


def _pad_self_cache(cache: Any, extra_slots: int) -> Any:
    """The self-attention cache with ``extra_slots`` more (empty) slots after the prefix's."""
    cache = dict(cache)
    cache["self"] = jax.tree.map(
        lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, extra_slots), (0, 0), (0, 0))), cache["self"])
    return cache


@functools.partial(jax.jit, static_argnames=("config",))
def _prefill(config: ModelConfig, params: Any, tokens: Array, lengths: Array,
             ) -> tuple[Any, Array]:
    """Prefix pass: ``(cache, log p(first continuation token) [b, vocab])``.

    Decoders: ``tokens [b, w] = [BOS, c_0 .. c_{n-1}, 0 ...]`` prefilled into a ``w``-slot cache,
    bidirectional over the n + 1 prefix positions for nd; position n gives the first token's
    distribution. Padding positions after n write cache slots that later queries either overwrite
    or cannot see (causal), so they never matter.

    ed: ``tokens [b, w]`` are the encoder input; the BOS decoder step fills a one-slot self cache
    and the cross-attention cache.
    """
    batch, width = tokens.shape
    if config.is_encoder_decoder:
        encoded = _apply(config, params, tokens, method=Transformer.encode)
        cache = init_cache(config, batch, 1, width)
        zeros = jnp.zeros((batch, 1), jnp.int32)
        last, cache = _apply(config, params, zeros, zeros, cache, None, encoded, tokens,
                             return_hidden=True, method=Transformer.decode_with_cache)
    else:
        cache = init_cache(config, batch, width)
        positions = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), (batch, width))
        hidden, cache = _apply(config, params, tokens, positions, cache, lengths + 1,
                               return_hidden=True, method=Transformer.decode_with_cache)
        last = jnp.take_along_axis(hidden, lengths[:, None, None], axis=1)  # [b, 1, d]
    logits = _apply(config, params, last, method=Transformer.logits_from_hidden)[:, 0]
    return cache, jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


@functools.partial(jax.jit, static_argnames=("config",))
def _continue(config: ModelConfig, params: Any, cache: Any, encoder_tokens: Optional[Array],
              inputs: Array, targets: Array, positions: Array, query_segments: Array,
              key_positions: Array, key_segments: Array, starts: Array) -> tuple[Array, Array]:
    """Packed continuation pass: ``(log p(target) [b, p], is_greedy [b, p])`` per position.

    Row ``b`` feeds ``inputs[b]`` (each packed continuation shifted right) at ``positions[b]``
    against the prefix cache of row ``b``, writing from slot ``starts[b]``; the segments keep the
    packed continuations apart (``Scorer._run_packed``). Every position of the pass reaches the
    vocabulary projection (projecting only the scored ones would need a size that depends on the
    fill: each shape compiled twice, which costs the tiny grid more than it saves). Padding
    (target 0) scores 0 and counts as greedy.
    """
    cache = _pad_self_cache(cache, inputs.shape[1])
    # ``starts`` is also the non-causal decoder's prefix length (n + 1); the others ignore it.
    hidden, _ = _apply(config, params, inputs, positions, cache, starts, None, encoder_tokens,
                       return_hidden=True, method=Transformer.decode_with_cache,
                       key_positions=key_positions, query_segments=query_segments,
                       key_segments=key_segments)
    logits = _apply(config, params, hidden, method=Transformer.logits_from_hidden)  # [b, p, V]
    valid = targets > 0
    log_probs = jnp.where(valid, token_log_probs(logits, targets), 0.0)
    greedy = (jnp.argmax(logits, axis=-1) == targets) | ~valid
    return log_probs, greedy


@functools.partial(jax.jit, static_argnames=("extra_slots",))
def _start_generation(cache: Any, first_log_probs: Array, extra_slots: int,
                      ) -> tuple[Any, Array, Array]:
    """Room for ``extra_slots`` generated tokens; the first token and whether it is EOS."""
    token = _greedy_token(first_log_probs)
    return _pad_self_cache(cache, extra_slots), token, token == EOS_ID


@functools.partial(jax.jit, static_argnames=("config", "steps"), donate_argnames=("cache",))
def _decode_chunk(config: ModelConfig, params: Any, cache: Any, token: Array, positions: Array,
                  done: Array, prefix_lengths: Array, encoder_tokens: Optional[Array],
                  steps: int) -> tuple[Any, Array, Array, Array, Array]:
    """``steps`` greedy steps: feeds ``token`` at ``positions``; finished rows emit padding."""

    def step(carry, _):
        cache, token, positions, done = carry
        hidden, cache = _apply(config, params, token[:, None], positions[:, None], cache,
                               prefix_lengths, None, encoder_tokens, return_hidden=True,
                               method=Transformer.decode_with_cache)
        logits = _apply(config, params, hidden, method=Transformer.logits_from_hidden)[:, 0]
        token = jnp.where(done, PAD_ID, _greedy_token(logits))
        return (cache, token, positions + 1, done | (token == EOS_ID)), token

    (cache, token, positions, done), tokens = jax.lax.scan(
        step, (cache, token, positions, done), None, length=steps)
    return cache, token, positions, done, tokens.T  # tokens [b, steps]


_first_only = jax.jit(lambda first_log_probs, slots, first:
                      _first_only_impl(first_log_probs, slots, first))


def _first_only_impl(first_log_probs: Array, slots: Array, first: Array) -> tuple[Array, Array]:
    """Log-probability and greedy check of each row's first continuation token."""
    distribution = jnp.take(first_log_probs, slots, axis=0)  # [r, vocab]
    log_prob = jnp.take_along_axis(distribution, first[:, None], axis=-1)[:, 0]
    return log_prob, jnp.argmax(distribution, axis=-1) == first


def _greedy_token(logits: Array) -> Array:
    """Argmax over the vocabulary, never the padding id (as models.decoding)."""
    return jnp.argmax(logits.at[..., PAD_ID].set(-jnp.inf), axis=-1).astype(jnp.int32)


def _find_stop(tokens: Sequence[int], stops: Sequence[Sequence[int]]) -> Optional[int]:
    """Index of the earliest occurrence of any stop sequence in ``tokens``, or None."""
    best = None
    for stop in stops:
        width = len(stop)
        for start in range(len(tokens) - width + 1):
            if best is not None and start >= best:
                break
            if list(tokens[start:start + width]) == list(stop):
                best = start
                break
    return best


def _check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r}: must be a positive integer")
