"""Streams in one process: every behaviour of SPEC §2.1-§2.3 and the
exceptions of §6, on real shared memory (no mocks).

Cross-process behaviour lives in test_stream_procs.py; names and modes in
test_names.py; torn reads, liveness and corrupt segments in their own files.
"""
import gc
import logging
import math
import pickle
import queue
import threading
import time
from typing import List, Optional

import numpy as np
import pydantic
import pytest

import global_buffer as gb

SPEC4 = gb.ArraySpec("float32", (4,))


def full(i, dtype="float32", shape=(4,)):
    return np.full(shape, i, dtype=dtype)


class Point(pydantic.BaseModel):
    x: int
    y: float
    label: str = ""
    tags: List[str] = []
    parent: Optional["Point"] = None


class Other(pydantic.BaseModel):
    a: int


class Blob(pydantic.BaseModel):
    data: bytes


@pytest.fixture
def stream(shm_name):
    """A float32 (4,) writer with capacity 4, and a reader attached to it."""
    w = gb.create(shm_name, SPEC4, 4)
    r = gb.attach(shm_name)
    yield w, r
    r.close()
    w.close()


# -- §6 exceptions ------------------------------------------------------------

def test_exception_hierarchy():
    """§6: every error subclasses GlobalBufferError, plus the builtin users
    already catch (Empty/queue.Empty, Full/queue.Full, BufferClosed/ValueError)."""
    for cls in (gb.Empty, gb.Full, gb.SchemaMismatch, gb.BufferClosed, gb.BufferExists,
                gb.BufferNotFound, gb.BufferCorrupt, gb.StaleView):
        assert issubclass(cls, gb.GlobalBufferError), cls
    assert issubclass(gb.Empty, queue.Empty)
    assert issubclass(gb.Full, queue.Full)
    assert issubclass(gb.BufferClosed, ValueError)


def test_public_names_exported_once():
    """STYLE 1: every public name is in __all__ exactly once and exists."""
    assert len(gb.__all__) == len(set(gb.__all__))
    for n in gb.__all__:
        assert hasattr(gb, n), n
    for n in ("create", "attach", "unlink", "ArraySpec", "Consumer", "GlobalBuffer", "Reader"):
        assert n in gb.__all__


# -- §2.1 ArraySpec -----------------------------------------------------------

def test_arrayspec_basics():
    """§2.1: ArraySpec(dtype, shape) fixes what every sample is."""
    s = gb.ArraySpec("uint8", (2, 3))
    assert s.dtype == np.dtype("uint8") and s.shape == (2, 3) and s.nbytes == 6
    assert gb.ArraySpec(np.float64, 5).shape == (5,)
    assert gb.ArraySpec("f4", [np.int64(2), 2]) == gb.ArraySpec(np.float32, (2, 2))
    assert hash(gb.ArraySpec("f4", (2,))) == hash(gb.ArraySpec(np.float32, (2,)))
    assert gb.ArraySpec("f4", (2,)) != gb.ArraySpec("f8", (2,))
    assert pickle.loads(pickle.dumps(s)) == s
    assert "uint8" in repr(s) and "(2, 3)" in repr(s)
    with pytest.raises(AttributeError):
        s.shape = (1,)
    structured = gb.ArraySpec([("a", "<i4"), ("b", "<f8", (2,))], (3,))
    assert structured.nbytes == 3 * (4 + 16)


@pytest.mark.parametrize("dtype, shape, exc", [
    ("object", (2,), TypeError),
    ([("a", "O")], (2,), TypeError),
    ("not-a-dtype", (2,), TypeError),
    ("f4", (-1,), ValueError),
    ("f4", ("a",), TypeError),
    ("f4", (1.5,), TypeError),
    ("f4", None, TypeError),
    ("f4", (1,) * 33, ValueError),
])
def test_arrayspec_rejects_bad_input(dtype, shape, exc):
    """§5 bad arguments: a bad schema is refused with TypeError/ValueError."""
    with pytest.raises(exc):
        gb.ArraySpec(dtype, shape)


def test_structured_and_multidim_stream_roundtrip(shm_name, new_name):
    """§2.1/§2.2: any fixed non-object dtype and shape round-trips exactly."""
    dt = np.dtype([("id", "<u4"), ("pos", "<f8", (3,)), ("ok", "?")])
    with gb.create(shm_name, gb.ArraySpec(dt, (5,)), 2) as w, gb.attach(shm_name) as r:
        a = np.zeros(5, dt)
        a["id"] = np.arange(5)
        a["pos"] = np.arange(15.0).reshape(5, 3)
        a["ok"][::2] = True
        w.write(a)
        got = r.next(timeout=5)
        assert got.dtype == dt and np.array_equal(got, a)
    name = new_name()
    with gb.create(name, gb.ArraySpec("uint8", (6, 7, 3)), 2) as w, gb.attach(name) as r:
        a = np.random.default_rng(1).integers(0, 255, (6, 7, 3), dtype=np.uint8)
        w.write(a)
        assert np.array_equal(r.latest(), a)
        assert r.shape == (6, 7, 3) and r.dtype == np.uint8 and r.nbytes == 126


# -- §2.1 create / §2.2 attach --------------------------------------------------

def test_create_attach_properties(shm_name):
    """§2.1/§2.2: the reader discovers schema, shape, dtype and nbytes from the
    segment; name/capacity/schema are exposed on both handles."""
    with gb.create(shm_name, gb.ArraySpec("int16", (3, 2)), 7) as w:
        assert w.name == shm_name and w.capacity == 7
        assert w.schema == gb.ArraySpec("int16", (3, 2))
        with gb.attach(shm_name) as r:
            assert r.name == shm_name and r.capacity == 7
            assert r.shape == (3, 2) and r.dtype == np.dtype("int16") and r.nbytes == 12
            assert r.schema == gb.ArraySpec("int16", (3, 2))
            assert r.overruns == 0
            assert r.writer_alive is True
            assert shm_name in repr(r) and shm_name in repr(w)


def test_latest_none_when_empty_then_newest(stream):
    """§2.2: latest() is None before any write, then the newest sample; it
    never consumes."""
    w, r = stream
    assert r.latest() is None
    for i in range(3):
        w.write(full(i))
    assert np.array_equal(r.latest(), full(2))
    assert np.array_equal(r.latest(), full(2))
    assert r.next(timeout=0)[0] == 0   # latest() did not move the cursor
    w.write(full(3))
    assert np.array_equal(r.latest(), full(3))


def test_latest_returns_a_copy(stream):
    """§2.2: latest()/next() return owned arrays, unaffected by later writes."""
    w, r = stream
    w.write(full(1))
    a = r.latest()
    assert a.flags.writeable and a.flags.owndata
    for i in range(10):
        w.write(full(100 + i))
    assert np.array_equal(a, full(1))


def test_new_reader_starts_after_newest(shm_name):
    """§2.2: a new reader's first next() is the first sample written after
    attach(); samples already present are not replayed."""
    with gb.create(shm_name, SPEC4, 4) as w:
        w.write(full(0))
        w.write(full(1))
        with gb.attach(shm_name) as r:
            with pytest.raises(gb.Empty):
                r.next(timeout=0)
            w.write(full(2))
            assert np.array_equal(r.next(timeout=5), full(2))
            assert r.overruns == 0


def test_start_oldest_replays_held_samples(shm_name):
    """§2.2: start="oldest" replays from the oldest sample still held; a
    stream of capacity c holds exactly the c newest samples."""
    with gb.create(shm_name, SPEC4, 3) as w:
        with gb.attach(shm_name, start="oldest") as r0:  # empty stream: nothing to replay
            with pytest.raises(gb.Empty):
                r0.next(timeout=0)
            w.write(full(0))
            w.write(full(1))
            with gb.attach(shm_name, start="oldest") as r1:
                assert [r1.next(timeout=5)[0] for _ in range(2)] == [0, 1]
            assert r0.next(timeout=5)[0] == 0
        for i in range(2, 8):
            w.write(full(i))
        with gb.attach(shm_name, start="oldest") as r:
            got = [r.next(timeout=5)[0] for _ in range(3)]
            assert got == [5, 6, 7]
            with pytest.raises(gb.Empty):
                r.next(timeout=0)
            assert r.overruns == 0


def test_capacity_one(shm_name):
    """§2.1: capacity=1 is valid: latest() and next() still work."""
    with gb.create(shm_name, SPEC4, 1) as w, gb.attach(shm_name) as r:
        assert w.capacity == 1
        w.write(full(1))
        assert r.next(timeout=5)[0] == 1
        w.write(full(2))
        w.write(full(3))
        assert r.next(timeout=5)[0] == 3
        assert r.overruns == 1
        assert r.latest()[0] == 3


def test_next_in_order(stream):
    """§2.2: next() yields every sample in order while the reader keeps up."""
    w, r = stream
    for i in range(20):
        w.write(full(i))
        assert r.next(timeout=5)[0] == i
    for i in range(20, 24):
        w.write(full(i))
    assert [r.next(timeout=5)[0] for _ in range(4)] == [20, 21, 22, 23]
    assert r.overruns == 0


def test_next_timeout_raises_empty(stream):
    """§2.2/§4/§6: next(timeout) raises gb.Empty (also queue.Empty) after
    about `timeout` seconds; timeout=0 does not block."""
    w, r = stream
    t0 = time.monotonic()
    with pytest.raises(gb.Empty):
        r.next(timeout=0)
    assert time.monotonic() - t0 < 0.5
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        r.next(timeout=0.3)
    dt = time.monotonic() - t0
    assert 0.25 <= dt < 2.0, dt


def test_next_wakes_on_write_from_thread(stream):
    """§2.2/§4: a blocked next() returns promptly when the writer publishes."""
    w, r = stream
    t = threading.Timer(0.2, w.write, args=(full(7),))
    t.start()
    try:
        t0 = time.monotonic()
        got = r.next(timeout=10)
        assert got[0] == 7
        assert time.monotonic() - t0 < 3
    finally:
        t.join(5)


def test_bad_timeouts(stream):
    """§5 bad arguments: a NaN or non-number timeout is refused; a negative
    timeout means "do not block" (as for multiprocessing.Queue.get)."""
    w, r = stream
    with pytest.raises(ValueError):
        r.next(timeout=float("nan"))
    with pytest.raises(TypeError):
        r.next(timeout="1")
    with pytest.raises(TypeError):
        r.next_into(np.zeros(4, np.float32), timeout=[1])
    t0 = time.monotonic()
    with pytest.raises(gb.Empty):
        r.next(timeout=-1)
    assert time.monotonic() - t0 < 0.5
    w.write(full(1))  # a bad timeout consumed nothing
    assert r.next(timeout=math.inf)[0] == 1


def test_overruns_when_lapped(shm_name):
    """§2.2: a lapped reader's overruns grow by the samples lost and it jumps
    to the oldest sample still held."""
    with gb.create(shm_name, SPEC4, 4) as w, gb.attach(shm_name) as r:
        w.write(full(0))
        assert r.next(timeout=5)[0] == 0
        for i in range(1, 11):   # 10 new samples, 4 held: 6 lost
            w.write(full(i))
        assert r.next(timeout=5)[0] == 7
        assert r.overruns == 6
        assert [r.next(timeout=5)[0] for _ in range(3)] == [8, 9, 10]
        for i in range(11, 21):
            w.write(full(i))
        assert r.next(timeout=5)[0] == 17
        assert r.overruns == 12


# -- §2.1 write ---------------------------------------------------------------

def test_write_rejects_wrong_arrays(stream):
    """§2.1/§5: anything but an ndarray of the exact dtype and shape raises
    ValueError/TypeError saying what was expected, and publishes nothing."""
    w, r = stream
    cases = [
        (np.zeros(4, np.float64), ValueError),
        (np.zeros(4, np.int32), ValueError),
        (np.zeros(5, np.float32), ValueError),
        (np.zeros((4, 1), np.float32), ValueError),
        (np.zeros((), np.float32), ValueError),
        ([0.0, 0.0, 0.0, 0.0], TypeError),
        (b"\0" * 16, TypeError),
        (None, TypeError),
        ({"x": 1}, TypeError),
    ]
    for bad, exc in cases:
        with pytest.raises(exc) as ei:
            w.write(bad)
        msg = str(ei.value)
        assert "float32" in msg or "(4,)" in msg, msg
    assert r.latest() is None
    with pytest.raises(gb.Empty):
        r.next(timeout=0)


def test_write_accepts_noncontiguous_and_equivalent_dtype(stream):
    """§2.1: a non-contiguous array of the right dtype and shape is copied in."""
    w, r = stream
    base = np.arange(8, dtype=np.float32)
    w.write(base[::2])
    assert np.array_equal(r.next(timeout=5), [0, 2, 4, 6])
    w.write(np.arange(4, dtype="<f4"))
    assert np.array_equal(r.next(timeout=5), [0, 1, 2, 3])


def test_write_source_not_aliased(stream):
    """§2.1: write() copies; mutating the source afterwards changes nothing."""
    w, r = stream
    a = full(1)
    w.write(a)
    a[:] = 9
    assert r.next(timeout=5)[0] == 1


# -- §2.1 reserve -------------------------------------------------------------

def test_reserve_publishes_on_normal_exit(stream):
    """§2.1: reserve() yields a writable view into the next slot; the sample
    is published when the block exits normally."""
    w, r = stream
    with w.reserve() as v:
        assert isinstance(v, np.ndarray) and v.shape == (4,) and v.dtype == np.float32
        assert v.flags.writeable
        v[:] = [1, 2, 3, 4]
        assert r.latest() is None   # not yet published
        with pytest.raises(gb.Empty):
            r.next(timeout=0)
    assert np.array_equal(r.next(timeout=5), [1, 2, 3, 4])
    assert np.array_equal(r.latest(), [1, 2, 3, 4])


def test_reserve_discards_on_exception(shm_name):
    """§2.1: if the block raises, nothing is published and the ring is
    unchanged, even when the reserved slot held the sample just out of the
    window (the spare slot)."""
    with gb.create(shm_name, SPEC4, 2) as w:
        for i in range(3):      # window holds 1, 2; slot of 0 is the spare
            w.write(full(i))
        r = gb.attach(shm_name)
        head_before = r._tail
        for _ in range(3):
            with pytest.raises(RuntimeError, match="boom"):
                with w.reserve() as v:
                    v[:] = -1
                    raise RuntimeError("boom")
        assert r._tail == head_before
        assert r.latest()[0] == 2
        with pytest.raises(gb.Empty):
            r.next(timeout=0)
        with gb.attach(shm_name, start="oldest") as old:
            assert [old.next(timeout=5)[0] for _ in range(2)] == [1, 2]
            with pytest.raises(gb.Empty):
                old.next(timeout=0)
        with w.reserve() as v:   # the next reserve publishes normally
            v[:] = 3
        assert r.next(timeout=5)[0] == 3
        r.close()


def test_reserve_discards_on_keyboard_interrupt(stream):
    """§2.1: any exception (BaseException too) discards the reserved sample."""
    w, r = stream
    with pytest.raises(KeyboardInterrupt):
        with w.reserve() as v:
            v[:] = 5
            raise KeyboardInterrupt
    assert r.latest() is None


def test_reserve_misuse(stream, shm_name, new_name):
    """§2.1: reserve() is for array streams; blocks do not nest and write()
    inside a block is refused (RuntimeError), leaving the ring usable."""
    w, r = stream
    with w.reserve() as v:
        v[:] = 1
        with pytest.raises(RuntimeError):
            w.write(full(2))
        with pytest.raises(RuntimeError):
            with w.reserve():
                pass
    assert r.next(timeout=5)[0] == 1
    with pytest.raises(gb.Empty):
        r.next(timeout=0)
    name = new_name()
    with gb.create(name, Point, 2) as mw:
        with pytest.raises(TypeError):
            with mw.reserve():
                pass


# -- §2.2 next_into / next_batch_into -----------------------------------------

def test_next_into(stream):
    """§2.2: next_into copies the next sample into a caller-owned array and
    returns its sequence number; gb.Empty on timeout."""
    w, r = stream
    out = np.empty(4, np.float32)
    with pytest.raises(gb.Empty):
        r.next_into(out, timeout=0.05)
    for i in range(3):
        w.write(full(10 + i))
    for i in range(3):
        seq = r.next_into(out, timeout=5)
        assert seq == i and np.array_equal(out, full(10 + i))
    with pytest.raises(gb.Empty):
        r.next_into(out, timeout=0)


def _bad_outs(shape, batch):
    k = (3,) if batch else ()
    full_shape = k + shape
    ro = np.zeros(full_shape, np.float32)
    ro.flags.writeable = False
    return [
        np.zeros(full_shape, np.float64),
        np.zeros(k + (5,), np.float32),
        np.zeros((3, 3, 4) if batch else (1, 4), np.float32),
        ro,
        np.zeros(k + (8,), np.float32)[..., ::2],     # strided: not C-contiguous
        [0.0] * 4,
        None,
    ] + ([np.zeros((4,), np.float32),                  # missing the batch axis
          np.asfortranarray(np.zeros((3, 4), np.float32))] if batch else [])


def test_next_into_wrong_out_consumes_nothing(stream):
    """§2.2/§5: a wrong out (dtype, shape, read-only, not C-contiguous, not an
    array) raises ValueError and consumes nothing."""
    w, r = stream
    w.write(full(1))
    for bad in _bad_outs((4,), batch=False):
        with pytest.raises(ValueError):
            r.next_into(bad, timeout=0)
    out = np.empty(4, np.float32)
    assert r.next_into(out, timeout=0) == 0 and out[0] == 1


def test_next_batch_into_takes_all_committed(stream):
    """§2.2: next_batch_into returns every already-committed sample up to
    len(out) at once, in order."""
    w, r = stream
    for i in range(3):
        w.write(full(i))
    out = np.full((8, 4), -1, np.float32)
    assert r.next_batch_into(out, timeout=0) == 3
    assert np.array_equal(out[:3, 0], [0, 1, 2])
    assert (out[3:] == -1).all()           # rows past the count untouched
    for i in range(3, 7):
        w.write(full(i))
    small = np.empty((3, 4), np.float32)
    assert r.next_batch_into(small, timeout=0) == 3
    assert list(small[:, 0]) == [3, 4, 5]
    assert r.next_batch_into(small, timeout=0) == 1
    assert small[0, 0] == 6
    assert r.next_batch_into(np.empty((0, 4), np.float32), timeout=0) == 0


def test_next_batch_into_waits_for_one(stream):
    """§2.2: with nothing committed it waits for at least one sample, and
    raises gb.Empty on timeout."""
    w, r = stream
    out = np.empty((4, 4), np.float32)
    t0 = time.monotonic()
    with pytest.raises(gb.Empty):
        r.next_batch_into(out, timeout=0.2)
    assert 0.15 <= time.monotonic() - t0 < 2
    t = threading.Timer(0.1, w.write, args=(full(5),))
    t.start()
    try:
        n = r.next_batch_into(out, timeout=10)
    finally:
        t.join(5)
    assert n == 1 and out[0, 0] == 5


def test_next_batch_into_counts_overruns(stream):
    """§2.2: a lapped batch reader counts the lost samples and resumes at the
    oldest held one."""
    w, r = stream
    for i in range(10):
        w.write(full(i))
    out = np.empty((16, 4), np.float32)
    assert r.next_batch_into(out, timeout=0) == 4
    assert list(out[:4, 0]) == [6, 7, 8, 9]
    assert r.overruns == 6


def test_next_batch_into_wrong_out_consumes_nothing(stream):
    """§2.2/§5: wrong out for a batch raises ValueError, consumes nothing."""
    w, r = stream
    w.write(full(1))
    w.write(full(2))
    for bad in _bad_outs((4,), batch=True):
        with pytest.raises(ValueError):
            r.next_batch_into(bad, timeout=0)
    out = np.empty((4, 4), np.float32)
    assert r.next_batch_into(out, timeout=0) == 2
    assert list(out[:2, 0]) == [1, 2]


# -- §2.2 view ------------------------------------------------------------------

def test_view_latest_is_readonly_zero_copy(stream):
    """§2.2: view("latest") yields a read-only ndarray over shared memory,
    None when nothing was written; it does not consume."""
    w, r = stream
    with r.view() as v:
        assert v is None
    w.write(full(1))
    w.write(full(2))
    with r.view("latest") as v:
        assert isinstance(v, np.ndarray) and v.shape == (4,) and v.dtype == np.float32
        assert not v.flags.writeable
        assert np.array_equal(v, full(2))
        with pytest.raises(ValueError):
            v[0] = 5
        with pytest.raises(ValueError):
            v.flags.writeable = True
    assert r.next(timeout=5)[0] == 1


def test_view_next_consumes_in_order(stream):
    """§2.2: view("next") yields the next sample in order, waits up to
    timeout and raises gb.Empty."""
    w, r = stream
    with pytest.raises(gb.Empty):
        with r.view("next", timeout=0.05):
            pass
    w.write(full(1))
    w.write(full(2))
    with r.view("next", timeout=5) as v:
        assert v[0] == 1 and not v.flags.writeable
    with r.view("next", timeout=5) as v:
        assert v[0] == 2
    with pytest.raises(gb.Empty):
        r.next(timeout=0)


def test_view_stale_when_overwritten(shm_name):
    """§2.2: if the writer overwrote the viewed slot while the block ran,
    leaving the block raises gb.StaleView; capacity samples later it is
    still intact (the spare slot), one more and it is overwritten."""
    with gb.create(shm_name, SPEC4, 3) as w, gb.attach(shm_name) as r:
        w.write(full(0))
        with r.view("latest") as v:
            for i in range(1, 4):        # 3 = capacity more: slot of 0 untouched
                w.write(full(i))
            assert v[0] == 0
        with pytest.raises(gb.StaleView):
            with r.view("latest") as v:
                for i in range(4, 8):    # 4 = nslots more: overwritten
                    w.write(full(i))
        with pytest.raises(gb.StaleView):
            with r.view("next", timeout=5) as v:
                for i in range(8, 12):
                    w.write(full(i))


def test_view_not_stale_during_uncommitted_reserve(shm_name):
    """§2.1/§2.2: an open reserve() block writes the spare slot, never the
    newest sample's: a view of latest() stays valid."""
    with gb.create(shm_name, SPEC4, 1) as w, gb.attach(shm_name) as r:
        w.write(full(1))
        with r.view("latest") as v:
            with w.reserve() as wv:
                wv[:] = 2
                assert v[0] == 1
            assert v[0] == 1  # published into the other slot
        assert r.latest()[0] == 2


def test_view_misuse(stream, new_name):
    """§2.2: view() takes which="latest"|"next" (ValueError otherwise) and is
    for array streams (TypeError on a message stream)."""
    w, r = stream
    with pytest.raises(ValueError):
        with r.view("oldest"):
            pass
    name = new_name()
    with gb.create(name, Point, 2) as mw, gb.attach(name) as mr:
        mw.write(Point(x=1, y=2))
        with pytest.raises(TypeError):
            with mr.view():
                pass


def test_view_exception_in_block_propagates(stream):
    """§2.2: an error raised inside a view block propagates unchanged."""
    w, r = stream
    w.write(full(1))
    with pytest.raises(KeyError):
        with r.view():
            raise KeyError("mine")


# -- §2.2 on_data / iteration / Consumer -----------------------------------------

def _wait_until(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def test_on_data_next_delivers_every_sample_in_order(stream):
    """§2.2: on_data(fn, mode="next") calls fn(sample, seq) on a background
    thread for every sample in order; stop() ends it."""
    w, r = stream
    got = []
    main = threading.current_thread()
    threads = set()

    def fn(sample, seq):
        threads.add(threading.current_thread())
        got.append((seq, float(sample[0])))

    h = r.on_data(fn, mode="next")
    try:
        time.sleep(0.05)
        for i in range(30):
            w.write(full(i))
            if i % 3 == 2:   # stay within capacity 4
                assert _wait_until(lambda i=i: len(got) >= i + 1)
        assert _wait_until(lambda: len(got) >= 30)
    finally:
        h.stop()
    assert not h.running
    base = got[0][0]
    assert got == [(base + i, float(i)) for i in range(30)]
    assert main not in threads
    n = len(got)
    w.write(full(99))
    time.sleep(0.2)
    assert len(got) == n  # stopped: no more calls


def test_on_data_latest_delivers_newest(stream):
    """§2.2: on_data(fn, mode="latest") calls fn with the newest sample after
    each wake-up; a burst may be coalesced but the last one arrives."""
    w, r = stream
    got = []
    with r.on_data(lambda s, q: got.append((q, float(s[0]))), mode="latest") as h:
        time.sleep(0.05)
        for i in range(50):
            w.write(full(i))
        assert _wait_until(lambda: got and got[-1][1] == 49)
        seqs = [q for q, _ in got]
        assert seqs == sorted(set(seqs))   # increasing, no repeats
        assert all(q == v for q, v in got)
    assert not h.running


def test_on_data_callback_errors_are_logged_and_survived(stream, caplog):
    """§2.2: an exception in fn is logged and the thread keeps going."""
    w, r = stream
    got = []

    def fn(sample, seq):
        if seq == 0:
            raise RuntimeError("callback failed")
        got.append(seq)

    with caplog.at_level(logging.ERROR, logger="global_buffer"):
        h = r.on_data(fn, mode="next")
        try:
            time.sleep(0.05)
            w.write(full(0))
            w.write(full(1))
            assert _wait_until(lambda: got == [1])
        finally:
            h.stop()
    assert any("callback failed" in (rec.exc_text or "") or rec.exc_info for rec in caplog.records)


def test_on_data_bad_arguments(stream):
    """§5: on_data rejects a bad mode (ValueError) or a non-callable (TypeError)."""
    w, r = stream
    with pytest.raises(ValueError):
        r.on_data(print, mode="oldest")
    with pytest.raises(TypeError):
        r.on_data(42)


def test_on_data_independent_of_reader_cursor(stream):
    """§2.2: the callback thread has its own cursor; the reader's next() still
    sees every sample."""
    w, r = stream
    got = []
    with r.on_data(lambda s, q: got.append(q), mode="next"):
        time.sleep(0.05)
        for i in range(3):
            w.write(full(i))
        assert [r.next(timeout=5)[0] for _ in range(3)] == [0, 1, 2]
        assert _wait_until(lambda: len(got) == 3)


def test_iteration_yields_in_order(stream):
    """§2.2: iterating a reader yields samples in order (blocking)."""
    w, r = stream
    for i in range(3):
        w.write(full(i))
    out = []
    for s in r:
        out.append(float(s[0]))
        if len(out) == 3:
            break
    assert out == [0, 1, 2]
    threading.Timer(0.1, w.write, args=(full(3),)).start()
    assert float(next(iter(r))[0]) == 3


def test_iteration_ends_when_reader_closed_by_another_thread(stream):
    """§2.2/§2.3: a for-loop over a reader ends (no hang) once the reader is
    closed from another thread."""
    w, r = stream
    out = []

    def consume():
        for s in r:
            out.append(s)

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    w.write(full(1))
    assert _wait_until(lambda: len(out) == 1)
    r.close()
    t.join(3)
    assert not t.is_alive()


@pytest.mark.parametrize("call", ["next", "next_into", "next_batch_into", "view"])
def test_close_from_another_thread_wakes_blocked_call(shm_name, call):
    """§2.3/§4: closing a reader while another thread is blocked in it makes
    that call raise gb.BufferClosed promptly (no crash on the unmapped
    segment, no hang until the timeout)."""
    with gb.create(shm_name, SPEC4, 2):
        r = gb.attach(shm_name)
        calls = {
            "next": lambda: r.next(timeout=20),
            "next_into": lambda: r.next_into(np.empty(4, np.float32), timeout=20),
            "next_batch_into": lambda: r.next_batch_into(np.empty((2, 4), np.float32),
                                                         timeout=20),
            "view": lambda: r.view("next", timeout=20).__enter__(),
        }
        outcome = []

        def blocked():
            try:
                calls[call]()
                outcome.append("returned")
            except BaseException as e:   # noqa: B036 - record whatever happens
                outcome.append(e)

        t = threading.Thread(target=blocked, daemon=True)
        t.start()
        time.sleep(0.2)                  # parked in the kernel by now
        t0 = time.monotonic()
        r.close()
        t.join(5)
        assert not t.is_alive()
        assert time.monotonic() - t0 < 2
        assert len(outcome) == 1 and isinstance(outcome[0], gb.BufferClosed), outcome
        r.close()


class Recorder(gb.Consumer):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.seen = []
        self.gate = None      # an Event the first callback waits on

    def callback(self):
        data = self.data.copy() if isinstance(self.data, np.ndarray) else self.data
        self.seen.append((self.seq, data))
        if self.gate is not None and len(self.seen) == 1:
            self.gate.wait(10)


def test_consumer_subclass_next(stream, shm_name):
    """§2.2: a Consumer subclass gets self.data and self.seq set before each
    callback(); start()/stop(); dropped is 0 while it keeps up."""
    w, r = stream
    c = Recorder.attach(shm_name, mode="next")
    try:
        assert c.start() is c
        time.sleep(0.05)
        for i in range(4):
            w.write(full(i))
        assert _wait_until(lambda: len(c.seen) == 4)
        c.stop()
        assert [float(d[0]) for _, d in c.seen] == [0, 1, 2, 3]
        seqs = [s for s, _ in c.seen]
        assert seqs == list(range(seqs[0], seqs[0] + 4))
        assert c.dropped == 0
    finally:
        c.close()


def test_consumer_dropped_counts_overruns(shm_name):
    """§2.2: Consumer.dropped equals the overruns of its reader when a slow
    callback is lapped."""
    with gb.create(shm_name, SPEC4, 2) as w:
        c = Recorder.attach(shm_name, mode="next")
        c.gate = threading.Event()
        with c:
            time.sleep(0.05)
            w.write(full(0))
            assert _wait_until(lambda: len(c.seen) == 1)
            for i in range(1, 21):  # callback busy: 20 written, 2 held
                w.write(full(i))
            c.gate.set()
            assert _wait_until(lambda: c.seen and float(c.seen[-1][1][0]) == 20)
            assert c.dropped == 18
            assert [float(d[0]) for _, d in c.seen] == [0, 19, 20]


def test_consumer_latest_and_messages(shm_name):
    """§2.2: Consumer.attach(name, model=..., mode="latest") delivers validated
    model instances."""
    with gb.create(shm_name, Point, 4) as w:
        with Recorder.attach(shm_name, model=Point) as c:  # __enter__ starts
            time.sleep(0.05)
            w.write(Point(x=1, y=1.5))
            assert _wait_until(lambda: len(c.seen) >= 1)
            seq, data = c.seen[-1]
            assert isinstance(data, Point) and data.x == 1 and seq == 0


def test_consumer_bad_mode(stream, shm_name):
    """§5: Consumer refuses an unknown mode."""
    with pytest.raises(ValueError):
        Recorder.attach(shm_name, mode="every")


# -- message streams ---------------------------------------------------------------

def test_message_stream_with_model(shm_name):
    """§2.1/§2.2: model instances are written and read back as validated
    instances of the model given to attach (nested models included)."""
    with gb.create(shm_name, Point, 8) as w, gb.attach(shm_name, model=Point) as r:
        assert w.schema is Point and r.schema is Point
        assert r.shape is None and r.dtype is None and r.nbytes is None
        p = Point(x=1, y=2.5, label="a", tags=["u", "v"], parent=Point(x=0, y=0.0))
        w.write(p)
        got = r.next(timeout=5)
        assert isinstance(got, Point) and got == p
        assert isinstance(got.parent, Point)
        assert r.latest() == p


def test_message_stream_without_model_returns_dicts(shm_name):
    """§2.2: without model=, message reads return plain dicts."""
    with gb.create(shm_name, Point, 8) as w, gb.attach(shm_name) as r:
        w.write(Point(x=3, y=4.0, tags=["t"]))
        got = r.next(timeout=5)
        assert type(got) is dict
        assert got["x"] == 3 and got["y"] == 4.0 and got["tags"] == ["t"]
        assert r.latest() == got


def test_message_dict_input_is_validated(shm_name):
    """§2.1: a dict given to write() is validated against the model; an
    invalid dict or a wrong type raises and publishes nothing."""
    with gb.create(shm_name, Point, 8) as w, gb.attach(shm_name, model=Point) as r:
        w.write({"x": "5", "y": 1})           # coerced by pydantic
        got = r.next(timeout=5)
        assert got == Point(x=5, y=1.0)
        with pytest.raises(ValueError):        # pydantic.ValidationError
            w.write({"x": "not an int", "y": 1})
        with pytest.raises(ValueError):
            w.write({"y": 1})                  # missing field
        with pytest.raises(TypeError):
            w.write(Other(a=1))
        with pytest.raises(TypeError):
            w.write([1, 2])
        with pytest.raises(TypeError):
            w.write(np.zeros(4, np.float32))
        with pytest.raises(gb.Empty):
            r.next(timeout=0)
        assert r.latest() == Point(x=5, y=1.0)


def test_message_oversize_raises_and_publishes_nothing(shm_name, new_name):
    """§2.1/§5: a message that encodes larger than max_bytes raises
    ValueError naming both sizes; nothing is published."""
    with gb.create(shm_name, Blob, 4, max_bytes=256) as w, gb.attach(shm_name) as r:
        w.write(Blob(data=b"a" * 100))
        with pytest.raises(ValueError) as ei:
            w.write(Blob(data=b"b" * 300))
        msg = str(ei.value)
        assert "256" in msg
        size = len(gb.codec.MessageCodec(Blob).encode(Blob(data=b"b" * 300)))
        assert str(size) in msg
        assert r.latest() == {"data": b"a" * 100}
        assert r.next(timeout=0) == {"data": b"a" * 100}
        with pytest.raises(gb.Empty):
            r.next(timeout=0)
    name = new_name()
    with gb.create(name, Blob, 2) as w:    # default max_bytes is 4096
        w.write(Blob(data=b"x" * 4000))
        with pytest.raises(ValueError, match="4096"):
            w.write(Blob(data=b"x" * 5000))


def test_message_exactly_max_bytes(shm_name):
    """§2.1: a message of exactly max_bytes fits."""
    codec = gb.codec.MessageCodec(Blob)
    n = len(codec.encode(Blob(data=b"z" * 200)))
    with gb.create(shm_name, Blob, 2, max_bytes=n) as w, gb.attach(shm_name, model=Blob) as r:
        w.write(Blob(data=b"z" * 200))
        assert r.next(timeout=5).data == b"z" * 200
        with pytest.raises(ValueError):
            w.write(Blob(data=b"z" * 201))


def test_wrong_model_schema_mismatch(shm_name, new_name):
    """§2.2/§6: attach(model=) with a model that differs from the stream's
    raises gb.SchemaMismatch; model= on an array stream too; a non-model is
    a TypeError."""
    with gb.create(shm_name, Point, 2):
        with pytest.raises(gb.SchemaMismatch):
            gb.attach(shm_name, model=Other)
        with pytest.raises(TypeError):
            gb.attach(shm_name, model=dict)
        with pytest.raises(TypeError):
            gb.attach(shm_name, model=Point(x=1, y=1))
    name = new_name()
    with gb.create(name, SPEC4, 2):
        with pytest.raises(gb.SchemaMismatch):
            gb.attach(name, model=Point)


def test_message_max_bytes_validation(shm_name):
    """§5: max_bytes must be a positive int, and only for message streams."""
    for bad, exc in [(0, ValueError), (-5, ValueError), (1.5, TypeError), ("4096", TypeError)]:
        with pytest.raises(exc):
            gb.create(shm_name, Point, 2, max_bytes=bad)
    with pytest.raises(ValueError):
        gb.create(shm_name, SPEC4, 2, max_bytes=64)
    with gb.create(shm_name, Point, 2, max_bytes=64):   # the name was never taken
        pass


def test_message_methods_need_arrays(shm_name):
    """§2.2: next_into/next_batch_into are for array streams."""
    with gb.create(shm_name, Point, 2), gb.attach(shm_name) as r:
        with pytest.raises(TypeError):
            r.next_into(np.empty(4, np.float32), timeout=0)
        with pytest.raises(TypeError):
            r.next_batch_into(np.empty((2, 4), np.float32), timeout=0)


# -- bad arguments to create / attach -----------------------------------------------

@pytest.mark.parametrize("capacity, exc", [
    (0, ValueError), (-1, ValueError), (1.0, TypeError), ("3", TypeError),
    (None, TypeError), (True, TypeError), (2 ** 40, ValueError),
])
def test_bad_capacity(shm_name, capacity, exc):
    """§2.1/§5: capacity must be an int >= 1; nothing is created otherwise."""
    with pytest.raises(exc):
        gb.create(shm_name, SPEC4, capacity)
    with pytest.raises(gb.BufferNotFound):
        gb.attach(shm_name)


def test_numpy_int_capacity(shm_name):
    """§2.1: a numpy integer is an int for capacity."""
    with gb.create(shm_name, SPEC4, np.int64(3)) as w:
        assert w.capacity == 3


@pytest.mark.parametrize("schema", [
    "float32", np.float32, np.dtype("f4"), (np.float32, (4,)), dict, Point(x=1, y=1), None, 42,
])
def test_bad_schema(shm_name, schema):
    """§2.1/§5: schema is an ArraySpec or a pydantic model class; anything
    else is a TypeError and creates nothing."""
    with pytest.raises(TypeError):
        gb.create(shm_name, schema, 2)
    with pytest.raises(gb.BufferNotFound):
        gb.attach(shm_name)


@pytest.mark.parametrize("start", ["latest", "NEWEST", None, 0, "next"])
def test_bad_start(shm_name, start):
    """§2.2/§5: start is "newest" or "oldest"."""
    with gb.create(shm_name, SPEC4, 2):
        with pytest.raises(ValueError):
            gb.attach(shm_name, start=start)


def test_bad_heartbeat_interval_and_poll(shm_name):
    """§5: heartbeat_interval must be a number >= 0; poll bounds ordered."""
    for bad in (-1, "x", None):
        with pytest.raises((ValueError, TypeError)):
            gb.create(shm_name, SPEC4, 2, heartbeat_interval=bad)
    with gb.create(shm_name, SPEC4, 2):
        with pytest.raises(ValueError):
            gb.attach(shm_name, poll_min=0.01, poll_max=0.001)
        with pytest.raises(ValueError):
            gb.attach(shm_name, poll_min=0)
        with gb.attach(shm_name, poll_min=0.0005, poll_max=0.005):
            pass


# -- §2.3 lifecycle --------------------------------------------------------------------

def test_duplicate_create_raises_buffer_exists(shm_name):
    """§2.1/§6: creating a name that exists raises gb.BufferExists (also
    FileExistsError) and leaves the existing stream intact."""
    with gb.create(shm_name, SPEC4, 2) as w:
        w.write(full(1))
        r = gb.attach(shm_name)
        with pytest.raises(gb.BufferExists):
            gb.create(shm_name, SPEC4, 2)
        with pytest.raises(FileExistsError):
            gb.create(shm_name, Point, 5)
        assert r.latest()[0] == 1
        w.write(full(2))
        assert r.next(timeout=5)[0] == 2
        r.close()


def test_attach_missing_raises_buffer_not_found(shm_name):
    """§6: attaching a missing name raises gb.BufferNotFound (also
    FileNotFoundError)."""
    with pytest.raises(gb.BufferNotFound):
        gb.attach(shm_name)
    with pytest.raises(FileNotFoundError):
        gb.attach(shm_name)


def test_unlink_missing_is_noop(shm_name):
    """§2.3: gb.unlink of a missing name is a no-op (also twice)."""
    gb.unlink(shm_name)
    gb.unlink(shm_name)


def test_unlink_keeps_attached_readers_working(shm_name):
    """§2.3: unlink removes the name; mapped handles keep working and the
    name can be created afresh."""
    w = gb.create(shm_name, SPEC4, 2)
    r = gb.attach(shm_name)
    try:
        w.unlink()
        with pytest.raises(gb.BufferNotFound):
            gb.attach(shm_name)
        w.write(full(4))
        assert r.next(timeout=5)[0] == 4
        with gb.create(shm_name, SPEC4, 2) as w2, gb.attach(shm_name) as r2:
            w2.write(full(5))
            assert r2.latest()[0] == 5
            assert r.latest()[0] == 4   # the old segment, still mapped
    finally:
        r.close()
        w.close()


def test_writer_context_manager_unlinks(shm_name):
    """§2.1/§2.3: the owner's with-block is the stream's lifetime; closing
    without unlink keeps the segment for gb.unlink."""
    with gb.create(shm_name, SPEC4, 2) as w:
        assert not w.closed
    assert w.closed
    with pytest.raises(gb.BufferNotFound):
        gb.attach(shm_name)
    w = gb.create(shm_name, SPEC4, 2)
    w.close()
    gb.attach(shm_name).close()   # still there
    gb.unlink(shm_name)
    with pytest.raises(gb.BufferNotFound):
        gb.attach(shm_name)


def test_reader_context_manager_and_close_do_not_unlink(shm_name):
    """§2.3: a reader's close()/with-block detaches only."""
    with gb.create(shm_name, SPEC4, 2) as w:
        with gb.attach(shm_name) as r:
            pass
        assert r.closed
        r.close()   # idempotent
        w.write(full(1))
        with gb.attach(shm_name, start="oldest") as r2:
            assert r2.next(timeout=5)[0] == 1


def _reader_calls(r):
    out = np.empty(4, np.float32)
    batch = np.empty((2, 4), np.float32)
    return {
        "latest": lambda: r.latest(),
        "next": lambda: r.next(timeout=0),
        "next_into": lambda: r.next_into(out, timeout=0),
        "next_batch_into": lambda: r.next_batch_into(batch, timeout=0),
        "view latest": lambda: r.view().__enter__(),
        "view next": lambda: r.view("next", timeout=0).__enter__(),
        "on_data": lambda: r.on_data(lambda s, q: None),
        "iter": lambda: next(iter(r)),
        "writer_alive": lambda: r.writer_alive,
        "capacity": lambda: r.capacity,
    }


def test_closed_reader_raises_buffer_closed(stream):
    """§2.3: after close(), every method but close() raises gb.BufferClosed
    (also ValueError); close() is idempotent."""
    w, r = stream
    w.write(full(1))
    r.close()
    r.close()
    assert r.closed
    for _what, call in _reader_calls(r).items():
        with pytest.raises(gb.BufferClosed):
            call()
        with pytest.raises(ValueError):
            call()
    with pytest.raises(gb.BufferClosed):
        with r:
            pass
    assert r.latest is not None  # attribute access itself is fine
    assert "closed" in repr(r)


def test_closed_writer_raises_buffer_closed(stream):
    """§2.3: after close(), write/reserve/heartbeat/unlink raise
    gb.BufferClosed; close() is idempotent; readers keep what was written."""
    w, r = stream
    w.write(full(1))
    w.close()
    w.close()
    assert w.closed
    for call in (lambda: w.write(full(2)), lambda: w.reserve().__enter__(),
                 lambda: w.heartbeat(), lambda: w.unlink(), lambda: w.capacity):
        with pytest.raises(gb.BufferClosed):
            call()
    assert r.latest()[0] == 1
    assert r.next(timeout=0)[0] == 1


def test_close_with_live_view_does_not_crash(stream):
    """§2.3: closing a reader while a view it handed out is still referenced
    is safe: the view keeps its memory until collected."""
    w, r = stream
    w.write(full(3))
    with r.view() as v:
        keep = v
    r.close()
    assert keep[0] == 3
    del keep, v
    gc.collect()


def test_closing_reader_unblocks_nothing_else(shm_name):
    """§2.3: several readers are independent: closing one leaves the others."""
    with gb.create(shm_name, SPEC4, 4) as w:
        r1, r2 = gb.attach(shm_name), gb.attach(shm_name)
        try:
            w.write(full(1))
            r1.close()
            assert r2.next(timeout=5)[0] == 1
        finally:
            r1.close()
            r2.close()
