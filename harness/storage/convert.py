"""Converts Hugging Face T5-family PyTorch checkpoints into archobj encoder-decoder checkpoints.

Supported: the GEGLU T5 layout of T5 v1.1, T5-LM-adapt and T0 (``feed_forward_proj="gated-gelu"``,
one relative-position table per stack, no biases), usually with an untied ``lm_head``. The result is
an ``"ed"`` model directory in the harness's own format (``harness.storage.checkpoint``), so the study's
released baselines can be evaluated by the same code as the models trained here.

Layout mapping (torch ``nn.Linear`` stores ``[out, in]``; ours are ``[in, ...]``; ``L`` = layers)::

    shared.weight                         [vocab, d]    token_embedder/embedding        [vocab, d]
    {encoder,decoder}.block.0.layer.0.SelfAttention.relative_attention_bias.weight
                                          [buckets, h]  {encoder,decoder}/relpos_bias/rel_embedding
                                                                                        [h, buckets]
    *.{q,k,v}.weight                      [h*kv, d]     .../{query,key,value}       [L, d, h, kv]
    *.o.weight                            [d, h*kv]     .../out                     [L, h, kv, d]
    *.DenseReluDense.{wi_0,wi_1}.weight   [ff, d]       .../mlp/{wi_0,wi_1}         [L, d, ff]
    *.DenseReluDense.wo.weight            [d, ff]       .../mlp/wo                  [L, ff, d]
    *.layer_norm.weight                   [d]           .../pre_*_norm/scale        [L, d]
    *.final_layer_norm.weight             [d]           .../final_norm/scale        [d]
    lm_head.weight                        [vocab, d]    logits_dense/kernel         [d, vocab]

Per block: encoder ``layer.0`` = self-attention, ``layer.1`` = MLP; decoder ``layer.0`` =
self-attention, ``layer.1`` = cross-attention (``EncDecAttention``), ``layer.2`` = MLP.

Output scaling. T5 v1.1 / T0 checkpoints (``tie_word_embeddings: false``) use an unscaled, separate
``lm_head``: our untied head. Original-T5-style tied heads scale by ``1/sqrt(d_model)``: our tied
head. Configs written by transformers >= 5 always say ``tie_word_embeddings: true`` and record the scaling
in ``scale_decoder_outputs`` instead; their ``lm_head`` is the input embedding unless a separate
``lm_head.weight`` is stored, and the converter reproduces exactly that.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
from typing import Any, Callable, Mapping, Union

import jax
import jax.numpy as jnp
import numpy as np

from harness.storage import checkpoint
from models.config import ModelConfig
from models.transformer import abstract_params

logger = logging.getLogger(__name__)
# The SentencePiece model a Hugging Face T5 checkpoint ships (T5's own for T5 v1.1, T5-LM and T0).
HF_TOKENIZER_FILE = "spiece.model"

PathLike = Union[str, os.PathLike]

SUPPORTED_FEED_FORWARD_PROJ = "gated-gelu"
SUPPORTED_MODEL_TYPES = ("t5", "mt5")

# Weight files, in the order they are looked for (the same preference as transformers).
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFETENSORS_FILE, SAFETENSORS_INDEX, TORCH_FILE, TORCH_INDEX)

# Copies of shared.weight that some checkpoints also store; they must equal it.
_EMBEDDING_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
# Present in some old checkpoints but never used by T5 (transformers ignores it on load too).
_IGNORED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)



class ConversionError(ValueError):
    """A source checkpoint that cannot be converted; the message names the file/field and why."""


# -------------------------------------------------------------------------------------------------
# Config.
# -------------------------------------------------------------------------------------------------

def hf_t5_config_to_model_config(hf_config: Mapping[str, Any], dtype: str = "bfloat16",
                                 param_dtype: str = "float32") -> ModelConfig:
    """The archobj ``"ed"`` config of a Hugging Face T5 ``config.json``.

    Args:
      hf_config: the parsed ``config.json`` of a T5 v1.1 / T5-LM-adapt / T0 checkpoint.
      dtype: compute dtype of the resulting config.
      param_dtype: parameter storage dtype of the resulting config.

    Returns:
      The equivalent ``ModelConfig`` (architecture "ed").

    Raises:
      ConversionError: (a ValueError) for anything but a gated-GELU T5 encoder-decoder, naming the
        field and its value.
    """
    model_type = hf_config.get("model_type")
    if model_type is not None and model_type not in SUPPORTED_MODEL_TYPES:
        raise ConversionError(
            f"model_type={model_type!r}: only T5-family checkpoints {list(SUPPORTED_MODEL_TYPES)} "
            "with the T5 v1.1 layout can be converted")
    if hf_config.get("is_encoder_decoder", True) is not True:
        raise ConversionError(
            f"is_encoder_decoder={hf_config.get('is_encoder_decoder')!r}: only full "
            "encoder-decoder T5 checkpoints can be converted")
    # transformers' default is "relu" (original T5), so an absent field means relu too.
    ff_proj = hf_config.get("feed_forward_proj", "relu")
    if ff_proj != SUPPORTED_FEED_FORWARD_PROJ:
        raise ConversionError(
            f"feed_forward_proj={ff_proj!r}: not supported; the study's model family uses a GEGLU "
            f"MLP ({SUPPORTED_FEED_FORWARD_PROJ!r}, T5 v1.1 / T5-LM-adapt / T0), so original T5 "
            "('relu') and other activations cannot be represented")
    # gated-gelu means the tanh-approximated GELU ("gelu_new"), which is what models/layers.py uses.
    act = hf_config.get("dense_act_fn", "gelu_new")
    if act != "gelu_new":
        raise ConversionError(
            f"dense_act_fn={act!r}: only 'gelu_new' (tanh-approximated GELU) matches the model")

    required = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")
    missing = [name for name in required if hf_config.get(name) is None]
    if missing:
        raise ConversionError(f"config.json lacks required field(s) {missing}")
    num_layers = hf_config["num_layers"]
    num_decoder_layers = hf_config.get("num_decoder_layers")
    if num_decoder_layers is None:  # transformers' default: a symmetric model
        num_decoder_layers = num_layers

    try:
        return ModelConfig(
            architecture="ed",
            vocab_size=hf_config["vocab_size"],
            d_model=hf_config["d_model"],
            num_heads=hf_config["num_heads"],
            head_dim=hf_config["d_kv"],
            d_ff=hf_config["d_ff"],
            num_layers=num_decoder_layers,
            num_encoder_layers=num_layers,
            relpos_num_buckets=hf_config.get("relative_attention_num_buckets", 32),
            relpos_max_distance=hf_config.get("relative_attention_max_distance", 128),
            tie_embeddings=_hf_scales_decoder_outputs(hf_config),
            dropout_rate=float(hf_config.get("dropout_rate", 0.1)),
            dtype=dtype,
            param_dtype=param_dtype,
            layer_norm_epsilon=float(hf_config.get("layer_norm_epsilon", 1e-6)),
        )
    except ValueError as e:  # ModelConfig names the offending field already
        raise ConversionError(f"unsupported T5 config: {e}") from e


def _hf_scales_decoder_outputs(hf_config: Mapping[str, Any]) -> bool:
    """Whether HF multiplies the decoder output by 1/sqrt(d_model) before ``lm_head``.

    That scaling is exactly what distinguishes our tied head (scaled) from the untied one (not), so
    it decides ``tie_embeddings``. transformers >= 5 records it as ``scale_decoder_outputs``; older
    configs imply it by ``tie_word_embeddings`` (default True).
    """
    if "scale_decoder_outputs" in hf_config:
        return bool(hf_config["scale_decoder_outputs"])
    return bool(hf_config.get("tie_word_embeddings", True))


# -------------------------------------------------------------------------------------------------
# Weights.
# -------------------------------------------------------------------------------------------------

def hf_t5_state_dict_to_params(state_dict: Mapping[str, np.ndarray], config: ModelConfig,
                               head_from_embedding: bool = False) -> dict[str, Any]:
    """Maps a HF T5 state dict onto the archobj ``"ed"`` parameter tree (pure numpy).

    Args:
      state_dict: tensor name -> array (``read_hf_state_dict``'s output).
      config: the target config (``hf_t5_config_to_model_config``); the arrays are cast to its
        ``param_dtype``.
      head_from_embedding: for an untied config whose state dict has no ``lm_head.weight``, use
        ``shared.weight`` as the head, as transformers >= 5 does when it loads such a checkpoint.
        Off by default: for an older checkpoint a missing ``lm_head.weight`` is a broken file.

    Returns:
      The parameter tree (numpy arrays), shaped exactly like ``abstract_params(config)``.

    Raises:
      ConversionError: for a non-"ed" config, missing or unexpected tensors (a few names listed),
        tensors of the wrong shape, or embedding copies that disagree with ``shared.weight``.
    """
    if not config.is_encoder_decoder:
        raise ConversionError(
            f"architecture={config.architecture!r}: HF T5 converts to an encoder-decoder ('ed')")
    dtype = np.dtype(jnp.dtype(config.param_dtype))
    h, kv, d, ff = config.num_heads, config.head_dim, config.d_model, config.d_ff
    inner = h * kv
    used: set[str] = set()

    def cast(array: np.ndarray) -> np.ndarray:
        # C order: transposed views would otherwise keep a Fortran layout through astype.
        return np.ascontiguousarray(array, dtype=dtype)

    missing = _missing_names(state_dict, config, head_from_embedding)
    if missing:
        raise ConversionError(
            f"state dict lacks {len(missing)} tensor(s) the config needs: {checkpoint.abbreviate(missing)}")

    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        used.add(name)
        array = np.asarray(state_dict[name])
        if array.shape != shape:
            raise ConversionError(
                f"{name}: shape {array.shape}, expected {shape} from the config")
        return array

    def stacked(names: list[str], shape: tuple[int, ...],
                layout: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        # Cast per layer so that at most one extra full-precision copy of a layer is alive.
        return np.stack([cast(layout(get(n, shape))) for n in names])

    def per_layer(prefix: str, num_layers: int, suffix: str) -> list[str]:
        return [f"{prefix}.block.{i}.layer.{suffix}" for i in range(num_layers)]

    def attention(prefix: str, num_layers: int, module: str) -> dict[str, np.ndarray]:
        def names(p: str) -> list[str]:
            return per_layer(prefix, num_layers, f"{module}.{p}.weight")

        def qkv(w: np.ndarray) -> np.ndarray:
            return w.T.reshape(d, h, kv)  # [h*kv, d] -> [d, h, kv]

        def out(w: np.ndarray) -> np.ndarray:
            return w.T.reshape(h, kv, d)  # [d, h*kv] -> [h, kv, d]

        return {
            "query": stacked(names("q"), (inner, d), qkv),
            "key": stacked(names("k"), (inner, d), qkv),
            "value": stacked(names("v"), (inner, d), qkv),
            "out": stacked(names("o"), (d, inner), out),
        }

    def mlp(prefix: str, num_layers: int, index: int) -> dict[str, np.ndarray]:
        def names(p: str) -> list[str]:
            return per_layer(prefix, num_layers, f"{index}.DenseReluDense.{p}.weight")

        return {
            "wi_0": stacked(names("wi_0"), (ff, d), np.transpose),  # [ff, d] -> [d, ff]
            "wi_1": stacked(names("wi_1"), (ff, d), np.transpose),
            "wo": stacked(names("wo"), (d, ff), np.transpose),  # [d, ff] -> [ff, d]
        }

    def layer_norms(prefix: str, num_layers: int, index: int) -> dict[str, np.ndarray]:
        names = per_layer(prefix, num_layers, f"{index}.layer_norm.weight")
        return {"scale": stacked(names, (d,), np.asarray)}

    def relpos(prefix: str) -> dict[str, np.ndarray]:
        # HF keeps the stack's one table in block 0 as an nn.Embedding [buckets, heads].
        name = f"{prefix}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        return {"rel_embedding": cast(get(name, (config.relpos_num_buckets, h)).T)}

    n_enc, n_dec = config.num_encoder_layers, config.num_layers
    embedding = get("shared.weight", (config.vocab_size, d))
    params: dict[str, Any] = {
        "token_embedder": {"embedding": cast(embedding)},
        "encoder": {
            "relpos_bias": relpos("encoder"),
            "layers": {
                "pre_self_attention_norm": layer_norms("encoder", n_enc, 0),
                "self_attention": attention("encoder", n_enc, "0.SelfAttention"),
                "pre_mlp_norm": layer_norms("encoder", n_enc, 1),
                "mlp": mlp("encoder", n_enc, 1),
            },
            "final_norm": {"scale": cast(get("encoder.final_layer_norm.weight", (d,)))},
        },
        "decoder": {
            "relpos_bias": relpos("decoder"),
            "layers": {
                "pre_self_attention_norm": layer_norms("decoder", n_dec, 0),
                "self_attention": attention("decoder", n_dec, "0.SelfAttention"),
                "pre_cross_attention_norm": layer_norms("decoder", n_dec, 1),
                "cross_attention": attention("decoder", n_dec, "1.EncDecAttention"),
                "pre_mlp_norm": layer_norms("decoder", n_dec, 2),
                "mlp": mlp("decoder", n_dec, 2),
            },
            "final_norm": {"scale": cast(get("decoder.final_layer_norm.weight", (d,)))},
        },
    }

    if "lm_head.weight" in state_dict:
        head = get("lm_head.weight", (config.vocab_size, d))
        if config.tie_embeddings and not np.array_equal(head, embedding):
            # A separate head *and* 1/sqrt(d) scaling: neither of our heads computes that.
            raise ConversionError(
                "lm_head.weight differs from shared.weight but the config scales the decoder "
                "output (tied T5 head); such a checkpoint cannot be represented")
    else:
        head = embedding
    if not config.tie_embeddings:
        params["logits_dense"] = {"kernel": cast(head.T)}

    for name in _EMBEDDING_ALIASES:
        if name in state_dict:
            if not np.array_equal(get(name, (config.vocab_size, d)), embedding):
                raise ConversionError(
                    f"{name} differs from shared.weight; T5 shares one input embedding")
    used.update(name for name in _IGNORED if name in state_dict)

    unexpected = sorted(set(state_dict) - used)
    if unexpected:
        raise ConversionError(
            f"state dict has {len(unexpected)} tensor(s) a gated-GELU T5 with this config does not "
            f"have: {checkpoint.abbreviate(unexpected)}; check num_layers/num_decoder_layers and the model type")

    _check_against_model(params, config)
    return params


def _expected_names(config: ModelConfig) -> list[str]:
    """Tensors a HF T5 checkpoint of ``config`` must hold (``lm_head.weight`` excluded)."""
    names = ["shared.weight", "encoder.final_layer_norm.weight", "decoder.final_layer_norm.weight",
             "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
             "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    attention = ("q", "k", "v", "o")
    mlp = ("wi_0", "wi_1", "wo")
    for i in range(config.num_encoder_layers):
        block = f"encoder.block.{i}.layer"
        names += [f"{block}.0.SelfAttention.{p}.weight" for p in attention]
        names += [f"{block}.0.layer_norm.weight", f"{block}.1.layer_norm.weight"]
        names += [f"{block}.1.DenseReluDense.{p}.weight" for p in mlp]
    for i in range(config.num_layers):
        block = f"decoder.block.{i}.layer"
        names += [f"{block}.0.SelfAttention.{p}.weight" for p in attention]
        names += [f"{block}.1.EncDecAttention.{p}.weight" for p in attention]
        names += [f"{block}.{j}.layer_norm.weight" for j in range(3)]
        names += [f"{block}.2.DenseReluDense.{p}.weight" for p in mlp]
    return names


def _missing_names(state_dict: Mapping[str, Any], config: ModelConfig,
                   head_from_embedding: bool) -> list[str]:
    missing = [n for n in _expected_names(config) if n not in state_dict]
    if not config.tie_embeddings and not head_from_embedding and "lm_head.weight" not in state_dict:
        missing.append("lm_head.weight")
    return missing


def _check_against_model(params: Any, config: ModelConfig) -> None:
    """The converted tree must be exactly the model's (names, shapes, dtypes)."""
    def flat(tree: Any) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return {jax.tree_util.keystr(p): (tuple(x.shape), np.dtype(x.dtype))
                for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
    want, got = flat(abstract_params(config)), flat(params)
    if want != got:
        wrong = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
        # A bug in this module, not in the user's checkpoint: say so.
        raise AssertionError(f"converted tree does not match models.transformer: {checkpoint.abbreviate(wrong)}")


# -------------------------------------------------------------------------------------------------
# Reading Hugging Face directories.
# -------------------------------------------------------------------------------------------------

def read_hf_config(src_dir: PathLike) -> dict[str, Any]:
    """The parsed ``config.json`` of a Hugging Face model directory."""
    src = pathlib.Path(src_dir)
    if not src.is_dir():
        raise ConversionError(f"{src}: not a directory; pass a local Hugging Face model directory")
    path = src / "config.json"
    if not path.is_file():
        raise ConversionError(
            f"{path}: missing; {src} is not a Hugging Face model directory (save one with "
            "save_pretrained)")
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(document, dict):
        raise ConversionError(f"{path}: must hold a JSON object")
    return document


def read_hf_state_dict(src_dir: PathLike) -> dict[str, np.ndarray]:
    """All tensors of a local Hugging Face model directory, as numpy arrays.

    Looks for, in order: ``model.safetensors``, ``model.safetensors.index.json`` (sharded),
    ``pytorch_model.bin``, ``pytorch_model.bin.index.json``. torch is imported only for ``.bin``
    files (and for bfloat16 safetensors if numpy cannot read them). bfloat16 tensors become float32
    when read through torch (exact), ``ml_dtypes.bfloat16`` otherwise.

    Raises:
      ConversionError: if the directory has no ``config.json``, no weight file, a missing shard, or
        an unreadable file.
    """
    src = pathlib.Path(src_dir)
    read_hf_config(src)  # the directory must be a model directory, not just a folder of weights
    for name in WEIGHT_FILES:
        path = src / name
        if not path.is_file():
            continue
        if name == SAFETENSORS_FILE:
            return _read_safetensors(path)
        if name == TORCH_FILE:
            return _read_torch(path)
        reader = _read_safetensors if name == SAFETENSORS_INDEX else _read_torch
        state: dict[str, np.ndarray] = {}
        for shard in _index_shards(path):
            state.update(reader(shard))
        return state
    present = sorted(p.name for p in src.iterdir())
    raise ConversionError(
        f"{src}: no weights found; expected one of {list(WEIGHT_FILES)}, found {checkpoint.abbreviate(present)}")


def _index_shards(index_path: pathlib.Path) -> list[pathlib.Path]:
    try:
        index = json.loads(index_path.read_text())
        files = sorted(set(index["weight_map"].values()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError,
            AttributeError) as e:
        raise ConversionError(
            f"{index_path}: not a valid shard index with a 'weight_map' ({e!r})") from e
    shards = [index_path.parent / f for f in files]
    absent = [str(p.name) for p in shards if not p.is_file()]
    if absent:
        raise ConversionError(f"{index_path}: lists shard(s) that are missing: {checkpoint.abbreviate(absent)}")
    return shards


def _read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    try:
        return dict(load_file(str(path)))
    # safetensors versions without numpy bfloat16 support fail here; torch can always read it.
    except Exception as numpy_error:  # pylint: disable=broad-exception-caught
        try:
            # pylint: disable-next=import-outside-toplevel
            from safetensors.torch import load_file as torch_load_file
            return {k: _torch_to_numpy(v, path, k) for k, v in torch_load_file(str(path)).items()}
        except Exception as e:  # pylint: disable=broad-exception-caught
            raise ConversionError(
                f"{path}: cannot read safetensors file ({numpy_error}; via torch: {e})") from e


def _read_torch(path: pathlib.Path) -> dict[str, np.ndarray]:
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise ConversionError(f"{path}: reading .bin checkpoints needs PyTorch (pip install torch)"
                              ) from e
    try:
        # weights_only: a .bin file is a pickle; never execute arbitrary code from it.
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pylint: disable=broad-exception-caught
        raise ConversionError(f"{path}: cannot read PyTorch checkpoint ({e})") from e
    if not isinstance(state, Mapping):
        raise ConversionError(f"{path}: expected a state dict, found {type(state).__name__}")
    return {k: _torch_to_numpy(v, path, k) for k, v in state.items()}


def _torch_to_numpy(tensor: Any, path: pathlib.Path, name: str) -> np.ndarray:
    import torch  # pylint: disable=import-outside-toplevel
    if not isinstance(tensor, torch.Tensor):
        raise ConversionError(f"{path}: entry {name!r} is a {type(tensor).__name__}, not a tensor")
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()  # numpy has no bfloat16; float32 holds every bfloat16 exactly
    return tensor.numpy()


# -------------------------------------------------------------------------------------------------
# End to end.
# -------------------------------------------------------------------------------------------------

def convert_hf_t5(src_dir: PathLike, dst_dir: PathLike, dtype: str = "bfloat16",
                  param_dtype: str = "float32") -> ModelConfig:
    """Converts a local HF T5 v1.1 / T5-LM-adapt / T0 directory into an archobj model directory.

    The result is step 0 of ``dst_dir`` in ``harness.storage.checkpoint``'s format; ``config.json`` also
    records where it came from (``converted_from``: source path and the HF config).

    Args:
      src_dir: directory with ``config.json`` and the weights (see ``read_hf_state_dict``).
      dst_dir: the model directory to create; must not already hold checkpoints.
      dtype: compute dtype of the converted model's config.
      param_dtype: storage dtype of the converted parameters.

    Returns:
      The converted model's config.

    Raises:
      ConversionError: for an unsupported or broken source.
      checkpoint.CheckpointError: if ``dst_dir`` already holds checkpoints (nothing is overwritten).
    """
    src, dst = pathlib.Path(src_dir), pathlib.Path(dst_dir)
    # Check the destination and the config before reading possibly tens of GB of weights.
    _refuse_existing_checkpoints(dst)
    hf_config = read_hf_config(src)
    config = hf_t5_config_to_model_config(hf_config, dtype=dtype, param_dtype=param_dtype)
    state_dict = read_hf_state_dict(src)
    # transformers >= 5 (which writes scale_decoder_outputs) ties a missing lm_head to `shared`.
    params = hf_t5_state_dict_to_params(
        state_dict, config, head_from_embedding="scale_decoder_outputs" in hf_config)
    del state_dict
    checkpoint.save_model(dst, config, params, step=0)
    _record_source(dst, src, hf_config)
    _copy_tokenizer(src, dst)
    return config


def _copy_tokenizer(src: pathlib.Path, dst: pathlib.Path) -> None:
    """Copies a Hugging Face T5 checkpoint's ``spiece.model`` beside the converted model and
    records it as the model's vocabulary, so ``archobj eval`` needs no ``--vocab``.

    T5 v1.1, T5-LM and T0 ship T5's SentencePiece model (32,000 pieces, pad 0, eos 1), which with
    archobj's 100 sentinels is the study's ``"t5"`` vocabulary. A checkpoint without it, or with a
    model on other ids, records none (evaluation then asks for ``--vocab``).
    """
    from objectives.vocab import vocabulary_ids

    source = src / HF_TOKENIZER_FILE
    if not source.is_file():
        return
    try:
        vocabulary_ids(str(source))
    except ValueError as error:
        logger.warning("%s is not usable as the vocabulary (%s); pass --vocab to evaluate", source,
                       error)
        return
    shutil.copyfile(source, dst / HF_TOKENIZER_FILE)
    checkpoint.update_config(dst, {checkpoint.VOCABULARY_KEY: HF_TOKENIZER_FILE})


def _refuse_existing_checkpoints(dst: pathlib.Path) -> None:
    if dst.exists() and not dst.is_dir():
        raise checkpoint.CheckpointError(f"{dst}: exists and is not a directory; choose another")
    checkpoints = dst / checkpoint.CHECKPOINTS_DIR
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        raise checkpoint.CheckpointError(
            f"{dst}: already holds checkpoints ({checkpoints}); convert into a new directory "
            "(nothing is overwritten)")


def _record_source(dst: pathlib.Path, src: pathlib.Path, hf_config: Mapping[str, Any]) -> None:
    """Adds provenance to ``config.json`` (the harness keeps unknown top-level keys)."""
    checkpoint.update_config(dst, {"converted_from": {
        "format": "huggingface-t5", "path": str(src.resolve()), "hf_config": dict(hf_config)}})
