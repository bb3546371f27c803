"""Does the prior stage scale? Tokenization and scoring rows/s, and peak memory against row count.

    .venv/bin/python benchmarks/prior_scale.py                       # 20k rows; sizes 2.5k..20k
    .venv/bin/python benchmarks/prior_scale.py --rows 4000 --sizes 1000,2000,4000   # a quick look

Synthetic SFT rows (prompt/response arithmetic prose, response lengths lognormal, capped), seeded.
  tokenization  rows/s of `prift.data.tokenize_rows` (batched through the fast tokenizer) against
                the per-row encoding it replaced, on the shipped SmolLM2-135M-Instruct tokenizer;
  scoring       the whole prior stage (`run_prior`) in a fresh subprocess per row count, each on its
                own data file: its wall time split into tokenizing and scoring (timers around the two
                calls), and its peak RSS (VmHWM). The reference is a tiny randomly initialised Llama
                (1 layer, hidden 32) with a 512-token BPE tokenizer trained here on the same prose,
                so that 20k rows score in a minute or two on CPU: the rows/s say what the stage's
                own machinery costs, not what a real model's forward costs.
Peak RSS should stay flat with the row count: the stage holds one shard's tokens and signals at a
time. What still grows is the input text itself (the loaded rows), shown as the data file size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WORDS = "the so we add then take away times plus minus gives is answer step next first left total each".split()
LENGTH_CYCLE = 2500
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    """Prompt 8-24 words; response words lognormal (median 20, capped at 300): a long-tailed mix.

    The lengths are drawn for `LENGTH_CYCLE` rows and repeated, so every prefix of a multiple of it has
    the same length mix and the same longest row: the scoring batch's peak (its padded length times
    batch_tokens) is then the same at every row count, and the memory figures show the row count alone.
    """
    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.lognormal(np.log(20), 0.8, LENGTH_CYCLE).astype(int) + 3, 300)
    lengths = np.resize(lengths, n)
    rows = []
    for i in range(n):
        def text(k):
            picks = rng.integers(0, len(WORDS) + 100, k)
            return " ".join(WORDS[p] if p < len(WORDS) else str(p * 7 + i % 13) for p in picks)

        rows.append({"prompt": f"Problem {i}: {text(int(rng.integers(8, 24)))}?",
                     "response": text(int(lengths[i])) + "."})
    return rows


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build_tiny_reference(folder: Path, rows: list[dict]) -> str:
    """A 1-layer Llama, hidden 32, with a 512-token byte-level BPE trained on the rows; random weights."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([r["prompt"] + " " + r["response"] for r in rows[:2000]] + ["user assistant\n"], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHATML
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=2048, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    ))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def current_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def measure_stage(model: str, data_file: str, out: str, workers: int, max_length: int, threads: int) -> dict:
    """Child process: run the prior stage once; its time split by timers around tokenizing and scoring."""
    import torch

    import prift.prior as prior
    from prift.data import DataConfig
    from prift.prior import PriorConfig, run_prior

    spent = {"tokenize": 0.0, "score": 0.0}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t0
        return wrapper

    prior.tokenize_batch = timed("tokenize", prior.tokenize_batch)
    prior.score_rows = timed("score", prior.score_rows)
    torch.set_num_threads(threads)
    baseline = current_rss_mib()
    t0 = time.perf_counter()
    folder = run_prior(model, DataConfig(path=data_file, max_length=max_length), PriorConfig(workers=workers), out)
    wall = time.perf_counter() - t0
    meta = json.loads((folder / "meta.json").read_text())
    return {"rows": meta["rows"], "response_tokens": meta["response_tokens"], "wall_s": wall,
            "tokenize_s": spent["tokenize"], "score_s": spent["score"], "rss_after_imports_mib": baseline,
            "peak_rss_mib": peak_rss_mib()}


def per_row_tokenize(conversations, tokenizer, max_length: int) -> int:
    """The encoding tokenize_rows used before batching: one chat-template and one encode call per row."""
    kept = 0
    for messages, response in conversations:
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        ids = (list(prompt) + tokenizer.encode(response,
                                               add_special_tokens=False) + [tokenizer.eos_token_id])[:max_length]
        kept += len(ids) > len(prompt)
    return kept


def time_tokenization(rows: list[dict], max_length: int) -> dict:
    from prift.data import DataConfig, tokenize_rows, validate_rows
    from common.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    conversations = validate_rows(rows, DataConfig(path="synthetic"))
    t0 = time.perf_counter()
    batched = tokenize_rows(conversations, tokenizer, max_length)
    t1 = time.perf_counter()
    kept = per_row_tokenize(conversations, tokenizer, max_length)
    t2 = time.perf_counter()
    assert kept == len(batched)
    tokens = sum(len(r["input_ids"]) for r in batched)
    return {"rows": len(rows), "tokens": tokens, "batched_s": t1 - t0, "per_row_s": t2 - t1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20000, help="rows for the tokenization timing")
    parser.add_argument("--sizes", default="2500,5000,10000,20000", help="row counts of the stage runs")
    parser.add_argument("--workers", type=int, default=1, help="prior.workers of the stage runs")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of a stage run (1: cores shared with other jobs make OpenMP spin)")
    parser.add_argument("--measure", nargs=3, metavar=("MODEL", "DATA", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure_stage(*args.measure, args.workers, args.max_length, args.threads)))
        return

    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = synthetic_rows(max(sizes + [args.rows]))
        model = build_tiny_reference(tmp / "tiny", rows)
        stage = {}
        for n in sizes:
            data = write_jsonl(rows[:n], tmp / f"rows-{n}.jsonl")  # its own file: the stage reads no more than n rows
            cmd = [sys.executable, __file__, "--measure", model, str(data), str(tmp / f"prior-{n}"),
                   "--workers", str(args.workers), "--max-length", str(args.max_length), "--threads", str(args.threads)]
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode:
                sys.exit(f"stage run on {n} rows failed:\n{result.stderr[-3000:]}")
            stage[n] = json.loads(result.stdout.strip().splitlines()[-1]) | {"data_mib": data.stat().st_size / 2**20}
            print(f"stage {n:>6} rows: {json.dumps(stage[n])}", flush=True)
        tok = time_tokenization(rows[: args.rows], args.max_length)

    print(f"\ntokenization, SmolLM2 tokenizer, {tok['rows']} rows ({tok['tokens']} tokens):")
    print(f"  batched  {tok['rows'] / tok['batched_s']:8.0f} rows/s  ({tok['batched_s']:.1f} s)")
    print(f"  per row  {tok['rows'] / tok['per_row_s']:8.0f} rows/s  ({tok['per_row_s']:.1f} s): "
          f"batched is {tok['per_row_s'] / tok['batched_s']:.2f}x")
    largest = stage[max(sizes)]
    print(f"\nprior stage, tiny random reference, {largest['rows']} rows "
          f"({largest['response_tokens']} response tokens), "
          f"workers={args.workers}, {args.threads} torch thread(s) each:")
    if args.workers == 1:  # the timers see only shards scored in the stage's own process
        print(f"  tokenizing {largest['rows'] / largest['tokenize_s']:8.0f} rows/s   scoring "
              f"{largest['rows'] / largest['score_s']:6.0f} rows/s", end="   ")
    print(f"  whole stage {largest['rows'] / largest['wall_s']:6.0f} rows/s (loading and checking the data included)")
    print("\n  rows   data MiB   RSS after imports   peak RSS (VmHWM)   x smallest")
    first = stage[sizes[0]]["peak_rss_mib"]
    for n in sizes:
        s = stage[n]
        print(f"{n:>6} {s['data_mib']:10.1f} {s['rss_after_imports_mib']:15.0f} MiB {s['peak_rss_mib']:14.0f} MiB "
              f"{s['peak_rss_mib'] / first:12.3f}")


if __name__ == "__main__":
    main()
