"""The report's statistics against hand computations: the bootstrap distribution enumerated
exactly, the normal closed form for Bernoulli scores, paired tests that must and must not find a
difference, per-problem Pass@k, and the mean ± std of logged curves."""

import itertools
import math
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest


def exact_bootstrap(x: list[list[int]]) -> dict[Fraction, Fraction]:
    """Every equally likely (seed draw, problem draw) of a two-level bootstrap, enumerated: the
    exact distribution of the resampled mean, in fractions."""
    s, p = len(x), len(x[0])
    dist: Counter = Counter()
    for seeds in itertools.product(range(s), repeat=s):
        for problems in itertools.product(range(p), repeat=p):
            dist[Fraction(sum(x[i][j] for i in seeds for j in problems), s * p)] += 1
    total = s**s * p**p
    return {v: Fraction(c, total) for v, c in dist.items()}


def exact_quantile(dist: dict[Fraction, Fraction], q: float) -> float:
    cdf = Fraction(0)
    for value in sorted(dist):
        cdf += dist[value]
        if cdf >= q:
            return float(value)
    raise AssertionError("unreachable")


@pytest.mark.parametrize("x", [[[0, 0, 1]], [[0, 1], [1, 1]], [[0, 1, 1], [0, 0, 1]]])
def test_the_bootstrap_distribution_is_the_enumerated_one(x):
    from workflows.report.stats import bootstrap_mean, bootstrap_resamples

    dist = exact_bootstrap(x)
    draws = bootstrap_resamples(np.array(x, dtype=float), resamples=40_000, seed=1)
    seen = Counter(Fraction(v).limit_denominator(64) for v in draws)
    for value, prob in dist.items():
        assert seen[value] / len(draws) == pytest.approx(float(prob), abs=0.01), value
    assert set(seen) <= set(dist)
    interval = bootstrap_mean([np.array(x, dtype=float)], resamples=40_000, seed=1)
    assert interval.estimate == pytest.approx(np.mean(x))
    assert (interval.lo, interval.hi) == (exact_quantile(dist, 0.025), exact_quantile(dist, 0.975))


def test_bernoulli_interval_matches_the_normal_closed_form():
    """400 problems, 120 right: the bootstrap mean's sd is sqrt(p(1-p)/P), the 95% interval
    p ± 1.96 sd = [0.2551, 0.3449]; 2,000 resamples land within a few thousandths."""
    from workflows.report.stats import RESAMPLES, bootstrap_mean

    x = np.array([[1.0] * 120 + [0.0] * 280])
    sd = math.sqrt(0.3 * 0.7 / 400)
    interval = bootstrap_mean([x])
    assert RESAMPLES == 2000
    assert interval.estimate == pytest.approx(0.3)
    assert interval.lo == pytest.approx(0.3 - 1.959964 * sd, abs=0.006)
    assert interval.hi == pytest.approx(0.3 + 1.959964 * sd, abs=0.006)
    assert bootstrap_mean([x]) == interval  # fixed generator seed: the same interval every time


def test_paired_difference_is_called_only_when_its_interval_excludes_zero():
    from workflows.report.stats import paired_difference

    rng = np.random.default_rng(7)
    b = (rng.random(40) < 0.5).astype(float)
    wins = np.flatnonzero(b == 0)[:8]
    a = b.copy()
    a[wins] = 1.0  # A solves 8 more of the 40 problems, and everything B solves
    better = paired_difference(a[None], b[None])
    assert better.estimate == pytest.approx(8 / 40) and better.significant and better.lo > 0

    one = b.copy()
    one[wins[0]] = 1.0  # one problem in 40: P(a resample misses it) = (39/40)^40 = 0.36 > 0.025
    assert not paired_difference(one[None], b[None]).significant
    assert paired_difference(one[None], b[None]).lo == 0.0

    swap = b.copy()
    swap[wins[0]] = 1.0
    swap[np.flatnonzero(b == 1)[0]] = 0.0  # one won, one lost
    tie = paired_difference(swap[None], b[None])
    assert tie.estimate == 0.0 and tie.lo < 0 < tie.hi and not tie.significant


def test_pairing_removes_the_spread_of_problem_difficulty():
    """Both methods solve the same 20 easy problems and miss the same 20 hard ones; A also solves 6
    more. Resampling the two apart would mix problem difficulty into the difference; paired, every
    resample's difference is >= 0 and the interval excludes 0."""
    from workflows.report.stats import paired_difference

    b = np.array([1.0] * 20 + [0.0] * 26)
    a = np.array([1.0] * 20 + [0.0] * 20 + [1.0] * 6)
    interval = paired_difference(a[None], b[None])
    assert interval.estimate == pytest.approx(6 / 46) and interval.significant


def test_seeds_of_two_methods_are_drawn_apart_but_on_the_same_problems():
    from workflows.report.stats import paired_difference

    a = np.array([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    b = np.array([[0.0, 0.0, 1.0]])
    interval = paired_difference(a, b, resamples=4000)
    assert interval.estimate == pytest.approx(5 / 6 - 1 / 3)
    with pytest.raises(ValueError, match="same problems"):
        paired_difference(a, b[:, :2])


def test_problem_scores_are_avg_and_unbiased_pass_at_k():
    from workflows.report.stats import problem_scores, score_matrix

    samples = [1.0, 0.0, 0.0, 1.0]  # n = 4, c = 2
    assert problem_scores(samples, "avg") == 0.5
    assert problem_scores(samples, "pass_at_1") == pytest.approx(0.5)
    assert problem_scores(samples, "pass_at_2") == pytest.approx(1 - math.comb(2, 2) / math.comb(4, 2))  # 5/6
    assert problem_scores(samples, "pass_at_n") == 1.0
    seeds = [{"p1": [1.0, 1.0], "p2": [0.0, 0.0], "p3": [1.0, 0.0]}, {"p1": [0.0, 0.0], "p2": [0.0, 1.0]}]
    m = score_matrix(seeds, "avg")  # columns: the problems both seeds have, sorted
    assert m.tolist() == [[1.0, 0.0], [0.0, 0.5]]


def test_curves_are_mean_and_sample_std_over_runs_step_by_step():
    from workflows.report.stats import curve

    steps, means, stds, counts = curve([{1: 0.2, 2: 0.4}, {1: 0.6, 2: 0.8, 3: 1.0}])
    assert steps == [1, 2, 3] and counts == [2, 2, 1]
    assert means == pytest.approx([0.4, 0.6, 1.0])
    assert stds[:2] == pytest.approx([math.sqrt(0.08), math.sqrt(0.08)]) and stds[2] is None


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed term by term in float64."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


@pytest.mark.parametrize("successes,tries", [(0, 6), (6, 6), (1, 30), (17, 40), (0, 200)])
def test_the_exact_binomial_interval_is_where_the_tails_hold_2_5_percent(successes, tries):
    from workflows.report.stats import exact_binomial

    lo, hi = exact_binomial(successes, tries)
    if successes < tries:  # the upper end: P(X <= successes) = 2.5% there
        assert binomial_cdf(successes, tries, hi) == pytest.approx(0.025, abs=1e-9)
    else:
        assert hi == 1.0
    if successes > 0:  # the lower end: P(X >= successes) = 2.5% there
        assert 1 - binomial_cdf(successes - 1, tries, lo) == pytest.approx(0.025, abs=1e-9)
    else:
        assert lo == 0.0
    if successes == 0:
        assert hi == pytest.approx(1 - 0.025 ** (1 / tries))  # 0 of 6: 45.9%, the figure


def test_a_cell_whose_samples_all_agree_gets_the_exact_interval_not_zero_width():
    from workflows.report.stats import cell_interval

    wrong = [{"p0": [0.0, 0.0], "p1": [0.0, 0.0], "p2": [0.0, 0.0]}]  # GSM8K 0 of 3 problems x 2 samples
    cell = cell_interval(wrong, "avg")
    assert (cell.estimate, cell.lo) == (0.0, 0.0) and cell.hi == pytest.approx(1 - 0.025 ** (1 / 6))
    right = cell_interval([{"p0": [1.0, 1.0], "p1": [1.0, 1.0]}], "pass_at_n")  # 2 problems solved of 2
    assert right.hi == 1.0 and right.lo == pytest.approx(0.025 ** (1 / 2))
    mixed = [{f"p{i}": [float(i % 2), float(i % 3 == 0)] for i in range(40)}]
    assert cell_interval(mixed, "avg").hi - cell_interval(mixed, "avg").lo > 0.15  # a wide sample keeps its width


def test_the_detectable_difference_is_2_8_standard_errors_and_never_zero():
    from workflows.report.stats import DETECTABLE_Z, detectable, paired_difference

    assert DETECTABLE_Z == pytest.approx(1.959964 + 0.841621, abs=1e-6)  # normal quantiles 0.975 and 0.8
    draws = np.array([0.1, -0.1, 0.3, -0.3])
    assert detectable(draws) == pytest.approx(DETECTABLE_Z * np.std(draws, ddof=1))
    # all 0 in both arms, 6 tries each: the Agresti-Caffo floor, (1/8 * 7/8 / 8 * 2) ** 0.5 standard error
    zeros = np.zeros((1, 3))
    none_found = paired_difference(zeros, zeros, counts=((0, 6), (0, 6)))
    assert (none_found.lo, none_found.hi) == (0.0, 0.0)
    assert none_found.detectable == pytest.approx(DETECTABLE_Z * math.sqrt(2 * (1 / 8) * (7 / 8) / 8))
    # Bernoulli scores, 200 problems: the bootstrap standard error of a paired difference is about
    # sqrt(var(d) / n); the detectable difference follows it
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 2, (1, 200)).astype(float), rng.integers(0, 2, (1, 200)).astype(float)
    d = (a - b)[0]
    expected = DETECTABLE_Z * d.std(ddof=0) / math.sqrt(200)
    assert paired_difference(a, b).detectable == pytest.approx(expected, rel=0.1)
