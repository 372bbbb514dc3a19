"""Logical axis names, the rules that map them onto a device mesh, and sharded initialisation.

Every parameter carries logical axis names (``nn.with_logical_partitioning``); activations are
constrained only at the embedding output, q/k/v, the MLP hidden layer and the logits (STYLE.md B2.4).
One short rules table turns logical names into mesh axes, as t5x's ``standard_logical_axis_rules``:
the batch is split over ``data``, heads / MLP hidden / vocabulary over ``model`` (Megatron-style
tensor parallelism), everything else replicated.

Parameters are created directly in their shardings: ``jax.eval_shape(init)`` gives the shapes and
logical names without allocating, the rules give a ``NamedSharding`` per leaf, and ``jax.jit(init,
out_shardings=...)`` materialises each shard on its own device. A 4.8B model is never gathered on
one host.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional, Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh

# Mesh axes.
DATA = "data"
MODEL = "model"

# Logical axes.
BATCH = "batch"
LENGTH = "length"
EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
KV = "kv"
VOCAB = "vocab"
LAYERS = "layers"
RELPOS_BUCKETS = "relpos_buckets"

LOGICAL_AXIS_RULES: tuple[tuple[str, Optional[str]], ...] = (
    (BATCH, DATA),
    (VOCAB, MODEL),
    (MLP, MODEL),
    (HEADS, MODEL),
    (EMBED, None),
    (KV, None),
    (LENGTH, None),
    (LAYERS, None),
    (RELPOS_BUCKETS, None),
)


def make_mesh(data: int = -1, model: int = 1,
              devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A 2-D ``(data, model)`` mesh over ``devices`` (default: all).

    Args:
      data: size of the data axis; -1 takes whatever the model axis leaves.
      model: size of the model (tensor-parallel) axis.
      devices: devices to use, in order.

    Raises:
      ValueError: when the sizes do not multiply to the number of devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    if model < 1 or len(devices) % model:
        raise ValueError(f"model={model}: must divide the number of devices ({len(devices)})")
    if data == -1:
        data = len(devices) // model
    if data * model != len(devices):
        raise ValueError(
            f"mesh (data={data}, model={model}) needs {data * model} devices; {len(devices)} are "
            "available")
    return Mesh(np.asarray(devices).reshape(data, model), (DATA, MODEL))


def logical_to_shardings(abstract_variables: Any, mesh: Mesh,
                         rules: Sequence[tuple[str, Optional[str]]] = LOGICAL_AXIS_RULES) -> Any:
    """``NamedSharding`` for every leaf of a (boxed, abstract) variable tree."""
    specs = nn.get_partition_spec(abstract_variables)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def init_sharded(init_fn: Callable[[jax.Array], Any], rng: jax.Array, mesh: Mesh,
                 rules: Sequence[tuple[str, Optional[str]]] = LOGICAL_AXIS_RULES) -> tuple[Any, Any]:
    """Initialises variables straight into their shardings.

    Args:
      init_fn: ``rng -> variables`` (e.g. ``lambda r: model.init(r, batch)``), returning boxed
        (logically partitioned) leaves.
      rng: PRNG key.
      mesh: the device mesh.
      rules: logical-to-mesh rules.

    Returns:
      ``(variables, shardings)``: unboxed arrays, each already laid out on the mesh, and the matching
      tree of ``NamedSharding``.
    """
    abstract = jax.eval_shape(init_fn, rng)
    shardings = logical_to_shardings(abstract, mesh, rules)

    def init_unboxed(key: jax.Array) -> Any:
        return nn.meta.unbox(init_fn(key))

    variables = jax.jit(init_unboxed, out_shardings=shardings)(rng)
    return variables, shardings


@contextlib.contextmanager
def mesh_context(mesh: Mesh,
                 rules: Sequence[tuple[str, Optional[str]]] = LOGICAL_AXIS_RULES) -> Iterator[Mesh]:
    """Context in which the model's activation constraints resolve against ``mesh``.

    Trace (jit) sharded steps inside it. Outside it the constraints are no-ops, which is what a
    single-device run wants.
    """
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield mesh
