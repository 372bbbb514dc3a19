"""analysis/choice_prior.py: accuracy as T0-Eval scores it beside accuracy with each choice's prior
removed, on hand-worked log-likelihoods."""

from __future__ import annotations

import json

import pytest

from analysis import choice_prior


def _prior_dominated(examples=6, prior=(5.0, 0.0, 0.0), evidence=1.0):
    """Three choices; the gold one gets ``evidence`` nats, choice 0 ``prior[0]`` more always."""
    gold = [i % 3 for i in range(examples)]
    scores = [[prior[j] + (evidence if j == g else 0.0) for j in range(3)] for g in gold]
    return scores, gold


def test_one_answer_for_every_example_scores_the_label_share_and_hides_the_evidence():
    scores, gold = _prior_dominated()
    row = choice_prior.diagnose_prompt(scores, gold)
    assert row["accuracy"] == pytest.approx(1 / 3)      # choice 0 for every example
    assert row["one_answer"] == 1.0
    assert row["prior_removed"] == 1.0                  # the evidence, once the prior is removed


def test_no_evidence_stays_at_chance_with_the_prior_removed():
    scores, gold = _prior_dominated(evidence=0.0)
    row = choice_prior.diagnose_prompt(scores, gold)
    assert row["accuracy"] == pytest.approx(1 / 3) and row["prior_removed"] == pytest.approx(1 / 3)


def test_examples_with_other_numbers_of_choices_are_calibrated_apart():
    scores, gold = _prior_dominated()
    two = [[0.0, 3.0], [3.5, 0.0], [0.0, 3.5], [3.0, 0.0]]  # no prior: every one right
    row = choice_prior.diagnose_prompt(scores + two, gold + [1, 0, 1, 0])
    assert row["accuracy"] == pytest.approx((2 + 4) / 10)
    assert row["prior_removed"] == 1.0 and row["examples"] == 10


def test_a_result_file_gives_prompts_and_medians(tmp_path, capsys):
    scores, gold = _prior_dominated()
    prompt = {"choice_loglikelihoods": scores, "gold": gold}
    results = {"datasets": {"cb": {"random_baseline": 1 / 3,
                                   "prompts": {"a": prompt, "b": prompt, "c": prompt}}}}
    rows = choice_prior.diagnose(results)
    assert [r["prompt"] for r in rows] == ["a", "b", "c", "median"]
    assert rows[-1]["prior_removed"] == 1.0 and rows[-1]["random"] == pytest.approx(1 / 3)
    path = tmp_path / "t0.json"
    path.write_text(json.dumps(results))
    assert choice_prior.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "| cb | median | 33.3 | 100.0 | 100.0 | 33.3 | 6 |" in out


def test_a_result_without_log_likelihoods_says_to_evaluate_again(tmp_path, capsys):
    path = tmp_path / "t0.json"
    path.write_text(json.dumps({"datasets": {"cb": {"prompts": {"a": {"correct": [1]}}}}}))
    assert choice_prior.main([str(path)]) == 2
    assert "evaluate the checkpoint again" in capsys.readouterr().err
