"""Exceptions raised by global_buffer (SPEC §6).

Each subclasses :class:`GlobalBufferError`, and also the builtin or stdlib
exception existing code already catches: ``except queue.Empty`` keeps
working with ``gb.Empty``, ``except ValueError`` with ``gb.BufferClosed``.
"""
import multiprocessing
import queue

__all__ = [
    "GlobalBufferError",
    "Empty",
    "Full",
    "SchemaMismatch",
    "BufferClosed",
    "BufferExists",
    "BufferNotFound",
    "BufferCorrupt",
    "StaleView",
    "WriterGone",
    "WorkerLost",
    "BridgeError",
]


class GlobalBufferError(Exception):
    """Base class of every global_buffer error."""


class Empty(GlobalBufferError, queue.Empty):
    """Nothing arrived before the timeout (also ``queue.Empty``)."""


class Full(GlobalBufferError, queue.Full):
    """No room before the timeout (also ``queue.Full``)."""


class SchemaMismatch(GlobalBufferError, TypeError):
    """The model given to ``attach`` differs from the stream's schema."""


class BufferClosed(GlobalBufferError, ValueError):
    """The handle was closed (also ``ValueError``, as for closed files)."""


class BufferExists(GlobalBufferError, FileExistsError):
    """A segment of that name already exists."""


class BufferNotFound(GlobalBufferError, FileNotFoundError):
    """No segment of that name exists."""


class BufferCorrupt(GlobalBufferError):
    """The named segment is not a valid global_buffer segment."""


class StaleView(GlobalBufferError):
    """The writer overwrote a slot while a zero-copy view of it was open."""


class WriterGone(GlobalBufferError, EOFError):
    """A stream's writer closed it or died, and this reader has read every
    sample it committed (also ``EOFError``): a blocking read raises this
    instead of waiting forever.  Not an ``Empty``: a loop that retries on
    ``gb.Empty`` ends.  A writer that re-creates the name makes a new
    stream: attach again."""


class WorkerLost(GlobalBufferError, multiprocessing.ProcessError):
    """A ``gb.Pool`` worker died while running a task, so its result is
    lost (also ``multiprocessing.ProcessError``).  ``pid`` is the worker's
    process id, ``exitcode`` its exit code (negative: killed by that signal).
    """

    def __init__(self, pid, exitcode=None, message=None):
        self.pid = pid
        self.exitcode = exitcode
        if message is None:
            message = f"pool worker process {pid} died (exit code {exitcode}) while running a task"
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (self.pid, self.exitcode, str(self)))


class BridgeError(GlobalBufferError):
    """The bridge between hosts (SPEC §9) refused something: a name not
    exported or imported, a peer speaking another wire or layout version,
    malformed or truncated data from the wire.  Nothing was written."""
