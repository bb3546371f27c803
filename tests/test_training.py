"""common/training.py: the knobs both stages share, their trainer arguments, and the run to final/."""

import contextlib
import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from common.training import TrainConfig, train_to_final, trainer_kwargs
from prift.sft import SFTStageConfig, sft_args
from prift.weights import METHODS
from rl.grpo import RLStageConfig, grpo_args

SHARED = [f.name for f in dataclasses.fields(TrainConfig)]
KNOBS = dict(learning_rate=3e-4, warmup_ratio=0.2, per_device_batch_size=8, gradient_accumulation_steps=2,
             max_steps=7, logging_steps=3, save_steps=9, save_total_limit=1, keep_checkpoints=False,
             precision="fp32", gradient_checkpointing=True, seed=5, report_to=["mlflow"])
# TrainingArguments field of each shared knob that a trainer reads (keep_checkpoints is ours: save_final)
ARG = {"warmup_ratio": "warmup_steps", "per_device_batch_size": "per_device_train_batch_size",
       "precision": "bf16", "keep_checkpoints": None}


def test_both_stages_share_the_knobs_and_keep_their_own_defaults():
    assert set(SHARED) == set(KNOBS)
    assert all(issubclass(stage, TrainConfig) for stage in (SFTStageConfig, RLStageConfig))
    sft, rl = SFTStageConfig(), RLStageConfig()
    assert (sft.learning_rate, sft.warmup_ratio, sft.max_steps, sft.logging_steps, sft.save_steps, sft.seed) == (
        5e-5, 0.1, -1, 10, 500, 42)
    assert (rl.learning_rate, rl.warmup_ratio, rl.max_steps, rl.logging_steps, rl.save_steps, rl.seed) == (
        1e-6, 0.0, 100, 5, 50, 0)


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_both_stages_trainer_arguments_carry_the_shared_knobs_alike(tmp_path, sharding):
    sft = sft_args(SFTStageConfig(**KNOBS), tmp_path, sharding)
    rl = grpo_args(RLStageConfig(**KNOBS), "hf", tmp_path, sharding)
    shared = trainer_kwargs(SFTStageConfig(**KNOBS), tmp_path, sharding)
    assert shared == trainer_kwargs(RLStageConfig(**KNOBS), tmp_path, sharding)
    for name, value in shared.items():
        assert getattr(sft, name) == getattr(rl, name), name
    for knob, value in KNOBS.items():
        arg = ARG.get(knob, knob)
        if arg:
            expected = False if knob == "precision" else value  # fp32: no bf16 autocast
            assert getattr(sft, arg) == getattr(rl, arg) == expected, knob
    assert sft.output_dir == rl.output_dir == str(tmp_path / "checkpoints")
    assert sft.use_cpu == rl.use_cpu == (not torch.cuda.is_available())
    # each stage adds only its own
    assert (sft.num_train_epochs, sft.adam_beta2, rl.num_generations) == (1.0, 0.95, 8)


def test_a_bad_shared_field_is_named_with_its_stage_with_every_other_bad_field():
    from workflows.config import ConfigError, RunConfig, from_dict

    with pytest.raises(ConfigError) as e:
        from_dict(RunConfig, {"model": "m", "sft": {"learning_rate": -1, "method": "nope", "max_steps": 0},
                              "rl": {"seed": -1, "max_steps": -1, "beta": -1}})
    assert set(e.value.problems) == {
        "sft.learning_rate: got -1.0, expected more than 0",
        "sft.max_steps: got 0, expected -1 (run the epochs) or at least 1",
        f"sft.method: got 'nope', expected one of {', '.join(METHODS)}",
        "rl.seed: got -1, expected a value in [0, 4294967295]",
        "rl.max_steps: got -1, expected at least 1",  # RL has no epochs to run
        "rl.beta: got -1.0, expected at least 0",
    }


def test_explain_documents_every_shared_field_of_both_stages_with_the_stage_default():
    from workflows.config import RunConfig, from_dict
    from workflows.explain import explain

    rows = {path: (value, doc) for path, value, doc in explain(from_dict(RunConfig, {"model": "m"}))}
    for stage in ("sft", "rl"):
        assert all(rows[f"{stage}.{name}"][1] for name in SHARED), stage
    assert rows["sft.max_steps"] == (-1, "Stop after this many optimizer steps (-1: run the epochs).")
    assert rows["rl.max_steps"] == (100, "Optimizer steps.")  # redeclared: RL's default and meaning
    assert rows["rl.learning_rate"] == (1e-6, "Peak learning rate.")  # redeclared default, the shared docstring


class FakeTrainer:
    """What train_to_final and save_final touch of a transformers Trainer."""

    def __init__(self, log):
        self.log, self.model, self.is_fsdp_enabled = log, torch.nn.Linear(2, 2), False
        self.args = SimpleNamespace(world_size=1)
        self.accelerator = SimpleNamespace(wait_for_everyone=lambda: None)
        self.processing_class = SimpleNamespace(save_pretrained=lambda folder: None)

    def is_world_process_zero(self):
        return True

    def train(self, resume_from_checkpoint=None):
        self.log.append(("train", resume_from_checkpoint))
        return SimpleNamespace(metrics={"train_loss": 0.5}, global_step=6, training_loss=0.5)

    def save_model(self, folder):
        Path(folder).mkdir(parents=True, exist_ok=True)
        Path(folder, "config.json").write_text("{}")


def test_train_to_final_resumes_from_the_newest_complete_checkpoint_and_finishes_once(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    for step, complete in ((2, True), (4, True), (6, False)):  # checkpoint-6: killed while it was written
        (checkpoints / f"checkpoint-{step}").mkdir(parents=True)
        if complete:
            (checkpoints / f"checkpoint-{step}" / "COMPLETE").write_text("{}")
    log = []

    @contextlib.contextmanager
    def held():
        log.append("enter")
        yield
        log.append("exit")

    def build(stack):
        stack.enter_context(held())
        return FakeTrainer(log)

    def summary(trainer, result):
        log.append("summary")
        return {"method": "sft"}

    final = train_to_final("SFT", tmp_path, build, summary, "prift_sft.json", keep_checkpoints=False,
                           before_train=lambda trainer: log.append("checked"))
    assert final == tmp_path / "final"
    assert log == ["enter", "checked", ("train", str(checkpoints / "checkpoint-4")), "exit", "summary"]
    written = json.loads((final / "prift_sft.json").read_text())
    assert written["method"] == "sft" and written["steps"] == 6 and written["train"] == {"train_loss": 0.5}
    assert written["sharding"] == {"type": "ddp", "parameters": 6, "parameters_on_rank": 6}
    assert not checkpoints.exists()  # keep_checkpoints: False

    def never(stack):
        raise AssertionError("a finished stage builds nothing")

    assert train_to_final("SFT", tmp_path, never, summary, "prift_sft.json") == final
