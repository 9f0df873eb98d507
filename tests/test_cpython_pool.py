"""CPython's own multiprocessing Pool tests, run against ``gb.Pool`` (SPEC
§3.3; issue 12 item 3).

``test._test_multiprocessing`` (shipped with the interpreter) combines each
``_TestXxx(BaseTestCase)`` with a ``ProcessesMixin`` (and, for the classes
that allow it, a ``ManagerMixin``) whose ``Pool`` is the stdlib's, under one
start method per module.  The same is done here, as
tests/test_cpython_queue.py and test_cpython_pipe.py do for the queue and
pipe tests (the mixin is tests/_cpython_mixin.py): the Pool classes are
combined with a mixin whose ``Pool`` is ``gb.Pool``, once per start method
(fork, spawn, forkserver), and ``multiprocessing.Pool`` is swapped for
``gb.Pool`` while each test runs (``_TestPoolWorkerErrors``,
``_TestPoolWorkerLifetime`` and ``TestInitializers`` call it directly).

The manager-backed variants run too: ``_TestPool`` under a ``ManagerMixin``
whose manager is a ``gb.GBManager`` with ``Pool`` registered as ``gb.Pool``
(the pool then lives in the manager process and is used through the
stdlib's ``PoolProxy``), and ``TestSyncManagerTypes.test_pool`` on the same
manager.

Tests are excluded by name only for CPython internals and by-design
differences; each is listed in ``EXCLUDED`` with its reason, and in
docs/migration.md ("CPython tests not run").  Each excluded behaviour that
applies to gb.Pool in another form is tested below in that form.
"""
import multiprocessing
import multiprocessing.managers
import multiprocessing.pool
import os
import subprocess
import sys
import textwrap
import unittest
from unittest import mock

import pytest

import global_buffer as gb

from _cpython_mixin import make_mixin

_tm = pytest.importorskip("test._test_multiprocessing",
                          reason="CPython's test package is not installed")

START_METHODS = [m for m in ("fork", "spawn", "forkserver")
                 if m in multiprocessing.get_all_start_methods()]

# forkserver children fork from a server that has these imported already
multiprocessing.set_forkserver_preload(["global_buffer", "numpy"])


PoolProcessesMixin = make_mixin(
    _tm, "PoolProcessesMixin",
    {"Pool": gb.Pool, "Queue": gb.Ring, "JoinableQueue": gb.JoinableRing},
    patched=("Pool", "Queue", "JoinableQueue"))


class GBPoolManager(gb.GBManager):
    """A ``gb.GBManager`` whose ``Pool()`` is a ``gb.Pool`` made in the
    manager process, behind the stdlib's ``PoolProxy``."""


GBPoolManager.register("Pool", callable=gb.Pool,
                       proxytype=multiprocessing.managers.PoolProxy)


def _start_manager():
    m = GBPoolManager()
    m.start()
    return m


class PoolManagerMixin(_tm.ManagerMixin):
    """``ManagerMixin`` with a ``GBPoolManager`` (started under the class's
    start method) instead of ``multiprocessing.Manager()``."""

    start_method = None

    @classmethod
    def setUpClass(cls):
        cls._old_start_method = multiprocessing.get_start_method(allow_none=True)
        multiprocessing.set_start_method(cls.start_method, force=True)
        with mock.patch.object(multiprocessing, "Manager", _start_manager):
            super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            multiprocessing.set_start_method(cls._old_start_method, force=True)


# Tests of the base classes that are not run against gb.Pool, and why (also
# in docs/migration.md, "CPython tests not run").
EXCLUDED = {
    "_TestPoolWorkerErrors": {
        # Uses ``lambda: 42`` as a result that cannot be pickled and expects
        # MaybeEncodingError.  gb.Pool pickles what pickle cannot (lambdas,
        # closures) with cloudpickle, so that result arrives; a result that
        # cannot be pickled at all still fails as MaybeEncodingError and the
        # pool keeps its workers (test_unpicklable_result_keeps_workers).
        "test_unpickleable_result": "by design: lambdas travel under cloudpickle",
    },
    "_TestPoolWorkerLifetime": {
        # Runs a fresh interpreter whose script imports the stdlib's
        # multiprocessing.Pool itself (nothing here can swap it); the same
        # script on gb.Pool is test_worker_finalization_at_exit below.
        "test_worker_finalization_via_atexit_handler_of_multiprocessing":
            "tests the stdlib's Pool in a subprocess; run on gb.Pool below",
    },
}

# Of classes that mostly test something else, the tests that use a Pool.
KEEP = {
    # test_manager_initializer tests SyncManager.start(), not a pool
    "TestInitializers": {"test_pool_initializer"},
    "TestSyncManagerTypes": {"test_pool"},
}

BASES = ("_TestPool", "_TestPoolWorkerErrors", "_TestPoolWorkerLifetime", "TestInitializers",
         "TestPoolNotLeakOnFailure")


def _skip(base_name, attr, start_method):
    keep = KEEP.get(base_name)
    return attr in EXCLUDED.get(base_name, {}) or (keep is not None and attr not in keep)


def _build(base_name, start_method, module_globals, manager=False):
    base = getattr(_tm, base_name)
    ns = {"start_method": start_method, "__module__": __name__}
    for attr in dir(base):
        if attr.startswith("test") and _skip(base_name, attr, start_method):
            ns[attr] = None  # not collected (see EXCLUDED / KEEP)
    kind = "Manager" if manager else ""
    if manager:
        bases = (base, PoolManagerMixin, unittest.TestCase)
    elif issubclass(base, _tm.BaseTestCase):
        bases = (base, PoolProcessesMixin, unittest.TestCase)
    else:  # a plain TestCase that calls multiprocessing.Pool directly
        bases = (PoolProcessesMixin, base)
    if base_name == "TestPoolNotLeakOnFailure":
        ns["setUp"] = _patch_pool_module
    name = (f"WithGB{kind}{start_method.capitalize()}"
            f"{base_name.lstrip('_').replace('Test', '', 1)}")
    cls = type(name, bases, ns)
    cls.__qualname__ = name
    module_globals[name] = cls  # importable by name: spawn children unpickle cls._xxx
    return cls


def _patch_pool_module(self):
    # this test names multiprocessing.pool.Pool itself
    PoolProcessesMixin.setUp(self)
    patcher = mock.patch.object(multiprocessing.pool, "Pool", gb.Pool)
    patcher.start()
    self.addCleanup(patcher.stop)


class _SyncManagerPool(_tm.TestSyncManagerTypes):
    manager_class = GBPoolManager


for _method in START_METHODS:
    for _base in BASES:
        _build(_base, _method, globals())
    _build("_TestPool", _method, globals(), manager=True)
del _method, _base

# TestSyncManagerTypes.test_pool on the gb manager, under the default start
# method (the class sets none; the pool's own start method is covered above)
_ns = {"__module__": __name__}
for _attr in dir(_tm.TestSyncManagerTypes):
    if _attr.startswith("test") and _skip("TestSyncManagerTypes", _attr, None):
        _ns[_attr] = None
WithGBManagerSyncTypes = type("WithGBManagerSyncTypes", (_SyncManagerPool,), _ns)
del _ns, _attr, _SyncManagerPool


def test_the_factories_are_ours():
    """The generated classes really run against gb.Pool: their Pool is
    gb.Pool, multiprocessing.Pool is swapped during each test, the manager
    variant's pool is a gb.Pool in the manager process, and exactly the
    excluded names are absent."""
    for method in START_METHODS:
        cls = globals()[f"WithGB{method.capitalize()}Pool"]
        assert cls.Pool is gb.Pool and cls.TYPE == "processes"
        case = cls("test_apply")
        case.setUp()
        try:
            assert multiprocessing.Pool is gb.Pool
        finally:
            case.doCleanups()
        assert multiprocessing.Pool is not gb.Pool
        names = set(unittest.TestLoader().getTestCaseNames(cls))
        every = {n for n in dir(_tm._TestPool) if n.startswith("test")}
        assert names == every
        errors = globals()[f"WithGB{method.capitalize()}PoolWorkerErrors"]
        assert set(unittest.TestLoader().getTestCaseNames(errors)) == {
            "test_async_error_callback"}
        manager = globals()[f"WithGBManager{method.capitalize()}Pool"]
        assert manager.TYPE == "manager"
        assert set(unittest.TestLoader().getTestCaseNames(manager)) == every
    assert set(unittest.TestLoader().getTestCaseNames(WithGBManagerSyncTypes)) == {"test_pool"}


def _run_by():
    """(pid, module of the worker loop running this task)."""
    import inspect
    loops = [f.frame.f_globals.get("__name__") for f in inspect.stack()
             if f.function == "worker"]
    return os.getpid(), loops


def test_manager_pool_is_a_gb_pool():
    """The manager variant's Pool() really is a gb.Pool: its workers are
    children of the manager process running gb's worker loop."""
    m = _start_manager()
    try:
        p = m.Pool(1)
        try:
            pid, loops = p.apply(_run_by)
            assert pid not in (os.getpid(), m._process.pid)
            assert loops == ["global_buffer.multiprocessing.pool"]
        finally:
            p.terminate()
            p.join()
            del p
    finally:
        m.shutdown()


class _Unpicklable:
    def __reduce__(self):
        raise TypeError("this result cannot be pickled")


def _unpicklable_result():
    return _Unpicklable()


def _cloud_result():
    return lambda: 42


@pytest.mark.parametrize("method", START_METHODS)
def test_unpicklable_result_keeps_workers(method):
    """The excluded test_unpickleable_result, with a result pickle and
    cloudpickle both refuse: MaybeEncodingError to get() and to the
    error_callback, 20 times, without losing the pool's workers; a lambda
    result (what the CPython test uses) arrives and can be called."""
    p = gb.Pool(2, context=multiprocessing.get_context(method))
    try:
        pids = sorted(w.pid for w in p._pool)
        for _ in range(20):
            seen = []
            res = p.apply_async(_unpicklable_result, error_callback=seen.append)
            with pytest.raises(multiprocessing.pool.MaybeEncodingError) as e:
                res.get(timeout=60)
            assert isinstance(seen[0], multiprocessing.pool.MaybeEncodingError)
            assert e.value.exc is not None and e.value.value is not None
        assert p.apply_async(_cloud_result).get(timeout=60)() == 42
        assert sorted(w.pid for w in p._pool) == pids
    finally:
        p.terminate()
        p.join()


def test_worker_finalization_at_exit():
    """The excluded test_worker_finalization_via_atexit_handler_of_
    multiprocessing (bpo-38744, bpo-39360) on gb.Pool: a pool still
    referenced from a global at interpreter exit is finalized without a
    hang or an error, and leaves nothing in /dev/shm."""
    script = textwrap.dedent('''
        import global_buffer as gb
        problem = None
        class A:
            def __init__(self):
                self.pool = gb.Pool(processes=1)
        def test():
            global problem
            problem = A()
            problem.pool.map(float, tuple(range(10)))
            print(problem.pool._inqueue.name)
        if __name__ == "__main__":
            test()
    ''')
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    ring = out.stdout.strip()
    base = ring[:-1]
    left = [n for n in os.listdir("/dev/shm") if base in n] if os.path.isdir("/dev/shm") else []
    assert not left, left
