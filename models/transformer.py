"""The Transformer of the study: one module, three architectures (PAPER.md 1.1, STYLE.md B2.1).

``Transformer(config)`` consumes seqio model features verbatim (PAPER.md 6.3)::

    cd, nd  decoder_input_tokens, decoder_target_tokens, [decoder_segment_ids, decoder_positions,
            decoder_causal_attention (read by nd only; cd ignores it)]
    ed      encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
            [encoder_segment_ids, decoder_segment_ids, encoder_positions, decoder_positions]

and returns float32 logits ``[batch, length, vocab]``. The causal and non-causal decoders are the same
module with the same parameter tree; the encoder-decoder adds an encoder stack and cross-attention to
the same ``Block``.

Relative positions are taken from the index within the row, as t5x does: inside one packed example
this equals the difference of ``*_positions``, and pairs across examples are masked anyway.

Parameter tree (``L`` = layers, leading axis of every scanned weight)::

    token_embedder/embedding                       [vocab, embed]
    encoder/relpos_bias/rel_embedding              [heads, buckets]        (ed only)
    encoder/layers/{pre_self_attention_norm, self_attention, pre_mlp_norm, mlp}/...      (ed only)
    encoder/final_norm/scale                       [embed]                 (ed only)
    decoder/relpos_bias/rel_embedding              [heads, buckets]        (ed: one per stack)
    decoder/layers/relpos_bias/rel_embedding       [L, heads, buckets]     (cd/nd: one per layer)
    decoder/layers/pre_self_attention_norm/scale   [L, embed]
    decoder/layers/self_attention/{query,key,value} [L, embed, heads, kv];  .../out [L, heads, kv, embed]
    decoder/layers/{pre_cross_attention_norm, cross_attention}/...          (ed only)
    decoder/layers/pre_mlp_norm/scale              [L, embed]
    decoder/layers/mlp/{wi_0, wi_1}                [L, embed, mlp];  mlp/wo [L, mlp, embed]
    decoder/final_norm/scale                       [embed]
    logits_dense/kernel                            [embed, vocab]          (untied head only)
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from models import masks
from models import sharding as shd
from models.config import ModelConfig
from models.layers import Embed, KVCache, Stack, _param, einsum, relative_position_buckets

Array = jax.Array
Cache = dict[str, KVCache]  # {"self": {...}, "cross": {...}} with a leading layers axis


class Transformer(nn.Module):
    """T5.1.1-style Transformer for the ``cd``, ``nd`` and ``ed`` architectures.

    Attributes:
      config: the model's hyperparameters.
      enable_dropout: apply dropout (training); the parameters do not depend on it.
    """

    config: ModelConfig
    enable_dropout: bool = False

    def setup(self) -> None:
        cfg = self.config
        self.token_embedder = Embed(cfg)
        if cfg.is_encoder_decoder:
            self.encoder = Stack(cfg, cfg.num_encoder_layers, cross_attention=False,
                                 per_layer_position_bias=False, enable_dropout=self.enable_dropout)
        self.decoder = Stack(cfg, cfg.num_layers, cross_attention=cfg.is_encoder_decoder,
                             per_layer_position_bias=not cfg.is_encoder_decoder,
                             enable_dropout=self.enable_dropout,
                             causal=cfg.architecture != "nd")
        if not cfg.tie_embeddings:
            self.logits_dense = LogitsDense(cfg)

    # ---------------------------------------------------------------------------------------------
    # Full forward passes (training, scoring).
    # ---------------------------------------------------------------------------------------------

    def __call__(self, batch: Mapping[str, Array]) -> Array:
        """Logits ``[batch, length, vocab]`` (float32) for a batch of seqio model features."""
        encoded = None
        if self.config.is_encoder_decoder:
            encoded = self.encode(batch["encoder_input_tokens"], batch.get("encoder_segment_ids"))
        return self.decode(
            batch["decoder_input_tokens"], batch["decoder_target_tokens"],
            encoded=encoded,
            encoder_input_tokens=batch.get("encoder_input_tokens"),
            decoder_segment_ids=batch.get("decoder_segment_ids"),
            encoder_segment_ids=batch.get("encoder_segment_ids"),
            decoder_causal_attention=batch.get("decoder_causal_attention"))

    def encode(self, encoder_input_tokens: Array,
               encoder_segment_ids: Optional[Array] = None) -> Array:
        """Encoder output ``[batch, input_length, d_model]`` (encoder-decoder only)."""
        self._require_encoder()
        cfg = self.config
        positions = jnp.arange(encoder_input_tokens.shape[1])
        buckets = relative_position_buckets(
            positions[None, None, :] - positions[None, :, None], True, cfg.relpos_num_buckets,
            cfg.relpos_max_distance)
        mask = masks.make_encoder_mask(encoder_input_tokens, encoder_segment_ids)
        encoded, _ = self.encoder(self.token_embedder(encoder_input_tokens), mask, buckets)
        return encoded

    def decode(self, decoder_input_tokens: Array, decoder_target_tokens: Array,
               encoded: Optional[Array] = None,
               encoder_input_tokens: Optional[Array] = None,
               decoder_segment_ids: Optional[Array] = None,
               encoder_segment_ids: Optional[Array] = None,
               decoder_causal_attention: Optional[Array] = None) -> Array:
        """Decoder logits ``[batch, length, vocab]`` over a whole sequence (teacher forcing).

        ``decoder_target_tokens`` marks padding (0) for the mask, as in t5x. For the non-causal decoder
        ``decoder_causal_attention`` is required; the causal decoder ignores it.
        """
        cfg = self.config
        length = decoder_input_tokens.shape[1]
        prefix = None
        if cfg.architecture == "nd":
            if decoder_causal_attention is None:
                raise ValueError(
                    "the non-causal decoder ('nd') needs the 'decoder_causal_attention' feature; "
                    "build batches with seqio's PrefixLMFeatureConverter (objectives/)")
            prefix = decoder_causal_attention > 0
        mask = masks.make_decoder_mask(decoder_target_tokens, prefix, decoder_segment_ids)
        # Positions are the same for every row: bucket ids [1, q, k] broadcast over the batch.
        positions = jnp.arange(length)[None, :]
        buckets = self._decoder_buckets(positions, positions, prefix, prefix)
        cross_mask = None
        if cfg.is_encoder_decoder:
            if encoded is None or encoder_input_tokens is None:
                raise ValueError("the encoder-decoder ('ed') decoder needs 'encoded' and "
                                 "'encoder_input_tokens'")
            cross_mask = masks.make_cross_mask(decoder_target_tokens, encoder_input_tokens,
                                               decoder_segment_ids, encoder_segment_ids)
        y, _ = self.decoder(self.token_embedder(decoder_input_tokens), mask, buckets, encoded,
                            cross_mask)
        return self._logits(y)

    # ---------------------------------------------------------------------------------------------
    # Cached decoding (models/decoding.py drives these).
    # ---------------------------------------------------------------------------------------------

    def decode_with_cache(self, tokens: Array, positions: Array, cache: Cache,
                          prefix_lengths: Optional[Array] = None,
                          encoded: Optional[Array] = None,
                          encoder_input_tokens: Optional[Array] = None,
                          return_hidden: bool = False,
                          key_positions: Optional[Array] = None,
                          query_segments: Optional[Array] = None,
                          key_segments: Optional[Array] = None) -> tuple[Array, Cache]:
        """Runs decoder ``tokens [b, q]`` at absolute ``positions [b, q]`` against a KV cache.

        Used both to prefill a prompt (q > 1, positions 0..q-1) and for single decoding steps (q = 1).
        Keys and values of this chunk are written at ``positions[:, 0]``. For the encoder-decoder,
        pass ``encoded`` on the first call (it fills the cross-attention cache) and None afterwards;
        ``encoder_input_tokens`` is needed on every call for the cross mask.

        Args:
          tokens: decoder input tokens of this chunk.
          positions: their absolute positions (contiguous within a row).
          cache: from ``models.decoding.init_cache``.
          prefix_lengths: ``[b]`` bidirectional prefix length (inputs + 1) for the non-causal
            decoder; ignored by the other architectures.
          encoded: encoder output, on the first call of an encoder-decoder.
          encoder_input_tokens: the encoder's tokens (encoder-decoder only).
          return_hidden: return the decoder's final hidden states ``[b, q, d_model]`` instead of
            the logits, so that a caller can project only the positions it needs
            (``logits_from_hidden``; harness/eval/scoring.py).
          key_positions: ``[b, slots]`` position of each cache slot, for chunks that pack several
            continuations of one prefix side by side (harness/eval/scoring.py); None: slot j is
            position j. The chunk is still written at slot ``positions[:, 0]``.
          query_segments, key_segments: with ``key_positions``, which packed continuation each
            query and slot belongs to (``masks.make_cache_mask``).

        Returns:
          ``(float32 logits [b, q, vocab] or hidden states, updated cache)``.
        """
        cfg = self.config
        slots = cache["self"]["key"].shape[2]
        if cfg.architecture != "nd":
            prefix_lengths = None
        mask = masks.make_cache_mask(positions, slots, prefix_lengths, key_positions,
                                     query_segments, key_segments)
        if key_positions is None:
            key_positions = jnp.arange(slots)[None, :]
        prefix_q = prefix_k = None
        if prefix_lengths is not None:
            prefix_q = positions < prefix_lengths[:, None]
            prefix_k = key_positions < prefix_lengths[:, None]
        buckets = self._decoder_buckets(positions, key_positions, prefix_q, prefix_k)
        cross_mask = None
        if cfg.is_encoder_decoder:
            cross_mask = masks.make_attention_mask(jnp.ones(tokens.shape, bool),
                                                   encoder_input_tokens > 0)
        y, new_cache = self.decoder(self.token_embedder(tokens), mask, buckets, encoded, cross_mask,
                                    cache, positions[:, 0])
        if return_hidden:
            return y, new_cache
        return self._logits(y), new_cache

    def logits_from_hidden(self, hidden: Array) -> Array:
        """Float32 logits ``[..., vocab]`` of final decoder hidden states ``[..., d_model]``."""
        return self._logits(hidden)

    # ---------------------------------------------------------------------------------------------

    def _decoder_buckets(self, query_positions: Array, key_positions: Array,
                         prefix_q: Optional[Array], prefix_k: Optional[Array]) -> Array:
        """Relative-position bucket ids ``[b or 1, q, k]`` for decoder self-attention.

        ``query_positions`` is ``[b or 1, q]``, ``key_positions`` ``[b or 1, k]``.
        """
        cfg = self.config
        relative = key_positions[:, None, :] - query_positions[:, :, None]
        if cfg.architecture != "nd" or cfg.prefix_position_buckets == "causal":
            # The study's decoders (and t5x) bucket causally everywhere, prefix included.
            return relative_position_buckets(relative, False, cfg.relpos_num_buckets,
                                             cfg.relpos_max_distance)
        causal = relative_position_buckets(relative, False, cfg.relpos_num_buckets,
                                           cfg.relpos_max_distance)
        bidirectional = relative_position_buckets(relative, True, cfg.relpos_num_buckets,
                                                  cfg.relpos_max_distance)
        in_prefix = prefix_q[:, :, None] & prefix_k[:, None, :]
        return jnp.where(in_prefix, bidirectional, causal)

    def _logits(self, y: Array) -> Array:
        cfg = self.config
        if cfg.tie_embeddings:
            # Tied head: scale by 1/sqrt(d_model), as t5x (logits_via_embedding) and HF T5 do.
            logits = self.token_embedder.attend(y) / jnp.sqrt(float(cfg.d_model))
        else:
            logits = self.logits_dense(y)
        return nn.with_logical_constraint(logits, (shd.BATCH, shd.LENGTH, shd.VOCAB))

    def _require_encoder(self) -> None:
        if not self.config.is_encoder_decoder:
            raise ValueError(f"architecture={self.config.architecture!r} has no encoder")


class LogitsDense(nn.Module):
    """Untied output projection (T5 v1.1 layout): ``kernel [embed, vocab]``, no scaling."""

    config: ModelConfig

    @nn.compact
    def __call__(self, y: Array) -> Array:
        cfg = self.config
        kernel = _param(self, "kernel",
                        nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
                        (cfg.d_model, cfg.vocab_size), (shd.EMBED, shd.VOCAB),
                        jnp.dtype(cfg.param_dtype))
        return einsum("bld,dv->blv", y, kernel.astype(cfg.dtype), jnp.float32)


# -------------------------------------------------------------------------------------------------
# Construction helpers.
# -------------------------------------------------------------------------------------------------

def dummy_batch(config: ModelConfig, batch_size: int = 1, length: int = 2) -> dict[str, Array]:
    """Smallest batch of model features that exercises every parameter (for init / eval_shape)."""
    tokens = jnp.ones((batch_size, length), jnp.int32)
    batch = {"decoder_input_tokens": tokens, "decoder_target_tokens": tokens}
    if config.architecture == "nd":
        batch["decoder_causal_attention"] = tokens
    if config.is_encoder_decoder:
        batch["encoder_input_tokens"] = tokens
    return batch


def init_fn(config: ModelConfig) -> Any:
    """``rng -> {'params': boxed params}``, suitable for ``jax.eval_shape`` and sharded init."""
    model = Transformer(config)
    batch = dummy_batch(config)
    return lambda rng: model.init(rng, batch)


def init_params(config: ModelConfig, rng: jax.Array) -> Any:
    """Unboxed parameters on the default device (tests, small models; see
    ``models.sharding.init_sharded`` for a mesh). Jitted: one compile instead of op-by-op tracing."""
    return jax.jit(lambda key: nn.meta.unbox(init_fn(config)(key))["params"])(rng)


def abstract_params(config: ModelConfig) -> Any:
    """Parameter shapes and dtypes (``jax.ShapeDtypeStruct``), computed without allocating.

    Safe inside a mesh context: the logical-partitioning boxes are opened without applying sharding
    constraints (which abstract values cannot take).
    """
    abstract = jax.eval_shape(init_fn(config), jax.random.key(0))
    return jax.tree.map(lambda leaf: leaf.unbox(apply_constraint=False)
                        if isinstance(leaf, nn.meta.AxisMetadata) else leaf,
                        abstract, is_leaf=lambda leaf: isinstance(leaf, nn.meta.AxisMetadata)
                        )["params"]


def count_params(config: ModelConfig) -> int:
    """Exact number of parameters, from ``abstract_params`` (nothing is allocated)."""
    return sum(int(leaf.size) for leaf in jax.tree.leaves(abstract_params(config)))
