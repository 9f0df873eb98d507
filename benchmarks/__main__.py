"""The benchmark suite in one run: ``python -m benchmarks``.

    python -m benchmarks                       # full run (what the docs quote)
    python -m benchmarks --quick               # fewer rounds, smaller counts
    python -m benchmarks --only sweep,wake     # some of the benchmarks
    python -m benchmarks --json results.json   # every figure and sample as JSON
    python -m benchmarks --plots DIR           # where the plots go (default docs/img)

Runs the stream, ring, payload-sweep, wake-latency, zero-copy, Pipe, Pool,
stdlib-client and across-hosts benchmarks (``benchmarks.<name>.suite``) one
after the other, prints the machine, the method, each benchmark's tables
and a summary of gb against the stdlib as markdown, and plots throughput
against payload size and the wake latency CDF (PNG and SVG; needs
matplotlib, from the ``bench`` extra).
"""
import argparse
import datetime
import json
import os
import sys
import time
import traceback

from benchmarks import (
    _util,
    bridge,
    clients,
    dataloader,
    pipe,
    plots,
    pool,
    rings,
    streams,
    sweep,
    wake,
    zero_copy,
)
from benchmarks._util import LEVELS, fmt_ns, fmt_ratio, format_table, machine_lines, table

BENCHMARKS = {
    "streams": (streams, "write/read cost, cross-process frames, messages"),
    "rings": (rings, "gb.Ring against mp.Queue and faster-fifo"),
    "sweep": (sweep, "throughput against payload size, 8 B to 32 MiB"),
    "wake": (wake, "waiting and waking: latency, idle cost, writer cost"),
    "zero_copy": (zero_copy, "zero-copy 1080p reads: gb view() against iceoryx2 pub/sub"),
    "pipe": (pipe, "gb.Pipe against multiprocessing.Pipe"),
    "pool": (pool, "gb.Pool against multiprocessing.Pool"),
    # stdlib consumers of a context (ProcessPoolExecutor, pool.Pool, ...):
    # one case per entry of benchmarks.clients.CASES
    "clients": (clients, "stdlib clients (ProcessPoolExecutor, pool.Pool) on our context"),
    "dataloader": (dataloader, "PyTorch DataLoader on our context (needs torch)"),
    # two simulated hosts (needs root and the zenoh extra): SPEC §9
    "bridge": (bridge, "across hosts: the Zenoh bridge vs raw Zenoh and a manager queue"),
}
DEFAULT_PLOTS = os.path.join(_util.ROOT, "docs", "img")

METHOD = [
    "Every measurement runs in a fresh interpreter (benchmarks._util.run_peer); "
    "cross-process cases fork their producer and consumer processes from it.",
    "Rounds visit the peers in turn (rotated order where the benchmark says so), so "
    "that a noisy neighbour hits all of them alike; figures are medians over rounds or "
    "timed batches, and ratios the medians of per-round ratios where rounds pair up.",
    "Throughput: items / (first producer released -> last item received), read from "
    "CLOCK_MONOTONIC (time.perf_counter), one clock for every process on the host.",
    "Latency: the producer stamps time.perf_counter_ns() into each item about every "
    "1 ms; the reader, blocked in next()/get()/recv(), subtracts it on return.",
    "OPENBLAS/OMP/MKL_NUM_THREADS=1 in every peer; start method fork.",
]
LEVEL_NOTE = {
    "full": "full run",
    "quick": "--quick: fewer rounds and smaller counts than the full run",
    "smoke": "--smoke: tiny counts, one round; checks that the suite runs, the figures "
             "mean nothing",
}


def fmt_value(x, unit):
    if x is None:
        return "-"
    if unit == "ns":
        return fmt_ns(x)
    if unit.startswith("s "):
        return fmt_ns(x * 1e9)
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e4:
        return f"{x / 1e3:.0f}k"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def summary_table(rows):
    body = [[r["benchmark"], r["case"], r["unit"], r["gb_peer"], fmt_value(r["gb"], r["unit"]),
             r["stdlib_peer"], fmt_value(r["stdlib"], r["unit"]), fmt_ratio(r["advantage"])]
            for r in rows]
    return table("Summary: gb against the stdlib",
                 ["benchmark", "case", "unit", "gb", "", "stdlib", "", "gb advantage"], body,
                 note="gb advantage: how many times better gb is (> 1: gb better), i.e. "
                      "gb / stdlib for rates and stdlib / gb for times and latencies.")


def _args(argv):
    ap = argparse.ArgumentParser(prog="python -m benchmarks",
                                 description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="benchmarks: " + ", ".join(BENCHMARKS))
    lv = ap.add_mutually_exclusive_group()
    lv.add_argument("--quick", action="store_true",
                    help="fewer rounds, smaller counts (minutes, not tens of minutes)")
    lv.add_argument("--smoke", action="store_true",
                    help="tiny counts: checks that everything runs; figures mean nothing")
    ap.add_argument("--only", action="append", metavar="NAME[,NAME]",
                    help="run only these benchmarks (repeatable)")
    ap.add_argument("--json", metavar="PATH", help="write machine, method and all results here")
    ap.add_argument("--plots", metavar="DIR", default=DEFAULT_PLOTS,
                    help="write throughput.{png,svg} and latency_cdf.{png,svg} here "
                         "(default: docs/img of this checkout)")
    ap.add_argument("--no-plots", action="store_true", help="write no plots")
    args = ap.parse_args(argv)
    names = list(BENCHMARKS)
    if args.only:
        names = [n.strip() for o in args.only for n in o.split(",") if n.strip()]
        unknown = [n for n in names if n not in BENCHMARKS]
        if unknown:
            ap.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from "
                     f"{', '.join(BENCHMARKS)}")
    args.names = [n for n in BENCHMARKS if n in names]  # suite order
    args.level = "smoke" if args.smoke else "quick" if args.quick else "full"
    assert args.level in LEVELS
    return args


def _plots(args, out, info):
    if args.no_plots:
        return []
    if not plots.available():
        print(f"\nmatplotlib is {_util.NOT_INSTALLED} (pip install -e '.[bench]'): no plots",
              file=sys.stderr)
        return []
    res = out["benchmarks"]
    caption = (f"{info['cpu']}, {info.get('cpus_logical')} CPUs, {info['kernel']}, "
               f"Python {info['python']}; {args.level} run, {out['started'][:10]}")
    paths = []
    if "results" in res.get("sweep", {}):
        paths += plots.throughput(res["sweep"]["results"], caption, args.plots)
    if "results" in res.get("wake", {}):
        paths += plots.latency_cdf(res["wake"]["results"], caption, args.plots)
    return paths


def main(argv=None):
    args = _args(argv)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")  # children inherit it
    info = _util.machine()
    info["global_buffer_build"] = _util.run_peer("_util", "build_info")
    command = "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])
    out = {"suite": "global_buffer benchmarks", "command": command.strip(),
           "level": args.level,
           "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": info, "method": METHOD + [LEVEL_NOTE[args.level]],
           "benchmarks": {}, "summary": [], "errors": {}}
    print("# global_buffer benchmarks\n")
    print(f"`{out['command']}` ({LEVEL_NOTE[args.level]}), started {out['started']}\n")
    for line in machine_lines(info):
        print(f"- {line}")
    print(f"- global_buffer {info['global_buffer_build']['version']} "
          f"({info['global_buffer_build']['core']})\n")
    print("Method:\n")
    for line in METHOD:
        print(f"- {line}")
    t_all = time.monotonic()
    for name in args.names:
        mod, title = BENCHMARKS[name]
        print(f"\n## {name}: {title}", flush=True)
        t0 = time.monotonic()
        try:
            res = mod.suite(args.level)
        except Exception:  # report it and go on with the others
            out["errors"][name] = traceback.format_exc()
            print(f"\n**{name} failed**:\n\n```\n{out['errors'][name]}```", flush=True)
            continue
        res["wall_seconds"] = time.monotonic() - t0
        out["benchmarks"][name] = res
        out["summary"] += res["summary"]
        for t in res["tables"]:
            print("\n" + format_table(t), flush=True)
    out["wall_seconds"] = time.monotonic() - t_all
    info["loadavg_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print("\n## Summary\n")
    print(format_table(summary_table(out["summary"])))
    print(f"\n{len(args.names)} benchmark(s) in {out['wall_seconds']:.0f} s; load average at "
          f"end {_util.fmt_load(info['loadavg_at_end'])}")
    out["plots"] = _plots(args, out, info)
    for path in out["plots"]:
        print(f"wrote {path}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"wrote {args.json}")
    return 1 if out["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
