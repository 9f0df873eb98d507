"""PyTorch on our contexts: tensors through rings, and DataLoader (SPEC §3;
issue 15 items 2 and 3).

Needs ``pip install torch==2.13.0`` (the ``integration`` extra; .ci/run
installs it where the interpreter has that wheel); skipped without torch.
Tests that could hang on a bug (a DataLoader waiting for a dead worker) run
in their own interpreter under a hard timeout.
"""
import gc
import os
import signal
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")

import global_buffer as gb  # noqa: E402
import global_buffer.multiprocessing as gbmp  # noqa: E402
from global_buffer import _core  # noqa: E402

START_METHODS = ["fork", "spawn", "forkserver"]


# -- tensors through a ring ------------------------------------------------------

@pytest.mark.parametrize("t", [
    torch.arange(12, dtype=torch.float32).reshape(3, 4),
    torch.arange(20).reshape(4, 5).t(),                  # not contiguous
    torch.ones(5, dtype=torch.bfloat16),                 # no numpy dtype
    torch.tensor([True, False]),
    torch.tensor(3.5),                                   # 0-d
    torch.empty(0, 3),                                   # empty
    torch.randn(3, dtype=torch.complex64),
    torch.ones(256, 1024, 8),                            # 8 MiB: out of line, in place
], ids=["f32", "strided", "bf16", "bool", "0d", "empty", "complex", "8MiB"])
def test_tensor_round_trip(new_name, t):
    r = gb.Ring(name=new_name())
    r.put({"t": t, "label": 1})
    got = r.get(timeout=5)["t"]
    assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(got, t)
    assert not got.requires_grad
    got.add_(1) if got.dtype != torch.bool else None  # the receiver's own memory
    assert torch.equal(t, t.clone())
    del got
    gc.collect()
    r.close()


def test_grad_and_parameters_keep_torchs_reducer(new_name):
    """Tensors that require grad, and nn.Parameter, go through PyTorch's own
    reducer: shared storage, as through multiprocessing.Queue."""
    r = gb.Ring(name=new_name())
    p = torch.nn.Parameter(torch.ones(3))
    g = torch.ones(3, requires_grad=True)
    r.put((p, g))
    p2, g2 = r.get(timeout=5)
    assert type(p2) is torch.nn.Parameter and g2.requires_grad
    assert p2.is_shared() and g2.is_shared()
    with torch.no_grad():
        p2.add_(1)
    assert float(p.detach()[0]) == 2.0  # the very storage
    r.close()


def _sum_tensors(ring_name, out_name, n):
    torch.set_num_threads(1)  # as a DataLoader worker: no OpenMP pool after fork
    r, out = gb.Ring.attach(ring_name), gb.Ring.attach(out_name)
    for _ in range(n):
        t = r.get(timeout=30)
        out.put((tuple(t.shape), str(t.dtype), float(t.double().sum())))
    r.close()
    out.close()


def test_tensors_across_processes(ctx, new_name, children):
    a, b = gb.Ring(name=new_name("a")), gb.Ring(name=new_name("b"))
    sent = [torch.full((16, 3, 64, 64), float(i)) for i in range(3)] + \
           [torch.ones(1080, 1920, 3, dtype=torch.uint8)]
    p = children.start(ctx, _sum_tensors, a.name, b.name, len(sent))
    for t in sent:
        a.put(t)
    for t in sent:
        assert b.get(timeout=60) == (tuple(t.shape), str(t.dtype), float(t.double().sum()))
    children.join(p)
    a.close()
    b.close()


# -- DataLoader on our context ---------------------------------------------------

class Frames(torch.utils.data.Dataset):
    """Item i: a (3, 32, 32) float tensor filled with i, and i."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.full((3, 32, 32), float(i)), i


def _batches(ctx, persistent=False, epochs=1):
    dl = torch.utils.data.DataLoader(Frames(100), batch_size=8, num_workers=2,
                                     persistent_workers=persistent,
                                     multiprocessing_context=ctx)
    out = []
    for _ in range(epochs):
        out.append([(x.clone(), y.clone()) for x, y in dl])
    del dl
    gc.collect()
    return out


@pytest.mark.parametrize("method", START_METHODS)
def test_dataloader_batches_equal_the_stdlib_contexts(method):
    import multiprocessing as mp
    ours = _batches(gbmp.get_context(method), persistent=True, epochs=2)
    if method == "fork":
        theirs = _batches(mp.get_context(method), epochs=1)[0]
    else:  # (another interpreter start per worker costs seconds: computed here)
        ds = Frames(100)
        theirs = [(torch.stack([ds[i][0] for i in range(k, min(k + 8, 100))]),
                   torch.arange(k, min(k + 8, 100))) for k in range(0, 100, 8)]
    for epoch in ours:
        assert len(epoch) == len(theirs) == 13
        for (x, y), (x2, y2) in zip(epoch, theirs):
            assert torch.equal(x, x2) and torch.equal(y, y2)
    gc.collect()
    assert _core.leases() == 0


def _run(code, timeout=120):
    """Run ``code`` in a fresh interpreter (tests/ on its path); a hang fails
    the test after ``timeout`` s instead of wedging the suite."""
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [here] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=here,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        pytest.fail(f"hung for {timeout} s:\n{out[-3000:]}")
    return p.returncode, out


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_dataloader_worker_killed_mid_epoch_raises(method):
    """As with the stdlib context: the loader raises that a worker died, no
    hang, and the process exits."""
    rc, out = _run(f"""
        import os, signal, time, torch
        import global_buffer.multiprocessing as gbmp
        from test_torch import Frames
        dl = torch.utils.data.DataLoader(Frames(400), batch_size=4, num_workers=2,
                                         multiprocessing_context=gbmp.get_context({method!r}))
        it = iter(dl)
        next(it)
        os.kill(it._workers[0].pid, signal.SIGKILL)
        t0 = time.monotonic()
        try:
            for _ in it:
                pass
        except RuntimeError as e:
            print("RAISED", round(time.monotonic() - t0, 1), e)
        else:
            print("NO ERROR")
    """)
    assert rc == 0, out
    assert "RAISED" in out and ("exited unexpectedly" in out or "killed by signal" in out), out
    assert float(out.split("RAISED")[1].split()[0]) < 10, out  # torch's own check: every 5 s


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_dataloader_shutdown_mid_epoch_does_not_hang(method):
    rc, out = _run(f"""
        import torch
        import global_buffer.multiprocessing as gbmp
        from test_torch import Frames
        dl = torch.utils.data.DataLoader(Frames(400), batch_size=4, num_workers=2,
                                         persistent_workers=True,
                                         multiprocessing_context=gbmp.get_context({method!r}))
        for i, (x, y) in enumerate(dl):
            if i == 3:
                break
        it = iter(dl)
        next(it)
        del it, dl, x, y
        print("DONE")
    """)
    assert rc == 0 and "DONE" in out, out
