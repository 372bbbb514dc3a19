"""The lm-eval model ``archobj`` (harness/eval/lm_eval_adapter.py) and the TF-free tokenizers.

The adapter's numbers are the scorer's (tests/test_scoring.py checks those against full forward
passes); here: lm-eval's request path (Instances, tokenization, empty contexts, rolling windows,
generation with ``until``), the registry, the constructor forms and the one-line errors. The
tokenizers are compared with seqio's vocabularies, which training uses.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from harness.storage.checkpoint import CheckpointError, path_str, save_model
from harness.eval.tokenizer import load_tokenizer
from helpers import assert_one_line_error, tiny_config
from models.transformer import abstract_params

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402

from harness.eval.lm_eval_adapter import ArchobjLM  # noqa: E402

VOCAB = 384
ARGS = "batch_size=4,max_inputs_length=16,max_targets_length=8"
TEXTS = ["Hello, world!", "naïve café – 東京 ☃", " leading and  double  spaces\nnew line",
         "sentinel <extra_id_0> inside", ""]


def _params(config, seed):
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        scale = 1.0 if path_str(path).endswith(("scale", "embedding")) else 0.3
        return jnp.asarray(scale * rng.standard_normal(leaf.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, abstract_params(config))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A cd run directory (config.json with data.vocabulary) and a converted-style ed model."""
    root = tmp_path_factory.mktemp("adapter")
    run = root / "cd_run"
    run.mkdir()
    # A training run's config.json: the run config around the model (save_model keeps it);
    # tests/test_loop.py evaluates a run that `archobj train` wrote.
    (run / "config.json").write_text(json.dumps({"run": {"data": {"vocabulary": "byte"}}}))
    config = tiny_config("cd", vocab_size=VOCAB)
    save_model(run, config, _params(config, 0), step=3)
    converted = root / "ed_converted"
    save_model(converted, tiny_config("ed"), _params(tiny_config("ed"), 2))
    return run, converted


@pytest.fixture(scope="module")
def lm(checkpoints):
    return get_model("archobj").create_from_arg_string(f"checkpoint={checkpoints[0]},{ARGS}")


def test_registered_and_built_from_an_arg_string(lm, checkpoints):
    assert get_model("archobj") is ArchobjLM
    assert isinstance(lm, ArchobjLM)
    assert (lm.backend, lm.eot_token_id, lm.batch_size, lm.max_length) == ("causal", 1, 4, 24)
    assert lm.tokenizer.name == "byte" and lm.scorer.architecture == "cd"
    assert lm.get_model_info()["archobj_checkpoint"] == str(checkpoints[0])
    # lm-eval's evaluator adds these to every model; the device is JAX's.
    nd = ArchobjLM(str(checkpoints[0]), architecture="nd", step=3, batch_size="4",
                   max_inputs_length=16, max_targets_length=8, device="cpu", max_batch_size=None)
    assert nd.scorer.architecture == "nd" and nd.step == 3
    coarse = ArchobjLM(str(checkpoints[0]), max_inputs_length=16, max_targets_length=8,
                       length_buckets="4/8")
    assert coarse.scorer.length_buckets == (4, 8) and lm.scorer.length_buckets != (4, 8)


def test_loglikelihood_matches_the_scorer(lm):
    # Short contexts: one prefix bucket, shared with the other tests (compiles).
    pairs = [("A cat ", "mat"), ("A cat", " hat"), ("", "Alone"), ("2+2=", " 4"), ("2+2=", " 5")]
    got = lm.loglikelihood([Instance("loglikelihood", {}, pair, i) for i, pair in
                            enumerate(pairs)], disable_tqdm=True)
    encode = lm.tokenizer.encode
    # lm-eval's causal split: trailing spaces move to the continuation; an empty context is EOS.
    expected_tokens = [(encode("A cat"), encode(" mat")), (encode("A cat"), encode(" hat")),
                       ([1], encode("Alone")), (encode("2+2="), encode(" 4")),
                       (encode("2+2="), encode(" 5"))]
    assert got == lm.scorer.loglikelihood(expected_tokens) == lm.score_tokens(expected_tokens)
    assert all(np.isfinite(score) and score < 0 for score, _ in got)


def test_progress_bars_can_be_turned_off(checkpoints, capsys):
    """lm-eval's "Tokenizing inputs" bar, which the evaluator asks for, is not drawn with
    ``progress=False`` (a grid's evaluations) and is drawn by default."""
    requests = [Instance("loglikelihood", {}, ("A cat", " sat"), 0)]
    for progress, drawn in ((False, False), (True, True)):
        lm = ArchobjLM(str(checkpoints[0]), max_inputs_length=16, max_targets_length=8,
                       progress=progress)
        lm.loglikelihood(requests)
        assert ("Tokenizing inputs" in capsys.readouterr().err) is drawn


def test_loglikelihood_rolling_scores_every_token_once(lm):
    text = "A rolling document that is longer than one row of the tiny models."
    [total] = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)],
                                       disable_tqdm=True)
    tokens = lm.tokenizer.encode(text)
    assert len(tokens) == 66
    # lm-eval's disjoint windows of row_budget - 1 = 23 predictions: EOS, then one token of
    # context; the last, shorter window takes as much context as fills the 24-token row.
    windows = [([1], tokens[:23]), (tokens[22:23], tokens[23:46]), (tokens[42:46], tokens[46:])]
    np.testing.assert_allclose(total, sum(s for s, _ in lm.score_tokens(windows)), atol=1e-4)


def test_generate_until(lm):
    context = "Once"
    [free] = lm.scorer.generate([lm.tokenizer.encode(context)], 6)
    text = lm.tokenizer.decode(free)
    assert len(text) >= 3
    until = text[2:3]  # a character that the greedy continuation contains
    requests = [Instance("generate_until", {}, (context, {"until": [until], "max_gen_toks": 6}), 0),
                Instance("generate_until", {}, (context, {"until": "\x00", "max_gen_toks": 2}), 1)]
    got = lm.generate_until(requests, disable_tqdm=True)
    assert got == [text.split(until)[0], lm.tokenizer.decode(free[:2])]
    with pytest.raises(ValueError) as excinfo:
        lm.generate_until([Instance("generate_until", {}, (context, {"do_sample": True}), 0)])
    assert_one_line_error(excinfo, "do_sample")


def test_errors_are_one_line(checkpoints, tmp_path):
    run, converted = checkpoints
    with pytest.raises(CheckpointError) as excinfo:
        ArchobjLM(str(tmp_path / "missing"))
    assert_one_line_error(excinfo, "missing")
    with pytest.raises(ValueError) as excinfo:
        ArchobjLM(str(run), vocabulary="no-such-vocabulary")
    assert_one_line_error(excinfo, "no-such-vocabulary")
    with pytest.raises(ValueError) as excinfo:
        ArchobjLM(str(converted))  # saved without a vocabulary: nothing recorded
    assert_one_line_error(excinfo, "records no vocabulary", "vocabulary=")
    with pytest.raises(ValueError) as excinfo:
        ArchobjLM(str(converted), vocabulary="byte", architecture="cd")
    assert_one_line_error(excinfo, "'cd'", "'ed'")
    with pytest.raises(ValueError) as excinfo:
        ArchobjLM(str(converted), vocabulary="byte")  # 359 ids > the tiny vocab_size 128
    assert_one_line_error(excinfo, "359", "vocab_size=128")
    with pytest.raises(ValueError) as excinfo:
        ArchobjLM(str(run), batch_size="auto")
    assert_one_line_error(excinfo, "batch_size='auto'")
    with pytest.raises(ValueError) as excinfo:
        ArchobjLM(str(run), length_buckets="32/x")
    assert_one_line_error(excinfo, "length_buckets='x'")
    with pytest.raises(ValueError) as excinfo:
        ArchobjLM(str(run), pretrained="gpt2")
    assert_one_line_error(excinfo, "pretrained")
    with pytest.raises(ValueError) as excinfo:
        ArchobjLM(str(run), mesh="4")
    assert_one_line_error(excinfo, "mesh='4'", "DATA,MODEL")
    with pytest.raises(ValueError) as excinfo:  # decoders read context + continuation as one row
        ArchobjLM(str(run), context_eos=True)
    assert_one_line_error(excinfo, "context_eos=True", "encoder-decoders")


# -------------------------------------------------------------------------------------------------
# Tokenizers: the same ids as seqio's vocabularies (which training uses), without TensorFlow.
# -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    from objectives.vocab import train_sentencepiece

    corpus = tmp_path_factory.mktemp("spm") / "corpus.txt"
    corpus.write_text("\n".join(TEXTS * 3 + ["the quick brown fox jumps over the lazy dog"] * 20))
    return str(train_sentencepiece(corpus, 60, corpus.with_name("spm.model"),
                                   model_type="bpe"))


@pytest.mark.parametrize("spec", ["byte", "spm"])
def test_tokenizer_ids_equal_seqio(spec, spm_model):
    from objectives.vocab import load_vocabulary

    path = spm_model if spec == "spm" else spec
    ours, theirs = load_tokenizer(path), load_vocabulary(path)
    assert ours.vocab_size == theirs.vocab_size
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == list(theirs.encode(text)), text
        assert ours.decode(ids) == theirs.decode(ids), text
        assert ours.decode(ids + [1, 50]) == ours.decode(ids)  # up to EOS


def test_tokenizer_t5_and_errors(spm_model, monkeypatch):
    monkeypatch.delenv("ARCHOBJ_T5_SPM", raising=False)
    with pytest.raises(ValueError) as excinfo:
        load_tokenizer("t5")
    assert_one_line_error(excinfo, "ARCHOBJ_T5_SPM")
    monkeypatch.setenv("ARCHOBJ_T5_SPM", spm_model)
    assert load_tokenizer("t5").encode(TEXTS[0]) == load_tokenizer(spm_model).encode(TEXTS[0])
    for spec, needle in (("missing.model", "no such file"), ("gs://bucket/x.model", "remote"),
                         (__file__, "not a SentencePiece model")):
        with pytest.raises(ValueError) as excinfo:
            load_tokenizer(spec)
        assert_one_line_error(excinfo, needle)


def test_evaluation_imports_neither_tensorflow_nor_seqio():
    import subprocess
    import sys

    code = ("import sys, harness.eval.lm_eval_adapter, harness.eval.scoring, harness.eval.tokenizer; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'seqio')))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"
