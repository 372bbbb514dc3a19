"""``archobj bench data``: is each objective's input pipeline fast enough for the step it feeds?

For every pretraining pair of the study (cd:flm, cd:mlm, nd:plm, nd:mlm, ed:plm, ed:mlm) and every
architecture's multitask-finetuning stream, at two shapes:

  tiny    the tiny grid's: the ``mini`` model, 16 rows of 128 tokens (MTF 96 + 16), the world's
          own tokenizer (experiments/tiny.yaml);
  small   the ``small`` preset at the study's lengths: 626 tokens per row (MLM 512 / 114, MTF
          1024 / 256 as PAPER.md 3.3), 4 rows, the same tokenizer;

it measures

1. the pipeline alone (``harness.train.data``, the training loop's own streams, over the built-in
   world's corpus and mixture): examples/s and real tokens/s over ``batches`` batches after the
   first (which pays graph building and is reported as start-up);
2. the training step alone on one of those very batches (``train_bench.compile_train_step``: the
   loop's step with the study's Adafactor, compiled ahead of time, medians of timed intervals);

and reports their ratio, the *headroom*: pipeline examples/s over step examples/s. PERF.md's
protocol calls a pipeline fast enough when a batch costs less than a step (headroom > 1); the
target here is 2, so the pipeline keeps up while it shares the CPU with the step.

Both halves run in one process, one after the other, so they compete for nothing; in training
they share the machine, which is why the margin is asked for.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np

PAIRS = (("cd", "flm"), ("cd", "mlm"), ("nd", "plm"), ("nd", "mlm"), ("ed", "plm"), ("ed", "mlm"),
         ("cd", "mtf"), ("nd", "mtf"), ("ed", "mtf"))
TARGET_HEADROOM = 2.0


@dataclasses.dataclass(frozen=True)
class Shape:
    """One benchmarked shape: a model preset, rows per batch and the stream's lengths."""

    name: str
    preset: str
    batch_size: int
    total_length: int
    mtf_inputs_length: int
    mtf_targets_length: int
    steps_per_interval: int            # a timed interval lasts about a second or more


SHAPES = {
    "tiny": Shape("tiny", "mini", 16, 128, 96, 16, steps_per_interval=5),
    # One step of the small preset lasts 6-20 s on 2 cores: one per interval is plenty.
    "small": Shape("small", "small", 4, 626, 1024, 256, steps_per_interval=1),
}


@dataclasses.dataclass(frozen=True)
class DataRow:
    """One (shape, pair): the pipeline's rate, the step's, and their ratio."""

    shape: str
    pair: str
    batch_size: int
    features: dict[str, list[int]]     # feature name -> batch shape
    startup_seconds: float             # building the pipeline and its first batch
    pipeline_seconds: list[float]      # per batch, after the first
    real_tokens: int                   # non-padding tokens over the timed batches
    padded_tokens: int
    step_seconds: list[float]          # per step, median of each timed interval

    @property
    def pipeline_examples_per_second(self) -> float:
        # Over the whole timed run, not a median of batches: with prefetching, single batches
        # arrive in bursts (some in microseconds), and the sustained rate is what a step sees.
        return self.batch_size * len(self.pipeline_seconds) / sum(self.pipeline_seconds)

    @property
    def tokens_per_second(self) -> float:
        return self.real_tokens / sum(self.pipeline_seconds)

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.real_tokens / max(self.padded_tokens, 1)

    @property
    def step_examples_per_second(self) -> float:
        return self.batch_size / statistics.median(self.step_seconds)

    @property
    def headroom(self) -> float:
        """Pipeline examples/s over step examples/s (> 1: the pipeline keeps up)."""
        return self.pipeline_examples_per_second / self.step_examples_per_second

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self),
                "pipeline_examples_per_second": self.pipeline_examples_per_second,
                "pipeline_tokens_per_second": self.tokens_per_second,
                "padding_fraction": self.padding_fraction,
                "step_examples_per_second": self.step_examples_per_second,
                "headroom": self.headroom, "target_headroom": TARGET_HEADROOM}


@dataclasses.dataclass(frozen=True)
class DataBenchResult:
    rows: list[DataRow]
    source: str

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "target_headroom": TARGET_HEADROOM,
                "rows": [row.as_dict() for row in self.rows]}

    def format(self) -> str:
        lines = [f"input pipelines against the training step (world at {self.source}; "
                 f"headroom = pipeline examples/s / step examples/s, target >= {TARGET_HEADROOM:g})",
                 f"  {'shape':6s} {'pair':7s} {'batch':>5s} {'pipeline ex/s':>13s} "
                 f"{'tokens/s':>9s} {'padding':>7s} {'start-up s':>10s} {'step ex/s':>9s} "
                 f"{'headroom':>8s}"]
        for row in self.rows:
            mark = "" if row.headroom >= TARGET_HEADROOM else "  below target"
            lines.append(
                f"  {row.shape:6s} {row.pair:7s} {row.batch_size:5d} "
                f"{row.pipeline_examples_per_second:13.1f} {row.tokens_per_second:9,.0f} "
                f"{row.padding_fraction:7.1%} {row.startup_seconds:10.1f} "
                f"{row.step_examples_per_second:9.1f} {row.headroom:7.1f}x{mark}")
        return "\n".join(lines)


def _stream(shape: Shape, architecture: str, objective: str, world: Path,
            seed: int) -> Iterator[Mapping[str, np.ndarray]]:
    from harness.train import data
    from objectives.world import writer

    vocabulary = str(world / writer.VOCABULARY)
    if objective == "mtf":
        return data.mtf_batches(architecture, str(world / writer.MTF_DIR), vocabulary,
                                shape.batch_size, inputs_length=shape.mtf_inputs_length,
                                targets_length=shape.mtf_targets_length, seed=seed)
    spec = data.DataSpec(architecture=architecture, objective=objective,
                         source=str(world / writer.CORPUS), vocabulary=vocabulary,
                         total_length=shape.total_length, seed=seed)
    # ED:PLM packs two examples per row (App. C); the tiny grid halves its batch (tiny.yaml).
    batch = shape.batch_size // 2 if (architecture, objective) == ("ed", "plm") else shape.batch_size
    return data.pretraining_batches(spec, batch)


def measure_row(shape: Shape, architecture: str, objective: str, world: Path, *,
                batches: int = 20, steps: Optional[int] = None, repeats: int = 3,
                seed: int = 0) -> DataRow:
    """Times one pipeline over ``batches`` batches, then the training step on its first batch
    (``steps`` per timed interval; None: the shape's ``steps_per_interval``)."""
    from harness.bench.train_bench import compile_train_step
    from models.config import preset

    start = time.perf_counter()
    stream = _stream(shape, architecture, objective, world, seed)
    first = next(stream)
    startup = time.perf_counter() - start
    per_batch, real, padded = [], 0, 0
    for _ in range(batches):
        start = time.perf_counter()
        batch = next(stream)
        per_batch.append(time.perf_counter() - start)
        for name in ("decoder_target_tokens", "encoder_input_tokens"):
            if name in batch:
                real += int(np.count_nonzero(batch[name]))
                padded += int(batch[name].size)
    rows = next(iter(first.values())).shape[0]
    config = preset(shape.preset, architecture=architecture)
    if config.vocab_size < 1152:
        raise ValueError(f"preset {shape.preset}: vocabulary too small for the world's tokenizer")
    step = compile_train_step(config, first)
    step_seconds = step.time(steps=steps or shape.steps_per_interval, repeats=repeats, warmup=1)
    return DataRow(shape=shape.name, pair=f"{architecture}:{objective}", batch_size=rows,
                   features={k: list(v.shape) for k, v in sorted(first.items())},
                   startup_seconds=startup, pipeline_seconds=per_batch, real_tokens=real,
                   padded_tokens=padded, step_seconds=step_seconds)


def run_data_benchmark(*, shapes: Sequence[str] = ("tiny", "small"),
                       pairs: Sequence[tuple[str, str]] = PAIRS, world: Optional[str] = None,
                       batches: int = 20, steps: Optional[int] = None, repeats: int = 3,
                       log: Optional[Callable[[str], None]] = None) -> DataBenchResult:
    """Every (shape, pair); ``world``: a written world (default: the default-size world, written
    into a temporary directory in a few seconds)."""
    from harness.bench.suite import say

    log = log or say
    for name in shapes:
        if name not in SHAPES:
            raise ValueError(f"shape {name!r}: unknown; choose from {sorted(SHAPES)}")
    with tempfile.TemporaryDirectory(prefix="bench_data_") as scratch:
        if world is None:
            from objectives.world import writer

            root = Path(scratch) / "world"
            log("writing the built-in world (default size, seed 0) ...")
            writer.write_world(root, seed=0)
        else:
            root = Path(world)
        rows = []
        total = len(shapes) * len(pairs)
        for name in shapes:
            for architecture, objective in pairs:
                log(f"[{len(rows) + 1}/{total}] {name} {architecture}:{objective}")
                rows.append(measure_row(SHAPES[name], architecture, objective, root,
                                        batches=batches, steps=steps, repeats=repeats))
        return DataBenchResult(rows, "a temporary default-size world" if world is None else world)
