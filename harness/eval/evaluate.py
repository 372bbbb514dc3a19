"""``archobj eval``: score one checkpoint on the study's suites and write the results beside it.

    archobj eval runs/cd_flm --suite eai --suite t0 [--tasks copa,rte] [--limit 50]
                 [--data-dir DIR | --fixtures] [--step N] [--as-arch nd] [--batch-size 8]

Each suite runs as the study ran it (PAPER.md 3.1, 3.2), on the ``archobj`` lm-eval model
(``harness/eval/lm_eval_adapter.py``): EAI-Eval through lm-evaluation-harness at 512 / 114 tokens,
T0-Eval by rank classification at 1024 / 256. The results of a suite go to

    <checkpoint>/eval/step_<N>/<suite>.json           raw results (lm-eval's output; T0-Eval's
                                                      per-prompt scores), plus run metadata
    <checkpoint>/eval/step_<N>/<suite>_summary.json   the per-task table printed at the end

(``--out DIR`` writes them elsewhere; smoke runs with ``--fixtures`` or ``--limit`` go to
``step_<N>-fixtures-limit<k>`` so they never replace a real evaluation). A suite's files are written atomically when it finishes, so
a failure in a later suite, or a re-run that fails, never loses results already written.

Everything a user can get wrong (suite and task names, the checkpoint, the step, the data directory)
is checked before any parameter is read or anything compiles.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import pathlib
import time
from typing import Callable, Mapping, Optional, Sequence

from harness.storage import checkpoint as ckpt

# suite -> (module, inputs length, targets length): the study's evaluation lengths (PAPER.md 3.1:
# 512 / 114 for the harness; 3.2: 1024 / 256 for T0-Eval).
SUITES: Mapping[str, tuple[str, int, int]] = {
    "eai": ("harness.eval.eai_eval", 512, 114),
    "t0": ("harness.eval.t0_eval", 1024, 256),
}
EVAL_DIR = "eval"


@dataclasses.dataclass(frozen=True)
class SuiteResult:
    """One suite's outcome: where its files are and its summary rows."""

    suite: str
    results_path: pathlib.Path
    summary_path: pathlib.Path
    summary: list
    table: str
    seconds: float


def _suite_module(suite: str):
    import importlib

    return importlib.import_module(SUITES[suite][0])


def split_tasks(suites: Sequence[str], tasks: Optional[Sequence[str]]) -> dict[str, Optional[list[str]]]:
    """Assigns each requested task name to the suites that know it.

    Returns:
      suite -> its task names, or None for all of its tasks when ``tasks`` is None. A suite none of
      whose tasks were named is left out.

    Raises:
      ValueError: an unknown suite, or a task name no selected suite knows (one line, listing the
        valid names).
    """
    unknown = [s for s in suites if s not in SUITES]
    if unknown or not suites:
        raise ValueError(f"--suite {unknown[0] if unknown else ''!r}: unknown suite; choose from "
                         f"{list(SUITES)}")
    if tasks is None:
        return {suite: None for suite in dict.fromkeys(suites)}
    assigned: dict[str, list[str]] = {}
    for name in tasks:
        owners = [suite for suite in dict.fromkeys(suites) if _knows(suite, name)]
        if not owners:
            valid = sorted({n for s in suites for n in _task_names(s)})
            raise ValueError(f"--tasks {name!r}: not a task of suite(s) {list(suites)}; valid "
                             f"names: {', '.join(valid)}")
        for suite in owners:
            assigned.setdefault(suite, []).append(name)
    return assigned


def _knows(suite: str, name: str) -> bool:
    try:
        _suite_module(suite).resolve_tasks([name])
    except ValueError:
        return False
    return True


def _task_names(suite: str) -> list[str]:
    module = _suite_module(suite)
    return list(module.TASKS if suite == "eai" else module.T0_EVAL_TASKS)


def resolve_step(checkpoint: pathlib.Path, step: Optional[int]) -> int:
    """The step to evaluate: ``step`` if saved, else the latest; one-line error otherwise."""
    ckpt.read_config(checkpoint)  # a missing directory or config.json: one line
    steps = ckpt.available_steps(checkpoint)
    if not steps:
        raise ckpt.CheckpointError(f"{checkpoint}: has no saved checkpoints under "
                                   f"{checkpoint / 'checkpoints'}; train or convert a model first")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise ckpt.CheckpointError(f"{checkpoint}: step {step} is not saved; saved steps: {steps}")
    return step


def results_dir_name(step: int, fixtures: bool = False, limit: Optional[int] = None,
                     architecture: Optional[str] = None, dtype: Optional[str] = None) -> str:
    """``step_<N>`` for a full evaluation of the checkpoint as it is. Smoke runs (fixtures,
    ``limit``) and evaluations that change the model (another architecture's mask, another
    compute dtype) get their own directory, ``step_<N>-as-nd-float32-fixtures-limit<k>``, so they
    never overwrite the checkpoint's own results."""
    return (f"step_{step}" + (f"-as-{architecture}" if architecture else "")
            + (f"-{dtype}" if dtype else "") + ("-fixtures" if fixtures else "")
            + (f"-limit{limit}" if limit is not None else ""))


def _data_dir(suite: str, data_dir: Optional[str], fixtures: bool) -> Optional[str]:
    if fixtures:
        return str(_suite_module(suite).FIXTURE_DIR)
    return data_dir


def evaluate_checkpoint(checkpoint: str | os.PathLike, suites: Sequence[str], *,
                        tasks: Optional[Sequence[str]] = None, limit: Optional[int] = None,
                        data_dir: Optional[str] = None, fixtures: bool = False,
                        step: Optional[int] = None, architecture: Optional[str] = None,
                        vocabulary: Optional[str] = None, batch_size: int = 8,
                        mesh: Optional[tuple[int, int]] = None, dtype: Optional[str] = None,
                        out_dir: Optional[str | os.PathLike] = None,
                        bootstrap_iters: Optional[int] = None,
                        max_prompts: Optional[int] = None,
                        length_buckets: Optional[Sequence[int]] = None,
                        report: Callable[[str], None] = print,
                        progress: bool = True) -> list[SuiteResult]:
    """Evaluates ``checkpoint`` on ``suites``; see the module docstring.

    Args:
      checkpoint: a run or model directory.
      suites: "eai" and/or "t0".
      tasks: task or dataset names (each goes to the suites that know it); None for all.
      limit: at most this many examples per task (a smoke run; the numbers are then not the
        suite's).
      data_dir: the offline data layout both suites read; None reads the Hugging Face hub.
      fixtures: read the small synthetic fixtures the project ships instead (tests, demos).
      step: the checkpoint step; None for the latest.
      architecture: evaluate a cd checkpoint as nd or the reverse (PAPER.md 3.1).
      vocabulary: the tokenizer; None for the one ``config.json`` records (a run's
        ``data.vocabulary``, a saved model's ``vocabulary``).
      batch_size: rows per device call.
      mesh: ``(data, model)``: shard the parameters over the devices by the training rules
        (a model larger than one device); None: one device.
      dtype: compute dtype instead of the checkpoint's (e.g. "float32" for a bfloat16 model).
      out_dir: where to write; default ``<checkpoint>/eval/<results_dir_name(...)>``.
      bootstrap_iters: lm-eval's bootstrap draws for the EAI-Eval stderrs without a closed form
        (F1, perplexity; 0 drops every lm-eval stderr, as a grid may when its report bootstraps
        the per-example scores itself); None for lm-eval's 1000.
      max_prompts: T0-Eval: at most this many prompts per dataset (``t0_eval.prompt_subset``);
        None for all of them, as the study.
      length_buckets: the padded lengths of the scorer's passes (``Scorer``); None for its
        default. Fewer lengths compile fewer shapes and pad more.
      report: receives progress lines and the summary tables.
      progress: show lm-eval's progress bars (a grid turns them off: it reports each stage).

    Returns:
      One ``SuiteResult`` per suite, in order.
    """
    if fixtures and data_dir is not None:
        raise ValueError("--fixtures and --data-dir: choose one (the fixtures are a data directory)")
    if data_dir is not None and not pathlib.Path(data_dir).is_dir():
        raise ValueError(f"--data-dir {data_dir}: not a directory; pass the directory the suites' "
                         "export() wrote, or leave it out to read the Hugging Face hub")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"--limit {limit!r}: must be a positive integer")
    plan = split_tasks(list(suites), list(tasks) if tasks is not None else None)
    checkpoint = pathlib.Path(checkpoint).expanduser()
    step = resolve_step(checkpoint, step)
    stored = ckpt.read_config(checkpoint)
    switched = architecture if architecture not in (None, stored.architecture) else None
    recast = dtype if dtype not in (None, stored.dtype) else None
    out = (pathlib.Path(out_dir) if out_dir is not None
           else checkpoint / EVAL_DIR / results_dir_name(step, fixtures, limit, switched, recast))

    from harness.eval.lm_eval_adapter import ArchobjLM

    results: list[SuiteResult] = []
    lm = None
    for suite, suite_tasks in plan.items():
        module = _suite_module(suite)
        _, inputs_length, targets_length = SUITES[suite]
        report(f"{suite}: {checkpoint} step {step}, {inputs_length} / {targets_length} tokens")
        if lm is None:  # one model load serves every suite
            lm = ArchobjLM(str(checkpoint), vocabulary=vocabulary, architecture=architecture,
                           step=step, batch_size=batch_size, max_inputs_length=inputs_length,
                           max_targets_length=targets_length, mesh=mesh, dtype=dtype,
                           length_buckets=length_buckets, progress=progress)
        else:
            lm.set_lengths(inputs_length, targets_length)
        start = time.perf_counter()
        options = ({"bootstrap_iters": bootstrap_iters}
                   if suite == "eai" and bootstrap_iters is not None else
                   {"max_prompts": max_prompts} if suite == "t0" and max_prompts is not None
                   else {})
        raw = module.evaluate(lm, data_dir=_data_dir(suite, data_dir, fixtures),
                              tasks=suite_tasks, limit=limit, **options)
        seconds = time.perf_counter() - start
        raw["archobj"] = {
            "checkpoint": str(checkpoint), "step": step, "suite": suite,
            "architecture": lm.scorer.config.architecture, "vocabulary": lm.vocabulary,
            "dtype": lm.scorer.config.dtype,
            "inputs_length": inputs_length, "targets_length": targets_length,
            "limit": limit, "data": "fixtures" if fixtures else (data_dir or "huggingface-hub"),
            # How rows were grouped and padded (the same scores up to float reassociation).
            "batch_size": lm.scorer.batch_size, "length_buckets": list(lm.scorer.length_buckets),
            "seconds": seconds,
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        summary = module.summarize(raw)
        table = module.format_summary(summary)
        out.mkdir(parents=True, exist_ok=True)
        results_path, summary_path = out / f"{suite}.json", out / f"{suite}_summary.json"
        ckpt.write_json_atomically(results_path, raw)
        ckpt.write_json_atomically(summary_path, {"suite": suite, "step": step, "rows": summary,
                                                  **({"limit": limit} if limit else {})})
        report(table)
        report(f"{suite}: wrote {results_path} ({seconds:.1f} s)")
        results.append(SuiteResult(suite, results_path, summary_path, summary, table, seconds))
    return results
