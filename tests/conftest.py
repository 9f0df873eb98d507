"""Shared fixtures: unique segment names, a /dev/shm leak check, and
helpers to run and always reap child processes (SPEC §8 test rules)."""
import multiprocessing as mp
import os
import re
import uuid

import pytest

import global_buffer as gb
from global_buffer import segment as _segment

def pytest_collection_modifyitems(config, items):
    """Long stress runs (``@pytest.mark.slow``) are opt-in: a plain
    ``pytest`` deselects them; any ``-m`` expression (CI uses
    ``-m "slow or not slow"``) decides for itself."""
    if config.getoption("markexpr"):
        return
    keep, slow = [], []
    for item in items:
        (slow if item.get_closest_marker("slow") else keep).append(item)
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = keep


START_METHODS = [m for m in ("fork", "spawn", "forkserver") if m in mp.get_all_start_methods()]


def _ours():
    return set(_segment.list_names())


@pytest.fixture
def shm_name(request):
    """A segment name unique to this test; removed afterwards whatever happens."""
    made = []

    def make(tag="t"):
        name = f"test-{tag}-{os.getpid()}-{uuid.uuid4().hex[:10]}"
        made.append(name)
        return name

    first = make()
    make.first = first
    yield first
    for name in made:
        gb.unlink(name)


@pytest.fixture
def new_name(shm_name):
    """Factory for more unique names in one test (also cleaned up)."""
    extra = []

    def make(tag="x"):
        name = f"{shm_name}-{tag}{len(extra)}"
        extra.append(name)
        return name

    yield make
    for name in extra:
        gb.unlink(name)


def _made_here(name):
    """True if segment ``name`` is this test run's: made by this process or
    by a process that is gone (a child that died).  Segments whose maker is
    alive elsewhere (a concurrent test run, a benchmark, a user's streams)
    are never counted, nor touched."""
    if name.startswith("test-") and f"-{os.getpid()}-" in name:
        return True
    blob = re.search(r"\.b(\d+)\.\d+$", name)
    if blob:  # an out-of-line item: judged by the process that made it
        pid = int(blob.group(1))
        return pid == os.getpid() or not _segment.process_alive(pid)
    if name.endswith(".fifo"):  # a pipe's descriptor: judged by its ring
        return _made_here(name[:-len(".fifo")]) or name[:-len(".fifo")] not in _ours()
    try:
        seg = _segment.Segment.attach(name, wait_init=0)
    except (OSError, gb.GlobalBufferError):
        return False  # already gone, or not a readable segment of ours
    h = gb._core.Handle()
    try:
        h._bind(seg.mm, name)
        pid, start = h._owner
    except gb.GlobalBufferError:
        return False  # blobs, FIFOs and foreign files: judged by their ring
    finally:
        h._unbind()
        seg.close()
    return pid == os.getpid() or not _segment.process_alive(pid, start)


@pytest.fixture(autouse=True)
def no_segment_leak():
    """Fail a test that leaves a new global_buffer segment in /dev/shm."""
    before = _ours()
    yield
    leaked = sorted(n for n in _ours() - before if _made_here(n))
    for name in leaked:
        gb.unlink(name)
    assert not leaked, f"test leaked shared-memory segments: {leaked}"


@pytest.fixture(params=START_METHODS)
def ctx(request):
    """A multiprocessing context per start method."""
    return mp.get_context(request.param)


class Children:
    """Start processes and always join them with a timeout, killing stragglers."""

    def __init__(self):
        self.procs = []

    def start(self, ctx, target, *args, **kwargs):
        p = ctx.Process(target=target, args=args, kwargs=kwargs, daemon=True)
        p.start()
        self.procs.append(p)
        return p

    def join(self, p, timeout=30):
        p.join(timeout)
        if p.is_alive():
            p.kill()
            p.join(5)
            raise AssertionError(f"child {p.pid} did not finish within {timeout}s")
        return p.exitcode

    def reap(self):
        for p in self.procs:
            if p.is_alive():
                p.kill()
            p.join(5)


@pytest.fixture
def children():
    c = Children()
    yield c
    c.reap()
