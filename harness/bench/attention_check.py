"""Does a fused attention implementation compute the model's attention? The accelerator's check.

    python -m harness.bench.attention_check [--impl cudnn] [--arch cd ...]

For each architecture, on one batch with padding, two packed segments per row and (ND) a prefix,
it computes the training loss and its gradient three ways: the einsum path in float32 (the
reference), the einsum path in bfloat16, and ``attention_impl=IMPL`` in bfloat16 (cuDNN's kernels
take bf16 or fp16 only). The fused path passes when its distance from the reference is at most
twice the bf16 einsum path's own distance, plus a floor of 1e-3: it may round differently, not
compute something else. tests/test_model.py checks the ``xla`` implementation against the
einsum path exactly, in float32, on CPU; this is the same question where cuDNN exists.

Exits 1 if any architecture fails, so a device script can stop before timing a wrong kernel.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from harness.bench.train_bench import shift_right
from models import losses
from models.config import ARCHITECTURES, preset
from models.transformer import Transformer, init_params

FLOOR = 1e-3


def check_batch(arch: str, rows: int = 4, length: int = 128, vocab: int = 32128,
                seed: int = 0) -> dict[str, jnp.ndarray]:
    """Seqio-style features: each row packs two segments; the last row ends in padding."""
    rng = np.random.default_rng(seed)
    half = length // 2
    segments = np.repeat(np.arange(1, 3)[None, :], half, axis=1).reshape(1, length)
    segments = np.repeat(segments, rows, axis=0)
    segments[-1, length - length // 4:] = 0
    targets = np.where(segments > 0, rng.integers(2, vocab, (rows, length)), 0).astype(np.int32)
    batch = {"decoder_target_tokens": targets,
             "decoder_input_tokens": shift_right(targets, segments),
             "decoder_loss_weights": (targets > 0).astype(np.int32),
             "decoder_segment_ids": segments.astype(np.int32)}
    if arch == "nd":  # the first quarter of each segment is the prefix (plus one position)
        offset = np.arange(length) % half
        batch["decoder_causal_attention"] = ((offset <= half // 4) & (segments > 0)).astype(np.int32)
    if arch == "ed":
        batch["encoder_input_tokens"] = np.where(
            segments > 0, rng.integers(2, vocab, (rows, length)), 0).astype(np.int32)
        batch["encoder_segment_ids"] = batch["decoder_segment_ids"]
    return {k: jnp.asarray(v) for k, v in batch.items()}


def _loss_and_grad(config, params, batch):
    def loss_fn(p):
        return losses.cross_entropy_with_z_loss(
            Transformer(config).apply({"params": p}, batch), batch["decoder_target_tokens"],
            batch["decoder_loss_weights"]).loss
    return jax.jit(jax.value_and_grad(loss_fn))(params)


def _distance(grad, reference) -> float:
    """Largest relative L2 distance over the gradient's leaves."""
    def one(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
    return max(jax.tree.leaves(jax.tree.map(one, grad, reference)))


def check(arch: str, impl: str, model: str = "small") -> dict[str, float]:
    """Distances of the bf16 einsum path and the bf16 ``impl`` path from the f32 einsum path."""
    reference_config = preset(model, arch, dtype="float32")
    params = init_params(reference_config, jax.random.key(0))
    batch = check_batch(arch, vocab=reference_config.vocab_size)
    loss, grad = _loss_and_grad(reference_config, params, batch)
    figures = {"loss_f32": float(loss)}
    for name, impl_name in (("einsum", "einsum"), ("fused", impl)):
        config = preset(model, arch, dtype="bfloat16", attention_impl=impl_name)
        other_loss, other_grad = _loss_and_grad(config, params, batch)
        figures[f"{name}_loss_error"] = abs(float(other_loss) - float(loss)) / abs(float(loss))
        figures[f"{name}_grad_error"] = _distance(other_grad, grad)
    figures["passed"] = all(
        figures[f"fused_{what}_error"] <= 2 * figures[f"einsum_{what}_error"] + FLOOR
        for what in ("loss", "grad"))
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", default="cudnn", choices=("xla", "cudnn"))
    parser.add_argument("--arch", action="append", choices=ARCHITECTURES)
    parser.add_argument("--model", default="small", help="model preset (default small)")
    args = parser.parse_args(argv)
    print(f"attention_impl={args.impl} vs einsum on {jax.devices()[0].device_kind}, "
          f"preset {args.model}; errors relative to the float32 einsum path", flush=True)
    failed = []
    for arch in args.arch or ARCHITECTURES:
        f = check(arch, args.impl, args.model)
        print(f"  {arch}: loss {f['loss_f32']:.4f}; loss error bf16 einsum "
              f"{f['einsum_loss_error']:.2e}, {args.impl} {f['fused_loss_error']:.2e}; gradient "
              f"error bf16 einsum {f['einsum_grad_error']:.2e}, {args.impl} "
              f"{f['fused_grad_error']:.2e}: {'ok' if f['passed'] else 'FAILED'}", flush=True)
        if not f["passed"]:
            failed.append(arch)
    if failed:
        print(f"{args.impl} attention disagrees with the einsum path for {failed}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
