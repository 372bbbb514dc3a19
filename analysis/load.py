"""One loader: run directories and lm-eval result files -> one tidy table (and what goes with it).

    data = load(["runs/tiny", "runs/tiny_seed1", "other_lab/results_2024.json"])
    data.frame      # one row per (run, cell, suite, task, prompt, metric): the tidy table
    data.cells      # one row per (run, cell, suite) the grid planned: status, recipe, point, seed
    data.examples   # (run, cell, suite, task, prompt) -> (example ids, per-example values)
    data.compute    # one row per training stage: tokens, FLOPs, wall time, MFU
    data.curves     # metrics.jsonl: the training loss against global tokens seen (Figure 6)
    data.runs       # one row per run: its path, grid, scale and pretraining steps

What it reads (and nothing else):

- a **grid directory** (``runs/<grid>``, written by ``archobj grid``): ``index.json`` for the stages
  and cells, each stage directory's ``events.jsonl``/lock (status, via ``harness.grid.state``),
  ``config.json``, ``metrics.jsonl``, ``provenance.json`` and an evaluation stage's
  ``results/<suite>.json``; a directory holding grid directories is read as each of them;
- an **archobj run directory** (``archobj train`` + ``archobj eval``): ``eval/step_<N>/<suite>.json``;
- **plain lm-eval output** (a JSON file with ``results``, or a directory of them): both the older
  ``results[task]["acc"]`` / ``"acc_stderr"`` shape and the current ``"acc,none"`` /
  ``"acc_stderr,none"`` one; per-document scores from ``samples`` where it logged them.

Values are fractions in [0, 1] (lm-eval's and T0-Eval's own unit); ``random`` is the task's chance
accuracy (``analysis.reference``). ``scale`` is the grid file's ``scale`` string as recorded in the
grid directory's ``index.json``, else the one in ``experiments/<grid>.yaml`` (said so in
``scale_source``), else a description derived from the stages' configs.

Imports neither JAX nor TensorFlow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import re
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from analysis import cells as cells_lib
from analysis import reference
from harness.grid import state   # standard library only: status from events and locks
from harness.train.config import flatten as _flatten   # JAX-free: the run config's dotted keys

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"
FRAME_COLUMNS = ("run", "scale", "cell", "stage", "suite", "task", "prompt", "metric", "value",
                 "stderr", "n", "random", "step", "tokens_seen", "seed", "group", "recipe", "point",
                 "limit")
CELL_COLUMNS = ("run", "scale", "cell", "suite", "status", "stage", "recipe", "point", "pair",
                "architecture", "mtf", "kind", "label", "step", "tokens_seen", "seed", "group",
                "limit", "error", "has_results", "per_example")
_STAGE_DIR = re.compile(r"^(?P<name>.+)-(?P<id>[0-9a-f]{8})$")
# Config fields that differ between replicates of one cell (the seed) or that do not change results
# (paths, names, logging): cells equal in everything else are replicates of each other.
_NOT_IN_GROUP = ("name", "run_dir", "stage.init_from", "train.seed", "data.seed",
                 "train.log_every", "eval.every", "eval.suites")
_NOT_IN_GROUP_PREFIXES = ("checkpoint.",)


@dataclasses.dataclass
class RunData:
    """Everything ``load`` read; see the module docstring."""

    frame: pd.DataFrame
    cells: pd.DataFrame
    examples: dict[tuple[str, str, str, str, str], tuple[np.ndarray, np.ndarray]]
    compute: pd.DataFrame
    curves: pd.DataFrame
    runs: pd.DataFrame


def load(paths: str | pathlib.Path | Sequence[str | pathlib.Path]) -> RunData:
    """Reads run directories and result files into one ``RunData``.

    Args:
      paths: grid directories, directories of grid directories (``--runs`` roots), archobj run
        directories, lm-eval result JSON files or directories of them; one or a list.

    Raises:
      ValueError: one line: a path that does not exist, or paths with no results and no grid.
    """
    if isinstance(paths, (str, pathlib.Path)):
        paths = [paths]
    if not paths:
        raise ValueError("no run directory given; pass a grid directory such as runs/tiny")
    parts = _Collector()
    for path in map(pathlib.Path, paths):
        if not path.exists():
            raise ValueError(f"{path}: no such file or directory; pass a grid directory (runs/"
                             "<grid>), a runs root, an archobj run directory or an lm-eval "
                             "results JSON")
        found = _discover(path)
        if not found:
            raise ValueError(f"{path}: holds no results: no grid (index.json or stage "
                             "directories), no archobj run directory with eval/step_*/<suite>.json"
                             " and no lm-eval results JSON")
        for kind, item in found:
            if kind == "grid":
                _read_grid(item, parts)
            elif kind == "run":
                _read_run_dir(item, parts)
            else:
                _read_plain_file(item, parts)
    return parts.finish()


# ------------------------------------------------------------------------------------ discovery

def _is_grid(path: pathlib.Path) -> bool:
    if (path / "index.json").is_file():
        return True
    return any(_STAGE_DIR.match(p.name) and (p / "events.jsonl").is_file()
               for p in path.iterdir() if p.is_dir())


def _is_lm_eval(path: pathlib.Path) -> bool:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(document, dict) and isinstance(document.get("results"), dict)


def _discover(path: pathlib.Path) -> list[tuple[str, pathlib.Path]]:
    if path.is_file():
        return [("file", path)] if _is_lm_eval(path) else []
    if _is_grid(path):
        return [("grid", path)]
    if (path / "config.json").is_file() and any((path / "eval").glob("*/*.json")):
        return [("run", path)]
    found: list[tuple[str, pathlib.Path]] = []
    for child in sorted(path.iterdir()):
        if child.is_dir() and not child.is_symlink() and _is_grid(child):
            found.append(("grid", child))
        elif child.is_dir() and (child / "config.json").is_file() and \
                any((child / "eval").glob("*/*.json")):
            found.append(("run", child))
        elif child.suffix == ".json" and _is_lm_eval(child):
            found.append(("file", child))
    return found


# ------------------------------------------------------------------------------------- readers

def _read_jsonl(path: pathlib.Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue          # a line cut short by a crash
        if isinstance(record, dict):
            records.append(record)
    return records


def _eai_metrics() -> dict[str, Any]:
    from harness.eval import eai_eval   # YAML only: the suite's names and metrics, no lm-eval

    return eai_eval.SUITE.by_name()


def _task_metric(values: Mapping[str, Any], metric: str) -> tuple[Optional[float], Optional[float]]:
    """(value, stderr) of ``metric`` in one task's lm-eval results: ``acc,none`` (lm-eval >= 0.4,
    the ``none`` filter first) or ``acc`` (older lm-eval)."""
    keys = sorted((k for k in values if k.split(",")[0] == metric),
                  key=lambda k: (k.split(",", 1)[-1] != "none", "," not in k, k))
    for key in keys:
        value = values[key]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            stderr_key = (key.replace(f"{metric},", f"{metric}_stderr,", 1) if "," in key
                          else f"{metric}_stderr")
            stderr = values.get(stderr_key)
            stderr = float(stderr) if isinstance(stderr, (int, float)) and np.isfinite(stderr) \
                else None
            return float(value), stderr
    return None, None


def eai_rows(document: Mapping[str, Any]) -> tuple[list[dict[str, Any]],
                                                   dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Per-task rows and per-document scores of an lm-eval (or archobj EAI-Eval) result document.

    Tasks of the suite (by lm-eval or study name, ``sst`` -> ``sst2``) are ``suite="eai"`` with the
    suite's metric; other tasks are ``suite="other"`` with ``acc`` where they have it.
    """
    suite_tasks = _eai_metrics()
    random = reference.task_random("eai")
    rows, examples = [], {}
    per_example = document.get("per_example") or {}
    samples = document.get("samples") or {}
    counts = document.get("n-samples") or {}
    for name, values in (document.get("results") or {}).items():
        if not isinstance(values, dict):
            continue
        known = suite_tasks.get(name)
        task = known.task if known else name
        metric = known.metric if known else "acc"
        value, stderr = _task_metric(values, metric)
        if value is None:
            continue
        record = per_example.get(name) or per_example.get(task)
        if record is None and samples.get(name):
            from harness.eval import eai_eval

            record = eai_eval.per_example_scores({name: samples[name]}, {name: metric}).get(name)
        n = (counts.get(name) or {}).get("effective")
        if record is not None:
            examples[task] = (np.asarray(record["doc_id"], dtype=np.int64),
                              np.asarray(record["value"], dtype=np.float64))
            n = len(record["doc_id"])
        rows.append({"suite": "eai" if known else "other", "task": task, "prompt": "",
                     "metric": metric, "value": value, "stderr": stderr,
                     "n": n if n is not None else values.get("sample_len"),
                     "random": random.get(task, np.nan)})
    return rows, examples


def t0_rows(document: Mapping[str, Any]) -> tuple[list[dict[str, Any]],
                                                  dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]]:
    """Per-prompt rows and per-example scores of a T0-Eval result document (``t0.json``)."""
    random = reference.task_random("t0")
    rows, examples = [], {}
    for dataset, result in (document.get("datasets") or {}).items():
        for prompt, scores in (result.get("prompts") or {}).items():
            if scores.get("accuracy") is None:
                continue
            rows.append({"suite": "t0", "task": dataset, "prompt": prompt, "metric": "acc",
                         "value": float(scores["accuracy"]), "stderr": None,
                         "n": scores.get("num_scored"), "random": random.get(dataset, np.nan)})
            if "correct" in scores and "examples" in scores:
                examples[(dataset, prompt)] = (np.asarray(scores["examples"], dtype=np.int64),
                                               np.asarray(scores["correct"], dtype=np.float64))
    return rows, examples


class _Collector:
    """Rows gathered from every source, turned into ``RunData`` once."""

    def __init__(self) -> None:
        self.frame: list[dict[str, Any]] = []
        self.cells: list[dict[str, Any]] = []
        self.examples: dict[tuple[str, str, str, str, str], tuple[np.ndarray, np.ndarray]] = {}
        self.compute: list[dict[str, Any]] = []
        self.curves: list[dict[str, Any]] = []
        self.runs: list[dict[str, Any]] = []
        self.names: set[str] = set()

    def run_name(self, path: pathlib.Path) -> str:
        """The run's name (its directory's), made unique with its parent's where two clash."""
        name = path.stem if path.is_file() else path.name
        if name in self.names:
            name = f"{path.parent.name}/{name}"
        while name in self.names:
            name += "'"
        self.names.add(name)
        return name

    def add_results(self, cell: Mapping[str, Any], suite: str, document: Mapping[str, Any]) -> bool:
        """Adds one result document's rows for ``cell``; returns whether it had per-example scores."""
        if suite == "t0":
            rows, examples = t0_rows(document)
            keyed = {(suite, task, prompt): value for (task, prompt), value in examples.items()}
        else:
            rows, examples = eai_rows(document)
            suites = {row["task"]: row["suite"] for row in rows}
            keyed = {(suites[task], task, ""): value for task, value in examples.items()}
        shared = {key: cell.get(key) for key in ("run", "scale", "cell", "stage", "step",
                                                  "tokens_seen", "seed", "group", "recipe",
                                                  "point", "limit")}
        for row in rows:
            self.frame.append({**shared, **row})
        for (row_suite, task, prompt), value in keyed.items():
            self.examples[(cell["run"], cell["cell"], row_suite, task, prompt)] = value
        return bool(rows) and len(keyed) == len(rows)

    def add_finished(self, cell: Mapping[str, Any], suite: str, document: Mapping[str, Any],
                     info: cells_lib.CellInfo, kind: str, label: str) -> None:
        """A cell outside a grid (a result file, a run directory's eval/): done, with results."""
        per_example = self.add_results(cell, suite, document)
        self.cells.append({**cell, "suite": suite, "status": "done", "pair": info.pair,
                           "architecture": info.architecture, "mtf": info.mtf, "kind": kind,
                           "label": label, "error": None, "has_results": True,
                           "per_example": per_example})

    def add_run(self, run: str, path: pathlib.Path, scale: str, source: str) -> None:
        """A run that is not a grid: no pretraining steps, no accelerator recorded."""
        self.runs.append({"run": run, "path": str(path), "grid": "", "scale": scale,
                          "scale_source": source, "pretrain_steps": None, "peak_tflops": None,
                          "accelerator": None})

    def finish(self) -> RunData:
        frame = pd.DataFrame(self.frame, columns=list(FRAME_COLUMNS))
        for column in ("value", "stderr", "random", "tokens_seen"):
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
        return RunData(frame=frame, cells=pd.DataFrame(self.cells, columns=list(CELL_COLUMNS)),
                       examples=self.examples, compute=pd.DataFrame(self.compute),
                       curves=pd.DataFrame(self.curves), runs=pd.DataFrame(self.runs))


def _read_plain_file(path: pathlib.Path, parts: _Collector) -> None:
    """A plain lm-eval result file: one cell, named after the model if the file says, else the file."""
    document = state.read_json(path)
    run = parts.run_name(path)
    config = document.get("config") or {}
    model = config.get("model_args") or config.get("model") or ""
    name = path.stem if not isinstance(model, str) or not model else \
        re.sub(r"[^\w.-]+", "_", model)[:60]
    info = cells_lib.parse_cell(name, None)
    scale = "unknown (a plain lm-eval result file)"
    cell = {"run": run, "scale": scale, "cell": name, "stage": path.name, "step": None,
            "tokens_seen": None, "seed": None, "group": f"{run}:{name}", "recipe": info.recipe,
            "point": info.point, "limit": (config.get("limit") if isinstance(config, dict) else None)}
    parts.add_finished(cell, "eai", document, info, "file", name)
    parts.add_run(run, path, scale, "none recorded")


def _read_run_dir(path: pathlib.Path, parts: _Collector) -> None:
    """An ``archobj train`` run directory with ``archobj eval`` results under ``eval/step_N/``."""
    run = parts.run_name(path)
    config = state.read_json(path / "config.json")
    flat = _flatten(config.get("run") or {})
    scale = _derived_scale([flat])
    info = cells_lib.parse_cell(path.name, None)
    for results in sorted(path.glob("eval/*/*.json")):
        suite = results.stem
        if suite not in reference.SUITES:
            continue
        document = state.read_json(results)
        meta = document.get("archobj") or {}
        step = meta.get("step")
        cell_name = f"{path.name}@{step}" if step is not None else path.name
        if results.parent.name != f"step_{step}":
            cell_name = f"{path.name}/{results.parent.name}"
        cell = {"run": run, "scale": scale, "cell": cell_name, "stage": results.parent.name,
                "step": step, "tokens_seen": None, "seed": flat.get("train.seed"),
                "group": f"{run}:{cell_name}", "recipe": info.recipe, "point": "",
                "limit": meta.get("limit")}
        parts.add_finished(cell, suite, document, info, "run", cell_name)
    parts.add_run(run, path, scale, "derived from config.json")


# ---------------------------------------------------------------------------------------- grids

@dataclasses.dataclass
class _Stage:
    name: str
    kind: str                       # train, eval, import
    directory: pathlib.Path
    cells: tuple[str, ...]
    status: str = "pending"
    error: Optional[str] = None
    config: dict[str, Any] = dataclasses.field(default_factory=dict)   # flat run config
    metrics: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    events: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)


def _grid_stages(grid: pathlib.Path) -> dict[str, _Stage]:
    """The grid's stages from ``index.json`` (the newest plan), else from its directories."""
    index = state.read_json(grid / "index.json")
    stages: dict[str, _Stage] = {}
    for row in index.get("stages") or []:
        name = str(row.get("stage"))
        directory = grid / str(row.get("directory", name))
        if not directory.exists() and (grid / name).exists():
            directory = (grid / name).resolve()
        kind = row.get("kind") or ("eval" if re.search(r"\.(eai|t0)$", name) else "train")
        cells = tuple(c.strip() for c in str(row.get("cells") or "").split(",") if c.strip())
        stages[name] = _Stage(name, kind, directory, cells)
    if stages:
        return stages
    for directory in sorted(grid.iterdir()):      # no index: the stage directories themselves
        match = _STAGE_DIR.match(directory.name)
        if not match or not directory.is_dir() or directory.is_symlink():
            continue
        name = match.group("name")
        pointer = grid / name
        if name in stages and not (pointer.is_symlink() and pointer.resolve() == directory.resolve()):
            continue
        suite = re.search(r"\.(eai|t0)$", name)
        kind = "eval" if suite else ("train" if (directory / "config.json").exists() else "import")
        stages[name] = _Stage(name, kind, directory, (name[:suite.start()],) if suite else ())
    return stages


def _checkpoint_stage(checkpoint: str, names: Iterable[str]) -> tuple[Optional[str], Optional[int]]:
    """The training stage a checkpoint name (a cell) lives in, and the global step, from its name:
    ``cd_flm_64`` -> (cd_flm, 64); ``cd_mlm_15-cd_flm_16`` -> (itself, None: its end);
    ``x-nd_mlm_84@80`` -> (x-nd_mlm_84, 80)."""
    names = set(names)
    base, _, at = checkpoint.partition("@")
    if base in names:
        return base, int(at) if at.isdigit() else None
    match = re.match(r"^(.*)_(\d+)$", base)
    if match and match.group(1) in names:
        return match.group(1), int(match.group(2))
    return None, None


def _grid_info(grid: pathlib.Path, stages: Mapping[str, _Stage]) -> dict[str, Any]:
    """Scale, pretraining steps and the accelerator's peak, from where they are recorded."""
    index = state.read_json(grid / "index.json")
    configs = [s.config for s in stages.values() if s.config]
    pretrain = [c for c in configs if c.get("stage.kind") == "pretrain"]
    info: dict[str, Any] = {"scale": None, "scale_source": None, "peak_tflops": None,
                            "accelerator": None,
                            "pretrain_steps": pretrain[0].get("train.steps") if pretrain else None}
    compute = index.get("compute") if isinstance(index.get("compute"), dict) else {}
    if index.get("scale"):
        info.update(scale=str(index["scale"]), scale_source=f"{grid.name}/index.json")
    if index.get("pretrain_steps"):
        info["pretrain_steps"] = int(index["pretrain_steps"])
    grid_name = str(index.get("grid") or grid.name)
    if info["scale"] is None or not compute:
        for candidate in (grid_name, re.sub(r"_seed\d+$", "", grid_name),
                          grid_name.split("_")[0]):
            document = _grid_file(candidate)
            if document is None or not _grid_file_matches(document, pretrain, info):
                continue
            if info["scale"] is None and document.get("scale"):
                info.update(scale=str(document["scale"]),
                            scale_source=f"experiments/{candidate}.yaml (the grid directory does "
                                         "not record it)")
            compute = compute or (document.get("compute") or {})
            break
    if info["scale"] is None:
        info.update(scale=_derived_scale(configs), scale_source="derived from config.json")
    info["peak_tflops"] = compute.get("peak_tflops")
    info["accelerator"] = compute.get("accelerator")
    if info["pretrain_steps"] is None:
        info["pretrain_steps"] = cells_lib.pretrain_steps_from_names(
            [c for s in stages.values() for c in s.cells])
    return info


def _grid_file(name: str) -> Optional[dict[str, Any]]:
    path = EXPERIMENTS / f"{name}.yaml"
    if not path.is_file():
        return None
    import yaml

    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return document if isinstance(document, dict) and document.get("grid") == name else None


def _grid_file_matches(document: Mapping[str, Any], pretrain: Sequence[Mapping[str, Any]],
                       info: Mapping[str, Any]) -> bool:
    """Whether a grid file still describes these runs (it may have changed since they ran):
    the same pretraining steps and the same model preset as the runs' own configs."""
    steps = (document.get("pretrain") or {}).get("steps")
    if info.get("pretrain_steps") and steps != info["pretrain_steps"]:
        return False
    presets = {str((v or {}).get("model.preset")) for v in
               (document.get("architectures") or {}).values()}
    ran = {str(c.get("model.preset")) for c in pretrain}
    return not ran or ran <= presets


def _derived_scale(configs: Sequence[Mapping[str, Any]]) -> str:
    """``unrecorded scale: tiny preset, 2 layers x d_model 32, 64 pretraining steps x 8 x 64``."""
    pretrain = [c for c in configs if c.get("stage.kind") == "pretrain"] or list(configs)
    if not pretrain:
        return "unrecorded scale"
    c = pretrain[0]
    length = c.get("data.total_length") or ((c.get("data.inputs_length") or 0)
                                            + (c.get("data.targets_length") or 0))
    return (f"unrecorded scale: {c.get('model.preset') or 'custom'} model, {c.get('model.num_layers')}"
            f" layers x d_model {c.get('model.d_model')}, {c.get('train.steps')} pretraining steps "
            f"x {c.get('train.batch_size')} x {length} tokens (not the paper's)")


def _tokens_at(stage: _Stage, local_step: int) -> float:
    """Tokens the stage had seen at ``local_step``: metrics.jsonl, interpolated between logged
    steps; the nominal batch x length where nothing is logged."""
    points = [(0, 0.0)] + sorted((int(r["step"]), float(r["tokens_seen"])) for r in stage.metrics
                                 if "step" in r and "tokens_seen" in r)
    if len(points) > 1 and local_step <= points[-1][0]:
        steps, tokens = zip(*points)
        return float(np.interp(local_step, steps, tokens))
    c = stage.config
    length = c.get("data.total_length") or ((c.get("data.inputs_length") or 0)
                                            + (c.get("data.targets_length") or 0))
    per_step = (points[-1][1] / points[-1][0]) if len(points) > 1 else \
        float(c.get("train.batch_size") or 0) * float(length or 0)
    return points[-1][1] + per_step * (local_step - points[-1][0])


def _group_key(stage: _Stage, by_dir: Mapping[str, _Stage], local_step: Optional[int]) -> str:
    """A hash of everything that decides a checkpoint except the seed: replicates share it."""
    config = {k: v for k, v in stage.config.items()
              if k not in _NOT_IN_GROUP and not k.startswith(_NOT_IN_GROUP_PREFIXES)}
    upstream = by_dir.get(pathlib.Path(str(stage.config.get("stage.init_from") or "")).name)
    upstream_key = (_group_key(upstream, by_dir, stage.config.get("stage.init_step"))
                    if upstream is not None and upstream is not stage else None)
    text = json.dumps({"config": config, "step": local_step, "upstream": upstream_key},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _read_grid(grid: pathlib.Path, parts: _Collector) -> None:

    run = parts.run_name(grid)
    stages = _grid_stages(grid)
    for stage in stages.values():
        status = state.stage_status(stage.directory)
        stage.status, stage.error = status.state, status.error
        stage.events = state.read_events(stage.directory)
        stage.provenance = state.read_json(stage.directory / "provenance.json")
        if stage.kind == "train":
            stage.config = _flatten((state.read_json(stage.directory / "config.json").get("run") or {}))
            stage.metrics = _read_jsonl(stage.directory / "metrics.jsonl")
    by_dir = {s.directory.name: s for s in stages.values()}
    info = _grid_info(grid, stages)
    scale, pretrain_steps = info["scale"], info["pretrain_steps"]
    parts.runs.append({"run": run, "path": str(grid), "grid": grid.name, **info})

    # Global start and tokens seen before each training stage, upstream first.
    starts: dict[str, tuple[int, float]] = {}

    def start_of(stage: _Stage) -> tuple[int, float]:
        if stage.name in starts:
            return starts[stage.name]
        starts[stage.name] = (0, 0.0)           # guards a cycle in damaged files
        upstream = by_dir.get(pathlib.Path(str(stage.config.get("stage.init_from") or "")).name)
        step = int(stage.config.get("stage.init_step") or 0)
        if upstream is not None:
            up_start, up_tokens = start_of(upstream)
            starts[stage.name] = (up_start + step, up_tokens + _tokens_at(upstream, step))
        return starts[stage.name]

    upstream_of: dict[str, list[str]] = {}
    for stage in stages.values():
        if stage.kind == "eval":
            cell = stage.name.rsplit(".", 1)[0]
            parent, _ = _checkpoint_stage(cell, stages)
        else:
            parent, _ = _checkpoint_stage(stage.name.rsplit("-", 1)[0], stages) \
                if "-" in stage.name else (None, None)
        upstream_of[stage.name] = [parent] if parent else []
    derived = state.derive({n: s.status for n, s in stages.items()}, upstream_of)

    for stage in stages.values():
        if stage.kind == "train":
            _add_compute(parts, run, scale, stage, start_of(stage), info, derived[stage.name])
    for stage in stages.values():
        if stage.kind != "eval":
            continue
        cell_name, _, suite = stage.name.rpartition(".")
        train_name, global_step = _checkpoint_stage(cell_name, stages)
        train = stages.get(train_name) if train_name else None
        baseline = train is not None and train.kind == "import"
        info_cell = cells_lib.parse_cell(cell_name, pretrain_steps, baseline=baseline)
        record = stage.provenance.get("identity_record") or {}
        tokens = local = seed = None
        group = f"{run}:{cell_name}"
        if train is not None and train.kind == "train" and train.config:
            start, before = start_of(train)
            local = record.get("upstream_step")
            if local is None:
                local = (global_step - start) if global_step is not None else \
                    int(train.config.get("train.steps") or 0)
            tokens = before + _tokens_at(train, int(local))
            global_step = start + int(local)
            seed = train.config.get("train.seed")
            group = _group_key(train, by_dir, local) + f":{suite}"
        results = stage.directory / "results" / f"{suite}.json"
        document = state.read_json(results) if results.is_file() else {}
        limit = (document.get("archobj") or {}).get("limit")
        cell = {"run": run, "scale": scale, "cell": cell_name, "stage": stage.name,
                "step": global_step, "tokens_seen": tokens, "seed": seed, "group": group,
                "recipe": info_cell.recipe, "point": info_cell.point, "limit": limit}
        per_example = parts.add_results(cell, suite, document) if document else False
        parts.cells.append({**cell, "suite": suite, "status": derived[stage.name],
                            "pair": info_cell.pair, "architecture": info_cell.architecture,
                            "mtf": info_cell.mtf, "kind": info_cell.kind, "label": info_cell.label,
                            "error": stage.error, "has_results": bool(document),
                            "per_example": per_example})


def _add_compute(parts: _Collector, run: str, scale: str, stage: _Stage, start: tuple[int, float],
                 info: Mapping[str, Any], status: str) -> None:
    """One compute row and the loss curve of a training stage, from its metrics and events."""
    metrics = sorted((r for r in stage.metrics if "step" in r), key=lambda r: r["step"])
    global_start, tokens_before = start
    previous = 0
    train_seconds = flops = 0.0
    for record in metrics:
        window = int(record["step"]) - previous
        previous = int(record["step"])
        seconds = float(record.get("step_seconds") or 0.0) * window
        train_seconds += seconds
        flops += float(record.get("model_flops_per_second") or 0.0) * seconds
        parts.curves.append({"run": run, "stage": stage.name, "step": previous,
                             "global_step": global_start + previous,
                             "tokens_seen": tokens_before + float(record.get("tokens_seen", 0)),
                             "stage_tokens": float(record.get("tokens_seen", 0)),
                             "loss": record.get("loss"), "kind": stage.config.get("stage.kind"),
                             "architecture": stage.config.get("model.architecture"),
                             "objective": stage.config.get("data.objective")})
    last = metrics[-1] if metrics else {}
    peak = info.get("peak_tflops")
    parts.compute.append({
        "run": run, "scale": scale, "stage": stage.name, "status": status,
        "kind": stage.config.get("stage.kind"),
        "architecture": stage.config.get("model.architecture"),
        "objective": stage.config.get("data.objective"),
        "steps": stage.config.get("train.steps"), "steps_done": last.get("step"),
        "global_start": global_start, "tokens_seen": last.get("tokens_seen"),
        "tokens_trained": last.get("tokens_trained"), "flops": flops or None,
        "train_seconds": train_seconds or None, "wall_seconds": _wall_seconds(stage.events),
        "tflops_per_second": (flops / train_seconds / 1e12) if train_seconds else None,
        "mfu": (flops / train_seconds / (peak * 1e12)) if train_seconds and peak else None,
        "seed": stage.config.get("train.seed"),
    })


def _wall_seconds(events: Sequence[Mapping[str, Any]]) -> Optional[float]:
    """Seconds from each ``started`` event to the event that ended that attempt, summed."""
    import datetime

    total, start = 0.0, None
    for event in events:
        try:
            when = datetime.datetime.fromisoformat(event["time"])
        except (KeyError, TypeError, ValueError):
            continue
        if event.get("event") == "started":
            start = when
        elif start is not None and event.get("event") in ("finished", "failed", "interrupted",
                                                          "cancelled"):
            total += (when - start).total_seconds()
            start = None
    return total or None
