"""Which training tokens the prior calls misaligned: an HTML token view and per-method token weights.

tokens.html shows a few training examples from the prior cache. The prompt is grey; each response
token's background goes from red (the reference gives it probability ~0) to green (~1): that
probability q(y_t) is the token's PriFT-prob weight (a colour legend heads the page). Tokens that
PriFT-mass drops (nucleus mass score u_t < tau) are struck through, and each example says which
share of its response tokens that is. Hovering a token shows q, the DFT weight (the dft run's
trained model's own p(y_t), when the sweep has one), u and the reference's five most likely tokens
at that position. Plain HTML and CSS, no script: it renders anywhere, offline.

`method_weights`: the per-token weights over the response tokens of the cached data for each
method of the sweep: sft (all 1), prift_prob (q), prift_mass (0 or 1), and dft, whose weight is
the trained model's own p(y_t): measured with the dft run's final SFT model (weights.png,
figures.py)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import torch

from common import atomic
from prift.weights import METHODS

TOP_K = 5


def _colour(q: float) -> str:
    """Red (q = 0) through yellow to green (q = 1), light enough to read black text on."""
    hue = 120 * max(0.0, min(1.0, q))
    return f"hsl({hue:.0f}, 80%, 78%)"


@torch.no_grad()
def top_alternatives(model, input_ids: list[int], k: int = TOP_K) -> list[list[tuple[int, float]]]:
    """For each position j >= 1, the reference's k most likely tokens for position j (given < j)."""
    probs = torch.softmax(model(input_ids=torch.tensor([input_ids])).logits[0, :-1].float(), -1)
    top = probs.topk(k, dim=-1)
    return [[]] + [list(zip(i.tolist(), p.tolist())) for i, p in zip(top.indices, top.values)]


@torch.no_grad()
def token_probs(model, input_ids: list[int]) -> list[float]:
    """p(token j | tokens < j) under `model` for each position j >= 1 (position 0: nan): for the
    dft run's trained model, the DFT weight of each token."""
    logp = torch.log_softmax(model(input_ids=torch.tensor([input_ids])).logits[0, :-1].double(), -1)
    return [float("nan")] + logp.gather(-1, torch.tensor(input_ids[1:])[:, None])[:, 0].exp().tolist()


def example_html(tokenizer, row: dict, alternatives: list[list[tuple[int, float]]], tau: float,
                 dft: list[float] | None = None, number: int = 1) -> str:
    """One example: a caption with the share of response tokens PriFT-mass drops, the prompt, then
    every response token as a coloured span with a tooltip (q, the DFT weight if `dft`, u, top-k)."""
    ids, mask = row["input_ids"], row["response_mask"]
    start = mask.index(1) if 1 in mask else len(ids)
    parts = [f'<span class="prompt">{html.escape(tokenizer.decode(ids[:start]))}</span>']
    response = [j for j in range(start, len(ids)) if mask[j]]
    dropped = sum(float(row["prior_mass"][j]) < tau for j in response)
    for j in response:
        q, u = float(np.exp(row["prior_logprob"][j])), float(row["prior_mass"][j])
        top = ", ".join(f"{tokenizer.decode([t])!r} {p:.2f}" for t, p in alternatives[j])
        weight = f"  dft={dft[j]:.3f}" if dft else ""
        tip = f"q={q:.3f}{weight}  u={u:.3f}  {'dropped by PriFT-mass' if u < tau else 'kept'}\ntop: {top}"
        cls = "tok dropped" if u < tau else "tok"
        text = html.escape(tokenizer.decode([ids[j]]))
        parts.append(f'<span class="{cls}" style="background:{_colour(q)}" title="{html.escape(tip)}">{text}</span>')
    share = 100 * dropped / len(response) if response else 0.0
    caption = (f'<p class="caption">Example {number}: {dropped} of {len(response)} response tokens '
               f"({share:.0f}% dropped by PriFT-mass)</p>")
    return caption + '<div class="example">' + "".join(parts) + "</div>"


def legend_html(tau: float) -> str:
    """The colour scale of q (0 to 1 in steps of 0.1), and what grey and struck-through mean."""
    steps = "".join(f'<span class="swatch" style="background:{_colour(q / 10)}">{q / 10:.1f}</span>' for q in range(11))
    return (f'<div class="legend"><b>q (PriFT-prob weight):</b> {steps} &nbsp; '
            f'<span class="prompt">prompt</span> &nbsp; '
            f'<span class="dropped">dropped by PriFT-mass (u &lt; {tau})</span></div>')


STYLE = """
body { font-family: sans-serif; max-width: 60em; margin: 2em auto; }
.example { font-family: monospace; white-space: pre-wrap; border: 1px solid #ccc; padding: 1em; margin: 1em 0; }
.prompt { color: #888; }
.tok { border-radius: 2px; }
.dropped { text-decoration: line-through; text-decoration-color: #b00; text-decoration-thickness: 2px; }
.caption { margin: 1.5em 0 0 0; font-weight: bold; }
.legend { position: sticky; top: 0; background: white; padding: 0.5em 0; border-bottom: 1px solid #ccc; }
.swatch { display: inline-block; padding: 0 0.35em; font-family: monospace; }
"""


def token_view(prior_dir: Path, out: Path, examples: int = 4, seed: int = 0, dft_model: str | None = None) -> Path:
    """tokens.html for `examples` rows of the prior cache (seeded choice), using its reference model;
    with `dft_model` (the dft run's final SFT model) each token's DFT weight is in its tooltip too."""
    from common.models import load_causal_lm, load_tokenizer
    from prift.prior import load_prior

    meta = json.loads((prior_dir / "meta.json").read_text())
    table = load_prior(prior_dir)
    picks = np.random.default_rng(seed).choice(len(table), size=min(examples, len(table)), replace=False)
    tokenizer = load_tokenizer(meta["reference"])
    model = load_causal_lm(meta["reference"]).eval()
    dft = load_causal_lm(str(dft_model)).eval() if dft_model else None
    tau = METHODS["prift_mass"].tau
    blocks = []
    for number, i in enumerate(sorted(picks.tolist()), 1):
        row = table[i]
        weights = token_probs(dft, row["input_ids"]) if dft is not None else None
        blocks.append(example_html(tokenizer, row, top_alternatives(model, row["input_ids"]), tau, weights, number))
    dft_note = ("the DFT weight (dft: the dft run's trained model's own probability of the token), "
                if dft_model else "")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>PriFT token view</title><style>{STYLE}</style>"
            f"</head><body><h1>PriFT token view</h1><p>Reference <code>{html.escape(meta['reference'])}</code>. "
            f"Colour: the reference probability q of each response token (red 0, green 1), its PriFT-prob weight. "
            f"Struck through: dropped by PriFT-mass (u &lt; {tau}). Hover a token for q, {dft_note}u and the "
            f"reference's top {TOP_K} tokens.</p>{legend_html(tau)}{''.join(blocks)}</body></html>")
    atomic.write_text(out, page)
    return out


def method_weights(prior_dir: Path, runs, rows: int = 32) -> dict[str, np.ndarray]:
    """Per method of the sweep, the weights its rule gives the response tokens of the first `rows`
    cached rows: from the stored prior signals, or, for a rule on the trained model's own signal
    (dft), from that method's final SFT model (skipped when no run of it kept its weights)."""
    from common.batching import pad
    from common.models import load_causal_lm
    from prift.prior import SIGNAL_COLUMNS, load_prior
    from prift.reference import reference_signal_set
    from prift.weights import batch_weights, resolve_method

    full = load_prior(prior_dir)
    table = full.select(range(min(rows, len(full))))
    masks = [np.asarray(m, dtype=bool) for m in table["response_mask"]]

    def response(values) -> torch.Tensor:
        return torch.from_numpy(np.concatenate([np.asarray(v, dtype=np.float32)[: len(m)][m]
                                                for v, m in zip(values, masks)]))

    prior = {col: response(table[col]) for col in SIGNAL_COLUMNS}
    example = torch.from_numpy(np.concatenate([np.full(int(m.sum()), i) for i, m in enumerate(masks)]))
    out = {}
    for method in sorted({r.method for r in runs}):
        rule = resolve_method(method)
        signals = dict(prior)
        if any(s.startswith("online_") for s in rule.signals):
            final = next(filter(None, (r.weights("sft") for r in runs if r.method == method)), None)
            if final is None:
                continue
            model = load_causal_lm(str(final)).eval()
            online = reference_signal_set(model, pad(table["input_ids"], 0),
                                          pad([[1] * len(s) for s in table["input_ids"]], 0),
                                          pad(table["response_mask"], 0))
            signals |= {f"online_{k}": response(v.numpy()) for k, v in online.items()}
        w = batch_weights(rule, signals, torch.ones(example.shape, dtype=torch.bool), example)
        out[method] = w.numpy()
    return out
