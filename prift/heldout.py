"""Held-out SFT loss: each model's unweighted NLL on demonstrations no SFT run trained on.

    heldout: {path: reasoning_gym:gsm_symbolic, skip: 32, limit: 64, max_length: 320}

The config's top-level `heldout` is data in the SFT data's own format (`prift/data.py`); `skip` set to
the SFT's `limit` gives the rows after the training ones. Every evaluated model (base, SFT, RL) gets
`heldout_nll`: the mean over all response tokens (EOS included) of -log p(y_t | y_<t), each token
weighted 1 whatever the SFT method, on the rows tokenized exactly as SFT tokenizes its own (the
policy's chat template, `max_length`). Why it is worth a column:

- plain SFT overfits when its held-out NLL rises while its training loss still falls, the effect
  PriFT's prior support is meant to curb;
- in the SFT-then-RL literature (arXiv 2510.01624) the held-out NLL after SFT predicted the
  accuracy after RL better than the accuracy after SFT did.

Also `heldout_nll_row_mean` (every row weighs the same), `heldout_tokens` and `heldout_rows`.
`prift run` and `prift eval` keep it in `<eval dir>/heldout_nll.json` (and summary.json) under a key
of the model's weights and the rows, so a rerun skips it; preflight refuses held-out rows whose
prompt is an SFT prompt.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

from common import atomic
from common.digest import json_digest
from common.models import default_device, fingerprint_model, load_causal_lm
from prift.data import DataConfig, prepare_rows
from prift.prior import PriorConfig
from prift.reference import score_rows

log = logging.getLogger(__name__)

HELDOUT_FILE = "heldout_nll.json"
CURVE_FILE = "heldout_curve.json"  # sft/: the curve of sft.heldout_every


def row_nll(logprob: np.ndarray, response_mask: list[int]) -> tuple[float, int]:
    """(sum of -log p over the row's response tokens, their count) from token-aligned log p (entry j
    scores token j given tokens < j; `prift.reference.score_rows`). Token 0 has no prediction.

    >>> row_nll(np.log(np.array([1.0, 0.5, 0.25, 0.5])), [0, 0, 1, 1])
    (2.0794415416798357, 2)
    """
    mask = np.asarray(response_mask[1:], dtype=bool)
    return float(-np.asarray(logprob[1:], dtype=np.float64)[mask].sum()), int(mask.sum())


def nll_metrics(lm, rows: list[dict], what: str, progress: bool = True) -> dict:
    """The held-out metrics of the loaded model `lm` on tokenized `rows`; FloatingPointError naming
    `what` if any is not finite."""
    scored = score_rows(lm, rows, PriorConfig(), progress=progress)
    per_row = [row_nll(s["logprob"], r["response_mask"]) for s, r in zip(scored, rows)]
    tokens = sum(n for _, n in per_row)
    metrics = {"heldout_nll": sum(t for t, _ in per_row) / tokens,
               "heldout_nll_row_mean": float(np.mean([t / n for t, n in per_row])),
               "heldout_tokens": tokens, "heldout_rows": len(rows)}
    if not all(math.isfinite(v) for v in metrics.values()):
        raise FloatingPointError(f"{what} is not finite: {metrics}")
    return metrics


def heldout_nll(model: str, data: DataConfig, out_dir: str | Path) -> dict:
    """`model`'s held-out metrics on `data` (see the module docstring), written to out_dir/heldout_nll.json."""
    path = Path(out_dir) / HELDOUT_FILE
    rows, _, data_key = prepare_rows(model, data)
    key = json_digest([fingerprint_model(model), data_key, data.max_length])
    done = json.loads(path.read_text()) if path.exists() else {}
    if done.get("key") == key:
        log.info("held-out NLL: already done for this model and data (%s), skipped", path)
        return done["metrics"]
    lm = load_causal_lm(model, device=default_device()).eval()  # float32: an NLL to compare across models
    metrics = nll_metrics(lm, rows, f"held-out NLL of {model}")
    tokens = metrics["heldout_tokens"]
    path.parent.mkdir(parents=True, exist_ok=True)  # in a pipeline it may run before any eval task made the folder
    atomic.write_text(path, json.dumps({"key": key, "model": model, "metrics": metrics, "data": asdict(data)},
                                       indent=2))
    log.info("held-out NLL of %s: %.4f nats/token over %d tokens of %d rows", model, metrics["heldout_nll"],
             tokens, len(rows))
    return metrics


class HeldoutCurve(TrainerCallback):
    """Every `every` optimizer steps, the policy's `heldout_nll` on `rows` (the quantity of
    `heldout_nll`, from the weights being trained), so a run shows when plain SFT starts to overfit:
    held-out NLL rising while the training loss still falls. Step 0 is the base model's own
    `heldout_nll`, which the eval stage gives.

    Each value joins that step's trainer log (hence MLflow's `heldout_nll` curve) and `path`
    ({step: nll}, rewritten atomically; a resumed run keeps the steps it had). The forward runs in
    eval mode without gradients and draws no random numbers, so training is unchanged.
    """

    def __init__(self, rows: list[dict], every: int, path: str | Path):
        if every < 1:
            raise ValueError(f"heldout_every must be >= 1, got {every}")
        self.rows, self.every, self.path = rows, every, Path(path)
        self.curve = {int(k): v for k, v in json.loads(self.path.read_text()).items()} if self.path.exists() else {}
        self.pending: float | None = None

    def nll(self, model) -> float:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            metrics = nll_metrics(model, self.rows, "held-out NLL during SFT", progress=False)
        model.train(was_training)
        return metrics["heldout_nll"]

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every or not state.is_world_process_zero:
            return
        self.pending = self.nll(model)
        self.curve[state.global_step] = self.pending
        atomic.write_text(self.path, json.dumps({str(k): v for k, v in sorted(self.curve.items())}, indent=1))
        log.info("held-out NLL at step %d: %.4f", state.global_step, self.pending)
        control.should_log = True  # this step's log carries the value, whatever logging_steps says

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and self.pending is not None:
            logs["heldout_nll"] = self.pending
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1]["heldout_nll"] = self.pending  # appended just before on_log: keep it too
            self.pending = None
