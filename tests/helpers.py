"""Plain functions several test modules share (fixtures live in conftest.py): a tiny sweep's config,
writing it, reading its MLflow runs, reading a trained folder's logs and weights, and a scripted
generation backend for the eval stage, and stopping one Ray cluster of the several a host may run."""

import json
import os

import yaml

from evals.generate import Completion, Generator


def tiny_pipeline(tiny_model, sft_file, storage, **pipeline) -> dict:
    """A whole sweep on the tiny model, each stage cut to a few steps; `pipeline` overrides its pipeline section."""
    return {
        "model": tiny_model,
        "data": {"path": sft_file, "max_length": 64},
        "sft": {"max_steps": 4, "per_device_batch_size": 8, "learning_rate": 3e-3, "save_steps": 2, "logging_steps": 1},
        "rl": {"prompts": {"generators": [{"size": 16}]}, "rewards": [{"name": "math_answer"}], "rollout": "hf",
               "num_generations": 4, "per_device_batch_size": 8, "max_completion_length": 8, "max_steps": 2,
               "logging_steps": 1, "save_steps": 2, "learning_rate": 1e-3},
        "eval": {"tasks": [{"name": "gsm8k", "limit": 2}, {"name": "mmlu_medical", "limit": 2}],
                 "backend": "hf", "sampling": {"n": 2, "temperature": 1.0, "max_new_tokens": 8}},
        "pipeline": {"experiment": "tiny", "storage": str(storage), "methods": ["sft", "prift_mass"],
                     "seeds": [0], **pipeline},
    }


def write_config(tmp_path, config) -> str:
    """The config as <tmp_path>/pipeline.yaml, for the command line."""
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def mlflow_runs(storage):
    """The MLflow client of a tiny sweep's store, and every run of its experiment."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    return client, client.search_runs([experiment.experiment_id], max_results=1000)


def trained_logs(run_dir, step) -> list[dict]:
    """The loss entries of a checkpoint's trainer log history."""
    state = json.loads((run_dir / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").read_text())
    return [h for h in state["log_history"] if "loss" in h]


def weights(folder):
    """A saved model's state dict."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).state_dict()


def written(tokenizer, text: str, finish: str = "stop") -> Completion:
    """A completion as a backend returns it: the text with the token ids it was decoded from."""
    ids = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
    return Completion(text, len(ids), finish, ids)


class Scripted(Generator):
    """The same (text, finish_reason) completions for every prompt."""

    backend = "scripted"

    def __init__(self, model, outs):
        super().__init__(model)
        self.outs = outs

    def generate(self, prompts, sampling, stop=()):
        return [[written(self.tokenizer, text, finish) for text, finish in self.outs] for _ in prompts]


def stop_ray_cluster(temp_dir: str, gcs_port: int, grace_s: float = 10.0) -> None:
    """Stop the Ray cluster that `ray start --head --temp-dir=<temp_dir> --port=<gcs_port>` began, and no other.

    `ray stop --force` kills every Ray process on the host, another sweep's included. This cluster's
    processes name its temp dir on their command line (the client server names its GCS address
    instead); their children (the raylet's agents and workers) go with them.
    """
    import psutil

    def ours(proc) -> bool:
        try:
            args = proc.cmdline()
        except psutil.Error:
            return False
        return proc.pid != os.getpid() and any(
            temp_dir in a or (a.startswith("--address=") and a.endswith(f":{gcs_port}")) for a in args)

    procs = {}
    for root in filter(ours, psutil.process_iter()):
        try:
            procs.update({p.pid: p for p in [root, *root.children(recursive=True)]})
        except psutil.NoSuchProcess:
            continue
    for proc in procs.values():
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs.values(), timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
