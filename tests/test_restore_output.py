"""What a user sees when a run resumes from damaged checkpoints: one warning per skipped step, or
the one-line error when no step can be restored, and nothing else.

orbax reads the arrays of an item concurrently; when one read fails it used to close its event loop
with the others still running, and those printed hundreds of lines of asyncio tracebacks ("Event
loop is closed", "Task exception was never retrieved") at any moment up to interpreter exit, around
TensorStore's raw error text. pytest's capture misses much of that, so each case restores in a real
subprocess (as ``archobj train`` does when it resumes) and checks its whole stdout and stderr.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from harness.train.train_checkpoint import TrainCheckpointer
from models.transformer import abstract_params
from helpers import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The restoring process: the tiny model's parameters and Adam state, logging as a library user or
# the CLI sets it up (warnings and errors shown), the error printed as the CLI prints it.
RESTORE = """
import logging, sys
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
import jax, optax
from harness.storage.checkpoint import CheckpointError
from harness.train.train_checkpoint import TrainCheckpointer
from models.config import preset
from models.transformer import abstract_params
abstract = abstract_params(preset("tiny", "cd", dtype="float32"))
abstract_opt = jax.eval_shape(optax.adam(1e-3).init, abstract)
with TrainCheckpointer(sys.argv[1], every=1, keep=None) as ckpt:
    try:
        step, *_ = ckpt.restore(abstract_params=abstract, abstract_opt_state=abstract_opt)
    except CheckpointError as error:
        print(f"archobj: error: {error}", file=sys.stderr)
        sys.exit(2)
open(sys.argv[2], "w").write(str(step))
"""

NOISE = ("Traceback", "Event loop is closed", "pybind11", "Task exception", "never retrieved",
         "was destroyed", "tensorstore_spec", "TensorStore", "bound method")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A run with steps 1, 2, 3 of the tiny model (random parameters and Adam state)."""
    run = tmp_path_factory.mktemp("pristine") / "run"
    abstract = abstract_params(tiny_config("cd"))
    abstract_opt = jax.eval_shape(optax.adam(1e-3).init, abstract)
    rng = np.random.default_rng(0)

    def fill(tree):
        return jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(a.dtype)
                            if np.issubdtype(a.dtype, np.floating) else np.zeros(a.shape, a.dtype),
                            tree)
    with TrainCheckpointer(run, every=1, keep=None, async_save=False) as ckpt:
        for step in (1, 2, 3):
            ckpt.save(step, fill(abstract), fill(abstract_opt),
                      {"rng": jax.random.key(step), "tokens_seen": step * 256})
    return run


def _resume(pristine, tmp_path, damage):
    """Copies the run, damages it, restores it in a subprocess: (exit code, output lines, step)."""
    run = tmp_path / "run"
    shutil.copytree(pristine, run)
    damage(run / "checkpoints")
    result = tmp_path / "restored_step"
    process = subprocess.run([sys.executable, "-c", RESTORE, str(run), str(result)], cwd=ROOT,
                             env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=300, check=False)
    output = process.stdout
    for noise in NOISE:
        assert noise not in output, output
    step = int(result.read_text()) if result.exists() else None
    return process.returncode, output.splitlines(), step


def _truncate(step_dir, item, pattern="**/d/*"):
    """A torn write: the item's data files (by default all of them) cut to half their length."""
    files = [p for p in (step_dir / item).glob(pattern) if p.is_file()]
    assert len(files) > 1
    for path in files:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_truncated_step_warns_in_one_line(pristine, tmp_path):
    # Only the arrays' chunks (not the OCDBT tree nodes): orbax then raises a bare Exception whose
    # text is the repr of a TensorStore object ("<bound method pybind11_detail_...spec of ...>").
    code, lines, step = _resume(pristine, tmp_path,
                                lambda c: _truncate(c / "3", "params", "ocdbt.process_*/d/*"))
    assert (code, step) == (0, 2)
    # Which array's read fails first varies (they are read concurrently).
    pattern = (rf"WARNING {re.escape(str(tmp_path / 'run' / 'checkpoints'))}: checkpoint 3 could "
               r"not be restored \(params: data truncated in [\w.]+\); restored step 2 instead")
    assert len(lines) == 1 and re.fullmatch(pattern, lines[0]), lines


def test_deleted_manifest_warns_in_one_line(pristine, tmp_path):
    code, lines, step = _resume(pristine, tmp_path,
                                lambda c: (c / "3" / "params" / "manifest.ocdbt").unlink())
    assert (code, step) == (0, 2)
    checkpoints = tmp_path / "run" / "checkpoints"
    manifest = checkpoints / "3" / "params" / "manifest.ocdbt"
    assert lines == [f"WARNING {checkpoints}: checkpoint 3 could not be restored (params: file "
                     f"missing: {manifest}); restored step 2 instead"]


def test_every_step_damaged_prints_the_error_alone(pristine, tmp_path):
    def damage(checkpoints):
        _truncate(checkpoints / "3", "params")
        (checkpoints / "2" / "opt_state" / "manifest.ocdbt").unlink()
        _truncate(checkpoints / "1", "opt_state")
    code, lines, step = _resume(pristine, tmp_path, damage)
    assert (code, step) == (2, None)
    checkpoints = tmp_path / "run" / "checkpoints"
    pattern = (
        rf"archobj: error: {re.escape(str(checkpoints))}: no step can be restored \(nothing was "
        r"deleted\) - step 3: params: data truncated in [\w.]+; step 2: opt_state: file missing: "
        rf"{re.escape(str(checkpoints / '2' / 'opt_state' / 'manifest.ocdbt'))}; "
        r"step 1: opt_state: data truncated in [\w.]+")
    assert len(lines) == 1 and re.fullmatch(pattern, lines[0]), lines
    assert sorted(p.name for p in checkpoints.iterdir()) == ["1", "2", "3"]  # nothing deleted


def test_orbax_waits_for_failed_reads_only_while_restoring():
    """The hook into orbax (a private function of 0.12.8): if an upgrade removes or renames it, the
    tests above fail with the noise, and this one says where to look."""
    from orbax.checkpoint._src import asyncio_utils
    from harness.storage import orbax_damage
    original = asyncio_utils._run_sync_via_new_loop
    assert original is orbax_damage._orbax_run_sync, "see orbax_damage.waits_for_failed_reads"
    with orbax_damage.waits_for_failed_reads():
        with orbax_damage.waits_for_failed_reads():
            assert asyncio_utils._run_sync_via_new_loop is orbax_damage._run_sync_and_drain
        assert asyncio_utils._run_sync_via_new_loop is orbax_damage._run_sync_and_drain
    assert asyncio_utils._run_sync_via_new_loop is original
