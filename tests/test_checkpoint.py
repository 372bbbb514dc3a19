"""Tests of the on-disk model format (harness/storage/checkpoint.py)."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from harness.storage.checkpoint import CheckpointError, available_steps, load_model, save_model
from models import sharding as shd
from models.config import preset
from models.transformer import abstract_params, init_fn


def _tiny(arch: str = "ed", **overrides):
    return preset("tiny", arch, dtype="float32", **overrides)


def _random_params(cfg, seed: int):
    """Random parameters of ``cfg``'s exact tree (the real initialiser compiles ~10 s on CPU)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape).astype(a.dtype)),
                        abstract_params(cfg))


def _flat(params):
    return {jax.tree_util.keystr(p): leaf
            for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def _assert_bit_equal(a, b):
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    for name in fa:
        x, y = np.asarray(fa[name]), np.asarray(fb[name])
        assert x.dtype == y.dtype, name
        assert x.shape == y.shape, name
        # Compare bytes, so that even NaN payloads / signed zeros would have to survive.
        assert x.tobytes() == y.tobytes(), name


@pytest.fixture(scope="module")
def saved_ed(tmp_path_factory):
    """An 'ed' model saved at steps 0 and 7 (read-only for the tests that use it)."""
    cfg = _tiny("ed", tie_embeddings=False)
    params = _random_params(cfg, 0)
    directory = tmp_path_factory.mktemp("saved_ed") / "model"
    save_model(directory, cfg, params, step=0)
    params7 = jax.tree.map(lambda x: x + 1.0, params)
    save_model(directory, cfg, params7, step=7)
    return directory, cfg, params, params7


@pytest.mark.parametrize("arch", ["cd", "nd", "ed"])
def test_round_trip_bit_exact(tmp_path, arch):
    cfg = _tiny(arch)
    params = _random_params(cfg, 1)
    step_dir = save_model(tmp_path / "m", cfg, params, step=3)
    assert step_dir == tmp_path / "m" / "checkpoints" / "3"
    assert step_dir.is_dir()
    loaded_cfg, loaded = load_model(tmp_path / "m")
    assert loaded_cfg == cfg
    _assert_bit_equal(params, loaded)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(loaded))


def test_latest_step_by_default_and_explicit_step(saved_ed):
    directory, cfg, params, params7 = saved_ed
    assert available_steps(directory) == [0, 7]
    _, latest = load_model(directory)
    _assert_bit_equal(params7, latest)
    _, first = load_model(directory, step=0)
    _assert_bit_equal(params, first)


def test_numpy_params_round_trip(tmp_path):
    cfg = _tiny("cd")
    params = jax.tree.map(np.asarray, _random_params(cfg, 2))
    save_model(tmp_path, cfg, params)
    _, loaded = load_model(tmp_path)
    _assert_bit_equal(params, loaded)


def test_relative_directories_work(tmp_path, monkeypatch):
    """orbax wants absolute paths; ``archobj convert hf-t5 SRC runs/t0`` passes a relative one."""
    cfg = _tiny("cd")
    params = jax.tree.map(np.asarray, _random_params(cfg, 2))
    monkeypatch.chdir(tmp_path)
    save_model("runs/model", cfg, params, step=3)
    assert available_steps("runs/model") == [3]
    _assert_bit_equal(params, load_model("runs/model")[1])


def test_restore_onto_mesh_with_requested_shardings(saved_ed):
    directory, cfg, _, params7 = saved_ed
    mesh = shd.make_mesh(4, 2)
    shardings = shd.logical_to_shardings(
        jax.eval_shape(init_fn(cfg), jax.random.key(0)), mesh)["params"]
    _, loaded = load_model(directory, shardings=shardings)
    flat_loaded, flat_wanted = _flat(loaded), _flat(shardings)
    assert flat_loaded.keys() == flat_wanted.keys()
    for name, leaf in flat_loaded.items():
        assert leaf.sharding == flat_wanted[name], name
    # Something is actually split over the model axis (heads, mlp, vocab).
    wo = loaded["decoder"]["layers"]["mlp"]["wo"]
    assert wo.sharding.spec == jax.sharding.PartitionSpec(None, "model", None)
    assert wo.addressable_shards[0].data.shape == (cfg.num_layers, cfg.d_ff // 2, cfg.d_model)
    _assert_bit_equal(params7, loaded)


def test_single_sharding_for_every_leaf(saved_ed):
    directory, _, _, params7 = saved_ed
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[3])
    _, loaded = load_model(directory, shardings=sharding)
    assert all(x.sharding == sharding for x in jax.tree.leaves(loaded))
    _assert_bit_equal(params7, loaded)


def test_restored_dtype_follows_stored_config(tmp_path):
    cfg = _tiny("cd")
    params = _random_params(cfg, 3)
    save_model(tmp_path, cfg, params)
    # The same checkpoint read under a bfloat16 param_dtype comes back as bfloat16.
    path = tmp_path / "config.json"
    document = json.loads(path.read_text())
    document["model"]["param_dtype"] = "bfloat16"
    path.write_text(json.dumps(document))
    loaded_cfg, loaded = load_model(tmp_path)
    assert loaded_cfg.param_dtype == "bfloat16"
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(loaded))
    np.testing.assert_array_equal(
        np.asarray(loaded["token_embedder"]["embedding"]),
        np.asarray(params["token_embedder"]["embedding"].astype(jnp.bfloat16)))


def test_save_casts_to_param_dtype(tmp_path):
    cfg = _tiny("cd", param_dtype="bfloat16")
    params = _random_params(cfg.replace(param_dtype="float32"), 4)
    save_model(tmp_path, cfg, params)
    _, loaded = load_model(tmp_path)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(loaded))


def test_other_config_keys_are_preserved(tmp_path):
    cfg = _tiny("cd")
    tmp_path.joinpath("config.json").write_text(json.dumps({"train": {"steps": 10}, "seed": 3}))
    save_model(tmp_path, cfg, _random_params(cfg, 0))
    document = json.loads(tmp_path.joinpath("config.json").read_text())
    assert document["train"] == {"steps": 10} and document["seed"] == 3
    assert document["model"] == cfg.to_dict()


# -------------------------------------------------------------------------------------------------
# Errors: one CheckpointError naming the path, and nothing on disk is deleted or overwritten.
# -------------------------------------------------------------------------------------------------

def _snapshot(directory: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _expect_error(match_path, fn, *args, **kwargs) -> str:
    with pytest.raises(CheckpointError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert str(match_path) in message
    assert "\n" not in message
    return message


def _saved_copy(tmp_path, arch="cd"):
    cfg = _tiny(arch)
    directory = tmp_path / "model"
    save_model(directory, cfg, _random_params(cfg, 0))
    return directory, cfg


def test_error_directory_missing(tmp_path):
    _expect_error(tmp_path / "nope", load_model, tmp_path / "nope")


def test_error_config_missing(tmp_path):
    directory, _ = _saved_copy(tmp_path)
    (directory / "config.json").unlink()
    message = _expect_error(directory / "config.json", load_model, directory)
    assert "missing" in message


def test_error_config_not_json(tmp_path):
    directory, cfg = _saved_copy(tmp_path)
    (directory / "config.json").write_text("{not json")
    before = _snapshot(directory)
    message = _expect_error(directory / "config.json", load_model, directory)
    assert "JSON" in message
    # Saving into the directory must not replace the unreadable config either.
    _expect_error(directory / "config.json", save_model, directory, cfg,
                  _random_params(cfg, 0), step=1)
    assert _snapshot(directory) == before


@pytest.mark.parametrize("document", [{"train": {}}, [1, 2], {"model": {"bogus": 1}}])
def test_error_config_without_valid_model(tmp_path, document):
    directory, _ = _saved_copy(tmp_path)
    (directory / "config.json").write_text(json.dumps(document))
    _expect_error(directory / "config.json", load_model, directory)


def test_error_checkpoints_missing_or_empty(tmp_path):
    cfg = _tiny("cd")
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model": cfg.to_dict()}))
    message = _expect_error(directory / "checkpoints", load_model, directory)
    assert "missing" in message
    (directory / "checkpoints").mkdir()
    message = _expect_error(directory / "checkpoints", load_model, directory)
    assert "no saved step" in message


def test_error_step_absent_lists_available_steps(saved_ed):
    directory = saved_ed[0]
    message = _expect_error(directory / "checkpoints" / "5", load_model, directory, step=5)
    assert "[0, 7]" in message


# Orbax/TensorStore leave a callback aimed at a closed asyncio loop when a read fails; harmless.
_IGNORE_CLOSED_LOOP = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@_IGNORE_CLOSED_LOOP
def test_error_corrupt_data_file(tmp_path):
    directory, _ = _saved_copy(tmp_path)
    step_dir = directory / "checkpoints" / "0"
    # Truncate every chunk file of the array store (the parameters' bytes).
    data_files = [p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data_files
    for p in data_files:
        p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    before = _snapshot(directory)
    _expect_error(step_dir, load_model, directory)
    assert _snapshot(directory) == before  # nothing cleaned up or rewritten


@_IGNORE_CLOSED_LOOP
def test_error_corrupt_metadata_deleted(tmp_path):
    directory, _ = _saved_copy(tmp_path)
    step_dir = directory / "checkpoints" / "0"
    (step_dir / "params" / "_METADATA").unlink()
    before = _snapshot(directory)
    _expect_error(step_dir, load_model, directory)
    assert _snapshot(directory) == before


def test_error_tree_does_not_match_config(tmp_path):
    directory, cfg = _saved_copy(tmp_path, "cd")
    path = directory / "config.json"
    # Wider MLP: shapes differ.
    path.write_text(json.dumps({"model": cfg.replace(d_ff=96).to_dict()}))
    message = _expect_error(directory / "checkpoints" / "0", load_model, directory)
    assert "mlp/wo" in message
    # Encoder-decoder config over a decoder-only checkpoint: names differ.
    ed = _tiny("ed")
    path.write_text(json.dumps({"model": ed.to_dict()}))
    message = _expect_error(directory / "checkpoints" / "0", load_model, directory)
    assert "missing" in message and "cross_attention" in message


def test_error_existing_step_is_never_overwritten(saved_ed, tmp_path):
    directory, cfg, params, _ = saved_ed
    before = _snapshot(directory)
    message = _expect_error(directory / "checkpoints" / "7", save_model, directory, cfg, params,
                            step=7)
    assert "already exists" in message
    assert _snapshot(directory) == before


def test_error_different_model_into_directory_with_steps(tmp_path):
    directory, cfg = _saved_copy(tmp_path, "cd")
    other = cfg.replace(d_ff=96)
    before = _snapshot(directory)
    message = _expect_error(directory / "config.json", save_model, directory, other,
                            _random_params(other, 0), step=1)
    assert "d_ff" in message
    assert _snapshot(directory) == before


def test_error_params_do_not_match_config(tmp_path):
    cfg = _tiny("cd")
    params = _random_params(cfg, 0)
    message = _expect_error(tmp_path / "m", save_model, tmp_path / "m", cfg.replace(d_ff=96),
                            params)
    assert "wrong shapes" in message
    message = _expect_error(tmp_path / "m", save_model, tmp_path / "m", cfg, {"params": params})
    assert "variables['params']" in message
    assert not (tmp_path / "m").exists()  # nothing written when the check fails


def test_error_shardings_do_not_match(saved_ed):
    directory, _, _, _ = saved_ed
    mesh = shd.make_mesh(4, 2)
    cd = _tiny("cd")
    wrong = shd.logical_to_shardings(jax.eval_shape(init_fn(cd), jax.random.key(0)), mesh)["params"]
    _expect_error(directory, load_model, directory, shardings=wrong)
