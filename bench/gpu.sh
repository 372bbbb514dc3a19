#!/usr/bin/env bash
# The GPU rows of `archobj bench train` (issue [9]): the ~1B decoder (preset xl, T5 v1.1 XL widths,
# 1.22B parameters) for CD, ND and ED in bf16 on one GPU, with cuDNN's fused attention and with the
# model's own einsum attention, after checking that cuDNN computes the model's attention.
#
#     bash bench/gpu.sh [OUT_DIR]        (needs a GPU; a few minutes on one H200)
#     ONLY='b32|unroll' bash bench/gpu.sh   (the rows whose name matches; no cuDNN check)
#
# Each row runs in its own process with its own time limit, so one that fails (a kernel cuDNN does
# not have, memory) costs only itself. Rows run most-wanted first and stop starting when fewer than
# MIN_ROW_SECONDS of BUDGET_SECONDS are left. Everything lands in OUT_DIR/gpu-results.tar.gz
# (re-packed after each step, so a run cut short keeps what it finished): per row a results.json
# and results.md of `archobj bench`, the printed logs, the versions, and the matmul peak measured
# on the device. PEAK_TFLOPS (default 989, the H100/H200 dense bf16 datasheet figure, PERF.md) is
# what MFU is computed against.
set -u
out=${1:-${OUT:-/tmp/archobj-gpu}}
mkdir -p "$out"
work=$(mktemp -d)
py=${PYTHON:-python3}
peak=${PEAK_TFLOPS:-989}
budget=${BUDGET_SECONDS:-560}
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

row cd-cudnn --arch cd --attention cudnn
row cd-einsum --arch cd
row nd-cudnn --arch nd --attention cudnn
row ed-cudnn --arch ed --attention cudnn
row nd-einsum --arch nd
row ed-einsum --arch ed
# Batch 32 (the einsum path's 68 GiB of temporaries at batch 16 would not fit twice) and the
# scan over layers unrolled.
row cd-cudnn-b32 --arch cd --attention cudnn --batch-size 32
row cd-cudnn-unroll --arch cd --attention cudnn --scan-unroll 24
row cd-cudnn-b32-unroll --arch cd --attention cudnn --batch-size 32 --scan-unroll 24
row nd-cudnn-b32 --arch nd --attention cudnn --batch-size 32
row ed-cudnn-b32 --arch ed --attention cudnn --batch-size 32
row nd-cudnn-b32-unroll --arch nd --attention cudnn --batch-size 32 --scan-unroll 24
row ed-cudnn-b32-unroll --arch ed --attention cudnn --batch-size 32 --scan-unroll 24
export XLA_FLAGS="--xla_gpu_enable_triton_gemm=false"
row cd-cudnn-no-triton-gemm --arch cd --attention cudnn
echo "done in ${SECONDS} s; results in $out/gpu-results.tar.gz"
