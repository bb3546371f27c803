"""Atomic writes: a reader sees the old content or the new, never a half-written file or folder.

Both write beside the target (same filesystem, so the final rename is atomic on POSIX) and rename
last. A `.tmp` left by a killed process is never read as the real thing and is replaced next time;
a folder filled over several runs (the prior's `<key>.partial`, each of its files itself written
atomically) is kept and finished instead, and published the same way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path


@contextlib.contextmanager
def replacing(path: str | Path):
    """Yield a temporary path beside `path` to write (by any writer: text, Arrow, a library's own
    save); on success it replaces `path` in one rename. The name carries the pid, so two processes
    writing the same file never share it."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    yield tmp
    os.replace(tmp, path)


def write_text(path: str | Path, text: str, *, durable: bool = False) -> None:
    """Replace `path`'s content with `text` atomically. `durable`: fsync before the rename, for a
    marker that promises the bytes written before it are on disk (checkpoint completion)."""
    with replacing(path) as tmp, open(tmp, "w") as f:
        f.write(text)
        if durable:
            f.flush()
            os.fsync(f.fileno())


def tmp_dir(target: str | Path, suffix: str = ".tmp") -> Path:
    """`<target><suffix>`, the folder `target` is built in: beside it, so `publish_dir` is one rename."""
    target = Path(target)
    return target.with_name(target.name + suffix)


def fresh_tmp_dir(target: str | Path) -> Path:
    """`<target>.tmp`, emptied of what a killed run left there (the caller creates and fills it, then
    publishes it with `publish_dir`)."""
    tmp = tmp_dir(target)
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def publish_dir(built: str | Path, target: str | Path) -> None:
    """`built`, filled completely, becomes `target` in one rename: a reader finds no `target` or a
    complete one, never a folder still being written."""
    Path(built).rename(target)


@contextlib.contextmanager
def building_dir(target: str | Path):
    """Yield a fresh `<target>.tmp` path to fill; on success it becomes `target` in one rename."""
    tmp = fresh_tmp_dir(target)
    yield tmp
    publish_dir(tmp, target)
