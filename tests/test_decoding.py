"""KV-cache greedy decoding equals greedy decoding by repeated full forward passes.

The reference below knows nothing of caches: at every step it rebuilds the whole sequence the way
seqio's prefix-LM converter would (BOS, prompt, tokens so far), runs ``Transformer.__call__`` and takes
the argmax at the last position. Any error in prefill masks, cache writes, per-row offsets, the
"+1" prefix position or relative-position offsets changes the tokens.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import random_tokens, tiny_config
from models.decoding import EOS_ID, PAD_ID, greedy_decode
from models.transformer import Transformer, init_params

MAX_DECODE = 6


def _scaled_params(config, seed):
    # Larger weights than the initialiser's make logits peaked, so near-ties cannot flip an argmax
    # between the two computations.
    params = init_params(config, jax.random.key(seed))
    return jax.tree.map(lambda x: x * 2.0, params)


def reference_decode(config, params, prompts=None, encoder_input_tokens=None):
    """Greedy decoding by full forward passes over the growing sequence."""
    apply = jax.jit(Transformer(config).apply)
    rows = (prompts if prompts is not None else encoder_input_tokens).shape[0]
    outputs = np.zeros((rows, MAX_DECODE), np.int32)
    width = (0 if prompts is None else prompts.shape[1]) + MAX_DECODE + 1
    for row in range(rows):
        prompt = [] if prompts is None else [t for t in prompts[row] if t != PAD_ID]
        generated: list[int] = []
        for _ in range(MAX_DECODE):
            sequence = prompt + generated
            length = len(sequence) + 1
            # One padded width for every step (one compile); padding (target 0) is masked out.
            inputs = np.zeros((1, width), np.int32)
            inputs[0, 1:length] = sequence
            # Targets only mark which positions are real (non-zero); their values are not read.
            batch = {"decoder_input_tokens": inputs,
                     "decoder_target_tokens": (np.arange(width) < length).astype(np.int32)[None] * 2}
            if config.architecture == "nd":
                batch["decoder_causal_attention"] = (
                    np.arange(width) <= len(prompt)).astype(np.int32)[None]
            if config.is_encoder_decoder:
                batch["encoder_input_tokens"] = encoder_input_tokens[row:row + 1]
            logits = np.array(apply({"params": params}, batch))[0, length - 1]
            logits[PAD_ID] = -np.inf
            token = int(np.argmax(logits))
            generated.append(token)
            if token == EOS_ID:
                break
        outputs[row, :len(generated)] = generated
    return outputs


@pytest.mark.parametrize("arch,overrides", [
    ("cd", {}),
    ("nd", {}),
    ("nd", {"prefix_position_buckets": "bidirectional"}),
    ("ed", {}),
    ("ed", {"tie_embeddings": False}),
])
def test_cached_greedy_decoding_equals_full_forward_decoding(arch, overrides):
    config = tiny_config(arch, **overrides)
    params = _scaled_params(config, seed=3)
    rng = np.random.default_rng(0)
    decode = jax.jit(functools.partial(greedy_decode, Transformer(config),
                                       max_decode_length=MAX_DECODE))
    if arch == "ed":
        encoder_input_tokens = random_tokens(rng, (3, 7))
        encoder_input_tokens[1, 5:] = 0  # a padded row
        got = decode(params, encoder_input_tokens=jnp.asarray(encoder_input_tokens))
        want = reference_decode(config, params, encoder_input_tokens=encoder_input_tokens)
    else:
        prompts = random_tokens(rng, (3, 6))
        prompts[1, 3:] = 0  # rows of different prompt lengths share one prefill
        prompts[2, 1:] = 0
        got = decode(params, inputs=jnp.asarray(prompts))
        want = reference_decode(config, params, prompts=prompts)
    np.testing.assert_array_equal(np.asarray(got), want)
    assert len(set(want.ravel())) > 2  # the check is not vacuous (not a single repeated token)


def test_rows_stop_after_eos():
    config = tiny_config("cd")
    params = init_params(config, jax.random.key(0))
    # Make EOS the favourite next token everywhere: boost its output embedding.
    embedding = params["token_embedder"]["embedding"]
    params["token_embedder"]["embedding"] = embedding.at[EOS_ID].set(embedding.sum(0) * 50)
    decode = jax.jit(functools.partial(greedy_decode, Transformer(config), max_decode_length=4))
    out = np.asarray(decode(params, inputs=jnp.asarray(random_tokens(np.random.default_rng(1),
                                                                     (2, 3)))))
    assert (out[:, 0] == EOS_ID).all() and (out[:, 1:] == PAD_ID).all()
