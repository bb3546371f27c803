"""The report's text: markdown tables (seed means, bootstrap intervals, SFT -> RL changes, drift,
run status) and the findings paragraph, built from the collected runs and the statistics.

A row of a table is a `Group`: the base model, or one method's models of one stage over its seeds.
RL models of runs that had no learning signal (rl/learning_signal.py) are a group of their own,
labelled so, and never averaged with the RL results of the same method.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from evals.metrics import pick
from evals.tasks import TASKS
from workflows.report.collect import STAGES, Run
from workflows.report.stats import (RESAMPLES, SEED, Interval, bootstrap_mean, cell_interval, change_interval,
                                    curve, mean_std, paired_difference, pooled_counts, score_matrix, shared_problems)
from workflows.rundir import run_label

BASELINE = "sft"
"""The method every other one is compared with (plain SFT, the paper's baseline)."""

NO_SIGNAL = "rl: no learning signal"

SCORING_NOTE = ("Math is scored as the Qwen2.5-Math harness scores it (the paper's protocol). Every table "
                "but one counts stated final answers only (`\\boxed{}`, \"the answer is\", `####`): the "
                "primary, strict metric. The flexible table also takes the last number of a completion "
                "that states none, except in completions cut by the length limit.")

HELDOUT_NOTE = ("The unweighted NLL per response token of held-out SFT demonstrations (the config's `heldout`), "
                "each token weighted 1 whatever the method. Plain SFT overfits where it rises while the training "
                "loss falls; after SFT it predicted post-RL accuracy better than post-SFT accuracy did in "
                "arXiv 2510.01624. Lower is better.")
BOOTSTRAP_NOTE = (f"Intervals are 95% percentile bootstrap intervals over problems and seeds ({RESAMPLES:,} "
                  f"resamples, generator seed {SEED}): each resample draws the problems and the seeds with "
                  "replacement. A difference between two methods is paired (the same problems drawn for both) "
                  "and is called a difference only when its interval excludes 0.")


@dataclass
class Group:
    """One row: a model stage of one method over its seeds (or the base model)."""

    label: str
    method: str
    stage: str
    seeds: list[int | None]
    summaries: list[dict]
    samples: list[dict] = field(default_factory=list)  # per seed: {task: {score key: {problem: [scores]}}}
    flagged: bool = False


def groups(runs: list[Run], base: dict | None, base_samples: dict | None = None) -> list[Group]:
    """Rows in report order: base, then per method (sorted) its SFT models, its RL models, and its
    RL models without a learning signal."""
    out = [Group("base", "base", "base", [None], [base], [base_samples or {}])] if base else []
    for method in sorted({r.method for r in runs}):
        for stage in STAGES:
            have = [r for r in runs if r.method == method and stage in r.evals]
            parts = [(False, have)] if stage == "sft" else [(False, [r for r in have if not r.rl_without_signal]),
                                                            (True, [r for r in have if r.rl_without_signal])]
            for flagged, members in parts:
                if members:
                    label = f"{method} ({NO_SIGNAL if flagged else run_label(stage, None)})"
                    out.append(Group(label, method, stage, [r.seed for r in members],
                                     [r.evals[stage] for r in members], [r.samples(stage) for r in members], flagged))
    return out


def method_table(runs: list[Run], base: dict | None, section: str = "tasks") -> dict[str, dict[str, dict]]:
    """{row label: {task or domain: {metric: (mean, std or None, seeds)}}}, rows as `groups`; the
    mean and std are over the seeds."""
    rows: dict[str, dict[str, dict]] = {}
    for g in groups(runs, base):
        summaries = [s[section] for s in g.summaries]
        cells = {}
        for col in summaries[0]:
            metrics = [s[col] for s in summaries if col in s]
            keys = set.intersection(*(set(m) for m in metrics))
            cells[col] = {k: (*mean_std([m[k] for m in metrics]), len(metrics)) for k in sorted(keys)}
        rows[g.label] = cells
    return rows


def _cell(value: tuple | None) -> str:
    if value is None:
        return "-"
    mean, std, _ = value
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def markdown_table(rows: dict[str, dict[str, dict]], metric: str) -> str:
    """Rows x columns of one metric (see `pick`), in %, mean ± std over seeds."""
    columns = sorted({c for cells in rows.values() for c in cells})
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label, cells in rows.items():
        values = []
        for c in columns:
            metrics = cells.get(c, {})
            key = pick(metrics, metric)
            values.append(_cell(metrics[key]) if key else "-")
        lines.append(f"| {label} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def rests_on(summaries: list[dict]) -> str:
    """'Rests on: gsm8k 3 problems × 2 samples, ...' from eval summaries (their num_problems and
    num_samples), one entry per task."""
    sizes = {}
    for s in summaries:
        for task, m in s.get("tasks", {}).items():
            if "num_problems" in m and "num_samples" in m:
                sizes.setdefault(task, (m["num_problems"], m["num_samples"]))
    return "Rests on: " + (", ".join(f"{t} {p} problems × {n} samples" for t, (p, n) in sorted(sizes.items()))
                           or "no problem counts recorded") + " per model and seed; seeds per row in the tables below."


def _ci(i: Interval | None, signed: bool = False) -> str:
    """'12.5 [5.0, 20.0]' in %; a change `signed`: '+12.5 [+5.0, +20.0]'."""
    if i is None:
        return "-"
    fmt = "+.1f" if signed else ".1f"
    return f"{100 * i.estimate:{fmt}} [{100 * i.lo:{fmt}}, {100 * i.hi:{fmt}}]"


METRICS = (("Avg@{n}", "score", "avg"), ("Pass@{n}", "score", "pass_at_n"),
           ("Avg@{n} flexible", "score_flexible", "avg"))
"""The per-task interval columns: header, sample score key, per-problem metric. No Pass@1: its
unbiased estimate, c/n per problem, is Avg@n itself; Pass@n only where n > 1 (Pass@1 again)."""


def task_samples(g: Group, task: str, key: str = "score") -> list[dict[str, list[float]]] | None:
    """Per seed of the group, {problem: [sample scores]} of one task (None unless every seed has it)."""
    per_seed = [s.get(task, {}).get(key) for s in g.samples]
    return per_seed if per_seed and all(per_seed) else None


def task_interval_tables(rows: list[Group]) -> list[str]:
    """Per task: each row's Avg@n, Pass@n (and math's flexible Avg@n) with its interval,
    under a heading that states the problems x samples it rests on."""
    tasks = sorted({t for g in rows for s in g.samples for t in s})
    out = []
    for task in tasks:
        present = [(g, task_samples(g, task)) for g in rows]
        present = [(g, per_seed) for g, per_seed in present if per_seed]
        problems = shared_problems(*(p for _, p in present))
        if not problems:
            continue
        n = len(present[0][1][0][problems[0]])
        columns = [(h.format(n=n), key, metric) for h, key, metric in METRICS
                   if all(task_samples(g, task, key) for g, _ in present) and (metric != "pass_at_n" or n > 1)]
        out += ["", f"### {task}: {len(problems)} problems × {n} samples per model and seed", "",
                "| model | seeds | " + " | ".join(h for h, _, _ in columns) + " |", "|---" * (len(columns) + 2) + "|"]
        for g, _ in present:
            cells = [_ci(cell_interval(task_samples(g, task, key), metric, problems)) for _, key, metric in columns]
            out.append(f"| {g.label} | {len(g.seeds)} | " + " | ".join(cells) + " |")
    return out


def domain_interval_table(rows: list[Group]) -> list[str]:
    """Avg@n per domain (the mean of its tasks' Avg@n) with an interval that resamples each task's
    problems (and the seeds) within the task."""
    tasks = sorted({t for g in rows for s in g.samples for t in s if t in TASKS})
    domains = sorted({TASKS[t].domain for t in tasks})
    if not domains:
        return []
    lines = ["| model | seeds | " + " | ".join(domains) + " |", "|---" * (len(domains) + 2) + "|"]
    for g in rows:
        cells = []
        for d in domains:
            strata = [score_matrix(per_seed, "avg") for t in tasks if TASKS[t].domain == d
                      for per_seed in [task_samples(g, t)] if per_seed]
            cells.append(_ci(bootstrap_mean(strata)) if strata else "-")
        lines.append(f"| {g.label} | {len(g.seeds)} | " + " | ".join(cells) + " |")
    sizes = ", ".join(f"{d}: " + ", ".join(t for t in tasks if TASKS[t].domain == d) for d in domains)
    return lines + ["",
                    f"Each domain's cell is the mean of its tasks' Avg@n ({sizes}); sizes as in the per-task tables."]


@dataclass
class Comparison:
    """A paired test of two methods' models of one stage on one task (Avg@n)."""

    stage: str
    task: str
    a: str
    b: str
    problems: int
    interval: Interval


def comparisons(rows: list[Group]) -> list[Comparison]:
    """Every method against `BASELINE` (every pair when the sweep has no baseline), and each prior
    twin against its rule's online form (prift.weights.twin: does the prior improve the rule?), per
    stage and task, on Avg@n; RL rows without a learning signal take no part."""
    from prift.weights import METHODS, twin

    out = []
    for stage in STAGES:
        by_method = {g.method: g for g in rows if g.stage == stage and not g.flagged}
        methods = sorted(by_method)
        pairs = ([(m, BASELINE) for m in methods if m != BASELINE] if BASELINE in by_method
                 else [(a, b) for i, a in enumerate(methods) for b in methods[i + 1:]])
        twins = [(m, twin(m)) for m in methods
                 if m in METHODS and METHODS[m].signal == "prior" and twin(m) in by_method]
        pairs += [p for p in twins if p not in pairs and p[::-1] not in pairs]
        for a, b in pairs:
            tasks = sorted(set(by_method[a].samples[0]) & set(by_method[b].samples[0]))
            for task in tasks:
                sa, sb = task_samples(by_method[a], task), task_samples(by_method[b], task)
                problems = shared_problems(sa, sb) if sa and sb else []
                if problems:
                    counts = (pooled_counts(sa, "avg", problems), pooled_counts(sb, "avg", problems))
                    diff = paired_difference(score_matrix(sa, "avg", problems), score_matrix(sb, "avg", problems),
                                             counts=counts)
                    out.append(Comparison(stage, task, a, b, len(problems), diff))
    return out


def comparison_table(found: list[Comparison]) -> str:
    """The paired method comparisons (`comparisons`): A − B in Avg@n points, its 95% interval, the
    smallest difference the test could detect, a verdict."""
    lines = ["| models | task | problems | A − B, Avg@n (points) | 95% interval | detectable (80% power) | verdict |",
             "|---" * 7 + "|"]
    for c in found:
        i = c.interval
        verdict = "difference" if i.significant else f"none of {_points(i.detectable)} or more detected"
        lines.append(f"| {c.a} − {c.b} ({c.stage}) | {c.task} | {c.problems} | {100 * i.estimate:+.1f} | "
                     f"[{100 * i.lo:+.1f}, {100 * i.hi:+.1f}] | ±{100 * i.detectable:.1f} | {verdict} |")
    return "\n".join(lines)


@dataclass
class RLChange:
    """One method's SFT -> RL change on one task over its seeds (or one flagged run's)."""

    method: str
    task: str
    seeds: list[int]
    flagged: bool
    sft: dict[str, Interval]
    rl: dict[str, Interval]
    delta: dict[str, Interval]


def rl_changes(runs: list[Run]) -> list[RLChange]:
    """Per method and task: Avg@n and Pass@n of the SFT and the RL models of the same seeds, and the
    change with its interval (seeds paired: each RL model against the SFT model it started from).
    Runs without a learning signal are each a change of their own, flagged, never averaged in."""
    out = []
    for method in sorted({r.method for r in runs}):
        both = [r for r in runs if r.method == method and {"sft", "rl"} <= set(r.evals)]
        sets = [(False,
                 [r for r in both if not r.rl_without_signal])] + [(True, [r]) for r in both if r.rl_without_signal]
        for flagged, members in sets:
            if not members:
                continue
            per_stage = {s: [r.samples(s) for r in members] for s in STAGES}
            tasks = sorted(set.intersection(*(set(x) for s in STAGES for x in per_stage[s])))
            for task in tasks:
                sft = [x[task].get("score") for x in per_stage["sft"]]
                rl = [x[task].get("score") for x in per_stage["rl"]]
                problems = shared_problems(sft, rl) if all(sft) and all(rl) else []
                if not problems:
                    continue
                change = RLChange(method, task, [r.seed for r in members], flagged, {}, {}, {})
                for metric in ("avg", "pass_at_n"):
                    a, b = score_matrix(sft, metric, problems), score_matrix(rl, metric, problems)
                    change.sft[metric], change.rl[metric] = cell_interval(sft, metric, problems), cell_interval(
                        rl, metric, problems)
                    counts = (pooled_counts(rl, metric, problems), pooled_counts(sft, metric, problems))
                    change.delta[metric] = change_interval(a, b, counts)
                out.append(change)
    return out


def rl_change_tables(changes: list[RLChange], samples: dict[str, tuple[int, int]]) -> list[str]:
    """One table per task: SFT, RL and the change (points, with intervals) per method."""
    out = []
    for task in sorted({c.task for c in changes}):
        p, n = samples.get(task, ("?", "?"))
        with_pass = n != 1  # with one sample Pass@n is Avg@n again
        header = ["SFT Avg@n", "RL Avg@n", "Δ Avg@n", "detectable Δ"] + (
            ["SFT Pass@n", "RL Pass@n", "Δ Pass@n"] if with_pass else [])
        out += ["", f"### SFT -> RL on {task}: {p} problems × {n} samples per model and seed", "",
                "| method | seeds | " + " | ".join(header) + " |", "|---" * (len(header) + 2) + "|"]
        for c in (c for c in changes if c.task == task):
            label = (f"{c.method}, seed {c.seeds[0]} (no learning signal: shown, not averaged)" if c.flagged
                     else c.method)
            cells = [_ci(c.sft["avg"]), _ci(c.rl["avg"]), _ci(c.delta["avg"], True),
                     f"±{100 * c.delta['avg'].detectable:.1f}"]
            if with_pass:
                cells += [_ci(c.sft["pass_at_n"]), _ci(c.rl["pass_at_n"]), _ci(c.delta["pass_at_n"], True)]
            out.append(f"| {label} | {', '.join(map(str, c.seeds))} | " + " | ".join(cells) + " |")
    return out


def _points(x: float) -> str:
    return f"{100 * x:.1f} points"


def _span(intervals) -> str:
    """'12.3 points' or '8.1 to 25.0 points': the range of some differences' detectable sizes."""
    sizes = sorted(100 * i.detectable for i in intervals)
    return f"{sizes[0]:.1f} points" if sizes[0] == sizes[-1] else f"{sizes[0]:.1f} to {sizes[-1]:.1f} points"


def findings(found: list[Comparison], changes: list[RLChange]) -> str:
    """The findings paragraph, generated from the paired tests: a difference is named only when
    its interval excludes 0; otherwise it says "no significant difference" and the smallest
    difference the tests could have detected."""
    def points(i: Interval) -> str:
        return f"{100 * i.estimate:+.1f} points [{100 * i.lo:+.1f}, {100 * i.hi:+.1f}]"

    stage_name = {"sft": "SFT models", "rl": "RL models"}
    parts = []
    if not found:
        parts.append("No two methods could be compared (one method in the sweep, or no per-problem scores).")
    else:
        real = [c for c in found if c.interval.significant]
        if real:
            parts.append("Differences (paired 95% interval excludes 0): " + "; ".join(
                f"{c.a} {'above' if c.interval.estimate > 0 else 'below'} {c.b} on {c.task} "
                f"({stage_name[c.stage]}), {points(c.interval)}" for c in real) + ".")
        rest = [c for c in found if not c.interval.significant]
        if rest and not real:
            parts.append(f"No significant difference between the methods: every one of the {len(rest)} paired "
                         f"95% intervals includes 0, and none of these tests could have detected a difference "
                         f"smaller than {_span(c.interval for c in rest)} (95% confidence, 80% power).")
        elif rest:
            parts.append("No significant difference elsewhere (" + "; ".join(
                f"{c.a} vs {c.b} on {c.task}, {stage_name[c.stage]}, none of {_points(c.interval.detectable)} "
                "or more detected" for c in rest) + ").")
    averaged = [c for c in changes if not c.flagged]
    if averaged:
        moved = [c for c in averaged if c.delta["avg"].significant]
        parts.append(("RL changed Avg@n significantly for " + "; ".join(
            f"{c.method} on {c.task}, {points(c.delta['avg'])}" for c in moved) + ".") if moved else
            "RL made no significant difference to Avg@n from any SFT start; these changes could have been "
            f"detected from {_span(c.delta['avg'] for c in averaged)} up.")
    skipped = sorted({f"{c.method} seed {c.seeds[0]}" for c in changes if c.flagged})
    if skipped:
        parts.append(f"Left out as RL results (no learning signal): {', '.join(skipped)}.")
    return "**Findings.** " + " ".join(parts)


def runs_section(runs: list[Run], config: dict) -> list[str]:
    """Every run's status, RL runs without a learning signal, and (method, seed) pairs of the
    newest config that have no run folder at all."""
    lines = ["", "## Runs", "", "| run | status | GRPO steps without reward variance |", "|---|---|---|"]
    for r in runs:
        signal = r.signal
        note = f"; rl: no learning signal ({signal['reason']})" if r.rl_without_signal else ""
        flat = f"{signal['zero_variance_steps']:.0%}" if signal else "-"
        lines.append(f"| {r.folder.name} | {r.status()}{note} | {flat} |")
    present = {(r.method, r.seed) for r in runs}
    pipeline = config.get("pipeline", {})
    missing = [(m, s) for m in pipeline.get("methods", []) for s in pipeline.get("seeds", []) if (m, s) not in present]
    lines += [f"| {m} seed {s} | missing (no run folder) | - |" for m, s in missing]
    return lines


def drift_table(records: list[dict]) -> str:
    """(method, stage) x text set: mean ± std over seeds of the mean token KL to the base."""
    if not records:
        return "(no fine-tuned checkpoint to compare with the base)"
    sets = sorted({s for r in records for s in r["kl"]})
    by_model: dict[tuple, list[dict]] = {}
    for r in records:
        by_model.setdefault((r["method"], r["stage"]), []).append(r["kl"])
    lines = ["| model | seeds | " + " | ".join(f"KL to base, {s}" for s in sets) + " |", "|---" * (len(sets) + 2) + "|"]
    for (method, stage), kls in sorted(by_model.items()):
        cells = []
        for s in sets:
            mean, std = mean_std([kl[s] for kl in kls])
            cells.append(f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else ""))
        lines.append(f"| {method} ({stage}) | {len(kls)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def heldout_table(rows: list[Group]) -> str | None:
    """Model x held-out SFT loss (prift/heldout.py): mean ± std over seeds of the unweighted NLL per
    token, for the rows whose summaries have it; None when none has."""
    lines = []
    for g in rows:
        values = [s["heldout"]["heldout_nll"] for s in g.summaries if "heldout" in s]
        if values:
            mean, std = mean_std(values)
            tokens = g.summaries[0].get("heldout", {}).get("heldout_tokens", "-")
            lines.append(f"| {g.label} | {len(values)} | {tokens} | {mean:.4f}"
                         + (f" ± {std:.4f}" if std is not None else "") + " |")
    if not lines:
        return None
    return "\n".join(["| model | seeds | tokens | held-out NLL (nats/token) |", "|---|---|---|---|", *lines])


def heldout_curve_table(per_method: dict[str, list[dict[int, float]]]) -> str | None:
    """Method x SFT step of the held-out NLL curve (`sft.heldout_every`): mean ± std over seeds, and
    per method the step where the mean is lowest and how far the last step's mean lies above it
    (plain SFT overfits where that rise is positive); None when no run logged the curve.

    >>> print(heldout_curve_table({"sft": [{0: 1.4, 4: 1.1, 8: 1.2}]}))
    | method | step 0 | step 4 | step 8 | lowest at | last - lowest |
    |---|---|---|---|---|---|
    | sft | 1.4000 | 1.1000 | 1.2000 | 4 | +0.1000 |
    """
    per_method = {m: [h for h in hs if h] for m, hs in per_method.items()}
    per_method = {m: hs for m, hs in per_method.items() if hs}
    if not per_method:
        return None
    steps = sorted({s for hs in per_method.values() for h in hs for s in h})
    lines = ["| method | " + " | ".join(f"step {s}" for s in steps) + " | lowest at | last - lowest |",
             "|---|" + "---|" * (len(steps) + 2)]
    for method, histories in sorted(per_method.items()):
        got, means, stds, _ = curve(histories)
        cells = dict(zip(got, (f"{m:.4f}" + (f" ± {sd:.4f}" if sd is not None else "") for m, sd in zip(means, stds))))
        low = min(range(len(means)), key=means.__getitem__)
        lines.append(f"| {method} | " + " | ".join(cells.get(s, "-") for s in steps)
                     + f" | {got[low]} | {means[-1] - means[low]:+.4f} |")
    return "\n".join(lines)


def sample_sizes(rows: list[Group]) -> dict[str, tuple[int, int]]:
    """{task: (problems, samples per problem)} from the first row that scored the task."""
    out = {}
    for g in rows:
        for s in g.samples:
            for task, keys in s.items():
                if task not in out and keys.get("score"):
                    first = next(iter(keys["score"].values()))
                    out[task] = (len(keys["score"]), len(first))
    return out


def interval_of_run(samples: dict, task: str, metric: str) -> Interval | None:
    """One run's interval on one task (problems resampled, one seed), for the MLflow metrics."""
    per_problem = samples.get(task, {}).get("score")
    return cell_interval([per_problem], metric) if per_problem else None


def run_change(sft: dict, rl: dict, task: str, metric: str) -> Interval | None:
    """One run's SFT -> RL change on one task with its interval (the same problems for both)."""
    a, b = sft.get(task, {}).get("score"), rl.get(task, {}).get("score")
    problems = shared_problems([a], [b]) if a and b else []
    if not problems:
        return None
    counts = (pooled_counts([b], metric, problems), pooled_counts([a], metric, problems))
    return change_interval(score_matrix([a], metric, problems), score_matrix([b], metric, problems), counts)

