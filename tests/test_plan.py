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
    twin = plans["rg_basic_arithmetic"]
    assert (twin.problems, twin.samples, twin.seeds) == (64, 1, 1)
    assert twin.detectable == pytest.approx(Z * math.sqrt(2 * 0.5 * 0.5 / 64), rel=1e-6)  # 24.8 points
    models = 1 + 4 * 1 * 1  # the base, and 4 methods x 1 seed x the rl model
    assert twin.tokens == models * 64 * 1 * 64 and twin.seconds is None
    assert plan(cfg, accuracy=0.1)[0].detectable == pytest.approx(Z * math.sqrt(2 * 0.1 * 0.9 / 64), rel=1e-6)
    assert main(["plan", DEMO]) == 0
    assert "| rg_basic_arithmetic | 64 | 1 | 1 | ±24.8 points | assumed accuracy 0.50 |" in capsys.readouterr().out


def test_an_earlier_sweep_scales_its_measured_error_by_the_tries(monkeypatch, tmp_path):
    cfg = load_config(DEMO, ["pipeline.seeds=[0, 1, 2, 3]"])
    # measured there: 20 points with 16 tries per arm, 40 tokens a completion at 100 tokens/s
    monkeypatch.setattr(workflows.plan, "_measured", lambda sweep: {"rg_basic_arithmetic": (0.20, 16, 40.0, 100.0)})
    twin = plan(cfg, earlier=tmp_path)[0]
    assert twin.seeds == 4 and twin.detectable == pytest.approx(0.20 * math.sqrt(16 / 256))  # 16x the tries: 1/4
    assert twin.source == f"measured in {tmp_path.name}"
    assert twin.seconds == pytest.approx((1 + 4 * 4) * 64 * 1 * 40.0 / 100.0)


def test_a_bad_accuracy_or_sweep_is_a_message(tmp_path, capsys):
    assert main(["plan", DEMO, "--accuracy", "1.5"]) == 2
    assert "--accuracy: expected a rate strictly between 0 and 1, got 1.5" in capsys.readouterr().err
    assert main(["plan", DEMO, "--from", str(tmp_path / "nope")]) == 2
    assert "is not a sweep folder" in capsys.readouterr().err
