"""Train, eval and score steps (harness/train/steps.py) and the train state (harness/train/state.py).

Invariants, no golden numbers: sharded == single device, accumulated == big batch, "sum" and
"tokens" normalisation differ by the token count only, a non-finite step changes nothing, dropout
masks follow (rng, step), and scoring equals a direct sum of token log-probs. Every jitted step is
compiled once per configuration (``_setup`` caches them) to keep the module fast on 2 cores.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from helpers import assert_one_line_error, decoder_batch, random_tokens, tiny_config
from harness.train import optim
from harness.train import steps
from harness.train.state import TrainState, create_train_state, state_shardings
from models import losses, sharding
from models.transformer import Transformer, abstract_params, init_fn

ARCHITECTURES = ("cd", "nd", "ed")
ROWS, LENGTH, INPUT_LENGTH = 8, 16, 12
SGD_RATE = 1.0
# Test-only: XLA's CPU backend compiles about twice as fast without its expensive LLVM passes, and
# compiling, not running, is what these tests spend their time on. The invariants do not depend on
# it (both sides of every comparison are compiled alike).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _batch(arch: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Unpacked rows with different amounts of padding (so rows train different token counts)."""
    rng = np.random.default_rng(seed)
    targets = random_tokens(rng, (ROWS, LENGTH))
    for row, length in enumerate([16, 16, 12, 9, 16, 6, 14, 11]):
        targets[row, length:] = 0
    batch = decoder_batch(targets, [4, 2, 5, 3, 4, 4, 1, 6] if arch == "nd" else None)
    if arch == "ed":
        inputs = random_tokens(rng, (ROWS, INPUT_LENGTH))
        for row, length in enumerate([12, 7, 12, 10, 3, 12, 12, 8]):
            inputs[row, length:] = 0
        batch["encoder_input_tokens"] = inputs
    return batch


@functools.lru_cache(maxsize=None)
def _setup(arch: str, optimizer_name: str, normalization: str = "tokens", microbatches: int = 1,
           dropout_rate: float = 0.0):
    """``(config, optimizer, train_step, jitted train_step)``; each compiles once per process."""
    config = tiny_config(arch, dropout_rate=dropout_rate)
    if optimizer_name == "sgd":
        schedule = optim.make_schedule("constant", SGD_RATE, 0, 1)
        optimizer = optax.sgd(schedule)
    else:
        schedule = optim.make_schedule("rsqrt", 1.0, 10_000, 100_000)
        optimizer = optim.make_optimizer(optimizer_name, schedule,
                                         logical_axes=optim.param_logical_axes(config))
    train_step = steps.make_train_step(Transformer(config), optimizer, schedule,
                                       loss_normalization=normalization,
                                       num_microbatches=microbatches)
    return config, optimizer, train_step, jax.jit(train_step, compiler_options=FAST_COMPILE)


@contextlib.contextmanager
def _persistent_cache(enabled: bool):
    """Programs compiled inside are written to JAX's persistent compilation cache or not.

    Not for the sharded step with microbatches: XLA:CPU (jaxlib 0.10.2) compiles it and runs it
    correctly, but the same executable read back from the cache by a later process deadlocks in
    its collectives, so a second run of the suite in one checkout crashed its worker
    (``harness.grid.timing.enable_compilation_cache`` keeps the cache off on multi-device CPUs).
    The cache decides once per process whether it is used; what it skips live is the write of an
    entry that compiled faster than ``jax_persistent_cache_min_compile_time_secs``.
    """
    previous = jax.config.jax_persistent_cache_min_compile_time_secs
    if not enabled:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", float("inf"))
    try:
        yield
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", previous)


@functools.lru_cache(maxsize=None)
def _sharded_init(arch: str):
    """``(mesh, params, param shardings)`` of the tiny model, created on a (4, 2) mesh once per
    architecture (an init compiles the whole forward pass: as slow as a step)."""
    mesh = sharding.make_mesh(4, 2)
    with sharding.mesh_context(mesh):
        variables, shardings = sharding.init_sharded(init_fn(tiny_config(arch)), jax.random.key(0),
                                                     mesh)
    return mesh, variables["params"], shardings["params"]


def _params(arch: str):
    """The same initial parameters on one device (tests/test_sharding.py checks that sharded
    initialisation gives the single-device values)."""
    return jax.device_put(_sharded_init(arch)[1], jax.devices()[0])


def _state(arch: str, optimizer) -> TrainState:
    # Committed to one device, as a step's outputs are; mixed with the optimizer's uncommitted
    # zeros, the second call of the step would compile again.
    return jax.device_put(create_train_state(_params(arch), optimizer), jax.devices()[0])


def _assert_trees_close(actual, expected, atol: float) -> None:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol),
                 actual, expected)


def test_steps_import_neither_tensorflow_nor_seqio():
    import subprocess
    import sys
    code = ("import harness.train.optim, harness.train.state, harness.train.steps, sys; "
            "print(' '.join(sys.modules))")
    modules = set(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                 text=True).stdout.split())
    assert "jax" in modules
    assert not {"tensorflow", "seqio", "t5", "torch"} & modules


# -------------------------------------------------------------------------------------------------
# State shardings.
# -------------------------------------------------------------------------------------------------

def test_state_shardings_mirror_parameters_and_replicate_the_rest():
    mesh = sharding.make_mesh(4, 2)
    model = NamedSharding(mesh, P(None, sharding.MODEL))
    vector = NamedSharding(mesh, P(sharding.MODEL))
    replicated = NamedSharding(mesh, P())
    params = {"w": jax.ShapeDtypeStruct((256, 512), jnp.float32),
              "layer": {"b": jax.ShapeDtypeStruct((512,), jnp.float32)}}
    param_shardings = {"w": model, "layer": {"b": vector}}

    adafactor = optim.make_optimizer("adafactor", optim.make_schedule("constant", 1.0, 0, 1),
                                     logical_axes={"w": P("embed", "mlp"),
                                                   "layer": {"b": P("embed")}})
    shardings = state_shardings(param_shardings, adafactor, params, mesh)
    assert shardings.step == replicated and shardings.params == param_shardings
    factored = next(s for s in jax.tree.leaves(shardings.opt_state,
                                               is_leaf=lambda s: hasattr(s, "v_row"))
                    if hasattr(s, "v_row"))
    # Factored [256, 512]: row/column statistics and the [1] placeholder are replicated.
    assert factored.v_row["w"] == replicated and factored.v_col["w"] == replicated
    assert factored.v["w"] == replicated and factored.count == replicated
    # Unfactored vector: its full second moment has the parameter's shape and sharding.
    assert factored.v["layer"]["b"] == vector

    adamw = optim.make_optimizer("adamw", optim.make_schedule("constant", 1.0, 0, 1),
                                 weight_decay=0.1, grad_clip=1.0)
    shardings = state_shardings(param_shardings, adamw, params, mesh)
    adam = next(s for s in jax.tree.leaves(shardings.opt_state, is_leaf=lambda s: hasattr(s, "mu"))
                if hasattr(s, "mu"))
    assert adam.mu == param_shardings and adam.nu == param_shardings
    assert adam.count == replicated
    # Every leaf of the real state has a sharding, and the trees line up.
    abstract_state = jax.eval_shape(lambda p: create_train_state(p, adamw), params)
    assert jax.tree.structure(abstract_state) == jax.tree.structure(shardings)

    with pytest.raises(ValueError) as excinfo:
        state_shardings({"w": model}, adamw, params, mesh)
    assert_one_line_error(excinfo, "param_shardings")


# -------------------------------------------------------------------------------------------------
# Train step.
# -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch, microbatches", [*((a, 1) for a in ARCHITECTURES), ("nd", 2)])
def test_sharded_training_equals_single_device(arch, microbatches):
    """(4, 2) mesh == one device; with microbatches, sharded accumulation == one big batch."""
    config, optimizer, _, jitted = _setup(arch, "adafactor")
    train_step = _setup(arch, "adafactor", microbatches=microbatches)[2]
    batch, rng = _batch(arch), jax.random.key(1)

    # Reference: one device, no mesh.
    state = _state(arch, optimizer)
    expected = []
    for _ in range(3):
        state, metrics = jitted(state, batch, rng)
        expected.append(metrics)

    mesh, params, param_shardings = _sharded_init(arch)
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P(sharding.DATA))
    with sharding.mesh_context(mesh), _persistent_cache(microbatches == 1):
        # Boxed (logically partitioned) shapes, taken inside the mesh context, as a loop would.
        abstract = jax.eval_shape(init_fn(config), jax.random.key(0))["params"]
        shardings = state_shardings(param_shardings, optimizer, abstract, mesh)
        # Copy: the step donates the state, and the cached initial parameters must survive.
        sharded = jax.jit(lambda p: create_train_state(jax.tree.map(jnp.copy, p), optimizer),
                          out_shardings=shardings, compiler_options=FAST_COMPILE)(params)
        step = jax.jit(train_step, in_shardings=(shardings, batch_sharding, replicated),
                       out_shardings=(shardings, None), donate_argnums=0,
                       compiler_options=FAST_COMPILE)
        sharded_batch = jax.device_put(batch, batch_sharding)
        for metrics in expected:
            sharded, sharded_metrics = step(sharded, sharded_batch, rng)
            assert float(sharded_metrics["finite"]) == 1.0
            for name in ("loss", "z_loss", "accuracy", "tokens_seen", "tokens_trained",
                         "learning_rate"):
                np.testing.assert_allclose(sharded_metrics[name], metrics[name], atol=1e-5,
                                           err_msg=name)
            np.testing.assert_allclose(sharded_metrics["grad_norm"], metrics["grad_norm"],
                                       rtol=1e-5)

    assert int(sharded.step) == 3
    # The state stays laid out as state_shardings says (donation and all).
    jax.tree.map(lambda array, want: _assert_placed(array, want), sharded, shardings)
    query = sharded.params["decoder"]["layers"]["self_attention"]["query"]
    assert query.sharding.spec == P(None, None, sharding.MODEL, None)


def _assert_placed(array: jax.Array, want: NamedSharding) -> None:
    assert array.sharding.is_equivalent_to(want, array.ndim), (array.shape, array.sharding, want)


def test_accumulating_microbatches_equals_one_big_batch():
    batch, rng = _batch("nd"), jax.random.key(2)
    _, optimizer, _, big = _setup("nd", "sgd", "tokens", 1)
    _, _, _, accumulated = _setup("nd", "sgd", "tokens", 4)
    state = _state("nd", optimizer)
    big_state, big_metrics = big(state, batch, rng)
    acc_state, acc_metrics = accumulated(state, batch, rng)
    # Rows train 2..15 tokens each, so the 4 microbatches have different token counts: the mean
    # must be taken once over the whole batch, not per microbatch.
    assert float(acc_metrics["tokens_trained"]) == float(np.sum(batch["decoder_loss_weights"]))
    for name in ("loss", "z_loss", "accuracy", "grad_norm", "tokens_seen", "tokens_trained"):
        np.testing.assert_allclose(acc_metrics[name], big_metrics[name], atol=1e-5, err_msg=name)
    assert int(acc_state.step) == int(big_state.step) == 1
    _assert_trees_close(acc_state.params, big_state.params, atol=1e-5)
    # The update is not trivially small: the comparison means something.
    moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
        jax.tree.leaves(big_state.params), jax.tree.leaves(state.params)))
    assert moved > 1e-3


def test_sum_and_tokens_normalisation_differ_only_in_gradient_scale():
    batch, rng = _batch("nd"), jax.random.key(2)
    _, optimizer, _, per_token = _setup("nd", "sgd", "tokens", 4)
    _, _, _, summed = _setup("nd", "sgd", "sum", 4)
    state = _state("nd", optimizer)
    token_state, token_metrics = per_token(state, batch, rng)
    sum_state, sum_metrics = summed(state, batch, rng)
    tokens = float(token_metrics["tokens_trained"])
    assert tokens == float(np.sum(batch["decoder_loss_weights"])) > 1
    # Same reported loss (always per trained token); gradients scaled by the token count.
    for name in ("loss", "z_loss", "accuracy"):
        np.testing.assert_allclose(sum_metrics[name], token_metrics[name], atol=1e-6)
    np.testing.assert_allclose(sum_metrics["grad_norm"], tokens * token_metrics["grad_norm"],
                               rtol=1e-5)
    # SGD: params - rate * grads, so the parameter deltas have ratio `tokens` leaf by leaf.
    for before, by_sum, by_token in zip(jax.tree.leaves(state.params),
                                        jax.tree.leaves(sum_state.params),
                                        jax.tree.leaves(token_state.params)):
        np.testing.assert_allclose(np.asarray(by_sum - before),
                                   tokens * np.asarray(by_token - before), rtol=1e-3, atol=1e-5)


def test_non_finite_step_returns_the_state_unchanged():
    batch, rng = _batch("nd"), jax.random.key(3)
    _, optimizer, _, jitted = _setup("nd", "sgd", "tokens", 4)  # compiled by the tests above
    state = _state("nd", optimizer)
    # A NaN in one parameter, and finite but huge parameters that overflow in the forward pass.
    nan_params = jax.tree.map(lambda p: p, state.params)
    nan_params["decoder"]["final_norm"]["scale"] = state.params["decoder"]["final_norm"]["scale"] \
        .at[0].set(jnp.nan)
    huge_params = jax.tree.map(lambda p: p * 1e30, state.params)
    for params in (nan_params, huge_params):
        bad = jax.device_put(create_train_state(params, optimizer).replace(
            step=jnp.asarray(7, jnp.int32)), jax.devices()[0])
        new, metrics = jitted(bad, batch, rng)
        assert float(metrics["finite"]) == 0.0
        assert not np.isfinite(float(metrics["loss"])) or not np.isfinite(
            float(metrics["grad_norm"]))
        assert int(new.step) == 7
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                     new, bad)
    # The same step on good parameters is finite and moves.
    new, metrics = jitted(state, batch, rng)
    assert float(metrics["finite"]) == 1.0 and int(new.step) == 1


def test_dropout_masks_follow_rng_and_step():
    _, optimizer, _, jitted = _setup("nd", "sgd", "tokens", 1, dropout_rate=0.5)
    batch = _batch("nd")
    state = _state("nd", optimizer)
    loss = lambda s, key: float(jitted(s, batch, key)[1]["loss"])  # noqa: E731
    first = loss(state, jax.random.key(4))
    # Same (rng, step): the same masks, bit for bit.
    assert loss(state, jax.random.key(4)) == first
    # Same params, next step number: new masks. Another rng: new masks.
    assert loss(state.replace(step=state.step + 1), jax.random.key(4)) != first
    assert loss(state, jax.random.key(5)) != first


def test_bad_arguments_raise_one_line_errors():
    config, optimizer, _, _ = _setup("cd", "sgd", "tokens", 1)
    schedule = optim.make_schedule("constant", 1.0, 0, 1)
    with pytest.raises(ValueError) as excinfo:
        steps.make_train_step(Transformer(config), optimizer, schedule, loss_normalization="mean")
    assert_one_line_error(excinfo, "loss_normalization='mean'", "sum", "tokens")
    with pytest.raises(ValueError) as excinfo:
        steps.make_train_step(Transformer(config), optimizer, schedule, num_microbatches=0)
    assert_one_line_error(excinfo, "num_microbatches=0")
    train_step = steps.make_train_step(Transformer(config), optimizer, schedule,
                                       num_microbatches=3)
    with pytest.raises(ValueError) as excinfo:
        abstract_state = jax.eval_shape(lambda p: create_train_state(p, optimizer),
                                        abstract_params(config))
        jax.eval_shape(train_step, abstract_state, _batch("cd"), jax.random.key(0))
    assert_one_line_error(excinfo, "batch size 8", "num_microbatches=3")


# -------------------------------------------------------------------------------------------------
# Eval and score steps.
# -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_score_and_eval_steps_equal_direct_sums(arch):
    config = tiny_config(arch)
    model = Transformer(config)
    params = _params(arch)
    batch = _batch(arch)
    score_step, eval_step = steps.make_score_step(model), steps.make_eval_step(model)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def run(params, batch):
        logits = model.apply({"params": params}, batch)
        direct = losses.token_log_probs(logits, batch["decoder_target_tokens"])
        return score_step(params, batch), eval_step(params, batch), direct, logits

    (log_likelihood, is_greedy), sums, token_log_probs, logits = jax.device_get(run(params, batch))
    weights = batch["decoder_loss_weights"]
    np.testing.assert_allclose(log_likelihood, np.sum(token_log_probs * weights, axis=-1),
                               atol=1e-5)
    greedy = np.all((np.argmax(logits, -1) == batch["decoder_target_tokens"]) | (weights == 0), -1)
    np.testing.assert_array_equal(is_greedy, greedy)
    assert log_likelihood.shape == is_greedy.shape == (ROWS,)
    # Eval shares the training loss: cross-entropy part == -sum of scored log-likelihoods.
    assert float(sums["weight_sum"]) == float(np.sum(weights))
    np.testing.assert_allclose(sums["loss_sum"] - sums["z_loss_sum"], -np.sum(log_likelihood),
                               rtol=1e-5)
    means = steps.eval_means(sums)
    assert means["loss"] == pytest.approx(float(sums["loss_sum"]) / float(np.sum(weights)))
    assert 0.0 <= means["accuracy"] <= 1.0


def test_tokens_seen_counts_decoder_targets_and_encoder_inputs():
    batch = _batch("ed")
    expected = (np.sum(batch["decoder_target_tokens"] > 0)
                + np.sum(batch["encoder_input_tokens"] > 0))
    assert float(steps.tokens_seen(batch)) == expected
    cd_batch = _batch("cd")
    assert float(steps.tokens_seen(cd_batch)) == np.sum(cd_batch["decoder_target_tokens"] > 0)
