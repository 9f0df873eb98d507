"""Builds and runs the C-level test of the ring core (tests/c/test_ring.c)
with the system C compiler: once optimised with -Wall -Werror, once under
AddressSanitizer + UndefinedBehaviorSanitizer where the toolchain has them.

The core is plain C11 on a caller-provided buffer, so the C test runs it on
malloc'd memory with threads standing in for processes (STYLE 2, 3, 9).
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "c" / "test_ring.c"

pytestmark = pytest.mark.skipif(
    sys.platform == "win32", reason="the C test uses pthreads (Windows unverified)")

def _include_root():
    """Directory holding global_buffer/csrc/gb_ring.h: this checkout if it has
    the sources, else the installed package (tox runs from an sdist/wheel)."""
    repo = HERE.parent
    if (repo / "global_buffer" / "csrc" / "gb_ring.h").is_file():
        return repo
    import global_buffer
    pkg = Path(global_buffer.__file__).resolve().parent
    if (pkg / "csrc" / "gb_ring.h").is_file():
        return pkg.parent
    pytest.skip("global_buffer/csrc/gb_ring.h not found (sources not shipped?)")


def _cc():
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        pytest.skip(f"no C compiler ({cc!r}) on PATH")
    return cc


def _build(out, *extra):
    cmd = [_cc(), "-std=c11", "-pthread", "-Wall", "-Wextra", "-Wno-unused-parameter",
           "-Werror", *extra, "-I", str(_include_root()), str(SOURCE), "-o", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    return p, cmd


def _run(exe, *args, env=None, timeout=300):
    return subprocess.run([str(exe), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _report(p):
    return f"exit {p.returncode}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}"


@pytest.fixture(scope="module")
def optimised(tmp_path_factory):
    exe = tmp_path_factory.mktemp("c") / "test_ring"
    p, cmd = _build(exe, "-O2")
    assert p.returncode == 0, f"{' '.join(cmd)}\n{p.stderr}"
    return exe


@pytest.fixture(scope="module")
def sanitized(tmp_path_factory):
    d = tmp_path_factory.mktemp("csan")
    flags = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
             "-fno-sanitize-recover=undefined"]
    # does this toolchain build and run sanitized programs at all?
    probe = d / "probe.c"
    probe.write_text("int main(void) { return 0; }\n")
    p = subprocess.run([_cc(), *flags, str(probe), "-o", str(d / "probe")],
                       capture_output=True, text=True, timeout=60)
    if p.returncode != 0 or subprocess.run([str(d / "probe")], timeout=60).returncode != 0:
        pytest.skip("this toolchain cannot build ASan/UBSan programs")
    exe = d / "test_ring"
    p, cmd = _build(exe, *flags)
    assert p.returncode == 0, f"{' '.join(cmd)}\n{p.stderr}"
    return exe


def test_c_core(optimised):
    p = _run(optimised)
    assert p.returncode == 0, _report(p)
    assert p.stdout.rstrip().splitlines()[-1].endswith(" 0 failed"), _report(p)


def test_c_core_sanitized(sanitized):
    env = dict(os.environ, ASAN_OPTIONS="abort_on_error=0:detect_leaks=1",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    p = _run(sanitized, env=env, timeout=600)
    assert p.returncode == 0, _report(p)
    assert "runtime error" not in p.stderr, _report(p)


def test_c_groups_listed(optimised):
    p = _run(optimised, "--list", timeout=30)
    assert p.returncode == 0
    names = {line.split()[0] for line in p.stdout.splitlines()}
    assert {"open", "fuzz", "stream", "queue", "recover", "mpmc", "torn",
            "overflow", "wrap40"} <= names
