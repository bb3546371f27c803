"""Did a GRPO run have anything to learn from? Read off the trainer's own log history.

GRPO's advantage is a completion's reward minus its group's mean, so a group whose completions all
score the same contributes no gradient. A run where that holds at every step (the reward is 0
everywhere, or 1 everywhere), or where nearly every completion is cut at `max_completion_length`
(so no answer is ever finished), returns a model that is the starting model plus noise, or
exactly the starting model. Such a run must not be presented as an RL result.

One step with a group of unequal rewards is a real policy-gradient update, so a run with few such
steps is a weak RL result, not a non-result: it is compared like any other (leaving it out would
drop a start that gives GRPO little to learn from, which is itself a finding), and its share of
steps without variance is reported beside it (`zero_variance_steps`).

    >>> learning_signal([{"frac_reward_zero_std": 1.0, "completions/clipped_ratio": 1.0}], weights_changed=False)["ok"]
    False
"""

from __future__ import annotations

CLIPPED_SHARE = 0.95
"""A mean clipped-completion ratio at or above this: the completion length is too short."""


def learning_signal(log_history: list[dict], weights_changed: bool) -> dict:
    """{ok, reason, zero_variance_steps, clipped_ratio, weights_changed} from TRL's logged steps
    (`frac_reward_zero_std`: share of groups whose rewards have zero std; `completions/clipped_ratio`)."""
    steps = [h for h in log_history if "frac_reward_zero_std" in h]
    zero = sum(float(h["frac_reward_zero_std"]) >= 1.0 for h in steps) / len(steps) if steps else 1.0
    clipped = [float(h["completions/clipped_ratio"]) for h in steps if "completions/clipped_ratio" in h]
    clipped_ratio = sum(clipped) / len(clipped) if clipped else 0.0
    reasons = []
    if not weights_changed:
        reasons.append("the weights did not change")
    if zero >= 1.0:
        reasons.append(f"{zero:.0%} of steps had no reward variance in any group")
    if clipped_ratio >= CLIPPED_SHARE:
        reasons.append(f"{clipped_ratio:.0%} of completions hit max_completion_length")
    return {"ok": not reasons, "reason": "; ".join(reasons) or None, "zero_variance_steps": round(zero, 4),
            "clipped_ratio": round(clipped_ratio, 4), "weights_changed": weights_changed}


def weights_fingerprint(model) -> tuple[float, float]:
    """(sum, sum of squares) of every parameter in float64: equal before and after training only if
    no update landed (a changed weight alters both sums except with negligible probability)."""
    import torch

    total, squares = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for p in model.parameters():
            x = p.detach().double()
            total += x.sum().cpu()
            squares += (x * x).sum().cpu()
    return total.item(), squares.item()
