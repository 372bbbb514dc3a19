"""What a run directory says is true (harness/train/run_record.py, config.check_inputs): a stage resumes
only with its own configuration, a bad path or vocabulary is reported before anything is written or
compiled, and the model's embedding fits the vocabulary. The loop-level behaviour (metrics logged
once after a kill, the resume record) is in tests/test_loop.py."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from harness.train import config as config_lib
from harness.train import run_record
from helpers import assert_one_line_error

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("".join(f"document {i} has a few words in it\n" for i in range(20)))
    return path


def _config(corpus, run_dir, *extra) -> config_lib.RunConfig:
    return config_lib.load_config(None, [
        "name=r", f"run_dir={run_dir}", "model.preset=tiny", "data.objective=flm",
        f"data.source={corpus}", "data.vocabulary=byte", "data.total_length=32",
        "train.batch_size=8", "train.steps=4", *extra])


def _record(config) -> None:
    """A run directory as a stage leaves it after its first steps: config.json and a checkpoint."""
    config_lib.write_resolved(config)
    (pathlib.Path(config.run_dir) / "checkpoints" / "2").mkdir(parents=True)


# -------------------------------------------------------------------------------------------------
# Resume only with the same configuration.
# -------------------------------------------------------------------------------------------------

def test_a_new_directory_is_a_new_run(corpus, tmp_path):
    assert run_record.check_resume(_config(corpus, tmp_path / "new")) is None


def test_same_configuration_resumes_and_resumable_fields_may_change(corpus, tmp_path):
    config = _config(corpus, tmp_path / "run")
    _record(config)
    assert run_record.check_resume(config) == {}
    longer = _config(corpus, tmp_path / "run", "train.steps=10", "train.log_every=1",
                     "checkpoint.every=5", "mesh.data=8")
    assert run_record.check_resume(longer) == {
        "train.steps": [4, 10], "train.log_every": [10, 1], "checkpoint.every": [1000, 5],
        "mesh.data": [-1, 8]}
    assert set(run_record.RESUMABLE) <= set(config_lib.flatten(config_lib.to_dict(config)))


@pytest.mark.parametrize("override,needles", [
    ("optim.learning_rate=0.5", ["optim.learning_rate 1.0 -> 0.5"]),
    ("data.seed=1", ["data.seed 0 -> 1"]),
    ("optim.name=adamw", ['optim.name "adafactor" -> "adamw"']),
    ("model.dropout_rate=0.1", ["model.dropout_rate 0.0 -> 0.1"]),
])
def test_another_configuration_is_refused_and_nothing_is_written(corpus, tmp_path, override,
                                                                 needles):
    config = _config(corpus, tmp_path / "run")
    _record(config)
    before = (tmp_path / "run" / "config.json").read_bytes()
    with pytest.raises(ValueError) as excinfo:
        run_record.check_resume(_config(corpus, tmp_path / "run", override))
    assert_one_line_error(excinfo, str(tmp_path / "run" / "config.json"), "stored -> new",
                          "new run_dir", *needles)
    assert (tmp_path / "run" / "config.json").read_bytes() == before


def test_objective_change_lists_every_differing_field(corpus, tmp_path):
    _record(_config(corpus, tmp_path / "run"))
    other = _config(corpus, tmp_path / "run", "data.objective=mlm", "optim.learning_rate=0.5",
                    "train.steps=8")
    with pytest.raises(ValueError) as excinfo:
        run_record.check_resume(other)
    message = assert_one_line_error(excinfo, 'data.objective "flm" -> "mlm"',
                                    "optim.learning_rate 1.0 -> 0.5")
    assert "train.steps 4" not in message  # resumable: not named as a difference


def test_train_steps_is_fixed_under_the_cosine_schedule(corpus, tmp_path):
    cosine = ("optim.schedule=cosine", "optim.warmup_steps=1")
    _record(_config(corpus, tmp_path / "run", *cosine))
    with pytest.raises(ValueError) as excinfo:
        run_record.check_resume(_config(corpus, tmp_path / "run", *cosine, "train.steps=8"))
    assert_one_line_error(excinfo, "train.steps 4 -> 8")


def test_train_steps_before_the_newest_checkpoint_is_refused(corpus, tmp_path):
    _record(_config(corpus, tmp_path / "run"))
    with pytest.raises(ValueError) as excinfo:
        run_record.check_resume(_config(corpus, tmp_path / "run", "train.steps=1"))
    assert_one_line_error(excinfo, "train.steps=1", "step 2", "train.steps >= 2")


def test_directories_that_hold_no_run_record_are_refused(corpus, tmp_path):
    config = _config(corpus, tmp_path / "model")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps({"model": {}}))
    with pytest.raises(ValueError) as excinfo:
        run_record.check_resume(config)
    assert_one_line_error(excinfo, "no 'run' entry", "new run_dir")
    (tmp_path / "model" / "config.json").write_text("{not json")
    with pytest.raises(ValueError) as excinfo:
        run_record.check_resume(config)
    assert_one_line_error(excinfo, "not valid JSON")
    (tmp_path / "model" / "config.json").unlink()
    (tmp_path / "model" / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(ValueError) as excinfo:
        run_record.check_resume(config)
    assert_one_line_error(excinfo, "metrics.jsonl but no config.json")


def test_drop_metrics_after_keeps_each_step_once(tmp_path):
    lines = [json.dumps({"step": step, "loss": float(step)}) for step in (1, 2, 3, 4, 5)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 6, "lo')  # cut short
    assert run_record.drop_metrics_after(tmp_path, 3) == 3
    assert [r["step"] for r in run_record.read_metrics(tmp_path)] == [1, 2, 3]
    assert run_record.drop_metrics_after(tmp_path, 3) == 0
    assert run_record.drop_metrics_after(tmp_path / "absent", 3) == 0


# -------------------------------------------------------------------------------------------------
# Inputs checked before anything is written or compiled.
# -------------------------------------------------------------------------------------------------

def _bad_inputs(tmp_path, corpus):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"not a sentencepiece model")
    zero = tmp_path / "zero.model"
    zero.write_bytes(b"")
    directory = tmp_path / "nothing"
    directory.mkdir()
    return [
        ([f"data.source={tmp_path / 'absent.txt'}"],
         ["data.source=", "absent.txt", "no such file"]),
        ([f"data.source={empty}"], ["data.source=", "empty.txt", "no documents"]),
        ([f"data.source={directory}"], ["data.source=", "no *.txt or *.jsonl files"]),
        ([f"data.vocabulary={tmp_path / 'absent.model'}"],
         ["data.vocabulary=", "absent.model", "no such file"]),
        ([f"data.vocabulary={zero}"], ["data.vocabulary=", "zero.model", "empty"]),
        ([f"data.vocabulary={garbage}"], ["data.vocabulary=", "not a SentencePiece model"]),
        (["model.vocab_size=256"], ["model.vocab_size=256", "359 ids"]),
        (["model.architecture=nd", "data.objective=mtf", "stage.kind=finetune",
          f"stage.init_from={tmp_path}", f"data.source={tmp_path / 't0'}"],
         ["data.source=", "t0", "does not exist"]),
        (["stage.kind=adapt", f"stage.init_from={tmp_path / 'upstream'}"],
         ["stage.init_from=", "upstream", "does not exist"]),
    ]


def test_check_inputs_names_each_bad_input(corpus, tmp_path):
    for extra, needles in _bad_inputs(tmp_path, corpus):
        config = _config(corpus, tmp_path / "run", *extra)
        with pytest.raises(ValueError) as excinfo:
            config_lib.check_inputs(config)
        assert_one_line_error(excinfo, *needles)
    config_lib.check_inputs(_config(corpus, tmp_path / "run"))  # the good one passes


def test_unreadable_source_is_named(corpus, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    corpus.chmod(0)
    with pytest.raises(ValueError) as excinfo:
        config_lib.check_inputs(_config(corpus, tmp_path / "run"))
    assert_one_line_error(excinfo, "data.source=", "cannot read it")


def test_archobj_train_reports_a_missing_source_at_once_and_writes_nothing(tmp_path):
    """Before: the model was built and about ten XLA programs compiled (about 20 s), and config.json,
    metrics.jsonl and tensorboard/ were left in the new run directory."""
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "harness.cli", "train", "--set", "model.preset=tiny",
               "--set", f"run_dir={run_dir}", "--set", f"data.source={tmp_path / 'absent.txt'}",
               "--set", "data.vocabulary=byte", "--set", "data.total_length=32",
               "--set", "train.batch_size=8"]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("archobj: error: data.source="), result.stderr
    assert not run_dir.exists()
    print(f"archobj train with a missing source: error after {seconds:.2f} s")


def test_data_preview_checks_the_pair_before_tensorflow(tmp_path, corpus):
    code = ("import sys; from harness.cli import main; "
            f"code = main(['data', 'preview', '--arch', 'cd', '--objective', 'plm', "
            f"'--source', {str(corpus)!r}, '--vocab', 'byte']); "
            "print(code, 'tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.stdout.split() == ["2", "False"], result.stdout + result.stderr
    assert "data.objective" in result.stderr or "plm" in result.stderr


# -------------------------------------------------------------------------------------------------
# The model's embedding fits the vocabulary.
# -------------------------------------------------------------------------------------------------

def test_tiny_preset_is_sized_to_the_byte_vocabulary(corpus, tmp_path):
    config = _config(corpus, tmp_path / "run")
    assert config.model.config.vocab_size == 128           # the preset's table
    assert config.model_config().vocab_size == 384          # 359 byte ids, padded to 128
    config_lib.validate(config, 8)
    # Recorded resolved, and read back to the same configuration.
    assert config_lib.to_dict(config)["model"]["vocab_size"] == 384
    stored = config_lib.config_from_dict(config_lib.to_dict(config))
    assert config_lib.to_dict(stored) == config_lib.to_dict(config)
    # A table already large enough is left alone; an explicit size is the user's.
    assert _config(corpus, tmp_path, "model.preset=small").model_config().vocab_size == 32_128
    assert _config(corpus, tmp_path, "model.vocab_size=512").model_config().vocab_size == 512
    # A grid delta re-derives it: tiny with T5's vocabulary gets T5's padded size.
    t5 = config_lib.with_overrides(config, {"data.vocabulary": "t5"})
    assert t5.model_config().vocab_size == 32_128


def test_tiny_preset_is_sized_to_a_sentencepiece_vocabulary(corpus, tmp_path):
    from objectives.vocab import train_sentencepiece

    text = tmp_path / "text.txt"
    text.write_text("".join(f"the quick brown fox {i % 7} jumps over the lazy dog {i % 11}\n"
                            for i in range(200)))
    model = train_sentencepiece([text], 60, tmp_path / "spm.model", model_type="bpe")
    config = _config(corpus, tmp_path / "run", f"data.vocabulary={model}")
    assert config.model_config().vocab_size == 256  # 60 pieces + 100 sentinels, padded
    config_lib.check_inputs(config)
