"""`PriftTrainer`: TRL's SFTTrainer with per-token weights from a rule (prift.weights).

The forward is TRL's own fused LM head (`fused_lm_head=True`): per-token log p(y_t) without building
the [B, L, V] logits. The weight of each token comes from
  - the batch (the `prior_*` columns written by the prior stage): cached mode, or
  - a resident frozen reference run on the batch (`ref_model=`): the official online mode, or
  - the policy itself, detached (online rules: DFT and friends): log p from the fused head; the mass
    and entropies from the hidden states of the same training forward (captured by a hook on the
    decoder), the head applied again without gradient to the response positions only.
ASFT's anchor (`kl_coef`) needs the reference's whole distribution: the resident reference, loaded for
it also in cached mode (its per-token prior signals then come from the same reference run).
The loss is `prift.loss.weighted_nll`, normalised by TRL's `num_items_in_batch` (response tokens of the
whole accumulated batch, gathered over ranks), so micro-batching and data parallelism do not change it.
With `PriftCollator(packing=True)` a micro-batch is one padding-free row (`packed_batch`): the
same tokens, labels and signals, so the same loss and gradients, without the compute spent on padding.

Logged beside the weighted `loss` at every logging step, over the same window (`WindowSums`):
  nll_unweighted        the mean response-token NLL, every w_t = 1, averaged as the loss is (per
                        optimizer step, then over the window's steps): the curve that compares
                        across methods, and exactly the loss for `sft`;
  weight/kept_frac      the fraction of response tokens with w > 0 (what PriFT-mass keeps);
  weight/effective_frac sum of w over the number of response tokens (1 for `sft`).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

import torch
from trl import SFTTrainer

from prift.loss import LossStats, to_label_space, weighted_nll
from common.batching import pad
from common.lm_head import check_head_matches_forward
from prift.anchor import anchor_kl
from prift.reference import hidden_signals
from prift.signals import SIGNAL_NAMES
from prift.weights import WeightRule

log = logging.getLogger(__name__)

IGNORE = -100
SIGNAL_COLUMNS = tuple(f"prior_{name}" for name in SIGNAL_NAMES)  # the prior stage's columns


@dataclass
class PriftCollator:
    """Right-pads input_ids/labels/attention_mask and the per-token signal columns (when present),
    or, with `packing`, concatenates the examples into one padding-free row (`packed_batch`)."""

    pad_token_id: int
    packing: bool = False

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        if self.packing:
            return packed_batch(examples)
        ids = [e["input_ids"] for e in examples]
        batch = {
            "input_ids": pad(ids, self.pad_token_id),
            "attention_mask": pad([[1] * len(s) for s in ids], 0),
            "labels": pad([e["labels"] for e in examples], IGNORE),
        }
        for col in SIGNAL_COLUMNS:
            if col in examples[0]:
                batch[col] = pad([e[col] for e in examples], 0.0, dtype=torch.float32)
        return batch


def packed_batch(examples: list[dict]) -> dict[str, torch.Tensor]:
    """The examples end to end in one [1, total tokens] row, with no padding and no attention_mask.

    position_ids restart at 0 on each example. With attention_mask absent (and no KV cache),
    transformers reads those restarts as example boundaries and masks attention block-diagonally
    (sdpa, eager, flex) or runs varlen kernels (flash attention); `check_packed_attention` verifies
    it for the model at hand. The label of each example's first token is IGNORE: otherwise the
    previous example's last position would be trained to predict it. (Padded, that token sits at
    position 0, which predicts nothing, so both layouts train on the same tokens and count the same N.)
    The signal columns are concatenated with their tokens.
    """
    starts = torch.tensor([0] + [len(e["input_ids"]) for e in examples]).cumsum(0)[:-1]
    labels = torch.tensor([t for e in examples for t in e["labels"]])
    labels[starts] = IGNORE
    batch = {
        "input_ids": torch.tensor([t for e in examples for t in e["input_ids"]])[None],
        "position_ids": torch.cat([torch.arange(len(e["input_ids"])) for e in examples])[None],
        "labels": labels[None],
    }
    for col in SIGNAL_COLUMNS:
        if col in examples[0]:
            batch[col] = torch.tensor([v for e in examples for v in e[col]], dtype=torch.float32)[None]
    return batch


@torch.no_grad()
def check_packed_attention(model, device) -> None:
    """Raise unless `model` keeps packed examples apart: two copies of one sequence, packed into a
    row with restarting position_ids, must get the same hidden states. Called as the training
    forward calls the backbone (attention_mask absent, use_cache=False: a KV cache turns
    transformers' boundary detection off), in eval mode (dropout would tell the copies apart)."""
    n = 8
    ids = (torch.arange(n, device=device) * 7 + 3) % model.config.get_text_config().vocab_size
    training = model.training
    model.eval()
    try:
        hidden = model.get_decoder()(
            input_ids=ids.repeat(2)[None], position_ids=torch.arange(n, device=device).repeat(2)[None], use_cache=False
        ).last_hidden_state[0].float()
    finally:
        model.train(training)
    err = (hidden[:n] - hidden[n:]).abs().max().item()
    tol = 1e-4 if model.dtype == torch.float32 and not torch.is_autocast_enabled(device.type) else 2e-2
    if not err <= tol * max(1.0, hidden.abs().max().item()):
        raise RuntimeError(
            f"{type(model).__name__} ({model.config._attn_implementation} attention) lets packed examples attend "
            f"to each other (max |diff| {err:.3g} between two packed copies of one sequence); set sft.packing: false"
        )


def labels_from_mask(input_ids: list[int], response_mask: list[int]) -> list[int]:
    """Token ids on the response, IGNORE (-100) elsewhere: the labels TRL trains on."""
    return [t if m else IGNORE for t, m in zip(input_ids, response_mask)]


def _row_labels(row: dict) -> dict:
    return {"labels": labels_from_mask(row["input_ids"], row["response_mask"])}


def with_labels(dataset):
    """Add `labels` from `response_mask`, as TRL expects of prepared data."""
    # A module-level function, not a lambda: datasets fingerprints the mapped function with dill, which
    # disassembles lambdas by redirecting stdout, and under Ray Train's print patch that text leaks out.
    return dataset.map(_row_labels, remove_columns=["response_mask"], desc="labels")


class PackedScorer:
    """`model` as `reference_signals` uses it, its backbone called with a packed row's position_ids
    and no KV cache, so that each example of the row is scored on its own."""

    def __init__(self, model, position_ids: torch.Tensor):
        self._model, self._position_ids = model, position_ids

    def get_decoder(self):
        return functools.partial(self._model.get_decoder(), position_ids=self._position_ids, use_cache=False)

    def __getattr__(self, name):  # the output head, the config: the model's own
        return getattr(self._model, name)


def sequence_ids(inputs) -> torch.Tensor:
    """[B, L]: which example each token belongs to (a padded row is one; a packed row's examples start
    where position_ids restart), for the rules that weigh whole sequences."""
    ids = inputs["input_ids"]
    if "position_ids" in inputs:
        starts = (inputs["position_ids"] == 0).long().cumsum(-1)
        return starts + torch.arange(ids.shape[0], device=ids.device)[:, None] * (ids.shape[1] + 1)
    return torch.arange(ids.shape[0], device=ids.device)[:, None].expand(ids.shape)


@dataclass
class WindowSums:
    """What the training steps since the last log add up to, over micro-batches and ranks:
    [nll share, weight sum, kept tokens, tokens]. The nll share of a micro-batch is the unweighted
    NLL normalised and scaled as its loss is, so that, like the loss, its mean over ranks per step
    and over steps gives the logged value."""

    start_step: int
    sums: list[torch.Tensor] = field(default_factory=list)

    def metrics(self, step: int, world_size: int) -> dict[str, float]:
        nll_share, weight_sum, kept, tokens = torch.stack(self.sums).sum(0).tolist()
        tokens = max(tokens, 1.0)
        return {
            "nll_unweighted": nll_share / world_size / max(step - self.start_step, 1),
            "weight/kept_frac": kept / tokens,
            "weight/effective_frac": weight_sum / tokens,
        }


class PriftTrainer(SFTTrainer):
    """SFTTrainer whose loss is sum(M * w * ce) / N with w from `weight_rule` (see module docstring)."""

    def __init__(self, *args, weight_rule: WeightRule, ref_model=None, vocab_chunk: int = 16384, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_rule = weight_rule
        self.ref_model = ref_model
        self.vocab_chunk = vocab_chunk
        self._heads_checked: set[int] = set()  # ids of the models whose output head was checked
        self._packing_checked: set[int] = set()  # ids of the models whose packed attention was checked
        self._window: WindowSums | None = None
        if ref_model is not None:
            self.ref_model = ref_model.to(self.accelerator.device).eval().requires_grad_(False)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:
            raise NotImplementedError("PriftTrainer does not return logits (the fused head never builds them)")
        mode = "train" if self.model.training else "eval"
        signals = {c: inputs.pop(c, None) for c in SIGNAL_COLUMNS}  # token-aligned, from the cache
        rule = self.weight_rule
        response = inputs["labels"] != IGNORE
        policy = self.accelerator.unwrap_model(model)
        if "position_ids" in inputs:
            self._check_packing(policy, inputs["input_ids"].device)
        prior_names = [s.removeprefix("prior_") for s in rule.signals if s.startswith("prior_")]
        online_names = [s.removeprefix("online_") for s in rule.signals
                        if s.startswith("online_") and s != "online_logprob"]
        ref_hidden = None
        if self.ref_model is not None and (prior_names or rule.kl_coef > 0):
            ref_hidden = self._reference_hidden(inputs)
            signals |= {f"prior_{n}": v for n, v in hidden_signals(
                self.ref_model, ref_hidden, inputs["input_ids"], response, prior_names, vocab_chunk=self.vocab_chunk
            ).items()}
        if rule.kl_coef > 0 and ref_hidden is None:
            raise ValueError("kl_coef > 0 (ASFT) needs the resident reference (ref_model=)")
        captured = []
        hook = None
        if online_names or rule.kl_coef > 0:  # the training forward's own hidden states, not a second forward
            self._check_head(policy, inputs)
            hook = policy.get_decoder().register_forward_hook(
                lambda _m, _a, out: captured.append(out.last_hidden_state))
        try:
            outputs = model(**inputs, use_cache=False, fused_lm_head=True)
        finally:
            if hook is not None:
                hook.remove()
        if online_names:
            signals |= {f"online_{n}": v for n, v in hidden_signals(
                policy, captured[0], inputs["input_ids"], response, online_names, vocab_chunk=self.vocab_chunk
            ).items()}
        kl = None
        if rule.kl_coef > 0:
            kl = anchor_kl(policy, captured[0], self.ref_model, ref_hidden, response)
        loss, stats = weighted_nll(
            outputs.log_probs,
            outputs.label_mask,
            rule,
            signals={k: to_label_space(v) for k, v in signals.items() if v is not None},
            sequence_ids=to_label_space(sequence_ids(inputs)),
            kl=kl,
            num_items_in_batch=num_items_in_batch,
        )
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss ({loss.item()}) at step {self.state.global_step}: training stopped; "
                f"the last saved checkpoint in {self.args.output_dir} is intact"
            )
        # As in TRL: num_items_in_batch counts every rank's tokens and DDP averages gradients over ranks.
        scale = 1
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            scale = self.accelerator.num_processes
        self._record(mode, outputs, stats, stats.nll * scale)
        return loss * scale

    def _check_packing(self, model, device) -> None:
        if id(model) not in self._packing_checked:
            check_packed_attention(model, device)
            self._packing_checked.add(id(model))

    @torch.no_grad()
    def _reference_hidden(self, inputs) -> torch.Tensor:
        """The resident reference's last hidden states of the batch (packed rows scored per example)."""
        model, ids, attention_mask = self.ref_model, inputs["input_ids"], inputs.get("attention_mask")
        self._check_head(model, inputs)
        if "position_ids" in inputs:
            self._check_packing(model, ids.device)
            model = PackedScorer(model, inputs["position_ids"])
        return model.get_decoder()(input_ids=ids, attention_mask=attention_mask).last_hidden_state

    def _check_head(self, model, inputs) -> None:
        """Once per model: the head applied to hidden states must give its own forward's logits (else
        the signals read from hidden states would be wrong). Attention across packed examples does
        not matter to this check."""
        if id(model) in self._heads_checked:
            return
        ids, attention_mask = inputs["input_ids"], inputs.get("attention_mask")
        training = model.training
        model.eval()  # dropout would tell the two forwards apart
        try:
            check_head_matches_forward(model, ids, torch.ones_like(ids) if attention_mask is None else attention_mask)
        finally:
            model.train(training)
        self._heads_checked.add(id(model))

    def _record(self, mode: str, outputs, stats: LossStats, nll_share: float) -> None:
        metrics = self._metrics[mode]
        n = max(stats.tokens, 1)
        metrics["entropy"].append((outputs.entropy.detach().sum() / n).item())
        metrics["mean_token_accuracy"].append((outputs.is_top1.sum() / n).item())
        if mode != "train":  # the window follows optimizer steps; the SFT stage runs no eval loop
            return
        local = torch.tensor([[nll_share, stats.weight_sum, stats.kept, stats.tokens]], device=self.accelerator.device)
        if self._window is None:
            self._window = WindowSums(self.state.global_step)  # the step last logged (or resumed from)
        self._window.sums.append(self.accelerator.gather(local).sum(0))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """TRL's log, plus the window's unweighted NLL and token fractions (training only)."""
        if self.model.training and self._window is not None:
            logs.update(self._window.metrics(self.state.global_step, self.accelerator.num_processes))
            self._window = None
        super().log(logs, start_time)
