"""``gb.Manager``: a ``SyncManager`` that also makes shared-memory rings
(SPEC §3.3).

``manager.Ring(...)``, ``manager.JoinableRing(...)`` and ``manager.Pipe()``
return real rings and connections (not proxies): the manager process
creates and owns the segments, so they outlive the process that asked for
them and are removed when the manager shuts down.  Every usual
``SyncManager`` proxy (``dict``, ``list``, ``Lock``, ``Queue``...) works
as before.
"""
import os
import pickle
import threading
from multiprocessing import managers as _std
from typing import Any, Callable

from ..ring import JoinableRing as _JoinableRing, Ring as _Ring, _remove_ring
from .connection import Pipe as _Pipe

__all__ = list(getattr(_std, "__all__", [])) + ["GBManager", "Manager"]
globals().update((n, getattr(_std, n)) for n in getattr(_std, "__all__", []))


def __getattr__(name):
    # every other name of multiprocessing.managers (DictProxy, AutoProxy,
    # Namespace, ...) is the stdlib's
    try:
        return getattr(_std, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


class _Segments:
    """Lives in the manager process: makes rings and keeps them (the
    manager process is their owner)."""

    def __init__(self):
        self.rings = []
        self.pipes = []
        self.lock = threading.Lock()

    def ring(self, joinable, args, kwargs):
        r = (_JoinableRing if joinable else _Ring)(*args, **kwargs)
        with self.lock:
            self.rings.append(r)
        return r.name

    def pipe(self, duplex):
        c1, c2 = _Pipe(duplex)
        # keep the rings (their owner) here; hand the connections over.
        # Pickling marks both ends pending until the client attaches, so
        # closing our copies now does not look like EOF to anyone.
        with self.lock:
            self.pipes.append(c1._owner)
        blob = pickle.dumps((c1, c2))
        c1.close()
        c2.close()
        return blob

    def release(self):
        """Remove every segment made here: the manager is shutting down.
        (Also done by the rings' own finalizers when this process exits,
        but a manager that does not exit in time is terminated.)"""
        with self.lock:
            rings, self.rings = self.rings, []
            pipes, self.pipes = self.pipes, []
        for r in rings:
            if r._finalizer is not None:
                r._finalizer.cancel()
            name = r.name
            r.close()
            _remove_ring(name, os.getpid())
        for owner in pipes:
            owner.release()
        return len(rings) + len(pipes)


_segments = None


def _get_segments():
    global _segments
    if _segments is None or _segments_pid != os.getpid():
        _set(_Segments())
    return _segments


_segments_pid = None


def _set(s):
    global _segments, _segments_pid
    _segments, _segments_pid = s, os.getpid()


class _SegmentsProxy(_std.BaseProxy):
    _exposed_ = ("ring", "pipe", "release")

    def ring(self, joinable, args, kwargs):
        return self._callmethod("ring", (joinable, args, kwargs))

    def pipe(self, duplex):
        return self._callmethod("pipe", (duplex,))

    def release(self):
        return self._callmethod("release")


class GBManager(_std.SyncManager):
    """``multiprocessing.managers.SyncManager`` plus ring factories.

    Start it yourself (``start()``, or ``with GBManager() as m:``) as any
    ``SyncManager``.  ``Ring()``, ``JoinableRing()`` and ``Pipe()`` return
    real rings and connections (not proxies) whose segments the manager
    process owns: they stay until the manager shuts down and are removed
    then, even if the process that asked for them died.  Every
    ``SyncManager`` proxy (``dict()``, ``list()``, ``Lock()``, ...) works
    as before.
    """

    _gb_segments: Callable[[], Any]  # registered below: the server's segment table

    def _segments(self):
        proxy = self._gb_segments()
        return proxy

    def Ring(self, maxsize=0, **kwargs):
        """A ``gb.Ring`` owned by the manager process; takes the same
        arguments as ``gb.Ring()``."""
        name = self._gb_segments().ring(False, (maxsize,), kwargs)
        return _Ring.attach(name, model=_model(kwargs), serializer=_custom(kwargs))

    def JoinableRing(self, maxsize=0, **kwargs):
        """A ``gb.JoinableRing`` owned by the manager process (arguments as
        ``gb.Ring()``)."""
        name = self._gb_segments().ring(True, (maxsize,), kwargs)
        return _JoinableRing.attach(name, model=_model(kwargs), serializer=_custom(kwargs))

    def Pipe(self, duplex=True):
        """A ``gb.Pipe()`` whose rings the manager process owns."""
        return pickle.loads(self._gb_segments().pipe(duplex))

    @staticmethod
    def _finalize_manager(process, address, authkey, state, _Client, *args):
        # shutdown(): have the server remove its segments first, so they go
        # even if the server process is then terminated for exiting slowly
        if state.value == _std.State.STARTED and process.is_alive():  # type: ignore[attr-defined]
            try:
                _release_remote(address, authkey, _Client)
            except Exception:
                pass
        _std.SyncManager._finalize_manager(  # type: ignore[attr-defined]
            process, address, authkey, state, _Client, *args)


def _release_remote(address, authkey, client):
    clients = _std.listener_client.items()  # type: ignore[attr-defined]
    serializer = next((k for k, (_, c) in clients if c is client), "pickle")
    m = GBManager(address=address, authkey=authkey, serializer=serializer)
    m.connect()
    proxy = m._gb_segments()
    try:
        proxy.release()
    finally:
        del proxy


def _model(kwargs):
    from ..codec import is_model
    s = kwargs.get("schema")
    return s if is_model(s) else None


def _custom(kwargs):
    s = kwargs.get("serializer")
    return s if isinstance(s, tuple) else None


GBManager.register("_gb_segments", callable=_get_segments, proxytype=_SegmentsProxy)


class Manager(GBManager):
    """A ``GBManager`` that starts at once, so ``gb.Manager()`` is used
    like ``multiprocessing.Manager()``, and as a context manager that shuts
    the manager down on exit.

    ``address``, ``authkey``, ``serializer`` and ``ctx`` are as for
    ``multiprocessing.managers.SyncManager`` (``ctx`` picks the start method
    of the manager process); ``start=False`` leaves starting to you.
    """

    def __init__(self, address=None, authkey=None, serializer="pickle", ctx=None, *,
                 start=True, **kwargs):
        super().__init__(address, authkey, serializer, ctx, **kwargs)
        if start:
            self.start()
