"""A built-in world: a deterministic, seeded generator of everything the tiny grid trains and
evaluates on, shipped as code (no data files, no downloads). See ``objectives/WORLD.md``.

Public API:

- ``write_world(out_dir, seed=0, *, size="default") -> manifest``: writes the corpus, the multitask
  mixture, the held-out suite, the tokenizer and ``world.json`` (a no-op when already written).
- ``read_manifest(out_dir)``: the manifest of a written world (None if absent or damaged).
- ``T0_TASKS`` / ``EAI_TASKS``: the datasets the world provides to each suite (``tasks:``).
- ``WorldSize`` / ``SIZES``: how big a world is (``"default"``, ``"test"``).
- ``cli_write(out_dir, seed, size)``: the body of ``archobj world write DIR --seed S``.
"""

from objectives.world.heldout import EAI_TASKS, T0_TASKS
from objectives.world.writer import (SIZES, VERSION, WorldSize, read_manifest, resolve_size,
                                     write_world)
from objectives.world.cli import cli_write, main

__all__ = ["EAI_TASKS", "SIZES", "T0_TASKS", "VERSION", "WorldSize", "cli_write", "main",
           "read_manifest", "resolve_size", "write_world"]
