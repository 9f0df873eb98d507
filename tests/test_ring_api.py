"""gb.Ring beyond the stdlib Queue API (SPEC §3.1, §3.2, §5, §6): batches,
broadcast rings, stream verbs, ArraySpec and pydantic payloads, serializers,
attach/pickling into children, Pools and unrelated processes, lifetime,
permissions, bad arguments, asyncio, and clean-up of out-of-line items.

The behaviour shared with ``multiprocessing.Queue`` is in
test_ring_parity.py; kill and stress runs are in test_ring_stress.py.
Every test also runs under the autouse /dev/shm leak check of conftest.py.
"""
import asyncio
import gc
import json
import multiprocessing as mp
import os
import pickle
import queue
import stat
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pydantic
import pytest

import global_buffer as gb
from global_buffer import segment

TIMEOUT = 30
SHORT = 0.15


def shm_path(name):
    return "/dev/shm" + segment.os_name(name)


def exists(name):
    return os.path.exists(shm_path(name))


def ring_files(name):
    """The ring's segment and its out-of-line blobs, as names."""
    return [n for n in segment.list_names() if n == name or n.startswith(name + ".b")]


def bounded(fn, timeout=TIMEOUT):
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{fn} did not return within {timeout}s"
    if "error" in out:
        raise out["error"]
    return out.get("value")


def drain(r, timeout=SHORT):
    out = []
    while True:
        try:
            out.append(r.get(timeout=timeout))
        except gb.Empty:
            return out


class Msg(pydantic.BaseModel):
    n: int
    name: str = ""
    values: list = []


class OtherMsg(pydantic.BaseModel):
    n: float


def json_dumps(obj):
    return json.dumps(obj).encode()


def json_loads(data):
    return json.loads(bytes(data))


# -- put_many / get_many ------------------------------------------------------------

def test_put_many_get_many_order():
    """§3.1: put_many puts in order; get_many(max_items) returns up to
    max_items items in order, at least one."""
    r = gb.Ring()
    r.put_many(range(100))
    r.put_many(iter([100, 101]))          # any iterable
    r.put_many([])                        # nothing: no error
    assert r.qsize() == 102
    assert r.get_many(10) == list(range(10))
    assert r.get_many(1000, timeout=TIMEOUT) == list(range(10, 102))
    assert r.qsize() == 0


def test_get_many_waits_for_the_first_then_takes_what_is_there():
    """§3.1: get_many blocks (up to timeout) for the first item only."""
    r = gb.Ring()
    t0 = time.monotonic()
    with pytest.raises(gb.Empty):
        r.get_many(5, timeout=SHORT)
    assert SHORT - 0.02 <= time.monotonic() - t0 < SHORT + 2
    t0 = time.monotonic()
    for call in (lambda: r.get_many(5, block=False), lambda: r.get_many(5, False, 5)):
        with pytest.raises(queue.Empty):
            call()
    assert time.monotonic() - t0 < 2
    threading.Timer(0.2, lambda: r.put("late")).start()
    assert r.get_many(5, timeout=TIMEOUT) == ["late"]


def test_put_many_bounded_full_and_timeout():
    """§3.1: on a bounded ring put_many puts what fits, then raises Full when
    block=False or when the timeout passes; those items stay put."""
    r = gb.Ring(4)
    t0 = time.monotonic()
    with pytest.raises(gb.Full):
        r.put_many(range(6), timeout=SHORT)
    assert SHORT - 0.02 <= time.monotonic() - t0 < SHORT + 2
    assert r.get_many(10) == [0, 1, 2, 3]
    with pytest.raises(queue.Full):
        r.put_many(range(10, 20), block=False)
    assert r.get_many(10) == [10, 11, 12, 13]


def test_put_many_blocks_until_consumers_free_space():
    """§3.1: put_many into a small bounded ring completes as a consumer
    thread drains it; every item arrives once, in order."""
    r = gb.Ring(8)
    got = []

    def consume():
        while len(got) < 2000:
            got.extend(r.get_many(64, timeout=TIMEOUT))

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    r.put_many(range(2000), timeout=TIMEOUT)
    t.join(TIMEOUT)
    assert not t.is_alive() and got == list(range(2000))


def test_put_many_unbounded_never_blocks():
    """§3.1: maxsize <= 0: put_many of more items than the ring holds
    returns at once (the rest wait in this process, in order)."""
    r = gb.Ring(capacity=16)
    t0 = time.monotonic()
    r.put_many(range(500))
    assert time.monotonic() - t0 < 5
    assert r.qsize() == 500
    got = []
    while len(got) < 500:
        got += r.get_many(100, timeout=TIMEOUT)
    assert got == list(range(500))


def test_deferred_items_keep_order_across_kinds():
    """§3.1: items that find the ring full wait in this process in order,
    whatever path they take into a slot: plain data, a pickle, a frame with
    an out-of-band array, an out-of-line item."""
    r = gb.Ring(capacity=4)
    items = []
    for i in range(60):
        kind = i % 4
        items.append((i, "plain") if kind == 0 else
                     {i, "pickled"} if kind == 1 else
                     (i, np.full(10, i, np.int64)) if kind == 2 else
                     (i, b"x" * 10_000))
    for obj in items:
        r.put(obj)                     # 56 of them deferred
    got = [r.get(timeout=TIMEOUT) for _ in items]
    for want, obj in zip(items, got):
        if isinstance(want, tuple) and isinstance(want[1], np.ndarray):
            assert obj[0] == want[0] and np.array_equal(obj[1], want[1])
        else:
            assert obj == want


def test_feeder_restarts_after_its_thread_died():
    """§3.1 "nothing lost": if the feeder thread dies (here: an injected
    error while it waits for room), the next deferred put starts another,
    and every item still arrives in order."""
    r = gb.Ring(capacity=2)
    boom = threading.Event()

    def fail_once(put, timeout):
        boom.set()
        raise RuntimeError("injected")

    r._wait_ready = fail_once           # the feeder waits through this
    old_hook = threading.excepthook
    threading.excepthook = lambda args: None
    try:
        for i in range(5):
            r.put(i)                   # 3 deferred; the feeder dies waiting
        assert boom.wait(TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while r._feeder is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert r._feeder is None
        del r._wait_ready
        assert r.get(timeout=TIMEOUT) == 0
        r.put(5)                       # deferred behind 2..4: starts a feeder
        assert [r.get(timeout=TIMEOUT) for _ in range(5)] == [1, 2, 3, 4, 5]
    finally:
        threading.excepthook = old_hook
        r.close()


def test_put_many_get_many_bad_arguments_and_closed():
    """§3.1/§5: get_many needs an int >= 1; both raise ValueError once closed."""
    r = gb.Ring()
    with pytest.raises(ValueError):
        r.get_many(0)
    with pytest.raises(TypeError):
        r.get_many("3")
    r.close()
    with pytest.raises(ValueError, match="closed"):
        r.put_many([1])
    with pytest.raises(ValueError, match="closed"):
        r.get_many(3)


def test_joinable_put_many_counts_tasks():
    """§3.2: items put with put_many are tasks for join()/task_done()."""
    for maxsize in (0, 8):
        r = gb.JoinableRing(maxsize)
        r.put_many(range(5))
        assert not r.join(timeout=SHORT)
        for _x in r.get_many(5, timeout=TIMEOUT):
            r.task_done()
        assert r.join(timeout=TIMEOUT)
        with pytest.raises(ValueError):
            r.task_done()


def _child_put_many(r, lo, hi):
    r.put_many(range(lo, hi), timeout=TIMEOUT)


def test_put_many_get_many_across_processes(ctx, children):
    """§3.1: two producer children put_many; the parent's get_many sees each
    producer's items in order and every item exactly once."""
    r = gb.Ring(64)
    ps = [children.start(ctx, _child_put_many, r, k * 1000, k * 1000 + 800) for k in range(2)]
    got = []
    while len(got) < 1600:
        got += r.get_many(100, timeout=TIMEOUT)
    for p in ps:
        assert children.join(p, TIMEOUT) == 0
    assert sorted(got) == list(range(800)) + list(range(1000, 1800))
    assert [x for x in got if x < 1000] == list(range(800))
    with pytest.raises(gb.Empty):
        r.get(timeout=SHORT)


# -- broadcast ---------------------------------------------------------------------

def test_broadcast_put_never_blocks_and_overwrites_oldest():
    """§3.1: broadcast put never blocks; the oldest items are overwritten;
    a reader that was lapped jumps to the oldest held and counts overruns."""
    r = gb.Ring(broadcast=True, capacity=4)
    assert r.broadcast and r.capacity == 4 and r.maxsize == 0 and not r.full()
    t0 = time.monotonic()
    for i in range(100):
        r.put(i, block=False)
    r.put_nowait(100)
    assert time.monotonic() - t0 < 5
    assert r.get(timeout=TIMEOUT) == 97
    assert r.overruns == 97
    assert [r.next(timeout=TIMEOUT) for _ in range(3)] == [98, 99, 100]
    with pytest.raises(gb.Empty):
        r.get(timeout=SHORT)
    with pytest.raises(gb.Empty):
        r.get_nowait()
    assert r.overruns == 97


def test_broadcast_every_handle_reads_every_item():
    """§3.1: every handle reads every item from its own cursor; a handle
    attached later starts after the newest item, as stream readers do."""
    a = gb.Ring(broadcast=True, capacity=16)
    b = gb.Ring.attach(a.name)
    assert b.broadcast
    for i in range(5):
        a.put(i)
    late = gb.Ring.attach(a.name)
    assert [a.get(timeout=TIMEOUT) for _ in range(5)] == list(range(5))
    assert b.get_many(10, timeout=TIMEOUT) == list(range(5))
    with pytest.raises(gb.Empty):
        late.get(timeout=SHORT)
    b.put("from b")                      # any handle may put
    assert late.get(timeout=TIMEOUT) == "from b"
    assert a.get(timeout=TIMEOUT) == "from b" and b.get(timeout=TIMEOUT) == "from b"
    assert a.overruns == b.overruns == late.overruns == 0


def test_broadcast_qsize_latest_next():
    """§3.1: qsize is what this handle has not read yet (at most capacity);
    latest() returns the newest item without moving any cursor; None when
    nothing was put."""
    r = gb.Ring(broadcast=True, capacity=8)
    assert r.latest() is None and r.qsize() == 0 and r.empty()
    for i in range(3):
        r.put({"i": i})
    assert r.qsize() == 3
    assert r.latest() == {"i": 2} and r.latest() == {"i": 2}
    assert r.next(timeout=TIMEOUT) == {"i": 0}
    assert r.qsize() == 2
    for i in range(3, 20):
        r.put({"i": i})
    assert r.qsize() == 8
    assert r.latest() == {"i": 19}


def test_broadcast_item_larger_than_slot_goes_out_of_line():
    """§3.1: broadcast items may be of any size: one larger than max_bytes
    travels out of line (tests/test_broadcast_large.py has the rest)."""
    r = gb.Ring(broadcast=True, capacity=4, max_bytes=1000)
    try:
        r.put("small")
        r.put(b"x" * 5000)
        assert r.latest() == b"x" * 5000
        assert r.get(timeout=TIMEOUT) == "small"
        assert r.get(timeout=TIMEOUT) == b"x" * 5000
        with pytest.raises(gb.Empty):
            r.get(timeout=SHORT)
    finally:
        r.close()
        r.unlink()


def test_broadcast_arrays_and_messages():
    """§3.1: broadcast rings carry ArraySpec arrays and pydantic messages."""
    a = gb.Ring(broadcast=True, capacity=4, schema=gb.ArraySpec("int32", (3,)))
    m = gb.Ring(broadcast=True, capacity=4, schema=Msg)
    a.put(np.arange(3, dtype=np.int32))
    m.put({"n": 1})
    x = a.get(timeout=TIMEOUT)
    assert x.dtype == np.int32 and list(x) == [0, 1, 2] and x.flags.writeable
    assert m.get(timeout=TIMEOUT) == Msg(n=1)
    assert gb.Ring.attach(m.name, model=Msg).latest() == Msg(n=1)


def _child_broadcast_reader(r, ready, results, n):
    ready.put(os.getpid())
    results.put(("got", [r.get(timeout=TIMEOUT) for _ in range(n)], r.overruns))


def test_broadcast_across_processes(ctx, children):
    """§3.1: two child processes (ring passed as an argument) each read
    every item put by the parent, in order, with no overruns."""
    r = gb.Ring(broadcast=True, capacity=256)
    ready, results = gb.Ring(), gb.Ring()
    ps = [children.start(ctx, _child_broadcast_reader, r, ready, results, 200) for _ in range(2)]
    ready.get(timeout=TIMEOUT), ready.get(timeout=TIMEOUT)
    for i in range(200):
        r.put(i)
    for _ in ps:
        tag, got, overruns = results.get(timeout=TIMEOUT)
        assert got == list(range(200)) and overruns == 0
    for p in ps:
        assert children.join(p, TIMEOUT) == 0


# -- stream verbs on queue rings -----------------------------------------------------

def test_queue_latest_never_consumes():
    """§3.1: latest() on a queue ring returns the newest item still held
    (also an out-of-line one) without consuming anything; None when empty."""
    r = gb.Ring()
    assert r.latest() is None
    r.put(1)
    r.put({"a": np.arange(3)})
    assert r.latest()["a"].tolist() == [0, 1, 2]
    assert r.qsize() == 2
    big = b"B" * 100_000
    r.put(big)
    assert r.latest() == big and r.latest() == big
    assert r.qsize() == 3
    assert r.get(timeout=TIMEOUT) == 1
    assert r.latest() == big
    r.get(timeout=TIMEOUT)
    assert r.get(timeout=TIMEOUT) == big
    assert r.latest() is None
    assert r.qsize() == 0


def test_queue_next_is_get():
    """§3.1: next(timeout) is get() on queue rings (gb.Empty on timeout)."""
    r = gb.Ring()
    r.put("a")
    r.put("b")
    assert r.next() == "a" and r.next(timeout=TIMEOUT) == "b"
    t0 = time.monotonic()
    with pytest.raises(gb.Empty):
        r.next(timeout=SHORT)
    assert time.monotonic() - t0 >= SHORT - 0.02


def test_qsize_is_a_shared_counter(ctx, children):
    """§3.1: qsize() counts items in the segment: items put by a child that
    has exited are counted by the parent and by another handle."""
    r = gb.Ring()
    p = children.start(ctx, _child_put_many, r, 0, 5)
    assert children.join(p, TIMEOUT) == 0
    other = gb.Ring.attach(r.name)
    assert r.qsize() == other.qsize() == 5
    assert other.get(timeout=TIMEOUT) == 0
    assert r.qsize() == 4 and not r.empty()
    assert r.get_many(10) == [1, 2, 3, 4]
    assert other.qsize() == 0 and other.empty()


# -- ArraySpec rings ----------------------------------------------------------------

def test_arrayspec_ring_roundtrip_and_validation():
    """§3.1/§5: an ArraySpec ring carries arrays of exactly that dtype and
    shape; anything else raises ValueError/TypeError saying what was
    expected, and nothing is put."""
    spec = gb.ArraySpec("float32", (2, 3))
    r = gb.Ring(schema=spec, capacity=4)
    assert r.schema == spec
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    r.put(a)
    r.put(np.asfortranarray(a))          # non-C-contiguous: accepted, copied
    r.put(np.arange(12, dtype=np.float32).reshape(2, 6)[:, ::2])
    for bad, exc, what in ((a.astype(np.float64), ValueError, "float32"),
                           (a.T, ValueError, r"\(2, 3\)"),
                           (a.ravel(), ValueError, r"\(2, 3\)"),
                           (a.tolist(), TypeError, "ndarray"),
                           (None, TypeError, "ndarray")):
        with pytest.raises(exc, match=what):
            r.put(bad)
    assert r.qsize() == 3
    x = r.latest()
    assert x.dtype == np.float32 and x.shape == (2, 3)
    for expected in (a, a, np.arange(12, dtype=np.float32).reshape(2, 6)[:, ::2]):
        got = r.get(timeout=TIMEOUT)
        assert got.dtype == np.float32 and got.shape == (2, 3)
        assert np.array_equal(got, expected) and got.flags.writeable
    with pytest.raises(gb.Empty):
        r.get(timeout=SHORT)


def _child_array_echo(r, out):
    x = r.get(timeout=TIMEOUT)
    out.put(x * 2)


def test_arrayspec_ring_in_child(ctx, children):
    """§3.1: the schema travels with the ring: a child re-attaches and gets
    and puts arrays of the right dtype and shape."""
    spec = gb.ArraySpec("int16", (4, 4))
    r, out = gb.Ring(schema=spec), gb.Ring(schema=spec)
    p = children.start(ctx, _child_array_echo, r, out)
    r.put(np.full((4, 4), 3, np.int16))
    got = out.get(timeout=TIMEOUT)
    assert got.dtype == np.int16 and (got == 6).all()
    assert children.join(p, TIMEOUT) == 0


# -- pydantic rings -----------------------------------------------------------------

def test_model_ring_validates_and_accepts_dicts():
    """§3.1: schema=<pydantic model>: instances and dicts are validated on
    put (bad input raises before anything is put); get returns instances."""
    r = gb.Ring(schema=Msg)
    assert r.schema is Msg
    r.put(Msg(n=1, name="a"))
    r.put({"n": 2, "values": [1, 2]})
    with pytest.raises(pydantic.ValidationError):
        r.put({"n": "not a number"})
    with pytest.raises(TypeError, match="Msg"):
        r.put(OtherMsg(n=1.0))
    with pytest.raises(TypeError):
        r.put(5)
    assert r.qsize() == 2
    first, second = r.get(timeout=TIMEOUT), r.get(timeout=TIMEOUT)
    assert isinstance(first, Msg) and first == Msg(n=1, name="a")
    assert second == Msg(n=2, values=[1, 2])


def test_model_ring_oversize_message():
    """§3.1/§5: a message larger than max_bytes raises ValueError; nothing is put."""
    r = gb.Ring(schema=Msg, max_bytes=256)
    with pytest.raises(ValueError, match="256"):
        r.put(Msg(n=1, name="x" * 1000))
    assert r.qsize() == 0


def test_model_ring_attach_checks_the_model():
    """§3.1/§6: attach(name, model=M) returns validated instances; without
    model, plain dicts (and put() is refused: it could not validate); a
    different model raises gb.SchemaMismatch."""
    r = gb.Ring(schema=Msg)
    with pytest.raises(gb.SchemaMismatch):
        gb.Ring.attach(r.name, model=OtherMsg)
    typed = gb.Ring.attach(r.name, model=Msg)
    plain = gb.Ring.attach(r.name)
    r.put_many([Msg(n=1), Msg(n=2)])
    assert typed.get(timeout=TIMEOUT) == Msg(n=1)
    assert plain.get(timeout=TIMEOUT) == {"n": 2, "name": "", "values": []}
    with pytest.raises(TypeError, match="model="):
        plain.put({"n": 3})              # unvalidated puts are refused
    typed.put({"n": 3})
    assert r.get(timeout=TIMEOUT) == Msg(n=3)


def _child_model(r):
    m = r.get(timeout=TIMEOUT)
    r2 = pickle.loads(pickle.dumps(r))   # pickling again from the child works too
    r2.put({"n": m.n + 1, "name": type(m).__name__})


def test_model_ring_in_child(ctx, children):
    """§3.1: a model ring pickled to a child keeps its model there."""
    r = gb.Ring(schema=Msg)
    r.put(Msg(n=41))
    p = children.start(ctx, _child_model, r)
    assert children.join(p, TIMEOUT) == 0
    assert r.get(timeout=TIMEOUT) == Msg(n=42, name="Msg")


# -- serializers ------------------------------------------------------------------------

def _child_cloudpickle(r, out):
    fn, closure, obj = r.get(timeout=TIMEOUT), r.get(timeout=TIMEOUT), r.get(timeout=TIMEOUT)
    base = 100
    out.put((fn(2), closure(3), type(obj).__name__, obj.value(), lambda x: x + base))


def test_cloudpickle_lambdas_closures_local_classes(children):
    """§3.1: serializer="cloudpickle" carries lambdas, closures and locally
    defined classes, through a spawned child and back."""
    ctx = mp.get_context("spawn")
    r, out = gb.Ring(serializer="cloudpickle"), gb.Ring(serializer="cloudpickle")
    k = 10

    def closure(x):
        return x * k

    class Local:
        def __init__(self, v):
            self.v = v

        def value(self):
            return self.v * 2

    p = children.start(ctx, _child_cloudpickle, r, out)
    r.put(lambda x: x ** 3)
    r.put(closure)
    r.put(Local(21))
    a, b, name, v, fn = out.get(timeout=TIMEOUT)
    assert (a, b, name, v) == (8, 30, "Local", 42)
    assert fn(1) == 101
    assert children.join(p, TIMEOUT) == 0


def test_pickle_serializer_refuses_lambdas():
    """§3.1: the default pickle serializer raises the pickling error from
    put() for a lambda; the ring keeps working."""
    r = gb.Ring()
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        r.put(lambda x: x)
    r.put("ok")
    assert r.get(timeout=TIMEOUT) == "ok" and r.qsize() == 0


def _child_custom(r):
    x = r.get(timeout=TIMEOUT)
    r.put({"back": x["v"] * 2})


def test_custom_serializer_pair(ctx, children):
    """§3.1: serializer=(dumps, loads) is used for every item (also ones
    larger than a slot); attach needs the pair; a child gets it by pickling."""
    r = gb.Ring(serializer=(json_dumps, json_loads))
    r.put({"v": [1, 2]})
    big = {"v": "x" * 100_000}
    r.put(big)
    assert r.get(timeout=TIMEOUT) == {"v": [1, 2]}
    assert r.get(timeout=TIMEOUT) == big
    with pytest.raises(ValueError, match="custom serializer"):
        gb.Ring.attach(r.name)
    other = gb.Ring.attach(r.name, serializer=(json_dumps, json_loads))
    other.put({"v": 1})
    assert r.get(timeout=TIMEOUT) == {"v": 1}
    with pytest.raises(TypeError):
        r.put({1, 2})                    # json cannot: the error comes from put()
    r.put({"v": 21})
    p = children.start(ctx, _child_custom, r)
    assert children.join(p, TIMEOUT) == 0
    assert r.get(timeout=TIMEOUT) == {"back": 42}


# -- attach and pickling ------------------------------------------------------------------

def test_attach_from_unrelated_process(shm_name):
    """§3.1: gb.Ring.attach(name) in a separate interpreter (not a
    multiprocessing child): settings come from the segment; it gets and puts;
    its exit removes nothing and prints nothing."""
    r = gb.Ring(7, name=shm_name, capacity=16)
    r.put({"ask": np.arange(4)})
    code = textwrap.dedent(f"""
        import global_buffer as gb
        r = gb.Ring.attach({shm_name!r})
        x = r.get(timeout={TIMEOUT})
        r.put(("reply", x["ask"].sum(), r.maxsize, r.capacity, r.broadcast, r.name))
        big = gb.Ring.attach({shm_name!r})
        big.put(b"z" * 5_000_000)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    assert r.get(timeout=TIMEOUT) == ("reply", 6, 7, 16, False, shm_name)
    assert r.get(timeout=TIMEOUT) == b"z" * 5_000_000
    assert exists(shm_name)


def test_attach_errors(shm_name):
    """§3.1/§6: attaching a missing name raises gb.BufferNotFound; a stream
    is not a ring (gb.BufferCorrupt)."""
    with pytest.raises(gb.BufferNotFound):
        gb.Ring.attach(shm_name + "-missing")
    w = gb.create(shm_name, gb.ArraySpec("f4", (2,)), 4)
    try:
        with pytest.raises(gb.GlobalBufferError, match="not a ring"):
            gb.Ring.attach(shm_name)
    finally:
        w.close()                        # the shm_name fixture removes it


def test_pickle_carries_only_name_and_settings():
    """§3.1: a ring pickles to a small payload (its name and settings) that
    re-attaches to the same segment; JoinableRing stays a JoinableRing."""
    r = gb.JoinableRing(5)
    data = pickle.dumps(r)
    assert len(data) < 1000
    r2 = pickle.loads(data)
    assert type(r2) is type(r) and isinstance(r2, gb.JoinableRing)
    assert (r2.name, r2.maxsize, r2.capacity) == (r.name, 5, 5)
    r.put("x")
    assert r2.get(timeout=TIMEOUT) == "x"
    r2.task_done()
    assert r.join(timeout=TIMEOUT)


_POOL_RING = None


def _pool_init(ring):
    global _POOL_RING
    _POOL_RING = ring


def _pool_task_init(i):
    _POOL_RING.put(("init", i))
    return i


def _pool_task_arg(args):
    ring, i = args
    ring.put(("arg", i, np.full(3, i)))
    return i * 2


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_task_argument_and_initializer(method):
    """§3.1: a ring passed as a Pool initializer argument and as a Pool task
    argument re-attaches in the workers (fork and spawn); workers never
    remove the segment."""
    ctx = mp.get_context(method)
    r = gb.Ring()
    pool = ctx.Pool(2, initializer=_pool_init, initargs=(r,))
    try:
        assert pool.map_async(_pool_task_init, range(10)).get(TIMEOUT) == list(range(10))
        assert pool.map_async(_pool_task_arg, [(r, i) for i in range(10)]).get(TIMEOUT) == \
            [2 * i for i in range(10)]
    finally:
        pool.close()
        bounded(pool.join)
    got = drain(r)
    assert sorted(x[1] for x in got if x[0] == "init") == list(range(10))
    args = sorted((x for x in got if x[0] == "arg"), key=lambda x: x[1])
    assert [x[1] for x in args] == list(range(10))
    assert all((x[2] == x[1]).all() for x in args)
    assert exists(r.name)
    r.put("still here")
    assert r.get(timeout=TIMEOUT) == "still here"


# -- lifetime -------------------------------------------------------------------------------

def test_collected_ring_removes_its_segment():
    """§3.1: the creator's ring, once collected (after close() or not),
    removes its segment and blobs at once (no reference cycle keeps it)."""
    for close in (False, True):
        r = gb.Ring()
        name = r.name
        r.put(b"x" * 100_000)
        assert r.get(timeout=TIMEOUT) == b"x" * 100_000
        assert exists(name) and len(ring_files(name)) == 2
        if close:
            r.close()
        del r
        assert ring_files(name) == []
    with gb.Ring() as r:
        name = r.name
        r.put(1)
    del r
    gc.collect()
    assert not exists(name)


def test_unlink_keeps_attached_handles_working():
    """§2.3/§3.1: unlink() removes the name now; open handles keep working."""
    r = gb.Ring()
    other = gb.Ring.attach(r.name)
    r.unlink()
    assert not exists(r.name)
    r.put("after unlink")
    assert other.get(timeout=TIMEOUT) == "after unlink"


def _child_attach_exit(r, close, out):
    r.put(("child", os.getpid()))
    r.put(b"c" * 200_000)                 # an out-of-line item of the child's
    if close:
        r.close()
    out.put("done")


@pytest.mark.parametrize("close", [False, True], ids=["exit", "close"])
def test_child_never_unlinks(ctx, children, close):
    """§3.1: a child that received the ring (and closes it or just exits)
    never removes the segment; its items, also out-of-line ones, stay
    readable; the parent's ring works on."""
    r, out = gb.Ring(), gb.Ring()
    p = children.start(ctx, _child_attach_exit, r, close, out)
    assert out.get(timeout=TIMEOUT) == "done"
    assert children.join(p, TIMEOUT) == 0
    assert exists(r.name)
    assert r.get(timeout=TIMEOUT)[0] == "child"
    assert r.get(timeout=TIMEOUT) == b"c" * 200_000
    r.put("parent")
    assert r.get(timeout=TIMEOUT) == "parent"


def test_owner_exit_removes_ring_and_blobs(shm_name):
    """§3.1: a creating process that exits without closing removes its ring
    and the out-of-line items still in it."""
    code = textwrap.dedent(f"""
        import global_buffer as gb
        r = gb.Ring(name={shm_name!r})
        r.put(b"x" * 3_000_000)
        r.put(b"y" * 3_000_000)
        keep = r  # still referenced at exit
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    assert ring_files(shm_name) == []


def test_auto_names_fit_macos():
    """§3.1/§5: auto names are unique, valid and <= 26 characters, so that
    '/gb.' + name fits macOS's 31 (no hashing needed)."""
    rings = [gb.Ring() for _ in range(20)]
    names = {r.name for r in rings}
    assert len(names) == 20
    for n in names:
        assert len(n) <= 26 and segment.validate_name(n) == n
        assert len("/gb." + n) <= 31
    j = gb.JoinableRing(broadcast=False)
    assert len(j.name) <= 26


# -- permissions ---------------------------------------------------------------------------

def test_mode_default_0600_and_exact(shm_name, new_name):
    """§5: rings are created 0600 by default; mode= is applied exactly (not
    masked by the umask); out-of-line blobs, also those made by another
    handle, get the ring's mode."""
    old = os.umask(0o077)
    try:
        r = gb.Ring(name=shm_name)
        wide = gb.Ring(name=new_name(), mode=0o644)
        odd = gb.Ring(name=new_name(), mode=0o640, broadcast=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(shm_path(r.name)).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(shm_path(wide.name)).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(shm_path(odd.name)).st_mode) == 0o640
    r.put(b"x" * 100_000)
    gb.Ring.attach(wide.name).put(b"y" * 100_000)
    for ring, mode in ((r, 0o600), (wide, 0o644)):
        blobs = [n for n in ring_files(ring.name) if n != ring.name]
        assert blobs, "an item larger than a slot makes a blob"
        for n in blobs:
            assert stat.S_IMODE(os.stat(shm_path(n)).st_mode) == mode, n
    assert r.get(timeout=TIMEOUT) == b"x" * 100_000
    assert wide.get(timeout=TIMEOUT) == b"y" * 100_000


# -- bad arguments --------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, exc", [
    (dict(maxsize="3"), TypeError),
    (dict(maxsize=1.5), TypeError),
    (dict(maxsize=None), TypeError),
    (dict(capacity=0), ValueError),
    (dict(capacity=-1), ValueError),
    (dict(capacity="8"), TypeError),
    (dict(max_bytes=0), ValueError),
    (dict(serializer="json"), ValueError),
    (dict(serializer=None), ValueError),
    (dict(serializer=(json_dumps,)), ValueError),
    (dict(serializer=(json_dumps, 5)), ValueError),
    (dict(schema=5), TypeError),
    (dict(schema=dict), TypeError),
    (dict(schema="float32"), TypeError),
    (dict(schema=gb.ArraySpec("f4", 3), max_bytes=64), ValueError),
    (dict(broadcast=True, maxsize=4), ValueError),
    (dict(broadcast="yes"), TypeError),
    (dict(mode=0o1777), ValueError),
    (dict(mode="rw"), ValueError),
    (dict(name="bad/name"), ValueError),
    (dict(name=""), ValueError),
    (dict(name=".."), ValueError),
    (dict(name="x" * 201), ValueError),
    (dict(name=5), TypeError),
], ids=lambda v: repr(v) if isinstance(v, dict) else v.__name__)
def test_bad_arguments(kwargs, exc):
    """§5: bad arguments raise ValueError/TypeError before a segment is made
    (the autouse leak check sees nothing left)."""
    maxsize = kwargs.pop("maxsize", 0)
    with pytest.raises(exc):
        gb.Ring(maxsize, **kwargs)


def test_existing_name_raises_buffer_exists(shm_name):
    """§6: creating a ring under a taken name raises gb.BufferExists."""
    r = gb.Ring(name=shm_name)
    with pytest.raises(gb.BufferExists):
        gb.Ring(name=shm_name)
    r.put(1)
    assert r.get(timeout=TIMEOUT) == 1


def test_bad_timeouts():
    """§4: a NaN or non-number timeout is refused."""
    r = gb.Ring()
    with pytest.raises(ValueError):
        r.get(timeout=float("nan"))
    with pytest.raises(TypeError):
        r.get(timeout="1")


def test_attributes():
    """§3.1: name, maxsize, capacity, broadcast, schema; JoinableRing is a Ring."""
    r = gb.Ring(3)
    assert (r.maxsize, r.capacity, r.broadcast, r.schema) == (3, 3, False, None)
    assert gb.Ring(capacity=10).capacity == 10 and gb.Ring().maxsize == 0
    j = gb.JoinableRing()
    assert isinstance(j, gb.Ring) and isinstance(j, gb.JoinableRing)
    assert not isinstance(r, gb.JoinableRing)
    assert r.name in repr(r)


# -- asyncio ----------------------------------------------------------------------------------

async def _with_ticker(coro):
    """Run ``coro`` while a 10 ms ticker runs; return (result or error, ticks)."""
    ticks = 0
    stop = False

    async def ticker():
        nonlocal ticks
        while not stop:
            await asyncio.sleep(0.01)
            ticks += 1

    t = asyncio.ensure_future(ticker())
    try:
        try:
            result = await asyncio.wait_for(coro, TIMEOUT)
        except Exception as e:
            result = e.with_traceback(None)  # no frame cycle keeping the ring alive
    finally:
        stop = True
        await asyncio.wait_for(t, 5)
    return result, ticks


def test_get_async_timeout_does_not_block_loop():
    """§3.1: await get_async(timeout) raises gb.Empty after the timeout;
    the loop keeps running meanwhile (a 10 ms ticker ticks) and the wait
    costs little CPU."""
    r = gb.Ring()
    cpu0, t0 = time.process_time(), time.monotonic()
    result, ticks = asyncio.run(_with_ticker(r.get_async(timeout=0.5)))
    wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    assert isinstance(result, gb.Empty)
    assert 0.45 <= wall < 5
    assert ticks >= 15, f"event loop blocked: {ticks} ticks in {wall:.2f}s"
    assert cpu < 0.5 * wall, f"waiting burnt {cpu:.2f}s CPU in {wall:.2f}s"


def test_get_async_receives_item_from_thread_and_process(ctx, children):
    """§3.1: get_async returns an item put later by another thread, and by
    a child process, while the loop ticks."""
    r = gb.Ring()
    threading.Timer(0.2, lambda: r.put("from thread")).start()
    result, ticks = asyncio.run(_with_ticker(r.get_async(timeout=TIMEOUT)))
    assert result == "from thread" and ticks >= 5
    p = children.start(ctx, _child_put_many, r, 7, 8)
    result, _ = asyncio.run(_with_ticker(r.get_async(timeout=TIMEOUT)))
    assert result == 7
    assert children.join(p, TIMEOUT) == 0


def test_put_async_full_timeout_and_wait_for_space():
    """§3.1: put_async on a full bounded ring raises gb.Full after its
    timeout without blocking the loop, and completes once a get frees space."""
    r = gb.Ring(1)
    r.put("a")
    result, ticks = asyncio.run(_with_ticker(r.put_async("b", timeout=0.3)))
    assert isinstance(result, gb.Full) and ticks >= 10
    threading.Timer(0.2, lambda: r.get(timeout=TIMEOUT)).start()
    result, ticks = asyncio.run(_with_ticker(r.put_async("b", timeout=TIMEOUT)))
    assert result is None and ticks >= 5
    assert r.get(timeout=TIMEOUT) == "b"


def test_async_on_broadcast_ring():
    """§3.1: get_async on a broadcast ring reads from the handle's cursor."""
    r = gb.Ring(broadcast=True, capacity=8)
    threading.Timer(0.1, lambda: r.put("news")).start()
    result, _ = asyncio.run(_with_ticker(r.get_async(timeout=TIMEOUT)))
    assert result == "news"
    result, _ = asyncio.run(_with_ticker(r.get_async(timeout=0.1)))
    assert isinstance(result, gb.Empty)


def test_many_concurrent_get_async():
    """§3.1: several coroutines awaiting get_async on one ring each get one item."""
    r = gb.Ring()

    async def main():
        waiters = [asyncio.ensure_future(r.get_async(timeout=TIMEOUT)) for _ in range(5)]
        await asyncio.sleep(0.1)
        for i in range(5):
            await r.put_async(i, timeout=TIMEOUT)
        return sorted(await asyncio.wait_for(asyncio.gather(*waiters), TIMEOUT))

    assert asyncio.run(main()) == list(range(5))


# -- large objects are cleaned up ---------------------------------------------------------------

def _child_put_big(r, n):
    for i in range(n):
        r.put({"i": i, "a": np.full(300_000, i, np.int64)}, timeout=TIMEOUT)


def test_large_items_cleaned_up(ctx, children):
    """§3.1: items larger than a slot put by a child through a small bounded
    ring all arrive intact; blobs are reused, not one per item; after the
    ring is collected nothing of it is left in /dev/shm."""
    r = gb.Ring(2)
    name = r.name
    p = children.start(ctx, _child_put_big, r, 20)
    for i in range(20):
        x = r.get(timeout=TIMEOUT)
        assert x["i"] == i and x["a"].shape == (300_000,) and (x["a"] == i).all()
    assert children.join(p, TIMEOUT) == 0
    # in flight at once: 2 in the ring, 1 being filled, 1 held in place by
    # the consumer's last item (a large frame is read in place: BlobView),
    # and one more a loaded machine's 5 ms wait for a free one may add
    assert 1 <= len(ring_files(name)) - 1 <= 6, ring_files(name)
    del r, x
    assert ring_files(name) == []


@pytest.mark.parametrize("broadcast", [False, True])
def test_arrayspec_ring_reserve(broadcast):
    """§3.1: ``schema=gb.ArraySpec(...)`` rings take zero-copy puts through
    ``reserve()``; a block that raises delivers nothing."""
    spec = gb.ArraySpec("float32", (3, 4))
    kw = {"capacity": 4} if broadcast else {"maxsize": 4}
    r = gb.Ring(schema=spec, broadcast=broadcast, **kw)
    reader = gb.Ring.attach(r.name) if broadcast else r
    try:
        with r.reserve() as view:
            assert view.shape == (3, 4) and view.dtype == np.float32
            view[:] = 1.5
        with pytest.raises(KeyError):
            with r.reserve() as view:
                view[:] = 9
                raise KeyError("discard")
        with r.reserve() as view:
            view[:] = 2.5
        first = reader.get(timeout=5)
        second = reader.get(timeout=5)
        assert (first == 1.5).all() and (second == 2.5).all()
        with pytest.raises(gb.Empty):
            reader.get(timeout=0.05)
        if not broadcast:
            for _ in range(4):
                r.put(np.zeros((3, 4), np.float32))
            with pytest.raises(gb.Full):
                with r.reserve(timeout=0.05):
                    pass
    finally:
        if reader is not r:
            reader.close()
        r.close()


def test_reserve_needs_arrayspec():
    r = gb.Ring()
    try:
        with pytest.raises(TypeError):
            with r.reserve():
                pass
    finally:
        r.close()


class _Undecodable:
    def __reduce__(self):
        return (int, ("not a number",))  # pickles fine, fails to unpickle


def test_get_many_keeps_what_it_took_before_an_undecodable_item():
    """§3.1: get_many never drops items it already took: an item that fails
    to decode ends the batch, and its error comes from the next get, in its
    place in the order (as get() one at a time)."""
    r = gb.Ring(16)
    try:
        for obj in (1, 2, _Undecodable(), 4):
            r.put(obj)
        deadline = time.monotonic() + TIMEOUT
        while r.qsize() < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert r.get_many(10, timeout=TIMEOUT) == [1, 2]
        with pytest.raises(ValueError, match="not a number"):
            r.get(timeout=TIMEOUT)
        assert r.get_many(10, timeout=TIMEOUT) == [4]
    finally:
        r.close()


def test_put_each_and_get_many_store_a_running_count():
    """§9 (the bridge's exact losses): ``_put_each`` and ``_get_many`` with
    a u64 buffer store ``base + n`` into it right after the n-th item moved,
    in compiled code; an item that fails stops the count where the items
    that moved end.  A buffer that cannot hold a writable u64 is refused."""
    import mmap
    r = gb.Ring(16)
    m = mmap.mmap(-1, 8)
    count = memoryview(m).cast("Q")
    try:
        assert r._put_each([1, 2, 3], 0.1, count, 100) == 3 and count[0] == 103
        with pytest.raises(TypeError):
            r._put_each([4, threading.Lock(), 6], 0.1, count, 200)  # unpicklable 2nd
        assert count[0] == 201
        deadline = time.monotonic() + TIMEOUT
        while r.qsize() < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert r._get_many(3, False, None, count, 10) == [1, 2, 3] and count[0] == 13
        assert r._get_many(8, False, None, count, 20) == [4] and count[0] == 21
        with pytest.raises(gb.Empty):
            r._get_many(8, False, None, count, 30)
        assert count[0] == 21  # nothing taken, nothing stored
        for bad in (memoryview(bytes(8)).cast("Q"), memoryview(bytearray(8))):
            with pytest.raises((TypeError, ValueError, BufferError)):
                r._put_each([7], 0.1, bad, 0)
        assert r.qsize() == 0  # refused before anything was put
    finally:
        count.release()
        m.close()
        r.close()
