"""Where a grid's time goes, and how much is left.

``Ledger`` adds up the wall time of a local grid run by phase (start-up, the world, training,
evaluation) and, inside training and evaluation, the seconds XLA spent compiling (JAX's own
compile events: tracing, lowering, backend compile). ``Estimator`` predicts the seconds a
pending stage will take from the stages already run in this process: training as a fixed cost
plus FLOPs over a throughput fitted to the finished stages (the grid file's ``compute`` section
until two have finished), evaluation as the mean of the finished evaluations of the same suite.

``enable_compilation_cache`` points JAX's persistent compilation cache at a directory shared by
every stage, variant and replicate of a runs root: a step function compiled once is read back,
not compiled again, by the next stage of the same shape and by the next run of the grid.

This module imports JAX only inside the functions that need it.
"""

from __future__ import annotations

import collections
import contextlib
import os
import pathlib
import statistics
import time
from typing import Iterator, Mapping, Optional

# JAX's compile-time events (jax/_src/dispatch.py): tracing to a jaxpr, lowering to MLIR and the
# backend compile. A persistent-cache hit skips the last, which is most of it on CPU.
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


def enable_compilation_cache(directory: str | os.PathLike) -> Optional[pathlib.Path]:
    """JAX's persistent compilation cache in ``directory``, for every compile however short.

    Returns the directory, or None where the cache stays off: a CPU backend with more than one
    device. There, XLA:CPU (jaxlib 0.10.2) runs a sharded step with microbatches correctly when it
    compiles it, but the same executable read back from the cache by a later process deadlocks in
    its collectives (the devices wait in different all-reduces until XLA aborts: "Termination
    timeout ... Expected 4 threads to join the rendezvous"). Call before the first compile of the
    process.
    """
    import jax

    if jax.default_backend() == "cpu" and jax.device_count() > 1:
        return None
    path = pathlib.Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    # The defaults skip programs that compile in under a second: on a CPU grid most of them.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def format_seconds(seconds: float) -> str:
    """``75`` -> ``"1:15"``, ``3725`` -> ``"1:02:05"``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Ledger:
    """Wall seconds by phase, and compile seconds inside each phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.compile_seconds: dict[str, float] = collections.defaultdict(float)
        self.counts: dict[str, int] = collections.defaultdict(int)
        self._phase: Optional[str] = None
        self._listening = False

    def _on_event(self, event: str, duration: float, **_: object) -> None:
        if self._phase is not None and event in COMPILE_EVENTS:
            self.compile_seconds[self._phase] += duration

    def listen_to_compiles(self) -> None:
        """Counts JAX's compile time from now on (imports JAX)."""
        if self._listening:
            return
        from jax import monitoring

        monitoring.register_event_duration_secs_listener(self._on_event)
        self._listening = True

    def stop_listening(self) -> None:
        if self._listening:
            from jax import monitoring

            monitoring.unregister_event_duration_listener(self._on_event)
            self._listening = False

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Adds the wall time of the block (and the compiles inside it) to ``name``."""
        outer, self._phase = self._phase, name
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start
            self.counts[name] += 1
            self._phase = outer

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] += seconds
        self.counts[name] += 1

    def breakdown(self, total: Optional[float] = None) -> str:
        """A table: each phase's wall time, share of the total and compile time inside it."""
        total = sum(self.seconds.values()) if total is None else total
        labels = {name: f"{name} ({self.counts[name]})" if self.counts[name] > 1 else name
                  for name in self.seconds}
        width = max([28, *(len(label) + 1 for label in labels.values())])
        lines = [f"{'where the time went':<{width}}{'wall':>9}{'share':>8}{'compiling':>11}"]
        for name, seconds in sorted(self.seconds.items(), key=lambda kv: -kv[1]):
            compiling = self.compile_seconds.get(name, 0.0)
            lines.append(f"{labels[name]:<{width}}{format_seconds(seconds):>9}"
                         f"{100 * seconds / total if total else 0:>7.0f}%"
                         f"{format_seconds(compiling) if compiling else '':>11}")
        other = total - sum(self.seconds.values())
        if other > 0.5:
            lines.append(f"{'other (planning, index)':<{width}}{format_seconds(other):>9}"
                         f"{100 * other / total:>7.0f}%")
        lines.append(f"{'total':<{width}}{format_seconds(total):>9}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"seconds": {k: round(v, 3) for k, v in self.seconds.items()},
                "compile_seconds": {k: round(v, 3) for k, v in self.compile_seconds.items()},
                "counts": dict(self.counts)}


class Estimator:
    """Seconds a pending stage should take, learned from the stages finished in this run.

    Args:
      flops_per_second: the prior training throughput (``compute.peak_tflops * compute.mfu``).
      stage_overhead: the prior fixed seconds of a training stage (start, compile, checkpoints).
      eval_seconds: the prior seconds of one evaluation stage.
    """

    def __init__(self, flops_per_second: float, stage_overhead: float = 10.0,
                 eval_seconds: float = 30.0) -> None:
        self.flops_per_second = flops_per_second
        self.stage_overhead = stage_overhead
        self.eval_prior = eval_seconds
        self.train: list[tuple[float, float]] = []           # (flops, seconds)
        self.evals: dict[str, list[float]] = collections.defaultdict(list)

    def observe(self, kind: str, seconds: float, *, flops: float = 0.0,
                suite: Optional[str] = None) -> None:
        if kind == "train":
            self.train.append((flops, seconds))
        elif kind == "eval":
            self.evals[suite or ""].append(seconds)

    def _train_fit(self) -> tuple[float, float]:
        """(overhead seconds, seconds per FLOP) from the finished training stages.

        A least-squares line once their FLOPs differ at least twofold (a pretraining and a
        finetuning), its slope kept within a factor 2 of their mean seconds per FLOP: stages of
        nearly equal FLOPs say little about the slope, and their noise must not blow it up.
        Before that, the mean seconds per FLOP with no overhead; before anything, the prior.
        """
        if not self.train:
            return self.stage_overhead, 1.0 / self.flops_per_second
        flops = [f for f, _ in self.train]
        seconds = [s for _, s in self.train]
        mean_rate = sum(seconds) / max(sum(flops), 1.0)
        if min(flops) > 0 and max(flops) >= 2 * min(flops):
            mean_f, mean_s = statistics.fmean(flops), statistics.fmean(seconds)
            var = sum((f - mean_f) ** 2 for f in flops)
            slope = sum((f - mean_f) * (s - mean_s) for f, s in self.train) / var
            slope = min(max(slope, 0.5 * mean_rate), 2.0 * mean_rate)
            return max(0.0, mean_s - slope * mean_f), slope
        return 0.0, mean_rate

    def seconds(self, kind: str, *, flops: float = 0.0, suite: Optional[str] = None) -> float:
        if kind == "train":
            overhead, per_flop = self._train_fit()
            return overhead + flops * per_flop
        if kind == "eval":
            done = self.evals.get(suite or "") or [s for v in self.evals.values() for s in v]
            return statistics.fmean(done) if done else self.eval_prior
        return self.stage_overhead

    def remaining(self, pending: Mapping[str, tuple[str, float, Optional[str]]]) -> float:
        """Seconds for ``pending``: stage -> (kind, flops, suite)."""
        return sum(self.seconds(kind, flops=flops, suite=suite)
                   for kind, flops, suite in pending.values())
