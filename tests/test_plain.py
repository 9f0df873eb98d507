"""Plain data (None, bool, int, float, str, bytes, and tuples, lists and
dicts of them) goes through object rings by the core's own pickle-subset
encoder and decoder (global_buffer/_plain.pxi), not the pickler (SPEC §3.1:
"any picklable object", with the pickler's results).

What must hold: the item that comes out is the one pickle would give
(exact types, float bits, dict order); the bytes in the slot are a valid
pickle; whatever the encoder does not cover (subclasses, big ints, sets,
shared or self-holding lists, deep nesting, too large) still travels through
the pickler, in order; the decoder never trusts a slot's bytes."""
import collections
import enum
import math
import pickle
import random
import struct

import pytest

import global_buffer as gb
from global_buffer import _core

TIMEOUT = 30
# gb_slot (gb_ring.h): len @8, aux @32; the payload follows the 64-byte header
_SLOT_LEN, _SLOT_AUX, _SLOT_HEADER = 8, 32, 64
AUX_PLAIN = 3


def same(a, b):
    """Equal with exact types all the way down (float bits, dict order)."""
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return struct.pack("<d", a) == struct.pack("<d", b)
    if type(a) in (tuple, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if type(a) is dict:
        return len(a) == len(b) and all(same(k1, k2) and same(v1, v2)
                                        for (k1, v1), (k2, v2) in zip(a.items(), b.items()))
    return a == b


EDGE = [
    None, True, False,
    0, 1, 255, 256, 65535, 65536, -1, -255, -256, 2**31 - 1, -2**31, 2**31, -2**31 - 1,
    2**32, 2**63 - 1, -2**63,
    0.0, -0.0, 3.14, 1e308, 5e-324, math.inf, -math.inf, math.nan,
    struct.unpack("<d", struct.pack("<Q", 0x7ff8000000000123))[0],  # a NaN with a payload
    "", "abc", "a" * 255, "a" * 256, "é", "日本語" * 100, "\ud800 lone surrogate", "\x00",
    b"", b"\x00\xff", b"x" * 255, b"x" * 256,
    (), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), tuple(range(100)),
    [], [1], [[[]]], list(range(1000)),            # 1000 items: the decoder's stack grows
    {}, {"a": 1}, {"b": 2, "a": 1}, {(1, "x"): [b"y", {3: None}]}, {i: str(i) for i in range(200)},
    (12345, 3.14, "abc"),
    [(i, float(i), str(i)) for i in range(50)],
]


def _random_plain(rng, depth=0):
    kind = rng.randrange(12 if depth < 4 else 7)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.randint(-2**63, 2**63 - 1) >> rng.randrange(64)
    if kind == 2:
        return struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
    if kind == 3:
        return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x3000)]))
                       for _ in range(rng.randrange(20)))
    if kind == 4:
        return rng.randbytes(rng.randrange(300))
    if kind in (5, 6):
        return rng.randrange(300)
    k = rng.randrange(6)
    if kind in (7, 8):
        return tuple(_random_plain(rng, depth + 1) for _ in range(k))
    if kind in (9, 10):
        return [_random_plain(rng, depth + 1) for _ in range(k)]
    return {_random_key(rng): _random_plain(rng, depth + 1) for _ in range(k)}


def _random_key(rng):
    return rng.choice([rng.randrange(-1000, 1000), str(rng.random()), (1, "k", rng.randrange(9))])


def _corpus(seed=7, n=300):
    rng = random.Random(seed)
    return EDGE + [_random_plain(rng) for _ in range(n)]


class Color(enum.IntEnum):
    RED = 1


class Name(str):
    pass


Point = collections.namedtuple("Point", "x y")
_shared = [1, 2]
_loop = []
_loop.append(_loop)
_deep = 0
for _ in range(9):
    _deep = [_deep]
_BIG = ("x" * 5000,)

# items the encoder leaves to the pickler, and why
NOT_PLAIN = [
    Color.RED,                  # int subclass: pickles by reference to its class
    Name("x"),                  # str subclass
    Point(1, 2),                # tuple subclass
    2**64,                      # beyond 64 bits
    -2**63 - 1,
    1 + 2j, {1, 2}, frozenset(), bytearray(b"x"), range(3),
    [_shared, _shared],         # a list twice: identity would be lost
    _loop,                      # a list holding itself
    _deep,                      # nested deeper than 8
    _BIG,                       # larger than the encoder's buffer
    [[i] for i in range(70)],   # more lists than it tracks
    (1, 2, object),             # anything else inside
]


# every opcode the encoder writes
OPCODES = b"(.NJKMGBCX)t]e}u\x80\x85\x86\x87\x88\x89\x8a\x8c"

# ---------------------------------------------------------------------------
# the codec on its own
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("obj", EDGE, ids=lambda o: type(o).__name__)
def test_plain_round_trip_is_pickles(obj):
    data = _core._plain_dumps(obj)
    assert data is not None
    assert same(pickle.loads(data), obj)      # a valid pickle of the same object
    assert same(_core._plain_loads(data), obj)


def test_random_plain_round_trip():
    for obj in _corpus(seed=1, n=3000)[len(EDGE):]:
        data = _core._plain_dumps(obj)
        assert data is not None, obj
        assert same(pickle.loads(data), obj), obj
        assert same(_core._plain_loads(data), obj), obj


@pytest.mark.parametrize("obj", NOT_PLAIN, ids=lambda o: type(o).__name__)
def test_not_plain_left_to_pickle(obj):
    assert _core._plain_dumps(obj) is None


def test_encoding_never_exceeds_cap():
    obj = ("abc" * 40, list(range(50)))
    full = _core._plain_dumps(obj)
    for cap in range(len(full)):
        assert _core._plain_dumps(obj, cap) is None
    assert _core._plain_dumps(obj, len(full)) == full


def test_decoder_rejects_or_agrees_with_pickle_on_damaged_bytes():
    """Slot bytes are untrusted (another process writes them): truncated,
    flipped or spliced encodings must never crash the decoder, and whatever
    it does accept must be what pickle.loads makes of the same bytes."""
    rng = random.Random(3)
    seeds = [_core._plain_dumps(o) for o in _corpus(seed=11, n=60)]
    accepted = 0
    for _ in range(30000):
        b = bytearray(rng.choice(seeds))
        how = rng.randrange(5)
        if how == 4:      # an opcode the decoder knows, somewhere
            i = rng.randrange(2, len(b))
            b[i:i] = bytes([rng.choice(OPCODES)] * rng.randrange(1, 3))
        elif how == 0:
            del b[rng.randrange(len(b)):]
        elif how == 1:
            for _ in range(rng.randrange(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
        elif how == 2:
            i = rng.randrange(len(b))
            b[i:i] = rng.choice(seeds)[2:-1]
        else:
            i, j = sorted(rng.randrange(len(b)) for _ in range(2))
            del b[i:j]
        try:
            got = _core._plain_loads(bytes(b))
        except ValueError:
            continue
        accepted += 1
        assert same(got, pickle.loads(bytes(b))), bytes(b)
    assert accepted  # some damage (e.g. a changed digit) still decodes


# ---------------------------------------------------------------------------
# through rings
# ---------------------------------------------------------------------------

def _items(seed, n, broadcast=False):
    """A producer's items; broadcast items must fit a slot (4032 bytes)."""
    return _corpus(seed, n) + [o for o in NOT_PLAIN if not (broadcast and o is _BIG)]


def _producer(ring, seed, n, broadcast=False):
    for obj in _items(seed, n, broadcast):
        ring.put(obj)


def _assert_arrived(got, want, i):
    if want is _loop:
        assert got[0] is got
    elif want is _deep:
        assert repr(got) == repr(want)
    else:
        assert same(got, want) or (type(want) is type(got) and got == want), i


def test_plain_items_across_processes(ctx, children):
    """Every item comes out exactly as pickle would give it, in order, plain
    and pickled ones mixed (SPEC §3.1: per-producer FIFO, any picklable)."""
    ring = gb.Ring()
    try:
        p = children.start(ctx, _producer, ring, 5, 200)
        for i, want in enumerate(_items(5, 200)):
            _assert_arrived(ring.get(timeout=TIMEOUT), want, i)
        children.join(p)
        assert p.exitcode == 0
    finally:
        ring.close()


def test_broadcast_ring_plain_items_across_processes(ctx, children):
    """Broadcast rings write plain data the same way; every handle reads it
    (SPEC §3.1 broadcast mode)."""
    items = _items(9, 100, broadcast=True)
    ring = gb.Ring(broadcast=True, capacity=len(items) + 1)
    try:
        other = gb.Ring.attach(ring.name)
        p = children.start(ctx, _producer, ring, 9, 100, True)
        children.join(p)
        assert p.exitcode == 0
        for handle in (ring, other):
            for i, want in enumerate(items):
                _assert_arrived(handle.get(timeout=TIMEOUT), want, i)
        other.close()
    finally:
        ring.close()


def test_slot_holds_a_valid_pickle():
    ring = gb.Ring(capacity=4)
    try:
        item = {"frame": 7, "ts": 1.5, "tags": ("a", "b"), "raw": b"\x00\x01"}
        ring.put(item)
        off = ring._slots_offset  # the first put goes to slot 0
        mm = ring._segment.mm
        assert struct.unpack_from("<Q", mm, off + _SLOT_AUX)[0] == AUX_PLAIN
        n = struct.unpack_from("<Q", mm, off + _SLOT_LEN)[0]
        payload = bytes(mm[off + _SLOT_HEADER:off + _SLOT_HEADER + n])
        assert same(pickle.loads(payload), item)
        assert same(ring.latest(), item)       # latest() reads it too
        assert same(ring.get(timeout=TIMEOUT), item)
    finally:
        ring.close()


def test_damaged_slot_raises_and_ring_goes_on():
    """A plain item whose bytes were damaged in shared memory is handed to
    pickle.loads, which raises; the slot is freed and the ring works on."""
    ring = gb.Ring(capacity=4)
    try:
        ring.put((1, 2, 3))
        off = ring._slots_offset
        ring._segment.mm[off + _SLOT_HEADER + 2] = 0xFF  # not an opcode
        with pytest.raises(pickle.UnpicklingError):
            ring.get(timeout=TIMEOUT)
        for i in range(10):
            ring.put((i, "ok"))
            assert ring.get(timeout=TIMEOUT) == (i, "ok")
    finally:
        ring.close()


def test_shared_list_keeps_identity():
    ring = gb.Ring()
    try:
        x = [1]
        ring.put([x, x])
        got = ring.get(timeout=TIMEOUT)
        assert got == [[1], [1]] and got[0] is got[1]
    finally:
        ring.close()


def test_small_slots_send_plain_items_out_of_line():
    """An encoding larger than the slot goes through the pickler and out of
    line, like any large item."""
    ring = gb.Ring(max_bytes=64)
    try:
        items = [tuple(range(40)), "y" * 100, [b"z" * 30] * 3, (1, 2)]
        for obj in items:
            ring.put(obj)
        for obj in items:
            assert same(ring.get(timeout=TIMEOUT), obj)
    finally:
        ring.close()


def test_put_many_get_many_plain():
    ring = gb.Ring()
    try:
        items = [(i, 3.14, "abc") for i in range(500)]
        ring.put_many(items)
        got = []
        while len(got) < len(items):
            got += ring.get_many(64, timeout=TIMEOUT)
        assert got == items and all(type(g) is tuple for g in got)
    finally:
        ring.close()


def test_cloudpickle_ring_takes_the_plain_path():
    ring = gb.Ring(serializer="cloudpickle")
    try:
        ring.put((1, "a"))
        off = ring._slots_offset
        assert struct.unpack_from("<Q", ring._segment.mm, off + _SLOT_AUX)[0] == AUX_PLAIN
        ring.put(lambda v: v + 1)                  # not plain: cloudpickle
        assert ring.get(timeout=TIMEOUT) == (1, "a")
        assert ring.get(timeout=TIMEOUT)(1) == 2
    finally:
        ring.close()


def test_custom_serializer_sees_every_item():
    """A (dumps, loads) pair chose its own format: plain data is not taken
    from it."""
    calls = []

    def dumps(obj):
        calls.append(obj)
        return pickle.dumps(obj)

    ring = gb.Ring(serializer=(dumps, pickle.loads))
    try:
        ring.put((1, 2))
        assert calls == [(1, 2)]
        assert ring.get(timeout=TIMEOUT) == (1, 2)
    finally:
        ring.close()



def test_decoder_takes_the_picklers_own_plain_pickles_or_rejects_them():
    """An out-of-line item pickled by the pickler (a large str or bytes, or
    a tuple of them) is decoded by the plain decoder in one copy: it skips
    MEMOIZE and FRAME as pickle would accept them.  Anything else it rejects;
    what it accepts, also when damaged, is what pickle.loads makes of it."""
    rng = random.Random(5)
    big = [b"x" * 300_000, "y" * 70_000, (b"z" * 100_000, 1, "w"), [b"q" * 70_000, b"r" * 9]]
    for o in big:
        assert same(_core._plain_loads(pickle.dumps(o, 5)), o)
    seeds = [pickle.dumps(o, 5) for o in _corpus(seed=13, n=40)] + [
        pickle.dumps(o, 5) for o in big]
    accepted = 0
    for _ in range(5000):
        b = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(0, 3)):
            b[rng.randrange(2, len(b))] = rng.choice([0x94, 0x95, rng.randrange(256)])
        if rng.randrange(3) == 0:
            del b[rng.randrange(2, len(b)):]
        try:
            got = _core._plain_loads(bytes(b))
        except ValueError:
            continue
        accepted += 1
        assert same(got, pickle.loads(bytes(b))), bytes(b)[:80]
    assert accepted


def test_put_plain_puts_only_plain_data_without_waiting():
    """QueueHandle._put_plain (gb.Pool's put of a small task): 1 and the
    item is in the ring for plain data that fits a slot; 0 and nothing put
    for anything else (the caller then puts it its own way); -1 and
    nothing put when a bounded ring is full; 0 for an unbounded ring (whose
    put may have items waiting in this process ahead of it)."""
    ring = gb.Ring(maxsize=2, max_bytes=256)
    try:
        assert ring._put_plain((1, b"fn", (2, 3), {"k": [4.5, None]})) == 1
        for obj in (NOT_PLAIN[0], NOT_PLAIN[-1], _BIG, ("y" * 300,)):
            assert ring._put_plain(obj) == 0
        assert ring.qsize() == 1
        assert ring._put_plain("second") == 1
        assert ring._put_plain("third") == -1           # full: no wait, nothing put
        assert ring._put_plain(NOT_PLAIN[0]) == 0       # not plain: said first
        assert same(ring.get(timeout=TIMEOUT), (1, b"fn", (2, 3), {"k": [4.5, None]}))
        assert ring.get(timeout=TIMEOUT) == "second"
        assert ring.qsize() == 0
        ring.close()
        with pytest.raises(ValueError):
            ring._put_plain(1)
    finally:
        ring.close()
    unbounded = gb.Ring()
    try:
        assert unbounded._put_plain(1) == 0 and unbounded.qsize() == 0
    finally:
        unbounded.close()
