"""Stdlib consumers of a context on ours (SPEC §3.3, issue 15 item 1):
``concurrent.futures.ProcessPoolExecutor(mp_context=ctx)`` and
``multiprocessing.pool.Pool(context=ctx)`` with
``ctx = global_buffer.multiprocessing.get_context(method)``, under fork,
spawn and forkserver, and the ring-backed ``SimpleQueue`` they use through
its private attributes (``_reader``, ``_writer``, ``_rlock``, ``_wlock``,
``_poll``).

The executor and Pool scenarios run in a fresh interpreter each
(``_scenario``) with a hard timeout, its process group killed on expiry:
a hang there (a manager thread blocked in ``recv()``, a process that does
not exit) fails the test instead of wedging pytest, and the interpreter
exiting cleanly is part of what is checked.  The conftest leak check then
sees whatever that interpreter left in /dev/shm.

The readiness stress test drives the stdlib's own
``multiprocessing.connection.wait`` on ``q._reader`` and then a blocking
``recv()``, as the executor's manager thread does; a watchdog unblocks it
(and fails the test) if ``recv()`` ever waits for a message that is not
there.
"""
import concurrent.futures
import multiprocessing as mp
import multiprocessing.connection
import multiprocessing.pool
import multiprocessing.queues
import multiprocessing.synchronize
import os
import pickle
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import START_METHODS

HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT = 30
FRAME = (1080, 1920, 3)

pytestmark = pytest.mark.timeout(180)


def _gbctx(method):
    import global_buffer.multiprocessing as gbmp
    return gbmp.get_context(method)


# -- task functions (module level: spawn children import them) ------------------

def square(x):
    return x * x


def add(a, b):
    return a + b


def frame(i):
    import numpy as np
    return np.full(FRAME, i % 251, np.uint8)


def fail(x):
    raise ValueError(f"bad {x}")


def fail_on(x, bad=3):
    if x == bad:
        raise KeyError(x)
    return x


def getpid(_=None):
    time.sleep(0.01)
    return os.getpid()


def sleep(t):
    time.sleep(t)
    return t


def die(_=None):
    os.kill(os.getpid(), signal.SIGKILL)


def _check_frame(a, i):
    assert a.shape == FRAME and a.dtype.name == "uint8"
    assert a[0, 0, 0] == a[-1, -1, -1] == a[540, 960, 1] == i % 251


# -- scenarios: each runs in its own interpreter (see _scenario) -------------------

def executor_basic(method):
    """submit / map (small and 1080p), exceptions, shutdown(wait=True)."""
    cf = concurrent.futures
    with cf.ProcessPoolExecutor(2, mp_context=_gbctx(method)) as ex:
        fs = [ex.submit(square, i) for i in range(300)]
        assert [f.result(TIMEOUT) for f in fs] == [i * i for i in range(300)]
        assert list(ex.map(square, range(100), timeout=TIMEOUT)) == [i * i for i in range(100)]
        assert list(ex.map(add, range(50), range(50), chunksize=7, timeout=TIMEOUT)) == \
            [2 * i for i in range(50)]
        for i, a in enumerate(ex.map(frame, range(6), timeout=60)):
            _check_frame(a, i)
        f = ex.submit(fail, 7)
        with pytest.raises(ValueError, match="bad 7"):
            f.result(TIMEOUT)
        assert isinstance(f.exception(TIMEOUT), ValueError)
        with pytest.raises(KeyError):
            list(ex.map(fail_on, range(6), timeout=TIMEOUT))
        assert ex.submit(square, 12).result(TIMEOUT) == 144  # still serving
    with pytest.raises(RuntimeError):
        ex.submit(square, 1)


def executor_shutdown(method):
    """shutdown(wait=False) and cancel_futures=True; then the interpreter
    exits by itself (the executor's atexit hook joins its manager)."""
    cf = concurrent.futures
    ex = cf.ProcessPoolExecutor(2, mp_context=_gbctx(method))
    fs = [ex.submit(sleep, 0.05) for _ in range(40)]
    fs[0].result(TIMEOUT)
    ex.shutdown(wait=False, cancel_futures=True)
    # the manager thread cancels them; cancelled futures stay "not done" for
    # cf.wait() (never notified), with the stdlib's context too: poll done()
    deadline = time.monotonic() + TIMEOUT
    while not all(f.done() for f in fs) and time.monotonic() < deadline:
        time.sleep(0.01)
    cancelled = [f for f in fs if f.cancelled()]
    assert cancelled, "cancel_futures=True cancelled nothing"
    assert all(f.result(TIMEOUT) == 0.05 for f in fs if not f.cancelled())
    ex2 = cf.ProcessPoolExecutor(2, mp_context=_gbctx(method))
    f = ex2.submit(sleep, 0.2)
    ex2.shutdown(wait=False)
    assert f.result(TIMEOUT) == 0.2  # running work still completes
    ex3 = cf.ProcessPoolExecutor(1, mp_context=_gbctx(method))
    assert ex3.submit(square, 3).result(TIMEOUT) == 9
    # not shut down at all: the interpreter's exit hook must cope


def executor_killed_worker(method):
    """A worker SIGKILLed mid-task: BrokenProcessPool, no hang."""
    cf = concurrent.futures
    ex = cf.ProcessPoolExecutor(2, mp_context=_gbctx(method))
    assert ex.submit(square, 2).result(TIMEOUT) == 4
    others = [ex.submit(sleep, 0.5) for _ in range(3)]
    f = ex.submit(die)
    with pytest.raises(cf.process.BrokenProcessPool):
        f.result(TIMEOUT)
    for o in others:
        try:
            o.result(TIMEOUT)
        except cf.process.BrokenProcessPool:
            pass
    with pytest.raises(cf.process.BrokenProcessPool):
        ex.submit(square, 1)
    ex.shutdown(wait=True)


def executor_max_tasks(method):
    """max_tasks_per_child (3.11+, not with fork): workers are replaced."""
    cf = concurrent.futures
    with cf.ProcessPoolExecutor(1, mp_context=_gbctx(method), max_tasks_per_child=2) as ex:
        pids = [ex.submit(getpid).result(TIMEOUT) for _ in range(6)]
    assert len(set(pids)) == 3, pids


def pool_basic(method):
    """map / imap / imap_unordered / apply_async / starmap, exceptions,
    1080p results, close / join."""
    pool = mp.pool.Pool(2, context=_gbctx(method))
    try:
        assert pool.map(square, range(200)) == [i * i for i in range(200)]
        assert pool.map(square, range(200), chunksize=9) == [i * i for i in range(200)]
        assert list(pool.imap(square, range(50))) == [i * i for i in range(50)]
        assert sorted(pool.imap_unordered(square, range(50), 4)) == [i * i for i in range(50)]
        rs = [pool.apply_async(square, (i,)) for i in range(100)]
        assert [r.get(TIMEOUT) for r in rs] == [i * i for i in range(100)]
        assert pool.starmap(add, [(i, 1) for i in range(30)]) == list(range(1, 31))
        assert pool.apply(add, (2, 3)) == 5
        with pytest.raises(ValueError, match="bad 1"):
            pool.apply_async(fail, (1,)).get(TIMEOUT)
        with pytest.raises(KeyError):
            pool.map(fail_on, range(10))
        it = pool.imap(fail_on, range(6))
        assert [next(it) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(KeyError):
            next(it)
        errors = []
        r = pool.map_async(fail, [5], error_callback=errors.append)
        r.wait(TIMEOUT)
        assert r.ready() and not r.successful() and isinstance(errors[0], ValueError)
        for i, a in enumerate(pool.map(frame, range(6))):
            _check_frame(a, i)
        _check_frame(pool.apply_async(frame, (9,)).get(TIMEOUT), 9)
        pool.close()
        pool.join()
    finally:
        pool.terminate()


def pool_lifecycle(method):
    """maxtasksperchild, the context manager, terminate with tasks in flight."""
    ctx = _gbctx(method)
    with mp.pool.Pool(2, maxtasksperchild=2, context=ctx) as pool:
        pids = pool.map(getpid, range(12), chunksize=1)
        assert len(set(pids)) >= 4, pids  # workers replaced
    pool.join()
    pool = mp.pool.Pool(2, context=ctx)
    r = pool.map_async(sleep, [0.2] * 40, chunksize=1)
    time.sleep(0.3)
    assert not r.ready()
    t0 = time.monotonic()
    pool.terminate()
    pool.join()
    assert time.monotonic() - t0 < 10
    t0 = time.monotonic()
    with mp.pool.Pool(1, context=ctx) as pool:  # __exit__ terminates a busy pool
        pool.apply_async(sleep, (5,))
        time.sleep(0.3)
    pool.join()
    assert time.monotonic() - t0 < 5


def _scenario(name, method, timeout=150):
    """Run scenario ``name`` under ``method`` in a fresh interpreter and
    require a clean exit within ``timeout`` seconds."""
    # a hang prints every thread's stack before the kill, to say where
    code = (f"import sys, faulthandler; sys.path.insert(0, {HERE!r})\n"
            f"faulthandler.dump_traceback_later({max(timeout - 15, 5)}, exit=False)\n"
            f"import test_stdlib_clients as t\n"
            f"t.{name}({method!r})\n"
            f"print('scenario done', flush=True)\n")
    from conftest import LeakCheck
    made = LeakCheck()
    p = subprocess.Popen([sys.executable, "-c", code], cwd=HERE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        for seg in made.leaked():  # what the killed scenario left: the hang is the failure
            __import__("global_buffer").unlink(seg)
        pytest.fail(f"{name}({method!r}) hung (killed after {timeout} s):\n{out[-3000:]}")
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # workers it may have left behind
        except ProcessLookupError:
            pass
    assert p.returncode == 0 and "scenario done" in out, out[-3000:]


@pytest.mark.parametrize("method", START_METHODS)
@pytest.mark.parametrize("name", ["executor_basic", "executor_shutdown",
                                  "executor_killed_worker", "pool_basic", "pool_lifecycle"])
def test_client(name, method):
    _scenario(name, method)


_SWEEP_RACE = r"""
import multiprocessing as mp, threading, time
import global_buffer as gb
from global_buffer.multiprocessing import connection

def child(conn):
    conn.send(1)

if __name__ == "__main__":
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["global_buffer"])
    r, w = gb.Pipe(duplex=False)
    stop = threading.Event()
    def sweep():  # what a connection collected on another thread does
        while not stop.is_set():
            connection._sweep_spawned()
            time.sleep(0.0002)
    t = threading.Thread(target=sweep, daemon=True)
    t.start()
    for i in range(20):
        p = ctx.Process(target=child, args=(w,))
        p.start()  # the launching thread waits for the pid on a pipe
        assert r.poll(20) and r.recv() == 1
        p.join(20)
        assert p.exitcode == 0, f"launch {i}: exit code {p.exitcode} (a pid read as one?)"
    stop.set()
    t.join(5)
    print("sweep race done")
"""


@pytest.mark.skipif("forkserver" not in START_METHODS, reason="no forkserver here")
def test_sweep_never_reads_a_launching_pid(tmp_path):
    """Regression (SPEC §3.2, issue 15 item 1): sweeping the pickled ends of
    children that died must not call a foreign Popen's poll().  A forkserver
    Popen's poll() reads the exit code from the pipe that first carries the
    new child's pid, so a sweep on another thread during a launch took the
    pid as an exit code and the launch waited forever (ProcessPoolExecutor
    on our forkserver context hung about one run in eight)."""
    script = tmp_path / "sweep_race.py"  # a file: forkserver children import __main__
    script.write_text(_SWEEP_RACE)
    p = subprocess.run([sys.executable, str(script)], cwd=HERE, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0 and "sweep race done" in p.stdout, p.stdout + p.stderr[-3000:]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="max_tasks_per_child is 3.11+")
@pytest.mark.parametrize("method", [m for m in START_METHODS if m != "fork"])
def test_executor_max_tasks_per_child(method):
    _scenario("executor_max_tasks", method)


# -- the SimpleQueue itself ---------------------------------------------------------

@pytest.fixture
def sq():
    q = _gbctx("fork").SimpleQueue()
    yield q
    q.close()


def test_private_attributes(sq):
    import global_buffer as gb
    from global_buffer.multiprocessing.queues import SimpleQueue
    assert isinstance(sq, SimpleQueue)
    assert isinstance(sq._reader, gb.Connection) and isinstance(sq._writer, gb.Connection)
    assert (sq._reader.readable, sq._reader.writable) == (True, False)
    assert (sq._writer.readable, sq._writer.writable) == (False, True)
    assert sq._poll == sq._reader.poll
    for lock in (sq._rlock, sq._wlock):
        assert isinstance(lock, mp.synchronize.Lock)
    assert SimpleQueue[int].__origin__ is SimpleQueue


def test_put_get_and_the_wire_format(sq):
    """put/get mix with _writer.send/_reader.recv (Pool does both)."""
    import numpy as np
    assert sq.empty()
    sq.put(1)
    sq._writer.send(("task", 2))
    a = np.arange(1 << 20, dtype=np.float32)
    sq.put(a)
    assert not sq.empty() and sq._poll() and sq._reader.poll(0)
    assert sq._reader.recv() == 1
    assert sq.get() == ("task", 2)
    assert np.array_equal(sq.get(), a)
    assert sq.empty()
    sq._writer.send_bytes(pickle.dumps("raw"))
    assert pickle.loads(sq._reader.recv_bytes()) == "raw"


def test_closed_semantics():
    """As the stdlib's (3.9+): close() closes both ends; then empty(), get()
    and put() raise OSError (3.13's test_closed_queue_empty_exceptions)."""
    q = _gbctx("fork").SimpleQueue()
    q.put(1)
    q.close()
    assert q._reader.closed and q._writer.closed
    for call in (q.empty, q.get, lambda: q.put(2)):
        with pytest.raises(OSError):
            call()
    q.close()  # idempotent


def test_rlock_stops_getters(sq):
    """Holding _rlock keeps get() from taking (Pool's terminate relies on it)."""
    got = []
    sq.put("x")
    assert sq._rlock.acquire(timeout=TIMEOUT)
    t = threading.Thread(target=lambda: got.append(sq.get()), daemon=True)
    t.start()
    t.join(0.3)
    assert t.is_alive() and not got
    sq._rlock.release()
    t.join(TIMEOUT)
    assert got == ["x"]
    assert sq._wlock.acquire(timeout=TIMEOUT)
    t = threading.Thread(target=sq.put, args=("y",), daemon=True)
    t.start()
    t.join(0.3)
    assert t.is_alive() and sq.empty()
    sq._wlock.release()
    t.join(TIMEOUT)
    assert sq._reader.recv() == "y"


def test_pickling_is_by_inheritance_only(sq):
    """As the stdlib's: its locks are semaphores, shared by inheritance only."""
    with pytest.raises(RuntimeError, match="inheritance"):
        pickle.dumps(sq)


def _child_echo(q, out):
    out.put(("child", q.get()))
    out.put(frame(7))


@pytest.mark.parametrize("method", START_METHODS)
def test_passed_to_a_child(method, children):
    ctx = _gbctx(method)
    q, out = ctx.SimpleQueue(), ctx.SimpleQueue()
    try:
        p = children.start(ctx, _child_echo, q, out)
        q.put(41)
        assert mp.connection.wait([out._reader], TIMEOUT) == [out._reader]
        assert out.get() == ("child", 41)
        _check_frame(out.get(), 7)
        assert children.join(p) == 0
        assert mp.connection.wait([out._reader], 0.05) == []
    finally:
        q.close()
        out.close()


def test_end_of_stream_is_readable():
    """Once every writer closed, the stdlib's wait reports the reader ready
    and recv() raises EOFError at once (as an OS pipe at end of file)."""
    q = _gbctx("fork").SimpleQueue()
    try:
        q.put("last")
        q._writer.close()
        assert q._reader.recv() == "last"
        for _ in range(2):
            assert mp.connection.wait([q._reader], TIMEOUT) == [q._reader]
            with pytest.raises(EOFError):
                q._reader.recv()
    finally:
        q.close()


def _slow_mid_put():
    """In a sender: sleep up to 200 us between the put and the byte, to
    widen the window the counted pipe must handle (a preempted sender)."""
    import random

    from global_buffer.multiprocessing import connection
    byte_in = connection._byte_in

    def slow(fd):
        time.sleep(random.random() * 2e-4)
        byte_in(fd)
    connection._byte_in = slow


def _sender(q, base, n, gate):
    _slow_mid_put()
    gate.wait(TIMEOUT)
    for i in range(n):
        q.put((base, i))
        if i % 64 == 0:
            time.sleep(0)


@pytest.mark.parametrize("method", ["fork"])
def test_readiness_is_exact_under_contention(method, children):
    """Many senders, one reader doing what the executor's manager thread
    does: stdlib wait() on _reader, then a blocking recv().  A spurious
    readiness (the FIFO readable with no message queued) would block recv()
    for good; the watchdog unblocks it and the test fails."""
    ctx = _gbctx(method)
    q = ctx.SimpleQueue()
    senders, n = 4, 1500
    gate = ctx.Event()
    stuck = threading.Event()
    progress = [time.monotonic(), False]  # last step, in recv()

    def watchdog():
        while not done.is_set():
            time.sleep(0.2)
            if progress[1] and time.monotonic() - progress[0] > 5:
                stuck.set()
                q.put(("watchdog", 0))
                progress[0] = time.monotonic()

    done = threading.Event()
    wd = threading.Thread(target=watchdog, daemon=True)
    wd.start()
    try:
        procs = [children.start(ctx, _sender, q, b, n, gate) for b in range(senders)]
        gate.set()
        seen = {b: -1 for b in range(senders)}
        got = 0
        while got < senders * n:
            ready = mp.connection.wait([q._reader], TIMEOUT)
            assert ready == [q._reader], f"no readiness with {got} of {senders * n} received"
            progress[:] = [time.monotonic(), True]
            b, i = q._reader.recv()
            progress[1] = False
            assert not stuck.is_set(), "recv() blocked after wait() reported the reader ready"
            assert i == seen[b] + 1  # per-sender order
            seen[b] = i
            got += 1
        for p in procs:
            assert children.join(p) == 0
        # nothing queued, nobody sending: never readable
        for _ in range(20):
            assert mp.connection.wait([q._reader], 0.01) == []
        assert q.empty()
    finally:
        done.set()
        wd.join(5)
        q.close()
    assert not stuck.is_set()


def _lockstep_sender(q, base, rounds, barrier):
    _slow_mid_put()
    for i in range(rounds):
        barrier.wait(TIMEOUT)  # the reader checks for stale readiness ...
        barrier.wait(TIMEOUT)  # ... then everyone sends one
        q.put((base, i))


def test_no_stale_readiness(children):
    """Rounds in lockstep: every sender puts one message, the reader takes
    them (stdlib wait, then recv), and once every sender is back at the
    barrier -- every put and every byte written -- the reader must not be
    ready.  (A plain gb.Pipe fails this about every other round with the
    same slow senders: its reader drains every byte after a recv, a late
    byte lands after that, and a recv() after wait() would block for good.)"""
    ctx = _gbctx("fork")
    q = ctx.SimpleQueue()
    senders, rounds = 4, 150
    barrier = ctx.Barrier(senders + 1)
    try:
        procs = [children.start(ctx, _lockstep_sender, q, b, rounds, barrier)
                 for b in range(senders)]
        for r in range(rounds):
            barrier.wait(TIMEOUT)
            assert mp.connection.wait([q._reader], 0) == [], f"stale readiness in round {r}"
            barrier.wait(TIMEOUT)
            got = set()
            for _ in range(senders):
                assert mp.connection.wait([q._reader], TIMEOUT) == [q._reader]
                got.add(q._reader.recv())  # its byte follows its put: returns
            assert got == {(b, r) for b in range(senders)}
        for p in procs:
            assert children.join(p) == 0
    finally:
        barrier.abort()
        q.close()


def test_failed_put_leaves_no_readiness(sq):
    """A put that raises (unpicklable object) leaves no readiness behind."""
    # PicklingError, AttributeError or TypeError, by Python version
    with pytest.raises(Exception):  # noqa: B017
        sq.put(lambda: 0)
    assert mp.connection.wait([sq._reader], 0.05) == []
    sq.put(1)
    assert mp.connection.wait([sq._reader], TIMEOUT) == [sq._reader]
    assert sq.get() == 1
    assert mp.connection.wait([sq._reader], 0.05) == []


def test_module_and_context_factories():
    import global_buffer.multiprocessing as gbmp
    from global_buffer.multiprocessing import queues
    assert gbmp.queues is queues
    assert queues.Queue is mp.queues.Queue and queues.JoinableQueue is mp.queues.JoinableQueue
    for q in (gbmp.SimpleQueue(), gbmp.get_context("spawn").SimpleQueue(),
              queues.SimpleQueue(ctx=gbmp.get_context())):
        try:
            assert isinstance(q, queues.SimpleQueue)
            q.put("x")
            assert q.get() == "x"
        finally:
            q.close()
