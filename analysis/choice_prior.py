"""At chance because the model knows nothing, or because one answer outweighs what it knows?

T0-Eval scores by rank classification (PAPER.md 3.2): the answer choice with the highest
log-likelihood wins, with no calibration. A model whose log-likelihoods favour one choice string
("True" over "Neither") by more than its evidence moves them answers that string for every
example and scores exactly the share of that label (33.3% on a balanced three-way task), whatever
it knows. This module separates the two from the per-example choice log-likelihoods that every
T0-Eval result keeps (``harness/eval/t0_eval.py``: ``choice_loglikelihoods`` and ``gold``):

- **accuracy**: as T0-Eval scores it;
- **prior-removed accuracy**: the same argmax after subtracting, from each choice position, its
  mean log-likelihood over the prompt's examples. A diagnostic, never a score of the suite: it
  uses the evaluation examples themselves to estimate the prior (what contextual calibration
  estimates from a content-free input);
- **one answer**: the share of examples given the prompt's most frequent prediction (1.0: the
  same answer for every example).

    python -m analysis.choice_prior RUN/eval/step_280/t0.json [more.json ...]

Pure numpy; no JAX, no TensorFlow.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
from typing import Any, Mapping, Optional, Sequence

import numpy as np


def diagnose_prompt(loglikelihoods: Sequence[Sequence[float]], gold: Sequence[int]
                    ) -> dict[str, Optional[float]]:
    """Accuracy, prior-removed accuracy and the share of the commonest answer for one prompt.

    Args:
      loglikelihoods: per example, log p(choice | input) of each choice, in the template's order.
      gold: per example, the index of the correct choice.

    Returns:
      ``{"accuracy", "prior_removed", "one_answer", "examples"}``; the first three are None when
      there are no examples. Examples with different numbers of choices (a template whose choices
      depend on the example) are calibrated within their own group.
    """
    if len(loglikelihoods) != len(gold):
        raise ValueError(f"{len(loglikelihoods)} examples of log-likelihoods, {len(gold)} golds")
    if not gold:
        return {"accuracy": None, "prior_removed": None, "one_answer": None, "examples": 0}
    by_count: dict[int, list[int]] = collections.defaultdict(list)
    for index, scores in enumerate(loglikelihoods):
        by_count[len(scores)].append(index)
    raw = np.zeros(len(gold), dtype=bool)
    calibrated = np.zeros(len(gold), dtype=bool)
    predictions = []
    for count, indices in by_count.items():
        scores = np.asarray([loglikelihoods[i] for i in indices], dtype=np.float64)
        golds = np.asarray([gold[i] for i in indices])
        first = scores.argmax(axis=1)  # ties: the first choice, as T0-Eval breaks them
        raw[indices] = first == golds
        calibrated[indices] = (scores - scores.mean(axis=0)).argmax(axis=1) == golds
        predictions += [(count, int(p)) for p in first]
    commonest = collections.Counter(predictions).most_common(1)[0][1]
    return {"accuracy": float(raw.mean()), "prior_removed": float(calibrated.mean()),
            "one_answer": commonest / len(gold), "examples": len(gold)}


def diagnose(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per (dataset, prompt) of a T0-Eval result (``t0.json``), then one row per dataset
    with the medians over its prompts (prompt ``"median"``), as T0-Eval aggregates.

    Raises:
      ValueError: the result predates per-example log-likelihoods (re-run its evaluation).
    """
    rows = []
    for name, dataset in results.get("datasets", {}).items():
        per_prompt = []
        for prompt, record in dataset.get("prompts", {}).items():
            if "choice_loglikelihoods" not in record or "gold" not in record:
                raise ValueError(
                    f"T0-Eval result for {name}/{prompt} has no per-example log-likelihoods "
                    "(written before they were kept); evaluate the checkpoint again")
            row = {"dataset": name, "prompt": prompt,
                   **diagnose_prompt(record["choice_loglikelihoods"], record["gold"])}
            if row["examples"]:
                per_prompt.append(row)
            rows.append(row)
        if per_prompt:
            rows.append({"dataset": name, "prompt": "median", "examples": per_prompt[0]["examples"],
                         **{key: statistics.median(r[key] for r in per_prompt)
                            for key in ("accuracy", "prior_removed", "one_answer")},
                         "random": dataset.get("random_baseline")})
    return rows


def format_rows(rows: Sequence[Mapping[str, Any]], medians_only: bool = False) -> str:
    def pct(value: Optional[float]) -> str:
        return "" if value is None else f"{100 * value:.1f}"

    header = "| dataset | prompt | accuracy % | prior-removed % | one answer % | random % | n |"
    lines = [header, "|" + "---|" * 7]
    for row in rows:
        if medians_only and row["prompt"] != "median":
            continue
        lines.append(f"| {row['dataset']} | {row['prompt']} | {pct(row['accuracy'])} | "
                     f"{pct(row['prior_removed'])} | {pct(row['one_answer'])} | "
                     f"{pct(row.get('random'))} | {row['examples']} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.choice_prior",
        description="T0-Eval accuracy beside the accuracy with each choice's prior removed: is a "
                    "score at chance because one answer outweighs what the model knows?")
    parser.add_argument("results", nargs="+", help="T0-Eval results (t0.json) of archobj eval")
    parser.add_argument("--prompts", action="store_true",
                        help="every prompt, not only each dataset's median over its prompts")
    args = parser.parse_args(argv)
    for path in args.results:
        try:
            with open(path, encoding="utf-8") as handle:
                results = json.load(handle)
            rows = diagnose(results)
        except (OSError, json.JSONDecodeError, ValueError) as error:
            print(f"python -m analysis.choice_prior: {path}: {error}", file=sys.stderr)
            return 2
        print(f"{path}\n\n{format_rows(rows, medians_only=not args.prompts)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
