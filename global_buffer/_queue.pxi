# Compiled halves of gb.Ring (ring.py): queue rings (lossless MPMC) and
# broadcast rings (a stream that any handle may also put to).  Included by
# _core.pyx, so there is still one compiled module.


cdef int64_t _LIVENESS_NS = 100000000   # check a blocking peer's pid every 100 ms
# s an unbounded put waits for a free slot before handing the item to the
# feeder thread (SPEC §3.1 "never blocks": see docs/migration.md)
cdef double _FULL_GRACE = 50e-6
FULL_GRACE = _FULL_GRACE  # for ring.py's put_many
cdef int64_t _BUSY_SLICE_NS = 20000000  # sleep slice while a peer holds a claim
cdef uint64_t _pstart = 0               # this process's start time (0: not read yet)

# aux values of a queue slot (object rings)
# (C constants: a module-level name would cost a dict lookup per use)
cdef enum:
    AUX_INLINE = 0  # the payload is the item
    AUX_BLOB = 1    # the payload names an out-of-line blob holding the item
    AUX_VOID = 2    # nothing: a put that failed after claiming (skipped by get)
    AUX_PLAIN = 3   # the payload is the item, a plain-data pickle (_plain.pxi)

# An object payload whose first byte is 0 is a frame of pickle protocol 5
# with out-of-band buffers; a plain pickle starts with PROTO (0x80).
cdef enum:
    FRAME_TAG = 0

# arena chunks (global_buffer/blobs.py: ARENA_MAX, _CHUNK_MIN, _PROBE)
cdef enum:
    _ARENA_MAX = 256 << 10
    _CHUNK_MIN = 8 << 10
    _CHUNK_PROBE = 8
ARENA_MAX = _ARENA_MAX
CHUNK_MIN = _CHUNK_MIN
CHUNK_PROBE = _CHUNK_PROBE

cdef class ChunkPool


def _reset_start():
    global _pstart
    _pstart = 0


os.register_at_fork(after_in_child=_reset_start)


cdef inline uint64_t _self_start() except? 0:
    global _pstart
    if _pstart == 0:
        from global_buffer.segment import self_start_time
        _pstart = self_start_time() or 1
    return _pstart


cdef class _Scratch:
    """A reusable output file for pickling large items: pickle.dumps builds
    a fresh bytes object per call, and one of 256 KiB or more is a fresh
    mmap whose every page faults (measured ~2.7 us per 4 KiB page on a VM:
    dumps of a 256 KiB bytes object 156-213 us, through this 5-10 us).
    Exposes its first ``n`` bytes through the buffer protocol."""
    cdef char *buf
    cdef Py_ssize_t cap, n
    cdef int exports

    def write(self, data):
        cdef Py_buffer b
        cdef Py_ssize_t need, cap
        cdef char *p
        PyObject_GetBuffer(data, &b, 0)
        try:
            need = self.n + b.len
            if need > self.cap:
                if self.exports:
                    raise BufferError("scratch buffer resized while exported")
                cap = max(need, 2 * self.cap, 1 << 16)
                p = <char *>PyMem_RawRealloc(self.buf, cap)
                if p == NULL:
                    raise MemoryError()
                self.buf, self.cap = p, cap
            memcpy(self.buf + self.n, b.buf, b.len)
            self.n = need
            return b.len
        finally:
            PyBuffer_Release(&b)

    def __getbuffer__(self, Py_buffer *view, int flags):
        PyBuffer_FillInfo(view, self, self.buf, self.n, 1, flags)
        self.exports += 1

    def __releasebuffer__(self, Py_buffer *view):
        self.exports -= 1

    def __dealloc__(self):
        PyMem_RawFree(self.buf)


cdef class PicklerDumps:
    """``dumps(obj, protocol=5, buffer_callback=None)`` through one reusable
    pickler of class ``cls`` (global_buffer/reduction.py: ForkingPickler's
    registered reducers in its dispatch table), writing into a reusable
    buffer: a pickler made per call costs ~2 us more than ``pickle.dumps``,
    this one ~0.2 us.  ``refresh()`` rebuilds the class's table; it is called
    and the pickler remade when ``tables`` (copyreg's and ForkingPickler's)
    change size.  A call made while another is running (a reducer that puts,
    another thread while a reducer holds the GIL off) takes a pickler of
    its own."""
    cdef object cls, refresh, pickler, target
    cdef tuple tables
    cdef Py_ssize_t key
    cdef _Scratch out
    cdef bint busy

    def __init__(self, cls, refresh, tables):
        self.cls = cls
        self.refresh = refresh
        self.tables = tuple(tables)
        self.key = -1
        self.out = _Scratch()

    def _forward(self, pb):
        # the pickler's buffer_callback, fixed at its creation: the caller's
        # of this dump, or in band without one
        return True if self.target is None else self.target(pb)

    def __call__(self, obj, protocol=5, buffer_callback=None):
        cdef Py_ssize_t key = 0
        for t in self.tables:
            key += len(<dict>t)
        if key != self.key:
            self.refresh()
            self.key = key
            self.pickler = None
        if self.busy or protocol != 5:
            f = _BytesIO()
            self.cls(f, protocol, buffer_callback=buffer_callback).dump(obj)
            return f.getvalue()
        if self.pickler is None:
            self.pickler = self.cls(self.out, 5, buffer_callback=self._forward)
        self.busy = True
        self.target = buffer_callback
        self.out.n = 0
        try:
            self.pickler.dump(obj)
            return PyBytes_FromStringAndSize(self.out.buf, self.out.n)
        finally:
            self.pickler.clear_memo()  # drop its references to obj's parts
            self.target = None
            if self.out.cap > (1 << 20):  # a large in-band pickle: let it go
                self.out = _Scratch()
                self.pickler = None
            self.busy = False


# items that pickle to more than this make the next put pickle into the
# handle's _Scratch instead of through pickle.dumps (see _Scratch)
cdef Py_ssize_t _LARGE_PICKLE = 64 * 1024


cdef class _Serial:
    """Serialisation state shared by queue and broadcast handles."""
    cdef object dumps        # pickle-like module's dumps(obj, 5, buffer_callback=)
    cdef object pickler      # and its Pickler class (for _Scratch)
    cdef object keep         # oob.append: the buffer_callback
    cdef object loads        # bytes-like -> obj (trailing bytes ignored)
    cdef object encode       # custom / message encoder: obj -> bytes
    cdef list oob            # PickleBuffers of the item being put
    cdef bint pickle_like    # dumps/loads in use (frames possible)
    cdef bint busy           # a thread of this process is mid-serialise (oob, scratch in use)
    cdef bint large          # the last item was large: pickle into scratch
    cdef _Scratch scratch

    def __init__(self, dumps, loads, encode, list oob, pickler=None):
        self.dumps = dumps
        self.pickler = pickler
        self.keep = oob.append
        self.loads = loads
        self.encode = encode
        self.oob = oob
        self.pickle_like = dumps is not None
        self.scratch = _Scratch()


cdef class _Parts:
    """An item serialised for copying into a slot: data plus optional
    out-of-band buffers, each 64-byte aligned in the frame."""
    cdef object data          # bytes-like: the pickle / encoded item
    cdef list bufs            # memoryviews of out-of-band buffers
    cdef uint64_t total
    cdef uint64_t aux         # the slot's aux when put inline (AUX_INLINE or AUX_PLAIN)

    @property
    def total(self):
        return self.total


cdef inline uint64_t _align64(uint64_t x):
    return (x + 63) & ~(<uint64_t>63)


cdef uint64_t _frame_header(Py_ssize_t nbufs):
    return _align64(16 + 8 * <uint64_t>nbufs)


cdef int _write_parts(_Parts parts, uint8_t *dst, bint nt) except -1:
    """Copy a serialised item into dst (which has parts.total bytes); ``nt``:
    large out-of-band buffers go in with streaming stores (see _copy_in)."""
    cdef Py_buffer b
    cdef uint64_t off, n
    cdef Py_ssize_t i, nb
    cdef uint64_t *hdr
    PyObject_GetBuffer(parts.data, &b, 0)
    try:
        if parts.bufs is None:
            memcpy(dst, b.buf, b.len)
            return 0
        nb = len(parts.bufs)
        off = _frame_header(nb)
        hdr = <uint64_t *>dst
        hdr[0] = FRAME_TAG | (<uint64_t>nb << 8)   # byte 0 is the tag
        hdr[1] = <uint64_t>b.len
        memcpy(dst + off, b.buf, b.len)
        off = _align64(off + <uint64_t>b.len)
    finally:
        PyBuffer_Release(&b)
    for i in range(nb):
        PyObject_GetBuffer(parts.bufs[i], &b, 0)
        try:
            n = <uint64_t>b.len
            hdr[2 + i] = n
            _copy_in(nt, dst + off, b.buf, n)
            off = _align64(off + n)
        finally:
            PyBuffer_Release(&b)
    return 0


def unframe(ba, loads):
    """Rebuild an object from a frame made by _write_parts (``ba`` is a
    writable bytes-like object; numpy arrays come back as views of it)."""
    mv = memoryview(ba)
    head = mv[:16].cast("Q")
    nb = head[0] >> 8
    plen = head[1]
    off = (16 + 8 * nb + 63) & ~63
    sizes = mv[16:16 + 8 * nb].cast("Q")
    data = mv[off:off + plen]
    off = (off + plen + 63) & ~63
    bufs = []
    for i in range(nb):
        n = sizes[i]
        bufs.append(mv[off:off + n])
        off = (off + n + 63) & ~63
    return loads(data, buffers=bufs)


def decode_pickled(raw):
    """An item of a pickle or cloudpickle ring from its bytes (``raw``: a
    bytes-like copy): a frame (out-of-band buffers), a plain-data pickle
    (_plain.pxi), or any other pickle."""
    cdef Py_buffer b
    cdef const uint8_t *p
    PyObject_GetBuffer(raw, &b, 0)
    try:
        p = <const uint8_t *>b.buf
        if b.len > 0 and p[0] == FRAME_TAG:
            out = _NOT_PLAIN
            framed = True
        else:
            out = _plain_load(p, b.len)
            framed = False
    finally:
        PyBuffer_Release(&b)
    if framed:
        return unframe(raw, pickle.loads)
    if out is _NOT_PLAIN:
        return pickle.loads(raw)
    return out


cdef _Parts _parts_of(object data, list oob, Py_ssize_t n):
    """An item pickled to ``data`` (n bytes) with the out-of-band buffers
    in ``oob``."""
    cdef _Parts p = _Parts.__new__(_Parts)
    cdef Py_ssize_t nb = len(oob), i
    cdef uint64_t total
    p.data = data
    if nb == 0:
        p.bufs = None
        p.total = n
        return p
    p.bufs = [pb.raw() for pb in oob]
    total = _frame_header(nb) + _align64(n)
    for i in range(nb):
        total += _align64(len(p.bufs[i]))
    p.total = total
    return p


cdef inline void _scratch_back(_Serial ser, _Parts parts):
    """Give the handle back the scratch buffer ``parts`` was pickled into,
    now that its bytes are in shared memory (or the put was abandoned)."""
    if parts is not None and ser.scratch is None and type(parts.data) is _Scratch:
        ser.scratch = <_Scratch>parts.data


cdef inline void _note_size(_Serial ser, Py_ssize_t n):
    """After a pickle of n bytes: is the next one to go through the scratch
    buffer (see _Scratch)?"""
    ser.large = n > _LARGE_PICKLE and ser.pickler is not None


cdef _Parts _serialize(_Serial ser, object obj, uint32_t kind, bint transient):
    """Serialise ``obj``.  ``transient``: the caller copies the result into
    shared memory before it serialises anything else on this handle, so a
    large pickle may live in the handle's reusable scratch buffer."""
    cdef Py_ssize_t n
    cdef Py_buffer b
    cdef list oob
    cdef _Scratch sc
    cdef object data
    if ser.pickle_like:
        if ser.busy:
            # another thread of ours is inside a dumps (a __reduce__ can
            # release the GIL): its oob list and scratch are taken
            oob = []
            data = ser.dumps(obj, 5, buffer_callback=oob.append)
            return _parts_of(data, oob, len(data))
        # busy until ser.oob is consumed and emptied (finally)
        ser.busy = True
        try:
            if transient and ser.large:
                # the scratch is this item's until _scratch_back: a thread
                # that serialises meanwhile (the GIL can switch while this
                # one spills or waits for a slot) makes its own
                sc = ser.scratch
                if sc is None or sc.exports:
                    sc = _Scratch()
                ser.scratch = None
                sc.n = 0
                ser.pickler(sc, 5, buffer_callback=ser.keep).dump(obj)
                data, n = sc, sc.n
            else:
                # called here, not through a Python closure: ~70 ns a put
                data = ser.dumps(obj, 5, buffer_callback=ser.keep)
                n = len(data)
            _note_size(ser, n)
            return _parts_of(data, ser.oob, n)
        finally:
            if ser.oob:
                del ser.oob[:]
            ser.busy = False
    data = ser.encode(obj)
    PyObject_GetBuffer(data, &b, 0)
    n = b.len
    PyBuffer_Release(&b)
    return _parts_of(data, [], n)


cdef class QueueHandle(Handle):
    """Compiled half of a queue ring: each item goes to exactly one get()."""

    cdef int64_t _qmax
    cdef Py_ssize_t _plain_cap  # largest plain-data encoding put inline
    cdef dict _pools            # blobs.Blobs.pools: chunk size -> ChunkPool (or None)
    cdef dict _maps             # blobs.Blobs.maps: blob segment name -> its mapping
    cdef _Serial _ser
    cdef public bint _closed_put
    # unbounded rings (ring.py owns the thread): items serialised and
    # waiting in this process, in order; the feeder thread while it runs
    # (None otherwise); the lock that orders appends against the feeder's
    # exit; the lock held by whoever moves _pending into slots
    cdef public object _pending
    cdef public object _feeder
    cdef public object _feeder_lock
    cdef public object _flush_lock
    cdef object _spill      # (ring, _Parts) -> bytes naming a blob
    cdef object _unspill    # bytes -> obj
    cdef object _alive      # (pid, start) -> bool
    cdef object _unframe    # bytearray -> obj
    cdef object _decode     # message rings: bytes -> obj
    cdef object _held_error # an item get_many took but could not decode: raised next

    def _setup_queue(self, long long maxsize, _Serial ser, spill, unspill, alive, unframe,
                     decode):
        self._qmax = maxsize if maxsize > 0 else 0
        # no streaming stores into queue slots: each item is read once, and
        # usually soon, so the consumer finding it in the cache matters more
        # than the producer's cheaper copy (1080p ArraySpec ring, quick
        # rings benchmark: 27x mp.Queue with streaming stores, 40-42x without)
        self._nt = False
        self._plain_cap = min(<Py_ssize_t>self.r.slot_size, <Py_ssize_t>_PLAIN_BUF)
        self._ser = ser
        self._spill = spill
        self._unspill = unspill
        self._alive = alive
        self._unframe = unframe
        self._decode = decode

    def _set_pools(self, dict pools, dict maps):
        """The producer's arenas by chunk size and the consumer's mappings
        by name (blobs.Blobs.pools and .maps, of a pickle-decoded ring):
        large str and bytes items are encoded straight into a free chunk,
        and a plain-pickle item in a blob already mapped is decoded from it
        without a Python call (others go through _unspill)."""
        self._pools = pools
        self._maps = maps

    cdef object _take_blob(self, bytes ref):
        """Decode the out-of-line item ``ref`` names and free its blob."""
        cdef const char *p = PyBytes_AS_STRING(ref)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(ref), k
        cdef const char *z
        cdef Py_ssize_t idx = 0
        if self._maps is None:
            return self._unspill(ref, False)
        z = <const char *>memchr(p, 0, n)
        if z == NULL or z + 1 == p + n or p + n - z > 20:
            return self._unspill(ref, False)  # a blob of its own, or unusual
        for k in range(1, p + n - z):
            if not (48 <= z[k] <= 57):
                return self._unspill(ref, False)
            idx = idx * 10 + (z[k] - 48)
        mm = self._maps.get(PyBytes_FromStringAndSize(p, z - p))
        if mm is None:
            return self._unspill(ref, False)  # not mapped yet
        obj = blob_loads(mm, idx, pickle.loads)
        if obj is NotImplemented:
            return self._unspill(ref, False)  # a frame: read in place
        return obj

    cdef int _put_plain_chunk(self, obj, bint block, object timeout) except -2:
        """A str or bytes item too large for a slot, encoded as plain data
        straight into a free chunk of an arena this process has (no pickler,
        no intermediate copy); its reference put like any out-of-line item.
        -1 (nothing done) if no chunk could take it: the general path."""
        cdef Py_ssize_t est
        cdef uint64_t cap, pos
        cdef bytes ref
        if type(obj) is bytes:
            est = PyBytes_GET_SIZE(obj) + 16
        elif type(obj) is str and PyUnicode_IS_ASCII(obj):
            est = PyUnicode_GET_LENGTH(obj) + 16
        else:
            return -1
        if est > _ARENA_MAX:
            return -1
        cap = _CHUNK_MIN
        while cap < <uint64_t>est:
            cap <<= 1
        pool = self._pools.get(cap)
        if pool is None:
            return -1
        ref = (<ChunkPool>pool)._put_plain(obj)
        if ref is None:
            return -1
        if self._claim_now(True, block, timeout, &pos):
            self._unspill(ref, True)  # give the chunk back
            return 0
        memcpy(gb_payload(gb_slot_at(&self.r, pos)), PyBytes_AS_STRING(ref), len(ref))
        gb_slot_set_aux(&self.r, pos, AUX_BLOB)
        gb_queue_put_commit(&self.r, _pid, pos, len(ref))
        return 1

    cdef int _try(self, bint put, uint64_t *pos, uint64_t *blocker) except -1:
        if put:
            if self._qmax and gb_queue_size(&self.r) >= self._qmax:
                # the oldest item's slot: a dead producer's claim there
                # counts as an item until someone recovers it (see _claim)
                pos[0] = gb_load_u64(&self.r.hdr.head)
                blocker[0] = gb_slot_word(&self.r, pos[0])
                return GB_FULL_RING
            return gb_queue_put_begin(&self.r, _pid, _self_start(), pos, blocker)
        return gb_queue_get_begin(&self.r, _pid, _self_start(), pos, blocker)

    cdef int _recover(self, uint64_t at, uint64_t blocker) except -1:
        """If the claim in ``blocker`` belongs to a dead process, free it."""
        cdef uint32_t pid = gb_word_pid(blocker)
        cdef uint32_t st = gb_word_state(blocker)
        if pid == 0 or (st != GB_WRITING and st != GB_READING):
            return 0
        # 0 (pid-only check) until the claimant has recorded its start time
        start = gb_slot_claim_start(&self.r, at, blocker)
        if self._alive(pid, start):
            return 0
        return gb_queue_recover(&self.r, at, blocker)

    cdef int _claim_now(self, bint put, bint block, object timeout, uint64_t *pos) except -1:
        """_claim, with the deadline (a clock read) computed only if the
        first try fails: most puts and gets on a busy ring need no clock."""
        cdef uint64_t blocker = 0
        if self._try(put, pos, &blocker) == GB_OK:
            return 0
        return self._claim(put, _deadline(timeout) if block else gb_now_ns(), pos)

    cdef int _claim(self, bint put, int64_t deadline, uint64_t *pos) except -1:
        """Claim a slot to write (put) or read; 0 when claimed, 1 on timeout."""
        cdef gb_waitq *q = &self.r.hdr.space if put else &self.r.hdr.data
        cdef uint64_t blocker = 0
        cdef int64_t now, until, limit, poll = self._poll_min_ns, next_check = 0
        cdef uint32_t ev
        cdef int rc, got
        rc = self._try(put, pos, &blocker)
        if rc == GB_OK:
            return 0
        if deadline >= 0 and gb_now_ns() >= deadline:
            if rc == GB_BUSY and self._recover(pos[0], blocker):
                return 1 - (self._try(put, pos, &blocker) == GB_OK)
            return 1
        if _spin_ns > 0 and rc != GB_BUSY:
            # spin without the GIL until the ring looks ready, then claim
            limit = self.r.capacity
            if put and self._qmax and self._qmax < limit:
                limit = self._qmax
            with nogil:
                got = gb_spin_queue(&self.r, put, limit, _spin_ns)
            if got:
                rc = self._try(put, pos, &blocker)
                if rc == GB_OK:
                    return 0
        while True:
            ev = gb_wait_prepare(q)
            rc = self._try(put, pos, &blocker)
            if rc == GB_OK:
                gb_wait_done(q)
                return 0
            until = deadline
            if rc == GB_BUSY:
                # a peer holds the claim we need: wake up now and then to
                # check that it is still alive
                now = gb_now_ns()
                if now >= next_check:
                    next_check = now + _LIVENESS_NS
                    if self._recover(pos[0], blocker):
                        gb_wait_done(q)
                        continue
                if deadline < 0 or deadline > now + _BUSY_SLICE_NS:
                    until = now + _BUSY_SLICE_NS
            elif rc == GB_FULL_RING:
                # no commit may ever wake us: the item in our way can be
                # taken by a consumer that dies holding it (BUSY when we look
                # again), and with maxsize the oldest "item" can be a dead
                # producer's claim that consumers asleep on an empty slot
                # never reach.  Look again every liveness period.
                now = gb_now_ns()
                if now >= next_check:
                    next_check = now + _LIVENESS_NS
                    if self._recover(pos[0], blocker):
                        gb_wait_done(q)
                        continue
                if deadline < 0 or deadline > now + _LIVENESS_NS:
                    until = now + _LIVENESS_NS
            if self._park(q, ev, until, &poll) and until == deadline:
                return 1 - (self._try(put, pos, &blocker) == GB_OK)
            if not self._bound:
                raise BufferClosed("ring closed while waiting")

    cdef int64_t _put_deadline(self, bint block, object timeout) except -2:
        if not block:
            return gb_now_ns()
        return _deadline(timeout)

    def _put_obj(self, obj, bint block=True, timeout=None):
        """Serialise and put one item.  False if it did not fit in time
        (the caller decides between raising Full and deferring)."""
        return self._put_obj_c(obj, block, timeout) != 0

    cdef int _put_obj_c(self, obj, bint block, object timeout) except -1:
        # cdef: put() calls it per item (a def call through the Ring
        # subclass's attribute lookup costs ~100 ns)
        cdef _Parts parts
        cdef _Serial ser
        cdef uint64_t pos
        cdef cnp.ndarray a
        cdef uint8_t plain[_PLAIN_BUF]
        cdef Py_ssize_t n
        self._live()
        if self._ndim >= 0:
            self._check_array(obj)
            a = <cnp.ndarray>obj
            if not cnp.PyArray_IS_C_CONTIGUOUS(a):
                a = cnp.PyArray_GETCONTIGUOUS(a)
            if self._claim_now(True, block, timeout, &pos):
                return False
            _copy_in(self._nt, gb_payload(gb_slot_at(&self.r, pos)), cnp.PyArray_DATA(a),
                     self._nbytes)
            gb_slot_set_aux(&self.r, pos, AUX_INLINE)
            gb_queue_put_commit(&self.r, _pid, pos, self._nbytes)
            return True
        ser = self._ser
        if ser.pickle_like:
            n = _plain_dump(obj, plain, self._plain_cap)
            if n >= 0:
                return self._put_inline(plain, n, AUX_PLAIN, block, timeout)
            if self._pools:
                n = self._put_plain_chunk(obj, block, timeout)
                if n >= 0:
                    return n
            if not ser.busy and not ser.large:
                return self._put_pickled(ser, obj, block, timeout)
        parts = _serialize(ser, obj, self.r.kind, True)
        return self._put_parts_c(parts, block, timeout) != 0

    cdef int _put_pickled(self, _Serial ser, obj, bint block, object timeout) except -1:
        """The common case of _put_obj_c: a plain pickle that fits a slot
        goes straight from the bytes object into the slot (no _Parts, no
        buffer export; ~80 ns of a ~450 ns small-item put)."""
        cdef bytes data
        cdef Py_ssize_t n
        cdef _Parts parts = None
        # busy until ser.oob is consumed and emptied, as in _serialize
        ser.busy = True
        try:
            data = ser.dumps(obj, 5, buffer_callback=ser.keep)
            n = PyBytes_GET_SIZE(data)
            _note_size(ser, n)
            if ser.oob or <uint64_t>n > self.r.slot_size:
                # out-of-band buffers, or out of line: the general path
                parts = _parts_of(data, ser.oob, n)
        finally:
            if ser.oob:
                del ser.oob[:]
            ser.busy = False
        if parts is not None:
            return self._put_parts_c(parts, block, timeout) != 0
        return self._put_inline(PyBytes_AS_STRING(data), n, AUX_INLINE, block, timeout)

    cdef inline int _put_inline(self, const void *src, Py_ssize_t n, uint64_t aux, bint block,
                                object timeout) except -1:
        """Claim a slot, copy the ``n`` bytes at ``src`` (which fit) into it
        and publish them with ``aux``; False if no slot came in time."""
        cdef uint64_t pos
        if self._claim_now(True, block, timeout, &pos):
            return False
        memcpy(gb_payload(gb_slot_at(&self.r, pos)), src, n)
        gb_slot_set_aux(&self.r, pos, aux)
        gb_queue_put_commit(&self.r, _pid, pos, <uint64_t>n)
        return True

    def put(self, obj, bint block=True, timeout=None):
        """Put ``obj`` into the ring, as ``multiprocessing.Queue.put``.

        ``maxsize > 0``: waits while ``maxsize`` items are waiting (up to
        ``timeout`` seconds; ``block=False`` does not wait) and raises
        ``gb.Full`` (a ``queue.Full``) if no room came; once it returns, the
        item is in shared memory.  ``maxsize <= 0``: never blocks; if the
        shared slots are full the item waits in this process, in order, and
        a feeder thread moves it in.  The object is serialised in the
        calling thread, so an unpicklable one raises here.  ``ValueError``
        after ``close()``.
        """
        # compiled: this is the path every put of a queue ring takes, and a
        # Python-level wrapper cost ~200 ns of a ~750 ns small-item put
        if self._closed_put:
            raise ValueError(f"Queue {self!r} is closed")
        if self._qmax:
            if not self._put_obj_c(obj, block, timeout):
                raise Full()
        elif self._pending:
            # earlier items wait in this process: move what fits, in order,
            # and go straight in behind them if they all went
            if self._flush_c() == 1 and self._put_obj_c(obj, False, None):
                return
            self._defer_c(self._serialize_c(obj))
            self._flush_c()
        elif not self._put_obj_c(obj, True, _FULL_GRACE):
            # a full ring usually frees a slot within microseconds: we waited
            # that long (the feeder's GIL hand-offs would cap throughput)
            self._defer_c(self._serialize_c(obj))

    def _put_plain(self, obj):
        """Put ``obj`` without waiting if it is plain data (_plain.pxi)
        whose encoding fits a slot: 1 if put, 0 if it is not such data
        (nothing put: the caller puts it its own way), -1 if a bounded
        ring has no room now.  A caller that must know whether an item
        can fail to unpickle at its receiver learns here, for the price of
        the put, that it cannot (gb.Pool's small tasks).  Bounded rings
        only (0 otherwise); ``ValueError`` after ``close()``."""
        cdef uint8_t plain[_PLAIN_BUF]
        cdef Py_ssize_t n
        if self._closed_put:
            raise ValueError(f"Queue {self!r} is closed")
        self._live()
        if not self._qmax or self._ndim >= 0 or not self._ser.pickle_like:
            return 0
        n = _plain_dump(obj, plain, self._plain_cap)
        if n < 0:
            return 0
        return 1 if self._put_inline(plain, n, AUX_PLAIN, False, None) else -1

    cdef int _defer_c(self, item) except -1:
        """Queue ``item`` (from _serialize_c) behind the items already
        waiting in this process and make sure a feeder thread runs."""
        lock = self._feeder_lock
        lock.acquire()
        try:
            self._pending.append(item)
            if self._feeder is None:
                self._start_feeder()  # ring.py; it clears _feeder, under this lock, on exit
        finally:
            lock.release()
        return 0

    def _defer(self, item):
        self._defer_c(item)

    cdef int _flush_c(self) except -2:
        """Move waiting items into free slots, in order, without waiting:
        1 once none is left, 0 if the ring is full (or closed), -1 if
        another thread is flushing.  An item leaves _pending only once
        committed, so a put() that finds _pending empty cannot overtake it."""
        cdef bint ok
        lock = self._flush_lock
        if not lock.acquire(False):
            return -1
        try:
            pending = self._pending
            while pending:
                if not self._bound:
                    return 0
                item = pending[0]
                try:
                    if type(item) is _Parts:
                        ok = self._put_parts_c(<_Parts>item, False, None) != 0
                    else:
                        ok = self._put_obj_c(item, False, None) != 0
                except Exception:
                    # drop the item that cannot be put, as the stdlib feeder does
                    traceback.print_exc()
                    ok = True
                if not ok:
                    return 0
                pending.popleft()
            return 1
        finally:
            lock.release()

    def _flush(self):
        """_flush_c for the feeder thread and put_many: True once nothing
        waits, False if the ring is full, None if another thread flushes."""
        cdef int r = self._flush_c()
        return None if r < 0 else r == 1

    def _put_parts(self, _Parts parts, bint block=True, timeout=None):
        return self._put_parts_c(parts, block, timeout) != 0

    cdef int _put_parts_c(self, _Parts parts, bint block, object timeout) except -1:
        # cdef: _put_obj calls it per item (a def call costs ~80 ns)
        try:
            return self._put_parts_in(parts, block, timeout)
        finally:
            _scratch_back(self._ser, parts)

    cdef int _put_parts_in(self, _Parts parts, bint block, object timeout) except -1:
        cdef uint64_t pos
        cdef uint64_t aux = AUX_INLINE
        cdef bytes ref = None
        self._live()
        if parts.total > self.r.slot_size:
            if self._spill is None:
                raise ValueError(
                    f"item serialises to {parts.total} bytes, larger than the ring's "
                    f"max_bytes={self.r.slot_size}")
            ref = self._spill(parts)
            aux = AUX_BLOB
        if self._claim_now(True, block, timeout, &pos):
            if ref is not None:
                self._unspill(ref, True)  # give the blob back
            return False
        dst = gb_payload(gb_slot_at(&self.r, pos))
        if ref is None:
            try:
                _write_parts(parts, dst, self._nt)
            except BaseException:
                # the slot is ours: publish a void item rather than wedge the ring
                gb_slot_set_aux(&self.r, pos, AUX_VOID)
                gb_queue_put_commit(&self.r, _pid, pos, 0)
                raise
            gb_slot_set_aux(&self.r, pos, parts.aux)
            gb_queue_put_commit(&self.r, _pid, pos, parts.total)
        else:
            memcpy(dst, PyBytes_AS_STRING(ref), len(ref))
            gb_slot_set_aux(&self.r, pos, AUX_BLOB)
            gb_queue_put_commit(&self.r, _pid, pos, len(ref))
        return True

    def _put_each(self, items, grace, uint64_t[::1] count=None, uint64_t base=0):
        """Put ``items`` (a sequence) in order, each waiting at most
        ``grace`` s for a slot; returns how many were put (the caller defers
        the rest, in order).  put_many's loop, without a Python call per item.
        With ``count`` (a u64 buffer, e.g. a host-local file's mapping),
        ``base + n`` is stored into ``count[0]`` right after the n-th item is
        committed (the bridge's exact count of what it put, SPEC §9)."""
        cdef Py_ssize_t k = 0
        cdef uint64_t *cp = NULL
        if count is not None:
            if count.shape[0] < 1:
                raise ValueError("count must hold one u64")
            cp = &count[0]
        self._live()
        for obj in items:
            if not self._put_obj_c(obj, True, grace):
                return k
            k += 1
            if cp != NULL:
                gb_count_store(cp, base + <uint64_t>k)
        return k

    cdef object _serialize_c(self, obj):
        """Serialise ``obj`` now (for items deferred to the feeder): an
        array copy, or _Parts."""
        cdef uint8_t plain[_PLAIN_BUF]
        cdef Py_ssize_t n
        cdef _Parts parts
        if self._ndim >= 0:
            self._check_array(obj)
            return cnp.PyArray_NewCopy(<cnp.ndarray>obj, cnp.NPY_CORDER)
        if self._ser.pickle_like:
            n = _plain_dump(obj, plain, self._plain_cap)
            if n >= 0:
                parts = _parts_of(PyBytes_FromStringAndSize(<const char *>plain, n), [], n)
                parts.aux = AUX_PLAIN
                return parts
        return _serialize(self._ser, obj, self.r.kind, False)

    def _serialize(self, obj):
        return self._serialize_c(obj)

    def get(self, bint block=True, timeout=None):
        """Remove and return an item, as ``multiprocessing.Queue.get``.

        Waits up to ``timeout`` seconds (forever if None; not at all with
        ``block=False``) and raises ``gb.Empty`` (a ``queue.Empty``) if
        nothing came.  The wait sleeps in the kernel and costs no CPU.
        ``ValueError`` after ``close()``.
        """
        if self._closed_put:
            raise ValueError(f"Queue {self!r} is closed")
        return self._get_c(block, timeout)

    def _get(self, bint block=True, timeout=None):
        """Take one item; raises Empty if none arrived in time."""
        return self._get_c(block, timeout)

    cdef object _get_c(self, bint block, object timeout, uint64_t *cp=NULL, uint64_t cv=0):
        cdef uint64_t pos, aux
        cdef int64_t deadline
        self._live()
        if self._held_error is not None:
            err, self._held_error = self._held_error, None
            raise err
        if self._claim_now(False, block, timeout, &pos):
            raise Empty()
        aux = gb_slot_aux(&self.r, pos)
        if aux == AUX_VOID:
            # void items (producers' aborted puts): skip them, go on waiting
            deadline = _deadline(timeout) if block else gb_now_ns()
            while aux == AUX_VOID:
                gb_queue_get_commit(&self.r, pos)
                if self._claim(False, deadline, &pos):
                    raise Empty()
                aux = gb_slot_aux(&self.r, pos)
        return self._read_claimed(pos, aux, cp, cv)

    cdef int _claim_item(self, bint block, object timeout, uint64_t *pos) except -1:
        """Claim the next item to read (skipping void ones); 1 on timeout."""
        cdef int64_t deadline
        if self._claim_now(False, block, timeout, pos):
            return 1
        if gb_slot_aux(&self.r, pos[0]) == AUX_VOID:
            deadline = _deadline(timeout) if block else gb_now_ns()
            while gb_slot_aux(&self.r, pos[0]) == AUX_VOID:
                gb_queue_get_commit(&self.r, pos[0])
                if self._claim(False, deadline, pos):
                    return 1
        return 0

    def get_into(self, out, bint block=True, timeout=None):
        """ArraySpec rings: remove the next item by copying it into ``out``
        (no allocation) and return ``out``.  ``out`` must have the ring's
        dtype and shape and be writable and C-contiguous: a wrong one raises
        ``ValueError`` and consumes nothing.  Waits as ``get()`` (``gb.Empty``
        on timeout)."""
        cdef uint64_t pos, n
        if self._closed_put:
            raise ValueError(f"Queue {self!r} is closed")
        self._live()
        if self._ndim < 0:
            raise TypeError("get_into() needs a ring with schema=gb.ArraySpec(...)")
        self._check_out(out, False)
        if self._claim_item(block, timeout, &pos):
            raise Empty()
        n = gb_slot_len(&self.r, pos)
        if n > self._nbytes:
            n = self._nbytes
        memcpy(cnp.PyArray_DATA(<cnp.ndarray>out), gb_payload(gb_slot_at(&self.r, pos)), n)
        gb_queue_get_commit(&self.r, pos)
        return out

    def _view_take(self, bint block=True, timeout=None):
        """Claim the next item of an ArraySpec ring for a zero-copy read;
        its position (the claim stays until ``_view_done``)."""
        cdef uint64_t pos
        if self._closed_put:
            raise ValueError(f"Queue {self!r} is closed")
        self._live()
        if self._ndim < 0:
            raise TypeError("view() needs a ring with schema=gb.ArraySpec(...)")
        if self._claim_item(block, timeout, &pos):
            raise Empty()
        return pos

    def _view_done(self, uint64_t pos):
        """Free the slot a view held: the item is consumed."""
        if self._bound:
            gb_queue_get_commit(&self.r, pos)

    def _get_many(self, Py_ssize_t max_items, bint block=True, timeout=None,
                  uint64_t[::1] count=None, uint64_t base=0):
        """Up to ``max_items`` items: the first as ``_get``, then only those
        already committed (no wait, no Empty raised, no liveness probe: a
        busy or empty head just ends the batch).  With ``count`` (a u64
        buffer), ``base + n`` is stored into ``count[0]`` right after the
        n-th item is taken (the bridge's exact count, SPEC §9)."""
        cdef uint64_t pos, aux, blocker = 0
        cdef uint64_t *cp = NULL
        cdef list out
        if count is not None:
            if count.shape[0] < 1:
                raise ValueError("count must hold one u64")
            cp = &count[0]
        out = [self._get_c(block, timeout, cp, base + 1)]
        while len(out) < max_items:
            if self._try(False, &pos, &blocker) != GB_OK:
                break
            aux = gb_slot_aux(&self.r, pos)
            if aux == AUX_VOID:
                gb_queue_get_commit(&self.r, pos)
                continue
            try:
                out.append(self._read_claimed(pos, aux, cp, base + <uint64_t>len(out) + 1))
            except Exception as e:
                # the items already taken are the caller's: return them, and
                # raise this item's error from the next get (its place in
                # the order), as get() one at a time would have
                self._held_error = e
                break
        return out

    cdef object _read_claimed(self, uint64_t pos, uint64_t aux, uint64_t *cp=NULL,
                              uint64_t cv=0):
        """Copy out the item in the slot we claimed at ``pos``, free the
        slot, then decode (plain data: decode, then free the slot).  With
        ``cp``, ``cv`` is stored there right after the slot is freed: the
        item is counted as taken before it is decoded (a caller killed
        while decoding, or an item that does not decode, is counted)."""
        cdef uint64_t n
        cdef bint decoded = False
        cdef const uint8_t *p
        cdef cnp.ndarray out
        p = gb_payload(gb_slot_at(&self.r, pos))
        n = gb_slot_len(&self.r, pos)
        if n > self.r.slot_size:
            n = 0  # corrupt length: never read past the slot
        try:
            if self._ndim >= 0:
                Py_INCREF(self._descr)
                out = PyArray_Empty(self._ndim, self._dims, self._descr, 0)
                memcpy(cnp.PyArray_DATA(out), p, self._nbytes if n >= self._nbytes else n)
                raw = out
            elif aux == AUX_PLAIN:
                # decoded straight from the slot; a payload the decoder does
                # not take (corrupt) goes to pickle.loads, which says why
                raw = _plain_load(p, n)
                if raw is _NOT_PLAIN:
                    raw = PyBytes_FromStringAndSize(<const char *>p, n)
                else:
                    decoded = True
            elif aux == AUX_INLINE and self._ser.pickle_like and n > 0 and p[0] == FRAME_TAG:
                raw = PyByteArray_FromStringAndSize(<const char *>p, n)
                aux = AUX_VOID  # marks "framed" below
            else:
                raw = PyBytes_FromStringAndSize(<const char *>p, n)
        finally:
            gb_queue_get_commit(&self.r, pos)
            if cp != NULL:
                gb_count_store(cp, cv)
        # decode outside the claim: the slot is already free for producers
        if self._ndim >= 0 or decoded:
            return raw
        if aux == AUX_PLAIN:
            return pickle.loads(raw)
        if aux == AUX_VOID:
            return self._unframe(raw)
        if aux == AUX_BLOB:
            return self._take_blob(raw)
        if self._decode is not None:
            return self._decode(raw)
        return self._ser.loads(raw)

    def _reserve_begin(self, bint block=True, timeout=None):
        """Claim a slot of an ArraySpec ring for a zero-copy put; its
        position, or None if none was free in time."""
        cdef uint64_t pos
        self._live()
        if self._ndim < 0:
            raise TypeError("reserve() needs a ring with schema=gb.ArraySpec(...)")
        if self._claim(True, self._put_deadline(block, timeout), &pos):
            return None
        return pos

    def _reserve_end(self, uint64_t pos, bint commit):
        """Publish the reserved slot, or (commit=False) publish a void item
        that every get() skips: the position is spent either way."""
        if not self._bound:
            return
        gb_slot_set_aux(&self.r, pos, AUX_INLINE if commit else AUX_VOID)
        gb_queue_put_commit(&self.r, _pid, pos, self._nbytes if commit else 0)

    def _debug_claim(self, bint put, timeout=None):
        """Testing only: claim a slot to write (``put``) or read and return
        its position without ever committing it, as a process killed
        between claim and commit leaves it.  Full/Empty on timeout."""
        cdef uint64_t pos
        self._live()
        if self._claim(put, _deadline(timeout), &pos):
            raise Full() if put else Empty()
        return pos

    def _wait_ready(self, bint put, timeout):
        """Wait (without claiming) until a put or get would likely succeed,
        or ``timeout`` passes.  Used by the asyncio methods from a thread."""
        cdef gb_waitq *q = &self.r.hdr.space if put else &self.r.hdr.data
        cdef int64_t deadline = _deadline(timeout)
        cdef int64_t poll = self._poll_min_ns
        cdef uint32_t ev
        self._live()
        while True:
            ev = gb_wait_prepare(q)
            if self._ready(put):
                gb_wait_done(q)
                return True
            if self._park(q, ev, deadline, &poll):
                return self._ready(put)

    cdef bint _ready(self, bint put):
        cdef int64_t n = gb_queue_size(&self.r)
        if put:
            return n < self.r.capacity and (self._qmax == 0 or n < self._qmax)
        return n > 0

    def _wake_data(self):
        self._live()
        gb_wake(&self.r, &self.r.hdr.data)

    def _qsize(self):
        self._live()
        return gb_queue_size(&self.r)

    def _latest(self, peek=None, decode_blob=None):
        """Newest item still held, without consuming it (None if none).
        ``peek(ref)`` copies an out-of-line item without taking it (its
        blob cannot be reused before the item is taken, which the slot
        check after the copy detects); ``decode_blob`` decodes that copy."""
        cdef uint64_t t, pos, w, n, k, aux
        cdef const uint8_t *p
        cdef bint framed
        self._live()
        for k in range(4):  # a few tries: the ring may be moving under us
            t = gb_load_u64(&self.r.hdr.tail)
            pos = t
            while pos > 0 and t - pos < self.r.nslots:
                pos -= 1
                if gb_read_begin(&self.r, pos, &w, &p, &n) != GB_OK:
                    continue
                aux = gb_slot_aux(&self.r, pos)
                if aux != AUX_INLINE and aux != AUX_PLAIN and (aux != AUX_BLOB or peek is None):
                    continue  # a void item, or a blob we cannot peek at
                if self._ndim >= 0:
                    Py_INCREF(self._descr)
                    raw = PyArray_Empty(self._ndim, self._dims, self._descr, 0)
                    memcpy(cnp.PyArray_DATA(raw), p, self._nbytes if n >= self._nbytes else n)
                else:
                    raw = PyByteArray_FromStringAndSize(<const char *>p, n)
                blob = None
                if aux == AUX_BLOB:
                    try:
                        blob = peek(bytes(raw))
                    except (GlobalBufferError, OSError, ValueError):
                        pass  # taken (and its blob removed) meanwhile
                if not gb_read_check(&self.r, pos, w):
                    break  # changed during the copy: start again from the tail
                if aux == AUX_BLOB:
                    if blob is None:
                        continue
                    return decode_blob(blob)
                if self._ndim >= 0:
                    return raw
                if aux == AUX_PLAIN:
                    return pickle.loads(raw)
                if self._decode is not None:
                    return self._decode(bytes(raw))
                # the tag from our copy: the slot may be reused by now
                if self._ser.pickle_like and n > 0 and raw[0] == FRAME_TAG:
                    return self._unframe(raw)
                return self._ser.loads(raw)
            else:
                return None
        return None

    # -- JoinableRing ------------------------------------------------------

    def _task_add(self, long long n):
        self._live()
        return gb_add_i64(&self.r.hdr.unfinished, n)

    def _task_done(self):
        self._live()
        cdef int64_t left = gb_add_i64(&self.r.hdr.unfinished, -1)
        if left < 0:
            gb_add_i64(&self.r.hdr.unfinished, 1)
            raise ValueError("task_done() called too many times")
        if left == 0:
            gb_wake(&self.r, &self.r.hdr.join)
        return left

    def _join(self, timeout=None):
        """Wait until every task put was marked done; False on timeout."""
        cdef gb_waitq *q = &self.r.hdr.join
        cdef int64_t deadline = _deadline(timeout)
        cdef int64_t poll = self._poll_min_ns
        cdef uint32_t ev
        self._live()
        while True:
            ev = gb_wait_prepare(q)
            if gb_add_i64(&self.r.hdr.unfinished, 0) <= 0:
                gb_wait_done(q)
                return True
            if self._park(q, ev, deadline, &poll):
                return gb_add_i64(&self.r.hdr.unfinished, 0) <= 0


cdef class BroadcastHandle(StreamReader):
    """Compiled half of a broadcast ring: a stream every handle may put to
    (a lock word with the holder's pid serialises producers) and read from
    its own cursor."""

    cdef _Serial _ser
    cdef object _alive
    cdef public bint _closed_put
    cdef object _bspill     # (_Parts) -> name of a fresh blob holding the item
    cdef object _bfree      # (name) -> None: remove a blob whose item was overwritten

    def _setup_broadcast(self, _Serial ser, alive, bspill=None, bfree=None):
        self._ser = ser
        self._alive = alive
        self._bspill = bspill
        self._bfree = bfree

    cdef int _free_overwritten(self, uint64_t pos) except -1:
        """Before the slot for ``pos`` is rewritten (producers' lock held):
        if it holds an out-of-line item (pos - nslots, outside every
        reader's window by now), remove that item's blob.  A reader that
        mapped it already keeps its copy; one that had not gets BufferNotFound
        and counts the item as overrun (_BlobGone)."""
        cdef gb_slot *sl = gb_slot_at(&self.r, pos)
        cdef uint64_t n
        if self._bfree is None or gb_slot_aux(&self.r, pos) != AUX_BLOB:
            return 0
        n = gb_slot_len(&self.r, pos)
        gb_slot_set_aux(&self.r, pos, AUX_INLINE)
        if 1 < n <= self.r.slot_size:
            self._bfree(PyBytes_FromStringAndSize(<const char *>gb_payload(sl) + 1, n - 1))
        return 0

    cdef int _lock(self) except -1:
        cdef gb_au64 *lock = &self.r.hdr.wlock
        cdef uint64_t holder
        cdef int64_t next_check = gb_now_ns() + _LIVENESS_NS
        cdef int spins = 0
        while not gb_lock_try(lock, _pid):
            spins += 1
            if spins < 1000:
                gb_cpu_relax()
                continue
            with nogil:
                gb_sleep_ns(50000)
            if gb_now_ns() >= next_check:
                next_check = gb_now_ns() + _LIVENESS_NS
                holder = gb_lock_holder(lock)
                if holder and not self._alive(holder, 0):
                    if gb_lock_steal(lock, holder, _pid):
                        return 0
            PyErr_CheckSignals()
        return 0

    def _reserve_begin(self, bint block=True, timeout=None):
        """Take the producers' lock and begin the next sample in place."""
        cdef uint64_t pos
        self._live()
        if self._ndim < 0:
            raise TypeError("reserve() needs a ring with schema=gb.ArraySpec(...)")
        self._lock()
        gb_stream_begin(&self.r, _pid, &pos)
        return pos

    def _reserve_end(self, uint64_t pos, bint commit):
        if not self._bound:
            return
        if commit:
            gb_stream_commit(&self.r, _pid, pos, self._nbytes)
        else:
            gb_stream_abort(&self.r, pos)
        gb_lock_release(&self.r.hdr.wlock)

    def _debug_lock(self):
        """Testing only: take the producers' lock and begin a sample without
        finishing it, as a producer killed mid-put leaves them."""
        cdef uint64_t pos
        self._live()
        self._lock()
        gb_stream_begin(&self.r, _pid, &pos)
        return pos

    def put(self, obj, block=True, timeout=None):
        """Put ``obj`` into the broadcast ring: never blocks on readers; the
        oldest item is overwritten.  ``ValueError`` after ``close()``."""
        if self._closed_put:
            raise ValueError(f"Queue {self!r} is closed")
        self._put_obj(obj, True, None)

    def get(self, block=True, timeout=None):
        """The next item from this handle's cursor (other handles still get
        it); ``gb.Empty`` if none came within ``timeout`` (at once with
        ``block=False``).  ``ValueError`` after ``close()``."""
        if self._closed_put:
            raise ValueError(f"Queue {self!r} is closed")
        return self.next(timeout if block else 0)

    def _put_obj(self, obj, bint block=True, timeout=None):
        cdef _Parts parts = None
        cdef uint64_t pos, total
        cdef uint8_t *dst
        cdef cnp.ndarray a
        cdef uint8_t plain[_PLAIN_BUF]
        cdef Py_ssize_t n = -1
        self._live()
        if self._ser.pickle_like:
            n = _plain_dump(obj, plain, min(<Py_ssize_t>self.r.slot_size, <Py_ssize_t>_PLAIN_BUF))
        if n >= 0:
            total = <uint64_t>n
        elif self._ndim >= 0:
            self._check_array(obj)
            a = <cnp.ndarray>obj
            if not cnp.PyArray_IS_C_CONTIGUOUS(a):
                a = cnp.PyArray_GETCONTIGUOUS(a)
            total = self._nbytes
        else:
            parts = _serialize(self._ser, obj, self.r.kind, True)
            total = parts.total
            if total > self.r.slot_size:
                if self._bspill is None or not self._ser.pickle_like:
                    _scratch_back(self._ser, parts)
                    raise ValueError(
                        f"item serialises to {total} bytes, larger than the ring's "
                        f"max_bytes={self.r.slot_size}")
                # out of line (SPEC §3.1): a fresh blob per item, never
                # reused, so a reader can never see it change; the slot
                # names it
                try:
                    ref = b"\x01" + self._bspill(parts)
                finally:
                    _scratch_back(self._ser, parts)
                if <uint64_t>len(ref) > self.r.slot_size:
                    self._bfree(ref[1:])
                    raise ValueError(
                        f"item serialises to {total} bytes, larger than the ring's "
                        f"max_bytes={self.r.slot_size}, whose slots are too small even "
                        f"for a reference to an out-of-line item ({len(ref)} bytes)")
                return self._put_ref(ref)
        self._lock()
        try:
            pos = gb_stream_tail(&self.r)
            self._free_overwritten(pos)
            dst = gb_stream_begin(&self.r, _pid, &pos)
            try:
                if n >= 0:
                    memcpy(dst, plain, n)
                elif parts is None:
                    _copy_in(self._nt, dst, cnp.PyArray_DATA(a), total)
                else:
                    _write_parts(parts, dst, self._nt)
            except BaseException:
                gb_stream_abort(&self.r, pos)
                raise
            gb_stream_commit(&self.r, _pid, pos, total)
        finally:
            gb_lock_release(&self.r.hdr.wlock)
            _scratch_back(self._ser, parts)
        return True

    cdef bint _put_ref(self, bytes ref) except -1:
        cdef uint64_t pos
        cdef uint8_t *dst
        cdef Py_ssize_t n = len(ref)
        self._lock()
        try:
            pos = gb_stream_tail(&self.r)
            self._free_overwritten(pos)
            dst = gb_stream_begin(&self.r, _pid, &pos)
            memcpy(dst, PyBytes_AS_STRING(ref), n)
            # relaxed: published by the commit's release store
            gb_slot_set_aux(&self.r, pos, AUX_BLOB)
            gb_stream_commit(&self.r, _pid, pos, <uint64_t>n)
        except BaseException:
            self._bfree(ref[1:])
            raise
        finally:
            gb_lock_release(&self.r.hdr.wlock)
        return True


# ---------------------------------------------------------------------------
# Blobs: out-of-line buffers for items larger than a slot (see ring._Blobs)
# ---------------------------------------------------------------------------

cdef gb_blob *_blob(Py_buffer *b, Py_ssize_t idx=0) except NULL:
    """Blob ``idx`` of a blob segment.  A segment holds one blob (a large
    item's own) or an arena of equal blobs back to back (chunk ``idx`` at
    ``idx * (header + size)``, every chunk with its own header), see ring._Blobs."""
    cdef gb_blob *bl
    cdef uint64_t stride
    if <size_t>b.len < sizeof(gb_blob):
        raise BufferCorrupt("blob segment too small")
    bl = <gb_blob *>b.buf
    if bl.magic != GB_BLOB_MAGIC or bl.size > <uint64_t>b.len - sizeof(gb_blob):
        raise BufferCorrupt("not a global_buffer blob segment")
    if idx == 0:
        return bl
    stride = sizeof(gb_blob) + bl.size
    if idx < 0 or <uint64_t>idx >= <uint64_t>b.len / stride:
        raise BufferCorrupt(f"blob {idx} out of the segment's range")
    bl = <gb_blob *>(<char *>b.buf + <uint64_t>idx * stride)
    if bl.magic != GB_BLOB_MAGIC or bl.size != (<gb_blob *>b.buf).size:
        raise BufferCorrupt(f"blob {idx} of the segment is corrupt")
    return bl


cdef inline char *_blob_data(gb_blob *bl):
    return <char *>bl + sizeof(gb_blob)


def blob_init(mm, unsigned long long size, Py_ssize_t count=1):
    """Make ``mm`` ``count`` blobs of ``size`` bytes each (an arena when
    more than one): the first held by this process (its first item), the
    others free."""
    cdef Py_buffer b
    cdef Py_ssize_t i
    cdef gb_blob *bl
    cdef uint64_t stride = sizeof(gb_blob) + size
    if count < 1:
        raise ValueError("count must be >= 1")
    PyObject_GetBuffer(mm, &b, PyBUF_WRITABLE)
    try:
        if <uint64_t>b.len < stride * <uint64_t>count:
            raise ValueError("blob mapping smaller than its size")
        for i in range(count):
            bl = <gb_blob *>(<char *>b.buf + <uint64_t>i * stride)
            bl.size = size
            bl.magic = GB_BLOB_MAGIC
        gb_lock_try(&(<gb_blob *>b.buf).state, _pid)  # the first: held by its producer
    finally:
        PyBuffer_Release(&b)


def blob_acquire(mm, unsigned long long expect, Py_ssize_t idx=0):
    """Take a free blob for writing (its state becomes our pid)."""
    cdef Py_buffer b
    PyObject_GetBuffer(mm, &b, PyBUF_WRITABLE)
    try:
        return bool(gb_lock_try(&_blob(&b, idx).state, _pid))
    finally:
        PyBuffer_Release(&b)


def blob_holders(mm):
    """The pids holding blobs of segment ``mm`` (this process's too)."""
    cdef Py_buffer b
    cdef gb_blob *first
    cdef uint64_t stride, n, i, h
    out = set()
    PyObject_GetBuffer(mm, &b, PyBUF_WRITABLE)
    try:
        first = _blob(&b)
        stride = sizeof(gb_blob) + first.size
        n = <uint64_t>b.len / stride
        for i in range(n):
            h = gb_lock_holder(&(<gb_blob *>(<char *>b.buf + i * stride)).state)
            if h != 0:
                out.add(h)
        return out
    finally:
        PyBuffer_Release(&b)


def blob_free_of(mm, unsigned long long pid):
    """Free every chunk of ``mm`` that ``pid`` (dead) holds; how many."""
    cdef Py_buffer b
    cdef gb_blob *first
    cdef uint64_t stride, n, i
    cdef Py_ssize_t freed = 0
    PyObject_GetBuffer(mm, &b, PyBUF_WRITABLE)
    try:
        first = _blob(&b)
        stride = sizeof(gb_blob) + first.size
        n = <uint64_t>b.len / stride
        for i in range(n):
            if gb_lock_steal(&(<gb_blob *>(<char *>b.buf + i * stride)).state, pid, 0):
                freed += 1
        return freed
    finally:
        PyBuffer_Release(&b)


def blob_release(mm, Py_ssize_t idx=0):
    cdef Py_buffer b
    PyObject_GetBuffer(mm, &b, PyBUF_WRITABLE)
    try:
        gb_lock_release(&_blob(&b, idx).state)
    finally:
        PyBuffer_Release(&b)


def blob_state(mm, Py_ssize_t idx=0):
    cdef Py_buffer b
    PyObject_GetBuffer(mm, &b, PyBUF_WRITABLE)
    try:
        return gb_lock_holder(&_blob(&b, idx).state)
    finally:
        PyBuffer_Release(&b)


def blob_peek(mm, Py_ssize_t idx=0):
    """Copy the item out of a blob without taking it (latest(): the caller
    checks afterwards that the item's slot did not change meanwhile)."""
    cdef Py_buffer b
    cdef gb_blob *bl
    cdef uint64_t n
    PyObject_GetBuffer(mm, &b, PyBUF_WRITABLE)
    try:
        bl = _blob(&b, idx)
        n = bl.len if bl.len <= bl.size else 0
        return PyByteArray_FromStringAndSize(_blob_data(bl), n)
    finally:
        PyBuffer_Release(&b)


def blob_write(mm, _Parts parts, Py_ssize_t idx=0):
    """Copy a serialised item into a blob this process holds."""
    cdef Py_buffer b
    cdef gb_blob *bl
    PyObject_GetBuffer(mm, &b, PyBUF_WRITABLE)
    try:
        bl = _blob(&b, idx)
        if parts.total > bl.size:
            raise ValueError("item larger than the blob")
        # blobs: memcpy (one blob per item in flight; often still cached)
        _write_parts(parts, <uint8_t *>_blob_data(bl), False)
        bl.len = parts.total
    finally:
        PyBuffer_Release(&b)


def blob_hold(mm, Py_ssize_t idx=0):
    """Mark the blob ours (as blob_read does) and return ``(offset, len)``
    of its item in ``mm``; the caller reads it in place, then calls
    blob_release(mm, idx) to free the blob for its producer."""
    cdef Py_buffer b
    cdef gb_blob *bl
    cdef gb_au64 *state
    cdef uint64_t holder, n
    PyObject_GetBuffer(mm, &b, PyBUF_WRITABLE)
    try:
        bl = _blob(&b, idx)
        state = &bl.state
        while True:  # handed over from its producer in one atomic step
            holder = gb_lock_holder(state)
            if gb_lock_steal(state, holder, _pid):
                break
        n = bl.len if bl.len <= bl.size else 0
        return <Py_ssize_t>(_blob_data(bl) - <char *>b.buf), n
    finally:
        PyBuffer_Release(&b)


cdef extern from "Python.h":
    object PyMemoryView_FromMemory(char *mem, Py_ssize_t size, int flags)
    int PyBUF_READ


def blob_loads(mm, Py_ssize_t idx, loads):
    """Take the item in blob ``idx`` and decode it with ``loads`` straight
    from shared memory (a plain pickle: one copy, no intermediate buffer),
    then free the blob for its producer.  ``NotImplemented`` (nothing taken)
    if the item is a frame: the caller reads that in place (blob_lease)."""
    cdef Py_buffer b
    cdef gb_blob *bl
    cdef gb_au64 *state
    cdef uint64_t holder, n
    PyObject_GetBuffer(mm, &b, PyBUF_WRITABLE)
    try:
        bl = _blob(&b, idx)
        n = bl.len if bl.len <= bl.size else 0
        # written before its producer published the reference (the slot's
        # release/acquire): safe to look at before taking the blob over
        if n == 0 or (<uint8_t *>_blob_data(bl))[0] == FRAME_TAG:
            return NotImplemented
        state = &bl.state
        while True:  # handed over from its producer in one atomic step
            holder = gb_lock_holder(state)
            if gb_lock_steal(state, holder, _pid):
                break
        try:
            obj = _plain_load(<const uint8_t *>_blob_data(bl), <Py_ssize_t>n)
            if obj is not _NOT_PLAIN:
                return obj
            view = PyMemoryView_FromMemory(_blob_data(bl), <Py_ssize_t>n, PyBUF_READ)
            try:
                return loads(view)
            finally:
                view.release()
        finally:
            gb_lock_release(state)
    finally:
        PyBuffer_Release(&b)


cdef class ChunkPool:
    """A producer's arenas of one chunk size (see blobs.Blobs): finds a free
    chunk, copies an item into it and makes its reference in one call.  It
    holds a buffer of each arena's mapping until release()."""
    cdef list segs, prefixes
    cdef Py_buffer *bufs
    cdef Py_ssize_t *nexts
    cdef Py_ssize_t *counts
    cdef Py_ssize_t n, alloc, cur
    cdef readonly unsigned long long size
    cdef readonly Py_ssize_t chunks
    cdef uint32_t pid

    def __cinit__(self, unsigned long long size):
        self.segs, self.prefixes = [], []
        self.size = size
        self.pid = _pid

    def __dealloc__(self):
        self._release()
        PyMem_RawFree(self.bufs)
        PyMem_RawFree(self.nexts)
        PyMem_RawFree(self.counts)

    cdef void _release(self):
        cdef Py_ssize_t i
        for i in range(self.n):
            PyBuffer_Release(&self.bufs[i])
        self.n = 0

    def release(self):
        """Give the arenas' buffers back (before their segments close)."""
        self._release()
        self.segs, self.prefixes = [], []
        self.chunks = 0
        self.cur = 0

    def __len__(self):
        return self.n

    def add(self, seg, bytes prefix):
        """Take in a new arena (blob_init'ed with this size; its chunk 0 is
        ours): the next put() writes that chunk."""
        cdef Py_ssize_t k = self.n
        cdef gb_blob *first
        cdef void *p
        if k == self.alloc:
            self.alloc = 2 * self.alloc + 4
            p = PyMem_RawRealloc(self.bufs, self.alloc * sizeof(Py_buffer))
            if p == NULL:
                raise MemoryError()
            self.bufs = <Py_buffer *>p
            p = PyMem_RawRealloc(self.nexts, self.alloc * sizeof(Py_ssize_t))
            if p == NULL:
                raise MemoryError()
            self.nexts = <Py_ssize_t *>p
            p = PyMem_RawRealloc(self.counts, self.alloc * sizeof(Py_ssize_t))
            if p == NULL:
                raise MemoryError()
            self.counts = <Py_ssize_t *>p
        PyObject_GetBuffer(seg.mm, &self.bufs[k], PyBUF_WRITABLE)
        try:
            first = _blob(&self.bufs[k])
            if first.size != self.size:
                raise ValueError("arena of another chunk size")
        except BaseException:
            PyBuffer_Release(&self.bufs[k])
            raise
        self.counts[k] = <Py_ssize_t>(<uint64_t>self.bufs[k].len / (sizeof(gb_blob) + self.size))
        self.nexts[k] = -1  # chunk 0, held already
        self.segs.append(seg)
        self.prefixes.append(prefix)
        self.chunks += self.counts[k]
        self.cur = k
        self.n = k + 1

    cdef Py_ssize_t _take(self, Py_ssize_t a, Py_ssize_t limit):
        cdef uint64_t stride = sizeof(gb_blob) + self.size
        cdef Py_ssize_t count = self.counts[a], start = self.nexts[a], k, i
        cdef char *base = <char *>self.bufs[a].buf
        if start < 0:
            self.nexts[a] = 1
            return 0
        if limit < 0 or limit > count:
            limit = count
        for k in range(limit):
            i = (start + k) % count
            if gb_lock_try(&(<gb_blob *>(base + <uint64_t>i * stride)).state, _pid):
                self.nexts[a] = i + 1
                return i
        return -1

    cdef gb_blob *_find(self, Py_ssize_t limit, Py_ssize_t *arena, Py_ssize_t *idx):
        """Take a free chunk (see put); NULL if none."""
        cdef Py_ssize_t k, a, i
        if self.pid != _pid:  # forked: the parent's arenas (blobs.Blobs resets)
            return NULL
        for k in range(self.n):
            a = (self.cur + k) % self.n
            i = self._take(a, limit)
            if i >= 0:
                self.cur = a
                arena[0], idx[0] = a, i
                return <gb_blob *>(<char *>self.bufs[a].buf
                                   + <uint64_t>i * (sizeof(gb_blob) + self.size))
        return NULL

    cdef bytes _ref(self, Py_ssize_t a, Py_ssize_t i):
        cdef char digits[24]
        cdef int nd
        cdef bytes prefix = <bytes>self.prefixes[a], ref
        nd = snprintf(digits, sizeof(digits), "%zd", i)
        ref = PyBytes_FromStringAndSize(NULL, PyBytes_GET_SIZE(prefix) + nd)
        memcpy(PyBytes_AS_STRING(ref), PyBytes_AS_STRING(prefix), PyBytes_GET_SIZE(prefix))
        memcpy(PyBytes_AS_STRING(ref) + PyBytes_GET_SIZE(prefix), digits, nd)
        return ref

    def put(self, _Parts parts, Py_ssize_t limit):
        """Copy ``parts`` into a free chunk, looking at ``limit`` chunks per
        arena (all: -1), from the arena used last; the chunk's reference
        (the arena's name, NUL, the chunk's index), or None if none was free."""
        cdef Py_ssize_t a = 0, i = 0
        cdef gb_blob *bl
        if parts.total > self.size:
            raise ValueError("item larger than the chunks")
        bl = self._find(limit, &a, &i)
        if bl == NULL:
            return None
        try:
            _write_parts(parts, <uint8_t *>_blob_data(bl), False)
        except BaseException:
            gb_lock_release(&bl.state)
            raise
        bl.len = parts.total
        return self._ref(a, i)

    cdef object _put_plain(self, obj):
        """Encode ``obj`` as plain data into a free chunk; its reference,
        or None (no chunk free after a few probes, or not plain data that
        fits a chunk)."""
        cdef Py_ssize_t a = 0, i = 0, n
        cdef gb_blob *bl = self._find(_CHUNK_PROBE, &a, &i)
        if bl == NULL:
            return None
        n = _plain_dump(obj, <uint8_t *>_blob_data(bl), <Py_ssize_t>self.size)
        if n < 0:
            gb_lock_release(&bl.state)
            return None
        bl.len = <uint64_t>n
        return self._ref(a, i)


# Items taken in place (blob_lease) that this process still holds: past
# this many, consumers copy items out instead, so that a consumer keeping
# many large items alive pins neither unbounded blobs (and their producer's
# descriptors) nor mappings.
cdef Py_ssize_t _leases = 0
cdef Py_ssize_t _max_leases = 128
MAX_LEASES = _max_leases


def leases():
    """How many items this process holds in place (live BlobViews)."""
    return _leases


cdef class BlobView:
    """An out-of-line item taken in place: the item's bytes in the blob,
    exposed (writable) through the buffer protocol.  The blob stays this
    process's, and its mapping stays mapped, until the view and every
    buffer made from it are gone; then the blob is freed for its producer
    (only by the process that took it: a forked child's copy frees
    nothing).  A consumer killed meanwhile is handled as for blob_read: its
    producer reclaims the blob of a dead holder."""
    cdef Py_buffer mb
    cdef char *p
    cdef Py_ssize_t n
    cdef uint32_t pid
    cdef bint held
    cdef gb_blob *bl

    def __getbuffer__(self, Py_buffer *view, int flags):
        PyBuffer_FillInfo(view, self, self.p, self.n, 0, flags)

    def __len__(self):
        return self.n

    def __dealloc__(self):
        global _leases
        if self.held:
            self.held = False
            _leases -= 1
            if self.pid == _pid:
                # release: the item is no longer read; the producer may refill
                gb_lock_release(&self.bl.state)
            PyBuffer_Release(&self.mb)


def blob_lease(mm, Py_ssize_t idx=0):
    """Take the item in blob ``mm`` in place: a :class:`BlobView` of it
    (the blob is freed when the view goes), or None when this process holds
    ``MAX_LEASES`` already (the caller copies the item out instead)."""
    global _leases
    cdef BlobView v
    cdef gb_blob *bl
    cdef gb_au64 *state
    cdef uint64_t holder
    if _leases >= _max_leases:
        return None
    v = BlobView.__new__(BlobView)
    PyObject_GetBuffer(mm, &v.mb, PyBUF_WRITABLE)
    try:
        bl = _blob(&v.mb, idx)
    except BaseException:
        PyBuffer_Release(&v.mb)
        raise
    v.bl = bl
    state = &bl.state
    while True:  # handed over from its producer in one atomic step
        holder = gb_lock_holder(state)
        if gb_lock_steal(state, holder, _pid):
            break
    v.held = True
    v.pid = _pid
    _leases += 1
    v.p = _blob_data(bl)
    v.n = <Py_ssize_t>(bl.len if bl.len <= bl.size else 0)
    return v


def blob_read(mm, Py_ssize_t idx=0):
    """Copy the item out of a blob (into a new bytearray) and free the blob
    for its producer."""
    cdef Py_buffer b
    cdef gb_blob *bl
    cdef gb_au64 *state
    cdef uint64_t holder
    PyObject_GetBuffer(mm, &b, PyBUF_WRITABLE)
    try:
        bl = _blob(&b, idx)
        state = &bl.state
        # mark it ours while copying (a producer that sees our pid dead may
        # reclaim it), handing it over from its producer in one atomic step:
        # released first, the producer could reuse it while we copy
        while True:
            holder = gb_lock_holder(state)
            if gb_lock_steal(state, holder, _pid):
                break
        n = bl.len if bl.len <= bl.size else 0
        out = PyByteArray_FromStringAndSize(_blob_data(bl), n)
        gb_lock_release(state)
        return out
    finally:
        PyBuffer_Release(&b)


# ---------------------------------------------------------------------------
# Peer table and fd signalling (pipes)
# ---------------------------------------------------------------------------

ROLE_WRITER = GB_ROLE_WRITER
ROLE_READER = GB_ROLE_READER


def peer_add(Handle h, unsigned int role):
    """Register this process as a holder of ``role``; (index, who) or (-1, 0)."""
    h._live()
    cdef int i = gb_peer_add(&h.r, _pid, role, _self_start())
    if i < 0:
        return -1, 0
    return i, (<uint64_t>_pid) | ((<uint64_t>role) << 32)


def peer_del(Handle h, int idx, unsigned long long who):
    if h._bound:
        gb_peer_del(&h.r, idx, who)
        gb_wake(&h.r, &h.r.hdr.data)
        gb_wake(&h.r, &h.r.hdr.space)


def peers(Handle h, unsigned int role):
    """[(pid, start)] of the registered holders of ``role``."""
    h._live()
    cdef uint64_t w, start
    out = []
    for i in range(GB_MAX_PEERS):
        w = gb_peer_get(&h.r, i, &start)
        if w and (w >> 32) == role:
            out.append((<uint32_t>w, start))
    return out


def peer_entries(Handle h):
    """[(pid, role, start)] of every used entry of the peer table."""
    h._live()
    cdef uint64_t w, start
    out = []
    for i in range(GB_MAX_PEERS):
        w = gb_peer_get(&h.r, i, &start)
        if w:
            out.append((<uint32_t>w, <uint32_t>(w >> 32), start))
    return out


def peer_held(Handle h, unsigned int role):
    """Is ``role`` held by an entry (its low two bits) or by a handle pickled
    but not attached yet?  False means every holder closed explicitly.  Cheap
    enough for every send: no liveness probe (dead holders count), and it
    stops at the first entry found."""
    h._live()
    cdef uint64_t w, start
    cdef int i
    for i in range(GB_MAX_PEERS):
        w = gb_peer_get(&h.r, i, &start)
        if w and ((w >> 32) & 3) == role:
            return True
    return gb_load_i64(&h.r.hdr.pending) > 0


def pending_add(Handle h, long long n):
    h._live()
    return gb_add_i64(&h.r.hdr.pending, n)


def arm_fd(Handle h):
    h._live()
    gb_arm_fd(&h.r)


def fd_armed(Handle h):
    h._live()
    return gb_fd_armed(&h.r) != 0
