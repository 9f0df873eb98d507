"""Queue rings across hosts (SPEC §9): credit-based forwarding.

The host whose bridge exports a queue ring is its *home*; a bridge that
imports it keeps a local ring of the same name and settings (created when
the home announces it, unless one exists).  Producers and consumers on
every host use their local ring as usual.

Protocol (wire version 1, beside the stream keys of ``bridge.py``):

``gb/<name>/ctl`` ``op="announce"``, ``kind="ring"``
    ``maxsize``, ``capacity``, ``max_bytes`` (slot size), ``serializer``,
    ``zid`` (the home bridge's Zenoh id), ``sid`` (the ring's lifetime).

``gb/<name>/credit`` (importer to home), UTF-8 JSON
    ``{"v": 1, "sid", "to": home zid, "from": importer zid, "granted": G,
    "received": R, "mode", "settle"?}``.  Both counters are cumulative for
    the pair (home bridge instance, importer bridge instance), so a lost or
    repeated credit message changes nothing.  ``settle`` (see Exact
    losses) lists ``{"home", "importer", "put"}`` for pairs that ended.
    The importer grants only what its local ring has room for and at most
    ``window`` items outstanding
    (``G - R <= window``; fewer for large items, ``WINDOW_BYTES``), and
    only while its ring holds fewer than ``window`` items more than are
    outstanding, i.e. while its consumers drain it.  It grants as soon as
    a batch is in its ring, so credit for the next batch is on its way
    while consumers take the last one.  The putter thread grants it itself
    (a credit thread it woke would wait for the GIL until the putter
    blocks).

``gb/<name>/item/<importer zid>`` (home to importer)
    A batch: the items the home took with one ``get_many`` (at most the
    credit it holds and half the importer's window: two messages in flight,
    so each bridge works while the other does), up to ``BATCH_MAX`` items
    or ``BATCH_BYTES`` per message.  Attachment ``ITEM_HEADER``: magic
    ``b"GBi2"``, sid tag, the number ``k`` of its first item for the pair
    (0, 1, ...; the next items are ``k + 1``, ...).  Payload
    (``encode_batches``): the items as one list pickled with protocol 5 (or
    the ring's serializer), or each item pickled on its own when the list
    would not fit in ``BATCH_BYTES``; out-of-band buffers (numpy arrays)
    framed after each pickle.  The receiver checks a whole batch
    (numbering, credit, framing, unpickling) before it puts any item.

``gb/<name>/upcredit`` (home to importer) and ``gb/<name>/up/<home zid>``
    The same, the other way, for items put on an importing host that no
    consumer there takes: the importer's credit messages carry ``mode``
    ("up" when it has such items), the home grants up-credit while its own
    consumers want items, and the importer sends batches with
    ``UP_HEADER`` (magic ``b"GBu2"``, sid tag, first number, its zid).  An item
    never moves back: an importer goes "up" only once every item the home
    sent it has been taken (its ring's head passed them), and the home
    sends nothing down to an importer until every item that importer sent
    up has been taken at the home.

Demand: a bridge grants (up-)credit only while consumers of its ring want
items: some are parked in ``get()`` (the ring's wait-queue sleeper count)
or the ring's head moved by more than the bridge's own gets within the last
second.  The bridge's own gets poll and never park, so they never look like
demand.

Delivery: the home bridge takes items from its ring (``get_many``) only
for an importer that holds credit for them, sends them once on a reliable
ordered Zenoh link and never again; the importer puts items into its ring
in number order.  So while both bridges run each item reaches exactly one
``get()``, and one producer's items stay in its order.  Items taken and
not yet acknowledged are *in flight* (at most ``window`` per importer); a
killed bridge loses at most those and never duplicates one.

Exact losses: for each pair (home instance, importer instance) both sides
keep a host-local counter (``_Counter``, a file under ``LEDGER_DIR``) that
the core stores right after each item it takes (home) or puts (importer),
and a ledger (``_Ledger``) naming them.  A pair ends when either bridge is
killed; the importer (or its restarted successor, from the ledger) then
reports in its credit messages how many items it put for the pair, and the
home (or its restarted successor, which read the killed one's counters)
counts ``taken - put`` (or ``sent - put``) as ``lost``, once.  An importer
silent for ``PEER_SILENCE`` seconds is counted with what was in flight to
it (an upper bound).  Items sent up are settled the same way: the
importer counts what it took for each pair, the home what it put, and the
importer's report carries both directions (``put`` and ``up``).
"""
import json
import logging
import mmap
import os
import pickle
import queue
import struct
import threading
import time
from typing import Optional

from . import _core
from .errors import BridgeError, BufferCorrupt, BufferExists, Empty
from .schema import ArraySpec, decode_meta

__all__ = ["RingExport", "RingImport", "BroadcastExport", "BroadcastImport", "try_export",
           "encode_item", "decode_item", "consumers_waiting"]

log = logging.getLogger("global_buffer.bridge")

ITEM_MAGIC = b"GBi2"
ITEM_HEADER = struct.Struct("<4s8sQ")
UP_MAGIC = b"GBu2"
UP_HEADER = struct.Struct("<4s8sQ32s")  # magic, sid tag, number, sender zid
HUNGRY = 1.0  # seconds a ring counts as drained by consumers after its head moved
# items in flight per pair at most: what a killed bridge may lose.  Credit
# goes round trip per window, so the window bounds small items' rate (items
# per round trip): 16 gave ~9k items/s, 128 ~24k/s (a round trip of ~5 ms:
# encoding, Zenoh both ways, decoding and putting on 2 busy cores).  Large
# items are held to WINDOW_BYTES in flight.
DEFAULT_WINDOW = 128
PIPE_MIN = 16  # items per message at least (when credit allows) as batches are halved
WINDOW_BYTES = 64 << 20
BATCH_MAX = 256          # items in one message at most
BATCH_BYTES = 1 << 20    # a message holds more than one item only up to this size
PEER_SILENCE = 10.0  # seconds without credit before an importer counts as gone
LEDGER_DIR = "/dev/shm"  # host-local, like the rings themselves
REPORT_SECONDS = 30.0  # an importer repeats an ended pair's count this long
_MAX_REPORTS = 64      # reports per credit message at most


def _pair(home, importer):
    """The ledger key of a (home instance, importer instance) pair."""
    return f"{home}/{importer}"


def _report_ok(r):
    """A settle report ``{"home", "importer", "put", "up"}`` (counts >= 0)."""
    return (isinstance(r, dict) and isinstance(r.get("home"), str)
            and isinstance(r.get("importer"), str)
            and all(type(r.get(k, 0)) is int and r.get(k, 0) >= 0 for k in ("put", "up")))


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass


class _Counter:
    """One u64 in a host-local memory-mapped file (``mv``, a u64 view the
    core stores into right after each item it counts moved: a SIGKILL
    between the move and the count is a window of a few instructions, not
    a file write).  An in-memory u64 if the file cannot be made (no
    /dev/shm: no settling after a kill)."""

    def __init__(self, path):
        self.path = path
        self.mm = None
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.ftruncate(fd, 8)
                self.mm = mmap.mmap(fd, 8)
            finally:
                os.close(fd)
        except OSError as e:
            log.debug("bridge: counter %s: %r", path, e)
        self.mv = memoryview(self.mm if self.mm is not None else bytearray(8)).cast("Q")

    def set(self, v):
        self.mv[0] = v

    @staticmethod
    def read(path):
        try:
            with open(path, "rb") as f:
                b = f.read(8)
        except OSError:
            return None
        return struct.unpack("<Q", b)[0] if len(b) == 8 else None

    def remove(self):
        try:
            os.unlink(self.path)
        except OSError:
            pass


class _Ledger:
    """A bridge's record for one ring, kept in a host-local file so that a
    restarted bridge can settle what its killed predecessor had in flight:
    who it was and where its counters (``_Counter``) are.  Written
    atomically when that changes, not per item."""

    def __init__(self, name, role):
        self.path = os.path.join(LEDGER_DIR, f"gbbridge.{name}.{role}.json")
        try:
            with open(self.path) as f:
                self.old = json.load(f)
            if not isinstance(self.old, dict):
                self.old = {}
        except (OSError, ValueError):
            self.old = {}
        self.data = {}

    def save(self):
        tmp = f"{self.path}.{os.getpid()}"
        try:
            with open(tmp, "w") as f:
                json.dump(self.data, f)
            os.replace(tmp, self.path)
        except OSError as e:  # no /dev/shm (not Linux): no settling after a kill
            log.debug("bridge: ledger %s: %r", self.path, e)

    def remove(self):
        try:
            os.unlink(self.path)
        except OSError:
            pass


_NO_BUFS = struct.Struct("<IQ")   # an item's framing without out-of-band buffers
_LIST_HEAD = struct.Struct("<II")  # 0 (the list form of a batch), item count


def _item_parts(item, dumps):
    """An item's wire bytes as parts (not joined, so a batch joins once)."""
    bufs: list = []
    data = dumps(item, protocol=5, buffer_callback=bufs.append)
    if not bufs:
        return [_NO_BUFS.pack(0, len(data)), data], 12 + len(data)
    raws = [b.raw() for b in bufs]
    head = struct.pack(f"<I{len(raws)}QQ", len(raws), *[r.nbytes for r in raws], len(data))
    return [head, data, *raws], len(head) + len(data) + sum(r.nbytes for r in raws)


def encode_item(item, dumps=pickle.dumps):
    """Item -> wire bytes: pickle protocol 5 with out-of-band buffers."""
    return b"".join(_item_parts(item, dumps)[0])


def encode_batches(items, dumps=pickle.dumps, max_bytes=BATCH_BYTES):
    """Items -> wire messages of at most ``BATCH_MAX`` items; yields
    (payload, count).  Two forms:

    - the list form, for up to ``BATCH_MAX`` items whose list fits in
      ``max_bytes``: ``u32 0``, ``u32 count``, then the list framed as one
      item (one pickle call per message, not per item: what makes small
      items cheap);
    - otherwise each item framed on its own: ``u32 count``, ``count`` x
      ``u64`` lengths, then the items' bytes, as many items per message as
      fit in ``max_bytes`` (at least one).

    The items of a batch came from separate ``get()`` calls, so pickling
    them together shares no mutable object between them."""
    items = list(items)
    for i in range(0, len(items), BATCH_MAX):
        chunk = items[i:i + BATCH_MAX]
        parts, n = _item_parts(chunk, dumps)
        if n <= max_bytes:
            yield b"".join([_LIST_HEAD.pack(0, len(chunk)), *parts]), len(chunk)
        else:
            yield from _encode_each(chunk, dumps, max_bytes)


def _encode_each(items, dumps, max_bytes):
    group: list = []
    lens: list = []
    size = 0
    for item in items:
        parts, n = _item_parts(item, dumps)
        if lens and (size + n > max_bytes or len(lens) == BATCH_MAX):
            yield b"".join([struct.pack(f"<I{len(lens)}Q", len(lens), *lens), *group]), len(lens)
            group, lens, size = [], [], 0
        group += parts
        lens.append(n)
        size += n
    if lens:
        yield b"".join([struct.pack(f"<I{len(lens)}Q", len(lens), *lens), *group]), len(lens)


def decode_batch(payload, loads=pickle.loads, writable=True):
    """A message of ``encode_batches`` -> its items, all checked before
    any is returned (BridgeError if anything is malformed).
    ``writable=False``: out-of-band buffers (numpy arrays) are views of
    ``payload``, not copies, for items that only go on into a ring (whose
    put copies them)."""
    mv = memoryview(payload)
    try:
        (n,) = struct.unpack_from("<I", mv, 0)
        if n == 0:  # the list form
            (n,) = struct.unpack_from("<I", mv, 4)
            lens = None
        else:
            lens = struct.unpack_from(f"<{n}Q", mv, 4)
            if 4 + 8 * n + sum(lens) != len(mv):
                raise ValueError
        if not 1 <= n <= BATCH_MAX:
            raise ValueError
    except (struct.error, ValueError):
        raise BridgeError(f"a batch of ring items of {len(mv)} bytes is malformed") from None
    if lens is None:
        items = decode_item(mv[_LIST_HEAD.size:], loads, writable)
        if type(items) is not list or len(items) != n:
            raise BridgeError(f"a batch of {n} ring items holds "
                              f"{len(items) if type(items) is list else 'no list'}")
        return items
    off = 4 + 8 * n
    items = []
    for ln in lens:
        items.append(decode_item(mv[off:off + ln], loads, writable))
        off += ln
    return items


def decode_item(payload, loads=pickle.loads, writable=True):
    """Wire bytes -> item; BridgeError if the framing is inconsistent.
    ``writable``: out-of-band buffers are copied into bytearrays, writable
    as items from a ring are (False: read-only views of ``payload``)."""
    mv = memoryview(payload)
    try:
        (n,) = struct.unpack_from("<I", mv, 0)
        if n > 1 << 16:
            raise ValueError
        lens = struct.unpack_from(f"<{n}Q", mv, 4)
        off = 4 + 8 * n
        (dlen,) = struct.unpack_from("<Q", mv, off)
        off += 8
        if off + dlen + sum(lens) != len(mv):
            raise ValueError
    except (struct.error, ValueError):
        raise BridgeError(f"ring item of {len(mv)} bytes is not a framed pickle") from None
    data = mv[off:off + dlen]
    off += dlen
    bufs = []
    for ln in lens:
        b = mv[off:off + ln]
        bufs.append(bytearray(b) if writable else b)
        off += ln
    try:
        return loads(data, buffers=bufs)
    except Exception as e:
        raise BridgeError(f"ring item does not unpickle: {e!r}") from None


def _serializer(tag):
    if tag == "cloudpickle":
        import cloudpickle
        return cloudpickle.dumps, pickle.loads
    return pickle.dumps, pickle.loads


class _Peer:
    __slots__ = ("granted", "sent", "acked", "seen", "mode", "up_granted", "up_next",
                 "up_received", "t_up", "last_up_credit")

    def __init__(self):
        self.granted = self.sent = self.acked = 0
        self.seen = time.monotonic()
        self.mode = "down"
        self.up_granted = self.up_next = self.up_received = 0
        self.t_up = 0  # home ring tail after the last item this importer sent up
        self.last_up_credit = 0.0


def _want(q, outstanding, window, limit, stats):
    """Credit to grant a peer now: at most ``window`` items in flight (fewer
    when items are large: ``WINDOW_BYTES`` at the average size moved so far,
    ``stats``), at most ``window`` more queued in the ring (``q``) than in
    flight, so that credit flows while consumers drain the last items, and
    never more than the ring (``limit`` items) has room for."""
    if stats.items:
        window = max(1, min(window, WINDOW_BYTES * stats.items // max(stats.bytes, 1)))
    return min(window - outstanding, limit - q - outstanding, 2 * window - q - outstanding)


def consumers_waiting(ring):
    """Consumers parked in ``get()`` on ``ring`` (its wait queue's sleeper
    count).  The bridge's own gets never park, so they are not counted."""
    return ring._waiting()


def _take(ring, hunger, max_items, timeout, stop, count=None, base=0):
    """1 to ``max_items`` items from ``ring`` without parking in the ring's
    wait queue, so that a bridge waiting for items never looks like a
    consumer: polls; ``Empty`` after ``timeout``.  Counted as this bridge's
    own gets in ``hunger`` before they are taken.

    With ``count`` (a ``_Counter``), the core stores ``base + n`` into it
    right after it takes the n-th item, so a bridge killed mid-batch leaves
    the exact count of what it took (SPEC §9)."""
    hunger.before_take(max_items)
    got: list = []
    mv = None if count is None else count.mv
    try:
        deadline = time.monotonic() + timeout
        pause = 0.0002
        while True:
            try:
                if ring._closed_put:
                    ring._check_put()  # ValueError: closed under us
                got = ring._get_many(max_items, False, None, mv, base)
                return got
            except Empty:
                if time.monotonic() >= deadline or stop.is_set():
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 0.002)
    finally:
        hunger.not_taken(max_items - len(got))


def _send(owner, pub, items, dumps, header, k):
    """Publish ``items``, numbered from ``k``, in as few messages as fit
    (``encode_batches``); ``header(n)`` is the attachment of a message whose
    first item is number ``n``."""
    for data, count in encode_batches(items, dumps):
        att = header(k)
        pub.put(data, attachment=att)
        k += count
        owner.stats.bytes += len(data) + len(att)
        owner.bridge._count_out(len(data) + len(att))


class _Putter:
    """Items that came over the wire, put into the local ring in arrival
    order by a thread of its own (a full ring never blocks Zenoh's
    callback), a batch at a time in compiled code.  ``on_put(tag, n)``
    runs after ``n`` more items of a batch are in the ring and
    ``on_batch(tag)`` after each whole batch; ``on_stop(tag, n)`` if the
    bridge stops holding ``n`` items it could not put.  ``count(tag)``, if
    given, is ``(counter, base)``: the core stores ``base + k`` into the
    ``_Counter`` right after the k-th item of the call is in the ring (or
    ``None``: not counted)."""

    def __init__(self, ring, stop, name, on_put, on_batch, on_stop=None, count=None):
        self.ring, self.stop = ring, stop
        self.on_put, self.on_batch, self.on_stop = on_put, on_batch, on_stop
        self.count = count
        self.box: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def put(self, tag, items):
        self.box.put((tag, items))

    def empty(self):
        return self.box.empty()

    def _run(self):
        while not self.stop.is_set():
            try:
                tag, items = self.box.get(timeout=0.05)
            except queue.Empty:
                continue
            done = 0
            while done < len(items):
                if self.stop.is_set():
                    if self.on_stop is not None:
                        self.on_stop(tag, len(items) - done)
                    return
                c = self.count(tag) if self.count is not None else None
                if self.ring._closed_put:
                    self.ring._check_put()  # ValueError: closed under us
                # each item waits at most 0.1 s for room (then stop is checked)
                n = self.ring._put_each(items[done:] if done else items, 0.1,
                                        None if c is None else c[0].mv,
                                        0 if c is None else c[1])
                if n:
                    done += n
                    self.on_put(tag, n)
            self.on_batch(tag)


class _Hunger:
    """Whether a ring's consumers want items: some are parked in ``get()``,
    or its head moved by more than this bridge's own gets within the last
    ``HUNGRY`` seconds."""

    def __init__(self, ring):
        self.ring = ring
        self.own = 0             # gets by this bridge, counted *before* each get
        self.high = ring._head   # most items ever taken by others
        self.last = -1e9

    def before_take(self, n=1):
        self.own += n

    def not_taken(self, n=1):
        self.own -= n

    def tick(self, now):
        head = self.ring._head
        other = head - self.own  # never overstates: own is counted ahead
        if other > self.high or consumers_waiting(self.ring):
            self.last = now
        self.high = max(self.high, other)
        return head, now - self.last < HUNGRY


class RingExport:
    """The home side of one queue ring: forwards items to importers that
    hold credit."""

    def __init__(self, bridge, name, ring, stats_cls):
        self.bridge, self.name, self.ring = bridge, name, ring
        self.kind = "ring"
        self.capacity = ring.capacity
        self.sid = f"{bridge.host}:ring:{ring._owner[0]}:{ring._created_ns}"
        from .bridge import _sid_tag
        self.tag = _sid_tag(self.sid)
        self.serializer = getattr(ring, "_serializer", "pickle")
        if ring._kind == _core.KIND_MESSAGE:
            self.serializer = "pickle"  # the dicts its items decode to
        if not isinstance(self.serializer, str):
            raise BridgeError(f"ring {name!r} uses a custom serializer; not exported")
        self.dumps, _ = _serializer(self.serializer)
        self.stats = stats_cls("export", "ring", self.sid)
        self.peers = {}  # importer zid -> _Peer
        # what a killed predecessor of this bridge took for each importer,
        # settled when that importer reports what it received
        self.ledger = _Ledger(name, "home")
        old = self.ledger.old
        # what killed predecessors of this bridge took for each importer and
        # nobody has settled yet: _pair(home zid, importer zid) -> items taken
        # and put into the ring from each importer's items sent up (prior_up)
        self.prior: dict = {}
        self.prior_up: dict = {}
        done = []
        if old.get("sid") == self.sid:
            home = old.get("home")
            for field, counts, into in (("peers", "prior", self.prior),
                                        ("up_peers", "prior_up", self.prior_up)):
                carried = old.get(counts)
                if isinstance(carried, dict):  # a predecessor's own unsettled ones
                    into.update((k, v) for k, v in carried.items()
                                if isinstance(k, str) and isinstance(v, int))
                paths = old.get(field)
                if isinstance(paths, dict) and isinstance(home, str):
                    for z, path in paths.items():
                        n = _Counter.read(path) if isinstance(path, str) else None
                        if n is not None:
                            into[_pair(home, z)] = n
                            done.append(path)
        self.counters = {}     # importer zid -> _Counter of items taken for it
        self.up_counters = {}  # importer zid -> _Counter of its items put here
        self.up_batches: dict = {}  # importer zid -> its batches waiting to be put
        self.ledger.data = {"sid": self.sid, "home": bridge.zid, "peers": {}, "up_peers": {},
                            "prior": dict(self.prior), "prior_up": dict(self.prior_up)}
        self.ledger.save()
        for path in done:  # their counts are in the ledger now
            _unlink(path)
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.stop = threading.Event()
        self.gone = False
        self.thread = threading.Thread(target=self._run, name=f"gb-bridge-ring-{name}",
                                       daemon=True)
        # items coming up from importers: put here by a thread of their own
        self.hunger = _Hunger(ring)
        self.kick = threading.Event()  # grant up-credit now (items went in)
        self.up = _Putter(ring, self.stop, f"gb-bridge-up-{name}", self._on_up_put,
                          self._on_up_batch, count=self._up_count)
        self.tthread = threading.Thread(target=self._tick_loop, daemon=True,
                                        name=f"gb-bridge-tick-{name}")

    def start(self):
        self.thread.start()
        if not self.ring.broadcast:
            self.up.thread.start()
            self.tthread.start()

    def on_up(self, payload, att):
        """An item an importer sent up (it holds up-credit from us)."""
        if len(att) != UP_HEADER.size:
            raise BridgeError(f"ring item sent up for {self.name!r} with a {len(att)}-byte "
                              "header; dropped")
        magic, tag, k, frm = UP_HEADER.unpack(att)
        frm = frm.rstrip(b"\0 ").decode("ascii", "replace")
        if magic != UP_MAGIC or tag != self.tag:
            raise BridgeError(f"ring item sent up for {self.name!r} with a bad header; dropped")
        with self.lock:
            p = self.peers.get(frm)
            if p is None or k != p.up_next:
                raise BridgeError(f"ring item {k} sent up for {self.name!r} by {frm} out of "
                                  "turn; dropped")
            items = decode_batch(payload, _serializer(self.serializer)[1], False)
            if k + len(items) > p.up_granted:
                raise BridgeError(f"ring items {k}..{k + len(items) - 1} sent up for "
                                  f"{self.name!r} by {frm} beyond its credit; dropped")
            p.up_next += len(items)
            p.t_up = None  # until they are in the ring
            self._up_counter(frm)
            self.up_batches[frm] = self.up_batches.get(frm, 0) + 1
        self.up.put(frm, items)
        self.stats.bytes += len(payload) + len(att)

    def _up_counter(self, frm):
        """(Under the lock.) The counter of items from importer ``frm`` put
        into the ring here, in the ledger."""
        return self._counter(self.up_counters, "up_peers", frm, ".up")

    def _counter(self, table, field, zid, suffix=""):
        """``table[zid]``, a ``_Counter`` made on first use and named in
        the ledger's ``field``."""
        c = table.get(zid)
        if c is None:
            c = table[zid] = _Counter(f"{self.ledger.path[:-5]}.{self.bridge.zid}.{zid}{suffix}")
            self.ledger.data[field][zid] = c.path
            self.ledger.save()
        return c

    def _up_count(self, frm):
        with self.lock:
            c = self.up_counters.get(frm)
            return None if c is None else (c, c.mv[0])

    def _on_up_batch(self, frm):
        with self.lock:
            self.up_batches[frm] -= 1
        self.kick.set()

    def _on_up_put(self, frm, n):
        with self.lock:
            p = self.peers.get(frm)
            if p is not None:
                p.up_received += n
                if self.up.empty():
                    p.t_up = None if self.ring._pending else self.ring._tail
            self.stats.items += n

    def _tick_loop(self):
        while not self.stop.is_set():
            self.kick.wait(0.005)
            self.kick.clear()
            try:
                self._tick()
            except Exception as e:
                if not self.stop.is_set():
                    log.error("bridge: ring %r: granting up-credit failed: %r", self.name, e)
                    self.stop.wait(0.5)

    def _tick(self):
        """Grant importers that want to send items up what this ring has
        room for, while its consumers drain it (one at a time otherwise)."""
        from .bridge import PREFIX, WIRE_VERSION
        now = time.monotonic()
        _, hungry = self.hunger.tick(now)
        q = self.ring.qsize()
        limit = self.ring.maxsize if self.ring.maxsize > 0 else self.ring.capacity
        msgs = []
        with self.lock:
            for zid, p in self.peers.items():
                if p.t_up is None and self.up.empty() and not self.ring._pending:
                    p.t_up = self.ring._tail
                want = 0
                if p.mode == "up" and hungry:
                    want = _want(q, p.up_granted - p.up_received, DEFAULT_WINDOW, limit,
                                 self.stats)
                if want <= 0 and now - p.last_up_credit < 0.5:
                    continue
                if want > 0:
                    p.up_granted += want
                p.last_up_credit = now
                msgs.append({"v": WIRE_VERSION, "sid": self.sid, "to": zid,
                             "from": self.bridge.zid, "granted": p.up_granted,
                             "received": p.up_received})
        for m in msgs:
            data = json.dumps(m, separators=(",", ":")).encode()
            self.bridge._session.put(f"{PREFIX}/{self.name}/upcredit", data)
            self.bridge._count_out(len(data))

    def announce(self):
        from . import _core
        from .bridge import WIRE_VERSION
        r = self.ring
        a = {"v": WIRE_VERSION, "op": "announce", "sid": self.sid, "kind": "ring",
             "maxsize": r.maxsize, "capacity": r.capacity, "max_bytes": r._slot_size,
             "serializer": self.serializer, "zid": self.bridge.zid,
             "layout": _core.LAYOUT_VERSION, "host": self.bridge.host}
        if isinstance(r.schema, ArraySpec):
            a["schema"] = r.schema.to_json()
        elif r._kind == _core.KIND_MESSAGE:
            a["message"] = decode_meta(r._meta)  # its JSON schema and model name
        return a

    def on_credit(self, msg):
        frm, granted, received = msg.get("from"), msg.get("granted"), msg.get("received")
        if not (isinstance(frm, str) and isinstance(granted, int)
                and isinstance(received, int) and 0 <= received <= granted):
            raise BridgeError(f"malformed credit for ring {self.name!r}")
        with self.cond:
            self._settle(frm, msg)
            p = self.peers.get(frm)
            if p is None:
                p = self.peers[frm] = _Peer()
                # from now on: a successor of this bridge counts what the
                # importer sends up and it never put (0 if it got nothing)
                self._up_counter(frm)
                log.info("bridge: ring %r: importer %s asks for items", self.name, frm)
            if received > p.sent:
                raise BridgeError(f"credit for ring {self.name!r} acknowledges {received} "
                                  f"items; only {p.sent} were sent")
            p.granted = max(p.granted, granted)
            p.acked = max(p.acked, received)
            p.seen = time.monotonic()
            p.mode = "up" if msg.get("mode") == "up" else "down"
            self.cond.notify()

    def _count_lost(self, n, why):
        if n > 0:
            self.stats.lost += n
            log.error("bridge: ring %r: %d item(s) lost: %s", self.name, n, why)

    def _settle(self, frm, msg):
        """Exact losses of killed bridges (SPEC §9).  An importer reports,
        for each pair (home instance, importer instance) that ended, how
        many items it put into its ring for that pair (``settle``: a list of
        ``{"home", "importer", "put"}``; repeated until they expire, applied
        once).  A pair of a killed home's: the items it took (its counter,
        read by this bridge at start) minus those are lost; a pair of this
        bridge's with a killed importer: the items sent to it minus those."""
        reports = msg.get("settle")
        if not isinstance(reports, list):
            return
        changed = False
        for r in reports[:_MAX_REPORTS]:
            if not isinstance(r, dict):
                continue
            if not _report_ok(r):
                continue
            home, imp, put, up = r["home"], r["importer"], r.get("put", 0), r.get("up", 0)
            key = _pair(home, imp)
            if key in self.prior_up:
                self._count_lost(up - self.prior_up.pop(key),
                                 f"sent up by {imp} to the killed home bridge {home}, never "
                                 "put into its ring")
                changed = True
            elif home == self.bridge.zid and imp != frm and imp in self.up_counters \
                    and not self.up_batches.get(imp):
                c = self.up_counters.pop(imp)
                self._count_lost(up - c.mv[0], f"taken by the killed importing bridge {imp} "
                                 "to send up, never put into the ring here")
                self.ledger.data["up_peers"].pop(imp, None)
                c.remove()
                changed = True
            if key in self.prior:
                self._count_lost(self.prior.pop(key) - put,
                                 f"taken by the killed home bridge {home} for {imp}, never "
                                 "put into its ring")
                changed = True
            elif home == self.bridge.zid and imp != frm and imp in self.peers:
                p = self.peers.pop(imp)
                self._count_lost(p.sent - put, f"sent to the killed importing bridge {imp}, "
                                 "never put into its ring")
                self.ledger.data["peers"].pop(imp, None)
                cnt = self.counters.pop(imp, None)
                if cnt is not None:
                    cnt.remove()
                changed = True
        if changed:
            self.ledger.data["prior"] = dict(self.prior)
            self.ledger.data["prior_up"] = dict(self.prior_up)
            self.ledger.save()

    def in_flight(self):
        with self.lock:
            return sum(p.sent - p.acked for p in self.peers.values())

    def _pick(self):
        now = time.monotonic()
        for zid, p in list(self.peers.items()):
            if now - p.seen > PEER_SILENCE:
                del self.peers[zid]
                self._count_lost(p.sent - p.acked, f"importer {zid} went silent with them in "
                                 "flight (an upper bound: it may have received some)")
        best = None
        head = self.ring._head
        for zid, p in self.peers.items():
            if p.t_up is None or head < p.t_up:
                continue  # items it sent up are not all taken here yet: none go back
            if p.sent < p.granted and (best is None or p.sent - p.acked
                                       < self.peers[best].sent - self.peers[best].acked):
                best = zid
        return best

    def _run(self):
        from .bridge import PREFIX
        session = self.bridge._session
        z = self.bridge._zenoh
        pubs: dict = {}
        try:
            while not self.stop.is_set():
                with self.cond:
                    zid = self._pick()
                    if zid is None:
                        self.cond.wait(0.05)
                        continue
                    p = self.peers[zid]
                    # at most half the importer's window per message, so
                    # that two are in flight (PIPE_MIN at least)
                    room = min(p.granted - p.sent,
                               max(PIPE_MIN, (p.granted - p.acked + 1) // 2))
                cnt = self._counter(self.counters, "peers", zid)
                with self.lock:
                    base = self.peers[zid].sent if zid in self.peers else None
                if base is None:
                    continue
                try:
                    # the host-local count of items taken for this importer,
                    # stored by the core right after each item (what a
                    # restarted bridge reads to count exactly what a killed
                    # one lost)
                    items = _take(self.ring, self.hunger, min(room, BATCH_MAX), 0.05, self.stop,
                                  cnt, base)
                except Empty:
                    continue
                except (OSError, ValueError):  # the ring was closed under us
                    break
                with self.lock:
                    p = self.peers.get(zid)
                    if p is None:  # went silent meanwhile: the items are lost
                        self.stats.lost += len(items)
                        continue
                    k = p.sent
                    p.sent += len(items)
                pub = pubs.get(zid)
                if pub is None:
                    pub = pubs[zid] = session.declare_publisher(
                        f"{PREFIX}/{self.name}/item/{zid}",
                        congestion_control=z.CongestionControl.BLOCK,
                        reliability=z.Reliability.RELIABLE)
                _send(self, pub, items, self.dumps,
                      lambda n: ITEM_HEADER.pack(ITEM_MAGIC, self.tag, n), k)
                self.stats.items += len(items)
        except Exception as e:
            if not self.stop.is_set():
                log.error("bridge: forwarding ring %r stopped: %r", self.name, e)
        finally:
            for pub in pubs.values():
                try:
                    pub.undeclare()
                except Exception:
                    pass

    def poll(self):
        self.stats.state = f"up, {self.in_flight()} in flight"

    def close(self):
        self.stop.set()
        with self.cond:
            self.cond.notify_all()
        for t in (self.thread, self.up.thread, self.tthread):
            if t.is_alive() and t is not threading.current_thread():
                t.join(5)
        try:
            self.ring.close()
        except Exception:
            pass


class RingImport:
    """The importing side of one far queue ring: a local ring of the same
    name, fed by credit."""

    def __init__(self, bridge, name, sid, ann, stats_cls, window=DEFAULT_WINDOW):
        self.bridge, self.name, self.sid = bridge, name, sid
        from .bridge import _sid_tag
        self.tag = _sid_tag(sid)
        self.kind = "ring"
        self.home = ann["zid"]
        self.window = window
        _, self.loads = _serializer(ann["serializer"])
        self.serializer = ann["serializer"]
        self.ring, self.created = _local_ring(bridge, name, ann, False)
        self.limit = ann["maxsize"] if ann["maxsize"] > 0 else ann["capacity"]
        self.stats = stats_cls("import", "ring", sid, peer=ann.get("host"))
        self.granted = self.received = 0
        self.next_k = 0
        # sending items up to the home (mode "up") while this ring backs up
        # and every item the home sent here has been taken
        self.mode = "down"
        self.t_down: Optional[int] = 0
        self.hunger = _Hunger(self.ring)
        self.up_granted = self.up_sent = 0
        self.uplinking = False
        self.ledger = _Ledger(name, "import")
        old = self.ledger.old
        # Exact losses (SPEC §9): for each pair (home instance, this
        # instance) a host-local counter of the items put into the ring for
        # it (the core stores it after each item).  A pair ends when the
        # home is replaced (rehome) or this bridge is killed; its count is
        # then reported to the home in every credit message for
        # REPORT_SECONDS (``settle``), once none of its items wait in the
        # inbox.  A killed predecessor's pairs (and its own unsent reports)
        # are read back from the ledger and reported by this instance.
        self.reports: list = []  # [report dict, expiry (monotonic) or None]
        done = []
        if old.get("sid") == sid and old.get("me") != bridge.zid:
            for r in old.get("reports") or ():
                if _report_ok(r):
                    self.reports.append([r, None])
            pairs, ups = old.get("pairs"), old.get("up_pairs")
            if isinstance(pairs, dict) and isinstance(old.get("me"), str):
                ups = ups if isinstance(ups, dict) else {}
                for h, path in pairs.items():
                    got = _Counter.read(path) if isinstance(path, str) else None
                    up_path = ups.get(h)
                    up = _Counter.read(up_path) if isinstance(up_path, str) else None
                    if got is not None:
                        self.reports.append([{"home": h, "importer": old["me"], "put": got,
                                              "up": up or 0}, None])
                        done += [path, up_path] if up is not None else [path]
        self.pairs = {}    # home zid -> _Counter (this instance's pairs, current and ended)
        self.up_pairs = {}  # home zid -> _Counter of items taken here to send up to it
        self.up_busy = None  # the home zid the uplink is taking items for
        self.pair_no = 0
        self.ended = {}    # home zid -> expiry of its report (None: not reported yet)
        self.batches = {}  # home zid -> batches of that pair waiting in the inbox
        self._new_pair(self.home)
        self._save_ledger()
        for path in done:  # their counts are in the ledger's reports now
            _unlink(path)
        self.lock = threading.Lock()
        self.closed = False
        self.stop = threading.Event()
        self.kick = threading.Event()  # grant credit now (items went in)
        self.last_credit = 0.0
        self.inbox = _Putter(self.ring, self.stop, f"gb-bridge-ringin-{name}", self._on_put,
                             self._on_batch, self._on_stop, self._count)
        self.thread = self.inbox.thread
        self.thread.start()
        self.cthread = threading.Thread(target=self._credit_loop,
                                        name=f"gb-bridge-credit-{name}", daemon=True)
        self.cthread.start()
        self.uthread = threading.Thread(target=self._uplink, name=f"gb-bridge-upl-{name}",
                                        daemon=True)
        self.uthread.start()

    def on_upcredit(self, msg):
        granted, received = msg.get("granted"), msg.get("received")
        if not (isinstance(granted, int) and isinstance(received, int)):
            raise BridgeError(f"malformed up-credit for ring {self.name!r}")
        with self.lock:
            if msg.get("from") != self.home:
                return  # an old home instance
            self.up_granted = max(self.up_granted, granted)

    def _uplink(self):
        from .bridge import PREFIX
        z = self.bridge._zenoh
        pub, pub_home = None, None
        dumps = _serializer(self.serializer)[0]
        zid = self.bridge.zid.encode()[:32]
        while not self.stop.is_set():
            with self.lock:
                room = self.up_granted - self.up_sent if self.mode == "up" else 0
                home = self.home
                cnt = self.up_pairs[home]
                if room > 0:
                    self.uplinking = True
                    self.up_busy = home
            if room <= 0:
                self.stop.wait(0.005)
                continue
            try:
                try:
                    # counted for the pair by the core after each item: what
                    # the home counts as lost if this bridge or it is killed
                    items = _take(self.ring, self.hunger, min(room, BATCH_MAX), 0.02, self.stop,
                                  cnt, cnt.mv[0])
                except Empty:
                    continue
                except (OSError, ValueError):
                    return
                with self.lock:
                    if self.home != home:  # the home was replaced meanwhile
                        log.warning("bridge: ring %r: %d item(s) taken to send up to %s, "
                                    "which was replaced; lost (the home counts them)",
                                    self.name, len(items), home)
                        continue
                    k = self.up_sent
                    self.up_sent += len(items)
            finally:
                with self.lock:
                    self.uplinking = False
                    self.up_busy = None
            if pub is None or pub_home != home:
                if pub is not None:
                    pub.undeclare()
                pub = self.bridge._session.declare_publisher(
                    f"{PREFIX}/{self.name}/up/{home}",
                    congestion_control=z.CongestionControl.BLOCK,
                    reliability=z.Reliability.RELIABLE)
                pub_home = home
            _send(self, pub, items, dumps,
                  lambda n: UP_HEADER.pack(UP_MAGIC, self.tag, n, zid), k)
            self.stats.items += len(items)
        if pub is not None:
            try:
                pub.undeclare()
            except Exception:
                pass

    def _credit_loop(self):
        while not self.stop.is_set():
            self.kick.wait(0.005)
            self.kick.clear()
            if not self._grant_now():
                self.stop.wait(0.5)

    def _grant_now(self):
        """``credit()``, logging a failure; False if it failed.  The putter
        calls it after each batch is in the ring, in its own thread: a
        kicked credit thread would wait for the GIL until the putter blocks
        (a whole batch later), which serialised the pipeline."""
        try:
            self.credit()
            return True
        except Exception as e:
            if not self.stop.is_set():
                log.error("bridge: ring %r: granting credit failed: %r", self.name, e)
            return False

    def _new_pair(self, home):
        self.pair_no += 1  # (not len(pairs): ended pairs leave it)
        base = f"{self.ledger.path[:-5]}.{self.bridge.zid}.{self.pair_no}"
        self.pairs[home] = _Counter(base)
        self.up_pairs[home] = _Counter(base + ".up")

    def _save_ledger(self):
        self.ledger.data = {"sid": self.sid, "me": self.bridge.zid, "home": self.home,
                            "pairs": {h: c.path for h, c in self.pairs.items()},
                            "up_pairs": {h: c.path for h, c in self.up_pairs.items()},
                            "reports": [r for r, _ in self.reports]}
        self.ledger.save()

    def rehome(self, ann):
        """The home bridge restarted (a new instance): what it had in
        flight to us is lost; start a new pair.  Items of the old pair
        still in the inbox are put (and counted for it) first; then its
        count goes to the new home, which knows what the old one took."""
        with self.lock:
            log.warning("bridge: ring %r: home bridge %s replaced by %s; it had %d credit "
                        "unused or in flight (the home counts what it lost)", self.name,
                        self.home, ann["zid"], self.granted - self.next_k)
            self.ended[self.home] = None
            self.home = ann["zid"]
            self.granted = self.next_k = self.received = 0
            self.up_granted = self.up_sent = 0
            self._new_pair(self.home)
            self._save_ledger()

    def _settle_reports(self, now):
        """The reports to send now (under the lock): ended pairs whose
        items are all in the ring, and a predecessor's; expired ones go."""
        for h in list(self.ended):
            if self.batches.get(h, 0) == 0 and self.up_busy != h and self.ended[h] is None:
                self.ended[h] = now + REPORT_SECONDS
                self.reports.append([{"home": h, "importer": self.bridge.zid,
                                      "put": self.pairs[h].mv[0],
                                      "up": self.up_pairs[h].mv[0]}, now + REPORT_SECONDS])
        out, keep, changed = [], [], False
        for r in self.reports:
            if r[1] is None:
                r[1] = now + REPORT_SECONDS
            if now > r[1]:
                changed = True
                h = r[0]["home"]
                if r[0]["importer"] == self.bridge.zid and h in self.ended:
                    del self.ended[h]
                    self.pairs.pop(h).remove()
                    self.up_pairs.pop(h).remove()
                continue
            keep.append(r)
            out.append(r[0])
        if changed:
            self.reports = keep
            self._save_ledger()
        return out[-_MAX_REPORTS:]

    def on_item(self, payload, att):
        if len(att) != ITEM_HEADER.size:
            raise BridgeError(f"ring item for {self.name!r} with a {len(att)}-byte header; "
                              "dropped")
        magic, tag, k = ITEM_HEADER.unpack(att)
        if magic != ITEM_MAGIC or tag != self.tag:
            raise BridgeError(f"ring item for {self.name!r} with a bad header; dropped")
        with self.lock:
            if k != self.next_k:
                raise BridgeError(f"ring item {k} for {self.name!r}, expected {self.next_k}; "
                                  "dropped")
            items = decode_batch(payload, self.loads, False)
            if k + len(items) > self.granted:
                raise BridgeError(f"ring items {k}..{k + len(items) - 1} for {self.name!r} "
                                  f"beyond the credit granted ({self.granted}); dropped")
            self.next_k += len(items)
            home = self.home
            self.batches[home] = self.batches.get(home, 0) + 1
        self.inbox.put(home, items)
        self.stats.bytes += len(payload) + len(att)

    def _count(self, home):
        # the pair's counter, which the core stores right after each item is
        # in the ring (the putter is its only writer: its value is the base)
        with self.lock:
            c = self.pairs.get(home)
            return None if c is None else (c, c.mv[0])

    def _on_put(self, home, n):
        self.t_down = None if self.ring._pending else self.ring._tail
        with self.lock:
            self.stats.items += n
            if home == self.home:
                self.received += n

    def _on_batch(self, home):
        with self.lock:
            self.batches[home] -= 1
        self._grant_now()

    def _on_stop(self, gen, n):
        with self.lock:
            self.stats.lost += n  # stopped holding them

    def credit(self):
        """Grant what the local ring has room for (called often)."""
        from .bridge import PREFIX, WIRE_VERSION
        if self.closed:
            return
        q = self.ring.qsize()
        now = time.monotonic()
        with self.lock:
            head, hungry = self.hunger.tick(now)
            if self.t_down is None and not self.ring._pending and self.inbox.empty():
                self.t_down = self.ring._tail
            outstanding = self.granted - self.received
            if self.mode == "down":
                # items wait here that no local consumer takes (or more than
                # they keep up with), and nothing the home sent is left here
                if (q >= self.window or (q > 0 and not hungry)) and outstanding == 0 \
                        and self.inbox.empty() and self.t_down is not None \
                        and head >= self.t_down:
                    self.mode = "up"
                    self.last_credit = 0.0
            elif hungry and q < self.window // 2 and not self.uplinking:
                self.mode = "down"  # local consumers want items again
                self.last_credit = 0.0
            want = 0
            if self.mode == "down" and hungry:
                want = _want(q, outstanding, self.window, self.limit, self.stats)
            if want <= 0 and now - self.last_credit < 0.5:
                return
            if want > 0:
                self.granted += want
            self.last_credit = now
            msg = {"v": WIRE_VERSION, "sid": self.sid, "to": self.home,
                   "from": self.bridge.zid, "granted": self.granted,
                   "received": self.received, "mode": self.mode}
            settle = self._settle_reports(now)
            if settle:
                msg["settle"] = settle
            self.stats.state = f"up, {self.granted - self.received} in flight"
        data = json.dumps(msg, separators=(",", ":")).encode()
        self.bridge._session.put(f"{PREFIX}/{self.name}/credit", data)
        self.bridge._count_out(len(data))

    def close(self, unlink=False):
        if self.closed:
            return
        self.closed = True
        self.stop.set()
        self.thread.join(5)
        self.cthread.join(5)
        self.uthread.join(5)
        try:
            self.ring.close()
            self.ring.join_thread()
        except Exception:
            pass


def announced_spec(ann):
    """The ``gb.ArraySpec`` of an announced typed ring (``schema``:
    ``ArraySpec.to_json()``), None for an object ring; BridgeError if
    malformed."""
    from .schema import ArraySpec
    d = ann.get("schema")
    if d is None:
        return None
    try:
        if not isinstance(d, dict) or set(d) != {"dtype", "shape"} \
                or not isinstance(d["shape"], list):
            raise ValueError(d)
        spec = ArraySpec.from_json(d)
    except Exception:
        raise BridgeError(f"announce: bad ring schema {d!r}") from None
    if spec.nbytes != ann.get("max_bytes"):
        raise BridgeError(f"announce: ring schema {spec} does not match its slot size")
    return spec


def announced_message(ann):
    """The metadata of an announced message ring (``message``: its JSON
    schema and model name, as its segment stores them), None for another
    ring; BridgeError if malformed."""
    m = ann.get("message")
    if m is None:
        return None
    if not (isinstance(m, dict) and set(m) == {"kind", "payload", "schema", "model"}
            and m["kind"] == "ring" and m["payload"] == "message"
            and isinstance(m["schema"], dict) and isinstance(m["model"], str)) \
            or ann.get("schema") is not None:
        raise BridgeError("announce: bad message ring metadata")
    return m


def _local_ring(bridge, name, ann, broadcast):
    """(ring, created): the local ring a far one is imported into, made
    with the far ring's settings (an ArraySpec ring's schema, a message
    ring's JSON schema included), or the existing local ring of that name
    if it is the same kind (a typed one with the same schema:
    ``SchemaMismatch`` otherwise, nothing written).  A message ring's
    handle here has no model: items cross as dicts."""
    from . import _core
    from .errors import SchemaMismatch
    from .ring import _DICTS, Ring
    from .schema import decode_meta, schema_hash
    spec, message = announced_spec(ann), announced_message(ann)
    kw: dict = {"capacity": ann["capacity"], "name": name, "mode": bridge.mode}
    if spec is None:
        kw.update(max_bytes=ann["max_bytes"], serializer=ann["serializer"])
    else:
        kw["schema"] = spec
    try:
        if message is not None:
            return Ring._like_message_ring(name, message, ann["maxsize"], ann["capacity"],
                                           ann["max_bytes"], broadcast, bridge.mode), True
        if broadcast:
            return Ring(broadcast=True, **kw), True
        return Ring(ann["maxsize"], **kw), True
    except BufferExists:
        pass
    ring = Ring.attach(name)  # BufferCorrupt if it is not a ring
    what = "broadcast" if broadcast else "queue"
    if ring.broadcast != broadcast:
        ring.close()
        raise BridgeError(f"far {what} ring {name!r} clashes with a local "
                          f"{'queue' if broadcast else 'broadcast'} ring of that name; "
                          "nothing written")
    if message is not None or ring._kind == _core.KIND_MESSAGE:
        local = decode_meta(ring._meta) if ring._kind == _core.KIND_MESSAGE else None
        ring.close()
        if message is None or local is None \
                or schema_hash(local["schema"]) != schema_hash(message["schema"]):
            raise SchemaMismatch(f"far {what} ring {name!r} "
                                 f"({'messages' if message else spec or 'objects'}) clashes "
                                 "with the local ring of that name; nothing written")
        return Ring.attach(name, serializer=_DICTS), False
    if ring.schema != spec:
        ring.close()
        raise SchemaMismatch(f"far {what} ring {name!r} ({spec or 'objects'}) clashes with the "
                             f"local ring of that name ({ring.schema or 'objects'}); nothing "
                             "written")
    return ring, False


def try_export(bridge, name, stats_cls):
    """A RingExport for the ring ``name`` (object, ArraySpec or message
    ring), or None if it is not one this bridge can export."""
    from . import _core
    from .ring import _DICTS, Ring
    try:
        ring = Ring.attach(name)
        if ring._kind == _core.KIND_MESSAGE:
            # without the model: items cross as the dicts they decode to,
            # and items coming up are put back as such
            ring.close()
            ring = Ring.attach(name, serializer=_DICTS)
    except (BufferCorrupt, ValueError, TypeError) as e:
        log.debug("bridge: not exporting %r: %s", name, e)
        return None
    try:
        if ring.broadcast:
            return BroadcastExport(bridge, name, ring, stats_cls)
        return RingExport(bridge, name, ring, stats_cls)
    except BridgeError as e:
        log.warning("bridge: %s", e)
        ring.close()
        return None


# -- broadcast rings: like streams --------------------------------------------

BCAST_MAGIC = b"GBb2"


class BroadcastExport(RingExport):
    """A broadcast ring crosses like a stream: one handle of the bridge
    reads every item (from its own cursor) and publishes it once on
    ``gb/<name>/bdata``; each importing host puts it into its local
    broadcast ring, whose readers each read every item.  Items the
    bridge's handle missed (producers lapped it) count as ``lost``.
    Messages are batches as on ``item/`` (magic ``b"GBb2"``: what one
    ``get_many`` returned, numbered from ``k``); a gap in the numbers is
    counted as lost on the importing host."""

    def announce(self):
        a = super().announce()
        a["broadcast"] = True
        return a

    def on_credit(self, msg):
        pass  # no credit: a broadcast ring never blocks its producers

    def poll(self):
        self.stats.lost = self.ring.overruns
        self.stats.state = "up"

    def _run(self):
        from .bridge import PREFIX
        z = self.bridge._zenoh
        pub = self.bridge._session.declare_publisher(
            f"{PREFIX}/{self.name}/bdata", congestion_control=z.CongestionControl.BLOCK,
            reliability=z.Reliability.RELIABLE)
        k = 0
        try:
            while not self.stop.is_set():
                try:
                    items = self.ring.get_many(BATCH_MAX, timeout=0.1)
                except Empty:
                    continue
                except (OSError, ValueError):
                    break
                _send(self, pub, items, self.dumps,
                      lambda n: ITEM_HEADER.pack(BCAST_MAGIC, self.tag, n), k)
                k += len(items)
                self.stats.items += len(items)
        except Exception as e:
            if not self.stop.is_set():
                log.error("bridge: forwarding broadcast ring %r stopped: %r", self.name, e)
        finally:
            try:
                pub.undeclare()
            except Exception:
                pass


class BroadcastImport:
    """The local broadcast ring of a far one: every item put once."""

    def __init__(self, bridge, name, sid, ann, stats_cls):
        from .bridge import _sid_tag
        self.bridge, self.name, self.sid, self.tag = bridge, name, sid, _sid_tag(sid)
        self.kind = "ring"
        self.home = ann["zid"]
        _, self.loads = _serializer(ann["serializer"])
        self.ring, self.created = _local_ring(bridge, name, ann, True)
        self.stats = stats_cls("import", "ring", sid, peer=ann.get("host"))
        self.next_k = None
        self.lock = threading.Lock()
        self.closed = False

    def rehome(self, ann):
        with self.lock:
            self.home = ann["zid"]
            self.next_k = None  # the restarted exporter numbers from 0

    def on_item(self, payload, att):
        if len(att) != ITEM_HEADER.size:
            raise BridgeError(f"broadcast item for {self.name!r} with a {len(att)}-byte "
                              "header; dropped")
        magic, tag, k = ITEM_HEADER.unpack(att)
        if magic != BCAST_MAGIC or tag != self.tag:
            raise BridgeError(f"broadcast item for {self.name!r} with a bad header; dropped")
        items = decode_batch(payload, self.loads, False)
        with self.lock:
            if self.closed:
                return
            if self.next_k is not None and k > self.next_k:
                self.stats.lost += k - self.next_k
            self.next_k = k + len(items)
            self.ring.put_many(items)
            self.stats.items += len(items)
            self.stats.bytes += len(payload) + len(att)

    def close(self, unlink=False):
        with self.lock:
            if self.closed:
                return
            self.closed = True
        try:
            self.ring.close()
        except Exception:
            pass
