"""prift/heldout.py: the held-out SFT loss, `DataSource.skip` that makes held-out rows, and the
preflight that keeps them out of the SFT data."""

import dataclasses
import json

import pytest
import torch

from prift.heldout import HELDOUT_FILE, heldout_nll
from prift.data import DataConfig, DataError, load_rows, prepare_rows


def float64_nll(model_path: str, data: DataConfig) -> tuple[float, float]:
    """(token mean, row mean) of -log p over response tokens, by one float64 forward per row."""
    from transformers import AutoModelForCausalLM

    rows, _, _ = prepare_rows(model_path, data)
    lm = AutoModelForCausalLM.from_pretrained(model_path, torch_dtype=torch.float64).eval()
    total, tokens, row_means = 0.0, 0, []
    for r in rows:
        ids = torch.tensor([r["input_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(lm(ids).logits[0, :-1].double(), -1)
        nll = -logp.gather(-1, ids[0, 1:, None])[:, 0]
        mask = torch.tensor(r["response_mask"][1:], dtype=torch.bool)
        total, tokens = total + nll[mask].sum().item(), tokens + int(mask.sum())
        row_means.append(nll[mask].mean().item())
    return total / tokens, sum(row_means) / len(row_means)


def test_heldout_nll_is_the_float64_response_token_nll_and_a_rerun_is_skipped(tiny_model, sft_file, tmp_path,
                                                                               monkeypatch):
    data = DataConfig(path=sft_file, skip=48, limit=8, max_length=64)
    tmp_path = tmp_path / "eval" / "rl"  # not there yet: the pipeline may run this before any eval task
    metrics = heldout_nll(tiny_model, data, tmp_path)
    token_mean, row_mean = float64_nll(tiny_model, data)
    assert metrics["heldout_nll"] == pytest.approx(token_mean, rel=1e-5)
    assert metrics["heldout_nll_row_mean"] == pytest.approx(row_mean, rel=1e-5)
    assert metrics["heldout_rows"] == 8 and metrics["heldout_tokens"] > 8
    assert json.loads((tmp_path / HELDOUT_FILE).read_text())["metrics"] == metrics

    import prift.heldout

    def no_model(*_, **__):
        raise AssertionError("the model was loaded again for a finished held-out NLL")

    monkeypatch.setattr(prift.heldout, "load_causal_lm", no_model)
    assert heldout_nll(tiny_model, data, tmp_path) == metrics
    with pytest.raises(AssertionError, match="loaded again"):  # other rows: computed anew
        heldout_nll(tiny_model, DataConfig(path=sft_file, skip=40, limit=8, max_length=64), tmp_path)


def test_skip_leaves_out_the_first_rows_of_a_file_and_of_a_generator(sft_file):
    every = load_rows(DataConfig(path=sft_file))
    assert load_rows(DataConfig(path=sft_file, skip=10, limit=5)) == every[10:15]
    assert load_rows(DataConfig(path=sft_file, skip=60)) == every[60:]
    generated = load_rows(DataConfig(path="reasoning_gym:gsm_symbolic", limit=6))
    assert load_rows(DataConfig(path="reasoning_gym:gsm_symbolic", skip=2, limit=4)) == generated[2:]
    with pytest.raises(ValueError, match="skip: got -1"):
        DataConfig(path=sft_file, skip=-1)


def test_preflight_refuses_heldout_rows_that_are_sft_rows_and_names_the_fix(tiny_model, sft_file, tmp_path):
    from workflows.config import RunConfig, from_dict
    from workflows.preflight import check_heldout

    def config(heldout: dict) -> RunConfig:
        return from_dict(RunConfig, {"model": tiny_model, "data": {"path": sft_file, "limit": 32},
                                     "heldout": heldout})

    with pytest.raises(DataError, match=r"heldout: 4 row\(s\) have an SFT prompt: held-out row 0 = SFT row 28.*"
                                        r"set heldout.skip to data.limit, 32"):
        check_heldout(config({"path": sft_file, "skip": 28, "limit": 8}))
    check_heldout(config({"path": sft_file, "skip": 32, "limit": 8}))
    with pytest.raises(DataError, match="heldout: .*missing.jsonl"):
        check_heldout(config({"path": str(tmp_path / "missing.jsonl")}))


def test_the_pipeline_table_shows_the_heldout_nll_column_with_its_tokens():
    from workflows.pipeline import HELDOUT, scores_table

    base = {"status": "done", "models": {"base": {"gsm8k": {"avg_at_1": 0.5, "num_problems": 4, "num_samples": 1},
                                                  HELDOUT: {"heldout_nll": 1.23456, "heldout_tokens": 900}}}}
    table = scores_table({"base": base, "runs": {}}, ["gsm8k"])
    lines = table.splitlines()
    assert "heldout_nll: nats per token" in lines[0]
    assert lines[1].split("|")[1:] == ["         gsm8k ", "   heldout_nll"]
    assert lines[2].split("|")[1:] == ["         n=4x1 ", "       900 tok"]
    assert lines[-1].split("|")[1:] == ["          50.0 ", "        1.2346"]
    assert "heldout_nll" not in scores_table({"base": {"models": {"base": {"gsm8k": {"avg_at_1": 0.5}}}},
                                              "runs": {}}, ["gsm8k"])


def test_the_sft_curve_logs_the_float64_heldout_nll_every_k_steps_and_leaves_training_unchanged(tiny_model,
                                                                                                 sft_file, tmp_path):
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    from common.errors import InputError
    from prift.heldout import CURVE_FILE
    from prift.prior import PriorConfig
    from prift.sft import SFTStageConfig, run_sft

    data, heldout = DataConfig(path=sft_file, limit=16, max_length=64), DataConfig(path=sft_file, skip=48, limit=8,
                                                                                     max_length=64)
    cfg = SFTStageConfig(method="sft", max_steps=4, per_device_batch_size=4, logging_steps=10, save_steps=10,
                         heldout_every=2)
    logged = []

    class Logs(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            logged.append((state.global_step, dict(logs)))

    with pytest.raises(InputError, match="heldout_every needs held-out rows"):
        run_sft(tiny_model, data, PriorConfig(), cfg, tmp_path / "none")
    final = run_sft(tiny_model, data, PriorConfig(), cfg, tmp_path / "curve", callbacks=[Logs()], heldout=heldout)
    curve = json.loads((tmp_path / "curve" / CURVE_FILE).read_text())
    assert list(curve) == ["2", "4"]  # every 2 steps, whatever logging_steps says
    assert [(s, m["heldout_nll"]) for s, m in logged if "heldout_nll" in m] == [(2, curve["2"]), (4, curve["4"])]
    assert curve["4"] == pytest.approx(float64_nll(str(final), heldout)[0], rel=1e-5)  # the final weights' NLL
    assert curve["2"] != curve["4"]
    kept = json.loads((final / "prift_sft.json").read_text())["log_history"]  # the report's source for curves
    assert [(e["step"], e["heldout_nll"]) for e in kept if "heldout_nll" in e] == [(2, curve["2"]), (4, curve["4"])]

    plain = run_sft(tiny_model, data, PriorConfig(), dataclasses.replace(cfg, heldout_every=0), tmp_path / "plain")
    with_curve, without = load_file(final / "model.safetensors"), load_file(plain / "model.safetensors")
    assert all(torch.equal(with_curve[k], without[k]) for k in without)
