# cython: language_level=3, embedsignature=True, boundscheck=False, wraparound=False, cdivision=True
"""The compiled core of global_buffer: handles on mapped ring segments.

Everything that touches shared memory goes through here and the C header
``csrc/gb_ring.h``.  The public classes in ``stream.py`` subclass these
handles, so a ``write()`` or a ``next()`` crosses from Python into compiled
code exactly once.
"""
import os
import pickle
from io import BytesIO as _BytesIO
import traceback

cimport cython
cimport numpy as cnp
from cpython.buffer cimport PyBUF_WRITABLE, PyBuffer_FillInfo, PyBuffer_Release, PyObject_GetBuffer
from cpython.mem cimport PyMem_RawFree, PyMem_RawRealloc
from cpython.bytearray cimport PyByteArray_FromStringAndSize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memchr, memcpy
from libc.stdio cimport snprintf



from global_buffer.errors import (
    BufferClosed,
    BufferCorrupt,
    Empty,
    Full,
    GlobalBufferError,
    StaleView,
    WriterGone,
)

cnp.import_array()

cdef extern from "Python.h":
    int PyErr_CheckSignals() except -1
    void Py_INCREF(object)

cdef extern from "numpy/arrayobject.h":
    # steals a reference to descr
    object PyArray_Empty(int nd, cnp.npy_intp *dims, cnp.dtype descr, int fortran)
    bint _equiv "PyArray_EquivTypes"(cnp.PyArray_Descr *a, cnp.PyArray_Descr *b)

# ---------------------------------------------------------------------------
# process-wide state
# ---------------------------------------------------------------------------

cdef uint32_t _pid = <uint32_t>os.getpid()
# last-level cache size, for choosing streaming copies (gb_stream_copy_wanted)
cdef uint64_t _llc = gb_llc_bytes()


def _reset_pid():
    global _pid, _watch_gen
    _pid = <uint32_t>os.getpid()
    _watch_gen += 1  # the exit watcher's thread did not survive the fork


os.register_at_fork(after_in_child=_reset_pid)


def getpid():
    """``os.getpid()`` without the system call (kept right across fork)."""
    return _pid

cdef int _use_futex = GB_HAVE_FUTEX
cdef int64_t _spin_ns = 20000          # spin before parking (measured: benchmarks/wake.py)
# Longest single sleep.  Signals need no slice (SIGINT ends a futex wait
# with EINTR) and close() from another thread wakes its sleepers, so this
# only bounds the cost of a lost wake-up; long, so an idle reader makes no
# wake-ups at all (benchmarks/wake.py measures 0/s).
cdef int64_t _SLICE_NS = 10000000000    # 10 s
cdef int64_t _CORRUPT_NS = 1000000000  # a slot that never validates for this long is corrupt
cdef int64_t _WATCH_NS = 200000000     # without an exit watch, a blocked stream reader re-checks its writer this often
cdef int64_t _PROBE_NS = 100000000     # ... probing the writer's process at most this often
# Bumped in each forked child: exit watches set up before the fork are gone.
cdef uint64_t _watch_gen = 1

HAVE_FUTEX = bool(GB_HAVE_FUTEX)
HEADER_SIZE = GB_HEADER_SIZE
SLOT_HEADER = GB_SLOT_HEADER
LAYOUT_VERSION = GB_LAYOUT_VERSION
KIND_ARRAY = GB_KIND_ARRAY
KIND_MESSAGE = GB_KIND_MESSAGE
KIND_OBJECT = GB_KIND_OBJECT
KIND_BYTES = GB_KIND_BYTES
FLAG_QUEUE = GB_FLAG_QUEUE
FLAG_BROADCAST = GB_FLAG_BROADCAST


def set_wait_backend(str name):
    """Choose how blocked calls sleep: ``"futex"`` (Linux default) or
    ``"poll"`` (the portable adaptive poll, used where no futex exists)."""
    global _use_futex
    if name == "futex":
        if not GB_HAVE_FUTEX:
            raise ValueError("futex waits are not available on this platform")
        _use_futex = 1
    elif name == "poll":
        _use_futex = 0
    else:
        raise ValueError(f"unknown wait backend {name!r}: use 'futex' or 'poll'")


def get_wait_backend():
    return "futex" if _use_futex else "poll"


def set_spin(double seconds):
    """Set how long a blocked call spins before parking in the kernel."""
    global _spin_ns
    if seconds < 0:
        raise ValueError("spin time must be >= 0")
    _spin_ns = <int64_t>(seconds * 1e9)


def now_ns():
    """The monotonic clock heartbeats use (shared by all processes)."""
    return gb_now_ns()


def segment_nbytes(int kind, int flags, long long capacity, long long slot_size,
                   long long meta_len):
    """Bytes needed for a ring segment with these parameters."""
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    if slot_size < 0 or meta_len < 0:
        raise ValueError("sizes must be >= 0")
    cdef long long nslots = capacity if flags & GB_FLAG_QUEUE else capacity + 1
    if nslots >= (1 << 30):
        raise ValueError(f"capacity {capacity} is too large")
    cdef uint64_t n = gb_ring_nbytes(<uint32_t>nslots, <uint64_t>slot_size,
                                     <uint32_t>meta_len)
    if n == 0:
        raise ValueError("segment parameters out of range")
    return n


cdef int _check(int rc, what) except -1:
    """The one place C status codes become exceptions."""
    if rc == GB_OK:
        return 0
    if rc == GB_EMPTY:
        raise Empty()
    if rc == GB_FULL_RING:
        raise Full()
    if rc == GB_E_MAGIC:
        raise BufferCorrupt(f"{what}: not a global_buffer segment (bad magic)")
    if rc == GB_E_VERSION:
        raise BufferCorrupt(
            f"{what}: segment layout version is not {GB_LAYOUT_VERSION} "
            "(made by another global_buffer version?)")
    if rc == GB_E_LAYOUT:
        raise BufferCorrupt(f"{what}: segment header sizes are inconsistent")
    if rc == GB_E_SIZE:
        raise BufferCorrupt(f"{what}: segment is smaller than its header says (truncated)")
    if rc == GB_E_ARG:
        raise ValueError(f"{what}: invalid ring parameters")
    raise GlobalBufferError(f"{what}: unexpected status {rc}")


def init_segment(buffer, int kind, int flags, long long capacity, long long slot_size,
                 long long maxsize, unsigned long long schema_hash, bytes meta,
                 unsigned long long owner_pid, unsigned long long owner_start):
    """Lay out a fresh, zeroed segment in ``buffer`` (writable)."""
    cdef Py_buffer b
    PyObject_GetBuffer(buffer, &b, PyBUF_WRITABLE)
    try:
        rc = gb_ring_init(b.buf, <uint64_t>b.len, kind, flags, <uint32_t>capacity,
                          <uint64_t>slot_size, maxsize, schema_hash,
                          PyBytes_AS_STRING(meta), <uint32_t>len(meta),
                          owner_pid, owner_start)
    finally:
        PyBuffer_Release(&b)
    _check(rc, "init")


cdef inline int64_t _deadline(object timeout) except -2:
    """Absolute deadline in gb_now_ns() time; -1 means wait forever."""
    if timeout is None:
        return -1
    cdef double t = timeout
    if t != t:
        raise ValueError("timeout must be a number, not NaN")
    if t <= 0:
        return gb_now_ns()
    if t > 1e9:
        return -1
    return gb_now_ns() + <int64_t>(t * 1e9)


# ---------------------------------------------------------------------------
# Handle: one mapping of one segment
# ---------------------------------------------------------------------------

cdef inline void _copy_in(bint nt, void *dst, const void *src, size_t n) noexcept nogil:
    """Copy an item into a slot: streaming stores for a large item into a
    ring bigger than the cache (see gb_copy_streaming), memcpy otherwise."""
    if nt and n >= (<size_t>1 << 20):
        gb_copy_streaming(dst, src, n)
    else:
        memcpy(dst, src, n)


cdef class Handle:
    """A process-local handle on a mapped ring segment."""

    cdef gb_ring r
    cdef Py_buffer _buf
    cdef bint _bound
    cdef int _parked        # threads sleeping in _park (nogil) on this mapping
    cdef bint _held         # closed while parked: the last sleeper releases _buf
    cdef public int64_t _poll_min_ns
    cdef public int64_t _poll_max_ns
    cdef cnp.dtype _descr
    cdef int _ndim
    cdef cnp.npy_intp _dims[32]
    cdef uint64_t _nbytes
    cdef bint _nt           # large items go in with streaming stores (_copy_in)
    cdef bint _watch_writer # stream readers: blocking reads end in WriterGone
    cdef int64_t _gone_checked  # when the writer's process was last probed
    cdef bint _exit_seen    # the writer's process exited (told by _exitwatch)
    cdef bint _exit_ok      # _exitwatch watches the writer: sleep without slices
    cdef uint64_t _exit_gen # _watch_gen when the watch was asked for (0: never)

    def __cinit__(self):
        self._bound = False
        self._poll_min_ns = 100000     # 0.1 ms
        self._poll_max_ns = 2000000    # 2 ms
        self._ndim = -1

    def __dealloc__(self):
        if self._bound or self._held:
            PyBuffer_Release(&self._buf)

    def _bind(self, mm, str what):
        """Map ``mm`` (a writable buffer) and validate the segment in it."""
        if self._bound:
            raise RuntimeError("handle already bound")
        PyObject_GetBuffer(mm, &self._buf, PyBUF_WRITABLE)
        rc = gb_ring_open(&self.r, self._buf.buf, <uint64_t>self._buf.len)
        if rc != GB_OK:
            PyBuffer_Release(&self._buf)
            _check(rc, what)
        self._bound = True
        self._nt = gb_stream_copy_wanted(
            self.r.slot_size, <uint64_t>self.r.nslots * self.r.stride, _llc)

    def _set_array(self, dtype, tuple shape):
        """Fix the sample dtype/shape checked and produced by the hot path."""
        cdef Py_ssize_t i
        if len(shape) > 32:
            raise ValueError("at most 32 dimensions")
        self._descr = dtype
        self._ndim = len(shape)
        for i in range(self._ndim):
            self._dims[i] = shape[i]
        self._nbytes = dtype.itemsize
        for i in range(self._ndim):
            self._nbytes *= <uint64_t>shape[i]
        if self._nbytes > self.r.slot_size:
            raise BufferCorrupt("array sample larger than the segment's slots")

    cdef int _check_array(self, object sample) except -1:
        cdef cnp.ndarray a
        cdef int i
        if not cnp.PyArray_Check(sample):
            raise TypeError(
                f"expected a numpy.ndarray of dtype {self._descr} and shape "
                f"{self._shape_tuple()}, got {type(sample).__name__}")
        a = <cnp.ndarray>sample
        if not _equiv(cnp.PyArray_DESCR(a), <cnp.PyArray_Descr *>self._descr):
            raise ValueError(f"expected dtype {self._descr}, got {(<object>a).dtype}")
        if cnp.PyArray_NDIM(a) != self._ndim:
            raise ValueError(f"expected shape {self._shape_tuple()}, got {(<object>a).shape}")
        for i in range(self._ndim):
            if cnp.PyArray_DIMS(a)[i] != self._dims[i]:
                raise ValueError(f"expected shape {self._shape_tuple()}, got {(<object>a).shape}")
        return 0

    def _shape_tuple(self):
        return tuple([self._dims[i] for i in range(self._ndim)])

    def _unbind(self):
        if self._bound:
            self._bound = False
            if self._parked:
                # another thread sleeps on a wait queue inside the mapping:
                # keep it mapped (our buffer export pins it) until it wakes,
                # and wake it now
                self._held = True
                gb_wake_force(&self.r, &self.r.hdr.data)
                gb_wake_force(&self.r, &self.r.hdr.space)
                gb_wake_force(&self.r, &self.r.hdr.join)
            else:
                PyBuffer_Release(&self._buf)

    @property
    def closed(self):
        return not self._bound

    cdef inline int _live(self) except -1:
        if not self._bound:
            raise BufferClosed(f"{type(self).__name__} is closed")
        return 0

    # -- header fields (read-only views for Python, CLI and tests) --------

    @property
    def _kind(self):
        self._live()
        return self.r.kind

    @property
    def _flags(self):
        self._live()
        return self.r.flags

    @property
    def _nslots(self):
        self._live()
        return self.r.nslots

    @property
    def capacity(self):
        self._live()
        return self.r.capacity

    @property
    def _slot_size(self):
        self._live()
        return self.r.slot_size

    @property
    def _slot_stride(self):
        self._live()
        return self.r.stride

    @property
    def _slots_offset(self):
        self._live()
        return self.r.hdr.slots_offset

    @property
    def _schema_hash(self):
        self._live()
        return self.r.hdr.schema_hash

    @property
    def _meta(self):
        self._live()
        return PyBytes_FromStringAndSize(<char *>self.r.base + self.r.hdr.meta_offset,
                                         self.r.hdr.meta_len)

    @property
    def _maxsize(self):
        self._live()
        return self.r.hdr.maxsize

    @property
    def _owner(self):
        self._live()
        return (self.r.hdr.owner_pid, self.r.hdr.owner_start)

    @property
    def _writer(self):
        self._live()
        return (gb_load_u64(&self.r.hdr.writer_pid), gb_load_u64(&self.r.hdr.writer_start))

    @property
    def _heartbeat_ns(self):
        self._live()
        return gb_get_heartbeat(&self.r)

    @property
    def _tail(self):
        self._live()
        return gb_stream_tail(&self.r)

    @property
    def _head(self):
        self._live()
        return gb_load_u64(&self.r.hdr.head)

    @property
    def _streaming(self):
        """True when large items go in with streaming stores (_copy_in)."""
        return bool(self._nt)

    @property
    def _wake_calls(self):
        self._live()
        return gb_load_u64(&self.r.hdr.wake_calls)

    @property
    def _readers(self):
        self._live()
        return gb_load_u64(&self.r.hdr.readers)

    @property
    def _created_ns(self):
        self._live()
        return self.r.hdr.created_ns

    def _waiting(self):
        """Threads parked waiting for items (a stream's readers, a queue
        ring's consumers in ``get()``) right now: a hint (the bridge of
        §9 forwards to a host whose consumers wait)."""
        self._live()
        return gb_wait_count(&self.r.hdr.data)

    def _add_readers(self, int delta):
        self._live()
        gb_add_u64(&self.r.hdr.readers, delta)

    def _payload_offset(self, uint64_t pos):
        """Byte offset of the payload of the slot holding position ``pos``."""
        self._live()
        return <uint64_t>(<uint8_t *>gb_payload(gb_slot_at(&self.r, pos)) - self.r.base)

    def _set_writer(self, unsigned long long pid, unsigned long long start):
        self._live()
        gb_set_writer(&self.r, pid, start)
        gb_set_heartbeat(&self.r, gb_now_ns())

    cdef int _check_out(self, object out, bint batch) except -1:
        cdef cnp.ndarray a
        cdef int i, off = 1 if batch else 0
        if self._ndim < 0:
            raise TypeError("needs an array stream or ring (schema=gb.ArraySpec)")
        if not cnp.PyArray_Check(out):
            raise ValueError(f"out must be {self._out_what(batch)}, got {type(out).__name__}")
        a = <cnp.ndarray>out
        if not _equiv(cnp.PyArray_DESCR(a), <cnp.PyArray_Descr *>self._descr):
            raise ValueError(f"out must be {self._out_what(batch)}; its dtype is {(<object>a).dtype}")
        if cnp.PyArray_NDIM(a) != self._ndim + off:
            raise ValueError(f"out must be {self._out_what(batch)}; its shape is {(<object>a).shape}")
        for i in range(self._ndim):
            if cnp.PyArray_DIMS(a)[i + off] != self._dims[i]:
                raise ValueError(f"out must be {self._out_what(batch)}; its shape is {(<object>a).shape}")
        if not cnp.PyArray_ISWRITEABLE(a):
            raise ValueError("out must be writable")
        if not cnp.PyArray_IS_C_CONTIGUOUS(a):
            raise ValueError("out must be C-contiguous")
        return 0

    def _out_what(self, bint batch):
        shape = ("k",) + self._shape_tuple() if batch else self._shape_tuple()
        return f"an array of dtype {self._descr} and shape {shape}"

    # -- waiting -----------------------------------------------------------

    cdef int _park(self, gb_waitq *q, uint32_t seen, int64_t deadline,
                   int64_t *poll) except -1:
        """Sleep once on q (registered by gb_wait_prepare).  Returns 1 when
        the deadline has passed, 0 otherwise; raises on a pending signal."""
        cdef int64_t now = gb_now_ns()
        cdef int64_t span = _SLICE_NS
        if deadline >= 0:
            if now >= deadline:
                gb_wait_done(q)
                return 1
            if deadline - now < span:
                span = deadline - now
        self._parked += 1
        with nogil:
            gb_wait_sleep(q, seen, span, poll[0], _use_futex)
        self._parked -= 1
        gb_wait_done(q)
        if self._held and self._parked == 0:
            # closed by another thread while we slept (callers see _bound
            # False and raise BufferClosed); q is not touched again
            self._held = False
            PyBuffer_Release(&self._buf)
        if not _use_futex:
            poll[0] = poll[0] * 2 if poll[0] * 2 < self._poll_max_ns else self._poll_max_ns
        PyErr_CheckSignals()
        return 0

    cdef int _wait_tail(self, uint64_t seen, int64_t deadline) except -1:
        """Wait until the stream tail passes ``seen``.  1 on timeout.  A
        stream reader's wait ends in ``WriterGone`` once the writer closed
        or died with nothing left past ``seen`` (SPEC §2.2)."""
        cdef gb_waitq *q = &self.r.hdr.data
        cdef int64_t poll = self._poll_min_ns
        cdef int64_t until
        cdef uint32_t ev
        cdef int got
        if gb_stream_tail(&self.r) > seen:
            return 0
        if deadline >= 0 and gb_now_ns() >= deadline:
            if self._watch_writer:
                self._check_writer(seen)
            return 1
        if _spin_ns > 0:
            # spin without the GIL: other threads of this process run on
            with nogil:
                got = gb_spin_tail(&self.r, seen, _spin_ns)
            if got:
                return 0
        while True:
            if self._watch_writer:
                # before registering as a sleeper: _check_writer and the
                # watch may run Python code, during which another thread may
                # close this handle (and unmap the segment)
                self._check_writer(seen)
                if self._exit_gen != _watch_gen:
                    self._exit_gen = _watch_gen
                    ok = self._watch_exit()
                    self._exit_ok = ok is True
                    if ok is None:
                        self._exit_seen = True
                        self._check_writer(seen)
                if not self._bound:
                    raise BufferClosed("handle closed while waiting")
            ev = gb_wait_prepare(q)
            if gb_stream_tail(&self.r) > seen:
                gb_wait_done(q)
                return 0
            if self._watch_writer:
                if gb_load_u64(&self.r.hdr.writer_pid) == 0 or self._exit_seen:
                    gb_wait_done(q)  # closed or died just now: _check_writer says so
                    continue
                # with a watch, _exitwatch wakes this sleeper when the
                # writer's process exits (after the check above, under this
                # same GIL hold, or after ev was read: then the sleep returns
                # at once); without one, sleep in slices short enough to
                # notice a dead writer
                until = gb_now_ns() + _WATCH_NS
                if not (self._exit_ok and self._exit_gen == _watch_gen) and (
                        deadline < 0 or deadline > until):
                    self._park(q, ev, until, &poll)
                    if not self._bound:
                        raise BufferClosed("handle closed while waiting")
                    continue
            if self._park(q, ev, deadline, &poll):
                if not self._bound:
                    raise BufferClosed("handle closed while waiting")
                if gb_stream_tail(&self.r) > seen:
                    return 0
                if self._watch_writer:
                    self._check_writer(seen)
                return 1
            if not self._bound:
                raise BufferClosed("handle closed while waiting")

    cdef int _check_writer(self, uint64_t seen) except -1:
        """Raise WriterGone if the stream's writer closed it (at once) or
        its process is gone (probed at most every _PROBE_NS), and nothing
        was committed past ``seen`` meanwhile."""
        cdef uint64_t pid = gb_load_u64(&self.r.hdr.writer_pid)
        cdef int64_t now
        if pid != 0 and not self._exit_seen:
            now = gb_now_ns()
            if now - self._gone_checked < _PROBE_NS:
                return 0
            self._gone_checked = now
            if not self._writer_dead():
                return 0
            if not self._bound:  # closed by another thread while Python ran
                raise BufferClosed("handle closed while waiting")
        if gb_stream_tail(&self.r) > seen:
            return 0  # its last samples landed meanwhile: read them first
        raise WriterGone(
            "the stream's writer " + ("closed it" if pid == 0 else f"(pid {pid}) died")
            + " and every sample it wrote has been read")

    def _writer_dead(self):
        return False

    def _watch_exit(self):
        """Ask ``_exitwatch`` to call ``_writer_exited`` when the writer's
        process exits: True if it will, None if the writer is gone already,
        False if it cannot (then blocked reads sleep in slices)."""
        return False

    def _writer_exited(self):
        """The writer's process exited (``_exitwatch``'s thread): wake the
        sleepers, whose next look at the writer raises WriterGone."""
        self._exit_seen = True
        if self._bound:
            gb_wake_force(&self.r, &self.r.hdr.data)


# ---------------------------------------------------------------------------
# Streams
# ---------------------------------------------------------------------------

cdef class StreamWriter(Handle):
    """Compiled half of the stream writer (``gb.GlobalBuffer``)."""

    cdef int64_t _hb_interval_ns
    cdef int64_t _last_hb
    cdef bint _reserving
    cdef object _encode
    cdef object _views

    def _setup_writer(self, double heartbeat_interval, encode):
        if heartbeat_interval < 0:
            raise ValueError("heartbeat_interval must be >= 0")
        self._hb_interval_ns = <int64_t>(heartbeat_interval * 1e9)
        self._encode = encode
        self._last_hb = gb_now_ns()

    cdef inline void _beat(self, int64_t now):
        # now: the commit's own clock reading (one clock read per write)
        if now - self._last_hb >= self._hb_interval_ns:
            self._last_hb = now
            gb_set_heartbeat(&self.r, now)

    def heartbeat(self):
        """Stamp the writer's heartbeat now (keeps an idle writer alive)."""
        self._live()
        self._last_hb = gb_now_ns()
        gb_set_heartbeat(&self.r, self._last_hb)

    def write(self, sample):
        """Publish one sample: an ndarray of the stream's exact dtype and
        shape, or a model instance (or dict) for message streams."""
        cdef uint64_t pos
        cdef uint8_t *p
        cdef cnp.ndarray a
        cdef bytes data
        cdef Py_ssize_t n
        cdef int64_t now
        self._live()
        if self._reserving:
            raise RuntimeError("write() inside an open reserve() block")
        if self._ndim >= 0:
            self._check_array(sample)
            a = <cnp.ndarray>sample
            if cnp.PyArray_IS_C_CONTIGUOUS(a):
                p = gb_stream_begin(&self.r, _pid, &pos)
                _copy_in(self._nt, p, cnp.PyArray_DATA(a), self._nbytes)
            else:
                pos = self._begin_view_copy(a)
            now = gb_now_ns()
            gb_stream_commit_at(&self.r, _pid, pos, self._nbytes, now)
        else:
            data = self._encode(sample)
            n = len(data)
            if <uint64_t>n > self.r.slot_size:
                raise ValueError(
                    f"message encodes to {n} bytes, larger than the stream's "
                    f"max_bytes={self.r.slot_size}")
            p = gb_stream_begin(&self.r, _pid, &pos)
            memcpy(p, PyBytes_AS_STRING(data), n)
            now = gb_now_ns()
            gb_stream_commit_at(&self.r, _pid, pos, <uint64_t>n, now)
        self._beat(now)

    def _write_seq(self, sample, unsigned long long seq):
        """Publish ``sample`` as sequence number ``seq`` (>= the next one):
        a mirror of a stream on another host keeps its writer's numbers, and
        the numbers it jumps over count as its readers' overruns (SPEC §9).
        ``sample``: an ndarray as for ``write``, or for either kind of
        stream the sample's bytes exactly as stored (an array's C-order
        bytes, a message's msgpack)."""
        cdef uint64_t t, n
        cdef uint8_t *p
        cdef cnp.ndarray a
        cdef const uint8_t[::1] raw
        cdef int64_t now
        self._live()
        if self._reserving:
            raise RuntimeError("_write_seq() inside an open reserve() block")
        t = gb_stream_tail(&self.r)
        if seq < t:
            raise ValueError(f"sequence number {seq} is behind the stream's next ({t})")
        if self._ndim >= 0 and cnp.PyArray_Check(sample):
            self._check_array(sample)
            a = cnp.PyArray_GETCONTIGUOUS(<cnp.ndarray>sample)
            p = gb_stream_begin_at(&self.r, _pid, seq)
            _copy_in(self._nt, p, cnp.PyArray_DATA(a), self._nbytes)
            n = self._nbytes
        else:
            raw = memoryview(sample).cast("B")
            n = <uint64_t>raw.shape[0]
            if self._ndim >= 0 and n != self._nbytes:
                raise ValueError(f"a sample of this stream is {self._nbytes} bytes, got {n}")
            if n > self.r.slot_size:
                raise ValueError(f"sample of {n} bytes is larger than the stream's "
                                 f"max_bytes={self.r.slot_size}")
            p = gb_stream_begin_at(&self.r, _pid, seq)
            if n:
                _copy_in(self._nt, p, &raw[0], n)
        now = gb_now_ns()
        gb_stream_commit_at(&self.r, _pid, seq, n, now)
        self._beat(now)

    def _mark_gone(self):
        """The writer is done (its ``close()``): readers that have read
        everything get ``WriterGone`` at once.  Only the writing process
        marks it (a forked child's copy of the handle does not)."""
        if self._bound and gb_load_u64(&self.r.hdr.writer_pid) == _pid:
            gb_set_writer(&self.r, 0, 0)
            gb_wake_force(&self.r, &self.r.hdr.data)

    cdef uint64_t _begin_view_copy(self, cnp.ndarray a) except? 0xFFFFFFFFFFFFFFFF:
        # non-contiguous input: let numpy do the strided copy into the slot
        cdef uint64_t pos
        gb_stream_begin(&self.r, _pid, &pos)
        try:
            cnp.PyArray_CopyInto(self._slot_view(pos), a)
        except BaseException:
            gb_stream_abort(&self.r, pos)
            raise
        return pos

    def _slot_view(self, uint64_t pos):
        """Writable ndarray over the payload of the slot for ``pos``."""
        if self._views is None:
            self._views = [None] * self.r.nslots
        i = pos % self.r.nslots
        v = self._views[i]
        if v is None:
            v = self._make_view(pos)
            self._views[i] = v
        return v

    def _make_view(self, uint64_t pos):
        raise NotImplementedError

    def _drop_views(self):
        self._views = None

    def _reserve_begin(self):
        self._live()
        if self._reserving:
            raise RuntimeError("reserve() blocks cannot nest")
        cdef uint64_t pos
        gb_stream_begin(&self.r, _pid, &pos)
        self._reserving = True
        return pos

    def _reserve_end(self, uint64_t pos, bint commit):
        cdef int64_t now
        self._reserving = False
        if not self._bound:
            return
        if commit:
            now = gb_now_ns()
            gb_stream_commit_at(&self.r, _pid, pos, self._nbytes, now)
            self._beat(now)
        else:
            gb_stream_abort(&self.r, pos)


class _BlobGone(Exception):
    """An out-of-line broadcast item was overwritten (its blob removed)
    before this reader opened it: counted as an overrun."""


cdef class StreamReader(Handle):
    """Compiled half of the stream reader (``gb.Reader``)."""

    cdef public uint64_t _cursor
    cdef public uint64_t overruns
    cdef uint64_t _stale_tail
    cdef object _decode
    cdef uint64_t _guard    # lapped-reader back-off: samples kept clear of the writer
    cdef uint32_t _okrun    # reads since the last one the writer overwrote

    def _watch_writer_of_stream(self):
        """Blocking reads end in ``WriterGone`` once the stream's writer is
        gone (stream readers; a broadcast ring has no single writer)."""
        self._watch_writer = True

    def _setup_reader(self, decode, bint from_oldest):
        self._decode = decode
        cdef uint64_t t = gb_stream_tail(&self.r)
        if from_oldest:
            self._cursor = t - self.r.capacity if t > self.r.capacity else 0
        else:
            self._cursor = t

    cdef inline uint64_t _clamp(self):
        """Move the cursor into the part of the window the writer is not
        about to overwrite; returns the tail seen.  A reader never lapped
        keeps the whole window (capacity samples of backlog).  Each read
        the writer overwrote under it doubles ``_guard``, the samples it
        stays clear of, up to "just the newest" (SPEC §2.2: a lapped reader
        resumes at or close behind the newest and keeps reading at its own
        copy rate instead of losing every race); 64 clean reads in a row
        halve it again.  Skipped samples count in ``overruns``, exactly."""
        cdef uint64_t t = gb_stream_tail(&self.r)
        cdef uint64_t keep = self.r.capacity - self._guard
        if t > self._cursor and t - self._cursor > keep:
            self.overruns += t - keep - self._cursor
            self._cursor = t - keep
        return t

    cdef inline void _read_ok(self) noexcept:
        if self._guard:
            self._okrun += 1
            if self._okrun >= 64:
                self._guard >>= 1
                self._okrun = 0

    cdef inline void _read_lost(self) noexcept:
        # the writer overwrote the sample under us: keep further clear of it
        cdef uint64_t g = self._guard * 2 if self._guard else 1
        self._guard = g if g < self.r.capacity else self.r.capacity - 1
        self._okrun = 0

    cdef inline bint _skip_gap(self, uint64_t pos) noexcept:
        """A mirror's writer jumped over ``pos`` (samples the link lost):
        count it and move on."""
        if gb_stream_skipped(&self.r, pos):
            self.overruns += 1
            self._cursor = pos + 1
            return True
        return False

    cdef object _copy_out(self, uint64_t pos, bint *ok):
        """Copy sample ``pos`` into a new object; ok=False if it went stale."""
        cdef cnp.ndarray out
        cdef uint64_t w, n
        cdef const uint8_t *p
        if self._ndim >= 0:
            Py_INCREF(self._descr)  # PyArray_Empty steals a reference
            out = PyArray_Empty(self._ndim, self._dims, self._descr, 0)
            ok[0] = gb_read_copy(&self.r, pos, cnp.PyArray_DATA(out), self._nbytes, &n) == GB_OK
            return out
        if gb_read_begin(&self.r, pos, &w, &p, &n) != GB_OK:
            ok[0] = False
            return None
        if self.r.kind == GB_KIND_OBJECT:  # writable: arrays inside come back writable
            data = PyByteArray_FromStringAndSize(<const char *>p, n)
        else:
            data = PyBytes_FromStringAndSize(<const char *>p, n)
        ok[0] = gb_read_check(&self.r, pos, w) != 0
        return data

    cdef inline object _finish(self, object raw):
        if self._decode is None:
            return raw
        return self._decode(raw)

    cdef int _stale(self, uint64_t pos, int64_t *since, int64_t deadline=-1) except -1:
        """A read of pos went stale: fine if the writer lapped us, corrupt if
        the slot never validates while nothing moves.  ``since`` is when the
        writer was last seen to make progress; a blocking call still honours
        its deadline (gb.Empty) when every sample is overwritten before it
        can be copied (a huge sample and a tiny ring)."""
        cdef int64_t now = gb_now_ns()
        cdef uint64_t t = gb_stream_tail(&self.r)
        if since[0] == 0 or t != self._stale_tail:
            self._stale_tail = t
            since[0] = now
        elif now - since[0] > _CORRUPT_NS:
            raise BufferCorrupt(f"slot for sample {pos} never validates: segment corrupt")
        if deadline >= 0 and now >= deadline:
            raise Empty()
        return 0

    cdef object _next(self, object timeout, uint64_t *seq):
        cdef int64_t deadline = _deadline(timeout)
        cdef int64_t since = 0
        cdef uint64_t pos
        cdef bint ok
        self._live()
        while True:
            if self._wait_tail(self._cursor, deadline):
                raise Empty()
            self._clamp()
            pos = self._cursor
            raw = self._copy_out(pos, &ok)
            if ok:
                self._cursor = pos + 1
                self._read_ok()
                seq[0] = pos
                try:
                    return self._finish(raw)
                except _BlobGone:
                    self.overruns += 1  # overwritten before we opened it
                    continue
            if self._skip_gap(pos):
                continue
            self._read_lost()
            self._stale(pos, &since, deadline)

    def next(self, timeout=None):
        """The next sample in order; blocks up to ``timeout`` seconds
        (forever if None) and raises ``gb.Empty`` on timeout."""
        cdef uint64_t seq
        return self._next(timeout, &seq)

    def _next_seq(self, timeout=None):
        cdef uint64_t seq
        sample = self._next(timeout, &seq)
        return sample, seq

    cdef object _latest(self, uint64_t *seq):
        cdef uint64_t t, pos
        cdef int64_t since = 0
        cdef bint ok
        self._live()
        while True:
            t = gb_stream_tail(&self.r)
            if t == 0:
                return None
            pos = t - 1
            raw = self._copy_out(pos, &ok)
            if ok:
                seq[0] = pos
                try:
                    return self._finish(raw)
                except _BlobGone:
                    continue  # overwritten meanwhile: there is a newer one
            self._stale(pos, &since)

    def latest(self):
        """The newest committed sample, or None if nothing was written."""
        cdef uint64_t seq
        return self._latest(&seq)

    def _latest_seq(self):
        cdef uint64_t seq = 0
        sample = self._latest(&seq)
        return sample, seq

    def _wait_new(self, uint64_t seen, timeout):
        """Wait until more than ``seen`` samples were committed; True if so."""
        self._live()
        return not self._wait_tail(seen, _deadline(timeout))

    def next_into(self, out, timeout=None):
        """Copy the next sample into ``out`` (no allocation); return its
        sequence number.  ``gb.Empty`` on timeout."""
        cdef int64_t deadline
        cdef int64_t since = 0
        cdef uint64_t pos, n
        self._live()
        self._check_out(out, False)
        deadline = _deadline(timeout)
        while True:
            if self._wait_tail(self._cursor, deadline):
                raise Empty()
            self._clamp()
            pos = self._cursor
            if gb_read_copy(&self.r, pos, cnp.PyArray_DATA(<cnp.ndarray>out),
                            self._nbytes, &n) == GB_OK:
                self._cursor = pos + 1
                self._read_ok()
                return pos
            if self._skip_gap(pos):
                continue
            self._read_lost()
            self._stale(pos, &since, deadline)

    def next_batch_into(self, out, timeout=None):
        """Copy up to ``len(out)`` samples into ``out`` (shape ``(k, *shape)``):
        every committed sample at once, else wait for at least one.
        Returns how many were copied."""
        cdef int64_t deadline
        cdef int64_t since = 0
        cdef uint64_t pos, n, t, k, got = 0
        cdef uint8_t *dst
        self._live()
        self._check_out(out, True)
        k = <uint64_t>cnp.PyArray_DIMS(<cnp.ndarray>out)[0]
        if k == 0:
            return 0
        dst = <uint8_t *>cnp.PyArray_DATA(<cnp.ndarray>out)
        deadline = _deadline(timeout)
        while got == 0:
            if self._wait_tail(self._cursor, deadline):
                raise Empty()
            t = self._clamp()
            while got < k and self._cursor < t:
                pos = self._cursor
                if gb_read_copy(&self.r, pos, dst + got * self._nbytes,
                                self._nbytes, &n) != GB_OK:
                    if self._skip_gap(pos):
                        continue
                    self._read_lost()
                    self._stale(pos, &since, deadline)
                    break  # lapped: re-clamp (counts the overrun)
                self._cursor = pos + 1
                self._read_ok()
                got += 1
        return got

    def _view_begin(self, bint take_next, timeout):
        """Start a zero-copy read: (pos, word) of the sample to view."""
        cdef int64_t deadline = _deadline(timeout)
        cdef int64_t since = 0
        cdef uint64_t pos, w, n, t
        cdef const uint8_t *p
        self._live()
        while True:
            if take_next:
                if self._wait_tail(self._cursor, deadline):
                    raise Empty()
                self._clamp()
                pos = self._cursor
            else:
                t = gb_stream_tail(&self.r)
                if t == 0:
                    return None
                pos = t - 1
            if gb_read_begin(&self.r, pos, &w, &p, &n) == GB_OK:
                if take_next:
                    self._cursor = pos + 1
                return pos, w
            if take_next:
                if self._skip_gap(pos):
                    continue
                self._read_lost()
            self._stale(pos, &since, deadline if take_next else -1)

    def _view_check(self, uint64_t pos, uint64_t word):
        """True if the slot still holds the sample a view started on."""
        if not self._bound:
            return False
        if gb_read_check(&self.r, pos, word) != 0:
            self._read_ok()
            return True
        self._read_lost()
        return False


include "_plain.pxi"
include "_queue.pxi"
