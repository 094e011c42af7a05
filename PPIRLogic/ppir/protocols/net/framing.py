"""Typed, versioned, length-prefixed messages: a JSON header plus raw numpy arrays.

Frame: b"PPIR" | version (u16) | kind (u16) | header length (u32) | body length (u64) | header | body.
The header is UTF-8 JSON: {"meta": {...}, "arrays": [[name, dtype, shape], ...]}; the body holds the
arrays' bytes in that order. ``parse_prefix`` checks the kind and the lengths against per-kind limits
before anything is read; ``decode`` checks every header field. Both raise only ``FramingError``.
"""
from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

MAGIC = b"PPIR"
VERSION = 1
PREFIX = struct.Struct("!4sHHIQ")
MAX_HEADER = 1 << 20
MAX_DIMS = 8
MAX_NAME = 64
MAX_EXTENT = 1 << 40   # per axis; the body length bounds the product
DTYPES = {"float64", "float32", "int64", "uint64", "int32", "uint8"}


class FramingError(Exception):
    """A frame that is malformed, oversized, of an unexpected kind or of another protocol version."""


@dataclass
class Message:
    kind: int
    meta: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def encode(message: Message) -> bytes:
    arrays = [(name, np.ascontiguousarray(a)) for name, a in message.arrays.items()]
    for name, a in arrays:
        if a.dtype.name not in DTYPES:
            raise ValueError(f"array {name!r}: dtype {a.dtype} cannot be sent")
    header = json.dumps({"meta": message.meta,
                         "arrays": [[n, a.dtype.name, list(a.shape)] for n, a in arrays]}).encode()
    body = b"".join(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes() for _, a in arrays)
    return PREFIX.pack(MAGIC, VERSION, message.kind, len(header), len(body)) + header + body


def parse_prefix(prefix: bytes, limits: int | Mapping[int, int]) -> tuple[int, int, int]:
    """Kind, header length and body length of a frame.

    ``limits``: the largest body accepted, for every kind (an int) or per expected kind (a mapping;
    any other kind is refused).
    """
    if len(prefix) != PREFIX.size:
        raise FramingError(f"message prefix of {len(prefix)} bytes, expected {PREFIX.size}")
    magic, version, kind, header_len, body_len = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise FramingError("not a PPIR message (bad magic)")
    if version != VERSION:
        raise FramingError(f"peer speaks PPIR message version {version}, this side {VERSION}")
    if isinstance(limits, Mapping) and kind not in limits:
        raise FramingError(f"unexpected message kind {kind}")
    max_body = limits[kind] if isinstance(limits, Mapping) else limits
    if header_len > MAX_HEADER:
        raise FramingError(f"message header of {header_len} bytes exceeds the limit of {MAX_HEADER}")
    if body_len > max_body:
        raise FramingError(f"message body of {body_len} bytes exceeds the limit of {max_body} for kind {kind}")
    return kind, header_len, body_len


def _specs(header: bytes | bytearray) -> tuple[dict, list[tuple[str, np.dtype, tuple[int, ...]]]]:
    """The header's meta and array descriptions, each field checked."""
    try:
        parsed = json.loads(bytes(header).decode("utf-8"))
    except (ValueError, RecursionError):
        raise FramingError("malformed message header (not UTF-8 JSON)") from None
    if not isinstance(parsed, dict) or set(parsed) != {"meta", "arrays"}:
        raise FramingError("malformed message header (expected meta and arrays)")
    meta, specs = parsed["meta"], parsed["arrays"]
    if not isinstance(meta, dict) or not isinstance(specs, list):
        raise FramingError("malformed message header (meta must be an object, arrays a list)")
    checked, names = [], set()
    for spec in specs:
        if not isinstance(spec, list) or len(spec) != 3:
            raise FramingError("malformed array description (expected [name, dtype, shape])")
        name, dtype, shape = spec
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME or name in names:
            raise FramingError("array name missing, too long or repeated")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise FramingError(f"array {name!r}: unsupported dtype")
        if (not isinstance(shape, list) or len(shape) > MAX_DIMS
                or not all(type(s) is int and 0 <= s <= MAX_EXTENT for s in shape)):
            raise FramingError(f"array {name!r}: shape must be at most {MAX_DIMS} integers in [0, {MAX_EXTENT}]")
        if math.prod(s for s in shape if s) > MAX_EXTENT:      # an empty array's other extents count too (numpy)
            raise FramingError(f"array {name!r}: its extents multiply to more than {MAX_EXTENT}")
        names.add(name)
        checked.append((name, np.dtype(dtype).newbyteorder("<"), tuple(shape)))
    return meta, checked


def decode(kind: int, header: bytes | bytearray, body: bytes | bytearray) -> Message:
    """The message of a frame's header and body; raises only FramingError."""
    meta, specs = _specs(header)
    arrays, offset = {}, 0
    for name, dtype, shape in specs:
        count = math.prod(shape)
        if offset + count * dtype.itemsize > len(body):
            raise FramingError(f"array {name!r} runs past the end of the message")
        array = np.frombuffer(body, dtype=dtype, count=count, offset=offset).reshape(shape)
        arrays[name] = array if dtype.isnative else array.astype(dtype.newbyteorder("="))
        offset += count * dtype.itemsize
    if offset != len(body):
        raise FramingError("message body has trailing bytes")
    return Message(kind, meta, arrays)
