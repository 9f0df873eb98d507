"""Every ```python block of README.md and of the docs (docs/**/*.md) runs,
as a script in its own process.

Segment names in the examples ("camera", ...) are made unique per run, so
the examples can run next to anything else, and removed afterwards.  The
README's two opening commands are checked against pyproject.toml and
.ci/run, so the instructions and CI cannot drift apart.
"""
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import global_buffer as gb

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
_PKG_PARENT = str(Path(gb.__file__).resolve().parent.parent)

pytestmark = pytest.mark.skipif(not README.is_file(), reason="README.md not in this tree")

_FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
_HEADING = re.compile(r"^#+\s+(.*)$", re.M)
_CREATED = re.compile(r"""gb\.create\(\s*(["'])([A-Za-z0-9._-]+)\1""")


def _blocks(lang, files=None):
    """(title, code) of each fenced block in ``lang``, titled by its heading
    (README.md by default)."""
    out = []
    for path in files if files is not None else [README]:
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        for m in _FENCE.finditer(text):
            if m.group(1) != lang:
                continue
            headings = _HEADING.findall(text, 0, m.start())
            title = headings[-1] if headings else "top"
            if path != README:
                title = f"{path.relative_to(ROOT / 'docs').with_suffix('')} {title}"
            out.append((title, m.group(2)))
    return out


def _slug(title, i):
    return f"{i}-" + re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


PY_BLOCKS = _blocks("python")
# every ```python block of the docs site runs too, one-liners included:
# a fragment that is not a whole program belongs in a ```text block
DOC_FILES = sorted((ROOT / "docs").rglob("*.md"))
DOC_BLOCKS = _blocks("python", DOC_FILES)


def test_readme_has_python_examples():
    assert len(PY_BLOCKS) >= 3


@pytest.mark.parametrize("code", [c for _, c in PY_BLOCKS + DOC_BLOCKS],
                         ids=[_slug(t, i) for i, (t, _) in enumerate(PY_BLOCKS + DOC_BLOCKS)])
def test_readme_example_runs(code, tmp_path):
    token = uuid.uuid4().hex[:8]
    names = {}
    for quote_name in _CREATED.finditer(code):
        name = quote_name.group(2)
        names[name] = f"readme-{name}-{os.getpid()}-{token}"
    for old, new in names.items():
        # every literal use of the name: create, attach, args=(...), ...
        code = re.sub(rf"""(["']){re.escape(old)}\1""", rf"\g<1>{new}\g<1>", code)
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PKG_PARENT, env.get("PYTHONPATH")]))
    try:
        p = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL)
    finally:
        for new in names.values():
            gb.unlink(new)
    report = (f"exit {p.returncode}\n--- code\n{code}\n"
              f"--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}")
    assert p.returncode == 0, report
    assert "Traceback" not in p.stderr, report
    assert "resource_tracker" not in p.stderr, report
    assert "Warning" not in p.stderr, report


def _two_commands():
    bash = [code.strip() for _, code in _blocks("bash")]
    assert len(bash) >= 2, "README must open with two shell commands"
    return bash[0], bash[1]


def test_readme_opens_with_the_two_commands():
    demo, tests = _two_commands()
    assert "pip install" in demo and "python -m global_buffer demo" in demo
    assert "pip install -e '.[dev]'" in tests and "python -m pytest" in tests
    # the two blocks come before the first section
    text = README.read_text(encoding="utf-8")
    assert text.index(demo) < text.index(tests) < text.index("\n## ")


def test_ci_runs_the_readme_commands():
    ci = ROOT / ".ci" / "run"
    if not ci.is_file():
        pytest.skip(".ci/run not in this tree")
    text = ci.read_text(encoding="utf-8")
    _, tests = _two_commands()
    install, _, test_cmd = tests.partition(" && ")
    assert install.strip() in text
    assert test_cmd.strip() in text, f"{test_cmd!r} is not what .ci/run runs"


def test_dev_extra_has_what_the_tests_use():
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        pytest.skip("tomllib needs Python 3.11")
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    dev = " ".join(meta["project"]["optional-dependencies"]["dev"])
    for tool in ("pytest", "pytest-timeout"):
        assert tool in dev
    requires = " ".join(meta["build-system"]["requires"])
    assert "Cython>=3" in requires and "numpy" in requires
