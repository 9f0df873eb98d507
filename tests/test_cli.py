"""The command line (SPEC §7): ``python -m global_buffer demo|ls|stat|unlink|clean|bench``.

Output shape and exit codes are checked in-process where that is enough;
the demo, ``--help`` and the unknown-name error run as real subprocesses.
"""
import io
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

import global_buffer as gb
from global_buffer import cli
from global_buffer.segment import list_names

# the children import the same global_buffer as this test process
_PKG_PARENT = str(Path(gb.__file__).resolve().parent.parent)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PKG_PARENT, env.get("PYTHONPATH")]))
    env.pop("PYTHONWARNINGS", None)
    return env


def run_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "global_buffer", *args], capture_output=True,
                          text=True, timeout=timeout, env=_env(), stdin=subprocess.DEVNULL)


def call(*args):
    """Run the CLI in-process: (exit code, stdout text)."""
    out = io.StringIO()
    code = cli.main(list(args), out=out)
    return code, out.getvalue()


def make_orphan(name):
    """A stream created by a process that then exits without unlinking it."""
    code = ("import sys, global_buffer as gb; "
            "w = gb.create(sys.argv[1], gb.ArraySpec('float32', (4,)), 2); "
            "w.close()")
    subprocess.run([sys.executable, "-c", code, name], check=True, timeout=60, env=_env())
    assert name in list_names()


def line_of(text, name):
    lines = [ln for ln in text.splitlines() if ln.split() and ln.split()[0] == name]
    assert len(lines) == 1, text
    return lines[0]


# -- help and arguments ------------------------------------------------------

def test_help_runs_as_module():
    p = run_cli("--help")
    assert p.returncode == 0, p.stderr
    for sub in ("demo", "ls", "stat", "unlink", "clean", "bench"):
        assert sub in p.stdout


@pytest.mark.parametrize("sub", ["demo", "ls", "stat", "unlink", "clean", "bench"])
def test_every_subcommand_has_help(sub, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([sub, "--help"])
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("args", [
    [],                                   # no subcommand
    ["frobnicate"],
    ["demo", "--seconds", "0"],
    ["demo", "--seconds", "soon"],
    ["demo", "--readers", "0"],
    ["demo", "--shape", "2x2"],           # too small for the timestamp
    ["demo", "--shape", "axb"],
    ["demo", "--item-bytes", "-1"],
    ["demo", "--item-bytes", "lots"],
    ["stat"],                             # missing NAME
])
def test_bad_arguments_exit_2(args, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(args)
    assert e.value.code == 2
    assert "usage:" in capsys.readouterr().err


# -- demo --------------------------------------------------------------------

_RING_OK = re.compile(r"^ring check: (\d+) put, \1 got: none lost, none duplicated .*: OK$", re.M)


def demo_names(out):
    """The stream and ring names the demo announced."""
    stream = re.search(r"^stream '([^']+)'", out, re.M).group(1)
    ring = re.search(r"^ring '([^']+)'", out, re.M).group(1)
    return stream, ring


def test_demo_finishes_by_itself():
    """§7: both phases, live lines (plain ones: stdout is not a terminal),
    the lost/duplicated check, exit code 0, nothing left in /dev/shm."""
    t0 = time.monotonic()
    p = run_cli("demo", "--seconds", "1", timeout=60)
    elapsed = time.monotonic() - t0
    assert p.returncode == 0, p.stdout + p.stderr
    assert elapsed < 20, f"demo took {elapsed:.1f} s"
    assert "Traceback" not in p.stderr, p.stderr
    out = p.stdout
    assert "\r" not in out
    # the stream phase
    assert "writer published" in out
    assert "reader 1:" in out and "reader 2:" in out
    assert "every frame was received intact or counted as an overrun" in out
    assert "fr/s" in out  # at least one live rate line
    # the ring phase, after it
    assert out.index("writer published") < out.index("producer put")
    assert "consumer 1:" in out and "consumer 2:" in out
    assert re.search(r"^\s+\d+\.\ds  put +\d+ it/s  got +\d+ it/s  lat +\d+ us", out, re.M), out
    m = _RING_OK.search(out)
    assert m and int(m.group(1)) > 0, out
    assert out.rstrip().splitlines()[-1] == m.group(0)
    names = list_names()
    assert not set(demo_names(out)) & set(names)


def test_demo_options_and_rate(shm_name):
    t0 = time.monotonic()
    code, out = call("demo", "--seconds", "1", "--readers", "1", "--rate", "200",
                     "--shape", "32x32", "--capacity", "64", "--name", shm_name)
    assert code == 0, out
    assert time.monotonic() - t0 < 20
    # --seconds is split between the phases: 0.5 s each, paced near 200/s
    written = int(out.split("writer published ")[1].split()[0])
    assert 20 <= written <= 200, out
    put = int(out.split("producer put ")[1].split()[0])
    assert 20 <= put <= 200, out
    assert "reader 1:" in out and "reader 2:" not in out
    assert "consumer 1: " in out and "consumer 2:" not in out
    assert f"consumer 1: {put} items" in out  # the only consumer got them all
    assert _RING_OK.search(out), out
    assert demo_names(out) == (shm_name, f"{shm_name}-ring")
    assert shm_name not in list_names() and f"{shm_name}-ring" not in list_names()


def test_demo_ring_items_larger_than_a_slot(shm_name):
    """--item-bytes beyond a slot: the items travel out of line, and none
    of their segments is left behind (the autouse leak check)."""
    code, out = call("demo", "--seconds", "1", "--readers", "2", "--item-bytes", "100000",
                     "--shape", "16x16", "--name", shm_name)
    assert code == 0, out
    assert "100000-byte payload" in out
    assert "MB/s of payload" in out
    assert _RING_OK.search(out), out
    assert not [n for n in list_names() if n.startswith(shm_name)]


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_demo_on_a_terminal_rewrites_its_live_line(shm_name, monkeypatch):
    """On a terminal each phase has one live line, rewritten with \\r and
    cut to the terminal's width (a wrapped line could not be rewritten)."""
    monkeypatch.setenv("COLUMNS", "60")
    out = _Terminal()
    code = cli.main(["demo", "--seconds", "1.5", "--readers", "1", "--shape", "16x16",
                     "--name", shm_name], out=out)
    text = out.getvalue()
    assert code == 0, text
    live = [ln for ln in text.split("\n") if ln.startswith("\r")]
    assert len(live) == 2, text  # one line per phase, rewritten in place
    for ln in live:
        assert ln.count("\r") >= 2 and ln.endswith("\x1b[K"), ln
        assert all(len(part.replace("\x1b[K", "")) <= 59 for part in ln.split("\r"))
    assert _RING_OK.search(text), text


def test_ring_check_reports_lost_duplicated_and_disorder():
    """The check line says FAILED, with what went wrong, from the counts
    and sums the consumers report (no processes needed)."""
    from types import SimpleNamespace
    fields = cli._RING_FIELDS
    done = [SimpleNamespace(exitcode=0)] * 3

    def check(put, *consumers):
        stats = [put, 1]
        for seqs, disorder in consumers:
            stats += [len(seqs), sum(seqs), sum(s * s for s in seqs) % cli._SQ_MOD,
                      1000 * len(seqs), 1000, disorder, 1]
        assert len(stats) == 2 + fields * len(consumers)
        out = io.StringIO()
        code = cli._ring_summary(stats, done, len(consumers), 32, 1.0, out)
        return code, out.getvalue().splitlines()[-1]

    code, line = check(6, ([0, 2, 4], 0), ([1, 3, 5], 0))
    assert code == 0 and line.endswith(": OK"), line
    code, line = check(6, ([0, 2, 4], 0), ([1, 3], 0))
    assert code == 1 and "1 lost" in line and line.endswith("FAILED"), line
    code, line = check(6, ([0, 2, 4], 0), ([1, 3, 4, 5], 0))
    assert code == 1 and "1 duplicated" in line, line
    code, line = check(6, ([0, 2, 4], 0), ([1, 3, 3], 0))  # one lost, one duplicated
    assert code == 1 and "not the same sequence numbers" in line, line
    code, line = check(6, ([0, 2, 4], 0), ([3, 1, 5], 1))
    assert code == 1 and "1 got out of put order" in line, line


def test_demo_refuses_an_existing_name(shm_name):
    w = gb.create(shm_name, gb.ArraySpec("uint8", (8,)), 2)
    try:
        code, out = call("demo", "--seconds", "1", "--name", shm_name)
        assert code == 1
        assert shm_name in list_names()  # not removed by the failed demo
    finally:
        w.close()


def test_demo_refuses_an_existing_ring_name(shm_name):
    with gb.Ring(name=f"{shm_name}-ring") as q:
        code, out = call("demo", "--seconds", "1", "--name", shm_name)
        assert code == 1
        assert q.name in list_names()
        assert shm_name not in list_names()  # nothing was started


# -- ls ----------------------------------------------------------------------

def test_ls_shows_a_created_segment(shm_name):
    with gb.create(shm_name, gb.ArraySpec("uint8", (16, 16)), capacity=5) as w:
        for _ in range(3):
            w.write(np.zeros((16, 16), np.uint8))
        r = gb.attach(shm_name)
        try:
            code, out = call("ls")
            assert code == 0
            header = out.splitlines()[0].split()
            assert header[:3] == ["NAME", "KIND", "CAPACITY"]
            fields = line_of(out, shm_name).split()
            # name, kind, capacity, slot size (2 cells), owner pid, alive, items, readers
            assert fields[1] == "stream:array"
            assert fields[2] == "5"
            assert " ".join(fields[3:5]) == "256 B"
            assert fields[5] == str(os.getpid()) and fields[6] == "alive"
            assert fields[7] == "3"
            assert fields[8] == "1"

            code, out = call("ls", "--json")
            row = next(d for d in json.loads(out) if d["name"] == shm_name)
            assert row["items"] == 3 and row["capacity"] == 5 and row["slot_size"] == 256
            assert row["owner_pid"] == os.getpid() and row["owner_alive"] is True
        finally:
            r.close()


def test_ls_message_stream_and_dead_owner(shm_name, new_name):
    from pydantic import BaseModel

    class Ping(BaseModel):
        n: int

    dead = new_name("dead")
    make_orphan(dead)
    with gb.create(shm_name, Ping, capacity=3, max_bytes=128):
        code, out = call("ls")
        assert code == 0
        assert line_of(out, shm_name).split()[1] == "stream:message"
        assert " dead " in line_of(out, dead)


def test_ls_survives_unreadable_segments(new_name):
    if not os.path.isdir("/dev/shm"):
        pytest.skip("needs /dev/shm")
    name = new_name("junk")
    with open(f"/dev/shm/gb.{name}", "wb") as f:
        f.write(os.urandom(3000))
    code, out = call("ls")
    assert code == 0
    assert "unreadable" in line_of(out, name)
    code, _ = call("clean", f"{name}*")
    assert code == 0
    assert name in list_names()  # owner unknown: clean leaves it alone
    assert call("unlink", name)[0] == 0
    assert name not in list_names()


# -- stat --------------------------------------------------------------------

def test_stat_unknown_name_is_one_line_exit_1():
    name = f"no-such-{uuid.uuid4().hex[:8]}"
    p = run_cli("stat", name)
    assert p.returncode == 1
    assert p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert name in lines[0] and "no segment" in lines[0]
    assert "Traceback" not in p.stderr


def test_stat_invalid_name_exit_2():
    p = run_cli("stat", "../etc")
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1
    assert "Traceback" not in p.stderr


def test_stat_shows_header_and_rate(shm_name):
    with gb.create(shm_name, gb.ArraySpec("float32", (8,)), capacity=4) as w:
        w.write(np.ones(8, np.float32))
        code, out = call("stat", shm_name, "--interval", "0")
        assert code == 0
        # "label  value": labels may hold one space, the gap is two or more
        fields = dict(re.split(r"\s{2,}", ln.strip(), maxsplit=1)
                      for ln in out.splitlines() if ln.strip())
        assert fields["kind"] == "stream:array"
        assert fields["schema"] == "float32[8]"
        assert fields["capacity"] == "4"
        assert fields["slots"] == "5"
        assert fields["owner"].startswith(f"pid {os.getpid()} (alive)")
        assert fields["items written"] == "1"
        assert fields["slot size"] == "32 B (32 bytes)"
        assert "rate" not in fields

        code, out = call("stat", shm_name, "--interval", "0.2", "--json")
        info = json.loads(out)
        assert info["items"] == 1 and info["rate_items_per_s"] == 0


def test_stat_corrupt_segment_is_one_line_exit_1(new_name):
    if not os.path.isdir("/dev/shm"):
        pytest.skip("needs /dev/shm")
    name = new_name("bad")
    with open(f"/dev/shm/gb.{name}", "wb") as f:
        f.write(b"\0" * 8 + b"garbage" * 300)
    p = run_cli("stat", name)
    assert p.returncode == 1
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "Traceback" not in p.stderr
    gb.unlink(name)


# -- unlink ------------------------------------------------------------------

def test_unlink(shm_name):
    w = gb.create(shm_name, gb.ArraySpec("uint8", (4,)), 2)
    try:
        code, out = call("unlink", shm_name)
        assert code == 0
        assert "removed" in out and "still running" in out
        assert shm_name not in list_names()
    finally:
        w.close()
    p = run_cli("unlink", shm_name)
    assert p.returncode == 1
    assert len(p.stderr.strip().splitlines()) == 1


# -- clean -------------------------------------------------------------------

def test_clean_removes_only_dead_owner_segments(shm_name, new_name):
    dead = new_name("dead")
    make_orphan(dead)
    with gb.create(shm_name, gb.ArraySpec("uint8", (4,)), 2):
        pattern = f"{shm_name}*"  # only this test's segments
        code, out = call("clean", "--dry-run", pattern)
        assert code == 0
        assert f"would remove {dead}" in out
        assert shm_name + " " not in out.replace(dead, "")
        assert dead in list_names()  # dry run removed nothing

        code, out = call("clean", pattern)
        assert code == 0
        assert f"removed {dead}" in out
        assert "removed 1 segment" in out
        names = list_names()
        assert dead not in names
        assert shm_name in names

        code, out = call("clean", pattern)
        assert "removed 0 segments" in out


def test_bench_quick_prints_the_comparison_table():
    """§7: ``bench`` compares against multiprocessing in one short run."""
    p = run_cli("bench", "--quick", timeout=120)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert "multiprocessing" in lines[0] and "global_buffer" in lines[0]
    rows = [line for line in lines[1:] if line.strip()]
    assert len(rows) == 3
    for row in rows:
        assert re.search(r"\d+\.\dx$", row), row


def test_clean_leaves_a_live_ring_blob_alone(new_name):
    """§7 clean removes only segments whose owner is dead: an out-of-line
    item (a blob segment named after its ring and producer) of a live ring
    is listed with its producer's pid and never a clean candidate."""
    with gb.Ring(name=new_name("ring")) as q:
        q.put(b"x" * 100_000)   # larger than a slot: goes out of line, held until get()
        blobs = [n for n in list_names() if n.startswith(q.name + ".b")]
        assert len(blobs) == 1
        info = cli.segment_info(blobs[0])
        assert info["kind"] == "blob"
        assert info["owner_pid"] == os.getpid() and info["owner_alive"]
        assert info["ring"] == q.name
        code, out = call("clean", "--dry-run", f"{q.name}*")
        assert code == 0 and blobs[0] not in out, out
        assert q.get(timeout=10) == b"x" * 100_000


# -- ls / clean and helper files (pipe FIFOs, out-of-line items) --------------

def _holder(path):
    """A live process other than this one holding ``path`` open."""
    code = ("import os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_NONBLOCK); "
            "print('open', flush=True); sys.stdin.read()")
    p = subprocess.Popen([sys.executable, "-c", code, path], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env=_env())
    assert p.stdout.readline().strip() == "open"
    return p


def test_ls_lists_segments_not_pipe_fifos():
    """§7 ``ls``: one line per segment.  A pipe's wake-up FIFO
    (``/dev/shm/gb.<ring>.fifo``, made by ``fileno()``) is not a segment: it
    is neither listed nor reported unreadable; the pipe's rings are."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("needs /dev/shm")
    a, b = gb.Pipe()
    try:
        b.fileno()
        fifo = b._rx.name + ".fifo"
        assert fifo in list_names()
        code, out = call("ls")
        assert code == 0
        assert fifo not in out, out
        assert b._rx.name in out
        code, out = call("ls", "--json")
        assert code == 0
        names = [r["name"] for r in json.loads(out)]
        assert b._rx.name in names and not any(n.endswith(".fifo") for n in names)
    finally:
        a.close(), b.close()


def test_clean_removes_a_dead_pipes_fifo_but_not_one_in_use(new_name):
    """§7 ``clean``: a pipe FIFO whose ring is gone is a leftover -- unless
    a live process still holds it open (a pipe end in use): then it stays."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("needs /dev/shm")
    ring = new_name("gone")  # no such segment: the pipe's ring is gone
    name = ring + ".fifo"
    path = f"/dev/shm/gb.{name}"
    os.mkfifo(path, 0o600)
    holder = _holder(path)
    try:
        code, out = call("clean", "--dry-run", f"{ring}*")
        assert code == 0 and name not in out, out
        code, out = call("clean", f"{ring}*")
        assert name not in out and os.path.exists(path), out
    finally:
        holder.stdin.close()
        holder.wait(30)
        holder.stdout.close()
    code, out = call("clean", "--dry-run", f"{ring}*")
    assert f"would remove {name}" in out, out
    assert os.path.exists(path)
    code, out = call("clean", f"{ring}*")
    assert f"removed {name}" in out and not os.path.exists(path), out


def test_clean_leaves_a_blob_a_live_process_maps(new_name):
    """An out-of-line item of a dead producer whose ring is gone is a
    leftover for ``clean`` -- unless a live process still maps it (a
    consumer that may yet read it)."""
    if not os.path.isdir("/proc"):
        pytest.skip("needs /proc")
    from global_buffer import _core
    from global_buffer.segment import Segment
    pid = _free_pid()
    name = f"{new_name('gone')}.b{pid}.0a1b2c3d0"
    seg = Segment.create(name, _core.SLOT_HEADER + 4096)
    _core.blob_init(seg.mm, 4096)
    seg.close()
    path = f"/dev/shm/gb.{name}"
    code = ("import mmap, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); "
            "m = mmap.mmap(fd, 0, prot=mmap.PROT_READ); os.close(fd); "
            "print('open', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code, path], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "open"
        assert cli.segment_info(name)["kind"] == "blob"
        code_, out = call("clean", name)
        assert code_ == 0 and name not in out and os.path.exists(path), out
    finally:
        holder.stdin.close()
        holder.wait(30)
        holder.stdout.close()
    code_, out = call("clean", name)
    assert f"removed {name}" in out and not os.path.exists(path), out


def test_clean_leaves_a_live_rings_fifo_alone(new_name):
    """A FIFO whose ring is present with a live owner is never a clean
    candidate, held open or not."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("needs /dev/shm")
    with gb.Ring(name=new_name("ring")) as q:
        path = f"/dev/shm/gb.{q.name}.fifo"
        os.mkfifo(path, 0o600)
        try:
            code, out = call("clean", "--dry-run", f"{q.name}*")
            assert code == 0 and ".fifo" not in out, out
        finally:
            os.unlink(path)


# -- the suite's own leak check (tests/conftest.py) ----------------------------

def _free_pid():
    """A pid no process has now (and that this run never started)."""
    with open("/proc/sys/kernel/pid_max") as f:
        pid = int(f.read()) - 7
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    return pid


def _foreign_ring(name, pid, start):
    """A ring segment whose header names another user's process as owner."""
    from global_buffer import _core
    from global_buffer.ring import _ring_hash
    from global_buffer.schema import encode_meta
    from global_buffer.segment import Segment
    meta = {"kind": "ring", "payload": "object", "serializer": "pickle", "mode": 0o600}
    raw = encode_meta(meta)
    size = _core.segment_nbytes(_core.KIND_OBJECT, _core.FLAG_QUEUE, 4, 256, len(raw))
    seg = Segment.create(name, size)
    _core.init_segment(seg.mm, _core.KIND_OBJECT, _core.FLAG_QUEUE, 4, 256, 0,
                       _ring_hash(meta), raw, pid, start)
    seg.close()


def _orphan_in_child(method):
    import multiprocessing as mp
    p = mp.get_context(method).Process(target=_make_ring_and_vanish)
    p.start()
    p.join(60)
    assert p.exitcode == 0
    return p.pid


def _make_ring_and_vanish():
    r = gb.Ring()
    r.put(b"y" * 100_000)  # and an out-of-line item
    os._exit(0)  # no finalizers: the ring and its blob stay behind


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc (Linux)")
def test_leak_check_claims_only_this_tests_segments():
    """The leak check never claims (reports or removes) a segment it cannot
    prove this test made: a dead-owner ring of another user's process that
    appears meanwhile, its blob and its FIFO stay.  What a child this
    test started left behind is claimed, whatever its name."""
    from conftest import LeakCheck
    pid = _free_pid()
    foreign = f"r{pid:x}-{uuid.uuid4().hex[:10]}"
    made = [foreign, f"{foreign}.b{pid}.0a1b2c3d0", f"{foreign}.fifo"]
    check = LeakCheck()
    try:
        _foreign_ring(foreign, pid, 123456)
        gb.segment.Segment.create(made[1], 4096).close()
        os.mkfifo(f"/dev/shm/gb.{made[2]}", 0o600)
        assert not gb.segment.process_alive(pid)
        assert check.leaked() == []
        assert set(made) <= set(list_names())  # nothing removed either
    finally:
        for n in made:
            gb.unlink(n)

    for method in ("fork", "spawn"):
        check = LeakCheck()
        pid = _orphan_in_child(method)
        # (other test runs on this host may add names meanwhile: not ours)
        left = sorted(n for n in list_names() if n.startswith(f"r{pid:x}-"))
        assert len(left) == 2 and ".b" in left[1], left  # the ring and its blob
        try:
            assert check.leaked() == left, method
        finally:
            for n in left:
                gb.unlink(n)
