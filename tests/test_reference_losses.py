"""Every named method against a float64 transcription of its reference implementation, same logits.

prift's side runs its own code path on the logits (chunked float32 signals, `batch_weights`,
`weighted_nll`); the reference side is tests/reference_losses.py, each published function with its own
normalisation. Loss, per-token weights and the gradient with respect to the policy's logits must
agree. The trainer-level wiring (hooks, the resident reference, the cache) is checked in
test_trainer_methods.py.
"""

import pytest
import torch
import torch.nn.functional as F

from reference_losses import reference
from prift.anchor import anchor_kl, topk_kl
from prift.signals import signal_set
from prift.weights import METHODS, batch_weights, twin
from prift.loss import weighted_nll

B, T, V = 3, 9, 64
N_ANY = None  # the reference's own mean over the micro-batch (one micro-batch: N = its token count)


def prift(method, pol, ref, labels, n):
    """(loss, weights on the mask) by prift's code: float32 chunked signals of both logits."""
    rule = METHODS[method]
    mask = labels != -100
    y = labels.clamp(min=0)
    log_probs = torch.where(mask, F.log_softmax(pol, -1).gather(-1, y[..., None]).squeeze(-1), 0.0)
    signals = {}
    for source, logits in (("online", pol.detach()), ("prior", ref)):
        signals |= {f"{source}_{k}": v for k, v in signal_set(logits.float(), y, vocab_chunk=17).items()}
    kl = None
    if rule.kl_coef:
        kl = F.kl_div(F.log_softmax(pol, -1), F.log_softmax(ref, -1), reduction="none", log_target=True).sum(-1)
    loss, _ = weighted_nll(log_probs, mask, rule, signals={k: v for k, v in signals.items() if k != "online_logprob"},
                           kl=kl, num_items_in_batch=n)
    weights = batch_weights(rule, {**signals, "online_logprob": log_probs.detach()}, mask)
    return loss, weights[mask]


def logits_and_labels(seed):
    g = torch.Generator().manual_seed(seed)
    pol = (torch.randn(B, T, V, generator=g, dtype=torch.float64) * 3)
    ref = pol.detach() * 0.5 + torch.randn(B, T, V, generator=g, dtype=torch.float64) * 2  # related, not equal
    labels = torch.randint(0, V, (B, T), generator=g)
    # make some targets likely under each model, so thresholds and the top-k selection both bite
    likely = torch.rand(B, T, generator=g) < 0.4
    labels = torch.where(likely, pol.argmax(-1), labels)
    labels[0, :3] = -100  # a prompt
    labels[2, 6:] = -100  # padding
    return pol, ref, labels


NAMED = [m for m in METHODS if m not in ("sft", "prift_mass")]  # those two: test_trainer.py's float64 test


def test_every_method_has_a_reference_here():
    pol, ref, labels = logits_and_labels(0)
    for m in NAMED:  # a KeyError names a method added to METHODS without a transcription
        reference(m, pol, ref, labels, 10)


@pytest.mark.parametrize("method", NAMED)
def test_loss_weights_and_gradient_match_the_reference_code(method):
    for seed in (0, 1):
        pol, ref, labels = logits_and_labels(seed)
        # LLaMA-Factory's ASFT and Beyond-LL take the micro-batch mean; the others N = num_items_in_batch
        n = N_ANY if method in ("asft", "prift_asft", "neg_pk") else int((labels != -100).sum())
        a = pol.clone().requires_grad_()
        loss_ref, w_ref = reference(method, a, ref, labels, n)
        loss_ref.backward()
        b = pol.clone().requires_grad_()
        loss, w = prift(method, b, ref, labels, n)
        loss.backward()
        assert loss.item() == pytest.approx(loss_ref.item(), rel=1e-5, abs=1e-7)
        if w_ref is not None:
            torch.testing.assert_close(w.double(), w_ref.double(), rtol=1e-5, atol=1e-6)
            assert 0 < (w > 0).sum() <= w.numel() and w.std() > 0  # the rule discriminates here
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-8)


def test_twins_pair_each_published_rule_with_its_prior_form():
    pairs = {m: twin(m) for m in METHODS}
    assert pairs["dft"] == "prift_prob" and pairs["prift_prob"] == "dft"
    assert pairs["eaft"] == "prift_eaft" and pairs["profit"] == "prift_profit" and pairs["asft"] == "prift_asft"
    assert pairs["rho1"] is None and pairs["iw_sft"] is None and pairs["sft"] is None


@pytest.mark.parametrize("masked", [0, 5])
def test_entropies_match_float64(masked):
    """Full and top-20 entropies against float64; `masked` tokens at -inf (a vocabulary cut) stay out."""
    pol, _, labels = logits_and_labels(3)
    pol[..., :masked] = -torch.inf
    y = labels.clamp(min=masked)
    s = signal_set(pol.float(), y, vocab_chunk=7, row_chunk=5)
    logp = F.log_softmax(pol, -1)
    torch.testing.assert_close(s["entropy"].double(), -torch.special.xlogy(logp.exp(), logp.exp()).sum(-1),
                               rtol=1e-5, atol=1e-5)
    top = pol.topk(20, -1).values
    lr = F.log_softmax(top, -1)
    torch.testing.assert_close(s["entropy_top"].double(), -(lr.exp() * lr).sum(-1), rtol=1e-5, atol=1e-5)


def test_anchor_kl_is_the_exact_kl_with_its_gradient_through_row_chunks():
    torch.manual_seed(0)
    d = 16
    head_p, head_q = torch.nn.Linear(d, V, bias=False).double(), torch.nn.Linear(d, V, bias=False).double()

    class Head:  # the output head as anchor_kl reads it
        def __init__(self, lin):
            self.lin, self.config = lin, type("C", (), {})()

        def get_output_embeddings(self):
            return self.lin

    h_p = torch.randn(2, 7, d, dtype=torch.float64, requires_grad=True)
    h_q = torch.randn(2, 7, d, dtype=torch.float64)
    response = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [0, 1, 1, 1, 0, 0, 0]])
    kl = anchor_kl(Head(head_p), h_p, Head(head_q), h_q, response, row_chunk=3)
    predicts = response[:, 1:].bool()
    log_p, log_q = F.log_softmax(head_p(h_p[:, :-1]), -1), F.log_softmax(head_q(h_q[:, :-1]), -1)
    exact = (log_q.exp() * (log_q - log_p)).sum(-1) * predicts
    torch.testing.assert_close(kl.double(), exact, rtol=1e-5, atol=1e-6)
    (g,) = torch.autograd.grad(kl.sum(), h_p)
    (g_exact,) = torch.autograd.grad(exact.sum(), h_p)
    torch.testing.assert_close(g.double(), g_exact, rtol=1e-4, atol=1e-6)


def test_topk_kl_leaves_out_only_the_tail():
    pol, ref, _ = logits_and_labels(4)
    log_p, log_q = F.log_softmax(pol, -1).reshape(-1, V), F.log_softmax(ref, -1).reshape(-1, V)
    exact = (log_q.exp() * (log_q - log_p)).sum(-1)
    torch.testing.assert_close(topk_kl(log_p, log_q, V), exact)
    assert (topk_kl(log_p, log_q, 8) - exact).abs().max() > 1e-3  # a truncation, so never used silently
