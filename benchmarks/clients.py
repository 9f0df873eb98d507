"""Stdlib consumers of a context, on ours against the stdlib's:
``python -m benchmarks.clients``.

The same code runs once with ``global_buffer.multiprocessing.get_context(start)``
and once with ``multiprocessing.get_context(start)`` (issue 15):

- ``executor-small``: ``concurrent.futures.ProcessPoolExecutor(mp_context=ctx)``,
  2000 ``submit(x + 1)`` then every ``result()``: per-task overhead.
- ``executor-frames``: the same executor, ``list(ex.map(f, range(20)))``
  where ``f`` returns a 1080p uint8 RGB frame (6.2 MB): result transport.
- ``pool-small`` / ``pool-frames``: the same two on
  ``multiprocessing.pool.Pool(processes, context=ctx)`` (``apply_async``
  then ``get()`` for the small tasks, ``map`` for the frames).

What ours changes: the context's ``SimpleQueue``.  The executor's results
come back through it (its call queue is the stdlib's own
``multiprocessing.queues.Queue`` subclass over an OS pipe, whatever the
context); the Pool's tasks, results and change notifications all go
through it.

Each case is an entry of :data:`CASES` (client, inputs, description, and
the function that runs one timed batch on a warm client), so further
clients (a DataLoader, ...) add entries without touching the rest.  Each
peer runs in its own interpreter (``_util.run_peer``), warms its client
(workers started, a few tasks done), then times ``repeats`` batches;
rounds alternate the peers.  Figures are medians of every timed batch;
"vs. stdlib" is the stdlib's median time over ours (higher is better).
"""
import os
import time

from benchmarks._util import ab_parser, ab_runs, fmt_ns, fmt_ratio, main_suite, summary_row, table

FRAME_SHAPE = (1080, 1920, 3)


def _frame(i):
    import numpy as np
    return np.full(FRAME_SHAPE, i % 251, np.uint8)


def _inc(x):
    return x + 1


def _check_frames(out, n):
    assert len(out) == n
    for i in (0, n // 2, n - 1):
        a = out[i]
        assert a.shape == FRAME_SHAPE and a[0, 0, 0] == a[-1, -1, -1] == i % 251


# -- the clients: make one on a context, warm it, run one batch of a case ------

def _executor(ctx, processes):
    import concurrent.futures
    ex = concurrent.futures.ProcessPoolExecutor(processes, mp_context=ctx)
    list(ex.map(_inc, range(4 * processes)))  # workers up and serving
    return ex, lambda: ex.shutdown(wait=True)


def _pool(ctx, processes):
    import multiprocessing.pool
    pool = multiprocessing.pool.Pool(processes, context=ctx)
    pool.map(_inc, range(4 * processes))

    def done():
        pool.close()
        pool.join()
    return pool, done


def _executor_small(ex, n):
    fs = [ex.submit(_inc, i) for i in range(n)]
    out = [f.result() for f in fs]
    assert out[0] == 1 and out[-1] == n


def _executor_frames(ex, n):
    _check_frames(list(ex.map(_frame, range(n))), n)


def _pool_small(pool, n):
    rs = [pool.apply_async(_inc, (i,)) for i in range(n)]
    out = [r.get() for r in rs]
    assert out[0] == 1 and out[-1] == n


def _pool_frames(pool, n):
    _check_frames(pool.map(_frame, range(n)), n)


CLIENTS = {"executor": _executor, "pool": _pool}
CASES = {
    # case: (client, inputs, description ({n}: inputs), one timed batch)
    "executor-small": ("executor", 2000, "ProcessPoolExecutor: {n} submit(x + 1), result()",
                       _executor_small),
    "executor-frames": ("executor", 20, "ProcessPoolExecutor: map -> 1080p frame x {n}",
                        _executor_frames),
    "pool-small": ("pool", 2000, "pool.Pool: {n} apply_async(x + 1), get()", _pool_small),
    "pool-frames": ("pool", 20, "pool.Pool: map -> 1080p frame x {n}", _pool_frames),
}
# ours must be at least this many times faster (issue 15)
TARGETS = {"executor-small": 2, "executor-frames": 5, "pool-small": 2, "pool-frames": 2}


def peer(kind, case, n, repeats, processes, start):
    """Time ``repeats`` batches of ``case`` on one warm client built on our
    context (``kind="gb"``) or the stdlib's (``"mp"``); returns seconds."""
    import multiprocessing as mp

    import global_buffer.multiprocessing as gbmp

    ctx = (gbmp if kind == "gb" else mp).get_context(start)
    client, _, _, batch = CASES[case]
    obj, done = CLIENTS[client](ctx, processes)
    times = []
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            batch(obj, n)
            times.append(time.perf_counter() - t0)
    finally:
        done()
    return times


def suite(level="full", rounds=None, repeats=None, processes=None, start="fork", only=None):
    """The client cases at ``level``; smoke runs small counts of each."""
    smoke, quick = level == "smoke", level != "full"
    repeats = repeats or (1 if smoke else 3 if quick else 5)
    rounds = 1 if smoke else max(1, rounds or (2 if quick else 3))
    processes = processes or min(os.cpu_count() or 1, 2)
    results, rows, summary = {}, [], []
    for case, (client, n, desc, _) in CASES.items():
        if only and case not in only:
            continue
        if smoke:
            n = min(n, 200 if n > 100 else 4)
        desc = desc.format(n=n)
        runs, med = ab_runs("clients", rounds, case=case, n=n, repeats=repeats,
                            processes=processes, start=start)
        speed = med["mp"] / med["gb"]
        results[case] = {"client": client, "n": n, "runs_s": runs, "median_s": med,
                         "speedup": speed, "target": TARGETS.get(case)}
        rows.append([desc, fmt_ns(med["mp"] * 1e9), fmt_ns(med["gb"] * 1e9),
                     fmt_ns(med["gb"] / n * 1e9), fmt_ratio(speed),
                     f">= {TARGETS[case]}x" if case in TARGETS else "-"])
        summary.append(summary_row("clients", desc, "s per batch", med["gb"], med["mp"],
                                   "stdlib context", higher_is_better=False,
                                   gb_peer="gb context"))
    tables = [table(
        f"Stdlib clients on our context vs the stdlib's (wall time per batch, median; "
        f"{processes} workers, start method {start}, {rounds} round(s) x {repeats} batches)",
        ["case", "stdlib ctx", "gb ctx", "gb per item", "vs. stdlib", "target"], rows,
        note="vs. stdlib: stdlib time / gb time (higher is better).")]
    return {"results": results, "tables": tables, "summary": summary}


def main(argv=None):
    ap = ab_parser(__doc__.split("\n\n")[0], "batches")
    ap.add_argument("--processes", type=int, default=None,
                    help="workers (default min(os.cpu_count(), 2))")
    ap.add_argument("--only", action="append", choices=sorted(CASES),
                    help="one case (repeatable)")
    args = ap.parse_args(argv)
    main_suite(args, "clients", lambda lv: suite(lv, args.rounds, args.repeats, args.processes,
                                                 args.start, args.only))


if __name__ == "__main__":
    main()
