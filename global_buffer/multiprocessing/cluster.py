"""``gb.Pool(..., cluster=X)``: the Pool API with tasks run on Dask
distributed (SPEC §3.3, §9).

``X`` is a ``distributed.Client`` (used, never closed), a scheduler address
(``"tcp://host:8786"``: the pool opens a client and closes it), or
``"local"`` (the pool starts a ``LocalCluster`` on 127.0.0.1 with no
dashboard, ``processes`` single-threaded worker processes, and closes it).

How it works.  The public methods and result objects are the stdlib's
(``multiprocessing.pool.Pool``'s ``apply_async``, ``map_async``, ``imap``,
... and ``ApplyResult``, ``MapResult``, the ``imap`` iterators), so order,
chunking, callbacks and error callbacks behave as there; the transport is
three threads:

- the *feeder* walks each job's task generator (lazily, as the stdlib's task
  handler does) onto a queue;
- the *submitter* takes whatever tasks are waiting, up to 1,024, and submits
  them as one ``client.map`` (one graph update for the batch).  Each task is
  a call of :func:`_run` on two byte strings made here: the function (pickle,
  or cloudpickle for lambdas and closures; made once per function and shared
  by the batch) and the chunk of arguments;
- the *collector* is woken as each future is done (a watcher on the
  client's event loop) and fetches finished results, many per
  ``client.gather`` (see :meth:`ClusterPool._collect`), then hands
  ``(success, value)`` to the result object, which runs the callbacks.

A task's exception travels as the stdlib pool's does: re-raised in the
caller with the remote traceback as its ``__cause__``
(``multiprocessing.pool.RemoteTraceback``).

**Lost workers: retried, then** :class:`gb.WorkerLost`.  When a worker dies
mid-task, Dask's scheduler runs the task again on another worker (a
``LocalCluster``'s nanny also restarts the dead one), so the result arrives
as if nothing happened; a task may therefore run more than once.  Only when
workers died running the same task more than
``distributed.scheduler.allowed-failures`` times (Dask's default: 3) does
Dask give up (``KilledWorker``), and that task's result raises
``gb.WorkerLost`` (the ``KilledWorker`` as its ``__cause__``).  The pool
keeps serving either way.

**Rings.**  A ring passed to a task pickles by name and the worker attaches
it (SPEC §3.1): on workers of this host (``"local"``) that just works.  A
ring reaches a task on another host only when the §9 bridge shares it
there; otherwise the worker cannot attach the name and the task fails with
:class:`gb.BufferNotFound` saying so.

**initializer**: ``initializer(*initargs)`` runs once on every worker of
the cluster, including workers that join later, through a Dask worker
plugin registered for the pool's lifetime (removed at ``join()`` after
``close()``, or at ``terminate()``).  On a shared cluster it runs on every
worker, whichever pool's tasks they run.  If it raises on a worker present
at construction, the constructor raises it.
"""
import asyncio
import itertools
import os
import pickle
import queue
import socket
import threading
import time
import types
import warnings
import weakref
from multiprocessing import pool as _mp_pool, util
from multiprocessing.pool import (  # type: ignore[attr-defined]  # undocumented: not in typeshed
    CLOSE,
    INIT,
    RUN,
    TERMINATE,
    ExceptionWithTraceback,
    MapResult,
    MaybeEncodingError,
    _helper_reraises_exception,
    _PoolCache,
    mapstar,
    starmapstar,
)
from typing import Any, Dict, List, Optional, Tuple, Union

try:
    import distributed
    from distributed.client import done_callback as _done_callback
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError as e:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "gb.Pool(cluster=...) runs tasks on Dask distributed, which is not installed: "
        "pip install 'global_buffer[dask]'") from e

from ..errors import BufferNotFound, WorkerLost
from .pool import _set_result

__all__ = ["ClusterPool"]

_BATCH = 1024  # tasks per client.map at most
_HOST = socket.gethostname()


# -- what travels ----------------------------------------------------------------

def _dumps(obj):
    """pickle, or cloudpickle for what pickle cannot do (lambdas, closures)
    and for what names ``__main__`` (a worker elsewhere has another main
    module: cloudpickle carries such functions and classes by value, as
    Dask itself does)."""
    try:
        data = pickle.dumps(obj, protocol=5)
        if b"__main__" not in data:
            return data
    except Exception:
        pass
    import cloudpickle
    return cloudpickle.dumps(obj, protocol=5)


def _ring_error(exc, where, origin):
    """The §9 error for a ring name that cannot be attached here."""
    elsewhere = origin is not None and origin != _HOST
    msg = (f"{exc} on {where} (host {_HOST!r}"
           + (f"; the pool's client is on host {origin!r}" if elsewhere else "")
           + "): a ring reaches a task on another host only when it is shared across "
             "hosts (SPEC §9: a global_buffer bridge exporting it on its host and "
             "importing it on this one); a ring not shared that way works only on "
             "workers of the host that made it")
    err = BufferNotFound(msg)
    err.__cause__ = exc
    return err


def _loads(data, where, origin):
    try:
        return pickle.loads(data)
    except BufferNotFound as e:
        raise _ring_error(e, where, origin) from e


_FUNCS: Dict[bytes, Any] = {}  # worker side: function bytes -> function (a job's tasks share one)


def _function(fbytes, origin):
    f = _FUNCS.get(fbytes)
    if f is None:
        f = _loads(fbytes, "this Dask worker", origin)
        if len(_FUNCS) >= 64:
            _FUNCS.clear()
        _FUNCS[fbytes] = f
    return f


def _run(fspec, payload):
    """One task, on a Dask worker: returns the pickled ``(success, value)``.

    ``fspec`` is ``(origin host, pickled function)``; ``payload`` the pickled
    ``(mode, args, kwds)``: mode 0 calls ``func(*args, **kwds)``, 1 maps
    ``func`` over the chunk ``args``, 2 star-maps it."""
    origin, fbytes = fspec
    try:
        func = _function(fbytes, origin)
        mode, args, kwds = _loads(payload, "this Dask worker", origin)
        if mode == 0:
            value = func(*args, **kwds)
        elif mode == 1:
            value = list(map(func, args))
        else:
            value = list(itertools.starmap(func, args))
        result = (True, value)
    except Exception as e:
        result = (False, ExceptionWithTraceback(e, e.__traceback__))
    try:
        return _dumps(result)
    except Exception as e:
        return _dumps((False, MaybeEncodingError(e, result[1])))


class _Initializer(WorkerPlugin):
    """Runs the pool's ``initializer(*initargs)`` on every worker, those
    that join later included (Dask sends registered plugins to new
    workers)."""

    def __init__(self, blob, origin):
        self.blob = blob
        self.origin = origin

    def setup(self, worker):
        func, args = _loads(self.blob, f"Dask worker {worker.address}", self.origin)
        func(*args)


# -- the pool ----------------------------------------------------------------------

class _Workers:
    """``Pool._pool`` for the stdlib's methods: its length is the cluster's
    worker threads now (the default chunksize of ``map`` depends on it)."""

    def __init__(self, client, fallback):
        self._client = client
        self._fallback = fallback

    def __len__(self):
        try:
            return sum(self._client.nthreads().values()) or self._fallback
        except Exception:
            return self._fallback

    def __iter__(self):
        return iter(())


def _watch(futures, put):
    """On the client's event loop: ``put(future)`` as each one is done.

    ``Future.add_done_callback`` does the same through one more thread (a
    hand-off per task, and an error at interpreter exit once that thread's
    executor is shut down); ``put`` is a ``SimpleQueue.put``, which never
    blocks, so it may run on the loop itself."""
    for f in futures:
        asyncio.ensure_future(_done_callback(f, put))


def _key_name(func):
    name = getattr(func, "__name__", "")
    return "".join(c for c in name if c.isalnum() or c == "_")[:40] or "task"


def _thread_main(method, pool):
    try:
        method(pool)
    except ReferenceError:
        pass  # the pool was collected; its finalizer stops the other threads


class _Batch:
    """Finished futures the collector has taken, and whether any of them is
    wanted now (``urgent``: not a chunk of a map that is still running) or is
    a marker."""

    __slots__ = ("items", "counts", "urgent", "marker", "futures", "cache")

    def __init__(self, futures, cache):
        self.items, self.counts = [], {}
        self.urgent = self.marker = False
        self.futures, self.cache = futures, cache

    def add(self, f):
        self.items.append(f)
        if f is _HALT or f is _STOP:
            self.marker = True
            return
        entry = self.futures.get(f.key)
        if entry is None:
            self.urgent = True
            return
        job = entry[0]
        n = self.counts[job] = self.counts.get(job, 0) + 1
        r = self.cache.get(job)
        # a MapResult is ready only once every chunk is in
        if (type(r) is not MapResult
                or n >= r._number_left):  # type: ignore[attr-defined]  # not in typeshed
            self.urgent = True


_STOP = object()   # collector: the submitter is done
_HALT = object()   # collector: terminate now


class ClusterPool(_mp_pool.Pool):
    """``gb.Pool(processes, initializer, initargs, cluster=X)``: the
    ``multiprocessing.Pool`` API with tasks run on Dask distributed.

    Parameters
    ----------
    processes : int, optional
        With ``cluster="local"``, the number of worker processes (one thread
        each; default ``os.cpu_count()``).  With an existing cluster the
        cluster decides, and this is ignored.
    initializer : callable, optional
        Called as ``initializer(*initargs)`` once on every worker of the
        cluster, also on workers that join later.
    initargs : tuple
        Arguments of ``initializer``.
    maxtasksperchild : None
        Not supported on a cluster (``ValueError`` otherwise).
    context : None
        Not used on a cluster (``ValueError`` otherwise).
    cluster : distributed.Client, str
        A ``distributed.Client`` (never closed by the pool), a scheduler
        address such as ``"tcp://127.0.0.1:8786"`` (the pool's own client,
        closed with the pool), or ``"local"`` (a ``LocalCluster`` on
        127.0.0.1 started and closed by the pool).
    """

    _pool: Union[List[Any], _Workers]  # stdlib Pool's name; only its len() is used
    _taskqueue: "queue.SimpleQueue[Any]"
    _submitq: "queue.SimpleQueue[Any]"
    _doneq: "queue.SimpleQueue[Any]"

    def __init__(self, processes=None, initializer=None, initargs=(),
                 maxtasksperchild=None, context=None, *, cluster):
        # what __del__, repr() and the error paths use, first; _shared holds
        # what the finalizer needs (it must not hold the pool: a pool dropped
        # unclosed is collected and terminated, as the stdlib's)
        self._shared = types.SimpleNamespace(state=INIT)
        self._pool = []
        self._change_notifier = None
        self._own_client = self._own_cluster = None
        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None:
            raise ValueError("maxtasksperchild is not supported with cluster= "
                             "(Dask workers are long-lived)")
        if context is not None:
            raise ValueError("context= does not apply with cluster= (Dask starts the workers)")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")

        self._client = self._connect(cluster, processes)
        try:
            self._processes = processes or sum(self._client.nthreads().values()) or 1
            self._pool = _Workers(self._client, self._processes)
            self._plugin = None
            if initializer is not None:
                name = f"gb-pool-init-{os.getpid():x}-{id(self):x}-{os.urandom(4).hex()}"
                plugin = _Initializer(_dumps((initializer, tuple(initargs))), _HOST)
                self._plugin = name  # set first: a failed setup leaves it registered
                self._client.register_plugin(plugin, name=name)
        except BaseException:
            self._release(self._client, self._plugin if hasattr(self, "_plugin") else None,
                          self._own_client, self._own_cluster)
            raise

        self._token = f"gb-{os.getpid():x}-{os.urandom(4).hex()}"
        self._change_notifier = queue.SimpleQueue()
        self._cache = _PoolCache(notifier=self._change_notifier)
        sh = self._shared
        sh.taskqueue = self._taskqueue = queue.SimpleQueue()
        sh.submitq = self._submitq = queue.SimpleQueue()
        sh.doneq = self._doneq = queue.SimpleQueue()
        # key -> (job, index, future); the collector removes
        sh.futures = self._futures = {}
        sh.client, sh.plugin = self._client, self._plugin
        sh.own_client, sh.own_cluster = self._own_client, self._own_cluster

        self._task_handler = self._start(ClusterPool._feed, "feeder")
        self._submitter = self._start(ClusterPool._submit, "submitter")
        self._result_handler = self._start(ClusterPool._collect, "collector")
        sh.threads = (self._task_handler, self._submitter, self._result_handler)
        self._terminate = util.Finalize(self, ClusterPool._terminate_pool, args=(sh,),
                                        exitpriority=15)
        self._state = RUN

    @property
    def _state(self):
        return self._shared.state

    @_state.setter
    def _state(self, value):
        self._shared.state = value

    def _connect(self, cluster, processes):
        if isinstance(cluster, distributed.Client):
            return cluster
        if isinstance(cluster, str) and cluster == "local":
            n = processes or os.cpu_count() or 1
            self._own_cluster = distributed.LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True,
                host="127.0.0.1", dashboard_address=None,
                # no dashboard; the scheduler's small HTTP server (health
                # routes) on a free loopback port, not 8787
                scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
            try:
                self._own_client = distributed.Client(self._own_cluster)
            except BaseException:
                self._own_cluster.close()
                raise
            return self._own_client
        if isinstance(cluster, str) and "://" in cluster:
            self._own_client = distributed.Client(cluster)
            return self._own_client
        raise ValueError(f"cluster must be a distributed.Client, a scheduler address "
                         f"('tcp://host:port') or 'local', not {cluster!r}")

    def _start(self, method, what):
        # the thread sees the pool through a weak proxy, so that it does not
        # keep the pool alive
        t = threading.Thread(target=_thread_main, args=(method, weakref.proxy(self)),
                             name=f"gb-cluster-pool-{what}", daemon=True)
        t.start()
        return t

    def __repr__(self):
        cls = type(self)
        try:
            where = self._client.scheduler.address
        except Exception:
            where = None
        return f"<{cls.__module__}.{cls.__qualname__} state={self._state} cluster={where}>"

    def __reduce__(self):
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    @property
    def client(self):
        """The ``distributed.Client`` the pool submits through."""
        return self._client

    # -- the three threads ------------------------------------------------------------

    def _feed(self):
        """Walk each job's tasks (lazily, like the stdlib's task handler)."""
        for taskseq, set_length in iter(self._taskqueue.get, None):
            task = None
            try:
                for task in taskseq:
                    if self._state == TERMINATE:
                        break
                    self._submitq.put(task)
                else:
                    if set_length:
                        set_length(task[1] + 1 if task else 0)
                    continue
                break
            finally:
                task = taskseq = None
        self._submitq.put(None)

    def _encode(self, task, funcs):
        job, i, func, args, kwds = task
        if func is mapstar or func is starmapstar:
            mode = 1 if func is mapstar else 2
            (func, chunk), = args
            payload: Tuple[int, Any, Any] = (mode, chunk, {})
        else:
            payload = (0, args, kwds)
        spec = funcs.get(id(func))
        if spec is None or spec[0] is not func:
            spec = (func, (_HOST, _dumps(func)))
            funcs[id(func)] = spec
        return spec[1], _dumps(payload)

    def _submit(self):
        """Submit what the feeder queued, a batch per ``client.map``."""
        funcs: Dict[int, Any] = {}  # id(func) -> (func, its spec): pickled once per function
        batch: Optional[List[Any]]
        done = False
        while not done:
            batch = [self._submitq.get()]
            try:
                while len(batch) < _BATCH:
                    batch.append(self._submitq.get_nowait())
            except queue.Empty:
                pass
            if len(funcs) > 64:
                funcs.clear()
            ids, specs, payloads, keys = [], [], [], []
            for task in batch:
                if task is None:
                    done = True
                    break
                if self._state == TERMINATE:
                    continue
                job, i = task[0], task[1]
                func = task[2]
                if func is _helper_reraises_exception:
                    # the job's iterable raised: fail here, as the stdlib's
                    # worker would, without a trip to the cluster
                    self._deliver(job, i, (False, task[3][0]))
                    continue
                if func is mapstar or func is starmapstar:
                    func = task[3][0][0]
                try:
                    spec, payload = self._encode(task, funcs)
                except Exception as e:
                    self._deliver(job, i, (False, e))
                    continue
                ids.append((job, i))
                specs.append(spec)
                payloads.append(payload)
                keys.append(f"{_key_name(func)}-{self._token}-{job}-{i}")
            task = batch = None
            if not ids or self._state == TERMINATE:
                continue
            try:
                futures = self._client.map(_run, specs, payloads, key=keys, pure=False)
            except Exception as e:
                for job, i in ids:
                    self._deliver(job, i, (False, e))
                continue
            for (job, i), f in zip(ids, futures):
                self._futures[f.key] = (job, i, f)
            self._client.loop.add_callback(_watch, futures, self._doneq.put)
            futures = None
        self._doneq.put(_STOP)

    def _collect(self):
        """Fetch finished results, many per gather, and hand them to their
        result objects.

        A gather is a round trip through the scheduler costing tens of ms on
        a busy 2-core host, so the collector gathers as few times as it can
        without delaying a result anyone waits for:

        - finished chunks of a ``map``/``starmap`` (a ``MapResult``, ready
          only once every chunk is in) wait until their job can complete,
          then go in one gather, as a plain ``client.gather(client.map(...))``
          does;
        - any other result (``apply``, ``imap``) waits for more finished
          tasks up to about four times what a gather has been costing, so at
          most a fifth of the time goes to gathers and their CPU stays with
          the workers; at once when nothing else is running."""
        stopping = False
        cost = 0.0  # recent seconds per gather (moving average)
        # dropped (None) at the end of each round
        batch: Optional[List[Any]]
        futures: Optional[List[Any]]
        finished: Optional[Dict[Any, Any]]
        data: Optional[Dict[Any, Any]]
        while not (stopping and not self._futures):
            b = _Batch(self._futures, self._cache)
            add, batch = b.add, b.items
            add(self._doneq.get())
            deadline = time.monotonic() + min(1.0, 4 * cost)
            while True:
                try:
                    while True:
                        add(self._doneq.get_nowait())
                except queue.Empty:
                    pass
                if b.marker or len(batch) >= min(len(self._futures), _BATCH * 4):
                    break
                if b.urgent:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                else:
                    left = 0.5  # only unfinished maps so far: nothing to hurry
                try:
                    add(self._doneq.get(timeout=left))
                except queue.Empty:
                    if b.urgent or self._state == TERMINATE:
                        break
            if self._state == TERMINATE or any(f is _HALT for f in batch):
                return
            if b.marker and any(f is _STOP for f in batch):
                stopping = True
            futures = [f for f in batch if f is not _STOP]
            finished = {f.key: f for f in futures if f.status == "finished"}
            data = {}
            if finished:
                t0 = time.monotonic()
                try:
                    data = self._client.gather(finished, errors="skip")
                    cost = 0.7 * cost + 0.3 * (time.monotonic() - t0)
                except Exception as e:
                    if self._state == TERMINATE:
                        return
                    data = {key: e for key in finished}
            for f in futures:
                entry = self._futures.pop(f.key, None)
                if entry is None:
                    continue
                job, i, _ = entry
                raw = data.get(f.key)
                if isinstance(raw, bytes):
                    obj = self._decode(raw)
                elif isinstance(raw, BaseException):
                    obj = (False, raw)
                else:
                    obj = (False, self._failure(f))
                self._deliver(job, i, obj)
            batch = futures = finished = data = raw = obj = None

    def _decode(self, raw):
        try:
            return _loads(raw, "the pool's client", None)
        except Exception as e:
            return (False, e)

    @staticmethod
    def _failure(future):
        """The exception for a future Dask failed or cancelled."""
        st = future._state
        exc = getattr(st, "exception", None)
        if isinstance(exc, distributed.KilledWorker):
            ws = exc.last_worker
            pid = getattr(ws, "pid", None)
            addr = getattr(ws, "address", ws)
            n = exc.allowed_failures
            lost = WorkerLost(pid, None, (
                f"Dask worker {addr} (pid {pid}) died running this task: {n + 1} "
                f"worker(s) died running it, and Dask retries such a task only "
                f"distributed.scheduler.allowed-failures = {n} time(s)"))
            lost.__cause__ = exc
            return lost
        if exc is None or future.status == "cancelled":
            from concurrent.futures import CancelledError
            err = CancelledError(f"Dask cancelled task {future.key!r} (cluster or client gone?)")
            err.__cause__ = exc if isinstance(exc, BaseException) else None
            return err
        if isinstance(exc, BaseException) and st.traceback is not None:
            exc = exc.with_traceback(st.traceback)
        return exc

    def _deliver(self, job, i, obj):
        # a callback that raises is reported; its result is set all the same
        _set_result(self._cache, job, i, obj)

    # -- lifecycle ----------------------------------------------------------------------

    def close(self):
        """Accept no more tasks; ``join()`` then waits for the queued ones."""
        if self._state == RUN:
            self._state = CLOSE
            self._taskqueue.put(None)

    def terminate(self):
        """Stop now: cancel outstanding tasks (their results never arrive, as
        with the stdlib), remove the initializer plugin, close the client
        and cluster the pool made (also what leaving a ``with`` block
        does)."""
        self._state = TERMINATE
        self._terminate()

    def join(self):
        """Wait for the queued tasks (after ``close()``) or the stop (after
        ``terminate()``), then release the cluster resources the pool holds."""
        if self._state == RUN:
            raise ValueError("Pool is still running")
        if self._state not in (CLOSE, TERMINATE):
            raise ValueError("In unknown state")
        for t in (self._task_handler, self._submitter, self._result_handler):
            t.join()
        self._terminate()

    @staticmethod
    def _terminate_pool(sh):
        # once: by terminate(), join(), the garbage collector or at exit
        if sh.state != TERMINATE and any(t.is_alive() for t in sh.threads):
            # finalized while running (collected or at exit): stop the threads
            sh.state = TERMINATE
        if sh.state == TERMINATE:
            sh.taskqueue.put(None)
            sh.submitq.put(None)
            sh.doneq.put(_HALT)
            pending = [f for _, _, f in list(sh.futures.values())]
            sh.futures.clear()
            if pending:
                try:
                    sh.client.cancel(pending, force=True)
                except Exception:
                    pass
            current = threading.current_thread()
            for t in sh.threads:
                if t is not current:
                    t.join(10)
        ClusterPool._release(sh.client, sh.plugin, sh.own_client, sh.own_cluster)

    @staticmethod
    def _release(client, plugin, own_client, own_cluster):
        if plugin is not None:
            try:
                client.unregister_worker_plugin(plugin)
            except Exception:
                pass
        for thing in (own_client, own_cluster):
            if thing is not None:
                try:
                    thing.close()
                except Exception:
                    pass

    def __del__(self, _warn=warnings.warn, RUN=RUN):
        if getattr(self, "_state", None) == RUN:
            _warn(f"unclosed running multiprocessing pool {self!r}", ResourceWarning, source=self)
