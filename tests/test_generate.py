"""vLLM on CPU at a scale whose prefill does not fit one scheduler step (eval and RL rollouts).

vLLM splits a prefill that does not fit its token budget (4096 tokens per step for the offline `LLM`
on CPU) into chunks. A request in the middle of its prefill still gets a sampled token, which vLLM
discards and, for a seeded request, rewinds that request's generator by its offset: CPU generators
have none ("CPU Generator does not use offset"). The eval stage seeds every request; TRL's rollouts
seed none. Both are run here past the budget.
"""

import pytest

from evals.generate import SamplingConfig, VLLMGenerator

pytestmark = pytest.mark.slow

CPU_STEP_TOKENS = 4096  # vLLM's default max_num_batched_tokens for the offline LLM on CPU


def long_prompts(count: int, length: int) -> list[list[int]]:
    """Distinct token-id prompts (no shared prefix for the prefix cache to skip)."""
    return [[(i * 7 + j * 13) % 300 + 5 for j in range(length)] for i in range(count)]


PROMPTS = long_prompts(16, 400)  # 6,400 prefill tokens: more than one step of CPU_STEP_TOKENS
SAMPLING = SamplingConfig(n=4, temperature=1.0, max_new_tokens=8, seed=3)


def test_this_scale_crashes_vllms_default_cpu_settings(tiny_model, monkeypatch):
    """The load below is one that chunks: with vLLM's own settings it dies on this machine's
    generators, so the next test's pass is not luck of a small batch."""
    from vllm import LLM, SamplingParams, TokensPrompt

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # as VLLMGenerator runs it on CPU
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")

    assert sum(map(len, PROMPTS)) > CPU_STEP_TOKENS
    llm = LLM(model=tiny_model, dtype="float32", enforce_eager=True, max_model_len=512, seed=0)
    try:
        with pytest.raises(RuntimeError, match="does not use offset"):
            llm.generate([TokensPrompt(prompt_token_ids=p) for p in PROMPTS],
                         SamplingParams(n=4, temperature=1.0, max_tokens=8, seed=3), use_tqdm=False)
    finally:
        del llm


def test_seeded_eval_generation_past_one_step_works_and_each_prompt_keeps_its_samples(tiny_model):
    gen = VLLMGenerator(tiny_model, max_model_len=512)
    try:
        assert not gen.llm.llm_engine.vllm_config.scheduler_config.enable_chunked_prefill
        batch = gen.generate(PROMPTS, SAMPLING)
        again = gen.generate(PROMPTS, SAMPLING)
        alone = gen.generate(PROMPTS[5:6], SAMPLING)
        other_seed = gen.generate(PROMPTS[5:6], SamplingConfig(n=4, temperature=1.0, max_new_tokens=8, seed=4))
    finally:
        gen.close()
    ids = [[c.token_ids for c in out] for out in batch]
    assert len(ids) == 16 and all(len(samples) == 4 for samples in ids)
    assert ids == [[c.token_ids for c in out] for out in again]  # same seed, same completions
    assert ids[5] == [c.token_ids for c in alone[0]]  # one seeded stream per request, whatever the batch
    assert ids[5] != [c.token_ids for c in other_seed[0]]
    assert len(set(ids[5])) > 1  # the n samples of a prompt differ


def test_rl_rollouts_past_one_step_chunk_and_train(tiny_model, tmp_path, monkeypatch):
    """TRL's colocated vLLM keeps chunked prefill (its own max_num_batched_tokens=4096) and sends
    unseeded requests, so chunks are discarded without any generator rewind: the step trains."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    import rl.rewards
    from conftest import digits
    from rl.grpo import RLStageConfig, RewardSpec, run_rl
    from rl.prompts import GeneratorSpec, PromptsConfig

    discarded = []
    bookkeeping = GPUModelRunner._bookkeeping_sync

    def counting(self, *args, **kwargs):
        discarded.append(int(self.discard_request_mask.np[: self.input_batch.num_reqs].sum()))
        return bookkeeping(self, *args, **kwargs)

    monkeypatch.setattr(GPUModelRunner, "_bookkeeping_sync", counting)
    monkeypatch.setitem(rl.rewards.REWARDS, "digits", digits)
    # ~400 tokens of the tiny tokenizer per prompt, after the problem: 12 prompts with no common
    # prefix, 2 completions each, so the step's prefill exceeds 4096 tokens even if the prefix
    # cache shares a prompt between its two completions
    filler = " ".join(f"w{i % 50}" for i in range(100))
    cfg = RLStageConfig(
        prompts=PromptsConfig(generators=[GeneratorSpec(size=12)], template="{problem} " + filler),
        rewards=[RewardSpec("digits")], num_generations=2, per_device_batch_size=24,
        max_completion_length=8, max_steps=1, logging_steps=1, save_steps=1, max_model_len=512,
        rollout="vllm_colocate",
    )
    final = run_rl(tiny_model, cfg, tmp_path)
    assert sum(discarded) > 0, "the rollout's prefill fit one step: this test no longer chunks"
    assert (final / "config.json").exists()
