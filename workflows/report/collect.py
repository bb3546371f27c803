"""What a finished sweep holds, read off its run folders: the runs, their eval summaries, the
per-problem sample scores, and the RL stage's logged curves.

A sweep folder (<storage>/<experiment>) holds one folder per (method, seed, config) run
(workflows/rundir.py), a base/ folder with the base model's evals and prior/ with the reference
signals. Each eval folder <run>/eval/<stage>/<task>/ has samples.jsonl: one row per (problem,
sample) with its `score` (and `score_flexible` for math), which the statistics resample.
"""

from __future__ import annotations

import json
import logging
import re
import statistics
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import yaml

from common.errors import InputError
from evals.tasks import TASKS
from workflows.rundir import rl_signal

log = logging.getLogger(__name__)

STAGES = ("sft", "rl")
"""The fine-tuned model stages of a run, in pipeline order."""

RL_CURVES = {"reward": "reward", "kl": "kl", "completions/mean_length": "completion length (tokens)"}
"""The GRPO curves the report draws: TRL 1.16's GRPOTrainer log keys and their axis labels. TRL
logs `kl` only when `rl.beta` > 0 (there is no KL term otherwise)."""

SFT_CURVES = {"loss": "training loss (the method's own)", "heldout_nll": "held-out NLL (nats/token)"}
"""The SFT curves the report draws: the trainer's loss (each method's weighted loss, so not
comparable across methods) and the unweighted held-out NLL of `sft.heldout_every`."""


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
    _samples: dict = field(default_factory=dict, repr=False)  # stage -> eval_samples, read once

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
        out = {s: self.folder / s / "final" for s in STAGES}
        return {s: p for s, p in out.items() if (p / "config.json").exists()}

    def weights(self, stage: str) -> Path | None:
        """The stage's checkpoint if its weights are still there (a sweep's results can outlive them)."""
        path = self.models().get(stage)
        found = path and (any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin")))
        return path if found else None

    @cached_property
    def signal(self) -> dict | None:
        """The RL stage's learning signal (None when the RL stage left no summary)."""
        return rl_signal(self.folder)

    @property
    def rl_without_signal(self) -> bool:
        """True when the RL stage ran and had nothing to learn from: its model is no RL result."""
        return bool(self.signal) and not self.signal["ok"]

    def samples(self, stage: str) -> dict[str, dict[str, dict[str, list[float]]]]:
        """The per-problem sample scores of this run's `stage` model (see `eval_samples`), read once:
        the tables, the comparisons and the MLflow metrics all use them."""
        if stage not in self._samples:
            self._samples[stage] = eval_samples(self.folder / "eval" / stage)
        return self._samples[stage]


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
        for stage in STAGES:
            summary = folder / "eval" / stage / "summary.json"
            if summary.exists():
                run.evals[stage] = json.loads(summary.read_text())
        runs.append(run)
    runs = _newest_per_method_and_seed(runs)
    base_summary = sweep / "base" / "eval" / "base" / "summary.json"
    return runs, json.loads(base_summary.read_text()) if base_summary.exists() else None


def base_samples(sweep: Path) -> dict[str, dict[str, dict[str, list[float]]]]:
    """The base model's per-problem sample scores ({} when the base was not scored)."""
    return eval_samples(sweep / "base" / "eval" / "base")


def _newest_per_method_and_seed(runs: list[Run]) -> list[Run]:
    """A sweep folder keeps the runs of earlier configs too (their hash differs): report the newest
    run of each (method, seed), so seeds of different configs are never averaged together."""
    newest: dict[tuple, Run] = {}
    for run in sorted(runs, key=lambda r: (r.folder / "manifest.json").stat().st_mtime):
        old = newest.get((run.method, run.seed))
        if old:
            log.warning("report: %s supersedes %s (same method and seed, another config)",
                        run.folder.name, old.folder.name)
        newest[(run.method, run.seed)] = run
    return sorted(newest.values(), key=lambda r: (r.method, r.seed))


SCORE_KEYS = ("score", "score_flexible")
"""The sample scores of samples.jsonl: the primary (strict for math) and, for math, the flexible one."""


def eval_samples(eval_dir: Path) -> dict[str, dict[str, dict[str, list[float]]]]:
    """{task: {score key: {problem id: [score of sample 0, 1, ...]}}} from eval_dir/<task>/samples.jsonl.

    A row without a score, or a problem whose sample indices are not 0..n-1, is an InputError that
    names the file and line: the statistics would otherwise rest on scores that are not there."""
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for path in sorted(eval_dir.glob("*/samples.jsonl")) if eval_dir.is_dir() else ():
        per_key: dict[str, dict[str, dict[int, float]]] = {}
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row.get("score"), (int, float)) or "id" not in row or "sample" not in row:
                raise InputError(f"{path}:{number}: expected a row with id, sample and a numeric score")
            for key in SCORE_KEYS:
                if isinstance(row.get(key), (int, float)):
                    per_key.setdefault(key, {}).setdefault(str(row["id"]), {})[int(row["sample"])] = float(row[key])
        task = {}
        for key, problems in per_key.items():
            task[key] = {}
            for pid, samples in problems.items():
                if sorted(samples) != list(range(len(samples))):
                    raise InputError(f"{path}: problem {pid} has samples {sorted(samples)}, "
                                     f"expected 0..{len(samples) - 1}")
                task[key][pid] = [samples[i] for i in range(len(samples))]
        out[path.parent.name] = task
    return out


def rows_by_problem(eval_dir: Path) -> dict[str, dict[str, list[dict]]]:
    """{task: {problem id: its rows of samples.jsonl}} under eval_dir: read once, then measured by
    `distinct_answers` and `token_entropy`."""
    out: dict[str, dict[str, list[dict]]] = {}
    for path in sorted(eval_dir.glob("*/samples.jsonl")) if eval_dir.is_dir() else ():
        problems: dict[str, list[dict]] = {}
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                problems.setdefault(str(row.get("id")), []).append(row)
        out[path.parent.name] = problems
    return out


def distinct_answers(rows: dict[str, dict[str, list[dict]]]) -> dict[str, dict[str, int]]:
    """{task: {problem id: how many different final answers its samples state}} from the
    `extracted` field of the rows (`rows_by_problem`) (a sample with no answer adds none). One answer on every
    sample: the model has settled; many: it still explores, which RL can sharpen. Code tasks are
    left out: their samples state programs, and their `extracted` is the sandbox's verdict."""
    return {task: {pid: len({str(r["extracted"]) for r in rows if r.get("extracted") is not None})
                   for pid, rows in problems.items()}
            for task, problems in rows.items()
            if task not in TASKS or not TASKS[task].kind.needs_sandbox}


def token_entropy(rows: dict[str, dict[str, list[dict]]]) -> dict[str, dict[str, float]]:
    """{task: {problem id: the mean over its samples of their mean token entropy (nats)}} from the
    rows (`rows_by_problem`; evals/entropy.py); samples without one (empty, or written before the eval stage
    recorded it) are left out, and so is a problem with none."""
    out: dict[str, dict[str, float]] = {}
    for task, problems in rows.items():
        for pid, samples in problems.items():
            values = [r["mean_token_entropy"] for r in samples if isinstance(r.get("mean_token_entropy"), (int, float))]
            if values:
                out.setdefault(task, {})[pid] = statistics.fmean(values)
    return out


def stage_history(run: Run, stage: str, keys, uri: str | None) -> tuple[dict[str, dict[int, float]], str]:
    """A training stage's logged curves {log key: {step: value}} for `keys`, and where they came
    from: the trainer's log_history that the finished stage keeps in <stage>/final/prift_<stage>.json;
    for a run from before it did, trainer_state.json of the stage's newest checkpoint if kept, else
    the metric history of the stage's MLflow run (the pipeline logs every trainer log line there, by
    step) when `uri` is given; else {}."""
    summary = run.folder / stage / "final" / f"prift_{stage}.json"
    states = sorted((run.folder / stage / "checkpoints").glob("checkpoint-*/trainer_state.json"),
                    key=lambda p: int(re.sub(r"\D", "", p.parent.name) or 0))
    for source in ([summary] if summary.exists() else []) + states[-1:]:
        entries = json.loads(source.read_text()).get("log_history")
        if entries is None:
            continue
        history: dict[str, dict[int, float]] = {}
        for entry in entries:
            for key in keys:
                if key in entry and "step" in entry:
                    history.setdefault(key, {})[int(entry["step"])] = float(entry[key])
        return history, str(source.relative_to(run.folder))
    run_id = run.manifest.get("stages", {}).get(stage, {}).get("mlflow_run_id")
    if uri and run_id:
        from workflows.tracking import metric_histories

        try:
            return metric_histories(uri, run_id, list(keys)), f"MLflow run {run_id}"
        except Exception as e:  # a store that is gone or unreachable: the report is still written
            log.warning("report: no %s curves for %s from MLflow (%s: %s)", stage, run.folder.name,
                        type(e).__name__, e)
    return {}, f"none (no {stage.upper()} checkpoint kept and no MLflow run)"


def rl_history(run: Run, uri: str | None) -> tuple[dict[str, dict[int, float]], str]:
    """The RL stage's curves for the keys of `RL_CURVES` (see `stage_history`)."""
    return stage_history(run, "rl", RL_CURVES, uri)


def sft_history(run: Run, uri: str | None, base_nll: float | None) -> tuple[dict[str, dict[int, float]], str]:
    """The SFT stage's curves for the keys of `SFT_CURVES`: the training loss as logged (see
    `stage_history`), the held-out NLL from sft/heldout_curve.json (`sft.heldout_every`), which
    starts at step 0 from `base_nll`, the base model's own (every method starts from it)."""
    from prift.heldout import CURVE_FILE

    history, source = stage_history(run, "sft", ["loss"], uri)
    curve = run.folder / "sft" / CURVE_FILE
    if curve.exists():
        points = {int(k): float(v) for k, v in json.loads(curve.read_text()).items()}
        history["heldout_nll"] = ({0: base_nll} if base_nll is not None else {}) | points
        source += f" and sft/{CURVE_FILE}"
    return history, source
