"""Rings (SPEC §3.1): ``multiprocessing.Queue``'s API on the shared ring core.

A queue ring (``broadcast=False``) delivers each item to exactly one
``get()``; a broadcast ring is a stream every handle may put to and reads
from its own cursor.  Both are the same segment layout and slot protocol as
streams (``csrc/gb_ring.h``); only the claim protocol differs.

Items larger than a slot travel out of line in "blob" segments (see
``blobs``): chunks of reusable arenas, or for large items reusable blobs of
their own, owned by the producing process for queue rings; a fresh blob
per item for broadcast rings, removed when its slot is overwritten.
"""
import asyncio
import collections
import contextlib
import functools
import os
import pickle
import secrets
import threading
import weakref
from multiprocessing.util import Finalize, register_after_fork
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, List, Optional, Tuple, Type

import msgspec
import numpy as np

from . import _core, reduction
from .blobs import (
    Blobs as _Blobs,
    bdecode as _bdecode,
    bfree as _bfree,
    bspill as _bspill,
    decode_pickled as _decode_pickled,
    unframe as _unframe,
    unspill as _unspill,
)
from .codec import MessageCodec, is_model
from .errors import (
    BufferClosed,
    BufferCorrupt,
    Empty,
    Full,
    GlobalBufferError,
    SchemaMismatch,
)
from .schema import ArraySpec, decode_meta, encode_meta, model_schema, schema_hash
from .segment import (
    Segment,
    list_names,
    process_alive,
    self_start_time,
    unlink as _unlink_name,
    unlink_if as _unlink_if,
    validate_name,
)

__all__ = ["Ring", "JoinableRing"]

DEFAULT_CAPACITY = 1024
DEFAULT_MAX_BYTES = 4096 - _core.SLOT_HEADER  # one page per slot
MAX_DEFAULT_CAPACITY = 1 << 16
_FULL_GRACE = _core.FULL_GRACE  # s an unbounded put waits for a slot before deferring
_SERIALIZERS = ("pickle", "cloudpickle")
# a message ring handle without its model whose puts take dicts unvalidated:
# the bridge's local copy of a far message ring (they were validated where
# they were first put; handles that attach with model= validate reads)
_DICTS = "_dicts"


# -- serialisation ------------------------------------------------------------

def _make_serial(serializer, schema):
    """(_core._Serial, message decode or None, full decode, serializer tag).

    The compiled queue path decodes plain pickles itself; ``full decode``
    handles every payload (frames, custom serializers, messages) and serves
    broadcast rings and out-of-line items."""
    oob: List[Any] = []
    if is_model(schema) or schema == "message":
        codec = MessageCodec(schema if is_model(schema) else None)
        if is_model(schema):
            encode = codec.encode
        elif serializer == _DICTS:  # the bridge's copy of a far ring: dicts as they came
            encode = msgspec.msgpack.Encoder().encode
        else:
            encode = _put_needs_model
        return _core._Serial(None, None, encode, oob), codec.decode, codec.decode, "msgpack"
    if isinstance(schema, ArraySpec):
        return _core._Serial(None, None, None, oob), None, None, "raw"
    if serializer in _SERIALIZERS:
        # ForkingPickler's registered reducers apply, as through
        # multiprocessing.Queue (global_buffer/reduction.py)
        reduction.refresh()
        if serializer == "cloudpickle":
            dumps, pickler = reduction.cloud_dumps, reduction.CloudPickler
        else:
            dumps, pickler = reduction.dumps, reduction.Pickler
        # _Serial calls dumps(obj, 5, buffer_callback=oob.append)
        return (_core._Serial(dumps, pickle.loads, None, oob, pickler), None,
                _decode_pickled, serializer)
    if (isinstance(serializer, tuple) and len(serializer) == 2
            and all(callable(f) for f in serializer)):
        dumps, loads = serializer
        return _core._Serial(None, loads, dumps, oob), None, loads, "custom"
    raise ValueError(
        "serializer must be 'pickle', 'cloudpickle' or a (dumps, loads) pair of callables, "
        f"got {serializer!r}")


def _put_needs_model(obj):
    # a message ring attached without model= reads plain dicts; putting
    # needs the model, so that every message in the ring is validated
    raise TypeError("this handle of a message ring was attached without model=: "
                    "pass the ring's pydantic model (Ring.attach(name, model=M)) to put")


def _remove_ring(name, owner_pid, ident=None):
    """Finalizer of an owning handle: remove the ring and its blobs -- only
    while the name is still this ring's segment (``ident``): once it was
    unlinked, a newer ring may have taken the name (SPEC §3.1 lifetime)."""
    if os.getpid() != owner_pid:
        return
    if not _unlink_if(name, ident):
        return
    prefix = name + ".b"
    for n in list_names():
        if n.startswith(prefix):
            _unlink_name(n)


# -- the ring -------------------------------------------------------------------

_concrete_cache: Dict[Tuple[type, bool], type] = {}


def _concrete(cls, broadcast):
    """The class actually instantiated: ``cls`` plus the compiled handle."""
    key = (cls, broadcast)
    c = _concrete_cache.get(key)
    if c is None:
        base = _core.BroadcastHandle if broadcast else _core.QueueHandle
        ns = {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "_public": cls}
        for attr in ("put", "get"):
            # the compiled methods themselves, not Ring's documented
            # delegates (unless a subclass overrides them)
            if getattr(cls, attr) is getattr(Ring, attr):
                ns[attr] = getattr(base, attr)
        c = type(cls.__name__, (cls, base), ns)
        _concrete_cache[key] = c
    return c


def _compiled(ring):
    """The compiled handle class under ``ring``."""
    return _core.BroadcastHandle if isinstance(ring, _core.BroadcastHandle) else _core.QueueHandle


def _auto_name():
    # short enough for macOS's 31-character shm names with our prefix
    return f"r{os.getpid():x}-{secrets.token_hex(5)}"


def _as_int(value, what, minimum=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")
    return int(value)


class Ring:
    """A shared-memory ring with the ``multiprocessing.Queue`` API.

    Any number of producer and consumer processes and threads.  A queue
    ring (the default) delivers each item to exactly one ``get()``, in each
    producer's order.  A ring pickles by name: passed to a ``Process``, a
    ``Pool`` task or an initializer, it re-attaches in the receiving
    process; ``Ring.attach(name)`` opens it from an unrelated one.

    The creating process owns the segment and removes it when its handle
    is closed and collected, or at exit; other processes never remove it.
    Object rings unpickle what peers put, as ``multiprocessing`` does: use
    them within one trust domain.

    Parameters
    ----------
    maxsize : int
        ``<= 0``: ``put`` never blocks (items wait in this process, in order,
        while the shared slots are full).  ``> 0``: ``put`` blocks (or raises
        ``gb.Full``) while ``maxsize`` items are waiting.
    schema : None, gb.ArraySpec or pydantic model class
        ``None`` carries any picklable object of any size.
    broadcast : bool
        ``True`` makes a stream: ``put`` never blocks, the oldest item is
        overwritten, every handle reads every item from its own cursor.
    capacity : int
        Items the shared ring holds (default ``maxsize`` if > 0, else 1024).
    max_bytes : int
        Slot size for object and message items (default 4032).  Larger
        object items travel out of line; larger messages raise ValueError.
    serializer : "pickle", "cloudpickle" or (dumps, loads)
        How objects are serialised (``schema=None`` only).
    name : str, optional
        Segment name (default: a short unique one).
    mode : int
        Segment permissions, applied exactly (default ``0o600``); extra
        segments made for large items get the same.

    Attributes
    ----------
    name : str
        The segment name (pass it to ``Ring.attach``).
    maxsize : int
        As given.
    capacity : int
        Items the shared slots hold.
    broadcast : bool
        As given.
    schema : None, gb.ArraySpec or pydantic model class
        As given (``None`` for a message ring attached without ``model``).
    overruns : int
        Broadcast rings only: items this handle missed because producers
        lapped it.
    closed : bool
        True once the handle is unmapped (after ``close()``, once buffered
        items are flushed).
    """

    _used = True  # False while this handle has not put (see _first_put)

    # set by _open() / __init__ (or after fork)
    _segment: Segment
    _schema: Any
    _serializer: Any
    _mode: int
    _is_owner: bool
    _finalizer: Optional[Finalize]
    _pending: Deque[Any]
    _feeder: Optional[threading.Thread]
    _feeder_lock: threading.Lock
    _flush_lock: threading.Lock
    _join_cancelled: bool
    _jointhread: Optional[Finalize]
    _closed_put: bool
    _blobs: Optional[_Blobs]
    _full_decode: Any
    _bcast: bool
    _ident: Tuple[int, int]
    _views: Optional[List[Any]]
    _views_ro: Optional[List[Any]]
    _public: type  # the class the user named (set on the class _concrete() makes)

    # provided by the compiled handle _concrete() mixes in: _core.QueueHandle
    # or _core.BroadcastHandle (which one: self._bcast)
    closed: bool
    capacity: int
    _kind: int
    _flags: int
    _nslots: int
    _maxsize: int
    _owner: Tuple[int, int]
    _tail: int
    _cursor: int  # broadcast only

    if TYPE_CHECKING:
        def _bind(self, mm: Any, what: str) -> None: ...
        def _unbind(self) -> None: ...
        def _set_array(self, dtype: np.dtype, shape: Tuple[int, ...]) -> None: ...
        def _add_readers(self, delta: int) -> None: ...
        def _payload_offset(self, pos: int) -> int: ...
        def _reserve_begin(self, block: bool = True,
                           timeout: Optional[float] = None) -> Optional[int]: ...
        def _reserve_end(self, pos: int, commit: bool) -> None: ...
        def _put_obj(self, obj: Any, block: bool = True,
                     timeout: Optional[float] = None) -> bool: ...
        # queue rings (_core.QueueHandle)
        def _setup_queue(self, maxsize: int, ser: _core._Serial,
                         spill: Optional[Callable[..., Any]],
                         unspill: Optional[Callable[..., Any]],
                         alive: Callable[..., bool], unframe: Callable[..., Any],
                         decode: Optional[Callable[[bytes], Any]]) -> None: ...
        def _set_pools(self, pools: Dict[int, _core.ChunkPool],
                       maps: Dict[bytes, Any]) -> None: ...
        def _get(self, block: bool = True, timeout: Optional[float] = None) -> Any: ...
        def _get_many(self, max_items: int, block: bool = True,
                      timeout: Optional[float] = None, count: Any = None,
                      base: int = 0) -> List[Any]: ...
        def _latest(self, peek: Optional[Callable[..., Any]] = None,
                    decode_blob: Optional[Callable[..., Any]] = None) -> Any: ...
        def _view_take(self, block: bool = True, timeout: Optional[float] = None) -> int: ...
        def _view_done(self, pos: int) -> None: ...
        def _put_each(self, items: Any, grace: float, count: Any = None,
                      base: int = 0) -> int: ...
        def _defer(self, item: Any) -> None: ...
        def _serialize(self, obj: Any) -> Any: ...
        def _flush(self) -> Optional[bool]: ...
        def _wake_data(self) -> None: ...
        def _wait_ready(self, put: bool, timeout: Optional[float]) -> bool: ...
        def _qsize(self) -> int: ...
        def _task_add(self, n: int) -> int: ...
        def _task_done(self) -> int: ...
        def _join(self, timeout: Optional[float] = None) -> bool: ...
        # broadcast rings (_core.BroadcastHandle)
        def _setup_broadcast(self, ser: _core._Serial, alive: Callable[..., bool],
                             bspill: Optional[Callable[[Any], bytes]] = None,
                             bfree: Optional[Callable[[bytes], None]] = None) -> None: ...
        def _setup_reader(self, decode: Optional[Callable[[bytes], Any]],
                          from_oldest: bool) -> None: ...
        def next_into(self, out: Any, timeout: Optional[float] = None) -> int: ...
        def _wait_new(self, seen: int, timeout: Optional[float]) -> bool: ...

    def __new__(cls, *args, **kwargs):
        base = _core.BroadcastHandle if kwargs.get("broadcast") else _core.QueueHandle
        return base.__new__(_concrete(cls, bool(kwargs.get("broadcast"))))

    def __init__(self, maxsize=0, *, schema=None, broadcast=False, capacity=None,
                 max_bytes=None, serializer="pickle", name=None, mode=0o600):
        maxsize = _as_int(maxsize, "maxsize")
        if not isinstance(broadcast, bool):
            raise TypeError("broadcast must be a bool")
        if capacity is None:
            if 0 < maxsize <= MAX_DEFAULT_CAPACITY:
                capacity = maxsize
            elif maxsize > MAX_DEFAULT_CAPACITY:
                raise ValueError(
                    f"maxsize={maxsize} needs capacity= (shared slots) set explicitly; "
                    f"the default is at most {MAX_DEFAULT_CAPACITY}")
            else:
                capacity = DEFAULT_CAPACITY
        capacity = _as_int(capacity, "capacity", 1)
        if broadcast and maxsize > 0:
            raise ValueError("broadcast rings never block: use capacity=, not maxsize=")
        ser, decode, full, tag = _make_serial(serializer, schema)
        if isinstance(schema, ArraySpec):
            if max_bytes is not None:
                raise ValueError("max_bytes does not apply to ArraySpec rings")
            kind, slot_size = _core.KIND_ARRAY, schema.nbytes
            meta = {"kind": "ring", "payload": "array", **schema.to_json()}
        elif is_model(schema):
            kind = _core.KIND_MESSAGE
            slot_size = _as_int(4096 if max_bytes is None else max_bytes, "max_bytes", 1)
            meta = {"kind": "ring", "payload": "message", "schema": model_schema(schema),
                    "model": f"{schema.__module__}.{schema.__qualname__}"}
        elif schema is None:
            kind = _core.KIND_OBJECT
            slot_size = _as_int(DEFAULT_MAX_BYTES if max_bytes is None else max_bytes,
                                "max_bytes", 1)
            # mode: blobs made by any handle get the ring's permissions (§5)
            meta = {"kind": "ring", "payload": "object", "serializer": tag, "mode": mode}
        else:
            raise TypeError("schema must be None, a gb.ArraySpec or a pydantic model class, "
                            f"got {schema!r}")
        flags = _core.FLAG_BROADCAST if broadcast else _core.FLAG_QUEUE
        self._create(name, kind, flags, capacity, slot_size, maxsize, meta, mode,
                     (schema, serializer, ser, decode, full))

    @classmethod
    def _like_message_ring(cls, name, meta, maxsize, capacity, slot_size, broadcast=False,
                           mode=0o600):
        """A message ring with another one's metadata ``meta`` (its JSON
        schema and model name) but no pydantic model: the bridge's local
        copy of a far message ring (SPEC §9).  Its puts take dicts as
        they came, its gets return dicts; handles that attach with
        ``model=`` validate as usual.  ``ValueError`` for metadata that is
        not a message ring's."""
        if not (isinstance(meta, dict) and set(meta) == {"kind", "payload", "schema", "model"}
                and meta["kind"] == "ring" and meta["payload"] == "message"
                and isinstance(meta["schema"], dict) and isinstance(meta["model"], str)):
            raise ValueError("not a message ring's metadata")
        maxsize = _as_int(maxsize, "maxsize")
        capacity = _as_int(capacity, "capacity", 1)
        slot_size = _as_int(slot_size, "max_bytes", 1)
        self = cls.__new__(cls, broadcast=broadcast)
        ser, decode, full, _ = _make_serial(_DICTS, "message")
        flags = _core.FLAG_BROADCAST if broadcast else _core.FLAG_QUEUE
        self._create(name, _core.KIND_MESSAGE, flags, capacity, slot_size, maxsize, meta, mode,
                     (None, _DICTS, ser, decode, full))
        return self

    def _create(self, name, kind, flags, capacity, slot_size, maxsize, meta, mode, opening):
        """Make the segment and open it (``opening``: ``_open``'s schema,
        serializer, ser, decode, full)."""
        name = _auto_name() if name is None else validate_name(name)
        raw = encode_meta(meta)
        size = _core.segment_nbytes(kind, flags, capacity, slot_size, len(raw))
        seg = Segment.create(name, size, mode)
        try:
            _core.init_segment(seg.mm, kind, flags, capacity, slot_size, maxsize,
                               _ring_hash(meta), raw, os.getpid(), self_start_time())
            schema, serializer, ser, decode, full = opening
            self._open(seg, schema, serializer, ser, decode, full, mode)
        except BaseException:
            seg.close()
            _unlink_name(name)
            raise
        self._is_owner = True
        # multiprocessing's Finalize, not weakref.finalize: it also runs when
        # a multiprocessing child (which leaves through os._exit) exits.
        # exitpriority < 0: at exit it runs after multiprocessing has joined
        # this process's non-daemonic children (and after the feeder flush,
        # -5), so a child still reading -- or still starting, under spawn --
        # finds the ring and its out-of-line items, as with the stdlib Queue
        self._finalizer = Finalize(self, _remove_ring, (name, os.getpid(), seg.ident),
                                   exitpriority=-10)

    # -- opening ----------------------------------------------------------

    def _open(self, seg, schema, serializer, ser, decode, full, mode):
        self._segment = seg
        self._bind(seg.mm, f"ring {seg.name!r}")
        self._schema = schema
        self._serializer = serializer
        self._mode = mode
        self._is_owner = False
        self._finalizer = None
        self._pending = collections.deque()
        self._feeder = None
        self._feeder_lock = threading.Lock()
        self._flush_lock = threading.Lock()  # held by whoever moves _pending into slots
        self._join_cancelled = False
        self._jointhread = None
        self._closed_put = False
        self._blobs = None
        if isinstance(schema, ArraySpec):
            self._set_array(schema.dtype, schema.shape)
        register_after_fork(self, Ring._after_fork)
        self._full_decode = full
        self._bcast = self.broadcast  # plain attribute: the property costs ~150 ns per put/get
        if self._bcast:
            if self._kind == _core.KIND_OBJECT and full is _decode_pickled:
                # items larger than a slot go out of line, one fresh blob each
                self._blobs = _Blobs(seg.name, mode)
                self._setup_broadcast(ser, process_alive,
                                      functools.partial(_bspill, self._blobs),
                                      _bfree)
                self._setup_reader(functools.partial(_bdecode, self._blobs, full), False)
            else:
                self._setup_broadcast(ser, process_alive)
                self._setup_reader(full, False)
        else:
            self._blobs = (_Blobs(seg.name, mode, self.capacity)
                           if self._kind == _core.KIND_OBJECT else None)
            self._setup_queue(self._maxsize, ser,
                              self._blobs.spill if self._blobs else None,
                              # not the bound method: a ring -> method -> ring
                              # cycle would keep an unreferenced ring (and its
                              # segment) alive until the cyclic GC runs
                              functools.partial(_unspill, self._blobs, full)
                              if self._blobs else None,
                              process_alive, _unframe, decode)
            if self._blobs is not None and full is _decode_pickled:
                self._set_pools(self._blobs.pools, self._blobs.maps)
        self._add_readers(1)
        self._ident = self._owner  # which segment a closed handle may still ask about
        _mark_unused(self)

    def _after_fork(self):
        # a child forked by multiprocessing inherits this handle, but not the
        # parent's buffered items, feeder thread or blobs (as
        # multiprocessing.Queue._after_fork): else it would put them twice
        self._pending = collections.deque()
        self._feeder = None
        self._feeder_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._join_cancelled = False
        self._jointhread = None
        if self._blobs is not None:
            self._blobs.forget()
        _mark_unused(self)  # the child's handle is unused, as the stdlib's queue's

    def _unspill(self, ref, give_back):
        assert self._blobs is not None  # only queue rings of objects spill
        return _unspill(self._blobs, self._full_decode, ref, give_back)

    @classmethod
    def attach(cls, name, *, model=None, serializer=None):
        """Open the existing ring ``name`` (e.g. from an unrelated process).

        Settings come from the segment.  ``model`` (message rings) returns
        validated instances instead of dicts; ``serializer`` is needed only
        for rings made with a custom ``(dumps, loads)`` pair.
        """
        seg = Segment.attach(name)
        try:
            h = _core.Handle()
            h._bind(seg.mm, f"segment {name!r}")
            flags, raw = h._flags, h._meta
            stored_hash = h._schema_hash
            h._unbind()
            try:
                meta = decode_meta(raw)
                payload = meta["payload"]
            except (ValueError, KeyError, TypeError):
                raise BufferCorrupt(f"segment {name!r} is not a ring (a stream?)") from None
            if meta.get("kind") != "ring" or _ring_hash(meta) != stored_hash:
                raise BufferCorrupt(f"segment {name!r} is not a ring (a stream?)")
            if payload == "array":
                schema = ArraySpec.from_json(meta)
            elif payload == "message":
                if model is not None:
                    if not is_model(model):
                        raise TypeError(f"model must be a pydantic model class, got {model!r}")
                    if schema_hash(model_schema(model)) != schema_hash(meta["schema"]):
                        raise SchemaMismatch(f"model {model.__name__} does not match ring {name!r}")
                schema = model
            else:
                schema = None
            tag = meta.get("serializer")
            if serializer is None:
                if tag == "custom":
                    raise ValueError(f"ring {name!r} uses a custom serializer: pass serializer=")
                serializer = tag if tag in _SERIALIZERS else "pickle"
            broadcast = bool(flags & _core.FLAG_BROADCAST)
            base = _core.BroadcastHandle if broadcast else _core.QueueHandle
            self = base.__new__(_concrete(cls, broadcast))
            ser, decode, full, _ = _make_serial(
                serializer, schema if payload != "message" or schema is not None else "message")
            mode = meta.get("mode", 0o600)
            self._open(seg, schema, serializer, ser, decode, full,
                       mode if isinstance(mode, int) and 0 <= mode <= 0o777 else 0o600)
        except BaseException:
            seg.close()
            raise
        return self

    def __reduce__(self):
        return (_rebuild, (self._public, self.name, self._schema, self._serializer))

    # -- attributes ---------------------------------------------------------

    @property
    def name(self):
        """The segment name."""
        return self._segment.name

    @property
    def maxsize(self):
        """Items that may wait before ``put`` blocks (``<= 0``: never)."""
        return self._maxsize

    @property
    def broadcast(self):
        """True for a broadcast ring (every handle reads every item)."""
        return bool(self._flags & _core.FLAG_BROADCAST)

    @property
    def schema(self):
        """``None`` (objects), a ``gb.ArraySpec`` or a pydantic model class."""
        return self._schema

    def __repr__(self):
        kind = "broadcast " if not self.closed and self.broadcast else ""
        return f"<{type(self).__name__} {kind}{self._segment.name!r}>"

    # -- Queue API ------------------------------------------------------------

    def _check_put(self):
        if self._closed_put:
            raise ValueError(f"Queue {self!r} is closed")

    # put() and get(): the class a Ring is made of (_concrete) binds the
    # compiled QueueHandle/BroadcastHandle methods directly, because a
    # Python-level frame cost ~200 ns of a ~750 ns small-item put.  These
    # defs are their documentation and serve explicit Ring.put(r, x) calls.

    def put(self, obj, block=True, timeout=None):
        """Put ``obj`` into the ring, as ``multiprocessing.Queue.put``.

        ``maxsize > 0``: waits while ``maxsize`` items are waiting (up to
        ``timeout`` seconds; ``block=False`` does not wait) and raises
        ``gb.Full`` (a ``queue.Full``) if no room came; once it returns, the
        item is in shared memory.  ``maxsize <= 0``: never blocks; if the
        shared slots are full the item waits in this process, in order, and
        a feeder thread moves it in.  Broadcast rings overwrite the oldest
        item.  The object is serialised in the calling thread, so an
        unpicklable one raises here.  ``ValueError`` after ``close()``.
        """
        return _compiled(self).put(self, obj, block, timeout)

    def put_nowait(self, obj):
        """``put(obj, False)``."""
        return self.put(obj, False)

    def get(self, block=True, timeout=None):
        """Remove and return an item, as ``multiprocessing.Queue.get``.

        Waits up to ``timeout`` seconds (forever if None; not at all with
        ``block=False``) and raises ``gb.Empty`` (a ``queue.Empty``) if
        nothing came.  The wait sleeps in the kernel and costs no CPU.
        Broadcast rings return the next item from this handle's cursor
        without taking it from other handles.  ``ValueError`` after
        ``close()``.
        """
        return _compiled(self).get(self, block, timeout)

    def get_nowait(self):
        """``get(False)``."""
        return self.get(False)

    def next(self, timeout=None):
        """``get(timeout=timeout)``: for queue rings the next item of the
        queue, for broadcast rings the next from this handle's cursor."""
        if self.broadcast:
            # super() is _core.BroadcastHandle here (the base _concrete() mixes in)
            return super().next(timeout)  # type: ignore[misc]
        return self._get(True, timeout)

    def latest(self):
        """The newest item put that is still held, without consuming it
        (``None`` if there is none)."""
        if self.broadcast:
            return super().latest()  # type: ignore[misc]  # as in next()
        if self._blobs is None:
            return self._latest()
        return self._latest(self._blobs.peek, self._full_decode)

    @contextlib.contextmanager
    def reserve(self, block=True, timeout=None):
        """Zero-copy put for ArraySpec rings: yields a writable ndarray
        straight into a free slot; the item is put when the block exits
        normally.  If the block raises, nothing is delivered (the slot is
        released as an item every ``get()`` skips).  ``gb.Full`` if no slot
        freed up in time."""
        self._check_put()
        pos = self._reserve_begin(block, timeout)
        if pos is None:
            raise Full()
        _mark_used(self)
        try:
            views = self._slot_views()
            view = views[pos % self._nslots]
            if view is None:
                spec = self._schema
                view = np.frombuffer(self._segment.mm, dtype=spec.dtype,
                                     count=int(np.prod(spec.shape, dtype=np.int64)),
                                     offset=self._payload_offset(pos)).reshape(spec.shape)
                views[pos % self._nslots] = view
            yield view
        except BaseException:
            self._reserve_end(pos, False)
            raise
        self._reserve_end(pos, True)

    def get_into(self, out, block=True, timeout=None):
        """ArraySpec rings: remove the next item by copying it into ``out``,
        an array you own (no allocation), and return ``out``.

        ``out`` must have the ring's dtype and shape and be writable and
        C-contiguous; a wrong one raises ``ValueError`` and consumes
        nothing.  Waits as ``get()`` (``gb.Empty`` on timeout).  On a
        broadcast ring it reads the next item from this handle's cursor.
        """
        if self.broadcast:
            self.next_into(out, timeout if block else 0)
            return out
        # a queue ring's handle is a _core.QueueHandle (the base _concrete() mixes in)
        return _core.QueueHandle.get_into(self, out, block, timeout)  # type: ignore[arg-type]

    @contextlib.contextmanager
    def view(self, block=True, timeout=None):
        """Zero-copy get for ArraySpec rings: consumes the next item and
        yields a read-only ndarray view of its slot, which stays claimed
        (no producer can reuse it) until the block exits; then the slot is
        freed.  Each item is still delivered exactly once: a consumer killed
        inside the block is recovered like any dead claimant, its item
        counted as the one it had in flight.  Do not keep the array past
        the block (copy what you need).  ``gb.Empty`` if nothing came in
        time (SPEC §3.1)."""
        if self.broadcast:
            raise TypeError("view() consumes a queue ring's item; on a broadcast ring "
                            "use get_into()/next_into()")
        pos = self._view_take(block, timeout)
        try:
            i = pos % self._nslots
            views = self._ro_views()
            v = views[i]
            if v is None:
                spec = self._schema
                v = views[i] = np.frombuffer(
                    memoryview(self._segment.mm).toreadonly(), dtype=spec.dtype,
                    count=int(np.prod(spec.shape, dtype=np.int64)),
                    offset=self._payload_offset(pos)).reshape(spec.shape)
            yield v
        finally:
            self._view_done(pos)

    def _ro_views(self):
        if getattr(self, "_views_ro", None) is None:
            self._views_ro = [None] * self._nslots
        return self._views_ro

    def _slot_views(self):
        if getattr(self, "_views", None) is None:
            self._views = [None] * self._nslots
        return self._views

    def put_many(self, items, block=True, timeout=None):
        """Put every item of ``items`` in order, waking consumers once.

        ``block``/``timeout`` apply as for ``put`` (the timeout covers the
        whole batch); on ``gb.Full`` the items before the one that did not
        fit were put.
        """
        self._check_put()
        _mark_used(self)
        if self._maxsize <= 0 and not self._bcast and not isinstance(self, JoinableRing):
            # put()'s unbounded path, looped in compiled code
            if not isinstance(items, (list, tuple)):
                items = list(items)
            done = 0 if self._pending else self._put_each(items, _FULL_GRACE)
            for obj in items[done:]:
                self._defer(self._serialize(obj))
                self._flush()
            return
        if self._bcast or self._maxsize <= 0:
            for obj in items:
                self.put(obj, block, timeout)
            return
        deadline = None if timeout is None or not block else _now() + max(timeout, 0)
        put = self._put_task if isinstance(self, JoinableRing) else self._put_obj
        try:
            for obj in items:
                if put(obj, False):
                    continue
                self._wake_data()  # let consumers drain before we wait
                left = None if deadline is None else max(deadline - _now(), 0)
                if not put(obj, block, left):
                    raise Full()
        finally:
            if not self.closed:
                self._wake_data()

    def get_many(self, max_items, block=True, timeout=None):
        """A list of 1 to ``max_items`` items: waits (per ``block`` and
        ``timeout``, ``gb.Empty`` as ``get``) for the first, then takes
        whatever else is already there, without waiting again."""
        max_items = _as_int(max_items, "max_items", 1)
        if not self._bcast:
            if self._closed_put:
                self._check_put()
            return self._get_many(max_items, block, timeout)
        out = [self.get(block, timeout)]
        get = None
        while len(out) < max_items:
            try:
                out.append(get(False) if get else self.next(0))
            except Empty:
                break
        return out

    def qsize(self):
        """Approximate number of items waiting: a counter in the segment,
        so it works on every platform (plus items buffered by this process
        for an unbounded ring).  Broadcast rings: items this handle has not
        read yet.  Works after ``close()`` too, as the stdlib's."""
        if self.closed:
            return self._closed_count()[0] + len(self._pending)
        if self.broadcast:
            t = self._tail
            return min(t - self._cursor, self.capacity) if t > self._cursor else 0
        return self._qsize() + len(self._pending)

    def empty(self):
        """``qsize() == 0`` (approximate, as for ``multiprocessing.Queue``).

        After ``close()``, as ``multiprocessing.Queue``: a handle that put
        items in this process raises ``OSError`` (the stdlib's feeder has
        closed its pipe by then); one that never put still answers.
        """
        if self.closed and self._used:
            raise OSError("handle is closed")
        return self.qsize() == 0

    def full(self):
        """True if a ``put`` would block now (never for unbounded or
        broadcast rings).  Works after ``close()`` too, as the stdlib's."""
        if self.closed:
            return self._closed_count()[1]
        # an unbounded ring is never full: put() does not block (as the stdlib)
        if self.broadcast or self._maxsize <= 0:
            return False
        return self._qsize() >= self._maxsize

    def _closed_count(self):
        """(items waiting, full) for a closed handle.  Its own mapping went
        with close(), but ``multiprocessing.Queue.qsize()`` / ``full()``
        still answer after close() (a semaphore outlives the pipe), so the
        segment is looked at through a mapping made for this call.  A ring
        whose segment is gone (or replaced under its name) raises
        BufferClosed."""
        name = self._segment.name
        try:
            seg = Segment.attach(name, wait_init=0)
        except (OSError, GlobalBufferError):
            seg = None
        if seg is not None:
            h = _core.QueueHandle.__new__(_core.QueueHandle)
            try:
                h._bind(seg.mm, f"ring {name!r}")
                try:
                    if h._owner == self._ident:
                        if self._bcast:
                            t, cursor = h._tail, self._cursor
                            return (min(t - cursor, h.capacity) if t > cursor else 0), False
                        n, maxsize = h._qsize(), h._maxsize
                        return n, 0 < maxsize <= n
                finally:
                    h._unbind()
            except GlobalBufferError:
                pass
            finally:
                seg.close()
        raise BufferClosed(f"ring {name!r} is closed and its segment is gone")

    def close(self):
        """No more puts or gets through this handle; items this process
        still buffers are flushed to the ring first, then the handle is
        unmapped.  The segment stays while other handles use it (the owner's
        is removed when the closed handle is collected, or at exit)."""
        self._closed_put = True
        if self._feeder is None and not self.closed:
            self._release()

    def join_thread(self):
        """Wait until items buffered by this process are in shared memory."""
        assert self._closed_put, f"Queue {self!r} not closed"
        if self._feeder is not None:
            self._feeder.join()

    def cancel_join_thread(self):
        """Do not wait for buffered items at exit (they may be lost)."""
        self._join_cancelled = True
        if self._jointhread is not None:
            self._jointhread.cancel()

    def _release(self):
        """Unmap; the owner's finalizer removes the segment on collection/exit."""
        if self.closed:
            return
        self._add_readers(-1)
        self._views = self._views_ro = None
        self._unbind()
        if self._blobs is not None:
            self._blobs.close()
        self._segment.close()

    def unlink(self):
        """Remove the ring's name now (attached handles keep working)."""
        ident = self._segment.ident
        _remove_ring(self.name, os.getpid(), ident)
        if self._finalizer is not None and ident is not None:
            self._finalizer.cancel()  # nothing of ours is left to remove

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        # as a context manager: close() and join_thread() on exit
        self.close()
        self.join_thread()

    # -- unbounded puts: the feeder --------------------------------------------

    # put() (compiled, QueueHandle) serialises an item that finds the ring
    # full, appends it to _pending and, under _feeder_lock, calls this if no
    # feeder runs; put(), put_many() and the feeder then move the items into
    # slots in order (QueueHandle._flush).

    def _start_feeder(self):
        self._feeder = threading.Thread(target=self._feed, name="RingFeederThread", daemon=True)
        self._feeder.start()
        if not self._join_cancelled:
            self._jointhread = Finalize(self._feeder, _join_feeder,
                                        [weakref.ref(self._feeder)], exitpriority=-5)

    def _feed(self):
        try:
            self._feed_until_empty()
        except BaseException:
            # whatever ended us, the next deferred put must start a feeder
            with self._feeder_lock:
                if self._feeder is threading.current_thread():
                    self._feeder = None
            raise

    def _feed_until_empty(self):
        pending = self._pending
        while True:
            with self._feeder_lock:
                if not pending:
                    self._feeder = None if not self._closed_put else self._feeder
                    break
            if self.closed:
                return
            ok = self._flush()
            if ok is None:
                with self._flush_lock:  # a put() is flushing: let it finish
                    pass
            elif not ok and not self.closed:
                # sleep (GIL released) until a slot frees; put() calls flush
                # meanwhile too, so a busy producer thread never starves us
                self._wait_ready(True, 0.1)
        if self._closed_put:
            self._release()

    # -- asyncio ------------------------------------------------------------------

    async def get_async(self, timeout=None):
        """``get()`` for asyncio: waits in a worker thread that sleeps in the
        kernel, never blocking the event loop; ``gb.Empty`` on timeout."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else _now() + max(timeout, 0)
        while True:
            try:
                return self.get(False)
            except Empty:
                pass
            left = 0.1 if deadline is None else min(0.1, deadline - _now())
            if left <= 0:
                raise Empty()
            if self.broadcast:
                await loop.run_in_executor(None, self._wait_new, self._cursor, left)
            else:
                await loop.run_in_executor(None, self._wait_ready, False, left)

    async def put_async(self, item, timeout=None):
        """``put()`` for asyncio (``gb.Full`` on timeout)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else _now() + max(timeout, 0)
        while True:
            try:
                return self.put(item, False)
            except Full:
                pass
            left = 0.1 if deadline is None else min(0.1, deadline - _now())
            if left <= 0:
                raise Full()
            await loop.run_in_executor(None, self._wait_ready, True, left)


# -- closed semantics: a handle's first put ----------------------------------------
#
# multiprocessing.Queue starts its feeder thread on its first put, and close()
# of a queue with a feeder closes its pipe: empty() then raises OSError, while
# empty() of a never-used closed queue still answers (CPython's
# test_closed_queue_empty_exceptions, 3.13; the same queues.py code in every
# supported version).  A handle that has not put yet is an instance of a
# subclass of its class whose put() notes the use and switches the handle back
# (``__class__``), so later puts take the compiled method directly; no
# per-handle object refers back to the ring, so it stays free of cycles.

_unused_cache: Dict[type, type] = {}   # the class of a used handle -> the class of an unused one
_used_of: Dict[type, Type[Ring]] = {}  # and back


def _unused_class(cls):
    c = _unused_cache.get(cls)
    if c is None:
        c = type(cls.__name__, (cls,), {"__module__": cls.__module__,
                                        "__qualname__": cls.__qualname__,
                                        "put": _first_put, "_used": False})
        _unused_cache[cls], _used_of[c] = c, cls
    return c


def _mark_unused(ring):
    if type(ring) not in _used_of:
        ring.__class__ = _unused_class(type(ring))


def _mark_used(ring):
    cls = _used_of.get(type(ring))
    if cls is not None:
        ring.__class__ = cls


def _first_put(self, obj, block=True, timeout=None):
    """``Ring.put`` of a handle that has not put yet (see above)."""
    self._check_put()  # a put refused as closed does not use the queue
    used = _used_of.get(type(self), type(self))
    try:
        out = used.put(self, obj, block, timeout)
    except Full:
        raise  # nothing was put: the stdlib's Full comes before its feeder starts
    except BaseException:
        _mark_used(self)  # the stdlib's feeder would have started
        raise
    _mark_used(self)
    return out


def _join_feeder(twr):
    t = twr()
    if t is not None:
        t.join()


def _now():
    return _core.now_ns() / 1e9


def _ring_hash(meta):
    return schema_hash(meta)


def _rebuild(cls, name, schema, serializer):
    model = schema if is_model(schema) else None
    r = cls.attach(name, model=model,
                   serializer=serializer if isinstance(serializer, tuple) else None)
    return r


class JoinableRing(Ring):
    """A ``Ring`` with ``task_done()`` and ``join()``, as
    ``multiprocessing.JoinableQueue``.  The count of unfinished
    tasks lives in the segment, so any process may call either."""

    def put(self, obj, block=True, timeout=None):
        self._check_put()
        self._task_add(1)
        try:
            super().put(obj, block, timeout)
        except BaseException:
            self._task_add(-1)
            raise

    def _put_task(self, obj, block, timeout=None):
        # put_many's bounded path: count the task before the item is visible
        self._task_add(1)
        try:
            ok = self._put_obj(obj, block, timeout)
        except BaseException:
            self._task_add(-1)
            raise
        if not ok:
            self._task_add(-1)
        return ok

    def task_done(self):
        """Mark one item taken with ``get()`` as processed; ``ValueError``
        if called more times than items were put."""
        self._task_done()

    def join(self, timeout=None):
        """Block until every item put has been marked done.

        ``timeout`` (seconds; not in the stdlib) bounds the wait.  Returns
        False if it expired, else True.  The wait sleeps in the kernel.
        """
        return self._join(timeout)
