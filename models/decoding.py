"""Greedy decoding with a KV cache for all three architectures.

Decoder-only models (cd, nd) read a prompt laid out as seqio's prefix-LM converter lays it out:
decoder inputs ``[0, x_0, ..., x_{n-1}]`` (BOS 0, then the prompt shifted right), so position ``n``
(the "+1 position") predicts the first new token. The whole prompt is prefilled in one call: causally
for cd, bidirectionally over the ``n + 1`` prefix positions for nd, exactly the mask it was trained
with. The encoder-decoder encodes once, fills its cross-attention cache on the first decoder step, and
then decodes from BOS.

Each later step feeds one token and attends over the cache. The result equals greedy decoding by
repeated full forward passes (``tests/test_decoding.py`` checks this for every architecture).
The padding id 0 is never generated; after ``eos_id`` a row emits 0.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from models.config import ModelConfig
from models.transformer import Cache, Transformer

Array = jax.Array
PAD_ID = 0
EOS_ID = 1


def init_cache(config: ModelConfig, batch_size: int, slots: int,
               encoder_length: Optional[int] = None) -> Cache:
    """Zero KV caches with a leading layers axis: ``[layers, batch, slots, heads, head_dim]``."""
    def kv(length: int) -> dict[str, Array]:
        shape = (config.num_layers, batch_size, length, config.num_heads, config.head_dim)
        return {"key": jnp.zeros(shape, config.dtype), "value": jnp.zeros(shape, config.dtype)}

    cache = {"self": kv(slots)}
    if config.is_encoder_decoder:
        if encoder_length is None:
            raise ValueError("encoder_length is required for the encoder-decoder cache")
        cache["cross"] = kv(encoder_length)
    return cache


def _greedy_token(logits: Array) -> Array:
    """Argmax over the vocabulary, never choosing the padding id."""
    logits = logits.at[..., PAD_ID].set(-jnp.inf)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def greedy_decode(model: Transformer, params: Any, max_decode_length: int, *,
                  inputs: Optional[Array] = None,
                  encoder_input_tokens: Optional[Array] = None,
                  eos_id: int = EOS_ID) -> Array:
    """Greedy continuation of a batch of prompts.

    Args:
      model: the ``Transformer`` (cd, nd or ed).
      params: its parameters.
      max_decode_length: number of tokens to generate per row.
      inputs: decoder-only prompts ``[batch, prompt_length]``, left-aligned, 0-padded.
      encoder_input_tokens: encoder-decoder inputs ``[batch, input_length]``.
      eos_id: generation of this id ends a row.

    Returns:
      ``[batch, max_decode_length]`` int32 tokens; after EOS, zeros.
    """
    cfg = model.config
    variables = {"params": params}

    def step(tokens, positions, cache, prefix_lengths=None, encoded=None):
        return model.apply(variables, tokens, positions, cache, prefix_lengths, encoded,
                           encoder_input_tokens, method=Transformer.decode_with_cache)

    if cfg.is_encoder_decoder:
        if encoder_input_tokens is None:
            raise ValueError("greedy_decode: the encoder-decoder needs encoder_input_tokens")
        batch_size = encoder_input_tokens.shape[0]
        encoded = model.apply(variables, encoder_input_tokens, method=Transformer.encode)
        cache = init_cache(cfg, batch_size, max_decode_length, encoder_input_tokens.shape[1])
        bos = jnp.zeros((batch_size, 1), jnp.int32)
        positions = jnp.zeros((batch_size, 1), jnp.int32)
        logits, cache = step(bos, positions, cache, encoded=encoded)
        first = _greedy_token(logits[:, 0])
        next_position = jnp.ones((batch_size,), jnp.int32)
        prefix_lengths = None
    else:
        if inputs is None:
            raise ValueError("greedy_decode: decoder-only models need inputs (the prompt)")
        batch_size, prompt_length = inputs.shape
        lengths = jnp.sum(inputs != PAD_ID, axis=1).astype(jnp.int32)  # n per row
        prefill = jnp.concatenate([jnp.zeros((batch_size, 1), inputs.dtype), inputs], axis=1)
        positions = jnp.broadcast_to(jnp.arange(prompt_length + 1), prefill.shape)
        cache = init_cache(cfg, batch_size, prompt_length + max_decode_length)
        prefix_lengths = lengths + 1  # seqio: the inputs plus one position are bidirectional
        logits, cache = step(prefill, positions, cache, prefix_lengths)
        first = _greedy_token(jnp.take_along_axis(logits, lengths[:, None, None], axis=1)[:, 0])
        next_position = lengths + 1

    out = jnp.zeros((batch_size, max_decode_length), jnp.int32).at[:, 0].set(first)
    done = first == eos_id

    def cond(state):
        t, _, _, _, done = state
        return (t < max_decode_length) & ~jnp.all(done)

    def body(state):
        t, out, cache, previous, done = state
        positions = (next_position + t - 1)[:, None]
        logits, cache = step(previous[:, None], positions, cache, prefix_lengths)
        token = jnp.where(done, PAD_ID, _greedy_token(logits[:, 0]))
        out = out.at[:, t].set(token)
        return t + 1, out, cache, token, done | (token == eos_id)

    _, out, _, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), out, cache, first, done))
    return out
