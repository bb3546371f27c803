"""Answer extraction and equivalence, against the benchmarks' own gold answers and known tricky pairs."""

import re

import pytest

from evals.math_grader import extract_final, last_number, math_equal, strip_string
from evals.scoring import code_solution, extract_choice, extract_label, last_boxed, score_math
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
    a, b = strip_string(a), strip_string(b)
    assert math_equal(a, b) is same
    assert math_equal(b, a) is same


def test_gsm8k_golds_score_against_equivalent_forms():
    for ex in load_examples(TaskSpec("gsm8k")):
        gold = ex.gold
        value = float(gold)
        stated = [
            f"So the answer is \\boxed{{{gold}}}.",
            f"... #### {gold}",
            f"Altogether {value:.2f} dollars, so the final answer is \\boxed{{{value:.2f}}}",
            f"The answer is {int(value):,}." if value == int(value) else f"The answer is {gold}.",
        ]
        for form in stated:
            assert score_math(form, gold).correct, (ex.id, gold, form)
        unstated = f"We get {int(value):,} in total." if value == int(value) else f"We get {gold}."
        assert not score_math(unstated, gold).correct  # strict: no final answer stated
        assert score_math(unstated, gold, flexible=True).correct, (ex.id, gold, unstated)
        assert not score_math(f"\\boxed{{{2 * value + 1:g}}}", gold).correct


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
    assert last_boxed(r"so $\boxed 7$ it is") == "7"  # no brace: up to the next $, as the harness reads it
    assert last_boxed(r"cut off \boxed{\frac{1}{") is None
    assert last_boxed(r"ends in \boxed") is None
    assert last_boxed("no box") is None
    assert last_boxed(r"The answer is \boxed{}.") == ""  # stated, and empty: the harness scores it wrong


@pytest.mark.parametrize(
    "text,answer,rule",
    [
        ("First 3, then 4. #### 7", "7", "####"),
        ("The answer is 42.", "42.", "answer is"),
        ("So the final answer is 6", "6", "final answer is"),
        ("Final Answer: The final answer is $6$. I hope it is correct.", "6", "minerva"),
        (r"\boxed{5} but also #### 6", "5", "boxed"),
        ("We had 3 apples and then 7.5 kg.", None, None),
        ("nothing here", None, None),
    ],
)
def test_final_answer_rules(text, answer, rule):
    assert extract_final(text) == (answer, rule)


def test_last_number_ignores_thousands_separators():
    assert last_number("We had 3 apples and then 1,234.5 kg.") == "1234.5"
    assert last_number("none") is None


# (completion, gold, strict, flexible): real answer formats, each expected value derived by hand from
# QwenLM/Qwen2.5-Math evaluation code (see the test's docstring); the comment names the deciding rule.
HARNESS_CORPUS = [
    (r"So $x = \boxed{\frac{3}{4}}$.", "0.75", True, True),  # not a plain number: symbolic 3/4 == 0.75
    (r"Therefore it is $\boxed{\dfrac{3}{4}}$.", r"\frac{3}{4}", True, True),  # strip_string: dfrac -> frac
    (r"The ratio is \boxed{3/4}.", r"\frac{3}{4}", True, True),  # strip_string: _fix_a_slash_b
    (r"\boxed{\tfrac34}", r"\frac{3}{4}", True, True),  # tfrac -> frac, _fix_fracs: \frac34 -> \frac{3}{4}
    (r"$\boxed{-\frac{1}{2}}$", "-0.5", True, True),  # symbolic -1/2 == -0.5
    (r"The side is $\boxed{12 \text{ cm}}$.", "12", True, True),  # a trailing \text{} is dropped as a unit
    (r"So $\boxed{12\text{ apples}}$.", "12", True, True),
    ("The answer is 18 meters.", "18", True, True),  # "meters" is in the unit list
    ("The answer is 40 percent.", "40", True, True),  # so is "percent"
    (r"The angle is $\boxed{30^\circ}$.", "30", True, True),  # ^\circ removed
    (r"She pays $\boxed{\$18}$ in total.", "18", True, True),  # \$ removed
    (r"That makes \boxed{1,000} marbles.", "1000", True, True),  # parse_digits drops the commas
    (r"The prize is $\boxed{\$1,\!000}$.", "1000", True, True),  # \! removed, then as above
    (r"That makes $\boxed{1{,}000}$ marbles.", "1000", False, False),  # "{,}": no number, no parser reads it
    (r"First \boxed{3}, but that double counts: \boxed{5}.", "5", True, True),  # the last box counts
    (r"First \boxed{3}, but that double counts: \boxed{5}.", "3", False, False),
    (r"The discount is $\boxed{25\%}$.", "25", True, True),  # \% removed
    (r"The discount is $\boxed{25\%}$.", "0.25", True, True),  # gold x 100 accepted (include_percentage)
    (r"\boxed{5}", "500", True, True),  # ... and gold / 100: a harness quirk, kept
    (r"It fell to $\boxed{-7}$ degrees.", "-7", True, True),
    (r"It fell to $\boxed{-7}$ degrees.", "7", False, False),  # numbers differ: no symbolic retry
    (r"\boxed{3.50}", "3.5", True, True),  # numeric, rel. tolerance 1e-4
    (r"\boxed{0.33}", r"\frac{1}{3}", False, False),  # 1% off: outside the tolerance
    (r"\boxed{11051}", "11050", True, True),  # 0.009% off: inside it, so an off-by-one counts here
    (r"$\boxed{2\sqrt{2}}$", r"\sqrt{8}", True, True),  # symbolic
    (r"Solving, $\boxed{x = 5}$.", "5", True, True),  # "x = 5": a short left side is dropped
    (r"The meeting is on $\boxed{\text{Monday}}$.", r"\text{Monday}", True, True),  # \text{..} -> ..
    (r"The solution set is $\boxed{(-\infty, 3]}$.", r"(-\infty,3]", True, True),  # spaces removed
    (r"The point is $\boxed{(1, -2)}$.", "(1,-2)", True, True),
    (r"$\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}$", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", True, True),
    (r"The answer is $\frac{1}{2}$.", "0.5", True, True),  # "he answer is": the rest of the text
    ("The answer is 42. Let me verify: 6 * 7 = 42.", "42", False, False),  # ... all of it, so garbage
    ("Final Answer: The final answer is $6$. I hope it is correct.", "6", True, True),  # Minerva's sentence
    ("So she has 7 apples left.", "7", False, True),  # no stated answer: only the last number
    ("Total: 1,234 dollars", "1234", False, True),  # the last number, commas removed first
    ("We had 3 apples, 5 pears and 1.5 kg", "5", False, False),  # the last number is 1.5
]


@pytest.mark.parametrize("completion,gold,strict,flexible", HARNESS_CORPUS)
def test_answer_formats_score_as_the_qwen_math_harness_scores_them(completion, gold, strict, flexible):
    """Each expected value follows QwenLM/Qwen2.5-Math `evaluation/parser.py::extract_answer` (its
    rules in order; with `use_last_number=False` for the strict column, the default for the flexible
    one), `parser.py::strip_string` (gold once, prediction twice, as `parse_ground_truth` and
    `run_execute` do) and `evaluation/grader.py::math_equal` / `symbolic_equal`."""
    assert score_math(completion, gold).correct is strict
    assert score_math(completion, gold, flexible=True).correct is flexible


def test_the_gsm8k_answer_line_is_a_stated_answer_here_but_not_in_the_harness():
    """`####` is lm-evaluation-harness's strict GSM8K pattern; QwenLM/Qwen2.5-Math
    `parser.py::extract_answer` has no such rule and reads it only as the last number."""
    score = score_math("3 + 4 = 7\n#### 7", "7")
    assert score.correct and score.extractor == "####"


@pytest.mark.parametrize(
    "completion",
    [
        "Natalia sold 48 clips in April and half as many in May. In May she sold 48 / 2 = 24",
        "The total asked is 5 + 12 = 12",
        r"We need $\boxed{\frac{24",  # cut inside the box: the harness would take the partial "\frac{24"
    ],
)
def test_truncated_completions_with_numbers_from_the_problem_score_wrong(completion):
    gold = "24" if "24" in completion else "12"
    assert not score_math(completion, gold).correct
    assert not score_math(completion, gold, flexible=True, truncated=True).correct
    cut = score_math(completion, gold, flexible=True, truncated=True)
    assert cut.extracted is None and cut.reason == "truncated before a final answer"


def test_a_truncated_completion_keeps_an_answer_it_stated_before_the_cut():
    text = r"So the answer is $\boxed{24}$. To double-check, 48 / 2 = 24 and then we"
    assert score_math(text, "24").correct
    assert score_math(text, "24", flexible=True, truncated=True).correct


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


@pytest.mark.parametrize("flexible", [False, True])
def test_bounded_scoring_reads_and_judges_as_the_unbounded_harness_scorer(flexible):
    """score_math decides plain numbers and equal text in the caller's process and sends the rest
    to the worker pool: either way the Score (answer, rule, reason) is the in-process scorer's."""
    from evals.scoring import score_math_unbounded

    pairs = [(c, g) for c, g, _, _ in HARNESS_CORPUS]
    pairs += [(f"so \\boxed{{{ex.gold}}}", ex.gold) for ex in load_examples(TaskSpec("math500"))[:40]]
    pairs += [(f"so \\boxed{{{ex.gold}+1}}", ex.gold) for ex in load_examples(TaskSpec("math500"))[:40]]
    for completion, gold in pairs:
        bounded = score_math(completion, gold, flexible=flexible)
        assert bounded == score_math_unbounded(completion, gold, flexible=flexible)
