"""The SFT stage: weighted fine-tuning of a base model, resumable, ending in a plain HF folder.

    prift sft CONFIG        # runs the prior stage first if its cache is missing

setup:   resolve the weight rule; get the tokenized data (with the stored prior signals when the rule
         reads the prior in cached mode, else just the tokens); load the policy (and the resident
         reference in online mode); build a PriftTrainer.
train:   TRL/transformers training loop; resumes from the newest *complete* checkpoint in
         <out>/checkpoints (one with the COMPLETE marker: common/checkpoints.py).
cleanup: save model + tokenizer to <out>/final.tmp, then rename to <out>/final (atomic).

The defaults are the paper's math recipe (AdamW lr 5e-5, betas 0.9/0.95, weight decay 0.01, cosine
with 10% warmup, clip 1.0, bf16 on GPU); the global batch is per_device_batch_size x
gradient_accumulation_steps x number of processes (the paper: 256 sequences).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from common.checks import at_least, interval, one_of, positive, require, seed
from common.sharding import check_sharding, sharding_args, sharding_summary
from common.checkpoints import CheckpointMarker, latest_complete_checkpoint, save_final
from prift.data import DataConfig, tokenized_dataset
from common.precision import PRECISIONS, Precision, resolve_dtype
from common.models import default_device, load_causal_lm, load_tokenizer
from prift.prior import PriorConfig, load_prior, run_prior
from prift.trainer import PriftCollator, PriftTrainer, with_labels
from prift.weights import METHODS, WeightRule, resolve_method

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SFTStageConfig:
    """Training settings of the SFT stage (defaults: the paper's math recipe, scaled by the batch)."""

    method: str = "prift_mass"
    """A name of prift.weights.METHODS (`sft`, `dft`, `prift_prob`, `prift_mass`, `eaft`, `asft`, `rho1`,
    `iw_sft`, ... and the prior twins; docs/workbench.md); ignored when `rule` is set."""
    rule: WeightRule | None = None
    """A custom rule of the family (prift.weights.WeightRule), e.g. power alpha=10 with the prior signal."""
    optim: str = "adamw_torch"
    """transformers optimizer name (`adamw_torch`, `adamw_torch_fused`, `sgd`, ...)."""
    learning_rate: float = 5e-5
    """Peak learning rate."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.95
    """AdamW beta2."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    lr_scheduler_type: str = "cosine"
    """transformers scheduler name."""
    warmup_ratio: float = 0.1
    """Fraction of the steps spent warming up."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 disables)."""
    per_device_batch_size: int = 8
    """Sequences per micro-batch per process."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step; the loss is normalised over all of them."""
    num_train_epochs: float = 1.0
    """Epochs over the data (the paper: 1)."""
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: run the epochs)."""
    precision: Precision = "auto"
    """Autocast dtype: `auto` (bf16 on a GPU that has it, float32 otherwise), `bf16` or `fp32`."""
    gradient_checkpointing: bool = False
    """Trade compute for activation memory."""
    packing: bool = False
    """Padding-free batches: the examples of a micro-batch are concatenated into one row, position
    ids restarting per example, so no compute is spent on padding and no token attends across
    examples. The loss (every method, cached or online prior) is the same quantity as padded."""
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
    seed: int = 42
    """Seed of model init-free randomness: data order, dropout."""
    report_to: list[str] = field(default_factory=list)
    """transformers integrations to report to (the pipeline adds its own MLflow tracking)."""

    def __post_init__(self):
        from transformers.trainer_utils import SchedulerType
        from transformers.training_args import OptimizerNames

        steps = self.max_steps
        require(
            one_of("method", self.method, METHODS) if self.rule is None else None,
            one_of("optim", self.optim, [o.value for o in OptimizerNames]),
            one_of("lr_scheduler_type", self.lr_scheduler_type, [t.value for t in SchedulerType]),
            one_of("precision", self.precision, PRECISIONS),
            positive("learning_rate", self.learning_rate),
            interval("adam_beta1", self.adam_beta1, 0, 1, high_open=True),
            interval("adam_beta2", self.adam_beta2, 0, 1, high_open=True),
            at_least("weight_decay", self.weight_decay, 0),
            # transformers reads warmup_steps < 1 as a ratio and >= 1 as a step count
            interval("warmup_ratio", self.warmup_ratio, 0, 1, high_open=True),
            at_least("max_grad_norm", self.max_grad_norm, 0),
            at_least("per_device_batch_size", self.per_device_batch_size, 1),
            at_least("gradient_accumulation_steps", self.gradient_accumulation_steps, 1),
            positive("num_train_epochs", self.num_train_epochs),
            None if steps == -1 or not at_least("max_steps", steps, 1) else
            f"max_steps: got {steps!r}, expected -1 (run the epochs) or at least 1",
            at_least("logging_steps", self.logging_steps, 1),
            at_least("save_steps", self.save_steps, 1),
            at_least("save_total_limit", self.save_total_limit, 1),
            seed("seed", self.seed),
        )

    def weight_rule(self) -> WeightRule:
        return self.rule if self.rule is not None else resolve_method(self.method)


def training_dataset(model_name: str, data: DataConfig, prior: PriorConfig, rule: WeightRule, prior_dir: Path):
    """Tokenized rows with labels, plus the stored prior signals when the rule reads them (cached mode)."""
    if rule.needs_prior and prior.mode == "cached":
        return with_labels(load_prior(run_prior(model_name, data, prior, prior_dir)))
    return with_labels(tokenized_dataset(model_name, data))


def sft_args(cfg: SFTStageConfig, out_dir: Path, sharding: str = "ddp"):
    """TRL SFTConfig for our already tokenized, masked and truncated data."""
    from trl import SFTConfig

    device = default_device()
    bf16 = resolve_dtype(cfg.precision, device) == torch.bfloat16
    return SFTConfig(
        output_dir=str(out_dir / "checkpoints"),
        optim=cfg.optim,
        learning_rate=cfg.learning_rate,
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio in transformers 5
        max_grad_norm=cfg.max_grad_norm,
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        bf16=bf16,
        gradient_checkpointing=cfg.gradient_checkpointing,
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        report_to=cfg.report_to,
        remove_unused_columns=False,  # keep the prior_* columns for the collator
        dataset_kwargs={"skip_prepare_dataset": True},
        max_length=None,
        use_cpu=device.type == "cpu",
        **sharding_args(sharding),
    )


def build_trainer(model_name: str, dataset, cfg: SFTStageConfig, prior: PriorConfig, out_dir: Path, callbacks=(),
                  sharding: str = "ddp"):
    """The PriftTrainer for `dataset`, writing checkpoints under out_dir/checkpoints."""
    rule = cfg.weight_rule()
    device = default_device()
    tokenizer = load_tokenizer(model_name)
    args = sft_args(cfg, out_dir, sharding)
    model = load_causal_lm(model_name, dtype=torch.float32, device=device)
    ref_model = None
    if rule.needs_prior and (prior.mode == "online" or rule.kl_coef > 0):  # the anchor needs q's whole distribution
        ref_model = load_causal_lm(prior.reference or model_name,
                                   dtype=resolve_dtype(prior.precision, device), device=device)
    log.info("SFT: method=%s rule=%s prior=%s bf16=%s packing=%s", cfg.method, rule, prior.mode, args.bf16, cfg.packing)
    return PriftTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        data_collator=PriftCollator(tokenizer.pad_token_id, packing=cfg.packing),
        weight_rule=rule,
        ref_model=ref_model,
        vocab_chunk=prior.vocab_chunk,
        callbacks=[*callbacks, CheckpointMarker()],  # last: marks what every other callback let through
    )


def run_sft(
    model_name: str,
    data: DataConfig,
    prior: PriorConfig,
    cfg: SFTStageConfig,
    out_dir: str | Path,
    prior_dir: str | Path | None = None,
    callbacks=(),
    sharding: str = "ddp",
) -> Path:
    """Train and return <out_dir>/final; a finished stage (final/ exists) is a logged no-op.
    `sharding` (ddp or fsdp, see `sharding_args`) matters on several Ray Train workers."""
    out_dir = Path(out_dir)
    final = out_dir / "final"
    if (final / "config.json").exists():
        log.info("SFT already finished: %s", final)
        return final
    rule = cfg.weight_rule()
    dataset = training_dataset(model_name, data, prior, rule, Path(prior_dir or out_dir.parent / "prior"))
    trainer = build_trainer(model_name, dataset, cfg, prior, out_dir, callbacks, sharding)
    check_sharding(trainer, sharding)
    resume = latest_complete_checkpoint(out_dir / "checkpoints")
    if resume:
        log.info("resuming SFT from %s", resume)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)

    summary = {"method": cfg.method, "rule": asdict(rule), "train": result.metrics, "steps": result.global_step,
               "world_size": trainer.args.world_size, "sharding": sharding_summary(trainer, sharding)}
    save_final(trainer, out_dir, "prift_sft.json", summary, keep_checkpoints=cfg.keep_checkpoints)
    log.info("SFT finished: %s (%d steps, train loss %.4f)", final, result.global_step, result.training_loss)
    return final
