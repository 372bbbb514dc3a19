"""A small synthetic grid directory in ``archobj grid``'s layout, for tests, the notebook and demos.

    write_fixture_grid("/tmp/fixture_runs")   # -> /tmp/fixture_runs/fixture (a grid directory)

It holds no model: the results are drawn (seeded) at chosen accuracies, in the exact files an
evaluation stage writes (``results/eai.json`` with lm-eval's ``acc,none`` shape and
``per_example``; ``results/t0.json`` with per-prompt ``examples``/``correct``), the training
stages' ``config.json``/``metrics.jsonl``, ``events.jsonl`` for each stage's status, and
``index.json``. Some cells are pending, one failed, so a report over it shows every case.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Optional

import numpy as np

from analysis import reference

SCALE = "fixture: synthetic results drawn at set accuracies (no model was trained)"
PRETRAIN_STEPS = 64
# train stage -> (kind, architecture, objective, steps, upstream, upstream step, final loss)
TRAIN = {
    "cd_flm": ("pretrain", "cd", "flm", 64, None, None, 2.0),
    "nd_plm": ("pretrain", "nd", "plm", 64, None, None, 2.2),
    "nd_mlm": ("pretrain", "nd", "mlm", 64, None, None, 1.5),
    "cd_flm_64-cd_mtf_72": ("finetune", "cd", "mtf", 8, "cd_flm", 64, 1.0),
    "cd_flm_64-nd_mlm_84": ("adapt", "nd", "mlm", 20, "cd_flm", 64, 1.3),
    "cd_flm_64-nd_mlm_84-nd_mtf_92": ("finetune", "nd", "mtf", 8, "cd_flm_64-nd_mlm_84", 20, 0.9),
}
# eval stage -> (training stage, its step, accuracy the results are drawn at, status)
EVALS = {
    "cd_flm_32.eai": ("cd_flm", 32, 0.40, "done"),
    "cd_flm_64.eai": ("cd_flm", 64, 0.45, "done"),
    "cd_flm_64.t0": ("cd_flm", 64, 0.45, "done"),
    "nd_plm_64.eai": ("nd_plm", 64, 0.42, "done"),
    "nd_plm_64.t0": ("nd_plm", 64, 0.43, "done"),
    "ed_plm_64.eai": ("ed_plm", 64, 0.0, "pending"),
    "cd_flm_64-cd_mtf_72.eai": ("cd_flm_64-cd_mtf_72", 8, 0.55, "done"),
    "cd_flm_64-cd_mtf_72.t0": ("cd_flm_64-cd_mtf_72", 8, 0.60, "done"),
    "nd_plm_64-nd_mtf_72.eai": ("nd_plm_64-nd_mtf_72", 8, 0.0, "failed"),
    "cd_flm_64-nd_mlm_84-nd_mtf_92.eai": ("cd_flm_64-nd_mlm_84-nd_mtf_92", 8, 0.58, "done"),
    "cd_flm_64-nd_mlm_84-nd_mtf_92.t0": ("cd_flm_64-nd_mlm_84-nd_mtf_92", 8, 0.62, "done"),
}


def _directory(grid: pathlib.Path, name: str) -> pathlib.Path:
    return grid / f"{name}-{hash_name(name):08x}"


def hash_name(name: str) -> int:
    """A stable 32-bit number for a name (the fixture's stand-in for a stage identity)."""
    import zlib

    return zlib.crc32(name.encode())


def _events(directory: pathlib.Path, status: str) -> None:
    from harness.grid import state

    if status == "pending":
        return
    state.append_event(directory, "started", attempt=1)
    if status == "done":
        state.append_event(directory, "finished", attempt=1)
    elif status == "failed":
        state.append_event(directory, "failed", attempt=1, error="ValueError: a fixture failure")


def _eai_document(rng: np.random.Generator, accuracy: float, docs: int) -> dict[str, Any]:
    from harness.eval import eai_eval   # the suite's task names and metrics (YAML only)

    metrics = {task.task: task.metric for task in eai_eval.SUITE.tasks}
    results, per_example, counts = {}, {}, {}
    for task, chance in reference.task_random("eai").items():
        metric = metrics[task]
        p = min(max(chance + (accuracy - 0.33), 0.0), 0.98)
        values = (rng.random(docs) < p).astype(float)
        mean = float(values.mean())
        results[task] = {f"{metric},none": mean,
                         f"{metric}_stderr,none": float(values.std(ddof=1) / np.sqrt(docs)),
                         "alias": task}
        per_example[task] = {"metric": metric, "filter": "none", "doc_id": list(range(docs)),
                             "value": values.tolist()}
        counts[task] = {"original": docs, "effective": docs}
    return {"results": results, "n-samples": counts, "per_example": per_example}


def _t0_document(rng: np.random.Generator, accuracy: float, examples: int) -> dict[str, Any]:
    from harness.eval import t0_eval   # promptsource is imported only when templates render

    datasets = {}
    for dataset in t0_eval.T0_EVAL_DATASETS:
        prompts = {}
        for prompt in dataset.templates:
            p = min(max(dataset.random_baseline + (accuracy - 0.42) + rng.normal(0, 0.05), 0), 1)
            correct = (rng.random(examples) < p).astype(int).tolist()
            prompts[prompt] = {"accuracy": sum(correct) / examples, "num_correct": sum(correct),
                               "num_scored": examples, "examples": list(range(examples)),
                               "correct": correct}
        datasets[dataset.name] = {"num_examples": examples, "prompts": prompts,
                                  "random_baseline": dataset.random_baseline}
    return {"suite": "t0", "datasets": datasets}


def write_fixture_grid(root: str | pathlib.Path, name: str = "fixture", seed: int = 0,
                       scale: Optional[str] = SCALE, docs: int = 24) -> pathlib.Path:
    """Writes the fixture grid ``root/name`` (see the module docstring); returns its directory.

    Args:
      root: the runs root.
      name: the grid's name (``fixture_seed1`` for a replicate).
      seed: the replicate's training seed (recorded in the configs; results drawn with it).
      scale: recorded in ``index.json``; None records none (the loader then derives one).
      docs: examples per task (EAI-Eval) and per dataset (T0-Eval).
    """
    grid = pathlib.Path(root) / name
    grid.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for stage, (kind, arch, objective, steps, upstream, at, loss) in TRAIN.items():
        directory = _directory(grid, stage)
        directory.mkdir(exist_ok=True)
        run = {"name": stage, "run_dir": str(directory),
               "stage": {"kind": kind, "init_from": str(_directory(grid, upstream))
                         if upstream else None, "init_step": at},
               "train": {"steps": steps, "batch_size": 8, "seed": seed},
               "data": {"objective": objective, "total_length": 64, "seed": seed},
               "model": {"architecture": arch, "preset": "tiny", "num_layers": 2, "d_model": 32}}
        (directory / "config.json").write_text(json.dumps({"model": {}, "run": run}))
        start = 3.0 + 0.1 * seed
        lines = [json.dumps({"step": step, "loss": loss + (start - loss) * np.exp(-step / 16),
                             "tokens_seen": step * 512, "tokens_trained": step * 400.0,
                             "step_seconds": 0.05, "model_flops_per_second": 1e9})
                 for step in range(8, steps + 1, 4)]
        (directory / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        _events(directory, "done")
        rows.append({"stage": stage, "kind": "train", "status": "done",
                     "directory": directory.name, "cells": ""})
    for stage, (train, step, accuracy, status) in EVALS.items():
        directory = _directory(grid, stage)
        directory.mkdir(exist_ok=True)
        _events(directory, status)
        suite = stage.rsplit(".", 1)[1]
        if status == "done":
            document = (_eai_document if suite == "eai" else _t0_document)(
                rng, accuracy + 0.01 * seed, docs)
            document["archobj"] = {"step": step, "suite": suite, "limit": None}
            (directory / "results").mkdir(exist_ok=True)
            (directory / "results" / f"{suite}.json").write_text(json.dumps(document))
        rows.append({"stage": stage, "kind": "eval", "status": status,
                     "directory": directory.name, "cells": stage.rsplit(".", 1)[0]})
    index = {"updated": "fixture", "stages": rows, "grid": name.split("_seed")[0],
             "pretrain_steps": PRETRAIN_STEPS}
    if scale is not None:
        index["scale"] = scale
    (grid / "index.json").write_text(json.dumps(index, indent=1))
    return grid
