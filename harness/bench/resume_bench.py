"""``archobj bench resume``: seconds from a restart to its first training step, against the step it
restarts from, with the input pipeline's saved state and with the old replay of the stream.

Protocol:

1. A local text corpus is written into a temporary directory (seeded random documents).
2. One chain of real ``archobj train`` processes trains a small model on it (``--preset``,
   ``--arch``, ``--objective``): a fresh start (``k`` = 0) trains to the first ``k``, a restart there
   (from the saved state) trains to the next ``k``, and so on; every ``k`` is kept as a checkpoint
   (``checkpoint.keep_steps``). Each process of the chain is the "state" figure of its ``k``.
3. After the chain process that restarts at ``k``, a copy of the run directory cut back to
   checkpoint ``k`` and without its ``data`` item (exactly a checkpoint written before data states
   were saved: the loop replays the stream to ``k``) is restarted for one step: the "replay" figure.
   The two variants of a ``k`` run back to back and share JAX's persistent compilation cache (in
   the temporary directory; the first process fills it), so that compile time is alike.
4. The figure is the wall time from just before the process is launched to the end of its first
   step, which the loop logs (``start-up: ... first step done at <unix time>``); also the loop's
   own "data: position" phase (restoring the state, or replaying ``k`` batches) and the size of the
   saved state. ``k`` = 0 is a fresh start: the second one (the chain's first process compiles
   with a cold cache), shown in both columns.

The machine is noisy (2 shared cores here): quote the shape over ``k`` (flat against linear) and
the position phases, not single seconds.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional, Sequence

DEFAULT_STEPS = (0, 200, 800)
QUICK_STEPS = (0, 200)
_FIRST_STEP = re.compile(r"start-up: .*first step done at ([0-9.]+)")
_POSITION = re.compile(r"data: position \(([^)]*)\) ([0-9.]+)")
_WORDS = ("a model reads text and learns to predict the next words of every document while the "
          "encoder sees each token of its input and the decoder writes its answer").split()


@dataclasses.dataclass(frozen=True)
class ResumeRow:
    """One restart step ``k``: both variants' figures."""

    step: int
    state_seconds: float      # launch -> first step done, resumed from the saved state
    replay_seconds: float     # the same, resumed by replaying k batches
    state_position: float     # the loop's "data: position" phase with the state
    replay_position: float    # ... and by replay
    state_bytes: int          # size of checkpoint k's data item (this process's state)


@dataclasses.dataclass(frozen=True)
class ResumeBenchResult:
    """All rows and what was run."""

    rows: list[ResumeRow]
    settings: dict
    total_seconds: float      # the whole benchmark (every process)

    def format(self) -> str:
        """A table: one line per k."""
        s = self.settings
        lines = [f"resume: {s['preset']} {s['architecture']}:{s['objective']}, batch "
                 f"{s['batch_size']} x {s['total_length']} tokens, local corpus; seconds from "
                 "launching `archobj train` to its first step after a restart at step k",
                 f"  {'k':>6s} {'state s':>8s} {'replay s':>9s} {'position: state':>16s} "
                 f"{'replay':>7s} {'state size':>11s}"]
        for row in self.rows:
            lines.append(f"  {row.step:6d} {row.state_seconds:8.1f} {row.replay_seconds:9.1f} "
                         f"{row.state_position:16.2f} {row.replay_position:7.2f} "
                         f"{_size(row.state_bytes):>11s}")
        lines.append(f"  (k = 0: a fresh start, warm compilation cache; whole benchmark {self.total_seconds:.0f} s; "
                     f"load average at the end {s['load_average']})")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        """JSON-able figures."""
        return {"settings": self.settings, "total_seconds": self.total_seconds,
                "rows": [dataclasses.asdict(row) for row in self.rows]}


def _size(count: int) -> str:
    return "-" if count == 0 else f"{count / 1e6:.2f} MB" if count >= 1e5 else f"{count / 1e3:.0f} kB"


def write_corpus(path: pathlib.Path, documents: int = 2000, seed: int = 0) -> pathlib.Path:
    """A seeded local corpus: one document of 20-120 words per line."""
    import numpy as np

    rng = np.random.default_rng(seed)
    path.write_text("\n".join(" ".join(rng.choice(_WORDS, size=rng.integers(20, 120)))
                              for _ in range(documents)) + "\n")
    return path


def run_resume_benchmark(steps: Sequence[int] = DEFAULT_STEPS, *, preset: str = "tiny",
                         architecture: str = "cd", objective: str = "mlm", batch_size: int = 8,
                         total_length: int = 128, workdir: Optional[str | os.PathLike] = None,
                         report: Callable[[str], None] = print) -> ResumeBenchResult:
    """Runs the protocol of the module docstring and returns its figures.

    Args:
      steps: the restart steps ``k`` (0 is a fresh start).
      preset, architecture, objective, batch_size, total_length: the stage that is restarted.
      workdir: where the corpus and the run directories go (kept); default a temporary directory,
        removed at the end.
      report: called with one progress line per ``k``.

    Raises:
      ValueError: bad settings (one line), or a training process that failed (its last lines).
    """
    steps = sorted(set(int(k) for k in steps))
    if not steps or steps[0] < 0:
        raise ValueError(f"steps={list(steps)}: give restart steps >= 0")
    if batch_size < 1 or total_length < 8:
        raise ValueError(f"batch_size={batch_size}, total_length={total_length}: must be >= 1 "
                         "and >= 8")
    own = workdir is None
    root = pathlib.Path(tempfile.mkdtemp(prefix="archobj-resume-bench-") if own else workdir)
    root.mkdir(parents=True, exist_ok=True)
    try:
        corpus = write_corpus(root / "corpus.txt")
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1",
                   JAX_COMPILATION_CACHE_DIR=str(root / "jax-cache"),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
        base = ["name=resume_bench", f"model.preset={preset}",
                f"model.architecture={architecture}", f"data.objective={objective}",
                f"data.source={corpus}", "data.vocabulary=byte",
                f"data.total_length={total_length}", f"train.batch_size={batch_size}",
                "train.log_every=100000", "checkpoint.async_save=false"]
        chain = root / "state"

        def keep(until: int) -> list[str]:  # every k up to this process's last step is kept
            kept = [k for k in steps if 0 < k <= until]
            return [f"checkpoint.keep_steps=[{','.join(map(str, kept))}]", "checkpoint.keep=1",
                    f"checkpoint.every={until}", f"train.steps={until}"]

        started = time.time()
        rows = []
        for index, k in enumerate(steps):
            until = steps[index + 1] if index + 1 < len(steps) else k + 1
            state = _restart(base + keep(until) + [f"run_dir={chain}"], env)
            copy, size = root / f"replay-{k}", 0
            if k > 0:
                _cut_back(chain, copy, k, drop_data=True)
                data_dir = chain / "checkpoints" / str(k) / "data"
                size = sum(f.stat().st_size for f in data_dir.iterdir())
            replay = _restart(base + keep(k + 1) + [f"run_dir={copy}"], env)
            if k == 0:  # the chain's first process filled the compilation cache: not comparable
                state = replay
            row = ResumeRow(k, state[0], replay[0], state[1], replay[1], size)
            rows.append(row)
            report(f"k={k:5d}: state {row.state_seconds:5.1f} s (position {row.state_position:.2f}"
                   f" s), replay {row.replay_seconds:5.1f} s (position {row.replay_position:.2f}"
                   f" s), state {_size(size)}")
        settings = {"preset": preset, "architecture": architecture, "objective": objective,
                    "batch_size": batch_size, "total_length": total_length, "steps": steps,
                    "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg())}
        return ResumeBenchResult(rows, settings, time.time() - started)
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)


def _command(overrides: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "harness.cli", "train", *[f"--set={o}" for o in overrides]]


def _repository() -> str:
    return str(pathlib.Path(__file__).resolve().parents[2])


def _train(overrides: Sequence[str], env: dict) -> str:
    done = subprocess.run(_command(overrides), env=env, cwd=_repository(), capture_output=True,
                          text=True, check=False)
    if done.returncode:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise ValueError(f"archobj train failed (status {done.returncode}): {tail}")
    return done.stderr


def _restart(overrides: Sequence[str], env: dict) -> tuple[float, float]:
    """(seconds from launch to the end of the first step, seconds of the position phase)."""
    launched = time.time()
    log = _train(overrides, env)
    first = _FIRST_STEP.search(log)
    position = _POSITION.search(log)
    if first is None or position is None:
        raise ValueError("archobj train logged no start-up line ('start-up: ... first step done "
                         "at'); is harness/train/loop.py older than this benchmark?")
    return float(first.group(1)) - launched, float(position.group(2))


def _cut_back(trained: pathlib.Path, run_dir: pathlib.Path, step: int, drop_data: bool) -> None:
    """A copy of ``trained`` whose newest checkpoint is ``step`` (without its data state if
    ``drop_data``): what a run stopped right after saving ``step`` leaves."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    shutil.copytree(trained, run_dir)
    for path in (run_dir / "checkpoints").iterdir():
        if path.name.isdigit() and int(path.name) > step:
            shutil.rmtree(path)
    if drop_data:
        shutil.rmtree(run_dir / "checkpoints" / str(step) / "data")
