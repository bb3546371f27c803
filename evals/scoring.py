"""What counts as correct: answer extraction and equivalence, one definition for eval and RL rewards.

Every scorer is a plain function of (completion, gold) returning a `Score`; the RL stage wraps the
same functions as rewards.

    >>> score_math("... so the total is \\boxed{\\dfrac12}.", "0.5").correct
    True
    >>> score_choice("The answer is (C).", "C", "ABCDE").extracted
    'C'
    >>> score_choice("Either B or C.", "C", "ABCDE").correct      # names two options: wrong
    False
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Score:
    correct: bool
    extracted: str | None
    """The answer read off the completion (None: none found)."""
    reason: str = ""
    """Why it is not correct ("no answer found", "wrong answer", "ambiguous: B, C", a test failure)."""

    @property
    def value(self) -> float:
        return float(self.correct)


# ---------------------------------------------------------------- math


def last_boxed(text: str) -> str | None:
    r"""Content of the last `\boxed{...}` (or `\fbox{...}`), nested braces matched; `\boxed 5` too.

    >>> last_boxed(r"first \boxed{1}, then \boxed{\frac{a}{b}}")
    '\\frac{a}{b}'
    """
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = start + (6 if text.startswith("\\boxed", start) else 5)
    if i < len(text) and text[i] == " ":  # \boxed 5
        m = re.match(r" ([^\s$]+)", text[i:])
        return m.group(1) if m else None
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j].strip()
    return None  # unbalanced: the completion was cut off inside the box


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def extract_math_answer(text: str) -> str | None:
    """The final answer of a math completion: the last `\\boxed{}`; else GSM8K's `#### x`; else
    "the answer is x"; else the last number in the text."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    m = re.search(r"####\s*([^\n]+)", text)
    if m:
        return m.group(1).strip()
    m = list(re.finditer(r"answer is[:\s]*\$?([^\n$]+?)\$?\s*(?:\.\s|\.?$)", text, re.I | re.M))
    if m:
        return m[-1].group(1).strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1].rstrip(".,") if numbers else None


def math_equal(pred: str, gold: str) -> bool:
    r"""Mathematical equivalence by math-verify (`1/2` == `0.5` == `\dfrac12`; `12` != `12.5`).

    math-verify's timeouts use SIGALRM, which exists only on the main thread: elsewhere (Ray
    workers, vLLM callbacks) they are off and a pathological expression could take long.
    """
    if pred.strip() == gold.strip():
        return True
    from math_verify import parse, verify

    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns on every call without a timeout
    gold_parsed = parse(f"${gold}$", parsing_timeout=timeout)
    pred_parsed = parse(f"${pred}$", parsing_timeout=timeout)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))


def score_math(completion: str, gold: str) -> Score:
    pred = extract_math_answer(completion)
    if pred is None:
        return Score(False, None, "no answer found")
    ok = math_equal(pred, gold)
    return Score(ok, pred, "" if ok else "wrong answer")


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


def score_label(completion: str, gold: str, labels: tuple[str, ...]) -> Score:
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


def code_program(completion: str, example_meta: dict) -> list[str]:
    """Sandbox phases for one completion: the solution, then the task's tests (fresh builtins)."""
    solution = code_solution(completion, example_meta["prompt"], example_meta["entry_point"])
    return [solution, example_meta["test"]]


def score_code(completions: list[str], metas: list[dict], sandbox) -> list[Score]:
    """Run every completion's program in the sandbox (in parallel); passed only if every test ran
    and passed."""
    results = sandbox.run_many([code_program(c, m) for c, m in zip(completions, metas)], progress=len(metas) > 50)
    return [Score(r.passed, r.status, "" if r.passed else f"{r.status}: {r.reason}") for r in results]
