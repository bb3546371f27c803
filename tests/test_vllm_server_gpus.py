"""The `vllm_server` rollout's GPUs come from Ray: a placement group holds the trainer's GPU and the
server's together, the server runs with the GPU id Ray gave its actor, and no other task gets
either while the stage runs. On a CPU Ray cluster that declares 2 GPUs (Ray's accounting is the
same for declared GPUs); a tiny HTTP server stands in for `trl vllm-serve`."""

import socket
import sys

import pytest

from common.errors import InputError
from rl.grpo import RLStageConfig
from rl.vllm_server import VLLMServerConfig, _gpus_after_the_trainers, server_placement, vllm_server
from workflows.config import Resources, RunConfig, from_dict

# Writes the CUDA_VISIBLE_DEVICES it was started with, then answers /health like the real server.
FAKE_SERVER = """
import http.server, os, sys
port, out = int(sys.argv[1]), sys.argv[2]
with open(out + ".tmp", "w") as f:
    f.write(os.environ["CUDA_VISIBLE_DEVICES"])
os.rename(out + ".tmp", out)
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""


@pytest.fixture(scope="module")
def two_gpus():
    import ray

    if ray.is_initialized():
        pytest.skip("needs a Ray of its own (one is already running in this process)")
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_server_runs_on_the_gpu_ray_reserved_and_no_other_task_gets_it(two_gpus, tmp_path):
    ray = two_gpus
    port = free_port()
    rl = RLStageConfig(rollout="vllm_server", server=VLLMServerConfig(port=port, startup_timeout_s=60))
    seen = tmp_path / "server_cuda_visible_devices"
    command = [sys.executable, "-c", FAKE_SERVER, str(port), str(seen)]

    def trainer():
        with vllm_server("unused-model", rl.server, True, command=command):
            return ray.get_runtime_context().get_accelerator_ids()["GPU"], seen.read_text()

    with server_placement(rl, Resources(cpus=1, gpus=1)) as placement:
        own, server = ray.get(ray.remote(num_cpus=1, num_gpus=1)(trainer).options(**placement).remote(), timeout=120)
        assert len(own) == 1 and server in ("0", "1") and {own[0], server} == {"0", "1"}
        third = ray.remote(num_cpus=0, num_gpus=1)(lambda: "ran").remote()
        ready, _ = ray.wait([third], timeout=3)
        assert ready == []  # both GPUs stay reserved for the stage, server included
    assert ray.get(third, timeout=60) == "ran"  # the stage's end gives them back


def test_no_placement_for_other_stages_or_rollouts(two_gpus):
    res = Resources(cpus=1, gpus=1)
    for stage_cfg in (RLStageConfig(rollout="hf"),
                      RLStageConfig(rollout="vllm_server", server=VLLMServerConfig(start=False)),
                      RunConfig().sft):
        with server_placement(stage_cfg, res) as placement:
            assert placement == {}


def pipeline_config(rl_gpus: float, tensor_parallel: int = 1):
    return from_dict(RunConfig, {
        "rl": {"rollout": "vllm_server", "server": {"tensor_parallel_size": tensor_parallel}},
        "pipeline": {"stages": {"prior": False, "sft": False, "eval": False},
                     "resources": {"rl": {"cpus": 1, "gpus": rl_gpus}}},
    })


def test_preflight_counts_the_trainers_gpus_and_the_servers_together(two_gpus):
    from workflows.preflight import ResourceError, check_resources

    check_resources(pipeline_config(rl_gpus=1))  # 1 + 1 on a 2-GPU node
    with pytest.raises(ResourceError) as refused:
        check_resources(pipeline_config(rl_gpus=1, tensor_parallel=2))
    assert ("pipeline.resources.rl.gpus 1 for the trainer + rl.server.tensor_parallel_size 2 for the vLLM server "
            "= 3 GPU(s) on one node; the largest node of the Ray cluster has 2") in str(refused.value)
    with pytest.raises(ResourceError, match="vllm_server with pipeline.resources.rl.gpus 0"):
        check_resources(pipeline_config(rl_gpus=0))


def test_without_ray_the_server_takes_the_visible_gpus_after_the_trainers(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,7")
    assert _gpus_after_the_trainers(2) == ["5", "7"]
    with pytest.raises(InputError, match="needs 3 GPU.s. besides the trainer's, and 3 GPU.s. are visible"):
        _gpus_after_the_trainers(3)
