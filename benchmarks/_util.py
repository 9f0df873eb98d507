"""Shared helpers: run a peer in its own subprocess, medians, tables, --json.

A peer is a module-level function ``benchmarks.<mod>.<fn>(**kwargs)`` that
returns something JSON-serialisable.  :func:`run_peer` runs it in a fresh
interpreter (so one peer's heap, threads and page cache state never colour
another's), optionally with another build of ``global_buffer`` first on
``sys.path``.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

__all__ = ["ROOT", "run_peer", "median", "per_call_ns", "fmt_ns", "fmt_ratio",
           "print_table", "machine", "parser", "finish", "percentile"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MARK = "@@BENCH-RESULT@@"


def run_peer(module, fn, timeout=900, gb_path=None, **kwargs):
    """Run ``benchmarks.<module>.<fn>(**kwargs)`` in a new interpreter and
    return its result.  ``gb_path``: a directory whose ``global_buffer``
    package shadows the installed one (used for the no-wait build)."""
    paths = [ROOT] if gb_path is None else [gb_path, ROOT]
    code = (
        "import sys, json\n"
        f"sys.path[:0] = {paths!r}\n"
        f"from benchmarks.{module} import {fn} as f\n"
        "r = f(**json.loads(sys.argv[1]))\n"
        f"print({_MARK!r} + json.dumps(r), flush=True)\n"
    )
    cwd = gb_path or ROOT
    for attempt in range(3):
        # a retry, because on a shared machine a concurrent test run's /dev/shm
        # leak check may unlink our segment under us (BufferNotFound)
        p = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], cwd=cwd,
                           stdout=subprocess.PIPE, text=True, timeout=timeout)
        for line in reversed(p.stdout.splitlines()):
            if line.startswith(_MARK):
                return json.loads(line[len(_MARK):])
        print(f"  (peer {module}.{fn} failed with exit {p.returncode}; "
              f"{'retrying' if attempt < 2 else 'giving up'})", file=sys.stderr, flush=True)
    raise RuntimeError(f"peer {module}.{fn}({kwargs}) failed (exit {p.returncode}):\n"
                       f"{p.stdout[-2000:]}")


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


def print_table(title, headers, rows, note=None):
    """Print a GitHub-markdown table (readable on a terminal too)."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    print(f"\n### {title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        print("| " + " | ".join(c.rjust(w) if i else c.ljust(w)
                                for i, (c, w) in enumerate(zip(r, widths))) + " |")
    if note:
        print(f"\n{note}")
    sys.stdout.flush()


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine():
    """A description of the machine for the docs and --json."""
    import numpy
    info = {
        "cpu": _cpu_model(),
        "machine": platform.machine(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
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


def print_machine(info):
    print(f"machine: {info['cpu']} ({info.get('cpus_logical')} logical CPUs, "
          f"{info.get('memory_gib', '?')} GiB{', VM' if info.get('virtualised') else ''}), "
          f"{info['os']}")
    print(f"python {info['python']}, numpy {info['numpy']}, "
          f"load average at start {info['loadavg_at_start']}")


def parser(description):
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help="fewer repeats, shorter runs")
    ap.add_argument("--json", metavar="PATH", help="also write all results as JSON here")
    return ap


def finish(args, name, results, info):
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": name, "machine": info, "quick": args.quick,
                       "results": results}, f, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(machine(), indent=2))
