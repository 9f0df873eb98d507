"""Zero-copy 1080p frames, one writer process -> one reader process:
gb's ``view()`` reads against iceoryx2's zero-copy pub/sub, in the same run
(issue 13, "Benchmarks").

    python -m benchmarks.zero_copy            # full run
    python -m benchmarks.zero_copy --quick    # fewer rounds, fewer frames
    python -m benchmarks.zero_copy --json out.json

Rows (1080x1920x3 uint8 frames, 6.2 MB; every transport holds CAPACITY):

(a) ``gb.Ring(schema=ArraySpec)``, producer ``with ring.reserve() as buf:
    buf[...] = frame`` (zero-copy put), consumer ``with ring.view() as arr:``
    (zero-copy get).  Lossless: the producer waits for a free slot.
(a') the same ring, producer ``ring.put(frame)`` (the ring copies the frame
    in, with ordinary stores: unlike a stream's ``write()``, queue rings
    leave streaming stores off for their copying consumers), consumer
    ``view()``: for a producer that has its frame already made.
(b) the same ring, consumer ``ring.get_into(out)`` (one copy, no allocation).
(c) the same ring, consumer ``ring.get()`` (one copy into a new array).
(d) a gb stream (``gb.create(name, ArraySpec, CAPACITY)``), writer
    ``write(frame)`` free-running, reader ``with r.view("next") as arr:``.
    Lossy by nature: frames read and frames lost (overruns + StaleView) are
    reported; its rate is frames read per second.
(e) iceoryx2 pub/sub of a ``Slice[c_uint8]`` of the frame's size: the
    publisher ``loan_slice_uninit`` + fill + ``send``, the subscriber
    ``receive()`` and a numpy view of ``payload().as_memory_view()`` (its
    zero-copy read).  As lossless as iceoryx2 allows: ``enable_safe_overflow
    (False)`` with ``BackpressureStrategy.RetryUntilDelivered`` (a full
    subscriber buffer makes ``send`` retry instead of dropping), and a
    subscriber buffer of CAPACITY samples.  iceoryx2's subscriber has no
    blocking receive: it polls ``receive()``, ``os.sched_yield()`` between
    empty polls (an event service for wake-ups would add a notify per frame).

The same touch for every reader (:func:`touch`): the frame's sequence number
(its first 8 bytes, stamped by the writer) and the sum of one byte per 4 KiB
page (1519 bytes): every page of the frame is read once, as a consumer
scanning it would, without the reader's own compute dominating.  Lossless
rows check that sequence numbers arrive in order, each once.

Every measurement runs in a fresh interpreter (``_util.run_peer``) that
forks the writer and the reader; ``WARM`` untimed frames go through first
(mappings and first-touch page faults of both ends), then both are released
together.  Rate = frames read / (writer released -> last frame read).
Rounds visit the peers in rotated order; figures are medians over rounds and
ratios medians of per-round ratios.
"""
import ctypes
import multiprocessing as mp
import os
import statistics
import sys
import time

import numpy as np

from benchmarks._util import (
    NOT_INSTALLED,
    fmt_ratio,
    installed,
    main_suite,
    parser,
    run_peer,
    summary_row,
    table,
)

FRAME = (1080, 1920, 3)
NBYTES = FRAME[0] * FRAME[1] * FRAME[2]
PAGE = 4096
CAPACITY = 8  # ring slots, stream capacity, iceoryx2 subscriber buffer
WARM = CAPACITY  # untimed frames first: never more than a transport holds
TIMEOUT = 20.0  # seconds: no blocking call of a peer waits longer

# (key, label): the gb rows, then the peer
ROWS = (
    ("view", "(a) gb.Ring ArraySpec, reserve() -> view()"),
    ("put_view", "(a') gb.Ring ArraySpec, put(frame) -> view()"),
    ("get_into", "(b) gb.Ring ArraySpec, reserve() -> get_into(out)"),
    ("get", "(c) gb.Ring ArraySpec, reserve() -> get()"),
    ("stream_view", '(d) gb stream, write() -> view("next") (lossy)'),
    ("iceoryx2", "(e) iceoryx2 pub/sub, loan+send -> receive() view"),
)
LABELS = dict(ROWS)
OPTIONAL = {"iceoryx2": "iceoryx2"}  # peer -> module it needs
# target against iceoryx2 (issue 13): (a) and (d) >= 1.5x
TARGETS = {"view": 1.5, "put_view": 1.5, "stream_view": 1.5}
# rows whose writer copies a whole frame whatever fill says
COPYING = ("put_view", "stream_view")


def touch(arr):
    """The same read of a received frame for every peer: (sequence number,
    sum of one byte per 4 KiB page)."""
    flat = arr.reshape(-1)
    return int(flat[:8].view(np.int64)[0]), int(flat[::PAGE].sum(dtype=np.int64))


def _stamp(flat, i):
    flat[:8].view(np.int64)[0] = i


def _name(tag):
    return f"bench-zc-{tag}-{os.getpid()}-{time.monotonic_ns() % 10**9}"


# ---------------------------------------------------------------------------
# transports: (writer_setup, reader_setup) for the forked processes
# ---------------------------------------------------------------------------

def _gb_ring_ends(ring, mode, fill):
    """gb ring: the producer reserve()s (put()s for put_view); the
    consumer per mode."""
    from global_buffer import Empty

    def writer(frame_flat):
        if mode == "put_view":
            frame = frame_flat.copy().reshape(FRAME)
            flat = frame.reshape(-1)

            def send(i):
                _stamp(flat, i)
                ring.put(frame, timeout=TIMEOUT)
            return send, lambda: None

        def send(i):
            with ring.reserve(timeout=TIMEOUT) as buf:
                flat = buf.reshape(-1)
                if fill:
                    flat[...] = frame_flat
                _stamp(flat, i)
        return send, lambda: None

    def reader():
        out = np.empty(FRAME, np.uint8)
        out.fill(0)  # fault its pages in: get_into's destination is warm

        if mode in ("view", "put_view"):
            def recv():
                try:
                    with ring.view(timeout=TIMEOUT) as a:
                        return touch(a)
                except Empty:
                    raise TimeoutError("no frame in time") from None
        elif mode == "get_into":
            def recv():
                return touch(ring.get_into(out, timeout=TIMEOUT))
        else:
            def recv():
                return touch(ring.get(timeout=TIMEOUT))
        return recv, lambda: None
    return writer, reader


def _gb_stream_ends(name):
    import global_buffer as gb
    spec = gb.ArraySpec(np.uint8, FRAME)
    ends = {}

    def writer(frame_flat):
        w = ends["w"] = gb.create(name, spec, CAPACITY)
        frame = frame_flat.copy().reshape(FRAME)
        flat = frame.reshape(-1)

        def send(i):
            _stamp(flat, i)
            w.write(frame)

        def close():
            w.unlink()
            w.close()
        return send, close

    def reader():
        r = gb.attach(name)  # start="newest": the first frame written after this
        stale = [0]

        def recv():
            deadline = time.monotonic() + TIMEOUT
            while True:
                try:
                    with r.view("next", timeout=TIMEOUT) as a:
                        got = touch(a)
                    return got
                except gb.StaleView:
                    stale[0] += 1  # overwritten while read: lost
                except gb.Empty:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("no frame in time")

        def close():
            lost = r.overruns + stale[0]
            r.close()
            return lost
        return recv, close
    return writer, reader


def _iox_ends(service_name, fill):
    import iceoryx2 as iox2
    iox2.set_log_level(iox2.LogLevel.Error)

    def open_service():
        node = (iox2.NodeBuilder.new()
                .signal_handling_mode(iox2.SignalHandlingMode.Disabled)
                .create(iox2.ServiceType.Ipc))
        svc = (node.service_builder(iox2.ServiceName.new(service_name))
               .publish_subscribe(iox2.Slice[ctypes.c_uint8])
               .enable_safe_overflow(False)  # a full buffer is not overwritten...
               .subscriber_max_buffer_size(CAPACITY)
               .history_size(0)
               .max_publishers(1)
               .max_subscribers(1)
               .open_or_create())
        return node, svc

    def writer(frame_flat):
        node, svc = open_service()
        pub = (svc.publisher_builder()
               .initial_max_slice_len(NBYTES)
               .allocation_strategy(iox2.AllocationStrategy.Static)
               # ...and send() retries until the subscriber has room
               .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered)
               .create())
        keep = [node, svc, pub]

        def send(i):
            s = pub.loan_slice_uninit(NBYTES)
            flat = np.frombuffer(s.payload().as_memory_view(), np.uint8)
            if fill:
                flat[...] = frame_flat
            _stamp(flat, i)
            s.assume_init().send()

        def close():
            keep.clear()
        send.connect = pub.update_connections  # the subscriber exists by now
        return send, close

    def reader():
        node, svc = open_service()
        sub = svc.subscriber_builder().buffer_size(CAPACITY).create()
        keep = [node, svc, sub]
        receive, yield_ = sub.receive, os.sched_yield

        def recv():
            spins = 0
            while True:
                s = receive()
                if s is not None:
                    break
                yield_()
                spins += 1
                if not spins & 1023 and time.monotonic() > deadline[0]:
                    raise TimeoutError("no frame in time")
            a = np.frombuffer(s.payload().as_memory_view(), np.uint8).reshape(FRAME)
            got = touch(a)
            s.delete()  # hand the sample back now, not when collected
            return got
        deadline = [0.0]

        def arm():
            deadline[0] = time.monotonic() + TIMEOUT * 10
        recv.arm = arm

        def close():
            keep.clear()
        return recv, close
    return writer, reader


# ---------------------------------------------------------------------------
# one measurement
# ---------------------------------------------------------------------------

def _writer_proc(make, n, b_ready, b_warm, b_go, starts, counts):
    frame = np.random.default_rng(1).integers(0, 255, NBYTES, dtype=np.uint8)
    send, close = make(frame)
    b_ready.wait(TIMEOUT)  # our end exists
    b_warm.wait(TIMEOUT)  # the reader's end exists
    getattr(send, "connect", lambda: None)()
    for i in range(WARM):  # fits the transport: never waits for the reader
        send(i)
    b_go.wait(TIMEOUT)
    starts[0] = time.perf_counter()
    cpu = time.process_time()
    for i in range(WARM, WARM + n):
        send(i)
    starts[1] = time.process_time() - cpu  # CPU seconds: is the writer the bottleneck?
    counts[0] = n
    b_warm.wait(TIMEOUT * 10)  # the reader is done: the writer may go
    close()


def _reader_proc(make, n, lossless, b_ready, b_warm, b_go, ends, counts, bad):
    b_ready.wait(TIMEOUT)  # the writer's end exists (stream: attach after create)
    recv, close = make()
    getattr(recv, "arm", lambda: None)()
    b_warm.wait(TIMEOUT)  # ours exists: the writer sends its WARM frames
    for i in range(WARM):
        seq, _ = recv()
        bad[0] += seq != i
    b_go.wait(TIMEOUT)
    getattr(recv, "arm", lambda: None)()
    cpu = time.process_time()
    last = WARM + n - 1
    got = 0
    checksum = 0
    expect = WARM
    while True:
        seq, s = recv()
        got += 1
        checksum += s
        if lossless:
            bad[0] += seq != expect
            expect += 1
            if got == n:
                break
        elif seq >= last:
            break
    ends[0] = time.perf_counter()
    ends[1] = time.process_time() - cpu
    counts[1] = got
    lost = close()
    counts[2] = lost or 0
    b_warm.wait(TIMEOUT * 10)


def measure(peer, n, fill=True):
    """Frames/s of one writer process -> one reader process through ``peer``
    (a key of ROWS), ``n`` timed frames after WARM untimed ones.  ``fill``
    False: the writer stamps only the sequence number into the loaned slot
    (the rest is whatever an earlier frame left): the transport's own cost
    per frame, without the producer's 6.2 MB copy (rings and iceoryx2 only:
    a stream's write() always copies)."""
    ctx = mp.get_context("fork")
    ring = None
    name = _name(peer)
    if not fill and peer in COPYING:
        raise ValueError(f"{peer}: its writer always copies the frame: fill=False "
                         "does not apply")
    if peer in ("view", "put_view", "get_into", "get"):
        import global_buffer as gb
        ring = gb.Ring(schema=gb.ArraySpec(np.uint8, FRAME), capacity=CAPACITY)
        writer, reader = _gb_ring_ends(ring, peer, fill)
    elif peer == "stream_view":
        writer, reader = _gb_stream_ends(name)
    elif peer == "iceoryx2":
        writer, reader = _iox_ends(name, fill)
    else:
        raise ValueError(peer)
    lossless = peer != "stream_view"
    b_ready, b_warm, b_go = ctx.Barrier(2), ctx.Barrier(2), ctx.Barrier(3)
    starts, ends = ctx.RawArray("d", 2), ctx.RawArray("d", 2)
    counts, bad = ctx.RawArray("q", 3), ctx.RawArray("q", 1)
    procs = [ctx.Process(target=_writer_proc, daemon=True,
                         args=(writer, n, b_ready, b_warm, b_go, starts, counts)),
             ctx.Process(target=_reader_proc, daemon=True,
                         args=(reader, n, lossless, b_ready, b_warm, b_go, ends, counts, bad))]
    for p in procs:
        p.start()
    try:
        b_go.wait(TIMEOUT * 3)
        deadline = time.monotonic() + TIMEOUT * 10
        for p in procs:
            p.join(max(0.1, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
        if ring is not None:
            ring.close()
    codes = [p.exitcode for p in procs]
    if codes != [0, 0]:
        raise SystemExit(f"{peer}: writer/reader exit codes {codes}")
    if lossless and (counts[1] != n or bad[0]):
        raise SystemExit(f"{peer}: lossless transport read {counts[1]} of {n} frames, "
                         f"{bad[0]} out of order")
    elapsed = ends[0] - starts[0]
    read = counts[1]
    return {"peer": peer, "written": n, "read": read, "lost": counts[2] if not lossless else 0,
            "seconds": elapsed, "fps": read / elapsed, "gbps": read * NBYTES / elapsed / 1e9,
            "writer_cpu_us": starts[1] / n * 1e6, "reader_cpu_us": ends[1] / max(read, 1) * 1e6}


# ---------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------

def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def have(peer):
    if peer not in OPTIONAL or installed(OPTIONAL[peer]):
        return True
    print(f"{peer} is {NOT_INSTALLED} (pip install -e '.[bench]'): reported as such",
          file=sys.stderr)
    return False


def _fmt(x, digits=0):
    return "-" if x is None else f"{x:,.{digits}f}"


def suite(level="full", rounds=None, frames=None, fill=True):
    """The zero-copy table at ``level`` (see ``_util.LEVELS``); ``fill``
    False: writers stamp only (see :func:`measure`), no stream or put row."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    smoke, quick = level == "smoke", level == "quick"
    rounds = rounds or (1 if smoke else 3 if quick else 5)
    frames = frames or (16 if smoke else 300 if quick else 1000)
    peers = [k for k, _ in ROWS if have(k) and (fill or k not in COPYING)]
    samples = {k: [] for k in peers}
    t0 = time.monotonic()
    for rnd in range(rounds):
        shift = rnd % len(peers)
        for peer in peers[shift:] + peers[:shift]:  # rotate: drift hits every peer alike
            try:
                res = run_peer("zero_copy", "measure", timeout=600, peer=peer, n=frames,
                               fill=fill)
            except Exception as e:  # one failed sample must not sink the table
                res = {"peer": peer, "error": str(e).splitlines()[0]}
                print(f"  round {rnd + 1}: {peer} ERROR {res['error']}", file=sys.stderr)
            else:
                print(f"  round {rnd + 1}: {peer:<12} {res['fps']:8,.0f} frames/s"
                      + (f", {res['lost']} of {res['written']} lost" if res["lost"] else ""),
                      file=sys.stderr, flush=True)
            samples[peer].append(res)
    wall = time.monotonic() - t0

    def fps(peer):
        return [r.get("fps") for r in samples.get(peer, [])]

    def paired(a, b):
        return _median([x / y if x and y else None for x, y in zip(fps(a), fps(b))])

    iox = "iceoryx2" in peers
    results = {"frame_shape": FRAME, "capacity": CAPACITY, "warm": WARM, "frames": frames,
               "fill": fill,
               "rounds": rounds, "wall_seconds": wall,
               "installed": {k: k in peers for k, _ in ROWS}, "rows": {}}
    rows = []
    for key, label in ROWS:
        if not fill and key in COPYING:
            continue
        if key not in peers:
            results["rows"][key] = {"installed": False}
            rows.append([label] + [NOT_INSTALLED] * 6)  # every column but the label
            continue
        med = _median(fps(key))
        lost = _median([r.get("lost") for r in samples[key]])
        read = _median([r.get("read") for r in samples[key]])
        wcpu = _median([r.get("writer_cpu_us") for r in samples[key]])
        rcpu = _median([r.get("reader_cpu_us") for r in samples[key]])
        vs_iox = paired(key, "iceoryx2") if iox and key != "iceoryx2" else None
        target = TARGETS.get(key)
        results["rows"][key] = {"installed": True, "label": label, "fps": med,
                                "gbps": med * NBYTES / 1e9 if med else None,
                                "writer_cpu_us": wcpu, "reader_cpu_us": rcpu,
                                "read": read, "lost": lost,
                                "vs_iceoryx2": vs_iox,
                                "target_vs_iceoryx2": target, "samples": samples[key]}
        if key == "iceoryx2":
            vs = "1.00x"
        elif iox:
            vs = fmt_ratio(vs_iox)
        else:
            vs = NOT_INSTALLED
        ok = "-"
        if target is not None:
            ok = NOT_INSTALLED if not iox else (
                f"{target}x: {'yes' if vs_iox and vs_iox >= target else 'no'}")
        rows.append([label, _fmt(med), _fmt(med * NBYTES / 1e9 if med else None, 2),
                     f"{_fmt(wcpu)} / {_fmt(rcpu)}",
                     f"{_fmt(read)} / {_fmt(lost)}" if key == "stream_view" else "0", vs, ok])
    get_into_vs_get = paired("get_into", "get")
    view_vs_get = paired("view", "get")
    results["get_into_vs_get"] = get_into_vs_get
    results["view_vs_get"] = view_vs_get
    load = tuple(round(x, 1) for x in os.getloadavg())
    results["loadavg_at_end"] = load
    tables = [table(
        f"Zero-copy 1080p frames{'' if fill else ' (writers stamp only, no frame copy)'}, "
        f"writer process -> reader process (median of {rounds} "
        f"x {frames} frames; ratios: medians of per-round ratios)",
        ["transport", "frames/s", "GB/s", "CPU us/frame writer / reader", "lost (read / lost)",
         "vs. iceoryx2", "target"], rows,
        note=f"Every reader does the same touch per frame: its sequence number and one byte "
             f"per 4 KiB page. Capacity {CAPACITY} everywhere; iceoryx2 lossless as far as "
             f"it goes (no safe overflow, RetryUntilDelivered, subscriber buffer "
             f"{CAPACITY}), its subscriber polls receive() with sched_yield() (its CPU "
             f"time is mostly that polling). CPU us/frame: each process's CPU time "
             f"(time.process_time) over the timed frames; a side whose CPU per frame "
             f"is near 1e6 / frames/s is the bottleneck. get_into "
             f"vs. get: {fmt_ratio(get_into_vs_get)} (target >= 1); view vs. get: "
             f"{fmt_ratio(view_vs_get)}. {wall:.0f} s; load average at end {load}.")]
    summary = []
    if iox:
        for key in ("view", "put_view", "stream_view"):
            r = results["rows"].get(key, {})
            if r.get("fps") and results["rows"]["iceoryx2"].get("fps"):
                what = LABELS[key].split(") ", 1)[1]
                summary.append(summary_row("zero_copy", f"1080p, {what}", "frames/s",
                                           r["fps"], results["rows"]["iceoryx2"]["fps"],
                                           "iceoryx2 pub/sub", advantage=r["vs_iceoryx2"],
                                           gb_peer="gb"))
    return {"results": results, "tables": tables, "summary": summary}


def main(argv=None):
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 5, --quick 3)")
    ap.add_argument("--frames", type=int, default=None,
                    help="timed frames per measurement (default 1000, --quick 300)")
    ap.add_argument("--stamp-only", action="store_true",
                    help="writers stamp the sequence number only, no 6.2 MB copy per frame: "
                         "the transports' own cost (no stream or put row)")
    args = ap.parse_args(argv)
    main_suite(args, "zero_copy",
               lambda lv: suite(lv, args.rounds, args.frames, fill=not args.stamp_only))
    return 0


if __name__ == "__main__":
    sys.exit(main())
