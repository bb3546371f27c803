"""The architecture the README describes holds: imports go one way, and the repository stands alone."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["workflows", "rl", "evals", "prift", "common"]  # each may import only those after it
ALLOWED = {pkg: set(ORDER[i + 1:]) for i, pkg in enumerate(ORDER)} | {"rl": {"evals", "common"}, "evals": {"common"}}


def first_party_imports(package: str) -> dict[str, set[str]]:
    found = {}
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            for name in names:
                top = name.split(".")[0]
                if top in ORDER and top != package:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("package", ORDER)
def test_a_package_imports_only_the_packages_below_it(package):
    wrong = {dep: files for dep, files in first_party_imports(package).items() if dep not in ALLOWED[package]}
    assert not wrong, f"{package} imports {wrong}; allowed: {sorted(ALLOWED[package])}"


def test_no_file_points_outside_the_repository():
    tracked = [p for p in ROOT.rglob("*") if p.is_file() and p.suffix in (".py", ".md", ".yaml", ".toml", ".sh")
               and not any(part in (".venv", ".git", "node_modules") or part.endswith(".egg-info") for part in p.parts)]
    assert len(tracked) > 50
    marker = "../" + "shared"  # spelled apart so this file does not match itself
    outside = [str(p.relative_to(ROOT)) for p in tracked if marker in p.read_text(errors="ignore")]
    assert outside == []
