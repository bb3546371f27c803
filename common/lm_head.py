"""The output head applied to hidden states, so scorers never materialise [batch, length, vocab].

The prior (per-token reference signals) and the eval stage (token entropy of samples) run the
decoder once, keep the positions they need and apply the head a few rows at a time. That is only
right if the model's logits are `lm_head(h)` (plus the soft-capping some models apply), so each
scorer checks its first batch against the model's own forward (`check_head_matches_forward`).
"""

from __future__ import annotations

import torch


def hidden_to_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """The model's output head applied to hidden states (with Gemma-style final soft-capping)."""
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


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
            "the chunked scorers (prior signals, token entropy) do not know this model's logit transform"
        )
