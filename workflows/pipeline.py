"""The pipeline: prior -> sft -> rl -> eval for every (method, seed), as Ray tasks, resumable, in MLflow.

    prift run CONFIG [--set a.b=c]                     # a local Ray, or RAY_ADDRESS's cluster
    ray job submit --working-dir . -- python -m workflows.run CONFIG

setup:   workflows/preflight.py, the same checks as `prift validate`: the config (every bad field at
         once), the model, the SFT data, every eval task, the RL prompts (with the eval-overlap
         check) and the GPUs asked for -- all before any model weights load.
stages:  each is a Ray task with the resources `pipeline.resources` declares, calling the same stage
         function as the single-stage commands:
           prior  once per sweep (shared by every method and seed; keyed by its inputs)
           sft    per run: PriFT/SFT from the base model, resumes from its newest checkpoint
           rl     per run: GRPO from sft/final
           (sft and rl with `workers: N > 1` train data-parallel on N Ray Train workers instead:
            workflows/distributed.py)
           eval   one task per (model, benchmark): base once per sweep, sft and rl per run
resume:  the run directory's manifest says what is done (workflows/rundir.py); MLflow runs are
         reattached through the ids it stores (workflows/tracking.py).
MLflow:  a parent run `<method> · seed <n>` per run and `base` for the base model's scores; the SFT
         data, RL prompts and eval sets as dataset inputs of the stage runs that use them (and of
         the parent); RL alerts as parent tags and metrics.
Prints a method x task table and how to open MLflow on the runs at the end.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import yaml

from common import atomic
from common.errors import RunsFailed
from common.lease import DriverLease, check_driver, watch_driver
from common.checkpoints import DriverWatch
from evals.metrics import pick
from rl.vllm_server import server_placement
from workflows.config import RunConfig
from workflows.preflight import preflight
from workflows.ray_session import ray_session, start_ray
from workflows.rundir import Manifest, config_hash, rl_signal, run_label, run_name
from workflows.tracking import MetricsCallback, Tracker, dataset_input, rows_digest, source_tags, tracking_uri, ui_hint

log = logging.getLogger(__name__)

HELDOUT = "heldout_nll"  # beside the tasks in a model's results: its held-out SFT loss (prift/heldout.py)


# ---------------------------------------------------------------- stage tasks (run in Ray workers)


def _tracker(tracking: dict) -> Tracker:
    return Tracker(tracking["uri"], tracking["experiment"])


def _worker_logging() -> None:
    """Ray workers start with Python's default (warnings only); show the stages' progress lines.
    Every stage task calls this first, so it also starts the watch on the driver (common/lease.py):
    a task whose driver is gone ends within a fraction of a second."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    watch_driver()


def prior_task(cfg: RunConfig, prior_dir: str) -> str:
    _worker_logging()
    from prift.prior import run_prior

    return str(run_prior(cfg.model, cfg.data, cfg.prior, Path(prior_dir)))


def sft_task(cfg: RunConfig, out_dir: str, prior_dir: str, tracking: dict) -> str:
    _worker_logging()
    from prift.sft import run_sft

    callbacks = [DriverWatch(), MetricsCallback(_tracker(tracking), tracking["run_id"])]
    return str(run_sft(cfg.model, cfg.data, cfg.prior, cfg.sft, out_dir, prior_dir=prior_dir, callbacks=callbacks,
                       sharding=cfg.pipeline.resources.sft.sharding, heldout=cfg.heldout))


def rl_task(cfg: RunConfig, model: str, out_dir: str, tracking: dict) -> str:
    _worker_logging()
    from rl.grpo import run_rl

    callbacks = [DriverWatch(), MetricsCallback(_tracker(tracking), tracking["run_id"])]
    return str(run_rl(model, cfg.rl, out_dir, eval_tasks=cfg.eval.tasks, callbacks=callbacks,
                      sharding=cfg.pipeline.resources.rl.sharding))


def eval_task(cfg: RunConfig, model: str, task_index: int, out_dir: str, tracking: dict) -> dict:
    _worker_logging()
    from evals.stage import run_eval

    spec = cfg.eval.tasks[task_index]
    metrics = run_eval(model, replace(cfg.eval, tasks=[spec]), out_dir, write_summary=False)[spec.name]
    check_driver()
    tracker = _tracker(tracking)
    tracker.metrics(tracking["run_id"], {f"{spec.name}/{k}": v for k, v in metrics.items()})
    rows = [json.loads(line) for line in (Path(out_dir) / spec.name / "samples.jsonl").read_text().splitlines()[:200]]
    tracker.table(tracking["run_id"], rows, f"samples/{spec.name}.json")
    return metrics


def heldout_task(cfg: RunConfig, model: str, out_dir: str, tracking: dict) -> dict:
    _worker_logging()
    from prift.heldout import heldout_nll

    metrics = heldout_nll(model, cfg.heldout, out_dir)
    check_driver()
    _tracker(tracking).metrics(tracking["run_id"], metrics)
    return metrics


# ---------------------------------------------------------------- the driver


def _remote(fn, res):
    import ray

    @functools.wraps(fn)
    def task(*args):
        _use_assigned_cpus()
        return fn(*args)

    return ray.remote(num_cpus=res.cpus, num_gpus=res.gpus, max_retries=0)(task)


def _use_assigned_cpus() -> None:
    """Size torch's thread pool to this task's CPUs. Ray sets OMP_NUM_THREADS from each task's CPUs, but
    torch reads it once per worker process, so a worker whose first task had 1 CPU (an eval) ran every
    later 2-CPU task (SFT, GRPO) on one thread: 40-50% slower steps in the demo. vLLM's CPU worker
    replaces `torch.set_num_threads` with a no-op once it starts in a process (its init_device), which
    would pin the count of whichever task started it, so this calls torch's own binding."""
    import ray
    import torch

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    if cpus:
        torch._C.set_num_threads(max(1, math.floor(cpus)))


def _remote_on_workers(fn, res, name: str, storage: Path):
    """A Ray task that runs `fn` on `res.workers` Ray Train workers; it holds no resources itself
    (the workers do), so it cannot starve them of the CPUs it would otherwise sit on."""
    import ray

    from workflows.distributed import train_on_workers

    def coordinate(*args):
        _worker_logging()
        train_on_workers(fn, args, res, name, storage)

    return ray.remote(num_cpus=0, max_retries=0)(coordinate)


def dataset_inputs(cfg: RunConfig) -> dict:
    """The sweep's MLflow dataset inputs, read as the stages read them, with content digests:
    {"sft": the SFT data, "rl": the RL prompts (training), "eval": {task: its evaluated examples}
    (evaluation)}, each only where its stage runs. The SFT digest is the data key of the prior's
    cache (`fingerprint_rows`), the others `rows_digest` of the rows."""
    on, out = cfg.pipeline.stages, {"eval": {}}
    if on.sft:
        from prift.data import fingerprint_rows, load_rows

        rows = load_rows(cfg.data)
        path = cfg.data.path
        if Path(path).exists():
            source_type, source = "local", {"uri": Path(path).resolve().as_uri()}
        elif path.startswith("reasoning_gym:"):
            source_type, source = "code", {"generator": path}
        else:
            source_type, source = "hugging_face", {"path": path, "split": cfg.data.split}
        out["sft"] = dataset_input(Path(path).name if source_type == "local" else path,
                                   fingerprint_rows(rows, cfg.data),
                                   source_type, source, len(rows), "training")
    if on.rl:
        from rl.prompts import build_rows

        rows = build_rows(cfg.rl.prompts, cfg.eval.tasks)
        out["rl"] = dataset_input("rl_prompts", rows_digest(rows), "code",
                                  asdict(cfg.rl.prompts), len(rows), "training")
    if on.eval:
        from evals.tasks import TASKS, load_examples

        for spec in cfg.eval.tasks:
            examples = [asdict(e) for e in load_examples(spec)]
            source = asdict(spec) | {"source": spec.source or TASKS[spec.name].default_source}
            out["eval"][spec.name] = dataset_input(spec.name, rows_digest(examples), "code", source,
                                                   len(examples), "evaluation")
    return out


class Pipeline:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.root = Path(cfg.pipeline.storage) / cfg.pipeline.experiment
        self.root.mkdir(parents=True, exist_ok=True)
        self.uri = tracking_uri(Path(cfg.pipeline.storage))
        self.tracker = Tracker(self.uri, cfg.pipeline.experiment, Path(cfg.pipeline.storage) / "mlartifacts",
                               source=source_tags(Path(__file__)))
        self.res = cfg.pipeline.resources
        self.datasets: dict = {"eval": {}}

    def tracking(self, run_id: str) -> dict:
        return {"uri": self.uri, "experiment": self.cfg.pipeline.experiment, "run_id": run_id}

    def run(self) -> dict:
        import ray

        cfg = self.cfg
        on = cfg.pipeline.stages
        self.datasets = dataset_inputs(cfg)  # once, before the runs' threads start
        prior_dir = self.root / "prior"
        if on.prior and any(rule.needs_prior for rule in cfg.rules().values()):
            log.info("prior: scoring the SFT data once for the whole sweep")
            ray.get(_remote(prior_task, self.res.prior).remote(cfg, str(prior_dir)))
        base = self.eval_base() if on.eval and "base" in cfg.pipeline.eval_models else {}
        runs = [(m, s) for m in cfg.pipeline.methods for s in cfg.pipeline.seeds]
        with ThreadPoolExecutor(len(runs)) as pool:  # Ray decides how many run at once (resources)
            results = list(pool.map(lambda ms: self.run_one(*ms, prior_dir), runs))
        return {"base": base, "runs": dict(zip([f"{m}/s{s}" for m, s in runs], results))}

    def eval_base(self) -> dict:
        """The base model is scored once per sweep, in <experiment>/base/; its scores are on the
        `base` parent run only (eval/base/...), never on a method's parent."""
        folder = self.root / "base"
        folder.mkdir(exist_ok=True)
        manifest = Manifest(folder)
        parent = self.tracker.run(manifest.data.get("mlflow_run_id"), "base",
                                  {"method": "base", "model": self.cfg.model})
        manifest.data["mlflow_run_id"] = parent
        manifest.save()
        self.tracker.inputs(parent, list(self.datasets["eval"].values()))
        return self.outcome(manifest, parent, lambda: {"base": self.stage_eval(manifest, parent, "base",
                                                                               self.cfg.model, folder, self.cfg)})

    def run_one(self, method: str, seed: int, prior_dir: Path) -> dict:
        cfg = self.cfg.for_run(method, seed)
        digest = config_hash({k: v for k, v in asdict(cfg).items() if k not in ("pipeline", "output_dir")})
        name = run_name(method, cfg.model, seed, digest)
        folder = self.root / name
        folder.mkdir(exist_ok=True)
        atomic.write_text(folder / "config.yaml", yaml.safe_dump(asdict(cfg), sort_keys=False))
        manifest = Manifest(folder)
        tags = {"method": method, "model": cfg.model, "seed": seed, "config_hash": digest,
                "run_dir": name, "status": "running"}
        parent = self.tracker.run(manifest.data.get("mlflow_run_id"), f"{method} · seed {seed}", tags)
        manifest.data.update(run_name=name, config_hash=digest, mlflow_run_id=parent)
        manifest.save()
        self.tracker.params(parent, {k: v for k, v in asdict(cfg).items() if k != "pipeline"})
        used = [self.datasets[s] for s in ("sft", "rl") if s in self.datasets]
        self.tracker.inputs(parent, used + list(self.datasets["eval"].values()))
        result = self.outcome(manifest, parent, lambda: self.stages(cfg, manifest, parent, folder, prior_dir))
        if result["status"] == "done":
            self.tracker.artifact(parent, folder / "config.yaml")
            self.tracker.artifact(parent, manifest.path)
        result["rl_signal"] = rl_signal(folder)
        return result

    def outcome(self, manifest: Manifest, parent: str, work) -> dict:
        """Run `work()` (-> {model: per-task metrics}) for one parent run and record how it ended:
        {status: done, models} or {status: failed, stage, error}; the manifest and the MLflow parent
        say the same (FINISHED or FAILED, never left RUNNING). Interrupts are recorded and re-raised."""
        try:
            models = work()
        except BaseException as e:
            stages = manifest.data["stages"]
            stage = next((n for n, st in stages.items() if st.get("status") == "failed"), "setup")
            result = {"status": "failed", "stage": stage, "error": failure_reason(e), "models": {}}
            manifest.data.update(status="failed", failed_stage=stage, error=result["error"])
            manifest.save()
            self.tracker.tags(parent, {"status": "failed", "failed_stage": stage, "error": result["error"][:500]})
            self.tracker.finish(parent, "FAILED")
            if not isinstance(e, Exception):
                raise
            log.error("%s failed in stage %s: %s", manifest.path.parent.name, stage, result["error"])
            return result
        manifest.data.update(status="done", failed_stage=None, error=None)
        manifest.save()
        self.tracker.tags(parent, {"status": "finished"})
        self.tracker.finish(parent)
        return {"status": "done", "models": models}

    def stages(self, cfg, manifest: Manifest, parent: str, folder: Path, prior_dir: Path) -> dict:
        on, model, results = cfg.pipeline.stages, cfg.model, {}
        if on.sft:
            digest = config_hash([cfg.model, asdict(cfg.data), asdict(cfg.prior), asdict(cfg.sft)])
            self.train_stage(manifest, parent, "sft", digest, folder, cfg.sft,
                             sft_task, cfg, str(folder / "sft"), str(prior_dir))
            model = str(folder / "sft" / "final")
        if on.rl:
            digest = config_hash([model, manifest.stage("sft").get("hash"), asdict(cfg.rl), asdict(cfg.eval)["tasks"]])
            self.train_stage(manifest, parent, "rl", digest, folder, cfg.rl,
                             rl_task, cfg, model, str(folder / "rl"))
        if on.eval:
            trained = {"sft": folder / "sft" / "final", "rl": folder / "rl" / "final"}
            for name in ("sft", "rl"):
                if name in cfg.pipeline.eval_models and getattr(on, name):
                    results[name] = self.stage_eval(manifest, parent, name, str(trained[name]), folder, cfg)
        return results

    def train_stage(self, manifest: Manifest, parent: str, stage: str, digest: str,
                    folder: Path, stage_cfg, fn, *args) -> None:
        """Run a training stage's function `fn(*args, tracking)` as a Ray task, or on Ray Train
        workers when its resources ask for several, unless the manifest says it is done with this
        hash and <stage>/final exists."""
        import ray

        final = folder / stage / "final"
        if manifest.is_done(stage, digest, (final / "config.json").exists()):
            return
        run_id = self.stage_run(manifest, stage, parent, stage_cfg)
        self.tracker.inputs(run_id, [self.datasets[stage]] if stage in self.datasets else [])
        manifest.mark(stage, status="running", hash=digest, error=None)
        res = getattr(self.res, stage)
        if res.workers > 1:
            task = _remote_on_workers(fn, res, f"{folder.name}-{stage}", self.root / "ray_train")
        else:
            task = _remote(fn, res)
        with self.recorded(manifest, stage, run_id), server_placement(stage_cfg, res) as placement:
            ray.get(task.options(**placement).remote(*args, self.tracking(run_id)))
        manifest.mark(stage, status="done", outputs={"final": str(final)})
        signal = rl_signal(folder) if stage == "rl" else None
        completions = folder / stage / "checkpoints" / "completions"
        if completions.is_dir():  # GRPO's sampled completions (parquet), off the console
            self.tracker.artifact(run_id, completions, "completions")
        if signal:
            for run in (run_id, parent):
                self.tracker.tags(run, alert_tags(signal))
                self.tracker.metrics(run, {ALERT_METRIC: float(not signal["ok"])})
        self.tracker.finish(run_id)

    @contextlib.contextmanager
    def recorded(self, manifest: Manifest, stage: str, run_id: str):
        """A stage that raises is `failed` in the manifest, with its reason, and FAILED in MLflow."""
        try:
            yield
        except BaseException as e:
            manifest.mark(stage, status="failed", error=failure_reason(e))
            self.tracker.tags(run_id, {"error": failure_reason(e)[:500]})
            self.tracker.finish(run_id, "FAILED")
            raise

    def stage_run(self, manifest: Manifest, stage: str, parent: str, stage_cfg) -> str:
        run_id = self.tracker.run(manifest.stage(stage).get("mlflow_run_id"), stage, {"stage": stage}, parent=parent)
        manifest.mark(stage, mlflow_run_id=run_id)
        self.tracker.params(run_id, asdict(stage_cfg))
        return run_id

    def stage_eval(self, manifest: Manifest, parent: str, name: str, model: str, folder: Path, cfg) -> dict:
        """Fan out one Ray task per benchmark; returns {task: metrics} and logs them on the parent."""
        import ray

        from evals.stage import summarize

        stage = f"eval_{name}"
        digest = config_hash([model, manifest.stage("rl" if name == "rl" else "sft").get("hash"), asdict(cfg.eval)]
                             + ([asdict(cfg.heldout)] if cfg.heldout else []))
        out = folder / "eval" / name
        names = [t.name for t in cfg.eval.tasks]
        if not manifest.is_done(stage, digest, (out / "summary.json").exists()):
            run_id = self.stage_run(manifest, stage, parent, cfg.eval)
            self.tracker.inputs(run_id, [self.datasets["eval"][n] for n in names if n in self.datasets["eval"]])
            manifest.mark(stage, status="running", hash=digest)
            task = _remote(eval_task, self.res.eval)
            with self.recorded(manifest, stage, run_id):
                pending = [task.remote(cfg, model, i, str(out), self.tracking(run_id)) for i in range(len(names))]
                if cfg.heldout:
                    pending.append(_remote(heldout_task, self.res.eval).remote(cfg, model, str(out),
                                                                              self.tracking(run_id)))
                done = ray.get(pending)
            summary = summarize(model, out, names, done[-1] if cfg.heldout else None)
            self.tracker.metrics(run_id, {f"{d}/{k}": v for d, m in summary["domains"].items() for k, v in m.items()})
            manifest.mark(stage, status="done", outputs={"summary": str(out / "summary.json")})
            self.tracker.finish(run_id)
        else:
            summary = json.loads((out / "summary.json").read_text())
        self.tracker.metrics(parent,
                             {f"eval/{name}/{t}/{k}": v for t, m in summary["tasks"].items() for k, v in m.items()}
                             | {f"eval/{name}/{k}": v for k, v in summary.get("heldout", {}).items()})
        return summary["tasks"] | ({HELDOUT: summary["heldout"]} if "heldout" in summary else {})


def run_pipeline(cfg: RunConfig) -> dict:
    """Preflight, then the sweep, holding its lock and heartbeat (common/lease.py) throughout."""
    lease = DriverLease(Path(cfg.pipeline.storage) / cfg.pipeline.experiment)
    with ray_session(lease.ticket()):
        preflight(cfg)  # the same checks as `prift validate`, before any compute
        with lease:
            start_ray(cfg)
            pipeline = Pipeline(cfg)
            results = pipeline.run()
        print(scores_table(results, [t.name for t in cfg.eval.tasks]))
        print("\n" + run_summary(results))
        print("\n" + ui_hint(pipeline.uri, pipeline.tracker.experiment_id))
        failed = [name for name, r in [("base", results["base"]),
                                       *results["runs"].items()] if r.get("status") == "failed"]
        if failed:
            raise RunsFailed(f"{len(failed)} run(s) failed: {', '.join(failed)} (see the summary above)")
        return results


ALERT_TAG = "alert.rl_no_learning_signal"
ALERT_METRIC = "alert/rl_no_learning_signal"
"""1 on an RL run and its parent when the run had nothing to learn from (rl/learning_signal.py), else 0."""


def alert_tags(signal: dict) -> dict:
    """The learning-signal alert as tags: `true`/`false`, and the reason when true."""
    if signal["ok"]:
        return {ALERT_TAG: "false", "rl_signal": "ok"}
    return {ALERT_TAG: "true", f"{ALERT_TAG}.reason": signal["reason"][:500], "rl_signal": "none"}


def failure_reason(e: BaseException) -> str:
    """The user-facing reason: a Ray task error's own cause, type and first lines of its message."""
    cause = getattr(e, "cause", None) or e
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {' '.join(text[:3])[:1000]}" if text else type(cause).__name__


def run_summary(results: dict) -> str:
    """One line per run: done, or failed with the stage and the reason."""
    lines = ["Runs:"]
    for name, r in [("base", results["base"]), *results["runs"].items()]:
        if not r:
            continue
        if r["status"] == "failed":
            lines.append(f"  {name}: FAILED in {r['stage']}: {r['error']}")
        else:
            signal = r.get("rl_signal")
            note = f" (rl: no learning signal: {signal['reason']})" if signal and not signal["ok"] else ""
            lines.append(f"  {name}: done{note}")
    return "\n".join(lines)


def scores_table(results: dict, tasks: list[str]) -> str:
    """Method x task: Avg@n of the last trained model of each run (rl, else sft), and the base."""
    rows = []
    if results["base"].get("models"):
        rows.append(("base", results["base"]["models"]["base"]))
    for run, result in results["runs"].items():
        models = result.get("models", {})
        stage = "rl" if "rl" in models else "sft"
        if models.get(stage):
            rows.append((f"{run} ({run_label(stage, result.get('rl_signal'))})", models[stage]))
    if not rows:
        return "(no evaluation ran)"

    def avg(metrics: dict) -> str:  # strict (primary) / flexible where a task has both
        if "heldout_nll" in metrics:
            return f"{metrics['heldout_nll']:.4f}"
        keys = [k for k in (pick(metrics, "avg_at_n"), pick(metrics, "avg_at_n_flexible")) if k]
        return " / ".join(f"{100 * metrics[k]:.1f}" for k in keys) or "-"

    if any(HELDOUT in m for _, m in rows):
        tasks = [*tasks, HELDOUT]

    def size(task: str) -> str:  # problems x samples behind every cell of the column (held-out: tokens)
        metrics = next((m[task] for _, m in rows if task in m), {})
        if "heldout_tokens" in metrics:
            return f"{metrics['heldout_tokens']} tok"
        return f"n={metrics['num_problems']}x{metrics['num_samples']}" if "num_problems" in metrics else ""

    width = max(len(r[0]) for r in rows)
    lines = [f"{'model':{width}s} | " + " | ".join(f"{t:>13s}" for t in tasks),
             f"{'':{width}s} | " + " | ".join(f"{size(t):>13s}" for t in tasks)]
    lines.append("-" * len(lines[0]))
    for label, per_task in rows:
        lines.append(f"{label:{width}s} | " + " | ".join(f"{avg(per_task.get(t, {})):>13s}" for t in tasks))
    heldout = f"; {HELDOUT}: nats per token of held-out SFT demonstrations (lower is better)" * (HELDOUT in tasks)
    return ("Avg@n (%) per task (n = problems x samples); math: strict (primary) / flexible" + heldout + "\n"
            + "\n".join(lines))

