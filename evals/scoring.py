r"""What counts as correct: answer extraction and equivalence, one definition for eval and RL rewards.

Every scorer is a plain function of (completion, gold) returning a `Score`; each answer kind
(evals/kinds.py) scores its batches with them, for the eval stage and the RL rewards alike. Math
scoring (the harness rules and math-verify) may reach sympy on model output, so it is bounded in
wall time per answer on any thread: `score_math`, `score_math_verify` and, in batches,
`score_math_many` run it in worker processes killed at the limit (evals/bounded.py), and a timed-out
answer scores 0 with reason "timeout".

    >>> score_math("... so the total is \\boxed{\\dfrac12}.", "0.5").correct
    True
    >>> score_math("... 5 + 12 = ", "12", flexible=True, truncated=True).correct   # cut off: no answer
    False
    >>> score_choice("The answer is (C).", "C", "ABCDE").extracted
    'C'
    >>> score_choice("Either B or C.", "C", "ABCDE").correct      # names two options: wrong
    False
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from evals.math_grader import (clean_prediction, extract_final, last_boxed, last_number, math_equal, parse_digits,
                               strip_string)
from sandbox import Judged

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Score:
    correct: bool
    extracted: str | None
    """The answer read off the completion (None: none found)."""
    reason: str = ""
    """Why it is not correct ("no answer found", "wrong answer", "ambiguous: B, C", a test failure)."""
    extractor: str | None = None
    """Math: the rule that found the answer ("boxed", "answer is", "####", "last number", ...)."""

    @property
    def value(self) -> float:
        return float(self.correct)


# ---------------------------------------------------------------- math


def score_math_unbounded(completion: str, gold: str, *, flexible: bool = False, truncated: bool = False) -> Score:
    """A math completion against its gold answer, read and compared as the Qwen2.5-Math harness does
    (evals.math_grader), in this process and without a wall-time bound (sympy on model output):
    what a scoring worker runs. Callers use `score_math`.

    Strict (the default, the primary metric and the RL reward): only a stated final answer counts
    (`\\boxed{}`, "the answer is", `####`, ...). Flexible: with no stated answer, the last number in
    the completion, as the harness and lm-evaluation-harness's flexible-extract do -- except in a
    completion cut by the length limit (`truncated`), whose last number is usually a number being
    copied from the problem or mid-calculation, not an answer.
    """
    raw, extractor, why = _read_math(completion, flexible, truncated)
    if raw is None:
        return Score(False, None, why)
    pred = clean_prediction(raw)
    ok = math_equal(pred, strip_string(gold))
    return Score(ok, pred, "" if ok else "wrong answer", extractor)


@dataclass(frozen=True)
class MathJob:
    """One math answer to score: under the harness rules (`verify=False`, strict or flexible) or
    under math-verify (`verify=True`)."""

    completion: str
    gold: str
    flexible: bool = False
    truncated: bool = False
    verify: bool = False

    def job(self) -> tuple:
        if self.verify:
            return ("verify", self.completion, self.gold)
        return ("harness", self.completion, self.gold, self.flexible, self.truncated)


def _read_math(completion: str, flexible: bool, truncated: bool) -> tuple[str | None, str | None, str]:
    """(the answer as written, the rule that found it, why there is none): linear-time text scans."""
    raw, extractor = extract_final(completion)
    if raw is None and flexible:
        if truncated:
            return None, None, "truncated before a final answer"
        raw, extractor = last_number(completion), "last number"
    return raw, extractor, "" if raw is not None else "no answer found"


FAST_MAX_CHARS = 64
"""Longest extracted answer that `_score_math_fast` may decide in the caller's process."""


def _score_math_fast(job: MathJob) -> Score | None:
    """The harness verdict where it needs no sympy, in the caller's process: no answer, or a short
    answer whose normalised text equals the gold's or which is, like the gold, a plain number
    (`math_equal`'s first two rules, which decide before any symbolic step). Each step is a regular
    expression over at most FAST_MAX_CHARS characters (or a linear scan for extraction), so it is
    bounded without a worker and ordinary answers skip the round trip. None: the pool decides."""
    if job.verify:
        return None
    raw, extractor, why = _read_math(job.completion, job.flexible, job.truncated)
    if raw is None:
        return Score(False, None, why)
    if len(raw) > FAST_MAX_CHARS:
        return None
    pred, ref = clean_prediction(raw), strip_string(job.gold)
    same_text = pred.strip().lower() == ref.strip().lower()
    if same_text or (parse_digits(pred) is not None and parse_digits(ref) is not None):
        ok = math_equal(pred, ref)
        return Score(ok, pred, "" if ok else "wrong answer", extractor)
    return None


def score_math_many(jobs: list[MathJob], limit_s: float | None = None) -> list[Score]:
    """Many math answers, each bounded in wall time on any thread (evals/bounded.py): an answer
    whose scoring outlasts `limit_s` (default: the stage's `score_timeout_s`) scores 0 with
    reason "timeout"; one that crashes its worker scores 0 with reason "scorer error: ..."."""
    from evals import bounded

    out = [_score_math_fast(j) for j in jobs]
    slow = [i for i, s in enumerate(out) if s is None]
    for i, result in zip(slow, bounded.run([jobs[i].job() for i in slow], limit_s)):
        out[i] = Score(*result) if isinstance(result, tuple) else Score(False, None, result)
    return out


def score_math(completion: str, gold: str, *, flexible: bool = False, truncated: bool = False,
               limit_s: float | None = None) -> Score:
    """`score_math_unbounded`, bounded in wall time (`score_math_many`)."""
    return score_math_many([MathJob(completion, gold, flexible, truncated)], limit_s)[0]


def score_math_verify(completion: str, gold: str, limit_s: float | None = None) -> Score:
    """math-verify's verdict (evals/verify.py), bounded in wall time (`score_math_many`).

    >>> score_math_verify("**Answer:** 12", "12").correct
    True
    """
    return score_math_many([MathJob(completion, gold, verify=True)], limit_s)[0]


# ---------------------------------------------------------------- multiple choice


def extract_choice(text: str, letters: str) -> tuple[str | None, str]:
    """The option letter a completion chooses, and why not when None.

    In order: the whole reply is a letter ("C", "(c)", "C."); the text after the last "answer"
    anchor ("The answer is C.", "Answer: (B)") or inside `\\boxed{}`; a reply that starts with an
    option ("C. Delusion ..."); a single parenthesised letter anywhere ("... so (D)"). A reply that
    names two different options in the deciding span is ambiguous: None.
    """
    t = text.strip()
    ls = re.escape(letters)
    m = re.fullmatch(rf"\(?([{ls}{ls.lower()}])\)?[.:]?", t)
    if m:
        return m.group(1).upper(), ""
    boxed = last_boxed(t)
    anchor = list(re.finditer(r"answer(?:\s+is)?\s*[:\-]?\s*", t, re.I))
    span = boxed if boxed is not None else (t[anchor[-1].end() :].split("\n")[0] if anchor else None)
    if span is not None:
        found = set(re.findall(rf"(?<![A-Za-z])\(?([{ls}])\)?(?![A-Za-z])", span))
        lone = re.match(rf"\(?([{ls.lower()}])(?:\)|[.:]?\s*$|\.\s)", span.strip())  # "the answer is c."
        if lone and not found:
            found = {lone.group(1).upper()}
        if len(found) == 1:
            return found.pop(), ""
        if len(found) > 1:
            return None, "ambiguous: " + ", ".join(sorted(found))
    found = set(re.findall(rf"\(([{ls}])\)", t))
    m = re.match(rf"\(?([{ls}])[).:]\s", t)
    if m:
        found.add(m.group(1))
    if len(found) == 1:
        return found.pop(), ""
    return None, ("ambiguous: " + ", ".join(sorted(found))) if found else "no answer found"


def score_choice(completion: str, gold: str, letters: str) -> Score:
    pred, why = extract_choice(completion, letters)
    if pred is None:
        return Score(False, None, why)
    return Score(pred == gold, pred, "" if pred == gold else "wrong answer")


def extract_label(text: str, labels: tuple[str, ...]) -> tuple[str | None, str]:
    """A word label (PubMedQA's yes / no / maybe): after the last "answer" anchor if there is one,
    else the whole reply; exactly one distinct label must appear."""
    anchor = list(re.finditer(r"answer(?:\s+is)?\s*[:\-]?\s*", text, re.I))
    span = text[anchor[-1].end() :].split("\n")[0] if anchor else text
    pattern = r"\b(" + "|".join(map(re.escape, labels)) + r")\b"
    found = {w.lower() for w in re.findall(pattern, span, re.I)}
    if len(found) == 1:
        return found.pop(), ""
    return None, ("ambiguous: " + ", ".join(sorted(found))) if found else "no answer found"


LABELS = ("yes", "no", "maybe")
"""The label kind's answers (PubMedQA's): what its task accepts as gold and what a completion may state."""


def score_label(completion: str, gold: str, labels: tuple[str, ...] = LABELS) -> Score:
    pred, why = extract_label(completion, labels)
    if pred is None:
        return Score(False, None, why)
    return Score(pred == gold.lower(), pred, "" if pred == gold.lower() else "wrong answer")


# ---------------------------------------------------------------- code


def extract_code(completion: str, entry_point: str) -> str:
    """The code in a completion: the first fenced block that defines `entry_point` (else the first
    fenced block); without fences, the completion itself."""
    blocks = re.findall(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|$)", completion, re.S)
    for block in blocks:
        if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", block, re.M):
            return block
    return blocks[0] if blocks else completion


def code_solution(completion: str, prompt: str, entry_point: str) -> str:
    """The program to test: a whole function replaces the prompt's stub (the prompt is kept above it,
    for its imports and helpers); a bare body continues the prompt (HumanEval's convention)."""
    code = extract_code(completion, entry_point)
    defines = re.compile(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", re.M)
    if defines.search(code):
        stub_body = "\n    pass\n" if defines.search(prompt) else ""  # the stub ends at its docstring
        return prompt + stub_body + "\n" + code
    return prompt + code


def code_program(completion: str, example_meta: dict, test: str | None = None) -> Judged:
    """The sandbox program for one completion: the solution runs in the candidate's process; the
    task's tests (`test`, default all of them) run after the prompt's own code in the judge's,
    where the entry point calls into the candidate (`sandbox.Sandbox.run_judged`)."""
    entry = example_meta["entry_point"]
    solution = code_solution(completion, example_meta["prompt"], entry)
    tests = example_meta["test"] if test is None else test
    return Judged(solution, tests, entry, context=prompt_context(example_meta["prompt"]))


def prompt_context(prompt: str) -> str:
    """The prompt as code the judge can run: a prompt that ends in a bare `def` line (no docstring)
    gets a body (HumanEval's end in a docstring, which is one)."""
    try:
        compile(prompt, "<prompt>", "exec")
        return prompt
    except SyntaxError:
        return prompt + "\n    pass\n"


def score_code(completions: list[str], metas: list[dict], sandbox) -> list[Score]:
    """Run every completion's program in the sandbox (in parallel); passed only if every test ran
    and passed. A task the two-process judge cannot run is scored wrong, with its reason."""
    results = sandbox.run_many([code_program(c, m) for c, m in zip(completions, metas)], progress=len(metas) > 50)
    log_unjudgeable(results, metas)
    return [Score(r.passed, r.status, "" if r.passed else f"{r.status}: {r.reason}") for r in results]


def log_unjudgeable(results, metas: list[dict]) -> None:
    """Say which tasks the judge could not run (they score 0 whatever the completion)."""
    reasons = {m.get("entry_point", "?"): r.reason for r, m in zip(results, metas) if r.status == "unjudgeable"}
    if reasons:
        count = sum(r.status == "unjudgeable" for r in results)
        log.warning("sandbox: %d programs could not be judged (scored wrong): %s", count,
                    "; ".join(f"{k}: {v}" for k, v in sorted(reasons.items())[:5]))
