"""Zero-copy and no-allocation reads on lossless ArraySpec rings (SPEC §3.1;
issue 13 item 3): ``ring.get_into(out)`` and ``with ring.view() as arr``.

Exactly-once across processes with consumers mixing get/get_into/view; a
bad ``out`` raises ValueError and consumes nothing; a consumer SIGKILLed
inside ``view()`` is recovered like any dead claimant (its item is the one
it had in flight: lost, never duplicated) and nobody wedges."""
import os
import signal
import time

import numpy as np
import pytest

import global_buffer as gb

SPEC = gb.ArraySpec("int64", (16,))
TIMEOUT = 30


def _item(i):
    return np.full(16, i, np.int64)


def test_get_into_and_view_return_items_in_order():
    with gb.Ring(8, schema=SPEC) as r:
        for i in range(4):
            r.put(_item(i))
        out = np.empty(16, np.int64)
        assert r.get_into(out) is out and (out == 0).all()
        with r.view() as v:
            assert (v == 1).all() and not v.flags.writeable
            with pytest.raises(ValueError):
                v[0] = 5  # a reader never scribbles on the ring
        assert r.get(timeout=1)[0] == 2
        assert r.get_into(out, timeout=1)[0] == 3
        assert r.qsize() == 0
        with pytest.raises(gb.Empty):
            r.get_into(out, timeout=0.05)
        with pytest.raises(gb.Empty):
            with r.view(block=False):
                pass


@pytest.mark.parametrize("bad", [
    np.empty(16, np.float64),                  # dtype
    np.empty(17, np.int64),                    # shape
    np.empty((2, 16), np.int64),               # ndim
    np.empty(32, np.int64)[::2],               # not C-contiguous
    "readonly",
    [0] * 16,                                  # not an array
])
def test_get_into_bad_out_consumes_nothing(bad):
    if isinstance(bad, str):
        bad = np.empty(16, np.int64)
        bad.flags.writeable = False
    with gb.Ring(4, schema=SPEC) as r:
        r.put(_item(7))
        with pytest.raises(ValueError):
            r.get_into(bad)
        assert r.qsize() == 1 and r.get(timeout=1)[0] == 7


def test_wrong_ring_kinds_refuse():
    with gb.Ring(4) as r:
        r.put(1)
        with pytest.raises(TypeError):
            r.get_into(np.empty(1))
        with pytest.raises(TypeError):
            with r.view():
                pass
        assert r.get(timeout=1) == 1


def test_view_slot_stays_claimed_until_the_block_exits():
    """A producer cannot reuse a viewed slot: with every slot in use, a put
    waits for the view to end (the item is consumed only then)."""
    with gb.Ring(2, schema=SPEC, capacity=2) as r:
        r.put(_item(0))
        r.put(_item(1))
        with r.view() as v:
            with pytest.raises(gb.Full):
                r.put(_item(2), timeout=0.1)
            assert (v == 0).all()  # untouched while we look
        r.put(_item(2), timeout=1)
        assert [int(r.get(timeout=1)[0]) for _ in range(2)] == [1, 2]


def test_closed_ring_refuses_like_get():
    r = gb.Ring(4, schema=SPEC)
    r.close()
    with pytest.raises((ValueError, OSError)):
        r.get_into(np.empty(16, np.int64))
    with pytest.raises((ValueError, OSError)):
        with r.view():
            pass


def _consumer(ring, how, results, stop, ready):
    out = np.empty(16, np.int64)
    got = []
    ready.release()
    while True:
        try:
            if how == "get":
                a = ring.get(timeout=0.2)
                got.append(int(a[0]))
                ok = bool((a == a[0]).all())
            elif how == "get_into":
                ring.get_into(out, timeout=0.2)
                got.append(int(out[0]))
                ok = bool((out == out[0]).all())
            else:
                with ring.view(timeout=0.2) as v:
                    got.append(int(v[0]))
                    ok = bool((v == v[0]).all())
            if not ok:
                got.append(-1)  # torn
        except gb.Empty:
            if stop.is_set():
                break
    results.put(got)


def test_exactly_once_with_mixed_consumers(ctx, children):
    n = 3000
    ring = gb.Ring(16, schema=SPEC)
    results, stop, ready = ctx.Queue(), ctx.Event(), ctx.Semaphore(0)
    procs = [children.start(ctx, _consumer, ring, how, results, stop, ready)
             for how in ("get", "get_into", "view")]
    try:
        for _ in procs:  # every consumer takes part
            assert ready.acquire(timeout=TIMEOUT)
        for i in range(n):
            ring.put(_item(i), timeout=TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while ring.qsize() and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()
        got = [results.get(timeout=TIMEOUT) for _ in procs]
        for p in procs:
            assert children.join(p, TIMEOUT) == 0
        everything = sorted(x for g in got for x in g)
        assert everything == list(range(n))  # none lost, none twice, none torn
        for g in got:  # one producer: each consumer sees its share in order
            assert g == sorted(g)
    finally:
        ring.close()


def _dies_inside_view(ring, inside):
    with ring.view(timeout=TIMEOUT) as v:
        inside.put(int(v[0]))
        time.sleep(60)  # killed here, holding the slot's claim


def test_consumer_killed_inside_view_is_recovered(ctx, children):
    ring = gb.Ring(4, schema=SPEC, capacity=4)
    inside = ctx.Queue()
    try:
        for i in range(4):
            ring.put(_item(i))
        p = children.start(ctx, _dies_inside_view, ring, inside)
        held = inside.get(timeout=TIMEOUT)
        assert held == 0
        os.kill(p.pid, signal.SIGKILL)
        p.join(TIMEOUT)
        # the ring is full but for the dead claim: producers and consumers go on
        got = [int(ring.get(timeout=TIMEOUT)[0]) for _ in range(3)]
        for i in range(4, 12):
            ring.put(_item(i), timeout=TIMEOUT)
            got.append(int(ring.get(timeout=TIMEOUT)[0]))
        assert got == list(range(1, 12))  # item 0 was the one in flight: lost once
        with pytest.raises(gb.Empty):
            ring.get(timeout=0.1)
    finally:
        ring.close()
