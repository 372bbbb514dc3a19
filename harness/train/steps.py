"""Train, eval and score steps: pure functions that the caller jits (STYLE.md B2.5).

::

    # train_step(state, batch, rng) -> (state, metrics)
    train_step = make_train_step(model, optimizer, schedule)
    step = jax.jit(train_step, in_shardings=(state_shardings, batch_sharding, replicated),
                   out_shardings=(state_shardings, None), donate_argnums=0)

All three share one loss: ``models.losses.cross_entropy_with_z_loss`` (token cross-entropy plus the
study's z-loss, 1e-4 * log(Z)^2) under ``decoder_loss_weights`` (PAPER.md 2.1). Batches are seqio
model features (``decoder_*``, ``encoder_*``); a batch without ``decoder_loss_weights`` trains on
its non-padding targets.

This module imports neither TensorFlow nor seqio: the steps run on machines that have only JAX.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from harness.train.state import TrainState
from models import losses
from models import sharding as shd
from models.transformer import Transformer

Array = jax.Array
Batch = Mapping[str, Array]
Metrics = dict[str, Array]
TrainStep = Callable[[TrainState, Batch, Array], tuple[TrainState, Metrics]]

# "sum": gradient of the summed token loss (t5x loss_normalizing_factor=None, the study's setting,
# PAPER.md 2.1). "tokens": gradient of the mean loss per trained token.
LOSS_NORMALIZATIONS = ("sum", "tokens")


def make_train_step(model: Transformer, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, *, z_loss: float = losses.Z_LOSS,
                    loss_normalization: str = "sum", num_microbatches: int = 1,
                    enable_dropout: bool = True) -> TrainStep:
    """Builds ``train_step(state, batch, rng) -> (state, metrics)``.

    The step computes the gradient of the summed loss over the batch, in ``num_microbatches``
    sequential pieces (``jax.lax.scan``; summed losses, gradients and weights are accumulated, then
    normalised once, so accumulation equals the big batch up to float reassociation). With
    ``"tokens"`` it divides the gradient by the number of trained tokens. Then it applies
    ``optimizer``. If the loss or the global gradient norm is not finite, the state comes back
    unchanged (step included) with ``metrics["finite"] == 0``, so the loop can stop without writing
    a bad state.

    Microbatch ``m`` takes rows ``m, m + n, m + 2n, ...`` (``n = num_microbatches``), not a
    contiguous block: with the batch sharded in contiguous blocks over the ``data`` axis, every
    microbatch then has the same number of rows on every device and needs no communication, as long
    as the per-device batch is a multiple of ``n``.

    Dropout (when ``enable_dropout`` and ``config.dropout_rate > 0``) draws from
    ``fold_in(fold_in(rng, state.step), microbatch index)``: a new mask every step and microbatch,
    and the same mask for the same (rng, step), so a resumed run repeats the original.

    Args:
      model: the Transformer (its own ``enable_dropout`` is overridden here).
      optimizer: from ``harness.train.optim.make_optimizer``; the state must have been created with it.
      schedule: the optimizer's schedule; only logged (``metrics["learning_rate"]``).
      z_loss: coefficient of log(Z)^2 (1e-4 in the study).
      loss_normalization: one of ``LOSS_NORMALIZATIONS``.
      num_microbatches: gradient-accumulation pieces; must divide the batch size.
      enable_dropout: apply the config's dropout (a no-op at ``dropout_rate=0``, the study's
        pretraining; 0.1 in multitask finetuning).

    Returns:
      ``train_step``, pure and unjitted. Its metrics are float32 scalars:
      ``loss`` (cross-entropy + z-loss per trained token), ``z_loss`` (per trained token),
      ``accuracy`` (argmax == target per trained token), ``grad_norm`` (global norm of the gradient
      given to the optimizer, after normalisation), ``learning_rate`` (``schedule(state.step)``),
      ``tokens_seen`` (non-padding decoder targets + non-padding encoder inputs: the study matches
      compute on tokens seen), ``tokens_trained`` (sum of loss weights) and ``finite`` (1 or 0).

    Raises:
      ValueError: for a bad ``loss_normalization`` or ``num_microbatches`` (now), or a batch size
        that ``num_microbatches`` does not divide (when the step is traced).
    """
    if loss_normalization not in LOSS_NORMALIZATIONS:
        raise ValueError(f"loss_normalization={loss_normalization!r}: must be one of "
                         f"{list(LOSS_NORMALIZATIONS)}")
    if (not isinstance(num_microbatches, int) or isinstance(num_microbatches, bool)
            or num_microbatches < 1):
        raise ValueError(f"num_microbatches={num_microbatches!r}: must be a positive integer")
    train_model = model.clone(enable_dropout=enable_dropout)

    def summed_loss(params: Any, batch: Batch, rng: Array) -> tuple[Array, losses.LossTerms]:
        rngs = {"dropout": rng} if enable_dropout else None
        terms = _loss_terms(train_model, params, batch, z_loss, rngs)
        return terms.loss, terms

    grad_fn = jax.grad(summed_loss, has_aux=True)

    def train_step(state: TrainState, batch: Batch, rng: Array) -> tuple[TrainState, Metrics]:
        step_rng = jax.random.fold_in(rng, state.step)
        if num_microbatches == 1:
            grads, terms = grad_fn(state.params, batch, jax.random.fold_in(step_rng, 0))
        else:
            grads, terms = _accumulate(grad_fn, state.params, batch, step_rng, num_microbatches)

        # Normalise once, after accumulation: sum of microbatch sums / total trained tokens.
        denominator = jnp.where(terms.weight > 0, terms.weight, 1.0)
        if loss_normalization == "tokens":
            grads = jax.tree.map(lambda g: g / denominator.astype(g.dtype), grads)
        grad_norm = optax.global_norm(grads).astype(jnp.float32)
        finite = jnp.isfinite(terms.loss) & jnp.isfinite(grad_norm)

        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        updated = TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                             opt_state=opt_state)
        # Non-finite step: keep the old state (an elementwise select: no communication, and the
        # buffers keep the shardings of the state).
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)

        metrics = {
            "loss": terms.loss / denominator,
            "z_loss": terms.z_loss / denominator,
            "accuracy": terms.correct / denominator,
            "grad_norm": grad_norm,
            "learning_rate": jnp.asarray(schedule(state.step), jnp.float32),
            "tokens_seen": tokens_seen(batch),
            "tokens_trained": terms.weight,
            "finite": finite.astype(jnp.float32),
        }
        return new_state, {name: value.astype(jnp.float32) for name, value in metrics.items()}

    return train_step


def make_eval_step(model: Transformer,
                   z_loss: float = losses.Z_LOSS) -> Callable[[Any, Batch], Metrics]:
    """Builds ``eval_step(params, batch) -> sums``, the training loss without dropout.

    Returns sums, so that the caller can add them over batches (and hosts) and divide at the end
    (``eval_means``): ``loss_sum`` (cross-entropy + z-loss), ``z_loss_sum``, ``correct_sum`` and
    ``weight_sum`` (trained tokens), float32 scalars.
    """
    eval_model = model.clone(enable_dropout=False)

    def eval_step(params: Any, batch: Batch) -> Metrics:
        terms = _loss_terms(eval_model, params, batch, z_loss, None)
        return {"loss_sum": terms.loss, "z_loss_sum": terms.z_loss,
                "correct_sum": terms.correct, "weight_sum": terms.weight}

    return eval_step


def eval_means(sums: Mapping[str, Any]) -> dict[str, float]:
    """Per-token ``loss``, ``z_loss`` and ``accuracy`` from (summed) ``eval_step`` outputs."""
    weight = max(float(sums["weight_sum"]), 1e-30)
    return {"loss": float(sums["loss_sum"]) / weight, "z_loss": float(sums["z_loss_sum"]) / weight,
            "accuracy": float(sums["correct_sum"]) / weight}


def make_score_step(model: Transformer) -> Callable[[Any, Batch], tuple[Array, Array]]:
    """Builds ``score_step(params, batch) -> (log_likelihood [b], is_greedy [b])``.

    Scores the weighted decoder targets of each row (``models.losses.score_targets``): what rank
    classification and lm-evaluation-harness's ``loglikelihood`` need. Build the rows exactly as in
    training (for the non-causal decoder, ``decoder_causal_attention`` over the context + 1), with
    loss weights on the continuation only, and unpacked (STYLE.md B5.5).
    """
    score_model = model.clone(enable_dropout=False)

    def score_step(params: Any, batch: Batch) -> tuple[Array, Array]:
        logits = score_model.apply({"params": params}, batch)
        return losses.score_targets(logits, batch["decoder_target_tokens"], _loss_weights(batch))

    return score_step


def tokens_seen(batch: Batch) -> Array:
    """Non-padding decoder targets plus non-padding encoder inputs, float32 scalar."""
    seen = jnp.sum(batch["decoder_target_tokens"] > 0, dtype=jnp.float32)
    if "encoder_input_tokens" in batch:
        seen = seen + jnp.sum(batch["encoder_input_tokens"] > 0, dtype=jnp.float32)
    return seen


# -------------------------------------------------------------------------------------------------


def _loss_weights(batch: Batch) -> Array:
    """``decoder_loss_weights``, or the non-padding targets when the batch has none."""
    if "decoder_loss_weights" in batch:
        return batch["decoder_loss_weights"]
    return batch["decoder_target_tokens"] > 0


def _loss_terms(model: Transformer, params: Any, batch: Batch, z_loss: float,
                rngs: Any) -> losses.LossTerms:
    """The shared loss: summed terms of one batch (the train, eval and score steps' one forward)."""
    logits = model.apply({"params": params}, batch, rngs=rngs)  # [b, L, vocab] float32
    return losses.cross_entropy_with_z_loss(logits, batch["decoder_target_tokens"],
                                            _loss_weights(batch), z_loss)


def _accumulate(grad_fn: Callable[..., Any], params: Any, batch: Batch, step_rng: Array,
                num_microbatches: int) -> tuple[Any, losses.LossTerms]:
    """Summed gradients and loss terms over ``num_microbatches`` strided pieces of ``batch``."""

    def split(x: Array) -> Array:
        rows = x.shape[0]
        if rows % num_microbatches:
            raise ValueError(f"batch size {rows}: num_microbatches={num_microbatches} must divide "
                             "it")
        # [rows] -> [rows / n, n] -> [n, rows / n]: microbatch m holds rows m, m + n, ...
        x = x.reshape((rows // num_microbatches, num_microbatches) + x.shape[1:])
        x = jnp.swapaxes(x, 0, 1)
        return nn.with_logical_constraint(x, (None, shd.BATCH) + (None,) * (x.ndim - 2))

    microbatches = jax.tree.map(split, dict(batch))

    def body(carry: tuple[Any, losses.LossTerms],
             inputs: tuple[Batch, Array]) -> tuple[tuple[Any, losses.LossTerms], None]:
        grads_sum, terms_sum = carry
        microbatch, index = inputs
        grads, terms = grad_fn(params, microbatch, jax.random.fold_in(step_rng, index))
        return (jax.tree.map(jnp.add, grads_sum, grads),
                jax.tree.map(jnp.add, terms_sum, terms)), None

    zero_terms = losses.LossTerms(*(jnp.zeros((), jnp.float32) for _ in losses.LossTerms._fields))
    init = (jax.tree.map(jnp.zeros_like, params), zero_terms)
    (grads, terms), _ = jax.lax.scan(body, init, (microbatches, jnp.arange(num_microbatches)))
    return grads, terms
