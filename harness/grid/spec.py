"""Grid files: the study as data (``experiments/*.yaml``), read and checked before anything runs.

A grid file names the models, the budgets and the stage recipes once, and lists its cells as
*chains*, each expanded over architectures or pairs, so that no cell is hand-copied::

    grid: paper
    scale: "the study's: 4.8B decoders, 11B encoder-decoder"
    architectures:                     # the model of each architecture (run-config keys)
      cd: {model.preset: paper-decoder}
      nd: {model.preset: paper-decoder}
      ed: {model.preset: paper-encdec}
    base: {data.source: c4, data.vocabulary: t5, train.batch_size: 2048}   # every training stage
    pairs: {ed_plm: {train.batch_size: 1024}}   # every stage training that pair (pretrain, adapt)
    pretrain:
      steps: 131072
      pairs: [cd_flm, cd_mlm, nd_plm, nd_mlm, ed_plm, ed_mlm]
    adapt: {set: {...}}                # adaptation stages (LM-A, NC-A, continued pretraining);
                                       # they read the corpus in a new order (plan.py's
                                       # ADAPT_DATA_SEED_OFFSET) unless this sets data.seed
    mtf: {steps: 10000, set: {data.objective: mtf, optim.schedule: constant, ...}}
    eval: {suites: [eai, t0]}
    cells:
      - chain: "{pair}@131072"                      # pretraining only, at 168B tokens
        for: {pair: [cd_flm, nd_plm, ed_plm]}
      - chain: "{arch}_mlm@30000 > {arch}_{lm}:32768 > {arch}_mtf"   # LM-A then MTF
        for: {arch: [cd, nd, ed]}
      - chain: "cd_flm@131072 > nd_mlm:171008+carry > nd_mtf"        # NC-A then MTF

A chain is links joined by ``>``:

``PAIR[@STEP]``      the first link: a pretraining run (``pretrain.pairs``) or a baseline
                     (``baselines``); ``@STEP`` takes its checkpoint at that step (default: its end).
``ARCH_OBJ:STEP``    adaptation: continue from the previous checkpoint as ``ARCH`` with objective
                     ``OBJ`` up to global step ``STEP`` (PAPER.md 1.3); ``+carry`` restores the
                     optimizer state, else the schedule continues from the branch step.
``ARCH_mtf``         multitask finetuning for ``mtf.steps`` steps (PAPER.md 1.3, 3.3).

A step may be a percentage of ``pretrain.steps`` (``cd_flm > nd_mlm:130%+carry``), so that a
variant with fewer steps keeps the chain's proportions.

Templates: ``{pair}``, ``{arch}``, ``{obj}`` and ``{lm}`` (the language-modelling objective of
``{arch}``: ``flm`` for cd, ``plm`` for nd and ed), expanded over the lists in ``for`` (``all``
means every pretraining pair). A cell evaluates its chain's last checkpoint on ``suites`` (default
``eval.suites``).

Every mistake is a one-line ``ValueError`` naming the file, the key and the fix, raised before
anything runs. This module reads YAML only: it imports neither JAX nor TensorFlow.
"""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
import re
from typing import Any, Mapping, Optional, Sequence

import yaml

from harness.train import config as config_lib
from objectives import tasks

ARCHITECTURES = ("cd", "nd", "ed")
LM_OBJECTIVE = {"cd": "flm", "nd": "plm", "ed": "plm"}  # PAPER.md 1.2, 1.3a
SUITES = config_lib.EVAL_SUITES
TOP_KEYS = ("grid", "scale", "runs", "architectures", "base", "pairs", "pretrain", "adapt", "mtf",
            "eval", "compute", "baselines", "cells", "slurm", "world", "variants")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")
_TEMPLATE = re.compile(r"\{(\w+)\}")


@dataclasses.dataclass(frozen=True)
class Link:
    """One link of a chain (see the module docstring)."""

    kind: str                      # "pretrain", "baseline", "adapt" or "mtf"
    architecture: Optional[str]    # None for a baseline
    objective: Optional[str]       # "flm", "plm", "mlm", "mtf"; None for a baseline
    name: str                      # the pair ("cd_flm"), the baseline, or "nd_mtf"
    at: Optional[int] = None       # take this link's checkpoint at this global step
    until: Optional[int] = None    # adapt: the global step it trains to
    carry: bool = False            # adapt: carry the optimizer state


@dataclasses.dataclass(frozen=True)
class Cell:
    """One experiment row: a chain of links, evaluated at its end."""

    chain: tuple[Link, ...]
    suites: tuple[str, ...]
    source: str                    # the chain text it was expanded from, for messages


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """How every evaluation stage runs (``archobj eval``'s options)."""

    suites: tuple[str, ...] = SUITES
    tasks: Optional[tuple[str, ...]] = None   # a subset of the suites' tasks (smoke grids)
    fixtures: bool = False
    data_dir: Optional[str] = None
    limit: Optional[int] = None
    batch_size: int = 8
    bootstrap_iters: Optional[int] = None     # EAI-Eval: lm-eval's stderr draws (None: 1000)
    max_prompts: Optional[int] = None         # T0-Eval: prompts per dataset (None: all, 116)
    # Padded lengths of the scorer's passes (None: harness.eval.scoring's default). Fewer lengths,
    # fewer compiles and more padding: what a small evaluation (a smoke grid) wants.
    length_buckets: Optional[tuple[int, ...]] = None


@dataclasses.dataclass(frozen=True)
class Compute:
    """How the plan turns FLOPs into accelerator-hours: ``flops / (mfu * peak)``; with
    ``eval_seconds``, the prior of the time-left estimate before any stage has run here."""

    accelerator: str = "accelerator"
    peak_tflops: float = 275.0     # TPUv4, bf16 (the study's chips, PAPER.md 2.1)
    mfu: float = 0.4
    eval_seconds: float = 30.0     # one evaluation stage (one suite on one checkpoint)


@dataclasses.dataclass(frozen=True)
class WorldSpec:
    """The built-in world (``objectives/world.py``) a grid trains and evaluates on.

    The grid writes it once per (generator version, seed, size) under ``<runs>/worlds/`` and points
    every stage at it: ``base.data.source`` (the corpus), ``base.data.vocabulary`` (its
    SentencePiece model), ``mtf.set.data.source`` (the prompted finetuning mixture),
    ``eval.data_dir`` and ``eval.tasks`` (the held-out suites), unless the grid file sets them.
    """

    seed: int = 0
    size: str = "default"


@dataclasses.dataclass(frozen=True)
class GridSpec:
    """A checked grid file."""

    path: pathlib.Path
    name: str
    scale: str
    runs: str
    architectures: Mapping[str, Mapping[str, Any]]
    base: Mapping[str, Any]
    pretrain_steps: int
    pairs: Mapping[str, Mapping[str, Any]]      # pretraining run -> its overrides
    pair_sets: Mapping[str, Mapping[str, Any]]  # arch_obj -> overrides of every stage training it
    pretrain_set: Mapping[str, Any]
    adapt_set: Mapping[str, Any]
    mtf_steps: int
    mtf_set: Mapping[str, Any]
    eval: EvalSettings
    compute: Compute
    baselines: Mapping[str, Mapping[str, Any]]  # name -> {"path": ..., "vocabulary": ...}
    cells: tuple[Cell, ...]
    # stage kind ("train", "eval", "import") or pretraining pair -> SLURM resources
    # (harness/grid/slurm.py: RESOURCE_KEYS); empty when the grid file has no ``slurm:``
    slurm: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    world: Optional[WorldSpec] = None
    seed: int = 0                  # the replicate: train.seed and data.seed of every stage
    variant: Optional[str] = None  # the ``variants`` entry applied, if any


def load_grid(path: str | pathlib.Path, overrides: Sequence[str] = (), *,
              variant: Optional[str] = None, seed: int = 0) -> GridSpec:
    """Reads and checks a grid file; ``overrides`` are ``key.path=value`` edits of its YAML.

    ``--set base.data.source=corpus.txt`` sets ``base: {data.source: corpus.txt}``: the first dot
    names the top-level key, the rest is the key inside it (a run-config key for ``base`` and the
    ``set`` mappings, e.g. ``mtf.set.data.source=t0_dir``).

    ``variant`` applies the grid file's ``variants: {NAME: [key=value, ...]}`` edits first (the
    same syntax); its runs go to ``<grid>_<variant>``. ``seed`` > 0 makes a replicate of the whole
    grid: every training stage gets ``train.seed`` and ``data.seed`` = ``seed`` and its runs go to
    ``<grid>_seed<seed>`` (seed 0 is the grid itself). The world, and so the evaluation data, is
    the same for every replicate: the spread over seeds is the spread of training alone.

    Raises:
      ValueError: one line naming the file, the key and the fix.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: grid file does not exist; pass one of experiments/*.yaml")
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: not a readable YAML grid file ({' '.join(str(e).split())})"
                         ) from None
    if not isinstance(document, dict):
        raise ValueError(f"{path}: must hold a mapping with keys {list(TOP_KEYS)}")
    variants = document.pop("variants", None) or {}
    if not isinstance(variants, dict) or not all(
            isinstance(edits, list) and all(isinstance(e, str) for e in edits)
            for edits in variants.values()):
        raise ValueError(f"{path}: variants: a mapping {{name: [key=value, ...]}}, e.g. "
                         "{quick: [pretrain.steps=100]}")
    if variant is not None:
        if variant not in variants:
            raise ValueError(f"{path}: --variant {variant!r}: not a variant of this grid file; it "
                             f"has {sorted(variants) or 'none'}")
        for entry in variants[variant]:
            _apply_override(path, document, entry)
    for entry in overrides:
        _apply_override(path, document, entry)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"{path}: --seed {seed!r}: a replicate number >= 0")
    if seed:
        document.setdefault("base", {}).update({"train.seed": seed, "data.seed": seed})
    try:
        grid = _parse(path, document)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    suffix = (f"_{variant}" if variant else "") + (f"_seed{seed}" if seed else "")
    return dataclasses.replace(grid, name=grid.name + suffix, seed=seed, variant=variant)


def _apply_override(path: pathlib.Path, document: dict, entry: str) -> None:
    key, equals, text = str(entry).partition("=")
    if equals and key in ("grid", "scale", "runs"):  # the grid file's own scalars
        document[key] = text
        return
    if not equals or "." not in key:
        raise ValueError(f"{path}: override {entry!r}: expected key=value with a dotted key, e.g. "
                         "base.data.source=corpus.txt (or scale=..., runs=...)")
    value = yaml.safe_load(text)
    top, _, rest = key.partition(".")
    if top in ("base",):
        document.setdefault(top, {})[rest] = value
        return
    section, _, inner = rest.partition(".")
    if section == "set" and inner:
        document.setdefault(top, {}).setdefault("set", {})[inner] = value
        return
    node = document.setdefault(top, {})
    parts = rest.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _parse(path: pathlib.Path, document: Mapping[str, Any]) -> GridSpec:
    unknown = sorted(set(document) - set(TOP_KEYS))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}; a grid file has {list(TOP_KEYS)}")
    for key in ("grid", "pretrain", "cells"):
        if key not in document:
            raise ValueError(f"missing key {key!r}; see experiments/README.md for the format")
    name = document["grid"]
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"grid={name!r}: a name of lowercase letters, digits and '_'")

    architectures = _mapping(document, "architectures", {a: {} for a in ARCHITECTURES})
    for arch, values in architectures.items():
        if arch not in ARCHITECTURES:
            raise ValueError(f"architectures.{arch}: unknown architecture; use {list(ARCHITECTURES)}")
        _run_keys(f"architectures.{arch}", values)
    base = _run_keys("base", _mapping(document, "base", {}))

    pair_sets = _mapping(document, "pairs", {})
    for pair, values in pair_sets.items():
        _pair(f"pairs.{pair}", pair)
        pair_sets[pair] = _run_keys(f"pairs.{pair}", values or {})
    pretrain = _mapping(document, "pretrain", None)
    _only(pretrain, "pretrain", ("steps", "pairs", "set"))
    steps = _count("pretrain.steps", pretrain.get("steps"))
    runs = pretrain.get("pairs")
    if not isinstance(runs, list) or not runs:
        raise ValueError("pretrain.pairs: list the pretraining runs, e.g. [cd_flm, nd_mlm]")
    pairs = {}
    for pair in runs:
        arch, objective = _pair(f"pretrain.pairs {pair}", pair)
        if arch not in architectures:
            raise ValueError(f"pretrain.pairs {pair}: architecture {arch!r} is not in "
                             "architectures")
        pairs[pair] = pair_sets.get(pair, {})
    pretrain_set = _run_keys("pretrain.set", pretrain.get("set") or {})

    adapt = _mapping(document, "adapt", {})
    _only(adapt, "adapt", ("set",))
    mtf = _mapping(document, "mtf", {"steps": 10_000})
    _only(mtf, "mtf", ("steps", "set"))

    eval_doc = _mapping(document, "eval", {})
    _only(eval_doc, "eval", ("suites", "tasks", "fixtures", "data_dir", "limit", "batch_size",
                             "bootstrap_iters", "max_prompts", "length_buckets"))
    bootstrap_iters = eval_doc.get("bootstrap_iters")
    if bootstrap_iters is not None and (isinstance(bootstrap_iters, bool) or not isinstance(
            bootstrap_iters, int) or bootstrap_iters < 0):
        raise ValueError(f"eval.bootstrap_iters={bootstrap_iters!r}: a number of draws >= 0 "
                         "(0: no lm-eval stderrs)")
    tasks_value = eval_doc.get("tasks")
    if tasks_value is not None and (not isinstance(tasks_value, list) or not tasks_value):
        raise ValueError(f"eval.tasks={tasks_value!r}: a list of task names, or leave it out")
    buckets = eval_doc.get("length_buckets")
    if buckets is not None and (not isinstance(buckets, list) or not buckets):
        raise ValueError(f"eval.length_buckets={buckets!r}: a list of padded lengths, e.g. "
                         "[32, 128, 512], or leave it out for the scorer's default")
    settings = EvalSettings(
        suites=_suites("eval.suites", eval_doc.get("suites", list(SUITES))),
        tasks=None if tasks_value is None else tuple(str(t) for t in tasks_value),
        fixtures=bool(eval_doc.get("fixtures", False)), data_dir=eval_doc.get("data_dir"),
        limit=eval_doc.get("limit"), batch_size=_count("eval.batch_size",
                                                       eval_doc.get("batch_size", 8)),
        bootstrap_iters=bootstrap_iters,
        max_prompts=None if eval_doc.get("max_prompts") is None else _count(
            "eval.max_prompts", eval_doc["max_prompts"]),
        length_buckets=None if buckets is None else tuple(
            _count("eval.length_buckets", length) for length in buckets))
    compute_doc = _mapping(document, "compute", {})
    _only(compute_doc, "compute", ("accelerator", "peak_tflops", "mfu", "eval_seconds"))
    compute = Compute(**compute_doc)
    for field in ("peak_tflops", "mfu", "eval_seconds"):
        value = getattr(compute, field)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"compute.{field}={value!r}: must be a number")
    if not 0 < compute.mfu <= 1 or not compute.peak_tflops > 0 or not compute.eval_seconds > 0:
        raise ValueError(f"compute: mfu={compute.mfu} must be in (0, 1], peak_tflops="
                         f"{compute.peak_tflops} and eval_seconds={compute.eval_seconds} > 0")

    baselines = _mapping(document, "baselines", {})
    for baseline, values in baselines.items():
        if not _NAME.match(str(baseline)) or baseline in pairs:
            raise ValueError(f"baselines.{baseline}: a new lowercase name (not a pair)")
        if not isinstance(values, dict) or "path" not in values:
            raise ValueError(f"baselines.{baseline}: give {{path: <Hugging Face T5 checkpoint "
                             "directory>}}")
        _only(values, f"baselines.{baseline}", ("path", "vocabulary"))

    cells_doc = document["cells"]
    if not isinstance(cells_doc, list) or not cells_doc:
        raise ValueError("cells: a list of {chain: ..., for: ..., suites: ...} entries")
    slurm = _slurm(_mapping(document, "slurm", {}), pairs)
    world = None
    if document.get("world") is not None:
        world_doc = _mapping(document, "world", {})
        _only(world_doc, "world", ("seed", "size"))
        seed = world_doc.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"world.seed={seed!r}: a seed >= 0")
        world = WorldSpec(seed=seed, size=str(world_doc.get("size", WorldSpec.size)))
    cells: list[Cell] = []
    for index, entry in enumerate(cells_doc):
        cells.extend(_expand(f"cells[{index}]", entry, pairs, architectures, baselines,
                             settings.suites, steps))
    return GridSpec(path=path, name=name, scale=str(document.get("scale", "unstated")),
                    runs=str(document.get("runs", "runs")), architectures=architectures,
                    base=base, pretrain_steps=steps, pairs=pairs, pair_sets=pair_sets,
                    pretrain_set=pretrain_set,
                    adapt_set=_run_keys("adapt.set", adapt.get("set") or {}),
                    mtf_steps=_count("mtf.steps", mtf.get("steps", 10_000)),
                    mtf_set=_run_keys("mtf.set", mtf.get("set") or {}), eval=settings,
                    compute=compute, baselines=baselines, cells=tuple(cells), slurm=slurm,
                    world=world)


def _expand(where: str, entry: Any, pairs: Mapping[str, Any], architectures: Mapping[str, Any],
            baselines: Mapping[str, Any], default_suites: tuple[str, ...],
            pretrain_steps: int) -> list[Cell]:
    if isinstance(entry, str):
        entry = {"chain": entry}
    if not isinstance(entry, dict) or "chain" not in entry:
        raise ValueError(f"{where}: give {{chain: 'cd_flm@131072 > cd_mtf', for: ..., "
                         "suites: ...}}")
    _only(entry, where, ("chain", "for", "suites"))
    suites = _suites(f"{where}.suites", entry.get("suites", list(default_suites)))
    loops = entry.get("for") or {}
    if not isinstance(loops, dict):
        raise ValueError(f"{where}.for: a mapping such as {{arch: [cd, nd, ed]}}")
    names, values = [], []
    for variable, items in loops.items():
        if variable not in ("pair", "arch"):
            raise ValueError(f"{where}.for.{variable}: loop over 'pair' or 'arch'")
        if items == "all":
            items = list(pairs) if variable == "pair" else list(architectures)
        if not isinstance(items, list) or not items:
            raise ValueError(f"{where}.for.{variable}: a non-empty list (or 'all')")
        names.append(variable)
        values.append(items)
    text = entry["chain"]
    if not isinstance(text, str):
        raise ValueError(f"{where}.chain: a string such as 'cd_flm@131072 > cd_mtf'")
    cells = []
    for combination in itertools.product(*values) or [()]:
        variables = dict(zip(names, combination))
        if "pair" in variables:
            arch, objective = _pair(f"{where}.for.pair", variables["pair"])
            variables.setdefault("arch", arch)
            variables["obj"] = objective
        if "arch" in variables:
            if variables["arch"] not in ARCHITECTURES:
                raise ValueError(f"{where}.for.arch: {variables['arch']!r} is not one of "
                                 f"{list(ARCHITECTURES)}")
            variables["lm"] = LM_OBJECTIVE[variables["arch"]]

        def substitute(match: re.Match) -> str:
            if match.group(1) not in variables:
                raise ValueError(f"{where}.chain: {{{match.group(1)}}} has no value; add it to "
                                 "'for' (pair or arch)")
            return str(variables[match.group(1)])

        chain_text = _TEMPLATE.sub(substitute, text)
        cells.append(Cell(chain=_chain(f"{where}.chain {chain_text!r}", chain_text, pairs,
                                       architectures, baselines, pretrain_steps),
                          suites=suites, source=chain_text))
    return cells


def _chain(where: str, text: str, pairs: Mapping[str, Any], architectures: Mapping[str, Any],
           baselines: Mapping[str, Any], pretrain_steps: int) -> tuple[Link, ...]:
    parts = [part.strip() for part in text.split(">")]
    if not parts or not all(parts):
        raise ValueError(f"{where}: links joined by '>', e.g. 'cd_flm@131072 > nd_mtf'")
    first, _, at = parts[0].partition("@")
    links: list[Link] = []
    if first in baselines:
        links.append(Link("baseline", None, None, first, at=None))
        if at:
            raise ValueError(f"{where}: a baseline has one checkpoint; drop '@{at}'")
    elif first in pairs:
        arch, objective = _pair(where, first)
        links.append(Link("pretrain", arch, objective, first,
                          at=_step(where, at, pretrain_steps) if at else None))
    else:
        raise ValueError(f"{where}: {first!r} is neither a pretraining pair ({list(pairs)}) nor "
                         f"a baseline ({list(baselines)}); add it to pretrain.pairs")
    for part in parts[1:]:
        match = re.fullmatch(r"(\w+?)_(\w+?)(?::(\d+%?)(\+carry)?)?(?:@(\d+%?))?", part)
        if not match:
            raise ValueError(f"{where}: link {part!r}: expected ARCH_OBJ:STEP (adaptation) or "
                             "ARCH_mtf (multitask finetuning)")
        arch, objective, until, carry, at = match.groups()
        if arch not in architectures:
            raise ValueError(f"{where}: link {part!r}: architecture {arch!r} is not in "
                             "architectures")
        previous = links[-1]
        if previous.architecture is not None and (arch == "ed") != (previous.architecture == "ed"):
            raise ValueError(f"{where}: link {part!r}: cannot continue a "
                             f"{previous.architecture} checkpoint as {arch} (only cd <-> nd share "
                             "a parameter tree)")
        if objective == "mtf":
            if until:
                raise ValueError(f"{where}: link {part!r}: MTF runs mtf.steps; drop ':{until}'")
            links.append(Link("mtf", arch, "mtf", part.split("@")[0],
                              at=_step(where, at, pretrain_steps) if at else None))
            continue
        try:
            tasks.check_compatible(arch, objective)
        except ValueError as e:
            raise ValueError(f"{where}: link {part!r}: {e}") from None
        if not until:
            raise ValueError(f"{where}: link {part!r}: an adaptation needs its end step, e.g. "
                             f"{arch}_{objective}:171008")
        links.append(Link("adapt", arch, objective, f"{arch}_{objective}",
                          at=_step(where, at, pretrain_steps) if at else None,
                          until=_step(where, until, pretrain_steps), carry=bool(carry)))
    return tuple(links)


# -------------------------------------------------------------------------------------------------
# Small checks.
# -------------------------------------------------------------------------------------------------

def _pair(where: str, pair: Any) -> tuple[str, str]:
    arch, _, objective = str(pair).partition("_")
    if arch not in ARCHITECTURES or objective not in tasks.OBJECTIVES:
        raise ValueError(f"{where}: {pair!r} is not an architecture_objective pair such as "
                         "cd_flm or ed_mlm")
    try:
        tasks.check_compatible(arch, objective)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    return arch, objective


def _mapping(document: Mapping[str, Any], key: str, default: Any) -> dict:
    value = document.get(key, default)
    if value is None and default is not None:
        value = default
    if not isinstance(value, dict):
        raise ValueError(f"{key}: must be a mapping")
    return dict(value)


def _only(mapping: Mapping[str, Any], where: str, allowed: Sequence[str]) -> None:
    unknown = sorted(set(mapping) - set(allowed))
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key; {where} has {list(allowed)}")


SLURM_SECTIONS = ("train", "eval", "import")
# key -> (type, description); harness/grid/slurm.py turns them into sbatch options.
SLURM_KEYS: Mapping[str, tuple[type, str]] = {
    "nodes": (int, "nodes per job"),
    "tasks_per_node": (int, "processes per node (default 1: one JAX process drives its GPUs)"),
    "gpus_per_node": (int, "GPUs per node"),
    "cpus_per_task": (int, "CPU cores per process"),
    "mem_gb": (int, "memory per node in GB"),
    "timeout_min": (int, "the job's time limit in minutes"),
    "partition": (str, "the SLURM partition"),
    "account": (str, "the SLURM account"),
    "constraint": (str, "node features, e.g. 'h100'"),
    "qos": (str, "quality of service"),
    "signal_delay_s": (int, "USR2 this many seconds before the time limit (default 120)"),
    "max_num_timeout": (int, "how often a stage is requeued after hitting its time limit"),
    "setup": (list, "shell lines run before srun (module load, source .venv/bin/activate)"),
    "additional_parameters": (dict, "any other sbatch option, e.g. {exclusive: true}"),
}


def _slurm(document: Mapping[str, Any], pairs: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The ``slurm:`` section: resources per stage kind, or per pretraining pair (its train
    stages), each a mapping of ``SLURM_KEYS``."""
    sections: dict[str, dict[str, Any]] = {}
    for section, values in document.items():
        if section not in SLURM_SECTIONS and section not in pairs:
            raise ValueError(f"slurm.{section}: unknown section; use {list(SLURM_SECTIONS)} or a "
                             f"pretraining pair ({list(pairs)})")
        if not isinstance(values, dict):
            raise ValueError(f"slurm.{section}: a mapping such as {{nodes: 1, gpus_per_node: 8}}")
        _only(values, f"slurm.{section}", tuple(SLURM_KEYS))
        for key, value in values.items():
            kind, what = SLURM_KEYS[key]
            if (not isinstance(value, kind) or isinstance(value, bool)
                    or (kind is int and value < (0 if key == "signal_delay_s" else 1))):
                raise ValueError(f"slurm.{section}.{key}={value!r}: must be "
                                 f"{'a positive integer' if kind is int else 'a ' + kind.__name__}"
                                 f" ({what})")
        sections[str(section)] = dict(values)
    return sections


def _run_keys(where: str, values: Any) -> dict[str, Any]:
    """Dotted run-config keys, each checked against the run config's sections now."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: a mapping of run-config keys such as {{train.steps: 100}}")
    for key, value in values.items():
        try:
            config_lib._set({}, key, value)  # pylint: disable=protected-access
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        if key in ("name", "run_dir", "stage.kind", "stage.init_from", "stage.init_step"):
            raise ValueError(f"{where}: {key} is set by the grid from the chain; remove it")
    return dict(values)


def _count(where: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{where}={value!r}: must be a positive integer")
    return value


def _step(where: str, text: str, pretrain_steps: int) -> int:
    """A global step: a number, or a percentage of ``pretrain.steps`` (``90%``, ``130%``), so
    that a variant with fewer steps keeps a chain's proportions."""
    if text.endswith("%") and text[:-1].isdigit():
        return max(1, round(int(text[:-1]) * pretrain_steps / 100))
    if not text.isdigit():
        raise ValueError(f"{where}: '@{text}' must be a step number or a percentage of "
                         "pretrain.steps, e.g. @90%")
    return int(text)


def _suites(where: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or any(s not in SUITES for s in value):
        raise ValueError(f"{where}={value!r}: a list of suites from {list(SUITES)}")
    return tuple(value)
