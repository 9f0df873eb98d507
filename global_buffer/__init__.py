"""global_buffer: named shared-memory rings for Python processes on one host.

``import global_buffer as gb``

- Streams: ``gb.create(name, schema, capacity)`` / ``gb.attach(name)``.
- Exceptions: ``gb.Empty``, ``gb.Full``, ``gb.BufferClosed``, ... (SPEC §6).

See README.md and docs/ for the whole contract.
"""
try:
    from . import _core
except ImportError as e:  # pragma: no cover - depends on the checkout state
    raise ImportError(
        "global_buffer's compiled core (global_buffer._core) is not built. "
        "Install the package with `pip install -e .` (or `pip install .`) from the "
        "project root, or build in place with `python setup.py build_ext --inplace`. "
        f"(original error: {e})") from e

from .errors import (
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
)
from .pool import Pool
from .ring import JoinableRing, Ring
from .multiprocessing.connection import Connection, Pipe
from .multiprocessing.context import get_context
from .multiprocessing.managers import GBManager, Manager
from .schema import ArraySpec
from .stream import CallbackHandle, Consumer, GlobalBuffer, Reader, attach, create, unlink

__version__ = "0.1.0"

__all__ = [
    "ArraySpec",
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
    "WorkerLost",
    "attach",
    "create",
    "get_context",
    "unlink",
]
