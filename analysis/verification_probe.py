"""Does a model judge the built-in world's claims in the corpus's own words?

The held-out NLI datasets (objectives/world/heldout.py) ask whether a hypothesis is true, false or
undetermined given a premise, under T0-Eval's and EAI-Eval's prompts. When a model scores at
chance there, this probe asks the question the prompts cannot: does the model judge claims at
all, in the form it was pretrained on? It draws fresh verification documents from the corpus's
own generators (``objectives.world.corpus``: a claim about a world fact, about a passage, about
where a story left an object), cuts each before its verdict, and ranks the verdicts of a few
answer vocabularies by log-likelihood, as rank classification does:

- **accuracy**: the three-way choice (chance 33.3; true, false and unknown are balanced);
- **true vs false**: the same between the first two answers only, on the claims that are true or
  false (chance 50): whether the model checks a claim against what it knows or was told;
- **unknown found**: the share of undetermined claims (the future, feelings) given the third
  answer.

    python -m analysis.verification_probe RUN_DIR [--step N] [--examples 120]

RUN_DIR is a training run on a built-in world (its ``data.source`` is the world's corpus). The
documents are drawn with a seed of their own, so they are new draws from the corpus's
distribution, not the documents the model trained on.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random
import sys
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from analysis.tables import Table

KINDS = ("verify_world", "verify_passage", "verify_story")
VERDICTS = ("true", "false", "unknown")
# The answer vocabularies of the held-out NLI prompts (T0-Eval's anli/cb templates), in the order
# true, false, unknown.
VOCABULARIES = (("Yes", "No", "Maybe"), ("True", "False", "Neither"),
                ("True", "False", "Inconclusive"), ("Guaranteed", "Impossible", "Possible"))
_CUT = "\x00"


def claims(world: Any, kind: str, count: int, seed: int = 0) -> list[tuple[str, str]]:
    """``count`` verification documents of ``kind``, each cut before its verdict.

    Returns:
      ``[(context, verdict)]``: the document up to and including its question, and "true",
      "false" or "unknown".
    """
    from objectives.world import corpus

    def cut(rng: random.Random, claim: str, verdict: str) -> str:
        return f"{corpus.question(rng, claim)}{_CUT}{verdict}"

    rng = random.Random(f"archobj-probe/{kind}/{seed}")
    generate = getattr(corpus, kind)
    items = []
    for _ in range(count):
        context, rest = generate(rng, world, ask=cut).split(_CUT)
        items.append((context, rest.split()[0]))
    return items


def score(loglikelihoods: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """Accuracy, true-vs-false accuracy and unknown recall from ``[n, 3]`` log-likelihoods."""
    predictions = loglikelihoods.argmax(1)
    decided = gold < 2
    return {
        "accuracy": float((predictions == gold).mean()),
        "true_vs_false": float((loglikelihoods[decided, :2].argmax(1) == gold[decided]).mean()),
        "unknown_found": float((predictions[gold == 2] == 2).mean()),
    }


def probe(run_dir: str | pathlib.Path, *, step: Optional[int] = None, examples: int = 120,
          batch_size: int = 64) -> list[dict[str, Any]]:
    """Score every (kind, vocabulary) of the probe with the run's checkpoint.

    Raises:
      ValueError: the run was not trained on a built-in world.
    """
    from lm_eval.api.instance import Instance

    from harness.eval.lm_eval_adapter import ArchobjLM
    from harness.storage.checkpoint import CheckpointError, read_vocabulary
    from objectives.world.facts import make_world
    from objectives.world.writer import read_manifest, resolve_size

    directory = pathlib.Path(run_dir)
    try:
        vocabulary = read_vocabulary(directory)
    except CheckpointError as error:
        raise ValueError(f"{directory}: no readable config.json ({error}); pass a training run "
                         "directory") from None
    # A built-in world keeps its tokenizer beside its manifest (objectives/world/writer.py).
    manifest = (read_manifest(pathlib.Path(vocabulary).parent, verify=False)
                if vocabulary else None)
    if manifest is None:
        raise ValueError(f"{directory}: data.vocabulary={vocabulary!r} is not a built-in world's "
                         "corpus tokenizer (its directory has no world.json); probe a run trained "
                         "on objectives.world")
    size = resolve_size(manifest["size"])
    world = make_world(manifest["seed"], size.people, size.towns)

    # Every kind's documents with every vocabulary's three verdicts, scored in one call.
    cases = [(kind, items, vocabulary) for kind in KINDS
             for items in [claims(world, kind, examples)] for vocabulary in VOCABULARIES]
    requests = [Instance("loglikelihood", {}, (context, f" {word}."), 0)
                for _, items, vocabulary in cases for context, _ in items for word in vocabulary]
    lm = ArchobjLM(str(directory), step=step, batch_size=batch_size, dtype="float32",
                   progress=False)
    scores = np.array([s for s, _ in lm.loglikelihood(requests, disable_tqdm=True)])
    rows, start = [], 0
    for kind, items, vocabulary in cases:
        loglikelihoods = scores[start:start + 3 * len(items)].reshape(len(items), 3)
        start += 3 * len(items)
        gold = np.array([VERDICTS.index(verdict) for _, verdict in items])
        rows.append({"kind": kind, "vocabulary": "/".join(vocabulary),
                     **score(loglikelihoods, gold), "examples": len(items)})
    return rows


def table(rows: Sequence[dict[str, Any]], run: str) -> Table:
    """The rows as an ``analysis.tables.Table`` (Markdown with a title and what chance is)."""
    columns = ["kind", "answers", "accuracy %", "true vs false %", "unknown found %", "n"]
    cells = [[r["kind"], r["vocabulary"], f"{100 * r['accuracy']:.1f}",
              f"{100 * r['true_vs_false']:.1f}", f"{100 * r['unknown_found']:.1f}",
              str(r["examples"])] for r in rows]
    return Table("verification_probe", f"Verification in the corpus's own words: {run}",
                 "Chance: accuracy 33.3, true vs false 50; fresh corpus documents, cut before "
                 "their verdicts.", columns, cells, pd.DataFrame(rows))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.verification_probe",
        description="Rank the verdicts of fresh corpus verification documents: does the model "
                    "judge the built-in world's claims in the corpus's own words?")
    parser.add_argument("run", help="a training run on a built-in world")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (the latest)")
    parser.add_argument("--examples", type=int, default=120, help="documents per kind")
    parser.add_argument("--json", action="store_true", help="print JSON rows, not a table")
    args = parser.parse_args(argv)
    try:
        rows = probe(args.run, step=args.step, examples=args.examples)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(rows, indent=1) if args.json else table(rows, args.run).markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
