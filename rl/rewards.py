r"""GRPO rewards: the eval scorers as TRL reward functions, so "correct" has one definition.

A TRL reward function takes the batch's `prompts` and `completions` (chat messages here) plus every
extra dataset column as keyword lists, and returns one float per completion:

    >>> math_answer(prompts=[None], completions=[[{"role": "assistant", "content": "\\boxed{4}"}]], answer=["4"])
    [1.0]

The math rewards score in worker processes killed at a per-answer wall-time limit
(evals/bounded.py; the RL stage's `score_timeout_s`), so they are safe on any thread: an answer
that outlasts it scores 0 and is counted in `<reward>/timeouts`.

Each answer reward is an answer kind's (evals/kinds.py) made a TRL reward by `answer_reward`: it
scores only the rows whose `scorer` column names its kind and returns None for the others (TRL skips
None when it sums and averages), so one prompt set can mix math, medical and code rows. `guarded`
wraps each one: a reward that raises for a sample is logged and scores 0 for that sample, and the
run goes on.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable

from sandbox import Sandbox, SandboxConfig
from evals.kinds import CHOICE, CODE, LABEL, MATH, AnswerKind, kind_named
from evals.scoring import last_boxed

log = logging.getLogger(__name__)


def completion_text(completion) -> str:
    """A completion as text: TRL passes chat completions as a list of messages."""
    if isinstance(completion, list):
        return completion[-1]["content"] if completion else ""
    return completion


def answer_reward(kind: AnswerKind, name: str, doc: str, **options) -> Callable:
    """The TRL reward function `name` of an answer kind: it scores, in one batch, the rows whose
    `scorer` column names the kind (every row when the dataset has no such column) by
    `kind.reward(..., **options)`, and returns None for the other rows. A kind scored in the
    bounded pool also reports how many answers timed out, as `<name>/timeouts` in TRL's logs (per
    batch, averaged over each logging step). A `scorer` value that names no kind is an error that
    names its row."""

    def reward(prompts, completions, scorer=None, log_metric=None, **columns) -> list[float | None]:
        names = scorer or [None] * len(completions)
        rows = [i for i, n in enumerate(names) if n is None or kind_named(n, f"row {i}: scorer") is kind]
        values, timeouts = kind.reward([completion_text(completions[i]) for i in rows],
                                       {k: _pick(v, rows) for k, v in columns.items()},
                                       sandbox=_sandbox() if kind.needs_sandbox else None, **options)
        if kind.bounded:
            if timeouts:
                log.warning("reward %s: %d of %d answers timed out (scored 0)", name, timeouts, len(rows))
            if log_metric is not None:
                log_metric(f"{name}/timeouts", float(timeouts))
        out: list[float | None] = [None] * len(completions)
        for i, v in zip(rows, values):
            out[i] = v
        return out

    reward.__name__ = reward.__qualname__ = name
    reward.__doc__ = doc
    return reward


def _pick(column, rows: list[int]):
    """A dataset column's values at `rows` (TRL passes other keyword arguments, such as its
    trainer state, as they are)."""
    return [column[i] for i in rows] if isinstance(column, list) else column


math_answer = answer_reward(MATH, "math_answer", """1 if the stated final answer equals `answer`: the strict
    scorer of the eval's primary metric (`evals.scoring.score_math`, the Qwen2.5-Math harness rules), so a
    completion is never rewarded for a number it only mentions. Bounded in wall time per answer (a timeout
    scores 0).""")

math_verify = answer_reward(MATH, "math_verify", """1 if math-verify finds the stated answer equal to `answer`
    (evals/verify.py: TRL's and Open-R1's extraction, plus anchored plain-text answers). Unlike the harness rule
    it credits "The answer is 12 cookies.", `1{,}000` and `\\sec^2 y` for `\\tan^2 y + 1`, and refuses `(2,5)`
    for `[2,5]` and 1200 for 12. Bounded in wall time per answer (a timeout scores 0).

    >>> math_verify(prompts=[None], completions=[[{"role": "assistant", "content": "**Answer:** 12"}]], answer=["12"])
    [1.0]
    """, verify=True)

choice_answer = answer_reward(CHOICE, "choice_answer", """1 if the chosen option letter is `answer` (naming two
    options scores 0); `letters` lists each row's options.

    >>> choice_answer(None, ["So (B)."] * 2, answer=["B", "C"], letters=["ABCD"] * 2, scorer=["choice", "math"])
    [1.0, None]
    """)

label_answer = answer_reward(LABEL, "label_answer", """1 if the yes / no / maybe label is `answer`.

    >>> label_answer(None, ["The answer is: maybe.", "yes, or no"], answer=["maybe", "no"])
    [1.0, 0.0]
    """)


def boxed_format(prompts, completions, **_) -> list[float]:
    """1 if the completion puts a final answer in \\boxed{}, a box with something in it (an optional
    format reward). An empty box is no answer: when it paid, two of the eight GRPO runs of the CPU study
    learned to end every reply with `The answer is \\boxed{}.` and stopped earning the accuracy reward.

    >>> boxed_format(None, ["so \\\\boxed{12}", "The answer is \\\\boxed{ }.", "12"])
    [1.0, 0.0, 0.0]
    """
    return [float(bool((last_boxed(completion_text(c)) or "").strip())) for c in completions]


RL_SANDBOX = SandboxConfig(timeout_s=5, cpu_s=5)
"""The default limits of a code_tests program: one unit test of one rollout, so shorter than an
evaluation's (RLStageConfig.sandbox overrides them)."""
_SANDBOX: Sandbox | None = None


def use_sandbox(config: SandboxConfig) -> None:
    """Run code_tests programs under `config` (the RL stage sets its `sandbox` before training)."""
    global _SANDBOX
    if _SANDBOX is None or _SANDBOX.config != config:
        _SANDBOX = Sandbox(config)


def _sandbox() -> Sandbox:
    if _SANDBOX is None:
        use_sandbox(RL_SANDBOX)
    return _SANDBOX


code_tests = answer_reward(CODE, "code_tests", """Fraction of the task's tests that pass in the sandbox. `code`
    holds, per row, the prompt stub, the entry point and a list of tests; each test runs as its own judged
    program (the solution in one process, the test in another: `evals.scoring.code_program`), so one failing
    assert does not hide the others.""")


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
