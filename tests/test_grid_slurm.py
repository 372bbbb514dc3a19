"""The grid's SLURM executor (harness/grid/slurm.py) without a cluster: the batch scripts submitit
writes for a small grid (through a fake ``sbatch`` on PATH that keeps them and answers job ids),
reconciliation against a fake ``sacct``, the grid file's ``slurm:`` section, and the job wrapper
forwarding USR2 to its stage and submitit requeueing it."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import stat
import sys
import textwrap
import time

import pytest

from harness import cli
from harness.grid import slurm, state
from harness.grid.plan import make_plan
from harness.grid.spec import load_grid

ROOT = pathlib.Path(__file__).resolve().parents[1]

GRID = """
grid: slurm_test
architectures:
  cd: {model.preset: tiny}
  nd: {model.preset: tiny}
base: {data.source: corpus.txt, data.vocabulary: byte, data.total_length: 32,
       train.batch_size: 8}
pretrain: {steps: 4, pairs: [cd_flm, nd_mlm]}
mtf: {steps: 2, set: {data.objective: mtf, data.source: t0}}
eval: {suites: [t0], tasks: [copa], fixtures: true, limit: 1}
cells:
  - "cd_flm > nd_mlm:6+carry > nd_mtf"
  - "nd_mlm@2"
slurm:
  train: {nodes: 2, gpus_per_node: 8, timeout_min: 2880, partition: gpu, signal_delay_s: 150,
          setup: ["source /shared/venv/bin/activate"]}
  eval: {nodes: 1, gpus_per_node: 1, timeout_min: 60, account: proj,
         additional_parameters: {exclusive: true}}
  nd_mlm: {nodes: 4}
"""

FAKE_SBATCH = """#!/bin/bash
# Keeps the script and answers as sbatch does, with job ids 1001, 1002, ...
n=$(ls {captured} | wc -l)
id=$((1001 + n))
cp "$1" {captured}/$id.sh
echo "Submitted batch job $id"
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """``sbatch`` and ``srun`` on PATH; returns the folder of submitted scripts."""
    captured = tmp_path / "sbatch"
    captured.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH.format(captured=captured)),
                       ("srun", "#!/bin/bash\nexit 0\n")):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return captured


def _plan(tmp_path, text=GRID):
    path = tmp_path / "grid.yaml"
    path.write_text(textwrap.dedent(text))
    return path, make_plan(load_grid(path), runs=tmp_path / "runs")


def _submit(tmp_path, plan, path, names=None):
    lines: list[str] = []
    jobs = slurm.submit(plan, list(plan.stages) if names is None else names, grid_file=path,
                        runs=str(tmp_path / "runs"), overrides=["mtf.steps=2"],
                        report=lines.append)
    return jobs, lines


def test_submit_writes_chained_batch_scripts(tmp_path, fake_slurm, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path, plan = _plan(tmp_path)
    jobs, _ = _submit(tmp_path, plan, path)
    assert list(jobs) == list(plan.stages)                      # plan order, one job each
    assert sorted(jobs.values()) == [str(1001 + i) for i in range(len(plan.stages))]
    for name, job in jobs.items():
        stage = plan.stages[name]
        script = (fake_slurm / f"{job}.sh").read_text()
        assert state.stage_status(stage.directory).job_id == job
        assert state.read_events(stage.directory)[-1]["event"] == "submitted"
        assert f"#SBATCH --job-name={name}\n" in script
        upstream = stage.upstream
        if upstream is None:
            assert "--dependency" not in script
        else:
            assert f"#SBATCH --dependency=afterok:{jobs[upstream]}\n" in script
        command = re.search(r"^# archobj stage: (.*)$", script, re.M).group(1)
        assert command.endswith(f"--stage {name}") and " grid " in command
        assert f"--runs {tmp_path / 'runs'} --set mtf.steps=2" in command
        assert f"--output={stage.directory / 'slurm'}" in script
        assert "srun --unbuffered" in script and "submitit.core._submit" in script
        # the pickled job runs exactly that command
        pickled = list((stage.directory / "slurm").glob("*_submitted.pkl"))
        assert len(pickled) == 1
    train = (fake_slurm / f"{jobs['cd_flm']}.sh").read_text()
    print(train)
    for line in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=8", "#SBATCH --time=2880",
                 "#SBATCH --partition=gpu", "#SBATCH --signal=USR2@150",
                 "#SBATCH --ntasks-per-node=1", "source /shared/venv/bin/activate"):
        assert line + "\n" in train, line
    assert "#SBATCH --nodes=4\n" in (fake_slurm / f"{jobs['nd_mlm']}.sh").read_text()  # pair
    evaluation = next(n for n in plan.stages if plan.stages[n].kind == "eval")
    text = (fake_slurm / f"{jobs[evaluation]}.sh").read_text()
    for line in ("#SBATCH --gpus-per-node=1", "#SBATCH --time=60", "#SBATCH --account=proj",
                 "#SBATCH --exclusive", "#SBATCH --signal=USR2@120"):
        assert line + "\n" in text, line


def test_submit_again_reuses_outstanding_jobs_and_skips_done(tmp_path, fake_slurm, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path, plan = _plan(tmp_path)
    first, _ = _submit(tmp_path, plan, path, names=["cd_flm"])
    assert first == {"cd_flm": "1001"}
    downstream = plan.downstream_of("cd_flm")
    second, lines = _submit(tmp_path, plan, path, names=["cd_flm", *downstream])
    assert "cd_flm" not in second and "cd_flm: already submitted as job 1001" in lines
    child = downstream[0]
    assert "--dependency=afterok:1001\n" in (fake_slurm / f"{second[child]}.sh").read_text()
    # a done upstream needs no dependency
    for name in ("nd_mlm",):
        state.mark_started(plan.stages[name].directory)
        state.mark_finished(plan.stages[name].directory)
    third, _ = _submit(tmp_path, plan, path, names=["nd_mlm", "nd_mlm_2.t0"])
    assert list(third) == ["nd_mlm_2.t0"]
    assert "--dependency" not in (fake_slurm / f"{third['nd_mlm_2.t0']}.sh").read_text()


def test_submit_refuses_an_upstream_running_without_a_job(tmp_path, fake_slurm, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path, plan = _plan(tmp_path)
    with state.StageLock(plan.stages["cd_flm"].directory):   # a local runner holds it
        with pytest.raises(ValueError, match=r"upstream cd_flm is running without a SLURM job"):
            _submit(tmp_path, plan, path, names=["cd_flm", plan.downstream_of("cd_flm")[0]])
    assert not list(fake_slurm.iterdir())                    # nothing was submitted


def test_reconcile_fails_dead_job_and_cancels_below(tmp_path, fake_slurm, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path, plan = _plan(tmp_path)
    jobs, _ = _submit(tmp_path, plan, path)
    state.mark_started(plan.stages["cd_flm"].directory)     # the job started, then died
    queried: list[list[str]] = []
    cancelled: list[list[str]] = []

    def fake_states(ids):
        queried.append(list(ids))
        return {jobs["cd_flm"]: "FAILED", **{j: "PENDING" for n, j in jobs.items()
                                              if n != "cd_flm"}}

    monkeypatch.setattr(slurm, "job_states", fake_states)
    monkeypatch.setattr(slurm, "cancel", lambda ids: cancelled.append(list(ids)))
    lines: list[str] = []
    changed = slurm.reconcile(plan, report=lines.append)
    below = plan.downstream_of("cd_flm")
    assert changed == {"cd_flm": "failed", **{n: "cancelled" for n in below}}
    assert cancelled == [[jobs[n] for n in below]]
    status = state.stage_status(plan.stages["cd_flm"].directory)
    assert status.state == "failed" and f"SLURM job {jobs['cd_flm']} ended FAILED" in status.error
    from harness.grid import runner
    current = runner.statuses(plan)
    assert all(current[n] == "dep-failed" for n in below)
    assert current["nd_mlm"] == "pending"                    # independent: untouched
    assert slurm.reconcile(plan, report=lines.append) == {}  # settled: nothing more to do
    assert len(cancelled) == 1


def test_reconcile_without_sacct_says_so_once(tmp_path, fake_slurm, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path, plan = _plan(tmp_path)
    _submit(tmp_path, plan, path)
    monkeypatch.setattr(slurm.shutil, "which", lambda name: None)
    lines: list[str] = []
    assert slurm.reconcile(plan, report=lines.append) == {}
    assert len(lines) == 1 and "SLURM cannot be queried" in lines[0]


def test_reconcile_without_jobs_queries_nothing(tmp_path, monkeypatch):
    _, plan = _plan(tmp_path)
    monkeypatch.setattr(slurm, "job_states", lambda ids: pytest.fail("queried SLURM"))
    assert slurm.reconcile(plan, report=lambda line: pytest.fail(line)) == {}


def test_job_states_parses_sacct(tmp_path, monkeypatch):
    fake = tmp_path / "sacct"
    fake.write_text("#!/bin/bash\nprintf '12|FAILED\\n13|CANCELLED by 42\\n14|RUNNING\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert slurm.job_states(["12", "13", "14"]) == {"12": "FAILED", "13": "CANCELLED",
                                                    "14": "RUNNING"}


def test_slurm_section_checked(tmp_path):
    path, plan = _plan(tmp_path)
    assert plan.grid.slurm["train"]["nodes"] == 2 and plan.grid.slurm["nd_mlm"] == {"nodes": 4}
    assert slurm.resources(plan, "nd_mlm")["nodes"] == 4
    assert slurm.resources(plan, "cd_flm")["nodes"] == 2
    for bad, message in (("  train: {nodez: 2}", r"slurm\.train\.nodez: unknown key"),
                         ("  gpu: {nodes: 2}", r"slurm\.gpu: unknown section"),
                         ("  eval: {timeout_min: -5}", r"slurm\.eval\.timeout_min=-5: must be"),
                         ("  eval: {partition: 3}", r"slurm\.eval\.partition=3: must be a str")):
        text = GRID.split("slurm:\n")[0] + "slurm:\n" + bad + "\n"
        bad_path = tmp_path / "bad.yaml"
        bad_path.write_text(textwrap.dedent(text))
        with pytest.raises(ValueError, match=message) as error:
            load_grid(bad_path)
        assert "\n" not in str(error.value) and str(bad_path) in str(error.value)
    for name in ("paper", "small", "tiny"):
        load_grid(ROOT / "experiments" / f"{name}.yaml")


def test_cli_submits_and_status_reconciles(tmp_path, fake_slurm, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path, plan = _plan(tmp_path)
    arguments = [str(path), "--runs", str(tmp_path / "runs")]
    assert cli.main(["grid", *arguments, "--executor", "slurm", "--only", "nd_mlm_2"]) == 0
    out = capsys.readouterr().out
    assert "nd_mlm: job 1001" in out and "nd_mlm_2.t0: job 1002 after afterok:1001" in out
    monkeypatch.setattr(slurm, "job_states", lambda ids: {"1001": "TIMEOUT"})
    monkeypatch.setattr(slurm, "cancel", lambda ids: None)
    assert cli.main(["status", *arguments]) == 0
    out = capsys.readouterr().out
    assert "SLURM job 1001 ended TIMEOUT" in out
    assert state.stage_status(plan.stages["nd_mlm"].directory).state == "failed"


# ------------------------------------------------------------------ the job wrapper, locally

CHILD = """
import signal, sys, time
got = []
signal.signal(signal.SIGUSR2, lambda n, f: got.append(n))
open(sys.argv[1], "w").write("ready")
while not got:
    time.sleep(0.05)
time.sleep(0.5)                       # "saving"
open(sys.argv[1], "w").write(f"saved after {len(got)} signal(s)")
sys.exit(75)
"""


def test_stage_job_forwards_usr2_and_checkpoint_waits(tmp_path):
    """The wrapper forwards USR2 to its child, then hands over to the previous handler
    (submitit's), whose checkpoint() call returns only once the child has saved and exited."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    marker = tmp_path / "marker"
    job = slurm.StageJob([sys.executable, str(script), str(marker)], str(tmp_path), grace_s=30)
    seen: dict[str, object] = {}

    class Requeued(BaseException):
        pass

    def submitit_handler(signum, frame):     # what submitit's USR2 handler does on task 0
        delayed = job.checkpoint()
        seen["marker"] = marker.read_text()
        seen["delayed"] = delayed
        raise Requeued                         # submitit exits here (sys.exit(-1))

    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        import threading

        def send():
            while not marker.exists():
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGUSR2)

        threading.Thread(target=send, daemon=True).start()
        with pytest.raises(Requeued):
            job()
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert seen["marker"] == "saved after 1 signal(s)" and job._returncode == 75
    resubmitted = seen["delayed"].function
    assert isinstance(resubmitted, slurm.StageJob) and resubmitted.command == job.command
    import cloudpickle
    assert cloudpickle.loads(cloudpickle.dumps(resubmitted)).command == job.command


def test_stage_job_raises_on_failure(tmp_path):
    job = slurm.StageJob([sys.executable, "-c", "raise SystemExit(1)"], str(tmp_path), grace_s=1)
    with pytest.raises(RuntimeError, match="exited with status 1"):
        job()
    assert slurm.StageJob([sys.executable, "-c", "pass"], str(tmp_path), grace_s=1)() == 0
