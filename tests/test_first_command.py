"""README's first command, run as a new user runs it (SPEC §8), and the
ImportError an unbuilt source tree gives.

``test_first_command`` copies the checkout (the files git tracks or would
add) into a fresh directory, makes a fresh virtual environment there and
runs the first ```bash block of README.md verbatim, from that directory:
``python -m`` then imports the copy's ``global_buffer/``, which works only
because the build leaves the compiled core there too (setup.py).  It needs a C compiler and the
package index pip is configured with; it takes a minute or two (``slow``).
``GB_FIRST_COMMAND_PYTHON=/path/to/python3.X`` runs it on another interpreter.
"""
import importlib.machinery
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMMAND_TIMEOUT = 600  # seconds for install + demo; the build alone takes 1-2 minutes
SHM = Path("/dev/shm")
# the demo's segments (demo-<pid>, demo-<pid>-ring) and out-of-line items (.b<pid>.<n>)
DEMO_SEGMENT = re.compile(r"^gb\.demo-(\d+)")
BLOB_SEGMENT = re.compile(r"\.b(\d+)\.\d+$")
# what a copy of the checkout leaves out when git cannot list the tracked files
BUILD_ARTIFACTS = (".git", "build", "dist", ".tox", ".venv", "site", ".pytest_cache",
                   "__pycache__", "*.egg-info", "*.so", "*.pyd", "_core.c", "_core.html")


def readme_first_command():
    """The first ```bash block of README.md, as written."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"^```bash\n(.*?)^```", text, re.S | re.M)
    assert m, "README.md has no ```bash block"
    return m.group(1).strip()


def copy_checkout(dest):
    """Copy the checkout's files, as they are in the work tree, into ``dest``:
    those git tracks and new ones it does not ignore (so the copy holds the
    code the rest of the suite imports, not a half of it); without git, the
    whole tree minus build artifacts."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], cwd=ROOT, check=True,
                             capture_output=True, timeout=60).stdout
        files = [f for f in out.decode().split("\0") if f]
    except (OSError, subprocess.SubprocessError):
        files = []
    if not files:
        shutil.copytree(ROOT, dest, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(*BUILD_ARTIFACTS))
        return
    for f in files:
        src = ROOT / f
        if src.is_file():  # a tracked file deleted in the work tree is not copied
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)


def clean_env(**extra):
    """This environment without anything that would steer Python or the build
    (PYTHONPATH, GB_DEBUG, an active venv, ...); pip's own settings stay."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "GB_", "VIRTUAL_ENV", "CONDA", "__PYVENV"))
           and k != "BASH_ENV"}
    env.update(extra)
    return env


def shm_names():
    return set(os.listdir(SHM)) if SHM.is_dir() else set()


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dead_demo_segments(before):
    """New demo segments in /dev/shm whose maker is gone (the demo has exited)."""
    found = []
    for name in sorted(shm_names() - before):
        if not DEMO_SEGMENT.match(name):
            continue
        maker = BLOB_SEGMENT.search(name) or DEMO_SEGMENT.match(name)
        if not pid_alive(int(maker.group(1))):
            found.append(name)
    return found


def kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ---------------------------------------------------------------------------
# the ImportError of an unbuilt source tree
# ---------------------------------------------------------------------------

def _unbuilt_tree(dest):
    """A source tree (package, setup.py, pyproject.toml) with no compiled core."""
    shutil.copytree(ROOT / "global_buffer", dest / "global_buffer",
                    ignore=shutil.ignore_patterns(*BUILD_ARTIFACTS))
    for f in ("setup.py", "pyproject.toml"):
        shutil.copy2(ROOT / f, dest / f)
    return dest


def _import_error(cwd, pythonpath=None):
    # -S: no site-packages, so no installed or editable global_buffer either,
    # unless PYTHONPATH names one
    env = clean_env(**({"PYTHONPATH": str(pythonpath)} if pythonpath else {}))
    r = subprocess.run([sys.executable, "-S", "-c", "import global_buffer"], cwd=cwd,
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0, "an unbuilt source tree imported without error"
    return r.stderr.strip().splitlines()[-1]


def test_unbuilt_tree_import_error_says_what_happened():
    with tempfile.TemporaryDirectory(prefix="gb-unbuilt-") as tmp:
        src = _unbuilt_tree(Path(tmp).resolve() / "clone")
        pkg = src / "global_buffer"
        suffix = importlib.machinery.EXTENSION_SUFFIXES[0]

        msg = _import_error(src)
        assert msg.startswith("ImportError: global_buffer was imported from the source "
                              f"tree at {pkg}, whose compiled core is not built"), msg
        assert f"no _core{suffix} there" in msg, msg
        assert f"`pip install -e .` in {src}" in msg, msg
        assert "no other copy of global_buffer is on sys.path" in msg, msg
        assert "is not built. Install the package with `pip install" not in msg  # the old text

        # an installed copy further down sys.path is named as the way out
        site = Path(tmp).resolve() / "site"
        (site / "global_buffer").mkdir(parents=True)
        (site / "global_buffer" / "__init__.py").write_text("")
        (site / "global_buffer" / f"_core{suffix}").write_bytes(b"")
        msg = _import_error(src, pythonpath=site)
        assert f"imported from the source tree at {pkg}" in msg, msg
        assert (f"run Python from outside {src} to use the installed copy at "
                f"{site / 'global_buffer'}.") in msg, msg


# ---------------------------------------------------------------------------
# README's first command, verbatim, in a fresh copy and a fresh venv
# ---------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(COMMAND_TIMEOUT + 300)
@pytest.mark.skipif(sys.platform == "win32" or shutil.which("bash") is None,
                    reason="README's commands are for a POSIX shell")
def test_first_command():
    command = readme_first_command()
    assert "python -m global_buffer demo" in command  # README opens with the demo (SPEC §8)
    base = (os.environ.get("GB_FIRST_COMMAND_PYTHON")
            or getattr(sys, "_base_executable", None) or sys.executable)
    tmp = Path(tempfile.mkdtemp(prefix="gb-first-command-")).resolve()
    before = shm_names()
    proc = None
    try:
        clone = tmp / "clone"
        clone.mkdir()
        copy_checkout(clone)
        venv = tmp / "venv"
        subprocess.run([base, "-m", "venv", str(venv)], check=True, env=clean_env(),
                       capture_output=True, timeout=300)
        env = clean_env(VIRTUAL_ENV=str(venv),
                        PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
        # a session of its own, so a timeout kills pip, the demo and its children
        proc = subprocess.Popen(["bash", "-c", command], cwd=clone, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=COMMAND_TIMEOUT)
        except subprocess.TimeoutExpired:
            kill_group(proc.pid)
            out, _ = proc.communicate()
            pytest.fail(f"{command!r} did not finish within {COMMAND_TIMEOUT} s; its "
                        "output ended with:\n" + out.decode(errors="replace")[-4000:])
        text = out.decode(errors="replace")
        assert proc.returncode == 0, (f"{command!r} exited with {proc.returncode}; its "
                                      f"output ended with:\n{text[-4000:]}")
        last = text.strip().splitlines()[-1]
        assert last.startswith("ring check:") and "none lost, none duplicated" in last \
            and last.endswith("OK"), f"the demo's last line: {last!r}"
        left = dead_demo_segments(before)
        assert not left, f"the demo left segments in {SHM}: {left}"
    finally:
        if proc is not None:
            kill_group(proc.pid)  # stragglers of the demo, if any
            proc.wait()
        for name in dead_demo_segments(before):
            try:
                os.unlink(SHM / name)
            except OSError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)
