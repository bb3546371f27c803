"""The process that runs one untrusted program (started by `evals.sandbox`, never imported).

It runs as `python -I -S -c <this source>` in an empty working directory and, in this order:
1. sets resource limits (address space, CPU seconds, file size, processes, no core dumps);
2. when started as root: enters a fresh network namespace and a mount namespace (see
   `expose_stdlib`), then drops to a throw-away uid/gid that owns nothing on the machine (so
   `RLIMIT_NPROC` counts only this program's processes and the parent can kill every one of them by
   uid); when not root: a user+network namespace if the kernel allows it;
3. reads the program's phases from `program.marshal` and deletes the file;
4. installs an audit hook (PEP 578) that refuses opening files outside the working directory for
   writing, reading outside it (the standard library excepted), sockets, subprocesses, fork/exec,
   signals to other processes, ctypes, tracing (which can jump over lines) and other threads'
   frames or the GC's object lists (which could find the nonce);
5. runs the phases on a worker thread in one namespace, giving each phase a fresh copy of the
   original builtins, so a solution that replaces `print`, `abs`, `len`, ... cannot change how the
   tests that follow run; any exception there, `SystemExit(0)` included, exits with status 1;
6. the main thread writes the parent's nonce to the result pipe only after that thread returned:
   a program that calls `sys.exit(0)` / `os._exit(0)` or dies early never counts as passed.
What it achieved in (2) goes to the result pipe first as one JSON line, so results say how isolated
the run really was.
"""

import _thread
import marshal
import os
import resource
import sys

# Startup time is most of a short program's cost: only builtin or tiny modules are imported here
# (marshal, not json; _thread, not threading; the stdlib paths come from the parent, not sysconfig).

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


def isolate(uid, stdlib_dirs):
    """OS-level isolation (step 2); returns what was achieved."""
    isolation = {"network_namespace": False, "uid": os.getuid()}
    if sys.platform != "linux":
        return isolation
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
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
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    finished.release()


def main():
    config = marshal.loads(bytes.fromhex(os.environ.pop("PRIFT_SANDBOX")))
    for name, value in config["rlimits"].items():
        hard = value + 1 if name == "RLIMIT_CPU" else value  # SIGXCPU (a timeout) before SIGKILL
        resource.setrlimit(getattr(resource, name), (value, hard))
    stdlib_dirs = config["stdlib_dirs"]
    isolation = isolate(config["uid"], stdlib_dirs)
    for name in ("ctypes", "_ctypes"):  # a program's `import ctypes` must go through the hook
        sys.modules.pop(name, None)
    report = f"network_namespace={int(isolation['network_namespace'])} uid={isolation['uid']}\n"
    os.write(config["result_fd"], report.encode())
    with open("program.marshal", "rb") as f:
        phases = marshal.load(f)
    os.unlink("program.marshal")
    workdir = os.path.realpath(os.getcwd())
    sys.addaudithook(make_guard(workdir, (*stdlib_dirs, workdir, "/dev/null", "/dev/urandom")))
    # The nonce stays a local of this (main) thread's frame; the program runs on another thread,
    # whose frames lead back to run_phases and threading, not here (other threads' frames and the
    # GC's object lists are behind the hook).
    nonce, result_fd = config.pop("nonce").encode(), config.pop("result_fd")
    finished = _thread.allocate_lock()
    finished.acquire()
    _thread.start_new_thread(run_phases, (phases, finished))
    finished.acquire()
    os.write(result_fd, nonce)


main()
