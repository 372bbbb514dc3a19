"""T0 training mixture (objectives/t0.py): dataset list, templates, capped rates, seqio loaders.

Everything runs offline: promptsource's templates are bundled, the local JSONL fixture is generated
into tmp_path by ``t0.make_fixture`` (its stated generator), and the Hugging Face loader reads a fake
``datasets`` module.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from objectives import t0

REPO = Path(__file__).resolve().parents[1]

# promptsource 0.2.3 (pinned, DEPS.md): number of templates of the 38 BASE datasets after T0's
# blacklist. A canary for a promptsource upgrade, not a number from the paper.
PROMPTSOURCE_023_TEMPLATES = 313

# The fixture with max_examples_per_dataset=6, worked by hand (see t0.make_fixture):
# ag_news: N=12 > 6, T=3 -> 6 // 3 = 2 each; imdb: N=5 <= 6 -> 5 each; glue/mrpc: N=max(4, 3)=4 -> 4.
FIXTURE_CAP = 6
FIXTURE_RATES = {
    "ag_news_classify": 2.0,
    "ag_news_classify_question_first": 2.0,
    "ag_news_which_section": 2.0,
    "imdb_Movie_Expressed_Sentiment": 5.0,
    "imdb_Reviewer_Enjoyment_Yes_No": 5.0,
    "glue_mrpc_equivalent": 4.0,
    "glue_mrpc_generate_paraphrase": 4.0,
}
FIXTURE_LINES = {
    "ag_news__classify.jsonl": 12,
    "ag_news__classify_question_first.jsonl": 12,
    "ag_news__which_section.jsonl": 12,
    "imdb__Movie_Expressed_Sentiment.jsonl": 5,
    "imdb__Reviewer_Enjoyment_Yes_No.jsonl": 5,
    "glue--mrpc__equivalent.jsonl": 4,
    "glue--mrpc__generate_paraphrase.jsonl": 3,  # renders paraphrases only: 3 of the 4 examples
}


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("t0_local")
    assert t0.make_fixture(directory) == FIXTURE_LINES
    return directory


@pytest.fixture(scope="module")
def byte_vocabulary():
    import seqio

    # Without extra ids, sentinels would collide with real byte ids (DEPS.md).
    return seqio.ByteVocabulary(extra_ids=100)


# -------------------------------------------------------------------------------------------------
# The dataset list and its templates
# -------------------------------------------------------------------------------------------------

def test_dataset_list_is_t0_base_with_templates_offline():
    datasets = t0.T0_TRAIN_DATASETS
    assert len(datasets) == 38
    assert len({d.key for d in datasets}) == 38
    per_category = collections.Counter(d.category for d in datasets)
    # PAPER.md 3.3, category by category.
    assert per_category == {"paraphrase": 3, "QA_closed_book": 2, "QA_extractive": 7,
                            "QA_multiple_choice": 11, "sentiment": 5, "structure_to_text": 2,
                            "summarization": 5, "topic_classification": 3}
    assert {"glue/mrpc", "kilt_tasks/hotpotqa", "cos_e/v1.11", "wiki_hop/original",
            "cnn_dailymail/3.0.0", "duorc/SelfRC", "adversarial_qa/droberta"} <= {d.key for d in datasets}

    counts, missing = {}, []
    for dataset in datasets:
        try:
            counts[dataset.key] = len(t0.t0_templates(dataset))
        except ValueError:
            missing.append(dataset.key)
    print(f"promptsource templates found offline for {len(counts)} of 38 datasets, "
          f"{sum(counts.values())} templates; missing: {missing or 'none'}")
    assert missing == []
    assert sum(counts.values()) == PROMPTSOURCE_023_TEMPLATES


def test_templates_of_one_dataset_and_the_blacklist(monkeypatch):
    names = [name for name, _ in t0.t0_templates("ag_news")]
    # Original-task and other templates alike (T0 trained on all of them).
    assert names == ["classify", "classify_question_first", "classify_with_choices",
                     "classify_with_choices_question_first", "recommend", "which_section",
                     "which_section_choices"]
    assert t0.t0_templates(t0.find_dataset("ag_news"))[0][1].get_id() == \
        t0.t0_templates("ag_news")[0][1].get_id()

    # The blacklist compares cleaned names, as T0 compared cleaned task names.
    monkeypatch.setitem(t0.TEMPLATE_BLACKLIST, "ag_news", ("recommend",))
    monkeypatch.setitem(t0.TEMPLATE_BLACKLIST, "imdb", ("Sentiment_with_choices_",))
    assert "recommend" not in [n for n, _ in t0.t0_templates("ag_news")]
    imdb = [n for n, _ in t0.t0_templates("imdb")]
    assert len(imdb) == 10 and "Sentiment with choices " not in imdb

    with pytest.raises(ValueError, match="no_such_dataset"):
        t0.t0_templates("no_such_dataset")


def test_task_and_file_names():
    assert t0.t0_task_name("glue/mrpc", "same thing") == "glue_mrpc_same_thing"
    assert t0.t0_task_name("imdb", "Sentiment with choices ") == "imdb_Sentiment_with_choices_"
    assert t0.jsonl_file_name("cos_e/v1.11", "rationale") == "cos_e--v1.11__rationale.jsonl"
    assert t0.parse_jsonl_file_name("/x/cos_e--v1.11__rationale.jsonl") == ("cos_e/v1.11", "rationale")
    assert t0.parse_jsonl_file_name(t0.jsonl_file_name("imdb", "Movie Expressed Sentiment 2")) == \
        ("imdb", "Movie_Expressed_Sentiment_2")


def test_render_example_skips_examples_without_a_target():
    templates = dict(t0.t0_templates("ag_news"))
    assert t0.render_example(templates["classify"], {"text": "Oil prices ease.", "label": 2}) == \
        ("Oil prices ease. \nWhat label best describes this news article?", "Business")
    # A label with no answer choice renders an empty target: skipped.
    assert t0.render_example(templates["classify"], {"text": "x", "label": 7}) is None
    mrpc = dict(t0.t0_templates("glue/mrpc"))
    example = {"sentence1": "A.", "sentence2": "B.", "label": 0, "idx": 0}
    assert t0.render_example(mrpc["generate_paraphrase"], example) is None  # renders nothing


def test_import_has_no_heavy_side_effects():
    code = ("import sys, objectives.t0; "
            "print([m for m in ('tensorflow', 'seqio', 'promptsource', 'datasets') "
            "if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == "[]"


# -------------------------------------------------------------------------------------------------
# Mixing rates (pure)
# -------------------------------------------------------------------------------------------------

def test_mixing_rate_hand_worked():
    assert t0.mixing_rate(1_000_000, 4) == 125_000  # above the cap: 500k shared by 4 templates
    assert t0.mixing_rate(1_000, 5) == 1_000  # below it: every template gets the whole dataset
    # T0's rule is not min(N, cap / T): at or below the cap every template keeps N.
    assert t0.mixing_rate(400_000, 10) == 400_000
    assert t0.mixing_rate(500_000, 10) == 500_000
    assert t0.mixing_rate(3_600_000, 9) == 55_555  # amazon_polarity: integer division, as T0
    with pytest.raises(ValueError, match="num_templates=0"):
        t0.mixing_rate(10, 0)


def test_mixture_rates_and_probabilities():
    rates = t0.mixture_rates({"big": 1_000_000, "small": 1_000},
                             {"big": ["b1", "b2", "b3", "b4"], "small": [f"s{i}" for i in range(5)]})
    assert rates == {**{f"b{i}": 125_000.0 for i in range(1, 5)},
                     **{f"s{i}": 1_000.0 for i in range(5)}}
    probabilities = t0.mixture_probabilities(rates)
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-12)
    assert probabilities["b1"] == pytest.approx(125_000 / 505_000, abs=1e-12)

    with pytest.raises(ValueError, match="same datasets"):
        t0.mixture_rates({"a": 1}, {"b": ["t"]})
    with pytest.raises(ValueError, match="rate of 0"):
        t0.mixture_rates({"a": 10}, {"a": ["t1", "t2", "t3"]}, max_examples_per_dataset=2)
    with pytest.raises(ValueError, match="listed twice"):
        t0.mixture_rates({"a": 1, "b": 1}, {"a": ["t"], "b": ["t"]})


# -------------------------------------------------------------------------------------------------
# Local JSONL mixture
# -------------------------------------------------------------------------------------------------

def test_fixture_generator_is_deterministic(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    assert t0.make_fixture(first) == t0.make_fixture(second) == FIXTURE_LINES
    for name in FIXTURE_LINES:
        assert (first / name).read_bytes() == (second / name).read_bytes()
    assert sorted(p.name for p in first.iterdir()) == sorted(FIXTURE_LINES)  # no leftovers
    assert sum(p.stat().st_size for p in first.iterdir()) < 100_000


def _task_of_inputs(directory: Path, mixture_name: str) -> dict[bytes, str]:
    """Input text -> registered task name, from the fixture files (checked to be one-to-one)."""
    owner: dict[bytes, str] = {}
    for path in sorted(directory.glob("*.jsonl")):
        key, template = t0.parse_jsonl_file_name(path)
        task = f"{mixture_name}.{t0.t0_task_name(key, template)}"
        for line in path.read_text(encoding="utf-8").splitlines():
            text = json.loads(line)["inputs"].encode("utf-8")
            assert owner.setdefault(text, task) == task, f"input shared by two tasks: {text!r}"
    return owner


def test_local_mixture_rates_and_sampling(fixture_dir, byte_vocabulary):
    from scipy import stats

    name = "t0_test_local"
    mixture = t0.register_t0_mixture_from_jsonl(fixture_dir, byte_vocabulary, name=name,
                                                max_examples_per_dataset=FIXTURE_CAP)
    rates = {task.name: mixture.get_rate(task) for task in mixture.tasks}
    assert rates == {f"{name}.{task}": rate for task, rate in FIXTURE_RATES.items()}
    # Re-registering the same definition is a no-op.
    assert t0.register_t0_mixture_from_jsonl(fixture_dir, byte_vocabulary, name=name,
                                             max_examples_per_dataset=FIXTURE_CAP) is mixture

    probabilities = t0.mixture_probabilities(rates)  # 1/12, 5/24, 1/6 (make_fixture's docstring)
    assert probabilities[f"{name}.ag_news_classify"] == pytest.approx(1 / 12, abs=1e-12)
    assert probabilities[f"{name}.imdb_Movie_Expressed_Sentiment"] == pytest.approx(5 / 24, abs=1e-12)
    assert probabilities[f"{name}.glue_mrpc_equivalent"] == pytest.approx(1 / 6, abs=1e-12)

    num_samples = 480
    dataset = mixture.get_dataset({"inputs": 64, "targets": 16}, split="train", seed=1234,
                                  shuffle=True, num_epochs=None, copy_pretokenized=True,
                                  log_mixing_proportions=False)
    task_of = _task_of_inputs(fixture_dir, name)
    counts = collections.Counter()
    for example in dataset.take(num_samples).as_numpy_iterator():
        counts[task_of[bytes(example["inputs_pretokenized"])]] += 1
        # T0's features: no EOS on the inputs; EOS ends the targets unless trimming cut it off (T0
        # appends EOS before trimming, e.g. "Science and technology" is 22 bytes).
        assert byte_vocabulary.eos_id not in example["inputs"].tolist()
        if len(example["targets_pretokenized"]) < 16:
            assert example["targets"][-1] == byte_vocabulary.eos_id
        assert len(example["inputs"]) <= 64 and len(example["targets"]) <= 16
    tasks = sorted(rates)
    observed = np.array([counts[t] for t in tasks], float)
    expected = np.array([probabilities[t] * num_samples for t in tasks])
    # Pearson chi-square goodness of fit, 6 degrees of freedom, rejected only beyond the 99.9th
    # percentile (22.46): a correct sampler fails 1 seed in 1000, and the seed is fixed.
    statistic = float(((observed - expected) ** 2 / expected).sum())
    critical = float(stats.chi2.ppf(0.999, df=len(tasks) - 1))
    assert statistic < critical, (statistic, dict(zip(tasks, observed)), dict(zip(tasks, expected)))


def test_local_mixture_reregistration_and_name_clashes(fixture_dir, byte_vocabulary):
    import seqio

    name = "t0_test_rereg"
    first = t0.register_t0_mixture_from_jsonl(fixture_dir, byte_vocabulary, name=name,
                                              max_examples_per_dataset=FIXTURE_CAP)
    # A new definition (another cap) replaces this module's own earlier one.
    second = t0.register_t0_mixture_from_jsonl(fixture_dir, byte_vocabulary, name=name)
    assert second is not first and seqio.MixtureRegistry.get(name) is second
    assert {second.get_rate(t) for t in second.tasks} == {12.0, 5.0, 4.0}  # no dataset above 500k

    # Names registered by other code are never replaced.
    other = "t0_test_clash"
    seqio.TaskRegistry.add(f"{other}.imdb_Movie_Expressed_Sentiment",
                           seqio.FunctionDataSource(lambda split, shuffle_files: None, ["train"]),
                           output_features={})
    try:
        with pytest.raises(ValueError, match="registered by other code"):
            t0.register_t0_mixture_from_jsonl(fixture_dir, byte_vocabulary, name=other)
    finally:
        seqio.TaskRegistry.remove(f"{other}.imdb_Movie_Expressed_Sentiment")
    with pytest.raises(ValueError, match="name='bad name'"):
        t0.register_t0_mixture_from_jsonl(fixture_dir, byte_vocabulary, name="bad name")
    with pytest.raises(ValueError, match="seqio.Vocabulary"):
        t0.register_t0_mixture_from_jsonl(fixture_dir, "byte", name="t0_test_bad_vocab")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


GOOD_LINE = '{"inputs": "a question", "targets": "an answer"}\n'


@pytest.mark.parametrize("layout, message", [
    ({}, "does not exist"),
    ({"readme.txt": "not data"}, "no *.jsonl files"),
    ({"imdb__t.jsonl": ""}, "no examples"),
    ({"imdb__t.jsonl": "\n  \n"}, "no examples"),
    ({"imdb__t.jsonl": GOOD_LINE + '{"inputs": "q", "targets": \n'}, ":2: malformed JSON"),
    ({"imdb__t.jsonl": GOOD_LINE * 2 + '["q", "a"]\n'}, ":3: expected a JSON object"),
    ({"imdb__t.jsonl": '{"targets": "a"}\n'}, ":1: field 'inputs' must be a non-empty string, got missing"),
    ({"imdb__t.jsonl": '{"inputs": "q"}\n'}, ":1: field 'targets' must be a non-empty string, got missing"),
    ({"imdb__t.jsonl": '{"inputs": "q", "targets": 3}\n'}, ":1: field 'targets' must be a non-empty"),
    ({"imdb.jsonl": GOOD_LINE}, "file name must be <dataset>__<template>.jsonl"),
])
def test_local_layout_errors(tmp_path, byte_vocabulary, layout, message):
    directory = tmp_path / "layout"
    if layout:
        for file_name, text in layout.items():
            _write(directory / file_name, text)
    with pytest.raises(t0.T0DataError) as raised:
        t0.register_t0_mixture_from_jsonl(directory, byte_vocabulary, name="t0_test_errors")
    text = str(raised.value)
    assert message in text and "\n" not in text
    assert str(directory) in text  # names the path (the file's, for per-file problems)
    assert "t0_test_errors" not in __import__("seqio").MixtureRegistry.names()


def test_path_that_is_a_file(tmp_path, byte_vocabulary):
    path = _write(tmp_path / "data.jsonl", GOOD_LINE)
    with pytest.raises(t0.T0DataError, match="not a directory"):
        t0.register_t0_mixture_from_jsonl(path, byte_vocabulary, name="t0_test_errors")


def test_writer_never_overwrites_by_default(tmp_path):
    templates = {"imdb": [("Movie Expressed Sentiment",
                           dict(t0.t0_templates("imdb"))["Movie Expressed Sentiment"])]}
    examples = {"imdb": [{"text": "Fine.", "label": 1}]}
    assert t0.write_prompted_jsonl(examples, templates, tmp_path) == \
        {"imdb__Movie_Expressed_Sentiment.jsonl": 1}
    before = (tmp_path / "imdb__Movie_Expressed_Sentiment.jsonl").read_bytes()
    with pytest.raises(t0.T0DataError, match="exists; pass overwrite=True"):
        t0.write_prompted_jsonl({"imdb": [{"text": "Other.", "label": 0}]}, templates, tmp_path)
    assert (tmp_path / "imdb__Movie_Expressed_Sentiment.jsonl").read_bytes() == before
    # A template that renders nothing writes no file (the loader would reject an empty one).
    mrpc = {"glue/mrpc": [("generate_paraphrase",
                           dict(t0.t0_templates("glue/mrpc"))["generate_paraphrase"])]}
    negative = {"glue/mrpc": [{"sentence1": "A.", "sentence2": "B.", "label": 0, "idx": 0}]}
    assert t0.write_prompted_jsonl(negative, mrpc, tmp_path) == \
        {"glue--mrpc__generate_paraphrase.jsonl": 0}
    assert not (tmp_path / "glue--mrpc__generate_paraphrase.jsonl").exists()


# -------------------------------------------------------------------------------------------------
# Hugging Face mixture (registration is offline; reading uses a fake `datasets` module)
# -------------------------------------------------------------------------------------------------

def test_hf_mixture_rates_and_reading(monkeypatch, byte_vocabulary):
    name = "t0_test_hf"
    mixture = t0.register_t0_mixture_from_hf(byte_vocabulary, name=name)
    rates = {task.name[len(name) + 1:]: mixture.get_rate(task) for task in mixture.tasks}
    assert len(rates) == PROMPTSOURCE_023_TEMPLATES
    # T0's rates from datasets.csv's train_size: 3.6M / 9 templates, 582,659 / 5, 650,000 / 7 (all
    # above the cap: floor(500k / T)); ag_news and mrpc below it keep their sizes.
    assert rates["amazon_polarity_Is_this_review"] == 55_555
    assert rates["wiki_bio_who"] == 100_000
    assert rates["yelp_review_full_this_place"] == 71_428
    assert rates["ag_news_classify"] == 120_000
    assert rates["glue_mrpc_same_thing"] == 3_668
    assert t0.register_t0_mixture_from_hf(byte_vocabulary, name=name) is mixture

    calls = []

    def load_dataset(path, subset, split, cache_dir):
        calls.append((path, subset, split, cache_dir))
        return [{"text": "Oil prices ease.", "label": 2}, {"text": "Unlabelled.", "label": 7},
                {"text": "Cup final tonight.", "label": 1}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    import seqio

    task = seqio.TaskRegistry.get(f"{name}.ag_news_classify")
    examples = list(task.get_dataset(None, split="train", shuffle=False).as_numpy_iterator())
    assert calls == [("ag_news", None, "train", None)]
    assert [e["targets_pretokenized"] for e in examples] == [b"Business", b"Sports"]  # label 7 skipped
    first = examples[0]
    assert byte_vocabulary.decode(first["inputs"].tolist()) == \
        "Oil prices ease. \nWhat label best describes this news article?"
    assert first["targets"].tolist() == byte_vocabulary.encode("Business") + [byte_vocabulary.eos_id]

    with pytest.raises(ValueError, match="not T0 training dataset names"):
        t0.register_t0_mixture_from_hf(byte_vocabulary, name="t0_test_hf2", hf_paths={"c4": "x"})
