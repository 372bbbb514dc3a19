"""analysis/: the reference numbers, the cell -> paper-row mapping, aggregation, the bootstrap, the
loader's input shapes, the tables and the figures. No JAX: every test here is pandas and numpy."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from analysis import aggregate, bootstrap, cells, fixture, plots, reference, tables
from analysis.load import RunData, load


# -- the reference numbers ------------------------------------------------------------------------

def test_reference_random_baselines_are_the_suites_own():
    from harness.eval import eai_eval, t0_eval

    assert reference.task_random("eai") == {t.task: t.random_baseline / 100
                                            for t in eai_eval.SUITE.tasks}
    assert reference.task_random("t0") == {d.name: d.random_baseline
                                           for d in t0_eval.T0_EVAL_DATASETS}
    ao = reference.paper_numbers().query("kind == 'task_random_ao' and task != 'headqa'")
    assert dict(zip(ao["task"], ao["fraction"])) == {t.task: t.ao_baseline
                                                     for t in eai_eval.SUITE.tasks}
    # The three EAI-Eval random aggregates the paper prints or implies (PAPER.md 3.1), and T0's.
    assert round(100 * statistics.fmean(reference.task_random("eai").values()), 2) == 33.36
    assert round(100 * reference.ao_eai_random_mean(), 1) == 32.9
    assert round(100 * statistics.fmean(reference.task_random("t0").values()), 1) == 41.7
    printed = {key: value for key, (value, _, _) in reference.random_aggregates().items()}
    assert printed == {"eai:Table 3; Table 8": 32.9, "t0:Table 3; Table 8": 41.7,
                       "eai:Table 5": 33.3, "eai:derived from Table 5": 33.36}


def test_reference_holds_the_papers_headline_numbers():
    assert reference.paper_value("cd_flm", "1", "eai") == 44.2          # Table 3
    assert reference.paper_value("ed_mlm > ed_mtf", "1", "t0") == 60.6  # Table 8 / Figure 4
    assert reference.paper_value("cd_flm > nd_mlm > nd_mtf", "1+", "t0") == 54.9
    assert reference.paper_value("ed_mlm", "1/2", "eai") == 34.6        # Table 6
    assert reference.paper_value("ed_mlm", "1/2", "t0") is None         # not evaluated
    assert reference.paper_value("t0", "", "t0") == 62.5                # T0 baseline
    results = reference.results()
    assert not results.duplicated(["recipe", "point", "suite"]).any()
    assert len(results) == 2 * (3 + 9 + 6 + 6 + 3) + 6 + 4              # PAPER.md 4.1-4.5


def test_tables_fed_the_papers_numbers_reproduce_them_exactly():
    entries = tables.as_entries()
    for name in tables.PAPER_TABLES:
        table = tables.paper_table(name, entries, reference.PAPER_LABEL, 10)
        ours = [i for i, c in enumerate(table.columns) if c.endswith(", ours")]
        checked = 0
        for row in table.rows:
            if row[0] == "Random baseline":
                continue
            for column in ours:
                paper = row[column + 1]
                if paper != "—":
                    assert row[column] == paper, (name, row)
                    checked += 1
        assert checked == len(table.data) * len(ours) - (18 if name == "Table 8" else 0) \
            or name != "Table 6", name
        assert checked > 0
    # Table 8 holds every published number (its rows, and Tables 3, 6, 7's, labelled so).
    table8 = tables.paper_table("Table 8", entries, reference.PAPER_LABEL, 10)
    shown = {cell for row in table8.rows for cell in row}
    assert {f"{v:.1f}" for v in reference.results()["value"]} <= shown


# -- cells -> the paper's rows ---------------------------------------------------------------------

def test_every_paper_row_is_a_cell_of_the_paper_grid():
    """The mapping reads the chain's structure: the paper grid's cells cover every result row."""
    from harness.grid.plan import make_plan
    from harness.grid.spec import load_grid

    grid = load_grid("experiments/paper.yaml")
    plan = make_plan(grid, runs="/nonexistent")
    mapped = {(info.recipe, info.point) for info in
              (cells.parse_cell(c, grid.pretrain_steps,
                                baseline=plan.stages[plan.cells[c][0]].kind == "import")
               for c in plan.cells)}
    wanted = set(zip(reference.results()["recipe"], reference.results()["point"]))
    assert wanted <= mapped, wanted - mapped


@pytest.mark.parametrize("name, steps, recipe, point", [
    ("cd_flm_64", 64, "cd_flm", "1"),
    ("cd_flm_32", 64, "cd_flm", "1/2"),
    ("cd_mlm_15-cd_flm_16", 64, "cd_mlm > cd_flm", "1/4"),
    ("ed_mlm_30000-ed_plm_32768-ed_mtf_42768", 131072, "ed_mlm > ed_plm > ed_mtf", "1/4"),
    ("cd_flm_131072-nd_mlm_171008-nd_mtf_181008", 131072, "cd_flm > nd_mlm > nd_mtf", "1+"),
    ("cd_flm_64-nd_mlm_84@80", 64, "cd_flm > nd_mlm", "1+"),
    ("nd_plm_40", 64, "nd_plm", "5/8"),
])
def test_cell_names_map_to_recipes_and_points_at_any_scale(name, steps, recipe, point):
    info = cells.parse_cell(name, steps)
    assert (info.recipe, info.point) == (recipe, point)


# -- aggregation -------------------------------------------------------------------------------------

def _frame(rows):
    base = {"run": "r", "scale": "s", "cell": "c", "stage": "c.x", "metric": "acc", "stderr": None,
            "n": 10, "step": 1, "tokens_seen": 1.0, "seed": 0, "group": "g", "recipe": "cd_flm",
            "point": "1", "limit": None, "prompt": ""}
    return pd.DataFrame([{**base, **row} for row in rows])


def test_aggregation_median_over_prompts_then_mean_over_datasets_and_mean_over_tasks():
    frame = _frame([
        {"suite": "t0", "task": "cb", "prompt": "a", "value": 0.2, "random": 1 / 3},
        {"suite": "t0", "task": "cb", "prompt": "b", "value": 0.9, "random": 1 / 3},
        {"suite": "t0", "task": "cb", "prompt": "c", "value": 0.4, "random": 1 / 3},
        {"suite": "t0", "task": "rte", "prompt": "a", "value": 0.6, "random": 0.5},
        {"suite": "t0", "task": "rte", "prompt": "b", "value": 0.8, "random": 0.5},
        {"suite": "eai", "task": "copa", "value": 0.7, "random": 0.5},
        {"suite": "eai", "task": "lambada_openai", "value": 0.3, "random": 0.0},
    ])
    scores = aggregate.suite_scores(frame).set_index("suite")
    assert scores.loc["t0", "score"] == pytest.approx((0.4 + 0.7) / 2)     # medians 0.4, 0.7
    assert scores.loc["eai", "score"] == pytest.approx(0.5)
    assert scores.loc["eai", "random"] == pytest.approx(0.25)
    assert scores.loc["eai", "normalised"] == pytest.approx(((0.7 - 0.5) / 0.5 + 0.3) / 2)
    assert scores.loc["t0", "normalised"] == pytest.approx(((0.4 - 1 / 3) / (2 / 3) + 0.4) / 2)
    assert not scores["complete"].any()                                   # 2 of 31, 2 of 11


def test_chance_level_results_aggregate_to_the_random_baselines():
    rows = [{"suite": "eai", "task": t, "value": r, "random": r}
            for t, r in reference.task_random("eai").items()]
    rows += [{"suite": "t0", "task": t, "prompt": "p", "value": r, "random": r}
             for t, r in reference.task_random("t0").items()]
    scores = aggregate.suite_scores(_frame(rows)).set_index("suite")
    assert round(100 * scores.loc["eai", "score"], 2) == 33.36
    assert round(100 * scores.loc["t0", "score"], 1) == 41.7
    assert scores["normalised"].abs().max() < 1e-12 and scores["complete"].all()


# -- the bootstrap ------------------------------------------------------------------------------------

def _data(cells_values: dict[str, np.ndarray], suite: str = "eai", prompts: int = 1) -> RunData:
    rows, examples = [], {}
    for cell, values in cells_values.items():
        for p in range(prompts):
            prompt = f"p{p}" if suite == "t0" else ""
            task = "cb" if suite == "t0" else "copa"
            scores = values if prompts == 1 else values[p]
            rows.append({"run": "r", "cell": cell, "suite": suite, "task": task, "prompt": prompt,
                         "value": float(np.mean(scores)), "random": 0.5, "n": len(scores),
                         "group": cell, "seed": 0})
            examples[("r", cell, suite, task, prompt)] = (np.arange(len(scores)),
                                                           np.asarray(scores, dtype=float))
    return RunData(_frame(rows), pd.DataFrame(), examples, pd.DataFrame(), pd.DataFrame(),
                   pd.DataFrame())


def test_bootstrap_contains_the_estimate_and_shrinks_as_examples_grow():
    rng = np.random.default_rng(0)
    widths = []
    for n in (100, 10_000):
        data = _data({"a": (rng.random(n) < 0.6).astype(float)})
        reps = bootstrap.bootstrap(data, replicates=500, seed=1)
        scores = bootstrap.with_intervals(aggregate.suite_scores(data.frame), reps)
        low, high, score = scores.loc[0, ["low", "high", "score"]]
        assert low < score < high and scores.loc[0, "method"] == "bootstrap"
        # the classic bootstrap of a proportion: its sd is close to sqrt(p (1 - p) / n)
        assert np.std(reps.suite[("r", "a", "eai")]) == pytest.approx(
            np.sqrt(score * (1 - score) / n), rel=0.15)
        widths.append(high - low)
    assert widths[1] < widths[0] / 5                                     # ~ 1 / sqrt(100)
    again = bootstrap.bootstrap(data, replicates=500, seed=1)             # seeded: deterministic
    assert np.array_equal(again.suite[("r", "a", "eai")], reps.suite[("r", "a", "eai")])


def test_t0_replicates_take_the_median_over_prompts_inside_each_replicate():
    rng = np.random.default_rng(3)
    values = (rng.random((3, 200)) < np.array([[0.3], [0.5], [0.8]])).astype(float)
    data = _data({"a": values}, suite="t0", prompts=3)
    reps = bootstrap.bootstrap(data, replicates=300, seed=0)
    # Recompute by hand with the same draws: one shared resampling of the 200 examples.
    means = bootstrap.bootstrap_means(values.T, None, 300,
                                      bootstrap._rng(0, "t0", "cb", "200"))
    assert np.allclose(reps.task[("r", "a", "t0", "cb")], np.median(means, axis=1))
    assert aggregate.suite_scores(data.frame)["score"].iloc[0] == pytest.approx(
        np.median(values.mean(axis=1)))


def test_t0_families_count_those_whose_interval_clears_their_chance():
    """Planted: NLI well above chance in both seeds, word sense at chance, sentence completion
    (HellaSwag, chance 25%) at 30% over 2,000 examples: above its own chance though below the
    others'. Seeds are pooled as in the cell's aggregate."""
    rng = np.random.default_rng(0)
    rows, examples = [], {}
    for run in ("s0", "s1"):
        for task, accuracy, n in (("anli_r1", 0.8, 200), ("cb", 0.7, 200), ("wic", 0.5, 200),
                                  ("hellaswag", 0.3, 2000)):
            values = (rng.random(n) < accuracy).astype(float)
            rows.append({"run": run, "cell": "c", "suite": "t0", "task": task, "prompt": "p",
                         "value": values.mean(), "random": reference.task_random("t0")[task],
                         "n": n, "group": "c", "seed": int(run[1])})
            examples[(run, "c", "t0", task, "p")] = (np.arange(n), values)
    data = RunData(_frame(rows), pd.DataFrame(), examples, pd.DataFrame(), pd.DataFrame(),
                   pd.DataFrame())
    reps = bootstrap.bootstrap(data, replicates=400, seed=0)
    entries = pd.DataFrame([{"scale": "s", "suite": "t0", "status": "done", "cell": "c",
                             "group_key": "s0|c|t0;s1|c|t0"}])
    table = tables.families(data, entries, reps, "s")
    verdicts = table.data.set_index("family")["verdict"].to_dict()
    assert verdicts == {"NLI": "above", "Sentence completion": "above", "Word sense": "at chance"}
    assert table.rows[0][-1] == "2 of 4" and table.rows[0][3] == ""  # no coreference results
    nli = table.data.set_index("family").loc["NLI"]
    assert nli["random"] == pytest.approx(1 / 3) and nli["datasets"] == 2
    pooled = np.mean([np.mean([r["value"] for r in rows if r["run"] == run and
                               r["task"] in ("anli_r1", "cb")]) for run in ("s0", "s1")])
    assert nli["score"] == pytest.approx(pooled) and nli["low"] < pooled < nli["high"]


def test_eai_families_use_the_datasets_eai_eval_holds():
    """EAI-Eval by the same families: one prompt per dataset, StoryCloze absent from the suite, so
    sentence completion's chance is COPA's and HellaSwag's mean; tasks outside the families (SciQ)
    count for none."""
    rng = np.random.default_rng(1)
    rows, examples = [], {}
    chance = reference.task_random("eai")
    for task, accuracy in (("copa", 0.9), ("hellaswag", 0.9), ("winogrande", 0.5),
                           ("sciq", 0.95)):
        values = (rng.random(300) < accuracy).astype(float)
        rows.append({"run": "s0", "cell": "c", "suite": "eai", "task": task, "prompt": "",
                     "value": values.mean(), "random": chance[task], "n": 300, "group": "c",
                     "seed": 0})
        examples[("s0", "c", "eai", task, "")] = (np.arange(300), values)
    data = RunData(_frame(rows), pd.DataFrame(), examples, pd.DataFrame(), pd.DataFrame(),
                   pd.DataFrame())
    reps = bootstrap.bootstrap(data, replicates=300, seed=0)
    entries = pd.DataFrame([{"scale": "s", "suite": "eai", "status": "done", "cell": "c",
                             "group_key": "s0|c|eai"}])
    table = tables.families(data, entries, reps, "s", "eai")
    assert table.name == "families_eai" and table.title.startswith("EAI-Eval by held-out")
    frame = table.data.set_index("family")
    assert frame["verdict"].to_dict() == {"Sentence completion": "above",
                                          "Coreference": "at chance"}
    assert frame.loc["Sentence completion", "random"] == pytest.approx(
        (chance["copa"] + chance["hellaswag"]) / 2)
    assert table.rows[0][-1] == "1 of 4"
    assert "StoryCloze" in table.caption


def test_findings_summary_reads_each_comparisons_interval():
    """Hand-made differences: a finding whose intervals all lie above 0 holds, all below is
    reversed, one above and one holding 0 holds in part, none resolved is unresolved; the MTF
    rows are counted without a verdict; the widest half-width and the paper's range are kept."""
    def row(finding, suite, low, high, paper):
        return {"finding": finding, "suite": suite, "a": "a", "b": "b",
                "difference": (low + high) / 2, "low": low, "high": high, "paired": True,
                "verdict": "", "paper": paper}
    rows = [row("Finding 1: x", "eai", 0.01, 0.05, 0.007),
            row("Finding 1: x", "eai", 0.02, 0.03, 0.043),
            row("Finding 1: x", "t0", -0.05, -0.01, 0.006),
            row("Finding 1: x", "t0", -0.04, -0.02, 0.007),
            row("Finding 2: y", "eai", 0.01, 0.03, np.nan),
            row("Finding 2: y", "eai", -0.01, 0.02, np.nan),
            row("Finding 3: z", "t0", -0.01, 0.01, 0.028),
            row("What MTF did: w", "eai", 0.01, 0.02, 0.05),
            row("What MTF did: w", "eai", -0.02, 0.01, 0.04)]
    diffs = tables.Table("differences", "", "", [], [], pd.DataFrame(rows))
    summary = tables.findings_summary(diffs, "s", 100)
    verdicts = {(r[0], r[1]): r[6] for r in summary.rows}
    assert verdicts[("Finding 1: x", "EAI-Eval")] == "holds"
    assert verdicts[("Finding 1: x", "T0-Eval")] == "reversed"
    assert verdicts[("Finding 2: y", "EAI-Eval")] == "holds in part: A ahead or tied"
    assert verdicts[("Finding 3: z", "T0-Eval")] == "unresolved: every interval holds 0"
    assert verdicts[("What MTF did: w", "EAI-Eval")].startswith("A ahead of B in 1, behind in 0")
    first = summary.rows[0]
    assert first[2:6] == ["2", "2", "0", "0"] and first[7] == "2.0" and first[8] == "+0.7 to +4.3"
    assert summary.rows[2][8] == ""  # no paper value


def test_paired_bootstrap_detects_a_planted_difference_and_not_a_null_one():
    rng = np.random.default_rng(0)
    trials, n, false_alarms, found = 200, 300, 0, 0
    for trial in range(trials):
        hard = rng.random(n) < 0.5                     # examples both find hard: the pairing
        a = np.where(hard, rng.random(n) < 0.3, rng.random(n) < 0.8).astype(float)
        null_b = np.where(hard, rng.random(n) < 0.3, rng.random(n) < 0.8).astype(float)
        planted_b = np.where(hard, rng.random(n) < 0.15, rng.random(n) < 0.65).astype(float)
        _, low, high = bootstrap.paired_difference(a, null_b, replicates=400, seed=trial)
        false_alarms += not low <= 0 <= high
        _, low, high = bootstrap.paired_difference(a, planted_b, replicates=400, seed=trial)
        found += low > 0
    assert false_alarms / trials <= 0.10               # stated rate 5%; sd ~1.5% at 200 trials
    assert found / trials >= 0.95                      # a 15-point difference on 300 examples


def test_paired_difference_between_cells_shares_the_resampled_examples():
    rng = np.random.default_rng(1)
    base = (rng.random(400) < 0.6).astype(float)
    better = base.copy()
    better[np.flatnonzero(base == 0)[:30]] = 1.0          # right on 30 more examples, else same
    data = _data({"a": better, "b": base})
    reps = bootstrap.bootstrap(data, replicates=500)
    scores = {(r.run, r.cell, r.suite): r.score
              for r in aggregate.suite_scores(data.frame).itertuples()}
    diff = bootstrap.difference(reps, scores, ("r", "a", "eai"), ("r", "b", "eai"))
    assert diff.paired and diff.estimate == pytest.approx(30 / 400)
    assert diff.low > 0 and diff.verdict.startswith("a better")
    # Unpaired, the same 7.5 points would not be told apart from noise this clearly.
    assert diff.high - diff.low < 0.05


# -- the loader's inputs -------------------------------------------------------------------------------

def test_plain_lm_eval_results_in_both_shapes(tmp_path):
    old = {"results": {"copa": {"acc": 0.7, "acc_stderr": 0.05}, "sst": {"acc": 0.6},
                       "not_a_suite_task": {"acc": 0.1}}, "config": {"model": "gpt2"}}
    new = {"results": {"copa": {"acc,none": 0.75, "acc_stderr,none": 0.04, "alias": "copa"},
                       "triviaqa": {"exact_match,remove_whitespace": 0.2}},
           "n-samples": {"copa": {"original": 100, "effective": 100}},
           "config": {"model_args": "pretrained=t5-lm"}}
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    data = load([tmp_path / "old.json", tmp_path / "new.json"])
    frame = data.frame.set_index(["cell", "task"])
    assert frame.loc[("gpt2", "copa"), "value"] == 0.7
    assert frame.loc[("gpt2", "copa"), "stderr"] == 0.05
    assert frame.loc[("gpt2", "sst2"), "suite"] == "eai"                # the study's name, mapped
    assert frame.loc[("gpt2", "not_a_suite_task"), "suite"] == "other"
    assert frame.loc[("pretrained_t5-lm", "copa"), "value"] == 0.75
    assert frame.loc[("pretrained_t5-lm", "copa"), "n"] == 100
    assert frame.loc[("pretrained_t5-lm", "triviaqa"), "value"] == 0.2  # its own metric, filter
    assert set(data.runs["scale"]) == {"unknown (a plain lm-eval result file)"}
    reps = bootstrap.bootstrap(data, replicates=50)
    # Without samples: copa's interval is parametric (it has a count), triviaqa has none at all,
    # and the aggregate says the weaker of the two.
    assert np.isfinite(reps.task[("new", "pretrained_t5-lm", "eai", "copa")]).all()
    assert np.isnan(reps.task[("new", "pretrained_t5-lm", "eai", "triviaqa")]).all()
    assert reps.method[("new", "pretrained_t5-lm", "eai")] == "none"
    assert reps.method[("old", "gpt2", "eai")] == "none"


def test_bad_paths_are_one_line(tmp_path):
    from tests.helpers import assert_one_line_error

    with pytest.raises(ValueError) as excinfo:
        load(tmp_path / "nowhere")
    assert_one_line_error(excinfo, str(tmp_path / "nowhere"), "no such file or directory")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError) as excinfo:
        load(tmp_path / "empty")
    assert_one_line_error(excinfo, str(tmp_path / "empty"), "holds no results")


@pytest.fixture(scope="module")
def grid_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    fixture.write_fixture_grid(root)
    fixture.write_fixture_grid(root, "fixture_seed1", seed=1)
    data = load(root)
    reps = bootstrap.bootstrap(data, replicates=200)
    return data, reps, tables.summarize(data, reps)


def test_grid_loader_statuses_tokens_seeds_and_compute(grid_data):
    data, _, entries = grid_data
    cells_frame = data.cells.set_index(["run", "cell", "suite"])
    assert cells_frame.loc[("fixture", "ed_plm_64", "eai"), "status"] == "pending"
    assert cells_frame.loc[("fixture", "nd_plm_64-nd_mtf_72", "eai"), "status"] == "failed"
    nca = cells_frame.loc[("fixture", "cd_flm_64-nd_mlm_84-nd_mtf_92", "t0")]
    assert (nca["recipe"], nca["point"], nca["step"]) == ("cd_flm > nd_mlm > nd_mtf", "1+", 92)
    assert nca["tokens_seen"] == 64 * 512 + 20 * 512 + 8 * 512      # the chain's tokens, summed
    assert nca["per_example"]
    # Replicates: the seed-1 grid's cells group with the seed-0 grid's.
    assert cells_frame.loc[("fixture", "cd_flm_64", "eai"), "group"] == \
        cells_frame.loc[("fixture_seed1", "cd_flm_64", "eai"), "group"]
    entry = entries.set_index(["cell", "suite"]).loc[("cd_flm_64", "eai")]
    assert entry["seeds"] == 2 and np.isfinite(entry["seed_sd"])
    assert entry["low"] < entry["score"] < entry["high"]
    compute = data.compute.set_index(["run", "stage"]).loc[("fixture", "cd_flm")]
    assert compute["tokens_seen"] == 64 * 512 and compute["flops"] == pytest.approx(64 * 0.05e9)
    assert set(data.runs["scale"]) == {fixture.SCALE}


def test_scale_is_derived_when_not_recorded(tmp_path):
    fixture.write_fixture_grid(tmp_path, scale=None)
    data = load(tmp_path / "fixture")
    scale = data.runs["scale"].iloc[0]
    assert scale.startswith("unrecorded scale: tiny model, 2 layers x d_model 32, 64 pretraining")
    assert data.runs["scale_source"].iloc[0] == "derived from config.json"


def test_tables_mark_missing_pending_and_failed_cells(grid_data):
    _, _, entries = grid_data
    table = tables.paper_table("Table 8", entries, fixture.SCALE, 200)
    text = table.markdown()
    assert fixture.SCALE in text and reference.PAPER_LABEL in text
    rows = {row[0]: row for row in table.rows}
    assert rows["Encoder-decoder (PLM) (Table 3)"][4] == "— (pending)"
    assert rows["ND:PLM + MTF"][4] == "— (failed)"
    assert rows["ED:MLM + MTF"][2] == "missing"
    assert "\\begin{tabular}" in table.latex() and table.csv().startswith("row,")


# -- figures -------------------------------------------------------------------------------------------

def test_figures_have_their_panels_labels_baselines_and_marked_missing_cells(grid_data):
    data, reps, entries = grid_data
    figures = plots.all_figures(data, reps, entries, fixture.SCALE)
    for name, figure in figures.items():
        assert fixture.SCALE in figure._suptitle.get_text(), name
    f4 = figures["figure4"]
    assert [ax.get_title() for ax in f4.axes] == ["EAI-Eval", "T0-Eval"]
    for ax, suite in zip(f4.axes, ("eai", "t0")):
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels == ["CD:FLM", "CD:MLM", "ND:PLM", "ND:MLM", "ED:PLM", "ED:MLM"]
        dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert len(dashed) == 1                                   # the random baseline
        texts = [t.get_text() for t in ax.texts]
        assert "not in grid" in texts                                # MLM pretraining only
        assert ("pending" in texts) == (suite == "eai")              # ED:PLM: EAI planned only
        paper = [line for line in ax.get_lines() if line.get_marker() == "D"]
        assert paper and 44.2 in paper[0].get_ydata() if suite == "eai" else True
    legend = [t.get_text() for t in f4.legends[0].get_texts()]
    assert any(text.startswith(reference.PAPER_SHORT) for text in legend)
    assert any(text.startswith("random") for text in legend)
    f5 = figures["figure5"]
    assert [ax.get_title() for ax in f5.axes] == ["EAI-Eval, tasks shared with T0-Eval",
                                                  "EAI-Eval, other EAI-Eval tasks"]
    assert "failed" in [t.get_text() for t in f5.axes[0].texts]
    f6 = figures["figure6"]
    assert len(f6.axes) == 2                                # one adaptation per replicate grid
    assert "speed-up vs nd_mlm" in f6.axes[0].texts[0].get_text()
    f8 = figures["figure8"]
    titles = [ax.get_title() for ax in f8.axes if ax.get_title()]
    assert titles == list(reference.task_random("t0"))
    assert all(any(line.get_linestyle() == "--" for line in ax.get_lines())
               for ax in f8.axes if ax.get_title())
    for figure in figures.values():
        plots.plt.close(figure)


def test_figures_render_from_an_empty_frame_without_crashing(tmp_path):
    empty = RunData(pd.DataFrame(columns=["run", "scale", "cell", "suite", "task", "prompt",
                                          "value", "random", "n", "limit"]),
                    pd.DataFrame(), {}, pd.DataFrame(), pd.DataFrame(),
                    pd.DataFrame({"run": ["x"], "scale": ["s"]}))
    entries = pd.DataFrame(columns=["scale", "cell", "suite", "recipe", "point", "status",
                                    "score", "low", "high", "random", "mtf"])
    reps = bootstrap.Replicates(10, 0, {}, {}, {})
    for name, figure in plots.all_figures(empty, reps, entries, "s").items():
        plots.save(figure, tmp_path, name)
        plots.plt.close(figure)
    assert len(list(tmp_path.glob("*.png"))) == len(list(tmp_path.glob("*.pdf"))) == 5


def test_analysis_imports_neither_jax_nor_tensorflow(tmp_path):
    code = ("import sys; from analysis import report, load, plots, tables, bootstrap, fixture; "
            f"fixture.write_fixture_grid({str(tmp_path)!r}); "
            f"report.write_report([{str(tmp_path)!r}], {str(tmp_path / 'out')!r}, replicates=20); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('jax', 'jaxlib', 'tensorflow', 'seqio', 'flax', 'torch', 'lm_eval')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(pytest.importorskip(
        "pathlib").Path(__file__).resolve().parents[1]))
