"""Benchmarks for global_buffer (not tests): ``python -m benchmarks.<name>``.

- ``benchmarks.streams``: per-sample write/read cost next to ``np.copyto``,
  cross-process frame throughput against ``multiprocessing.Queue``, and
  message-stream cost against ``model_dump`` + msgpack and pickle.
- ``benchmarks.wake``: wake-up latency, idle cost of a blocked reader, and
  the writer's cost of waking parked readers (SPEC §4).

Each peer runs in its own subprocess; figures are medians of repeats.
Results and method: ``docs/benchmarks.md``.
"""
