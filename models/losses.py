"""Training loss and target scoring, shared by the train, eval and score steps.

The study trains with token cross-entropy plus t5x's auxiliary z-loss, ``1e-4 * log(Z)^2`` per token,
which keeps the softmax normaliser near 1 (PAPER.md 2.1, Table 2), under ``decoder_loss_weights``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

Z_LOSS = 1e-4  # PAPER.md 2.1


class LossTerms(NamedTuple):
    """Weighted sums over a batch; divide by ``weight`` for per-token means."""

    loss: Array      # cross-entropy + z-loss, summed over weighted tokens
    z_loss: Array    # the z-loss part alone
    weight: Array    # sum of loss weights (number of trained tokens)
    correct: Array   # weighted count of tokens whose argmax equals the target


def cross_entropy_with_z_loss(logits: Array, targets: Array, weights: Array,
                              z_loss: float = Z_LOSS) -> LossTerms:
    """Token cross-entropy with z-loss under loss weights.

    Args:
      logits: ``[batch, length, vocab]`` (any float dtype; computed in float32).
      targets: ``[batch, length]`` integer targets.
      weights: ``[batch, length]`` loss weights (``decoder_loss_weights``).
      z_loss: coefficient of ``log(Z)^2``.

    Returns:
      ``LossTerms`` of float32 scalars.
    """
    logits = logits.astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    # logsumexp as jax.nn.logsumexp computes it, with its maximum kept for the accuracy: a target
    # whose logit is the maximum is the argmax (up to exact ties, where argmax would take the first
    # of them). A variadic argmax reduction over the vocabulary took 172 ms of a 2.9 s small-preset
    # step on a 2-core CPU (jax.profiler), for a metric.
    peak = jax.lax.stop_gradient(jnp.max(logits, axis=-1))
    log_z = jnp.log(jnp.sum(jnp.exp(logits - peak[..., None]), axis=-1)) + peak
    target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    token_z_loss = z_loss * jnp.square(log_z)
    token_loss = log_z - target_logits + token_z_loss
    correct = (target_logits >= peak).astype(jnp.float32)
    return LossTerms(loss=jnp.sum(token_loss * weights), z_loss=jnp.sum(token_z_loss * weights),
                     weight=jnp.sum(weights), correct=jnp.sum(correct * weights))


def token_log_probs(logits: Array, targets: Array) -> Array:
    """Per-token ``log p(target)`` in float32, ``[batch, length]``."""
    logits = logits.astype(jnp.float32)
    target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return target_logits - jax.nn.logsumexp(logits, axis=-1)


def score_targets(logits: Array, targets: Array, weights: Array) -> tuple[Array, Array]:
    """Log-likelihood of the weighted targets, and whether greedy decoding would produce them.

    This is what rank classification and lm-evaluation-harness's ``loglikelihood`` need.

    Returns:
      ``(log_likelihood [batch], is_greedy [batch] bool)``.
    """
    weights = weights.astype(jnp.float32)
    log_likelihood = jnp.sum(token_log_probs(logits, targets) * weights, axis=-1)
    mismatched = (jnp.argmax(logits, axis=-1) != targets) & (weights > 0)
    return log_likelihood, ~jnp.any(mismatched, axis=-1)
