"""Benchmarks for global_buffer (not tests): ``python -m benchmarks`` runs
them all (``--quick``, ``--only``, ``--json``, ``--plots``: see
``benchmarks/__main__.py``); ``python -m benchmarks.<name>`` runs one.

- ``benchmarks.streams``: per-sample write/read cost next to ``np.copyto``,
  cross-process frame throughput against ``multiprocessing.Queue``, and
  message-stream cost against ``model_dump`` + msgpack and pickle.
- ``benchmarks.wake``: wake-up latency, idle cost of a blocked reader, and
  the writer's cost of waking parked readers (SPEC §4).
- ``benchmarks.pool``: ``gb.Pool.map`` against ``multiprocessing.Pool.map``
  for 1080p frame results and for 100k trivial tasks (SPEC §3.3).
- ``benchmarks.rings``: ``gb.Ring`` against ``multiprocessing.Queue`` and
  faster-fifo: small objects at 1:1 and 4:4 processes (with and without
  ``put_many``/``get_many``) and 1080p frames (SPEC §3.1).
- ``benchmarks.pipe``: ``gb.Pipe`` against ``multiprocessing.Pipe``:
  ping-pong round trips and 1080p frame throughput (SPEC §3.2).
- ``benchmarks.sweep``: throughput against payload size (8 B ... 32 MiB) for
  ``gb.Ring``, ``multiprocessing.Queue``, ``multiprocessing.Pipe``,
  faster-fifo and pyzmq PUSH/PULL.
- ``benchmarks.plots``: the docs' plots, from the suite's results.

Each peer runs in its own subprocess; figures are medians of repeats.
Results and method: ``docs/benchmarks.md``.
"""
