"""Token-weight rules: a rule maps a token's signal to a (detached) loss weight.

The signal is read either from the model being trained ("online", as DFT does) or from a frozen
reference ("prior", as PriFT does). Every per-token rule runs with either signal, so the paper's
comparison (online vs prior for each rule) is one field of `WeightRule`:

| rule      | weight of a token (s: probability, u: mass score, H: entropy) | online      | prior        |
|-----------|----------------------------------------------------------------|-------------|--------------|
| uniform   | 1                                                              | SFT         | SFT          |
| linear    | s                                                              | DFT         | PriFT-prob   |
| power     | s ** alpha                                                     | (-p^k: see `objective`) | prift_pk |
| threshold | 1[s >= threshold]                                              | ProFit      | prift_profit |
| nucleus   | 1[u >= tau]                                                    | online_mass | PriFT-mass   |
| entropy   | (H_top20 / entropy_norm) ** alpha  (H with entropy_topk: 0)    | EAFT        | prift_eaft   |
| excess    | 1[log q - log p in the micro-batch's top keep_ratio] / keep_ratio | Rho-1 (reads both) |    |
| ratio     | min(exp(mean over the sequence of log p - log q), ratio_clip)  | iw-SFT (reads both) |     |

`kl_coef > 0` adds ASFT's anchor kl_coef * KL(q || p) per response token (q: the reference's whole
next-token distribution) to any rule: `asft` is DFT plus the anchor, `prift_asft` PriFT-prob plus it.
`excess` and `ratio` read the policy and the reference at once; their `signal` is `prior` (what they
need loaded) and they have no online/prior twin. docs/workbench.md gives each method's source.

    >>> import torch
    >>> lp, u = torch.log(torch.tensor([0.9, 0.2])), torch.tensor([1.0, 0.3])
    >>> token_weights(METHODS["prift_mass"], lp, u).tolist()
    [1.0, 0.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from common.checks import at_least, fraction, interval, one_of, positive, require

Rule = Literal["uniform", "linear", "power", "threshold", "nucleus", "entropy", "excess", "ratio"]
Signal = Literal["online", "prior"]
RULES = ("uniform", "linear", "power", "threshold", "nucleus", "entropy", "excess", "ratio")
TWO_SIGNAL_RULES = ("excess", "ratio")  # read log p and log q together
SIGNALS = ("online", "prior")
OBJECTIVES = ("nll", "prob")


@dataclass(frozen=True)
class WeightRule:
    """How each response token's cross-entropy is weighted."""

    rule: Rule = "uniform"
    """One of RULES: `uniform` (plain SFT), `linear`, `power`, `threshold`, `nucleus`, `entropy`
    (EAFT), `excess` (Rho-1) or `ratio` (iw-SFT); see prift.weights for each formula."""
    signal: Signal = "prior"
    """`prior`: the frozen reference's q(y_t); `online`: the trained model's detached p(y_t).
    `excess` and `ratio` read both and take `prior`."""
    alpha: float = 10.0
    """Exponent of the `power` rule (10: the "-p^10" of arXiv 2510.00526) and of the `entropy` rule
    (EAFT's `eaft_alpha`, 1 in the named methods)."""
    threshold: float = 0.1
    """Probability cut-off of the `threshold` rule (ProFit keeps tokens with p >= 0.1)."""
    tau: float = 0.5
    """Mass cut-off of the `nucleus` rule: keep a token iff u_t >= tau (PriFT-mass: 0.5)."""
    entropy_topk: int = 20
    """`entropy` rule: 20 reads EAFT's entropy of the 20 largest logits renormalised among themselves
    (LLaMA-Factory's code); 0 reads the entropy of the whole distribution."""
    entropy_norm: float = 3.0
    """`entropy` rule: the entropy is divided by this before the power (LLaMA-Factory divides by 3.0,
    about ln 20 = 2.996, the top-20 entropy's maximum)."""
    keep_ratio: float = 0.6
    """`excess` rule (Rho-1): the share of a micro-batch's response tokens kept, those with the largest
    excess loss (-log p) - (-log q); kept tokens weigh 1 / keep_ratio (the paper's 1 / (N k%))."""
    ratio_clip: float = 16.0
    """`ratio` rule (iw-SFT): the sequence weight exp(mean_t log p - log q) is clipped to [0, ratio_clip]
    (the reference code's 16)."""
    kl_coef: float = 0.0
    """ASFT's anchor: add kl_coef * KL(q || p) per response token, over the whole vocabulary, from the
    resident reference whatever `prior.mode` says (0: no anchor; LLaMA-Factory's `asft_alpha`: 0.1)."""
    objective: Literal["nll", "prob"] = "nll"
    """`nll`: -w log p; `prob`: the probability objective (1 - p^alpha) / alpha of arXiv 2510.00526
    (the `-p^k` family: same gradient as `power` online, its own loss value); online `power` only."""

    def __post_init__(self):
        require(
            one_of("rule", self.rule, RULES),
            one_of("signal", self.signal, SIGNALS),
            one_of("objective", self.objective, OBJECTIVES),
            fraction("tau", self.tau),
            fraction("threshold", self.threshold),
            positive("alpha", self.alpha),
            one_of("entropy_topk", str(self.entropy_topk), ("0", "20")),
            positive("entropy_norm", self.entropy_norm),
            interval("keep_ratio", self.keep_ratio, 0, 1, low_open=True),
            positive("ratio_clip", self.ratio_clip),
            at_least("kl_coef", self.kl_coef, 0),
            "signal: the excess and ratio rules read both signals; set signal: prior"
            if self.rule in TWO_SIGNAL_RULES and self.signal != "prior" else None,
            "objective: prob is the -p^k objective of the online power rule; set rule: power, signal: online"
            if self.objective == "prob" and (self.rule, self.signal) != ("power", "online") else None,
        )

    @property
    def needs_prior(self) -> bool:
        """The rule reads the reference: a per-token prior signal, both signals, or the anchor."""
        return (self.rule != "uniform" and self.signal == "prior") or self.kl_coef > 0

    @property
    def needs_online_mass(self) -> bool:
        return self.rule == "nucleus" and self.signal == "online"

    @property
    def signals(self) -> tuple[str, ...]:
        """The per-token signals the weights read, as `<signal>_<name>` (prift.signals.SIGNAL_NAMES);
        `online_logprob` is the trained model's own, always at hand."""
        if self.rule == "uniform":
            return ()
        if self.rule in TWO_SIGNAL_RULES:
            return ("online_logprob", "prior_logprob")
        names = {"nucleus": "mass", "entropy": "entropy_top" if self.entropy_topk else "entropy"}
        name = names.get(self.rule, "logprob")
        return (f"{self.signal}_{name}",)


METHODS: dict[str, WeightRule] = {
    "sft": WeightRule("uniform"),
    "dft": WeightRule("linear", "online"),
    "prift_prob": WeightRule("linear", "prior"),
    "prift_mass": WeightRule("nucleus", "prior", tau=0.5),
    "online_mass": WeightRule("nucleus", "online", tau=0.5),
    "profit": WeightRule("threshold", "online", threshold=0.1),
    "prift_profit": WeightRule("threshold", "prior", threshold=0.1),
    "neg_pk": WeightRule("power", "online", alpha=10.0, objective="prob"),
    "prift_pk": WeightRule("power", "prior", alpha=10.0),
    "eaft": WeightRule("entropy", "online", alpha=1.0),
    "prift_eaft": WeightRule("entropy", "prior", alpha=1.0),
    "asft": WeightRule("linear", "online", kl_coef=0.1),
    "prift_asft": WeightRule("linear", "prior", kl_coef=0.1),
    "rho1": WeightRule("excess", "prior", keep_ratio=0.6),
    "iw_sft": WeightRule("ratio", "prior", ratio_clip=16.0),
}
"""Named methods: the published rules (online) and their prior twins; see docs/workbench.md."""


def resolve_method(method: str | WeightRule) -> WeightRule:
    """A method name from METHODS, or a WeightRule as is."""
    if isinstance(method, WeightRule):
        return method
    if method not in METHODS:
        raise ValueError(f"method: expected one of {sorted(METHODS)} or a custom rule, got {method!r}")
    return METHODS[method]


def twin(method: str) -> str | None:
    """The named method that differs from `method` only in its signal (online <-> prior), if any."""
    rule = METHODS[method]
    if rule.rule == "uniform" or rule.rule in TWO_SIGNAL_RULES:
        return None
    other = "prior" if rule.signal == "online" else "online"
    matches = [m for m, r in METHODS.items() if r.rule == rule.rule and r.signal == other
               and r.kl_coef == rule.kl_coef and (r.alpha == rule.alpha or rule.rule != "power")]
    return matches[0] if matches else None


def token_weights(rule: WeightRule, logprob: torch.Tensor, mass: torch.Tensor | None = None,
                  entropy: torch.Tensor | None = None) -> torch.Tensor:
    """Weights (float32, detached) of a per-token rule from the chosen signal's log-probability of the
    target, mass u and entropy (the one `rule.entropy_topk` names)."""
    logprob = logprob.detach().float()
    if rule.rule == "uniform":
        return torch.ones_like(logprob)
    if rule.rule == "linear":
        return logprob.exp()
    if rule.rule == "power":
        return (rule.alpha * logprob).exp()
    if rule.rule == "threshold":  # compared in log space: no underflow for tiny thresholds
        return (logprob >= (math.log(rule.threshold) if rule.threshold > 0 else -math.inf)).float()
    if rule.rule == "entropy":
        if entropy is None:
            raise ValueError("the entropy rule needs the entropy signal")
        return (entropy.detach().float() / rule.entropy_norm).pow(rule.alpha)
    if rule.rule in TWO_SIGNAL_RULES:
        raise ValueError(f"the {rule.rule} rule reads both signals: use batch_weights")
    if mass is None:
        raise ValueError("the nucleus rule needs the mass score u")
    return (mass.detach().float() >= rule.tau).float()


def batch_weights(rule: WeightRule, signals: dict[str, torch.Tensor], mask: torch.Tensor,
                  sequence_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Weights (float32, detached, 0 off `mask`) of a micro-batch's label positions [B, T].

    `signals` maps `rule.signals` names to [B, T] tensors; `sequence_ids` [B, T] tells the examples of
    a row apart (the `ratio` rule's per-sequence mean; padded rows are one example each)."""
    missing = [s for s in rule.signals if signals.get(s) is None]
    if missing:
        raise ValueError(f"rule {rule.rule!r} ({rule.signal}) needs the signals {missing} in the batch")
    mask = mask.bool()
    if rule.rule == "excess":
        w = _excess_weights(rule, signals["online_logprob"].detach().float(), signals["prior_logprob"].float(), mask)
    elif rule.rule == "ratio":
        w = _ratio_weights(rule, signals["online_logprob"].detach().float(), signals["prior_logprob"].float(), mask,
                           sequence_ids)
    else:
        name = rule.signals[0] if rule.signals else None
        value = signals[name] if name else torch.zeros(mask.shape, device=mask.device)
        kind = name.split("_", 1)[1] if name else "logprob"
        w = token_weights(rule, value if kind == "logprob" else torch.zeros_like(value),
                          mass=value if kind == "mass" else None, entropy=value if kind.startswith("entropy") else None)
    return torch.where(mask, w, 0.0)


def _excess_weights(rule: WeightRule, lp: torch.Tensor, lq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Rho-1: the ceil(keep_ratio * n) response tokens of the micro-batch with the largest excess loss
    (-log p) - (-log q) weigh 1 / keep_ratio, the others 0 (ties broken by position)."""
    excess = (lq - lp)[mask]
    keep = math.ceil(rule.keep_ratio * excess.numel())
    chosen = torch.zeros_like(excess)
    if keep:
        # a stable descending sort: equal scores keep their order, in padded and packed rows alike
        chosen[torch.sort(excess, descending=True, stable=True).indices[:keep]] = 1.0 / rule.keep_ratio
    out = torch.zeros_like(lp)
    out[mask] = chosen
    return out


def _ratio_weights(rule: WeightRule, lp: torch.Tensor, lq: torch.Tensor, mask: torch.Tensor,
                   sequence_ids: torch.Tensor | None) -> torch.Tensor:
    """iw-SFT: per example, exp(mean over its response tokens of log p - log q), clipped to [0, ratio_clip]."""
    if sequence_ids is None:
        sequence_ids = torch.arange(mask.shape[0], device=mask.device)[:, None].expand(mask.shape)
    ids = torch.unique(sequence_ids, return_inverse=True)[1]
    n = int(ids.max()) + 1 if ids.numel() else 0
    diff = torch.where(mask, lp - lq, 0.0).reshape(-1)
    count = torch.zeros(n, device=mask.device).index_add_(0, ids.reshape(-1), mask.reshape(-1).float())
    total = torch.zeros(n, device=mask.device).index_add_(0, ids.reshape(-1), diff)
    seq_w = torch.exp(total / count.clamp(min=1)).clamp(0.0, rule.ratio_clip)
    return seq_w[ids]
