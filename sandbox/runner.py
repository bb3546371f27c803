"""The fork server that runs untrusted programs (started by `sandbox`, never imported by it).

`serve()` runs as `python -I -S -B -c <this source> <view dir>`: a trusted process that has already
paid for interpreter start-up and imports, and reads requests (length-prefixed marshal) on stdin.

Once, at start-up (`prepare`), the server makes the kernel layers every program will share:
- as root: its own mount, network and PID namespace; not root: a user namespace (it is root
  inside, mapped to the caller's uid) holding the same three. The PID namespace makes the server
  PID 1 of it (`become_init`): if it dies, everything it started dies;
- in that mount namespace, the *view*: a read-only tmpfs on <view dir> holding only read-only bind
  mounts of the directories the interpreter loads from (its `sys.path` and the directories of its
  shared libraries), /dev/null, /dev/urandom and an empty mount point `WORK`. Nothing in it is
  writable and it holds no shell or /usr/bin; the library directories do hold the loader and a
  few executables (nosuid), so the seccomp filter, not the view, is what stops exec.

Per request it forks the program process (`program`) as PID 1 of a new PID namespace: when it
exits or is killed, the kernel kills every process it started, and it cannot see or signal any
process outside. The server reaps it (killing it at the wall-clock timeout, `wait_program`), so
the status is sent only once every process of the program is gone. The program process, in order:
1. enters new mount and IPC namespaces, mounts a fresh size-capped tmpfs on `WORK` (writable,
   noexec; it vanishes with the namespace), `pivot_root`s into the view and detaches the old root:
   the host's file tree is gone from its namespace, not merely hidden (`enter_view`);
2. drops privileges: as root, to a throw-away uid/gid that owns nothing (RLIMIT_NPROC then counts
   its processes only); in a user namespace, by clearing every capability;
3. sets resource limits (address space, CPU seconds, file size, processes, no core dumps);
4. installs a seccomp filter (`seccomp_filter`): execve/execveat, namespace, mount, ptrace, bpf,
   io_uring and keyring calls fail with EPERM whatever route the program takes to them;
5. reports what it achieved (`isolation`) on the server's report pipe and closes it; if a layer is
   missing and the request does not say `allow_weak`, it stops here (exit 3) without running code;
6. installs the audit hook (`make_guard`, PEP 578; defence in depth, see `sandbox/client.py`);
7. runs the phases on a worker thread, each with a fresh copy of the builtins; the main thread
   writes the request's nonce to the result file only after that thread returned, so an early
   `sys.exit(0)` / `os._exit(0)` never counts as passed.

A judged request (`run_judged`) forks two such program processes, each in a PID namespace of its
own: the candidate (step 7 is `serve_candidate`: run the solution, answer calls) and the judge
(`judge`: the prompt's code and the tests, calling the candidate through `candidate_proxy`; the
nonce is its to write). Their only link is a pair of pipes carrying plain data
(`sandbox/calls.py`, prepended to this source); the judge reads its own part of the request
(tests, nonce) from stdin, so the server, whose memory every later program inherits, never holds it.
"""

import _thread
import gc
import marshal
import os
import resource
import signal
import struct
import sys
import time

import ctypes  # only the trusted server and the program before its filter use it (then unloaded)
import traceback  # imported once here, so a failing program does not pay for it

# The runner's own references, taken before any program runs: the program can replace the
# modules' attributes (`os._exit`, `builtins.exec`), not these.
_exit, _exec, _compile = os._exit, exec, compile
import builtins as _builtins_module  # noqa: E402 (taken here, with the references above)

_builtins_dict = dict(_builtins_module.__dict__)
_server_main = sys.modules["__main__"]

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = (
    0x00020000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
CLONE_ANY_NAMESPACE = 0x7E020000  # NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = 1024, 2048, 4096, 16384, 1 << 18, 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS = 1, 22, 38
SYS_PIVOT_ROOT = 155
WORK = "/work"  # the program's directory inside the view
DEVICES = ("/dev/null", "/dev/urandom")
REFUSED = 3  # exit status: the runner itself failed or refused to run the program
UNJUDGEABLE = 4  # exit status of a judge whose tests the two-process design cannot run
# Imported once by the server, so that programs (HumanEval: `from typing import List`, `import
# math`) find them loaded. Only modules without state a program could share: not `random`, whose
# seed would be the same in every program.
PRELOAD = ("typing", "math", "string", "copy", "heapq", "bisect")

# seccomp (x86_64 only: other architectures get no filter, so the run counts as weak)
AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
SYS_CLONE, SYS_CLONE3 = 56, 435
DENIED_SYSCALLS = (
    59, 322,  # execve, execveat: no binary starts, whatever module or trick reaches them
    101,  # ptrace
    272, 308, 165, 166, 155, 161,  # unshare, setns, mount, umount2, pivot_root, chroot
    428, 429, 430, 431, 432, 433, 442,  # the new mount API
    321, 298, 323,  # bpf, perf_event_open, userfaultfd
    248, 249, 250,  # add_key, request_key, keyctl
    425, 426, 427,  # io_uring (its operations bypass seccomp)
    246, 320, 175, 313, 176,  # kexec, kernel modules
    310, 311, 312, 434, 438,  # process_vm_readv/writev, kcmp, pidfd_open, pidfd_getfd: no reach into another process
)
SECCOMP_RET_KILL_PROCESS, SECCOMP_RET_ERRNO, SECCOMP_RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
BPF_LD_W_ABS, BPF_JEQ_K, BPF_JGE_K, BPF_JSET_K, BPF_RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
EPERM, ENOSYS = 1, 38

# audit hook (step 6)
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
BLOCKED_PREFIXES = ("socket.", "subprocess.", "ctypes.", "os.exec", "os.spawn", "os.posix_spawn", "pty.")
BLOCKED = {
    "os.system", "os.fork", "os.forkpty", "os.kill", "os.killpg", "signal.pthread_kill",
    "resource.setrlimit", "resource.prlimit",
    "sys._current_frames", "sys.settrace", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
    "os.chdir", "os.fchdir",
}
# Modules that reach fork/exec or raw memory without an audit event of their own.
BLOCKED_MODULES = {
    "ctypes", "_ctypes", "_posixsubprocess", "_testcapi", "_testinternalcapi", "_xxsubinterpreters",
    "_xxtestfuzz", "_testbuffer", "_testmultiphase", "_testimportmultiple", "_testclinic",
}
LISTING_EVENTS = ("os.listdir", "os.scandir")  # reads: allowed where files may be read (imports list dirs)
CHANGE_EVENTS = {  # event -> indexes of its path arguments, which must lie in the working directory
    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.link": (0, 1),
    "os.symlink": (0, 1), "os.chmod": (0,), "os.chown": (0,), "os.truncate": (0,), "os.utime": (0,),
    "shutil.rmtree": (0,),
}


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def kernel_call(what, result):
    """Raise OSError (with the errno) when a libc call returned -1, so callers record why."""
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


# ---------------------------------------------------------------- server start-up (once)


def prepare(libc, view):
    """Namespaces and the read-only view shared by every program of this server. Returns what was
    achieved and why anything is missing (`missing`), for every program's report."""
    state = {"root": os.getuid() == 0, "user_namespace": False, "network_namespace": False,
             "view": None, "pid_namespace_fd": None, "missing": {}}
    if libc is None:
        state["missing"]["namespaces"] = "not Linux"
        return state
    if not state["root"]:
        try:
            enter_user_namespace(libc)
            state["user_namespace"] = True
        except OSError as e:
            state["missing"]["user_namespace"] = str(e)
            return state  # without one, a non-root process may not create the others
    try:
        kernel_call("unshare(network)", libc.unshare(CLONE_NEWNET))
        state["network_namespace"] = True
    except OSError as e:
        state["missing"]["network_namespace"] = str(e)
    try:
        kernel_call("unshare(mount)", libc.unshare(CLONE_NEWNS))
        kernel_call("mount private", libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None))
        build_view(libc, view)
        state["view"] = view
    except OSError as e:
        state["missing"]["mount_view"] = str(e)
    try:
        state["pid_namespace_fd"] = become_init(libc)
    except OSError as e:
        state["missing"]["pid_namespace"] = str(e)
    return state


def become_init(libc):
    """Move the server into a PID namespace of its own, as its PID 1: fork, and let the original
    process wait and exit with it. Returns a descriptor of that namespace, which `fork_program`
    re-enters before each program so that each gets a fresh child namespace (a process can
    `unshare` a PID namespace only while its children still go to its own one)."""
    kernel_call("unshare(pid)", libc.unshare(CLONE_NEWPID))
    pid = os.fork()
    if pid:
        os.close(0)
        os.close(1)
        os._exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) & 0xFF)
    prctl(libc, PR_SET_PDEATHSIG, signal.SIGKILL)  # the original killed (Sandbox gave up on us): we go too
    return os.open("/proc/self/ns/pid", os.O_RDONLY)


def enter_user_namespace(libc):
    """Not root: become root of a new user namespace mapped to our own uid/gid, which lets this
    process create mount/network/PID namespaces. Its capabilities hold only inside it."""
    uid, gid = os.getuid(), os.getgid()
    kernel_call("unshare(user)", libc.unshare(CLONE_NEWUSER))
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        fd = os.open(f"/proc/self/{name}", os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)


def exposed_dirs():
    """What the interpreter needs to import the standard library: its `sys.path` directories and
    the directories of the shared libraries it has loaded (where extension modules find theirs),
    reduced to the outermost ones."""
    dirs = set(import_path_dirs())
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split(None, 5)[-1].strip()
            if path.startswith("/") and ".so" in os.path.basename(path) and os.path.exists(path):
                dirs.add(os.path.dirname(os.path.realpath(path)))
    kept = []
    for d in sorted(dirs):
        if not any(d == k or d.startswith(k + "/") for k in kept):
            kept.append(d)
    return kept


def build_view(libc, view):
    """The program's whole file tree: a tmpfs with read-only bind mounts of `exposed_dirs()` and
    the two devices, the host's top-level symlinks (/lib -> usr/lib, so the loader's paths resolve)
    and the empty mount point WORK; then the tmpfs itself is made read-only."""
    tmpfs_flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    kernel_call("mount view", libc.mount(b"tmpfs", view.encode(), b"tmpfs", tmpfs_flags, b"mode=0755,size=64k"))
    dirs = exposed_dirs()
    if any(d == WORK or d.startswith(WORK + "/") for d in dirs):
        raise OSError(0, f"the interpreter lives under {WORK}, the program's mount point")
    for d in dirs:
        os.makedirs(view + d, mode=0o755, exist_ok=True)
        bind(libc, d, view + d, MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.makedirs(view + "/dev", mode=0o755, exist_ok=True)
    for dev in DEVICES:
        os.close(os.open(view + dev, os.O_CREAT | os.O_WRONLY, 0o666))
        bind(libc, dev, view + dev, MS_RDONLY | MS_NOSUID)  # writing to /dev/null stays possible
    for name in os.listdir("/"):
        if os.path.islink("/" + name) and not os.path.lexists(view + "/" + name):
            os.symlink(os.readlink("/" + name), view + "/" + name)
    os.mkdir(view + WORK, 0o755)
    kernel_call("remount view read-only",
                libc.mount(None, view.encode(), None, MS_REMOUNT | MS_RDONLY | tmpfs_flags, None))


def bind(libc, source, target, flags):
    """Bind-mount source on target, then remount it with `flags` (a bind mount takes new flags only
    on remount). Flags the source mount already has are kept: in a user namespace, dropping
    nosuid/nodev/noexec/atime flags of a mount made outside it is refused."""
    kernel_call(f"bind {source}", libc.mount(source.encode(), target.encode(), None, MS_BIND, None))
    st = os.statvfs(source).f_flag
    kept = st & (MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME) | (MS_RELATIME if st & 4096 else 0)
    kernel_call(f"remount {target}", libc.mount(None, target.encode(), None, MS_BIND | MS_REMOUNT | flags | kept, None))


# ---------------------------------------------------------------- per program: the server's side


def fork_program(libc, state):
    """Fork the program process, as PID 1 of a new PID namespace when the server has one."""
    fresh = False
    if state["pid_namespace_fd"] is not None:
        try:
            kernel_call("setns(pid)", libc.setns(state["pid_namespace_fd"], CLONE_NEWPID))
            kernel_call("unshare(pid)", libc.unshare(CLONE_NEWPID))
            fresh = True
        except OSError as e:
            state["missing"]["pid_namespace"] = str(e)
    gc.freeze()  # the child's collections skip the server's objects: fewer pages copied on write
    return os.fork(), fresh


def wait_program(pid, timeout):
    """Reap the program, killing it at the timeout: (wait status, rusage, timed out). It is our
    unreaped child until wait4 returns, so the kill cannot reach a recycled pid; as PID 1 of its
    namespace, its death takes every process it started with it before wait4 returns. SIGCHLD is
    blocked in the server, so sigtimedwait sleeps until the program ends (or stops) or time is up."""
    deadline = time.monotonic() + timeout
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return status, usage, False
        left = deadline - time.monotonic()
        if left <= 0:
            os.kill(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            return status, usage, True
        signal.sigtimedwait({signal.SIGCHLD}, left)


def cpu_limit_as_sigxcpu(status, usage, cpu_s):
    """PID 1 of a namespace ignores the soft CPU limit's SIGXCPU (the kernel delivers only SIGKILL
    to it), so the hard limit's SIGKILL ends it: report that as the CPU limit it is."""
    spent = usage.ru_utime + usage.ru_stime
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL and spent >= cpu_s:
        return -signal.SIGXCPU
    return os.waitstatus_to_exitcode(status)


# ---------------------------------------------------------------- per program: the program process


def redirect(request):
    """A session of its own; stdin from /dev/null, stdout/stderr to the parent's capture files.
    Returns the result file's descriptor (opened while still privileged; None for a candidate,
    which has no say in the verdict)."""
    os.setsid()
    result_fd = os.open(request["result"], os.O_WRONLY) if request.get("result") else None
    for fd, path, flags in ((0, "/dev/null", os.O_RDONLY), (1, request["stdout"], os.O_WRONLY),
                            (2, request["stderr"], os.O_WRONLY)):
        opened = os.open(path, flags)
        os.dup2(opened, fd)
        os.close(opened)
    return result_fd


def enter_view(libc, state, request, found):
    """Step 1: own mount and IPC namespaces; a fresh size-capped tmpfs on WORK, the one writable
    place (nothing in it runs, and it vanishes with the namespace: nothing the program writes
    survives it); pivot_root into the view and detach the old root, so no path leads back to the
    host. The IPC namespace takes any SysV/POSIX message queue or segment it makes with it."""
    if not state["view"]:
        os.chdir(request["workdir"])
        return
    view, uid = state["view"], request["uid"] if state["root"] else 0
    options = f"size={request['work_mb']}m,nr_inodes=4096,mode=0700,uid={uid},gid={uid}"
    try:
        kernel_call("unshare(mount, ipc)", libc.unshare(CLONE_NEWNS | CLONE_NEWIPC))
        kernel_call("mount work", libc.mount(b"tmpfs", (view + WORK).encode(), b"tmpfs",
                                             MS_NOSUID | MS_NODEV | MS_NOEXEC, options.encode()))
        os.chdir(view)
        kernel_call("pivot_root", libc.syscall(SYS_PIVOT_ROOT, b".", b"."))
        kernel_call("detach old root", libc.umount2(b".", MNT_DETACH))
        os.chdir(WORK)
        found["mount_view"] = True
    except OSError as e:
        state["missing"]["mount_view"] = str(e)
        os.chdir(request["workdir"])


def program(request, state, in_new_pid_namespace, libc, report_fd, channel=()):
    """Steps 1-7 of the module docstring in the program process; never returns. `channel`: the
    pipe ends of a judged run's role (`request["role"]`), kept open."""
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        result_fd = redirect(request)
        close_all_but(report_fd, *([result_fd] if result_fd is not None else []), *channel)
        found = {"mount_view": False, "pid_namespace": in_new_pid_namespace}
        enter_view(libc, state, request, found)
        isolation = lock_down(request, state, found, libc)
        refused = isolation["level"] != "strong" and not request["allow_weak"]
        isolation["refused"] = refused
        send(report_fd, b"I", isolation)
        os.close(report_fd)
        if refused:
            os._exit(REFUSED)
        for name in ("ctypes", "_ctypes", "ctypes._endian", "_posixsubprocess"):
            sys.modules.pop(name, None)  # the program's own import of them must reach the hook
        del libc
        phases = request["phases"]
        # HOME and TMPDIR are WORK in the server's environment already (setting them costs a
        # child tens of copied pages); only a run without the view has another directory.
        workdir = WORK if found["mount_view"] else os.path.realpath(os.getcwd())
        if workdir != WORK:
            os.environ.update(HOME=workdir, TMPDIR=workdir)
        nonce = request.pop("nonce", "").encode()
        readable = (*state["import_path"], workdir, *DEVICES)
        request_hook, role, judged = request["audit_hook"], request.get("role"), request.get("judged")
        request.clear()
        # Python ignores SIGXFSZ; by default it ends a process that writes past its file-size limit,
        # so a flood of output ends the program at once instead of making its error path raise.
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
        if request_hook:
            sys.addaudithook(make_guard(workdir, readable))
        if role == "candidate":
            serve_candidate(phases, judged["entry_point"], *channel)
        if role == "judge":
            judge(judged, *channel, result_fd, nonce)
        # The nonce stays a local of this (main) thread's frame; the program runs on another
        # thread, whose frames lead back to run_phases, not here (other threads' frames and the
        # GC's object lists are behind the hook).
        finished = _thread.allocate_lock()
        finished.acquire()
        _thread.start_new_thread(run_phases, (phases, finished))
        finished.acquire()
        os.write(result_fd, nonce)
        _exit(0)
    except BaseException:
        report_error()
        _exit(REFUSED)


def report_error():
    """The current exception's traceback on stderr, if stderr still takes it (a program may have
    replaced sys.stderr or filled its file): the exit that follows must happen regardless."""
    try:
        traceback.print_exc()
        sys.stderr.flush()
    except BaseException:
        pass


def close_all_but(*keep):
    """Close every inherited descriptor above stderr except `keep`."""
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 16)


def import_path_dirs():
    """What the program may read besides its directory: the interpreter's import path."""
    return [os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)]


def lock_down(request, state, found, libc):
    """Steps 2-4: privileges, limits, seccomp. Returns the isolation achieved, `level` "strong"
    only when every kernel layer is in force."""
    missing = dict(state["missing"])
    privileges = drop_privileges(request, state, found, libc, missing)
    limits = dict(request["rlimits"])
    process_limit = privileges["process_limit"]
    if process_limit:
        # The count covers every process of the uid in this user namespace: in one of our own,
        # also the server (and the original process waiting for it), and a judged run's judge.
        others = 0 if state["root"] else 3 if request.get("role") else 2
        limits["RLIMIT_NPROC"] = request["max_processes"] + others
    for name, value in limits.items():
        set_limit(getattr(resource, name), value, value + 1 if name == "RLIMIT_CPU" else value)
    seccomp = False
    try:
        install_seccomp(libc, state["seccomp"])
        seccomp = True
    except OSError as e:
        missing["seccomp"] = str(e)
    isolation = {
        "uid": os.getuid(), "user_namespace": state["user_namespace"],
        "network_namespace": state["network_namespace"], "mount_view": found["mount_view"],
        "pid_namespace": found["pid_namespace"], "seccomp": seccomp,
        "unprivileged": privileges["unprivileged"], "process_limit": process_limit,
    }
    if not process_limit:
        missing.setdefault("process_limit", "no throw-away uid or user namespace to count processes in")
    strong = all(isolation[k] for k in ("network_namespace", "mount_view", "pid_namespace", "seccomp", "unprivileged",
                                        "process_limit"))
    isolation["level"] = "strong" if strong else "weak"
    isolation["missing"] = {} if strong else missing
    return isolation


def set_limit(which, soft, hard):
    """Lower a resource limit; never above the hard limit we were given (privileges are dropped
    by now, so raising it would fail). RLIMIT_CPU's hard limit is one second above the soft one:
    SIGXCPU (a timeout) before SIGKILL."""
    given = resource.getrlimit(which)[1]
    if given != resource.RLIM_INFINITY:
        hard = min(hard, given)
    resource.setrlimit(which, (min(soft, hard), hard))


def drop_privileges(request, state, found, libc, missing):
    """Root: a throw-away uid/gid that owns nothing (only inside the view, where it can still read
    the standard library). User namespace: clear every capability. Then ask for SIGKILL when the
    server dies (set after the credential change, which would clear it)."""
    unprivileged = process_limit = False
    if state["root"] and found["mount_view"] and request["uid"] is not None:
        os.setgroups([])
        os.setgid(request["uid"])
        os.setuid(request["uid"])
        unprivileged = process_limit = True
    elif state["root"]:
        missing.setdefault("unprivileged", "runs as root: no view to drop the uid in")
    elif state["user_namespace"]:
        header, data = CapHeader(0x20080522, 0), (CapData * 2)()
        try:
            kernel_call("capset", libc.capset(ctypes.byref(header), data))
            unprivileged = process_limit = True
        except OSError as e:
            missing["unprivileged"] = str(e)
    else:
        unprivileged = True  # an ordinary user; but RLIMIT_NPROC would count all of its processes
    if libc is not None:
        prctl(libc, PR_SET_PDEATHSIG, signal.SIGKILL)
    return {"unprivileged": unprivileged, "process_limit": process_limit}


def seccomp_filter():
    """Classic BPF: wrong architecture -> kill; x32 numbers, DENIED_SYSCALLS and clone() with a
    namespace flag -> EPERM; clone3 -> ENOSYS (its flags are behind a pointer the filter cannot
    read; glibc then falls back to clone); everything else allowed."""
    head = [(BPF_LD_W_ABS, 0, 0, 4), (BPF_JEQ_K, 1, 0, AUDIT_ARCH_X86_64), (BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
            (BPF_LD_W_ABS, 0, 0, 0), (BPF_JEQ_K, 0, 1, SYS_CLONE3), (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | ENOSYS)]
    checks = [(BPF_JGE_K, X32_SYSCALL_BIT)] + [(BPF_JEQ_K, nr) for nr in DENIED_SYSCALLS]
    # [head] [checks...] [clone?] [load flags] [flags?] [allow] [deny]
    n = len(checks)
    body = [(code, n - i + 3, 0, k) for i, (code, k) in enumerate(checks)]  # jt -> deny
    tail = [(BPF_JEQ_K, 0, 2, SYS_CLONE), (BPF_LD_W_ABS, 0, 0, 16), (BPF_JSET_K, 1, 0, CLONE_ANY_NAMESPACE),
            (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW), (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | EPERM)]
    return b"".join(struct.pack("=HBBI", *ins) for ins in head + body + tail)


def seccomp_program():
    """The filter as the kernel takes it, built once by the server: (program, its buffer)."""
    code = seccomp_filter()
    buf = ctypes.create_string_buffer(code, len(code))
    return SockFprog(len(code) // 8, ctypes.addressof(buf)), buf


def install_seccomp(libc, program):
    """Step 4: no_new_privs, then the filter (inherited by every thread and child it makes)."""
    if libc is None or os.uname().machine != "x86_64":
        raise OSError(0, f"no seccomp filter for {os.uname().machine}")
    kernel_call("no_new_privs", prctl(libc, PR_SET_NO_NEW_PRIVS, 1))
    kernel_call("seccomp", prctl(libc, PR_SET_SECCOMP, 2, ctypes.addressof(program[0])))


def prctl(libc, option, arg2, arg3=0):
    """prctl with its arguments as the unsigned longs the kernel reads (unused ones zero)."""
    ulong = ctypes.c_ulong
    return libc.prctl(option, ulong(arg2), ulong(arg3), ulong(0), ulong(0))


def send(fd, tag, value):
    """One framed message on the report pipe (one write: atomic, whatever the other writer does)."""
    data = marshal.dumps(value)
    os.write(fd, tag + len(data).to_bytes(4, "little") + data)


# ---------------------------------------------------------------- the program's own code


def make_guard(workdir, readable):
    """The audit hook (step 6)."""

    def inside(path, roots):
        if isinstance(path, int):  # an already open descriptor
            return True
        real = os.path.realpath(os.fsdecode(path))
        return any(real == root or real.startswith(root.rstrip("/") + "/") for root in roots)

    def guard(event, args):
        if event == "open":
            path, mode, flags = args
            writes = bool(flags & WRITE_FLAGS) or any(c in (mode or "") for c in "wax+")
            if not inside(path, (workdir,) if writes else readable):
                raise PermissionError(f"sandbox: opening {path!r} is not allowed")
        elif event in LISTING_EVENTS:
            if args[0] is not None and not inside(args[0], readable):
                raise PermissionError(f"sandbox: {event} on {args[0]!r} is not allowed")
        elif event in CHANGE_EVENTS:
            for i in CHANGE_EVENTS[event]:
                if len(args) > i and args[i] is not None and not inside(args[i], (workdir,)):
                    raise PermissionError(f"sandbox: {event} on {args[i]!r} is not allowed")
        elif event == "import" and args[0].partition(".")[0] in BLOCKED_MODULES:
            raise PermissionError(f"sandbox: importing {args[0]} is not allowed")
        elif event in BLOCKED or event.startswith(BLOCKED_PREFIXES):
            raise PermissionError(f"sandbox: {event} is not allowed")

    return guard


def fresh_main():
    """A new `__main__` module's namespace (`import __main__` gives the program's, not this runner)."""
    main = type(sys)("__main__")
    sys.modules["__main__"] = main
    return main.__dict__


def run_phases(phases, finished):
    """Step 7, on a thread of its own. Any exception, SystemExit(0) included, ends the process
    with status 1: `finished` is released only if the last phase returned. The runner's own
    references (`_exit`, `_exec`, `_compile`, saved at start-up) are used, not the modules'
    attributes a program can replace; its frames and globals remain reachable from the program,
    which is why scoring uses judged runs (`judge`), not this verdict."""
    pristine = dict(_builtins_dict)
    namespace = fresh_main()
    try:
        for i, source in enumerate(phases):
            namespace["__builtins__"] = dict(pristine)
            _exec(_compile(source, f"<phase {i}>", "exec"), namespace)
    except SystemExit as e:
        try:
            sys.stderr.write(f"sandbox: the program raised SystemExit({e.code!r}) before its tests finished\n")
            sys.stderr.flush()
        except BaseException:
            pass
        _exit(1)
    except BaseException:
        report_error()
        _exit(1)
    try:
        sys.stdout.flush()
    except BaseException:
        _exit(1)
    finished.release()


# ---------------------------------------------------------------- judged runs: two processes


def serve_candidate(phases, entry_point, requests_fd, replies_fd):
    """The candidate process of a judged run: run the solution, then answer calls of its
    `entry_point` until the judge is done (the server kills it then). A failing solution exits;
    the judge reads that as a failed call. Nothing here is trusted: the program may have replaced
    any of it, and all it can do with that is choose the bytes of its replies."""
    namespace = fresh_main()
    try:
        for i, source in enumerate(phases):
            exec(compile(source, f"<phase {i}>", "exec"), namespace)
    except BaseException:
        report_error()
        _exit(1)
    flush_output()
    while True:
        body = read_frame(os.read, requests_fd)
        if body is None:
            _exit(0)
        args, kwargs = decode(body)
        try:
            fn = namespace.get(entry_point)
            if fn is None:
                raise NameError(f"name {entry_point!r} is not defined")
            result = fn(*args, **kwargs)
            reply = ("R", result, changed_arguments(body, args, kwargs))
            payload = encode(reply, lenient=True)
        except BaseException as e:
            report_error()
            payload = encode(("E", exception_name(e), exception_text(e)))
        flush_output()  # it is killed, not exited, once the judge is done
        write_all(replies_fd, frame(payload))


def flush_output():
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass


def changed_arguments(sent, args, kwargs):
    """The mutable arguments after the call if the call changed any (by value), else None: the
    judge copies them back into its own, as in-place changes would be seen in one interpreter."""
    if encode((args, kwargs), lenient=True) == sent:
        return None
    mutable = (list, dict, set)
    changed = {i: a for i, a in enumerate(args) if type(a) in mutable}
    changed.update((k, v) for k, v in kwargs.items() if type(v) in mutable)
    return changed


def exception_name(e):
    """The nearest builtin exception class of `e` (a ValueError subclass goes as ValueError)."""
    import builtins

    for cls in type(e).__mro__:
        if getattr(builtins, cls.__name__, None) is cls and issubclass(cls, Exception):
            return cls.__name__
    return "CandidateError"


def exception_text(e):
    try:
        return str(e)[:2000]
    except BaseException:
        return ""


class CandidateError(Exception):
    """The candidate raised an exception of no builtin type, or replied with something that is
    not plain data: to the tests, a call that raised."""


def judge(judged, requests_fd, replies_fd, result_fd, nonce):
    """The judge process of a judged run: the prompt's own code (its imports and helpers, trusted
    dataset code), with the entry point bound to a proxy that calls the candidate process, then
    the tests. Passed = the tests returned, and then the nonce is written to the result file,
    which only this process holds."""
    namespace = fresh_main()
    call = candidate_proxy(judged["entry_point"], requests_fd, replies_fd)
    try:
        context = compile(judged["context"], "<prompt>", "exec")
    except SyntaxError as e:
        unjudgeable(f"the prompt's code does not compile on its own ({e})")
    try:
        exec(context, namespace)
        namespace[judged["entry_point"]] = call
        exec(compile(judged["tests"], "<tests>", "exec"), namespace)
    except NameError as e:
        if e.name and e.name not in namespace:  # raised by the tests, not passed on by the proxy
            unjudgeable(f"the tests use {e.name!r}, which the prompt does not define"
                        f" (only {judged['entry_point']!r} is called in the candidate's process)")
        report_error()
        _exit(1)
    except BaseException:
        report_error()
        _exit(1)
    os.write(result_fd, nonce)
    _exit(0)


def unjudgeable(why):
    os.write(2, f"\nsandbox-unjudgeable: {why}\n".encode())
    _exit(UNJUDGEABLE)


def candidate_gone(why):
    os.write(2, f"\nsandbox-candidate-gone: {why}\n".encode())
    _exit(1)


def candidate_proxy(entry_point, requests_fd, replies_fd):
    """`candidate(...)` for the tests: the arguments go to the candidate process as plain data,
    its reply comes back as a value built here, or as an exception of the builtin type it names
    (CandidateError for any other). A test that passes something other than plain data cannot be
    judged (exit UNJUDGEABLE); a candidate that ended or broke the framing fails the run."""
    raisable = RAISABLE

    def candidate(*args, **kwargs):
        try:
            payload = encode((args, kwargs))
        except NotPlainData as e:
            unjudgeable(f"the tests pass {entry_point} an argument that cannot cross to its process ({e})")
        try:
            write_all(requests_fd, frame(payload))
            body = read_frame(os.read, replies_fd)
        except (OSError, BadMessage) as e:
            candidate_gone(f"the candidate's process failed during a call: {type(e).__name__}: {e}")
        if body is None:
            candidate_gone("the candidate's process ended before it answered a call")
        try:
            reply = decode(body)
        except BadMessage as e:
            raise CandidateError(f"the candidate's reply is not plain data ({e})") from None
        if type(reply) is tuple and len(reply) == 3 and reply[0] == "R":
            copy_back(reply[2], args, kwargs)
            return reply[1]
        if type(reply) is tuple and len(reply) == 3 and reply[0] == "E" and type(reply[1]) is type(reply[2]) is str:
            cls = raisable.get(reply[1], CandidateError)
            try:
                error = cls(reply[2])
            except Exception:
                error = CandidateError(f"{reply[1]}: {reply[2]}")
            raise error
        raise CandidateError("the candidate's reply is not a result or an exception")

    candidate.__name__ = candidate.__qualname__ = entry_point
    return candidate


# What a candidate's exception may be raised as in the tests, by name. StopIteration is left out:
# raised through map() or a lambda inside all(), it would end the tests' iteration early, as if
# every remaining check had held.
RAISABLE = {n: c for n, c in vars(_builtins_module).items()
            if isinstance(c, type) and issubclass(c, Exception)
            and not issubclass(c, (StopIteration, StopAsyncIteration))}


def copy_back(changed, args, kwargs):
    """Apply the candidate's in-place changes to the judge's own arguments (top level, by value)."""
    if type(changed) is not dict:
        return
    for key, new in changed.items():
        if type(key) is int and 0 <= key < len(args):
            old = args[key]
        elif type(key) is str and key in kwargs:
            old = kwargs[key]
        else:
            continue
        if type(old) is not type(new):
            continue
        if type(old) is list:
            old[:] = new
        elif type(old) in (dict, set):
            old.clear()
            old.update(new)


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# ---------------------------------------------------------------- the server loop


def read_exactly(fd, n):
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def read_report(fd):
    """What the program sent ("I": its isolation) before it closed the pipe to run code (or died)."""
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    report, i = {}, 0
    while i + 5 <= len(data):
        tag, size = data[i:i + 1], int.from_bytes(data[i + 1:i + 5], "little")
        if tag == b"I":
            report["isolation"] = marshal.loads(data[i + 5:i + 5 + size])
        i += 5 + size
    return report


WARM_PROGRAM = '''
from typing import List
import math


def f(numbers: List[int], scale: float = 1.0) -> list:
    """A docstring."""
    out = [x * scale for x in numbers if x % 2 == 0]
    return sorted(set(out)) + [len({str(n): n for n in numbers}), math.floor(sum(numbers) / 2)]


def check(candidate):
    assert candidate([1, 2, 3, 4]) == [2.0, 4.0, 4, 5]
    assert abs(candidate([2], 0.5)[0] - 1.0) < 1e-6
    assert candidate([]) == [0, 0], "empty"


check(f)
try:
    check(lambda *a: None)
except AssertionError:
    pass
'''


def warm_up(libc):
    """Do, in the server, the pure-Python work each program process repeats: compile and run a
    small program with its tests, fail one, the call codec, the reports. Lazily built caches and
    specialised bytecode then belong to the server, and each forked child writes to (so copies)
    about half as many of its pages: the largest cost of a program process is those page faults."""
    for _ in range(8):
        namespace = {}
        exec(compile(WARM_PROGRAM, "<warm-up>", "exec"), namespace)
        try:
            namespace["check"](lambda *a: None)
        except AssertionError:
            traceback.format_exc()
        body = frame(encode(((1, -(1 << 70), "a\u00e9", [1.5, None, float("nan")], {"k": (True, b"x", frozenset({2}))}),
                             {"s": {3}})))
        decode(body[4:])
        encode(("E", exception_name(ValueError("x")), exception_text(ValueError("x"))))
        marshal.loads(marshal.dumps({"isolation": {"uid": 1, "level": "strong", "missing": {}}, "status": 0}))
        fresh_main()
        warm_call()
    if libc is not None:  # ctypes makes a function object per libc function on first use
        for name in ("unshare", "mount", "umount2", "syscall", "prctl", "capset", "setns"):
            getattr(libc, name)


def warm_call():
    """One call through the judge's proxy and the candidate's side of the pipes, in-process."""
    calls_r, calls_w = os.pipe()
    replies_r, replies_w = os.pipe()
    try:
        args, kwargs = ([3, 1, 2], "text", 2.5), {"flag": True}
        write_all(calls_w, frame(encode((args, kwargs))))
        body = read_frame(os.read, calls_r)
        got_args, got_kwargs = decode(body)
        got_args[0].sort()
        reply = ("R", sorted(got_args[0]), changed_arguments(body, got_args, got_kwargs))
        write_all(replies_w, frame(encode(reply, lenient=True)))
        answer = decode(read_frame(os.read, replies_r))
        copy_back(answer[2], args, kwargs)
    finally:
        for fd in (calls_r, calls_w, replies_r, replies_w):
            os.close(fd)


def serve():
    """One request at a time: fork the program, collect its report, reap it (timeout included),
    send report and exit status to the parent in one message."""
    libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
    for name in PRELOAD:
        __import__(name)
    state = prepare(libc, sys.argv[1])
    state["import_path"] = import_path_dirs()
    state["seccomp"] = seccomp_program() if libc is not None else None
    warm_up(libc)
    sys.modules["__main__"] = _server_main
    gc.collect()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})  # for sigtimedwait in wait_program
    while True:
        try:
            size = int.from_bytes(read_exactly(0, 4), "little")
        except EOFError:  # the parent is gone
            return
        request = marshal.loads(read_exactly(0, size))
        report = run_judged(libc, state, request) if "candidate" in request else run_single(libc, state, request)
        del request
        data = marshal.dumps(report)
        os.write(1, len(data).to_bytes(4, "little") + data)
        reap()


def start(libc, state, request, channel=(), part_on_stdin=False):
    """Fork one program process; returns (pid, in a fresh PID namespace, its report pipe).
    `part_on_stdin`: the child reads the rest of its request (a judge's tests and nonce) from the
    server's stdin itself, so they are never in the server's memory, which later programs inherit."""
    report_r, report_w = os.pipe()
    pid, fresh = fork_program(libc, state)
    if pid == 0:
        os.close(report_r)
        if part_on_stdin:
            request = {**request, **marshal.loads(read_exactly(0, int.from_bytes(read_exactly(0, 4), "little")))}
        program(request, state, fresh, libc, report_w, channel)
    os.close(report_w)
    return pid, fresh, report_r


def finish(pid, fresh, report_r, request):
    """Collect a started program's report and reap it (at its timeout, killed)."""
    report = read_report(report_r)  # returns when the program closed the pipe: code runs now
    os.close(report_r)
    status, usage, timed_out = wait_program(pid, request["timeout_s"])
    code = (cpu_limit_as_sigxcpu(status, usage, request["rlimits"]["RLIMIT_CPU"]) if fresh
            else os.waitstatus_to_exitcode(status))
    report.update(program=pid, timed_out=timed_out, status=code)
    return report


def run_single(libc, state, request):
    return finish(*start(libc, state, request), request)


def run_judged(libc, state, request):
    """A judged run: the candidate and the judge, each PID 1 of a PID namespace of its own (neither
    can name the other's processes), with its own uid, mount and IPC namespace, joined only by two
    pipes: calls one way, replies the other. The judge's part of the request follows this one on
    stdin and is read by the judge alone. The judge's status and result file are the verdict;
    when the judge is done (or killed at the timeout) the candidate is killed."""
    calls_r, calls_w = os.pipe()
    replies_r, replies_w = os.pipe()
    common = request
    candidate = start(libc, state, {**common, **common.pop("candidate")}, (calls_r, replies_w))
    judge_run = start(libc, state, common, (calls_w, replies_r), part_on_stdin=True)
    for fd in (calls_r, calls_w, replies_r, replies_w):
        os.close(fd)
    candidate_report = read_report(candidate[2])
    os.close(candidate[2])
    report = finish(*judge_run, common)
    if "isolation" not in report:  # it may have died before reading its part: stdin is out of step
        raise SystemExit("sandbox: a judge ended before it reported; the server stops")
    # The verdict is in: the candidate is killed now and reaped once the report is sent (`reap`),
    # so its teardown overlaps the client's work. Killed, it runs no more code; as PID 1 of its
    # namespace its death takes every process it started.
    # A failed run waits, for the candidate's own exit status (it may have ended the run).
    done, status, _ = os.wait4(candidate[0], os.WNOHANG)
    if not done:
        os.kill(candidate[0], signal.SIGKILL)
        if report["status"] == 0:
            UNREAPED.append(candidate[0])
        else:
            status, done = os.wait4(candidate[0], 0)[1], True
    code = os.waitstatus_to_exitcode(status) if done else -signal.SIGKILL
    report["candidate"] = dict(candidate_report, program=candidate[0], status=code)
    return report


UNREAPED = []  # killed candidates, reaped after their run's report is sent


def reap():
    while UNREAPED:
        os.wait4(UNREAPED.pop(), 0)


serve()
