"""Every math scorer returns within its wall-time limit on any thread: answers whose evaluation sympy
cannot finish score 0 with reason "timeout", from the main thread, from another thread and through
the RL rewards as the GRPO stage calls them."""

import threading
import time

import pytest

from evals import bounded
from evals.scoring import MathJob, score_math, score_math_many
from rl.rewards import REWARDS, guarded

LIMIT_S = 1.0
MARGIN_S = 1.0


def _nested_frac(chars: int) -> str:
    text = "1"
    while len(text) < chars:
        text = r"\frac{1}{1+" + text + "}"
    return text


STALLS = {  # each takes sympy seconds to hours; SIGALRM cannot stop one off the main thread
    "power tower": r"The answer is $\boxed{9^{9^{9^{9}}}}$.",
    "20,000-character nested frac": r"So $\boxed{" + _nested_frac(20_000) + "}$.",
    "sqrt nested 3,000 deep": r"So $\boxed{" + r"\sqrt{" * 3000 + "2" + "}" * 3000 + "}$.",
}


@pytest.fixture(autouse=True)
def short_limit():
    bounded.set_limit(LIMIT_S)
    bounded.pool().warm()  # a worker is up (a killed one being replaced) before a call is timed
    yield
    bounded.set_limit(bounded.DEFAULT_LIMIT_S)


def _in_thread(fn):
    out = []
    worker = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    worker.start()
    worker.join(timeout=LIMIT_S + 30)  # a hung scorer fails the test instead of hanging the suite
    assert out, "the scoring thread never returned"
    return out[0]


def _reward(name: str, completion: str, timeouts: list) -> float:
    """The reward as GRPOTrainer calls it: guarded, from its thread, with TRL's log_metric."""
    fn = guarded(REWARDS[name])
    return fn([None], [[{"role": "assistant", "content": completion}]], answer=["3"], scorer=["math"],
              log_metric=lambda key, value: timeouts.append((key, value)))[0]


CALLS = {
    "score_math, main thread": lambda c, t: score_math(c, "3"),
    "score_math, other thread": lambda c, t: _in_thread(lambda: score_math(c, "3")),
    "math_verify reward, other thread": lambda c, t: _in_thread(lambda: _reward("math_verify", c, t)),
    "math_answer reward, main thread": lambda c, t: _reward("math_answer", c, t),
}


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("stall", STALLS)
def test_a_stalling_answer_returns_within_the_limit_on_any_thread(stall, call):
    timeouts = []
    start = time.monotonic()
    result = CALLS[call](STALLS[stall], timeouts)
    elapsed = time.monotonic() - start
    assert elapsed < LIMIT_S + MARGIN_S, f"{call} took {elapsed:.1f} s"
    if "reward" in call:
        assert result == 0.0
        assert timeouts and timeouts[0][0].endswith("/timeouts") and timeouts[0][1] == 1.0  # in TRL's logs
    else:
        assert (result.correct, result.reason) == (False, bounded.TIMEOUT)


def test_a_timeout_costs_only_its_own_answer_in_a_batch():
    jobs = [MathJob(r"\boxed{\frac{1}{2}}", "0.5"), MathJob(STALLS["power tower"], "3"),
            MathJob("The answer is 12 cookies.", "12", verify=True), MathJob(r"\boxed{7}", "8")]
    scores = score_math_many(jobs * 2)
    assert [s.reason for s in scores] == ["", "timeout", "", "wrong answer"] * 2
    assert [s.correct for s in scores] == [True, False, True, False] * 2


def test_a_worker_that_dies_mid_answer_scores_it_0_and_is_replaced():
    import os
    import signal

    pool = bounded.pool()
    busy = []

    def kill_the_busy_worker():
        deadline = time.monotonic() + 5
        while not busy and time.monotonic() < deadline:
            busy.extend(w.proc.pid for w in pool._workers if w.jobs)
            time.sleep(0.05)
        os.kill(busy[0], signal.SIGKILL)  # as a segfault in deep recursion would end it

    killer = threading.Thread(target=kill_the_busy_worker)
    killer.start()
    score = score_math(STALLS["power tower"], "3", limit_s=30)
    killer.join()
    assert (score.correct, score.reason) == (False, "scorer error: the scoring process exited (code -9)")
    assert score_math(r"\boxed{2^{10}}", "1024").correct  # the pool goes on
