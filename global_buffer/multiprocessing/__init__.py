"""``import global_buffer.multiprocessing as multiprocessing``: the one-line
migration (SPEC §3.3).

Every public name of :mod:`multiprocessing` is here.  ``Queue``,
``SimpleQueue``, ``JoinableQueue``, ``Pipe``, ``Pool`` and ``Manager`` are
the shared-memory ring versions; everything else is the stdlib's.  As in
the stdlib, the module's functions are those of the default context, so the
module and ``get_context()`` agree by construction.
"""
import multiprocessing as _mp
import sys

from . import context

# the stdlib's public names first (Process, Lock, Event, cpu_count, ...)
__all__ = list(_mp.__all__)
globals().update((n, getattr(_mp, n)) for n in __all__)

# then everything the default context offers, ring-backed where we differ
_ctx_names = [x for x in dir(context._default_context) if not x.startswith("_")]
globals().update((n, getattr(context._default_context, n)) for n in _ctx_names)
__all__ += [n for n in _ctx_names if n not in __all__]

# stdlib submodules reachable as attributes (multiprocessing.util, ...)
from multiprocessing import (  # noqa: E402
    process, reduction, sharedctypes, synchronize, util, queues, heap,
)
from . import connection, managers  # noqa: E402

SUBDEBUG = _mp.SUBDEBUG
SUBWARNING = _mp.SUBWARNING


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
