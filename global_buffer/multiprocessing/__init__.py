"""``import global_buffer.multiprocessing as multiprocessing``: the one-line
migration.

Every public name of ``multiprocessing`` is here.  ``Queue``,
``SimpleQueue``, ``JoinableQueue``, ``Pipe``, ``Pool`` and ``Manager`` are
the shared-memory ring versions (``gb.Ring``, ``gb.JoinableRing``,
``gb.Pipe``, ``gb.Pool``, ``gb.Manager``), taken from this module's default
context as the stdlib takes its module functions from its own, so the module
and ``get_context()`` agree by construction.  Everything else is the
stdlib's very object, so ``Process``, locks and ``set_start_method`` act on
the stdlib's state.  The submodules ``connection``, ``managers``,
``pool`` and ``queues`` carry the ring-backed names (``queues.SimpleQueue``;
its ``Queue`` / ``JoinableQueue`` classes stay the stdlib's, for subclasses
that rely on their internals); any other (``shared_memory``, ``dummy``,
...) is the stdlib's.

The contexts work as ``mp_context`` of
``concurrent.futures.ProcessPoolExecutor`` and ``context`` of
``multiprocessing.pool.Pool``: those use ``SimpleQueue`` through its
private attributes, which ours has, with the stdlib's semantics.
"""
import multiprocessing as _mp

from . import context

# the stdlib's public names, as its very objects (Process, Lock, Event,
# cpu_count, set_start_method, ...)
__all__ = list(_mp.__all__)
globals().update((n, getattr(_mp, n)) for n in __all__)

# then what our default context does differently: the ring-backed factories
# and get_context() returning contexts with the same substitutions
_RING_BACKED = ("Queue", "SimpleQueue", "JoinableQueue", "Pipe", "Pool", "Manager")
globals().update((n, getattr(context._default_context, n)) for n in _RING_BACKED + ("get_context",))
__all__ += [n for n in dir(context._default_context)
            if not n.startswith("_") and n not in __all__]

# stdlib submodules reachable as attributes (multiprocessing.util, ...)
from multiprocessing import (  # noqa: E402, F401
    heap,
    process,
    reduction,
    sharedctypes,
    synchronize,
    util,
)

from . import connection, managers, queues  # noqa: E402, F401

# not in typeshed's multiprocessing, but in CPython's
SUBDEBUG = _mp.SUBDEBUG  # type: ignore[attr-defined]
SUBWARNING = _mp.SUBWARNING  # type: ignore[attr-defined]


def __getattr__(name):
    # submodules, ours first (multiprocessing.pool -> ring-backed Pool), then
    # the stdlib's (multiprocessing.shared_memory, .dummy, .spawn, ...)
    import importlib
    if name == "pool":
        return importlib.import_module(".pool", __name__)
    try:
        return importlib.import_module(f"multiprocessing.{name}")
    except ImportError:
        pass
    try:
        return getattr(_mp, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
