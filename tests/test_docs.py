"""The documentation site builds strictly, and its API reference covers every
public name (SPEC §8, issue 6).

``mkdocs build --strict`` fails on any warning: a broken link or anchor, a
page missing from the nav, a reference mkdocstrings cannot resolve.  The
tools come with the ``dev`` extra, so this test runs (and can fail) wherever
the test suite does; there is no skip for a missing mkdocs.  The examples
of the pages run in tests/test_readme.py.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import global_buffer as gb

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
API_PAGES = sorted((DOCS / "api").glob("*.md"))
_DIRECTIVE = re.compile(r"^::: (global_buffer(?:\.[\w.]+)?)\s*$", re.M)


def _directives():
    return {m.group(1) for p in API_PAGES for m in _DIRECTIVE.finditer(p.read_text("utf-8"))}


def test_api_reference_names_every_public_name():
    """Each name of ``gb.__all__`` and the drop-in module has an entry."""
    documented = _directives()
    missing = [n for n in gb.__all__ if f"global_buffer.{n}" not in documented]
    assert not missing, f"no ::: global_buffer.<name> entry in docs/api/ for {missing}"
    assert "global_buffer.multiprocessing" in documented


@pytest.mark.timeout(300)
def test_mkdocs_build_strict(tmp_path):
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    p = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict",
         "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
        stdin=subprocess.DEVNULL)
    out = p.stdout + p.stderr
    assert p.returncode == 0, f"mkdocs build --strict failed (exit {p.returncode}):\n{out}"
    assert "WARNING" not in out, out
    for page in ("index.html", "quickstart/index.html", "concepts/index.html",
                 "migration/index.html", "design/index.html", "benchmarks/index.html",
                 "platforms/index.html", "faq/index.html", "api/index.html"):
        assert (site / page).is_file(), f"{page} was not built"
    # every public name is rendered (an anchor per object), not just named
    rendered = "".join(p.read_text("utf-8") for p in (site / "api").rglob("*.html"))
    missing = [n for n in gb.__all__ if f'id="global_buffer.{n}"' not in rendered]
    assert not missing, f"API reference renders no entry for {missing}"


def test_index_opens_with_readmes_two_commands():
    """docs/index.md gives the same two commands as README.md."""
    bash = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)
    readme = bash.findall((ROOT / "README.md").read_text("utf-8"))[:2]
    index = bash.findall((DOCS / "index.md").read_text("utf-8"))[:2]
    assert len(readme) == 2 and index == readme


def test_docs_tools_declared_once():
    """The ``docs`` extra is what ``tox -e docs`` installs, and ``dev``
    includes it (so this module's build runs wherever the tests do)."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        pytest.skip("tomllib needs Python 3.11")
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    extras = meta["project"]["optional-dependencies"]
    assert "global_buffer[docs]" in extras["dev"]
    tox = (ROOT / "tox.ini").read_text("utf-8")
    section = tox[tox.index("[testenv:docs]"):]
    deps = re.search(r"^deps =\n((?:[ \t]+\S.*\n)+)", section, re.M)
    assert deps, "[testenv:docs] has no deps"
    assert sorted(d.strip() for d in deps.group(1).splitlines()) == sorted(extras["docs"])
