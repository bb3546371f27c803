"""MLflow tracking with explicit run ids, so any process (the driver, a Ray worker) can log to a run.

Layout: one parent run per pipeline run (tags: method, model, seed, config hash, status),
one nested run per stage (params: the flattened stage config; metrics: training curves by step, eval
metrics), the eval summary also on the parent, so MLflow's compare view of parents is the method
table. Run ids live in the run directory's manifest: a resubmitted pipeline reattaches to them.

Tracking URI: `MLFLOW_TRACKING_URI` if set (a team server), else `sqlite:///<storage>/mlflow.db` with
artifacts under `<storage>/mlartifacts`; `mlflow ui --backend-store-uri <that uri>` shows the runs.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from transformers import TrainerCallback

log = logging.getLogger(__name__)


def tracking_uri(storage: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(storage / 'mlflow.db').resolve()}"


def flatten(value, prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}; lists by index; what MLflow params hold (strings <= 6000)."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out |= flatten(v, f"{prefix}{k}.")
        return out
    if isinstance(value, list) and value and isinstance(value[0], dict):
        out = {}
        for i, v in enumerate(value):
            out |= flatten(v, f"{prefix}{i}.")
        return out
    return {prefix.rstrip("."): str(value)[:6000]}


class Tracker:
    """A thin MLflow client bound to one experiment."""

    def __init__(self, uri: str, experiment: str, artifact_root: Path | None = None):
        import mlflow

        self.uri = uri
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            location = artifact_root.resolve().as_uri() if artifact_root and uri.startswith("sqlite") else None
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        else:
            self.experiment_id = found.experiment_id

    def run(self, run_id: str | None, name: str, tags: dict, parent: str | None = None) -> str:
        """Reattach to `run_id` if it exists, else create a run (nested under `parent`)."""
        if run_id:
            try:
                self.client.get_run(run_id)
                self.client.update_run(run_id, status="RUNNING")
                return run_id
            except Exception:
                log.warning("MLflow run %s not found in %s; starting a new one", run_id, self.uri)
        tags = {"mlflow.runName": name, **{k: str(v) for k, v in tags.items()}}
        if parent:
            tags["mlflow.parentRunId"] = parent
        return self.client.create_run(self.experiment_id, tags=tags, run_name=name).info.run_id

    def params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(run_id).data.params
        fresh = [Param(k, v) for k, v in flatten(params).items() if k not in existing]
        for i in range(0, len(fresh), 100):  # MLflow's batch limit
            self.client.log_batch(run_id, params=fresh[i : i + 100])

    def metrics(self, run_id: str, metrics: dict, step: int = 0) -> None:
        from mlflow.entities import Metric

        import time

        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(run_id, metrics=batch[i : i + 1000])

    def last_steps(self, run_id: str) -> dict[str, int]:
        """The last step logged for each metric of a run ({} for a new run)."""
        keys = self.client.get_run(run_id).data.metrics
        return {k: max(m.step for m in self.client.get_metric_history(run_id, k)) for k in keys}

    def tags(self, run_id: str, tags: dict) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, str(v))

    def artifact(self, run_id: str, path: Path, folder: str | None = None) -> None:
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), folder)
        elif path.exists():
            self.client.log_artifact(run_id, str(path), folder)

    def table(self, run_id: str, rows: list[dict], name: str) -> None:
        if rows:
            self.client.log_table(run_id, data={k: [r.get(k) for r in rows] for k in rows[0]}, artifact_file=name)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)


class MetricsCallback(TrainerCallback):
    """Trainer logs (loss, lr, PriFT weight statistics, GRPO rewards, ...) -> a stage's MLflow run, by step.

    A resumed stage trains again the steps between its checkpoint and the interruption, which the
    interrupted run had already logged; a metric is logged only for steps after the last one the
    run holds, so each curve has every step once."""

    def __init__(self, tracker: Tracker, run_id: str):
        self.tracker, self.run_id = tracker, run_id
        self.logged: dict[str, int] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.logged = self.tracker.last_steps(self.run_id)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            fresh = {k: v for k, v in logs.items() if state.global_step > self.logged.get(k, -1)}
            self.tracker.metrics(self.run_id, fresh, step=state.global_step)
