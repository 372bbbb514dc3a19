"""Model step benchmark, following PERF.md's protocol.

1. Compile ahead of time; record compile seconds and XLA's memory and FLOP estimates.
2. Run untimed warm-up steps.
3. Time ``steps`` steps as one interval closed by ``jax.block_until_ready``, ``repeats`` times; report
   the median interval / steps.
4. Report tokens/s, model TFLOP/s from the analytic count (models/flops.py), MFU against a peak that
   is *measured* on CPU (best of jitted ``jnp.dot`` and numpy on square matrices, same dtype, right
   before and after the timed steps; below float32 the dot with a float32 result counts too, the
   form XLA:CPU runs on its bfloat16 GEMM: ``measure_matmul_peak``) or taken from
   ``--peak-tflops`` on an accelerator.

The step is the training loop's own ``harness.train.steps.make_train_step`` with the study's Adafactor
(forward, backward, z-loss, update) on a synthetic batch shaped like the study's objective for the
architecture (cd: full LM; nd: prefix LM with a half-length prefix; ed: span
corruption 512/114). It measures the model; the data pipeline is timed on its own.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from harness.bench.suite import say
from harness.train.optim import logical_axes_of, make_optimizer, make_schedule
from harness.train.state import create_train_state, state_shardings
from harness.train.steps import make_train_step
from models import sharding
from models.config import ModelConfig
from models.flops import FlopCount, decoder_only_flops, encoder_decoder_flops
from models.transformer import Transformer, init_fn


@dataclasses.dataclass(frozen=True)
class BenchResult:
    """Figures of one benchmark run; ``format()`` renders them."""

    label: str
    batch_size: int
    tokens_per_step: int
    compile_seconds: float
    step_seconds: list[float]
    flops: FlopCount
    xla_flops: Optional[float]
    temp_bytes: Optional[int]
    peak_flops: Optional[float]
    devices: int
    preset: str = ""
    architecture: str = ""
    attention: str = "einsum"
    platform: str = "cpu"
    scan_unroll: int = 1

    @property
    def median_step(self) -> float:
        return statistics.median(self.step_seconds)

    @property
    def model_flops_per_second(self) -> float:
        return self.flops.total * self.batch_size / self.median_step

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_per_step / self.median_step

    def mfu(self, full_matrix: bool = False) -> Optional[float]:
        """Model FLOP/s over the peak (causal-aware count, or the full-matrix count)."""
        if not self.peak_flops:
            return None
        flops = self.flops.total_full if full_matrix else self.flops.total
        return flops * self.batch_size / self.median_step / self.peak_flops

    def as_dict(self) -> dict[str, Any]:
        """The figures as JSON-able values (``bench/results.json``)."""
        return {"label": self.label, "preset": self.preset, "architecture": self.architecture,
                "attention": self.attention, "platform": self.platform,
                "scan_unroll": self.scan_unroll,
                "batch_size": self.batch_size,
                "tokens_per_step": self.tokens_per_step, "devices": self.devices,
                "compile_seconds": self.compile_seconds, "step_seconds": self.step_seconds,
                "median_step_seconds": self.median_step,
                "tokens_per_second": self.tokens_per_second,
                "model_flops_per_step": self.flops.total * self.batch_size,
                "model_flops_per_step_full": self.flops.total_full * self.batch_size,
                "model_flops_per_second": self.model_flops_per_second,
                "xla_flops_per_step": self.xla_flops, "temp_bytes": self.temp_bytes,
                "peak_flops": self.peak_flops, "mfu": self.mfu(),
                "mfu_full_matrix": self.mfu(full_matrix=True)}

    def format(self) -> str:
        lines = [
            f"{self.label}",
            f"  batch {self.batch_size}, {self.tokens_per_step} tokens/step, {self.devices} device(s)",
            f"  compile {self.compile_seconds:.1f} s; median step {self.median_step * 1e3:.1f} ms "
            f"over {len(self.step_seconds)} intervals "
            f"(min {min(self.step_seconds) * 1e3:.1f}, max {max(self.step_seconds) * 1e3:.1f})",
            f"  {self.tokens_per_step / self.median_step:,.0f} tokens/s "
            f"({self.tokens_per_step / self.median_step / self.devices:,.0f} per device)",
            f"  model FLOPs/step {self.flops.total * self.batch_size:.3e} causal-aware, "
            f"{self.flops.total_full * self.batch_size:.3e} full-matrix",
        ]
        if self.xla_flops:
            # XLA counts the body of a layer scan once, not once per layer; an unrolled stack
            # (ModelConfig.scan_unroll) is counted in full.
            lines.append(f"  XLA cost_analysis FLOPs/step {self.xla_flops:.3e} "
                         f"({self.xla_flops / (self.flops.total * self.batch_size):.2f}x analytic; "
                         "a scanned layer body counts once)")
        if self.temp_bytes is not None:
            lines.append(f"  XLA temp memory {self.temp_bytes / 2**20:,.0f} MiB")
        tflops = self.model_flops_per_second / 1e12
        line = f"  {tflops:.3f} model TFLOP/s"
        if self.peak_flops:
            full = self.flops.total_full * self.batch_size / self.median_step
            line += (f"; MFU {self.model_flops_per_second / self.peak_flops:.1%} causal-aware, "
                     f"{full / self.peak_flops:.1%} full-matrix "
                     f"(peak {self.peak_flops / 1e12:.3f} TFLOP/s)")
        lines.append(line)
        return "\n".join(lines)


def shift_right(tokens: np.ndarray, segments: Optional[np.ndarray] = None) -> np.ndarray:
    """Decoder inputs from targets ``[b, L]``: shifted right with BOS 0, each packed segment
    starting from 0, as seqio's converters do."""
    shifted = np.concatenate([np.zeros_like(tokens[:, :1]), tokens[:, :-1]], axis=1)
    if segments is not None:
        starts = np.concatenate([np.ones_like(segments[:, :1], bool),
                                 segments[:, 1:] != segments[:, :-1]], axis=1)
        shifted = np.where(starts, 0, shifted)
    return shifted.astype(np.int32)


def synthetic_batch(config: ModelConfig, batch_size: int, length: int = 626,
                    inputs_length: int = 512, targets_length: int = 114,
                    seed: int = 0) -> tuple[dict[str, np.ndarray], FlopCount]:
    """A random, unpacked batch of seqio model features shaped like the study's objective.

    Returns:
      ``(batch, flops per example)``.
    """
    rng = np.random.default_rng(seed)

    def tokens(n: int) -> np.ndarray:
        return rng.integers(2, config.vocab_size, size=(batch_size, n), dtype=np.int32)

    if config.is_encoder_decoder:
        targets = tokens(targets_length)
        batch = {"encoder_input_tokens": tokens(inputs_length),
                 "decoder_target_tokens": targets,
                 "decoder_input_tokens": shift_right(targets),
                 "decoder_loss_weights": np.ones_like(targets)}
        return batch, encoder_decoder_flops(config, inputs_length, targets_length)
    targets = tokens(length)
    positions = np.arange(length)[None, :]
    prefix = length // 2 if config.architecture == "nd" else 0
    batch = {"decoder_target_tokens": targets,
             "decoder_input_tokens": shift_right(targets),
             "decoder_loss_weights": np.broadcast_to(positions >= prefix, targets.shape)
                                     .astype(np.int32)}
    if config.architecture == "nd":
        # seqio convention: the prefix plus one position attends bidirectionally.
        batch["decoder_causal_attention"] = np.broadcast_to(
            positions <= prefix, targets.shape).astype(np.int32)
    return batch, decoder_only_flops(config, length, prefix_length=prefix)


def measure_matmul_peak(dtype: str, sizes: tuple[int, ...] = (1024, 2048, 4096),
                        repeats: int = 3) -> float:
    """Best FLOP/s of jitted ``jnp.dot`` and numpy on square matrices of ``dtype`` (CPU peak).

    Below float32 the dot is timed with a result in ``dtype`` and with a float32 result: XLA:CPU
    runs the first as a float32 dot and only the second on its bfloat16 GEMM (0.31-0.40 against
    0.68-0.85 TFLOP/s on 2 AVX-512 cores; models/layers.py ``einsum``), so the peak is the
    second's, which the model's matmuls use.
    """
    best = 0.0
    dots = [jax.jit(jnp.dot)]
    if jnp.dtype(dtype) != jnp.float32:
        dots.append(jax.jit(functools.partial(jnp.dot, preferred_element_type=jnp.float32)))
    for n in sizes:
        a = jnp.ones((n, n), dtype)
        for dot in dots:
            jax.block_until_ready(dot(a, a))
            for _ in range(repeats):
                start = time.perf_counter()
                jax.block_until_ready(dot(a, a))
                best = max(best, 2 * n ** 3 / (time.perf_counter() - start))
        if dtype == "float32":
            x = np.ones((n, n), np.float32)
            for _ in range(repeats):
                start = time.perf_counter()
                x @ x
                best = max(best, 2 * n ** 3 / (time.perf_counter() - start))
    return best


class CompiledStep:
    """The training loop's own step, compiled ahead of time for one batch, ready to be timed.

    Built by ``compile_train_step``; ``time`` runs the PERF.md protocol's warm-up and intervals.
    """

    def __init__(self, compiled: Any, state: Any, batch: Mapping[str, jax.Array], rng: jax.Array,
                 compile_seconds: float, devices: int):
        self.compiled, self.state, self.batch, self.rng = compiled, state, batch, rng
        self.compile_seconds = compile_seconds
        self.devices = devices

    def time(self, *, steps: int = 10, repeats: int = 3, warmup: int = 2) -> list[float]:
        """Seconds per step of each of ``repeats`` intervals of ``steps`` steps, after ``warmup``.

        Each interval is closed by ``block_until_ready``; nothing inside it syncs with the host.
        """
        metrics = None
        for _ in range(warmup):
            self.state, metrics = self.compiled(self.state, self.batch, self.rng)
        jax.block_until_ready(metrics)
        intervals = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(steps):
                self.state, metrics = self.compiled(self.state, self.batch, self.rng)
            jax.block_until_ready(metrics)
            intervals.append((time.perf_counter() - start) / steps)
        return intervals


def compile_train_step(config: ModelConfig, batch_np: Mapping[str, np.ndarray], *,
                       mesh_shape: tuple[int, int] = (-1, 1),
                       microbatches: int = 1, seed: int = 0) -> CompiledStep:
    """Compiles ``harness.train.steps.make_train_step`` with the study's Adafactor (PAPER.md 2.1)
    for ``config`` on ``batch_np`` (any seqio model features: synthetic or from a pipeline), built
    as the training loop builds it (dropout enabled, so a preset with dropout pays for it)."""
    mesh = sharding.make_mesh(*mesh_shape)
    schedule = make_schedule("rsqrt", 1.0, 10_000, 10)
    abstract = jax.eval_shape(init_fn(config), jax.random.key(seed))
    optimizer = make_optimizer("adafactor", schedule, logical_axes=logical_axes_of(
        abstract["params"]))
    param_shardings = sharding.logical_to_shardings(abstract, mesh)["params"]
    shardings = state_shardings(param_shardings, optimizer, abstract["params"], mesh)
    rng = jax.random.key(seed)
    with sharding.mesh_context(mesh):
        params, _ = sharding.init_sharded(init_fn(config), rng, mesh)
        state = jax.jit(lambda p: create_train_state(p, optimizer),
                        out_shardings=shardings)(params["params"])
        batch_sharding = jax.sharding.NamedSharding(
            mesh, jax.sharding.PartitionSpec(sharding.DATA))
        batch = {k: jax.device_put(v, batch_sharding) for k, v in batch_np.items()}
        step = jax.jit(make_train_step(Transformer(config, enable_dropout=True), optimizer,
                                       schedule, num_microbatches=microbatches),
                       donate_argnums=0, in_shardings=(shardings, batch_sharding, None),
                       out_shardings=(shardings, None))
        start = time.perf_counter()
        compiled = step.lower(state, batch, rng).compile()
        compile_seconds = time.perf_counter() - start
    return CompiledStep(compiled, state, batch, rng, compile_seconds, mesh.size)


def run_benchmark(config: ModelConfig, batch_size: int, *, length: int = 626,
                  inputs_length: int = 512, targets_length: int = 114, steps: int = 10,
                  repeats: int = 3, warmup: int = 2, mesh_shape: tuple[int, int] = (-1, 1),
                  microbatches: int = 1,
                  peak_tflops: Optional[float] = None, label: str = "", preset: str = "",
                  peak_sizes: tuple[int, ...] = (1024, 2048, 4096)) -> BenchResult:
    """Benchmarks one train step of ``config`` (see module docstring) and returns its figures.

    ``peak_sizes``: the square matmuls that measure the CPU peak (PERF.md: 1024 to 4096).
    """
    batch_np, flops = synthetic_batch(config, batch_size, length, inputs_length, targets_length)
    step = compile_train_step(config, batch_np, mesh_shape=mesh_shape, microbatches=microbatches)
    cost = step.compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    memory = step.compiled.memory_analysis()

    on_cpu = jax.devices()[0].platform == "cpu"
    peaks = [measure_matmul_peak(config.dtype, peak_sizes)] if on_cpu and peak_tflops is None else []
    intervals = step.time(steps=steps, repeats=repeats, warmup=warmup)
    if peaks:
        peaks.append(measure_matmul_peak(config.dtype, peak_sizes))
    peak = max(peaks) if peaks else (peak_tflops * 1e12 * step.devices if peak_tflops else None)
    tokens = sum(int(np.prod(batch_np[k].shape)) for k in batch_np
                 if k in ("encoder_input_tokens", "decoder_target_tokens"))
    return BenchResult(
        label=label or f"{config.architecture} d_model={config.d_model} layers={config.num_layers}",
        batch_size=batch_size, tokens_per_step=tokens, compile_seconds=step.compile_seconds,
        step_seconds=intervals, flops=flops,
        xla_flops=(cost or {}).get("flops"),
        temp_bytes=getattr(memory, "temp_size_in_bytes", None),
        peak_flops=peak, devices=step.devices, preset=preset,
        architecture=config.architecture, attention=config.attention_impl,
        scan_unroll=config.scan_unroll,
        platform=jax.devices()[0].platform)


@dataclasses.dataclass(frozen=True)
class TrainSuiteResult:
    """``archobj bench train`` over several (preset, architecture) rows."""

    rows: list[BenchResult]

    def format(self) -> str:
        return "\n".join(row.format() for row in self.rows)

    def as_dict(self) -> dict[str, Any]:
        return {"rows": [row.as_dict() for row in self.rows]}


# The shapes ``archobj bench`` times: the small preset at the study's lengths (626 tokens; ED
# 512 + 114, PAPER.md 1.2), and the tiny grid's model at its own (experiments/tiny.yaml: 16 x 128;
# ED MLM lengths for 128 tokens, objectives/lengths.py). ``xl`` (the ~1B decoder) is the GPU row:
# ``archobj bench train --preset xl --peak-tflops 989`` (bench/gpu.sh), not part of the default.
SUITE_SHAPES = {"small": dict(batch_size=4, length=626, inputs_length=512, targets_length=114),
                "mini": dict(batch_size=16, length=128, inputs_length=None, targets_length=None)}
EXTRA_SHAPES = {"xl": dict(batch_size=16, length=626, inputs_length=512, targets_length=114)}


def run_train_suite(presets: Sequence[str] = tuple(SUITE_SHAPES),
                    architectures: Sequence[str] = ("cd", "nd", "ed"), *,
                    shape_overrides: Optional[Mapping[str, int]] = None,
                    dtype: str = "bfloat16", remat_policy: str = "none",
                    attention: str = "einsum", scan_unroll: Optional[int] = None,
                    steps: int = 10,
                    repeats: int = 3, mesh_shape: tuple[int, int] = (-1, 1),
                    peak_tflops: Optional[float] = None, microbatches: int = 1,
                    log: Callable[[str], None] = say) -> TrainSuiteResult:
    """Every (preset, architecture), one after the other in this process.

    A preset's shape is its ``SUITE_SHAPES`` or ``EXTRA_SHAPES`` entry (``small``'s for presets
    without one), with
    ``shape_overrides`` (batch_size, length, inputs_length, targets_length) on top; ED's lengths
    default to the MLM split of ``length`` (objectives/lengths.py).
    """
    from models.config import preset as make_preset
    from objectives.lengths import mlm_lengths

    rows = []
    for name in presets:
        shape = {**SUITE_SHAPES.get(name, EXTRA_SHAPES.get(name, SUITE_SHAPES["small"])),
                 **(shape_overrides or {})}
        if shape["inputs_length"] is None:
            shape["inputs_length"], shape["targets_length"] = mlm_lengths(shape["length"])
        for arch in architectures:
            log(f"[{len(rows) + 1}/{len(presets) * len(architectures)}] train {name} {arch}")
            unroll = {} if scan_unroll is None else {"scan_unroll": scan_unroll}
            config = make_preset(name, arch, dtype=dtype, remat_policy=remat_policy,
                                 attention_impl=attention, **unroll)
            impl = ("" if attention == "einsum" else f", {attention} attention") + (
                "" if scan_unroll is None else f", unroll {scan_unroll}")
            row = run_benchmark(config, shape["batch_size"], length=shape["length"],
                                inputs_length=shape["inputs_length"],
                                targets_length=shape["targets_length"], steps=steps,
                                repeats=repeats, mesh_shape=mesh_shape, peak_tflops=peak_tflops,
                                microbatches=microbatches, label=f"{name} {arch} ({dtype}{impl})",
                                preset=name)
            log(f"  {row.tokens_per_second:,.0f} tokens/s"
                + (f", MFU {row.mfu():.1%}" if row.peak_flops else ""))
            rows.append(row)
    return TrainSuiteResult(rows)
