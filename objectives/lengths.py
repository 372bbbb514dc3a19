"""The study's sequence lengths, in one place (PAPER.md 1.2, 2.2, 3).

Compute is matched on tokens *seen*: every pretraining objective feeds 626 tokens per sequence
(PAPER.md 1.2, "Every objective uses 626 tokens per sequence (MLM: 512 + 114)").

===========  =============================================  ====================================
what         seqio task feature lengths                     source
===========  =============================================  ====================================
CD:FLM       targets 626                                    PAPER.md 2.2 (c_dec_c4_full_lm.gin)
ND:PLM       every decoder feature 626 (+ "targets" 626)    PAPER.md 2.2, 6.4 (nc_dec_c4_prefix)
ED:PLM       encoder 626 + decoder 626: two examples a row  PAPER.md 2.2, 6.4, App. C
MLM (all 3)  inputs 512 / targets 114, from 568 raw tokens  PAPER.md 1.2, 2.2 (random_spans)
MTF          inputs 1024 / targets 256                      PAPER.md 2.1 "Batch (MTF)", 2.2
EAI-Eval     inputs 512 / targets 114                       PAPER.md 2.2 (eval_harness.gin)
T0-Eval      inputs 1024 / targets 256                      PAPER.md 2.2 (eval_t0.gin)
===========  =============================================  ====================================

Span corruption (PAPER.md 1.2): 568 raw tokens -> round(568 * 0.15) = 85 noise tokens in
round(85 / 3) = 28 spans. Inputs keep 483 tokens + 28 sentinels + EOS = 512; targets are
85 noise tokens + 28 sentinels + EOS = 114; 512 + 114 = 626.

``task_feature_lengths`` gives the same recipe at any scale (a tiny CPU run uses e.g. 64). For MLM
it picks the largest inputs length whose targets still fit, ``inputs + targets <= total_length``,
which gives exactly 512 / 114 at 626 (and 51 / 12 = 63 at 64).

This module imports neither TensorFlow nor seqio: the harness calls it before hiding GPUs from
TensorFlow. ``span_corruption_lengths`` is a pure-Python copy of t5's ``random_spans_helper``
(tests/test_objectives.py checks that they agree).
"""

from __future__ import annotations

import functools
from typing import Optional

# PAPER.md 1.2: tokens seen per sequence, every objective.
TOTAL_LENGTH = 626
# PAPER.md 1.2: span corruption parameters (t5 ``span_corruption`` defaults).
NOISE_DENSITY = 0.15
MEAN_NOISE_SPAN_LENGTH = 3.0
# PAPER.md 1.2 / 2.2: MLM lengths at the study's scale.
MLM_INPUTS_LENGTH = 512
MLM_TARGETS_LENGTH = 114
MLM_RAW_LENGTH = 568
# PAPER.md 2.1-2.2: multitask finetuning and the two evaluation suites.
MTF_LENGTHS = {"inputs": 1024, "targets": 256}
EAI_EVAL_LENGTHS = {"inputs": 512, "targets": 114}
T0_EVAL_LENGTHS = {"inputs": 1024, "targets": 256}

# Model features the t5 prefix-LM packers emit (PAPER.md 6.4). The stock PLM tasks are given all
# of them in ``sequence_length`` (AO's gins, with "targets" too, which
# ``targets_for_prefix_lm_objective`` reads): ``pack_prefix_lm_*`` asserts every value equals the
# packed length.
PLM_DECODER_ONLY_FEATURES = ("decoder_target_tokens", "decoder_input_tokens",
                             "decoder_loss_weights", "decoder_causal_attention")
PLM_ENCODER_DECODER_FEATURES = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions",
                                "decoder_target_tokens", "decoder_input_tokens",
                                "decoder_segment_ids", "decoder_positions", "decoder_loss_weights")


def _span_counts(raw_length: int, noise_density: float, mean_noise_span_length: float
                 ) -> tuple[int, int]:
    """(noise tokens, noise spans) that t5's ``random_spans_helper`` assumes for a raw length."""
    num_noise_tokens = int(round(raw_length * noise_density))
    num_noise_spans = int(round(num_noise_tokens / mean_noise_span_length))
    return num_noise_tokens, num_noise_spans


def span_corruption_lengths(inputs_length: int, noise_density: float = NOISE_DENSITY,
                            mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH
                            ) -> tuple[int, int]:
    """Raw tokens and targets length for an inputs length: t5 ``random_spans_helper``.

    Same as ``random_spans_helper(inputs_length, noise_density, mean_noise_span_length,
    extra_tokens_per_span_inputs=1, extra_tokens_per_span_targets=1)``: one sentinel per span on
    each side and one EOS each.

    Example: ``span_corruption_lengths(512) == (568, 114)`` (PAPER.md 1.2).

    Args:
      inputs_length: the encoded inputs length, EOS included.
      noise_density: fraction of raw tokens that are noise.
      mean_noise_span_length: mean noise span length.

    Returns:
      ``(raw_length, targets_length)``: the raw tokens ``split_tokens`` cuts each example to, and
      the encoded targets length, EOS included.
    """
    def encoded(raw_length: int) -> tuple[int, int]:
        noise, spans = _span_counts(raw_length, noise_density, mean_noise_span_length)
        return raw_length - noise + spans + 1, noise + spans + 1

    raw_length = inputs_length - 1
    while encoded(raw_length + 1)[0] <= inputs_length:
        raw_length += 1
    targets_length = encoded(raw_length)[1]
    if noise_density == 0.5 and targets_length > inputs_length:  # t5's own tweak, kept for parity
        raw_length -= 1
        targets_length -= 1
    return raw_length, targets_length


def noise_spans(raw_length: int, noise_density: float = NOISE_DENSITY,
                mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH) -> int:
    """Noise spans (= sentinels) in a full ``raw_length`` example; 28 at 568 (PAPER.md 1.2)."""
    return _span_counts(raw_length, noise_density, mean_noise_span_length)[1]


@functools.lru_cache(maxsize=None)
def mlm_lengths(total_length: int = TOTAL_LENGTH) -> tuple[int, int]:
    """MLM (inputs, targets): the largest inputs length with ``inputs + targets <= total_length``.

    ``mlm_lengths(626) == (512, 114)``, the study's lengths.

    Raises:
      ValueError: if ``total_length`` is too short for one noise span.
    """
    best = None
    for inputs_length in range(2, total_length):
        raw_length, targets_length = span_corruption_lengths(inputs_length)
        if inputs_length + targets_length > total_length:
            break  # both grow with inputs_length
        if noise_spans(raw_length) >= 1:
            best = (inputs_length, targets_length)
    if best is None:
        raise ValueError(f"total_length={total_length}: too short for span corruption (needs at "
                         "least one noise span); use total_length >= 16")
    return best


def task_feature_lengths(objective: str, architecture: str, total_length: int = TOTAL_LENGTH,
                         mlm_inputs_length: Optional[int] = None) -> dict[str, int]:
    """The seqio task feature lengths (``sequence_length``) of a pretraining pair at any scale.

    ===========  ====================================================================  ===========
    pair         lengths (total_length = L)                                            L = 626
    ===========  ====================================================================  ===========
    cd:flm       {"targets": L}                                                        626
    nd:plm       {"targets": L, decoder_{target_tokens,input_tokens,loss_weights,
                 causal_attention}: L}                                                 626 each
    ed:plm       {"targets": L, encoder_{input_tokens,segment_ids,positions}: L,
                 decoder_{target_tokens,input_tokens,segment_ids,positions,
                 loss_weights}: L}                                                     626 each
    *:mlm        {"inputs": I, "targets": T}, I + T <= L as large as possible          512 / 114
    ===========  ====================================================================  ===========

    PLM key sets mirror AO's gins (``nc_dec_c4_prefix_lm.gin``, ``enc_dec_c4_prefix_lm.gin``):
    the t5 packers read the packed length from ``sequence_length`` and assert that every value
    equals it. An ED:PLM row holds two examples, 2 L tokens (PAPER.md App. C: half the rows).

    Args:
      objective: "flm", "plm" or "mlm".
      architecture: "cd", "nd" or "ed"; the pair must be one the study trains.
      total_length: tokens per sequence seen (626 in the study).
      mlm_inputs_length: MLM only: the inputs length to use instead of deriving it from
        ``total_length`` (which is then ignored); targets follow from ``span_corruption_lengths``.

    Returns:
      ``{feature name: length}`` to pass as ``sequence_length`` / ``task_feature_lengths``.

    Raises:
      ValueError: incompatible pair, or lengths the recipe cannot use.
    """
    from objectives import tasks  # no seqio at import: tasks.py imports it lazily

    tasks.check_compatible(architecture, objective)
    if mlm_inputs_length is not None and objective != "mlm":
        raise ValueError(f"mlm_inputs_length={mlm_inputs_length}: only used with objective='mlm', "
                         f"not {objective!r}")
    if objective == "flm":
        if total_length < 2:
            raise ValueError(f"total_length={total_length}: must be >= 2")
        return {"targets": total_length}
    if objective == "plm":
        # t5's pack_prefix_lm_* assert an even packed length; the split point is drawn from [1, L).
        if total_length < 2 or total_length % 2:
            raise ValueError(f"total_length={total_length}: prefix LM needs an even length >= 2 "
                             "(t5 pack_prefix_lm_* asserts it)")
        names = (PLM_DECODER_ONLY_FEATURES if architecture == "nd"
                 else PLM_ENCODER_DECODER_FEATURES)
        return {"targets": total_length, **{name: total_length for name in names}}
    if mlm_inputs_length is None:
        inputs_length, targets_length = mlm_lengths(total_length)
    else:
        raw_length, targets_length = span_corruption_lengths(mlm_inputs_length)
        if mlm_inputs_length < 2 or noise_spans(raw_length) < 1:
            raise ValueError(f"mlm_inputs_length={mlm_inputs_length}: too short for span "
                             "corruption (needs at least one noise span); use >= 12")
        inputs_length = mlm_inputs_length
    return {"inputs": inputs_length, "targets": targets_length}


def validate_task_feature_lengths(objective: str, architecture: str,
                                  lengths: dict[str, int]) -> None:
    """Checks a ``sequence_length`` mapping against the objective's recipe.

    Raises:
      ValueError: wrong keys, PLM lengths that differ or are odd, or MLM targets shorter than the
        span-corruption targets for the inputs length.
    """
    from objectives import tasks

    tasks.check_compatible(architecture, objective)
    lengths = dict(lengths)
    if objective == "mlm":
        expected = {"inputs", "targets"}
    elif objective == "flm":
        expected = {"targets"}
    else:
        expected = set(task_feature_lengths(objective, architecture, total_length=2))
    if set(lengths) != expected:
        raise ValueError(f"lengths={lengths}: {architecture}:{objective} needs exactly the keys "
                         f"{sorted(expected)} (objectives.lengths.task_feature_lengths makes "
                         "them)")
    bad = {k: v for k, v in lengths.items() if not isinstance(v, int) or v < 1}
    if bad:
        raise ValueError(f"lengths={lengths}: every length must be a positive int")
    if objective == "plm":
        values = set(lengths.values())
        if len(values) != 1 or next(iter(values)) % 2:
            raise ValueError(f"lengths={lengths}: prefix LM needs one even length for every key "
                             "(t5 pack_prefix_lm_* asserts it)")
    if objective == "mlm":
        raw_length, targets_length = span_corruption_lengths(lengths["inputs"])
        if noise_spans(raw_length) < 1:
            raise ValueError(f"lengths={lengths}: inputs too short for span corruption; use "
                             "inputs >= 12")
        if lengths["targets"] < targets_length:
            raise ValueError(f"lengths={lengths}: span corruption with inputs {lengths['inputs']} "
                             f"makes targets of {targets_length} tokens; set targets >= "
                             f"{targets_length}")
