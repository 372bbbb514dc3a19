"""Tests of T0-Eval (harness/eval/t0_eval.py): the suite, rank classification, aggregation, data."""

from __future__ import annotations

import json
import random
import statistics
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
import pytest

from harness.eval import t0_eval
from harness.eval.t0_eval import (FIXTURE_DIR, T0EvalError, aggregate, encode_row, eval_templates,
                             evaluate, find_dataset, load_examples, resolve_tasks, summarize)
from harness.eval.t0_eval_fixture import fixture_examples, make_fixture
from helpers import assert_one_line_error

EOS = 1

# PAPER.md 3.2, copied here independently of the module's constants.
_NLI = ["GPT_3_style", "MNLI_crowdsource", "always_sometimes_never",
        "based_on_the_previous_passage", "can_we_infer", "claim_true_false_inconclusive",
        "consider_always_sometimes_never", "does_it_follow_that", "does_this_imply",
        "guaranteed_true", "guaranteed_possible_impossible", "justified_in_saying", "must_be_true",
        "should_assume", "take_the_following_as_truth"]
PAPER_PROMPTS = {
    "copa": ["C1_or_C2_premise_so_because_", "best_option", "cause_effect", "choose", "exercise",
             "i_am_hesitating", "more_likely", "plausible_alternatives", "_As_a_result_C1_or_C2_",
             "_What_could_happen_next_C1_or_C2_", "_which_may_be_caused_by", "_why_C1_or_C2"],
    "hellaswag": ["Predict_ending_with_hint", "Randomized_prompts_template", "complete_first_then",
                  "if_begins_how_continues"],
    "story_cloze": ["Answer_Given_options", "Choose_Story_Ending", "Movie_What_Happens_Next",
                    "Novel_Correct_Ending", "Story_Continuation_and_Options"],
    "anli_r1": _NLI, "anli_r2": _NLI, "anli_r3": _NLI, "cb": _NLI,
    "rte": ["GPT_3_style", "MNLI_crowdsource", "based_on_the_previous_passage", "can_we_infer",
            "does_it_follow_that", "does_this_imply", "guaranteed_true", "justified_in_saying",
            "must_be_true", "should_assume"],
    "wsc": ["GPT_3_Style", "I_think_they_mean", "Who_or_what_is_are", "by_p_they_mean",
            "does_p_stand_for", "does_the_pronoun_refer_to", "in_other_words", "p_is_are_r",
            "replaced_with", "the_pronoun_refers_to"],
    "winogrande": ["Replace", "does_underscore_refer_to", "fill_in_the_blank", "stand_for",
                   "underscore_refer_to"],
    "wic": ["GPT_3_prompt", "GPT_3_prompt_with_label", "affirmation_true_or_false",
            "grammar_homework", "polysemous", "question_context", "question_context_meaning",
            "question_context_meaning_with_label", "same_sense", "similar_sense"],
}
PAPER_BASELINES = {"copa": .5, "anli_r1": 1 / 3, "anli_r2": 1 / 3, "anli_r3": 1 / 3, "cb": 1 / 3,
                   "rte": .5, "wsc": .5, "winogrande": .5, "wic": .5, "hellaswag": .25,
                   "story_cloze": .5}


def _bytes(text: str) -> list[int]:
    return [b + 3 for b in text.encode("utf-8")]


class FakeLM:
    """Byte tokens (ids = byte + 3, EOS 1); scores from ``score_fn(input ids, target ids)``."""

    eot_token_id = EOS

    def __init__(self, score_fn):
        self.score_fn = score_fn
        self.calls: list[list[tuple[list[int], list[int]]]] = []

    def tok_encode(self, text: str) -> list[int]:
        return _bytes(text)

    def score_tokens(self, requests):
        requests = list(requests)
        self.calls.append(requests)
        return [(float(self.score_fn(tuple(i), tuple(t))), False) for i, t in requests]


class Render(NamedTuple):
    index: int  # of the example in the fixture file
    inputs: str
    target: str
    choices: list[str]


def _reference(name: str) -> dict[str, list[Render]]:
    """Independent rendering of the fixture with promptsource's own API: prompt -> renders.

    Reads the committed JSONL directly, keeps original-task templates, seeds ``random`` with the
    documented ``prompt_seed`` (hellaswag's randomized template), and keeps examples that render
    two parts.
    """
    from promptsource.templates import DatasetTemplates

    dataset = find_dataset(name)
    path = dataset.data_path(FIXTURE_DIR)
    examples = [json.loads(line) for line in path.read_text().splitlines()]
    collection = DatasetTemplates(dataset.ps_name, dataset.ps_subset)
    renders = {}
    for template_name in collection.all_template_names:
        template = collection[template_name]
        if not template.metadata.original_task:
            continue
        prompt = t0_eval.task_clean(template_name)
        out = []
        for index, example in enumerate(examples):
            random.seed(t0_eval.prompt_seed(name, prompt, index))
            parts = template.apply(example)
            if len(parts) == 2 and parts[0] and parts[1]:
                out.append(Render(index, parts[0], parts[1],
                                  template.get_answer_choices_list(example)))
        renders[prompt] = out
    return renders


@pytest.fixture(scope="module")
def reference():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {name: _reference(name) for name in t0_eval.T0_EVAL_TASKS}


# -- the suite --------------------------------------------------------------------------------

def test_prompt_names_and_counts_match_the_paper():
    assert sorted(t0_eval.T0_EVAL_TASKS) == sorted(PAPER_PROMPTS)
    total = 0
    for dataset in t0_eval.T0_EVAL_DATASETS:
        names = [n for n, _ in t0_eval.eval_templates(dataset)]  # promptsource's, filtered
        assert names == sorted(PAPER_PROMPTS[dataset.name]), dataset.name
        total += len(names)
    assert total == t0_eval.NUM_PROMPTS == 116


def test_random_baselines_are_the_papers():
    assert {d.name: d.random_baseline for d in t0_eval.T0_EVAL_DATASETS} == PAPER_BASELINES
    assert round(100 * t0_eval.RANDOM_BASELINE_MEAN, 1) == 41.7


def test_every_template_renders_on_the_fixture(reference):
    for name, renders in reference.items():
        for prompt, examples in renders.items():
            assert examples, (name, prompt)
            for _, inputs, target, choices in examples:
                assert choices and target in choices, (name, prompt, target, choices)


def test_fixture_matches_a_fresh_generation(tmp_path):
    written = make_fixture(tmp_path)
    fresh = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(FIXTURE_DIR).as_posix()
                       for p in FIXTURE_DIR.rglob("*") if p.is_file())
    assert fresh == committed == sorted(written)
    for relative in fresh:
        assert (tmp_path / relative).read_bytes() == (FIXTURE_DIR / relative).read_bytes(), relative
    assert all(3 <= n <= 6 for n in written.values())
    assert sum((FIXTURE_DIR / r).stat().st_size for r in fresh) < 20_000


# -- rows and rank classification -------------------------------------------------------------

def test_rows_one_per_choice_inputs_without_eos_targets_with_eos(reference):
    lm = FakeLM(lambda i, t: 0.0)
    evaluate(lm, data_dir=FIXTURE_DIR, tasks=["cb", "hellaswag", "copa"])
    assert len(lm.calls) == 3  # one score_tokens call per dataset, every prompt's rows in it
    for name, requests in zip(["cb", "copa", "hellaswag"], lm.calls):  # suite order
        expected = [(_bytes(inputs), _bytes(choice) + [EOS])
                    for prompt in sorted(reference[name])
                    for _, inputs, _, choices in reference[name][prompt] for choice in choices]
        assert [(list(i), list(t)) for i, t in requests] == expected, name
        for inputs, targets in requests:
            assert EOS not in inputs
            assert targets[-1] == EOS and EOS not in targets[:-1]


def test_truncation_keeps_first_tokens_and_final_eos():
    inputs, targets = encode_row(list(range(2, 12)), list(range(20, 30)), EOS,
                                 inputs_length=4, targets_length=5)
    assert inputs == [2, 3, 4, 5]
    assert targets == [20, 21, 22, 23, EOS]
    inputs, targets = encode_row([5, 6], [7], EOS)  # the study's 1024 / 256: untouched
    assert (inputs, targets) == ([5, 6], [7, EOS])
    lm = FakeLM(lambda i, t: 0.0)
    results = evaluate(lm, data_dir=FIXTURE_DIR, tasks=["rte"], inputs_length=16, targets_length=3)
    assert all(len(i) == 16 and len(t) <= 3 and t[-1] == EOS for i, t in lm.calls[0])
    rte = results["datasets"]["rte"]
    assert rte["num_truncated_inputs"] == rte["num_rows"] // 2  # counted once per example
    assert rte["num_truncated_targets"] > 0


def test_gold_preferring_lm_scores_one(reference):
    gold = {(tuple(_bytes(inputs)), tuple(_bytes(target) + [EOS]))
            for renders in reference.values() for examples in renders.values()
            for _, inputs, target, _ in examples}
    lm = FakeLM(lambda i, t: 0.0 if (i, t) in gold else -5.0)
    results = evaluate(lm, data_dir=FIXTURE_DIR)
    assert len(lm.calls) == 11
    for name, result in results["datasets"].items():
        assert len(result["prompts"]) == len(PAPER_PROMPTS[name])
        for prompt, scores in result["prompts"].items():
            assert scores["accuracy"] == 1.0, (name, prompt)
            assert scores["num_no_gold"] == 0
            assert scores["num_scored"] + scores["num_not_rendered"] == result["num_examples"]
            assert scores["num_scored"] == len(reference[name][prompt])
        assert result["median_accuracy"] == 1.0
    assert results["aggregate"]["mean_accuracy"] == 1.0
    assert results["aggregate"]["complete"]
    json.dumps(results)  # JSON-serialisable


def test_tied_scores_predict_the_first_choice(reference):
    results = evaluate(FakeLM(lambda i, t: -1.0), data_dir=FIXTURE_DIR)
    medians = []
    for name, renders in reference.items():
        expected = {p: statistics.fmean(r.target == r.choices[0] for r in examples)
                    for p, examples in renders.items()}
        got = {p: s["accuracy"] for p, s in results["datasets"][name]["prompts"].items()}
        assert got == pytest.approx(expected), name
        for prompt, scores in results["datasets"][name]["prompts"].items():
            # The per-example record (kept for bootstrap intervals): the rendered examples' indices
            # and whether the first choice was the target, summing to the stored counts.
            assert scores["examples"] == [r.index for r in renders[prompt]], (name, prompt)
            assert scores["correct"] == [int(r.target == r.choices[0])
                                         for r in renders[prompt]], (name, prompt)
            assert sum(scores["correct"]) == scores["num_correct"]
            assert len(scores["correct"]) == scores["num_scored"]
            # Every choice's log-likelihood as scored, and the first correct choice.
            assert scores["choice_loglikelihoods"] == [[-1.0] * len(r.choices)
                                                       for r in renders[prompt]], (name, prompt)
            assert scores["gold"] == [r.choices.index(r.target) for r in renders[prompt]]
        medians.append(statistics.median(expected.values()))
        assert results["datasets"][name]["median_accuracy"] == pytest.approx(medians[-1])
    assert results["aggregate"]["mean_accuracy"] == pytest.approx(statistics.fmean(medians))


def test_limit_takes_the_first_examples():
    results = evaluate(FakeLM(lambda i, t: -float(len(t))), data_dir=FIXTURE_DIR,
                       tasks="anli,copa", limit=2)
    assert list(results["datasets"]) == ["anli_r1", "anli_r2", "anli_r3", "copa"]
    assert all(r["num_examples"] == 2 for r in results["datasets"].values())
    # COPA's first two examples are one "cause" and one "effect" question: effect-only templates
    # render one of them and skip the other.
    copa = results["datasets"]["copa"]["prompts"]
    assert copa["_As_a_result_C1_or_C2_"]["num_scored"] == 1
    assert copa["_As_a_result_C1_or_C2_"]["num_not_rendered"] == 1
    assert copa["best_option"]["num_scored"] == 2
    assert not results["aggregate"]["complete"]


def test_max_prompts_scores_an_even_spread_of_each_datasets_prompts():
    from harness.eval.t0_eval import prompt_subset

    assert prompt_subset(list("abcdefghijkl"), 4) == list("aehl")   # first, last, evenly between
    assert prompt_subset(list("abcd"), 4) == list("abcd") and prompt_subset(list("ab"), 1) == ["a"]
    assert prompt_subset(list("abc"), None) == list("abc")
    results = evaluate(FakeLM(lambda i, t: -float(len(t))), data_dir=FIXTURE_DIR,
                       tasks="copa,hellaswag", max_prompts=3)
    assert results["config"]["max_prompts"] == 3
    for name in ("copa", "hellaswag"):
        every = [prompt for prompt, _ in eval_templates(name)]
        assert list(results["datasets"][name]["prompts"]) == prompt_subset(every, 3)
    with pytest.raises(ValueError, match="max_prompts=0"):
        evaluate(FakeLM(lambda i, t: 0.0), data_dir=FIXTURE_DIR, tasks="copa", max_prompts=0)


# -- aggregation and summary ------------------------------------------------------------------

def test_aggregate_median_over_prompts_mean_over_datasets():
    result = aggregate({"cb": {"a": 0.2, "b": 0.9, "c": 0.4},
                        "rte": {"a": 0.5, "b": 0.7, "c": 0.6, "d": 0.1},
                        "copa": {"a": None, "b": 0.8}})
    assert result["medians"] == pytest.approx({"cb": 0.4, "rte": 0.55, "copa": 0.8})
    assert result["mean_accuracy"] == pytest.approx((0.4 + 0.55 + 0.8) / 3)
    assert result["random_baseline"] == pytest.approx((1 / 3 + 0.5 + 0.5) / 3)
    assert result["num_datasets"] == 3 and not result["complete"]
    empty = aggregate({"wic": {"a": None}})
    assert empty["medians"] == {"wic": None} and empty["mean_accuracy"] is None


def test_summarize_rows_and_table():
    def prompts(*accuracies):
        return {f"p{k}": {"accuracy": a} for k, a in enumerate(accuracies)}

    results = {"datasets": {
        "cb": {"title": "CB", "num_examples": 5, "prompts": prompts(0.2, 0.6, 0.4)},
        "wic": {"title": "WiC", "num_examples": 7, "prompts": prompts(0.5, 0.7)},
    }}
    rows = summarize(results)
    assert [r["dataset"] for r in rows] == ["cb", "wic", "t0_eval"]
    assert rows[0]["accuracy"] == pytest.approx(0.4)
    assert (rows[0]["min"], rows[0]["max"]) == (0.2, 0.6)
    assert rows[1]["accuracy"] == pytest.approx(0.6)
    assert rows[2]["accuracy"] == pytest.approx(0.5)
    assert rows[2]["random_baseline"] == pytest.approx((1 / 3 + 0.5) / 2)
    assert rows[2]["title"] == "T0-Eval (2 of 11)"
    table = t0_eval.format_summary(rows)
    assert "40.0" in table and "50.0" in table and "WiC" in table


# -- data and errors --------------------------------------------------------------------------

def test_unknown_dataset_is_one_line():
    with pytest.raises(T0EvalError) as excinfo:
        evaluate(FakeLM(lambda i, t: 0.0), data_dir=FIXTURE_DIR, tasks=["cb", "boolq"])
    assert_one_line_error(excinfo, "'boolq'", "anli_r1", "story_cloze", "wic")
    with pytest.raises(T0EvalError) as excinfo:
        resolve_tasks([])
    assert_one_line_error(excinfo, "no dataset selected")


def test_missing_local_file_is_one_line(tmp_path):
    with pytest.raises(T0EvalError) as excinfo:
        evaluate(FakeLM(lambda i, t: 0.0), data_dir=tmp_path, tasks=["wsc"])
    path = tmp_path / "aps" / "super_glue" / "wsc.fixed" / "validation.jsonl"
    assert_one_line_error(excinfo, "wsc", str(path), "export")


def test_hub_offline_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(T0EvalError) as excinfo:
        load_examples(find_dataset("story_cloze"), data_dir=None, limit=2)
    assert_one_line_error(excinfo, "story_cloze", "LSDSem/story_cloze", "data_dir",
                          "DIR/LSDSem/story_cloze/2016/validation.jsonl")


def test_malformed_local_data_is_one_line(tmp_path):
    dataset = find_dataset("rte")
    t0_eval.export_split([{"premise": "p", "hypothesis": "h", "idx": 0, "label": 0}], tmp_path,
                         dataset)
    assert load_examples(dataset, tmp_path) == [{"premise": "p", "hypothesis": "h", "idx": 0,
                                                 "label": 0}]
    with pytest.raises(T0EvalError) as excinfo:
        t0_eval.export_split([], tmp_path, dataset)
    assert_one_line_error(excinfo, "exists", "overwrite=True")
    path = dataset.data_path(tmp_path)
    path.write_text('{"premise": "p", "hypothesis": "h", "idx": 0, "label": 0}\n{"premise": \n')
    with pytest.raises(T0EvalError) as excinfo:
        load_examples(dataset, tmp_path)
    assert_one_line_error(excinfo, f"{path}:2", "malformed JSON")
    path.write_text('{"premise": "p", "idx": 0, "label": 0}\n')
    with pytest.raises(T0EvalError) as excinfo:
        load_examples(dataset, tmp_path)
    assert_one_line_error(excinfo, "'hypothesis'", str(path))
    with pytest.raises(T0EvalError) as excinfo:
        evaluate(FakeLM(lambda i, t: 0.0), data_dir=FIXTURE_DIR, limit=0)
    assert_one_line_error(excinfo, "limit=0")
    with pytest.raises(T0EvalError) as excinfo:
        evaluate(object(), data_dir=FIXTURE_DIR)
    assert_one_line_error(excinfo, "score_tokens")
    short = FakeLM(lambda i, t: 0.0)  # an ArchobjLM left at EAI-Eval's lengths
    short.scorer = SimpleNamespace(max_inputs_length=512, max_targets_length=114)
    with pytest.raises(T0EvalError) as excinfo:
        evaluate(short, data_dir=FIXTURE_DIR, tasks=["cb"])
    assert_one_line_error(excinfo, "512", "max_inputs_length=1024", "max_targets_length=256")
    assert evaluate(short, data_dir=FIXTURE_DIR, tasks=["cb"], inputs_length=512,
                    targets_length=114)["config"]["inputs_length"] == 512


def test_fixture_layout_is_the_shared_one():
    assert find_dataset("cb").data_path("DIR") == Path("DIR/aps/super_glue/cb/validation.jsonl")
    assert find_dataset("anli_r2").data_path("D") == Path("D/facebook/anli/default/dev_r2.jsonl")
    assert find_dataset("anli_r2").task_name("GPT_3_style") == "anli_GPT_3_style_r2_score_eval"
    assert find_dataset("wsc").task_name("GPT_3_Style") == \
        "super_glue_wsc.fixed_GPT_3_Style_score_eval"


def test_unrenderable_example_is_one_line(tmp_path):
    dataset = find_dataset("hellaswag")
    example = dict(fixture_examples()["hellaswag"][0], endings=None)
    t0_eval.export_split([example], tmp_path, dataset)
    with pytest.raises(T0EvalError) as excinfo:
        evaluate(FakeLM(lambda i, t: 0.0), data_dir=tmp_path, tasks=["hellaswag"])
    assert_one_line_error(excinfo, "hellaswag", "example 1", "endings")


# -- end to end through the project's lm-eval model -------------------------------------------

@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A random tiny encoder-decoder (byte vocabulary fits in 384 ids), saved without compiling."""
    import jax
    import jax.numpy as jnp

    from harness.storage.checkpoint import save_model
    from models.config import preset
    from models.transformer import abstract_params

    config = preset("tiny", "ed", dtype="float32", vocab_size=384)
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda a: jnp.asarray(0.1 * rng.standard_normal(a.shape).astype(a.dtype)),
        abstract_params(config))
    directory = tmp_path_factory.mktemp("t0_eval_ckpt")
    save_model(directory, config, params)
    return directory


def test_end_to_end_through_archobj_lm(tiny_checkpoint, reference):
    adapter = pytest.importorskip("harness.eval.lm_eval_adapter")
    lm = adapter.ArchobjLM(str(tiny_checkpoint), vocabulary="byte", batch_size=8,
                           max_inputs_length=t0_eval.INPUTS_LENGTH,
                           max_targets_length=t0_eval.TARGETS_LENGTH)
    calls = []

    class Recorder:  # delegates to the real model, keeps what it was asked and answered
        eot_token_id = lm.eot_token_id

        def tok_encode(self, text):
            return lm.tok_encode(text)

        def score_tokens(self, requests):
            scores = lm.score_tokens(requests)
            calls.append((list(requests), [s for s, _ in scores]))
            return scores

    def first_two(name, prompt):  # --limit 2: renders of the first two examples only
        return [r for r in reference[name][prompt] if r.index < 2]

    results = evaluate(Recorder(), data_dir=FIXTURE_DIR, tasks=["wic", "copa"], limit=2)
    json.dumps(results)
    assert len(calls) == 2
    for name, (requests, scores) in zip(["copa", "wic"], calls):
        # The real tokenizer gives the reference rows: byte ids, no EOS on inputs, EOS on targets.
        expected = [(_bytes(inputs), _bytes(choice) + [EOS])
                    for prompt in sorted(reference[name])
                    for _, inputs, _, choices in first_two(name, prompt) for choice in choices]
        assert [(list(i), list(t)) for i, t in requests] == expected, name
        assert all(np.isfinite(s) and s < 0 for s in scores)
        # Accuracy per prompt from the recorded scores: argmax over each example's choices.
        position = 0
        for prompt in sorted(reference[name]):
            correct = 0
            renders = first_two(name, prompt)
            for _, _, target, choices in renders:
                block = scores[position:position + len(choices)]
                correct += choices[int(np.argmax(block))] == target
                position += len(choices)
            got = results["datasets"][name]["prompts"][prompt]
            assert got["num_scored"] == len(renders)
            assert got["accuracy"] == pytest.approx(correct / len(renders)), (name, prompt)
    rows = summarize(results)
    assert [r["dataset"] for r in rows] == ["copa", "wic", "t0_eval"]


def test_export_writes_the_layout_load_examples_reads(tmp_path, monkeypatch):
    source = fixture_examples()
    loaded = []

    def fake_hub(dataset, limit, load_kwargs=None):  # stands in for datasets.load_dataset
        loaded.append((dataset.name, load_kwargs))
        return source[dataset.name]

    monkeypatch.setattr(t0_eval, "_load_from_hub", fake_hub)
    written = t0_eval.export(tmp_path, "anli_r3,story_cloze",
                             load_kwargs={"story_cloze": {"data_dir": "csv"}})
    assert loaded == [("anli_r3", None), ("story_cloze", {"data_dir": "csv"})]
    assert written == {"anli_r3": str(tmp_path / "facebook/anli/default/dev_r3.jsonl"),
                       "story_cloze": str(tmp_path / "LSDSem/story_cloze/2016/validation.jsonl")}
    for name in ("anli_r3", "story_cloze"):
        assert load_examples(find_dataset(name), tmp_path) == source[name]
    assert load_examples(find_dataset("anli_r3"), tmp_path, limit=2) == source["anli_r3"][:2]


def test_evaluation_imports_neither_tensorflow_nor_seqio():
    import subprocess
    import sys

    code = """
import sys, warnings
warnings.simplefilter("ignore")
from harness.eval import t0_eval
class LM:
    eot_token_id = 1
    def tok_encode(self, text): return [b + 3 for b in text.encode()]
    def score_tokens(self, rows): return [(0.0, False)] * len(rows)
t0_eval.evaluate(LM(), data_dir=t0_eval.FIXTURE_DIR, tasks=["cb"])
print(sorted(m for m in ("tensorflow", "seqio", "jax") if m in sys.modules))
"""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stderr
