"""The ``archobj`` command line.

Every subcommand imports its heavy dependencies (JAX, orbax, torch, TensorFlow) inside its handler,
so ``archobj --help`` answers at once and never imports TensorFlow.

    archobj model info PRESET [--arch A]        exact parameter count and training FLOPs per token
    archobj bench [--quick] [--out DIR]         every benchmark below, recorded in DIR (bench/)
    archobj bench train [--preset P] [--arch A]   time the training step (PERF.md protocol)
    archobj bench eval [--quick]                loglikelihood requests/s: archobj vs lm-eval's HF
    archobj bench tiny                          the tiny grid's step vs a hand-written decoder
    archobj bench data [--shape S]              each pipeline against the step it feeds
    archobj bench resume [--step K ...]         launch-to-first-step time after a restart at k
    archobj convert hf-t5 SRC_DIR DST_DIR       Hugging Face T5 / T5-LM / T0 checkpoint -> archobj
    archobj data preview --arch A --objective O --source PATH --vocab V   what the model is fed
    archobj data bench --source PATH --vocab V  input-pipeline throughput per objective
    archobj vocab train TEXT... --size N --out FILE   a local SentencePiece model with 100 sentinels
    archobj train [CONFIG.yaml] [--set key=value ...]  run or resume one training stage
    archobj eval CHECKPOINT --suite {eai,t0} [--tasks ...] [--limit N] [--data-dir DIR]
                                                zero-shot EAI-Eval / T0-Eval, results in the run dir
    archobj world write DIR [--seed S] [--size NAME]   the built-in world (objectives/world)
    archobj grid FILE [--only REGEX] [--dry-run] [--retry-failed] [--explain STAGE]
                 [--executor {local,slurm}] [--stage STAGE] [--variant NAME]
                 [--seed N | --seeds N] [--report]
                                                plan and run a study grid (experiments/*.yaml)
    archobj cell FILE CELL [--force]            re-run one cell of a grid
    archobj status FILE                         the grid's status table, from disk
    archobj report RUNS_DIR [RUNS_DIR ...] [--out DIR]
                                                the paper's tables and figures for these runs,
                                                beside the paper's numbers (no JAX)
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

# Kept in sync with models.config (a test checks it); duplicated so --help needs no imports.
ARCHITECTURES = ("cd", "nd", "ed")
PRESETS = ("tiny", "mini", "small", "base", "large", "xl", "paper-decoder", "paper-encdec")
ATTENTION_IMPLS = ("einsum", "xla", "cudnn")
OBJECTIVES = ("flm", "plm", "mlm")
SUITES = ("eai", "t0")  # harness/eval/evaluate.py
# The study's six pretraining pairs (PAPER.md 1.2), in the paper's order.
STUDY_PAIRS = (("cd", "flm"), ("cd", "mlm"), ("nd", "plm"), ("nd", "mlm"), ("ed", "plm"),
               ("ed", "mlm"))


def _model_config(args: argparse.Namespace, **overrides):
    from models.config import preset
    return preset(args.preset, args.arch, **overrides)


def _cmd_model_info(args: argparse.Namespace) -> int:
    from models.config import ARCHITECTURES as ARCH_NAMES
    from models.flops import decoder_only_flops, encoder_decoder_flops
    from models.transformer import count_params

    cfg = _model_config(args)
    params = count_params(cfg)
    embedding = cfg.vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2)
    if cfg.is_encoder_decoder:
        flops = encoder_decoder_flops(cfg, args.inputs_length, args.targets_length)
        shape = f"inputs {args.inputs_length} + targets {args.targets_length}"
        layers = f"{cfg.num_encoder_layers} encoder + {cfg.num_layers} decoder"
    else:
        prefix = args.prefix_length if cfg.architecture == "nd" else 0
        flops = decoder_only_flops(cfg, args.length, prefix)
        shape = f"length {args.length}" + (f", prefix {prefix}" if prefix else "")
        layers = f"{cfg.num_layers}"
    info = {
        "preset": args.preset, "architecture": cfg.architecture, "parameters": params,
        "non_embedding_parameters": params - embedding, "layers": layers,
        "d_model": cfg.d_model, "heads": cfg.num_heads, "head_dim": cfg.head_dim, "d_ff": cfg.d_ff,
        "vocab_size": cfg.vocab_size, "tokens_per_example": flops.tokens,
        "train_flops_per_token": flops.per_token,
        "train_flops_per_token_full_attention": flops.per_token_full,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{args.preset} ({ARCH_NAMES[cfg.architecture]}, {cfg.architecture})")
    print(f"  parameters             {params}  ({_short_count(params)})")
    print(f"  non-embedding          {params - embedding}")
    print(f"  layers                 {layers}")
    print(f"  d_model / heads x dim  {cfg.d_model} / {cfg.num_heads} x {cfg.head_dim}")
    print(f"  d_ff / vocab           {cfg.d_ff} / {cfg.vocab_size}")
    print(f"  training FLOPs/token   {flops.per_token:.4e} causal-aware, "
          f"{flops.per_token_full:.4e} full-matrix  ({shape})")
    return 0


def _short_count(count: int) -> str:
    """``4762357760`` -> ``"4.76B"``, ``1197696`` -> ``"1.20M"``, ``950`` -> ``"950"``."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            return f"{count / scale:.2f}{unit}"
    return str(count)


def _bench_train(args: argparse.Namespace, log):
    """``archobj bench train``: the chosen presets x architectures (default: the suite's)."""
    from harness.bench.train_bench import SUITE_SHAPES, run_train_suite

    overrides = {key: getattr(args, key) for key in
                 ("batch_size", "length", "inputs_length", "targets_length")
                 if getattr(args, key) is not None}
    steps, repeats = (3, 2) if args.quick else (args.steps, args.repeats)
    return run_train_suite(args.preset or (["mini"] if args.quick else list(SUITE_SHAPES)),
                           args.arch or list(ARCHITECTURES), shape_overrides=overrides,
                           dtype=args.dtype, remat_policy=args.remat,
                           attention=args.attention, scan_unroll=args.scan_unroll, steps=steps,
                           repeats=repeats, mesh_shape=tuple(args.mesh),
                           peak_tflops=args.peak_tflops, microbatches=args.microbatches, log=log)


def _bench_eval(args: argparse.Namespace, log):
    import os

    # The reference model and task are written locally; nothing may be fetched.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from harness.bench import eval_bench

    chosen = {name: getattr(args, name) for name in
              ("d_model", "num_layers", "questions", "batch_size", "repeats", "seed")
              if getattr(args, name, None) is not None}
    settings = (eval_bench.EvalBenchSettings.quick(**chosen) if args.quick
                else eval_bench.EvalBenchSettings(**chosen))
    return eval_bench.run_eval_benchmark(settings, work_dir=getattr(args, "work_dir", None),
                                         log=log)


def _bench_data(args: argparse.Namespace, log):
    from harness.bench.data_bench import PAIRS, run_data_benchmark

    shapes = args.shape or (["tiny"] if args.quick else ["tiny", "small"])
    return run_data_benchmark(shapes=shapes, pairs=PAIRS, world=args.world,
                              batches=5 if args.quick else args.batches,
                              steps=2 if args.quick else None, repeats=2 if args.quick else 3,
                              log=log)


def _bench_tiny(args: argparse.Namespace, log):
    from harness.bench.tiny_bench import run_tiny_benchmark

    log("the tiny grid's shapes: the harness's step and a hand-written JAX decoder, interleaved")
    return run_tiny_benchmark(args.case, dtype=args.dtype,
                              steps=3 if args.quick else args.steps,
                              repeats=2 if args.quick else args.repeats, warmup=args.warmup)


def _bench_resume(args: argparse.Namespace, log):
    from harness.bench.resume_bench import DEFAULT_STEPS, QUICK_STEPS, run_resume_benchmark

    steps = args.step or (QUICK_STEPS if args.quick else DEFAULT_STEPS)
    return run_resume_benchmark(steps, preset=args.preset, architecture=args.arch,
                                objective=args.objective, batch_size=args.batch_size,
                                total_length=args.length, workdir=args.workdir, report=log)


_BENCH_RUNNERS = {"train": _bench_train, "tiny": _bench_tiny, "eval": _bench_eval,
                  "data": _bench_data, "resume": _bench_resume}


def _cmd_bench(args: argparse.Namespace) -> int:
    """One benchmark (``archobj bench NAME``) or all of them (``archobj bench``), recorded."""
    import logging

    from harness.bench import suite

    # seqio warns on every uncached task and orbax logs each save at INFO through absl.
    logging.getLogger("absl").setLevel(logging.ERROR)
    names = [args.bench_command] if args.bench_command else list(_BENCH_RUNNERS)
    for name in names:
        if args.bench_command is None:  # the whole suite: each benchmark with its defaults
            defaults = _bench_defaults(name)
            defaults.quick = args.quick
            run_args = defaults
        else:
            run_args = args
        suite.run_and_record(name, lambda: _BENCH_RUNNERS[name](run_args, suite.say),
                             out=args.out, command=suite.command_line())
    return 0


def _bench_defaults(name: str) -> argparse.Namespace:
    """The arguments ``archobj bench NAME`` would get with no flags."""
    return build_parser().parse_args(["bench", name])


def _cmd_convert_hf_t5(args: argparse.Namespace) -> int:
    from harness.storage.convert import convert_hf_t5

    cfg = convert_hf_t5(args.src_dir, args.dst_dir, dtype=args.dtype)
    print(f"converted {args.src_dir} -> {args.dst_dir}: encoder-decoder, "
          f"{cfg.num_encoder_layers}+{cfg.num_layers} layers, d_model {cfg.d_model}, "
          f"vocab {cfg.vocab_size}, {'tied' if cfg.tie_embeddings else 'untied'} head")
    return 0


def _data_spec(args: argparse.Namespace, architecture: str, objective: str):
    from harness.train.data import DataSpec
    return DataSpec(architecture=architecture, objective=objective, source=args.source,
                    vocabulary=args.vocab, total_length=args.length, text_field=args.text_field,
                    seed=args.seed)


def _cmd_data_preview(args: argparse.Namespace) -> int:
    from objectives.tasks import check_compatible

    check_compatible(args.arch, args.objective)  # before TensorFlow starts (seconds)
    from harness.train.data import describe_example, format_description, pretraining_batches
    from objectives.vocab import load_vocabulary

    spec = _data_spec(args, args.arch, args.objective)
    vocabulary = load_vocabulary(args.vocab)
    batch = next(pretraining_batches(spec, args.num_examples))
    rows = [describe_example({k: v[i] for k, v in batch.items()}, vocabulary)
            for i in range(args.num_examples)]
    if args.json:
        print(json.dumps({"architecture": args.arch, "objective": args.objective,
                          "examples": rows}, indent=1))
    else:
        print(f"{args.arch}:{args.objective} from {args.source} ({args.vocab} vocabulary, "
              f"{args.length} tokens per sequence)")
        for i, row in enumerate(rows):
            print(format_description(i, row))
    return 0


def _cmd_data_bench(args: argparse.Namespace) -> int:
    from harness.train.data import measure_pipeline

    pairs = [p for p in STUDY_PAIRS if (args.arch is None or p[0] in args.arch)
             and (args.objective is None or p[1] in args.objective)]
    print(f"{'pair':8s} {'examples/s':>11s} {'tokens/s':>11s} {'padding':>8s} {'startup s':>10s}"
          f"   (batch {args.batch_size}, {args.batches} batches, {args.length} tokens/sequence)")
    for arch, objective in pairs:
        rate = measure_pipeline(_data_spec(args, arch, objective), args.batch_size, args.batches)
        print(f"{arch}:{objective:5s} {rate.examples_per_second:11.1f} "
              f"{rate.tokens_per_second:11,.0f} {rate.padding_fraction:8.1%} "
              f"{rate.startup_seconds:10.1f}", flush=True)
    return 0


def _cmd_vocab_train(args: argparse.Namespace) -> int:
    from objectives.vocab import NUM_SENTINELS, load_vocabulary, train_sentencepiece

    path = train_sentencepiece(args.text, args.size, args.out)
    vocabulary = load_vocabulary(str(path))
    print(f"wrote {path}: {args.size} pieces + {NUM_SENTINELS} sentinels = "
          f"{vocabulary.vocab_size} ids (pad 0, eos 1, unk 2)")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import logging

    from harness.train import config as config_lib
    from harness.train.distributed import initialize_if_multiprocess, launch_plan

    from harness.train import run_record

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # orbax logs every save and restore at INFO through absl, and JAX each backend it does not
    # find; their warnings and errors still show.
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU backend"
    config = config_lib.load_config(args.config, args.set or ())
    # The checks that need no device, before JAX starts: a typo in a path or a run directory that
    # holds another run is reported at once, and nothing is written (harness.train.loop.preflight).
    config_lib.check_inputs(config)
    run_record.check_resume(config)
    # Join a multi-process job (SLURM, TPU pod, explicit coordinator) before JAX sees any device.
    initialize_if_multiprocess(launch_plan(coordinator_address=args.coordinator_address,
                                           num_processes=args.num_processes,
                                           process_id=args.process_id))
    from harness.train.loop import run

    result = run(config)
    print(f"{config.name}: steps {result.first_step}..{result.last_step} done in {result.run_dir}"
          + (f"; final loss {result.losses[-1]:.4f}" if result.losses else ""))
    return 0


def _quiet_evaluation() -> None:
    """lm-eval's per-task notices about default aggregations, scikit-learn's F1 on tiny samples and
    promptsource's pkg_resources import are noise around the summary tables."""
    import logging
    import warnings

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*(ill-defined|pkg_resources).*")


def _cmd_eval(args: argparse.Namespace) -> int:
    from harness.eval.evaluate import evaluate_checkpoint

    if not args.verbose:
        _quiet_evaluation()

    tasks = None
    if args.tasks:
        tasks = [name.strip() for group in args.tasks for name in group.split(",") if name.strip()]
    evaluate_checkpoint(args.checkpoint, args.suite or ["eai", "t0"], tasks=tasks,
                        limit=args.limit, data_dir=args.data_dir, fixtures=args.fixtures,
                        step=args.step, architecture=args.as_arch, vocabulary=args.vocab,
                        batch_size=args.batch_size, out_dir=args.out, dtype=args.dtype,
                        mesh=tuple(args.mesh) if args.mesh else None,
                        report=lambda line: print(line, flush=True))
    return 0


def _grid_plan(args: argparse.Namespace, seed: Optional[int] = None):
    from harness.grid.plan import make_plan
    from harness.grid.spec import load_grid

    _quiet_evaluation()  # the stages' progress is the runner's lines, not lm-eval's notices
    import os

    # ... nor the per-task progress bars of lm-eval and Hugging Face datasets (tqdm reads
    # TQDM_DISABLE when a bar is made; datasets reads its variable on import).
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    grid = load_grid(args.file, args.set or (), variant=args.variant,
                     seed=args.seed if seed is None else seed)
    return make_plan(grid, runs=args.runs)


def _cmd_grid(args: argparse.Namespace) -> int:
    from harness.grid import runner, show

    if args.seeds is not None and (args.seeds < 1 or args.stage or args.executor != "local"):
        raise ValueError(f"--seeds {args.seeds}: a number of replicates >= 1, run by the local "
                         "executor; for one replicate (a cluster job, --executor slurm) pass "
                         "--seed N instead")
    plan = _grid_plan(args)
    if args.explain:
        print(show.explain(plan, args.explain))
        return 0
    if args.stage:  # one stage, as a cluster job runs it
        if args.stage not in plan.stages:
            raise ValueError(f"--stage {args.stage!r}: not a stage of {args.file}; archobj status "
                             f"{args.file} lists them")
        # A multi-node job joins one JAX job (srun tasks, TPU workers), as archobj train does.
        from harness.train.distributed import initialize_if_multiprocess, launch_plan

        initialize_if_multiprocess(launch_plan())
        import jax

        primary = jax.process_index() == 0
        if plan.world is not None:  # written once, atomically, by whichever job comes first
            runner.write_world(plan, report=lambda line: print(line, flush=True))
        outcome = runner.run_stage(plan, args.stage, retry_failed=args.retry_failed,
                                   primary=primary, report=lambda line: print(line, flush=True))
        if primary:
            runner.write_index(plan)
        return 0 if outcome in ("ran", "skipped") else 1
    from harness.grid import slurm

    slurm.reconcile(plan, report=lambda line: print(line, flush=True))  # jobs that died
    names = runner.select(plan, args.only)
    print(show.format_plan(plan, names, runner.statuses(plan, names)), flush=True)
    comparison = show.paper_comparison(plan)
    if comparison:
        print(comparison)
    if args.dry_run:
        return 0
    if args.executor == "slurm":  # one job per stage, chained by dependencies; nothing waits here
        jobs = slurm.submit(plan, names, grid_file=args.file, runs=args.runs,
                            overrides=args.set or (), retry_failed=args.retry_failed,
                            report=lambda line: print(line, flush=True))
        print(f"{plan.grid.name}: submitted {len(jobs)} jobs"
              + (f" ({', '.join(jobs.values())})" if jobs else "")
              + f"; archobj status {args.file} follows them")
        return 0
    return _run_local(args, plan)


def _run_local(args: argparse.Namespace, plan) -> int:
    """Runs the grid here: each replicate (``--seeds``) in turn in this one process, sharing its
    imports, the built-in world and the compilation cache; then, with ``--report``, the report of
    every replicate; then says where the time went (one record per invocation appended to
    ``<runs>/<grid>/timing.jsonl``: a later run never rewrites an earlier run's record)."""
    import json
    import time

    from harness.grid import runner, timing

    start = time.perf_counter()
    ledger = timing.Ledger()
    seeds = [args.seed] if args.seeds is None else list(range(args.seeds))
    status, roots = 0, []
    estimator = runner.new_estimator(plan)  # what replicate 0 teaches, replicate 1 starts from
    for seed in seeds:
        if seed != args.seed:
            plan = _grid_plan(args, seed)
            print(f"{plan.grid.name}: replicate seed {seed}", flush=True)
        summary = runner.run_plan(plan, args.only, retry_failed=args.retry_failed,
                                  report=lambda line: print(line, flush=True), ledger=ledger,
                                  compilation_cache=plan.root.parent / ".jax_cache",
                                  estimator=estimator)
        status = max(status, _finish(plan, summary))
        roots.append(plan.root)
    if args.report:
        from analysis.report import write_report  # pandas and matplotlib; never JAX

        with ledger.phase("report"):
            index = write_report(roots, roots[0] / "report")
        print(f"archobj report: wrote {index} and {index.with_suffix('.html')}", flush=True)
    total = time.perf_counter() - start
    if ledger.seconds:
        print(ledger.breakdown(total))
        record = {**ledger.to_json(), "total_seconds": round(total, 3), "seeds": seeds,
                  "only": args.only, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with open(roots[0] / "timing.jsonl", "a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")
    return status


def _cmd_cell(args: argparse.Namespace) -> int:
    from harness.grid import runner, show

    plan = _grid_plan(args)
    if args.cell not in plan.cells:
        raise ValueError(f"cell {args.cell!r}: not a cell of {args.file}; archobj status "
                         f"{args.file} lists them (e.g. {list(plan.cells)[:3]})")
    import re

    only = f"^{re.escape(args.cell)}$"
    names = runner.select(plan, only)
    print(show.format_plan(plan, names, runner.statuses(plan, names)), flush=True)
    force = [n for n in plan.cells[args.cell] if plan.stages[n].kind != "import"] \
        if args.force else []
    # --force re-runs the cell's own stages; its shared upstream (a pretraining run other cells
    # use) is re-run only if it is missing or changed.
    force = [n for n in force if set(plan.stages[n].cells) == {args.cell}]
    summary = runner.run_plan(plan, only, retry_failed=True, force=force,
                              report=lambda line: print(line, flush=True))
    return _finish(plan, summary)


def _finish(plan, summary) -> int:
    print(f"{plan.grid.name}: ran {len(summary.ran)}, failed {len(summary.failed)}, "
          f"dep-failed {len(summary.dep_failed)}, running elsewhere {len(summary.busy)}; "
          f"index in {plan.root / 'index.md'}")
    return 0 if summary.ok else 1


def _cmd_status(args: argparse.Namespace) -> int:
    from harness.grid import runner, show

    from harness.grid import slurm

    plan = _grid_plan(args)
    slurm.reconcile(plan)  # records SLURM jobs that died; nothing to do without job ids
    names = list(plan.stages)
    print(show.format_plan(plan, names, runner.statuses(plan, names)))
    return 0


def _cmd_world_write(args: argparse.Namespace) -> int:
    from objectives.world import cli_write  # the generator: no JAX, no TensorFlow

    return cli_write(args.out_dir, args.seed, args.size)


def _cmd_report(args: argparse.Namespace) -> int:
    from analysis.report import write_report  # pandas and matplotlib; never JAX

    if args.bootstrap < 1:
        raise ValueError(f"--bootstrap {args.bootstrap}: the number of bootstrap replicates must "
                         "be at least 1 (default 1000)")
    index = write_report(args.runs_dirs, args.out, replicates=args.bootstrap, seed=args.seed)
    print(f"archobj report: wrote {index} and {index.with_suffix('.html')}")
    return 0


def _add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="a grid file, e.g. experiments/tiny.yaml")
    parser.add_argument("--runs", help="runs root (default: the grid file's 'runs', usually runs/)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="edit the grid file, e.g. --set base.data.source=corpus.txt "
                             "(repeatable)")
    parser.add_argument("--variant", metavar="NAME",
                        help="apply the grid file's variants: NAME edits first (e.g. quick); "
                             "runs go to <grid>_<NAME>")
    parser.add_argument("--seed", type=int, default=0,
                        help="the replicate: train.seed and data.seed of every stage; runs of "
                             "seed N > 0 go to <grid>_seed<N> (default 0, the grid itself)")


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True,
                        help="a local text file, directory of .txt/.jsonl, or .jsonl file; "
                             "'c4' (TFDS) or 'c4-hf' for the real corpus")
    parser.add_argument("--vocab", default="t5",
                        help="'t5' (the study's SentencePiece; $ARCHOBJ_T5_SPM overrides its "
                             "path), 'byte', or a SentencePiece .model file (default t5)")
    parser.add_argument("--length", type=int, default=626,
                        help="tokens per sequence seen (default 626, the study's)")
    parser.add_argument("--text-field", default="text", help="JSONL text field (default text)")
    parser.add_argument("--seed", type=int, default=0)


def _add_bench_record_arguments(parser: argparse.ArgumentParser, quick: str,
                                top: bool = False) -> None:
    # Given before or after WHAT: the subcommand's copies default to SUPPRESS, so that they never
    # overwrite what `archobj bench --out X train` set on the parent.
    parser.add_argument("--out", default="bench" if top else argparse.SUPPRESS,
                        help="record results.json and results.md here (default bench/); an "
                             "existing record keeps its other benchmarks' entries")
    parser.add_argument("--quick", action="store_true",
                        default=False if top else argparse.SUPPRESS, help=quick)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="archobj",
        description="Which architecture and pretraining objective generalise best zero-shot? "
                    "A JAX harness for Wang et al. (2022).")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    model = commands.add_parser("model", help="inspect and benchmark model presets")
    model_commands = model.add_subparsers(dest="model_command", metavar="ACTION", required=True)

    info = model_commands.add_parser(
        "info", help="exact parameter count and training FLOPs per token of a preset")
    info.add_argument("preset", choices=PRESETS)
    info.add_argument("--arch", choices=ARCHITECTURES, default=None,
                      help="architecture (default: cd, or ed for paper-encdec)")
    info.add_argument("--length", type=int, default=626,
                      help="decoder-only sequence length (default 626, the study's)")
    info.add_argument("--prefix-length", type=int, default=313,
                      help="nd prefix length for the FLOP count (default 313, the mean PLM split)")
    info.add_argument("--inputs-length", type=int, default=512, help="ed inputs (default 512)")
    info.add_argument("--targets-length", type=int, default=114, help="ed targets (default 114)")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=_cmd_model_info)

    bench = commands.add_parser(
        "bench", help="benchmarks that print figures (PERF.md protocol); with no WHAT, all of "
                      "them, recorded in bench/results.json and bench/results.md")
    _add_bench_record_arguments(bench, "a smoke-test size of every benchmark (minutes)", top=True)
    bench.set_defaults(handler=_cmd_bench, bench_command=None)
    bench_commands = bench.add_subparsers(dest="bench_command", metavar="WHAT")
    bench_train = bench_commands.add_parser(
        "train", help="time the training step (the study's Adafactor) on a synthetic batch: "
                      "tokens/s, model FLOP/s, XLA FLOPs, MFU")
    bench_train.add_argument("--preset", choices=PRESETS, action="append",
                             help="model preset; repeat for several (default: small at the "
                                  "study's lengths and mini at the tiny grid's)")
    bench_train.add_argument("--arch", choices=ARCHITECTURES, action="append",
                             help="architecture; repeat for several (default all three)")
    bench_train.add_argument("--batch-size", type=int, default=None,
                             help="rows per step (default: small 4, mini 16, xl 16)")
    bench_train.add_argument("--length", type=int, default=None,
                             help="decoder-only tokens per row (default: small 626, mini 128)")
    bench_train.add_argument("--inputs-length", type=int, default=None,
                             help="ed inputs (default: small 512, else the MLM split of --length)")
    bench_train.add_argument("--targets-length", type=int, default=None,
                             help="ed targets (default: small 114, else the MLM split)")
    bench_train.add_argument("--steps", type=int, default=10, help="steps per timed interval")
    bench_train.add_argument("--repeats", type=int, default=3, help="timed intervals")
    bench_train.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    bench_train.add_argument("--remat", choices=("none", "full", "minimal"), default="none")
    bench_train.add_argument("--attention", choices=ATTENTION_IMPLS, default="einsum",
                             help="how attention runs (model.attention_impl): the model's own "
                                  "einsums, or jax.nn.dot_product_attention on XLA or cuDNN "
                                  "(GPU)")
    bench_train.add_argument("--scan-unroll", type=int, default=None,
                             help="layers per iteration of the scan over layers "
                                  "(model.scan_unroll; default: the preset's)")
    bench_train.add_argument("--microbatches", type=int, default=1,
                             help="gradient-accumulation microbatches per step")
    bench_train.add_argument("--mesh", type=int, nargs=2, default=(-1, 1),
                             metavar=("DATA", "MODEL"))
    bench_train.add_argument("--peak-tflops", type=float, default=None,
                             help="per-device peak for MFU on accelerators (CPU peak is measured)")
    _add_bench_record_arguments(bench_train, "the mini preset only, 3-step intervals")
    bench_eval = bench_commands.add_parser(
        "eval", help="loglikelihood requests/s of the archobj lm-eval model and lm-eval's Hugging "
                     "Face backend on the same random T5 weights, side by side; and against the "
                     "forward roofline")
    bench_eval.add_argument("--d-model", type=int, help="model width (default 512)")
    bench_eval.add_argument("--num-layers", type=int, help="layers per stack (default 6)")
    bench_eval.add_argument("--questions", type=int,
                            help="four-choice questions; requests = 4x (default 300)")
    bench_eval.add_argument("--batch-size", type=int, help="both models' batch size (default 8)")
    bench_eval.add_argument("--repeats", type=int, help="timed passes per model (default 3)")
    bench_eval.add_argument("--seed", type=int, help="weights and questions (default 0)")
    bench_eval.add_argument("--work-dir", help="keep the reference model and task here "
                                               "(default: a temporary directory)")
    _add_bench_record_arguments(bench_eval, quick="smoke-test size (d_model 64, 2+2 layers, "
                                                  "12 questions)")
    bench_data = bench_commands.add_parser(
        "data", help="each objective's input pipeline (and each architecture's MTF stream) "
                     "against the training step it feeds, at the tiny grid's and the small "
                     "preset's shapes, on the built-in world")
    bench_data.add_argument("--shape", choices=("tiny", "small"), action="append",
                            help="repeat for several (default both; --quick: tiny)")
    bench_data.add_argument("--world", help="a written world (archobj world write) to read "
                                            "(default: write one into a temporary directory)")
    bench_data.add_argument("--batches", type=int, default=20, help="timed pipeline batches")
    _add_bench_record_arguments(bench_data, quick="tiny shape only, 5 batches, 2 x 2 steps")
    bench_tiny = bench_commands.add_parser(
        "tiny", help="the tiny grid's training step against a hand-written JAX decoder of the "
                     "same shape (plain jnp), side by side: the harness's overhead")
    bench_tiny.add_argument("--case", choices=("cd", "nd", "ed", "ed_plm"), action="append",
                            help="tiny-grid shape; repeat for several (default all four)")
    bench_tiny.add_argument("--steps", type=int, default=10, help="steps per timed interval")
    bench_tiny.add_argument("--repeats", type=int, default=5, help="timed intervals of each")
    bench_tiny.add_argument("--warmup", type=int, default=2, help="untimed steps of each first")
    bench_tiny.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    _add_bench_record_arguments(bench_tiny, "3-step intervals, 2 of each")
    bench_resume = bench_commands.add_parser(
        "resume", help="seconds from launching `archobj train` to its first step after a restart "
                       "at step k, for several k: with the saved data-iterator state and by "
                       "replaying k batches")
    bench_resume.add_argument("--step", type=int, action="append",
                              help="restart step k; repeat for several")
    bench_resume.add_argument("--preset", default="tiny", choices=PRESETS,
                              help="model preset (default tiny)")
    bench_resume.add_argument("--arch", default="cd", choices=ARCHITECTURES)
    bench_resume.add_argument("--objective", default="mlm", choices=OBJECTIVES)
    bench_resume.add_argument("--batch-size", type=int, default=8)
    bench_resume.add_argument("--length", type=int, default=128, help="data.total_length")
    bench_resume.add_argument("--workdir", help="keep the corpus and run directories here")
    _add_bench_record_arguments(bench_resume, "fewer k (about a minute)")
    for sub in (bench_train, bench_tiny, bench_eval, bench_data, bench_resume):
        sub.set_defaults(handler=_cmd_bench)

    convert = commands.add_parser("convert", help="import checkpoints from other frameworks")
    convert_commands = convert.add_subparsers(dest="convert_command", metavar="FORMAT",
                                              required=True)
    hf_t5 = convert_commands.add_parser(
        "hf-t5", help="a local Hugging Face T5 v1.1 / T5-LM-adapt / T0 checkpoint -> archobj ed")
    hf_t5.add_argument("src_dir", help="directory with config.json and the PyTorch weights")
    hf_t5.add_argument("dst_dir", help="archobj model directory to create")
    hf_t5.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                       help="compute dtype recorded in the converted config")
    hf_t5.set_defaults(handler=_cmd_convert_hf_t5)

    data = commands.add_parser("data", help="inspect and time the pretraining input pipelines")
    data_commands = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    preview = data_commands.add_parser(
        "preview", help="print examples as the model sees them: decoded text and feature arrays")
    preview.add_argument("--arch", choices=ARCHITECTURES, required=True)
    preview.add_argument("--objective", choices=OBJECTIVES, required=True)
    _add_data_arguments(preview)
    preview.add_argument("--num-examples", type=int, default=2)
    preview.add_argument("--json", action="store_true", help="print JSON")
    preview.set_defaults(handler=_cmd_data_preview)
    data_bench = data_commands.add_parser(
        "bench", help="examples/s and tokens/s of each objective's pipeline on this machine")
    _add_data_arguments(data_bench)
    data_bench.add_argument("--arch", choices=ARCHITECTURES, action="append",
                            help="restrict to these architectures (repeatable)")
    data_bench.add_argument("--objective", choices=OBJECTIVES, action="append",
                            help="restrict to these objectives (repeatable)")
    data_bench.add_argument("--batch-size", type=int, default=32)
    data_bench.add_argument("--batches", type=int, default=20)
    data_bench.set_defaults(handler=_cmd_data_bench)

    vocab = commands.add_parser("vocab", help="vocabularies")
    vocab_commands = vocab.add_subparsers(dest="vocab_command", metavar="ACTION", required=True)
    train = vocab_commands.add_parser(
        "train", help="train a SentencePiece model (T5 ids: pad 0, eos 1, unk 2; + 100 sentinels)")
    train.add_argument("text", nargs="+", help="text files, .jsonl files or directories")
    train.add_argument("--size", type=int, required=True, help="pieces, before the sentinels")
    train.add_argument("--out", required=True, help="output .model path")
    train.set_defaults(handler=_cmd_vocab_train)

    stage = commands.add_parser(
        "train", help="run one training stage (pretrain, adapt, finetune) into its run directory; "
                      "re-running resumes from the newest checkpoint")
    stage.add_argument("config", nargs="?", help="YAML run config (default: the study's defaults)")
    stage.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config key, e.g. --set train.steps=100 (repeatable)")
    stage.add_argument("--coordinator-address", metavar="HOST:PORT",
                       help="multi-process job: process 0's address (SLURM and TPU pods are "
                            "detected without flags; harness/train/distributed.py)")
    stage.add_argument("--num-processes", type=int, help="multi-process job: number of processes")
    stage.add_argument("--process-id", type=int, help="multi-process job: this process's index")

    evaluation = commands.add_parser(
        "eval", help="zero-shot EAI-Eval and T0-Eval of a checkpoint (PAPER.md 3.1, 3.2); results "
                     "go to CHECKPOINT/eval/step_<N>/")
    evaluation.add_argument("checkpoint", help="a run directory or converted model directory")
    evaluation.add_argument("--suite", choices=SUITES, action="append",
                            help="eai (lm-evaluation-harness) or t0 (rank classification); "
                                 "repeatable (default both)")
    evaluation.add_argument("--tasks", action="append", metavar="A,B",
                            help="only these tasks/datasets (comma-separated, repeatable)")
    evaluation.add_argument("--limit", type=int, help="at most N examples per task (smoke runs)")
    data_source = evaluation.add_mutually_exclusive_group()
    data_source.add_argument("--data-dir", help="offline copies of the datasets "
                                                "(DIR/<hub path>/<config>/<split>.jsonl); default: "
                                                "the Hugging Face hub")
    data_source.add_argument("--fixtures", action="store_true",
                             help="the small synthetic fixtures shipped with archobj (a demo; "
                                  "the numbers mean nothing)")
    evaluation.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    evaluation.add_argument("--as-arch", choices=("cd", "nd"),
                            help="evaluate a cd checkpoint as nd or the reverse (PAPER.md 3.1)")
    evaluation.add_argument("--vocab", help="tokenizer: t5, byte or a SentencePiece model "
                                            "(default: the run's data.vocabulary)")
    evaluation.add_argument("--batch-size", type=int, default=8, help="rows per call (default 8)")
    evaluation.add_argument("--mesh", type=int, nargs=2, metavar=("DATA", "MODEL"),
                            help="shard the model over the devices, e.g. --mesh 1 8 for an 11B "
                                 "model on 8 GPUs (-1 fills; default: one device)")
    evaluation.add_argument("--dtype", choices=("float32", "bfloat16"),
                            help="compute dtype instead of the checkpoint's (float32 scores a "
                                 "bfloat16 model in full precision; results go to "
                                 "step_<N>-float32)")
    evaluation.add_argument("--out", help="write results here instead of CHECKPOINT/eval/step_<N>")
    evaluation.add_argument("--verbose", action="store_true",
                            help="show lm-eval's own warnings and notices")
    evaluation.set_defaults(handler=_cmd_eval)

    world = commands.add_parser(
        "world", help="the built-in world the tiny grid trains and evaluates on (no downloads)")
    world_commands = world.add_subparsers(dest="world_command", required=True)
    world_write = world_commands.add_parser(
        "write", help="write a world's corpus, finetuning mixture, held-out suites and tokenizer "
                      "into DIR (a no-op when DIR holds it already)")
    world_write.add_argument("out_dir", metavar="DIR")
    world_write.add_argument("--seed", type=int, default=0, help="the world's seed (default 0)")
    world_write.add_argument("--size", default="default",
                             help="'default' (the tiny grid's) or 'test' (seconds, for tests)")
    world_write.set_defaults(handler=_cmd_world_write)

    grid = commands.add_parser(
        "grid", help="plan and run a study grid: missing stages in dependency order, each once")
    _add_grid_arguments(grid)
    grid.add_argument("--only", metavar="REGEX",
                      help="only the cells matching REGEX, plus the stages they need")
    grid.add_argument("--dry-run", action="store_true",
                      help="print the plan with tokens, FLOPs and accelerator-hours; run nothing")
    grid.add_argument("--retry-failed", action="store_true", help="run failed stages again")
    grid.add_argument("--stage", metavar="STAGE",
                      help="run this one stage (its upstream must be done), as a cluster job does")
    grid.add_argument("--executor", choices=("local", "slurm"), default="local",
                      help="local: run the stages here, one after another (default); slurm: "
                           "submit one job per stage with dependencies, using the grid file's "
                           "slurm: resources, and exit")
    grid.add_argument("--explain", metavar="STAGE",
                      help="why STAGE is pending: the fields that changed, old and new value")
    grid.add_argument("--report", action="store_true",
                      help="then write the report of the grid (and its replicates) to "
                           "<runs>/<grid>/report, as archobj report does")
    grid.add_argument("--seeds", type=int, metavar="N",
                      help="run N replicates of the grid, seeds 0..N-1, one after another "
                           "(local executor)")
    grid.set_defaults(handler=_cmd_grid)
    cell = commands.add_parser(
        "cell", help="re-run one cell; upstream stages only if they are missing or changed")
    _add_grid_arguments(cell)
    cell.add_argument("cell", help="the cell's name (archobj status FILE lists them)")
    cell.add_argument("--force", action="store_true",
                      help="run the cell's own stages again even if done (the old run is kept)")
    cell.set_defaults(handler=_cmd_cell)
    status = commands.add_parser(
        "status", help="the grid's table from disk: done / running / pending / failed (no JAX)")
    _add_grid_arguments(status)
    status.set_defaults(handler=_cmd_status)
    report = commands.add_parser(
        "report", help="the paper's tables and figures for run directories, beside the paper's "
                       "numbers (report/index.md and index.html)")
    report.add_argument("runs_dirs", nargs="+", metavar="RUNS_DIR",
                        help="grid directories (runs/<grid>), runs roots, archobj run directories "
                             "or lm-eval result JSON files")
    report.add_argument("--out", default="report", help="output directory (default: report)")
    report.add_argument("--bootstrap", type=int, default=1000,
                        help="bootstrap replicates for the intervals (default 1000)")
    report.add_argument("--seed", type=int, default=0, help="the bootstrap's seed (default 0)")
    report.set_defaults(handler=_cmd_report)
    stage.set_defaults(handler=_cmd_train)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``archobj`` console command."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ValueError as error:  # bad input: one clear line, no traceback
        print(f"archobj: error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        from harness.train.run_record import PREEMPTED_EXIT_STATUS, Preempted

        if not isinstance(error, Preempted):
            raise
        # A stage saved and stopped on SIGTERM / SIGUSR2: running it again resumes it.
        print(f"archobj: {error}", file=sys.stderr)
        return PREEMPTED_EXIT_STATUS


if __name__ == "__main__":
    sys.exit(main())
