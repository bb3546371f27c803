"""`prift plan`: the detectable difference of a sweep's comparisons from its config, by hand."""

import math
from pathlib import Path

import pytest

import workflows.plan
from workflows.cli import main
from workflows.config import load_config
from workflows.plan import plan

DEMO = str(Path(__file__).resolve().parents[1] / "workflows" / "configs" / "demo.yaml")
Z = 1.959964 + 0.841621  # normal quantiles 0.975 and 0.8


def test_the_demo_plan_is_the_binomial_error_of_its_tries(capsys):
    cfg = load_config(DEMO, [])
    plans = {p.task: p for p in plan(cfg)}
    gsm8k = plans["gsm8k"]
    assert (gsm8k.problems, gsm8k.samples, gsm8k.seeds) == (3, 2, 1)
    assert gsm8k.detectable == pytest.approx(Z * math.sqrt(2 * 0.5 * 0.5 / 6), rel=1e-6)  # 80.9 points
    models = 1 + 4 * 1 * 1  # the base, and 4 methods x 1 seed x the rl model
    assert gsm8k.tokens == models * 3 * 2 * 48 and gsm8k.seconds is None
    assert plan(cfg, accuracy=0.1)[0].detectable == pytest.approx(Z * math.sqrt(2 * 0.1 * 0.9 / 6), rel=1e-6)
    assert main(["plan", DEMO]) == 0
    assert "| gsm8k | 3 | 2 | 1 | ±80.9 points | assumed accuracy 0.50 |" in capsys.readouterr().out


def test_an_earlier_sweep_scales_its_measured_error_by_the_tries(monkeypatch, tmp_path):
    cfg = load_config(DEMO, ["pipeline.seeds=[0, 1, 2, 3]"])
    # measured there: 20 points on gsm8k with 6 tries per arm, 40 tokens a completion at 100 tokens/s
    monkeypatch.setattr(workflows.plan, "_measured", lambda sweep: {"gsm8k": (0.20, 6, 40.0, 100.0)})
    gsm8k = plan(cfg, earlier=tmp_path)[0]
    assert gsm8k.seeds == 4 and gsm8k.detectable == pytest.approx(0.20 * math.sqrt(6 / 24))  # 4x the tries: half
    assert gsm8k.source == f"measured in {tmp_path.name}"
    assert gsm8k.seconds == pytest.approx((1 + 4 * 4) * 3 * 2 * 40.0 / 100.0)


def test_a_bad_accuracy_or_sweep_is_a_message(tmp_path, capsys):
    assert main(["plan", DEMO, "--accuracy", "1.5"]) == 2
    assert "--accuracy: expected a rate strictly between 0 and 1, got 1.5" in capsys.readouterr().err
    assert main(["plan", DEMO, "--from", str(tmp_path / "nope")]) == 2
    assert "is not a sweep folder" in capsys.readouterr().err
