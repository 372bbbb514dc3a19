"""A grid file -> the DAG of stages that runs it: names, identities, directories, configs, compute.

Three kinds of stage:

``train``   one training stage (``harness.train.loop.run``): a pretraining run, an adaptation or
            a multitask finetuning, with its resolved ``RunConfig``.
``import``  a baseline: a Hugging Face T5 checkpoint converted into an archobj model directory.
``eval``    one suite on one checkpoint step of a ``train`` or ``import`` stage.

Stages are shared: every cell whose chain passes through ``cd_flm`` uses the one ``cd_flm`` run,
evaluated or branched from at as many steps as the cells ask (the study's 42B/84B/168B points are
three checkpoints of one run, PAPER.md 1.3). Names follow the study's checkpoint names (PAPER.md
1.3): a pretraining run is its pair (``cd_flm``); a stage that starts from another is the upstream's
name with the branch step, then its own architecture, objective and global end step
(``cd_flm_131072-nd_mlm_171008-nd_mtf_181008``); an evaluation adds the step and the suite
(``cd_flm_65536.eai``).

**Identity.** A stage's identity hashes everything that decides its result: its whole resolved
config except ``NOT_IN_IDENTITY`` (output paths, logging and checkpoint cadence), plus the
identity of its upstream stage and the step it starts from, never the upstream's path. A changed
field changes the identity of the stage and of everything downstream, and nothing else. A stage
lives in ``<runs>/<grid>/<name>-<identity[:8]>``, so a changed stage never writes over the results
of the version it replaces.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from typing import Any, Mapping, Optional

from harness.grid.spec import Cell, GridSpec, Link
from harness.train import config as config_lib

# Fields of a training stage's config that do not change its results, with why. Everything else
# is hashed: opting fields *in* leads to silent reuse, hashing paths to needless invalidation.
NOT_IN_IDENTITY: Mapping[str, str] = {
    "name": "the readable name; the chain is hashed through the upstream identities",
    "run_dir": "an output path",
    "stage.init_from": "a path; the upstream stage's identity is hashed instead",
    "train.log_every": "how often metrics are logged",
    "checkpoint.every": "how often checkpoints are written",
    "checkpoint.keep": "how many periodic checkpoints are kept",
    "checkpoint.keep_steps": "which checkpoints are kept (the grid adds the steps it branches from)",
    "checkpoint.async_save": "whether checkpoints are written in the background",
    "eval.every": "in-stage evaluation is not used by the grid (eval stages are)",
    "eval.suites": "in-stage evaluation is not used by the grid (eval stages are)",
}
SHORT_ID = 8

# An adaptation stage (LM-A, NC-A, continued pretraining) reads the corpus in an order of its own:
# its data.seed is the pretraining's plus this. With the pretraining's own seed it would read the
# stream its upstream already trained on from the first batch again, and a continued run would
# repeat its first batches exactly instead of training on more text. A new shuffle of the corpus is
# what restarting a t5x/seqio job from a checkpoint without its dataset state reads. No replicate's
# pretraining uses these seeds (replicates are numbered 0, 1, 2, ...). A grid file that sets
# ``adapt.set: {data.seed: ...}`` decides instead.
ADAPT_DATA_SEED_OFFSET = 1_000_000


@dataclasses.dataclass(frozen=True)
class Stage:
    """One node of the DAG."""

    name: str
    kind: str                          # "train", "import" or "eval"
    identity: str                      # sha256 hex
    directory: pathlib.Path            # <runs>/<grid>/<name>-<identity[:8]>
    upstream: Optional[str] = None     # the stage it starts from (train) or evaluates (eval)
    upstream_step: Optional[int] = None  # that stage's own step number it starts from / scores
    config: Optional[config_lib.RunConfig] = None   # train
    suite: Optional[str] = None        # eval
    source: Optional[str] = None       # import: the Hugging Face checkpoint directory
    vocabulary: Optional[str] = None   # import: the tokenizer to record
    global_start: int = 0              # global step the stage starts at (names use global steps)
    steps: int = 0                     # train: optimizer steps of this stage
    tokens: float = 0.0                # train: tokens seen
    flops: float = 0.0                 # train: training FLOPs (analytic, causal-aware)
    cells: tuple[str, ...] = ()

    @property
    def global_end(self) -> int:
        return self.global_start + self.steps


@dataclasses.dataclass(frozen=True)
class Plan:
    """The stages of a grid in dependency order, and the stages of each cell."""

    grid: GridSpec
    root: pathlib.Path                 # <runs>/<grid>
    stages: Mapping[str, Stage]        # topological order (upstream first)
    cells: Mapping[str, tuple[str, ...]]   # cell name -> its stages, upstream first
    world: Optional[pathlib.Path] = None   # the built-in world's directory (``grid.world``)

    def upstream_of(self, name: str) -> list[str]:
        """Every stage ``name`` depends on, nearest last."""
        chain = []
        stage = self.stages[name]
        while stage.upstream is not None:
            chain.append(stage.upstream)
            stage = self.stages[stage.upstream]
        return chain[::-1]

    def downstream_of(self, name: str) -> list[str]:
        """Every stage that depends on ``name``, directly or not, in plan order."""
        below: set[str] = {name}
        for stage in self.stages.values():
            if stage.upstream in below:
                below.add(stage.name)
        below.discard(name)
        return [s for s in self.stages if s in below]


def make_plan(grid: GridSpec, runs: Optional[str | os.PathLike] = None) -> Plan:
    """Expands ``grid`` into its DAG; ``runs`` overrides the grid file's ``runs`` root.

    Raises:
      ValueError: a chain that branches from a step its upstream never reaches, or an evaluation
        past the end of its run; one line naming the grid file and the chain.
    """
    runs_root = pathlib.Path(runs if runs is not None else grid.runs)
    root = runs_root / grid.name
    world = None
    if grid.world is not None:
        world = world_directory(runs_root, grid)
        grid = with_world(grid, world)
    nodes: dict[str, dict[str, Any]] = {}      # name -> skeleton, in creation order
    cells: dict[str, list[str]] = {}
    for cell in grid.cells:
        try:
            stage_names, last, step = _chain_nodes(grid, cell, nodes)
        except ValueError as e:
            raise ValueError(f"{grid.path}: cells chain {cell.source!r}: {e}") from None
        cell_name = _checkpoint_name(nodes[last], step) if nodes[last]["kind"] == "train" else last
        members = cells.setdefault(cell_name, [])
        for name in stage_names:
            if name not in members:
                members.append(name)
        for suite in cell.suites:
            eval_name = f"{cell_name}.{suite}"
            nodes.setdefault(eval_name, {"name": eval_name, "kind": "eval", "upstream": last,
                                         "at": step, "suite": suite, "needed": set()})
            if eval_name not in members:
                members.append(eval_name)
    for cell_name, members in cells.items():
        for name in members:
            nodes[name].setdefault("cells", []).append(cell_name)

    stages: dict[str, Stage] = {}
    for name, node in nodes.items():  # upstream stages are created first
        stages[name] = _stage(grid, root, node, stages)
    return Plan(grid=grid, root=root, stages=stages,
                cells={name: tuple(members) for name, members in cells.items()}, world=world)


def world_directory(runs_root: str | os.PathLike, grid: GridSpec) -> pathlib.Path:
    """Where ``grid``'s built-in world lives: ``<runs>/worlds/<version>-seed<S>-<size>``, shared
    by every grid, variant and replicate that asks for the same world."""
    from objectives import world as world_lib

    assert grid.world is not None
    world_lib.resolve_size(grid.world.size)  # an unknown size fails here, before anything runs
    return (pathlib.Path(runs_root) / "worlds"
            / f"v{world_lib.VERSION}-seed{grid.world.seed}-{grid.world.size}")


def with_world(grid: GridSpec, directory: pathlib.Path) -> GridSpec:
    """``grid`` with its data, vocabulary, finetuning mixture and evaluation suites pointed at the
    world in ``directory`` (``spec.WorldSpec``); keys the grid file sets itself are kept."""
    from objectives import world as world_lib
    from objectives.world import writer

    base = {"data.source": str(directory / writer.CORPUS),
            "data.vocabulary": str(directory / writer.VOCABULARY), **grid.base}
    mtf_set = {"data.source": str(directory / writer.MTF_DIR), **grid.mtf_set}
    settings = grid.eval
    if settings.data_dir is None and not settings.fixtures:
        settings = dataclasses.replace(settings, data_dir=str(directory / writer.EVAL_DIR))
    if settings.tasks is None:
        tasks = {"eai": world_lib.EAI_TASKS, "t0": world_lib.T0_TASKS}
        settings = dataclasses.replace(settings, tasks=tuple(
            task for suite in settings.suites for task in tasks[suite]))
    return dataclasses.replace(grid, base=base, mtf_set=mtf_set, eval=settings)


def _chain_nodes(grid: GridSpec, cell: Cell, nodes: dict[str, dict[str, Any]]
                 ) -> tuple[list[str], str, Optional[int]]:
    """Adds the chain's training/import stages; returns them, the last one and its end step."""
    first = cell.chain[0]
    names: list[str] = []
    if first.kind == "baseline":
        node = nodes.setdefault(first.name, {"name": first.name, "kind": "import",
                                             "needed": set(), "global_start": 0, "steps": 0})
        names.append(first.name)
        return names, first.name, None
    node = nodes.setdefault(first.name, {
        "name": first.name, "kind": "train", "link": first, "upstream": None, "at": None,
        "global_start": 0, "steps": grid.pretrain_steps, "needed": set()})
    names.append(first.name)
    step = _checkpoint(node, first.at)
    for link in cell.chain[1:]:
        upstream = node
        name = f"{_checkpoint_name(upstream, step)}-{link.architecture}_{link.objective}"
        if link.kind == "adapt":
            if link.until <= step:
                raise ValueError(f"{link.name}:{link.until} ends before it starts (step {step})")
            steps = link.until - step
        else:
            steps = grid.mtf_steps
        name += f"_{step + steps}"
        node = nodes.setdefault(name, {"name": name, "kind": "train", "link": link,
                                       "upstream": upstream["name"], "at": step,
                                       "global_start": step, "steps": steps, "needed": set()})
        upstream["needed"].add(step - upstream["global_start"])
        names.append(name)
        step = _checkpoint(node, link.at)
    return names, node["name"], step


def _checkpoint(node: Mapping[str, Any], at: Optional[int]) -> int:
    """The global step of ``node``'s checkpoint taken at ``at`` (its end by default), checked."""
    end = node["global_start"] + node["steps"]
    if at is None:
        return end
    if not node["global_start"] < at <= end:
        raise ValueError(f"step {at} is outside {node['name']}'s steps "
                         f"({node['global_start'] + 1}..{end}); pick a step it reaches")
    node["needed"].add(at - node["global_start"])
    return at


def _checkpoint_name(node: Mapping[str, Any], step: Optional[int]) -> str:
    """``cd_flm_65536``: a stage's name with the global step of one of its checkpoints.

    A stage downstream of pretraining already ends in its end step; other steps of it are named
    ``<name>@<step>``.
    """
    if node["kind"] != "train" or step is None:
        return node["name"]
    if node["upstream"] is None:
        return f"{node['name']}_{step}"
    end = node["global_start"] + node["steps"]
    return node["name"] if step == end else f"{node['name']}@{step}"


def _stage(grid: GridSpec, root: pathlib.Path, node: Mapping[str, Any],
           stages: Mapping[str, Stage]) -> Stage:
    cells = tuple(node.get("cells", ()))
    if node["kind"] == "import":
        baseline = grid.baselines[node["name"]]
        identity = _hash({"kind": "import", "source": str(baseline["path"]),
                          "vocabulary": baseline.get("vocabulary")})
        return Stage(name=node["name"], kind="import", identity=identity,
                     directory=root / f"{node['name']}-{identity[:SHORT_ID]}",
                     source=str(baseline["path"]), vocabulary=baseline.get("vocabulary"),
                     cells=cells)
    if node["kind"] == "eval":
        upstream = stages[node["upstream"]]
        step = None if node["at"] is None else node["at"] - upstream.global_start
        identity = _hash({"kind": "eval", "suite": node["suite"], "checkpoint": upstream.identity,
                          "step": step, "settings": _eval_identity(grid)})
        return Stage(name=node["name"], kind="eval", identity=identity,
                     directory=root / f"{node['name']}-{identity[:SHORT_ID]}",
                     upstream=upstream.name, upstream_step=step, suite=node["suite"],
                     cells=cells)
    link: Link = node["link"]
    upstream = stages[node["upstream"]] if node["upstream"] else None
    overrides: dict[str, Any] = {**grid.base, **grid.architectures[link.architecture]}
    if link.kind == "pretrain":
        overrides.update(grid.pretrain_set)
    elif link.kind == "adapt":
        overrides.update(grid.adapt_set)
    else:
        overrides.update(grid.mtf_set)
    overrides.update(grid.pair_sets.get(f"{link.architecture}_{link.objective}", {}))
    if link.kind == "adapt" and "data.seed" not in grid.adapt_set:
        overrides["data.seed"] = (overrides.get("data.seed", config_lib.DataConfig.seed)
                                  + ADAPT_DATA_SEED_OFFSET)
    upstream_step = None if upstream is None else node["at"] - upstream.global_start
    overrides.update({
        "name": node["name"], "model.architecture": link.architecture,
        "data.objective": link.objective, "train.steps": node["steps"],
        "stage.kind": {"pretrain": "pretrain", "adapt": "adapt", "mtf": "finetune"}[link.kind],
        "checkpoint.keep_steps": sorted(s for s in node["needed"] if s < node["steps"]),
    })
    if upstream is not None:
        overrides.update({"stage.init_from": str(upstream.directory),
                          "stage.init_step": upstream_step})
        if link.kind == "adapt" and link.carry:
            overrides["optim.carry_state"] = True
        elif link.kind == "adapt":
            overrides["optim.schedule_offset"] = node["at"]  # the upstream's decay continues
    config = config_lib.with_overrides(config_lib.RunConfig(), {"run_dir": "unset", **overrides})
    flat = config_lib.flatten(config_lib.to_dict(config))
    identity = _hash({"kind": "train",
                      "config": {k: v for k, v in flat.items() if k not in NOT_IN_IDENTITY},
                      "upstream": None if upstream is None else upstream.identity,
                      "upstream_step": upstream_step})
    directory = root / f"{node['name']}-{identity[:SHORT_ID]}"
    config = dataclasses.replace(config, run_dir=str(directory))
    tokens = float(node["steps"]) * config.train.batch_size * config_lib.tokens_per_row(config)
    flops = float(node["steps"]) * config.train.batch_size * config_lib.flops_per_row(config)
    return Stage(name=node["name"], kind="train", identity=identity, directory=directory,
                 upstream=None if upstream is None else upstream.name, upstream_step=upstream_step,
                 config=config, global_start=node["global_start"], steps=node["steps"],
                 tokens=tokens, flops=flops, cells=cells)


def identity_record(plan: Plan, name: str) -> dict[str, Any]:
    """What a stage's identity is made of, for ``--explain`` and the provenance record."""
    stage = plan.stages[name]
    record: dict[str, Any] = {"name": name, "kind": stage.kind, "identity": stage.identity,
                              "upstream": stage.upstream, "upstream_step": stage.upstream_step,
                              "upstream_identity": (plan.stages[stage.upstream].identity
                                                    if stage.upstream else None)}
    if stage.config is not None:
        flat = config_lib.flatten(config_lib.to_dict(stage.config))
        record["config"] = {k: v for k, v in flat.items() if k not in NOT_IN_IDENTITY}
    if stage.suite is not None:
        record["suite"] = stage.suite
        record["eval"] = _eval_identity(plan.grid)
    if stage.source is not None:
        record["source"] = stage.source
    return record


def _eval_identity(grid: GridSpec) -> dict[str, Any]:
    """The evaluation settings an eval stage's identity hashes: not the suites (each stage is one)
    nor the batch size and length buckets (how rows are grouped and padded: the same scores); the
    optional settings only when set, so grids that leave them unset keep the identities they had
    before the settings existed."""
    return {key: value for key, value in dataclasses.asdict(grid.eval).items()
            if key not in ("suites", "batch_size", "length_buckets")
            and not (key in ("bootstrap_iters", "max_prompts") and value is None)}


def _hash(record: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
