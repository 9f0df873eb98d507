"""``gb.Pool(..., cluster=X)`` on Dask distributed (SPEC §3.3, §9; issue 12
item 4).

Real clusters: a ``LocalCluster`` on 127.0.0.1 (worker processes, no
dashboard) shared by the module; the two tests about the clusters and
clients a pool makes itself check they are gone after.  Workers are killed
with SIGKILL twice in all (each costs a nanny restart).  Every wait has a
timeout.
"""
import os
import signal
import subprocess
import sys
import textwrap
import time
from multiprocessing.pool import RemoteTraceback

import pytest

import global_buffer as gb
from global_buffer.ring import _rebuild

distributed = pytest.importorskip(
    "distributed", reason="Dask distributed is not installed (global_buffer[dask])")

T = 60  # seconds: a generous bound on any one wait on this shared machine


# -- functions the tasks run (importable by the workers: pytest puts tests/ on
#    sys.path, which spawned worker processes inherit) ------------------------

def square(x):
    return x * x


def add(a, b=0):
    return a + b


def fail(x):
    raise KeyError(f"bad {x}")


def pid_then_sleep(ring, delay):
    ring.put(os.getpid())
    time.sleep(delay)
    return os.getpid()


def sleep_then(delay):
    time.sleep(delay)
    return delay


def kill_own_worker():
    os.kill(os.getpid(), signal.SIGKILL)


def ring_round_trip(ring, x):
    ring.put(("from", os.getpid(), x))
    return x + 1


def note_start(ring, tag):
    ring.put((tag, os.getpid()))
    os.environ["GB_TEST_INIT"] = tag


def initialized(_):
    return os.environ.get("GB_TEST_INIT")


def raising_initializer():
    raise RuntimeError("initializer failed on purpose")


class _AbsentRing:
    """Pickles as a ``gb.Ring`` named NAME (as a ring from another host
    does): the worker's unpickling tries to attach a name that is not
    there."""

    def __init__(self, name):
        self.name = name

    def __reduce__(self):
        return (_rebuild, (gb.Ring, self.name, None, "pickle"))


def use_ring(ring):
    return ring.name


# -- fixtures ----------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    c = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                 host="127.0.0.1", dashboard_address=None,
                                 scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
    try:
        yield c
    finally:
        c.close(timeout=T)


@pytest.fixture(scope="module")
def client(cluster):
    cl = distributed.Client(cluster, timeout=T)
    try:
        yield cl
    finally:
        cl.close(timeout=T)


@pytest.fixture
def pool(client):
    """A pool on the module's client."""
    p = gb.Pool(cluster=client)
    try:
        yield p
    finally:
        p.terminate()
        p.join()


def worker_pids(client):
    return set(client.run(os.getpid).values())


# -- the API -----------------------------------------------------------------

def test_returns_a_cluster_pool_that_is_a_multiprocessing_pool(pool, client):
    import multiprocessing.pool

    from global_buffer.multiprocessing.cluster import ClusterPool
    assert isinstance(pool, ClusterPool)
    assert isinstance(pool, multiprocessing.pool.Pool)
    assert pool.client is client
    assert "RUN" in repr(pool)
    with pytest.raises(NotImplementedError):
        import pickle
        pickle.dumps(pool)


def test_every_method_in_order(pool):
    n = 40
    assert pool.map(square, range(n)) == [x * x for x in range(n)]
    assert pool.map(square, range(n), chunksize=1) == [x * x for x in range(n)]
    assert pool.map(square, range(n), chunksize=7) == [x * x for x in range(n)]
    assert pool.map(square, []) == []
    assert list(pool.imap(square, range(n))) == [x * x for x in range(n)]
    assert list(pool.imap(square, iter(range(n)), chunksize=3)) == [x * x for x in range(n)]
    assert sorted(pool.imap_unordered(square, range(n))) == [x * x for x in range(n)]
    assert sorted(pool.imap_unordered(square, range(n), chunksize=4)) == [x * x for x in range(n)]
    assert pool.starmap(add, [(i, i) for i in range(n)]) == [2 * i for i in range(n)]
    assert pool.starmap_async(add, [(1, 2), (3, 4)], chunksize=1).get(T) == [3, 7]
    assert pool.map_async(square, range(n)).get(T) == [x * x for x in range(n)]
    assert pool.apply(add, (1,), {"b": 41}) == 42
    assert pool.apply_async(add, (2, 3)).get(T) == 5


def test_results_keep_their_order_when_tasks_finish_out_of_order(pool):
    # the first items sleep longest, so later ones finish first
    delays = [0.4, 0.3, 0.2, 0.1, 0.0, 0.0]
    assert pool.map(sleep_then, delays, chunksize=1) == delays
    assert list(pool.imap(sleep_then, delays)) == delays
    assert pool.starmap(add, [(d, 1) for d in delays], chunksize=1) == [d + 1 for d in delays]


def test_lambdas_and_closures(pool):
    k = 3
    assert pool.map(lambda x: x * k, range(5)) == [0, 3, 6, 9, 12]
    assert pool.apply(lambda: [k] * 2) == [3, 3]
    assert list(pool.imap(lambda x: x - k, range(3))) == [-3, -2, -1]
    assert pool.apply(lambda: lambda y: y + k)(1) == 4  # a lambda result too


def test_callbacks_and_error_callbacks(pool):
    got, errors = [], []
    r1 = pool.apply_async(square, (7,), callback=got.append, error_callback=errors.append)
    r2 = pool.map_async(square, range(4), callback=got.append, error_callback=errors.append)
    r3 = pool.apply_async(fail, (1,), callback=got.append, error_callback=errors.append)
    r4 = pool.map_async(fail, range(3), callback=got.append, error_callback=errors.append)
    for r in (r1, r2, r3, r4):
        r.wait(T)
        assert r.ready()
    assert r1.successful() and r2.successful()
    assert not r3.successful() and not r4.successful()
    assert sorted(map(str, got)) == sorted(["49", "[0, 1, 4, 9]"])
    assert len(errors) == 2 and all(isinstance(e, KeyError) for e in errors)


def test_a_raising_callback_does_not_stop_the_pool(pool, capfd):
    def bad(_):
        raise ValueError("callback failed on purpose")

    pool.map_async(square, range(3), callback=bad)
    err, deadline = "", time.monotonic() + T
    while "callback failed on purpose" not in err and time.monotonic() < deadline:
        time.sleep(0.05)
        err += capfd.readouterr().err
    assert "callback failed on purpose" in err
    assert pool.map(square, range(3)) == [0, 1, 4]
    # ... and the result whose callback raised is set all the same
    r = pool.apply_async(square, (5,), callback=bad)
    r.wait(T)
    assert r.ready() and r.get(0) == 25


def test_remote_exception_keeps_type_and_traceback(pool):
    with pytest.raises(KeyError, match="bad 3") as info:
        pool.apply(fail, (3,))
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "in fail" in str(cause) and 'raise KeyError(f"bad {x}")' in str(cause)
    # one failing item fails the map, the pool goes on
    with pytest.raises(KeyError):
        pool.map(fail, range(3))
    it = pool.imap(lambda x: 1 // x, [1, 0, 2])
    assert next(it) == 1
    with pytest.raises(ZeroDivisionError):
        next(it)
    assert next(it) == 0
    assert pool.apply(square, (5,)) == 25


def test_an_iterable_that_raises(pool):
    def items():
        yield 1
        yield 2
        raise OSError("iterable failed on purpose")

    it = pool.imap(square, items())
    assert [next(it), next(it)] == [1, 4]
    with pytest.raises(OSError, match="on purpose"):
        next(it)
    with pytest.raises(OSError, match="on purpose"):
        pool.map(square, items())


def test_unpicklable_argument_fails_that_task_only(pool):
    import threading
    with pytest.raises(TypeError):
        pool.apply(square, (threading.Lock(),))
    assert pool.apply(square, (4,)) == 16


def test_close_join_delivers_everything_and_keeps_the_client(client):
    p = gb.Pool(cluster=client)
    rs = [p.apply_async(square, (i,)) for i in range(20)]
    m = p.map_async(square, range(30), chunksize=2)
    p.close()
    with pytest.raises(ValueError, match="not running"):
        p.apply_async(square, (1,))
    p.join()
    assert [r.get(0) for r in rs] == [i * i for i in range(20)]
    assert m.get(0) == [i * i for i in range(30)]
    assert client.status == "running"
    assert client.submit(square, 9).result(T) == 81


def test_join_while_running_raises(pool):
    with pytest.raises(ValueError, match="still running"):
        pool.join()


def test_context_manager_terminates_with_tasks_in_flight(client):
    # Dask cannot stop a task that is running: a worker finishes it, its
    # result unused, so the task here is short
    with gb.Pool(cluster=client) as p:
        r = p.apply_async(time.sleep, (3,))
        time.sleep(0.5)
        t0 = time.monotonic()
    p.join()
    assert time.monotonic() - t0 < 2.5
    assert not r.ready()  # as the stdlib: terminated tasks never complete
    with pytest.raises(ValueError, match="not running"):
        p.apply(square, (1,))
    # the client was given: still ours to use, its workers soon free again
    assert client.status == "running"
    deadline = time.monotonic() + T
    while any(client.processing().values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(client.processing().values())
    assert client.submit(square, 3).result(T) == 9


def test_a_pool_dropped_unclosed_is_terminated_with_a_warning(client):
    import gc
    import threading
    p = gb.Pool(cluster=client, initializer=square, initargs=(1,))
    assert p.map(square, range(4)) == [0, 1, 4, 9]
    assert plugins(client)
    with pytest.warns(ResourceWarning, match="unclosed running"):
        del p
        gc.collect()
    deadline = time.monotonic() + T
    while (any(t.name.startswith("gb-cluster-pool") for t in threading.enumerate())
           and time.monotonic() < deadline):
        time.sleep(0.05)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("gb-cluster-pool")]
    assert plugins(client) == []
    assert client.submit(square, 6).result(T) == 36  # the client was given: still open


def test_bad_arguments(client):
    with pytest.raises(ValueError, match="cluster must be"):
        gb.Pool(cluster=42)
    with pytest.raises(ValueError, match="cluster must be"):
        gb.Pool(cluster="nowhere")
    with pytest.raises(ValueError, match="maxtasksperchild"):
        gb.Pool(cluster=client, maxtasksperchild=3)
    with pytest.raises(ValueError, match="at least 1"):
        gb.Pool(0, cluster=client)
    with pytest.raises(TypeError, match="callable"):
        gb.Pool(cluster=client, initializer=3)
    with gb.Pool(cluster=client) as p:
        with pytest.raises(ValueError, match="Chunksize"):
            list(p.imap(square, range(3), chunksize=0))


# -- initializer ---------------------------------------------------------------

def plugins(client):
    return [name for name in client.run_on_scheduler(
        lambda dask_scheduler: list(dask_scheduler.worker_plugins)) if name.startswith("gb-pool")]


def test_initializer_runs_once_on_every_worker(client, shm_name):
    ring = gb.Ring(name=shm_name)
    try:
        with gb.Pool(cluster=client, initializer=note_start, initargs=(ring, "one")) as p:
            pids = worker_pids(client)
            seen = [ring.get(timeout=T) for _ in pids]
            assert sorted(pid for _, pid in seen) == sorted(pids)
            assert set(p.map(initialized, range(8), chunksize=1)) == {"one"}
            assert set(client.run(initialized, None).values()) == {"one"}
            with pytest.raises(gb.Empty):
                ring.get(timeout=0.2)  # once per worker
            assert len(plugins(client)) == 1
        assert plugins(client) == []  # it went with the pool
    finally:
        client.run(lambda: os.environ.pop("GB_TEST_INIT", None))
        ring.close()


def test_a_raising_initializer_fails_the_constructor(client):
    with pytest.raises(RuntimeError, match="on purpose"):
        gb.Pool(cluster=client, initializer=raising_initializer)
    assert plugins(client) == []


# -- lost workers: retried (Dask's default), then gb.WorkerLost ---------------

def test_worker_sigkilled_mid_task_is_retried_and_the_pool_keeps_serving(client, shm_name):
    # also: the worker the nanny starts in its place runs the initializer
    # (a worker that joins later)
    ring, notes = gb.Ring(name=shm_name), gb.Ring(name=shm_name + "-init")
    try:
        with gb.Pool(cluster=client, initializer=note_start, initargs=(notes, "later")) as p:
            started = {notes.get(timeout=T)[1] for _ in range(2)}
            r = p.apply_async(pid_then_sleep, (ring, 2))
            first = ring.get(timeout=T)
            assert first in started
            os.kill(first, signal.SIGKILL)
            second = ring.get(timeout=T)  # the retry, on another worker process
            assert second != first
            assert r.get(T) == second
            assert p.map(square, range(10), chunksize=1) == [x * x for x in range(10)]
            tag, pid = notes.get(timeout=2 * T)  # the replacement's initializer
            assert tag == "later" and pid not in started
            client.wait_for_workers(2, timeout=2 * T)
            assert pid in worker_pids(client)
    finally:
        client.run(lambda: os.environ.pop("GB_TEST_INIT", None))
        ring.close()
        notes.close()


def test_a_task_whose_workers_keep_dying_fails_with_worker_lost(pool, client):
    # Dask retries a task whose worker died up to allowed-failures times;
    # with none allowed, the first death fails it
    def allow(n, dask_scheduler):
        old, dask_scheduler.allowed_failures = dask_scheduler.allowed_failures, n
        return old

    old = client.run_on_scheduler(allow, 0)
    try:
        r = pool.apply_async(kill_own_worker)
        with pytest.raises(gb.WorkerLost, match="died running this task: 1 worker") as info:
            r.get(2 * T)
    finally:
        client.run_on_scheduler(allow, old)
    assert isinstance(info.value.__cause__, distributed.KilledWorker)
    assert isinstance(info.value.pid, int)
    assert pool.map(square, range(6)) == [x * x for x in range(6)]
    client.wait_for_workers(2, timeout=2 * T)


# -- rings (§9) ---------------------------------------------------------------

def test_a_ring_passed_to_a_task_on_this_host_just_works(pool, shm_name):
    ring = gb.Ring(name=shm_name)
    try:
        assert pool.starmap(ring_round_trip, [(ring, i) for i in range(4)]) == [1, 2, 3, 4]
        got = sorted(x for _, _, x in (ring.get(timeout=T) for _ in range(4)))
        assert got == [0, 1, 2, 3]
    finally:
        ring.close()


def test_a_ring_not_shared_with_the_worker_host_fails_clearly(pool):
    with pytest.raises(gb.BufferNotFound) as info:
        pool.apply(use_ring, (_AbsentRing("gb-test-not-on-this-host"),))
    msg = str(info.value)
    assert "gb-test-not-on-this-host" in msg
    assert "§9" in msg and "bridge" in msg and "another host" in msg
    assert pool.apply(square, (2,)) == 4


# -- the clusters and clients a pool makes -------------------------------------

def test_local_cluster_is_started_and_closed_by_the_pool():
    with gb.Pool(1, cluster="local") as p:
        own_client = p.client
        own_cluster = own_client.cluster
        assert own_cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        assert len(own_client.nthreads()) == 1
        assert all(a.startswith("tcp://127.0.0.1:") for a in own_client.nthreads())
        assert p.map(square, range(5)) == [0, 1, 4, 9, 16]
    p.join()
    assert own_client.status == "closed"
    assert own_cluster.status.name == "closed"


def test_scheduler_address_gets_its_own_client_closed_with_the_pool(cluster, client):
    p = gb.Pool(cluster=cluster.scheduler_address)
    own = p.client
    assert own is not client
    assert p.map(square, range(4)) == [0, 1, 4, 9]
    p.close()
    p.join()
    assert own.status == "closed"
    # never the cluster: the module's client still runs tasks on it
    assert client.submit(square, 5).result(T) == 25


def test_missing_distributed_names_the_extra():
    code = textwrap.dedent("""
        import sys
        sys.modules["distributed"] = None
        import global_buffer as gb
        try:
            gb.Pool(cluster="local")
        except ImportError as e:
            print("IMPORTERROR", e)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=T)
    assert "IMPORTERROR" in out.stdout, out.stderr
    assert "global_buffer[dask]" in out.stdout
