"""Queue rings under contention and under SIGKILL (SPEC §3.1, §5; issue 4).

* MPMC exactly-once: several producer and consumer processes (and threads
  inside them) move tens of thousands of ``(producer, seq)`` items through one
  ring; the received items must equal the sent ones as a multiset (nothing
  lost, nothing duplicated) and every consumer must see each producer's items
  in the order they were put.  Variants cover tiny rings (constant full/empty
  waits), blocking ``maxsize`` puts, unbounded puts through the feeder, threads,
  ``put_many``/``get_many``, pickle-5 frames and items larger than a slot.
* Kill tests: producers and consumers are SIGKILLed at random points of tight
  put/get loops and replaced, while the survivors carry on.  Every consumer
  logs each item to a file the moment ``get()`` returns it and every producer
  records in shared memory how many of its puts returned, so after the run the
  test knows exactly which items were committed and which were delivered: no
  duplicates, at most one committed item lost per killed consumer (the one it
  held), and no wait that is not bounded.  A deterministic variant dies while
  holding a claim and checks that a peer blocked in ``get()``/``put()`` moves
  on within about a second.
* Broadcast rings: several producers and readers, checksummed payloads (no
  torn item ever reaches a reader), per-producer order, ``read + overruns ==
  tail`` exactly, and a producer killed while holding the producers' lock does
  not wedge the others.
* Regressions for protocol bugs these tests found (docs/design.md, "MPMC
  protocol" / History): a live claim judged by the previous claimant's start
  time, producers asleep on a full ring that no commit would ever wake, blob
  names repeated after pid reuse.

Default run (``pytest tests/test_ring_stress.py``) stays well under a minute on
two cores; ``-m slow`` runs the long variants.
"""
import json
import multiprocessing as mp
import os
import random
import signal
import struct
import threading
import time
import zlib

import numpy as np
import pytest

import global_buffer as gb

FORK = mp.get_context("fork")
TIMEOUT = 30.0          # any single blocking call in a child
JOIN = 60.0             # any child's whole run after it was told to finish
_REC = struct.Struct("<q")


def _enc(k, s):
    return (k << 32) | s


def _dec(v):
    return v >> 32, v & 0xFFFFFFFF


# -- items ----------------------------------------------------------------------

def _blob_bytes(k, s, size):
    """Deterministic payload for item (k, s): cheap to make and to check."""
    unit = zlib.crc32(b"%d:%d" % (k, s)).to_bytes(4, "little")
    return unit * (size // 4)


def _make_item(kind, k, s):
    if kind == "small":
        return (k, s)
    if kind == "blob":
        # mostly larger than the 512-byte slots: out of line; some inline
        return (k, s, _blob_bytes(k, s, 128 + (s * 7919) % 6000))
    if kind == "frames":
        # numpy inside a dict: pickle-5 frames, inline or out of line
        return {"k": k, "s": s, "a": np.full(1 + (s * 31) % 1500, s, np.int64)}
    if kind == "large":
        return (k, s, _blob_bytes(k, s, 64 * 1024 + (s * 7919) % (192 * 1024)))
    raise ValueError(kind)


def _check_item(kind, x):
    """(k, s) of a received item, after checking its payload is intact."""
    if kind == "frames":
        k, s, a = x["k"], x["s"], x["a"]
        assert a.dtype == np.int64 and a.shape == (1 + (s * 31) % 1500,), (k, s, a.shape)
        assert (a == s).all(), f"corrupt array in item {(k, s)}"
        return k, s
    if kind == "small":
        k, s = x
        return k, s
    k, s, data = x
    assert data == _make_item(kind, k, s)[2], f"corrupt payload in item {(k, s)}"
    return k, s


# -- MPMC exactly-once ------------------------------------------------------------

def mpmc_producer(ring, ks, n, kind, batch):
    """Put n items for each producer id in ks (one thread per id)."""
    errors = []

    def run(k):
        try:
            if batch:
                for i in range(0, n, batch):
                    ring.put_many([_make_item(kind, k, s) for s in range(i, min(n, i + batch))],
                                  timeout=TIMEOUT)
            else:
                for s in range(n):
                    ring.put(_make_item(kind, k, s), timeout=TIMEOUT)
        except BaseException as e:  # pragma: no cover - reported via exit code
            errors.append(repr(e))

    _in_threads(run, ks)
    ring.close()
    ring.join_thread()  # unbounded rings: flush what the feeder still holds
    if errors:
        raise SystemExit(f"producer errors: {errors}")


def mpmc_consumer(ring, tags, out_dir, kind, batch):
    """Take items until a None sentinel (one thread per tag); save what each
    thread received, in order, to out_dir/<tag>.npy."""
    errors = []

    def run(tag):
        got = []
        try:
            while True:
                items = (ring.get_many(batch, timeout=TIMEOUT) if batch
                         else [ring.get(timeout=TIMEOUT)])
                stops = 0
                for x in items:
                    if x is None:
                        stops += 1
                    else:
                        assert not stops, "item after the sentinels"
                        k, s = _check_item(kind, x)
                        got.append(_enc(k, s))
                if stops:
                    for _ in range(stops - 1):  # took a peer's sentinel too
                        ring.put(None, timeout=TIMEOUT)
                    break
        except BaseException as e:  # pragma: no cover - reported via exit code
            errors.append(repr(e))
        np.save(os.path.join(out_dir, f"{tag}.npy"), np.array(got, np.int64))

    _in_threads(run, tags)
    if errors:
        raise SystemExit(f"consumer errors: {errors}")


def _in_threads(fn, args):
    if len(args) == 1:
        fn(args[0])
        return
    ts = [threading.Thread(target=fn, args=(a,)) for a in args]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


MPMC = {
    #  name: (ring kwargs, items per producer, kind, batch, threads per process)
    "default": (dict(), 30000, "small", 0, 1),
    "tiny-bounded": (dict(maxsize=4), 30000, "small", 0, 1),
    "tiny-unbounded": (dict(maxsize=0, capacity=4), 30000, "small", 0, 1),
    "bounded": (dict(maxsize=64), 30000, "small", 0, 1),
    "threads": (dict(maxsize=16), 10000, "small", 0, 2),
    "batches": (dict(maxsize=64), 30000, "small", 50, 1),
    "batches-unbounded": (dict(capacity=8), 30000, "small", 50, 1),
    "frames": (dict(maxsize=16, max_bytes=4096), 3000, "frames", 0, 1),
    "blobs": (dict(maxsize=8, max_bytes=512), 1500, "blob", 0, 1),
}
MPMC_SLOW = {
    "default": (dict(), 300000, "small", 0, 1),
    "tiny-bounded": (dict(maxsize=2), 200000, "small", 0, 1),
    "tiny-unbounded": (dict(capacity=2), 200000, "small", 0, 1),
    "threads": (dict(maxsize=8), 50000, "small", 0, 3),
    "batches": (dict(maxsize=32), 200000, "small", 64, 1),
    "blobs": (dict(maxsize=4, max_bytes=256), 20000, "blob", 0, 1),
}


def _run_mpmc(ctx, children, tmp_path, kwargs, n, kind, batch, nthreads, nprod=3, ncons=3):
    ring = gb.Ring(**kwargs)
    try:
        producers = [children.start(ctx, mpmc_producer, ring,
                                    [p * nthreads + t for t in range(nthreads)], n, kind, batch)
                     for p in range(nprod)]
        tags = [[f"c{c}t{t}" for t in range(nthreads)] for c in range(ncons)]
        consumers = [children.start(ctx, mpmc_consumer, ring, tags[c], str(tmp_path), kind, batch)
                     for c in range(ncons)]
        for p in producers:
            assert children.join(p, JOIN + n / 1000) == 0, "a producer failed"
        for _ in range(ncons * nthreads):
            ring.put(None, timeout=TIMEOUT)
        for c in consumers:
            assert children.join(c, JOIN) == 0, "a consumer failed"
        logs = {tag: np.load(tmp_path / f"{tag}.npy") for row in tags for tag in row}
        assert ring.qsize() == 0
    finally:
        ring.close()
        ring.unlink()
    _check_exactly_once(logs, nprod * nthreads, n)


def _check_exactly_once(logs, nproducers, n):
    allv = np.concatenate(list(logs.values()))
    expected = np.array([_enc(k, s) for k in range(nproducers) for s in range(n)], np.int64)
    vals, counts = np.unique(allv, return_counts=True)
    dups = vals[counts > 1]
    assert len(dups) == 0, f"{len(dups)} items delivered twice, e.g. {_some(dups)}"
    missing = np.setdiff1d(expected, vals)
    assert len(missing) == 0, f"{len(missing)} items lost, e.g. {_some(missing)}"
    extra = np.setdiff1d(vals, expected)
    assert len(extra) == 0, f"{len(extra)} items never put, e.g. {_some(extra)}"
    for tag, log in logs.items():
        _check_order(tag, log)


def _some(encoded):
    return [_dec(int(v)) for v in encoded[:5]]


def _check_order(tag, log):
    """Within one consumer's log, each producer's seqs strictly increase."""
    if len(log) == 0:
        return
    log = np.asarray(log, np.int64)
    k, s = log >> 32, log & 0xFFFFFFFF
    order = np.argsort(k, kind="stable")
    k, s = k[order], s[order]
    same = k[1:] == k[:-1]
    bad = np.nonzero(same & (s[1:] <= s[:-1]))[0]
    assert len(bad) == 0, (
        f"consumer {tag} saw producer {int(k[bad[0]])}'s items out of order: "
        f"seq {int(s[bad[0]])} then {int(s[bad[0] + 1])}")


@pytest.mark.parametrize("variant", list(MPMC))
def test_mpmc_exactly_once(variant, children, tmp_path):
    kwargs, n, kind, batch, nthreads = MPMC[variant]
    _run_mpmc(FORK, children, tmp_path, kwargs, n, kind, batch, nthreads)


@pytest.mark.parametrize("method", [m for m in ("spawn", "forkserver")
                                    if m in mp.get_all_start_methods()])
def test_mpmc_exactly_once_reattached(method, children, tmp_path):
    """The same with rings pickled by name to spawned/forkserver children."""
    _run_mpmc(mp.get_context(method), children, tmp_path, dict(maxsize=8), 5000, "small", 0, 1,
              nprod=2, ncons=2)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("variant", list(MPMC_SLOW))
def test_mpmc_exactly_once_long(variant, children, tmp_path):
    kwargs, n, kind, batch, nthreads = MPMC_SLOW[variant]
    _run_mpmc(FORK, children, tmp_path, kwargs, n, kind, batch, nthreads)


def test_mpmc_many_producers_one_consumer_order(children, tmp_path):
    """6 producers into a 2-slot ring, one consumer: the consumer's log is a
    merge of the producers' sequences, each in order (per-producer FIFO under
    the heaviest claim contention)."""
    _run_mpmc(FORK, children, tmp_path, dict(maxsize=2), 5000, "small", 0, 1, nprod=6, ncons=1)


# -- kill tests -------------------------------------------------------------------

MAX_PRODUCERS = 4096


def kill_producer(ring, k, committed, stop, kind):
    """Put (k, 0), (k, 1), ... until told to stop; committed[k] counts the
    puts that returned (so item committed[k] may be in flight when killed)."""
    s = 0
    item = _make_item(kind, k, s)
    while not stop.value:
        try:
            ring.put(item, timeout=0.2)
        except gb.Full:
            continue
        s += 1
        committed[k] = s
        item = _make_item(kind, k, s)


def kill_consumer(ring, path, stop, kind):
    """Take items and append each to the log file the moment get() returns
    (8 bytes, one write: a SIGKILL leaves whole records only)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    while True:
        try:
            x = ring.get(timeout=0.2)
        except gb.Empty:
            if stop.value >= 2:
                break
            continue
        k, s = _check_item(kind, x)
        os.write(fd, _REC.pack(_enc(k, s)))
    os.close(fd)


def _read_log(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:  # killed before it opened its log
        return np.zeros(0, np.int64)
    assert len(data) % 8 == 0, "torn log record"
    return np.frombuffer(data, np.int64)


def _run_kills(children, tmp_path, duration, kind, ring_kwargs, nprod=3, ncons=3,
               seed=None):
    seed = random.randrange(1 << 30) if seed is None else seed
    rng = random.Random(seed)
    ctx = FORK
    ring = gb.Ring(**ring_kwargs)
    committed = ctx.RawArray("q", MAX_PRODUCERS)
    stop = ctx.RawValue("i", 0)
    producers, consumers = {}, {}
    killed = {"producer": 0, "consumer": 0}
    logs = []

    def spawn_producer():
        k = len(producers)
        assert k < MAX_PRODUCERS - 1
        producers[k] = children.start(ctx, kill_producer, ring, k, committed, stop, kind)
        return producers[k]

    def spawn_consumer():
        path = str(tmp_path / f"c{len(consumers)}.log")
        logs.append(path)
        consumers[path] = children.start(ctx, kill_consumer, ring, path, stop, kind)
        return consumers[path]

    spawn = {"producer": spawn_producer, "consumer": spawn_consumer}
    try:
        live = {"producer": [spawn_producer() for _ in range(nprod)],
                "consumer": [spawn_consumer() for _ in range(ncons)]}
        end = time.monotonic() + duration
        while time.monotonic() < end:
            time.sleep(rng.uniform(0.0, 0.04))
            for role, procs in live.items():
                for p in procs:
                    assert p.exitcode is None, (
                        f"a {role} exited by itself with code {p.exitcode} (seed {seed})")
            role = rng.choice(("producer", "consumer"))
            victim = live[role].pop(rng.randrange(len(live[role])))
            os.kill(victim.pid, signal.SIGKILL)
            victim.join(10)
            assert victim.exitcode == -signal.SIGKILL
            killed[role] += 1
            live[role].append(spawn[role]())
        # survivors finish: producers stop putting, consumers drain and exit
        stop.value = 1
        for p in live["producer"]:
            assert children.join(p, JOIN) == 0, f"a producer failed (seed {seed})"
        stop.value = 2
        for c in live["consumer"]:
            assert children.join(c, JOIN) == 0, f"a consumer failed (seed {seed})"
        # whatever a consumer did not take (nothing, normally) is drained here
        leftover = []
        while True:
            try:
                leftover.append(_enc(*_check_item(kind, ring.get(timeout=1.0))))
            except gb.Empty:
                break
        # the ring still works after all of that
        ring.put(_make_item(kind, MAX_PRODUCERS - 1, 0), timeout=5)
        assert _check_item(kind, ring.get(timeout=5)) == (MAX_PRODUCERS - 1, 0)
        assert ring.qsize() == 0
    finally:
        stop.value = 2
        ring.close()
        ring.unlink()   # the ring and any blob a killed producer left behind

    per_log = {path: _read_log(path) for path in logs}
    per_log["parent"] = np.array(leftover, np.int64)
    allv = np.concatenate(list(per_log.values()))
    vals, counts = np.unique(allv, return_counts=True)
    dups = vals[counts > 1]
    assert len(dups) == 0, (
        f"{len(dups)} items delivered twice, e.g. {[_dec(int(v)) for v in dups[:5]]} (seed {seed})")
    ks, ss = allv >> 32, allv & 0xFFFFFFFF
    # nothing that was never put; at most the in-flight put past committed[k]
    limit = np.array([committed[int(k)] for k in ks], np.int64)
    bad = np.nonzero(ss > limit)[0]
    assert len(bad) == 0, f"items beyond what was put: {[_dec(int(allv[i])) for i in bad[:5]]}"
    got = set(vals.tolist())
    lost = [(k, s) for k in range(len(producers)) for s in range(committed[k])
            if _enc(k, s) not in got]
    total = int(sum(committed[k] for k in range(len(producers))))
    assert len(lost) <= killed["consumer"], (
        f"{len(lost)} committed items lost but only {killed['consumer']} consumers were "
        f"killed, e.g. {lost[:5]} (seed {seed})")
    for tag, log in per_log.items():
        _check_order(tag, log)
    assert killed["producer"] + killed["consumer"] >= 10, "too few kills to mean anything"
    assert total >= 100, f"only {total} items committed: the ring barely moved"
    return dict(seed=seed, committed=total, delivered=len(allv), lost=len(lost), **killed)


def test_kill_producers_and_consumers(children, tmp_path):
    stats = _run_kills(children, tmp_path, 6.0, "small", dict(maxsize=8))
    print(stats)


def test_kill_mid_blob_items(children, tmp_path):
    """Items of 64-256 KiB through 1 KiB slots: consumers die mid-copy of
    out-of-line items, producers mid-spill."""
    stats = _run_kills(children, tmp_path, 5.0, "large", dict(maxsize=4, max_bytes=1024))
    print(stats)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("kind,kwargs", [
    ("small", dict(maxsize=8)),
    ("small", dict(maxsize=2)),
    ("blob", dict(maxsize=4, max_bytes=512)),
    ("large", dict(maxsize=4, max_bytes=1024)),
])
def test_kill_long(kind, kwargs, children, tmp_path):
    stats = _run_kills(children, tmp_path, 60.0, kind, kwargs, nprod=4, ncons=4)
    print(stats)


# -- dying while holding a claim (deterministic) --------------------------------------

def claim_and_die(ring, put, claimed, linger):
    """Claim a slot (to write if put, else to read), never commit it, tell
    the parent, wait ``linger`` seconds and SIGKILL ourselves."""
    ring._debug_claim(put, TIMEOUT)
    claimed.set()
    time.sleep(linger)
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("linger", [0.0, 0.3])
def test_dead_producer_claim_does_not_block_get(linger, children):
    """A producer killed between claiming a slot and committing it: the item
    it held is lost, a consumer blocked in get() moves on to the next item."""
    ring = gb.Ring(capacity=4)
    try:
        claimed = FORK.Event()
        p = children.start(FORK, claim_and_die, ring, True, claimed, linger)
        assert claimed.wait(TIMEOUT)
        ring.put("after")                # queued behind the dead claim
        t0 = time.monotonic()
        assert ring.get(timeout=TIMEOUT) == "after"
        took = time.monotonic() - t0
        p.join(5)
        assert p.exitcode == -signal.SIGKILL
        assert took < linger + 1.5, f"get() took {took:.2f}s to get past the dead claim"
        assert ring.qsize() == 0
        ring.put("again")
        assert ring.get(timeout=1) == "again"
    finally:
        ring.close()
        ring.unlink()


@pytest.mark.parametrize("linger", [0.0, 0.3])
def test_dead_consumer_claim_does_not_block_put(linger, children):
    """A consumer killed while reading (claim held): the item it held is
    lost, a producer blocked in put() on that slot takes it over."""
    ring = gb.Ring(1)                   # maxsize = capacity = 1
    try:
        ring.put("held")
        claimed = FORK.Event()
        p = children.start(FORK, claim_and_die, ring, False, claimed, linger)
        assert claimed.wait(TIMEOUT)
        assert ring.qsize() == 0
        t0 = time.monotonic()
        ring.put("next", timeout=TIMEOUT)
        took = time.monotonic() - t0
        p.join(5)
        assert p.exitcode == -signal.SIGKILL
        assert took < linger + 1.5, f"put() took {took:.2f}s to get past the dead claim"
        assert ring.get(timeout=1) == "next"
        with pytest.raises(gb.Empty):
            ring.get(timeout=0.05)
    finally:
        ring.close()
        ring.unlink()


def put_one(ring, item):
    ring.put(item, timeout=TIMEOUT)


@pytest.mark.parametrize("maxsize,capacity", [(1, 1), (1, 4), (0, 1)],
                         ids=["ring-full", "maxsize-full", "unbounded"])
def test_dead_consumer_wakes_parked_producer(maxsize, capacity, children):
    """A producer already asleep on a full ring (waiting for space, not on a
    claim) when the consumer that takes the item in its way dies holding it:
    no get() will ever commit that slot and wake the producer, yet its put()
    must go through within about a second, not at its next sleep slice."""
    ring = gb.Ring(maxsize, capacity=capacity)
    try:
        ring.put("a")
        producer = children.start(FORK, put_one, ring, "b")
        time.sleep(0.3)                  # parked on the space wait queue
        assert producer.exitcode is None
        claimed = FORK.Event()
        p = children.start(FORK, claim_and_die, ring, False, claimed, 0.0)
        assert claimed.wait(TIMEOUT)
        p.join(5)
        t0 = time.monotonic()
        assert children.join(producer, TIMEOUT) == 0
        took = time.monotonic() - t0
        assert took < 1.5, f"put() took {took:.2f}s to get past the dead consumer"
        assert ring.get(timeout=1) == "b"
    finally:
        ring.close()
        ring.unlink()


def get_one(ring, expect):
    assert ring.get(timeout=TIMEOUT) == expect


def test_dead_producer_with_everyone_parked(children):
    """Everyone asleep when a producer dies holding a claim: the consumer
    waits on an empty ring (no commit will wake it), the next producer on
    maxsize (the dead claim counts as an item).  The producer must recover
    the claim itself instead of waiting for the consumer's next sleep slice."""
    ring = gb.Ring(1)                    # maxsize = capacity = 1
    try:
        consumer = children.start(FORK, get_one, ring, "b")
        time.sleep(0.3)                  # parked on the data wait queue
        claimed = FORK.Event()
        p = children.start(FORK, claim_and_die, ring, True, claimed, 0.0)
        assert claimed.wait(TIMEOUT)
        p.join(5)
        t0 = time.monotonic()
        producer = children.start(FORK, put_one, ring, "b")
        assert children.join(producer, TIMEOUT) == 0
        assert children.join(consumer, TIMEOUT) == 0
        took = time.monotonic() - t0
        assert took < 1.5, f"the item took {took:.2f}s to get past the dead claim"
    finally:
        ring.close()
        ring.unlink()


def test_dead_claims_on_every_slot(children):
    """Every slot of a ring held by dead claimants (producers and consumers,
    several laps): blocked puts and gets recover them all, in bounded time,
    and only the held items are lost."""
    cap = 4
    ring = gb.Ring(capacity=cap)
    try:
        for i in range(2):
            ring.put(("old", i))
        deaths = []
        for put in (False, False, True, True):   # 2 readers die, 2 writers die
            ev = FORK.Event()
            deaths.append(children.start(FORK, claim_and_die, ring, put, ev, 0.0))
            assert ev.wait(TIMEOUT)
        for p in deaths:
            p.join(5)
            assert p.exitcode == -signal.SIGKILL
        t0 = time.monotonic()
        for i in range(10):             # laps over every dead slot
            ring.put(("new", i))
            assert ring.get(timeout=TIMEOUT) == ("new", i)
        assert time.monotonic() - t0 < 3.0
        assert ring.qsize() == 0
    finally:
        ring.close()
        ring.unlink()


# gb_slot (gb_ring.h): word @0, len @8, owner_start @16, stamp_ns @24, aux @32,
# owner_word @40 -- the claim word whose start time owner_start holds
_SLOT_WORD, _SLOT_OWNER_START, _SLOT_OWNER_WORD = 0, 16, 40


def _slot_offset(ring, pos):
    return ring._slots_offset + (pos % ring._nslots) * ring._slot_stride


def _claim_with_owner(ring, owner_start, owner_word):
    """Claim a slot to write (this process stays alive and holds it) and
    overwrite what the claim recorded about its owner."""
    pos = ring._debug_claim(True, 1)
    off = _slot_offset(ring, pos)
    mm = ring._segment.mm
    word = struct.unpack_from("<Q", mm, off + _SLOT_WORD)[0]
    struct.pack_into("<Q", mm, off + _SLOT_OWNER_START, owner_start)
    struct.pack_into("<Q", mm, off + _SLOT_OWNER_WORD, word if owner_word else 0)
    return off, word


def test_live_claim_not_judged_by_previous_owner_start():
    """Regression: a peer could read a claim word in the instant before its
    claimant stored its start time, judge the (live) claimant by the previous
    claimant's start time, declare it dead and free its slot; the claimant's
    commit then wrote a stale FULL word that wedged the ring for good.  A
    start time is now used only once the claim that stored it is recorded
    (owner_word); before that the check is by pid alone."""
    ring = gb.Ring(capacity=4)
    try:
        ring.put("first")
        assert ring.get(timeout=1) == "first"   # slot 0 recorded our start
        for _ in range(3):
            ring.put("x")
            ring.get(timeout=1)
        # next claim (slot 0 again): word says WRITING by us, owner fields
        # still those of an earlier claim by another process
        off, word = _claim_with_owner(ring, owner_start=1, owner_word=False)
        with pytest.raises(gb.Empty):
            ring.get(timeout=0.3)          # waits on the live claim ...
        mm = ring._segment.mm              # ... and leaves it alone
        assert struct.unpack_from("<Q", mm, off + _SLOT_WORD)[0] == word
    finally:
        ring.close()
        ring.unlink()


def test_claim_of_reused_pid_is_recovered():
    """The pid-reuse guard: a claim whose recorded start time is not that of
    the process now holding its pid belongs to a dead claimant."""
    ring = gb.Ring(capacity=4)
    try:
        off, word = _claim_with_owner(ring, owner_start=1, owner_word=True)
        ring.put("after")
        t0 = time.monotonic()
        assert ring.get(timeout=TIMEOUT) == "after"
        assert time.monotonic() - t0 < 1.5
        assert struct.unpack_from("<Q", ring._segment.mm, off + _SLOT_WORD)[0] != word
    finally:
        ring.close()
        ring.unlink()


def blob_producer_with_pid(ring, fake_pid, tag, die):
    """Put one out-of-line item as if this process had pid ``fake_pid`` (as
    far as blob naming goes), then exit or die."""
    import types

    import global_buffer.ring as ring_module
    real = ring_module.os
    fake = types.SimpleNamespace(**{k: getattr(real, k) for k in dir(real)
                                    if not k.startswith("__")})
    fake.getpid = lambda: fake_pid
    ring_module.os = fake
    ring.put((tag, bytes([tag]) * 5000))
    if die:
        os.kill(os.getpid(), signal.SIGKILL)
    ring.close()
    ring.join_thread()


@pytest.mark.parametrize("die", [False, True], ids=["exit", "killed"])
def test_blob_names_survive_pid_reuse(die, children):
    """Regression: blobs were named <ring>.b<pid>.<n>.  A later producer that
    got a dead producer's pid collided with its leftover blob (put() raised
    BufferExists) or, if that blob had been removed, reused a name a consumer
    still had mapped: the consumer returned the old item again and lost the
    new one."""
    ring = gb.Ring(4, max_bytes=256)
    try:
        p = children.start(FORK, blob_producer_with_pid, ring, 4000000, 1, die)
        first = ring.get(timeout=TIMEOUT)
        assert first[0] == 1 and first[1] == bytes([1]) * 5000
        children.join(p, JOIN)
        p = children.start(FORK, blob_producer_with_pid, ring, 4000000, 2, die)
        assert children.join(p, JOIN) == (-signal.SIGKILL if die else 0)
        second = ring.get(timeout=TIMEOUT)
        assert second[0] == 2 and second[1] == bytes([2]) * 5000
    finally:
        ring.close()
        ring.unlink()


# -- broadcast rings under contention -------------------------------------------------

def _bc_item(k, s):
    data = _blob_bytes(k, s, 64 + (s * 7919) % 3000)
    return (k, s, data, zlib.crc32(data))


def bc_producer(ring, k, n, stop):
    s = 0
    while (n is None or s < n) and not stop.value:
        ring.put(_bc_item(k, s))
        s += 1


def bc_reader(ring, path, stop):
    """Read every item this handle can (from its own cursor) until told to
    stop; check each one; report reads, overruns and the tail seen."""
    last, n = {}, 0
    while True:
        try:
            x = ring.get(timeout=0.2)
        except gb.Empty:
            if stop.value >= 2:
                break
            continue
        k, s, data, crc = x
        assert zlib.crc32(data) == crc and data == _bc_item(k, s)[2], f"torn item {(k, s)}"
        assert s > last.get(k, -1), f"producer {k}: seq {s} after {last.get(k)}"
        last[k] = s
        n += 1
    with open(path, "w") as f:
        json.dump({"reads": n, "overruns": ring.overruns, "producers": len(last)}, f)


def _run_broadcast(children, tmp_path, n, nprod, nread, capacity, kill_for=0.0, seed=None):
    seed = random.randrange(1 << 30) if seed is None else seed
    rng = random.Random(seed)
    ring = gb.Ring(broadcast=True, capacity=capacity)
    stop = FORK.RawValue("i", 0)
    try:
        paths = [str(tmp_path / f"r{i}.json") for i in range(nread)]
        readers = [children.start(FORK, bc_reader, ring, path, stop) for path in paths]
        producers = [children.start(FORK, bc_producer, ring, k, n, stop) for k in range(nprod)]
        killed = 0
        end = time.monotonic() + kill_for
        while time.monotonic() < end:
            time.sleep(rng.uniform(0.0, 0.05))
            i = rng.randrange(len(producers))
            os.kill(producers[i].pid, signal.SIGKILL)
            producers[i].join(10)
            killed += 1
            producers[i] = children.start(FORK, bc_producer, ring, nprod + killed, n, stop)
        if kill_for:
            stop.value = 1
        for p in producers:
            assert children.join(p, JOIN) == 0, f"a producer failed (seed {seed})"
        tail = ring._tail
        stop.value = 2
        for r in readers:
            assert children.join(r, JOIN) == 0, f"a reader failed (seed {seed})"
        reports = []
        for path in paths:
            with open(path) as f:
                reports.append(json.load(f))
    finally:
        stop.value = 2
        ring.close()
        ring.unlink()
    for rep in reports:
        # every sample committed was either read (intact) or counted as overrun
        assert rep["reads"] + rep["overruns"] == tail, (rep, tail, seed)
        assert rep["reads"] > 0
    return tail, reports, killed


def test_broadcast_contention(children, tmp_path):
    tail, reports, _ = _run_broadcast(children, tmp_path, 4000, 3, 3, capacity=8)
    assert tail == 3 * 4000


def test_broadcast_producers_killed(children, tmp_path):
    """Producers SIGKILLed at random (often while holding the producers'
    lock, mid-copy): the others steal the lock and go on; readers never see
    a torn item."""
    tail, reports, killed = _run_broadcast(children, tmp_path, None, 3, 2, capacity=8,
                                           kill_for=4.0)
    assert killed >= 10 and tail > 1000


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_broadcast_long(children, tmp_path):
    _run_broadcast(children, tmp_path, 50000, 4, 4, capacity=4)
    _run_broadcast(children, tmp_path, None, 4, 3, capacity=4, kill_for=60.0)


def lock_and_die(ring, locked):
    ring._debug_lock()
    locked.set()
    os.kill(os.getpid(), signal.SIGKILL)


def test_broadcast_dead_lock_holder(children):
    """A producer killed while holding the broadcast write lock, mid-sample:
    the next put() takes the lock over within about a second, and readers
    see the new item (never the abandoned one)."""
    ring = gb.Ring(broadcast=True, capacity=4)
    try:
        reader = gb.Ring.attach(ring.name)
        ring.put("before")
        locked = FORK.Event()
        p = children.start(FORK, lock_and_die, ring, locked)
        assert locked.wait(TIMEOUT)
        p.join(5)
        assert p.exitcode == -signal.SIGKILL
        t0 = time.monotonic()
        ring.put("after")
        assert time.monotonic() - t0 < 1.5
        assert reader.get(timeout=1) == "before"
        assert reader.get(timeout=1) == "after"
        with pytest.raises(gb.Empty):
            reader.get(timeout=0.05)
        reader.close()
    finally:
        ring.close()
        ring.unlink()
