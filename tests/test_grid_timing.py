"""Where a grid's time goes and how much is left (harness/grid/timing.py): the estimate learns
the throughput of the stages already run, and the ledger counts JAX's compiles inside a phase."""

from __future__ import annotations

import time

import pytest

from harness.grid import timing


def test_the_estimate_learns_the_training_throughput():
    estimator = timing.Estimator(flops_per_second=1e9, stage_overhead=5.0, eval_seconds=20.0)
    # Before anything ran: the prior.
    assert estimator.seconds("train", flops=1e10) == pytest.approx(15.0)
    assert estimator.seconds("eval", suite="t0") == 20.0
    # Stages that took 2 s + 1 s per 1e9 FLOPs: the fit recovers both.
    for flops in (1e9, 4e9, 9e9):
        estimator.observe("train", 2.0 + flops / 1e9, flops=flops)
    assert estimator.seconds("train", flops=20e9) == pytest.approx(22.0)
    estimator.observe("eval", 8.0, suite="t0")
    estimator.observe("eval", 12.0, suite="t0")
    estimator.observe("eval", 3.0, suite="eai")
    assert estimator.seconds("eval", suite="t0") == pytest.approx(10.0)
    assert estimator.remaining({"a": ("train", 20e9, None), "b": ("eval", 0.0, "eai"),
                                "c": ("eval", 0.0, "t0")}) == pytest.approx(35.0)


def test_stages_of_nearly_equal_flops_do_not_blow_up_the_estimate():
    estimator = timing.Estimator(flops_per_second=1e9)
    estimator.observe("train", 7.0, flops=4e9)
    assert estimator.seconds("train", flops=8e9) == pytest.approx(14.0)   # 7 s per 4e9 FLOPs
    # Two pretrainings a few percent apart in FLOPs and 30% apart in time (noise): a free line
    # through them would predict hours for the next one; the estimate stays near their rate.
    estimator.observe("train", 9.5, flops=4.2e9)
    assert 10.0 < estimator.seconds("train", flops=6e9) < 15.0


def test_the_ledger_counts_compiles_inside_their_phase():
    import jax
    import jax.numpy as jnp

    ledger = timing.Ledger()
    ledger.listen_to_compiles()
    try:
        with ledger.phase("training"):
            jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)(jnp.arange(7.0)).block_until_ready()
            time.sleep(0.01)
        with ledger.phase("evaluation"):
            time.sleep(0.01)
    finally:
        ledger.stop_listening()
    assert ledger.compile_seconds["training"] > 0
    assert ledger.compile_seconds["training"] <= ledger.seconds["training"]
    assert "evaluation" not in ledger.compile_seconds
    table = ledger.breakdown(total=ledger.seconds["training"] + ledger.seconds["evaluation"] + 5)
    assert table.splitlines()[1].startswith("training") and "other" in table
    assert timing.format_seconds(3725) == "1:02:05" and timing.format_seconds(75) == "1:15"


def test_the_breakdown_keeps_its_columns_for_long_phase_names():
    ledger = timing.Ledger()
    for name, seconds in (("training", 100.0), ("training", 20.0),
                          ("input pipelines (closing)", 3.0), ("input pipelines (closing)", 1.0)):
        ledger.add(name, seconds)
    lines = ledger.breakdown(total=130.0).splitlines()
    assert [line.split()[0] for line in lines] == ["where", "training", "input", "other", "total"]
    assert "input pipelines (closing) (2) " in lines[2]  # the label, then at least one space
    # The wall column ends at the same place on every line.
    ends = {line.index(wall) + len(wall) for line, wall in zip(
        lines, ("wall", "2:00", "0:04", "0:06", "2:10"))}
    assert len(ends) == 1, lines


def test_compilation_cache_stays_off_on_a_multi_device_cpu(tmp_path):
    """The suite runs on 8 CPU devices, where an executable with collectives read back from the
    persistent cache can deadlock (``enable_compilation_cache``): the grid leaves JAX's setting
    alone there and writes nothing to the directory it was given."""
    import jax

    assert jax.default_backend() == "cpu" and jax.device_count() > 1
    before = jax.config.jax_compilation_cache_dir
    assert timing.enable_compilation_cache(tmp_path / "cache") is None
    assert jax.config.jax_compilation_cache_dir == before
    assert not (tmp_path / "cache").exists()
