"""Running grids (harness/grid/runner.py, the archobj grid/cell/status commands) on a small grid of
tiny models: shared stages run once, a re-run runs nothing, a failing stage leaves independent
cells to finish and its dependents dep-failed, and status reads the disk alone."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import textwrap
import time

import pytest

from harness import cli
from harness.grid import runner, state, timing
from harness.grid.plan import make_plan
from harness.grid.spec import load_grid
from helpers import write_corpus

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Two pretraining runs; cd_flm is evaluated at its middle step and adapted into nd_mlm, whose
# multitask finetuning is evaluated; nd_mlm is finetuned too. cd_flm feeds three stages.
GRID = """
grid: small_test
architectures:
  cd: {{model.preset: tiny, model.dtype: float32}}
  nd: {{model.preset: tiny, model.dtype: float32}}
base:
  data.source: {corpus}
  data.vocabulary: byte
  data.total_length: 32
  train.batch_size: 8
  train.log_every: 1
  checkpoint.every: 2
  checkpoint.async_save: false
pretrain: {{steps: 4, pairs: [cd_flm, nd_mlm]}}
mtf:
  steps: 2
  set:
    data.objective: mtf
    data.source: {t0}
    data.inputs_length: 40
    data.targets_length: 16
    optim.schedule: constant
    optim.learning_rate: 0.001
eval: {{suites: [t0], tasks: [copa], fixtures: true, limit: 1, length_buckets: [16, 64]}}
cells:
  - "cd_flm@2"
  - "cd_flm > nd_mlm:6+carry > nd_mtf"
  - "nd_mlm > nd_mtf"
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from objectives.t0 import make_fixture

    root = tmp_path_factory.mktemp("grid_inputs")
    corpus = write_corpus(root / "docs.txt")
    make_fixture(root / "t0")
    return corpus, root / "t0"


def _grid_file(directory, inputs, text=GRID):
    corpus, t0 = inputs
    path = directory / "grid.yaml"
    path.write_text(textwrap.dedent(text.format(corpus=corpus, t0=t0)))
    return path


def _events(plan, name, kind):
    return [e for e in state.read_events(plan.stages[name].directory) if e["event"] == kind]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, inputs):
    """The whole grid, run once through the command line."""
    directory = tmp_path_factory.mktemp("grid")
    path = _grid_file(directory, inputs)
    runs = directory / "runs"
    assert cli.main(["grid", str(path), "--runs", str(runs)]) == 0
    return path, runs, make_plan(load_grid(path), runs=runs)


def test_a_grid_runs_every_stage_once_and_shares_its_runs(finished):
    _, runs, plan = finished
    assert set(runner.statuses(plan).values()) == {"done"}
    assert len([s for s in plan.stages.values() if s.kind == "train"]) == 5
    for name in plan.stages:
        assert len(_events(plan, name, "started")) == 1, name
    # The shared pretraining run: one directory, three stages downstream of it.
    cd_flm = plan.stages["cd_flm"]
    assert [p.name for p in runs.joinpath("small_test").glob("cd_flm-*")] == [
        cd_flm.directory.name]
    assert sorted(plan.downstream_of("cd_flm"))[:2] == ["cd_flm_2.t0",
                                                        "cd_flm_4-nd_mlm_6"]
    # Readable names point at the current versions; results, provenance and an index are there.
    assert (runs / "small_test" / "cd_flm").resolve() == cd_flm.directory.resolve()
    results = json.loads((plan.stages["cd_flm_2.t0"].directory / "results" / "t0.json")
                         .read_text())
    assert results["archobj"]["step"] == 2 and results["archobj"]["length_buckets"] == [16, 64]
    provenance = json.loads((cd_flm.directory / "provenance.json").read_text())
    assert provenance["identity_record"]["identity"] == cd_flm.identity
    assert "cd_flm" in (runs / "small_test" / "index.md").read_text()
    # The adaptation carried the optimizer state of step 4; MTF started a fresh one.
    adapted = plan.stages["cd_flm_4-nd_mlm_6"].config
    assert adapted.stage.init_from == str(cd_flm.directory) and adapted.optim.carry_state


def test_a_rerun_runs_nothing(finished, capsys):
    path, runs, plan = finished
    summary = runner.run_plan(plan, report=lambda line: None)
    assert summary.ran == [] and summary.ok
    start = time.perf_counter()
    assert cli.main(["status", str(path), "--runs", str(runs)]) == 0
    print(f"status in {time.perf_counter() - start:.3f} s")
    assert "8 done" in capsys.readouterr().out


def test_the_time_left_starts_from_the_stages_already_done(finished):
    """A re-run after a change (or a later replicate) estimates from this machine's recorded
    stage times, not from the grid file's prior alone."""
    _, _, plan = finished
    timed = {n: runner._cost(s) for n, s in plan.stages.items() if s.kind in ("train", "eval")}
    estimator = timing.Estimator(flops_per_second=1e-3)  # a prior absurdly slow: days per stage
    assert estimator.remaining(timed) > 1e9
    assert runner._learn_from_done(estimator, plan, todo=[]) == len(timed)
    recorded = sum(state.stage_status(plan.stages[n].directory).duration_s for n in timed)
    assert estimator.remaining(timed) == pytest.approx(recorded, rel=0.5)
    # Stages about to run teach nothing, whatever their directories hold.
    assert runner._learn_from_done(timing.Estimator(1e-3), plan, todo=list(timed)) == 0


def test_status_reads_the_disk_and_imports_no_jax(finished):
    path, runs, _ = finished
    code = ("import sys; from harness.cli import main; main(['status', %r, '--runs', %r]); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('jax', 'tensorflow', 'orbax')))" % (str(path), str(runs)))
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, check=True)
    seconds = time.perf_counter() - start
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout
    print(f"archobj status (a new process): {seconds:.2f} s")


def test_a_failing_stage_spares_independent_cells_and_a_fix_runs_only_what_is_missing(
        tmp_path, inputs):
    broken = GRID.replace("pretrain: {{steps: 4", "pairs: {{nd_mlm: {{data.text_field: body}}}}\n"
                          "pretrain: {{steps: 4").replace(
        '  - "cd_flm > nd_mlm:6+carry > nd_mtf"\n', "")  # a smaller grid: two independent cells
    path = _grid_file(tmp_path, inputs, broken)
    corpus = inputs[0]
    jsonl = tmp_path / "docs.jsonl"  # nd_mlm reads a JSONL copy whose field is 'text', not 'body'
    jsonl.write_text("".join(json.dumps({"text": line}) + "\n"
                             for line in corpus.read_text().splitlines()))
    path.write_text(path.read_text().replace(
        "pairs: {nd_mlm: {data.text_field: body}}",
        f"pairs: {{nd_mlm: {{data.text_field: body, data.source: {jsonl}}}}}"))
    runs = tmp_path / "runs"
    assert cli.main(["grid", str(path), "--runs", str(runs)]) == 1
    plan = make_plan(load_grid(path), runs=runs)
    status = runner.statuses(plan)
    assert status["nd_mlm"] == "failed"
    assert status["nd_mlm_4-nd_mtf_6"] == status["nd_mlm_4-nd_mtf_6.t0"] == "dep-failed"
    # ... and the cell that does not depend on them completed.
    assert status["cd_flm"] == status["cd_flm_2.t0"] == "done"
    error = state.stage_status(plan.stages["nd_mlm"].directory).error
    assert "body" in error and "\n" not in error
    assert (plan.stages["nd_mlm"].directory / "error.txt").is_file()

    # Not retried silently; fixed, only what is missing runs, and cd_flm is not trained again.
    assert runner.run_plan(plan, report=lambda line: None).failed == ["nd_mlm"]
    path.write_text(path.read_text().replace("data.text_field: body", "data.text_field: text"))
    fixed = make_plan(load_grid(path), runs=runs)
    summary = runner.run_plan(fixed, report=lambda line: None)
    assert sorted(summary.ran) == sorted(n for n in fixed.stages
                                         if n not in ("cd_flm", "cd_flm_2.t0"))
    assert summary.ok and len(_events(fixed, "cd_flm", "started")) == 1


def test_explain_names_the_changed_field(finished, tmp_path, capsys):
    path, runs, _ = finished
    edited = tmp_path / "grid.yaml"
    edited.write_text(path.read_text().replace("optim.learning_rate: 0.001",
                                               "optim.learning_rate: 0.002"))
    assert cli.main(["grid", str(edited), "--runs", str(runs), "--explain",
                     "nd_mlm_4-nd_mtf_6"]) == 0
    out = capsys.readouterr().out
    assert "config.optim.learning_rate: 0.001 -> 0.002" in out
    assert cli.main(["grid", str(path), "--runs", str(runs), "--explain", "cd_flm"]) == 0
    assert "unchanged" in capsys.readouterr().out


def test_cell_force_reruns_its_own_stages_and_keeps_the_old_run(finished):
    """``archobj cell FILE CELL --force``: the cell's own stages run again, the shared pretraining
    run does not, and the replaced run stays on disk beside the new one."""
    path, runs, plan = finished
    old = plan.stages["cd_flm_2.t0"].directory
    assert cli.main(["cell", str(path), "cd_flm_2", "--runs", str(runs), "--force"]) == 0
    assert len(_events(plan, "cd_flm", "started")) == 1             # shared: not forced
    assert len(_events(plan, "cd_flm_2.t0", "started")) == 1        # a fresh directory
    (aside,) = old.parent.glob(f"{old.name}.replaced-*")
    assert (aside / "results" / "t0.json").is_file()
    assert runner.statuses(plan)["cd_flm_2.t0"] == "done"


@pytest.mark.slow
def test_a_runner_killed_mid_grid_completes_without_training_a_stage_twice(tmp_path, inputs):
    """SIGKILL the runner while it trains; re-run: the interrupted stage resumes from its
    checkpoint, finished stages are not run again, and every loss equals an uninterrupted grid's."""
    import signal

    text = GRID.replace("pretrain: {{steps: 4", "pretrain: {{steps: 12").replace(
        '  - "cd_flm@2"\n  - "cd_flm > nd_mlm:6+carry > nd_mtf"\n', "")
    path = _grid_file(tmp_path, inputs, text)
    reference = make_plan(load_grid(path), runs=tmp_path / "reference")
    assert runner.run_plan(reference, report=lambda line: None).ok

    runs = tmp_path / "runs"
    command = [sys.executable, "-m", "harness.cli", "grid", str(path), "--runs", str(runs)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    plan = make_plan(load_grid(path), runs=runs)
    target = plan.stages["nd_mlm"].directory / "checkpoints" / "2"
    deadline = time.time() + 600
    while not target.is_dir() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the grid finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert runner.statuses(plan)["nd_mlm"] == "interrupted"

    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    assert set(runner.statuses(plan).values()) == {"done"}
    for name, stage in plan.stages.items():
        assert len(_events(plan, name, "finished")) == 1, name
        assert len(_events(plan, name, "started")) == (2 if name == "nd_mlm" else 1), name
        if stage.kind == "train":
            losses = [r["loss"] for r in _metrics(stage.directory)]
            assert losses == [r["loss"] for r in _metrics(reference.stages[name].directory)], name


def _metrics(directory):
    return [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
