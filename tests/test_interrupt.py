"""Interruptions: one driver per sweep, workers that stop when their driver is gone, checkpoints
that count only once complete, MLflow curves with each step once, and kill -9 of a real run."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import TrainerCallback, TrainerControl, TrainerState

import common.lease as lease
from common.lease import ENV, DriverLease, DriverLost, LeaseWatch, check_driver
from common.checkpoints import MARKER, DriverWatch, latest_complete_checkpoint
from prift.data import DataConfig
from prift.prior import PriorConfig
from prift.sft import SFTStageConfig, run_sft
from helpers import mlflow_runs, tiny_pipeline, write_config
from workflows.cli import main

REPO = Path(__file__).resolve().parents[1]


def hold_in_subprocess(sweep: Path) -> subprocess.Popen:
    """A process that holds the sweep's lease until killed."""
    code = ("import sys, time; from pathlib import Path; from common.lease import DriverLease\n"
            f"with DriverLease(Path({str(sweep)!r})):\n    print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


# ---------------------------------------------------------------- one driver per sweep


def test_a_second_driver_on_the_same_sweep_is_refused_naming_the_first(tiny_model, sft_file,
                                                                       tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(lease, "LOCK_WAIT_S", 0.3)
    config = tiny_pipeline(tiny_model, sft_file, tmp_path / "store", methods=["sft"])
    config["pipeline"]["stages"] = {"rl": False, "eval": False}
    with DriverLease(tmp_path / "store" / "tiny"):
        assert main(["run", write_config(tmp_path, config)]) == 2
    err = capsys.readouterr().err
    assert "another driver is running this sweep" in err and f"pid {os.getpid()}" in err


def test_the_lock_of_a_killed_driver_is_free_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(lease, "LOCK_WAIT_S", 0.0)  # no waiting that could hide a stale lock
    holder = hold_in_subprocess(tmp_path)
    with pytest.raises(lease.SweepLocked):
        DriverLease(tmp_path).__enter__()
    holder.kill()
    holder.wait()
    with DriverLease(tmp_path):
        pass


# ---------------------------------------------------------------- workers notice a lost driver


def test_a_worker_on_the_drivers_host_notices_its_death_at_once(tmp_path):
    holder = hold_in_subprocess(tmp_path)
    token = json.loads((tmp_path / "driver.heartbeat").read_text())["token"]
    watch = LeaseWatch({"lock": str(tmp_path / "driver.lock"), "heartbeat": str(tmp_path / "driver.heartbeat"),
                        "token": token, "host": socket.gethostname()})
    assert watch.lost() is None
    holder.kill()
    holder.wait()
    assert "the driver has exited" in watch.lost()


def test_a_worker_on_the_drivers_host_does_not_take_a_late_heartbeat_for_a_death(tmp_path, monkeypatch):
    """A demo run lost two RL workers when the loaded host delayed the driver's heartbeat by 2 s: on the
    driver's host the lock says whether it lives, not the heartbeat's pace."""
    monkeypatch.setattr(lease, "HEARTBEAT_TIMEOUT_S", 0.0)  # any unchanged beat is "late"
    holder = hold_in_subprocess(tmp_path)
    token = json.loads((tmp_path / "driver.heartbeat").read_text())["token"]
    watch = LeaseWatch({"lock": str(tmp_path / "driver.lock"), "heartbeat": str(tmp_path / "driver.heartbeat"),
                        "token": token, "host": socket.gethostname()})
    assert [watch.lost() for _ in range(5)] == [None] * 5  # read faster than it beats
    holder.kill()
    holder.wait()
    assert "the driver has exited" in watch.lost()


def test_a_worker_on_another_host_stops_when_the_heartbeat_stops(tmp_path, monkeypatch):
    monkeypatch.setattr(lease, "HEARTBEAT_TIMEOUT_S", 0.8)
    driver = DriverLease(tmp_path)
    watch = LeaseWatch(json.loads(driver.ticket()[ENV]) | {"host": "another-host"})
    with driver:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # beating: alive for longer than the timeout
            assert watch.lost() is None
            time.sleep(lease.WATCH_S)
    stopped = time.monotonic()
    while not watch.lost():  # polled as the worker's watch thread does
        assert time.monotonic() - stopped < 0.8 + 0.5
        time.sleep(lease.WATCH_S)
    assert "no heartbeat" in watch.lost() and time.monotonic() - stopped >= 0.8 - lease.BEAT_S


def test_a_newer_driver_of_the_sweep_makes_the_old_ones_workers_stop(tmp_path):
    old = DriverLease(tmp_path)
    watch = LeaseWatch(json.loads(old.ticket()[ENV]) | {"host": "another-host"})
    with DriverLease(tmp_path):
        assert "another driver has taken over" in watch.lost()


def test_idle_workers_of_a_finished_sweep_know_it_from_an_interrupted_one(tmp_path):
    from common.errors import RunsFailed

    for ending, finished in ((None, True), (RunsFailed, True), (KeyboardInterrupt, False)):
        lease = DriverLease(tmp_path / str(ending))
        watch = LeaseWatch(json.loads(lease.ticket()[ENV]))
        try:
            with lease:
                assert not watch.finished() and watch.lost() is None
                if ending:
                    raise ending("stop")
        except BaseException as e:  # noqa: BLE001 - the endings raised on purpose
            assert isinstance(e, ending)
        assert watch.lost() and watch.finished() is finished  # the lock is free either way


def test_outside_a_pipeline_the_checks_do_nothing(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    check_driver()


class _DriverDiesAt(TrainerCallback):
    """Releases the driver's lease after `step`: what the kernel does when the driver is killed."""

    def __init__(self, driver: DriverLease, step: int):
        self.driver, self.step = driver, step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.driver.__exit__(None, None, None)


def test_training_stops_before_the_next_checkpoint_once_the_driver_is_gone(tiny_model, sft_file, tmp_path, monkeypatch):
    driver = DriverLease(tmp_path / "sweep")
    monkeypatch.setenv(ENV, driver.ticket()[ENV])
    driver.__enter__()
    cfg = SFTStageConfig(method="sft", max_steps=8, save_steps=2, per_device_batch_size=4, logging_steps=1)
    with pytest.raises(DriverLost, match="the driver has exited"):
        run_sft(tiny_model, DataConfig(path=sft_file, max_length=64), PriorConfig(), cfg, tmp_path / "sft",
                callbacks=[DriverWatch(), _DriverDiesAt(driver, 3)])
    checkpoints = tmp_path / "sft" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-2"]  # never checkpoint-4
    files = [p for p in (checkpoints / "checkpoint-2").iterdir()]
    assert max(files, key=lambda p: p.stat().st_mtime_ns).name == MARKER  # the marker came last


def test_the_eval_loop_writes_nothing_once_the_driver_is_gone(tiny_model, tmp_path, monkeypatch):
    from evals.generate import SamplingConfig
    from evals.stage import EvalStageConfig, run_eval
    from evals.tasks import TaskSpec

    driver = DriverLease(tmp_path / "sweep")
    monkeypatch.setenv(ENV, driver.ticket()[ENV])
    with driver:
        pass  # the driver ended before this eval worker got to its task
    cfg = EvalStageConfig(tasks=[TaskSpec("gsm8k", limit=1)], backend="hf", sampling=SamplingConfig(max_new_tokens=8))
    with pytest.raises(DriverLost):
        run_eval(tiny_model, cfg, tmp_path / "eval")
    assert not list((tmp_path / "eval").rglob("*.json*"))


# ---------------------------------------------------------------- complete checkpoints, MLflow steps


def test_a_checkpoint_without_its_marker_is_not_resumed_from(tmp_path):
    for step in (2, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-2" / MARKER).write_text("{}")
    assert latest_complete_checkpoint(tmp_path).name == "checkpoint-2"


def test_a_resumed_stage_logs_each_step_once(tmp_path):
    from workflows.tracking import MetricsCallback, Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "t")
    run = tracker.run(None, "sft", {})

    def train(steps):
        callback, state = MetricsCallback(tracker, run), TrainerState()
        callback.on_train_begin(None, state, TrainerControl())
        for state.global_step in steps:
            callback.on_log(None, state, TrainerControl(), logs={"loss": float(state.global_step)})

    train(range(1, 6))  # interrupted after step 5; its last checkpoint was step 2
    train(range(3, 9))  # resumed from step 2
    assert sorted(m.step for m in tracker.client.get_metric_history(run, "loss")) == list(range(1, 9))


# ---------------------------------------------------------------- Ray processes


def test_the_reaper_kills_the_process_tree_it_was_given_when_the_pipe_closes():
    import psutil

    tree = subprocess.Popen(["bash", "-c", "sleep 600 & sleep 600 & wait"], start_new_session=True)
    bystander = subprocess.Popen(["sleep", "600"])
    reaper = subprocess.Popen([sys.executable, str(REPO / "workflows" / "reaper.py")], stdin=subprocess.PIPE)
    try:
        time.sleep(0.3)
        family = [tree.pid] + [c.pid for c in psutil.Process(tree.pid).children()]
        assert len(family) == 3
        reaper.stdin.write(f"[{tree.pid}]\n".encode())
        reaper.stdin.flush()
        time.sleep(0.8)  # a snapshot of the tree
        started = time.monotonic()
        reaper.stdin.close()  # the driver is gone
        reaper.wait(5)
        tree.wait(5)
        assert time.monotonic() - started < 1.0
        assert not [p for p in family if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        assert bystander.poll() is None
    finally:
        for proc in (tree, bystander):
            proc.kill()


def _kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _ray_processes(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _gone_after(processes: list, started: float, limit_s: float) -> float:
    """Seconds from `started` until every process in `processes` has ended (zombies count as ended)."""
    import psutil

    def alive(p):
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    while any(alive(p) for p in processes):
        assert time.time() - started < limit_s, [p.name() for p in processes if alive(p)]
        time.sleep(0.02)
    return time.time() - started


@pytest.mark.slow
def test_kill_9_during_sft_leaves_no_writer_and_the_rerun_resumes_with_each_step_once(tiny_model,
                                                                                      sft_file, tmp_path, monkeypatch):
    """The driver dies mid-SFT: within seconds no Ray process of the run is left, no write starts in
    the sweep after the kill (one under way may finish: an MLflow log, or a checkpoint that is then
    never marked complete), the same command again resumes from a checkpoint that was complete
    before the kill, and the MLflow loss curve has each of the 60 steps exactly once."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    storage = tmp_path / "store"
    config = tiny_pipeline(tiny_model, sft_file, storage, methods=["prift_mass"], eval_models=["sft"])
    config["sft"] |= {"max_steps": 60, "save_steps": 2}
    config["pipeline"]["stages"] = {"rl": False}
    cmd = [sys.executable, "-m", "workflows.run", write_config(tmp_path, config)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not list(storage.glob(f"tiny/prift_mass-*/sft/checkpoints/checkpoint-4/{MARKER}")):
            assert first.poll() is None and time.monotonic() < deadline, "SFT never reached step 4"
            time.sleep(0.02)
        ray = _ray_processes(first.pid)
        killed_at = time.time()
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        checkpoints = {p.name for p in storage.glob("tiny/prift_mass-*/sft/checkpoints/checkpoint-*")}
        print(f"Ray processes of the killed run gone after {_gone_after(ray, killed_at, 5.0):.2f} s")
        time.sleep(3)
    finally:
        _kill_group(first)
    run = next(p for p in (storage / "tiny").iterdir() if p.name.startswith("prift_mass-"))
    after = {p.name for p in (run / "sft" / "checkpoints").glob("checkpoint-*")}
    complete = {p.parent.name for p in (run / "sft" / "checkpoints").glob(f"*/{MARKER}")}
    assert after <= checkpoints, after - checkpoints  # none new
    step = lambda name: int(name.rsplit("-", 1)[1])  # noqa: E731
    # a save under way at the kill may still rotate out an older checkpoint (save_total_limit)
    assert all(step(gone) < max(map(step, complete)) for gone in checkpoints - after), (checkpoints, after)
    late = {p: p.stat().st_mtime - killed_at
            for p in storage.rglob("*") if p.is_file() and p.stat().st_mtime > killed_at}
    print(f"written after the kill: { {str(p.relative_to(storage)): round(t, 3) for p, t in late.items()} }")
    for path in late:  # only writes under way at the kill: MLflow's last log, or a save never marked complete
        assert path.name.startswith("mlflow.db") or (path.parent.name in checkpoints - complete), path
    assert max(late.values(), default=0) < 2.0
    client, runs = mlflow_runs(storage)
    sft_run = next(r for r in runs if r.data.tags.get("stage") == "sft")
    late = [m.step for m in client.get_metric_history(sft_run.info.run_id, "loss") if m.timestamp > killed_at * 1000]
    print(f"loss steps logged after the kill: {late}")
    assert len(late) <= 1  # at most the step whose log was under way; no step trained after the kill

    second = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    ray = []
    while second.poll() is None:  # the Ray processes of a run that ends normally
        ray += [p for p in _ray_processes(second.pid) if p.pid not in {q.pid for q in ray}]
        time.sleep(0.5)
    out = second.stdout.read()
    ended = time.time()
    assert second.returncode == 0, out[-3000:]
    print(f"Ray processes of the finished run gone {_gone_after(ray, ended, 5.0):.2f} s after it exited")
    resumed = out.split("resuming SFT from ", 1)[1].split()[0]
    assert Path(resumed).name in complete
    manifest = json.loads((run / "manifest.json").read_text())
    assert {k: v["status"] for k, v in manifest["stages"].items()} == {"sft": "done", "eval_sft": "done"}
    client, runs = mlflow_runs(storage)
    assert sum(1 for r in runs if r.data.tags.get("method") == "prift_mass") == 1
    sft_run = next(r for r in runs if r.data.tags.get("stage") == "sft")
    assert sorted(m.step for m in client.get_metric_history(sft_run.info.run_id, "loss")) == list(range(1, 61))


def test_a_killed_driver_counts_as_exiting_before_it_is_reaped():
    from common.lease import _exiting

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert not _exiting(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while not _exiting(proc.pid):  # PF_EXITING, then a zombie until wait(): already exiting
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # flagged exiting before it was reaped; on a loaded host it may not even be a zombie yet, so
        # wait for it rather than poll once
        assert proc.wait(timeout=5) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()
