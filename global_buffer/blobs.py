"""Out-of-line items of rings (SPEC §3.1): items larger than a slot.

A queue ring's slot then carries a reference to a *blob*, a buffer in a
separate shared-memory segment made by the producing process:

* items up to ``ARENA_MAX`` bytes go to a chunk of an *arena*: one segment
  of equal chunks (blobs back to back, each with its own header and lock
  word), one arena per chunk size and producer to begin with.  A producer
  takes the chunk after the one it took last (consumers free them in about
  the order they were filled: one CAS), and makes a bigger arena when every
  chunk is in flight, up to about the ring's capacity in chunks.  So a 32 KiB
  item costs two copies and no system call, however far its consumer is
  behind, and a consumer keeps one mapping per producer and size;
* a larger item gets a blob of its own, reused for the producer's later
  items once its consumer is done (a few in flight at a time: each is a
  segment whose pages fault on first use).

The reference is the segment's name, and for a chunk ``b"\\0"`` and its
index.  A broadcast ring gets a fresh blob per item instead (``bspill``):
readers may read an item any number of times until the writer laps it, so
it is never reused, only removed when its slot is overwritten.

Lock words hold 0 (free) or the pid using the blob: the producer while it
fills it and until a consumer takes the item over in one atomic step, then
that consumer until it has read it.  A consumer that dies holding one is
found dead by the producer when it runs short (``_reclaim_dead``).  Names
are ``<ring>.b<pid>.<random><n>``; the ring's owner removes what is left
when it removes the ring.
"""
from __future__ import annotations

import itertools
import os
import pickle
import secrets
import threading
import time
from typing import Any, Callable, Optional, cast

from . import _core
from .errors import BufferNotFound
from .segment import Segment, process_alive, unlink as _unlink_name

__all__ = ["Blobs", "bspill", "bfree", "bdecode", "unspill", "decode_pickled", "unframe",
           "ARENA_MAX", "LEASE_MIN"]

# frames, plain-data pickles (see _plain.pxi) and other pickles
decode_pickled = _core.decode_pickled


_getpid = _core.getpid


def unframe(raw: Any) -> Any:
    return _core.unframe(raw, pickle.loads)


ARENA_MAX = _core.ARENA_MAX      # items up to this size (256 KiB) go to arena chunks
_CHUNK_MIN = _core.CHUNK_MIN     # smallest chunk (8 KiB; powers of two from here)
_PROBE = _core.CHUNK_PROBE       # chunks a producer looks at in an arena before the next
_ARENA_BYTES = 4 << 20    # a producer's first arena of a size (at least 4 chunks)
_ARENA_BUDGET = 256 << 20  # chunks of one size in flight before a producer waits
_BLOB_MIN = ARENA_MAX * 2  # smallest blob of its own
_BLOB_BUDGET = 64 << 20   # bytes of own blobs of one size a producer makes ...
_BLOB_KEEP = (4, 64)      # ... but at least 4 and at most 64 of them, before it
_BLOB_WAIT = 5e-3         # waits for a consumer to free one, for at most this
_BLOB_POLL = 20e-6        # long (s), looking this often
_BLOB_MAPS = 64           # blob mappings a consumer keeps open
LEASE_MIN = 1 << 20       # frames this large are read in place (BlobView)


def _pow2(need: int, floor: int) -> int:
    return max(floor, 1 << (int(need) - 1).bit_length())


def blob_cap(need: int) -> int:
    """Capacity of the blob or chunk an item of ``need`` bytes goes to."""
    return _pow2(need, _CHUNK_MIN if need <= ARENA_MAX else _BLOB_MIN)


def _blob_keep(cap: int) -> int:
    """Own blobs of ``cap`` bytes a producer makes before it waits for a
    free one: a budget in bytes, so that moderate items get many in flight
    and huge ones few (each is a page-faulted segment)."""
    lo, hi = _BLOB_KEEP
    return max(lo, min(hi, _BLOB_BUDGET // cap))


class Blobs:
    """The out-of-line buffers of one ring in this process: those it made
    as a producer (arenas by chunk size, own blobs), and the mappings it
    keeps as a consumer."""

    def __init__(self, ring_name: str, mode: int, capacity: int = 1024) -> None:
        self.ring = ring_name
        self.mode = mode
        self.capacity = capacity
        self.counter = itertools.count()
        self._reset()

    def _reset(self) -> None:
        # chunk size -> its arenas; one dict for good (the ring's compiled
        # put looks chunks up in it: see QueueHandle._set_pools)
        pools: dict[int, _core.ChunkPool] = getattr(self, "pools", {})
        pools.clear()
        self.pools = pools
        self.arenas: list[Segment] = []               # every arena of ours
        self.mine: list[tuple[Segment, int]] = []     # own blobs: (segment, capacity)
        maps: dict[bytes, Any] = getattr(self, "maps", {})  # consumer: name -> mapping
        maps.clear()                                  # (one dict for good, as pools)
        self.maps = maps
        self.segs: dict[bytes, Segment] = {}          # ... and its segment
        self.pid = _getpid()
        self.lock = threading.Lock()
        self.next = 0                                 # where the own-blob search starts

    def _name(self) -> str:
        # not <pid>.<counter> alone: once the pid is reused, a later producer
        # would collide with a dead one's leftover blob (BufferExists) or
        # reuse a name a consumer still has mapped (stale item, new one lost)
        return f"{self.ring}.b{os.getpid()}.{secrets.token_hex(4)}{next(self.counter)}"

    # -- producer ---------------------------------------------------------------

    def spill(self, parts: Any) -> bytes:
        """Copy serialised item ``parts`` out of line; its reference."""
        need = parts.total
        with self.lock:
            if self.pid != _getpid():  # forked: the parent's blobs are not ours
                self._reset()
            if need <= ARENA_MAX:
                cap = _CHUNK_MIN if need <= _CHUNK_MIN else 1 << (need - 1).bit_length()
                pool = self.pools.get(cap)
                if pool is not None:
                    # a few chunks from where the last one was taken, arena
                    # after arena: a full arena costs a few probes
                    ref = pool.put(parts, _PROBE)
                    if ref is not None:
                        return ref
                return self._chunk(cap, parts)
            seg = self._own_blob(need)
        # the blob is ours (its lock word): filled outside the lock
        _core.blob_write(seg.mm, parts)
        return seg.name.encode()

    def _chunk(self, cap: int, parts: Any) -> bytes:
        """spill() when no chunk was free after a few probes."""
        pool = self.pools.get(cap)
        if pool is None:
            pool = self.pools[cap] = _core.ChunkPool(cap)
        ref = pool.put(parts, -1)  # every chunk of every arena
        if ref is None and pool.chunks >= min(self.capacity + 64, max(64, _ARENA_BUDGET // cap)):
            # as many chunks in flight as the ring holds items (or the byte
            # budget): its consumers are behind, or keep items alive (views)
            ref = self._wait(lambda: pool.put(parts, -1))
        if ref is None:
            self._reclaim_dead()
            ref = pool.put(parts, -1)
        if ref is not None:
            return ref
        # a new arena with as many chunks as all the others together: a
        # producer ahead of its consumers by n items makes log2(n) arenas
        count = max(4, _ARENA_BYTES // (_core.SLOT_HEADER + cap), pool.chunks)
        seg = Segment.create(self._name(), count * (_core.SLOT_HEADER + cap), self.mode)
        _core.blob_init(seg.mm, cap, count)        # chunk 0 is taken: ours
        self.arenas.append(seg)
        pool.add(seg, seg.name.encode() + b"\0")
        ref = pool.put(parts, 1)                   # its chunk 0
        assert ref is not None
        return ref

    def _wait(self, take: Callable[[], Any]) -> Any:
        """Poll ``take`` for up to _BLOB_WAIT for a consumer to free a blob
        (None: make one).  A new blob costs about that long anyway (a
        zero-filled segment, then a page fault per 4 KiB on both sides, and
        a consumer cache miss); without the wait a producer slightly ahead
        of its consumer made one 8 MiB blob per item in flight (measured:
        50-70 for 400 frames) and ran several times slower."""
        deadline = _core.now_ns() + int(_BLOB_WAIT * 1e9)
        while _core.now_ns() < deadline:
            time.sleep(_BLOB_POLL)
            got = take()
            if got is not None:
                return got
        return None

    def _own_blob(self, need: int) -> Segment:
        seg = self._free_blob(need)
        if seg is None:
            fits = [s for s, c in self.mine if c >= need]
            if len(fits) >= _blob_keep(blob_cap(need)):
                seg = self._wait(lambda: next(
                    (s for s in fits if _core.blob_acquire(s.mm, 0)), None))
        if seg is None:
            cap = blob_cap(need)
            seg = Segment.create(self._name(), _core.SLOT_HEADER + cap, self.mode)
            _core.blob_init(seg.mm, cap)
            self.mine.append((seg, cap))
            self._reclaim_dead()
        return seg

    def _free_blob(self, need: int) -> Optional[Segment]:
        """An own blob big enough and free, taken; None if there is none.
        The search goes round from where the last one was found: blobs are
        freed roughly in the order they were filled."""
        mine, n = self.mine, len(self.mine)
        for k in range(n):
            i = (self.next + k) % n
            seg, cap = mine[i]
            if cap >= need and _core.blob_acquire(seg.mm, 0):
                self.next = i + 1
                return seg
        return None

    def _segments(self) -> list[Segment]:
        return self.arenas + [s for s, _ in self.mine]

    def _reclaim_dead(self) -> None:
        # blobs held by a consumer that died stay marked with its pid
        me = _getpid()
        for seg in self._segments():
            for holder in _core.blob_holders(seg.mm):
                if holder != me and not process_alive(holder):
                    _core.blob_free_of(seg.mm, holder)

    # -- consumer ---------------------------------------------------------------

    def _map(self, name: bytes) -> Any:
        """The mapping of blob segment ``name``, opened on first use."""
        mm = self.maps.get(name)
        if mm is None:
            seg = Segment.attach(name.decode())
            self.segs[name] = seg
            mm = self.maps[name] = seg.mm
            while len(self.maps) > _BLOB_MAPS:  # the oldest opened goes
                old = next(iter(self.maps))
                del self.maps[old]
                self.segs.pop(old).close()
        return mm

    def take(self, ref: bytes, give_back: bool, decode: Callable[[Any], Any]) -> Any:
        """Decode the item that ``ref`` names and free its blob (or, with
        ``give_back``, just free it: a put that failed after spilling)."""
        name, chunk, raw_idx = ref.partition(b"\0")
        idx = int(raw_idx) if chunk else 0
        if give_back:
            for seg in self._segments():
                if seg.name == name.decode():
                    _core.blob_release(seg.mm, idx)
            return None
        mm = self._map(name)
        if decode is not decode_pickled:
            return decode(_core.blob_read(mm, idx))
        # a plain pickle is loaded straight from shared memory (one copy,
        # and for a large item one freshly faulted allocation, no more)
        obj = _core.blob_loads(mm, idx, pickle.loads)
        if obj is not NotImplemented:
            return obj
        # A frame: a large one's out-of-band buffers (numpy arrays, CPU
        # tensors) come back as views of the blob itself, which stays ours
        # until the last of them is collected; a small frame is copied out,
        # so that many small items held do not pin blobs.
        lease = _core.blob_lease(mm, idx)
        if lease is None:  # MAX_LEASES held already: copy out
            return unframe(_core.blob_read(mm, idx))
        if len(lease) >= LEASE_MIN:
            return unframe(lease)
        raw = bytearray(cast(Any, lease))  # (the buffer protocol: typed from 3.12)
        del lease  # frees the blob before the item is rebuilt
        return unframe(raw)

    def peek(self, ref: bytes) -> bytearray:
        """A copy of the item ``ref`` names, not taken (for latest())."""
        name, chunk, raw_idx = ref.partition(b"\0")
        return _core.blob_peek(self._map(name), int(raw_idx) if chunk else 0)

    def close(self) -> None:
        with self.lock:
            if self.pid == _getpid():
                for pool in self.pools.values():
                    pool.release()  # the arenas' buffers, before they close
                for seg in self._segments():
                    # a blob holding an item nobody has taken yet keeps its
                    # name: its reader still has to open it (the ring's owner
                    # removes leftovers with the ring)
                    if not _core.blob_holders(seg.mm):
                        _unlink_name(seg.name)
                    seg.close()
            self.pools.clear()
            self.arenas, self.mine = [], []
            self.maps.clear()
            for seg in self.segs.values():
                seg.close()
            self.segs.clear()

    def forget(self) -> None:
        """After fork: the parent's blobs and mappings are not ours."""
        self._reset()


# -- broadcast rings ------------------------------------------------------------

def bspill(blobs: Blobs, parts: Any) -> bytes:
    """A broadcast ring's out-of-line item: a fresh blob (never reused, so
    readers never see it change), named in the slot; removed when the slot
    is overwritten (bfree) or with the ring."""
    name = blobs._name()
    cap = _pow2(parts.total, _CHUNK_MIN)
    seg = Segment.create(name, _core.SLOT_HEADER + cap, blobs.mode)
    try:
        _core.blob_init(seg.mm, cap)
        _core.blob_write(seg.mm, parts)
    except BaseException:
        seg.close()
        _unlink_name(name)
        raise
    seg.close()
    return name.encode()


def bfree(ref: bytes) -> None:
    _unlink_name(ref.decode())


def bdecode(blobs: Blobs, full_decode: Callable[[Any], Any], raw: Any) -> Any:
    """Decode a broadcast item: inline, or (first byte 1) from its blob;
    _core._BlobGone if the blob was removed before we opened it."""
    if raw[:1] != b"\x01":
        return full_decode(raw)
    try:
        # not through the mapping cache: each blob is read once, and a
        # cached mapping would pin an overwritten item's memory
        seg = Segment.attach(bytes(raw[1:]).decode())
    except BufferNotFound:
        raise _core._BlobGone() from None
    try:
        data = _core.blob_peek(seg.mm)
    finally:
        seg.close()
    return full_decode(data)


def unspill(blobs: Blobs, full_decode: Callable[[Any], Any], ref: bytes,
            give_back: bool) -> Any:
    """Take the out-of-line item ``ref`` (or give the blob back)."""
    return blobs.take(ref, give_back, full_decode)
