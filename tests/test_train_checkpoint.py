"""Tests of whole-training-state checkpoints (harness/train/train_checkpoint.py)."""

import json
import logging
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from harness.storage.checkpoint import CheckpointError, load_model
from harness.train.train_checkpoint import TrainCheckpointer, rng_from_meta
from models import sharding as shd
from models.transformer import abstract_params
from helpers import assert_one_line_error, tiny_config

LOGGER = "harness.train.train_checkpoint"


@pytest.fixture(scope="module")
def model():
    """The tiny decoder's config and parameter shapes (computed once: tracing init is not free)."""
    cfg = tiny_config("cd")
    return cfg, abstract_params(cfg)


def _random_like(abstract, seed: int):
    """Random arrays of ``abstract``'s shapes and dtypes (the real initialiser compiles slowly)."""
    rng = np.random.default_rng(seed)

    def fill(a):
        if np.issubdtype(a.dtype, np.integer):
            return jnp.asarray(rng.integers(0, 1000, a.shape).astype(a.dtype))
        return jnp.asarray(rng.standard_normal(a.shape).astype(a.dtype))
    return jax.tree.map(fill, abstract)


def _state(abstract, optimizer: str, seed: int):
    """``(params, opt_state, abstract_opt_state)`` with every leaf random (not optax's zeros)."""
    tx = {"adam": lambda: optax.adam(1e-3),
          "adafactor": lambda: optax.adafactor(1e-3),
          # Masked weight decay puts empty MaskedNode()s into the state, clipping a chain.
          "adamw-masked": lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
              1e-3, weight_decay=0.1, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)))
          }[optimizer]()
    abstract_opt = jax.eval_shape(tx.init, abstract)
    return _random_like(abstract, seed), _random_like(abstract_opt, seed + 1), abstract_opt


def _meta(step: int, seed: int = 0, **extra):
    return {"rng": jax.random.key(seed), "tokens_seen": step * 1024, **extra}


def _assert_bit_equal(a, b):
    fa = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(a)[0]}
    fb = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(b)[0]}
    assert fa.keys() == fb.keys()
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for name in fa:
        x, y = np.asarray(fa[name]), np.asarray(fb[name])
        assert (x.dtype, x.shape) == (y.dtype, y.shape), name
        assert x.tobytes() == y.tobytes(), name


def _restore(ckpt, abstract, abstract_opt, step=None, shardings=None):
    return ckpt.restore(step, abstract_params=abstract, abstract_opt_state=abstract_opt,
                        shardings=shardings)


@pytest.mark.parametrize("optimizer", ["adam", "adafactor", "adamw-masked"])
def test_round_trip_bitwise_async(tmp_path, model, optimizer):
    _, abstract = model
    params, opt_state, abstract_opt = _state(abstract, optimizer, seed=1)
    params2, opt_state2, _ = _state(abstract, optimizer, seed=5)
    key = jax.random.split(jax.random.key(7, impl="rbg"))[1]
    with TrainCheckpointer(tmp_path / "run", every=10, keep=None, async_save=True) as ckpt:
        assert ckpt.is_empty()
        assert ckpt.save(10, params, opt_state,
                         {"rng": key, "tokens_seen": np.int64(10240), "loss": jnp.float32(2.5)})
        assert not ckpt.save(15, params, opt_state, _meta(15))  # off the every-10 grid
        # The caller may free its buffers once save returns (the host copy is done), and a second
        # save while the first may still be in flight is queued behind it.
        expected = jax.tree.map(np.array, (params, opt_state))
        for leaf in jax.tree.leaves((params, opt_state)):
            leaf.delete()
        assert ckpt.save(20, params2, opt_state2, _meta(20, data_position=19))
        ckpt.wait()
        assert ckpt.all_steps() == [10, 20]

        step, got_params, got_opt, meta = _restore(ckpt, abstract, abstract_opt, step=10)
        assert step == 10 and ckpt.last_restore.skipped == ()
        _assert_bit_equal(expected[0], got_params)
        _assert_bit_equal(expected[1], got_opt)
        assert meta == {"step": 10, "rng": [int(x) for x in jax.random.key_data(key)],
                        "rng_impl": "rbg", "data_position": 10, "tokens_seen": 10240, "loss": 2.5}
        restored_key = rng_from_meta(meta)
        assert jax.random.key_impl(restored_key) == jax.random.key_impl(key)
        assert np.array_equal(jax.random.key_data(restored_key), jax.random.key_data(key))

        step, got_params, got_opt, meta = _restore(ckpt, abstract, abstract_opt)  # the latest
        assert (step, meta["data_position"]) == (20, 19)
        _assert_bit_equal(params2, got_params)
        _assert_bit_equal(opt_state2, got_opt)


def test_keep_last_two_and_named_steps_forever(tmp_path):
    tree = {"w": jnp.arange(8.0)}
    opt = (jnp.zeros((), jnp.int32), {"w": jnp.ones(8)})
    run = tmp_path / "run"
    with TrainCheckpointer(run, every=2, keep=2, keep_steps={3}, async_save=False) as ckpt:
        saved = [s for s in range(1, 9) if ckpt.save(s, tree, opt, _meta(s))]
        assert saved == [2, 3, 4, 6, 8]  # named step 3 is saved although it is off the grid
        assert ckpt.all_steps() == [3, 6, 8]
    # The policy lives in the checkpointer, so a resumed run keeps honouring it.
    with TrainCheckpointer(run, every=2, keep=2, keep_steps={3}, async_save=True) as ckpt:
        ckpt.save(10, tree, opt, _meta(10))
        ckpt.save(12, tree, opt, _meta(12))
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == \
        ["10", "12", "3"]


def _truncate_params(step_dir):
    """A torn write: every data file of the params item cut to half its length."""
    files = [p for p in (step_dir / "params").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files
    for path in files:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _delete_params_file(step_dir):
    (step_dir / "params" / "manifest.ocdbt").unlink()


@pytest.mark.parametrize("damage, reason", [
    (_truncate_params, "params: data truncated in w"),
    (_delete_params_file, "params: file missing: {checkpoints}/3/params/manifest.ocdbt")],
    ids=["truncated", "manifest_deleted"])
def test_damaged_latest_step_falls_back(tmp_path, caplog, damage, reason):
    tree = {"w": jnp.arange(16.0).reshape(4, 4)}
    opt = {"m": jnp.ones((4, 4))}
    abstract, abstract_opt = jax.eval_shape(lambda: tree), jax.eval_shape(lambda: opt)
    with TrainCheckpointer(tmp_path / "run", every=1, keep=3) as ckpt:
        for s in (1, 2, 3):
            ckpt.save(s, jax.tree.map(lambda x: x + s, tree), opt, _meta(s))
        ckpt.wait()
        damage(tmp_path / "run" / "checkpoints" / "3")

        with caplog.at_level(logging.WARNING, logger=LOGGER):
            step, params, _, meta = _restore(ckpt, abstract, abstract_opt)
        assert step == 2 and meta["step"] == 2
        _assert_bit_equal(jax.tree.map(lambda x: x + 2, tree), params)
        # The reason is short: no TensorStore specs or reprs (tests/test_restore_output.py checks
        # what a real process prints).
        reason = reason.format(checkpoints=tmp_path / "run" / "checkpoints")
        assert ckpt.last_restore.skipped == ((3, reason),)
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
            f"{tmp_path / 'run' / 'checkpoints'}: checkpoint 3 could not be restored ({reason}); "
            "restored step 2 instead"]
        assert (tmp_path / "run" / "checkpoints" / "3").is_dir()  # kept for inspection
        with pytest.raises(CheckpointError) as excinfo:  # an explicit step never falls back
            _restore(ckpt, abstract, abstract_opt, step=3)
        assert_one_line_error(excinfo, "step 3")

        # The resumed run reaches step 3 again: the damaged one is moved aside, not overwritten,
        # and garbage collection (keep=3) never deletes it.
        ckpt.save(3, jax.tree.map(lambda x: x + 30, tree), opt, _meta(3))
        step, params, _, _ = _restore(ckpt, abstract, abstract_opt)
        assert step == 3 and ckpt.last_restore.skipped == ()
        _assert_bit_equal(jax.tree.map(lambda x: x + 30, tree), params)
        for s in (4, 5, 6):
            ckpt.save(s, tree, opt, _meta(s))
        assert ckpt.all_steps() == [4, 5, 6]
    aside = [p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].startswith("3.corrupt-")


def test_orphaned_temporary_directory_falls_back(tmp_path, caplog):
    tree, opt = {"w": jnp.arange(4.0)}, {"m": jnp.zeros(4)}
    abstract, abstract_opt = jax.eval_shape(lambda: tree), jax.eval_shape(lambda: opt)
    checkpoints = tmp_path / "run" / "checkpoints"
    with TrainCheckpointer(tmp_path / "run", every=1, keep=None) as ckpt:
        ckpt.save(1, tree, opt, _meta(1))
        ckpt.save(2, tree, opt, _meta(2))
        ckpt.wait()
        # What a crash mid-save leaves behind: step 3's uncommitted temporary directory.
        shutil.copytree(checkpoints / "2", checkpoints / "3.orbax-checkpoint-tmp")
        (checkpoints / "3.orbax-checkpoint-tmp" / "meta" / "metadata").unlink()
        assert ckpt.all_steps() == [1, 2] and ckpt.partial_steps() == [3]

        with caplog.at_level(logging.WARNING, logger=LOGGER):
            step, _, _, _ = _restore(ckpt, abstract, abstract_opt)
        assert step == 2
        (skipped_step, reason), = ckpt.last_restore.skipped
        assert skipped_step == 3 and "3.orbax-checkpoint-tmp" in reason
        assert any("checkpoint 3 could not be restored" in r.getMessage() for r in caplog.records)

        ckpt.save(3, tree, opt, _meta(3))  # orbax would delete the orphan; it is moved aside
        ckpt.wait()
        assert ckpt.all_steps() == [1, 2, 3] and ckpt.partial_steps() == []
    assert [p.name.split("-")[0] for p in checkpoints.iterdir() if ".partial-" in p.name] == \
        ["3.partial"]


def test_nothing_restorable_raises_one_line(tmp_path):
    tree, opt = {"w": jnp.arange(4.0)}, {"m": jnp.zeros(4)}
    abstract, abstract_opt = jax.eval_shape(lambda: tree), jax.eval_shape(lambda: opt)
    checkpoints = tmp_path / "run" / "checkpoints"
    with TrainCheckpointer(tmp_path / "run", every=1, keep=None, async_save=False) as ckpt:
        with pytest.raises(CheckpointError) as excinfo:
            _restore(ckpt, abstract, abstract_opt)
        assert_one_line_error(excinfo, "no checkpoint")
        ckpt.save(1, tree, opt, _meta(1))
        ckpt.save(2, tree, opt, _meta(2))
        _truncate_params(checkpoints / "1")
        _delete_params_file(checkpoints / "2")
        shutil.copytree(checkpoints / "2", checkpoints / "4.orbax-checkpoint-tmp")
        with pytest.raises(CheckpointError) as excinfo:
            _restore(ckpt, abstract, abstract_opt)
    message = assert_one_line_error(
        excinfo, "step 4: partial save",
        f"step 2: params: file missing: {checkpoints / '2' / 'params' / 'manifest.ocdbt'}; ",
        "step 1: params: data truncated in w")
    assert "no step can be restored" in message
    assert {p.name for p in checkpoints.iterdir()} >= {"1", "2", "4.orbax-checkpoint-tmp"}


def _mesh_shardings(tree, data: int, model_axis: int):
    """A ``NamedSharding`` per leaf on a (data, model) mesh: the first dimension that divides goes
    on ``data``, the last other one on ``model`` (so each mesh lays every leaf out differently)."""
    mesh = shd.make_mesh(data=data, model=model_axis)

    def spec(leaf):
        axes = [None] * leaf.ndim
        for i, n in enumerate(leaf.shape):
            if data > 1 and n % data == 0:
                axes[i] = shd.DATA
                break
        for i in reversed(range(leaf.ndim)):
            if axes[i] is None and model_axis > 1 and leaf.shape[i] % model_axis == 0:
                axes[i] = shd.MODEL
                break
        return NamedSharding(mesh, PartitionSpec(*axes))
    return jax.tree.map(spec, tree)


def test_restore_onto_other_meshes(tmp_path, model):
    _, abstract = model
    params, opt_state, abstract_opt = _state(abstract, "adam", seed=3)
    saved_on = {"params": _mesh_shardings(abstract, 4, 2),
                "opt_state": _mesh_shardings(abstract_opt, 4, 2)}
    params = jax.device_put(params, saved_on["params"])
    opt_state = jax.device_put(opt_state, saved_on["opt_state"])
    with TrainCheckpointer(tmp_path / "run", every=1, async_save=True) as ckpt:
        ckpt.save(7, params, opt_state, _meta(7))
        for data, model_axis in ((8, 1), (2, 4)):
            target = {"params": _mesh_shardings(abstract, data, model_axis),
                      "opt_state": _mesh_shardings(abstract_opt, data, model_axis)}
            step, got_params, got_opt, _ = _restore(ckpt, abstract, abstract_opt,
                                                    shardings=target)
            assert step == 7
            _assert_bit_equal(params, got_params)
            _assert_bit_equal(opt_state, got_opt)
            for got, want in ((got_params, target["params"]), (got_opt, target["opt_state"])):
                assert all(g.sharding == w for g, w in zip(jax.tree.leaves(got),
                                                           jax.tree.leaves(want)))


def test_load_model_reads_a_training_run(tmp_path, model, caplog):
    """The parameters of a training checkpoint, quietly: orbax's notice for each item not asked
    for (optimizer state, meta), which would print three lines per evaluation, is dropped."""
    cfg, abstract = model
    params, opt_state, _ = _state(abstract, "adam", seed=4)
    run = tmp_path / "run"
    with TrainCheckpointer(run, every=1, model_config=cfg) as ckpt:
        with pytest.raises(CheckpointError) as excinfo:  # checked before anything is written
            ckpt.save(1, {"params": params}, opt_state, _meta(1))
        assert_one_line_error(excinfo, "do not match the model")
        ckpt.save(5, params, opt_state, _meta(5))
    assert json.loads((run / "config.json").read_text())["model"] == cfg.to_dict()
    caplog.set_level(logging.INFO)
    loaded_cfg, loaded = load_model(run)
    assert loaded_cfg == cfg
    _assert_bit_equal(params, loaded)
    assert not [r for r in caplog.records if "could not be restored" in r.getMessage()]


def test_caller_errors_are_one_line_and_write_nothing(tmp_path):
    tree, opt = {"w": jnp.arange(4.0)}, {"m": jnp.zeros(4)}
    run = tmp_path / "run"
    with pytest.raises(CheckpointError) as excinfo:
        TrainCheckpointer(run, every=0)
    assert_one_line_error(excinfo, "every=0")
    with TrainCheckpointer(run, every=1, keep=None, async_save=True) as ckpt:
        ckpt.save(1, tree, opt, _meta(1))
        with pytest.raises(CheckpointError) as excinfo:  # in flight or not: never overwritten
            ckpt.save(1, tree, opt, _meta(1), force=True)
        assert_one_line_error(excinfo, "step 1 already exists")
        with pytest.raises(CheckpointError) as excinfo:
            ckpt.save(2, tree, opt, {"rng": jax.random.key(0)})
        assert_one_line_error(excinfo, "tokens_seen")
        with pytest.raises(CheckpointError) as excinfo:
            ckpt.save(2, tree, opt, _meta(2, note=object()))
        assert_one_line_error(excinfo, "JSON")
        # Another model's tree is a caller error, reported at once rather than as damage.
        with pytest.raises(CheckpointError) as excinfo:
            ckpt.restore(abstract_params={"w": jax.ShapeDtypeStruct((5,), jnp.float32)},
                         abstract_opt_state=jax.eval_shape(lambda: opt))
        assert_one_line_error(excinfo, "do not match abstract_params", "(5,)")
        assert ckpt.all_steps() == [1]


def test_imports_neither_tensorflow_nor_seqio():
    code = "import harness.train.train_checkpoint, sys; print(' '.join(sys.modules))"
    modules = set(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                 text=True).stdout.split())
    assert "orbax.checkpoint" in modules
    assert not {"tensorflow", "seqio", "t5", "torch"} & modules
