"""The frozen reference as a scorer: per-token log q(y_t) and u_t (see prift.signals) of a causal LM.

Used by the prior stage (prift.prior), by the trainer's online mode and by the token view. The
reference's logits are never materialised for a whole batch: `reference_signals` takes the last
hidden states, keeps the positions that predict a response token, and applies the output head to
`row_chunk` of them at a time; `prift.signals` then reduces each block over vocabulary chunks in
float32. `score_rows` checks its first batch against the model's own full forward, so a model whose
head differs from `lm_head(h)` (soft-capping, logit scaling) fails loudly instead of scoring wrong.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from common.batching import pad
from prift.signals import DEFAULT_ROW_CHUNK, DEFAULT_VOCAB_CHUNK, token_signals


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


def score_rows(model, rows: list[dict], cfg, *, progress: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per row, (prior_logprob, prior_mass) float32 arrays as long as its input_ids.

    `rows` hold input_ids, response_mask and index; `cfg` gives batch_tokens, row_chunk and
    vocab_chunk (a `prift.prior.PriorConfig`). Batches are formed from the rows sorted by length, so
    the result depends on the rows given, never on what else is scored in the same process.
    """
    device = next(model.parameters()).device
    results: list = [None] * len(rows)
    batches = length_batches([len(r["input_ids"]) for r in rows], cfg.batch_tokens)
    checked = False
    for batch in tqdm(batches, desc="prior", unit="batch", disable=not progress):
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
