"""``multiprocessing.queues`` names, with a ring-backed :class:`SimpleQueue`
(SPEC §3.3).

``SimpleQueue`` is built the way the stdlib builds its own, so that code
written against the stdlib's private attributes works on it unchanged:
``concurrent.futures.ProcessPoolExecutor`` waits on ``_reader`` with the
stdlib's ``multiprocessing.connection.wait`` and then calls
``_reader.recv()``; ``multiprocessing.pool.Pool`` sends tasks with
``_writer.send``, reads results with ``_reader.recv``, polls ``_reader``,
closes a worker's copies of ``_writer`` / ``_reader`` and takes ``_rlock``
to stop workers while it drains the queue on ``terminate()``.

- ``_reader, _writer``: the two ends of a one-way ``gb.Pipe`` in counted
  mode, whose ``fileno()`` becomes readable only once a message is there
  (see ``connection._CountedConnection``), so the stdlib's ``wait`` never
  reports a message that is not;
- ``_rlock`` / ``_wlock``: ``ctx.Lock()`` (``_wlock`` is ``None`` on
  Windows, as in the stdlib); ``get`` holds ``_rlock`` while it receives and
  ``put`` holds ``_wlock`` while it sends (and serialises: straight into
  shared memory, where the stdlib pickles before it takes the lock);
- ``_poll``: ``_reader.poll``.

``get``/``put`` are ``_reader.recv()`` / ``_writer.send()``, so messages
put with either API come out of the other: objects travel through shared
memory (numpy arrays out of band), not as pickled bytes through an OS pipe.
``send``/``recv`` of the ends are the wire format, as ``send_bytes`` of a
pickle is the stdlib's.

The queue holds :data:`SIMPLE_QUEUE_CAPACITY` messages of any size; ``put``
blocks beyond that (the stdlib's blocks once its OS pipe holds 64 KiB).
Like the stdlib's, a ``SimpleQueue`` is shared with child processes by
inheritance (``Process`` arguments, any start method) and refuses to be
pickled otherwise (its locks are semaphores); to pass a queue to ``Pool``
tasks or through rings, use ``Queue`` (``gb.Ring``), which pickles by name
anywhere.

``Queue`` and ``JoinableQueue`` here are the stdlib's classes (their
feeder thread and OS pipe are what subclasses such as
``concurrent.futures``'s call queue rely on); the ring-backed queues are
the factories ``multiprocessing.Queue()`` / ``JoinableQueue()`` of
``global_buffer.multiprocessing`` and its contexts.
"""
import sys
import types
from multiprocessing import context as _context, queues as _std
from typing import Any

from .connection import _counted_pipe

__all__ = list(getattr(_std, "__all__", ["Queue", "SimpleQueue", "JoinableQueue"]))
globals().update((n, getattr(_std, n)) for n in __all__ if n != "SimpleQueue")

# How many messages a SimpleQueue holds before put() blocks.  Each is a
# shared-memory slot of one page (larger messages go out of line), touched
# only once used.
SIMPLE_QUEUE_CAPACITY = 1024


def __getattr__(name):
    # every other name of multiprocessing.queues (Empty, Full, ...)
    try:
        return getattr(_std, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


class SimpleQueue:
    """``multiprocessing.SimpleQueue`` on a shared-memory pipe, with the
    stdlib's private attributes (``_reader``, ``_writer``, ``_rlock``,
    ``_wlock``, ``_poll``) and their semantics.

    ``ctx`` is the context whose ``Lock`` makes ``_rlock`` and ``_wlock``
    (keyword-only and required, as in the stdlib; the factories
    ``SimpleQueue()`` of ``global_buffer.multiprocessing`` and its contexts
    pass it).  After ``close()`` every method raises ``OSError``, as the
    stdlib's does.
    """

    def __init__(self, *, ctx):
        self._reader, self._writer = _counted_pipe(SIMPLE_QUEUE_CAPACITY)
        self._rlock = ctx.Lock()
        self._poll = self._reader.poll
        if sys.platform == "win32":
            self._wlock = None  # as the stdlib: one put is one atomic message
        else:
            self._wlock = ctx.Lock()

    def close(self):
        """Close both ends (the queue is unusable in this process after)."""
        self._reader.close()
        self._writer.close()

    def empty(self):
        """Whether no message is waiting."""
        return not self._poll()

    def __getstate__(self):
        _context.assert_spawning(self)
        return (self._reader, self._writer, self._rlock, self._wlock)

    def __setstate__(self, state):
        (self._reader, self._writer, self._rlock, self._wlock) = state
        self._poll = self._reader.poll

    def get(self):
        """Remove and return a message; waits for one."""
        with self._rlock:
            return self._reader.recv()

    def put(self, obj):
        """Put a picklable object; blocks while the queue is full."""
        # serialised under _wlock, straight into shared memory (the stdlib
        # pickles before taking it, then writes the bytes under it)
        if self._wlock is None:
            self._writer.send(obj)
        else:
            with self._wlock:
                self._writer.send(obj)

    __class_getitem__: Any = classmethod(types.GenericAlias)
