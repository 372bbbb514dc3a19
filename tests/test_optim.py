"""Schedules and optimizers (harness/optim.py): the study's rsqrt schedule to the bit, Adafactor's
factored statistics, AdamW's weight-decay mask, and one-line errors for bad names."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import assert_one_line_error, tiny_config
from harness import optim
from models.transformer import abstract_params


def test_rsqrt_schedule_is_the_study_schedule_exactly():
    # PAPER.md 2.1: 1 / sqrt(max(n, 10^4)), flat at 0.01 for 10k steps, then inverse square root.
    schedule = jax.jit(optim.make_schedule("rsqrt", 1.0, warmup_steps=10_000, total_steps=131_072))
    for step, expected in [(0, 0.01), (1, 0.01), (10_000, 0.01), (40_000, 0.005)]:
        value = schedule(jnp.asarray(step, jnp.int32))
        assert value.dtype == jnp.float32
        assert value == np.float32(expected), (step, value)
        assert value == np.float32(1.0 / np.sqrt(max(step, 10_000)))
    # Elsewhere XLA may compute the division as a product with a reciprocal square root: one ulp.
    np.testing.assert_allclose(schedule(jnp.asarray(90_000)), 1.0 / 300.0, rtol=1e-6)


def test_schedule_offset_continues_an_upstream_schedule():
    """An adaptation starting a fresh optimizer at step 131,072 continues the study's decay."""
    upstream = optim.make_schedule("rsqrt", 1.0, 10_000, 171_008)
    continued = optim.make_schedule("rsqrt", 1.0, 10_000, 39_936, offset=131_072)
    for step in (0, 1, 5_000, 39_935):
        assert float(continued(jnp.int32(step))) == float(upstream(jnp.int32(131_072 + step)))
    assert float(continued(0)) == pytest.approx(1 / 131_072 ** 0.5)
    cosine = optim.make_schedule("cosine", 1.0, 10, 100, offset=50)
    assert float(cosine(100)) == pytest.approx(0.0, abs=1e-7)  # still ends at the stage's end
    with pytest.raises(ValueError, match="offset"):
        optim.make_schedule("rsqrt", 1.0, 10_000, 10, offset=-1)


def test_constant_schedule():
    schedule = optim.make_schedule("constant", 1e-3, warmup_steps=0, total_steps=10_000)
    for step in (0, 1, 5_000, 10 ** 6):
        assert schedule(jnp.asarray(step)) == np.float32(1e-3)


def test_cosine_schedule_endpoints():
    schedule = optim.make_schedule("cosine", 0.1, warmup_steps=10, total_steps=110)
    value = lambda step: float(schedule(jnp.asarray(step)))  # noqa: E731
    assert value(0) == 0.0
    assert value(5) == pytest.approx(0.05)
    assert value(10) == pytest.approx(0.1)
    assert value(60) == pytest.approx(0.05, abs=1e-6)    # half way through the decay
    assert value(110) == pytest.approx(0.0, abs=1e-9)
    assert value(500) == pytest.approx(0.0, abs=1e-9)


def test_adafactor_factors_large_matrices_and_descends():
    schedule = optim.make_schedule("constant", 0.1, 0, 1)
    optimizer = optim.make_optimizer("adafactor", schedule)
    params = {"w": jnp.ones((256, 512), jnp.float32), "small": jnp.ones((64, 32), jnp.float32),
              "b": jnp.ones((512,), jnp.float32)}
    state = optimizer.init(params)
    factored = next(s for s in jax.tree.leaves(state, is_leaf=lambda s: hasattr(s, "v_row"))
                    if hasattr(s, "v_row"))
    # Row and column statistics for the [256, 512] matrix, no full second moment.
    assert {factored.v_row["w"].shape, factored.v_col["w"].shape} == {(256,), (512,)}
    assert factored.v["w"].shape == (1,)
    # Below min_dim_size_to_factor (128) and vectors: a full second moment, as t5x.
    assert factored.v["small"].shape == (64, 32) and factored.v_row["small"].shape == (1,)
    assert factored.v["b"].shape == (512,)

    target = jax.tree.map(lambda p: jnp.full_like(p, 3.0), params)

    def loss(p):
        return sum(jnp.sum(jnp.square(a - b)) for a, b in zip(jax.tree.leaves(p),
                                                               jax.tree.leaves(target)))

    @jax.jit
    def step(p, s):
        updates, s = optimizer.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, updates), s

    losses = [float(loss(params))]
    for _ in range(3):
        params, state = step(params, state)
        losses.append(float(loss(params)))
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


def test_adamw_weight_decay_skips_norms_and_position_tables():
    params = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype),
                          abstract_params(tiny_config("ed", tie_embeddings=False)))
    mask = optim.weight_decay_mask(params)
    assert mask["token_embedder"]["embedding"] and mask["logits_dense"]["kernel"]
    assert mask["decoder"]["layers"]["mlp"]["wi_0"]
    assert mask["encoder"]["layers"]["self_attention"]["query"]
    assert not mask["decoder"]["final_norm"]["scale"]
    assert not mask["decoder"]["layers"]["pre_mlp_norm"]["scale"]      # [layers, embed]: rank 2
    assert not mask["encoder"]["relpos_bias"]["rel_embedding"]

    # Zero gradients: AdamW's update is the decay alone, lr * weight_decay * param, where masked.
    optimizer = optim.make_optimizer("adamw", optim.make_schedule("constant", 0.5, 0, 1),
                                     weight_decay=0.1)
    updates, _ = jax.jit(optimizer.update)(jax.tree.map(jnp.zeros_like, params),
                                           optimizer.init(params), params)
    jax.tree.map(lambda update, decays: np.testing.assert_allclose(
        np.asarray(update), -0.05 if decays else 0.0, atol=1e-7), updates, mask)


def test_gradient_clipping_by_global_norm():
    optimizer = optim.make_optimizer("adamw", optim.make_schedule("constant", 1.0, 0, 1),
                                     grad_clip=1.0)
    params = {"a": jnp.zeros(4)}
    state = optimizer.init(params)
    clip_state, _ = state
    clipped, _ = optax.clip_by_global_norm(1.0).update({"a": jnp.full(4, 10.0)}, clip_state)
    assert float(optax.global_norm(clipped)) == pytest.approx(1.0)
    updates, _ = optimizer.update({"a": jnp.full(4, 10.0)}, state, params)
    assert np.all(np.isfinite(updates["a"]))


def test_bad_names_and_numbers_raise_one_line_errors():
    schedule = optim.make_schedule("constant", 1.0, 0, 1)
    with pytest.raises(ValueError) as excinfo:
        optim.make_optimizer("sgd", schedule)
    assert_one_line_error(excinfo, "optimizer='sgd'", "adafactor", "adamw")
    with pytest.raises(ValueError) as excinfo:
        optim.make_schedule("linear", 1.0, 0, 1)
    assert_one_line_error(excinfo, "schedule='linear'", "rsqrt", "constant", "cosine")
    with pytest.raises(ValueError) as excinfo:
        optim.make_schedule("rsqrt", 1.0, 0, 1)
    assert_one_line_error(excinfo, "warmup_steps=0")
    with pytest.raises(ValueError) as excinfo:
        optim.make_schedule("cosine", 1.0, 10, 10)
    assert_one_line_error(excinfo, "total_steps=10")
    with pytest.raises(ValueError) as excinfo:
        optim.make_schedule("constant", 0.0, 0, 1)
    assert_one_line_error(excinfo, "learning_rate=0.0")
    with pytest.raises(ValueError) as excinfo:
        optim.make_optimizer("adafactor", schedule, grad_clip=0.0)
    assert_one_line_error(excinfo, "grad_clip=0.0")
