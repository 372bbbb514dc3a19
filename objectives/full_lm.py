"""Full language modeling (FLM): next-token loss on every token; causal decoder only (PAPER.md 1.2).

The study's task is t5's ``c4_v220_full_lm`` (PAPER.md 2.2; AO ``c_dec_c4_full_lm.gin``):

1. ``rekey``: the source's ``"text"`` becomes ``"targets"``.
2. ``tokenize``: ``"targets"`` to token ids (no EOS yet).
3. ``CacheDatasetPlaceholder``: where an offline cache would cut the chain (opt-in; never used
   unless ``get_dataset(use_cached=True)``).
4. t5 ``full_lm``:

   - ``select_random_chunk(max_length=65536)``: a random 65,536-token chunk of each longer document
     (identity for shorter ones);
   - ``append_eos``: EOS (1) at the end of each document (chunk), nowhere else;
   - ``reduce_concat_tokens(batch_size=128)``: 128 documents concatenated into one stream;
   - ``split_tokens(L)``: that stream cut into ``L``-token pieces (the last piece of each
     128-document group is shorter).

Then ``seqio.DecoderFeatureConverter`` (-> ``LMFeatureConverter``) packs the pieces into rows of
``L`` and puts loss on every non-padding token (PAPER.md 6.3).

Worked example (ByteVocabulary: byte b -> id b + 3, EOS 1), documents ``"abc"``, ``"defgh"``,
``L = 8``::

    tokens + EOS     100 101 102 1 | 103 104 105 106 107 1
    split into 8     [100 101 102 1 103 104 105 106]  [107 1]

    row 0  decoder_target_tokens  100 101 102   1 103 104 105 106
           decoder_input_tokens     0 100 101 102   1 103 104 105
           decoder_loss_weights     1   1   1   1   1   1   1   1
           decoder_segment_ids      1   1   1   1   1   1   1   1
           decoder_positions        0   1   2   3   4   5   6   7
    row 1  decoder_target_tokens  107   1   0   0   0   0   0   0
           decoder_input_tokens     0 107   0   0   0   0   0   0
           decoder_loss_weights     1   1   0   0   0   0   0   0

A window can span two documents separated only by EOS (row 0): that is the study's recipe, no
segment boundary there.
"""

from __future__ import annotations

from typing import Callable, Mapping

import seqio
from t5.data import preprocessors as t5_preprocessors

from objectives import text


def output_features(vocabulary: seqio.Vocabulary) -> Mapping[str, seqio.Feature]:
    """Task features of ``c4_v220_full_lm``: ``targets`` with EOS at document ends."""
    return {"targets": seqio.Feature(vocabulary=vocabulary, add_eos=True)}


def preprocessors(text_key: str = "text") -> list[Callable]:
    """The seqio preprocessor chain of the FLM task (see the module docstring).

    Args:
      text_key: the source's text feature.
    """
    return [
        *text.tokenized_text(text_key),
        t5_preprocessors.full_lm,
    ]
