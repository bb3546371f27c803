"""The one reader of row sources, for the SFT data (prift/data.py) and the evaluation tasks (evals/tasks.py).

A source is, in this order of checking:
- `package:<package>/<file or folder>`: a file or folder an installed package ships (common/packaged.py);
- a local file or folder: a path that exists, ends in .jsonl/.json/.parquet/.gz, or starts with `.`
  or `/` (a missing one is an error, never a hub lookup);
- otherwise a Hugging Face hub dataset name; `name:config` picks a config, `data_files` a file of
  the repository, `split` the split.

Local files: .jsonl (a JSON object a line), .json (a JSON list, an object whose `data` is the list,
or JSON lines), .parquet, and .jsonl.gz / .json.gz; a folder: its .jsonl and .json files in name order.

A line that is not JSON is a problem returned next to the rows (`file:line: not valid JSON ...`), so
that the rows after it are read and checked too; every other failure is a RowsError, whose message
the caller prefixes with what named the source (`data.path: `, a task's name).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from common.errors import InputError

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".gz")
"""Suffixes that make a source a local file even when it does not exist."""
FOLDER_SUFFIXES = (".jsonl", ".json")
"""The files of a folder source that are read."""


class RowsError(InputError):
    """A source that cannot be read: missing, unreadable, an empty folder, or no hub dataset that loads."""


def on_hub(source: str) -> bool:
    """Whether `read_rows` looks `source` up on the hub (a `package:` or local source is not)."""
    path = Path(source)
    return not (source.startswith(("package:", ".", "/")) or path.suffix in LOCAL_SUFFIXES or path.exists())


def read_rows(source: str, split: str = "train", data_files: str = "",
              limit: int = 0) -> tuple[list[dict], list[str], list[str]]:
    """(rows, where each row is, problems): `where` is `file:line: ` for a JSON-lines row, `file: `
    for another row of a folder's file, else ""; with `limit`, only the first `limit` rows."""
    if source.startswith("package:"):
        from common.packaged import packaged_file

        try:
            path = packaged_file(source)
        except InputError as e:
            raise RowsError(f"{source}: {e}") from None
        rows, where, problems = read_local(path)
    elif on_hub(source):
        rows = _hub_rows(source, split, data_files, limit)
        where, problems = [""] * len(rows), []
    else:
        rows, where, problems = read_local(Path(source))
    if limit:
        rows, where = rows[:limit], where[:limit]
    return rows, where, problems


def read_local(path: Path) -> tuple[list[dict], list[str], list[str]]:
    """A local file's or folder's (rows, where, problems), as `read_rows`."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in FOLDER_SUFFIXES)
        if not files:
            raise RowsError(f"folder {path} has no .jsonl or .json file")
        rows, where, problems = [], [], []
        for file in files:
            file_rows, file_where, file_problems = _read_file(file)
            rows += file_rows
            where += file_where or [f"{file.name}: "] * len(file_rows)
            problems += file_problems
        return rows, where, problems
    if not path.is_file():
        raise RowsError(f"file {path} does not exist")
    rows, where, problems = _read_file(path)
    return rows, where or [""] * len(rows), problems


def _read_file(path: Path) -> tuple[list[dict], list[str] | None, list[str]]:
    """(rows, `file:line: ` of each row when read as JSON lines else None, the lines that are not JSON)."""
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist(), None, []
        with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8") as f:
            text = f.read()
        if Path(path.name.removesuffix(".gz")).suffix != ".jsonl":
            whole = _whole_document(text)
            if whole is not None:
                return whole, None, []
    # pyarrow's and gzip's errors are OSError/ValueError; JSONDecodeError is a ValueError
    except (OSError, ValueError) as e:
        raise RowsError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None
    rows, where, problems = [], [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
                where.append(f"{path.name}:{lineno}: ")
            except json.JSONDecodeError as e:
                problems.append(f"{path.name}:{lineno}: not valid JSON ({e.msg} at column {e.colno})")
    return rows, where, problems


def _whole_document(text: str) -> list | None:
    """The rows of a .json file that is one document (a list, or an object whose `data` is a list);
    None for JSON lines. A list that does not parse raises."""
    if text.lstrip().startswith("["):
        return json.loads(text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None  # JSON lines (or lines that are not JSON, named one by one)
    return data["data"] if isinstance(data, dict) and isinstance(data.get("data"), list) else None


def _hub_rows(source: str, split: str, data_files: str, limit: int) -> list[dict]:
    import datasets  # a hub name: only users with network access get here

    name, _, config = source.partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, data_files=data_files or None, split=split)
    except Exception as e:  # not found, offline, bad split or config: datasets raises many kinds
        first = str(e).splitlines()[0] if str(e) else ""
        raise RowsError(
            f"{source!r} (split {split!r}) is neither a local file nor a hub dataset that loads "
            f"({type(e).__name__}: {first}); without hub access, point it at a local .jsonl/.json/.parquet file"
        ) from None
    if limit:
        ds = ds.select(range(min(limit, len(ds))))
    return ds.to_list()
