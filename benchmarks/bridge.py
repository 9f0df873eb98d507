"""Across hosts (SPEC §9; issue 11): ``python -m benchmarks.bridge
[--quick|--smoke] [--rounds N] [--json PATH]``.

Two simulated hosts on this machine, made exactly as ``tests/_hosts.py``
makes them: each a process tree in its own mount namespace with a private
``/dev/shm``, so nothing crosses but TCP on 127.0.0.1 (free ports,
scouting off).  Needs Linux, root (or CAP_SYS_ADMIN) and the ``zenoh``
extra; without them the benchmark prints why and measures nothing.

One bridge per host for the whole run (A exports ``bb_*``, B imports it).
Every case starts its processes afresh on the two hosts (forked by a
per-host agent that imported numpy, global_buffer and zenoh once): the
sender on A, the receiver(s) on B, and times at the receiver, from the first item
received to the last, so start-up (imports, announces, routing) is not
timed: ``items/s = (received - 1) / (t_last - t_first)``.  Peers:

- **gb stream**: ``gb.create`` on A, ``gb.attach`` + ``next_into`` on B
  (the mirror kept by B's bridge).  Small samples: ``int64 x 4`` (32
  bytes) in a stream that holds all of them (nothing lapped); frames:
  1080p ``uint8``, capacity 4, writer at full speed for a few seconds
  (it laps the exporting bridge: what crosses is what the link carries).
- **gb ring**: a queue ``gb.Ring`` on A (its home), ``put`` there, ``get``
  on B from the ring B's bridge keeps (credit-based forwarding).  Items:
  ``(i, 32 bytes)`` and ``(i, 1080p array)`` (out of line).
- **zenoh**: raw Zenoh pub/sub of the same payloads (one ``put`` per item,
  reliable, blocking congestion control, the bridge's session config), the
  subscriber's callback copies each payload out (``to_bytes``).
- **mgr queue**: the stdlib's cross-host queue, a
  ``multiprocessing.managers.BaseManager`` serving a ``queue.Queue(16)``
  over TCP on 127.0.0.1 as in the Python docs' "remote manager" example:
  server and producer on A, consumer on B, the same items as the ring.

Rounds visit the peers in turn (the order rotated each round); figures
are medians over rounds, ratios medians of per-round ratios.  Targets
(issue 11): gb's time per item <= 1.2x raw Zenoh's; >= 10x the manager
queue's rate for small items and for frames; 8 far readers of a 1080p
stream each read >= 90% of what 1 reader reads, with the link's bytes per
frame unchanged (one network copy per host).
"""
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from benchmarks._util import (
    ROOT,
    fmt_ratio,
    installed,
    main_suite,
    median,
    parser,
    summary_row,
    table,
)

FRAME = (1080, 1920, 3)
FRAME_BYTES = 1080 * 1920 * 3
SMALL_BYTES = 32
AUTHKEY = b"gb-bench"
# items per case at each level: (small items, frames, fan-out frames)
COUNTS = {"smoke": (1000, 6), "quick": (5000, 20), "full": (20000, 60)}
# seconds a stream's frame writer writes at full speed (it laps the exporting
# bridge, so a count of frames would say little about how long frames flow)
SECONDS = {"smoke": 0.5, "quick": 2.0, "full": 3.0}
LAST = 1 << 40  # index of a timed writer's final frame
ROUNDS = {"smoke": 1, "quick": 2, "full": 5}
FAN = {"smoke": 2, "quick": 8, "full": 8}  # far readers against 1 (smoke: fewer processes)
# the fan-out's writer is paced below what the link carries (30-45 frames/s
# here), so the table shows whether 8 readers keep up as 1 does, not how the
# writer's spare CPU is shared on 2 cores
FAN_FPS = 20
PEERS = ("gb stream", "gb ring", "zenoh", "mgr queue")
ROLES = {"gb stream": ("stream_writer", "stream_reader"),  # (sender, receiver) role_*
         "gb ring": ("ring_producer", "ring_consumer"),
         "zenoh": ("zenoh_pub", "zenoh_sub"),
         "mgr queue": ("mgr_producer", "mgr_consumer")}
CASE_TIMEOUT = 120.0  # seconds a case may take, start-up included

# a host's fork server (``agent``): imports once, forks a process per role
_AGENT = (
    "import sys\n"
    "if sys.path and sys.path[0] == '':\n"
    "    del sys.path[0]\n"
    f"sys.path.append({ROOT!r})\n"
    "from benchmarks import bridge as b\n"
    "b.agent()\n"
)


def agent():
    """Run in a simulated host: import what roles need once, then for each
    command line on stdin (JSON: role, kwargs, out) fork a process that
    runs ``role_<role>(**kwargs)`` and writes ``{"ok": result}`` or
    ``{"error": traceback}`` to the file ``out``; print its pid.  Forking
    saves each case the 1-2 s an interpreter takes to import numpy,
    global_buffer and zenoh on this machine."""
    import signal
    import traceback

    import numpy  # noqa: F401  (preloaded for the children)

    import global_buffer.bridge  # noqa: F401
    if installed("zenoh"):
        import zenoh  # noqa: F401
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped for us
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.dup2(2, 1)  # stdout is the command channel: the role's output goes to the log
            try:
                res = {"ok": globals()["role_" + cmd["role"]](**cmd["kwargs"])}
            except BaseException:
                res = {"error": traceback.format_exc()}
            with open(cmd["out"] + ".tmp", "w") as f:
                json.dump(res, f)
            os.replace(cmd["out"] + ".tmp", cmd["out"])
            os._exit(0)
        print(pid, flush=True)


class _Proc:
    """A role's process, forked by a host's agent."""

    def __init__(self, role, pid, out):
        self.role, self.pid, self.out = role, pid, out


def _readline(f, timeout):
    import select
    ready, _, _ = select.select([f], [], [], timeout)
    if not ready:
        raise RuntimeError(f"no answer from a host's agent in {timeout} s")
    return f.readline().decode().strip()


def _hosts_module():
    """``tests/_hosts.py``: the one implementation of simulated hosts."""
    spec = importlib.util.spec_from_file_location(
        "_gb_bench_hosts", os.path.join(ROOT, "tests", "_hosts.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# -- roles (run inside a simulated host) ----------------------------------

def _wait_file(path, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)


def _wait_files(paths, timeout=60.0):
    for p in paths:
        _wait_file(p, timeout)


def _touch(path):
    open(path, "w").close()


def _frame(i):
    import numpy as np
    f = np.full(FRAME, i % 251, np.uint8)
    f.reshape(-1)[:8] = np.frombuffer(np.int64(i).tobytes(), np.uint8)
    return f


def _index(buf):
    import numpy as np
    return int(np.frombuffer(memoryview(buf).cast("B")[:8], np.int64)[0])


class _Clock:
    """Receiver-side timing: the first and last arrival, and the count."""

    def __init__(self):
        self.count, self.first, self.last = 0, None, None

    def tick(self):
        t = time.perf_counter()
        if self.first is None:
            self.first = t
        self.last = t
        self.count += 1

    def result(self, **extra):
        span = (self.last - self.first) if self.count > 1 else 0.0
        rate = (self.count - 1) / span if span > 0 else 0.0
        return dict(received=self.count, seconds=span, rate=rate, **extra)


def role_stream_writer(name, kind, n, ready, done, capacity, seconds=None, fps=None):
    import numpy as np

    import global_buffer as gb
    spec = gb.ArraySpec("int64", 4) if kind == "small" else gb.ArraySpec("uint8", FRAME)
    w = gb.create(name, spec, capacity)
    try:
        _wait_files(ready)
        if kind == "small":
            a = np.zeros(4, np.int64)
            for i in range(n):
                a[0] = i
                w.write(a)
        else:
            f = _frame(0)
            flat = f.reshape(-1)
            t0 = time.monotonic()
            i, end = 0, t0 + (seconds or 0)
            while i < n if seconds is None else time.monotonic() < end:
                flat[:8] = np.frombuffer(np.int64(i).tobytes(), np.uint8)
                w.write(f)
                i += 1
                if fps:  # paced: frame i + 1 is due at t0 + (i + 1) / fps
                    time.sleep(max(0.0, t0 + i / fps - time.monotonic()))
            if seconds is not None:  # the end, for the readers
                flat[:8] = np.frombuffer(np.int64(LAST).tobytes(), np.uint8)
                w.write(f)
                n = i
        deadline = time.monotonic() + CASE_TIMEOUT
        while not os.path.exists(done) and time.monotonic() < deadline:
            w.heartbeat()
            time.sleep(0.05)
    finally:
        w.unlink()
        w.close()
    return {"written": n}


def _attach(open_fn, timeout=30.0):
    import global_buffer as gb
    deadline = time.monotonic() + timeout
    while True:
        try:
            return open_fn()
        except gb.BufferNotFound:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def role_stream_reader(name, kind, n, ready):
    import numpy as np

    import global_buffer as gb
    r = _attach(lambda: gb.attach(name))
    buf = np.empty(4 if kind == "small" else FRAME, np.int64 if kind == "small" else np.uint8)
    _touch(ready)
    clock = _Clock()
    deadline = time.monotonic() + CASE_TIMEOUT
    try:
        while time.monotonic() < deadline:
            try:
                r.next_into(buf, timeout=5)
            except gb.Empty:
                break
            clock.tick()
            i = int(buf[0]) if kind == "small" else _index(buf)
            if i == n - 1 or i == LAST:
                break
        return clock.result(overruns=r.overruns)
    finally:
        r.close()


def _payload(kind, i):
    if kind == "small":
        return (i, b"x" * SMALL_BYTES)
    return (i, _frame(i))


def role_ring_producer(name, kind, n, ready, done):
    import global_buffer as gb
    # bounded (put blocks, nothing piles up in this process); frames go out of line
    cap = max(64, min(n, 4096)) if kind == "small" else 8
    ring = gb.Ring(cap, capacity=cap, name=name)
    try:
        _wait_files(ready)
        items = [_payload(kind, i) for i in range(n)] if kind == "small" else None
        for i in range(n):
            ring.put(items[i] if items else _payload(kind, i))
        _wait_file(done, CASE_TIMEOUT)
    finally:
        ring.close()
        ring.join_thread()
    return {"written": n}


def role_ring_consumer(name, kind, n, ready):
    import global_buffer as gb
    ring = _attach(lambda: gb.Ring.attach(name))
    _touch(ready)
    clock = _Clock()
    deadline = time.monotonic() + CASE_TIMEOUT
    order_ok = True
    try:
        while clock.count < n and time.monotonic() < deadline:
            try:
                i, _ = ring.get(timeout=10)
            except gb.Empty:
                break
            order_ok &= i == clock.count
            clock.tick()
        return clock.result(in_order=order_ok)
    finally:
        ring.close()


def _zenoh_session(listen=(), connect=()):
    import zenoh

    from global_buffer.bridge import zenoh_config
    return zenoh, zenoh.open(zenoh_config(listen, connect))


def role_zenoh_pub(endpoint, kind, n, ready, done):
    import numpy as np
    z, s = _zenoh_session(listen=[endpoint])
    try:
        pub = s.declare_publisher("bench/raw", congestion_control=z.CongestionControl.BLOCK,
                                  reliability=z.Reliability.RELIABLE)
        _wait_files(ready)
        time.sleep(0.3)  # the subscriber's interest reaches this peer
        if kind == "small":
            for i in range(n):
                pub.put(np.int64(i).tobytes() + b"x" * (SMALL_BYTES - 8))
        else:
            f = _frame(0)
            flat = f.reshape(-1)
            for i in range(n):
                flat[:8] = np.frombuffer(np.int64(i).tobytes(), np.uint8)
                pub.put(f.tobytes())
        _wait_file(done, CASE_TIMEOUT)
        pub.undeclare()
    finally:
        s.close()
    return {"written": n}


def role_zenoh_sub(endpoint, kind, n, ready):
    import threading
    z, s = _zenoh_session(connect=[endpoint])
    clock = _Clock()
    end = threading.Event()

    def on_sample(sample):
        data = sample.payload.to_bytes()
        clock.tick()
        if _index(data) == n - 1:
            end.set()

    try:
        sub = s.declare_subscriber("bench/raw", on_sample)
        _touch(ready)
        end.wait(CASE_TIMEOUT)
        sub.undeclare()
    finally:
        s.close()
    return clock.result()


def _manager(port):
    from multiprocessing.managers import BaseManager

    class QueueManager(BaseManager):
        pass

    QueueManager.register("get_queue")
    m = QueueManager(address=("127.0.0.1", port), authkey=AUTHKEY)
    deadline = time.monotonic() + 30
    while True:
        try:
            m.connect()
            return m
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def role_mgr_server(port):
    """The Python docs' remote manager: a queue served over TCP."""
    import queue
    from multiprocessing.managers import BaseManager
    q: queue.Queue = queue.Queue(16)

    class QueueManager(BaseManager):
        pass

    QueueManager.register("get_queue", callable=lambda: q)
    m = QueueManager(address=("127.0.0.1", port), authkey=AUTHKEY)
    m.get_server().serve_forever()  # killed by the benchmark


def role_mgr_producer(port, kind, n, ready, done):
    q = _manager(port).get_queue()
    _wait_files(ready)
    items = [_payload(kind, i) for i in range(n)] if kind == "small" else None
    for i in range(n):
        q.put(items[i] if items else _payload(kind, i))
    _wait_file(done, CASE_TIMEOUT)
    return {"written": n}


def role_mgr_consumer(port, kind, n, ready):
    import queue
    q = _manager(port).get_queue()
    _touch(ready)
    clock = _Clock()
    deadline = time.monotonic() + CASE_TIMEOUT
    while clock.count < n and time.monotonic() < deadline:
        try:
            q.get(timeout=10)
        except queue.Empty:
            break
        clock.tick()
    return clock.result()


# -- the orchestrator -----------------------------------------------------

class _Bench:
    """Two simulated hosts with a bridge each, and a scratch directory."""

    def __init__(self):
        self.hosts = _hosts_module()
        self.tmp = tempfile.mkdtemp(prefix="gb-bench-bridge-")
        self.a = self.b = None
        self.k = 0
        try:
            self.a, self.b = self.hosts.Host("a"), self.hosts.Host("b")
            port_a = self.hosts.free_port()
            self.stats_b = os.path.join(self.tmp, "b.json")
            self.ba = self.a.bridge(listen=[f"tcp/127.0.0.1:{port_a}"], exports=["bb_*"],
                                    log=os.path.join(self.tmp, "a.log"))
            self.bb = self.b.bridge(listen=[f"tcp/127.0.0.1:{self.hosts.free_port()}"],
                                    connect=[f"tcp/127.0.0.1:{port_a}"], imports=["bb_*"],
                                    stats=self.stats_b, log=os.path.join(self.tmp, "b.log"))
            self.agents = {h.name: self._agent(h) for h in (self.a, self.b)}
            self.hosts.read_stats(self.stats_b, 30, lambda s: s["peers"])
        except BaseException:
            self.close()
            raise

    def close(self):
        for h in (self.a, self.b):
            if h is not None:
                h.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def path(self, what):
        self.k += 1
        return os.path.join(self.tmp, f"{what}{self.k}")

    def _agent(self, host):
        """Start ``agent()`` in ``host`` (killed with the host)."""
        with open(os.path.join(self.tmp, f"agent-{host.name}.log"), "ab") as log:
            p = subprocess.Popen(host._argv([sys.executable, "-c", _AGENT]), cwd=ROOT,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                 env=dict(os.environ, PYTHONUNBUFFERED="1",
                                          OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1"),
                                 start_new_session=True)
        host.procs.append(p)
        line = _readline(p.stdout, 60)
        if line != "ready":
            raise RuntimeError(f"host {host.name}: agent failed to start: {line!r}")
        return p

    def start(self, host, role, **kw):
        agent = self.agents[host.name]
        out = self.path(f"result-{role}-")
        agent.stdin.write((json.dumps({"role": role, "kwargs": kw, "out": out}) + "\n").encode())
        agent.stdin.flush()
        return _Proc(role, int(_readline(agent.stdout, 30)), out)

    def kill(self, p):
        if not os.path.exists(p.out):  # done: exited (or about to), reaped by its agent
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def result(self, p, timeout=CASE_TIMEOUT + 30):
        deadline = time.monotonic() + timeout
        while not os.path.exists(p.out):
            if time.monotonic() > deadline:
                self.kill(p)
                raise RuntimeError(f"{p.role} timed out")
            time.sleep(0.01)
        with open(p.out) as f:
            res = json.load(f)
        if "error" in res:
            raise RuntimeError(f"{p.role} failed:\n{res['error'][-3000:]}")
        return res["ok"]

    def _run(self, senders, receivers, done, then=None):
        """Collect the receivers, call ``then()``, then release the senders."""
        try:
            got = [self.result(r) for r in receivers]
            if then is not None:
                then(got)
        finally:
            _touch(done)
        for s in senders:
            self.result(s)
        return got

    def case(self, peer, kind, n, readers=1, seconds=None, fps=None):
        """One run of ``peer`` moving ``n`` items of ``kind`` from A to B
        (a stream's frames: for ``seconds``); the receivers' results."""
        send_role, recv_role = ROLES[peer]
        done = self.path("done")
        readies = [self.path("ready") for _ in range(readers)]
        both: dict = {"kind": kind, "n": n}   # arguments of sender and receivers
        send: dict = {}                        # of the sender only
        server = None
        if peer == "gb stream":
            both["name"] = name = f"bb_s{self.k}"
            send["capacity"] = n + 8 if kind == "small" else 4  # small: nothing lapped
            if kind == "frame":
                send.update(seconds=seconds, fps=fps)
        elif peer == "gb ring":
            both["name"] = f"bb_r{self.k}"
        elif peer == "zenoh":
            both["endpoint"] = f"tcp/127.0.0.1:{self.hosts.free_port()}"
        else:
            both["port"] = self.hosts.free_port()
            server = self.start(self.a, "mgr_server", port=both["port"])

        def link(got):  # what crossed for a stream, before its writer goes
            if peer == "gb stream" and kind == "frame":
                got[0]["link"] = self.mirror_stats(name)
        try:
            senders = [self.start(self.a, send_role, ready=readies, done=done, **both, **send)]
            receivers = [self.start(self.b, recv_role, ready=r, **both) for r in readies]
            return self._run(senders, receivers, done, link)
        finally:
            if server is not None:
                self.kill(server)

    def mirror_stats(self, name, timeout=10.0):
        """What B's bridge moved for ``name`` (items, bytes), once steady."""
        last = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.hosts.read_stats(self.stats_b, 10, lambda s: name in s["names"])
            now = (st["names"][name]["items"], st["names"][name]["bytes"])
            if now == last:
                return {"items": now[0], "bytes": now[1]}
            last = now
            time.sleep(0.6)  # the stats file is rewritten every 0.5 s
        return {"items": last[0], "bytes": last[1]} if last else None


def unavailable():
    """None if this benchmark can run here, else why not."""
    if not installed("zenoh"):
        return "zenoh (global_buffer[zenoh]) not installed"
    return _hosts_module().hosts_available()


def suite(level="full", rounds=None):
    why = unavailable()
    if why is not None:
        return {"results": {"unavailable": why},
                "tables": [table("Across hosts (gb bridge vs raw Zenoh vs manager queue)",
                                 ["case", "result"], [["all", f"not run: {why}"]])],
                "summary": []}
    n_small, n_frames = COUNTS[level]
    secs = SECONDS[level]
    rounds = rounds or ROUNDS[level]
    bench = _Bench()
    runs: dict = {kind: {p: [] for p in PEERS} for kind in ("small", "frame")}
    many = FAN[level]
    fan: dict = {1: [], many: []}
    t0 = time.monotonic()
    try:
        for r in range(rounds):
            order = PEERS[r % len(PEERS):] + PEERS[:r % len(PEERS)]
            for kind, n in (("small", n_small), ("frame", n_frames)):
                for peer in order:
                    runs[kind][peer].append(bench.case(peer, kind, n, seconds=secs)[0])
            for readers in ((1, many) if r % 2 == 0 else (many, 1)):
                fan[readers].append(bench.case("gb stream", "frame", 0, readers, secs,
                                               FAN_FPS))
    finally:
        bench.close()
    wall = time.monotonic() - t0

    def rate(kind, peer):
        return median([x["rate"] for x in runs[kind][peer]])

    def per_round(kind, a, b):  # median of per-round rate ratios a / b
        return median([x["rate"] / y["rate"] if y["rate"] else float("nan")
                       for x, y in zip(runs[kind][a], runs[kind][b])])

    rows, summary, results = [], [], {"rounds": rounds, "counts": COUNTS[level],
                                      "stream_frame_seconds": secs,
                                      "wall_seconds": wall, "runs": runs, "fanout": fan}
    units = {"small": ("small items (32 B)", "items/s"), "frame": ("1080p frames", "frames/s")}
    for kind in ("small", "frame"):
        label, unit = units[kind]
        for peer in ("gb stream", "gb ring"):
            vs_z = per_round(kind, "zenoh", peer)  # gb's time per item / zenoh's
            vs_m = per_round(kind, peer, "mgr queue")
            results[f"{kind}/{peer}"] = {"rate": rate(kind, peer), "time_vs_zenoh": vs_z,
                                         "vs_manager": vs_m}
            rows.append([f"{label}, {peer}", f"{rate(kind, peer):,.0f}",
                         f"{rate(kind, 'zenoh'):,.0f}", fmt_ratio(vs_z),
                         f"{rate(kind, 'mgr queue'):,.0f}", fmt_ratio(vs_m)])
            summary.append(summary_row("bridge", f"{label} across hosts, {peer}", unit,
                                       rate(kind, peer), rate(kind, "mgr queue"),
                                       "BaseManager queue", advantage=vs_m, gb_peer=peer))
    tables = [table(
        f"Across two simulated hosts over loopback TCP: items/s at the far receiver "
        f"(median of {rounds} round(s); {n_small} small items, {n_frames} frames per run; "
        f"the stream's frame writer writes for {secs} s)",
        ["case", "gb", "raw zenoh", "gb time/item vs zenoh", "mgr queue", "gb vs mgr"],
        rows,
        note="gb time/item vs zenoh: raw Zenoh's rate / gb's (median of per-round ratios; "
             "target <= 1.2x).  gb vs mgr: gb's rate / the BaseManager queue's (target "
             ">= 10x).  Rates: (received - 1) / (last arrival - first arrival) at the "
             "receiver on host B.")]

    def fan_stat(readers, key):
        return median([median([g[key] for g in run]) for run in fan[readers]])

    def link_per_frame(run):
        link = run[0]["link"] or {}
        return link.get("bytes", 0) / max(link.get("items", 0), 1)

    r1, r8 = fan_stat(1, "rate"), fan_stat(many, "rate")
    b1 = median([link_per_frame(run) for run in fan[1]])
    b8 = median([link_per_frame(run) for run in fan[many]])
    c1 = median([(run[0]["link"] or {}).get("items", 0) for run in fan[1]])
    c8 = median([(run[0]["link"] or {}).get("items", 0) for run in fan[many]])
    results["fanout_summary"] = {"readers": many, "rate_1": r1, "rate_n": r8,
                                 "per_reader": r8 / r1 if r1 else None,
                                 "link_bytes_per_frame_1": b1, "link_bytes_per_frame_n": b8,
                                 "frames_crossed_1": c1, "frames_crossed_n": c8}
    tables.append(table(
        f"1080p stream, 1 vs {many} readers on the far host (writer paced at {FAN_FPS} "
        f"frames/s for {secs} s, median of {rounds} round(s))",
        ["readers", "frames/s per reader", "vs 1 reader", "frames crossed",
         "link bytes per frame crossed"],
        [["1", f"{r1:,.1f}", "1.00", f"{c1:.0f}", f"{b1:,.0f}"],
         [str(many), f"{r8:,.1f}", f"{r8 / r1:.2f}" if r1 else "-", f"{c8:.0f}", f"{b8:,.0f}"]],
        note="Per-reader rate: median over the readers of a run, then over runs (target "
             ">= 0.90 of 1 reader's).  Link bytes: what B's bridge received for the "
             "stream (its --stats), per frame it received: one network copy per host."))
    return {"results": results, "tables": tables, "summary": summary}


def main(argv=None):
    ap = parser(__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, help="rounds (default 5; --quick 2)")
    args = ap.parse_args(argv)
    main_suite(args, "bridge", lambda lv: suite(lv, args.rounds))


if __name__ == "__main__":
    main()
