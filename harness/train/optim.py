"""Learning-rate schedules and optimizers of the study (PAPER.md 2.1, Table 2).

The optimizer belongs to the harness, not the model (STYLE.md B4). Both factories take plain
arguments, so the run config can call them with its own fields::

    schedule = make_schedule("rsqrt", 1.0, warmup_steps=10_000, total_steps=131_072)  # pretraining
    schedule = make_schedule("constant", 1e-3, 0, 10_000)                                # MTF
    optimizer = make_optimizer("adafactor", schedule,                                   # the study
                               logical_axes=param_logical_axes(model_config))

Schedules map the optimizer's own step count (an int32 array, 0 on the first update) to a float32
learning rate, so they can be jitted, and ``harness.train.steps`` logs ``schedule(state.step)``.

Two Adafactors. The study trained with t5x's Adafactor (``t5x/adafactor.py``; PAPER.md 2.1:
``decay_rate=0.8``, ``step_offset=0``, ``standard_logical_factor_rules``). ``adafactor_t5x`` (the
optimizer ``"adafactor"``) reimplements it as an optax transformation. It decides what to factor
and what to average over from each parameter's *logical axis names* (``models/sharding.py``), so
it needs them (``param_logical_axes``). ``optax.adafactor`` (``"adafactor_optax"``) runs the same
per-array arithmetic but looks only at shapes, and differs in two ways:

* optax factors the two largest dimensions, and only when both are >= 128. Attention kernels
  ``[layers, embed, heads, kv]`` have 64-wide heads and kv axes, so optax keeps a full
  (unfactored) float32 second moment for them: about a third of the study's 4.8B parameters,
  with the updates of unfactored Adafactor. t5x factors embed (row) against heads x kv (column).
  Optimizer state of ``paper-decoder``: 6.45 GB with optax's, 8.4 MB with t5x's (tests/test_optim.py
  prints it).
* optax computes one parameter RMS and one update-clipping RMS per array, over the whole stack of
  scanned layers. t5x treats ``layers`` as a batch axis and computes both per layer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from jax.sharding import PartitionSpec

SCHEDULES = ("rsqrt", "constant", "cosine")
OPTIMIZERS = ("adafactor", "adafactor_optax", "adamw")

# Parameter names that AdamW never decays (see ``weight_decay_mask``): RMSNorm scales and the T5
# relative-position bias tables. Everything else (matmul kernels, the token embedding, an untied
# logits head) is decayed.
NO_DECAY_NAMES = ("scale", "rel_embedding")

# t5x's ``standard_logical_factor_rules``: what Adafactor does with each logical axis. ROW and
# COLUMN axes are factored against each other; BATCH axes (scanned layers) are never averaged over,
# so every statistic is per layer; None axes are not factored. A logical name missing here is an
# error, as in t5x.
ROW, COLUMN, BATCH = "row", "column", "batch"
LOGICAL_FACTOR_RULES: dict[str, Optional[str]] = {
    "embed": ROW,
    "vocab": COLUMN, "mlp": COLUMN, "heads": COLUMN, "kv": COLUMN, "joined_kv": COLUMN,
    "q_wi_fused": COLUMN, "o_wo_fused": COLUMN, "multiquery_heads": COLUMN, "kv_fused": COLUMN,
    "mlp_activations": COLUMN,
    "layers": BATCH, "stack": BATCH,
    "relpos_buckets": None, "layer_norm_scale": None,
}


def make_schedule(kind: str, learning_rate: float, warmup_steps: int,
                  total_steps: int, offset: int = 0) -> optax.Schedule:
    """A learning-rate schedule of the study (PAPER.md 2.1) or a common baseline.

    ``"rsqrt"``
        t5x ``factors="constant * rsqrt_decay"``: ``learning_rate / sqrt(max(step, warmup_steps))``.
        With the study's base 1.0 and 10,000 warmup steps it is flat at 0.01 for 10k steps, then
        decays as the inverse square root (pretraining and adaptation). There is no linear ramp:
        t5x's "warmup" here is the flat part.
    ``"constant"``
        ``learning_rate`` at every step (multitask finetuning: 1e-3). ``warmup_steps`` and
        ``total_steps`` are ignored, as t5x's ``factors="constant"`` ignores them.
    ``"cosine"``
        linear warmup from 0 to ``learning_rate`` over ``warmup_steps``, then cosine decay to 0 at
        ``total_steps`` (and 0 afterwards). Not used by the study.

    Args:
      kind: one of ``SCHEDULES``.
      learning_rate: base (``"rsqrt"``) or peak (``"constant"``, ``"cosine"``) learning rate, > 0.
      warmup_steps: flat part (``"rsqrt"``, >= 1) or linear ramp (``"cosine"``, >= 0).
      total_steps: last step of the cosine decay (``"cosine"``, > warmup_steps).
      offset: steps already taken before this stage: the schedule is evaluated at
        ``offset + step``. An adaptation that starts a fresh optimizer from step 131,072 of a
        pretraining run and sets ``offset=131_072`` continues the study's decay (PAPER.md 1.3:
        NC-A runs from step 131,072 to 171,008 of one schedule) instead of restarting it.

    Returns:
      ``step -> learning rate`` (float32), jittable.

    Raises:
      ValueError: for an unknown kind or out-of-range numbers.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"schedule={kind!r}: unknown schedule; choose one of {list(SCHEDULES)}")
    if not float(learning_rate) > 0.0:
        raise ValueError(f"learning_rate={learning_rate!r}: must be > 0")
    learning_rate = float(learning_rate)
    _check_int("offset", offset, minimum=0)
    if offset:
        base = make_schedule(kind, learning_rate, warmup_steps, total_steps + offset)
        return lambda step: base(jnp.asarray(step) + offset)
    if kind == "constant":
        return lambda step: jnp.full((), learning_rate, jnp.float32)
    _check_int("warmup_steps", warmup_steps, minimum=1 if kind == "rsqrt" else 0)
    if kind == "rsqrt":
        def rsqrt(step: Any) -> jax.Array:
            # t5x's 1 / sqrt(max(step, warmup)), computed in float32; the study's flat 0.01 and its
            # 0.005 at step 40k come out exact (tests/test_optim.py checks them bit for bit).
            step = jnp.maximum(jnp.asarray(step, jnp.float32), float(warmup_steps))
            return learning_rate / jnp.sqrt(step)
        return rsqrt
    _check_int("total_steps", total_steps, minimum=warmup_steps + 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=learning_rate, warmup_steps=warmup_steps,
        decay_steps=total_steps, end_value=0.0)


def make_optimizer(name: str, schedule: optax.Schedule, *, logical_axes: Any = None,
                   decay_rate: float = 0.8, weight_decay: float = 0.0, beta1: float = 0.9,
                   beta2: float = 0.999, grad_clip: Optional[float] = None
                   ) -> optax.GradientTransformation:
    """The study's Adafactor, optax's Adafactor or AdamW, optionally after global-norm clipping.

    ``"adafactor"``: t5x's Adafactor as the study configured it (PAPER.md 2.1: ``decay_rate``
    0.8, ``step_offset`` 0, ``standard_logical_factor_rules``), ``adafactor_t5x``: second-moment
    decay ``1 - (step + 1) ** -decay_rate``, ``epsilon1`` 1e-30, update clipping at RMS 1.0,
    updates times ``max(rms(param), 1e-3)``, no momentum, learning rate from ``schedule``. It needs
    ``logical_axes``, and factors by them (``LOGICAL_FACTOR_RULES``): a parameter with an embed
    (row) axis and heads / kv / mlp / vocab (column) axes keeps ``v_row`` (mean over the columns)
    and ``v_col`` (mean over the rows); others (norm scales, relative-position tables) keep a full
    second moment. The ``layers`` axis is a batch axis: every statistic, the clipping RMS and the
    parameter RMS are per layer. As in t5x, a parameter of rank <= 2 without a ``layers`` axis
    (token embedding, untied logits, final norms, the encoder-decoder's shared position tables) is
    factored by shape instead: when both its dimensions are >= 128.

    ``"adafactor_optax"``: ``optax.adafactor`` with the same numbers (``min_dim_size_to_factor``
    128, ``multiply_by_parameter_scale``, ``clipping_threshold`` 1.0, no momentum, eps 1e-30). It
    factors by shape and computes the parameter scale and clipping over whole arrays, stacks of
    layers included; its attention kernels keep a full second moment (module docstring).

    ``"adamw"``: ``optax.adamw`` with the schedule, ``beta1``, ``beta2``, eps 1e-8 and decoupled
    weight decay (``param -= lr * (adam_update + weight_decay * param)``).

    Weight decay skips RMSNorm scales and relative-position tables (``weight_decay_mask``) in all
    three. (t5x's Adafactor has no mask; the study used no weight decay.)

    Args:
      name: one of ``OPTIMIZERS``.
      schedule: learning rate per step (``make_schedule``).
      logical_axes: logical axis names per parameter, a tree of ``PartitionSpec`` with the
        parameters' structure (``param_logical_axes(model_config)``). Required by
        ``"adafactor"``, ignored by the others.
      decay_rate: Adafactor's second-moment decay exponent.
      weight_decay: decay rate; AdamW multiplies it by the learning rate, Adafactor (as t5x) does
        not (``param *= 1 - weight_decay``). 0 disables it.
      beta1: AdamW first-moment decay (Adafactor: no momentum, ignored).
      beta2: AdamW second-moment decay (ignored by Adafactor, which uses ``decay_rate``).
      grad_clip: if set, clip gradients to this global norm before the optimizer.

    Returns:
      The ``optax.GradientTransformation``; it needs ``params`` in ``update``.

    Raises:
      ValueError: for an unknown name, out-of-range numbers, or ``"adafactor"`` without
        ``logical_axes``.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer={name!r}: unknown optimizer; choose one of {list(OPTIMIZERS)}")
    if not float(weight_decay) >= 0.0:
        raise ValueError(f"weight_decay={weight_decay!r}: must be >= 0")
    if grad_clip is not None and not float(grad_clip) > 0.0:
        raise ValueError(f"grad_clip={grad_clip!r}: must be > 0, or None for no clipping")
    decay = float(weight_decay) if weight_decay else None
    if name.startswith("adafactor") and not 0.0 < float(decay_rate) <= 1.0:
        raise ValueError(f"decay_rate={decay_rate!r}: must be in (0, 1]")
    if name == "adafactor":
        if logical_axes is None:
            raise ValueError(
                "optimizer='adafactor' (t5x's) needs logical_axes=param_logical_axes(model_config)"
                "; or use 'adafactor_optax'")
        optimizer = adafactor_t5x(schedule, logical_axes, decay_rate=float(decay_rate),
                                  weight_decay_rate=decay, weight_decay_mask=weight_decay_mask)
    elif name == "adafactor_optax":
        optimizer = optax.adafactor(
            learning_rate=schedule, min_dim_size_to_factor=128, decay_rate=decay_rate,
            decay_offset=0, multiply_by_parameter_scale=True, clipping_threshold=1.0,
            momentum=None, eps=1e-30, factored=True, weight_decay_rate=decay,
            weight_decay_mask=weight_decay_mask if decay else None)
    else:
        for field, value in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= float(value) < 1.0:
                raise ValueError(f"{field}={value!r}: must be in [0, 1)")
        optimizer = optax.adamw(learning_rate=schedule, b1=beta1, b2=beta2, eps=1e-8,
                                weight_decay=float(weight_decay), mask=weight_decay_mask)
    if grad_clip is not None:
        optimizer = optax.chain(optax.clip_by_global_norm(float(grad_clip)), optimizer)
    return optimizer


def param_logical_axes(model_config: Any) -> Any:
    """Logical axis names of every parameter of ``model_config``'s model, e.g.
    ``P('layers', 'embed', 'heads', 'kv')``: a tree of ``PartitionSpec`` shaped like the parameters
    (the tree under ``'params'``). From ``jax.eval_shape``: nothing is allocated."""
    from models.transformer import init_fn  # here, so that importing the harness stays light
    return logical_axes_of(jax.eval_shape(init_fn(model_config), jax.random.key(0))["params"])


def logical_axes_of(boxed_params: Any) -> Any:
    """``PartitionSpec`` of logical names per leaf of a boxed (``nn.Partitioned``) parameter tree,
    such as ``jax.eval_shape(init_fn(config), key)['params']``. Unboxed leaves get ``P()``."""
    return nn.get_partition_spec(boxed_params)


# -------------------------------------------------------------------------------------------------
# t5x's Adafactor.
# -------------------------------------------------------------------------------------------------

def adafactor_t5x(learning_rate: optax.ScalarOrSchedule, logical_axes: Any, *,
                  decay_rate: float = 0.8, step_offset: int = 0,
                  clipping_threshold: Optional[float] = 1.0,
                  multiply_by_parameter_scale: bool = True, epsilon1: float = 1e-30,
                  epsilon2: float = 1e-3, min_dim_size_to_factor: int = 128,
                  weight_decay_rate: Optional[float] = None, weight_decay_mask: Any = None
                  ) -> optax.GradientTransformation:
    """t5x's ``adafactor.Adafactor`` with ``logical_factor_rules=standard_logical_factor_rules()``
    and no momentum (``beta1=None``), as an optax chain. Per parameter and step ``t`` (from 0)::

        beta2   = 1 - (t - step_offset + 1) ** -decay_rate
        v      <- beta2 * v + (1 - beta2) * (grad ** 2 + epsilon1)      (factored or not)
        y       = grad / sqrt(v)
        y      /= max(1, rms(y) / clipping_threshold)                   (rms per layer)
        update  = -lr(t) * max(rms(param), epsilon2) * y                (rms per layer)
                  - weight_decay_rate * param                           (if weight_decay_rate)

    The first three lines are ``scale_by_factored_rms_t5x``, the parameter scale is
    ``scale_by_param_rms_t5x``. "Per layer" means over all but the BATCH axes (``Factoring``).
    ``weight_decay_mask`` selects the decayed parameters (t5x decays all of them).

    Args:
      learning_rate: a float or a schedule of the step (``make_schedule``).
      logical_axes: a tree of ``PartitionSpec`` of logical names shaped like the parameters
        (``param_logical_axes``); checked against the parameters' ranks in ``init``.
    """
    chain = [scale_by_factored_rms_t5x(logical_axes, decay_rate=decay_rate,
                                       step_offset=step_offset, epsilon1=epsilon1,
                                       clipping_threshold=clipping_threshold,
                                       min_dim_size_to_factor=min_dim_size_to_factor)]
    if multiply_by_parameter_scale:
        chain.append(scale_by_param_rms_t5x(logical_axes, epsilon2=epsilon2))
    chain.append(optax.scale_by_learning_rate(learning_rate, flip_sign=False))
    if weight_decay_rate:
        chain.append(optax.add_decayed_weights(weight_decay_rate, mask=weight_decay_mask))
    chain.append(optax.scale(-1.0))
    return optax.chain(*chain)


@dataclasses.dataclass(frozen=True)
class Factoring:
    """How t5x's Adafactor treats one parameter (t5x ``_parse_rule``); dimensions by index.

    Attributes:
      batch: never averaged over (``layers``): one statistic per slice.
      rows, columns: the factored dimensions; both empty for an unfactored parameter. The second
        moment is kept as ``v_row`` (mean over ``columns``) and ``v_col`` (mean over ``rows``).
    """

    batch: tuple[int, ...] = ()
    rows: tuple[int, ...] = ()
    columns: tuple[int, ...] = ()

    @property
    def factored(self) -> bool:
        return bool(self.rows and self.columns)

    def averaging(self, ndim: int) -> tuple[int, ...]:
        """The dimensions that the parameter scale and the clipping RMS average over."""
        return tuple(dim for dim in range(ndim) if dim not in self.batch)


def factoring(path: str, shape: Sequence[int], axes: Sequence[Optional[str]],
              min_dim_size_to_factor: int = 128) -> Factoring:
    """t5x's factoring of one parameter of ``shape`` with logical names ``axes``.

    As t5x (``set_param_axes``, ``_parse_rule``): a parameter is factored when it has ROW and
    COLUMN axes (ROW, COLUMN and None axes together are an error); a parameter of rank <= 2
    without BATCH axes ignores its names and takes Adafactor's heuristic, factoring its two
    dimensions (the larger one as the column) only when both are >= ``min_dim_size_to_factor``.

    Raises:
      ValueError: when ``axes`` does not match the rank or names an axis without a factor rule.
    """
    axes, shape = tuple(axes), tuple(shape)
    if len(axes) != len(shape):
        raise ValueError(f"logical_axes of {path}: {axes} has rank {len(axes)}, the parameter has "
                         f"shape {shape}; pass param_logical_axes(...) of the same model")
    unknown = [name for name in axes if name not in LOGICAL_FACTOR_RULES]
    if unknown:
        raise ValueError(f"logical_axes of {path}: axis {unknown[0]!r} has no Adafactor factor "
                         f"rule; known: {sorted(LOGICAL_FACTOR_RULES)}")
    rules = [LOGICAL_FACTOR_RULES[name] for name in axes]
    if ROW in rules and COLUMN in rules and None in rules:
        raise ValueError(f"logical_axes of {path}: {axes} mixes row, column and unfactored axes")
    batch = tuple(dim for dim, rule in enumerate(rules) if rule == BATCH)
    if len(shape) <= 2 and not batch:
        if len(shape) < 2:
            return Factoring()
        row, column = sorted(range(2), key=lambda dim: shape[dim])  # stable: ties keep the order
        return (Factoring(rows=(row,), columns=(column,))
                if shape[row] >= min_dim_size_to_factor else Factoring())
    rows = tuple(dim for dim, rule in enumerate(rules) if rule == ROW)
    columns = tuple(dim for dim, rule in enumerate(rules) if rule == COLUMN)
    return Factoring(batch, rows, columns) if rows and columns else Factoring(batch)


class FactoredRmsT5xState(NamedTuple):
    """``count``: updates so far (int32). ``v_row``, ``v_col``: a factored parameter's statistics
    (``[1]`` zeros otherwise); ``v``: an unfactored parameter's full second moment (or ``[1]``)."""

    count: jax.Array
    v_row: Any
    v_col: Any
    v: Any


def scale_by_factored_rms_t5x(logical_axes: Any, *, decay_rate: float = 0.8,
                              step_offset: int = 0, epsilon1: float = 1e-30,
                              clipping_threshold: Optional[float] = 1.0,
                              min_dim_size_to_factor: int = 128) -> optax.GradientTransformation:
    """Gradients divided by the root of t5x's (factored) second moment, then clipped per layer.

    A factored parameter keeps ``v_row = mean(grad ** 2 + epsilon1 over columns)`` (row and batch
    axes remain) and ``v_col = mean(... over rows)`` (column and batch axes remain), each an
    exponential moving average, and estimates ``v = v_row * v_col / mean(v_row over rows)`` per
    batch slice. The update ``y = grad / sqrt(v)`` is divided by ``max(1, rms(y) /
    clipping_threshold)``, its RMS taken over all but the batch axes.
    """
    axes_by_path = _axes_by_path(logical_axes)

    def init(params: Any) -> FactoredRmsT5xState:
        plans = _factorings(axes_by_path, params, min_dim_size_to_factor)

        def zeros(shape: Sequence[int], without: tuple[int, ...] = ()) -> jax.Array:
            return jnp.zeros([size for dim, size in enumerate(shape) if dim not in without],
                             jnp.float32)

        def stats(plan: Factoring, param: Any) -> tuple[jax.Array, ...]:
            if plan.factored:  # v_row, v_col, v
                return (zeros(param.shape, plan.columns), zeros(param.shape, plan.rows),
                        zeros((1,)))
            return zeros((1,)), zeros((1,)), zeros(param.shape)
        out = jax.tree.map(stats, plans, params)
        return FactoredRmsT5xState(jnp.zeros((), jnp.int32), *_unzip(plans, out, 3))

    def update(updates: Any, state: FactoredRmsT5xState, params: Any = None
               ) -> tuple[Any, FactoredRmsT5xState]:
        del params
        plans = _factorings(axes_by_path, updates, min_dim_size_to_factor)
        step = (state.count - step_offset).astype(jnp.float32) + 1.0
        beta2 = 1.0 - step ** -decay_rate

        def one(plan: Factoring, grad: jax.Array, v_row: jax.Array, v_col: jax.Array,
                v: jax.Array) -> tuple[jax.Array, ...]:
            grad32 = grad.astype(jnp.float32)
            squared = grad32 * grad32 + epsilon1
            if plan.factored:
                v_row = beta2 * v_row + (1.0 - beta2) * jnp.mean(squared, axis=plan.columns)
                v_col = beta2 * v_col + (1.0 - beta2) * jnp.mean(squared, axis=plan.rows)
                # Row dimensions as numbered in v_row, which lacks the column dimensions.
                rows = tuple(dim - sum(c < dim for c in plan.columns) for dim in plan.rows)
                row_factor = (v_row / jnp.mean(v_row, axis=rows, keepdims=True)) ** -0.5
                y = (grad32 * jnp.expand_dims(row_factor, plan.columns)
                     * jnp.expand_dims(v_col ** -0.5, plan.rows))
            else:
                v = beta2 * v + (1.0 - beta2) * squared
                y = grad32 * v ** -0.5
            if clipping_threshold is not None:
                rms = jnp.sqrt(jnp.mean(y * y, axis=plan.averaging(y.ndim), keepdims=True))
                y = y / jnp.maximum(1.0, rms / clipping_threshold)
            return y, v_row, v_col, v

        out = jax.tree.map(one, plans, updates, state.v_row, state.v_col, state.v)
        y, v_row, v_col, v = _unzip(plans, out, 4)
        return y, FactoredRmsT5xState(optax.safe_increment(state.count), v_row, v_col, v)

    return optax.GradientTransformation(init, update)


def scale_by_param_rms_t5x(logical_axes: Any, *, epsilon2: float = 1e-3
                           ) -> optax.GradientTransformation:
    """Updates times ``max(rms(param), epsilon2)``, the RMS per batch slice (per layer), as t5x's
    ``multiply_by_parameter_scale``. Needs ``params`` in ``update``."""
    axes_by_path = _axes_by_path(logical_axes)

    def update(updates: Any, state: optax.EmptyState, params: Any = None
               ) -> tuple[Any, optax.EmptyState]:
        if params is None:
            raise ValueError("params=None: t5x's Adafactor scales by the parameters; pass them to "
                             "optimizer.update(grads, state, params)")
        plans = _factorings(axes_by_path, params)  # only plan.batch matters here

        def one(plan: Factoring, update: jax.Array, param: jax.Array) -> jax.Array:
            param = param.astype(jnp.float32)
            rms = jnp.sqrt(jnp.mean(param * param, axis=plan.averaging(param.ndim), keepdims=True))
            return update * jnp.maximum(rms, epsilon2)
        return jax.tree.map(one, plans, updates, params), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def _axes_by_path(logical_axes: Any) -> dict[tuple[Any, ...], tuple[Optional[str], ...]]:
    """Logical names per parameter path (plain names), from a tree of ``PartitionSpec``."""
    leaves = jax.tree_util.tree_flatten_with_path(
        logical_axes, is_leaf=lambda x: isinstance(x, (PartitionSpec, tuple)))[0]
    by_path = {}
    for path, axes in leaves:
        if not isinstance(axes, (PartitionSpec, tuple)):
            raise ValueError(f"logical_axes of {_path_str(path)}: {axes!r} is not a PartitionSpec "
                             "of logical names; pass param_logical_axes(model_config)")
        by_path[tuple(_key_name(key) for key in path)] = tuple(axes)
    return by_path


def _factorings(axes_by_path: dict[tuple[Any, ...], tuple[Optional[str], ...]], params: Any,
                min_dim_size_to_factor: int = 128) -> Any:
    """``Factoring`` per parameter (a tree shaped like ``params``). Runs at trace time."""
    def one(path: tuple[Any, ...], param: Any) -> Factoring:
        axes = axes_by_path.get(tuple(_key_name(key) for key in path))
        if axes is None:
            raise ValueError(f"logical_axes: no entry for parameter {_path_str(path)}; pass "
                             "param_logical_axes(model_config), the tree under 'params'")
        return factoring(_path_str(path), param.shape, axes, min_dim_size_to_factor)
    return jax.tree_util.tree_map_with_path(one, params)


def _unzip(plans: Any, out: Any, n: int) -> list[Any]:
    """``n`` trees shaped like ``plans`` from one tree of ``n``-tuples shaped like it."""
    return [jax.tree.map(lambda _, values: values[i], plans, out) for i in range(n)]


def _path_str(path: tuple[Any, ...]) -> str:
    return "/".join(str(_key_name(key)) for key in path)


def weight_decay_mask(params: Any) -> Any:
    """``True`` for parameters that weight decay applies to, by name.

    Decayed: every matmul kernel, the token embedding and an untied logits head. Not decayed:
    RMSNorm ``scale`` (decay would pull the gain towards 0 rather than regularise) and the relative
    position tables ``rel_embedding`` (a per-head additive bias, like a bias vector). Names, not
    ranks, decide, because scanned layers give norm scales a leading ``layers`` axis (rank 2).

    Args:
      params: the parameter tree (or its abstract shapes).

    Returns:
      A tree of Python bools with the structure of ``params``.
    """
    def decays(path: tuple[Any, ...], _: Any) -> bool:
        return _key_name(path[-1]) not in NO_DECAY_NAMES if path else True
    return jax.tree_util.tree_map_with_path(decays, params)


def _key_name(key: Any) -> Any:
    """The plain name of one pytree path entry (dict key, attribute or index)."""
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return getattr(key, attribute)
    return key


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}={value!r}: must be an integer >= {minimum}")
