"""``gb.Pool(cluster="local")`` against plain Dask (SPEC §3.3, §9; issue 12
item 4): ``python -m benchmarks.cluster [--quick|--smoke] [--rounds N] [--json PATH]``.

One peer process starts ``gb.Pool(2, cluster="local")`` (a ``LocalCluster``
on 127.0.0.1: 2 single-threaded worker processes) and runs the same tasks
on that same cluster both ways, alternating which goes first each round:

- ``map`` (chunksize 1) against ``client.gather(client.map(f, xs))``: one
  Dask task per item both ways, so the ratio is the pool's own overhead
  (pickling, the feeder/submitter/collector threads, result objects);
- ``imap`` (chunksize 1) against the same ``client.map``;
- ``apply_async`` per item against ``client.submit`` per item;
- ``map`` with the default chunksize (what a Pool user gets: a few chunks
  per worker) against per-item ``client.map``, for scale.

Figures are medians over rounds; "gb / dask" is the median of per-round
ratios (lower is better; target <= 1.2 for the one-task-per-item cases).
The tasks are trivial (``x * x``), so this measures per-task cost, which
Dask dominates.  Needs ``distributed`` (``global_buffer[dask]``).
"""
import os
import time

from benchmarks._util import NOT_INSTALLED, installed, main_suite, median, parser, run_peer, table

CASES = {
    "map1": "map, chunksize 1 vs client.map",
    "imap1": "imap, chunksize 1 vs client.map",
    "apply": "apply_async per item vs client.submit per item",
    "map": "map, default chunksize vs client.map",
}


def square(x):
    return x * x


def run(n, rounds):
    """In the peer process: every case, ``rounds`` times each way."""
    import distributed

    import global_buffer as gb

    def plain_map(client, xs):
        return client.gather(client.map(square, xs, pure=False))

    def plain_submit(client, xs):
        return client.gather([client.submit(square, x, pure=False) for x in xs])

    gb_side = {
        "map1": lambda p, xs: p.map(square, xs, chunksize=1),
        "imap1": lambda p, xs: list(p.imap(square, xs)),
        "apply": lambda p, xs: [r.get(600) for r in [p.apply_async(square, (x,)) for x in xs]],
        "map": lambda p, xs: p.map(square, xs),
    }
    dask_side = {"map1": plain_map, "imap1": plain_map, "apply": plain_submit, "map": plain_map}
    out = {case: {"gb_s": [], "dask_s": [], "ratio": []} for case in CASES}
    t0 = time.perf_counter()
    with gb.Pool(2, cluster="local") as pool:
        startup = time.perf_counter() - t0
        client = pool.client
        assert isinstance(client, distributed.Client)
        xs = list(range(n))
        want = [x * x for x in xs]
        for case in CASES:  # warm up: connections, the workers' imports
            assert gb_side[case](pool, xs[:20]) == want[:20]
            assert dask_side[case](client, xs[:20]) == want[:20]
        for r in range(rounds):
            for case in CASES:
                t = {}
                order = ("gb", "dask") if r % 2 == 0 else ("dask", "gb")
                for who in order:
                    s = time.perf_counter()
                    got = (gb_side[case](pool, xs) if who == "gb"
                           else dask_side[case](client, xs))
                    t[who] = time.perf_counter() - s
                    assert got == want, (case, who)
                out[case]["gb_s"].append(t["gb"])
                out[case]["dask_s"].append(t["dask"])
                out[case]["ratio"].append(t["gb"] / t["dask"])
    return {"n": n, "rounds": rounds, "startup_s": startup, "cases": out,
            "distributed": distributed.__version__, "loadavg": os.getloadavg()}


def suite(level="full", rounds=None):
    smoke, quick = level == "smoke", level == "quick"
    if not installed("distributed"):
        return {"results": {"error": NOT_INSTALLED},
                "tables": [table("gb.Pool(cluster='local') vs plain Dask", ["case", "result"],
                                 [["all", "distributed " + NOT_INSTALLED]])],
                "summary": []}
    n = 10 if smoke else 200 if quick else 500
    rounds = rounds or (1 if smoke else 3 if quick else 5)
    res = run_peer("cluster", "run", timeout=3600, n=n, rounds=rounds)
    rows, results = [], {"n": n, "rounds": rounds, "startup_s": res["startup_s"],
                         "distributed": res["distributed"], "cases": {}}
    for case, desc in CASES.items():
        c = res["cases"][case]
        g, d, ratio = median(c["gb_s"]), median(c["dask_s"]), median(c["ratio"])
        results["cases"][case] = {**c, "gb_median_s": g, "dask_median_s": d,
                                  "ratio_median": ratio}
        rows.append([desc, f"{g * 1e3:,.0f} ms ({g / n * 1e6:,.0f} us/task)",
                     f"{d * 1e3:,.0f} ms ({d / n * 1e6:,.0f} us/task)", f"{ratio:.2f}"])
    tables = [table(
        f"gb.Pool(2, cluster='local') vs plain Dask on the same LocalCluster "
        f"({n} tasks of x*x, median of {rounds} round(s); distributed {res['distributed']})",
        ["case", "gb.Pool", "plain Dask", "gb / dask"], rows,
        note="gb / dask: median of per-round time ratios (lower is better; target <= 1.2 "
             "where both run one Dask task per item).  Starting the LocalCluster took "
             f"{res['startup_s']:.1f} s (not timed above).")]
    return {"results": results, "tables": tables, "summary": []}


def main(argv=None):
    ap = parser(__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, help="rounds per case (default 5; --quick 3)")
    args = ap.parse_args(argv)
    main_suite(args, "cluster", lambda lv: suite(lv, args.rounds))


if __name__ == "__main__":
    main()
