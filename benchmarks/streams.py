"""Stream benchmarks (issue 2): ``python -m benchmarks.streams [--quick] [--json PATH]``.

1. Cost per sample in one process: ``write``, ``latest`` and ``next_into``
   for 64 x float32, 32 KiB and a 1080x1920x3 uint8 frame, next to
   ``np.copyto`` of the same array (the physical floor of a copy).
2. Cross-process frame throughput: a writer process streaming frames to a
   reader process doing ``next_into`` (lossy: the writer runs free and the
   reader counts overruns; lossless: the reader acknowledges through a second
   stream and the writer never laps it) against ``multiprocessing.Queue``
   put/get of the same ndarray, for 1 MiB float32 and 1080p uint8 frames.
3. Message streams: a pydantic model written and read through a stream
   against ``model_dump`` + msgpack, ``model_dump_json`` and pickle.

Every peer runs in its own subprocess; each figure is a median of repeats.
"""
import multiprocessing as mp
import os
import pickle
import time
from typing import Dict, List

import numpy as np
import pydantic

from benchmarks._util import (
    fmt_ns,
    fmt_ratio,
    main_suite,
    median,
    parser,
    per_call_ns,
    run_peer,
    summary_row,
    table,
)

SIZES = {
    "64 x float32": ((64,), "float32", 64),
    "32 KiB": ((8192,), "float32", 64),
    "1080p uint8": ((1080, 1920, 3), "uint8", 2),
    "1080p uint8, capacity 8": ((1080, 1920, 3), "uint8", 8),
}
FRAMES = {
    "1 MiB float32": ((256 * 1024,), "float32"),
    "1080p uint8": ((1080, 1920, 3), "uint8"),
}


def _name(tag):
    return f"bench-{tag}-{os.getpid()}-{time.monotonic_ns() % 10**9}"


def _counts(nbytes, quick):
    """(calls per repeat, repeats) giving ~0.1-0.3 s per repeat."""
    if nbytes <= 4096:
        n = 100_000
    elif nbytes <= 1 << 20:
        n = 20_000
    else:
        n = 40
    return (max(n // 4, 10), 5) if quick else (n, 9)


# ---------------------------------------------------------------------------
# peers: cost per sample
# ---------------------------------------------------------------------------

def cost_gb(shape, dtype, capacity, quick=False):
    """ns per write, latest() and next_into() on one stream."""
    import global_buffer as gb
    shape, dtype = tuple(shape), np.dtype(dtype)
    a = np.random.default_rng(0).integers(0, 255, shape).astype(dtype)
    out = np.empty_like(a)
    number, repeats = _counts(a.nbytes, quick)
    name = _name("cost")
    with gb.create(name, gb.ArraySpec(dtype, shape), capacity) as w, gb.attach(name) as r:
        write = per_call_ns(lambda: w.write(a), number, repeats)
        latest = per_call_ns(r.latest, number, repeats)
        # next_into: fill the ring, then time reading it back, batch by batch
        clock = time.perf_counter_ns
        per = []
        r._cursor = r._tail  # skip what the write loop left behind
        for rep in range(repeats + 1):
            spent = done = 0
            while done < number:
                k = min(capacity, number - done)
                for _ in range(k):
                    w.write(a)
                t0 = clock()
                for _ in range(k):
                    r.next_into(out)
                spent += clock() - t0
                done += k
            if rep:  # first round is warm-up
                per.append(spent / number)
        assert r.overruns == 0
    return {"write": write, "latest": latest, "next_into": median(per)}


def cost_copyto(shape, dtype, nbuf, quick=False):
    """ns per np.copyto(dst, a), cycling through ``nbuf`` destinations."""
    shape, dtype = tuple(shape), np.dtype(dtype)
    a = np.random.default_rng(0).integers(0, 255, shape).astype(dtype)
    dsts = [np.empty_like(a) for _ in range(nbuf)]
    for d in dsts:
        d.fill(0)  # fault the pages in, as the ring's slots are
    number, repeats = _counts(a.nbytes, quick)
    if nbuf == 1:
        d = dsts[0]
        return per_call_ns(lambda: np.copyto(d, a), number, repeats)
    it = iter(range(1 << 62))
    return per_call_ns(lambda: np.copyto(dsts[next(it) % nbuf], a), number, repeats)


# ---------------------------------------------------------------------------
# peers: cross-process throughput
# ---------------------------------------------------------------------------

def _gb_frame_writer(name, ack_name, shape, dtype, capacity, seconds, lossless, conn):
    import global_buffer as gb
    a = np.full(shape, 7, dtype)
    with gb.create(name, gb.ArraySpec(dtype, shape), capacity) as w:
        conn.send("ready")
        conn.recv()
        ack = gb.attach(ack_name) if lossless else None
        acked = np.zeros(1, np.int64)
        i = 0
        t0 = time.perf_counter()
        end = t0 + seconds
        while True:
            if lossless:
                while i >= acked[0] + capacity:  # never lap the reader
                    ack.next_into(acked, timeout=10)
            w.write(a)
            i += 1
            if not i & 3 and time.perf_counter() >= end:
                break
        elapsed = time.perf_counter() - t0
        conn.send((i, elapsed))
        conn.recv()  # the reader has drained before we unlink
        if ack is not None:
            ack.close()


def xp_gb(shape, dtype, capacity, seconds, lossless, view=False):
    """Writer process -> this process (reader doing next_into, or with
    ``view=True`` reading each frame in place through ``view("next")``:
    the zero-copy read, which touches one value per frame)."""
    import global_buffer as gb
    shape, dtype = tuple(shape), np.dtype(dtype)
    ctx = mp.get_context("fork")
    name, ack_name = _name("xp"), _name("ack")
    ack_w = gb.create(ack_name, gb.ArraySpec(np.int64, (1,)), 64) if lossless else None
    here, there = ctx.Pipe()
    p = ctx.Process(target=_gb_frame_writer, daemon=True,
                    args=(name, ack_name, shape, dtype, capacity, seconds, lossless, there))
    p.start()
    try:
        assert here.recv() == "ready"
        r = gb.attach(name)
        out = np.empty(shape, dtype)
        cnt = np.zeros(1, np.int64)
        here.send("go")
        n = 0
        t_first = t_last = None
        clock = time.perf_counter
        stale = 0
        while True:
            try:
                if view:
                    with r.view("next", timeout=0.5) as v:
                        v.flat[0]
                else:
                    r.next_into(out, timeout=0.5)
            except gb.Empty:
                if here.poll():
                    break
                continue
            except gb.StaleView:
                stale += 1
                continue
            n += 1
            if lossless:
                cnt[0] = r._cursor
                ack_w.write(cnt)
            t_last = clock()
            if t_first is None:
                t_first = t_last
        written, w_elapsed = here.recv()
        overruns = r.overruns + stale
        r.close()
        here.send("bye")
        p.join(30)
    finally:
        if p.is_alive():
            p.kill()
        if ack_w is not None:
            ack_w.unlink()
            ack_w.close()
        gb.unlink(name)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    rate = (n - 1) / (t_last - t_first) if n > 1 else 0.0
    return {"frames_read": n, "frames_written": written, "overruns": overruns,
            "read_fps": rate, "write_fps": written / w_elapsed,
            "read_gbps": rate * nbytes / 1e9}


def _mpq_writer(q, shape, dtype, seconds):
    a = np.full(shape, 7, dtype)
    i = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        q.put(a)
        i += 1
    q.put(None)


def xp_mpq(shape, dtype, capacity, seconds):
    """multiprocessing.Queue(maxsize=capacity): put/get of the same ndarray."""
    shape, dtype = tuple(shape), np.dtype(dtype)
    ctx = mp.get_context("fork")
    q = ctx.Queue(maxsize=capacity)
    p = ctx.Process(target=_mpq_writer, daemon=True, args=(q, shape, dtype, seconds))
    p.start()
    n = 0
    t_first = t_last = None
    clock = time.perf_counter
    while True:
        x = q.get()
        if x is None:
            break
        n += 1
        t_last = clock()
        if t_first is None:
            t_first = t_last
    p.join(30)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    rate = (n - 1) / (t_last - t_first) if n > 1 else 0.0
    return {"frames_read": n, "overruns": 0, "read_fps": rate,
            "read_gbps": rate * nbytes / 1e9}


# ---------------------------------------------------------------------------
# peers: message streams
# ---------------------------------------------------------------------------

class Tick(pydantic.BaseModel):
    """The message of the message-stream benchmark (module level: picklable)."""
    seq: int
    ts: float
    symbol: str
    price: float
    size: int
    bids: List[float]
    tags: Dict[str, str]


def _model():
    sample = Tick(seq=123456, ts=1712345678.123, symbol="EURUSD", price=1.08523,
                  size=1_000_000, bids=[1.0852 - i * 1e-5 for i in range(10)],
                  tags={"venue": "XNAS", "desk": "fx-spot"})
    return Tick, sample


def msg_cost(peer, quick=False):
    """ns to encode (write) and decode (read) one model instance."""
    Tick, m = _model()
    number, repeats = (5000, 5) if quick else (20000, 9)
    if peer == "gb":
        import global_buffer as gb
        name = _name("msg")
        with gb.create(name, Tick, 64) as w, gb.attach(name, Tick) as r, \
                gb.attach(name) as rd:
            enc = per_call_ns(lambda: w.write(m), number, repeats)
            dec = per_call_ns(r.latest, number, repeats)
            dec_dict = per_call_ns(rd.latest, number, repeats)
            assert r.latest() == m
            from global_buffer.codec import MessageCodec
            nbytes = len(MessageCodec(Tick).encode(m))
        return {"encode": enc, "decode": dec, "decode_dict": dec_dict, "bytes": nbytes}
    if peer == "dump+msgpack":
        import msgspec
        enc_, dec_ = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder()
        b = enc_.encode(m.model_dump())
        enc = per_call_ns(lambda: enc_.encode(m.model_dump()), number, repeats)
        dec = per_call_ns(lambda: Tick.model_validate(dec_.decode(b)), number, repeats)
        dec_dict = per_call_ns(lambda: dec_.decode(b), number, repeats)
        return {"encode": enc, "decode": dec, "decode_dict": dec_dict, "bytes": len(b)}
    if peer == "dump_json":
        b = m.model_dump_json()
        enc = per_call_ns(m.model_dump_json, number, repeats)
        dec = per_call_ns(lambda: Tick.model_validate_json(b), number, repeats)
        return {"encode": enc, "decode": dec, "decode_dict": None, "bytes": len(b)}
    if peer == "pickle":
        b = pickle.dumps(m, protocol=5)
        enc = per_call_ns(lambda: pickle.dumps(m, protocol=5), number, repeats)
        dec = per_call_ns(lambda: pickle.loads(b), number, repeats)
        return {"encode": enc, "decode": dec, "decode_dict": None, "bytes": len(b)}
    raise ValueError(peer)


# ---------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------

# transports of the cross-process table: (key, peer function, kwargs, title)
XP = (("lossy", "xp_gb", {"lossless": False}, "gb stream, writer free-running"),
      ("view", "xp_gb", {"lossless": False, "view": True}, 'gb stream, zero-copy view("next")'),
      ("lossless", "xp_gb", {"lossless": True}, "gb stream, reader acks (no overrun)"),
      ("mpq", "xp_mpq", {}, "multiprocessing.Queue(maxsize=8)"))
MSG = (("gb", "gb stream write / latest(model=)"),
       ("dump+msgpack", "model_dump + msgpack / model_validate(decode)"),
       ("dump_json", "model_dump_json / model_validate_json"),
       ("pickle", "pickle.dumps / pickle.loads"))


def suite(level="full"):
    """Run the three stream benchmarks at ``level`` (see ``_util.LEVELS``)."""
    quick = level != "full"
    smoke = level == "smoke"
    results = {"cost": {}, "throughput": {}, "messages": {}}
    tables, summary = [], []

    # 1. cost per sample
    rows = []
    rounds = 1 if smoke else 2 if quick else 3
    for label, (shape, dtype, cap) in list(SIZES.items())[:1 if smoke else None]:
        runs = {"gb": [], "copyto": [], "copyto_rotating": []}
        for _ in range(rounds):  # interleave peers: a noisy neighbour hits all alike
            runs["gb"].append(run_peer("streams", "cost_gb", shape=shape, dtype=dtype,
                                       capacity=cap, quick=quick))
            runs["copyto"].append(run_peer("streams", "cost_copyto", shape=shape,
                                           dtype=dtype, nbuf=1, quick=quick))
            runs["copyto_rotating"].append(run_peer("streams", "cost_copyto", shape=shape,
                                                    dtype=dtype, nbuf=cap + 1, quick=quick))
        g = {k: median([r[k] for r in runs["gb"]]) for k in runs["gb"][0]}
        c1, cn = median(runs["copyto"]), median(runs["copyto_rotating"])
        results["cost"][label] = {"gb": g, "copyto": c1, "copyto_rotating": cn,
                                  "capacity": cap, "runs": runs}
        rows.append([f"{label} (cap {cap})", fmt_ns(g["write"]), fmt_ns(g["latest"]),
                     fmt_ns(g["next_into"]), fmt_ns(c1), fmt_ns(cn),
                     fmt_ratio(g["write"] / c1), fmt_ratio(g["write"] / cn),
                     fmt_ratio(g["next_into"] / c1)])
    tables.append(table(
        "Cost per sample (one process, median ns per call)",
        ["sample", "write", "latest", "next_into", "np.copyto", "copyto, slots+1 bufs",
         "write vs. copyto", "write vs. rotating", "next_into vs. copyto"], rows,
        note="np.copyto: into one hot buffer; 'slots+1 bufs': cycling through as many "
             "destinations as the ring has slots (same memory footprint as the ring)."))

    # 2. cross-process throughput
    seconds = 0.25 if smoke else 1.0 if quick else 2.0
    reps = 1 if smoke else 2 if quick else 3
    xp = [x for x in XP if not smoke or x[0] in ("lossless", "mpq")]
    rows = []
    for label, (shape, dtype) in list(FRAMES.items())[:1 if smoke else None]:
        runs = {k: [] for k, *_ in xp}
        for _ in range(reps):  # interleave peers so drift hits them alike
            for k, fn, kw, _ in xp:
                runs[k].append(run_peer("streams", fn, shape=shape, dtype=dtype, capacity=8,
                                        seconds=seconds, **kw))
        med = {k: median([r["read_fps"] for r in v]) for k, v in runs.items()}
        results["throughput"][label] = {"runs": runs, "median_read_fps": med}
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        for k, _, _, title in xp:
            ov = median([r["overruns"] for r in runs[k]])
            rows.append([label, title, f"{med[k]:,.0f}", f"{med[k] * nbytes / 1e9:.2f}",
                         f"{ov:,.0f}" if k in ("lossy", "view") else "0",
                         fmt_ratio(med[k] / med["mpq"]) if med["mpq"] else "-"])
        summary.append(summary_row("streams", f"{label} frames, writer -> reader process",
                                   "frames/s", med["lossless"], med["mpq"],
                                   "mp.Queue(maxsize=8)", gb_peer="gb stream (lossless)"))
    tables.append(table(
        f"Cross-process frame throughput (writer process -> reader process, "
        f"median of {reps} x {seconds:g} s)",
        ["frame", "transport", "frames/s read", "GB/s", "overruns", "vs. mp.Queue"], rows,
        note="gb reader: next_into() a preallocated array; mp.Queue reader: get() of "
             "the same ndarray put by the writer. Lossy overruns are per run."))

    # 3. message streams
    msg = {p: run_peer("streams", "msg_cost", peer=p, quick=quick)
           for p, _ in MSG if not smoke or p in ("gb", "pickle")}
    results["messages"] = msg
    g = msg["gb"]
    rows = []
    for p, title in MSG:
        if p not in msg:
            continue
        m = msg[p]
        rows.append([title, fmt_ns(m["encode"]), fmt_ns(m["decode"]), m["bytes"] or "-",
                     fmt_ratio(m["encode"] / g["encode"]), fmt_ratio(m["decode"] / g["decode"])])
    tables.append(table(
        "Message streams: pydantic model, ns per message (one process)",
        ["path", "write / encode", "read / decode", "bytes", "encode: x gb time",
         "decode: x gb time"], rows,
        note=f"gb figures include the copy into / out of shared memory; baselines are "
             f"encode/decode only. gb latest() without model= (plain dict): "
             f"{fmt_ns(g['decode_dict'])}."))
    p = msg["pickle"]
    summary.append(summary_row("streams", "pydantic message, write + read", "ns",
                               g["encode"] + g["decode"], p["encode"] + p["decode"],
                               "pickle dumps + loads", higher_is_better=False,
                               gb_peer="gb stream"))
    return {"results": results, "tables": tables, "summary": summary}


def main(argv=None):
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    return main_suite(args, "streams", suite)["results"]


if __name__ == "__main__":
    main()
