"""The scoring core (harness/eval/scoring.py) against independent full-forward references.

The reference knows nothing of caches, buckets, batching or context sharing: for every request it
builds the one row seqio's converters build (tests/helpers.decoder_batch for the decoders: the
prefix-LM layout with ``decoder_causal_attention`` over the context + 1 positions; the context as
encoder input for ed), runs ``Transformer.__call__`` over the whole row and sums
``models.losses.token_log_probs`` over the continuation. Greedy decoding is re-run from scratch at
every step. One padded width (one compile per architecture) serves every reference call.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from harness.storage.checkpoint import CheckpointError, path_str
from harness.eval.scoring import Scorer, resolve_architecture
from helpers import assert_one_line_error, decoder_batch, shift_right, tiny_config
from models.decoding import EOS_ID, PAD_ID, init_cache
from models.losses import token_log_probs
from models.transformer import Transformer, abstract_params

VOCAB = 384          # the byte vocabulary's 359 ids, padded (README)
INPUTS, TARGETS = 16, 8
WIDTH = 32           # reference rows: >= INPUTS + TARGETS
TOLERANCE = 1e-4     # whole models, float32 (CONTRIBUTING.md)
MAX_NEW = 6


def _params(config, seed):
    """Random parameters drawn with numpy (no init compile): twice the initialiser's scale, so that
    distributions are peaked and greedy checks do not hinge on near-ties."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path_str(path)
        if name.endswith("scale"):  # RMSNorm
            values = 1.0 + 0.1 * rng.standard_normal(leaf.shape)
        elif name.endswith(("embedding", "rel_embedding")):
            values = rng.standard_normal(leaf.shape)
        else:  # kernels: fan-in is every axis before the output axes
            fan_in = np.prod(leaf.shape[-3:-1]) if name.endswith("out") else leaf.shape[-2]
            if name.endswith(("query", "key", "value")):
                fan_in = leaf.shape[-3]
            values = 2.0 * rng.standard_normal(leaf.shape) / np.sqrt(fan_in)
        return jnp.asarray(values, jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, abstract_params(config))


class Reference:
    """Full forward passes over one padded row per request."""

    def __init__(self, config, params):
        self.config, self.params = config, params
        self.apply = jax.jit(Transformer(config).apply)

    def truncate(self, context, continuation):
        keep = INPUTS if self.config.is_encoder_decoder else INPUTS + TARGETS - len(continuation)
        return list(context)[max(len(context) - keep, 0):]

    def _logits(self, context, continuation):
        """Logits over the row and ``(targets, weights)`` of the continuation."""
        if self.config.is_encoder_decoder:
            targets = np.zeros((1, WIDTH), np.int32)
            targets[0, :len(continuation)] = continuation
            encoder = np.zeros((1, WIDTH), np.int32)
            encoder[0, :len(context)] = context
            batch = {"encoder_input_tokens": encoder, "decoder_target_tokens": targets,
                     "decoder_input_tokens": shift_right(targets)}
            weights = (targets > 0).astype(np.float32)
        else:
            targets = np.zeros((1, WIDTH), np.int32)
            row = list(context) + list(continuation)
            targets[0, :len(row)] = row
            batch = decoder_batch(targets, prefix_lengths=[len(context)])
            weights = batch.pop("decoder_loss_weights").astype(np.float32)
            if self.config.architecture == "cd":
                del batch["decoder_causal_attention"]  # a fully causal pass
        logits = np.asarray(self.apply({"params": self.params}, batch))
        return logits, targets, weights

    def score(self, context, continuation):
        context = self.truncate(context, continuation)
        logits, targets, weights = self._logits(context, continuation)
        log_probs = np.asarray(token_log_probs(jnp.asarray(logits), jnp.asarray(targets)))
        greedy = ((logits.argmax(-1) == targets) | (weights == 0)).all()
        return float((log_probs * weights).sum()), bool(greedy)

    def greedy(self, context, steps=MAX_NEW):
        """Argmax decoding by a full forward pass per step (never padding; ends at EOS)."""
        context = list(context)[-INPUTS:]
        generated = []
        for _ in range(steps):
            # The next position's target is a placeholder (2): only non-zero-ness is read.
            logits, _, _ = self._logits(context, generated + [2])
            position = len(generated) + (0 if self.config.is_encoder_decoder else len(context))
            scores = logits[0, position].copy()
            scores[PAD_ID] = -np.inf
            generated.append(int(scores.argmax()))
            if generated[-1] == EOS_ID:
                break
        return generated


def _requests(rng, reference, encoder_decoder):
    """Mixed lengths: shared contexts with several choices, single-token choices, an over-long
    context (left-truncated, differently per choice), an empty context (decoders), and a
    continuation that is greedy by construction."""
    def tokens(n):
        return [int(t) for t in rng.integers(3, 259, n)]

    long_choices = (1, 7, 8) if encoder_decoder else (1, 9, 14)
    groups = [(3, (1, 1, 3, 6)), (5, (2, 7)), (12, long_choices), (30, (4, 8)), (7, (1,))]
    if not encoder_decoder:
        groups.append((0, (3, 1)))
    requests = []
    for context_length, choices in groups:
        context = tokens(context_length)
        requests += [(context, tokens(m)) for m in choices]
    greedy_context = tokens(6)
    requests.append((greedy_context, reference.greedy(greedy_context, steps=4)))
    return requests


@pytest.fixture(scope="module")
def decoder_params():
    return _params(tiny_config("cd", vocab_size=VOCAB), seed=3)


@pytest.fixture(scope="module")
def ed_params():
    return _params(tiny_config("ed", vocab_size=VOCAB), seed=5)


def _scorer(config, params, buckets=(64,), **kwargs):
    # (64,): every axis has one bucket, its limit (one compile per function); nd uses (8,) to
    # exercise several buckets.
    return Scorer(config, params, batch_size=4, max_inputs_length=INPUTS,
                  max_targets_length=TARGETS, length_buckets=buckets, generate_chunk=4, **kwargs)


@pytest.fixture(scope="module")
def built(decoder_params, ed_params):
    """``built(arch)`` -> (scorer, reference, requests, scores), made once per module; nd is the cd
    checkpoint evaluated as nd."""
    cache = {}

    def build(arch):
        if arch not in cache:
            config = tiny_config(arch, vocab_size=VOCAB)
            if arch == "ed":
                params = ed_params
                scorer = _scorer(config, params)
            else:
                params = decoder_params
                scorer = _scorer(tiny_config("cd", vocab_size=VOCAB), params, architecture=arch,
                                 buckets=(8,) if arch == "nd" else (64,))
            assert scorer.config == config
            reference = Reference(config, params)
            requests = _requests(np.random.default_rng(0), reference, arch == "ed")
            cache[arch] = scorer, reference, requests, scorer.loglikelihood(requests)
        return cache[arch]

    return build


@pytest.fixture(params=["cd", "nd", "ed"])
def setup(request, built):
    return built(request.param)


def test_loglikelihood_equals_full_forward(setup):
    scorer, reference, requests, scores = setup
    want = [reference.score(*r) for r in requests]
    np.testing.assert_allclose([s for s, _ in scores], [w for w, _ in want], rtol=0,
                               atol=TOLERANCE)
    assert [g for _, g in scores] == [g for _, g in want]
    # Not vacuous: both greedy outcomes occur, and the over-long context was truncated.
    assert {g for _, g in scores} == {True, False}
    assert any(len(reference.truncate(c, t)) < len(c) for c, t in requests)


def test_batched_bucketed_scoring_equals_one_request_at_a_time(built):
    # nd (several length buckets, the prefix + 1 rule): one architecture is enough here.
    scorer, _, requests, scores = built("nd")
    single = [scorer.loglikelihood([r])[0] for r in requests]
    # float32: a different padded length sums in a different order; a few ulps of a -48 score is
    # ~1e-5 (seen on an AVX-512 host), so the bound is relative as well as absolute.
    np.testing.assert_allclose([s for s, _ in scores], [s for s, _ in single], rtol=1e-6,
                               atol=1e-5)
    assert [g for _, g in scores] == [g for _, g in single]


def test_packing_over_several_passes_equals_one_pass(built, monkeypatch):
    """With room for only a few packed tokens per row, a context's continuations spread over
    several passes (and its longest alone in one): the scores do not change."""
    import harness.eval.scoring as scoring

    for arch in ("cd", "ed"):
        scorer, _, requests, scores = built(arch)
        monkeypatch.setattr(scoring, "PACKED_WIDTH", 3)
        narrow = _scorer(scorer.config, scorer.params)
        passes = []
        original = narrow._run_packed
        monkeypatch.setattr(narrow, "_run_packed",
                            lambda *args: passes.append(args[1]) or original(*args))
        got = narrow.loglikelihood(requests)
        monkeypatch.undo()
        # Not vacuous: rows share a pass, a row holds several blocks, a context needs 2 passes.
        assert max(len({b.row for b in blocks}) for blocks in passes) > 1
        assert any(len(blocks) > len({b.row for b in blocks}) for blocks in passes)
        assert len(passes) >= 2
        np.testing.assert_allclose([s for s, _ in got], [s for s, _ in scores], rtol=0,
                                   atol=1e-5)
        assert [g for _, g in got] == [g for _, g in scores]


def test_training_only_fields_share_the_compiles_and_change_nothing(built, decoder_params):
    """A checkpoint finetuned with dropout (and rematerialisation) scores as its config without
    them: the same numbers, from the same compiled passes."""
    import harness.eval.scoring as scoring

    _, _, requests, scores = built("cd")
    compiled = (scoring._prefill._cache_size(), scoring._continue._cache_size())
    trained = tiny_config("cd", vocab_size=VOCAB).replace(dropout_rate=0.1, remat_policy="full")
    assert trained != tiny_config("cd", vocab_size=VOCAB)
    assert _scorer(trained, decoder_params).loglikelihood(requests) == scores
    assert (scoring._prefill._cache_size(), scoring._continue._cache_size()) == compiled


def test_results_keep_request_order_and_empty_continuations(setup):
    scorer, _, requests, scores = setup
    shuffled = [requests[i] for i in np.random.default_rng(1).permutation(len(requests))]
    by_request = {repr(r): s for r, s in zip(requests, scores)}
    got = scorer.loglikelihood(shuffled + [(shuffled[0][0], [])])
    assert got[-1] == (0.0, True)
    for request, (score, greedy) in zip(shuffled, got):
        assert abs(score - by_request[repr(request)][0]) < 1e-5
        assert greedy == by_request[repr(request)][1]


def test_cd_and_nd_differ_and_switch_back(built, decoder_params):
    """nd (the cd checkpoint with the prefix mask; equal to its full-forward reference above)
    differs from cd; an nd checkpoint evaluated as cd is exactly cd."""
    _, _, requests, scores = built("cd")
    as_nd, _, nd_requests, nd_scores = built("nd")
    assert as_nd.config == tiny_config("nd", vocab_size=VOCAB)
    # The same requests but the last (each architecture's own greedy continuation).
    assert nd_requests[:-1] == requests[:-1]
    with_context = [i for i, (c, _) in enumerate(requests[:-1]) if c]
    assert all(abs(nd_scores[i][0] - scores[i][0]) > 1e-3 for i in with_context)
    back = _scorer(tiny_config("nd", vocab_size=VOCAB), decoder_params, architecture="cd")
    assert back.loglikelihood(requests) == scores


def test_generate_equals_full_forward_argmax_decoding(setup):
    scorer, reference, requests, _ = setup
    # Prompts of different lengths in one batch (all in one prefix bucket: one compile).
    contexts = list({tuple(c): c for c, _ in requests if len(c) < 8}.values())
    assert len({len(c) for c in contexts}) >= 4
    got = scorer.generate(contexts, MAX_NEW)
    want = [reference.greedy(c) for c in contexts]
    assert got == [row[:-1] if row[-1] == EOS_ID else row for row in want]  # EOS not returned
    assert len({t for row in want for t in row}) > 2  # not one repeated token


def test_generate_stops(setup):
    scorer, reference, requests, _ = setup
    context = requests[0][0]
    full = reference.greedy(context)
    assert len(full) == MAX_NEW and EOS_ID not in full
    # A stop sequence ends the row before its first occurrence.
    first = next(i for i in range(MAX_NEW) if full[i:i + 2] == full[2:4])
    assert scorer.generate([context], MAX_NEW, stop=[full[2:4], [VOCAB - 1]]) == [full[:first]]
    # A callable is checked after the first token, then every generate_chunk (4) tokens.
    assert scorer.generate([context], MAX_NEW, stop=lambda ids: len(ids) >= 2) == [full[:5]]
    assert scorer.generate([context], 1) == [full[:1]]
    assert scorer.generate([context], 0) == [[]]


def test_generate_ends_at_eos(built):
    # cd only: the same compiled functions with other parameter values.
    scorer, _, requests, _ = built("cd")
    params = jax.tree.map(lambda x: x, scorer.params)
    embedding = params["token_embedder"]["embedding"]
    # EOS becomes the favourite next token everywhere (tests/test_decoding.py's trick).
    params["token_embedder"]["embedding"] = embedding.at[EOS_ID].set(embedding.sum(0) * 50)
    eos_scorer = _scorer(scorer.config, params)
    assert eos_scorer.generate([c for c, _ in requests[:5]], MAX_NEW) == [[]] * 5


def test_hidden_states_give_the_logits():
    """``decode_with_cache(return_hidden=True)`` + ``logits_from_hidden`` == the logits (the untied
    head here; the scorer tests above cover the tied one)."""
    config = tiny_config("nd", vocab_size=VOCAB, tie_embeddings=False)
    params = _params(config, seed=0)
    model = Transformer(config)
    tokens = jnp.asarray(np.random.default_rng(0).integers(2, VOCAB, (2, 5)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(5), (2, 5))
    prefix_lengths = jnp.asarray([2, 4])

    @jax.jit
    def both(params):
        variables = {"params": params}
        cache = init_cache(config, 2, 5)
        logits, _ = model.apply(variables, tokens, positions, cache, prefix_lengths,
                                method=Transformer.decode_with_cache)
        hidden, _ = model.apply(variables, tokens, positions, cache, prefix_lengths,
                                return_hidden=True, method=Transformer.decode_with_cache)
        return logits, hidden, model.apply(variables, hidden,
                                           method=Transformer.logits_from_hidden)

    logits, hidden, projected = both(params)
    assert hidden.shape == (2, 5, config.d_model)
    np.testing.assert_allclose(projected, logits, rtol=0, atol=1e-5)


# -------------------------------------------------------------------------------------------------
# Errors: one line, before any compile.
# -------------------------------------------------------------------------------------------------

def test_architecture_switch_errors():
    ed = tiny_config("ed")
    with pytest.raises(ValueError) as excinfo:
        resolve_architecture(ed, "cd")
    assert_one_line_error(excinfo, "'cd'", "'ed'")
    with pytest.raises(ValueError) as excinfo:
        resolve_architecture(tiny_config("cd"), "ed")
    assert_one_line_error(excinfo, "'ed'")
    with pytest.raises(ValueError) as excinfo:
        resolve_architecture(tiny_config("cd"), "xd")
    assert_one_line_error(excinfo, "'xd'", "cd, nd, ed")
    assert resolve_architecture(tiny_config("nd"), "cd") == tiny_config("cd")


def test_bad_requests_and_arguments(decoder_params, ed_params):
    config = tiny_config("cd", vocab_size=VOCAB)
    scorer = _scorer(config, decoder_params)
    with pytest.raises(ValueError) as excinfo:
        scorer.loglikelihood([([5], [6]), ([5], [7] * (INPUTS + TARGETS + 1))])
    assert_one_line_error(excinfo, "request 1", "25 tokens", "24")
    with pytest.raises(ValueError) as excinfo:
        scorer.loglikelihood([([5, VOCAB], [6])])
    assert_one_line_error(excinfo, "request 0", str(VOCAB), "vocab_size")
    with pytest.raises(ValueError) as excinfo:
        scorer.loglikelihood([([5, 0], [6])])
    assert_one_line_error(excinfo, "token id 0", "padding")
    with pytest.raises(ValueError) as excinfo:
        Scorer(config, decoder_params, batch_size=0)
    assert_one_line_error(excinfo, "batch_size=0")
    with pytest.raises(ValueError) as excinfo:
        scorer.generate([[5]], -1)
    assert_one_line_error(excinfo, "max_new_tokens=-1")
    ed = tiny_config("ed", vocab_size=VOCAB)
    with pytest.raises(ValueError) as excinfo:
        _scorer(ed, ed_params).loglikelihood([([5], [6] * 9)])
    assert_one_line_error(excinfo, "request 0", "max_targets_length=8")


def test_from_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError) as excinfo:
        Scorer.from_checkpoint(tmp_path / "missing")
    assert_one_line_error(excinfo, "missing")


@pytest.mark.parametrize("arch", ["nd", "ed"])
def test_scoring_on_a_mesh_equals_one_device(built, decoder_params, ed_params, arch):
    """Parameters sharded over a (4, 2) mesh by the training rules give the same scores (and, for
    nd, the same generations) as one device."""
    from jax.sharding import PartitionSpec as P
    from models import sharding

    scorer, _, requests, scores = built(arch)
    mesh = sharding.make_mesh(4, 2)
    params = ed_params if arch == "ed" else decoder_params
    sharded = _scorer(tiny_config("ed" if arch == "ed" else "cd", vocab_size=VOCAB), params,
                      architecture=arch, buckets=scorer.length_buckets, mesh=mesh)
    stack = "decoder" if arch != "ed" else "encoder"
    query = sharded.params[stack]["layers"]["self_attention"]["query"]
    assert query.sharding.spec == P(None, None, sharding.MODEL, None)  # heads split over "model"
    np.testing.assert_allclose([s for s, _ in sharded.loglikelihood(requests)],
                               [s for s, _ in scores], rtol=0, atol=TOLERANCE)  # whole model
    if arch == "nd":
        contexts = [c for c, _ in requests[:4]]
        assert sharded.generate(contexts, MAX_NEW) == scorer.generate(contexts, MAX_NEW)


def test_mesh_shape_must_fit_devices_and_model(tmp_path, decoder_params):
    from harness.storage.checkpoint import save_model

    save_model(tmp_path / "m", tiny_config("cd", vocab_size=VOCAB), decoder_params)
    with pytest.raises(ValueError) as excinfo:
        Scorer.from_checkpoint(tmp_path / "m", mesh_shape=(3, 1))
    assert_one_line_error(excinfo, "mesh_shape=(3, 1)", "devices")
    with pytest.raises(ValueError) as excinfo:
        Scorer.from_checkpoint(tmp_path / "m", mesh_shape=(2, 4))  # tiny has 2 heads
    assert_one_line_error(excinfo, "model axis 4", "num_heads=2")
