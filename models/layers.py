"""Building blocks of the T5.1.1-style Transformer (PAPER.md 2.1).

Pre-norm RMSNorm, GEGLU MLP, no biases anywhere, T5 relative position bias, attention without the
1/sqrt(head_dim) logit scale (T5 folds it into the query initialiser, which is equivalent under
Adafactor). Parameters are stored in ``param_dtype`` and cast to ``dtype`` for compute; norms, softmax
and logits are computed in float32.

Parameter names and shapes follow t5x (``query/kernel [embed, heads, kv]``, ``mlp/wi_0/kernel``, ...),
so the tree reads like a t5x checkpoint. The tree is a checkpoint format: ``tests/test_model.py``
asserts it.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
import numpy as np
from flax import linen as nn

from models import sharding as shd
from models.config import ModelConfig
from models.masks import mask_to_bias

Array = jax.Array
KVCache = dict[str, Array]  # {"key": [batch, slots, heads, kv], "value": same}


def _param(module: nn.Module, name: str, init: Any, shape: tuple[int, ...],
           axes: tuple[str, ...], dtype: jnp.dtype) -> Array:
    """A parameter annotated with its logical axis names."""
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


def _kernel_init(scale: float, fan_in_axes: tuple[int, ...], fan_out_axes: tuple[int, ...]):
    """T5's ``variance_scaling(scale, 'fan_in', 'truncated_normal')`` over multi-axis kernels."""
    return nn.initializers.variance_scaling(
        scale, "fan_in", "truncated_normal", in_axis=fan_in_axes, out_axis=fan_out_axes)


def _dropout(x: Array, rate: float, enabled: bool, broadcast_dims: tuple[int, ...] = ()) -> Array:
    if not enabled or rate == 0.0:
        return x
    return nn.Dropout(rate=rate, broadcast_dims=broadcast_dims, deterministic=False)(x)


# -------------------------------------------------------------------------------------------------
# Sums over leading axes as matmuls. A parameter shared by every position (a norm scale, the
# position bias shared by every row) gets a gradient summed over the batch and length axes.
# XLA:CPU (jaxlib 0.10, whose YNNPACK fusions take the reduce) sums over leading axes 7-100x slower
# than the equal matmul with a vector of ones: 30 ms vs 0.3 ms for [16, 4, 128, 128] float32 on 2
# cores, 1.7 ms vs 0.24 ms for a norm scale's [16, 128, 128]. The two custom gradients below are
# the same sums, added in another order (float32 accumulation, as XLA's reduce); their forward
# passes are unchanged.
# harness/bench/tiny_bench.py measures what they buy.
# -------------------------------------------------------------------------------------------------

def _sum_leading(x: Array, axes: int, dtype: jnp.dtype) -> Array:
    """Sum of ``x`` over its first ``axes`` axes, as ``ones @ x`` with float32 accumulation
    (``HIGHEST``: a TPU's default precision would round float32 operands to bfloat16)."""
    rows = x.reshape((-1,) + x.shape[axes:])
    ones = jnp.ones((rows.shape[0],), x.dtype)
    return jnp.einsum("n,n...->...", ones, rows, preferred_element_type=jnp.float32,
                      precision=jax.lax.Precision.HIGHEST).astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def broadcast_batch(x: Array, batch: int) -> Array:
    """``x [1, ...]`` -> ``[batch, ...]``; the gradient sums over the batch with a matmul."""
    return jnp.broadcast_to(x, (batch,) + x.shape[1:])


def _broadcast_batch_fwd(x: Array, batch: int) -> tuple[Array, None]:
    return broadcast_batch(x, batch), None


def _broadcast_batch_bwd(batch: int, _: None, grad: Array) -> tuple[Array]:
    return (_sum_leading(grad, 1, grad.dtype)[None],)


broadcast_batch.defvjp(_broadcast_batch_fwd, _broadcast_batch_bwd)


@jax.custom_vjp
def scale_features(x: Array, scale: Array) -> Array:
    """``x [..., d] * scale [d]``; the gradient of ``scale`` sums over positions with a matmul."""
    return x * scale


def _scale_features_fwd(x: Array, scale: Array) -> tuple[Array, tuple[Array, Array]]:
    return x * scale, (x, scale)


def _scale_features_bwd(residuals: tuple[Array, Array], grad: Array) -> tuple[Array, Array]:
    x, scale = residuals
    # grad * x rounds in the compute dtype, as the product in the plain gradient does.
    return grad * scale, _sum_leading(grad * x, grad.ndim - 1, scale.dtype)


scale_features.defvjp(_scale_features_fwd, _scale_features_bwd)


# -------------------------------------------------------------------------------------------------
# Every matmul of the model, forward and backward, as bfloat16 (the compute dtype) operands with a
# float32 result. XLA:CPU (jaxlib 0.10) runs a dot whose result is bfloat16 as a float32 dot, its
# operands converted up: 0.31-0.40 TFLOP/s on 2 AVX-512 BF16 cores, where bfloat16 operands with a
# float32 result run on the bfloat16 GEMM at 0.68-0.97 (squares of 1024-4096). Autodiff would also
# carry the float32 cotangent of a float32 result (the output and attention logits) into float32
# backward matmuls. ``einsum`` asks for the float32 result on CPU and casts it to ``out_dtype``; its
# backward rounds the cotangent to the operands' dtype, as t5x's bfloat16 logits have it, and runs
# the two gradient products the same way. The small preset's training step: 1.58-1.66x faster
# (archobj bench train, README "Performance"). On other backends a bfloat16 result is the dot's own output (a
# GPU's GEMMs take it natively); float32 operands give the plain einsum and its plain gradient.
# -------------------------------------------------------------------------------------------------

def _dot(spec: str, x: Array, y: Array, out_dtype: jnp.dtype) -> Array:
    on_cpu = jax.default_backend() == "cpu"
    if on_cpu and jnp.result_type(x, y) != jnp.float32:
        spec, x, y = _gemm_form(spec, x, y)
    wide = out_dtype == jnp.float32 or on_cpu
    result = jnp.einsum(spec, x, y, preferred_element_type=jnp.float32 if wide else out_dtype)
    return result.astype(out_dtype)


def _gemm_form(spec: str, x: Array, y: Array) -> tuple[str, Array, Array]:
    """The same product as a row-major GEMM: the left operand is the one whose free indices lead
    in the output, transposed to [batch, free, contracted] indices.

    XLA:CPU's bfloat16 GEMM does not take every layout. Attention's value gradient written
    ``"bqhk,bhqs->bshk"`` went to its fallback dot, which has no bfloat16 x bfloat16 -> float32
    kernel (an error when run); ``"bhkq,bhqs->bshk"`` was converted to a float32 dot at the tiny
    grid's shapes; ``"bhsq,bqhk->bshk"`` runs on the GEMM at every shape tried
    (tests/test_model.py checks a training step's dots).
    """
    inputs, output = spec.split("->")
    lhs, rhs = inputs.split(",")

    def first_free(operand: str, other: str) -> int:
        return min((output.index(i) for i in operand if i not in other and i in output),
                   default=len(output))

    if first_free(rhs, lhs) < first_free(lhs, rhs):
        lhs, rhs, x, y = rhs, lhs, y, x
    order = ([i for i in lhs if i in rhs and i in output] + [i for i in lhs if i not in rhs]
             + [i for i in lhs if i in rhs and i not in output])
    canonical = "".join(order)
    if canonical != lhs:
        x = jnp.transpose(x, [lhs.index(i) for i in order])
    return f"{canonical},{rhs}->{output}", x, y


def _transposed_specs(spec: str) -> tuple[str, str]:
    """``"x,y->z"`` -> the specs of its two gradients, ``"z,y->x"`` and ``"z,x->y"``."""
    inputs, output = spec.split("->")
    x, y = inputs.split(",")
    for operand, other in ((x, y), (y, x)):
        if len(set(operand)) != len(operand) or not set(operand) <= set(output) | set(other):
            raise ValueError(f"einsum spec {spec!r}: each operand's indices must be distinct and "
                             "appear in the output or the other operand")
    return f"{output},{y}->{x}", f"{output},{x}->{y}"


# The name ``remat_policy="minimal"`` saves: the result of every product without batch
# indices (the weight matmuls), what ``jax.checkpoint_policies.dots_with_no_batch_dims_saveable``
# saves of plain dots. That policy cannot see a dot inside a custom VJP, so it saved nothing here.
WEIGHT_MATMUL = "weight_matmul"


def einsum(spec: str, x: Array, y: Array, out_dtype: Any) -> Array:
    """``jnp.einsum(spec, x, y)`` for two operands of one dtype, accumulated in float32 and returned
    as ``out_dtype``; its backward matmuls take the cotangent in the operands' dtype (module note
    above). A product without batch indices (an index of both operands and the output) is named
    ``WEIGHT_MATMUL`` for rematerialisation policies."""
    _transposed_specs(spec)  # a spec whose gradient cannot be written fails here, not in backward
    result = _einsum(spec, x, y, out_dtype)
    inputs, output = spec.split("->")
    lhs, rhs = inputs.split(",")
    if not set(lhs) & set(rhs) & set(output):
        result = checkpoint_name(result, WEIGHT_MATMUL)
    return result


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def _einsum(spec: str, x: Array, y: Array, out_dtype: Any) -> Array:
    return _dot(spec, x, y, jnp.dtype(out_dtype))


def _einsum_fwd(spec: str, x: Array, y: Array, out_dtype: Any) -> tuple[Array, tuple[Array, Array]]:
    return _einsum(spec, x, y, out_dtype), (x, y)


def _einsum_bwd(spec: str, out_dtype: Any, residuals: tuple[Array, Array],
                grad: Array) -> tuple[Array, Array]:
    x, y = residuals
    grad = grad.astype(jnp.result_type(x, y))
    x_spec, y_spec = _transposed_specs(spec)
    return _dot(x_spec, grad, y, x.dtype), _dot(y_spec, grad, x, y.dtype)


_einsum.defvjp(_einsum_fwd, _einsum_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def softmax_as(x: Array, dtype: Any) -> Array:
    """``jax.nn.softmax(x, axis=-1)`` in float32, returned as ``dtype``, with the textbook gradient
    ``p * (g - sum(g * p))`` from the saved float32 probabilities. Autodiff of jax.nn.softmax goes
    through its ``exp / sum`` and read two [b, h, q, k] float32 residuals per layer; this reads the
    probabilities once: the small preset's step 1.12x (CD), 1.17x (ND) faster on 2 CPU cores
    (archobj bench train)."""
    return jax.nn.softmax(x.astype(jnp.float32), axis=-1).astype(dtype)


def _softmax_as_fwd(x: Array, dtype: Any) -> tuple[Array, tuple[Array, Array]]:
    probs = jax.nn.softmax(x.astype(jnp.float32), axis=-1)
    return probs.astype(dtype), (probs, jnp.zeros((0,), x.dtype))  # the second: x's dtype


def _softmax_as_bwd(dtype: Any, residuals: tuple[Array, Array], grad: Array) -> tuple[Array]:
    probs, x_dtype = residuals
    grad = grad.astype(jnp.float32)
    return ((probs * (grad - jnp.sum(grad * probs, axis=-1, keepdims=True))).astype(x_dtype.dtype),)


softmax_as.defvjp(_softmax_as_fwd, _softmax_as_bwd)


class RMSNorm(nn.Module):
    """T5 "LayerNorm": root-mean-square normalisation with a learned scale, no mean, no bias."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        scale = _param(self, "scale", nn.initializers.ones, (x.shape[-1],), (shd.EMBED,),
                       jnp.dtype(cfg.param_dtype))
        x = x.astype(jnp.float32)
        variance = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
        y = (x * jax.lax.rsqrt(variance + cfg.layer_norm_epsilon)).astype(cfg.dtype)
        return scale_features(y, scale.astype(cfg.dtype))


class Embed(nn.Module):
    """Token embedding; ``attend`` gives the tied output projection."""

    config: ModelConfig

    def setup(self) -> None:
        cfg = self.config
        self.embedding = _param(self, "embedding", nn.initializers.normal(stddev=1.0),
                                (cfg.vocab_size, cfg.d_model), (shd.VOCAB, shd.EMBED),
                                jnp.dtype(cfg.param_dtype))

    def __call__(self, tokens: Array) -> Array:
        """``[batch, length]`` ids -> ``[batch, length, d_model]`` in the compute dtype."""
        x = jnp.take(self.embedding.astype(self.config.dtype), tokens, axis=0)
        return nn.with_logical_constraint(x, (shd.BATCH, shd.LENGTH, shd.EMBED))

    def attend(self, x: Array) -> Array:
        """``[batch, length, d_model]`` -> float32 logits ``[batch, length, vocab]``."""
        embedding = self.embedding.astype(self.config.dtype)
        return einsum("bld,vd->blv", x, embedding, jnp.float32)


def relative_position_buckets(relative_position: Array, bidirectional: bool, num_buckets: int,
                              max_distance: int) -> Array:
    """T5's bucketing of ``key_position - query_position`` into ``num_buckets`` ids.

    Half the buckets (a quarter when bidirectional, per direction) hold exact small distances; the
    rest are log-spaced up to ``max_distance``, beyond which distances share the last bucket. With
    ``bidirectional=False`` every key to the right of the query lands in bucket 0, as distance 0 does.
    The arithmetic is the original T5's (float32 log, truncation toward zero), which is what the
    released checkpoints were trained with.
    """
    buckets = jnp.zeros_like(relative_position)
    n = -relative_position
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (n < 0).astype(relative_position.dtype) * num_buckets
        n = jnp.abs(n)
    else:
        n = jnp.maximum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    # Clip before the log so that n = 0 (masked by is_small anyway) does not produce -inf.
    scaled = (jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact)
              / np.log(max_distance / max_exact) * (num_buckets - max_exact))
    large = jnp.minimum(max_exact + scaled.astype(relative_position.dtype), num_buckets - 1)
    return buckets + jnp.where(is_small, n, large)


class RelativePositionBias(nn.Module):
    """Learned per-head scalar bias indexed by relative-position bucket."""

    config: ModelConfig

    @nn.compact
    def __call__(self, bucket_ids: Array) -> Array:
        """``[batch or 1, q, k]`` bucket ids -> ``[batch or 1, heads, q, k]`` float32 bias."""
        cfg = self.config
        table = _param(self, "rel_embedding",
                       nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
                       (cfg.num_heads, cfg.relpos_num_buckets), (shd.HEADS, shd.RELPOS_BUCKETS),
                       jnp.dtype(cfg.param_dtype))
        bias = jnp.take(table.astype(jnp.float32), bucket_ids, axis=1)  # [heads, b, q, k]
        return jnp.transpose(bias, (1, 0, 2, 3))


def add_position_bias(bias: Array, position_bias: Array) -> Array:
    """``bias [b, 1 or heads, q, k] + position_bias [1 or b, heads, q, k]`` (float32)."""
    if position_bias.shape[0] == 1 and bias.shape[0] > 1:
        position_bias = broadcast_batch(position_bias, bias.shape[0])
    return bias + position_bias


def _write_cache(cache: Array, chunk: Array, offsets: Array) -> Array:
    """Writes ``chunk [b, q, ...]`` into ``cache [b, slots, ...]`` at per-example slot ``offsets``."""
    def write_one(c: Array, x: Array, offset: Array) -> Array:
        start = (offset,) + (0,) * (c.ndim - 1)
        return jax.lax.dynamic_update_slice(c, x.astype(c.dtype), start)
    return jax.vmap(write_one)(cache, chunk, offsets)


class Attention(nn.Module):
    """Multi-head dot-product attention without biases, with an optional KV cache.

    Self-attention with a cache writes this call's keys and values into the cache at
    ``cache_offsets`` and attends over every cache slot (the mask hides unwritten ones). Cross-attention
    with a cache computes the encoder's keys and values once, when ``inputs_kv`` is given, and reads
    them from the cache when it is None.

    ``causal``: the mask in ``bias`` never lets a query see a later key (the causal decoder and the
    encoder-decoder's decoder). The fused implementations (``config.attention_impl``) then skip
    the blocks above the diagonal; the result is the same.
    """

    config: ModelConfig
    enable_dropout: bool = False
    causal: bool = False

    @nn.compact
    def __call__(self, inputs_q: Array, inputs_kv: Optional[Array], bias: Array,
                 cache: Optional[KVCache] = None,
                 cache_offsets: Optional[Array] = None) -> tuple[Array, Optional[KVCache]]:
        """Attends from ``inputs_q [b, q, d]`` to ``inputs_kv [b, k, d]``.

        Args:
          inputs_q: queries' inputs.
          inputs_kv: keys'/values' inputs; None only for cross-attention reading its cache.
          bias: additive float32 logit bias broadcastable to ``[b, heads, q, k]`` (mask + position).
          cache: this layer's cache, or None.
          cache_offsets: ``[b]`` slot at which this call's keys start (self-attention cache only).

        Returns:
          ``(output [b, q, d], updated cache or None)``.
        """
        cfg = self.config
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        qkv_shape = (cfg.d_model, cfg.num_heads, cfg.head_dim)
        qkv_axes = (shd.EMBED, shd.HEADS, shd.KV)
        # T5 folds 1/sqrt(head_dim) into the query initialiser instead of scaling the logits.
        query_init = _kernel_init(1.0 / cfg.head_dim, (0,), (1, 2))
        kernel_init = _kernel_init(1.0, (0,), (1, 2))
        w_query = _param(self, "query", query_init, qkv_shape, qkv_axes, param_dtype)
        w_key = _param(self, "key", kernel_init, qkv_shape, qkv_axes, param_dtype)
        w_value = _param(self, "value", kernel_init, qkv_shape, qkv_axes, param_dtype)
        w_out = _param(self, "out", _kernel_init(1.0, (0, 1), (2,)),
                       (cfg.num_heads, cfg.head_dim, cfg.d_model), (shd.HEADS, shd.KV, shd.EMBED),
                       param_dtype)

        def project(x: Array, w: Array) -> Array:
            y = einsum("bld,dhk->blhk", x, w.astype(dtype), dtype)
            return nn.with_logical_constraint(y, (shd.BATCH, shd.LENGTH, shd.HEADS, shd.KV))

        query = project(inputs_q, w_query)
        if inputs_kv is not None:
            key, value = project(inputs_kv, w_key), project(inputs_kv, w_value)
        new_cache = None
        if cache is not None:
            if cache_offsets is not None:  # self-attention: append this chunk, read everything
                key = _write_cache(cache["key"], key, cache_offsets)
                value = _write_cache(cache["value"], value, cache_offsets)
            elif inputs_kv is None:  # cross-attention after the first step
                key, value = cache["key"], cache["value"]
            new_cache = {"key": key.astype(cache["key"].dtype),
                         "value": value.astype(cache["value"].dtype)}
            key, value = key.astype(dtype), value.astype(dtype)

        dropout = self.enable_dropout and cfg.dropout_rate > 0.0
        if cfg.attention_impl != "einsum" and cache is None and not dropout:
            # T5 does not scale the logits (scale=1). Full [b, heads, q, k] bias: cuDNN's
            # broadcasting of a bias with a size-1 batch or heads axis is not relied on.
            full = (query.shape[0], query.shape[2], query.shape[1], key.shape[1])
            context = jax.nn.dot_product_attention(
                query, key, value, bias=jnp.broadcast_to(bias, full).astype(dtype), scale=1.0,
                is_causal=self.causal, implementation=cfg.attention_impl)
        else:
            logits = einsum("bqhk,bshk->bhqs", query, key, jnp.float32)
            weights = softmax_as(logits + bias, dtype)
            weights = _dropout(weights, cfg.dropout_rate, self.enable_dropout)
            context = einsum("bhqs,bshk->bqhk", weights, value, dtype)
        out = einsum("bqhk,hkd->bqd", context, w_out.astype(dtype), dtype)
        return out, new_cache


class MLP(nn.Module):
    """GEGLU feed-forward: ``wo(gelu(x wi_0) * (x wi_1))`` (t5x ``mlp_activations=('gelu','linear')``)."""

    config: ModelConfig
    enable_dropout: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        init_in = _kernel_init(1.0, (0,), (1,))
        w_gate = _param(self, "wi_0", init_in, (cfg.d_model, cfg.d_ff), (shd.EMBED, shd.MLP),
                        param_dtype)
        w_linear = _param(self, "wi_1", init_in, (cfg.d_model, cfg.d_ff), (shd.EMBED, shd.MLP),
                          param_dtype)
        w_out = _param(self, "wo", _kernel_init(1.0, (0,), (1,)), (cfg.d_ff, cfg.d_model),
                       (shd.MLP, shd.EMBED), param_dtype)
        gate = einsum("bld,df->blf", x, w_gate.astype(dtype), dtype)
        linear = einsum("bld,df->blf", x, w_linear.astype(dtype), dtype)
        hidden = nn.gelu(gate, approximate=True) * linear
        hidden = nn.with_logical_constraint(hidden, (shd.BATCH, shd.LENGTH, shd.MLP))
        hidden = _dropout(hidden, cfg.dropout_rate, self.enable_dropout, broadcast_dims=(-2,))
        return einsum("blf,fd->bld", hidden, w_out.astype(dtype), dtype)


class Block(nn.Module):
    """One pre-norm layer: self-attention, optional cross-attention, MLP, each on a residual branch.

    The same block serves the decoder-only stack, the encoder and the encoder-decoder's decoder; the
    architecture changes only the masks it is given and whether ``cross_attention`` is on.

    ``own_position_bias``: the decoder-only models of the study keep one relative-position table per
    layer (PAPER.md 2.1, AO ``decoder_only/network.py``); the T5 encoder-decoder shares one table per
    stack, which the stack adds to ``self_bias`` before the layers.
    """

    config: ModelConfig
    cross_attention: bool = False
    own_position_bias: bool = False
    enable_dropout: bool = False
    causal: bool = False

    @nn.compact
    def __call__(self, x: Array, self_bias: Array, bucket_ids: Optional[Array],
                 encoded: Optional[Array], cross_bias: Optional[Array],
                 cache: Optional[dict[str, KVCache]], cache_offsets: Optional[Array],
                 ) -> tuple[Array, Optional[dict[str, KVCache]]]:
        """``x [b, q, d]`` -> ``(x [b, q, d], updated cache)``; the scan's carry and per-layer output."""
        cfg, drop = self.config, self.enable_dropout
        # Dropout on residual branches is shared along the length axis, as in t5x.
        residual_dropout = functools.partial(_dropout, rate=cfg.dropout_rate, enabled=drop,
                                             broadcast_dims=(-2,))
        if self.own_position_bias:
            self_bias = add_position_bias(
                self_bias, RelativePositionBias(cfg, name="relpos_bias")(bucket_ids))
        new_cache: dict[str, KVCache] = {}

        h = RMSNorm(cfg, name="pre_self_attention_norm")(x)
        h, new_cache["self"] = Attention(cfg, drop, self.causal, name="self_attention")(
            h, h, self_bias, None if cache is None else cache["self"], cache_offsets)
        x = x + residual_dropout(h)

        if self.cross_attention:
            h = RMSNorm(cfg, name="pre_cross_attention_norm")(x)
            h, new_cache["cross"] = Attention(cfg, drop, name="cross_attention")(
                h, encoded, cross_bias, None if cache is None else cache["cross"], None)
            x = x + residual_dropout(h)

        h = RMSNorm(cfg, name="pre_mlp_norm")(x)
        x = x + residual_dropout(MLP(cfg, drop, name="mlp")(h))
        x = nn.with_logical_constraint(x, (shd.BATCH, shd.LENGTH, shd.EMBED))
        return x, (new_cache if cache is not None else None)


_REMAT_POLICIES = {
    "full": None,  # save nothing
    "minimal": jax.checkpoint_policies.save_only_these_names(WEIGHT_MATMUL),  # see ``einsum``
}


class Stack(nn.Module):
    """``num_layers`` blocks scanned over a leading ``layers`` axis, then a final RMSNorm.

    Layers are always scanned (``nn.scan``): compile time does not grow with depth, and the
    parameter tree has one entry per weight with a leading layer axis (the checkpoint format).
    ``config.scan_unroll`` unrolls the scan (small models) without changing that tree.
    """

    config: ModelConfig
    num_layers: int
    cross_attention: bool = False
    per_layer_position_bias: bool = False
    enable_dropout: bool = False
    causal: bool = False

    @nn.compact
    def __call__(self, x: Array, self_mask: Array, bucket_ids: Array,
                 encoded: Optional[Array] = None, cross_mask: Optional[Array] = None,
                 cache: Optional[dict[str, KVCache]] = None,
                 cache_offsets: Optional[Array] = None,
                 ) -> tuple[Array, Optional[dict[str, KVCache]]]:
        """Runs the stack.

        Args:
          x: embedded inputs ``[b, q, d]``.
          self_mask: ``[b, 1, q, k]`` boolean self-attention mask.
          bucket_ids: ``[b or 1, q, k]`` relative-position bucket ids.
          encoded: encoder output ``[b, s, d]`` for cross-attention (None to read the cache).
          cross_mask: ``[b, 1, q, s]`` boolean cross-attention mask.
          cache: stacked per-layer caches (leading ``layers`` axis), or None.
          cache_offsets: ``[b]`` cache slot of the first query.

        Returns:
          ``(normalised output [b, q, d], updated cache or None)``.
        """
        cfg = self.config
        self_bias = mask_to_bias(self_mask)
        if not self.per_layer_position_bias:
            self_bias = add_position_bias(
                self_bias, RelativePositionBias(cfg, name="relpos_bias")(bucket_ids))
            bucket_ids = None
        cross_bias = None if cross_mask is None else mask_to_bias(cross_mask)

        block = Block
        if cfg.remat_policy != "none":
            block = nn.remat(Block, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=False)
        layers = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, 0, nn.broadcast),
            length=self.num_layers,
            unroll=min(cfg.scan_unroll, self.num_layers),
            metadata_params={nn.PARTITION_NAME: shd.LAYERS},
        )(cfg, self.cross_attention, self.per_layer_position_bias, self.enable_dropout,
          self.causal, name="layers")

        x = _dropout(x, cfg.dropout_rate, self.enable_dropout, broadcast_dims=(-2,))
        x, new_cache = layers(x, self_bias, bucket_ids, encoded, cross_bias, cache, cache_offsets)
        x = RMSNorm(cfg, name="final_norm")(x)
        x = _dropout(x, cfg.dropout_rate, self.enable_dropout, broadcast_dims=(-2,))
        return x, new_cache
