"""The sleep/wake protocol's lost-wake-up regression (SPEC §4; issue 14
item 3, docs/design.md "Memory model"), replayed in C with a waker run at a
hook inside gb_wait_prepare: tests/c/test_wake_hook.c."""

import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(HERE, "..", "global_buffer", "csrc")
CC = os.environ.get("CC", "gcc")

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which(CC) is None,
    reason=f"needs Linux and a C compiler ({CC})")


def test_sleeper_never_misses_a_publish_after_its_bit_was_taken(tmp_path):
    exe = tmp_path / "test_wake_hook"
    subprocess.run([CC, "-std=c11", "-pthread", "-O2", "-Wall", "-Wextra", "-Werror",
                    "-I", CSRC, os.path.join(HERE, "c", "test_wake_hook.c"), "-o", str(exe)],
                   check=True, capture_output=True, text=True, timeout=120)
    p = subprocess.run([str(exe)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr
