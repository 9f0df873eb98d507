"""Schemas: what a segment carries, stored as JSON in its header.

An array stream stores its dtype and shape; a message stream stores the
JSON schema of its pydantic model.  The 64-bit schema hash in the header
lets ``attach(name, model=M)`` refuse an incompatible model at once.
"""
import hashlib
import json
from typing import Tuple

import numpy as np

__all__ = ["ArraySpec", "model_schema", "schema_hash", "encode_meta", "decode_meta"]


class ArraySpec:
    """Fixed dtype and shape of every sample of an array stream or ring.

    Immutable, hashable and picklable.  ``dtype`` is anything
    ``numpy.dtype()`` accepts, structured dtypes included, but not one that
    holds Python objects (``TypeError``); ``shape`` is a tuple of ints or
    one int.

    Attributes
    ----------
    dtype : numpy.dtype
        Every sample's dtype.
    shape : tuple of int
        Every sample's shape.

    Examples
    --------
    >>> ArraySpec("float32", (480, 640))
    ArraySpec(dtype='float32', shape=(480, 640))
    >>> ArraySpec("uint8", 16).nbytes
    16
    """

    __slots__ = ("dtype", "shape")
    dtype: np.dtype
    shape: Tuple[int, ...]

    def __init__(self, dtype, shape):
        dt = np.dtype(dtype)
        if dt.hasobject:
            raise TypeError(f"dtype {dt} holds Python objects, which cannot live in shared memory")
        if isinstance(shape, (int, np.integer)):
            shape = (shape,)
        try:
            shape = tuple(int(operator_index(d)) for d in shape)
        except TypeError:
            raise TypeError(f"shape must be a tuple of ints, got {shape!r}") from None
        if any(d < 0 for d in shape):
            raise ValueError(f"shape must not have negative dimensions, got {shape}")
        if len(shape) > 32:
            raise ValueError("at most 32 dimensions")
        n = dt.itemsize
        for d in shape:
            n *= d
        if n >= 1 << 62 or any(d >= 1 << 62 for d in shape):
            # nbytes (or a dimension) would overflow int64 and the C core's sizes
            raise ValueError(f"ArraySpec({dt}, {shape}) is too large ({n} bytes)")
        object.__setattr__(self, "dtype", dt)
        object.__setattr__(self, "shape", shape)

    def __setattr__(self, key, value):
        raise AttributeError("ArraySpec is immutable")

    @property
    def nbytes(self):
        """Bytes per sample: the slot size of the stream or ring."""
        return int(self.dtype.itemsize * int(np.prod(self.shape, dtype=np.int64)))

    def __eq__(self, other):
        if not isinstance(other, ArraySpec):
            return NotImplemented
        return self.dtype == other.dtype and self.shape == other.shape

    def __hash__(self):
        return hash((self.dtype, self.shape))

    def __repr__(self):
        return f"ArraySpec(dtype={str(self.dtype)!r}, shape={self.shape})"

    def __reduce__(self):
        return ArraySpec, (self.dtype, self.shape)

    def to_json(self):
        """``{"dtype": descr, "shape": [...]}``, as stored in a segment."""
        return {"dtype": np.lib.format.dtype_to_descr(self.dtype), "shape": list(self.shape)}

    @classmethod
    def from_json(cls, d):
        """The inverse of ``to_json()``."""
        descr = d["dtype"]
        if isinstance(descr, list):
            descr = [tuple(f) for f in _tuples(descr)]
        return cls(np.lib.format.descr_to_dtype(descr), tuple(d["shape"]))


def operator_index(x):
    import operator
    return operator.index(x)


def _tuples(descr):
    # JSON turns the tuples of a structured dtype's descr into lists
    out = []
    for f in descr:
        f = list(f)
        if isinstance(f[1], list):
            f[1] = [tuple(x) for x in _tuples(f[1])]
        if len(f) == 3:
            f[2] = tuple(f[2])
        out.append(f)
    return out


def model_schema(model):
    """JSON schema of a pydantic model class (what the header stores)."""
    return model.model_json_schema()


def schema_hash(meta):
    """64-bit hash of canonical JSON metadata."""
    blob = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "little")


def encode_meta(meta):
    return json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()


def decode_meta(raw):
    return json.loads(raw.decode()) if raw else {}
