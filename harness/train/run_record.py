"""What a run directory says about the run it holds, and the rules that keep it true.

    <run_dir>/config.json     {"model": ..., "run": the configuration in force, "resumes": [...]}
    <run_dir>/metrics.jsonl   one record per logged step, each step once

The grid runner decides what to reuse and what to re-train from what a run directory says, and the
report plots what ``metrics.jsonl`` holds. So:

1. **A stage resumes only with the configuration it started with.** The fields in ``RESUMABLE``
   may differ on a restart: they change how long, on what hardware layout, or how often something
   is logged or saved, never what is trained. Any other difference is a one-line error naming each
   differing field with its stored and new value, raised before anything is written, so the run
   directory is left exactly as it was.
2. **Every restart is recorded, never rewritten.** ``config.json``'s ``"run"`` is the configuration
   in force (the resumable fields as last set) and ``"resumes"`` gains one entry per restart: the
   step the stage restarted from, when, which resumable fields changed (stored and new value) and
   how many metric records past that step were dropped.
3. **Each step is logged once.** A stopped stage may have logged steps after its newest
   checkpoint; it trains those steps again on resume, bit for bit, and logs them again. The records
   past the restored step are dropped from ``metrics.jsonl`` first (with a line cut short by the
   stop), and TensorBoard is given a purge step, so both hold each step exactly once.

This module reads and writes JSON only; it imports neither JAX nor orbax, so the check runs before
any of them starts.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import time
from typing import Any, Mapping, Optional

from harness.train import config as config_lib

METRICS_FILE = "metrics.jsonl"
RESUMES_KEY = config_lib.RESUMES_KEY

# Fields that may differ when a stage resumes, and why each leaves the run the same run. Every
# other field of the resolved configuration must equal the stored one.
RESUMABLE: Mapping[str, str] = {
    "run_dir": "the same directory, reached by another path or moved",
    "train.steps": "a stage may be extended or stopped earlier (not with the cosine schedule, "
                   "which decays to train.steps; not before the newest checkpoint)",
    "train.log_every": "how often metrics are logged",
    "train.microbatches": "gradient accumulation: the same update in less memory (summed in "
                          "another order, so equal to rounding, not bit for bit)",
    "mesh.data": "the device layout; checkpoints restore onto any mesh",
    "mesh.model": "the device layout; checkpoints restore onto any mesh",
    "checkpoint.every": "how often checkpoints are written",
    "checkpoint.keep": "how many periodic checkpoints are kept",
    "checkpoint.keep_steps": "which checkpoints are kept forever",
    "checkpoint.async_save": "whether checkpoints are written in the background",
    "eval.every": "evaluation during the stage does not change training",
    "eval.suites": "evaluation during the stage does not change training",
}
# The exit status of a stage stopped by a signal after saving (EX_TEMPFAIL): run it again.
PREEMPTED_EXIT_STATUS = 75


class Preempted(RuntimeError):
    """A stage stopped on a signal (``harness.train.loop.STOP_SIGNALS``) after saving a checkpoint
    of the step it reached; running it again resumes exactly there."""

    def __init__(self, run_dir: os.PathLike | str, step: int, signum: int) -> None:
        super().__init__(f"{run_dir}: stopped by {signal.Signals(signum).name} after saving step "
                         f"{step}; run the stage again to resume from it")
        self.step = step


# Resumable fields that a schedule reads: with it, they are part of what is trained.
_SCHEDULE_FIELDS = {"cosine": ("train.steps",)}


def check_resume(config: config_lib.RunConfig) -> Optional[dict[str, list[Any]]]:
    """Whether ``config`` may run in its run directory, read-only.

    Returns:
      None for a new run (no ``config.json``); for a restart, the resumable fields that changed,
      ``{dotted key: [stored, new]}`` (empty when nothing did).

    Raises:
      ValueError: one line: the directory holds another run (each differing field with its stored
        and new value), a model rather than a run, an unreadable ``config.json``, checkpoints or
        metrics without a ``config.json``, or a checkpoint past ``train.steps``.
    """
    run_dir = pathlib.Path(config.run_dir)
    path = run_dir / config_lib.CONFIG_FILE
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"run_dir={config.run_dir!r}: exists and is not a directory; choose "
                         "another run_dir")
    if not path.is_file():
        leftovers = [name for name in (config_lib.CHECKPOINTS_DIR, METRICS_FILE)
                     if (run_dir / name).exists()]
        if leftovers:
            raise ValueError(
                f"{run_dir}: holds {' and '.join(leftovers)} but no {config_lib.CONFIG_FILE}, so "
                "what was run there is unknown; write the stage into a new run_dir")
        return None
    stored = _stored_config(path)
    new = config_lib.flatten(config_lib.to_dict(config))
    differing = {key: [stored.get(key), new.get(key)] for key in sorted(set(stored) | set(new))
                 if stored.get(key) != new.get(key)}
    fixed = _SCHEDULE_FIELDS.get(config.optim.schedule, ())
    refused = {key: values for key, values in differing.items()
               if key not in RESUMABLE or key in fixed}
    if refused:
        changes = ", ".join(f"{key} {_show(old)} -> {_show(value)}"
                            for key, (old, value) in refused.items())
        raise ValueError(
            f"{path}: holds a run with another configuration (stored -> new: {changes}); a stage "
            "resumes only with the configuration it started with (train.steps, logging, "
            "checkpointing, mesh and microbatches aside: harness.train.run_record.RESUMABLE); write "
            "the new run into a new run_dir")
    newest = max(committed_steps(run_dir), default=0)
    if config.train.steps < newest:
        raise ValueError(
            f"train.steps={config.train.steps}: {run_dir} already holds a checkpoint of step "
            f"{newest}; set train.steps >= {newest} to resume it")
    return differing


def committed_steps(run_dir: os.PathLike | str) -> list[int]:
    """The steps under ``checkpoints/`` that orbax committed (unfinished saves are not listed)."""
    return config_lib.checkpoint_steps(run_dir)


def resume_entry(step: int, changed: Mapping[str, list[Any]], metrics_dropped: int
                 ) -> dict[str, Any]:
    """One entry of ``config.json``'s ``"resumes"`` (``config.write_resolved(resume=...)``)."""
    return {"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "changed": {key: {"stored": old, "new": new} for key, (old, new) in changed.items()},
            "metrics_dropped": metrics_dropped}


def drop_metrics_after(run_dir: pathlib.Path, step: int) -> int:
    """Cuts ``metrics.jsonl`` back to the records of steps ``<= step``; returns how many went.

    A line that does not parse (the stop cut it short) goes too; records without a ``"step"`` are
    kept. The file is replaced atomically, so a second stop during the cut loses nothing.
    """
    path = pathlib.Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    with path.open() as lines:
        for line in lines:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) \
                    and record["step"] > step:
                dropped += 1
                continue
            kept.append(line if line.endswith("\n") else line + "\n")
    if dropped:
        temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        temporary.write_text("".join(kept))
        os.replace(temporary, path)
    return dropped


def read_metrics(run_dir: os.PathLike | str) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl``, in order (empty if there is none)."""
    path = pathlib.Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _stored_config(path: pathlib.Path) -> dict[str, Any]:
    """The stored run configuration, resolved by this version and flattened to dotted keys."""
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({' '.join(str(e).split())}); the record of this "
                         "run is damaged: restore it, or write the stage into a new run_dir"
                         ) from None
    if not isinstance(document, dict) or not isinstance(document.get(config_lib.RUN_KEY), dict):
        raise ValueError(
            f"{path}: has no {config_lib.RUN_KEY!r} entry, so the directory holds a model "
            "(save_model, archobj convert) rather than a training run; write the stage into a new "
            "run_dir and point stage.init_from at this one to start from it")
    try:
        stored = config_lib.config_from_dict(document[config_lib.RUN_KEY])
    except ValueError as e:
        raise ValueError(f"{path}: its {config_lib.RUN_KEY!r} entry is not a configuration this "
                         f"version reads ({e}); write the stage into a new run_dir") from None
    return config_lib.flatten(config_lib.to_dict(stored))


def _show(value: Any) -> str:
    return json.dumps(value)
