"""``gb.Pool`` (SPEC §3.3): ``multiprocessing.Pool`` whose tasks and results
travel through shared-memory rings.

The class subclasses :class:`multiprocessing.pool.Pool` and keeps its public
methods and result objects (``ApplyResult``, ``MapResult``, the ``imap``
iterators); what changes is the transport and the three handler threads:

- tasks go to the workers through one ring, results come back through
  another, both serialised with cloudpickle (lambdas, closures and locally
  defined classes work as functions, arguments and results), numpy arrays as
  pickle protocol-5 out-of-band buffers written straight into shared memory;
- the worker handler waits on the worker processes' sentinels and a pipe
  that is written only when the pool's state or cache changes (the stdlib
  waits on its result pipe too; a ring needs no descriptor);
- each worker announces ``(job, index)`` on the result ring before running
  a task.  When a worker exits with a task announced but no result, the
  result handler fails that task with :class:`gb.WorkerLost` naming the
  worker, the worker handler replaces the worker, and the pool carries on
  (the stdlib pool waits for that result forever).

Both rings are bounded, so a worker's announcement is in shared memory
before the task runs, and a pool that produces tasks faster than workers
consume them blocks its task-handler thread, as the stdlib's pipe does.
"""
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

from . import _core
from .errors import BufferClosed, BufferCorrupt, BufferExists, Empty, Full, WorkerLost
from .ring import Ring
from .segment import Segment, list_names, os_name, process_alive, self_start_time
from .segment import unlink as _unlink_name

if sys.platform != "win32":
    import _posixshmem

__all__ = ["Pool", "WorkerLost"]

#: Slot size of both rings; larger tasks and results travel out of line.
SLOT_BYTES = 16 * 1024
#: How long a blocked ring call sleeps before looking at the pool's state.
_SLICE = 0.1
#: How often an idle worker checks that the pool process is still alive.
_PARENT_CHECK = 1.0
#: How long terminate() lets a worker go after SIGTERM before SIGKILL.
_TERM_GRACE = 2.0

# messages on the result ring
_STARTED = 0   # (_STARTED, pid, job, i): a worker took task (job, i)
_DONE = 1      # (_DONE, pid, job, i, (success, value))
_EXITED = 2    # (_EXITED, pid, exitcode): the worker handler reaped a worker
# None: the task handler has sent every task (as in the stdlib)


# -- results: large buffers lent to the pool process ---------------------------

#: Out-of-band buffers (numpy arrays) at least this large come back in a
#: "lease": a shared-memory segment of the worker that the pool process maps
#: and gives the result array as its memory, without a copy (one thread in the
#: pool process receives every result, so a copy there would be the limit).
#: When the array is collected the segment goes back to its worker, which
#: reuses it, already faulted in, for a later result.
LEASE_MIN = 512 * 1024
_LEASE_HDR = _core.SLOT_HEADER   # a gb_blob header (magic, size, state, len)
_LEASED = b"\x01"  # first byte of a result that names leases


class _Leases:
    """A worker's lease segments for one pool: ``<prefix>.h<pid>.<n>``."""

    def __init__(self, prefix):
        self.prefix = prefix
        self.segs = []  # [(Segment, capacity)]
        self.counter = itertools.count()

    def lend(self, raw):
        """Copy ``raw`` into a free lease (or a new one); return its name."""
        n = raw.nbytes
        for seg, cap in self.segs:
            if cap >= n and _core.blob_acquire(seg.mm, 0):
                break
        else:
            self._drop_free(n)
            cap = max(n, 1) + 0xFFFF & ~0xFFFF  # 64 KiB steps, for reuse
            while True:
                name = f"{self.prefix}.h{os.getpid():x}.{next(self.counter)}"
                try:
                    seg = Segment.create(name, _LEASE_HDR + cap)
                    break
                except BufferExists:  # left by an earlier process with our pid
                    continue
            _core.blob_init(seg.mm, cap)  # held by us until the pool process frees it
            self.segs.append((seg, cap))
        seg.mm[_LEASE_HDR:_LEASE_HDR + n] = raw
        return seg.name

    def _drop_free(self, n):
        # free leases too small for what we are sending now
        keep = []
        for seg, cap in self.segs:
            if cap < n and _core.blob_acquire(seg.mm, 0):
                _unlink_name(seg.name)
                seg.close()
            else:
                keep.append((seg, cap))
        self.segs = keep

    def close(self):
        # leases the pool process still holds stay mapped there; it removes
        # the names once it has read everything this worker sent
        for seg, _ in self.segs:
            if _core.blob_acquire(seg.mm, 0):
                _unlink_name(seg.name)
            seg.close()
        self.segs = []


_worker_leases = {}  # pool prefix -> _Leases of this process
os.register_at_fork(after_in_child=_worker_leases.clear)  # the parent's are not ours


class _Lease(mmap.mmap):
    """The pool process's mapping of one lease; result arrays are views of
    it.  Collected with the last view: the segment goes back to its worker."""

    def __del__(self):
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
    if len(mm) < _LEASE_HDR + n:
        raise BufferCorrupt(f"lease segment {name!r} is smaller than its item")
    return memoryview(mm)[_LEASE_HDR:_LEASE_HDR + n]


def dumps_result(prefix, obj):
    """Serialise a task result with cloudpickle (protocol 5); numpy arrays
    of ``LEASE_MIN`` bytes or more travel in leases."""
    import cloudpickle
    leases = None
    sent = []

    def out_of_band(pb):
        nonlocal leases
        raw = pb.raw()
        if raw.nbytes < LEASE_MIN:
            return True  # in band
        if leases is None:
            leases = _worker_leases.get(prefix)
            if leases is None:
                leases = _worker_leases[prefix] = _Leases(prefix)
        sent.append((leases.lend(raw), raw.nbytes))
        return False

    data = cloudpickle.dumps(obj, protocol=5, buffer_callback=out_of_band)
    if not sent:
        return data  # a plain pickle starts with PROTO (0x80)
    head = [_LEASED, struct.pack("<H", len(sent))]
    for name, n in sent:
        raw = name.encode()
        head.append(struct.pack("<QH", n, len(raw)))
        head.append(raw)
    return b"".join(head) + data


def loads_result(data):
    """Inverse of :func:`dumps_result`."""
    mv = memoryview(data)
    if mv[:1] != _LEASED:
        return pickle.loads(mv)
    (count,) = struct.unpack_from("<H", mv, 1)
    off, buffers = 3, []
    for _ in range(count):
        n, k = struct.unpack_from("<QH", mv, off)
        buffers.append(_borrow(bytes(mv[off + 10:off + 10 + k]).decode(), n))
        off += 10 + k
    return pickle.loads(mv[off:], buffers=buffers)


def _close_worker_leases(prefix):
    leases = _worker_leases.pop(prefix, None)
    if leases is not None:
        leases.close()


def _remove_leases(prefix, pid=None):
    """Remove the names of lease segments (of worker ``pid``, or all).  The
    pool process's mappings stay valid; the memory goes with the last one."""
    start = f"{prefix}.h" if pid is None else f"{prefix}.h{pid:x}."
    for name in list_names():
        if name.startswith(start):
            _unlink_name(name)


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
            return (_identity, (self.obj,)) if _std_picklable(self.obj) else self._cloud()
        except Exception:
            return self._cloud()

    def _cloud(self):
        import cloudpickle
        return (cloudpickle.loads, (cloudpickle.dumps(self.obj),))


def _std_picklable(obj):
    reduction.ForkingPickler.dumps(obj)
    return True


def _identity(obj):
    return obj


def _unwrap(obj):
    return obj.obj if isinstance(obj, _Portable) else obj


def _send(ring, item, parent):
    """Put ``item`` on a bounded ring (committed to shared memory on return),
    giving up only if the pool process is gone."""
    while True:
        try:
            ring.put(item, True, _PARENT_CHECK)
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


def worker(inqueue, outqueue, initializer=None, initargs=(), maxtasks=None,
           wrap_exception=False, parent=(0, 0)):
    """Body of a pool worker process (cf. ``multiprocessing.pool.worker``)."""
    if maxtasks is not None and not (isinstance(maxtasks, int) and maxtasks >= 1):
        raise AssertionError(f"Maxtasks {maxtasks!r} is not valid")
    initializer, initargs = _unwrap(initializer), _unwrap(initargs)
    if initializer is not None:
        initializer(*initargs)
    pid = os.getpid()
    completed = 0
    try:
        while maxtasks is None or completed < maxtasks:
            try:
                task = _next_task(inqueue, parent)
            except (EOFError, OSError, BufferClosed):
                util.debug("worker got EOFError or OSError -- exiting")
                break
            if task is None:
                util.debug("worker got sentinel -- exiting")
                break
            job, i, func, args, kwds = task
            _send(outqueue, (_STARTED, pid, job, i), parent)
            try:
                result = (True, func(*args, **kwds))
            except Exception as e:
                if wrap_exception and func is not _helper_reraises_exception:
                    e = ExceptionWithTraceback(e, e.__traceback__)
                result = (False, e)
            try:
                _send(outqueue, (_DONE, pid, job, i, result), parent)
            except Exception as e:
                wrapped = MaybeEncodingError(e, result[1])
                util.debug(f"Possible encoding error while sending result: {wrapped}")
                _send(outqueue, (_DONE, pid, job, i, (False, wrapped)), parent)
            task = job = result = func = args = kwds = None
            completed += 1
    finally:
        _close_worker_leases(outqueue.name)
    util.debug(f"worker exiting after {completed} tasks")


# -- pool side --------------------------------------------------------------------

class _Notifier:
    """The pool's change notifier: a pipe the worker handler can ``wait()`` on.

    ``put`` never blocks (a full pipe already means "something changed") and
    is harmless after ``close``."""

    def __init__(self):
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._r, self._w = r, w
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _close_fds, r, w)

    def fileno(self):
        return self._r

    @property
    def _reader(self):  # the stdlib's name for the waitable end
        return self

    def put(self, obj=None):
        with self._lock:
            if self._w is None:
                return
            try:
                os.write(self._w, b"\0")
            except (BlockingIOError, OSError):
                pass

    def empty(self):
        with self._lock:
            return self._r is None or not wait([self._r], 0)

    def drain(self):
        with self._lock:
            try:
                while self._r is not None and os.read(self._r, 4096):
                    pass
            except (BlockingIOError, OSError):
                pass

    get = drain

    def close(self):
        with self._lock:
            self._r = self._w = None
            self._finalizer()


def _close_fds(*fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _lost_message(pid, exitcode, job, i):
    if exitcode is None:
        how = "exited"
    elif exitcode < 0:
        try:
            how = f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"was killed by signal {-exitcode}"
    else:
        how = f"exited with code {exitcode}"
    return (f"pool worker process {pid} {how} while running task {i} of job {job}; "
            "its result is lost (the worker was replaced)")


def _report_exits(outqueue, exited, thread):
    """Tell the result handler which workers exited.  The notice follows
    everything those workers put (the ring is FIFO and they are gone), so
    a task announced and not answered by then is lost."""
    while exited:
        pid, exitcode = exited.pop()
        _put_until(outqueue, (_EXITED, pid, exitcode), thread)


def _put_until(ring, item, thread=None):
    """Put ``item`` on a bounded ring; False if the pool is terminated
    (``thread._state``, default: the calling handler thread's) first."""
    if thread is None:
        thread = threading.current_thread()
    while True:
        try:
            ring.put(item, True, _SLICE)
            return True
        except Full:
            if thread._state == TERMINATE:
                return False


class Pool(_mp_pool.Pool):
    """``multiprocessing.Pool`` over shared-memory rings.

    Same signature and methods as :class:`multiprocessing.pool.Pool`
    (``context=`` picks the start method).  Functions, arguments and results
    are serialised with cloudpickle; large numpy results come back through
    shared memory.  If a worker dies while running a task, that task's result
    raises :class:`gb.WorkerLost` (naming the worker's pid and how it ended),
    the worker is replaced, and the other tasks go on.
    """

    def __init__(self, processes=None, initializer=None, initargs=(),
                 maxtasksperchild=None, context=None):
        # attributes __del__ and the error paths rely on, set first
        self._pool = []
        self._state = INIT
        self._inqueue = self._outqueue = None
        self._change_notifier = None
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
        self._parent = (os.getpid(), self_start_time())
        self._setup_queues()
        self._taskqueue = queue.SimpleQueue()
        # wakes _handle_workers when the cache empties or the state changes
        self._change_notifier = _Notifier()
        self._cache = _PoolCache(notifier=self._change_notifier)
        try:
            self._repopulate_pool()
        except Exception:
            for p in self._pool:
                if p.exitcode is None:
                    p.terminate()
            for p in self._pool:
                p.join()
            self._release_rings(self._inqueue, self._outqueue)
            self._change_notifier.close()
            raise

        self._worker_handler = self._start_handler(
            type(self)._handle_workers,
            (self._cache, self._taskqueue, self._ctx, self.Process, self._processes,
             self._pool, self._inqueue, self._outqueue, self._initializer, self._initargs,
             self._maxtasksperchild, self._wrap_exception, self._get_sentinels(),
             self._change_notifier, self._parent))
        self._task_handler = self._start_handler(
            type(self)._handle_tasks,
            (self._taskqueue, self._quick_put, self._outqueue, self._pool, self._cache))
        self._result_handler = self._start_handler(
            type(self)._handle_results, (self._outqueue, self._quick_get, self._cache))
        self._terminate = util.Finalize(
            self, self._terminate_pool,
            args=(self._taskqueue, self._inqueue, self._outqueue, self._pool,
                  self._change_notifier, self._worker_handler, self._task_handler,
                  self._result_handler, self._cache),
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
        # tasks: enough queued to keep every worker busy; results: room for
        # a start notice and a result per worker, and then some
        self._inqueue = Ring(maxsize=max(32, 4 * n), serializer="cloudpickle",
                             max_bytes=SLOT_BYTES)
        try:
            name = f"p{os.getpid():x}-{secrets.token_hex(5)}"
            codec = (functools.partial(dumps_result, name), loads_result)
            self._outqueue = Ring(maxsize=max(64, 8 * n), serializer=codec,
                                  max_bytes=SLOT_BYTES, name=name)
        except BaseException:
            self._release_rings(self._inqueue)
            raise
        self._quick_put = functools.partial(_put_until, self._inqueue)
        self._quick_get = self._outqueue.get

    @staticmethod
    def _release_rings(*rings):
        for r in rings:
            if r is None:
                continue
            try:
                r.close()
            finally:
                r.unlink()
                _remove_leases(r.name)

    def _get_sentinels(self):
        return [self._change_notifier._reader]

    @staticmethod
    def _wait_for_updates(sentinels, change_notifier, timeout=None):
        wait(sentinels, timeout=timeout)
        change_notifier.drain()

    @staticmethod
    def _help_stuff_finish(inqueue, task_handler, size):
        # drop the tasks no worker took yet, which also frees a task handler
        # blocked on a full ring
        util.debug("removing tasks from inqueue until task handler finished")
        try:
            while True:
                inqueue.get(False)
        except (Empty, BufferClosed, OSError, EOFError):
            pass
        except Exception:  # an undecodable task: it is being dropped anyway
            pass

    # -- workers -------------------------------------------------------------------

    def _repopulate_pool(self):
        return self._repopulate_pool_static(
            self._ctx, self.Process, self._processes, self._pool, self._inqueue,
            self._outqueue, self._initializer, self._initargs, self._maxtasksperchild,
            self._wrap_exception, self._parent)

    @staticmethod
    def _repopulate_pool_static(ctx, Process, processes, pool, inqueue, outqueue,
                                initializer, initargs, maxtasksperchild,
                                wrap_exception, parent=(0, 0)):
        """Start workers until there are ``processes`` of them."""
        for _ in range(processes - len(pool)):
            w = Process(ctx, target=worker,
                        args=(inqueue, outqueue, initializer, initargs,
                              maxtasksperchild, wrap_exception, parent))
            w.name = w.name.replace("Process", "PoolWorker")
            w.daemon = True
            w.start()
            pool.append(w)
            util.debug("added worker")

    @staticmethod
    def _join_exited_workers(pool, outqueue=None, thread=None):
        """Reap exited workers (removing them from ``pool``); return their
        ``(pid, exitcode)``.  ``outqueue``: also tell the result handler."""
        exited = []
        for i in reversed(range(len(pool))):
            w = pool[i]
            if w.exitcode is not None:
                util.debug(f"cleaning up worker {i}")
                w.join()
                del pool[i]
                exited.append((w.pid, w.exitcode))
        if outqueue is not None:
            _report_exits(outqueue, exited, thread)
        return exited

    @classmethod
    def _maintain_pool(cls, ctx, Process, processes, pool, inqueue, outqueue,
                       initializer, initargs, maxtasksperchild, wrap_exception,
                       parent=(0, 0)):
        """Replace exited workers.  Each is swapped in place for a new one,
        so ``len(pool)`` (read by ``map`` for its chunk size) never drops."""
        exited = []
        for i, w in enumerate(pool):
            if w.exitcode is None:
                continue
            util.debug(f"cleaning up worker {i}")
            w.join()
            exited.append((w.pid, w.exitcode))
            new = []
            try:
                cls._repopulate_pool_static(ctx, Process, 1, new, inqueue, outqueue,
                                            initializer, initargs, maxtasksperchild,
                                            wrap_exception, parent)
            finally:
                if new:
                    pool[i] = new[0]
                else:
                    del pool[i]
                    _report_exits(outqueue, exited, threading.current_thread())
        _report_exits(outqueue, exited, threading.current_thread())
        # workers may be missing if a start failed earlier
        cls._repopulate_pool_static(ctx, Process, processes, pool, inqueue, outqueue,
                                    initializer, initargs, maxtasksperchild,
                                    wrap_exception, parent)

    # -- handler threads ---------------------------------------------------------------

    @classmethod
    def _handle_workers(cls, cache, taskqueue, ctx, Process, processes, pool, inqueue,
                        outqueue, initializer, initargs, maxtasksperchild, wrap_exception,
                        sentinels, change_notifier, parent=(0, 0)):
        thread = threading.current_thread()
        # keep workers alive until the cache drains, unless terminated
        while thread._state == RUN or (cache and thread._state != TERMINATE):
            cls._maintain_pool(ctx, Process, processes, pool, inqueue, outqueue,
                               initializer, initargs, maxtasksperchild, wrap_exception,
                               parent)
            if thread._state == TERMINATE:
                break
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
            # tell the result handler to finish once the cache is empty,
            # and the workers that there is no more work
            if _put_until(outqueue, None, thread):
                for _ in range(len(pool)):
                    if not put(None):
                        break
        except (OSError, BufferClosed):
            util.debug("task handler got OSError when sending sentinels")
        util.debug("task handler exiting")

    @staticmethod
    def _handle_results(outqueue, get, cache):
        thread = threading.current_thread()
        running = {}  # worker pid -> (job, i) it announced and has not answered

        def handle(msg):
            kind = msg[0]
            if kind == _STARTED:
                running[msg[1]] = msg[2:]
                return
            if kind == _DONE:
                _, pid, job, i, obj = msg
                running.pop(pid, None)
            else:  # _EXITED
                _, pid, exitcode = msg
                # everything it sent has been read: its leases need no names
                _remove_leases(outqueue.name, pid)
                lost = running.pop(pid, None)
                if lost is None:
                    return
                job, i = lost
                obj = (False, WorkerLost(pid, exitcode, _lost_message(pid, exitcode, job, i)))
            try:
                cache[job]._set(i, obj)
            except KeyError:
                pass
            except Exception:
                # a callback raised: report it and keep serving the others
                traceback.print_exc()

        def receive():
            while True:
                try:
                    return get(True, _SLICE)
                except Empty:
                    if thread._state == TERMINATE:
                        return None
                except (OSError, EOFError, BufferClosed):
                    util.debug("result handler got EOFError/OSError -- exiting")
                    return None

        while True:
            msg = receive()
            if thread._state != RUN:
                util.debug("result handler found thread._state=TERMINATE")
                break
            if msg is None:
                util.debug("result handler got sentinel")
                break
            handle(msg)
            msg = None

        while cache and thread._state != TERMINATE:
            msg = receive()
            if msg is not None:
                handle(msg)
            msg = None
        util.debug(f"result handler exiting: len(cache)={len(cache)}, "
                   f"thread._state={thread._state}")

    # -- shutdown --------------------------------------------------------------------

    def join(self):
        super().join()
        # every thread and worker is gone: nothing can use the rings again
        self._release_rings(self._inqueue, self._outqueue)

    @classmethod
    def _terminate_pool(cls, taskqueue, inqueue, outqueue, pool, change_notifier,
                        worker_handler, task_handler, result_handler, cache):
        # called once, by terminate(), the garbage collector or at exit
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
        cls._release_rings(inqueue, outqueue)
        change_notifier.close()


# keep the stdlib's names importable from here, as multiprocessing.pool has them
ApplyResult = AsyncResult = _mp_pool.ApplyResult
MapResult = _mp_pool.MapResult
IMapIterator = _mp_pool.IMapIterator
IMapUnorderedIterator = _mp_pool.IMapUnorderedIterator
