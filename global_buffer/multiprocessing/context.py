"""Contexts whose ``Queue``, ``SimpleQueue``, ``JoinableQueue``, ``Pipe``,
``Pool`` and ``Manager`` are the ring-backed ones (SPEC §3.3).

Each context subclasses the stdlib context of the same start method, so
``Process``, locks, ``get_start_method`` and everything else are the
stdlib's; only the factories differ.  Factories import lazily, as the
stdlib's do.
"""
import multiprocessing.context as _std

__all__ = ["get_context", "DefaultContext", "ForkContext", "SpawnContext",
           "ForkServerContext"]


class _RingFactories:
    """The ring-backed factories, mixed into each stdlib context class."""

    def Queue(self, maxsize=0):
        """A ``gb.Ring`` (the ``multiprocessing.Queue`` drop-in)."""
        from ..ring import Ring
        return Ring(maxsize)

    def JoinableQueue(self, maxsize=0):
        """A ``gb.JoinableRing``."""
        from ..ring import JoinableRing
        return JoinableRing(maxsize)

    def SimpleQueue(self):
        """A ring-backed ``SimpleQueue`` with the stdlib's private
        attributes (``_reader``, ``_writer``, ``_rlock``, ``_wlock``,
        ``_poll``), so ``concurrent.futures.ProcessPoolExecutor`` and
        ``multiprocessing.pool.Pool`` work on this context."""
        from .queues import SimpleQueue
        return SimpleQueue(ctx=self.get_context())

    def Pipe(self, duplex=True):
        """A ``gb.Pipe()``."""
        from .connection import Pipe
        return Pipe(duplex)

    def Pool(self, processes=None, initializer=None, initargs=(), maxtasksperchild=None):
        """A ``gb.Pool`` using this context's start method."""
        from .pool import Pool
        return Pool(processes, initializer, initargs, maxtasksperchild,
                    context=self.get_context())

    def Manager(self):
        """A started ``gb.Manager`` using this context's start method."""
        from .managers import Manager
        return Manager(ctx=self.get_context())

    def get_context(self, method=None):
        if method is None:
            return self
        return _ours(_std._default_context.get_context(method))


def _ours(std_ctx):
    """Our context for a stdlib concrete context."""
    try:
        return _concrete[std_ctx._name]
    except KeyError:
        raise ValueError(f"cannot find context for {std_ctx._name!r}") from None


_std_contexts = _std._concrete_contexts  # type: ignore[attr-defined]  # private, not in typeshed
_concrete = {}
for _method in ("fork", "spawn", "forkserver"):
    _base = type(_std_contexts[_method]) if _method in _std_contexts else None
    if _base is None:
        continue
    _cls = type(_base.__name__, (_RingFactories, _base), {"__module__": __name__})
    _concrete[_method] = _cls()
    globals()[_base.__name__] = _cls

ForkContext = globals().get("ForkContext")
SpawnContext = globals().get("SpawnContext")
ForkServerContext = globals().get("ForkServerContext")


class DefaultContext(_RingFactories, _std.BaseContext):
    """The module-level context: the start method is the stdlib's (setting
    it here sets it for ``multiprocessing`` too, since both start the same
    ``Process`` class)."""

    Process = _std.Process

    def get_context(self, method=None):
        return _ours(_std._default_context.get_context(method))

    def get_start_method(self, allow_none=False):
        return _std._default_context.get_start_method(allow_none)

    def set_start_method(self, method, force=False):
        _std._default_context.set_start_method(method, force)

    def get_all_start_methods(self):
        return _std._default_context.get_all_start_methods()

    def Pool(self, processes=None, initializer=None, initargs=(), maxtasksperchild=None):
        from .pool import Pool
        return Pool(processes, initializer, initargs, maxtasksperchild,
                    context=self.get_context())

    def Manager(self):
        from .managers import Manager
        return Manager(ctx=self.get_context())


_default_context = DefaultContext()


def get_context(method=None):
    """A context for start method ``method`` ("fork", "spawn",
    "forkserver"; ``None``: the current default), as
    ``multiprocessing.get_context``, whose ``Queue``, ``SimpleQueue``,
    ``JoinableQueue``, ``Pipe``, ``Pool`` and ``Manager`` are the
    ring-backed ones.  Everything else (``Process``, locks, ...) is the
    stdlib context's own.  ``ValueError`` for an unknown method."""
    return _default_context.get_context(method)
