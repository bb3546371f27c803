"""The RL stage: learning a verifiable reward, weight sync to vLLM, failing rewards, bad prompt sets, resume."""

import json
import logging

import pytest
import torch
import yaml
from transformers import TrainerCallback

import rl.rewards
from common.errors import InputError
from evals.tasks import TaskError, TaskSpec
from rl.grpo import RLStageConfig, RewardSpec, run_rl
from rl.prompts import GeneratorSpec, PromptsConfig, build_rows
from rl.rewards import code_tests, guarded, math_answer
from workflows.cli import main


def tiny_rl(**overrides) -> RLStageConfig:
    settings = dict(
        prompts=PromptsConfig(generators=[GeneratorSpec(size=32)]), rewards=[RewardSpec("digits")],
        num_generations=4, per_device_batch_size=8, max_completion_length=12, learning_rate=5e-3,
        max_steps=30, logging_steps=5, save_steps=30, rollout="hf", max_model_len=512,
    )
    return RLStageConfig(**(settings | overrides))


pytestmark = pytest.mark.usefixtures("digits_reward")


class History(TrainerCallback):
    def __init__(self):
        self.logs, self.steps = [], []

    def on_log(self, args, state, control, logs=None, **kw):
        self.logs.append(dict(logs or {}))

    def on_step_end(self, args, state, control, **kw):
        self.steps.append(state.global_step)


def rewards_logged(history: History) -> list[float]:
    return [log["reward"] for log in history.logs if "reward" in log]


def test_tiny_model_learns_a_verifiable_reward_with_hf_rollouts(tiny_model, tmp_path, capfd):
    history = History()
    final = run_rl(tiny_model, tiny_rl(), tmp_path, callbacks=[history])
    assert "Advantage" not in capfd.readouterr().out  # TRL's completions table stays off the console
    rewards = rewards_logged(history)
    assert len(rewards) == 6
    assert rewards[-1] > rewards[0] + 0.15, rewards
    assert (final / "config.json").exists() and json.loads((final / "prift_rl.json").read_text())["rollout"] == "hf"
    assert len(list((tmp_path / "checkpoints" / "completions").glob("*.parquet"))) == 6  # one per logging step


@pytest.mark.slow
def test_cli_rl_with_vllm_colocate_learns(tiny_model, tmp_path):
    config = {"model": tiny_model, "output_dir": str(tmp_path / "run"),
              "rl": {"prompts": {"generators": [{"size": 32}]}, "rewards": [{"name": "digits"}],
                     "rollout": "vllm_colocate", "num_generations": 4, "per_device_batch_size": 8,
                     "max_completion_length": 12, "learning_rate": 5.0e-3, "max_steps": 30, "logging_steps": 5,
                     "save_steps": 30, "max_model_len": 512}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["rl", str(path)]) == 0
    final = tmp_path / "run" / "rl" / "final"
    assert json.loads((final / "prift_rl.json").read_text())["rollout"] == "vllm_colocate"
    state = json.loads((tmp_path / "run" / "rl" / "checkpoints" / "checkpoint-30" / "trainer_state.json").read_text())
    rewards = [h["reward"] for h in state["log_history"] if "reward" in h]
    assert rewards[-1] > rewards[0] + 0.15, rewards


def test_a_failing_reward_scores_zero_for_its_samples_and_the_run_goes_on(tiny_model, tmp_path, monkeypatch, caplog):
    def flaky(prompts, completions, id, **_):  # raises on the prompts with an odd index
        return [1 / 0 if int(i.rsplit("/", 1)[1]) % 2 else 1.0 for i in id]

    monkeypatch.setitem(rl.rewards.REWARDS, "flaky", flaky)
    history = History()
    with caplog.at_level(logging.INFO, logger="rl.rewards"):
        run_rl(tiny_model, tiny_rl(rewards=[RewardSpec("flaky")], max_steps=2, logging_steps=1), tmp_path,
               callbacks=[history])
    assert history.steps == [1, 2]
    means = [log["rewards/flaky/mean"] for log in history.logs if "reward" in log]
    assert len(means) == 2 and all(0 < m < 1 for m in means), means  # odd prompts scored 0, even 1
    assert "reward flaky raised on sample" in caplog.text and "(scored 0): ZeroDivisionError" in caplog.text
    assert "reward flaky raised on its batch (ZeroDivisionError" in caplog.text  # never swallowed silently


def test_guarded_keeps_other_samples_and_none():
    def picky(prompts, completions, **_):
        if any(c == "bad" for c in completions):
            raise ValueError("bad completion")
        return [None if c == "skip" else 1.0 for c in completions]

    assert guarded(picky)([None] * 3, ["ok", "bad", "skip"]) == [1.0, 0.0, None]


def test_empty_prompt_set_and_unknown_generator_fail_before_any_model(tmp_path):
    with pytest.raises(TaskError, match="no prompts"):
        run_rl(str(tmp_path / "no-model"), tiny_rl(prompts=PromptsConfig(generators=[])), tmp_path)
    with pytest.raises(TaskError, match="reasoning-gym dataset 'no_such_gym'"):
        run_rl(str(tmp_path / "no-model"), tiny_rl(prompts=PromptsConfig(generators=[GeneratorSpec("no_such_gym")])),
               tmp_path)


def test_prompts_that_are_in_an_eval_set_are_refused(tmp_path):
    leaked = PromptsConfig(tasks=[TaskSpec("gsm8k", limit=5, seed=1)], generators=[GeneratorSpec(size=8)])
    with pytest.raises(TaskError, match=r"5 RL prompt\(s\) are evaluation prompts: gsm8k row gsm8k-test-"):
        run_rl(str(tmp_path / "no-model"), tiny_rl(prompts=leaked), tmp_path, eval_tasks=[TaskSpec("gsm8k", limit=1)])
    # the same prompts are fine when no evaluation task holds them
    rows = build_rows(leaked)
    assert len(rows) == 13 and {r["scorer"] for r in rows} == {"math"}


def test_resume_continues_from_the_checkpoint_without_repeating_steps(tiny_model, tmp_path):
    cfg = tiny_rl(max_steps=4, save_steps=2, logging_steps=1)
    run_rl(tiny_model, cfg, tmp_path)
    # an interruption after step 2: the step-4 checkpoint and final/ never got written
    import shutil

    shutil.rmtree(tmp_path / "final")
    shutil.rmtree(tmp_path / "checkpoints" / "checkpoint-4")
    history = History()
    final = run_rl(tiny_model, cfg, tmp_path, callbacks=[history])
    assert history.steps == [3, 4]
    assert json.loads((final / "prift_rl.json").read_text())["steps"] == 4


def test_answer_rewards_score_their_own_rows_only():
    completions = [[{"role": "assistant", "content": "so \\boxed{0.5}"}], [{"role": "assistant", "content": "B"}]]
    assert math_answer(None, completions, answer=["1/2", "B"], scorer=["math", "choice"]) == [1.0, None]


def test_each_answer_reward_scores_its_kinds_rows_in_a_mixed_batch_and_logs_what_it_did(caplog):
    code = {"prompt": "", "entry_point": "f", "setup": "", "tests": ["assert f(1) == 2"]}
    rows = [  # (completion, answer, letters, code, scorer)
        ("so \\boxed{0.5}", "1/2", "", None, "math"), ("**Answer:** 12", "12", "", None, "math"),
        ("The answer is (B).", "B", "ABCD", None, "choice"), ("maybe", "no", "", None, "label"),
        ("def f(x):\n    return x + 1\n", "", "", code, "code"),
    ]
    completions = [[{"role": "assistant", "content": c}] for c, *_ in rows]
    columns = {"answer": [r[1] for r in rows], "letters": [r[2] for r in rows], "code": [r[3] for r in rows],
               "scorer": [r[4] for r in rows], "id": list("abcde")}
    expected = {"math_answer": [1.0, 0.0, None, None, None], "math_verify": [1.0, 1.0, None, None, None],
                "choice_answer": [None, None, 1.0, None, None], "label_answer": [None, None, None, 0.0, None],
                "code_tests": [None, None, None, None, 1.0]}
    for name, values in expected.items():
        logged = []
        fn = rl.rewards.REWARDS[name]
        assert fn.__name__ == name  # TRL's metric names: rewards/<name>/mean
        assert guarded(fn)([None] * 5, completions, log_metric=lambda k, v: logged.append((k, v)), **columns) == values
        assert logged == ([(f"{name}/timeouts", 0.0)] if name.startswith("math") else []), name


def test_a_scorer_column_value_that_names_no_kind_is_an_error_naming_its_row(caplog):
    completions = [[{"role": "assistant", "content": "\\boxed{4}"}]] * 2
    with pytest.raises(InputError, match=r"row 1: scorer: unknown answer kind 'maths', expected one of math, choice"):
        math_answer(None, completions, answer=["4", "4"], scorer=["math", "maths"])
    with caplog.at_level(logging.WARNING, logger="rl.rewards"):
        assert guarded(math_answer)([None] * 2, completions, answer=["4", "4"], scorer=["math", "maths"]) == [1.0, 0.0]
    assert "reward math_answer raised on sample 1 (scored 0): InputError:" in caplog.text
    assert "unknown answer kind 'maths'" in caplog.text


def test_code_reward_is_the_fraction_of_tests_passed():
    meta = {"prompt": "", "entry_point": "f", "setup": "",
            "tests": ["assert f(1) == 2", "assert f(2) == 3", "assert f(-1) == 5"]}
    right, wrong = "```python\ndef f(x):\n    return x + 1\n```", "def f(x):\n    return 0\n"
    scores = code_tests(None, [right, wrong], code=[meta, meta], scorer=["code", "code"])
    assert scores == pytest.approx([2 / 3, 0.0])


def test_the_code_reward_runs_under_the_rl_stage_sandbox_limits():
    import time

    import rl.rewards
    from sandbox import SandboxConfig

    meta = {"prompt": "", "entry_point": "f", "setup": "", "tests": ["assert f(1) == 2"]}
    slow = "import time\ndef f(x):\n    time.sleep(4)\n    return x + 1\n"
    try:
        rl.rewards.use_sandbox(SandboxConfig(timeout_s=2, cpu_s=2))
        start = time.monotonic()
        assert code_tests(None, [slow], code=[meta], scorer=["code"]) == [0.0]  # killed at 2 s: the test never passes
        assert time.monotonic() - start < 4
        rl.rewards.use_sandbox(SandboxConfig(timeout_s=10, cpu_s=10))
        assert code_tests(None, [slow], code=[meta], scorer=["code"]) == [1.0]  # the same program, given time
    finally:
        rl.rewards.use_sandbox(rl.rewards.RL_SANDBOX)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_vllm_server_mode_is_refused_on_cpu_before_any_model(tmp_path):
    with pytest.raises(InputError, match="vllm_server needs GPUs of its own"):
        run_rl(str(tmp_path / "no-model"), tiny_rl(rollout="vllm_server"), tmp_path)


def test_config_rejects_partial_groups_and_unknown_rewards():
    with pytest.raises(ValueError, match="must be a multiple of num_generations = 3"):
        tiny_rl(num_generations=3)
    with pytest.raises(ValueError, match="unknown reward 'speed'"):
        RewardSpec("speed")


def test_learning_signal_flags_zero_variance_clipping_and_unchanged_weights():
    from rl.learning_signal import learning_signal

    good = [{"frac_reward_zero_std": 0.5, "completions/clipped_ratio": 0.4}] * 4
    assert learning_signal(good, weights_changed=True)["ok"]
    flat = [{"frac_reward_zero_std": 1.0, "completions/clipped_ratio": 0.4}] * 4
    assert "100% of steps had no reward variance" in learning_signal(flat, True)["reason"]
    weak = flat[:3] + good[:1]  # one step with a gradient: a weak RL result, still an RL result
    assert learning_signal(weak, True) == {"ok": True, "reason": None, "zero_variance_steps": 0.75,
                                           "clipped_ratio": 0.4, "weights_changed": True}
    clipped = [{"frac_reward_zero_std": 0.0, "completions/clipped_ratio": 0.97}] * 4
    assert "97% of completions hit max_completion_length" in learning_signal(clipped, True)["reason"]
    assert learning_signal(good, weights_changed=False)["reason"] == "the weights did not change"
    assert not learning_signal([], True)["ok"]  # no logged step: nothing shows a signal


def test_an_rl_run_without_reward_variance_says_so(tiny_model, tmp_path, caplog, capfd):
    """math_verify (the default math reward) on a random tiny model scores 0 for every completion;
    TRL logs its per-batch timeout count beside the reward. Asked for, TRL's completions table prints."""
    cfg = tiny_rl(rewards=[RewardSpec("math_verify")], max_steps=2, logging_steps=1, print_completions=True)
    with caplog.at_level(logging.WARNING, logger="rl.grpo"):
        final = run_rl(tiny_model, cfg, tmp_path)
    assert "Advantage" in capfd.readouterr().out
    record = json.loads((final / "prift_rl.json").read_text())
    assert [h["math_verify/timeouts"] for h in record["log_history"] if "reward" in h] == [0.0, 0.0]
    signal = record["learning_signal"]
    assert not signal["ok"] and signal["zero_variance_steps"] == 1.0 and "no reward variance" in signal["reason"]
    assert "RL had no learning signal" in caplog.text


def test_sampled_completions_stay_when_checkpoints_go(tiny_model, tmp_path):
    run_rl(tiny_model, tiny_rl(max_steps=2, logging_steps=1, save_steps=1, keep_checkpoints=False), tmp_path)
    assert not list((tmp_path / "checkpoints").glob("checkpoint-*"))
    assert len(list((tmp_path / "checkpoints" / "completions").glob("*.parquet"))) == 2


def test_math_verify_is_the_math_reward_of_the_default_and_the_shipped_configs():
    from pathlib import Path

    assert RLStageConfig().rewards[0].name == "math_verify"
    shipped = {p.name: [r["name"] for r in (yaml.safe_load(p.read_text()).get("rl") or {}).get("rewards", [])]
               for p in (Path(__file__).resolve().parents[1] / "workflows" / "configs").glob("*.yaml")}
    math = {name for name, rewards in shipped.items() if "math_verify" in rewards}
    assert {"demo.yaml", "demo_3seeds.yaml", "paper_math_qwen2.5_1.5b.yaml", "single_gpu_qwen2.5_1.5b.yaml"} <= math
    assert all("math_answer" not in rewards for rewards in shipped.values())
    assert "boxed_format" in shipped["demo.yaml"]  # the demo keeps its format term


def test_a_finished_run_is_judged_by_todays_learning_signal_rule(tmp_path):
    """A summary written under an older rule (which flagged runs with over half their steps flat) is
    judged again from its log history: the verdict stored beside it is not what the report uses."""
    import json

    from workflows.rundir import rl_signal

    final = tmp_path / "rl" / "final"
    final.mkdir(parents=True)
    history = [{"frac_reward_zero_std": 1.0, "completions/clipped_ratio": 0.0}] * 9 + [
        {"frac_reward_zero_std": 0.5, "completions/clipped_ratio": 0.0}] * 7
    stored = {"ok": False, "reason": "56% of steps had no reward variance in any group", "weights_changed": True}
    (final / "prift_rl.json").write_text(json.dumps({"learning_signal": stored, "log_history": history}))
    assert rl_signal(tmp_path) == {"ok": True, "reason": None, "zero_variance_steps": 0.5625,
                                   "clipped_ratio": 0.0, "weights_changed": True}
    assert rl_signal(tmp_path / "missing") is None


def test_the_format_reward_pays_for_a_stated_answer_not_an_empty_box():
    """The replies two collapsed GRPO runs of the CPU study converged to: a sum, then an empty box."""
    from rl.rewards import boxed_format

    replies = ["5 + 8 = 13\n\nThe answer is \\boxed{}.", "The answer is \\boxed{ }", "\\boxed{13}",
               "\\boxed{\\frac{1}{2}}", "13", "cut off \\boxed{1"]
    completions = [[{"role": "assistant", "content": r}] for r in replies]
    assert boxed_format(None, completions) == [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
