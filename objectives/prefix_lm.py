"""Prefix language modeling (PLM): a random prefix per sequence, loss on the rest; ND and ED only.

The study's tasks are t5's "PrefixLM objectives (not used in the T5 paper)" (PAPER.md 1.2, 2.2,
6.4):
``c4_prefix_lm_objective_decoder_architecture`` (ND) and
``c4_prefix_lm_objective_encoder_decoder_architecture`` (ED). Both start like FLM:

1. ``rekey`` ``"text"`` -> ``"targets"``, ``tokenize``, ``CacheDatasetPlaceholder`` (opt-in cache).
2. t5 ``targets_for_prefix_lm_objective``: ``select_random_chunk(65536)``, EOS at document ends,
   ``reduce_concat_tokens(128)``, ``split_tokens(L)``, then trim and pad every piece to ``L``.

and then build the *model* features themselves, so the feature converter is
``seqio.PassThroughFeatureConverter`` (AO's gins):

ND, t5 ``pack_prefix_lm_decoder_only``: one piece per row, one ``split ~ Uniform[1, L)``::

    decoder_target_tokens     the L tokens
    decoder_input_tokens      shifted right (BOS 0)
    decoder_causal_attention  pos <= split   (the prefix "inputs" plus one: seqio's +1 convention)
    decoder_loss_weights      pos >= split AND token != 0

  No segment ids: a row may hold the end of one document, EOS, and the start of the next.

  Worked example (ByteVocabulary: byte b -> id b + 3, EOS 1), ``"abcdefg"``, ``L = 8``, drawn
  ``split = 3``::

    decoder_target_tokens     100 101 102 103 104 105 106   1
    decoder_input_tokens        0 100 101 102 103 104 105 106
    decoder_causal_attention    1   1   1   1   0   0   0   0    <- 3 prefix tokens + 1
    decoder_loss_weights        0   0   0   1   1   1   1   1    <- predicts 103 onwards

ED, t5 ``pack_prefix_lm_encoder_decoder``: two pieces ``a``, ``b`` per row and one
``split ~ Uniform[1, L)``; the encoder reads the two prefixes, the decoder the two suffixes::

    encoder_input_tokens  = a[:split] + b[:L - split]   encoder_segment_ids 1 where pos < split,
                                                         else 2
    decoder_target_tokens = a[split:] + b[L - split:]   decoder_segment_ids 1 where pos < L - split,
                                                         else 2
    *_positions restart at 0 in each half; decoder_input_tokens shift right within each segment;
    decoder_loss_weights = decoder_target_tokens != 0 (every suffix token).

  Worked example, ``a = "abcdefg" + EOS``, ``b = "hijklmn" + EOS``, ``L = 8``, ``split = 3``::

    encoder_input_tokens    100 101 102 107 108 109 110 111
    encoder_segment_ids       1   1   1   2   2   2   2   2
    encoder_positions         0   1   2   0   1   2   3   4
    decoder_target_tokens   103 104 105 106   1 112 113   1
    decoder_input_tokens      0 103 104 105 106   0 112 113
    decoder_segment_ids       1   1   1   1   1   2   2   2
    decoder_positions         0   1   2   3   4   0   1   2
    decoder_loss_weights      1   1   1   1   1   1   1   1

  Each ED:PLM row therefore carries 2 L tokens; the study halves the batch (1,024 rows, App. C).

Note the two halves of an ED row come from *consecutive* pieces of the stream, exactly as t5 pairs
them (``ds.batch(2)`` before packing).
"""

from __future__ import annotations

from typing import Callable, Mapping

import seqio
from t5.data import preprocessors as t5_preprocessors

from objectives import lengths as lengths_lib
from objectives import text


def output_features(architecture: str, vocabulary: seqio.Vocabulary
                    ) -> Mapping[str, seqio.Feature]:
    """Task features of the stock PLM tasks: every model feature, plus an optional ``targets``.

    ``targets`` is the key of every stage but the last, so it must be declared (its ``add_eos=True``
    puts EOS at document ends); it is not required because the packer drops it.
    """
    names = (lengths_lib.PLM_DECODER_ONLY_FEATURES if architecture == "nd"
             else lengths_lib.PLM_ENCODER_DECODER_FEATURES)
    features = {name: seqio.Feature(vocabulary=vocabulary, add_eos=False) for name in names}
    features["targets"] = seqio.Feature(vocabulary=vocabulary, add_eos=True, required=False)
    return features


def preprocessors(architecture: str, text_key: str = "text") -> list[Callable]:
    """The seqio preprocessor chain of the PLM task for ``architecture`` ("nd" or "ed").

    Args:
      architecture: "nd" (one example per row) or "ed" (two examples per row).
      text_key: the source's text feature.
    """
    if architecture not in ("nd", "ed"):
        raise ValueError(f"architecture={architecture!r}: prefix LM is trained with 'nd' or 'ed'")
    pack = (t5_preprocessors.pack_prefix_lm_decoder_only if architecture == "nd"
            else t5_preprocessors.pack_prefix_lm_encoder_decoder)
    return [
        *text.tokenized_text(text_key),
        t5_preprocessors.targets_for_prefix_lm_objective,
        pack,
    ]
