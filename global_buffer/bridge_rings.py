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
    "received": R}``.  Both counters are cumulative for the pair (home
    bridge instance, importer bridge instance), so a lost or repeated
    credit message changes nothing.  The importer grants only what its
    local ring has room for and at most ``window`` items outstanding
    (``G - R <= window``); it grants while its ring holds fewer than
    ``window`` items, i.e. while its consumers drain it.

``gb/<name>/item/<importer zid>`` (home to importer)
    Attachment ``ITEM_HEADER``: magic ``b"GBi1"``, sid tag, the item's
    number ``k`` for the pair (0, 1, ...).  Payload: the item pickled with
    protocol 5 (or the ring's serializer), its out-of-band buffers (numpy
    arrays) framed after it: ``u32 nbufs``, ``nbufs`` x ``u64`` lengths, the
    pickle, the buffers.

Delivery: the home bridge takes an item from its ring (``get``) only when
an importer holds credit, sends it once on a reliable ordered Zenoh link,
and never sends it again; the importer puts items into its ring in number
order.  So while both bridges run each item reaches exactly one ``get()``,
and one producer's items stay in its order.  Items taken and not yet
acknowledged are *in flight* (at most ``window`` per importer); a killed
bridge loses at most those, never duplicates one, and the surviving side
counts them as ``lost`` when the peer's instance changes or goes silent.
Items put on an importing host are consumed on that host (forwarding
toward the home is not built yet).
"""
import json
import logging
import mmap
import pickle
import queue
import struct
import threading
import time

from .errors import BridgeError, BufferCorrupt, BufferExists, Empty, Full

log = logging.getLogger("global_buffer.bridge")

import os

ITEM_MAGIC = b"GBi1"
ITEM_HEADER = struct.Struct("<4s8sQ")
DEFAULT_WINDOW = 16
PEER_SILENCE = 10.0  # seconds without credit before an importer counts as gone
LEDGER_DIR = "/dev/shm"  # host-local, like the rings themselves


class _Counter:
    """One u64 in a host-local memory-mapped file: stored right after the
    item it counts moved (a plain store, so a SIGKILL between the move and
    the count is a window of a few bytecodes, not a file write)."""

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

    def set(self, v):
        if self.mm is not None:
            struct.pack_into("<Q", self.mm, 0, v)

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


def encode_item(item, dumps=pickle.dumps):
    """Item -> wire bytes: pickle protocol 5 with out-of-band buffers."""
    bufs = []
    data = dumps(item, protocol=5, buffer_callback=bufs.append)
    raws = [b.raw() for b in bufs]
    head = struct.pack(f"<I{len(raws)}Q", len(raws), *[r.nbytes for r in raws])
    return b"".join([head, struct.pack("<Q", len(data)), data, *raws])


def decode_item(payload, loads=pickle.loads):
    """Wire bytes -> item; BridgeError if the framing is inconsistent."""
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
        bufs.append(bytearray(mv[off:off + ln]))  # writable, as items from a ring are
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
    __slots__ = ("granted", "sent", "acked", "seen")

    def __init__(self):
        self.granted = self.sent = self.acked = 0
        self.seen = time.monotonic()


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
        if not isinstance(self.serializer, str):
            raise BridgeError(f"ring {name!r} uses a custom serializer; not exported")
        self.dumps, _ = _serializer(self.serializer)
        self.stats = stats_cls("export", "ring", self.sid)
        self.peers = {}  # importer zid -> _Peer
        # what a killed predecessor of this bridge took for each importer,
        # settled when that importer reports what it received
        self.ledger = _Ledger(name, "home")
        old = self.ledger.old
        self.prior = {}
        if old.get("sid") == self.sid and isinstance(old.get("peers"), dict):
            for z, path in old["peers"].items():
                taken = _Counter.read(path) if isinstance(path, str) else None
                if taken is not None:
                    self.prior[z] = taken
                    os.unlink(path)
        self.prior_home = old.get("home") if self.prior else None
        self.counters = {}  # importer zid -> _Counter of items taken for it
        self.ledger.data = {"sid": self.sid, "home": bridge.zid, "peers": {},
                            "prior_home": self.prior_home, "prior": dict(self.prior)}
        self.ledger.save()
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.stop = threading.Event()
        self.gone = False
        self.thread = threading.Thread(target=self._run, name=f"gb-bridge-ring-{name}",
                                       daemon=True)

    def announce(self):
        from .bridge import WIRE_VERSION
        from . import _core
        r = self.ring
        return {"v": WIRE_VERSION, "op": "announce", "sid": self.sid, "kind": "ring",
                "maxsize": r.maxsize, "capacity": r.capacity, "max_bytes": r._slot_size,
                "serializer": self.serializer, "zid": self.bridge.zid,
                "layout": _core.LAYOUT_VERSION, "host": self.bridge.host}

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
                log.info("bridge: ring %r: importer %s asks for items", self.name, frm)
            if received > p.sent:
                raise BridgeError(f"credit for ring {self.name!r} acknowledges {received} "
                                  f"items; only {p.sent} were sent")
            p.granted = max(p.granted, granted)
            p.acked = max(p.acked, received)
            p.seen = time.monotonic()
            self.cond.notify()

    def _count_lost(self, n, why):
        if n > 0:
            self.stats.lost += n
            log.error("bridge: ring %r: %d item(s) lost: %s", self.name, n, why)

    def _settle(self, frm, msg):
        """Exact losses of killed bridges, from the importer's report."""
        prev = msg.get("prev_home")
        if isinstance(prev, dict) and prev.get("home") == self.prior_home \
                and frm in self.prior and isinstance(prev.get("received"), int):
            taken = self.prior.pop(frm)
            self._count_lost(taken - prev["received"],
                             f"taken by the killed home bridge {self.prior_home}, never "
                             f"delivered to {frm}")
            self.ledger.data["prior"] = dict(self.prior)
            self.ledger.save()
        prev = msg.get("prev_self")
        if isinstance(prev, dict) and isinstance(prev.get("from"), str) \
                and isinstance(prev.get("received"), int) and prev.get("home") == self.bridge.zid:
            p = self.peers.pop(prev["from"], None)
            if p is not None:
                self._count_lost(p.sent - prev["received"],
                                 f"sent to the killed importing bridge {prev['from']}, never "
                                 "put into its ring")
                self.ledger.data["peers"].pop(prev["from"], None)
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
        for zid, p in self.peers.items():
            if p.sent < p.granted and (best is None or p.sent - p.acked
                                       < self.peers[best].sent - self.peers[best].acked):
                best = zid
        return best

    def _run(self):
        from .bridge import PREFIX
        session = self.bridge._session
        z = self.bridge._zenoh
        pubs = {}
        try:
            while not self.stop.is_set():
                with self.cond:
                    zid = self._pick()
                    if zid is None:
                        self.cond.wait(0.05)
                        continue
                cnt = self.counters.get(zid)
                if cnt is None:
                    cnt = self.counters[zid] = _Counter(
                        f"{self.ledger.path[:-5]}.{self.bridge.zid}.{zid}")
                    self.ledger.data["peers"][zid] = cnt.path
                    self.ledger.save()
                try:
                    item = self.ring.get(timeout=0.05)
                    cnt.set(self.peers[zid].sent + 1 if zid in self.peers else 0)
                except Empty:
                    continue
                except (OSError, ValueError):  # the ring was closed under us
                    break
                with self.lock:
                    p = self.peers.get(zid)
                    if p is None:  # went silent meanwhile: the item is lost
                        self.stats.lost += 1
                        continue
                    k = p.sent
                    p.sent += 1
                pub = pubs.get(zid)
                if pub is None:
                    pub = pubs[zid] = session.declare_publisher(
                        f"{PREFIX}/{self.name}/item/{zid}",
                        congestion_control=z.CongestionControl.BLOCK,
                        reliability=z.Reliability.RELIABLE)
                data = encode_item(item, self.dumps)
                att = ITEM_HEADER.pack(ITEM_MAGIC, self.tag, k)
                pub.put(data, attachment=att)
                self.stats.items += 1
                self.stats.bytes += len(data) + len(att)
                self.bridge._count_out(len(data) + len(att))
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
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(5)
        try:
            self.ring.close()
        except Exception:
            pass


class RingImport:
    """The importing side of one far queue ring: a local ring of the same
    name, fed by credit."""

    def __init__(self, bridge, name, sid, ann, stats_cls, window=DEFAULT_WINDOW):
        from .ring import Ring
        self.bridge, self.name, self.sid = bridge, name, sid
        from .bridge import _sid_tag
        self.tag = _sid_tag(sid)
        self.kind = "ring"
        self.home = ann["zid"]
        self.window = window
        _, self.loads = _serializer(ann["serializer"])
        try:
            self.ring = Ring(ann["maxsize"], capacity=ann["capacity"], max_bytes=ann["max_bytes"],
                             serializer=ann["serializer"], name=name, mode=bridge.mode)
            self.created = True
        except BufferExists:
            self.ring = Ring.attach(name)  # BufferCorrupt if it is not a ring
            self.created = False
            if self.ring.broadcast:
                self.ring.close()
                raise BridgeError(f"far queue ring {name!r} clashes with a local broadcast "
                                  "ring of that name; nothing written")
        self.limit = ann["maxsize"] if ann["maxsize"] > 0 else ann["capacity"]
        self.stats = stats_cls("import", "ring", sid, peer=ann.get("host"))
        self.granted = self.received = 0
        self.next_k = 0
        self.gen = 0
        self.prev_home = None
        self.ledger = _Ledger(name, "import")
        old = self.ledger.old
        self.prev_self = None
        if old.get("sid") == sid and old.get("me") != bridge.zid:
            # a killed predecessor: tell the home what it put into the ring
            self.prev_self = {"from": old.get("me"), "home": old.get("home"),
                              "received": None}
        old_cnt = old.get("counter")
        if self.prev_self is not None:
            got = _Counter.read(old_cnt) if isinstance(old_cnt, str) else None
            if got is None:
                self.prev_self = None
            else:
                self.prev_self["received"] = got
                os.unlink(old_cnt)
        self.counter = _Counter(f"{self.ledger.path[:-5]}.{bridge.zid}")
        self.ledger.data = {"sid": sid, "me": bridge.zid, "home": self.home,
                            "counter": self.counter.path}
        self.ledger.save()
        self.inbox = queue.Queue()
        self.lock = threading.Lock()
        self.closed = False
        self.stop = threading.Event()
        self.last_credit = 0.0
        self.thread = threading.Thread(target=self._run, name=f"gb-bridge-ringin-{name}",
                                       daemon=True)
        self.thread.start()
        self.cthread = threading.Thread(target=self._credit_loop,
                                        name=f"gb-bridge-credit-{name}", daemon=True)
        self.cthread.start()

    def _credit_loop(self):
        while not self.stop.wait(0.005):
            try:
                self.credit()
            except Exception as e:
                if not self.stop.is_set():
                    log.error("bridge: ring %r: granting credit failed: %r", self.name, e)
                    self.stop.wait(0.5)

    def rehome(self, ann):
        """The home bridge restarted (a new instance): what it had in
        flight to us is lost; start a new pair."""
        with self.lock:
            log.warning("bridge: ring %r: home bridge %s replaced by %s; it had %d credit "
                        "unused or in flight (the home counts what it lost)", self.name,
                        self.home, ann["zid"], self.granted - self.next_k)
            self.prev_home = {"home": self.home, "received": self.next_k}
            self.home = ann["zid"]
            self.granted = self.next_k = self.received = 0
            self.gen += 1  # items still in the inbox belong to the old pair
            self.counter.set(0)
            self.ledger.data.update(home=self.home)
            self.ledger.save()

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
            if k >= self.granted:
                raise BridgeError(f"ring item {k} for {self.name!r} beyond the credit "
                                  f"granted ({self.granted}); dropped")
            item = decode_item(payload, self.loads)
            self.next_k += 1
            gen = self.gen
        self.inbox.put((gen, item))
        self.stats.bytes += len(payload) + len(att)

    def _run(self):
        while not self.stop.is_set():
            try:
                gen, item = self.inbox.get(timeout=0.05)
            except queue.Empty:
                continue
            while not self.stop.is_set():
                try:
                    self.ring.put(item, timeout=0.1)
                    if gen == self.gen:
                        self.counter.set(self.received + 1)
                    break
                except Full:
                    continue
            else:
                with self.lock:
                    self.stats.lost += 1  # stopped holding it
                return
            with self.lock:
                self.stats.items += 1
                if gen == self.gen:
                    self.received += 1

    def credit(self):
        """Grant what the local ring has room for (called often)."""
        from .bridge import PREFIX, WIRE_VERSION
        if self.closed:
            return
        q = self.ring.qsize()
        with self.lock:
            outstanding = self.granted - self.received
            want = 0
            if q < self.window:
                want = min(self.window, self.limit - q) - outstanding
            now = time.monotonic()
            if want <= 0 and now - self.last_credit < 0.5:
                return
            if want > 0:
                self.granted += want
            self.last_credit = now
            msg = {"v": WIRE_VERSION, "sid": self.sid, "to": self.home,
                   "from": self.bridge.zid, "granted": self.granted,
                   "received": self.received}
            if self.prev_home is not None:
                msg["prev_home"] = self.prev_home
            if self.prev_self is not None:
                msg["prev_self"] = self.prev_self
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
        try:
            self.ring.close()
            self.ring.join_thread()
        except Exception:
            pass


def try_export(bridge, name, stats_cls):
    """A RingExport for the queue ring ``name``, or None if it is not one
    this bridge can export."""
    from .ring import Ring
    try:
        ring = Ring.attach(name)
    except (BufferCorrupt, ValueError, TypeError) as e:
        log.debug("bridge: not exporting %r: %s", name, e)
        return None
    if ring.schema is not None:
        log.warning("bridge: ring %r is a typed ring; only object rings cross hosts yet",
                    name)
        ring.close()
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

BCAST_MAGIC = b"GBb1"


class BroadcastExport(RingExport):
    """A broadcast ring crosses like a stream: one handle of the bridge
    reads every item (from its own cursor) and publishes it once on
    ``gb/<name>/bdata``; each importing host puts it into its local
    broadcast ring, whose readers each read every item.  Items the
    bridge's handle missed (producers lapped it) count as ``lost``."""

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
                    item = self.ring.get(timeout=0.1)
                except Empty:
                    continue
                except (OSError, ValueError):
                    break
                data = encode_item(item, self.dumps)
                att = ITEM_HEADER.pack(BCAST_MAGIC, self.tag, k)
                k += 1
                pub.put(data, attachment=att)
                self.stats.items += 1
                self.stats.bytes += len(data) + len(att)
                self.bridge._count_out(len(data) + len(att))
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
        from .ring import Ring
        from .bridge import _sid_tag
        self.bridge, self.name, self.sid, self.tag = bridge, name, sid, _sid_tag(sid)
        self.kind = "ring"
        self.home = ann["zid"]
        _, self.loads = _serializer(ann["serializer"])
        try:
            self.ring = Ring(broadcast=True, capacity=ann["capacity"],
                             max_bytes=ann["max_bytes"], serializer=ann["serializer"],
                             name=name, mode=bridge.mode)
            self.created = True
        except BufferExists:
            self.ring = Ring.attach(name)
            self.created = False
            if not self.ring.broadcast:
                self.ring.close()
                raise BridgeError(f"far broadcast ring {name!r} clashes with a local queue "
                                  "ring of that name; nothing written")
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
        item = decode_item(payload, self.loads)
        with self.lock:
            if self.closed:
                return
            if self.next_k is not None and k > self.next_k:
                self.stats.lost += k - self.next_k
            self.next_k = k + 1
            self.ring.put(item)
            self.stats.items += 1
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
