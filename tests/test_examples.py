"""examples/pipeline.py, a producer / workers / collector program written
against ``multiprocessing``, gives the same results when its one import line
is swapped for ``import global_buffer.multiprocessing as multiprocessing``
(SPEC §3.3, issue 5)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPELINE = os.path.join(ROOT, "examples", "pipeline.py")
TIMEOUT = 120


def _run(*args, env=None):
    p = subprocess.run([sys.executable, PIPELINE, "--images", "24", *args],
                       capture_output=True, text=True, timeout=TIMEOUT,
                       env=dict(os.environ, **(env or {})))
    assert p.returncode == 0, f"pipeline {args} failed:\n{p.stdout}\n{p.stderr}"
    return json.loads(p.stdout.splitlines()[-1]), p.stderr


@pytest.fixture(scope="module")
def stdlib_result():
    result, err = _run()
    assert err.startswith("multiprocessing:")
    return result


def test_the_migration_is_one_line():
    with open(PIPELINE) as f:
        src = f.read()
    line = "import global_buffer.multiprocessing as multiprocessing"
    code = src.split('"""', 2)[2]  # after the module docstring
    assert code.count(line) == 1
    assert "global_buffer" not in code.replace(line, ""), "gb used beyond the import line"
    assert "\n    import multiprocessing\n" in code


def test_stdlib_run_is_sane(stdlib_result):
    r = stdlib_result
    assert r["images"] == r["processed"] == 24
    assert 1 <= r["workers_reporting"] <= 3
    assert r["thumbnails"] == [24, 64, 64]


@pytest.mark.parametrize("how", ["flag", "env-spawn"])
def test_gb_run_gives_the_same_results(stdlib_result, how):
    if how == "flag":
        result, err = _run("--gb")
    else:
        result, err = _run("--start", "spawn", env={"GB_PIPELINE": "1"})
    assert err.startswith("global_buffer.multiprocessing:"), err
    # workers_reporting depends on scheduling (which worker got tasks)
    result.pop("workers_reporting")
    expected = dict(stdlib_result)
    expected.pop("workers_reporting")
    assert result == expected
