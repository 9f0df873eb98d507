"""Wake blocked stream readers the moment their writer's process exits.

A stream reader blocked in ``next()`` ends in ``WriterGone`` once the
writer died with every sample read (SPEC §2.2).  A dead process cannot bump
the ring's futex, so without help the reader would have to wake up now and
then to look, and an idle reader would cost wake-ups for ever.

Instead each process that blocks on a stream has one thread here, asleep in
``poll()`` on a pidfd per writer process its readers wait for.  A pidfd turns
readable when its process exits; the thread then tells each reader
(``_writer_exited``), which wakes its sleepers.  Idle, nothing here runs.

Linux 5.3 and later (``os.pidfd_open``).  Elsewhere, or when a pidfd cannot
be had (no permission, seccomp), ``watch`` returns False and the reader
falls back to sleeping in short slices and probing the writer.
"""

import os
import select
import threading
import weakref

from .segment import process_alive


class _Watcher:
    """The per-process thread and its pidfds."""

    def __init__(self):
        self.lock = threading.Lock()
        self.fds = {}        # pidfd -> (pid, start)
        self.keys = {}       # (pid, start) -> pidfd
        self.readers = {}    # (pid, start) -> WeakSet of reader handles
        self.pending = []    # pidfds for the thread to add to its poll set
        self.rfd, self.wfd = os.pipe()
        os.set_blocking(self.wfd, False)
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name="global_buffer-exitwatch")
        try:
            self.thread.start()
        except BaseException:
            os.close(self.rfd)
            os.close(self.wfd)
            raise

    def add(self, reader, pid, start):
        """Watch ``pid``'s exit for ``reader``: True if watched, None if the
        process is already gone, False if no pidfd can be had."""
        key = (pid, start)
        with self.lock:
            if key in self.keys:
                self.readers[key].add(reader)
                return True
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        except OSError:
            return False
        # the pid may have been reused before the pidfd was opened: the
        # pidfd is the writer's only if the writer still runs now
        if not process_alive(pid, start):
            os.close(fd)
            return None
        with self.lock:
            if key in self.keys:  # another thread won the race
                os.close(fd)
            else:
                self.keys[key] = fd
                self.fds[fd] = key
                self.readers[key] = weakref.WeakSet()
                self.pending.append(fd)
                self._poke()
            self.readers[key].add(reader)
        return True

    def _poke(self):
        try:
            os.write(self.wfd, b"\0")
        except BlockingIOError:
            pass  # a poke is already pending

    def _run(self):
        poller = select.poll()
        poller.register(self.rfd, select.POLLIN)
        while True:
            for fd, _ in poller.poll():
                if fd == self.rfd:
                    os.read(self.rfd, 4096)
                    with self.lock:
                        added, self.pending = self.pending, []
                    for pfd in added:
                        poller.register(pfd, select.POLLIN)
                    continue
                poller.unregister(fd)
                with self.lock:
                    key = self.fds.pop(fd)
                    del self.keys[key]
                    readers = list(self.readers.pop(key))
                os.close(fd)
                for r in readers:
                    try:
                        r._writer_exited()
                    except Exception:  # noqa: BLE001 - keep watching for the others
                        pass


_watcher = None
_create = threading.Lock()


def watch(reader, pid, start):
    """Have ``reader._writer_exited()`` called when process ``pid`` (with
    start time ``start``) exits.  True if it will be; None if the process
    is gone already; False if this platform cannot watch it."""
    global _watcher
    if not hasattr(os, "pidfd_open") or pid <= 0:
        return False
    if _watcher is None:
        with _create:
            if _watcher is None:
                try:
                    _watcher = _Watcher()
                except (OSError, RuntimeError):  # no fds or no thread left
                    return False
    return _watcher.add(reader, pid, start)


def _after_fork_in_child():
    # the thread did not survive the fork; its fds did
    global _watcher, _create
    w, _watcher, _create = _watcher, None, threading.Lock()
    if w is not None:
        for fd in (w.rfd, w.wfd, *w.fds):
            try:
                os.close(fd)
            except OSError:
                pass


os.register_at_fork(after_in_child=_after_fork_in_child)
