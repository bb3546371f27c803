r"""GRPO rewards: the eval scorers as TRL reward functions, so "correct" has one definition.

A TRL reward function takes the batch's `prompts` and `completions` (chat messages here) plus every
extra dataset column as keyword lists, and returns one float per completion:

    >>> math_answer(prompts=[None], completions=[[{"role": "assistant", "content": "\\boxed{4}"}]], answer=["4"])
    [1.0]

The math rewards score in worker processes killed at a per-answer wall-time limit
(evals/bounded.py; the RL stage's `score_timeout_s`), so they are safe on any thread: an answer
that outlasts it scores 0 and is counted in `<reward>/timeouts`.

Each answer reward scores only the rows whose `scorer` column names its kind and returns None for
the others (TRL skips None when it sums and averages), so one prompt set can mix math, medical and
code rows. `guarded` wraps each one: a reward that raises for a sample is logged and scores 0 for
that sample, and the run goes on.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable

from sandbox import Sandbox, SandboxConfig
from evals.bounded import TIMEOUT
from evals.scoring import MathJob, code_program, last_boxed, log_unjudgeable, score_answer, score_math_many

log = logging.getLogger(__name__)


def completion_text(completion) -> str:
    """A completion as text: TRL passes chat completions as a list of messages."""
    if isinstance(completion, list):
        return completion[-1]["content"] if completion else ""
    return completion


def _kinds(scorer, n: int) -> list:
    """The rows' `scorer` column, or None for every row when the dataset has no such column."""
    return scorer or [None] * n


def _math_rewards(name: str, completions, answer, scorer, log_metric, verify: bool) -> list[float | None]:
    """The math rows' scores in one bounded batch (evals/bounded.py); the number that timed out
    goes to TRL's logs as `<name>/timeouts` (per batch, averaged over each logging step)."""
    kinds = _kinds(scorer, len(completions))
    rows = [i for i, kind in enumerate(kinds) if kind in (None, "math")]
    scores = score_math_many([MathJob(completion_text(completions[i]), answer[i], verify=verify) for i in rows])
    timeouts = sum(s.reason == TIMEOUT for s in scores)
    if timeouts:
        log.warning("reward %s: %d of %d answers timed out (scored 0)", name, timeouts, len(rows))
    if log_metric is not None:
        log_metric(f"{name}/timeouts", float(timeouts))
    out: list[float | None] = [None] * len(completions)
    for i, s in zip(rows, scores):
        out[i] = s.value
    return out


def math_answer(prompts, completions, answer, scorer=None, log_metric=None, **_) -> list[float | None]:
    """1 if the stated final answer equals `answer`: the strict scorer of the eval's primary metric
    (`evals.scoring.score_math`, the Qwen2.5-Math harness rules), so a completion is never rewarded
    for a number it only mentions. Bounded in wall time per answer (a timeout scores 0)."""
    return _math_rewards("math_answer", completions, answer, scorer, log_metric, verify=False)


def math_verify(prompts, completions, answer, scorer=None, log_metric=None, **_) -> list[float | None]:
    """1 if math-verify finds the stated answer equal to `answer` (evals/verify.py: TRL's and
    Open-R1's extraction, plus anchored plain-text answers). Unlike the harness rule it credits
    "The answer is 12 cookies.", `1{,}000` and `\\sec^2 y` for `\\tan^2 y + 1`, and refuses `(2,5)`
    for `[2,5]` and 1200 for 12. Bounded in wall time per answer (a timeout scores 0).

    >>> math_verify(prompts=[None], completions=[[{"role": "assistant", "content": "**Answer:** 12"}]], answer=["12"])
    [1.0]
    """
    return _math_rewards("math_verify", completions, answer, scorer, log_metric, verify=True)


def choice_answer(prompts, completions, answer, letters, scorer=None, **_) -> list[float | None]:
    """1 if the chosen option letter is `answer` (naming two options scores 0)."""
    return [
        score_answer("choice", completion_text(c), a, ls).value if kind in (None, "choice") else None
        for c, a, ls, kind in zip(completions, answer, letters, _kinds(scorer, len(completions)))
    ]


def label_answer(prompts, completions, answer, scorer=None, **_) -> list[float | None]:
    """1 if the yes / no / maybe label is `answer`."""
    return [
        score_answer("label", completion_text(c), a).value if kind in (None, "label") else None
        for c, a, kind in zip(completions, answer, _kinds(scorer, len(completions)))
    ]


def boxed_format(prompts, completions, **_) -> list[float]:
    """1 if the completion puts a final answer in \\boxed{} (an optional format reward)."""
    return [float(last_boxed(completion_text(c)) is not None) for c in completions]


RL_SANDBOX = SandboxConfig(timeout_s=5, cpu_s=5)
"""The default limits of a code_tests program: one unit test of one rollout, so shorter than an
evaluation's (RLStageConfig.sandbox overrides them)."""
_SANDBOX: Sandbox | None = None


def use_sandbox(config: SandboxConfig) -> None:
    """Run code_tests programs under `config` (the RL stage sets its `sandbox` before training)."""
    global _SANDBOX
    if _SANDBOX is None or _SANDBOX.config != config:
        _SANDBOX = Sandbox(config)


def code_tests(prompts, completions, code, scorer=None, **_) -> list[float | None]:
    """Fraction of the task's tests that pass in the sandbox. `code` holds, per row, the prompt
    stub, the entry point and a list of tests; each test runs as its own judged program (the
    solution in one process, the test in another: `evals.scoring.code_program`), so one failing
    assert does not hide the others."""
    if _SANDBOX is None:
        use_sandbox(RL_SANDBOX)
    programs, owners = [], []
    for i, (c, meta, kind) in enumerate(zip(completions, code, _kinds(scorer, len(completions)))):
        if kind not in (None, "code"):
            continue
        for test in meta["tests"]:
            programs.append(code_program(completion_text(c), meta, meta.get("setup", "") + "\n" + test))
            owners.append(i)
    results = _SANDBOX.run_many(programs)
    log_unjudgeable(results, [code[i] for i in owners])
    passed, total = [0] * len(completions), [0] * len(completions)
    for i, r in zip(owners, results):
        total[i] += 1
        passed[i] += r.passed
    kinds = _kinds(scorer, len(completions))
    return [(p / t if t else 0.0) if k in (None, "code") else None for p, t, k in zip(passed, total, kinds)]


REWARDS: dict[str, Callable] = {
    "math_verify": math_verify,
    "math_answer": math_answer,
    "choice_answer": choice_answer,
    "label_answer": label_answer,
    "boxed_format": boxed_format,
    "code_tests": code_tests,
}


def guarded(fn: Callable) -> Callable:
    """The reward, made safe: if the batch call raises, each sample is scored alone and a sample
    that still raises scores 0 (logged with its index and the error)."""

    @functools.wraps(fn)
    def wrapper(prompts, completions, **kwargs):
        try:
            return [None if x is None else float(x) for x in fn(prompts=prompts, completions=completions, **kwargs)]
        except Exception as e:
            log.info("reward %s raised on its batch (%s: %s): scoring its %d samples one by one",
                     fn.__name__, type(e).__name__, e, len(completions))
        scores = []
        for i in range(len(completions)):
            one = {k: v[i : i + 1] if isinstance(v, list) else v for k, v in kwargs.items()}
            try:
                value = fn(prompts=prompts[i : i + 1], completions=completions[i : i + 1], **one)[0]
                scores.append(None if value is None else float(value))
            except Exception as e:
                log.warning("reward %s raised on sample %d (scored 0): %s: %s", fn.__name__, i, type(e).__name__, e)
                scores.append(0.0)
        return scores

    return wrapper
