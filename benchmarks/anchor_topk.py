"""How wrong would ASFT's KL(q || p) be from a stored top-k of q? The error of `prift.anchor.topk_kl`.

    .venv/bin/python benchmarks/anchor_topk.py                          # SmolLM2-135M-Instruct, 8 rows
    .venv/bin/python benchmarks/anchor_topk.py --policy PATH --reference PATH --rows 32

On the response tokens of synthetic chat rows (benchmarks/prift_step.py's), q is the reference and p
the policy. With no --policy, p is the reference's own logits divided by --temperature (a stand-in
for a drifted policy: the KL is then nonzero and q's tail is where p puts more mass). Printed per k:
the mean exact KL over the vocabulary, the mean truncated sum over q's k most likely tokens, and the
relative error of the mean and of a typical token (median |error| / median KL). Nothing in training
uses the truncation: ASFT runs the resident reference (docs/workbench.md).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from benchmarks.prift_step import synthetic_rows
from common.batching import pad
from common.lm_head import hidden_to_logits
from common.models import load_causal_lm, load_tokenizer
from prift.anchor import topk_kl


@torch.no_grad()
def response_logits(model, rows) -> torch.Tensor:
    ids = pad([r["input_ids"] for r in rows], 0)
    attn = pad([[1] * len(r["input_ids"]) for r in rows], 0)
    resp = pad([r["response_mask"] for r in rows], 0)[:, 1:].bool()
    hidden = model.get_decoder()(input_ids=ids, attention_mask=attn).last_hidden_state[:, :-1][resp]
    return hidden_to_logits(model, hidden).double()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", default="smollm2-135m-instruct")
    p.add_argument("--policy", default="", help="a fine-tuned model of the same tokenizer; default: see --temperature")
    p.add_argument("--temperature", type=float, default=1.5)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--ks", default="1,5,20,64,256,1024")
    args = p.parse_args()
    tokenizer = load_tokenizer(args.reference)
    rows = synthetic_rows(tokenizer, args.rows, args.seq_len)
    ref = load_causal_lm(args.reference).eval()
    z_q = response_logits(ref, rows)
    z_p = response_logits(load_causal_lm(args.policy).eval(), rows) if args.policy else z_q / args.temperature
    log_q, log_p = F.log_softmax(z_q, -1), F.log_softmax(z_p, -1)
    exact = (log_q.exp() * (log_q - log_p)).sum(-1)
    policy = args.policy or f"reference logits / {args.temperature}"
    print(f"q = {args.reference}, p = {policy}: {exact.numel()} response tokens, vocab {z_q.shape[-1]}, "
          f"mean KL(q || p) = {exact.mean():.4f} nats")
    print(f"{'k':>6} {'mean top-k KL':>14} {'rel. error of mean':>19} {'median |err| / median KL':>25}")
    for k in (int(x) for x in args.ks.split(",")):
        approx = topk_kl(log_p, log_q, min(k, z_q.shape[-1]))
        err = approx - exact
        print(f"{k:>6} {approx.mean():>14.4f} {err.mean() / exact.mean():>19.3%} "
              f"{err.abs().median() / exact.median():>25.3%}")


if __name__ == "__main__":
    main()
