"""gb.Pipe against multiprocessing.Pipe: ``python -m benchmarks.pipe``.

Cases (issue 5), the same calls on both pipes, parent <-> one child process:

- ``pingpong``: ``send`` a small tuple, the child ``recv``s and sends it
  back; round trips per second (latency-bound: wake-ups dominate).
- ``frames``: the child ``send``s 1080p uint8 RGB frames (6.2 MB numpy
  arrays), the parent ``recv``s them; frames per second (copy-bound).
- ``frames-bytes``: the same frames with ``send_bytes`` / ``recv_bytes_into``
  a preallocated buffer.  Any pipe between two processes copies each
  message twice (sender's buffer -> the channel -> receiver's buffer, be
  the channel the kernel's or shared memory); at best the two copies run
  at once, one per process on its own core.  So the table also gives the
  *copy bound*: frames/s of one ``np.copyto`` of the frame into a
  preallocated buffer, in the same run, and gb's share of it.

Each peer runs in its own interpreter (``_util.run_peer``) and times
``repeats`` batches after a warm-up; rounds alternate the peers so load
drift on a shared machine hits both.  Figures are medians of every timed
batch; "vs. mp" is the ratio of the medians (higher is better).  Targets:
frames >= 10x, ping-pong >= 3x.
"""
import time

from benchmarks._util import (
    ab_parser,
    ab_runs,
    fmt_ratio,
    main_suite,
    median,
    run_peer,
    summary_row,
    table,
)

FRAME_SHAPE = (1080, 1920, 3)
FRAME_BYTES = 1080 * 1920 * 3
CASES = {
    # case: (messages per timed batch, description)
    "pingpong": (20_000, "ping-pong, small tuple (round trips/s)"),
    "frames": (60, "1080p uint8 frame, send/recv (frames/s)"),
    "frames-bytes": (60, "1080p uint8 frame, send_bytes/recv_bytes_into (frames/s)"),
}


def _echo(conn, n):
    for _ in range(n):
        conn.send(conn.recv())
    conn.close()


def _frames(conn, n, api):
    import numpy as np
    frame = np.zeros(FRAME_SHAPE, np.uint8)
    # send_bytes gets the frame as 1-D bytes: the stdlib's sends only
    # len(first dimension) bytes of a multi-dimensional buffer
    flat = frame.reshape(-1)
    for i in range(n):
        frame[0, 0, 0] = frame[-1, -1, -1] = i % 251
        if api == "bytes":
            conn.send_bytes(flat)
        else:
            conn.send(frame)
    conn.recv()  # stay until the parent has everything
    conn.close()


def peer(kind, case, n, repeats, start):
    """Time ``repeats`` batches of ``n`` messages; returns seconds per batch."""
    import multiprocessing as mp

    import numpy as np

    import global_buffer as gb

    ctx = mp.get_context(start)
    a, b = (gb.Pipe if kind == "gb" else mp.Pipe)()
    warm = max(n // 10, 2)
    total = warm + repeats * n
    if case == "pingpong":
        p = ctx.Process(target=_echo, args=(b, total))
    else:
        what = "bytes" if case == "frames-bytes" else "obj"
        p = ctx.Process(target=_frames, args=(b, total, what))
    p.start()
    b.close()
    times = []
    try:
        if case == "pingpong":
            msg = ("ping", 12345)
            for _ in range(warm):
                a.send(msg)
                a.recv()
            for _ in range(repeats):
                t0 = time.perf_counter()
                for _ in range(n):
                    a.send(msg)
                    a.recv()
                times.append(time.perf_counter() - t0)
        else:
            buf = np.empty(FRAME_BYTES, np.uint8)
            seen = 0

            def take():
                nonlocal seen
                if case == "frames":
                    f = a.recv()
                    ok = f.shape == FRAME_SHAPE and f[0, 0, 0] == seen % 251
                else:
                    ok = a.recv_bytes_into(buf) == FRAME_BYTES and buf[0] == seen % 251
                if not ok:
                    raise AssertionError(f"frame {seen} came back wrong")
                seen += 1

            for _ in range(warm):
                take()
            for _ in range(repeats):
                t0 = time.perf_counter()
                for _ in range(n):
                    take()
                times.append(time.perf_counter() - t0)
            a.send("done")
    finally:
        p.join(60)
        if p.is_alive():
            p.kill()
        a.close()
    return times


def copy_peer(n, repeats):
    """The copy bound: seconds per batch of ``n`` np.copyto of a frame into
    a preallocated, touched buffer (as recv_bytes_into's is)."""
    import numpy as np
    src, dst = np.ones(FRAME_BYTES, np.uint8), np.ones(FRAME_BYTES, np.uint8)
    for _ in range(2):
        np.copyto(dst, src)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    return times


def suite(level="full", rounds=None, repeats=None, start="fork", only=None):
    """The pipe cases at ``level``; smoke measures ping-pong only."""
    smoke, quick = level == "smoke", level != "full"
    repeats = repeats or (1 if smoke else 2 if quick else 5)
    rounds = 1 if quick else max(1, rounds or 3)
    only = only or ("pingpong" if smoke else None)
    results, rows, summary = {}, [], []
    for case, (n, desc) in CASES.items():
        if only and case != only:
            continue
        if quick:
            n = max(n // (40 if smoke else 4), 10)
        runs, med = ab_runs("pipe", rounds, case=case, n=n, repeats=repeats, start=start)
        rate = {k: n / med[k] for k in med}
        speed = rate["gb"] / rate["mp"]
        results[case] = {"n": n, "runs_s": runs, "median_s": med, "rate_per_s": rate,
                         "speedup": speed}
        if case == "pingpong":
            cells = [f"{rate['mp']:,.0f}/s", f"{rate['gb']:,.0f}/s"]
        else:
            cells = [f"{rate[k]:,.1f}/s ({rate[k] * FRAME_BYTES / 1e9:.2f} GB/s)"
                     for k in ("mp", "gb")]
        bound_cells = ["", ""]
        if case == "frames-bytes":
            bt = median([t for _ in range(rounds)
                         for t in run_peer("pipe", "copy_peer", n=n, repeats=repeats)])
            bound = n / bt
            results[case]["copy_bound_per_s"] = bound
            results[case]["gb_share_of_bound"] = rate["gb"] / bound
            bound_cells = [f"{bound:,.1f}/s", f"{rate['gb'] / bound:.0%}"]
        rows.append([desc, *cells, fmt_ratio(speed), *bound_cells])
        summary.append(summary_row("pipe", desc.rsplit(" (", 1)[0],
                                   "round trips/s" if case == "pingpong" else "frames/s",
                                   rate["gb"], rate["mp"], "mp.Pipe", advantage=speed,
                                   gb_peer="gb.Pipe"))
    tables = [table(
        f"Pipe, gb.Pipe vs multiprocessing.Pipe (median rates; start method {start}, "
        f"{rounds} round(s) x {repeats} batches per pipe kind)",
        ["case", "mp.Pipe", "gb.Pipe", "vs. mp", "copy bound", "gb of bound"], rows,
        note="vs. mp: gb rate / mp rate (higher is better); targets: frames >= 10x, "
             "ping-pong >= 3x.  Copy bound: one np.copyto of the frame per message "
             "(a pipe copies twice, at best one copy per process at once).")]
    return {"results": results, "tables": tables, "summary": summary}


def main(argv=None):
    ap = ab_parser(__doc__.split("\n\n")[0], "batches")
    ap.add_argument("--only", choices=sorted(CASES), help="one case")
    args = ap.parse_args(argv)
    main_suite(args, "pipe", lambda lv: suite(lv, args.rounds, args.repeats, args.start,
                                              args.only))


if __name__ == "__main__":
    main()
