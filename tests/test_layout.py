"""The architecture the README describes holds: imports go one way, and the repository stands alone."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["workflows", "rl", "evals", "sandbox", "prift", "common"]  # each may import only those after it
ALLOWED = {pkg: set(ORDER[i + 1:]) for i, pkg in enumerate(ORDER)} | {
    "rl": {"evals", "sandbox", "common"}, "evals": {"sandbox", "common"}, "sandbox": {"common"}}


# The comparison report reads what the pipeline wrote (run folders, MLflow) and the method's and the
# evals' code; the pipeline never needs it, so only the command line that starts it imports it, and
# the planner, which reads an earlier sweep's comparisons and shares the report's statistics.
REPORT = "workflows.report"
REPORT_MAY_IMPORT = {"common", "evals", "prift", REPORT, "workflows.rundir", "workflows.tracking"}
REPORT_IMPORTERS = {"workflows/cli.py", "workflows/plan.py"}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def first_party_imports(package: str) -> dict[str, set[str]]:
    found = {}
    for path in (ROOT / package).rglob("*.py"):
        for name in imported_modules(path):
            top = name.split(".")[0]
            if top in ORDER and top != package:
                found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def within(name: str, modules: set[str]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


@pytest.mark.parametrize("package", ORDER)
def test_a_package_imports_only_the_packages_below_it(package):
    wrong = {dep: files for dep, files in first_party_imports(package).items() if dep not in ALLOWED[package]}
    assert not wrong, f"{package} imports {wrong}; allowed: {sorted(ALLOWED[package])}"


def test_the_report_imports_only_what_it_reads_and_only_the_command_line_imports_it():
    report_files = sorted((ROOT / "workflows" / "report").rglob("*.py"))
    assert len(report_files) >= 7
    wrong = {str(p.relative_to(ROOT)): sorted(n for n in imported_modules(p) if n.split(".")[0] in ORDER
                                              and not within(n, REPORT_MAY_IMPORT))
             for p in report_files}
    assert not {f: names for f, names in wrong.items() if names}, f"allowed: {sorted(REPORT_MAY_IMPORT)}"
    importers = {str(p.relative_to(ROOT)) for pkg in ORDER for p in (ROOT / pkg).rglob("*.py")
                 if ROOT / "workflows" / "report" not in p.parents
                 and any(within(n, {REPORT}) for n in imported_modules(p))}
    assert importers == REPORT_IMPORTERS


@pytest.mark.parametrize("package", ["prift", "evals", "rl", "sandbox"])
def test_a_package_map_names_every_module(package):
    """The map in the package's docstring: one line per module, starting with its name."""
    listed = {line.split()[0] for line in ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text()))
              .splitlines()[1:] if line.strip()}
    modules = {p.stem for p in (ROOT / package).glob("*.py") if p.stem != "__init__"}
    assert modules <= listed, f"{package}/__init__.py does not list {sorted(modules - listed)}"


def test_test_modules_share_helpers_through_helper_modules_not_through_each_other():
    """A test module importing another runs (and couples to) that module's tests: shared code lives in
    conftest.py, helpers.py or a named helper module (reference_losses.py, synthetic_tokenizer.py)."""
    wrong = {p.name: sorted(n for n in imported_modules(p) if n.startswith("test_"))
             for p in (ROOT / "tests").glob("*.py")}
    assert not {f: names for f, names in wrong.items() if names}


def test_no_file_points_outside_the_repository():
    tracked = [p for p in ROOT.rglob("*") if p.is_file() and p.suffix in (".py", ".md", ".yaml", ".toml", ".sh")
               and not any(part in (".venv", ".git", "node_modules") or part.endswith(".egg-info") for part in p.parts)]
    assert len(tracked) > 50
    marker = "../" + "shared"  # spelled apart so this file does not match itself
    outside = [str(p.relative_to(ROOT)) for p in tracked if marker in p.read_text(errors="ignore")]
    assert outside == []
