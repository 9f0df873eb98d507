"""CPython's own multiprocessing Queue tests, run against gb.Ring (SPEC §3.1,
§3.2).

``test._test_multiprocessing`` (shipped with the interpreter) builds its
concrete test classes with ``install_tests_in_module_dict``: each
``_TestXxx(BaseTestCase)`` is combined with a ``ProcessesMixin`` whose
``Queue`` / ``JoinableQueue`` are the stdlib's, under one start method per
module.  Here the same is done minimally: the queue-related base classes are
combined with a processes mixin whose ``Queue`` / ``JoinableQueue`` are
``gb.Ring`` / ``gb.JoinableRing``, once per start method (fork, spawn,
forkserver), and pytest collects them as ordinary unittest classes.

A few of those tests call ``multiprocessing.Queue()`` directly instead of
``self.Queue()``; for them ``multiprocessing.Queue`` / ``JoinableQueue`` are
swapped for the ring classes while the test runs (``setUp``), so they too
exercise rings.

Tests that cannot apply to a ring are excluded by name below (set to
``None``, which unittest and pytest skip at collection), each with its reason.
"""
import gc
import multiprocessing
import multiprocessing.queues
import unittest

import pytest

import global_buffer as gb

from _cpython_mixin import make_mixin

_tm = pytest.importorskip("test._test_multiprocessing",
                          reason="CPython's test package is not installed")

START_METHODS = [m for m in ("fork", "spawn", "forkserver")
                 if m in multiprocessing.get_all_start_methods()]


RingProcessesMixin = make_mixin(
    _tm, "RingProcessesMixin",
    {"Queue": gb.Ring, "JoinableQueue": gb.JoinableRing},
    patched=("Queue", "JoinableQueue"))


# Tests of the base classes that are not run against rings, and why.
EXCLUDED = {
    "_TestQueue": {
        # Subclasses the private multiprocessing.queues.Queue to override its
        # private _on_queue_feeder_error hook; never touches self.Queue.
        "test_queue_feeder_on_queue_feeder_error": "CPython internals (feeder-thread hook)",
        # Expects put() of an unpicklable object to return and the error to
        # be printed by the stdlib's feeder thread.  A ring serialises in
        # put() and raises the pickling error there (deliberate difference,
        # SPEC §3.1: an item is committed once put() returns); the same
        # property -- the queue keeps working and qsize stays right after such
        # a put -- is checked for both in test_ring_parity.py
        # (test_unpicklable_item_leaves_queue_working).
        "test_queue_feeder_donot_stop_onexc":
            "deliberate difference: put() raises the pickling error",
    },
    "_TestProcess": {
        # Only the tests of _TestProcess that pass a queue to child processes
        # are run (KEEP below); the others test Process itself and never
        # create a queue, so they would test nothing about rings.
    },
    "TestStartMethod": {
        # Checks that a fork-context SemLock refuses to be shared with a spawn
        # child: CPython's own lock internals (a ring has no SemLock); also
        # decorated to run only in CPython's spawn test module.
        "test_mixed_startmethod": "CPython internals (SemLock context checks)",
    },
}

# Of classes that mostly test something else, the tests that use queues.
KEEP = {
    "_TestProcess": {
        "test_args_argument", "test_process", "test_process_mainthread_native_id",
        "test_close", "test_lose_target_ref",
        # (test_child_fd_inflation also makes a queue, but counts the child's
        # file descriptors: rings have none to count, and it skips under fork)
    },
    "TestStartMethod": {"test_nested_startmethod"},
}


def _build(base_name, start_method, module_globals):
    base = getattr(_tm, base_name)
    ns = {"start_method": start_method, "__module__": __name__}
    keep = KEEP.get(base_name)
    for attr in dir(base):
        if not attr.startswith("test"):
            continue
        if attr in EXCLUDED.get(base_name, {}) or (keep is not None and attr not in keep):
            ns[attr] = None  # not collected (see EXCLUDED / KEEP)
    if issubclass(base, _tm.BaseTestCase):
        bases = (base, RingProcessesMixin, unittest.TestCase)
    else:  # a plain TestCase that uses multiprocessing.Queue directly
        bases = (RingProcessesMixin, base)
    name = f"WithRing{start_method.capitalize()}{base_name.lstrip('_').replace('Test', '', 1)}"
    cls = type(name, bases, ns)
    cls.__qualname__ = name
    module_globals[name] = cls  # importable by name: spawn children unpickle cls._test_xxx


for _method in START_METHODS:
    for _base in ("_TestQueue", "_TestProcess", "TestStartMethod"):
        _build(_base, _method, globals())
del _method, _base


def test_the_factories_are_rings():
    """The generated classes really run against rings: their Queue /
    JoinableQueue are gb.Ring / gb.JoinableRing, multiprocessing.Queue is
    swapped during each test, and every excluded name is absent."""
    for method in START_METHODS:
        cls = globals()[f"WithRing{method.capitalize()}Queue"]
        assert cls.Queue is gb.Ring and cls.JoinableQueue is gb.JoinableRing
        case = cls("test_qsize")
        case.setUp()
        try:
            assert multiprocessing.Queue is gb.Ring
            assert multiprocessing.JoinableQueue is gb.JoinableRing
            assert isinstance(case.Queue(), gb.Ring)
        finally:
            case.doCleanups()
        assert multiprocessing.Queue is not gb.Ring
        names = unittest.TestLoader().getTestCaseNames(cls)
        assert "test_put" in names and "test_task_done" in names
        assert not set(names) & set(EXCLUDED["_TestQueue"])


def test_closed_queue_answers_as_the_stdlib_does():
    """§3.1 "using a closed ring raises what multiprocessing.Queue raises",
    on every supported Python (CPython tests this only from 3.13, in
    test_closed_queue_empty_exceptions; queues.py behaves the same in
    3.9-3.13): after close(), put/get raise ValueError; empty() raises
    OSError once the queue was put to in this process and answers
    otherwise; qsize() and full() answer."""
    def closed(make, put):
        q = make()
        if put:
            q.put("foo")
        q.close()
        q.join_thread()
        out = []
        for call in (q.empty, q.qsize, q.full, lambda: q.put(1), lambda: q.get(False)):
            try:
                out.append(call())
            except Exception as e:  # noqa: BLE001 - the exception is the answer
                out.append((isinstance(e, OSError), isinstance(e, ValueError),
                            "is closed" in str(e)))
        return out

    for put in (False, True):
        for ours, theirs in ((gb.Ring, multiprocessing.queues.Queue),
                             (gb.JoinableRing, multiprocessing.queues.JoinableQueue)):
            ctx = multiprocessing.get_context()
            assert closed(ours, put) == closed(lambda t=theirs, c=ctx: t(ctx=c), put), (ours, put)
    gc.collect()
