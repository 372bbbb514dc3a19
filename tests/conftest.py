"""Test setup: 8 emulated CPU devices, before anything imports jax (STYLE.md B3)."""

import os

# Compiling dominates this suite on 2 cores: the cheapest LLVM backend roughly halves it. Both sides
# of every comparison (and the subprocesses tests start, which inherit the environment) compile the
# same way; the math XLA emits is unchanged.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8"
                           + " --xla_backend_optimization_level=0"
                           + " --xla_llvm_disable_expensive_passes=true").strip()
os.environ["JAX_PLATFORMS"] = "cpu"
# Many tests compile the same programs (the tiny model's init, the loop's train step in every run and
# in the subprocesses of the resume tests). JAX's persistent compilation cache, shared by the xdist
# workers and the subprocesses through the environment, compiles each once per session. Its keys
# cover the program, the flags and the versions, so a hit is the same executable.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "jax-tests"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
