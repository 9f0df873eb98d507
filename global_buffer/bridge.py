"""Across hosts (SPEC §9): the per-host bridge over Eclipse Zenoh.

One bridge runs on each host.  It exports the local streams whose names
match an ``--export`` glob and keeps, for every far stream whose name
matches an ``--import`` glob, a local *mirror*: a segment of the same name,
schema and capacity that far readers attach to with ``gb.attach`` as usual.
Zenoh carries the bytes (peer to peer, reliable TCP links, no broker);
scouting is off, so the only peers are the endpoints given, and Zenoh's own
shared-memory transport is off (the local path is ours).

Wire format (version ``WIRE_VERSION``), all under the key prefix ``gb/``:

``gb/<name>/ctl``
    UTF-8 JSON object, ``{"v": 1, "op": ..., "sid": ...}``.  ``sid`` names
    one writer's lifetime (host, pid, start time, creation time); a
    re-created stream has a new sid and is a new stream on every host.

    - ``op="announce"`` (every ``announce_interval`` seconds, and at once
      when a stream is first exported): ``kind`` ("array" or "message"),
      ``capacity``, ``slot_size``, ``meta`` (the segment's schema metadata
      as JSON text), ``hash`` (its 64-bit schema hash), ``layout`` (the
      core's segment layout version), ``host``.
    - ``op="hb"``: the writer stamped its heartbeat (sent when the exporting
      bridge sees the stamp change; the mirror then stamps its own).
    - ``op="gone"``: the writer closed or died; the mirror is closed (not
      unlinked), so far readers drain it and then see the writer gone.

``gb/<name>/data``
    Payload: one sample's bytes exactly as the segment stores them (an
    array's C-order bytes, or a message's msgpack).  Attachment:
    ``DATA_HEADER`` = magic ``b"GBd1"``, 8-byte sid tag, the writer's
    sequence number (u64, little endian).  Several samples already
    committed when the exporter looks travel in one message: magic
    ``b"GBd2"`` and their count in place of the sequence number; the
    payload is ``count`` x ``BATCH_ENTRY`` (u64 sequence number, u32
    length), then the samples' bytes back to back.

Delivery (streams): the exporting bridge reads the stream in order through
one ordinary reader and publishes each sample once on a reliable,
blocking-congestion Zenoh publisher, so a host costs one network copy
however many readers it has.  Samples that exporter's reader missed (it was
lapped) are skipped; with the core's ``_write_seq`` the mirror keeps the
writer's sequence numbers and the gap counts as far readers' ``overruns``.

Bad input from the wire (a name not imported, an unknown sid, an other wire
or layout version, a schema clash with a local segment, malformed JSON or a
truncated/oversized payload) is logged as a ``gb.BridgeError`` (or
``gb.SchemaMismatch``) on logger ``global_buffer.bridge``, counted in
``stats()["rejected"]``, and nothing is written to any local segment; the
bridge keeps serving every other name.
"""
import fnmatch
import hashlib
import json
import logging
import os
import socket
import struct
import threading
import time
from typing import Any

import numpy as np

from . import _core, bridge_rings
from .errors import BridgeError, BufferCorrupt, BufferExists, BufferNotFound, SchemaMismatch
from .schema import ArraySpec
from .segment import (
    Segment,
    list_names,
    process_alive,
    unlink as _unlink_name,
    validate_name,
)

__all__ = ["Bridge", "zenoh_config", "bridge_info", "WIRE_VERSION"]

log = logging.getLogger("global_buffer.bridge")

WIRE_VERSION = 1
PREFIX = "gb"
DATA_MAGIC = b"GBd1"
DATA_HEADER = struct.Struct("<4s8sQ")  # magic, sid tag, sequence number
BATCH_MAGIC = b"GBd2"                  # DATA_HEADER with the count in place of seq
BATCH_ENTRY = struct.Struct("<QI")     # each sample's sequence number and length
BATCH_MAX, BATCH_BYTES = 256, 1 << 20  # samples / bytes sent in one message at most
MAX_META = 1 << 20  # bytes of schema metadata an announce may carry
MAX_SLOT = 1 << 32  # largest slot a far announce may ask this host to allocate
ALIVE_WINDOW = 2.0  # as streams: a heartbeat older than this reads as dead


def _import_zenoh():
    try:
        import zenoh
    except ImportError as e:
        raise ImportError(
            "the global_buffer bridge needs Eclipse Zenoh, which is an optional extra: "
            "pip install 'global_buffer[zenoh]' (or pip install eclipse-zenoh)") from e
    return zenoh


def zenoh_config(listen=(), connect=(), config_file=None):
    """A ``zenoh.Config`` for a bridge: peer mode, scouting (multicast and
    gossip) off, Zenoh's shared-memory transport off, and exactly the
    endpoints given.  ``config_file`` (JSON5, Zenoh's format) is loaded
    first, so TLS/mTLS and other transport settings pass through; the
    settings above then override it.  Endpoints given here replace the
    file's; without any, the file's stay (none if no file)."""
    zenoh = _import_zenoh()
    conf = zenoh.Config.from_file(str(config_file)) if config_file else zenoh.Config()
    conf.insert_json5("mode", '"peer"')
    conf.insert_json5("scouting/multicast/enabled", "false")
    conf.insert_json5("scouting/gossip/enabled", "false")
    conf.insert_json5("transport/shared_memory/enabled", "false")
    if listen or not config_file:
        conf.insert_json5("listen/endpoints", json.dumps(list(listen)))
    if connect or not config_file:
        conf.insert_json5("connect/endpoints", json.dumps(list(connect)))
    # a restarted peer is found again within ~0.2 s, not the default 1 s
    conf.insert_json5("connect/retry",
                      '{"period_init_ms": 100, "period_max_ms": 1000, "period_increase_factor": 2}')
    return conf


STATE_DIR = "/dev/shm"  # host-local: what `ls`/`stat` read of running bridges


def _state_path(pid):
    return os.path.join(STATE_DIR, f"gbbridge.{pid}.state.json")


def bridge_info(name):
    """What a running bridge on this host says about ``name`` (for
    ``python -m global_buffer ls``/``stat``): a dict with ``bridge_pid``,
    ``role`` ("import": a mirror; "export"), ``peer`` (the source host of a
    mirror), ``link`` ("up"/"down"), ``state``, ``items``, ``bytes`` and
    ``lost``; None if no live bridge handles the name."""
    import glob

    from .segment import process_alive
    for path in glob.glob(os.path.join(STATE_DIR, "gbbridge.*.state.json")):
        try:
            pid = int(os.path.basename(path).split(".")[1])
            if not process_alive(pid):
                continue
            with open(path) as f:
                st = json.load(f)
            entry = st["names"].get(name)
        except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
            continue
        if isinstance(entry, dict):
            return {"bridge_pid": pid, "role": entry.get("role"), "peer": entry.get("peer"),
                    "link": "up" if st.get("peers") else "down",
                    "state": entry.get("state"), "items": entry.get("items"),
                    "bytes": entry.get("bytes"), "lost": entry.get("lost")}
    return None


def _sid_tag(sid):
    return hashlib.blake2b(sid.encode(), digest_size=8).digest()


def _meta_hash(meta):
    from .stream import _meta_hash as h
    return h(meta)


def _matches(name, globs):
    return any(fnmatch.fnmatchcase(name, g) for g in globs)


class _Stats:
    """Counters of one name on this bridge (what ``stats()`` reports)."""

    __slots__ = ("role", "kind", "sid", "items", "bytes", "lost", "state", "peer")

    def __init__(self, role, kind, sid, peer=None):
        self.role, self.kind, self.sid, self.peer = role, kind, sid, peer
        self.items = self.bytes = self.lost = 0
        self.state = "up"

    def as_dict(self):
        return {k: getattr(self, k) for k in self.__slots__}


class _Export:
    """One exported stream: a reader thread that publishes every sample."""

    def __init__(self, bridge, name):
        from .stream import attach
        self.bridge = bridge
        self.name = name
        r = attach(name)
        self.reader = r
        try:
            from .schema import decode_meta
            self.meta_raw = bytes(r._meta)
            self.meta = decode_meta(self.meta_raw)
            self.kind = self.meta["kind"]
            if self.kind == "message":
                r._setup_reader(None, False)  # raw msgpack bytes, no decoding
            pid, start = r._writer
            self.writer = (pid, start)
            self.sid = f"{bridge.host}:{pid}:{start}:{r._created_ns}"
            self.tag = _sid_tag(self.sid)
            self.capacity = r.capacity
            self.slot_size = r._slot_size
            self.hash = r._schema_hash
            self.last_hb = r._heartbeat_ns
        except BaseException:
            r.close()
            raise
        self.stats = _Stats("export", self.kind, self.sid)
        self.gone = False
        self.stop = threading.Event()
        # a peer asked for announces (it started, or the link came up late):
        # send the latest sample again once caught up, so that its new
        # mirror's latest() has it (a mirror drops a sample it already has)
        self.resend = False
        key = f"{PREFIX}/{name}/data"
        z = bridge._zenoh
        self.pub = bridge._session.declare_publisher(
            key, congestion_control=z.CongestionControl.BLOCK,
            reliability=z.Reliability.RELIABLE)
        self.thread = threading.Thread(target=self._run, name=f"gb-bridge-export-{name}",
                                       daemon=True)

    def announce(self):
        return {"v": WIRE_VERSION, "op": "announce", "sid": self.sid, "kind": self.kind,
                "capacity": self.capacity, "slot_size": self.slot_size,
                "meta": self.meta_raw.decode(), "hash": self.hash,
                "layout": _core.LAYOUT_VERSION if hasattr(_core, "LAYOUT_VERSION") else 0,
                "host": self.bridge.host}

    def _send(self, sample, seq):
        payload = sample if isinstance(sample, bytes) else memoryview(sample).cast("B")
        att = DATA_HEADER.pack(DATA_MAGIC, self.tag, seq)
        self.pub.put(bytes(payload), attachment=att)
        n = len(payload) + len(att)
        st = self.stats
        st.items += 1
        st.bytes += n
        self.bridge._count_out(n)

    def _send_batch(self, batch):
        parts = [b"".join(BATCH_ENTRY.pack(seq, len(p)) for p, seq in batch)]
        parts += [p for p, _ in batch]
        payload = b"".join(parts)
        att = DATA_HEADER.pack(BATCH_MAGIC, self.tag, len(batch))
        self.pub.put(payload, attachment=att)
        n = len(payload) + len(att)
        st = self.stats
        st.items += len(batch)
        st.bytes += n
        self.bridge._count_out(n)

    def _run(self):
        r = self.reader
        gone = False
        try:
            sample, seq = r._latest_seq()
            if sample is not None:  # far latest() has something at once
                self._send(sample, seq)
                r._cursor = seq + 1
            while not self.stop.is_set() and not gone:
                before = r.overruns
                batch, size = [], 0
                try:
                    sample, seq = r._next_seq(0.1)
                    batch.append((bytes(memoryview(sample).cast("B")), seq))
                    size = len(batch[0][0])
                    # what else is committed already goes in the same message
                    while len(batch) < BATCH_MAX and size < BATCH_BYTES:
                        sample, seq = r._next_seq(0)
                        batch.append((bytes(memoryview(sample).cast("B")), seq))
                        size += len(batch[-1][0])
                except Exception as e:
                    if type(e).__name__ == "WriterGone":
                        gone = True
                    elif type(e).__name__ != "Empty":
                        raise
                if r.overruns != before:
                    self.stats.lost += r.overruns - before
                if len(batch) == 1:
                    self._send(*batch[0])
                elif batch:
                    self._send_batch(batch)
                elif self.resend:  # caught up: the latest sample was sent already
                    self.resend = False
                    sample, seq = r._latest_seq()
                    if sample is not None and seq < r._cursor:
                        self._send(sample, seq)
        except Exception as e:
            if not self.stop.is_set():
                log.error("bridge: exporting %r stopped: %r", self.name, e)
        finally:
            self.stop.set()

    def poll(self):
        """From the service thread: heartbeats and writer death."""
        r = self.reader
        if r.closed:
            return
        hb = r._heartbeat_ns
        # gone: closed (the core clears the writer) or its process died; an
        # idle writer whose heartbeat is old is not gone (far readers see
        # writer_alive False as local ones do, until it writes again)
        pid, start = r._writer
        if not pid or not process_alive(pid, start):
            self.gone = True
            return
        if hb != self.last_hb:
            self.last_hb = hb
            self.bridge._ctl(self.name, {"v": WIRE_VERSION, "op": "hb", "sid": self.sid})

    def close(self):
        self.stop.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(5)
        try:
            self.pub.undeclare()
        except Exception:
            pass
        self.reader.close()


class _Mirror:
    """The local mirror of one far stream (this bridge is its writer)."""

    def __init__(self, bridge, name, sid, ann):
        self.name, self.sid, self.tag = name, sid, _sid_tag(sid)
        self.kind = ann["kind"]
        self.lock = threading.Lock()
        self.stats = _Stats("import", self.kind, sid, peer=ann.get("host"))
        self.closed = False
        self.spec = ann["_spec"]
        self.slot_size = ann["slot_size"]
        self.writer = _make_mirror(name, ann, bridge.mode)
        self.write_seq = getattr(self.writer, "_write_seq", None)
        self.next_seq = 0
        self.last_hb = time.monotonic()

    def write(self, payload, seq):
        with self.lock:
            if self.closed:
                return False
            if self.write_seq is not None:
                # the writer's own numbers; a gap counts as far readers'
                # overruns, a repeat (a restarted exporter re-sends its
                # latest sample) is dropped
                if seq < self.next_seq:
                    return False
                self.write_seq(payload, seq)
                self.next_seq = seq + 1
                return True
            if self.spec is not None:
                payload = np.frombuffer(payload, dtype=self.spec.dtype).reshape(self.spec.shape)
            self.writer.write(payload)
            return True

    def heartbeat(self):
        with self.lock:
            if not self.closed:
                self.writer.heartbeat()
                self.last_hb = time.monotonic()

    def close(self, unlink=False):
        with self.lock:
            if self.closed:
                return
            self.closed = True
            self.stats.state = "gone"
            if unlink:
                _unlink_name(self.name)
            self.writer.close()


def _make_mirror(name, ann, mode):
    """Create the mirror segment of a far stream from its (validated)
    announce; return its writer (a ``gb.GlobalBuffer``)."""
    from .stream import _new_writer
    kind = _core.KIND_ARRAY if ann["kind"] == "array" else _core.KIND_MESSAGE
    spec = ann["_spec"]
    schema = spec if spec is not None else ann["_meta"].get("schema")
    # message mirrors store the far writer's msgpack bytes as they are
    return _new_writer(name, kind, ann["capacity"], ann["slot_size"], ann["meta"].encode(),
                       ann["hash"], schema, spec, 0.1, None if spec is not None else bytes,
                       mode)


def _check_announce(name, msg):
    """Validate a far announce; return it with ``_spec``/``_meta`` added.
    Raises BridgeError on anything malformed."""
    def need(key, typ):
        v = msg.get(key)
        if not isinstance(v, typ) or isinstance(v, bool):
            raise BridgeError(f"announce of {name!r}: field {key!r} missing or not "
                              f"{typ.__name__}")
        return v
    kind = need("kind", str)
    if kind not in ("array", "message"):
        raise BridgeError(f"announce of {name!r}: unknown kind {kind!r}")
    cap = need("capacity", int)
    slot = need("slot_size", int)
    h = need("hash", int)
    meta_txt = need("meta", str)
    layout = msg.get("layout", 0)
    mine = getattr(_core, "LAYOUT_VERSION", 0)
    if layout != mine:
        raise BridgeError(f"announce of {name!r}: peer speaks segment layout version "
                          f"{layout!r}, this host {mine}")
    if not 1 <= cap <= 1 << 24:
        raise BridgeError(f"announce of {name!r}: capacity {cap} out of range")
    if not 1 <= slot <= MAX_SLOT:
        raise BridgeError(f"announce of {name!r}: slot size {slot} out of range")
    if len(meta_txt) > MAX_META:
        raise BridgeError(f"announce of {name!r}: metadata too large")
    try:
        meta = json.loads(meta_txt)
        ok = isinstance(meta, dict) and meta.get("kind") == kind and _meta_hash(meta) == h
    except Exception:
        raise BridgeError(f"announce of {name!r}: unreadable schema metadata") from None
    if not ok:
        raise BridgeError(f"announce of {name!r}: schema metadata does not match its "
                          "kind or hash")
    spec = None
    if kind == "array":
        try:
            spec = ArraySpec.from_json(meta)
        except Exception as e:
            raise BridgeError(f"announce of {name!r}: bad array schema: {e}") from None
        if spec.nbytes != slot:
            raise BridgeError(f"announce of {name!r}: slot size {slot} is not the "
                              f"sample size {spec.nbytes}")
    if not 0 <= h < 1 << 64:
        raise BridgeError(f"announce of {name!r}: bad schema hash")
    return dict(msg, _spec=spec, _meta=meta)


class Bridge:
    """This host's bridge to other hosts over Zenoh (SPEC §9).

    Exports the local streams whose names match ``exports`` (globs) and
    mirrors the far streams whose names match ``imports``.  Runs on
    background threads from ``start()`` (or ``with``) until ``close()``.

    Parameters
    ----------
    listen, connect : list of str
        Zenoh endpoints (``"tcp/127.0.0.1:7447"``) to listen on and to
        connect to.  Scouting is off: these are the only peers.
    exports, imports : list of str
        Shell globs of names that may leave this host / be written here.
        Nothing is exported or imported by default.
    zenoh_config : str or path, optional
        A Zenoh JSON5 config file (TLS/mTLS, ...), loaded first.
    mode : int
        Permissions of mirror segments (default ``0o600``).
    announce_interval : float
        Seconds between announces of each exported stream.
    """

    def __init__(self, listen=(), connect=(), exports=(), imports=(), *, zenoh_config=None,
                 mode=0o600, announce_interval=0.5, scan_interval=0.2):
        self._zenoh = _import_zenoh()
        for what, v in (("listen", listen), ("connect", connect), ("exports", exports),
                        ("imports", imports)):
            if isinstance(v, str):
                raise TypeError(f"{what} must be a list of strings, not one string")
        self.listen = list(listen)
        self.connect = list(connect)
        self.exports = list(exports)
        self.imports = list(imports)
        self.config_file = zenoh_config
        self.mode = mode
        self.announce_interval = float(announce_interval)
        self.scan_interval = float(scan_interval)
        self.host = socket.gethostname()
        self._session: Any = None
        self._lock = threading.RLock()
        # Zenoh calls back on several threads: an announce published on the
        # ctl key and the reply to this bridge's own query can arrive at once.
        # Opening a mirror (or replacing a stale one) is done under this lock,
        # so two threads never both replace a stale copy: the second would
        # unlink the first's new segment and leave a mirror nobody reads.
        self._open_lock = threading.Lock()
        self._exports = {}   # name -> _Export
        self._ended = {}     # name -> _Stats of its last finished export
        self._done = set()   # sids exported and finished (writer gone)
        self._skip = {}      # name -> monotonic time before which not to retry
        self._mirrors = {}   # name -> _Mirror
        self._refused = {}   # name -> (sid, reason): far streams refused here
        self._gone = set()   # far sids whose writer is gone
        self._warned = {}    # (name, reason) -> last log time (rate limit)
        self._asked = {}     # name -> when an announce was last asked for
        self._bytes_in = self._bytes_out = 0
        self._items_in = 0
        self._rejected = 0
        self._stop = threading.Event()
        self._thread = None
        self._sub = None

    # -- lifecycle -------------------------------------------------------

    def start(self):
        """Open the Zenoh session and start serving; returns self."""
        if self._thread is not None:
            raise RuntimeError("bridge already started")
        conf = zenoh_config(self.listen, self.connect, self.config_file)
        self._session = self._zenoh.open(conf)
        self.zid = str(self._session.zid())
        log.info("bridge %s on %s: listen %s, connect %s, export %s, import %s",
                 self.zid, self.host, self.listen, self.connect, self.exports, self.imports)
        if self.imports or self.exports:
            self._sub = self._session.declare_subscriber(
                f"{PREFIX}/**", self._on_sample,
                allowed_origin=self._zenoh.Locality.REMOTE)
        self._queryable = None
        if self.exports:
            self._queryable = self._session.declare_queryable(
                f"{PREFIX}/*/announce", self._on_query)
        self._thread = threading.Thread(target=self._serve, name="gb-bridge", daemon=True)
        self._thread.start()
        if self.imports:
            self._ask(f"{PREFIX}/*/announce")
        return self

    def close(self):
        """Stop serving: exporters end, mirrors are closed and removed (far
        readers already attached keep their mapping), the session closes."""
        if self._thread is None or self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(10)
        for decl in (self._sub, self._queryable):
            if decl is not None:
                try:
                    decl.undeclare()
                except Exception:
                    pass
        with self._lock:
            exports, self._exports = list(self._exports.values()), {}
            mirrors, self._mirrors = list(self._mirrors.values()), {}
        for e in exports:
            e.close()
        for m in mirrors:
            m.close(unlink=True)
        try:
            self._session.close()
        except Exception:
            pass
        try:
            os.unlink(_state_path(os.getpid()))
        except OSError:
            pass
        log.info("bridge %s stopped", self.zid)

    def __enter__(self):
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.close()

    # -- introspection ---------------------------------------------------

    def stats(self):
        """Counters: link bytes and items in/out, rejected inputs, and per
        name its role, kind, sid, items, bytes, lost and state."""
        with self._lock:
            names = {n: st.as_dict() for n, st in self._ended.items()}
            names.update({n: e.stats.as_dict() for n, e in self._exports.items()})
            names.update({n: m.stats.as_dict() for n, m in self._mirrors.items()})
            try:
                peers = [str(z) for z in self._session.info.peers_zid()]
            except Exception:  # not started, or closed
                peers = []
            return {"bytes_in": self._bytes_in, "bytes_out": self._bytes_out,
                    "items_in": self._items_in, "rejected": self._rejected,
                    "peers": peers, "names": names,
                    "refused": {n: r for n, (s, r) in self._refused.items()}}

    # -- helpers ---------------------------------------------------------

    def _count_out(self, n):
        with self._lock:
            self._bytes_out += n

    def _ctl(self, name, msg):
        data = json.dumps(msg, separators=(",", ":")).encode()
        self._session.put(f"{PREFIX}/{name}/ctl", data)
        self._count_out(len(data))

    def _reject(self, name, err, key=None, every=5.0):
        """Log a bad input (at most once per ``every`` seconds per name and
        reason) and count it."""
        with self._lock:
            self._rejected += 1
        k = (name, key or str(err))
        now = time.monotonic()
        if now - self._warned.get(k, -1e9) >= every:
            self._warned[k] = now
            log.error("bridge: %s: %s", type(err).__name__, err)

    def _on_query(self, query):
        """A peer asks for announces (it just started, or got data for a
        stream it has not seen announced): answer for each export."""
        try:
            with self._lock:
                exports = list(self._exports.items())
            for name, e in exports:
                key = f"{PREFIX}/{name}/announce"
                if query.key_expr.intersects(self._zenoh.KeyExpr(key)):
                    data = json.dumps(e.announce(), separators=(",", ":")).encode()
                    query.reply(key, data)
                    self._count_out(len(data))
                    if isinstance(e, _Export):
                        e.resend = True
        except Exception:
            log.exception("bridge: answering an announce query failed")

    def _ask(self, selector):
        """Ask exporting peers for announces now (answers arrive on Zenoh's
        threads and are handled like announces on the ``ctl`` keys)."""
        def on_reply(reply):
            try:
                ok = reply.ok
                if ok is None:
                    return
                parts = str(ok.key_expr).split("/")
                if len(parts) == 3 and parts[2] == "announce":
                    self._on_sample(ok, what="ctl")
            except Exception:
                log.exception("bridge: handling an announce reply failed")
        try:
            self._session.get(selector, on_reply, timeout=2.0)
        except Exception as e:
            log.debug("bridge: announce query failed: %r", e)

    # -- the service thread ----------------------------------------------

    def _write_state(self):
        path = _state_path(os.getpid())
        tmp = f"{path}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(self.stats(), f)
            os.replace(tmp, path)
        except OSError:
            pass  # no /dev/shm (not Linux): ls/stat just show no bridge

    def _serve(self):
        next_ann = next_state = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() >= next_state:
                    next_state = time.monotonic() + 0.5
                    self._write_state()
                self._scan()
                now = time.monotonic()
                announce = now >= next_ann
                if announce:
                    next_ann = now + self.announce_interval
                for name, e in list(self._exports.items()):
                    e.poll()
                    if e.gone or e.stop.is_set():
                        self._end_export(name, e)
                    elif announce:
                        self._ctl(name, e.announce())
                for m in list(self._mirrors.values()):
                    if isinstance(m, _Mirror) and not m.closed \
                            and time.monotonic() - m.last_hb > ALIVE_WINDOW:
                        m.stats.state = "stale"
            except Exception:
                log.exception("bridge: service loop error")
            self._stop.wait(self.scan_interval)

    def _end_export(self, name, e):
        log.info("bridge: writer of %r gone; telling peers", name)
        self._ctl(name, {"v": WIRE_VERSION, "op": "gone", "sid": e.sid})
        e.stats.state = "gone"
        with self._lock:
            self._exports.pop(name, None)
            self._done.add(e.sid)
            self._ended[name] = e.stats
        e.close()

    def _scan(self):
        if not self.exports:
            return
        now = time.monotonic()
        mirrors = set(self._mirrors)
        for name in list_names():
            if name in self._exports or name in mirrors or not _matches(name, self.exports):
                continue
            if self._skip.get(name, 0) > now:
                continue
            try:
                e = _Export(self, name)
            except BufferCorrupt:
                e = bridge_rings.try_export(self, name, _Stats)  # a queue ring?
                if e is None:
                    self._skip[name] = now + 2.0
                    continue
            except (BufferNotFound, SchemaMismatch, ValueError) as err:
                # a segment being created, or garbage: look again later
                self._skip[name] = now + 2.0
                log.debug("bridge: not exporting %r: %s", name, err)
                continue
            if e.sid in self._done or (e.kind != "ring" and not (
                    e.writer[0] and process_alive(*e.writer))):
                e.close()
                self._skip[name] = now + 1.0
                continue
            with self._lock:
                self._exports[name] = e
            if e.kind == "ring":
                log.info("bridge: exporting %s ring %r (capacity %d)",
                         "broadcast" if isinstance(e, bridge_rings.BroadcastExport) else "queue",
                         name, e.capacity)
            else:
                log.info("bridge: exporting stream %r (%s, capacity %d, %d-byte slots)",
                         name, e.kind, e.capacity, e.slot_size)
            self._ctl(name, e.announce())  # before any data, which needs the mirror
            (e.start if hasattr(e, "start") else e.thread.start)()

    # -- the importing side (Zenoh's callback thread) --------------------

    def _on_sample(self, sample, what=None):
        try:
            key = str(sample.key_expr)
            parts = key.split("/")
            if len(parts) == 4 and parts[2] in ("item", "up") and parts[0] == PREFIX:
                if parts[3] != self.zid:
                    return  # another host's ring items
            elif len(parts) != 3 or parts[0] != PREFIX:
                raise BridgeError(f"unexpected key {key!r} in the bridge's key space")
            name, what = parts[1], what or parts[2]
            try:
                validate_name(name)
            except (TypeError, ValueError):
                raise BridgeError(f"invalid stream name in key {key!r}") from None
            if what == "credit":
                self._on_credit(name, sample.payload.to_bytes())
                return
            if what == "up":
                with self._lock:
                    e = self._exports.get(name)
                if not isinstance(e, bridge_rings.RingExport):
                    raise BridgeError(f"ring item sent up for {name!r}, which is not a ring "
                                      "exported here; dropped")
                att = sample.attachment
                e.on_up(sample.payload.to_bytes(), att.to_bytes() if att is not None else b"")
                return
            if not _matches(name, self.imports):
                if not self.imports:
                    return  # an export-only bridge hears its peers' traffic too
                self._reject(name, BridgeError(f"{name!r} is not imported here (--import "
                                               f"{' '.join(self.imports)}); ignored"),
                             key="unimported", every=3600.0)
                return
            payload = sample.payload.to_bytes()
            with self._lock:
                self._bytes_in += len(payload)
            if what == "ctl":
                self._on_ctl(name, payload)
            elif what == "data":
                att = sample.attachment
                self._on_data(name, payload, att.to_bytes() if att is not None else b"")
            elif what == "upcredit":
                with self._lock:
                    m = self._mirrors.get(name)
                if isinstance(m, bridge_rings.RingImport) and not m.closed:
                    try:
                        msg = json.loads(payload.decode())
                    except Exception:
                        raise BridgeError(f"malformed up-credit for {name!r}") from None
                    if isinstance(msg, dict) and msg.get("to") == self.zid \
                            and msg.get("sid") == m.sid:
                        m.on_upcredit(msg)
            elif what in ("item", "bdata"):
                att = sample.attachment
                with self._lock:
                    m = self._mirrors.get(name)
                want = bridge_rings.RingImport if what == "item" else bridge_rings.BroadcastImport
                if not isinstance(m, want) or m.closed:
                    raise BridgeError(f"ring item for {name!r}, which is not a ring "
                                      "imported here; dropped")
                m.on_item(payload, att.to_bytes() if att is not None else b"")
            else:
                raise BridgeError(f"unexpected key {key!r} in the bridge's key space")
        except (BridgeError, SchemaMismatch) as e:
            self._reject(getattr(e, "name", None) or "?", e)
        except Exception as e:  # never let a bad sample kill the callback
            self._reject("?", BridgeError(f"failed to handle a sample: {e!r}"))

    def _on_ctl(self, name, payload):
        try:
            msg = json.loads(payload.decode())
        except Exception:
            raise BridgeError(f"malformed control message for {name!r} "
                              f"({len(payload)} bytes)") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("sid"), str):
            raise BridgeError(f"malformed control message for {name!r}")
        if msg.get("v") != WIRE_VERSION:
            raise BridgeError(f"control message for {name!r} in wire version "
                              f"{msg.get('v')!r}; this bridge speaks {WIRE_VERSION}")
        op, sid = msg.get("op"), msg["sid"]
        if op == "announce":
            with self._open_lock:
                with self._lock:
                    m = self._mirrors.get(name)
                if msg.get("kind") == "ring":
                    self._open_ring(name, sid, msg, m)
                    return
                if sid in self._gone or (m is not None and m.sid == sid):
                    return
                refused = self._refused.get(name)
                if refused is not None and refused[0] == sid:
                    return
                self._open_mirror(name, sid, msg, m)
            return
        with self._lock:
            m = self._mirrors.get(name)
        if op == "hb":
            if m is not None and m.sid == sid:
                m.heartbeat()
        elif op == "gone":
            self._gone.add(sid)
            if m is not None and m.sid == sid:
                log.info("bridge: far writer of %r gone; mirror closed", name)
                m.close()
        else:
            raise BridgeError(f"unknown control op {op!r} for {name!r}")

    def _on_credit(self, name, payload):
        with self._lock:
            e = self._exports.get(name)
        try:
            msg = json.loads(payload.decode())
        except Exception:
            raise BridgeError(f"malformed credit message for {name!r}") from None
        if not isinstance(msg, dict) or msg.get("v") != WIRE_VERSION:
            raise BridgeError(f"malformed credit message for {name!r}")
        if not isinstance(e, bridge_rings.RingExport) or msg.get("sid") != e.sid \
                or msg.get("to") != self.zid:
            return  # for another home, or an old instance of this one
        e.on_credit(msg)

    def _open_ring(self, name, sid, msg, old):
        if old is not None and old.sid == sid:
            if isinstance(old, (bridge_rings.RingImport, bridge_rings.BroadcastImport)) \
                    and msg.get("zid") != old.home and isinstance(msg.get("zid"), str):
                old.rehome(msg)
            return
        refused = self._refused.get(name)
        if refused is not None and refused[0] == sid:
            return
        def need(key, typ):
            v = msg.get(key)
            if not isinstance(v, typ) or isinstance(v, bool):
                self._refused[name] = (sid, "bad announce")
                raise BridgeError(f"announce of ring {name!r}: field {key!r} missing or "
                                  f"not {typ.__name__}")
            return v
        maxsize, cap, slot = need("maxsize", int), need("capacity", int), need("max_bytes", int)
        need("zid", str)
        if msg.get("serializer") not in ("pickle", "cloudpickle") or not 1 <= cap <= 1 << 24 \
                or not 1 <= slot <= MAX_SLOT or maxsize > 1 << 24 \
                or msg.get("layout") != _core.LAYOUT_VERSION:
            self._refused[name] = (sid, "bad announce")
            raise BridgeError(f"announce of ring {name!r}: unsupported settings or layout")
        try:
            bridge_rings.announced_spec(msg)  # a typed ring's schema
            bridge_rings.announced_message(msg)  # a message ring's
        except BridgeError as e:
            self._refused[name] = (sid, "bad announce")
            raise BridgeError(f"announce of ring {name!r}: {e}") from None
        if old is not None:
            old.close(unlink=True)
            with self._lock:
                self._mirrors.pop(name, None)
        m: Any
        try:
            if msg.get("broadcast") is True:
                m = bridge_rings.BroadcastImport(self, name, sid, msg, _Stats)
            else:
                m = bridge_rings.RingImport(self, name, sid, msg, _Stats)
        except SchemaMismatch:
            self._refused[name] = (sid, "clash")
            raise
        except (BridgeError, BufferCorrupt) as e:
            self._refused[name] = (sid, "clash")
            raise BridgeError(f"far ring {name!r}: {e}") from None
        with self._lock:
            self._mirrors[name] = m
        log.info("bridge: sharing %s ring %r with %s (capacity %d, %s local ring)",
                 "broadcast" if msg.get("broadcast") is True else "queue", name,
                 msg.get("host"), cap, "new" if m.created else "existing")

    def _open_mirror(self, name, sid, msg, old):
        try:
            ann = _check_announce(name, msg)
        except BridgeError:
            self._refused[name] = (sid, "bad announce")
            raise
        if old is not None:  # the far writer re-created the stream
            log.info("bridge: %r re-created far away; replacing its mirror", name)
            old.close(unlink=True)
            with self._lock:
                self._mirrors.pop(name, None)
        try:
            m = _Mirror(self, name, sid, ann)
        except BufferExists:
            self._check_local(name, sid, ann)
            m = _Mirror(self, name, sid, ann)  # the dead local copy was removed
        with self._lock:
            self._mirrors[name] = m
            self._refused.pop(name, None)
        log.info("bridge: mirroring %r from %s (%s, capacity %d)", name, ann.get("host"),
                 ann["kind"], ann["capacity"])

    def _check_local(self, name, sid, ann):
        """A segment of this name exists here: refuse a clash; replace a
        stale copy of the same stream (its writer is dead)."""
        def refuse(err, reason):
            self._refused[name] = (sid, reason)
            raise err
        try:
            seg = Segment.attach(name)
        except BufferNotFound:
            return
        from .stream import Reader
        r = Reader()
        try:
            r._map(seg, f"segment {name!r}")
            kind = {_core.KIND_ARRAY: "array", _core.KIND_MESSAGE: "message"}.get(r._kind)
            same = (kind == ann["kind"] and not r._flags & _core.FLAG_QUEUE
                    and r._schema_hash == ann["hash"] and r.capacity == ann["capacity"]
                    and r._slot_size == ann["slot_size"])
            if not same:
                refuse(SchemaMismatch(
                    f"far stream {name!r} ({ann['kind']}, capacity {ann['capacity']}, "
                    f"schema hash {ann['hash']:#x}) clashes with the local segment of that "
                    "name; nothing written"), "schema clash")
            pid, start = r._writer
            age = (_core.now_ns() - r._heartbeat_ns) / 1e9
            if process_alive(pid, start) and age <= ALIVE_WINDOW:
                refuse(BridgeError(f"far stream {name!r}: a local writer (pid {pid}) owns "
                                   "that name here; nothing written"), "local writer")
        except BaseException:
            r._unbind()
            seg.close()
            raise
        r._unbind()
        seg.close()
        log.info("bridge: replacing the stale local copy of %r (writer gone)", name)
        _unlink_name(name)

    def _mirror_for(self, name, tag):
        """The mirror data with sid ``tag`` goes to, or None (then the data
        is dropped: not announced yet, which asks for the announce)."""
        with self._lock:
            m = self._mirrors.get(name)
        if m is None or m.tag != tag or m.closed:
            refused = self._refused.get(name)
            if refused is None and (m is None or m.tag != tag):
                # not announced yet (this bridge or the link just started):
                # ask for the announce; the sample itself is lost
                now = time.monotonic()
                if now - self._asked.get(name, -1e9) > 0.5:
                    self._asked[name] = now
                    log.debug("bridge: data for %r before its announce; asking", name)
                    self._ask(f"{PREFIX}/{name}/announce")
                return None
            why = f" ({refused[1]})" if refused else " (its writer is gone)"
            raise BridgeError(f"data for {name!r} from a stream not mirrored here{why}; "
                              "dropped")
        return m

    def _check_sample(self, name, m, payload):
        """BridgeError unless ``payload`` is a sample ``m`` can hold."""
        if m.spec is not None:
            if len(payload) != m.slot_size:
                raise BridgeError(f"data for {name!r}: {len(payload)} bytes, a sample is "
                                  f"{m.slot_size}; dropped")
        else:
            if not 0 < len(payload) <= m.slot_size:
                raise BridgeError(f"data for {name!r}: {len(payload)} bytes, slots hold "
                                  f"{m.slot_size}; dropped")
            try:
                import msgspec
                msgspec.msgpack.decode(payload)
            except Exception:
                raise BridgeError(f"data for {name!r}: not a msgpack message; dropped") \
                    from None

    def _on_data(self, name, payload, att):
        if len(att) != DATA_HEADER.size:
            raise BridgeError(f"data for {name!r} with a {len(att)}-byte header "
                              f"(expected {DATA_HEADER.size}); dropped")
        magic, tag, seq = DATA_HEADER.unpack(att)
        if magic == BATCH_MAGIC:
            self._on_batch(name, payload, att, tag, seq)
            return
        if magic != DATA_MAGIC:
            raise BridgeError(f"data for {name!r} with bad magic {magic!r}; dropped")
        m = self._mirror_for(name, tag)
        if m is None:
            return
        self._check_sample(name, m, payload)
        if m.write(payload, seq):
            st = m.stats
            st.items += 1
            st.bytes += len(payload) + len(att)
            with self._lock:
                self._items_in += 1

    def _on_batch(self, name, payload, att, tag, count):
        """Several samples in one message: all are checked before any is
        written, so a malformed batch writes nothing."""
        if not 1 <= count <= BATCH_MAX or len(payload) < count * BATCH_ENTRY.size:
            raise BridgeError(f"data for {name!r}: a batch of {count} samples in "
                              f"{len(payload)} bytes; dropped")
        m = self._mirror_for(name, tag)
        if m is None:
            return
        mv = memoryview(payload)
        off = count * BATCH_ENTRY.size
        samples = []
        for i in range(count):
            seq, n = BATCH_ENTRY.unpack_from(mv, i * BATCH_ENTRY.size)
            if off + n > len(mv):
                raise BridgeError(f"data for {name!r}: a truncated batch; dropped")
            samples.append((bytes(mv[off:off + n]), seq))
            off += n
        if off != len(mv):
            raise BridgeError(f"data for {name!r}: {len(mv) - off} stray bytes after a batch; "
                              "dropped")
        for sample, _ in samples:
            self._check_sample(name, m, sample)
        written = sum(1 for sample, seq in samples if m.write(sample, seq))
        st = m.stats
        st.items += written
        st.bytes += len(payload) + len(att)
        with self._lock:
            self._items_in += written

