"""``global_buffer.multiprocessing`` is the one-line migration (SPEC §3.3):
every public name of ``multiprocessing``; ``Queue``, ``SimpleQueue``,
``JoinableQueue``, ``Pipe``, ``Pool`` and ``Manager`` ring-backed, everything
else the stdlib's very object; ``get_context(method)`` with the same
substitutions; and the package's own ``__all__`` (house style rule 1)."""
import importlib
import multiprocessing as mp
import multiprocessing.connection
import multiprocessing.managers
import multiprocessing.pool
import pkgutil

import pytest

import global_buffer as gb
import global_buffer.multiprocessing as gbmp

RING_BACKED = {"Queue", "SimpleQueue", "JoinableQueue", "Pipe", "Pool", "Manager"}
START_METHODS = mp.get_all_start_methods()


def test_every_public_name_of_multiprocessing():
    missing = [n for n in mp.__all__ if not hasattr(gbmp, n)]
    assert not missing
    assert set(mp.__all__) <= set(gbmp.__all__)
    assert len(gbmp.__all__) == len(set(gbmp.__all__)), "a name exported twice"
    for n in gbmp.__all__:
        assert hasattr(gbmp, n), n


def test_only_the_six_factories_differ():
    differ = {n for n in mp.__all__ if getattr(gbmp, n) is not getattr(mp, n)}
    assert differ == RING_BACKED | {"get_context"}
    for n in sorted(set(mp.__all__) - differ):  # the stdlib's very objects
        assert getattr(gbmp, n) is getattr(mp, n), n
    # exceptions and classes users catch / subclass are the stdlib's
    assert gbmp.Process is mp.Process
    assert gbmp.BufferTooShort is mp.BufferTooShort
    assert gbmp.TimeoutError is mp.TimeoutError
    assert gbmp.current_process is mp.current_process


def _closing(obj):
    """Close / shut down what a factory returned (segments go with it)."""
    if isinstance(obj, tuple):
        for c in obj:
            c.close()
    elif hasattr(obj, "shutdown"):
        obj.shutdown()
    elif hasattr(obj, "terminate"):
        obj.terminate()
        obj.join()
    else:
        obj.close()


def _check_factories(ns):
    """``ns`` (the module or a context) makes ring-backed objects."""
    q = ns.Queue(3)
    jq = ns.JoinableQueue()
    sq = ns.SimpleQueue()
    a, b = ns.Pipe()
    r, w = ns.Pipe(False)
    try:
        assert isinstance(q, gb.Ring) and not isinstance(q, gb.JoinableRing)
        assert q.maxsize == 3
        assert isinstance(jq, gb.JoinableRing)
        assert isinstance(sq, gbmp.queues.SimpleQueue)  # the stdlib's shape, on a gb pipe
        assert isinstance(sq._reader, gb.Connection) and isinstance(sq._writer, gb.Connection)
        for attr in ("get", "put", "empty", "close"):  # SimpleQueue's API
            assert callable(getattr(sq, attr))
        assert all(isinstance(c, gb.Connection) for c in (a, b, r, w))
        assert (r.readable, r.writable, w.readable, w.writable) == (True, False, False, True)
        sq.put("x")
        assert sq._reader.poll(10) and sq.get() == "x" and sq.empty()
        a.send(1)
        assert b.poll(10) and b.recv() == 1
    finally:
        for o in (q, jq, sq):
            o.close()
        for c in (a, b, r, w):
            c.close()


def test_module_factories_are_ring_backed():
    _check_factories(gbmp)


def test_module_pool_and_manager_are_ours():
    pool = gbmp.Pool(1)
    try:
        assert isinstance(pool, gb.Pool)
        assert pool.apply(pow, (2, 5)) == 32
    finally:
        _closing(pool)
    with gbmp.Manager() as m:
        assert isinstance(m, gb.GBManager)
        assert isinstance(m, mp.managers.SyncManager)
        d = m.dict(a=1)
        assert d["a"] == 1


@pytest.mark.parametrize("method", START_METHODS)
def test_get_context_has_the_same_substitutions(method):
    ctx = gbmp.get_context(method)
    std = mp.get_context(method)
    assert ctx.get_start_method() == method
    assert isinstance(ctx, type(std)), "our context subclasses the stdlib's"
    assert ctx.Process is std.Process
    assert gbmp.get_context(method) is ctx           # one context per method
    assert gb.get_context(method) is ctx
    assert ctx.get_context() is ctx and ctx.get_context(method) is ctx
    for name in dir(std):
        if name.startswith("_") or name in RING_BACKED | {"get_context"}:
            continue
        mine, theirs = getattr(ctx, name), getattr(std, name)
        if callable(theirs) and hasattr(theirs, "__func__"):
            assert mine.__func__ is theirs.__func__, name  # same implementation
    _check_factories(ctx)


@pytest.mark.parametrize("method", START_METHODS)
def test_context_pool_and_manager_use_the_start_method(method):
    ctx = gbmp.get_context(method)
    with ctx.Manager() as m:
        assert isinstance(m, gb.GBManager)
        assert m._ctx.get_start_method() == method
        ring = m.Ring(2)
        ring.put("via manager")
        assert ring.get(timeout=10) == "via manager"
        ring.close()
    pool = ctx.Pool(1)
    try:
        assert isinstance(pool, gb.Pool)
        assert pool.apply(divmod, (7, 2)) == (3, 1)
    finally:
        _closing(pool)


def test_get_context_without_method_follows_the_stdlib_default():
    assert gbmp.get_context().get_start_method() == mp.get_start_method()
    assert gbmp.get_context().get_start_method() == mp.get_context().get_start_method()
    with pytest.raises(ValueError):
        gbmp.get_context("no-such-method")


def test_start_method_is_the_stdlibs():
    """set_start_method / get_start_method are the stdlib's: setting it
    through either module sets it for both."""
    old = mp.get_start_method(allow_none=True)
    try:
        for method in START_METHODS:
            gbmp.set_start_method(method, force=True)
            assert mp.get_start_method() == method == gbmp.get_start_method()
            assert gbmp.get_context().get_start_method() == method
        mp.set_start_method(START_METHODS[0], force=True)
        assert gbmp.get_start_method() == START_METHODS[0]
        with pytest.raises(RuntimeError):
            gbmp.set_start_method(START_METHODS[-1])  # already set, as the stdlib
    finally:
        mp.set_start_method(old, force=True)
    assert gbmp.get_all_start_methods() == mp.get_all_start_methods()


def test_submodules():
    """``multiprocessing.connection`` / ``.managers`` / ``.pool`` are ours
    (with every stdlib name too); other submodules are the stdlib's."""
    assert gbmp.connection.Pipe is gb.Pipe
    assert gbmp.connection.Connection is gb.Connection
    for n in dir(mp.connection):  # Listener, Client, families, wait, ...
        if not n.startswith("_"):
            assert hasattr(gbmp.connection, n), n
    assert gbmp.connection.Listener is mp.connection.Listener
    assert gbmp.connection.families is mp.connection.families
    assert gbmp.managers.Manager is gb.Manager
    for n in dir(mp.managers):
        if not n.startswith("_"):
            assert hasattr(gbmp.managers, n), n
    assert gbmp.managers.BaseProxy is mp.managers.BaseProxy
    assert gbmp.pool.Pool is gb.Pool
    assert gbmp.pool.ThreadPool is mp.pool.ThreadPool
    for sub in ("util", "synchronize", "reduction", "shared_memory", "dummy", "spawn"):
        assert getattr(gbmp, sub) is importlib.import_module(f"multiprocessing.{sub}"), sub
    # queues: ours (a ring-backed SimpleQueue), the stdlib's Queue classes
    assert gbmp.queues.Queue is mp.queues.Queue
    assert gbmp.queues.JoinableQueue is mp.queues.JoinableQueue
    assert gbmp.queues.SimpleQueue is not mp.queues.SimpleQueue
    with pytest.raises(AttributeError):
        gbmp.no_such_thing  # noqa: B018 (the lookup is the test)


def test_connection_wait_accepts_both_kinds():
    a, b = gb.Pipe()
    c, d = mp.Pipe()
    try:
        assert gbmp.connection.wait([a, c], 0.05) == []
        b.send(1)
        d.send(2)
        assert set(gbmp.connection.wait([a, c], 10)) == {a, c}
    finally:
        for x in (a, b, c, d):
            x.close()


# -- the package's own exports ------------------------------------------------------

def _public_modules():
    yield gb
    for info in pkgutil.walk_packages(gb.__path__, "global_buffer."):
        if info.name.rsplit(".", 1)[-1].startswith("_") or info.name.endswith("__main__"):
            continue
        yield importlib.import_module(info.name)


def test_gb_all_exports_each_name_once_and_it_exists():
    assert len(gb.__all__) == len(set(gb.__all__)), [
        n for n in gb.__all__ if gb.__all__.count(n) > 1]
    for n in gb.__all__:
        assert hasattr(gb, n), n
    # everything public defined in the package namespace is exported
    public = {n for n, v in vars(gb).items()
              if not n.startswith("_") and not isinstance(v, type(gb))}
    public -= {"annotations"}
    assert public <= set(gb.__all__) | {"__version__"}, sorted(public - set(gb.__all__))
    for n in ("Ring", "JoinableRing", "Pipe", "Connection", "Manager", "GBManager", "Pool",
              "get_context"):
        assert n in gb.__all__


@pytest.mark.parametrize("mod", list(_public_modules()), ids=lambda m: m.__name__)
def test_every_module_has_a_consistent_all(mod):
    assert hasattr(mod, "__all__"), f"{mod.__name__} has no __all__"
    names = list(mod.__all__)
    assert len(names) == len(set(names)), f"{mod.__name__} exports a name twice"
    for n in names:
        assert hasattr(mod, n), f"{mod.__name__}.__all__ names missing {n!r}"
