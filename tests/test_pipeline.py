"""The whole pipeline on a tiny model: embedded Ray, a sqlite MLflow store, resume, bad configs."""

import json

import pytest
import yaml

from workflows.cli import main


def tiny_pipeline(tiny_model, sft_file, storage, **pipeline) -> dict:
    return {
        "model": tiny_model,
        "data": {"path": sft_file, "max_length": 64},
        "sft": {"max_steps": 4, "per_device_batch_size": 8, "learning_rate": 3e-3, "save_steps": 2, "logging_steps": 1},
        "rl": {"prompts": {"generators": [{"size": 16}]}, "rewards": [{"name": "math_answer"}], "rollout": "hf",
               "num_generations": 4, "per_device_batch_size": 8, "max_completion_length": 8, "max_steps": 2,
               "logging_steps": 1, "save_steps": 2, "learning_rate": 1e-3},
        "eval": {"tasks": [{"name": "gsm8k", "limit": 2}, {"name": "mmlu_medical", "limit": 2}],
                 "backend": "hf", "sampling": {"n": 2, "temperature": 1.0, "max_new_tokens": 8}},
        "pipeline": {"experiment": "tiny", "storage": str(storage), "methods": ["sft", "prift_mass"], "seeds": [0], **pipeline},
    }


def write(tmp_path, config) -> str:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def mlflow_runs(storage):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    return client, client.search_runs([experiment.experiment_id], max_results=1000)


@pytest.mark.slow
def test_whole_pipeline_outputs_manifest_and_mlflow(tiny_model, sft_file, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    storage = tmp_path / "store"
    path = write(tmp_path, tiny_pipeline(tiny_model, sft_file, storage))
    assert main(["run", path]) == 0
    printed = capsys.readouterr().out
    assert "Avg@n (%) per task" in printed and "mlflow ui --backend-store-uri sqlite:///" in printed

    root = storage / "tiny"
    assert (root / "prior").is_dir() and (root / "base" / "eval" / "base" / "summary.json").exists()
    runs = sorted(p for p in root.iterdir() if (p / "manifest.json").exists() and p.name != "base")
    assert [p.name.split("-")[0] for p in runs] == ["prift_mass", "sft"]
    for run in runs:
        manifest = json.loads((run / "manifest.json").read_text())
        assert {k: v["status"] for k, v in manifest["stages"].items()} == {
            "sft": "done", "rl": "done", "eval_sft": "done", "eval_rl": "done"}
        for model in ("sft", "rl"):
            assert (run / model / "final" / "config.json").exists()
            assert set(json.loads((run / "eval" / model / "summary.json").read_text())["tasks"]) == {"gsm8k", "mmlu_medical"}

    client, all_runs = mlflow_runs(storage)
    parents = [r for r in all_runs if "mlflow.parentRunId" not in r.data.tags]
    assert sorted(r.data.tags["method"] for r in parents) == ["base", "prift_mass", "sft"]
    for parent in parents:
        if parent.data.tags["method"] == "base":
            continue
        children = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(r.data.tags["stage"] for r in children) == ["eval_rl", "eval_sft", "rl", "sft"]
        assert parent.data.tags["status"] == "finished"
        assert "eval/rl/gsm8k/avg_at_2" in parent.data.metrics and "eval/base/gsm8k/avg_at_2" in parent.data.metrics
        sft_run = next(r for r in children if r.data.tags["stage"] == "sft")
        assert len(client.get_metric_history(sft_run.info.run_id, "loss")) == 4  # a curve, by step

    # resubmitting the same config does nothing again and creates no new MLflow runs
    stamp = (runs[0] / "sft" / "final" / "config.json").stat().st_mtime_ns
    assert main(["run", path]) == 0
    assert (runs[0] / "sft" / "final" / "config.json").stat().st_mtime_ns == stamp
    assert len(mlflow_runs(storage)[1]) == len(all_runs)


def test_bad_pipeline_configs_fail_fast_listing_every_problem(tiny_model, sft_file, tmp_path, capsys):
    config = tiny_pipeline(tiny_model, sft_file, tmp_path / "store")
    config["pipeline"]["methodz"] = ["sft"]
    config["sft"]["max_steps"] = "four"
    config["pipeline"]["resources"] = {"sft": {"gpus": "one"}}
    assert main(["validate", write(tmp_path, config)]) == 2
    err = capsys.readouterr().err
    assert "pipeline.methodz: unknown key" in err and "sft.max_steps: got 'four'" in err
    assert "pipeline.resources.sft.gpus: got 'one'" in err

    missing = tiny_pipeline(tiny_model, str(tmp_path / "nope.jsonl"), tmp_path / "store")
    assert main(["run", write(tmp_path, missing)]) == 2
    assert "nope.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()  # nothing was started
