"""token_signals against a float64 brute force written from the spec's definition."""

import pytest
import torch

from prift.signals import token_signals


def brute_force(logits: torch.Tensor, targets: torch.Tensor):
    """log q(y) and u = q(y) + sum_{v: q(v) < q(y)} q(v), row by row in float64."""
    z = logits.double().reshape(-1, logits.shape[-1])
    y = targets.reshape(-1)
    q = torch.softmax(z, dim=-1)
    lp, u = [], []
    for i in range(z.shape[0]):
        qy = q[i, y[i]]
        lp.append(torch.log_softmax(z[i], -1)[y[i]])
        u.append(qy + q[i][q[i] < qy].sum())
    return torch.stack(lp).reshape(targets.shape), torch.stack(u).reshape(targets.shape)


@pytest.mark.parametrize("vocab_chunk,row_chunk", [(1, 1), (7, 3), (64, 5), (10_000, 10_000)])
def test_matches_float64_and_not_the_chunking(vocab_chunk, row_chunk):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 11, 50, generator=g) * 4
    targets = torch.randint(0, 50, (3, 11), generator=g)
    lp, u = token_signals(logits, targets, vocab_chunk=vocab_chunk, row_chunk=row_chunk)
    ref_lp, ref_u = brute_force(logits, targets)
    assert lp.dtype == u.dtype == torch.float32 and lp.shape == targets.shape
    torch.testing.assert_close(lp.double(), ref_lp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(u.double(), ref_u, atol=1e-6, rtol=1e-5)


def test_ties_are_not_below_the_target_and_the_target_counts_once():
    # target logit 1.0 tied with another token: the tie is neither below nor added twice.
    logits = torch.tensor([[2.0, 1.0, 1.0, 0.0, 1.0]])
    lp, u = token_signals(logits, torch.tensor([2]), vocab_chunk=2)
    q = torch.softmax(logits.double(), -1)[0]
    assert u.item() == pytest.approx((q[2] + q[3]).item(), abs=1e-7)
    # all logits equal: every token is a tie, u = q(y) = 1/V
    lp, u = token_signals(torch.zeros(1, 8), torch.tensor([5]), vocab_chunk=3)
    assert u.item() == pytest.approx(1 / 8, abs=1e-7)
    assert lp.item() == pytest.approx(-torch.log(torch.tensor(8.0)).item(), abs=1e-6)


def test_argmax_has_mass_one_and_least_likely_has_its_own_probability():
    logits = torch.tensor([[0.1, 3.0, -2.0, 0.5]] * 2)
    _, u = token_signals(logits, torch.tensor([1, 2]), vocab_chunk=3)
    q = torch.softmax(logits[0].double(), -1)
    assert u[0].item() == pytest.approx(1.0, abs=1e-6)
    assert u[1].item() == pytest.approx(q[2].item(), rel=1e-5)


def test_extreme_logits_stay_finite_and_exact():
    logits = torch.tensor([[1e4, -1e4, 0.0, 9999.0], [-1e30, -1e30, -1e30, -1e30 + 1e24],
                           [-80.0, -90.0, -100.0, -85.0]])
    targets = torch.tensor([3, 0, 2])
    lp, u = token_signals(logits, targets, vocab_chunk=2)
    ref_lp, ref_u = brute_force(logits, targets)
    assert torch.isfinite(lp).all() and torch.isfinite(u).all()
    torch.testing.assert_close(lp.double(), ref_lp, atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(u.double(), ref_u, atol=1e-6, rtol=1e-5)


def test_masked_vocabulary_entries_at_minus_infinity():
    # a whole first chunk of -inf (e.g. masked tokens) must not produce inf - inf = NaN
    logits = torch.tensor([[float("-inf"), float("-inf"), 1.0, 2.0, 0.0]])
    lp, u = token_signals(logits, torch.tensor([2]), vocab_chunk=2)
    ref_lp, ref_u = brute_force(logits[:, 2:], torch.tensor([0]))
    assert lp.item() == pytest.approx(ref_lp.item(), abs=1e-6)
    assert u.item() == pytest.approx(ref_u.item(), abs=1e-6)


def test_bfloat16_logits_are_scored_in_float32():
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(4, 300, generator=g) * 3).bfloat16()
    targets = torch.randint(0, 300, (4,), generator=g)
    lp, u = token_signals(logits, targets, vocab_chunk=64)
    ref_lp, ref_u = brute_force(logits.float(), targets)  # exact on the bf16 values, upcast
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp.double(), ref_lp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(u.double(), ref_u, atol=1e-6, rtol=1e-5)


def test_bad_shapes_and_targets_are_rejected():
    with pytest.raises(ValueError, match="disagree"):
        token_signals(torch.zeros(2, 5), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        token_signals(torch.zeros(2, 5), torch.tensor([0, 5]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA path: runs where a GPU is present")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(64, 1000, generator=g) * 5
    targets = torch.randint(0, 1000, (64,), generator=g)
    cpu = token_signals(logits, targets, vocab_chunk=128)
    gpu = token_signals(logits.cuda().bfloat16(), targets.cuda(), vocab_chunk=128)
    ref = token_signals(logits.bfloat16(), targets, vocab_chunk=128)
    for a, b in zip(gpu, ref):
        torch.testing.assert_close(a.cpu(), b, atol=1e-5, rtol=1e-5)
    assert cpu[0].shape == gpu[0].shape
