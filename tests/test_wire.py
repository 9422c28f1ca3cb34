"""The wire is the grader's attack surface: hostile replies cost bounded memory and time, and messages stay short.

Two layers: ``wire`` itself on hand-made messages (every hostile shape, cheaply), and a real
Worker whose student module writes raw bytes to the reply pipe, as a submission can.
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest
import torch

from graders.engine import expect, wire
from graders.engine.plaindata import shorten
from graders.engine.sandbox import StudentError, Worker, WorkerDied
from tests.conftest import scratch_worker

MIB = 1 << 20


def message(text: bytes, data: bytes = b"") -> tuple[bytearray, int]:
    """(body, json length) of a hand-made message, as the transport hands them to ``decode_body``."""
    text += b" " * (-len(text) % wire.ALIGN)
    return bytearray(text + data), len(text)


def bounded(fn, *, seconds: float, mib: int) -> object:
    """Run ``fn``; assert it took under ``seconds`` and allocated under ``mib`` MiB more (Python heap, buffers included)."""
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    try:
        result = fn()
    except Exception as exc:
        result = exc
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    assert elapsed < seconds, f"took {elapsed:.2f} s (bound {seconds} s)"
    assert peak < mib * MIB, f"allocated {peak / MIB:.0f} MiB (bound {mib} MiB)"
    return result


# ---------------------------------------------------------------------------- the format itself
def test_round_trip_keeps_types_and_values():
    value = {
        "t": (1, -2.5, float("inf"), None, True, "s\u00e9\ud800", b"\x00\xff", b""),
        "d": {"t": [1], "d": {}, "__handle__": 3, 7: "int key"},  # keys that look like tags are just keys
        "x": torch.arange(6, dtype=torch.int16).reshape(2, 3).t(),  # non-contiguous: sent contiguous
        "b": torch.tensor([True, False]),
        "h": torch.randn(3, dtype=torch.bfloat16),
        "e": torch.empty(0, 4),
        "s": torch.tensor(2.0, dtype=torch.float64),
        "dtype": torch.float16,
        "big": 2**100,
    }
    body = wire.encode(value)
    out = wire.decode(body)
    assert out.keys() == value.keys() and out["t"] == value["t"] and out["d"] == value["d"] and out["big"] == 2**100
    for k in ("x", "b", "h", "e", "s"):
        assert type(out[k]) is torch.Tensor and out[k].dtype == value[k].dtype and torch.equal(out[k], value[k]), k
    assert out["dtype"] is torch.float16
    assert wire.decode(wire.encode(float("nan"))) != wire.decode(wire.encode(float("nan")))  # NaN survives


def test_a_stride_0_tensor_is_sent_as_its_own_bytes():
    expanded = torch.zeros(1).expand(1000)
    out = wire.decode(wire.encode(expanded))
    assert out.stride() == (1,) and out.untyped_storage().nbytes() == 4000
    exc = bounded(lambda: wire.encode(torch.zeros(1).expand(10**10)), seconds=1, mib=1)  # 40 GB logical
    assert isinstance(exc, wire.WireError) and "over the" in str(exc), exc


@pytest.mark.parametrize(
    "value",
    [torch.ones(2).to_sparse(), torch.ones(2, dtype=torch.complex64), torch.device("cpu"), bytearray(b"x"), {1.5: 2}],
    ids=["sparse", "complex", "device", "bytearray", "float-key"],
)
def test_not_plain_data_is_refused_at_encoding(value):
    with pytest.raises(wire.WireError):
        wire.encode(value)


def test_a_list_that_holds_itself_is_refused():
    loop: list = []
    loop.append(loop)
    with pytest.raises(wire.WireError, match="nested deeper"):
        wire.encode(loop)


M = 16 * MIB - 256
HOSTILE = {
    "deeply nested": (b"[" * M, "containers"),
    "millions of empty lists": (b"[" + b"[]," * (M // 3 - 10) + b"[]]", "containers"),
    "millions of strings": (b"[" + b'"a",' * (M // 4 - 10) + b'"a"]', "strings"),
    "a 16 MB number": (b"1" * M, "number literal"),
    "an unterminated string": (b'"' + b"a" * M, "not valid JSON"),
    "nesting under the caps": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "an object that is not a tag": (b'{"a": 1, "b": 2}', "one-key tag"),
    "an unknown tag": (b'{"pickle": "cos\\nsystem"}', "unknown"),
    "a dict with a repeated key": (b'{"d": [["k", 1], ["k", 2]]}', "unique"),
    "a tensor larger than its bytes": (b'{"T": ["float32", [1000000000]]}', "declares 4000000000 bytes"),
    "a tensor of an unknown dtype": (b'{"T": ["object", [1]]}', "dtype"),
    "a negative dimension": (b'{"T": ["float32", [-1]]}', "non-negative"),
    "bytes beyond the data": (b'{"B": 100}', "declares 100 bytes"),
    "data nothing refers to": (b"1", "refers to"),
    "not ASCII": ('"\u00e9"'.encode(), "ASCII"),
}


@pytest.mark.parametrize("text,why", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_structures_are_refused_cheaply(text: bytes, why: str):
    body, json_len = message(text, b"\0" * 8 if why in ("refers to", "declares 4000000000 bytes") else b"")
    exc = bounded(lambda: wire.decode_body(body, json_len), seconds=3, mib=64)
    assert isinstance(exc, wire.WireError), f"accepted: {type(exc).__name__}"
    assert why in str(exc) and len(str(exc)) < 300, str(exc)


def test_legit_large_structures_decode_within_bounds():
    """What lessons really send (a long text, 100k ids, a long text full of commas and brackets) is accepted."""
    for value in ("a, [b] {c}: " * (1 * MIB), list(range(100_000)), [(i, i + 1) for i in range(50_000)]):
        body = wire.encode(value)
        out = bounded(lambda body=body: wire.decode(body), seconds=3, mib=200)
        assert out == value


def test_bool_tensors_hold_only_0_and_1():
    body, json_len = message(b'{"T": ["bool", [4]]}', b"\x00\x01\x02\x00")
    with pytest.raises(wire.WireError, match="bool"):
        wire.decode_body(body, json_len)


@pytest.mark.parametrize(
    "header,why",
    [
        (wire.HEADER.pack(b"PK\x03\x04", 64, 0), "not a wire message"),
        (wire.HEADER.pack(wire.MAGIC, 1 << 40, 0), "structure of"),
        (wire.HEADER.pack(wire.MAGIC, 64, 1 << 40), "over the"),
        (wire.HEADER.pack(wire.MAGIC, 65, 0), "multiple of"),
    ],
    ids=["zip", "huge-json", "huge-data", "unaligned"],
)
def test_headers_are_checked_before_reading_the_body(header: bytes, why: str):
    with pytest.raises(wire.WireError, match=why):
        wire.read_header(header)


# ---------------------------------------------------------------------------- messages stay short
def test_shorten_bounds_any_value():
    huge = "x" * (100 * MIB)
    for value in (huge, [huge], {"k": (huge,)}, list(range(10**6)), b"y" * 10**7, 10**5000, torch.zeros(10**6)):
        text = bounded(lambda value=value: shorten(value), seconds=0.5, mib=1)
        assert len(text) < 300, (type(value).__name__, len(text))
    assert "(104857600 characters in all)" in shorten(huge)
    assert shorten("fine") == "fine" and shorten((1, "a")) == "(1, 'a')"


def test_expect_messages_never_echo_a_huge_value():
    huge = "x" * (100 * MIB)
    for check in (
        lambda: expect.tensor(huge, "output"),
        lambda: expect.pair(huge, "f"),
        lambda: expect.close(huge, torch.zeros(2), "output", 0, 0),
        lambda: expect.close(torch.zeros(3, 2), torch.zeros(2), "output", 0, 0),
    ):
        with pytest.raises(AssertionError) as info:
            check()
        assert len(str(info.value)) < 400, str(info.value)[:400]


# ---------------------------------------------------------------------------- through a real worker
HOSTILE_MODULE = '''
import os, sys, threading, time

import _llmg_wire as wire

REP = int(sys.argv[2])
REQ = int(sys.argv[1])


def raw(payload, then="hang"):
    """Write ``payload`` to the reply pipe as if it were the reply, then hang (or exit)."""
    view = memoryview(payload)
    while view:
        view = view[os.write(REP, view):]
    if then == "exit":
        os._exit(0)
    time.sleep(3600)


def reply(value, size=0):
    """A well-formed reply holding ``value`` (``size``: an error string of that many characters instead)."""
    if not size:
        raw(wire.encode(value))
    text = b'{"d":[["ok",false],["error","' + b"e" * size + b'"]]}'
    text += b" " * (-len(text) % wire.ALIGN)
    raw(wire.HEADER.pack(wire.MAGIC, len(text), 0) + text)


def zip_bomb(inflated):
    """What the old transport inflated: a zip member that deflates to ``inflated`` bytes, framed as before."""
    import io, struct, zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data/0", b"\\0" * inflated)
    data = buf.getvalue()
    raw(struct.pack(">Q", len(data)) + data)


def nested(depth):
    value = [1]
    for _ in range(depth):
        value = [value]
    return value


def expanded(n):
    import torch
    return torch.zeros(1).expand(n)


def huge_error(n):
    raise ValueError("x" * n)


def forge_later(delay):
    """Return now; a thread writes a forged reply into the pipe while no request is pending."""
    threading.Thread(target=lambda: (time.sleep(delay), raw(wire.encode({"ok": True, "value": 42}))), daemon=True).start()
    return "real"


def stop_reading():
    """From now on nobody reads the request pipe (kept open, so the grader's writes just block)."""
    keep = os.dup(REQ)
    r, w = os.pipe()
    os.dup2(r, REQ)
    globals()["_keep"] = (keep, r, w)
    return "ok"


def echo(x):
    return x
'''


@pytest.fixture
def worker(tmp_path: Path):
    with scratch_worker(tmp_path, {"hostile": HOSTILE_MODULE}) as w:
        w.request({"op": "ping"})  # started before anything is measured
        yield w


def dies(worker: Worker, function: str, *args: object, kind: str = "protocol", timeout: float = 20) -> WorkerDied:
    exc = bounded(lambda: worker.call("hostile", function, args, timeout=timeout), seconds=timeout + 10, mib=48)
    assert isinstance(exc, WorkerDied), f"{function}{args}: {type(exc).__name__}: {shorten(str(exc))}"
    assert exc.kind == kind, (exc.kind, str(exc))
    assert len(str(exc)) < 1200, len(str(exc))
    return exc


@pytest.mark.parametrize(
    "header",
    [wire.HEADER.pack(wire.MAGIC, 1 << 40, 0), wire.HEADER.pack(wire.MAGIC, 64, 1 << 40), b"\0" * wire.HEADER.size],
    ids=["huge-json", "huge-data", "garbage"],
)
def test_a_reply_that_claims_a_huge_size_is_refused_at_once(worker: Worker, header: bytes):
    exc = dies(worker, "raw", header)
    assert "unreadable reply" in str(exc)
    assert worker.call("hostile", "echo", (5,)) == 5  # the next request gets a fresh worker


def test_a_reply_that_declares_much_and_sends_little_costs_only_what_it_sent(worker: Worker):
    """512 MiB declared (under the cap), 1 KiB sent, then silence: a timeout, and no 512 MiB buffer."""
    exc = dies(worker, "raw", wire.HEADER.pack(wire.MAGIC, 64, 512 * MIB) + b" " * 1024, kind="timeout", timeout=3)
    assert "over the 3 s budget" in str(exc)


def test_a_zip_bomb_is_not_inflated(worker: Worker):
    exc = dies(worker, "zip_bomb", 64 * MIB)
    assert "not a wire message" in str(exc)


def test_a_costly_structure_is_refused_through_the_worker(worker: Worker):
    exc = dies(worker, "raw", wire.HEADER.pack(wire.MAGIC, 16 * MIB, 0) + b"[" * (16 * MIB))
    assert "containers" in str(exc)


def test_a_tensor_larger_than_its_bytes_is_refused(worker: Worker):
    text = b'{"d": [["ok", true], ["value", {"T": ["float32", [1000000000]]}]]}'
    body, json_len = message(text, b"\0" * 64)
    exc = dies(worker, "raw", wire.HEADER.pack(wire.MAGIC, json_len, len(body) - json_len) + bytes(body))
    assert "declares 4000000000 bytes" in str(exc)


def test_a_stride_0_reply_is_refused_in_the_worker_or_sent_dense(worker: Worker):
    exc = bounded(lambda: worker.call("hostile", "expanded", (10**10,)), seconds=10, mib=8)  # 40 GB logical
    assert isinstance(exc, StudentError) and "could not be sent back" in str(exc) and "over the" in str(exc), exc
    small = worker.call("hostile", "expanded", (1000,))
    assert small.stride() == (1,) and small.untyped_storage().nbytes() == 4000


def test_deep_nesting_is_refused_both_ways(worker: Worker):
    with pytest.raises(StudentError, match="nested deeper"):  # the honest worker refuses to encode it
        worker.call("hostile", "nested", (100,))
    deep: list = [1]
    for _ in range(30):
        deep = [deep]
    exc = dies(worker, "reply", {"ok": True, "value": deep})  # a forged reply under the wire's cap, over plaindata's
    assert "nested too deeply" in str(exc)


def test_a_100_mb_error_message_stays_short(worker: Worker):
    exc = bounded(lambda: worker.call("hostile", "huge_error", (100 * MIB,)), seconds=20, mib=8)
    assert isinstance(exc, StudentError) and len(str(exc)) <= 2100, exc  # raised by the student's code: cut in the worker
    with pytest.raises(StudentError) as info:  # a forged reply of 15 MB: cut in the grader
        worker.call("hostile", "reply", (None, 15 * MIB))
    assert len(str(info.value)) <= 2100
    worker.close()  # the forging function still hangs in there: start afresh
    exc = dies(worker, "reply", None, 100 * MIB)  # 100 MB: over the structure cap, refused unread
    assert "structure of" in str(exc)


def test_bytes_before_a_request_are_a_protocol_error(worker: Worker):
    assert worker.call("hostile", "forge_later", (0.2,)) == "real"
    time.sleep(1.0)
    exc = dies(worker, "echo", 1)
    assert "before it was asked" in str(exc)


def test_a_worker_that_stops_reading_cannot_stall_the_grader(worker: Worker):
    """The grader's writes have the request's deadline too: a full pipe nobody reads ends in a timeout."""
    assert worker.call("hostile", "stop_reading") == "ok"
    exc = bounded(lambda: worker.call("hostile", "echo", (b"x" * (4 * MIB),), timeout=3), seconds=15, mib=48)
    assert isinstance(exc, WorkerDied) and exc.kind == "timeout", exc
