"""The demo's own settings hold up: its SFT rows fit, and its RL has something to learn from."""

import json
from pathlib import Path

import pytest

from workflows.config import load_config

DEMO = Path(__file__).parent.parent / "workflows" / "configs" / "demo.yaml"


def test_no_demo_sft_row_is_truncated_or_dropped():
    from prift.data import load_rows, tokenize_rows, validate_rows
    from common.models import load_tokenizer

    cfg = load_config(DEMO)
    rows = tokenize_rows(validate_rows(load_rows(cfg.data), cfg.data), load_tokenizer(cfg.model), cfg.data.max_length)
    assert len(rows) == cfg.data.limit
    assert [r["num_truncated"] for r in rows] == [0] * len(rows)


def test_the_demo_evaluates_the_rl_tasks_held_out_twin_and_held_out_demonstrations():
    """The demo's table has a task where the RL models can move: one-digit sums under the RL prompt,
    none of them an RL prompt; and its held-out NLL rows are not SFT rows."""
    from evals.tasks import load_examples
    from rl.prompts import build_rows, check_no_eval_overlap
    from workflows.preflight import check_heldout

    cfg = load_config(DEMO)
    twin = next(t for t in cfg.eval.tasks if t.generated)
    generator = cfg.rl.prompts.generators[0]
    assert twin.template == cfg.rl.prompts.template and twin.options == generator.options
    rows = build_rows(cfg.rl.prompts, cfg.eval.tasks)
    check_no_eval_overlap(rows, cfg.eval.tasks)
    assert len(rows) == generator.size
    questions = {ex.meta["problem"] for ex in load_examples(twin)}
    assert len(questions) > 0.9 * twin.limit  # a held-out set of distinct sums, not a few repeated ones
    assert cfg.heldout.skip == cfg.data.limit
    check_heldout(cfg)


@pytest.mark.slow
def test_the_demo_rl_settings_give_a_learning_signal(tmp_path):
    """SmolLM2-135M on the demo's own RL settings (from the base model instead of the SFT one):
    rewards above 0 that differ inside groups, completions that finish, weights that move."""
    from rl.grpo import run_rl

    cfg = load_config(DEMO)
    final = run_rl(cfg.model, cfg.rl, tmp_path, eval_tasks=cfg.eval.tasks)
    summary = json.loads((final / "prift_rl.json").read_text())
    signal = summary["learning_signal"]
    assert summary["rollout"] == "vllm_colocate"
    assert signal["ok"] and signal["weights_changed"], signal
    assert signal["zero_variance_steps"] < 1.0 and signal["clipped_ratio"] < 0.9, signal
    accuracy = [h["rewards/math_verify/mean"] for h in summary["log_history"] if "rewards/math_verify/mean" in h]
    assert len(accuracy) == cfg.rl.max_steps and max(accuracy) > 0, accuracy  # a right sum, not only a box
    assert summary["train"]["train_loss"] == summary["train"]["train_loss"]  # not NaN
