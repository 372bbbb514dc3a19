"""Bad model configs raise one clear ValueError naming the field, the value and what is allowed."""

from __future__ import annotations

import pytest

from models.config import ARCHITECTURES, PRESETS, ModelConfig, preset

BASE = dict(architecture="cd", vocab_size=128, d_model=32, num_heads=2, d_ff=64, num_layers=2)


@pytest.mark.parametrize("overrides,message", [
    ({"num_heads": 5}, r"num_heads=5: must divide d_model=32"),
    ({"architecture": "gpt"}, r"architecture='gpt': must be one of \['cd', 'nd', 'ed'\]"),
    ({"d_model": -8}, r"d_model=-8: must be a positive integer"),
    ({"num_layers": 0}, r"num_layers=0: must be a positive integer"),
    ({"d_ff": 2.5}, r"d_ff=2.5: must be a positive integer"),
    ({"head_dim": -1}, r"head_dim=-1: must be a positive integer"),
    ({"dtype": "float64"}, r"dtype='float64': must be one of"),
    ({"remat_policy": "some"}, r"remat_policy='some': must be one of \['none', 'full', 'minimal'\]"),
    ({"prefix_position_buckets": "left"}, r"prefix_position_buckets='left'"),
    ({"dropout_rate": 1.5}, r"dropout_rate=1.5: must be in \[0, 1\)"),
    ({"relpos_num_buckets": 31}, r"relpos_num_buckets=31: must be even"),
    ({"num_encoder_layers": 2}, r"num_encoder_layers=2: decoder-only architecture 'cd'"),
    ({"architecture": "ed"}, r"num_encoder_layers=0: the encoder-decoder \('ed'\) needs"),
])
def test_bad_fields_raise_a_clear_value_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{**BASE, **overrides})


def test_explicit_head_dim_allows_heads_that_do_not_divide_d_model():
    # T5 v1.1 small: 6 heads of 64 on d_model 512.
    config = ModelConfig(**{**BASE, "d_model": 512, "num_heads": 6, "head_dim": 64})
    assert config.attention_dim == 384
    assert ModelConfig(**BASE).head_dim == 16  # derived: d_model / num_heads


def test_unknown_key_is_named():
    with pytest.raises(ValueError, match=r"unknown model config key\(s\) \['n_layers'\]"):
        ModelConfig.from_dict({**BASE, "n_layers": 3})


def test_unknown_preset_and_wrong_architecture_for_a_preset():
    with pytest.raises(ValueError, match=r"preset='huge': unknown preset; choose one of"):
        preset("huge")
    with pytest.raises(ValueError, match=r"architecture='ed': preset 'paper-decoder' allows"):
        preset("paper-decoder", "ed")


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_builds_for_every_allowed_architecture(name):
    built = []
    for arch in ARCHITECTURES:
        try:
            config = preset(name, arch)
        except ValueError:
            continue
        built.append(arch)
        assert config == ModelConfig.from_dict(config.to_dict())  # JSON round trip
        if arch == "ed":
            assert config.num_encoder_layers == config.num_layers  # the study's compute matching
    assert built


def test_paper_presets_match_table_1():
    decoder, encdec = preset("paper-decoder"), preset("paper-encdec")
    for config in (decoder, encdec):
        assert (config.d_model, config.num_heads, config.head_dim, config.d_ff, config.vocab_size,
                config.relpos_num_buckets, config.relpos_max_distance, config.tie_embeddings,
                config.dtype, config.param_dtype, config.dropout_rate) == (
            4096, 64, 64, 10240, 32128, 32, 128, True, "bfloat16", "float32", 0.0)
    assert (decoder.num_layers, decoder.num_encoder_layers) == (24, 0)
    assert (encdec.num_layers, encdec.num_encoder_layers) == (24, 24)
