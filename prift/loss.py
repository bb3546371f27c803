"""The weighted SFT loss, normalised exactly as the PriFT paper's code does it.

    L = - sum_t M_t * w_t * log p(y_t) / N   (+ kl_coef * sum_t M_t KL_t(q || p) / N for ASFT)

with w_t detached (prift.weights) and N the number of response tokens of the whole accumulated batch
(TRL's `num_items_in_batch`), not the sum of weights: tokens that PriFT-mass drops still count in N.
So a loss does not depend on how a batch is split into micro-batches, and the gradient is
-(1/N) sum_t M_t w_t grad log p(y_t): DFT with p replaced by q for PriFT-prob.

Everything here is in "label space": entry t of a [B, L-1] tensor describes the token that position t
predicts, i.e. token t + 1 of the sequence. `log p(y_t)` comes from TRL's fused LM head, which never
builds the [B, L, V] logits; the stored reference signals (indexed by token) are shifted with
`to_label_space` to match.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prift.weights import WeightRule, batch_weights


@dataclass
class LossStats:
    """Per micro-batch sums, so means over a logging window can be formed exactly."""

    tokens: int  # response tokens in this micro-batch
    weight_sum: float  # sum of w_t over them: the effective token count
    kept: int  # response tokens with w_t > 0
    nll: float  # sum_t M_t ce_t / N: the loss with every w_t = 1 (the same N), comparable across methods


def to_label_space(by_token: torch.Tensor) -> torch.Tensor:
    """[B, L] values indexed by token -> [B, L-1] indexed by the predicting position."""
    return by_token[:, 1:]


def weighted_nll(
    log_probs: torch.Tensor,
    label_mask: torch.Tensor,
    rule: WeightRule,
    *,
    prior_logprob: torch.Tensor | None = None,
    prior_mass: torch.Tensor | None = None,
    online_mass: torch.Tensor | None = None,
    num_items_in_batch: int | torch.Tensor | None = None,
    signals: dict[str, torch.Tensor] | None = None,
    sequence_ids: torch.Tensor | None = None,
    kl: torch.Tensor | None = None,
) -> tuple[torch.Tensor, LossStats]:
    """Weighted NLL from per-label log p [B, T] (0 off the mask) and signals in the same label space.

    `signals` holds any further `<signal>_<name>` tensors the rule reads (WeightRule.signals); the
    policy's own `online_logprob` is `log_probs`, detached. `kl` [B, T] is the per-token KL(q || p)
    with its gradient, required when `rule.kl_coef > 0`. With the `prob` objective the loss term is
    (1 - p^alpha) / alpha, whose gradient is the power rule's weighted NLL gradient."""
    given = {"prior_logprob": prior_logprob, "prior_mass": prior_mass, "online_mass": online_mass, **(signals or {})}
    given["online_logprob"] = log_probs.detach()
    mask = label_mask.bool()
    weights = batch_weights(rule, given, mask, sequence_ids)
    n = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    if rule.objective == "prob":
        terms = (1 - torch.exp(rule.alpha * log_probs)) / rule.alpha
        loss = torch.where(mask, terms, 0.0).sum() / n
    else:
        loss = -(weights * log_probs).sum() / n
    if rule.kl_coef > 0:
        if kl is None:
            raise ValueError("kl_coef > 0 (ASFT) needs the per-token KL(q || p) of the batch")
        loss = loss + rule.kl_coef * torch.where(mask, kl, 0.0).sum() / n
    nll = -torch.where(mask, log_probs.detach(), 0.0).sum() / n
    stats = LossStats(int(mask.sum()), float(weights.sum()), int((weights > 0).sum()), float(nll))
    return loss, stats
