"""The paper's figures for our runs (matplotlib, Agg), readable in grey.

Every figure is a pure function of ``load``'s data, the bootstrap ``Replicates`` and the entries
of ``tables.summarize``, for one ``scale``; each returns a ``matplotlib.figure.Figure`` and
``save`` writes it as PNG and PDF. Conditions differ by hatch and marker, not only by colour;
accuracy panels draw the random baseline as a dashed line and error bars from the bootstrap
intervals; the paper's numbers, where it printed them, are hollow diamonds labelled as the paper's
(``reference.PAPER_SHORT``). A cell the grid holds without results is drawn as an ``x`` at the
axis with its status (pending, running, failed), never left out silently and never a crash.

- ``figure4``: each architecture x objective at the end of pretraining, without and with MTF, both
  suites (Figure 4 shape);
- ``figure5``: EAI-Eval split into the tasks T0-Eval shares and the others (Figure 5 shape);
- ``figure6``: training loss against tokens seen for each adaptation and the from-scratch runs of
  its objective, with the speed-up read off (Figure 6 shape);
- ``figure7``: the three 219B adaptation pipelines (Figure 7 shape);
- ``figure8``: T0-Eval accuracy per prompt, per dataset: the spread over prompts (Figure 8 shape).
"""

from __future__ import annotations

import pathlib
from typing import Any, Mapping, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis import aggregate, bootstrap, cells as cells_lib, reference  # noqa: E402
from analysis.load import RunData  # noqa: E402

HATCHES = ("", "//", "xx", "..", "\\\\", "oo")
GREYS = ("0.85", "0.55", "0.35", "0.7", "0.95", "0.45")
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "<", ">", "h")
PAPER_STYLE = {"marker": "D", "markerfacecolor": "white", "markeredgecolor": "black",
               "markersize": 7, "linestyle": "none", "zorder": 5}
RANDOM_STYLE = {"color": "black", "linestyle": "--", "linewidth": 1.0}


def save(figure: plt.Figure, directory: str | pathlib.Path, name: str) -> list[pathlib.Path]:
    """Writes ``name.png`` (120 dpi) and ``name.pdf``; returns both paths."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{name}.png", directory / f"{name}.pdf"]
    figure.savefig(paths[0], dpi=120)
    figure.savefig(paths[1])
    return paths


def _entry(entries: pd.DataFrame, scale: str, recipe: str, point: str, suite: str):
    hit = entries[(entries["scale"] == scale) & (entries["recipe"] == recipe) &
                  (entries["point"] == point) & (entries["suite"] == suite)]
    return None if hit.empty else hit.iloc[0]


def _title(figure: plt.Figure, what: str, scale: str) -> None:
    figure.suptitle(f"{what}\nours at {scale}", fontsize=9)


def _bars(ax: plt.Axes, positions: Sequence[float], items: Sequence[Optional[Mapping[str, Any]]],
          width: float, style: int, label: str) -> None:
    """Bars with error bars for entries that have results; an ``x`` and the status for those that
    do not; "not in grid" for ``None`` (a cell the grid does not hold)."""
    first = True
    for x, item in zip(positions, items):
        if item is None:
            ax.annotate("not in grid", (x, 0), xytext=(0, 3), textcoords="offset points",
                        rotation=90, ha="center", va="bottom", fontsize=6, color="0.4")
            continue
        if item["status"] == "done" and np.isfinite(item["score"]):
            value = 100 * item["score"]
            ax.bar(x, value, width, color=GREYS[style % len(GREYS)], edgecolor="black",
                   hatch=HATCHES[style % len(HATCHES)], label=label if first else None)
            first = False
            if np.isfinite(item["low"]):
                ax.errorbar(x, value, yerr=[[value - 100 * item["low"]],
                                            [100 * item["high"] - value]],
                            color="black", capsize=3, linewidth=1)
        else:
            ax.plot(x, 0, marker="x", color="black", markersize=8, clip_on=False, zorder=6)
            ax.annotate(str(item["status"]), (x, 0), xytext=(0, 6), textcoords="offset points",
                        rotation=90, ha="center", va="bottom", fontsize=7)


def _random_line(ax: plt.Axes, entries: pd.DataFrame, scale: str, suite: str) -> Optional[float]:
    done = entries[(entries["scale"] == scale) & (entries["suite"] == suite) &
                   (entries["status"] == "done")]
    value = done["random"].mean() if len(done) else \
        float(np.mean(list(reference.task_random(suite).values())))
    ax.axhline(100 * value, label=f"random ({100 * value:.1f})", **RANDOM_STYLE)
    return value


def _suite_panel(ax: plt.Axes, entries: pd.DataFrame, scale: str, suite: str) -> None:
    """An accuracy panel of one suite: its random baseline, title and axis."""
    _random_line(ax, entries, scale, suite)
    ax.set_title(reference.SUITE_TITLES[suite])
    ax.set_ylabel("average accuracy (%)")
    ax.set_ylim(bottom=0)


def _finish(figure: plt.Figure, axes, what: str, scale: str) -> None:
    """One legend under the panels (out of the bars' way), the title with the scale, the layout."""
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    figure.legend(unique.values(), unique.keys(), loc="lower center", ncol=len(unique),
                  fontsize=7, frameon=False)
    _title(figure, what, scale)
    figure.tight_layout(rect=(0, 0.06, 1, 1))


def figure4(entries: pd.DataFrame, scale: str) -> plt.Figure:
    """Figure 4 shape: per pretraining pair, the end of pretraining without and with MTF."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
    x = np.arange(len(cells_lib.PAIRS))
    for ax, suite in zip(axes, reference.SUITES):
        plain = [_entry(entries, scale, pair, "1", suite) for pair in cells_lib.PAIRS]
        tuned = [_entry(entries, scale, f"{pair} > {pair[:2]}_mtf", "1", suite)
                 for pair in cells_lib.PAIRS]
        _bars(ax, x - 0.2, plain, 0.4, 0, "pretraining only")
        _bars(ax, x + 0.2, tuned, 0.4, 1, "+ MTF")
        for offset, recipes in ((-0.2, cells_lib.PAIRS),
                                (0.2, [f"{p} > {p[:2]}_mtf" for p in cells_lib.PAIRS])):
            values = [reference.paper_value(r, "1", suite) for r in recipes]
            ax.plot(x + offset, [np.nan if v is None else v for v in values],
                    label=reference.paper_label("1") if offset < 0 else None, **PAPER_STYLE)
        _suite_panel(ax, entries, scale, suite)
        ax.set_xticks(x, [p.replace("_", ":").upper() for p in cells_lib.PAIRS])
    _finish(figure, axes, "Figure 4 shape: architecture x objective, without and with multitask "
                          "finetuning", scale)
    return figure


def figure5(data: RunData, reps: bootstrap.Replicates, entries: pd.DataFrame,
            scale: str) -> plt.Figure:
    """Figure 5 shape: EAI-Eval on the tasks T0-Eval shares and on the others, per cell at the
    end of pretraining (with and without MTF)."""
    frame = data.frame[(data.frame["scale"] == scale) & (data.frame["suite"] == "eai")]
    cells = entries[(entries["scale"] == scale) & (entries["suite"] == "eai") &
                    (entries["point"] == "1") & entries["recipe"].str.count(">").le(1)]
    cells = cells.sort_values(["mtf", "recipe"])
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    subsets = (("tasks shared with T0-Eval", reference.T0_OVERLAP, None),
               ("other EAI-Eval tasks", None, reference.T0_OVERLAP))
    x = np.arange(len(cells))
    for ax, (name, keep, drop) in zip(axes, subsets):
        scores = aggregate.suite_scores(frame, tasks=keep, exclude=drop)
        items = []
        for entry in cells.itertuples(index=False):
            mine = scores[scores["cell"] == entry.cell]
            if entry.status != "done" or mine.empty:
                items.append({"status": entry.status, "score": np.nan, "low": np.nan,
                              "high": np.nan})
                continue
            keys = [(r.run, r.cell, "eai") for r in mine.itertuples(index=False)]
            tasks = keep if keep is not None else [t for t in frame["task"].unique()
                                                   if t not in drop]
            rows = [reps.subset(k, tasks) for k in keys]
            rows = [r for r in rows if r is not None]
            low, high = bootstrap.interval(np.mean(rows, axis=0) if rows else None)
            items.append({"status": "done", "score": mine["score"].mean(), "low": low,
                          "high": high})
        for i, (entry, item) in enumerate(zip(cells.itertuples(index=False), items)):
            _bars(ax, [x[i]], [item], 0.7, int(entry.mtf), "+ MTF" if entry.mtf else
                  "pretraining only")
        chance = [reference.task_random("eai")[t] for t in reference.task_random("eai")
                  if (keep is None or t in keep) and (drop is None or t not in drop)]
        ax.axhline(100 * np.mean(chance), label=f"random ({100 * np.mean(chance):.1f})",
                   **RANDOM_STYLE)
        ax.set_xticks(x, [cells_lib.parse_cell(c, None).label for c in cells["cell"]],
                      rotation=30, ha="right", fontsize=7)
        ax.set_title(f"EAI-Eval, {name}")
        ax.set_ylabel("average accuracy (%)")
        ax.set_ylim(bottom=0)
        if not len(cells):
            ax.text(0.5, 0.5, "no EAI-Eval results at the end of pretraining",
                    transform=ax.transAxes, ha="center")
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=7, loc="lower left")
    _title(figure, "Figure 5 shape: EAI-Eval split by overlap with T0-Eval (the paper gives no "
                   "numbers for it)", scale)
    figure.tight_layout()
    return figure


def speedups(data: RunData, scale: str) -> pd.DataFrame:
    """For each adaptation stage and each from-scratch run of its objective: the loss compared,
    the tokens each needs to reach it, and the ratio (the paper's 1.6x, 3.3x, 9.1x; PAPER.md 1.3).

    The loss compared is the from-scratch run's final loss when the adaptation reaches it, else
    the adaptation's final loss; tokens are counted from the branch for the adaptation and from
    zero for the run from scratch. Training loss (metrics.jsonl), as no validation loss is logged.
    """
    columns = ["run", "adaptation", "scratch", "loss", "adapt_tokens", "scratch_tokens",
               "speedup"]
    curves = data.curves
    if curves.empty:
        return pd.DataFrame(columns=columns)
    runs = set(data.runs.loc[data.runs["scale"] == scale, "run"])
    curves = curves[curves["run"].isin(runs) & curves["loss"].notna()]
    rows = []
    for (run, stage), adapted in curves[curves["kind"] == "adapt"].groupby(["run", "stage"]):
        objective = adapted["objective"].iloc[0]
        scratch_runs = curves[(curves["run"] == run) & (curves["kind"] == "pretrain") &
                              (curves["objective"] == objective)]
        for scratch_stage, scratch in scratch_runs.groupby("stage"):
            target = scratch["loss"].iloc[-1]
            reached = adapted[adapted["loss"] <= target]
            if reached.empty:
                target = adapted["loss"].iloc[-1]
                reached = adapted.iloc[[-1]]
            hits = scratch[scratch["loss"] <= target]
            scratch_tokens = hits["stage_tokens"].iloc[0] if len(hits) else np.nan
            adapt_tokens = reached["stage_tokens"].iloc[0]
            rows.append({"run": run, "adaptation": stage, "scratch": scratch_stage,
                         "loss": target, "adapt_tokens": adapt_tokens,
                         "scratch_tokens": scratch_tokens,
                         "speedup": scratch_tokens / adapt_tokens if adapt_tokens else np.nan})
    return pd.DataFrame(rows, columns=columns)


def figure6(data: RunData, scale: str) -> plt.Figure:
    """Figure 6 shape: loss against tokens seen, adaptations against training from scratch."""
    curves = data.curves
    runs = set(data.runs.loc[data.runs["scale"] == scale, "run"]) if not data.runs.empty else set()
    curves = curves[curves["run"].isin(runs)] if not curves.empty else curves
    adapted = [] if curves.empty else list(
        curves[curves["kind"] == "adapt"].groupby(["run", "stage"], sort=False).groups)
    panels = max(len(adapted), 1)
    columns = min(panels, 4)             # rows of four: a grid with replicates has many panels
    rows = -(-panels // columns)
    figure, grid = plt.subplots(rows, columns, figsize=(5.5 * max(columns, 2), 4 * rows),
                                squeeze=False)
    for ax in grid.flat[panels:]:
        ax.set_axis_off()
    axes = grid.reshape(1, -1)
    ratios = speedups(data, scale)
    if not adapted:
        axes[0, 0].text(0.5, 0.5, "no adaptation stage with metrics in these runs",
                        transform=axes[0, 0].transAxes, ha="center", va="center")
        axes[0, 0].set_axis_off()
    for ax, (run, stage) in zip(axes[0], adapted):
        mine = curves[(curves["run"] == run) & (curves["stage"] == stage)]
        objective = mine["objective"].iloc[0]
        ax.plot(mine["tokens_seen"], mine["loss"], color="black", marker="o", markersize=3,
                label=f"adapted: {cells_lib.parse_cell(stage, None).label}")
        ax.axvline(mine["tokens_seen"].iloc[0] - mine["stage_tokens"].iloc[0], color="0.5",
                   linestyle=":", label="branch point")
        scratch = curves[(curves["run"] == run) & (curves["kind"] == "pretrain") &
                         (curves["objective"] == objective)]
        for i, (name, line) in enumerate(scratch.groupby("stage", sort=False)):
            ax.plot(line["tokens_seen"], line["loss"], color="0.45", marker=MARKERS[i + 1],
                    markersize=3, linestyle="--", label=f"from scratch: {name.upper()}")
        if scratch.empty:
            ax.text(0.02, 0.98, f"no {objective.upper()} run from scratch in {run}",
                    transform=ax.transAxes, va="top", fontsize=7)
        notes = ratios[(ratios["run"] == run) & (ratios["adaptation"] == stage)]
        text = "\n".join(f"vs {r.scratch}: {r.speedup:.2f}x to loss {r.loss:.3f}"
                         for r in notes.itertuples(index=False) if np.isfinite(r.speedup))
        if text:
            ax.text(0.98, 0.98, "speed-up " + text, transform=ax.transAxes, ha="right",
                    va="top", fontsize=7, bbox={"facecolor": "white", "edgecolor": "0.6"})
        ax.set_xlabel("tokens seen (global)")
        ax.set_ylabel(f"training loss ({objective.upper()}, metrics.jsonl)")
        ax.set_title(f"{run}: {stage}", fontsize=8)
        ax.legend(fontsize=7, loc="lower left")
    _title(figure, "Figure 6 shape: adaptation against training from scratch (training loss: no "
                   "validation loss is logged; paper: LM-A 1.6x, NC-A 3.3x / 9.1x)", scale)
    figure.tight_layout()
    return figure


ADAPTATIONS = ("cd_flm > cd_flm > cd_mtf", "cd_flm > cd_flm > nd_mtf", "cd_flm > nd_mlm > nd_mtf")


def figure7(entries: pd.DataFrame, scale: str) -> plt.Figure:
    """Figure 7 shape: the three pipelines past the end of pretraining (and CD:FLM + MTF)."""
    recipes = [("cd_flm > cd_mtf", "1"), *((r, "1+") for r in ADAPTATIONS)]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(recipes))
    for ax, suite in zip(axes, reference.SUITES):
        for i, (recipe, point) in enumerate(recipes):
            _bars(ax, [x[i]], [_entry(entries, scale, recipe, point, suite)], 0.6, i,
                  recipe.replace("_", ":").upper())
        values = [reference.paper_value(r, p, suite) for r, p in recipes]
        ax.plot(x, [np.nan if v is None else v for v in values], label=reference.paper_label(
            "1+", mtf=True), **PAPER_STYLE)
        _suite_panel(ax, entries, scale, suite)
        ax.set_xticks(x, ["CD:FLM > CD:MTF\n(end of pretraining)", "CD:FLM > CD:FLM\n> CD:MTF",
                          "CD:FLM > CD:FLM\n> ND:MTF", "CD:FLM > ND:MLM (NC-A)\n> ND:MTF"],
                      fontsize=7)
    _finish(figure, axes, "Figure 7 shape: adaptation variants (continued CD:FLM vs non-causal "
                          "MLM adaptation), then MTF", scale)
    return figure


def figure8(data: RunData, scale: str, max_cells: int = 8) -> plt.Figure:
    """Figure 8 shape: T0-Eval accuracy of every prompt, one panel per dataset, one column of
    points per cell (marker per cell), its median as a bar; the random baseline dashed."""
    frame = data.frame[(data.frame["scale"] == scale) & (data.frame["suite"] == "t0")]
    datasets = list(reference.task_random("t0"))
    cells = list(dict.fromkeys(frame["cell"]))[:max_cells]
    figure, axes = plt.subplots(3, 4, figsize=(13, 8.5), squeeze=False)
    flat = axes.ravel()
    for ax, dataset in zip(flat, datasets):
        mine = frame[frame["task"] == dataset]
        for i, cell in enumerate(cells):
            values = 100 * mine.loc[mine["cell"] == cell, "value"].to_numpy()
            if not len(values):
                ax.plot(i, 0, marker="x", color="black", clip_on=False)
                continue
            jitter = np.linspace(-0.18, 0.18, len(values)) if len(values) > 1 else [0.0]
            ax.plot(i + np.asarray(jitter), values, linestyle="none",
                    marker=MARKERS[i % len(MARKERS)], markerfacecolor="white",
                    markeredgecolor="black", markersize=4)
            ax.hlines(np.median(values), i - 0.3, i + 0.3, color="black", linewidth=2)
        ax.axhline(100 * reference.task_random("t0")[dataset], **RANDOM_STYLE)
        ax.set_title(dataset, fontsize=8)
        ax.set_xticks(range(len(cells)), [str(i + 1) for i in range(len(cells))], fontsize=7)
        ax.set_ylim(-2, 102)
    legend = flat[len(datasets)]
    legend.set_axis_off()
    lines = [f"{i + 1}: {cell}" for i, cell in enumerate(cells)] or ["no T0-Eval results"]
    legend.text(0, 1, "cells (x axis)\n" + "\n".join(lines) +
                "\n\npoints: one prompt each\nbar: median over prompts\ndashed: random",
                va="top", fontsize=7, transform=legend.transAxes)
    for ax in flat[len(datasets) + 1:]:
        ax.set_axis_off()
    _title(figure, "Figure 8 shape: T0-Eval accuracy (%) per prompt, per dataset", scale)
    figure.tight_layout()
    return figure


def all_figures(data: RunData, reps: bootstrap.Replicates, entries: pd.DataFrame,
                scale: str) -> dict[str, plt.Figure]:
    """name -> figure: figure4 ... figure8 for the runs at ``scale``."""
    return {"figure4": figure4(entries, scale), "figure5": figure5(data, reps, entries, scale),
            "figure6": figure6(data, scale), "figure7": figure7(entries, scale),
            "figure8": figure8(data, scale)}
