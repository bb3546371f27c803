r"""A math answer as math-verify reads and compares it: the RL reward `math_verify` and the eval's
secondary `_verify` metric (the strict Qwen2.5-Math harness rules of evals.math_grader stay the
primary metric).

Extraction follows TRL's `accuracy_reward` (Open-R1's is the same): LaTeX with units normalised,
`\boxed{}` tried first, nothing taken without an anchor, first match wins. One addition:
math-verify's plain-expression extractor, also anchored only ("The answer is 12 cookies.",
"**Answer:** 12", "the final answer is 3 - 5 = -2"), because a completion that states its answer
in words and not in LaTeX is right and TRL's configuration finds no answer there. Anchorless
extraction stays off, so a number merely mentioned ("she has 7 apples left") is no answer, as in
the strict scorer. A GSM8K answer line `#### 72` with no other anchored answer counts too, as in
the strict scorer (math-verify finds it only by its anchorless search). The gold, a bare answer
here, is read as inline math (`$gold$`), with math-verify's default extractors.

These functions are unbounded (sympy on model output): `evals.scoring.score_math_verify` runs them
in the bounded worker pool (evals/bounded.py).
"""

from __future__ import annotations

import functools
import logging

from evals.math_grader import _GSM8K_LINE  # the `#### 72` line, read as the strict scorer reads it
from evals.scoring import Score

log = logging.getLogger(__name__)


# math-verify's own limits (SIGALRM; on in the pool's workers, whose scoring runs on the main
# thread): a slow parse or comparison is "no answer" / "not equal" without killing the worker.
PARSE_TIMEOUT_S = 5
VERIFY_TIMEOUT_S = 5


@functools.cache
def _answer_config():
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    latex = LatexExtractionConfig(normalization_config=NormalizationConfig(units=True), boxed_match_priority=0,
                                  try_extract_without_anchor=False)
    return [latex, ExprExtractionConfig(try_extract_without_anchor=False)]


@functools.lru_cache(maxsize=4096)
def parse_gold(gold: str) -> list:
    """The gold answer parsed once (golds repeat across a problem's samples)."""
    from math_verify import parse

    parsed = parse(f"${gold}$", parsing_timeout=PARSE_TIMEOUT_S)
    return parsed or parse(gold, parsing_timeout=PARSE_TIMEOUT_S)


def parse_answer(completion: str) -> list:
    """The completion's answer as math-verify objects ([sympy value, its text]), [] if none is stated."""
    from math_verify import parse

    found = parse(completion, extraction_config=_answer_config(), extraction_mode="first_match",
                  parsing_timeout=PARSE_TIMEOUT_S)
    if not found:
        lines = _GSM8K_LINE.findall(completion)
        if lines:
            found = parse(f"${lines[-1]}$", parsing_timeout=PARSE_TIMEOUT_S)
    return found


def verify_unbounded(completion: str, gold: str) -> Score:
    r"""math-verify's verdict on a completion, in this process and without a wall-time bound.

    >>> verify_unbounded("The answer is 12 cookies.", "12").correct
    True
    >>> verify_unbounded(r"So it is \boxed{(2,5)}.", "[2,5]").correct   # open interval, closed gold
    False
    """
    from math_verify import verify

    gold_parsed = parse_gold(gold)
    if not gold_parsed:
        return Score(False, None, "gold not parseable by math-verify")
    answer = parse_answer(completion)
    if not answer:
        return Score(False, None, "no answer found")
    ok = verify(gold_parsed, answer, timeout_seconds=VERIFY_TIMEOUT_S)
    return Score(ok, str(answer[-1]), "" if ok else "wrong answer", "math-verify")
