"""Corrupt-segment fuzz (SPEC §5 "Bad segments"): files placed directly in
/dev/shm under a stream's OS name -- random bytes, truncated segments,
zeroed headers, valid headers with one field forged, forged metadata with a
matching hash, and random byte flips -- must make ``gb.attach`` raise a
``gb.GlobalBufferError`` subclass (BufferCorrupt): never crash, hang, read
out of bounds or succeed with a wrong view of the segment.

Every attach runs in a child interpreter (with faulthandler and an
address-space limit), one case at a time with a deadline, so a segfault,
an abort, a runaway allocation or a hang fails the test and names the case.
"""
import json
import os
import select
import struct
import subprocess
import sys
import textwrap
import time
import uuid

import numpy as np
import pydantic
import pytest

import global_buffer as gb
from global_buffer import _core
from global_buffer.schema import encode_meta, model_schema
from global_buffer.stream import _meta_hash

CASE_TIMEOUT = 10.0

# gb_header field offsets (global_buffer/csrc/gb_ring.h)
F = {
    "magic": ("<Q", 0), "version": ("<I", 8), "header_size": ("<I", 12), "kind": ("<I", 16),
    "flags": ("<I", 20), "nslots": ("<I", 24), "capacity": ("<I", 28),
    "slot_size": ("<Q", 32), "slot_stride": ("<Q", 40), "slots_offset": ("<Q", 48),
    "total_size": ("<Q", 56), "schema_hash": ("<Q", 64), "meta_offset": ("<I", 72),
    "meta_len": ("<I", 76), "tail": ("<Q", 128),
}
U32, U64 = 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF


class Msg(pydantic.BaseModel):
    n: int
    text: str


WORKER = textwrap.dedent(r"""
    import faulthandler, json, resource, sys
    faulthandler.enable()
    import numpy as np
    import global_buffer as gb

    # a forged size must become a MemoryError here, never the OOM killer:
    # allow 2 GiB of address space beyond what the imports took
    with open("/proc/self/status") as f:
        vm = [int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:")][0]
    resource.setrlimit(resource.RLIMIT_AS, (vm + (2 << 30), vm + (2 << 30)))

    def fp(x):
        if x is None:
            return None
        if isinstance(x, np.ndarray):
            return x.tolist()
        return repr(sorted(x.items())) if isinstance(x, dict) else repr(x)

    def attempt(res, key, fn):
        try:
            res[key] = ["ok", fp(fn())]
        except gb.GlobalBufferError as e:
            res[key] = ["error", type(e).__name__, str(e)[:300]]
        except BaseException as e:
            res[key] = ["other", type(e).__name__, str(e)[:300]]

    def view(r):
        if r.dtype is None:
            return None
        with r.view("latest") as v:
            return None if v is None else v.copy()

    print("ready", flush=True)
    for line in sys.stdin:
        case = json.loads(line)
        res = {"id": case["id"]}
        try:
            r = gb.attach(case["name"], start="oldest")
        except gb.GlobalBufferError as e:
            res["attach"] = ["error", type(e).__name__, str(e)[:300]]
        except BaseException as e:
            res["attach"] = ["other", type(e).__name__, str(e)[:300]]
        else:
            res["attach"] = ["ok"]
            res["fp"] = [r.capacity, list(r.shape) if r.shape else None, str(r.dtype)]
            ops = case.get("read") or []
            if ops is True:
                ops = ["next", "view"]
            if "no-latest" not in ops:
                attempt(res, "latest", r.latest)
            if "next" in ops:
                attempt(res, "next", lambda: r.next(timeout=0.3))
            if "view" in ops:
                attempt(res, "view", lambda: view(r))
            r.close()
        print(json.dumps(res), flush=True)
""")


class Worker:
    """A child interpreter that attaches to one named case at a time."""

    def __init__(self):
        self.p = None

    def _start(self):
        self.p = subprocess.Popen([sys.executable, "-X", "faulthandler", "-c", WORKER],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, bufsize=1)
        assert self._line(60) == "ready"

    def _line(self, timeout):
        ready, _, _ = select.select([self.p.stdout], [], [], timeout)
        if not ready:
            return None
        return self.p.stdout.readline().strip()

    def run(self, case):
        if self.p is None:
            self._start()
        self.p.stdin.write(json.dumps(case) + "\n")
        self.p.stdin.flush()
        t0 = time.monotonic()
        line = self._line(CASE_TIMEOUT)
        if line:
            res = json.loads(line)
            res["secs"] = time.monotonic() - t0
            return res
        # crash (EOF) or hang: report it with the child's stderr, start afresh
        hung = self.p.poll() is None
        self.p.kill()
        _, err = self.p.communicate(timeout=10)
        code = self.p.returncode
        self.p = None
        return {"id": case["id"], "attach": ["crash" if not hung else "hang", code, err[-2000:]]}

    def close(self):
        if self.p is not None:
            try:
                self.p.communicate(input="", timeout=10)   # EOF ends the worker
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.communicate(timeout=5)
            self.p = None


@pytest.fixture
def worker():
    w = Worker()
    w._start()      # before any file is planted: planted files live only briefly
    yield w
    w.close()


@pytest.fixture
def plant():
    """Write raw bytes as /dev/shm/gb.<name>; every file is removed after."""
    made = []

    def put(data):
        name = f"test-corrupt-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        fd = os.open(f"/dev/shm/gb.{name}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        made.append(name)
        try:
            os.write(fd, bytes(data))
        finally:
            os.close(fd)
        return name

    yield put
    for name in made:
        gb.unlink(name)


# -- valid bases --------------------------------------------------------------------

def _snapshot(name):
    with open(f"/dev/shm/gb.{name}", "rb") as f:
        return bytearray(f.read())


@pytest.fixture(scope="module")
def bases():
    """Bytes of valid array and message segments, with what a correct attach
    sees in them (capacity, shape, dtype, latest)."""
    out = {}
    tag = f"test-corrupt-base-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with gb.create(tag + "-a", gb.ArraySpec("int64", (8,)), 4) as w:
            for i in range(6):
                w.write(np.full(8, i, np.int64))
            out["array"] = (_snapshot(tag + "-a"), [4, [8], "int64"], [5] * 8)
        with gb.create(tag + "-m", Msg, 4, max_bytes=128) as w:
            for i in range(3):
                w.write(Msg(n=i, text="x" * i))
            out["message"] = (_snapshot(tag + "-m"), [4, None, "None"],
                              repr(sorted({"n": 2, "text": "xx"}.items())))
    finally:
        gb.unlink(tag + "-a")
        gb.unlink(tag + "-m")
    return out


def _set(data, field, value):
    fmt, off = F[field]
    b = bytearray(data)
    struct.pack_into(fmt, b, off, value)
    return b


def _get(data, field):
    fmt, off = F[field]
    return struct.unpack_from(fmt, data, off)[0]


def _forge(meta_obj, kind=_core.KIND_ARRAY, capacity=4, slot_size=64, schema_hash=None,
           raw=None):
    """A segment laid out by the real core around arbitrary metadata, with
    a matching schema hash unless told otherwise (a deliberate forgery)."""
    raw = raw if raw is not None else encode_meta(meta_obj)
    if schema_hash is None:
        schema_hash = _meta_hash(meta_obj) if isinstance(meta_obj, dict) and "kind" in meta_obj \
            and (meta_obj["kind"] != "message" or "schema" in meta_obj) else 12345
    size = _core.segment_nbytes(kind, 0, capacity, slot_size, len(raw))
    buf = bytearray(size)
    _core.init_segment(buf, kind, 0, capacity, slot_size, 0, schema_hash, raw, 1, 1)
    return buf


def _run_all(worker, plant, cases, ok_fp=None):
    """Run each (id, bytes[, read]) case in the worker; return failures."""
    bad = []
    outcomes = {}
    for case in cases:
        cid, data = case[0], case[1]
        name = plant(data)
        res = worker.run({"id": cid, "name": name, "read": len(case) > 2 and case[2]})
        gb.unlink(name)
        a = res["attach"]
        key = a[0] if a[0] != "error" else a[1]
        outcomes[key] = outcomes.get(key, 0) + 1
        if a[0] == "error":
            continue
        if a[0] == "ok" and ok_fp is not None and ok_fp(cid, res):
            continue
        bad.append(res)
    print(f"{len(cases)} cases: {outcomes}")
    assert sum(outcomes.values()) == len(cases)
    return bad


def _fmt(bad):
    return "\n".join(json.dumps(b)[:600] for b in bad[:20])


# -- tests --------------------------------------------------------------------------

def test_garbage_and_truncated_files(worker, plant, bases):
    """§5: random bytes of many sizes (empty included), random bytes behind
    a valid magic, truncated valid segments and zeroed headers all raise a
    GlobalBufferError subclass in attach."""
    rng = np.random.default_rng(20240601)
    arr = bytes(bases["array"][0])
    msg = bytes(bases["message"][0])
    magic = arr[:8]
    cases = []
    for size in (0, 1, 7, 8, 9, 63, 64, 1023, 1024, 1025, 4096, 8192, 65536):
        for k in range(2):
            cases.append((f"random-{size}-{k}", rng.bytes(size)))
    for size in (8, 1024, 4096, len(arr)):
        for k in range(3):
            cases.append((f"magic+random-{size}-{k}", magic + rng.bytes(size - 8)))
    for k in range(6):   # valid magic and version, random rest of the header
        hdr = bytearray(arr)
        hdr[12:1024] = rng.bytes(1012)
        cases.append((f"header-random-{k}", hdr))
    for base_name, base in (("array", arr), ("message", msg)):
        slots = _get(base, "slots_offset")
        for cut in (8, 63, 64, 127, 512, 1023, 1024, 2048, slots, slots + 1,
                    len(base) - 4096, len(base) - 64, len(base) - 1):
            cases.append((f"{base_name}-truncated-{cut}", base[:cut]))
        cases.append((f"{base_name}-zero-header", bytes(1024) + base[1024:]))
        cases.append((f"{base_name}-zero-first-line", bytes(64) + base[64:]))
        cases.append((f"{base_name}-all-zero", bytes(len(base))))
        cases.append((f"{base_name}-all-ff", b"\xff" * len(base)))
    bad = _run_all(worker, plant, cases)
    assert not bad, _fmt(bad)


def _field_cases(base, tag):
    nslots, cap = _get(base, "nslots"), _get(base, "capacity")
    ssize, stride = _get(base, "slot_size"), _get(base, "slot_stride")
    soff, total = _get(base, "slots_offset"), _get(base, "total_size")
    mlen = _get(base, "meta_len")
    muts = {
        "magic": [0, _get(base, "magic") ^ 1, int.from_bytes(b"GB_RGR02", "little"), U64],
        "version": [0, 2, U32],
        "header_size": [0, 512, 2048, U32],
        "kind": [0, 3, 4, 5, U32, 1 if _get(base, "kind") == 2 else 2],
        "flags": [1, 3],
        "nslots": [0, 1, nslots - 1, nslots + 1, 1 << 30, (1 << 30) + 1, 1 << 31, U32],
        "capacity": [0, cap + 1, nslots, U32],
        "slot_size": [0 if ssize > 0 else 1, ssize * 2 + 4096, 1 << 46, (1 << 46) + 1,
                      1 << 63, U64],
        "slot_stride": [0, stride + 64, stride - 64, 1 << 63, U64],
        "slots_offset": [0, 1024, soff + 4096, 1 << 63, U64],
        "total_size": [0, total - 1, total + 1, total + 4096, 1 << 63, U64],
        "schema_hash": [_get(base, "schema_hash") ^ 1, 0],
        "meta_offset": [0, 1023, 1025, 4096, U32],
        "meta_len": [0, mlen - 1, mlen + 1, 4096, (1 << 20) + 1, U32],
    }
    cases = []
    for field, values in muts.items():
        for v in values:
            cases.append((f"{tag}-{field}={v:#x}", _set(base, field, v)))
    # consistent-looking but too big for the file
    big = _set(_set(base, "nslots", nslots + 100), "capacity", cap + 100)
    big = _set(big, "total_size", soff + (nslots + 100) * stride)
    cases.append((f"{tag}-more-slots-than-file", big))
    longer = _set(base, "meta_len", 5000)
    longer = _set(_set(longer, "slots_offset", 8192), "total_size", 8192 + nslots * stride)
    cases.append((f"{tag}-meta-longer-than-file", longer))
    return cases


def test_forged_header_fields(worker, plant, bases):
    """§5: a valid segment with one header field forged (magic, version,
    header size, kind, flags, nslots, capacity, slot size/stride, offsets,
    total size, schema hash, metadata offset/length) raises a
    GlobalBufferError subclass in attach."""
    cases = _field_cases(bases["array"][0], "array") + _field_cases(bases["message"][0], "msg")
    # an array stream whose slot_size is forged below the sample size while
    # the stride (and so every offset) stays consistent
    cases.append(("array-slot_size-below-sample", _set(bases["array"][0], "slot_size", 8)))
    bad = _run_all(worker, plant, cases)
    assert not bad, _fmt(bad)


def test_size_overflow_forgery(worker, plant):
    """§5: a header whose nslots * slot_stride wraps 64 bits (2^30 slots of
    2^34 bytes) must not pass as a tiny segment: attaching it would index
    far outside the mapping."""
    meta = {"kind": "array", **gb.ArraySpec("int64", (8,)).to_json()}
    raw = encode_meta(meta)
    base = _forge(meta)
    soff = _get(base, "slots_offset")
    b = _set(base, "nslots", 1 << 30)
    b = _set(b, "capacity", (1 << 30) - 1)
    b = _set(b, "slot_size", (1 << 34) - 64)
    b = _set(b, "slot_stride", 1 << 34)
    b = _set(b, "total_size", (soff + (1 << 30) * (1 << 34)) & U64)
    assert len(raw) < 4096 - 1024
    bad = _run_all(worker, plant, [("overflow", bytes(b[:soff]) + bytes(4096)),
                                   ("overflow-exact", bytes(b[:soff]))])
    assert not bad, _fmt(bad)


def _forged_meta_cases():
    spec = gb.ArraySpec("int64", (8,)).to_json()
    msg_meta = {"kind": "message", "model": "x.Msg", "schema": model_schema(Msg)}
    metas = {
        "kind-missing": {"dtype": "<i8", "shape": [8]},
        "kind-unknown": {"kind": "bogus"},
        "kind-not-str": {"kind": [1, 2]},
        "array-no-dtype": {"kind": "array", "shape": [8]},
        "array-no-shape": {"kind": "array", "dtype": "<i8"},
        "array-object-dtype": {"kind": "array", "dtype": "|O", "shape": [8]},
        "array-bad-dtype": {"kind": "array", "dtype": "<q99", "shape": [8]},
        "array-dtype-dict": {"kind": "array", "dtype": {"x": 1}, "shape": [8]},
        "array-dtype-list": {"kind": "array", "dtype": [["a"]], "shape": [8]},
        "array-dtype-int": {"kind": "array", "dtype": 5, "shape": [8]},
        "array-shape-str": {"kind": "array", "dtype": "<i8", "shape": "abc"},
        "array-shape-neg": {"kind": "array", "dtype": "<i8", "shape": [-1]},
        "array-shape-float": {"kind": "array", "dtype": "<i8", "shape": [1.5]},
        "array-shape-null": {"kind": "array", "dtype": "<i8", "shape": None},
        "array-shape-huge": {"kind": "array", "dtype": "<i8", "shape": [1 << 32, 1 << 32]},
        "array-shape-huge-zero": {"kind": "array", "dtype": "<i8", "shape": [0, 1 << 70]},
        "array-shape-too-big-for-slot": {"kind": "array", "dtype": "<i8", "shape": [9]},
        "array-too-many-dims": {"kind": "array", "dtype": "<i8", "shape": [1] * 40},
        "array-as-message-kind": dict(spec, kind="message"),
        "message-no-schema": {"kind": "message"},
    }
    cases = []
    for cid, meta in metas.items():
        kind = _core.KIND_MESSAGE if meta.get("kind") == "message" else _core.KIND_ARRAY
        cases.append((f"meta-{cid}", _forge(meta, kind=kind)))
    # header kind and metadata kind disagree (hash valid)
    cases.append(("meta-array-in-message-header",
                  _forge({"kind": "array", **spec}, kind=_core.KIND_MESSAGE)))
    cases.append(("meta-message-in-array-header", _forge(msg_meta, kind=_core.KIND_ARRAY)))
    cases.append(("meta-array-in-object-header",
                  _forge({"kind": "array", **spec}, kind=_core.KIND_OBJECT)))
    # metadata that is not JSON / not a dict / pathological
    for cid, raw in {"not-utf8": b"\xff\xfe\x00garbage", "not-json": b"{kind: array",
                     "json-list": b"[1, 2, 3]", "json-string": b'"array"',
                     "json-number": b"1e999", "json-null": b"null",
                     "deep-nesting": b"[" * 100000 + b"]" * 100000,
                     "deep-dict": b'{"a":' * 50000 + b"1" + b"}" * 50000,
                     "nul-bytes": b"\x00" * 300}.items():
        cases.append((f"meta-{cid}", _forge(None, raw=raw)))
    return cases


def test_forged_metadata_with_matching_hash(worker, plant):
    """§5: schema metadata forged so its hash matches (so only the metadata
    itself is wrong): unknown kinds, impossible dtypes and shapes, header
    kind disagreeing with the metadata, non-JSON, deeply nested JSON -- all
    raise a GlobalBufferError subclass, never another exception."""
    bad = _run_all(worker, plant, _forged_meta_cases())
    assert not bad, _fmt(bad)


def test_forged_valid_segment_attaches(worker, plant):
    """Control for the oracle: a segment forged by the same route but with
    honest metadata attaches and reads back."""
    meta = {"kind": "array", **gb.ArraySpec("int64", (8,)).to_json()}
    name = plant(_forge(meta))
    res = worker.run({"id": "honest", "name": name, "read": True})
    assert res["attach"] == ["ok"], res
    assert res["fp"] == [4, [8], "int64"] and res["latest"] == ["ok", None], res


def test_random_header_and_metadata_flips(worker, plant, bases):
    """§5: random byte flips in the validated header fields and in the
    schema metadata of valid segments.  Each attach either raises a
    GlobalBufferError subclass or, if the flip changed nothing that matters,
    sees exactly the original stream (capacity, shape, dtype, newest
    sample) -- never a crash, a hang or a wrong view."""
    rng = np.random.default_rng(1234)
    cases = []
    expect = {}
    for base_name in ("array", "message"):
        base, fp, latest = bases[base_name]
        mlen = _get(base, "meta_len")
        # validated identity fields; flags (a bit field) is tested by value above
        positions = [p for p in range(0, 80) if not 20 <= p < 24] + \
            list(range(1024, 1024 + mlen))
        for k in range(90):
            b = bytearray(base)
            for p in rng.choice(positions, size=int(rng.integers(1, 4)), replace=False):
                old = b[p]
                b[p] = (old + int(rng.integers(1, 256))) & 0xFF
            cid = f"flip-{base_name}-{k}"
            cases.append((cid, b, True))
            expect[cid] = (fp, latest)

    def same(cid, res):
        fp, latest = expect[cid]
        reads_fine = all(res.get(k, ["ok"])[0] in ("ok", "error") for k in ("latest", "next",
                                                                             "view"))
        return res["fp"] == fp and res["latest"] == ["ok", latest] and reads_fine

    bad = _run_all(worker, plant, cases, ok_fp=same)
    assert not bad, _fmt(bad)


def test_garbage_slots_behind_valid_header(worker, plant, bases):
    """§5: a valid header whose slots hold garbage (or whose commit counter
    is forged) attaches, but reads never return garbage, crash or hang:
    latest() raises BufferCorrupt (the slot never validates while the
    writer makes no progress) and next(timeout) raises gb.Empty or
    BufferCorrupt within a bounded time."""
    rng = np.random.default_rng(99)
    arr, msg = bases["array"][0], bases["message"][0]

    def slots(base, fill):
        b = bytearray(base)
        soff = _get(base, "slots_offset")
        b[soff:] = fill(len(b) - soff)
        return b

    cases = [
        ("array-random-slots", slots(arr, rng.bytes), ["next", "view"]),
        ("message-random-slots", slots(msg, rng.bytes), ["next", "no-latest"]),
        ("array-ff-slots+tail=7", _set(slots(arr, lambda n: b"\xff" * n), "tail", 7), []),
        ("array-tail=max", _set(arr, "tail", U64), ["next", "no-latest"]),
        ("message-tail=2^40", _set(msg, "tail", 1 << 40), ["next", "no-latest"]),
    ]
    bad = []
    for cid, data, ops in cases:
        name = plant(data)
        t0 = time.monotonic()
        res = worker.run({"id": cid, "name": name, "read": ops})
        gb.unlink(name)
        took = time.monotonic() - t0
        reads = [res[k] for k in ("latest", "next", "view") if k in res]
        if res["attach"] != ["ok"] or not reads or any(v[0] != "error" for v in reads) \
                or took > 5:
            bad.append(res)
        elif "latest" in res and res["latest"][1] != "BufferCorrupt":
            bad.append(res)
    assert not bad, _fmt(bad)
