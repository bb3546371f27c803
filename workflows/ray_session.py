"""The run's Ray: started once, by whoever needs it first, stopped by whoever started it, and never
outliving the run.

`prift run` joins the cluster at `pipeline.ray_address` (or RAY_ADDRESS, which `ray job submit`
sets), else starts a local Ray. Preflight may need Ray before the pipeline does (to count the
cluster's GPUs), so both call `start_ray`, which starts it once; `ray_session` stops it at the end
only if it was not running when the session began (a caller's own Ray is left alone).

A local Ray started here is also handed to workflows/reaper.py, a small process that kills every
Ray process of the run the moment the driver is gone, kill -9 included (without it Ray's workers
outlive the driver by a second, its agents by a minute). The env vars of `ray_session(env)` (the
driver lease, common/lease.py) reach every task and Ray Train worker through Ray's runtime_env.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

REAPER_WAIT_S = 10
WORKER_QUIET = ("TRL currently supports vLLM versions",)
"""Starts of warnings that every worker process would print once (the demo printed 9 copies): the
workers ignore them (PYTHONWARNINGS), and the driver says each once (`_say_once`)."""
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # ray._private.runtime_env.constants
_env: dict[str, str] = {}
_reaper: subprocess.Popen | None = None


def start_ray(cfg) -> None:
    """Connect to the configured cluster, or start a local Ray, unless this process already has."""
    import ray

    if ray.is_initialized():
        return
    local = not (cfg.pipeline.ray_address or os.environ.get("RAY_ADDRESS"))
    before = _children() if local else set()
    if local:
        _start_reaper()
    # The dashboard costs ~5 s at start; Ray Train needs it (its controller is watched through the
    # State API it serves, and warns every few seconds without it).
    res = cfg.pipeline.resources
    ray_train = max(res.sft.workers, res.rl.workers) > 1
    ray.init(address=cfg.pipeline.ray_address, include_dashboard=ray_train, log_to_driver=True,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": _quiet_workers(), **_env}})
    _say_once()
    if local:
        _reap(_children() - before - {_reaper.pid})


def _quiet_workers() -> str:
    """PYTHONWARNINGS for the workers: the caller's filters, then ours (a message is matched by its start)."""
    return ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), *(f"ignore:{m}" for m in WORKER_QUIET)]))


def _say_once() -> None:
    """TRL's warning that this vLLM is outside the versions it was tested with, once, in the driver."""
    import importlib.util
    import warnings

    if importlib.util.find_spec("vllm") is None:
        return
    from trl.import_utils import is_vllm_available

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        is_vllm_available()
    for w in caught:
        if str(w.message).startswith(WORKER_QUIET):
            log.warning("%s (said once here for every Ray worker; colocated rollouts are checked by the "
                        "weight-sync probe before training)", w.message)


def ray_job_submission() -> str | None:
    """The submission id when this process is a driver started by `ray job submit`, else None.

    Ray's job supervisor starts the entrypoint with RAY_JOB_CONFIG_JSON_ENV_VAR (the job's
    runtime_env and metadata, which ray.init merges into the job) in its environment; nothing else
    sets it. The entrypoint's working directory is then the job's copy of `--working-dir`."""
    value = os.environ.get(JOB_CONFIG_ENV)
    if value is None:
        return None
    try:
        metadata = json.loads(value).get("metadata") or {}
    except (ValueError, AttributeError):
        metadata = {}
    return str(metadata.get("job_submission_id") or "unknown id")


def cluster_gpus(cfg) -> float:
    """GPUs in the run's Ray cluster (starting it if needed)."""
    import ray

    start_ray(cfg)
    return ray.cluster_resources().get("GPU", 0)


def node_gpus(cfg) -> list[float]:
    """GPUs of each live node of the run's Ray cluster (starting it if needed)."""
    import ray

    start_ray(cfg)
    return [node["Resources"].get("GPU", 0) for node in ray.nodes() if node["Alive"]]


@contextlib.contextmanager
def ray_session(env: dict[str, str] | None = None):
    """Within the block, a Ray started by `start_ray` passes `env` to every worker; on exit, a Ray
    started inside the block is shut down and its leftover processes reaped."""
    import ray

    global _env
    running = ray.is_initialized()
    _env = dict(env or {})
    try:
        yield
    finally:
        _env = {}
        if not running and ray.is_initialized():
            ray.shutdown()
        _stop_reaper()


def _children() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children()}


def _start_reaper() -> None:
    """The reaper reads a pipe only this process writes: its end is the end of the run."""
    global _reaper
    script = Path(__file__).with_name("reaper.py")
    _reaper = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, start_new_session=True)


def _reap(pids: set[int]) -> None:
    log.info("local Ray processes %s: reaped when this driver ends", sorted(pids))
    _reaper.stdin.write((json.dumps(sorted(pids)) + "\n").encode())
    _reaper.stdin.flush()


def _stop_reaper() -> None:
    """Close the pipe (the reaper then kills what is left) and wait for it to finish."""
    global _reaper
    if _reaper is None:
        return
    _reaper.stdin.close()
    try:
        _reaper.wait(REAPER_WAIT_S)
    except subprocess.TimeoutExpired:
        log.warning("the Ray reaper (pid %d) did not finish in %d s", _reaper.pid, REAPER_WAIT_S)
    _reaper = None
