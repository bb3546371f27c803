"""The prior and SFT stages on a tiny model: bad input, the cache, NaN, resume, and the CLI end to end."""

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import build_tiny_model
from prift.data import DataConfig, DataError
from common.models import load_causal_lm
from common.checkpoints import latest_complete_checkpoint
from prift.prior import PriorConfig, load_prior, run_prior
from prift.sft import SFTStageConfig, run_sft
from prift.signals import token_signals
from workflows.cli import main
from workflows.config import ConfigError, load_config


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


@pytest.mark.parametrize(
    "bad_row,message",
    [
        ({"prompt": "q"}, "row 2: missing field 'response'"),
        ({"prompt": "q", "response": "   "}, "row 2: field 'response' is empty"),
        ({"prompt": 5, "response": "a"}, "row 2: field 'prompt' must be a string, got int"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "a"}]},
         "must end with an assistant"),
    ],
)
def test_malformed_rows_fail_with_row_and_field_before_any_model_loads(tmp_path, bad_row, message):
    rows = [{"prompt": "a", "response": "b"}] * 2 + [bad_row]
    data = DataConfig(path=write_jsonl(tmp_path / "d.jsonl", rows))
    with pytest.raises(DataError, match=message):  # the model does not exist: loading it would fail otherwise
        run_prior("no/such-model-anywhere", data, PriorConfig(), tmp_path / "prior")


def test_reference_with_another_vocabulary_is_rejected_naming_both_sizes(tiny_model, sft_file, tmp_path):
    other = build_tiny_model(tmp_path / "other", vocab_size=300)
    with pytest.raises(ValueError, match=r"vocab size 300.*has 320"):
        run_prior(tiny_model, DataConfig(path=sft_file), PriorConfig(reference=other), tmp_path / "prior")


def test_truncated_away_rows_are_dropped_and_counted(tiny_model, tmp_path, caplog):
    rows = [{"prompt": "What is 1 plus 2?", "response": "3"}, {"prompt": "x " * 200, "response": "y"}]
    data = DataConfig(path=write_jsonl(tmp_path / "d.jsonl", rows), max_length=40)
    with caplog.at_level(logging.INFO):
        folder = run_prior(tiny_model, data, PriorConfig(), tmp_path / "prior")
    assert load_prior(folder)["index"] == [0]
    assert "dropped 1" in caplog.text


def test_second_prior_run_is_a_logged_no_op(tiny_model, sft_file, tmp_path, caplog):
    data = DataConfig(path=sft_file, max_length=64)
    first = run_prior(tiny_model, data, PriorConfig(), tmp_path / "prior")
    stamp = (first / "meta.json").stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        second = run_prior(tiny_model, data, PriorConfig(batch_tokens=100), tmp_path / "prior")
    assert second == first and (first / "meta.json").stat().st_mtime_ns == stamp
    assert "cache hit" in caplog.text
    changed = run_prior(tiny_model, DataConfig(path=sft_file, max_length=48), PriorConfig(), tmp_path / "prior")
    assert changed != first


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_stored_signals_equal_the_full_forward_scored_row_by_row(tmp_path, model_type, sft_file):
    model_dir = build_tiny_model(tmp_path / model_type, seed=3, model_type=model_type)
    folder = run_prior(model_dir, DataConfig(path=sft_file, max_length=64),
                       PriorConfig(batch_tokens=200, row_chunk=7, vocab_chunk=50, precision="fp32"), tmp_path / "p")
    stored = load_prior(folder)
    model = load_causal_lm(model_dir).eval()
    for row in stored.select(range(5)):  # unpadded, one row at a time, full logits
        ids = torch.tensor([row["input_ids"]])
        with torch.no_grad():
            logits = model(ids).logits[0, :-1]
        lp, u = token_signals(logits, ids[0, 1:])
        resp = torch.tensor(row["response_mask"][1:]).bool()
        torch.testing.assert_close(torch.tensor(row["prior_logprob"][1:])[resp], lp[resp], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.tensor(row["prior_mass"][1:])[resp], u[resp], atol=1e-5, rtol=1e-5)
        assert all(v == 0 for v, m in zip(row["prior_logprob"], row["response_mask"]) if not m)


def test_reference_signals_reject_an_unknown_logit_transform(tiny_model):
    from common.lm_head import check_head_matches_forward

    model = load_causal_lm(tiny_model).eval()
    original = model.forward
    model.forward = lambda *a, **k: type(original(*a, **k))(logits=original(*a, **k).logits * 2)
    with pytest.raises(RuntimeError, match="output head disagrees"):
        check_head_matches_forward(model, torch.tensor([[1, 2, 3]]), torch.ones(1, 3, dtype=torch.long))


class _Interrupt(Exception):
    pass


def _stop_at(step, action):
    from transformers import TrainerCallback

    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step == step:
                action(model)

    return Stop()


def test_interrupted_training_resumes_from_its_last_complete_checkpoint(tiny_model, sft_file, tmp_path):
    data = DataConfig(path=sft_file, max_length=64)
    cfg = SFTStageConfig(method="prift_prob", max_steps=6, save_steps=2, per_device_batch_size=4, logging_steps=1)
    out = tmp_path / "sft"

    def interrupt(model):
        raise _Interrupt

    with pytest.raises(_Interrupt):
        run_sft(tiny_model, data, PriorConfig(), cfg, out, callbacks=[_stop_at(3, interrupt)])
    assert latest_complete_checkpoint(out / "checkpoints").name == "checkpoint-2"
    half = out / "checkpoints" / "checkpoint-4"  # killed while writing: no COMPLETE marker yet
    shutil.copytree(out / "checkpoints" / "checkpoint-2", half, ignore=shutil.ignore_patterns("COMPLETE"))
    assert latest_complete_checkpoint(out / "checkpoints").name == "checkpoint-2"
    shutil.rmtree(half)
    final = run_sft(tiny_model, data, PriorConfig(), cfg, out)
    summary = json.loads((final / "prift_sft.json").read_text())
    assert summary["steps"] == 6
    state = json.loads((out / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())
    logged_steps = [h["step"] for h in state["log_history"] if "loss" in h]
    assert logged_steps == [1, 2, 3, 4, 5, 6]  # steps 1-2 restored from checkpoint-2, not redone


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tiny_model, sft_file, tmp_path):
    data = DataConfig(path=sft_file, max_length=64)
    cfg = SFTStageConfig(method="prift_mass", max_steps=6, save_steps=2, per_device_batch_size=4)

    def poison(model):
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))

    with pytest.raises(FloatingPointError, match="non-finite loss .* at step 3"):
        run_sft(tiny_model, data, PriorConfig(), cfg, tmp_path / "sft", callbacks=[_stop_at(3, poison)])
    good = latest_complete_checkpoint(tmp_path / "sft" / "checkpoints")
    assert good.name == "checkpoint-2"
    assert all(torch.isfinite(p).all() for p in load_causal_lm(str(good)).parameters())
    assert not (tmp_path / "sft" / "final").exists()


def test_bad_config_lists_every_problem_and_computes_nothing(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"modle": "x", "data": {"max_length": "long"}, "sft": {"method": "prift"}}))
    assert main(["sft", str(cfg), "--set", "output_dir=" + str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "modle: unknown key" in err and "data.max_length: got 'long', expected int" in err
    assert "sft" in err and "prift" in err
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.slow
def test_cli_prior_then_sft_learns_and_the_final_folder_generates(tiny_model, sft_file, tmp_path):
    config = {
        "model": tiny_model,
        "output_dir": str(tmp_path / "run"),
        "data": {"path": sft_file, "max_length": 64},
        "sft": {"method": "prift_prob", "max_steps": 40, "learning_rate": 3e-3, "per_device_batch_size": 8,
                "logging_steps": 5, "warmup_ratio": 0.0},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["prior", str(path)]) == 0
    assert main(["sft", str(path)]) == 0
    final = tmp_path / "run" / "sft" / "final"
    state = json.loads(next((tmp_path / "run" / "sft" / "checkpoints").glob("*/trainer_state.json")).read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert losses[-1] < 0.7 * losses[0]

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(final)
    model = AutoModelForCausalLM.from_pretrained(final)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 3 plus 4?"}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]


CONFIGS = sorted((Path(__file__).parents[1] / "workflows" / "configs").glob("*.yaml"))


def names_hub_inputs(path) -> bool:
    """Whether the config's preflight would fetch a model or dataset from the hub."""
    from workflows.preflight import hub_inputs

    return any(hub_inputs(load_config(path)).values())


OFFLINE = [p for p in CONFIGS if not names_hub_inputs(p)]
HUB = [p for p in CONFIGS if names_hub_inputs(p)]


def test_every_shipped_config_is_checked_one_way_or_the_other():
    assert len(CONFIGS) >= 7 and set(OFFLINE) | set(HUB) == set(CONFIGS)
    assert {p.name for p in OFFLINE} == {"demo.yaml", "demo_3seeds.yaml", "study_cpu.yaml"}


@pytest.mark.parametrize("path", OFFLINE, ids=lambda p: p.name)
def test_shipped_offline_configs_pass_preflight(path, capsys):
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("path", HUB, ids=lambda p: p.name)
def test_hub_configs_pass_the_config_checks(path):
    load_config(path)  # the rest of preflight needs the hub: their model, data and tasks are hub names


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name.startswith("paper_")], ids=lambda p: p.name)
def test_paper_recipes_keep_the_papers_global_batch(path):
    from workflows.config import load_config

    cfg = load_config(path)
    res = cfg.pipeline.resources
    assert cfg.sft.per_device_batch_size * cfg.sft.gradient_accumulation_steps * res.sft.workers == 256
    assert cfg.rl.per_device_batch_size * cfg.rl.gradient_accumulation_steps * res.rl.workers == 256  # completions


def test_checkpoints_go_once_final_is_saved_when_not_kept(tiny_model, sft_file, tmp_path):
    data = DataConfig(path=sft_file, max_length=64)
    cfg = SFTStageConfig(method="sft", max_steps=2, save_steps=1, per_device_batch_size=4, keep_checkpoints=False)
    final = run_sft(tiny_model, data, PriorConfig(), cfg, tmp_path / "sft")
    assert (final / "config.json").exists() and not (tmp_path / "sft" / "checkpoints").exists()
    assert run_sft(tiny_model, data, PriorConfig(), cfg, tmp_path / "sft") == final  # still finished
