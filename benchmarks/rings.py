"""Ring throughput: ``gb.Ring`` against ``multiprocessing.Queue`` and
faster-fifo, in the same run (issue 4, "Benchmarks").

    python -m benchmarks.rings            # full run (< 3 minutes on 2 cores)
    python -m benchmarks.rings --quick    # smaller counts, for a smoke test
    python -m benchmarks.rings --json out.json   # also write raw samples ("-": stdout)

Every measurement runs in a fresh interpreter (``benchmarks._util.run_peer``
calling :func:`worker`) that creates the queue, forks the producer and consumer
processes, releases them together through a barrier and reports items/s
as (items put) / (time from release to the last consumer's last item).
Rounds interleave the peers (rotating their order) so that a noisy
neighbour hits all of them alike; each figure is the median over rounds and
each "vs." ratio is the median of the per-round ratios.
"""
import os
import statistics
import sys
import time

from benchmarks._util import finish, fmt_ratio, machine, parser, print_machine, print_table, run_peer

FRAME_SHAPE = (1080, 1920, 3)
PEERS = ("mp", "ff", "gb")
PEER_NAMES = {"mp": "mp.Queue", "ff": "faster-fifo", "gb": "gb.Ring"}
BATCH = 64
T_BIG = 600.0  # faster-fifo's put/get default to a 10 s timeout; we want "block"

# what one measurement is: case parameters; the gb variant only matters for gb
CASES = {
    "small-1:1": dict(kind="small", p=1, c=1, batch=0, n=400_000, n_mp=100_000),
    "small-1:1-many": dict(kind="small", p=1, c=1, batch=BATCH, n=400_000, n_mp=100_000),
    "small-4:4": dict(kind="small", p=4, c=4, batch=0, n=400_000, n_mp=100_000),
    "small-4:4-many": dict(kind="small", p=4, c=4, batch=BATCH, n=400_000, n_mp=100_000),
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


def _make(peer, case, variant):
    """(queue, put, get, put_many, get_many) for one peer."""
    import numpy as np
    frame = case["kind"] == "frame"
    if peer == "mp":
        import multiprocessing as mp
        q = mp.get_context("fork").Queue()
        return q, q.put, q.get, None, None
    if peer == "ff":
        import faster_fifo
        # shared bytes comparable to the ring's: 4 MiB for small items
        # (gb.Ring() has 1024 slots of 4 KiB); ~10 frames for frames
        size = 64 * 2**20 if frame else 4 * 2**20
        q = faster_fifo.Queue(max_size_bytes=size)

        def put(x):
            q.put(x, True, T_BIG)

        def get():
            return q.get(True, T_BIG)

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


def _producer(barrier, put, put_many, k, n, case, ncons):
    import numpy as np
    barrier.wait()
    batch = case["batch"]
    if case["kind"] == "frame":
        frame = np.random.default_rng(k).integers(0, 255, FRAME_SHAPE, dtype=np.uint8)
        for _ in range(n):
            put(frame)
        return
    if batch and put_many is not None:
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


def _consumer(barrier, put, get, get_many, j, total, case, nprod, ends, counts):
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


def worker(peer, case_name, variant, n):
    import multiprocessing as mp
    case = CASES[case_name]
    ctx = mp.get_context("fork")
    q, put, get, put_many, get_many = _make(peer, case, variant)
    p, c = case["p"], case["c"]
    per = n // p
    total = per * p
    barrier = ctx.Barrier(p + c + 1)
    ends = ctx.RawArray("d", c)
    counts = ctx.RawArray("q", c)
    procs = [ctx.Process(target=_consumer, args=(barrier, put, get, get_many, j, total, case, p,
                                                 ends, counts), daemon=True) for j in range(c)]
    procs += [ctx.Process(target=_producer, args=(barrier, put, put_many, k, per, case, c),
                          daemon=True) for k in range(p)]
    for pr in procs:
        pr.start()
    barrier.wait()
    t0 = time.perf_counter()
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
    elapsed = max(ends) - t0
    if peer == "gb":
        q.close()
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


def _have_faster_fifo():
    try:
        import faster_fifo  # noqa: F401
        return True
    except ImportError:
        print("faster-fifo is not installed (pip install faster-fifo, or the 'bench' "
              "extra): its column stays empty", file=sys.stderr)
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
    peers = [p for p in PEERS if p != "ff" or _have_faster_fifo()]
    units = _units(rows, peers)
    samples = {u: [] for u in units}
    t_start = time.monotonic()
    for rnd in range(repeats):
        for case in dict.fromkeys(u[0] for u in units):
            group = [u for u in units if u[0] == case]
            shift = rnd % len(group)
            for u in group[shift:] + group[:shift]:  # rotate the order per round
                spec = CASES[u[0]]
                n = spec["n_mp"] if u[1] == "mp" else spec["n"]
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

        def paired(base):
            return _median([g / b if g and b else None for g, b in zip(gb_s, base)])
        vs_mp, vs_ff = paired(mp_s), paired(ff_s)
        results.append({
            "row": label, "case": case, "gb_variant": variant,
            "producers": CASES[case]["p"], "consumers": CASES[case]["c"],
            "batch": CASES[case]["batch"],
            "mp_queue": _median(mp_s), "faster_fifo": _median(ff_s), "gb_ring": _median(gb_s),
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
        rows.append([r["row"], fmt_rate(r["mp_queue"]), fmt_rate(r["faster_fifo"]),
                     fmt_rate(r["gb_ring"]), fmt_ratio(r["vs_mp_queue"]),
                     fmt_ratio(r["vs_faster_fifo"]), f"{r['target_vs_mp_queue']}x", ok])
    return rows


HEADERS = ["items/s (median)", "mp.Queue", "faster-fifo", "gb.Ring", "vs. mp.Queue",
           "vs. faster-fifo", "target vs. mp.Queue", "meets targets"]


def main(argv=None):
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=None,
                    help="rounds; figures are medians (default 3, at least 3)")
    ap.add_argument("--scale", type=float, default=None, help="multiply item counts")
    ap.add_argument("--only", action="append", help="rows whose label or case contains this")
    args = ap.parse_args(argv)
    # numpy's BLAS threads spin for a while after import: keep them out of
    # every peer alike (children inherit the environment)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    repeats = max(3, args.repeats or 3)
    scale = args.scale if args.scale is not None else (0.25 if args.quick else 1.0)
    info = machine()
    print_machine(info)
    results, wall = run(repeats, scale, args.only)
    print_table("Rings: items/s, producers:consumers processes (medians; ratios are medians "
                "of per-round ratios)", HEADERS, table_rows(results),
                note=f"{repeats} rounds, item counts x{scale}, {wall:.0f} s; load average at "
                     f"end {tuple(round(x, 1) for x in os.getloadavg())}")
    info["loadavg_at_end"] = os.getloadavg()
    finish(args, "rings", {"repeats": repeats, "scale": scale, "wall_seconds": wall,
                           "batch": BATCH, "frame_shape": FRAME_SHAPE, "rows": results}, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
