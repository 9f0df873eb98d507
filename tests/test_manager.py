"""``gb.Manager`` (SPEC §3.3): a ``SyncManager`` whose ``Ring`` /
``JoinableRing`` / ``Pipe`` are real shared-memory rings made and owned by the
manager process -- usable across processes, removed at the manager's
shutdown even if the process that asked for them died -- while every usual
proxy keeps working (CPython's own TestSyncManagerTypes runs against it)."""
import gc
import multiprocessing as mp
import multiprocessing.managers
import os
import pickle
import signal
import sys
import time

import numpy as np
import pytest

import global_buffer as gb
from global_buffer import segment

TIMEOUT = 30

_tm = pytest.importorskip("test._test_multiprocessing",
                          reason="CPython's test package is not installed")


def _segment_names():
    return set(segment.list_names())


def _gone(name):
    try:
        gb.Ring.attach(name).close()
    except gb.BufferNotFound:
        return True
    return False


def _pipe_names(*conns):
    return {n for c in conns for n in c._names if n is not None}


# -- rings and pipes across processes ----------------------------------------------------

def _worker(ring, jring, conn, out, proxies):
    d, lst, lock, q, ns = proxies  # the usual SyncManager proxies, same child
    with lock:
        d["child"] = os.getpid()
        lst.append("child")
    q.put("from child")
    ns.x = 42
    while True:
        item = ring.get(timeout=TIMEOUT)
        if item is None:
            break
        conn.send(("ring", item))
    while True:
        item = jring.get(timeout=TIMEOUT)
        jring.task_done()
        if item is None:
            break
        conn.send(("joinable", item))
    conn.send_bytes(b"done")
    out.put(os.getpid())
    conn.close()


def test_manager_objects_across_processes(ctx, children):
    """Under each start method: a child uses the manager's Ring,
    JoinableRing and Pipe end, and the usual proxies (dict, list, Lock,
    Queue, Namespace) alongside; afterwards the segments are gone."""
    with gb.Manager(ctx=ctx) as m:
        assert isinstance(m, mp.managers.SyncManager) and isinstance(m, gb.GBManager)
        ring, jring, out = m.Ring(4), m.JoinableRing(), m.Ring()
        a, b = m.Pipe()
        assert isinstance(ring, gb.Ring) and not isinstance(ring, gb.JoinableRing)
        assert isinstance(jring, gb.JoinableRing)
        assert isinstance(a, gb.Connection) and isinstance(b, gb.Connection)
        names = {ring.name, jring.name, out.name} | _pipe_names(a, b)
        proxies = (m.dict(), m.list([1]), m.Lock(), m.Queue(), m.Namespace())
        p = children.start(ctx, _worker, ring, jring, b, out, proxies)
        b.close()
        frame = np.arange(1 << 20, dtype=np.uint8)
        for item in (1, "two", frame, None):
            ring.put(item, timeout=TIMEOUT)
        for item in ("x", {"y": 2}, None):
            jring.put(item)
        jring.join(timeout=TIMEOUT)
        got = []
        while True:
            assert a.poll(TIMEOUT)
            msg = a.recv_bytes()
            if msg == b"done":
                break
            got.append(pickle.loads(msg))
        assert [g[1] for g in got[:2]] == [1, "two"]
        assert np.array_equal(got[2][1], frame)
        assert got[3:] == [("joinable", "x"), ("joinable", {"y": 2})]
        assert out.get(timeout=TIMEOUT) == p.pid
        d, lst, lock, q, ns = proxies
        assert q.get(timeout=TIMEOUT) == "from child"
        assert d["child"] == p.pid and list(lst) == [1, "child"] and ns.x == 42
        v, arr = m.Value("i", 7), m.Array("d", [1.0, 2.0])
        assert v.value == 7 and list(arr) == [1.0, 2.0]
        with pytest.raises(EOFError):  # the child's end closed, nothing left
            a.poll(TIMEOUT) and a.recv()
        assert children.join(p, TIMEOUT) == 0
        for h in (ring, jring, out, a):
            h.close()
        assert not any(_gone(n) for n in names), "removed before the manager shut down"
    for n in names:
        assert _gone(n), f"{n} outlived the manager"
        with pytest.raises(gb.BufferNotFound):
            gb.Ring.attach(n)


def test_manager_ring_takes_ring_arguments():
    spec = gb.ArraySpec(np.float32, (4, 4))
    with gb.Manager() as m:
        bounded = m.Ring(2, capacity=8, max_bytes=256)
        assert (bounded.maxsize, bounded.capacity) == (2, 8)
        bounded.put(1)
        bounded.put(2)
        with pytest.raises(gb.Full):
            bounded.put(3, timeout=0.05)
        arrays = m.Ring(schema=spec, capacity=4)
        arrays.put(np.ones((4, 4), np.float32))
        assert arrays.get(timeout=TIMEOUT).sum() == 16
        bcast = m.Ring(broadcast=True, capacity=4)
        assert bcast.broadcast
        cp = m.Ring(serializer="cloudpickle")
        k = 3
        cp.put(lambda x: x + k)
        assert cp.get(timeout=TIMEOUT)(1) == 4
        named = m.JoinableRing(name=f"test-mgr-{os.getpid()}-{time.monotonic_ns()}")
        named.put("n")
        assert gb.Ring.attach(named.name).get(timeout=TIMEOUT) == "n"
        r, w = m.Pipe(duplex=False)
        assert (r.readable, r.writable, w.readable, w.writable) == (True, False, False, True)
        w.send("one way")
        assert r.poll(TIMEOUT) and r.recv() == "one way"
        names = [x.name for x in (bounded, arrays, bcast, cp, named)] + sorted(_pipe_names(r, w))
        for h in (bounded, arrays, bcast, cp, named, r, w):
            h.close()
        gc.collect()
        assert not any(_gone(n) for n in names)
    assert all(_gone(n) for n in names)


# -- a requester that dies ------------------------------------------------------------------

def _requester(address, authkey, report):
    m = gb.GBManager(address=address, authkey=authkey)
    m.connect()
    ring = m.Ring()
    ring.put("left by a dead process")
    jring = m.JoinableRing(3)
    a, b = m.Pipe()
    b.send("in the pipe")
    report.send([ring.name, jring.name] + sorted(_pipe_names(a, b)))
    time.sleep(120)  # killed long before


@pytest.mark.parametrize("method", [m for m in ("fork", "spawn")
                                    if m in mp.get_all_start_methods()])
def test_requester_killed_segments_still_removed_at_shutdown(method, children):
    ctx = mp.get_context(method)
    m = gb.Manager()
    try:
        r, w = mp.Pipe(duplex=False)
        p = children.start(ctx, _requester, m.address, bytes(m._authkey), w)
        w.close()
        assert r.poll(TIMEOUT), "the requester did not report"
        names = r.recv()
        p.kill()
        children.join(p, TIMEOUT)
        assert p.exitcode == -signal.SIGKILL
        # the manager owns them: they outlive the requester and still work
        ring = gb.Ring.attach(names[0])
        assert ring.get(timeout=TIMEOUT) == "left by a dead process"
        ring.close()
        assert not any(_gone(n) for n in names)
    finally:
        m.shutdown()
    for n in names:
        with pytest.raises(gb.BufferNotFound):
            gb.Ring.attach(n)


def test_segments_removed_even_if_the_manager_process_is_terminated():
    """shutdown() asks the server to remove its segments first, so they
    go even when the server process has to be terminated (here: no time
    at all to exit before terminate(), where Python supports setting that)."""
    kwargs = {"shutdown_timeout": 0.0} if sys.version_info >= (3, 11) else {}
    m = gb.Manager(**kwargs)
    ring = m.Ring()
    a, b = m.Pipe()
    names = {ring.name} | _pipe_names(a, b)
    for h in (ring, a, b):
        h.close()
    proc = m._process
    m.shutdown()
    proc.join(TIMEOUT)
    assert all(_gone(n) for n in names)


# -- the manager itself -------------------------------------------------------------------

def test_with_manager_as_context_manager():
    with gb.Manager() as m:
        assert m._state.value == mp.managers.State.STARTED
        ring = m.Ring()
        ring.put(1)
        assert ring.get(timeout=TIMEOUT) == 1
        name = ring.name
        ring.close()
    assert m._state.value == mp.managers.State.SHUTDOWN
    assert _gone(name)
    # whatever the stdlib's proxy machinery raises for a shut-down manager
    with pytest.raises(Exception):  # noqa: B017
        m.Ring()
    # not started yet: entering starts it (as SyncManager)
    lazy = gb.Manager(start=False)
    assert lazy._state.value == mp.managers.State.INITIAL
    with lazy as m2:
        assert m2 is lazy and m2.dict(a=1)["a"] == 1


def test_gbmanager_starts_like_syncmanager():
    m = gb.GBManager()
    m.start()
    try:
        ring = m.Ring(2)
        ring.put("x")
        assert ring.get(timeout=TIMEOUT) == "x"
        name = ring.name
        ring.close()
    finally:
        m.shutdown()
    assert _gone(name)


class GBManagerSyncManagerTypes(_tm.TestSyncManagerTypes):
    """CPython's TestSyncManagerTypes (every proxy type, used from a child
    process) against gb.GBManager."""

    manager_class = gb.GBManager


def test_cpython_sync_manager_types_use_gbmanager():
    case = GBManagerSyncManagerTypes("test_dict")
    case.setUp()
    try:
        assert isinstance(case.manager, gb.GBManager)
    finally:
        case.tearDown()
