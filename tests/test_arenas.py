"""Out-of-line ring items in arenas (global_buffer/blobs.py; SPEC §3.1,
issue 13 item 5): items larger than a slot and up to ARENA_MAX bytes go to
chunks of per-producer arena segments, larger ones to blobs of their own.

What is pinned here: every size class round-trips byte-exact across
processes; a producer far ahead of its consumers makes few segments (the
number of arenas grows with the log of the backlog, not one per item); a
forked producer never writes into its parent's arenas; chunks held by a
SIGKILLed consumer are taken back; the owner leaves no segment behind."""
import gc
import os
import signal

import numpy as np
import pytest

import global_buffer as gb
from global_buffer import _core, blobs
from global_buffer.segment import Segment, list_names

TIMEOUT = 30
KIB = 1 << 10


def _payload(i, n):
    return np.random.default_rng(i).integers(0, 256, n, dtype=np.uint8).tobytes()


def _blob_names(ring):
    return [n for n in list_names() if n.startswith(ring + ".b")]


# one size per chunk class and at the class edges, then own blobs
SIZES = [4 * KIB + 1, 8 * KIB - 40, 8 * KIB, 8 * KIB + 1, 16 * KIB + 7, 64 * KIB,
         100_000, blobs.ARENA_MAX - 64, blobs.ARENA_MAX + 1, 1 << 20, 3 * (1 << 20) + 5]


def _put_sizes(name, rounds):
    with gb.Ring.attach(name) as q:
        for r in range(rounds):
            for k, n in enumerate(SIZES):
                q.put(_payload(r * 100 + k, n), timeout=TIMEOUT)


def test_every_size_class_round_trips_across_processes(ctx, new_name, children):
    name = new_name()
    rounds = 3
    with gb.Ring(name=name) as q:
        p = children.start(ctx, _put_sizes, name, rounds)
        for r in range(rounds):
            for k, n in enumerate(SIZES):
                got = q.get(timeout=TIMEOUT)
                assert got == _payload(r * 100 + k, n), (r, n)
        assert children.join(p, TIMEOUT) == 0


def test_a_producer_far_ahead_makes_few_arenas(new_name):
    """3000 items of 9 KiB put before any is taken: a handful of arena
    segments (each as big as all before it), not one segment per item in
    flight (before arenas: 64 blobs, then a 5 ms wait per put)."""
    n, size = 3000, 9 * KIB
    with gb.Ring(name=new_name(), capacity=4096) as q, gb.Ring.attach(q.name) as r:
        for i in range(n):
            q.put(_payload(i, size), timeout=TIMEOUT)
        names = _blob_names(q.name)
        # 16 KiB chunks (9 KiB and the pickle header): 4 MiB of them, then
        # doubling: 255 + 255 + 510 + 1020 + 2040 chunks
        assert 1 <= len(names) <= 5, names
        for i in range(n):
            assert r.get(timeout=TIMEOUT) == _payload(i, size), i
        # drained: the next burst reuses the same chunks
        for i in range(n):
            q.put(_payload(i, size), timeout=TIMEOUT)
        assert sorted(_blob_names(q.name)) == sorted(names)
        for i in range(n):
            assert r.get(timeout=TIMEOUT) == _payload(i, size), i


def _forked_put(q, n):
    for i in range(n):
        q.put(_payload(1000 + i, 20 * KIB), timeout=TIMEOUT)


def test_forked_producer_uses_arenas_of_its_own(new_name, children):
    """A child forked after its parent put out-of-line items inherits the
    parent's arena mappings; its own items must go to arenas of its own
    (named with its pid), or the two would fill the same chunks."""
    import multiprocessing as mp
    with gb.Ring(name=new_name()) as q:
        q.put(_payload(0, 20 * KIB), timeout=TIMEOUT)  # the parent's arena
        p = children.start(mp.get_context("fork"), _forked_put, q, 50)
        q.put(_payload(1, 20 * KIB), timeout=TIMEOUT)
        got = [q.get(timeout=TIMEOUT) for _ in range(52)]
        assert children.join(p, TIMEOUT) == 0
        want = [_payload(i, 20 * KIB) for i in (0, 1)] + [
            _payload(1000 + i, 20 * KIB) for i in range(50)]
        assert sorted(got) == sorted(want)
        # <ring>.b<pid>.<hex>: the hex part may start with "b" too
        owners = {n[len(q.name) + 2:].split(".")[0] for n in _blob_names(q.name)}
        assert str(p.pid) in owners and str(os.getpid()) in owners


def _hold_and_die(arena_name, idx, ready):
    seg = Segment.attach(arena_name)
    _core.blob_hold(seg.mm, idx)  # taken over, never released
    ready.set()
    os.kill(os.getpid(), signal.SIGKILL)


def test_chunks_of_a_killed_consumer_are_taken_back(ctx, new_name, children):
    with gb.Ring(name=new_name()) as q:
        for i in range(3):
            q.put(_payload(i, 10 * KIB), timeout=TIMEOUT)
        arena = q._blobs.arenas[0]
        ready = ctx.Event()
        p = children.start(ctx, _hold_and_die, arena.name, 1, ready)
        assert ready.wait(TIMEOUT)
        p.join(TIMEOUT)
        assert p.exitcode == -signal.SIGKILL
        assert p.pid in _core.blob_holders(arena.mm)
        q._blobs._reclaim_dead()  # what a producer does when it runs short
        assert p.pid not in _core.blob_holders(arena.mm)


def test_owner_leaves_no_blob_segment(new_name):
    name = new_name()
    with gb.Ring(name=name) as q, gb.Ring.attach(name) as r:
        for k, n in enumerate(SIZES):
            q.put(_payload(k, n), timeout=TIMEOUT)
        for _ in range(len(SIZES) // 2):  # some taken, some left in the ring
            r.get(timeout=TIMEOUT)
        assert _blob_names(name)
    del q, r  # the owner's handle goes: the ring and its blobs with it (SPEC §3.1)
    gc.collect()
    assert _blob_names(name) == []


@pytest.mark.parametrize("bad", [b"", b"\0", b"x\0", b"\x00" * 64 + b"junk"])
def test_corrupt_arena_bytes_are_an_error_not_a_crash(new_name, bad):
    """A segment that is not an arena, or an index past its end: a clean
    gb.BufferCorrupt from the blob functions (SPEC §5: no crash on any input)."""
    name = new_name()
    seg = Segment.create(name, 4 * (64 + 8 * KIB))
    try:
        _core.blob_init(seg.mm, 8 * KIB, 4)
        with pytest.raises(gb.BufferCorrupt):
            _core.blob_read(seg.mm, 4)
        with pytest.raises(gb.BufferCorrupt):
            _core.blob_read(seg.mm, -1)
        seg.mm[64 + 8 * KIB:64 + 8 * KIB + len(bad)] = bad  # chunk 1's header
        if len(bad) >= 8:
            with pytest.raises(gb.BufferCorrupt):
                _core.blob_read(seg.mm, 1)
        seg.mm[:8] = b"notablob"
        with pytest.raises(gb.BufferCorrupt):
            _core.blob_holders(seg.mm)
    finally:
        seg.close()
        gb.unlink(name)


class _Bytes(bytes):
    """Not plain data (a subclass may pickle differently): the pickler's path."""


def _plain_items():
    return [
        "a" * (10 * KIB),                       # ASCII str: plain, into a chunk
        "é" * (6 * KIB),                        # non-ASCII str: the pickler
        b"\0" * (16 * KIB - 16),                # exactly a 16 KiB chunk with the header
        b"\1" * (16 * KIB - 15),                # one byte more: the next size
        _Bytes(b"x" * (9 * KIB)),               # a subclass: the pickler
        bytearray(b"y" * (9 * KIB)),            # not plain: the pickler
        b"z" * (blobs.ARENA_MAX - 16),          # the largest chunk
        ("t" * 5000, b"u" * 5000, [1, 2.5, None]),  # plain, but not str/bytes: pickler
    ]


def _put_plain_items(name):
    with gb.Ring.attach(name) as q:
        for _ in range(2):  # the first of each size makes its arena, the second reuses it
            for item in _plain_items():
                q.put(item, timeout=TIMEOUT)


def test_large_str_and_bytes_round_trip_with_their_types(ctx, new_name, children):
    """Large str/bytes go into a chunk as plain data (no pickler); everything
    else, and str that is not ASCII, through the pickler: each comes back
    equal and of its own type, across processes (SPEC §3.1)."""
    name = new_name()
    with gb.Ring(name=name) as q:
        p = children.start(ctx, _put_plain_items, name)
        for _ in range(2):
            for want in _plain_items():
                got = q.get(timeout=TIMEOUT)
                assert type(got) is type(want) and got == want, type(want)
        assert children.join(p, TIMEOUT) == 0
