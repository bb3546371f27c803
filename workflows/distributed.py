"""Data-parallel training stages through Ray Train.

A training stage whose resources ask for `workers: N > 1` runs its ordinary stage function
(prift.sft.run_sft, rl.grpo.run_rl) on each of N Ray Train workers (`TorchTrainer` + `ScalingConfig`).
Ray places the workers with the CPUs/GPUs each asks for, creates the torch process group (gloo on
CPU, nccl on GPU) and sets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR, which accelerate reads, so
the HF trainer inside runs as DDP with no code of its own:

  - the global batch is per_device_batch_size x gradient_accumulation_steps x N, each rank taking
    its share of every global batch in the single-process order;
  - the PriFT loss is normalised by the response tokens of all ranks (prift.trainer), so N workers
    step exactly like one worker with the same global batch (tests/test_distributed.py);
  - rank 0 writes the checkpoints and final/ (common.checkpoints) into the run directory, which every
    worker must see: one node, or a shared filesystem on a cluster (`pipeline.storage`).

Resuming works as for one worker: every rank resumes from the newest complete checkpoint.

With `sharding: fsdp` (the stage's resources; the stage task passes it to run_sft / run_rl) the same
workers shard the weights, gradients and AdamW state with FSDP2 instead of replicating them
(common/sharding.py); the batch, the loss normalisation and the saved folders are as above
(tests/test_sharding.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def train_on_workers(fn, args: tuple, res, name: str, storage: str | Path) -> None:
    """Run `fn(*args)` on `res.workers` Ray Train workers; raises if any worker fails."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    gpu = res.gpus > 0
    per_worker = {"CPU": res.cpus} | ({"GPU": res.gpus} if gpu else {})
    log.info("%s: Ray Train on %d workers, each %s", name, res.workers, per_worker)

    trainer = TorchTrainer(
        lambda: fn(*args),
        scaling_config=ScalingConfig(num_workers=res.workers, use_gpu=gpu, resources_per_worker=per_worker),
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        run_config=RunConfig(name=name, storage_path=str(Path(storage).resolve())),
    )
    trainer.fit()
