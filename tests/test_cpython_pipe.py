"""CPython's own Pipe / Connection / poll / wait / SimpleQueue tests, run
against ``gb.Pipe`` and the ring-backed ``SimpleQueue`` (SPEC §3.2, §3.3).

``test._test_multiprocessing`` (shipped with the interpreter) combines each
``_TestXxx(BaseTestCase)`` with a ``ProcessesMixin`` whose ``Pipe`` /
``Queue`` / ``JoinableQueue`` are the stdlib's, under one start method per
module.  The same is done here, as tests/test_cpython_queue.py does for the
queue tests: the Pipe-related base classes are combined with a mixin whose
factories are ours, once per start method (fork, spawn, forkserver), and
pytest collects them as ordinary unittest classes.  The plain ``TestCase``
classes that call ``multiprocessing.Pipe()`` / ``multiprocessing.SimpleQueue()``
directly run with those names swapped for ours (``setUp``).

The JoinableQueue tests of ``_TestQueue`` (``test_task_done``,
``test_closed_queue_put_get_exceptions``) run against ``gb.JoinableRing``
in tests/test_cpython_queue.py; ``test_joinable_queue_tests_run_elsewhere``
below checks that they still do.

Tests are excluded by name only where they test CPython internals; each is
listed in ``EXCLUDED`` with its reason, and in docs/migration.md.
"""
import importlib
import multiprocessing
import unittest

import pytest

import global_buffer as gb
import global_buffer.multiprocessing as gbmp
from global_buffer.multiprocessing import connection as gb_connection

from _cpython_mixin import make_mixin

_tm = pytest.importorskip("test._test_multiprocessing",
                          reason="CPython's test package is not installed")

START_METHODS = [m for m in ("fork", "spawn", "forkserver")
                 if m in multiprocessing.get_all_start_methods()]

# forkserver children fork from a server that has these imported already
multiprocessing.set_forkserver_preload(["global_buffer", "numpy"])


GBProcessesMixin = make_mixin(
    _tm, "GBProcessesMixin",
    {"Pipe": gb.Pipe, "Queue": gb.Ring, "JoinableQueue": gb.JoinableRing,
     "SimpleQueue": gbmp.SimpleQueue,
     "connection": gb_connection},  # Listener / Client re-exported from the stdlib
    patched=("Pipe", "SimpleQueue", "Queue", "JoinableQueue"))


# Tests of the base classes that are not run against gb, and why (also in
# docs/migration.md, "CPython tests not run").
EXCLUDED = {
    "_TestConnection": {
        # reduction.send_handle()/recv_handle() pass a file descriptor as
        # SCM_RIGHTS ancillary data over the connection's Unix socket
        # (conn.fileno() must be that socket); a gb connection is not a
        # socket: descriptors travel by pickling, not over the pipe.
        "test_fd_transfer": "CPython internals: fd passing over the pipe's socket",
        "test_large_fd_transfer": "CPython internals: fd passing over the pipe's socket",
        # writes a raw byte into conn.fileno() (the socket) and expects
        # recv_handle() to reject it: the same socket internals.
        "test_missing_fd_transfer": "CPython internals: fd passing over the pipe's socket",
    },
    "_TestPicklingConnections": {
        # Sends Listener/Client connections and plain sockets (not pipes)
        # through the pipe; pickling those relies on multiprocessing's
        # resource_sharer / reduction.send_handle fd passing.  The pipe part
        # of the class, sending gb connections over a gb pipe, is test_access,
        # which runs.
        "test_pickling": "CPython internals: resource_sharer fd passing of sockets",
    },
    # (TestSimpleQueue.test_closed, which asserts on SimpleQueue's private
    # _reader/_writer, runs: our SimpleQueue has them, as the stdlib's)
}

# Of classes that mostly test something else, the tests that use pipes.
KEEP = {
    # test_wait_socket / test_wait_socket_slow wait on plain sockets only
    "TestWait": {"test_wait", "test_wait_slow", "test_wait_timeout", "test_wait_integer",
                 "test_neg_timeout"},
}

# Tests whose pipes never reach a child process, so that the start method
# does not matter: run once (under the first start method), not three times,
# because they sleep for seconds by design.
ONCE = {
    "TestWait": {"test_wait_timeout", "test_wait_integer"},
    # the stdlib's Listener / Client, re-exported by our connection module:
    # nothing ring-backed reaches the child, so one start method suffices
    "_TestListenerClient": {"test_listener_client", "test_issue14725", "test_issue16955"},
}

BASES = ("_TestConnection", "_TestPoll", "_TestPicklingConnections", "_TestListenerClient",
         "TestWait", "TestSimpleQueue")


def _build(base_name, start_method, module_globals):
    base = getattr(_tm, base_name)
    ns = {"start_method": start_method, "__module__": __name__}
    keep = KEEP.get(base_name)
    for attr in dir(base):
        if not attr.startswith("test"):
            continue
        if (attr in EXCLUDED.get(base_name, {})
                or (keep is not None and attr not in keep)
                or (attr in ONCE.get(base_name, ()) and start_method != START_METHODS[0])):
            ns[attr] = None  # not collected (see EXCLUDED / KEEP / ONCE)
    if issubclass(base, _tm.BaseTestCase):
        bases = (base, GBProcessesMixin, unittest.TestCase)
    else:  # a plain TestCase that uses multiprocessing.Pipe / SimpleQueue directly
        bases = (GBProcessesMixin, base)
    name = f"WithGB{start_method.capitalize()}{base_name.lstrip('_').replace('Test', '', 1)}"
    cls = type(name, bases, ns)
    cls.__qualname__ = name
    module_globals[name] = cls  # importable by name: spawn children unpickle cls._xxx


for _method in START_METHODS:
    for _base in BASES:
        _build(_base, _method, globals())
del _method, _base


def test_the_factories_are_ours():
    """The generated classes really run against gb: Pipe is gb.Pipe,
    multiprocessing.Pipe / SimpleQueue are swapped during each test, the
    excluded names are absent and nothing else is."""
    for method in START_METHODS:
        cls = globals()[f"WithGB{method.capitalize()}Connection"]
        assert cls.Pipe is gb.Pipe
        case = cls("test_duplex_false")
        case.setUp()
        try:
            assert multiprocessing.Pipe is gb.Pipe
            sq = multiprocessing.SimpleQueue()
            assert type(sq).__module__ == "global_buffer.multiprocessing.queues"
            sq.close()
            a, b = case.Pipe()
            assert isinstance(a, gb.Connection)
            a.close(), b.close()
        finally:
            case.doCleanups()
        assert multiprocessing.Pipe is not gb.Pipe
        names = set(unittest.TestLoader().getTestCaseNames(cls))
        every = {n for n in dir(_tm._TestConnection) if n.startswith("test")}
        assert names == every - set(EXCLUDED["_TestConnection"])
        poll = globals()[f"WithGB{method.capitalize()}Poll"]
        assert set(unittest.TestLoader().getTestCaseNames(poll)) == {
            n for n in dir(_tm._TestPoll) if n.startswith("test")}


def test_joinable_queue_tests_run_elsewhere():
    """CPython's JoinableQueue tests (in _TestQueue) run against
    gb.JoinableRing in tests/test_cpython_queue.py under every start method."""
    mod = importlib.import_module("test_cpython_queue")
    for method in START_METHODS:
        cls = getattr(mod, f"WithRing{method.capitalize()}Queue")
        assert cls.JoinableQueue is gb.JoinableRing
        names = unittest.TestLoader().getTestCaseNames(cls)
        assert "test_task_done" in names and "test_closed_queue_put_get_exceptions" in names
