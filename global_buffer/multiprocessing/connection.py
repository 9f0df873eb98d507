"""``gb.Pipe``: ``multiprocessing.Pipe`` on shared-memory rings (SPEC §3.2).

Each direction of a pipe is a queue ring.  A segment's peer table records
which processes hold each end (and which ends are pickled but not attached
yet), so ``recv`` raises ``EOFError`` once every writer closed or died and
nothing is left, and ``send`` raises ``BrokenPipeError`` once every reader
did.  Closing the last write end also puts an end-of-stream marker, so a
blocked ``recv`` returns at once; a killed peer is noticed by a liveness
probe every ``_SLICE`` seconds.

``fileno()`` returns the read end of a FIFO that a sender writes one byte
to, but only after a reader asked for a descriptor (the segment's
``fd_armed`` flag), so pipes that nobody selects on make no syscall per
message.

Lifetime: the creating process owns the rings, as for ``gb.Ring``.  When
its last connection of the pipe is collected the names are removed, unless
an end is pickled and not attached yet: then the process that attaches the
last one removes them.  At exit the owner removes them in any case.

Everything else of ``multiprocessing.connection`` (``Listener``,
``Client``, ...) is re-exported from the stdlib; :func:`wait` accepts both
kinds of connection.
"""
import errno
import itertools
import os
import pickle
import stat
import threading
import time
import weakref
from multiprocessing import BufferTooShort, connection as _std, util as _util
from multiprocessing.util import Finalize
from typing import Any, Dict, List

from .. import _core
from ..errors import BufferClosed, Empty
from ..ring import Ring, _remove_ring
from ..segment import process_alive, process_start_time

__all__ = list(_std.__all__) + ["Connection"]  # Client, Listener, Pipe, wait
globals().update((n, getattr(_std, n)) for n in _std.__all__ if n not in ("Pipe", "wait"))


def __getattr__(name):
    # every other name of multiprocessing.connection (families,
    # deliver_challenge, ...) is the stdlib's, as after `import multiprocessing`
    try:
        return getattr(_std, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None

PIPE_CAPACITY = 64
_SLICE = 0.2  # how often a blocked end re-checks that its peers are alive
# Before blocking, recv() waits this long for a reply while yielding the CPU:
# a request/reply peer usually answers within microseconds, and on a busy
# machine the yield lets it run (maybe on this very CPU) instead of the
# plain spin of the ring core, which would keep it off (measured in
# benchmarks/pipe.py: ping-pong 3-4x faster under load, no worse idle).
_YIELD_SPIN = 50e-6
_sched_yield = getattr(os, "sched_yield", None) or (lambda: time.sleep(0))
_clock = time.perf_counter
_peer_held = _core.peer_held
_fd_armed = _core.fd_armed
_FIFO_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else None

_WRITER, _READER = _core.ROLE_WRITER, _core.ROLE_READER
_OWNER = 4     # the creating process, until it lets go of the pipe
_PENDING = 8   # an end pickled by this pid, not attached yet: 8 | role | seq << 4
_seq = itertools.count(1)


class _Raw:
    """A ``send_bytes`` message: its bytes travel out of band (no copy into
    a pickle) and come back from ``recv_bytes`` as bytes."""

    __slots__ = ("data",)

    def __init__(self, data):
        self.data = data

    def __reduce_ex__(self, protocol):
        return _Raw, (pickle.PickleBuffer(self.data),)


class _Eof:
    """Put by the last writer that closes: wakes a reader blocked in recv()."""

    __slots__ = ()

    def __reduce__(self):
        return "_EOF"

    def __repr__(self):
        return "<end of stream>"


_EOF = _Eof()


def _fifo_path(ring_name):
    import tempfile
    return os.path.join(_FIFO_DIR or tempfile.gettempdir(), f"gb.{ring_name}.fifo")


def _unlink_pipe(names):
    for n in names:
        _remove_ring(n, os.getpid())
        try:
            os.unlink(_fifo_path(n))
        except OSError:
            pass


def _holds(ring, role):
    """Is ``role`` of ``ring`` held by a live process or a pickled end whose
    pickler is alive?  (The liveness probe: reads /proc, not for hot paths.)"""
    if _core.pending_add(ring, 0) > 0:
        return True
    for pid, r, start in _core.peer_entries(ring):
        if r & 3 == role and process_alive(pid, start):
            return True
    return False


def _reap_orphaned(rings):
    """Remove the pipe's names if its owner let go and no pickled end is
    waiting to attach (the names are only needed to attach)."""
    for r in rings:
        if r.closed or _core.pending_add(r, 0) > 0:
            return
        for pid, role, start in _core.peer_entries(r):
            if (role == _OWNER or role & _PENDING) and process_alive(pid, start):
                return
    _unlink_pipe([r.name for r in rings])


class _Owner:
    """The creating process's hold on a pipe: its ring handles and an
    ``_OWNER`` entry in each peer table, released when the last connection
    of the pipe in this process is collected (or at exit)."""

    def __init__(self, rings, fds=()):
        self.rings = rings
        self.fds = list(fds)  # a counted pipe's FIFO, held open (see _CountedConnection)
        entries = []
        for r in rings:
            if r._finalizer is not None:
                r._finalizer.cancel()  # the pipe, not the ring, decides when names go
            entries.append(_core.peer_add(r, _OWNER))
        self._finalizer = Finalize(self, _release_pipe, (rings, entries, os.getpid(), self.fds),
                                   exitpriority=-10)

    def release(self):
        """Remove the pipe's names now (a gb.Manager shutting down)."""
        self._finalizer.cancel()
        names = [r.name for r in self.rings]
        for r in self.rings:
            r.close()
        _close_fds(self.fds)
        _unlink_pipe(names)


def _close_fds(fds):
    while fds:
        try:
            os.close(fds.pop())
        except OSError:
            pass


def _release_pipe(rings, entries, pid, fds=()):
    if os.getpid() != pid:
        return
    names = [r.name for r in rings]
    keep = False
    if not _util.is_exiting():
        _sweep_spawned()  # ends pickled for children that died before attaching
        for r, (idx, who) in zip(rings, entries):
            if r.closed:
                continue
            if idx >= 0:
                _core.peer_del(r, idx, who)
            if _core.pending_add(r, 0) > 0 or any(
                    role & _PENDING and process_alive(p, s)
                    for p, role, s in _core.peer_entries(r)):
                keep = True  # a pickled end still has to attach: it removes them
    for r in rings:
        r.close()
    if not keep:
        _close_fds(fds)
        _unlink_pipe(names)
    else:
        # whoever attaches the last pickled end removes the names; at our
        # exit they go in any case (as a gb.Ring's do).  A counted pipe's
        # FIFO stays open here until then, so that its bytes (one per
        # queued message) outlive every other handle closing.
        Finalize(None, _unlink_at_exit, (names, pid, fds), exitpriority=-10)


def _unlink_at_exit(names, pid, fds=()):
    if os.getpid() == pid:
        _close_fds(fds)
        _unlink_pipe(names)


# Connections pickled while spawning a child: if the child dies before it
# attaches them, their pending entries are dropped (else the other end would
# wait for a holder that never comes).
_spawned: List[Any] = []  # (Popen, tokens)
_spawned_lock = threading.Lock()


def _child_gone(popen):
    """Whether the child a Popen launched has ended, without touching the
    Popen: its ``poll()`` is not ours to call from another thread.  (A
    forkserver Popen's poll() reads the exit code from the pipe that first
    carries the new pid: called while the launching thread waits for that
    pid, it took the pid's bytes as an exit code and the launch hung for
    good -- ProcessPoolExecutor starting a worker while another executor's
    result pipe was being collected.)  A Popen still launching has no pid
    yet: not gone."""
    if popen.returncode is not None:
        return True  # its owner reaped it
    pid = getattr(popen, "pid", None)
    if not pid:
        return False
    start = _child_starts.get(id(popen))
    if start is None:  # first sight: remember who it is (pid reuse)
        start = _child_starts[id(popen)] = process_start_time(pid) or 0
    return not process_alive(pid, start)


_child_starts: Dict[int, int] = {}  # id(popen) -> its child's start time, while in _spawned


def _sweep_spawned():
    with _spawned_lock:
        if not _spawned:
            return
        done = []
        for rec in _spawned:
            if _child_gone(rec[0]):
                done.append(rec)
        for rec in done:
            _spawned.remove(rec)
            _child_starts.pop(id(rec[0]), None)
    for _popen, tokens in done:
        rings = []
        try:
            for name, idx, who in tokens:
                try:
                    ring = Ring.attach(name)
                except Exception:
                    continue  # removed already
                rings.append(ring)
                _unpend(ring, idx, who)
            if rings:
                _reap_orphaned(rings)
        finally:
            for r in rings:
                r.close()


def _unpend(ring, idx, who):
    if idx >= 0:
        _core.peer_del(ring, idx, who)  # no-op if the entry was claimed already
    else:
        _core.pending_add(ring, -1)


_live: "weakref.WeakSet[Connection]" = weakref.WeakSet()


def _before_fork():
    # a forked child holds copies of our connections.  Mark them pending
    # before the fork, so a parent that closes its copy at once does not see
    # the end as gone before the child has registered its own.
    for c in list(_live):
        if not c._closed:
            c._fork_tokens = c._pend()


def _after_fork_in_parent():
    for c in list(_live):
        c._fork_tokens = None


def _after_fork_in_child():
    for c in list(_live):
        tokens, c._fork_tokens = c._fork_tokens, None
        # the FIFO descriptors are the parent's: open our own on demand
        for fd in (c._fifo_r, c._fifo_w):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        c._fifo_r = c._fifo_w = None
        if not c._closed and tokens is not None:
            c._register()
            for t in tokens:
                _unpend(*t)
            # the parent may have let go of the pipe meanwhile, waiting for us
            _reap_orphaned(c._rings())


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)


def _close_all():
    """At exit: close this process's connections, so peers see EOF (or
    BrokenPipeError) at once rather than at their next liveness probe."""
    for c in list(_live):
        try:
            c.close()
        except Exception:
            pass


class _ExitHook:
    """Registers :func:`_close_all` to run at exit, again in every
    multiprocessing child (whose bootstrap clears inherited finalizers)."""

    def register(self):
        Finalize(None, _close_all, exitpriority=-20)


_exit_hook = _ExitHook()
_exit_hook.register()
_util.register_after_fork(_exit_hook, _ExitHook.register)


class Connection:
    """One end of a ``gb.Pipe()``, with the API of
    ``multiprocessing.connection.Connection``.

    Picklable to child processes, ``Pool`` tasks and through rings; the
    receiving process re-attaches.  ``recv()`` raises ``EOFError`` once
    every copy of the other end is closed (or its processes have exited)
    and nothing is left to read.  Methods of a closed connection raise
    ``OSError``, and a one-way end refuses the other direction with
    ``OSError``, as the stdlib does.  A context manager that closes on exit.
    """

    # the rings and FIFO descriptors of a direction this end does not have
    # (or has not opened yet) are None; _check_readable()/_check_writable()
    # and the None checks guard every use
    _rx: Any
    _tx: Any
    _fifo_r: Any
    _fifo_w: Any

    def __init__(self, rx_name, tx_name, readable, writable, owner=None, _tokens=None):
        self._rx = Ring.attach(rx_name) if readable else None
        self._tx = Ring.attach(tx_name) if writable else None
        self._names = (rx_name, tx_name)
        self._readable = readable
        self._writable = writable
        self._owner = owner
        self._closed = False
        self._eof = False
        self._probe_at = 0.0
        self._entries = []
        self._fork_tokens = None
        self._fifo_r = None
        self._fifo_w = None
        self._never = None  # fileno() of a write-only end: (read fd, write fd)
        self._register()
        if _tokens:
            # pickled by another process: we hold the end now, drop its marks
            # (tokens are (index, who) per ring of this end, rx first)
            for ring, (idx, who) in zip(self._rings(), _tokens):
                _unpend(ring, idx, who)
            _reap_orphaned(self._rings())
        _live.add(self)

    def _rings(self):
        return [r for r in (self._rx, self._tx) if r is not None]

    def _register(self):
        self._entries = []
        for ring, role in ((self._rx, _READER), (self._tx, _WRITER)):
            if ring is not None:
                idx, who = _core.peer_add(ring, role)
                if idx < 0:
                    _core.pending_add(ring, 1)  # table full: hold the end by count
                self._entries.append((ring, idx, who))
        self._fifo_w = None

    def _pend(self):
        """Mark this end as pickled by this process and not attached yet;
        the tokens travel with the pickle and the receiver clears them."""
        tokens = []
        for ring, role in ((self._rx, _READER), (self._tx, _WRITER)):
            if ring is not None and not ring.closed:
                idx, who = _core.peer_add(ring, _PENDING | role | ((next(_seq) & 0x7FFFFFF) << 4))
                if idx < 0:
                    _core.pending_add(ring, 1)
                tokens.append((ring, idx, who))
        return tokens

    # -- checks ------------------------------------------------------------

    def _check_closed(self):
        if self._closed:
            raise OSError("handle is closed")

    def _check_readable(self):
        if not self._readable:
            raise OSError("connection is write-only")

    def _check_writable(self):
        if not self._writable:
            raise OSError("connection is read-only")

    @property
    def closed(self):
        """True once ``close()`` was called."""
        return self._closed

    @property
    def readable(self):
        """True if this end can receive."""
        return self._readable

    @property
    def writable(self):
        """True if this end can send."""
        return self._writable

    def _writers_gone(self):
        """End of stream: every write end closed (cheap), or its holders are
        dead (a liveness probe, at most every ``_SLICE`` s)."""
        rx = self._rx
        if not _core.peer_held(rx, _WRITER):
            return True
        now = time.monotonic()
        if now < self._probe_at:
            return False
        self._probe_at = now + _SLICE
        _sweep_spawned()
        return not _holds(rx, _WRITER)

    # -- sending -------------------------------------------------------------

    def _send(self, obj):
        tx = self._tx
        if not _peer_held(tx, _READER):
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))
        if not tx._put_obj(obj, False):
            self._send_blocking(obj)
        if _fd_armed(tx):
            self._signal_fd()

    def _send_blocking(self, obj):
        tx = self._tx
        while True:
            _sweep_spawned()
            if not _holds(tx, _READER):
                raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))
            if tx._put_obj(obj, True, _SLICE):
                return

    def _signal_fd(self):
        if self._fifo_w is None:
            try:
                self._fifo_w = os.open(_fifo_path(self._tx.name), os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                return  # the reader has not opened it (yet): it re-checks the ring
        try:
            os.write(self._fifo_w, b"\1")
        except BlockingIOError:
            pass  # FIFO full: it is readable anyway
        except OSError:
            os.close(self._fifo_w)
            self._fifo_w = None

    def send(self, obj):
        """Send a picklable object.  Blocks while 64 messages wait unread;
        ``BrokenPipeError`` once every receiving end is closed."""
        if self._closed or not self._writable:
            self._check_closed()
            self._check_writable()
        self._send(obj)

    def send_bytes(self, buf, offset=0, size=None):
        """Send bytes from a bytes-like object as one message
        (``offset`` and ``size`` count bytes, whatever the buffer's shape)."""
        self._check_closed()
        self._check_writable()
        m = memoryview(buf)
        if m.itemsize > 1 or m.ndim != 1:
            m = m.cast("B")  # offset and size count bytes, whatever the shape
        n = m.nbytes
        if offset < 0:
            raise ValueError("offset is negative")
        if n < offset:
            raise ValueError("buffer length < offset")
        if size is None:
            size = n - offset
        elif size < 0:
            raise ValueError("size is negative")
        elif offset + size > n:
            raise ValueError("buffer length < offset + size")
        self._send(_Raw(m[offset:offset + size]))

    # -- receiving -------------------------------------------------------------

    def _recv(self):
        """Next message (object or _Raw); EOFError at end of stream."""
        if not self._eof:
            rx = self._rx
            if not rx._qsize():
                end = _clock() + _YIELD_SPIN
                while True:
                    _sched_yield()
                    if rx._qsize() or _clock() >= end:
                        break
            try:
                item = rx._get(True, _SLICE)
            except Empty:
                item = _EOF
            if item is not _EOF:
                if self._fifo_r is not None:
                    self._drain_fd()
                return item
        return self._recv_slow()

    def _recv_slow(self):
        """After a quiet slice or an end-of-stream marker: wait on, probing
        that writers remain; EOFError once none does and nothing is left."""
        rx = self._rx
        while True:
            if self._eof or self._writers_gone():
                # nothing more can come (for good): take what is left, then EOF
                self._eof = True
                while True:
                    try:
                        item = rx._get(False)
                    except Empty:
                        raise EOFError from None
                    if item is not _EOF:
                        return item
            try:
                item = rx._get(True, _SLICE)
            except Empty:
                continue
            if item is not _EOF:
                if self._fifo_r is not None:
                    self._drain_fd()
                return item

    def recv(self):
        """Receive the next object; waits for one.  ``EOFError`` when the
        other end is gone and nothing is left."""
        if self._closed or not self._readable:
            self._check_closed()
            self._check_readable()
        try:
            item = self._recv()
        except BufferClosed:  # closed by another thread while waiting
            raise OSError("handle is closed") from None
        if item.__class__ is _Raw:
            return pickle.loads(item.data)
        return item

    def _recv_raw(self):
        try:
            item = self._recv()
        except BufferClosed:
            raise OSError("handle is closed") from None
        if item.__class__ is _Raw:
            return memoryview(item.data)
        from multiprocessing.reduction import ForkingPickler
        return memoryview(ForkingPickler.dumps(item))

    def _bad_message_length(self):
        # as the stdlib: a duplex end stops reading, a read-only one closes
        if self._writable:
            self._readable = False
        else:
            self.close()
        raise OSError("bad message length")

    def recv_bytes(self, maxlength=None):
        """Receive the next message as bytes (a ``send()`` message gives its
        pickle).  A message longer than ``maxlength`` raises ``OSError`` and
        leaves the connection unusable for reading, as the stdlib."""
        self._check_closed()
        self._check_readable()
        if maxlength is not None and maxlength < 0:
            raise ValueError("negative maxlength")
        data = self._recv_raw()
        if maxlength is not None and data.nbytes > maxlength:
            self._bad_message_length()
        return bytes(data)

    def recv_bytes_into(self, buf, offset=0):
        """Receive the next message into a writable buffer at byte
        ``offset``; return its size in bytes.  Raises
        ``multiprocessing.BufferTooShort`` (holding the message) if it does
        not fit."""
        self._check_closed()
        self._check_readable()
        with memoryview(buf) as m:
            itemsize = m.itemsize
            bytesize = itemsize * len(m)
            if offset < 0:
                raise ValueError("negative offset")
            elif offset > bytesize:
                raise ValueError("offset too large")
            data = self._recv_raw()
            size = data.nbytes
            if bytesize < offset + size:
                raise BufferTooShort(bytes(data))
            m.cast("B")[offset:offset + size] = data.cast("B") if data.format != "B" else data
            return size

    def poll(self, timeout=0.0):
        """Whether there is anything to read (data or end of stream),
        waiting up to ``timeout`` seconds (``None``: until there is)."""
        self._check_closed()
        self._check_readable()
        rx = self._rx
        if rx._qsize() > 0 or self._eof:
            return True
        if timeout is not None and timeout <= 0:
            if self._writers_gone():
                return True
            if self._fifo_r is not None:
                self._drain_fd()
            return False
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = _SLICE if deadline is None else min(_SLICE, deadline - time.monotonic())
            if rx._wait_ready(False, max(left, 0)):
                return True
            if self._writers_gone():
                return True
            if deadline is not None and time.monotonic() >= deadline:
                if self._fifo_r is not None:
                    self._drain_fd()
                return False

    # -- descriptors -------------------------------------------------------------

    def fileno(self):
        """A descriptor that is readable while a message is waiting, for
        ``multiprocessing.connection.wait``, ``selectors`` and asyncio.  (A
        write-only end gets one that never becomes readable, as a pipe's.)"""
        self._check_closed()
        if not self._readable:
            if self._never is None:
                self._never = os.pipe()
            return self._never[0]
        if self._fifo_r is None:
            path = _fifo_path(self._rx.name)
            try:
                os.mkfifo(path, 0o600)
            except FileExistsError:
                if not stat.S_ISFIFO(os.stat(path).st_mode):
                    raise OSError(f"{path} exists and is not a FIFO") from None
            # O_RDWR: the FIFO never reports end-of-file while we hold it
            self._fifo_r = os.open(path, os.O_RDWR | os.O_NONBLOCK)
            _core.arm_fd(self._rx)
            if self._rx._qsize() > 0 or self._eof or self._writers_gone():
                os.write(self._fifo_r, b"\1")
        return self._fifo_r

    def _drain_fd(self):
        try:
            while os.read(self._fifo_r, 4096):
                pass
        except BlockingIOError:
            pass
        # re-arm if messages (or EOF) are still waiting
        rx = self._rx
        if rx._qsize() > 0 or self._eof or not _core.peer_held(rx, _WRITER):
            os.write(self._fifo_r, b"\1")

    # -- lifetime ----------------------------------------------------------------

    def close(self):
        """Close this end (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for ring, idx, who in self._entries:
            if not ring.closed:
                _unpend(ring, idx, who)
        self._entries = []
        tx = self._tx
        if tx is not None and not tx.closed and not _core.peer_held(tx, _WRITER):
            # the last write end: wake a reader blocked in recv() or wait()
            self._put_eof(tx)
        for fd in (self._fifo_r, self._fifo_w) + (self._never or ()):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._fifo_r = self._fifo_w = self._never = None
        for r in (self._rx, self._tx):
            if r is not None:
                r.close()
        self._owner = None

    def _put_eof(self, tx):
        try:
            tx._put_obj(_EOF, False)
        except Exception:
            pass
        if _core.fd_armed(tx):
            self._signal_fd()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __reduce__(self):
        self._check_closed()
        tokens = self._pend()
        from multiprocessing.context import get_spawning_popen
        popen = get_spawning_popen()
        if popen is not None:
            with _spawned_lock:
                _spawned.append((popen, [(r.name, idx, who) for r, idx, who in tokens]))
        return (_rebuild, (self._names[0], self._names[1], self._readable, self._writable,
                           tuple((idx, who) for _, idx, who in tokens)))

    def __repr__(self):
        state = "closed" if self._closed else ("duplex" if self._readable and self._writable
                                               else "read-only" if self._readable else "write-only")
        return f"<gb.Connection {self._names[0]}|{self._names[1]} {state}>"


def _rebuild(rx_name, tx_name, readable, writable, tokens=(), counted=False):
    cls = _CountedConnection if counted else Connection
    return cls(rx_name, tx_name, readable, writable, _tokens=tokens)


def _os_byte_in(fd):
    try:
        os.write(fd, b"\1")
    except BlockingIOError:
        pass  # FIFO full (thousands of bytes): it is readable anyway


def _os_byte_out(fd):
    try:
        return len(os.read(fd, 1))
    except BlockingIOError:
        return 0


def _gil_byte_io():
    """A counted pipe's byte write and read as libc calls that keep the
    GIL.  Both are one byte on a non-blocking FIFO, so they never wait;
    os.write/os.read release the GIL around them, and in a process whose
    other threads are busy in Python (a Pool's task, result and worker
    handlers; an executor's manager) getting it back cost tens of
    microseconds per message (measured: 54 us per os.write in Pool's task
    handler, 2000 tasks on 2 loaded cores).  Errors (EAGAIN: FIFO full,
    hence readable anyway; EBADF after a concurrent close) are ignored, as
    above."""
    import ctypes
    libc = ctypes.PyDLL(None)  # PyDLL: calls keep the GIL
    c_write, c_read = libc.write, libc.read
    for f in (c_write, c_read):
        f.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t)
        f.restype = ctypes.c_ssize_t
    one, sink = b"\1", ctypes.create_string_buffer(8)

    def byte_in(fd):
        c_write(fd, one, 1)

    def byte_out(fd):
        return c_read(fd, sink, 1)
    return byte_in, byte_out


try:
    _byte_in, _byte_out = _gil_byte_io()
except Exception:  # no ctypes, or no libc symbols to find: the os calls
    _byte_in, _byte_out = _os_byte_in, _os_byte_out

# How long a receiver waits for the byte of a message it took (its sender is
# between its put and its byte: a few bytecodes) before it concludes that
# the sender died there, which leaves the count right without that byte.
_BYTE_WAIT = 5.0


def _take_byte(fd):
    """Read the byte that goes with a message just taken (see
    _CountedConnection)."""
    for _ in range(32):  # usually it lands within microseconds
        if _byte_out(fd) == 1:
            return
    import select
    deadline = time.monotonic() + _BYTE_WAIT
    p = select.poll()
    p.register(fd, select.POLLIN)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        if p.poll(left * 1000) and _byte_out(fd) == 1:
            return


class _CountedConnection(Connection):
    """One end of a one-way pipe in *counted* mode, whose ``fileno()`` is
    exact: readable while a message is queued (or the stream has ended), so
    that the stdlib's ``multiprocessing.connection.wait`` followed by a
    blocking ``recv()`` never blocks -- what ``concurrent.futures`` and
    ``multiprocessing.pool`` do with a ``SimpleQueue``'s ``_reader``.

    A plain connection's descriptor is a hint (a byte per message once a
    reader armed it, drained after each ``recv``): a sender's late byte can
    land after the reader drained and found the ring empty, and the stdlib's
    wait then reports a message that is not there.  Counted mode keeps a
    count instead:

    - every handle of the pipe holds the pipe's FIFO open (``O_RDWR |
      O_NONBLOCK``) from attach to close, so the FIFO and its bytes live as
      long as any handle does (the creating process keeps one more while an
      end it pickled has not attached yet); a forked child keeps the
      descriptor it inherited;
    - a sender puts a message, then writes one byte, the end-of-stream
      marker included;
    - a receiver takes a message, then reads exactly one byte, waiting for
      it if no byte is there yet (a sender is between its put and its byte:
      a few bytecodes), for at most ``_BYTE_WAIT`` seconds (its sender died
      there: the count is right without that byte); the end-of-stream
      marker's byte stays, so an ended stream stays readable, as an OS pipe
      does.

    Hence bytes in the FIFO = queued messages - senders between their put
    and their byte + receivers between their take and their read (+ 1 once
    the stream ended).  A readable FIFO means a message is there (or a
    receiver is about to take the byte of one it took), so ``recv()`` after
    the stdlib's ``wait()`` never blocks for good, and the readiness lags a
    put only by the sender's one ``write``: no wake-up is lost, none comes
    early.  A put that fails or is killed midway (an unpicklable object, a
    worker dying while it pickles its result) commits nothing and writes no
    byte.

    The cost is one ``write`` and one ``read`` system call per message,
    which is why only ``SimpleQueue``'s pipe is counted; ``gb.Pipe`` keeps
    the plain, syscall-free path.
    """

    def __init__(self, rx_name, tx_name, readable, writable, owner=None, _tokens=None):
        name = rx_name if readable else tx_name
        try:
            # before attaching: the last pickled end to attach may remove
            # the pipe's names (FIFO included) as it does
            fd = os.open(_fifo_path(name), os.O_RDWR | os.O_NONBLOCK)
        except FileNotFoundError:
            fd = None  # the pipe is gone: attaching its ring says so below
        self._cfd = fd
        try:
            Connection.__init__(self, rx_name, tx_name, readable, writable, owner, _tokens)
        except BaseException:
            if fd is not None:
                os.close(fd)
                self._cfd = None
            raise
        if fd is None:
            self.close()
            raise OSError(errno.ENOENT, f"the FIFO of pipe {name!r} is gone")

    def _send(self, obj):
        tx = self._tx
        if not _peer_held(tx, _READER):
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))
        if not tx._put_obj(obj, False):
            self._send_blocking(obj)
        _byte_in(self._cfd)

    def _recv(self):
        # No yield-spin before blocking, unlike a plain end: a counted pipe's
        # reader is usually told by its descriptor that a message is there,
        # and in a process with busy Python threads each sched_yield() gives
        # the GIL away for up to a switch interval (measured: 3.6 ms a call
        # in Pool's result handler).
        if not self._eof:
            try:
                item = self._rx._get(True, _SLICE)
            except Empty:
                item = _EOF
            if item is _EOF:
                item = self._recv_slow()  # a message (end of stream raises)
        else:
            item = self._recv_slow()
        fd = self._cfd
        if fd is not None:  # None: closed by another thread meanwhile
            _take_byte(fd)
        return item

    def _put_eof(self, tx):
        try:
            tx._put_obj(_EOF, False)
        except Exception:
            pass
        if self._cfd is not None:
            _byte_in(self._cfd)  # stays, whether the marker fit or not: EOF is readable

    def fileno(self):
        """The pipe's FIFO: readable exactly while a message is waiting or
        the stream has ended.  (A write-only end gets a descriptor that
        never becomes readable, as an OS pipe's write end.)"""
        self._check_closed()
        if not self._readable:
            return Connection.fileno(self)
        return self._cfd

    def close(self):
        """Close this end (idempotent)."""
        if self._closed:
            return
        Connection.close(self)
        fd, self._cfd = self._cfd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def __reduce__(self):
        fn, args = Connection.__reduce__(self)
        return fn, args + (True,)


def _counted_pipe(capacity):
    """``(reader, writer)``: a one-way pipe in counted mode (see
    :class:`_CountedConnection`) whose ring holds ``capacity`` messages
    (``send`` blocks beyond).  For ``SimpleQueue``."""
    ring = Ring(capacity, capacity=capacity)
    path = _fifo_path(ring.name)
    fd = None
    try:
        try:
            os.mkfifo(path, 0o600)
        except FileExistsError:  # a stale one of a dead process: reuse it
            if not stat.S_ISFIFO(os.stat(path).st_mode):
                raise OSError(f"{path} exists and is not a FIFO") from None
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        owner = _Owner([ring], [fd])
    except BaseException:
        if fd is not None:
            os.close(fd)
        ring.close()
        _unlink_pipe([ring.name])
        raise
    r = _CountedConnection(ring.name, None, True, False, owner)
    w = _CountedConnection(None, ring.name, False, True, owner)
    return r, w


def Pipe(duplex=True):
    """Return ``(conn1, conn2)``, two ``Connection`` objects joined by
    shared-memory rings, as ``multiprocessing.Pipe``.

    With ``duplex=True`` both ends send and receive; with ``duplex=False``
    ``conn1`` only receives and ``conn2`` only sends.  Each direction is a
    64-slot queue ring owned by the calling process.
    """
    a = Ring(PIPE_CAPACITY, capacity=PIPE_CAPACITY)
    b = Ring(PIPE_CAPACITY, capacity=PIPE_CAPACITY) if duplex else None
    owner = _Owner([a] + ([b] if b is not None else []))
    if b is not None:  # duplex
        c1 = Connection(a.name, b.name, True, True, owner)
        c2 = Connection(b.name, a.name, True, True, owner)
    else:
        c1 = Connection(a.name, None, True, False, owner)
        c2 = Connection(None, a.name, False, True, owner)
    return c1, c2


def wait(object_list, timeout=None):
    """``multiprocessing.connection.wait`` that also filters the rare
    spurious readiness of a gb connection's descriptor, and notices a gb
    connection whose writers were killed (no byte is written for those)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    ours = [o for o in object_list if isinstance(o, Connection)]
    while True:
        left = None if deadline is None else max(deadline - time.monotonic(), 0)
        if ours:
            left = _SLICE if left is None else min(left, _SLICE)
        ready: List[Any] = _std.wait(object_list, left)
        ready = [o for o in ready if not isinstance(o, Connection) or o.closed or o.poll(0)]
        if not ready and ours:
            ready = [o for o in ours if not o.closed and o.readable and o.poll(0)]
        if ready or (deadline is not None and time.monotonic() >= deadline):
            return ready
