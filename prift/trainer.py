"""`PriftTrainer`: TRL's SFTTrainer with per-token weights from a rule (prift.weights).

The forward is TRL's own fused LM head (`fused_lm_head=True`): per-token log p(y_t) without building
the [B, L, V] logits. The weight of each token comes from
  - the batch (`prior_logprob`, `prior_mass` columns written by the prior stage): cached mode, or
  - a resident frozen reference run on the batch (`ref_model=`): the official online mode, or
  - the policy itself, detached (online rules: DFT and friends).
The loss is `prift.loss.weighted_nll`, normalised by TRL's `num_items_in_batch` (response tokens of the
whole accumulated batch, gathered over ranks), so micro-batching and data parallelism do not change it.

Logged beside the weighted `loss` at every logging step, over the same window (`WindowSums`):
  nll_unweighted        the mean response-token NLL, every w_t = 1, averaged as the loss is (per
                        optimizer step, then over the window's steps): the curve that compares
                        across methods, and exactly the loss for `sft`;
  weight/kept_frac      the fraction of response tokens with w > 0 (what PriFT-mass keeps);
  weight/effective_frac sum of w over the number of response tokens (1 for `sft`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from trl import SFTTrainer

from prift.loss import LossStats, to_label_space, weighted_nll
from prift.reference import check_head_matches_forward, pad, reference_signals
from prift.weights import WeightRule

log = logging.getLogger(__name__)

IGNORE = -100
SIGNAL_COLUMNS = ("prior_logprob", "prior_mass")


@dataclass
class PriftCollator:
    """Right-pads input_ids/labels/attention_mask and the per-token signal columns (when present)."""

    pad_token_id: int

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        ids = [e["input_ids"] for e in examples]
        batch = {
            "input_ids": pad(ids, self.pad_token_id),
            "attention_mask": pad([[1] * len(s) for s in ids], 0),
            "labels": pad([e["labels"] for e in examples], IGNORE),
        }
        for col in SIGNAL_COLUMNS:
            if col in examples[0]:
                batch[col] = pad([e[col] for e in examples], 0.0, dtype=torch.float32)
        return batch


def labels_from_mask(input_ids: list[int], response_mask: list[int]) -> list[int]:
    """Token ids on the response, IGNORE (-100) elsewhere: the labels TRL trains on."""
    return [t if m else IGNORE for t, m in zip(input_ids, response_mask)]


def _row_labels(row: dict) -> dict:
    return {"labels": labels_from_mask(row["input_ids"], row["response_mask"])}


def with_labels(dataset):
    """Add `labels` from `response_mask`, as TRL expects of prepared data."""
    # A module-level function, not a lambda: datasets fingerprints the mapped function with dill, which
    # disassembles lambdas by redirecting stdout, and under Ray Train's print patch that text leaks out.
    return dataset.map(_row_labels, remove_columns=["response_mask"], desc="labels")


@dataclass
class WindowSums:
    """What the training steps since the last log add up to, over micro-batches and ranks:
    [nll share, weight sum, kept tokens, tokens]. The nll share of a micro-batch is the unweighted
    NLL normalised and scaled as its loss is, so that, like the loss, its mean over ranks per step
    and over steps gives the logged value."""

    start_step: int
    sums: list[torch.Tensor] = field(default_factory=list)

    def metrics(self, step: int, world_size: int) -> dict[str, float]:
        nll_share, weight_sum, kept, tokens = torch.stack(self.sums).sum(0).tolist()
        tokens = max(tokens, 1.0)
        return {
            "nll_unweighted": nll_share / world_size / max(step - self.start_step, 1),
            "weight/kept_frac": kept / tokens,
            "weight/effective_frac": weight_sum / tokens,
        }


class PriftTrainer(SFTTrainer):
    """SFTTrainer whose loss is sum(M * w * ce) / N with w from `weight_rule` (see module docstring)."""

    def __init__(self, *args, weight_rule: WeightRule, ref_model=None, vocab_chunk: int = 16384, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_rule = weight_rule
        self.ref_model = ref_model
        self.vocab_chunk = vocab_chunk
        self._ref_checked = False
        self._window: WindowSums | None = None
        if ref_model is not None:
            self.ref_model = ref_model.to(self.accelerator.device).eval().requires_grad_(False)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:
            raise NotImplementedError("PriftTrainer does not return logits (the fused head never builds them)")
        mode = "train" if self.model.training else "eval"
        prior_lp, prior_u = (inputs.pop(c, None) for c in SIGNAL_COLUMNS)
        rule = self.weight_rule
        response = inputs["labels"] != IGNORE
        if self.ref_model is not None and rule.needs_prior:
            prior_lp, prior_u = self._signals(self.ref_model, inputs, response)
        online_u = None
        if rule.needs_online_mass:
            _, online_u = self._signals(self.accelerator.unwrap_model(model), inputs, response)
        outputs = model(**inputs, use_cache=False, fused_lm_head=True)
        loss, stats = weighted_nll(
            outputs.log_probs,
            outputs.label_mask,
            rule,
            prior_logprob=None if prior_lp is None else to_label_space(prior_lp),
            prior_mass=None if prior_u is None else to_label_space(prior_u),
            online_mass=None if online_u is None else to_label_space(online_u),
            num_items_in_batch=num_items_in_batch,
        )
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss ({loss.item()}) at step {self.state.global_step}: training stopped; "
                f"the last saved checkpoint in {self.args.output_dir} is intact"
            )
        # As in TRL: num_items_in_batch counts every rank's tokens and DDP averages gradients over ranks.
        scale = 1
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            scale = self.accelerator.num_processes
        self._record(mode, outputs, stats, stats.nll * scale)
        return loss * scale

    @torch.no_grad()
    def _signals(self, model, inputs, response):
        if not self._ref_checked:
            check_head_matches_forward(model, inputs["input_ids"], inputs["attention_mask"])
            self._ref_checked = True
        return reference_signals(
            model, inputs["input_ids"], inputs["attention_mask"], response, vocab_chunk=self.vocab_chunk
        )

    def _record(self, mode: str, outputs, stats: LossStats, nll_share: float) -> None:
        metrics = self._metrics[mode]
        n = max(stats.tokens, 1)
        metrics["entropy"].append((outputs.entropy.detach().sum() / n).item())
        metrics["mean_token_accuracy"].append((outputs.is_top1.sum() / n).item())
        if mode != "train":  # the window follows optimizer steps; the SFT stage runs no eval loop
            return
        local = torch.tensor([[nll_share, stats.weight_sum, stats.kept, stats.tokens]], device=self.accelerator.device)
        if self._window is None:
            self._window = WindowSums(self.state.global_step)  # the step last logged (or resumed from)
        self._window.sums.append(self.accelerator.gather(local).sum(0))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """TRL's log, plus the window's unweighted NLL and token fractions (training only)."""
        if self.model.training and self._window is not None:
            logs.update(self._window.metrics(self.state.global_step, self.accelerator.num_processes))
            self._window = None
        super().log(logs, start_time)
