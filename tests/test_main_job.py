"""The main job end to end (experiments/tiny.yaml, `make run`): a reduced tiny grid (two cells,
a few steps, the test-sized world) runs through the real command, world generation, training,
multitask finetuning, both evaluation suites and the report, and says where its time went."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ROOT / "experiments" / "tiny.yaml"

# Two cells, 6 + 2 steps, the test-sized world, a few tasks of each suite (one prompt each for
# T0-Eval): every code path of the main job, in about two minutes.
REDUCED = ["--variant", "quick", "--set", "world.size=test", "--set", "pretrain.steps=6",
           "--set", "mtf.steps=2", "--set", "eval.limit=6", "--set", "eval.max_prompts=1",
           "--set", "eval.tasks=[copa, hellaswag, rte, wic, lambada_openai, boolq]",
           "--set", "base.train.batch_size=8", "--set", "mtf.set.train.batch_size=8",
           "--only", r"^(cd_flm_6|cd_flm_6-cd_mtf_8)$"]


def test_reduced_tiny_grid_runs_end_to_end_and_reports(tmp_path):
    runs = tmp_path / "runs"
    command = [sys.executable, "-m", "harness.cli", "grid", str(TINY), "--runs", str(runs),
               "--report", *REDUCED]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout

    # The world was written once, under the runs root, and every stage read it.
    world = runs / "worlds"
    (world_dir,) = world.iterdir()
    assert json.loads((world_dir / "world.json").read_text())["seed"] == 0
    grid = runs / "tiny_quick"
    config = json.loads((grid / "cd_flm" / "config.json").read_text())["run"]
    assert config["data"]["source"] == str(world_dir / "corpus.txt")
    assert config["data"]["vocabulary"] == str(world_dir / "spiece.model")

    # Every stage of the two cells ran, each line with the time elapsed and left.
    stages = ["cd_flm", "cd_flm_6.eai", "cd_flm_6.t0", "cd_flm_6-cd_mtf_8",
              "cd_flm_6-cd_mtf_8.eai", "cd_flm_6-cd_mtf_8.t0"]
    for index, stage in enumerate(stages, 1):
        assert f"[{index}/6 " in out and f"{stage}: done in" in out, out
    assert "left]" in out
    for suite in ("eai", "t0"):
        results = json.loads((grid / f"cd_flm_6.{suite}" / "results" / f"{suite}.json").read_text())
        assert results["archobj"]["data"] == str(world_dir / "eval")

    # The report, labelled with the grid's scale, and where the time went.
    index = (grid / "report" / "index.md").read_text()
    assert "tiny scale" in index and "built-in world" in index
    assert (grid / "report" / "index.html").is_file()
    (line,) = (grid / "timing.jsonl").read_text().splitlines()
    timing = json.loads(line)
    assert {"training", "evaluation (eai)", "evaluation (t0)", "report",
            "start-up (imports)", "world (generate once)",
            "input pipelines (closing)"} <= set(timing["seconds"])
    assert timing["compile_seconds"]["training"] > 0
    assert "where the time went" in out

    # A second run has nothing left to do.
    again = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert again.returncode == 0 and "done in" not in again.stdout
    # ... and its record is added to the first run's, which stays as it was.
    first, second = (grid / "timing.jsonl").read_text().splitlines()
    assert first == line and "training" not in json.loads(second)["seconds"]
