"""``gb.JoinableRing.join()`` (SPEC §3.2, §4): it sleeps in the kernel
until the last ``task_done()``, from this or another process, and costs no
CPU meanwhile.  (Parity with ``multiprocessing.JoinableQueue`` --
``task_done``/``join`` semantics, ValueError on one ``task_done`` too many,
across start methods -- is in test_ring_parity.py and CPython's own
``_TestQueue`` in test_cpython_queue.py.)"""
import multiprocessing as mp
import threading
import time

import global_buffer as gb

TIMEOUT = 30


def _joiner(jr):
    done = threading.Event()
    t = threading.Thread(target=lambda: (jr.join(), done.set()), daemon=True)
    t.start()
    return t, done


def test_join_sleeps_without_cpu_until_the_last_task_done():
    jr = gb.JoinableRing()
    try:
        jr.put("a")
        jr.put("b")
        t, done = _joiner(jr)
        time.sleep(0.05)
        cpu0, t0 = time.process_time(), time.monotonic()
        time.sleep(0.5)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
        assert not done.is_set()
        assert cpu < 0.1 * wall, f"join() burnt {cpu:.3f}s CPU in {wall:.2f}s"
        assert jr.get(timeout=TIMEOUT) == "a"
        jr.task_done()
        assert not done.wait(0.1), "join() returned with a task outstanding"
        assert jr.get(timeout=TIMEOUT) == "b"
        t0 = time.monotonic()
        jr.task_done()
        assert done.wait(TIMEOUT)
        assert time.monotonic() - t0 < 1.0, "join() woke late"
        t.join(TIMEOUT)
    finally:
        jr.close()


def _consume(jr, n):
    for _ in range(n):
        jr.get(timeout=TIMEOUT)
        time.sleep(0.01)
        jr.task_done()


def test_join_woken_by_task_done_in_another_process(children):
    jr = gb.JoinableRing(4)
    try:
        p = children.start(mp.get_context(), _consume, jr, 10)
        for i in range(10):
            jr.put(i, timeout=TIMEOUT)
        t, done = _joiner(jr)
        assert done.wait(TIMEOUT), "join() did not return"
        assert children.join(p, TIMEOUT) == 0
        t.join(TIMEOUT)
    finally:
        jr.close()
