"""global_buffer: named shared-memory rings for Python processes on one host.

``import global_buffer as gb``

- Streams: ``gb.create(name, schema, capacity)`` / ``gb.attach(name)``.
- Exceptions: ``gb.Empty``, ``gb.Full``, ``gb.BufferClosed``, ... (SPEC §6).

See README.md and docs/ for the whole contract.
"""
try:
    from . import _core  # noqa: F401 - imported first: a clear error if it is not built
except ImportError as _error:  # pragma: no cover - depends on how the package was built
    def _no_core_message(error):
        """Say which global_buffer was imported, why it has no usable core and
        what fixes that (tested by tests/test_first_command.py).  The usual
        case: Python started in a clone (``python -m`` and ``python -c`` put
        the current directory first on sys.path) imports the clone's unbuilt
        ``global_buffer/`` instead of the copy pip installed."""
        import importlib.machinery as machinery
        import os
        import sys

        here = os.path.dirname(os.path.realpath(__file__))
        root = os.path.dirname(here)
        names = ["_core" + s for s in machinery.EXTENSION_SUFFIXES]

        def core_in(d):
            return next((os.path.join(d, n) for n in names
                         if os.path.isfile(os.path.join(d, n))), None)

        built = core_in(here)
        if built:
            return (f"global_buffer's compiled core {built} failed to load ({error}); "
                    "rebuild it for this Python and numpy (`pip install -e .` in a "
                    "clone, or reinstall the package).")
        if not (os.path.isfile(os.path.join(root, "setup.py"))
                and os.path.isfile(os.path.join(root, "pyproject.toml"))):
            return (f"global_buffer at {here} has no compiled core for this Python "
                    f"(no {names[0]}): it was installed for another interpreter or "
                    f"incompletely; reinstall it with this Python's pip. ({error})")
        # a source tree: look for another copy, as an import without this tree would
        other = None
        path = [p for p in sys.path if os.path.realpath(p or os.curdir) != root]
        finders = [f for f in sys.meta_path if f not in (
            machinery.BuiltinImporter, machinery.FrozenImporter, machinery.PathFinder)]
        for finder, where in [(machinery.PathFinder, path)] + [(f, None) for f in finders]:
            try:
                spec = finder.find_spec(__name__, where)
            except Exception:
                continue
            if spec is not None and spec.origin:
                d = os.path.dirname(os.path.realpath(spec.origin))
                if d != here:
                    other = d
                    break
        message = (f"global_buffer was imported from the source tree at {here}, whose "
                   f"compiled core is not built for this Python (no {names[0]} there): "
                   f"{root} is on sys.path ahead of any installed copy (`python -m` and "
                   "`python -c` put the current directory first). Build the core in place with "
                   f"`pip install -e .` in {root} (`pip install .` leaves a copy there "
                   "too with pip >= 21.3, not with an older pip)")
        if other is None:
            message += (f", or install the package (`pip install .` in {root}) and run "
                        "Python from outside that directory; no other copy of "
                        "global_buffer is on sys.path.")
        elif core_in(other):
            message += (f", or run Python from outside {root} to use the installed copy "
                        f"at {other}.")
        else:
            message += (f"; the other copy on sys.path, at {other}, has no compiled core "
                        "for this Python either.")
        return f"{message} (original error: {error})"

    raise ImportError(_no_core_message(_error)) from _error

from .bridge import Bridge
from .errors import (
    BridgeError,
    BufferClosed,
    BufferCorrupt,
    BufferExists,
    BufferNotFound,
    Empty,
    Full,
    GlobalBufferError,
    SchemaMismatch,
    StaleView,
    WorkerLost,
    WriterGone,
)
from .multiprocessing.connection import Connection, Pipe
from .multiprocessing.context import get_context
from .multiprocessing.managers import GBManager, Manager
from .multiprocessing.pool import Pool
from .ring import JoinableRing, Ring
from .schema import ArraySpec
from .stream import CallbackHandle, Consumer, GlobalBuffer, Reader, attach, create, unlink

__version__ = "0.1.0"

__all__ = [
    "ArraySpec",
    "Bridge",
    "BridgeError",
    "BufferClosed",
    "BufferCorrupt",
    "BufferExists",
    "BufferNotFound",
    "CallbackHandle",
    "Connection",
    "Consumer",
    "Empty",
    "Full",
    "GBManager",
    "GlobalBuffer",
    "GlobalBufferError",
    "JoinableRing",
    "Manager",
    "Pipe",
    "Pool",
    "Reader",
    "Ring",
    "SchemaMismatch",
    "StaleView",
    "WriterGone",
    "WorkerLost",
    "attach",
    "create",
    "get_context",
    "unlink",
]
