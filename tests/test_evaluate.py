"""``archobj eval`` (harness/evaluate.py): both suites end to end on the shipped fixtures through the
command line, results in the run directory, and one-line errors before any model is loaded."""

from __future__ import annotations

import json

import jax
import pytest

from harness import cli
from harness.checkpoint import save_model
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
    prompts = t0["datasets"]["copa"]["prompts"]
    assert len(prompts) == 12  # per-prompt scores kept (PAPER.md 3.2: 12 COPA prompts)
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
    import harness.lm_eval_adapter as adapter

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
