"""Pipe / Connection parity (SPEC §3.2): one set of behaviour tests run
against ``multiprocessing.Pipe`` and ``gb.Pipe``, as CPython's own suite and
uvloop's do ("any deviation from the reference is a bug").

The ``kind`` fixture runs an in-process body once per implementation;
``pkind`` also runs it under every start method (fork / spawn / forkserver)
for the bodies that hand connections to child processes.  Every blocking
call is bounded: ``recv`` is preceded by ``poll(TIMEOUT)`` (which is also
True at end of stream) and children are joined with a timeout.
"""
import array
import asyncio
import gc
import multiprocessing as mp
import os
import pickle
import selectors
import signal
import threading
import time
from multiprocessing import connection as mpc

import numpy as np
import pytest

import global_buffer as gb

TIMEOUT = 30        # bound on every blocking call that should succeed
SHORT = 0.1         # a poll/wait timeout that is expected to expire
SENTINEL = b"--stop--"
BIG = 16 * 1024 * 1024
# in one process a stdlib pipe blocks once its socket buffer is full: keep
# what is in flight at once well under that (~200 KB)

pytestmark = pytest.mark.timeout(60)


# -- the two implementations ------------------------------------------------------

class _Pipes:
    """``Pipe(duplex)`` of one implementation; closes what it made."""

    def __init__(self, kind, ctx):
        self.kind = kind
        self.ctx = ctx
        self.made = []

    def __call__(self, duplex=True):
        pair = (mp.Pipe if self.kind == "mp" else gb.Pipe)(duplex)
        self.made.extend(pair)
        return pair

    def cleanup(self):
        for c in self.made:
            c.close()
        self.made = []
        gc.collect()  # gb: the rings go with the last connection of the pair

    def __repr__(self):
        return f"<{self.kind} pipes>"


@pytest.fixture(params=["mp", "gb"])
def kind(request):
    p = _Pipes(request.param, mp.get_context())
    yield p
    p.cleanup()


@pytest.fixture(params=["mp", "gb"])
def pkind(request, ctx):
    p = _Pipes(request.param, ctx)
    yield p
    p.cleanup()


def recv(c, timeout=TIMEOUT):
    """``c.recv()`` that fails instead of hanging."""
    assert c.poll(timeout), f"nothing to receive on {c} within {timeout}s"
    return c.recv()


def recv_bytes(c, timeout=TIMEOUT, *args):
    assert c.poll(timeout), f"nothing to receive on {c} within {timeout}s"
    return c.recv_bytes(*args)


def timed(fn, *args):
    t0 = time.monotonic()
    result = fn(*args)
    return result, time.monotonic() - t0


OBJECTS = [
    None, True, 0, -(2 ** 80), 3.5, "ünïcödé", b"", b"\x00" * 5000, (1, "a"), [1, [2, [3]]],
    {"k": [1, 2], "n": None}, {1, 2, 3}, ValueError("boom"), np.arange(12).reshape(3, 4),
    {"frame": np.ones((60, 80, 3), np.uint8), "ts": 1.5},  # larger than a ring slot
    [np.full(10, i) for i in range(20)],
]


def same(a, b):
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, BaseException):
        return type(a) is type(b) and a.args == b.args
    return type(a) is type(b) and a == b


# -- objects and bytes, in one process ---------------------------------------------------

def test_send_recv_objects_both_ways(kind):
    a, b = kind()
    for obj in OBJECTS:
        assert a.send(obj) is None
        assert same(obj, recv(b)), obj
        b.send(obj)
        assert same(obj, recv(a)), obj
    assert not a.poll() and not b.poll()


def test_messages_keep_order_and_boundaries(kind):
    """CPython's test_dont_merge, in one process: three send_bytes are three
    messages, received in order; poll() does not consume."""
    a, b = kind()
    assert a.poll(0.0) is False
    for m in (b"a", b"b", b"cd", b"", b"e" * 50_000):
        b.send_bytes(m)
    for m in (b"a", b"b", b"cd", b"", b"e" * 50_000):
        assert a.poll(1.0) is True and a.poll(0.0) is True
        assert recv_bytes(a) == m
    assert a.poll() is False


def test_send_bytes_offset_and_size(kind):
    """CPython's test_sendbytes, plus offsets into multi-byte buffers (in
    bytes, as the stdlib counts them)."""
    msg = b"abcdefghijklmnopqrstuvwxyz"
    a, b = kind()
    for args, want in [((), msg), ((5,), msg[5:]), ((7, 8), msg[7:15]), ((26,), b""),
                       ((26, 0), b""), ((0, 26), msg)]:
        assert a.send_bytes(msg, *args) is None
        assert recv_bytes(b) == want, args
    arr = array.array("i", range(10))
    a.send_bytes(arr, 8, 12)
    assert recv_bytes(b) == arr.tobytes()[8:20]
    a.send_bytes(np.arange(6, dtype=np.float64))
    assert recv_bytes(b) == np.arange(6, dtype=np.float64).tobytes()
    a.send_bytes(bytearray(b"xyz"))
    a.send_bytes(memoryview(b"0123456789")[2:5])
    assert recv_bytes(b) == b"xyz" and recv_bytes(b) == b"234"


@pytest.mark.parametrize("args", [(27,), (22, 5), (26, 1), (-1,), (4, -1)])
def test_send_bytes_bad_offset_or_size(kind, args):
    a, b = kind()
    with pytest.raises(ValueError):
        a.send_bytes(b"abcdefghijklmnopqrstuvwxyz", *args)
    assert not b.poll(), "a refused send_bytes sent something"
    with pytest.raises(TypeError):
        a.send_bytes("not bytes")


def test_recv_bytes_maxlength(kind):
    a, b = kind()
    with pytest.raises(ValueError):
        b.recv_bytes(-1)
    a.send_bytes(b"x" * 10)
    assert recv_bytes(b, TIMEOUT, 10) == b"x" * 10  # exactly maxlength is fine
    a.send_bytes(b"x" * 11)
    assert b.poll(TIMEOUT)
    with pytest.raises(OSError, match="bad message length"):
        b.recv_bytes(10)
    # a duplex end stops reading but can still send (stdlib's _bad_message_length)
    assert not b.closed and b.readable is False and b.writable is True
    with pytest.raises(OSError):
        b.recv()
    b.send("still writable")
    assert recv(a) == "still writable"
    # a read-only end is closed
    r, w = kind(duplex=False)
    w.send_bytes(b"y" * 100)
    assert r.poll(TIMEOUT)
    with pytest.raises(OSError, match="bad message length"):
        r.recv_bytes(99)
    assert r.closed


def test_recv_bytes_into(kind):
    """CPython's test_connection part: into arrays, with a byte offset."""
    a, b = kind()
    arr = array.array("i", range(4))
    buf = array.array("i", [0] * 10)
    a.send_bytes(arr)
    assert b.poll(TIMEOUT)
    assert b.recv_bytes_into(buf) == len(arr) * buf.itemsize
    assert list(buf) == list(arr) + [0] * 6
    buf = array.array("i", [0] * 10)
    a.send_bytes(arr)
    assert b.poll(TIMEOUT)
    assert b.recv_bytes_into(buf, 3 * buf.itemsize) == len(arr) * buf.itemsize
    assert list(buf) == [0] * 3 + list(arr) + [0] * 3
    out = bytearray(8)
    a.send_bytes(b"abc")
    assert b.poll(TIMEOUT)
    assert b.recv_bytes_into(out, 5) == 3 and out == b"\0" * 5 + b"abc"  # fills to the end
    data = np.arange(100_000, dtype=np.uint8)
    frame = np.zeros(2 * data.nbytes, np.uint8)
    a.send_bytes(data)
    assert b.poll(TIMEOUT)
    assert b.recv_bytes_into(frame) == data.nbytes
    assert np.array_equal(frame[:data.nbytes], data) and not frame[data.nbytes:].any()


def test_recv_bytes_into_buffer_too_short(kind):
    a, b = kind()
    longmsg = b"hello world" * 10
    a.send_bytes(longmsg)
    a.send_bytes(b"next")
    assert b.poll(TIMEOUT)
    with pytest.raises(mp.BufferTooShort) as e:
        b.recv_bytes_into(bytearray(40))
    assert e.value.args == (longmsg,)  # the message travels in the exception
    assert isinstance(e.value, mp.ProcessError)
    assert recv_bytes(b) == b"next"      # the long message was consumed, no more
    a.send_bytes(b"abcd")
    assert b.poll(TIMEOUT)
    with pytest.raises(mp.BufferTooShort):
        b.recv_bytes_into(bytearray(10), 7)  # fits the buffer, not after the offset


def test_recv_bytes_into_bad_offset(kind):
    a, b = kind()
    a.send_bytes(b"kept")
    for offset in (-1, 11):
        with pytest.raises(ValueError):
            b.recv_bytes_into(bytearray(10), offset)
    out = bytearray(10)
    assert b.recv_bytes_into(out, 10 - 4) == 4 and out[6:] == b"kept"  # not consumed above


def test_send_and_recv_bytes_interoperate(kind):
    """recv() unpickles what send_bytes() sent, recv_bytes() returns the
    pickle of what send() sent, as with the stdlib."""
    a, b = kind()
    a.send_bytes(pickle.dumps({"x": [1, 2]}))
    assert recv(b) == {"x": [1, 2]}
    a.send(("tuple", 3))
    assert pickle.loads(recv_bytes(b)) == ("tuple", 3)
    a.send_bytes(b"not a pickle")
    with pytest.raises(pickle.UnpicklingError):
        recv(b)


def test_unpicklable_object_sends_nothing(kind):
    a, b = kind()
    with pytest.raises((AttributeError, pickle.PicklingError, TypeError)):
        a.send(lambda: 1)
    assert not b.poll()
    a.send("fine")
    assert recv(b) == "fine"


# -- poll ------------------------------------------------------------------------------

def test_poll_boundaries(kind):
    a, b = kind()
    for t in ((), (0,), (0.0,), (-1,)):
        res, dt = timed(a.poll, *t)
        assert res is False and dt < 0.05, (t, dt)
    res, dt = timed(a.poll, SHORT)
    assert res is False and SHORT * 0.9 <= dt < SHORT + 2.0, dt
    b.send(None)
    res, dt = timed(a.poll, TIMEOUT)
    assert res is True and dt < 2.0
    assert a.poll() is True and a.poll(0) is True  # poll never consumes
    assert a.poll(None) is True                     # no timeout: data is there
    assert recv(a) is None
    assert a.poll() is False
    b.send_bytes(b"")                               # CPython's test_empty_string
    assert a.poll() is True and a.poll() is True
    assert recv_bytes(a) == b""


def test_poll_wakes_when_a_thread_sends(kind):
    a, b = kind()
    t = threading.Timer(0.2, b.send, ("late",))
    t.start()
    try:
        res, dt = timed(a.poll, TIMEOUT)
        assert res is True and 0.1 < dt < 10
        assert recv(a) == "late"
    finally:
        t.join(TIMEOUT)


def test_threads_send_and_recv_concurrently(kind):
    a, b = kind()
    n = 2000

    def produce(tag):
        for i in range(n):
            b.send((tag, i))

    threads = [threading.Thread(target=produce, args=(t,), daemon=True) for t in "xy"]
    for t in threads:
        t.start()
    got = {"x": [], "y": []}
    for _ in range(2 * n):
        tag, i = recv(a)
        got[tag].append(i)
    for t in threads:
        t.join(TIMEOUT)
    assert got == {"x": list(range(n)), "y": list(range(n))}  # per-sender order kept


# -- end of stream, closing, directions -------------------------------------------------

def test_eof_after_other_end_closes(kind):
    a, b = kind()
    b.send("last words")
    b.send_bytes(b"and bytes")
    b.close()
    assert recv(a) == "last words"          # what was sent before close arrives
    assert recv_bytes(a) == b"and bytes"
    res, dt = timed(a.poll, TIMEOUT)
    assert res is True and dt < 5            # end of stream is "readable"
    for fn in (a.recv, a.recv, a.recv_bytes, lambda: a.recv_bytes_into(bytearray(9))):
        with pytest.raises(EOFError):
            fn()
    assert not a.closed


def test_eof_wakes_a_blocked_receiver(kind):
    """A receiver blocked in recv() sees EOFError soon after the last other
    end is closed by another thread."""
    a, b = kind()
    t = threading.Timer(0.2, b.close)
    t.start()
    try:
        with pytest.raises(EOFError):
            _, dt = timed(a.recv)
        t.join(TIMEOUT)
    finally:
        t.cancel()


def test_broken_pipe_after_other_end_closes(kind):
    a, b = kind()
    b.close()
    with pytest.raises(BrokenPipeError):
        a.send("nobody listens")
    with pytest.raises(BrokenPipeError):
        a.send_bytes(b"nobody listens")
    assert issubclass(BrokenPipeError, OSError)
    r, w = kind(duplex=False)
    r.close()
    with pytest.raises(BrokenPipeError):
        w.send(1)


def test_one_way_pipe_refuses_the_wrong_direction(kind):
    """CPython's test_duplex_false: Pipe(False) -> (reader, writer)."""
    r, w = kind(duplex=False)
    assert w.send(1) is None
    assert recv(r) == 1
    assert (r.readable, r.writable, w.readable, w.writable) == (True, False, False, True)
    for fn in (lambda: r.send(2), lambda: r.send_bytes(b"2"), w.recv, w.recv_bytes,
               lambda: w.recv_bytes_into(bytearray(4)), w.poll, lambda: w.poll(0.1)):
        with pytest.raises(OSError):
            fn()
    assert not r.poll(), "the refused send went through"


def test_closed_connection_raises_oserror(kind):
    a, b = kind()
    assert (a.closed, a.readable, a.writable) == (False, True, True)
    a.close()
    a.close()  # idempotent
    assert a.closed
    for fn in (a.recv, a.recv_bytes, lambda: a.recv_bytes_into(bytearray(4)), a.poll,
               lambda: a.send(1), lambda: a.send_bytes(b"1"), a.fileno):
        with pytest.raises(OSError, match="handle is closed"):
            fn()


def test_context_manager(kind):
    """CPython's test_context, plus closing on an exception."""
    a, b = kind()
    with a, b:
        a.send(1729)
        assert recv(b) == 1729
        assert not a.closed and not b.closed
    assert a.closed and b.closed
    with pytest.raises(OSError):
        a.recv()
    c, d = kind()
    with pytest.raises(KeyError):
        with c as same_c:
            assert same_c is c
            raise KeyError("x")
    assert c.closed and not d.closed


def test_fileno_is_an_int(kind):
    a, b = kind()
    r, w = kind(duplex=False)
    for c in (a, b, r, w):
        assert type(c.fileno()) is int and c.fileno() >= 0
    assert a.fileno() == a.fileno()  # stable


def test_gb_connection_pickles_by_name_anywhere():
    """A documented difference: a stdlib Connection is only meant to be
    pickled while spawning a process or by multiprocessing's own reducers;
    a gb Connection pickles by name anywhere (like a gb.Ring) and the copy
    is a working end."""
    a, b = gb.Pipe()
    try:
        c = pickle.loads(pickle.dumps(a))
        b.send("to the copy")
        assert recv(c) == "to the copy"
        c.send("from the copy")
        assert recv(b) == "from the copy"
        c.close()
        b.send("still open")           # a is still held
        assert recv(a) == "still open"
    finally:
        a.close()
        b.close()


# -- waiting on descriptors ---------------------------------------------------------------

def test_connection_wait(kind):
    a, b = kind()
    r, w = kind(duplex=False)
    res, dt = timed(mpc.wait, [a, b, r], SHORT)
    assert res == [] and dt >= SHORT * 0.9
    res, dt = timed(mpc.wait, [a], 0)
    assert res == [] and dt < 1
    b.send("x")
    assert mpc.wait([a, b, r], TIMEOUT) == [a]
    w.send_bytes(b"y")
    assert set(mpc.wait([a, b, r], TIMEOUT)) == {a, r}
    assert recv(a) == "x" and recv_bytes(r) == b"y"
    assert mpc.wait([a, b, r], SHORT) == []
    w.close()                                    # end of stream is readiness too
    assert mpc.wait([a, b, r], TIMEOUT) == [r]
    with pytest.raises(EOFError):
        r.recv()


def test_connection_wait_wakes_on_another_thread_send(kind):
    a, b = kind()
    mpc.wait([a], 0)  # arm the descriptor first
    t = threading.Timer(0.2, b.send, ("ping",))
    t.start()
    try:
        res, dt = timed(mpc.wait, [a], TIMEOUT)
        assert res == [a] and dt < 10
        assert recv(a) == "ping"
    finally:
        t.join(TIMEOUT)


def test_selectors(kind):
    a, b = kind()
    with selectors.DefaultSelector() as sel:
        sel.register(a, selectors.EVENT_READ, "a")
        assert sel.select(SHORT) == []
        b.send(1)
        events = sel.select(TIMEOUT)
        assert [key.data for key, _ in events] == ["a"]
        assert recv(a) == 1
        for _ in range(3):  # after the message is taken the descriptor settles
            if not sel.select(SHORT):
                break
        else:
            pytest.fail("descriptor stays readable with nothing to read")
        sel.unregister(a)


def test_asyncio_add_reader(kind):
    a, b = kind()

    async def main():
        loop = asyncio.get_running_loop()
        got = asyncio.Queue()

        def on_readable():
            while a.poll():
                got.put_nowait(a.recv())

        loop.add_reader(a.fileno(), on_readable)
        try:
            loop.call_later(0.05, b.send, "one")
            loop.call_later(0.1, b.send, "two")
            first = await asyncio.wait_for(got.get(), TIMEOUT)
            second = await asyncio.wait_for(got.get(), TIMEOUT)
            return first, second
        finally:
            loop.remove_reader(a.fileno())

    assert asyncio.run(main()) == ("one", "two")


# -- across processes ---------------------------------------------------------------------

def _echo(conn):
    for msg in iter(conn.recv_bytes, SENTINEL):
        conn.send_bytes(msg)
    obj = conn.recv()
    conn.send(obj)
    conn.close()


def test_echo_child(pkind, children):
    """CPython's test_connection across a process: objects, bytes,
    recv_bytes_into, 16 MiB both ways, then EOF once the child is done."""
    conn, child_conn = pkind()
    p = children.start(pkind.ctx, _echo, child_conn)
    child_conn.close()
    assert conn.send_bytes(b"hello world") is None
    assert recv_bytes(conn) == b"hello world"
    arr = array.array("i", range(4))
    conn.send_bytes(arr)
    buf = array.array("i", [0] * 10)
    assert conn.poll(TIMEOUT)
    assert conn.recv_bytes_into(buf, 4) == 16 and list(buf) == [0, 0, 1, 2, 3] + [0] * 5
    conn.send_bytes(b"x" * 100)
    assert conn.poll(TIMEOUT)
    with pytest.raises(mp.BufferTooShort) as e:
        conn.recv_bytes_into(bytearray(40))
    assert e.value.args == (b"x" * 100,)
    really_big = bytes(range(256)) * (BIG // 256)
    conn.send_bytes(really_big)
    assert recv_bytes(conn) == really_big
    frame = np.random.default_rng(1).integers(0, 255, BIG, dtype=np.uint8)
    conn.send_bytes(frame)
    out = np.empty(BIG, np.uint8)
    assert conn.poll(TIMEOUT) and conn.recv_bytes_into(out) == BIG
    assert np.array_equal(out, frame)
    conn.send_bytes(SENTINEL)
    conn.send({"big": frame, "seq": list(range(10))})
    back = recv(conn)
    assert np.array_equal(back["big"], frame) and back["seq"] == list(range(10))
    with pytest.raises(EOFError):
        recv(conn)
    assert children.join(p, TIMEOUT) == 0


def _hold(conn, how, ready):
    ready.send("ready")
    if how == "close":
        conn.close()
        time.sleep(60)  # still running: only the explicit close ends the stream
    elif how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    # "exit": return with the connection still open


def test_eof_when_the_holding_child_closes_exits_or_is_killed(pkind, children):
    """EOFError once the only other copy is gone: closed by the child, or the
    child exited (normally or SIGKILLed) without closing it.  (The three
    children run at once.)"""
    ends, procs = {}, {}
    ready_r, ready_w = pkind(duplex=False)
    for how in ("close", "exit", "kill"):
        a, b = pkind()
        procs[how] = children.start(pkind.ctx, _hold, b, how, ready_w)
        b.close()
        ends[how] = a
    ready_w.close()
    for _ in ends:
        assert recv(ready_r) == "ready"
    for how, a in ends.items():
        assert a.poll(TIMEOUT) is True, f"{how}: end of stream not seen"
        with pytest.raises(EOFError):
            a.recv()
        with pytest.raises(EOFError):
            a.recv_bytes()
    for how in ("exit", "kill"):
        children.join(procs[how], TIMEOUT)
    assert procs["kill"].exitcode == -signal.SIGKILL


def _read_one_then(conn, how):
    conn.recv()
    if how == "close":
        conn.close()
        time.sleep(60)
    elif how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)


def test_broken_pipe_when_the_reader_child_goes(pkind, children):
    """BrokenPipeError for a sender once the only reader closed its end or
    was SIGKILLed (a killed reader's ring may first take a few messages).
    (The two children run at once.)"""
    writers, procs = {}, {}
    for how in ("close", "kill"):
        r, w = pkind(duplex=False)
        procs[how] = children.start(pkind.ctx, _read_one_then, r, how)
        r.close()
        w.send("one")
        writers[how] = w
    deadline = time.monotonic() + TIMEOUT
    for _how, w in writers.items():
        with pytest.raises(BrokenPipeError):
            while time.monotonic() < deadline:
                w.send_bytes(b"z" * 1000)
                time.sleep(0.001)
    children.join(procs["kill"], TIMEOUT)


def _writer(w, tag, n):
    for i in range(n):
        w.send((tag, i))
    w.close()


def test_many_writer_children_then_eof(pkind, children):
    """One write end shared by two children: every message arrives, per
    child in order, and EOF comes only after the last one is done."""
    r, w = pkind(duplex=False)
    procs = [children.start(pkind.ctx, _writer, w, t, 200) for t in range(2)]
    w.close()
    got = {0: [], 1: []}
    while True:
        try:
            tag, i = recv(r)
        except EOFError:
            break
        got[tag].append(i)
    assert got == {t: list(range(200)) for t in range(2)}
    for p in procs:
        assert children.join(p, TIMEOUT) == 0


class _DieWhileUnpickled:
    """Unpickling this in a child ends the child at once, before the
    arguments that follow it (a connection end) are unpickled."""

    def __reduce__(self):
        return os._exit, (3,)


def _never_runs(killer, conn):
    conn.send("unreachable")


@pytest.mark.parametrize("method", [m for m in ("spawn", "forkserver")
                                    if m in mp.get_all_start_methods()])
def test_eof_when_the_child_dies_before_attaching(method, children):
    """The only other end was pickled for a child that died while starting:
    the parent sees EOF, not a hang (the stdlib: the child's inherited
    descriptor closes with it)."""
    ctx = mp.get_context(method)
    for k in ("mp", "gb"):
        pipes = _Pipes(k, ctx)
        try:
            a, b = pipes()
            p = children.start(ctx, _never_runs, _DieWhileUnpickled(), b)
            b.close()
            assert children.join(p, TIMEOUT) == 3
            assert a.poll(TIMEOUT), f"{k}: no end of stream"
            with pytest.raises(EOFError):
                a.recv()
        finally:
            pipes.cleanup()


def _relay(conn):
    """Receive connections over ``conn`` and use them (CPython's
    child_access): write to a write end, read from a read end."""
    w = conn.recv()
    w.send("all is well")
    w.close()
    r = conn.recv()
    conn.send(r.recv() * 2)
    conn.close()


def test_connections_sent_over_a_connection(pkind, children):
    conn, child_conn = pkind()
    p = children.start(pkind.ctx, _relay, child_conn)
    child_conn.close()
    r, w = pkind(duplex=False)
    conn.send(w)
    w.close()
    assert recv(r) == "all is well"
    r.close()
    r, w = pkind(duplex=False)
    conn.send(r)
    r.close()
    w.send("foobar")
    w.close()
    assert recv(conn) == "foobar" * 2
    assert children.join(p, TIMEOUT) == 0


def _sender_slow(w, n):
    for i in range(n):
        time.sleep(0.01)
        w.send((os.getpid(), i))
    w.close()


def test_wait_on_several_children(pkind, children):
    """CPython's TestWait.test_wait: wait() over the read ends of children
    until each reaches EOF."""
    readers, procs = [], []
    for _ in range(2):
        r, w = pkind(duplex=False)
        procs.append(children.start(pkind.ctx, _sender_slow, w, 10))
        w.close()
        readers.append(r)
    messages = []
    deadline = time.monotonic() + TIMEOUT
    while readers:
        assert time.monotonic() < deadline, "wait() loop did not finish"
        for r in mpc.wait(readers, TIMEOUT):
            try:
                msg = r.recv()
            except EOFError:
                readers.remove(r)
                r.close()
            else:
                messages.append(msg)
    assert sorted(messages) == sorted((p.pid, i) for p in procs for i in range(10))
    for p in procs:
        assert children.join(p, TIMEOUT) == 0


def _task_send(conn, i):
    conn.send(("task", i, os.getpid()))
    return i * i


@pytest.mark.parametrize("method", [m for m in ("fork", "spawn")
                                    if m in mp.get_all_start_methods()])
def test_connection_pickled_to_pool_tasks(method):
    """A write end passed as a multiprocessing.Pool task argument works in
    the worker (mp: resource sharing; gb: by name)."""
    ctx = mp.get_context(method)
    for k in ("mp", "gb"):
        pipes = _Pipes(k, ctx)
        try:
            r, w = pipes(duplex=False)
            with ctx.Pool(2) as pool:
                res = pool.starmap_async(_task_send, [(w, i) for i in range(6)])
                assert res.get(TIMEOUT) == [i * i for i in range(6)]
                got = sorted(recv(r)[1] for _ in range(6))
                assert got == list(range(6)), k
                pool.close()
                pool.join()
        finally:
            pipes.cleanup()


# -- gb specifics ---------------------------------------------------------------------------

def _fifo_of(conn):
    from global_buffer.multiprocessing.connection import _fifo_path
    return _fifo_path(conn._rx.name)


def test_gb_fileno_fifo_is_made_on_demand_and_removed():
    """No descriptor, no syscall per message until someone asks for
    fileno(); the FIFO goes with the pipe."""
    a, b = gb.Pipe()
    fifo = _fifo_of(a)
    try:
        for i in range(10):
            b.send(i)
            assert recv(a) == i
        assert not os.path.exists(fifo)
        assert not gb._core.fd_armed(a._rx)
        fd = a.fileno()
        assert os.path.exists(fifo) and gb._core.fd_armed(a._rx)
        assert mpc.wait([a], 0) == []
        b.send("now signalled")
        assert mpc.wait([a], TIMEOUT) == [a]
        assert recv(a) == "now signalled"
        assert fd == a.fileno()
    finally:
        a.close()
        b.close()
    del a, b
    gc.collect()
    assert not os.path.exists(fifo)


def test_gb_blocked_recv_costs_no_cpu():
    """§4: a reader blocked in recv() sleeps in the kernel (it only wakes
    every 0.2 s to check its peers are alive)."""
    a, b = gb.Pipe()
    try:
        t = threading.Timer(1.0, b.send, ("late",))
        cpu0, t0 = time.process_time(), time.monotonic()
        t.start()
        assert a.recv() == "late"
        cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
        t.join(TIMEOUT)
        assert wall >= 0.9
        assert cpu < 0.1 * wall, f"a blocked recv() burnt {cpu:.3f}s CPU in {wall:.2f}s"
    finally:
        a.close()
        b.close()


def _send_then_hang(w):
    w.send("before")
    time.sleep(60)


def test_gb_wait_notices_a_killed_writer(children):
    """global_buffer.multiprocessing.connection.wait (what
    multiprocessing.connection.wait is after the migration) returns a read
    end whose only writer was SIGKILLed: no byte reaches its FIFO then."""
    from global_buffer.multiprocessing import connection as gbc
    r, w = gb.Pipe(duplex=False)
    try:
        p = children.start(mp.get_context("fork"), _send_then_hang, w)
        w.close()
        assert gbc.wait([r], TIMEOUT) == [r] and r.recv() == "before"
        assert gbc.wait([r], 0.3) == []
        p.kill()
        children.join(p, TIMEOUT)
        t0 = time.monotonic()
        assert gbc.wait([r], TIMEOUT) == [r]
        assert time.monotonic() - t0 < 5
        with pytest.raises(EOFError):
            r.recv()
    finally:
        r.close()


def test_gb_more_holders_than_the_peer_table():
    """An end held by more connections than the 40-entry peer table falls
    back to a counter: EOF still comes once every copy is closed."""
    a, b = gb.Pipe()
    try:
        copies = [pickle.loads(pickle.dumps(b)) for _ in range(45)]
        copies[-1].send("from copy 45")
        assert recv(a) == "from copy 45"
        b.close()
        for c in copies[:-1]:
            c.close()
        assert not a.poll(0.3), "EOF while a copy is still open"
        copies[-1].close()
        assert a.poll(TIMEOUT)
        with pytest.raises(EOFError):
            a.recv()
    finally:
        a.close()
        b.close()
