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
    """§3.1 rings on an ArraySpec: a broadcast ring's put() streams like a
    stream's write(); a queue ring's does not (its one consumer usually
    takes the item soon, from the cache), and both deliver every byte."""
    with gb.Ring(capacity=8, schema=BIG, broadcast=broadcast, name=new_name()) as q, \
            gb.Ring.attach(q.name) as other:
        assert q._streaming == other._streaming == broadcast
        for i in range(3):
            a = _frame(i)
            q.put(_unaligned(a) if i == 1 else a, timeout=TIMEOUT)
            assert np.array_equal(other.get(timeout=TIMEOUT), a), i


@pytest.mark.parametrize("broadcast", [False, True], ids=["queue", "broadcast"])
def test_object_ring_out_of_band_buffers_exact_bytes(new_name, broadcast):
    """Pickled items with large out-of-band numpy buffers in a slot: a
    broadcast ring copies the buffers with streaming stores (the pickle
    bytes with memcpy), a queue ring with memcpy."""
    a, b = _frame(1, 3 * MIB + 5), _frame(2, 2 * MIB + 1)
    with gb.Ring(capacity=4, max_bytes=6 * MIB, broadcast=broadcast, name=new_name()) as q, \
            gb.Ring.attach(q.name) as other:
        assert q._streaming == broadcast
        q.put({"a": a, "b": _unaligned(b), "tag": "x"}, timeout=TIMEOUT)
        got = other.get(timeout=TIMEOUT)
        assert got["tag"] == "x"
        assert np.array_equal(got["a"], a) and np.array_equal(got["b"], b)


# -- pickled items larger than a slot (blobs; the scratch pickler) -----------

def _mixed(i):
    """Large and small items in turn, plain and with out-of-band arrays."""
    kind = i % 4
    if kind == 0:
        return ("big", i, bytes([i % 251]) * (300_000 + i))
    if kind == 1:
        return ("small", i)
    if kind == 2:
        return {"i": i, "a": np.full(70_000 + i, i, np.int32), "b": b"y" * 200_000}
    return ["mid", i, "z" * 5000]


@pytest.mark.parametrize("serializer", ["pickle", "cloudpickle"])
def test_large_and_small_pickles_in_turn(new_name, serializer):
    """A large item switches the handle to pickling into its reusable
    scratch buffer (a fresh >= 256 KiB bytes object per put page-faults);
    every later item, large or small, plain or framed, arrives intact."""
    with gb.Ring(name=new_name(), serializer=serializer) as q, gb.Ring.attach(q.name) as r:
        for i in range(40):
            q.put(_mixed(i), timeout=TIMEOUT)
            got = r.get(timeout=TIMEOUT)
            want = _mixed(i)
            if isinstance(want, dict):
                assert got["i"] == i and got["b"] == want["b"]
                assert np.array_equal(got["a"], want["a"])
            else:
                assert got == want, i


def test_custom_serializer_out_of_line(new_name):
    """A (dumps, loads) pair gets bytes back even for an item read from a
    blob (only plain pickles are loaded in place from shared memory)."""
    seen = []

    def loads(b):
        seen.append(type(b))
        return bytes(b).decode()

    with gb.Ring(name=new_name(), serializer=(str.encode, loads)) as q:
        q.put("x" * 100_000)
        assert q.get(timeout=TIMEOUT) == "x" * 100_000
    assert seen == [bytearray]


def _put_many_large(name, start, n):
    with gb.Ring.attach(name) as q:
        for i in range(start, start + n):
            q.put(_mixed(i), timeout=TIMEOUT)


def test_threads_share_a_handle_with_large_items(new_name):
    """Threads putting large and framed items through one handle: each
    pickles into its own buffer (the handle's scratch and out-of-band list
    are taken while another thread is mid-pickle); nothing is lost or
    mixed up."""
    import threading
    n, nthreads = 30, 3
    with gb.Ring(name=new_name()) as q, gb.Ring.attach(q.name) as r:
        errors = []

        def producer(t):
            try:
                for i in range(t * 1000, t * 1000 + n):
                    q.put(_mixed(i), timeout=TIMEOUT)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=producer, args=(t,)) for t in range(nthreads)]
        for t in threads:
            t.start()
        got = {}
        for _ in range(n * nthreads):
            item = r.get(timeout=TIMEOUT)
            i = item["i"] if isinstance(item, dict) else item[1]
            got[i] = item
        for t in threads:
            t.join(TIMEOUT)
        assert not errors
        assert sorted(got) == sorted(t * 1000 + i for t in range(nthreads) for i in range(n))
        for i, item in got.items():
            want = _mixed(i)
            if isinstance(want, dict):
                assert np.array_equal(item["a"], want["a"]) and item["b"] == want["b"]
            else:
                assert item == want


def test_large_items_across_processes(ctx, new_name, children):
    name = new_name()
    with gb.Ring(name=name) as q:
        p = children.start(ctx, _put_many_large, name, 0, 24)
        for i in range(24):
            got = q.get(timeout=TIMEOUT)
            want = _mixed(i)
            if isinstance(want, dict):
                assert np.array_equal(got["a"], want["a"]) and got["b"] == want["b"]
            else:
                assert got == want, i
        assert children.join(p, TIMEOUT) == 0
