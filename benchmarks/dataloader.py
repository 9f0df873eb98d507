"""PyTorch's DataLoader on our context against the stdlib's:
``python -m benchmarks.dataloader`` (needs ``pip install torch==2.13.0``).

``DataLoader(ds, batch_size=16, num_workers=2, persistent_workers=True,
multiprocessing_context=ctx)`` over a dataset whose items are one fixed
tensor (so the figure is the loader's transport, not the dataset's work),
timed per epoch after a first (warm-up) epoch.  The main loop reads one
element of every 4 KiB page of each batch: what a training step that reads
its batch pays for the memory the batch arrived in (page faults of a new
mapping, cache misses), without the step's own compute.  Peers:

- ``mp``: ``multiprocessing.get_context(start)``: tensors shared by
  descriptor through PyTorch's ForkingPickler reducers.
- ``gb``: ``global_buffer.multiprocessing.get_context(start)``: CPU tensors
  as out-of-band buffers in the ring's shared memory (global_buffer/
  reduction.py), the receiver's tensor a view of it.
- ``gb-torch``: our context with ``GB_TENSOR_TRANSPORT=torch``: PyTorch's
  own reducers through our rings (the other choice, measured).

Each peer runs in its own interpreter; rounds alternate the peers; figures
are medians of every timed epoch.
"""
import os
import time

from benchmarks._util import (
    ab_parser,
    fmt_ns,
    fmt_ratio,
    installed,
    main_suite,
    median,
    run_peer,
    summary_row,
    table,
)

CASES = {
    # case: (item shape, dtype, items per epoch, description)
    "224": ((3, 224, 224), "float32", 1024, "3x224x224 float32, batch 16 (9.6 MB)"),
    "1080p": ((1080, 1920, 3), "uint8", 256, "1080x1920x3 uint8, batch 16 (99.5 MB)"),
}
KINDS = ("mp", "gb", "gb-torch")


class _Items:
    """A map-style dataset: ``n`` items, each the same tensor and its index."""

    def __init__(self, shape, dtype, n):
        import torch
        self.item = torch.ones(shape, dtype=getattr(torch, dtype))
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.item, i


def peer(kind, case, epochs, start, n=None):
    """Seconds per epoch (after one warm-up epoch) of one DataLoader."""
    if kind == "gb-torch":
        os.environ["GB_TENSOR_TRANSPORT"] = "torch"
    import multiprocessing as mp

    import torch
    from torch.utils.data import DataLoader

    import global_buffer.multiprocessing as gbmp

    torch.set_num_threads(1)
    shape, dtype, default_n, _ = CASES[case]
    ds = _Items(shape, dtype, n or default_n)
    ctx = mp.get_context(start) if kind == "mp" else gbmp.get_context(start)
    dl = DataLoader(ds, batch_size=16, num_workers=2, persistent_workers=True,
                    multiprocessing_context=ctx)
    step = 4096 // ds.item.element_size()  # one element per page
    times = []
    for e in range(epochs + 1):
        t0 = time.perf_counter()
        seen = 0
        for x, y in dl:
            flat = x.view(-1)
            assert x.shape[1:] == shape and float(flat[::step].sum()) == flat[::step].numel()
            seen += len(y)
        if e:
            times.append(time.perf_counter() - t0)
        assert seen == len(ds)
    del dl
    return times


def suite(level="full", rounds=None, epochs=None, start="fork", only=None):
    smoke, quick = level == "smoke", level != "full"
    if not installed("torch"):
        t = table("DataLoader: torch is not installed (pip install torch==2.13.0)",
                  ["case"], [["not installed"]])
        return {"results": {}, "tables": [t], "summary": []}
    epochs = epochs or (1 if smoke else 3)
    rounds = 1 if quick else max(1, rounds or 3)
    kinds = ("mp", "gb") if smoke else KINDS  # smoke: one case, two peers
    only = only or ("224" if smoke else None)
    results, rows, summary = {}, [], []
    for case, (_shape, _dtype, n, desc) in CASES.items():
        if only and case != only:
            continue
        if smoke:
            n = 64
        runs = {k: [] for k in kinds}
        for _ in range(rounds):
            for kind in kinds:
                runs[kind].append(run_peer("dataloader", "peer", kind=kind, case=case,
                                           epochs=epochs, start=start, n=n))
        med = {k: median([t for r in v for t in r]) for k, v in runs.items()}
        med.setdefault("gb-torch", None)
        torch_speed = med["mp"] / med["gb-torch"] if med["gb-torch"] else None
        results[case] = {"n": n, "epochs": epochs, "runs_s": runs, "median_s": med,
                         "speedup": med["mp"] / med["gb"], "speedup_torch_reducers": torch_speed}
        rows.append([desc, fmt_ns(med["mp"] * 1e9), fmt_ns(med["gb"] * 1e9),
                     fmt_ns(med["gb-torch"] * 1e9) if torch_speed else "-",
                     fmt_ratio(med["mp"] / med["gb"]),
                     fmt_ratio(torch_speed) if torch_speed else "-"])
        summary.append(summary_row("dataloader", f"DataLoader epoch, {desc}", "s per epoch",
                                   med["gb"], med["mp"], "mp context",
                                   higher_is_better=False, gb_peer="gb context"))
    tables = [table(
        f"PyTorch DataLoader, 2 persistent workers, our context vs the stdlib's (seconds "
        f"per epoch, median; start method {start}, {rounds} round(s) x {epochs} epochs)",
        ["case", "mp ctx", "gb ctx", "gb ctx, torch reducers", "vs. mp", "vs. mp (torch red.)"],
        rows,
        note="vs. mp: stdlib context time / our context time (higher is better); "
             "target >= 1.5x.  'torch reducers': GB_TENSOR_TRANSPORT=torch, PyTorch's "
             "descriptor-sharing reducers through our rings.")]
    return {"results": results, "tables": tables, "summary": summary}


def main(argv=None):
    ap = ab_parser(__doc__.split("\n\n")[0], "epochs")
    ap.add_argument("--only", choices=sorted(CASES), help="one case")
    args = ap.parse_args(argv)
    main_suite(args, "dataloader", lambda lv: suite(lv, args.rounds, args.repeats,
                                                    args.start, args.only))


if __name__ == "__main__":
    main()
