"""Range and name checks for config dataclasses, written so that they all run together.

A config section's `__post_init__` calls `require(...)` with one check per rule; every failing rule
is reported at once (`FieldErrors`). A field of the wrong type is named by the YAML loader
(workflows/config.py), which still builds the section so that its other checks run: each helper
therefore passes over a value that is not a number (its problem is already named) rather than raise
on it, and a type error never hides a range error.

Messages read `field: got VALUE, expected WHAT`, like the loader's.
"""

from __future__ import annotations

import math
from typing import Iterable

from common.errors import FieldErrors


def is_number(value) -> bool:
    """int or float, not bool (YAML's `yes` is a bool, and True > 0 would pass a range check)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def interval(name: str, value, low=None, high=None, *, low_open: bool = False, high_open: bool = False) -> str | None:
    """The problem with `value` outside [low, high] (a bound is excluded when its `*_open` is set),
    or None; NaN and infinities are always outside."""
    if not is_number(value):
        return None
    ok = math.isfinite(value)
    ok = ok and (low is None or (value > low if low_open else value >= low))
    ok = ok and (high is None or (value < high if high_open else value <= high))
    if ok:
        return None
    if low is not None and high is not None:
        expected = f"a value in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    elif low is not None:
        expected = f"{'more than' if low_open else 'at least'} {low}"
    elif high is not None:
        expected = f"{'less than' if high_open else 'at most'} {high}"
    else:
        expected = "a finite number"
    return f"{name}: got {value!r}, expected {expected}"


def finite(name: str, value) -> str | None:
    return interval(name, value)


def seed(name: str, value) -> str | None:
    """Seeds go to numpy, which takes 0 .. 2**32 - 1."""
    return interval(name, value, 0, 2**32 - 1)


def positive(name: str, value) -> str | None:
    return interval(name, value, 0, low_open=True)


def at_least(name: str, value, low) -> str | None:
    return interval(name, value, low)


def fraction(name: str, value) -> str | None:
    """A share in [0, 1] (warm-up ratios, probability cut-offs)."""
    return interval(name, value, 0, 1)


def one_of(name: str, value, choices: Iterable[str]) -> str | None:
    """A name among `choices` (a non-string is a type error named elsewhere)."""
    choices = list(choices)
    if not isinstance(value, str) or value in choices:
        return None
    return f"{name}: got {value!r}, expected one of {', '.join(choices)}"


def require(*problems: str | None) -> None:
    """Raise one FieldErrors naming every problem found (the Nones are the checks that passed)."""
    found = [p for p in problems if p]
    if found:
        raise FieldErrors(found)


def items(value) -> list:
    """The elements of a list field, or none when the field is not a list (a type error named elsewhere)."""
    return value if isinstance(value, list) else []
