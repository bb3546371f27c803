"""`prift validate CONFIG --explain`: every field of the run's config, its value and its docstring.

A field's documentation is the string literal under it in its dataclass (as in TRL's configs, and
what editors show); Python keeps no such string at runtime, so it is read from the class's source.
Nested sections are walked, so the listing reads like the YAML: `sft.learning_rate`, `rl.server.port`.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """{field name: the docstring under it} for one dataclass and the dataclasses it inherits from
    (fields without one are absent)."""
    docs = {}
    for base in reversed(cls.__mro__[1:]):
        if dataclasses.is_dataclass(base):
            docs |= field_docs(base)
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


SECTION = object()
"""The value `explain` gives a nested section: its fields follow it."""


def explain(config, prefix: str = "") -> list[tuple[str, object, str]]:
    """(dotted path, value, docstring) for every field of `config`; a nested section is listed with the
    value SECTION, then its own fields."""
    out = []
    docs = field_docs(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        path = prefix + f.name
        if dataclasses.is_dataclass(value):
            out.append((path, SECTION, docs.get(f.name, "")))
            out += explain(value, path + ".")
        elif isinstance(value, list) and value and all(dataclasses.is_dataclass(v) for v in value):
            out.append((path, SECTION, docs.get(f.name, "")))  # e.g. rl.rewards: each entry's fields
            for i, item in enumerate(value):
                out += explain(item, f"{path}[{i}].")
        else:
            out.append((path, value, docs.get(f.name, "")))
    return out


def render(config) -> str:
    """The listing `--explain` prints: `path: value`, its docstring indented under it."""
    lines = []
    for path, value, doc in explain(config):
        lines.append(f"{path}:" if value is SECTION else f"{path}: {value!r}")
        lines += [f"    {line}" for line in doc.splitlines()]
    return "\n".join(lines)
