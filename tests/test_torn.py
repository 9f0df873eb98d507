"""Torn-read stress (SPEC §5 "torn data never reaches a caller"): a writer
process publishes at full speed into a small ring while >= 3 reader
processes read with every API; each payload is self-checking, and not one
torn sample may reach a caller.

The default run takes a few seconds; ``-m slow`` runs longer variants.
"""
import hashlib
import multiprocessing as mp
import time

import numpy as np
import pydantic
import pytest

import global_buffer as gb

ELEMS = 16384          # 128 KiB of int64: a copy takes long enough to be overtaken
CAPACITY = 3           # small ring: the writer laps slow readers all the time
READERS = 3
JOIN = 60


class Chunk(pydantic.BaseModel):
    n: int
    data: bytes
    digest: str


def _digest(n, data):
    return hashlib.blake2b(n.to_bytes(8, "little") + data, digest_size=16).hexdigest()


# -- child bodies ----------------------------------------------------------------

def array_writer(name, ready, start, stop, results):
    w = gb.create(name, gb.ArraySpec("int64", (ELEMS,)), CAPACITY)
    src = np.empty(ELEMS, np.int64)
    ready.set()
    start.wait(JOIN)
    i = 0
    try:
        while not stop.is_set():
            if i & 1:
                src.fill(i)
                w.write(src)
            else:
                with w.reserve() as v:   # filled in place, in shared memory
                    v.fill(i)
            i += 1
    finally:
        w.close()
        results.put(("writer", i))


def _uniform(a):
    return bool((a == a.flat[0]).all())


def array_reader(name, ready, start, stop, results):
    r = gb.attach(name)
    c = dict(checked=0, torn=0, stale=0, misordered=0, next=0, latest=0, view=0,
             into=0, batch=0, empty=0)
    out = np.empty(ELEMS, np.int64)
    batch = np.empty((4, ELEMS), np.int64)
    last = -1
    ready.release()
    start.wait(JOIN)

    def seen(v):
        nonlocal last
        if v <= last:
            c["misordered"] += 1
        last = v

    try:
        k = 0
        while not stop.is_set():
            k += 1
            try:
                m = k % 6
                if m == 0:
                    a = r.next(timeout=1)
                    c["next"] += 1
                    if not _uniform(a):
                        c["torn"] += 1
                    seen(int(a[0]))
                elif m == 1:
                    seq = r.next_into(out, timeout=1)
                    c["into"] += 1
                    if not _uniform(out) or out[0] != seq:
                        c["torn"] += 1
                    seen(int(seq))
                elif m == 2:
                    n = r.next_batch_into(batch, timeout=1)
                    c["batch"] += 1
                    for row in batch[:n]:
                        if not _uniform(row):
                            c["torn"] += 1
                        seen(int(row[0]))
                    c["checked"] += n - 1
                elif m == 3:
                    a = r.latest()
                    c["latest"] += 1
                    if a is not None and not _uniform(a):
                        c["torn"] += 1
                elif m in (4, 5):
                    which = "latest" if m == 4 else "next"
                    try:
                        with r.view(which, timeout=1) as v:
                            ok = v is None or _uniform(v)
                            val = None if v is None else int(v[0])
                        # reached only if the slot was not overwritten meanwhile
                        c["view"] += 1
                        if not ok:
                            c["torn"] += 1
                        if which == "next" and val is not None:
                            seen(val)
                    except gb.StaleView:
                        c["stale"] += 1   # overwritten under the view: reported, not torn
                c["checked"] += 1
            except gb.Empty:
                c["empty"] += 1
            except gb.WriterGone:
                break  # the writer stopped first and everything was read (§2.2)
        c["overruns"] = r.overruns
    finally:
        r.close()
        results.put(("reader", c))


def message_writer(name, ready, start, stop, results):
    w = gb.create(name, Chunk, CAPACITY, max_bytes=8192)
    rng = np.random.default_rng(7)
    blobs = [rng.bytes(int(n)) for n in rng.integers(0, 7000, 64)]
    ready.set()
    start.wait(JOIN)
    i = 0
    try:
        while not stop.is_set():
            data = blobs[i % len(blobs)]
            w.write(Chunk(n=i, data=data, digest=_digest(i, data)))
            i += 1
    finally:
        w.close()
        results.put(("writer", i))


def message_reader(name, ready, start, stop, results):
    r = gb.attach(name, model=Chunk)
    c = dict(checked=0, torn=0, misordered=0, empty=0, errors=0)
    last = -1
    ready.release()
    start.wait(JOIN)
    try:
        k = 0
        while not stop.is_set():
            k += 1
            try:
                m = r.next(timeout=1) if k % 3 else r.latest()
            except gb.Empty:
                c["empty"] += 1
                continue
            except gb.WriterGone:
                break  # the writer stopped first and everything was read (§2.2)
            except Exception:          # a torn message would fail to decode
                c["errors"] += 1
                continue
            if m is None:
                continue
            c["checked"] += 1
            if m.digest != _digest(m.n, m.data):
                c["torn"] += 1
            if k % 3:
                if m.n <= last:
                    c["misordered"] += 1
                last = m.n
        c["overruns"] = r.overruns
    finally:
        r.close()
        results.put(("reader", c))


# -- driver ----------------------------------------------------------------------

def _await(cond, procs, what):
    """Wait for cond(timeout) to hold; fail at once if a child died."""
    deadline = time.monotonic() + JOIN
    while not cond(0.1):
        dead = [p.exitcode for p in procs if p.exitcode is not None]
        assert not dead, f"{what} process exited early with code {dead}"
        assert time.monotonic() < deadline, f"{what} did not start within {JOIN}s"


def _stress(ctx, name, children, writer, reader, seconds, readers=READERS):
    ready_w, ready_r = ctx.Event(), ctx.Semaphore(0)
    start, stop, results = ctx.Event(), ctx.Event(), ctx.Queue()
    wp = children.start(ctx, writer, name, ready_w, start, stop, results)
    _await(ready_w.wait, [wp], "writer")
    rps = [children.start(ctx, reader, name, ready_r, start, stop, results)
           for _ in range(readers)]
    for _ in rps:
        _await(lambda t: ready_r.acquire(timeout=t), rps, "reader")
    start.set()
    time.sleep(seconds)
    stop.set()
    res = [results.get(timeout=JOIN) for _ in range(readers + 1)]
    for p in [wp] + rps:
        assert children.join(p, JOIN) == 0
    written = [n for kind, n in res if kind == "writer"][0]
    stats = [c for kind, c in res if kind == "reader"]
    return written, stats


def _check(written, stats, min_checked):
    assert written > 100, f"writer published only {written} samples"
    for c in stats:
        assert c["torn"] == 0, stats
        assert c.get("errors", 0) == 0, stats
        assert c["misordered"] == 0, stats
        assert c["checked"] >= min_checked, stats
    # the writer really did lap the readers: reads raced overwrites
    assert sum(c["overruns"] for c in stats) > 0, stats


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_no_torn_arrays(shm_name, children, method):
    """§5: 1 writer at full speed + 3 readers (next, next_into,
    next_batch_into, latest, view latest/next), ~1.5 s per start method:
    zero torn samples, order preserved, overruns counted."""
    written, stats = _stress(mp.get_context(method), shm_name, children, array_writer,
                             array_reader, 1.5)
    _check(written, stats, 50)
    assert all(c["view"] > 0 and c["latest"] > 0 for c in stats), stats


def test_no_torn_messages(shm_name, children):
    """§5: variable-length message samples with a digest, 1 writer + 3
    readers for ~1.5 s: every decoded message verifies."""
    written, stats = _stress(mp.get_context("spawn"), shm_name, children, message_writer,
                             message_reader, 1.5)
    _check(written, stats, 50)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["spawn", "fork", "forkserver"])
def test_no_torn_arrays_long(shm_name, children, method):
    """§5 (slow): the array stress for 20 s with 4 readers."""
    written, stats = _stress(mp.get_context(method), shm_name, children, array_writer,
                             array_reader, 20, readers=4)
    _check(written, stats, 500)


@pytest.mark.slow
def test_no_torn_messages_long(shm_name, children):
    """§5 (slow): the message stress for 20 s with 4 readers."""
    written, stats = _stress(mp.get_context("spawn"), shm_name, children, message_writer,
                             message_reader, 20, readers=4)
    _check(written, stats, 500)
