"""Bad input as a user gives it: each refused with exit code 2 before any model weights are read or
any stage starts, every problem named, and `prift validate` refusing exactly what `prift run` does.

Every test that exercises preflight runs once with `validate` and once with `run`.
"""

import json
import shutil

import pytest

from helpers import tiny_pipeline, write_config
from workflows.cli import main

COMMANDS = pytest.mark.parametrize("command", ["validate", "run"])


@pytest.fixture(autouse=True)
def no_compute(monkeypatch):
    """Loading model weights, or getting as far as building the pipeline, fails the test."""
    import transformers

    import workflows.pipeline

    def forbidden(*args, **kwargs):
        raise AssertionError("bad input got past preflight: weights loaded or the pipeline started")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", forbidden)
    monkeypatch.setattr(workflows.pipeline, "Pipeline", forbidden)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def config(tiny_model, sft_file, tmp_path):
    return tiny_pipeline(tiny_model, sft_file, tmp_path / "store")


def refused(command: str, config: dict, tmp_path, capsys, *overrides: str) -> str:
    """stderr of a refused command; it must exit 2 and create no run folder (any exception other
    than the InputError the CLI turns into a message would escape `main` and fail the test)."""
    code = main([command, write_config(tmp_path, config), *(f"--set={o}" for o in overrides)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert not (tmp_path / "store").exists()
    return err


def jsonl(path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


# ---------------------------------------------------------------- config: ranges, names, types, YAML


@COMMANDS
def test_a_negative_learning_rate_is_refused(command, config, tmp_path, capsys):
    config["sft"]["learning_rate"] = -1e-4
    assert "sft.learning_rate: got -0.0001, expected more than 0" in refused(command, config, tmp_path, capsys)


@COMMANDS
def test_a_type_error_does_not_hide_a_name_error_in_the_same_section(command, config, tmp_path, capsys):
    config["pipeline"] |= {"methods": ["sft", "prift_mas"], "seeds": "zero"}
    err = refused(command, config, tmp_path, capsys)
    assert "pipeline.seeds: got 'zero', expected a list" in err
    assert "pipeline.methods[1]: unknown method 'prift_mas'" in err


@COMMANDS
def test_six_problems_in_one_config_are_all_named(command, config, tmp_path, capsys):
    config["sft"] |= {"learning_rate": -1e-4, "max_steps": "four", "warmup_ratio": 1.5}
    config["rl"] |= {"num_generations": 3}
    config["eval"]["sampling"] |= {"top_p": 0}
    config["pipeline"] |= {"methodz": ["sft"]}
    err = refused(command, config, tmp_path, capsys)
    assert "6 problems" in err
    for problem in ("sft.learning_rate: got -0.0001", "sft.max_steps: got 'four'", "sft.warmup_ratio: got 1.5",
                    "must be a multiple of num_generations = 3", "eval.sampling.top_p: got 0",
                    "pipeline.methodz: unknown key"):
        assert problem in err


@pytest.mark.parametrize("field,value", [
    ("sft.max_steps", 0), ("sft.per_device_batch_size", 0), ("sft.gradient_accumulation_steps", 0),
    ("sft.adam_beta2", 1.0), ("sft.weight_decay", -0.1), ("sft.save_steps", 0), ("sft.optim", "adamw_tourch"),
    ("sft.precision", "fp8"), ("sft.rule", {"rule": "nucleus", "tau": 2.0}), ("data.max_length", 0),
    ("data.limit", -1), ("prior.batch_tokens", 0), ("rl.temperature", 0.0), ("rl.num_generations", 1),
    ("rl.learning_rate", 0.0), ("rl.max_steps", 0), ("rl.vllm_gpu_memory_utilization", 1.5),
    ("rl.prompts.generators", [{"size": 0}]), ("eval.sampling.n", 0), ("eval.sampling.temperature", -1.0),
    ("eval.sampling.max_new_tokens", 0), ("eval.batch_size", 0), ("eval.sandbox.timeout_s", 0.0),
    ("eval.tasks", [{"name": "gsm8k", "limit": 0}]), ("eval.tasks", [{"name": "gsm8k"}, {"name": "gsm8k"}]),
    ("pipeline.seeds", [0, 0]), ("pipeline.seeds", [-1]), ("pipeline.methods", []),
    ("pipeline.resources.sft.gpus", 1.5), ("pipeline.resources.rl.cpus", -1.0),
])
def test_an_out_of_range_value_is_named(field, value, config, tmp_path, capsys):
    section, node = config, field.split(".")
    for key in node[:-1]:
        section = section.setdefault(key, {})
    section[node[-1]] = value
    assert f"{field}" in refused("validate", config, tmp_path, capsys).replace("[0]", "").replace("[1]", "")


@COMMANDS
def test_a_yaml_syntax_error_in_the_file_names_file_line_and_column(command, tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("model: x\nsft:\n  learning_rate: 1.0\n  max_steps: 3: 4\n")
    assert main([command, str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: not valid YAML at line 4, column 15: mapping values are not allowed here" in err


@COMMANDS
def test_a_yaml_syntax_error_in_set_names_the_argument_and_column(command, config, tmp_path, capsys):
    err = refused(command, config, tmp_path, capsys, "pipeline.methods=[sft")
    assert "--set pipeline.methods=[sft: not valid YAML at line 1, column 22" in err


def test_a_top_level_list_is_refused(tmp_path, capsys):
    path = tmp_path / "list.yaml"
    path.write_text("- model: x\n")
    assert main(["validate", str(path)]) == 2
    assert "expected a mapping of sections" in capsys.readouterr().err


# ---------------------------------------------------------------- the model


@COMMANDS
def test_a_model_folder_that_does_not_exist_is_refused(command, config, tmp_path, capsys):
    config["model"] = str(tmp_path / "no-such-model")
    err = refused(command, config, tmp_path, capsys)
    assert "no-such-model' is not a local folder" in err and "org/name" in err


@COMMANDS
def test_a_hub_id_offline_says_the_hub_is_unreachable_and_how_to_use_a_local_folder(command, config,
                                                                                    tmp_path, capsys, monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise huggingface_hub.errors.OfflineModeIsEnabled("offline mode is enabled")

    monkeypatch.setattr(huggingface_hub, "model_info", offline)
    # Once the hub has refused the model, no later check asks it again (a tokenizer's download
    # retries waited out 46 s of network timeouts before the message came).
    monkeypatch.setattr("evals.stage.load_tokenizer", lambda *a, **k: pytest.fail("asked the hub again"))
    config["model"] = "no-such-org/no-such-model"
    err = refused(command, config, tmp_path, capsys)
    assert "the Hugging Face hub is unreachable" in err and "point model at a local model folder" in err


@COMMANDS
def test_a_folder_without_config_json_is_refused(command, config, tiny_model, tmp_path, capsys):
    folder = shutil.copytree(tiny_model, tmp_path / "model")
    (folder / "config.json").unlink()
    config["model"] = str(folder)
    assert "has no config.json" in refused(command, config, tmp_path, capsys)


@COMMANDS
def test_a_model_without_chat_template_is_refused_when_sft_formats_chat_turns(command, config,
                                                                              tiny_model, tmp_path, capsys):
    folder = shutil.copytree(tiny_model, tmp_path / "model")
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    settings.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    config["model"] = str(folder)
    assert "has no chat template" in refused(command, config, tmp_path, capsys)


@COMMANDS
def test_a_tokenizer_that_does_not_load_is_refused(command, config, tiny_model, tmp_path, capsys):
    folder = shutil.copytree(tiny_model, tmp_path / "model")
    (folder / "tokenizer.json").write_text("{not json")
    config["model"] = str(folder)
    assert "the tokenizer of" in refused(command, config, tmp_path, capsys)


def test_preflight_reads_no_weights(config, tiny_model, tmp_path, capsys):
    folder = shutil.copytree(tiny_model, tmp_path / "model")
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")  # reading it would fail
    config["model"] = str(folder)
    assert main(["validate", write_config(tmp_path, config)]) == 0, capsys.readouterr().err


# ---------------------------------------------------------------- data, tasks, RL prompts, resources


@COMMANDS
def test_every_bad_line_and_every_bad_row_of_the_data_is_named(command, config, tmp_path, capsys):
    good = json.dumps({"prompt": "q", "response": "a"})
    config["data"]["path"] = jsonl(tmp_path / "d.jsonl", [good, '{"prompt": "q", "response": ', good,
                                                          json.dumps({"prompt": "q"}),
                                                          json.dumps({"prompt": 5, "response": "a"})])
    err = refused(command, config, tmp_path, capsys)
    assert "d.jsonl:2: not valid JSON" in err
    assert "d.jsonl:4: row 2: missing field 'response'" in err
    assert "d.jsonl:5: row 3: field 'prompt' must be a string" in err


def test_a_long_data_report_is_capped_with_a_count_of_the_rest(config, tmp_path, capsys):
    config["data"]["path"] = jsonl(tmp_path / "d.jsonl", [json.dumps({"prompt": "q"})] * 30)
    err = refused("validate", config, tmp_path, capsys)
    assert err.count("missing field 'response'") == 20 and "and 10 more" in err


@COMMANDS
def test_a_missing_data_file_is_refused(command, config, tmp_path, capsys):
    config["data"]["path"] = str(tmp_path / "nope.jsonl")
    assert "nope.jsonl does not exist" in refused(command, config, tmp_path, capsys)


@COMMANDS
def test_rl_prompts_that_are_eval_prompts_are_refused(command, config, tmp_path, capsys):
    config["rl"]["prompts"] = {"tasks": [{"name": "gsm8k"}], "generators": []}
    assert "RL prompt(s) are evaluation prompts" in refused(command, config, tmp_path, capsys)


@COMMANDS
def test_eval_problems_that_are_sft_prompts_are_refused(command, config, tmp_path, capsys):
    """The SFT rows' problems (seed 0 of the generator) evaluated again: refused, naming task and row."""
    config["data"] = {"path": "reasoning_gym:gsm_symbolic", "limit": 8}
    config["eval"]["tasks"] = [{"name": "rg_gsm_symbolic", "limit": 4, "seed": 0}]
    err = refused(command, config, tmp_path, capsys)
    assert "4 evaluation problem(s) are SFT prompts: rg_gsm_symbolic row gsm_symbolic/0/0 = SFT row 0" in err


@COMMANDS
def test_gpus_the_cluster_lacks_are_refused(command, config, tmp_path, capsys):
    config["pipeline"]["resources"] = {"sft": {"gpus": 1, "workers": 64}}
    assert "pipeline.resources.sft: 64 worker(s) x 1 GPU" in refused(command, config, tmp_path, capsys)


@COMMANDS
def test_problems_of_different_checks_are_reported_together(command, config, tmp_path, capsys):
    config["model"] = str(tmp_path / "no-such-model")
    config["data"]["path"] = str(tmp_path / "nope.jsonl")
    config["rl"]["prompts"] = {"tasks": [{"name": "gsm8k"}], "generators": []}
    err = refused(command, config, tmp_path, capsys)
    assert "3 problems found before anything ran" in err
    assert "no-such-model" in err and "nope.jsonl" in err and "evaluation prompts" in err


def test_a_sweep_that_does_not_exist_is_a_message_for_report(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "no sweep folder" in capsys.readouterr().err


def test_the_installed_command_prints_a_message_not_a_traceback(config, tmp_path):
    """The real process: exit code 2 and the problems on stderr, nothing else."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    config["sft"]["learning_rate"] = -1e-4
    config["data"]["path"] = str(tmp_path / "nope.jsonl")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    done = subprocess.run([sys.executable, "-m", "workflows.run", write_config(tmp_path, config)], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "sft.learning_rate: got -0.0001" in done.stderr


# ---------------------------------------------------------------- storage under `ray job submit`

# What Ray's job supervisor puts in the environment of a submitted entrypoint (ray 2.60,
# dashboard/modules/job/job_supervisor.py: RAY_JOB_CONFIG_JSON_ENV_VAR, the job's runtime_env and metadata).
SUBMITTED = {"runtime_env": {"working_dir": "gcs://_ray_pkg_0123456789abcdef.zip"},
             "metadata": {"job_submission_id": "raysubmit_testjob", "job_name": "raysubmit_testjob"}}


@COMMANDS
def test_a_relative_storage_under_ray_job_submit_is_refused(command, config, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the job's copy of the working directory
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(SUBMITTED))
    config["pipeline"]["storage"] = "store"
    err = refused(command, config, tmp_path, capsys)
    assert "pipeline.storage: 'store' is a relative path" in err and "ray job submit" in err
    assert "raysubmit_testjob" in err and "absolute path on a filesystem every node shares" in err


def test_an_absolute_storage_under_ray_job_submit_is_accepted(config, tmp_path, capsys, monkeypatch):
    """`validate` only: `run` would go on to join the job's Ray, which this environment only imitates."""
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(SUBMITTED))
    assert main(["validate", write_config(tmp_path, config)]) == 0, capsys.readouterr().err


# ---------------------------------------------------------------- preflight order and the network


def forbid_downloads(monkeypatch) -> list:
    """datasets.load_dataset (the hub loader of the SFT data and the tasks) records its calls and fails."""
    import datasets

    calls = []

    def load_dataset(*args, **kwargs):
        calls.append(args)
        raise ConnectionError("Couldn't reach 'no-such-org/no-such-dataset' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


@COMMANDS
def test_missing_gpus_are_reported_without_trying_a_hub_download(command, config, tmp_path, capsys, monkeypatch):
    calls = forbid_downloads(monkeypatch)
    config["data"]["path"] = "no-such-org/no-such-dataset"
    config["pipeline"]["resources"] = {"sft": {"gpus": 1, "workers": 64}}
    err = refused(command, config, tmp_path, capsys)
    assert "pipeline.resources.sft: 64 worker(s) x 1 GPU" in err
    assert calls == [] and "no-such-dataset" not in err


@COMMANDS
def test_a_local_problem_is_reported_without_trying_a_hub_download(command, config, tmp_path, capsys, monkeypatch):
    calls = forbid_downloads(monkeypatch)
    config["data"]["path"] = "no-such-org/no-such-dataset"
    config["rl"]["prompts"] = {"tasks": [{"name": "gsm8k"}], "generators": []}
    assert "RL prompt(s) are evaluation prompts" in refused(command, config, tmp_path, capsys)
    assert calls == []


@COMMANDS
def test_an_unreachable_hub_dataset_is_a_message_naming_it(command, config, tmp_path, capsys, monkeypatch):
    calls = forbid_downloads(monkeypatch)
    config["data"]["path"] = "no-such-org/no-such-dataset"
    err = refused(command, config, tmp_path, capsys)
    assert len(calls) == 1 and calls[0][0] == "no-such-org/no-such-dataset"  # the hub tier did run
    assert "data.path: 'no-such-org/no-such-dataset'" in err and "ConnectionError" in err and "Traceback" not in err


@COMMANDS
def test_a_network_error_a_loader_lets_through_is_a_message_naming_what_was_fetched(command, config,
                                                                                    tmp_path, capsys, monkeypatch):
    """A loader that does not catch its own network failure (here the SFT data's hub reader, raising
    the way a dropped connection does) still ends in a message, not a traceback."""
    import common.rows

    def unreachable(*args):
        raise ConnectionError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(common.rows, "_hub_rows", unreachable)
    config["data"]["path"] = "no-such-org/no-such-dataset"
    err = refused(command, config, tmp_path, capsys)
    assert "could not fetch data.path 'no-such-org/no-such-dataset' from the Hugging Face hub" in err
    assert "ConnectionError: [Errno 101] Network is unreachable" in err


def test_hub_inputs_names_exactly_what_is_not_local(config, tmp_path, tiny_model):
    from workflows.config import RunConfig, from_dict
    from workflows.preflight import check_models, check_rl, check_sft_data, check_tasks, hub_inputs

    local = hub_inputs(from_dict(RunConfig, config))
    assert local == {check_models: [], check_sft_data: [], check_tasks: [], check_rl: []}
    config["model"] = "org/model"
    config["data"]["path"] = "org/sft-data"
    config["eval"]["tasks"][1] = {"name": "mmlu_medical", "source": "org/mmlu"}
    config["rl"]["prompts"] = {"tasks": [{"name": "gsm8k", "source": str(tmp_path / "local.jsonl")}]}
    hub = hub_inputs(from_dict(RunConfig, config))
    assert hub[check_models] == ["model 'org/model'"]
    assert hub[check_sft_data] == ["data.path 'org/sft-data'", "eval.tasks[1] 'org/mmlu'"]  # overlap check
    assert hub[check_tasks] == ["model 'org/model'", "eval.tasks[1] 'org/mmlu'"]
    assert hub[check_rl] == ["eval.tasks[1] 'org/mmlu'"]
