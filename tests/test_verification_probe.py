"""analysis.verification_probe: fresh corpus verification documents, cut before their verdicts,
and the three scores it reads off ranked verdicts (hand-worked arrays)."""

import json

import numpy as np
import pytest

from analysis import verification_probe as vp
from objectives.world import corpus
from objectives.world.facts import make_world


@pytest.fixture(scope="module")
def world():
    return make_world(0, 8, 4)


@pytest.mark.parametrize("kind", vp.KINDS)
def test_claims_end_with_the_question_and_keep_the_documents_verdict(world, kind):
    items = vp.claims(world, kind, 90)
    assert items == vp.claims(world, kind, 90)  # deterministic
    assert {verdict for _, verdict in items} == set(vp.VERDICTS)
    for context, verdict in items:
        assert vp._CUT not in context
        # the context ends with one of the corpus's questions, never with a verdict
        assert not any(context.endswith(" " + said.rstrip("."))
                       for forms in corpus.VERDICTS.values() for said in forms), context


def test_score_by_hand():
    # gold: true, false, unknown, true; log-likelihoods of (true, false, unknown) answers
    loglikelihoods = np.array([[-1.0, -2.0, -3.0],   # predicts true: right
                               [-1.0, -2.0, -0.5],   # predicts unknown: wrong; true vs false: wrong
                               [-3.0, -2.0, -1.0],   # predicts unknown: right
                               [-2.0, -1.0, -3.0]])  # predicts false: wrong; true vs false: wrong
    gold = np.array([0, 1, 2, 0])
    assert vp.score(loglikelihoods, gold) == {"accuracy": 0.5, "true_vs_false": 1 / 3,
                                              "unknown_found": 1.0}


def test_a_run_not_trained_on_a_world_is_refused_in_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"run": {"data": {"source": str(tmp_path / "c4.txt")}}, "model": {}}))
    with pytest.raises(ValueError, match="not a built-in world's corpus"):
        vp.probe(tmp_path)
    with pytest.raises(ValueError, match="no readable config.json"):
        vp.probe(tmp_path / "missing")
