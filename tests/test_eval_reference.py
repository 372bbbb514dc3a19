"""The archobj evaluation path against lm-eval's own Hugging Face backend, on the same weights.

A tiny random T5 v1.1-layout model (harness/eval/eval_reference.py) is scored on a local synthetic
multiple-choice task through ``lm_eval.simple_evaluate`` by lm-eval's ``hf`` model (backend
``seq2seq``, cpu, float32), and then:

* lm-eval's tokenization is checked against ``lm_eval_seq2seq_tokens`` (sentencepiece alone), the
  spec any archobj backend must follow to feed the encoder the same ids;
* every per-request log-likelihood is recomputed by archobj's own score step on the converted
  checkpoint (an independent path) and by the ``archobj`` lm-eval model, within 1e-4 (whole model,
  float32), with the same accuracies;
* the throughput benchmark runs once at a tiny size.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
lm_eval = pytest.importorskip("lm_eval")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import sentencepiece  # noqa: E402

from harness.bench import eval_bench as bench_eval  # noqa: E402
from harness.eval import eval_reference  # noqa: E402
from harness.storage.checkpoint import load_model  # noqa: E402
from harness.train.steps import make_score_step  # noqa: E402
from models.transformer import Transformer  # noqa: E402
from helpers import assert_one_line_error  # noqa: E402

QUESTIONS, CHOICES, BATCH = 20, 4, 8


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_reference")
    model = eval_reference.make_reference_t5(root / "model", d_model=32, num_layers=2,
                                             vocab_size=512, num_heads=4, seed=0)
    task = eval_reference.write_fixture_task(root / "task", QUESTIONS, CHOICES)
    return model, task


@pytest.fixture(scope="module")
def processor(reference):
    return sentencepiece.SentencePieceProcessor(model_file=str(reference[0].spm_model))


@pytest.fixture(scope="module")
def hf_model(reference):
    return bench_eval.hf_lm(reference[0], BATCH)


def _evaluate(model, task):
    return lm_eval.simple_evaluate(model=model, tasks=[task.name], task_manager=task.task_manager(),
                                   log_samples=True, bootstrap_iters=0)


def _per_request(results, task):
    """{(doc_id, choice index): log-likelihood} and {"acc": ..., "acc_norm": ...}."""
    scores = {}
    for sample in results["samples"][task.name]:
        for i, response in enumerate(sample["filtered_resps"]):
            scores[sample["doc_id"], i] = float(response[0])
    metrics = results["results"][task.name]
    return scores, {m: metrics[f"{m},none"] for m in ("acc", "acc_norm")}


@pytest.fixture(scope="module")
def hf_results(reference, hf_model):
    return _evaluate(hf_model, reference[1])


# -------------------------------------------------------------------------------------------------
# The reference itself.
# -------------------------------------------------------------------------------------------------

def test_reference_model_layout(reference):
    model, _ = reference
    manifest = json.loads((model.root / "reference.json").read_text())
    assert manifest["num_heads"] == 4 and manifest["d_ff"] == 64
    # T5 v1.1: untied, unscaled head whose weights differ from the embedding (and survive a reload,
    # which is what lm-eval's hf model does).
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(model.hf_dir))
    assert not hf.config.scale_decoder_outputs
    assert not torch.equal(hf.lm_head.weight, hf.shared.weight)
    config, params = load_model(model.archobj_dir)
    assert config.architecture == "ed" and not config.tie_embeddings and config.dtype == "float32"
    np.testing.assert_array_equal(params["logits_dense"]["kernel"],
                                  hf.lm_head.weight.detach().numpy().T)
    assert model.tokenizer_size == eval_reference.DEFAULT_TOKENIZER_PIECES + 100 <= model.vocab_size


def test_lm_eval_hf_ties_the_untied_head(reference, hf_model):
    """lm-eval 0.4.13's HFLM calls tie_weights() after loading, which (transformers 5.23 T5 configs
    always say tie_word_embeddings=True) swaps a T5 v1.1 head for the input embedding;
    hf_reference_lm puts the checkpoint's head back. If this starts failing, lm-eval (or
    transformers) fixed it and the workaround can go."""
    from lm_eval.models.huggingface import HFLM

    model, _ = reference
    plain = HFLM(pretrained=str(model.hf_dir), backend="seq2seq", device="cpu", dtype="float32")
    assert plain.model.lm_head.weight.data_ptr() == plain.model.shared.weight.data_ptr()
    fixed = hf_model.model
    assert not torch.equal(fixed.lm_head.weight, fixed.shared.weight)
    _, params = load_model(model.archobj_dir)
    np.testing.assert_array_equal(fixed.lm_head.weight.detach().numpy().T,
                                  params["logits_dense"]["kernel"])


def test_fixture_task_is_deterministic(reference, tmp_path):
    _, task = reference
    again = eval_reference.write_fixture_task(tmp_path / "a", QUESTIONS, CHOICES)
    assert again.docs == task.docs
    other = eval_reference.write_fixture_task(tmp_path / "b", QUESTIONS, CHOICES, seed=1)
    assert other.docs != task.docs
    for doc in task.docs:
        assert len(set(doc["choices"])) == CHOICES and 0 <= doc["answer"] < CHOICES
    lengths = {len(c.split()) for doc in task.docs for c in doc["choices"]}
    assert len(lengths) > 2  # continuations of several lengths exercise padding


def test_fixture_text_has_no_unknown_tokens(reference, processor):
    _, task = reference
    for context, continuation in task.requests():
        assert processor.unk_id() not in processor.encode(context + continuation)


def test_bad_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError) as info:
        eval_reference.write_fixture_task(tmp_path, 0)
    assert_one_line_error(info, "n=0")
    with pytest.raises(ValueError) as info:
        eval_reference.write_fixture_task(tmp_path, 3, choices=11)
    assert_one_line_error(info, "choices=11")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ValueError) as info:
        eval_reference.make_reference_t5(tmp_path / "full")
    assert_one_line_error(info, str(tmp_path / "full"), "not an empty directory")
    with pytest.raises(ValueError) as info:
        eval_reference.make_reference_t5(tmp_path / "new", vocab_size=300)
    assert_one_line_error(info, "vocab_size=300")
    with pytest.raises(ValueError) as info:
        bench_eval.EvalBenchSettings(repeats=0)
    assert_one_line_error(info, "repeats=0")


# -------------------------------------------------------------------------------------------------
# lm-eval's seq2seq tokenization (what the archobj model must feed the encoder).
# -------------------------------------------------------------------------------------------------

def test_lm_eval_requests_are_the_fixture_requests(reference, hf_results):
    _, task = reference
    built = [tuple(args) for sample in sorted(hf_results["samples"][task.name],
                                              key=lambda s: s["doc_id"])
             for args in sample["arguments"]]
    assert built == task.requests()


@pytest.mark.parametrize("extra", [
    None,  # the fixture's requests
    ("Question: trailing spaces  ", "move to the continuation"),
    ("", " an empty context"),
    ("Q: two  spaces,\na newline\tand a tab", " Answer"),
])
def test_hf_tokenization_matches_spec(reference, processor, hf_model, extra):
    _, task = reference
    requests = task.requests() if extra is None else [extra]
    instances = [lm_eval.api.instance.Instance("loglikelihood", {}, r, i)
                 for i, r in enumerate(requests)]
    seen = []
    original = hf_model._loglikelihood_tokens
    try:
        # Record what the backend would score instead of scoring it.
        hf_model._loglikelihood_tokens = (
            lambda reqs, **kw: seen.extend(reqs) or [(0.0, False)] * len(reqs))
        hf_model.loglikelihood(instances, disable_tqdm=True)
    finally:
        hf_model._loglikelihood_tokens = original
    assert len(seen) == len(requests)
    for (_, context_ids, continuation_ids), (context, continuation) in zip(seen, requests):
        expected = eval_reference.lm_eval_seq2seq_tokens(processor, context, continuation)
        assert (list(context_ids), list(continuation_ids)) == expected
        # The facts the spec encodes: EOS closes the encoder input (for an empty context it is
        # the whole input), never the targets.
        assert context_ids[-1] == eval_reference.EOS_ID
        assert eval_reference.EOS_ID not in continuation_ids


# -------------------------------------------------------------------------------------------------
# Scores.
# -------------------------------------------------------------------------------------------------

def _direct_archobj_scores(reference, processor, requests):
    """archobj's score step on the converted checkpoint, one padded batch, lm-eval's ids."""
    config, params = load_model(reference.archobj_dir)
    encoded = [eval_reference.lm_eval_seq2seq_tokens(processor, c, t) for c, t in requests]
    n = len(encoded)
    inputs = np.zeros((n, max(len(i) for i, _ in encoded)), np.int32)
    targets = np.zeros((n, max(len(t) for _, t in encoded)), np.int32)
    for row, (i, t) in enumerate(encoded):
        inputs[row, :len(i)], targets[row, :len(t)] = i, t
    batch = {"encoder_input_tokens": inputs, "decoder_target_tokens": targets,
             "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
             "decoder_loss_weights": (targets > 0).astype(np.int32)}
    score = jax.jit(make_score_step(Transformer(config)))
    log_likelihood, _ = score(params, {k: jnp.asarray(v) for k, v in batch.items()})
    return np.asarray(log_likelihood)


def test_hf_scores_equal_archobj_score_step(reference, processor, hf_results):
    model, task = reference
    hf_scores, _ = _per_request(hf_results, task)
    ours = _direct_archobj_scores(model, processor, task.requests())
    keys = [(doc["id"], i) for doc in task.docs for i in range(len(doc["choices"]))]
    theirs = np.array([hf_scores[k] for k in keys])
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
    # A random model: the scores must still spread, or the comparison would prove little.
    assert np.std(theirs) > 1.0


@pytest.fixture(scope="module")
def archobj_model(reference):
    """The archobj lm-eval model with lm-eval's Hugging Face T5 tokenization (``context_eos``: EOS
    closes the encoder input). Compiled once for the module."""
    from harness.eval.lm_eval_adapter import ArchobjLM

    model, _ = reference
    return ArchobjLM(str(model.archobj_dir), vocabulary=str(model.spm_model), batch_size=BATCH,
                     context_eos=True)


def test_archobj_lm_scores_equal_hf_on_the_same_ids(reference, archobj_model, hf_results):
    _, task = reference
    our_scores, our_metrics = _per_request(_evaluate(archobj_model, task), task)
    hf_scores, hf_metrics = _per_request(hf_results, task)
    assert our_scores.keys() == hf_scores.keys() and len(our_scores) == QUESTIONS * CHOICES
    keys = sorted(hf_scores)
    np.testing.assert_allclose([our_scores[k] for k in keys], [hf_scores[k] for k in keys],
                               atol=1e-4, rtol=0)
    assert our_metrics == hf_metrics


def test_context_eos_is_the_one_tokenization_difference(reference, hf_model, archobj_model):
    """lm-eval's hf backend encodes a seq2seq context with the tokenizer's special tokens (T5: EOS
    appended). ArchobjLM's default follows the study's harness (AO t5x/eval_harness.py,
    add_eos=False): the encoder input is hf's minus the final EOS, the targets are identical. With
    ``context_eos=True`` the ids are hf's exactly."""
    from harness.eval.lm_eval_adapter import ArchobjLM

    model, task = reference
    study = ArchobjLM(str(model.archobj_dir), vocabulary=str(model.spm_model), batch_size=BATCH)
    for context, continuation in task.requests():
        hf_context, hf_targets = hf_model._encode_pair(context, continuation)
        ours = archobj_model._encode_pair(context, continuation)
        assert (list(ours[0]), list(ours[1])) == (hf_context, hf_targets)
        our_context, our_targets = study._encode_pair(context, continuation)
        assert hf_context[-1] == eval_reference.EOS_ID
        assert (list(our_context), list(our_targets)) == (hf_context[:-1], hf_targets)


# -------------------------------------------------------------------------------------------------
# The benchmark.
# -------------------------------------------------------------------------------------------------

def test_eval_benchmark_smoke(reference, archobj_model, tmp_path):
    """The benchmark's machinery at a tiny size, on the module's model (compiled once)."""
    settings = bench_eval.EvalBenchSettings.quick(questions=4, repeats=2)
    result = bench_eval.run_eval_benchmark(settings, work_dir=tmp_path, reference=reference[0],
                                           archobj_factory=lambda *_: archobj_model)
    assert result.num_requests == 4 * settings.choices
    assert all(len(result.pass_seconds[m]) == 2 for m in ("hf", "archobj"))
    assert len(result.ratios) == 2 and result.ratio > 0
    assert result.same_ids == 1.0 and result.same_predictions == 1.0
    assert result.max_abs_difference < 1e-4
    text = result.format()
    assert "archobj / hf speed" in text and "d_model 32, 2+2 layers, 4 heads" in text
    assert list(tmp_path.iterdir())  # work_dir keeps the task it wrote
    # The roofline: forward FLOPs per request as models/flops.py counts them, against the float32
    # peak measured in the same process; the record is plain JSON.
    figures = json.loads(json.dumps(result.as_dict()))
    assert figures["forward_flops_per_request"] > 0 and figures["peak_flops"] > 0
    assert 0 < figures["roofline_fraction"] < 1
    assert figures["archobj_requests_per_second"] == pytest.approx(
        figures["roofline_fraction"] * figures["roofline_requests_per_second"])
    assert "roofline:" in text
