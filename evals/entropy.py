"""Token entropy of sampled completions: how spread the model's next-token distribution was at each
token it wrote. High entropy across a problem's samples is diversity that RL can still sharpen into
first-try answers; a model whose samples all run at entropy near 0 has settled.

At generated token t of a completion y after prompt x the entropy (nats) is

    H_t = - sum_v p(v | x, y_<t) log p(v | x, y_<t)

with p the model's own distribution (softmax of its logits, temperature 1, no top-p), so it is a
property of the model and comparable across sampling settings; under the paper's protocol
(temperature 1, top_p 1) it is exactly the entropy of the distribution each token was drawn from.

Neither backend returns full distributions while it samples (vLLM gives top-k logprobs only), so the
entropies come from one teacher-forced forward over prompt + completion after generation: the
decoder runs on length-sorted batches of at most `batch_tokens` tokens, the positions that predict a
completion token are kept, and the output head is applied `row_chunk` of them at a time in float32.
Its cost is about one prefill over every sample, small next to decoding them.

    >>> import torch
    >>> float(entropy_of_logits(torch.zeros(1, 4)))  # uniform over 4 tokens: log 4
    1.3862943649291992
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from common.batching import length_batches, pad
from common.lm_head import check_head_matches_forward, hidden_to_logits


def entropy_of_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of softmax(logits) over the last axis, computed in float32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


@torch.no_grad()
def completion_entropies(model, prompts: list[list[int]], completions: list[list[int]], *, batch_tokens: int = 8192,
                         row_chunk: int = 256, progress: bool = True) -> list[np.ndarray]:
    """Per completion, the float32 entropies H_t of its tokens (an empty completion gives an empty
    array). Sequence i is prompts[i] + completions[i]; results do not depend on how they batch."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
    if any(len(p) == 0 for p in prompts):  # the first completion token would have no position to predict it
        raise ValueError("an empty prompt: token entropy needs at least one prompt token")
    device = next(model.parameters()).device
    seqs = [list(p) + list(c) for p, c in zip(prompts, completions)]
    out: list = [np.zeros(0, np.float32)] * len(seqs)
    todo = [i for i, c in enumerate(completions) if len(c)]
    checked = False
    for batch in tqdm(length_batches([len(seqs[i]) for i in todo], batch_tokens), desc="token entropy",
                      unit="batch", disable=not progress):
        rows = [todo[k] for k in batch]
        ids = pad([seqs[i] for i in rows], 0, device)
        attn = pad([[1] * len(seqs[i]) for i in rows], 0, device)
        if not checked:
            check_head_matches_forward(model, ids, attn)
            checked = True
        hidden = model.get_decoder()(input_ids=ids, attention_mask=attn).last_hidden_state
        # position j - 1 predicts token j: completion tokens sit at len(prompt) .. len(seq) - 1
        predicts = torch.zeros(ids.shape, dtype=torch.bool, device=device)
        for r, i in enumerate(rows):
            predicts[r, len(prompts[i]) - 1 : len(seqs[i]) - 1] = True
        h = hidden[predicts]
        entropies = torch.cat([entropy_of_logits(hidden_to_logits(model, h[r0 : r0 + row_chunk]))
                               for r0 in range(0, len(h), row_chunk)]).cpu().numpy()
        if not np.isfinite(entropies).all():
            raise FloatingPointError(f"non-finite token entropy in completions {rows}")
        start = 0
        for i in rows:  # boolean indexing keeps row-major order: row by row, positions ascending
            out[i] = entropies[start : start + len(completions[i])]
            start += len(completions[i])
    return out
