"""Sharded training (FSDP2): the config, and two sharded CPU workers (gloo) against one unsharded one.

What runs on CPU, and the one thing that does not: transformers' `fsdp` / `fsdp_config` arguments
become accelerate's FSDP plugin, but accelerate 1.15 (`AcceleratorState.__init__`) turns that plugin
on only for GPU-like process groups (MULTI_GPU, MULTI_NPU, ...); on a MULTI_CPU (gloo) group it drops
it without a word and the trainer runs DDP. The slow test therefore makes, inside its Ray Train
workers, the same two assignments accelerate makes for a GPU group (`cpu_fsdp`: distributed type
FSDP, the plugin kept). Everything after that is the real path: accelerate's `fully_shard` of every
decoder layer, of the embeddings + final norm + LM head and of the root; DTensor parameters,
gradients reduce-scattered and AdamW state held per shard over gloo; the PriFT loss normalised by
the response tokens of both ranks; FULL_STATE_DICT saving (checkpoints and final/ as plain HF
folders, plus FSDP's own model and optimizer files for resuming); resuming from them. Mixed precision
is not tested (bf16 autocast is a GPU setting here; CPU runs fp32).
"""

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from helpers import trained_logs, weights


def cpu_fsdp() -> None:
    """Let accelerate shard on a CPU process group, as it does on a GPU one (module docstring)."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    init = AcceleratorState.__init__

    def sharding_init(self, *args, fsdp_plugin=None, **kwargs):
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # later states copy it

    AcceleratorState.__init__ = sharding_init


def sharded_sft_on_cpu(*args):
    """prift.sft.run_sft on a Ray Train worker with sharding fsdp (runs in the worker process)."""
    from prift.sft import run_sft

    cpu_fsdp()
    return run_sft(*args, (), "fsdp")


def rank0_shard_size(model_dir) -> int:
    """FSDP2 shards every parameter along dim 0 in torch.chunk's way: rank 0 of 2 holds ceil(rows / 2)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return sum(math.ceil(p.shape[0] / 2) * (p.numel() // p.shape[0]) for p in model.parameters())


def test_sharding_is_a_checked_resources_field():
    from workflows.config import ConfigError, PipelineConfig, from_dict

    ok = from_dict(PipelineConfig, {"resources": {"sft": {"gpus": 1, "workers": 8, "sharding": "fsdp"}}})
    assert ok.resources.sft.sharding == "fsdp" and ok.resources.rl.sharding == "ddp"
    cases = {
        "eval": ({"gpus": 1, "workers": 2, "sharding": "fsdp"},
                 "resources.eval.sharding: only sft and rl train sharded"),
        "rl": ({"gpus": 1, "workers": 1, "sharding": "fsdp"}, "expected at least 2"),
        "sft": ({"gpus": 0, "workers": 2, "sharding": "fsdp"}, "needs GPU workers"),
    }
    for stage, (res, message) in cases.items():
        with pytest.raises(ConfigError, match=message):
            from_dict(PipelineConfig, {"resources": {stage: res}})
    with pytest.raises(ConfigError, match=r"resources.sft.sharding: got 'zero3', expected one of \['ddp', 'fsdp'\]"):
        from_dict(PipelineConfig, {"resources": {"sft": {"sharding": "zero3"}}})


def test_fsdp_becomes_transformers_fsdp2_with_full_state_dict(tmp_path):
    from prift.sft import SFTStageConfig, sft_args

    args = sft_args(SFTStageConfig(), tmp_path, "fsdp")
    plugin = args.fsdp_plugin_args
    assert args.fsdp is True and plugin["fsdp_version"] == 2
    assert plugin["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"  # each decoder layer its own unit
    assert plugin["state_dict_type"] == "FULL_STATE_DICT" and plugin["reshard_after_forward"] is True
    assert sft_args(SFTStageConfig(), tmp_path).fsdp_plugin_args is None


@pytest.mark.slow
def test_two_fsdp_workers_step_exactly_like_one_unsharded_worker_and_resume(tiny_model,
                                                                            sft_file, tmp_path, monkeypatch):
    import ray

    from prift.data import DataConfig
    from prift.prior import PriorConfig, run_prior
    from prift.sft import SFTStageConfig, run_sft
    from workflows.config import Resources
    from workflows.distributed import train_on_workers

    data, prior = DataConfig(path=sft_file, max_length=64), PriorConfig(mode="cached")
    run_prior(tiny_model, data, prior, tmp_path / "prior")
    common = dict(method="prift_prob", max_steps=3, learning_rate=3e-3, warmup_ratio=0.0, logging_steps=1, save_steps=2)
    run_sft(tiny_model, data, prior, SFTStageConfig(per_device_batch_size=8, **common),
            tmp_path / "one", tmp_path / "prior")

    two, ckpt = tmp_path / "two", tmp_path / "two" / "checkpoints"
    args = (tiny_model, data, prior, SFTStageConfig(per_device_batch_size=4, **common), str(two),
            str(tmp_path / "prior"))
    # the workers import sharded_sft_on_cpu from this file by name
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.getcwd()]))
    ray.init(num_cpus=2, include_dashboard=True)  # Ray Train watches its controller through it
    try:
        train_on_workers(sharded_sft_on_cpu, args, Resources(cpus=1, workers=2), "two", tmp_path / "ray_train")
        first = weights(two / "final")
        summary = json.loads((two / "final" / "prift_sft.json").read_text())
        # resume: from checkpoint-2 (FSDP's own model and optimizer files), for step 3 alone
        files = {p.name for p in (ckpt / "checkpoint-2").iterdir()}
        assert {"pytorch_model_fsdp.bin", "optimizer.bin", "model.safetensors"} <= files
        shutil.rmtree(two / "final")
        shutil.rmtree(ckpt / "checkpoint-3")
        stamp = (ckpt / "checkpoint-2" / "pytorch_model_fsdp.bin").stat().st_mtime_ns
        train_on_workers(sharded_sft_on_cpu, args, Resources(cpus=1, workers=2), "two-resumed", tmp_path / "ray_train")
    finally:
        ray.shutdown()

    assert (ckpt / "checkpoint-2" / "pytorch_model_fsdp.bin").stat().st_mtime_ns == stamp  # not trained again
    # really sharded: rank 0 held its dim-0 shard of every parameter, not a replica
    assert summary["world_size"] == 2 and summary["sharding"]["type"] == "fsdp"
    assert summary["sharding"]["parameters_on_rank"] == rank0_shard_size(tiny_model) < summary["sharding"]["parameters"]

    one_logs, two_logs = trained_logs(tmp_path / "one", 3), trained_logs(two, 3)
    assert len(one_logs) == 3 and len({h["loss"] for h in one_logs}) == 3
    for key in ("loss", "nll_unweighted", "weight/effective_frac"):  # step 3 is the resumed run's
        assert [h[key] for h in two_logs] == pytest.approx([h[key] for h in one_logs], rel=1e-5), key
    before, one = weights(tiny_model), weights(tmp_path / "one" / "final")
    pairs = {  # the sharded runs' folders load with from_pretrained and hold the unsharded run's weights
        "checkpoint-2": (weights(tmp_path / "one" / "checkpoints" / "checkpoint-2"), weights(ckpt / "checkpoint-2")),
        "final": (one, first),
        "final after resuming": (one, weights(two / "final")),
    }
    for folder, (reference, sharded) in pairs.items():
        for name in reference:
            assert torch.allclose(reference[name], sharded[name], atol=1e-6), (folder, name)
    assert any(not torch.equal(before[n], one[n]) for n in one)  # the runs did train
