"""One processes mixin for running CPython's ``test._test_multiprocessing``
classes against our factories (used by test_cpython_queue.py and
test_cpython_pipe.py)."""
import gc
import multiprocessing
from unittest import mock


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
            # rings a test dropped are removed before the leak check runs
            self.addCleanup(gc.collect)

    for attr, value in factories.items():
        setattr(Mixin, attr, value if not callable(value) or isinstance(value, type(gc))
                else staticmethod(value))
    Mixin.__name__ = Mixin.__qualname__ = name
    return Mixin
