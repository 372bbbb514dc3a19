"""Bootstrap intervals over examples, and paired differences between cells.

Every task (EAI-Eval) or dataset (T0-Eval) is resampled with one set of ``B`` draws of its
examples, shared by every cell and every prompt that scored those examples: a replicate draws n
example ids with replacement from the ids scored, and each cell's (or prompt's) accuracy in it is
the mean over the drawn examples it scored. So

- a task's interval is the percentile interval of its replicates;
- T0-Eval's aggregate takes, inside each replicate, the median over a dataset's prompts and the
  mean over datasets (the study's aggregate, replicate by replicate);
- EAI-Eval's aggregate is the mean over tasks, replicate by replicate;
- a difference between two cells is **paired**: both are scored on the same resampled examples, so
  the replicate of the difference is the difference of the replicates (lm-eval#3831: an unpaired
  test is too weak).

Draws are seeded by (seed, suite, task, number of ids), so an interval does not depend on which
other cells are loaded. Cells without per-example scores (older results, lm-eval output without
samples) get a parametric interval instead (binomial draws at the stored accuracy and count),
marked ``parametric``: it is not paired with anything.

The intervals cover evaluation sampling only (which examples a benchmark holds): one training run
per cell says nothing of the spread over training seeds; ``aggregate.seed_spread`` shows that
where a grid was run with several seeds. numpy only.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Mapping, Optional

import numpy as np
import pandas as pd

from analysis.load import RunData

DEFAULT_REPLICATES = 1000
LEVEL = 0.95
_CHUNK_ELEMENTS = 4_000_000       # replicate rows x ids drawn at once (memory per chunk ~32 MB)

Key = tuple[str, str, str]        # (run, cell, suite)


def resample_weights(n: int, replicates: int, rng: np.random.Generator):
    """Yields ``[rows, n]`` float32 chunks of bootstrap counts: row r counts how often each of the
    ``n`` items was drawn in replicate r (each row sums to ``n``: the classic bootstrap)."""
    rows = max(1, _CHUNK_ELEMENTS // max(n, 1))
    for start in range(0, replicates, rows):
        count = min(rows, replicates - start)
        draws = rng.integers(0, n, size=(count, n))
        draws += (np.arange(count) * n)[:, None]
        yield np.bincount(draws.ravel(), minlength=count * n).reshape(count, n).astype(np.float32)


def bootstrap_means(values: np.ndarray, mask: Optional[np.ndarray], replicates: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Replicates of column means under one shared resampling of the rows.

    Args:
      values: ``[n, k]``: k columns (cells, prompts) scored on n items; anything where ``mask``
        is 0.
      mask: ``[n, k]`` 1 where a column scored the item; None when every column scored all.
      replicates: B.
      rng: the draws' generator.

    Returns:
      ``[B, k]``: the mean over the drawn items each column scored (NaN where it drew none).
    """
    n = values.shape[0]
    filled = np.where(mask > 0, values, 0.0) if mask is not None else values
    out = []
    for weights in resample_weights(n, replicates, rng):
        numerator = weights @ filled.astype(np.float32)
        denominator = (weights @ mask.astype(np.float32)) if mask is not None else \
            np.full_like(numerator, n)
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(numerator / denominator)
    return np.concatenate(out).astype(np.float64)


def _rng(seed: int, *names: str) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(name.encode()) for name in names)])


@dataclasses.dataclass
class Replicates:
    """Bootstrap replicates of every task and suite aggregate of a ``RunData``.

    Attributes:
      replicates, seed: B and the seed.
      task: (run, cell, suite, task) -> ``[B]`` replicates of the task score (T0: the median over
        prompts inside each replicate).
      suite: (run, cell, suite) -> ``[B]`` replicates of the suite aggregate.
      method: (run, cell, suite) -> ``bootstrap`` (every task per-example), ``parametric`` (some
        task without per-example scores) or ``none`` (no counts either).
    """

    replicates: int
    seed: int
    task: dict[tuple[str, str, str, str], np.ndarray]
    suite: dict[Key, np.ndarray]
    method: dict[Key, str]

    def subset(self, key: Key, tasks) -> Optional[np.ndarray]:
        """Replicates of the mean over ``tasks`` (Figure 5's split of EAI-Eval)."""
        rows = [self.task[(*key, t)] for t in tasks if (*key, t) in self.task]
        return np.mean(rows, axis=0) if rows else None


def bootstrap(data: RunData, replicates: int = DEFAULT_REPLICATES, seed: int = 0) -> Replicates:
    """Replicates of every task and suite aggregate in ``data`` (see the module docstring)."""
    frame = data.frame[data.frame["suite"].isin(("eai", "t0"))]
    # Per (suite, task): the columns (run, cell, prompt) to resample together.
    prompt_reps: dict[tuple[str, str, str, str], dict[str, np.ndarray]] = {}
    parametric: set[Key] = set()
    no_counts: set[Key] = set()
    for (suite, task), rows in frame.groupby(["suite", "task"], sort=False):
        columns, arrays = [], []
        for row in rows.itertuples(index=False):
            record = data.examples.get((row.run, row.cell, suite, task, row.prompt))
            key = (row.run, row.cell, suite)
            if record is not None and len(record[0]):
                columns.append((row.run, row.cell, row.prompt))
                arrays.append(record)
                continue
            rng = _rng(seed, "parametric", row.run, row.cell, suite, task, row.prompt)
            n = int(row.n) if pd.notna(row.n) and row.n else 0
            if n:
                parametric.add(key)
                draws = rng.binomial(n, min(max(float(row.value), 0.0), 1.0), replicates) / n
            else:
                no_counts.add(key)
                draws = np.full(replicates, np.nan)
            prompt_reps.setdefault((row.run, row.cell, suite, task), {})[row.prompt] = draws
        if not columns:
            continue
        universe = np.unique(np.concatenate([ids for ids, _ in arrays]))
        values = np.zeros((len(universe), len(columns)))
        mask = np.zeros_like(values)
        for k, (ids, scores) in enumerate(arrays):
            position = np.searchsorted(universe, ids)
            values[position, k] = scores
            mask[position, k] = 1.0
        full = bool(mask.all())
        means = bootstrap_means(values, None if full else mask, replicates,
                                _rng(seed, suite, task, str(len(universe))))
        for k, (run, cell, prompt) in enumerate(columns):
            prompt_reps.setdefault((run, cell, suite, task), {})[prompt] = means[:, k]

    task_reps = {}
    for key, by_prompt in prompt_reps.items():
        stacked = np.stack(list(by_prompt.values()), axis=1)       # [B, prompts]
        with np.errstate(all="ignore"):
            task_reps[key] = stacked[:, 0] if stacked.shape[1] == 1 else \
                _nanmedian(stacked)
    suite_reps: dict[Key, list[np.ndarray]] = {}
    for (run, cell, suite, _), reps in task_reps.items():
        suite_reps.setdefault((run, cell, suite), []).append(reps)
    suites = {key: np.mean(np.stack(rows), axis=0) for key, rows in suite_reps.items()}
    method = {key: "none" if key in no_counts else "parametric" if key in parametric
              else "bootstrap" for key in suites}
    return Replicates(replicates, seed, task_reps, suites, method)


def _nanmedian(stacked: np.ndarray) -> np.ndarray:
    """Median over prompts (axis 1) ignoring prompts that drew no scored example."""
    if not np.isnan(stacked).any():
        return np.median(stacked, axis=1)
    return np.nanmedian(stacked, axis=1)


def interval(replicates: Optional[np.ndarray], level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval of replicates; (nan, nan) without any."""
    if replicates is None:
        return float("nan"), float("nan")
    finite = replicates[np.isfinite(replicates)]
    if not len(finite):
        return float("nan"), float("nan")
    low, high = np.quantile(finite, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(low), float(high)


def with_intervals(scores: pd.DataFrame, reps: Replicates, level: float = LEVEL) -> pd.DataFrame:
    """``scores`` (``aggregate.suite_scores``) with ``low``, ``high`` and ``method``."""
    scores = scores.copy()
    bounds = [interval(reps.suite.get((r.run, r.cell, r.suite)), level)
              for r in scores.itertuples(index=False)]
    scores["low"] = [b[0] for b in bounds]
    scores["high"] = [b[1] for b in bounds]
    scores["method"] = [reps.method.get((r.run, r.cell, r.suite), "none")
                        for r in scores.itertuples(index=False)]
    return scores


@dataclasses.dataclass(frozen=True)
class Difference:
    """A paired comparison of two cells on one suite (fractions)."""

    a: Key
    b: Key
    estimate: float          # score(a) - score(b)
    low: float
    high: float
    paired: bool             # both on per-example scores, on the same resampled examples
    level: float

    @property
    def verdict(self) -> str:
        """Plain words: which is better, or that the interval of the difference holds 0."""
        if not np.isfinite(self.low):
            return "no interval (no counts)"
        how = "paired bootstrap" if self.paired else "unpaired, parametric"
        if self.low > 0:
            return f"{self.a[1]} better: the {self.level:.0%} interval excludes 0 ({how})"
        if self.high < 0:
            return f"{self.b[1]} better: the {self.level:.0%} interval excludes 0 ({how})"
        return f"no detectable difference: the {self.level:.0%} interval holds 0 ({how})"


def difference(reps: Replicates, scores: Mapping[Key, float], a: Key, b: Key,
               level: float = LEVEL) -> Difference:
    """The paired bootstrap of score(a) - score(b) (see the module docstring)."""
    low, high = interval(reps.suite[a] - reps.suite[b], level) \
        if a in reps.suite and b in reps.suite else (float("nan"), float("nan"))
    paired = reps.method.get(a) == reps.method.get(b) == "bootstrap"
    return Difference(a, b, scores[a] - scores[b], low, high, paired, level)


def paired_difference(values_a: np.ndarray, values_b: np.ndarray,
                      replicates: int = DEFAULT_REPLICATES, seed: int = 0,
                      level: float = LEVEL) -> tuple[float, float, float]:
    """mean(a) - mean(b) and its paired percentile interval, for two score arrays on the same
    examples (the building block of ``difference``, for direct use and tests)."""
    values = np.stack([values_a, values_b], axis=1).astype(float)
    means = bootstrap_means(values, None, replicates, np.random.default_rng(seed))
    low, high = interval(means[:, 0] - means[:, 1], level)
    return float(values_a.mean() - values_b.mean()), low, high


def task_intervals(reps: Replicates, level: float = LEVEL) -> pd.DataFrame:
    """One row per (run, cell, suite, task): ``low``/``high`` of the task score."""
    rows = [{"run": run, "cell": cell, "suite": suite, "task": task,
             **dict(zip(("low", "high"), interval(values, level)))}
            for (run, cell, suite, task), values in reps.task.items()]
    return pd.DataFrame(rows, columns=["run", "cell", "suite", "task", "low", "high"])


def group_replicates(scores: pd.DataFrame, reps: Replicates) -> dict[tuple[str, str], np.ndarray]:
    """(group, suite) -> replicates of the mean over the group's seeds (their examples are shared,
    so this is the interval over examples of the seed-averaged score)."""
    out: dict[tuple[str, str], list[np.ndarray]] = {}
    for row in scores.itertuples(index=False):
        values = reps.suite.get((row.run, row.cell, row.suite))
        if values is not None:
            out.setdefault((row.group, row.suite), []).append(values)
    return {key: np.mean(np.stack(rows), axis=0) for key, rows in out.items()}


__all__ = ["bootstrap", "Replicates", "interval", "with_intervals", "difference", "Difference",
           "paired_difference", "bootstrap_means", "task_intervals", "group_replicates"]
