"""The paper's published numbers and the suites' random baselines, from ``paper_numbers.csv``.

The CSV holds every number of PAPER.md section 4 (Tables 3, 6, 7, 8 and Table 8's T5-LM and T0
baselines) and the per-task random baselines of both suites (PAPER.md 3.1-3.2), copied as printed,
one number a line, with the table it comes from. Columns:

``table``    where the number is printed ("Table 7; Table 8" when both print it)
``kind``     ``result`` (a model of the grid), ``baseline`` (T5-LM, T0), ``random`` (a suite's
             random aggregate), ``task_random`` (a task's chance accuracy, Table 5 / AO's T0 list),
             ``task_random_ao`` (AO plot_eai_eval.py's per-task baselines, behind the 32.9)
``row``      the row as the paper names it
``recipe``   the chain of the cell that reproduces it (``analysis.cells.recipe``), e.g.
             ``cd_mlm > cd_flm > cd_mtf``; ``t5_lm``, ``t0``, ``random``
``point``    how far into pretraining the chain branches or is evaluated: ``1/4``, ``1/2``, ``1``
             (42B / 84B / 168B tokens at the paper's scale), ``1+`` (past the end: the 219B
             adaptations); empty for baselines
``suite``    ``eai`` or ``t0``;  ``task`` a task or dataset name (random baselines only)
``value``    as printed; ``unit`` ``percent`` or ``fraction``;  ``tokens`` the paper's token count

The EAI-Eval random aggregate is kept three ways, because the paper disagrees with itself (PAPER.md
3.1): 33.3 (Table 5), 33.36 (the mean of Table 5 over the 31 datasets; the convention of
``harness/eval/suites/eai_eval.yaml`` and of this package) and 32.9 (Tables 3 and 8: AO's plotting
script counts HEAD-QA twice and uses MultiRC 0 and MathQA 0.1884).

Standard library and pandas only: no JAX, no TensorFlow.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Mapping

import pandas as pd

CSV = pathlib.Path(__file__).resolve().parent / "paper_numbers.csv"
# The label every paper number carries next to ours: never mistaken for a result of this run.
PAPER_LABEL = "paper (4.8B decoders / 11B enc-dec, 168B pretraining tokens)"
PAPER_SHORT = "paper, 4.8B/11B"
SUITES = ("eai", "t0")
SUITE_TITLES = {"eai": "EAI-Eval", "t0": "T0-Eval"}
# How far into pretraining -> the paper's tokens (PAPER.md 1.3).
POINT_TOKENS = {"1/4": "42B", "1/2": "84B", "1": "168B", "1+": "219B"}

# EAI-Eval datasets that T0-Eval also holds (PAPER.md 3.1: all of T0-Eval but StoryCloze): the
# split of Figure 5. EAI-Eval's RTE is the GLUE copy of the same dataset.
T0_OVERLAP = ("anli_r1", "anli_r2", "anli_r3", "cb", "rte", "copa", "hellaswag", "wsc",
              "winogrande", "wic")

# T0-Eval's held-out task families (PAPER.md 3.2, the T0 paper's split): none of them is in the
# multitask mixture.
T0_FAMILIES = {"NLI": ("anli_r1", "anli_r2", "anli_r3", "cb", "rte"),
               "Sentence completion": ("copa", "hellaswag", "story_cloze"),
               "Coreference": ("wsc", "winogrande"),
               "Word sense": ("wic",)}


@functools.lru_cache(maxsize=None)
def _read(path: str) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype={"point": str, "recipe": str, "task": str, "tokens": str},
                        keep_default_na=False)
    frame["value"] = frame["value"].astype(float)
    frame["fraction"] = frame["value"].where(frame["unit"] == "fraction", frame["value"] / 100.0)
    return frame


def paper_numbers(path: str | pathlib.Path = CSV) -> pd.DataFrame:
    """The reference CSV as a frame (a copy), with ``fraction``: the value in [0, 1]."""
    return _read(str(path)).copy()


def results(path: str | pathlib.Path = CSV) -> pd.DataFrame:
    """The paper's model results and baselines: one row per (recipe, point, suite), tables joined.

    Columns: recipe, point, suite, value (percent), row, table, tokens, kind.
    """
    frame = paper_numbers(path)
    frame = frame[frame["kind"].isin(["result", "baseline"])]
    return frame[["recipe", "point", "suite", "value", "row", "table", "tokens", "kind"]
                 ].reset_index(drop=True)


def paper_value(recipe: str, point: str, suite: str) -> float | None:
    """The paper's number (percent) for a recipe at a point, or None where it printed none."""
    frame = results()
    hit = frame[(frame["recipe"] == recipe) & (frame["point"] == point) & (frame["suite"] == suite)]
    return float(hit["value"].iloc[0]) if len(hit) else None


def task_random(suite: str) -> dict[str, float]:
    """Chance accuracy per task (fraction): Table 5 for EAI-Eval, AO's list for T0-Eval."""
    frame = paper_numbers()
    frame = frame[(frame["kind"] == "task_random") & (frame["suite"] == suite)]
    if suite == "t0":
        frame = frame[frame["table"] != "Table 5"]   # StoryCloze's Table 5 line: same 0.5
    return dict(zip(frame["task"], frame["fraction"]))


def random_aggregates() -> Mapping[str, tuple[float, str, str]]:
    """The suites' random aggregates (percent): key -> (value, where printed, why)."""
    frame = paper_numbers()
    frame = frame[frame["kind"] == "random"]
    return {f"{r.suite}:{r.table}": (r.value, r.table, r.note) for r in frame.itertuples()}


def ao_eai_random_mean() -> float:
    """AO plot_eai_eval.py's EAI-Eval random baseline: the plain mean of its 32 keys (0.3288)."""
    frame = paper_numbers()
    return float(frame.loc[frame["kind"] == "task_random_ao", "fraction"].mean())


def paper_label(point: str | None = None, mtf: bool = False) -> str:
    """``paper, 4.8B/11B, 168B tokens`` (+ ``+ 13B MTF``): how a paper number is labelled."""
    tokens = POINT_TOKENS.get(point or "", "")
    return (f"{PAPER_SHORT}" + (f", {tokens} tokens" if tokens else "")
            + (" + 13B MTF" if mtf else ""))
