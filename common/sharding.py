"""How a training stage's weights are held across Ray Train workers: full replicas (DDP) or shards (FSDP2).

Shared by the SFT and RL stages: the TrainingArguments that ask transformers for each, the check
that accelerate really sharded, and what each rank held (recorded in the stage's summary).
"""

from __future__ import annotations

from typing import Literal, get_args

from common.errors import InputError

Sharding = Literal["ddp", "fsdp"]
SHARDINGS = get_args(Sharding)


def sharding_args(sharding: str) -> dict:
    """TrainingArguments fields for `sharding` (a Ray Train stage's `resources.sharding`).

    ddp: nothing (accelerate makes every rank a full DDP replica). fsdp: transformers' FSDP2
    integration, which hands accelerate's `fully_shard` each decoder layer (the model's
    `_no_split_modules`), the embeddings with the final norm and LM head, then the root;
    parameters, gradients and AdamW state are sharded 1/N per rank. FULL_STATE_DICT: `save_model`
    gathers the full weights to rank 0, so checkpoints and final/ stay from_pretrained folders.
    """
    if sharding not in SHARDINGS:
        raise ValueError(f"sharding: got {sharding!r}, expected one of {', '.join(SHARDINGS)}")
    if sharding == "ddp":
        return {}
    config = {"version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "state_dict_type": "FULL_STATE_DICT"}
    return {"fsdp": True, "fsdp_config": config}


def check_sharding(trainer, sharding: str) -> None:
    """Refuse to train full replicas when shards were asked for: accelerate drops its FSDP plugin
    without a word where it does not shard (CPU process groups)."""
    if sharding == "fsdp" and not trainer.is_fsdp_enabled:
        raise InputError(
            "sharding: fsdp was asked for, but accelerate did not enable FSDP on this "
            f"{trainer.accelerator.device.type} worker (distributed type {trainer.accelerator.distributed_type}); "
            "FSDP needs GPU workers"
        )


def sharding_summary(trainer, sharding: str) -> dict:
    """How the weights were held: parameters on this rank (a DTensor's local shard under FSDP) and in
    the model. Under FSDP each rank holds about 1/N of them; under DDP all of them."""
    held = total = 0
    for p in trainer.model.parameters():
        total += p.numel()
        held += p.to_local().numel() if hasattr(p, "to_local") else p.numel()
    return {"type": sharding, "parameters": total, "parameters_on_rank": held}
