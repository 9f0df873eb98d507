"""Static checks (issue 14 item 6), run by the suite so that README's test
command and `.ci/run` cover them:

- ``ruff check`` over the checkout (rules in pyproject.toml, [tool.ruff]);
- ``mypy`` over the package (pyproject.toml, [tool.mypy]);
- ``python -m mypy.stubtest global_buffer._core``: the stub
  global_buffer/_core.pyi against the compiled module this interpreter
  imports (the built copy in the checkout, or the installed one under tox).

Each runs as a subprocess and fails on any finding.  A tool that is not
installed skips its test, saying so (fails under ``GB_REQUIRE_TOOLS=1``,
which `.ci/run` sets); the dev extra installs all of them.
mypy and stubtest analyse numpy's and pydantic's stubs from scratch (stubtest
cannot use mypy's cache): ~1 minute each, so they are marked slow.
"""
import importlib.util
import os
import site
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
ALLOWLIST = Path(__file__).resolve().parent / "stubtest_allowlist.txt"


def _need(module):
    if importlib.util.find_spec(module) is None:
        why = f"{module} is not installed (pip install -e '.[dev]' installs it)"
        if os.environ.get("GB_REQUIRE_TOOLS"):  # .ci/run: CI runs every check
            pytest.fail(why)
        pytest.skip(why)
    if not (PYPROJECT.is_file() and (ROOT / "global_buffer").is_dir()):
        pytest.skip(f"no source tree at {ROOT} (the checks read it)")


def _run(args, cwd, timeout, env=None):
    try:
        p = subprocess.run([sys.executable, "-m", *args], cwd=str(cwd), env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{args[0]} did not finish within {timeout} s:\n{e.output or ''}")
    return p.returncode, p.stdout


def test_ruff():
    _need("ruff")
    rc, out = _run(["ruff", "check", "--no-cache", "--output-format", "concise", "."],
                   ROOT, 300)
    assert rc == 0, f"ruff check found problems (rules: pyproject.toml [tool.ruff]):\n{out}"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_mypy():
    _need("mypy")
    # a cache per user outside the checkout (mypy keys it by Python version)
    cache = Path(tempfile.gettempdir()) / f"global_buffer-mypy-{os.getuid()}"
    rc, out = _run(["mypy", "--config-file", str(PYPROJECT), "--cache-dir", str(cache),
                    "--no-error-summary"], ROOT, 840)
    assert rc == 0, f"mypy found problems (settings: pyproject.toml [tool.mypy]):\n{out}"


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_stub_matches_the_compiled_module(tmp_path):
    """stubtest imports ``global_buffer._core`` as this test process does and
    compares every name, signature and class of it with _core.pyi."""
    _need("mypy")
    import global_buffer

    parent = Path(global_buffer.__file__).resolve().parent.parent
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    # mypy finds an installed package by itself (and refuses site-packages
    # on MYPYPATH); an editable install's import hook it cannot follow
    sites = {Path(p).resolve() for p in site.getsitepackages() + [site.getusersitepackages()]}
    if parent not in sites:
        env["MYPYPATH"] = str(parent)
        env["PYTHONPATH"] = str(parent)
    # run from an empty directory: `python -m` puts the cwd first on sys.path
    rc, out = _run(["mypy.stubtest", "--mypy-config-file", str(PYPROJECT),
                    "--allowlist", str(ALLOWLIST), "global_buffer._core"], tmp_path, 1440, env)
    assert rc == 0, ("global_buffer/_core.pyi does not match the compiled module "
                     f"{global_buffer._core.__file__}:\n{out}")
