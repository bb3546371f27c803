"""TRL's vLLM server for `rollout: vllm_server`, started before GRPO and stopped after it.

The server (`trl vllm-serve`, vLLM's OpenAI server in dev mode with TRL's weight-transfer endpoints)
runs on GPUs of its own (`server.gpus` -> CUDA_VISIBLE_DEVICES); the trainer sends it prompts and,
after each optimizer step, new weights over an NCCL group. The Ray pipeline runs this inside an
actor that holds those GPUs. GPU only: vLLM's server mode has no CPU path here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)


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
def vllm_server(model: str, cfg, enabled: bool):
    """Run `trl vllm-serve` for the duration of the block (a no-op when not enabled)."""
    if not enabled:
        yield None
        return
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": cfg.gpus}
    proc = subprocess.Popen(server_command(model, cfg), env=env, start_new_session=True)
    log.info("vLLM server: pid %d on GPUs %s, %s:%d", proc.pid, cfg.gpus, cfg.host, cfg.port)
    try:
        wait_healthy(f"http://{cfg.host}:{cfg.port}/health", proc, cfg.startup_timeout_s)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
