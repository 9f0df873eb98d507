"""Shared helpers: run a peer in its own subprocess, medians, tables, --json.

A peer is a module-level function ``benchmarks.<mod>.<fn>(**kwargs)`` that
returns something JSON-serialisable.  :func:`run_peer` runs it in a fresh
interpreter (so one peer's heap, threads and page cache state never colour
another's), optionally with another build of ``global_buffer`` first on
``sys.path``.

Every benchmark module also has ``suite(level, **options)`` for
``python -m benchmarks``: ``level`` is one of :data:`LEVELS` and the result a
dict with ``results`` (JSON-serialisable), ``tables`` (:func:`table` dicts,
printed in order) and ``summary`` (:func:`summary_row` dicts: gb against the
stdlib, for the suite's headline table).
"""
import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time

__all__ = ["ROOT", "LEVELS", "NOT_INSTALLED", "run_peer", "median", "per_call_ns", "fmt_ns",
           "fmt_ratio", "fmt_load", "table", "format_table", "print_table", "summary_row",
           "installed", "machine", "machine_lines", "build_info", "print_machine", "parser",
           "ab_parser", "ab_runs", "level", "main_suite", "finish", "percentile"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MARK = "@@BENCH-RESULT@@"
# smoke: tiny counts, checks that everything runs (figures meaningless);
# quick: fewer repeats and shorter runs; full: what docs/benchmarks.md quotes
LEVELS = ("smoke", "quick", "full")
NOT_INSTALLED = "not installed"


def run_peer(module, fn, timeout=900, gb_path=None, **kwargs):
    """Run ``benchmarks.<module>.<fn>(**kwargs)`` in a new interpreter and
    return its result.  ``gb_path``: a directory whose ``global_buffer``
    package shadows the installed one (used for the no-wait build)."""
    # `python -c` puts the working directory (the checkout) first on sys.path,
    # which would shadow an installed global_buffer with the checkout's
    # (perhaps unbuilt) source: drop it, and find `benchmarks` after
    # site-packages.  gb_path, when given, must shadow: it goes first.
    code = (
        "import sys, json\n"
        "if sys.path and sys.path[0] == '':\n"
        "    del sys.path[0]\n"
        f"sys.path[:0] = {[gb_path] if gb_path else []!r}\n"
        f"sys.path.append({ROOT!r})\n"
        f"from benchmarks.{module} import {fn} as f\n"
        "r = f(**json.loads(sys.argv[1]))\n"
        f"print({_MARK!r} + json.dumps(r), flush=True)\n"
    )
    cwd = gb_path or ROOT
    for attempt in range(3):
        # a retry, because on a shared machine a concurrent test run's /dev/shm
        # leak check may unlink our segment under us (BufferNotFound).
        # The peer runs in its own session, so that a timeout kills the peer's children too:
        # they hold its stdout, and subprocess.run's own timeout then waited
        # for that pipe for good (the sweep's pyzmq hang, whose consumer
        # outlived the killed peer)
        p = subprocess.Popen([sys.executable, "-c", code, json.dumps(kwargs)], cwd=cwd,
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            raise RuntimeError(f"peer {module}.{fn}({kwargs}) did not finish in {timeout} s; "
                               "killed with its children") from None
        for line in reversed(out.splitlines()):
            if line.startswith(_MARK):
                return json.loads(line[len(_MARK):])
        print(f"  (peer {module}.{fn} failed with exit {p.returncode}; "
              f"{'retrying' if attempt < 2 else 'giving up'})", file=sys.stderr, flush=True)
    raise RuntimeError(f"peer {module}.{fn}({kwargs}) failed (exit {p.returncode}):\n"
                       f"{out[-2000:]}")


def median(xs):
    return statistics.median(xs)


def percentile(xs, q):
    """q-th percentile (0..100) by linear interpolation of sorted data."""
    s = sorted(xs)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def per_call_ns(fn, number, repeats, warmup=1):
    """Median over ``repeats`` of the mean ns per call of ``number`` calls."""
    clock = time.perf_counter_ns
    for _ in range(warmup):
        for _ in range(number):
            fn()
    out = []
    for _ in range(repeats):
        t0 = clock()
        for _ in range(number):
            fn()
        out.append((clock() - t0) / number)
    return median(out)


def fmt_ns(ns):
    if ns is None:
        return "-"
    if ns < 1e3:
        return f"{ns:.0f} ns"
    if ns < 1e6:
        return f"{ns / 1e3:.2f} us"
    if ns < 1e9:
        return f"{ns / 1e6:.2f} ms"
    return f"{ns / 1e9:.2f} s"


def fmt_ratio(x):
    if x is None or x != x:
        return "-"
    if x >= 100:
        return f"{x:.0f}x"
    if x >= 10:
        return f"{x:.1f}x"
    return f"{x:.2f}x"


def table(title, headers, rows, note=None):
    """A table as data: printed by :func:`print_table`, kept in --json."""
    return {"title": title, "headers": list(headers),
            "rows": [[str(c) for c in r] for r in rows], "note": note}


def format_table(t):
    """A :func:`table` as GitHub markdown (readable on a terminal too)."""
    headers, cells = t["headers"], [[str(c) for c in r] for r in t["rows"]]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    lines = [f"### {t['title']}", "",
             "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.rjust(w) if i else c.ljust(w)
                                for i, (c, w) in enumerate(zip(r, widths))) + " |"
              for r in cells]
    if t.get("note"):
        lines += ["", t["note"]]
    return "\n".join(lines)


def print_table(title, headers, rows, note=None):
    """Print a GitHub-markdown table."""
    print("\n" + format_table(table(title, headers, rows, note)), flush=True)


def summary_row(benchmark, case, unit, gb, stdlib, stdlib_peer, *, higher_is_better=True,
                advantage=None, gb_peer="gb"):
    """One row of the suite's headline table: a gb figure next to the
    stdlib's.  ``advantage`` is how many times better gb is (> 1: gb
    better, whichever way the unit points); by default the ratio of the two
    figures, a benchmark passes its own when it pairs rounds."""
    if advantage is None and gb and stdlib:
        advantage = gb / stdlib if higher_is_better else stdlib / gb
    return {"benchmark": benchmark, "case": case, "unit": unit, "gb_peer": gb_peer,
            "gb": gb, "stdlib_peer": stdlib_peer, "stdlib": stdlib,
            "higher_is_better": higher_is_better, "advantage": advantage}


def installed(module):
    """True if ``module`` (an optional peer such as faster_fifo) imports."""
    return importlib.util.find_spec(module) is not None


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# distributions whose versions a result depends on (peers included)
_VERSIONS = ("global_buffer", "numpy", "msgspec", "pydantic", "cloudpickle", "faster-fifo",
             "pyzmq", "psutil", "matplotlib")


def _versions():
    out = {}
    for dist in _VERSIONS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def machine():
    """A description of the machine for the docs and --json."""
    import numpy
    versions = _versions()
    if installed("zmq"):
        import zmq
        versions["libzmq"] = zmq.zmq_version()  # pyzmq's wheels bundle their own
    info = {
        "cpu": _cpu_model(),
        "machine": platform.machine(),
        "os": platform.platform(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "numpy": numpy.__version__,
        "versions": versions,
        "loadavg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    try:
        import psutil
        info["cpus_logical"] = psutil.cpu_count()
        info["cpus_physical"] = psutil.cpu_count(logical=False)
        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        info["cpus_logical"] = os.cpu_count()
    try:
        with open("/proc/cpuinfo") as f:
            info["virtualised"] = " hypervisor" in f.read()
    except OSError:
        pass
    return info


def build_info():
    """Which global_buffer the peers import (a peer: run it with run_peer)."""
    import global_buffer
    from global_buffer import _core
    return {"version": getattr(global_buffer, "__version__", None), "core": _core.__file__}


def print_machine(info):
    for line in machine_lines(info):
        print(line)


def machine_lines(info):
    """The machine in two lines of text."""
    return [f"machine: {info['cpu']} ({info.get('cpus_logical')} logical / "
            f"{info.get('cpus_physical') or '?'} physical CPUs, "
            f"{info.get('memory_gib', '?')} GiB{', VM' if info.get('virtualised') else ''}), "
            f"{info.get('kernel', info['os'])}",
            f"python {info['python']}, numpy {info['numpy']}, "
            f"load average at start {fmt_load(info['loadavg_at_start'])}"]


def fmt_load(avg):
    return "-" if avg is None else " / ".join(f"{x:.2f}" for x in avg)


def parser(description):
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help="fewer repeats, shorter runs")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny counts: checks that it runs (figures meaningless)")
    ap.add_argument("--json", metavar="PATH", help="also write all results as JSON here")
    return ap


def ab_parser(description, batch):
    """The options of a gb-against-stdlib module (pipe, pool): rounds of
    alternating peer runs, timed ``batch``es per run, the start method."""
    ap = parser(description)
    ap.add_argument("--rounds", type=int, default=3,
                    help="peer runs per kind, gb and stdlib alternating; default 3")
    ap.add_argument("--repeats", type=int, default=None,
                    help=f"timed {batch} per run (default 5, --quick 2)")
    ap.add_argument("--start", default="fork", choices=["fork", "spawn", "forkserver"])
    return ap


def ab_runs(module, rounds, **kwargs):
    """Run ``benchmarks.<module>.peer(kind, **kwargs)`` for the stdlib
    (``"mp"``) and gb, alternating, ``rounds`` times; each run returns the
    seconds of its timed batches.  Returns (runs, median over every batch)."""
    runs = {"mp": [], "gb": []}
    for _ in range(rounds):
        for kind in runs:
            runs[kind].append(run_peer(module, "peer", kind=kind, **kwargs))
    return runs, {k: median([t for r in v for t in r]) for k, v in runs.items()}


def level(args):
    """The level (see :data:`LEVELS`) that --smoke / --quick ask for."""
    return "smoke" if args.smoke else "quick" if args.quick else "full"


def main_suite(args, name, run):
    """The body of each module's ``main()`` once its options are parsed:
    print the machine, run ``run(level)`` (the module's ``suite``), print its
    tables and honour --json.  Returns the suite's output."""
    info = machine()
    print_machine(info)
    out = run(level(args))
    for t in out["tables"]:
        print("\n" + format_table(t), flush=True)
    info["loadavg_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    finish(args, name, out["results"], info)
    return out


def finish(args, name, results, info):
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": name, "machine": info, "level": level(args),
                       "quick": args.quick, "results": results}, f, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(machine(), indent=2))
