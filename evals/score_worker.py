"""One scoring worker of evals/bounded.py: `python -m evals.score_worker IN_FD OUT_FD`.

It imports the scorers (and sympy, latex2sympy, math-verify through them) once, scores one
answer as a warm-up so lazy imports and caches are done, says "ready", then answers chunks of jobs
`(index, job, *args)` with one `(index, result)` message per job, in order. Scoring runs on this
process's main thread, so the harness's and math-verify's own SIGALRM limits work here too; the
parent's kill is the bound that always holds. It exits at EOF (its parent has gone).
"""

from __future__ import annotations

import logging
import sys
from multiprocessing.connection import Connection


def _score_fields(score) -> tuple:
    return (score.correct, score.extracted, score.reason, score.extractor)


def _harness(completion: str, gold: str, flexible: bool = False, truncated: bool = False) -> tuple:
    from evals.scoring import score_math_unbounded

    return _score_fields(score_math_unbounded(completion, gold, flexible=flexible, truncated=truncated))


def _verify(completion: str, gold: str) -> tuple:
    from evals.verify import verify_unbounded

    return _score_fields(verify_unbounded(completion, gold))


JOBS = {"harness": _harness, "verify": _verify}
"""What a job may ask for: a Score's fields under the Qwen2.5-Math harness rules or under math-verify."""


def main(fd_in: int, fd_out: int) -> None:
    logging.basicConfig(level=logging.WARNING, format="score worker: %(name)s: %(message)s")
    inbox, outbox = Connection(fd_in, writable=False), Connection(fd_out, readable=False)
    _harness(r"\boxed{\frac{1}{2}}", "0.5")  # warm: sympy, latex2sympy and the regex caches
    _verify(r"\boxed{\frac{1}{2}}", "0.5")
    outbox.send("ready")
    while True:
        try:
            chunk = inbox.recv()
        except EOFError:
            return
        for index, job, *args in chunk:
            try:
                result = JOBS[job](*args)
            except Exception as e:  # noqa: BLE001 -- one bad answer scores 0 with the reason; the rest go on
                result = f"scorer error: {type(e).__name__}: {str(e)[:200]}"
            outbox.send((index, result))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
