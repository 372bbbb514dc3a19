"""Scores as the study aggregated them, from the tidy frame of ``analysis.load``.

- **EAI-Eval** = the unweighted mean of the task accuracies (PAPER.md 3.1: 31 datasets).
- **T0-Eval** = per dataset the **median** over its prompts, then the mean over the datasets
  (PAPER.md 3.2: 11 datasets, 116 prompts).
- **Normalised score** = (s - random) / (1 - random), per task (per dataset for T0-Eval: the
  median commutes with it, every prompt of a dataset sharing its chance level), then aggregated
  the same way, as the study's plotting scripts did. The random aggregate beside each score is the
  mean of the tasks' chance accuracies scored (33.36% for all of EAI-Eval, 41.7% for T0-Eval).

Pure functions of pandas frames; no JAX, no TensorFlow.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd

from analysis import reference

CELL_KEYS = ("run", "cell", "suite")
# Columns that describe a cell, carried from the tidy frame to the score frames.
CELL_INFO = ("scale", "stage", "step", "tokens_seen", "seed", "group", "recipe", "point", "limit")
FULL_SUITE = {"eai": 31, "t0": 11}
SUBSETS = {"t0_overlap": reference.T0_OVERLAP}


def normalise(score, random):
    """(s - random) / (1 - random): 0 at chance, 1 at perfect (arrays or scalars)."""
    return (np.asarray(score, dtype=float) - random) / (1.0 - np.asarray(random, dtype=float))


def task_scores(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, cell, suite, task): EAI-Eval's task value, T0-Eval's median over prompts.

    Columns: the cell keys and ``CELL_INFO``, ``task``, ``value``, ``random``, ``normalised``,
    ``prompts`` (how many were scored), ``low``/``high`` (the spread over prompts), ``n``.
    """
    frame = frame[frame["suite"].isin(reference.SUITES)]
    if frame.empty:
        return pd.DataFrame(columns=[*CELL_KEYS, *CELL_INFO, "task", "value", "random",
                                     "normalised", "prompts", "low", "high", "n"])
    keys = [*CELL_KEYS, "task"]
    grouped = frame.groupby(keys, sort=False, dropna=False)
    scores = grouped.agg(value=("value", "median"), random=("random", "first"),
                         prompts=("value", "size"), low=("value", "min"),
                         high=("value", "max"), n=("n", "max"),
                         **{column: (column, "first") for column in CELL_INFO}).reset_index()
    scores["normalised"] = normalise(scores["value"], scores["random"])
    return scores


def suite_scores(frame: pd.DataFrame, tasks: Optional[Sequence[str]] = None,
                 exclude: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """One row per (run, cell, suite): the study's aggregate of ``task_scores``.

    Args:
      frame: the tidy frame.
      tasks: keep only these tasks (Figure 5's split); None keeps all.
      exclude: drop these tasks.

    Returns:
      The cell keys and ``CELL_INFO``, ``score`` (EAI: mean of tasks; T0: mean of the dataset
      medians), ``random`` (the mean of those tasks' chance levels), ``normalised`` (the mean of
      the tasks' normalised scores), ``tasks`` (how many), ``complete`` (all 31 / 11 and no
      ``limit``: then it is the paper's measure).
    """
    scores = task_scores(frame)
    if tasks is not None:
        scores = scores[scores["task"].isin(list(tasks))]
    if exclude is not None:
        scores = scores[~scores["task"].isin(list(exclude))]
    if scores.empty:
        return pd.DataFrame(columns=[*CELL_KEYS, *CELL_INFO, "score", "random", "normalised",
                                     "tasks", "complete"])
    grouped = scores.groupby(list(CELL_KEYS), sort=False, dropna=False)
    out = grouped.agg(score=("value", "mean"), random=("random", "mean"),
                      normalised=("normalised", "mean"), tasks=("task", "size"),
                      **{column: (column, "first") for column in CELL_INFO}).reset_index()
    full = out["suite"].map(FULL_SUITE)
    out["complete"] = (out["tasks"] == full) & out["limit"].isna() & (tasks is None) & \
        (exclude is None)
    return out


def seed_spread(scores: pd.DataFrame) -> pd.DataFrame:
    """Replicates over seeds: per ``group`` (cells equal in all but the seed) and suite, the mean
    score, its standard deviation over seeds and how many seeds; one seed gives sd NaN."""
    if scores.empty:
        return pd.DataFrame(columns=["group", "suite", "mean", "sd", "seeds", "runs"])
    grouped = scores.groupby(["group", "suite"], sort=False)
    out = grouped.agg(mean=("score", "mean"), sd=("score", "std"), seeds=("seed", "nunique"),
                      runs=("run", lambda runs: ", ".join(sorted(set(runs))))).reset_index()
    out.loc[out["seeds"] < 2, "sd"] = np.nan
    return out
