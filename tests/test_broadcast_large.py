"""Broadcast items of any size (SPEC §3.1; issue 13 item 4): an item larger
than a slot goes out of line, in a fresh blob per item, named in the slot;
it is freed when its slot is overwritten (or with the ring), never read
torn, and nothing is left in /dev/shm."""
import hashlib
import time

import numpy as np
import pytest

import global_buffer as gb
from global_buffer.segment import list_names

TIMEOUT = 30


def _blobs(name):
    return [n for n in list_names() if n.startswith(name + ".b")]


def _frame(i, n=300_000):
    rng = np.random.default_rng(i)
    a = rng.integers(0, 255, n, dtype=np.uint8)
    return {"i": i, "data": a, "sha": hashlib.sha1(a.tobytes()).hexdigest()}


def test_large_and_small_items_mix_in_order():
    r = gb.Ring(broadcast=True, capacity=8, max_bytes=512)
    a = gb.Ring.attach(r.name)
    try:
        items = [_frame(0), "small", _frame(1), list(range(10)), _frame(2)]
        for it in items:
            r.put(it)
        for want in items:
            got = a.get(timeout=5)
            if isinstance(want, dict):
                assert got["sha"] == want["sha"] and (got["data"] == want["data"]).all()
            else:
                assert got == want
        assert r.latest()["i"] == 2
        assert len(_blobs(r.name)) == 3
    finally:
        a.close()
        r.close()
        r.unlink()
    assert _blobs(r.name) == []


def test_overwritten_items_are_freed_and_counted():
    r = gb.Ring(broadcast=True, capacity=3, max_bytes=256)
    a = gb.Ring.attach(r.name)
    try:
        for i in range(20):
            r.put(_frame(i, 50_000))
            assert len(_blobs(r.name)) <= 4  # capacity + the spare slot
        got = [a.get(timeout=5)["i"] for _ in range(3)]
        assert got == [17, 18, 19] and a.overruns == 17
        with pytest.raises(gb.Empty):
            a.get(timeout=0.05)
    finally:
        a.close()
        r.close()
        r.unlink()
    assert _blobs(r.name) == []


def test_slots_too_small_even_for_a_reference():
    r = gb.Ring(broadcast=True, capacity=2, max_bytes=16)
    try:
        with pytest.raises(ValueError, match="too small"):
            r.put(b"x" * 1000)
        assert _blobs(r.name) == []  # the blob made for it is gone again
        r.put(1)
        assert r.latest() == 1
    finally:
        r.close()
        r.unlink()


def test_message_broadcast_rings_still_refuse_oversize():
    import pydantic

    class M(pydantic.BaseModel):
        s: str
    r = gb.Ring(broadcast=True, capacity=2, schema=M, max_bytes=64)
    try:
        with pytest.raises(ValueError, match="max_bytes"):
            r.put(M(s="x" * 500))
    finally:
        r.close()
        r.unlink()


def _reader(name, delay, results, started, n):
    h = gb.Ring.attach(name)
    started.release()
    seen, torn, last = 0, 0, -1
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            try:
                item = h.get(timeout=0.5)
            except gb.Empty:
                continue
            if item is None:
                break
            if hashlib.sha1(item["data"].tobytes()).hexdigest() != item["sha"]:
                torn += 1
            if item["i"] <= last:
                torn += 1  # out of order counts as bad too
            last = item["i"]
            seen += 1
            if delay:
                time.sleep(delay)
        results.put((seen, torn, h.overruns, last))
    finally:
        h.close()


def test_slow_and_fast_readers_in_processes(ctx, children):
    n = 120
    r = gb.Ring(broadcast=True, capacity=4, max_bytes=1024)
    results, started = ctx.Queue(), ctx.Semaphore(0)
    procs = [children.start(ctx, _reader, r.name, d, results, started, n) for d in (0, 0.02)]
    try:
        for _ in procs:
            assert started.acquire(timeout=TIMEOUT)
        frames = [_frame(i, 200_000) for i in range(8)]
        for i in range(n):
            f = dict(frames[i % 8], i=i)
            r.put(f)
        # the end marker must reach even the slow reader: repeat it until both are done
        deadline = time.monotonic() + TIMEOUT
        got = []
        while len(got) < len(procs) and time.monotonic() < deadline:
            r.put(None)
            try:
                got.append(results.get(timeout=0.2))
            except Exception:
                pass
        assert len(got) == len(procs), "a reader never finished"
        for p in procs:
            assert children.join(p, TIMEOUT) == 0
        for seen, torn, _overruns, last in got:
            assert torn == 0
            assert seen > 0 and last == n - 1
        assert max(o for _, _, o, _ in got) > 0  # the slow reader was lapped
        assert len(_blobs(r.name)) <= 5
    finally:
        r.close()
        r.unlink()
    assert _blobs(r.name) == []
