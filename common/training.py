"""What the SFT and RL stages share: the training knobs, the trainer arguments they become, and the
run from setup to final/.

TrainConfig     the knobs both stages have, each with its docstring and its check;
                prift.sft.SFTStageConfig and rl.grpo.RLStageConfig extend it. A stage whose default
                (or meaning) differs redeclares the field in its own class, so `prift validate
                --explain` shows that stage's default and docstring; the YAML keys are the fields'
                names, whichever class declares them.
trainer_kwargs  those knobs as keyword arguments of transformers' TrainingArguments, which TRL's
                SFTConfig and GRPOConfig both extend; each stage adds only its own.
train_to_final  one stage's run: final/ exists -> return it; build the trainer; check the sharding;
                resume from the newest *complete* checkpoint (common/checkpoints.py), so a stage
                killed with -9 continues from its last marked one; train; save final/ atomically
                with a JSON summary.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from common.checks import at_least, interval, one_of, positive, require, seed
from common.precision import PRECISIONS, Precision

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """The training knobs every stage has. The defaults are the SFT stage's (the paper's recipe);
    RLStageConfig redeclares those it sets otherwise."""

    learning_rate: float = 5e-5
    """Peak learning rate."""
    warmup_ratio: float = 0.1
    """Fraction of the steps spent warming up (linearly, to the peak learning rate)."""
    per_device_batch_size: int = 8
    """Sequences per micro-batch per process."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step (the global batch: per_device_batch_size x this x processes)."""
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: run the epochs)."""
    logging_steps: int = 10
    """Optimizer steps between logged metrics."""
    save_steps: int = 500
    """Optimizer steps between resumable checkpoints."""
    save_total_limit: int = 2
    """Checkpoints kept (older ones are deleted)."""
    keep_checkpoints: bool = True
    """Keep the trainer checkpoints once final/ is saved. False deletes them then (each holds the
    weights and the optimizer state: ~12 bytes per parameter, 1.6 GB for SmolLM2-135M); the
    finished stage no longer needs them, but cannot be continued for more steps."""
    precision: Precision = "auto"
    """Autocast dtype: `auto` (bf16 on a GPU that has it, float32 otherwise), `bf16` or `fp32`."""
    gradient_checkpointing: bool = False
    """Trade compute for activation memory."""
    seed: int = 42
    """Seed of the run's randomness (data order, dropout, sampling); not of the weights, which are loaded."""
    report_to: list[str] = field(default_factory=list)
    """transformers integrations to report to (the pipeline adds its own MLflow tracking)."""

    def __post_init__(self):
        require(*self.problems())

    def problems(self) -> list[str | None]:
        """One entry per rule, None where it holds (common/checks.py); a stage returns these and its own,
        so that one FieldErrors names every bad field of the section."""
        return [
            positive("learning_rate", self.learning_rate),
            # transformers reads warmup_steps < 1 as a ratio and >= 1 as a step count
            interval("warmup_ratio", self.warmup_ratio, 0, 1, high_open=True),
            at_least("per_device_batch_size", self.per_device_batch_size, 1),
            at_least("gradient_accumulation_steps", self.gradient_accumulation_steps, 1),
            self.max_steps_problem(),
            at_least("logging_steps", self.logging_steps, 1),
            at_least("save_steps", self.save_steps, 1),
            at_least("save_total_limit", self.save_total_limit, 1),
            one_of("precision", self.precision, PRECISIONS),
            seed("seed", self.seed),
        ]

    def max_steps_problem(self) -> str | None:
        """transformers' meaning: -1 runs the epochs (num_train_epochs), else at least one step. A
        stage without epochs (RL) takes only the latter."""
        steps = self.max_steps
        if steps == -1 or not at_least("max_steps", steps, 1):
            return None
        return f"max_steps: got {steps!r}, expected -1 (run the epochs) or at least 1"

    def bf16(self) -> bool:
        """Whether training autocasts to bf16 on this machine (`precision` resolved for its device)."""
        import torch

        from common.models import default_device
        from common.precision import resolve_dtype

        return resolve_dtype(self.precision, default_device()) == torch.bfloat16


def trainer_kwargs(cfg: TrainConfig, out_dir: Path, sharding: str = "ddp") -> dict:
    """TrainingArguments keyword arguments for the shared knobs, checkpoints under out_dir/checkpoints;
    `sharding` (ddp or fsdp) as common/sharding.py asks transformers for it."""
    from common.models import default_device
    from common.sharding import sharding_args

    return dict(
        output_dir=str(out_dir / "checkpoints"),
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio in transformers 5
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        max_steps=cfg.max_steps,
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        bf16=cfg.bf16(),
        gradient_checkpointing=cfg.gradient_checkpointing,
        report_to=cfg.report_to,
        use_cpu=default_device().type == "cpu",
        **sharding_args(sharding),
    )


def train_to_final(
    stage: str,
    out_dir: str | Path,
    build: Callable[[contextlib.ExitStack], Any],
    summary: Callable[[Any, Any], dict],
    summary_name: str,
    *,
    keep_checkpoints: bool = True,
    sharding: str = "ddp",
    before_train: Callable[[Any], None] = lambda trainer: None,
) -> Path:
    """Train and return <out_dir>/final; a finished stage (final/ exists) is a logged no-op.

    build(stack)            the stage's setup and its trainer; a context that must stay open until
                            training ends (a vLLM server, restored env vars) is entered on `stack`
    before_train(trainer)   the stage's own checks once the sharding is checked
    summary(trainer, result)  the stage's part of final/<summary_name>; train metrics, steps, world
                            size and sharding are added here
    """
    from common.checkpoints import latest_complete_checkpoint, save_final
    from common.sharding import check_sharding, sharding_summary

    out_dir = Path(out_dir)
    final = out_dir / "final"
    if (final / "config.json").exists():
        log.info("%s already finished: %s", stage, final)
        return final
    with contextlib.ExitStack() as stack:
        trainer = build(stack)
        check_sharding(trainer, sharding)
        before_train(trainer)
        resume = latest_complete_checkpoint(out_dir / "checkpoints")
        if resume:
            log.info("resuming %s from %s", stage, resume)
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)

    shared = {"train": result.metrics, "steps": result.global_step, "world_size": trainer.args.world_size,
              "sharding": sharding_summary(trainer, sharding)}
    save_final(trainer, out_dir, summary_name, summary(trainer, result) | shared, keep_checkpoints=keep_checkpoints)
    log.info("%s finished: %s (%d steps, train loss %.4f)", stage, final, result.global_step, result.training_loss)
    return final
