"""The run's Ray: started once, by whoever needs it first, stopped by whoever started it.

`prift run` joins the cluster at `pipeline.ray_address` (or RAY_ADDRESS, which `ray job submit`
sets), else starts a local Ray. Preflight may need Ray before the pipeline does (to count the
cluster's GPUs), so both call `start_ray`, which starts it once; `ray_session` stops it at the end
only if it was not running when the session began (a caller's own Ray is left alone).
"""

from __future__ import annotations

import contextlib
import logging

log = logging.getLogger(__name__)


def start_ray(cfg) -> None:
    """Connect to the configured cluster, or start a local Ray, unless this process already has."""
    import ray

    if ray.is_initialized():
        return
    # The dashboard costs ~5 s at start; Ray Train needs it (its controller is watched through the
    # State API it serves, and warns every few seconds without it).
    res = cfg.pipeline.resources
    ray_train = max(res.sft.workers, res.rl.workers) > 1
    ray.init(address=cfg.pipeline.ray_address, include_dashboard=ray_train, log_to_driver=True,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})


def cluster_gpus(cfg) -> float:
    """GPUs in the run's Ray cluster (starting it if needed)."""
    import ray

    start_ray(cfg)
    return ray.cluster_resources().get("GPU", 0)


@contextlib.contextmanager
def ray_session():
    """Stop on exit the Ray that was started inside this block, if any."""
    import ray

    running = ray.is_initialized()
    try:
        yield
    finally:
        if not running and ray.is_initialized():
            ray.shutdown()
