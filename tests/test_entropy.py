"""Token entropy of samples (evals/entropy.py) against independent computations, and the eval
stage's entropy pass: rows, the per-task mean, resume, and switching it off."""

import json
import math

import numpy as np
import pytest
import torch

import evals.generate
import evals.stage
from common.models import load_causal_lm, load_tokenizer
from evals.entropy import completion_entropies
from evals.generate import SamplingConfig
from evals.stage import EvalStageConfig, run_eval
from evals.tasks import TaskSpec, load_examples
from helpers import Scripted


@pytest.fixture(scope="module")
def sharp_model(tiny_model):
    """The tiny model with an untied output head 10x its embeddings: a random model is near-uniform
    everywhere (entropy ~ log V at every position), which would hide a position that is off by one."""
    model = load_causal_lm(tiny_model, dtype=torch.float32).eval()
    weight = model.get_output_embeddings().weight.detach()
    head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    head.weight = torch.nn.Parameter(weight * 10.0)
    model.set_output_embeddings(head)
    return model


def sequences(vocab: int, seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(3, vocab, size=n).tolist() for n in (1, 7, 3, 12, 5)]
    completions = [rng.integers(3, vocab, size=n).tolist() for n in (4, 1, 9, 0, 6)]
    return prompts, completions


@torch.no_grad()
def float64_entropies(model, prompt: list[int], completion: list[int]) -> np.ndarray:
    """By the definition, one unpadded sequence at a time, the full forward in float64."""
    double = model.double()
    try:
        logits = double(input_ids=torch.tensor([prompt + completion])).logits[0].double()
    finally:
        model.float()
    logp = torch.log_softmax(logits, -1)
    h = -(logp.exp() * logp).sum(-1)
    return h[len(prompt) - 1 : len(prompt) + len(completion) - 1].numpy()


def test_entropies_match_a_float64_forward_whatever_the_batching(sharp_model):
    prompts, completions = sequences(sharp_model.config.vocab_size)
    # 24-token batches and 3-row head chunks: several padded batches, chunks that cross sequences
    ours = completion_entropies(sharp_model, prompts, completions, batch_tokens=24, row_chunk=3, progress=False)
    spread = []
    for p, c, h in zip(prompts, completions, ours, strict=True):
        assert h.shape == (len(c),)
        if c:
            expected = float64_entropies(sharp_model, p, c)
            np.testing.assert_allclose(h, expected, atol=2e-4)
            spread += list(expected)
    assert max(spread) - min(spread) > 0.5  # the positions differ, so an off-by-one would show


def test_entropies_equal_those_of_the_distributions_generate_sampled_from(sharp_model):
    """An independent path: the raw logits `generate` saw at each step (KV-cached decoding)."""
    prompt = [5, 9, 14, 2, 30]
    torch.manual_seed(0)
    out = sharp_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 5, dtype=torch.long),
                               do_sample=True, temperature=1.0, top_p=1.0, top_k=None, max_new_tokens=12,
                               min_new_tokens=12, output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    completion = out.sequences[0, len(prompt):].tolist()
    stepwise = [float(-(torch.softmax(s[0].double(), -1) * torch.log_softmax(s[0].double(), -1)).sum())
                for s in out.logits]
    (ours,) = completion_entropies(sharp_model, [prompt], [completion], progress=False)
    np.testing.assert_allclose(ours, stepwise, atol=2e-4)


def test_a_uniform_model_has_entropy_log_vocab(tiny_model):
    model = load_causal_lm(tiny_model, dtype=torch.float32).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()  # every logit 0: the uniform distribution
    (h,) = completion_entropies(model, [[4, 8]], [[9, 10, 11]], progress=False)
    np.testing.assert_allclose(h, [math.log(model.config.vocab_size)] * 3, rtol=1e-6)


def test_an_empty_prompt_is_refused_and_an_empty_completion_gives_no_entropies(sharp_model):
    with pytest.raises(ValueError, match="empty prompt"):
        completion_entropies(sharp_model, [[]], [[4]], progress=False)
    (h,) = completion_entropies(sharp_model, [[4]], [[]], progress=False)
    assert h.shape == (0,)


OUTS = [("So the answer is \\boxed{7}.", "stop"), ("I think it is 12, or maybe 13", "length"), ("", "stop")]


def test_the_eval_stage_records_each_samples_entropy_and_the_mean_over_problems(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(evals.generate, "make_generator", lambda model, *a, **k: Scripted(model, OUTS))
    spec = TaskSpec("gsm8k", limit=2)
    cfg = EvalStageConfig(tasks=[spec], sampling=SamplingConfig(n=3, temperature=1.0, max_new_tokens=16))
    summary = run_eval(tiny_model, cfg, tmp_path)

    rows = [json.loads(line) for line in (tmp_path / "gsm8k" / "samples.jsonl").read_text().splitlines()]
    tokenizer = load_tokenizer(tiny_model)
    prompts = {str(e.id): evals.generate.chat_ids(tokenizer, [e.prompt])[0] for e in load_examples(spec)}
    model = load_causal_lm(tiny_model, dtype=torch.float32).eval()
    for row in rows:
        assert row["completion_ids"] == tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
        if not row["completion_ids"]:
            assert row["mean_token_entropy"] is None  # no token, no entropy (not 0)
            continue
        expected = float64_entropies(model, prompts[str(row["id"])], row["completion_ids"]).mean()
        assert row["mean_token_entropy"] == pytest.approx(expected, abs=2e-4)
    per_problem = {}
    for row in rows:
        if row["mean_token_entropy"] is not None:
            per_problem.setdefault(row["id"], []).append(row["mean_token_entropy"])
    assert len(per_problem) == 2 and all(len(v) == 2 for v in per_problem.values())
    expected = np.mean([np.mean(v) for v in per_problem.values()])
    assert summary["tasks"]["gsm8k"]["mean_token_entropy"] == pytest.approx(expected, rel=1e-9)
    assert summary["domains"]["math"]["mean_token_entropy"] == pytest.approx(expected, rel=1e-9)


def test_an_interrupted_entropy_pass_is_finished_by_the_rerun_without_generating(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(evals.generate, "make_generator", lambda model, *a, **k: Scripted(model, OUTS))
    spec = TaskSpec("gsm8k", limit=1)
    cfg = EvalStageConfig(tasks=[spec], sampling=SamplingConfig(n=3, temperature=1.0, max_new_tokens=16))

    def killed(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(evals.stage, "completion_entropies", killed)
        with pytest.raises(KeyboardInterrupt):
            run_eval(tiny_model, cfg, tmp_path)
    record = json.loads((tmp_path / "gsm8k" / "metrics.json").read_text())
    assert "mean_token_entropy" not in record["metrics"] and "avg_at_3" in record["metrics"]  # scores kept

    monkeypatch.setattr(evals.generate, "make_generator", lambda *a, **k: pytest.fail("generated again"))
    summary = run_eval(tiny_model, cfg, tmp_path)
    assert summary["tasks"]["gsm8k"]["mean_token_entropy"] > 0
    rows = [json.loads(line) for line in (tmp_path / "gsm8k" / "samples.jsonl").read_text().splitlines()]
    assert all("mean_token_entropy" in r for r in rows)


def test_token_entropy_off_loads_no_scoring_model(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(evals.generate, "make_generator", lambda model, *a, **k: Scripted(model, OUTS))
    monkeypatch.setattr(evals.stage, "load_causal_lm", lambda *a, **k: pytest.fail("loaded a model for entropy"))
    cfg = EvalStageConfig(tasks=[TaskSpec("gsm8k", limit=1)], token_entropy=False,
                          sampling=SamplingConfig(n=3, temperature=1.0, max_new_tokens=16))
    summary = run_eval(tiny_model, cfg, tmp_path)
    assert "mean_token_entropy" not in summary["tasks"]["gsm8k"]
