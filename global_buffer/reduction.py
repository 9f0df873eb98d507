"""What rings, pipes and the Pool pickle with (SPEC §3.1, §3.3).

``multiprocessing.Queue`` pickles with ``multiprocessing.reduction.
ForkingPickler``, whose dispatch table holds whatever libraries registered
with ``ForkingPickler.register``: the stdlib's own reducers for
``Connection`` and ``socket`` (descriptors passed to the receiver, not their
numbers copied), PyTorch's for tensors and storages, and any other.  Our
picklers honour the same table, so such objects reduce through a ring as
they do through a stdlib queue.

One exception, measured (docs/benchmarks.md, ``python -m benchmarks.
dataloader``): a plain CPU ``torch.Tensor`` that does not require grad is
not shared by descriptor, as PyTorch's reducer does (a new shared-memory
file per tensor, its descriptor handed over through a socket the sender
serves), but travels as a pickle protocol-5 out-of-band buffer: one copy,
straight into the ring's shared memory, and the receiver's tensor is a view
of it (SPEC §3.1).  So the receiver gets a copy, not the sender's storage:
writes on either side are not seen by the other.  Tensors that require
grad, ``nn.Parameter``, other devices and non-strided layouts keep
PyTorch's reducer, and with it its sharing semantics; so does every tensor
when the environment sets ``GB_TENSOR_TRANSPORT=torch`` (read when the
table is built, so set it before the first put of the process).

The merged table is rebuilt when ``copyreg.dispatch_table`` or the
registered reducers grow (a library imported later registers its types); a
reducer registered again for a type already registered is seen only once
one of them grows.
"""
import copyreg
import io
import os
import pickle
import sys
from collections import ChainMap
from multiprocessing.reduction import ForkingPickler
from typing import Any, Dict

from . import _core

# CloudPickler: made on first use by __getattr__ below
__all__ = ["Pickler", "dumps", "CloudPickler", "cloud_dumps"]  # noqa: F822

_extra: Dict[type, Any] = ForkingPickler._extra_reducers  # type: ignore[attr-defined]
_ours: Dict[type, Any] = {}  # type -> our reducer replacing the registered one
_key = None     # (len(copyreg.dispatch_table), len(_extra)) the table was built from


class Pickler(pickle.Pickler):
    """``pickle.Pickler`` with ForkingPickler's registered reducers (its
    ``dispatch_table`` is refreshed by :func:`dumps`; call :func:`refresh`
    before making one directly)."""

    dispatch_table: Dict[type, Any] = {}


def refresh():
    """Rebuild the merged dispatch table if the registrations changed."""
    global _key
    key = (len(copyreg.dispatch_table), len(_extra))
    if key == _key:
        return
    table = dict(copyreg.dispatch_table)
    table.update(_extra)
    _ours.clear()
    torch = sys.modules.get("torch")
    if (torch is not None and _extra.get(torch.Tensor) is not None
            and os.environ.get("GB_TENSOR_TRANSPORT", "ring") != "torch"):
        _ours[torch.Tensor] = _tensor_reducer(torch, _extra[torch.Tensor])
    table.update(_ours)
    Pickler.dispatch_table = table
    _key = key


# ``dumps(obj, protocol=5, buffer_callback=None)``: pickle.dumps honouring
# ForkingPickler's registered reducers, through one reusable pickler
dumps = _core.PicklerDumps(Pickler, refresh, (copyreg.dispatch_table, _extra))


def _cloud_pickler():
    import cloudpickle

    class CloudPickler(cloudpickle.Pickler):
        """cloudpickle's Pickler with ForkingPickler's registered reducers
        (and ours) ahead of its own table; a live view, never stale."""

        dispatch_table = ChainMap(_ours, _extra, cloudpickle.Pickler.dispatch_table)

    return CloudPickler


def __getattr__(name):
    # cloudpickle is imported only by those who use it
    if name == "CloudPickler":
        cls = _cloud_pickler()
        globals()["CloudPickler"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def cloud_dumps(obj, protocol=5, buffer_callback=None):
    """``cloudpickle.dumps`` honouring ForkingPickler's registered reducers."""
    if (len(copyreg.dispatch_table), len(_extra)) != _key:
        refresh()
    f = io.BytesIO()
    __getattr__("CloudPickler")(f, protocol, buffer_callback=buffer_callback).dump(obj)
    return f.getvalue()


# -- CPU tensors out of band ---------------------------------------------------

def _tensor_reducer(torch, registered):
    tensor, strided, uint8 = torch.Tensor, torch.strided, torch.uint8

    def reduce_tensor(t):
        if (type(t) is not tensor or t.requires_grad or t.layout != strided
                or t.device.type != "cpu" or t.is_quantized or t.is_nested
                or t.is_conj() or t.is_neg()):
            return registered(t)
        c = t if t.is_contiguous() else t.contiguous()
        shape = tuple(c.shape)
        if c.numel() == 0:
            return _empty_tensor, (c.dtype, shape)
        raw = c.reshape(-1).view(uint8).numpy()
        return _rebuild_tensor, (pickle.PickleBuffer(raw), c.dtype, shape)

    return reduce_tensor


def _rebuild_tensor(buf, dtype, shape):
    import torch
    m = memoryview(buf)
    if m.readonly:  # torch.frombuffer wants a writable buffer
        m = memoryview(bytearray(m))
    # a view of the buffer (for a large item: the ring's shared memory,
    # which stays this process's while the tensor lives)
    return torch.frombuffer(m, dtype=torch.uint8).view(dtype).reshape(shape)


def _empty_tensor(dtype, shape):
    import torch
    return torch.empty(shape, dtype=dtype)
