"""gb.Pool against multiprocessing.Pool: ``python -m benchmarks.pool``.

Two cases (issue 5), the same calls on both pools:

- ``frames``: ``pool.map(f, range(200))`` where ``f`` returns a 1080p
  uint8 RGB frame (6.2 MB): result transport dominates.
- ``small``: ``pool.map(g, range(100_000))`` where ``g`` is ``x + 1``:
  per-task overhead dominates.

Each peer runs in its own interpreter (``_util.run_peer``) and times
``repeats`` maps on one warm pool (workers started, one small map done);
rounds alternate the peers so load drift on a shared machine hits both.
Figures are medians of every timed map; "cold" is each pool's first map of
the case (for gb.Pool, the first frames map also creates the workers'
shared-memory leases, which later maps reuse).
"""
import os
import time

from benchmarks._util import (
    ab_parser,
    ab_runs,
    fmt_ns,
    fmt_ratio,
    main_suite,
    median,
    summary_row,
    table,
)

FRAME_SHAPE = (1080, 1920, 3)
CASES = {
    # case: (inputs, description)
    "frames": (200, "map -> 1080p uint8 frame (6.2 MB) x 200"),
    "small": (100_000, "map -> x + 1 x 100k small inputs"),
}


def _frame(i):
    import numpy as np
    return np.full(FRAME_SHAPE, i % 251, np.uint8)


def _inc(x):
    return x + 1


def peer(kind, case, n, repeats, processes, start):
    """Time ``repeats`` maps of ``case`` on one pool; returns seconds."""
    import multiprocessing as mp

    import global_buffer as gb

    ctx = mp.get_context(start)
    pool = gb.Pool(processes, context=ctx) if kind == "gb" else ctx.Pool(processes)
    fn = _frame if case == "frames" else _inc
    times = []
    with pool:
        pool.map(_inc, range(4 * processes))  # workers up and serving
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = pool.map(fn, range(n))
            times.append(time.perf_counter() - t0)
            # check what came back (outside the timing)
            if case == "frames":
                for i in (0, n // 2, n - 1):
                    a = out[i]
                    assert a.shape == FRAME_SHAPE and a[0, 0, 0] == a[-1, -1, -1] == i % 251
            else:
                assert out[0] == 1 and out[-1] == n and len(out) == n
            del out
        pool.close()
        pool.join()
    return times


def suite(level="full", rounds=None, repeats=None, processes=None, start="fork", only=None):
    """The pool cases at ``level``; smoke maps 2000 small tasks only."""
    smoke, quick = level == "smoke", level != "full"
    repeats = repeats or (1 if smoke else 2 if quick else 5)
    rounds = 1 if quick else max(1, rounds or 3)
    processes = processes or os.cpu_count() or 1
    only = only or ("small" if smoke else None)
    results, rows, summary = {}, [], []
    for case, (n, desc) in CASES.items():
        if only and case != only:
            continue
        if smoke:
            n = min(n, 2000)
            desc = desc.replace("100k", f"{n}")
        runs, med = ab_runs("pool", rounds, case=case, n=n, repeats=repeats,
                            processes=processes, start=start)
        cold = {k: median([r[0] for r in v]) for k, v in runs.items()}
        speed = med["mp"] / med["gb"]
        results[case] = {"n": n, "runs_s": runs, "median_s": med, "cold_s": cold,
                         "speedup": speed, "cold_speedup": cold["mp"] / cold["gb"]}
        unit = "frames/s" if case == "frames" else "tasks/s"
        rows.append([desc, fmt_ns(med["mp"] * 1e9), fmt_ns(med["gb"] * 1e9),
                     f"{n / med['gb']:,.0f} {unit}", fmt_ratio(speed),
                     fmt_ratio(cold["mp"] / cold["gb"])])
        summary.append(summary_row("pool", f"Pool.map {desc.replace('map -> ', '')}",
                                   "s per map", med["gb"], med["mp"], "mp.Pool",
                                   higher_is_better=False, gb_peer="gb.Pool"))
    tables = [table(
        f"Pool.map, gb.Pool vs multiprocessing.Pool (wall time per map, median; pool size "
        f"{processes}, start method {start}, {rounds} round(s) x {repeats} maps per pool kind)",
        ["case", "mp.Pool", "gb.Pool", "gb.Pool rate", "vs. mp", "vs. mp (cold)"],
        rows,
        note="vs. mp: mp.Pool time / gb.Pool time (higher is better); targets: "
             "frames >= 5x, small >= 1x.")]
    return {"results": results, "tables": tables, "summary": summary}


def main(argv=None):
    ap = ab_parser(__doc__.split("\n\n")[0], "maps")
    ap.add_argument("--processes", type=int, default=None,
                    help="pool size (default os.cpu_count())")
    ap.add_argument("--only", choices=sorted(CASES), help="one case")
    args = ap.parse_args(argv)
    main_suite(args, "pool", lambda lv: suite(lv, args.rounds, args.repeats, args.processes,
                                              args.start, args.only))


if __name__ == "__main__":
    main()
