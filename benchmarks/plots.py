"""Plots for docs/benchmarks.md from the suite's results (matplotlib).

- ``throughput``: items/s and MB/s against payload size, log-log, one line
  per peer (``benchmarks.sweep``).
- ``latency_cdf``: cumulative distribution of one-way wake latency, one line
  per transport (``benchmarks.wake``).

Each is written as PNG and SVG.  The SVGs carry no date and a fixed hash
salt, so re-plotting the same results gives the same files.
"""
import os

__all__ = ["available", "throughput", "latency_cdf"]

# one colour and marker per peer, the same in every plot
STYLE = {
    "gb.Ring": ("tab:red", "o"), "gb (futex)": ("tab:red", "o"),
    "gb (poll)": ("tab:orange", "v"), "mp.Queue": ("tab:blue", "s"),
    "mp.Pipe": ("tab:green", "^"), "faster-fifo": ("tab:purple", "D"),
    "pyzmq": ("tab:brown", "P"),
}


def available():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    matplotlib.rcParams["svg.hashsalt"] = "global_buffer"
    import matplotlib.pyplot as plt
    return plt


def _size_label(n, _pos=None):
    for unit, k in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= k:
            return f"{n / k:g} {unit}"
    return f"{n:g} B"


def _save(fig, outdir, stem):
    os.makedirs(outdir, exist_ok=True)
    paths = []
    for ext, meta in (("png", {"Software": None}), ("svg", {"Date": None})):
        path = os.path.join(outdir, f"{stem}.{ext}")
        fig.savefig(path, dpi=110, bbox_inches="tight", metadata=meta)
        paths.append(path)
    return paths


def throughput(sweep, caption, outdir):
    """``sweep``: ``benchmarks.sweep.suite()["results"]``.  Returns the paths."""
    plt = _pyplot()
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), layout="constrained")
    for name, d in sweep["peers"].items():
        if not d["installed"]:
            continue
        pts = [p for p in d["points"] if p["items_per_s"]]
        color, marker = STYLE.get(name, (None, "x"))
        xs = [p["size"] for p in pts]
        for ax, key in zip(axes, ("items_per_s", "mb_per_s")):
            ax.plot(xs, [p[key] for p in pts], marker=marker, color=color, label=name,
                    linewidth=2.2 if name.startswith("gb") else 1.3, markersize=4)
    missing = [n for n, d in sweep["peers"].items() if not d["installed"]]
    for ax, ylabel in zip(axes, ("items/s", "MB/s (payload bytes)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(FixedLocator(sweep["sizes"]))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(_size_label))
        ax.tick_params(axis="x", labelrotation=45)
        ax.set_xlabel("payload size (bytes object)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(title="not installed: " + ", ".join(missing) if missing else None)
    axes[0].set_title("items per second")
    axes[1].set_title("payload throughput")
    fig.suptitle(f"One producer -> one consumer process: throughput against payload size\n"
                 f"{caption}", fontsize=10)
    paths = _save(fig, outdir, "throughput")
    plt.close(fig)
    return paths


def latency_cdf(wake, caption, outdir):
    """``wake``: ``benchmarks.wake.suite()["results"]``.  Returns the paths."""
    plt = _pyplot()
    lat = wake["latency"]
    fig, ax = plt.subplots(figsize=(8, 4.8), layout="constrained")
    for name, xs in lat["samples_ns"].items():
        if not xs:
            continue
        n = len(xs)
        color, _ = STYLE.get(name, (None, None))
        ax.step([x / 1e3 for x in xs], [(i + 1) / n for i in range(n)], where="post",
                color=color, label=f"{name} (p50 {_us(lat['median_of_runs'][name]['p50'])})",
                linewidth=2.2 if name == "gb (futex)" else 1.3)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.005)
    ax.axhline(0.5, color="grey", linewidth=0.6, linestyle=":")
    ax.axhline(0.99, color="grey", linewidth=0.6, linestyle=":")
    ax.set_xlabel("one-way latency, producer's stamp -> reader awake (µs, log scale)")
    ax.set_ylabel("fraction of samples <= latency")
    ax.grid(True, which="both", alpha=0.3)
    missing = [n for n, ok in lat.get("installed", {}).items() if not ok]
    ax.legend(loc="lower right",
              title="not installed: " + ", ".join(missing) if missing else None)
    ax.set_title(f"Wake latency CDF: a blocked reader, one item every ~{lat['period_us']} µs"
                 f"\n{caption}", fontsize=10)
    paths = _save(fig, outdir, "latency_cdf")
    plt.close(fig)
    return paths


def _us(ns):
    return f"{ns / 1e3:.0f} µs" if ns >= 1e4 else f"{ns / 1e3:.1f} µs"
