"""Shared fixtures: unique segment names, a /dev/shm leak check, and
helpers to run and always reap child processes (SPEC §8 test rules)."""
import multiprocessing as mp
import os
import uuid

import pytest

import global_buffer as gb
from global_buffer import segment as _segment

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


@pytest.fixture(autouse=True)
def no_segment_leak():
    """Fail a test that leaves a new global_buffer segment in /dev/shm."""
    before = _ours()
    yield
    leaked = _ours() - before
    for name in leaked:
        gb.unlink(name)
    assert not leaked, f"test leaked shared-memory segments: {sorted(leaked)}"


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
