"""The frozen reference as a scorer: per-token log q(y_t), u_t and entropies (prift.signals) of a causal LM.

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
from prift.signals import DEFAULT_ROW_CHUNK, DEFAULT_VOCAB_CHUNK, SIGNAL_NAMES, signal_set

STORED_SIGNALS = SIGNAL_NAMES  # what the prior stage stores per token, as `prior_<name>` columns


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
    out = reference_signal_set(model, input_ids, attention_mask, response_mask, ("logprob", "mass"),
                               row_chunk=row_chunk, vocab_chunk=vocab_chunk)
    return out["logprob"], out["mass"]


@torch.no_grad()
def reference_signal_set(model, input_ids, attention_mask, response_mask, names=SIGNAL_NAMES, *,
                         row_chunk: int = DEFAULT_ROW_CHUNK, vocab_chunk: int = DEFAULT_VOCAB_CHUNK):
    """The signals `names` (prift.signals) aligned to tokens as `reference_signals` does, by name."""
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return hidden_signals(model, hidden, input_ids, response_mask, names, row_chunk=row_chunk, vocab_chunk=vocab_chunk)


@torch.no_grad()
def hidden_signals(model, hidden, input_ids, response_mask, names, *, row_chunk: int = DEFAULT_ROW_CHUNK,
                   vocab_chunk: int = DEFAULT_VOCAB_CHUNK) -> dict[str, torch.Tensor]:
    """Token-aligned [B, L] signals from the decoder's last hidden states [B, L, D] (of the reference,
    or of the policy's own training forward for the online signals), the head applied by row chunks."""
    predicts = response_mask[:, 1:].bool()  # position j-1 predicts token j
    h = hidden.detach()[:, :-1][predicts]
    targets = input_ids[:, 1:][predicts]
    flat = {n: torch.empty(targets.shape, dtype=torch.float32, device=input_ids.device) for n in names}
    for r0 in range(0, targets.numel(), row_chunk):
        logits = hidden_to_logits(model, h[r0 : r0 + row_chunk])
        block = signal_set(logits, targets[r0 : r0 + row_chunk], names, vocab_chunk=vocab_chunk, row_chunk=row_chunk)
        for n in names:
            flat[n][r0 : r0 + row_chunk] = block[n]
    out = {}
    for n in names:
        out[n] = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
        out[n][:, 1:][predicts] = flat[n]
    return out


def score_rows(model, rows: list[dict], cfg, *, progress: bool = True) -> list[dict[str, np.ndarray]]:
    """Per row, {name: float32 array as long as its input_ids} for each of STORED_SIGNALS.

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
        out = reference_signal_set(model, ids, attn, resp, STORED_SIGNALS, row_chunk=cfg.row_chunk,
                                   vocab_chunk=cfg.vocab_chunk)
        if not all(torch.isfinite(v).all() for v in out.values()):
            raise FloatingPointError(f"non-finite reference signal in rows {[rows[i]['index'] for i in batch]}")
        out = {name: v.cpu() for name, v in out.items()}
        for k, i in enumerate(batch):
            n = len(seqs[k])  # float32: 4 bytes a value
            results[i] = {name: v[k, :n].numpy().copy() for name, v in out.items()}
    return results
