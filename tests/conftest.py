"""Shared fixtures: unique segment names, a /dev/shm leak check, and
helpers to run and always reap child processes (SPEC §8 test rules)."""
import multiprocessing as mp
import multiprocessing.process
import os
import re
import subprocess
import tempfile
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


# -- which processes are this test run's ---------------------------------------
#
# The leak check must claim only segments this test made, in this process or
# in a process it started, never another user's whose owner happens to be
# dead.  A dead process's parent cannot be read back from /proc, so the
# processes this run starts are written down as they start, as "pid start"
# lines in one file per session: every forked child notes itself (an at-fork
# hook, inherited by its own forked children), and every Process.start() or
# subprocess.Popen() of this process notes the child it started (spawn and
# forkserver children, helper subprocesses).  Descendants of a spawned or
# exec'd child are not noted: their leftovers are not claimed (a missed
# report, never a segment removed that is not ours).

_PIDS_PATH = None  # set in the pytest process (pytest_configure); None elsewhere
_ROOT_PID = None


def _note_pid(pid):
    if not pid or _PIDS_PATH is None:
        return
    try:
        fd = os.open(_PIDS_PATH, os.O_WRONLY | os.O_APPEND)
    except OSError:
        return
    try:
        os.write(fd, f"{pid} {_segment.process_start_time(pid)}\n".encode())
    finally:
        os.close(fd)


def _start_and_note(self, _start=multiprocessing.process.BaseProcess.start):
    _start(self)
    _note_pid(self.pid)


def _popen_and_note(self, *args, _init=subprocess.Popen.__init__, **kwargs):
    _init(self, *args, **kwargs)
    _note_pid(self.pid)


def pytest_configure(config):
    # here, not at import: spawned children that import this module (for
    # START_METHODS) must neither make a record nor note anything
    global _PIDS_PATH, _ROOT_PID
    fd, _PIDS_PATH = tempfile.mkstemp(prefix="gb-test-pids-")
    os.close(fd)
    _ROOT_PID = os.getpid()
    os.register_at_fork(after_in_child=lambda: _note_pid(os.getpid()))
    multiprocessing.process.BaseProcess.start = _start_and_note
    subprocess.Popen.__init__ = _popen_and_note


def pytest_unconfigure(config):
    if _PIDS_PATH is not None and os.getpid() == _ROOT_PID:
        try:
            os.unlink(_PIDS_PATH)
        except OSError:
            pass


class LeakCheck:
    """Which new /dev/shm entries a stretch of a test run left behind.

    ``LeakCheck()`` snapshots the names and where the record of started
    processes ends; ``leaked()`` returns the names that are new since and
    proven made by this process or by a process started since (then dead:
    a live one may still remove its own).  Nothing else is claimed,
    whatever its owner's state.
    """

    def __init__(self):
        self.before = _ours()
        try:
            self.offset = os.path.getsize(_PIDS_PATH)
        except (OSError, TypeError):
            self.offset = 0  # no record: only this process's names are claimed

    def started(self):
        """{pid: {start times}} of the processes noted since the snapshot
        (start 0: it was gone before its start time could be read)."""
        try:
            with open(_PIDS_PATH, "rb") as f:
                f.seek(self.offset)
                lines = f.read().decode().split("\n")
        except (OSError, TypeError):
            return {}
        out = {}
        for line in lines:
            try:
                pid, start = map(int, line.split())
            except ValueError:
                continue  # an empty or half-written last line
            out.setdefault(pid, set()).add(start)
        return out

    def leaked(self):
        new = _ours() - self.before
        if not new:
            return []
        started = self.started()
        me = (os.getpid(), _segment.self_start_time())

        def by(pid, start=None):
            """Made by this process, or by one started since that is gone."""
            if pid == me[0]:
                return start in (None, 0, me[1])
            starts = started.get(pid)
            if not starts:
                return False
            if start is not None and start not in starts and 0 not in starts:
                return False  # that pid, but another process
            return not _segment.process_alive(pid, start or 0)

        claimed = {}

        def mine(name):
            if name not in claimed:
                claimed[name] = False  # (no loops through odd names)
                claimed[name] = _mine(name, by, mine)
            return claimed[name]

        return sorted(n for n in new if mine(n))


def _auto_pid(name):
    """The creator pid an auto-named ring carries (``r<hex pid>-...``)."""
    m = re.match(r"r([0-9a-f]+)-[0-9a-f]+\Z", name)
    return int(m.group(1), 16) if m else None


def _mine(name, by, mine):
    if name.startswith("test-") and f"-{os.getpid()}-" in name:
        return True  # a name the fixtures below made for this process
    blob = re.search(r"\.b(\d+)\.[0-9a-f]+\Z", name)
    if blob:  # an out-of-line item: made by the pid in its name
        return by(int(blob.group(1)))
    if name.endswith(".fifo"):  # a pipe's wake-up FIFO: judged by its ring
        ring = name[:-len(".fifo")]
        if ring in _ours():
            return mine(ring)
        pid = _auto_pid(ring)
        return pid is not None and by(pid)
    owner = _owner(name)
    if owner is not None:
        return by(*owner)
    pid = _auto_pid(name)  # not (yet) a readable segment: a creator killed midway?
    return pid is not None and by(pid)


def _owner(name):
    """(pid, start) a segment's header records, or None."""
    try:
        seg = _segment.Segment.attach(name, wait_init=0)
    except (OSError, gb.GlobalBufferError):
        return None  # gone, not ours to open, or not a segment
    h = gb._core.Handle()
    try:
        h._bind(seg.mm, name)
        return tuple(h._owner)
    except gb.GlobalBufferError:
        return None
    finally:
        h._unbind()
        seg.close()


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
    """Fail a test that leaves a new global_buffer segment (or pipe FIFO) in
    /dev/shm, made by this process or a process it started (see
    ``LeakCheck``); those are removed.  Others' segments are never touched."""
    check = LeakCheck()
    yield
    leaked = check.leaked()
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
