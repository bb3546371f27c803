"""MLflow conventions, checked by reading the store back through MlflowClient: the experiment kind,
source and git tags, dataset inputs with content digests, drift and alerts on parent runs, and the
end-of-run hint. The tests share one sqlite store (creating one takes seconds), each in its own
experiment."""

import hashlib
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from workflows.tracking import Tracker, source_tags, ui_hint


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The folder of the shared store, mlflow.db (as `tracking_uri` names it for a storage folder)."""
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def uri(folder) -> str:
    return f"sqlite:///{(folder / 'mlflow.db').resolve()}"


def git(repo, *args) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    """A git repository with one commit of `entry.py`, on branch `trial`."""
    folder = tmp_path / "repo"
    folder.mkdir()
    git(folder, "init", "-q", "-b", "trial")
    (folder / "entry.py").write_text("print('hi')\n")
    git(folder, "add", "entry.py")
    git(folder, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    return folder


def test_the_experiment_is_created_with_the_model_training_kind_and_an_old_one_gets_it(uri):
    import mlflow

    client = mlflow.MlflowClient(uri)
    Tracker(uri, "fresh")
    assert client.get_experiment_by_name("fresh").tags["mlflow.experimentKind"] == "custom_model_development"

    client.create_experiment("older")  # made before this convention: no kind
    client.create_experiment("chosen", tags={"mlflow.experimentKind": "finetuning"})  # a kind picked in the UI
    Tracker(uri, "older")
    Tracker(uri, "chosen")
    assert client.get_experiment_by_name("older").tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment_by_name("chosen").tags["mlflow.experimentKind"] == "finetuning"


def test_runs_carry_source_and_the_commit_of_the_repository(uri, repo):
    tracker = Tracker(uri, "source", source=source_tags(repo / "entry.py"))
    parent = tracker.run(None, "prift_mass · seed 0", {"method": "prift_mass"})
    child = tracker.run(None, "sft", {"stage": "sft"}, parent=parent)
    for run_id in (parent, child):
        tags = tracker.client.get_run(run_id).data.tags
        assert tags["mlflow.source.git.commit"] == git(repo, "rev-parse", "HEAD")
        assert tags["mlflow.source.name"] == str((repo / "entry.py").resolve())
        assert tags["mlflow.source.type"] == "LOCAL"
        assert tags["mlflow.source.git.branch"] == "trial"
        assert tags["mlflow.source.git.dirty"] == "false"
    assert tracker.client.get_run(parent).info.run_name == "prift_mass · seed 0"

    (repo / "entry.py").write_text("print('changed')\n")
    assert source_tags(repo / "entry.py")["mlflow.source.git.dirty"] == "true"
    git(repo, "remote", "add", "origin", "https://example.invalid/prift.git")
    assert source_tags(repo / "entry.py")["mlflow.source.git.repoURL"] == "https://example.invalid/prift.git"


def test_reattaching_keeps_the_run_renames_it_and_adds_missing_source_tags(uri, repo):
    plain = Tracker(uri, "reattach")
    old = plain.run(None, "prift_mass-tiny-s0-abcd1234", {"method": "prift_mass"})  # a run from before
    tracker = Tracker(uri, "reattach", source=source_tags(repo / "entry.py"))
    assert tracker.run(old, "prift_mass · seed 0", {}) == old
    run = tracker.client.get_run(old)
    assert run.info.run_name == "prift_mass · seed 0" and run.info.status == "RUNNING"
    assert run.data.tags["mlflow.source.git.commit"] == git(repo, "rev-parse", "HEAD")
    assert len(tracker.client.search_runs([tracker.experiment_id])) == 1


def test_no_repository_or_no_git_gives_no_commit_tag_and_no_error(tmp_path, monkeypatch):
    (tmp_path / "entry.py").write_text("")
    outside = source_tags(tmp_path / "entry.py")
    assert outside == {"mlflow.source.name": str((tmp_path / "entry.py").resolve()), "mlflow.source.type": "LOCAL"}
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no git executable at all
    assert source_tags(Path(__file__)) == {"mlflow.source.name": str(Path(__file__).resolve()),
                                           "mlflow.source.type": "LOCAL"}


def sha16(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()[:16]


def row_bytes(rows) -> list[bytes]:
    return [json.dumps(r, sort_keys=True).encode() for r in rows]


def test_datasets_are_logged_as_inputs_with_content_digests(uri, tmp_path, sft_file):
    from evals.tasks import TaskSpec, load_examples
    from prift.data import DataConfig
    from workflows.config import RunConfig, from_dict
    from workflows.pipeline import dataset_inputs

    config = {"model": "unused", "data": {"path": sft_file, "max_length": 64},
              "rl": {"prompts": {"generators": [{"size": 8}]}},
              "eval": {"tasks": [{"name": "gsm8k", "limit": 3}, {"name": "mmlu_medical", "limit": 2}]},
              "pipeline": {"storage": str(tmp_path)}}
    datasets = dataset_inputs(from_dict(RunConfig, config))
    tracker = Tracker(uri, "datasets")
    run = tracker.run(None, "sft", {})
    tracker.inputs(run, [datasets["sft"], datasets["rl"], *datasets["eval"].values()])
    tracker.inputs(run, [datasets["sft"]])  # again, as a resumed stage does: nothing new
    logged = {i.dataset.name: i for i in tracker.client.get_run(run).inputs.dataset_inputs}
    assert sorted(logged) == ["gsm8k", "mmlu_medical", "rl_prompts", "sft.jsonl"]
    context = {n: {t.key: t.value for t in i.tags}["mlflow.data.context"] for n, i in logged.items()}
    assert context == {"sft.jsonl": "training", "rl_prompts": "training", "gsm8k": "evaluation",
                       "mmlu_medical": "evaluation"}

    # the SFT digest: the data key of the prior cache (formatting settings, then every row), read here from the file
    rows = [json.loads(line) for line in Path(sft_file).read_text().splitlines()]
    settings = json.dumps(asdict(DataConfig(path=sft_file, max_length=64)) | {"path": None}, sort_keys=True).encode()
    assert logged["sft.jsonl"].dataset.digest == sha16(settings, *row_bytes(rows))
    assert json.loads(logged["sft.jsonl"].dataset.profile) == {"num_rows": 64}
    assert json.loads(logged["sft.jsonl"].dataset.source) == {"uri": Path(sft_file).resolve().as_uri()}
    for task, n in (("gsm8k", 3), ("mmlu_medical", 2)):
        examples = [asdict(e) for e in load_examples(TaskSpec(task, limit=n))]
        assert logged[task].dataset.digest == sha16(*row_bytes(examples))
        assert json.loads(logged[task].dataset.profile) == {"num_rows": n}

    # the same content gives the same digest in another sweep; other content another one
    again = dataset_inputs(from_dict(RunConfig, config | {"pipeline": {"storage": str(tmp_path / "other")}}))
    assert again["rl"].dataset.digest == datasets["rl"].dataset.digest
    config["rl"]["prompts"]["generators"][0]["seed"] = 1
    assert dataset_inputs(from_dict(RunConfig, config))["rl"].dataset.digest != datasets["rl"].dataset.digest


def test_drift_goes_on_each_parent_as_metrics(uri, folder, monkeypatch):
    from workflows.report import log_to_mlflow
    from workflows.report.collect import Run

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sweep = folder / "sweep"  # the report finds the store from the sweep's folder
    (sweep / "report").mkdir(parents=True)
    (sweep / "report" / "report.md").write_text("# report\n")
    tracker = Tracker(uri, "sweep")
    ids = {m: tracker.run(None, f"{m} · seed 0", {"method": m}) for m in ("sft", "prift_mass")}
    runs = [Run(sweep / m, m, 0, {}, mlflow_run_id=ids[m]) for m in ids]
    kl = [{"method": "sft", "stage": "sft", "seed": 0, "kl": {"general": 0.5, "eval_prompts": 0.25}},
          {"method": "sft", "stage": "rl", "seed": 0, "kl": {"general": 0.75, "eval_prompts": 0.125}},
          {"method": "prift_mass", "stage": "sft", "seed": 0, "kl": {"general": 0.0625, "eval_prompts": 0.03125}},
          {"method": "prift_mass", "stage": "sft", "seed": 1, "kl": {"general": 9.0, "eval_prompts": 9.0}}]
    log_to_mlflow(sweep, runs, sweep / "report", kl)
    assert tracker.client.get_run(ids["sft"]).data.metrics == {
        "drift/kl_general/sft": 0.5, "drift/kl_eval_prompts/sft": 0.25,
        "drift/kl_general/rl": 0.75, "drift/kl_eval_prompts/rl": 0.125}
    assert tracker.client.get_run(ids["prift_mass"]).data.metrics == {  # its seed-1 record is another run's
        "drift/kl_general/sft": 0.0625, "drift/kl_eval_prompts/sft": 0.03125}


def test_the_alert_tags_say_true_or_false_and_why():
    from workflows.pipeline import alert_tags

    assert alert_tags({"ok": False, "reason": "100% of steps had no reward variance in any group"}) == {
        "alert.rl_no_learning_signal": "true", "rl_signal": "none",
        "alert.rl_no_learning_signal.reason": "100% of steps had no reward variance in any group"}
    assert alert_tags({"ok": True, "reason": None}) == {"alert.rl_no_learning_signal": "false", "rl_signal": "ok"}


def test_the_hint_runs_the_venvs_mlflow_from_the_repository_root(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / ".venv" / "bin" / "python"))
    monkeypatch.chdir(tmp_path)
    hint = ui_hint("sqlite:///runs/mlflow.db", "3")  # a relative store becomes absolute
    assert hint.splitlines()[0] == f"MLflow: .venv/bin/mlflow ui --backend-store-uri sqlite:///{tmp_path.resolve()}/runs/mlflow.db"
    assert hint.splitlines()[1].split() == ["then", "open",
                                            "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning"]
    assert ui_hint("http://mlflow.team:5000/", "7") == "MLflow: open http://mlflow.team:5000/#/experiments/7/runs?workflowType=machine_learning"


def test_the_pipelines_threads_can_log_one_new_dataset_to_their_runs_at_once(uri):
    from concurrent.futures import ThreadPoolExecutor

    from workflows.tracking import dataset_input

    tracker = Tracker(uri, "threads")
    runs = [tracker.run(None, f"m{i} · seed 0", {}) for i in range(6)]
    data = dataset_input("rl_prompts", "0123456789abcdef", "code", {}, 3, "training")
    with ThreadPoolExecutor(len(runs)) as pool:
        list(pool.map(lambda run: tracker.inputs(run, [data]), runs))
    for run in runs:
        assert [i.dataset.digest for i in tracker.client.get_run(run).inputs.dataset_inputs] == ["0123456789abcdef"]


def test_artifacts_land_beside_the_database_not_in_the_working_folder(uri, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)
    tracker = Tracker(uri, "artifacts")
    run = tracker.run(None, "r", {})
    mlflow.MlflowClient(uri).log_text(run, "hello", "note.txt")
    db_folder = Path(uri.removeprefix("sqlite:///")).parent
    assert (db_folder / "mlartifacts").is_dir()
    assert not (tmp_path / "mlruns").exists()
