"""Tests of the pretraining objectives (``objectives/``): exact arrays for all six pairs.

The data a model sees is the experiment. A prefix one position off, a loss weight on an input token,
a noise density that is not 0.15, or two ED halves leaking into each other would change every
number in the study without crashing anything. The tests run the production chain (seqio Task:
tokenize "text" with ``seqio.ByteVocabulary(extra_ids=100)``, the t5 recipe, the feature converter)
on small in-memory documents. ByteVocabulary makes the tokens known by hand: byte b -> id b + 3,
EOS 1, padding 0, vocab 359, so ``extra_id_k = 358 - k``.

1. Lengths: the study's table; the pure-Python ``random_spans_helper`` equals t5's; 568 -> 512/114.
2. One hand-written expected-array case per pair (cd:flm, cd:mlm, nd:mlm, ed:mlm, nd:plm, ed:plm),
   with the randomness forced: documents shorter than the 65,536-token chunk
   (``select_random_chunk`` is the identity), 7 raw MLM tokens (one noise token, which must be the
   last), and for PLM the first row whose drawn split point is 3 (the arrays for that split are
   written out by hand; every other row is checked against the reference of section 3).
3. Structural tests on random corpora: every array of every row equals a reference built from first
   principles in numpy (the token stream cut into pieces; the split point read back from
   ``decoder_causal_attention`` / ``encoder_segment_ids``; the noise mask read back from the
   sentinels); no t5 code in the references.
4. Statistics: span corruption at the study's lengths (568 raw -> exactly 512 / 114, noise fraction,
   mean span length, span-length distribution, sentinel order, exact reconstruction), and a
   chi-square test that the PLM split point is uniform on [1, L) for ND and ED.
5. Errors, idempotent registration, determinism given the seed, and that the table modules import
   neither TensorFlow nor seqio.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import pytest

from objectives import features, lengths, tasks

# seqio and TensorFlow (~10 s to import) are imported by the first test that runs, not at
# collection, so that pytest-xdist workers that never run this file do not pay for them.
seqio = None
tf = None

EOS = 1
VOCAB_SIZE = 359  # ByteVocabulary(extra_ids=100): 3 special + 256 bytes + 100 sentinels
FIRST_SENTINEL = VOCAB_SIZE - 100  # ids >= 259 are sentinels


def sentinel(k: int) -> int:
    """seqio/t5 convention: ``extra_id_k`` is ``vocab_size - 1 - k``."""
    return VOCAB_SIZE - 1 - k


# --------------------------------------------------------------------------------------------------
# Fixtures and first-principles references (numpy / pure Python; nothing from t5 or seqio).
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _tensorflow():
    global seqio, tf
    seqio = pytest.importorskip("seqio")
    tf = pytest.importorskip("tensorflow")
    try:
        tf.config.set_visible_devices([], "GPU")  # never take accelerator memory from JAX
    except RuntimeError:  # TensorFlow already initialised by another test file in this process
        pass
    yield
    # Leave the global seqio registry as we found it (tasks registered here are named "test_*").
    for name in list(tasks._DEFINITIONS):
        if name.startswith("test_"):
            if name in seqio.TaskRegistry.names():
                seqio.TaskRegistry.remove(name)
            del tasks._DEFINITIONS[name]


@pytest.fixture(scope="module")
def vocab():
    vocabulary = seqio.ByteVocabulary(extra_ids=100)
    assert (vocabulary.vocab_size, vocabulary.eos_id, vocabulary.encode("a")) == (VOCAB_SIZE, EOS,
                                                                                  [100])
    return vocabulary


def make_source(docs: Sequence[str]):
    """A seqio source yielding ``{"text": doc}`` in order (the production chain tokenizes it)."""
    docs = list(docs)

    def dataset_fn(split, shuffle_files, seed=None):
        del split, shuffle_files, seed
        return tf.data.Dataset.from_tensor_slices({"text": docs})

    return seqio.FunctionDataSource(dataset_fn, splits=["train"])


def tok(text: str) -> list[int]:
    """ByteVocabulary ids of ``text``."""
    return [b + 3 for b in text.encode("utf-8")]


def rows(task_name: str, architecture: str, objective: str, task_lengths, n: Optional[int] = None,
         **kwargs) -> list[dict[str, np.ndarray]]:
    """The first ``n`` rows (all if None) of ``tasks.get_dataset``, unshuffled unless told."""
    kwargs = {"shuffle": False, "num_epochs": 1, **kwargs}
    dataset = tasks.get_dataset(task_name, architecture, objective, task_lengths, **kwargs)
    if n is not None:
        dataset = dataset.take(n)
    # Batched iteration: per-row numpy conversion dominates the run time otherwise.
    return [{k: v[i] for k, v in batch.items()}
            for batch in dataset.batch(1024).as_numpy_iterator()
            for i in range(len(next(iter(batch.values()))))]


def random_docs(rng: np.random.Generator, count: int, low: int, high: int) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz "))
    return ["".join(rng.choice(letters, size=rng.integers(low, high + 1))) for _ in range(count)]


def reference_pieces(docs: Iterator[str], length: int, eos: bool, groups: int) -> list[list[int]]:
    """The token stream of FLM/PLM/MLM cut into pieces, from the recipe's definition.

    Empty documents are dropped; each document gets EOS at its end if ``eos``; 128 documents at a
    time are concatenated and cut into ``length``-token pieces (the last one of a group shorter).
    """
    pieces = []
    docs = (d for d in docs if d)
    for _ in range(groups):
        group = list(itertools.islice(docs, 128))
        stream = [t for d in group for t in tok(d) + ([EOS] if eos else [])]
        pieces += [stream[i:i + length] for i in range(0, len(stream), length)]
    return pieces


def pad(tokens: Sequence[int], length: int) -> np.ndarray:
    out = np.zeros(length, np.int32)
    out[:len(tokens)] = tokens
    return out


def shift_right(tokens: np.ndarray, segment_ids: Optional[np.ndarray] = None) -> np.ndarray:
    """Autoregressive inputs: BOS 0 then the tokens, restarting at each segment start."""
    out = np.concatenate([[0], tokens[:-1]]).astype(tokens.dtype)
    if segment_ids is not None:
        starts = np.concatenate([[True], segment_ids[1:] != segment_ids[:-1]])
        out[starts] = 0
    return out


def segments_of(row: dict, prefix: str, key: str) -> list[np.ndarray]:
    """The packed examples of one row, as arrays of ``{prefix}_{key}``, by segment id."""
    ids = row[f"{prefix}_segment_ids"]
    return [row[key][ids == s] for s in range(1, ids.max() + 1)]


def check_packed_side(row: dict, prefix: str, token_key: str) -> None:
    """Segment ids 1..n contiguous then padding; positions restart per segment."""
    ids, tokens = row[f"{prefix}_segment_ids"], row[token_key]
    np.testing.assert_array_equal(ids > 0, tokens > 0)
    expected_positions = np.zeros_like(ids)
    for s in range(1, ids.max() + 1):
        where = np.flatnonzero(ids == s)
        assert np.all(np.diff(where) == 1), "a packed example must be contiguous"
        expected_positions[where] = np.arange(where.size)
    np.testing.assert_array_equal(row[f"{prefix}_positions"], expected_positions)


def split_mlm(inputs: Sequence[int], targets: Sequence[int]
              ) -> tuple[list[int], list[int], list[int]]:
    """Reads span corruption backwards: (raw tokens, noise mask, noise span lengths).

    ``inputs = N0 S0 N1 S1 ... N(n-1) S(n-1) [Nn] EOS`` and ``targets = S0 M0 S1 M1 ... EOS`` with
    ``Sk = extra_id_k``: the raw sequence is ``N0 M0 N1 M1 ...``, the ``Mk`` are the noise spans.
    Asserts the sentinels appear as extra_id_0, extra_id_1, ... on both sides.
    """
    assert inputs[-1] == EOS and targets[-1] == EOS
    inputs, targets = list(inputs[:-1]), list(targets[:-1])

    def cut(seq):  # -> (sentinels in order, the parts between them)
        marks = [i for i, t in enumerate(seq) if t >= FIRST_SENTINEL]
        bounds = [-1] + marks + [len(seq)]
        return [seq[i] for i in marks], [seq[a + 1:b] for a, b in zip(bounds[:-1], bounds[1:])]

    in_sentinels, kept = cut(inputs)
    out_sentinels, noise = cut(targets)
    n = len(in_sentinels)
    assert in_sentinels == [sentinel(k) for k in range(n)], in_sentinels
    assert out_sentinels == in_sentinels, (out_sentinels, in_sentinels)
    assert noise[0] == [], "targets start with extra_id_0"
    noise = noise[1:]
    assert all(len(m) >= 1 for m in noise), "every noise span is non-empty"
    raw, mask = [], []
    for k in range(n):
        raw += kept[k] + noise[k]
        mask += [0] * len(kept[k]) + [1] * len(noise[k])
    raw += kept[n]
    mask += [0] * len(kept[n])
    return raw, mask, [len(m) for m in noise]


def prefix_lm_reference(inputs: Sequence[int], targets: Sequence[int], length: int
                        ) -> dict[str, np.ndarray]:
    """seqio's PrefixLMFeatureConverter on one example, from its definition (PAPER.md 6.3)."""
    n_in, n = len(inputs), len(inputs) + len(targets)
    tokens = pad(list(inputs) + list(targets), length)
    position = np.arange(length)
    segment_ids = (position < n).astype(np.int32)
    return {
        "decoder_target_tokens": tokens,
        "decoder_input_tokens": shift_right(tokens, segment_ids),  # padding is a new "segment"
        "decoder_causal_attention": (position < n_in + 1).astype(np.int32) * (position < n),
        "decoder_loss_weights": ((position >= n_in) & (position < n)).astype(np.int32),
        "decoder_segment_ids": segment_ids,
        "decoder_positions": np.where(position < n, position, 0).astype(np.int32),
    }


def assert_rows_equal(actual: dict, expected: dict) -> None:
    assert set(actual) == set(expected), (sorted(actual), sorted(expected))
    for key in expected:
        assert actual[key].dtype == np.int32, (key, actual[key].dtype)
        np.testing.assert_array_equal(actual[key], np.asarray(expected[key]), err_msg=key)


def chi_square(counts: np.ndarray) -> float:
    expected = counts.sum() / counts.size
    return float(((counts - expected) ** 2 / expected).sum())


# --------------------------------------------------------------------------------------------------
# 1. Lengths
# --------------------------------------------------------------------------------------------------


def test_study_lengths_table():
    from t5.data.preprocessors import random_spans_helper

    assert random_spans_helper(inputs_length=512, noise_density=0.15, mean_noise_span_length=3.0,
                               extra_tokens_per_span_inputs=1,
                               extra_tokens_per_span_targets=1) == (568, 114)
    assert lengths.span_corruption_lengths(512) == (568, 114)
    assert lengths.noise_spans(568) == 28  # 483 kept + 28 sentinels + EOS = 512; 85 + 28 + 1 = 114
    # The pure-Python copy agrees with t5 at every inputs length a run might use.
    for inputs_length in list(range(8, 700)) + [1024, 2048]:
        assert lengths.span_corruption_lengths(inputs_length) == random_spans_helper(
            inputs_length=inputs_length, noise_density=0.15, mean_noise_span_length=3.0,
            extra_tokens_per_span_inputs=1, extra_tokens_per_span_targets=1), inputs_length

    assert lengths.task_feature_lengths("flm", "cd") == {"targets": 626}
    for arch in ("cd", "nd", "ed"):
        assert lengths.task_feature_lengths("mlm", arch) == {"inputs": 512, "targets": 114}
    nd = lengths.task_feature_lengths("plm", "nd")
    ed = lengths.task_feature_lengths("plm", "ed")
    assert set(nd.values()) == set(ed.values()) == {626}
    assert set(nd) == {"targets", *lengths.PLM_DECODER_ONLY_FEATURES}
    assert set(ed) == {"targets", *lengths.PLM_ENCODER_DECODER_FEATURES}
    assert lengths.MTF_LENGTHS == lengths.T0_EVAL_LENGTHS == {"inputs": 1024, "targets": 256}
    assert lengths.EAI_EVAL_LENGTHS == {"inputs": 512, "targets": 114}

    # Any scale: MLM inputs + targets as close to L as the recipe allows, never above.
    assert lengths.task_feature_lengths("mlm", "nd", total_length=64) == {"inputs": 51,
                                                                          "targets": 12}
    for total in (16, 32, 64, 100, 128, 625, 627, 1280):
        got = lengths.task_feature_lengths("mlm", "ed", total_length=total)
        assert got["inputs"] + got["targets"] <= total
        bigger = lengths.span_corruption_lengths(got["inputs"] + 1)[1] + got["inputs"] + 1
        assert bigger > total
    assert lengths.task_feature_lengths("mlm", "ed", mlm_inputs_length=1024) == {
        "inputs": 1024, "targets": 229}
    assert features.model_feature_lengths("nd", "mlm", {"inputs": 512, "targets": 114})[
        "decoder_target_tokens"] == 626
    assert features.model_feature_lengths("ed", "mlm", {"inputs": 512, "targets": 114}) == {
        "encoder_input_tokens": 512, "encoder_segment_ids": 512, "encoder_positions": 512,
        "decoder_target_tokens": 114, "decoder_input_tokens": 114, "decoder_loss_weights": 114,
        "decoder_segment_ids": 114, "decoder_positions": 114}


def test_length_errors():
    with pytest.raises(ValueError, match="even"):
        lengths.task_feature_lengths("plm", "nd", total_length=15)
    with pytest.raises(ValueError, match="too short"):
        lengths.task_feature_lengths("mlm", "nd", total_length=8)
    with pytest.raises(ValueError, match="only used with objective='mlm'"):
        lengths.task_feature_lengths("flm", "cd", mlm_inputs_length=512)
    with pytest.raises(ValueError, match="targets >= 114"):
        lengths.validate_task_feature_lengths("mlm", "ed", {"inputs": 512, "targets": 100})
    with pytest.raises(ValueError, match="needs exactly the keys"):
        lengths.validate_task_feature_lengths("plm", "ed", {"inputs": 626, "targets": 626})
    with pytest.raises(ValueError, match="one even length"):
        lengths.validate_task_feature_lengths(
            "plm", "nd", {**lengths.task_feature_lengths("plm", "nd"), "targets": 616})


# --------------------------------------------------------------------------------------------------
# 2. Hand-written expected arrays, one per pair
# --------------------------------------------------------------------------------------------------


def test_cd_flm_hand_written(vocab):
    # "abc" -> 100 101 102, "defgh" -> 103..107; EOS at each document end; 8-token pieces; packed.
    name = tasks.register_pretraining_task("flm", "cd", make_source(["abc", "defgh"]), vocab,
                                           name="test_cd_flm_hand")
    got = rows(name, "cd", "flm", {"targets": 8})
    assert len(got) == 2
    assert_rows_equal(got[0], {
        "decoder_target_tokens": [100, 101, 102, 1, 103, 104, 105, 106],
        "decoder_input_tokens": [0, 100, 101, 102, 1, 103, 104, 105],
        "decoder_loss_weights": [1, 1, 1, 1, 1, 1, 1, 1],  # FLM: loss on every token
        "decoder_segment_ids": [1, 1, 1, 1, 1, 1, 1, 1],  # one window across two documents
        "decoder_positions": [0, 1, 2, 3, 4, 5, 6, 7],
    })
    assert_rows_equal(got[1], {
        "decoder_target_tokens": [107, 1, 0, 0, 0, 0, 0, 0],
        "decoder_input_tokens": [0, 107, 0, 0, 0, 0, 0, 0],
        "decoder_loss_weights": [1, 1, 0, 0, 0, 0, 0, 0],
        "decoder_segment_ids": [1, 1, 0, 0, 0, 0, 0, 0],
        "decoder_positions": [0, 1, 0, 0, 0, 0, 0, 0],
    })


def test_mlm_hand_written_all_architectures(vocab):
    # "abc" + "defg": concatenated WITHOUT EOS -> 7 raw tokens 100..106. round(7 * 0.15) = 1 noise
    # token in 1 span; spans start with non-noise, so the noise is the last token (106).
    name = tasks.register_pretraining_task("mlm", "ed", make_source(["abc", "defg"]), vocab,
                                           name="test_mlm_hand")
    task_lengths = lengths.task_feature_lengths("mlm", "ed", total_length=16)
    assert task_lengths == {"inputs": 12, "targets": 4}
    x = sentinel(0)
    assert x == 358
    ed = rows(name, "ed", "mlm", task_lengths)
    assert len(ed) == 1
    assert_rows_equal(ed[0], {
        "encoder_input_tokens": [100, 101, 102, 103, 104, 105, x, 1, 0, 0, 0, 0],
        "encoder_segment_ids": [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0],
        "encoder_positions": [0, 1, 2, 3, 4, 5, 6, 7, 0, 0, 0, 0],
        "decoder_target_tokens": [x, 106, 1, 0],
        "decoder_input_tokens": [0, x, 106, 0],
        "decoder_loss_weights": [1, 1, 1, 0],
        "decoder_segment_ids": [1, 1, 1, 0],
        "decoder_positions": [0, 1, 2, 0],
    })
    # Decoder-only: inputs ++ targets in one 16-token row; the 8 input tokens plus ONE more position
    # are bidirectional (seqio's +1: position 8 reads the input EOS and predicts the first target);
    # loss on the 3 target tokens only.
    expected = {
        "decoder_target_tokens": [100, 101, 102, 103, 104, 105, x, 1, x, 106, 1, 0, 0, 0, 0, 0],
        "decoder_input_tokens": [0, 100, 101, 102, 103, 104, 105, x, 1, x, 106, 0, 0, 0, 0, 0],
        "decoder_causal_attention": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        "decoder_loss_weights": [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0],
        "decoder_segment_ids": [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
        "decoder_positions": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 0, 0, 0, 0],
    }
    nd = rows(name, "nd", "mlm", task_lengths)
    cd = rows(name, "cd", "mlm", task_lengths)
    assert len(nd) == len(cd) == 1
    assert_rows_equal(nd[0], expected)
    # CD:MLM gets the very same arrays; the causal decoder ignores decoder_causal_attention.
    assert_rows_equal(cd[0], expected)
    assert "decoder_causal_attention" not in features.MODEL_FEATURES["cd"]
    assert set(cd[0]) == set(features.emitted_features("cd", "mlm"))


def test_nd_plm_hand_written_and_structure(vocab):
    # Two 7-letter documents + EOS = exactly one 8-token piece each: rows alternate A, B.
    a, b = tok("abcdefg") + [EOS], tok("hijklmn") + [EOS]
    name = tasks.register_pretraining_task("plm", "nd", make_source(["abcdefg", "hijklmn"]), vocab,
                                           name="test_nd_plm_hand")
    task_lengths = lengths.task_feature_lengths("plm", "nd", total_length=8)
    got = rows(name, "nd", "plm", task_lengths, n=200, num_epochs=None)
    position = np.arange(8)
    found = False
    for i, row in enumerate(got):
        assert set(row) == set(features.emitted_features("nd", "plm"))
        tokens = np.array(a if i % 2 == 0 else b)
        split = int(row["decoder_causal_attention"].sum()) - 1  # dca = (pos <= split)
        assert 1 <= split < 8
        assert_rows_equal(row, {
            "decoder_target_tokens": tokens,
            "decoder_input_tokens": shift_right(tokens),
            "decoder_causal_attention": position <= split,
            "decoder_loss_weights": position >= split,
        })
        if i % 2 == 0 and split == 3 and not found:
            found = True
            # 3 prefix tokens (a b c) + 1 bidirectional position; loss from "d" (103) on.
            assert_rows_equal(row, {
                "decoder_target_tokens": [100, 101, 102, 103, 104, 105, 106, 1],
                "decoder_input_tokens": [0, 100, 101, 102, 103, 104, 105, 106],
                "decoder_causal_attention": [1, 1, 1, 1, 0, 0, 0, 0],
                "decoder_loss_weights": [0, 0, 0, 1, 1, 1, 1, 1],
            })
    assert found


def test_ed_plm_hand_written_and_structure(vocab):
    a, b = tok("abcdefg") + [EOS], tok("hijklmn") + [EOS]
    name = tasks.register_pretraining_task("plm", "ed", make_source(["abcdefg", "hijklmn"]), vocab,
                                           name="test_ed_plm_hand")
    task_lengths = lengths.task_feature_lengths("plm", "ed", total_length=8)
    got = rows(name, "ed", "plm", task_lengths, n=100, num_epochs=None)
    found = False
    for row in got:
        split = int((row["encoder_segment_ids"] == 1).sum())
        assert 1 <= split < 8
        assert_rows_equal(row, ed_plm_reference(a, b, split, 8))
        if split == 3 and not found:
            found = True
            # encoder: a[:3] + b[:5]; decoder: a[3:] + b[5:]; two independent halves per side.
            assert_rows_equal(row, {
                "encoder_input_tokens": [100, 101, 102, 107, 108, 109, 110, 111],
                "encoder_segment_ids": [1, 1, 1, 2, 2, 2, 2, 2],  # boundary at split = 3
                "encoder_positions": [0, 1, 2, 0, 1, 2, 3, 4],
                "decoder_target_tokens": [103, 104, 105, 106, 1, 112, 113, 1],
                "decoder_input_tokens": [0, 103, 104, 105, 106, 0, 112, 113],
                "decoder_segment_ids": [1, 1, 1, 1, 1, 2, 2, 2],  # boundary at L - split = 5
                "decoder_positions": [0, 1, 2, 3, 4, 0, 1, 2],
                "decoder_loss_weights": [1, 1, 1, 1, 1, 1, 1, 1],
            })
    assert found


def ed_plm_reference(first: Sequence[int], second: Sequence[int], split: int, length: int
                     ) -> dict[str, np.ndarray]:
    """ED:PLM row from two padded pieces and a split point (PAPER.md 6.4)."""
    first, second = pad(first, length), pad(second, length)
    position = np.arange(length)
    encoder = np.concatenate([first[:split], second[:length - split]])
    decoder = np.concatenate([first[split:], second[length - split:]])
    decoder_segments = (position >= length - split).astype(np.int32) + 1
    return {
        "encoder_input_tokens": encoder,
        "encoder_segment_ids": (position >= split).astype(np.int32) + 1,
        "encoder_positions": np.concatenate([np.arange(split), np.arange(length - split)]),
        "decoder_target_tokens": decoder,
        "decoder_input_tokens": shift_right(decoder, decoder_segments),
        "decoder_segment_ids": decoder_segments,
        "decoder_positions": np.concatenate([np.arange(length - split), np.arange(split)]),
        "decoder_loss_weights": (decoder != 0).astype(np.int32),
    }


# --------------------------------------------------------------------------------------------------
# 3. Structure on random corpora, against first-principles references
# --------------------------------------------------------------------------------------------------


def test_cd_flm_structure_across_128_document_groups(vocab):
    # 130 documents (some empty): two reduce_concat groups (128 + 2), each cut into 16-token pieces.
    docs = random_docs(np.random.default_rng(1), 130, 0, 12)
    name = tasks.register_pretraining_task("flm", "cd", make_source(docs), vocab,
                                           name="test_cd_flm_structure")
    got = rows(name, "cd", "flm", {"targets": 16})
    pieces = reference_pieces(iter(docs), 16, eos=True, groups=2)
    packed = []
    for row in got:
        check_packed_side(row, "decoder", "decoder_target_tokens")
        ids = row["decoder_segment_ids"]
        np.testing.assert_array_equal(row["decoder_input_tokens"],
                                      shift_right(row["decoder_target_tokens"], ids))
        np.testing.assert_array_equal(row["decoder_loss_weights"], ids > 0)
        packed += [s.tolist() for s in segments_of(row, "decoder", "decoder_target_tokens")]
    assert sorted(packed) == sorted(pieces)  # every piece exactly once; the packer may reorder


def test_nd_plm_structure_and_uniform_split(vocab):
    # Random documents (some empty) repeated forever; 3,000 rows of L = 16.
    docs = random_docs(np.random.default_rng(2), 50, 0, 40)
    name = tasks.register_pretraining_task("plm", "nd", make_source(docs), vocab,
                                           name="test_nd_plm_structure")
    task_lengths = lengths.task_feature_lengths("plm", "nd", total_length=16)
    got = rows(name, "nd", "plm", task_lengths, n=3000, num_epochs=None)
    pieces = reference_pieces(itertools.cycle(docs), 16, eos=True, groups=60)
    position = np.arange(16)
    splits = []
    for row, piece in zip(got, pieces):
        tokens = pad(piece, 16)
        split = int(row["decoder_causal_attention"].sum()) - 1
        splits.append(split)
        assert_rows_equal(row, {
            "decoder_target_tokens": tokens,
            "decoder_input_tokens": shift_right(tokens),
            "decoder_causal_attention": position <= split,
            "decoder_loss_weights": (position >= split) & (tokens != 0),
        })
    # Split ~ Uniform[1, 16): 15 bins, 200 expected each; chi-square, 14 degrees of freedom.
    # 36.12 is the 0.999 quantile (p = 0.001); the draw is seeded, so the test is deterministic.
    counts = np.bincount(splits, minlength=16)
    assert counts[0] == 0 and counts[1:].min() > 0
    assert chi_square(counts[1:]) < 36.12, counts


def test_ed_plm_structure_and_uniform_split(vocab):
    docs = random_docs(np.random.default_rng(3), 50, 0, 40)
    name = tasks.register_pretraining_task("plm", "ed", make_source(docs), vocab,
                                           name="test_ed_plm_structure")
    task_lengths = lengths.task_feature_lengths("plm", "ed", total_length=16)
    got = rows(name, "ed", "plm", task_lengths, n=1500, num_epochs=None)
    pieces = reference_pieces(itertools.cycle(docs), 16, eos=True, groups=80)
    splits = []
    for i, row in enumerate(got):
        split = int((row["encoder_segment_ids"] == 1).sum())
        splits.append(split)
        # Consecutive pieces 2i, 2i+1 share the row; halves independent on both sides.
        assert_rows_equal(row, ed_plm_reference(pieces[2 * i], pieces[2 * i + 1], split, 16))
    counts = np.bincount(splits, minlength=16)
    assert counts[0] == 0 and counts[1:].min() > 0
    # 1,500 rows, 15 bins (100 expected each), 14 dof, p = 0.001 threshold 36.12.
    assert chi_square(counts[1:]) < 36.12, counts


def test_nd_mlm_structure(vocab):
    # Total 64 -> inputs 51 / targets 12 from 55 raw tokens: rows of 63; one example per row.
    docs = random_docs(np.random.default_rng(4), 40, 20, 120)
    name = tasks.register_pretraining_task("mlm", "nd", make_source(docs), vocab,
                                           name="test_nd_mlm_structure")
    task_lengths = lengths.task_feature_lengths("mlm", "nd", total_length=64)
    raw_length = lengths.span_corruption_lengths(task_lengths["inputs"])[0]
    assert (task_lengths, raw_length) == ({"inputs": 51, "targets": 12}, 55)
    got = rows(name, "nd", "mlm", task_lengths)
    pieces = reference_pieces(iter(docs), raw_length, eos=False, groups=1)
    assert len(got) == len(pieces)
    for row, piece in zip(got, pieces):
        n_inputs = int(row["decoder_causal_attention"].sum()) - 1  # inputs + 1 positions
        n = int((row["decoder_segment_ids"] > 0).sum())
        tokens = row["decoder_target_tokens"]
        inputs, targets = tokens[:n_inputs].tolist(), tokens[n_inputs:n].tolist()
        assert_rows_equal(row, prefix_lm_reference(inputs, targets, 63))
        raw, mask, spans = split_mlm(inputs, targets)
        assert raw == piece
        if len(piece) == raw_length:
            assert (len(inputs), len(targets)) == (51, 12)
            assert (sum(mask), len(spans)) == (8, 3)  # round(55 * 0.15), round(8 / 3)


# --------------------------------------------------------------------------------------------------
# 4. Span corruption statistics at the study's lengths
# --------------------------------------------------------------------------------------------------


def test_span_corruption_statistics_at_study_lengths(vocab):
    # 30 documents x 4,000 characters = 120,000 tokens, one reduce_concat group: 211 full 568-token
    # pieces and one of 152. ED converter: encoder = inputs, decoder targets = targets.
    docs = random_docs(np.random.default_rng(5), 30, 4000, 4000)
    name = tasks.register_pretraining_task("mlm", "ed", make_source(docs), vocab,
                                           name="test_mlm_study")
    task_lengths = lengths.task_feature_lengths("mlm", "ed")
    assert task_lengths == {"inputs": 512, "targets": 114}
    got = rows(name, "ed", "mlm", task_lengths, seed=7)
    pieces = reference_pieces(iter(docs), 568, eos=False, groups=1)
    assert len(got) == len(pieces) == 212 and len(pieces[-1]) == 152
    masks, span_lengths = [], []
    for row, piece in zip(got, pieces):
        check_packed_side(row, "encoder", "encoder_input_tokens")
        check_packed_side(row, "decoder", "decoder_target_tokens")
        assert row["encoder_segment_ids"].max() == 1  # one example per row
        inputs = row["encoder_input_tokens"][row["encoder_input_tokens"] > 0].tolist()
        targets = row["decoder_target_tokens"][row["decoder_target_tokens"] > 0].tolist()
        np.testing.assert_array_equal(
            row["decoder_input_tokens"],
            shift_right(row["decoder_target_tokens"], row["decoder_segment_ids"]))
        np.testing.assert_array_equal(row["decoder_loss_weights"], row["decoder_target_tokens"] > 0)
        raw, mask, spans = split_mlm(inputs, targets)  # also asserts the sentinel order
        assert raw == piece  # inputs + targets reconstruct the raw tokens exactly
        if len(piece) == 568:
            assert (len(inputs), len(targets)) == (512, 114)  # 483 + 28 + 1, 85 + 28 + 1
            masks.append(mask)
            span_lengths += spans
    masks = np.array(masks)  # [211, 568]
    span_lengths = np.array(span_lengths)
    # Per example the counts are fixed by the recipe: round(568 * 0.15) = 85 noise tokens in
    # round(85 / 3) = 28 spans, i.e. density 0.1496 and mean span 3.036: within 0.001 / 0.05 of the
    # nominal 0.15 / 3.0.
    assert np.all(masks.sum(1) == 85) and len(span_lengths) == 211 * 28
    assert abs(masks.mean() - 0.15) < 0.001
    assert abs(span_lengths.mean() - 3.0) < 0.05
    # Randomness: all masks with those counts equally likely, so a span has length 1 with
    # probability (28 - 1) / (85 - 1) = 0.321 (compositions of 85 into 28 parts); 5,908 spans give a
    # standard error of 0.006: tolerance 0.03 (5 sigma). Noise is spread along the sequence: each
    # quarter's noise rate within 0.015 of 0.1496 (standard error about 0.002).
    assert abs(np.mean(span_lengths == 1) - 27 / 84) < 0.03
    for quarter in np.split(masks, 4, axis=1):
        assert abs(quarter.mean() - 85 / 568) < 0.015
    assert masks[:, 0].sum() == 0  # spans start with non-noise


# --------------------------------------------------------------------------------------------------
# 5. Errors, registration, determinism, imports
# --------------------------------------------------------------------------------------------------


def test_compatibility_and_name_errors(vocab):
    assert tasks.COMPATIBLE == {"cd": ("flm", "mlm"), "nd": ("plm", "mlm"), "ed": ("plm", "mlm")}
    for arch, objectives in tasks.COMPATIBLE.items():
        for objective in objectives:
            tasks.check_compatible(arch, objective)
    with pytest.raises(ValueError, match=r"objective='flm' is not trained with architecture='ed'; "
                                         r"the study pairs ed with \['plm', 'mlm'\]"):
        tasks.check_compatible("ed", "flm")
    with pytest.raises(ValueError, match=r"objective='plm' is not trained with architecture='cd'"):
        lengths.task_feature_lengths("plm", "cd")
    with pytest.raises(ValueError,
                       match=r"objective='FLM': must be one of \['flm', 'plm', 'mlm'\]"):
        tasks.check_compatible("cd", "FLM")
    with pytest.raises(ValueError, match=r"architecture='decoder'"):
        features.feature_converter("decoder", "flm")
    with pytest.raises(ValueError, match="not trained"):
        tasks.register_pretraining_task("flm", "nd", make_source(["a"]), vocab)
    # The converter map (objectives/features.py); PrefixLM vs LM is dispatched on the task keys.
    converters = {(arch, objective): type(features.feature_converter(arch, objective))
                  for arch, objectives in tasks.COMPATIBLE.items() for objective in objectives}
    assert converters == {
        ("cd", "flm"): seqio.DecoderFeatureConverter, ("cd", "mlm"): seqio.DecoderFeatureConverter,
        ("nd", "mlm"): seqio.DecoderFeatureConverter, ("ed", "mlm"): seqio.EncDecFeatureConverter,
        ("nd", "plm"): seqio.PassThroughFeatureConverter,
        ("ed", "plm"): seqio.PassThroughFeatureConverter}
    assert features.feature_converter("cd", "mlm", pack=False).pack is False
    with pytest.raises(ValueError, match="is not registered"):
        tasks.get_dataset("test_no_such_task", "cd", "flm", {"targets": 8})


def test_mlm_needs_sentinels():
    source = make_source(["abc"])
    with pytest.raises(ValueError, match=r"ByteVocabulary.*extra_ids=0.*"
                                         r"seqio.ByteVocabulary\(extra_ids=100\)"):
        tasks.register_pretraining_task("mlm", "ed", source, seqio.ByteVocabulary(extra_ids=0),
                                        name="test_no_sentinels")
    assert "test_no_sentinels" not in seqio.TaskRegistry.names()
    # Too few for the study's 28 spans per example.
    with pytest.raises(ValueError, match="uses up to 28 sentinels"):
        tasks.register_pretraining_task("mlm", "nd", source, seqio.ByteVocabulary(extra_ids=10),
                                        name="test_few_sentinels",
                                        lengths={"inputs": 512, "targets": 114})


def test_registration_is_explicit_and_idempotent(vocab):
    source = make_source(["abc"])

    def flm_source(split, shuffle_files, seed=None):
        return tf.data.Dataset.from_tensor_slices({"text": ["x"]})

    assert tasks.default_task_name(
        "flm", "cd", seqio.FunctionDataSource(flm_source, ["train"])) == "archobj_cd_flm_flm_source"
    name = tasks.register_pretraining_task("plm", "nd", source, vocab, name="test_idempotent")
    task = seqio.TaskRegistry.get(name)
    assert tasks.register_pretraining_task("plm", "nd", source, vocab, name=name) == name
    assert seqio.TaskRegistry.get(name) is task  # identical definition: no-op
    tasks.register_pretraining_task("plm", "ed", source, vocab, name=name)
    replaced = seqio.TaskRegistry.get(name)
    assert replaced is not task  # different definition: replaced
    assert "encoder_input_tokens" in replaced.output_features
    with pytest.raises(ValueError, match="was registered for ed:plm, not nd:plm"):
        tasks.get_dataset(name, "nd", "plm", lengths.task_feature_lengths("plm", "nd", 8))
    # MLM and FLM tasks serve every architecture of the objective (only the converter differs).
    mlm = tasks.register_pretraining_task("mlm", "ed", source, vocab, name="test_idempotent_mlm")
    with pytest.raises(ValueError, match="was registered for ed:mlm, not nd:plm"):
        tasks.get_dataset(mlm, "nd", "plm", lengths.task_feature_lengths("plm", "nd", 8))


def test_deterministic_given_seed(vocab):
    docs = random_docs(np.random.default_rng(6), 20, 5, 30)
    name = tasks.register_pretraining_task("plm", "nd", make_source(docs), vocab,
                                           name="test_determinism")
    task_lengths = lengths.task_feature_lengths("plm", "nd", total_length=16)

    def stream(seed):
        got = rows(name, "nd", "plm", task_lengths, n=30, seed=seed, shuffle=True,
                   num_epochs=None)
        return np.stack([np.concatenate([r[k] for k in sorted(r)]) for r in got])

    first = stream(0)
    np.testing.assert_array_equal(first, stream(0))
    assert not np.array_equal(first, stream(1))


def test_table_modules_import_without_tensorflow():
    # The harness validates configs before hiding GPUs from TensorFlow: these must not import it.
    code = ("import sys; from objectives import features, lengths, tasks; "
            "lengths.task_feature_lengths('mlm', 'nd'); features.emitted_features('ed', 'plm'); "
            "tasks.check_compatible('cd', 'flm'); "
            "bad = [m for m in ('tensorflow', 'seqio', 't5', 'jax') if m in sys.modules]; "
            "assert not bad, bad")
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)
