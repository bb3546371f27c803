"""Shared fixtures: a tiny real Llama (byte-level BPE tokenizer, ChatML template) built in the test.

Nothing is fetched from a hub: the tokenizer is trained on a synthetic corpus and the model is
randomly initialised (~0.4M parameters, head_dim 64 so vLLM's CPU attention accepts it too).
"""

import json
import logging
import os

import pytest
from synthetic_tokenizer import chatml_tokenizer

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
logging.getLogger("transformers").setLevel(logging.ERROR)


def make_corpus(n: int = 200) -> list[dict]:
    """Arithmetic word problems with short worked answers (prompt/response rows)."""
    rows = []
    for i in range(n):
        a, b = (i * 7) % 23 + 1, (i * 5) % 17 + 2
        rows.append({"prompt": f"What is {a} plus {b}?",
                     "response": f"{a} plus {b} is {a + b}. The answer is {a + b}."})
    return rows


def build_tiny_model(folder, seed: int = 0, vocab_size: int = 320, model_type: str = "llama"):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tokenizer = chatml_tokenizer([r["prompt"] + " " + r["response"] for r in make_corpus()], vocab_size)
    torch.manual_seed(seed)
    common = dict(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=512,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    if model_type == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def sft_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "sft.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in make_corpus(64)) + "\n")
    return str(path)


def digits(prompts, completions, **_):
    """A reward a random tiny model can learn fast: the share of digits in its completion."""
    from rl.rewards import completion_text

    texts = [completion_text(c) for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


@pytest.fixture
def digits_reward(monkeypatch):
    """Registers `digits` as an RL reward for the test."""
    import rl.rewards

    monkeypatch.setitem(rl.rewards.REWARDS, "digits", digits)


@pytest.fixture
def child_python_runs(tmp_path, monkeypatch):
    """`child_python_runs(code)`: every Python process started from the test (a Ray worker, a probe
    in a child process) runs `code` first, as a sitecustomize on PYTHONPATH. How a test forces a
    path inside a process it cannot monkeypatch."""

    def install(code: str) -> None:
        folder = tmp_path / "sitecustomize"
        folder.mkdir(exist_ok=True)
        (folder / "sitecustomize.py").write_text(code)
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), os.getcwd()]))

    return install
