"""The wire between grader and worker: plain data as JSON plus raw tensor bytes, nothing that runs code.

Replies are untrusted bytes, so the format is one a hostile worker cannot make costly:
no pickle, no zip, no compression (nothing inflates), and every size is declared up front
and checked before anything is allocated. A message is

    header   ">4sQQ": magic b"LLW1", JSON length (a multiple of 64), data length
    JSON     ASCII; the structure, with each tensor or bytes value as a tag
    data     the raw bytes of every tensor and bytes value, in document order

JSON objects are always one-key tags, so no user key can be mistaken for one:
``{"t": [...]}`` tuple, ``{"d": [[key, value], ...]}`` dict (str or int keys; replies: str only, see plaindata),
``{"T": [dtype, shape]}`` tensor, ``{"B": n}`` bytes, ``{"D": name}`` torch dtype.
Lists, str, int, float (NaN and infinities included), bool and None are JSON's own.
A tensor is C-contiguous, 64-byte aligned in the data section, and owns exactly
``numel * itemsize`` bytes: a stride-0 or oversized logical tensor cannot be expressed.
Decoding is linear in the message size; its memory is bounded by the JSON caps
(containers and items are counted before ``json.loads``) and the data length.

This file is copied next to the worker and must import nothing from the engine.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import dataclass

import torch

MAGIC = b"LLW1"
HEADER = struct.Struct(">4sQQ")
ALIGN = 64
_PAD = b"\0" * ALIGN
DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, name)
    for name in ("float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool")
}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}
# A JSON string (ASCII, escapes included). Possessive: no backtracking, so linear time and constant memory.
_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"')


class WireError(ValueError):
    """A message is malformed, over a limit, or holds something that is not plain data."""


@dataclass(frozen=True)
class Limits:
    """Caps on one message; the defaults fit every lesson's replies with a wide margin."""

    max_json_bytes: int = 16 << 20
    max_data_bytes: int = 1 << 30
    max_containers: int = 400_000  # JSON arrays + objects (tags included)
    max_tokens: int = 1_000_000  # JSON values, counted by their separators
    max_depth: int = 64  # nesting of the encoded structure
    max_number_chars: int = 64  # digits of one int or float literal
    max_dims: int = 16


DEFAULT = Limits()


# ---------------------------------------------------------------------------- encode
def encode_parts(obj: object, limits: Limits = DEFAULT) -> list[bytes | memoryview]:
    """``obj`` as message pieces (header, JSON, raw buffers) to write in order, without joining them."""
    buffers: list[bytes | memoryview] = []
    size = 0

    def add(buf: bytes | memoryview, nbytes: int, align: int) -> None:
        nonlocal size
        pad = -size % align
        if pad:
            buffers.append(_PAD[:pad])
        buffers.append(buf)
        size += pad + nbytes
        if size > limits.max_data_bytes:
            raise WireError(f"message data is over the {limits.max_data_bytes} byte limit")

    def walk(x: object, depth: int) -> object:
        if depth > limits.max_depth:
            raise WireError(f"structure nested deeper than {limits.max_depth} levels (or a list that holds itself)")
        t = type(x)
        if x is None or t is str or t is bool or t is float:
            return x
        if t is int:
            if x.bit_length() > 3 * limits.max_number_chars:
                raise WireError(f"an int of {x.bit_length()} bits is too large")
            return x
        if t is list:
            return [walk(v, depth + 1) for v in x]
        if t is tuple:
            return {"t": [walk(v, depth + 1) for v in x]}
        if t is dict:
            items = []
            for k, v in x.items():
                if type(k) is not str and type(k) is not int:
                    raise WireError(f"dict keys must be str or int, got {type(k).__name__}")
                items.append([k, walk(v, depth + 1)])
            return {"d": items}
        if t is bytes:
            add(x, len(x), 1)
            return {"B": len(x)}
        if t is torch.dtype:
            if x not in _NAMES:
                raise WireError(f"dtype {x} is not one of {', '.join(DTYPES)}")
            return {"D": _NAMES[x]}
        if t is torch.Tensor or t is torch.nn.Parameter:
            return _tensor(x)
        raise WireError(f"{t.__module__}.{t.__qualname__} is not plain data")

    def _tensor(x: torch.Tensor) -> object:
        if x.layout is not torch.strided or x.device.type != "cpu" or x.is_quantized:
            raise WireError(f"tensor must be a dense CPU tensor, got layout={x.layout} device={x.device}")
        if x.dtype not in _NAMES:
            raise WireError(f"tensor dtype {x.dtype} is not one of {', '.join(DTYPES)}")
        nbytes = x.numel() * x.element_size()  # checked before .contiguous() can expand a stride-0 view
        if nbytes > limits.max_data_bytes:
            raise WireError(f"a tensor of {nbytes} bytes is over the {limits.max_data_bytes} byte limit")
        x = x.detach().resolve_conj().resolve_neg().contiguous()
        raw = x.reshape(-1).view(torch.uint8).numpy() if nbytes else b""
        add(memoryview(raw), nbytes, ALIGN)
        return {"T": [_NAMES[x.dtype], list(x.shape)]}

    tree = walk(obj, 0)
    text = json.dumps(tree, ensure_ascii=True, separators=(",", ":"), check_circular=False).encode("ascii")
    text += b" " * (-len(text) % ALIGN)
    if len(text) > limits.max_json_bytes:
        raise WireError(f"message structure of {len(text)} bytes is over the {limits.max_json_bytes} byte limit")
    return [HEADER.pack(MAGIC, len(text), size), text, *buffers]


def encode(obj: object, limits: Limits = DEFAULT) -> bytes:
    """``obj`` as one message (header included)."""
    return b"".join(encode_parts(obj, limits))


# ---------------------------------------------------------------------------- decode
def read_header(header: bytes, limits: Limits = DEFAULT) -> tuple[int, int]:
    """(JSON length, data length) from a message header, checked against the limits."""
    if len(header) != HEADER.size:
        raise WireError(f"header of {len(header)} bytes, expected {HEADER.size}")
    magic, json_len, data_len = HEADER.unpack(header)
    if magic != MAGIC:
        raise WireError(f"not a wire message (starts with {magic!r})")
    if not 0 < json_len <= limits.max_json_bytes or json_len % ALIGN:
        raise WireError(f"structure of {json_len} bytes (limit {limits.max_json_bytes}, a multiple of {ALIGN})")
    if data_len > limits.max_data_bytes:
        raise WireError(f"data of {data_len} bytes is over the {limits.max_data_bytes} byte limit")
    return json_len, data_len


def _number(limit: int, kind: type):
    def parse(text: str) -> object:
        if len(text) > limit:
            raise WireError(f"a number literal of {len(text)} characters (limit {limit})")
        return kind(text)

    return parse


def _counts(text: bytes) -> tuple[int, int]:
    containers = text.count(b"[") + text.count(b"{")
    return containers, containers + text.count(b",") + text.count(b":")


def _check_counts(text: bytes, limits: Limits) -> None:
    """Bound what ``json.loads`` will build, before it runs: containers and values, counted in C.

    Counting the whole text over-counts brackets and separators inside strings; only when that
    bound is over a cap are the strings blanked out (at most ``max_tokens`` of them) and the count redone.
    """
    containers, tokens = _counts(text)
    if containers > limits.max_containers or tokens > limits.max_tokens:
        if text.count(b'"') > 2 * limits.max_tokens:
            raise WireError(f"structure of over {limits.max_tokens} strings is over the limit")
        containers, tokens = _counts(_STRING.sub(b'""', text))
    if containers > limits.max_containers or tokens > limits.max_tokens:
        raise WireError(
            f"structure of {containers} containers and {tokens} values is over the limits "
            f"({limits.max_containers} and {limits.max_tokens})"
        )


def decode_body(body: bytearray, json_len: int, limits: Limits = DEFAULT) -> object:
    """The object in a message body (JSON then data), read from a header of ``json_len``.

    Tensors share ``body``'s memory (no copy); ``body`` must be a bytearray.
    """
    data_len = len(body) - json_len
    if data_len < 0:
        raise WireError("message body is shorter than its structure")
    text = bytes(memoryview(body)[:json_len])
    if not text.isascii():
        raise WireError("message structure is not ASCII")
    _check_counts(text, limits)
    cursor = 0

    def take(nbytes: int, align: int, what: str) -> int:
        nonlocal cursor
        start = cursor + (-cursor % align)
        if start + nbytes > data_len:
            raise WireError(f"{what} declares {nbytes} bytes but only {max(data_len - start, 0)} remain")
        cursor = start + nbytes
        return json_len + start

    def tensor(spec: object) -> torch.Tensor:
        if type(spec) is not list or len(spec) != 2 or type(spec[0]) is not str or type(spec[1]) is not list:
            raise WireError("tensor tag malformed")
        name, shape = spec
        if name not in DTYPES:
            raise WireError(f"tensor dtype {name[:40]!r} is not one of {', '.join(DTYPES)}")
        if len(shape) > limits.max_dims or not all(type(d) is int and d >= 0 for d in shape):
            raise WireError("tensor shape must be at most 16 non-negative ints")
        dtype = DTYPES[name]
        itemsize = torch.empty((), dtype=dtype).element_size()
        numel = math.prod(shape)
        offset = take(numel * itemsize, ALIGN, f"a {name} tensor of shape {shape}")
        if numel == 0:
            return torch.empty(shape, dtype=dtype)
        if dtype is torch.bool:
            raw = torch.frombuffer(body, dtype=torch.uint8, count=numel, offset=offset)
            if int(raw.max()) > 1:
                raise WireError("a bool tensor holds bytes other than 0 and 1")
            return raw.view(torch.bool).reshape(shape)
        return torch.frombuffer(body, dtype=dtype, count=numel, offset=offset).reshape(shape)

    def hook(pairs: list[tuple[str, object]]) -> object:
        if len(pairs) != 1:
            raise WireError("a JSON object that is not a one-key tag")
        tag, value = pairs[0]
        if tag == "t" and type(value) is list:
            return tuple(value)
        if tag == "d" and type(value) is list:
            out: dict = {}
            for item in value:
                if type(item) is not list or len(item) != 2 or type(item[0]) not in (str, int) or item[0] in out:
                    raise WireError("dict tag malformed (pairs of a unique str or int key and a value)")
                out[item[0]] = item[1]
            return out
        if tag == "T":
            return tensor(value)
        if tag == "B" and type(value) is int and value >= 0:
            start = take(value, 1, "a bytes value")
            return bytes(memoryview(body)[start : start + value])
        if tag == "D" and type(value) is str and value in DTYPES:
            return DTYPES[value]
        raise WireError(f"unknown or malformed tag {tag[:20]!r}")

    try:
        obj = json.loads(
            text.decode("ascii"),
            object_pairs_hook=hook,
            parse_int=_number(limits.max_number_chars, int),
            parse_float=_number(limits.max_number_chars, float),
        )
    except RecursionError:
        raise WireError("structure nested too deeply") from None
    except WireError:
        raise
    except ValueError as exc:  # json.JSONDecodeError and friends
        raise WireError(f"structure is not valid JSON: {str(exc)[:120]}") from None
    if cursor != data_len:
        raise WireError(f"{data_len - cursor} data bytes that nothing in the structure refers to")
    return obj


def decode(message: bytes | bytearray, limits: Limits = DEFAULT) -> object:
    """The object in one whole message (header included)."""
    json_len, data_len = read_header(bytes(message[: HEADER.size]), limits)
    if len(message) != HEADER.size + json_len + data_len:
        raise WireError(f"message of {len(message)} bytes, its header says {HEADER.size + json_len + data_len}")
    return decode_body(bytearray(message[HEADER.size :]), json_len, limits)


# ---------------------------------------------------------------------------- blocking fd helpers (the worker's side)
def read_exact(fd: int, n: int) -> bytearray:
    """``n`` bytes from ``fd``; EOFError if it closes first. Memory grows only with bytes received."""
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError("the pipe closed mid-message")
        buf += chunk
    return buf


def read_message(fd: int, limits: Limits = DEFAULT) -> object:
    """One message from ``fd`` (EOFError at a clean end of the stream)."""
    json_len, data_len = read_header(bytes(read_exact(fd, HEADER.size)), limits)
    return decode_body(read_exact(fd, json_len + data_len), json_len, limits)


def write_all(fd: int, parts: list[bytes | memoryview]) -> None:
    """Write every part to a blocking ``fd``."""
    for part in parts:
        view = memoryview(part).cast("B")
        while view:
            view = view[os.write(fd, view) :]
