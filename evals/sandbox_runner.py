"""The fork server that runs untrusted programs (started by `evals.sandbox`, never imported).

`serve()` runs as `python -I -S -B -c <this source>`: a trusted process that has already paid for
interpreter start-up and imports, and reads requests (length-prefixed marshal) on stdin. For each it
forks a child, reports the child's pid, waits for it and reports its exit status. Forking a warm
process costs about a millisecond; starting a fresh interpreter costs twenty.

The child (`child`) enters the program's empty working directory, points stdin/stdout/stderr at
/dev/null and the parent's capture files, and, in this order:
1. sets resource limits (address space, CPU seconds, file size, processes, no core dumps);
2. when started as root: enters a fresh network namespace and a mount namespace (see
   `expose_stdlib`), then drops to a throw-away uid/gid that owns nothing on the machine (so
   `RLIMIT_NPROC` counts only this program's processes and the parent can kill every one of them by
   uid); when not root: a user+network namespace if the kernel allows it;
3. takes the program's phases from the request;
4. installs an audit hook (PEP 578) that refuses opening files outside the working directory for
   writing, reading outside it (the standard library excepted), sockets, subprocesses, fork/exec,
   signals to other processes, ctypes, tracing (which can jump over lines) and other threads'
   frames or the GC's object lists (which could find the nonce);
5. runs the phases on a worker thread in one namespace, giving each phase a fresh copy of the
   original builtins, so a solution that replaces `print`, `abs`, `len`, ... cannot change how the
   tests that follow run; any exception there, `SystemExit(0)` included, exits with status 1;
6. the main thread writes the parent's nonce to the result file (opened before the uid was dropped)
   only after that thread returned: a program that calls `sys.exit(0)` / `os._exit(0)` or dies
   early never counts as passed.
What it achieved in (2) goes to the result file first as one line, so results say how isolated the
run really was.
"""

import _thread
import marshal
import os
import resource
import sys

import ctypes  # only the trusted server and the child before its hook use it (then it is unloaded)
import traceback  # imported once here, so a failing program does not pay for it

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
BLOCKED_PREFIXES = ("socket.", "subprocess.", "ctypes.", "os.exec", "os.spawn", "os.posix_spawn", "pty.")
BLOCKED = {
    "os.system", "os.fork", "os.forkpty", "os.kill", "os.killpg", "signal.pthread_kill",
    "resource.setrlimit", "resource.prlimit",
    "sys._current_frames", "sys.settrace", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
    "os.chdir", "os.fchdir",
}
LISTING_EVENTS = ("os.listdir", "os.scandir")  # reads: allowed where files may be read (imports list dirs)
CHANGE_EVENTS = {  # event -> indexes of its path arguments, which must lie in the working directory
    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.link": (0, 1),
    "os.symlink": (0, 1), "os.chmod": (0,), "os.chown": (0,), "os.truncate": (0,), "os.utime": (0,),
    "shutil.rmtree": (0,),
}


def isolate(libc, uid, stdlib_dirs):
    """OS-level isolation (step 2); returns what was achieved."""
    isolation = {"network_namespace": False, "uid": os.getuid()}
    if libc is None:
        return isolation
    if os.getuid() != 0:
        isolation["network_namespace"] = libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0
        return isolation
    isolation["network_namespace"] = libc.unshare(CLONE_NEWNET) == 0
    if uid is not None and libc.unshare(CLONE_NEWNS) == 0 and expose_stdlib(libc, stdlib_dirs):
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        isolation["uid"] = uid
    return isolation


def expose_stdlib(libc, stdlib_dirs):
    """The dropped uid must still import the standard library, but it may live under a directory
    only root can enter (pyenv in /root). In our own mount namespace, put an empty tmpfs over that
    directory and bind-mount just the standard library back at its old path: sys.path stays valid
    and nothing else in that directory (caches, credentials) is visible to the program."""
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return False
    for lib in stdlib_dirs:
        parts = lib.split("/")
        closed = next(("/".join(parts[:i]) for i in range(2, len(parts))
                       if not os.stat("/".join(parts[:i])).st_mode & 0o001), None)
        if closed is None:
            continue
        keep = os.open(lib, os.O_PATH | os.O_DIRECTORY)
        if libc.mount(b"tmpfs", closed.encode(), b"tmpfs", 0, b"mode=0755,size=1m") != 0:
            return False
        os.makedirs(lib, mode=0o755)
        if libc.mount(f"/proc/self/fd/{keep}".encode(), lib.encode(), None, MS_BIND | MS_REC, None) != 0:
            return False
        os.close(keep)
    return True


def make_guard(workdir, readable):
    """The audit hook (step 4)."""

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
        elif event == "import" and args[0] in ("ctypes", "_ctypes"):
            raise PermissionError("sandbox: importing ctypes is not allowed")
        elif event in BLOCKED or event.startswith(BLOCKED_PREFIXES):
            raise PermissionError(f"sandbox: {event} is not allowed")

    return guard


def run_phases(phases, finished):
    """Step 5, on a thread of its own. Any exception, SystemExit(0) included, ends the process
    with status 1: `finished` is released only if the last phase returned."""
    import builtins

    pristine = dict(builtins.__dict__)
    namespace = {"__name__": "__main__"}
    try:
        for i, source in enumerate(phases):
            namespace["__builtins__"] = dict(pristine)
            exec(compile(source, f"<phase {i}>", "exec"), namespace)
    except SystemExit as e:
        sys.stderr.write(f"sandbox: the program raised SystemExit({e.code!r}) before its tests finished\n")
        sys.stderr.flush()
        os._exit(1)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    finished.release()


def child(request, libc):
    """Steps 1-6 in the forked child; never returns."""
    try:
        os.setsid()
        os.chdir(request["workdir"])
        os.environ["HOME"] = request["workdir"]
        result_fd = os.open(request["result"], os.O_WRONLY)  # root-owned: opened before the uid drop
        for fd, path, flags in ((0, "/dev/null", os.O_RDONLY), (1, request["stdout"], os.O_WRONLY), (2, request["stderr"], os.O_WRONLY)):
            opened = os.open(path, flags)
            os.dup2(opened, fd)
            os.close(opened)
        os.closerange(3, result_fd)
        os.closerange(result_fd + 1, 1 << 16)
        for name, value in request["rlimits"].items():
            hard = value + 1 if name == "RLIMIT_CPU" else value  # SIGXCPU (a timeout) before SIGKILL
            resource.setrlimit(getattr(resource, name), (value, hard))
        stdlib_dirs = request["stdlib_dirs"]
        isolation = isolate(libc, request["uid"], stdlib_dirs)
        for name in ("ctypes", "_ctypes"):  # a program's `import ctypes` must go through the hook
            sys.modules.pop(name, None)
        del libc
        os.write(result_fd, f"network_namespace={int(isolation['network_namespace'])} uid={isolation['uid']}\n".encode())
        phases = request["phases"]
        workdir = os.path.realpath(os.getcwd())
        nonce = request.pop("nonce").encode()
        request.clear()
        sys.addaudithook(make_guard(workdir, (*stdlib_dirs, workdir, "/dev/null", "/dev/urandom")))
        # The nonce stays a local of this (main) thread's frame; the program runs on another
        # thread, whose frames lead back to run_phases, not here (other threads' frames and the
        # GC's object lists are behind the hook).
        finished = _thread.allocate_lock()
        finished.acquire()
        _thread.start_new_thread(run_phases, (phases, finished))
        finished.acquire()
        os.write(result_fd, nonce)
        os._exit(0)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(3)


def read_exactly(fd, n):
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def serve():
    """One request at a time: fork a child, send its pid, reap it, send its exit status."""
    libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
    while True:
        try:
            size = int.from_bytes(read_exactly(0, 4), "little")
        except EOFError:  # the parent is gone
            return
        request = marshal.loads(read_exactly(0, size))
        pid = os.fork()
        if pid == 0:
            child(request, libc)
        del request
        os.write(1, pid.to_bytes(4, "little"))
        _, status = os.waitpid(pid, 0)
        os.write(1, os.waitstatus_to_exitcode(status).to_bytes(4, "little", signed=True))


serve()
