"""The ``archobj`` command: lazy imports, exact model counts, FLOP formulas, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness import cli
from models import config as model_config
from models.config import preset
from models.flops import decoder_only_flops, encoder_decoder_flops


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         check=True, capture_output=True, text=True).stdout
    return set(out.split())


def test_help_imports_neither_jax_nor_tensorflow():
    modules = _modules_after("from harness import cli\ntry:\n    cli.main(['--help'])\n"
                             "except SystemExit:\n    pass")
    assert not {"jax", "tensorflow", "seqio", "torch"} & modules


def test_importing_models_imports_neither_tensorflow_nor_seqio():
    modules = _modules_after("import models, models.decoding, models.flops, models.losses")
    assert "jax" in modules
    assert not {"tensorflow", "seqio", "t5", "torch"} & modules


def test_cli_choices_match_the_model_package():
    assert cli.ARCHITECTURES == tuple(model_config.ARCHITECTURES)
    assert cli.PRESETS == model_config.PRESETS
    assert cli.ATTENTION_IMPLS == model_config.ATTENTION_IMPLS


@pytest.mark.parametrize("name,count,short", [("paper-decoder", 4762357760, "4.76B"),
                                              ("paper-encdec", 11003736064, "11.00B"),
                                              ("mini", 1197696, "1.20M")])
def test_model_info_prints_the_exact_paper_counts(capsys, name, count, short):
    assert cli.main(["model", "info", name]) == 0
    assert f"parameters             {count}  ({short})" in capsys.readouterr().out
    assert cli.main(["model", "info", name, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"] == count


def test_bad_input_is_one_line_on_stderr(capsys):
    assert cli.main(["model", "info", "paper-decoder", "--arch", "ed"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("archobj: error: architecture='ed': preset 'paper-decoder' allows "
                   "['cd', 'nd']")


def test_flops_follow_perf_md_by_hand():
    # Decoder: 6 N per token (N includes the head) + attention 3 * 4 * L * d_attn * pairs / S.
    cfg = preset("paper-decoder")
    n = 24 * (4 * 4096 * 4096 + 3 * 4096 * 10240) + 4096 * 32128
    flops = decoder_only_flops(cfg, 626)
    assert flops.matmul == 3 * 2 * 626 * n
    assert flops.attention == 3 * 4 * 24 * 4096 * 626 ** 2 / 2
    assert flops.attention_full == 2 * flops.attention
    # A prefix of P counts P^2 + (S^2 - P^2) / 2 pairs.
    prefix = decoder_only_flops(cfg, 626, 313)
    assert prefix.attention == 3 * 4 * 24 * 4096 * (313 ** 2 + (626 ** 2 - 313 ** 2) / 2)
    # Encoder-decoder: about the decoder's compute per token seen, with ~2x the parameters.
    ed = encoder_decoder_flops(preset("paper-encdec"), 512, 114)
    assert ed.tokens == 626
    assert 1.0 < ed.per_token / flops.per_token < 1.25


def test_step_benchmark_reports_consistent_figures():
    from harness.bench.train_bench import run_benchmark

    config = preset("tiny", "nd", dtype="float32")
    result = run_benchmark(config, 8, length=16, steps=2, repeats=2, warmup=1,
                           peak_sizes=(256, 512))  # the figures' consistency, not the peak
    assert len(result.step_seconds) == 2 and min(result.step_seconds) > 0
    assert result.tokens_per_step == 8 * 16
    assert result.flops.total == decoder_only_flops(config, 16, prefix_length=8).total
    assert result.peak_flops > 0 and result.compile_seconds > 0  # CPU peak measured in-process
    text = result.format()
    assert "median step" in text and "MFU" in text
