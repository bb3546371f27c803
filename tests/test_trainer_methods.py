"""The trainer's loss for every workbench method equals the reference function on float64 logits.

PriftTrainer on the tiny model, with a reference of another seed (so p != q), in the mode each method
trains in: the prior signals read from the cache (which the prior stage wrote) or from the resident
reference, the online signals from the training forward's hidden states. The reference side is the
published function (tests/reference_losses.py) on full float64 logits of float64 copies of both models.
"""

import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import build_tiny_model
from prift.data import DataConfig
from prift.prior import PriorConfig
from prift.sft import SFTStageConfig, build_trainer, training_dataset
from prift.weights import METHODS
from reference_losses import reference

# random tiny models give every token p ~ 1/vocab: the cut-off and k are scaled to keep the test
# discriminating (the reference functions take the same values)
RULES = {m: METHODS[m] for m in METHODS if m not in ("sft", "prift_mass", "dft", "prift_prob")}
RULES["profit"] = dataclasses.replace(METHODS["profit"], threshold=0.003)
RULES["prift_profit"] = dataclasses.replace(METHODS["prift_profit"], threshold=0.003)
RULES["neg_pk"] = dataclasses.replace(METHODS["neg_pk"], alpha=1.0)
RULES["prift_pk"] = dataclasses.replace(METHODS["prift_pk"], alpha=1.0)


@pytest.fixture(scope="module")
def other_reference(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-ref"), seed=1)


def reference_for(method, pol, ref, labels, n):
    """The reference functions with the test's cut-off / k, as RULES sets them."""
    import reference_losses as ref_fn

    flat, ref_flat, target = pol.reshape(-1, pol.shape[-1]), ref.reshape(-1, ref.shape[-1]), labels.reshape(-1)
    if method in ("profit", "prift_profit"):
        return ref_fn.profit(flat, target, n, 0.003, signal_logits=ref_flat if method == "prift_profit" else None)
    if method == "neg_pk":
        return ref_fn.general_family(flat, target, k=1.0)
    if method == "prift_pk":
        return ref_fn.dft(flat, target, n, signal_logits=ref_flat, power=1.0)
    return reference(method, pol, ref, labels, n)


@pytest.mark.parametrize("method", list(RULES))
def test_trainer_loss_equals_the_reference_function(tiny_model, other_reference, sft_file, tmp_path_factory, method):
    rule = RULES[method]
    prior = PriorConfig(reference=other_reference, precision="fp32")  # cached: the anchor loads the reference
    cfg = SFTStageConfig(method=method, rule=rule, logging_steps=1, save_steps=10_000, precision="fp32")
    tmp = tmp_path_factory.mktemp(method)
    data = DataConfig(path=sft_file, max_length=64)
    ds = training_dataset(tiny_model, data, prior, rule, tmp_path_factory.getbasetemp() / "prior-other")
    trainer = build_trainer(tiny_model, ds, cfg, prior, tmp)
    batch = trainer.data_collator([ds[i] for i in range(6)])
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(batch))

    with torch.no_grad():
        logits = {}
        for name, path in (("pol", tiny_model), ("ref", other_reference)):
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64).eval()
            logits[name] = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    mask_ce = labels != -100
    n = None if method in ("asft", "prift_asft", "neg_pk") else int(mask_ce.sum())
    expected, weights = reference_for(method, logits["pol"], logits["ref"], labels, n)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    if weights is not None:
        assert weights.std() > 0  # the rule tells tokens apart on this batch: not uniform in disguise
