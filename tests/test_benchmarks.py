"""The benchmark suite runs: ``python -m benchmarks --smoke`` with ``--json``
and ``--plots``, real processes, tiny counts (its figures are not checked,
only that every benchmark produced them, in the documented shape).

``benchmarks/`` is not part of the installed package: it is found in this
checkout, after the installed ``global_buffer`` on ``sys.path``.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import global_buffer as gb

ROOT = Path(__file__).resolve().parent.parent
# the installed global_buffer first, then this checkout for `benchmarks`
_PKG_PARENT = str(Path(gb.__file__).resolve().parent.parent)
BENCHMARKS = ["streams", "rings", "sweep", "wake", "zero_copy", "pipe", "pool", "clients",
              "dataloader", "bridge"]
# benchmarks whose peers need an optional package: (benchmark, module)
OPTIONAL = {"dataloader": "torch", "bridge": "zenoh", "zero_copy": "iceoryx2"}
# peers installed by the dev extra (faster-fifo is in the bench extra only)
SWEEP_PEERS = ["gb.Ring", "mp.Queue", "mp.Pipe", "pyzmq"]
LATENCY_PEERS = ["gb (futex)", "gb (poll)", "mp.Queue", "mp.Pipe", "pyzmq"]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PKG_PARENT, str(ROOT),
                                                      env.get("PYTHONPATH")]))
    env.pop("PYTHONWARNINGS", None)
    return env


def run_suite(*args, cwd, timeout=300):
    # cwd elsewhere than the checkout: its global_buffer/ must not shadow the
    # installed one
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.fixture
def benchmarks_path(monkeypatch):
    """``benchmarks`` importable in this process, after the installed package."""
    monkeypatch.setattr(sys, "path", sys.path + [str(ROOT)])
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "1")  # what the suite would set, restored after


@pytest.mark.timeout(360)
def test_smoke_run_writes_json_tables_and_plots(tmp_path):
    out, img = tmp_path / "results.json", tmp_path / "img"
    p = run_suite("--smoke", "--json", str(out), "--plots", str(img), cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]

    data = json.loads(out.read_text())
    assert data["level"] == "smoke" and data["errors"] == {}
    assert data["command"].startswith("python -m benchmarks --smoke")
    m = data["machine"]
    for key in ("cpu", "kernel", "python", "numpy", "cpus_logical", "loadavg_at_start",
                "loadavg_at_end", "versions", "global_buffer_build"):
        assert m[key], key
    assert Path(m["global_buffer_build"]["core"]).parent == Path(gb._core.__file__).parent
    assert data["method"] and all(isinstance(x, str) for x in data["method"])

    assert list(data["benchmarks"]) == BENCHMARKS
    for name, res in data["benchmarks"].items():
        assert res["tables"], name
        for t in res["tables"]:
            assert t["rows"] and all(len(r) == len(t["headers"]) for r in t["rows"])
        if name in OPTIONAL and importlib.util.find_spec(OPTIONAL[name]) is None:
            continue  # a 'not installed' table, no figures
        if res["results"].get("unavailable"):
            continue  # bridge: no simulated hosts here (not root)
        assert res["summary"], name  # every benchmark has a row against the stdlib
    for row in data["summary"]:
        assert row["gb"] > 0 and row["stdlib"] > 0 and row["advantage"] > 0, row

    sweep = data["benchmarks"]["sweep"]["results"]
    assert sweep["sizes"] == [64, 256 * 1024]
    for peer in SWEEP_PEERS:
        d = sweep["peers"][peer]
        assert d["installed"], peer
        assert [pt["size"] for pt in d["points"]] == sweep["sizes"]
        assert all(pt["items_per_s"] > 0 and pt["mb_per_s"] > 0 for pt in d["points"]), peer
    ff = sweep["peers"]["faster-fifo"]
    assert not ff["installed"] or all(pt["items_per_s"] > 0 for pt in ff["points"])

    lat = data["benchmarks"]["wake"]["results"]["latency"]
    for peer in LATENCY_PEERS:
        assert lat["installed"][peer], peer
        xs = lat["samples_ns"][peer]
        assert len(xs) >= 100 and xs == sorted(xs) and xs[0] > 0, peer
    if lat["installed"]["faster-fifo"]:
        xs = lat["samples_ns"]["faster-fifo"]
        assert len(xs) >= 100 and xs[0] > 0
    (lat_table,) = [t for t in data["benchmarks"]["wake"]["tables"]
                    if t["title"].startswith("One-way wake latency")]
    assert [r[0] for r in lat_table["rows"]] == list(lat["installed"])

    for stem in ("throughput", "latency_cdf"):
        assert (img / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        svg = (img / f"{stem}.svg").read_text()
        assert "<svg" in svg and "</svg>" in svg
    assert sorted(Path(x).name for x in data["plots"]) == [
        "latency_cdf.png", "latency_cdf.svg", "throughput.png", "throughput.svg"]

    # the markdown report on stdout
    assert "## Summary" in p.stdout and "| benchmark" in p.stdout
    assert "gb advantage" in p.stdout and "load average at start" in p.stdout


def test_unknown_benchmark_is_a_usage_error(tmp_path):
    p = run_suite("--only", "streams,nope", "--no-plots", cwd=tmp_path, timeout=60)
    assert p.returncode == 2
    assert "unknown benchmark(s) nope" in p.stderr


@pytest.mark.timeout(60)
def test_missing_peer_is_a_not_installed_row(benchmarks_path, monkeypatch, tmp_path):
    from benchmarks import plots, rings, sweep
    real = rings.installed
    monkeypatch.setattr(rings, "installed", lambda mod: mod != "zmq" and real(mod))
    out = sweep.suite("smoke", peers=["gb", "zmq"])
    assert out["results"]["peers"]["pyzmq"] == {"installed": False}
    (rows,) = [t["rows"] for t in out["tables"]]
    # columns: payload, gb, pyzmq, gb MB/s, vs. pyzmq, copy bound, gb of bound
    assert all(r[2] == "not installed" and r[-3] == "not installed" for r in rows)
    assert all(r[-2] != "-" and r[-1].endswith("%") for r in rows)
    assert all(pt["items_per_s"] > 0 for pt in out["results"]["peers"]["gb.Ring"]["points"])
    paths = plots.throughput(out["results"], "test", str(tmp_path))
    assert all(os.path.getsize(x) > 0 for x in paths)


@pytest.mark.timeout(90)
def test_missing_wake_peers_are_not_installed_rows(benchmarks_path, monkeypatch, tmp_path):
    from benchmarks import plots, rings, wake
    real = rings.installed
    monkeypatch.setattr(rings, "installed",
                        lambda mod: mod not in ("zmq", "faster_fifo") and real(mod))
    out = wake.suite("smoke")
    lat = out["results"]["latency"]
    assert lat["installed"] == {p: p not in ("faster-fifo", "pyzmq") for p in wake.PEERS}
    assert sorted(lat["samples_ns"]) == sorted(["gb (futex)", "gb (poll)", "mp.Queue",
                                                "mp.Pipe"])
    (rows,) = [t["rows"] for t in out["tables"]]
    by_peer = {r[0]: r[1:] for r in rows}
    assert list(by_peer) == list(wake.PEERS)
    for peer, cells in by_peer.items():
        absent = peer in ("faster-fifo", "pyzmq")
        assert all((c == "not installed") == absent for c in cells), (peer, cells)
    paths = plots.latency_cdf(out["results"], "test", str(tmp_path))
    assert all(os.path.getsize(x) > 0 for x in paths)


@pytest.mark.timeout(120)
def test_zero_copy_without_iceoryx2_is_a_not_installed_row(benchmarks_path, monkeypatch):
    from benchmarks import zero_copy
    real = zero_copy.installed
    monkeypatch.setattr(zero_copy, "installed", lambda mod: mod != "iceoryx2" and real(mod))
    out = zero_copy.suite("smoke")
    res = out["results"]
    assert res["installed"] == {k: k != "iceoryx2" for k, _ in zero_copy.ROWS}
    assert res["rows"]["iceoryx2"] == {"installed": False}
    for key in ("view", "get_into", "get", "stream_view"):
        assert res["rows"][key]["fps"] > 0, key
        assert res["rows"][key]["vs_iceoryx2"] is None, key
    (t,) = out["tables"]
    by_row = {r[0]: r[1:] for r in t["rows"]}
    assert all(c == "not installed" for c in by_row[zero_copy.LABELS["iceoryx2"]])
    assert by_row[zero_copy.LABELS["view"]][-2:] == ["not installed", "not installed"]
    assert out["summary"] == []  # no peer to hold gb against


def test_a_peer_that_overruns_its_timeout_is_killed_with_its_children():
    """benchmarks._util.run_peer: a peer past its timeout is killed with
    every process it forked (they hold its stdout: the harness used to
    wait for that pipe for good, the sweep's pyzmq hang), and says so."""
    import time

    import psutil
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks._util import run_peer
    finally:
        sys.path.remove(str(ROOT))
    tag = 987_654_321_123  # in the peer's argv, and so in its forked children's
    t = time.monotonic()
    with pytest.raises(RuntimeError, match="did not finish in 3 s; killed"):
        # an mp.Queue producer and consumer that would run for hours
        run_peer("rings", "worker", timeout=3, peer="mp", case_name=None, variant=None,
                 n=tag, payload=8, warm=2)
    assert time.monotonic() - t < 30
    left = [p for p in psutil.process_iter(["cmdline"])
            if str(tag) in " ".join(p.info["cmdline"] or [])]
    assert not left, left
