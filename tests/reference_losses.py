"""Float64 transcriptions of the reference implementations' loss functions, for the workbench tests.

Each takes flat logits [N, V] (float64), shifted targets [N] with -100 off the response, and returns
(loss, per-token weight or None). `signal_logits` is where the reference reads its detached signal:
the policy's own logits (the published method) or the frozen reference's (the prior twin, the same
function with the signal's source swapped). Sources, pinned by commit, are in docs/workbench.md:

  LLaMA-Factory src/llamafactory/train/trainer_utils.py: _dft_cross_entropy, _eaft_cross_entropy,
      _asft_cross_entropy + _kl_divergence
  Utaotao/ProFit src/llamafactory/train/trainer_utils.py: _profit_cross_entropy ("higher")
  GaotangLi/Beyond-Log-Likelihood main_verl/trainer/fsdp_sft_trainer.py: objective "GeneralFamily-k"
  emmyqin/iw_sft bounding_trainers.py: IwSFTLoss(sum_over_time=True, temp=1.0)
  Rho-1 (arXiv 2404.07965, Eq. 4; no training code published): the paper's formula
  online_mass (PriFT-mass's rule on the policy; no published code): its definition, u >= tau
"""

import math

import torch
import torch.nn.functional as F

IGNORE = -100


def _per_token_ce(logits, target):
    return F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none")


def _reduce(weighted, num_items_in_batch):
    return weighted.sum() / num_items_in_batch if num_items_in_batch is not None else weighted.mean()


def dft(logits, target, num_items_in_batch=None, signal_logits=None, power=1.0):
    """`power` != 1: the same function with the weight p^power (the -p^k family's gradient weight)."""
    valid = target != IGNORE
    losses = _per_token_ce(logits, target)[valid]
    with torch.no_grad():
        src = logits if signal_logits is None else signal_logits
        probs = torch.exp(-power * _per_token_ce(src, target)[valid])
    return _reduce(losses * probs, num_items_in_batch), probs


def eaft(logits, target, num_items_in_batch=None, alpha=1.0, signal_logits=None):
    valid = target != IGNORE
    losses = _per_token_ce(logits, target)[valid]
    with torch.no_grad():
        source_detached = (logits if signal_logits is None else signal_logits)[valid].detach()
        topk_val, _ = torch.topk(source_detached, k=20, dim=-1)
        log_probs_topk = topk_val - torch.logsumexp(topk_val, dim=-1, keepdim=True)
        entropy_approx = -(torch.exp(log_probs_topk) * log_probs_topk).sum(dim=-1)
        adaptive_weight = torch.pow(entropy_approx / 3.0, alpha)
    return _reduce(losses * adaptive_weight, num_items_in_batch), adaptive_weight


def asft(policy_logits, target, ref_logits, asft_alpha=0.1, signal_logits=None):
    """DFT (a mean: LLaMA-Factory passes no num_items_in_batch here) + alpha * mean KL(q || p)."""
    dft_loss, w = dft(policy_logits, target, None, signal_logits)
    kl = F.kl_div(F.log_softmax(policy_logits, dim=-1), F.softmax(ref_logits, dim=-1), reduction="none").sum(-1)
    mask = (target != IGNORE).double()
    return dft_loss + asft_alpha * (kl * mask).sum() / mask.sum(), w


def profit(logits, target, num_items_in_batch, prob_threshold=0.1, signal_logits=None):
    src = logits if signal_logits is None else signal_logits
    prob = F.softmax(src, dim=-1).gather(-1, target.clamp(min=0)[:, None]).squeeze(-1)
    new_target = target.clone()
    new_target[prob.detach() < prob_threshold] = IGNORE
    loss = F.cross_entropy(logits, new_target, ignore_index=IGNORE, reduction="sum") / num_items_in_batch
    return loss, (new_target != IGNORE)[target != IGNORE].double()


def general_family(logits, target, k=10.0):
    """loss = -(p^k - 1) / k per token, summed over the mask and divided by its size."""
    mask = (target != IGNORE).double()
    log_p_true = F.log_softmax(logits, dim=-1).gather(1, target.clamp(min=0)[:, None]).squeeze(-1)
    loss = -(torch.exp(k * log_p_true) - 1) / k * mask
    return loss.sum() / mask.sum(), None


def iw_sft(logits, labels, ref_log_probs, num_items_in_batch, clip=16.0, temp=1.0):
    """[B, T, V] logits and [B, T] labels, already shifted; ref_log_probs [B, T] = log q(y)."""
    nll = -F.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    pad = labels == IGNORE
    with torch.no_grad():
        diff = (-ref_log_probs.masked_fill(pad, 0.0) - nll.detach().masked_fill(pad, 0.0)).sum(1)
        diff = diff / (~pad).sum(1)
        iw = torch.clamp(torch.exp(temp * diff), 0.0, clip)[:, None]
    loss = (nll * iw).masked_fill(pad, 0.0).sum() / num_items_in_batch
    return loss, iw.expand_as(labels)[~pad]


def rho1(logits, target, ref_logits, ratio=0.6):
    """L = -1 / (N k%) sum_i I_k%(x_i) log p(x_i), I_k% the top k% of the batch by (-log p) - (-log q)."""
    valid = target != IGNORE
    ce = _per_token_ce(logits, target)[valid]
    with torch.no_grad():
        excess = ce - _per_token_ce(ref_logits, target)[valid]
        keep = math.ceil(ratio * excess.numel())
        chosen = torch.zeros_like(excess)
        chosen[torch.argsort(excess, descending=True, stable=True)[:keep]] = 1.0
    n = excess.numel()
    return (chosen * ce).sum() / (n * ratio), chosen / ratio


def nucleus(logits, target, num_items_in_batch, tau=0.5, signal_logits=None):
    """w = 1[u >= tau], u = q(y) + sum of the probabilities strictly below q(y)."""
    valid = target != IGNORE
    with torch.no_grad():
        logq = F.log_softmax(logits if signal_logits is None else signal_logits, dim=-1)[valid]
        lq = logq.gather(-1, target[valid][:, None])
        u = lq.exp().squeeze(-1) + torch.where(logq < lq, logq.exp(), 0.0).sum(-1)
        w = (u >= tau).double()
    return (w * _per_token_ce(logits, target)[valid]).sum() / num_items_in_batch, w


def reference(method, pol, ref, labels, n):
    """(loss, weights or None) of `method` by its reference function on flat float64 logits."""
    v = pol.shape[-1]
    flat, ref_flat, target = pol.reshape(-1, v), ref.reshape(-1, v), labels.reshape(-1)
    table = {
        "dft": lambda: dft(flat, target, n),
        "prift_prob": lambda: dft(flat, target, n, signal_logits=ref_flat),
        "profit": lambda: profit(flat, target, n),
        "prift_profit": lambda: profit(flat, target, n, signal_logits=ref_flat),
        "neg_pk": lambda: general_family(flat, target, k=10.0),
        "prift_pk": lambda: dft(flat, target, n, signal_logits=ref_flat, power=10.0),
        "eaft": lambda: eaft(flat, target, n),
        "prift_eaft": lambda: eaft(flat, target, n, signal_logits=ref_flat),
        "asft": lambda: asft(flat, target, ref_flat),
        "prift_asft": lambda: asft(flat, target, ref_flat, signal_logits=ref_flat),
        "rho1": lambda: rho1(flat, target, ref_flat),
        "online_mass": lambda: nucleus(flat, target, n),
        "iw_sft": lambda: iw_sft(pol, labels, F.log_softmax(ref, -1).gather(-1, labels.clamp(min=0)[..., None])
                                        .squeeze(-1), n),
    }
    return table[method]()
