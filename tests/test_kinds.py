"""Each answer kind (evals/kinds.py) scores a batch as the per-answer scorers it stands for do, and
gives the RL rewards the values those scorers gave; a name in data that is no kind is refused."""

import pytest

from common.errors import InputError
from evals.kinds import CODE, KINDS, kind_named
from evals.scoring import score_choice, score_code, score_label, score_math, score_math_verify
from evals.tasks import TASKS
from sandbox import Sandbox, SandboxConfig

CODE_META = {"prompt": "", "entry_point": "f", "test": "assert f(1) == 2\nassert f(2) == 3\n", "setup": "",
             "tests": ["assert f(1) == 2", "assert f(2) == 3"]}
# (completion, gold, meta, truncated) per kind: right, wrong, no answer, ambiguous, cut off
CASES = {
    "math": [
        ("... so the total is \\boxed{\\dfrac12}.", "0.5", {}, False),
        ("5 + 12 = 17", "17", {}, False),  # no stated answer: strict 0, flexible reads the last number
        ("... 5 + 12 = ", "12", {}, True),  # cut off: flexible takes no number
        ("The answer is 12 cookies.", "12", {}, False),  # math-verify credits it
        ("So it is \\boxed{(2,5)}.", "[2,5]", {}, False),
        ("\\boxed{2^{10}}", "1024", {}, False),  # symbolic: decided in the worker pool
        ("\\boxed{13}", "12", {}, False),
    ],
    "choice": [
        ("The answer is (C).", "C", {"letters": "ABCDE"}, False),
        ("Either B or C.", "C", {"letters": "ABCDE"}, False),
        ("d", "D", {"letters": "ABCD"}, False),
        ("I do not know.", "A", {"letters": "ABCD"}, False),
    ],
    "label": [
        ("So the answer is: maybe.", "maybe", {}, False),
        ("yes, or no", "no", {}, False),
        ("No.", "no", {}, False),
        ("It depends.", "yes", {}, False),
    ],
    "code": [
        ("```python\ndef f(x):\n    return x + 1\n```", "", CODE_META, False),
        ("def f(x):\n    return 2\n", "", CODE_META, False),  # passes one of the two tests
        ("def f(x):\n    return 0\n", "", CODE_META, False),
    ],
}
SANDBOX = Sandbox(SandboxConfig(workers=2))


def _columns(cases):
    completions, golds, metas, truncated = (list(x) for x in zip(*cases))
    return completions, golds, metas, truncated


def _fraction_passed(completion, gold, meta):
    """Each test as the whole test of its own program."""
    passed = [score_code([completion], [dict(meta, test=meta["setup"] + "\n" + t)], SANDBOX)[0].correct
              for t in meta["tests"]]
    return sum(passed) / len(passed)


# what scored each kind, one answer at a time, before the kinds were objects
BEFORE = {
    "math": lambda c, g, m: score_math(c, g),
    "choice": lambda c, g, m: score_choice(c, g, m.get("letters", "")),
    "label": lambda c, g, m: score_label(c, g),
    "code": lambda c, g, m: score_code([c], [m], SANDBOX)[0],
}
BEFORE_FLEXIBLE = {"math": lambda c, g, t: score_math(c, g, flexible=True, truncated=t)}
BEFORE_VERIFIED = {"math": lambda c, g: score_math_verify(c, g)}
BEFORE_REWARD = {  # the value each reward function gave a row of its kind
    "math": lambda c, g, m: score_math(c, g).value,
    "choice": lambda c, g, m: score_choice(c, g, m["letters"]).value,
    "label": lambda c, g, m: score_label(c, g).value,
    "code": _fraction_passed,
}


def test_every_kind_is_registered_under_its_name_and_scores_some_task():
    assert all(kind.name == name for name, kind in KINDS.items())
    assert set(CASES) == set(KINDS) == set(BEFORE) == set(BEFORE_REWARD)  # a new kind needs its cases here
    assert {task.kind for task in TASKS.values()} == set(KINDS.values())
    assert [name for name, kind in KINDS.items() if kind.needs_sandbox] == ["code"]


@pytest.mark.parametrize("name", list(CASES))
def test_a_kinds_batch_scores_are_the_per_answer_scorers(name):
    kind = KINDS[name]
    completions, golds, metas, truncated = _columns(CASES[name])
    before = [BEFORE[name](c, g, m) for c, g, m in zip(completions, golds, metas)]
    assert kind.score(completions, golds, metas, SANDBOX) == before
    assert len({s.correct for s in before}) == 2  # the cases tell right from wrong

    flexible, verified = kind.flexible(completions, golds, truncated), kind.verified(completions, golds)
    if name in BEFORE_FLEXIBLE:
        assert flexible == [BEFORE_FLEXIBLE[name](c, g, t) for c, g, t in zip(completions, golds, truncated)]
        assert flexible != kind.score(completions, golds)  # the cases tell the readings apart
    else:
        assert flexible is None
    if name in BEFORE_VERIFIED:
        assert verified == [BEFORE_VERIFIED[name](c, g) for c, g in zip(completions, golds)]
        assert verified != kind.score(completions, golds)
    else:
        assert verified is None


@pytest.mark.parametrize("name", list(CASES))
def test_a_kinds_reward_values_are_what_its_reward_gave(name):
    kind = KINDS[name]
    completions, golds, metas, _ = _columns(CASES[name])
    columns = {"answer": golds, "letters": [m.get("letters", "") for m in metas], "code": metas}
    values, timeouts = kind.reward(completions, columns, sandbox=SANDBOX)
    assert values == [BEFORE_REWARD[name](c, g, m) for c, g, m in zip(completions, golds, metas)]
    assert timeouts == 0 and len(set(values)) >= 2


def test_the_math_verify_reward_is_math_verifys_verdict():
    completions, golds, _, _ = _columns(CASES["math"])
    values, _ = KINDS["math"].reward(completions, {"answer": golds}, verify=True)
    assert values == [score_math_verify(c, g).value for c, g in zip(completions, golds)]


def test_the_code_reward_counts_each_test():
    assert CODE.reward(["def f(x):\n    return 2\n"], {"code": [CODE_META]}, sandbox=SANDBOX) == ([0.5], 0)
    assert CODE.reward_code(CODE_META | {"test": "all at once"}) == {k: CODE_META[k] for k in
                                                                    ("prompt", "entry_point", "tests", "setup")}
    assert KINDS["choice"].reward_code({"letters": "AB"}) is None


@pytest.mark.parametrize("bad", ["maths", "Math", "", 3, ["math"]])
def test_a_name_that_is_no_kind_is_refused_naming_where_it_was(bad):
    with pytest.raises(InputError, match=r"^row 7: scorer: unknown answer kind .* expected one of math, choice, "
                                         r"label, code$"):
        kind_named(bad, "row 7: scorer")
    assert kind_named("code", "row 7: scorer") is CODE
