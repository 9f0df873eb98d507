"""gb.Pool (SPEC §3.3, issue 5): the multiprocessing.Pool API over rings.

- Every API method with lambdas and closures (as functions and as results),
  and the same calls checked against ``multiprocessing.Pool`` (parity bodies
  written once, run on both).
- Callbacks, error callbacks, exceptions, chunksize, maxtasksperchild,
  initializer/initargs (a gb.Ring among them), 4 MiB numpy results.
- Worker death: a worker SIGKILLed (or exiting) mid-task fails that task
  with gb.WorkerLost naming it; the other tasks complete; the pool goes on.
- terminate() with tasks in flight returns promptly; the context manager.
- fork for the bulk, spawn and forkserver for smoke tests.

Every blocking call is bounded: results through ``.get(TIMEOUT)``, and
calls without a timeout (``map``, ``apply``, iterating ``imap``) through
``bounded()``; pools are always terminated by the ``pools`` fixture, before
the conftest leak check looks at /dev/shm.
"""
import functools
import itertools
import multiprocessing as mp
import multiprocessing.pool as mpp
import operator
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

import global_buffer as gb

from conftest import START_METHODS

TIMEOUT = 30          # bound on every call that should succeed
FORK = mp.get_context("fork")
MIB4 = (1024, 1024)   # float32: 4 MiB

pytestmark = pytest.mark.timeout(120)


def bounded(fn, *args, timeout=TIMEOUT, **kwargs):
    """Run a blocking call that takes no timeout in a thread and require it
    to finish within ``timeout``; return its result or re-raise its error."""
    box = {}

    def run():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: B902 - handed to the caller
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{fn} did not return within {timeout}s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def drain(it, timeout=TIMEOUT):
    """list(it) for an imap iterator, each step bounded (with chunksize > 1,
    imap returns a plain generator over such an iterator: bound the whole)."""
    if not hasattr(it, "next"):
        return bounded(list, it, timeout=timeout)
    out = []
    while True:
        try:
            out.append(it.next(timeout))
        except StopIteration:
            return out


class Pools:
    """Makes pools, always terminates them (with a bound), then checks that
    nothing of a gb pool is left in /dev/shm: its rings, board, leases and
    out-of-line items all carry the pool's unique name prefix."""

    def __init__(self):
        self.made = []

    def __call__(self, kind="gb", processes=2, ctx=FORK, **kwargs):
        if kind == "gb":
            p = gb.Pool(processes, context=ctx, **kwargs)
            self.made.append((p, p._inqueue.name[:-1]))
        else:
            p = ctx.Pool(processes, **kwargs)
            self.made.append((p, None))
        return p

    def cleanup(self):
        from global_buffer import segment
        for p, _ in self.made:
            bounded(p.terminate, timeout=15)
        prefixes = tuple(prefix for _, prefix in self.made if prefix)
        if prefixes:
            left = [n for n in segment.list_names() if n.startswith(prefixes)]
            for name in left:
                gb.unlink(name)
            assert not left, f"pool segments left after terminate(): {left}"


@pytest.fixture
def pools():
    made = Pools()
    yield made
    made.cleanup()


@pytest.fixture(params=["mp", "gb"])
def kind(request):
    return request.param


# -- module-level helpers (picklable by reference under every start method) ------

def square(x):
    return x * x


def add(a, b):
    return a + b


def kwfunc(a, b=0, *, c=1):
    return (a, b, c)


def getpid(_=None):
    return os.getpid()


def sleep_then(x, seconds=0.05):
    time.sleep(seconds)
    return x


class Boom(Exception):
    pass


def boom_at(x, bad=3):
    if x == bad:
        raise Boom(f"bad {x}")
    return x


def report_and_sleep(ring, x, seconds=60):
    """Tell the test which worker runs this, then take (too) long."""
    ring.put((x, os.getpid()))
    time.sleep(seconds)
    return x


def report_then(ring, x):
    ring.put((x, os.getpid()))
    return x


def exit_now(code):
    os._exit(code)


def sys_exit(code):
    sys.exit(code)


def big_array(seed):
    return np.full(MIB4, seed, np.float32)


def make_frame(i):
    a = np.empty(MIB4, np.float32)
    a[:] = np.arange(MIB4[1], dtype=np.float32)
    a[:, 0] = i
    return a


_STATE = {}


def store_init(ring, tag):
    _STATE["ring"] = ring
    _STATE["tag"] = tag


def use_init(x):
    _STATE["ring"].put((_STATE["tag"], x, os.getpid()))
    return x


class LoadFails:
    """Pickles fine in the pool process, fails to unpickle in a worker."""

    def __init__(self, parent):
        self.parent = parent

    def __reduce__(self):
        return (_load_fails, (self.parent,))


def _load_fails(parent):
    if os.getpid() != parent:
        raise RuntimeError("cannot be unpickled in a worker")
    return LoadFails(parent)


def identity(x):
    return x


def make_generator():
    yield 1


# -- the API: lambdas and closures -------------------------------------------------

def test_every_method_with_lambdas_and_closures(pools):
    p = pools()
    k = 7
    times_k = lambda x: x * k  # noqa: E731 - a lambda on purpose
    adder = functools.partial(add, 100)

    def closure(x, offset=k):
        return x + offset + k

    assert bounded(p.map, times_k, range(20)) == [x * 7 for x in range(20)]
    assert bounded(p.map, closure, range(5), 2) == [x + 14 for x in range(5)]
    assert bounded(p.starmap, lambda a, b: a * b + k, [(1, 2), (3, 4)]) == [9, 19]
    assert bounded(p.apply, lambda a, *, b: a - b + k, (10,), {"b": 3}) == 14
    assert drain(p.imap(closure, range(10))) == [x + 14 for x in range(10)]
    assert drain(p.imap(times_k, range(10), chunksize=3)) == [x * 7 for x in range(10)]
    assert sorted(drain(p.imap_unordered(adder, range(10)))) == list(range(100, 110))
    assert sorted(bounded(list, p.imap_unordered(lambda x: -x, range(9), chunksize=4))) == \
        sorted(-x for x in range(9))
    assert p.apply_async(closure, (1,)).get(TIMEOUT) == 15
    assert p.map_async(times_k, range(4)).get(TIMEOUT) == [0, 7, 14, 21]
    assert p.starmap_async(lambda *a: sum(a), [(1, 2, 3)] * 3).get(TIMEOUT) == [6, 6, 6]
    # lambdas, closures and local classes as results
    f = p.apply_async(lambda: lambda y: y + k).get(TIMEOUT)
    assert f(1) == 8

    class Local:
        def __init__(self, v):
            self.v = v

    objs = p.map_async(lambda v: Local(v), range(3)).get(TIMEOUT)
    assert [o.v for o in objs] == [0, 1, 2]


# -- parity with multiprocessing.Pool ------------------------------------------------

def _api_calls(p):
    """The same calls on any pool: what each returned, or the error type."""
    out = {}

    def record(name, fn, *args, **kwargs):
        try:
            out[name] = bounded(fn, *args, **kwargs)
        except Exception as e:
            out[name] = ("error", type(e).__name__)

    record("map", p.map, square, range(50))
    record("map_chunks", p.map, square, range(50), 7)
    record("map_empty", p.map, square, [])
    record("map_gen", p.map, square, (x for x in range(10)))
    record("map_bigchunk", p.map, square, range(10), 1000)
    record("starmap", p.starmap, add, [(i, 2 * i) for i in range(20)])
    record("starmap_empty", p.starmap, add, [])
    record("apply", p.apply, add, (2, 3))
    record("apply_kwargs", p.apply, kwfunc, (1,), {"b": 5, "c": 9})
    record("imap", lambda: drain(p.imap(square, range(30))))
    record("imap_chunks", lambda: drain(p.imap(square, range(30), chunksize=4)))
    record("imap_empty", lambda: drain(p.imap(square, [])))
    record("imap_unordered", lambda: sorted(drain(p.imap_unordered(square, range(30)))))
    record("imap_unordered_chunks",
           lambda: sorted(bounded(list, p.imap_unordered(square, range(30), chunksize=7))))
    record("apply_async", lambda: p.apply_async(square, (9,)).get(TIMEOUT))
    record("map_async", lambda: p.map_async(square, range(10), 3).get(TIMEOUT))
    record("starmap_async", lambda: p.starmap_async(add, [(1, 2)] * 3).get(TIMEOUT))
    record("map_raises", p.map, boom_at, range(10))
    record("apply_raises", p.apply, boom_at, (3,))
    record("imap_raises_at_3", lambda: drain(p.imap(boom_at, range(10))))
    record("bad_chunksize", p.imap, square, range(3), 0)
    record("bad_chunksize_unordered", p.imap_unordered, square, range(3), -1)
    record("unpicklable_arg", lambda: p.apply_async(identity, (threading.Lock(),)).get(TIMEOUT))
    record("unpicklable_result", lambda: p.apply_async(make_generator).get(TIMEOUT))
    it = p.imap(boom_at, range(6))
    seq = []
    for _ in range(6):
        try:
            seq.append(it.next(TIMEOUT))
        except Boom:
            seq.append("Boom")
    out["imap_sequence"] = seq
    mr = p.map_async(square, range(5))
    mr.wait(TIMEOUT)
    out["map_async_state"] = (mr.ready(), mr.successful())
    return out


def test_parity_with_stdlib(pools):
    ours = _api_calls(pools("gb"))
    theirs = _api_calls(pools("mp"))
    assert ours == theirs
    assert ours["map"] == [x * x for x in range(50)]
    assert ours["imap_sequence"] == [0, 1, 2, "Boom", 4, 5]
    # we carry lambdas where the stdlib cannot
    assert bounded(pools("gb").map, lambda x: x + 1, [1]) == [2]
    import pickle
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        bounded(pools("mp").map, lambda x: x + 1, [1])


def test_exception_keeps_type_and_remote_traceback(pools, kind):
    p = pools(kind)
    with pytest.raises(Boom, match="bad 3") as info:
        p.apply_async(boom_at, (3,)).get(TIMEOUT)
    assert isinstance(info.value.__cause__, mpp.RemoteTraceback)
    assert "boom_at" in str(info.value.__cause__)
    with pytest.raises(Boom):
        p.map_async(boom_at, range(8), 2).get(TIMEOUT)


def test_lambda_exception(pools):
    p = pools()
    with pytest.raises(ZeroDivisionError):
        p.apply_async(lambda: 1 / 0).get(TIMEOUT)

    class LocalError(ValueError):
        pass

    def raise_local():
        raise LocalError("local")

    with pytest.raises(ValueError, match="local"):
        p.apply_async(raise_local).get(TIMEOUT)


def test_callbacks(pools, kind):
    p = pools(kind)
    got, errors, threads = [], [], set()

    def cb(value):
        got.append(value)
        threads.add(threading.current_thread().name)

    r1 = p.apply_async(square, (4,), callback=cb, error_callback=errors.append)
    r2 = p.map_async(square, range(5), callback=cb, error_callback=errors.append)
    r3 = p.starmap_async(add, [(1, 1)], callback=cb)
    r4 = p.apply_async(boom_at, (3,), callback=cb, error_callback=errors.append)
    r5 = p.map_async(boom_at, range(6), 1, callback=cb, error_callback=errors.append)
    for r in (r1, r2, r3, r4, r5):
        r.wait(TIMEOUT)
        assert r.ready()
    assert r1.successful() and r2.successful() and not r4.successful() and not r5.successful()
    assert sorted(got, key=str) == sorted([16, [0, 1, 4, 9, 16], [2]], key=str)
    assert [type(e) for e in errors] == [Boom, Boom]
    assert threading.current_thread().name not in threads  # the result handler's


def test_a_raising_callback_does_not_stop_the_pool(pools, capfd):
    p = pools()

    def bad_callback(_):
        raise RuntimeError("callback failed")

    p.apply_async(square, (2,), callback=bad_callback)
    assert p.apply_async(square, (3,)).get(TIMEOUT) == 9
    assert p.map_async(square, range(4)).get(TIMEOUT) == [0, 1, 4, 9]
    err, deadline = "", time.monotonic() + 10
    while "callback failed" not in err and time.monotonic() < deadline:
        time.sleep(0.05)
        err += capfd.readouterr().err
    assert "RuntimeError: callback failed" in err


def test_a_raising_callback_still_sets_its_result(pools, capfd):
    """A callback that raises is reported, and its result is set all the
    same: ready, get() returns it, and close()/join() do not wait for it
    (the stdlib's result handler dies instead, and every result after it
    hangs)."""
    p = pools()

    def bad(_):
        raise RuntimeError("callback failed")

    rs = [p.apply_async(square, (3,), callback=bad),
          p.apply_async(boom_at, (3,), error_callback=bad),
          p.map_async(square, range(4), callback=bad),
          p.map_async(boom_at, range(6), 1, error_callback=bad)]
    for r in rs:
        r.wait(TIMEOUT)
        assert r.ready()
    assert rs[0].get(0) == 9 and rs[2].get(0) == [0, 1, 4, 9]
    for r in rs[1::2]:
        with pytest.raises(Boom):
            r.get(0)
    p.close()
    bounded(p.join)
    assert capfd.readouterr().err.count("RuntimeError: callback failed") == 4


def test_apply_async_burst_past_the_task_ring(pools):
    """More apply_async calls in a row than the task ring holds: some go
    straight into the ring, the rest through the task handler (the caller
    hands it the GIL when the ring runs low, see Pool.apply_async); a
    map_async and tasks with callbacks in between.  Every result arrives
    once, on the right result object."""
    p = pools()
    n = 8 * p._inqueue.maxsize
    got = []
    rs = [p.apply_async(square, (i,), callback=got.append if i % 97 == 0 else None)
          for i in range(n // 2)]
    m = p.map_async(square, range(1000), 7)
    rs += [p.apply_async(square, (i,)) for i in range(n // 2, n)]
    assert [r.get(TIMEOUT) for r in rs] == [i * i for i in range(n)]
    assert m.get(TIMEOUT) == [i * i for i in range(1000)]
    assert sorted(got) == [i * i for i in range(0, n // 2, 97)]
    assert not p._cache


def test_many_threads_wait_for_one_result(pools):
    """wait() and get() from several threads before the result is there:
    each passes once it is set; a wait() that times out leaves the result
    unready and waitable again."""
    p = pools()
    r = p.apply_async(sleep_then, ("late", 1.0))
    r.wait(0.01)
    assert not r.ready()
    with pytest.raises(mp.TimeoutError):
        r.get(0)
    out = []
    threads = [threading.Thread(target=lambda: out.append(r.get(TIMEOUT))) for _ in range(6)]
    threads += [threading.Thread(target=lambda: (r.wait(), out.append(r.get(0))))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
        assert not t.is_alive()
    assert out == ["late"] * 7
    r.wait(0)  # ready: returns at once, as often as asked
    assert r.get(0) == "late"


@pytest.mark.parametrize("chunksize", [1, 2, 3, 16, 1000])
def test_chunksize(pools, chunksize):
    p = pools()
    xs = list(range(37))
    assert bounded(p.map, square, xs, chunksize) == [x * x for x in xs]
    assert bounded(p.starmap, add, [(x, x) for x in xs], chunksize) == [2 * x for x in xs]
    assert drain(p.imap(square, xs, chunksize)) == [x * x for x in xs]
    assert sorted(bounded(list, p.imap_unordered(square, xs, chunksize))) == [x * x for x in xs]


@pytest.mark.parametrize("seq", [range(37), range(5, 100, 7), range(50, -3, -4), range(0),
                                 range(10**6, 10**6 + 5)], ids=repr)
@pytest.mark.parametrize("chunksize", [None, 1, 3, 1000])
def test_map_over_a_range_goes_in_range_chunks(pools, seq, chunksize):
    """map/imap over a range send each chunk as a range (nothing to build or
    pickle per int), with the stdlib's results and errors."""
    p, ref = pools(), pools("mp")
    for pool in (p, ref):
        assert bounded(pool.map, square, seq, chunksize) == [x * x for x in seq]
        assert drain(pool.imap(square, seq, chunksize or 2)) == [x * x for x in seq]
        assert sorted(drain(pool.imap_unordered(square, seq, chunksize or 2))) == \
            sorted(x * x for x in seq)
        if len(seq):
            with pytest.raises(TypeError):  # starmap of ints: the stdlib's error
                bounded(pool.starmap, add, seq, chunksize)
    if chunksize and len(seq):
        chunks = list(gb.Pool._get_tasks(square, seq, chunksize))
        assert all(type(c) is range and f is square for f, c in chunks)
        assert [x for _, c in chunks for x in c] == list(seq)


def test_maxtasksperchild(pools):
    p = pools(processes=2, maxtasksperchild=2)
    pids = [p.apply_async(getpid).get(TIMEOUT) for _ in range(8)]
    assert len(set(pids)) >= 4  # each worker serves at most two tasks
    assert p.map_async(square, range(30), 1).get(TIMEOUT) == [x * x for x in range(30)]
    # with large results too: leases of exited workers are not leaked
    out = p.map_async(big_array, range(6), 1).get(TIMEOUT)
    assert [float(a[0, 0]) for a in out] == list(range(6))


def test_arguments_are_checked_as_the_stdlib_does():
    with pytest.raises(ValueError):
        gb.Pool(0)
    with pytest.raises(ValueError):
        gb.Pool(1, maxtasksperchild=0)
    with pytest.raises(ValueError):
        gb.Pool(1, maxtasksperchild=-1)
    with pytest.raises(TypeError):
        gb.Pool(1, initializer=3)


def test_initializer_receives_a_ring(pools, shm_name):
    ring = gb.Ring(maxsize=64, name=shm_name)
    p = pools(initializer=store_init, initargs=(ring, "fork-init"))
    assert p.map_async(use_init, range(10), 1).get(TIMEOUT) == list(range(10))
    got = sorted(ring.get(timeout=TIMEOUT) for _ in range(10))
    assert [g[:2] for g in got] == [("fork-init", i) for i in range(10)]
    assert {g[2] for g in got} <= {w.pid for w in p._pool}
    bounded(p.terminate)
    ring.close()


def test_lambda_initializer(pools, shm_name):
    ring = gb.Ring(maxsize=8, name=shm_name)
    p = pools(processes=2, initializer=lambda r: r.put(("up", os.getpid())), initargs=(ring,))
    ups = {ring.get(timeout=TIMEOUT) for _ in range(2)}
    assert {u[0] for u in ups} == {"up"}
    assert {u[1] for u in ups} == {w.pid for w in p._pool}
    bounded(p.terminate)
    ring.close()


# -- numpy results ---------------------------------------------------------------------

def test_4mib_numpy_results(pools):
    p = pools()
    out = p.map_async(make_frame, range(6), 1).get(TIMEOUT)
    for i, a in enumerate(out):
        assert a.shape == MIB4 and a.dtype == np.float32 and a.nbytes == 4 << 20
        assert a[0, 0] == i and a[-1, 0] == i and a[5, 7] == 7 and a[-1, -1] == MIB4[1] - 1
        assert a.flags.writeable and a.flags.c_contiguous
        a[:] = -1  # ours to write: no other result changes
    assert all((b == -1).all() for b in out)
    # results outlive the pool, and leases go back for reuse when dropped
    single = p.apply_async(big_array, (5,)).get(TIMEOUT)
    del out
    again = p.map_async(make_frame, range(6), 1).get(TIMEOUT)
    assert [int(a[0, 0]) for a in again] == list(range(6))
    bounded(p.terminate)
    assert float(single.sum()) == 5.0 * single.size
    assert float(again[3][1, 0]) == 3.0


def test_4mib_numpy_arguments_and_mixed_results(pools):
    p = pools()
    a = np.arange(MIB4[0] * MIB4[1], dtype=np.float32).reshape(MIB4)
    total = p.apply_async(np.sum, (a,), {"dtype": np.float64}).get(TIMEOUT)
    assert total == a.sum(dtype=np.float64)
    back = p.apply_async(lambda x: (x, x * 2, "tag", np.zeros(3)), (a,)).get(TIMEOUT)
    assert (back[0] == a).all() and (back[1] == a * 2).all() and back[2] == "tag"
    assert back[0].flags.writeable
    views = p.apply_async(lambda x: [x[::2], x.T], (a,)).get(TIMEOUT)  # non-contiguous
    assert (views[0] == a[::2]).all() and (views[1] == a.T).all()


_HELD = []


def _drop_held():
    import gc
    _HELD.clear()
    gc.collect()


def test_a_forked_child_dropping_a_result_does_not_free_it(pools, children):
    p = pools(processes=1)
    _HELD.append(p.apply_async(big_array, (1,)).get(TIMEOUT))
    try:
        assert children.join(children.start(FORK, _drop_held), TIMEOUT) == 0
        # the worker must not reuse the lease behind our array
        fresh = [p.apply_async(big_array, (i,)).get(TIMEOUT) for i in (2, 3)]
        assert float(_HELD[0].min()) == float(_HELD[0].max()) == 1.0
        assert [float(a[0, 0]) for a in fresh] == [2.0, 3.0]
    finally:
        _HELD.clear()


def test_large_items_travel_in_the_rings_blobs(pools):
    """One out-of-line mechanism (issue 12 item 2): large arguments and
    results go through the rings' own blobs (``<ring>.b<pid>.<n>``), reused
    by their sender; the pool makes no segments of its own besides its two
    rings and the board."""
    from global_buffer import segment
    p = pools()
    prefix = p._inqueue.name[:-1]
    items = [bytes(range(256)) * 4000, list(range(100_000)), {"k": "v" * 300_000},
             [np.arange(10)] * 3000]
    out = p.map_async(identity, items, 1).get(TIMEOUT)
    assert out[:3] == items[:3] and all((a == np.arange(10)).all() for a in out[3])
    assert p.apply_async(len, (items[1],)).get(TIMEOUT) == 100_000
    frame = p.apply_async(big_array, (7,)).get(TIMEOUT)
    assert float(frame.min()) == float(frame.max()) == 7.0
    rings = (p._inqueue.name, p._outqueue.name)
    names = [n for n in segment.list_names() if n.startswith(prefix)]
    blobs = [n for n in names if n.startswith(tuple(r + ".b" for r in rings))]
    assert blobs, names  # the large items went out of line, in ring blobs
    assert set(names) - set(blobs) == {p._inqueue.name, p._outqueue.name, prefix + "w"}


# -- lost workers ---------------------------------------------------------------------

def _wait_pids(ring, n):
    return dict(ring.get(timeout=TIMEOUT) for _ in range(n))


def test_worker_sigkilled_mid_task(pools, shm_name):
    ring = gb.Ring(maxsize=64, name=shm_name)
    p = pools(processes=2)
    victim = p.apply_async(report_and_sleep, (ring, "victim"))
    pid = _wait_pids(ring, 1)["victim"]
    others = [p.apply_async(sleep_then, (i, 0.01)) for i in range(10)]
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(gb.WorkerLost, match=f"{pid}.*SIGKILL") as info:
        victim.get(TIMEOUT)
    err = info.value
    assert err.pid == pid and err.exitcode == -signal.SIGKILL
    assert isinstance(err, gb.GlobalBufferError) and isinstance(err, mp.ProcessError)
    assert [r.get(TIMEOUT) for r in others] == list(range(10))
    # replaced, and still serving
    assert p.map_async(square, range(20), 1).get(TIMEOUT) == [x * x for x in range(20)]
    assert len(p._pool) == 2 and pid not in {w.pid for w in p._pool}
    bounded(p.terminate)
    ring.close()


def test_worker_killed_during_map_and_imap(pools, shm_name):
    ring = gb.Ring(maxsize=64, name=shm_name)
    p = pools(processes=2)

    def task(x):
        return report_and_sleep(ring, x) if x == 3 else x

    it = p.imap(task, range(8))
    os.kill(_wait_pids(ring, 1)[3], signal.SIGKILL)
    got = []
    for _ in range(8):
        try:
            got.append(it.next(TIMEOUT))
        except gb.WorkerLost:
            got.append("lost")
    assert got == [0, 1, 2, "lost", 4, 5, 6, 7]
    with pytest.raises(StopIteration):
        it.next(TIMEOUT)

    r = p.map_async(task, range(8), 2)
    os.kill(_wait_pids(ring, 1)[3], signal.SIGKILL)
    with pytest.raises(gb.WorkerLost):
        r.get(TIMEOUT)
    assert p.map_async(square, range(5)).get(TIMEOUT) == [0, 1, 4, 9, 16]
    bounded(p.terminate)
    ring.close()


def quick_or_die(x, die_at=-1):
    if x == die_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def _results_or_lost(it, n):
    """The n results of an imap iterator, "lost" for each WorkerLost; then
    the iterator is exhausted."""
    got = []
    for _ in range(n):
        try:
            got.append(it.next(TIMEOUT))
        except gb.WorkerLost:
            got.append("lost")
    with pytest.raises(StopIteration):
        it.next(TIMEOUT)
    return got


def test_worker_killed_with_batched_results_in_hand(pools):
    """A worker sends the plain results of a long run of quick tasks in
    batches; killed before sending one, each task of that batch fails with
    WorkerLost (none hangs, none is answered twice) and the pool goes on
    (issue 12 item 1)."""
    from global_buffer.multiprocessing import pool as gbpool
    p = pools(processes=1)
    n = 4 * gbpool._STREAK
    got = _results_or_lost(p.imap(functools.partial(quick_or_die, die_at=n), range(n + 1),
                                  chunksize=1), n + 1)
    assert got[-1] == "lost"
    answered = [g for g in got if g != "lost"]
    assert answered == list(range(len(answered)))  # a prefix answered, the rest lost
    assert got[:gbpool._STREAK] == list(range(gbpool._STREAK))  # not batched yet
    assert p.map_async(square, range(50), 1).get(TIMEOUT) == [x * x for x in range(50)]


def fail_some(x):
    if x % 97 == 5:
        raise ValueError(x)
    return x + 1


@pytest.mark.parametrize("seq", [list(range(3000)), tuple(range(3000)), range(3000)],
                         ids=["list", "tuple", "range"])
def test_imap_of_quick_tasks_over_a_sequence_goes_in_runs(pools, seq):
    """imap/imap_unordered with chunksize 1 over a list, tuple or range send
    quick tasks in runs (issue 12 item 1): the same results, in order, each
    task's exception its own; items that are not plain scalars go one by
    one; a pool with maxtasksperchild never makes runs."""
    p = pools(processes=2)
    it = p.imap(fail_some, seq)
    for x in range(3000):
        if x % 97 == 5:
            with pytest.raises(ValueError, match=f"^{x}$"):
                it.next(TIMEOUT)
        else:
            assert it.next(TIMEOUT) == x + 1
    with pytest.raises(StopIteration):
        it.next(TIMEOUT)
    assert it._quick  # results came back in batches, so later tasks went in runs
    assert sorted(bounded(list, p.imap_unordered(square, seq))) == [x * x for x in seq]
    mixed = [x if x % 3 else (x,) for x in range(500)]  # tuples: not in runs
    assert bounded(list, p.imap(repr, mixed)) == [repr(x) for x in mixed]
    q = pools(processes=2, maxtasksperchild=1000)
    assert bounded(list, q.imap(square, seq)) == [x * x for x in seq]


def test_task_runs_are_made_once_tasks_prove_quick():
    """What Pool._task_runs yields: single tasks until the result handler
    marked the job quick, then runs of at most _RUN_MAX plain scalars and
    at most a 2*processes-th of what is left; non-scalars one by one."""
    from global_buffer.multiprocessing import pool as gbpool

    class Result:
        _job, _quick = 7, False

    class Fake:
        _processes = 2
    r = Result()
    gen = gbpool.Pool._task_runs(Fake(), r, square, list(range(100)) + ["a", b"b", (1,)])
    assert next(gen) == (7, 0, square, (0,), {})
    r._quick = True
    runs = list(gen)
    assert runs[0] == (7, 1, square, list(range(1, 26)), gbpool._RUN)  # 102 left // 4
    covered = [x for t in runs for x in (t[3] if t[4] is gbpool._RUN else t[3])]
    assert covered == list(range(1, 100)) + ["a", b"b", (1,)]
    assert all(len(t[3]) <= gbpool._RUN_MAX for t in runs)
    assert runs[-1] == (7, 102, square, ((1,),), {})


def test_worker_killed_mid_run(pools):
    """A worker killed in the middle of a run fails that run's unanswered
    tasks with WorkerLost, never answers one twice, leaves no task waiting
    for ever, and the pool goes on (issue 12 item 1)."""
    from global_buffer.multiprocessing import pool as gbpool
    p = pools(processes=2)
    n, die_at = 4000, 3000
    it = p.imap(functools.partial(quick_or_die, die_at=die_at), range(n))
    got = _results_or_lost(it, n)
    assert got[die_at] == "lost"
    lost = [x for x, g in enumerate(got) if g == "lost"]
    assert all(got[x] == x for x in range(n) if got[x] != "lost")
    # what the dead worker had in hand: its run, and results not yet sent
    assert len(lost) <= gbpool._RUN_MAX + gbpool._Board.BATCH, lost
    assert it._quick
    assert p.map_async(square, range(50), 1).get(TIMEOUT) == [x * x for x in range(50)]


def spin_30us(x):
    end = time.perf_counter() + 30e-6
    while time.perf_counter() < end:
        pass
    return x


def test_the_board_never_overflows_after_runs(shm_name, children):
    """Two runs whose results went out mid-run stay on the worker's board
    until a clear (64 entries: full); a plain task after them must clear it
    first, not write a 65th entry over the next worker's slot (found by
    reading: the single-task path had no bound).  A real worker, fed by
    hand: quick tasks, so results are batched and sent mid-run by age."""
    import pickle

    from global_buffer.multiprocessing import pool as gbpool
    from global_buffer.segment import self_start_time
    inq, outq = gb.Ring(maxsize=256), gb.Ring(maxsize=256)
    board = gbpool._Board(shm_name, 2, (os.getpid(), self_start_time()))
    try:
        fn, job = pickle.dumps(spin_30us), 5
        items = [(job, 0, fn, list(range(32)), gbpool._RUN),
                 (job, 32, fn, list(range(32, 64)), gbpool._RUN)]
        items += [(job, i, fn, (i,), {}) for i in range(64, 67)]
        for item in items + [None]:
            inq.put(item, timeout=TIMEOUT)
        w = children.start(mp.get_context("fork"), gbpool.worker, inq, outq,
                           board=board, slot=0)
        got = {}
        deadline = time.monotonic() + TIMEOUT
        while len(got) < 67 and time.monotonic() < deadline:
            try:
                r = outq.get(timeout=0.5)
            except gb.Empty:
                if not w.is_alive():
                    break
                continue
            for _, i, ok, value in (r[2] if r[0] == gbpool._BATCH
                                       else [(r[0], r[1], r[3], r[4])]):
                assert ok, value  # a board overflow fails the worker's tasks
                got[i] = value
        w.join(TIMEOUT)
        assert w.exitcode == 0
        assert got == {i: i for i in range(67)}
        assert board.taken(1) == []  # the neighbour's slot untouched
    finally:
        board.remove()
        inq.close()
        outq.close()


@pytest.mark.parametrize("how, code, match", [(exit_now, 0, "exited with code 0"),
                                              (sys_exit, 3, "exited with code 3")])
def test_worker_exiting_mid_task(pools, how, code, match):
    p = pools(processes=2)
    r = p.apply_async(how, (code,))
    with pytest.raises(gb.WorkerLost, match=match):
        r.get(TIMEOUT)
    assert p.apply_async(square, (5,)).get(TIMEOUT) == 25


def test_every_worker_killed_at_once(pools, shm_name):
    ring = gb.Ring(maxsize=64, name=shm_name)
    p = pools(processes=2)
    rs = [p.apply_async(report_and_sleep, (ring, i)) for i in range(2)]
    pids = _wait_pids(ring, 2)
    queued = [p.apply_async(square, (i,)) for i in range(5)]
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    for r in rs:
        with pytest.raises(gb.WorkerLost):
            r.get(TIMEOUT)
    assert [r.get(TIMEOUT) for r in queued] == [0, 1, 4, 9, 16]
    bounded(p.terminate)
    ring.close()


def test_close_join_with_a_lost_worker_does_not_hang(pools, shm_name):
    ring = gb.Ring(maxsize=8, name=shm_name)
    p = pools(processes=2)
    r = p.apply_async(report_and_sleep, (ring, "v"))
    ok = p.apply_async(square, (6,))
    pid = _wait_pids(ring, 1)["v"]
    p.close()
    os.kill(pid, signal.SIGKILL)
    bounded(p.join)
    with pytest.raises(gb.WorkerLost):
        r.get(0)
    assert ok.get(0) == 36
    ring.close()


def test_undecodable_task_fails_only_that_task(pools):
    p = pools()
    r = p.apply_async(identity, (LoadFails(os.getpid()),))
    with pytest.raises(RuntimeError, match="cannot be unpickled"):
        r.get(TIMEOUT)
    assert p.apply_async(square, (7,)).get(TIMEOUT) == 49


# -- shutdown ---------------------------------------------------------------------------

def test_terminate_with_tasks_in_flight_is_prompt(pools):
    p = pools(processes=2)
    assert p.apply_async(square, (2,)).get(TIMEOUT) == 4  # workers up
    rs = [p.apply_async(sleep_then, (i, 60)) for i in range(6)]
    p.imap(square, itertools.count())  # the task handler blocks on a full ring
    time.sleep(0.5)
    t0 = time.monotonic()
    p.terminate()
    assert time.monotonic() - t0 < 5
    assert not any(w.is_alive() for w in p._pool)
    assert not any(r.ready() for r in rs)


def test_close_then_join(pools, kind):
    p = pools(kind)
    r = p.map_async(sleep_then, range(6), 1)
    p.close()
    with pytest.raises(ValueError):
        p.apply_async(square, (1,))
    bounded(p.join)
    assert r.get(0) == list(range(6))
    with pytest.raises(ValueError):
        p.map(square, [1])


def test_join_while_running_raises(pools, kind):
    p = pools(kind)
    with pytest.raises(ValueError):
        p.join()


def test_context_manager(pools, kind):
    with pools(kind) as p:
        assert p.apply_async(square, (3,)).get(TIMEOUT) == 9
        workers = list(p._pool)
    # __exit__ terminates, as the stdlib's
    deadline = time.monotonic() + 10
    while any(w.is_alive() for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(w.is_alive() for w in workers)
    with pytest.raises(ValueError):
        p.apply_async(square, (1,))


def test_is_a_multiprocessing_pool(pools):
    p = pools()
    assert isinstance(p, mpp.Pool)
    # the Pool lives with the multiprocessing face (issue 12 item 5)
    import global_buffer.multiprocessing.pool as gbpool
    assert gb.Pool is gbpool.Pool and gb.WorkerLost is gbpool.WorkerLost
    assert gbpool.ThreadPool is mpp.ThreadPool
    assert not hasattr(gb, "pool")
    assert "Pool" in gb.__all__ and "WorkerLost" in gb.__all__
    assert issubclass(gb.WorkerLost, gb.GlobalBufferError)
    assert "state=RUN" in repr(p)
    with pytest.raises(NotImplementedError):
        import pickle
        pickle.dumps(p)
    e = gb.WorkerLost(123, -9, "gone")
    import pickle
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.pid, e2.exitcode, str(e2)) == (123, -9, "gone")


def test_no_segments_left_after_shutdown(pools):
    from global_buffer import segment
    before = set(segment.list_names())
    p = pools(processes=2, maxtasksperchild=3)
    kept = p.map_async(big_array, range(8), 1).get(TIMEOUT)
    p.map_async(identity, [list(range(5000))] * 4, 1).get(TIMEOUT)  # out-of-line items
    p.close()
    bounded(p.join)
    assert set(segment.list_names()) <= before
    assert float(kept[7][0, 0]) == 7.0  # still mapped after the names are gone


EXIT_WITHOUT_CLOSE = """
import multiprocessing as mp, os, sys
import numpy as np
import global_buffer as gb
def f(x):
    return np.full(300_000, x)
if __name__ == "__main__":
    p = gb.Pool(2, context=mp.get_context(sys.argv[1]))
    print(p.map(f, range(4))[3][0], p._inqueue.name[:-1], flush=True)
    # no close()/terminate(): interpreter exit must still stop the pool
"""


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_interpreter_exit_with_a_running_pool(tmp_path, method):
    import subprocess

    from global_buffer import segment
    script = tmp_path / "exit_without_close.py"
    script.write_text(EXIT_WITHOUT_CLOSE)
    r = subprocess.run([sys.executable, "-W", "ignore", str(script), method],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    value, prefix = r.stdout.split()
    assert value == "3"
    assert [n for n in segment.list_names() if n.startswith(prefix)] == []


# -- start methods --------------------------------------------------------------------

@pytest.mark.parametrize("method", [m for m in START_METHODS if m != "fork"])
def test_start_methods_smoke(pools, method, shm_name):
    ctx = mp.get_context(method)
    ring = gb.Ring(maxsize=16, name=shm_name)
    k = 5
    p = pools(processes=2, ctx=ctx, initializer=store_init, initargs=(ring, method))
    assert p.map_async(lambda x: x * k, range(10), 3).get(TIMEOUT) == [x * 5 for x in range(10)]
    assert p.apply_async(use_init, ("x",)).get(TIMEOUT) == "x"
    assert ring.get(timeout=TIMEOUT)[:2] == (method, "x")
    a = p.apply_async(make_frame, (9,)).get(TIMEOUT)
    assert a[0, 0] == 9 and a.flags.writeable
    assert drain(p.imap_unordered(operator.neg, range(4))) != []
    bounded(p.terminate)
    ring.close()


@pytest.mark.parametrize("method", START_METHODS)
def test_sigkill_after_large_results(pools, method, shm_name):
    """A worker killed mid-task after it sent results larger than a slot:
    the arrays the pool holds (views of that worker's blobs) stay valid,
    the task fails with WorkerLost, the pool goes on, and once it is
    terminated nothing of it is left in /dev/shm (the Pools fixture checks;
    SPEC §3.3, issue 12)."""
    ring = gb.Ring(maxsize=16, name=shm_name)
    p = pools(processes=1, ctx=mp.get_context(method))
    held = [p.apply_async(big_array, (i,)).get(TIMEOUT) for i in range(3)]
    victim = p.apply_async(report_and_sleep, (ring, "v"))
    pid = _wait_pids(ring, 1)["v"]
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(gb.WorkerLost, match=str(pid)):
        victim.get(TIMEOUT)
    assert [float(a.mean()) for a in held] == [0.0, 1.0, 2.0]
    again = p.apply_async(big_array, (7,)).get(TIMEOUT)
    assert float(again.min()) == 7.0 and [float(a[5, 5]) for a in held] == [0.0, 1.0, 2.0]
    bounded(p.terminate)
    assert float(held[2].max()) == 2.0  # still mapped after the names are gone
    ring.close()


@pytest.mark.skipif("spawn" not in START_METHODS, reason="no spawn")
def test_sigkill_under_spawn(pools, shm_name):
    ring = gb.Ring(maxsize=16, name=shm_name)
    p = pools(processes=2, ctx=mp.get_context("spawn"))
    victim = p.apply_async(report_and_sleep, (ring, "v"))
    pid = _wait_pids(ring, 1)["v"]
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(gb.WorkerLost, match=str(pid)):
        victim.get(TIMEOUT)
    assert p.map_async(lambda x: -x, range(6), 1).get(TIMEOUT) == [-x for x in range(6)]
    bounded(p.terminate)
    ring.close()
