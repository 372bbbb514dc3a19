"""EAI-Eval (PAPER.md 3.1, 3.1b): the study's 31 zero-shot datasets through lm-evaluation-harness 0.4.13.

The suite lives in ``harness/eval/suites/eai_eval.yaml`` (names, metrics, random baselines, notes). Each task
runs with lm-eval's own task config, read straight from its YAML under ``lm_eval/tasks/`` (``!function``
helpers resolve next to that YAML), so building the full task index (~15 s, DEPS.md) is never needed.

Offline, the data come from local JSONL in each dataset's own hub schema::

    DATA_DIR/<dataset path as lm-eval names it>/<config name, or "default">/<split>.jsonl
    e.g. DATA_DIR/aps/super_glue/cb/validation.jsonl, DATA_DIR/facebook/anli/default/test_r1.jsonl

and the task config swaps only its data source for ``dataset_path: json`` with
``dataset_kwargs: {data_files: {split: path}}``; prompts, ``process_docs`` and metrics stay lm-eval's.
:func:`export` writes that layout from the hub on a machine with network; :func:`make_fixture` writes
the small synthetic copy the tests run on (``harness/eval/suites/fixtures/eai/``).

Public API: :data:`TASKS`, :func:`load_suite`, :func:`evaluate`, :func:`summarize`,
:func:`format_summary`, :func:`task_config`, :func:`build_task`, :func:`local_data_file`,
:func:`export_split`, :func:`export`, :func:`make_fixture`, :func:`per_example_scores`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

SUITE_FILE = Path(__file__).resolve().parent / "suites" / "eai_eval.yaml"
FIXTURE_DIR = Path(__file__).resolve().parent / "suites" / "fixtures" / "eai"


class EvalDataError(ValueError):
    """A dataset the suite needs is not available (missing local file, offline hub, wrong schema)."""


@dataclass(frozen=True)
class SuiteTask:
    """One EAI-Eval dataset: how the study named it and how lm-eval 0.4.13 runs it."""

    task: str                  # lm-eval 0.4.13 task name
    study_name: str            # the name in AO's eval_harness.sh
    lm_eval_yaml: str          # relative to lm_eval/tasks/
    metric: str                # the metric summarised (acc, or exact_match)
    random_baseline: float     # PAPER Table 5, %
    ao_baseline: float         # AO plot_eai_eval.py RANDOM_BASELINE, fraction
    fields: tuple[str, ...]    # dataset fields lm-eval's processing reads
    note: str = ""
    local_dataset: str | None = None   # layout path where lm-eval's dataset_path is not a hub id


@dataclass(frozen=True)
class Suite:
    """The parsed suite file."""

    tasks: tuple[SuiteTask, ...]
    aggregate: Mapping[str, Any]
    lm_eval_version: str

    def by_name(self) -> dict[str, SuiteTask]:
        """Task lookup by lm-eval name and by study name (``sst`` -> ``sst2``, ``lambada``)."""
        names = {t.study_name: t for t in self.tasks}
        names.update({t.task: t for t in self.tasks})
        return names


def load_suite(path: str | os.PathLike = SUITE_FILE) -> Suite:
    """Reads and checks the suite file.

    Raises:
        ValueError: the file is malformed (unknown or missing keys, duplicate names).
    """
    raw = yaml.safe_load(Path(path).read_text())
    tasks = []
    allowed = set(SuiteTask.__dataclass_fields__)
    for entry in raw["tasks"]:
        unknown = set(entry) - allowed
        if unknown:
            raise ValueError(f"{path}: task {entry.get('task')!r} has unknown keys {sorted(unknown)}; "
                             f"allowed: {sorted(allowed)}")
        missing = {"task", "study_name", "lm_eval_yaml", "metric", "random_baseline", "ao_baseline",
                   "fields"} - set(entry)
        if missing:
            raise ValueError(f"{path}: task {entry.get('task')!r} lacks keys {sorted(missing)}")
        tasks.append(SuiteTask(**{**entry, "fields": tuple(entry["fields"])}))
    names = [t.task for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate task names in {names}")
    return Suite(tuple(tasks), raw.get("aggregate", {}), str(raw.get("lm_eval_version", "")))


SUITE = load_suite()
TASKS: tuple[str, ...] = tuple(t.task for t in SUITE.tasks)   # the 31 lm-eval task names


def resolve_tasks(tasks: str | Sequence[str] | None = None) -> list[SuiteTask]:
    """Suite tasks for ``tasks`` (lm-eval or study names, a list or one comma-separated string).

    ``None`` means all 31, in suite order.

    Raises:
        ValueError: one line naming the unknown names and listing the valid ones.
    """
    if tasks is None:
        return list(SUITE.tasks)
    if isinstance(tasks, str):
        tasks = [name for name in tasks.split(",")]
    requested = [name.strip() for name in tasks if name.strip()]
    if not requested:
        raise ValueError(f"tasks: no task names given; valid EAI-Eval tasks: {', '.join(TASKS)}")
    lookup = SUITE.by_name()
    unknown = [name for name in requested if name not in lookup]
    if unknown:
        raise ValueError(f"tasks: unknown EAI-Eval task(s) {', '.join(map(repr, unknown))}; valid: "
                         f"{', '.join(TASKS)} (study names sst, lambada also accepted)")
    selected: list[SuiteTask] = []
    for name in requested:
        if lookup[name] not in selected:
            selected.append(lookup[name])
    return selected


# ---------------------------------------------------------------------------------------------------
# lm-eval task configs, with the data source swapped for local JSONL
# ---------------------------------------------------------------------------------------------------

def lm_eval_tasks_dir() -> Path:
    """The directory of lm-eval's task YAMLs."""
    import lm_eval.tasks
    return Path(lm_eval.tasks.__file__).resolve().parent


def lm_eval_config(task: SuiteTask, *, resolve_functions: bool = True) -> dict[str, Any]:
    """lm-eval's own config for ``task`` (includes merged; ``!function`` resolved when asked)."""
    from lm_eval.tasks._yaml_loader import load_yaml
    return load_yaml(lm_eval_tasks_dir() / task.lm_eval_yaml, resolve_func=resolve_functions)


def eval_split(config: Mapping[str, Any]) -> str:
    """The split lm-eval scores: the test split when the task has one, else validation."""
    split = config.get("test_split") or config.get("validation_split")
    if not split:
        raise ValueError(f"lm-eval task {config.get('task')!r} has neither a test nor a validation "
                         f"split")
    return split


def dataset_id(task: SuiteTask, config: Mapping[str, Any]) -> tuple[str, str]:
    """(dataset path, config name or "default") of ``task``, as the local layout names it."""
    if task.local_dataset:
        return task.local_dataset, "default"
    return config["dataset_path"], config.get("dataset_name") or "default"


def local_data_file(data_dir: str | os.PathLike, task: SuiteTask | str, split: str | None = None,
                    ) -> Path:
    """``DATA_DIR/<dataset path>/<config or default>/<split>.jsonl`` for ``task``.

    ``split`` defaults to the split lm-eval scores (:func:`eval_split`).
    """
    task = resolve_tasks([task])[0] if isinstance(task, str) else task
    config = lm_eval_config(task, resolve_functions=False)
    path, name = dataset_id(task, config)
    return Path(data_dir) / path / name / f"{split or eval_split(config)}.jsonl"


def hf_offline() -> bool:
    """Whether Hugging Face offline mode is on (``HF_DATASETS_OFFLINE`` or ``HF_HUB_OFFLINE``)."""
    return any(os.environ.get(key, "").strip().lower() in ("1", "true", "yes", "on")
               for key in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def _how_to_provide(task: SuiteTask) -> str:
    return (f"write it with harness.eval.eai_eval.export(DATA_DIR, tasks=[{task.task!r}]) on a machine with "
            f"network (one JSON object per line in the hub schema, with at least "
            f"{', '.join(task.fields)})")


def _check_local_file(task: SuiteTask, path: Path) -> None:
    """The first row of a local split has the fields lm-eval's processing reads."""
    with path.open(encoding="utf-8") as handle:
        first = handle.readline()
    if not first.strip():
        raise EvalDataError(f"{path}: empty; EAI-Eval task {task.task} needs at least one example")
    try:
        row = json.loads(first)
    except json.JSONDecodeError as err:
        raise EvalDataError(f"{path}: line 1 is not JSON ({err.msg}); expected one JSON object per "
                            f"line") from None
    missing = [field for field in task.fields if not isinstance(row, dict) or field not in row]
    if missing:
        raise EvalDataError(f"{path}: line 1 lacks field(s) {', '.join(missing)} that lm-eval's "
                            f"{task.task} reads; write the dataset in its hub schema "
                            f"({', '.join(task.fields)})")


def task_config(task: SuiteTask | str, data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """lm-eval's config for ``task``; with ``data_dir``, reading the splits found there.

    Only the data source changes: ``dataset_path: json`` with ``data_files`` for each of the task's
    splits that exists locally, and the splits that do not exist set to ``None`` (zero-shot needs
    only the scored split; few-shot examples would come from a local training split when present).

    Raises:
        EvalDataError: the scored split is missing locally and the machine is offline, or the file
            lacks the fields the task reads.
    """
    task = resolve_tasks([task])[0] if isinstance(task, str) else task
    config = lm_eval_config(task)
    if data_dir is None:
        return config
    scored = eval_split(config)
    path = local_data_file(data_dir, task, scored)
    if not path.is_file():
        if hf_offline():
            raise EvalDataError(f"EAI-Eval task {task.task}: no local copy of dataset "
                                f"{'/'.join(dataset_id(task, config))} at {path} and Hugging Face is "
                                f"offline; {_how_to_provide(task)}")
        logger.warning("%s: %s not found; reading %s from the Hugging Face hub", task.task, path,
                       config.get("dataset_path"))
        return config
    _check_local_file(task, path)
    data_files = {}
    for key in ("training_split", "validation_split", "test_split"):
        split = config.get(key)
        if split is None:
            continue
        split_path = local_data_file(data_dir, task, split)
        if split_path.is_file():
            data_files[split] = str(split_path)
        else:
            config[key] = None
    config.update(dataset_path="json", dataset_name=None, dataset_kwargs={"data_files": data_files})
    return config


def build_task(task: SuiteTask | str, data_dir: str | os.PathLike | None = None):
    """An lm-eval ``ConfigurableTask`` for ``task`` with its dataset loaded.

    Raises:
        EvalDataError: the data cannot be read (offline with no local copy, missing fields).
    """
    from lm_eval.api.task import ConfigurableTask

    task = resolve_tasks([task])[0] if isinstance(task, str) else task
    config = task_config(task, data_dir)
    local = data_dir is not None and local_data_file(data_dir, task).is_file()
    for key in ("tag", "group", "task_list"):        # structural keys, as lm-eval's factory drops them
        config.pop(key, None)
    try:
        return ConfigurableTask(config=config)
    except OSError as err:        # datasets' and huggingface_hub's offline / not-found errors
        if local:
            raise
        source = lm_eval_config(task, resolve_functions=False)
        wanted = "/".join(dataset_id(task, source)) + f"/{eval_split(source)}.jsonl"
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise EvalDataError(f"EAI-Eval task {task.task}: cannot load its dataset from the Hugging Face "
                            f"hub ({type(err).__name__}: {detail}); offline, give a data dir holding "
                            f"DIR/{wanted}: {_how_to_provide(task)}") from None


# ---------------------------------------------------------------------------------------------------
# Running the suite
# ---------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _no_bootstrap_pool():
    """lm-eval bootstraps some stderrs (F1, perplexity) in a fork()ed pool: unsafe in a JAX process."""
    previous = os.environ.get("DISABLE_MULTIPROC")
    os.environ["DISABLE_MULTIPROC"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("DISABLE_MULTIPROC", None)
        else:
            os.environ["DISABLE_MULTIPROC"] = previous


@contextlib.contextmanager
def _templates_compiled_once():
    """lm-eval renders every prompt with ``utils.apply_template``, which compiles its Jinja
    template from the string each time: 2,605 compiles of a few dozen templates in one EAI-Eval of
    the tiny grid, which took 6.0-6.8 s warm and takes 4.0-4.3 s with each compiled once. While
    active, each template is compiled once; the environment and the rendering are lm-eval's own."""
    from lm_eval import utils

    original = utils.apply_template
    compiled = functools.lru_cache(maxsize=None)(utils.env.from_string)

    def apply_template(template: str, doc: dict) -> str:
        return compiled(template).render(**doc)

    utils.apply_template = apply_template
    try:
        yield
    finally:
        utils.apply_template = original


def _json_safe(value: Any) -> Any:
    """A JSON round trip: functions by qualified name, the rest by lm-eval's own fallback (numpy
    scalars -> numbers, sets -> lists, anything else -> str)."""
    from lm_eval.utils import handle_non_serializable

    def default(obj):
        if callable(obj) and hasattr(obj, "__qualname__"):     # stable, unlike repr's address
            return f"{getattr(obj, '__module__', '')}.{obj.__qualname__}"
        return handle_non_serializable(obj)
    return json.loads(json.dumps(value, default=default))


def evaluate(lm, *, data_dir: str | os.PathLike | None = None, tasks: str | Sequence[str] | None = None,
             limit: int | float | None = None, log_samples: bool = False,
             bootstrap_iters: int = 1000, fewshot_seed: int = 1234) -> dict[str, Any]:
    """Runs EAI-Eval zero-shot on ``lm`` (any lm-eval ``LM``) and returns lm-eval's raw results.

    Args:
        lm: an ``lm_eval.api.model.LM`` (e.g. ``harness.eval.lm_eval_adapter.ArchobjLM``).
        data_dir: local data root (see the module docstring); ``None`` reads the Hugging Face hub.
        tasks: lm-eval or study names (default: all 31).
        limit: lm-eval's ``limit``: at most this many documents per task (a fraction if < 1).
        log_samples: keep lm-eval's per-document records under ``samples`` (large for full runs);
            the per-document scores alone are always kept under ``per_example``
            (:func:`per_example_scores`).
        bootstrap_iters: lm-eval's bootstrap draws for the stderrs without a closed form (F1,
            perplexity); accuracy stderrs are closed-form. 0 drops every stderr.
        fewshot_seed: lm-eval's few-shot sampler seed (unused at zero shots; recorded).

    Returns:
        JSON-serialisable lm-eval output (``results``, ``configs``, ``versions``, ``n-shot``,
        ``higher_is_better``, ``n-samples``, ...) plus ``eai_eval``: the suite tasks, data sources and
        settings of this run, and ``per_example``: each task's per-document scores.

    Raises:
        ValueError: unknown task names, bad ``limit``; EvalDataError: data not available.
    """
    import lm_eval
    from lm_eval.api.model import LM
    from lm_eval.evaluator import evaluate as lm_eval_evaluate

    if not isinstance(lm, LM):
        raise TypeError(f"lm: expected an lm_eval.api.model.LM, got {type(lm).__name__}")
    if limit is not None and (isinstance(limit, bool) or not limit > 0):
        raise ValueError(f"limit: must be a positive number of documents (or a fraction < 1), "
                         f"got {limit!r}")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise EvalDataError(f"data_dir: {data_dir} is not a directory; it should hold <dataset path>/"
                            f"<config or default>/<split>.jsonl (written by harness.eval.eai_eval.export)")
    selected = resolve_tasks(tasks)
    built = {}
    with _templates_compiled_once():
        for task in selected:              # every dataset is loaded before the model runs at all
            lm_task = build_task(task, data_dir)
            lm_task.set_config(key="num_fewshot", value=0)
            lm_task.set_fewshot_seed(seed=fewshot_seed)
            built[task.task] = lm_task
        # lm_eval.evaluator.evaluate with a task dict: what simple_evaluate runs, without its
        # TaskManager (the full index) and its environment report (imports torch, shells out to
        # collect_env).
        with _no_bootstrap_pool():
            # Samples are always logged: the per-document scores they hold are kept (compactly)
            # for analysis/'s bootstrap; the full records only when asked for.
            raw = lm_eval_evaluate(lm=lm, task_dict={"tasks": built, "groups": {}, "group_map": {}},
                                   limit=limit, bootstrap_iters=bootstrap_iters, log_samples=True)
    # lm-eval returns None on ranks other than 0 (its multi-process runs): nothing to report there.
    raw = dict(raw) if raw is not None else {}
    samples = raw.pop("samples", None) if not log_samples else raw.get("samples")
    results = _json_safe(raw)
    if samples is not None:
        results["per_example"] = per_example_scores(samples, {t.task: t.metric for t in selected})
    results["eai_eval"] = {
        "suite": "eai_eval",
        "tasks": [t.task for t in selected],
        "lm_eval_version": getattr(lm_eval, "__version__", ""),
        "model": type(lm).__name__,
        "limit": limit,
        "num_fewshot": 0,
        "bootstrap_iters": bootstrap_iters,
        "data": {name: _data_source(task) for name, task in built.items()},
    }
    return results


def per_example_scores(samples: Mapping[str, Sequence[Mapping[str, Any]]],
                       metrics: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The per-document scores of lm-eval's logged samples, compactly, for bootstrap intervals.

    Args:
        samples: lm-eval's ``samples`` (task -> one record per document and filter).
        metrics: task -> the metric the suite summarises (``acc``, ``exact_match``).

    Returns:
        task -> ``{"metric", "filter", "doc_id": [...], "value": [...]}``, sorted by ``doc_id``:
        the value lm-eval averaged into the task's metric (1.0 / 0.0 for accuracy), under the
        ``none`` filter where there is one (as :func:`summarize` reads the metric).
    """
    compact = {}
    for task, records in samples.items():
        metric = metrics.get(task)
        records = [r for r in records if metric in r]
        if not records:
            continue
        filters = sorted({str(r.get("filter")) for r in records}, key=lambda f: (f != "none", f))
        chosen = sorted((r for r in records if str(r.get("filter")) == filters[0]),
                        key=lambda r: r["doc_id"])
        compact[task] = {"metric": metric, "filter": filters[0],
                         "doc_id": [int(r["doc_id"]) for r in chosen],
                         "value": [float(r[metric]) for r in chosen]}
    return compact


def _data_source(lm_task) -> str:
    """Where a built task's data came from: the local files, or the hub dataset."""
    config = lm_task.config
    if config.dataset_path == "json" and config.dataset_kwargs:
        files = config.dataset_kwargs.get("data_files", {})
        return ", ".join(str(path) for path in files.values())
    return f"hf:{config.dataset_path}" + (f"/{config.dataset_name}" if config.dataset_name else "")


# ---------------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------------

def _metric(task_results: Mapping[str, Any], metric: str) -> tuple[float | None, float | None]:
    """(value, stderr) of ``metric`` under any filter (``none`` first) in one task's lm-eval results."""
    keys = sorted((k for k in task_results if k.split(",")[0] == metric),
                  key=lambda k: (k.split(",", 1)[-1] != "none", k))
    if not keys:
        return None, None
    value = task_results[keys[0]]
    stderr = task_results.get(keys[0].replace(f"{metric},", f"{metric}_stderr,", 1))
    stderr = stderr if isinstance(stderr, (int, float)) and math.isfinite(stderr) else None
    return (float(value) if isinstance(value, (int, float)) else None), stderr


def summarize(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per-task rows and the suite aggregate from :func:`evaluate`'s output, in percent.

    Returns:
        One row per suite task present in ``results`` (suite order): ``task``, ``study_name``,
        ``metric``, ``accuracy``, ``stderr`` (None if lm-eval gave none), ``random_baseline``
        (PAPER Table 5), ``n`` (documents scored), ``note``, ``kind`` = ``"task"``. Then one
        aggregate row (``task`` = ``"mean"``, ``kind`` = ``"aggregate"``): the unweighted mean over
        the tasks run and the mean of their baselines; ``complete`` says whether all 31 datasets are
        in it (then it is the paper's EAI-Eval average).
    """
    per_task = results.get("results", {})
    n_samples = results.get("n-samples", {})
    rows = []
    for task in SUITE.tasks:
        if task.task not in per_task:
            continue
        value, stderr = _metric(per_task[task.task], task.metric)
        samples = n_samples.get(task.task, {})
        rows.append({
            "task": task.task, "study_name": task.study_name, "metric": task.metric,
            "accuracy": None if value is None else 100.0 * value,
            "stderr": None if stderr is None else 100.0 * stderr,
            "random_baseline": task.random_baseline,
            "n": samples.get("effective", samples.get("original")),
            "note": task.note, "kind": "task",
        })
    scored = [row for row in rows if row["accuracy"] is not None]
    if scored:
        rows.append({
            "task": "mean", "study_name": "EAI-Eval" if len(scored) == len(SUITE.tasks) else
            f"{len(scored)} of {len(SUITE.tasks)} tasks", "metric": "unweighted mean",
            "accuracy": sum(row["accuracy"] for row in scored) / len(scored), "stderr": None,
            "random_baseline": sum(row["random_baseline"] for row in scored) / len(scored),
            "n": len(scored), "note": "", "kind": "aggregate",
            "complete": len(scored) == len(SUITE.tasks),
        })
    return rows


def format_summary(rows: Iterable[Mapping[str, Any]]) -> str:
    """A plain-text table of :func:`summarize`'s rows."""
    def pct(value):
        return "-" if value is None else f"{value:.1f}"
    lines = [f"{'task':<16}{'study name':<22}{'metric':<16}{'acc %':>8}{'+/-':>7}{'random %':>10}"
             f"{'n':>7}"]
    for row in rows:
        lines.append(f"{row['task']:<16}{row['study_name']:<22}{row['metric']:<16}"
                     f"{pct(row['accuracy']):>8}{pct(row['stderr']):>7}{pct(row['random_baseline']):>10}"
                     f"{'' if row['n'] is None else row['n']:>7}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Preparing an offline machine
# ---------------------------------------------------------------------------------------------------

def export_split(rows: Iterable[Mapping[str, Any]], data_dir: str | os.PathLike, dataset_path: str,
                 config_name: str | None, split: str) -> Path:
    """Writes one split (a Hugging Face ``Dataset`` or any iterable of dicts) into the local layout.

    Returns:
        The file written: ``data_dir/dataset_path/(config_name or "default")/split.jsonl``.
    """
    path = Path(data_dir) / dataset_path / (config_name or "default") / f"{split}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(dict(row), ensure_ascii=False) + "\n")
    tmp.replace(path)                      # never leave a half-written split behind
    return path


def export(data_dir: str | os.PathLike, tasks: str | Sequence[str] | None = None,
           splits: str = "eval") -> list[Path]:
    """Downloads the suite's datasets from the hub (as lm-eval loads them) into the local layout.

    Args:
        data_dir: the root to write.
        tasks: lm-eval or study names (default: all 31).
        splits: ``"eval"``: the scored split only (enough for zero-shot); ``"all"``: every split
            the task config names.

    Returns:
        The files written.
    """
    import datasets

    if splits not in ("eval", "all"):
        raise ValueError(f"splits: {splits!r}; allowed: 'eval', 'all'")
    written = []
    for task in resolve_tasks(tasks):
        config = lm_eval_config(task, resolve_functions=False)
        kwargs = dict(config.get("dataset_kwargs") or {})
        kwargs.pop("trust_remote_code", None)
        dataset = datasets.load_dataset(path=config["dataset_path"], name=config.get("dataset_name"),
                                        **kwargs)
        # Media columns (HEAD-QA's image) are not JSON and no EAI-Eval prompt reads them.
        media = [column for column, feature in next(iter(dataset.values())).features.items()
                 if isinstance(feature, (datasets.Image, datasets.Audio))]
        if media:
            dataset = dataset.remove_columns(media)
        wanted = [eval_split(config)] if splits == "eval" else sorted(
            {config[key] for key in ("training_split", "validation_split", "test_split")
             if config.get(key)})
        path, name = dataset_id(task, config)
        for split in wanted:
            written.append(export_split(dataset[split], data_dir, path, name, split))
    return written


# ---------------------------------------------------------------------------------------------------
# Synthetic fixture (tests; never copied from the real datasets)
# ---------------------------------------------------------------------------------------------------

def make_fixture(out_dir: str | os.PathLike = FIXTURE_DIR) -> list[Path]:
    """Writes the synthetic fixture: a few examples of every suite dataset in its hub schema.

    Returns:
        The files written, one per task (``out_dir`` in the local-data layout).
    """
    written = []
    rows = _fixture_rows()
    for task in SUITE.tasks:
        config = lm_eval_config(task, resolve_functions=False)
        path, name = dataset_id(task, config)
        written.append(export_split(rows[task.task], out_dir, path, name, eval_split(config)))
    return written


# The rows below are synthetic sentences written for this project, in each dataset's hub schema
# (field names and label encodings as on the hub), with just the fields lm-eval's processing reads
# plus the cheap identifying ones. Labels vary so every class occurs.
_PEOPLE = ("Mara", "Tobin", "Ilse", "Ravi")
_PLACES = ("harbour", "library", "orchard", "bakery")
_THINGS = ("lantern", "kettle", "bicycle", "notebook")


def _nli_rows(offset: int) -> list[dict[str, Any]]:
    """ANLI-style rows: label 0 entailment, 1 neutral, 2 contradiction."""
    rows = []
    for i, (person, place, thing) in enumerate(zip(_PEOPLE, _PLACES, _THINGS)):
        label = (i + offset) % 3
        hypothesis = (f"{person} went to the {place}.", f"{person} bought the {thing} last spring.",
                      f"{person} stayed at home all day.")[label]
        rows.append({"uid": f"synthetic-{offset}-{i}",
                     "premise": f"On Tuesday {person} carried a {thing} to the {place} and left it "
                                f"there.",
                     "hypothesis": hypothesis, "label": label, "reason": ""})
    return rows


def _choice_question_rows(questions, numbered: bool = False) -> list[dict[str, Any]]:
    """ARC / OpenBookQA-style rows: ``choices {text, label}`` and an ``answerKey``."""
    rows = []
    for i, (question, options, answer) in enumerate(questions):
        labels = [str(k + 1) for k in range(4)] if numbered and i == 3 else list("ABCD")
        rows.append({"id": f"Synthetic_{i}", "question": question,
                     "choices": {"text": list(options), "label": labels}, "answerKey": labels[answer]})
    return rows


_SCIENCE = (
    ("Which instrument is used to measure the temperature of air?",
     ("a ruler", "a thermometer", "a magnet", "a compass"), 1),
    ("What do green plants take in from the air to make their food?",
     ("carbon dioxide", "helium", "sand", "smoke"), 0),
    ("Which object is pulled toward a magnet?", ("a glass marble", "a wooden spoon", "an iron nail",
                                                 "a paper cup"), 2),
    ("What happens to liquid water when it is cooled below its freezing point?",
     ("it becomes steam", "it glows", "it turns into sand", "it becomes ice"), 3),
)


def _fixture_rows() -> dict[str, list[dict[str, Any]]]:
    """Synthetic rows for every suite task (a few each), keyed by lm-eval task name."""
    people, places, things = _PEOPLE, _PLACES, _THINGS
    rows: dict[str, list[dict[str, Any]]] = {}
    rows["anli_r1"], rows["anli_r2"], rows["anli_r3"] = _nli_rows(0), _nli_rows(1), _nli_rows(2)
    rows["arc_challenge"] = _choice_question_rows(_SCIENCE[::-1], numbered=True)
    rows["arc_easy"] = _choice_question_rows(_SCIENCE)
    rows["boolq"] = [
        {"question": f"does the {place} open before noon", "passage":
         f"The {place} in the old town opens at {hour} o'clock and closes at sunset.",
         "idx": i, "label": int(hour < 12)}
        for i, (place, hour) in enumerate(zip(places, (8, 14, 9, 15)))]
    rows["cb"] = [
        {"premise": f"{person} said that the {thing} was in the {place}. Nobody doubted her.",
         "hypothesis": (f"the {thing} was in the {place}", f"the {thing} was not in the {place}",
                        f"the {thing} was new")[i % 3], "idx": i, "label": i % 3}
        for i, (person, place, thing) in enumerate(zip(people, places, things))]
    copa = (("The kettle whistled on the stove.", "effect", "Mara poured the tea.",
             "Mara planted a tree."),
            ("The lantern went dark.", "cause", "Its handle was painted.", "Its oil ran out."),
            ("Tobin's bicycle tyre was flat.", "cause", "He rode over a nail.", "He read a book."),
            ("Ilse dropped the notebook in the rain.", "effect", "Its cover was polished.",
             "Its pages got wet."))
    rows["copa"] = [{"premise": premise, "choice1": first, "choice2": second, "question": question,
                     "idx": i, "label": int(i in (1, 3))}
                    for i, (premise, question, first, second) in enumerate(copa)]
    rows["headqa_en"] = [
        {"name": "Synthetic_2024_1", "year": "2024", "category": "biology", "qid": i + 1,
         "qtext": question, "ra": answer + 1,
         "answers": [{"aid": k + 1, "atext": text} for k, text in enumerate(options)]}
        for i, (question, options, answer) in enumerate(_SCIENCE)]
    hellaswag = (("Making tea", "A woman fills a kettle with water.", "then she",
                  ("paints the kettle blue.", "puts the kettle on the stove.", "throws it away.",
                   "sings to the cup.")),
                 ("Riding a bike", "A boy checks the tyres of his bicycle.", "he",
                  ("pumps air into the back tyre.", "eats the bicycle.", "folds it into a box.",
                   "swims across the road.")),
                 ("Home and Garden", "[header] How to water an orchard [title] Check the soil.",
                  "you should",
                  ("paint the trees.", "sell the orchard.", "water the dry patches first.",
                   "remove all the leaves.")),
                 ("Reading", "A man opens a notebook at the library.", "he",
                  ("burns the shelves.", "leaves the city.", "sleeps on the roof.",
                   "writes a few notes on the first page.")))
    rows["hellaswag"] = [
        {"ind": i, "activity_label": label, "ctx_a": ctx_a, "ctx_b": ctx_b, "ctx": f"{ctx_a} {ctx_b}",
         "endings": list(endings), "source_id": f"synthetic~{i}", "split": "val",
         "split_type": "indomain", "label": str(answer)}
        for i, ((label, ctx_a, ctx_b, endings), answer) in enumerate(zip(hellaswag, (1, 0, 2, 3)))]
    rows["lambada_openai"] = [
        {"text": f"{person} had left her {thing} at the {place}. When night fell she walked all the "
                 f"way back to the {place} to fetch the {thing}"}
        for person, place, thing in zip(people, places, things)]
    rows["logiqa"] = []
    for i, (person, place) in enumerate(zip(people, places)):
        options = [f"{person} signed the book.", f"{person} owns the {place}.",
                   f"{person} never visits the {place}.", "The book is empty."]
        rows["logiqa"].append({        # the right option (listed first above) rotated to position i
            "label": "abcd"[i], "context": f"Every visitor to the {place} signs the book. {person} "
                                          f"visited the {place} yesterday.",
            "question": "Which of the following must be true?", "options": options[-i:] + options[:-i]})
    mathqa = (("a baker fills 3 trays with 5 rolls each . how many rolls are there ?", 15, "b"),
              ("a lantern burns 2 litres of oil per night . how much oil does it burn in 6 nights ?",
               12, "a"),
              ("a cyclist rides 9 km each day for 4 days . how far does the cyclist ride ?", 36, "d"),
              ("a notebook has 40 pages and 25 are used . how many pages are left ?", 15, "c"))
    rows["mathqa"] = []
    for problem, value, correct in mathqa:
        wrong = iter((value + 2, value + 5, value + 9))
        options = " , ".join(f"{letter} ) {value if letter == correct else next(wrong)}"
                             for letter in "abcd")
        rows["mathqa"].append({
            "Problem": problem, "Rationale": f"\"the answer is {value}\"",
            "options": options + " , e ) none of these", "correct": correct,
            "annotated_formula": f"answer({value})", "linear_formula": f"answer({value})|",
            "category": "general"})
    rows["mrpc"] = [
        {"sentence1": f"{person} left the {thing} at the {place} on Monday.",
         "sentence2": (f"On Monday, {person} left the {thing} at the {place}." if i % 2 else
                       f"{person} bought a new {thing} in the city."), "label": i % 2, "idx": i}
        for i, (person, place, thing) in enumerate(zip(people, places, things))]
    paragraph = ("Mara keeps a lantern at the harbour. Every evening she lights it for the fishing "
                 "boats. Tobin repairs the lantern when it breaks.")
    multirc = (("Where does Mara keep the lantern?", "At the harbour", 1),
               ("Where does Mara keep the lantern?", "In the bakery", 0),
               ("Who repairs the lantern?", "Tobin", 1), ("Who repairs the lantern?", "Ilse", 0))
    rows["multirc"] = [
        {"paragraph": paragraph, "question": question, "answer": answer,
         "idx": {"paragraph": 0, "question": i // 2, "answer": i}, "label": label}
        for i, (question, answer, label) in enumerate(multirc)]
    rows["openbookqa"] = [
        {"id": f"synthetic-{i}", "question_stem": question[0].lower() + question[1:-1],
         "choices": {"text": list(options), "label": list("ABCD")}, "answerKey": "ABCD"[answer]}
        for i, (question, options, answer) in enumerate(_SCIENCE)]
    piqa = (("To keep tea warm for longer,", "cover the cup with a saucer.",
             "leave the cup on the window sill.", 0),
            ("To fix a flat bicycle tyre,", "paint the tyre black.", "patch the tube and pump it up.",
             1),
            ("To find a book in a library,", "look up its number in the catalogue.",
             "shake every shelf.", 0),
            ("To stop a notebook page from tearing,", "fold it many times.",
             "put tape along the edge.", 1))
    rows["piqa"] = [{"goal": goal, "sol1": first, "sol2": second, "label": label}
                    for goal, first, second, label in piqa]
    rows["prost"] = [
        {"A": things[0], "B": things[1], "C": things[2], "D": things[3],
         "context": f"A {things[0]}, a {things[1]}, a {things[2]} and a {things[3]} are dropped from "
                    f"the same height.",
         "question": f"Which object is the {'heaviest lightest heaviest lightest'.split()[i]}?",
         "ex_question": f"Which object is the {'heaviest lightest heaviest lightest'.split()[i]}?",
         "group": "mass", "label": (2, 3, 2, 3)[i], "name": f"synthetic_{i}"}
        for i in range(4)]
    pubmed = (("Does daily walking lower resting heart rate?", "yes"),
              ("Does the colour of a lantern change sleep quality?", "no"),
              ("Is reading before bed linked to longer sleep?", "maybe"))
    rows["pubmedqa"] = [
        {"QUESTION": question, "CONTEXTS": [f"A synthetic cohort of {40 + 10 * i} adults was followed "
                                            f"for one year.", "Outcomes were measured monthly."],
         "LABELS": ["METHODS", "RESULTS"], "MESHES": ["Adult", "Humans"], "YEAR": "2024",
         "reasoning_required_pred": decision, "reasoning_free_pred": decision,
         "final_decision": decision, "LONG_ANSWER": f"The synthetic answer is {decision}."}
        for i, (question, decision) in enumerate(pubmed)]
    rows["qnli"] = [
        {"question": f"Where did {person} leave the {thing}?",
         "sentence": (f"{person} left the {thing} at the {place}." if i % 2 == 0 else
                      f"The {place} closes at six."), "label": i % 2, "idx": i}
        for i, (person, place, thing) in enumerate(zip(people, places, things))]
    rows["qqp"] = [
        {"question1": f"How do I clean a {thing}?",
         "question2": (f"What is the best way to clean a {thing}?" if i % 2 else
                       f"Where can I buy a {thing}?"),
         "label": i % 2, "idx": i} for i, thing in enumerate(things)]
    rows["race"] = []
    for i, (person, place, thing) in enumerate(zip(people, places, things)):
        problems = [
            {"answer": "ABCD"[i], "options": list(places), "question":
             f"Where did {person} go?"},
            {"answer": "ABCD"[i], "options": list(things[1:] + things[:1]),
             "question": f"{person} carried a  _  ."},
            {"answer": "ABCD"[(i + 2) % 4], "options": ["Monday", "Tuesday", "Friday", "Sunday"],
             "question": "On which day did the story happen?"}]
        rows["race"].append({
            "article": f"On {problems[2]['options'][(i + 2) % 4]} {person} carried a "
                       f"{things[(i + 1) % 4]} to the {places[i]}. It was a long walk.",
            "problems": repr(problems)})      # a Python-literal string on the hub (ast.literal_eval)
    rows["rte"] = [
        {"sentence1": f"{person} carried a {thing} to the {place} on Tuesday.",
         "sentence2": (f"{person} was at the {place}." if i % 2 == 0 else f"{person} lost the {thing}."),
         "label": i % 2, "idx": i}
        for i, (person, place, thing) in enumerate(zip(people, places, things))]
    rows["sciq"] = [
        {"question": question, "distractor3": options[(answer + 3) % 4], "distractor1":
         options[(answer + 1) % 4], "distractor2": options[(answer + 2) % 4],
         "correct_answer": options[answer],
         "support": "" if i == 0 else f" A short synthetic note: {question[:-1].lower()}."}
        for i, (question, options, answer) in enumerate(_SCIENCE)]
    rows["sst2"] = [
        {"sentence": sentence, "label": label, "idx": i}
        for i, (sentence, label) in enumerate((
            ("a warm and gentle story about a lighthouse keeper . ", 1),
            ("the plot drags and the jokes fall flat . ", 0),
            ("a bright , funny film with a big heart . ", 1),
            ("dull , long and forgettable . ", 0)))]
    trivia = (("Which instrument measures air temperature?", "Thermometer",
               ["Thermometer", "A thermometer"]),
              ("What is frozen water called?", "Ice", ["Ice", "Water ice"]),
              ("Which gas do plants take in to make food?", "Carbon dioxide",
               ["Carbon dioxide", "CO2"]))
    rows["triviaqa"] = [
        {"question": question, "question_id": f"synthetic_{i}", "question_source": "synthetic",
         "answer": {"aliases": aliases, "normalized_aliases": [a.lower() for a in aliases],
                    "matched_wiki_entity_name": "", "normalized_matched_wiki_entity_name": "",
                    "normalized_value": value.lower(), "type": "WikipediaEntity", "value": value}}
        for i, (question, value, aliases) in enumerate(trivia)]
    rows["webqs"] = [
        {"url": f"http://example.org/synthetic_{i}", "question": question, "answers": answers}
        for i, (question, answers) in enumerate((("what do plants take in to make food?",
                                                  ["Carbon dioxide", "Carbon dioxide gas"]),
                                                 ("what is frozen water called?", ["Ice"]),
                                                 ("what measures air temperature?",
                                                  ["Thermometer", "Weather thermometer"])))]
    wic = (("light", "She will light the lantern at dusk.", "Please light the fire in the bakery.", 1),
           ("light", "The bicycle is light enough to carry.", "Turn on the light in the library.", 0),
           ("book", "Mara read the book twice.", "We should book a table at the bakery.", 0),
           ("ring", "The bell will ring at noon.", "Ring the bell when the boats return.", 1))
    rows["wic"] = []
    for i, (word, first, second, label) in enumerate(wic):
        start1, start2 = first.lower().index(word), second.lower().index(word)
        rows["wic"].append({"word": word, "sentence1": first, "sentence2": second,
                            "start1": start1, "start2": start2, "end1": start1 + len(word),
                            "end2": start2 + len(word), "idx": i, "label": label})
    rows["winogrande"] = [
        {"sentence": f"{a} lent the {thing} to {b} because _ {reason}.", "option1": a, "option2": b,
         "answer": answer}
        for (a, b, thing), (reason, answer) in zip(
            zip(people, people[1:] + people[:1], things),
            (("had no use for it that week", "1"), ("needed it for the trip", "2"),
             ("was leaving town", "1"), ("had lost their own", "2")))]
    rows["wnli"] = [
        {"sentence1": f"The {thing} would not fit in the box because it was too big.",
         "sentence2": f"The {'box' if i % 2 == 0 else thing} was too big.", "label": i % 2, "idx": i}
        for i, thing in enumerate(things)]
    rows["wsc"] = []
    for i, (person, other, thing) in enumerate(zip(people, people[1:] + people[:1], things)):
        text = f"{person} gave the {thing} to {other} because {'she' if i % 2 else 'he'} wanted it."
        words = text.split()
        referent = other if i % 2 else person
        rows["wsc"].append({"text": text, "span1_index": words.index(referent.split()[0]),
                            "span2_index": 7, "span1_text": referent, "span2_text": words[7],
                            "idx": i, "label": int(i % 2 == 1)})
    return rows
