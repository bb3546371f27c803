"""The call boundary between a judged program's tests and its candidate function.

In a judged run (`Sandbox.run_judged`) the tests run in one sandboxed process (the *judge*) and the
candidate solution in another; `candidate(...)` in the tests is a proxy that sends the arguments
over a pipe and reads the reply. Only plain data crosses: None, bool, int, float, complex, str,
bytes, list, tuple, dict, set, frozenset, rebuilt by the receiver from a tagged byte format. The
judge's decoder is the trust boundary: it builds only those exact types, bounded in depth and size,
so a reply cannot carry an object with a forged `__eq__`, a code object or a reference into the
candidate's interpreter. What the candidate side encodes is only a convenience (it may be patched:
whatever it sends is data it chose, which is no more than a return value).

This source is prepended to `sandbox/runner.py` to form the fork server's program, and is imported
by the tests, so it depends on nothing but the standard library and defines nothing at import time
but functions and constants.
"""

import struct

MAX_DEPTH = 100  # nesting of containers in one message
MAX_MESSAGE = 64 << 20  # bytes in one framed message; a longer reply fails the run
_DOUBLE, _COMPLEX, _SIZE = struct.Struct("<d"), struct.Struct("<dd"), struct.Struct("<I")
_SEQUENCES = {list: b"l", tuple: b"t", set: b"S", frozenset: b"z"}
_BUILD = {b"l": list, b"t": tuple, b"S": set, b"z": frozenset}
# What a subclass of a plain type is sent as, candidate side: its value, never its methods.
_BASES = (int, float, complex, str, bytes, tuple, list, dict, set, frozenset)


class NotPlainData(TypeError):
    """A value that cannot cross: not one of the plain types (or too deep)."""


class BadMessage(ValueError):
    """Bytes that do not decode to plain data within the bounds."""


def encode(value, lenient=False):
    """`value` as bytes. Strict (the judge's arguments): exact plain types only, else NotPlainData.
    Lenient (the candidate's replies): a subclass of a plain type, or a bytearray, goes as its
    plain value."""
    out = []
    _encode(value, out, 0, lenient)
    return b"".join(out)


def _encode(v, out, depth, lenient):
    t = type(v)
    if v is None:
        out.append(b"N")
    elif t is bool:
        out.append(b"T" if v else b"F")
    elif t is int:
        data = v.to_bytes(v.bit_length() // 8 + 1, "little", signed=True)
        out += (b"i", _SIZE.pack(len(data)), data)
    elif t is float:
        out += (b"f", _DOUBLE.pack(v))
    elif t is str:
        data = v.encode("utf-8", "surrogatepass")
        out += (b"s", _SIZE.pack(len(data)), data)
    elif t is bytes:
        out += (b"b", _SIZE.pack(len(v)), v)
    elif t is complex:
        out += (b"c", _COMPLEX.pack(v.real, v.imag))
    elif t in _SEQUENCES or t is dict:
        if depth >= MAX_DEPTH:
            raise NotPlainData(f"nested deeper than {MAX_DEPTH}")
        if t is dict:
            out += (b"d", _SIZE.pack(len(v)))
            for key, item in v.items():
                _encode(key, out, depth + 1, lenient)
                _encode(item, out, depth + 1, lenient)
        else:
            out += (_SEQUENCES[t], _SIZE.pack(len(v)))
            for item in v:
                _encode(item, out, depth + 1, lenient)
    elif lenient and isinstance(v, (*_BASES, bytearray)):
        base = bytes if isinstance(v, bytearray) else next(b for b in _BASES if isinstance(v, b))
        plain = base(v)
        if type(plain) is not base:
            raise NotPlainData(f"a {t.__name__} does not convert to a plain {base.__name__}")
        _encode(plain, out, depth, lenient)
    else:
        raise NotPlainData(f"a {t.__module__}.{t.__qualname__} is not plain data")


def decode(data):
    """The plain value in `data`, built from scratch here; BadMessage on anything else (unknown
    tags, truncation, trailing bytes, nesting beyond MAX_DEPTH, unhashable keys)."""
    view = memoryview(data)
    try:
        value, end = _decode(view, 0, 0)
    except BadMessage:
        raise
    except (ValueError, TypeError, IndexError, struct.error, UnicodeDecodeError, OverflowError, MemoryError,
            RecursionError) as e:
        raise BadMessage(f"{type(e).__name__}: {e}") from None
    if end != len(view):
        raise BadMessage(f"{len(view) - end} bytes after the value")
    return value


def _size(view, i):
    if i + 4 > len(view):
        raise BadMessage("truncated")
    return _SIZE.unpack_from(view, i)[0], i + 4


def _chunk(view, i):
    n, i = _size(view, i)
    if i + n > len(view):
        raise BadMessage("truncated")
    return bytes(view[i:i + n]), i + n


def _decode(view, i, depth):
    if i >= len(view):
        raise BadMessage("truncated")
    tag, i = bytes(view[i:i + 1]), i + 1
    if tag == b"N":
        return None, i
    if tag == b"T":
        return True, i
    if tag == b"F":
        return False, i
    if tag == b"i":
        data, i = _chunk(view, i)
        return int.from_bytes(data, "little", signed=True), i
    if tag == b"f":
        return _DOUBLE.unpack_from(view, i)[0], i + 8
    if tag == b"s":
        data, i = _chunk(view, i)
        return data.decode("utf-8", "surrogatepass"), i
    if tag == b"b":
        return _chunk(view, i)
    if tag == b"c":
        real, imag = _COMPLEX.unpack_from(view, i)
        return complex(real, imag), i + 16
    if tag in _BUILD or tag == b"d":
        if depth >= MAX_DEPTH:
            raise BadMessage(f"nested deeper than {MAX_DEPTH}")
        n, i = _size(view, i)
        if n > len(view) - i:  # every item takes a byte at least: no allocation beyond the message
            raise BadMessage("more items than bytes")
        if tag == b"d":
            out = {}
            for _ in range(n):
                key, i = _decode(view, i, depth + 1)
                out[key], i = _decode(view, i, depth + 1)
            return out, i
        items = []
        for _ in range(n):
            item, i = _decode(view, i, depth + 1)
            items.append(item)
        return _BUILD[tag](items), i
    raise BadMessage(f"unknown tag {tag!r}")


def frame(payload):
    return _SIZE.pack(len(payload)) + payload


def read_frame(read, fd):
    """One framed message from `fd` via `read` (os.read); None at end of file, BadMessage if it
    is longer than MAX_MESSAGE or cut short."""
    head = _read_exactly(read, fd, 4)
    if head is None:
        return None
    n = _SIZE.unpack(head)[0]
    if n > MAX_MESSAGE:
        raise BadMessage(f"a message of {n} bytes (limit {MAX_MESSAGE})")
    body = _read_exactly(read, fd, n)
    if body is None:
        raise BadMessage("cut short")
    return body


def _read_exactly(read, fd, n):
    parts, left = [], n
    while left:
        chunk = read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)
