"""Avg@k and the unbiased Pass@k estimator (Chen et al. 2021, "Evaluating Large Language Models
Trained on Code", eq. 1).

With n samples per problem of which c are correct:
    Avg@n  = c / n                          (mean accuracy over samples; the paper's Avg@16)
    Pass@k = 1 - C(n - c, k) / C(n, k)      (probability that at least one of k samples, drawn
                                             without replacement from the n, is correct)
Both are averaged over problems. Pass@k is computed as a product so it never overflows.
"""

from __future__ import annotations

import re

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """>>> pass_at_k(2, 1, 1)
    0.5
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def ks_for(n: int) -> list[int]:
    """The k reported for n samples: powers of two up to n, and n itself."""
    return sorted({k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= n} | {n})


def task_metrics(scores: list[list[float]], variant: str = "") -> dict[str, float]:
    """scores[problem][sample] in {0, 1} -> avg_at_n and pass_at_k for each reported k, and the
    counts. A `variant` ("flexible") suffixes the rates, `avg_at_n_flexible`, and leaves the counts
    out: the rates of another scoring of the same samples, to merge beside the primary ones."""
    if not scores:
        raise ValueError("no problems to score")
    n = len(scores[0])
    if any(len(s) != n for s in scores):
        raise ValueError("every problem needs the same number of samples")
    correct = [int(sum(s)) for s in scores]
    suffix = f"_{variant}" if variant else ""
    metrics = {f"avg_at_{n}{suffix}": float(np.mean([c / n for c in correct]))}
    for k in ks_for(n):
        metrics[f"pass_at_{k}{suffix}"] = float(np.mean([pass_at_k(n, c, k) for c in correct]))
    if not variant:
        metrics["num_problems"] = len(scores)
        metrics["num_samples"] = n
    return metrics


def pick(metrics: dict, metric: str) -> str | None:
    """The key of `metric` in a task's metrics: `avg_at_n` (Avg@n, whatever n), `pass_at_n` (the
    largest k computed: Pass@n), either with a variant suffix (`avg_at_n_flexible`: math's flexible
    extraction), or an exact name such as `pass_at_1`. `avg_at_n` never picks a variant."""
    m = re.fullmatch(r"(avg_at_|pass_at_)n(_[a-z]+)?", metric)
    if m:
        prefix, suffix = m.group(1), m.group(2) or ""
        ks = [re.fullmatch(rf"{prefix}(\d+){suffix}", k) for k in metrics]
        return max((k.group(0) for k in ks if k), key=lambda k: int(re.search(r"\d+", k).group()), default=None)
    return metric if metric in metrics else None
