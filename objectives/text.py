"""The shared head of every pretraining chain: source text -> tokenized ``targets``.

As the stock t5 C4 tasks do, the document becomes ``targets`` (the objectives then carve inputs out
of it), is tokenized without EOS (each objective decides where EOS goes), and stops at seqio's cache
placeholder: everything after it is random and re-drawn on every epoch; caching is opt-in
(``use_cached=True``) and never the default.
"""

from __future__ import annotations

import functools
from typing import Callable

import seqio
from t5.data import preprocessors as t5_preprocessors


def tokenized_text(text_key: str = "text") -> list[Callable]:
    """``rekey`` text -> targets, ``tokenize``, ``CacheDatasetPlaceholder``."""
    return [
        functools.partial(t5_preprocessors.rekey, key_map={"inputs": None, "targets": text_key}),
        seqio.preprocessors.tokenize,
        seqio.CacheDatasetPlaceholder(),
    ]
