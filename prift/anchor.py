"""ASFT's anchor: KL(q || p) per response token over the whole vocabulary, with its gradient.

    KL_t = sum_v q_t(v) (log q_t(v) - log p_t(v))     q: the frozen reference, p: the policy

as LLaMA-Factory's `_kl_divergence` computes it (`F.kl_div(log_softmax(policy), softmax(ref))`). The
fused LM head never builds the policy's [B, L, V] logits, so this does it for the response positions
only, `row_chunk` rows at a time, each chunk under activation checkpointing: its [rows, V] logits of
both models are rebuilt in the backward pass instead of kept, so the extra memory is one chunk's
logits, not one per response token. It costs a second pass of the output head (two, with the
backward's recompute) over the response tokens: ASFT is the one method here that is not cheap.

`topk_kl` is the approximation a stored top-k of q would allow (no resident reference): the sum
over q's k most likely tokens only. It is not used in training; tests/test_reference_losses.py and
docs/workbench.md measure its error against the exact KL.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from common.lm_head import hidden_to_logits

DEFAULT_KL_ROW_CHUNK = 256


def _chunk_kl(policy, reference, h_policy: torch.Tensor, h_reference: torch.Tensor) -> torch.Tensor:
    log_p = torch.log_softmax(hidden_to_logits(policy, h_policy).float(), dim=-1)
    with torch.no_grad():
        log_q = torch.log_softmax(hidden_to_logits(reference, h_reference).float(), dim=-1)
    return F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(-1)


def anchor_kl(policy, policy_hidden: torch.Tensor, reference, reference_hidden: torch.Tensor,
              response_mask: torch.Tensor, row_chunk: int = DEFAULT_KL_ROW_CHUNK) -> torch.Tensor:
    """KL(q || p) in label space [B, L-1] (0 off the response), differentiable through `policy_hidden`
    [B, L, D] (the training forward's last hidden states); `reference_hidden` is the reference's."""
    predicts = response_mask[:, 1:].bool()
    h_p = policy_hidden[:, :-1][predicts]
    h_q = reference_hidden[:, :-1][predicts].detach()
    parts = [
        checkpoint(_chunk_kl, policy, reference, h_p[r0 : r0 + row_chunk], h_q[r0 : r0 + row_chunk],
                   use_reentrant=False)
        for r0 in range(0, h_p.shape[0], row_chunk)
    ]
    flat = torch.cat(parts) if parts else h_p.new_zeros(0, dtype=torch.float32)
    if not torch.isfinite(flat).all():
        raise FloatingPointError("non-finite KL(q || p) in the ASFT anchor")
    return torch.zeros(predicts.shape, dtype=flat.dtype, device=flat.device).masked_scatter(predicts, flat)


def topk_kl(log_p: torch.Tensor, log_q: torch.Tensor, k: int) -> torch.Tensor:
    """sum over q's k most likely tokens of q (log q - log p): KL(q || p) with q's tail left out.
    log_p, log_q: [N, V] log-probabilities; returns [N]."""
    top_lq, idx = log_q.topk(k, dim=-1)
    return (top_lq.exp() * (top_lq - log_p.gather(-1, idx))).sum(-1)
