"""`archobj bench`: the record (results.json / results.md), its verdicts and the CLI's arguments.

The benchmarks' own machinery is tested beside each (test_cli.py: the train step benchmark;
test_eval_reference.py: the eval benchmark); here, what the suite adds: one record that keeps every
benchmark's latest entry, and a Markdown table that puts each figure beside its target.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from harness.bench import data_bench, suite
from harness.cli import build_parser

MACHINE = {"cpu": "test CPU", "cpu_count": 2, "memory_gib": 1.0, "platform": "cpu",
           "device_kind": "cpu", "versions": {"jax": "0"}, "commit": "abc"}


@dataclasses.dataclass
class Fake:
    figures: dict
    text: str = "printed"

    def as_dict(self):
        return self.figures

    def format(self):
        return self.text


def _train_row(preset, arch, tokens_per_second, mfu):
    return {"label": f"{preset} {arch} (bfloat16)", "preset": preset, "architecture": arch,
            "batch_size": 4, "tokens_per_step": 2504, "median_step_seconds": 1.0,
            "tokens_per_second": tokens_per_second, "model_flops_per_second": 1e10,
            "model_flops_per_step": 1e10, "xla_flops_per_step": 1.05e10,
            "mfu": mfu, "mfu_full_matrix": mfu, "peak_flops": 2e10}


def _record(tmp_path, name, figures, text="printed"):
    return suite.record(tmp_path, name, Fake(figures, text), command=f"archobj bench {name}",
                        started="2026-01-01T00:00:00+00:00", seconds=1.0, machine=MACHINE)


def test_record_keeps_other_benchmarks_and_replaces_its_own(tmp_path):
    _record(tmp_path, "eval", {"ratio": 2.0, "hf_requests_per_second": 10.0,
                               "archobj_requests_per_second": 20.0, "num_requests": 8,
                               "parameters": 1e6, "roofline_requests_per_second": 100.0,
                               "roofline_fraction": 0.2})
    _record(tmp_path, "train", {"rows": [_train_row("small", "cd", 1000.0, 0.55)]}, "first")
    _record(tmp_path, "train", {"rows": [_train_row("small", "cd", 900.0, 0.40)]}, "second")
    record = json.loads((tmp_path / suite.RESULTS_JSON).read_text())
    assert list(record["benchmarks"]) == ["train", "eval"]  # the suite's order, not arrival's
    assert record["benchmarks"]["train"]["text"] == "second"
    assert record["benchmarks"]["train"]["result"]["rows"][0]["tokens_per_second"] == 900.0
    assert record["benchmarks"]["eval"]["machine"]["cpu"] == "test CPU"
    assert not list(tmp_path.glob("*.partial"))


def test_markdown_puts_each_figure_beside_its_target(tmp_path):
    rows = [_train_row("small", "cd", 1000.0, 0.55), _train_row("small", "nd", 950.0, 0.45),
            _train_row("small", "ed", 800.0, 0.30)]
    _record(tmp_path, "train", {"rows": rows})
    _record(tmp_path, "eval", {"ratio": 3.2, "hf_requests_per_second": 10.0,
                               "archobj_requests_per_second": 32.0, "num_requests": 8,
                               "parameters": 1e6, "roofline_requests_per_second": 100.0,
                               "roofline_fraction": 0.32})
    text = (tmp_path / suite.RESULTS_MD).read_text()
    cd, nd, ed = (next(line for line in text.splitlines() if line.startswith(f"| small {a} "))
                  for a in ("cd", "nd", "ed"))
    assert "CPU-MFU >= 50%: met" in cd
    assert "CPU-MFU >= 50%: **not met**" in nd
    assert "ED/CD tokens/s 0.80 (>= 0.85): **not met**" in ed
    assert "archobj / hf: **3.20x**" in text and "target >= 3x: met" in text
    assert "GPU, ~1B decoder in bf16 (target MFU >= 45%): not measured" in text


def test_gpu_rows_from_separate_runs_merge_into_one_table_with_the_gpu_target(tmp_path):
    """bench/gpu.sh runs each row in its own process and out dir; ``merge_train`` makes one record
    of them. A GPU decoder row is judged against the GPU target, ED is paired with the CD row of
    its own batch size, and a row run under other XLA flags says so in its label."""
    def gpu_row(arch, batch, tokens_per_second, mfu):
        return {**_train_row("xl", arch, tokens_per_second, mfu), "platform": "gpu",
                "batch_size": batch, "peak_flops": 989e12,
                "label": f"xl {arch} (bfloat16, cudnn attention)"}

    runs = [("cd16", gpu_row("cd", 16, 100.0, 0.30), None),
            ("cd32", gpu_row("cd", 32, 200.0, 0.46), None),
            ("ed32", gpu_row("ed", 32, 180.0, 0.40), None),
            ("cd16-flags", gpu_row("cd", 16, 90.0, 0.28), "--xla_gpu_enable_triton_gemm=false")]
    for name, row, flags in runs:
        machine = {**MACHINE, "platform": "gpu", "flags": {"XLA_FLAGS": flags} if flags else {}}
        suite.record(tmp_path / name, "train", Fake({"rows": [row]}, name),
                     command=f"archobj bench train {name}", started="2026-01-01T00:00:00+00:00",
                     seconds=10.0, machine=machine)
    suite.merge_train(tmp_path / "all", [tmp_path / name for name, _, _ in runs],
                      command="bash bench/gpu.sh", commit="c0ffee")
    record = json.loads((tmp_path / "all" / suite.RESULTS_JSON).read_text())["benchmarks"]["train"]
    assert [row["command"] for row in record["result"]["rows"]] == [
        f"archobj bench train {name}" for name, _, _ in runs]
    assert record["seconds"] == 40.0 and record["machine"]["commit"] == "c0ffee"
    lines = (tmp_path / "all" / suite.RESULTS_MD).read_text().splitlines()
    table = [line for line in lines if line.startswith("| xl ")]
    assert "GPU MFU >= 45%: **not met**" in table[0] and "GPU MFU >= 45%: met" in table[1]
    assert "ED/CD tokens/s 0.90" in table[2]  # against batch 32's CD (200), not batch 16's
    assert "XLA_FLAGS=--xla_gpu_enable_triton_gemm=false)" in table[3]
    assert not any(line.startswith("GPU, ~1B decoder") for line in lines)


def test_a_corrupt_record_is_an_error_not_overwritten(tmp_path):
    (tmp_path / suite.RESULTS_JSON).write_text("{not json")
    with pytest.raises(ValueError, match="not JSON.*move it aside"):
        _record(tmp_path, "eval", {})
    assert (tmp_path / suite.RESULTS_JSON).read_text() == "{not json"


def test_data_row_headroom_is_pipeline_rate_over_step_rate():
    row = data_bench.DataRow(shape="tiny", pair="cd:flm", batch_size=16,
                             features={"decoder_target_tokens": [16, 128]}, startup_seconds=1.0,
                             pipeline_seconds=[0.01, 0.03], real_tokens=3000, padded_tokens=4096,
                             step_seconds=[0.5, 0.4, 0.6])
    assert row.pipeline_examples_per_second == pytest.approx(32 / 0.04)
    assert row.step_examples_per_second == pytest.approx(16 / 0.5)
    assert row.headroom == pytest.approx(800 / 32)
    assert row.padding_fraction == pytest.approx(1 - 3000 / 4096)
    assert row.as_dict()["headroom"] == pytest.approx(25.0)


@pytest.mark.parametrize("argv, command, out, quick", [
    (["bench"], None, "bench", False),
    (["bench", "--quick", "--out", "X"], None, "X", True),
    (["bench", "--out", "X", "train"], "train", "X", False),   # before WHAT: kept
    (["bench", "data", "--out", "Y", "--quick"], "data", "Y", True),
])
def test_bench_arguments_before_or_after_what(argv, command, out, quick):
    args = build_parser().parse_args(argv)
    assert (args.bench_command, args.out, args.quick) == (command, out, quick)


def test_tiny_and_resume_tables_judge_their_targets(tmp_path):
    case = {"case": "cd", "batch_size": 16, "tokens_per_step": 2048, "harness_tokens_per_s": 5000.0,
            "reference_tokens_per_s": 4000.0, "ratio": 1.25, "harness_mfu": 0.3}
    slow = dict(case, case="ed", ratio=0.9)
    _record(tmp_path, "tiny", {"cases": [case, slow]})
    rows = [{"step": k, "state_seconds": seconds, "replay_seconds": 10.0 + k,
             "state_position": 0.1, "replay_position": k / 10, "state_bytes": 2000}
            for k, seconds in ((800, 11.0), (0, 10.0))]
    _record(tmp_path, "resume", {"rows": rows})
    text = (tmp_path / suite.RESULTS_MD).read_text()
    assert "| cd | 16 x 128 | 5,000 | 4,000 | 1.25 | 30.0% | >= 1.0: met |" in text
    assert "| ed | 16 x 128 | 5,000 | 4,000 | 0.90 | 30.0% | >= 1.0: **not met** |" in text
    # Sorted by k whatever the order measured; growth is the largest k's time over k = 0's.
    assert text.index("| 0 | 10.0 s") < text.index("| 800 | 11.0 s")
    assert "k = 800 over k = 0: 1.10 with the saved state (target <= 1.25: met), 81.00 by replay" \
        in text
