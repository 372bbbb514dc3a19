"""Model invariants per architecture (STYLE.md B3), the parameter tree as a checkpoint format, and
the loss / scoring functions against hand-computed references."""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from helpers import decoder_batch, random_tokens, tiny_config
from models import layers, losses
from models.config import preset
from models.layers import relative_position_buckets
from models.transformer import Transformer, abstract_params, count_params, init_params

ATOL = 1e-4  # whole-model tolerance (STYLE.md B3)


def _paths(params) -> dict[str, tuple[int, ...]]:
    flat = traverse_util.flatten_dict(params, sep="/")
    return {path: tuple(leaf.shape) for path, leaf in flat.items()}


@functools.lru_cache(maxsize=None)
def _apply(config):
    """One jitted forward per config: a whole-model compile instead of op-by-op dispatch."""
    return jax.jit(Transformer(config).apply)


def _logits(config, params, batch):
    return np.asarray(_apply(config)({"params": params},
                                     {k: jnp.asarray(v) for k, v in batch.items()}))


@pytest.fixture(scope="module")
def params():
    return {arch: init_params(tiny_config(arch), jax.random.key(0)) for arch in ("cd", "nd", "ed")}


# --------------------------------------------------------------------------------------------------
# Parameter tree: a checkpoint format.
# --------------------------------------------------------------------------------------------------

LAYER = {  # per-layer weights under */layers/, with the leading layer axis L=2 of the tiny preset
    "pre_self_attention_norm/scale": (2, 32),
    "self_attention/query": (2, 32, 2, 16),
    "self_attention/key": (2, 32, 2, 16),
    "self_attention/value": (2, 32, 2, 16),
    "self_attention/out": (2, 2, 16, 32),
    "pre_mlp_norm/scale": (2, 32),
    "mlp/wi_0": (2, 32, 64),
    "mlp/wi_1": (2, 32, 64),
    "mlp/wo": (2, 64, 32),
}
CROSS = {
    "pre_cross_attention_norm/scale": (2, 32),
    "cross_attention/query": (2, 32, 2, 16),
    "cross_attention/key": (2, 32, 2, 16),
    "cross_attention/value": (2, 32, 2, 16),
    "cross_attention/out": (2, 2, 16, 32),
}


def test_decoder_only_parameter_paths(params):
    expected = {"token_embedder/embedding": (128, 32), "decoder/final_norm/scale": (32,),
                "decoder/layers/relpos_bias/rel_embedding": (2, 2, 32)}
    expected.update({f"decoder/layers/{k}": v for k, v in LAYER.items()})
    assert _paths(params["cd"]) == expected


def test_encoder_decoder_parameter_paths(params):
    expected = {"token_embedder/embedding": (128, 32),
                "encoder/relpos_bias/rel_embedding": (2, 32),
                "encoder/final_norm/scale": (32,),
                "decoder/relpos_bias/rel_embedding": (2, 32),
                "decoder/final_norm/scale": (32,)}
    expected.update({f"encoder/layers/{k}": v for k, v in LAYER.items()})
    expected.update({f"decoder/layers/{k}": v for k, v in {**LAYER, **CROSS}.items()})
    assert _paths(params["ed"]) == expected


def test_untied_head_adds_logits_dense():
    paths = _paths(abstract_params(tiny_config("ed", tie_embeddings=False)))
    assert paths["logits_dense/kernel"] == (32, 128)


def test_causal_and_noncausal_decoders_share_one_parameter_tree(params):
    assert _paths(params["cd"]) == _paths(params["nd"])
    # A cd checkpoint runs as nd (the study's CD -> ND adaptation): same tree, new mask.
    batch = decoder_batch(np.full((1, 8), 5), prefix_lengths=[3])
    assert np.isfinite(_logits(tiny_config("nd"), params["cd"], batch)).all()


@pytest.mark.parametrize("name,arch,expected", [
    ("paper-decoder", "cd", 4_762_357_760),   # t5x decoder_only xxl.gin
    ("paper-decoder", "nd", 4_762_357_760),
    ("paper-encdec", "ed", 11_003_736_064),   # AO enc_dec_xxl.gin
])
def test_paper_presets_have_the_studys_exact_parameter_counts(name, arch, expected):
    assert count_params(preset(name, arch)) == expected


def test_parameters_are_float32_and_compute_is_bfloat16_by_default(params):
    cfg = preset("tiny", "cd")
    assert (cfg.param_dtype, cfg.dtype) == ("float32", "bfloat16")
    p = init_params(cfg, jax.random.key(0))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(p))
    logits = _logits(cfg, p, decoder_batch(np.full((1, 4), 3)))
    assert logits.dtype == np.float32  # logits (and so the loss) in float32


# --------------------------------------------------------------------------------------------------
# Attention structure.
# --------------------------------------------------------------------------------------------------

def test_causal_decoder_changing_a_later_token_leaves_earlier_logits_unchanged(params):
    rng = np.random.default_rng(0)
    targets = random_tokens(rng, (2, 12))
    changed = targets.copy()
    changed[:, 7] = (changed[:, 7] + 1) % 126 + 2
    for arch in ("cd", "nd"):
        # For nd, position 7 is outside the 3-token prefix (dca covers positions 0..3).
        prefix = [3, 3] if arch == "nd" else None
        a = _logits(tiny_config(arch), params[arch], decoder_batch(targets, prefix))
        b = _logits(tiny_config(arch), params[arch], decoder_batch(changed, prefix))
        # decoder_input_tokens are shifted right: the change enters at position 8.
        np.testing.assert_allclose(a[:, :8], b[:, :8], atol=1e-6)
        assert not np.allclose(a[:, 8:], b[:, 8:], atol=1e-4)


def test_causal_decoder_ignores_decoder_causal_attention(params):
    targets = random_tokens(np.random.default_rng(1), (2, 10))
    with_prefix = decoder_batch(targets, prefix_lengths=[6, 4])
    without = decoder_batch(targets)
    np.testing.assert_array_equal(_logits(tiny_config("cd"), params["cd"], with_prefix),
                                  _logits(tiny_config("cd"), params["cd"], without))


def test_noncausal_decoder_prefix_is_bidirectional(params):
    rng = np.random.default_rng(2)
    targets = random_tokens(rng, (2, 12))
    changed = targets.copy()
    changed[:, 4] = (changed[:, 4] + 1) % 126 + 2  # last input token of a 5-token prefix
    cfg, p = tiny_config("nd"), params["nd"]
    a = _logits(cfg, p, decoder_batch(targets, [5, 5]))
    b = _logits(cfg, p, decoder_batch(changed, [5, 5]))
    # Input position 5 holds that token; positions 0..4 see it only through the bidirectional prefix.
    assert np.abs(a[:, :5] - b[:, :5]).max() > 1e-3
    # The same model as a causal decoder does not let it leak backwards.
    c = _logits(tiny_config("cd"), p, decoder_batch(targets, [5, 5]))
    d = _logits(tiny_config("cd"), p, decoder_batch(changed, [5, 5]))
    np.testing.assert_allclose(c[:, :5], d[:, :5], atol=1e-6)


def test_noncausal_decoder_targets_do_not_leak_into_the_prefix(params):
    rng = np.random.default_rng(3)
    targets = random_tokens(rng, (1, 12))
    changed = targets.copy()
    changed[:, 8] += 1  # a target token (input position 9)
    cfg, p = tiny_config("nd"), params["nd"]
    a = _logits(cfg, p, decoder_batch(targets, [5]))
    b = _logits(cfg, p, decoder_batch(changed, [5]))
    np.testing.assert_allclose(a[:, :9], b[:, :9], atol=1e-6)


def test_encoder_decoder_last_encoder_token_reaches_first_decoder_position(params):
    rng = np.random.default_rng(4)
    cfg, p = tiny_config("ed"), params["ed"]
    enc = random_tokens(rng, (2, 9))
    batch = decoder_batch(random_tokens(rng, (2, 6)))
    batch["encoder_input_tokens"] = enc
    changed = dict(batch, encoder_input_tokens=enc.copy())
    changed["encoder_input_tokens"][:, -1] += 1
    a, b = _logits(cfg, p, batch), _logits(cfg, p, changed)
    assert np.abs(a[:, 0] - b[:, 0]).max() > 1e-3
    # ... and the decoder itself is causal.
    later = dict(batch, decoder_input_tokens=batch["decoder_input_tokens"].copy())
    later["decoder_input_tokens"][:, 4] += 1
    c = _logits(cfg, p, later)
    np.testing.assert_allclose(a[:, :4], c[:, :4], atol=1e-6)


def test_bidirectional_prefix_buckets_change_only_the_prefix_pairs():
    cfg = tiny_config("nd", prefix_position_buckets="bidirectional")
    p = init_params(cfg, jax.random.key(1))
    targets = random_tokens(np.random.default_rng(5), (1, 10))
    batch = decoder_batch(targets, [4])
    causal = _logits(tiny_config("nd"), p, batch)
    bidirectional = _logits(cfg, p, batch)
    assert np.abs(causal[:, :5] - bidirectional[:, :5]).max() > 1e-4  # prefix queries differ
    # Bucket ids: inside the prefix a key 2 to the right gets its own bucket, not distance 0's.
    rel = jnp.array([2, 0, -2])
    assert list(relative_position_buckets(rel, False, 32, 128)) == [0, 0, 2]
    assert list(relative_position_buckets(rel, True, 32, 128)) == [18, 0, 2]


# --------------------------------------------------------------------------------------------------
# Packing: a packed row gives the same per-token outputs as each example alone.
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["cd", "nd"])
def test_packing_invariance_decoder_only(params, arch):
    rng = np.random.default_rng(6)
    cfg, p = tiny_config(arch), params[arch]
    lengths, prefixes = [5, 7, 3], [2, 4, 1]
    examples = [random_tokens(rng, (1, n)) for n in lengths]
    packed_len = sum(lengths) + 2
    targets = np.zeros((1, packed_len), np.int32)
    segments = np.zeros((1, packed_len), np.int32)
    dca = np.zeros((1, packed_len), np.int32)
    start = 0
    for i, (example, prefix) in enumerate(zip(examples, prefixes)):
        n = example.shape[1]
        targets[0, start:start + n] = example
        segments[0, start:start + n] = i + 1
        dca[0, start:start + prefix + 1] = 1
        start += n
    packed = decoder_batch(targets, segment_ids=segments)
    packed["decoder_causal_attention"] = dca
    packed_logits = _logits(cfg, p, packed)
    start = 0
    for example, prefix in zip(examples, prefixes):
        n = example.shape[1]
        alone = _logits(cfg, p, decoder_batch(example, [prefix]))
        np.testing.assert_allclose(packed_logits[:, start:start + n], alone, atol=ATOL)
        start += n


def test_packing_invariance_encoder_decoder(params):
    rng = np.random.default_rng(7)
    cfg, p = tiny_config("ed"), params["ed"]
    enc = [random_tokens(rng, (1, n)) for n in (6, 4)]
    dec = [random_tokens(rng, (1, n)) for n in (3, 5)]

    def pack(parts, length):
        tokens, segments = np.zeros((1, length), np.int32), np.zeros((1, length), np.int32)
        start = 0
        for i, part in enumerate(parts):
            tokens[0, start:start + part.shape[1]] = part
            segments[0, start:start + part.shape[1]] = i + 1
            start += part.shape[1]
        return tokens, segments

    enc_tokens, enc_segments = pack(enc, 12)
    dec_tokens, dec_segments = pack(dec, 10)
    packed = decoder_batch(dec_tokens, segment_ids=dec_segments)
    packed.update(encoder_input_tokens=enc_tokens, encoder_segment_ids=enc_segments)
    packed_logits = _logits(cfg, p, packed)
    start = 0
    for e, d in zip(enc, dec):
        alone = decoder_batch(d)
        alone["encoder_input_tokens"] = e
        n = d.shape[1]
        np.testing.assert_allclose(packed_logits[:, start:start + n], _logits(cfg, p, alone),
                                   atol=ATOL)
        start += n


# --------------------------------------------------------------------------------------------------
# Dropout, loss and scoring.
# --------------------------------------------------------------------------------------------------

def test_dropout_only_acts_when_enabled():
    cfg = tiny_config("cd", dropout_rate=0.1)
    p = init_params(cfg, jax.random.key(0))
    batch = {k: jnp.asarray(v) for k, v in decoder_batch(np.full((1, 6), 7)).items()}
    train = jax.jit(lambda key: Transformer(cfg, enable_dropout=True).apply(
        {"params": p}, batch, rngs={"dropout": key}))
    assert not np.allclose(train(jax.random.key(1)), train(jax.random.key(2)))
    np.testing.assert_array_equal(_logits(cfg, p, batch), _logits(cfg, p, batch))


def test_cross_entropy_with_z_loss_matches_a_hand_computed_reference():
    rng = np.random.default_rng(8)
    logits = rng.normal(size=(2, 5, 11)).astype(np.float32) * 3
    targets = rng.integers(0, 11, size=(2, 5))
    weights = rng.integers(0, 2, size=(2, 5)).astype(np.float32)
    terms = losses.cross_entropy_with_z_loss(jnp.asarray(logits), jnp.asarray(targets),
                                             jnp.asarray(weights), z_loss=1e-4)
    loss = z = 0.0
    for b in range(2):
        for t in range(5):
            log_z = np.log(np.sum(np.exp(logits[b, t].astype(np.float64))))
            token_z = 1e-4 * log_z ** 2
            loss += weights[b, t] * (log_z - logits[b, t, targets[b, t]] + token_z)
            z += weights[b, t] * token_z
    np.testing.assert_allclose(terms.loss, loss, rtol=1e-5)
    np.testing.assert_allclose(terms.z_loss, z, rtol=1e-5)
    assert terms.weight == weights.sum()


def test_cross_entropy_accuracy_counts_weighted_argmax_hits_and_gradient_is_softmax():
    rng = np.random.default_rng(18)
    logits = rng.normal(size=(3, 6, 13)).astype(np.float32) * 2
    targets = rng.integers(0, 13, size=(3, 6))
    hits = rng.random((3, 6)) < 0.5
    targets[hits] = np.argmax(logits, axis=-1)[hits]  # about half the tokens are argmax hits
    weights = rng.integers(0, 3, size=(3, 6)).astype(np.float32)

    def loss(x):
        return losses.cross_entropy_with_z_loss(x, jnp.asarray(targets), jnp.asarray(weights),
                                                z_loss=1e-4)

    terms = loss(jnp.asarray(logits))
    assert float(terms.correct) == float(np.sum(weights * (np.argmax(logits, -1) == targets)))
    # d/dlogits of w (log Z - logit_t + z log(Z)^2) = w (softmax (1 + 2 z log Z) - onehot(t)).
    log_z = np.log(np.exp(logits.astype(np.float64)).sum(-1, keepdims=True))
    expected = weights[..., None] * (np.exp(logits - log_z) * (1 + 2e-4 * log_z)
                                     - np.eye(13)[targets])
    grad = jax.grad(lambda x: loss(x).loss)(jnp.asarray(logits))
    np.testing.assert_allclose(grad, expected, atol=1e-6)


# Every einsum the model runs (models/layers.py, models/transformer.py), with small operands.
MODEL_EINSUMS = [
    ("bld,dhk->blhk", (2, 5, 8), (8, 2, 4)),       # query, key, value projections
    ("bqhk,bshk->bhqs", (2, 5, 2, 4), (2, 6, 2, 4)),  # attention logits
    ("bhqs,bshk->bqhk", (2, 2, 5, 6), (2, 6, 2, 4)),  # attention context
    ("bqhk,hkd->bqd", (2, 5, 2, 4), (2, 4, 8)),     # attention output
    ("bld,df->blf", (2, 5, 8), (8, 16)),            # MLP in
    ("blf,fd->bld", (2, 5, 16), (16, 8)),           # MLP out
    ("bld,vd->blv", (2, 5, 8), (11, 8)),            # tied head
    ("bld,dv->blv", (2, 5, 8), (8, 11)),            # untied head
]


def _einsum_value_and_grads(spec, x, y, out_dtype, cotangent):
    value, vjp = jax.vjp(lambda a, b: layers.einsum(spec, a, b, out_dtype), x, y)
    return (value, *vjp(cotangent))


@pytest.mark.parametrize("spec,x_shape,y_shape", MODEL_EINSUMS)
def test_einsum_in_float32_is_the_plain_einsum_with_its_plain_gradient(spec, x_shape, y_shape):
    rng = np.random.default_rng(19)
    x, y = (jnp.asarray(rng.normal(size=shape), jnp.float32) for shape in (x_shape, y_shape))
    value, vjp = jax.vjp(lambda a, b: jnp.einsum(spec, a, b), x, y)
    cotangent = jnp.asarray(rng.normal(size=value.shape), jnp.float32)
    ours = jax.jit(_einsum_value_and_grads, static_argnums=(0, 3))(spec, x, y, jnp.float32,
                                                                  cotangent)
    for got, want in zip(ours, (value, *vjp(cotangent))):
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("out_dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("spec,x_shape,y_shape", MODEL_EINSUMS)
def test_einsum_in_bfloat16_accumulates_in_float32_and_rounds_the_cotangent(spec, x_shape, y_shape,
                                                                           out_dtype):
    """bfloat16 operands: the result is the float64 product rounded once to ``out_dtype``; the
    gradients are the float64 products with the cotangent rounded to bfloat16 (t5x's), in
    bfloat16. On CPU this also runs every transposed form XLA:CPU's bfloat16 GEMM must take (a
    form it left to its fallback dot failed to run: models/layers.py ``_lhs_contracted_last``)."""
    rng = np.random.default_rng(20)
    x, y = (jnp.asarray(rng.normal(size=shape), jnp.bfloat16) for shape in (x_shape, y_shape))
    x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
    value = np.einsum(spec, x64, y64)
    cotangent = jnp.asarray(rng.normal(size=value.shape), out_dtype)
    g64 = np.asarray(jnp.asarray(cotangent, jnp.bfloat16), np.float64)
    inputs, output = spec.split("->")
    x_spec, y_spec = inputs.split(",")
    expected = (value, np.einsum(f"{output},{y_spec}->{x_spec}", g64, y64),
                np.einsum(f"{output},{x_spec}->{y_spec}", g64, x64))
    ours = jax.jit(_einsum_value_and_grads, static_argnums=(0, 3))(spec, x, y, jnp.dtype(out_dtype),
                                                                  cotangent)
    for got, want, dtype in zip(ours, expected, (out_dtype, "bfloat16", "bfloat16")):
        assert got.dtype == jnp.dtype(dtype)
        # One rounding to bfloat16 (8 bits): within 2^-8 of the largest entry.
        np.testing.assert_allclose(np.asarray(got, np.float64), want,
                                   atol=np.abs(want).max() * 2.0 ** -8)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_softmax_as_is_softmax_with_the_softmax_gradient(dtype):
    rng = np.random.default_rng(22)
    x = rng.normal(size=(2, 3, 4, 7)).astype(np.float32) * 3
    x[..., -2:] = -1e9  # masked keys, as the attention bias masks them
    cotangent = jnp.asarray(rng.normal(size=x.shape), dtype)
    value, vjp = jax.vjp(lambda a: layers.softmax_as(a, jnp.dtype(dtype)), jnp.asarray(x))
    x64 = x.astype(np.float64)
    p = np.exp(x64 - x64.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    g = np.asarray(cotangent, np.float64)
    assert value.dtype == jnp.dtype(dtype)
    np.testing.assert_allclose(np.asarray(value, np.float64), p,
                               atol=1e-6 if dtype == "float32" else 2.0 ** -8)
    (grad,) = vjp(cotangent)
    assert grad.dtype == jnp.float32
    np.testing.assert_allclose(grad, p * (g - (g * p).sum(-1, keepdims=True)), atol=1e-5)
    assert np.all(np.asarray(grad)[..., -2:] == 0)


def test_einsum_rejects_a_spec_whose_gradient_it_cannot_write_before_running():
    x = jnp.ones((2, 3), jnp.float32)
    with pytest.raises(ValueError, match="indices must be distinct"):
        layers.einsum("ij,jk->k", x, jnp.ones((3, 4)), jnp.float32)


def _dot_operand_dtypes(hlo: str) -> list[tuple[str, str, str]]:
    """(lhs dtype, rhs dtype, result shape) of every dot in an HLO module's text, except the
    float32 sums over leading axes (models/layers.py ``_sum_leading``: results ``[1, n]``)."""
    found = []
    for computation in hlo.split("\n\n"):
        dtypes = dict(re.findall(r"%([\w.\-]+) = (\w+)\[", computation))
        for line in computation.splitlines():
            match = re.search(r"= \w+(\[[\d,]*\])\S* dot\(%([\w.\-]+), %([\w.\-]+)\)", line)
            if match and not match[1].startswith("[1,"):
                found.append((dtypes.get(match[2]), dtypes.get(match[3]), match[1]))
    return found


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's dot lowering")
@pytest.mark.parametrize("arch", ["cd", "ed"])
def test_bfloat16_training_step_runs_every_matmul_on_bfloat16_operands(arch):
    """What the einsum helper is for: no matmul of a bfloat16 model's gradient step is left to
    XLA:CPU's float32 dot (half the speed of its bfloat16 GEMM)."""
    cfg = preset("tiny", arch)  # bfloat16 compute
    rng = np.random.default_rng(21)
    batch = decoder_batch(random_tokens(rng, (2, 12)))
    if arch == "ed":
        batch["encoder_input_tokens"] = random_tokens(rng, (2, 8))
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    model, params = Transformer(cfg), init_params(cfg, jax.random.key(0))

    def loss(p):
        return losses.cross_entropy_with_z_loss(model.apply({"params": p}, batch),
                                                batch["decoder_target_tokens"],
                                                batch["decoder_loss_weights"]).loss

    with jax.default_matmul_precision("default"):  # the suite's "highest" is a test setting
        hlo = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
    dots = _dot_operand_dtypes(hlo)
    assert len(dots) >= 20  # forward and backward of every projection, attention and the head
    assert [d for d in dots if d[:2] != ("bf16", "bf16")] == []


def test_score_targets_sums_log_probs_of_weighted_tokens():
    rng = np.random.default_rng(9)
    logits = rng.normal(size=(3, 4, 7)).astype(np.float32)
    targets = np.argmax(logits, axis=-1)
    targets[1, 2] = (targets[1, 2] + 1) % 7  # row 1 is not greedy at a weighted position
    weights = np.array([[0, 1, 1, 1], [0, 0, 1, 1], [1, 0, 0, 0]], np.float32)
    ll, greedy = losses.score_targets(jnp.asarray(logits), jnp.asarray(targets),
                                      jnp.asarray(weights))
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = [sum(log_probs[b, t, targets[b, t]] for t in range(4) if weights[b, t])
                for b in range(3)]
    np.testing.assert_allclose(ll, expected, rtol=1e-5)
    assert list(np.asarray(greedy)) == [True, False, True]


@pytest.mark.parametrize("arch", ["cd", "nd", "ed"])
def test_tiny_model_overfits_one_batch(arch):
    cfg = tiny_config(arch)
    rng = np.random.default_rng(10)
    batch = decoder_batch(random_tokens(rng, (4, 12)), [4] * 4 if arch == "nd" else None)
    if arch == "ed":
        batch["encoder_input_tokens"] = random_tokens(rng, (4, 8))
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    model, params = Transformer(cfg), init_params(cfg, jax.random.key(0))
    optimizer = optax.adam(1e-2)

    @jax.jit
    def step(params, opt_state):
        def loss_fn(p):
            terms = losses.cross_entropy_with_z_loss(
                model.apply({"params": p}, batch), batch["decoder_target_tokens"],
                batch["decoder_loss_weights"])
            return terms.loss / terms.weight
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = optimizer.init(params)
    first = None
    for _ in range(200):
        params, opt_state, loss = step(params, opt_state)
        first = float(loss) if first is None else first
    assert first > 4.0  # about log(128) at initialisation
    assert float(loss) < 0.2, f"{arch}: loss {first:.2f} -> {float(loss):.3f}"


@pytest.mark.parametrize("policy", ["full", "minimal"])
def test_remat_policies_leave_the_gradient_unchanged(params, policy):
    batch = {k: jnp.asarray(v) for k, v in decoder_batch(
        random_tokens(np.random.default_rng(11), (2, 10)), [3, 3]).items()}

    def grads(config):
        def loss_fn(p):
            terms = losses.cross_entropy_with_z_loss(Transformer(config).apply({"params": p}, batch),
                                                     batch["decoder_target_tokens"],
                                                     batch["decoder_loss_weights"])
            return terms.loss
        return jax.jit(jax.grad(loss_fn))(params["nd"])

    reference, rematerialised = grads(tiny_config("nd")), grads(tiny_config("nd", remat_policy=policy))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), reference, rematerialised)


def test_minimal_remat_saves_the_weight_matmuls(params):
    """``remat_policy="minimal"`` recomputes attention but not the weight matmuls: its backward
    costs less than ``"full"``'s, which recomputes the whole forward pass (XLA's own FLOP count of
    the compiled gradient). A policy that cannot see the model's matmuls (all of them go through
    ``layers.einsum``'s custom VJP) recomputes everything and costs what ``"full"`` costs."""
    batch = {k: jnp.asarray(v) for k, v in decoder_batch(
        random_tokens(np.random.default_rng(11), (2, 10)), [3, 3]).items()}

    def flops(policy):
        model = Transformer(tiny_config("nd", remat_policy=policy))

        def loss_fn(p):
            terms = losses.cross_entropy_with_z_loss(model.apply({"params": p}, batch),
                                                     batch["decoder_target_tokens"],
                                                     batch["decoder_loss_weights"])
            return terms.loss
        compiled = jax.jit(jax.grad(loss_fn)).lower(params["nd"]).compile()
        analysis = compiled.cost_analysis()
        return (analysis[0] if isinstance(analysis, list) else analysis)["flops"]

    none, minimal, full = flops("none"), flops("minimal"), flops("full")
    assert full > 1.1 * none, (none, full)
    assert minimal < none + 0.5 * (full - none), (none, minimal, full)


# --------------------------------------------------------------------------------------------------
# Attention implementations: the same function, computed another way.
# --------------------------------------------------------------------------------------------------

def _padded_packed_batch(arch: str) -> dict[str, jnp.ndarray]:
    """Two rows: two packed segments, and one short example followed by padding."""
    rng = np.random.default_rng(12)
    targets = random_tokens(rng, (2, 12))
    targets[1, 7:] = 0
    segments = np.array([[1] * 5 + [2] * 7, [1] * 7 + [0] * 5], np.int32)
    batch = decoder_batch(targets, segment_ids=segments)
    if arch == "nd":
        batch["decoder_causal_attention"] = np.array(
            [[1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0] + [0] * 5], np.int32)
    if arch == "ed":
        inputs = random_tokens(rng, (2, 9))
        inputs[1, 6:] = 0
        batch.update(encoder_input_tokens=inputs, encoder_segment_ids=np.array(
            [[1] * 4 + [2] * 5, [1] * 6 + [0] * 3], np.int32))
    return {k: jnp.asarray(v) for k, v in batch.items()}


@pytest.mark.parametrize("arch", ["nd", "ed"])
def test_fused_attention_path_gives_the_einsum_paths_loss_and_gradient(params, arch):
    """``attention_impl="xla"`` runs ``jax.nn.dot_product_attention``, the call ``"cudnn"`` makes
    on a GPU (harness/bench/attention_check.py compares cuDNN there): with padding, packing, the
    prefix mask (nd), the causal flag (ed's decoder, as cd's) and cross-attention (ed), it must
    give the einsum path's loss and gradient."""
    batch = _padded_packed_batch(arch)

    def loss_and_grad(config):
        def loss_fn(p):
            return losses.cross_entropy_with_z_loss(
                Transformer(config).apply({"params": p}, batch), batch["decoder_target_tokens"],
                batch["decoder_loss_weights"]).loss
        return jax.jit(jax.value_and_grad(loss_fn))(params[arch])

    (loss, grad), (fused_loss, fused_grad) = (
        loss_and_grad(tiny_config(arch)), loss_and_grad(tiny_config(arch, attention_impl="xla")))
    np.testing.assert_allclose(fused_loss, loss, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), grad, fused_grad)


def test_fused_attention_falls_back_to_einsum_for_dropout_and_rejects_unknown_names(params):
    batch = _padded_packed_batch("cd")
    rngs = {"dropout": jax.random.key(3)}

    def dropped(config):
        return Transformer(config, enable_dropout=True).apply({"params": params["cd"]}, batch,
                                                              rngs=rngs)

    np.testing.assert_array_equal(
        dropped(tiny_config("cd", dropout_rate=0.1, attention_impl="xla")),
        dropped(tiny_config("cd", dropout_rate=0.1)))
    with pytest.raises(ValueError, match="attention_impl='flash'"):
        tiny_config("cd", attention_impl="flash")
