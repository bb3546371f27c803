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
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from common.checks import at_least, interval, one_of, positive
from common.checkpoints import CheckpointMarker
from common.training import TrainConfig, train_to_final, trainer_kwargs
from common.errors import InputError
from prift.data import DataConfig, prepare_rows, tokenized_dataset
from prift.heldout import CURVE_FILE, HeldoutCurve
from common.precision import resolve_dtype
from common.models import default_device, load_causal_lm, load_tokenizer
from prift.prior import PriorConfig, load_prior, run_prior
from prift.trainer import PriftCollator, PriftTrainer, with_labels
from prift.weights import METHODS, WeightRule, resolve_method

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SFTStageConfig(TrainConfig):
    """Training settings of the SFT stage (defaults: the paper's math recipe, scaled by the batch);
    the knobs every stage has (learning_rate, batch sizes, steps, checkpoints, precision, seed, ...)
    are common.training.TrainConfig's, whose defaults are this stage's."""

    method: str = "prift_mass"
    """A name of prift.weights.METHODS (`sft`, `dft`, `prift_prob`, `prift_mass`, `eaft`, `asft`, `rho1`,
    `iw_sft`, ... and the prior twins; docs/workbench.md); ignored when `rule` is set."""
    rule: WeightRule | None = None
    """A custom rule of the family (prift.weights.WeightRule), e.g. power alpha=10 with the prior signal."""
    optim: str = "adamw_torch"
    """transformers optimizer name (`adamw_torch`, `adamw_torch_fused`, `sgd`, ...)."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.95
    """AdamW beta2."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    lr_scheduler_type: str = "cosine"
    """transformers scheduler name."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 disables)."""
    num_train_epochs: float = 1.0
    """Epochs over the data (the paper: 1)."""
    heldout_every: int = 0
    """Every this many optimizer steps, log the policy's unweighted NLL on the run's top-level `heldout`
    rows (`heldout_nll`, in MLflow and sft/heldout_curve.json): the overfitting curve. 0: off (the
    eval stage still gives each finished model's held-out NLL). Needs `heldout`."""
    packing: bool = False
    """Padding-free batches: the examples of a micro-batch are concatenated into one row, position
    ids restarting per example, so no compute is spent on padding and no token attends across
    examples. The loss (every method, cached or online prior) is the same quantity as padded."""

    def problems(self) -> list[str | None]:
        from transformers.trainer_utils import SchedulerType
        from transformers.training_args import OptimizerNames

        return [
            *super().problems(),
            one_of("method", self.method, METHODS) if self.rule is None else None,
            one_of("optim", self.optim, [o.value for o in OptimizerNames]),
            one_of("lr_scheduler_type", self.lr_scheduler_type, [t.value for t in SchedulerType]),
            interval("adam_beta1", self.adam_beta1, 0, 1, high_open=True),
            interval("adam_beta2", self.adam_beta2, 0, 1, high_open=True),
            at_least("weight_decay", self.weight_decay, 0),
            at_least("max_grad_norm", self.max_grad_norm, 0),
            positive("num_train_epochs", self.num_train_epochs),
            at_least("heldout_every", self.heldout_every, 0),
        ]

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

    return SFTConfig(
        **trainer_kwargs(cfg, out_dir, sharding),
        optim=cfg.optim,
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_scheduler_type,
        max_grad_norm=cfg.max_grad_norm,
        num_train_epochs=cfg.num_train_epochs,
        remove_unused_columns=False,  # keep the prior_* columns for the collator
        dataset_kwargs={"skip_prepare_dataset": True},
        max_length=None,
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
    heldout: DataConfig | None = None,
) -> Path:
    """Train and return <out_dir>/final; a finished stage (final/ exists) is a logged no-op.
    `sharding` (ddp or fsdp, see `sharding_args`) matters on several Ray Train workers; `heldout`
    rows give the curve of `cfg.heldout_every`."""
    out_dir = Path(out_dir)
    rule = cfg.weight_rule()
    if cfg.heldout_every and heldout is None:
        raise InputError("sft.heldout_every needs held-out rows: set the top-level `heldout` data")

    def build(stack):
        dataset = training_dataset(model_name, data, prior, rule, Path(prior_dir or out_dir.parent / "prior"))
        curve = []
        if cfg.heldout_every:  # first: its value must be in the logs before the other callbacks read them
            curve = [HeldoutCurve(prepare_rows(model_name, heldout)[0], cfg.heldout_every, out_dir / CURVE_FILE)]
        return build_trainer(model_name, dataset, cfg, prior, out_dir, [*curve, *callbacks], sharding)

    return train_to_final("SFT", out_dir, build, lambda trainer, result: {"method": cfg.method, "rule": asdict(rule),
                                                       "log_history": trainer.state.log_history},
                          "prift_sft.json", keep_checkpoints=cfg.keep_checkpoints, sharding=sharding)
