"""Architecture x objective -> seqio feature converter, and the model features it yields.

Tasks emit seqio *task* features (``inputs``/``targets``; the PLM tasks emit model features
directly); a feature converter turns them into the *model* features the Transformer reads verbatim
(PAPER.md 6.3, STYLE.md B2.3):

====  ====  =============================================================  =======================
arch  obj   converter                                                      row (study lengths)
====  ====  =============================================================  =======================
cd    flm   ``DecoderFeatureConverter(pack, loss_on_targets_only=True)``   626 targets, loss on
            -> ``LMFeatureConverter`` (the task has no "inputs")           every token
cd    mlm   ``DecoderFeatureConverter(pack, loss_on_targets_only=True)``   512 + 114 = 626; loss
            -> ``PrefixLMFeatureConverter`` (the task has "inputs");       on the 114 targets; CD
            emits ``decoder_causal_attention``, which CD ignores           is causal throughout
nd    mlm   same converter and arrays as cd:mlm; ND honours                inputs + 1 positions
            ``decoder_causal_attention`` (inputs + 1 positions)            bidirectional
nd    plm   ``PassThroughFeatureConverter`` (t5                            626, random split
            ``pack_prefix_lm_decoder_only`` built the model features)
ed    mlm   ``EncDecFeatureConverter(pack)``                               encoder 512, decoder 114
ed    plm   ``PassThroughFeatureConverter`` (t5                            encoder 626 + decoder
            ``pack_prefix_lm_encoder_decoder`` built them; 2 examples/row) 626
====  ====  =============================================================  =======================

``pack`` has no effect on PLM: the t5 packers always fill whole ``L``-token windows (ND rows carry
no segment ids; ED rows carry two segments per side).

This module imports seqio only inside ``feature_converter``, so the tables can be read without
TensorFlow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    import seqio

_DECODER = ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights")
_DECODER_PACKING = ("decoder_segment_ids", "decoder_positions")
_ENCODER = ("encoder_input_tokens",)
_ENCODER_PACKING = ("encoder_segment_ids", "encoder_positions")
_PREFIX = ("decoder_causal_attention",)

# What the model and its loss read, per architecture (models/transformer.py; the segment ids and
# positions only when packed). cd does not read decoder_causal_attention even when a converter
# emits it (cd:mlm): the causal decoder ignores the prefix (PAPER.md 2.3).
MODEL_FEATURES: Mapping[str, tuple[str, ...]] = {
    "cd": _DECODER + _DECODER_PACKING,
    "nd": _DECODER + _DECODER_PACKING + _PREFIX,
    "ed": _ENCODER + _ENCODER_PACKING + _DECODER + _DECODER_PACKING,
}


def feature_converter(architecture: str, objective: str, pack: bool = True
                      ) -> "seqio.FeatureConverter":
    """The seqio feature converter of a pretraining pair (the table in the module docstring).

    Args:
      architecture: "cd", "nd" or "ed".
      objective: "flm", "plm" or "mlm"; the pair must be one the study trains.
      pack: pack several examples per row (the study packs every pretraining objective). Ignored
        for PLM, whose task already emits full rows.

    Raises:
      ValueError: an unknown or incompatible pair.
    """
    from objectives import tasks

    tasks.check_compatible(architecture, objective)
    import seqio

    if objective == "plm":
        return seqio.PassThroughFeatureConverter()
    if architecture == "ed":
        return seqio.EncDecFeatureConverter(pack=pack)
    # cd:flm -> LMFeatureConverter; cd:mlm and nd:mlm -> PrefixLMFeatureConverter (dispatch on the
    # task feature keys). loss_on_targets_only is seqio's default; spelled out (PAPER.md 2.3).
    return seqio.DecoderFeatureConverter(pack=pack, loss_on_targets_only=True)


def emitted_features(architecture: str, objective: str, pack: bool = True) -> tuple[str, ...]:
    """The exact model feature names ``feature_converter(...)`` yields for a pair's task.

    Differs from ``MODEL_FEATURES[architecture]`` where the recipe differs: nd:plm has no segment
    ids or positions (t5's packer adds none), cd:mlm carries ``decoder_causal_attention``, and
    unpacked rows have no segment ids or positions.
    """
    from objectives import tasks

    tasks.check_compatible(architecture, objective)
    if objective == "plm":
        return (_DECODER + _PREFIX if architecture == "nd"
                else _ENCODER + _ENCODER_PACKING + _DECODER + _DECODER_PACKING)
    packing = _DECODER_PACKING if pack else ()
    if architecture == "ed":
        return _ENCODER + (_ENCODER_PACKING if pack else ()) + _DECODER + packing
    return _DECODER + packing + (_PREFIX if objective == "mlm" else ())


def model_feature_lengths(architecture: str, objective: str,
                          task_lengths: Mapping[str, int]) -> dict[str, int]:
    """Length of every model feature of a pair's rows, from its task feature lengths.

    Example: ``model_feature_lengths("nd", "mlm", {"inputs": 512, "targets": 114})`` gives 626 for
    every decoder feature; ``("ed", "mlm", ...)`` gives 512 for the encoder and 114 for the decoder.
    """
    names = emitted_features(architecture, objective, pack=True)
    if objective == "plm":
        length = task_lengths["targets"]
        return {name: length for name in names}
    if architecture == "ed":
        return {name: task_lengths["inputs" if name.startswith("encoder_") else "targets"]
                for name in names}
    length = task_lengths["targets"] + task_lengths.get("inputs", 0)
    return {name: length for name in names}
