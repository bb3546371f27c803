"""`prift plan CONFIG [--accuracy P] [--from SWEEP]`: what a sweep could detect, before it runs.

For every evaluation task of the config it prints the problems, samples and seeds a comparison
rests on, and the minimum detectable difference (MDE) of a method-vs-method comparison on Avg@n at
95% confidence and 80% power, the figure `prift report` prints beside each comparison afterwards:

    MDE = (z_0.975 + z_0.8) x sqrt(2 p (1 - p) / (P n S))

for P problems x n samples x S seeds per arm and an assumed accuracy p (default 0.5, the worst
case). That is the binomial error of two arms of independent tries: it leaves out the seed-to-seed
noise of training, which only a sweep can show, and the pairing over problems, which can only
shrink it. With `--from SWEEP` (an earlier sweep with the same tasks) each task's MDE is the one its
report comparisons measured, scaled by sqrt(tries there / tries here), and the generation time is
estimated from the tokens per second its eval stage measured. Nothing is loaded but task data.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from common.errors import InputError
from workflows.report.stats import DETECTABLE_Z


@dataclass(frozen=True)
class TaskPlan:
    task: str
    problems: int
    samples: int
    seeds: int
    detectable: float
    """Minimum detectable difference of two methods' Avg@n (a fraction)."""
    source: str
    """'assumed accuracy 0.50' or 'measured in <sweep>'."""
    tokens: int
    """At most, over every model the sweep evaluates on this task (max_new_tokens per sample)."""
    seconds: float | None = None
    """Generation worker-seconds at an earlier sweep's measured rate (None without one)."""


def binomial_detectable(accuracy: float, tries: int) -> float:
    """MDE of two arms of `tries` independent tries at `accuracy` each.

    >>> round(binomial_detectable(0.5, 100), 4)  # 2.8016 * sqrt(2 * 0.25 / 100)
    0.1981
    """
    return DETECTABLE_Z * math.sqrt(2 * accuracy * (1 - accuracy) / tries)


def plan(cfg, accuracy: float = 0.5, earlier: Path | None = None) -> list[TaskPlan]:
    """One TaskPlan per evaluation task of `cfg` (a RunConfig)."""
    from evals.tasks import load_examples

    if not 0 < accuracy < 1:
        raise InputError(f"--accuracy: expected a rate strictly between 0 and 1, got {accuracy}")
    seeds, n = len(cfg.pipeline.seeds), cfg.eval.sampling.n
    trained = [m for m in cfg.pipeline.eval_models if m != "base"]  # per run; the base once per sweep
    models = ("base" in cfg.pipeline.eval_models) + len(cfg.pipeline.methods) * seeds * len(trained)
    measured = _measured(earlier) if earlier else {}
    out = []
    for spec in cfg.eval.tasks:
        problems = len(load_examples(spec))
        tries = problems * n * seeds
        tokens = models * problems * n * cfg.eval.sampling.max_new_tokens
        if spec.name in measured:
            mde, tries_there, completion_tokens, rate = measured[spec.name]
            detectable, source = mde * math.sqrt(tries_there / tries), f"measured in {earlier.name}"
            seconds = models * problems * n * completion_tokens / rate
        else:
            detectable, source, seconds = binomial_detectable(accuracy, tries), f"assumed accuracy {accuracy:.2f}", None
        out.append(TaskPlan(spec.name, problems, n, seeds, detectable, source, tokens, seconds))
    return out


def _measured(sweep: Path) -> dict[str, tuple[float, int, float, float]]:
    """Per task of an earlier sweep: (median MDE of its comparisons, tries per arm, mean completion
    tokens, generation tokens per second), from its samples and metrics."""
    from workflows.report.collect import base_samples, collect
    from workflows.report.tables import comparisons, groups, sample_sizes

    runs, base = collect(sweep)
    rows = groups(runs, base, base_samples(sweep))
    sizes = sample_sizes(rows)
    found = comparisons(rows)
    seeds = max((len(g.seeds) for g in rows), default=1)
    rates: dict[str, list[tuple[float, float]]] = {}
    for metrics in sweep.glob("*/eval/*/*/metrics.json"):
        m = json.loads(metrics.read_text())
        if "tokens_per_s" in m and "mean_completion_tokens" in m:
            rates.setdefault(metrics.parent.name, []).append((m["mean_completion_tokens"], m["tokens_per_s"]))
    out = {}
    for task in {c.task for c in found} & set(rates):
        problems, n = sizes[task]
        mde = statistics.median(c.interval.detectable for c in found if c.task == task)
        tokens, rate = (statistics.fmean(x) for x in zip(*rates[task]))
        out[task] = (mde, problems * n * seeds, tokens, rate)
    return out


def render(plans: list[TaskPlan]) -> str:
    lines = ["| task | problems | samples | seeds | detectable difference, Avg@n (80% power) | from | "
             "tokens at most | generation |", "|---" * 8 + "|"]
    for p in plans:
        time = f"~{p.seconds / 60:.0f} worker-min" if p.seconds is not None else "(give --from SWEEP)"
        lines.append(f"| {p.task} | {p.problems} | {p.samples} | {p.seeds} | ±{100 * p.detectable:.1f} points | "
                     f"{p.source} | {p.tokens:,} | {time} |")
    return "\n".join(lines) + (
        "\n\nA comparison of two methods on a task finds a true difference of this size 80% of the time "
        "(95% confidence); to halve it, quadruple problems x samples x seeds.")
