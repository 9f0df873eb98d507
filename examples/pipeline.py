"""An image pipeline written against the standard ``multiprocessing`` API,
migrated to shared-memory rings by one line.

    producer --JoinableQueue--> N workers --Queue--> collector --Pipe--> main
                                    |                    |
                        Manager dict (per-worker counts) |
                                              main: Pool.map over thumbnails

- a producer process generates numpy "images" (deterministic noise plus a
  bright square) and puts them on a bounded ``JoinableQueue``;
- workers measure each image (mean, spread, Otsu threshold, bright area,
  centroid) and make a 4x-downsampled thumbnail, count their work in a
  ``Manager().dict()`` and ``task_done()`` each task;
- a collector process gathers the results from a ``Queue`` and sends the
  table and the thumbnails to the main process through a ``Pipe``;
- the main process scores the thumbnails with ``Pool.map`` and prints a JSON
  summary on stdout (timings on stderr).

Run it with the standard library::

    python examples/pipeline.py

and with global_buffer, which swaps exactly one line -- ``import
multiprocessing`` becomes ``import global_buffer.multiprocessing as
multiprocessing`` (see docs/migration.md)::

    python examples/pipeline.py --gb          # or GB_PIPELINE=1

Both print the same JSON.  Options: ``--images N --size S --workers W
--start METHOD``.
"""
import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np

if "--gb" in sys.argv or os.environ.get("GB_PIPELINE") == "1":
    import global_buffer.multiprocessing as multiprocessing  # the one-line migration
else:
    import multiprocessing

STOP = None


def make_image(idx, size):
    """A deterministic test image: noise plus a bright square that moves."""
    rng = np.random.default_rng(idx)
    img = rng.integers(0, 120, (size, size), dtype=np.uint8)
    s = size // 4
    y, x = (idx * 7) % (size - s), (idx * 13) % (size - s)
    img[y:y + s, x:x + s] = rng.integers(180, 256, (s, s), dtype=np.uint8)
    return img


def producer(tasks, n_images, size, n_workers):
    for idx in range(n_images):
        tasks.put((idx, make_image(idx, size)))
    for _ in range(n_workers):
        tasks.put(STOP)


def otsu(img):
    """Otsu's threshold of a uint8 image."""
    hist = np.bincount(img.ravel(), minlength=256).astype(np.float64)
    p = hist / hist.sum()
    omega = np.cumsum(p)
    mu = np.cumsum(p * np.arange(256))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * omega - mu) ** 2 / (omega * (1 - omega))
    return int(np.nanargmax(between))


def measure(idx, img):
    t = otsu(img)
    mask = img > t
    ys, xs = np.nonzero(mask)
    h, w = img.shape
    thumb = img.reshape(h // 4, 4, w // 4, 4).mean(axis=(1, 3)).astype(np.float32)
    stats = {
        "idx": idx,
        "mean": round(float(img.mean()), 6),
        "std": round(float(img.std()), 6),
        "threshold": t,
        "bright": int(mask.sum()),
        "centroid": [round(float(ys.mean()), 3), round(float(xs.mean()), 3)],
    }
    return stats, thumb


def worker(tasks, results, counts, lock):
    me = os.getpid()
    done = 0
    while True:
        item = tasks.get()
        try:
            if item is STOP:
                break
            results.put(measure(*item))
            done += 1
        finally:
            tasks.task_done()
    with lock:
        counts[me] = counts.get(me, 0) + done


def collector(results, conn, n_images):
    table, thumbs = [], {}
    for _ in range(n_images):
        stats, thumb = results.get()
        table.append(stats)
        thumbs[stats["idx"]] = thumb
    table.sort(key=lambda s: s["idx"])
    conn.send(table)
    conn.send(np.stack([thumbs[s["idx"]] for s in table]))
    conn.close()


def score(thumb):
    """Sharpness-like score of a thumbnail: mean absolute gradient."""
    gy, gx = np.gradient(thumb.astype(np.float64))
    return round(float(np.abs(gx).mean() + np.abs(gy).mean()), 6)


def run(n_images, size, n_workers):
    t0 = time.perf_counter()
    manager = multiprocessing.Manager()
    counts, lock = manager.dict(), manager.Lock()
    tasks = multiprocessing.JoinableQueue(maxsize=8)
    results = multiprocessing.Queue()
    recv_end, send_end = multiprocessing.Pipe(duplex=False)

    procs = [multiprocessing.Process(target=producer, args=(tasks, n_images, size, n_workers))]
    procs += [multiprocessing.Process(target=worker, args=(tasks, results, counts, lock))
              for _ in range(n_workers)]
    procs.append(multiprocessing.Process(target=collector, args=(results, send_end, n_images)))
    for p in procs:
        p.start()
    send_end.close()  # the collector holds the write end now

    table = recv_end.recv()
    thumbs = recv_end.recv()
    tasks.join()  # every task (and stop marker) was task_done()
    for p in procs:
        p.join(60)
        if p.exitcode != 0:
            raise SystemExit(f"{p.name} exited with {p.exitcode}")
    try:
        recv_end.recv()
        raise SystemExit("the collector sent more than expected")
    except EOFError:
        pass  # the collector is gone and nothing is left
    recv_end.close()
    worked = dict(counts)
    manager.shutdown()
    t1 = time.perf_counter()

    with multiprocessing.Pool(2) as pool:
        scores = pool.map(score, list(thumbs), chunksize=4)
    t2 = time.perf_counter()

    digest = hashlib.sha256(json.dumps(table, sort_keys=True).encode())
    digest.update(thumbs.tobytes())
    summary = {
        "images": len(table),
        "processed": sum(worked.values()),
        "workers_reporting": len(worked),
        "thumbnails": list(thumbs.shape),
        "mean_threshold": round(sum(s["threshold"] for s in table) / len(table), 6),
        "total_bright": sum(s["bright"] for s in table),
        "best": max(range(len(scores)), key=scores.__getitem__),
        "scores_sum": round(sum(scores), 4),
        "first": table[0],
        "digest": digest.hexdigest(),
    }
    print(f"{multiprocessing.__name__}: pipeline {t1 - t0:.2f}s, pool {t2 - t1:.2f}s",
          file=sys.stderr)
    return summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", action="store_true",
                    help="swap the import for the shared-memory rings (also: GB_PIPELINE=1)")
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--start", choices=multiprocessing.get_all_start_methods(),
                    help="start method (default: the platform's)")
    args = ap.parse_args(argv)
    if args.size % 4 or args.size < 16:
        ap.error("--size must be a multiple of 4, at least 16")
    if args.start:
        multiprocessing.set_start_method(args.start)
    print(json.dumps(run(args.images, args.size, args.workers), sort_keys=True))


if __name__ == "__main__":
    main()
