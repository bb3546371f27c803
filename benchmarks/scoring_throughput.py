"""What does bounding math scoring cost on ordinary answers?

    .venv/bin/python benchmarks/scoring_throughput.py [--rounds 3]

Answers: every GSM8K and MATH-500 gold answer, stated right (`The answer is $\\boxed{gold}$.`) and
wrong (`\\boxed{gold+1}`, which sends non-numeric answers to sympy), scored against the gold by
  inline   evals.scoring.score_math_unbounded / evals.verify.verify_unbounded in this process,
           one call per answer: the unguarded path (no bound off the main thread)
  batch    evals.scoring.score_math_many: all answers in one call, as the eval stage and the RL
           rewards score them, through the worker pool (evals/bounded.py)
  single   evals.scoring.score_math / score_math_verify: one call (one round trip) per answer
for the harness rules (`math`) and math-verify (`verify`). Every path is warmed once (imports,
caches, workers), then rounds rotate the order so machine noise hits all alike; the median
answers/s per path and the ratios to inline are printed side by side.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

from evals.scoring import MathJob, score_math, score_math_many, score_math_unbounded, score_math_verify
from evals.tasks import TaskSpec, load_examples
from evals.verify import verify_unbounded


def answers(task: str) -> dict[str, list[tuple[str, str]]]:
    golds = [ex.gold for ex in load_examples(TaskSpec(task))]
    return {"right": [(f"The answer is $\\boxed{{{g}}}$.", g) for g in golds],
            "wrong": [(f"\\boxed{{{g}+1}}", g) for g in golds]}


def paths(kind: str) -> dict:
    verify = kind == "verify"
    inline = verify_unbounded if verify else score_math_unbounded
    single = score_math_verify if verify else score_math
    return {
        "inline": lambda pairs: [inline(c, g) for c, g in pairs],
        "batch": lambda pairs: score_math_many([MathJob(c, g, verify=verify) for c, g in pairs]),
        "single": lambda pairs: [single(c, g) for c, g in pairs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    paths = ("inline", "batch", "single")
    print(f"{'task':8} {'answers':8} {'scorer':7} {'n':>4}  " + "  ".join(f"{p:>14}" for p in paths)
          + "  batch/inline  single/inline")
    for task, which, pairs in [(t, w, p) for t in ("gsm8k", "math500") for w, p in answers(t).items()]:
        for kind in ("math", "verify"):
            fns = paths(kind)
            results = {name: fn(pairs) for name, fn in fns.items()}  # warm-up, and the paths must agree
            verdicts = {name: [s.correct for s in r] for name, r in results.items()}
            same = verdicts["batch"] == verdicts["single"] == verdicts["inline"]
            assert same, f"{task} {which} {kind}: paths disagree"
            rates: dict[str, list[float]] = {name: [] for name in fns}
            order = list(fns)
            for r in range(args.rounds):
                for name in order[r % len(order):] + order[: r % len(order)]:
                    start = time.perf_counter()
                    fns[name](pairs)
                    rates[name].append(len(pairs) / (time.perf_counter() - start))
            med = {name: statistics.median(v) for name, v in rates.items()}
            print(f"{task:8} {which:8} {kind:7} {len(pairs):>4}  " + "  ".join(f"{med[p]:>10.0f} a/s" for p in paths)
                  + f"  {med['batch'] / med['inline']:>11.2f}x  {med['single'] / med['inline']:>12.2f}x")


if __name__ == "__main__":
    main()
