"""Schedules and optimizers (harness/train/optim.py): the study's rsqrt schedule to the bit, t5x's
Adafactor against a direct per-layer reference, optax's Adafactor's factored statistics, the
optimizer-state size of the study's models, AdamW's weight-decay mask, and one-line errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from helpers import assert_one_line_error, decoder_batch, random_tokens, tiny_config
from harness.train import optim
from harness.train import steps
from harness.train.state import create_train_state, state_shardings
from models import sharding
from models.config import preset
from models.transformer import Transformer, abstract_params, init_fn, init_params


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


def test_optax_adafactor_factors_large_matrices_and_descends():
    schedule = optim.make_schedule("constant", 0.1, 0, 1)
    optimizer = optim.make_optimizer("adafactor_optax", schedule)
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
    _assert_descends(optimizer, params)


def _assert_descends(optimizer, params, steps: int = 3) -> None:
    target = jax.tree.map(lambda p: jnp.full_like(p, 3.0), params)

    def loss(p):
        return sum(jnp.sum(jnp.square(a - b)) for a, b in zip(jax.tree.leaves(p),
                                                               jax.tree.leaves(target)))

    @jax.jit
    def step(p, s):
        updates, s = optimizer.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, updates), s

    state = optimizer.init(params)
    losses = [float(loss(params))]
    for _ in range(steps):
        params, state = step(params, state)
        losses.append(float(loss(params)))
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


# -------------------------------------------------------------------------------------------------
# t5x's Adafactor ("adafactor", the study's: PAPER.md 2.1).
# -------------------------------------------------------------------------------------------------

# Test parameters: (shape, logical axes, reference spec). The spec is t5x's treatment written out
# by hand from t5x/adafactor.py (standard_logical_factor_rules, set_param_axes, _parse_rule), not
# derived from harness.train.optim: (stacked over a leading layers axis, row dims, column dims), the
# dims counted within one layer; no row or column dims means unfactored.
T5X_PARAMS = {
    "attention": ((3, 8, 2, 4), P("layers", "embed", "heads", "kv"), (True, (0,), (1, 2))),
    "out": ((3, 2, 4, 8), P("layers", "heads", "kv", "embed"), (True, (2,), (0, 1))),
    "mlp": ((3, 8, 16), P("layers", "embed", "mlp"), (True, (0,), (1,))),
    "norm": ((3, 8), P("layers", "embed"), (True, (), ())),               # no column axis
    "relpos": ((3, 2, 32), P("layers", "heads", "relpos_buckets"), (True, (), ())),  # no row axis
    # Rank <= 2 without a layers axis: t5x ignores the names and factors the two dimensions (the
    # larger as the column) only when both are >= 128.
    "embedding": ((16, 8), P("vocab", "embed"), (False, (), ())),
    "big_embedding": ((160, 128), P("vocab", "embed"), (False, (1,), (0,))),
    "shared_relpos": ((2, 32), P("heads", "relpos_buckets"), (False, (), ())),
    "final_norm": ((8,), P("embed"), (False, (), ())),
}
# Gradient scale per step and layer: the jumps make update clipping act on some layers only.
GRAD_SCALES = np.array([[1.0, 1.0, 1.0], [1.0, 10.0, 0.1], [0.1, 1.0, 10.0], [1.0, 0.3, 30.0]])


def _t5x_inputs(seed: int = 0):
    """Parameters of mixed scale per layer (one layer of norm scales below epsilon2), and
    gradients per step."""
    rng = np.random.default_rng(seed)
    params, grads = {}, [{} for _ in GRAD_SCALES]
    for name, (shape, _, (stacked, _, _)) in T5X_PARAMS.items():
        param = rng.normal(size=shape).astype(np.float32)
        if stacked:
            param *= np.array([1.0, 0.05, 3.0], np.float32).reshape((3,) + (1,) * (len(shape) - 1))
        if name == "norm":
            param[1] *= 1e-5
        params[name] = param
        for step, scales in enumerate(GRAD_SCALES):
            grad = rng.normal(size=shape)
            if stacked:
                grad *= scales.reshape((3,) + (1,) * (len(shape) - 1))
            grads[step][name] = grad.astype(np.float32)
    return params, grads


def _t5x_reference_updates(params, grads, learning_rates, weight_decay=0.0):
    """t5x's Adafactor (decay_rate 0.8, step_offset 0, epsilon1 1e-30, clipping 1.0, parameter
    scale with epsilon2 1e-3, no momentum), in float64 NumPy, one layer at a time. Returns the
    updates (new minus old parameters) per step and counts of clipped / floored slices."""
    params = {name: value.astype(np.float64) for name, value in params.items()}
    stats: dict = {}
    counts = {"clipped": 0, "unclipped": 0, "floored": 0, "scaled": 0}
    all_updates = []
    for step, (step_grads, lr) in enumerate(zip(grads, learning_rates)):
        beta2 = 1.0 - (step + 1.0) ** -0.8
        updates = {}
        for name, (_, _, (stacked, rows, columns)) in T5X_PARAMS.items():
            param, grad = params[name], step_grads[name].astype(np.float64)
            update = np.zeros_like(param)
            for layer in (range(param.shape[0]) if stacked else [None]):
                index = layer if stacked else Ellipsis
                w, g = param[index], grad[index]
                squared = g * g + 1e-30
                old = stats.get((name, layer))
                if rows:
                    v_row, v_col = squared.mean(axis=columns), squared.mean(axis=rows)
                    if old is not None:
                        v_row = beta2 * old[0] + (1 - beta2) * v_row
                        v_col = beta2 * old[1] + (1 - beta2) * v_col
                    stats[(name, layer)] = (v_row, v_col)
                    estimate = (np.expand_dims(v_row, columns) * np.expand_dims(v_col, rows)
                                / v_row.mean())
                else:
                    estimate = squared if old is None else beta2 * old + (1 - beta2) * squared
                    stats[(name, layer)] = estimate
                y = g / np.sqrt(estimate)
                rms = np.sqrt(np.mean(y * y))
                counts["clipped" if rms > 1.0 else "unclipped"] += 1
                y /= max(1.0, rms)
                scale = np.sqrt(np.mean(w * w))
                counts["floored" if scale < 1e-3 else "scaled"] += 1
                update[index] = -lr * max(scale, 1e-3) * y - weight_decay * w
            updates[name] = update
            params[name] = param + update
        all_updates.append(updates)
    return all_updates, counts


def _assert_close(actual, expected, message: str) -> None:
    """CONTRIBUTING's 1e-5 absolute, and 1e-5 relative: the updates span about 4e-6 (layers of
    small parameters) to 8, and an absolute tolerance alone would not see the small ones."""
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5, err_msg=message)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-12, err_msg=message)


def _run(optimizer, params, grads):
    """The optimizer's updates for a list of gradients, one jitted update per step."""
    params = jax.tree.map(jnp.asarray, params)
    state = optimizer.init(params)
    update = jax.jit(optimizer.update)
    out = []
    for step_grads in grads:
        updates, state = update(jax.tree.map(jnp.asarray, step_grads), state, params)
        params = optax.apply_updates(params, updates)
        out.append(jax.tree.map(np.asarray, updates))
    return out, state


def test_t5x_adafactor_matches_a_direct_reference():
    """Four steps (the decay schedule and the learning-rate schedule both move) on parameters
    with a layers axis: factored attention and MLP kernels, unfactored norm scales and relative
    position tables, rank-2 parameters under t5x's heuristic. The gradient jumps make clipping act
    on some layers and not others, and one layer of norm scales is below epsilon2."""
    params, grads = _t5x_inputs()
    schedule = optim.make_schedule("rsqrt", 1.0, warmup_steps=2, total_steps=10)
    learning_rates = [1.0 / np.sqrt(max(step, 2)) for step in range(len(grads))]
    axes = {name: spec for name, (_, spec, _) in T5X_PARAMS.items()}
    optimizer = optim.make_optimizer("adafactor", schedule, logical_axes=axes)
    actual, state = _run(optimizer, params, grads)
    expected, counts = _t5x_reference_updates(params, grads, learning_rates)
    assert min(counts.values()) > 0, counts   # every branch taken
    for step, (got, want) in enumerate(zip(actual, expected)):
        for name in T5X_PARAMS:
            _assert_close(got[name], want[name], f"step {step}, {name}")

    # The state: factored statistics per layer, a full second moment only where unfactored.
    factored = state[0]
    assert int(factored.count) == len(grads)
    assert factored.v_row["attention"].shape == (3, 8) and factored.v_col["attention"].shape == (
        3, 2, 4)
    assert factored.v["attention"].shape == (1,)
    assert factored.v_row["big_embedding"].shape == (128,)
    assert factored.v_col["big_embedding"].shape == (160,)
    for name in ("norm", "relpos", "embedding", "shared_relpos", "final_norm"):
        assert factored.v[name].shape == T5X_PARAMS[name][0], name
        assert factored.v_row[name].shape == (1,), name


def test_t5x_adafactor_weight_decay_as_t5x():
    """param *= 1 - weight_decay (not times the learning rate), on decayed parameters only."""
    params, grads = _t5x_inputs(seed=1)
    params = {"layers": {"mlp": params["mlp"], "scale": params["norm"]}}
    axes = {"layers": {"mlp": T5X_PARAMS["mlp"][1], "scale": T5X_PARAMS["norm"][1]}}
    grads = [{"layers": {"mlp": g["mlp"], "scale": g["norm"]}} for g in grads[:2]]
    schedule = optim.make_schedule("constant", 0.5, 0, 1)
    decayed = optim.make_optimizer("adafactor", schedule, logical_axes=axes, weight_decay=0.01)
    plain = optim.make_optimizer("adafactor", schedule, logical_axes=axes)
    with_decay, _ = _run(decayed, params, grads)
    without, _ = _run(plain, params, grads)
    # Step 0 (same parameters): the decay adds -0.01 * param to the kernel, nothing to the scales.
    np.testing.assert_allclose(with_decay[0]["layers"]["mlp"] - without[0]["layers"]["mlp"],
                               -0.01 * params["layers"]["mlp"], atol=1e-6)
    np.testing.assert_array_equal(with_decay[0]["layers"]["scale"], without[0]["layers"]["scale"])


def test_t5x_adafactor_per_layer_equals_each_layer_alone():
    """The layers axis is a batch axis: a stack of layers updates as each layer on its own (the
    slice's logical axes without "layers"). The MLP is >= 128 wide so that its rank-2 slice, which
    t5x factors by its heuristic, is factored too."""
    rng = np.random.default_rng(2)
    shapes = {"attention": ((3, 8, 2, 4), P("layers", "embed", "heads", "kv")),
              "mlp": ((3, 128, 160), P("layers", "embed", "mlp")),
              "wo": ((3, 160, 128), P("layers", "mlp", "embed")),
              "norm": ((3, 8), P("layers", "embed")),
              "relpos": ((3, 2, 32), P("layers", "heads", "relpos_buckets"))}
    layer_scale = np.array([1.0, 0.01, 5.0])
    params = {name: (rng.normal(size=shape) * layer_scale.reshape((3,) + (1,) * (len(shape) - 1))
                     ).astype(np.float32) for name, (shape, _) in shapes.items()}
    grads = [{name: (rng.normal(size=shape) * GRAD_SCALES[step].reshape(
        (3,) + (1,) * (len(shape) - 1))).astype(np.float32) for name, (shape, _) in shapes.items()}
        for step in range(3)]
    schedule = optim.make_schedule("constant", 0.1, 0, 1)
    stacked = optim.make_optimizer("adafactor", schedule,
                                   logical_axes={name: spec for name, (_, spec) in shapes.items()})
    sliced = optim.make_optimizer("adafactor", schedule, logical_axes={
        name: P(*spec[1:]) for name, (_, spec) in shapes.items()})
    together, _ = _run(stacked, params, grads)
    for layer in range(3):
        alone, _ = _run(sliced, {n: p[layer] for n, p in params.items()},
                        [{n: g[layer] for n, g in step.items()} for step in grads])
        for step in range(3):
            for name in shapes:
                _assert_close(together[step][name][layer], alone[step][name],
                              f"layer {layer}, step {step}, {name}")


def _state_bytes(tree) -> int:
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", ["paper-decoder", "paper-encdec"])
def test_t5x_adafactor_state_of_the_study_models_has_no_unfactored_attention(name):
    """The study's models, abstractly: t5x's state keeps no attention-kernel-sized second moment;
    optax's keeps one per attention kernel (prints both sizes)."""
    config = preset(name)
    params = abstract_params(config)
    schedule = optim.make_schedule("rsqrt", 1.0, 10_000, 131_072)
    states = {
        "adafactor_optax": jax.eval_shape(optim.make_optimizer("adafactor_optax", schedule).init,
                                          params),
        "adafactor": jax.eval_shape(optim.make_optimizer(
            "adafactor", schedule, logical_axes=optim.param_logical_axes(config)).init, params)}
    sizes = {key: _state_bytes(state) for key, state in states.items()}
    kernel = params["decoder"]["layers"]["self_attention"]["query"]
    assert kernel.shape == (24, 4096, 64, 64)
    kernels = sum(1 for leaf in jax.tree.leaves(params) if leaf.size == kernel.size)
    assert kernels == (4 if name == "paper-decoder" else 12)   # q, k, v, out per attention block
    big = {key: [leaf for leaf in jax.tree.leaves(state) if leaf.size >= kernel.size]
           for key, state in states.items()}
    assert big["adafactor"] == []
    assert len(big["adafactor_optax"]) == kernels
    assert sizes["adafactor"] < 0.001 * _state_bytes(params) < sizes["adafactor_optax"]
    print(f"\n{name}: {_state_bytes(params):,} parameter bytes; optimizer state "
          f"adafactor_optax {sizes['adafactor_optax']:,} bytes, "
          f"adafactor (t5x) {sizes['adafactor']:,} bytes")


def test_t5x_adafactor_trains_the_tiny_model_and_shards_its_state():
    config = tiny_config("cd")
    axes = optim.param_logical_axes(config)
    schedule = optim.make_schedule("constant", 0.01, 0, 1)
    optimizer = optim.make_optimizer("adafactor", schedule, logical_axes=axes, grad_clip=1.0)

    # State shardings on a (4, 2) mesh: full second moments follow their parameter; factored
    # statistics and placeholders are replicated. The trees line up with the real state.
    mesh = sharding.make_mesh(4, 2)
    abstract = jax.eval_shape(init_fn(config), jax.random.key(0))["params"]
    param_shardings = sharding.logical_to_shardings(abstract, mesh)
    shardings = state_shardings(param_shardings, optimizer, abstract, mesh)
    stats = next(s for s in jax.tree.leaves(shardings.opt_state,
                                            is_leaf=lambda s: hasattr(s, "v_row"))
                 if hasattr(s, "v_row"))
    layers = param_shardings["decoder"]["layers"]
    assert stats.v["decoder"]["layers"]["relpos_bias"]["rel_embedding"] == layers[
        "relpos_bias"]["rel_embedding"]
    assert stats.v_row["decoder"]["layers"]["self_attention"]["query"].spec == P()
    params = abstract_params(config)
    abstract_state = jax.eval_shape(lambda p: create_train_state(p, optimizer), params)
    assert jax.tree.structure(abstract_state) == jax.tree.structure(shardings)

    rng = np.random.default_rng(0)
    batch = decoder_batch(random_tokens(rng, (4, 16)))
    step = jax.jit(steps.make_train_step(Transformer(config), optimizer, schedule))
    state = create_train_state(init_params(config, jax.random.key(0)), optimizer)
    losses = []
    for _ in range(6):
        state, metrics = step(state, batch, jax.random.key(1))
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.9 * losses[0], losses


def test_t5x_adafactor_needs_matching_logical_axes():
    schedule = optim.make_schedule("constant", 1.0, 0, 1)
    with pytest.raises(ValueError) as excinfo:
        optim.make_optimizer("adafactor", schedule)
    assert_one_line_error(excinfo, "logical_axes=param_logical_axes(model_config)",
                          "adafactor_optax")
    params = {"layers": {"kernel": jnp.zeros((2, 4, 8))}}
    cases = [({"layers": {"kernel": P("embed", "mlp")}}, ["layers/kernel", "rank 2", "(2, 4, 8)"]),
             ({"layers": {"kernel": P("layers", "embed", "width")}}, ["layers/kernel", "'width'"]),
             ({"layers": {"other": P("layers", "embed", "mlp")}}, ["layers/kernel", "no entry"]),
             ({"layers": {"kernel": P("embed", "mlp", "relpos_buckets")}}, ["layers/kernel"])]
    for axes, needles in cases:
        optimizer = optim.make_optimizer("adafactor", schedule, logical_axes=axes)
        with pytest.raises(ValueError) as excinfo:
            optimizer.init(params)
        assert_one_line_error(excinfo, *needles)


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
    assert_one_line_error(excinfo, "optimizer='sgd'", "adafactor", "adafactor_optax", "adamw")
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
