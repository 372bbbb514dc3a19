"""The training state and its shardings.

``TrainState`` holds only arrays: the step, the parameters and the optimizer state. The model and
the optimizer stay outside it (``harness.train.steps`` closes over them), so the state is a plain pytree
that orbax saves and restores as it is, and that ``jax.jit`` shards with one tree of
``NamedSharding``.

Sharded creation, the pattern of ``models.sharding.init_sharded``::

    shardings = state_shardings(param_shardings, optimizer, abstract_params, mesh)
    state = jax.jit(lambda p: create_train_state(p, optimizer), out_shardings=shardings)(params)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec


class TrainState(struct.PyTreeNode):
    """Everything a train step updates.

    Attributes:
      step: number of applied updates, int32 scalar; also the index that the dropout rng and the
        logged learning rate use. Steps rejected as non-finite do not count.
      params: the model parameters (``{'decoder': ..., ...}``, the tree under ``'params'``).
      opt_state: the optimizer's state for ``params``.
    """

    step: jax.Array
    params: Any
    opt_state: Any


def create_train_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
    """A state at step 0 with a fresh optimizer state for ``params``.

    Jit it with ``out_shardings=state_shardings(...)`` to create it directly on a mesh. Unjitted,
    the optimizer's zeros are uncommitted arrays; pass the state through ``jax.device_put`` first,
    or the jitted step compiles a second time when it meets its own (committed) output.
    """
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params))


def state_shardings(param_shardings: Any, optimizer: optax.GradientTransformation,
                    abstract_params: Any, mesh: Mesh) -> TrainState:
    """``NamedSharding`` for every leaf of the ``TrainState`` that ``create_train_state`` makes.

    An optimizer-state leaf that mirrors a parameter (its path ends with that parameter's path and
    it has the same shape: Adam's moments, Adafactor's unfactored second moments) gets the
    parameter's sharding. Everything else is replicated: the step, optimizer counts, Adafactor's
    factored row/column statistics (one dimension smaller than the parameter, so small) and its
    ``[1]`` placeholders. The optimizer state's structure comes from ``jax.eval_shape`` of
    ``optimizer.init``, so any optax chain works, masked and clipped ones included.

    Args:
      param_shardings: ``NamedSharding`` per parameter (``init_sharded``'s second output,
        ``['params']``).
      optimizer: the optimizer the state is created with.
      abstract_params: parameter shapes (``models.transformer.abstract_params``, or the arrays);
        boxed (logically partitioned) leaves are unboxed, inside a mesh context too.
      mesh: the device mesh.

    Returns:
      A ``TrainState`` whose leaves are ``NamedSharding``: use it as ``in_shardings`` /
      ``out_shardings`` of the jitted step.

    Raises:
      ValueError: when ``param_shardings`` and ``abstract_params`` have different trees.
    """
    abstract_params = _strip_boxes(abstract_params)
    replicated = NamedSharding(mesh, PartitionSpec())
    param_leaves = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
    sharding_leaves = jax.tree_util.tree_flatten_with_path(
        param_shardings, is_leaf=lambda x: x is None)[0]
    shardings = {_names(path): sharding for path, sharding in sharding_leaves}
    # Parameter path (plain names) -> (shape, sharding).
    by_path = {_names(path): (tuple(leaf.shape), shardings.get(_names(path)) or replicated)
               for path, leaf in param_leaves}
    if set(shardings) != set(by_path):
        raise ValueError(
            f"param_shardings: its {len(shardings)} paths do not match the {len(by_path)} "
            "parameter paths; pass init_sharded(...)[1]['params'] for the same parameters")
    suffix_lengths = sorted({len(path) for path in by_path}, reverse=True)

    def leaf_sharding(path: tuple[Any, ...], leaf: Any) -> NamedSharding:
        names = _names(path)
        for length in suffix_lengths:
            if length > len(names):
                continue
            match = by_path.get(names[len(names) - length:])
            if match is not None and match[0] == tuple(getattr(leaf, "shape", ())):
                return match[1]
        return replicated

    abstract_opt_state = jax.eval_shape(optimizer.init, abstract_params)
    return TrainState(
        step=replicated,
        params=jax.tree.map(lambda sharding: sharding or replicated, param_shardings,
                            is_leaf=lambda x: x is None),
        opt_state=jax.tree_util.tree_map_with_path(leaf_sharding, abstract_opt_state))


def _strip_boxes(tree: Any) -> Any:
    """``nn.meta.unbox`` without sharding constraints: inside a mesh context, ``unbox`` constrains
    each value, which fails on the ``ShapeDtypeStruct`` leaves of an ``eval_shape``."""
    def strip(leaf: Any) -> Any:
        while isinstance(leaf, nn.meta.AxisMetadata):
            leaf = (leaf.unbox(apply_constraint=False) if isinstance(leaf, nn.Partitioned)
                    else leaf.unbox())
        return leaf
    return jax.tree.map(strip, tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def _names(path: tuple[Any, ...]) -> tuple[Any, ...]:
    """A pytree key path as plain names, so paths inside the optimizer state compare with the
    parameters' (dict keys, namedtuple fields and sequence indices alike)."""
    return tuple(_key(entry) for entry in path)


def _key(entry: Any) -> Any:
    for attribute in ("key", "name", "idx"):
        if hasattr(entry, attribute):
            return getattr(entry, attribute)
    return entry
