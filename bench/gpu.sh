#!/usr/bin/env bash
# The GPU rows of `archobj bench train` (issue [9]): the ~1B decoder (preset xl, T5 v1.1 XL widths,
# 1.22B parameters) for CD, ND and ED in bf16 on one GPU, with cuDNN's fused attention and with the
# model's own einsum attention, after checking that cuDNN computes the model's attention.
#
#     bash bench/gpu.sh [OUT_DIR]        (needs a GPU; about 11 minutes on one H200)
#     ONLY='b32|unroll' bash bench/gpu.sh   (the rows whose name matches; no cuDNN check)
#
# Each row runs in its own process with its own time limit, so one that fails (a kernel cuDNN does
# not have, memory) costs only itself. Rows run most-wanted first and stop starting when fewer than
# MIN_ROW_SECONDS of BUDGET_SECONDS are left. Everything lands in OUT_DIR/gpu-results.tar.gz
# (re-packed after each step, so a run cut short keeps what it finished): per row a results.json
# and results.md of `archobj bench`, the printed logs, the versions, the matmul peak measured on
# the device, and at the end one results.json / results.md of every row (bench/gpu/ holds the
# record of 2026-11-30, made in three calls). MFU is against PEAK_TFLOPS (default 989, the
# H100/H200 dense bf16 datasheet figure, PERF.md).
set -u
out=${1:-${OUT:-/tmp/archobj-gpu}}
mkdir -p "$out"
work=$(mktemp -d)
py=${PYTHON:-python3}
peak=${PEAK_TFLOPS:-989}
budget=${BUDGET_SECONDS:-590}
min_row=${MIN_ROW_SECONDS:-75}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.95

pack() { tar -czf "$out/gpu-results.tar.gz" -C "$work" .; }

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $py - <<'EOF'
import time
import jax, jax.numpy as jnp
from importlib import metadata
print({name: metadata.version(name) for name in ("jax", "jaxlib", "flax", "optax")})
print(jax.devices())
n = 8192
a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
dot = jax.jit(jnp.dot)
jax.block_until_ready(dot(a, a))
times = []
for _ in range(10):
    start = time.perf_counter(); jax.block_until_ready(dot(a, a)); times.append(time.perf_counter() - start)
print(f"bf16 matmul {n}^3 on random data, best of 10: {2 * n**3 / min(times) / 1e12:.0f} TFLOP/s")
EOF
} 2>&1 | tee "$work/versions.txt"
if [[ -z "${ONLY:-}" ]]; then
  timeout 150 $py -m harness.bench.attention_check --impl cudnn 2>&1 | tee "$work/attention_check.txt"
fi
pack

row() {  # row NAME [archobj bench train flags...]
  local name=$1 left=$((budget - SECONDS))
  shift
  if [[ -n "${ONLY:-}" && ! "$name" =~ $ONLY ]]; then return; fi
  if (( left < min_row )); then
    echo "== $name: skipped, ${left} s of the budget left" | tee -a "$work/skipped.txt"
    return
  fi
  echo "== $name (${left} s left)"
  timeout $((left < 200 ? left : 200)) $py -m harness.cli bench train --preset xl \
    --peak-tflops "$peak" --steps 5 --repeats 3 --out "$work/$name" "$@" 2>&1 \
    | tee "$work/$name.log"
  pack
}

# The scan over layers as the model defaults to (--scan-unroll 1); then xl's default, unrolled.
# The einsum path's 67 GiB of temporaries at batch 16 would not fit at 32.
row cd-cudnn --arch cd --attention cudnn --scan-unroll 1
row cd-einsum --arch cd --scan-unroll 1
row nd-cudnn --arch nd --attention cudnn --scan-unroll 1
row ed-cudnn --arch ed --attention cudnn --scan-unroll 1
row nd-einsum --arch nd --scan-unroll 1
row ed-einsum --arch ed --scan-unroll 1
row cd-cudnn-b32 --arch cd --attention cudnn --batch-size 32 --scan-unroll 1
row cd-cudnn-unroll --arch cd --attention cudnn
row cd-cudnn-b32-unroll --arch cd --attention cudnn --batch-size 32
row nd-cudnn-b32 --arch nd --attention cudnn --batch-size 32 --scan-unroll 1
row ed-cudnn-b32 --arch ed --attention cudnn --batch-size 32 --scan-unroll 1
row nd-cudnn-b32-unroll --arch nd --attention cudnn --batch-size 32
row ed-cudnn-b32-unroll --arch ed --attention cudnn --batch-size 32
export XLA_FLAGS="--xla_gpu_enable_triton_gemm=false"
row cd-cudnn-no-triton-gemm --arch cd --attention cudnn --scan-unroll 1
# One record of every row that finished, in the order they ran: results.json and results.md.
$py - "$work" <<'EOF'
import pathlib
import sys

from harness.bench.suite import merge_train

work = pathlib.Path(sys.argv[1])
rows = sorted((path.parent for path in work.glob("*/results.json")),
              key=lambda path: (path / "results.json").stat().st_mtime)
if rows:
    print(merge_train(work, rows, command="bash bench/gpu.sh"))
EOF
pack
echo "done in ${SECONDS} s; results in $out/gpu-results.tar.gz"
