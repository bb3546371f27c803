"""Ray Train: two data-parallel CPU workers (gloo) against one process with the same global batch."""

import json

import pytest
import torch

from helpers import mlflow_runs, tiny_pipeline, trained_logs, weights, write_config


@pytest.mark.slow
def test_two_workers_step_exactly_like_one_with_the_same_global_batch(tiny_model, sft_file, tmp_path):
    import ray

    from prift.data import DataConfig
    from prift.prior import PriorConfig, run_prior
    from prift.sft import SFTStageConfig, run_sft
    from workflows.config import Resources
    from workflows.distributed import train_on_workers

    data, prior = DataConfig(path=sft_file, max_length=64), PriorConfig(mode="cached")
    run_prior(tiny_model, data, prior, tmp_path / "prior")
    # prift_prob: the weights come from the prior, so a rank that normalised by its own tokens, or
    # saw another share of the global batch, would give a different loss and a different update
    common = dict(method="prift_prob", max_steps=3, learning_rate=3e-3, warmup_ratio=0.0, logging_steps=1, save_steps=3)
    run_sft(tiny_model, data, prior, SFTStageConfig(per_device_batch_size=8, **common),
            tmp_path / "one", tmp_path / "prior")
    two = SFTStageConfig(per_device_batch_size=4, **common)
    ray.init(num_cpus=2, include_dashboard=True)  # Ray Train watches its controller through it
    try:
        train_on_workers(run_sft, (tiny_model, data, prior, two, str(tmp_path / "two"), str(tmp_path / "prior")),
                         Resources(cpus=1, workers=2), "two", tmp_path / "ray_train")
    finally:
        ray.shutdown()

    assert json.loads((tmp_path / "two" / "final" / "prift_sft.json").read_text())["world_size"] == 2
    one_logs, two_logs = trained_logs(tmp_path / "one", 3), trained_logs(tmp_path / "two", 3)
    one_losses = [h["loss"] for h in one_logs]
    assert len(one_losses) == 3 and len(set(one_losses)) == 3  # three different batches, all logged
    for key in ("loss", "nll_unweighted", "weight/effective_frac"):  # the curves too: summed over ranks
        assert [h[key] for h in two_logs] == pytest.approx([h[key] for h in one_logs], rel=1e-5), key
    before, one, two = weights(tiny_model), weights(tmp_path / "one" / "final"), weights(tmp_path / "two" / "final")
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-6), name
    assert any(not torch.equal(before[n], one[n]) for n in one)  # the runs did train


@pytest.mark.slow
def test_pipeline_trains_sft_and_grpo_on_two_workers(tiny_model, sft_file, tmp_path, monkeypatch):
    from workflows.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    storage = tmp_path / "store"
    two = {"cpus": 1, "workers": 2}
    config = tiny_pipeline(tiny_model, sft_file, storage, methods=["prift_mass"],
                           stages={"eval": False}, resources={"sft": two, "rl": two})
    config["sft"]["per_device_batch_size"] = 4  # the global batch stays 8
    assert main(["run", write_config(tmp_path, config)]) == 0

    (run,) = [p for p in (storage / "tiny").iterdir() if p.name.startswith("prift_mass")]
    assert json.loads((run / "sft" / "final" / "prift_sft.json").read_text())["world_size"] == 2
    assert json.loads((run / "rl" / "final" / "prift_rl.json").read_text())["world_size"] == 2
    client, runs = mlflow_runs(storage)
    for stage, steps in (("sft", 4), ("rl", 2)):
        (stage_run,) = [r for r in runs if r.data.tags.get("stage") == stage]
        assert len(client.get_metric_history(stage_run.info.run_id, "loss")) == steps  # rank 0 logs, once a step
