"""Analytic model FLOPs (PERF.md "Counting model FLOPs"): training = 3 x forward.

Matmul FLOPs count 2 per multiply-add over every weight matrix a token passes through, including the
output projection (``2 * d_model * vocab`` per predicted token, tied or not); the embedding lookup is
free. Attention adds ``4 * d_attn`` per (query, key) pair and layer (QK^T and AV). Two conventions:

  causal-aware  only the pairs the mask allows: a causal stack counts S^2 / 2 pairs, a prefix of length
                P counts P^2 + (S^2 - P^2) / 2.
  full ("nc")   every pair of the S x S matrix, the convention of papers that ignore the mask.

Norms, softmax and the position bias are not counted (they are a few percent at the study's widths).
"""

from __future__ import annotations

import dataclasses

from models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class FlopCount:
    """Training FLOPs for one example, and the tokens it contains."""

    matmul: float            # weight matmuls, forward + backward
    attention: float         # causal-aware attention pairs, forward + backward
    attention_full: float    # full-matrix attention, forward + backward
    tokens: int              # tokens seen (inputs + targets)

    @property
    def total(self) -> float:
        return self.matmul + self.attention

    @property
    def total_full(self) -> float:
        return self.matmul + self.attention_full

    @property
    def per_token(self) -> float:
        return self.total / self.tokens

    @property
    def per_token_full(self) -> float:
        return self.total_full / self.tokens


def layer_matmul_params(config: ModelConfig, cross_attention: bool = False) -> int:
    """Weights of one block that every token multiplies (attention q,k,v,o + the 3 GEGLU matrices)."""
    d, d_attn = config.d_model, config.attention_dim
    params = 4 * d * d_attn + 3 * d * config.d_ff
    if cross_attention:
        params += 4 * d * d_attn
    return params


def decoder_only_flops(config: ModelConfig, length: int, prefix_length: int = 0) -> FlopCount:
    """Training FLOPs of one ``length``-token sequence through a decoder-only model.

    Args:
      config: a "cd" or "nd" config.
      length: tokens in the sequence (626 in the study).
      prefix_length: bidirectional prefix (0 for the causal decoder).
    """
    if config.is_encoder_decoder:
        raise ValueError("decoder_only_flops: use encoder_decoder_flops for architecture 'ed'")
    if not 0 <= prefix_length <= length:
        raise ValueError(f"prefix_length={prefix_length}: must be in [0, length={length}]")
    matmul_forward = 2 * length * (config.num_layers * layer_matmul_params(config)
                                   + config.d_model * config.vocab_size)
    pairs = prefix_length ** 2 + (length ** 2 - prefix_length ** 2) / 2
    per_pair = 4 * config.attention_dim * config.num_layers
    return FlopCount(matmul=3 * matmul_forward, attention=3 * per_pair * pairs,
                     attention_full=3 * per_pair * length ** 2, tokens=length)


def encoder_decoder_flops(config: ModelConfig, inputs_length: int,
                          targets_length: int) -> FlopCount:
    """Training FLOPs of one example through the encoder-decoder (PERF.md formula).

    matmul_fwd = 2 Ti (encoder params + cross-attention K,V params)
               + 2 Tt (rest of decoder params + d V)
    attn_fwd   = Le 4 Ti^2 d_attn + Ld 4 Tt^2 d_attn / 2 + Ld 4 Tt Ti d_attn
    """
    if not config.is_encoder_decoder:
        raise ValueError("encoder_decoder_flops: needs architecture 'ed'")
    d, d_attn = config.d_model, config.attention_dim
    enc_layers, dec_layers = config.num_encoder_layers, config.num_layers
    cross_kv = dec_layers * 2 * d * d_attn
    encoder = enc_layers * layer_matmul_params(config)
    decoder_rest = dec_layers * layer_matmul_params(config, cross_attention=True) - cross_kv
    matmul_forward = (2 * inputs_length * (encoder + cross_kv)
                      + 2 * targets_length * (decoder_rest + d * config.vocab_size))
    encoder_attention = enc_layers * 4 * inputs_length ** 2 * d_attn
    cross = dec_layers * 4 * targets_length * inputs_length * d_attn
    decoder_full = dec_layers * 4 * targets_length ** 2 * d_attn
    return FlopCount(
        matmul=3 * matmul_forward,
        attention=3 * (encoder_attention + cross + decoder_full / 2),
        attention_full=3 * (encoder_attention + cross + decoder_full),
        tokens=inputs_length + targets_length)
