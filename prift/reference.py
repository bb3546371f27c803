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

from common.batching import length_batches, pad
from common.lm_head import check_head_matches_forward, hidden_to_logits
from prift.signals import DEFAULT_ROW_CHUNK, DEFAULT_VOCAB_CHUNK, token_signals


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
