"""The tiny grid's training step against a hand-written JAX decoder of the same shape.

``archobj bench tiny`` (``main``) answers one question: does the harness's training step
(``harness.train.steps.make_train_step`` with the study's Adafactor, exactly as
``harness/train/loop.py`` jits it) run as fast as the plainest JAX a person would write for the same
model? The reference below is that plain JAX: ``jnp`` only, no Flax, layers unrolled in Python, one
weight matrix per projection, the study's Adafactor written out.

What the two compute (PERF.md "Benchmark protocol"; the differences are listed; nothing else is):

* The same model on the same weights: the reference's parameters are converted from the harness's
  initialised tree (``from_harness_params``), so both start from the same state and
  tests/test_tiny_bench.py checks that they give the same loss and the same first update.
  T5.1.1 blocks: pre-RMSNorm, attention without 1/sqrt(head_dim) and with T5 relative-position
  buckets (one table per layer in the decoder-only models, one per stack in the encoder-decoder),
  GEGLU MLP with tanh-GELU, tied logits scaled by 1/sqrt(d_model). bfloat16 compute with float32
  parameters, norms, softmax and logits, as the harness (``models/layers.py``).
* The same masks, built in the step from the same batch features (causal OR prefix, AND padding,
  AND segment ids where the pair packs).
* The same loss: token cross-entropy + 1e-4 log(Z)^2 summed under ``decoder_loss_weights`` (the
  study's ``loss_normalization="sum"``).
* The same optimizer arithmetic: t5x's Adafactor without momentum (decay 0.8, factored second
  moments of every kernel and of the embedding, update clipping at RMS 1, parameter scale,
  rsqrt schedule at 0.01).
* Differences: the reference computes the bucket ids on the host (numpy constants); it returns only
  the loss, where the harness also returns accuracy, gradient norm, learning rate and token counts,
  and keeps the old state when a step is not finite (an elementwise select over the state). The
  reference leaves the gradients of the position bias and the norm scales (sums over the batch and
  length axes) to autodiff, i.e. to XLA:CPU's slow leading-axis reduce; the harness computes them
  as matmuls with a vector of ones (models/layers.py), the one place where it does less work than
  plain JAX rather than the same work. And the harness writes every matmul as bfloat16 operands
  with a float32 result (``models.layers.einsum``), forward and backward, where the reference's
  plain ``x @ w`` has a bfloat16 result, which XLA:CPU runs as a float32 dot at about half the
  speed of its bfloat16 GEMM: the same work on faster kernels, which plain JAX does not reach on
  this backend without being written that way.

The shapes are the tiny grid's pretraining pairs (experiments/tiny.yaml: ``mini`` preset, 16 rows,
``total_length`` 128; objectives/lengths.py):

=======  =====  ======================================================  ==========================
case     rows   features                                                grid pairs with the shape
=======  =====  ======================================================  ==========================
cd       16     decoder 128, packed (two segments per row)              cd_flm (cd_mlm: same cost)
nd       16     decoder 128, bidirectional prefix of 64 + 1             nd_plm, nd_mlm
ed       16     encoder 104 / decoder 24, packed                        ed_mlm
ed_plm   8      encoder 128 / decoder 128, two segments per side        ed_plm
=======  =====  ======================================================  ==========================

Timing: both steps are compiled ahead of time with ``donate_argnums=0``, warmed up, then timed in
intervals of ``steps`` steps closed by ``jax.block_until_ready``, harness and reference interleaved
(the order alternates), medians over ``repeats`` intervals; the CPU matmul peak
(``train_bench.measure_matmul_peak``) is measured in the same process before and after.

Measured on the 2-core CPU (shared, ~2x noise; ``archobj bench tiny --repeats 9``),
harness / hand-written tokens/s: before the ``mini`` preset unrolled its layers and the shared
parameters' gradients became matmuls (models/layers.py), cd 0.73, nd 0.77, ed 0.75, ed_plm 0.87;
after, cd 1.10, nd 1.10, ed 1.03, ed_plm 1.03. With every matmul of the harness on the bfloat16
GEMM (c2e8e29; the reference's plain ``@`` is not, see the differences above): cd 1.57, nd 1.57,
ed 1.47, ed_plm 1.50 (``archobj bench tiny``, bench/results.md).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

Z_LOSS = 1e-4            # models/losses.py
LEARNING_RATE = 0.01     # rsqrt(1.0, warmup 10,000): flat at 1/sqrt(10,000) over the tiny grid
DECAY_RATE = 0.8         # t5x Adafactor, PAPER.md 2.1
EPSILON1, EPSILON2 = 1e-30, 1e-3
MASKED_LOGIT = -1e10     # models/masks.py


@dataclasses.dataclass(frozen=True)
class TinyCase:
    """One pretraining shape of the tiny grid (see the module docstring's table)."""

    name: str
    architecture: str
    batch_size: int
    length: int                 # decoder tokens per row
    inputs_length: int = 0      # encoder tokens per row (ed)
    prefix: int = 0             # bidirectional prefix (nd): positions <= prefix attend both ways
    segments: int = 1           # packed examples per row (segment ids when > 0 and packed)
    packed: bool = False

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * (self.length + self.inputs_length)


CASES: dict[str, TinyCase] = {
    "cd": TinyCase("cd", "cd", 16, 128, segments=2, packed=True),
    "nd": TinyCase("nd", "nd", 16, 128, prefix=64),
    "ed": TinyCase("ed", "ed", 16, 24, inputs_length=104, packed=True),
    "ed_plm": TinyCase("ed_plm", "ed", 8, 128, inputs_length=128, segments=2, packed=True),
}


def model_config(case: TinyCase, dtype: str = "bfloat16", **overrides: Any):
    """The ``mini`` preset with the tiny grid's vocabulary, as the grid builds it."""
    from models.config import preset
    return preset("mini", case.architecture, dtype=dtype, **overrides)


def synthetic_batch(case: TinyCase, vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random seqio model features of ``case``'s shape (every position a real token)."""
    from harness.bench.train_bench import shift_right

    rng = np.random.default_rng(seed)
    rows = case.batch_size

    def tokens(n: int) -> np.ndarray:
        return rng.integers(2, vocab_size, size=(rows, n), dtype=np.int32)

    def segment_ids(n: int) -> np.ndarray:
        # Equal segments: 1 ... 1 2 ... 2 (seqio packing numbers them from 1).
        return (np.arange(n)[None, :] * case.segments // n + 1).repeat(rows, 0).astype(np.int32)

    def positions(segments: np.ndarray) -> np.ndarray:
        out = np.zeros_like(segments)
        for r in range(rows):
            for s in np.unique(segments[r]):
                where = segments[r] == s
                out[r, where] = np.arange(where.sum())
        return out

    targets = tokens(case.length)
    batch: dict[str, np.ndarray] = {"decoder_target_tokens": targets}
    dec_segments = segment_ids(case.length) if case.packed else None
    batch["decoder_input_tokens"] = shift_right(targets, dec_segments)
    weights = np.ones_like(targets)
    if case.architecture == "nd":
        position = np.arange(case.length)[None, :]
        weights = np.broadcast_to(position >= case.prefix, targets.shape).astype(np.int32)
        # seqio: the prefix plus one position attends bidirectionally.
        batch["decoder_causal_attention"] = np.broadcast_to(
            position <= case.prefix, targets.shape).astype(np.int32)
    batch["decoder_loss_weights"] = weights
    if dec_segments is not None:
        batch["decoder_segment_ids"] = dec_segments
        batch["decoder_positions"] = positions(dec_segments)
    if case.architecture == "ed":
        batch["encoder_input_tokens"] = tokens(case.inputs_length)
        if case.packed:
            batch["encoder_segment_ids"] = segment_ids(case.inputs_length)
            batch["encoder_positions"] = positions(batch["encoder_segment_ids"])
    return batch


def model_flops(case: TinyCase, config: Any) -> tuple[float, float]:
    """Analytic training FLOPs per step (causal-aware, full-matrix), models/flops.py, unpacked."""
    from models.flops import decoder_only_flops, encoder_decoder_flops
    if case.architecture == "ed":
        count = encoder_decoder_flops(config, case.inputs_length, case.length)
    else:
        count = decoder_only_flops(config, case.length, case.prefix)
    return count.total * case.batch_size, count.total_full * case.batch_size


# -------------------------------------------------------------------------------------------------
# The hand-written reference: plain jnp, layers unrolled, one matrix per projection.
# -------------------------------------------------------------------------------------------------

def relative_buckets(query_length: int, key_length: int, bidirectional: bool,
                     num_buckets: int = 32, max_distance: int = 128) -> np.ndarray:
    """T5's relative-position buckets ``[q, k]`` of ``key - query``, on the host."""
    n = -(np.arange(key_length)[None, :] - np.arange(query_length)[:, None])
    buckets = np.zeros_like(n)
    if bidirectional:
        num_buckets //= 2
        buckets += (n < 0) * num_buckets
        n = np.abs(n)
    else:
        n = np.maximum(n, 0)
    max_exact = num_buckets // 2
    large = max_exact + (np.log(np.maximum(n, 1).astype(np.float32) / max_exact)
                         / np.float32(np.log(max_distance / max_exact))
                         * (num_buckets - max_exact)).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return (buckets + np.where(n < max_exact, n, large)).astype(np.int32)


def from_harness_params(params: Any) -> dict[str, Any]:
    """The reference's parameters from the harness's tree (``Transformer`` params, unboxed).

    Stacked ``[layers, ...]`` weights become one dict per layer; attention kernels
    ``[embed, heads, kv]`` become ``[embed, heads * kv]`` matrices.
    """
    def stack(tree: Any) -> dict[str, Any]:
        layers = tree["layers"]
        out: dict[str, Any] = {"final_norm": tree["final_norm"]["scale"], "layers": []}
        if "relpos_bias" in tree:
            out["relpos"] = tree["relpos_bias"]["rel_embedding"]
        for i in range(layers["mlp"]["wo"].shape[0]):
            layer = {"norm_self": layers["pre_self_attention_norm"]["scale"][i],
                     "norm_mlp": layers["pre_mlp_norm"]["scale"][i],
                     "wi0": layers["mlp"]["wi_0"][i], "wi1": layers["mlp"]["wi_1"][i],
                     "wo_mlp": layers["mlp"]["wo"][i]}
            for prefix, name in (("", "self_attention"), ("x", "cross_attention")):
                if name not in layers:
                    continue
                attn = layers[name]
                d, h, k = attn["query"].shape[1:]
                for short, long in (("q", "query"), ("k", "key"), ("v", "value")):
                    layer[f"w{prefix}{short}"] = attn[long][i].reshape(d, h * k)
                layer[f"w{prefix}o"] = attn["out"][i].reshape(h * k, d)
            if "pre_cross_attention_norm" in layers:
                layer["norm_cross"] = layers["pre_cross_attention_norm"]["scale"][i]
            if "relpos_bias" in layers:
                layer["relpos"] = layers["relpos_bias"]["rel_embedding"][i]
            out["layers"].append(layer)
        return out

    ref = {"embedding": params["token_embedder"]["embedding"], "decoder": stack(params["decoder"])}
    if "encoder" in params:
        ref["encoder"] = stack(params["encoder"])
    return ref


class Reference:
    """The hand-written model, loss and Adafactor step for one config (``mini``-like)."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.dtype = jnp.dtype(config.dtype)

    # Forward ---------------------------------------------------------------------------------

    def _norm(self, x: Array, scale: Array) -> Array:
        x = x.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True)
                              + self.config.layer_norm_epsilon)
        return x.astype(self.dtype) * scale.astype(self.dtype)

    def _attend(self, x: Array, kv: Array, layer: dict[str, Array], prefix: str,
                bias: Array) -> Array:
        cfg, dt = self.config, self.dtype
        b, q_len, s_len = x.shape[0], x.shape[1], kv.shape[1]
        heads, head_dim = cfg.num_heads, cfg.head_dim
        q = (x @ layer[f"w{prefix}q"].astype(dt)).reshape(b, q_len, heads, head_dim)
        k = (kv @ layer[f"w{prefix}k"].astype(dt)).reshape(b, s_len, heads, head_dim)
        v = (kv @ layer[f"w{prefix}v"].astype(dt)).reshape(b, s_len, heads, head_dim)
        logits = jnp.einsum("bqhk,bshk->bhqs", q, k, preferred_element_type=jnp.float32)
        probs = jax.nn.softmax(logits + bias, axis=-1).astype(dt)
        context = jnp.einsum("bhqs,bshk->bqhk", probs, v).reshape(b, q_len, heads * head_dim)
        return context @ layer[f"w{prefix}o"].astype(dt)

    def _mlp(self, x: Array, layer: dict[str, Array]) -> Array:
        dt = self.dtype
        hidden = (jax.nn.gelu(x @ layer["wi0"].astype(dt), approximate=True)
                  * (x @ layer["wi1"].astype(dt)))
        return hidden @ layer["wo_mlp"].astype(dt)

    def _stack(self, x: Array, stack: dict[str, Any], self_bias: Array, buckets: np.ndarray,
               encoded: Optional[Array] = None, cross_bias: Optional[Array] = None) -> Array:
        if "relpos" in stack:  # one table per stack (encoder-decoder)
            self_bias = self_bias + stack["relpos"].astype(jnp.float32)[:, buckets][None]
        for layer in stack["layers"]:
            bias = self_bias
            if "relpos" in layer:  # one table per layer (decoder-only)
                bias = bias + layer["relpos"].astype(jnp.float32)[:, buckets][None]
            h = self._norm(x, layer["norm_self"])
            x = x + self._attend(h, h, layer, "", bias)
            if encoded is not None:
                h = self._norm(x, layer["norm_cross"])
                x = x + self._attend(h, encoded, layer, "x", cross_bias)
            x = x + self._mlp(self._norm(x, layer["norm_mlp"]), layer)
        return self._norm(x, stack["final_norm"])

    def logits(self, params: dict[str, Any], batch: dict[str, Array]) -> Array:
        """Float32 logits ``[b, length, vocab]``."""
        cfg, dt = self.config, self.dtype
        embedding = params["embedding"].astype(dt)

        def bias(mask: Array) -> Array:  # [b, q, k] bool -> [b, 1, q, k] float32
            return jnp.where(mask, 0.0, MASKED_LOGIT)[:, None].astype(jnp.float32)

        def pairs(query: Array, key: Array, op: Any = jnp.logical_and) -> Array:
            return op(query[:, :, None], key[:, None, :])

        targets = batch["decoder_target_tokens"]
        length = targets.shape[1]
        position = jnp.arange(length)[None, :].repeat(targets.shape[0], 0)
        mask = pairs(position, position, jnp.greater_equal)
        if cfg.architecture == "nd":
            prefix = batch["decoder_causal_attention"] > 0
            mask = mask | pairs(prefix, prefix)
        mask = mask & pairs(targets > 0, targets > 0)
        if "decoder_segment_ids" in batch:
            segments = batch["decoder_segment_ids"]
            mask = mask & pairs(segments, segments, jnp.equal)
        encoded, cross_bias = None, None
        if cfg.is_encoder_decoder:
            inputs = batch["encoder_input_tokens"]
            enc_mask = pairs(inputs > 0, inputs > 0)
            cross_mask = pairs(targets > 0, inputs > 0)
            if "encoder_segment_ids" in batch:
                enc_segments = batch["encoder_segment_ids"]
                enc_mask = enc_mask & pairs(enc_segments, enc_segments, jnp.equal)
                if "decoder_segment_ids" in batch:
                    cross_mask = cross_mask & pairs(batch["decoder_segment_ids"], enc_segments,
                                                    jnp.equal)
            encoded = self._stack(
                embedding[inputs], params["encoder"], bias(enc_mask),
                relative_buckets(inputs.shape[1], inputs.shape[1], True, cfg.relpos_num_buckets,
                                 cfg.relpos_max_distance))
            cross_bias = bias(cross_mask)
        y = self._stack(embedding[batch["decoder_input_tokens"]], params["decoder"], bias(mask),
                        relative_buckets(length, length, False, cfg.relpos_num_buckets,
                                         cfg.relpos_max_distance),
                        encoded, cross_bias)
        return (jnp.einsum("bld,vd->blv", y, embedding, preferred_element_type=jnp.float32)
                / math.sqrt(cfg.d_model))

    def loss(self, params: dict[str, Any], batch: dict[str, Array]) -> tuple[Array, Array]:
        """``(summed cross-entropy + z-loss, summed weights)``."""
        logits = self.logits(params, batch)
        weights = batch["decoder_loss_weights"].astype(jnp.float32)
        log_z = jax.nn.logsumexp(logits, axis=-1)
        target = jnp.take_along_axis(logits, batch["decoder_target_tokens"][..., None], -1)[..., 0]
        return jnp.sum((log_z - target + Z_LOSS * log_z * log_z) * weights), jnp.sum(weights)

    # Adafactor -------------------------------------------------------------------------------

    @staticmethod
    def _factored(path: tuple[Any, ...], shape: tuple[int, ...]) -> bool:
        """t5x's choice for this model: kernels factored (embed x heads/mlp), the embedding when
        both dims are >= 128, norm scales and position tables not."""
        name = getattr(path[-1], "key", None)
        if name == "embedding":
            return min(shape) >= 128
        return isinstance(name, str) and name.startswith("w")

    def init_state(self, params: dict[str, Any]) -> dict[str, Any]:
        """``{"step", "params", "v"}``; ``v`` holds (row, column) or full second moments."""
        def zeros(path: tuple[Any, ...], p: Array) -> Any:
            if self._factored(path, p.shape):
                return (jnp.zeros(p.shape[0], jnp.float32), jnp.zeros(p.shape[1], jnp.float32))
            return jnp.zeros(p.shape, jnp.float32)
        return {"step": jnp.zeros((), jnp.int32), "params": params,
                "v": jax.tree_util.tree_map_with_path(zeros, params)}

    def train_step(self, state: dict[str, Any], batch: dict[str, Array]
                   ) -> tuple[dict[str, Any], Array]:
        """One step: gradient of the summed loss, then t5x's Adafactor. Returns (state, loss)."""
        (loss, weight), grads = jax.value_and_grad(self.loss, has_aux=True)(state["params"], batch)
        beta2 = 1.0 - (state["step"].astype(jnp.float32) + 1.0) ** -DECAY_RATE
        leaves, treedef = jax.tree_util.tree_flatten_with_path(state["params"])
        grad_leaves = treedef.flatten_up_to(grads)
        v_leaves = treedef.flatten_up_to(state["v"])
        new_params, new_v = [], []
        for (path, p), g, v in zip(leaves, grad_leaves, v_leaves):
            g2 = g * g + EPSILON1
            if isinstance(v, tuple):
                v_row = beta2 * v[0] + (1.0 - beta2) * jnp.mean(g2, axis=1)
                v_col = beta2 * v[1] + (1.0 - beta2) * jnp.mean(g2, axis=0)
                u = g * jax.lax.rsqrt(v_row / jnp.mean(v_row))[:, None] * jax.lax.rsqrt(v_col)
                v = (v_row, v_col)
            else:
                v = beta2 * v + (1.0 - beta2) * g2
                u = g * jax.lax.rsqrt(v)
            u = u / jnp.maximum(1.0, jnp.sqrt(jnp.mean(u * u)))
            scale = jnp.maximum(jnp.sqrt(jnp.mean(p * p)), EPSILON2)
            new_params.append(p - LEARNING_RATE * scale * u)
            new_v.append(v)
        state = {"step": state["step"] + 1,
                 "params": jax.tree_util.tree_unflatten(treedef, new_params),
                 "v": treedef.unflatten(new_v)}
        return state, loss / jnp.maximum(weight, 1.0)


# -------------------------------------------------------------------------------------------------
# The harness's step, set up as harness/train/loop.py does.
# -------------------------------------------------------------------------------------------------

def _xla_flops(compiled: Any) -> Optional[float]:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return (cost or {}).get("flops")


# -------------------------------------------------------------------------------------------------
# The benchmark.
# -------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class CaseResult:
    """Figures of one case: per-interval step seconds of both, and their end losses."""

    case: str
    architecture: str
    batch_size: int
    tokens_per_step: int
    flops_per_step: float            # analytic, causal-aware
    flops_per_step_full: float       # analytic, full-matrix
    harness_steps: list[float]
    reference_steps: list[float]
    harness_compile_s: float
    reference_compile_s: float
    harness_xla_flops: Optional[float]
    reference_xla_flops: Optional[float]
    harness_loss: float              # after warm-up and every timed step (same batch each step)
    reference_loss: float

    @property
    def harness_step(self) -> float:
        return statistics.median(self.harness_steps)

    @property
    def reference_step(self) -> float:
        return statistics.median(self.reference_steps)

    @property
    def ratio(self) -> float:
        """Harness speed / reference speed (>= 1: the harness is at least as fast)."""
        return self.reference_step / self.harness_step


@dataclasses.dataclass
class TinyBenchResult:
    """All cases plus the measured peak; ``format()`` renders, ``as_dict()`` is JSON-able."""

    cases: list[CaseResult]
    dtype: str
    steps: int
    repeats: int
    peak_flops: Optional[float]
    devices: int

    def as_dict(self) -> dict[str, Any]:
        out = {"dtype": self.dtype, "steps": self.steps, "repeats": self.repeats,
               "peak_flops": self.peak_flops, "devices": self.devices, "cases": []}
        for c in self.cases:
            row = dataclasses.asdict(c)
            row.update(harness_step_s=c.harness_step, reference_step_s=c.reference_step,
                       harness_tokens_per_s=c.tokens_per_step / c.harness_step,
                       reference_tokens_per_s=c.tokens_per_step / c.reference_step,
                       ratio=c.ratio)
            if self.peak_flops:
                row.update(harness_mfu=c.flops_per_step / c.harness_step / self.peak_flops,
                           reference_mfu=c.flops_per_step / c.reference_step / self.peak_flops)
            out["cases"].append(row)
        return out

    def format(self) -> str:
        peak = f"{self.peak_flops / 1e9:.0f} GFLOP/s" if self.peak_flops else "not measured"
        lines = [f"tiny grid step: harness vs hand-written JAX ({self.dtype}, {self.devices} "
                 f"device(s), {self.repeats} intervals of {self.steps} steps, medians; matmul "
                 f"peak {peak})",
                 f"{'case':8} {'rows':>4} {'tok/step':>8} {'harness ms':>10} {'ref ms':>8} "
                 f"{'harness tok/s':>13} {'ref tok/s':>10} {'ratio':>6} {'MFU h/ref':>11} "
                 f"{'compile h/ref s':>15} {'loss h/ref':>13}"]
        for c in self.cases:
            mfu = ""
            if self.peak_flops:
                mfu = (f"{c.flops_per_step / c.harness_step / self.peak_flops:.1%}/"
                       f"{c.flops_per_step / c.reference_step / self.peak_flops:.1%}")
            lines.append(
                f"{c.case:8} {c.batch_size:>4} {c.tokens_per_step:>8} "
                f"{c.harness_step * 1e3:>10.1f} {c.reference_step * 1e3:>8.1f} "
                f"{c.tokens_per_step / c.harness_step:>13,.0f} "
                f"{c.tokens_per_step / c.reference_step:>10,.0f} {c.ratio:>6.2f} {mfu:>11} "
                f"{c.harness_compile_s:>7.1f}/{c.reference_compile_s:<7.1f} "
                f"{c.harness_loss:>6.3f}/{c.reference_loss:<6.3f}")
        lines.append("ratio = harness tokens/s / hand-written tokens/s; MFU = analytic "
                     "causal-aware model FLOP/s / measured peak")
        return "\n".join(lines)


def _time(compiled: Any, state: Any, args: tuple[Any, ...], steps: int) -> tuple[float, Any, Any]:
    start = time.perf_counter()
    out = None
    for _ in range(steps):
        state, out = compiled(state, *args)
    jax.block_until_ready((state, out))
    return (time.perf_counter() - start) / steps, state, out


def run_case(case: TinyCase, *, dtype: str = "bfloat16", steps: int = 10, repeats: int = 5,
             warmup: int = 2, seed: int = 0, config_overrides: Optional[dict[str, Any]] = None
             ) -> CaseResult:
    """Compiles, warms up and times the harness's and the reference's step on ``case``."""
    config = model_config(case, dtype, **(config_overrides or {}))
    batch_np = synthetic_batch(case, config.vocab_size, seed)
    from harness.bench.train_bench import compile_train_step

    compiled = compile_train_step(config, batch_np, seed=seed)
    h_step, h_state, h_batch, rng = compiled.compiled, compiled.state, compiled.batch, compiled.rng
    h_compile = compiled.compile_seconds
    reference = Reference(config)
    r_params = jax.tree.map(jnp.copy, from_harness_params(h_state.params))
    r_state = reference.init_state(r_params)
    r_batch = {k: jnp.asarray(v) for k, v in batch_np.items()}
    start = time.perf_counter()
    r_step = jax.jit(reference.train_step, donate_argnums=0).lower(r_state, r_batch).compile()
    r_compile = time.perf_counter() - start

    for _ in range(warmup):
        h_state, h_metrics = h_step(h_state, h_batch, rng)
        r_state, r_loss = r_step(r_state, r_batch)
    jax.block_until_ready((h_state, h_metrics, r_state, r_loss))
    h_times, r_times = [], []
    for repeat in range(repeats):
        # Alternate which goes first, so that drift on a shared machine hits both alike.
        for which in ((0, 1) if repeat % 2 == 0 else (1, 0)):
            if which == 0:
                seconds, h_state, h_metrics = _time(h_step, h_state, (h_batch, rng), steps)
                h_times.append(seconds)
            else:
                seconds, r_state, r_loss = _time(r_step, r_state, (r_batch,), steps)
                r_times.append(seconds)
    flops, flops_full = model_flops(case, config)
    return CaseResult(
        case=case.name, architecture=case.architecture, batch_size=case.batch_size,
        tokens_per_step=case.tokens_per_step, flops_per_step=flops,
        flops_per_step_full=flops_full, harness_steps=h_times, reference_steps=r_times,
        harness_compile_s=h_compile, reference_compile_s=r_compile,
        harness_xla_flops=_xla_flops(h_step), reference_xla_flops=_xla_flops(r_step),
        harness_loss=float(h_metrics["loss"]), reference_loss=float(r_loss))


def run_tiny_benchmark(cases: Optional[list[str]] = None, *, dtype: str = "bfloat16",
                       steps: int = 10, repeats: int = 5, warmup: int = 2, seed: int = 0,
                       measure_peak: bool = True,
                       peak_sizes: tuple[int, ...] = (1024, 2048, 4096),
                       config_overrides: Optional[dict[str, Any]] = None) -> TinyBenchResult:
    """Runs ``cases`` (default: cd, nd, ed, ed_plm) and returns their figures.

    Raises:
      ValueError: for an unknown case name or a non-positive count.
    """
    cases = list(cases or CASES)
    unknown = [name for name in cases if name not in CASES]
    if unknown:
        raise ValueError(f"case={unknown[0]!r}: unknown; choose from {list(CASES)}")
    for name, value in (("steps", steps), ("repeats", repeats)):
        if value < 1:
            raise ValueError(f"{name}={value}: must be >= 1")
    from harness.bench.train_bench import measure_matmul_peak
    on_cpu = jax.devices()[0].platform == "cpu"
    peaks = [measure_matmul_peak(dtype, peak_sizes)] if measure_peak and on_cpu else []
    results = [run_case(CASES[name], dtype=dtype, steps=steps, repeats=repeats, warmup=warmup,
                        seed=seed, config_overrides=config_overrides) for name in cases]
    if peaks:
        peaks.append(measure_matmul_peak(dtype, peak_sizes))
    return TinyBenchResult(cases=results, dtype=dtype, steps=steps, repeats=repeats,
                           peak_flops=max(peaks) if peaks else None, devices=jax.device_count())
