"""Generated hostile records for any input topic: broken encodings, shapes, sizes and keys.

``hostile_records(valid, key_field, n, seed)`` turns one valid event into ``n`` records that
every consumer must dead-letter (never crash on, never count): the issue's fixed list of
kinds, plus seeded random byte strings and random mutations of the valid event.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

Record = tuple[bytes | None, bytes | None, str]  # key, value, what


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, allow_nan=True).encode()


def _kinds(base: dict[str, Any], key_field: str) -> list[Callable[[random.Random, int], Record]]:
    text_field = key_field

    def own(i: int) -> dict[str, Any]:
        return {**base, key_field: f"hostile-{i}", **({"event_id": f"hostile-e{i}"} if "event_id" in base else {})}

    def key(i: int) -> bytes:
        return f"hostile-{i}".encode()

    return [
        lambda r, i: (key(i), _dump(own(i)).replace(b'"hostile-', b'"\xff\xfe', 1), "invalid utf-8"),
        lambda r, i: (key(i), _dump([own(i)]), "json array"),
        lambda r, i: (key(i), str(r.randrange(10**9)).encode(), "json number"),
        lambda r, i: (key(i), b"[" * 10_000 + b"]" * 10_000, "nested 10k levels"),
        lambda r, i: (key(i), _dump({**own(i), "ts": 10**30}), "huge number"),
        lambda r, i: (key(i), _dump(own(i))[:-1] + b', "quantity": NaN}', "NaN"),
        lambda r, i: (key(i), _dump(own(i))[:-1] + b', "score": Infinity}', "Infinity"),
        lambda r, i: (key(i), _dump({**own(i), text_field: r.randrange(100)}), "wrong type"),
        lambda r, i: (key(i), _dump({**own(i), "schema_version": r.choice([0, 7, 99, "one", 1.5])}),
                      "unknown schema_version"),
        lambda r, i: (key(i), _dump(own(i))[:-1] + f', "{text_field}": "hostile-{i}"}}'.encode(), "repeated key"),
        lambda r, i: (b"", _dump(own(i)), "empty key"),
        lambda r, i: (b"someone-else", _dump(own(i)), "foreign key"),
        lambda r, i: (key(i), _dump({**own(i), "ts": "0001-01-01T00:00:00+23:59"}), "timestamp out of range"),
        lambda r, i: (key(i), _dump({**own(i), text_field: f"a\x00{i}"}), "NUL"),
        lambda r, i: (key(i), bytes(r.randrange(256) for _ in range(r.randrange(1, 200))), "random bytes"),
        lambda r, i: (key(i), _mutate(r, _dump(own(i))), "mutated event"),
        lambda r, i: (key(i), _dump({k: v for k, v in own(i).items() if k != key_field}), "missing id"),
    ]


def _mutate(r: random.Random, raw: bytes) -> bytes:
    """A few byte flips, cuts or inserts of a valid event (re-drawn until it is not valid JSON of the
    same object: a flip inside a string can leave it valid)."""
    data = bytearray(raw)
    for _ in range(r.randrange(1, 4)):
        op, at = r.randrange(3), r.randrange(len(data))
        if op == 0:
            data[at] = r.randrange(256)
        elif op == 1:
            del data[at:at + r.randrange(1, 8)]
        else:
            data[at:at] = bytes([r.choice(b'{}[]",:\\0')])
    try:
        if json.loads(bytes(data)) == json.loads(raw):
            return raw[:-1]  # unchanged meaning: cut the closing brace instead
    except ValueError:
        pass
    else:
        return bytes(data) + b"]"  # parsed, but to something else: make sure it is broken
    return bytes(data)


def hostile_records(
    valid: dict[str, Any], key_field: str, n: int, seed: int = 0, oversized: int = 2, null_values: bool = True
) -> list[Record]:
    """``n`` hostile records built around one valid event (as a JSON dict).

    ``oversized`` of them are 3 MB (larger than a dead letter may be); ``null_values``
    adds records with no value (wrong on a non-compacted topic; a tombstone on a compacted one).
    """
    r = random.Random(seed)
    kinds = _kinds(valid, key_field)
    out = [kinds[i % len(kinds)](r, i) for i in range(n)]
    for j in range(min(oversized, n)):
        out[j * 997 % n] = (f"hostile-big-{j}".encode(), b'{"x": "' + b"y" * 3 * 1024 * 1024 + b'"}', "3 MB")
    if null_values:
        for i in range(5, n, 101):
            out[i] = (f"hostile-null-{i}".encode(), None, "null value")
    return out
