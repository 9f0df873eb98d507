"""``python -m global_buffer bench``: the quick comparison against
``multiprocessing`` (SPEC §7).  A few seconds per row, medians of three
runs, one table; ``benchmarks/`` has the thorough suite."""
import multiprocessing as mp
import statistics
import time

import numpy as np

from . import ArraySpec, Pipe, Ring

__all__ = ["run"]

FRAME = (1080, 1920, 3)


def _drain(q, n, done):
    for _ in range(n):
        q.get(timeout=60)
    done.put(time.perf_counter())


def _small_producer(q, n):
    item = (1, 3.14, "abc")
    for _ in range(n):
        q.put(item)


def _frame_producer(q, n):
    frame = np.zeros(FRAME, np.uint8)
    for _ in range(n):
        q.put(frame)


def _echo(conn, n):
    for _ in range(n):
        conn.send(conn.recv())


def _throughput(ctx, make_queue, producer, n):
    q, done = make_queue(), ctx.SimpleQueue()
    c = ctx.Process(target=_drain, args=(q, n, done))
    c.start()
    t0 = time.perf_counter()
    p = ctx.Process(target=producer, args=(q, n))
    p.start()
    end = done.get()
    p.join(60)
    c.join(60)
    return n / (end - t0)


def _pingpong(ctx, make_pipe, n):
    a, b = make_pipe()
    p = ctx.Process(target=_echo, args=(b, n))
    p.start()
    t0 = time.perf_counter()
    for i in range(n):
        a.send(i)
        a.recv()
    dt = time.perf_counter() - t0
    p.join(60)
    return n / dt


def run(quick=False, out=None):
    """Print the comparison table; returns the rows as dicts."""
    import sys
    out = out or sys.stdout
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    k = 1 if quick else 3
    small, frames, pings = (20000, 100, 2000) if quick else (100000, 300, 10000)
    rows = [
        ("small objects, items/s",
         lambda: _throughput(ctx, lambda: ctx.Queue(256), _small_producer, small),
         lambda: _throughput(ctx, lambda: Ring(256), _small_producer, small)),
        ("1080p frames, frames/s",
         lambda: _throughput(ctx, lambda: ctx.Queue(4), _frame_producer, frames),
         lambda: _throughput(ctx, lambda: Ring(4, schema=ArraySpec("uint8", FRAME)),
                             _frame_producer, frames)),
        ("Pipe ping-pong, round trips/s",
         lambda: _pingpong(ctx, ctx.Pipe, pings),
         lambda: _pingpong(ctx, Pipe, pings)),
    ]
    print(f"{'case':32} {'multiprocessing':>16} {'global_buffer':>14} {'vs.':>7}", file=out)
    result = []
    for label, std, ours in rows:
        a = statistics.median(std() for _ in range(k))
        b = statistics.median(ours() for _ in range(k))
        print(f"{label:32} {a:16,.0f} {b:14,.0f} {b / a:6.1f}x", file=out, flush=True)
        result.append({"case": label, "multiprocessing": a, "global_buffer": b, "ratio": b / a})
    return result
