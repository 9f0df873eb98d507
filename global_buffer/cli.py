"""The ``python -m global_buffer`` command line (SPEC §7).

Subcommands:

- ``demo``   a writer process streams frames to reader processes through a
             stream, then a producer process feeds consumer processes
             through a Ring, with live rates and latency; ends by itself.
- ``ls``     the live segments, one line each.
- ``stat``   the header of one segment and its rate over a second.
- ``unlink`` remove a segment.
- ``clean``  remove the segments whose owner process is gone.

Exit codes: 0 success, 1 a named segment is missing or unreadable (or the
demo saw an error), 2 bad arguments, 130 interrupted by Ctrl-C.
"""
import argparse
import contextlib
import fnmatch
import json
import os
import re
import shutil
import signal
import stat
import struct
import sys
import time
from typing import Any, Set

__all__ = ["main", "segment_info"]

PROG = "python -m global_buffer"

_RING_MAGIC = 0x31304752425F4247  # "GB_RGR01": csrc/gb_ring.h GB_MAGIC
_BLOB_MAGIC = 0x31304F4C425F4247  # "GB_BLO01": out-of-line item of a ring
_BLOB_NAME = re.compile(r"^(?P<ring>.+)\.b(?P<pid>\d+)\.[0-9a-f]+$")  # ring._Blobs._name


class CliError(Exception):
    """A one-line message for the user, and the exit code to leave with."""

    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------
# reading segment headers
# ---------------------------------------------------------------------------

def _kind_name(kind, flags):
    from . import _core
    payload = {_core.KIND_ARRAY: "array", _core.KIND_MESSAGE: "message",
               _core.KIND_OBJECT: "object", _core.KIND_BYTES: "bytes"}.get(kind, f"kind{kind}")
    if flags & _core.FLAG_QUEUE:
        family = "queue"
    elif flags & _core.FLAG_BROADCAST:
        family = "bcast"
    else:
        family = "stream"
    return f"{family}:{payload}"


def _schema_text(meta):
    """Short description of a segment's schema metadata."""
    if not isinstance(meta, dict):
        return "-"
    if "dtype" in meta and "shape" in meta:
        try:
            import numpy as np

            from .schema import ArraySpec
            spec = ArraySpec.from_json(meta)
            dims = "x".join(str(d) for d in spec.shape) or "scalar"
            return f"{np.dtype(spec.dtype).name}[{dims}]"
        except Exception:  # noqa: BLE001 - a display helper must not fail
            return f"{meta.get('dtype')}{meta.get('shape')}"
    if meta.get("model"):
        return str(meta["model"])
    if meta.get("kind"):
        return str(meta["kind"])
    return "-"


def segment_info(name):
    """Header fields of the segment ``name`` as a dict, read without
    registering as a reader (nothing in the segment is changed).

    Raises ``gb.BufferNotFound`` for a missing name, ``gb.BufferCorrupt``
    for bytes that are not a valid segment.
    """
    from . import _core
    from .errors import BufferCorrupt
    from .schema import decode_meta
    from .segment import Segment, process_alive

    seg = Segment.attach(name)
    try:
        magic = struct.unpack_from("<Q", seg.mm, 0)[0] if seg.size >= 8 else 0
        if magic == _BLOB_MAGIC:
            size, = struct.unpack_from("<Q", seg.mm, 8)
            m = _BLOB_NAME.match(name)
            pid = int(m.group("pid")) if m else 0
            return {"name": name, "kind": "blob", "segment_bytes": seg.size,
                    "capacity": None, "slot_size": size, "owner_pid": pid,
                    "owner_alive": process_alive(pid), "items": None, "readers": None,
                    "ring": m.group("ring") if m else None}
        h = _core.Handle()
        try:
            h._bind(seg.mm, f"segment {name!r}")
            kind, flags = h._kind, h._flags
            owner_pid, owner_start = h._owner
            writer_pid, writer_start = h._writer
            try:
                meta = decode_meta(h._meta)
            except ValueError:
                meta = None
            now = _core.now_ns()
            hb = h._heartbeat_ns
            info = {
                "name": name,
                "kind": _kind_name(kind, flags),
                "schema": _schema_text(meta),
                "schema_hash": f"{h._schema_hash:016x}",
                "capacity": h.capacity,
                "slots": h._nslots,
                "slot_size": h._slot_size,
                "slot_stride": h._slot_stride,
                "segment_bytes": seg.size,
                "maxsize": h._maxsize,
                "owner_pid": owner_pid,
                "owner_alive": process_alive(owner_pid, owner_start),
                "writer_pid": writer_pid,
                "writer_alive": process_alive(writer_pid, writer_start) if writer_pid else None,
                "heartbeat_age_s": (now - hb) / 1e9 if hb else None,
                "age_s": (now - h._created_ns) / 1e9,
                "items": h._tail,
                "head": h._head,
                "readers": h._readers,
                "wake_calls": h._wake_calls,
                "queue": bool(flags & _core.FLAG_QUEUE),
            }
        finally:
            h._unbind()
        if info["queue"]:
            info["waiting"] = max(0, info["items"] - info["head"])
        from .bridge import bridge_info  # across hosts (SPEC §9): mirrors and exports
        info["bridge"] = bridge_info(name)
        return info
    except struct.error:
        raise BufferCorrupt(f"segment {name!r} is too small to be a segment") from None
    finally:
        seg.close()


def _exists(name):
    from .segment import list_names, os_name
    osname = os_name(name)
    if os.path.isdir("/dev/shm"):
        return os.path.exists("/dev/shm/" + osname[1:])
    return name in list_names()  # pragma: no cover - not Linux (unverified)


def _check_name(name):
    from .segment import validate_name
    try:
        validate_name(name)
    except (TypeError, ValueError) as e:
        raise CliError(str(e), 2) from None


def _info_or_error(name):
    from .errors import BufferNotFound, GlobalBufferError
    _check_name(name)
    try:
        return segment_info(name)
    except BufferNotFound:
        raise CliError(f"no segment named {name!r} (see `{PROG} ls`)") from None
    except PermissionError as e:
        raise CliError(str(e)) from None
    except GlobalBufferError as e:
        first = str(e).splitlines()[0] if str(e) else f"{name!r}: {type(e).__name__}"
        raise CliError(first) from None


def _size(n):
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" or n >= 100 else f"{n:.1f} {unit}"
        n /= 1024


def _alive(flag):
    return "-" if flag is None else ("alive" if flag else "dead")


# ---------------------------------------------------------------------------
# ls / stat / unlink / clean
# ---------------------------------------------------------------------------

_SHM = "/dev/shm"


def _segment_names():
    """Names of the global_buffer segments: the regular files of /dev/shm
    named ``gb.*``.  A pipe's wake-up FIFO (``gb.<ring>.fifo``,
    multiprocessing/connection.py) lives there too but is not a segment."""
    from .segment import PREFIX, list_names
    names = []
    for name in list_names():
        try:
            if stat.S_ISREG(os.lstat(os.path.join(_SHM, PREFIX + name)).st_mode):
                names.append(name)
        except FileNotFoundError:
            continue  # removed since we listed it
        except OSError:
            names.append(name)  # cannot tell: list it (as unreadable, if it is)
    return names


def _helper_names():
    """(name, kind) of the other ``gb.*`` files: pipes' wake-up FIFOs."""
    from .segment import PREFIX, list_names
    out = []
    for name in list_names():
        try:
            mode = os.lstat(os.path.join(_SHM, PREFIX + name)).st_mode
        except OSError:
            continue
        if stat.S_ISFIFO(mode) and name.endswith(".fifo"):
            out.append((name, "fifo"))
    return out


def _in_use(paths):
    """Those of ``paths`` that a live process has open or mapped (Linux:
    /proc/*/fd and /proc/*/maps; processes we may not inspect are skipped
    -- they cannot open our 0600 files either, unless root)."""
    paths = set(paths)
    used: Set[str] = set()
    if not paths or not os.path.isdir("/proc"):
        return used
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target in paths:
                    used.add(target)
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    path = line.rstrip("\n").partition("/")[2]
                    if path and "/" + path in paths:
                        used.add("/" + path)
        except OSError:
            continue  # gone, or not ours to inspect
    return used


def cmd_ls(args, out):
    from .errors import BufferNotFound
    rows = []
    for name in _segment_names():
        try:
            rows.append(segment_info(name))
        except BufferNotFound:
            continue  # removed since we listed it
        except Exception as e:  # noqa: BLE001 - one bad segment must not hide the rest
            if _BLOB_NAME.match(name):
                continue  # an out-of-line item still being written: not broken
            rows.append({"name": name, "kind": "?",
                         "error": (str(e).splitlines() or [type(e).__name__])[0]})
    if args.json:
        print(json.dumps(rows, indent=1), file=out)
        return 0
    if not rows:
        print("no global_buffer segments", file=out)
        return 0
    header = ("NAME", "KIND", "CAPACITY", "SLOT", "OWNER", "ITEMS", "READERS")
    table = [header]
    for r in rows:
        if "error" in r:
            table.append((r["name"], "?", "-", "-", "-", "-", f"unreadable: {r['error']}"))
            continue
        owner = f"{r['owner_pid']} {_alive(r['owner_alive'])}" if r["owner_pid"] else "-"
        b = r.get("bridge")
        kind = r["kind"] + (f" (mirror of {b['peer']}, link {b['link']}, lost {b['lost']})"
                            if b and b["role"] == "import" else "")
        table.append((r["name"], kind, _dash(r["capacity"]), _size(r["slot_size"]),
                      owner, _dash(r["items"]), _dash(r["readers"])))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header) - 1)]
    for row in table:
        cells = [str(c).ljust(w) for c, w in zip(row, widths)] + [str(row[-1])]
        print("  ".join(cells).rstrip(), file=out)
    return 0


def _dash(v):
    return "-" if v is None else v


def cmd_stat(args, out):
    info = _info_or_error(args.name)
    if args.interval > 0 and info["kind"] != "blob":
        t0 = time.monotonic()
        time.sleep(args.interval)
        try:
            later = segment_info(args.name)
        except Exception:  # noqa: BLE001 - removed while we watched
            later = None
        dt = time.monotonic() - t0
        if later is not None:
            info["rate_items_per_s"] = (later["items"] - info["items"]) / dt
            info["rate_bytes_per_s"] = info["rate_items_per_s"] * (info["slot_size"] or 0)
            info["items"] = later["items"]
    if args.json:
        print(json.dumps(info, indent=1), file=out)
        return 0
    lines = [
        ("name", info["name"]),
        ("kind", info["kind"]),
        ("schema", info.get("schema", "-")),
        ("capacity", _dash(info.get("capacity"))),
        ("slots", _dash(info.get("slots"))),
        ("slot size", f"{_size(info['slot_size'])} ({info['slot_size']} bytes)"),
        ("segment", _size(info["segment_bytes"])),
        ("owner", f"pid {info['owner_pid']} ({_alive(info['owner_alive'])})"),
    ]
    if info["kind"] != "blob":
        if info["writer_pid"]:
            lines.append(("writer", f"pid {info['writer_pid']} ({_alive(info['writer_alive'])})"))
        if info["heartbeat_age_s"] is not None:
            lines.append(("heartbeat", f"{info['heartbeat_age_s']:.2f} s ago"))
        lines.append(("created", f"{info['age_s']:.1f} s ago"))
        lines.append(("items written", info["items"]))
        if info["queue"]:
            lines.append(("items waiting", info["waiting"]))
            if info["maxsize"] > 0:
                lines.append(("maxsize", info["maxsize"]))
        lines.append(("readers", info["readers"]))
        lines.append(("wake calls", info["wake_calls"]))
        lines.append(("schema hash", info["schema_hash"]))
        b = info.get("bridge")
        if b:  # across hosts (SPEC §9)
            what = f"mirror of {b['peer']}" if b["role"] == "import" else "exported"
            lines.append(("bridge", f"{what} by bridge pid {b['bridge_pid']}, link {b['link']}, "
                                    f"{b['state']}; moved {b['items']} items, {b['bytes']} "
                                    f"bytes; lost {b['lost']}"))
        if "rate_items_per_s" in info:
            lines.append(("rate", f"{info['rate_items_per_s']:.1f} items/s, "
                                  f"{info['rate_bytes_per_s'] / 1e6:.1f} MB/s "
                                  f"(over {args.interval:g} s)"))
    else:
        lines.append(("ring", info.get("ring") or "-"))
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"{k.ljust(width)}  {v}", file=out)
    return 0


def cmd_unlink(args, out):
    from .segment import unlink
    _check_name(args.name)
    if not _exists(args.name):
        raise CliError(f"no segment named {args.name!r} (see `{PROG} ls`)")
    note = ""
    try:
        info = segment_info(args.name)
        if info["owner_alive"]:
            note = f" (its owner, pid {info['owner_pid']}, is still running)"
    except Exception:  # noqa: BLE001 - a corrupt segment can still be removed
        pass
    unlink(args.name)
    print(f"removed {args.name}{note}", file=out)
    return 0


def _clean_candidates(patterns):
    """(name, reason) of each segment whose owner is gone, then of each
    helper file left by gone processes: out-of-line items and pipes'
    FIFOs whose ring is gone (or goes now) and that no live process has
    open or mapped."""
    from .errors import BufferNotFound
    from .segment import PREFIX
    names = _segment_names()
    present = set(names)
    found = []
    for name in names:
        if patterns and not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        try:
            info = segment_info(name)
        except BufferNotFound:
            continue  # removed meanwhile
        except Exception:  # noqa: BLE001 - unreadable: owner unknown, leave it
            continue
        if info["kind"] == "blob":
            ring = info.get("ring")
            ring_gone = ring not in present
            if not ring_gone:
                try:
                    ring_gone = not segment_info(ring)["owner_alive"]
                except Exception:  # noqa: BLE001
                    ring_gone = False
            if not info["owner_alive"] and ring_gone:
                found.append((name, f"blob of pid {info['owner_pid']}, which is gone"))
        elif info["owner_pid"] and not info["owner_alive"]:
            found.append((name, f"owner pid {info['owner_pid']} is gone"))
    going = {n for n, _ in found}
    for name, _kind in _helper_names():
        if patterns and not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        ring = name[:-len(".fifo")]
        if ring not in present or ring in going:
            found.append((name, f"wake-up FIFO of pipe ring {ring}, which is gone"))
    # a blob a live consumer still maps holds an item it may yet read; a
    # FIFO a live process holds open is a pipe end still in use
    paths = {os.path.join(_SHM, PREFIX + n): n for n, why in found
             if why.startswith(("blob", "wake-up"))}
    busy = {paths[p] for p in _in_use(paths)}
    return [(n, why) for n, why in found if n not in busy]


def cmd_clean(args, out):
    from .segment import unlink
    found = _clean_candidates(args.patterns)
    verb = "would remove" if args.dry_run else "removed"
    for name, why in found:
        if not args.dry_run:
            unlink(name)
        print(f"{verb} {name} ({why})", file=out)
    n = len(found)
    print(f"{verb} {n} segment{'s' if n != 1 else ''} with a dead owner", file=out)
    return 0


# ---------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------

def _parse_shape(text):
    try:
        shape = tuple(int(p) for p in text.lower().replace(",", "x").split("x") if p)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"shape must look like 480x640x3, got {text!r}") from None
    if not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"shape must have positive dimensions, got {text!r}")
    n = 1
    for d in shape:
        n *= d
    if n < 8:
        raise argparse.ArgumentTypeError("frames must have at least 8 bytes (a timestamp)")
    if n > 1 << 31:
        raise argparse.ArgumentTypeError("frames larger than 2 GiB are not for a demo")
    return shape


def _number(kind, *, above_zero=False, most=None, too_big="", what="a number"):
    """An argparse type: ``kind(text)``, >= 0 (> 0 with ``above_zero``) and
    at most ``most`` (else ``too_big`` is the message)."""
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < 0 or (above_zero and v == 0):
            sign = ">" if above_zero else ">="
            raise argparse.ArgumentTypeError(f"must be {sign} 0, got {text!r}")
        if most is not None and v > most:
            raise argparse.ArgumentTypeError(too_big)
        return v
    return parse


def _positive(kind):
    return _number(kind, above_zero=True)


_non_negative = _number(float)
_item_bytes = _number(int, most=64 << 20, what="a whole number of bytes",
                      too_big="items larger than 64 MiB are not for a demo")


def _orphaned(parent):
    return os.getppid() != parent


def _wait_go(go, stop, parent, limit):
    """Child: wait for the parent's go; False if it stops the demo (or is
    gone) first."""
    deadline = time.monotonic() + limit
    while not go.wait(0.1):
        if stop.is_set() or _orphaned(parent) or time.monotonic() > deadline:
            return False
    return True


@contextlib.contextmanager
def _sigint_held():
    """Start children with SIGINT blocked.  They inherit the mask, through
    spawn's exec too, so a Ctrl-C while they import is not a traceback in
    each of them; this process gets it as soon as the block ends."""
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - Windows
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _demo_writer(name, shape, capacity, rate, stats, ready, go, stop, parent, limit):
    """Child: create the stream, then write frames until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    import numpy as np

    import global_buffer as gb

    from ._core import now_ns

    with gb.create(name, gb.ArraySpec("uint8", shape), capacity) as w:
        frame = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
        stamp = frame.reshape(-1)[:8].view(np.int64)  # send time, for latency
        ready.set()
        if not _wait_go(go, stop, parent, limit):
            return
        end = time.monotonic() + limit
        period = 1.0 / rate if rate else 0.0
        next_t = time.monotonic()
        n = 0
        while not stop.is_set():
            if period:
                delay = next_t - time.monotonic()
                if delay > 0:
                    if _orphaned(parent):
                        break
                    time.sleep(min(delay, 0.05))  # a slow --rate still sees a stop soon
                    continue
                next_t += period
            stamp[0] = now_ns()
            w.write(frame)
            n += 1
            stats[0] = n
            if n % 256 == 0 and (time.monotonic() > end or _orphaned(parent)):
                break
        # leaving the with-block unlinks the segment; readers keep their mapping


def _demo_reader(name, index, stats, ready, stop, parent, limit):
    """Child: read every frame in order (next_into: no allocation)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import numpy as np

    import global_buffer as gb

    from ._core import now_ns

    base = 1 + 4 * index
    try:
        r = gb.attach(name)
    except gb.BufferNotFound:
        if stop.is_set():
            return  # the demo was stopped (and the stream removed) before we got here
        raise
    with r:
        out = np.empty(r.shape, r.dtype)
        stamp = out.reshape(-1)[:8].view(np.int64)
        ready.set()
        end = time.monotonic() + limit
        frames = lat_sum = 0
        draining = False
        while time.monotonic() < end and not _orphaned(parent):
            if not draining and stop.is_set():
                draining = True  # writer has finished: take what is left, then go
            try:
                r.next_into(out, timeout=0.02 if draining else 0.1)
            except gb.WriterGone:
                break  # the writer closed the stream and we have read it all
            except gb.Empty:
                if draining:
                    break
                continue
            frames += 1
            lat_sum += now_ns() - int(stamp[0])
            stats[base] = frames
            stats[base + 1] = r.overruns
            stats[base + 2] = lat_sum
        stats[base + 1] = r.overruns
        stats[base + 3] = 1  # finished cleanly


def _mb(bytes_per_s):
    mb = bytes_per_s / 1e6
    return f"{mb:.0f}" if mb >= 100 else f"{mb:.1f}"


def _rate_line(elapsed, snap, prev, dt, nreaders, frame_bytes):
    parts = [f"{elapsed:5.1f}s  writer {(snap[0] - prev[0]) / dt:7.0f} fr/s"]
    for i in range(nreaders):
        b = 1 + 4 * i
        fps = (snap[b] - prev[b]) / dt
        dn = snap[b] - prev[b]
        lat = (snap[b + 2] - prev[b + 2]) / dn / 1e3 if dn else 0.0
        parts.append(f"r{i + 1} {fps:7.0f} fr/s {_mb(fps * frame_bytes):>7} MB/s "
                     f"lat {lat:6.0f} us ovr {snap[b + 1]}")
    return " | ".join(parts)


def _show(out, tty, line):
    """A live line: rewritten in place on a terminal (cut to its width, so
    that it never wraps), one plain line each time otherwise."""
    if tty:
        width = max(20, shutil.get_terminal_size().columns - 1)
        print("\r" + line[:width] + "\x1b[K", end="", file=out, flush=True)
    else:
        print(line, file=out, flush=True)


def _watch(out, tty, seconds, proc, line):
    """Show ``line(elapsed, dt)`` every refresh for ``seconds``, or until
    ``proc`` exits; return the seconds watched."""
    t0 = time.monotonic()
    end, tprev = t0 + seconds, t0
    refresh = 0.25 if tty else 1.0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        time.sleep(min(refresh, end - now))
        now = time.monotonic()
        _show(out, tty, line(now - t0, max(now - tprev, 1e-9)))
        tprev = now
        if not proc.is_alive():
            break
    if tty:
        print(file=out)
    return time.monotonic() - t0


def _reap(procs):
    """Join every child with a timeout; kill the ones still running."""
    for p in procs:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join(5)


def cmd_demo(args, out):
    import multiprocessing as mp

    name = args.name or f"demo-{os.getpid()}"
    ring_name = f"{name}-ring"
    for n in (name, ring_name):
        _check_name(n)
        if _exists(n):
            raise CliError(f"a segment named {n!r} already exists; pick another --name")
    ctx = mp.get_context("spawn")
    tty = out.isatty()
    phase = args.seconds / 2
    readers = f"{args.readers} reader process{'es' if args.readers != 1 else ''}"
    print(f"global_buffer demo: a stream, then a Ring, {phase:g} s each, {readers}",
          file=out, flush=True)
    ring = _RingDemo(args, ctx, ring_name, phase)
    try:
        code = _demo_stream(args, ctx, name, phase, tty, out, ring)
        if code == 130:
            return code
        return ring.run(tty, out) or code
    finally:
        ring.close()


def _demo_stream(args, ctx, name, seconds, tty, out, ring):
    """Phase 1: a writer process streams frames to ``--readers`` processes,
    each of which reads every frame (or counts it as an overrun)."""
    from .segment import unlink

    shape, nreaders = args.shape, args.readers
    frame_bytes = 1
    for d in shape:
        frame_bytes *= d
    stats = ctx.RawArray("q", 1 + 4 * nreaders)
    ready_w, go, stop_w, stop_r = ctx.Event(), ctx.Event(), ctx.Event(), ctx.Event()
    limit = seconds + 60.0  # children give up by themselves if we vanish
    parent = os.getpid()
    procs = []
    print(f"stream {name!r}: 1 writer -> {nreaders} reader{'s' if nreaders != 1 else ''}, "
          f"each reader gets every frame; {'x'.join(map(str, shape))} uint8 frames "
          f"({frame_bytes / 1e6:.2f} MB), capacity {args.capacity}, "
          f"{'full speed' if not args.rate else f'{args.rate:g} frames/s'}",
          file=out, flush=True)
    try:
        w = ctx.Process(target=_demo_writer, name="gb-demo-writer",
                        args=(name, shape, args.capacity, args.rate, stats, ready_w, go,
                              stop_w, parent, limit))
        with _sigint_held():
            w.start()
        procs.append(w)
        ring.start()  # the ring phase's processes start while this one's do
        if not _wait_event(ready_w, w, 60):
            raise CliError(f"the writer process failed to start (exit code {w.exitcode})")
        readies = []
        for i in range(nreaders):
            ev = ctx.Event()
            p = ctx.Process(target=_demo_reader, name=f"gb-demo-reader-{i + 1}",
                            args=(name, i, stats, ev, stop_r, parent, limit))
            with _sigint_held():
                p.start()
            procs.append(p)
            readies.append((ev, p))
        for ev, p in readies:
            if not _wait_event(ev, p, 60):
                raise CliError(f"reader {p.name} failed to start (exit code {p.exitcode})")
        ring.wait_ready()  # none of them is still starting while frames are timed

        prev = [list(stats)]

        def line(elapsed, dt):
            snap = list(stats)
            text = _rate_line(elapsed, snap, prev[0], dt, nreaders, frame_bytes)
            prev[0] = snap
            return text

        go.set()
        elapsed = _watch(out, tty, seconds, w, line)
        stop_w.set()
        w.join(30)
        stop_r.set()
        for p in procs[1:]:
            p.join(30)
        return _demo_summary(stats, procs, nreaders, frame_bytes, elapsed, out)
    except KeyboardInterrupt:
        if tty:
            print(file=out)
        print("interrupted: stopping the demo", file=out, flush=True)
        return 130
    finally:
        stop_w.set()
        stop_r.set()
        _reap(procs)
        if ready_w.is_set():
            unlink(name)  # the writer unlinks on exit; this covers a writer that died


def _wait_event(ev, proc, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ev.wait(0.1):
            return True
        if not proc.is_alive():
            return False
    return False


def _demo_summary(stats, procs, nreaders, frame_bytes, elapsed, out):
    snap = list(stats)
    written = snap[0]
    print(f"stream done in {elapsed:.1f} s: writer published {written} frames "
          f"({written / elapsed:.0f} frames/s, {_mb(written * frame_bytes / elapsed)} MB/s)",
          file=out)
    ok = procs[0].exitcode == 0
    if not ok:
        print(f"  writer exited with code {procs[0].exitcode}", file=out)
    for i in range(nreaders):
        b = 1 + 4 * i
        frames, overruns, lat, finished = snap[b:b + 4]
        code = procs[1 + i].exitcode
        lat_us = lat / frames / 1e3 if frames else 0.0
        accounted = frames + overruns == written
        print(f"  reader {i + 1}: {frames} frames "
              f"({frames / elapsed:.0f} frames/s, {_mb(frames * frame_bytes / elapsed)} MB/s), "
              f"{overruns} overruns, mean latency {lat_us:.0f} us"
              f"{'' if accounted else '  [frames + overruns != published!]'}", file=out)
        if code != 0 or not finished:
            print(f"  reader {i + 1} exited with code {code}", file=out)
            ok = False
        ok = ok and accounted and frames > 0
    if ok:
        print("every frame was received intact or counted as an overrun "
              "(the writer never waits for readers)", file=out)
    return 0 if ok else 1


# -- the ring phase -------------------------------------------------------------

_RING_MAXSIZE = 1024           # items waiting before the producer's put() blocks
_RING_FIELDS = 7               # per consumer in the shared stats, see _demo_consumer
_SQ_MOD = (1 << 61) - 1        # sums of squared sequence numbers are kept modulo this prime


def _demo_producer(ring, nconsumers, item_bytes, rate, seconds, stats, ready, go, stop,
                   parent, limit):
    """Child: put ``(seq, send time, payload)`` for ``seconds``, then one
    ``None`` per consumer, which tells it that nothing more is coming."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import global_buffer as gb

    from ._core import now_ns

    try:
        payload = os.urandom(item_bytes)
        put = ring.put
        ready.set()
        if not _wait_go(go, stop, parent, limit):
            return
        next_t = now_ns()
        end = next_t + int(seconds * 1e9)
        period = int(1e9 / rate) if rate else 0
        n = 0
        while True:
            t = now_ns()  # the send time: the consumer's clock is the same (CLOCK_MONOTONIC)
            if t >= end:
                break
            if period:
                if t < next_t:
                    if stop.is_set() or _orphaned(parent):
                        break
                    time.sleep(min(next_t - t, 50_000_000) / 1e9)
                    continue
                next_t += period
            try:
                put((n, t, payload), timeout=0.1)
            except gb.Full:  # every consumer is behind (or gone)
                if stop.is_set() or _orphaned(parent):
                    break
                continue
            n += 1
            stats[0] = n
            if (period or n % 1024 == 0) and (stop.is_set() or _orphaned(parent)):
                break
        stats[1] = 1  # finished cleanly
        give_up = time.monotonic() + 5.0
        sent = 0
        while sent < nconsumers and time.monotonic() < give_up and not _orphaned(parent):
            try:
                put(None, timeout=0.1)
                sent += 1
            except gb.Full:
                continue
    finally:
        ring.close()


def _demo_consumer(ring, index, stats, ready, stop, parent, limit):
    """Child: get items until the producer's ``None``.  Publishes its count
    and put -> get latency as it goes; the count, sum and sum of squares of
    the sequence numbers it got (and how many came out of put order) at the
    end, for the lost/duplicated check."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import global_buffer as gb

    from ._core import now_ns

    b = 2 + _RING_FIELDS * index
    try:
        get = ring.get
        n = seq_sum = seq_sq = lat_sum = lat_max = disorder = 0
        last = -1
        ready.set()
        end = time.monotonic() + limit
        while True:
            try:
                item = get(timeout=0.1)
            except gb.Empty:
                if stop.is_set() or _orphaned(parent) or time.monotonic() > end:
                    break
                continue
            if item is None:
                break  # the producer has finished and everything before this is taken
            seq, sent, _ = item
            lat = now_ns() - sent
            n += 1
            seq_sum += seq
            seq_sq = (seq_sq + seq * seq) % _SQ_MOD
            if seq <= last:
                disorder += 1
            last = seq
            lat_sum += lat
            if lat > lat_max:
                lat_max = stats[b + 4] = lat
            stats[b] = n
            stats[b + 3] = lat_sum
        stats[b + 1] = seq_sum
        stats[b + 2] = seq_sq
        stats[b + 5] = disorder
        stats[b + 6] = 1  # finished cleanly
    finally:
        ring.close()


def _ring_line(elapsed, snap, prev, dt, nconsumers, queued):
    """The totals first: on a terminal the line is cut to its width."""
    got = lat = 0
    parts = []
    for i in range(nconsumers):
        b = 2 + _RING_FIELDS * i
        dn, dlat = snap[b] - prev[b], snap[b + 3] - prev[b + 3]
        got += dn
        lat += dlat
        parts.append(f"c{i + 1} {dn / dt:7.0f} it/s lat {dlat / dn / 1e3 if dn else 0:5.0f} us")
    total = (f"{elapsed:5.1f}s  put {(snap[0] - prev[0]) / dt:7.0f} it/s  got {got / dt:7.0f} "
             f"it/s  lat {lat / got / 1e3 if got else 0:5.0f} us  queued {queued:4d}")
    return " | ".join([total] + parts)


class _RingDemo:
    """Phase 2: a producer process puts small items into a queue ring that
    ``--readers`` consumer processes share: each item goes to exactly one.

    ``start()`` makes the ring and starts the processes while the stream's
    start too (the two start-ups overlap); they wait until ``run()``.
    ``close()`` always: it joins or kills them and removes the ring."""

    def __init__(self, args, ctx, name, seconds):
        self.args, self.ctx, self.name, self.seconds = args, ctx, name, seconds
        self.nconsumers = args.readers
        self.stats = ctx.RawArray("q", 2 + _RING_FIELDS * self.nconsumers)
        self.go, self.stop_p, self.stop_c = ctx.Event(), ctx.Event(), ctx.Event()
        self.ring: Any = None  # the Ring, once start() made it
        self.procs = []
        self.readies = []

    def start(self):
        from .ring import Ring

        ctx, args = self.ctx, self.args
        limit = args.seconds + 60.0  # both phases; children give up by themselves if we vanish
        parent = os.getpid()
        self.ring = Ring(_RING_MAXSIZE, name=self.name)  # ours: removed by close(), or at exit
        ready = ctx.Event()
        p = ctx.Process(target=_demo_producer, name="gb-demo-producer",
                        args=(self.ring, self.nconsumers, args.item_bytes, args.rate,
                              self.seconds, self.stats, ready, self.go, self.stop_p, parent,
                              limit))
        with _sigint_held():
            p.start()
        self.procs.append(p)
        self.readies.append((ready, p))
        for i in range(self.nconsumers):
            ready = ctx.Event()
            c = ctx.Process(target=_demo_consumer, name=f"gb-demo-consumer-{i + 1}",
                            args=(self.ring, i, self.stats, ready, self.stop_c, parent, limit))
            with _sigint_held():
                c.start()
            self.procs.append(c)
            self.readies.append((ready, c))

    def wait_ready(self):
        for ev, p in self.readies:
            if not _wait_event(ev, p, 60):
                raise CliError(f"{p.name} failed to start (exit code {p.exitcode})")

    def run(self, tty, out):
        args, n, stats, ring = self.args, self.nconsumers, self.stats, self.ring
        print(f"ring {self.name!r}: 1 producer -> {n} consumer{'s' if n != 1 else ''}, "
              f"each item goes to exactly one consumer; (seq, send time, "
              f"{args.item_bytes}-byte payload) tuples, maxsize {_RING_MAXSIZE}, "
              f"{'full speed' if not args.rate else f'{args.rate:g} items/s'}; "
              f"latency is put -> get, time queued included", file=out, flush=True)
        try:
            self.wait_ready()
            prev = [list(stats)]

            def line(elapsed, dt):
                snap = list(stats)
                text = _ring_line(elapsed, snap, prev[0], dt, n, ring.qsize())
                prev[0] = snap
                return text

            self.go.set()
            producer = self.procs[0]
            elapsed = _watch(out, tty, self.seconds, producer, line)
            self.stop_p.set()
            producer.join(30)
            self.stop_c.set()  # a consumer no end marker reached gives up once the ring is empty
            for c in self.procs[1:]:
                c.join(30)
            return _ring_summary(stats, self.procs, n, args.item_bytes, elapsed, out)
        except KeyboardInterrupt:
            if tty:
                print(file=out)
            print("interrupted: stopping the demo", file=out, flush=True)
            return 130

    def close(self):
        self.stop_p.set()
        self.stop_c.set()
        _reap(self.procs)
        if self.ring is not None:
            self.ring.close()
            self.ring.unlink()  # and any out-of-line items left in it


def _ring_summary(stats, procs, nconsumers, item_bytes, elapsed, out):
    snap = list(stats)
    put = snap[0]
    payload = f", {_mb(put * item_bytes / elapsed)} MB/s of payload" if item_bytes >= 1024 else ""
    print(f"ring done in {elapsed:.1f} s: producer put {put} items "
          f"({put / elapsed:.0f} items/s{payload})", file=out)
    ok = procs[0].exitcode == 0 and snap[1] == 1
    if not ok:
        print(f"  producer exited with code {procs[0].exitcode}", file=out)
    got = seq_sum = seq_sq = disorder = 0
    for i in range(nconsumers):
        b = 2 + _RING_FIELDS * i
        count, s, sq, lat, lat_max, dis, finished = snap[b:b + _RING_FIELDS]
        code = procs[1 + i].exitcode
        share = 100 * count / put if put else 0.0
        latency = (f"mean latency {lat / count / 1e3:.0f} us, max {lat_max / 1e3:.0f} us"
                   if count else "no latency to show")
        print(f"  consumer {i + 1}: {count} items ({count / elapsed:.0f} items/s, "
              f"{share:.0f}% of them), {latency}", file=out)
        if code != 0 or not finished:
            print(f"  consumer {i + 1} exited with code {code}", file=out)
            ok = False
        got += count
        seq_sum += s
        seq_sq = (seq_sq + sq) % _SQ_MOD
        disorder += dis
    problems = []
    if got < put:
        problems.append(f"{put - got} lost")
    elif got > put:
        problems.append(f"{got - put} duplicated")
    elif (seq_sum != put * (put - 1) // 2  # 0 + 1 + ... + (put - 1)
          or seq_sq != (put - 1) * put * (2 * put - 1) // 6 % _SQ_MOD):
        problems.append("as many got as put, but not the same sequence numbers")
    if disorder:
        problems.append(f"{disorder} got out of put order")
    if not put:
        problems.append("nothing was put")
    if problems:
        print(f"ring check: {put} put, {got} got: {', '.join(problems)}: FAILED", file=out)
        return 1
    print(f"ring check: {put} put, {got} got: none lost, none duplicated (count, sum and "
          f"sum of squares of the sequence numbers agree), each consumer's in put order: OK",
          file=out)
    return 0 if ok else 1


# ---------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------

def build_parser():
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Named shared-memory rings for Python processes: demo and segment tools.")
    from . import __version__
    p.add_argument("--version", action="version", version=f"global_buffer {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    d = sub.add_parser(
        "demo", help="frames through a stream, then items through a Ring, between processes",
        description="Two phases, with live rates and latency; ends by itself.  First a "
                    "writer process streams frames to --readers processes through a "
                    "global_buffer stream (every reader gets every frame, or counts it as "
                    "an overrun).  Then a producer process puts small items into a gb.Ring "
                    "that as many consumer processes share (each item goes to exactly one "
                    "of them), and a last line checks that none was lost or duplicated.  "
                    "--shape/--size sets the frames only; ring items are (sequence number, "
                    "send time, payload) tuples with an --item-bytes payload.")
    d.add_argument("--seconds", type=_positive(float), default=4.0,
                   help="time measured, split evenly between the two phases (default 4; "
                        "starting the processes comes on top)")
    d.add_argument("--readers", type=_positive(int), default=2,
                   help="reader processes, and consumer processes of the ring (default 2)")
    d.add_argument("--shape", "--size", type=_parse_shape, default=(480, 640, 3),
                   help="frame shape of the stream, uint8 (default 480x640x3)")
    d.add_argument("--item-bytes", type=_item_bytes, default=32, metavar="N",
                   help="payload bytes of each ring item (default 32; items larger than a "
                        "slot, about 4 KiB, travel out of line)")
    d.add_argument("--rate", type=_non_negative, default=0.0,
                   help="frames, then items, per second to send (default 0: full speed)")
    d.add_argument("--capacity", type=_positive(int), default=8,
                   help="frames the stream holds (default 8; the ring holds "
                        f"{_RING_MAXSIZE} items)")
    d.add_argument("--name", default=None,
                   help="stream name; the ring is NAME-ring (default demo-<pid>)")
    d.set_defaults(func=cmd_demo)

    ls = sub.add_parser("ls", help="list live segments",
                        description="One line per global_buffer segment: name, kind, "
                                    "capacity, slot size, owner pid and whether it is alive, "
                                    "items written, attached readers.")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=cmd_ls)

    st = sub.add_parser("stat", help="show one segment's header and rate",
                        description="Header fields of one segment and its write rate.")
    st.add_argument("name")
    st.add_argument("--interval", type=_non_negative, default=1.0,
                    help="seconds to measure the rate over (default 1; 0: no rate)")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=cmd_stat)

    un = sub.add_parser("unlink", help="remove a segment",
                        description="Remove a segment by name.  Processes that have it "
                                    "mapped keep using it until they close it.")
    un.add_argument("name")
    un.set_defaults(func=cmd_unlink)

    cl = sub.add_parser("clean", help="remove segments whose owner process is gone",
                        description="Remove the segments whose owner process has exited "
                                    "(pid and start time checked, so a reused pid does not "
                                    "count as alive).")
    cl.add_argument("patterns", nargs="*", metavar="PATTERN",
                    help="only names matching these shell patterns (default: all)")
    cl.add_argument("-n", "--dry-run", action="store_true",
                    help="list what would be removed, remove nothing")
    cl.set_defaults(func=cmd_clean)

    be = sub.add_parser("bench", help="quick comparison against multiprocessing",
                        description="Small objects and 1080p frames through a Queue, and "
                                    "Pipe round trips, multiprocessing against "
                                    "global_buffer in the same run (medians of 3; "
                                    "benchmarks/ has the full suite).")
    be.add_argument("--quick", action="store_true", help="one short run per row")
    be.set_defaults(func=cmd_bench)

    from .bridge_cli import add_parser as add_bridge  # across hosts (SPEC §9)
    add_bridge(sub)
    return p


def cmd_bench(args, out):
    from .bench import run
    run(quick=args.quick, out=out)
    return 0


def main(argv=None, out=None):
    """Run the command line; returns the exit code."""
    out = out if out is not None else sys.stdout
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, out)
    except CliError as e:
        print(f"{PROG.split()[-1]}: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... ls | head`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
