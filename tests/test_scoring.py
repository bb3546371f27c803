"""Answer extraction and equivalence, against the benchmarks' own gold answers and known tricky pairs."""

import re

import pytest

from evals.scoring import (
    code_solution,
    extract_choice,
    extract_label,
    extract_math_answer,
    last_boxed,
    math_equal,
    score_math,
)
from evals.tasks import TaskSpec, load_examples

# (a, b, equivalent?) -- each pair is checked in both directions
MATH_PAIRS = [
    ("1/2", "0.5", True),
    ("\\frac{1}{2}", "\\dfrac12", True),
    ("\\frac{1}{2}", "0.5", True),
    ("12", "12.5", False),
    ("12", "12.0", True),
    ("1000", "1,000", True),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}", True),
    ("\\sqrt{2}", "1.41", False),
    ("2\\pi", "6.28", False),
    ("\\pi", "\\pi", True),
    ("-3", "3", False),
    ("x=3", "3", True),
    ("\\{1,2\\}", "\\{2,1\\}", True),
    ("10\\%", "0.1", True),
    ("3", "\\$3", True),
    ("\\frac{2}{4}", "\\frac{1}{2}", True),
    ("2^{10}", "1024", True),
    ("\\frac{1}{3}", "0.33", False),
]


@pytest.mark.parametrize("a,b,same", MATH_PAIRS)
def test_math_equivalence_both_ways(a, b, same):
    assert math_equal(a, b) is same
    assert math_equal(b, a) is same


def test_gsm8k_golds_score_against_equivalent_forms():
    for ex in load_examples(TaskSpec("gsm8k")):
        gold = ex.gold
        value = float(gold)
        forms = [
            f"So the answer is \\boxed{{{gold}}}.",
            f"... #### {gold}",
            f"Altogether {value:.2f} dollars, so the final answer is \\boxed{{{value:.2f}}}",
            f"We get {int(value):,} in total." if value == int(value) else f"We get {gold}.",
        ]
        for form in forms:
            assert score_math(form, gold).correct, (ex.id, gold, form)
        assert not score_math(f"\\boxed{{{value + 1:g}}}", gold).correct


def _other_form(gold: str) -> str | None:
    r"""A different spelling of a MATH-500 answer: \frac <-> \dfrac, a/b for integer fractions."""
    m = re.fullmatch(r"(-?)\\frac\{(\d+)\}\{(\d+)\}", gold)
    if m:
        return f"{m.group(1)}{m.group(2)}/{m.group(3)}"
    if "\\frac" in gold:
        return gold.replace("\\frac", "\\dfrac")
    if re.fullmatch(r"-?\d+", gold):
        return gold + ".0"
    return None


def test_math500_golds_score_against_themselves_boxed_and_in_other_forms():
    examples = load_examples(TaskSpec("math500"))
    assert len(examples) == 311
    rewritten = 0
    for ex in examples:
        assert score_math(f"Thus the answer is $\\boxed{{{ex.gold}}}$.", ex.gold).correct, ex.gold
        other = _other_form(ex.gold)
        if other is not None:
            rewritten += 1
            assert score_math(f"\\boxed{{{other}}}", ex.gold).correct, (ex.gold, other)
    assert rewritten > 150


def test_last_boxed_handles_nesting_and_truncation():
    assert last_boxed(r"\boxed{1} then \boxed{\frac{\sqrt{a}}{b^{2}}}") == r"\frac{\sqrt{a}}{b^{2}}"
    assert last_boxed(r"\boxed 7 is it") == "7"
    assert last_boxed(r"cut off \boxed{\frac{1}{") is None
    assert last_boxed("no box") is None


@pytest.mark.parametrize(
    "text,answer",
    [
        ("First 3, then 4. #### 7", "7"),
        ("The answer is 42.", "42"),
        ("We had 3 apples and then 7.5 kg.", "7.5"),
        ("nothing here", None),
        (r"\boxed{5} but also #### 6", "5"),
    ],
)
def test_math_answer_fallbacks(text, answer):
    assert extract_math_answer(text) == answer


@pytest.mark.parametrize(
    "text,letter",
    [
        ("C", "C"),
        ("(c)", "C"),
        ("b.", "B"),
        ("The answer is C.", "C"),
        ("the answer is d", "D"),
        ("Answer: (B)", "B"),
        ("C. Delusion of grandiosity", "C"),
        ("After weighing it, I pick (D).", "D"),
        (r"\boxed{A}", "A"),
        ("Among (A) and (B), the answer is B", "B"),
        ("The answer is B or C.", None),
        ("Answer: A and B", None),
        ("the answer is a fever", None),
        ("I am not sure.", None),
        ("(A) or (C)", None),
    ],
)
def test_choice_extraction(text, letter):
    assert extract_choice(text, "ABCDE")[0] == letter


@pytest.mark.parametrize(
    "text,label",
    [("Yes.", "yes"), ("The answer is no", "no"), ("maybe", "maybe"), ("yes or no", None), ("unclear", None)],
)
def test_label_extraction(text, label):
    assert extract_label(text, ("yes", "no", "maybe"))[0] == label


def test_code_solution_takes_a_whole_function_or_continues_the_prompt():
    prompt = 'import math\n\ndef f(x):\n    """doc"""\n'
    fenced = "Sure:\n```python\ndef f(x):\n    return math.sqrt(x)\n```\nDone."
    body = "    return math.sqrt(x)\n"
    ns1, ns2 = {}, {}
    exec(code_solution(fenced, prompt, "f"), ns1)
    exec(code_solution(body, prompt, "f"), ns2)
    assert ns1["f"](9) == ns2["f"](9) == 3.0
