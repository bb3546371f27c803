"""The judge's decoder is the trust boundary of a judged run: whatever bytes the candidate sends, it
returns plain data it built itself, or raises BadMessage."""

import marshal
import math
import os
import pickle
import random
import struct

import pytest

from sandbox.calls import MAX_DEPTH, MAX_MESSAGE, BadMessage, NotPlainData, decode, encode, frame, read_frame

PLAIN = (type(None), bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset)
VALUES = [None, True, 0, -1, 255, -256, 1 << 64, -(1 << 9999), 0.1, -0.0, math.inf, -math.inf, 1 + 2j,
          "", "é\U0001F600", "\udc80", b"", b"\x00\xff", [], [1, [2, (3,)]], (), ((),), {1, "a", (2, 3)},
          frozenset({frozenset({1})}), {"a": [1], (1, 2): {3: None}, 4.5: b"x"}]


def plain(value, depth=0) -> bool:
    if type(value) not in PLAIN or depth > MAX_DEPTH + 1:
        return False
    if type(value) is dict:
        return all(plain(k, depth + 1) and plain(v, depth + 1) for k, v in value.items())
    if type(value) in (list, tuple, set, frozenset):
        return all(plain(v, depth + 1) for v in value)
    return True


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_plain_values_round_trip_exactly(value):
    got = decode(encode(value))
    assert got == value and type(got) is type(value) and plain(got)
    if type(value) is float:
        assert math.copysign(1, got) == math.copysign(1, value)


def test_nan_round_trips():
    assert math.isnan(decode(encode(math.nan)))


def test_only_plain_types_are_sent_and_subclasses_go_as_their_value():
    class Int(int):
        def __eq__(self, other):
            return True

        __hash__ = int.__hash__

    for value in (Int(3), [Int(3)], lambda: 1, object(), iter([1]), bytearray(b"x")):
        with pytest.raises(NotPlainData):
            encode(value)
    got = decode(encode([Int(3), bytearray(b"x")], lenient=True))
    assert got == [3, b"x"] and type(got[0]) is int and got[0] != 4
    with pytest.raises(NotPlainData):
        encode(object(), lenient=True)


def test_hostile_bytes_are_refused():
    deep = b"l\x01\x00\x00\x00" * (MAX_DEPTH + 1) + b"N"
    cases = [
        marshal.dumps(compile("x = 1", "<x>", "exec")),  # a code object
        pickle.dumps(os.system),  # a callable, by reference
        b"", b"Z", b"N" + b"N",  # no value, unknown tag, bytes after the value
        b"l" + struct.pack("<I", 1 << 31),  # more items than bytes: no huge allocation
        b"d\x01\x00\x00\x00l\x00\x00\x00\x00N",  # an unhashable key
        b"s\x02\x00\x00\x00\xff\xfe",  # not UTF-8
        deep,
    ]
    for data in cases:
        with pytest.raises(BadMessage):
            decode(data)
    full = encode(VALUES)
    for cut in range(len(full)):
        with pytest.raises(BadMessage):
            decode(full[:cut])


def test_random_bytes_decode_to_plain_data_or_are_refused():
    rng = random.Random(23)
    valid = [encode(v) for v in VALUES]
    for i in range(3000):
        if i % 2:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        else:
            data = bytearray(rng.choice(valid))
            for _ in range(rng.randrange(1, 4)):
                if data:
                    data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data)
        try:
            value = decode(data)
        except BadMessage:
            continue
        assert plain(value), data


def test_an_oversized_frame_is_refused_before_it_is_read():
    r, w = os.pipe()
    try:
        os.write(w, struct.pack("<I", MAX_MESSAGE + 1))
        with pytest.raises(BadMessage):
            read_frame(os.read, r)
        os.write(w, frame(encode("ok")))
        assert decode(read_frame(os.read, r)) == "ok"
        os.close(w)
        assert read_frame(os.read, r) is None
    finally:
        os.close(r)
