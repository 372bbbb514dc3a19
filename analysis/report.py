"""``archobj report``: one report over run directories, with the paper's numbers beside ours.

    write_report(["runs/tiny", "runs/tiny_seed1"], "report")

writes::

    report/index.md     the runs and their scales, the cells' status (missing, failed, running),
                        Tables 3, 6, 7, 8 (ours beside the paper's), the findings as paired
                        differences, the compute table and the figures
    report/index.html   the same, figures inline (self-contained: images embedded)
    report/tables/      every table as .md, .csv and .tex, per scale (per-task and per-prompt
                        breakdowns are here, linked from the index)
    report/figures/     figure4..figure8 as .png and .pdf, per scale

Runs of different scales get their own sections; a number at one scale is never shown as another's
(the paper's columns are labelled as the paper's). Works on a partial grid: cells without results
are listed with their status and drawn as such.
"""

from __future__ import annotations

import base64
import html
import pathlib
import re
import time
from typing import Sequence

import pandas as pd

from analysis import bootstrap, load as load_lib, plots, reference, tables


def _slug(text: str, index: int) -> str:
    return f"scale{index}-" + re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40]


def write_report(paths: Sequence[str | pathlib.Path], out: str | pathlib.Path = "report",
                 replicates: int = bootstrap.DEFAULT_REPLICATES, seed: int = 0) -> pathlib.Path:
    """Loads ``paths``, writes the report under ``out`` (see the module docstring); returns
    ``out/index.md``.

    Raises:
      ValueError: one line: a path that does not exist or holds no results (``load``).
    """
    started = time.perf_counter()
    data = load_lib.load(paths)
    reps = bootstrap.bootstrap(data, replicates=replicates, seed=seed)
    entries = tables.summarize(data, reps)
    out = pathlib.Path(out)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    by_scale = tables.all_tables(data, reps, entries)

    md = ["# archobj report", "",
          f"Runs: {', '.join(f'`{p}`' for p in map(str, paths))}. Paper numbers: "
          f"{reference.PAPER_LABEL}, Wang et al. 2022 (PAPER.md 4), shown beside ours and never "
          "as ours.", "", "## Runs and their scales", "",
          "| run | path | scale | where the scale comes from | pretraining steps |",
          "|---|---|---|---|---|"]
    md += [f"| {r.run} | `{r.path}` | {r.scale} | {r.scale_source} | {r.pretrain_steps or ''} |"
           for r in data.runs.itertuples(index=False)]
    md += ["", "## What the intervals cover", "",
           tables.INTERVAL_NOTE.format(replicates=replicates), ""]
    md += _status_section(data)
    html_parts: list[str] = []
    for index, (scale, scale_tables) in enumerate(by_scale.items()):
        slug = _slug(scale, index)
        md += ["", f"## Scale: {scale}", ""]
        figures = plots.all_figures(data, reps, entries, scale)
        figure_files = {}
        for name, figure in figures.items():
            figure_files[name] = plots.save(figure, out / "figures", f"{slug}-{name}")
            plots.plt.close(figure)
        for table in scale_tables:
            stem = out / "tables" / f"{slug}-{table.name}"
            stem.with_suffix(".md").write_text(table.markdown())
            stem.with_suffix(".csv").write_text(table.csv())
            stem.with_suffix(".tex").write_text(table.latex())
            links = (f"[md](tables/{stem.name}.md) · [csv](tables/{stem.name}.csv) · "
                     f"[tex](tables/{stem.name}.tex)")
            if table.name in ("per_task", "per_prompt"):
                md += [f"- {table.title}: {len(table.rows)} rows, {links}"]
                continue
            md += ["", table.markdown(), links, ""]
        md += ["", "### Figures", ""]
        for name, (png, pdf) in figure_files.items():
            md += [f"![{name}](figures/{png.name}) ([pdf](figures/{pdf.name}))", ""]
        html_parts.append(_html_scale(scale, scale_tables, figure_files, out))
    md += ["", f"_Written by `archobj report` in {time.perf_counter() - started:.1f} s._", ""]
    (out / "index.md").write_text("\n".join(md))
    (out / "index.html").write_text(_html_page(data, html_parts, replicates))
    return out / "index.md"


def _status_section(data: load_lib.RunData) -> list[str]:
    """Counts of cells by status, and every cell that is not done (missing, failed, running)."""
    cells = data.cells
    lines = ["## Cells", ""]
    if cells.empty:
        return lines + ["No cells.", ""]
    counts = cells.groupby(["run", "status"]).size().unstack(fill_value=0)
    lines += ["| run | " + " | ".join(counts.columns) + " |",
              "|---|" + "---|" * len(counts.columns)]
    lines += [f"| {run} | " + " | ".join(str(v) for v in row) + " |"
              for run, row in counts.iterrows()]
    flagged = cells[cells["status"] != "done"]
    failed = flagged[flagged["status"].isin(["failed", "dep-failed", "running", "interrupted"])]
    lines += ["", f"{len(flagged)} of {len(cells)} (cell, suite) evaluations have no results yet."]
    if len(failed):
        lines += ["", "Failed, blocked or still running:", ""]
        lines += [f"- **{r.status}** `{r.run}/{r.stage}`" + (f": {r.error}" if r.error else "")
                  for r in failed.itertuples(index=False)]
    limited = cells[cells["limit"].notna() & cells["has_results"]]
    if len(limited):
        lines += ["", f"{len(limited)} evaluations were limited to a few examples per task "
                      f"(limit {int(limited['limit'].max())}): smoke runs, marked †, not the "
                      "suites' numbers."]
    missing = cells[cells["has_results"] & ~cells["per_example"].astype(bool)]
    if len(missing):
        lines += ["", f"{len(missing)} evaluations have no per-example scores (older results or "
                      "lm-eval output without samples): their intervals are parametric, marked *."]
    return lines + [""]


def _html_scale(scale: str, scale_tables: list[tables.Table], figures: dict, out: pathlib.Path
                ) -> str:
    parts = [f"<h2>Scale: {html.escape(scale)}</h2>"]
    for table in scale_tables:
        if table.name in ("per_task", "per_prompt"):
            parts.append(f"<p>{html.escape(table.title)}: {len(table.rows)} rows in "
                         f"tables/ (md, csv, tex).</p>")
            continue
        parts.append(table.html())
    parts.append("<h3>Figures</h3>")
    for name, (png, pdf) in figures.items():
        encoded = base64.b64encode(png.read_bytes()).decode()
        parts.append(f"<figure><img alt='{name}' src='data:image/png;base64,{encoded}'>"
                     f"<figcaption>{name} (<a href='figures/{pdf.name}'>pdf</a>)</figcaption>"
                     "</figure>")
    return "\n".join(parts)


def _html_page(data: load_lib.RunData, parts: list[str], replicates: int) -> str:
    runs = pd.DataFrame(data.runs)
    rows = "".join(f"<tr><td>{html.escape(str(r.run))}</td><td>{html.escape(str(r.scale))}</td>"
                   f"<td>{html.escape(str(r.scale_source))}</td></tr>"
                   for r in runs.itertuples(index=False))
    status = "\n".join(_status_section(data)[2:])
    style = ("body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}"
             "table{border-collapse:collapse;font-size:12px;margin:0.5em 0}"
             "td,th{border:1px solid #999;padding:2px 6px;text-align:right}"
             "td:first-child,th:first-child{text-align:left}.caption{font-size:12px;color:#444}"
             "img{max-width:100%}pre{white-space:pre-wrap}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>archobj report</title>"
            f"<style>{style}</style></head><body><h1>archobj report</h1>"
            f"<p>Paper numbers: {html.escape(reference.PAPER_LABEL)}, shown beside ours and never "
            f"as ours.</p><h2>Runs and their scales</h2><table><tr><th>run</th><th>scale</th>"
            f"<th>where the scale comes from</th></tr>{rows}</table>"
            f"<h2>What the intervals cover</h2><p>"
            f"{html.escape(tables.INTERVAL_NOTE.format(replicates=replicates))}</p>"
            f"<h2>Cells</h2><pre>{html.escape(status)}</pre>"
            + "\n".join(parts) + "</body></html>\n")
