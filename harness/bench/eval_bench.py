"""``archobj bench eval``: zero-shot scoring throughput of the archobj lm-eval model against
lm-eval's own Hugging Face backend, on the same weights and the same requests.

Protocol (PERF.md "Benchmark protocol" and "Zero-shot evaluation throughput"):

1. ``harness.eval.eval_reference`` builds a random T5 v1.1-layout model (DEPS.md's reference by default:
   d_model 512, 6+6 layers, vocab 32,128, 70.7M parameters), its archobj conversion, and
   ``questions`` synthetic ``choices``-way questions (1,200 loglikelihood requests by default).
2. Both models are loaded in one process: lm-eval's ``hf`` (backend ``seq2seq``, device ``cpu``,
   float32) and ``archobj`` (float32 compute), at the same batch size.
3. Warm-up, untimed and reported separately: archobj scores every request once (this compiles every
   shape it will use); the HF model, which compiles nothing, scores a few batches.
4. ``repeats`` timed passes per model over the *same* request list through the public
   ``loglikelihood`` API (tokenisation included), interleaved and alternating which model goes
   first, so that machine drift (~2x on this 2-core CPU, DEPS.md) hits both alike.
5. Reported: the median requests/s of each, and the median over repeats of the per-repeat speed
   ratio archobj / HF (a ratio within one run is the figure to quote); also whether both models
   tokenized every request to the same ids and how far their log-likelihoods are apart, as a
   sanity check of what was timed, and the machine's load average (other processes on the CPUs
   distort the figures, PyTorch's far more than XLA's).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import statistics
import tempfile
import time
from typing import Any, Callable, Optional, Sequence

from harness.eval import eval_reference

# Makes the archobj side: (reference, batch_size) -> an lm-eval LM.
LMFactory = Callable[[eval_reference.ReferenceT5, int], Any]


class EvalBenchError(ValueError):
    """Bad benchmark settings; the message is one line."""


@dataclasses.dataclass(frozen=True)
class EvalBenchSettings:
    """What ``run_eval_benchmark`` builds and times (argparse-free; the CLI maps flags here).

    The defaults are DEPS.md's reference: a d_model 512, 6+6-layer T5 v1.1 layout with T5's
    32,128-row vocabulary, 300 four-choice questions, batch 8, where lm-eval's HF backend was seen
    at ~19 requests/s on a 2-core CPU. ``EvalBenchSettings.quick()`` is a smoke-test size.

    Attributes:
      d_model: model width.
      num_layers: layers per stack (encoder and decoder each).
      vocab_size: embedding rows.
      num_heads: attention heads (None: ``max(2, d_model // 64)``).
      d_ff: GEGLU hidden width (None: ``2 * d_model``).
      questions: synthetic questions; requests = questions x choices.
      choices: choices per question.
      batch_size: batch size of both models.
      repeats: timed passes per model.
      seed: seeds the weights and the questions.
    """

    d_model: int = 512
    num_layers: int = 6
    vocab_size: int = 32128
    num_heads: Optional[int] = None
    d_ff: Optional[int] = None
    questions: int = 300
    choices: int = 4
    batch_size: int = 8
    repeats: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("d_model", "num_layers", "questions", "batch_size", "repeats"):
            if getattr(self, name) < 1:
                raise EvalBenchError(f"{name}={getattr(self, name)}: must be >= 1")
        if not 2 <= self.choices <= 10:
            raise EvalBenchError(f"choices={self.choices}: must be between 2 and 10")
        minimum = eval_reference.DEFAULT_TOKENIZER_PIECES + eval_reference.NUM_SENTINELS
        if self.vocab_size < minimum:
            raise EvalBenchError(f"vocab_size={self.vocab_size}: must be >= {minimum} (the "
                                 "reference tokenizer's pieces + 100 sentinels)")

    @classmethod
    def quick(cls, **overrides: Any) -> "EvalBenchSettings":
        """A smoke-test size: d_model 64, 2+2 layers, vocab 512, 12 four-choice questions."""
        values = dict(d_model=64, num_layers=2, vocab_size=512, questions=12, batch_size=8,
                      repeats=2)
        values.update(overrides)
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class EvalBenchResult:
    """Figures of one ``run_eval_benchmark``; ``format()`` renders them as a table."""

    settings: EvalBenchSettings
    reference: eval_reference.ReferenceT5
    num_requests: int
    mean_context_tokens: float
    mean_continuation_tokens: float
    load_seconds: dict[str, float]
    warmup_seconds: dict[str, float]
    warmup_requests: dict[str, int]
    pass_seconds: dict[str, list[float]]  # per model, one entry per timed repeat
    max_abs_difference: float  # |loglikelihood archobj - hf|, over all requests
    same_ids: float  # fraction of requests both models tokenize to the same (input, target) ids
    same_predictions: float  # fraction of questions whose argmax choice agrees
    torch_threads: int
    cpu_count: int
    load_average: tuple[float, float]  # the machine's 1-minute load before and after timing
    # Roofline (PERF.md): forward FLOPs of one request, counted as models/flops.py counts a
    # training example (divided by 3: training = 3 x forward) at the mean lengths, and the float32
    # matmul peak measured in the same process after the timed passes (0.0: not measured).
    forward_flops_per_request: float = 0.0
    peak_flops: float = 0.0
    # The forward FLOPs per request of the work a scorer that shares a context's encoder pass
    # among its continuations (archobj's; HF's seq2seq backend does not) runs: each distinct
    # context's encoder (and cross-attention K, V) once, each request's decoder pass.
    shared_forward_flops_per_request: float = 0.0

    def requests_per_second(self, model: str) -> float:
        """Median over repeats of requests / pass seconds."""
        return statistics.median(self.num_requests / s for s in self.pass_seconds[model])

    @property
    def ratios(self) -> list[float]:
        """archobj's speed over HF's, per repeat (both timed within the same repeat)."""
        return [h / a for h, a in zip(self.pass_seconds["hf"], self.pass_seconds["archobj"])]

    @property
    def ratio(self) -> float:
        """Median of the per-repeat ratios."""
        return statistics.median(self.ratios)

    @property
    def roofline_requests_per_second(self) -> Optional[float]:
        """Requests/s at the measured peak: peak / forward FLOPs per request."""
        if not (self.peak_flops and self.forward_flops_per_request):
            return None
        return self.peak_flops / self.forward_flops_per_request

    @property
    def archobj_peak_fraction(self) -> Optional[float]:
        """archobj's FLOP/s on the work it runs (``shared_forward_flops_per_request``) / peak."""
        if not (self.peak_flops and self.shared_forward_flops_per_request):
            return None
        return (self.requests_per_second("archobj") * self.shared_forward_flops_per_request
                / self.peak_flops)

    def as_dict(self) -> dict[str, Any]:
        """The figures as JSON-able values (``bench/results.json``)."""
        roofline = self.roofline_requests_per_second
        archobj = self.requests_per_second("archobj")
        return {"settings": dataclasses.asdict(self.settings),
                "parameters": self.reference.num_parameters, "num_requests": self.num_requests,
                "mean_context_tokens": self.mean_context_tokens,
                "mean_continuation_tokens": self.mean_continuation_tokens,
                "load_seconds": self.load_seconds, "warmup_seconds": self.warmup_seconds,
                "pass_seconds": self.pass_seconds,
                "hf_requests_per_second": self.requests_per_second("hf"),
                "archobj_requests_per_second": archobj, "ratios": self.ratios,
                "ratio": self.ratio, "max_abs_difference": self.max_abs_difference,
                "same_ids": self.same_ids, "same_predictions": self.same_predictions,
                "torch_threads": self.torch_threads, "load_average": list(self.load_average),
                "forward_flops_per_request": self.forward_flops_per_request,
                "peak_flops": self.peak_flops, "roofline_requests_per_second": roofline,
                "roofline_fraction": archobj / roofline if roofline else None,
                "shared_forward_flops_per_request": self.shared_forward_flops_per_request,
                "archobj_peak_fraction": self.archobj_peak_fraction}

    def format(self) -> str:
        s, m = self.settings, self.reference
        header = (f"zero-shot loglikelihood scoring: random T5 v1.1 layout, d_model {m.d_model}, "
                  f"{m.num_layers}+{m.num_layers} layers, {m.num_heads} heads, d_ff {m.d_ff}, "
                  f"vocab {m.vocab_size}, {m.num_parameters / 1e6:.1f}M parameters, float32")
        lines = [
            header,
            f"  {s.questions} questions x {s.choices} choices = {self.num_requests} requests; "
            f"mean {self.mean_context_tokens:.1f} encoder + {self.mean_continuation_tokens:.1f} "
            f"target tokens per request; batch {s.batch_size}; {s.repeats} interleaved repeats",
            f"  {self.cpu_count} CPU(s), torch threads {self.torch_threads}; 1-minute load "
            f"average {self.load_average[0]:.1f} before, {self.load_average[1]:.1f} after"
            + ("  (BUSY MACHINE: other processes share the CPUs; figures are unreliable)"
               if max(self.load_average) > self.cpu_count + 0.5 else ""),
            "",
            f"  {'model':<9} {'load s':>7} {'warm-up s':>10} {'(requests)':>10} "
            f"{'median s':>9} {'req/s':>8} {'min req/s':>9} {'max req/s':>9}",
        ]
        for model in ("hf", "archobj"):
            times = self.pass_seconds[model]
            lines.append(
                f"  {model:<9} {self.load_seconds[model]:>7.1f} "
                f"{self.warmup_seconds[model]:>10.1f} "
                f"{self.warmup_requests[model]:>10d} {statistics.median(times):>9.2f} "
                f"{self.requests_per_second(model):>8.1f} {self.num_requests / max(times):>9.1f} "
                f"{self.num_requests / min(times):>9.1f}")
        lines += [
            "",
            f"  archobj / hf speed: {self.ratio:.2f}x (median of per-repeat ratios "
            f"{', '.join(f'{r:.2f}' for r in self.ratios)})",
            f"  agreement: identical (encoder, target) ids on {self.same_ids:.1%} of requests; "
            f"max |loglikelihood difference| {self.max_abs_difference:.2e}; same predicted "
            f"choice on {self.same_predictions:.1%} of questions",
            "  warm-up: archobj scores every request once (compiles every shape); hf scores a "
            "few batches",
        ]
        roofline = self.roofline_requests_per_second
        if roofline:
            lines.append(
                f"  roofline: {self.forward_flops_per_request / 1e6:.1f} MFLOP forward per request "
                f"at the mean lengths, float32 peak {self.peak_flops / 1e9:.0f} GFLOP/s -> "
                f"{roofline:,.0f} requests/s; archobj reaches "
                f"{self.requests_per_second('archobj') / roofline:.1%} of it, hf "
                f"{self.requests_per_second('hf') / roofline:.1%}")
            if self.archobj_peak_fraction is not None:
                shared = self.shared_forward_flops_per_request
                lines.append(
                    f"  work run: archobj encodes each of the {self.num_requests // s.choices} "
                    f"contexts once for its {s.choices} choices: "
                    f"{shared / 1e6:.1f} MFLOP per request, so it runs at "
                    f"{self.archobj_peak_fraction:.1%} of the "
                    f"peak; the rest is padding to length buckets and small decoder matmuls")
        return "\n".join(lines)


def default_archobj_factory(reference: eval_reference.ReferenceT5, batch_size: int) -> Any:
    """The ``archobj`` lm-eval model on the converted reference checkpoint, tokenizing as lm-eval's
    Hugging Face backend does (EOS closes the encoder input), so both score the same ids."""
    from harness.eval.lm_eval_adapter import ArchobjLM  # pylint: disable=import-outside-toplevel
    return ArchobjLM(str(reference.archobj_dir), vocabulary=str(reference.spm_model),
                     batch_size=batch_size, context_eos=True)


def hf_lm(reference: eval_reference.ReferenceT5, batch_size: int) -> Any:
    """lm-eval's Hugging Face model on the reference (``eval_reference.hf_reference_lm``)."""
    return eval_reference.hf_reference_lm(reference, batch_size)


def build_instances(fixture: eval_reference.FixtureTask) -> list[Any]:
    """The fixture task's loglikelihood ``Instance``s, built by lm-eval exactly as
    ``simple_evaluate`` builds them."""
    from lm_eval.tasks import get_task_dict  # pylint: disable=import-outside-toplevel
    task = get_task_dict([fixture.name], fixture.task_manager())[fixture.name]
    task.build_all_requests(rank=0, world_size=1)
    return list(task.instances)


def run_eval_benchmark(settings: EvalBenchSettings = EvalBenchSettings(), *,
                       work_dir: Optional[os.PathLike] = None,
                       reference: Optional[eval_reference.ReferenceT5] = None,
                       archobj_factory: Optional[LMFactory] = None,
                       log: Optional[Callable[[str], None]] = None) -> EvalBenchResult:
    """Builds the reference, then times both models on the same requests (see the module doc).

    Args:
      settings: sizes and repeats.
      work_dir: where to write the reference model and the task (a fresh subdirectory is made in
        it); a temporary directory, removed afterwards, by default.
      reference: an existing ``make_reference_t5`` model to use instead of building one (the
        model sizes of ``settings`` are then ignored).
      archobj_factory: builds the archobj side from ``(reference, batch_size)``; default
        ``harness.eval.lm_eval_adapter.ArchobjLM`` on the converted checkpoint.
      log: called with a line of progress now and then (e.g. ``print``); silent by default.

    Returns:
      The ``EvalBenchResult``.
    """
    if work_dir is None:
        with tempfile.TemporaryDirectory(prefix="archobj_bench_eval_") as scratch:
            return _run(settings, pathlib.Path(scratch), reference, archobj_factory, log)
    pathlib.Path(work_dir).mkdir(parents=True, exist_ok=True)
    return _run(settings, pathlib.Path(tempfile.mkdtemp(prefix="bench_eval_", dir=work_dir)),
                reference, archobj_factory, log)


def _run(settings: EvalBenchSettings, root: pathlib.Path,
         reference: Optional[eval_reference.ReferenceT5], archobj_factory: Optional[LMFactory],
         log: Optional[Callable[[str], None]]) -> EvalBenchResult:
    import sentencepiece  # pylint: disable=import-outside-toplevel
    import torch  # pylint: disable=import-outside-toplevel

    say = log or (lambda line: None)
    s = settings
    if reference is None:
        say(f"building the reference T5 (d_model {s.d_model}, {s.num_layers}+{s.num_layers} "
            "layers)")
        reference = eval_reference.make_reference_t5(
            root / "model", d_model=s.d_model, num_layers=s.num_layers, vocab_size=s.vocab_size,
            num_heads=s.num_heads, d_ff=s.d_ff, seed=s.seed)
    fixture = eval_reference.write_fixture_task(root / "task", s.questions, s.choices, seed=s.seed)
    instances = build_instances(fixture)

    processor = sentencepiece.SentencePieceProcessor(model_file=str(reference.spm_model))
    encoded = [eval_reference.lm_eval_seq2seq_tokens(processor, *inst.args) for inst in instances]

    factories: dict[str, LMFactory] = {"hf": hf_lm,
                                       "archobj": archobj_factory or default_archobj_factory}
    models, load_seconds = {}, {}
    for name, factory in factories.items():
        start = time.perf_counter()
        models[name] = factory(reference, s.batch_size)
        load_seconds[name] = time.perf_counter() - start

    def score(name: str, requests: Sequence[Any]) -> tuple[float, list[float]]:
        start = time.perf_counter()
        results = models[name].loglikelihood(list(requests), disable_tqdm=True)
        return time.perf_counter() - start, [float(r[0]) for r in results]

    load_before = _load_average()
    warmup_requests = {"archobj": len(instances),
                       "hf": min(len(instances), 4 * s.batch_size)}
    warmup_seconds = {}
    for name in ("archobj", "hf"):
        say(f"warm-up {name}: {warmup_requests[name]} requests")
        warmup_seconds[name], _ = score(name, instances[:warmup_requests[name]])

    pass_seconds: dict[str, list[float]] = {"hf": [], "archobj": []}
    scores: dict[str, list[float]] = {}
    for repeat in range(s.repeats):
        order = ("hf", "archobj") if repeat % 2 == 0 else ("archobj", "hf")
        for name in order:
            seconds, scores[name] = score(name, instances)
            pass_seconds[name].append(seconds)
            say(f"repeat {repeat + 1}/{s.repeats} {name}: {seconds:.2f} s, "
                f"{len(instances) / seconds:.1f} requests/s")

    load_after = _load_average()
    peak = _float32_peak()
    # lm-eval's own tokenization step of each model (TemplateLM._encode_pair: what it scores).
    same_ids = statistics.fmean(
        [list(x) for x in models["hf"]._encode_pair(*inst.args)]
        == [list(x) for x in models["archobj"]._encode_pair(*inst.args)] for inst in instances)
    difference = max(abs(a - h) for a, h in zip(scores["archobj"], scores["hf"]))
    # Per question, the choice each model ranks first (instances carry doc_id and choice idx).
    by_doc: dict[int, list[int]] = {}
    for position, instance in enumerate(instances):
        by_doc.setdefault(instance.doc_id, []).append(position)
    picks = {name: [max(rows, key=values.__getitem__) for rows in by_doc.values()]
             for name, values in scores.items()}
    agree = sum(h == a for h, a in zip(picks["hf"], picks["archobj"]))
    per_request, shared = _forward_flops(reference, encoded)

    return EvalBenchResult(
        settings=s, reference=reference, num_requests=len(instances),
        mean_context_tokens=statistics.fmean(len(c) for c, _ in encoded),
        mean_continuation_tokens=statistics.fmean(len(t) for _, t in encoded),
        load_seconds=load_seconds, warmup_seconds=warmup_seconds, warmup_requests=warmup_requests,
        pass_seconds=pass_seconds, max_abs_difference=difference, same_ids=same_ids,
        same_predictions=agree / len(by_doc), torch_threads=torch.get_num_threads(),
        cpu_count=os.cpu_count() or 1, load_average=(load_before, load_after),
        forward_flops_per_request=per_request, peak_flops=peak,
        shared_forward_flops_per_request=shared)


def _forward_flops(reference: eval_reference.ReferenceT5,
                   encoded: Sequence[tuple[Sequence[int], Sequence[int]]]) -> tuple[float, float]:
    """Mean forward FLOPs of one request through the archobj model (models/flops.py's count):
    ``(per request, shared)``. ``shared`` counts each distinct context's encoder pass once (what a
    scorer that groups a context's continuations runs) instead of once per request.
    """
    from harness.storage.checkpoint import read_config
    from models.flops import encoder_decoder_flops

    config = read_config(reference.archobj_dir)

    def forward(context: int, target: int) -> float:
        return encoder_decoder_flops(config, max(context, 1), target).total / 3

    total = sum(forward(len(c), max(len(t), 1)) for c, t in encoded)
    # Each request's encoder part out, each distinct context's back in, once.
    shared = (total - sum(forward(len(c), 0) for c, _ in encoded)
              + sum(forward(len(c), 0) for c in {tuple(c) for c, _ in encoded}))
    return total / len(encoded), shared / len(encoded)


def _float32_peak() -> float:
    """The float32 matmul peak of this process's first device (CPU: measured; else 0.0)."""
    import jax

    if jax.devices()[0].platform != "cpu":
        return 0.0
    from harness.bench.train_bench import measure_matmul_peak

    return measure_matmul_peak("float32")


def _load_average() -> float:
    """The 1-minute load average (0.0 where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0
