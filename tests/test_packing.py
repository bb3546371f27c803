"""Padding-free packing: the same loss and gradients as padded batches, and no attention across examples.

The reference is the padded batch (whose loss test_trainer.py checks against float64 logits): for
every weighting method, with the cached prior and with the online reference, a packed batch split
into two micro-batches must give the padded loss and the padded gradient of every parameter.
"""

import copy
import dataclasses

import datasets
import pytest
import torch
import transformers.masking_utils
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from prift.data import DataConfig
from prift.prior import PriorConfig
from prift.reference import reference_signals
from prift.sft import SFTStageConfig, build_trainer, sft_args, training_dataset
from prift.trainer import (
    IGNORE,
    PackedScorer,
    PriftCollator,
    PriftTrainer,
    check_packed_attention,
    labels_from_mask,
)
from prift.weights import METHODS, WeightRule, resolve_method

# (prompt tokens, response tokens): mixed lengths, length-1 responses, and a row with no prompt,
# whose first token is a response token that no position predicts
SHAPES = [(5, 1), (0, 4), (9, 7), (1, 1), (3, 12), (6, 1), (2, 3)]
SPLIT = 3  # packed: examples [:3] and [3:] as two accumulated micro-batches


def tiny_llama(vocab: int, seed: int, attn: str = "sdpa") -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, attn_implementation=attn,
    )
    return LlamaForCausalLM(config).double()


def float64_signals(ref, ids: list[int]) -> dict[str, list[float]]:
    """The prior columns of each token given the ones before it, from full float64 logits of the
    example alone (entry 0: 0)."""
    with torch.no_grad():
        z = ref(torch.tensor([ids])).logits[0, :-1].double()
    logq = torch.log_softmax(z, -1)
    y = torch.tensor(ids[1:])
    lq = logq.gather(-1, y[:, None]).squeeze(-1)
    u = lq.exp() + torch.where(logq < lq[:, None], logq.exp(), 0.0).sum(-1)
    h = -(logq.exp() * logq).sum(-1)
    lr = torch.log_softmax(z.topk(20, -1).values, -1)
    h_top = -(lr.exp() * lr).sum(-1)
    return {k: [0.0, *v.tolist()] for k, v in
            {"prior_logprob": lq, "prior_mass": u, "prior_entropy": h, "prior_entropy_top": h_top}.items()}


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def examples(tokenizer):
    """Random token rows with labels and prior signals from a reference of another seed."""
    vocab = len(tokenizer)
    gen = torch.Generator().manual_seed(1)
    ref = tiny_llama(vocab, seed=7)
    out = []
    for prompt, response in SHAPES:
        ids = torch.randint(0, vocab, (prompt + response,), generator=gen).tolist()
        out.append({"input_ids": ids, "labels": labels_from_mask(ids, [0] * prompt + [1] * response),
                    **float64_signals(ref, ids)})
    return out, ref


CASES = {  # name: (rule, prior mode): every method of METHODS with each prior source, and the
    "sft": (METHODS["sft"], "cached"),  # online nucleus rule (the policy's mass, through the packed scorer)
    "dft": (METHODS["dft"], "cached"),
    "prift_prob/cached": (METHODS["prift_prob"], "cached"),
    "prift_prob/online": (METHODS["prift_prob"], "online"),
    "prift_mass/cached": (METHODS["prift_mass"], "cached"),
    "prift_mass/online": (METHODS["prift_mass"], "online"),
    "nucleus/online-signal": (WeightRule("nucleus", "online", tau=0.5), "cached"),
    **{m: (METHODS[m], "cached") for m in ("eaft", "prift_eaft", "rho1", "iw_sft")},
    # random tiny models give every token p ~ 1/vocab: a cut-off of 0.1 or p^10 would zero the loss
    # or the gradient, so these run with a cut-off of 1/vocab and k = 1 (the named methods' shapes)
    **{m: (dataclasses.replace(METHODS[m], threshold=0.003), "cached") for m in ("profit", "prift_profit")},
    **{m: (dataclasses.replace(METHODS[m], alpha=1.0), "cached") for m in ("neg_pk", "prift_pk")},
    **{f"{m}/online": (METHODS[m], "online") for m in ("prift_eaft", "asft", "prift_asft", "rho1", "iw_sft")},
}
WHOLE_BATCH = {"rho1", "rho1/online"}  # selects within a micro-batch: packed as one, like the padded batch


def test_cases_cover_every_method():
    shapes = {dataclasses.replace(r, threshold=0.1, alpha=1.0) for r, _ in CASES.values()}
    assert shapes >= {dataclasses.replace(r, threshold=0.1, alpha=1.0) for r in METHODS.values()}


def loss_and_grads(trainer, batches) -> tuple[float, list[torch.Tensor]]:
    """Accumulate the micro-batches as the training loop does, N from transformers' own count."""
    model = trainer.model
    model.zero_grad(set_to_none=True)
    batches = [{k: v.to(model.device) for k, v in b.items()} for b in batches]  # the trainer put it on a GPU if any
    n = trainer._get_num_items_in_batch(batches, model.device)
    total = 0.0
    for batch in batches:
        loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=n)
        loss.backward()
        total += loss.item()
    return total, [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("case", CASES)
def test_packed_loss_and_gradients_equal_padded(tokenizer, examples, tmp_path, case):
    rows, ref = examples
    rule, mode = CASES[case]
    policy = tiny_llama(len(tokenizer), seed=0)
    trainer = PriftTrainer(
        model=policy, args=sft_args(SFTStageConfig(), tmp_path), train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer, data_collator=PriftCollator(tokenizer.pad_token_id), weight_rule=rule,
        ref_model=copy.deepcopy(ref) if mode == "online" and rule.needs_prior else None,
    )
    policy.train()
    padded = PriftCollator(tokenizer.pad_token_id)(rows)
    packing = PriftCollator(tokenizer.pad_token_id, packing=True)
    packed = [packing(rows)] if case in WHOLE_BATCH else [packing(rows[:SPLIT]), packing(rows[SPLIT:])]
    assert packed[0]["input_ids"].shape[0] == 1
    assert "attention_mask" not in packed[0]
    # every response token but the no-prompt row's first, in both layouts
    n = sum(r for _, r in SHAPES) - 1
    assert trainer._get_num_items_in_batch([padded], torch.device("cpu")) == n
    assert trainer._get_num_items_in_batch(packed, torch.device("cpu")) == n
    kept = sum(u >= 0.5 for r in rows for u, lab in zip(r["prior_mass"][1:], r["labels"][1:]) if lab != IGNORE)
    assert 0 < kept < n  # PriFT-mass keeps some tokens and drops others: not plain SFT in disguise

    loss_padded, grads_padded = loss_and_grads(trainer, [padded])
    loss_packed, grads_packed = loss_and_grads(trainer, packed)
    assert loss_padded > 0
    assert loss_packed == pytest.approx(loss_padded, rel=1e-5, abs=1e-5)
    assert any(g.abs().max() > 1e-6 for g in grads_padded)
    names = [name for name, _ in policy.named_parameters()]
    for name, a, b in zip(names, grads_packed, grads_padded):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


def packed_row(rows):
    return PriftCollator(0, packing=True)(rows)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_no_attention_across_packed_examples(tokenizer, examples, attn):
    rows, ref = examples
    policy = tiny_llama(len(tokenizer), seed=0, attn=attn).eval()
    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(policy)
    changed = copy.deepcopy(rows[:3])
    changed[1]["input_ids"] = [(t + 1) % len(tokenizer) for t in changed[1]["input_ids"]]
    changed[1]["labels"] = labels_from_mask(changed[1]["input_ids"], [lab != IGNORE for lab in changed[1]["labels"]])
    outputs = []
    for batch in (packed_row(rows[:3]), packed_row(changed)):
        with torch.no_grad():
            fused = policy(**{k: batch[k] for k in ("input_ids", "position_ids", "labels")}, fused_lm_head=True)
            signals = reference_signals(
                PackedScorer(ref, batch["position_ids"]), batch["input_ids"], None, batch["labels"] != IGNORE
            )
        outputs.append((fused.log_probs[0], signals[0][0], signals[1][0]))
    a, b, c = (len(r["input_ids"]) for r in rows[:3])
    for before, after in zip(*outputs):  # label space of the policy and token space of the scorer differ by 1:
        torch.testing.assert_close(before[: a - 1], after[: a - 1], rtol=0, atol=1e-12)  # example 1 unchanged
        torch.testing.assert_close(before[-(c - 1):], after[-(c - 1):], rtol=0, atol=1e-12)  # example 3 too
        assert not torch.allclose(before[a : a + b - 1], after[a : a + b - 1])  # example 2 did change
    # and each packed example scores as it does alone
    alone = reference_signals(ref, torch.tensor([rows[2]["input_ids"]]), torch.ones(1, c, dtype=torch.long),
                              torch.tensor([rows[2]["labels"]]) != IGNORE)
    torch.testing.assert_close(outputs[0][1][-c:], alone[0][0], rtol=0, atol=1e-10)


def test_packing_check_catches_a_model_that_attends_across_examples(tokenizer, monkeypatch):
    model = tiny_llama(len(tokenizer), seed=0).float()
    for layer in model.model.layers:  # in training, dropout alone would tell two packed copies apart
        layer.self_attn.attention_dropout = 0.5
    model.train()
    check_packed_attention(model, torch.device("cpu"))  # transformers' boundary detection: passes
    assert model.training
    monkeypatch.setattr(transformers.masking_utils, "find_packed_sequence_indices", lambda position_ids: None)
    with pytest.raises(RuntimeError, match="attend"):
        check_packed_attention(model, torch.device("cpu"))


def sgd_step_update(tiny_model, sft_file, tmp_path, packing):
    """Parameter change of one training-loop SGD step (lr 1, no clipping) on 8 rows, 2 micro-batches of 4."""
    cfg = SFTStageConfig(
        method="prift_mass", packing=packing, optim="sgd", learning_rate=1.0, lr_scheduler_type="constant",
        warmup_ratio=0.0, max_grad_norm=0.0, weight_decay=0.0, per_device_batch_size=4,
        gradient_accumulation_steps=2, max_steps=1, save_steps=10_000,
    )
    ds = training_dataset(tiny_model, DataConfig(path=sft_file, max_length=64), PriorConfig(),
                          resolve_method("prift_mass"), tmp_path / "prior")
    trainer = build_trainer(tiny_model, ds.select(range(8)), cfg, PriorConfig(), tmp_path / f"packing={packing}")
    assert trainer.data_collator.packing is packing
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    return [p.detach() - b for p, b in zip(trainer.model.parameters(), before)]


def test_the_sft_stage_config_trains_packed_as_padded(tiny_model, sft_file, tmp_path):
    padded = sgd_step_update(tiny_model, sft_file, tmp_path, packing=False)
    packed = sgd_step_update(tiny_model, sft_file, tmp_path, packing=True)
    assert any(d.abs().max() > 0 for d in padded)
    for a, b in zip(packed, padded):  # float32
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
