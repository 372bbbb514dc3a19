"""Attention masks as small pure functions of seqio model features (PAPER.md 6.2-6.3).

Every mask is boolean with shape ``[batch, 1, query_length, key_length]`` (the 1 broadcasts over heads),
True where the query may attend to the key. Masks are built once per forward pass from the batch and
passed into the layers; no layer branches on the architecture.

The decoder-only mask follows t5x's ``make_decoder_mask``:

    mask = (causal OR prefix) AND padding AND same-segment

where "prefix" comes from seqio's ``decoder_causal_attention`` feature. Its name is misleading: 1 means
the position attends *bidirectionally* within the prefix. seqio's ``PrefixLMFeatureConverter`` sets it
over the inputs plus one extra position (the position whose input token is the last input token and
which predicts the first target), so training, evaluation and decoding must all take the prefix from
that feature, never re-derive it.

Worked example (t5x's docstring; two packed examples with a 2-token prefix each, then padding)::

    decoder_target_tokens     6 7 8 3 4 5 0
    decoder_segment_ids       1 1 1 2 2 2 0
    decoder_causal_attention  1 1 0 1 1 0 0

    query\\key  6 7 8 3 4 5 0
        6      1 1 0 0 0 0 0     <- 6 sees 7: both in segment 1's prefix
        7      1 1 0 0 0 0 0
        8      1 1 1 0 0 0 0     <- causal
        3      0 0 0 1 1 0 0     <- segment 2 cannot see segment 1
        4      0 0 0 1 1 0 0
        5      0 0 0 1 1 1 0
        0      0 0 0 0 0 0 0     <- padding attends to nothing
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

# Added to attention logits where the mask is False. Large enough that exp() underflows to exactly 0 in
# float32, small enough that adding a position bias cannot overflow to -inf (which would give NaN in
# rows that are fully masked, such as padding queries).
MASKED_LOGIT = -1e10


def make_attention_mask(
    query_input: jax.Array,
    key_input: jax.Array,
    pairwise_fn: Callable[[jax.Array, jax.Array], jax.Array] = jnp.logical_and,
) -> jax.Array:
    """Pairwise mask from per-position query and key features.

    Args:
      query_input: ``[batch, query_length]``.
      key_input: ``[batch, key_length]``.
      pairwise_fn: combines the two broadcast features into a boolean (default: both true).

    Returns:
      ``[batch, 1, query_length, key_length]`` boolean mask.
    """
    mask = pairwise_fn(query_input[:, :, None], key_input[:, None, :])
    return mask[:, None, :, :].astype(bool)


def make_causal_mask(tokens: jax.Array) -> jax.Array:
    """``[batch, 1, length, length]`` mask allowing key j for query i when j <= i."""
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[-1]), tokens.shape)
    return make_attention_mask(positions, positions, jnp.greater_equal)


def make_segment_mask(query_segment_ids: jax.Array, key_segment_ids: jax.Array) -> jax.Array:
    """Keeps attention inside one packed example: True where the segment ids are equal."""
    return make_attention_mask(query_segment_ids, key_segment_ids, jnp.equal)


def make_decoder_mask(
    decoder_target_tokens: jax.Array,
    decoder_causal_attention: Optional[jax.Array] = None,
    decoder_segment_ids: Optional[jax.Array] = None,
) -> jax.Array:
    """Self-attention mask of a decoder: (causal OR prefix) AND padding AND segment.

    Args:
      decoder_target_tokens: ``[batch, length]``; 0 is padding.
      decoder_causal_attention: ``[batch, length]``, 1 over each example's bidirectional prefix (the
        inputs plus one position, seqio's convention). None for a fully causal decoder: this is how
        the causal decoder ignores the feature.
      decoder_segment_ids: ``[batch, length]`` packing segment ids, or None when unpacked.

    Returns:
      ``[batch, 1, length, length]`` boolean mask.
    """
    mask = make_causal_mask(decoder_target_tokens)
    if decoder_causal_attention is not None:
        # Both query and key in the prefix. With packing the segment mask below keeps this inside
        # each example's own prefix.
        prefix = decoder_causal_attention > 0
        mask = mask | make_attention_mask(prefix, prefix)
    valid = decoder_target_tokens > 0
    mask = mask & make_attention_mask(valid, valid)
    if decoder_segment_ids is not None:
        mask = mask & make_segment_mask(decoder_segment_ids, decoder_segment_ids)
    return mask


def make_encoder_mask(
    encoder_input_tokens: jax.Array,
    encoder_segment_ids: Optional[jax.Array] = None,
) -> jax.Array:
    """Bidirectional encoder self-attention mask: padding AND segment."""
    valid = encoder_input_tokens > 0
    mask = make_attention_mask(valid, valid)
    if encoder_segment_ids is not None:
        mask = mask & make_segment_mask(encoder_segment_ids, encoder_segment_ids)
    return mask


def make_cross_mask(
    decoder_target_tokens: jax.Array,
    encoder_input_tokens: jax.Array,
    decoder_segment_ids: Optional[jax.Array] = None,
    encoder_segment_ids: Optional[jax.Array] = None,
) -> jax.Array:
    """Decoder-to-encoder mask ``[batch, 1, decoder_length, encoder_length]``: padding AND segment."""
    mask = make_attention_mask(decoder_target_tokens > 0, encoder_input_tokens > 0)
    if decoder_segment_ids is not None and encoder_segment_ids is not None:
        mask = mask & make_segment_mask(decoder_segment_ids, encoder_segment_ids)
    return mask


def make_cache_mask(
    query_positions: jax.Array,
    cache_length: int,
    prefix_lengths: Optional[jax.Array] = None,
    key_positions: Optional[jax.Array] = None,
    query_segments: Optional[jax.Array] = None,
    key_segments: Optional[jax.Array] = None,
) -> jax.Array:
    """Self-attention mask for queries that read a KV cache (prefill and decoding steps).

    Key j of the cache is visible to a query at position p when j <= p (causal), or, for a
    non-causal decoder, when both lie in the example's prefix (j < prefix_length and
    p < prefix_length). Cache slots beyond the query's position are never visible, so stale entries
    there are harmless.

    Packed continuations (harness/eval/scoring.py) give each slot its own position and a segment:
    a key is then visible when its position is <= the query's and its segment is 0 (the shared
    prefix) or the query's own. A negative key segment marks a slot nobody may see.

    Args:
      query_positions: ``[batch, query_length]`` absolute positions of the queries.
      cache_length: number of cache slots (keys).
      prefix_lengths: ``[batch]`` number of bidirectional positions (seqio: inputs + 1), or None.
      key_positions: ``[batch, cache_length]`` positions of the slots (None: slot j is position j).
      query_segments: ``[batch, query_length]`` segment of each query (with ``key_segments``).
      key_segments: ``[batch, cache_length]``: 0 for the shared prefix, > 0 for one packed
        continuation, < 0 for a slot no query sees.

    Returns:
      ``[batch, 1, query_length, cache_length]`` boolean mask.
    """
    keys = (jnp.broadcast_to(jnp.arange(cache_length), (query_positions.shape[0], cache_length))
            if key_positions is None else key_positions)
    mask = make_attention_mask(query_positions, keys, jnp.greater_equal)
    if prefix_lengths is not None:
        limit = prefix_lengths[:, None]
        mask = mask | make_attention_mask(query_positions < limit, keys < limit)
    if (query_segments is None) != (key_segments is None):
        raise ValueError("query_segments and key_segments go together: give both or neither")
    if key_segments is not None:
        shared = (key_segments == 0)[:, None, None, :]
        visible = (key_segments >= 0)[:, None, None, :]
        mask = mask & (shared | make_segment_mask(query_segments, key_segments)) & visible
    return mask


def mask_to_bias(mask: jax.Array, dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """Turns a boolean mask into an additive logit bias: 0 where allowed, ``MASKED_LOGIT`` elsewhere."""
    return jnp.where(mask, 0.0, MASKED_LOGIT).astype(dtype)
