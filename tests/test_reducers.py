"""ForkingPickler's registered reducers through rings, pipes and gb.Pool, and
large out-of-band buffers read in place (SPEC §3.1, §3.3; issue 15 item 2).

Whatever a library registers with
``multiprocessing.reduction.ForkingPickler.register`` reduces through our
picklers as through ``multiprocessing.Queue``: the stdlib's own reducers for
``Connection`` and ``socket`` (a descriptor handed over, not its number
copied) and any other.  PyTorch's tensors have their own test module
(test_torch.py).
"""
import gc
import multiprocessing as mp
import os
import socket
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest

import global_buffer as gb
from global_buffer import _core


class Registered:
    """A class whose registered reducer marks what went through it."""

    def __init__(self, value, via="plain"):
        self.value = value
        self.via = via


def _reduce_registered(obj):
    return Registered, (obj.value, "registered")


ForkingPickler.register(Registered, _reduce_registered)


def _echo_via(ring_name, out_name):
    r = gb.Ring.attach(ring_name)
    out = gb.Ring.attach(out_name)
    obj = r.get(timeout=30)
    out.put((obj.value, obj.via))
    r.close()
    out.close()


@pytest.mark.parametrize("serializer", ["pickle", "cloudpickle"])
def test_registered_reducer_applies_in_process(new_name, serializer):
    r = gb.Ring(name=new_name(), serializer=serializer)
    r.put(Registered(7))
    got = r.get(timeout=5)
    assert (got.value, got.via) == (7, "registered")
    # inside containers and next to out-of-band buffers too
    r.put({"a": [Registered(1)], "b": np.arange(10)})
    got = r.get(timeout=5)
    assert got["a"][0].via == "registered" and got["b"].tolist() == list(range(10))
    r.close()


def test_registered_reducer_a_type_registered_later(new_name):
    r = gb.Ring(name=new_name())

    class Later:
        def __init__(self, v):
            self.v = v

    r.put(Registered(1))  # the table is built before Later is registered
    r.get(timeout=5)
    ForkingPickler.register(Later, lambda o: (Registered, (o.v, "later")))
    try:
        r.put(Later(5))
        got = r.get(timeout=5)
        assert isinstance(got, Registered) and (got.value, got.via) == (5, "later")
    finally:
        del ForkingPickler._extra_reducers[Later]
    r.close()


def test_registered_reducer_across_processes(ctx, new_name, children):
    a, b = gb.Ring(name=new_name("a")), gb.Ring(name=new_name("b"))
    p = children.start(ctx, _echo_via, a.name, b.name)
    a.put(Registered(3))
    assert b.get(timeout=30) == (3, "registered")
    children.join(p)
    a.close()
    b.close()


def test_registered_reducer_through_pipe_and_pool(ctx):
    c1, c2 = gb.Pipe()
    c1.send(Registered(4))
    got = c2.recv()
    assert (got.value, got.via) == (4, "registered")
    c1.close()
    c2.close()
    with gb.Pool(1, context=ctx) as pool:
        got = pool.apply(_identity, (Registered(9),))
        assert (got.value, got.via) == (9, "registered")


def _identity(x):
    return x


def _answer_on(ring_name):
    r = gb.Ring.attach(ring_name)
    conn = r.get(timeout=30)      # a stdlib Connection: its descriptor, handed over
    sock = r.get(timeout=30)      # a socket: likewise
    conn.send(("pong", os.getpid()))
    sock.sendall(b"ping")
    conn.close()
    sock.close()
    r.close()


def test_stdlib_connection_and_socket_through_a_ring(ctx, new_name, children):
    r = gb.Ring(name=new_name())
    here, there = mp.Pipe()
    s1, s2 = socket.socketpair()
    p = children.start(ctx, _answer_on, r.name)
    r.put(there)
    r.put(s2)
    assert here.poll(30)
    msg, pid = here.recv()
    assert msg == "pong" and pid == p.pid
    s1.settimeout(30)
    assert s1.recv(4) == b"ping"
    children.join(p)
    for x in (here, there, s1, s2):
        x.close()
    r.close()


# -- large out-of-band buffers read in place -------------------------------------

def test_large_array_is_a_view_of_shared_memory_until_dropped(new_name):
    r = gb.Ring(name=new_name())
    big = np.arange(1 << 20, dtype=np.uint32)           # 4 MiB: out of line
    held = _core.leases()
    r.put(big)
    got = r.get(timeout=5)
    assert np.array_equal(got, big)
    assert got.flags.writeable                           # it is the receiver's
    assert _core.leases() == held + 1                    # its blob is held for it
    got[0] = 99                                          # and may be written
    r.put(big)                                           # a second blob meanwhile
    again = r.get(timeout=5)
    assert again[0] == 0 and got[0] == 99
    del got, again
    gc.collect()
    assert _core.leases() == held                        # both blobs freed
    r.close()


def test_small_frames_are_copied_out(new_name):
    r = gb.Ring(name=new_name())
    held = _core.leases()
    item = np.ones(200_000, np.uint8)                    # out of line, below the lease size
    r.put(item)
    got = r.get(timeout=5)
    assert np.array_equal(got, item) and _core.leases() == held
    r.close()


def test_past_max_leases_items_are_copied(new_name):
    r = gb.Ring(name=new_name())
    big = np.ones(1 << 20, np.uint16)                    # 2 MiB
    kept = []
    base = _core.leases()
    room = _core.MAX_LEASES - base
    for _ in range(room + 2):
        r.put(big)
        kept.append(r.get(timeout=10))
    assert _core.leases() == _core.MAX_LEASES
    assert all(np.array_equal(k, big) for k in kept)
    del kept
    gc.collect()
    assert _core.leases() == base
    r.close()


def _child_drops_inherited_view(ring_name, out_name):
    import gc as _gc
    global _inherited
    _inherited = None  # the parent's view, inherited by fork: dropping frees nothing
    _gc.collect()
    out = gb.Ring.attach(out_name)
    out.put("dropped")
    out.close()


_inherited = None


def test_forked_child_does_not_free_the_parents_view(new_name, children):
    global _inherited
    ctx = mp.get_context("fork")
    r, out = gb.Ring(name=new_name("r")), gb.Ring(name=new_name("o"))
    big = np.full(1 << 20, 5, np.uint32)
    r.put(big)
    _inherited = r.get(timeout=5)
    p = children.start(ctx, _child_drops_inherited_view, r.name, out.name)
    assert out.get(timeout=30) == "dropped"
    children.join(p)
    # had the child freed the blob, the producer (this process) would reuse
    # it now and overwrite the array still in use here
    r.put(np.zeros(1 << 20, np.uint32))
    other = r.get(timeout=5)
    assert int(_inherited.min()) == 5 and int(other.max()) == 0
    _inherited = None
    del other
    gc.collect()
    r.close()
    out.close()
