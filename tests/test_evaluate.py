"""``archobj eval`` (harness/eval/evaluate.py): both suites end to end on the shipped fixtures through the
command line, results in the run directory, and one-line errors before any model is loaded."""

from __future__ import annotations

import dataclasses
import json

import jax
import pytest

from harness import cli
from harness.storage.checkpoint import save_model
from models.config import preset
from models.transformer import init_params


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("nd_model")
    config = preset("tiny", "nd", vocab_size=384, dtype="float32")
    save_model(directory, config, init_params(config, jax.random.key(0)), step=7)
    return directory


def _eval(*args):
    return cli.main(["eval", *map(str, args)])


def test_both_suites_run_on_the_fixtures_and_write_into_the_run_directory(checkpoint, capsys):
    assert _eval(checkpoint, "--fixtures", "--vocab", "byte", "--tasks", "copa", "--limit",
                 "2") == 0
    out = capsys.readouterr().out
    assert "COPA" in out and "copa" in out  # both summary tables
    step_dir = checkpoint / "eval" / "step_7-fixtures-limit2"  # never a real run's directory
    eai = json.loads((step_dir / "eai.json").read_text())
    t0 = json.loads((step_dir / "t0.json").read_text())
    assert set(eai["results"]) == {"copa"} and eai["archobj"]["step"] == 7
    assert eai["archobj"]["inputs_length"] == 512 and t0["archobj"]["inputs_length"] == 1024
    assert eai["archobj"]["batch_size"] == 8 and eai["archobj"]["length_buckets"][0] == 8
    prompts = t0["datasets"]["copa"]["prompts"]
    assert len(prompts) == 12  # per-prompt scores kept (PAPER.md 3.2: 12 COPA prompts)
    # Per-example scores are written too (analysis/'s bootstrap), and agree with the accuracies.
    for scores in prompts.values():
        assert len(scores["examples"]) == len(scores["correct"]) == scores["num_scored"]
        assert sum(scores["correct"]) == scores["num_correct"]
    copa = eai["per_example"]["copa"]
    assert copa["doc_id"] == [0, 1] and "samples" not in eai
    assert sum(copa["value"]) / 2 == eai["results"]["copa"]["acc,none"]
    summary = json.loads((step_dir / "t0_summary.json").read_text())
    assert summary["step"] == 7 and summary["limit"] == 2 and summary["rows"]

    # A later failing run (data missing) leaves what was written untouched.
    before = (step_dir / "t0.json").read_bytes()
    empty = checkpoint / "no_data"
    empty.mkdir()
    assert _eval(checkpoint, "--suite", "t0", "--data-dir", empty, "--vocab", "byte",
                 "--tasks", "copa", "--out", step_dir) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("archobj: error:") and "\n" not in error and "copa" in error.lower()
    assert (step_dir / "t0.json").read_bytes() == before


@pytest.mark.parametrize("args, needles", [
    (["--tasks", "not_a_task"], ["not_a_task", "valid names", "copa"]),
    (["--suite", "t0", "--tasks", "sciq"], ["sciq", "['t0']"]),  # an EAI task, not T0-Eval's
    (["--step", "3"], ["step 3", "[7]"]),
    (["--data-dir", "/no/such/dir"], ["/no/such/dir", "not a directory"]),
    (["--limit", "0"], ["--limit"]),
])
def test_bad_requests_fail_in_one_line_before_loading(checkpoint, capsys, monkeypatch, args,
                                                      needles):
    import harness.eval.lm_eval_adapter as adapter

    monkeypatch.setattr(adapter, "ArchobjLM", None)  # loading a model would fail loudly
    assert _eval(checkpoint, *args) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error, error
    for needle in needles:
        assert needle in error, (needle, error)


def test_missing_or_empty_checkpoint_is_one_line(tmp_path, capsys):
    assert _eval(tmp_path / "nothing_here", "--fixtures") == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "nothing_here" in error and "does not exist" in error
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model": preset("tiny", "cd").to_dict()}))
    assert _eval(empty, "--fixtures") == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "no saved checkpoints" in error


@pytest.fixture(scope="module")
def bfloat16_model(tmp_path_factory):
    """A bfloat16-compute model saved with its vocabulary, and its float32 twin (same weights)."""
    config = preset("tiny", "cd", vocab_size=384)  # the preset computes in bfloat16
    params = init_params(config, jax.random.key(1))
    directory = tmp_path_factory.mktemp("bf16_model")
    twin = tmp_path_factory.mktemp("f32_model")
    save_model(directory, config, params, vocabulary="byte")
    save_model(twin, dataclasses.replace(config, dtype="float32"), params, vocabulary="byte")
    return directory, twin


def test_a_saved_model_records_its_vocabulary_and_can_be_scored_in_float32(bfloat16_model):
    """Before: save_model recorded no vocabulary, and evaluation always ran in the stored dtype."""
    from harness.storage.checkpoint import read_vocabulary
    from harness.eval.lm_eval_adapter import ArchobjLM

    directory, twin = bfloat16_model
    assert read_vocabulary(directory) == "byte"
    requests = [([5, 70, 80, 90, 100], [110, 120]), ([7, 8], [9, 10, 11])]
    as_stored = ArchobjLM(str(directory), max_inputs_length=16, max_targets_length=8)
    recast = ArchobjLM(str(directory), dtype="float32", max_inputs_length=16,
                       max_targets_length=8)
    reference = ArchobjLM(str(twin), max_inputs_length=16, max_targets_length=8)
    assert (as_stored.scorer.config.dtype, recast.scorer.config.dtype) == ("bfloat16", "float32")
    assert recast.score_tokens(requests) == reference.score_tokens(requests)
    assert as_stored.score_tokens(requests) != recast.score_tokens(requests)
    assert recast.get_model_info()["archobj_dtype"] == "float32"
    with pytest.raises(ValueError, match="dtype='float8'"):
        ArchobjLM(str(directory), dtype="float8")


def test_eval_dtype_override_writes_beside_the_checkpoints_own_results(bfloat16_model, capsys):
    directory, _ = bfloat16_model
    assert _eval(directory, "--fixtures", "--suite", "t0", "--tasks", "copa", "--limit", "1",
                 "--dtype", "float32") == 0  # no --vocab: the model records it
    results = json.loads((directory / "eval" / "step_0-float32-fixtures-limit1" / "t0.json")
                         .read_text())
    assert results["archobj"]["dtype"] == "float32" and results["archobj"]["vocabulary"] == "byte"
    assert not (directory / "eval" / "step_0-fixtures-limit1").exists()
