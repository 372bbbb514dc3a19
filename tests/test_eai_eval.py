"""EAI-Eval through lm-eval 0.4.13 (harness/eval/eai_eval.py; PAPER.md 3.1, 3.1b).

All runs are offline on the committed synthetic fixture, with deterministic fake LMs: a scorer that
hashes each (context, continuation) pair, and an oracle that knows the fixture's answers.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest
from lm_eval.api.model import LM

from harness.eval import eai_eval
from helpers import assert_one_line_error

# PAPER.md 3.1: AO eval_harness.sh's 32 names; the suite is these without mc_taco.
STUDY_NAMES = ("anli_r1 anli_r2 anli_r3 arc_challenge arc_easy boolq cb copa headqa_en hellaswag "
               "lambada logiqa mathqa mc_taco mrpc multirc openbookqa piqa prost pubmedqa qnli qqp "
               "race rte sciq sst triviaqa webqs wic winogrande wnli wsc").split()
RENAMED = {"sst": "sst2", "lambada": "lambada_openai"}       # PAPER.md 3.1b


def _unit(text: str) -> float:
    """A deterministic number in [0, 1) from text (Python's hash() is salted per process)."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16) / 16 ** 12


def hashed_loglikelihood(context: str, continuation: str) -> tuple[float, bool]:
    return -10.0 * _unit(context + "\x00" + continuation), _unit(continuation) > 0.5


def _cut(text: str, until) -> str:
    for stop in until:
        if stop and stop in text:
            text = text[:text.index(stop)]
    return text


class HashLM(LM):
    """Scores by hashing; 'generates' the question's answer from ``answers`` when it knows it."""

    def __init__(self, answers: dict[str, str] | None = None):
        super().__init__()
        self.answers = answers or {}
        self.calls = {"loglikelihood": 0, "generate_until": 0}

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        self.calls["loglikelihood"] += len(requests)
        return [hashed_loglikelihood(*request.args) for request in requests]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("EAI-Eval has no rolling-loglikelihood task")

    def generate_until(self, requests, disable_tqdm: bool = False):
        self.calls["generate_until"] += len(requests)
        outputs = []
        for request in requests:
            context, gen_kwargs = request.args
            answer = next((a for q, a in self.answers.items() if q in context), "no idea")
            outputs.append(_cut(f" {answer}, said the model.\nNext line", gen_kwargs["until"]))
        return outputs


def _fixture_rows(task: str) -> list[dict]:
    path = eai_eval.local_data_file(eai_eval.FIXTURE_DIR, task)
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def full_run():
    """All 31 tasks once, offline on the fixture (the LM is shared by the tests that read it)."""
    answers = {row["question"]: row["answer"]["value"] for row in _fixture_rows("triviaqa")}
    lm = HashLM(answers)
    results = eai_eval.evaluate(lm, data_dir=eai_eval.FIXTURE_DIR, bootstrap_iters=0)
    return lm, results


# --- the suite file ----------------------------------------------------------------------------

def test_suite_is_the_studys_31_datasets():
    suite = eai_eval.load_suite()
    assert len(suite.tasks) == len(eai_eval.TASKS) == 31
    expected = [name for name in STUDY_NAMES if name != "mc_taco"]
    assert [t.study_name for t in suite.tasks] == expected
    for task in suite.tasks:
        assert task.task == RENAMED.get(task.study_name, task.study_name)
        assert task.metric == ("exact_match" if task.task in ("triviaqa", "webqs") else "acc")
        assert task.note, task.task


def test_suite_yaml_points_at_lm_evals_own_task_files():
    """Each task's YAML (read without the index) names the task and is the output type we expect."""
    for task in eai_eval.SUITE.tasks:
        config = eai_eval.lm_eval_config(task, resolve_functions=False)
        assert config["task"] == task.task
        expected = {"triviaqa": "generate_until", "lambada_openai": "loglikelihood"}
        assert config["output_type"] == expected.get(task.task, "multiple_choice"), task.task
        assert any(m["metric"] == task.metric for m in config["metric_list"]), task.task


@pytest.mark.slow
def test_every_name_resolves_in_lm_evals_task_index():
    """lm-eval's full index (~15 s to build) has every name, at the YAML the suite reads."""
    from lm_eval.tasks import TaskManager

    index = TaskManager().task_index
    for task in eai_eval.SUITE.tasks:
        assert task.task in index, task.task
        assert Path(index[task.task].yaml_path).resolve() == (
            eai_eval.lm_eval_tasks_dir() / task.lm_eval_yaml).resolve()
    assert "sst" not in index                                          # renamed (PAPER.md 3.1b)
    assert index["lambada"].kind.name == "TAG"                          # a tag, no longer one task


def test_random_baseline_aggregates():
    """Table 5's numbers average to its 33.3; AO's plot-script dict averages to Tables 3/8's 32.9."""
    suite = eai_eval.SUITE
    table5 = [t.random_baseline for t in suite.tasks]
    mean = sum(table5) / len(table5)
    assert mean == pytest.approx(1034.1 / 31)
    # 33.358: Table 5 prints 33.3 (truncated; rounding gives 33.4), and it is not 32.9.
    assert math.floor(10 * mean) / 10 == suite.aggregate["random_baseline_table5"] == 33.3
    ao = [t.ao_baseline for t in suite.tasks] + list(suite.aggregate["ao_extra_baselines"].values())
    assert len(ao) == 32
    assert round(100 * sum(ao) / len(ao), 1) == suite.aggregate["random_baseline_tables3_8"] == 32.9


def test_unknown_task_is_one_line_listing_valid_names():
    with pytest.raises(ValueError) as excinfo:
        eai_eval.resolve_tasks(["boolq", "mc_taco", "boolqq"])
    assert_one_line_error(excinfo, "'mc_taco'", "'boolqq'", "sst2", "lambada_openai", "wsc")
    with pytest.raises(ValueError) as excinfo:
        eai_eval.evaluate(HashLM(), data_dir=eai_eval.FIXTURE_DIR, tasks="copa,nope")
    assert_one_line_error(excinfo, "'nope'", "anli_r1")


def test_study_names_and_comma_lists_resolve():
    chosen = eai_eval.resolve_tasks("sst, lambada,sst2 ,copa")
    assert [t.task for t in chosen] == ["sst2", "lambada_openai", "copa"]
    assert [t.task for t in eai_eval.resolve_tasks(None)] == list(eai_eval.TASKS)


# --- task configs -------------------------------------------------------------------------------

def test_local_task_config_only_swaps_the_data_source():
    for name in ("hellaswag", "copa", "prost", "anli_r2"):
        original = eai_eval.task_config(name)
        local = eai_eval.task_config(name, eai_eval.FIXTURE_DIR)
        split = eai_eval.eval_split(original)
        assert local["dataset_path"] == "json" and local["dataset_name"] is None
        assert local["dataset_kwargs"] == {
            "data_files": {split: str(eai_eval.local_data_file(eai_eval.FIXTURE_DIR, name))}}
        assert eai_eval.eval_split(local) == split
        assert local.get("training_split") is None                # not in the fixture
        changed = {"dataset_path", "dataset_name", "dataset_kwargs", "training_split",
                   "validation_split", "test_split"}
        for key in set(original) | set(local):
            if key not in changed:
                assert local.get(key) == original.get(key), (name, key)
    copa = eai_eval.task_config("copa", eai_eval.FIXTURE_DIR)
    assert callable(copa["doc_to_text"]) and copa["doc_to_text"].__module__.endswith("copa.utils")


def test_multirc_gold_choice_is_as_the_suite_note_says():
    """Pins the flagged lm-eval 0.4.13 behaviour: a true answer (label 1) has the gold choice 'no'."""
    task = eai_eval.build_task("multirc", eai_eval.FIXTURE_DIR)
    doc = next(d for d in task.eval_docs if d["label"] == 1)
    assert task.doc_to_choice(doc)[task.doc_to_target(doc)].endswith("Is the answer correct? no")
    assert "flagged, not patched" in eai_eval.resolve_tasks(["multirc"])[0].note


def test_missing_local_file_offline_is_one_line_naming_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    shutil.copytree(eai_eval.FIXTURE_DIR / "aps", tmp_path / "aps")
    (tmp_path / "aps/super_glue/cb/validation.jsonl").unlink()
    expected = tmp_path / "aps/super_glue/cb/validation.jsonl"
    with pytest.raises(eai_eval.EvalDataError) as excinfo:
        eai_eval.evaluate(HashLM(), data_dir=tmp_path, tasks=["boolq", "cb"])
    assert_one_line_error(excinfo, str(expected), "aps/super_glue/cb", "export", "premise")


def test_offline_without_data_dir_is_one_line_naming_the_layout(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(eai_eval.EvalDataError) as excinfo:
        eai_eval.build_task("prost")
    assert_one_line_error(excinfo, "prost", "corypaik/prost/default/test.jsonl", "export")


def test_local_file_without_the_tasks_fields_is_one_line(tmp_path):
    path = tmp_path / "aps/super_glue/boolq/validation.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"question": "is it", "label": 1}) + "\n")
    with pytest.raises(eai_eval.EvalDataError) as excinfo:
        eai_eval.build_task("boolq", tmp_path)
    assert_one_line_error(excinfo, str(path), "passage")


def test_bad_limit_and_data_dir_are_one_line(tmp_path):
    with pytest.raises(ValueError) as excinfo:
        eai_eval.evaluate(HashLM(), data_dir=eai_eval.FIXTURE_DIR, tasks=["copa"], limit=0)
    assert_one_line_error(excinfo, "limit")
    with pytest.raises(ValueError) as excinfo:
        eai_eval.evaluate(HashLM(), data_dir=tmp_path / "nowhere", tasks=["copa"])
    assert_one_line_error(excinfo, "nowhere")


# --- fixture and export ---------------------------------------------------------------------------

def test_committed_fixture_equals_a_fresh_generation(tmp_path):
    written = eai_eval.make_fixture(tmp_path)
    assert len(written) == 31
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(eai_eval.FIXTURE_DIR)
                       for p in eai_eval.FIXTURE_DIR.rglob("*") if p.is_file())
    assert fresh == committed
    for relative in fresh:
        fresh_bytes = (tmp_path / relative).read_bytes()
        assert fresh_bytes == (eai_eval.FIXTURE_DIR / relative).read_bytes(), relative
        assert (tmp_path / relative).stat().st_size < 4096, relative        # a few KB per dataset


def test_fixture_rows_carry_every_field_the_tasks_read():
    for task in eai_eval.SUITE.tasks:
        rows = _fixture_rows(task.task)
        assert 3 <= len(rows) <= 6, task.task
        for row in rows:
            assert set(task.fields) <= set(row), task.task


def test_export_split_writes_the_layout_and_round_trips(tmp_path):
    import datasets

    rows = _fixture_rows("wic")
    path = eai_eval.export_split(datasets.Dataset.from_list(rows), tmp_path, "aps/super_glue", "wic",
                                 "validation")
    assert path == eai_eval.local_data_file(tmp_path, "wic")
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows
    no_config = eai_eval.export_split(rows[:1], tmp_path, "x/y", None, "test")
    assert no_config == tmp_path / "x/y/default/test.jsonl"


def test_export_loads_as_lm_eval_does_and_writes_the_layout(tmp_path, monkeypatch):
    """export() with the hub replaced by the fixture reproduces the fixture's files."""
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        task = {"EleutherAI/headqa": "headqa_en", "json": "prost", "facebook/anli": "anli_r2"}[path]
        split = eai_eval.eval_split(eai_eval.task_config(task))
        dataset = datasets.Dataset.from_list(_fixture_rows(task))
        if task == "headqa_en":             # the hub copy has an image column (not JSON, unused)
            dataset = dataset.add_column("image", [None] * len(dataset)).cast_column("image",
                                                                                     datasets.Image())
        return datasets.DatasetDict({split: dataset, "train": dataset})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    written = eai_eval.export(tmp_path, tasks=["headqa_en", "prost", "anli_r2"])
    assert calls[0][:2] == ("EleutherAI/headqa", "en")
    assert calls[1][2] == {"data_files": {"test": "hf://datasets/corypaik/prost/data/default.jsonl"}}
    names = ("headqa_en", "prost", "anli_r2")
    assert written == [eai_eval.local_data_file(tmp_path, name) for name in names]
    for path in written:
        assert path.read_bytes() == (eai_eval.FIXTURE_DIR / path.relative_to(tmp_path)).read_bytes()


# --- end to end on the fixture -----------------------------------------------------------------------

def test_all_31_tasks_run_offline_with_an_accuracy_each(full_run):
    lm, results = full_run
    json.dumps(results)                                            # JSON-serialisable as returned
    rows = eai_eval.summarize(results)
    per_task = {row["task"]: row for row in rows if row["kind"] == "task"}
    assert list(per_task) == list(eai_eval.TASKS)
    for task in eai_eval.SUITE.tasks:
        row = per_task[task.task]
        assert 0.0 <= row["accuracy"] <= 100.0, task.task
        assert row["n"] == len(_fixture_rows(task.task)), task.task
        assert row["random_baseline"] == task.random_baseline
    aggregate = rows[-1]
    assert aggregate["kind"] == "aggregate" and aggregate["complete"] and aggregate["n"] == 31
    assert aggregate["accuracy"] == pytest.approx(sum(r["accuracy"] for r in per_task.values()) / 31)
    assert aggregate["random_baseline"] == pytest.approx(1034.1 / 31)
    assert results["eai_eval"]["tasks"] == list(eai_eval.TASKS)
    assert all(source.startswith(str(eai_eval.FIXTURE_DIR))
               for source in results["eai_eval"]["data"].values())
    assert results["n-shot"] == {name: 0 for name in eai_eval.TASKS}
    assert lm.calls["generate_until"] == len(_fixture_rows("triviaqa"))     # triviaqa only
    assert "mean" in eai_eval.format_summary(rows)
    assert "samples" not in results                      # only asked for: the compact scores stay


def test_per_example_scores_agree_with_the_stored_accuracies(full_run):
    """The per-document scores kept for bootstrap intervals average to lm-eval's own metric."""
    _, results = full_run
    per_example = results["per_example"]
    assert list(per_example) == list(eai_eval.TASKS)
    for row in eai_eval.summarize(results):
        if row["kind"] != "task":
            continue
        record = per_example[row["task"]]
        assert record["metric"] == row["metric"]          # under the filter summarize reads
        assert f"{row['metric']},{record['filter']}" in results["results"][row["task"]]
        assert record["doc_id"] == list(range(row["n"]))             # every document, once, in order
        assert set(record["value"]) <= {0.0, 1.0}
        assert 100.0 * sum(record["value"]) / len(record["value"]) == pytest.approx(row["accuracy"])


def test_triviaqa_generation_is_scored_by_exact_match(full_run):
    """The oracle generates the answer then more text: lm-eval's until + filters leave an exact match."""
    _, results = full_run
    row = next(r for r in eai_eval.summarize(results) if r["task"] == "triviaqa")
    assert row["accuracy"] == 100.0


def _reference_accuracy(task: str, prompt, choices, gold) -> float:
    """Accuracy of the hashing scorer, with the prompt rebuilt by hand from the task's YAML."""
    correct = 0
    rows = _fixture_rows(task)
    for row in rows:
        scores = [hashed_loglikelihood(prompt(row), " " + choice)[0] for choice in choices(row)]
        correct += int(max(range(len(scores)), key=scores.__getitem__) == gold(row))
    return 100.0 * correct / len(rows)


def test_accuracies_match_an_independent_rescoring(full_run):
    _, results = full_run
    got = {r["task"]: r["accuracy"] for r in eai_eval.summarize(results)}
    sst2 = _reference_accuracy(
        "sst2", lambda r: f"{r['sentence']}\nQuestion: Is this sentence positive or negative?\nAnswer:",
        lambda r: ["negative", "positive"], lambda r: r["label"])
    boolq = _reference_accuracy(
        "boolq", lambda r: f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:",
        lambda r: ["no", "yes"], lambda r: r["label"])
    anli = _reference_accuracy(
        "anli_r3",
        lambda r: f"{r['premise']}\nQuestion: {r['hypothesis']} True, False, or Neither?\nAnswer:",
        lambda r: ["True", "Neither", "False"], lambda r: r["label"])
    copa = _reference_accuracy(       # lm-eval's copa choices carry their own leading space
        "copa",
        lambda r: r["premise"][:-1] + {"cause": " because", "effect": " therefore"}[r["question"]],
        lambda r: [" " + c[0].lower() + c[1:] for c in (r["choice1"], r["choice2"])],
        lambda r: r["label"])
    assert (got["sst2"], got["boolq"], got["anli_r3"], got["copa"]) == (sst2, boolq, anli, copa)


def test_limit_and_stderr():
    lm = HashLM()
    results = eai_eval.evaluate(lm, data_dir=eai_eval.FIXTURE_DIR, tasks=["wic", "sst"], limit=2,
                                bootstrap_iters=10)
    rows = eai_eval.summarize(results)
    assert [r["task"] for r in rows] == ["sst2", "wic", "mean"]          # suite order
    assert [r["n"] for r in rows[:2]] == [2, 2]
    assert lm.calls["loglikelihood"] == 2 * 2 * 2                  # 2 docs x 2 choices, per task
    for row in rows[:2]:                   # closed-form stderr of a mean (sample std / sqrt(n), n = 2)
        p, n = row["accuracy"] / 100, 2
        assert row["stderr"] == pytest.approx(100 * math.sqrt(p * (1 - p) / (n - 1)))
    assert rows[-1]["complete"] is False and rows[-1]["study_name"] == "2 of 31 tasks"
    assert rows[-1]["random_baseline"] == 50.0


def test_each_prompt_template_is_compiled_once_and_renders_as_lm_evals(monkeypatch):
    from lm_eval import utils

    templates = []
    compile_template = utils.env.from_string
    monkeypatch.setattr(utils.env, "from_string",
                        lambda source: templates.append(source) or compile_template(source))
    lm = HashLM()
    results = eai_eval.evaluate(lm, data_dir=eai_eval.FIXTURE_DIR, tasks=["wic", "sst", "copa"],
                                limit=4, bootstrap_iters=0)
    assert len(templates) == len(set(templates)) and len(templates) < lm.calls["loglikelihood"]
    assert utils.apply_template.__module__ == "lm_eval.utils"     # put back afterwards
    monkeypatch.undo()
    again = eai_eval.evaluate(HashLM(), data_dir=eai_eval.FIXTURE_DIR,
                              tasks=["wic", "sst", "copa"], limit=4, bootstrap_iters=0)
    assert again["per_example"] == results["per_example"]


# --- through the project's lm-eval adapter ------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_archobj_checkpoint(tmp_path_factory):
    pytest.importorskip("harness.eval.lm_eval_adapter")
    import jax
    import numpy as np

    from harness.storage.checkpoint import save_model
    from models.config import preset
    from models.transformer import abstract_params

    config = preset("tiny", "nd", dtype="float32", vocab_size=384)
    rng = np.random.default_rng(0)            # random weights of the exact tree, without a compile
    params = jax.tree.map(lambda a: (0.05 * rng.standard_normal(a.shape)).astype(a.dtype),
                          abstract_params(config))
    directory = tmp_path_factory.mktemp("eai_tiny") / "model"
    save_model(directory, config, params, step=0)
    return directory


def test_end_to_end_through_archobj_lm(tiny_archobj_checkpoint):
    from harness.eval.lm_eval_adapter import ArchobjLM

    lm = ArchobjLM(str(tiny_archobj_checkpoint), vocabulary="byte", batch_size=4,
                   max_inputs_length=128, max_targets_length=32, max_gen_toks=8)
    results = eai_eval.evaluate(lm, data_dir=eai_eval.FIXTURE_DIR, tasks=["copa", "lambada_openai",
                                                                          "triviaqa"],
                                limit=2, bootstrap_iters=0, log_samples=True)
    rows = {r["task"]: r for r in eai_eval.summarize(results)}
    assert set(rows) == {"copa", "lambada_openai", "triviaqa", "mean"}
    for name in ("copa", "lambada_openai", "triviaqa"):
        assert 0.0 <= rows[name]["accuracy"] <= 100.0 and rows[name]["n"] == 2
    # The suite hands lm-eval's requests to the model unchanged: copa's scores are the model's own
    # token scores of (context, continuation) (byte ids: tokenizing the pair = tokenizing each part).
    pairs, logged = [], []
    for sample in results["samples"]["copa"]:
        for (context, continuation), response in zip(sample["arguments"], sample["resps"]):
            pairs.append((lm.tok_encode(context), lm.tok_encode(continuation)))
            logged.append(response[0][0])
    direct = [score for score, _ in lm.score_tokens(pairs)]
    assert direct == pytest.approx(logged, abs=1e-4)
    assert all(isinstance(s["filtered_resps"][0], str) for s in results["samples"]["triviaqa"])
    for name in ("copa", "lambada_openai", "triviaqa"):       # kept beside the full samples
        values = results["per_example"][name]["value"]
        assert 100.0 * sum(values) / len(values) == pytest.approx(rows[name]["accuracy"])
