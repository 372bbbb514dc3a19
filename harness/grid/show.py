"""What ``archobj grid --dry-run``, ``archobj status`` and ``--explain`` print: the plan as a table
with its compute, and why a stage is pending. Reads the plan and small files only (no JAX)."""

from __future__ import annotations

import json
from typing import Any, Mapping, Optional, Sequence

from harness.grid.plan import Plan, identity_record

# PAPER.md 2.1: the study's own compute statement.
PAPER_CHIP_HOURS = 832_896
PAPER_CHIP = "TPUv4 chip"


def format_plan(plan: Plan, names: Sequence[str], status: Mapping[str, str]) -> str:
    """A table of ``names``: status, kind, steps, tokens seen, FLOPs, accelerator-hours; totals."""
    compute = plan.grid.compute
    per_hour = compute.mfu * compute.peak_tflops * 1e12 * 3600
    lines = [f"{plan.grid.name} ({plan.grid.scale}): {len(plan.cells)} cells, {len(names)} stages "
             f"in {plan.root}",
             f"{'stage':58s} {'status':11s} {'kind':6s} {'steps':>7s} {'tokens':>9s} "
             f"{'FLOPs':>9s} {'hours':>9s}"]
    totals = {"tokens": 0.0, "flops": 0.0}
    counts: dict[str, int] = {}
    for name in names:
        stage = plan.stages[name]
        counts[status[name]] = counts.get(status[name], 0) + 1
        totals["tokens"] += stage.tokens
        totals["flops"] += stage.flops
        numbers = (f"{stage.steps:7d} {_si(stage.tokens):>9s} {_si(stage.flops):>9s} "
                   f"{stage.flops / per_hour:9.1f}" if stage.kind == "train" else
                   f"{'':7s} {'':9s} {'':9s} {'':9s}")
        lines.append(f"{name[:58]:58s} {status[name]:11s} {stage.kind:6s} {numbers}")
    hours = totals["flops"] / per_hour
    shown = f"{hours:,.0f}" if hours >= 100 else f"{hours:.3g}"
    lines.append(f"total: {_si(totals['tokens'])} tokens seen, {totals['flops']:.3e} training "
                 f"FLOPs, {shown} {compute.accelerator}-hours at {compute.mfu:.0%} MFU of "
                 f"{compute.peak_tflops:g} TFLOP/s (training only; evaluation not counted)")
    lines.append("status: " + ", ".join(f"{count} {state}" for state, count in sorted(counts.items())))
    return "\n".join(lines)


def paper_comparison(plan: Plan) -> Optional[str]:
    """For a grid of the paper's scale: the MFU its FLOPs imply at the paper's 832,896 chip-hours."""
    if plan.grid.name != "paper":
        return None
    flops = sum(stage.flops for stage in plan.stages.values())
    implied = flops / (PAPER_CHIP_HOURS * 3600 * plan.grid.compute.peak_tflops * 1e12)
    return (f"the paper (PAPER.md 2.1) states {PAPER_CHIP_HOURS:,} {PAPER_CHIP}-hours for the study: "
            f"these {flops:.3e} FLOPs in that time would be {implied:.1%} MFU (the statement also "
            "covers evaluation, reruns and stages outside Table 8)")


def explain(plan: Plan, name: str) -> str:
    """Why ``name`` is pending: its identity against the one on disk under its readable name."""
    if name not in plan.stages:
        raise ValueError(f"--explain {name!r}: not a stage of {plan.grid.path}; archobj status "
                         "lists them")
    stage = plan.stages[name]
    new = identity_record(plan, name)
    current = plan.root / name
    if not current.exists():
        previous = sorted(p for p in plan.root.glob(f"{name}-*") if p.is_dir()) \
            if plan.root.is_dir() else []
        if not previous:
            return f"{name}: never run (no {plan.root / name}*); it will run as {stage.directory.name}"
        current = previous[-1]
    record_path = current / "provenance.json"
    if not record_path.is_file():
        return f"{name}: {current} has no provenance.json; cannot compare"
    old = json.loads(record_path.read_text()).get("identity_record", {})
    if old.get("identity") == stage.identity:
        return f"{name}: unchanged ({stage.directory.name})"
    lines = [f"{name}: {current.resolve().name} -> {stage.directory.name}"]
    lines += [f"  {key}: {_show(old_value)} -> {_show(new_value)}"
              for key, old_value, new_value in _differences(old, new)]
    if old.get("upstream_identity") != new.get("upstream_identity") and stage.upstream:
        lines.append(f"  (upstream {stage.upstream} changed: archobj grid FILE --explain "
                     f"{stage.upstream})")
    return "\n".join(lines)


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = ""):
    for key in sorted(set(old) | set(new)):
        if key in ("identity", "upstream_identity", "name"):
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            yield from _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            yield f"{prefix}{key}", a, b


def _show(value: Any) -> str:
    return json.dumps(value)


def _si(value: float) -> str:
    for unit, size in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.2f}{unit}"
    return f"{value:.0f}"
