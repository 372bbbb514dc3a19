"""``archobj world write DIR --seed S [--size NAME]``: the command body, and ``python -m
objectives.world`` for use before the command is wired into ``archobj``."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence


def cli_write(out_dir: str, seed: int = 0, size: str = "default") -> int:
    """Writes (or finds) the world and prints what the grid needs from it; returns the exit code.

    Raises:
      ValueError: a bad seed or size (the CLI prints it as ``archobj: error: ...``).
    """
    from objectives.world.writer import write_world

    start = time.perf_counter()
    manifest = write_world(out_dir, seed, size=size)
    counts = manifest["counts"]
    print(f"world v{manifest['version']} seed {seed} ({size}) in {out_dir}: "
          f"{counts['corpus_documents']} documents, {sum(counts['mtf_examples'].values())} "
          f"multitask examples x {counts['mtf_templates']} templates, "
          f"{len(counts['eval_examples'])} held-out datasets of "
          f"{max(counts['eval_examples'].values())}, vocabulary {manifest['vocabulary']['ids']} ids "
          f"(model.vocab_size={manifest['vocabulary']['model_vocab_size']}); "
          f"{time.perf_counter() - start:.1f} s")
    print(f"  data.source={out_dir}/corpus.txt  data.vocabulary={out_dir}/spiece.model  "
          f"mtf data.source={out_dir}/mtf  eval --data-dir {out_dir}/eval")
    print(f"  t0 tasks: {','.join(manifest['tasks']['t0'])}")
    print(f"  eai tasks: {','.join(manifest['tasks']['eai'])}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m objectives.world")
    commands = parser.add_subparsers(dest="command", required=True)
    write = commands.add_parser("write", help="write a world into a directory")
    write.add_argument("out_dir")
    write.add_argument("--seed", type=int, default=0)
    write.add_argument("--size", default="default")
    args = parser.parse_args(argv)
    try:
        return cli_write(args.out_dir, args.seed, args.size)
    except ValueError as error:
        print(f"world: error: {error}", file=sys.stderr)
        return 2
