"""archobj models: one T5.1.1-style Transformer family for the study's three architectures.

Imports neither TensorFlow nor seqio, so it runs (and benchmarks) on a machine with only JAX. The
JAX-side names are imported on first use (PEP 562), so ``models.config`` alone (what run configs
and ``archobj --help`` need) never starts JAX.
"""

from models.config import ARCHITECTURES, PRESETS, ModelConfig, preset

_TRANSFORMER_NAMES = ("Transformer", "abstract_params", "count_params", "init_params")

__all__ = ["ARCHITECTURES", "PRESETS", "ModelConfig", "Transformer", "abstract_params",
           "count_params", "init_params", "preset"]


def __getattr__(name: str):
    if name in _TRANSFORMER_NAMES:
        from models import transformer
        return getattr(transformer, name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
