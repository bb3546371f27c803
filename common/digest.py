"""sha256 of sorted-key JSON: how a config, a cache key's parts or a list of rows is fingerprinted, so
the same content gives the same digest in every module, run and sweep."""

from __future__ import annotations

import hashlib
import json


def json_digest(*values) -> str:
    """The sha256 hex digest of the values, each written as JSON with sorted keys (`str` for what JSON
    cannot hold) and hashed in order: `json_digest(settings, *rows)` fingerprints rows and how they are read.

    >>> json_digest({"b": 1, "a": [1, 2]}) == json_digest({"a": [1, 2], "b": 1})
    True
    >>> json_digest({"a": 1}, {"b": 2}) == json_digest({"b": 2}, {"a": 1})
    False
    """
    h = hashlib.sha256()
    for value in values:
        h.update(json.dumps(value, sort_keys=True, default=str).encode())
    return h.hexdigest()
