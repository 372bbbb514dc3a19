"""``archobj bench``: every benchmark, one record.

    archobj bench [--quick] [--out bench]        train, tiny, eval, data, resume, in that order
    archobj bench train|tiny|eval|data|resume    one of them (its entry in the record is replaced)

Each benchmark follows PERF.md's protocol (ahead-of-time compile, warm-up, intervals closed by
``block_until_ready``, medians, ratios measured side by side in one process) and returns a result
with ``format()`` (the text printed) and ``as_dict()`` (the figures). ``record`` keeps them in

    <out>/results.json   {"benchmarks": {name: {"machine", "command", "started", "seconds",
                                                 "result", "text"}}}
    <out>/results.md     one table per benchmark, each figure beside its target (issue [9])

An entry carries the machine it ran on (CPU model, cores, memory, accelerator, versions, XLA and
thread flags, the git commit) because entries of one file can come from different invocations.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
from typing import Any, Callable, Mapping, Optional

BENCHMARKS = ("train", "tiny", "eval", "data", "resume")
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"

# Issue [9]'s targets, in one place: results.md prints each figure beside its own.
TARGETS = {
    "cpu_mfu_small": 0.50,        # CD and ND at the small preset, CPU-MFU (causal-aware)
    "ed_tokens_vs_cd": 0.85,      # ED tokens/s within 15% of CD's at the same preset
    "tiny_ratio": 1.0,            # harness step / hand-written decoder, speed
    "eval_ratio": 3.0,            # archobj / lm-eval's HF backend, requests/s
    "data_headroom": 2.0,         # pipeline examples/s / step examples/s
    "resume_growth": 1.25,        # resume seconds at the largest k / at k = 0
    "gpu_mfu_1b": 0.45,           # ~1B decoder, bf16, one H100/H200
}


def _versions() -> dict[str, str]:
    from importlib import metadata

    found = {}
    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow", "seqio",
                 "torch", "transformers", "lm_eval"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def _cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> Optional[float]:
    try:
        for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _git_commit() -> Optional[str]:
    root = pathlib.Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                                capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, text=True, capture_output=True).stdout.strip()
        return commit + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def machine_record() -> dict[str, Any]:
    """What the figures were measured on (imports JAX to name its devices)."""
    import jax

    devices = jax.devices()
    return {"cpu": _cpu_model(), "cpu_count": os.cpu_count(), "memory_gib": _memory_gib(),
            "platform": devices[0].platform, "devices": len(devices),
            "device_kind": devices[0].device_kind, "python": platform.python_version(),
            "versions": _versions(), "commit": _git_commit(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "flags": {name: os.environ[name] for name in
                      ("XLA_FLAGS", "TF_CPP_MIN_LOG_LEVEL", "OMP_NUM_THREADS",
                       "JAX_ENABLE_X64", "XLA_PYTHON_CLIENT_MEM_FRACTION") if name in os.environ}}


def read_results(out_dir: pathlib.Path) -> dict[str, Any]:
    path = out_dir / RESULTS_JSON
    if not path.exists():
        return {"benchmarks": {}}
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON ({error}); move it aside to start a new record")
    if not isinstance(record.get("benchmarks"), dict):
        raise ValueError(f"{path}: no 'benchmarks' object; move it aside to start a new record")
    return record


def record(out_dir: pathlib.Path, name: str, result: Any, *, command: str, started: str,
           seconds: float, machine: Mapping[str, Any]) -> pathlib.Path:
    """Replaces ``name``'s entry in ``out_dir``'s record and rewrites its Markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results = read_results(out_dir)
    results["benchmarks"][name] = {"machine": dict(machine), "command": command,
                                   "started": started, "seconds": round(seconds, 1),
                                   "result": result.as_dict(), "text": result.format()}
    results["benchmarks"] = {k: results["benchmarks"][k] for k in BENCHMARKS
                             if k in results["benchmarks"]}
    _atomic_write(out_dir / RESULTS_JSON, json.dumps(results, indent=1, default=_jsonable) + "\n")
    _atomic_write(out_dir / RESULTS_MD, markdown(results))
    return out_dir / RESULTS_MD


def merge_train(out_dir: pathlib.Path, row_dirs: list[pathlib.Path], *, command: str,
                commit: Optional[str] = None) -> pathlib.Path:
    """One ``train`` entry in ``out_dir`` from the records of separate ``archobj bench train``
    runs (bench/gpu.sh runs each GPU row in its own process and out dir).

    Each row keeps its own command, start and seconds; a row whose XLA flags differ from the
    first row's has them added to its label. The machine is the first row's, with ``commit``
    (where given) in place of what the runs saw.
    """
    entries = [read_results(path)["benchmarks"]["train"] for path in row_dirs]
    first = entries[0]
    rows, texts = [], []
    for entry in entries:
        flags = entry["machine"].get("flags", {}).get("XLA_FLAGS")
        for row in entry["result"]["rows"]:
            row = {**row, "command": entry["command"], "started": entry["started"],
                   "seconds": entry["seconds"]}
            if flags != first["machine"].get("flags", {}).get("XLA_FLAGS"):
                row["label"] = f"{row['label'][:-1]}, XLA_FLAGS={flags})"
            rows.append(row)
        texts.append(entry["text"])
    machine = dict(first["machine"], **({"commit": commit} if commit else {}))
    out_dir.mkdir(parents=True, exist_ok=True)
    results = read_results(out_dir)
    results["benchmarks"]["train"] = {
        "machine": machine, "command": command, "started": first["started"],
        "seconds": round(sum(entry["seconds"] for entry in entries), 1),
        "result": {"rows": rows}, "text": "\n".join(texts)}
    _atomic_write(out_dir / RESULTS_JSON, json.dumps(results, indent=1, default=_jsonable) + "\n")
    _atomic_write(out_dir / RESULTS_MD, markdown(results))
    return out_dir / RESULTS_MD


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "__fspath__"):
        return os.fspath(value)
    return str(value)


def _atomic_write(path: pathlib.Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


# -------------------------------------------------------------------------------------------------
# Markdown: one table per benchmark, each figure beside its target.
# -------------------------------------------------------------------------------------------------

def _verdict(value: Optional[float], target: float, higher_is_better: bool = True) -> str:
    if value is None:
        return "not measured"
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "**not met**"


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1%}"


def _md_train(result: Mapping[str, Any]) -> list[str]:
    lines = ["| model | batch x tokens | median step | tokens/s | model TFLOP/s | XLA/analytic "
             "FLOPs | MFU causal-aware | MFU full-matrix | target |",
             "|---|---|---|---|---|---|---|---|---|"]
    by_label = {(row["label"], row["batch_size"]): row for row in result["rows"]}
    for row in result["rows"]:
        target = ""
        on_gpu = row.get("platform") == "gpu"
        if on_gpu and row["architecture"] in ("cd", "nd"):
            target = (f"GPU MFU >= {TARGETS['gpu_mfu_1b']:.0%}: "
                      f"{_verdict(row['mfu'], TARGETS['gpu_mfu_1b'])}")
        elif row["preset"] == "small" and row["architecture"] in ("cd", "nd"):
            target = (f"CPU-MFU >= {TARGETS['cpu_mfu_small']:.0%}: "
                      f"{_verdict(row['mfu'], TARGETS['cpu_mfu_small'])}")
        elif row["architecture"] == "ed":
            cd = by_label.get((row["label"].replace(" ed ", " cd "), row["batch_size"]))
            if cd:
                ratio = row["tokens_per_second"] / cd["tokens_per_second"]
                target = (f"ED/CD tokens/s {ratio:.2f} (>= {TARGETS['ed_tokens_vs_cd']}): "
                          f"{_verdict(ratio, TARGETS['ed_tokens_vs_cd'])}")
        xla = (f"{row['xla_flops_per_step'] / row['model_flops_per_step']:.2f}"
               if row.get("xla_flops_per_step") else "-")
        lines.append(
            f"| {row['label']} | {row['batch_size']} x {row['tokens_per_step'] // row['batch_size']}"
            f" | {row['median_step_seconds'] * 1e3:.1f} ms | {row['tokens_per_second']:,.0f} | "
            f"{row['model_flops_per_second'] / 1e12:.3f} | {xla} | {_pct(row['mfu'])} | "
            f"{_pct(row['mfu_full_matrix'])} | {target} |")
    peaks = [r["peak_flops"] for r in result["rows"]
             if r.get("peak_flops") and r.get("platform", "cpu") == "cpu"]
    gpu_peaks = sorted({r["peak_flops"] for r in result["rows"]
                        if r.get("peak_flops") and r.get("platform") == "gpu"})
    if gpu_peaks:
        lines += ["", "GPU MFU is against the datasheet's dense bf16 peak given with "
                      f"`--peak-tflops`: {', '.join(f'{p / 1e12:.0f}' for p in gpu_peaks)} "
                      "TFLOP/s per device. XLA's cost analysis on a GPU counts neither cuDNN's "
                      "kernels nor more than one layer of a scan: its column is no cross-check "
                      "there."]
    if peaks:
        spread = (f"{min(peaks) / 1e12:.3f}" if min(peaks) == max(peaks) else
                  f"{min(peaks) / 1e12:.3f}-{max(peaks) / 1e12:.3f}")
        lines += ["", f"MFU is against the CPU peak measured beside each row in the same process "
                      f"(best of jitted `jnp.dot` and numpy on 1024-4096 square matrices, the "
                      f"model's dtype; below float32 with a float32 result too, the form XLA:CPU "
                      f"runs on its bfloat16 GEMM): {spread} TFLOP/s."]
    if not gpu_peaks:
        lines += ["", f"GPU, ~1B decoder in bf16 (target MFU >= {TARGETS['gpu_mfu_1b']:.0%}): "
                      f"{result.get('gpu') or 'not measured in this run (no accelerator)'}."]
    return lines


def _md_tiny(result: Mapping[str, Any]) -> list[str]:
    lines = ["| case | rows x tokens | harness tokens/s | hand-written tokens/s | ratio | "
             "harness MFU | target |", "|---|---|---|---|---|---|---|"]
    for row in result["cases"]:
        ratio = row["ratio"]
        lines.append(f"| {row['case']} | {row['batch_size']} x "
                     f"{row['tokens_per_step'] // row['batch_size']} | "
                     f"{row['harness_tokens_per_s']:,.0f} | {row['reference_tokens_per_s']:,.0f} | "
                     f"{ratio:.2f} | {_pct(row.get('harness_mfu'))} | "
                     f">= {TARGETS['tiny_ratio']:.1f}: {_verdict(ratio, TARGETS['tiny_ratio'])} |")
    return lines


def _md_eval(result: Mapping[str, Any]) -> list[str]:
    ratio = result["ratio"]
    return ["| backend | requests/s |", "|---|---|",
            f"| lm-eval Hugging Face (`hf`, seq2seq, float32) | {result['hf_requests_per_second']:.1f} |",
            f"| archobj | {result['archobj_requests_per_second']:.1f} |",
            "",
            f"archobj / hf: **{ratio:.2f}x** (median of per-repeat ratios; target >= "
            f"{TARGETS['eval_ratio']:g}x: {_verdict(ratio, TARGETS['eval_ratio'])}); "
            f"{result['num_requests']} requests on a {result['parameters'] / 1e6:.1f}M-parameter "
            f"model. Forward roofline: {result['roofline_requests_per_second']:,.0f} requests/s "
            f"at the measured peak; archobj reaches {_pct(result['roofline_fraction'])} of it."]


def _md_data(result: Mapping[str, Any]) -> list[str]:
    lines = ["| shape | stream | batch | pipeline examples/s | tokens/s | padding | start-up | "
             "step examples/s | headroom | target |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(
            f"| {row['shape']} | {row['pair']} | {row['batch_size']} | "
            f"{row['pipeline_examples_per_second']:,.1f} | {row['pipeline_tokens_per_second']:,.0f} "
            f"| {row['padding_fraction']:.1%} | {row['startup_seconds']:.1f} s | "
            f"{row['step_examples_per_second']:.1f} | {row['headroom']:.1f}x | "
            f">= {TARGETS['data_headroom']:g}x: {_verdict(row['headroom'], TARGETS['data_headroom'])}"
            " |")
    return lines


def _md_resume(result: Mapping[str, Any]) -> list[str]:
    rows = sorted(result["rows"], key=lambda row: row["step"])
    lines = ["| restart at step k | to first step, saved data state | to first step, replaying "
             "k batches | data position: state | data position: replay | state size |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['step']} | {row['state_seconds']:.1f} s | "
                     f"{row['replay_seconds']:.1f} s | {row['state_position']:.2f} s | "
                     f"{row['replay_position']:.2f} s | {row['state_bytes'] / 1e3:,.0f} kB |")
    if len(rows) > 1:
        growth = rows[-1]["state_seconds"] / rows[0]["state_seconds"]
        lines += ["", f"Resume time at k = {rows[-1]['step']} over k = {rows[0]['step']}: "
                      f"{growth:.2f} with the saved state (target <= {TARGETS['resume_growth']}: "
                      f"{_verdict(growth, TARGETS['resume_growth'], higher_is_better=False)}), "
                      f"{rows[-1]['replay_seconds'] / rows[0]['replay_seconds']:.2f} by replay."]
    return lines


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


_MARKDOWN = {"train": ("Training step", _md_train), "tiny": ("The tiny grid's step", _md_tiny),
             "eval": ("Zero-shot evaluation", _md_eval), "data": ("Input pipelines", _md_data),
             "resume": ("Resume", _md_resume)}


def markdown(results: Mapping[str, Any]) -> str:
    """``results.md``: a section per benchmark with its table, command and machine."""
    out = ["# archobj benchmarks", "",
           "Made by `archobj bench` (harness/bench/); the protocol is PERF.md's. Figures from a "
           "shared machine are noisy: ratios measured side by side in one run are the ones to "
           "quote.", ""]
    for name, entry in results["benchmarks"].items():
        title, render = _MARKDOWN[name]
        machine = entry["machine"]
        out += [f"## {title} (`{entry['command']}`)", "",
                f"{entry['started']}, {entry['seconds']:.0f} s, commit {machine.get('commit')}; "
                f"{machine.get('cpu')}, {machine.get('cpu_count')} CPUs, "
                f"{machine.get('memory_gib')} GiB, {machine.get('platform')} "
                f"({machine.get('device_kind')}); jax {machine['versions'].get('jax')}.", ""]
        try:
            out += render(entry["result"])
        except (KeyError, TypeError, ValueError) as error:  # a result from another version
            out += [f"(table unavailable: {error!r}; the text output follows)"]
        out += ["", "<details><summary>printed output</summary>", "", "```", entry["text"], "```",
                "", "</details>", ""]
    return "\n".join(out)


def run_and_record(name: str, run: Callable[[], Any], *, out: str, command: str,
                   log: Callable[[str], None] = None) -> Any:
    """Runs one benchmark, prints it and records it in ``out``."""
    log = log or say
    started = datetime.datetime.now(datetime.timezone.utc)
    log(f"== bench {name} ==")
    result = run()
    seconds = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()
    log(result.format())
    path = record(pathlib.Path(out), name, result, command=command,
                  started=started.isoformat(timespec="seconds"), seconds=seconds,
                  machine=machine_record())
    log(f"recorded in {path.parent / RESULTS_JSON} and {path}")
    return result


def say(line: str) -> None:
    """Progress on stdout, at once (stdout is block-buffered when piped)."""
    print(line, flush=True)


def command_line() -> str:
    return " ".join(["archobj"] + sys.argv[1:])

