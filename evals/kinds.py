r"""One object per answer kind: how a batch of completions is scored against its golds, for the eval
stage and for the RL rewards alike, so "correct" has one definition.

A task holds its kind (`evals.tasks.Task.kind`); the eval stage asks it for scores
(`score`, and `flexible` / `verified` where it has those secondary scorings), the RL rewards ask it
for reward values (`reward`), and the RL prompt rows carry its `name` (their `scorer` column), which
`kind_named` turns back into the object. Adding an answer kind is one class here and one entry in
`KINDS`.

    >>> [s.correct for s in LABEL.score(["So the answer is: maybe.", "Yes or no."], ["maybe", "no"])]
    [True, False]
    >>> CHOICE.score(["The answer is (C)."], ["C"], [{"letters": "ABCDE"}])[0].extracted
    'C'
    >>> MATH.reward([r"... so \boxed{\dfrac12}.", "12"], {"answer": ["0.5", "12"]})
    ([1.0, 0.0], 0)
    >>> kind_named("math", "row 0: scorer") is MATH
    True
"""

from __future__ import annotations

from typing import ClassVar

from common.errors import InputError
from evals.bounded import TIMEOUT
from evals.scoring import (MathJob, Score, code_program, log_unjudgeable, score_choice, score_code, score_label,
                            score_math_many)


class AnswerKind:
    """What every answer kind gives: batch scoring, optional secondary scorings, the RL reward's values."""

    name: ClassVar[str]
    """The kind's spelling in data: the RL prompt rows' `scorer` column, `KINDS`' key."""
    needs_sandbox: ClassVar[bool] = False
    """Scored by running programs in the sandbox: a sample's `extracted` is the sandbox's verdict,
    not an answer the completion states."""
    bounded: ClassVar[bool] = False
    """Scored in the bounded worker pool (evals/bounded.py): a reward logs `<reward>/timeouts`."""

    def score(self, completions: list[str], golds: list[str], metas: list[dict] | None = None,
              sandbox=None) -> list[Score]:
        """Each completion against its gold (`metas`: the examples' `meta`; `sandbox` for code)."""
        raise NotImplementedError

    def flexible(self, completions: list[str], golds: list[str], truncated: list[bool]) -> list[Score] | None:
        """A lenient second reading of the same samples (the `_flexible` metrics); None: the kind has none."""
        return None

    def verified(self, completions: list[str], golds: list[str]) -> list[Score] | None:
        """math-verify's verdict on the same samples (the `_verify` metrics); None: the kind has none."""
        return None

    def reward(self, completions: list[str], columns: dict[str, list], sandbox=None,
               **options) -> tuple[list[float], int]:
        """(one reward per completion, how many answers timed out) from the RL rows' columns (`answer`,
        `letters`, `code`): by default 1 for a correct answer."""
        return _values(self.score(completions, columns["answer"], sandbox=sandbox))

    def reward_code(self, meta: dict) -> dict | None:
        """The RL row's `code` column for an example's meta (None: the kind runs no programs)."""
        return None

    def __repr__(self) -> str:
        return f"<answer kind {self.name}>"


class Math(AnswerKind):
    """A final answer under the Qwen2.5-Math harness rules: strict (the primary metric and the
    `math_answer` reward), flexible (the last number when none is stated, never in a truncated
    completion) and math-verify's verdict (the `_verify` metrics and the `math_verify` reward), each
    answer bounded in wall time (a timeout scores 0)."""

    name = "math"
    bounded = True

    def score(self, completions, golds, metas=None, sandbox=None):
        # strict: `truncated` plays no part without the flexible fallback
        return score_math_many([MathJob(c, g) for c, g in zip(completions, golds)])

    def flexible(self, completions, golds, truncated):
        return score_math_many([MathJob(c, g, flexible=True, truncated=t)
                                for c, g, t in zip(completions, golds, truncated)])

    def verified(self, completions, golds):
        return score_math_many([MathJob(c, g, verify=True) for c, g in zip(completions, golds)])

    def reward(self, completions, columns, sandbox=None, verify: bool = False, **options):
        """The strict harness verdict, or math-verify's with `verify`."""
        golds = columns["answer"]
        return _values(self.verified(completions, golds) if verify else self.score(completions, golds))


class Choice(AnswerKind):
    """An option letter (`meta["letters"]` lists the options); naming two options is wrong."""

    name = "choice"

    def score(self, completions, golds, metas=None, sandbox=None):
        metas = metas or [{}] * len(completions)
        return [score_choice(c, g, m.get("letters", "")) for c, g, m in zip(completions, golds, metas)]

    def reward(self, completions, columns, sandbox=None, **options):
        """1 for the right option letter; the rows' `letters` column lists their options."""
        return _values(self.score(completions, columns["answer"], [{"letters": ls} for ls in columns["letters"]]))


class Label(AnswerKind):
    """A word label (PubMedQA's yes / no / maybe); exactly one distinct label must be stated."""

    name = "label"

    def score(self, completions, golds, metas=None, sandbox=None):
        return [score_label(c, g) for c, g in zip(completions, golds)]


class Code(AnswerKind):
    """A program: the eval passes it only if every test ran and passed (`score_code`); the RL reward
    is the fraction of the task's tests that pass, each run as its own judged program, so one failing
    assert does not hide the others."""

    name = "code"
    needs_sandbox = True

    def score(self, completions, golds, metas=None, sandbox=None):
        return score_code(completions, metas, sandbox)

    def reward(self, completions, columns, sandbox=None, **options):
        code = columns["code"]
        programs, owners = [], []
        for i, (c, meta) in enumerate(zip(completions, code)):
            for test in meta["tests"]:
                programs.append(code_program(c, meta, meta.get("setup", "") + "\n" + test))
                owners.append(i)
        results = sandbox.run_many(programs)
        log_unjudgeable(results, [code[i] for i in owners])
        passed, total = [0] * len(completions), [0] * len(completions)
        for i, r in zip(owners, results):
            total[i] += 1
            passed[i] += r.passed
        return [p / t if t else 0.0 for p, t in zip(passed, total)], 0

    def reward_code(self, meta):
        return {k: meta[k] for k in ("prompt", "entry_point", "tests", "setup")}


def _values(scores: list[Score]) -> tuple[list[float], int]:
    return [s.value for s in scores], sum(s.reason == TIMEOUT for s in scores)


MATH, CHOICE, LABEL, CODE = Math(), Choice(), Label(), Code()
KINDS: dict[str, AnswerKind] = {kind.name: kind for kind in (MATH, CHOICE, LABEL, CODE)}
"""Every answer kind by its `name`."""


def kind_named(name, where: str) -> AnswerKind:
    """The kind a data row names; `where` (the row and field) is in the error for any other name.

    >>> kind_named("maths", "row 3: scorer")
    Traceback (most recent call last):
    ...
    common.errors.InputError: row 3: scorer: unknown answer kind 'maths', expected one of math, choice, label, code
    """
    try:
        return KINDS[name]
    except (KeyError, TypeError):  # TypeError: an unhashable value in the column
        raise InputError(f"{where}: unknown answer kind {name!r}, expected one of {', '.join(KINDS)}") from None
