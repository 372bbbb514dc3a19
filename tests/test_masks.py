"""Tests of the attention masks in ``models/masks.py`` against their definitions and against seqio.

The masks decide what every architecture and objective in the study may see, so a silent error here
(a prefix one position too short or too long, attention leaking across packed examples, padding
queries producing NaN) would corrupt every comparison without crashing anything. The tests check:

1. ``make_decoder_mask``, ``make_encoder_mask``, ``make_cross_mask`` and ``make_cache_mask`` against
   independent brute-force double loops written from each mask's definition, on many random packed
   batches (random numbers of segments, lengths, prefixes and trailing padding), with and without
   segment ids and ``decoder_causal_attention``; plus agreement of the decoding (cache) mask with
   the training mask on unpacked examples.
2. The worked 7x7 example from t5x's ``make_decoder_mask`` docstring, as a hand-written array.
3. The contract with seqio: real ``seqio.PrefixLMFeatureConverter`` outputs (packed and unpacked)
   mark exactly ``len(inputs) + 1`` positions in ``decoder_causal_attention``, the decoder mask on
   those arrays matches the brute-force definition and never lets a position see a target token it
   has to predict, and seqio's own packed docstring example comes out as documented.
4. ``mask_to_bias``: 0 where allowed, a large negative where masked, and softmax over fully masked
   rows (padding queries) stays finite after adding a position bias.

Functions under test get ``jax.numpy`` arrays; references are numpy / pure Python.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import masks

# --------------------------------------------------------------------------------------------------
# Brute-force references, written from the definitions (pure Python loops, no shared code).
# --------------------------------------------------------------------------------------------------


def ref_decoder_mask(tokens: np.ndarray, dca: Optional[np.ndarray],
                     segments: Optional[np.ndarray]) -> np.ndarray:
    """Query i sees key j iff both non-pad, same segment, and (j <= i or both in the prefix)."""
    batch, length = tokens.shape
    out = np.zeros((batch, 1, length, length), dtype=bool)
    for b in range(batch):
        for i in range(length):
            for j in range(length):
                if tokens[b, i] <= 0 or tokens[b, j] <= 0:
                    continue
                if segments is not None and segments[b, i] != segments[b, j]:
                    continue
                causal = j <= i
                prefix = dca is not None and dca[b, i] > 0 and dca[b, j] > 0
                out[b, 0, i, j] = causal or prefix
    return out


def ref_encoder_mask(tokens: np.ndarray, segments: Optional[np.ndarray]) -> np.ndarray:
    """Query i sees key j iff both non-pad and in the same segment."""
    batch, length = tokens.shape
    out = np.zeros((batch, 1, length, length), dtype=bool)
    for b in range(batch):
        for i in range(length):
            for j in range(length):
                same = segments is None or segments[b, i] == segments[b, j]
                out[b, 0, i, j] = tokens[b, i] > 0 and tokens[b, j] > 0 and same
    return out


def ref_cross_mask(dec_tokens: np.ndarray, enc_tokens: np.ndarray,
                   dec_segments: Optional[np.ndarray],
                   enc_segments: Optional[np.ndarray]) -> np.ndarray:
    """Decoder query i sees encoder key j iff both non-pad and (when packed) same segment."""
    batch, q_len = dec_tokens.shape
    k_len = enc_tokens.shape[1]
    out = np.zeros((batch, 1, q_len, k_len), dtype=bool)
    for b in range(batch):
        for i in range(q_len):
            for j in range(k_len):
                same = (dec_segments is None or enc_segments is None
                        or dec_segments[b, i] == enc_segments[b, j])
                out[b, 0, i, j] = dec_tokens[b, i] > 0 and enc_tokens[b, j] > 0 and same
    return out


def ref_cache_mask(query_positions: np.ndarray, cache_length: int,
                   prefix_lengths: Optional[np.ndarray]) -> np.ndarray:
    """Key j visible to a query at p iff j <= p, or both j and p lie inside the prefix."""
    batch, q_len = query_positions.shape
    out = np.zeros((batch, 1, q_len, cache_length), dtype=bool)
    for b in range(batch):
        for q in range(q_len):
            p = query_positions[b, q]
            for j in range(cache_length):
                in_prefix = (prefix_lengths is not None and j < prefix_lengths[b]
                             and p < prefix_lengths[b])
                out[b, 0, q, j] = j <= p or in_prefix
    return out


# --------------------------------------------------------------------------------------------------
# Random packed batches.
# --------------------------------------------------------------------------------------------------


def random_packed_batch(rng: np.random.RandomState, batch: int, length: int):
    """Packed rows: 1-4 segments of random length, a random prefix per segment, trailing padding.

    Returns (tokens, segment_ids, decoder_causal_attention), int32 numpy arrays ``[batch, length]``;
    segment ids and dca are 0 on padding.
    """
    tokens = np.zeros((batch, length), np.int32)
    segments = np.zeros((batch, length), np.int32)
    dca = np.zeros((batch, length), np.int32)
    for b in range(batch):
        n_segments = rng.randint(1, 5)
        pos = 0
        for s in range(1, n_segments + 1):
            room = length - pos
            if room <= 0:
                break
            seg_len = rng.randint(1, room + 1)
            prefix = rng.randint(0, seg_len + 1)
            tokens[b, pos:pos + seg_len] = rng.randint(1, 100, size=seg_len)
            segments[b, pos:pos + seg_len] = s
            dca[b, pos:pos + prefix] = 1
            pos += seg_len
            if rng.rand() < 0.3:  # sometimes stop early, leaving more trailing padding
                break
    return tokens, segments, dca


@pytest.fixture(scope="module")
def packed_batch():
    # One shape only (every new shape costs an XLA compile); rows vary in content, segment count,
    # prefixes and padding.
    tokens, segments, dca = random_packed_batch(np.random.RandomState(1234), 96, 19)
    # The batch exercises what it is meant to: packing, trailing padding, prefixes of all sizes.
    assert (segments.max(axis=1) > 1).sum() > 10 and (tokens == 0).any(axis=1).sum() > 10
    assert dca.sum() > 0 and (segments.max(axis=1) == 1).any()
    return tokens, segments, dca


# The functions under test, jitted so each shape compiles once instead of op by op (None arguments
# are empty pytrees, so the same wrappers cover the unpacked / fully causal variants).
decoder_mask = jax.jit(masks.make_decoder_mask)
encoder_mask = jax.jit(masks.make_encoder_mask)
cross_mask = jax.jit(masks.make_cross_mask)
cache_mask = jax.jit(masks.make_cache_mask, static_argnums=1)


def _np(x: jax.Array) -> np.ndarray:
    return np.asarray(jax.device_get(x))


# --------------------------------------------------------------------------------------------------
# 1. Brute-force comparisons.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_dca", [True, False], ids=["prefix", "causal"])
@pytest.mark.parametrize("use_segments", [True, False], ids=["packed", "nosegments"])
def test_decoder_mask_matches_brute_force(packed_batch, use_dca, use_segments):
    tokens, segments, dca = packed_batch
    seg = segments if use_segments else None
    d = dca if use_dca else None
    got = decoder_mask(
        jnp.asarray(tokens),
        None if d is None else jnp.asarray(d),
        None if seg is None else jnp.asarray(seg),
    )
    assert got.shape == (tokens.shape[0], 1, tokens.shape[1], tokens.shape[1])
    assert got.dtype == jnp.bool_
    np.testing.assert_array_equal(_np(got), ref_decoder_mask(tokens, d, seg))


def test_decoder_mask_arbitrary_features_match_brute_force():
    """Unstructured inputs: padding inside rows, dca on padding, non-contiguous segment ids."""
    rng = np.random.RandomState(7)
    tokens = rng.randint(0, 4, size=(32, 12)).astype(np.int32)  # ~25% zeros anywhere
    segments = rng.randint(0, 3, size=(32, 12)).astype(np.int32)
    dca = rng.randint(0, 2, size=(32, 12)).astype(np.int32)
    got = decoder_mask(jnp.asarray(tokens), jnp.asarray(dca), jnp.asarray(segments))
    np.testing.assert_array_equal(_np(got), ref_decoder_mask(tokens, dca, segments))


def test_decoder_mask_properties(packed_batch):
    """Structural consequences of the definition, stated independently of the reference."""
    tokens, segments, dca = packed_batch
    prefix_mask = _np(decoder_mask(jnp.asarray(tokens), jnp.asarray(dca),
                                   jnp.asarray(segments)))[:, 0]
    causal_mask = _np(decoder_mask(jnp.asarray(tokens), None, jnp.asarray(segments)))[:, 0]
    valid = tokens > 0
    # Padding rows and columns are all False.
    assert not prefix_mask[~valid].any()
    assert not prefix_mask.transpose(0, 2, 1)[~valid].any()
    # Every real token sees itself (no fully masked real rows).
    idx = np.arange(tokens.shape[1])
    assert (prefix_mask[:, idx, idx] == valid).all()
    # No attention across packed segments.
    cross_segment = segments[:, :, None] != segments[:, None, :]
    assert not prefix_mask[cross_segment].any()
    # Causal is strictly lower-triangular-or-diagonal; the prefix mask only adds entries.
    assert not (causal_mask & np.triu(np.ones(causal_mask.shape[1:], bool), k=1)).any()
    assert (prefix_mask | causal_mask == prefix_mask).all()
    # Anything the prefix mask adds over causal is between two prefix positions.
    extra = prefix_mask & ~causal_mask
    in_prefix = dca > 0
    assert not (extra & ~(in_prefix[:, :, None] & in_prefix[:, None, :])).any()


@pytest.mark.parametrize("use_segments", [True, False], ids=["packed", "nosegments"])
def test_encoder_mask_matches_brute_force(packed_batch, use_segments):
    tokens, segments, _ = packed_batch
    seg = segments if use_segments else None
    got = encoder_mask(jnp.asarray(tokens), None if seg is None else jnp.asarray(seg))
    np.testing.assert_array_equal(_np(got), ref_encoder_mask(tokens, seg))


@pytest.mark.parametrize("use_segments", [True, False], ids=["packed", "nosegments"])
def test_cross_mask_matches_brute_force(use_segments):
    rng = np.random.RandomState(99)
    # Encoder and decoder sides are packed independently (different lengths) but share the
    # segment numbering, as seqio's EncDecFeatureConverter produces.
    enc_tokens, enc_segments, _ = random_packed_batch(rng, 40, 19)
    dec_tokens = np.zeros((40, 11), np.int32)
    dec_segments = np.zeros((40, 11), np.int32)
    for b in range(40):
        pos = 0
        for s in range(1, enc_segments[b].max() + 1):
            room = 11 - pos
            if room <= 0:
                break
            n = rng.randint(1, room + 1)
            dec_tokens[b, pos:pos + n] = rng.randint(1, 100, size=n)
            dec_segments[b, pos:pos + n] = s
            pos += n
    dseg = dec_segments if use_segments else None
    eseg = enc_segments if use_segments else None
    got = cross_mask(
        jnp.asarray(dec_tokens), jnp.asarray(enc_tokens),
        None if dseg is None else jnp.asarray(dseg), None if eseg is None else jnp.asarray(eseg))
    assert got.shape == (40, 1, 11, 19)
    expected = ref_cross_mask(dec_tokens, enc_tokens, dseg, eseg)
    np.testing.assert_array_equal(_np(got), expected)
    if use_segments:
        # Sanity: packing actually produced cross-segment pairs that had to be masked.
        unsegmented = ref_cross_mask(dec_tokens, enc_tokens, None, None)
        assert (unsegmented & ~expected).any()


@pytest.mark.parametrize("use_prefix", [True, False], ids=["prefix", "causal"])
def test_cache_mask_matches_brute_force(use_prefix):
    rng = np.random.RandomState(5)
    batch, cache_length = 24, 17
    for q_len in (1, 6, cache_length):  # single decode step, chunk, full prefill
        if q_len == cache_length:
            positions = np.broadcast_to(np.arange(cache_length), (batch, cache_length)).copy()
        else:
            positions = rng.randint(0, cache_length, size=(batch, q_len))
        positions = positions.astype(np.int32)
        prefix_lengths = rng.randint(0, cache_length + 1, size=(batch,)).astype(np.int32)
        pl = prefix_lengths if use_prefix else None
        got = cache_mask(jnp.asarray(positions), cache_length,
                         None if pl is None else jnp.asarray(pl))
        assert got.shape == (batch, 1, q_len, cache_length)
        np.testing.assert_array_equal(_np(got), ref_cache_mask(positions, cache_length, pl))


def test_packed_cache_mask_hand_worked():
    """Two continuations packed after a 3-slot prefix (harness/eval/scoring.py's layout): slots
    0-2 prefix (segment 0), 3-4 continuation A at positions 3, 4, 5-6 continuation B at positions
    3, 4 again, 7 unwritten (segment -1). Each sees the prefix and its own earlier tokens."""
    queries = jnp.asarray([[3, 4, 3, 4]], jnp.int32)
    query_segments = jnp.asarray([[1, 1, 2, 2]], jnp.int32)
    key_positions = jnp.asarray([[0, 1, 2, 3, 4, 3, 4, 0]], jnp.int32)
    key_segments = jnp.asarray([[0, 0, 0, 1, 1, 2, 2, -1]], jnp.int32)
    want = np.array([[1, 1, 1, 1, 0, 0, 0, 0],
                     [1, 1, 1, 1, 1, 0, 0, 0],
                     [1, 1, 1, 0, 0, 1, 0, 0],
                     [1, 1, 1, 0, 0, 1, 1, 0]], bool)
    for prefix in (None, jnp.asarray([3], jnp.int32)):  # nd's prefix changes nothing after it
        got = _np(cache_mask(queries, 8, prefix, key_positions, query_segments, key_segments))
        np.testing.assert_array_equal(got[0, 0], want)
    with pytest.raises(ValueError, match="give both or neither"):
        masks.make_cache_mask(queries, 8, None, key_positions, query_segments, None)


def test_packed_cache_mask_matches_brute_force():
    """Random slot positions and segments: visible iff the key's position <= the query's, or both
    lie in the prefix, and the key's segment is 0 or the query's (never negative)."""
    rng = np.random.RandomState(7)
    batch, q_len, slots = 16, 6, 11
    queries = rng.randint(0, slots, size=(batch, q_len)).astype(np.int32)
    keys = rng.randint(0, slots, size=(batch, slots)).astype(np.int32)
    query_segments = rng.randint(0, 3, size=(batch, q_len)).astype(np.int32)
    key_segments = rng.randint(-1, 3, size=(batch, slots)).astype(np.int32)
    prefix = rng.randint(0, slots + 1, size=(batch,)).astype(np.int32)
    got = _np(cache_mask(jnp.asarray(queries), slots, jnp.asarray(prefix), jnp.asarray(keys),
                         jnp.asarray(query_segments), jnp.asarray(key_segments)))
    for b in range(batch):
        for q in range(q_len):
            for j in range(slots):
                seen = keys[b, j] <= queries[b, q] or (keys[b, j] < prefix[b]
                                                       and queries[b, q] < prefix[b])
                segment = key_segments[b, j] == 0 or key_segments[b, j] == query_segments[b, q]
                assert got[b, 0, q, j] == (seen and segment and key_segments[b, j] >= 0)


def test_cache_mask_agrees_with_training_mask():
    """Prefill over an unpacked example (positions 0..n-1, prefix = sum(dca)) reproduces the
    training-time decoder mask on its valid region, so decoding sees what training saw."""
    rng = np.random.RandomState(11)
    batch, length = 32, 14
    tokens = np.zeros((batch, length), np.int32)
    dca = np.zeros((batch, length), np.int32)
    n = rng.randint(1, length + 1, size=batch)
    prefix = np.array([rng.randint(0, k + 1) for k in n], np.int32)
    for b in range(batch):
        tokens[b, :n[b]] = rng.randint(1, 100, size=n[b])
        dca[b, :prefix[b]] = 1
    train = _np(decoder_mask(jnp.asarray(tokens), jnp.asarray(dca)))
    positions = np.broadcast_to(np.arange(length), (batch, length)).astype(np.int32)
    cache = _np(cache_mask(jnp.asarray(positions), length,
                           jnp.asarray(dca.sum(axis=1).astype(np.int32))))
    for b in range(batch):
        k = n[b]
        np.testing.assert_array_equal(cache[b, 0, :k, :k], train[b, 0, :k, :k])


# --------------------------------------------------------------------------------------------------
# 2. t5x's worked example.
# --------------------------------------------------------------------------------------------------


def test_t5x_docstring_example():
    tokens = jnp.array([[6, 7, 8, 3, 4, 5, 0]], jnp.int32)
    segments = jnp.array([[1, 1, 1, 2, 2, 2, 0]], jnp.int32)
    dca = jnp.array([[1, 1, 0, 1, 1, 0, 0]], jnp.int32)
    expected = np.array([
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 0],
    ], dtype=bool)
    got = _np(decoder_mask(tokens, dca, segments))
    assert got.shape == (1, 1, 7, 7)
    np.testing.assert_array_equal(got[0, 0], expected)
    # Without the prefix feature the same row is plain causal within segments.
    causal = _np(decoder_mask(tokens, None, segments))[0, 0]
    expected_causal = expected.copy()
    expected_causal[0, 1] = expected_causal[3, 4] = False
    np.testing.assert_array_equal(causal, expected_causal)


# --------------------------------------------------------------------------------------------------
# 3. The contract with seqio's PrefixLMFeatureConverter.
# --------------------------------------------------------------------------------------------------

# The lengths of seqio's packed docstring example (packed length 15), reused for all examples so
# that one packed conversion serves every packed check (each conversion costs ~1-5 s of tf.data
# graph building).
SEQIO_LENGTHS = {"inputs": 7, "targets": 8}
DOCSTRING_EXAMPLES = [{"inputs": [7, 8, 5, 1], "targets": [3, 9, 1]},
                      {"inputs": [8, 4, 9, 3, 1], "targets": [4, 1]}]


def _convert(tf, seqio, examples, pack):
    signature = {"inputs": tf.TensorSpec([None], tf.int32),
                 "targets": tf.TensorSpec([None], tf.int32)}
    ds = tf.data.Dataset.from_generator(
        lambda: ({k: np.asarray(v, np.int32) for k, v in ex.items()} for ex in examples),
        output_signature=signature)
    converter = seqio.PrefixLMFeatureConverter(pack=pack)
    return list(converter(ds, SEQIO_LENGTHS).as_numpy_iterator())


def _random_seqio_examples():
    """Hand-made edge cases plus random ones. The first input token (>= 100) identifies the example,
    so converted segments can be matched back to their source whatever order packing chose."""
    n_in, n_tg = SEQIO_LENGTHS["inputs"], SEQIO_LENGTHS["targets"]
    hand = [([1], [2]), ([3, 1], [4, 5, 6, 7, 8, 1]), ([9] * n_in, [1]), ([2] * n_in, [3] * n_tg),
            ([5, 6, 7], [8, 9])]
    rng = np.random.RandomState(2022)
    rand = [(list(rng.randint(2, 100, size=rng.randint(1, n_in + 1))),
             list(rng.randint(2, 100, size=rng.randint(1, n_tg + 1))))
            for _ in range(25)]
    return [{"inputs": [100 + idx] + [int(t) for t in inputs[1:]],
             "targets": [int(t) for t in targets]}
            for idx, (inputs, targets) in enumerate(hand + rand)]


@pytest.fixture(scope="module")
def seqio_converted():
    """Real seqio outputs: (examples, packed rows, unpacked rows). seqio packs greedily in order,
    so seqio's docstring example, placed first, fills the first packed row on its own."""
    tf = pytest.importorskip("tensorflow")
    seqio = pytest.importorskip("seqio")
    examples = DOCSTRING_EXAMPLES + _random_seqio_examples()
    packed = _convert(tf, seqio, examples, pack=True)
    unpacked = _convert(tf, seqio, examples, pack=False)
    return examples, packed, unpacked


def _check_converted(rows, examples, packed):
    """Checks (a) dca = inputs + 1 per example and loss weights on targets only, (b) the decoder
    mask on the converted arrays equals the brute force and leaks no predicted target."""
    by_id = {ex["inputs"][0]: ex for ex in examples}
    assert len(by_id) == len(examples)
    seen = []
    for row in rows:
        tokens = row["decoder_target_tokens"]
        dca = row["decoder_causal_attention"]
        weights = row["decoder_loss_weights"]
        segments = row["decoder_segment_ids"] if packed else (tokens > 0).astype(np.int32)
        assert not dca[tokens == 0].any(), "prefix must not cover padding"
        for s in np.unique(segments[segments > 0]):
            where = np.flatnonzero(segments == s)
            assert (np.diff(where) == 1).all(), "segments must be contiguous"
            ex = by_id[int(tokens[where[0]])]
            seen.append(int(tokens[where[0]]))
            n_in, n_tg = len(ex["inputs"]), len(ex["targets"])
            np.testing.assert_array_equal(tokens[where], ex["inputs"] + ex["targets"])
            # (a) bidirectional over the inputs plus exactly one extra position.
            np.testing.assert_array_equal(dca[where], [1] * (n_in + 1) + [0] * (n_tg - 1))
            np.testing.assert_array_equal(weights[where], [0] * n_in + [1] * n_tg)

    assert sorted(seen) == sorted(by_id), "every example appears exactly once"

    tokens = np.stack([r["decoder_target_tokens"] for r in rows])
    dca = np.stack([r["decoder_causal_attention"] for r in rows])
    weights = np.stack([r["decoder_loss_weights"] for r in rows])
    segments = np.stack([r["decoder_segment_ids"] for r in rows]) if packed else None
    got = _np(decoder_mask(jnp.asarray(tokens), jnp.asarray(dca),
                           None if segments is None else jnp.asarray(segments)))
    # (b) matches the definition.
    np.testing.assert_array_equal(got, ref_decoder_mask(tokens, dca, segments))
    # No leakage: if query i sees a later key j, the token j reads (decoder_input_tokens[j] ==
    # decoder_target_tokens[j-1]) must not be a loss-bearing target, i.e. one predicted at j-1 >= i.
    b_idx, _, i_idx, j_idx = np.nonzero(got)
    later = j_idx > i_idx
    assert not weights[b_idx[later], j_idx[later] - 1].any(), "prefix attention leaks a target"
    # And the prefix is actually used: some query sees a later key.
    assert later.any()


def test_seqio_packed_prefix_lm_matches_masks(seqio_converted):
    examples, packed_rows, _ = seqio_converted
    assert len(packed_rows) < len(examples), "packing should put several examples in one row"
    assert any(r["decoder_segment_ids"].max() > 1 for r in packed_rows)
    _check_converted(packed_rows, examples, packed=True)


def test_seqio_unpacked_prefix_lm_matches_masks(seqio_converted):
    examples, _, unpacked_rows = seqio_converted
    assert len(unpacked_rows) == len(examples)
    assert "decoder_segment_ids" not in unpacked_rows[0]
    _check_converted(unpacked_rows, examples, packed=False)


def test_seqio_docstring_packed_example(seqio_converted):
    _, packed_rows, _ = seqio_converted
    row = packed_rows[0]
    expected = {
        "decoder_target_tokens": [7, 8, 5, 1, 3, 9, 1, 8, 4, 9, 3, 1, 4, 1, 0],
        "decoder_input_tokens": [0, 7, 8, 5, 1, 3, 9, 0, 8, 4, 9, 3, 1, 4, 0],
        "decoder_loss_weights": [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0],
        "decoder_positions": [0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5, 6, 0],
        "decoder_segment_ids": [1] * 7 + [2] * 7 + [0],
        "decoder_causal_attention": [1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0],
    }
    for key, value in expected.items():
        np.testing.assert_array_equal(row[key], value, err_msg=key)
    got = _np(decoder_mask(jnp.asarray(row["decoder_target_tokens"][None]),
                           jnp.asarray(row["decoder_causal_attention"][None]),
                           jnp.asarray(row["decoder_segment_ids"][None])))[0, 0]
    # Example 1: positions 0-4 (4 inputs + 1) bidirectional, 5-6 causal; example 2: 7-12 / 13.
    expected_mask = np.zeros((15, 15), bool)
    for start, n_prefix, n in ((0, 5, 7), (7, 6, 7)):
        for i in range(n):
            for j in range(n):
                expected_mask[start + i, start + j] = j <= i or (i < n_prefix and j < n_prefix)
    np.testing.assert_array_equal(got, expected_mask)


# --------------------------------------------------------------------------------------------------
# 4. mask_to_bias.
# --------------------------------------------------------------------------------------------------


def test_mask_to_bias_values():
    rng = np.random.RandomState(3)
    mask = rng.rand(4, 1, 9, 9) < 0.5
    bias = masks.mask_to_bias(jnp.asarray(mask))
    assert bias.dtype == jnp.float32
    b = _np(bias)
    assert (b[mask] == 0.0).all()
    assert (b[~mask] == masks.MASKED_LOGIT).all()
    assert masks.MASKED_LOGIT <= -1e9 and np.isfinite(masks.MASKED_LOGIT)
    bf16 = masks.mask_to_bias(jnp.asarray(mask), jnp.bfloat16)
    assert bf16.dtype == jnp.bfloat16
    b16 = _np(bf16.astype(jnp.float32))
    assert (b16[mask] == 0.0).all() and np.isfinite(b16).all() and (b16[~mask] <= -1e9).all()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_softmax_with_bias_is_finite_and_exact(dtype):
    """Padding queries have fully masked rows; with a position bias added they must give finite
    weights, and in partially masked rows masked keys must get exactly zero weight."""
    rng = np.random.RandomState(4)
    tokens, segments, dca = random_packed_batch(rng, 16, 12)
    mask = decoder_mask(jnp.asarray(tokens), jnp.asarray(dca), jnp.asarray(segments))
    mask_np = _np(mask)
    assert (~mask_np.any(axis=-1)).any(), "batch must contain fully masked (padding) rows"
    logits = jnp.asarray(rng.randn(16, 4, 12, 12) * 30.0, dtype)  # 4 heads
    pos_bias = jnp.asarray(rng.randn(1, 4, 12, 12) * 100.0, dtype)  # a large relative-position bias
    scores = logits + pos_bias + masks.mask_to_bias(mask, dtype)
    weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1)
    w = _np(weights)
    assert np.isfinite(w).all()
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
    full = np.broadcast_to(mask_np, w.shape)
    rows_with_keys = full.any(axis=-1, keepdims=True)
    assert (w[~full & np.broadcast_to(rows_with_keys, w.shape)] == 0.0).all()
    # Allowed-key weights equal a softmax restricted to the allowed keys.
    raw = _np((logits + pos_bias).astype(jnp.float32))
    row_max = np.where(full, raw, -np.inf).max(-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    ref = np.exp(np.where(full, raw - row_max, -np.inf))
    ref = ref / np.maximum(ref.sum(-1, keepdims=True), 1e-30)
    sel = np.broadcast_to(rows_with_keys, w.shape) & full
    np.testing.assert_allclose(w[sel], ref[sel], rtol=1e-5, atol=1e-6)
