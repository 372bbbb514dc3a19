"""Grid files and plans (harness/grid/spec.py, plan.py): the paper grid is the study's rows with
its stages shared as the study shared them, identities change exactly where a setting changes, and
a malformed grid file is one line naming the file, the key and the fix."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

import pytest

from harness.grid import plan as plan_lib
from harness.grid.plan import make_plan
from harness.grid.spec import load_grid
from harness.train import config as config_lib
from helpers import assert_one_line_error

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAPER = ROOT / "experiments" / "paper.yaml"


@pytest.fixture(scope="module")
def paper():
    return make_plan(load_grid(PAPER), runs="/runs")


def test_paper_grid_is_the_studys_rows(paper):
    # PAPER.md 1.4: 33 experiment rows in Table 8 (9 at 42B, 12 at 84B, 9 at 168B, 3 at 232B),
    # plus the T5-LM and T0 baselines.
    rows = [cell for cell in paper.cells if cell not in ("t5_lm", "t0")]
    assert len(rows) == 33
    train = [s for s in paper.stages.values() if s.kind == "train"]
    assert sorted(s.name for s in train if s.upstream is None) == sorted(
        ["cd_flm", "cd_mlm", "nd_plm", "nd_mlm", "ed_plm", "ed_mlm"])
    assert all(s.steps == 131_072 for s in train if s.upstream is None)
    # Every stage once: names and identities are unique.
    assert len({s.identity for s in paper.stages.values()}) == len(paper.stages)
    # The study's checkpoint names (PAPER.md 1.3).
    for name in ("cd_flm_131072-nd_mlm_171008-nd_mtf_181008", "ed_mlm_131072-ed_mtf_141072",
                 "cd_flm_131072-cd_flm_171008-cd_mtf_181008", "cd_mlm_30000-cd_flm_32768"):
        assert name in paper.stages
    # 84B without MTF is EAI-Eval only (Table 6); 168B FLM/PLM runs are evaluated on both.
    assert paper.cells["nd_mlm_65536"] == ("nd_mlm", "nd_mlm_65536.eai")
    assert paper.cells["cd_flm_131072"] == ("cd_flm", "cd_flm_131072.eai", "cd_flm_131072.t0")


def test_cd_flm_is_one_run_shared_as_the_study_shared_it(paper):
    downstream = [s for s in paper.stages.values() if s.upstream == "cd_flm"]
    evals = sorted((s.upstream_step, s.suite) for s in downstream if s.kind == "eval")
    assert evals == [(65_536, "eai"), (131_072, "eai"), (131_072, "t0")]
    branches = sorted((s.name, s.upstream_step) for s in downstream if s.kind == "train")
    assert branches == [("cd_flm_131072-cd_flm_171008", 131_072),
                        ("cd_flm_131072-cd_mtf_141072", 131_072),
                        ("cd_flm_131072-nd_mlm_171008", 131_072),
                        ("cd_flm_65536-cd_mtf_75536", 65_536)]
    # The run keeps the checkpoints it is branched from; its last step is always saved.
    assert paper.stages["cd_flm"].config.checkpoint.keep_steps == (65_536,)
    assert paper.stages["cd_mlm"].config.checkpoint.keep_steps == (30_000, 32_768, 65_536)
    # The 219B control carries the optimizer state; MTF starts a fresh one at 1e-3.
    control = paper.stages["cd_flm_131072-cd_flm_171008"].config
    assert control.optim.carry_state and control.train.steps == 39_936
    mtf = paper.stages["cd_flm_131072-cd_flm_171008-nd_mtf_181008"].config
    assert (mtf.model.architecture, mtf.data.objective, mtf.stage.kind) == ("nd", "mtf",
                                                                            "finetune")
    assert mtf.stage.init_from == str(paper.stages["cd_flm_131072-cd_flm_171008"].directory)
    assert mtf.optim.learning_rate == 1e-3 and not mtf.optim.carry_state


def test_every_training_stage_of_every_grid_validates():
    for path in sorted((ROOT / "experiments").glob("*.yaml")):
        plan = make_plan(load_grid(path), runs="/runs")
        for stage in plan.stages.values():
            if stage.config is not None:
                config_lib.validate(stage.config, 8)
            assert stage.directory.name == f"{stage.name}-{stage.identity[:8]}"


def test_paper_compute_adds_up(paper):
    train = [s for s in paper.stages.values() if s.kind == "train"]
    pretraining = sum(s.tokens for s in train if s.upstream is None)
    assert pretraining == 6 * 131_072 * 1_282_048  # 6 x 168B tokens seen (PAPER.md 1.3)
    mtf = [s for s in train if s.config.data.objective == "mtf"]
    assert len(mtf) == 21 and all(s.tokens == 10_000 * 1_310_720 for s in mtf)  # 13B each


def _edited(tmp_path, old, new):
    text = PAPER.read_text()
    assert old in text
    path = tmp_path / "paper.yaml"
    path.write_text(text.replace(old, new))
    return make_plan(load_grid(path), runs="/runs")


def _changed(before, after):
    return {name for name in before.stages
            if before.stages[name].identity != after.stages[name].identity}


def test_an_mtf_setting_replans_only_mtf_stages_and_their_evaluations(paper, tmp_path):
    after = _edited(tmp_path, "model.dropout_rate: 0.1", "model.dropout_rate: 0.05")
    changed = _changed(paper, after)
    mtf = {n for n, s in paper.stages.items() if s.config and s.config.data.objective == "mtf"}
    assert mtf and mtf <= changed
    assert changed == mtf | {n for n, s in paper.stages.items() if s.upstream in mtf}


def test_a_pretraining_change_replans_exactly_what_is_downstream(paper, tmp_path):
    after = _edited(tmp_path, "ed_plm: {train.batch_size: 1024}",
                    "ed_plm: {train.batch_size: 1024}\n  cd_mlm: {data.seed: 7}")
    assert _changed(paper, after) == {"cd_mlm", *paper.downstream_of("cd_mlm")}
    # Output paths, logging and how evaluation rows are grouped and padded are not part of the
    # identity.
    moved = make_plan(load_grid(PAPER, ["base.train.log_every=1", "eval.batch_size=4",
                                        "eval.length_buckets=[32, 128]"]), runs="/elsewhere")
    assert moved.grid.eval.length_buckets == (32, 128)
    assert _changed(paper, moved) == set()


def _grid(tmp_path, text):
    path = tmp_path / "grid.yaml"
    path.write_text(textwrap.dedent(text))
    return path


GOOD = """
grid: t
pretrain: {steps: 10, pairs: [cd_flm, nd_mlm]}
mtf: {steps: 5}
cells:
  - chain: "{pair} > {arch}_mtf"
    for: {pair: all}
"""


@pytest.mark.parametrize("edit,needles", [
    (("grid: t", "grid: t\nepochs: 3"), ["unknown key 'epochs'"]),
    (("pairs: [cd_flm, nd_mlm]", "pairs: [cd_plm]"), ["cd_plm", "['flm', 'mlm']"]),
    (("pairs: [cd_flm, nd_mlm]", "pairs: [xd_flm]"), ["xd_flm", "architecture_objective"]),
    (('"{pair} > {arch}_mtf"', '"cd_flm@20 > cd_mtf"'), ["step 20", "1..10"]),
    (('"{pair} > {arch}_mtf"', '"cd_flm > ed_mtf"'), ["cannot continue a cd checkpoint as ed"]),
    (('"{pair} > {arch}_mtf"', '"cd_flm@5 > nd_mlm:4"'), ["ends before it starts"]),
    (('"{pair} > {arch}_mtf"', '"cd_flm > nd_mlm"'), ["needs its end step"]),
    (('"{pair} > {arch}_mtf"', '"ed_mlm > {arch}_mtf"'), ["'ed_mlm' is neither"]),
    (('"{pair} > {arch}_mtf"', '"{pair} > {obj}_mtf"\n    suites: [mmlu]'), ["suites"]),
    (("mtf: {steps: 5}", "mtf: {steps: 5, set: {train.step: 3}}"), ["mtf.set", "train.step"]),
    (("mtf: {steps: 5}", "mtf: {steps: 5, set: {stage.init_from: x}}"), ["set by the grid"]),
    (("mtf: {steps: 5}", "mtf: {steps: 5}\neval: {length_buckets: 64}"), ["eval.length_buckets"]),
    (("mtf: {steps: 5}", "mtf: {steps: 5}\neval: {length_buckets: [0]}"), ["positive integer"]),
    (("mtf: {steps: 5}", "mtf: {steps: 5}\ncompute: {eval_seconds: 0}"), ["eval_seconds=0", "> 0"]),
    (("mtf: {steps: 5}", "mtf: {steps: 5}\ncompute: {mfu: fast}"), ["compute.mfu='fast'", "number"]),
])
def test_malformed_grid_files_are_one_line(tmp_path, edit, needles):
    path = _grid(tmp_path, GOOD.replace(*edit))
    with pytest.raises(ValueError) as excinfo:
        make_plan(load_grid(path))
    assert_one_line_error(excinfo, str(path), *needles)


RUNNABLE = GOOD.replace("mtf: {steps: 5}", "mtf: {steps: 5, set: {data.source: t0-hf}}")


def test_a_variant_edits_the_grid_and_runs_beside_it(tmp_path):
    path = _grid(tmp_path, RUNNABLE + "variants: {quick: [pretrain.steps=4, mtf.steps=2]}\n")
    full, quick = make_plan(load_grid(path), runs="/r"), make_plan(
        load_grid(path, variant="quick"), runs="/r")
    assert (quick.grid.name, quick.root) == ("t_quick", pathlib.Path("/r/t_quick"))
    assert quick.stages["cd_flm"].steps == 4 and full.stages["cd_flm"].steps == 10
    assert quick.stages["cd_flm_4-cd_mtf_6"].steps == 2
    # --set applies after the variant.
    edited = make_plan(load_grid(path, ["pretrain.steps=6"], variant="quick"), runs="/r")
    assert edited.stages["cd_flm"].steps == 6
    for bad, needle in (("slow", "not a variant of this grid file; it has ['quick']"),):
        with pytest.raises(ValueError) as excinfo:
            load_grid(path, variant=bad)
        assert_one_line_error(excinfo, str(path), needle)


def test_a_replicate_changes_every_training_seed_and_nothing_else(tmp_path):
    path = _grid(tmp_path, RUNNABLE)
    zero, one = make_plan(load_grid(path), runs="/r"), make_plan(load_grid(path, seed=1), runs="/r")
    assert one.root == pathlib.Path("/r/t_seed1") and one.grid.seed == 1
    assert list(zero.stages) == list(one.stages)
    for name, stage in one.stages.items():
        assert stage.identity != zero.stages[name].identity
        if stage.config is not None:
            assert (stage.config.train.seed, stage.config.data.seed) == (1, 1)
            assert zero.stages[name].config.train.seed == 0
            rest = lambda c: {k: v for k, v in config_lib.flatten(config_lib.to_dict(c)).items()
                              if k not in ("train.seed", "data.seed", "run_dir",
                                           "stage.init_from")}
            assert rest(stage.config) == rest(zero.stages[name].config)
    with pytest.raises(ValueError) as excinfo:
        load_grid(path, seed=-1)
    assert_one_line_error(excinfo, "--seed -1")


def test_adaptations_read_the_corpus_in_an_order_of_their_own(tmp_path):
    # A continued run on its pretraining's seed would repeat its first batches exactly, and an
    # adaptation would re-read from the first batch what its upstream trained on.
    cells = ('  - "cd_flm > cd_flm:14+carry > cd_mtf"\n'
             '  - "cd_flm > nd_mlm:14+carry > nd_mtf"\n')
    text = RUNNABLE.replace('  - chain: "{pair} > {arch}_mtf"\n    for: {pair: all}\n', cells)
    offset = plan_lib.ADAPT_DATA_SEED_OFFSET
    for seed in (0, 1):
        plan = make_plan(load_grid(_grid(tmp_path, text), seed=seed), runs="/r")
        data_seed = {n: s.config.data.seed for n, s in plan.stages.items() if s.kind == "train"}
        assert data_seed == {"cd_flm": seed,
                             "cd_flm_10-cd_flm_14": seed + offset,
                             "cd_flm_10-nd_mlm_14": seed + offset,
                             "cd_flm_10-cd_flm_14-cd_mtf_19": seed,  # every MTF: the same mixture
                             "cd_flm_10-nd_mlm_14-nd_mtf_19": seed}
    # A grid file that sets the adaptations' seed decides.
    path = _grid(tmp_path, text + "adapt: {set: {data.seed: 7}}\n")
    plan = make_plan(load_grid(path), runs="/r")
    assert plan.stages["cd_flm_10-cd_flm_14"].config.data.seed == 7
    assert plan.stages["cd_flm"].config.data.seed == 0


def test_planning_imports_no_jax():
    code = ("import sys; from harness.grid.plan import make_plan; from harness.grid.spec import "
            "load_grid; make_plan(load_grid('experiments/paper.yaml')); print(sorted(m for m in "
            "sys.modules if m.split('.')[0] in ('jax', 'tensorflow', 'orbax', 'seqio')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_paper_dry_run_prints_the_plan_with_compute_and_writes_nothing(tmp_path, capsys):
    from harness import cli

    assert cli.main(["grid", str(PAPER), "--dry-run", "--runs", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "paper (the study's" in out and "35 cells, 98 stages" in out
    assert "TPUv4 chip-hours at 40% MFU" in out and "832,896" in out
    assert "cd_flm_131072-nd_mlm_171008-nd_mtf_181008" in out
    assert not (tmp_path / "runs").exists()
