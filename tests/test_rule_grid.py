"""The paper's rule grid (workflows/configs/paper_rule_grid.yaml): every rule with both signals on the
1.5B math recipe, and `prift validate` passing on it with the hub and the GPU cluster stood in for."""

import dataclasses
from pathlib import Path

import yaml

from prift.weights import METHODS, TWO_SIGNAL_RULES, twin
from workflows.cli import main
from workflows.config import load_config

CONFIGS = Path(__file__).parents[1] / "workflows" / "configs"
GRID = CONFIGS / "paper_rule_grid.yaml"
RECIPE = CONFIGS / "paper_math_qwen2.5_1.5b.yaml"


def test_every_rule_runs_with_both_signals():
    cfg = load_config(GRID)
    methods = cfg.pipeline.methods
    assert set(methods) == set(METHODS)  # every named method, so every rule of the family
    for m in methods:
        rule = METHODS[m]
        if rule.rule != "uniform" and rule.rule not in TWO_SIGNAL_RULES:
            assert twin(m) in methods, f"{m} has no twin in the grid"
    assert {METHODS[m].rule for m in methods} == {"uniform", "linear", "power", "threshold", "nucleus", "entropy",
                                                   "excess", "ratio"}


def test_the_grid_keeps_every_setting_of_the_papers_recipe():
    grid, recipe = load_config(GRID), load_config(RECIPE)
    for section in ("model", "data", "prior", "sft", "rl", "eval"):
        assert getattr(grid, section) == getattr(recipe, section), section
    assert grid.pipeline.resources == recipe.pipeline.resources
    raw = yaml.safe_load(GRID.read_text())
    assert raw["model"] == "Qwen/Qwen2.5-Math-1.5B" and raw["pipeline"]["stages"]["rl"] is False


def test_prift_validate_passes_on_the_grid(monkeypatch, capsys):
    """Every local check runs; the hub fetches are recorded instead (`_online`), the cluster has 8 GPUs."""
    import workflows.preflight as preflight
    import workflows.ray_session as ray_session

    fetched = []
    monkeypatch.setattr(preflight, "_online", lambda cfg, check, names: fetched.extend(names) or [])
    monkeypatch.setattr(preflight, "check_weight_sync", lambda cfg: [])
    monkeypatch.setattr(ray_session, "cluster_gpus", lambda cfg: 8)
    monkeypatch.setattr(ray_session, "node_gpus", lambda cfg: [8])
    assert main(["validate", str(GRID)]) == 0, capsys.readouterr().err
    assert "model 'Qwen/Qwen2.5-Math-1.5B'" in fetched and "data.path 'AI-MO/NuminaMath-CoT'" in fetched


def test_qwen3_8b_recipe_is_the_7b_recipe_on_qwen3():
    q3, q7 = load_config(CONFIGS / "paper_math_qwen3_8b_base.yaml"), load_config(CONFIGS / "paper_math_qwen2.5_7b.yaml")
    assert q3.model == "Qwen/Qwen3-8B-Base"
    assert q3.sft == q7.sft and q3.data == q7.data and q3.prior == q7.prior
    assert q3.eval.sampling.max_new_tokens == 4096  # the paper's budget: Qwen3's context holds it
    assert dataclasses.replace(q3.eval, sampling=q7.eval.sampling) == q7.eval
