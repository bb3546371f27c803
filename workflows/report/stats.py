"""The report's statistics: pure functions of numbers, no files and no models.

A cell of the report (a model on a task) rests on a matrix of per-problem scores, one row per seed
(a run of the method) and one column per problem: a problem's score is its Avg@n (share of its n
samples that are correct) or its unbiased Pass@k (evals/metrics.py). The cell's value is the mean
of that matrix.

Uncertainty is a 95% percentile bootstrap: each resample draws the seeds (rows) and the problems
(columns) with replacement, independently, and takes the mean; the interval is the 2.5th and
97.5th percentile of `RESAMPLES` such means, drawn from a generator seeded with `SEED`, so the
report gives the same interval every time. With one seed only the problems vary.

Two methods are compared paired: each resample draws ONE set of problems and scores both methods
on it (their seeds are drawn independently: seed s of one method and of another are different
training runs). The difference is called a difference only when that interval excludes 0.

Honest at the edges. A percentile bootstrap cannot see variance its sample does not show: a cell
whose samples are all wrong would get [0, 0], as if 0% were certain (0 right of 6 is compatible
with a rate up to 45.9%). So a cell's interval is never narrower than the exact (Clopper-Pearson)
binomial interval of its pooled tries (`cell_interval`), and a difference's standard error is never
below the Agresti-Caffo one of its two pooled proportions (`detectable`). Each difference carries
its minimum detectable difference: the smallest true difference its test would find with 95%
confidence and 80% power, (z_0.975 + z_0.8) x its standard error, so a null reads "none of X
points or more detected", not just "no significant difference".
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np

from evals.metrics import pass_at_k

RESAMPLES = 2000
SEED = 0
LEVEL = 0.95
DETECTABLE_Z = 1.959963984540054 + 0.8416212335729143
"""z of a two-sided 95% test plus z of 80% power: a minimum detectable difference is this many
standard errors."""


@dataclass(frozen=True)
class Interval:
    """A statistic and its bootstrap interval [lo, hi]."""

    estimate: float
    lo: float
    hi: float
    detectable: float | None = None
    """A difference's minimum detectable difference (95% confidence, 80% power); None for a level."""

    @property
    def significant(self) -> bool:
        """True when the interval excludes 0 (a difference is only called one then)."""
        return self.lo > 0 or self.hi < 0


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """The mean and the sample standard deviation (None for a single value: no spread claimed)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def problem_scores(samples: list[float], metric: str) -> float:
    """One problem's score from its samples' scores (0/1): `avg` (share correct) or `pass_at_<k>`
    (unbiased Pass@k; `pass_at_n` is k = number of samples)."""
    n, c = len(samples), int(round(sum(samples)))
    if metric == "avg":
        return c / n
    k = n if metric == "pass_at_n" else int(metric.removeprefix("pass_at_"))
    return pass_at_k(n, c, k)


def pass_at_k_curve(per_seed: list[dict[str, list[float]]]) -> tuple[list[int], list[float]]:
    """k = 1..n and the mean unbiased Pass@k over the problems every seed has, and over the seeds:
    how much the model solves when k tries may be kept, the headroom RL can turn into Pass@1."""
    problems = shared_problems(per_seed)
    n = min(len(seed[p]) for seed in per_seed for p in problems) if problems else 0
    ks = list(range(1, n + 1))
    return ks, [float(score_matrix(per_seed, f"pass_at_{k}", problems).mean()) for k in ks]


def score_matrix(per_seed: list[dict[str, list[float]]], metric: str, problems: list[str] | None = None) -> np.ndarray:
    """[seeds, problems] float64 matrix of per-problem scores; `problems` (default: those every seed
    has, sorted) fixes the columns, so two methods' matrices line up problem by problem."""
    if problems is None:
        problems = shared_problems(per_seed)
    return np.array([[problem_scores(seed[p], metric) for p in problems] for seed in per_seed], dtype=np.float64)


def shared_problems(*groups: list[dict[str, list[float]]]) -> list[str]:
    """The problem ids present in every seed of every group, sorted."""
    sets = [set(seed) for group in groups for seed in group]
    return sorted(set.intersection(*sets)) if sets else []


def _weights(rng: np.random.Generator, size: int, resamples: int) -> np.ndarray:
    """[resamples, size] counts: how often each of `size` items is drawn in a resample of size `size`."""
    return rng.multinomial(size, np.full(size, 1.0 / size), size=resamples)


def _resampled_means(x: np.ndarray, seed_w: np.ndarray, problem_w: np.ndarray) -> np.ndarray:
    """The mean of x over the drawn seeds and drawn problems, for each resample."""
    s, p = x.shape
    return np.einsum("bs,sp,bp->b", seed_w, x, problem_w) / (s * p)


def _interval(estimate: float, draws: np.ndarray) -> Interval:
    lo, hi = np.quantile(draws, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return Interval(float(estimate), float(lo), float(hi))


def bootstrap_mean(strata: list[np.ndarray], resamples: int = RESAMPLES, seed: int = SEED) -> Interval:
    """The mean over strata of each [seeds, problems] matrix's mean, and its percentile interval.
    One stratum is one task; several (a domain's tasks) are resampled each within itself."""
    rng = np.random.default_rng(seed)
    draws = np.zeros(resamples)
    for x in strata:
        draws += _resampled_means(x, _weights(rng, x.shape[0], resamples), _weights(rng, x.shape[1], resamples))
    return _interval(np.mean([x.mean() for x in strata]), draws / len(strata))


def change_interval(before: np.ndarray, after: np.ndarray,
                    counts: tuple[tuple[int, int], tuple[int, int]] | None = None) -> Interval:
    """after - before for matrices whose rows are the same seeds (an RL model against the SFT model
    it started from) and columns the same problems: the bootstrap of the per-seed, per-problem
    change, with its detectable difference (`counts`: after's and before's pooled tries)."""
    i = bootstrap_mean([after - before])
    return Interval(i.estimate, i.lo, i.hi, detectable(bootstrap_resamples(after - before), *(counts or (None, None))))


def bootstrap_resamples(x: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """The bootstrap distribution itself (the resampled means of one matrix), for checks."""
    rng = np.random.default_rng(seed)
    return _resampled_means(x, _weights(rng, x.shape[0], resamples), _weights(rng, x.shape[1], resamples))


def paired_difference(a: np.ndarray, b: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED,
                      counts: tuple[tuple[int, int], tuple[int, int]] | None = None) -> Interval:
    """mean(a) - mean(b) for two [seeds, problems] matrices with the same problem columns, and its
    paired percentile interval: the same problems drawn for both, the seeds of each drawn apart.
    `counts`: each arm's pooled (successes, tries), for the detectable difference's floor."""
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired comparison needs the same problems: {a.shape[1]} vs {b.shape[1]} columns")
    rng = np.random.default_rng(seed)
    problem_w = _weights(rng, a.shape[1], resamples)
    draws = (_resampled_means(a, _weights(rng, a.shape[0], resamples), problem_w)
             - _resampled_means(b, _weights(rng, b.shape[0], resamples), problem_w))
    i = _interval(a.mean() - b.mean(), draws)
    return Interval(i.estimate, i.lo, i.hi, detectable(draws, *(counts or (None, None))))


def exact_binomial(successes: int, tries: int, level: float = LEVEL) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a binomial rate: with 0 of n the upper end is
    1 - ((1 - level) / 2) ** (1 / n).

    >>> [round(x, 4) for x in exact_binomial(0, 6)]
    [0.0, 0.4593]
    """
    from scipy.stats import beta

    tail = (1 - level) / 2
    lo = 0.0 if successes == 0 else float(beta.ppf(tail, successes, tries - successes + 1))
    hi = 1.0 if successes == tries else float(beta.ppf(1 - tail, successes + 1, tries - successes))
    return lo, hi


def pooled_counts(per_seed: list[dict[str, list[float]]], metric: str, problems: list[str]) -> tuple[int, int] | None:
    """(successes, tries) behind a cell: every sample for `avg` and `pass_at_1`, every problem (solved
    in its n samples or not) for `pass_at_n`; None for other metrics (no binomial count)."""
    if metric in ("avg", "pass_at_1"):
        scores = [x for seed in per_seed for p in problems for x in seed[p]]
        return int(round(sum(scores))), len(scores)
    if metric == "pass_at_n":
        solved = [max(seed[p]) > 0 for seed in per_seed for p in problems]
        return sum(solved), len(solved)
    return None


def cell_interval(per_seed: list[dict[str, list[float]]], metric: str, problems: list[str] | None = None) -> Interval:
    """A cell's mean and its bootstrap interval, widened where needed to the exact binomial interval
    of its pooled tries (which the percentile bootstrap cannot go below honestly)."""
    problems = shared_problems(per_seed) if problems is None else problems
    boot = bootstrap_mean([score_matrix(per_seed, metric, problems)])
    counts = pooled_counts(per_seed, metric, problems)
    if counts is None:
        return boot
    lo, hi = exact_binomial(*counts)
    return Interval(boot.estimate, min(boot.lo, lo), max(boot.hi, hi))


def detectable(draws: np.ndarray, a: tuple[int, int] | None = None, b: tuple[int, int] | None = None) -> float:
    """Minimum detectable difference: DETECTABLE_Z x the difference's standard error, the larger of
    the bootstrap draws' spread and, given both arms' pooled (successes, tries), the Agresti-Caffo
    standard error of a difference of proportions (one success and one failure added to each arm),
    which stays above 0 when every sample agrees."""
    se = float(np.std(draws, ddof=1)) if len(draws) > 1 else 0.0
    if a is not None and b is not None:
        pa, pb = (a[0] + 1) / (a[1] + 2), (b[0] + 1) / (b[1] + 2)
        se = max(se, (pa * (1 - pa) / (a[1] + 2) + pb * (1 - pb) / (b[1] + 2)) ** 0.5)
    return DETECTABLE_Z * se


def curve(histories: list[dict[int, float]]) -> tuple[list[int], list[float], list[float | None], list[int]]:
    """Mean and sample std over runs of a logged curve, step by step: (steps, means, stds, runs
    per step). A step only some runs logged is averaged over those (its count says how many)."""
    steps = sorted({s for h in histories for s in h})
    means, stds, counts = [], [], []
    for step in steps:
        values = [h[step] for h in histories if step in h]
        mean, std = mean_std(values)
        means.append(mean)
        stds.append(std)
        counts.append(len(values))
    return steps, means, stds, counts
