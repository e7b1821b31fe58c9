"""Plain-value codec and length-prefixed frames: the only things that cross a sandbox boundary.

Runs on both sides (the trusted parent and inside the envelope), so it uses the standard library
only. Values are encoded as JSON with tags for the types JSON lacks; the decoder builds *exact*
builtin types (`type(v) is int`, never a subclass), so an object with a hostile `__eq__`,
`__hash__` or `__repr__` cannot reach the grader: it fails to encode in the untrusted process and
that is reported as an unsupported value. Decoding never evaluates anything (no pickle, no eval).
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

MAX_DEPTH = 64
_HEADER = struct.Struct(">I")
_SEQ_TAGS: dict[type, str] = {list: "l", tuple: "t", set: "s", frozenset: "f"}


class CodecError(ValueError):
    """A value that is not plain data, or a payload that is not a valid encoding."""


def encode(value: Any, depth: int = 0) -> Any:
    """A JSON-able tree for a plain value; raises CodecError for anything else."""
    if depth > MAX_DEPTH:
        raise CodecError("value nested too deeply")
    t = type(value)
    if value is None or t is bool or t is int or t is str:
        return value
    if t is float:
        # NaN/inf are not JSON; tag them so they round-trip exactly.
        return value if value == value and abs(value) != float("inf") else {"x": repr(value)}
    if t is list or t is tuple or t is set or t is frozenset:
        tag = _SEQ_TAGS[t]
        return {tag: [encode(v, depth + 1) for v in value]}
    if t is dict:
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if t is bytes:
        return {"b": value.hex()}
    if t is complex:
        return {"c": [encode(value.real, depth + 1), encode(value.imag, depth + 1)]}
    raise CodecError(f"values of type {t.__name__} are not plain data")


def decode(tree: Any, depth: int = 0) -> Any:
    """The plain value of an encoded tree, built from exact builtin types only."""
    if depth > MAX_DEPTH:
        raise CodecError("value nested too deeply")
    t = type(tree)
    if tree is None or t is bool or t is int or t is str or t is float:
        return tree
    if t is not dict or len(tree) != 1:
        raise CodecError(f"not an encoded value: {type(tree).__name__}")
    ((tag, body),) = tree.items()
    if tag == "x" and body in ("nan", "inf", "-inf"):
        return float(body)
    if tag == "b" and type(body) is str:
        return bytes.fromhex(body)
    if type(body) is not list:
        raise CodecError(f"tag {tag!r} needs a list")
    items = [decode(v, depth + 1) for v in body] if tag != "d" else None
    if tag == "l":
        return items
    if tag == "t":
        return tuple(items or ())
    if tag in ("s", "f"):
        try:
            return set(items or ()) if tag == "s" else frozenset(items or ())
        except TypeError as exc:
            raise CodecError(f"unhashable set member: {exc}") from None
    if tag == "c" and len(body) == 2:
        return complex(decode(body[0], depth + 1), decode(body[1], depth + 1))
    if tag == "d":
        return _decode_dict(body, depth)
    raise CodecError(f"unknown tag {tag!r}")


def _decode_dict(body: list, depth: int) -> dict:
    out = {}
    for pair in body:
        if type(pair) is not list or len(pair) != 2:
            raise CodecError("dict items must be [key, value] pairs")
        try:
            out[decode(pair[0], depth + 1)] = decode(pair[1], depth + 1)
        except TypeError as exc:
            raise CodecError(f"unhashable dict key: {exc}") from None
    return out


def dumps(value: Any) -> str:
    return json.dumps(encode(value), separators=(",", ":"))


def loads(text: str | bytes) -> Any:
    try:
        return decode(json.loads(text))
    except (json.JSONDecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise CodecError(f"malformed payload: {type(exc).__name__}") from None


# -- frames: 4-byte big-endian length, then that many bytes ----------------------------------


def write_frame(fd: int, payload: bytes) -> None:
    data = _HEADER.pack(len(payload)) + payload
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_exact_into(fd: int, buf: bytearray, size: int) -> None:
    """Read exactly `size` bytes into `buf[:size]` without intermediate bytes objects.

    Reading into a caller-owned bytearray lets the zygote zero a secret payload after use, so
    a later untrusted process forked from it cannot find it in freed memory.
    """
    view = memoryview(buf)[:size]
    got = 0
    while got < size:
        n = os.readv(fd, [view[got:]])
        if n == 0:
            raise EOFError("peer closed the channel")
        got += n


def read_frame(fd: int, limit: int) -> bytes:
    """One frame (blocking); EOFError at end of stream, CodecError when over `limit` bytes."""
    head = bytearray(4)
    read_exact_into(fd, head, 4)
    (size,) = _HEADER.unpack(head)
    if size > limit:
        raise CodecError(f"frame of {size} bytes exceeds the {limit}-byte limit")
    body = bytearray(size)
    read_exact_into(fd, body, size)
    return bytes(body)
