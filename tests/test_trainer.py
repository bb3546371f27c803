"""PriftTrainer: the loss and its normalisation against float64 references, and training invariances."""


import pytest
import torch

from prift.data import DataConfig
from prift.prior import PriorConfig
from prift.sft import SFTStageConfig, build_trainer, training_dataset
from prift.weights import METHODS, resolve_method


# float32 everywhere, also on a GPU host (where `auto` means bf16): these are float64 equalities
F32_PRIOR = PriorConfig(precision="fp32")


def trainer_for(tiny_model, sft_file, tmp_path, method="prift_mass", prior=F32_PRIOR, **cfg):
    cfg = SFTStageConfig(method=method, **{"logging_steps": 1, "save_steps": 10_000, "precision": "fp32", **cfg})
    data = DataConfig(path=sft_file, max_length=64)
    ds = training_dataset(tiny_model, data, prior, resolve_method(method), tmp_path / "prior")
    return build_trainer(tiny_model, ds, cfg, prior, tmp_path / method), ds


def first_batch(trainer, ds, n=8):
    batch = trainer.data_collator([ds[i] for i in range(n)])
    return {k: v.to(trainer.model.device) for k, v in batch.items()}


def float64_reference(model_path, batch, method) -> dict[str, torch.Tensor]:
    """From full float64 logits, prior signals from a fresh copy of the base: the loss sum(M w ce) /
    sum(M), the weight sum, the unweighted NLL sum(M ce) / sum(M) and the kept fraction."""
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float64).to(batch["input_ids"].device).eval()
    with torch.no_grad():
        logq = torch.log_softmax(ref(batch["input_ids"], attention_mask=batch["attention_mask"]).logits, -1)
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    y = targets.clamp(min=0)[..., None]
    lq = logq[:, :-1].gather(-1, y).squeeze(-1)
    u = torch.exp(lq) + torch.where(logq[:, :-1] < lq[..., None], logq[:, :-1].exp(), 0.0).sum(-1)
    w = {"sft": torch.ones_like(lq), "prift_prob": lq.exp(), "prift_mass": (u >= 0.5).double()}[method]
    n = mask.sum()
    return {"loss": (w * -lq * mask).sum() / n, "weight_sum": (w * mask).sum(),
            "nll": (-lq * mask).sum() / n, "kept_frac": ((w > 0) & mask).sum() / n}


@pytest.mark.parametrize("method", ["sft", "prift_prob", "prift_mass"])
def test_loss_matches_float64_and_dropped_tokens_stay_in_the_denominator(tiny_model, sft_file, tmp_path, method):
    trainer, ds = trainer_for(tiny_model, sft_file, tmp_path, method)
    batch = first_batch(trainer, ds)
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    ref = float64_reference(tiny_model, batch, method)
    expected, weight_sum = ref["loss"], ref["weight_sum"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    n = (batch["labels"][:, 1:] != -100).sum()
    if method == "prift_mass":  # the tokens it drops still count: dividing by sum(w) would differ
        assert weight_sum < n
        assert loss.item() != pytest.approx(expected.item() * n.item() / weight_sum.item(), rel=1e-2)


def test_prift_prob_with_the_initial_model_as_reference_equals_dft_at_step_0(tiny_model, sft_file, tmp_path):
    grads, losses = {}, {}
    for method in ("prift_prob", "dft"):
        trainer, ds = trainer_for(tiny_model, sft_file, tmp_path, method)
        batch = first_batch(trainer, ds)
        trainer.model.train()
        loss = trainer.compute_loss(trainer.model, dict(batch))
        loss.backward()
        losses[method] = loss.item()
        grads[method] = [p.grad.clone() for p in trainer.model.parameters()]
    assert losses["prift_prob"] == pytest.approx(losses["dft"], rel=1e-5)
    for a, b in zip(grads["prift_prob"], grads["dft"]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def one_sgd_step_update(tiny_model, sft_file, tmp_path, method, batch, accum):
    """Parameter change after one SGD step (lr 1, no clipping, constant lr): minus the gradient."""
    trainer, _ = trainer_for(
        tiny_model, sft_file, tmp_path / f"{batch}x{accum}", method, optim="sgd", learning_rate=1.0,
        lr_scheduler_type="constant", warmup_ratio=0.0, max_grad_norm=0.0, weight_decay=0.0,
        per_device_batch_size=batch, gradient_accumulation_steps=accum, max_steps=1,
    )
    trainer.train_dataset = trainer.train_dataset.select(range(8))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    return [p.detach() - b for p, b in zip(trainer.model.parameters(), before)]


@pytest.mark.parametrize("method", ["prift_mass", "dft"])
def test_one_batch_of_8_equals_4_accumulated_micro_batches_of_2(tiny_model, sft_file, tmp_path, method):
    whole = one_sgd_step_update(tiny_model, sft_file, tmp_path, method, 8, 1)
    split = one_sgd_step_update(tiny_model, sft_file, tmp_path, method, 2, 4)
    assert any(d.abs().max() > 0 for d in whole)
    for a, b in zip(whole, split):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def losses_and_params(trainer):
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return losses, [p.detach().clone() for p in trainer.model.parameters()]


@pytest.mark.parametrize("method", ["prift_prob", "prift_mass"])
def test_cached_and_online_reference_give_the_same_training(tiny_model, sft_file, tmp_path, method):
    kw = dict(max_steps=4, learning_rate=1e-3, per_device_batch_size=4)
    cached, _ = trainer_for(tiny_model, sft_file, tmp_path / "c", method, PriorConfig(mode="cached"), **kw)
    online, _ = trainer_for(tiny_model, sft_file, tmp_path / "o", method, PriorConfig(mode="online"), **kw)
    assert online.ref_model is not None and cached.ref_model is None
    loss_c, params_c = losses_and_params(cached)
    loss_o, params_o = losses_and_params(online)
    assert len(loss_c) == 4
    assert loss_c == pytest.approx(loss_o, rel=1e-4)
    for a, b in zip(params_c, params_o):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_online_nucleus_rule_reads_the_policy_mass(tiny_model, sft_file, tmp_path):
    # at step 0 the policy is the reference: online nucleus == prior nucleus (PriFT-mass)
    rule = METHODS["prift_mass"].__class__("nucleus", "online", tau=0.5)
    losses = []
    for name, r in (("online", rule), ("prior", METHODS["prift_mass"])):
        cfg = SFTStageConfig(rule=r)
        data = DataConfig(path=sft_file, max_length=64)
        ds = training_dataset(tiny_model, data, PriorConfig(), r, tmp_path / "prior")
        trainer = build_trainer(tiny_model, ds, cfg, PriorConfig(), tmp_path / name)
        trainer.model.train()
        losses.append(trainer.compute_loss(trainer.model, first_batch(trainer, ds)).item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def logged_steps(trainer) -> list[dict]:
    return [h for h in trainer.state.log_history if "loss" in h]


def test_sft_logs_an_unweighted_nll_equal_to_its_loss_at_every_logging_step(tiny_model, sft_file, tmp_path):
    # micro-batches of 2 with different token counts, 2 per step, 2 steps per log: the NLL must be
    # averaged exactly as the loss is (per step over its tokens, then over steps), not over tokens
    trainer, _ = trainer_for(tiny_model, sft_file, tmp_path, "sft", max_steps=4, logging_steps=2,
                             per_device_batch_size=2, gradient_accumulation_steps=2, learning_rate=1e-3)
    trainer.train()
    logs = logged_steps(trainer)
    assert [h["step"] for h in logs] == [2, 4]
    for h in logs:
        assert h["nll_unweighted"] == pytest.approx(h["loss"], rel=1e-5)
        assert h["weight/kept_frac"] == h["weight/effective_frac"] == 1.0


def test_prift_mass_logs_the_unweighted_nll_and_kept_fraction_of_its_batch(tiny_model, sft_file, tmp_path):
    trainer, _ = trainer_for(tiny_model, sft_file, tmp_path, "prift_mass", max_steps=1, per_device_batch_size=8)
    trainer.train_dataset = trainer.train_dataset.select(range(8))  # one step on exactly these 8 rows
    ref = float64_reference(tiny_model, first_batch(trainer, trainer.train_dataset), "prift_mass")
    trainer.train()
    (h,) = logged_steps(trainer)
    assert h["loss"] == pytest.approx(ref["loss"].item(), rel=1e-4)
    assert h["nll_unweighted"] == pytest.approx(ref["nll"].item(), rel=1e-4)
    assert h["weight/kept_frac"] == pytest.approx(ref["kept_frac"].item(), rel=1e-6)
    assert h["weight/effective_frac"] == h["weight/kept_frac"]  # 0/1 weights
    assert 0 < h["weight/kept_frac"] <= 1
    assert h["nll_unweighted"] > 1.05 * h["loss"]  # the dropped tokens: the loss alone is not comparable
