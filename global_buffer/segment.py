"""Named shared-memory segments: names, creation, attachment, removal.

POSIX shared memory is opened with ``_posixshmem`` directly rather than
through ``multiprocessing.shared_memory.SharedMemory``, so that no process
ever registers a segment with ``resource_tracker`` (which would remove a
segment when an *attaching* process exits, and warns about "leaks" on every
Python before 3.13).  Lifetime is ours: only the creating process removes a
segment, by an explicit ``unlink`` or by the owner policy of the handle.

Process liveness (pid + start time, so a reused pid is not mistaken for the
original process) also lives here, as segments record their owner.
"""
import errno
import hashlib
import mmap
import os
import re
import sys
import time
from typing import Optional, Tuple

from .errors import BufferCorrupt, BufferExists, BufferNotFound, GlobalBufferError

__all__ = ["Segment", "validate_name", "os_name", "unlink", "unlink_if", "ident_of", "list_names",
           "process_start_time", "process_alive"]

PREFIX = "gb."
MAX_NAME = 200
_NAME_RE = re.compile(r"[A-Za-z0-9._-]+\Z")
# macOS limits shm names to 31 characters (PSHMNAMLEN) including the slash.
_OS_NAME_MAX = 31 if sys.platform == "darwin" else 255
_SHM_DIR = "/dev/shm"

if sys.platform != "win32":
    import _posixshmem


def validate_name(name):
    """Check a segment name (SPEC §5); return it unchanged."""
    if not isinstance(name, str):
        raise TypeError(f"segment name must be a str, not {type(name).__name__}")
    if not name or len(name) > MAX_NAME:
        raise ValueError(f"segment name must have 1 to {MAX_NAME} characters, got {len(name)}")
    if name in (".", "..") or not _NAME_RE.match(name):
        raise ValueError(
            f"invalid segment name {name!r}: use letters, digits, '.', '_' and '-' "
            "(not '.' or '..')")
    return name


def os_name(name):
    """The name the OS sees.  Too long for the OS (macOS): a stable hash."""
    validate_name(name)
    full = "/" + PREFIX + name
    if len(full) > _OS_NAME_MAX:
        digest = hashlib.blake2b(name.encode(), digest_size=12).hexdigest()
        full = "/" + PREFIX + "h" + digest  # 1 + 3 + 1 + 24 = 29 chars
    return full


def list_names():
    """Names of the global_buffer segments visible in /dev/shm (Linux)."""
    try:
        entries = os.listdir(_SHM_DIR)
    except OSError:
        return []
    return sorted(e[len(PREFIX):] for e in entries if e.startswith(PREFIX))


# -- process liveness ---------------------------------------------------------

def _proc_stat(pid):
    """(state, start time) of process ``pid`` from /proc/<pid>/stat; None
    if it has no entry there; (b"?", 0) if the entry cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return (b"?", 0)
    # the fields after the parenthesised command name, which may itself
    # contain spaces and parentheses: state (3), ..., starttime (22)
    fields = stat[stat.rfind(b")") + 2:].split()
    try:
        return (fields[0], int(fields[19]))
    except (IndexError, ValueError):
        return (fields[0] if fields else b"?", 0)


def process_start_time(pid):
    """Opaque start time of process ``pid`` (0 if unknown / not Linux)."""
    st = _proc_stat(pid)
    return st[1] if st is not None else 0


# /proc is there to ask (a process whose entry is missing has been reaped)
_HAVE_PROC = sys.platform.startswith("linux") and os.path.exists("/proc/self/stat")


def process_alive(pid, start=0):
    """True if process ``pid`` runs and (when ``start`` is known) is the
    same process that had that start time (pid reuse).  A zombie is dead,
    and so is a process reaped between the two looks (``kill(pid, 0)``
    found it, /proc no longer does)."""
    if pid <= 0:
        return False
    if sys.platform == "win32":  # unverified: no cheap probe without psutil
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if _HAVE_PROC:
        st = _proc_stat(pid)
        if st is None:
            return False
        state, now = st
        if state in (b"Z", b"X"):
            return False
        if start and now and now != start:
            return False
    return True


_self_start: Tuple[Optional[int], int] = (None, 0)


def self_start_time():
    """Start time of this process, cached per pid (fork changes it)."""
    global _self_start
    pid = os.getpid()
    if _self_start[0] != pid:
        _self_start = (pid, process_start_time(pid))
    return _self_start[1]


# -- segments -----------------------------------------------------------------

class Segment:
    """One mapping of a named shared-memory segment.

    ``Segment.create(name, size, mode)`` makes a new one (``BufferExists`` if
    the name is taken) with exactly ``mode`` permissions and all of its
    memory reserved up front; ``Segment.attach(name)`` maps an existing one.
    """

    __slots__ = ("name", "os_name", "size", "mm", "owner_pid", "ident", "__weakref__")

    def __init__(self, name, osname, mm, size, owner_pid, ident=None):
        self.name = name
        self.os_name = osname
        self.mm = mm
        self.size = size
        self.owner_pid = owner_pid
        self.ident = ident  # (st_dev, st_ino) of the segment made by create()

    @classmethod
    def create(cls, name, size, mode=0o600):
        osname = os_name(name)
        if not isinstance(mode, int) or not 0 <= mode <= 0o777:
            raise ValueError(f"mode must be an int permission mask like 0o600, got {mode!r}")
        if sys.platform == "win32":  # unverified: named file mapping
            mm = mmap.mmap(-1, size, tagname=osname[1:])
            return cls(name, osname, mm, size, os.getpid())
        try:
            fd = _posixshmem.shm_open(osname, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode)
        except FileExistsError:
            raise BufferExists(f"a segment named {name!r} already exists") from None
        try:
            os.fchmod(fd, mode)  # exact mode: not masked by the umask
            _reserve(fd, size, name)
            mm = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            _posixshmem.shm_unlink(osname)
            raise
        st = os.fstat(fd)
        os.close(fd)
        return cls(name, osname, mm, size, os.getpid(), (st.st_dev, st.st_ino))

    @classmethod
    def attach(cls, name, wait_init=0.25):
        """Map an existing segment.  A segment still being created (size 0
        or header not yet written) is waited for up to ``wait_init`` s."""
        osname = os_name(name)
        if sys.platform == "win32":  # unverified
            raise GlobalBufferError("attaching by name is not supported on Windows yet")
        try:
            fd = _posixshmem.shm_open(osname, os.O_RDWR, 0)
        except FileNotFoundError:
            raise BufferNotFound(f"no segment named {name!r}") from None
        except PermissionError:
            raise PermissionError(
                f"no permission to open segment {name!r} (created with a "
                "narrower mode by another user?)") from None
        try:
            deadline = time.monotonic() + wait_init
            while True:
                size = os.fstat(fd).st_size
                if size >= 8 or time.monotonic() >= deadline:
                    break
                time.sleep(0.005)
            if size < 8:
                raise BufferCorrupt(f"segment {name!r} is empty ({size} bytes)")
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        # a creator writes the magic last; give a racing creator a moment
        while mm[:8] == b"\0" * 8 and time.monotonic() < deadline:
            time.sleep(0.005)
        return cls(name, osname, mm, size, None)

    def close(self):
        mm, self.mm = self.mm, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                # a zero-copy view handed to the user still exports the
                # mapping; it is unmapped when the last view is collected
                pass

    def unlink(self):
        unlink(self.name)


def _reserve(fd, size, name):
    """Back the whole segment now, so a full /dev/shm fails here with a
    clear error instead of SIGBUS on the first write."""
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
            return
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise OSError(
                    errno.ENOSPC,
                    f"not enough shared memory for segment {name!r}: needs "
                    f"{size} bytes (is /dev/shm full or too small?)") from None
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
    os.ftruncate(fd, size)  # macOS: no fallocate on shm; unverified


def ident_of(name):
    """``(st_dev, st_ino)`` of the segment now named ``name``, or None if
    there is none or the OS gives segments no path to stat (Linux has
    /dev/shm; elsewhere unverified: None)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        st = os.stat("/dev/shm" + os_name(name))
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def unlink_if(name, ident):
    """Remove ``name`` only while it is still the segment ``ident`` (from
    ``Segment.ident``): an owner's late cleanup must not remove a newer
    segment that took the name after its own was unlinked.  ``ident``
    None (unknown): remove by name."""
    if ident is not None and sys.platform.startswith("linux") and ident_of(name) != ident:
        return False
    unlink(name)
    return True


def unlink(name):
    """Remove the segment ``name``; a missing name is not an error."""
    osname = os_name(name)
    if sys.platform == "win32":
        return  # file mappings vanish with their last handle
    try:
        _posixshmem.shm_unlink(osname)
    except FileNotFoundError:
        pass
