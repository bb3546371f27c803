"""The whole pipeline on a tiny model: embedded Ray, a sqlite MLflow store, resume, bad configs."""

import hashlib
import json
import math
import subprocess
from pathlib import Path

import pytest
from transformers import AutoConfig

from helpers import mlflow_runs, stop_ray_cluster, tiny_pipeline, write_config
from workflows.cli import main


def sft_digest(path, limit: int = 0) -> str:
    """The SFT data's content hash, computed here: DataConfig's settings (path left out), then each of
    the first `limit` rows (0: all)."""
    from dataclasses import asdict

    from prift.data import DataConfig

    settings = asdict(DataConfig(path=path, max_length=64, limit=limit)) | {"path": None}
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for line in Path(path).read_text().splitlines()[:limit or None]:
        h.update(json.dumps(json.loads(line), sort_keys=True).encode())
    return h.hexdigest()[:16]


@pytest.mark.slow
def test_whole_pipeline_outputs_manifest_and_mlflow(tiny_model, sft_file, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    storage = tmp_path / "store"
    config = tiny_pipeline(tiny_model, sft_file, storage)
    config["data"]["limit"] = 48  # and the last 16 rows are held out
    config["heldout"] = {"path": sft_file, "skip": 48, "max_length": 64}
    config["sft"]["heldout_every"] = 2  # the overfitting curve: steps 2 and 4 of 4
    path = write_config(tmp_path, config)
    assert main(["run", path]) == 0
    printed = capsys.readouterr().out
    assert "Avg@n (%) per task" in printed and "heldout_nll" in printed.split("Avg@n (%)")[1].splitlines()[1]
    assert f"mlflow ui --backend-store-uri sqlite:///{(storage / 'mlflow.db').resolve()}\n" in printed
    assert "/runs?workflowType=machine_learning" in printed

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
            summary = json.loads((run / "eval" / model / "summary.json").read_text())
            assert set(summary["tasks"]) == {"gsm8k", "mmlu_medical"}
            assert summary["heldout"]["heldout_rows"] == 16 and summary["heldout"]["heldout_nll"] > 0
        curve = json.loads((run / "sft" / "heldout_curve.json").read_text())
        final_nll = json.loads((run / "eval" / "sft" / "summary.json").read_text())["heldout"]["heldout_nll"]
        assert list(curve) == ["2", "4"] and curve["4"] == pytest.approx(final_nll, rel=1e-5)  # the same weights

    client, all_runs = mlflow_runs(storage)
    assert client.get_experiment_by_name("tiny").tags["mlflow.experimentKind"] == "custom_model_development"
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                            capture_output=True, text=True).stdout.strip()
    assert {r.data.tags["mlflow.source.git.commit"] for r in all_runs} == {commit}  # every run, parents and stages
    parents = [r for r in all_runs if "mlflow.parentRunId" not in r.data.tags]
    assert sorted(r.info.run_name for r in parents) == ["base", "prift_mass · seed 0", "sft · seed 0"]
    base = next(r for r in parents if r.data.tags["method"] == "base")
    assert "eval/base/gsm8k/avg_at_2" in base.data.metrics
    for parent in parents:
        if parent.data.tags["method"] == "base":
            continue
        children = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(r.data.tags["stage"] for r in children) == ["eval_rl", "eval_sft", "rl", "sft"]
        sft_run = next(r for r in children if r.data.tags["stage"] == "sft")
        assert [m.step for m in client.get_metric_history(sft_run.info.run_id, "heldout_nll")] == [2, 4]
        assert parent.data.tags["status"] == "finished"
        assert "eval/rl/gsm8k/avg_at_2" in parent.data.metrics
        assert parent.data.metrics["eval/sft/heldout_nll"] > 0 and "eval/rl/heldout_nll" in parent.data.metrics
        # the base's scores are not the method's
        assert not [k for k in parent.data.metrics if k.startswith("eval/base/")]
        assert "eval/rl/gsm8k/avg_at_2_flexible" in parent.data.metrics  # math: strict and flexible
        vocab = AutoConfig.from_pretrained(tiny_model).vocab_size
        assert 0 < parent.data.metrics["eval/rl/gsm8k/mean_token_entropy"] < math.log(vocab)
        assert "eval/rl/mmlu_medical/avg_at_2_flexible" not in parent.data.metrics
        inputs = {r.data.tags["stage"]: {(i.dataset.name, {t.key: t.value for t in i.tags}["mlflow.data.context"])
                                         for i in client.get_run(r.info.run_id).inputs.dataset_inputs}
                  for r in children}
        assert inputs == {"sft": {("sft.jsonl", "training")}, "rl": {("rl_prompts", "training")},
                          **{s: {("gsm8k", "evaluation"),
                                 ("mmlu_medical", "evaluation")} for s in ("eval_sft", "eval_rl")}}
        sft_data = next(i.dataset for r in children if r.data.tags["stage"] == "sft"
                        for i in client.get_run(r.info.run_id).inputs.dataset_inputs)
        assert sft_data.digest == sft_digest(sft_file, limit=48)
        sft_run = next(r for r in children if r.data.tags["stage"] == "sft")
        for curve in ("loss", "nll_unweighted", "weight/kept_frac"):  # curves by step, for every method
            assert len(client.get_metric_history(sft_run.info.run_id, curve)) == 4, curve
        # math_answer on a random tiny model is 0 for every completion: nothing to learn from
        rl_run = next(r for r in children if r.data.tags["stage"] == "rl")
        for run in (rl_run, parent):
            assert run.data.tags["alert.rl_no_learning_signal"] == "true"
            assert "no reward variance" in run.data.tags["alert.rl_no_learning_signal.reason"]
            assert run.data.metrics["alert/rl_no_learning_signal"] == 1.0
    assert printed.count("(rl: no learning signal)") == 2

    # resubmitting the same config does nothing again and creates no new MLflow runs
    stamp = (runs[0] / "sft" / "final" / "config.json").stat().st_mtime_ns
    assert main(["run", path]) == 0
    assert (runs[0] / "sft" / "final" / "config.json").stat().st_mtime_ns == stamp
    assert len(mlflow_runs(storage)[1]) == len(all_runs)

    check_report(root, runs, storage)


@pytest.mark.slow
def test_a_failing_stage_is_recorded_everywhere_and_the_driver_exits_1(tiny_model, sft_file, tmp_path, capsys,
                                                                       monkeypatch, child_python_runs):
    """The RL stage raises inside its Ray worker (code the workers run at start replaces run_rl)."""
    child_python_runs(
        "try:\n    import rl.grpo\nexcept Exception:\n    pass\nelse:\n"
        "    def run_rl(*a, **k):\n        raise RuntimeError('injected failure')\n    rl.grpo.run_rl = run_rl\n"
    )
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    storage = tmp_path / "store"
    config = tiny_pipeline(tiny_model, sft_file, storage, methods=["sft"], eval_models=["base", "rl"])
    config["eval"]["tasks"] = [{"name": "gsm8k", "limit": 1}]
    config["sft"]["max_steps"] = 2
    assert main(["run", write_config(tmp_path, config)]) == 1
    out = capsys.readouterr()
    assert "FAILED in rl: RuntimeError: injected failure" in out.out and "base: done" in out.out
    assert "1 run(s) failed: sft/s0" in out.err

    root = storage / "tiny"
    run = next(p for p in root.iterdir() if p.name.startswith("sft-"))
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["sft"]["status"] == "done"
    assert manifest["stages"]["rl"] == manifest["stages"]["rl"] | {"status": "failed",
                                                                   "error": "RuntimeError: injected failure"}
    assert (manifest["status"], manifest["failed_stage"]) == ("failed", "rl")

    _, all_runs = mlflow_runs(storage)
    assert "RUNNING" not in {r.info.status for r in all_runs}
    status = {r.data.tags.get("stage") or f"parent {r.data.tags['method']}": r.info.status for r in all_runs}
    assert status == {"parent base": "FINISHED", "eval_base": "FINISHED", "parent sft": "FAILED",
                      "sft": "FINISHED", "rl": "FAILED"}
    parent = next(r for r in all_runs if r.data.tags.get("method") == "sft" and "mlflow.parentRunId" not in r.data.tags)
    assert parent.data.tags["failed_stage"] == "rl" and "injected failure" in parent.data.tags["error"]

    assert main(["report", str(root), "--no-mlflow"]) == 0
    report = (root / "report" / "report.md").read_text()
    assert f"| {run.name} | failed in rl: RuntimeError: injected failure |" in report


def markdown_rows(report: str, heading: str) -> dict[str, dict[str, str]]:
    """{row label: {column: cell}} of the table under `## heading`."""
    lines = report.split(f"## {heading}\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    columns = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    return {r[0]: dict(zip(columns[1:], r[1:])) for r in rows}


def check_report(root, runs, storage):
    assert main(["report", str(root)]) == 0
    report = (root / "report" / "report.md").read_text()
    for name in ("comparison.png", "weights.png", "tokens.html"):
        assert (root / "report" / name).stat().st_size > 1000, name
    table = markdown_rows(report, "Avg@n per task")
    entropy = markdown_rows(report.replace("it has settled on one way to write the answer:", "## entropy"), "entropy")
    for run in runs:
        method = run.name.split("-")[0]
        for model, label in (("sft", "sft"), ("rl", "rl: no learning signal")):
            for task in ("gsm8k", "mmlu_medical"):
                value = json.loads((run / "eval" / model / task / "metrics.json").read_text())["metrics"]["avg_at_2"]
                assert table[f"{method} ({label})"][task] == f"{100 * value:.1f}"
                samples = (run / "eval" / model / task / "samples.jsonl").read_text()
                rows = [json.loads(line) for line in samples.splitlines()]
                per_problem = {}
                for row in rows:
                    if row["mean_token_entropy"] is not None:
                        per_problem.setdefault(row["id"], []).append(row["mean_token_entropy"])
                expected = sum(sum(v) / len(v) for v in per_problem.values()) / len(per_problem)
                assert entropy[f"{method} ({label})"][task] == f"{expected:.2f}"
        assert f"| {run.name} | done; rl: no learning signal" in report
    drift = json.loads((root / "report" / "drift.json").read_text())
    assert sorted((d["method"], d["stage"]) for d in drift) == [("prift_mass", "rl"), ("prift_mass", "sft"),
                                                                ("sft", "rl"), ("sft", "sft")]
    assert all(v > 0 for d in drift for v in d["kl"].values())  # every checkpoint moved off the base
    client, all_runs = mlflow_runs(storage)
    for parent in [r for r in all_runs
                   if r.data.tags.get("method") in ("sft", "prift_mass") and "mlflow.parentRunId" not in r.data.tags]:
        assert "report/report.md" in [a.path for a in client.list_artifacts(parent.info.run_id, "report")]
        kl = {(d["stage"], s): v
              for d in drift if d["method"] == parent.data.tags["method"] for s, v in d["kl"].items()}
        assert {k: v for k, v in parent.data.metrics.items() if k.startswith("drift/")} == {
            f"drift/kl_{s}/{stage}": v for (stage, s), v in kl.items()}


def test_bad_pipeline_configs_fail_fast_listing_every_problem(tiny_model, sft_file, tmp_path, capsys):
    config = tiny_pipeline(tiny_model, sft_file, tmp_path / "store")
    config["pipeline"]["methodz"] = ["sft"]
    config["sft"]["max_steps"] = "four"
    config["pipeline"]["resources"] = {"sft": {"gpus": "one"}}
    assert main(["validate", write_config(tmp_path, config)]) == 2
    err = capsys.readouterr().err
    assert "pipeline.methodz: unknown key" in err and "sft.max_steps: got 'four'" in err
    assert "pipeline.resources.sft.gpus: got 'one'" in err

    config = tiny_pipeline(tiny_model, sft_file, tmp_path / "store", resources={"eval": {"workers": 2}})
    assert main(["validate", write_config(tmp_path, config)]) == 2
    assert "eval.workers: only sft and rl train on several workers" in capsys.readouterr().err

    # GPUs the local cluster lacks: refused once Ray reports its resources, before any stage runs
    gpus = tiny_pipeline(tiny_model, sft_file, tmp_path / "store", resources={"rl": {"gpus": 1, "workers": 64}})
    assert main(["run", write_config(tmp_path, gpus)]) == 2
    assert "pipeline.resources.rl: 64 worker(s) x 1 GPU" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()

    missing = tiny_pipeline(tiny_model, str(tmp_path / "nope.jsonl"), tmp_path / "store")
    assert main(["run", write_config(tmp_path, missing)]) == 2
    assert "nope.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()  # nothing was started


def test_preflight_refuses_a_context_budget_the_model_cannot_hold(tiny_model, sft_file, tmp_path, capsys):
    config = tiny_pipeline(tiny_model, sft_file, tmp_path / "store")
    config["eval"]["sampling"]["max_new_tokens"] = 512  # the tiny model's whole context
    assert main(["run", write_config(tmp_path, config)]) == 2
    err = capsys.readouterr().err
    assert "gsm8k: the longest prompt" in err and "+ max_new_tokens 512" in err and "context of 512 tokens" in err
    assert not (tmp_path / "store").exists()  # refused before Ray, MLflow or any model


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ray_job_submit_runs_the_pipeline_on_a_cluster(tiny_model, sft_file, tmp_path, monkeypatch):
    """`ray start --head` on loopback, `ray job submit` of the tiny pipeline, job succeeds, cluster stopped."""
    import os
    import secrets
    import shutil
    import sys
    import tempfile

    repo = Path(__file__).resolve().parents[1]
    storage = tmp_path / "store"
    config = tiny_pipeline(tiny_model, sft_file, storage, methods=["sft"], eval_models=["sft"])
    config["pipeline"]["stages"] = {"rl": False}
    path = write_config(tmp_path, config)
    bin_dir = str(Path(sys.executable).parent)
    # Token auth, which Ray 2.60 turns on for local clusters: the cluster, the job and the client
    # read one token, kept in the test's folder rather than ~/.ray.
    token = tmp_path / "ray_auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"], "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env.pop("MLFLOW_TRACKING_URI", None)
    port, dashboard, client, agent = (_free_port() for _ in range(4))
    ray = str(Path(bin_dir) / "ray")
    # A cluster beside any other Ray on the host: ports of its own where Ray's are fixed (the job
    # agent's 52365 taken by another cluster leaves this head "No available agent to submit job"), and
    # a temp dir of its own (short: Ray's socket paths must fit 107 bytes) to stop this cluster only.
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    subprocess.run([ray, "start", "--head", f"--port={port}", "--num-cpus=2", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}",
                    f"--dashboard-agent-listen-port={agent}", f"--temp-dir={ray_tmp}", "--disable-usage-stats"],
                   env=env, check=True, timeout=180, capture_output=True)
    try:
        env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dashboard}"
        job = subprocess.run([ray, "job", "submit", "--working-dir", str(repo), "--", "python",
                              "-m", "workflows.run", path],
                             env=env, cwd=repo, capture_output=True, text=True, timeout=900)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "succeeded" in (job.stdout + job.stderr).lower()
    finally:
        stop_ray_cluster(ray_tmp, port)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    run = next(p for p in (storage / "tiny").iterdir() if p.name.startswith("sft-"))
    manifest = json.loads((run / "manifest.json").read_text())
    assert {k: v["status"] for k, v in manifest["stages"].items()} == {"sft": "done", "eval_sft": "done"}


def test_a_stage_task_runs_on_as_many_torch_threads_as_cpus_it_was_given():
    """Ray sets OMP_NUM_THREADS from a task's CPUs, but torch sizes its pool once per worker process,
    and vLLM's CPU worker disables torch.set_num_threads in the process it starts in: a worker whose
    first task had 1 CPU (an eval) ran every later 2-CPU task (SFT, GRPO) on one thread."""
    import ray

    from workflows.config import Resources
    from workflows.pipeline import _remote

    def threads(start_vllm: bool) -> tuple[int, int]:  # nested: Ray ships it by value (tests are no package)
        import os

        import torch

        count = torch.get_num_threads()
        if start_vllm:  # what vLLM's CPU worker does to the process it starts in (CPUWorker.init_device)
            torch.set_num_threads = lambda _n: None
        return count, os.getpid()

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ran = [ray.get(_remote(threads, Resources(cpus=c)).remote(c == 1)) for c in (1, 2, 1, 2)]
    finally:
        ray.shutdown()
    assert [count for count, _ in ran] == [1, 2, 1, 2]
    assert len({pid for _, pid in ran}) < len(ran)  # a worker served two of them: the case that went wrong
