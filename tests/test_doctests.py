"""Every `>>>` example in the packages' docstrings runs and prints what it shows.

Modules are found by their source, so an example added anywhere is run without being listed here."""

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "prift", "evals", "rl", "workflows")
MODULES = sorted(
    ".".join(path.relative_to(ROOT).with_suffix("").parts)
    for package in PACKAGES
    for path in (ROOT / package).rglob("*.py")
    if ">>> " in path.read_text()
)


def test_the_examples_were_found():
    assert {"prift.weights", "prift.signals", "evals.metrics", "rl.rewards"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name}: a '>>> ' in its source but no example doctest can find"
    assert result.failed == 0
