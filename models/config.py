"""Model configuration: one frozen dataclass for the whole Transformer family, plus named presets.

The three architectures of the study (PAPER.md 1.1) are one module wired three ways:

  ``cd``  causal decoder-only: fully causal self-attention.
  ``nd``  non-causal (prefix) decoder-only: bidirectional attention over the prefix marked by
          ``decoder_causal_attention`` (seqio's name; 1 means *bidirectional*), causal elsewhere.
  ``ed``  encoder-decoder: a bidirectional encoder and a causal decoder with cross-attention.

``cd`` and ``nd`` share one parameter tree, so a checkpoint of one loads into the other (the study's
adaptations switch the mask, PAPER.md 1.3).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

ARCHITECTURES = {
    "cd": "causal decoder-only",
    "nd": "non-causal (prefix) decoder-only",
    "ed": "encoder-decoder",
}
DECODER_ONLY = ("cd", "nd")

# How relative positions are bucketed inside the non-causal decoder's bidirectional prefix.
#   "causal"         the study's behaviour (PAPER.md 6.4): every layer buckets with bidirectional=False,
#                    so a key to the right of the query falls into bucket 0, like distance 0.
#   "bidirectional"  pairs inside the prefix use the encoder's bidirectional buckets; all other
#                    pairs keep causal buckets.
PREFIX_POSITION_BUCKETS = ("causal", "bidirectional")

# Rematerialisation of the scanned block in the backward pass.
#   "none"     keep every activation (fastest, most memory).
#   "full"     recompute the whole block (least memory).
#   "minimal"  save matmul outputs without a batch dimension, recompute the rest
#              (jax.checkpoint_policies.dots_with_no_batch_dims_saveable).
REMAT_POLICIES = ("none", "full", "minimal")

DTYPES = ("float32", "bfloat16", "float16")

# How attention is computed; every choice computes the same function.
#   "einsum"  the model's own einsums and float32 softmax; supports everything (KV caches,
#             dropout on attention probabilities).
#   "xla"     ``jax.nn.dot_product_attention`` with XLA's implementation.
#   "cudnn"   ``jax.nn.dot_product_attention`` on cuDNN's fused (flash) kernels: NVIDIA GPUs only.
# The fused choices take the logit bias (mask + relative positions) in the compute dtype, and fall
# back to "einsum" for cached decoding and for training with attention-probability dropout.
ATTENTION_IMPLS = ("einsum", "xla", "cudnn")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of a T5.1.1-style Transformer (PAPER.md 2.1).

    Attributes:
      architecture: one of ``ARCHITECTURES`` ("cd", "nd", "ed").
      vocab_size: embedding rows; the T5 SentencePiece vocabulary padded to 32,128.
      d_model: residual stream width (``emb_dim`` in t5x).
      num_heads: attention heads.
      head_dim: width of each head (t5x ``head_dim``, HF ``d_kv``). None derives it as
        d_model / num_heads, which must then divide exactly; an explicit value (T5 v1.1 small has 6
        heads of 64 on d_model 512) lets heads x head_dim differ from d_model.
      d_ff: hidden width of the GEGLU MLP (``mlp_dim``).
      num_layers: decoder layers (the only stack of a decoder-only model).
      num_encoder_layers: encoder layers; must be 0 for decoder-only and >= 1 for "ed".
      relpos_num_buckets: T5 relative-position buckets (32 in the study).
      relpos_max_distance: distance at which the log-spaced buckets saturate (128 in the study).
      prefix_position_buckets: "causal" or "bidirectional"; see ``PREFIX_POSITION_BUCKETS``. Only the
        "nd" architecture reads it.
      tie_embeddings: logits through the input embedding, scaled by 1/sqrt(d_model) (the study); if
        False, a separate unscaled ``logits_dense`` head (the T5 v1.1 / T0 checkpoint layout).
      dropout_rate: dropout on embeddings, attention probabilities, residual branches and the MLP
        hidden layer (0.0 in pretraining, 0.1 in multitask finetuning, PAPER.md 2.1).
      dtype: compute dtype (activations); bfloat16 in the study.
      param_dtype: storage dtype of the parameters; float32 in the study.
      remat_policy: see ``REMAT_POLICIES``.
      scan_unroll: layers per iteration of the scan over layers (``nn.scan``'s ``unroll``); at
        ``num_layers`` or more the stack compiles as straight-line code. The parameter tree is the
        same either way (one array per weight with a leading layers axis). Unrolling lets XLA fuse
        across layers and drops the loop's per-iteration slicing and stacking of weights and saved
        activations: the ``mini`` preset's training step runs 1.2-1.3x faster on a 2-core CPU.
        Compile time grows with the unrolled depth; presets set it where it was measured to pay
        (``_EXECUTION``).
      layer_norm_epsilon: RMSNorm epsilon (1e-6 in T5).
      attention_impl: see ``ATTENTION_IMPLS``; how attention runs, not what it computes.
    """

    architecture: str
    vocab_size: int
    d_model: int
    num_heads: int
    d_ff: int
    num_layers: int
    head_dim: Optional[int] = None
    num_encoder_layers: int = 0
    relpos_num_buckets: int = 32
    relpos_max_distance: int = 128
    prefix_position_buckets: str = "causal"
    tie_embeddings: bool = True
    dropout_rate: float = 0.0
    dtype: str = "bfloat16"
    param_dtype: str = "float32"
    remat_policy: str = "none"
    scan_unroll: int = 1
    layer_norm_epsilon: float = 1e-6
    attention_impl: str = "einsum"

    def __post_init__(self) -> None:
        _check_choice("architecture", self.architecture, tuple(ARCHITECTURES))
        for name in ("vocab_size", "d_model", "num_heads", "d_ff", "num_layers",
                     "relpos_num_buckets", "relpos_max_distance", "scan_unroll"):
            _check_positive_int(name, getattr(self, name))
        if self.head_dim is None:
            if self.d_model % self.num_heads:
                raise ValueError(
                    f"num_heads={self.num_heads}: must divide d_model={self.d_model} (or set "
                    "head_dim explicitly)")
            object.__setattr__(self, "head_dim", self.d_model // self.num_heads)
        _check_positive_int("head_dim", self.head_dim)
        if not isinstance(self.num_encoder_layers, int) or isinstance(self.num_encoder_layers, bool):
            raise ValueError(f"num_encoder_layers={self.num_encoder_layers!r}: must be an integer")
        if self.architecture == "ed" and self.num_encoder_layers < 1:
            raise ValueError(
                f"num_encoder_layers={self.num_encoder_layers}: the encoder-decoder ('ed') needs at "
                "least 1 encoder layer")
        if self.architecture in DECODER_ONLY and self.num_encoder_layers != 0:
            raise ValueError(
                f"num_encoder_layers={self.num_encoder_layers}: decoder-only architecture "
                f"{self.architecture!r} has no encoder; set it to 0")
        if self.relpos_num_buckets % 2:
            raise ValueError(
                f"relpos_num_buckets={self.relpos_num_buckets}: must be even (bidirectional buckets "
                "split it between the two directions)")
        _check_choice("prefix_position_buckets", self.prefix_position_buckets, PREFIX_POSITION_BUCKETS)
        _check_choice("remat_policy", self.remat_policy, REMAT_POLICIES)
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("param_dtype", self.param_dtype, DTYPES)
        _check_choice("attention_impl", self.attention_impl, ATTENTION_IMPLS)
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(f"tie_embeddings={self.tie_embeddings!r}: must be true or false")
        if not 0.0 <= float(self.dropout_rate) < 1.0:
            raise ValueError(f"dropout_rate={self.dropout_rate!r}: must be in [0, 1)")
        if not float(self.layer_norm_epsilon) > 0.0:
            raise ValueError(f"layer_norm_epsilon={self.layer_norm_epsilon!r}: must be > 0")

    @property
    def is_encoder_decoder(self) -> bool:
        return self.architecture == "ed"

    @property
    def attention_dim(self) -> int:
        """Width of the concatenated heads (``num_heads * head_dim``)."""
        return self.num_heads * self.head_dim

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ModelConfig":
        """Builds a config from a mapping, rejecting unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown model config key(s) {unknown}; allowed keys are {sorted(known)}")
        return cls(**values)


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r}: must be one of {list(allowed)}")


def _check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r}: must be a positive integer")


# --------------------------------------------------------------------------------------------------
# Presets. Widths follow T5 v1.1 (small/base/large) and the study (PAPER.md 2.1, Table 1). A
# decoder-only preset of L layers becomes an L+L encoder-decoder, the study's compute matching
# (PAPER.md 1.1): about the same FLOPs per token seen, about twice the parameters.
# --------------------------------------------------------------------------------------------------

_WIDTHS: dict[str, dict[str, int]] = {
    # The shared test fixture (STYLE.md B3): 2 layers, d_model 32, 2 heads, vocab 128 with sentinels.
    "tiny": dict(vocab_size=128, d_model=32, num_heads=2, head_dim=16, d_ff=64, num_layers=2),
    # The laptop grid on the built-in world (experiments/tiny.yaml, objectives/WORLD.md).
    "mini": dict(vocab_size=1152, d_model=128, num_heads=4, head_dim=32, d_ff=512, num_layers=4),
    # CPU benchmarks.
    "small": dict(vocab_size=32128, d_model=512, num_heads=6, head_dim=64, d_ff=1024, num_layers=8),
    "base": dict(vocab_size=32128, d_model=768, num_heads=12, head_dim=64, d_ff=2048, num_layers=12),
    "large": dict(vocab_size=32128, d_model=1024, num_heads=16, head_dim=64, d_ff=2816,
                  num_layers=24),
    # GPU benchmarks: T5 v1.1 XL's widths. Decoder-only 24 layers, about 1.2B parameters (the
    # ~1B decoder of issue [9]); the encoder-decoder is 24+24 layers.
    "xl": dict(vocab_size=32128, d_model=2048, num_heads=32, head_dim=64, d_ff=5120, num_layers=24),
    # The study's models: 4,762,357,760 (decoder-only) and 11,003,736,064 (encoder-decoder) params.
    "paper-decoder": dict(vocab_size=32128, d_model=4096, num_heads=64, head_dim=64, d_ff=10240,
                          num_layers=24),
    "paper-encdec": dict(vocab_size=32128, d_model=4096, num_heads=64, head_dim=64, d_ff=10240,
                         num_layers=24),
}
# How a preset runs, where it differs from the ModelConfig defaults (the model computed is the
# same). mini's 4 layers unrolled: measured by harness/bench/tiny_bench.py. small's 8 unrolled:
# the training step on a 2-core AVX-512 CPU 1.17x (CD), 1.12x (ND), 1.24x (ED) faster at 4 x 626
# tokens (archobj bench train --preset small [--scan-unroll 8]). xl's 24 unrolled: 1.29x the
# training step on one H200 at batch 16 and 32, with less memory (bench/gpu/).
_EXECUTION: dict[str, dict[str, Any]] = {
    "mini": dict(scan_unroll=4),
    "small": dict(scan_unroll=8),
    "xl": dict(scan_unroll=24),
}
# Presets that fix the architecture family; the others take any architecture.
_PRESET_ARCHITECTURES = {"paper-decoder": DECODER_ONLY, "paper-encdec": ("ed",)}
_DEFAULT_ARCHITECTURE = {"paper-decoder": "cd", "paper-encdec": "ed"}

PRESETS = tuple(_WIDTHS)


def preset(name: str, architecture: str | None = None, **overrides: Any) -> ModelConfig:
    """Returns the named preset as a ``ModelConfig``.

    Args:
      name: one of ``PRESETS``.
      architecture: "cd", "nd" or "ed"; defaults to "cd" (or "ed" for ``paper-encdec``).
      **overrides: any other ``ModelConfig`` field (dtype, dropout_rate, ...).

    Raises:
      ValueError: for an unknown preset, an architecture the preset does not allow, or a bad field.
    """
    if name not in _WIDTHS:
        raise ValueError(f"preset={name!r}: unknown preset; choose one of {list(PRESETS)}")
    if architecture is None:
        architecture = _DEFAULT_ARCHITECTURE.get(name, "cd")
    allowed = _PRESET_ARCHITECTURES.get(name, tuple(ARCHITECTURES))
    if architecture not in allowed:
        raise ValueError(
            f"architecture={architecture!r}: preset {name!r} allows {list(allowed)}")
    values: dict[str, Any] = dict(_WIDTHS[name], **_EXECUTION.get(name, {}),
                                  architecture=architecture)
    if architecture == "ed":
        values["num_encoder_layers"] = values["num_layers"]
    values.update(overrides)
    return ModelConfig.from_dict(values)
