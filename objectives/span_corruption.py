"""Masked language modeling (MLM) = T5 span corruption; all three architectures (PAPER.md 1.2, 2.3).

The study's task is t5's ``c4_v220_span_corruption`` (PAPER.md 2.2):

1. ``rekey`` ``"text"`` -> ``"targets"``, ``tokenize``, ``CacheDatasetPlaceholder`` (opt-in cache).
2. t5 ``span_corruption(noise_density=0.15, mean_noise_span_length=3.0)``:

   - ``random_spans_helper(inputs_length)`` gives the raw length (568 for inputs 512);
   - ``select_random_chunk(65536)``, ``reduce_concat_tokens(128)`` (documents are concatenated
     *without* EOS between them), ``split_tokens(raw length)``;
   - ``random_spans_noise_mask``: ``round(n * 0.15)`` noise tokens in ``round(noise / 3)`` spans,
     spans alternating non-noise / noise and starting with non-noise, all such masks equally likely;
   - inputs: each noise span replaced by one sentinel; targets: each non-noise span replaced by
     one sentinel. Sentinels count down from the top of the vocabulary:
     ``extra_id_k = vocab_size - 1 - k``.

3. ``append_eos_after_trim``: EOS on both.

At the study's lengths every full example is inputs 512 (483 kept + 28 sentinels + EOS) and targets
114 (85 noise + 28 sentinels + EOS) (PAPER.md 1.2). The converter then depends on the architecture
(``objectives/features.py``): ED reads inputs in the encoder; CD and ND read ``inputs ++ targets``
as one 626-token sequence with loss on the targets only (PAPER.md 2.3).

Worked example (``seqio.ByteVocabulary(extra_ids=100)``: byte b -> id b + 3, EOS 1, vocab 359, so
``extra_id_0 = 358``), documents ``"abc"``, ``"defg"`` -> 7 raw tokens ``100 .. 106``. Seven tokens
force the mask: ``round(7 * 0.15) = 1`` noise token in one span, and spans start with non-noise, so
the last token is the noise::

    raw       100 101 102 103 104 105 106
    noise       .   .   .   .   .   .   X
    inputs    100 101 102 103 104 105 358   1      (358 = extra_id_0, then EOS)
    targets   358 106   1

Sentinels need ``extra_ids`` in the vocabulary: without them t5 silently reuses the top real token
ids. ``check_vocabulary`` refuses such a vocabulary when the task is built.
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping, Optional

import seqio
from t5.data import preprocessors as t5_preprocessors

from objectives import lengths as lengths_lib
from objectives import text


def check_vocabulary(vocabulary: seqio.Vocabulary,
                     lengths: Optional[Mapping[str, int]] = None) -> None:
    """Raises unless ``vocabulary`` has sentinel ids for span corruption.

    Args:
      vocabulary: the task's vocabulary.
      lengths: optional task feature lengths; when given, ``extra_ids`` must also cover the number
        of noise spans of one full example (28 at the study's 568 raw tokens).

    Raises:
      ValueError: no (or too few) extra ids.
    """
    extra_ids = getattr(vocabulary, "extra_ids", 0) or 0
    fix = ("use seqio.ByteVocabulary(extra_ids=100) or a SentencePiece model with extra_ids=100 "
           "(the study's T5 vocabulary)")
    if extra_ids == 0:
        raise ValueError(f"vocabulary={vocabulary!r} has extra_ids=0: span corruption (objective "
                         f"'mlm') needs sentinel ids; {fix}")
    if lengths is not None and "inputs" in lengths:
        raw_length, _ = lengths_lib.span_corruption_lengths(lengths["inputs"])
        spans = lengths_lib.noise_spans(raw_length)
        if extra_ids < spans:
            raise ValueError(f"vocabulary={vocabulary!r} has extra_ids={extra_ids}: span "
                             f"corruption with inputs {lengths['inputs']} uses up to {spans} "
                             f"sentinels; {fix}")


def output_features(vocabulary: seqio.Vocabulary) -> Mapping[str, seqio.Feature]:
    """Task features of ``c4_v220_span_corruption`` (t5 ``DEFAULT_OUTPUT_FEATURES``)."""
    return {
        "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True, required=False),
        "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
    }


def preprocessors(text_key: str = "text") -> list[Callable]:
    """The seqio preprocessor chain of the MLM task (see the module docstring).

    Args:
      text_key: the source's text feature.
    """
    return [
        *text.tokenized_text(text_key),
        # The t5 defaults, spelled out: these two numbers are the study's MLM (PAPER.md 1.2).
        functools.partial(t5_preprocessors.span_corruption,
                          noise_density=lengths_lib.NOISE_DENSITY,
                          mean_noise_span_length=lengths_lib.MEAN_NOISE_SPAN_LENGTH),
        seqio.preprocessors.append_eos_after_trim,
    ]
