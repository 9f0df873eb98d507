"""Large items into rings bigger than the cache go in with streaming
(non-temporal) stores (gb_copy_streaming, docs/design.md).  These tests pin
that the fast path is taken where it should be and that every byte arrives:
odd lengths, unaligned sources, across processes (SPEC §1, §2.1, §3.1)."""
import numpy as np
import pytest

import global_buffer as gb

TIMEOUT = 30
MIB = 1 << 20
# 6 MiB + 3 bytes: not a multiple of 16 or 64, and 9 slots are > 16 MiB
BIG = gb.ArraySpec("uint8", (6 * MIB + 3,))


def _frame(i, n=BIG.shape[0]):
    return np.random.default_rng(i).integers(0, 256, n, dtype=np.uint8)


def _unaligned(a):
    """A C-contiguous copy of ``a`` whose data starts one byte past a
    16-byte boundary (streaming stores need an aligned destination; the
    source may be anywhere)."""
    raw = np.empty(a.nbytes + 32, np.uint8)
    off = (-raw.ctypes.data) % 16 + 1
    out = raw[off:off + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    assert out.ctypes.data % 16 == 1 and out.flags.c_contiguous
    return out


def test_policy_large_items_in_big_rings_only(shm_name):
    """The choice is per ring: small items, or a ring that fits in half the
    last-level cache, stay on memcpy (faster there, measured)."""
    with gb.create(shm_name + "a", BIG, 8) as w:
        assert w._streaming
    with gb.create(shm_name + "b", gb.ArraySpec("uint8", (512 * 1024,)), 64) as w:
        assert not w._streaming        # 512 KiB items: below the 1 MiB floor
    with gb.create(shm_name + "c", gb.ArraySpec("uint8", (MIB,)), 2) as w:
        assert not w._streaming        # 3 MiB ring: cache-resident


def test_stream_exact_bytes_odd_length_unaligned_source(shm_name):
    with gb.create(shm_name, BIG, 8) as w, gb.attach(shm_name) as r:
        out = np.empty(BIG.shape, np.uint8)
        for i in range(12):            # laps the 9 slots
            a = _frame(i)
            w.write(_unaligned(a) if i % 2 else a)
            assert r.next_into(out, timeout=TIMEOUT) == i
            assert np.array_equal(out, a), i
        assert r.overruns == 0


def _writer(name, n, ready, go):
    with gb.create(name, BIG, 8) as w:
        ready.set()
        go.wait(TIMEOUT)
        for i in range(n):
            w.write(_frame(i))
        w.write(np.zeros(BIG.shape, np.uint8))   # lets the reader finish
        go.clear()
        ready.wait(TIMEOUT)                        # reader is done: unlink


def test_stream_across_processes(ctx, shm_name, children):
    """A child writes checksummed frames with streaming stores; the parent
    reads each in order (lossless: the child writes fewer than the ring
    holds before we read, then we keep up) and gets every byte."""
    ready, go = ctx.Event(), ctx.Event()
    n = 8
    p = children.start(ctx, _writer, shm_name, n, ready, go)
    assert ready.wait(TIMEOUT)
    ready.clear()
    with gb.attach(shm_name, start="oldest") as r:
        go.set()
        out = np.empty(BIG.shape, np.uint8)
        for i in range(n):
            assert r.next_into(out, timeout=TIMEOUT) == i
            assert np.array_equal(out, _frame(i)), i
        assert r.overruns == 0
    ready.set()
    assert children.join(p, TIMEOUT) == 0


@pytest.mark.parametrize("broadcast", [False, True], ids=["queue", "broadcast"])
def test_array_ring_exact_bytes(new_name, broadcast):
    """§3.1 rings on an ArraySpec: put() takes the same path."""
    with gb.Ring(capacity=8, schema=BIG, broadcast=broadcast, name=new_name()) as q, \
            gb.Ring.attach(q.name) as other:
        assert q._streaming and other._streaming
        for i in range(3):
            a = _frame(i)
            q.put(_unaligned(a) if i == 1 else a, timeout=TIMEOUT)
            assert np.array_equal(other.get(timeout=TIMEOUT), a), i


def test_object_ring_out_of_band_buffers_exact_bytes(new_name):
    """Pickled items with large out-of-band numpy buffers: the buffers are
    copied into the slot with streaming stores, the pickle bytes are not."""
    a, b = _frame(1, 3 * MIB + 5), _frame(2, 2 * MIB + 1)
    with gb.Ring(capacity=4, max_bytes=6 * MIB, name=new_name()) as q:
        assert q._streaming
        q.put({"a": a, "b": _unaligned(b), "tag": "x"}, timeout=TIMEOUT)
        got = q.get(timeout=TIMEOUT)
        assert got["tag"] == "x"
        assert np.array_equal(got["a"], a) and np.array_equal(got["b"], b)
