"""TRL's vLLM server for `rollout: vllm_server`: its GPUs, its process, started before GRPO and
stopped after it.

The server (`trl vllm-serve`, vLLM's OpenAI server in dev mode with TRL's weight-transfer endpoints)
runs on `server.tensor_parallel_size` GPUs of its own; the trainer sends it prompts and, after each
optimizer step, new weights over an NCCL group, so the trainer needs a GPU and both run on one node.

Which GPUs the server gets:
  in the pipeline (`prift run`)  the RL stage's Ray task and the server share one placement group
        of two bundles packed on one node (`server_placement`, opened by the driver): bundle 0 holds
        the trainer's `pipeline.resources.rl`, bundle 1 the server's GPUs. The trainer task starts
        the server as a Ray actor in bundle 1 (`ServerProcess`), which runs `trl vllm-serve` with the
        CUDA_VISIBLE_DEVICES Ray assigned to that actor. Ray hands those GPUs to no other task until
        the stage ends and the driver removes the group.
  on its own (`prift rl`, no placement group)  the trainer computes on the first visible GPU
        (cuda:0) and the server gets the next `tensor_parallel_size` visible ones.
GPU only: vLLM's server mode has no CPU path here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from common.errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VLLMServerConfig:
    """TRL's vLLM server for `rollout: vllm_server` (GPU only)."""

    host: str = "127.0.0.1"
    """Where the server listens."""
    port: int = 8000
    """Its HTTP port (TRL also uses `group_port` for the weight-sync NCCL group)."""
    start: bool = True
    """Start `trl vllm-serve` here (and stop it at the end); false: use a server already running."""
    tensor_parallel_size: int = 1
    """vLLM tensor parallelism: the GPUs a server started here gets. In the pipeline Ray reserves them
    with the trainer's on one node; on its own the server takes the visible GPUs after the trainer's
    (see the module docstring)."""
    startup_timeout_s: float = 600.0
    """How long to wait for the server's /health/ endpoint."""

TRAINER_BUNDLE, SERVER_BUNDLE = 0, 1
GROUP_PREFIX = "prift-vllm-server-"
"""Name prefix of the placement groups `server_placement` makes: how the trainer task tells its own
group from another one it may run in (Ray Train's)."""


def reserves_server_gpus(stage_cfg) -> bool:
    """Whether a stage (of any kind: only the RL stage's config has a rollout) starts a vLLM server
    whose GPUs Ray must reserve."""
    return getattr(stage_cfg, "rollout", None) == "vllm_server" and stage_cfg.server.start


def server_command(model: str, cfg) -> list[str]:
    return [
        str(Path(sys.executable).with_name("trl")), "vllm-serve", "--model", model, "--host", cfg.host,
        "--port", str(cfg.port), "--tensor-parallel-size", str(cfg.tensor_parallel_size),
    ]


def wait_healthy(url: str, proc: subprocess.Popen | None, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the vLLM server exited with status {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    raise TimeoutError(f"the vLLM server at {url} was not healthy within {timeout_s:.0f} s")


@contextlib.contextmanager
def server_placement(stage_cfg, res):
    """Driver side: Ray options for a training stage's task. With a server started by the stage, a
    placement group holding the trainer's resources and the server's GPUs on one node, reserved
    together (so two runs can never each hold half) and removed when the block ends; else none."""
    if not reserves_server_gpus(stage_cfg):
        yield {}
        return
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    trainer = {k: v for k, v in {"CPU": res.cpus, "GPU": res.gpus}.items() if v > 0}
    server = {"GPU": stage_cfg.server.tensor_parallel_size}
    group = placement_group([trainer, server], strategy="STRICT_PACK", name=GROUP_PREFIX + uuid.uuid4().hex[:8])
    try:
        ray.get(group.ready())
        log.info("RL stage: trainer %s and vLLM server %s reserved on one node", trainer, server)
        yield {"scheduling_strategy": PlacementGroupSchedulingStrategy(group,
                                                                       placement_group_bundle_index=TRAINER_BUNDLE)}
    finally:
        remove_placement_group(group)


class ServerProcess:
    """A Ray actor holding the server's GPUs; it runs the server process on the GPU ids Ray gave it."""

    def __init__(self, command: list[str], url: str, timeout_s: float):
        import ray

        self.gpus = [str(i) for i in ray.get_runtime_context().get_accelerator_ids()["GPU"]]
        self.command, self.url, self.timeout_s = command, url, timeout_s
        self.proc = None

    def start(self) -> list[str]:
        self.proc = _start(self.command, self.gpus)
        wait_healthy(self.url, self.proc, self.timeout_s)
        return self.gpus

    def stop(self) -> None:
        _stop(self.proc)


@contextlib.contextmanager
def vllm_server(model: str, cfg, enabled: bool, command: list[str] | None = None):
    """Run `command` (default: `trl vllm-serve` for `model`) for the duration of the block, on the
    server's GPUs (see the module docstring); a no-op when not enabled."""
    if not enabled:
        yield None
        return
    command = command or server_command(model, cfg)
    url = f"http://{cfg.host}:{cfg.port}/health"
    group = _own_placement_group()
    if group is None:
        proc = _start(command, _gpus_after_the_trainers(cfg.tensor_parallel_size))
        try:
            wait_healthy(url, proc, cfg.startup_timeout_s)
            yield proc
        finally:
            _stop(proc)
        return
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    actor = ray.remote(num_cpus=0, num_gpus=cfg.tensor_parallel_size, max_restarts=0)(ServerProcess).options(
        scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=SERVER_BUNDLE),
    ).remote(command, url, cfg.startup_timeout_s)
    try:
        gpus = ray.get(actor.start.remote())
        log.info("vLLM server: a Ray actor on the GPU(s) Ray reserved for it (%s), %s", ",".join(gpus), url)
        yield actor
    finally:
        with contextlib.suppress(Exception):  # the actor may be gone already; it is killed either way
            ray.get(actor.stop.remote(), timeout=120)
        ray.kill(actor)


def _own_placement_group():
    """The placement group `server_placement` made for the task running this, or None."""
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    from ray.util.placement_group import get_current_placement_group, placement_group_table

    group = get_current_placement_group()
    if group is None or not placement_group_table(group).get("name", "").startswith(GROUP_PREFIX):
        return None
    return group


def _gpus_after_the_trainers(count: int) -> list[str]:
    """Outside Ray: the `count` visible GPUs after the first, which the trainer computes on."""
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [i.strip() for i in visible.split(",") if i.strip()] if visible is not None else [
        str(i) for i in range(torch.cuda.device_count())]
    if len(ids) < 1 + count:
        raise InputError(
            f"rl.rollout: vllm_server needs {count} GPU(s) besides the trainer's, and {len(ids)} GPU(s) are visible "
            f"({visible or 'all'}); make more visible (CUDA_VISIBLE_DEVICES), or run it in the pipeline, which "
            "reserves them through Ray")
    return ids[1:1 + count]


def _start(command: list[str], gpus: list[str]) -> subprocess.Popen:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(gpus)}
    proc = subprocess.Popen(command, env=env, start_new_session=True)
    log.info("vLLM server: pid %d on GPU(s) %s", proc.pid, ",".join(gpus))
    return proc


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
