"""What a model scores on the generated tasks, before anything trains: which task has headroom.

    .venv/bin/python benchmarks/task_headroom.py                                  # SmolLM2-135M, T=1.0
    .venv/bin/python benchmarks/task_headroom.py --temperature 0.6 --problems 64 --model PATH

A demo or a study can only show an effect on a task whose base accuracy is neither 0 nor 1. This
samples `--samples` completions of `--problems` problems of each candidate task under two prompts
(the RL demo's short-answer template and the evaluation's step-by-step math prompt) and prints the
strict (stated answer), flexible (last number) and math-verify accuracy of each, side by side.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

from evals.generate import SamplingConfig, make_generator
from evals.scoring import score_math, score_math_verify
from evals.tasks import MATH_PROMPT, TaskSpec, load_examples

CANDIDATES = {
    "one-digit sums": TaskSpec("rg_basic_arithmetic", options={"min_terms": 2, "max_terms": 2, "min_digits": 1,
                                                               "max_digits": 1, "operators": ["+"]}),
    "sums up to 99": TaskSpec("rg_basic_arithmetic", options={"min_terms": 2, "max_terms": 2, "min_digits": 1,
                                                              "max_digits": 2, "operators": ["+"]}),
    "chains of 2-3 digits": TaskSpec("rg_chain_sum", options={"min_terms": 2, "max_terms": 3, "min_digits": 1,
                                                              "max_digits": 1}),
    "simple equations": TaskSpec("rg_simple_equations"),
    "gsm_symbolic": TaskSpec("rg_gsm_symbolic"),
}
TEMPLATES = {"short answer": "{problem}\nAnswer with only the final answer within \\boxed{}.",
             "step by step": MATH_PROMPT.replace("{{}}", "{}")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--problems", type=int, default=32)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--backend", default="auto", choices=["auto", "vllm", "hf"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    gen = make_generator(args.model, args.backend, max_model_len=2048)
    sampling = SamplingConfig(n=args.samples, temperature=args.temperature, max_new_tokens=args.max_new_tokens)
    rows = []
    for template_name, template in TEMPLATES.items():
        for task_name, spec in CANDIDATES.items():
            examples = load_examples(TaskSpec(spec.name, limit=args.problems, options=spec.options))
            start = time.perf_counter()
            outs = gen.generate(gen.chat([template.replace("{problem}", e.meta["problem"]) for e in examples]),
                                sampling)
            hits = {"strict": 0, "flexible": 0, "verify": 0}
            for completions, ex in zip(outs, examples):
                for c in completions:
                    hits["strict"] += score_math(c.text, ex.gold).correct
                    hits["flexible"] += score_math(c.text, ex.gold, flexible=True,
                                                   truncated=c.finish_reason == "length").correct
                    hits["verify"] += score_math_verify(c.text, ex.gold).correct
            tries = args.problems * args.samples
            row = {"prompt": template_name, "task": task_name, **{k: v / tries for k, v in hits.items()},
                   "seconds": round(time.perf_counter() - start, 1)}
            rows.append(row)
            print(f"{template_name:13s} {task_name:22s} strict {row['strict']:.3f}  flexible {row['flexible']:.3f}  "
                  f"verify {row['verify']:.3f}  ({row['seconds']} s)", flush=True)
    print(json.dumps({"model": args.model, "temperature": args.temperature, "problems": args.problems,
                      "samples": args.samples, "rows": rows}))


if __name__ == "__main__":
    main()
