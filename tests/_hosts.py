"""Simulated hosts for the across-hosts tests (SPEC §9).

A ``Host`` is a process tree in its own mount namespace with a private
``/dev/shm`` (``unshare -m`` + a tmpfs), so two hosts on one machine share
no segment: the only way between them is a bridge's Zenoh link over
loopback TCP.  Every process of a host is started with ``nsenter`` into the
namespace of the host's holder process; ``close()`` kills them all (and the
holder, which takes the tmpfs with it).  Needs root (CI runs as root); use
``hosts_available()`` to skip with the reason elsewhere.
"""
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time

PY = sys.executable
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def hosts_available():
    """None if simulated hosts can be made here, else the reason why not."""
    if not sys.platform.startswith("linux"):
        return "simulated hosts need Linux mount namespaces"
    for tool in ("unshare", "nsenter"):
        if not any(os.access(os.path.join(d, tool), os.X_OK)
                   for d in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)):
            return f"{tool} (util-linux) is not installed"
    try:
        r = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /dev/shm"],
                           capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unshare failed: {e}"
    if r.returncode != 0:
        return ("cannot make a mount namespace with a private /dev/shm (needs root or "
                f"CAP_SYS_ADMIN): {r.stderr.decode(errors='replace').strip()}")
    return None


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Host:
    """One simulated host.  ``spawn``/``run`` start Python in it."""

    def __init__(self, name, shm_size="2g"):
        self.name = name
        self.procs = []
        self.holder = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c",
             f"mount -t tmpfs -o size={shm_size} tmpfs /dev/shm && echo ready && "
             "exec sleep 3600"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        ready, _, _ = select.select([self.holder.stdout], [], [], 10)
        line = self.holder.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            err = self.holder.stderr.read1(4096) if ready else b"timeout"
            self.close()
            raise RuntimeError(f"host {name}: namespace setup failed: {err!r}")

    def _argv(self, argv):
        return ["nsenter", "-t", str(self.holder.pid), "-m", "--"] + list(argv)

    def spawn(self, argv, *, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=None):
        """Start ``argv`` in this host; killed by ``close()``."""
        e = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        p = subprocess.Popen(self._argv(argv), stdout=stdout, stderr=stderr, cwd=ROOT,
                             env=e, start_new_session=True)
        self.procs.append(p)
        return p

    def python(self, code, *args, **kw):
        """Start ``python -c code args...`` in this host."""
        return self.spawn([PY, "-c", code, *map(str, args)], **kw)

    def run(self, code, *args, timeout=60):
        """Run ``python -c code`` in this host to the end; return its stdout
        (str).  Fails with its output if it exits non-zero or times out."""
        p = self.python(code, *args, stderr=subprocess.PIPE)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill(p)
            out, err = p.communicate(timeout=10)
            raise AssertionError(f"host {self.name}: timed out after {timeout} s:\n"
                                 f"{out.decode(errors='replace')}\n"
                                 f"{err.decode(errors='replace')}") from None
        if p.returncode != 0:
            raise AssertionError(f"host {self.name}: exit {p.returncode}:\n"
                                 f"{out.decode(errors='replace')}\n"
                                 f"{err.decode(errors='replace')}")
        return out.decode()

    def bridge(self, listen=(), connect=(), exports=(), imports=(), stats=None, extra=(),
               log=None):
        """Start ``python -m global_buffer bridge`` in this host (its output
        appended to the file ``log`` if given, else piped)."""
        argv = [PY, "-m", "global_buffer", "bridge", "-v"]
        for flag, vals in (("--listen", listen), ("--connect", connect),
                           ("--export", exports), ("--import", imports)):
            for v in vals:
                argv += [flag, v]
        if stats:
            argv += ["--stats", stats]
        if log is None:
            return self.spawn(argv + list(extra))
        with open(log, "ab") as f:
            p = self.spawn(argv + list(extra), stdout=f)
        p.log = log
        return p

    def shm(self):
        """Names in this host's /dev/shm."""
        return self.run("import os; print('\\n'.join(sorted(os.listdir('/dev/shm'))))",
                        timeout=30).split()

    def close(self):
        for p in self.procs:
            kill(p)
        self.procs = []
        kill(self.holder)


def kill(p, sig=signal.SIGKILL):
    """Kill ``p``'s whole process group and reap it (bounded)."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(10)
    for f in (p.stdout, p.stderr):
        if f is not None:
            f.close()


def stop(p, timeout=10):
    """SIGTERM ``p`` and wait; return its exit code and output (str)."""
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(p)
        raise AssertionError(f"process {p.args} ignored SIGTERM for {timeout} s") from None
    if getattr(p, "log", None):
        with open(p.log, "rb") as f:
            out = f.read()
    return p.returncode, (out or b"").decode(errors="replace")


def read_stats(path, timeout=10, until=lambda s: True):
    """The JSON a bridge's ``--stats`` file holds once ``until(stats)``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                last = json.load(f)
            if until(last):
                return last
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"bridge stats {path} never satisfied the condition; last: {last}")
