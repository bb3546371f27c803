"""`pipeline.storage` is absolute from the moment the config is read, so every Ray worker and every
resubmission finds the same folder (a relative path under `ray job submit` is refused by preflight:
tests/test_bad_input.py)."""

import os

import pytest

from workflows.config import ConfigError, load_config


@pytest.fixture
def local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    return tmp_path


def storage_of(folder, value: str) -> str:
    path = folder / "config.yaml"
    path.write_text(f"pipeline:\n  storage: {value!r}\n")
    return load_config(path).pipeline.storage


def test_a_relative_storage_is_made_absolute_against_the_current_directory(local):
    assert storage_of(local, "runs/sweeps") == os.path.join(str(local), "runs", "sweeps")
    assert storage_of(local, "../elsewhere") == os.path.join(os.path.dirname(str(local)), "elsewhere")


def test_home_and_file_uris_become_plain_absolute_paths(local, monkeypatch):
    monkeypatch.setenv("HOME", str(local / "home"))
    assert storage_of(local, "~/runs") == os.path.join(str(local), "home", "runs")
    assert storage_of(local, "file:///srv/shared/runs") == "/srv/shared/runs"


def test_a_symlinked_storage_keeps_the_link(local):
    """A shared mount reached through a link keeps the link's path (its target may differ per node)."""
    (local / "target").mkdir()
    (local / "link").symlink_to(local / "target")
    assert storage_of(local, "link/runs") == os.path.join(str(local), "link", "runs")


def test_an_object_store_uri_is_refused(local):
    with pytest.raises(ConfigError, match=r"pipeline.storage: got 's3://bucket/runs', expected a filesystem path"):
        storage_of(local, "s3://bucket/runs")


def test_a_relative_storage_under_ray_job_submit_is_left_for_preflight_to_refuse(local, monkeypatch):
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", '{"metadata": {"job_submission_id": "raysubmit_x"}}')
    assert storage_of(local, "runs") == "runs"
    assert storage_of(local, "/srv/shared/runs") == "/srv/shared/runs"
