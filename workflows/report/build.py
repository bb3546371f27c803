"""Writes <sweep>/report/ and sends it to MLflow: the entry point of `prift report` (the package
docstring lists what it writes)."""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path

from common import atomic
from evals.metrics import pick
from workflows.report.collect import (RL_CURVES, SFT_CURVES, Run, base_samples, collect, distinct_answers,
                                      rl_history, rows_by_problem, sft_history, token_entropy)
from workflows.report.stats import pass_at_k_curve
from workflows.report.tables import (BOOTSTRAP_NOTE, HELDOUT_NOTE, SCORING_NOTE, comparison_table, comparisons,
                                     domain_interval_table, drift_table, findings, groups, heldout_curve_table,
                                     heldout_table,
                                     interval_of_run, markdown_table, method_table, rests_on, rl_change_tables,
                                     rl_changes, run_change, runs_section, sample_sizes, task_interval_tables)

log = logging.getLogger(__name__)


def write_report(sweep: Path, *, kl_texts: int = 8, kl_max_tokens: int = 96, token_examples: int = 4,
                 to_mlflow: bool = True) -> Path:
    """Build <sweep>/report/ (the package docstring lists it); returns its report.md."""
    from workflows.report.drift import drift, drift_texts
    from workflows.tracking import tracking_uri

    runs, base = collect(sweep)
    if not runs:
        raise FileNotFoundError(f"{sweep}: no finished runs (folders with manifest.json and config.yaml)")
    out = sweep / "report"
    out.mkdir(exist_ok=True)
    config = runs[0].config
    rows = groups(runs, base, base_samples(sweep))
    found, changes = comparisons(rows), rl_changes(runs)
    parts = [f"# PriFT report: {sweep.name}", "",
             f"Base model `{config['model']}`; methods {sorted({r.method for r in runs})}; "
             f"seeds {sorted({r.seed for r in runs})}. Values in %.", "", findings(found, changes)]
    parts += runs_section(runs, config)
    parts += tables_section(runs, base, rows, out)
    parts += sft_curves_section(runs, rows, out, tracking_uri(sweep.parent))
    parts += comparisons_section(found)
    parts += rl_section(runs, config, changes, sample_sizes(rows), out, tracking_uri(sweep.parent))
    eval_dirs = {(r.method, r.seed): r.folder / "eval" for r in runs} | {("base", None): sweep / "base" / "eval"}
    parts += headroom_section(rows, sample_sizes(rows), out, eval_dirs)
    texts = drift_texts(config["model"], config["eval"]["tasks"], kl_texts, kl_max_tokens)
    kl = drift(runs, config["model"], texts)
    parts += ["", "## Drift from the base model", "",
              f"Mean per-token KL(model || base) over {len(texts.get('general', []))} paragraphs of general text "
              f"(Python standard-library documentation) and {len(texts.get('eval_prompts', []))} eval prompts "
              f"(chat template), each cut at {kl_max_tokens} tokens.", "", drift_table(kl)]
    parts += tokens_section(sweep, runs, out, token_examples)
    atomic.write_text(out / "drift.json", json.dumps(kl, indent=2))
    report = out / "report.md"
    atomic.write_text(report, "\n".join(parts) + "\n")
    if to_mlflow:
        log_to_mlflow(sweep, runs, out, kl, {r.folder.name: run_metrics(r) for r in runs})
    log.info("report written to %s", report)
    return report


def tables_section(runs: list[Run], base: dict | None, rows, out: Path) -> list[str]:
    """The Avg@n overview (mean ± std over seeds), the per-task interval tables, the domains."""
    from workflows.report.figures import comparison_figure, save

    tasks = method_table(runs, base, "tasks")
    if not tasks:
        return ["", "(no evaluation results in this sweep)"]
    sizes = sample_sizes(rows)
    names = sorted({c for cells in tasks.values() for c in cells})
    bars = [{"label": g.label, "method": g.method, "stage": g.stage, "flagged": g.flagged,
             "values": seed_values(g.summaries, names, "avg_at_n")} for g in rows]
    save(comparison_figure(bars, names, sizes, "Avg@n"), out / "comparison.png")
    summaries = [s for g in rows for s in g.summaries]
    return ["", SCORING_NOTE, "", "## Avg@n per task", "", markdown_table(tasks, "avg_at_n"), "",
            rests_on(summaries) + " Mean ± std over seeds; no ± with one seed.",
            "", "![comparison](comparison.png)",
            "", "## Per task, with 95% intervals", "", BOOTSTRAP_NOTE, *task_interval_tables(rows),
            "", "## Avg@n per domain, with 95% intervals", "", *domain_interval_table(rows)]


def sft_curves_section(runs: list[Run], rows, out: Path, uri: str) -> list[str]:
    """The held-out SFT loss of every evaluated model, and where the sweep logged it
    (`sft.heldout_every`) its curve during SFT with the training loss beside it."""
    from workflows.report.figures import curves_figure, save

    table = heldout_table(rows)
    parts = [] if table is None else ["", "## Held-out SFT loss", "", HELDOUT_NOTE, "", table]
    base = [s["heldout"]["heldout_nll"] for g in rows if g.stage == "base" for s in g.summaries if "heldout" in s]
    per_method: dict[str, dict] = {}
    for r in runs:
        history, _ = sft_history(r, uri, base[0] if base else None)
        per_method.setdefault(r.method, {"ok": [], "flagged": []})["ok"].append(history)
    curve_table = heldout_curve_table({m: [h.get("heldout_nll", {}) for h in e["ok"]] for m, e in per_method.items()})
    if curve_table is None:
        return parts
    save(curves_figure(per_method, SFT_CURVES, None, stage="SFT", title="SFT on the training rows"),
         out / "sft_curves.png")
    return parts + ["", "### During SFT", "",
                    "The held-out NLL every `sft.heldout_every` steps (step 0: the base model), mean ± std over "
                    "seeds. Plain SFT overfits where the held-out NLL rises from its lowest point while the "
                    "training loss still falls. The training loss is each method's own weighted loss, so "
                    "its level is not comparable across methods.", "", curve_table, "",
                    "![sft curves](sft_curves.png)"]


def seed_values(summaries: list[dict], tasks: list[str], metric: str) -> dict[str, list[float]]:
    """{task: [value per seed]} of one metric (see `pick`), for the tasks every seed scored."""
    out = {}
    for task in tasks:
        keys = [pick(s["tasks"].get(task, {}), metric) for s in summaries]
        if all(keys):
            out[task] = [s["tasks"][task][k] for s, k in zip(summaries, keys)]
    return out


def comparisons_section(found) -> list[str]:
    if not found:
        return []
    return ["", "## Method comparisons (paired, Avg@n)", "", comparison_table(found)]


def rl_section(runs: list[Run], config: dict, changes, sizes: dict, out: Path, uri: str) -> list[str]:
    """RL from each initialization: the GRPO curves per method and the SFT -> RL tables."""
    from workflows.report.figures import curves_figure, save

    with_rl = [r for r in runs if r.manifest.get("stages", {}).get("rl", {}).get("status") == "done"]
    if not with_rl:
        return []
    per_method: dict[str, dict] = {}
    sources = []
    for r in with_rl:
        history, source = rl_history(r, uri)
        sources.append(f"{r.folder.name}: {source}")
        entry = per_method.setdefault(r.method, {"ok": [], "flagged": []})
        if r.rl_without_signal:
            entry["flagged"].append((r.seed, history))
        else:
            entry["ok"].append(history)
    beta = config.get("rl", {}).get("beta", 0.0)
    save(curves_figure(per_method, RL_CURVES, beta), out / "rl_curves.png")
    parts = ["", "## RL from each SFT initialization", "",
             "GRPO curves by step, mean ± std over the seeds of each method (runs without a learning signal "
             "drawn dashed, not averaged in). " + ("KL to the SFT start is not logged: rl.beta is 0, so GRPO has "
                                                    "no KL term." if not beta else ""),
             "", "![rl curves](rl_curves.png)", "", "Curves read from: " + "; ".join(sources) + "."]
    if changes:
        parts += ["", "The SFT -> RL change per task: points, RL minus SFT, seeds paired (each RL model against "
                  "the SFT model it started from), 95% intervals as above.", *rl_change_tables(changes, sizes)]
    else:
        parts += ["", "No SFT -> RL table: the SFT models were not evaluated (add sft to pipeline.eval_models)."]
    return parts


def headroom_section(rows, sizes: dict, out: Path, eval_dirs: dict) -> list[str]:
    """Room for RL: Pass@k curves k = 1..n per model row, and per problem how many different final
    answers its samples state and how uncertain the model was while writing them (mean token
    entropy): the diversity RL can sharpen into Pass@1, beside the base model's own.
    `eval_dirs[(method, seed)]` holds a run's eval/<stage>/ folders (("base", None): the base's)."""
    from workflows.report.figures import pass_at_k_figure, save

    curves: dict[str, list[dict]] = {}
    for g in rows:
        for task in sorted({t for s in g.samples for t in s}):
            per_seed = [s[task]["score"] for s in g.samples if task in s]
            ks, values = pass_at_k_curve(per_seed)
            if len(ks) > 1:
                curves.setdefault(task, []).append({"label": g.label, "method": g.method, "stage": g.stage,
                                                    "flagged": g.flagged, "ks": ks, "values": values})
    if not curves:
        return []
    save(pass_at_k_figure(curves, sizes), out / "pass_at_k.png")

    samples = {g.label: [rows_by_problem(eval_dirs[(g.method, seed)] / g.stage) for seed in g.seeds] for g in rows}

    def per_problem_table(measure) -> list[str]:
        """Per model row and task, the mean over problems (and seeds) of measure(rows)[task]."""
        lines = ["| model | " + " | ".join(sorted(curves)) + " |", "|---|" + "---|" * len(curves)]
        for g in rows:
            found = [measure(seed_rows) for seed_rows in samples[g.label]]
            cells = [[v for f in found for v in f.get(task, {}).values()] for task in sorted(curves)]
            means = (f"{statistics.fmean(c):.2f}" if c else "n/a" for c in cells)
            lines.append(f"| {g.label} | " + " | ".join(means) + " |")
        return lines

    return ["", "## Room for RL", "", "![Pass@k](pass_at_k.png)", "",
            "Pass@k for k = 1..n: what a model solves when any of k samples may count. The gap between "
            "Pass@n and Pass@1 is what RL can turn into first-try answers. Mean different final answers "
            "per problem among its samples (a sample with no answer adds none; n/a for code, whose samples "
            "state programs):", "",
            *per_problem_table(distinct_answers), "",
            "Mean token entropy (nats) of the samples: at each generated token, the entropy of the model's "
            "next-token distribution (temperature 1), averaged over the sample's tokens, its problem's "
            "samples, then the problems. Higher: the model still spreads its mass where it writes; near 0: "
            "it has settled on one way to write the answer:", "",
            *per_problem_table(token_entropy)]


def tokens_section(sweep: Path, runs: list[Run], out: Path, examples: int) -> list[str]:
    from workflows.report.figures import save, weights_figure
    from workflows.report.token_view import method_weights, token_view

    prior = max((sweep / "prior").glob("*/meta.json"), key=lambda p: p.stat().st_mtime, default=None)
    if not prior:
        return []
    dft = next(filter(None, (r.weights("sft") for r in runs if r.method == "dft")), None)
    token_view(prior.parent, out / "tokens.html", examples=examples, dft_model=str(dft) if dft else None)
    save(weights_figure(method_weights(prior.parent, runs)), out / "weights.png", dpi=110)
    return ["", "## Which tokens the prior calls misaligned", "",
            "[tokens.html](tokens.html): training tokens coloured by the reference probability "
            "(the PriFT-prob weight), struck through where PriFT-mass drops them, with the share dropped per "
            "example; hover for q, the DFT weight (with a dft run in the sweep) and the reference's top "
            "alternatives.", "", "![weights](weights.png)"]


def run_metrics(run: Run) -> dict[str, float]:
    """A run's 95% intervals per model stage, task and metric (its own problems resampled), and its
    SFT -> RL change per task with the interval, as parent-run MLflow metrics."""
    out: dict[str, float] = {}
    samples = {s: run.samples(s) for s in run.evals}
    for stage, per_task in samples.items():
        for task in per_task:
            for metric in ("avg", "pass_at_n"):
                name = metric_name(run.evals[stage]["tasks"].get(task, {}), metric)
                interval = interval_of_run(per_task, task, metric)
                if interval and name:
                    out |= {f"ci95/{stage}/{task}/{name}/lo": interval.lo,
                            f"ci95/{stage}/{task}/{name}/hi": interval.hi}
    if {"sft", "rl"} <= set(samples):
        for task in samples["rl"]:
            for metric in ("avg", "pass_at_n"):
                name = metric_name(run.evals["rl"]["tasks"].get(task, {}), metric)
                change = run_change(samples["sft"], samples["rl"], task, metric)
                if change and name:
                    key = f"sft_to_rl/{task}/{name}"
                    out |= {key: change.estimate, f"{key}/lo": change.lo, f"{key}/hi": change.hi}
    return out


def metric_name(task_metrics: dict, metric: str) -> str | None:
    """The eval summary's name of a per-problem metric: avg -> avg_at_<n>, pass_at_n -> pass_at_<n>."""
    return pick(task_metrics, {"avg": "avg_at_n", "pass_at_n": "pass_at_n"}[metric])


def drift_metrics(records: list[dict], method: str, seed: int) -> dict[str, float]:
    """One run's drift records (`drift`) as MLflow metrics: {"drift/kl_<text set>/<stage>": KL}."""
    return {f"drift/kl_{name}/{r['stage']}": kl for r in records if (r["method"], r["seed"]) == (method, seed)
            for name, kl in r["kl"].items()}


def log_to_mlflow(sweep: Path, runs: list[Run], folder: Path, kl: list[dict],
                  extra: dict[str, dict[str, float]] | None = None) -> None:
    """The report folder as `report/` artifacts of each parent run of the sweep; each run's drift,
    and its `extra` metrics (by run folder name, see `run_metrics`), as metrics of its parent."""
    from workflows.tracking import Tracker, tracking_uri

    storage = sweep.parent
    tracker = Tracker(tracking_uri(storage), sweep.name, storage / "mlartifacts")
    for run in runs:
        if run.mlflow_run_id:
            metrics = drift_metrics(kl, run.method, run.seed) | (extra or {}).get(run.folder.name, {})
            tracker.metrics(run.mlflow_run_id, metrics)
            tracker.artifact(run.mlflow_run_id, folder, "report")
