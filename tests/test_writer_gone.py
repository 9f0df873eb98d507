"""A stream's end and its slow readers (SPEC §2.2, §6; issue 13 items 1, 2):

- ``gb.WriterGone`` once the writer closed the stream or died and every
  committed sample was read: at once after ``close()``, within 0.5 s of a
  SIGKILL, with unread samples delivered first; iteration ends; ``on_data``
  and ``Consumer`` threads stop with ``writer_gone`` set; a loop that retries
  on ``gb.Empty`` ends; a forked child closing its copy of the writer does
  not end the stream.
- The reader learns of the death from a pidfd on the writer's process
  (``global_buffer._exitwatch``), so an idle blocked reader makes no
  wake-ups at all; after a fork the child's reader watches afresh; without
  a pidfd it falls back to short sleeps and still meets the 0.5 s bound.
- A lapped copying reader of a free-running writer keeps reading (no
  livelock) and its ``overruns`` are exact.
- A mirror's ``_write_seq`` (SPEC §9) keeps the source's sequence numbers:
  the numbers it jumps over are counted as overruns, exactly.
"""
import os
import signal
import threading
import time

import numpy as np
import pytest

import global_buffer as gb

SPEC = gb.ArraySpec("int64", (8,))
TIMEOUT = 30


def _s(i):
    return np.full(8, i, np.int64)


def test_writer_gone_is_an_eof_and_not_an_empty():
    assert issubclass(gb.WriterGone, gb.GlobalBufferError)
    assert issubclass(gb.WriterGone, EOFError)
    assert not issubclass(gb.WriterGone, gb.Empty)


@pytest.mark.parametrize("read", ["next", "next_into", "next_batch_into", "view"])
def test_close_unread_samples_first_then_writer_gone_at_once(shm_name, read):
    name = shm_name
    w = gb.create(name, SPEC, 4)
    r = gb.attach(name)
    try:
        for i in range(3):
            w.write(_s(i))
        w.unlink()
        w.close()
        assert not r.writer_alive
        got = []
        out, batch = np.empty(8, np.int64), np.empty((2, 8), np.int64)

        def one():
            if read == "next":
                return [int(r.next(timeout=None)[0])]
            if read == "next_into":
                r.next_into(out, timeout=None)
                return [int(out[0])]
            if read == "next_batch_into":
                k = r.next_batch_into(batch, timeout=None)
                return [int(x) for x in batch[:k, 0]]
            with r.view("next", timeout=None) as v:
                return [int(v[0])]
        t0 = time.monotonic()
        with pytest.raises(gb.WriterGone):
            for _ in range(10):
                got += one()
        assert got == [0, 1, 2]
        assert time.monotonic() - t0 < 0.5  # at once: nothing to wait for
        with pytest.raises(gb.WriterGone):  # and it stays gone
            r.next(timeout=5)
        assert r.latest()[0] == 2  # latest() never blocks: still the newest
    finally:
        r.close()


def test_iteration_ends_after_the_last_sample(shm_name):
    name = shm_name
    w = gb.create(name, SPEC, 8)
    r = gb.attach(name)
    for i in range(5):
        w.write(_s(i))
    w.unlink()
    w.close()
    assert [int(x[0]) for x in r] == [0, 1, 2, 3, 4]
    r.close()


def test_a_loop_that_retries_on_empty_ends(shm_name):
    name = shm_name
    w = gb.create(name, SPEC, 4)
    r = gb.attach(name)
    closer = threading.Timer(0.2, lambda: (w.unlink(), w.close()))
    closer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(gb.WriterGone):
            while time.monotonic() - t0 < TIMEOUT:
                try:
                    r.next(timeout=0.01)
                except gb.Empty:
                    continue
    finally:
        closer.join(5)
        r.close()
    assert time.monotonic() - t0 < 5


def _killable_writer(name, n):
    w = gb.create(name, SPEC, 16)
    for i in range(n):
        w.write(_s(i))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # alive and idle until killed
        w.heartbeat()
        time.sleep(0.05)


def _attach_when_written(name, n):
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            r = gb.attach(name, start="oldest")
            if r._tail >= n:
                return r
            r.close()
        except gb.BufferNotFound:
            pass
        assert time.monotonic() < deadline, "writer never wrote"
        time.sleep(0.02)


def test_writer_sigkilled_readers_drain_then_writer_gone(ctx, shm_name, children):
    """The writer dies mid-stream: a reader blocked in next(timeout=None)
    gets the unread samples, then WriterGone within 0.5 s of the death."""
    name = shm_name
    p = children.start(ctx, _killable_writer, name, 5)
    r = _attach_when_written(name, 5)
    try:
        got, err, when = [], [], []

        def reader():
            try:
                while True:
                    got.append(int(r.next(timeout=None)[0]))
            except BaseException as e:  # noqa: B036 - the test inspects it
                err.append(e)
                when.append(time.monotonic())
        t = threading.Thread(target=reader, daemon=True)
        t.start()
        time.sleep(0.3)  # the reader drained and sleeps
        assert got == [0, 1, 2, 3, 4] and not err
        os.kill(p.pid, signal.SIGKILL)
        killed = time.monotonic()
        p.join(10)
        t.join(5)
        assert not t.is_alive(), "reader still blocked after the writer died"
        assert isinstance(err[0], gb.WriterGone), err
        assert when[0] - killed < 0.5 + 0.25  # §2.2 bound, plus scheduling slack
        assert not r.writer_alive
    finally:
        r.close()
        gb.unlink(name)


def test_on_data_and_consumer_stop_with_writer_gone(shm_name):
    name = shm_name
    w = gb.create(name, SPEC, 16)
    r = gb.attach(name)
    seen = []
    h = r.on_data(lambda s, seq: seen.append(seq), mode="next")

    class C(gb.Consumer):
        def callback(self):
            self.n = getattr(self, "n", 0) + 1
    c = C.attach(name, mode="next").start()
    try:
        time.sleep(0.1)  # both threads attached (they start after the newest)
        for i in range(4):
            w.write(_s(i))
        time.sleep(0.2)
        w.unlink()
        w.close()
        deadline = time.monotonic() + 5
        while (h.running or c._handle.running) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not h.running and h.writer_gone
        assert c.writer_gone and not c._handle.running
        assert seen == [0, 1, 2, 3] and c.n == 4
    finally:
        h.stop()
        c.close()
        r.close()


def _close_copy_in_child(w):
    w.close()  # the child's copy of the writer handle (fork)
    os._exit(0)


def test_a_forked_childs_copy_of_the_writer_does_not_end_the_stream(shm_name):
    import multiprocessing as mp
    name = shm_name
    w = gb.create(name, SPEC, 4)
    r = gb.attach(name)
    try:
        p = mp.get_context("fork").Process(target=_close_copy_in_child, args=(w,))
        p.start()
        p.join(TIMEOUT)
        assert p.exitcode == 0
        assert r.writer_alive
        with pytest.raises(gb.Empty):
            r.next(timeout=0.3)  # still waiting for the real writer
        w.write(_s(7))
        assert r.next(timeout=5)[0] == 7
    finally:
        r.close()
        w.unlink()
        w.close()


# -- lapped readers -------------------------------------------------------------

def _free_running(name, seconds, started):
    w = gb.create(name, gb.ArraySpec("uint8", (2 << 20,)), 4)  # 2 MiB samples
    a = np.ones(2 << 20, np.uint8)
    started.set()
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            w.write(a)
    finally:
        w.close()


def test_lapped_copying_reader_keeps_reading(shm_name, children):
    """A reader slower than a free-running writer (here: it does extra work
    per sample) receives a meaningful share of what is written, never
    livelocks, and every sample is accounted for: read + overruns = written
    up to where it stopped (SPEC §2.2)."""
    import multiprocessing as mp
    name = shm_name
    ctx = mp.get_context("fork")
    started = ctx.Event()
    p = children.start(ctx, _free_running, name, 2.0, started)
    assert started.wait(TIMEOUT)
    r = gb.attach(name, start="oldest")
    start = r._cursor
    out = np.empty(2 << 20, np.uint8)
    n = 0
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < TIMEOUT:
            try:
                r.next_into(out, timeout=5)
            except gb.WriterGone:
                break
            n += 1
            out[:4096].sum()  # a little work per sample
        children.join(p)
        assert n + r.overruns == r._cursor - start  # every sample read or counted
        assert n >= 20, f"only {n} samples read in 2 s (livelock?)"
    finally:
        r.close()
        gb.unlink(name)


# -- mirrors: the source's sequence numbers -----------------------------------------

def test_write_seq_keeps_numbers_and_counts_gaps(shm_name):
    name = shm_name
    w = gb.create(name, SPEC, 8)
    r = gb.attach(name, start="oldest")
    try:
        w._write_seq(_s(3), 3)
        w._write_seq(_s(4).tobytes(), 4)  # the stored bytes, as a bridge has them
        w._write_seq(_s(9), 9)
        got = [r._next_seq(1) for _ in range(3)]
        assert [seq for _, seq in got] == [3, 4, 9]
        assert [int(s[0]) for s, _ in got] == [3, 4, 9]
        assert r.overruns == 3 + 4  # 0..2 and 5..8 never arrived
        assert r.latest()[0] == 9
        late = gb.attach(name, start="oldest")  # window [2, 10): only 3, 4, 9 are there
        assert [int(late.next(1)[0]) for _ in range(3)] == [3, 4, 9]
        assert late.overruns == 5  # 2, 5, 6, 7, 8
        late.close()
        with pytest.raises(ValueError, match="behind"):
            w._write_seq(_s(0), 5)
        with pytest.raises(ValueError, match="64 bytes"):
            w._write_seq(b"short", 10)
        w._write_seq(_s(10), 10)
        assert r.next(1)[0] == 10 and r.overruns == 7
    finally:
        r.close()
        w.unlink()
        w.close()


def test_write_seq_gaps_in_a_batch_read(shm_name):
    name = shm_name
    w = gb.create(name, SPEC, 8)
    r = gb.attach(name, start="oldest")
    try:
        for seq in (0, 1, 3, 6, 7):
            w._write_seq(_s(seq), seq)
        out = np.empty((8, 8), np.int64)
        got = []
        while len(got) < 5:
            k = r.next_batch_into(out, timeout=5)
            got += [int(x) for x in out[:k, 0]]
        assert got == [0, 1, 3, 6, 7]
        assert r.overruns == 3  # 2, 4, 5
    finally:
        r.close()
        w.unlink()
        w.close()


def test_message_mirror_write_seq_takes_encoded_bytes(shm_name):
    import pydantic

    class Status(pydantic.BaseModel):
        ok: bool
        n: int

    name = shm_name
    src = gb.create(name + "s", Status, 4)
    w = gb.create(name, Status, 4)
    rs = gb.attach(name + "s", start="oldest", model=None)
    r = gb.attach(name, Status, start="oldest")
    try:
        src.write(Status(ok=True, n=5))
        rs._setup_reader(None, True)  # raw msgpack, as the bridge reads it
        raw, seq = rs._next_seq(1)
        w._write_seq(raw, 12)
        m, s = r._next_seq(1)
        assert (m, s) == (Status(ok=True, n=5), 12) and r.overruns == 12
        with pytest.raises(ValueError, match="max_bytes"):
            w._write_seq(b"x" * 5000, 13)
    finally:
        for h in (rs, r):
            h.close()
        for h in (src, w):
            h.unlink()
            h.close()


_CLOSE_IN_PROBE = r"""
import numpy as np, global_buffer as gb, sys
name = sys.argv[1]
w = gb.create(name, gb.ArraySpec("int64", (8,)), 4)
try:
    for how in ("next", "next_into", "next_batch_into", "view"):
        r = gb.attach(name)
        # the writer probe is Python code: another thread may close the
        # reader (and unmap the segment) while it runs; do it from the probe
        r._writer_dead = lambda r=r: (r.close(), False)[1]
        try:
            if how == "next":
                r.next(timeout=None)
            elif how == "next_into":
                r.next_into(np.empty(8, np.int64), timeout=None)
            elif how == "next_batch_into":
                r.next_batch_into(np.empty((2, 8), np.int64), timeout=None)
            else:
                with r.view("next", timeout=None):
                    pass
        except gb.BufferClosed:
            print(how, "closed")
finally:
    w.unlink()
    w.close()
"""


def test_reader_closed_while_its_writer_probe_runs(shm_name):
    """A blocked stream read whose handle is closed while the writer probe
    (Python) runs raises BufferClosed and touches no unmapped memory (a
    crash seen once under load: close from another thread during next_into)."""
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-c", _CLOSE_IN_PROBE, shm_name], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr[-2000:]
    assert p.stdout.split() == ["next", "closed", "next_into", "closed", "next_batch_into",
                                "closed", "view", "closed"], p.stdout


# -- how a blocked reader learns of the death (§2.2) ----------------------------

def _switches(tid):
    with open(f"/proc/self/task/{tid}/status") as f:
        for line in f:
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                yield int(line.split()[1])


def _blocked_reader(r):
    """A thread blocked in r.next(timeout=None); returns (thread, errors,
    when, tid)."""
    err, when, tid = [], [], []

    def reader():
        tid.append(threading.get_native_id())
        try:
            while True:
                r.next(timeout=None)
        except BaseException as e:  # noqa: B036 - the test inspects it
            err.append(e)
            when.append(time.monotonic())
    t = threading.Thread(target=reader, daemon=True)
    t.start()
    return t, err, when, tid


@pytest.mark.skipif(not hasattr(os, "pidfd_open") or not os.path.exists("/proc/self/task"),
                    reason="pidfds and /proc are Linux's")
def test_an_idle_blocked_reader_makes_no_wakeups_and_still_sees_the_death(shm_name, children):
    """The old way (a 200 ms sleep slice to probe the writer) cost 5
    wake-ups/s for ever; a pidfd on the writer costs none."""
    import multiprocessing as mp

    from global_buffer import _exitwatch
    name = shm_name
    p = children.start(mp.get_context("fork"), _killable_writer, name, 2)
    r = _attach_when_written(name, 2)
    try:
        t, err, when, tid = _blocked_reader(r)
        time.sleep(0.3)  # drained, spun, parked, watch set up
        assert not err and _exitwatch._watcher is not None
        tids = [tid[0], _exitwatch._watcher.thread.native_id]
        before = [sum(_switches(x)) for x in tids]
        time.sleep(1.5)
        after = [sum(_switches(x)) for x in tids]
        assert [b - a for a, b in zip(before, after)] == [0, 0]
        os.kill(p.pid, signal.SIGKILL)
        killed = time.monotonic()
        t.join(5)
        assert not t.is_alive(), "reader still blocked after the writer died"
        assert isinstance(err[0], gb.WriterGone), err
        assert when[0] - killed < 0.5 + 0.25
    finally:
        r.close()
        gb.unlink(name)


def test_without_a_pidfd_the_reader_falls_back_to_probing(shm_name, children, monkeypatch):
    import multiprocessing as mp

    from global_buffer import _exitwatch
    monkeypatch.setattr(_exitwatch, "watch", lambda reader, pid, start: False)
    name = shm_name
    p = children.start(mp.get_context("fork"), _killable_writer, name, 2)
    r = _attach_when_written(name, 2)
    try:
        t, err, when, _ = _blocked_reader(r)
        time.sleep(0.3)
        assert not err
        os.kill(p.pid, signal.SIGKILL)
        killed = time.monotonic()
        t.join(5)
        assert not t.is_alive() and isinstance(err[0], gb.WriterGone), err
        assert when[0] - killed < 0.5 + 0.25
    finally:
        r.close()
        gb.unlink(name)


def _read_inherited(r, q):
    try:
        r.next(timeout=None)
        q.put("sample")
    except gb.WriterGone:
        q.put("gone")


def test_a_forked_childs_reader_watches_the_writer_afresh(shm_name, children):
    """A reader whose watch was set up before a fork: the watching thread
    did not survive into the child, so the child's copy sets up its own
    (else it would sleep through the death for 10 s)."""
    import multiprocessing as mp
    ctx = mp.get_context("fork")
    name = shm_name
    w = children.start(ctx, _killable_writer, name, 2)
    r = _attach_when_written(name, 2)
    try:
        r.next(timeout=1), r.next(timeout=1)
        with pytest.raises(gb.Empty):
            r.next(timeout=0.2)  # parked: the parent's watch is set up
        q = ctx.Queue()
        c = children.start(ctx, _read_inherited, r, q)
        time.sleep(0.5)  # the child is parked too
        # the parent's watch would wake every sleeper on the segment, the
        # child's included: close the parent's reader so only the child's
        # own watch can
        r.close()
        os.kill(w.pid, signal.SIGKILL)
        assert q.get(timeout=3) == "gone"
        c.join(5)
    finally:
        r.close()
        gb.unlink(name)


def test_no_thread_for_the_watch_means_the_fallback(monkeypatch):
    """A process that cannot start the watching thread (or has no fds left)
    gets False: its readers sleep in slices, nothing raises."""
    from global_buffer import _exitwatch
    if not hasattr(os, "pidfd_open"):
        pytest.skip("no pidfds: watch() is False anyway")

    def no_thread(self):
        raise RuntimeError("can't start new thread")
    monkeypatch.setattr(_exitwatch, "_watcher", None)
    monkeypatch.setattr(threading.Thread, "start", no_thread)
    fds = len(os.listdir("/proc/self/fd"))
    assert _exitwatch.watch(object(), os.getpid(), 0) is False
    assert _exitwatch._watcher is None
    assert len(os.listdir("/proc/self/fd")) == fds  # its pipe closed again


def test_the_exit_watch_itself():
    """_exitwatch.watch: True and a call on exit for a live process, None
    for a gone one; one pidfd serves every reader of the same writer."""
    import subprocess
    import sys

    from global_buffer import _exitwatch
    from global_buffer.segment import process_start_time
    if not hasattr(os, "pidfd_open"):
        assert _exitwatch.watch(object(), os.getpid(), 0) is False
        return
    told = []

    class R:
        def __init__(self, tag):
            self.tag = tag

        def _writer_exited(self):
            told.append(self.tag)
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = process_start_time(p.pid)
        a, b = R("a"), R("b")
        assert _exitwatch.watch(a, p.pid, start) is True
        assert _exitwatch.watch(b, p.pid, start) is True
        assert _exitwatch._watcher.keys[(p.pid, start)] in _exitwatch._watcher.fds
        assert _exitwatch.watch(R("x"), p.pid, start + 1) is None  # not that process
        p.kill()
        p.wait(10)
        deadline = time.monotonic() + 5
        while len(told) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(told) == ["a", "b"]
        assert (p.pid, start) not in _exitwatch._watcher.keys  # its pidfd closed
        assert _exitwatch.watch(R("late"), p.pid, start) is None  # reaped: gone
    finally:
        p.kill()
        p.wait(10)
