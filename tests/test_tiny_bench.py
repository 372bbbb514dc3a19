"""The tiny benchmark's hand-written decoder computes what the harness computes.

harness/bench/tiny_bench.py times the harness's train step against a plain-JAX reference; these
tests make that comparison fail loudly if the two ever compute different things: the same loss on
the same weights, the same first Adafactor update, the same bucket ids, and every layer's work
present in the reference's compiled step. Shapes are small (the shared ``tiny`` fixture) so that
each test compiles in a few seconds; float32 compute at the default ``highest`` precision.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from harness.bench import tiny_bench
from harness.train.optim import make_optimizer, make_schedule, param_logical_axes
from harness.train.state import create_train_state
from harness.train.steps import make_train_step
from models import losses
from models.layers import relative_position_buckets
from models.transformer import Transformer, init_params
from helpers import tiny_config

# Small cases of each architecture with every feature the grid's cases have (packing, prefix).
SMALL_CASES = {
    "cd": tiny_bench.TinyCase("cd", "cd", 2, 16, segments=2, packed=True),
    "nd": tiny_bench.TinyCase("nd", "nd", 2, 16, prefix=7),
    "ed": tiny_bench.TinyCase("ed", "ed", 2, 8, inputs_length=12, segments=2, packed=True),
}


def _setup(name):
    case = SMALL_CASES[name]
    config = tiny_config(case.architecture)
    batch = {k: jnp.asarray(v) for k, v in
             tiny_bench.synthetic_batch(case, config.vocab_size, seed=1).items()}
    params = init_params(config, jax.random.key(3))
    return case, config, batch, params


@pytest.mark.parametrize("name", sorted(SMALL_CASES))
def test_reference_matches_harness_loss(name):
    """Same weights and batch -> the same summed loss (1e-4: whole model) and trained tokens."""
    case, config, batch, params = _setup(name)
    reference = tiny_bench.Reference(config)

    def both(params, batch):
        logits = Transformer(config).apply({"params": params}, batch)
        terms = losses.cross_entropy_with_z_loss(logits, batch["decoder_target_tokens"],
                                                 batch["decoder_loss_weights"])
        return (terms.loss, terms.weight,
                *reference.loss(tiny_bench.from_harness_params(params), batch))

    h_loss, h_weight, r_loss, r_weight = jax.jit(both)(params, batch)
    np.testing.assert_allclose(r_loss, h_loss, rtol=1e-5, atol=1e-4)
    assert float(r_weight) == float(h_weight) == float(np.sum(batch["decoder_loss_weights"]))


def test_reference_matches_harness_first_update():
    """The harness's train step and the reference's make the same first Adafactor update."""
    case, config, batch, params = _setup("nd")
    schedule = make_schedule("rsqrt", 1.0, 10_000, 10)
    optimizer = make_optimizer("adafactor", schedule, logical_axes=param_logical_axes(config))
    harness_step = make_train_step(Transformer(config), optimizer, schedule)
    reference = tiny_bench.Reference(config)

    def both(params, batch):
        new_state, _ = harness_step(create_train_state(params, optimizer), batch,
                                    jax.random.key(0))
        ref_state, _ = reference.train_step(
            reference.init_state(tiny_bench.from_harness_params(params)), batch)
        return tiny_bench.from_harness_params(new_state.params), ref_state["params"]

    h_new, r_new = jax.jit(both)(params, batch)
    old = tiny_bench.from_harness_params(params)
    # The updates (new - old) agree leaf by leaf; each is ~lr * max(rms(param), 1e-3) in size.
    h_update = jax.tree.map(jnp.subtract, h_new, old)
    r_update = jax.tree.map(jnp.subtract, r_new, old)
    assert jax.tree.structure(h_update) == jax.tree.structure(r_update)
    for (path, h), r in zip(jax.tree_util.tree_flatten_with_path(h_update)[0],
                            jax.tree.leaves(r_update)):
        assert float(jnp.max(jnp.abs(h))) > 0, jax.tree_util.keystr(path)
        np.testing.assert_allclose(r, h, atol=1e-6, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("preset,architecture", [("tiny", "ed"), ("mini", "cd"), ("mini", "ed")])
def test_reference_factors_what_the_harness_factors(preset, architecture):
    """Adafactor keeps factored (row, column) statistics for exactly the same parameters: the
    number of factored leaves and the total size of the second-moment statistics agree."""
    config = (tiny_config(architecture) if preset == "tiny"
              else tiny_bench.model_config(tiny_bench.TinyCase("x", architecture, 1, 1)))
    optimizer = make_optimizer("adafactor", 0.01, logical_axes=param_logical_axes(config))
    params = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    harness_v = jax.eval_shape(optimizer.init, params)[0]
    factored = sum(leaf.shape != (1,) for leaf in jax.tree.leaves(harness_v.v_row))
    harness_size = sum(leaf.size for tree in (harness_v.v_row, harness_v.v_col, harness_v.v)
                       for leaf in jax.tree.leaves(tree) if leaf.shape != (1,))
    reference = tiny_bench.Reference(config)
    ref_v = jax.eval_shape(reference.init_state, jax.eval_shape(
        tiny_bench.from_harness_params, params))["v"]
    ref_factored = jax.tree.leaves(ref_v, is_leaf=lambda x: isinstance(x, tuple))
    num_layers = config.num_layers  # the harness stacks layers: one factored leaf per stack
    assert sum(isinstance(v, tuple) for v in ref_factored) == sum(
        (num_layers if leaf.ndim > 1 else 1) for leaf in jax.tree.leaves(harness_v.v_row)
        if leaf.shape != (1,))
    assert factored > 0
    assert sum(leaf.size for leaf in jax.tree.leaves(ref_v)) == harness_size


def test_reference_loss_decreases_in_bfloat16():
    """The benchmark's own setting: bfloat16 compute, the loss falls over a few steps."""
    case, config, batch, params = _setup("cd")
    reference = tiny_bench.Reference(dataclasses.replace(config, dtype="bfloat16"))
    state = reference.init_state(tiny_bench.from_harness_params(params))
    step = jax.jit(reference.train_step)
    state, first = step(state, batch)
    state, last = step(state, batch)
    assert float(last) < float(first)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_reference_buckets_match_harness(bidirectional):
    for q, k in ((16, 16), (128, 128), (24, 104)):
        relative = np.arange(k)[None, :] - np.arange(q)[:, None]
        expected = relative_position_buckets(jnp.asarray(relative), bidirectional, 32, 128)
        np.testing.assert_array_equal(tiny_bench.relative_buckets(q, k, bidirectional), expected)


def test_grid_cases_shapes_and_flops():
    """The cases are the tiny grid's shapes, and the reference's step does every layer's matmuls:
    XLA's count of its (unrolled) step is within 0.9-1.3x of the analytic training FLOPs."""
    assert {c.name: (c.batch_size, c.inputs_length, c.length) for c in tiny_bench.CASES.values()} \
        == {"cd": (16, 0, 128), "nd": (16, 0, 128), "ed": (16, 104, 24), "ed_plm": (8, 128, 128)}
    for name in ("cd", "ed"):
        case = tiny_bench.CASES[name]
        config = tiny_bench.model_config(case, "float32")
        batch = tiny_bench.synthetic_batch(case, config.vocab_size)
        assert sum(batch[k].size for k in ("decoder_target_tokens", "encoder_input_tokens")
                   if k in batch) == case.tokens_per_step
        reference = tiny_bench.Reference(config)
        params = jax.eval_shape(lambda: tiny_bench.from_harness_params(
            init_params(config, jax.random.key(0))))
        state = jax.eval_shape(reference.init_state, params)
        cost = jax.jit(reference.train_step).lower(state, batch).cost_analysis()
        analytic, _ = tiny_bench.model_flops(case, config)
        assert 0.9 < cost["flops"] / analytic < 1.3, (name, cost["flops"] / analytic)


def test_result_format_and_json():
    case = tiny_bench.CaseResult("cd", "cd", 16, 2048, 1.5e10, 1.6e10, [0.5, 0.6], [0.6, 0.7],
                                 3.0, 2.0, 1e10, 1.5e10, 6.0, 6.1)
    result = tiny_bench.TinyBenchResult([case], "bfloat16", 10, 2, 1e11, 1)
    assert case.ratio == pytest.approx(0.65 / 0.55)
    text = result.format()
    assert "cd" in text and "1.18" in text
    row = result.as_dict()["cases"][0]
    assert row["ratio"] == pytest.approx(case.ratio) and "harness_mfu" in row
    with pytest.raises(ValueError, match="case='xx'"):
        tiny_bench.run_tiny_benchmark(["xx"])


def test_matmul_sums_give_the_plain_gradients():
    """models/layers.py's custom gradients (sums over leading axes as matmuls) equal autodiff's."""
    from models.layers import broadcast_batch, scale_features
    rng = np.random.default_rng(0)
    bias = jnp.asarray(rng.normal(size=(1, 2, 5, 5)), jnp.float32)
    x = jnp.asarray(rng.normal(size=(3, 4, 6)), jnp.float32)
    scale = jnp.asarray(rng.normal(size=(6,)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=(3, 2, 5, 5)), jnp.float32)

    def grads(broadcast, scaled):
        return jax.grad(lambda b, x, s: jnp.sum(broadcast(b) * weights)
                        + jnp.sum(jnp.sin(scaled(x, s))), argnums=(0, 1, 2))(bias, x, scale)

    custom = jax.jit(lambda: grads(lambda b: broadcast_batch(b, 3), scale_features))()
    plain = jax.jit(lambda: grads(lambda b: jnp.broadcast_to(b, (3, 2, 5, 5)),
                                  lambda x, s: x * s))()
    for c, p in zip(custom, plain):
        np.testing.assert_allclose(c, p, rtol=1e-5, atol=1e-6)


def test_unrolled_layers_give_the_scanned_gradient():
    """``scan_unroll`` (the mini preset unrolls its 4 layers) keeps the tree and the gradient."""
    case, config, batch, params = _setup("cd")

    def grad(cfg):
        def loss(p):
            logits = Transformer(cfg).apply({"params": p}, batch)
            return losses.cross_entropy_with_z_loss(logits, batch["decoder_target_tokens"],
                                                    batch["decoder_loss_weights"]).loss
        return jax.grad(loss)(params)

    scanned, unrolled = jax.jit(lambda: (grad(config), grad(config.replace(scan_unroll=2))))()
    assert jax.tree.structure(scanned) == jax.tree.structure(unrolled)
    # Whole-model tolerance (CONTRIBUTING.md): XLA fuses the unrolled layers differently, so
    # sums reassociate (seen: 1.4e-6 on a summed-loss gradient).
    for s, u in zip(jax.tree.leaves(scanned), jax.tree.leaves(unrolled)):
        np.testing.assert_allclose(u, s, rtol=1e-4, atol=1e-5)
