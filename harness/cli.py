"""The ``archobj`` command line.

Every subcommand imports its heavy dependencies (JAX, orbax, torch, TensorFlow) inside its handler,
so ``archobj --help`` answers at once and never imports TensorFlow.

    archobj model info PRESET [--arch A]        exact parameter count and training FLOPs per token
    archobj model bench PRESET [--arch A] ...   time a training step (PERF.md protocol)
    archobj convert hf-t5 SRC_DIR DST_DIR       Hugging Face T5 / T5-LM / T0 checkpoint -> archobj
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

# Kept in sync with models.config (a test checks it); duplicated so --help needs no imports.
ARCHITECTURES = ("cd", "nd", "ed")
PRESETS = ("tiny", "small", "base", "large", "paper-decoder", "paper-encdec")


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
    print(f"  parameters             {params}  ({params / 1e9:.2f}B)")
    print(f"  non-embedding          {params - embedding}")
    print(f"  layers                 {layers}")
    print(f"  d_model / heads x dim  {cfg.d_model} / {cfg.num_heads} x {cfg.head_dim}")
    print(f"  d_ff / vocab           {cfg.d_ff} / {cfg.vocab_size}")
    print(f"  training FLOPs/token   {flops.per_token:.4e} causal-aware, "
          f"{flops.per_token_full:.4e} full-matrix  ({shape})")
    return 0


def _cmd_model_bench(args: argparse.Namespace) -> int:
    from harness.bench import run_benchmark

    for arch in args.arch or ["cd"]:
        cfg = _model_config(argparse.Namespace(preset=args.preset, arch=arch), dtype=args.dtype,
                            remat_policy=args.remat)
        result = run_benchmark(
            cfg, args.batch_size, length=args.length, inputs_length=args.inputs_length,
            targets_length=args.targets_length, steps=args.steps, repeats=args.repeats,
            mesh_shape=tuple(args.mesh), peak_tflops=args.peak_tflops,
            label=f"{args.preset} {arch} ({cfg.dtype})")
        print(result.format(), flush=True)
    return 0


def _cmd_convert_hf_t5(args: argparse.Namespace) -> int:
    from harness.convert import convert_hf_t5

    cfg = convert_hf_t5(args.src_dir, args.dst_dir, dtype=args.dtype)
    print(f"converted {args.src_dir} -> {args.dst_dir}: encoder-decoder, "
          f"{cfg.num_encoder_layers}+{cfg.num_layers} layers, d_model {cfg.d_model}, "
          f"vocab {cfg.vocab_size}, {'tied' if cfg.tie_embeddings else 'untied'} head")
    return 0


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

    bench = model_commands.add_parser(
        "bench", help="time a forward+backward+update step on a synthetic batch")
    bench.add_argument("preset", choices=PRESETS)
    bench.add_argument("--arch", choices=ARCHITECTURES, action="append",
                       help="architecture; repeat to benchmark several (default cd)")
    bench.add_argument("--batch-size", type=int, default=8)
    bench.add_argument("--length", type=int, default=626)
    bench.add_argument("--inputs-length", type=int, default=512)
    bench.add_argument("--targets-length", type=int, default=114)
    bench.add_argument("--steps", type=int, default=10, help="steps per timed interval")
    bench.add_argument("--repeats", type=int, default=3, help="timed intervals")
    bench.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    bench.add_argument("--remat", choices=("none", "full", "minimal"), default="none")
    bench.add_argument("--mesh", type=int, nargs=2, default=(-1, 1), metavar=("DATA", "MODEL"))
    bench.add_argument("--peak-tflops", type=float, default=None,
                       help="per-device peak for MFU on accelerators (CPU peak is measured)")
    bench.set_defaults(handler=_cmd_model_bench)

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
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``archobj`` console command."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ValueError as error:  # bad input: one clear line, no traceback
        print(f"archobj: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
