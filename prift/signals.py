"""Per-token signals of a distribution: log q(y_t), the PriFT-mass score u_t and entropies, in chunks.

For one position with logits z (vocab V) and target y:

    log q(y) = z_y - logsumexp(z)
    u        = q(y) + sum_{v : q(v) < q(y)} q(v)        (strict <; the target counted once)

    H        = - sum_v q(v) log q(v)                       (the full entropy)
    H_top    = - sum_{v in top k} r(v) log r(v),  r = softmax of the k largest logits alone

H_top is EAFT's signal exactly as LLaMA-Factory computes it (`_eaft_cross_entropy`: `torch.topk` of the
logits, k = 20, renormalised among themselves), not the entropy of q restricted to its top k.

`1 - u` is the mass of the tokens strictly more likely than the target, so with tau = 0.5, u >= tau
says the target lies inside the reference's top-p = 0.5 nucleus (the argmax always does: u = 1).

Everything is done in float32 whatever the logits' dtype, in a single pass over vocabulary chunks with
an online (rescaled) log-sum-exp, so the extra memory is one [row_chunk, vocab_chunk] float32 block,
never a [batch, length, vocab] float32 softmax. "q(v) < q(y)" is evaluated as "z_v < z_y" on the
float32 logits: softmax is strictly monotone, so this is the same order without exp's rounding.

    >>> import torch
    >>> lp, u = token_signals(torch.tensor([[2.0, 1.0, 1.0, 0.0]]), torch.tensor([1]))
    >>> round(lp.exp().item(), 4), round(u.item(), 4)  # the tie at 1.0 is not "below" the target
    (0.1966, 0.2689)
"""

from __future__ import annotations

import torch

DEFAULT_VOCAB_CHUNK = 16384
DEFAULT_ROW_CHUNK = 512
EAFT_TOPK = 20  # LLaMA-Factory's `_eaft_cross_entropy` takes torch.topk(logits, k=20)
SIGNAL_NAMES = ("logprob", "mass", "entropy", "entropy_top")


def token_signals(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    vocab_chunk: int = DEFAULT_VOCAB_CHUNK,
    row_chunk: int = DEFAULT_ROW_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (log q(target), u) for logits [..., V] and integer targets [...]; both float32 [...].

    Results do not depend on the chunk sizes beyond float32 summation order. No gradient flows.
    """
    out = signal_set(logits, targets, ("logprob", "mass"), vocab_chunk=vocab_chunk, row_chunk=row_chunk)
    return out["logprob"], out["mass"]


def signal_set(
    logits: torch.Tensor,
    targets: torch.Tensor,
    names=SIGNAL_NAMES,
    *,
    vocab_chunk: int = DEFAULT_VOCAB_CHUNK,
    row_chunk: int = DEFAULT_ROW_CHUNK,
) -> dict[str, torch.Tensor]:
    """The signals `names` (of SIGNAL_NAMES) of logits [..., V] at targets [...], float32 [...], in one
    chunked pass; the entropies cost only when asked for. No gradient flows."""
    unknown = set(names) - set(SIGNAL_NAMES)
    if unknown:
        raise ValueError(f"unknown signals {sorted(unknown)}; expected some of {SIGNAL_NAMES}")
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} disagree")
    if vocab_chunk < 1 or row_chunk < 1:
        raise ValueError(f"chunks must be >= 1, got vocab_chunk={vocab_chunk} row_chunk={row_chunk}")
    vocab = logits.shape[-1]
    flat_logits = logits.detach().reshape(-1, vocab)
    flat_targets = targets.reshape(-1).to(device=logits.device, dtype=torch.long)
    if flat_targets.numel() and (flat_targets.min() < 0 or flat_targets.max() >= vocab):
        raise ValueError(f"targets must lie in [0, {vocab}); got {flat_targets.min()}..{flat_targets.max()}")
    out = {name: torch.empty(flat_targets.shape, dtype=torch.float32, device=logits.device) for name in names}
    with torch.no_grad():
        for r0 in range(0, flat_targets.numel(), row_chunk):
            rows = flat_logits[r0 : r0 + row_chunk]
            block = _rows_signals(rows, flat_targets[r0 : r0 + row_chunk], vocab_chunk, names)
            for name in names:
                out[name][r0 : r0 + row_chunk] = block[name]
    return {name: v.reshape(targets.shape) for name, v in out.items()}


def _rows_signals(rows: torch.Tensor, targets: torch.Tensor, vocab_chunk: int, names=("logprob", "mass")):
    """Online log-sum-exp over vocabulary chunks, tracking the total, the below-target sums and, when
    asked, sum e * (z - max) (the entropy's numerator, rescaled like the total) and the top-k logits."""
    n = rows.shape[0]
    z_target = rows.gather(1, targets[:, None]).squeeze(1).float()
    running_max = torch.full((n,), float("-inf"), device=rows.device)
    total = torch.zeros(n, device=rows.device)  # sum exp(z - running_max) over all tokens seen
    below = torch.zeros(n, device=rows.device)  # same, over tokens with z < z_target
    spread = torch.zeros(n, device=rows.device)  # sum exp(z - running_max) * (z - running_max)
    want_mass, want_entropy, want_top = "mass" in names, "entropy" in names, "entropy_top" in names
    top = torch.full((n, 0), float("-inf"), device=rows.device)
    for v0 in range(0, rows.shape[1], vocab_chunk):
        block = rows[:, v0 : v0 + vocab_chunk].float()
        new_max = torch.maximum(running_max, block.max(dim=1).values)
        # A row whose logits so far are all -inf keeps max -inf; shift by 0 there to avoid inf - inf.
        shift = torch.where(torch.isneginf(new_max), 0.0, new_max)
        rescale = torch.exp(running_max - shift)  # exp(-inf) = 0 on the first chunk
        d = block - shift[:, None]
        e = torch.exp(d)
        if want_entropy:  # sum e'(z - m') = r (sum e (z - m) + total (m - m'))
            moved = torch.where(torch.isneginf(running_max), 0.0, running_max - shift)
            # e underflows to 0 below d = -104, so clamping there changes no term and keeps 0 * -inf out
            spread = rescale * (spread + total * moved) + (e * d.clamp_(min=-200.0)).sum(1)
        if want_top:  # each chunk's own top k, then the merge: no copy of the whole chunk
            block_top = block.topk(min(EAFT_TOPK, block.shape[1]), dim=1).values
            top = torch.cat([top, block_top], dim=1)
            top = top.topk(min(EAFT_TOPK, top.shape[1]), dim=1).values
        total = total * rescale + e.sum(dim=1)
        if want_mass:
            below = below * rescale + torch.where(block < z_target[:, None], e, 0.0).sum(dim=1)
        running_max = new_max
    shift = torch.where(torch.isneginf(running_max), 0.0, running_max)
    out = {"logprob": z_target - shift - torch.log(total)}
    if want_mass:
        out["mass"] = ((below + torch.exp(z_target - shift)) / total).clamp_(max=1.0)
    if want_entropy:
        out["entropy"] = (torch.log(total) - spread / total).clamp_(min=0.0)
    if want_top:
        log_r = torch.log_softmax(top, dim=1)
        out["entropy_top"] = -torch.where(log_r.isneginf(), 0.0, log_r.exp() * log_r).sum(1)
    return out
