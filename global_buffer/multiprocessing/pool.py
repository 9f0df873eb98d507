"""``global_buffer.multiprocessing.pool``: ``gb.Pool`` (SPEC §3.3),
``multiprocessing.Pool`` whose tasks and results travel through shared-memory
rings, beside the stdlib's other ``multiprocessing.pool`` names
(``ThreadPool``, the result classes).

The class subclasses :class:`multiprocessing.pool.Pool` and keeps its public
methods and result objects (``ApplyResult``, ``MapResult``, the ``imap``
iterators); what changes is the transport and the three handler threads.

- Tasks go to the workers through one bounded ring and results come back
  through another.  Objects are pickled by the C pickler as for a stdlib
  pool, and what it cannot pickle (lambdas, closures, local functions and
  classes) by cloudpickle.  Large buffers (numpy arrays, protocol 5) are
  *lent*: the sender copies one into a segment of its own that the receiver
  maps as the array's memory, and the segment goes back to the sender when
  that array is collected (see :class:`_Leases`).
- Every message starts with a fixed header (kind, pid, job, index), so a
  task or result that cannot be unpickled fails just that task.
- The worker handler waits on the workers' sentinels and on a pipe written
  only when the pool's state or cache changes (the stdlib also waits on its
  result pipe; a ring needs no descriptor).  The result handler sleeps on the
  result ring in slices, to notice ``terminate()``.
- **Lost workers.**  Before running a task a worker writes ``(job, index)``
  into its slot of a small shared table (the *board*).  When a worker exits,
  the worker handler replaces it and puts a notice on the result ring; the
  notice follows everything the worker sent (the ring is FIFO and the worker
  is gone), so if the task on the board has no result by then, the result
  handler fails it with :class:`gb.WorkerLost` naming the worker.  The
  stdlib pool waits for that result forever.
"""
import errno
import functools
import itertools
import mmap
import os
import pickle
import queue
import secrets
import signal
import struct
import sys
import threading
import time
import traceback
import weakref
from multiprocessing import get_context, reduction, util
from multiprocessing import pool as _mp_pool
from multiprocessing.connection import wait
from multiprocessing.pool import (
    INIT,
    RUN,
    TERMINATE,
    ExceptionWithTraceback,
    MaybeEncodingError,
    _helper_reraises_exception,
    _PoolCache,
)

from .. import _core
from .. import reduction as _reduction
from ..errors import BufferClosed, BufferCorrupt, BufferExists, Empty, Full, WorkerLost
from ..ring import Ring
from ..segment import Segment, list_names, os_name, process_alive, self_start_time
from ..segment import unlink as _unlink_name

if sys.platform != "win32":
    import _posixshmem

__all__ = ["Pool", "ThreadPool", "WorkerLost"]

#: Slot size of both rings; larger tasks and results travel out of line.
SLOT_BYTES = 16 * 1024
#: How long a blocked ring call sleeps before looking at the pool's state.
_SLICE = 0.1
#: How often an idle worker checks that the pool process is still alive.
_PARENT_CHECK = 1.0
#: Longest sleep of the worker handler between looks at the workers.
_WORKER_CHECK = 1.0
#: How long terminate() lets a worker go after SIGTERM before SIGKILL.
_TERM_GRACE = 2.0


# -- the wire format -------------------------------------------------------------
#
# Every item on both rings is bytes: a header (kind, flags, pid, a, b) and,
# for tasks and results, a body: a pickle, then (flag _F_LEASES) a trailer
# naming the leases that carry its out-of-band buffers.  A body that would
# not fit in a ring slot travels in a lease of its own (flag _F_INDIRECT;
# the item is then the header and that lease's size and name), so the rings
# never carry anything out of line themselves.
#   task      _TASK,  a = job, b = index, body (func, args, kwds)
#   stop      _STOP   (a worker exits; the task handler's sentinel)
#   result    _DONE,  pid, a = job, b = index, body (success, value)
#   exited    _EXITED, pid, a = exit code, b = board slot (worker handler)
#   finished  _STOP   (the task handler has sent every task)

_HEAD = struct.Struct("<BBiqq")
_TASK, _DONE, _EXITED, _STOP = 1, 2, 3, 4
_F_LEASES, _F_INDIRECT = 1, 2
_STOP_ITEM = _HEAD.pack(_STOP, 0, 0, 0, 0)

#: Out-of-band buffers (numpy arrays) at least this large travel in leases:
#: no copy on the receiving side, where one thread of the pool process
#: receives every result.
LEASE_MIN = 512 * 1024
#: Seconds a free lease is kept for reuse before its memory is given back.
LEASE_IDLE = 10.0
_LEASE_HDR = _core.SLOT_HEADER   # a gb_blob header: magic, size, state, len
_TRAILER = struct.Struct("<HI")  # count of leases, bytes of the names before it
_LEASE = struct.Struct("<QH")    # bytes of the buffer, bytes of the name


def _passthrough(data):
    """The rings' codec: items are encoded and decoded by the pool itself."""
    return data


class _Leases:
    """The lease segments one process lends on one ring: ``<ring>.h<pid>.<n>``.

    A lease's state word (``_core.blob_*``) is non-zero from the moment its
    sender takes it until the receiver's mapping of it is collected; then the
    sender reuses it (already faulted in) for a later buffer.  Free leases
    not reused for ``LEASE_IDLE`` seconds are removed (:meth:`trim`), and all
    free ones when shared memory runs short."""

    def __init__(self, prefix):
        self.prefix = prefix
        self.segs = []  # [[Segment, capacity, last lent (monotonic s)]]
        self.counter = itertools.count()
        self.lock = threading.Lock()

    def lend(self, *parts):
        """Copy the buffers ``parts`` one after the other into a free lease
        (or a new one) and return it.  OSError (ENOSPC) if shared memory is
        short even after a trim."""
        n = sum(memoryview(p).nbytes for p in parts)
        with self.lock:
            for entry in self.segs:
                if entry[1] >= n and _core.blob_acquire(entry[0].mm, 0):
                    break
            else:
                self._drop_free(lambda cap: cap < n)  # too small for what we send now
                try:
                    entry = self._create(n)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    self._drop_free(lambda cap: True)
                    entry = self._create(n)
                self.segs.append(entry)
            entry[2] = time.monotonic()
        seg, off = entry[0], _LEASE_HDR
        for p in parts:
            k = memoryview(p).nbytes
            seg.mm[off:off + k] = p
            off += k
        return seg

    def find(self, name):
        with self.lock:
            for seg, _, _ in self.segs:
                if seg.name == name:
                    return seg
        return None

    def _create(self, n):
        cap = (max(n, 1) + 0xFFFF) & ~0xFFFF  # 64 KiB steps, for reuse
        while True:
            name = f"{self.prefix}.h{os.getpid():x}.{next(self.counter)}"
            try:
                seg = Segment.create(name, _LEASE_HDR + cap)
                break
            except BufferExists:  # left by an earlier process with our pid
                continue
        _core.blob_init(seg.mm, cap)  # taken by us, as blob_acquire does
        return [seg, cap, 0.0]

    def _drop_free(self, which, idle_before=None):
        keep = []
        for entry in self.segs:
            seg, cap, used = entry
            if (which(cap) and (idle_before is None or used < idle_before)
                    and _core.blob_acquire(seg.mm, 0)):
                _unlink_name(seg.name)
                seg.close()
            else:
                keep.append(entry)
        self.segs = keep

    def trim(self, idle):
        """Remove free leases not lent for ``idle`` seconds."""
        if self.segs and self.lock.acquire(False):
            try:
                self._drop_free(lambda cap: True, time.monotonic() - idle)
            finally:
                self.lock.release()

    def close(self):
        """Forget every lease; remove the names of those not lent out (the
        pool removes the others' once it has read all their sender sent)."""
        with self.lock:
            for seg, _, _ in self.segs:
                if _core.blob_acquire(seg.mm, 0):
                    _unlink_name(seg.name)
                seg.close()
            self.segs = []


_lenders = {}  # ring name -> _Leases of this process
os.register_at_fork(after_in_child=_lenders.clear)  # the parent's leases are not ours


def _lender(prefix):
    leases = _lenders.get(prefix)
    if leases is None:
        leases = _lenders.setdefault(prefix, _Leases(prefix))
    return leases


def _trim_lenders():
    for leases in list(_lenders.values()):
        leases.trim(LEASE_IDLE)


def _close_lender(prefix):
    leases = _lenders.pop(prefix, None)
    if leases is not None:
        leases.close()


def _remove_leases(prefix, pid=None):
    """Remove the names of segments lent on ring ``prefix`` (by process
    ``pid``, or by anyone): leases, and the ring's own out-of-line blobs
    (``<ring>.b<pid>.<n>``, see ``ring._Blobs``).  Call it once everything
    they carried has been read: receivers' mappings stay valid, and the
    memory goes with the last one."""
    if pid is None:
        starts = (f"{prefix}.h", f"{prefix}.b")
    else:
        starts = (f"{prefix}.h{pid:x}.", f"{prefix}.b{pid}.")
    for name in list_names():
        if name.startswith(starts):
            _unlink_name(name)


class _Lease(mmap.mmap):
    """A receiver's mapping of one lease; arrays are views of it.  When the
    last view is collected so is this, and the lease goes back to its
    sender.  (A child forked meanwhile inherits the mapping but never gives
    the lease back: only the receiving process does.)"""

    def __del__(self):
        if getattr(self, "receiver", None) != os.getpid():
            return
        try:
            _core.blob_release(self)
        except Exception:  # interpreter shutdown, or a segment already gone
            pass


def _borrow(name, n):
    fd = _posixshmem.shm_open(os_name(name), os.O_RDWR, 0)
    try:
        mm = _Lease(fd, 0)
    finally:
        os.close(fd)
    mm.receiver = os.getpid()
    if len(mm) < _LEASE_HDR + n:
        raise BufferCorrupt(f"lease segment {name!r} is smaller than its item")
    return memoryview(mm)[_LEASE_HDR:_LEASE_HDR + n]


def encode(prefix, kind, pid, a, b, obj):
    """One ring item: the header, then ``obj`` pickled.

    The C pickler first, so everything it handles travels as it does to a
    stdlib pool (functions and classes by reference: a worker's module
    globals, ``isinstance`` and ``except`` keep working); what it cannot
    pickle (lambdas, closures, local functions and classes) goes by
    cloudpickle.  Buffers of ``LEASE_MIN`` bytes or more, and a body too big
    for a slot, are lent from this process's leases on ring ``prefix``."""
    lent = []

    def out_of_band(pb):
        raw = pb.raw()
        if raw.nbytes < LEASE_MIN:
            return True  # in band
        try:
            lent.append((_lender(prefix).lend(raw), raw.nbytes))
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            return True  # no room for a lease: in band
        return False

    def give_back():
        for seg, _ in lent:
            _core.blob_release(seg.mm)
        del lent[:]

    try:
        # ForkingPickler's registered reducers apply, as in a stdlib pool
        data = _reduction.dumps(obj, protocol=5, buffer_callback=out_of_band)
    except Exception:
        data = None
    if data is None:
        give_back()
        try:
            data = _reduction.cloud_dumps(obj, protocol=5, buffer_callback=out_of_band)
        except BaseException:
            give_back()
            raise
    body = [data]
    flags = 0
    if lent:
        flags = _F_LEASES
        size = 0
        for seg, n in lent:
            name = seg.name.encode()
            body += [_LEASE.pack(n, len(name)), name]
            size += _LEASE.size + len(name)
        body.append(_TRAILER.pack(len(lent), size))
    nbytes = sum(len(x) for x in body)
    if _HEAD.size + nbytes > SLOT_BYTES:
        try:
            seg = _lender(prefix).lend(*body)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
        else:
            name = seg.name.encode()
            return b"".join([_HEAD.pack(kind, flags | _F_INDIRECT, pid, a, b),
                             _LEASE.pack(nbytes, len(name)), name])
    return b"".join([_HEAD.pack(kind, flags, pid, a, b)] + body)


def _body(data):
    """(flags, body, name of the lease holding the body or None) of an item."""
    mv = memoryview(data)
    flags = mv[1]
    if not flags & _F_INDIRECT:
        return flags, mv[_HEAD.size:], None
    n, k = _LEASE.unpack_from(mv, _HEAD.size)
    off = _HEAD.size + _LEASE.size
    name = bytes(mv[off:off + k]).decode()
    return flags, None, (name, n)


def _trailer(flags, body):
    """(end of the pickle in ``body``, [(lease name, size)] it names)."""
    end = len(body)
    if not flags & _F_LEASES:
        return end, []
    count, size = _TRAILER.unpack_from(body, end - _TRAILER.size)
    end -= _TRAILER.size + size
    off, out = end, []
    for _ in range(count):
        n, k = _LEASE.unpack_from(body, off)
        off += _LEASE.size
        out.append((bytes(body[off:off + k]).decode(), n))
        off += k
    return end, out


def decode(data):
    """The object of a ring item made by :func:`encode` (after its header)."""
    flags, body, indirect = _body(data)
    if indirect is not None:
        body = _borrow(*indirect)  # given back once loaded: the objects copy it
    end, lent = _trailer(flags, body)
    buffers = [_borrow(name, n) for name, n in lent] if lent else None
    return pickle.loads(body[:end], buffers=buffers)


def _give_back(prefix, data):
    """Free the leases of an encoded item that was never sent."""
    leases = _lenders.get(prefix)
    if leases is None:
        return
    flags, body, indirect = _body(data)
    segs = []
    if indirect is not None:
        seg = leases.find(indirect[0])
        if seg is None:
            return
        segs.append(seg)
        body = memoryview(seg.mm)[_LEASE_HDR:_LEASE_HDR + indirect[1]]
    segs += [leases.find(name) for name, _ in _trailer(flags, body)[1]]
    body = None
    for seg in segs:
        if seg is not None:
            _core.blob_release(seg.mm)


# -- the board: which task each worker is running ----------------------------------

class _Board:
    """One ``(job, index)`` pair per worker slot in a small segment.

    A worker writes its pair before running a task; the pool reads it only
    after the worker has exited.  Slots are handed out by the worker handler
    and given back by the result handler once it has read the exit notice."""

    MAGIC = 0x314C4F4F505F4247  # "GB_POOL1"

    def __init__(self, name, nslots, parent, create=True):
        self.name, self.nslots, self.parent = name, nslots, parent
        if create:
            self.seg = Segment.create(name, 8 + 16 * nslots)
            for slot in range(nslots):
                self.set(slot, -1, -1)
            struct.pack_into("<Q", self.seg.mm, 0, self.MAGIC)
        else:
            self.seg = Segment.attach(name)
        self._free = list(range(nslots - 1, -1, -1))
        self._lock = threading.Lock()

    def __reduce__(self):
        return (_Board, (self.name, self.nslots, self.parent, False))

    def alloc(self):
        """A free slot, or -1 (that worker's tasks are then not tracked)."""
        with self._lock:
            return self._free.pop() if self._free else -1

    def release(self, slot):
        if slot >= 0:
            with self._lock:
                self._free.append(slot)

    def set(self, slot, job, i):
        if slot >= 0:
            struct.pack_into("<qq", self.seg.mm, 8 + 16 * slot, job, i)

    def get(self, slot):
        return struct.unpack_from("<qq", self.seg.mm, 8 + 16 * slot)

    def remove(self):
        self.seg.close()
        _unlink_name(self.name)


# -- worker side ------------------------------------------------------------------

class _Portable:
    """An initializer or its arguments on their way to a worker.

    Pickled (spawn, forkserver) with the stdlib's pickler when that works, so
    locks, pipes and rings in ``initargs`` pass as they do to a stdlib pool;
    otherwise (a lambda, a closure) with cloudpickle.  Under fork it is not
    pickled at all."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __reduce__(self):
        try:
            reduction.ForkingPickler.dumps(self.obj)
            return (_identity, (self.obj,))
        except Exception:
            import cloudpickle
            return (cloudpickle.loads, (cloudpickle.dumps(self.obj),))


def _identity(obj):
    return obj


def _unwrap(obj):
    return obj.obj if isinstance(obj, _Portable) else obj


def _send(ring, data, parent):
    """Put ``data`` on a bounded ring (in shared memory when this returns),
    giving up only if the pool process is gone."""
    while True:
        try:
            ring.put(data, True, _PARENT_CHECK)
            return
        except Full:
            if not process_alive(*parent):
                raise SystemExit(1) from None


def _next_task(ring, parent):
    while True:
        try:
            return ring.get(True, _PARENT_CHECK)
        except Empty:
            if not process_alive(*parent):
                return None  # orphaned: the pool process died without telling us
            _trim_lenders()  # idle: give back leases nobody reused


def worker(inqueue, outqueue, initializer=None, initargs=(), maxtasks=None,
           wrap_exception=False, board=None, slot=-1):
    """Body of a pool worker process (cf. ``multiprocessing.pool.worker``)."""
    if maxtasks is not None and not (isinstance(maxtasks, int) and maxtasks >= 1):
        raise AssertionError(f"Maxtasks {maxtasks!r} is not valid")
    parent = board.parent if board is not None else (os.getppid(), 0)
    # a worker is one thread waiting for the next task: parking at once
    # leaves the CPU to its peers and the pool process (spinning first costs
    # them time on a busy machine and gains a worker nothing)
    _core.set_spin(0)
    initializer, initargs = _unwrap(initializer), _unwrap(initargs)
    if initializer is not None:
        initializer(*initargs)
    pid = os.getpid()
    out = outqueue.name
    completed = 0
    try:
        while maxtasks is None or completed < maxtasks:
            try:
                data = _next_task(inqueue, parent)
            except (EOFError, OSError, BufferClosed):
                util.debug("worker got EOFError or OSError -- exiting")
                break
            if data is None or data[0] != _TASK:
                util.debug("worker got sentinel -- exiting")
                break
            _, _, _, job, i = _HEAD.unpack_from(data)
            if board is not None:
                board.set(slot, job, i)
            func = None
            try:
                func, args, kwds = decode(data)
                data = None
                result = (True, func(*args, **kwds))
            except Exception as e:
                if wrap_exception and func is not _helper_reraises_exception:
                    e = ExceptionWithTraceback(e, e.__traceback__)
                result = (False, e)
            item = None
            try:
                item = encode(out, _DONE, pid, job, i, result)
                _send(outqueue, item, parent)
            except Exception as e:  # unpicklable, or no shared memory left for it
                if item is not None:
                    _give_back(out, item)
                wrapped = MaybeEncodingError(e, result[1])
                util.debug(f"Possible encoding error while sending result: {wrapped}")
                _send(outqueue, encode(out, _DONE, pid, job, i, (False, wrapped)), parent)
            data = item = result = func = args = kwds = None
            completed += 1
    finally:
        _close_lender(out)
    util.debug(f"worker exiting after {completed} tasks")


# -- pool side --------------------------------------------------------------------

class _Notifier:
    """The pool's change notifier: a pipe the worker handler ``wait()``s on.

    ``put`` never blocks (a full pipe already says "something changed") and
    is harmless after ``close``."""

    def __init__(self):
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._r, self._w = r, w
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _close_fds, r, w)
        # not at interpreter exit: the pool's own finalizer still needs the
        # pipe then, to stop the worker handler (it runs later, at exit)
        self._finalizer.atexit = False
        self.closing = False  # set by close()/terminate(): see _Cache

    def fileno(self):
        return self._r

    @property
    def _reader(self):  # the stdlib's name for the end it waits on
        return self

    def put(self, obj=None):
        with self._lock:
            if self._w is not None:
                try:
                    os.write(self._w, b"\0")
                except OSError:
                    pass

    def drain(self):
        with self._lock:
            try:
                while self._r is not None and os.read(self._r, 4096):
                    pass
            except OSError:
                pass

    def close(self):
        with self._lock:
            self._r = self._w = None
            self._finalizer()


class _Cache(_PoolCache):
    """The pool's cache of pending results.  It wakes the worker handler when
    it empties only once the pool is closing, the one time that matters (the
    stdlib's wakes it after every job, costing a GIL hand-off per ``apply``)."""

    def __delitem__(self, item):
        dict.__delitem__(self, item)
        if not self and self.notifier.closing:
            self.notifier.put(None)


def _close_fds(*fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _lost_message(pid, exitcode, job, i):
    if exitcode < 0:
        try:
            how = f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"was killed by signal {-exitcode}"
    else:
        how = f"exited with code {exitcode}"
    return (f"pool worker process {pid} {how} while running task {i} of job {job}; "
            "its result is lost (the worker was replaced)")


def _put_until(ring, data, thread=None):
    """Put ``data`` on a bounded ring; False if the pool is terminated
    (``thread._state``, default: the calling handler's) first.  Waits for
    room without holding the GIL (other pool threads keep running)."""
    if thread is None:
        thread = threading.current_thread()
    while True:
        try:
            ring.put(data, False)
            return True
        except Full:
            if thread._state == TERMINATE:
                return False
            ring._wait_ready(True, _SLICE)


_ENCODED = object()  # func of a task tuple whose args are the encoded item


def _put_task(ring, task, thread=None):
    """The task handler's put: a task tuple, or None for a worker to stop."""
    if task is None:
        return _put_until(ring, _STOP_ITEM, thread)
    job, i, func, args, kwds = task
    if func is _ENCODED:
        return _put_until(ring, args, thread)
    return _put_until(ring, encode(ring.name, _TASK, 0, job, i, (func, args, kwds)), thread)


def _receive(ring, thread):
    """Next item of the result ring, or None once the pool is terminated."""
    idle = 0
    while True:
        try:
            return ring.get(False)
        except Empty:
            pass
        if thread._state == TERMINATE:
            return None
        if idle > 1:  # a sender is mid-put: give it the CPU
            time.sleep(0.0002)
        # sleep in the kernel without holding the GIL (a blocking get spins
        # with it first, which would stall the threads we are waking)
        if ring._wait_ready(False, _SLICE):
            idle += 1
        else:
            idle = 0
            _trim_lenders()  # idle: give back task leases nobody reused


class Pool(_mp_pool.Pool):
    """``multiprocessing.Pool`` over shared-memory rings.

    Same signature and methods as ``multiprocessing.pool.Pool``
    (``context=`` picks the start method).  Functions, arguments and results
    are pickled as for the stdlib pool, with cloudpickle for what pickle
    cannot do (lambdas, closures, local functions and classes); large
    numpy arguments and results come through shared memory without a copy on
    the receiving side.  If a worker dies while running a task, that task's
    result raises ``gb.WorkerLost`` (naming the worker's pid and how it
    ended), the worker is replaced, and the other tasks go on.

    Parameters
    ----------
    processes : int, optional
        Number of workers (default ``os.cpu_count()``;
        ``os.process_cpu_count()`` on Python 3.13+).
    initializer : callable, optional
        Called as ``initializer(*initargs)`` in each worker when it starts.
    initargs : tuple
        Arguments of ``initializer``.
    maxtasksperchild : int, optional
        Tasks a worker runs before it is replaced (default: no limit).
    context : multiprocessing context, optional
        Its start method starts the workers (default: the current one).
    """

    def __init__(self, processes=None, initializer=None, initargs=(),
                 maxtasksperchild=None, context=None):
        # what __del__, repr() and the error paths use, first
        self._pool = []
        self._state = INIT
        self._inqueue = self._outqueue = self._board = self._change_notifier = None
        if processes is None:
            processes = (getattr(os, "process_cpu_count", None) or os.cpu_count)() or 1
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None:
            if (isinstance(maxtasksperchild, bool) or not isinstance(maxtasksperchild, int)
                    or maxtasksperchild <= 0):
                raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")

        self._ctx = context or get_context()
        self._processes = processes
        self._maxtasksperchild = maxtasksperchild
        self._initializer = _Portable(initializer) if initializer is not None else None
        self._initargs = _Portable(tuple(initargs))
        self._setup_queues()
        self._taskqueue = queue.SimpleQueue()
        # wakes _handle_workers when the cache empties or the state changes
        self._change_notifier = _Notifier()
        self._cache = _Cache(notifier=self._change_notifier)
        try:
            self._repopulate_pool()
        except Exception:
            for p in self._pool:
                if p.exitcode is None:
                    p.terminate()
            for p in self._pool:
                p.join()
            self._release(self._inqueue, self._outqueue, self._board)
            self._change_notifier.close()
            raise

        self._worker_handler = self._start_handler(
            type(self)._handle_workers,
            (self._cache, self._taskqueue, self._ctx, self.Process, self._processes,
             self._pool, self._inqueue, self._outqueue, self._initializer, self._initargs,
             self._maxtasksperchild, self._wrap_exception, self._get_sentinels(),
             self._change_notifier, self._board))
        self._task_handler = self._start_handler(
            type(self)._handle_tasks,
            (self._taskqueue, self._quick_put, self._outqueue, self._pool, self._cache))
        self._result_handler = self._start_handler(
            type(self)._handle_results,
            (self._outqueue, self._quick_get, self._cache, self._board))
        self._terminate = util.Finalize(
            self, self._terminate_pool,
            args=(self._taskqueue, self._inqueue, self._outqueue, self._pool,
                  self._change_notifier, self._worker_handler, self._task_handler,
                  self._result_handler, self._cache, self._board),
            exitpriority=15)
        self._state = RUN

    @staticmethod
    def _start_handler(target, args):
        t = threading.Thread(target=target, args=args, daemon=True)
        t._state = RUN
        t.start()
        return t

    # -- transport ----------------------------------------------------------------

    def _setup_queues(self):
        n = self._processes
        base = f"p{os.getpid():x}-{secrets.token_hex(5)}"
        made = []
        try:
            # tasks: enough queued to keep every worker busy; results: a few
            # per worker, then workers wait for the result handler
            for suffix, maxsize in (("t", max(32, 4 * n)), ("r", max(64, 8 * n))):
                made.append(Ring(maxsize=maxsize, max_bytes=SLOT_BYTES,
                                 serializer=(_passthrough, _passthrough),
                                 name=base + suffix))
            made.append(_Board(base + "w", 4 * n + 64, (os.getpid(), self_start_time())))
        except BaseException:
            self._release(*made)
            raise
        self._inqueue, self._outqueue, self._board = made
        self._quick_put = functools.partial(_put_task, self._inqueue)
        self._quick_get = functools.partial(_receive, self._outqueue)

    @staticmethod
    def _release(*things):
        """Remove the rings (and what was lent on them) and the board."""
        for r in things:
            if r is None:
                continue
            if isinstance(r, _Board):
                r.remove()
                continue
            try:
                _close_lender(r.name)
                r.close()
            finally:
                r.unlink()
                _remove_leases(r.name)

    def _get_sentinels(self):
        return [self._change_notifier._reader]

    @staticmethod
    def _wait_for_updates(sentinels, change_notifier, timeout=_WORKER_CHECK):
        # with a timeout all the same: the worker handler also reaps workers
        # whose sentinel it could not wait on
        wait(sentinels, timeout=timeout)
        change_notifier.drain()

    @staticmethod
    def _help_stuff_finish(inqueue, task_handler, size):
        # drop the tasks no worker took yet; frees a task handler waiting
        # for room, too
        util.debug("removing tasks from inqueue until task handler finished")
        try:
            while True:
                inqueue.get(False)
        except (Empty, BufferClosed, OSError):
            pass

    # -- workers -------------------------------------------------------------------

    def _repopulate_pool(self):
        return self._repopulate_pool_static(
            self._ctx, self.Process, self._processes, self._pool, self._inqueue,
            self._outqueue, self._initializer, self._initargs, self._maxtasksperchild,
            self._wrap_exception, self._board)

    @staticmethod
    def _repopulate_pool_static(ctx, Process, processes, pool, inqueue, outqueue,
                                initializer, initargs, maxtasksperchild,
                                wrap_exception, board=None):
        """Start workers until there are ``processes`` of them."""
        for _ in range(processes - len(pool)):
            slot = board.alloc() if board is not None else -1
            w = Process(ctx, target=worker,
                        args=(inqueue, outqueue, initializer, initargs,
                              maxtasksperchild, wrap_exception, board, slot))
            w.name = w.name.replace("Process", "PoolWorker")
            w.daemon = True
            w._gb_slot = slot
            try:
                w.start()
            except BaseException:
                if board is not None:
                    board.release(slot)
                raise
            pool.append(w)
            util.debug("added worker")

    @classmethod
    def _maintain_pool(cls, ctx, Process, processes, pool, inqueue, outqueue,
                       initializer, initargs, maxtasksperchild, wrap_exception,
                       board=None):
        """Replace exited workers, each in place (``len(pool)``, which
        ``map`` reads for its chunk size, never drops), and tell the result
        handler about each exit."""
        thread = threading.current_thread()
        for i, w in enumerate(pool):
            if w.exitcode is None:
                continue
            util.debug(f"cleaning up worker {i}")
            w.join()
            new = []
            try:
                if thread._state != TERMINATE:
                    cls._repopulate_pool_static(ctx, Process, 1, new, inqueue, outqueue,
                                                initializer, initargs, maxtasksperchild,
                                                wrap_exception, board)
            finally:
                if new:
                    pool[i] = new[0]
                else:
                    del pool[i]
                _put_until(outqueue,
                           _HEAD.pack(_EXITED, 0, w.pid, w.exitcode, getattr(w, "_gb_slot", -1)),
                           thread)
            if not new:
                break  # the list changed under enumerate; the next round goes on

    # -- handler threads ---------------------------------------------------------------

    @classmethod
    def _handle_workers(cls, cache, taskqueue, ctx, Process, processes, pool, inqueue,
                        outqueue, initializer, initargs, maxtasksperchild, wrap_exception,
                        sentinels, change_notifier, board=None):
        thread = threading.current_thread()
        # keep workers alive until the cache drains, unless terminated
        while thread._state == RUN or (cache and thread._state != TERMINATE):
            try:
                cls._maintain_pool(ctx, Process, processes, pool, inqueue, outqueue,
                                   initializer, initargs, maxtasksperchild, wrap_exception,
                                   board)
                if len(pool) < processes and thread._state != TERMINATE:
                    cls._repopulate_pool_static(ctx, Process, processes, pool, inqueue,
                                                outqueue, initializer, initargs,
                                                maxtasksperchild, wrap_exception, board)
            except Exception:
                # e.g. fork() failing for want of memory: say so and try again
                # at the next round, rather than leave the pool without workers
                traceback.print_exc()
            current = [*cls._get_worker_sentinels(pool), *sentinels]
            cls._wait_for_updates(current, change_notifier)
        # tell the task handler to finish
        taskqueue.put(None)
        util.debug("worker handler exiting")

    @staticmethod
    def _handle_tasks(taskqueue, put, outqueue, pool, cache):
        thread = threading.current_thread()
        for taskseq, set_length in iter(taskqueue.get, None):
            task = None
            try:
                # iterating taskseq cannot fail (_guarded_task_generation)
                for task in taskseq:
                    if thread._state != RUN:
                        util.debug("task handler found thread._state != RUN")
                        break
                    try:
                        if not put(task):
                            break
                    except Exception as e:
                        job, idx = task[:2]
                        try:
                            cache[job]._set(idx, (False, e))
                        except KeyError:
                            pass
                else:
                    if set_length:
                        util.debug("doing set_length()")
                        idx = task[1] if task else -1
                        set_length(idx + 1)
                    continue
                break
            finally:
                task = taskseq = job = None
        else:
            util.debug("task handler got sentinel")

        try:
            # tell the result handler to finish once the cache is empty, and
            # the workers that there is no more work
            if _put_until(outqueue, _STOP_ITEM, thread):
                for _ in range(len(pool)):
                    if not put(None):
                        break
        except (OSError, BufferClosed):
            util.debug("task handler got OSError when sending sentinels")
        util.debug("task handler exiting")

    @staticmethod
    def _handle_results(outqueue, get, cache, board=None):
        thread = threading.current_thread()
        last_done = {}  # worker pid -> (job, i) of the last result it sent

        def handle(data):
            kind, _, pid, a, b = _HEAD.unpack_from(data)
            if kind == _DONE:
                job, i = a, b
                last_done[pid] = (job, i)
                try:
                    obj = decode(data)
                except Exception as e:
                    obj = (False, e)  # e.g. a class the pool process cannot import
            else:  # _EXITED: everything that worker sent has been handled
                exitcode, slot = a, b
                job, i = board.get(slot) if board is not None and slot >= 0 else (-1, -1)
                if board is not None:
                    board.release(slot)
                # its leases and blobs need no names any more (a worker that
                # exits by itself removes its free ones, a killed one cannot)
                _remove_leases(outqueue.name, pid)
                if job < 0 or last_done.pop(pid, None) == (job, i):
                    return
                obj = (False, WorkerLost(pid, exitcode, _lost_message(pid, exitcode, job, i)))
            try:
                cache[job]._set(i, obj)
            except KeyError:
                pass
            except Exception:
                # a callback raised: report it and keep serving the others
                traceback.print_exc()

        while True:
            data = get(thread)
            if thread._state != RUN:
                util.debug("result handler found thread._state=TERMINATE")
                break
            if data is None or data[0] == _STOP:
                util.debug("result handler got sentinel")
                break
            handle(data)
            data = None

        while cache and thread._state != TERMINATE:
            data = get(thread)
            if data is not None and data[0] != _STOP:
                handle(data)
            data = None
        util.debug(f"result handler exiting: len(cache)={len(cache)}, "
                   f"thread._state={thread._state}")

    # -- submitting ---------------------------------------------------------------

    def apply_async(self, func, args=(), kwds={}, callback=None, error_callback=None):
        """Asynchronous version of ``apply()``.  When nothing is queued ahead
        of it the task goes straight into the task ring, without a hop
        through the task handler thread."""
        self._check_running()
        result = ApplyResult(self, callback, error_callback)
        task = (result._job, 0, func, args, kwds)
        if self._taskqueue.empty():
            try:
                data = encode(self._inqueue.name, _TASK, 0, result._job, 0, (func, args, kwds))
            except Exception:
                pass  # unpicklable: the task handler reports it, as the stdlib does
            else:
                try:
                    self._inqueue.put(data, False)
                    return result
                except (Full, BufferClosed):
                    task = (result._job, 0, _ENCODED, data, None)
        self._taskqueue.put(([task], None))
        return result

    # -- shutdown --------------------------------------------------------------------

    def close(self):
        """Accept no more tasks; the workers exit once the queued ones are
        done."""
        self._change_notifier.closing = True
        super().close()

    def terminate(self):
        """Stop the workers now, without finishing outstanding work (as
        the stdlib; also what leaving a ``with`` block does)."""
        self._change_notifier.closing = True
        super().terminate()

    def join(self):
        """Wait for the workers to exit (after ``close()`` or
        ``terminate()``), then remove the pool's rings."""
        super().join()
        # every thread and worker is gone: nothing uses the rings any more
        self._release(self._inqueue, self._outqueue, self._board)
        self._inqueue = self._outqueue = self._board = None

    @classmethod
    def _terminate_pool(cls, taskqueue, inqueue, outqueue, pool, change_notifier,
                        worker_handler, task_handler, result_handler, cache, board=None):
        # called once: by terminate(), the garbage collector or at exit
        util.debug("finalizing pool")
        current = threading.current_thread()
        worker_handler._state = TERMINATE
        task_handler._state = TERMINATE
        result_handler._state = TERMINATE
        change_notifier.put(None)
        if not inqueue.closed:
            cls._help_stuff_finish(inqueue, task_handler, len(pool))

        # the worker handler must be gone before workers are terminated, so
        # that none is restarted behind our back
        util.debug("joining worker handler")
        if current is not worker_handler:
            worker_handler.join()

        workers = [p for p in pool if hasattr(p, "terminate")]
        if workers:
            util.debug("terminating workers")
            for p in workers:
                if p.exitcode is None:
                    p.terminate()

        util.debug("joining task handler")
        if current is not task_handler:
            task_handler.join()
        util.debug("joining result handler")
        if current is not result_handler:
            result_handler.join()

        if workers:
            util.debug("joining pool workers")
            deadline = time.monotonic() + _TERM_GRACE
            for p in workers:
                p.join(max(0.0, deadline - time.monotonic()))
            for p in workers:
                if p.exitcode is None:  # ignored SIGTERM
                    p.kill()
                    p.join()
        if not inqueue.closed:
            cls._release(inqueue, outqueue, board)
        change_notifier.close()


# the stdlib's other names, importable from here as from multiprocessing.pool
ThreadPool = _mp_pool.ThreadPool
ApplyResult = AsyncResult = _mp_pool.ApplyResult
MapResult = _mp_pool.MapResult
IMapIterator = _mp_pool.IMapIterator
IMapUnorderedIterator = _mp_pool.IMapUnorderedIterator
