"""Token-weight rules: a rule maps a token's probability signal to a (detached) loss weight.

The signal is read either from the model being trained ("online", as DFT does) or from a frozen
reference ("prior", as PriFT does). Every rule runs with either signal, so the paper's comparison
(online vs prior for each rule) is one field of `WeightRule`:

| rule      | weight of a token with probability s / mass score u | online     | prior       |
|-----------|------------------------------------------------------|------------|-------------|
| uniform   | 1                                                    | SFT        | SFT         |
| linear    | s                                                    | DFT        | PriFT-prob  |
| power     | s ** alpha                                           |            |             |
| threshold | 1[s >= threshold]                                    |            |             |
| nucleus   | 1[u >= tau]                                          |            | PriFT-mass  |

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

from common.checks import fraction, one_of, positive, require

Rule = Literal["uniform", "linear", "power", "threshold", "nucleus"]
Signal = Literal["online", "prior"]
RULES = ("uniform", "linear", "power", "threshold", "nucleus")
SIGNALS = ("online", "prior")


@dataclass(frozen=True)
class WeightRule:
    """How each response token's cross-entropy is weighted."""

    rule: Rule = "uniform"
    """One of RULES: `uniform` (plain SFT), `linear`, `power`, `threshold` or `nucleus`."""
    signal: Signal = "prior"
    """`prior`: the frozen reference's q(y_t); `online`: the trained model's detached p(y_t)."""
    alpha: float = 10.0
    """Exponent of the `power` rule (10 gives the "-p^10" objective of arXiv 2510.00526)."""
    threshold: float = 0.1
    """Probability cut-off of the `threshold` rule (ProFit keeps tokens with p > 0.1)."""
    tau: float = 0.5
    """Mass cut-off of the `nucleus` rule: keep a token iff u_t >= tau (PriFT-mass: 0.5)."""

    def __post_init__(self):
        require(
            one_of("rule", self.rule, RULES),
            one_of("signal", self.signal, SIGNALS),
            fraction("tau", self.tau),
            fraction("threshold", self.threshold),
            positive("alpha", self.alpha),
        )

    @property
    def needs_prior(self) -> bool:
        return self.rule != "uniform" and self.signal == "prior"

    @property
    def needs_online_mass(self) -> bool:
        return self.rule == "nucleus" and self.signal == "online"


METHODS: dict[str, WeightRule] = {
    "sft": WeightRule("uniform"),
    "dft": WeightRule("linear", "online"),
    "prift_prob": WeightRule("linear", "prior"),
    "prift_mass": WeightRule("nucleus", "prior", tau=0.5),
}


def resolve_method(method: str | WeightRule) -> WeightRule:
    """A method name from METHODS, or a WeightRule as is."""
    if isinstance(method, WeightRule):
        return method
    if method not in METHODS:
        raise ValueError(f"method: expected one of {sorted(METHODS)} or a custom rule, got {method!r}")
    return METHODS[method]


def token_weights(rule: WeightRule, logprob: torch.Tensor, mass: torch.Tensor | None = None) -> torch.Tensor:
    """Weights (float32, detached) from the chosen signal's log-probability of the target and mass u."""
    logprob = logprob.detach().float()
    if rule.rule == "uniform":
        return torch.ones_like(logprob)
    if rule.rule == "linear":
        return logprob.exp()
    if rule.rule == "power":
        return (rule.alpha * logprob).exp()
    if rule.rule == "threshold":  # compared in log space: no underflow for tiny thresholds
        return (logprob >= (math.log(rule.threshold) if rule.threshold > 0 else -math.inf)).float()
    if mass is None:
        raise ValueError("the nucleus rule needs the mass score u")
    return (mass.detach().float() >= rule.tau).float()
