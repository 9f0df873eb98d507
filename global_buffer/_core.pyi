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
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
from numpy.typing import NDArray

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

class Handle:
    _poll_min_ns: int
    _poll_max_ns: int

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

class StreamReader(Handle):
    _cursor: int
    overruns: int
    """Samples this reader missed because the writer lapped it."""

    def _setup_reader(self, decode: Optional[Callable[[bytes], Any]],
                      from_oldest: bool) -> None: ...
    def next(self, timeout: Optional[float] = None) -> Any:
        """The next sample in order: a new array, or a model instance (a
        dict without ``model=``).

        Waits up to ``timeout`` seconds (forever if None) and raises
        ``gb.Empty`` if none came; the wait sleeps in the kernel and Ctrl-C
        interrupts it.  If the writer lapped this reader, ``overruns`` grows
        by the samples lost and reading resumes at the oldest one held.
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
    def _out_what(self, batch: bool) -> str: ...
    def _view_begin(self, take_next: bool,
                    timeout: Optional[float]) -> Optional[Tuple[int, int]]: ...
    def _view_check(self, pos: int, word: int) -> bool: ...

# ---------------------------------------------------------------------------
# queue and broadcast rings (_queue.pxi; gb.Ring subclasses these)
# ---------------------------------------------------------------------------
# Owners of _queue.pxi: add the stubs of QueueHandle, BroadcastHandle, the
# blob_* and peer_* functions and the AUX_* / ROLE_* constants here, then
# delete the __getattr__ below, which until then types every name not
# stubbed yet as Any (a partial stub, PEP 484).

# out-of-line items read in place, and the reducers' pickler (stubbed)
MAX_LEASES: int
class BlobView:
    """An out-of-line item taken in place; the blob is freed when it goes."""
    def __len__(self) -> int: ...
    def __buffer__(self, flags: int) -> memoryview: ...
def blob_lease(mm: Any) -> Optional[BlobView]: ...
def leases() -> int:
    """How many items this process holds in place (live BlobViews)."""
class PicklerDumps:
    """``dumps(obj, protocol=5, buffer_callback=None)`` through one reusable pickler."""
    def __init__(self, cls: type, refresh: Callable[[], None],
                 tables: Tuple[Dict[Any, Any], ...]) -> None: ...
    def __call__(self, obj: Any, protocol: int = 5,
                 buffer_callback: Optional[Callable[[Any], Any]] = None) -> bytes: ...

# peer table and fd signalling (pipes; stubbed)
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

def __getattr__(name: str) -> Any: ...
