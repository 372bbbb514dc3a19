"""Tests of the Hugging Face T5 converter (harness/storage/convert.py) against transformers' own T5."""

import copy
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from harness.storage import convert  # noqa: E402
from harness.storage.checkpoint import CheckpointError, load_model  # noqa: E402
from models.layers import relative_position_buckets  # noqa: E402
from models.transformer import Transformer  # noqa: E402

VOCAB, D_MODEL = 128, 32


def _hf_config(tie: bool) -> "transformers.T5Config":
    return transformers.T5Config(
        vocab_size=VOCAB, d_model=D_MODEL, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=3,
        num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=tie, dropout_rate=0.0,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)


def _hf_model(tie: bool, untie_head: bool, seed: int):
    """A random HF T5 with every parameter (norms and position tables included) non-trivial."""
    torch.manual_seed(seed)
    model = transformers.T5ForConditionalGeneration(_hf_config(tie))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layer_norm" in name:
                param.copy_(1.0 + 0.5 * torch.randn_like(param))
            elif "relative_attention_bias" in name:
                param.copy_(torch.randn_like(param))
    if untie_head:
        # transformers 5 ties lm_head to `shared` even with tie_word_embeddings=False: give the head
        # its own weights, so that a converter mixing them up fails.
        model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, D_MODEL))
        assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
    return model.eval()


def _save_bin(model, directory: pathlib.Path, shards: int = 1) -> pathlib.Path:
    """A pytorch_model.bin checkpoint (transformers 5 only writes safetensors)."""
    directory.mkdir(parents=True)
    model.config.to_json_file(str(directory / "config.json"))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}  # includes embed copies
    if shards == 1:
        torch.save(state, directory / "pytorch_model.bin")
        return directory
    names = sorted(state)
    weight_map = {}
    for i in range(shards):
        file = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {n: state[n] for n in names[i::shards]}
        torch.save(part, directory / file)
        weight_map.update({n: file for n in part})
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return directory


def _batch():
    rng = np.random.default_rng(0)
    enc = rng.integers(2, VOCAB, size=(2, 9)).astype(np.int32)
    enc[1, 6:] = 0  # encoder padding in the second row
    targets = rng.integers(2, VOCAB, size=(2, 7)).astype(np.int32)
    targets[0, 5:] = 0  # decoder padding in the first row (compared where valid only)
    dec_in = np.concatenate([np.zeros((2, 1), np.int32), targets[:, :-1]], axis=1)  # shift right
    return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
            "decoder_target_tokens": targets}


def _hf_logits(model, batch) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(batch["encoder_input_tokens"], dtype=torch.long),
                    attention_mask=torch.as_tensor(batch["encoder_input_tokens"] > 0,
                                                   dtype=torch.long),
                    decoder_input_ids=torch.as_tensor(batch["decoder_input_tokens"],
                                                      dtype=torch.long))
    return out.logits.float().numpy()


_APPLY = {}


def _our_logits(config, params, batch) -> np.ndarray:
    config = config.replace(dtype="float32")
    if config not in _APPLY:  # one compilation per config
        model = Transformer(config)
        _APPLY[config] = jax.jit(lambda p, b: model.apply({"params": p}, b))
    return np.asarray(_APPLY[config](params, {k: jnp.asarray(v) for k, v in batch.items()}))


def _assert_logits_match(hf_model, directory, batch):
    config, params = load_model(directory)
    ours = _our_logits(config, params, batch)
    theirs = _hf_logits(hf_model, batch)
    valid = batch["decoder_target_tokens"] > 0
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours[valid], theirs[valid], atol=1e-4, rtol=0)
    return config


@pytest.fixture(scope="module")
def untied(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_untied")
    model = _hf_model(tie=False, untie_head=True, seed=0)
    model.save_pretrained(root / "safetensors")
    model.save_pretrained(root / "sharded", max_shard_size="100KB")
    _save_bin(model, root / "bin")
    _save_bin(model, root / "bin_sharded", shards=3)
    return model, root


@pytest.mark.parametrize("layout", ["safetensors", "sharded", "bin", "bin_sharded"])
def test_untied_logits_match_hf(untied, tmp_path, layout):
    model, root = untied
    src = root / layout
    if layout == "sharded":
        assert (src / "model.safetensors.index.json").is_file()
    config = convert.convert_hf_t5(src, tmp_path / "converted", dtype="bfloat16")
    assert config.architecture == "ed" and not config.tie_embeddings
    assert (config.num_encoder_layers, config.num_layers) == (2, 3)
    assert (config.num_heads, config.head_dim, config.d_ff) == (4, 8, 64)
    assert config.dtype == "bfloat16" and config.param_dtype == "float32"
    _assert_logits_match(model, tmp_path / "converted", _batch())
    document = json.loads((tmp_path / "converted" / "config.json").read_text())
    assert document["converted_from"]["path"] == str(src.resolve())


def test_tied_logits_match_hf(tmp_path):
    model = _hf_model(tie=True, untie_head=False, seed=1)
    model.save_pretrained(tmp_path / "hf")
    config = convert.convert_hf_t5(tmp_path / "hf", tmp_path / "converted")
    assert config.tie_embeddings
    _, params = load_model(tmp_path / "converted")
    assert "logits_dense" not in params
    _assert_logits_match(model, tmp_path / "converted", _batch())


def test_untied_config_with_tied_weights_matches_hf(tmp_path):
    """transformers 5 saves no lm_head.weight for a T5(tie_word_embeddings=False) whose head stayed
    tied; it reloads it as the input embedding, unscaled, and so must the converter."""
    model = _hf_model(tie=False, untie_head=False, seed=2)
    assert model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr()
    model.save_pretrained(tmp_path / "hf")
    config = convert.convert_hf_t5(tmp_path / "hf", tmp_path / "converted")
    assert not config.tie_embeddings
    _assert_logits_match(model, tmp_path / "converted", _batch())


def test_bfloat16_params(untied, tmp_path):
    model, root = untied
    config = convert.convert_hf_t5(root / "safetensors", tmp_path / "c", param_dtype="bfloat16")
    assert config.param_dtype == "bfloat16"
    _, params = load_model(tmp_path / "c")
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
    wo = np.asarray(params["decoder"]["layers"]["mlp"]["wo"][1], np.float32)
    expected = model.decoder.block[1].layer[2].DenseReluDense.wo.weight.detach().numpy().T
    np.testing.assert_array_equal(wo, expected.astype(jnp.bfloat16).astype(np.float32))


def test_bfloat16_safetensors_source(untied, tmp_path):
    model, _ = untied
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(tmp_path / "hf")  # keep the fixture
    state = convert.read_hf_state_dict(tmp_path / "hf")
    q = np.asarray(state["encoder.block.1.layer.0.SelfAttention.q.weight"], np.float32)
    expected = model.encoder.block[1].layer[0].SelfAttention.q.weight.detach()
    np.testing.assert_array_equal(q, expected.to(torch.bfloat16).float().numpy())


def test_layouts_of_one_tensor_each(untied):
    """Spot-checks the transposes/reshapes independently of the forward pass."""
    model, root = untied
    config = convert.hf_t5_config_to_model_config(
        json.loads((root / "safetensors" / "config.json").read_text()))
    params = convert.hf_t5_state_dict_to_params(
        convert.read_hf_state_dict(root / "safetensors"), config)
    q = model.decoder.block[2].layer[1].EncDecAttention.q.weight.detach().numpy()  # [h*kv, d]
    np.testing.assert_array_equal(params["decoder"]["layers"]["cross_attention"]["query"][2],
                                  q.T.reshape(32, 4, 8))
    o = model.encoder.block[1].layer[0].SelfAttention.o.weight.detach().numpy()  # [d, h*kv]
    np.testing.assert_array_equal(params["encoder"]["layers"]["self_attention"]["out"][1],
                                  o.T.reshape(4, 8, 32))
    table = model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight
    np.testing.assert_array_equal(params["encoder"]["relpos_bias"]["rel_embedding"],
                                  table.detach().numpy().T)
    np.testing.assert_array_equal(params["logits_dense"]["kernel"],
                                  model.lm_head.weight.detach().numpy().T)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_position_buckets_match_hf(bidirectional):
    from transformers.models.t5.modeling_t5 import T5Attention
    relative = np.arange(-300, 301)
    theirs = T5Attention._relative_position_bucket(
        torch.as_tensor(relative), bidirectional=bidirectional, num_buckets=32, max_distance=128)
    ours = relative_position_buckets(jnp.asarray(relative, jnp.int32), bidirectional, 32, 128)
    np.testing.assert_array_equal(np.asarray(ours), theirs.numpy())


# -------------------------------------------------------------------------------------------------
# Config mapping and errors.
# -------------------------------------------------------------------------------------------------

def test_config_mapping_of_a_t5_v1_1_config():
    hf = {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"],
          "vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24,
          "num_heads": 64, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False,
          "dropout_rate": 0.1, "layer_norm_epsilon": 1e-6,
          "relative_attention_num_buckets": 32}
    config = convert.hf_t5_config_to_model_config(hf)
    assert config.architecture == "ed"
    assert (config.num_layers, config.num_encoder_layers) == (24, 24)
    assert config.relpos_max_distance == 128 and config.relpos_num_buckets == 32
    assert not config.tie_embeddings and config.dropout_rate == 0.1
    assert config.dtype == "bfloat16" and config.param_dtype == "float32"
    # transformers >= 5 always writes tie_word_embeddings=true; scale_decoder_outputs decides.
    assert not convert.hf_t5_config_to_model_config(
        dict(hf, tie_word_embeddings=True, scale_decoder_outputs=False)).tie_embeddings
    assert convert.hf_t5_config_to_model_config(
        dict(hf, tie_word_embeddings=True)).tie_embeddings


@pytest.mark.parametrize("change,field", [
    ({"feed_forward_proj": "relu"}, "feed_forward_proj='relu'"),
    ({"feed_forward_proj": None}, "feed_forward_proj"),
    ({"model_type": "longt5"}, "model_type='longt5'"),
    ({"num_heads": None}, "num_heads"),
])
def test_config_rejections(untied, change, field):
    hf = json.loads((untied[1] / "safetensors" / "config.json").read_text())
    hf.update(change)
    hf = {k: v for k, v in hf.items() if v is not None}
    with pytest.raises(ValueError, match=field.replace("(", r"\(")):
        convert.hf_t5_config_to_model_config(hf)


def test_relu_checkpoint_is_rejected_before_reading_weights(tmp_path):
    cfg = _hf_config(tie=False)
    cfg.feed_forward_proj = "relu"
    tmp_path.joinpath("hf").mkdir()
    cfg.to_json_file(str(tmp_path / "hf" / "config.json"))
    with pytest.raises(ValueError, match="feed_forward_proj='relu'"):
        convert.convert_hf_t5(tmp_path / "hf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_weights_file(untied, tmp_path):
    src = tmp_path / "hf"
    src.mkdir()
    shutil.copy(untied[1] / "safetensors" / "config.json", src / "config.json")
    with pytest.raises(ValueError, match="no weights found") as info:
        convert.convert_hf_t5(src, tmp_path / "out")
    assert str(src) in str(info.value)
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_missing_config_json(untied, tmp_path):
    src = tmp_path / "hf"
    shutil.copytree(untied[1] / "safetensors", src)
    (src / "config.json").unlink()
    with pytest.raises(ValueError, match="config.json"):
        convert.read_hf_state_dict(src)


def test_missing_shard(untied, tmp_path):
    src = tmp_path / "hf"
    shutil.copytree(untied[1] / "sharded", src)
    shard = sorted(src.glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(ValueError, match=shard.name):
        convert.read_hf_state_dict(src)


def test_unexpected_and_missing_tensors(untied):
    root = untied[1]
    config = convert.hf_t5_config_to_model_config(
        json.loads((root / "safetensors" / "config.json").read_text()))
    state = convert.read_hf_state_dict(root / "safetensors")
    extra = dict(state, **{"decoder.block.3.layer.0.SelfAttention.q.weight": np.zeros((32, 32))})
    with pytest.raises(ValueError, match=r"decoder\.block\.3\.layer\.0\.SelfAttention\.q\.weight"):
        convert.hf_t5_state_dict_to_params(extra, config)
    fewer = {k: v for k, v in state.items() if not k.startswith("encoder.block.1.")}
    with pytest.raises(ValueError, match=r"lacks 9 tensor\(s\).*encoder\.block\.1\."):
        convert.hf_t5_state_dict_to_params(fewer, config)
    no_head = {k: v for k, v in state.items() if k != "lm_head.weight"}
    with pytest.raises(ValueError, match="lm_head.weight"):
        convert.hf_t5_state_dict_to_params(no_head, config)
    wrong = dict(state, **{"encoder.final_layer_norm.weight": np.ones(31, np.float32)})
    with pytest.raises(ValueError, match=r"encoder\.final_layer_norm\.weight: shape \(31,\)"):
        convert.hf_t5_state_dict_to_params(wrong, config)


def test_refuses_destination_with_checkpoints(untied, tmp_path):
    src = untied[1] / "safetensors"
    convert.convert_hf_t5(src, tmp_path / "out")
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "out").rglob("*"))
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        convert.convert_hf_t5(src, tmp_path / "out")
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "out").rglob("*")) == before


def test_cli_converts_and_reports(untied, tmp_path, capsys):
    from harness import cli

    _, root = untied
    assert cli.main(["convert", "hf-t5", str(root / "safetensors"), str(tmp_path / "out"),
                     "--dtype", "float32"]) == 0
    assert "encoder-decoder, 2+3 layers, d_model 32, vocab 128, untied head" in capsys.readouterr().out
    config, _ = load_model(tmp_path / "out")
    assert config.dtype == "float32"
    # Converting again into the same directory is refused in one line, leaving it intact.
    assert cli.main(["convert", "hf-t5", str(root / "safetensors"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("archobj: error: ")
    assert load_model(tmp_path / "out")[0] == config


def test_the_checkpoints_tokenizer_travels_with_the_converted_model(tmp_path):
    """A Hugging Face T5 directory ships ``spiece.model``: the converted model keeps a copy and
    records it, so ``archobj eval`` needs no ``--vocab``."""
    from harness.storage.checkpoint import read_vocabulary
    from objectives.vocab import train_sentencepiece

    _hf_model(tie=True, untie_head=False, seed=0).save_pretrained(tmp_path / "hf")
    convert.convert_hf_t5(tmp_path / "hf", tmp_path / "bare")
    assert read_vocabulary(tmp_path / "bare") is None  # nothing to record: evaluation asks

    text = tmp_path / "text.txt"
    text.write_text("".join(f"the quick brown fox {i % 7} jumps over the lazy dog\n"
                            for i in range(100)))
    train_sentencepiece([text], 40, tmp_path / "hf" / "spiece.model", model_type="bpe")
    convert.convert_hf_t5(tmp_path / "hf", tmp_path / "converted")
    assert read_vocabulary(tmp_path / "converted") == "spiece.model"
    assert ((tmp_path / "converted" / "spiece.model").read_bytes()
            == (tmp_path / "hf" / "spiece.model").read_bytes())
