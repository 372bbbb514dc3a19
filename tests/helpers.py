"""Shared test fixtures: the tiny config and hand-built seqio-style batches."""

from __future__ import annotations

import numpy as np

from models.config import ModelConfig, preset


def tiny_config(architecture: str, **overrides) -> ModelConfig:
    """STYLE.md's shared fixture (2 layers, d_model 32, 2 heads, vocab 128), float32 compute."""
    return preset("tiny", architecture, **{"dtype": "float32", **overrides})


def shift_right(targets: np.ndarray, segment_ids: np.ndarray | None = None) -> np.ndarray:
    """seqio's ``make_autoregressive_inputs``: shift right with BOS 0, restarting at each segment."""
    inputs = np.zeros_like(targets)
    inputs[:, 1:] = targets[:, :-1]
    if segment_ids is not None:
        starts = np.zeros_like(segment_ids, dtype=bool)
        starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
        inputs[starts] = 0
    return inputs


def decoder_batch(targets: np.ndarray, prefix_lengths=None, segment_ids=None,
                  ) -> dict[str, np.ndarray]:
    """Decoder-only features for ``targets [b, L]`` (0 = padding), unpacked unless segments given.

    ``prefix_lengths`` (per row, unpacked only) is the number of input tokens; the feature
    ``decoder_causal_attention`` covers them plus one position, as seqio's prefix-LM converter does.
    """
    targets = np.asarray(targets, np.int32)
    batch = {"decoder_target_tokens": targets,
             "decoder_input_tokens": shift_right(targets, segment_ids),
             "decoder_loss_weights": (targets > 0).astype(np.int32)}
    if prefix_lengths is not None:
        positions = np.arange(targets.shape[1])[None, :]
        limit = np.asarray(prefix_lengths)[:, None]
        batch["decoder_causal_attention"] = (positions <= limit).astype(np.int32) * (targets > 0)
        batch["decoder_loss_weights"] = ((positions >= limit) & (targets > 0)).astype(np.int32)
    if segment_ids is not None:
        batch["decoder_segment_ids"] = np.asarray(segment_ids, np.int32)
    return batch


def random_tokens(rng: np.random.Generator, shape: tuple[int, ...], vocab: int = 128) -> np.ndarray:
    """Token ids in [2, vocab): never padding (0) or EOS (1)."""
    return rng.integers(2, vocab, size=shape).astype(np.int32)


def assert_one_line_error(excinfo, *needles: str) -> str:
    """The raised error's message is one line and contains every needle (paths, field names...)."""
    message = str(excinfo.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


CORPUS_WORDS = "a model reads text and learns to predict the next words of every document".split()


def write_corpus(path, documents: int = 200, seed: int = 0):
    """A small local corpus (one document of 10-39 words per line) for training tests; returns
    ``path``. The same seed gives the same bytes, so runs on it can be compared loss for loss."""
    rng = np.random.default_rng(seed)
    path.write_text("\n".join(" ".join(rng.choice(CORPUS_WORDS, size=rng.integers(10, 40)))
                              for _ in range(documents)) + "\n")
    return path
