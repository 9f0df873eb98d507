"""Type stub for ``global_buffer._core``, the one compiled module.

Private: the public API lives in ``global_buffer`` (stream.py, ring.py), whose
classes subclass these handles.  Names starting with ``_`` are internal to
the package but typed here so the Python layers type-check against them.

Sections follow the source files: module state and segments, ``Handle``,
streams (``_core.pyx``), then queue and broadcast rings (``_queue.pxi``).

The docs site's API reference renders the docstrings of the public members
of ``StreamWriter`` and ``StreamReader`` from this stub (``gb.GlobalBuffer``
and ``gb.Reader`` inherit them): keep them in step with ``_core.pyx``.
"""
import sys
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import numpy as np
from numpy.typing import NDArray
from typing_extensions import disjoint_base

# ---------------------------------------------------------------------------
# constants (csrc/gb_ring.h)
# ---------------------------------------------------------------------------

HAVE_FUTEX: bool
HEADER_SIZE: int
SLOT_HEADER: int
LAYOUT_VERSION: int
KIND_ARRAY: int
KIND_MESSAGE: int
KIND_OBJECT: int
KIND_BYTES: int
FLAG_QUEUE: int
FLAG_BROADCAST: int

# ---------------------------------------------------------------------------
# process-wide settings
# ---------------------------------------------------------------------------

def set_wait_backend(name: str) -> None:
    """``"futex"`` (Linux default) or ``"poll"`` (the portable fallback)."""
def get_wait_backend() -> str: ...
def set_spin(seconds: float) -> None:
    """How long a blocked call spins before it sleeps in the kernel."""
def now_ns() -> int:
    """The monotonic clock shared by every process (heartbeats, stamps)."""
def _reset_pid() -> None: ...
def getpid() -> int:
    """``os.getpid()`` without the system call (kept right across fork)."""

# ---------------------------------------------------------------------------
# segments: the caller allocates, the core lays out and validates
# ---------------------------------------------------------------------------

def segment_nbytes(kind: int, flags: int, capacity: int, slot_size: int,
                   meta_len: int) -> int:
    """Bytes needed for a segment; ``ValueError`` if out of range."""
def init_segment(buffer: Any, kind: int, flags: int, capacity: int, slot_size: int,
                 maxsize: int, schema_hash: int, meta: bytes, owner_pid: int,
                 owner_start: int) -> None:
    """Lay out a fresh, zeroed segment in the writable ``buffer``."""

# ---------------------------------------------------------------------------
# Handle: one validated mapping of one segment
# ---------------------------------------------------------------------------

@disjoint_base
class Handle:
    _poll_min_ns: int
    _poll_max_ns: int
    def _writer_dead(self) -> bool: ...
    def _waiting(self) -> int: ...
    def _out_what(self, batch: bool) -> str: ...

    def _bind(self, mm: Any, what: str) -> None:
        """Validate the segment in ``mm``; ``gb.BufferCorrupt`` if invalid."""
    def _unbind(self) -> None: ...
    def _set_array(self, dtype: np.dtype, shape: Tuple[int, ...]) -> None: ...
    def _shape_tuple(self) -> Tuple[int, ...]: ...
    @property
    def closed(self) -> bool: ...
    @property
    def capacity(self) -> int: ...

    # header fields (raise gb.BufferClosed on a closed handle)
    @property
    def _kind(self) -> int: ...
    @property
    def _flags(self) -> int: ...
    @property
    def _nslots(self) -> int: ...
    @property
    def _slot_size(self) -> int: ...
    @property
    def _slot_stride(self) -> int: ...
    @property
    def _slots_offset(self) -> int: ...
    @property
    def _schema_hash(self) -> int: ...
    @property
    def _meta(self) -> bytes: ...
    @property
    def _maxsize(self) -> int: ...
    @property
    def _owner(self) -> Tuple[int, int]:
        """(pid, start time) of the creating process."""
    @property
    def _writer(self) -> Tuple[int, int]:
        """(pid, start time) of the current stream writer."""
    @property
    def _heartbeat_ns(self) -> int: ...
    @property
    def _tail(self) -> int:
        """Streams: samples committed.  Queues: next position to claim."""
    @property
    def _head(self) -> int: ...
    @property
    def _wake_calls(self) -> int: ...
    @property
    def _readers(self) -> int: ...
    @property
    def _created_ns(self) -> int: ...
    def _add_readers(self, delta: int) -> None: ...
    def _payload_offset(self, pos: int) -> int: ...
    def _set_writer(self, pid: int, start: int) -> None: ...

# ---------------------------------------------------------------------------
# streams (gb.GlobalBuffer / gb.Reader subclass these)
# ---------------------------------------------------------------------------

@disjoint_base
class StreamWriter(Handle):
    def _setup_writer(self, heartbeat_interval: float,
                      encode: Optional[Callable[[Any], bytes]]) -> None: ...
    def heartbeat(self) -> None:
        """Stamp the writer's heartbeat now.

        ``write()`` stamps it too, at most every ``heartbeat_interval``
        seconds.  A writer that is idle on purpose calls this more often
        than every 2 s, so that readers' ``writer_alive`` stays True.
        """
    def write(self, sample: Any) -> None:
        """Publish one sample; never waits for readers.

        Array streams take an ndarray of exactly the stream's dtype and
        shape (anything else raises ``ValueError`` or ``TypeError`` saying
        what was expected).  Message streams take a model instance or a
        dict, validated by the model; a message that encodes larger than
        ``max_bytes`` raises ``ValueError``.  Nothing is published on error.
        """
    def _slot_view(self, pos: int) -> NDArray[Any]: ...
    def _make_view(self, pos: int) -> NDArray[Any]: ...
    def _drop_views(self) -> None: ...
    def _reserve_begin(self) -> int: ...
    def _reserve_end(self, pos: int, commit: bool) -> None: ...
    def _write_seq(self, sample: Any, seq: int) -> None:
        """Publish ``sample`` as sequence number ``seq`` (>= the next one),
        for a mirror keeping its source's numbers (SPEC §9); the numbers
        jumped over count as readers' overruns.  ``sample``: an ndarray, or
        the sample's stored bytes."""
    def _mark_gone(self) -> None: ...

class _BlobGone(Exception):
    """An out-of-line broadcast item was overwritten (its blob removed)
    before this reader opened it: counted as an overrun."""

@disjoint_base
class StreamReader(Handle):
    _cursor: int
    overruns: int
    """Samples this reader missed because the writer lapped it."""

    def _watch_writer_of_stream(self) -> None: ...
    def _setup_reader(self, decode: Optional[Callable[[bytes], Any]],
                      from_oldest: bool) -> None: ...
    def next(self, timeout: Optional[float] = None) -> Any:
        """The next sample in order: a new array, or a model instance (a
        dict without ``model=``).

        Waits up to ``timeout`` seconds (forever if None) and raises
        ``gb.Empty`` if none came; the wait sleeps in the kernel and Ctrl-C
        interrupts it.  Once the writer closed the stream or died and every
        sample was read, raises ``gb.WriterGone`` instead of waiting.  If
        the writer lapped this reader, ``overruns`` grows by the samples
        lost and reading resumes where the writer is not about to
        overwrite.
        """
    def _next_seq(self, timeout: Optional[float] = None) -> Tuple[Any, int]: ...
    def latest(self) -> Any:
        """A copy of the newest committed sample, or None if nothing was
        written.  Never waits and does not move the cursor."""
    def _latest_seq(self) -> Tuple[Any, int]: ...
    def _wait_new(self, seen: int, timeout: Optional[float]) -> bool: ...
    def next_into(self, out: NDArray[Any], timeout: Optional[float] = None) -> int:
        """Array streams: copy the next sample into ``out`` without
        allocating; return its sequence number (0 for the first sample
        written).

        ``out`` must have the stream's dtype and shape and be writable and
        C-contiguous; a wrong ``out`` raises ``ValueError`` and consumes
        nothing.  Waits as ``next()`` (``gb.Empty`` on timeout).
        """
    def next_batch_into(self, out: NDArray[Any], timeout: Optional[float] = None) -> int:
        """Array streams: copy up to ``len(out)`` samples into ``out``, an
        array of shape ``(k, *shape)``; return how many were copied.

        Takes every sample already committed (up to ``len(out)``) at once;
        if there is none, waits for at least one (``gb.Empty`` on timeout).
        A wrong ``out`` raises ``ValueError`` and consumes nothing.
        """
    def _view_begin(self, take_next: bool,
                    timeout: Optional[float]) -> Optional[Tuple[int, int]]: ...
    def _view_check(self, pos: int, word: int) -> bool: ...

# ---------------------------------------------------------------------------
# queue and broadcast rings (_queue.pxi; gb.Ring subclasses these)
# ---------------------------------------------------------------------------

FULL_GRACE: float
"""Seconds an unbounded put waits for a slot before deferring the item."""

def _reset_start() -> None: ...

@disjoint_base
class _Scratch:
    """A reusable output file for pickling large items (buffer protocol)."""
    def write(self, data: Any) -> int: ...
    if sys.version_info >= (3, 12):
        def __buffer__(self, flags: int, /) -> memoryview: ...

@disjoint_base
class PicklerDumps:
    """``dumps(obj, protocol=5, buffer_callback=None)`` through one reusable pickler."""
    def __init__(self, cls: type, refresh: Callable[[], None],
                 tables: Tuple[Dict[Any, Any], ...]) -> None: ...
    def _forward(self, pb: Any) -> Any: ...
    def __call__(self, obj: Any, protocol: int = 5,
                 buffer_callback: Optional[Callable[[Any], Any]] = None) -> bytes: ...

@disjoint_base
class _Serial:
    """Serialisation state shared by queue and broadcast handles."""
    def __init__(self, dumps: Optional[Callable[..., Any]],
                 loads: Optional[Callable[[Any], Any]],
                 encode: Optional[Callable[[Any], bytes]], oob: List[Any],
                 pickler: Optional[type] = None) -> None: ...

@disjoint_base
class _Parts:
    """An item serialised for copying into a slot (data and out-of-band buffers)."""
    @property
    def total(self) -> int: ...

def unframe(ba: Any, loads: Callable[[Any], Any]) -> Any:
    """Rebuild an object from a frame (``ba``: a writable bytes-like object)."""
def decode_pickled(raw: Any) -> Any:
    """An item of a pickle or cloudpickle ring from its bytes."""
def _plain_dumps(obj: Any, cap: int = ...) -> Optional[bytes]:
    """``obj``'s plain-data pickle, or None if the ring would pickle it."""
def _plain_loads(data: Any) -> Any:
    """Decode a plain-data pickle; ``ValueError`` for anything else."""

@disjoint_base
class QueueHandle(Handle):
    """Compiled half of a queue ring: each item goes to exactly one get()."""
    _closed_put: bool
    _pending: Any
    _feeder: Any
    _feeder_lock: Any
    _flush_lock: Any

    def _setup_queue(self, maxsize: int, ser: _Serial, spill: Callable[..., Any],
                     unspill: Callable[[bytes], Any], alive: Callable[..., bool],
                     unframe: Callable[..., Any], decode: Optional[Callable[[bytes], Any]]
                     ) -> None: ...
    def _set_pools(self, pools: Dict[int, ChunkPool], maps: Dict[bytes, Any]) -> None:
        """The producer's arenas by chunk size and the consumer's blob mappings."""
    def _put_obj(self, obj: Any, block: bool = True, timeout: Optional[float] = None) -> bool:
        """Serialise and put one item; False if it did not fit in time."""
    def put(self, obj: Any, block: bool = True, timeout: Optional[float] = None) -> None: ...
    def _put_plain(self, obj: Any) -> int:
        """Put plain data without waiting: 1 put, 0 not plain data, -1 no room."""
    def _defer(self, item: Any) -> None: ...
    def _flush(self) -> Optional[bool]:
        """True once nothing waits, False if the ring is full, None if
        another thread flushes."""
    def _put_parts(self, parts: _Parts, block: bool = True,
                   timeout: Optional[float] = None) -> bool: ...
    def _put_each(self, items: Any, grace: float, count: Any = None, base: int = 0) -> int:
        """Put ``items`` in order; how many were put (``base + n`` stored
        into the u64 buffer ``count`` after the n-th)."""
    def _serialize(self, obj: Any) -> Any: ...
    def get(self, block: bool = True, timeout: Optional[float] = None) -> Any: ...
    def _get(self, block: bool = True, timeout: Optional[float] = None) -> Any: ...
    def _get_many(self, max_items: int, block: bool = True,
                  timeout: Optional[float] = None, count: Any = None,
                  base: int = 0) -> List[Any]: ...
    def get_into(self, out: NDArray[Any], block: bool = True,
                 timeout: Optional[float] = None) -> NDArray[Any]: ...
    def _view_take(self, block: bool = True, timeout: Optional[float] = None) -> int: ...
    def _view_done(self, pos: int) -> None: ...
    def _reserve_begin(self, block: bool = True,
                       timeout: Optional[float] = None) -> Optional[int]: ...
    def _reserve_end(self, pos: int, commit: bool) -> None: ...
    def _debug_claim(self, put: bool, timeout: Optional[float] = None) -> int:
        """Testing only: claim a slot and never commit it."""
    def _wait_ready(self, put: bool, timeout: Optional[float]) -> bool: ...
    def _wake_data(self) -> None: ...
    def _qsize(self) -> int: ...
    def _latest(self, peek: Optional[Callable[..., Any]] = None,
                decode_blob: Optional[Callable[..., Any]] = None) -> Any: ...
    def _task_add(self, n: int) -> int: ...
    def _task_done(self) -> int: ...
    def _join(self, timeout: Optional[float] = None) -> bool: ...

@disjoint_base
class BroadcastHandle(StreamReader):
    """Compiled half of a broadcast ring: every handle puts, each reads
    from its own cursor."""
    _closed_put: bool

    def _setup_broadcast(self, ser: _Serial, alive: Callable[..., bool],
                         bspill: Optional[Callable[[Any], bytes]] = None,
                         bfree: Optional[Callable[[bytes], None]] = None) -> None: ...
    def _reserve_begin(self, block: bool = True,
                       timeout: Optional[float] = None) -> Optional[int]: ...
    def _reserve_end(self, pos: int, commit: bool) -> None: ...
    def _debug_lock(self) -> int:
        """Testing only: take the producers' lock and never release it."""
    def put(self, obj: Any, block: bool = True, timeout: Optional[float] = None) -> None: ...
    def get(self, block: bool = True, timeout: Optional[float] = None) -> Any: ...
    def _put_obj(self, obj: Any, block: bool = True,
                 timeout: Optional[float] = None) -> bool: ...

# out-of-line items (blobs): the caller maps the blob segment ``mm``
# and names blob ``idx`` of it (an arena's chunk; 0: the segment's only blob)
def blob_init(mm: Any, size: int, count: int = 1) -> None: ...
def blob_acquire(mm: Any, expect: int, idx: int = 0) -> bool:
    """Take a free blob for writing (its state becomes our pid)."""
def blob_holders(mm: Any) -> Set[int]:
    """The pids holding blobs of segment ``mm``."""
def blob_free_of(mm: Any, pid: int) -> int:
    """Free every blob of ``mm`` that (dead) ``pid`` holds; how many."""
def blob_release(mm: Any, idx: int = 0) -> None: ...
def blob_state(mm: Any, idx: int = 0) -> int:
    """The pid holding the blob, 0 if free."""
def blob_peek(mm: Any, idx: int = 0) -> bytearray:
    """Copy the item out of a blob without taking it."""
def blob_write(mm: Any, parts: _Parts, idx: int = 0) -> None:
    """Copy a serialised item into a blob this process holds."""
def blob_hold(mm: Any, idx: int = 0) -> Tuple[int, int]:
    """Mark the blob ours and return ``(offset, len)`` of its item in ``mm``."""
def blob_read(mm: Any, idx: int = 0) -> bytearray:
    """Copy the item out of a blob and free the blob for its producer."""

# out-of-line items read in place
MAX_LEASES: int
# arena chunks (global_buffer/blobs.py)
ARENA_MAX: int
CHUNK_MIN: int
CHUNK_PROBE: int

@disjoint_base
class BlobView:
    """An out-of-line item taken in place; the blob is freed when it goes."""
    def __len__(self) -> int: ...
    if sys.version_info >= (3, 12):
        def __buffer__(self, flags: int, /) -> memoryview: ...

def blob_lease(mm: Any, idx: int = 0) -> Optional[BlobView]: ...
def blob_loads(mm: Any, idx: int, loads: Callable[[Any], Any]) -> Any:
    """Take blob ``idx`` and decode it with ``loads`` in place; NotImplemented for a frame."""

@disjoint_base
class ChunkPool:
    """A producer's arenas of one chunk size: a free chunk, filled, in one call."""
    @property
    def size(self) -> int: ...
    @property
    def chunks(self) -> int: ...
    def __new__(cls, size: int) -> ChunkPool: ...
    def __len__(self) -> int: ...
    def add(self, seg: Any, prefix: bytes) -> None: ...
    def put(self, parts: _Parts, limit: int) -> Optional[bytes]: ...
    def release(self) -> None: ...
def leases() -> int:
    """How many items this process holds in place (live BlobViews)."""

# peer table and fd signalling (pipes)
ROLE_WRITER: int
ROLE_READER: int
def peer_add(h: Handle, role: int) -> Tuple[int, int]:
    """Register this process as a holder of ``role``; (index, who) or (-1, 0)."""
def peer_del(h: Handle, idx: int, who: int) -> None: ...
def peers(h: Handle, role: int) -> List[Tuple[int, int]]:
    """[(pid, start)] of the registered holders of ``role``."""
def peer_entries(h: Handle) -> List[Tuple[int, int, int]]:
    """[(pid, role, start)] of every used entry of the peer table."""
def peer_held(h: Handle, role: int) -> bool:
    """Is ``role`` held by an entry or a handle pickled but not attached yet?"""
def pending_add(h: Handle, n: int) -> int: ...
def arm_fd(h: Handle) -> None: ...
def fd_armed(h: Handle) -> bool: ...
