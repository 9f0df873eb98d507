"""Streams (SPEC §2): one writer publishes samples under a name; any process
attaches by name and reads the newest sample or every sample in order.

The hot methods (``write``, ``next``, ``latest``, ``next_into``, ...) are
inherited from the compiled handles in ``_core``; this module adds segment
lifetime, zero-copy views and background callbacks.
"""
import contextlib
import logging
import threading
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from . import _core, _exitwatch
from .codec import MessageCodec, is_model
from .errors import BufferClosed, BufferCorrupt, Empty, SchemaMismatch, StaleView, WriterGone
from .schema import ArraySpec, decode_meta, encode_meta, model_schema, schema_hash
from .segment import Segment, process_alive, self_start_time, unlink as _unlink_name

__all__ = ["create", "attach", "unlink", "GlobalBuffer", "Reader", "Consumer",
           "CallbackHandle"]

log = logging.getLogger("global_buffer")

DEFAULT_MAX_BYTES = 4096
ALIVE_WINDOW = 2.0  # seconds of heartbeat silence before a writer reads as dead


def _check_capacity(capacity):
    if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)):
        raise TypeError(f"capacity must be an int, got {type(capacity).__name__}")
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    return int(capacity)


def _layout(schema, max_bytes):
    """(kind, slot_size, meta dict, codec-or-None, spec-or-None) for a schema."""
    if isinstance(schema, ArraySpec):
        if max_bytes is not None:
            raise ValueError("max_bytes applies to message streams; an array stream's "
                             "slot size is its ArraySpec's nbytes")
        meta = {"kind": "array", **schema.to_json()}
        return _core.KIND_ARRAY, schema.nbytes, meta, None, schema
    if is_model(schema):
        if max_bytes is None:
            max_bytes = DEFAULT_MAX_BYTES
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)):
            raise TypeError(f"max_bytes must be an int, got {type(max_bytes).__name__}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        meta = {"kind": "message", "model": f"{schema.__module__}.{schema.__qualname__}",
                "schema": model_schema(schema)}
        return _core.KIND_MESSAGE, int(max_bytes), meta, MessageCodec(schema), None
    raise TypeError(
        "schema must be a gb.ArraySpec(dtype, shape) or a pydantic.BaseModel subclass, "
        f"got {schema!r}")


_KINDS = {"array": _core.KIND_ARRAY, "message": _core.KIND_MESSAGE}


def _meta_hash(meta):
    # the hash covers what must match for two processes to understand the
    # same bytes: the array layout, or the model's JSON schema
    return schema_hash(meta["schema"] if meta["kind"] == "message" else meta)


class _Mapped:
    """Shared lifecycle of stream handles (mixed into the compiled handles)."""

    # provided by the compiled handle this is mixed into (_core.Handle)
    _segment: Any
    closed: bool
    capacity: int

    if TYPE_CHECKING:
        def _bind(self, mm: Any, what: str) -> None: ...
        def _unbind(self) -> None: ...

    def _map(self, segment, what):
        self._segment = segment
        self._bind(segment.mm, what)

    @property
    def name(self):
        """The stream's name, as given to ``create``/``attach``."""
        return self._segment.name

    def close(self):
        """Detach this handle (idempotent).  The segment stays; afterwards
        every other method raises ``gb.BufferClosed``."""
        if self.closed:
            return
        self._before_close()
        self._unbind()
        self._segment.close()

    def _before_close(self):
        pass

    def __enter__(self):
        if self.closed:
            raise BufferClosed(f"{type(self).__name__} is closed")
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "closed" if self.closed else f"capacity={self.capacity}"
        return f"<{type(self).__name__} {self._segment.name!r} {state}>"


def _view(segment, offset, spec, writable):
    # a reader's view sits on a read-only buffer, so that numpy refuses to
    # flip it back to writable (a reader must never scribble on the stream)
    buf = segment.mm if writable else memoryview(segment.mm).toreadonly()
    return np.frombuffer(buf, dtype=spec.dtype, count=int(np.prod(spec.shape, dtype=np.int64)),
                         offset=offset).reshape(spec.shape)


class GlobalBuffer(_Mapped, _core.StreamWriter):
    """The writer of a stream, returned by ``gb.create()``.

    The creating process owns the segment.  Used as a context manager,
    leaving the ``with`` block removes the segment (``unlink()``) and
    closes the handle; readers already attached keep their mapping.

    Attributes
    ----------
    name : str
        The stream's name.
    capacity : int
        Samples the stream holds (the segment has one slot more).
    schema : gb.ArraySpec or pydantic model class
        The schema given to ``create``.
    closed : bool
        True once ``close()`` was called.
    """

    _schema: Any
    _spec: Optional[ArraySpec]

    def _make_view(self, pos):
        return _view(self._segment, self._payload_offset(pos), self.schema, True)

    @property
    def schema(self):
        """The ``gb.ArraySpec`` or pydantic model class of the samples."""
        return self._schema

    @contextlib.contextmanager
    def reserve(self):
        """Zero-copy write: yield a writable ndarray straight into the next
        slot (array streams only; ``TypeError`` otherwise).

        The sample is published when the block exits normally and discarded
        (nothing published, ring unchanged) if it raises.  Fill every
        element: the slot still holds an older sample's bytes.
        """
        if self._spec is None:
            raise TypeError("reserve() needs an array stream")
        pos = self._reserve_begin()
        try:
            yield self._slot_view(pos)
        except BaseException:
            self._reserve_end(pos, False)
            raise
        self._reserve_end(pos, True)

    def _before_close(self):
        self._drop_views()
        self._mark_gone()  # readers that read everything get WriterGone at once

    def unlink(self):
        """Remove the segment's name now.  Readers already attached keep
        their mapping; new ``attach()`` calls raise ``gb.BufferNotFound``."""
        if self.closed:
            raise BufferClosed("GlobalBuffer is closed")
        _unlink_name(self._segment.name)

    def __exit__(self, *exc):
        # the owner's with-block is the stream's lifetime
        if not self.closed:
            self.unlink()
            self.close()


def create(name, schema, capacity, max_bytes=None, *, mode=0o600, heartbeat_interval=0.1):
    """Create a stream segment and return its writer.

    Parameters
    ----------
    name : str
        Letters, digits, ``.``, ``_``, ``-`` (not ``.`` or ``..``); at most
        200 characters.
    schema : gb.ArraySpec or pydantic.BaseModel subclass
        What every sample is: a numpy array of one dtype and shape, or a
        message validated by the model and encoded with msgspec.
    capacity : int
        Samples held (>= 1); one spare slot is added so the writer never
        overwrites the newest readable sample.
    max_bytes : int, optional
        Slot size of a message stream (default 4096).  A message that
        encodes larger raises ``ValueError`` and is not published.  Not
        allowed for array streams, whose slot size is the sample's.
    mode : int
        Permissions of the segment, applied exactly, not masked by the umask
        (default ``0o600``: same user only).
    heartbeat_interval : float
        Seconds between heartbeat stamps made by ``write``.

    Returns
    -------
    GlobalBuffer
        The writer; this process owns the segment.

    Raises
    ------
    gb.BufferExists
        A segment of that name exists.
    ValueError, TypeError
        A bad name, capacity, schema or size; nothing is created.
    """
    capacity = _check_capacity(capacity)
    kind, slot_size, meta, codec, spec = _layout(schema, max_bytes)
    if not isinstance(heartbeat_interval, (int, float)) or heartbeat_interval < 0:
        raise ValueError(f"heartbeat_interval must be a number >= 0, got {heartbeat_interval!r}")
    return _new_writer(name, kind, capacity, slot_size, encode_meta(meta), _meta_hash(meta),
                       schema, spec, float(heartbeat_interval),
                       codec.encode if codec else None, mode)


def _new_writer(name, kind, capacity, slot_size, raw_meta, meta_hash, schema, spec,
                heartbeat_interval, encode, mode):
    """Create a stream segment and return its writer: ``create()``'s work
    once the arguments are checked, and a bridge mirror's (SPEC §9), whose
    layout comes from the far stream's announce.  Nothing is left behind if
    it fails."""
    size = _core.segment_nbytes(kind, 0, capacity, slot_size, len(raw_meta))
    seg = Segment.create(name, size, mode)
    try:
        pid, start = seg.owner_pid, self_start_time()
        _core.init_segment(seg.mm, kind, 0, capacity, slot_size, 0, meta_hash, raw_meta,
                           pid, start)
        w = GlobalBuffer()
        w._map(seg, name)
        w._schema = schema
        w._spec = spec
        if spec is not None:
            w._set_array(spec.dtype, spec.shape)
        w._setup_writer(heartbeat_interval, encode)
        w._set_writer(pid, start)
    except BaseException:
        seg.close()
        _unlink_name(name)
        raise
    return w


class Reader(_Mapped, _core.StreamReader):
    """A reader of a stream, returned by ``gb.attach()``.

    Each reader has its own cursor.  ``next()`` and its variants read
    every sample in order; when the writer laps the reader, the reader
    resumes where the writer is not about to overwrite (at first the
    oldest sample held; closer to the newest each time the writer
    overwrites a sample under it, so a slow reader of a fast writer keeps
    reading at its own rate) and ``overruns`` grows by the number skipped.
    Once the writer closed the stream or died and every sample was read,
    blocking reads raise ``gb.WriterGone`` (also ``EOFError``) and
    iteration ends.  ``latest()`` and ``view("latest")`` never move the
    cursor.  Iterating a reader yields samples in order (blocking); a
    ``close()`` from another thread ends the loop.

    Attributes
    ----------
    name : str
        The stream's name.
    capacity : int
        Samples the stream holds.
    overruns : int
        Samples this reader missed because the writer lapped it.
    closed : bool
        True once ``close()`` was called.
    """

    _schema: Any
    _spec: Optional[ArraySpec]
    _model: Any
    _views_ro: Any

    def _make_view(self, pos):
        return _view(self._segment, self._payload_offset(pos), self._spec, False)

    @property
    def shape(self):
        """Shape of an array stream's samples; None for message streams."""
        return self._spec.shape if self._spec is not None else None

    @property
    def dtype(self):
        """``numpy.dtype`` of an array stream's samples; None for messages."""
        return self._spec.dtype if self._spec is not None else None

    @property
    def nbytes(self):
        """Bytes per sample of an array stream; None for message streams."""
        return self._spec.nbytes if self._spec is not None else None

    @property
    def schema(self):
        """The stream's ``gb.ArraySpec``; for message streams the model
        given to ``attach``, or the stored JSON schema (a dict) without one."""
        return self._schema

    def _writer_dead(self):
        # the core's probe while a blocking read waits (SPEC §2.2): the
        # writer's process is gone (pid and start time, so pid reuse does not
        # fool it); a healthy writer that is merely idle is not dead
        pid, start = self._writer
        return not process_alive(pid, start)

    def _watch_exit(self):
        # the core asks once per blocking reader (and again after a fork):
        # a pidfd on the writer's process wakes us when it exits, so an
        # idle reader needs no wake-ups to notice a dead writer
        pid, start = self._writer
        return _exitwatch.watch(self, pid, start)

    @property
    def writer_alive(self):
        """False once the writer's heartbeat is older than 2 s, its process
        is gone (pid and start time checked), or it closed the stream."""
        if self.closed:
            raise BufferClosed("Reader is closed")
        age = (_core.now_ns() - self._heartbeat_ns) / 1e9
        if age > ALIVE_WINDOW:
            return False
        pid, start = self._writer
        return process_alive(pid, start)

    @contextlib.contextmanager
    def view(self, which="latest", timeout=None):
        """Zero-copy read: a context manager yielding a read-only ndarray
        view of a sample in shared memory (array streams only).

        ``which="latest"`` views the newest sample (yields ``None`` if there
        is none) and leaves the cursor alone; ``"next"`` views the next
        sample in order, waiting up to ``timeout`` seconds (``gb.Empty``),
        and consumes it.  The view is valid only inside the block: if the
        writer overwrote the slot meanwhile, leaving the block raises
        ``gb.StaleView``, so a torn sample never passes silently.  Copy
        what you keep.
        """
        if which not in ("latest", "next"):
            raise ValueError(f"which must be 'latest' or 'next', got {which!r}")
        if self.closed:
            raise BufferClosed("Reader is closed")
        if self._spec is None:
            raise TypeError("view() needs an array stream")
        got = self._view_begin(which == "next", timeout)
        if got is None:
            yield None
            return
        pos, word = got
        v = self._views_ro[pos % self._nslots]
        if v is None:
            v = self._views_ro[pos % self._nslots] = self._make_view(pos)
        yield v
        if not self._view_check(pos, word):
            raise StaleView(f"sample {pos} was overwritten while it was being viewed")

    def __iter__(self):
        if self.closed:
            raise BufferClosed("Reader is closed")
        return self._iter()

    def _iter(self):
        # a close() from another thread, or the writer gone with every
        # sample read (WriterGone), ends the loop instead of raising
        while True:
            try:
                yield self.next()
            except (BufferClosed, WriterGone):
                return

    def on_data(self, fn, mode="latest"):
        """Call ``fn(sample, seq)`` on a background thread for new samples.

        ``mode="next"``: every sample in order (overruns are counted on the
        handle).  ``mode="latest"``: the newest sample after each wake-up,
        skipping those written meanwhile.  The thread reads through its own
        reader, starting after the newest sample now; an exception raised
        by ``fn`` is logged (logger ``"global_buffer"``) and the thread
        goes on.

        Returns
        -------
        CallbackHandle
            ``.stop()`` ends the thread; also a context manager.
        """
        if mode not in ("latest", "next"):
            raise ValueError(f"mode must be 'latest' or 'next', got {mode!r}")
        if not callable(fn):
            raise TypeError("fn must be callable")
        if self.closed:
            raise BufferClosed("Reader is closed")
        return CallbackHandle(self._clone(), fn, mode)

    def _clone(self):
        """An independent reader of the same stream (own cursor), starting
        at the newest sample."""
        return attach(self._segment.name, self._model)

    def _before_close(self):
        self._views_ro = None
        self._add_readers(-1)


def attach(name, model=None, *, start="newest", poll_min=None, poll_max=None):
    """Attach to the stream ``name`` and return a ``Reader``.

    The schema comes from the segment.  Any process may attach; attaching
    never removes the segment, and the reader is not registered with
    ``multiprocessing``'s ``resource_tracker``.

    Parameters
    ----------
    name : str
        The stream's name.
    model : pydantic.BaseModel subclass, optional
        Message streams only: checked against the stored schema
        (``gb.SchemaMismatch`` if it differs); reads then return validated
        instances.  Without it, reads return plain dicts.
    start : {"newest", "oldest"}
        ``"newest"``: the first ``next()`` returns the first sample written
        after ``attach()``.  ``"oldest"``: replay from the oldest sample
        still held.
    poll_min, poll_max : float, optional
        Bounds (seconds) of the adaptive poll used to wait where no futex
        exists (default 0.0001 and 0.002).

    Raises
    ------
    gb.BufferNotFound
        No segment of that name.
    gb.BufferCorrupt
        The segment is not a valid stream (a ring, or garbage).
    gb.SchemaMismatch
        ``model`` does not match the stream.
    """
    if start not in ("newest", "oldest"):
        raise ValueError(f"start must be 'newest' or 'oldest', got {start!r}")
    if model is not None and not is_model(model):
        raise TypeError(f"model must be a pydantic.BaseModel subclass, got {model!r}")
    pmin, pmax = _poll_bounds(poll_min, poll_max)
    seg = Segment.attach(name)
    r = Reader()
    try:
        r._map(seg, f"segment {name!r}")
        if r._kind not in (_core.KIND_ARRAY, _core.KIND_MESSAGE) or r._flags & _core.FLAG_QUEUE:
            raise BufferCorrupt(f"segment {name!r} is not a stream (it is a ring?)")
        try:
            meta = decode_meta(r._meta)
            kind = meta["kind"]
            hash_ok = _meta_hash(meta) == r._schema_hash
        except Exception:  # any garbage: bad UTF-8 or JSON, deep nesting, wrong shapes
            raise BufferCorrupt(f"segment {name!r} has unreadable schema metadata") from None
        if not hash_ok:
            raise BufferCorrupt(f"segment {name!r}: schema metadata does not match its hash")
        if (_KINDS.get(kind) if isinstance(kind, str) else None) != r._kind:
            raise BufferCorrupt(f"segment {name!r}: header kind {r._kind} does not match "
                                f"its metadata kind {kind!r}")
        r._spec = None
        r._model = model
        r._views_ro = [None] * r._nslots
        if kind == "array":
            if model is not None:
                raise SchemaMismatch(f"{name!r} is an array stream; model= is for message streams")
            try:
                r._spec = ArraySpec.from_json(meta)
            except Exception as e:  # whatever numpy makes of a forged descr
                raise BufferCorrupt(f"segment {name!r} has a bad array schema: {e}") from None
            if r._spec.nbytes > r._slot_size:
                raise BufferCorrupt(f"segment {name!r}: samples larger than its slots")
            r._set_array(r._spec.dtype, r._spec.shape)
            r._schema = r._spec
            decode = None
        elif kind == "message":
            if model is not None and _meta_hash({"kind": "message",
                                                 "schema": model_schema(model)}) != r._schema_hash:
                raise SchemaMismatch(
                    f"model {model.__name__} does not match the schema of stream {name!r} "
                    f"(written as {meta.get('model')})")
            decode = MessageCodec(model).decode
            r._schema = model if model is not None else meta.get("schema")
        else:
            raise BufferCorrupt(f"segment {name!r} has unknown kind {kind!r}")
        r._setup_reader(decode, start == "oldest")
        r._watch_writer_of_stream()
        r._poll_min_ns, r._poll_max_ns = pmin, pmax
        r._add_readers(1)
    except BaseException:
        if not r.closed:
            r._unbind()
        seg.close()
        raise
    return r


def _poll_bounds(poll_min, poll_max):
    pmin = 0.0001 if poll_min is None else float(poll_min)
    pmax = 0.002 if poll_max is None else float(poll_max)
    if not 0 < pmin <= pmax:
        raise ValueError(f"need 0 < poll_min <= poll_max, got {pmin} and {pmax}")
    return int(pmin * 1e9), int(pmax * 1e9)


def unlink(name):
    """Remove the segment ``name``.  A missing name is a no-op.

    Processes that have the segment mapped keep using it until they close;
    the memory is freed when the last one does.
    """
    _unlink_name(name)


class CallbackHandle:
    """Runs ``fn(sample, seq)`` on a daemon thread until ``stop()``, or
    until the stream's writer is gone and every sample was delivered
    (``writer_gone`` is then True); returned by ``Reader.on_data()``.  A
    context manager that stops on exit.
    """

    def __init__(self, reader, fn, mode):
        self._reader = reader
        self._fn = fn
        self._mode = mode
        self._stop = threading.Event()
        self.writer_gone = False
        self._thread = threading.Thread(target=self._run, name=f"gb-on_data-{reader.name}",
                                        daemon=True)
        self._thread.start()

    @property
    def overruns(self):
        """Samples the thread's reader missed because the writer lapped it."""
        return self._reader.overruns

    @property
    def running(self):
        """True while the thread runs."""
        return self._thread.is_alive()

    def _run(self):
        r, fn, stop = self._reader, self._fn, self._stop
        seen = r._tail
        try:
            while not stop.is_set():
                try:
                    if self._mode == "next":
                        sample, seq = r._next_seq(0.05)
                    else:
                        if not r._wait_new(seen, 0.05):
                            continue
                        sample, seq = r._latest_seq()
                        seen = seq + 1
                except Empty:
                    continue
                except BufferClosed:
                    return
                except WriterGone:
                    self.writer_gone = True  # every sample was delivered
                    return
                try:
                    fn(sample, seq)
                except Exception:
                    log.exception("on_data callback raised; continuing")
        finally:
            r.close()

    def stop(self, timeout=2.0):
        """Stop the thread and wait up to ``timeout`` s for it to finish."""
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class Consumer:
    """A stream reader that calls ``callback()`` on a background thread.

    Subclass it and implement ``callback()``; before each call the
    framework sets ``self.data`` (the sample) and ``self.seq`` (its
    sequence number).  ``mode`` is as for
    ``Reader.on_data()``.  As a context manager it starts on entry and
    closes on exit.

    ```python
    class Printer(gb.Consumer):
        def callback(self):
            print(self.seq, self.data)

    with Printer.attach("status", mode="next"):
        ...
    ```
    """

    def __init__(self, reader, mode="latest"):
        if mode not in ("latest", "next"):
            raise ValueError(f"mode must be 'latest' or 'next', got {mode!r}")
        self.reader = reader
        self.mode = mode
        self.data = None
        self.seq = None
        self._handle = None

    @classmethod
    def attach(cls, name, model=None, mode="latest"):
        """A consumer of the stream ``name`` (``model`` as for
        ``gb.attach``); not started yet."""
        return cls(attach(name, model), mode)

    def callback(self):
        """Handle ``self.data`` (sample number ``self.seq``).  Runs on the
        consumer's thread; an exception is logged and the thread goes on."""
        raise NotImplementedError("Consumer subclasses implement callback()")

    def _deliver(self, sample, seq):
        self.data, self.seq = sample, seq
        self.callback()

    def start(self):
        """Start the background thread (``RuntimeError`` if it runs);
        returns ``self``.  It reads from after the newest sample now."""
        if self._handle is not None and self._handle.running:
            raise RuntimeError("consumer already started")
        self._handle = CallbackHandle(self.reader._clone(), self._deliver, self.mode)
        return self

    def stop(self, timeout=2.0):
        """Stop the thread, waiting up to ``timeout`` s; ``start()`` may
        follow."""
        if self._handle is not None:
            self._handle.stop(timeout)

    @property
    def writer_gone(self):
        """True once the thread stopped because the stream's writer closed
        it or died and every sample had been delivered (SPEC §2.2)."""
        return self._handle.writer_gone if self._handle is not None else False

    @property
    def dropped(self):
        """Samples this consumer missed because the writer lapped it."""
        return self._handle.overruns if self._handle is not None else 0

    def close(self):
        """Stop the thread and close the reader."""
        self.stop()
        self.reader.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
