"""GPU check: what only a GPU can show, on one GPU in under 10 minutes.

    bash benchmarks/gpu_check.sh            # a CUDA machine; needs only torch, transformers, trl, datasets
    bash benchmarks/gpu_check.sh --tiny     # the same code path on CPU with a tiny shape (the tests run it)

No vLLM, Ray or MLflow, and nothing fetched: the model is random-initialised, so this measures cost and
checks equalities, never quality.

1. Fixture. A random-init model of Qwen2.5-1.5B's shape (28 layers, hidden 1536, GQA 12/2 heads,
   vocabulary 151,936, tied embeddings), saved in bf16, with a small byte-level BPE tokenizer trained
   here on the synthetic text (ChatML template). The tokenizer only emits ids below its own 2,000, but
   every logit row still spans the model's full vocabulary, which is what PriFT's cost depends on.
2. Step overhead and prior pass: `benchmarks/prift_step.py` on that model at 2,048 tokens a sequence
   (plain TRL SFT vs PriFT with the cached prior vs PriFT with the online reference; prior pass vs a
   plain no-grad forward; ratios measured side by side in one process).
   Every variant steps with plain SGD (`--optim sgd`): AdamW's state for three resident 1.5B
   trainers would not fit one 80 GB GPU, and the optimizer's cost is the same in every variant.
3. `prift sft` end to end, bf16 autocast on CUDA, through the same CLI users call, on a 4-layer model
   with the same vocabulary (AdamW; its checkpoints stay small), for prift_prob and prift_mass, once
   with the cached prior (the prior stage runs first) and once with the online reference, same seed
   and data order. Printed: the largest per-step loss difference between the two. The cached prior
   is scored in length-sorted batches and the online one in training batches, so bf16 rounding
   differs slightly; prift_mass can flip a token sitting exactly at the 0.5 nucleus
   boundary, prift_prob cannot flip anything.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from tests.synthetic_tokenizer import chatml_tokenizer  # the repository root is on PYTHONPATH (gpu_check.sh)

REPO = Path(__file__).resolve().parents[1]
SHAPES = {
    # Qwen2.5-1.5B's config.json, minus the weights
    "qwen2.5-1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                         rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True),
    # the same vocabulary and attention layout, 4 layers: `prift sft` end to end without writing 25 GB checkpoints
    "qwen2.5-small": dict(vocab_size=151936, hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                          num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=32768,
                          rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True),
    "tiny": dict(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                 tie_word_embeddings=True),
}
log = logging.getLogger("gpu_check")


def worked_sum(i: int, terms: int) -> tuple[str, str]:
    """A prompt and a worked solution, `terms` steps long (the text the tokenizer is trained on)."""
    steps = " ".join(f"{i + k} plus {k + 1} gives {i + 2 * k + 1}." for k in range(terms))
    return f"Add the numbers from {i} to {i + terms}, step by step.", f"{steps} The answer is {i * terms}."


def make_tokenizer(folder: Path) -> None:
    corpus = [" ".join(worked_sum(i, 40)) for i in range(200)]
    chatml_tokenizer(corpus, vocab_size=2000).save_pretrained(folder)


def make_model(folder: Path, shape: str, device: torch.device) -> int:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    with device:  # initialise where it will run: 1.5B normal_ draws on a GPU take a second
        model = Qwen2ForCausalLM(Qwen2Config(**SHAPES[shape])).to(torch.bfloat16)
    model.save_pretrained(folder)
    n = sum(p.numel() for p in model.parameters())
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the benchmark runs in child processes: leave them the whole GPU
    return n


def write_data(path: Path, rows: int, terms: tuple[int, int]) -> None:
    lo, hi = terms
    with path.open("w") as f:
        for i in range(rows):
            prompt, response = worked_sum(i, lo + (i * 7) % (hi - lo + 1))  # mixed lengths
            f.write(json.dumps({"prompt": prompt, "response": response}) + "\n")


def run(cmd: list[str], what: str) -> str:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if res.returncode != 0:
        sys.stderr.write(res.stdout[-4000:] + res.stderr[-8000:])
        raise SystemExit(f"{what} failed (exit {res.returncode}): {' '.join(cmd)}")
    log.info("%s: %.0f s", what, time.perf_counter() - t0)
    return res.stdout


def sft_losses(out_dir: Path) -> list[float]:
    """Per-step training losses from the last checkpoint's trainer state (logging_steps=1)."""
    states = sorted(out_dir.glob("sft/checkpoints/checkpoint-*/trainer_state.json"),
                    key=lambda p: int(p.parent.name.split("-")[1]))
    history = json.loads(states[-1].read_text())["log_history"]
    return [h["loss"] for h in history if "loss" in h]


def end_to_end(model: Path, work: Path, args) -> list[str]:
    """`prift sft` with the cached prior and with the online reference, per method: loss differences."""
    data = work / "data.jsonl"
    write_data(data, rows=args.sft_steps * args.sft_batch, terms=(8, args.sft_terms))
    lines = []
    for method in args.sft_methods:
        losses = {}
        for mode in ("cached", "online"):
            out = work / f"{method}_{mode}"
            sets = [f"model={model}", f"output_dir={out}", f"data.path={data}", f"data.max_length={args.sft_len}",
                    f"prior.mode={mode}", f"sft.method={method}", f"sft.max_steps={args.sft_steps}",
                    f"sft.per_device_batch_size={args.sft_batch}", "sft.logging_steps=1",
                    f"sft.save_steps={args.sft_steps}", "sft.warmup_ratio=0.0", "sft.seed=0",
                    f"sft.precision={args.precision}"]
            cmd = [sys.executable, "-m", "workflows.cli", "sft", str(work / "empty.yaml")]
            run(cmd + [a for s in sets for a in ("--set", s)], f"prift sft {method} prior={mode}")
            losses[mode] = sft_losses(out)
            shutil.rmtree(out)  # checkpoints and final weights are not what this checks
        diffs = [abs(a - b) for a, b in zip(losses["cached"], losses["online"], strict=True)]
        lines.append(f"{method:<11} {len(diffs)} steps, loss {losses['online'][0]:.4f} -> {losses['online'][-1]:.4f}; "
                     f"max |cached - online| = {max(diffs):.2e} (rel {max(diffs) / max(losses['online']):.2e})")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny shape and short sequences (CPU smoke run)")
    args = p.parse_args()
    tiny = args.tiny
    args.shape, args.sft_shape = ("tiny", "tiny") if tiny else ("qwen2.5-1.5b", "qwen2.5-small")
    args.seq_len, args.batch, args.rounds = (128, 2, 4) if tiny else (2048, 2, 8)
    args.sft_steps, args.sft_batch, args.sft_len, args.sft_terms = (3, 2, 256, 12) if tiny else (6, 8, 2048, 200)
    args.sft_methods = ("prift_mass",) if tiny else ("prift_prob", "prift_mass")
    args.precision = "auto" if tiny else "bf16"  # auto: fp32 on CPU, where bf16 autocast is not the point
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not tiny:
        raise SystemExit("no CUDA device: run with --tiny for the CPU smoke run")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        model, small = work / "model", work / "small"
        for folder in (model, small):
            make_tokenizer(folder)
        n = make_model(model, args.shape, device)
        n_small = make_model(small, args.sft_shape, device)
        (work / "empty.yaml").write_text("{}\n")
        where = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
        print(f"gpu_check on {where}, torch {torch.__version__}: random-init {args.shape} ({n / 1e9:.2f}B params) "
              f"for the step, {args.sft_shape} ({n_small / 1e6:.0f}M) for `prift sft`")
        step = run([sys.executable, "benchmarks/prift_step.py", "--model", str(model), "--seq-len", str(args.seq_len),
                    "--batch", str(args.batch), "--rounds", str(args.rounds), "--optim", "sgd"], "prift_step")
        e2e = end_to_end(small, work, args)
    print(step.strip())
    print(f"\nprift sft end to end ({args.precision}, {args.sft_steps} steps x {args.sft_batch} rows, "
          f"cached prior vs online reference, same seed):")
    print("\n".join(e2e))
    print(f"\ngpu_check: {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
