"""gb.Pool against multiprocessing.Pool, ProcessPoolExecutor and loky:
``python -m benchmarks.pool``.

Four cases (issue 12), the same calls on every pool of 2 workers by default:

- ``imap``: ``imap(f, range(20_000), chunksize=1)`` (executors:
  ``map(f, ..., chunksize=1)``), ``f`` the identity: per-task cost.
- ``apply``: ``apply_async(f, (i,))`` x 20k, then every ``get()``
  (executors: ``submit`` and ``result()``).
- ``map``: ``map(f, range(100_000))`` with the Pool's default chunk size
  (the executors get the same chunk size, 100_000 / (4 x workers)).
- ``frames``: ``map`` of 60 tasks each returning a 1080p uint8 RGB frame
  (6.2 MB; Pools: default chunk size, executors: ``map``'s default 1):
  result transport.

Each peer runs in its own interpreter (``_util.run_peer``) and times
``repeats`` calls on one warm pool (workers started, one untimed call of
the case done, two for frames: the first two frames calls of a gb.Pool
also make the blobs that later calls reuse);
rounds alternate the peers so load drift on a shared machine hits all of
them.  Figures are medians of every timed call.  loky always starts its
workers with its own context (fork+exec); it refuses ``fork``.  loky is a benchmark
dependency (``pip install loky``, in the ``bench`` extra); without it that
column says "not installed".
"""
import time

from benchmarks._util import (
    NOT_INSTALLED,
    ab_parser,
    fmt_ns,
    fmt_ratio,
    installed,
    main_suite,
    median,
    run_peer,
    summary_row,
    table,
)

FRAME_SHAPE = (1080, 1920, 3)
CASES = {
    # case: (inputs, description)
    "imap": (20_000, "imap(f, range(20k), chunksize=1)"),
    "apply": (20_000, "apply_async x 20k, then get()"),
    "map": (100_000, "map(f, range(100k)), default chunksize"),
    "frames": (60, "map -> 60 1080p uint8 frames (6.2 MB)"),
}
PEERS = ("gb", "mp", "cf", "loky")
PEER_NAMES = {"gb": "gb.Pool", "mp": "mp.Pool", "cf": "ProcessPoolExecutor",
              "loky": "loky"}
#: issue 12's targets: gb.Pool at least this many times faster than mp.Pool
TARGETS = {"imap": 10.0, "apply": 10.0, "map": 3.0, "frames": 10.0}


def _frame(i):
    import numpy as np
    return np.full(FRAME_SHAPE, i % 251, np.uint8)


def _ident(x):
    return x


def _make(kind, processes, start):
    import multiprocessing as mp
    ctx = mp.get_context(start)
    if kind == "gb":
        import global_buffer as gb
        return gb.Pool(processes, context=ctx)
    if kind == "mp":
        return ctx.Pool(processes)
    if kind == "cf":
        from concurrent.futures import ProcessPoolExecutor
        return ProcessPoolExecutor(processes, mp_context=ctx)
    import loky
    # loky starts its workers its own way (its "loky" context: fork+exec);
    # it refuses "fork"
    return loky.get_reusable_executor(max_workers=processes, reuse=False)


def _call(pool, pooled, case, n, processes):
    fn = _frame if case == "frames" else _ident
    if case == "imap":
        it = pool.imap(fn, range(n), chunksize=1) if pooled else pool.map(fn, range(n),
                                                                             chunksize=1)
        return list(it)
    if case == "apply":
        if pooled:
            rs = [pool.apply_async(fn, (i,)) for i in range(n)]
            return [r.get() for r in rs]
        fs = [pool.submit(fn, i) for i in range(n)]
        return [f.result() for f in fs]
    if case == "map":
        if pooled:
            return pool.map(fn, range(n))
        return list(pool.map(fn, range(n), chunksize=max(1, -(-n // (4 * processes)))))
    return pool.map(fn, range(n)) if pooled else list(pool.map(fn, range(n)))


def peer(kind, case, n, repeats, processes, start):
    """Time ``repeats`` calls of ``case`` on one warm pool; returns seconds."""
    pool = _make(kind, processes, start)
    pooled = kind in ("gb", "mp")
    times = []
    try:
        list(pool.map(_ident, range(4 * processes)))  # workers up and serving
        # untimed calls of the case: a warm pool (gb.Pool's senders have
        # made the shared-memory blobs a large item needs, and reuse them).
        # frames: two, because a gb.Pool's second call still makes one more
        # 64 MiB blob (measured, fork, 2 workers: 298, 210, then 69-71 ms
        # per call; 8 blobs after the first call, 9 from the second on)
        for _ in range(2 if case == "frames" else 1):
            _call(pool, pooled, case, n if case in ("map", "frames") else min(n, 2000),
                  processes)
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = _call(pool, pooled, case, n, processes)
            times.append(time.perf_counter() - t0)
            # check what came back (outside the timing)
            assert len(out) == n
            if case == "frames":
                for i in (0, n // 2, n - 1):
                    a = out[i]
                    assert a.shape == FRAME_SHAPE and a[0, 0, 0] == a[-1, -1, -1] == i % 251
            else:
                assert out[0] == 0 and out[-1] == n - 1
            del out
    finally:
        if pooled:
            pool.close()
            pool.join()
        else:
            pool.shutdown(wait=True)
    return times


def suite(level="full", rounds=None, repeats=None, processes=None, start="fork", only=None):
    """The pool cases at ``level``; smoke runs small imap/apply/map only."""
    smoke, quick = level == "smoke", level != "full"
    repeats = repeats or (1 if smoke else 2 if quick else 3)
    rounds = 1 if quick else max(1, rounds or 3)
    processes = processes or 2
    peers = [k for k in PEERS if k != "loky" or installed("loky")]
    results, rows, summary = {}, [], []
    for case, (n, desc) in CASES.items():
        if (only and case != only) or (smoke and case == "frames"):
            continue
        if smoke:
            n = min(n, 2000)
            desc = desc.replace("20k", "2000").replace("100k", "2000")
        runs = {k: [] for k in peers}
        for _ in range(rounds):
            for kind in peers:
                runs[kind].append(run_peer("pool", "peer", kind=kind, case=case, n=n,
                                           repeats=repeats, processes=processes,
                                           start=start))
        med = {k: median([t for r in v for t in r]) for k, v in runs.items()}
        speed = {k: med[k] / med["gb"] for k in peers}
        results[case] = {"n": n, "runs_s": runs, "median_s": med, "speedup": speed,
                         "target_vs_mp": TARGETS[case]}
        unit = "frames/s" if case == "frames" else "tasks/s"
        rows.append([desc] + [fmt_ns(med[k] * 1e9) if k in med else NOT_INSTALLED
                              for k in PEERS]
                    + [f"{n / med['gb']:,.0f} {unit}"]
                    + [fmt_ratio(speed[k]) if k in speed else NOT_INSTALLED
                       for k in PEERS[1:]])
        summary.append(summary_row("pool", f"Pool {desc}", "s per call", med["gb"], med["mp"],
                                   "mp.Pool", higher_is_better=False, gb_peer="gb.Pool"))
    tables = [table(
        f"gb.Pool vs multiprocessing.Pool, ProcessPoolExecutor, loky (wall time per call, "
        f"median of every call; {processes} workers, start method {start}, {rounds} round(s) "
        f"x {repeats} calls per peer, peers alternating)",
        ["case", "gb.Pool", "mp.Pool", "ProcessPoolExecutor", "loky", "gb.Pool rate",
         "vs. mp", "vs. executor", "vs. loky"],
        rows,
        note="vs. X: X's time / gb.Pool's time (higher is better); issue 12 targets vs. "
             "mp.Pool: imap and apply >= 10x, map >= 3x, frames >= 10x.")]
    return {"results": results, "tables": tables, "summary": summary}


def main(argv=None):
    ap = ab_parser(__doc__.split("\n\n")[0], "calls")
    ap.add_argument("--processes", type=int, default=None, help="pool size (default 2)")
    ap.add_argument("--only", choices=sorted(CASES), help="one case")
    args = ap.parse_args(argv)
    main_suite(args, "pool", lambda lv: suite(lv, args.rounds, args.repeats, args.processes,
                                              args.start, args.only))


if __name__ == "__main__":
    main()
