"""The training loop end to end on a tiny model: metrics and checkpoints in the run directory, exact
resume (a stage stopped after a checkpoint and restarted continues with bitwise-identical losses),
CD -> ND adaptation from another run, and a clear error for a parameter tree that does not fit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness import config as config_lib
from harness.checkpoint import load_model
from harness.loop import run

WORDS = "a model reads text and learns to predict the next words of every document".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    path.write_text("\n".join(" ".join(rng.choice(WORDS, size=rng.integers(10, 40)))
                              for _ in range(200)) + "\n")
    return str(path)


def _config(corpus, run_dir, *extra):
    return config_lib.load_config(None, [
        "name=tiny_run", f"run_dir={run_dir}", "model.preset=tiny", "model.architecture=cd",
        "model.vocab_size=384", "model.dtype=float32", "data.objective=flm",
        f"data.source={corpus}", "data.vocabulary=byte", "data.total_length=32",
        "train.batch_size=8", "train.log_every=1", "checkpoint.every=2", "checkpoint.keep=5",
        "checkpoint.async_save=true", *extra])


STEPS = 6


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory):
    """The reference: STEPS steps in one go."""
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    return run(_config(corpus, run_dir, f"train.steps={STEPS}"), progress=False), run_dir


def test_resume_continues_bitwise_and_writes_the_run_directory(corpus, tmp_path, uninterrupted):
    uninterrupted, run_dir = uninterrupted
    assert uninterrupted.first_step == 0 and len(uninterrupted.losses) == 6
    assert uninterrupted.losses[-1] < uninterrupted.losses[0]

    first = run(_config(corpus, tmp_path / "b", "train.steps=4"), progress=False)
    resumed = run(_config(corpus, tmp_path / "b", "train.steps=6"), progress=False)
    assert resumed.first_step == 4
    assert first.losses + resumed.losses == uninterrupted.losses  # bitwise, not approximately

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "z_loss", "accuracy", "grad_norm", "learning_rate", "tokens_seen",
            "tokens_trained", "step_seconds", "tokens_per_second"} <= records[-1].keys()
    assert records[-1]["learning_rate"] == pytest.approx(0.01)  # 1/sqrt(max(n, 10^4))
    assert records[-1]["tokens_seen"] == 6 * 8 * 32  # full rows of packed text
    assert records[-1]["tokens_trained"] == 6 * 8 * 32  # FLM trains on every token it sees
    assert records[2]["tokens_trained"] == 3 * 8 * 32  # cumulative
    document = json.loads((run_dir / "config.json").read_text())
    assert document["run"]["train"]["steps"] == 6 and document["model"]["architecture"] == "cd"


def test_cd_to_nd_adaptation_starts_from_the_other_run(corpus, tmp_path):
    run(_config(corpus, tmp_path / "cd", "train.steps=2"), progress=False)
    _, cd_params = load_model(tmp_path / "cd")
    adapted = run(_config(corpus, tmp_path / "nd", "model.architecture=nd", "data.objective=mlm",
                          "stage.kind=adapt", f"stage.init_from={tmp_path / 'cd'}",
                          "train.steps=2"), progress=False)
    assert adapted.first_step == 0 and np.isfinite(adapted.losses).all()
    nd_config, nd_params = load_model(tmp_path / "nd")
    assert nd_config.architecture == "nd"
    # Same tree, and training moved the parameters on from the cd run's.
    embedding = np.asarray(nd_params["token_embedder"]["embedding"])
    assert embedding.shape == np.asarray(cd_params["token_embedder"]["embedding"]).shape
    assert not np.array_equal(embedding, np.asarray(cd_params["token_embedder"]["embedding"]))


def test_adapting_from_a_tree_that_does_not_fit_fails_clearly(corpus, tmp_path):
    run(_config(corpus, tmp_path / "cd", "train.steps=2"), progress=False)
    config = _config(corpus, tmp_path / "ed", "model.architecture=ed", "data.objective=mlm",
                     "stage.kind=adapt", f"stage.init_from={tmp_path / 'cd'}", "train.steps=2")
    with pytest.raises(ValueError, match=r"stage.init_from=.*does not fit the ed model"):
        run(config, progress=False)


def test_sigkilled_run_resumes_with_identical_losses(corpus, tmp_path, uninterrupted):
    """A real ``archobj train`` process is killed with SIGKILL after its first checkpoint, mid-run;
    the restarted process finishes with losses bitwise equal to an uninterrupted run's."""
    import os
    import signal
    import subprocess
    import sys
    import time

    steps = STEPS
    overrides = [f"--set={o}" for o in (
        "name=tiny_run", f"run_dir={tmp_path / 'killed'}", "model.preset=tiny",
        "model.architecture=cd", "model.vocab_size=384", "model.dtype=float32",
        "data.objective=flm", f"data.source={corpus}", "data.vocabulary=byte",
        "data.total_length=32", "train.batch_size=8", "train.log_every=1", "checkpoint.every=2",
        "checkpoint.keep=5", f"train.steps={steps}")]
    command = [sys.executable, "-m", "harness.cli", "train", *overrides]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 300
    while not (checkpoints / "2").is_dir() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL

    subprocess.run(command, env=env, check=True, capture_output=True)
    logged = {}
    for line in (tmp_path / "killed" / "metrics.jsonl").open():
        record = json.loads(line)
        logged[record["step"]] = record["loss"]  # steps redone after the restart overwrite
    assert [logged[step] for step in range(1, steps + 1)] == uninterrupted[0].losses
