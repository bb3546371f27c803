"""`prift report`: what PriFT changed, per method, per domain, per token, for a finished sweep.

    prift report runs/demo                 # a sweep folder (<storage>/<experiment>) ...
    prift report demo --storage runs       # ... or its experiment name

Reads the run directory (the source of truth for what finished) and writes <sweep>/report/:
  report.md       method x task tables (Avg@n and Pass@k, mean +- std over seeds, per-domain means;
                  math: strict, the primary metric, and flexible extraction),
                  the drift table, and links to the figures
  comparison.png  the Avg@n table as grouped bars (error bars: std over seeds)
  drift           mean per-token KL(fine-tuned || base) on general text (the documentation of Python
                  standard-library modules, which every install ships) and on the sweep's eval
                  prompts under the chat template: the paper's claim is that the prior keeps the
                  model closer to its pretrained distribution
  tokens.html     workflows/token_view.py: training tokens coloured by their PriFT weight
  weights.png     the weight histogram of each method
Every file also goes to MLflow as artifacts (report/) of each parent run of the sweep, and each
parent gets its checkpoints' drift as metrics `drift/kl_<text set>/<stage>` (e.g.
`drift/kl_general/rl`), so the compare view of the parents shows it.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from common import atomic
from common.errors import InputError
from workflows.rundir import rl_signal, run_label

log = logging.getLogger(__name__)

GENERAL_MODULES = ("json", "argparse", "collections", "textwrap", "random", "statistics", "fractions",
                   "decimal", "datetime", "calendar", "shutil", "tempfile", "heapq", "bisect", "functools", "csv")


@dataclass
class Run:
    """One finished (method, seed) run of the sweep, as its run directory records it."""

    folder: Path
    method: str
    seed: int
    config: dict
    evals: dict[str, dict] = field(default_factory=dict)  # model stage (sft, rl) -> summary.json
    mlflow_run_id: str | None = None
    manifest: dict = field(default_factory=dict)

    def status(self) -> str:
        """done, failed in STAGE: REASON, or incomplete (stages not done: ...)."""
        if self.manifest.get("status") == "failed":
            return f"failed in {self.manifest.get('failed_stage')}: {self.manifest.get('error')}"
        pending = [n for n, st in self.manifest.get("stages", {}).items() if st.get("status") != "done"]
        if pending or self.manifest.get("status") != "done":
            return f"incomplete (not done: {', '.join(pending) or 'no stage finished'})"
        return "done"

    def models(self) -> dict[str, Path]:
        """Fine-tuned checkpoints that exist: {"sft": .../sft/final, "rl": .../rl/final}."""
        out = {s: self.folder / s / "final" for s in ("sft", "rl")}
        return {s: p for s, p in out.items() if (p / "config.json").exists()}


def resolve_sweep(target: str, storage: str = "runs") -> Path:
    """A sweep folder given as a path, or as an experiment name under `storage`."""
    for path in (Path(target), Path(storage) / target):
        if path.is_dir() and (any(path.glob("*/manifest.json"))):
            return path
    raise InputError(f"{target}: no sweep folder with run manifests here or under {storage}/")


def collect(sweep: Path) -> tuple[list[Run], dict | None]:
    """The runs of a sweep and the base model's eval summary (None if the base was not scored)."""
    runs = []
    for folder in sorted(p for p in sweep.iterdir() if (p / "manifest.json").exists() and p.name != "base"):
        config = yaml.safe_load((folder / "config.yaml").read_text())
        manifest = json.loads((folder / "manifest.json").read_text())
        run = Run(folder, config["sft"]["method"], config["sft"]["seed"], config,
                  mlflow_run_id=manifest.get("mlflow_run_id"), manifest=manifest)
        for stage in ("sft", "rl"):
            summary = folder / "eval" / stage / "summary.json"
            if summary.exists():
                run.evals[stage] = json.loads(summary.read_text())
        runs.append(run)
    runs = _newest_per_method_and_seed(runs)
    base_summary = sweep / "base" / "eval" / "base" / "summary.json"
    return runs, json.loads(base_summary.read_text()) if base_summary.exists() else None


def _newest_per_method_and_seed(runs: list[Run]) -> list[Run]:
    """A sweep folder keeps the runs of earlier configs too (their hash differs): report the newest
    run of each (method, seed), so seeds of different configs are never averaged together."""
    newest: dict[tuple, Run] = {}
    for run in sorted(runs, key=lambda r: (r.folder / "manifest.json").stat().st_mtime):
        old = newest.get((run.method, run.seed))
        if old:
            log.warning("report: %s supersedes %s (same method and seed, another config)", run.folder.name, old.folder.name)
        newest[(run.method, run.seed)] = run
    return sorted(newest.values(), key=lambda r: (r.method, r.seed))


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def method_table(runs: list[Run], base: dict | None, section: str = "tasks") -> dict[str, dict[str, dict]]:
    """{row label: {task or domain: {metric: (mean, std or None, seeds)}}}, rows = base, then each
    (method, model stage) in the sweep; the mean and std are over the seeds."""
    rows: dict[str, dict[str, dict]] = {}
    if base:
        rows["base"] = {t: {k: (v, None, 1) for k, v in m.items()} for t, m in base[section].items()}
    for method in sorted({r.method for r in runs}):
        for stage in ("sft", "rl"):
            summaries = [r.evals[stage][section] for r in runs if r.method == method and stage in r.evals]
            if not summaries:
                continue
            cells = {}
            for col in summaries[0]:
                metrics = [s[col] for s in summaries if col in s]
                keys = set.intersection(*(set(m) for m in metrics))
                cells[col] = {k: (*_mean_std([m[k] for m in metrics]), len(metrics)) for k in sorted(keys)}
            rows[f"{method} ({run_label(stage, _worst_signal(runs, method) if stage == 'rl' else None)})"] = cells
    return rows


def _worst_signal(runs: list[Run], method: str) -> dict | None:
    """The learning signal of a method's RL runs: not ok if any seed's run had none."""
    signals = [rl_signal(r.folder) for r in runs if r.method == method]
    return next((s for s in signals if s and not s["ok"]), None)


def runs_section(runs: list[Run], config: dict) -> list[str]:
    """Every run's status, RL runs without a learning signal, and (method, seed) pairs of the
    newest config that have no run folder at all."""
    lines = ["", "## Runs", "", "| run | status |", "|---|---|"]
    for r in runs:
        signal = rl_signal(r.folder)
        note = f"; rl: no learning signal ({signal['reason']})" if signal and not signal["ok"] else ""
        lines.append(f"| {r.folder.name} | {r.status()}{note} |")
    present = {(r.method, r.seed) for r in runs}
    pipeline = config.get("pipeline", {})
    missing = [(m, s) for m in pipeline.get("methods", []) for s in pipeline.get("seeds", []) if (m, s) not in present]
    lines += [f"| {m} seed {s} | missing (no run folder) |" for m, s in missing]
    return lines


def _cell(value: tuple | None) -> str:
    if value is None:
        return "-"
    mean, std, _ = value
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


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


SCORING_NOTE = ("Math is scored as the Qwen2.5-Math harness scores it (the paper's protocol). Every table "
                "but one counts stated final answers only (`\\boxed{}`, \"the answer is\", `####`): the "
                "primary, strict metric. The flexible table also takes the last number of a completion "
                "that states none, except in completions cut by the length limit.")


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


# ---------------------------------------------------------------- drift from the base model


def general_texts(n: int) -> list[str]:
    """Up to n paragraphs of English prose from the docstrings of standard-library modules."""
    paragraphs = []
    for name in GENERAL_MODULES:
        doc = importlib.import_module(name).__doc__ or ""
        paragraphs += [" ".join(p.split()) for p in doc.split("\n\n") if len(p) >= 200]
    return paragraphs[:n]


@torch.no_grad()
def next_token_logits(model, sequences: list[list[int]]) -> list[torch.Tensor]:
    """The model's float32 logits [len - 1, vocab] for every next-token position of each sequence."""
    return [model(input_ids=torch.tensor([ids])).logits[0, :-1].float() for ids in sequences]


@torch.no_grad()
def mean_token_kl(model, base_logits: list[torch.Tensor], sequences: list[list[int]]) -> float:
    """Mean over every next-token position of KL(p_model || p_base), summed in float64. The base's
    logits (`next_token_logits`) are computed once per text set and shared by every model compared."""
    total, count = 0.0, 0
    for ids, base in zip(sequences, base_logits, strict=True):
        lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].double(), -1)
        lq = torch.log_softmax(base.double(), -1)
        total += float((lp.exp() * (lp - lq)).sum())
        count += lp.shape[0]
    if count == 0:
        raise ValueError("no token positions to compare: every text is shorter than 2 tokens")
    kl = total / count
    if not math.isfinite(kl):
        raise FloatingPointError(f"non-finite KL ({kl}) between the model and the base")
    return kl


def drift_texts(base_model: str, eval_tasks: list, n: int, max_tokens: int) -> dict[str, list[list[int]]]:
    """Token ids of the two text sets the drift is measured on, truncated to max_tokens."""
    from evals.generate import chat_ids
    from evals.tasks import TaskSpec, load_examples
    from common.models import load_tokenizer

    tokenizer = load_tokenizer(base_model)
    general = [tokenizer(t)["input_ids"][:max_tokens] for t in general_texts(n)]
    prompts = [e.prompt for spec in eval_tasks for e in load_examples(TaskSpec(**spec))]
    evals = [ids[:max_tokens] for ids in chat_ids(tokenizer, prompts[:n])]
    return {"general": general, "eval_prompts": evals}


def drift(runs: list[Run], base_model: str, texts: dict[str, list[list[int]]]) -> list[dict]:
    """One record per fine-tuned model: method, stage, seed and the mean token KL to the base per text set."""
    from tqdm import tqdm

    from common.models import load_causal_lm

    base = load_causal_lm(base_model).eval()
    base_logits = {name: next_token_logits(base, seqs) for name, seqs in texts.items()}
    del base
    out = []
    todo = [(r, stage, path) for r in runs for stage, path in r.models().items()]
    for run, stage, path in tqdm(todo, desc="drift (KL to base)", unit="model"):
        model = load_causal_lm(str(path)).eval()
        kl = {name: mean_token_kl(model, base_logits[name], seqs) for name, seqs in texts.items()}
        out.append({"method": run.method, "stage": stage, "seed": run.seed, "kl": kl})
        del model
    return out


def drift_table(records: list[dict]) -> str:
    """(method, stage) x text set: mean ± std over seeds of the mean token KL to the base."""
    sets = sorted({s for r in records for s in r["kl"]})
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["method"], r["stage"]), []).append(r["kl"])
    lines = ["| model | seeds | " + " | ".join(f"KL to base, {s}" for s in sets) + " |", "|---" * (len(sets) + 2) + "|"]
    for (method, stage), kls in sorted(groups.items()):
        cells = []
        for s in sets:
            mean, std = _mean_std([kl[s] for kl in kls])
            cells.append(f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else ""))
        lines.append(f"| {method} ({stage}) | {len(kls)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- figures and the report


def comparison_plot(rows: dict[str, dict[str, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({c for cells in rows.values() for c in cells})
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(tasks)), 4))
    width = 0.8 / max(len(rows), 1)
    for i, (label, cells) in enumerate(rows.items()):
        means, errs = [], []
        for t in tasks:
            metrics = cells.get(t, {})
            key = pick(metrics, "avg_at_n")
            mean, std, _ = metrics[key] if key else (0.0, None, 0)
            means.append(100 * mean)
            errs.append(100 * (std or 0.0))
        lower = [min(e, m) for e, m in zip(errs, means)]  # accuracy is never below 0
        ax.bar([j + i * width for j in range(len(tasks))], means, width, yerr=[lower, errs], label=label, capsize=2)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(tasks))], tasks)
    ax.set_ylabel("Avg@n (%)")
    ax.set_title("Accuracy per task (mean over seeds; bars: std)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(sweep: Path, *, kl_texts: int = 8, kl_max_tokens: int = 96, token_examples: int = 4,
                 to_mlflow: bool = True) -> Path:
    """Build <sweep>/report/ (see the module docstring); returns its report.md."""
    from workflows.token_view import token_view, weight_histograms

    runs, base = collect(sweep)
    if not runs:
        raise FileNotFoundError(f"{sweep}: no finished runs (folders with manifest.json and config.yaml)")
    out = sweep / "report"
    out.mkdir(exist_ok=True)
    config = runs[0].config
    tasks = method_table(runs, base, "tasks")
    domains = method_table(runs, base, "domains")
    parts = [f"# PriFT report: {sweep.name}", "",
             f"Base model `{config['model']}`; methods {sorted({r.method for r in runs})}; "
             f"seeds {sorted({r.seed for r in runs})}. Values in %, mean ± std over seeds."]
    parts += runs_section(runs, config)
    if tasks:
        comparison_plot(tasks, out / "comparison.png")
        parts += ["", SCORING_NOTE, "", "## Avg@n per task", "", markdown_table(tasks, "avg_at_n"),
                  "", "## Avg@n per task, flexible math extraction", "", markdown_table(tasks, "avg_at_n_flexible"),
                  "", "## Pass@1 per task", "", markdown_table(tasks, "pass_at_1"),
                  "", "## Pass@n per task", "", markdown_table(tasks, "pass_at_n"),
                  "", "## Avg@n per domain", "", markdown_table(domains, "avg_at_n"),
                  "", "![comparison](comparison.png)"]
    else:
        parts += ["", "(no evaluation results in this sweep)"]
    texts = drift_texts(config["model"], config["eval"]["tasks"], kl_texts, kl_max_tokens)
    kl = drift(runs, config["model"], texts)
    parts += ["", "## Drift from the base model", "",
              f"Mean per-token KL(model || base) over {len(texts['general'])} paragraphs of general text "
              f"(Python standard-library documentation) and {len(texts['eval_prompts'])} eval prompts "
              f"(chat template), each cut at {kl_max_tokens} tokens.", "", drift_table(kl)]
    prior = max((sweep / "prior").glob("*/meta.json"), key=lambda p: p.stat().st_mtime, default=None)
    if prior:
        token_view(prior.parent, out / "tokens.html", examples=token_examples)
        weight_histograms(prior.parent, runs, out / "weights.png")
        parts += ["", "## Which tokens the prior calls misaligned", "",
                  "[tokens.html](tokens.html): training tokens coloured by the reference probability "
                  "(the PriFT-prob weight), struck through where PriFT-mass drops them; hover for the "
                  "reference's top alternatives.", "", "![weights](weights.png)"]
    (out / "drift.json").write_text(json.dumps(kl, indent=2))
    report = out / "report.md"
    atomic.write_text(report, "\n".join(parts) + "\n")
    if to_mlflow:
        log_to_mlflow(sweep, runs, out, kl)
    log.info("report written to %s", report)
    return report


def drift_metrics(records: list[dict], method: str, seed: int) -> dict[str, float]:
    """One run's drift records (`drift`) as MLflow metrics: {"drift/kl_<text set>/<stage>": KL}."""
    return {f"drift/kl_{name}/{r['stage']}": kl for r in records if (r["method"], r["seed"]) == (method, seed)
            for name, kl in r["kl"].items()}


def log_to_mlflow(sweep: Path, runs: list[Run], folder: Path, kl: list[dict]) -> None:
    """The report folder as `report/` artifacts of each parent run of the sweep, and each run's
    drift as metrics of its parent."""
    from workflows.tracking import Tracker, tracking_uri

    storage = sweep.parent
    tracker = Tracker(tracking_uri(storage), sweep.name, storage / "mlartifacts")
    for run in runs:
        if run.mlflow_run_id:
            tracker.metrics(run.mlflow_run_id, drift_metrics(kl, run.method, run.seed))
            tracker.artifact(run.mlflow_run_id, folder, "report")
