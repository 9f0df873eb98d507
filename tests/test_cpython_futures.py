"""CPython's own ``concurrent.futures`` process-pool tests, run with
``mp_context`` set to our contexts (SPEC §3.3, issue 15 item 1).

``test.test_concurrent_futures`` (a module up to 3.11, a package from
3.12) builds its test classes by combining test bodies with
``ProcessPoolForkMixin`` / ``ProcessPoolSpawnMixin`` /
``ProcessPoolForkserverMixin``, whose ``get_context()`` returns
``multiprocessing.get_context(self.ctx)``.  Here every process-pool class
is subclassed with ``get_context()`` returning
``global_buffer.multiprocessing.get_context(self.ctx)``, so each
executor's result queue is our ``SimpleQueue`` and its manager thread
waits on our pipe's descriptor, as tests/test_cpython_queue.py does for
the Queue tests.

Some interpreters ship without that test module (builds with a trimmed
``test`` package, as the 3.11 and 3.12 on this project's machines); then the
copy of another CPython installed beside it is used, the nearest older
version first (on these machines 3.11 runs 3.10's), or the one
``GB_CPYTHON_FUTURES_TESTS`` names (the module file, or the package
directory); with none, the file is skipped.

Tests are excluded by name only for CPython internals or by-design
differences, each with its reason (``EXCLUDED``, also in
docs/migration.md).  Within the runtime budget (about a minute on two
cores), the fork classes run in full; under spawn and forkserver, where
each of the executor's five workers is a fresh interpreter, the classes in
``SLOW`` are marked ``slow`` (run with ``-m "slow or not slow"``).
"""
import gc
import importlib
import os
import pkgutil
import sys
import unittest

import pytest

import global_buffer as gb
import global_buffer.multiprocessing as gbmp
from global_buffer.multiprocessing.queues import SimpleQueue

from conftest import START_METHODS


def _nearest_copy():
    """The test module (or package) of another CPython installed beside this
    one (pyenv and similar layouts: ``<versions>/<X.Y.Z>/lib/pythonX.Y/test``),
    the nearest older version first, then newer ones; None if none."""
    import glob
    import re
    here = sys.version_info[:2]
    found = []
    versions_dir = os.path.dirname(os.path.realpath(sys.base_prefix))
    for path in glob.glob(os.path.join(versions_dir, "*", "lib", "python3.*", "test",
                                       "test_concurrent_futures*")):
        m = re.search(r"python3\.(\d+)", path)
        if not m or path.endswith(".pyc"):
            continue
        minor = int(m.group(1))
        if minor < 9:  # older bodies test what 3.9+ changed
            continue
        found.append((minor > here[1], abs(minor - here[1]), path))
    return sorted(found)[0][2] if found else None


def _load():
    """CPython's test_concurrent_futures modules: the interpreter's own, or
    the copy named by GB_CPYTHON_FUTURES_TESTS; [] if neither."""
    names = []
    try:
        pkg = importlib.import_module("test.test_concurrent_futures")
        base = "test.test_concurrent_futures"
    except ImportError:
        path = os.environ.get("GB_CPYTHON_FUTURES_TESTS") or _nearest_copy()
        if not path or not os.path.exists(path):
            return []
        path = os.path.abspath(path)
        # importable by name in spawn / forkserver children too (they get
        # our sys.path): its functions travel by reference
        sys.path.insert(0, os.path.dirname(path))
        base = os.path.basename(path)
        if base.endswith(".py"):
            base = base[:-3]
        pkg = importlib.import_module(base)
    names.append(pkg)
    if hasattr(pkg, "__path__"):  # 3.12+: a package of test_*.py modules
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name.startswith("test_"):
                names.append(importlib.import_module(f"{base}.{info.name}"))
    return names


_MODULES = _load()
if not _MODULES:
    pytest.skip("CPython's test_concurrent_futures is not installed with this interpreter "
                "(set GB_CPYTHON_FUTURES_TESTS to a copy)", allow_module_level=True)


def _mixins():
    pkg = _MODULES[0]
    # up to 3.11 the module itself; from 3.12 the package's util module
    util = (importlib.import_module(pkg.__name__ + ".util") if hasattr(pkg, "__path__")
            else pkg)
    return {"fork": util.ProcessPoolForkMixin, "spawn": util.ProcessPoolSpawnMixin,
            "forkserver": util.ProcessPoolForkserverMixin}


MIXINS = _mixins()

# Tests not run against our contexts, and why (also in docs/migration.md).
_OWN_SCRIPT = ("runs a child interpreter whose script builds the stdlib's own context "
               "(multiprocessing.get_context, not the mixin's get_context) and imports "
               "test.test_concurrent_futures by name: it tests nothing of ours "
               "(tests/test_stdlib_clients.py checks interpreter exit on our contexts)")
EXCLUDED = {
    "ProcessPoolShutdownTest": {
        "test_interpreter_shutdown": _OWN_SCRIPT,
        "test_submit_after_interpreter_shutdown": _OWN_SCRIPT,
        "test_cancel_futures_wait_false": _OWN_SCRIPT,
    },
}
# Classes marked slow (run with -m slow) under spawn / forkserver, where each
# test starts five fresh interpreters: all of them together take about four
# minutes on two cores (measured: ProcessPoolExecutorTest ~35 s, WaitTest
# ~26 s, ProcessPoolShutdownTest ~22 s, ExecutorDeadlockTest ~14 s,
# AsCompletedTest ~9 s per start method).  The default run keeps every
# class under fork (~42 s), the initializer classes under all three, and
# the deadlock class (crashes while pickling results: the path of our
# SimpleQueue) under spawn too: about a minute.
SLOW = {
    "fork": set(),
    "spawn": {"ProcessPoolExecutorTest", "WaitTest", "ProcessPoolShutdownTest",
              "AsCompletedTest"},
    "forkserver": {"ProcessPoolExecutorTest", "WaitTest", "ProcessPoolShutdownTest",
                   "AsCompletedTest", "ExecutorDeadlockTest"},
}


def _our_context(self):
    return gbmp.get_context(self.ctx)


def _short(name, method):
    # ProcessPoolForkWaitTest -> WaitTest
    prefix = "ProcessPool" + {"fork": "Fork", "spawn": "Spawn",
                              "forkserver": "Forkserver"}[method]
    return name[len(prefix):] if name.startswith(prefix) else name


def _classes():
    seen = set()
    for mod in _MODULES:
        for name in dir(mod):
            cls = getattr(mod, name)
            if not (isinstance(cls, type) and issubclass(cls, unittest.TestCase)):
                continue
            for method, mixin in MIXINS.items():
                if issubclass(cls, mixin) and (name, method) not in seen:
                    seen.add((name, method))
                    yield method, cls


def _build(method, cls, module_globals):
    short = _short(cls.__name__, method)
    ns = {"get_context": _our_context, "__module__": __name__}
    for attr in dir(cls):
        if attr.startswith("test") and attr in EXCLUDED.get(short, {}):
            ns[attr] = None  # not collected (see EXCLUDED)
    name = f"GB{cls.__name__}"
    new = type(name, (cls,), ns)
    new.__qualname__ = name

    def tearDown(self):
        # CPython's tests leave queues on the instance (the failing
        # initializer's log queue): close them, so that the rings are gone
        # before the conftest leak check looks
        try:
            super(new, self).tearDown()
        finally:
            for k, v in list(vars(self).items()):
                if isinstance(v, (gb.Ring, SimpleQueue)):
                    v.close()
                    setattr(self, k, None)
            self.executor_kwargs = {}  # initargs=(log_queue,)
            gc.collect()
    new.tearDown = tearDown
    if short in SLOW[method]:
        new = pytest.mark.slow(new)
    module_globals[name] = new


for _method, _cls in _classes():
    if _method in START_METHODS:
        _build(_method, _cls, globals())
del _method, _cls


def test_the_contexts_are_ours():
    """The generated classes build executors on our contexts, whose result
    queue is our SimpleQueue."""
    built = [v for k, v in globals().items() if k.startswith("GBProcessPool")]
    assert built
    for cls in built:
        ctx = _our_context(cls.__new__(cls))
        assert isinstance(ctx, type(gbmp.get_context(cls.ctx)))
        q = ctx.SimpleQueue()
        try:
            assert isinstance(q, SimpleQueue)
        finally:
            q.close()
