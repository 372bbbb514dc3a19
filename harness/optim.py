"""Learning-rate schedules and optimizers of the study (PAPER.md 2.1, Table 2).

The optimizer belongs to the harness, not the model (STYLE.md B4). Both factories take plain
arguments, so the run config can call them with its own fields::

    schedule = make_schedule("rsqrt", 1.0, warmup_steps=10_000, total_steps=131_072)  # pretraining
    schedule = make_schedule("constant", 1e-3, 0, 10_000)                                # MTF
    optimizer = make_optimizer("adafactor", schedule)                                   # the study

Schedules map the optimizer's own step count (an int32 array, 0 on the first update) to a float32
learning rate, so they can be jitted, and ``harness.steps`` logs ``schedule(state.step)``.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("rsqrt", "constant", "cosine")
OPTIMIZERS = ("adafactor", "adamw")

# Parameter names that AdamW never decays (see ``weight_decay_mask``): RMSNorm scales and the T5
# relative-position bias tables. Everything else (matmul kernels, the token embedding, an untied
# logits head) is decayed.
NO_DECAY_NAMES = ("scale", "rel_embedding")


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


def make_optimizer(name: str, schedule: optax.Schedule, *, decay_rate: float = 0.8,
                   weight_decay: float = 0.0, beta1: float = 0.9, beta2: float = 0.999,
                   grad_clip: Optional[float] = None) -> optax.GradientTransformation:
    """The study's Adafactor, or AdamW, optionally after global-norm gradient clipping.

    ``"adafactor"`` is t5x's Adafactor as the study configured it (PAPER.md 2.1): ``decay_rate``
    0.8 (second-moment decay ``1 - (step + 1) ** -0.8``), ``step_offset`` 0, factored second
    moments, ``multiply_by_parameter_scale=True`` (updates scaled by ``max(rms(param), 1e-3)``),
    update clipping at RMS 1.0, no momentum (t5x ``beta1=None``), ``epsilon1`` 1e-30, no weight
    decay. It is ``optax.adafactor`` with those settings, which runs the same arithmetic per array
    but chooses *what* to factor and average over differently:

    * t5x factors by the parameter's logical axes (``standard_logical_factor_rules``: embed = row;
      heads, kv, mlp, vocab = column; layers = batch). optax factors the two largest dimensions,
      and only when both are >= 128 (``min_dim_size_to_factor``). MLP kernels
      ``[layers, embed, mlp]`` and the embedding come out the same. Attention kernels
      ``[layers, embed, heads, kv]`` differ: t5x factors embed against heads x kv, while optax,
      whose two largest dimensions are embed and a 64-wide heads or kv axis, keeps a full
      (unfactored) second moment. Their updates are those of unfactored Adafactor, and they cost
      one more float32 copy of the attention weights (about a third of the study's 4.8B
      parameters).
    * t5x treats the scanned ``layers`` axis as a batch axis, so the parameter scale and the update
      clipping are computed per layer. optax computes one parameter RMS and one clipping factor per
      array, that is over the whole stack of layers.
    * Relative-position tables and norm scales are unfactored in both.

    ``"adamw"``: ``optax.adamw`` with the schedule, ``beta1``, ``beta2``, eps 1e-8 and decoupled
    weight decay (``param -= lr * (adam_update + weight_decay * param)``) on every parameter except
    RMSNorm scales and relative-position tables (``weight_decay_mask``).

    Args:
      name: one of ``OPTIMIZERS``.
      schedule: learning rate per step (``make_schedule``).
      decay_rate: Adafactor's second-moment decay exponent.
      weight_decay: decay rate; AdamW multiplies it by the learning rate, Adafactor (as t5x) does
        not (``param *= 1 - weight_decay``). Same mask for both. 0 disables it.
      beta1: AdamW first-moment decay (Adafactor: no momentum, ignored).
      beta2: AdamW second-moment decay (ignored by Adafactor, which uses ``decay_rate``).
      grad_clip: if set, clip gradients to this global norm before the optimizer.

    Returns:
      The ``optax.GradientTransformation``; it needs ``params`` in ``update``.

    Raises:
      ValueError: for an unknown name or out-of-range numbers.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer={name!r}: unknown optimizer; choose one of {list(OPTIMIZERS)}")
    if not float(weight_decay) >= 0.0:
        raise ValueError(f"weight_decay={weight_decay!r}: must be >= 0")
    if grad_clip is not None and not float(grad_clip) > 0.0:
        raise ValueError(f"grad_clip={grad_clip!r}: must be > 0, or None for no clipping")
    if name == "adafactor":
        if not 0.0 < float(decay_rate) <= 1.0:
            raise ValueError(f"decay_rate={decay_rate!r}: must be in (0, 1]")
        optimizer = optax.adafactor(
            learning_rate=schedule, min_dim_size_to_factor=128, decay_rate=decay_rate,
            decay_offset=0, multiply_by_parameter_scale=True, clipping_threshold=1.0,
            momentum=None, eps=1e-30, factored=True,
            weight_decay_rate=float(weight_decay) if weight_decay else None,
            weight_decay_mask=weight_decay_mask if weight_decay else None)
    else:
        for field, value in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= float(value) < 1.0:
                raise ValueError(f"{field}={value!r}: must be in [0, 1)")
        optimizer = optax.adamw(learning_rate=schedule, b1=beta1, b2=beta2, eps=1e-8,
                                weight_decay=float(weight_decay), mask=weight_decay_mask)
    if grad_clip is not None:
        optimizer = optax.chain(optax.clip_by_global_norm(float(grad_clip)), optimizer)
    return optimizer


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
