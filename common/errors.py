"""The one error type for problems a user caused.

Every check of user input (a config field, a data row, a model name, a task file, the resources asked
for, a sweep another driver holds) raises an `InputError` subclass. The CLI turns exactly these into
a message on stderr and exit code 2; anything else is a bug and keeps its traceback, so the two are
never confused.
"""

from __future__ import annotations

MAX_LISTED = 20
"""Problems listed one per line before the rest are only counted: a file with 10,000 bad rows
still gives a readable report."""


class InputError(ValueError):
    """Something the user gave is wrong; the message says what and where, and nothing has run yet.

    A ValueError, so code that already catches bad values keeps working."""


class FieldErrors(InputError):
    """Every problem a config dataclass found in its own fields, one `field: problem` string each.

    Raised by `__post_init__` so that a config built in Python fails like one read from YAML, and
    so the YAML loader can report all of them with the others instead of only the first."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


def listing(problems: list[str], limit: int = MAX_LISTED) -> str:
    """One problem per indented line, the first `limit` of them, then how many more there are."""
    shown = [f"  {p}" for p in problems[:limit]]
    if len(problems) > limit:
        shown.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(shown)


class RunsFailed(RuntimeError):
    """Some runs of a sweep failed (each is recorded and summarised); the others finished."""
