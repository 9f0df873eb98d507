"""Ring throughput: ``gb.Ring`` against ``multiprocessing.Queue`` and
faster-fifo, in the same run (issue 4, "Benchmarks").

    python -m benchmarks.rings            # full run (< 3 minutes on 2 cores)
    python -m benchmarks.rings --quick    # smaller counts, for a smoke test
    python -m benchmarks.rings --json out.json   # also write raw samples ("-": stdout)

Every measurement runs in a fresh interpreter (``benchmarks._util.run_peer``
calling :func:`worker`) that creates the queue, forks the producer and consumer
processes, releases them together through a barrier and reports items/s
as (items put) / (time from the first producer's release to the last
consumer's last item).
Rounds interleave the peers (rotating their order) so that a noisy
neighbour hits all of them alike; each figure is the median over rounds and
each "vs." ratio is the median of the per-round ratios.

:func:`worker` also measures ``multiprocessing.Pipe`` and pyzmq PUSH/PULL
(over ``ipc://``) moving ``bytes`` payloads of a given size: the
throughput-vs-payload sweep of ``benchmarks.sweep`` runs on it.
"""
import multiprocessing
import os
import statistics
import sys
import tempfile
import time

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

FRAME_SHAPE = (1080, 1920, 3)
PEERS = ("mp", "ff", "gb")
PEER_NAMES = {"mp": "mp.Queue", "ff": "faster-fifo", "gb": "gb.Ring", "pipe": "mp.Pipe",
              "zmq": "pyzmq"}
# the module each optional peer needs
OPTIONAL = {"ff": "faster_fifo", "zmq": "zmq"}
BATCH = 64
T_BIG = 600.0  # faster-fifo's put/get default to a 10 s timeout; we want "block"

# what one measurement is: case parameters; the gb variant only matters for gb
# Item counts per peer (n_<peer>, else n) keep each sample a few tenths of
# a second or more: long enough to dwarf process start-up and scheduling
# noise, short enough for a full run in minutes.
CASES = {
    "small-1:1": dict(kind="small", p=1, c=1, batch=0, n=2_000_000, n_ff=400_000, n_mp=100_000),
    "small-1:1-many": dict(kind="small", p=1, c=1, batch=BATCH, n=2_000_000, n_ff=400_000,
                           n_mp=100_000),
    "small-4:4": dict(kind="small", p=4, c=4, batch=0, n=2_000_000, n_ff=400_000, n_mp=100_000),
    "small-4:4-many": dict(kind="small", p=4, c=4, batch=BATCH, n=2_000_000, n_ff=400_000,
                           n_mp=100_000),
    "frame": dict(kind="frame", p=1, c=1, batch=0, n=600, n_mp=120),
}

# (label, case, gb variant, target vs mp.Queue)
ROWS = [
    ("small, 1:1, put/get", "small-1:1", "object", 8),
    ("small, 1:1, put_many/get_many(64)", "small-1:1-many", "object", 8),
    ("small, 4:4, put/get", "small-4:4", "object", 10),
    ("small, 4:4, put_many/get_many(64)", "small-4:4-many", "object", 10),
    ("1080p frame, object ring (pickle-5)", "frame", "object", 20),
    ("1080p frame, ArraySpec ring", "frame", "array", 40),
    ("1080p frame, ArraySpec ring, reserve()", "frame", "reserve", 40),
]


# ---------------------------------------------------------------------------
# worker side: one queue, P producers and C consumers (forked)
# ---------------------------------------------------------------------------

def _has_reserve():
    import global_buffer as gb
    return hasattr(gb.Ring, "reserve")


def _zmq(case):
    """PUSH/PULL over ipc://.  zmq sockets do not survive fork, so each
    process opens its end in ``prepare()``, before the start barrier, and the
    producer waits in ``finish()`` until its messages are sent.  A consumer
    that outlives the run (``benchmarks.wake``'s reader) closes its end with
    ``get.finish()``; ``case["timeout"]`` (seconds), if given, bounds each
    ``get()`` (zmq.Again when it expires)."""
    if case["kind"] != "bytes":
        raise ValueError("the pyzmq peer carries bytes payloads only")
    import zmq
    path = os.path.join(tempfile.gettempdir(), f"gb-bench-{os.getpid()}-{time.monotonic_ns()}")
    addr = f"ipc://{path}"
    end = {}

    def prepare(kind):
        sock = zmq.Context.instance().socket(kind)
        if kind == zmq.PULL and case.get("timeout") is not None:
            sock.rcvtimeo = int(case["timeout"] * 1000)
        (sock.bind if kind == zmq.PULL else sock.connect)(addr)
        end["sock"] = sock

    def put(x):
        end["sock"].send(x)

    def get():
        return end["sock"].recv()

    def close():
        # a forked Process ends in os._exit(): without this, messages still
        # queued in zmq's I/O thread would be lost.  Bounded: with linger=-1
        # a producer whose consumer had already exited (it stops counting at
        # the total) sometimes blocked in term() for good
        end["sock"].close(linger=10_000)
        zmq.Context.instance().term()

    def put_finish():
        # Close only once the consumer has every message.  A PUSH end that
        # closed as soon as its last send returned lost the tail of the
        # stream now and then (1 run in 5-15 of 100,000 32-byte messages:
        # the last 75-1,197 never reached the PULL end, whose consumer then
        # waited for them for good: the sweep's "pyzmq hang").
        done.wait(60)
        close()

    def get_finish():
        done.set()
        close()
    done = multiprocessing.get_context("fork").Event()  # made before the fork
    put.prepare = lambda: prepare(zmq.PUSH)
    get.prepare = lambda: prepare(zmq.PULL)
    put.finish, get.finish = put_finish, get_finish
    return path, put, get, None, None


def _make(peer, case, variant):
    """(queue, put, get, put_many, get_many) for one peer.  ``put`` and
    ``get`` may carry a ``prepare()`` that the producer / consumer process
    calls before the start barrier; ``put`` a ``finish()`` called last."""
    import numpy as np
    frame = case["kind"] == "frame"
    if peer == "mp":
        import multiprocessing as mp
        q = mp.get_context("fork").Queue()
        return q, q.put, q.get, None, None
    if peer == "pipe":
        import multiprocessing as mp
        r, w = mp.get_context("fork").Pipe(duplex=False)
        return (r, w), w.send, r.recv, None, None
    if peer == "zmq":
        return _zmq(case)
    if peer == "ff":
        import faster_fifo
        # shared bytes comparable to the ring's: 4 MiB for small items
        # (gb.Ring() has 1024 slots of 4 KiB); ~10 frames for frames; room
        # for 4 payloads of the sweep
        size = 64 * 2**20 if frame else 4 * 2**20
        if case["kind"] == "bytes":
            size = max(size, 4 * case["size"] + 2**16)
        q = faster_fifo.Queue(max_size_bytes=size)

        def put(x):
            q.put(x, True, T_BIG)

        timeout = case.get("timeout", T_BIG)

        def get():
            return q.get(True, timeout)

        def put_many(xs):
            q.put_many(xs, True, T_BIG)

        def get_many(k):
            return q.get_many(True, T_BIG, k)
        return q, put, get, put_many, get_many
    import global_buffer as gb
    if frame and variant in ("array", "reserve"):
        q = gb.Ring(schema=gb.ArraySpec(np.uint8, FRAME_SHAPE), capacity=4)
    else:
        q = gb.Ring()  # the drop-in default: maxsize=0, 1024 slots of 4 KiB
    if variant == "reserve":
        def put(x):
            with q.reserve() as buf:
                buf[...] = x
        return q, put, q.get, None, None
    return q, q.put, q.get, q.put_many, q.get_many


def _hook(fn, name):
    getattr(fn, name, lambda: None)()


def _producer(barrier, put, put_many, k, n, case, ncons, starts):
    import numpy as np
    _hook(put, "prepare")
    if case["kind"] == "bytes":
        item = os.urandom(case["size"])
        for _ in range(case["warm"]):  # connections, blobs, page faults: untimed
            put(item)
    elif case["kind"] == "frame":  # made before the barrier: not timed
        item = np.random.default_rng(k).integers(0, 255, FRAME_SHAPE, dtype=np.uint8)
    barrier.wait()
    # t0 is the first producer's release: a parent stamping it after its own
    # barrier.wait() may be scheduled late, after a fast transfer is over
    starts[k] = time.perf_counter()
    batch = case["batch"]
    if case["kind"] != "small":
        for _ in range(n):
            put(item)
    elif batch and put_many is not None:
        for s in range(0, n, batch):
            put_many([(i, 3.14, "abc") for i in range(s, min(n, s + batch))])
        if ncons > 1:
            put_many([None] * ncons)
    else:
        for i in range(n):
            put((i, 3.14, "abc"))
        if ncons > 1:
            for _ in range(ncons):
                put(None)
    _hook(put, "finish")


def _consumer(barrier, put, get, get_many, j, total, case, nprod, ends, counts):
    _hook(get, "prepare")
    for _ in range(case.get("warm", 0)):
        get()
    barrier.wait()
    got = 0
    batch = case["batch"]
    if nprod == 1 and case["c"] == 1:
        # one consumer: it knows how many items come (no sentinel needed,
        # which ArraySpec rings could not carry)
        if batch and get_many is not None:
            while got < total:
                got += len(get_many(batch))
        else:
            while got < total:
                get()
                got += 1
    else:
        seen = 0  # sentinels: each producer sends one per consumer, after its items
        while seen < nprod:
            xs = get_many(batch) if batch and get_many is not None else (get(),)
            for x in xs:
                if x is None:
                    seen += 1
                else:
                    got += 1
        # a batch may hold more sentinels than this consumer needs: they are
        # the other consumers' (else one of them would wait forever)
        for _ in range(seen - nprod):
            put(None)
    ends[j] = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
    counts[j] = got
    _hook(get, "finish")  # pyzmq: tells the producer that everything arrived


def worker(peer, case_name, variant, n, payload=None, warm=0):
    """One measurement: items/s from ``P`` producers to ``C`` consumers of
    ``case_name``, or, with ``payload`` (bytes), of a ``bytes`` object that
    size from one producer to one consumer after ``warm`` untimed items."""
    import multiprocessing as mp
    if payload is None:
        case = CASES[case_name]
    else:
        case = dict(kind="bytes", p=1, c=1, batch=0, size=payload, warm=warm)
    ctx = mp.get_context("fork")
    q, put, get, put_many, get_many = _make(peer, case, variant)
    p, c = case["p"], case["c"]
    per = n // p
    total = per * p
    barrier = ctx.Barrier(p + c + 1)
    starts = ctx.RawArray("d", p)
    ends = ctx.RawArray("d", c)
    counts = ctx.RawArray("q", c)
    procs = [ctx.Process(target=_consumer, args=(barrier, put, get, get_many, j, total, case, p,
                                                 ends, counts), daemon=True) for j in range(c)]
    procs += [ctx.Process(target=_producer, args=(barrier, put, put_many, k, per, case, c,
                                                  starts), daemon=True) for k in range(p)]
    for pr in procs:
        pr.start()
    barrier.wait()
    deadline = time.monotonic() + 120
    for pr in procs:
        pr.join(max(0.1, deadline - time.monotonic()))
    if any(pr.is_alive() for pr in procs):
        for pr in procs:
            if pr.is_alive():
                pr.kill()
        raise SystemExit("workers did not finish in time")
    if any(pr.exitcode != 0 for pr in procs):
        raise SystemExit(f"a worker failed: exit codes {[pr.exitcode for pr in procs]}")
    if sum(counts) != total:
        raise SystemExit(f"lost items: consumers got {sum(counts)} of {total}")
    elapsed = max(ends) - min(starts)
    if peer == "gb":
        q.close()
    elif peer == "zmq" and os.path.exists(q):
        os.unlink(q)  # the ipc:// socket file, if the PULL end left it
    return {"items": total, "seconds": elapsed, "rate": total / elapsed}


# ---------------------------------------------------------------------------
# driver side
# ---------------------------------------------------------------------------

def _median(xs):
    xs = [x for x in xs if x is not None]  # a failed sample is None
    return statistics.median(xs) if xs else None


def fmt_rate(x):
    if x is None:
        return "-"
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e4:
        return f"{x / 1e3:.0f}k"
    if x >= 1e3:
        return f"{x / 1e3:.2f}k"
    return f"{x:.0f}"


def have(peer):
    """False (and a note on stderr) for an optional peer that is not installed."""
    if peer not in OPTIONAL or installed(OPTIONAL[peer]):
        return True
    print(f"{PEER_NAMES[peer]} is {NOT_INSTALLED} (pip install -e '.[bench]'): "
          "reported as such", file=sys.stderr)
    return False


def _units(rows, peers):
    """Measurements a run needs: (case, peer, variant); mp/ff ignore variant."""
    units = []
    for _, case, variant, _ in rows:
        for peer in peers:
            u = (case, peer, variant if peer == "gb" else None)
            if u not in units:
                units.append(u)
    return units


def _rows_available():
    return [r for r in ROWS if r[2] != "reserve" or _has_reserve()]


def run(repeats, scale, only=None, verbose=True):
    rows = _rows_available()
    if only:
        rows = [r for r in rows if any(o in r[0] or o == r[1] for o in only)]
    peers = [p for p in PEERS if have(p)]
    units = _units(rows, peers)
    samples = {u: [] for u in units}
    t_start = time.monotonic()
    for rnd in range(repeats):
        for case in dict.fromkeys(u[0] for u in units):
            group = [u for u in units if u[0] == case]
            shift = rnd % len(group)
            for u in group[shift:] + group[:shift]:  # rotate the order per round
                spec = CASES[u[0]]
                n = spec.get(f"n_{u[1]}", spec["n"])
                n = max(spec["p"], int(n * scale))
                try:
                    res = run_peer("rings", "worker", timeout=180, peer=u[1], case_name=u[0],
                                   variant=u[2], n=n)
                except Exception as e:  # one failed sample must not sink the table
                    res = {"error": str(e).splitlines()[0]}
                samples[u].append(res.get("rate"))
                if verbose:
                    what = f"{u[0]:<15} {PEER_NAMES[u[1]]:<12} {u[2] or '':<8}"
                    if "error" in res:
                        print(f"  round {rnd + 1}: {what} ERROR {res['error']}", file=sys.stderr)
                    else:
                        print(f"  round {rnd + 1}: {what} {fmt_rate(res['rate']):>8} items/s",
                              file=sys.stderr, flush=True)
    wall = time.monotonic() - t_start

    results = []
    for label, case, variant, target in rows:
        mp_s = samples[(case, "mp", None)]
        ff_s = samples.get((case, "ff", None), [])
        gb_s = samples[(case, "gb", variant)]

        def paired(base, gb_s=gb_s):
            return _median([g / b if g and b else None for g, b in zip(gb_s, base)])
        vs_mp, vs_ff = paired(mp_s), paired(ff_s)
        results.append({
            "row": label, "case": case, "gb_variant": variant,
            "producers": CASES[case]["p"], "consumers": CASES[case]["c"],
            "batch": CASES[case]["batch"],
            "mp_queue": _median(mp_s), "faster_fifo": _median(ff_s), "gb_ring": _median(gb_s),
            "faster_fifo_installed": "ff" in peers,
            "samples": {"mp_queue": mp_s, "faster_fifo": ff_s, "gb_ring": gb_s},
            "vs_mp_queue": vs_mp, "vs_faster_fifo": vs_ff,
            "target_vs_mp_queue": target,
            "pass_vs_mp_queue": vs_mp is not None and vs_mp >= target,
            "pass_vs_faster_fifo": vs_ff is not None and vs_ff > 1.0,
        })
    return results, wall


def table_rows(results):
    rows = []
    for r in results:
        ok = "yes" if r["pass_vs_mp_queue"] and r["pass_vs_faster_fifo"] else "no"
        ff = r["faster_fifo_installed"]
        rows.append([r["row"], fmt_rate(r["mp_queue"]),
                     fmt_rate(r["faster_fifo"]) if ff else NOT_INSTALLED,
                     fmt_rate(r["gb_ring"]), fmt_ratio(r["vs_mp_queue"]),
                     fmt_ratio(r["vs_faster_fifo"]) if ff else NOT_INSTALLED,
                     f"{r['target_vs_mp_queue']}x", ok])
    return rows


HEADERS = ["items/s (median)", "mp.Queue", "faster-fifo", "gb.Ring", "vs. mp.Queue",
           "vs. faster-fifo", "target vs. mp.Queue", "meets targets"]


def suite(level="full", repeats=None, scale=None, only=None):
    """The rings table at ``level``; smoke measures one row, once."""
    # numpy's BLAS threads spin for a while after import: keep them out of
    # every peer alike (children inherit the environment)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    smoke = level == "smoke"
    repeats = repeats or (1 if smoke else 3)
    if not smoke:
        repeats = max(3, repeats)
    if scale is None:
        scale = 0.01 if smoke else 0.25 if level == "quick" else 1.0
    if smoke and not only:
        only = ["small-1:1"]
    results, wall = run(repeats, scale, only)
    load = tuple(round(x, 1) for x in os.getloadavg())
    tables = [table("Rings: items/s, producers:consumers processes (medians; ratios are "
                    "medians of per-round ratios)", HEADERS, table_rows(results),
                    note=f"{repeats} rounds, item counts x{scale}, {wall:.0f} s; load average "
                         f"at end {load}")]
    summary = [summary_row("rings", r["row"], "items/s", r["gb_ring"], r["mp_queue"], "mp.Queue",
                           advantage=r["vs_mp_queue"], gb_peer="gb.Ring") for r in results]
    return {"results": {"repeats": repeats, "scale": scale, "wall_seconds": wall,
                        "batch": BATCH, "frame_shape": FRAME_SHAPE, "rows": results,
                        "loadavg_at_end": load},
            "tables": tables, "summary": summary}


def main(argv=None):
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=None,
                    help="rounds; figures are medians (default 3, at least 3)")
    ap.add_argument("--scale", type=float, default=None, help="multiply item counts")
    ap.add_argument("--only", action="append", help="rows whose label or case contains this")
    args = ap.parse_args(argv)
    main_suite(args, "rings", lambda lv: suite(lv, args.repeats, args.scale, args.only))
    return 0


if __name__ == "__main__":
    sys.exit(main())
