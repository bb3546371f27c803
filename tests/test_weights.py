"""The rule family: each rule's weight, for both signals, from its definition."""

import math

import pytest
import torch

from prift.weights import METHODS, WeightRule, resolve_method, token_weights

P = torch.tensor([0.9, 0.5, 0.11, 0.01])
U = torch.tensor([1.0, 0.6, 0.5, 0.2])


@pytest.mark.parametrize(
    "rule,expected",
    [
        (WeightRule("uniform"), [1, 1, 1, 1]),
        (WeightRule("linear"), [0.9, 0.5, 0.11, 0.01]),
        (WeightRule("power", alpha=2.0), [0.81, 0.25, 0.0121, 0.0001]),
        (WeightRule("threshold", threshold=0.1), [1, 1, 1, 0]),
        (WeightRule("threshold", threshold=1.0), [0, 0, 0, 0]),
        (WeightRule("nucleus", tau=0.5), [1, 1, 1, 0]),  # u >= tau
    ],
)
def test_rule_values(rule, expected):
    w = token_weights(rule, P.log(), U)
    torch.testing.assert_close(w, torch.tensor(expected, dtype=torch.float32), atol=1e-6, rtol=1e-5)


def test_weights_are_detached():
    lp = P.log().requires_grad_()
    assert not token_weights(WeightRule("linear"), lp).requires_grad


def test_named_methods_map_to_the_paper():
    assert METHODS["dft"] == WeightRule("linear", "online")
    assert METHODS["prift_prob"] == WeightRule("linear", "prior")
    assert METHODS["prift_mass"].rule == "nucleus" and METHODS["prift_mass"].tau == 0.5
    assert not METHODS["sft"].needs_prior and METHODS["prift_mass"].needs_prior
    assert WeightRule("nucleus", "online").needs_online_mass


@pytest.mark.parametrize("kwargs,field", [({"rule": "cubic"}, "rule"), ({"signal": "both"}, "signal"),
                                          ({"tau": 1.5}, "tau"), ({"alpha": 0}, "alpha")])
def test_bad_rules_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        WeightRule(**kwargs)
    with pytest.raises(ValueError, match="method"):
        resolve_method("prift_typo")


def test_power_is_exact_for_tiny_probabilities():
    w = token_weights(WeightRule("power", alpha=10.0), torch.tensor([math.log(0.5)]))
    assert w.item() == pytest.approx(0.5**10, rel=1e-6)


def test_threshold_boundary_is_inclusive_and_tiny_thresholds_do_not_underflow():
    keep_certain = token_weights(WeightRule("threshold", threshold=1.0), torch.tensor([0.0, -1e-3]))
    assert keep_certain.tolist() == [1.0, 0.0]
    tiny = token_weights(WeightRule("threshold", threshold=1e-60), torch.tensor([-130.0, -140.0]))
    assert tiny.tolist() == [1.0, 0.0]  # exp(-130) underflows float32; log(1e-60) = -138.2
