"""archobj models: one T5.1.1-style Transformer family for the study's three architectures.

Imports neither TensorFlow nor seqio, so it runs (and benchmarks) on a machine with only JAX.
"""

from models.config import ARCHITECTURES, PRESETS, ModelConfig, preset
from models.transformer import Transformer, abstract_params, count_params, init_params

__all__ = ["ARCHITECTURES", "PRESETS", "ModelConfig", "Transformer", "abstract_params",
           "count_params", "init_params", "preset"]
