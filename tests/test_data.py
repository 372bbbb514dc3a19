"""The pretraining batch stream: deterministic given a seed, exactly resumable at a step, split
across hosts; and ``archobj data preview`` for the study's six (architecture, objective) pairs on a
local text file."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from harness import cli
from harness.train.data import DataSpec, pretraining_batches

WORDS = ("the model reads a long document about language and learns to predict words while the "
         "encoder sees every token of its input and the decoder writes the answer").split()
LENGTH = 64  # tokens per sequence seen; small so that TF pipelines stay fast on 2 cores


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A local text file: one document per line, 120 documents of 20-80 words (seeded)."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    lines = [" ".join(rng.choice(WORDS, size=rng.integers(20, 80))) for _ in range(120)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _spec(corpus, arch="nd", objective="mlm", seed=0):
    return DataSpec(architecture=arch, objective=objective, source=corpus, vocabulary="byte",
                    total_length=LENGTH, seed=seed)


def _take(iterator, n):
    return [dict(batch) for batch in itertools.islice(iterator, n)]


def _assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("arch,objective", [("nd", "mlm"), ("ed", "plm")])
def test_same_seed_same_batches_and_exact_resume(corpus, arch, objective):
    spec = _spec(corpus, arch, objective)
    uninterrupted = _take(pretraining_batches(spec, 4), 6)
    _assert_same(uninterrupted, _take(pretraining_batches(spec, 4), 6))
    # A restart at step 3 sees batches 3, 4, 5 of the uninterrupted run: no repeats, no skips.
    _assert_same(uninterrupted[3:], _take(pretraining_batches(spec, 4, start_step=3), 3))
    other_seed = _take(pretraining_batches(_spec(corpus, arch, objective, seed=1), 4), 1)[0]
    assert not np.array_equal(other_seed["decoder_target_tokens"],
                              uninterrupted[0]["decoder_target_tokens"])


def test_hosts_get_their_share_of_each_global_batch(corpus):
    spec = _spec(corpus, "cd", "flm")
    host_batches = [_take(pretraining_batches(spec, 8, host_index=i, num_hosts=2), 2)
                    for i in range(2)]
    for batches in host_batches:
        assert all(b["decoder_target_tokens"].shape == (4, LENGTH) for b in batches)
    # Hosts read disjoint shards of the source, so their rows differ.
    assert not np.array_equal(host_batches[0][0]["decoder_target_tokens"],
                              host_batches[1][0]["decoder_target_tokens"])
    with pytest.raises(ValueError, match="global_batch_size=7: must divide evenly"):
        pretraining_batches(spec, 7, num_hosts=2)


@pytest.mark.parametrize("arch,objective", cli.STUDY_PAIRS)
def test_preview_prints_every_study_pair(corpus, capsys, arch, objective):
    argv = ["data", "preview", "--arch", arch, "--objective", objective, "--source", corpus,
            "--vocab", "byte", "--length", str(LENGTH), "--num-examples", "1", "--json"]
    assert cli.main(argv) == 0
    example = json.loads(capsys.readouterr().out)["examples"][0]
    features = example["features"]
    assert "decoder_target_tokens" in features and example["segments"]
    assert (arch == "ed") == ("encoder_input_tokens" in features)
    decoded = " ".join(s["targets"] + " " + s.get("context", "") + " " + s.get("encoder", "")
                       for s in example["segments"])
    assert set(decoded.split()) & set(WORDS)  # real text, decoded back
    if (arch, objective) == ("nd", "plm"):
        assert example["segments"][0]["context"]  # the bidirectional prefix carries no loss
    # The human-readable form prints too.
    assert cli.main(argv[:-1]) == 0
    assert "targets :" in capsys.readouterr().out


def test_incompatible_pair_is_one_clear_line(corpus, capsys):
    argv = ["data", "preview", "--arch", "ed", "--objective", "flm", "--source", corpus,
            "--vocab", "byte"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("archobj: error: ") and "flm" in err and "\n" not in err


def test_missing_source_is_one_clear_line(tmp_path, capsys):
    missing = tmp_path / "nope.txt"
    argv = ["data", "preview", "--arch", "cd", "--objective", "flm", "--source", str(missing),
            "--vocab", "byte"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert str(missing) in err and "\n" not in err
