"""The training loop end to end on a tiny model: metrics and checkpoints in the run directory, exact
resume (a stage stopped after a checkpoint and restarted continues with bitwise-identical losses),
CD -> ND adaptation from another run, and a clear error for a parameter tree that does not fit."""

from __future__ import annotations

import json
import logging

import jax
import numpy as np
import pytest

from harness.train import config as config_lib
from harness.storage.checkpoint import load_model
from harness.train.loop import run
from helpers import assert_one_line_error, write_corpus



@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return str(write_corpus(tmp_path_factory.mktemp("corpus") / "docs.txt"))


def _config(corpus, run_dir, *extra):
    return config_lib.load_config(None, [
        "name=tiny_run", f"run_dir={run_dir}", "model.preset=tiny", "model.architecture=cd",
        "model.dtype=float32", "data.objective=flm",
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


def test_stages_with_the_same_step_share_its_jitted_function(corpus, tmp_path):
    """A second stage whose model, optimizer, training settings and mesh equal the first's (a
    grid's MTF stages of one architecture) steps with the first's jitted function, and trains
    exactly as the first did; a stage that differs in one of them gets its own. As in a grid, the
    stages share their data stream too (``shared_streams``): the later ones read it from memory."""
    from harness.train import loop
    from harness.train.data import shared_streams

    loop._STEPS.clear()
    with shared_streams():
        first = run(_config(corpus, tmp_path / "first", "train.steps=3"), progress=False)
        shared = next(iter(loop._STEPS.values()))
        second = run(_config(corpus, tmp_path / "second", "train.steps=3"), progress=False)
        assert list(loop._STEPS.values()) == [shared]
        assert first.losses == second.losses  # bitwise
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    made = []
    for extra in ([], ["optim.learning_rate=0.5"], ["train.z_loss=0.0"], ["model.dropout_rate=0.1"],
                  []):
        loop._jitted_step(_config(corpus, tmp_path / "x", "train.steps=3", *extra), mesh,
                          lambda: made.append(1) or len(made))
    assert len(made) == 4  # each change its own step; the repeat of the first reuses it


def test_cd_to_nd_adaptation_starts_from_the_other_run(corpus, tmp_path, uninterrupted):
    upstream = uninterrupted[1]
    _, cd_params = load_model(upstream)
    # NC-A as the study ran it: the rsqrt decay continues from the upstream step (here 40,000,
    # where 1/sqrt(40,000) = 0.005) instead of restarting at its flat 0.01.
    adapted = run(_config(corpus, tmp_path / "nd", "model.architecture=nd", "data.objective=mlm",
                          "stage.kind=adapt", f"stage.init_from={upstream}",
                          "optim.schedule_offset=40000", "train.steps=2"), progress=False)
    assert adapted.first_step == 0 and np.isfinite(adapted.losses).all()
    nd_config, nd_params = load_model(tmp_path / "nd")
    assert nd_config.architecture == "nd"
    # Same tree, and training moved the parameters on from the cd run's.
    embedding = np.asarray(nd_params["token_embedder"]["embedding"])
    assert embedding.shape == np.asarray(cd_params["token_embedder"]["embedding"]).shape
    assert not np.array_equal(embedding, np.asarray(cd_params["token_embedder"]["embedding"]))
    records = [json.loads(line) for line in (tmp_path / "nd" / "metrics.jsonl").open()]
    assert records[0]["learning_rate"] == pytest.approx(0.005)
    # The upstream run's config.json is untouched (still cd).
    assert json.loads((upstream / "config.json").read_text())["model"]["architecture"] == "cd"


def test_carried_optimizer_state_continues_the_step_count(corpus, tmp_path, uninterrupted):
    upstream = uninterrupted[1]
    run(_config(corpus, tmp_path / "carried", "stage.kind=adapt", f"stage.init_from={upstream}",
                "optim.carry_state=true", "train.steps=2"), progress=False)
    assert _meta(tmp_path / "carried", 2)["state_step"] == STEPS + 2
    fresh = _config(corpus, tmp_path / "fresh", "stage.kind=adapt", f"stage.init_from={upstream}",
                    "train.steps=2")
    assert fresh.optim.carry_state is False  # fresh by default (the rule)


def _meta(run_dir, step):
    from harness.train.train_checkpoint import META_ITEM
    (path,) = [p for p in (run_dir / "checkpoints" / str(step) / META_ITEM).iterdir()
               if p.suffix in ("", ".json") and not p.name.startswith("_")]
    return json.loads(path.read_text())


def test_adapting_from_a_tree_that_does_not_fit_fails_clearly(corpus, tmp_path, uninterrupted):
    config = _config(corpus, tmp_path / "ed", "model.architecture=ed", "data.objective=mlm",
                     "stage.kind=adapt", f"stage.init_from={uninterrupted[1]}", "train.steps=2")
    with pytest.raises(ValueError, match=r"stage.init_from=.*does not fit the ed model"):
        run(config, progress=False)


@pytest.fixture(scope="module")
def t0_fixture(tmp_path_factory):
    from objectives.t0 import make_fixture
    directory = tmp_path_factory.mktemp("t0")
    make_fixture(directory)
    return str(directory)


MTF_LENGTHS = ("data.inputs_length=40", "data.targets_length=16")


def test_finetune_stage_trains_on_the_t0_mixture(corpus, tmp_path, uninterrupted, t0_fixture):
    """The study's MTF recipe (PAPER.md 2.1, 3.3): constant 1e-3, dropout 0.1, from a checkpoint;
    here the "CD:FLM + ND:MTF" control: a cd run finetuned as nd."""
    config = _config(corpus, tmp_path / "mtf", "model.architecture=nd", "model.dropout_rate=0.1",
                     "data.objective=mtf", f"data.source={t0_fixture}", *MTF_LENGTHS,
                     "stage.kind=finetune", f"stage.init_from={uninterrupted[1]}",
                     "optim.schedule=constant", "optim.learning_rate=1e-3", "train.steps=2")
    result = run(config, progress=False)
    assert np.isfinite(result.losses).all() and len(result.losses) == 2
    records = [json.loads(line) for line in (tmp_path / "mtf" / "metrics.jsonl").open()]
    assert [r["learning_rate"] for r in records] == pytest.approx([1e-3, 1e-3])
    # Loss on the targets only: fewer tokens trained on than seen.
    assert 0 < records[-1]["tokens_trained"] < records[-1]["tokens_seen"]


@pytest.mark.parametrize("arch", ["nd", "ed"])
def test_mtf_batches_use_the_architectures_converter(t0_fixture, arch, caplog):
    from harness.train.data import mtf_batches

    caplog.set_level(logging.WARNING)

    def stream(**kwargs):
        return mtf_batches(arch, t0_fixture, "byte", 4, inputs_length=40, targets_length=16,
                           **kwargs)

    batches = stream()
    first, second = next(batches), next(batches)
    # Deterministic, and resuming at step 1 gives exactly the second batch.
    resumed = next(stream(start_step=1))
    for name in second:
        np.testing.assert_array_equal(resumed[name], second[name], err_msg=name)
    if arch == "ed":
        assert first["encoder_input_tokens"].shape == (4, 40)
        assert first["decoder_target_tokens"].shape == (4, 16)
        assert "decoder_causal_attention" not in first
    else:
        assert first["decoder_target_tokens"].shape == (4, 56)
        # Inputs + 1 positions are bidirectional, the loss covers the targets (ending in EOS):
        # per packed example they share exactly one position, the first target.
        prefix = first["decoder_causal_attention"].astype(bool)
        weights = first["decoder_loss_weights"].astype(bool)
        segments = sum(len(set(row[row > 0])) for row in first["decoder_segment_ids"])
        assert (prefix & weights).sum() == segments > 0
        assert (first["decoder_target_tokens"][weights] == 1).sum() == segments
    assert set(np.unique(first["decoder_loss_weights"])) <= {0, 1}
    # seqio's advice to cache generator-backed tasks (one line per task and build) is not shown:
    # restarts restore the shuffle buffers (harness/train/data.py).
    assert not [r for r in caplog.records if "uncached" in r.getMessage()]


def test_sigkilled_run_resumes_with_identical_losses_and_logs_each_step_once(corpus, tmp_path,
                                                                            uninterrupted):
    """A real ``archobj train`` process is killed with SIGKILL after it has logged steps past its
    newest checkpoint; the restarted stage drops those records, trains the steps again, and
    finishes with every step logged exactly once (metrics.jsonl and TensorBoard), with losses
    bitwise equal to an uninterrupted run's."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from harness.train import run_record

    steps, run_dir = 12, tmp_path / "killed"
    overrides = [f"--set={o}" for o in (
        "name=tiny_run", f"run_dir={run_dir}", "model.preset=tiny",
        "model.architecture=cd", "model.dtype=float32",
        "data.objective=flm", f"data.source={corpus}", "data.vocabulary=byte",
        "data.total_length=32", "train.batch_size=8", "train.log_every=1", "checkpoint.every=4",
        "checkpoint.keep=5", f"train.steps={steps}")]
    command = [sys.executable, "-m", "harness.cli", "train", *overrides]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 300

    def logged_past_first_checkpoint() -> bool:  # step 5 is logged after checkpoint 4 started
        return metrics.is_file() and '"step": 5,' in metrics.read_text()

    while not logged_past_first_checkpoint() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    before = [r["step"] for r in run_record.read_metrics(run_dir)]
    newest = max(run_record.committed_steps(run_dir), default=0)
    assert max(before) > newest, (before, newest)  # logged beyond the last checkpoint

    # The restart (in this process: the same config, so the run directory accepts it).
    run(_config(corpus, run_dir, "checkpoint.every=4", f"train.steps={steps}"), progress=False)
    records = run_record.read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    # The uninterrupted reference ran 6 steps; the schedule does not depend on train.steps.
    assert [r["loss"] for r in records[:STEPS]] == uninterrupted[0].losses
    (resume,) = json.loads((run_dir / "config.json").read_text())["resumes"]
    assert resume["changed"] == {} and resume["step"] <= newest
    assert resume["metrics_dropped"] == sum(step > resume["step"] for step in before)
    assert _tensorboard_steps(run_dir, "loss") == list(range(1, steps + 1))


def _tensorboard_steps(run_dir, tag):
    """The steps TensorBoard shows for ``tag`` (it honours the resumed writer's purge step)."""
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"),
                                                     purge_orphaned_data=True)
    accumulator.Reload()
    return [event.step for event in accumulator.Scalars(tag)]


def test_resume_after_a_lost_checkpoint_logs_each_step_once_and_records_the_restart(
        corpus, tmp_path, uninterrupted):
    """Deterministic twin of the SIGKILL test: the newest checkpoint is gone (the stop came before
    it was committed), so steps 5 and 6 were logged but must be trained and logged again."""
    import shutil

    run_dir = tmp_path / "lost"
    config = _config(corpus, run_dir, f"train.steps={STEPS}", "checkpoint.every=4")
    run(config, progress=False)
    shutil.rmtree(run_dir / "checkpoints" / str(STEPS))
    resumed = run(config, progress=False)
    assert resumed.first_step == 4
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in records] == uninterrupted[0].losses
    document = json.loads((run_dir / "config.json").read_text())
    (resume,) = document["resumes"]
    assert (resume["step"], resume["changed"], resume["metrics_dropped"]) == (4, {}, 2)

    # Re-running the finished stage trains nothing and writes nothing.
    snapshot = {p: p.read_bytes() for p in (run_dir / "config.json", run_dir / "metrics.jsonl")}
    again = run(config, progress=False)
    assert (again.first_step, again.last_step, again.losses) == (STEPS, STEPS, [])
    assert {p: p.read_bytes() for p in snapshot} == snapshot

    # Extending it is a resume with a recorded change; the original steps keep their records.
    longer = run(_config(corpus, run_dir, f"train.steps={STEPS + 2}", "checkpoint.every=4"),
                 progress=False)
    assert longer.first_step == STEPS and len(longer.losses) == 2
    document = json.loads((run_dir / "config.json").read_text())
    assert document["run"]["train"]["steps"] == STEPS + 2
    assert document["resumes"][-1]["changed"] == {
        "train.steps": {"stored": STEPS, "new": STEPS + 2}}
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").open()]
    assert steps == list(range(1, STEPS + 3))


def test_rerun_with_another_configuration_is_refused_and_changes_nothing(corpus, tmp_path,
                                                                         uninterrupted):
    """Before: config.json was rewritten to the new values and the old checkpoint trained on under
    them, exit 0."""
    run_dir = uninterrupted[1]
    snapshot = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    changed = _config(corpus, run_dir, f"train.steps={STEPS}", "optim.learning_rate=0.5",
                      "data.seed=3")
    with pytest.raises(ValueError) as excinfo:
        run(changed, progress=False)
    assert_one_line_error(excinfo, "optim.learning_rate 1.0 -> 0.5", "data.seed 0 -> 3",
                          "new run_dir")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == snapshot


def test_a_training_run_is_evaluated_with_its_own_vocabulary(uninterrupted):
    """Before: ``archobj eval RUN`` failed with "no data.vocabulary" unless --vocab was given."""
    from harness.eval.lm_eval_adapter import ArchobjLM

    lm = ArchobjLM(str(uninterrupted[1]), max_inputs_length=16, max_targets_length=8)
    assert lm.vocabulary == "byte"
    (score, _), = lm.score_tokens([(lm.tok_encode("a model"), lm.tok_encode(" reads"))])
    assert score < 0


def test_a_signal_saves_where_the_stage_is_and_the_restart_resumes_there(corpus, tmp_path,
                                                                         uninterrupted):
    """SLURM's SIGUSR2 (or a plain SIGTERM) before preemption: the stage saves the step it reached,
    off the checkpoint.every grid, exits with status 75, and a restart resumes there exactly."""
    import signal
    import subprocess
    import sys
    import time

    from harness.train import run_record as record

    run_dir = tmp_path / "stopped"
    overrides = [f"--set={o}" for o in (
        "name=tiny_run", f"run_dir={run_dir}", "model.preset=tiny", "model.architecture=cd",
        "model.dtype=float32", "data.objective=flm", f"data.source={corpus}",
        "data.vocabulary=byte", "data.total_length=32", "train.batch_size=8",
        "train.log_every=1", "checkpoint.every=1000", "train.steps=100000")]
    command = [sys.executable, "-m", "harness.cli", "train", *overrides]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.time() + 300
    while len(record.read_metrics(run_dir)) < 3 and process.poll() is None \
            and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGUSR2)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == record.PREEMPTED_EXIT_STATUS, stderr[-2000:]
    assert "stopped by SIGUSR2 after saving step" in stderr.strip().splitlines()[-1]
    (step,) = record.committed_steps(run_dir)
    assert step >= 3 and [r["step"] for r in record.read_metrics(run_dir)] == list(
        range(1, step + 1))

    # Resume (train.steps may change on resume) and compare with the uninterrupted run.
    resumed = run(_config(corpus, run_dir, f"train.steps={max(step, STEPS) + 1}",
                          "checkpoint.every=1000"), progress=False)
    assert resumed.first_step == step
    losses = [r["loss"] for r in record.read_metrics(run_dir)]
    assert losses[:STEPS] == uninterrupted[0].losses
