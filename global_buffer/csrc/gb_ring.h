/* The global_buffer ring core: segment layout and ring operations.
 *
 * One layout and one slot protocol serve every face of the library:
 *
 *   - streams (single writer, many readers, overwrite-oldest): the writer
 *     publishes with a per-slot seqlock; readers copy and re-check;
 *   - queue rings (many producers, many consumers, lossless): producers and
 *     consumers claim a slot by CAS on the same slot word, so a process that
 *     dies holding a claim is visible (its pid is in the word) and can be
 *     recovered by a peer.
 *
 * The caller allocates the memory (a shared-memory segment, or plain malloc
 * in the C test); gb_ring_init() lays it out, gb_ring_open() validates it.
 * Nothing here opens files or segments, and nothing includes Python.h.
 *
 * Slot word (64 bits): [ pos:40 | pid:22 | state:2 ]
 *   pos    the ring position this slot currently belongs to (mod 2^40);
 *   pid    the process holding a claim (0 when free);
 *   state  FREE -> WRITING -> FULL -> READING -> FREE (queue), or
 *          WRITING -> FULL (stream).
 * Every change to a slot changes its word (pos grows each lap), which is what
 * makes the word usable as a seqlock sequence: a reader that sees the same
 * word before and after copying saw an untouched payload.
 *
 * Memory model: the seqlock follows Boehm, "Can seqlocks get along with
 * programming language memory models?" (MSPC 2012): writer does relaxed
 * mark + release fence + payload + release publish; reader does acquire
 * load + payload + acquire fence + relaxed re-load.  The payload itself is
 * copied with memcpy, as every production seqlock does (the Linux kernel's
 * seqcount, folly); the fences order it on weakly ordered CPUs (aarch64).
 */
#ifndef GB_RING_H
#define GB_RING_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <stdatomic.h>

#include "gb_platform.h"

/* ------------------------------------------------------------------ */
/* Constants                                                           */
/* ------------------------------------------------------------------ */

#define GB_MAGIC 0x31304752425F4247ULL /* "GB_RGR01" little-endian */
#define GB_LAYOUT_VERSION 1u
#define GB_CACHELINE 64u
#define GB_PAGE 4096u
#define GB_HEADER_SIZE 1024u        /* fixed part; metadata follows */
#define GB_SLOT_HEADER 64u          /* per-slot header; payload follows */
#define GB_MAX_SLOTS (1u << 30)
#define GB_MAX_META (1u << 20)

/* kinds of payload (what the Python layer stores in the slots) */
#define GB_KIND_ARRAY 1u   /* fixed dtype/shape numpy sample */
#define GB_KIND_MESSAGE 2u /* msgspec msgpack of a pydantic model */
#define GB_KIND_OBJECT 3u  /* pickled object (rings) */
#define GB_KIND_BYTES 4u   /* raw bytes (pipes) */
#define GB_KIND_MAX 4u

/* flags */
#define GB_FLAG_QUEUE 1u     /* lossless MPMC protocol (else stream) */
#define GB_FLAG_BROADCAST 2u /* ring in stream mode */

/* slot states */
#define GB_FREE 0u
#define GB_WRITING 1u
#define GB_FULL 2u
#define GB_READING 3u

/* status codes (turned into exceptions in exactly one Cython helper) */
#define GB_OK 0
#define GB_EMPTY 1       /* nothing to read */
#define GB_FULL_RING 2   /* no free slot */
#define GB_BUSY 3        /* a peer holds a claim we must wait for */
#define GB_STALE 4       /* slot changed under us (reader must retry) */
#define GB_E_MAGIC -1    /* not a global_buffer segment */
#define GB_E_VERSION -2  /* layout version we do not speak */
#define GB_E_LAYOUT -3   /* sizes inconsistent with each other */
#define GB_E_SIZE -4     /* segment smaller than its header says */
#define GB_E_ARG -5      /* bad argument to init */

/* ------------------------------------------------------------------ */
/* Segment layout                                                      */
/* ------------------------------------------------------------------ */

/* A wait queue: a futex word bumped on every wake, and a count of sleepers
 * so that the waking side makes no syscall when nobody sleeps. */
typedef struct gb_waitq {
    _Atomic uint32_t ev;      /* futex word: bumped before each wake */
    _Atomic uint32_t waiters; /* sleepers registered (low 31 bits) | GB_ARMED */
} gb_waitq;
/* Set by every sleeper as it registers, taken by the one waker that issues
 * the FUTEX_WAKE (see gb_wake). */
#define GB_ARMED 0x80000000u

/* One registered holder of a ring end: pid and role in one word (so a
 * single CAS claims the entry), start time beside it (pid-reuse guard). */
typedef struct gb_peer {
    _Atomic uint64_t who;   /* 0 = free, else pid | role << 32 */
    _Atomic uint64_t start; /* process start time */
} gb_peer;
#define GB_MAX_PEERS 40
#define GB_ROLE_WRITER 1u
#define GB_ROLE_READER 2u
#define GB_PEER_FILLING (1ULL << 63) /* in `who`: claimed, start not yet stored */

/* A point inside gb_wait_prepare where a test can run another peer's steps
 * (tests/c/test_wake_hook.c); nothing in a normal build. */
#ifndef GB_TEST_HOOK
#define GB_TEST_HOOK() ((void)0)
#endif

typedef struct gb_header {
    /* --- line 0: identity, written once by gb_ring_init --- */
    uint64_t magic;
    uint32_t version;
    uint32_t header_size;  /* GB_HEADER_SIZE at init */
    uint32_t kind;         /* GB_KIND_* */
    uint32_t flags;        /* GB_FLAG_* */
    uint32_t nslots;       /* slots in the ring */
    uint32_t capacity;     /* logical capacity: nslots-1 (stream), nslots (queue) */
    uint64_t slot_size;    /* payload bytes per slot */
    uint64_t slot_stride;  /* bytes from one slot to the next */
    uint64_t slots_offset; /* offset of slot 0 */
    uint64_t total_size;   /* bytes of the whole segment */
    /* --- line 1: identity, continued --- */
    uint64_t schema_hash;  /* 64-bit hash of the schema metadata */
    uint32_t meta_offset;  /* schema metadata (JSON, UTF-8) */
    uint32_t meta_len;
    int64_t maxsize;       /* queue bound (<= 0: unbounded) */
    uint64_t owner_pid;    /* creating process */
    uint64_t owner_start;  /* its start time (opaque, pid-reuse guard) */
    int64_t created_ns;    /* gb_now_ns() at creation */
    uint8_t _pad1[16];
    /* --- line 2: producer side, hot --- */
    _Atomic uint64_t tail;         /* stream: samples committed; queue: next position to claim */
    _Atomic int64_t heartbeat_ns;  /* writer's last sign of life (gb_now_ns) */
    _Atomic uint64_t writer_pid;   /* current stream writer */
    _Atomic uint64_t writer_start; /* its start time */
    uint8_t _pad2[32];
    /* --- line 3: consumer side, hot --- */
    _Atomic uint64_t head;         /* queue: next position to consume */
    _Atomic uint64_t wlock;        /* broadcast rings: producers' lock (holder pid) */
    uint8_t _pad3[48];
    /* --- line 4: wait queues --- */
    gb_waitq data;                 /* readers/consumers waiting for items */
    gb_waitq space;                /* producers waiting for free slots */
    gb_waitq join;                 /* JoinableRing.join() */
    _Atomic int64_t unfinished;    /* JoinableRing: tasks not yet done */
    _Atomic uint64_t wake_calls;   /* futex wake syscalls made (tests, stat) */
    _Atomic uint64_t readers;      /* attached handles (informational) */
    _Atomic uint32_t fd_armed;     /* pipes: a reader waits on the fd, so signal it */
    uint32_t _pad4a;
    _Atomic int64_t pending;       /* pipes: handles pickled but not yet attached */
    /* --- lines 5..14: which processes hold each end (pipes) --- */
    gb_peer peers[GB_MAX_PEERS];
    /* --- line 15: reserved for later layout growth --- */
    uint8_t _reserved[GB_HEADER_SIZE - 5 * GB_CACHELINE - GB_MAX_PEERS * 16];
} gb_header;

typedef struct gb_slot {
    _Atomic uint64_t word;     /* [pos:40 | pid:22 | state:2] */
    _Atomic uint64_t len;      /* payload length, read inside the seqlock */
    _Atomic uint64_t owner_start; /* claimant's start time (pid-reuse guard) */
    _Atomic int64_t stamp_ns;  /* commit time, for latency and stat */
    _Atomic uint64_t aux;      /* payload-specific (e.g. out-of-line flag) */
    _Atomic uint64_t owner_word; /* claim word whose owner_start is stored */
    uint8_t _pad[GB_SLOT_HEADER - 48];
} gb_slot;

_Static_assert(sizeof(gb_waitq) == 8, "gb_waitq must be 8 bytes");
_Static_assert(sizeof(gb_header) == GB_HEADER_SIZE, "header size");
_Static_assert(offsetof(gb_header, schema_hash) == 64, "line 1");
_Static_assert(offsetof(gb_header, tail) == 128, "line 2");
_Static_assert(offsetof(gb_header, head) == 192, "line 3");
_Static_assert(offsetof(gb_header, data) == 256, "line 4");
_Static_assert(sizeof(gb_slot) == GB_SLOT_HEADER, "slot header size");
_Static_assert(offsetof(gb_header, peers) == 320, "line 5");
_Static_assert(sizeof(gb_peer) == 16, "peer entry size");
_Static_assert(sizeof(_Atomic uint64_t) == 8, "lock-free 64-bit atomics");
_Static_assert(sizeof(_Atomic uint32_t) == 4, "lock-free 32-bit atomics");

/* Process-local view of a mapped segment (immutable fields cached, so the
 * hot path never re-reads or re-validates the header). */
typedef struct gb_ring {
    uint8_t *base;
    gb_header *hdr;
    uint8_t *slots;
    uint64_t stride;
    uint64_t slot_size;
    uint32_t nslots;
    uint32_t capacity;
    uint32_t kind;
    uint32_t flags;
} gb_ring;

/* ------------------------------------------------------------------ */
/* Slot words                                                          */
/* ------------------------------------------------------------------ */

#define GB_POS_BITS 40
#define GB_PID_BITS 22
#define GB_POS_MASK ((1ULL << GB_POS_BITS) - 1)
#define GB_PID_MASK ((1ULL << GB_PID_BITS) - 1)

GB_INLINE uint64_t gb_word(uint64_t pos, uint64_t pid, uint64_t state)
{
    return ((pos & GB_POS_MASK) << 24) | ((pid & GB_PID_MASK) << 2) | state;
}
GB_INLINE uint64_t gb_word_pos(uint64_t w) { return w >> 24; }
GB_INLINE uint32_t gb_word_pid(uint64_t w) { return (uint32_t)((w >> 2) & GB_PID_MASK); }
GB_INLINE uint32_t gb_word_state(uint64_t w) { return (uint32_t)(w & 3u); }

/* Signed distance a - b between two 40-bit positions (wrap-safe). */
GB_INLINE int64_t gb_pos_diff(uint64_t a, uint64_t b)
{
    uint64_t d = (a - b) & GB_POS_MASK;
    return (d & (1ULL << (GB_POS_BITS - 1))) ? (int64_t)(d | ~GB_POS_MASK)
                                             : (int64_t)d;
}

GB_INLINE gb_slot *gb_slot_at(const gb_ring *r, uint64_t pos)
{
    return (gb_slot *)(r->slots + (pos % r->nslots) * r->stride);
}
GB_INLINE uint8_t *gb_payload(gb_slot *s) { return (uint8_t *)s + GB_SLOT_HEADER; }

/* ------------------------------------------------------------------ */
/* Sizing, init, validation                                            */
/* ------------------------------------------------------------------ */

GB_INLINE uint64_t gb_round_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

/* Slot stride: cache-line aligned payloads; slots of half a page or more are
 * page aligned (large frames start on a page, which the copy loops and the
 * TLB like), small ones are packed to cache lines so a ring of small items
 * does not spend a page per item. */
GB_INLINE uint64_t gb_slot_stride(uint64_t slot_size)
{
    uint64_t s = gb_round_up(GB_SLOT_HEADER + slot_size, GB_CACHELINE);
    return s >= GB_PAGE / 2 ? gb_round_up(s, GB_PAGE) : s;
}

/* Bytes needed for a segment; 0 if the arguments are out of range. */
GB_INLINE uint64_t gb_ring_nbytes(uint32_t nslots, uint64_t slot_size, uint32_t meta_len)
{
    if (nslots < 1 || nslots > GB_MAX_SLOTS || meta_len > GB_MAX_META ||
        slot_size > (1ULL << 46))
        return 0;
    uint64_t off = gb_round_up(GB_HEADER_SIZE + (uint64_t)meta_len, GB_PAGE);
    /* nslots * stride can exceed 64 bits (2^30 * 2^46): a wrapped product
     * would let a forged header pass gb_ring_open with a tiny total_size */
    if (gb_slot_stride(slot_size) > ((1ULL << 62) - off) / nslots)
        return 0;
    return off + (uint64_t)nslots * gb_slot_stride(slot_size);
}

/* Lay out a zeroed segment of `size` bytes.  `capacity` is the logical
 * capacity: streams get capacity + 1 slots, queues exactly capacity. */
GB_INLINE int gb_ring_init(void *mem, uint64_t size, uint32_t kind, uint32_t flags,
                           uint32_t capacity, uint64_t slot_size, int64_t maxsize,
                           uint64_t schema_hash, const void *meta, uint32_t meta_len,
                           uint64_t owner_pid, uint64_t owner_start)
{
    gb_header *h = (gb_header *)mem;
    uint32_t nslots;
    if (capacity < 1 || kind < 1 || kind > GB_KIND_MAX)
        return GB_E_ARG;
    nslots = (flags & GB_FLAG_QUEUE) ? capacity : capacity + 1;
    uint64_t need = gb_ring_nbytes(nslots, slot_size, meta_len);
    if (need == 0 || need > size || capacity >= GB_MAX_SLOTS)
        return GB_E_ARG;
    /* relaxed: a peer may attach (gb_ring_open loads magic atomically) while
     * we lay the segment out, so magic is never a plain store; the rest is
     * published by the release store of magic at the end */
    atomic_store_explicit((_Atomic uint64_t *)&h->magic, 0, memory_order_relaxed);
    memset((uint8_t *)mem + sizeof h->magic, 0, GB_HEADER_SIZE - sizeof h->magic);
    h->version = GB_LAYOUT_VERSION;
    h->header_size = GB_HEADER_SIZE;
    h->kind = kind;
    h->flags = flags;
    h->nslots = nslots;
    h->capacity = capacity;
    h->slot_size = slot_size;
    h->slot_stride = gb_slot_stride(slot_size);
    h->slots_offset = gb_round_up(GB_HEADER_SIZE + (uint64_t)meta_len, GB_PAGE);
    h->total_size = need;
    h->schema_hash = schema_hash;
    h->meta_offset = GB_HEADER_SIZE;
    h->meta_len = meta_len;
    h->maxsize = maxsize;
    h->owner_pid = owner_pid;
    h->owner_start = owner_start;
    h->created_ns = gb_now_ns();
    if (meta_len)
        memcpy((uint8_t *)mem + GB_HEADER_SIZE, meta, meta_len);
    for (uint32_t i = 0; i < nslots; i++) {
        gb_slot *s = (gb_slot *)((uint8_t *)mem + h->slots_offset + (uint64_t)i * h->slot_stride);
        /* relaxed: the segment is published by the release store of magic */
        atomic_store_explicit(&s->word, gb_word(i, 0, GB_FREE), memory_order_relaxed);
        atomic_store_explicit(&s->len, 0, memory_order_relaxed);
    }
    /* Stream slots start as "belongs to no position yet": a word whose pos
     * can never match a sample a reader asks for (pos i - nslots). */
    if (!(flags & GB_FLAG_QUEUE)) {
        for (uint32_t i = 0; i < nslots; i++) {
            gb_slot *s = (gb_slot *)((uint8_t *)mem + h->slots_offset + (uint64_t)i * h->slot_stride);
            /* relaxed: published by the release store of magic below */
            atomic_store_explicit(&s->word, gb_word(i - (uint64_t)nslots, 0, GB_FREE),
                                  memory_order_relaxed);
        }
    }
    /* release: a peer that sees the magic sees a fully initialised header */
    atomic_store_explicit((_Atomic uint64_t *)&h->magic, GB_MAGIC, memory_order_release);
    return GB_OK;
}

/* Validate a mapped segment of `size` bytes and fill the local view.
 * Every size is checked against the others and against `size` with
 * overflow-safe arithmetic, so a garbage segment can never lead a later
 * operation out of bounds. */
GB_INLINE int gb_ring_open(gb_ring *r, void *mem, uint64_t size)
{
    const gb_header *h = (const gb_header *)mem;
    if (size < GB_HEADER_SIZE)
        return GB_E_SIZE;
    /* acquire: pairs with the release store in gb_ring_init */
    if (atomic_load_explicit((_Atomic uint64_t *)&h->magic, memory_order_acquire) != GB_MAGIC)
        return GB_E_MAGIC;
    if (h->version != GB_LAYOUT_VERSION)
        return GB_E_VERSION;
    if (h->header_size != GB_HEADER_SIZE || h->kind < 1 || h->kind > GB_KIND_MAX ||
        h->nslots < 1 || h->nslots > GB_MAX_SLOTS || h->capacity < 1 ||
        h->capacity != ((h->flags & GB_FLAG_QUEUE) ? h->nslots : h->nslots - 1) ||
        h->slot_size > (1ULL << 46) ||
        h->slot_stride != gb_slot_stride(h->slot_size) ||
        h->meta_offset != GB_HEADER_SIZE || h->meta_len > GB_MAX_META ||
        h->slots_offset != gb_round_up(GB_HEADER_SIZE + (uint64_t)h->meta_len, GB_PAGE) ||
        h->total_size == 0 /* gb_ring_nbytes' "out of range" */ ||
        h->total_size != gb_ring_nbytes(h->nslots, h->slot_size, h->meta_len))
        return GB_E_LAYOUT;
    if (h->total_size > size)
        return GB_E_SIZE;
    r->base = (uint8_t *)mem;
    r->hdr = (gb_header *)mem;
    r->slots = (uint8_t *)mem + h->slots_offset;
    r->stride = h->slot_stride;
    r->slot_size = h->slot_size;
    r->nslots = h->nslots;
    r->capacity = h->capacity;
    r->kind = h->kind;
    r->flags = h->flags;
    return GB_OK;
}

/* ------------------------------------------------------------------ */
/* Waiting and waking                                                  */
/* ------------------------------------------------------------------ */
/* Protocol (Dekker-style, race-free against a concurrent commit):
 *   sleeper: gb_wait_prepare (waiters++, set ARMED ; full fence ; snapshot ev)
 *            re-check condition; if still unmet gb_futex_wait(ev, snapshot)
 *            gb_wait_done (waiters--; the last one out clears ARMED)
 *   waker:   publish (release) ; gb_wake (full fence ; if ARMED: take it,
 *            ev++, wake all)
 * Either the sleeper's re-check sees the publish, or the waker sees ARMED
 * and bumps ev, which makes a late futex_wait return at once.  Taking the
 * flag makes a burst of commits cost one FUTEX_WAKE per sleep episode
 * instead of one per commit while the woken are still being scheduled. */

GB_INLINE uint32_t gb_wait_prepare(gb_waitq *q)
{
    /* The snapshot comes first.  Taken after arming, it could already hold
     * the ev bump of a waker that took our ARMED bit meanwhile: a later
     * publish then finds the bit gone and wakes nobody, and we would sleep
     * on an ev that never moves again (a lost wake-up; docs/design.md,
     * "Memory model").  Taken before, any such bump makes the futex wait
     * return at once and the caller re-arms.
     * acquire: a waker's publish before the ev we read is visible to the
     * re-check that follows */
    uint32_t seen = atomic_load_explicit(&q->ev, memory_order_acquire);
    /* relaxed RMWs: ordered before the re-check by the fence below */
    atomic_fetch_add_explicit(&q->waiters, 1, memory_order_relaxed);
    atomic_fetch_or_explicit(&q->waiters, GB_ARMED, memory_order_relaxed);
    GB_TEST_HOOK(); /* tests/c/test_wake_hook.c: a waker runs here */
    /* seq_cst: the count and the armed bit are visible before we re-check
     * the condition (pairs with the fence in gb_wake) */
    atomic_thread_fence(memory_order_seq_cst);
    return seen;
}
/* Sleepers registered on q now (a hint: they come and go). */
GB_INLINE uint32_t gb_wait_count(const gb_waitq *q)
{
    /* relaxed: informational */
    return atomic_load_explicit(&q->waiters, memory_order_relaxed) & ~GB_ARMED;
}
/* Sleep on q until a wake, timeout or signal (see gb_futex_wait). */
GB_INLINE int gb_wait_sleep(gb_waitq *q, uint32_t seen, int64_t timeout_ns, int64_t poll_ns,
                            int use_futex)
{
    return gb_futex_wait(&q->ev, seen, timeout_ns, poll_ns, use_futex);
}

GB_INLINE void gb_wait_done(gb_waitq *q)
{
    /* One RMW: the last sleeper to leave also disarms, so a ring nobody
     * sleeps on makes no syscall; a sleeper registering meanwhile either
     * comes before (the count stays > 0) or re-arms after. */
    /* relaxed: the CAS carries no data, only the count and the flag */
    uint32_t w = atomic_load_explicit(&q->waiters, memory_order_relaxed), n;
    do {
        n = w - 1;
        if ((n & ~GB_ARMED) == 0)
            n = 0;
    } while (!atomic_compare_exchange_weak_explicit(&q->waiters, &w, n, memory_order_relaxed,
                                                    memory_order_relaxed));
}
/* Called after publishing.  No syscall unless someone sleeps. */
GB_INLINE void gb_wake(gb_ring *r, gb_waitq *q)
{
    /* seq_cst fence: our publish must be visible before we read waiters
     * (pairs with the fence in gb_wait_prepare) */
    atomic_thread_fence(memory_order_seq_cst);
    /* relaxed: ordered by the fence above; a plain load first so a ring
     * with nobody asleep never writes this line */
    if (atomic_load_explicit(&q->waiters, memory_order_relaxed) & GB_ARMED) {
        /* acq_rel: one waker per sleep episode takes the armed bit, so a
         * burst of commits makes one FUTEX_WAKE, not one each, while the
         * woken sleepers are still on their way (they re-arm to sleep) */
        if (atomic_fetch_and_explicit(&q->waiters, ~GB_ARMED, memory_order_acq_rel) & GB_ARMED) {
            /* release: a sleeper that sees the new ev sees our publish */
            atomic_fetch_add_explicit(&q->ev, 1, memory_order_release);
            /* relaxed: statistics only */
            atomic_fetch_add_explicit(&r->hdr->wake_calls, 1, memory_order_relaxed);
            gb_futex_wake_all(&q->ev);
        }
    }
}
/* Wake every sleeper of q whether or not any registered (a handle closed
 * under a sleeping thread of its own process uses this). */
GB_INLINE void gb_wake_force(gb_ring *r, gb_waitq *q)
{
    /* release: as in gb_wake */
    atomic_fetch_add_explicit(&q->ev, 1, memory_order_release);
    /* relaxed: statistics only */
    atomic_fetch_add_explicit(&r->hdr->wake_calls, 1, memory_order_relaxed);
    gb_futex_wake_all(&q->ev);
}

/* ------------------------------------------------------------------ */
/* Streams: one writer, many readers, overwrite oldest                 */
/* ------------------------------------------------------------------ */

/* Start writing the next sample; returns its payload.  The slot's previous
 * occupant (pos - nslots) is already outside every reader's window, which is
 * why streams keep one spare slot. */
GB_INLINE uint8_t *gb_stream_begin(gb_ring *r, uint32_t pid, uint64_t *pos_out)
{
    /* relaxed: only the single writer stores tail */
    uint64_t pos = atomic_load_explicit(&r->hdr->tail, memory_order_relaxed);
    gb_slot *s = gb_slot_at(r, pos);
    /* relaxed store + release fence (Boehm): the WRITING mark is ordered
     * before every payload store that follows */
    atomic_store_explicit(&s->word, gb_word(pos, pid, GB_WRITING), memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    *pos_out = pos;
    return gb_payload(s);
}

/* Publish the sample begun at pos, stamped now_ns (a caller that reads the
 * clock anyway, for its heartbeat, passes its reading: one clock read per
 * write instead of two). */
GB_INLINE void gb_stream_commit_at(gb_ring *r, uint32_t pid, uint64_t pos, uint64_t len,
                                   int64_t now_ns)
{
    gb_slot *s = gb_slot_at(r, pos);
    /* relaxed: published by the release store of the word below */
    atomic_store_explicit(&s->len, len, memory_order_relaxed);
    atomic_store_explicit(&s->stamp_ns, now_ns, memory_order_relaxed);
    /* release: payload and len are visible to whoever sees FULL */
    atomic_store_explicit(&s->word, gb_word(pos, pid, GB_FULL), memory_order_release);
    /* release: a reader that sees tail > pos sees the slot's FULL word */
    atomic_store_explicit(&r->hdr->tail, pos + 1, memory_order_release);
    gb_wake(r, &r->hdr->data);
}

/* Publish the sample begun at pos, stamped with the current time. */
GB_INLINE void gb_stream_commit(gb_ring *r, uint32_t pid, uint64_t pos, uint64_t len)
{
    gb_stream_commit_at(r, pid, pos, len, gb_now_ns());
}

/* Start writing sample pos >= tail: a mirror that keeps its source's
 * sequence numbers (SPEC §9) jumps over the samples it never received.  The
 * slot may still hold a sample inside the readable window; a reader of it
 * sees the WRITING mark (stale) and finds itself lapped once pos commits.
 * The skipped positions keep older words: see gb_stream_skipped. */
GB_INLINE uint8_t *gb_stream_begin_at(gb_ring *r, uint32_t pid, uint64_t pos)
{
    gb_slot *s = gb_slot_at(r, pos);
    /* relaxed store + release fence: as in gb_stream_begin */
    atomic_store_explicit(&s->word, gb_word(pos, pid, GB_WRITING), memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    return gb_payload(s);
}

/* 1 if committed position pos (< tail) holds no sample because the writer
 * jumped over it (gb_stream_begin_at): its slot's word names an older
 * position.  A sample that was written names pos, or a newer position once
 * overwritten, so a plain stream never reports a skip. */
GB_INLINE int gb_stream_skipped(const gb_ring *r, uint64_t pos)
{
    /* acquire: pairs with the release stores of the slot word */
    uint64_t w = atomic_load_explicit(&gb_slot_at(r, pos)->word, memory_order_acquire);
    return gb_pos_diff(gb_word_pos(w), pos) < 0;
}

/* Abandon the sample begun at pos: tail never moved, so no reader can ask
 * for it, and the slot's old sample was already out of every window. */
GB_INLINE void gb_stream_abort(gb_ring *r, uint64_t pos)
{
    gb_slot *s = gb_slot_at(r, pos);
    /* release: a stale reader of the old occupant sees a changed word */
    atomic_store_explicit(&s->word, gb_word(pos - r->nslots, 0, GB_FREE), memory_order_release);
}

/* Committed samples so far (the next sample's sequence number). */
GB_INLINE uint64_t gb_stream_tail(const gb_ring *r)
{
    /* acquire: pairs with the release store in gb_stream_commit */
    return atomic_load_explicit(&r->hdr->tail, memory_order_acquire);
}

/* Move a reader cursor into the readable window [tail - capacity, tail).
 * Returns the tail seen; lost samples are added to *overruns. */
GB_INLINE uint64_t gb_stream_clamp(const gb_ring *r, uint64_t *cursor, uint64_t *overruns)
{
    uint64_t t = gb_stream_tail(r);
    if (t > *cursor && t - *cursor > r->capacity) {
        *overruns += t - r->capacity - *cursor;
        *cursor = t - r->capacity;
    }
    return t;
}

/* Seqlock read, step 1: the word and payload of sample pos, or GB_STALE if
 * the slot does not (or no longer) hold it. */
GB_INLINE int gb_read_begin(const gb_ring *r, uint64_t pos, uint64_t *word,
                            const uint8_t **payload, uint64_t *len)
{
    gb_slot *s = gb_slot_at(r, pos);
    /* acquire: payload loads below happen after this load */
    uint64_t w = atomic_load_explicit(&s->word, memory_order_acquire);
    if (gb_word_state(w) != GB_FULL || gb_word_pos(w) != (pos & GB_POS_MASK))
        return GB_STALE;
    /* relaxed: validated by the re-check in gb_read_check */
    uint64_t l = atomic_load_explicit(&s->len, memory_order_relaxed);
    if (l > r->slot_size)
        return GB_STALE; /* torn (or corrupt) length: never copy past the slot */
    *word = w;
    *payload = gb_payload(s);
    *len = l;
    return GB_OK;
}

/* Seqlock read, step 2: 1 if the slot still holds what step 1 saw. */
GB_INLINE int gb_read_check(const gb_ring *r, uint64_t pos, uint64_t word)
{
    gb_slot *s = gb_slot_at(r, pos);
    /* acquire fence (Boehm): payload loads above complete before re-load */
    atomic_thread_fence(memory_order_acquire);
    /* relaxed: ordered by the fence */
    return atomic_load_explicit(&s->word, memory_order_relaxed) == word;
}

/* The seqlock's payload copy, both ways: a stream writer's copy into the
 * slot it began (gb_stream_begin .. commit) and a reader's copy out
 * (gb_read_copy).  The two may overlap, the core's one deliberate data race:
 * the reader's re-check (gb_read_check) throws such a copy away.  Plain
 * memcpy, as the kernel's seqcount and folly do (Boehm 2012 discusses the
 * cost of doing it with atomics).  Kept in this one named function so that
 * ThreadSanitizer can suppress exactly this race (tests/c/tsan.supp) and
 * keeps checking every slot word, header field and counter.  Queue payloads
 * are read under a claim, never racily: they must not use this. */
GB_INLINE void gb_seqlock_copy(void *dst, const void *src, size_t n)
{
    memcpy(dst, src, n);
}

/* Copy sample pos into dst (at most cap bytes).  GB_OK, or GB_STALE if the
 * sample is gone or was overwritten during the copy. */
GB_INLINE int gb_read_copy(const gb_ring *r, uint64_t pos, void *dst, uint64_t cap,
                           uint64_t *len)
{
    uint64_t w, l;
    const uint8_t *p;
    if (gb_read_begin(r, pos, &w, &p, &l) != GB_OK)
        return GB_STALE;
    if (l > cap)
        l = cap;
    gb_seqlock_copy(dst, p, (size_t)l);
    if (!gb_read_check(r, pos, w))
        return GB_STALE;
    *len = l;
    return GB_OK;
}

/* ------------------------------------------------------------------ */
/* Queue rings: many producers, many consumers, each item once         */
/* ------------------------------------------------------------------ */
/* A Vyukov bounded MPMC queue whose claims are made on the slot word (not
 * on the counters), so a claim carries the claimant's pid.  tail and head
 * are hints that anyone may advance once the slot at that position has
 * been claimed; the slot words are the truth.  See docs/design.md. */

GB_INLINE void gb_help_advance(_Atomic uint64_t *ctr, uint64_t pos)
{
    /* relaxed: counters are hints; slot words carry all ordering */
    atomic_compare_exchange_strong_explicit(ctr, &pos, pos + 1, memory_order_relaxed,
                                            memory_order_relaxed);
}

/* Record who holds a claim we just made (see gb_slot_claim_start).  The
 * CAS that claimed the slot cannot store the start time too, so a peer may
 * see our claim word before these stores: owner_word says which claim the
 * start time belongs to. */
GB_INLINE void gb_set_owner(gb_slot *s, uint64_t claim, uint64_t start)
{
    /* relaxed: published by the release store of owner_word */
    atomic_store_explicit(&s->owner_start, start, memory_order_relaxed);
    /* release: a peer that reads owner_word == claim reads our start */
    atomic_store_explicit(&s->owner_word, claim, memory_order_release);
}

/* Claim a slot for writing.  GB_OK: *pos_out is ours.  GB_FULL_RING: every
 * slot holds an item.  GB_BUSY: the slot is held by a claim of the previous
 * lap (*blocker is its word; check its pid, see gb_queue_recover). */
GB_INLINE int gb_queue_put_begin(gb_ring *r, uint32_t pid, uint64_t start, uint64_t *pos_out,
                                 uint64_t *blocker)
{
    gb_header *h = r->hdr;
    for (;;) {
        /* relaxed: a hint; the CAS on the slot word decides */
        uint64_t pos = atomic_load_explicit(&h->tail, memory_order_relaxed);
        gb_slot *s = gb_slot_at(r, pos);
        /* acquire: the consumer that freed the slot finished reading it */
        uint64_t w = atomic_load_explicit(&s->word, memory_order_acquire);
        int64_t d = gb_pos_diff(gb_word_pos(w), pos & GB_POS_MASK);
        if (d == 0 && gb_word_state(w) == GB_FREE) {
            /* acquire on success: as for the load above */
            if (atomic_compare_exchange_strong_explicit(&s->word, &w,
                    gb_word(pos, pid, GB_WRITING), memory_order_acquire, memory_order_relaxed)) {
                gb_set_owner(s, gb_word(pos, pid, GB_WRITING), start);
                gb_help_advance(&h->tail, pos);
                *pos_out = pos;
                return GB_OK;
            }
        } else if (d >= 0) {
            gb_help_advance(&h->tail, pos); /* claimed by a peer or tail stale */
        } else {
            /* the previous lap still occupies the slot */
            if (atomic_load_explicit(&h->tail, memory_order_relaxed) != pos)
                continue;
            *blocker = w;
            *pos_out = pos; /* the full position of the slot holding us up */
            return gb_word_state(w) == GB_FULL ? GB_FULL_RING : GB_BUSY;
        }
    }
}

GB_INLINE void gb_queue_put_commit(gb_ring *r, uint32_t pid, uint64_t pos, uint64_t len)
{
    gb_slot *s = gb_slot_at(r, pos);
    /* relaxed: published by the release store of the word.  No stamp_ns:
     * nothing reads it for queue items, and the clock read was ~30 ns of a
     * ~500 ns small-item put (it stays 0) */
    atomic_store_explicit(&s->len, len, memory_order_relaxed);
    /* release: payload and len visible to the consumer that sees FULL */
    atomic_store_explicit(&s->word, gb_word(pos, pid, GB_FULL), memory_order_release);
    gb_wake(r, &r->hdr->data);
}

/* Claim the oldest item.  GB_OK: *pos_out is ours to read.  GB_EMPTY: no
 * item.  GB_BUSY: the next item is claimed by a producer that has not
 * committed yet, or its slot is still being read from the previous lap
 * (*blocker is the word holding it up). */
GB_INLINE int gb_queue_get_begin(gb_ring *r, uint32_t pid, uint64_t start, uint64_t *pos_out,
                                 uint64_t *blocker)
{
    gb_header *h = r->hdr;
    for (;;) {
        /* relaxed: a hint; the CAS on the slot word decides */
        uint64_t pos = atomic_load_explicit(&h->head, memory_order_relaxed);
        gb_slot *s = gb_slot_at(r, pos);
        /* acquire: the producer's payload is visible once we see FULL */
        uint64_t w = atomic_load_explicit(&s->word, memory_order_acquire);
        int64_t d = gb_pos_diff(gb_word_pos(w), pos & GB_POS_MASK);
        uint32_t st = gb_word_state(w);
        if (d == 0 && st == GB_FULL) {
            /* acquire on success: as for the load above */
            if (atomic_compare_exchange_strong_explicit(&s->word, &w,
                    gb_word(pos, pid, GB_READING), memory_order_acquire, memory_order_relaxed)) {
                gb_set_owner(s, gb_word(pos, pid, GB_READING), start);
                gb_help_advance(&h->head, pos);
                *pos_out = pos;
                return GB_OK;
            }
        } else if (d > 0 || (d == 0 && st == GB_READING)) {
            gb_help_advance(&h->head, pos); /* consumed by a peer or head stale */
        } else {
            if (atomic_load_explicit(&h->head, memory_order_relaxed) != pos)
                continue;
            if (d == 0 && st == GB_FREE)
                return GB_EMPTY;
            *blocker = w; /* WRITING at pos, or READING of the previous lap */
            *pos_out = pos; /* the full position of the slot holding us up */
            return GB_BUSY;
        }
    }
}

/* A caller's progress counter (the bridge's host-local count of items moved,
 * SPEC §9): stored with release order after the put or get commit it counts,
 * so a process killed between the two leaves a count that never includes an
 * item whose commit did not happen. */
GB_INLINE void gb_count_store(uint64_t *p, uint64_t v)
{
    atomic_store_explicit((_Atomic uint64_t *)p, v, memory_order_release);
}

GB_INLINE void gb_queue_get_commit(gb_ring *r, uint64_t pos)
{
    gb_slot *s = gb_slot_at(r, pos);
    /* release: our payload reads finish before a producer may reuse it */
    atomic_store_explicit(&s->word, gb_word(pos + r->nslots, 0, GB_FREE), memory_order_release);
    gb_wake(r, &r->hdr->space);
}

/* A claim whose holder died: free the slot for the next lap (the held item,
 * if any, is lost, as the contract allows).  Returns 1 if we recovered it,
 * 0 if the word changed meanwhile (someone else did, or it was live). */
GB_INLINE int gb_queue_recover(gb_ring *r, uint64_t at, uint64_t word)
{
    /* the slot comes from the full 64-bit position `at` (the word only keeps
     * 40 bits); the claim's own position is within a lap of it */
    uint64_t pos = at + (uint64_t)gb_pos_diff(gb_word_pos(word), at & GB_POS_MASK);
    gb_slot *s = gb_slot_at(r, at);
    uint64_t w = word;
    /* acq_rel: we take over the slot, and free it for the next lap */
    if (!atomic_compare_exchange_strong_explicit(&s->word, &w,
            gb_word(pos + r->nslots, 0, GB_FREE), memory_order_acq_rel, memory_order_relaxed))
        return 0;
    gb_help_advance(&r->hdr->head, pos);
    gb_wake(r, &r->hdr->data);
    gb_wake(r, &r->hdr->space);
    return 1;
}

/* ------------------------------------------------------------------ */
/* Small accessors for the binding (keeps _Atomic out of Cython)       */
/* ------------------------------------------------------------------ */

GB_INLINE void gb_set_heartbeat(gb_ring *r, int64_t now)
{
    /* relaxed: a liveness hint, read with a generous tolerance */
    atomic_store_explicit(&r->hdr->heartbeat_ns, now, memory_order_relaxed);
}
GB_INLINE int64_t gb_get_heartbeat(const gb_ring *r)
{
    /* relaxed: see gb_set_heartbeat */
    return atomic_load_explicit(&r->hdr->heartbeat_ns, memory_order_relaxed);
}
GB_INLINE void gb_set_writer(gb_ring *r, uint64_t pid, uint64_t start)
{
    /* relaxed: liveness information only */
    atomic_store_explicit(&r->hdr->writer_pid, pid, memory_order_relaxed);
    atomic_store_explicit(&r->hdr->writer_start, start, memory_order_relaxed);
}
GB_INLINE uint64_t gb_load_u64(_Atomic uint64_t *p)
{
    /* relaxed: statistics and liveness fields, no data depends on them */
    return atomic_load_explicit(p, memory_order_relaxed);
}
GB_INLINE int64_t gb_load_i64(_Atomic int64_t *p)
{
    /* relaxed: as gb_load_u64 */
    return atomic_load_explicit(p, memory_order_relaxed);
}
GB_INLINE int64_t gb_add_i64(_Atomic int64_t *p, int64_t v)
{
    /* acq_rel: counters such as unfinished tasks order with their items */
    return atomic_fetch_add_explicit(p, v, memory_order_acq_rel) + v;
}
GB_INLINE uint64_t gb_add_u64(_Atomic uint64_t *p, int64_t v)
{
    /* relaxed: informational counters */
    return atomic_fetch_add_explicit(p, (uint64_t)v, memory_order_relaxed) + (uint64_t)v;
}
GB_INLINE uint64_t gb_slot_word(const gb_ring *r, uint64_t pos)
{
    /* acquire: callers may go on to read the slot */
    return atomic_load_explicit(&gb_slot_at(r, pos)->word, memory_order_acquire);
}

GB_INLINE uint64_t gb_slot_owner_start(const gb_ring *r, uint64_t pos)
{
    /* relaxed: liveness information only */
    return atomic_load_explicit(&gb_slot_at(r, pos)->owner_start, memory_order_relaxed);
}
/* Start time of the claimant holding `claim` (a word read from its slot),
 * or 0 if it has not recorded it yet (or the slot moved on): the stored
 * start may still be the previous claimant's, and judging a live claimant
 * by another process's start time would declare it dead. */
GB_INLINE uint64_t gb_slot_claim_start(const gb_ring *r, uint64_t at, uint64_t claim)
{
    gb_slot *s = gb_slot_at(r, at);
    /* acquire: pairs with the release store in gb_set_owner */
    if (atomic_load_explicit(&s->owner_word, memory_order_acquire) != claim)
        return 0;
    /* relaxed: ordered by the acquire load above */
    return atomic_load_explicit(&s->owner_start, memory_order_relaxed);
}
GB_INLINE uint64_t gb_slot_aux(const gb_ring *r, uint64_t pos)
{
    /* relaxed: read inside a claim (or seqlock window) on the slot */
    return atomic_load_explicit(&gb_slot_at(r, pos)->aux, memory_order_relaxed);
}
GB_INLINE void gb_slot_set_aux(gb_ring *r, uint64_t pos, uint64_t aux)
{
    /* relaxed: published with the payload by the commit's release store */
    atomic_store_explicit(&gb_slot_at(r, pos)->aux, aux, memory_order_relaxed);
}
GB_INLINE uint64_t gb_slot_len(const gb_ring *r, uint64_t pos)
{
    /* relaxed: read inside a claim on the slot (acquired with the word) */
    return atomic_load_explicit(&gb_slot_at(r, pos)->len, memory_order_relaxed);
}

/* ------------------------------------------------------------------ */
/* Locks and out-of-line buffers ("blobs")                              */
/* ------------------------------------------------------------------ */
/* A lock word holds 0 (free) or the holder's pid, so a waiter can tell a
 * dead holder and take the lock over (gb_lock_steal). */

GB_INLINE int gb_lock_try(_Atomic uint64_t *lock, uint64_t pid)
{
    uint64_t expect = 0;
    /* acquire: the previous holder's writes happen before ours */
    return atomic_compare_exchange_strong_explicit(lock, &expect, pid, memory_order_acquire,
                                                   memory_order_relaxed);
}
GB_INLINE uint64_t gb_lock_holder(_Atomic uint64_t *lock)
{
    /* relaxed: only used to decide whether to check liveness */
    return atomic_load_explicit(lock, memory_order_relaxed);
}
GB_INLINE int gb_lock_steal(_Atomic uint64_t *lock, uint64_t dead, uint64_t pid)
{
    /* acquire: as gb_lock_try */
    return atomic_compare_exchange_strong_explicit(lock, &dead, pid, memory_order_acquire,
                                                   memory_order_relaxed);
}
GB_INLINE void gb_lock_release(_Atomic uint64_t *lock)
{
    /* release: our writes happen before the next holder's */
    atomic_store_explicit(lock, 0, memory_order_release);
}

/* A blob is a separate segment carrying one item too large for a slot.
 * Its first cache line is this header; its state word is a lock word:
 * 0 = free for its producer to reuse, else the pid of the process using it. */
typedef struct gb_blob {
    uint64_t magic;
    uint64_t size;          /* capacity of the data area */
    _Atomic uint64_t state; /* lock word, see above */
    _Atomic uint64_t len;   /* bytes of the item */
    uint8_t _pad[32];
} gb_blob;
_Static_assert(sizeof(gb_blob) == 64, "blob header size");
#define GB_BLOB_MAGIC 0x31304F4C425F4247ULL /* "GB_BLO01" */

/* ------------------------------------------------------------------ */
/* Peer table: who holds which end (pipes use it for EOF and EPIPE)    */
/* ------------------------------------------------------------------ */

/* Register (pid, role); returns the entry index, or -1 if the table is full. */
GB_INLINE int gb_peer_add(gb_ring *r, uint32_t pid, uint32_t role, uint64_t start)
{
    uint64_t who = (uint64_t)pid | ((uint64_t)role << 32);
    for (int i = 0; i < GB_MAX_PEERS; i++) {
        gb_peer *p = &r->hdr->peers[i];
        uint64_t expect = 0;
        /* relaxed: a hint; the CAS decides */
        if (atomic_load_explicit(&p->who, memory_order_relaxed) != 0)
            continue;
        /* Claim first, marked FILLING, then store the start time, then
         * clear the mark.  (Storing start before the CAS let a process that
         * lost the CAS overwrite the winner's start: the winner then looked
         * dead to every liveness check.)
         * relaxed: nothing is published by the claim itself */
        if (atomic_compare_exchange_strong_explicit(&p->who, &expect, who | GB_PEER_FILLING,
                                                    memory_order_relaxed, memory_order_relaxed)) {
            atomic_store_explicit(&p->start, start, memory_order_relaxed);
            /* release: whoever sees the entry without FILLING sees start */
            atomic_store_explicit(&p->who, who, memory_order_release);
            return i;
        }
    }
    return -1;
}

GB_INLINE void gb_peer_del(gb_ring *r, int idx, uint64_t who)
{
    uint64_t expect = who;
    if (idx < 0 || idx >= GB_MAX_PEERS)
        return;
    /* release: only clear the entry if it is still the one we made */
    atomic_compare_exchange_strong_explicit(&r->hdr->peers[idx].who, &expect, 0,
                                            memory_order_release, memory_order_relaxed);
}

/* Entry idx: returns its who word (0 if free) and its start time. */
GB_INLINE uint64_t gb_peer_get(const gb_ring *r, int idx, uint64_t *start)
{
    /* acquire: pairs with the release store in gb_peer_add */
    uint64_t w = atomic_load_explicit(&r->hdr->peers[idx].who, memory_order_acquire);
    if (w & GB_PEER_FILLING) {
        *start = 0; /* being registered: its start is not there yet (unknown) */
        return w & ~GB_PEER_FILLING;
    }
    /* relaxed: ordered by the acquire load above */
    *start = atomic_load_explicit(&r->hdr->peers[idx].start, memory_order_relaxed);
    return w;
}

GB_INLINE uint32_t gb_fd_armed(const gb_ring *r)
{
    /* relaxed: a late view only costs one wake byte or one poll slice */
    return atomic_load_explicit(&r->hdr->fd_armed, memory_order_relaxed);
}
GB_INLINE void gb_arm_fd(gb_ring *r)
{
    /* relaxed store + seq_cst fence: the flag is visible before the
     * reader's re-check loads the (relaxed) counters; a seq_cst store alone
     * does not order those later relaxed loads on aarch64 (pairs with the
     * fence in gb_wake, which a writer passes before gb_fd_armed) */
    atomic_store_explicit(&r->hdr->fd_armed, 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
}

/* Approximate number of items waiting (claimed-for-write minus consumed). */
GB_INLINE int64_t gb_queue_size(const gb_ring *r)
{
    /* relaxed: qsize is approximate by contract */
    uint64_t t = atomic_load_explicit(&r->hdr->tail, memory_order_relaxed);
    uint64_t hd = atomic_load_explicit(&r->hdr->head, memory_order_relaxed);
    return t >= hd ? (int64_t)(t - hd) : 0;
}

/* Spin (without sleeping, and without the GIL in the binding) for up to
 * spin_ns until a stream's tail passes `seen`.  1 if it did. */
GB_INLINE int gb_spin_tail(const gb_ring *r, uint64_t seen, int64_t spin_ns)
{
    int64_t end = gb_now_ns() + spin_ns;
    do {
        for (int i = 0; i < 64; i++) {
            if (gb_stream_tail(r) > seen)
                return 1;
            gb_cpu_relax();
        }
    } while (gb_now_ns() < end);
    return 0;
}

/* Spin for up to spin_ns until a queue ring looks ready for a put (a free
 * slot under `limit` items) or a get (an item).  A hint: the caller claims. */
GB_INLINE int gb_spin_queue(const gb_ring *r, int put, int64_t limit, int64_t spin_ns)
{
    int64_t end = gb_now_ns() + spin_ns;
    do {
        for (int i = 0; i < 64; i++) {
            int64_t n = gb_queue_size(r);
            if (put ? n < limit : n > 0)
                return 1;
            gb_cpu_relax();
        }
    } while (gb_now_ns() < end);
    return 0;
}

#endif /* GB_RING_H */
