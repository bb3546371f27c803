"""Pass@k against exact rational arithmetic and hand-computed cases; `pick` finds a metric whatever its n."""

from fractions import Fraction
from math import comb

import pytest

from evals.metrics import pass_at_k, pick, task_metrics


def exact_pass_at_k(n, c, k):
    return 1 - Fraction(comb(n - c, k), comb(n, k))


@pytest.mark.parametrize("n,c,k,expected",
                         [(5, 2, 2, 0.7), (2, 1, 1, 0.5), (4, 0, 4, 0.0), (4, 4, 1, 1.0), (16, 1, 16, 1.0)])
def test_hand_computed(n, c, k, expected):
    # (5, 2, 2): 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_matches_the_closed_form_for_every_case_up_to_n_32():
    for n in range(1, 33):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(float(exact_pass_at_k(n, c, k)), abs=1e-12)


def test_pass_at_1_is_avg_and_large_n_does_not_overflow():
    scores = [[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]]
    m = task_metrics(scores)
    assert m["avg_at_4"] == pytest.approx(m["pass_at_1"]) == pytest.approx(6 / 12)
    assert m["pass_at_4"] == pytest.approx(2 / 3)
    assert 0 < pass_at_k(2000, 3, 1000) < 1


def test_bad_counts_are_rejected():
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        task_metrics([[1, 0], [1]])


def test_pick_finds_avg_at_n_and_the_largest_pass_at_k():
    metrics = {"avg_at_16": 0.3, "pass_at_1": 0.3, "pass_at_2": 0.4, "pass_at_16": 0.7, "pass_at_4": 0.5}
    assert pick(metrics, "avg_at_n") == "avg_at_16" and pick(metrics, "pass_at_n") == "pass_at_16"
    assert pick(metrics, "pass_at_1") == "pass_at_1" and pick(metrics, "pass_at_8") is None


def test_pick_keeps_the_strict_and_the_flexible_metric_apart():
    metrics = {"avg_at_16": 0.3, "avg_at_16_flexible": 0.4, "pass_at_2_flexible": 0.5, "pass_at_16_flexible": 0.6}
    assert pick(metrics, "avg_at_n") == "avg_at_16" and pick(metrics, "avg_at_n_flexible") == "avg_at_16_flexible"
    assert pick(metrics, "pass_at_n_flexible") == "pass_at_16_flexible" and pick(metrics, "pass_at_n") is None
    assert pick({"avg_at_16": 0.3}, "avg_at_n_flexible") is None
