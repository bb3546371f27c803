"""MLflow tracking with explicit run ids, so any process (the driver, a Ray worker) can log to a run.

Layout: one parent run per pipeline run (named `<method> · seed <n>`; tags: method, model, seed,
config hash, status), one nested run per stage (params: the flattened stage config; metrics:
training curves by step, eval metrics), the eval summary also on the parent, so MLflow's compare
view of parents is the method table. Run ids live in the run directory's manifest: a resubmitted
pipeline reattaches to them. Every run the driver creates carries the source tags of the code that
created it (`source_tags`); datasets are logged as MLflow dataset inputs with content digests
(`dataset_input`).

Tracking URI: `MLFLOW_TRACKING_URI` if set (a team server), else `sqlite:///<storage>/mlflow.db` with
artifacts under `<storage>/mlartifacts`; `ui_hint` says how to look at them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import threading
from pathlib import Path

from transformers import TrainerCallback

from common.digest import json_digest

log = logging.getLogger(__name__)

EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
"""The experiment tag MLflow's UI reads for an experiment's kind (its value for classic model
training, as the UI's own kind selector writes it). MLflow 3.17.2's UI decides the landing page
from its "GenAI / Model training" switch instead (`workflowType` in the URL, else the browser's
saved choice, GenAI by default), so `ui_hint` prints a URL that selects model training."""


def tracking_uri(storage: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(storage / 'mlflow.db').resolve()}"


def ui_hint(uri: str, experiment_id: str) -> str:
    """How to open the experiment on its runs list: the `mlflow ui` command for a sqlite store (the
    mlflow next to this Python, relative to the current folder when it is inside it, e.g.
    `.venv/bin/mlflow` from the repository root), then the URL."""
    page = f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    if not uri.startswith("sqlite:///"):
        return f"MLflow: open {uri.rstrip('/')}/{page}"
    db = Path(uri.removeprefix("sqlite:///")).resolve()
    mlflow = Path(sys.executable).parent / "mlflow"
    with_cwd = Path.cwd().resolve()
    shown = mlflow.relative_to(with_cwd) if mlflow.is_relative_to(with_cwd) else mlflow
    return (f"MLflow: {shown} ui --backend-store-uri sqlite:///{db}\n"
            f"        then open http://127.0.0.1:5000/{page}")


def _git(folder: Path, *args: str) -> str | None:
    """A git command's output in `folder`, or None when git is missing or says no (not a repository)."""
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def source_tags(entry: Path) -> dict[str, str]:
    """MLflow's source tags for runs created by the code in `entry` (a file): its path, LOCAL, and
    the commit, branch, remote URL and dirty flag of the git repository holding it, each only where
    git can tell (no git, or no repository: no git tags)."""
    entry = entry.resolve()
    tags = {"mlflow.source.name": str(entry), "mlflow.source.type": "LOCAL"}
    commit = _git(entry.parent, "rev-parse", "HEAD")
    if not commit:
        return tags
    tags["mlflow.source.git.commit"] = commit
    branch = _git(entry.parent, "rev-parse", "--abbrev-ref", "HEAD")
    if branch and branch != "HEAD":  # HEAD: detached
        tags["mlflow.source.git.branch"] = branch
    remote = _git(entry.parent, "config", "--get", "remote.origin.url")
    if remote:
        tags["mlflow.source.git.repoURL"] = remote
    status = _git(entry.parent, "status", "--porcelain", "--untracked-files=no")
    if status is not None:
        tags["mlflow.source.git.dirty"] = str(bool(status)).lower()
    return tags


def rows_digest(rows: list[dict]) -> str:
    """Content hash of rows (each as sorted-key JSON, in order), as `prift.data.fingerprint_rows`
    hashes the SFT rows (common/digest.py): the same rows give the same digest in every run."""
    return json_digest(*rows)


DIGEST_CHARS = 16
"""MLflow stores a dataset digest in at most 36 characters: the first 16 hex digits of a sha256."""


def dataset_input(name: str, digest: str, source_type: str, source: dict, num_rows: int, context: str):
    """An MLflow dataset input (name, content digest, where it came from, its row count) used in
    `context` (training, evaluation): what the runs list's Dataset column shows."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(name=name, digest=digest[:DIGEST_CHARS], source_type=source_type,
                      source=json.dumps(source, sort_keys=True, default=str),
                      profile=json.dumps({"num_rows": num_rows}))
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])


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


def metric_histories(uri: str, run_id: str, keys: list[str]) -> dict[str, dict[int, float]]:
    """{key: {step: value}} of the given metrics of a run; keys the run never logged are left out."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    logged = client.get_run(run_id).data.metrics
    return {k: {m.step: m.value for m in client.get_metric_history(run_id, k)} for k in keys if k in logged}


class Tracker:
    """A thin MLflow client bound to one experiment (created, or tagged, with `EXPERIMENT_KIND`).
    Runs it creates carry `source` (MLflow's source and git tags, see `source_tags`)."""

    def __init__(self, uri: str, experiment: str, artifact_root: Path | None = None, source: dict | None = None):
        import mlflow

        self.uri = uri
        self.source = source or {}
        self._inputs_lock = threading.Lock()
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        if artifact_root is None and uri.startswith("sqlite:///"):
            # beside the database, never MLflow's default ./mlruns in whatever folder the process runs in
            artifact_root = Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts"
        if found is None:
            location = artifact_root.resolve().as_uri() if artifact_root and uri.startswith("sqlite") else None
            self.experiment_id = self.client.create_experiment(experiment,
                                                               artifact_location=location, tags=EXPERIMENT_KIND)
        else:
            self.experiment_id = found.experiment_id
            for key, value in EXPERIMENT_KIND.items():
                if key not in found.tags:  # an experiment made before, or by another tool: a kind set in the UI is kept
                    self.client.set_experiment_tag(self.experiment_id, key, value)

    def run(self, run_id: str | None, name: str, tags: dict, parent: str | None = None) -> str:
        """Reattach to `run_id` if it exists (renamed to `name`, given the source tags it lacks),
        else create a run (nested under `parent`)."""
        if run_id:
            try:
                existing = self.client.get_run(run_id).data.tags
            except Exception:
                log.warning("MLflow run %s not found in %s; starting a new one", run_id, self.uri)
            else:
                self.client.update_run(run_id, status="RUNNING", name=name)
                self.tags(run_id, {k: v for k, v in self.source.items() if k not in existing})
                return run_id
        tags = {"mlflow.runName": name, **self.source, **{k: str(v) for k, v in tags.items()}}
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

    def inputs(self, run_id: str, datasets: list) -> None:
        """Dataset inputs (`dataset_input`); logging the same one to a run again adds nothing. One
        at a time: MLflow's SQL store checks that a dataset is new, then inserts it, so the
        pipeline's threads logging the same dataset to their runs at once would collide."""
        if datasets:
            with self._inputs_lock:
                self.client.log_inputs(run_id, datasets=datasets)

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
