"""One processes mixin for running CPython's ``test._test_multiprocessing``
classes against our factories (used by test_cpython_queue.py and
test_cpython_pipe.py)."""
import gc
import multiprocessing
import os
from unittest import mock

import global_buffer as gb
from global_buffer import segment
from global_buffer.ring import _remove_ring


def _release_survivors(before):
    """Close and remove the rings this test made in this process that are
    still alive once it is over.  A failing test's traceback (kept by the
    test report) holds its rings, whose finalizers would then run only at
    exit: the failure would also leak their segments.  Rings already
    collected are not touched, so a ring that really leaks (its segment
    outliving its handles) is still caught by the leak check."""
    gc.collect()
    new = set(segment.list_names()) - before
    if not new:
        return
    for obj in gc.get_objects():
        if not isinstance(obj, gb.Ring):
            continue
        try:
            name = obj.name
        except Exception:
            continue
        if name not in new:
            continue
        try:
            obj.close()
        except Exception:
            pass
        if getattr(obj, "_is_owner", False):
            _remove_ring(name, os.getpid())  # with its out-of-line items
            if name + ".fifo" in new:  # a pipe's wake-up FIFO
                gb.unlink(name + ".fifo")


def make_mixin(tm, name, factories, patched):
    """A ``tm.ProcessesMixin`` subclass whose class attributes ``factories``
    (name -> callable) replace the stdlib's; while each test runs, the
    ``patched`` names of the ``multiprocessing`` module point at ours too
    (for tests that call ``multiprocessing.Queue()`` directly).  The start
    method is set per class, as CPython's ``setUpModule`` does per module."""

    class Mixin(tm.ProcessesMixin):
        start_method = None

        @classmethod
        def setUpClass(cls):
            cls._old_start_method = multiprocessing.get_start_method(allow_none=True)
            multiprocessing.set_start_method(cls.start_method, force=True)
            super().setUpClass()

        @classmethod
        def tearDownClass(cls):
            try:
                super().tearDownClass()
            finally:
                multiprocessing.set_start_method(cls._old_start_method, force=True)

        def setUp(self):
            super().setUp()
            for attr in patched:
                patcher = mock.patch.object(multiprocessing, attr, factories[attr])
                patcher.start()
                self.addCleanup(patcher.stop)
            # rings a test dropped, or a failure still holds, are removed
            # before the leak check runs
            self.addCleanup(_release_survivors, set(segment.list_names()))

    for attr, value in factories.items():
        setattr(Mixin, attr, value if not callable(value) or isinstance(value, type(gc))
                else staticmethod(value))
    Mixin.__name__ = Mixin.__qualname__ = name
    return Mixin
