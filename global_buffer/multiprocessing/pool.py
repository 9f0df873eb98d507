"""``multiprocessing.pool`` names, with the ring-backed :class:`Pool`."""
from multiprocessing import pool as _std

__all__ = list(getattr(_std, "__all__", ["Pool", "ThreadPool"]))
globals().update((n, getattr(_std, n)) for n in __all__)


def __getattr__(name):
    if name == "Pool":
        from ..pool import Pool
        return Pool
    raise AttributeError(name)


del globals()["Pool"]
