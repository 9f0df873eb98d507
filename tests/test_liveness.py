"""Dead and silent writers (SPEC §2.2 writer_alive, §5 "Dead processes"):
a writer SIGKILLed mid-write wedges no reader, committed samples stay
readable, and writer_alive turns False within 0.5 s; heartbeats keep an
idle writer alive and their absence for 2 s reads as dead; pid reuse is
not mistaken for the writer.
"""
import multiprocessing as mp
import os
import signal
import time

import numpy as np
import pytest

import global_buffer as gb
from global_buffer import segment

ELEMS = 1 << 15        # 256 KiB of int64: the writer spends its life mid-copy
CAPACITY = 16
JOIN = 60


def _uniform(a):
    return bool((a == a.flat[0]).all())


def _wait(cond, procs, timeout=JOIN, what="child"):
    """Wait for an Event/Semaphore-like cond; fail fast if a child died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond(0.05):
            return
        for p in procs:
            if p.exitcode is not None:
                raise AssertionError(f"{what} exited early with code {p.exitcode}")
    raise AssertionError(f"{what} not ready within {timeout}s")


# -- child bodies ------------------------------------------------------------------

def busy_writer(name, ready):
    w = gb.create(name, gb.ArraySpec("int64", (ELEMS,)), CAPACITY)
    i = 0
    while True:                         # until SIGKILL
        if i % 3:
            with w.reserve() as v:      # killed here, the slot stays half written
                v.fill(i)
        else:
            w.write(np.full(ELEMS, i, np.int64))
        i += 1
        if i == 50:
            ready.set()


def surviving_reader(name, attached, results):
    """Reads in order through the writer's death; its loop, which retries on
    gb.Empty, ends with gb.WriterGone once everything committed was read
    (§2.2).  ``gone`` counts that end (1), never a timeout."""
    r = gb.attach(name, start="oldest")
    attached.set()
    last, n, gone, bad = None, 0, 0, 0
    deadline = time.monotonic() + JOIN
    while time.monotonic() < deadline:
        try:
            a = r.next(timeout=0.2)
        except gb.Empty:
            continue
        except gb.WriterGone:
            gone += 1
            break
        n += 1
        if not _uniform(a) or (last is not None and int(a[0]) <= last):
            bad += 1
        last = int(a[0])
    results.put((n, last, bad, gone, r.writer_alive, r.overruns))
    r.close()


def idle_writer(name, ready, quiet, leave):
    w = gb.create(name, gb.ArraySpec("int64", (4,)), 4)
    w.write(np.zeros(4, np.int64))
    ready.set()
    while not quiet.wait(0.25):         # idle but healthy: heartbeats only
        w.heartbeat()
    leave.wait(JOIN)                    # alive, but silent
    w.close()


# -- tests -----------------------------------------------------------------------

@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_sigkill_writer_mid_write(shm_name, children, method):
    """§5: SIGKILL the writer mid-write loop.  writer_alive turns False within
    0.5 s; a reader in another process reads on in order and moves on (no
    wedge); the committed samples stay readable (latest, next, a new
    start="oldest" reader) and none is torn."""
    ctx = mp.get_context(method)
    ready, attached, results = ctx.Event(), ctx.Event(), ctx.Queue()
    wp = children.start(ctx, busy_writer, shm_name, ready)
    _wait(ready.wait, [wp], what="writer")
    rp = children.start(ctx, surviving_reader, shm_name, attached, results)
    _wait(attached.wait, [rp], what="reader")
    r = gb.attach(shm_name)
    try:
        assert r.writer_alive is True
        time.sleep(0.2)                  # let the reader chase the writer
        os.kill(wp.pid, signal.SIGKILL)
        killed = time.monotonic()
        while r.writer_alive and time.monotonic() - killed < 0.5:
            time.sleep(0.005)
        dead_after = time.monotonic() - killed
        assert not r.writer_alive, "writer_alive still True 0.5 s after SIGKILL"
        assert dead_after < 0.5
        # not reaped yet (a zombie) -- and once reaped, still dead
        wp.join(JOIN)
        assert wp.exitcode == -signal.SIGKILL
        assert r.writer_alive is False

        tail = r._tail
        assert tail > 50
        newest = r.latest()
        assert _uniform(newest) and int(newest[0]) == tail - 1

        n, last, bad, gone, alive, overruns = results.get(timeout=JOIN)
        assert children.join(rp, JOIN) == 0
        assert bad == 0 and alive is False and gone == 1
        assert last == tail - 1 and n >= 1

        with gb.attach(shm_name, start="oldest") as old:
            vals = [old.next(timeout=5) for _ in range(CAPACITY)]
            assert all(_uniform(v) for v in vals)
            assert [int(v[0]) for v in vals] == list(range(tail - CAPACITY, tail))
            t0 = time.monotonic()
            with pytest.raises(gb.WriterGone):
                old.next(timeout=0.3)      # the half-written sample never appears
            assert time.monotonic() - t0 < 3
        # the parent's own reader drains what was committed, then WriterGone
        out = np.empty((4, ELEMS), np.int64)
        got = []
        while True:
            try:
                k = r.next_batch_into(out, timeout=None)
            except gb.WriterGone:
                break
            assert all(_uniform(row) for row in out[:k])
            got.extend(int(x) for x in out[:k, 0])
        assert got == list(range(got[0], tail))
        with r.view("latest") as v:
            assert int(v[0]) == tail - 1 and _uniform(v)
    finally:
        r.close()


def test_idle_writer_heartbeat_then_silence(shm_name, children):
    """§2.2: a writer that writes nothing but calls heartbeat() stays alive
    past the 2 s window; once it stops (process still running) it reads as
    not alive after ~2 s of silence."""
    ctx = mp.get_context("fork")
    ready, quiet, leave = ctx.Event(), ctx.Event(), ctx.Event()
    wp = children.start(ctx, idle_writer, shm_name, ready, quiet, leave)
    _wait(ready.wait, [wp], what="writer")
    with gb.attach(shm_name) as r:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.4:     # longer than the 2 s window
            assert r.writer_alive is True
            time.sleep(0.1)
        assert r.latest() is not None
        quiet.set()
        silent = time.monotonic()
        while r.writer_alive and time.monotonic() - silent < 4:
            time.sleep(0.02)
        took = time.monotonic() - silent
        assert not r.writer_alive
        assert 1.5 <= took <= 2.8, took
        assert wp.is_alive()                  # dead by silence, not by pid
        leave.set()
        assert children.join(wp, JOIN) == 0
        assert r.writer_alive is False


def test_writes_stamp_heartbeat_throttled(shm_name, new_name):
    """§2.1: write() stamps the heartbeat, at most once per
    heartbeat_interval; heartbeat() always stamps."""
    spec = gb.ArraySpec("int64", (4,))
    with gb.create(shm_name, spec, 4, heartbeat_interval=0) as w, gb.attach(shm_name) as r:
        h0 = r._heartbeat_ns
        time.sleep(0.01)
        w.write(np.zeros(4, np.int64))
        h1 = r._heartbeat_ns
        assert h1 > h0
        time.sleep(0.01)
        w.write(np.zeros(4, np.int64))
        assert r._heartbeat_ns > h1
    name = new_name()
    with gb.create(name, spec, 4, heartbeat_interval=3600) as w, gb.attach(name) as r:
        h0 = r._heartbeat_ns
        time.sleep(0.01)
        for _ in range(5):
            w.write(np.zeros(4, np.int64))
        assert r._heartbeat_ns == h0          # throttled
        w.heartbeat()
        assert r._heartbeat_ns > h0


def test_writer_alive_not_fooled_by_pid_reuse(shm_name, children):
    """§5: liveness compares the process start time, so a live process with
    the writer's pid but another start time is not the writer; a reaped pid
    is dead."""
    with gb.create(shm_name, gb.ArraySpec("int64", (4,)), 4) as w, gb.attach(shm_name) as r:
        me, start = os.getpid(), segment.self_start_time()
        assert start > 0 and r.writer_alive is True
        w._set_writer(me, start + 1)          # "same pid, different process"
        assert r.writer_alive is False
        w._set_writer(me, start)
        assert r.writer_alive is True
        p = children.start(mp.get_context("fork"), time.sleep, 0)
        assert children.join(p, JOIN) == 0
        w._set_writer(p.pid, start)
        assert r.writer_alive is False
        assert segment.process_alive(me, start)
        assert not segment.process_alive(me, start + 1)
        assert not segment.process_alive(p.pid)
        assert not segment.process_alive(0) and not segment.process_alive(-1)


@pytest.mark.skipif(not segment._HAVE_PROC, reason="Linux /proc: the zombie and reaped checks")
def test_a_process_reaped_between_the_two_looks_is_dead(children, monkeypatch):
    """§5: process_alive asks kill(pid, 0), then /proc.  A writer SIGKILLed
    and reaped by its parent in between (test_sigkill_writer_mid_write's
    reader met this: it saw WriterGone, then writer_alive True) used to
    count as alive: no /proc entry was taken for "not a zombie, start time
    unknown".  kill(pid, 0) is made to succeed here, as it did before the
    reap; a zombie is dead too."""
    ctx = mp.get_context("fork")
    p = children.start(ctx, time.sleep, 60)
    start = segment.process_start_time(p.pid)
    assert start and segment.process_alive(p.pid, start)
    os.kill(p.pid, signal.SIGKILL)
    deadline = time.monotonic() + JOIN
    while segment._proc_stat(p.pid)[0] != b"Z" and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not segment.process_alive(p.pid, start)     # a zombie, not reaped yet
    p.join(JOIN)                                       # reaped
    monkeypatch.setattr(segment.os, "kill", lambda pid, sig: None)
    assert segment._proc_stat(p.pid) is None
    assert not segment.process_alive(p.pid, start)
    assert not segment.process_alive(p.pid)
