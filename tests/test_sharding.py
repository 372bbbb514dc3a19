"""Sharding on 8 emulated CPU devices: a (4, 2) mesh gives the single-device forward and gradient,
and every parameter lands where the rules table says."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec as P

from helpers import decoder_batch, random_tokens, tiny_config
from models import losses, sharding
from models.transformer import Transformer, init_fn, init_params


def _loss(model):
    def loss_fn(params, batch):
        logits = model.apply({"params": params}, batch)
        terms = losses.cross_entropy_with_z_loss(logits, batch["decoder_target_tokens"],
                                                 batch["decoder_loss_weights"])
        return terms.loss / terms.weight, logits
    return loss_fn


def _batch(arch):
    rng = np.random.default_rng(0)
    batch = decoder_batch(random_tokens(rng, (8, 16)), [5] * 8 if arch == "nd" else None)
    if arch == "ed":
        batch["encoder_input_tokens"] = random_tokens(rng, (8, 12))
    return batch


def test_eight_emulated_devices():
    assert jax.device_count() == 8


@pytest.mark.parametrize("arch", ["cd", "nd", "ed"])
def test_sharded_forward_and_gradient_equal_single_device(arch):
    config = tiny_config(arch)
    model = Transformer(config)
    batch = _batch(arch)
    step = jax.value_and_grad(_loss(model), has_aux=True)

    # Reference: one device, no mesh.
    params = init_params(config, jax.random.key(0))
    (loss, logits), grads = jax.jit(step)(params, batch)

    mesh = sharding.make_mesh(4, 2)
    with sharding.mesh_context(mesh):
        sharded_params, shardings = sharding.init_sharded(init_fn(config), jax.random.key(0), mesh)
        sharded_params, param_shardings = sharded_params["params"], shardings["params"]
        batch_sharding = NamedSharding(mesh, P(sharding.DATA))
        sharded_batch = jax.device_put(batch, batch_sharding)
        (s_loss, s_logits), s_grads = jax.jit(
            step, in_shardings=(param_shardings, batch_sharding),
            out_shardings=((None, None), param_shardings))(sharded_params, sharded_batch)

    # Same initial values whether created sharded or not.
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 params, sharded_params)
    np.testing.assert_allclose(s_loss, loss, atol=1e-5)
    np.testing.assert_allclose(np.asarray(s_logits), np.asarray(logits), atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5),
                 s_grads, grads)
    # Gradients really were sharded per the rules.
    query = s_grads["decoder"]["layers"]["self_attention"]["query"]
    assert query.sharding.spec == P(None, None, sharding.MODEL, None)


def test_parameter_shardings_follow_the_rules_table():
    config = tiny_config("ed", tie_embeddings=False)
    mesh = sharding.make_mesh(4, 2)
    abstract = jax.eval_shape(init_fn(config), jax.random.key(0))
    specs = traverse_util.flatten_dict(
        {k: v.spec for k, v in traverse_util.flatten_dict(
            sharding.logical_to_shardings(abstract, mesh)["params"], sep="/").items()}, sep="/")
    model, rep = sharding.MODEL, None
    expected = {
        "token_embedder/embedding": P(model, rep),                      # vocab, embed
        "logits_dense/kernel": P(rep, model),                            # embed, vocab
        "encoder/relpos_bias/rel_embedding": P(model, rep),              # heads, buckets
        "encoder/final_norm/scale": P(rep),
        "encoder/layers/self_attention/query": P(rep, rep, model, rep),  # layers, embed, heads, kv
        "encoder/layers/self_attention/out": P(rep, model, rep, rep),    # layers, heads, kv, embed
        "encoder/layers/mlp/wi_0": P(rep, rep, model),                   # layers, embed, mlp
        "encoder/layers/mlp/wo": P(rep, model, rep),                     # layers, mlp, embed
        "encoder/layers/pre_mlp_norm/scale": P(rep, rep),
        "decoder/layers/cross_attention/key": P(rep, rep, model, rep),
    }
    for path, spec in expected.items():
        assert specs[path] == spec, path


def test_make_mesh_rejects_impossible_shapes():
    with pytest.raises(ValueError, match="model=3"):
        sharding.make_mesh(-1, 3)
    with pytest.raises(ValueError, match=r"needs 16 devices; 8 are available"):
        sharding.make_mesh(8, 2)
