"""The prior stage: score SFT data once with the frozen reference and store two numbers per token.

PriFT's weight depends only on (reference, data), so instead of running a second full model on every
training batch (the official code), this stage runs it once, with no gradient, over the tokenized
data sorted by length, and stores per response token

    prior_logprob = log q(y_t)     prior_mass = u_t   (see prift.signals)

next to the token ids. Training then reads them from the batch: one pass serves every epoch, both
PriFT variants, every rule of the family and every seed of a sweep.

The reference's logits are never materialised for the whole batch: the stage takes the last hidden
states, keeps the positions that predict a response token, and applies the output head to `row_chunk`
of them at a time; `prift.signals` then reduces each block over vocabulary chunks in float32. The first
batch is checked against the model's own full forward, so a model whose head differs from
`lm_head(h)` (soft-capping, logit scaling) fails loudly instead of scoring silently wrong.

    prift prior CONFIG        # see workflows/configs/demo.yaml
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from common.checks import at_least, require
from prift.data import DataConfig, fingerprint_rows, load_rows, tokenize_rows, validate_rows
from prift.models import (
    default_device,
    default_dtype,
    fingerprint_model,
    fingerprint_tokenizer,
    load_causal_lm,
    load_tokenizer,
    resolve_model_path,
)
from prift.signals import DEFAULT_ROW_CHUNK, DEFAULT_VOCAB_CHUNK, token_signals

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when what is stored, or how it is computed, changes


@dataclass(frozen=True)
class PriorConfig:
    """The frozen reference and how its per-token signals are produced."""

    reference: str = ""
    """Reference model (local folder, hub name, or an embedded name); empty: the policy's base model."""
    mode: Literal["cached", "online"] = "cached"
    """`cached`: score the data once in the prior stage; `online`: run the resident reference on
    every training batch (the official implementation; kept as a baseline and for equivalence tests)."""
    batch_tokens: int = 16384
    """Padded tokens per scoring batch (batches are formed from length-sorted rows)."""
    row_chunk: int = DEFAULT_ROW_CHUNK
    """Positions sent through the output head at once: bounds the [rows, vocab] logits block."""
    vocab_chunk: int = DEFAULT_VOCAB_CHUNK
    """Vocabulary slice reduced at once in float32."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Reference dtype: `auto` is bf16 on a GPU that has it, float32 otherwise."""

    def __post_init__(self):
        require(
            at_least("batch_tokens", self.batch_tokens, 1),
            at_least("row_chunk", self.row_chunk, 1),
            at_least("vocab_chunk", self.vocab_chunk, 1),
        )


def torch_dtype(name: str, device: torch.device) -> torch.dtype:
    return default_dtype(device) if name == "auto" else getattr(torch, name)


# ----------------------------------------------------------------------------------- scoring


def hidden_to_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """The model's output head applied to hidden states (with Gemma-style final soft-capping)."""
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


@torch.no_grad()
def reference_signals(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    row_chunk: int = DEFAULT_ROW_CHUNK,
    vocab_chunk: int = DEFAULT_VOCAB_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log q, u) aligned to tokens, [B, L] float32: entry j scores token j given tokens < j.

    Entries that are not response tokens (prompt, padding, position 0) are 0.
    """
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    predicts = response_mask[:, 1:].bool()  # position j-1 predicts token j
    h = hidden[:, :-1][predicts]
    targets = input_ids[:, 1:][predicts]
    lp = torch.empty(targets.shape, dtype=torch.float32, device=input_ids.device)
    u = torch.empty_like(lp)
    for r0 in range(0, targets.numel(), row_chunk):
        logits = hidden_to_logits(model, h[r0 : r0 + row_chunk])
        lp[r0 : r0 + row_chunk], u[r0 : r0 + row_chunk] = token_signals(
            logits, targets[r0 : r0 + row_chunk], vocab_chunk=vocab_chunk, row_chunk=row_chunk
        )
    out_lp = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    out_u = torch.zeros_like(out_lp)
    out_lp[:, 1:][predicts] = lp
    out_u[:, 1:][predicts] = u
    return out_lp, out_u


@torch.no_grad()
def check_head_matches_forward(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
    """Raise if `hidden_to_logits(decoder(x))` disagrees with the model's own forward on one row."""
    ids, mask = input_ids[:1], attention_mask[:1]
    full = model(input_ids=ids, attention_mask=mask).logits.float()
    ours = hidden_to_logits(model, model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state)
    tol = 1e-3 if full.dtype == torch.float32 and model.dtype == torch.float32 else 5e-2
    err = (full - ours.float()).abs().max().item()
    if not err <= tol * max(1.0, full.abs().max().item()):
        raise RuntimeError(
            f"{type(model).__name__}: output head disagrees with the full forward (max |diff| {err:.3g}); "
            "the prior scorer does not know this model's logit transform"
        )


def length_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped into batches of similar length whose padded size stays within batch_tokens."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches, current = [], []
    for i in order:
        if current and lengths[i] * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def pad(seqs: list[list], value, device=None, dtype=torch.long) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([list(s) + [value] * (width - len(s)) for s in seqs], dtype=dtype, device=device)


def score_rows(model, rows: list[dict], cfg: PriorConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per row, (prior_logprob, prior_mass) float32 arrays as long as its input_ids."""
    device = next(model.parameters()).device
    results: list = [None] * len(rows)
    batches = length_batches([len(r["input_ids"]) for r in rows], cfg.batch_tokens)
    checked = False
    for batch in tqdm(batches, desc="prior", unit="batch"):
        seqs = [rows[i]["input_ids"] for i in batch]
        ids = pad(seqs, 0, device)
        attn = pad([[1] * len(s) for s in seqs], 0, device)
        resp = pad([rows[i]["response_mask"] for i in batch], 0, device)
        if not checked:
            check_head_matches_forward(model, ids, attn)
            checked = True
        lp, u = reference_signals(model, ids, attn, resp, row_chunk=cfg.row_chunk, vocab_chunk=cfg.vocab_chunk)
        if not (torch.isfinite(lp[resp.bool()]).all() and torch.isfinite(u).all()):
            raise FloatingPointError(f"non-finite reference signal in rows {[rows[i]['index'] for i in batch]}")
        lp, u = lp.cpu(), u.cpu()
        for k, i in enumerate(batch):
            n = len(seqs[k])
            results[i] = (lp[k, :n].numpy().copy(), u[k, :n].numpy().copy())  # float32: 4 bytes a value
    return results


# ----------------------------------------------------------------------------------- the stage


def check_same_vocab(policy: str, reference: str) -> None:
    """Reject a reference whose vocabulary differs from the policy's, before loading either model."""
    from transformers import AutoConfig

    sizes = [AutoConfig.from_pretrained(resolve_model_path(m)).vocab_size for m in (policy, reference)]
    if sizes[0] != sizes[1]:
        raise ValueError(
            f"prior.reference: {reference!r} has vocab size {sizes[1]}, the policy {policy!r} has {sizes[0]}; "
            "the reference must share the policy's tokenizer"
        )
    if reference != policy:
        fps = [fingerprint_tokenizer(load_tokenizer(m)) for m in (policy, reference)]
        if fps[0] != fps[1]:
            raise ValueError(f"prior.reference: {reference!r} uses a different tokenizer than the policy {policy!r}")


def prepare_rows(model_name: str, data: DataConfig):
    """Load, validate and tokenize the SFT data with the policy's tokenizer: (rows, tokenizer, data key)."""
    raw = load_rows(data)
    conversations = validate_rows(raw, data)  # malformed rows fail here, before any model loads
    tokenizer = load_tokenizer(model_name)
    return tokenize_rows(conversations, tokenizer, data.max_length), tokenizer, fingerprint_rows(raw, data)


def cache_key(reference: str, tokenizer, data_key: str, data: DataConfig, dtype) -> str:
    """What decides the stored numbers; batch and chunk sizes only reorder float32 sums, so they are not in it."""
    parts = {
        "format": CACHE_FORMAT,
        "reference": fingerprint_model(reference),
        "tokenizer": fingerprint_tokenizer(tokenizer),
        "data": data_key,
        "max_length": data.max_length,
        "dtype": str(dtype),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def run_prior(model_name: str, data: DataConfig, cfg: PriorConfig, prior_dir: str | Path) -> Path:
    """Score `data` with the reference (default: `model_name`); return the cache folder.

    Layout: <prior_dir>/<key>/{data/ (datasets arrow), meta.json}. A second call with the same
    reference, tokenizer, data, max length and dtype finds the folder and returns at once.
    """
    reference = cfg.reference or model_name
    if reference != model_name:
        check_same_vocab(model_name, reference)
    rows, tokenizer, data_key = prepare_rows(model_name, data)
    device = default_device()
    dtype = torch_dtype(cfg.dtype, device)
    key = cache_key(reference, tokenizer, data_key, data, dtype)
    out = Path(prior_dir) / key
    if (out / "meta.json").exists():
        log.info("prior cache hit: %s (reference %s, %d rows); nothing to compute", out, reference, len(rows))
        return out

    model = load_causal_lm(reference, dtype=dtype, device=device).eval()
    if model.config.vocab_size < len(tokenizer):
        raise ValueError(f"prior.reference: vocab size {model.config.vocab_size} < tokenizer size {len(tokenizer)}")
    log.info("scoring %d rows with reference %s (%s, %s)", len(rows), reference, device, dtype)
    scored = score_rows(model, rows, cfg)
    del model

    import datasets

    table = datasets.Dataset.from_dict(
        {
            "input_ids": [r["input_ids"] for r in rows],
            "response_mask": [r["response_mask"] for r in rows],
            "prior_logprob": [s[0] for s in scored],
            "prior_mass": [s[1] for s in scored],
            "index": [r["index"] for r in rows],
        }
    )
    meta = {"reference": reference, "rows": len(rows), "dtype": str(dtype), **signal_summary(rows, scored)}
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    table.save_to_disk(str(tmp / "data"))
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    tmp.rename(out)  # atomic: a half-written cache is never taken as done
    log.info("prior stored at %s: %s", out, json.dumps(meta))
    return out


def signal_summary(rows: list[dict], scored) -> dict:
    """Response-token statistics of the stored signals (logged and kept in meta.json)."""
    masks = [np.asarray(r["response_mask"], dtype=bool) for r in rows]
    lps = np.concatenate([lp[m] for (lp, _), m in zip(scored, masks)])
    us = np.concatenate([u[m] for (_, u), m in zip(scored, masks)])
    return {
        "response_tokens": int(lps.size),
        "mean_prob": float(np.exp(lps.astype(np.float64)).mean()),
        "frac_mass_ge_0.5": float((us >= 0.5).mean()),
    }


def load_prior(folder: str | Path):
    """The stored dataset (input_ids, response_mask, prior_logprob, prior_mass, index)."""
    import datasets

    return datasets.load_from_disk(str(Path(folder) / "data"))
