"""The scheduling examples docs/pipeline.md points to parse, and name commands, configs and overrides
this repository accepts."""

import importlib.util
import shlex
from pathlib import Path

import yaml

from workflows.config import load_config

REPO = Path(__file__).resolve().parents[1]


def test_the_kuberay_rayjob_manifest_parses_and_runs_a_real_config(monkeypatch):
    import ray

    job = yaml.safe_load((REPO / "docs" / "deploy" / "rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    assert spec["rayClusterSpec"]["rayVersion"] == ray.__version__
    assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"], dict)

    python, flag, module, config, *rest = shlex.split(spec["entrypoint"])
    assert (python, flag, module) == ("python", "-m", "workflows.run") and importlib.util.find_spec(module)
    in_repo = REPO / Path(config).relative_to("/opt/prift")  # the image's copy of this repository
    overrides = [rest[i + 1] for i, arg in enumerate(rest) if arg == "--set"]
    assert len(overrides) * 2 == len(rest)
    # as Ray's job supervisor runs it: storage must come out absolute and pass preflight's storage check
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", '{"metadata": {"job_submission_id": "raysubmit_x"}}')
    from workflows.config import storage_problem

    cfg = load_config(in_repo, overrides)
    assert cfg.pipeline.storage == "/mnt/shared/prift-runs" and storage_problem(cfg.pipeline) is None

    mounts = [c["volumeMounts"] for group in [spec["rayClusterSpec"]["headGroupSpec"],
                                              *spec["rayClusterSpec"]["workerGroupSpecs"]]
              for c in group["template"]["spec"]["containers"]]
    assert all(any(cfg.pipeline.storage.startswith(m["mountPath"] + "/") for m in ms) for ms in mounts)


def test_the_documented_cron_line_runs_a_shipped_config():
    lines = [line for line in (REPO / "docs" / "pipeline.md").read_text().splitlines() if line.startswith("0 2 * * * ")]
    assert len(lines) == 1
    words = shlex.split(lines[0].split(" && ", 1)[1])
    prift = words.index(".venv/bin/prift")
    assert words[prift + 1] == "run" and (REPO / words[prift + 2]).is_file()
    storage = words[words.index("--set") + 1]
    assert storage.startswith("pipeline.storage=/")
    load_config(REPO / words[prift + 2], [storage])
