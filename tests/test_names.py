"""Segment names and permissions (SPEC §5 "Access", §2.1 ``mode=``):
names are validated the same way by create, attach and unlink; segments
are 0600 by default and ``mode=`` is applied exactly, whatever the umask.
"""
import os
import stat

import numpy as np
import pytest

import global_buffer as gb
from global_buffer import segment

SPEC = gb.ArraySpec("uint8", (8,))


def _mode(name):
    return stat.S_IMODE(os.stat(f"/dev/shm/gb.{name}").st_mode)


@pytest.mark.parametrize("bad", [
    "", ".", "..", "/", "a/b", "/abs", "../x", "x/..", "a b", "tab\there", "nul\0x",
    "semi;colon", "star*", "é", "名前", "x" * 201, "new\nline", "dollar$",
])
def test_bad_names_rejected_everywhere(bad):
    """§5: names are letters, digits, '.', '_', '-'; not '.' or '..'; 1 to
    200 characters.  create, attach and unlink all refuse bad ones with
    ValueError before touching the OS."""
    with pytest.raises(ValueError):
        gb.create(bad, SPEC, 2)
    with pytest.raises(ValueError):
        gb.attach(bad)
    with pytest.raises(ValueError):
        gb.unlink(bad)


@pytest.mark.parametrize("bad", [None, 123, b"bytes", ["a"], 1.5])
def test_non_str_names_rejected(bad):
    """§5: a name must be a str (TypeError otherwise)."""
    with pytest.raises(TypeError):
        gb.create(bad, SPEC, 2)
    with pytest.raises(TypeError):
        gb.attach(bad)
    with pytest.raises(TypeError):
        gb.unlink(bad)


def test_good_names_roundtrip(new_name):
    """§5: the full alphabet, dots inside names, and a 200-character name
    all work for create/attach/unlink, and .name is the name given."""
    base = new_name("ok")
    names = [base + "-Az09._-", "..." + base, base + "." * 3]
    long_name = (base + "L" * 200)[:200]
    names.append(long_name)
    for n in names:
        try:
            with gb.create(n, SPEC, 2) as w, gb.attach(n) as r:
                assert w.name == n and r.name == n
                w.write(np.arange(8, dtype=np.uint8))
                assert r.latest().tolist() == list(range(8))
        finally:
            gb.unlink(n)
    assert len(long_name) == 200


def test_long_names_hash_where_os_limit_is_short(monkeypatch, new_name):
    """§5: where the OS limit is shorter (macOS: 31 characters), long names
    map to a stable hashed OS name; short names keep their own."""
    monkeypatch.setattr(segment, "_OS_NAME_MAX", 31)
    short = "abc"
    assert segment.os_name(short) == "/gb.abc"
    a, b = "a" * 200, "a" * 199 + "b"
    oa, ob = segment.os_name(a), segment.os_name(b)
    assert len(oa) <= 31 and len(ob) <= 31
    assert oa != ob and oa == segment.os_name(a)
    name = new_name("long") + "x" * 150
    name = name[:200]
    try:
        with gb.create(name, SPEC, 2) as w, gb.attach(name) as r:
            assert r.name == name and w.name == name
            w.write(np.ones(8, np.uint8))
            assert r.latest().sum() == 8
            assert not os.path.exists(f"/dev/shm/gb.{name}")
            assert os.path.exists("/dev/shm" + segment.os_name(name))
    finally:
        gb.unlink(name)
    assert not os.path.exists("/dev/shm" + segment.os_name(name))


def test_default_mode_is_0600(shm_name):
    """§5: a segment is created with mode 0600 (same user only)."""
    with gb.create(shm_name, SPEC, 2):
        assert _mode(shm_name) == 0o600


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644, 0o660, 0o666, 0o400])
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o777])
def test_mode_applied_exactly_despite_umask(shm_name, mode, umask):
    """§5: mode= is applied exactly, not masked by the umask."""
    old = os.umask(umask)
    try:
        w = gb.create(shm_name, SPEC, 2, mode=mode)
    finally:
        os.umask(old)
    try:
        assert _mode(shm_name) == mode, oct(_mode(shm_name))
        with gb.attach(shm_name) as r:   # we own it: attach works even if 0400
            w.write(np.zeros(8, np.uint8))
            assert r.latest() is not None
    finally:
        w.unlink()
        w.close()


@pytest.mark.parametrize("bad", [-1, 0o1000, 0o4755, "0600", 1.5, None])
def test_bad_mode_rejected(shm_name, bad):
    """§5: mode must be a permission mask (0..0o777); nothing is created."""
    with pytest.raises((ValueError, TypeError)):
        gb.create(shm_name, SPEC, 2, mode=bad)
    with pytest.raises(gb.BufferNotFound):
        gb.attach(shm_name)
