"""Wake-up benchmarks (issue 3, SPEC §4): ``python -m benchmarks.wake [--quick] [--json PATH]``.

1. One-way wake latency: a producer process stamps ``time.perf_counter_ns()``
   (CLOCK_MONOTONIC, shared by all processes) into a sample about every 1 ms;
   the consumer, blocked in ``next()`` / ``get()`` / ``recv()``, subtracts it
   from its own clock on return.  gb with futex waits, gb with the poll
   fallback, ``multiprocessing.Queue``, ``multiprocessing.Pipe``,
   faster-fifo (``faster_fifo.Queue``, blocking ``get``) and pyzmq
   (PUSH/PULL over ``ipc://``, blocking ``recv``; the stamp as 8 bytes), the
   last two made as ``benchmarks.rings`` makes them and reported as "not
   installed" when they are not.
2. Idle cost of a blocked reader: CPU % and wake-ups/s (voluntary +
   involuntary context switches of all its threads, psutil) of a process
   blocked for 2 s.
3. Writer cost per write with 0, 1 and 16 reader processes parked on the
   stream, and the no-waiter write against a build of the same core whose
   commit has no wake step at all (``gb_wake`` compiled out).

Every peer runs in its own subprocess; figures are medians of repeats.
"""
import multiprocessing as mp
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks._util import (
    NOT_INSTALLED,
    ROOT,
    fmt_ns,
    fmt_ratio,
    main_suite,
    median,
    parser,
    percentile,
    run_peer,
    summary_row,
    table,
)
from benchmarks.rings import OPTIONAL, T_BIG, _hook, _make, have

I64 = ((1,), "int64")
_DATA_WAITERS = 260  # gb_header.data.waiters (offset 256 + 4, static-asserted in C)
_ARMED = 0x80000000  # GB_ARMED, the high bit of waiters: a wake is owed
_STAMP = struct.Struct("<q")  # a stamp as pyzmq carries it: 8 bytes
# the optional peers (keys of benchmarks.rings.OPTIONAL) as rings._make makes
# them, for 8-byte payloads; latency() adds timeout=10 to bound its reader's
# wait, as mp.Queue's get(timeout=10) does
_OPT_CASE = {"kind": "bytes", "size": 8}


def _name(tag):
    return f"bench-{tag}-{os.getpid()}-{time.monotonic_ns() % 10**9}"


def _waiters(handle):
    return struct.unpack_from("<I", handle._segment.mm, _DATA_WAITERS)[0] & ~_ARMED


def _summary(lat_ns):
    return {"n": len(lat_ns), "p50": percentile(lat_ns, 50), "p99": percentile(lat_ns, 99),
            "max": max(lat_ns), "mean": sum(lat_ns) / len(lat_ns)}


# ---------------------------------------------------------------------------
# 1. latency
# ---------------------------------------------------------------------------

def _pace(period_ns):
    """Sleep to the next multiple of period_ns (sleep, not spin: an idle
    producer, as a real one between frames)."""
    time.sleep(period_ns / 1e9)


def _gb_producer(name, n, period_ns, conn):
    import global_buffer as gb
    with gb.create(name, gb.ArraySpec(np.int64, (1,)), 64) as w:
        conn.send("ready")
        conn.recv()
        a = np.zeros(1, np.int64)
        clock = time.perf_counter_ns
        for _ in range(n):
            _pace(period_ns)
            a[0] = clock()
            w.write(a)
        conn.recv()


def _q_producer(q, n, period_ns):
    clock = time.perf_counter_ns
    for _ in range(n):
        _pace(period_ns)
        q.put(clock())


def _pipe_producer(c, n, period_ns):
    clock = time.perf_counter_ns
    for _ in range(n):
        _pace(period_ns)
        c.send(clock())


def _hooked_producer(put, encode, n, period_ns, conn):
    """Producer of an optional peer (``put`` from rings._make): its end
    opens here, after the fork (zmq sockets do not survive one), once the
    reader's is open (a PUSH that connects before its PULL is bound
    retries only after zmq's 100 ms reconnect interval)."""
    conn.recv()
    _hook(put, "prepare")
    clock = time.perf_counter_ns
    for _ in range(n):
        _pace(period_ns)
        put(encode(clock()))
    _hook(put, "finish")  # pyzmq: close with a bounded linger


def _unstamp(b):
    return _STAMP.unpack(b)[0]


def latency(peer, n, warmup=50, period_us=1000, spin=None, samples=False):
    """One-way latency (ns) of ``peer``, summarised; this process is the
    reader.  ``samples=True`` also returns every sample (for a CDF)."""
    ctx = mp.get_context("fork")
    total = n + warmup
    period = int(period_us * 1000)
    clock = time.perf_counter_ns
    lat = []
    if peer.startswith("gb"):
        import global_buffer as gb
        from global_buffer import _core
        _core.set_wait_backend("poll" if peer == "gb-poll" else "futex")
        if spin is not None:
            _core.set_spin(spin)
        name = _name("lat")
        here, there = ctx.Pipe()
        p = ctx.Process(target=_gb_producer, daemon=True, args=(name, total, period, there))
        p.start()
        assert here.recv() == "ready"
        with gb.attach(name) as r:
            here.send("go")
            while r._cursor < total:  # an overrun (a stalled reader) moves it too
                v = r.next(timeout=10)
                lat.append(clock() - int(v[0]))
            overruns = r.overruns
        here.send("bye")
    elif peer == "mp.Queue":
        q = ctx.Queue()
        p = ctx.Process(target=_q_producer, daemon=True, args=(q, total, period))
        p.start()
        for _ in range(total):
            x = q.get(timeout=10)
            lat.append(clock() - x)
        overruns = 0
    elif peer == "mp.Pipe":
        a, b = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_pipe_producer, daemon=True, args=(b, total, period))
        p.start()
        for _ in range(total):
            if not a.poll(10):
                raise RuntimeError("pipe producer stalled")
            x = a.recv()
            lat.append(clock() - x)
        overruns = 0
    elif peer in OPTIONAL:  # "ff" (faster-fifo), "zmq" (pyzmq)
        # faster-fifo's queue is shared memory made before the fork; pyzmq's
        # is a path, each side opening its socket after the fork
        q, put, get, _, _ = _make(peer, dict(_OPT_CASE, timeout=10), None)
        encode, decode = (_STAMP.pack, _unstamp) if peer == "zmq" else (int, int)
        here, there = ctx.Pipe()
        p = ctx.Process(target=_hooked_producer, daemon=True,
                        args=(put, encode, total, period, there))
        p.start()
        try:
            _hook(get, "prepare")
            here.send("go")
            for _ in range(total):
                x = get()
                lat.append(clock() - decode(x))  # clock() is called first
        finally:
            _hook(get, "finish")
            if peer == "zmq" and os.path.exists(q):
                os.unlink(q)  # the ipc:// socket file, if the PULL end left it
        overruns = 0
    else:
        raise ValueError(peer)
    p.join(30)
    out = _summary(lat[warmup:])
    out["overruns"] = overruns
    if samples:
        out["samples_ns"] = lat[warmup:]
    return out


def _paced_producer(name, n, gap_ns, conn):
    import global_buffer as gb
    with gb.create(name, gb.ArraySpec(np.int64, (1,)), 1024) as w:
        conn.send("ready")
        conn.recv()
        a = np.zeros(1, np.int64)
        clock = time.perf_counter_ns
        for _ in range(n):
            end = clock() + gap_ns
            while clock() < end:  # busy pacing: gaps of microseconds
                pass
            a[0] = clock()
            w.write(a)
        conn.send(w._wake_calls)
        conn.recv()


def spin_sweep(spin_us, gap_us, n=3000, warmup=100):
    """Latency, parked fraction and reader CPU per sample for a reader that
    spins ``spin_us`` before parking, with samples ``gap_us`` apart."""
    import global_buffer as gb
    from global_buffer import _core
    _core.set_spin(spin_us * 1e-6)
    ctx = mp.get_context("fork")
    name = _name("spin")
    here, there = ctx.Pipe()
    p = ctx.Process(target=_paced_producer, daemon=True,
                    args=(name, n + warmup, int(gap_us * 1000), there))
    p.start()
    assert here.recv() == "ready"
    clock = time.perf_counter_ns
    lat = []
    with gb.attach(name) as r:
        here.send("go")
        got = 0
        while r._cursor < n + warmup:  # overruns move the cursor too
            if got == warmup:
                cpu0 = time.process_time()
            v = r.next(timeout=10)
            lat.append(clock() - int(v[0]))
            got += 1
        cpu = time.process_time() - cpu0
        overruns = r.overruns
    wake_calls = here.recv()
    here.send("bye")
    p.join(30)
    out = _summary(lat[warmup:])
    out.update(parked=wake_calls / (n + warmup), cpu_us=cpu / max(got - warmup, 1) * 1e6,
               overruns=overruns)
    return out


# ---------------------------------------------------------------------------
# 2. idle cost of a blocked reader
# ---------------------------------------------------------------------------

def _blocked(peer, name, obj, conn):
    if peer.startswith("gb"):
        import global_buffer as gb
        from global_buffer import _core
        _core.set_wait_backend("poll" if peer == "gb-poll" else "futex")
        r = gb.attach(name)
        conn.send("ready")
        r.next()
    elif peer == "mp.Queue":
        conn.send("ready")
        obj.get()
    elif peer == "mp.Pipe":
        conn.send("ready")
        obj.recv()
    elif peer in OPTIONAL:  # obj: rings._make's get; zmq opens its socket here
        _hook(obj, "prepare")
        conn.send("ready")
        obj()


def _switches(proc):
    """Voluntary and involuntary context switches of every thread of
    ``proc`` (psutil's num_ctx_switches() counts the main thread's only on
    Linux; a pyzmq reader has an I/O thread as well)."""
    import psutil
    vol = inv = 0
    for t in proc.threads():
        try:
            s = psutil.Process(t.id).num_ctx_switches()
        except psutil.NoSuchProcess:
            continue
        vol, inv = vol + s.voluntary, inv + s.involuntary
    return vol, inv


def idle(peer, seconds=2.0, settle=0.5):
    """CPU % and wake-ups/s of a process blocked (no timeout) in ``peer``."""
    import psutil
    ctx = mp.get_context("fork")
    here, there = ctx.Pipe()
    w = obj = keep = None
    name = _name("idle")
    if peer.startswith("gb"):
        import global_buffer as gb
        w = gb.create(name, gb.ArraySpec(np.int64, (1,)), 4)
    elif peer == "mp.Queue":
        obj = ctx.Queue()
    elif peer in OPTIONAL:
        # faster-fifo's get() blocks for T_BIG (600 s), far past the run;
        # pyzmq's recv() without a timeout
        keep, _, obj, _, _ = _make(peer, _OPT_CASE, None)
    else:
        obj, keep = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_blocked, daemon=True, args=(peer, name, obj, there))
    p.start()
    try:
        assert here.recv() == "ready"
        time.sleep(settle)  # past any spin, parked for good
        proc = psutil.Process(p.pid)
        c0, s0, t0 = proc.cpu_times(), _switches(proc), time.perf_counter()
        time.sleep(seconds)
        c1, s1, t1 = proc.cpu_times(), _switches(proc), time.perf_counter()
        nthreads = proc.num_threads()
    finally:
        p.kill()
        p.join(10)
        if w is not None:
            w.unlink()
            w.close()
        if peer == "zmq" and os.path.exists(keep):
            os.unlink(keep)  # the ipc:// socket file the killed reader bound
    dt = t1 - t0
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    return {"cpu_pct": 100 * cpu / dt,
            "wakeups_per_s": ((s1[0] - s0[0]) + (s1[1] - s0[1])) / dt,
            "voluntary_per_s": (s1[0] - s0[0]) / dt, "threads": nthreads}


# ---------------------------------------------------------------------------
# 3. writer cost with parked readers; no-wait build
# ---------------------------------------------------------------------------

def _parked_loop(name, conn):
    import global_buffer as gb
    with gb.attach(name) as r:
        conn.send("ready")
        while True:
            v = r.next()
            if v[0] < 0:
                return


def writer_cost(nreaders, writes, shape=(64,), dtype="float32"):
    """ns of each single write() made while ``nreaders`` readers are parked
    (the writer waits until every reader is back asleep before each write)."""
    import global_buffer as gb
    ctx = mp.get_context("fork")
    name = _name("wcost")
    spec = gb.ArraySpec(np.dtype(dtype), tuple(shape))
    a = np.zeros(spec.shape, spec.dtype)
    stop = np.full(spec.shape, -1, spec.dtype)
    procs = []
    clock = time.perf_counter_ns
    with gb.create(name, spec, 64) as w:
        try:
            for _ in range(nreaders):
                here, there = ctx.Pipe()
                p = ctx.Process(target=_parked_loop, daemon=True, args=(name, there))
                p.start()
                procs.append((p, here))
            for _, c in procs:
                assert c.recv() == "ready"
            out = []
            calls0 = w._wake_calls
            for i in range(writes + 20):
                end = time.monotonic() + 10
                while _waiters(w) != nreaders:  # every reader parked again
                    if time.monotonic() > end:
                        raise RuntimeError("readers did not park")
                    time.sleep(0.0002)
                time.sleep(0.0005)
                t0 = clock()
                w.write(a)
                t1 = clock()
                if i >= 20:
                    out.append(t1 - t0)
            wake_calls = w._wake_calls - calls0
            w.write(stop)
            for p, _ in procs:
                p.join(10)
        finally:
            for p, _ in procs:
                if p.is_alive():
                    p.kill()
                    p.join(5)
    return {"p50": percentile(out, 50), "p90": percentile(out, 90), "n": len(out),
            "wake_calls": wake_calls}


def write_loop(quick=False, shape=(64,), dtype="float32"):
    """ns per write() in a tight loop, no reader waiting.  Many short timed
    batches: on a shared machine a batch that was preempted is slow, so the
    low percentiles (p10, min) estimate the uncontended cost and resolve a
    few percent; the median is reported too.  Also reports which build ran
    (the no-wait build's _core lives outside the repo)."""
    import global_buffer as gb
    from global_buffer import _core
    name = _name("wloop")
    a = np.ones(tuple(shape), dtype)
    batch, batches = 2000, (100 if quick else 400)
    clock = time.perf_counter_ns
    out = []
    with gb.create(name, gb.ArraySpec(np.dtype(dtype), tuple(shape)), 64) as w:
        write = w.write
        for i in range(batches + 10):
            t0 = clock()
            for _ in range(batch):
                write(a)
            if i >= 10:
                out.append((clock() - t0) / batch)
        calls = w._wake_calls
    return {"min": min(out), "p10": percentile(out, 10), "median": percentile(out, 50),
            "core": _core.__file__, "wake_calls": calls}


_NO_WAKE_OLD = "GB_INLINE void gb_wake(gb_ring *r, gb_waitq *q)\n{\n"
_NO_WAKE_NEW = _NO_WAKE_OLD + "    (void)r; (void)q;\n    return; /* benchmark: no-wait build */\n"


def build_no_wait(dest):
    """Copy the package into ``dest`` with gb_wake() compiled to nothing and
    build it in place.  Returns ``dest`` or None (with the reason printed)."""
    for item in ("setup.py", "pyproject.toml", "global_buffer"):
        src = os.path.join(ROOT, item)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(dest, item),
                            ignore=shutil.ignore_patterns("*.so", "__pycache__"))
        else:
            shutil.copy2(src, dest)
    hdr = os.path.join(dest, "global_buffer", "csrc", "gb_ring.h")
    with open(hdr) as f:
        text = f.read()
    if _NO_WAKE_OLD not in text:
        print("  (no-wait build skipped: gb_wake() signature changed)", file=sys.stderr)
        return None
    with open(hdr, "w") as f:
        f.write(text.replace(_NO_WAKE_OLD, _NO_WAKE_NEW, 1))
    p = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-q"],
                       cwd=dest, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        print(f"  (no-wait build failed, skipped)\n{p.stdout[-1500:]}", file=sys.stderr)
        return None
    return dest


# ---------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------

PEERS = ("gb (futex)", "gb (poll)", "mp.Queue", "mp.Pipe", "faster-fifo", "pyzmq")
_KEY = {"gb (futex)": "gb", "gb (poll)": "gb-poll", "mp.Queue": "mp.Queue",
        "mp.Pipe": "mp.Pipe", "faster-fifo": "ff", "pyzmq": "zmq"}


def _absent_row(peer, ncols):
    return [peer] + [NOT_INSTALLED] * (ncols - 1)


def suite(level="full", samples=None, spin_sweep=False):
    """The wake benchmarks at ``level``; smoke measures latency only."""
    quick = level != "full"
    smoke = level == "smoke"
    results, tables, summary = {}, [], []
    # faster-fifo and pyzmq are optional: "not installed" rows when absent
    installed = {p: have(_KEY[p]) for p in PEERS}
    present = [p for p in PEERS if installed[p]]

    # 1. latency: rounds interleave peers; samples pooled per peer
    n = samples or (100 if smoke else 1000 if quick else 3000)
    rounds = 1 if quick else 2
    lat = {p: [] for p in present}
    for _ in range(rounds):
        for p in present:
            lat[p].append(run_peer("wake", "latency", peer=_KEY[p], n=n, samples=True))
    summ = {p: {k: median([r[k] for r in v]) for k in ("p50", "p99", "max")}
            for p, v in lat.items()}
    # the CDF pools every run's samples; the table keeps medians of runs
    cdf = {p: sorted(x for r in v for x in r.pop("samples_ns")) for p, v in lat.items()}
    results["latency"] = {"runs": lat, "median_of_runs": summ, "samples_per_run": n,
                          "period_us": 1000, "samples_ns": cdf, "installed": installed}
    q = summ["mp.Queue"]
    rows = [[p, fmt_ns(summ[p]["p50"]), fmt_ns(summ[p]["p99"]), fmt_ns(summ[p]["max"]),
             fmt_ratio(summ[p]["p50"] / q["p50"]), fmt_ratio(summ[p]["p99"] / q["p99"])]
            if installed[p] else _absent_row(p, 6) for p in PEERS]
    tables.append(table(
        f"One-way wake latency (producer every ~1 ms, {n} samples x {rounds} runs, "
        "median of runs)",
        ["transport", "p50", "p99", "max", "p50 vs. mp.Queue", "p99 vs. mp.Queue"],
        rows, note="targets: gb p50 <= 0.10x and p99 <= 0.30x mp.Queue's"))
    for k in ("p50", "p99"):
        summary.append(summary_row("wake", f"one-way wake latency {k}", "ns",
                                   summ["gb (futex)"][k], q[k], "mp.Queue",
                                   higher_is_better=False, gb_peer="gb stream (futex)"))

    # 1b. spin before parking: what it buys for samples microseconds apart
    if spin_sweep:
        spins, gaps = (0, 5, 20, 50), (30, 100, 300)
        sw = {f"{s_}/{g}": run_peer("wake", "spin_sweep", spin_us=s_, gap_us=g, n=2000)
              for g in gaps for s_ in spins}
        results["spin_sweep"] = sw
        rows = []
        for g in gaps:
            rows.append([f"{g} us"] + [
                f"{fmt_ns(sw[f'{s_}/{g}']['p50'])} / {100 * sw[f'{s_}/{g}']['parked']:.0f}% / "
                f"{sw[f'{s_}/{g}']['cpu_us']:.1f} us" for s_ in spins])
        tables.append(table(
            "Spin before parking (reader next() latency p50 / writes that had to "
            "wake a parked reader / reader CPU per sample)",
            ["gap between samples"] + [f"spin {s_} us" for s_ in spins], rows,
            note="producer busy-paced; 2000 samples per cell; the release default "
                 "spin is the one in _core.pyx (_spin_ns)"))
    if smoke:
        return {"results": results, "tables": tables, "summary": summary}

    # 2. idle cost
    secs = 1.0 if quick else 2.0
    idl = {p: run_peer("wake", "idle", peer=_KEY[p], seconds=secs) for p in present}
    results["idle"] = idl
    rows = [[p, f"{idl[p]['cpu_pct']:.2f} %", f"{idl[p]['wakeups_per_s']:.1f}"]
            if installed[p] else _absent_row(p, 3) for p in PEERS]
    tables.append(table(
        f"Idle cost of a reader blocked without timeout (over {secs:g} s)",
        ["transport", "CPU", "wake-ups/s"], rows,
        note="wake-ups/s: voluntary + involuntary context switches of all the reader's "
             f"threads (psutil). faster-fifo's get() has a timeout, {T_BIG:.0f} s here. "
             "target for gb: 0.00 % and 0 wake-ups/s"))

    # 3. writer cost with parked readers, and the no-wait build
    writes = 200 if quick else 500
    wc = {k: run_peer("wake", "writer_cost", nreaders=k, writes=writes) for k in (0, 1, 16)}
    results["writer_cost"] = wc
    loops = {"normal": [], "no_wait": []}
    with tempfile.TemporaryDirectory(prefix="gb-nowait-") as tmp:
        print("\nbuilding the no-wait variant of the core (gb_wake compiled out) ...",
              file=sys.stderr, flush=True)
        nowait = build_no_wait(tmp)
        for _ in range(3 if quick else 7):  # ABAB: drift hits both builds alike
            loops["normal"].append(run_peer("wake", "write_loop", quick=quick))
            if nowait:
                loops["no_wait"].append(run_peer("wake", "write_loop", quick=quick,
                                                 gb_path=nowait))
    if loops["no_wait"]:
        assert all(tmp in r["core"] for r in loops["no_wait"]), "no-wait build not used"
    results["write_loop"] = loops

    def est(runs, k):
        return median([r[k] for r in runs]) if runs else None
    base, nw = est(loops["normal"], "p10"), est(loops["no_wait"], "p10")
    base_med, nw_med = est(loops["normal"], "median"), est(loops["no_wait"], "median")
    rows = [[f"{k} parked reader{'s' if k != 1 else ''}", fmt_ns(v["p50"]), fmt_ns(v["p90"]),
             fmt_ratio(v["p50"] / wc[0]["p50"]), v["wake_calls"]] for k, v in wc.items()]
    tables.append(table(
        f"Writer cost of one write() (64 x float32) with parked readers "
        f"({writes} single timed writes)",
        ["readers", "p50", "p90", "vs. 0 readers", "FUTEX_WAKE calls"], rows,
        note="each write is timed alone, after every reader is parked again "
             "(includes one perf_counter_ns pair, ~50 ns)"))
    rows = [["release (gb_wake after each commit)", f"{base:.1f} ns", f"{base_med:.1f} ns",
             "-"]]
    if nw:
        rows.append(["gb_wake compiled out", f"{nw:.1f} ns", f"{nw_med:.1f} ns",
                     f"{100 * (base / nw - 1):+.1f} %"])
    tables.append(table(
        "No-waiter write() in a tight loop, 64 x float32: with vs. without wake support "
        f"({len(loops['normal'])} interleaved runs per build)",
        ["build", "ns per write (p10 of batches)", "median of batches",
         "release costs"], rows,
        note="p10: 10th percentile of 2000-write batches (preempted batches filtered "
             "out), median over runs. target: release within 5 % of no-wait"))
    return {"results": results, "tables": tables, "summary": summary}


def main(argv=None):
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--spin-sweep", action="store_true",
                    help="also sweep the reader's spin-before-park against sample gaps "
                         "(needs a quiet machine: the producer busy-paces on one core)")
    ap.add_argument("--samples", type=int, default=None,
                    help="latency samples per run (default 3000, --quick 1000)")
    args = ap.parse_args(argv)
    return main_suite(args, "wake", lambda lv: suite(lv, args.samples, args.spin_sweep))["results"]


if __name__ == "__main__":
    main()
