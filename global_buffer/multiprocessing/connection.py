"""``gb.Pipe``: ``multiprocessing.Pipe`` on shared-memory rings (SPEC §3.2).

Each direction of a pipe is a queue ring.  A segment's peer table records
which processes hold each end, so ``recv`` raises ``EOFError`` once every
writer closed or died and nothing is left, and ``send`` raises
``BrokenPipeError`` once every reader did.  ``fileno()`` returns the read
end of a FIFO that a sender writes one byte to, but only after a reader
asked for a descriptor (the segment's ``fd_armed`` flag), so pipes that
nobody selects on make no syscall per message.

Everything else of ``multiprocessing.connection`` (``Listener``,
``Client``, ...) is re-exported from the stdlib; :func:`wait` accepts both
kinds of connection.
"""
import errno
import io
import os
import pickle
import stat
import sys
import threading
import time
import weakref
from multiprocessing import BufferTooShort
from multiprocessing import connection as _std
from multiprocessing.util import Finalize

from .. import _core
from ..errors import Empty, Full
from ..ring import Ring, _remove_ring
from ..segment import process_alive

__all__ = list(_std.__all__) + ["Pipe"]
globals().update((n, getattr(_std, n)) for n in _std.__all__ if n not in ("Pipe", "wait"))

PIPE_CAPACITY = 64
_SLICE = 0.2  # how often a blocked end re-checks that its peers are alive
_FIFO_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else None


class _Raw:
    """A ``send_bytes`` message: its bytes travel out of band (no copy into
    a pickle) and come back from ``recv_bytes`` as bytes."""

    __slots__ = ("data",)

    def __init__(self, data):
        self.data = data

    def __reduce_ex__(self, protocol):
        return _Raw, (pickle.PickleBuffer(self.data),)


def _fifo_path(ring_name):
    import tempfile
    return os.path.join(_FIFO_DIR or tempfile.gettempdir(), f"gb.{ring_name}.fifo")


class _Owner:
    """Holds the creating process's ring handles; when the last connection
    of the pipe in this process is collected, the rings are removed."""

    def __init__(self, rings):
        self.rings = rings
        self._finalizer = Finalize(self, _remove_pipe, ([r.name for r in rings], os.getpid()),
                                   exitpriority=0)


def _remove_pipe(names, pid):
    if os.getpid() != pid:
        return
    for n in names:
        _remove_ring(n, pid)
        try:
            os.unlink(_fifo_path(n))
        except OSError:
            pass


_live = weakref.WeakSet()


def _before_fork():
    # a forked child holds copies of our connections.  Count them as pending
    # before the fork, so a parent that closes its copy at once does not see
    # the end as gone before the child has registered its own.
    for c in list(_live):
        if not c._closed:
            c._pend(1)


def _after_fork_in_child():
    for c in list(_live):
        if not c._closed:
            c._register()
            c._pend(-1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


class Connection:
    """One end of a :func:`Pipe`; the ``multiprocessing.connection.Connection``
    API.  Picklable to child processes and Pool tasks."""

    def __init__(self, rx_name, tx_name, readable, writable, owner=None, _pending=False):
        self._rx = Ring.attach(rx_name) if readable else None
        self._tx = Ring.attach(tx_name) if writable else None
        self._names = (rx_name, tx_name)
        self._readable = readable
        self._writable = writable
        self._owner = owner
        self._closed = False
        self._entries = []
        self._fifo_r = None
        self._fifo_w = None
        self._lock = threading.Lock()
        self._register()
        if _pending:
            self._pend(-1)
        _live.add(self)

    def _pend(self, n):
        for r in (self._rx, self._tx):
            if r is not None and not r.closed:
                _core.pending_add(r, n)

    def _register(self):
        self._entries = []
        if self._rx is not None:
            self._entries.append((self._rx,) + _core.peer_add(self._rx, _core.ROLE_READER))
        if self._tx is not None:
            self._entries.append((self._tx,) + _core.peer_add(self._tx, _core.ROLE_WRITER))
        self._fifo_w = None

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
        return self._closed

    @property
    def readable(self):
        return self._readable

    @property
    def writable(self):
        return self._writable

    @staticmethod
    def _gone(ring, role):
        """True when no live process holds the ``role`` end of ``ring``."""
        if _core.pending_add(ring, 0) > 0:
            return False
        return not any(process_alive(pid, start) for pid, start in _core.peers(ring, role))

    # -- sending -------------------------------------------------------------

    def _send(self, obj):
        tx = self._tx
        try:
            tx.put(obj, False)
        except Full:
            self._send_blocking(obj)
        if _core.fd_armed(tx):
            self._signal_fd()

    def _send_blocking(self, obj):
        tx = self._tx
        while True:
            if self._gone(tx, _core.ROLE_READER):
                raise BrokenPipeError(errno.EPIPE, "the other end of the pipe is closed")
            try:
                tx.put(obj, True, _SLICE)
                return
            except Full:
                continue

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
        """Send a picklable object."""
        self._check_closed()
        self._check_writable()
        self._send(obj)

    def send_bytes(self, buf, offset=0, size=None):
        """Send bytes from a bytes-like object (``offset``/``size`` in bytes)."""
        self._check_closed()
        self._check_writable()
        m = memoryview(buf)
        if m.itemsize > 1:
            m = m.cast("B")
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

    def _recv(self, timeout=None):
        """Next message (object or _Raw); EOFError at end of stream;
        Empty if ``timeout`` passed first."""
        rx = self._rx
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = _SLICE if deadline is None else min(_SLICE, deadline - time.monotonic())
            try:
                item = rx.get(True, max(left, 0))
                break
            except Empty:
                pass
            if self._gone(rx, _core.ROLE_WRITER):
                try:
                    item = rx.get(False)
                    break
                except Empty:
                    raise EOFError from None
            if deadline is not None and time.monotonic() >= deadline:
                raise Empty
        if self._fifo_r is not None:
            self._drain_fd()
        return item

    def recv(self):
        """Receive a picklable object (EOFError when the other end is gone)."""
        self._check_closed()
        self._check_readable()
        item = self._recv()
        if isinstance(item, _Raw):
            return pickle.loads(item.data)
        return item

    def _recv_raw(self):
        item = self._recv()
        if isinstance(item, _Raw):
            return item.data
        from multiprocessing.reduction import ForkingPickler
        return memoryview(ForkingPickler.dumps(item))

    def recv_bytes(self, maxlength=None):
        """Receive a message sent with send_bytes() as bytes."""
        self._check_closed()
        self._check_readable()
        if maxlength is not None and maxlength < 0:
            raise ValueError("negative maxlength")
        data = self._recv_raw()
        if maxlength is not None and data.nbytes > maxlength:
            self.close()
            raise OSError("bad message length")
        return bytes(data)

    def recv_bytes_into(self, buf, offset=0):
        """Receive a message into a writable buffer; returns its size.
        Raises ``multiprocessing.BufferTooShort`` (holding the message) if
        it does not fit."""
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
        """Whether there is anything to read (data or end of stream)."""
        self._check_closed()
        self._check_readable()
        rx = self._rx
        if timeout is not None and timeout < 0:
            timeout = 0
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = _SLICE if deadline is None else min(_SLICE, deadline - time.monotonic())
            if rx.qsize() > 0 or rx._wait_ready(False, max(left, 0)):
                return True
            if self._gone(rx, _core.ROLE_WRITER):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                if self._fifo_r is not None:
                    self._drain_fd()
                return False

    # -- descriptors -------------------------------------------------------------

    def fileno(self):
        """A descriptor that is readable while a message is waiting, for
        ``multiprocessing.connection.wait``, ``selectors`` and asyncio."""
        self._check_closed()
        if not self._readable:
            raise OSError("connection is write-only")
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
            if self._rx.qsize() > 0 or self._gone(self._rx, _core.ROLE_WRITER):
                os.write(self._fifo_r, b"\1")
        return self._fifo_r

    def _drain_fd(self):
        try:
            while os.read(self._fifo_r, 4096):
                pass
        except BlockingIOError:
            pass
        # re-arm if messages (or EOF) are still waiting
        if self._rx.qsize() > 0 or self._gone(self._rx, _core.ROLE_WRITER):
            os.write(self._fifo_r, b"\1")

    # -- lifetime ----------------------------------------------------------------

    def close(self):
        """Close this end (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for ring, idx, who in self._entries:
            if idx >= 0 and not ring.closed:
                _core.peer_del(ring, idx, who)
        self._entries = []
        for fd in (self._fifo_r, self._fifo_w):
            if fd is not None:
                os.close(fd)
        self._fifo_r = self._fifo_w = None
        for r in (self._rx, self._tx):
            if r is not None:
                r.close()
        self._owner = None

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
        self._pend(1)
        return (_rebuild, (self._names[0], self._names[1], self._readable, self._writable))

    def __repr__(self):
        state = "closed" if self._closed else ("duplex" if self._readable and self._writable
                                               else "read-only" if self._readable else "write-only")
        return f"<gb.Connection {self._names[0]}|{self._names[1]} {state}>"


def _rebuild(rx_name, tx_name, readable, writable):
    return Connection(rx_name, tx_name, readable, writable, _pending=True)


def Pipe(duplex=True):
    """Return ``(conn1, conn2)`` connected by shared-memory rings, as
    ``multiprocessing.Pipe``: with ``duplex=False`` conn1 only receives and
    conn2 only sends."""
    a = Ring(PIPE_CAPACITY, capacity=PIPE_CAPACITY)
    b = Ring(PIPE_CAPACITY, capacity=PIPE_CAPACITY) if duplex else None
    owner = _Owner([a] + ([b] if b is not None else []))
    if duplex:
        c1 = Connection(a.name, b.name, True, True, owner)
        c2 = Connection(b.name, a.name, True, True, owner)
    else:
        c1 = Connection(a.name, None, True, False, owner)
        c2 = Connection(None, a.name, False, True, owner)
    return c1, c2


def wait(object_list, timeout=None):
    """``multiprocessing.connection.wait`` that also filters the rare
    spurious readiness of a gb connection's descriptor."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else max(deadline - time.monotonic(), 0)
        ready = _std.wait(object_list, left)
        ready = [o for o in ready if not isinstance(o, Connection) or o.closed or o.poll(0)]
        if ready or (deadline is not None and time.monotonic() >= deadline):
            return ready
