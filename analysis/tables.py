"""The paper's tables for our runs, beside the paper's numbers, in Markdown, CSV and LaTeX.

``summarize(data, reps)`` turns a load into *entries*: one row per (scale, cell, suite) with the
score, its interval over examples, the spread over seeds, and the cell's status (a planned cell
without results says ``pending``/``running``/``failed``/``dep-failed``). Every table is a pure
function of entries:

- ``paper_table("Table 3" | "Table 6" | "Table 7" | "Table 8", ...)``: the paper's rows in its
  order (from ``paper_numbers.csv``), ours beside the paper's for each suite; a row the grid lacks
  says ``missing``;
- ``differences``: the paper's three findings as paired bootstrap comparisons, and what
  multitask finetuning did to each pretraining; ``findings_summary``: one line per finding and
  suite (holds, reversed, unresolved...);
- ``families``, ``families_eai``: T0-Eval and EAI-Eval by T0's held-out task families, and how
  many lie above chance;
- ``per_task``, ``per_prompt``: the breakdowns; ``compute_table``: tokens, FLOPs, time, MFU.

Each table's caption carries the scale its numbers were made at and what the intervals cover; the
paper's columns are labelled as the paper's, never as ours.
"""

from __future__ import annotations

import dataclasses
import html
from typing import Any, Mapping, Optional

import numpy as np
import pandas as pd

from analysis import aggregate, bootstrap, reference
from analysis.load import RunData

PAPER_TABLES = ("Table 3", "Table 6", "Table 7", "Table 8")
TABLE_TITLES = {
    "Table 3": "Pretraining only, end of pretraining (Table 3 shape)",
    "Table 6": "End of the 84B-token checkpoint, no MTF, EAI-Eval (Table 6 shape)",
    "Table 7": "The 42B-token stage: LM adaptation, MTF, both (Table 7 shape)",
    "Table 8": "The full grid: pretraining, MTF and adaptations (Table 8 shape)",
}
# Which CSV tables feed each shape (Table 8 shows the pretraining-only rows of Tables 3 and 6 too).
TABLE_SOURCES = {"Table 3": ("Table 3",), "Table 6": ("Table 6",), "Table 7": ("Table 7",),
                 "Table 8": ("Table 7", "Table 6", "Table 3", "Table 8")}
_STATUS_ORDER = ("running", "failed", "dep-failed", "interrupted", "pending")
INTERVAL_NOTE = ("Intervals: 95% percentile bootstrap over the evaluation examples ({replicates} "
                 "replicates; T0-Eval resamples examples within each prompt and takes the median "
                 "over prompts inside each replicate). They cover evaluation sampling only: one "
                 "training run per cell says nothing about training seeds; 'sd' is the spread over "
                 "seeds where a grid was run with several.")


@dataclasses.dataclass
class Table:
    """A table as display strings (``columns``, ``rows``) and as numbers (``data``, for CSV)."""

    name: str
    title: str
    caption: str
    columns: list[str]
    rows: list[list[str]]
    data: pd.DataFrame

    def markdown(self) -> str:
        """A GitHub Markdown table with its title and caption."""
        def cell(text: str) -> str:
            return str(text).replace("|", "\\|").replace("\n", " ")
        lines = [f"**{self.title}**", "", f"_{self.caption}_", "",
                 "| " + " | ".join(map(cell, self.columns)) + " |",
                 "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(map(cell, row)) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def latex(self) -> str:
        """A booktabs ``table`` environment (``\\usepackage{booktabs}``)."""
        def escape(text: str) -> str:
            for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"),
                         ("#", r"\#"), ("$", r"\$"), ("~", r"\textasciitilde{}"), (">", r"$>$"),
                         ("−", "$-$"), ("—", "--"), ("†", r"$\dagger$"), ("‡", r"$\ddagger$")):
                text = text.replace(a, b)
            return text
        lines = [r"\begin{table}[t]", r"\centering", r"\small",
                 r"\begin{tabular}{l" + "r" * (len(self.columns) - 1) + "}", r"\toprule",
                 " & ".join(escape(c) for c in self.columns) + r" \\", r"\midrule"]
        lines += [" & ".join(escape(str(c)) for c in row) + r" \\" for row in self.rows]
        lines += [r"\bottomrule", r"\end{tabular}",
                  r"\caption{" + escape(f"{self.title}. {self.caption}") + "}",
                  r"\end{table}"]
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        """An HTML ``<table>`` with its title and caption."""
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                       for row in self.rows)
        return (f"<h3>{html.escape(self.title)}</h3><p class='caption'>{html.escape(self.caption)}"
                f"</p><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def csv(self) -> str:
        """The numbers behind the table (fractions; intervals; status), as CSV."""
        return self.data.to_csv(index=False)


# ------------------------------------------------------------------------------------- entries

def summarize(data: RunData, reps: Optional[bootstrap.Replicates] = None) -> pd.DataFrame:
    """One row per (scale, cell, suite), replicates over seeds merged (see the module docstring).

    Columns: scale, cell, suite, recipe, point, label, kind, mtf, score, low, high, method,
    random, normalised, seeds (with results), runs, seed_sd, status, tokens_seen, step, limit,
    complete, group_key (for ``Replicates`` lookups: the (run, cell, suite) keys joined by ';').
    """
    scores = aggregate.suite_scores(data.frame)
    if reps is not None:
        scores = bootstrap.with_intervals(scores, reps)
    rows = []
    cells = data.cells
    for (scale, cell, suite), planned in cells.groupby(["scale", "cell", "suite"], sort=False):
        done = scores[(scores["scale"] == scale) & (scores["cell"] == cell) &
                      (scores["suite"] == suite)]
        first = planned.iloc[0]
        status = "done" if len(done) else next(
            (s for s in _STATUS_ORDER if (planned["status"] == s).any()), str(first["status"]))
        if not len(done) and (planned["status"] == "done").any():
            status = "no results"
        row = {"scale": scale, "cell": cell, "suite": suite, "recipe": first["recipe"],
               "point": first["point"], "label": first["label"], "kind": first["kind"],
               "mtf": bool(first["mtf"]), "status": status, "runs": len(planned),
               "seeds": int(done["seed"].nunique()) if len(done) else 0, "error": next((e for e in planned["error"] if e), None)}
        if len(done):
            keys = list(zip(done["run"], done["cell"], done["suite"]))
            values = [reps.suite[k] for k in keys if reps is not None and k in reps.suite]
            merged = np.mean(np.stack(values), axis=0) if values else None
            low, high = bootstrap.interval(merged)
            methods = set(done["method"]) if "method" in done else {"none"}
            row.update(score=done["score"].mean(), low=low, high=high,
                       method=min(methods, key=("bootstrap", "parametric", "none").index),
                       random=done["random"].mean(), normalised=done["normalised"].mean(),
                       seed_sd=done.groupby("seed")["score"].mean().std()
                       if done["seed"].nunique() > 1 else np.nan,
                       tokens_seen=done["tokens_seen"].mean(), step=done["step"].iloc[0],
                       limit=done["limit"].iloc[0], complete=bool(done["complete"].all()),
                       group_key=";".join("|".join(map(str, k)) for k in keys),
                       groups=done["group"].nunique())
        else:
            row.update(score=np.nan, low=np.nan, high=np.nan, method="", random=np.nan,
                       normalised=np.nan, seed_sd=np.nan, tokens_seen=first["tokens_seen"],
                       step=first["step"], limit=None, complete=False, group_key="", groups=0)
        rows.append(row)
    return pd.DataFrame(rows)


def entry_keys(entry: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """The (run, cell, suite) keys of an entry's seeds (its ``group_key``)."""
    return [tuple(k.split("|")) for k in str(entry.get("group_key") or "").split(";") if k]


def entry_replicates(entry: Mapping[str, Any], reps: bootstrap.Replicates) -> Optional[np.ndarray]:
    """The replicates of an entry (averaged over its seeds)."""
    keys = entry_keys(entry)
    values = [reps.suite[k] for k in keys if k in reps.suite]
    return np.mean(np.stack(values), axis=0) if values else None


def _pct(value: float) -> str:
    return "" if value is None or not np.isfinite(value) else f"{100 * value:.1f}"


def format_entry(entry: Optional[Mapping[str, Any]]) -> str:
    """``44.2 [43.1, 45.3]``, ``+ sd 0.4 (3 seeds)``, ``†`` for a limited (smoke) evaluation, or
    the status of a cell without results (``— (running)``, ``missing``)."""
    if entry is None:
        return "missing"
    if entry["status"] != "done" or not np.isfinite(entry["score"]):
        return f"— ({entry['status']})"
    text = _pct(entry["score"])
    if np.isfinite(entry["low"]):
        text += f" [{_pct(entry['low'])}, {_pct(entry['high'])}]"
    if entry.get("method") == "parametric":
        text += "*"
    if entry["seeds"] > 1 and np.isfinite(entry["seed_sd"]):
        text += f" sd {_pct(entry['seed_sd'])} ({entry['seeds']} seeds)"
    if entry.get("limit") is not None and pd.notna(entry.get("limit")):
        text += " †"
    elif not entry.get("complete", True):
        text += " ‡"
    return text


def _lookup(entries: pd.DataFrame, scale: str, recipe: str, point: Optional[str], suite: str):
    """Our entry for ``recipe`` at ``point`` (None: at any point) in ``suite``, or None."""
    hit = entries[(entries["scale"] == scale) & (entries["recipe"] == recipe) &
                  (entries["suite"] == suite)]
    if point is not None:
        hit = hit[hit["point"] == point]
    return None if hit.empty else hit.iloc[0].to_dict()


def _is_adaptation(recipe: str) -> bool:
    """A recipe that changes objective or architecture before any MTF (LM-A, NC-A)."""
    return len([link for link in recipe.split(" > ") if not link.endswith("_mtf")]) >= 2


def caption(scale: str, replicates: int, extra: str = "") -> str:
    """The caption every table carries: our scale, the paper's, the intervals, the marks."""
    return (f"Ours at scale: {scale}. Paper columns: {reference.PAPER_LABEL}, as published "
            f"(never ours). " + INTERVAL_NOTE.format(replicates=replicates)
            + " Marks: * parametric interval (no per-example scores); † evaluation limited to a "
              "few examples per task (a smoke run, not the suite's numbers); ‡ not every task of "
              "the suite; '— (status)' a cell of the grid without results; 'missing' not in the "
              "grid; § the paper's adaptation recipe taken at another point of pretraining "
              "than the paper's row (its tokens seen say where)." + (f" {extra}" if extra else ""))


def paper_table(name: str, entries: pd.DataFrame, scale: str, replicates: int) -> Table:
    """The paper's ``name`` table (``PAPER_TABLES``) for the runs at ``scale``, ours beside the
    paper's numbers, the rows as the paper lists them."""
    paper = reference.paper_numbers()
    sources = TABLE_SOURCES[name]
    wanted = paper[paper["kind"].isin(["result", "baseline", "random"]) &
                   paper["table"].map(lambda t: any(s in t.split("; ") for s in sources))]
    suites = ["eai"] if name == "Table 6" else list(reference.SUITES)
    order = {source: i for i, source in enumerate(sources)}
    keyed: dict[tuple[str, str], dict[str, Any]] = {}
    for row in wanted.itertuples(index=False):
        if row.kind == "random" and name not in row.table.split("; "):
            continue          # Tables 3 and 8 print a random row (32.9 / 41.7); 6 and 7 do not
        key = (row.recipe, row.point)
        first_table = min((t for t in row.table.split("; ") if t in order), key=order.get)
        item = keyed.setdefault(key, {"row": row.row, "kind": row.kind, "tokens": row.tokens,
                                      "sort": (order[first_table], len(keyed)), "paper": {},
                                      "table": first_table})
        item["paper"][row.suite] = row.value
    # The study's stages in order (42B, 84B, 168B, the 219B adaptations, baselines), then the
    # tables' own order inside a stage.
    stage = {"1/4": 0, "1/2": 1, "1": 2, "1+": 3}
    items = sorted(keyed.items(), key=lambda kv: (kv[1]["kind"] == "random",
                                                  stage.get(kv[0][1], 4), kv[1]["sort"]))
    columns = ["row (paper's name)", "tokens (paper)", "ours: cell", "ours: tokens seen"]
    for suite in suites:
        title = reference.SUITE_TITLES[suite]
        columns += [f"{title}, ours", f"{title}, paper"]
    rows, data = [], []
    for (recipe, point), item in items:
        if item["kind"] == "random":
            ours_random = {s: entries.loc[(entries["scale"] == scale) & (entries["suite"] == s) &
                                          (entries["status"] == "done"), "random"].mean()
                           for s in suites}
            line = ["Random baseline", "", "chance accuracy of the tasks scored", ""]
            for suite in suites:
                line += [_pct(ours_random[suite]), f"{item['paper'].get(suite, '')}"]
            rows.append(line)
            data.append({"row": "Random baseline", "recipe": "random", "point": "",
                         **{f"{s}_ours": ours_random[s] for s in suites},
                         **{f"{s}_paper": item["paper"].get(s, np.nan) / 100 for s in suites}})
            continue
        found = {suite: _lookup(entries, scale, recipe, point, suite) for suite in suites}
        moved = False
        if all(e is None for e in found.values()) and _is_adaptation(recipe):
            # The same adaptation recipe taken at another point of pretraining (tiny.yaml's LM-A
            # branches from the end, the paper's from 38B of 168B): shown, and marked §.
            found = {suite: _lookup(entries, scale, recipe, None, suite) for suite in suites}
            moved = any(e is not None for e in found.values())
        any_entry = next((e for e in found.values() if e is not None), None)
        tokens = any_entry.get("tokens_seen") if any_entry else None
        line = [item["row"] + ("" if item["table"] == name or name != "Table 8"
                               else f" ({item['table']})"),
                item["tokens"],
                (any_entry["cell"] + (" §" if moved else "")) if any_entry else "missing",
                _si(tokens) if tokens is not None and pd.notna(tokens) else ""]
        record = {"row": item["row"], "recipe": recipe, "point": point,
                  "cell": any_entry["cell"] if any_entry else None, "tokens_seen": tokens}
        for suite in suites:
            entry = found[suite]
            paper_value = item["paper"].get(suite)
            ours = "n/a" if entry is None and paper_value is None else format_entry(entry)
            line += [ours, "—" if paper_value is None else f"{paper_value:.1f}"]
            record.update({f"{suite}_ours": entry["score"] if entry else np.nan,
                           f"{suite}_low": entry["low"] if entry else np.nan,
                           f"{suite}_high": entry["high"] if entry else np.nan,
                           f"{suite}_status": entry["status"] if entry else "missing",
                           f"{suite}_paper": np.nan if paper_value is None else paper_value / 100})
        rows.append(line)
        data.append(record)
    extra = ("The paper's random EAI-Eval baseline 32.9 is AO's plotting-script convention; ours "
             "is the mean of Table 5's chance levels over the tasks scored (33.36 for all 31; "
             "Table 5 prints 33.3).") if name in ("Table 3", "Table 8") else ""
    return Table(name.lower().replace(" ", ""), f"{TABLE_TITLES[name]}, ours at {scale}",
                 caption(scale, replicates, extra), columns, rows, pd.DataFrame(data))


def _si(value: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:.0f}"


# The paper's findings (PAPER.md 4.1-4.3) as comparisons: (finding, point, A, [B, ...]).
FINDINGS = (
    ("Finding 1: CD:FLM is best right after pretraining", "1", "cd_flm", ("nd_plm", "ed_plm")),
    ("Finding 2: ED:MLM is best after MTF", "1", "ed_mlm > ed_mtf",
     ("cd_flm > cd_mtf", "nd_plm > nd_mtf", "ed_plm > ed_mtf", "cd_mlm > cd_mtf",
      "nd_mlm > nd_mtf")),
    ("Finding 3: NC-A then MTF beats continued CD:FLM", "1+", "cd_flm > nd_mlm > nd_mtf",
     ("cd_flm > cd_flm > cd_mtf", "cd_flm > cd_flm > nd_mtf")),
    # Not a finding of the paper's but what its Tables 3 and 8 show side by side (PAPER.md 4.1,
    # 4.2): each pretraining after multitask finetuning against itself before.
    *(("What MTF did: each pretraining after MTF against itself before", "1",
       f"{pair} > {pair[:2]}_mtf", (pair,))
      for pair in ("cd_flm", "nd_plm", "ed_plm", "cd_mlm", "nd_mlm", "ed_mlm")),
)


def differences(entries: pd.DataFrame, reps: bootstrap.Replicates, scale: str) -> Table:
    """The paper's findings as paired bootstrap differences (points), with a plain verdict."""
    columns = ["finding", "suite", "A", "B", "A − B, ours", "95% interval", "verdict",
               "A − B, paper"]
    rows, data = [], []
    for finding, point, a, others in FINDINGS:
        for b in others:
            for suite in reference.SUITES:
                ea, eb = (_lookup(entries, scale, r, point, suite) for r in (a, b))
                pa, pb = (reference.paper_value(r, point, suite) for r in (a, b))
                paper = f"{pa - pb:+.1f}" if pa is not None and pb is not None else ""
                if not (ea and eb and ea["status"] == eb["status"] == "done"):
                    missing = [r for r, e in ((a, ea), (b, eb)) if not e or e["status"] != "done"]
                    rows.append([finding, reference.SUITE_TITLES[suite], a, b, "", "",
                                 "not available: no results for " + ", ".join(missing), paper])
                    continue
                ra, rb = entry_replicates(ea, reps), entry_replicates(eb, reps)
                low, high = bootstrap.interval(ra - rb) if ra is not None and rb is not None \
                    else (np.nan, np.nan)
                diff = bootstrap.Difference((scale, ea["cell"], suite), (scale, eb["cell"], suite),
                                            ea["score"] - eb["score"], low, high,
                                            ea["method"] == eb["method"] == "bootstrap",
                                            bootstrap.LEVEL)
                rows.append([finding, reference.SUITE_TITLES[suite], ea["cell"], eb["cell"],
                             f"{100 * diff.estimate:+.1f}",
                             f"[{100 * low:+.1f}, {100 * high:+.1f}]" if np.isfinite(low) else "",
                             diff.verdict, paper])
                data.append({"finding": finding, "suite": suite, "a": ea["cell"], "b": eb["cell"],
                             "difference": diff.estimate, "low": low, "high": high,
                             "paired": diff.paired, "verdict": diff.verdict,
                             "paper": (pa - pb) / 100 if paper else np.nan})
    return Table("differences", f"The paper's findings, tested on ours at {scale}",
                 caption(scale, reps.replicates, "A − B in points of accuracy; the verdict reads "
                         "the paired interval of the difference."), columns, rows,
                 pd.DataFrame(data))


def findings_summary(differences_table: Table, scale: str, replicates: int) -> Table:
    """One line per (finding, suite) of ``differences``: how many of its comparisons put A ahead,
    B ahead or neither (the paired interval holding 0), what that says of the finding at this
    scale, and the widest interval's half-width, beside the paper's differences."""
    columns = ["finding", "suite", "comparisons", "A ahead", "B ahead", "unresolved",
               "at this scale", "widest ± (points)", "A − B, paper"]
    rows, data = [], []
    frame = differences_table.data
    if frame.empty:
        return Table("findings", f"The paper's findings in one line each, ours at {scale}",
                     caption(scale, replicates), columns, rows, pd.DataFrame())
    for (finding, suite), group in frame.groupby(["finding", "suite"], sort=False):
        a = int((group["low"] > 0).sum())
        b = int((group["high"] < 0).sum())
        n, unresolved = len(group), len(group) - a - b
        if not finding.startswith("Finding"):
            verdict = (f"A ahead of B in {a}, behind in {b}, no resolvable difference in "
                       f"{unresolved}")
        elif a == n:
            verdict = "holds"
        elif b == n:
            verdict = "reversed"
        elif a and b:
            verdict = "mixed: A ahead in some comparisons, behind in others"
        elif a:
            verdict = "holds in part: A ahead or tied"
        elif b:
            verdict = "does not hold: A behind or tied"
        else:
            verdict = "unresolved: every interval holds 0"
        widest = float(((group["high"] - group["low"]) / 2).max())
        paper = group["paper"].dropna()
        paper_text = (f"{100 * paper.min():+.1f} to {100 * paper.max():+.1f}" if len(paper) > 1
                      else f"{100 * paper.iloc[0]:+.1f}" if len(paper) else "")
        rows.append([finding, reference.SUITE_TITLES[suite], str(n), str(a), str(b),
                     str(unresolved), verdict, f"{100 * widest:.1f}", paper_text])
        data.append({"finding": finding, "suite": suite, "comparisons": n, "a_ahead": a,
                     "b_ahead": b, "unresolved": unresolved, "verdict": verdict,
                     "widest_half_width": widest})
    return Table("findings", f"The paper's findings in one line each, ours at {scale}",
                 caption(scale, replicates, "Counts the comparisons of the next table: A ahead "
                         "where the 95% paired interval of A − B lies above 0, B ahead where it "
                         "lies below. A finding holds at this scale when A is ahead in every "
                         "comparison; the paper's column is the range of its own A − B."),
                 columns, rows, pd.DataFrame(data))


def families(data: RunData, entries: pd.DataFrame, reps: bootstrap.Replicates, scale: str,
             suite: str = "t0") -> Table:
    """A suite by T0's held-out task families (``reference.T0_FAMILIES``): per cell, each family's
    mean over its datasets (T0-Eval: each the median over its prompts; EAI-Eval: its one prompt,
    on the family's datasets that EAI-Eval holds, all but StoryCloze), its interval over examples
    (seeds pooled, as the cell's aggregate), and how many families lie above chance (the interval's
    lower end above the family's mean chance)."""
    chance = reference.task_random(suite)
    scores = aggregate.task_scores(data.frame)
    scores = scores[(scores["scale"] == scale) & (scores["suite"] == suite)]
    members = {f: tuple(t for t in tasks if t in chance)
               for f, tasks in reference.T0_FAMILIES.items()}
    randoms = {f: float(np.mean([chance[t] for t in tasks])) for f, tasks in members.items()}
    columns = ["cell", *(f"{f} (random {_pct(randoms[f])})" for f in members),
               "families above chance"]
    rows, data_rows = [], []
    done = entries[(entries["scale"] == scale) & (entries["suite"] == suite) &
                   (entries["status"] == "done")]
    for entry in done.to_dict("records"):
        keys = entry_keys(entry)
        line, above = [entry["cell"]], 0
        for family, tasks in members.items():
            mine = scores[scores["run"].isin([k[0] for k in keys]) &
                          (scores["cell"] == entry["cell"]) & scores["task"].isin(tasks)]
            if mine.empty:
                line.append("")
                continue
            score = float(mine.groupby("run")["value"].mean().mean())  # datasets, then seeds
            scored = [t for t in tasks if t in set(mine["task"])]
            per_seed = [reps.subset(key, scored) for key in keys]
            per_seed = [r for r in per_seed if r is not None]
            low, high = bootstrap.interval(np.mean(per_seed, axis=0) if per_seed else None)
            random = float(mine.groupby("run")["random"].mean().mean())  # the datasets scored
            verdict = ("above" if low > random else "below" if high < random else "at chance")
            above += verdict == "above"
            line.append(f"{_pct(score)} [{_pct(low)}, {_pct(high)}]"
                        + (" ↑" if verdict == "above" else " ↓" if verdict == "below" else ""))
            data_rows.append({"cell": entry["cell"], "family": family, "score": score,
                              "low": low, "high": high, "random": random,
                              "datasets": int(mine["task"].nunique()), "verdict": verdict})
        rows.append([*line, f"{above} of {len(members)}"])
    per_dataset = ("the median over prompts" if suite == "t0" else
                   "its one prompt (EAI-Eval holds every dataset of the families but StoryCloze)")
    return Table("families" if suite == "t0" else f"families_{suite}",
                 f"{reference.SUITE_TITLES[suite]} by held-out task family, ours at {scale}",
                 caption(scale, reps.replicates, "A family's score is the mean over its datasets "
                         f"of {per_dataset}; ↑ / ↓: its interval lies above / below the mean "
                         "chance of its datasets."), columns, rows, pd.DataFrame(data_rows))


def per_task(data: RunData, reps: bootstrap.Replicates, scale: str) -> Table:
    """Every task of every cell (lm-eval's make_table layout): value, interval, chance, n."""
    tasks = aggregate.task_scores(data.frame)
    tasks = tasks[tasks["scale"] == scale]
    bounds = bootstrap.task_intervals(reps)
    tasks = tasks.merge(bounds, on=["run", "cell", "suite", "task"], how="left",
                        suffixes=("", "_ci"))
    columns = ["run", "cell", "suite", "task", "metric", "value %", "95% interval", "random %",
               "normalised", "prompts", "n"]
    rows = [[r.run, r.cell, reference.SUITE_TITLES[r.suite], r.task,
             "median acc over prompts" if r.suite == "t0" else "acc", _pct(r.value),
             f"[{_pct(r.low_ci)}, {_pct(r.high_ci)}]" if np.isfinite(r.low_ci) else "",
             _pct(r.random), f"{r.normalised:+.3f}" if np.isfinite(r.normalised) else "",
             str(r.prompts), "" if pd.isna(r.n) else str(int(r.n))]
            for r in tasks.itertuples(index=False)]
    return Table("per_task", f"Per task, ours at {scale}", caption(scale, reps.replicates),
                 columns, rows, tasks)


def per_prompt(data: RunData, scale: str) -> Table:
    """Every T0-Eval prompt of every cell: accuracy and examples scored (Figure 8's numbers)."""
    frame = data.frame[(data.frame["suite"] == "t0") & (data.frame["scale"] == scale)]
    columns = ["run", "cell", "dataset", "prompt", "accuracy %", "random %", "n"]
    rows = [[r.run, r.cell, r.task, r.prompt, _pct(r.value), _pct(r.random),
             "" if pd.isna(r.n) else str(int(r.n))] for r in frame.itertuples(index=False)]
    return Table("per_prompt", f"T0-Eval per prompt, ours at {scale}",
                 f"Ours at scale: {scale}. The median over a dataset's prompts is its score.",
                 columns, rows, frame[["run", "cell", "task", "prompt", "value", "random", "n"]])


def compute_table(data: RunData, scale: str) -> Table:
    """Per training stage: steps, tokens seen and trained on, FLOPs, time, throughput, MFU."""
    frame = data.compute
    skipped = 0
    if not frame.empty:
        frame = frame[frame["scale"] == scale]
        shown = frame["status"].ne("pending") | frame["steps_done"].notna()
        skipped = int((~shown).sum())
        frame = frame[shown]
    columns = ["run", "stage", "status", "kind", "steps", "tokens seen", "tokens trained",
               "FLOPs", "train s", "wall s", "TFLOP/s", "MFU"]

    def number(value, fmt):
        return "" if value is None or pd.isna(value) else fmt(value)
    rows = [[r.run, r.stage, r.status, number(r.kind, str), number(r.steps_done, lambda v: f"{v:.0f}"),
             number(r.tokens_seen, _si), number(r.tokens_trained, _si),
             number(r.flops, lambda v: f"{v:.3g}"), number(r.train_seconds, lambda v: f"{v:.1f}"),
             number(r.wall_seconds, lambda v: f"{v:.1f}"),
             number(r.tflops_per_second, lambda v: f"{v:.3g}"),
             number(r.mfu, lambda v: f"{100 * v:.1f}%")]
            for r in frame.itertuples(index=False)] if not frame.empty else []
    return Table("compute", f"Compute per training stage, ours at {scale}",
                 f"Ours at scale: {scale}. From metrics.jsonl (tokens, the model FLOPs per second "
                 "and step times; FLOPs are analytic model FLOPs) and events.jsonl (wall time of "
                 "every attempt, start to end). MFU = achieved FLOP/s over the peak the grid file "
                 "states (compute.peak_tflops); empty where none is recorded."
                 + (f" {skipped} pending stages not shown." if skipped else ""),
                 columns, rows, frame)


def all_tables(data: RunData, reps: bootstrap.Replicates,
               entries: Optional[pd.DataFrame] = None) -> dict[str, list[Table]]:
    """scale -> its tables: Tables 3, 6, 7, 8, the findings, the families on each suite, per task,
    per prompt, compute."""
    entries = summarize(data, reps) if entries is None else entries
    scales = list(dict.fromkeys(data.runs["scale"])) if not data.runs.empty else []
    out = {}
    for scale in scales:
        tables = [paper_table(name, entries, scale, reps.replicates) for name in PAPER_TABLES]
        findings = differences(entries, reps, scale)
        tables += [findings_summary(findings, scale, reps.replicates), findings,
                   families(data, entries, reps, scale),
                   families(data, entries, reps, scale, "eai"), per_task(data, reps, scale),
                   per_prompt(data, scale), compute_table(data, scale)]
        out[scale] = tables
    return out


def as_entries(paper: Optional[pd.DataFrame] = None, scale: str = reference.PAPER_LABEL
               ) -> pd.DataFrame:
    """The paper's published results as if they were ours: entries ``paper_table`` reads (tests:
    fed these, a table reproduces the paper's numbers exactly)."""
    paper = reference.results() if paper is None else paper
    rows = []
    for r in paper.itertuples(index=False):
        rows.append({"scale": scale, "cell": f"{r.recipe}@{r.point}", "suite": r.suite,
                     "recipe": r.recipe, "point": r.point, "label": r.row, "kind": r.kind,
                     "mtf": "mtf" in r.recipe, "status": "done", "runs": 1, "seeds": 1,
                     "error": None, "score": r.value / 100, "low": np.nan, "high": np.nan,
                     "method": "none", "random": np.nan, "normalised": np.nan, "seed_sd": np.nan,
                     "tokens_seen": np.nan, "step": None, "limit": None, "complete": True,
                     "group_key": "", "groups": 1})
    return pd.DataFrame(rows)


__all__ = ["Table", "summarize", "paper_table", "differences", "findings_summary", "families",
           "per_task", "per_prompt", "compute_table", "all_tables", "as_entries", "format_entry",
           "entry_replicates"]
