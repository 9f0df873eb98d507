"""``global_buffer.multiprocessing.pool``: ``gb.Pool`` (SPEC §3.3),
``multiprocessing.Pool`` whose tasks and results travel through shared-memory
rings, beside the stdlib's other ``multiprocessing.pool`` names
(``ThreadPool``, the result classes).

The class subclasses :class:`multiprocessing.pool.Pool` and keeps its public
methods and result objects (``ApplyResult``, ``MapResult``, the ``imap``
iterators); what changes is the transport and the three handler threads.

- Tasks go to the workers through one bounded object ring and results come
  back through another.  Objects are pickled by the C pickler as for a
  stdlib pool, and what it cannot pickle (lambdas, closures, local
  functions and classes) by cloudpickle.  A task's function is pickled once
  per function object, and a task or result of plain data (ints, strs,
  short tuples of them...) is encoded by the ring's compiled fast path, so
  small tasks cost no pickler.
- Large items travel out of line as every ring item does: in the ring's
  blobs (``ring._Blobs``), reused by their sender once the receiver is done;
  a numpy array of 1 MiB or more arrives as a view of the blob (no copy on
  the receiving side), which goes back to the sender when the array is
  collected.
- Every item starts with a plain header (job, index, pid), and one that
  needs the pickler carries a ``_Note`` before its objects, so a task or
  result that cannot be unpickled fails just that task.
- The worker handler waits on the workers' sentinels and on a pipe written
  only when the pool's state or cache changes (the stdlib also waits on its
  result pipe; a ring needs no descriptor).  The result handler sleeps on the
  result ring in slices, to notice ``terminate()``.
- **Lost workers.**  Before running a task a worker appends ``(job,
  index)`` to its slot of a small shared table (the *board*), and clears
  the slot once the results of those tasks are in the result ring (plain
  results go in batches: see :func:`worker`).  When a worker exits, the
  worker handler replaces it and puts a notice on the result ring; the
  notice follows everything the worker sent (the ring is FIFO and the worker
  is gone), so every task on the board after the last result the pool got
  from that worker is failed by the result handler with
  :class:`gb.WorkerLost` naming the worker.  The
  stdlib pool waits for that result forever.
"""
import collections
import functools
import os
import pickle
import queue
import secrets
import signal
import struct
import threading
import time
import traceback
import weakref
from _thread import allocate_lock as _allocate_lock
from multiprocessing import (
    TimeoutError as _MpTimeoutError,
    get_context,
    pool as _mp_pool,
    reduction,
    util,
)
from multiprocessing.connection import wait
from multiprocessing.pool import (  # type: ignore[attr-defined]  # undocumented: not in typeshed
    INIT,
    RUN,
    TERMINATE,
    ExceptionWithTraceback,
    MaybeEncodingError,
    _helper_reraises_exception,
    _PoolCache,
)
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Deque,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
    Tuple,
    cast,
)

from .. import _core, reduction as _reduction
from ..errors import BufferClosed, Empty, Full, WorkerLost
from ..ring import Ring
from ..segment import Segment, list_names, process_alive, self_start_time, unlink as _unlink_name

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
# Both rings are ordinary object rings (serializer "pickle"), so framing,
# out-of-band buffers and out-of-line items are theirs: an item that does not
# fit a slot, or a numpy array of 1 MiB or more, travels in the ring's blobs
# (``ring._Blobs``) and the receiver's array is a view of the blob.  Items
# are tuples whose head is plain data (the ring's compiled fast path
# encodes and decodes plain tuples without a pickler):
#   task      (job, i, fn, args, kwds)               args/kwds plain data
#   run       (job, i, fn, [x_i, x_i+1, ...], _RUN)  imap tasks fn(x_i), ...
#             (job, i, fn, _Note, args, kwds)        anything else
#             (job, i, fn, cloudpickled (args, kwds), None)
#   stop      None                                   a worker exits
#   result    (job, i, pid, ok, value)                value plain data
#             (job, i, pid, _Note, ok, value)         anything else
#             (job, i, pid, None, cloudpickled (ok, value))
#   results   (_BATCH, pid, [(job, i, ok, value), ...])  plain ones, batched
#   exited    (_EXITED, exit code, pid, board slot)   (worker handler)
#   finished  (_FINISHED,)                            (task handler)
# ``fn`` is the task's function pickled once per function object (bytes; a
# worker keeps the functions it loaded), so a task of a few plain arguments
# costs no pickler at all.  A ``_Note`` unpickles to None but first records
# (job, i, pid) in ``_noted``: if the rest of the item cannot be unpickled,
# the receiver still knows which task to fail.

_EXITED, _FINISHED, _BATCH = -1, -2, -3
_RUN = -4  # the last field of a run of tasks (a task's kwds are a dict or None)
#: Most tasks in one run: ``imap``/``imap_unordered`` with chunksize 1 over a
#: list, tuple or range send the tasks in runs once their results show that
#: they are quick (see Pool._task_runs).
_RUN_MAX = 32
_NO_KWDS: Dict[str, Any] = {}  # a run's tasks' keyword arguments (never changed)
#: Longest a worker keeps a finished plain result while it runs more tasks,
#: once it has run _STREAK tasks of one function in a row, each quicker than
#: _QUICK seconds (see worker()).
_BATCH_AGE = 1e-3
_QUICK = 1e-4
_STREAK = 16
_FINISHED_ITEM = (_FINISHED,)
_SCALARS = frozenset((int, float, str, bytes, bool, type(None)))
_FN_CACHE = 256  # functions a worker keeps loaded (and a pool keeps pickled)

_noted = None  # (job, i, pid) of the item being unpickled, once its _Note is read


def _is_run(task):
    """Whether the task tuple ``task`` is a run: the only layout whose last
    field is an int (see the layouts above).  By type, not identity: the
    worker's copy of ``_RUN`` was unpickled."""
    return type(task[-1]) is int


def _run_length(task):
    """How many tasks ``task`` stands for: a run's length, else 1."""
    return len(task[3]) if _is_run(task) else 1


def _note(job, i, pid):
    global _noted
    _noted = (job, i, pid)


class _Note:
    __slots__ = ("head",)

    def __init__(self, job, i, pid=0):
        self.head = (job, i, pid)

    def __reduce__(self):
        return (_note, self.head)


def _plain(x):
    """True if ``x`` is data the ring encodes without a pickler (so it cannot
    fail to unpickle): a scalar, or a short tuple/list of scalars."""
    t = type(x)
    if t in _SCALARS:
        return True
    if (t is tuple or t is list) and len(x) <= 16:
        for e in x:
            if type(e) not in _SCALARS:
                return False
        return True
    return False


def _dumps(obj):
    """``obj`` pickled as the stdlib pool would (ForkingPickler's reducers),
    or by cloudpickle if pickle refuses it (lambdas, closures, local
    functions and classes)."""
    try:
        return _reduction.dumps(obj, protocol=5)
    except Exception:
        return _reduction.cloud_dumps(obj, protocol=5)


def _is_ring_error(e):
    return isinstance(e, (Full, Empty, BufferClosed))


def _remove_blobs(prefix, pid=None):
    """Remove the names of the out-of-line blobs (``<ring>.b<pid>.<n>``, see
    ``ring._Blobs``) made on ring ``prefix`` by process ``pid``, once
    everything it sent has been read: receivers' mappings stay valid, and
    the memory goes with the last one."""
    start = f"{prefix}.b" if pid is None else f"{prefix}.b{pid}."
    for name in list_names():
        if name.startswith(start):
            _unlink_name(name)


class _Tasks:
    """The pool process's side of the task ring: makes task items, with each
    function pickled once (kept per function object, while the pool runs)."""

    def __init__(self, ring):
        self.ring = ring
        self.fns = {}  # id(func) -> (func, pickled)

    def fn(self, func):
        entry = self.fns.get(id(func))
        if entry is not None and entry[0] is func:
            return entry[1]
        data = _dumps(func)
        if len(self.fns) >= _FN_CACHE:
            self.fns.clear()
        self.fns[id(func)] = (func, data)
        return data

    def put(self, task, thread=None):
        """The task handler's put: a task tuple, or None for a worker to stop.
        False if the pool was terminated first."""
        if task is None:
            return _put_until(self.ring, None, thread)
        job, i, func, args, kwds = task
        if func is _ITEM:  # made (and found the ring full) by apply_async
            return _put_until(self.ring, args, thread)
        if type(kwds) is int:  # a run (_is_run, inline): plain scalars, no pickler
            return _put_until(self.ring, (job, i, self.fn(func), args, _RUN), thread)
        fn = self.fn(func)
        ring = self.ring
        put = _put_until(ring, (job, i, fn, args, kwds), thread, plain=True)
        if put is not None:
            return put
        # not plain data: pickled, after a _Note that names the task
        try:
            return _put_until(ring, (job, i, fn, _Note(job, i), args, kwds), thread)
        except Exception as e:
            if _is_ring_error(e):
                raise
        # pickle refused an argument: cloudpickle (args, kwds)
        return _put_until(ring, (job, i, fn, _reduction.cloud_dumps((args, kwds)), None),
                          thread)

    def clear(self):
        self.fns = {}


_ITEM = object()  # func of a task tuple whose args are the finished item


# -- the board: which task each worker is running ----------------------------------

class _Board:
    """Which tasks each worker has taken and not yet answered, in a small
    segment: per worker slot a count and up to ``BATCH`` ``(job, index)``
    pairs.

    A worker appends a pair before running a task and clears its count once
    the results of those tasks are in the result ring; the pool reads a slot
    only after its worker has exited.  Slots are handed out by the worker
    handler and given back by the result handler once it has read the exit
    notice."""

    MAGIC = 0x324C4F4F505F4247  # "GB_POOL2"
    BATCH = 64
    _SLOT = 8 + 16 * BATCH
    _ENTRY = struct.Struct("<qq")
    _COUNT = struct.Struct("<q")

    def __init__(self, name, nslots, parent, create=True):
        self.name, self.nslots, self.parent = name, nslots, parent
        if create:
            self.seg = Segment.create(name, 8 + self._SLOT * nslots)
            struct.pack_into("<Q", self.seg.mm, 0, self.MAGIC)
        else:
            self.seg = Segment.attach(name)
        self.mm = self.seg.mm
        self._free = list(range(nslots - 1, -1, -1))
        self._lock = threading.Lock()

    def __reduce__(self):
        return (_Board, (self.name, self.nslots, self.parent, False))

    def alloc(self):
        """A free slot (cleared), or -1 (that worker's tasks are then not
        tracked)."""
        with self._lock:
            slot = self._free.pop() if self._free else -1
        self.clear(slot)
        return slot

    def release(self, slot):
        if slot >= 0:
            with self._lock:
                self._free.append(slot)

    def add(self, slot, n, job, i):
        """Record the worker's ``n``-th unanswered task (n < BATCH)."""
        if n >= self.BATCH:  # it would overwrite the next worker's slot
            raise RuntimeError(f"pool board slot {slot} overflows ({n} entries)")
        if slot >= 0:
            off = 8 + self._SLOT * slot
            self._ENTRY.pack_into(self.mm, off + 8 + 16 * n, job, i)
            self._COUNT.pack_into(self.mm, off, n + 1)

    def add_run(self, slot, n, job, i, k):
        """Record tasks ``i .. i + k - 1`` of ``job`` (a run) as the worker's
        ``n``-th and following unanswered tasks (n + k <= BATCH), with one
        write of the entries and one of the count."""
        if n + k > self.BATCH:
            raise RuntimeError(f"pool board slot {slot} overflows ({n} + {k} entries)")
        if slot >= 0:
            off = 8 + self._SLOT * slot
            flat = [v for j in range(i, i + k) for v in (job, j)]
            struct.pack_into(f"<{2 * k}q", self.mm, off + 8 + 16 * n, *flat)
            self._COUNT.pack_into(self.mm, off, n + k)

    def clear(self, slot):
        if slot >= 0:
            self._COUNT.pack_into(self.mm, 8 + self._SLOT * slot, 0)

    def taken(self, slot):
        """The worker's unanswered ``(job, index)`` pairs, oldest first."""
        off = 8 + self._SLOT * slot
        n = min(max(self._COUNT.unpack_from(self.mm, off)[0], 0), self.BATCH)
        return [self._ENTRY.unpack_from(self.mm, off + 8 + 16 * k) for k in range(n)]

    def remove(self):
        self.mm = None
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


def _send(ring, item, parent):
    """Put ``item`` on a bounded ring (in shared memory when this returns),
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


def _send_result(ring, job, i, pid, ok, value, parent):
    item: Optional[Tuple[Any, ...]]
    if _plain(value):
        item = (job, i, pid, ok, value)
    else:
        item = (job, i, pid, _Note(job, i, pid), ok, value)
    try:
        _send(ring, item, parent)
        return
    except Exception as e:
        if _is_ring_error(e):
            raise
        error = e
    item = None
    try:  # pickle refused it (a lambda, a closure): cloudpickle
        data = _reduction.cloud_dumps((ok, value))
    except Exception:  # neither can: the task fails, the worker stays
        wrapped = MaybeEncodingError(error, value)
        util.debug(f"Possible encoding error while sending result: {wrapped}")
        _send(ring, (job, i, pid, _Note(job, i, pid), False, wrapped), parent)
        return
    try:
        _send(ring, (job, i, pid, None, data), parent)
    except Exception as e:  # e.g. no shared memory left for it
        if _is_ring_error(e):
            raise
        _send(ring, (job, i, pid, _Note(job, i, pid), False, MaybeEncodingError(e, value)),
              parent)


def worker(inqueue, outqueue, initializer=None, initargs=(), maxtasks=None,
           wrap_exception=False, board=None, slot=-1):
    """Body of a pool worker process (cf. ``multiprocessing.pool.worker``).

    Once a worker has run ``_STREAK`` tasks in a row of the same function,
    each in under ``_QUICK`` seconds, their plain-data results are sent in
    batches: kept while the next task is already waiting, and sent together
    once none is, or after ``BATCH`` results or ``_BATCH_AGE`` seconds (one
    ring item and one wake-up of the pool's result handler for many small
    tasks).  The board lists the tasks taken and not yet sent, so a worker
    killed with results still in hand fails each of those tasks with
    WorkerLost.

    A run of tasks (``imap`` over a sequence, once its tasks proved quick:
    see ``Pool._task_runs``) is one ring item.  Every task of it goes on the
    board when the run is taken, and they run one by one as if taken one by
    one, so a worker killed mid-run fails the run's unanswered tasks with
    WorkerLost."""
    global _noted
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
    fns: Dict[bytes, Callable[..., Any]] = {}  # pickled function -> function
    # plain results not sent yet: (job, i, ok, value)
    pending: List[Tuple[Any, Any, bool, Any]] = []
    taken = 0  # tasks on the board since it was last cleared
    first = 0.0  # when the oldest pending result was made
    clock = time.monotonic
    batch = _Board.BATCH if board is not None else 1
    streak, last_fn = 0, None  # quick tasks of one function in a row
    run: Deque[Any] = collections.deque()  # a run's tasks not started yet

    def settle():
        # every result so far is in the result ring: clear the board, unless
        # a run is under way (the pool then counts the tasks after the last
        # result it got from this worker as lost: the board is in order)
        nonlocal taken
        if board is not None and not run:
            board.clear(slot)
            taken = 0

    def flush():
        if len(pending) == 1:
            job, i, ok, value = pending[0]
            _send(outqueue, (job, i, pid, ok, value), parent)
        elif pending:
            _send(outqueue, (_BATCH, pid, pending[:]), parent)
        del pending[:]
        settle()

    completed = 0
    try:
        while run or maxtasks is None or completed < maxtasks:
            _noted = None
            from_run = bool(run)
            try:
                if from_run:
                    task = run.popleft()  # on the board already
                elif pending:
                    try:
                        task = inqueue.get(False)
                    except Empty:
                        flush()  # nothing waiting: send what we have, then sleep
                        continue
                else:
                    task = _next_task(inqueue, parent)
            except (EOFError, OSError, BufferClosed, ValueError):
                util.debug("worker got EOFError or OSError -- exiting")
                break
            except Exception as e:
                if _noted is None:
                    raise
                # an argument this process cannot unpickle: that task fails
                flush()
                job, i, _ = _noted
                _send_result(outqueue, job, i, pid, False, e, parent)
                completed += 1
                continue
            if task is None:
                util.debug("worker got sentinel -- exiting")
                break
            job, i, fn = task[0], task[1], task[2]
            if type(task[-1]) is int:  # _is_run(task), inline: once per task
                xs = task[3]
                if board is not None:
                    if taken + len(xs) > batch:
                        flush()  # room on the board for the whole run
                    board.add_run(slot, taken, job, i, len(xs))
                    taken += len(xs)
                run.extend([(job, i + k, fn, (x,), _NO_KWDS) for k, x in enumerate(xs)])
                continue
            if board is not None and not from_run:
                if taken >= batch:
                    # the board is full: a run's tasks stay on it until the
                    # run ends, even those whose results went out mid-run
                    flush()
                board.add(slot, taken, job, i)
                taken += 1
            func = None
            started = clock()
            try:
                if len(task) == 6:
                    args, kwds = task[4], task[5]
                elif task[4] is None:
                    args, kwds = pickle.loads(task[3])
                else:
                    args, kwds = task[3], task[4]
                task = None
                func = fns.get(fn)
                if func is None:
                    func = pickle.loads(fn)
                    if len(fns) >= _FN_CACHE:
                        fns.clear()
                    fns[fn] = func
                ok, value = True, func(*args, **kwds)
            except Exception as e:
                if wrap_exception and func is not _helper_reraises_exception:
                    e = ExceptionWithTraceback(e, e.__traceback__)
                ok, value = False, e
            task = args = kwds = func = None
            now = clock()
            if now - started < _QUICK and fn == last_fn:
                streak += 1
            else:
                streak, last_fn = 0, fn
            if ok and streak >= _STREAK and _plain(value):
                if not pending:
                    first = now
                pending.append((job, i, ok, value))
                if len(pending) >= batch or now - first > _BATCH_AGE:
                    flush()
            else:
                flush()
                _send_result(outqueue, job, i, pid, ok, value, parent)
                settle()
            value = None
            completed += 1
        flush()
    finally:
        blobs = getattr(outqueue, "_blobs", None)
        if blobs is not None:
            blobs.close()  # free blobs go now; the pool removes held ones' names
    util.debug(f"worker exiting after {completed} tasks")


# -- pool side --------------------------------------------------------------------

class _Notifier:
    """The pool's change notifier: a pipe the worker handler ``wait()``s on.

    ``put`` never blocks (a full pipe already says "something changed") and
    is harmless after ``close``."""

    _r: Optional[int]  # the pipe's ends, None once closed
    _w: Optional[int]

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
    stdlib's wakes it after every job, costing a GIL hand-off per ``apply``).
    ``_ApplyResult._set`` does the same inline."""

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


def _set_batch(cache, results):
    """Hand a worker's batch of results ``[(job, i, ok, value), ...]`` to
    their result objects: each job's consecutive results at once where the
    object can take them so (``_set_many``); a lone result of an
    ``apply_async`` without callbacks is set here inline (this loop runs once
    per small task: a call to ``_set`` would be a third of it)."""
    n, k = len(results), 0
    get = cache.get
    emptied = False
    while k < n:
        job, i, ok, value = results[k]
        e = k + 1
        while e < n and results[e][0] == job:
            e += 1
        result = get(job)
        if result is None:
            pass
        elif e == k + 1:
            if type(result) is _ApplyResult and result._quiet and not result._done:
                dict.__delitem__(cache, job)  # first, as _ApplyResult._set
                result._pool = None
                result._success = ok
                result._value = value
                result._done = True
                lock = result._lock
                if lock is not None:
                    lock.release()
                emptied = True
            else:
                _set_result(cache, job, i, (ok, value))
        else:
            # a batch of this job's results: the worker found its tasks quick
            # (Pool._task_runs).  Only here: a new attribute on each
            # apply_async's result object costs more than the rest of setting it
            result._quick = True
            run = [(r[1], (r[2], r[3])) for r in results[k:e]]
            set_many = getattr(result, "_set_many", None)
            if set_many is None:
                for i, obj in run:
                    _set_result(cache, job, i, obj)
            else:
                try:
                    set_many(run)
                except Exception:
                    traceback.print_exc()  # reported; the result handler goes on
        k = e
    if emptied and not cache and cache.notifier.closing:
        cache.notifier.put(None)  # what _Cache.__delitem__ does


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


if TYPE_CHECKING:
    class _Handler(threading.Thread):
        """A pool handler thread: the pool sets its ``_state`` (as the
        stdlib's pool does on its handler threads)."""

        _state: str


def _put_until(ring, item, thread=None, plain=False):
    """Put ``item`` on a bounded ring; False if the pool is terminated
    (``thread._state``, default: the calling handler's) first.  Waits for
    room without holding the GIL (other pool threads keep running).  With
    ``plain``, only as plain data (``QueueHandle._put_plain``): None at once,
    nothing put, if ``item`` is not."""
    if thread is None:
        thread = threading.current_thread()
    while True:
        if plain:
            done = ring._put_plain(item)
            if done == 0:
                return None
            if done > 0:
                return True
        else:
            try:
                ring.put(item, False)
                return True
            except Full:
                pass
        if thread._state == TERMINATE:
            return False
        ring._wait_ready(True, _SLICE)


def _receive(ring, thread):
    """Next item of the result ring, or None once the pool is terminated.
    A result that cannot be unpickled here comes back as that task's
    failure."""
    global _noted
    idle = 0
    while True:
        _noted = None
        try:
            return ring.get(False)
        except Empty:
            pass
        except Exception as e:
            if _noted is not None:  # e.g. a class this process cannot import
                job, i, pid = _noted
                return (job, i, pid, False, e)
            if thread._state == TERMINATE:
                return None
            traceback.print_exc()  # an item lost, not the pool
            continue
        if thread._state == TERMINATE:
            return None
        if idle > 1:  # a sender is mid-put: give it the CPU
            time.sleep(0.0002)
        # sleep in the kernel without holding the GIL and without spinning
        # (the workers need the CPU more than this thread)
        if ring._wait_ready(False, _SLICE):
            idle += 1
        else:
            idle = 0


_yield_gil = time.sleep  # sleep(0): let another thread of this process run
_job_counter = _mp_pool.job_counter  # type: ignore[attr-defined]  # shared with the stdlib's


class _ApplyResult(_mp_pool.ApplyResult):
    """``multiprocessing.pool.ApplyResult`` (same methods and behaviour),
    made and set once per ``apply_async`` on two threads of the pool process
    that the GIL serialises, so both are kept flat: no Event (a Condition,
    whose constructor costs more than the rest of the call), and a lock only
    for a caller that waits before the result is there.

    Waiting: ``wait()`` publishes a held lock in the instance's ``__dict__``
    (``setdefault``: one lock however many threads wait) and then looks at
    ``_done`` again; ``_set`` sets ``_done`` and then releases the lock if one
    is published.  Under the GIL either the waiter sees ``_done`` or the
    setter sees the lock, so no waiter sleeps through its result.

    A callback that raises still leaves the result set, ready and out of the
    cache (the stdlib's would stay unready, and ``join()`` wait forever); the
    exception goes on to the result handler, which reports it."""

    _callback = None
    _error_callback = None
    _lock = None
    _quiet = True  # no callbacks: the result handler sets it inline (_set_batch)

    def __init__(self, pool, callback, error_callback):
        self._pool = pool
        self._job = job = next(_job_counter)
        self._cache = cache = pool._cache
        if callback is not None or error_callback is not None:
            self._callback = callback
            self._error_callback = error_callback
            self._quiet = False
        self._done = False
        cache[job] = self

    def ready(self):
        return self._done

    def wait(self, timeout=None):
        if self._done:
            return
        lock = _allocate_lock()
        lock.acquire()
        lock = self.__dict__.setdefault("_lock", lock)
        if self._done:  # set before our lock was there to release
            return
        if lock.acquire(True, -1 if timeout is None else max(timeout, 0)):
            lock.release()  # for the next waiter

    def get(self, timeout=None):
        if not self._done:
            self.wait(timeout)
            if not self._done:
                raise _MpTimeoutError  # multiprocessing.TimeoutError, as the stdlib
        if self._success:
            return self._value
        raise self._value

    def _set(self, i, obj):
        # the stdlib's _set, with _Cache.__delitem__ inlined
        self._success, self._value = obj
        try:
            if self._callback and self._success:
                self._callback(self._value)
            if self._error_callback and not self._success:
                self._error_callback(self._value)
        finally:
            # out of the cache first: whoever get() wakes sees it gone
            cache = self._cache
            if dict.pop(cache, self._job, None) is not None and not cache \
                    and cache.notifier.closing:
                cache.notifier.put(None)
            self._pool = None
            if not self._done:
                self._done = True
                lock = self._lock
                if lock is not None:
                    lock.release()


def _set_result(cache, job, i, obj):
    """``cache[job]._set(i, obj)`` for the pool's handler threads: a job no
    longer there is ignored, and a callback that raises is reported (on
    stderr, as the stdlib reports exceptions in threads) without stopping the
    thread.  A stdlib result object (``MapResult``) whose callback raised on
    its last result skipped making itself ready and leaving the cache: that is
    done here, so ``get()`` and ``join()`` do not wait forever."""
    result = cache.get(job)
    if result is None:
        return
    try:
        result._set(i, obj)
    except Exception:
        traceback.print_exc()
        if getattr(result, "_number_left", 0) <= 0 and job in cache:
            del cache[job]
            event = getattr(result, "_event", None)
            if event is not None:
                event.set()
            result._pool = None


class _IterState:
    """What the stdlib's IMapIterator.__init__ and
    IMapUnorderedIterator.__init__ set (not in typeshed): declarations only."""

    _pool: Any
    _cond: threading.Condition
    _job: int
    _cache: Dict[int, Any]
    _items: Deque[Tuple[bool, Any]]
    _index: int
    _length: Optional[int]


class _IMapIterator(_IterState, _mp_pool.IMapIterator):
    """``multiprocessing.pool.IMapIterator`` whose ``next()`` takes a waiting
    result without the lock (a deque's popleft is atomic), and whose results
    can be set many at a time (one lock and one notify per batch)."""

    _unsorted: Dict[int, Tuple[bool, Any]]
    _quick = False  # set by the result handler (see Pool._task_runs)

    def next(self, timeout=None):
        try:
            success, value = self._items.popleft()
        except IndexError:
            return _mp_pool.IMapIterator.next(self, timeout)
        if success:
            return value
        raise value

    __next__ = next

    def _set_many(self, results):
        with self._cond:
            start = self._index
            for i, obj in results:
                if self._index == i:
                    self._items.append(obj)
                    self._index += 1
                    while self._index in self._unsorted:
                        self._items.append(self._unsorted.pop(self._index))
                        self._index += 1
                else:
                    self._unsorted[i] = obj
            if self._index != start:
                # only then, as _set: the stdlib's next() takes a wake-up
                # without an item for its timeout
                self._cond.notify()
            if self._index == self._length:
                del self._cache[self._job]
                self._pool = None


class _IMapUnorderedIterator(_IterState, _mp_pool.IMapUnorderedIterator):
    """``multiprocessing.pool.IMapUnorderedIterator``, as
    :class:`_IMapIterator`."""

    next = _IMapIterator.next
    __next__ = next
    _quick = False

    def _set_many(self, results):
        with self._cond:
            for _, obj in results:
                self._items.append(obj)
            self._index += len(results)
            self._cond.notify()
            if self._index == self._length:
                del self._cache[self._job]
                self._pool = None


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
    cluster : distributed.Client or str, optional
        Run the tasks on Dask distributed instead (SPEC §3.3, §9): a
        ``Client``, a scheduler address or ``"local"``; returns a
        ``global_buffer.multiprocessing.cluster.ClusterPool``
        (docs/cluster.md; needs ``global_buffer[dask]``).
    """

    # None before _setup_queues() and after join()
    _inqueue: Optional[Ring]
    _outqueue: Optional[Ring]
    _board: Optional[_Board]
    _change_notifier: Optional[_Notifier]

    if TYPE_CHECKING:  # the stdlib Pool's, not in typeshed
        _wrap_exception: bool
        def _check_running(self) -> None: ...
        def _guarded_task_generation(self, result_job: int, func: Callable[..., Any],
                                     iterable: Iterable[Any]) -> Iterator[Any]: ...
        @staticmethod
        def _get_worker_sentinels(workers: List[Any]) -> List[Any]: ...

    def __new__(cls, *args, cluster=None, **kwargs):
        if cluster is not None:
            from .cluster import ClusterPool  # lazy: Dask only when asked for
            return ClusterPool(*args, cluster=cluster, **kwargs)
        return super().__new__(cls)

    def __init__(self, processes=None, initializer=None, initargs=(),
                 maxtasksperchild=None, context=None, cluster=None):
        # what __del__, repr() and the error paths use, first
        self._pool: List[Any] = []
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
        self._taskqueue: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
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
        t = cast("_Handler", threading.Thread(target=target, args=args, daemon=True))
        t._state = RUN
        t.start()
        return t

    # -- transport ----------------------------------------------------------------

    def _setup_queues(self):
        n = self._processes
        base = f"p{os.getpid():x}-{secrets.token_hex(5)}"
        made: List[Any] = []  # two Rings, then the _Board
        try:
            # tasks: enough queued to keep every worker busy; results: a few
            # per worker, then workers wait for the result handler
            for suffix, maxsize in (("t", max(256, 16 * n)), ("r", max(256, 16 * n))):
                made.append(Ring(maxsize=maxsize, max_bytes=SLOT_BYTES, name=base + suffix))
            made.append(_Board(base + "w", 4 * n + 64, (os.getpid(), self_start_time())))
        except BaseException:
            self._release(*made)
            raise
        self._inqueue, self._outqueue, self._board = made
        self._low_water = self._inqueue.maxsize // 2  # see apply_async
        self._tasks = _Tasks(self._inqueue)
        self._quick_put = self._tasks.put
        self._quick_get = functools.partial(_receive, self._outqueue)

    @staticmethod
    def _release(*things):
        """Remove the rings (and their blobs) and the board."""
        for r in things:
            if r is None:
                continue
            if isinstance(r, _Board):
                r.remove()
                continue
            try:
                r.close()
            finally:
                r.unlink()  # with every blob made on it

    def _get_sentinels(self):
        assert self._change_notifier is not None  # made before the handlers start
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
        while True:
            try:
                inqueue.get(False)
            except (Empty, BufferClosed, OSError, ValueError):
                break
            except Exception:
                continue  # a task this process cannot unpickle: dropped all the same

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
        thread = cast("_Handler", threading.current_thread())
        for i, w in enumerate(pool):
            if w.exitcode is None:
                continue
            util.debug(f"cleaning up worker {i}")
            w.join()
            new: List[Any] = []
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
                _put_until(outqueue, (_EXITED, w.exitcode, w.pid, getattr(w, "_gb_slot", -1)),
                           thread)
            if not new:
                break  # the list changed under enumerate; the next round goes on

    # -- handler threads ---------------------------------------------------------------

    @classmethod
    def _handle_workers(cls, cache, taskqueue, ctx, Process, processes, pool, inqueue,
                        outqueue, initializer, initargs, maxtasksperchild, wrap_exception,
                        sentinels, change_notifier, board=None):
        thread = cast("_Handler", threading.current_thread())
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
        thread = cast("_Handler", threading.current_thread())
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
                        for k in range(_run_length(task)):
                            _set_result(cache, job, idx + k, (False, e))
                else:
                    if set_length:
                        util.debug("doing set_length()")
                        idx = task[1] if task else -1
                        if task:
                            idx += _run_length(task) - 1
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
            if _put_until(outqueue, _FINISHED_ITEM, thread):
                for _ in range(len(pool)):
                    if not put(None):
                        break
        except (OSError, BufferClosed):
            util.debug("task handler got OSError when sending sentinels")
        util.debug("task handler exiting")

    @staticmethod
    def _handle_results(outqueue, get, cache, board=None):
        thread = cast("_Handler", threading.current_thread())
        last_done = {}  # worker pid -> (job, i) of the last result it sent

        def handle(item):
            job = item[0]
            if job == _BATCH:
                pid, results = item[1], item[2]
                _set_batch(cache, results)
                last_done[pid] = results[-1][:2]
                return
            if job >= 0:
                i, pid = item[1], item[2]
                last_done[pid] = (job, i)
                if len(item) == 6:
                    obj = (item[4], item[5])
                elif item[3] is None:  # cloudpickled
                    try:
                        obj = pickle.loads(item[4])
                    except Exception as e:
                        obj = (False, e)
                else:
                    obj = (item[3], item[4])
            else:  # _EXITED: everything that worker sent has been handled
                _, exitcode, pid, slot = item
                taken = board.taken(slot) if board is not None and slot >= 0 else []
                if board is not None:
                    board.release(slot)
                # its blobs need no names any more (a worker that exits by
                # itself removes its free ones, a killed one cannot)
                _remove_blobs(outqueue.name, pid)
                last = last_done.pop(pid, None)
                if last in taken:  # answered up to there (cleared after a send)
                    taken = taken[taken.index(last) + 1:]
                for job, i in taken:
                    lost = WorkerLost(pid, exitcode, _lost_message(pid, exitcode, job, i))
                    _set_result(cache, job, i, (False, lost))
                return
            _set_result(cache, job, i, obj)

        while True:
            item = get(thread)
            if thread._state != RUN:
                util.debug("result handler found thread._state=TERMINATE")
                break
            if item is None or item[0] == _FINISHED:
                util.debug("result handler got sentinel")
                break
            handle(item)
            item = None

        while cache and thread._state != TERMINATE:
            item = get(thread)
            if item is not None and item[0] != _FINISHED:
                handle(item)
            item = None
        util.debug(f"result handler exiting: len(cache)={len(cache)}, "
                   f"thread._state={thread._state}")

    # -- submitting ---------------------------------------------------------------

    def apply_async(self, func, args=(), kwds={}, callback=None,  # noqa: B006 (stdlib)
                    error_callback=None):
        """Asynchronous version of ``apply()``.  When nothing is queued ahead
        of it the task goes straight into the task ring, without a hop
        through the task handler thread."""
        if self._state != RUN:  # _check_running(), inline: this is the hot path
            raise ValueError("Pool not running")
        result = _ApplyResult(self, callback, error_callback)
        job = result._job
        taskqueue = self._taskqueue
        if taskqueue.empty():
            ring = self._inqueue
            item: Optional[Tuple[Any, ...]] = None
            try:
                tasks = self._tasks
                entry = tasks.fns.get(id(func))  # tasks.fn(func), inline
                fn = entry[1] if entry is not None and entry[0] is func else tasks.fn(func)
                item = (job, 0, fn, args, kwds)
                done = ring._put_plain(item)  # type: ignore[union-attr]  # set while running
                if done > 0:
                    return result
                if done == 0:  # not plain data: pickled, after a _Note naming the task
                    item = (job, 0, fn, _Note(job, 0), args, kwds)
                    ring.put(item, False)  # type: ignore[union-attr]
                    return result
            except (Full, BufferClosed):
                pass
            except Exception:
                item = None  # unpicklable: the task handler tries cloudpickle, or reports it
            # the ring is full (or refused it): the task handler puts it
            taskqueue.put(([(job, 0, func, args, kwds) if item is None
                            else (job, 0, _ITEM, item, None)], None))
            return result
        taskqueue.put(([(job, 0, func, args, kwds)], None))
        # Tasks wait for the task handler, which needs the GIL to move them
        # to the ring: a caller submitting in a loop holds it for the switch
        # interval (5 ms) at a time, the ring runs dry, the workers sleep,
        # and every later task queues too.  Once the ring is half empty, let
        # the handler run: it moves the queue and sleeps, and the next
        # apply_async finds the queue empty again.
        try:
            low = self._inqueue._qsize() <= self._low_water  # type: ignore[union-attr]
        except Exception:  # terminate() on another thread released the ring
            return result
        if low:
            _yield_gil(0)
        return result

    def _task_runs(self, result, func, seq):
        """The tasks of ``imap(func, seq)`` with chunksize 1 over a list,
        tuple or range: one at a time, as the stdlib's generator makes them,
        until the result handler has seen a batch of this job's results (a
        worker ran 16 of them in a row, each in under 100 µs); from then on
        runs of up to ``_RUN_MAX`` tasks, one ring item each, never more than
        a ``2 * processes``-th of what is left (so the last tasks still spread
        over the workers).  A run is taken by one worker, which runs its
        tasks in order; only plain scalars go in runs.  What stays as it
        was: the results, their order, laziness (tasks are made as room
        frees in the task ring) and that each task is one call."""
        job, i, spread = result._job, 0, 2 * self._processes
        try:
            while i < len(seq):
                k = min(_RUN_MAX, (len(seq) - i) // spread) if result._quick else 1
                end = i + 1
                if k > 1:
                    xs = seq[i:i + k]
                    if all(type(x) in _SCALARS for x in xs):
                        yield (job, i, func, list(xs), _RUN)
                        i += len(xs)
                        continue
                    end = i + len(xs)
                while i < end:
                    yield (job, i, func, (seq[i],), {})
                    i += 1
        except Exception as e:  # the list changed under us: as the stdlib's generator
            yield (job, i, _helper_reraises_exception, (e,), {})

    @staticmethod
    def _get_tasks(func, it, size):
        """The stdlib's chunks of ``it`` for ``map``, ``starmap`` and ``imap``
        with a chunksize: ``(func, tuple of up to size items)``, except that
        a range is cut into ranges, which cost nothing to make and to send
        (a tuple of the range's ints is built here, then pickled and
        unpickled: for ``map(f, range(100_000))`` 4 ms of the pool process's
        7.5).  The worker's ``mapstar`` maps over either."""
        if type(it) is range and size > 0:
            return ((func, it[k:k + size]) for k in range(0, len(it), size))
        return _mp_pool.Pool._get_tasks(func, it, size)  # type: ignore[attr-defined]  # not in typeshed

    def _map_async(self, func, iterable, mapper, chunksize=None, callback=None,
                   error_callback=None):
        # the stdlib's, calling self._get_tasks (it names Pool._get_tasks)
        self._check_running()
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        if chunksize is None:
            chunksize, extra = divmod(len(iterable), len(self._pool) * 4)
            if extra:
                chunksize += 1
        if len(iterable) == 0:
            chunksize = 0
        task_batches = self._get_tasks(func, iterable, chunksize)
        result = _mp_pool.MapResult(self, chunksize, len(iterable), callback,
                                    error_callback=error_callback)
        job = result._job  # type: ignore[attr-defined]  # not in typeshed
        self._taskqueue.put((self._guarded_task_generation(job, mapper, task_batches), None))
        return result

    def imap(self, func, iterable, chunksize=1):
        """As ``multiprocessing.pool.Pool.imap`` (whose iterator this is)."""
        return self._imap(_IMapIterator, func, iterable, chunksize)

    def imap_unordered(self, func, iterable, chunksize=1):
        """As ``multiprocessing.pool.Pool.imap_unordered``."""
        return self._imap(_IMapUnorderedIterator, func, iterable, chunksize)

    def _imap(self, cls, func, iterable, chunksize):
        # the stdlib's imap / imap_unordered, with our iterator classes
        self._check_running()
        if chunksize == 1:
            result = cls(self)
            if type(iterable) in (list, tuple, range) and self._maxtasksperchild is None:
                tasks = self._task_runs(result, func, iterable)
            else:
                tasks = self._guarded_task_generation(result._job, func, iterable)
            self._taskqueue.put((tasks, result._set_length))
            return result
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize!r}")
        task_batches = self._get_tasks(func, iterable, chunksize)
        result = cls(self)
        self._taskqueue.put(
            (self._guarded_task_generation(result._job,
                                           _mp_pool.mapstar,  # type: ignore[attr-defined]  # as above
                                           task_batches),
             result._set_length))
        return (item for chunk in result for item in chunk)

    # -- shutdown --------------------------------------------------------------------

    def close(self):
        """Accept no more tasks; the workers exit once the queued ones are
        done."""
        assert self._change_notifier is not None  # made in __init__
        self._change_notifier.closing = True
        super().close()

    def terminate(self):
        """Stop the workers now, without finishing outstanding work (as
        the stdlib; also what leaving a ``with`` block does)."""
        assert self._change_notifier is not None  # made in __init__
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
