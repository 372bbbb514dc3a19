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
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
