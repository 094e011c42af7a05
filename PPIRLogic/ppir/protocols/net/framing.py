"""Typed, versioned, length-prefixed messages: a JSON header plus raw numpy arrays.

Frame: b"PPIR" | version (u16) | kind (u16) | header length (u32) | body length (u64) | header | body.
The header is UTF-8 JSON: {"meta": {...}, "arrays": [[name, dtype, shape], ...]}; the body holds the
arrays' bytes in that order. Lengths are checked against limits before anything is allocated.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

import numpy as np

MAGIC = b"PPIR"
VERSION = 1
PREFIX = struct.Struct("!4sHHIQ")
MAX_HEADER = 1 << 20
DTYPES = {"float64", "float32", "int64", "uint64", "int32", "uint8"}


class FramingError(Exception):
    """A frame that is malformed, oversized or of another protocol version."""


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


def parse_prefix(prefix: bytes, max_body: int) -> tuple[int, int, int]:
    """Kind, header length and body length of a frame, or FramingError."""
    magic, version, kind, header_len, body_len = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise FramingError("not a PPIR message (bad magic)")
    if version != VERSION:
        raise FramingError(f"peer speaks PPIR message version {version}, this side {VERSION}")
    if header_len > MAX_HEADER:
        raise FramingError(f"message header of {header_len} bytes exceeds the limit of {MAX_HEADER}")
    if body_len > max_body:
        raise FramingError(f"message body of {body_len} bytes exceeds the limit of {max_body}")
    return kind, header_len, body_len


def decode(kind: int, header: bytes | bytearray, body: bytes | bytearray) -> Message:
    try:
        parsed = json.loads(bytes(header).decode())
        meta, specs = parsed["meta"], parsed["arrays"]
        if not isinstance(meta, dict) or not isinstance(specs, list):
            raise TypeError
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        raise FramingError("malformed message header") from None
    arrays, offset = {}, 0
    for spec in specs:
        try:
            name, dtype, shape = spec
            dtype = np.dtype(dtype).newbyteorder("<")
            shape = tuple(int(s) for s in shape)
        except (ValueError, TypeError):
            raise FramingError("malformed array description") from None
        if dtype.name not in DTYPES or any(s < 0 for s in shape):
            raise FramingError(f"array {name!r}: unsupported dtype or shape")
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if offset + size > len(body):
            raise FramingError(f"array {name!r} runs past the end of the message")
        array = np.frombuffer(body, dtype=dtype, count=size // dtype.itemsize, offset=offset).reshape(shape)
        arrays[str(name)] = array if dtype.isnative else array.astype(dtype.newbyteorder("="))
        offset += size
    if offset != len(body):
        raise FramingError("message body has trailing bytes")
    return Message(kind, meta, arrays)
