"""Throughput against payload size: ``python -m benchmarks.sweep [--quick] [--json PATH]``.

One producer process sends the same ``bytes`` object of 8 B ... 32 MiB to one
consumer process, again and again, through ``gb.Ring()``,
``multiprocessing.Queue()``, ``multiprocessing.Pipe()``, faster-fifo and
pyzmq PUSH/PULL over ``ipc://``, each through its object API as a user
would call it (``put``/``get``, ``send``/``recv``; pyzmq carries the bytes
as they are, the others pickle them).  ``bytes`` is the one payload every
peer carries natively.

Every (peer, size) measurement is one fresh interpreter running
``benchmarks.rings.worker``: it forks the two processes, sends a few untimed
items first (connections, out-of-line blobs, page faults), releases both
through a barrier and reports items/s = items / (release -> the consumer's
last item).  Rounds visit the peers in rotated order; each figure is the
median over rounds and each "vs." ratio the median of per-round ratios.

The *copy bound* beside them is what no transport between two Python
processes can beat: the rate at which one process makes the new ``bytes``
object a ``get()`` must return, copied from a buffer as large as the ring
(``bytes(view[i:i + n])`` round a 4 MiB or 2-payload region: one copy and
one allocation per item, page faults included where the allocator maps
fresh memory), measured in the same rounds.  The sender's copy can run at
the same time on the other core, so this one copy is the bound; "gb of
bound" is gb.Ring's rate as a share of it.
"""
import os
import statistics
import sys
import time

from benchmarks._util import (
    NOT_INSTALLED,
    fmt_ratio,
    main_suite,
    parser,
    run_peer,
    summary_row,
    table,
)
from benchmarks.rings import PEER_NAMES, fmt_rate, have

PEERS = ("gb", "mp", "pipe", "ff", "zmq")
STDLIB = ("mp", "pipe")
KiB, MiB = 2**10, 2**20
SIZES = {
    "full": [8 * 4**k for k in range(12)],  # 8 B, 32 B, ... 8 MiB, 32 MiB
    "quick": [8, 64, 512, 4 * KiB, 32 * KiB, 256 * KiB, 2 * MiB, 32 * MiB],
    "smoke": [64, 256 * KiB],
}
# per measurement: bytes to move, and bounds on the item count
BUDGET = {"full": (256 * MiB, 16, 100_000), "quick": (64 * MiB, 8, 20_000),
          "smoke": (2 * MiB, 4, 500)}
ROUNDS = {"full": 3, "quick": 2, "smoke": 1}


def fmt_size(n):
    for unit, k in (("MiB", MiB), ("KiB", KiB)):
        if n >= k:
            return f"{n / k:g} {unit}"
    return f"{n} B"


def _count(size, level):
    budget, lo, hi = BUDGET[level]
    return max(lo, min(hi, budget // size))


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def copy_worker(size, n):
    """The copy bound for ``size``-byte items: {"rate": new bytes objects
    copied out of a ring-sized buffer per second}."""
    region = max(4 * MiB, 2 * size)
    view = memoryview(bytearray(b"\1" * region))
    k = region // size
    for i in range(min(n, 2 * k)):  # touch the region, warm the allocator
        j = (i % k) * size
        bytes(view[j:j + size])
    t0 = time.perf_counter()
    for i in range(n):
        j = (i % k) * size
        bytes(view[j:j + size])
    return {"rate": n / (time.perf_counter() - t0)}


def suite(level="full", sizes=None, rounds=None, peers=None):
    """items/s and MB/s for every peer and payload size."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")  # as benchmarks.rings: no spinning BLAS threads
    sizes = sizes or SIZES[level]
    rounds = rounds or ROUNDS[level]
    wanted = peers or PEERS
    present = [p for p in wanted if have(p)]
    samples = {(p, s): [] for p in present for s in sizes}
    bound = {s: [] for s in sizes}
    t_start = time.monotonic()
    for rnd in range(rounds):
        for size in sizes:
            order = present[rnd % len(present):] + present[:rnd % len(present)]
            n = _count(size, level)
            for p in order:
                try:
                    res = run_peer("rings", "worker", timeout=300, peer=p, case_name=None,
                                   variant=None, n=n, payload=size, warm=max(2, min(200, n // 10)))
                except Exception as e:  # one failed sample must not sink the table
                    res = {"error": str(e).splitlines()[0]}
                    print(f"  {PEER_NAMES[p]} {fmt_size(size)}: ERROR {res['error']}",
                          file=sys.stderr, flush=True)
                samples[(p, size)].append(res.get("rate"))
            bound[size].append(run_peer("sweep", "copy_worker", timeout=300, size=size,
                                        n=n).get("rate"))
        print(f"  sweep round {rnd + 1}/{rounds} done", file=sys.stderr, flush=True)
    wall = time.monotonic() - t_start

    by_peer = {}
    for p in wanted:
        if p not in present:
            by_peer[PEER_NAMES[p]] = {"installed": False}
            continue
        pts = []
        for size in sizes:
            rate = _median(samples[(p, size)])
            gb = samples.get(("gb", size), [])
            pts.append({"size": size, "items": _count(size, level), "items_per_s": rate,
                        "mb_per_s": rate * size / 1e6 if rate else None,
                        "samples": samples[(p, size)],
                        "gb_vs": _median([g / x if g and x else None
                                          for g, x in zip(gb, samples[(p, size)])])})
        by_peer[PEER_NAMES[p]] = {"installed": True, "points": pts}

    others = [p for p in wanted if p != "gb"]
    rows = []
    for i, size in enumerate(sizes):
        row = [fmt_size(size)]
        for p in wanted:
            d = by_peer[PEER_NAMES[p]]
            row.append(fmt_rate(d["points"][i]["items_per_s"]) if d["installed"]
                       else NOT_INSTALLED)
        g = by_peer[PEER_NAMES["gb"]]["points"][i] if "gb" in present else None
        row.append(f"{g['mb_per_s']:,.0f}" if g and g["mb_per_s"] else "-")
        for p in others:
            d = by_peer[PEER_NAMES[p]]
            row.append(fmt_ratio(d["points"][i]["gb_vs"]) if d["installed"] else NOT_INSTALLED)
        b = _median(bound[size])
        row.append(fmt_rate(b))
        row.append(f"{g['items_per_s'] / b:.0%}" if g and g["items_per_s"] and b else "-")
        rows.append(row)
    tables = [table(
        "Throughput against payload size: items/s, one producer -> one consumer process "
        "(medians)",
        ["payload"] + [PEER_NAMES[p] for p in wanted] + [f"{PEER_NAMES['gb']} MB/s"]
        + [f"vs. {PEER_NAMES[p]}" for p in others] + ["copy bound", "gb of bound"], rows,
        note=f"bytes payloads; {rounds} round(s), {_count(sizes[0], level):,} items at "
             f"{fmt_size(sizes[0])} down to {_count(sizes[-1], level):,} at "
             f"{fmt_size(sizes[-1])}; ratios are medians of per-round ratios; {wall:.0f} s")]

    summary = []
    if "gb" in present and "mp" in present:
        gbp, mpp = by_peer["gb.Ring"]["points"], by_peer["mp.Queue"]["points"]
        picks = sorted({0, len(sizes) - 1, min(range(len(sizes)),
                                                 key=lambda i: abs(sizes[i] - 4 * KiB))})
        for i in picks:
            summary.append(summary_row("sweep", f"{fmt_size(sizes[i])} bytes payload",
                                       "items/s", gbp[i]["items_per_s"], mpp[i]["items_per_s"],
                                       "mp.Queue", advantage=mpp[i]["gb_vs"],
                                       gb_peer="gb.Ring"))
    return {"results": {"sizes": sizes, "rounds": rounds, "wall_seconds": wall,
                        "peers": by_peer,
                        "copy_bound": {s: {"samples": bound[s], "items_per_s": _median(bound[s])}
                                       for s in sizes}, "stdlib": [PEER_NAMES[p] for p in STDLIB]},
            "tables": tables, "summary": summary}


def main(argv=None):
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 3, --quick 2)")
    ap.add_argument("--peers", help=f"comma-separated subset of {','.join(PEERS)}")
    args = ap.parse_args(argv)
    peers = args.peers.split(",") if args.peers else None
    main_suite(args, "sweep", lambda lv: suite(lv, rounds=args.rounds, peers=peers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
