"""The math_verify reward: the answers the harness rule misjudges, and agreement with math-verify's own
`verify` (its default `parse` on both sides) on a corpus of varied answer shapes."""

import pytest
from math_verify import parse, verify

from rl.rewards import REWARDS, guarded


def reward(name: str, completion: str, gold: str) -> float:
    """As the GRPO stage calls it: the guarded registered reward on a chat completion."""
    return guarded(REWARDS[name])([None], [[{"role": "assistant", "content": completion}]], answer=[gold],
                                  scorer=["math"])[0]


# (completion, gold, right?): the eight right answers the harness rule scores 0 and two wrong ones it pays
HARNESS_MISJUDGED = [
    ("The answer is 12 cookies.", "12", True),
    ("The answer is 1250 dollars.", "1250", True),
    ("The answer is 3 - 5 = -2.", "-2", True),
    ("The answer is 42. Let me check: 6 * 7 = 42.", "42", True),
    ("**Answer:** 12", "12", True),
    (r"So there are $\boxed{1{,}000}$ of them.", "1000", True),
    (r"Hence $\boxed{\sec^2 y}$.", r"\tan^2 y + 1", True),
    (r"The roots are $\boxed{3, 2, 1}$.", "1,2,3", True),
    (r"The interval is $\boxed{(2,5)}$.", "[2,5]", False),
    (r"So $\boxed{1200}$.", "12", False),
]


@pytest.mark.parametrize("completion,gold,right", HARNESS_MISJUDGED)
def test_math_verify_judges_what_the_harness_rule_misjudges(completion, gold, right):
    assert reward("math_verify", completion, gold) == float(right)
    assert reward("math_answer", completion, gold) == float(not right)  # the protocol's rule, kept as is


# (completion, gold): stated answers of varied shapes, right and wrong
CORPUS = [
    (r"So the total is $\boxed{42}$.", "42"), (r"\boxed{41}", "42"), (r"$\boxed{\frac{3}{4}}$", "0.75"),
    (r"The answer is $\boxed{\dfrac{1}{2}}$", r"\frac{1}{2}"), (r"\boxed{0.5}", r"\frac12"),
    (r"\boxed{2\sqrt{2}}", r"\sqrt{8}"), (r"\boxed{2\sqrt{3}}", r"\sqrt{8}"), (r"\boxed{\pi}", r"\pi"),
    (r"\boxed{3.14}", r"\pi"), (r"\boxed{x = 5}", "5"), (r"\boxed{-7}", "-7"), (r"\boxed{-7}", "7"),
    (r"\boxed{1,000}", "1000"), (r"\boxed{25\%}", "25"), (r"\boxed{12 \text{ cm}}", "12"), (r"\boxed{30^\circ}", "30"),
    (r"\boxed{\text{Monday}}", r"\text{Monday}"), (r"\boxed{2x + 1}", "1 + 2x"), (r"\boxed{2x - 1}", "1 + 2x"),
    (r"\boxed{(1, -2)}", "(1,-2)"), (r"\boxed{(-2, 1)}", "(1,-2)"), (r"\boxed{(-\infty, 3]}", r"(-\infty,3]"),
    (r"\boxed{(-\infty, 3)}", r"(-\infty,3]"), (r"\boxed{\{1, 2\}}", r"\{2,1\}"),
    (r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"),
    (r"\boxed{\begin{pmatrix} 2 \\ 1 \end{pmatrix}}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"),
    (r"\boxed{e^{2}}", "e^2"), (r"\boxed{\sin^2 x + \cos^2 x}", "1"),
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt3}{2}"),
    ("Final Answer: The final answer is $6$. I hope it is correct.", "6"),
    (r"The final answer is $\frac{1}{3}$.", r"\frac{1}{3}"), (r"\boxed{0.33}", r"\frac{1}{3}"),
    (r"\boxed{11051}", "11050"), (r"\boxed{5}", "500"), ("#### 72", "72"),
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72"), (r"\boxed{y = 2x + 3}", "y=2x+3"),
    (r"\boxed{2^{10}}", "1024"), (r"\boxed{\$18}", "18"), (r"So $x=3$ or $x=-3$: $\boxed{3, -3}$", "-3, 3"),
    (r"\boxed{3}", "-3, 3"), (r"\boxed{1.5 \times 10^{3}}", "1500"), ("The answer is 18 meters.", "18"),
    (r"We need $\boxed{\frac{24", "24"), ("I don't know.", "5"),
]


@pytest.mark.parametrize("completion,gold", CORPUS)
def test_math_verify_agrees_with_math_verify_on_stated_answers(completion, gold):
    expected = verify(parse(f"${gold}$"), parse(completion))  # math-verify's own default reading
    assert reward("math_verify", completion, gold) == float(expected)


def test_a_number_only_mentioned_is_no_answer_where_math_verify_would_take_it():
    """The one deliberate difference: math-verify's default also searches without an anchor; the
    reward, like TRL's and Open-R1's, does not, so the last number mentioned earns nothing."""
    assert verify(parse("$7$"), parse("She has 7 apples left."))
    assert reward("math_verify", "She has 7 apples left.", "7") == 0.0


def test_math_verify_skips_rows_of_other_kinds():
    completions = [[{"role": "assistant", "content": r"\boxed{0.5}"}], [{"role": "assistant", "content": "B"}]]
    assert REWARDS["math_verify"](None, completions, answer=["1/2", "B"], scorer=["math", "choice"]) == [1.0, None]
