/* C-level test of the global_buffer ring core on plain malloc'd buffers.
 *
 * No Python, no shared memory: the core only ever sees a pointer and a size
 * (STYLE 3), so a heap buffer exercises every code path, and a sanitizer
 * build (-fsanitize=address,undefined) catches any out-of-bounds access the
 * validation lets through.  Threads stand in for processes.
 *
 * Built and run by tests/test_c_core.py:
 *   cc -std=c11 -O2 -pthread -Wall -Werror -I. tests/c/test_ring.c -o test_ring
 *   ./test_ring            every group not marked as a known bug
 *   ./test_ring GROUP ...  just those groups (known-bug groups included)
 *   ./test_ring --list     group names
 *   ./test_ring --quick [GROUP ...]   a tenth of the threaded work (for the
 *                          ThreadSanitizer build and the aarch64 emulator)
 *
 * Exit status 0 when every check passed.  The last line is "N passed, N failed"
 * (counting checks).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "global_buffer/csrc/gb_ring.h"

/* ------------------------------------------------------------------ */
/* A tiny check framework                                              */
/* ------------------------------------------------------------------ */

/* Test-side atomics (check counters, flags, statistics shared by threads)
 * are relaxed: a relaxed operation creates no happens-before, so under
 * ThreadSanitizer every ordering between peers must come from the core's own
 * atomics, and a missing acquire/release in the core is not hidden by the
 * test's bookkeeping.  Results are read after pthread_join. */
#define TINC(x) atomic_fetch_add_explicit(&(x), 1, memory_order_relaxed)
#define TADD(x, v) atomic_fetch_add_explicit(&(x), (v), memory_order_relaxed)
#define TLOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)
#define TSTORE(x, v) atomic_store_explicit(&(x), (v), memory_order_relaxed)

static _Atomic long n_pass, n_fail;
static int quick; /* --quick: a tenth of the work (sanitizer and emulator runs) */
static const char *cur_group = "";

#define CHECK(cond)                                                                 \
    do {                                                                            \
        if (cond) {                                                                 \
            TINC(n_pass);                                                           \
        } else {                                                                    \
            TINC(n_fail);                                                           \
            fprintf(stderr, "FAIL [%s] %s:%d: %s\n", cur_group, __FILE__, __LINE__, \
                    #cond);                                                         \
        }                                                                           \
    } while (0)

#define CHECK_EQ(a, b)                                                                  \
    do {                                                                                \
        long long _a = (long long)(a), _b = (long long)(b);                             \
        if (_a == _b) {                                                                 \
            TINC(n_pass);                                                               \
        } else {                                                                        \
            TINC(n_fail);                                                               \
            fprintf(stderr, "FAIL [%s] %s:%d: %s == %s (%lld != %lld)\n", cur_group,    \
                    __FILE__, __LINE__, #a, #b, _a, _b);                                \
        }                                                                               \
    } while (0)

static void *xcalloc(size_t n)
{
    void *p = calloc(1, n ? n : 1);
    if (!p) {
        perror("calloc");
        exit(2);
    }
    return p;
}

/* deterministic PRNG (xorshift64*) so a failure reproduces */
static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;
static uint64_t rnd(void)
{
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* A freshly initialised segment on the heap. */
typedef struct seg {
    uint8_t *mem;
    uint64_t size;
    gb_ring r;
} seg;

static const char META[] = "{\"kind\":\"array\",\"dtype\":\"<u8\",\"shape\":[4]}";

static int seg_make(seg *s, uint32_t kind, uint32_t flags, uint32_t capacity,
                    uint64_t slot_size, int64_t maxsize)
{
    uint32_t nslots = (flags & GB_FLAG_QUEUE) ? capacity : capacity + 1;
    s->size = gb_ring_nbytes(nslots, slot_size, (uint32_t)strlen(META));
    if (s->size == 0)
        return GB_E_ARG;
    s->mem = xcalloc((size_t)s->size);
    int rc = gb_ring_init(s->mem, s->size, kind, flags, capacity, slot_size, maxsize,
                          0x1234abcdULL, META, (uint32_t)strlen(META), 4242, 99);
    if (rc != GB_OK)
        return rc;
    return gb_ring_open(&s->r, s->mem, s->size);
}

static void seg_free(seg *s)
{
    free(s->mem);
    s->mem = NULL;
}

/* Does a validated view stay inside [mem, mem + size)?  128-bit arithmetic
 * so that the check itself cannot wrap. */
static int view_in_bounds(const gb_ring *r, uint64_t size)
{
    const gb_header *h = r->hdr;
    unsigned __int128 end = (unsigned __int128)h->slots_offset +
                            (unsigned __int128)r->nslots * (unsigned __int128)r->stride;
    return end <= size && r->stride >= GB_SLOT_HEADER + r->slot_size &&
           (uint64_t)h->meta_offset + h->meta_len <= h->slots_offset &&
           h->slots_offset >= GB_HEADER_SIZE;
}

/* Touch every slot header and the last payload byte (ASan reports any byte
 * outside the heap buffer). */
static uint64_t touch_all_slots(const gb_ring *r)
{
    uint64_t acc = 0;
    for (uint32_t i = 0; i < r->nslots; i++) {
        gb_slot *s = gb_slot_at(r, i);
        acc += atomic_load_explicit(&s->word, memory_order_relaxed);
        if (r->slot_size)
            acc += gb_payload(s)[r->slot_size - 1];
    }
    return acc;
}

/* ------------------------------------------------------------------ */
/* Group: layout and sizing                                            */
/* ------------------------------------------------------------------ */

static void t_layout(void)
{
    CHECK_EQ(sizeof(gb_header), GB_HEADER_SIZE);
    CHECK_EQ(sizeof(gb_slot), GB_SLOT_HEADER);
    CHECK_EQ(offsetof(gb_header, tail) % GB_CACHELINE, 0);
    CHECK_EQ(offsetof(gb_header, head) % GB_CACHELINE, 0);
    CHECK(offsetof(gb_header, tail) / GB_CACHELINE != offsetof(gb_header, head) / GB_CACHELINE);

    /* strides: payloads cache-line aligned; big slots page aligned */
    uint64_t sizes[] = {0, 1, 8, 63, 64, 65, 1000, 1983, 1984, 1985, 2048, 4032, 4033,
                        4096, 32768, 921600, 6220800};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        uint64_t st = gb_slot_stride(sizes[i]);
        CHECK(st >= GB_SLOT_HEADER + sizes[i]);
        CHECK_EQ(st % GB_CACHELINE, 0);
        if (st >= GB_PAGE / 2)
            CHECK_EQ(st % GB_PAGE, 0);
        CHECK(st < GB_SLOT_HEADER + sizes[i] + GB_PAGE); /* no gross waste */
    }

    /* sizing: slots start on a page after header + metadata */
    uint64_t n = gb_ring_nbytes(4, 100, 10);
    CHECK_EQ(n, GB_PAGE + 4 * gb_slot_stride(100));
    n = gb_ring_nbytes(4, 100, GB_PAGE); /* metadata spills into a second page */
    CHECK_EQ(n, 2 * GB_PAGE + 4 * gb_slot_stride(100));

    /* out-of-range arguments give 0 */
    CHECK_EQ(gb_ring_nbytes(0, 100, 0), 0);
    CHECK_EQ(gb_ring_nbytes(GB_MAX_SLOTS + 1, 8, 0), 0);
    CHECK_EQ(gb_ring_nbytes(1, 8, GB_MAX_META + 1), 0);
    CHECK_EQ(gb_ring_nbytes(1, (1ULL << 46) + 1, 0), 0);
    CHECK(gb_ring_nbytes(1, 1ULL << 46, 0) > (1ULL << 46));

    /* slot words: fields round-trip, positions wrap at 40 bits */
    uint64_t w = gb_word(123456789ULL, 4194303u, GB_READING);
    CHECK_EQ(gb_word_pos(w), 123456789ULL);
    CHECK_EQ(gb_word_pid(w), 4194303u);
    CHECK_EQ(gb_word_state(w), GB_READING);
    CHECK_EQ(gb_word_pos(gb_word(GB_POS_MASK + 5, 0, GB_FREE)), 4);
    CHECK_EQ(gb_pos_diff(5, 3), 2);
    CHECK_EQ(gb_pos_diff(3, 5), -2);
    CHECK_EQ(gb_pos_diff(2, GB_POS_MASK), 3);  /* across the wrap */
    CHECK_EQ(gb_pos_diff(GB_POS_MASK, 2), -3);
}

/* ------------------------------------------------------------------ */
/* Group: init                                                         */
/* ------------------------------------------------------------------ */

static void t_init(void)
{
    uint64_t size = gb_ring_nbytes(4, 256, 0);
    uint8_t *mem = xcalloc((size_t)size);

    /* bad arguments */
    CHECK_EQ(gb_ring_init(mem, size, GB_KIND_ARRAY, 0, 0, 256, 0, 0, NULL, 0, 1, 1), GB_E_ARG);
    CHECK_EQ(gb_ring_init(mem, size, 0, 0, 3, 256, 0, 0, NULL, 0, 1, 1), GB_E_ARG);
    CHECK_EQ(gb_ring_init(mem, size, GB_KIND_MAX + 1, 0, 3, 256, 0, 0, NULL, 0, 1, 1), GB_E_ARG);
    CHECK_EQ(gb_ring_init(mem, size - 1, GB_KIND_ARRAY, 0, 3, 256, 0, 0, NULL, 0, 1, 1), GB_E_ARG);
    CHECK_EQ(gb_ring_init(mem, size, GB_KIND_ARRAY, 0, 4, 256, 0, 0, NULL, 0, 1, 1),
             GB_E_ARG); /* stream of capacity 4 needs 5 slots */
    CHECK_EQ(gb_ring_init(mem, size, GB_KIND_ARRAY, 0, GB_MAX_SLOTS, 0, 0, 0, NULL, 0, 1, 1),
             GB_E_ARG);
    /* a failed init leaves no magic behind */
    gb_ring r;
    CHECK_EQ(gb_ring_open(&r, mem, size), GB_E_MAGIC);

    /* a stream of capacity 3: 4 slots */
    CHECK_EQ(gb_ring_init(mem, size, GB_KIND_ARRAY, 0, 3, 256, 0, 77, "ab", 2, 4242, 99), GB_OK);
    CHECK_EQ(gb_ring_open(&r, mem, size), GB_OK);
    CHECK_EQ(r.nslots, 4);
    CHECK_EQ(r.capacity, 3);
    CHECK_EQ(r.kind, GB_KIND_ARRAY);
    CHECK_EQ(r.slot_size, 256);
    CHECK_EQ(r.stride, gb_slot_stride(256));
    CHECK_EQ(r.hdr->schema_hash, 77);
    CHECK_EQ(r.hdr->meta_len, 2);
    CHECK(memcmp(r.base + r.hdr->meta_offset, "ab", 2) == 0);
    CHECK_EQ(r.hdr->owner_pid, 4242);
    CHECK_EQ(r.hdr->owner_start, 99);
    CHECK(r.hdr->created_ns > 0);
    CHECK_EQ(gb_stream_tail(&r), 0);
    CHECK_EQ(((uintptr_t)r.slots - (uintptr_t)mem) % GB_PAGE, 0);
    CHECK_EQ(((uintptr_t)gb_payload(gb_slot_at(&r, 1)) - (uintptr_t)mem) % GB_CACHELINE, 0);
    CHECK(view_in_bounds(&r, size));
    /* no stream slot claims to hold any sample yet */
    for (uint64_t p = 0; p < 8; p++) {
        uint64_t w = 0, l = 0;
        const uint8_t *pl;
        CHECK_EQ(gb_read_begin(&r, p, &w, &pl, &l), GB_STALE);
    }

    /* a queue of capacity 4: exactly 4 slots */
    memset(mem, 0xAB, (size_t)size); /* init must not rely on zeroed slots */
    CHECK_EQ(gb_ring_init(mem, size, GB_KIND_OBJECT, GB_FLAG_QUEUE, 4, 256, 10, 0, NULL, 0, 1, 1),
             GB_OK);
    CHECK_EQ(gb_ring_open(&r, mem, size), GB_OK);
    CHECK_EQ(r.nslots, 4);
    CHECK_EQ(r.capacity, 4);
    CHECK_EQ(r.hdr->maxsize, 10);
    CHECK_EQ(gb_queue_size(&r), 0);
    free(mem);
}

/* ------------------------------------------------------------------ */
/* Group: open validation (corrupt headers)                            */
/* ------------------------------------------------------------------ */

typedef void (*mutator)(gb_header *h);
#define MUT(name, stmt) static void name(gb_header *h) { stmt; }
MUT(m_header_size, h->header_size = 512)
MUT(m_kind0, h->kind = 0)
MUT(m_kind_big, h->kind = 99)
MUT(m_nslots0, h->nslots = 0)
MUT(m_nslots_big, h->nslots = GB_MAX_SLOTS + 1)
MUT(m_nslots_plus, h->nslots += 1)
MUT(m_cap0, h->capacity = 0)
MUT(m_cap_plus, h->capacity += 1)
MUT(m_flags_queue, h->flags |= GB_FLAG_QUEUE) /* capacity no longer matches */
MUT(m_slot_size, h->slot_size += 4096)
MUT(m_slot_size_huge, h->slot_size = ~0ULL)
MUT(m_stride, h->slot_stride += 64)
MUT(m_stride0, h->slot_stride = 0)
MUT(m_slots_offset, h->slots_offset += GB_PAGE)
MUT(m_slots_offset0, h->slots_offset = 0)
MUT(m_total, h->total_size -= 1)
MUT(m_total_huge, h->total_size = ~0ULL)
MUT(m_meta_offset, h->meta_offset = 0)
MUT(m_meta_len, h->meta_len = GB_MAX_META + 1)
MUT(m_meta_len_page, h->meta_len = GB_PAGE * 2)

static void t_open(void)
{
    seg s;
    CHECK_EQ(seg_make(&s, GB_KIND_ARRAY, 0, 3, 300, 0), GB_OK);
    uint8_t *copy = xcalloc((size_t)s.size);
    gb_ring r;

    /* too small for a header, zeroed, garbage, wrong version */
    CHECK_EQ(gb_ring_open(&r, s.mem, 0), GB_E_SIZE);
    CHECK_EQ(gb_ring_open(&r, s.mem, GB_HEADER_SIZE - 1), GB_E_SIZE);
    CHECK_EQ(gb_ring_open(&r, copy, s.size), GB_E_MAGIC); /* zeroed */
    memset(copy, 0xFF, (size_t)s.size);
    CHECK_EQ(gb_ring_open(&r, copy, s.size), GB_E_MAGIC);
    memcpy(copy, s.mem, (size_t)s.size);
    ((gb_header *)copy)->version = GB_LAYOUT_VERSION + 1;
    CHECK_EQ(gb_ring_open(&r, copy, s.size), GB_E_VERSION);

    /* truncated: header fine, segment shorter than it says */
    CHECK_EQ(gb_ring_open(&r, s.mem, s.size - 1), GB_E_SIZE);
    CHECK_EQ(gb_ring_open(&r, s.mem, GB_HEADER_SIZE), GB_E_SIZE);
    CHECK_EQ(gb_ring_open(&r, s.mem, s.size + 4096), GB_OK); /* larger mapping is fine */

    /* every inconsistent field is refused */
    mutator muts[] = {m_header_size, m_kind0, m_kind_big, m_nslots0, m_nslots_big,
                      m_nslots_plus, m_cap0, m_cap_plus, m_flags_queue, m_slot_size,
                      m_slot_size_huge, m_stride, m_stride0, m_slots_offset,
                      m_slots_offset0, m_total, m_total_huge, m_meta_offset, m_meta_len,
                      m_meta_len_page};
    for (size_t i = 0; i < sizeof muts / sizeof muts[0]; i++) {
        memcpy(copy, s.mem, (size_t)s.size);
        muts[i]((gb_header *)copy);
        int rc = gb_ring_open(&r, copy, s.size);
        if (rc == GB_OK)
            fprintf(stderr, "  mutation #%zu was accepted\n", i);
        CHECK(rc == GB_E_LAYOUT || rc == GB_E_SIZE);
    }

    /* a segment made larger consistently, but truncated: size error */
    memcpy(copy, s.mem, (size_t)s.size);
    {
        gb_header *h = (gb_header *)copy;
        h->nslots = 100;
        h->capacity = 99;
        h->total_size = gb_ring_nbytes(100, h->slot_size, h->meta_len);
    }
    CHECK_EQ(gb_ring_open(&r, copy, s.size), GB_E_SIZE);

    free(copy);
    seg_free(&s);
}

/* Random corruption: bytes of a valid header flipped, whole headers of
 * noise, random truncation.  Whatever gb_ring_open accepts must describe
 * memory inside the buffer (checked arithmetically, and by touching every
 * slot, which ASan watches in the sanitizer build). */
static void t_fuzz(void)
{
    seg s;
    CHECK_EQ(seg_make(&s, GB_KIND_MESSAGE, 0, 5, 1000, 0), GB_OK);
    long accepted = 0, refused = 0, bad = 0;
    const int iters = 20000;
    for (int it = 0; it < iters; it++) {
        uint64_t size = s.size;
        uint8_t *copy = malloc((size_t)size); /* exact size: ASan catches overruns */
        memcpy(copy, s.mem, (size_t)size);
        gb_header *h = (gb_header *)copy;
        switch (it % 4) {
        case 0: /* flip a few random bytes of the header */
            for (int k = 1 + (int)(rnd() % 4); k > 0; k--)
                copy[8 + rnd() % (GB_HEADER_SIZE - 8)] ^= (uint8_t)(1 + rnd() % 255);
            break;
        case 1: /* one identity field set to a random (often huge) value */
            switch (rnd() % 9) {
            case 0: h->nslots = (uint32_t)rnd(); break;
            case 1: h->capacity = (uint32_t)rnd(); break;
            case 2: h->slot_size = rnd() >> (rnd() % 64); break;
            case 3: h->slot_stride = rnd() >> (rnd() % 64); break;
            case 4: h->slots_offset = rnd() >> (rnd() % 64); break;
            case 5: h->total_size = rnd() >> (rnd() % 64); break;
            case 6: h->meta_len = (uint32_t)rnd(); break;
            case 7: h->meta_offset = (uint32_t)rnd(); break;
            default: h->flags = (uint32_t)rnd(); break;
            }
            break;
        case 2: /* noise after a valid magic and version */
            for (uint32_t k = 12; k < GB_HEADER_SIZE; k++)
                copy[k] = (uint8_t)rnd();
            break;
        default: /* truncated */
            size = rnd() % s.size;
            break;
        }
        gb_ring r;
        int rc = gb_ring_open(&r, copy, size);
        if (rc == GB_OK) {
            accepted++;
            if (!view_in_bounds(&r, size)) {
                bad++;
            } else {
                (void)touch_all_slots(&r);
            }
        } else {
            refused++;
            CHECK(rc == GB_E_MAGIC || rc == GB_E_VERSION || rc == GB_E_LAYOUT ||
                  rc == GB_E_SIZE);
        }
        free(copy);
    }
    CHECK_EQ(bad, 0);
    CHECK(refused > iters / 2);
    CHECK(accepted > 0); /* flips of unused header bytes stay valid */
    seg_free(&s);
}

/* ------------------------------------------------------------------ */
/* Group: streams, single thread                                       */
/* ------------------------------------------------------------------ */

/* A stream writer copies its sample in with gb_seqlock_copy, as readers
 * copy it out: both sides of the seqlock's payload race in one function. */
static void write_u64s(gb_ring *r, uint32_t pid, uint64_t value, uint64_t n)
{
    uint64_t pos = 0, v[8];
    uint8_t *p = gb_stream_begin(r, pid, &pos);
    for (uint64_t i = 0; i < n; i++) {
        v[i % 8] = value + i;
        if (i % 8 == 7 || i == n - 1)
            gb_seqlock_copy(p + 8 * (i - i % 8), v, (size_t)(8 * (i % 8 + 1)));
    }
    gb_stream_commit(r, pid, pos, 8 * n);
}

static void t_stream(void)
{
    seg s;
    CHECK_EQ(seg_make(&s, GB_KIND_ARRAY, 0, 3, 32, 0), GB_OK);
    gb_ring *r = &s.r;
    uint64_t buf[4] = {0}, len = 0, overruns = 0, cursor = 0;

    CHECK_EQ(gb_read_copy(r, 0, buf, sizeof buf, &len), GB_STALE); /* nothing yet */
    write_u64s(r, 7, 100, 4);
    CHECK_EQ(gb_stream_tail(r), 1);
    CHECK_EQ(gb_read_copy(r, 0, buf, sizeof buf, &len), GB_OK);
    CHECK_EQ(len, 32);
    CHECK_EQ(buf[0], 100);
    CHECK_EQ(buf[3], 103);
    CHECK_EQ(gb_word_pid(gb_slot_word(r, 0)), 7);
    CHECK_EQ(gb_word_state(gb_slot_word(r, 0)), GB_FULL);
    CHECK_EQ(gb_read_copy(r, 1, buf, sizeof buf, &len), GB_STALE); /* not written yet */
    /* a short destination gets a short copy, never an overrun */
    uint64_t one = 0;
    CHECK_EQ(gb_read_copy(r, 0, &one, 8, &len), GB_OK);
    CHECK_EQ(len, 8);
    CHECK_EQ(one, 100);

    /* no waiter: publishing made no wake syscall */
    CHECK_EQ(gb_load_u64(&r->hdr->wake_calls), 0);

    /* fill past capacity: the reader is lapped and clamped */
    for (uint64_t i = 1; i < 10; i++)
        write_u64s(r, 7, 100 * (i + 1), 4);
    CHECK_EQ(gb_stream_tail(r), 10);
    uint64_t t = gb_stream_clamp(r, &cursor, &overruns);
    CHECK_EQ(t, 10);
    CHECK_EQ(cursor, 7); /* window [tail - capacity, tail) */
    CHECK_EQ(overruns, 7);
    for (uint64_t p = 7; p < 10; p++) {
        CHECK_EQ(gb_read_copy(r, p, buf, sizeof buf, &len), GB_OK);
        CHECK_EQ(buf[0], 100 * (p + 1));
    }
    /* the spare slot still holds 6 (outside the window, harmless); 5 is gone */
    CHECK_EQ(gb_read_copy(r, 5, buf, sizeof buf, &len), GB_STALE);
    /* a cursor inside the window is left alone */
    cursor = 8;
    overruns = 0;
    gb_stream_clamp(r, &cursor, &overruns);
    CHECK_EQ(cursor, 8);
    CHECK_EQ(overruns, 0);

    /* seqlock: a read that began before the writer reused its slot fails
     * the re-check; a slot being written is never readable */
    uint64_t w = 0, l = 0;
    const uint8_t *pl;
    CHECK_EQ(gb_read_begin(r, 7, &w, &pl, &l), GB_OK); /* slot 7 % 4 == 3 */
    uint64_t pos = 0;
    uint8_t *dst = gb_stream_begin(r, 7, &pos); /* pos 10 -> slot 2 */
    CHECK_EQ(pos, 10);
    CHECK(gb_read_check(r, 7, w)); /* different slot: untouched */
    CHECK_EQ(gb_read_copy(r, 10, buf, sizeof buf, &len), GB_STALE); /* in progress */
    memset(dst, 0, 32);
    gb_stream_commit(r, 7, pos, 32);
    dst = gb_stream_begin(r, 7, &pos); /* pos 11 -> slot 3, which holds 7 */
    CHECK(!gb_read_check(r, 7, w));
    CHECK_EQ(gb_read_copy(r, 7, buf, sizeof buf, &len), GB_STALE);
    CHECK_EQ(gb_read_copy(r, 11, buf, sizeof buf, &len), GB_STALE);

    /* abort: nothing published, the tail does not move */
    gb_stream_abort(r, pos);
    CHECK_EQ(gb_stream_tail(r), 11);
    CHECK_EQ(gb_read_copy(r, 11, buf, sizeof buf, &len), GB_STALE);
    CHECK_EQ(gb_read_copy(r, 10, buf, sizeof buf, &len), GB_OK); /* newest still there */
    CHECK_EQ(gb_read_copy(r, 9, buf, sizeof buf, &len), GB_OK);
    write_u64s(r, 7, 5000, 4); /* the next write takes position 11 */
    CHECK_EQ(gb_read_copy(r, 11, buf, sizeof buf, &len), GB_OK);
    CHECK_EQ(buf[0], 5000);

    /* a corrupt length is refused, never copied */
    gb_slot *sl = gb_slot_at(r, 11);
    atomic_store(&sl->len, r->slot_size + 1);
    CHECK_EQ(gb_read_copy(r, 11, buf, sizeof buf, &len), GB_STALE);
    CHECK_EQ(gb_read_begin(r, 11, &w, &pl, &l), GB_STALE);
    seg_free(&s);

    /* positions keep working across the 40-bit wrap of the slot word */
    CHECK_EQ(seg_make(&s, GB_KIND_ARRAY, 0, 2, 8, 0), GB_OK);
    r = &s.r;
    uint64_t start = GB_POS_MASK - 2;
    atomic_store(&r->hdr->tail, start);
    for (uint64_t i = 0; i < 6; i++) {
        write_u64s(r, 1, start + i, 1);
        CHECK_EQ(gb_read_copy(r, start + i, buf, 8, &len), GB_OK);
        CHECK_EQ(buf[0], start + i);
        if (i >= 2)
            CHECK_EQ(gb_read_copy(r, start + i - 2, buf, 8, &len), GB_OK);
        if (i >= 3)
            CHECK_EQ(gb_read_copy(r, start + i - 3, buf, 8, &len), GB_STALE);
    }
    seg_free(&s);
}

/* ------------------------------------------------------------------ */
/* Group: queues, single thread                                        */
/* ------------------------------------------------------------------ */

static int qput(gb_ring *r, uint32_t pid, uint64_t v)
{
    uint64_t pos = 0, blocker = 0;
    int rc = gb_queue_put_begin(r, pid, 0, &pos, &blocker);
    if (rc != GB_OK)
        return rc;
    memcpy(gb_payload(gb_slot_at(r, pos)), &v, 8);
    gb_queue_put_commit(r, pid, pos, 8);
    return GB_OK;
}

static int qget(gb_ring *r, uint32_t pid, uint64_t *v)
{
    uint64_t pos = 0, blocker = 0;
    int rc = gb_queue_get_begin(r, pid, 0, &pos, &blocker);
    if (rc != GB_OK)
        return rc;
    gb_slot *s = gb_slot_at(r, pos);
    uint64_t len = atomic_load_explicit(&s->len, memory_order_relaxed);
    if (len != 8)
        return -100;
    memcpy(v, gb_payload(s), 8);
    gb_queue_get_commit(r, pos);
    return GB_OK;
}

static void t_queue(void)
{
    seg s;
    CHECK_EQ(seg_make(&s, GB_KIND_OBJECT, GB_FLAG_QUEUE, 3, 16, 0), GB_OK);
    gb_ring *r = &s.r;
    uint64_t v = 0, pos = 0, blocker = 0;

    CHECK_EQ(qget(r, 1, &v), GB_EMPTY);
    CHECK_EQ(qput(r, 1, 10), GB_OK);
    CHECK_EQ(qput(r, 1, 11), GB_OK);
    CHECK_EQ(gb_queue_size(r), 2);
    CHECK_EQ(qput(r, 1, 12), GB_OK);
    CHECK_EQ(qput(r, 1, 13), GB_FULL_RING); /* capacity 3 */
    CHECK_EQ(gb_queue_size(r), 3);
    for (uint64_t i = 10; i < 13; i++) {
        CHECK_EQ(qget(r, 2, &v), GB_OK);
        CHECK_EQ(v, i); /* FIFO */
    }
    CHECK_EQ(qget(r, 2, &v), GB_EMPTY);
    CHECK_EQ(gb_queue_size(r), 0);

    /* many laps keep FIFO order and the size right */
    for (uint64_t i = 0; i < 1000; i++) {
        CHECK_EQ(qput(r, 1, i), GB_OK);
        if (i % 2) {
            CHECK_EQ(qget(r, 2, &v), GB_OK);
            CHECK_EQ(qget(r, 2, &v), GB_OK);
            CHECK_EQ(v, i);
        }
    }
    CHECK_EQ(gb_queue_size(r), 0);
    CHECK_EQ(gb_load_u64(&r->hdr->wake_calls), 0); /* nobody slept: no syscall */

    /* a producer that has claimed but not committed blocks consumers (BUSY,
     * with its pid in the blocking word) without losing later items */
    CHECK_EQ(gb_queue_put_begin(r, 555, 0, &pos, &blocker), GB_OK);
    CHECK_EQ(qput(r, 1, 77), GB_OK);
    CHECK_EQ(gb_queue_get_begin(r, 2, 0, &pos, &blocker), GB_BUSY);
    CHECK_EQ(gb_word_pid(blocker), 555);
    CHECK_EQ(gb_word_state(blocker), GB_WRITING);
    /* ... until its owner commits */
    memcpy(gb_payload(gb_slot_at(r, pos)), &(uint64_t){76}, 8);
    gb_queue_put_commit(r, 555, pos, 8);
    CHECK_EQ(qget(r, 2, &v), GB_OK);
    CHECK_EQ(v, 76);
    CHECK_EQ(qget(r, 2, &v), GB_OK);
    CHECK_EQ(v, 77);
    CHECK_EQ(qget(r, 2, &v), GB_EMPTY);
    seg_free(&s);
}

/* A process that died holding a claim is recovered by a peer: the held item
 * is lost, nothing else is, and the ring is usable again. */
static void t_recover(void)
{
    seg s;
    CHECK_EQ(seg_make(&s, GB_KIND_OBJECT, GB_FLAG_QUEUE, 2, 16, 0), GB_OK);
    gb_ring *r = &s.r;
    uint64_t v = 0, pos = 0, blocker = 0, dead_pos = 0;

    /* dead producer: claimed position 0, never committed */
    CHECK_EQ(gb_queue_put_begin(r, 666, 12345, &dead_pos, &blocker), GB_OK);
    CHECK_EQ(gb_slot_owner_start(r, dead_pos), 12345); /* pid-reuse guard recorded */
    CHECK_EQ(qput(r, 1, 21), GB_OK);
    CHECK_EQ(gb_queue_get_begin(r, 2, 0, &pos, &blocker), GB_BUSY);
    CHECK_EQ(gb_word_pid(blocker), 666);
    CHECK_EQ(gb_queue_recover(r, pos, blocker), 1);
    CHECK_EQ(gb_queue_recover(r, pos, blocker), 0); /* second time: word changed */
    CHECK_EQ(qget(r, 2, &v), GB_OK);
    CHECK_EQ(v, 21);
    CHECK_EQ(qget(r, 2, &v), GB_EMPTY);
    CHECK_EQ(qput(r, 1, 22), GB_OK);
    CHECK_EQ(qput(r, 1, 23), GB_OK);
    CHECK_EQ(qput(r, 1, 24), GB_FULL_RING);

    /* dead consumer: claimed 22 (position 2, slot 0) and never released it;
     * the producer of the next lap reaches that slot and is blocked */
    CHECK_EQ(gb_queue_get_begin(r, 777, 54321, &dead_pos, &blocker), GB_OK);
    CHECK_EQ(gb_slot_owner_start(r, dead_pos), 54321);
    CHECK_EQ(qget(r, 2, &v), GB_OK);
    CHECK_EQ(v, 23);
    uint64_t b2 = 0;
    CHECK_EQ(gb_queue_put_begin(r, 1, 0, &pos, &b2), GB_BUSY);
    CHECK_EQ(gb_word_pid(b2), 777);
    CHECK_EQ(gb_word_state(b2), GB_READING);
    CHECK_EQ(gb_queue_size(r), 0);
    /* a word that no longer matches is not recovered */
    CHECK_EQ(gb_queue_recover(r, pos, b2 ^ 4), 0);
    CHECK_EQ(gb_queue_recover(r, pos, b2), 1);
    CHECK_EQ(qput(r, 1, 24), GB_OK);
    CHECK_EQ(qput(r, 1, 25), GB_OK);
    CHECK_EQ(qput(r, 1, 26), GB_FULL_RING);
    CHECK_EQ(qget(r, 2, &v), GB_OK);
    CHECK_EQ(v, 24);
    CHECK_EQ(qget(r, 2, &v), GB_OK);
    CHECK_EQ(v, 25);
    CHECK_EQ(qget(r, 2, &v), GB_EMPTY);
    seg_free(&s);
}

/* Queue positions past 2^40 (the slot word keeps 40 bits): a dead claim must
 * still be recoverable.  Counters are set forward by hand, as if ~1.1e12
 * items had passed, with a ring size that does not divide 2^40. */
static void set_queue_position(gb_ring *r, uint64_t x)
{
    atomic_store(&r->hdr->tail, x);
    atomic_store(&r->hdr->head, x);
    for (uint64_t p = x; p < x + r->nslots; p++)
        atomic_store(&gb_slot_at(r, p)->word, gb_word(p, 0, GB_FREE));
}

static void t_wrap40(void)
{
    seg s;
    CHECK_EQ(seg_make(&s, GB_KIND_OBJECT, GB_FLAG_QUEUE, 3, 16, 0), GB_OK);
    gb_ring *r = &s.r;
    uint64_t v = 0, pos = 0, blocker = 0;

    /* plain traffic across the wrap works */
    set_queue_position(r, GB_POS_MASK - 4);
    for (uint64_t i = 0; i < 12; i++) {
        CHECK_EQ(qput(r, 1, i), GB_OK);
        CHECK_EQ(qget(r, 2, &v), GB_OK);
        CHECK_EQ(v, i);
    }
    CHECK(atomic_load(&r->hdr->tail) > GB_POS_MASK + 1);

    /* a dead producer's claim past the wrap */
    CHECK_EQ(gb_queue_put_begin(r, 666, 0, &pos, &blocker), GB_OK);
    CHECK(pos > GB_POS_MASK);
    CHECK_EQ(qput(r, 1, 99), GB_OK);
    CHECK_EQ(gb_queue_get_begin(r, 2, 0, &pos, &blocker), GB_BUSY);
    CHECK_EQ(gb_word_pid(blocker), 666);
    CHECK_EQ(gb_queue_recover(r, pos, blocker), 1);
    int rc = GB_BUSY;
    for (int tries = 0; tries < 10 && rc == GB_BUSY; tries++)
        rc = qget(r, 2, &v);
    CHECK_EQ(rc, GB_OK); /* else consumers are wedged behind a dead pid for good */
    CHECK_EQ(v, 99);
    seg_free(&s);
}

/* Sizes whose product wraps 64 bits must not validate (a garbage header
 * would otherwise send every slot access out of bounds), and must not size
 * a segment (init would write past the buffer). */
/* gb_copy_streaming (streaming stores for large items, gb_platform.h): every
 * length and both alignments copy exactly n bytes, nothing beyond. */
static void t_copy(void)
{
    size_t lens[] = {0, 1, 15, 16, 63, 64, 255, 256, 257, 1000, 4096 + 13,
                     (1u << 20) + 7, 3u << 20};
    size_t cap = (3u << 20) + 128;
    uint8_t *src = xcalloc(cap), *dst = xcalloc(cap + 64), *want = xcalloc(cap + 64);
    for (size_t i = 0; i < cap; i++)
        src[i] = (uint8_t)rnd();
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        for (size_t doff = 0; doff < 18; doff += (lens[li] > 4096 ? 5 : 1)) {
            size_t soff = (doff * 7) % 19, n = lens[li];
            /* --quick compares the copy and 64 bytes either side only */
            size_t span = quick ? (doff + n + 64 < cap + 64 ? doff + n + 64 : cap + 64)
                                : cap + 64;
            memset(dst, 0xA5, span);
            memset(want, 0xA5, span);
            memcpy(want + doff, src + soff, n);
            gb_copy_streaming(dst + doff, src + soff, n);
            CHECK(memcmp(dst, want, span) == 0);
        }
    }
    /* the policy: only large items into rings bigger than half the cache */
    CHECK(!gb_stream_copy_wanted(1u << 19, 1ULL << 30, 32u << 20));
    CHECK(!gb_stream_copy_wanted(6u << 20, 12u << 20, 32u << 20));
    CHECK(gb_stream_copy_wanted(6u << 20, 18u << 20, 32u << 20) == GB_HAVE_STREAM_COPY);
    CHECK(gb_llc_bytes() <= (32u << 20));
    free(src);
    free(dst);
    free(want);
}

static void t_overflow(void)
{
    /* 2^20 slots of stride 2^44: 2^64 bytes, which wraps to 0 */
    uint64_t slot = (1ULL << 44) - GB_SLOT_HEADER;
    CHECK_EQ(gb_slot_stride(slot), 1ULL << 44);
    CHECK_EQ(gb_ring_nbytes(1u << 20, slot, 0), 0);
    /* 2^30 slots of stride 2^34: also 2^64 */
    CHECK_EQ(gb_ring_nbytes(1u << 30, (1ULL << 34) - GB_SLOT_HEADER, 0), 0);

    /* a header describing such a ring in an 8 KiB buffer */
    seg s;
    CHECK_EQ(seg_make(&s, GB_KIND_ARRAY, 0, 1, 8, 0), GB_OK);
    uint64_t size = 2 * GB_PAGE;
    uint8_t *copy = xcalloc((size_t)size);
    memcpy(copy, s.mem, GB_HEADER_SIZE);
    gb_header *h = (gb_header *)copy;
    h->meta_len = 0;
    h->nslots = 1u << 20;
    h->capacity = (1u << 20) - 1;
    h->slot_size = slot;
    h->slot_stride = gb_slot_stride(slot);
    h->slots_offset = GB_PAGE;
    h->total_size = gb_ring_nbytes(h->nslots, h->slot_size, 0);
    gb_ring r;
    int rc = gb_ring_open(&r, copy, size);
    CHECK(rc != GB_OK);
    if (rc == GB_OK)
        fprintf(stderr, "  accepted: a reader of sample 1 would touch byte %llu of %llu\n",
                (unsigned long long)((uint8_t *)gb_slot_at(&r, 1) - copy),
                (unsigned long long)size);
    free(copy);
    seg_free(&s);
}

/* ------------------------------------------------------------------ */
/* Group: waits                                                        */
/* ------------------------------------------------------------------ */

typedef struct sleeper_arg {
    gb_ring *r;
    _Atomic int woke;
    _Atomic int ready;
} sleeper_arg;

static void *sleeper(void *p)
{
    sleeper_arg *a = p;
    int64_t deadline = gb_now_ns() + 5000000000LL;
    while (gb_now_ns() < deadline) {
        uint32_t ev = gb_wait_prepare(&a->r->hdr->data);
        atomic_store(&a->ready, 1);
        if (gb_stream_tail(a->r) > 0) {
            gb_wait_done(&a->r->hdr->data);
            atomic_store(&a->woke, 1);
            return NULL;
        }
        gb_wait_sleep(&a->r->hdr->data, ev, 100000000LL, 1000000LL, GB_HAVE_FUTEX);
        gb_wait_done(&a->r->hdr->data);
    }
    return NULL;
}

static void t_wait(void)
{
    seg s;
    CHECK_EQ(seg_make(&s, GB_KIND_ARRAY, 0, 2, 8, 0), GB_OK);
    gb_ring *r = &s.r;

    /* a timed sleep with nothing coming times out */
    int64_t t0 = gb_now_ns();
    uint32_t ev = gb_wait_prepare(&r->hdr->data);
    int rc = gb_wait_sleep(&r->hdr->data, ev, 20000000LL, 1000000LL, GB_HAVE_FUTEX);
    gb_wait_done(&r->hdr->data);
    int64_t dt = gb_now_ns() - t0;
    CHECK(rc == 1 || rc == 0); /* spurious returns are allowed */
    CHECK(dt < 2000000000LL);
    /* a stale snapshot returns at once */
    ev = gb_wait_prepare(&r->hdr->data);
    atomic_fetch_add(&r->hdr->data.ev, 1);
    t0 = gb_now_ns();
    gb_wait_sleep(&r->hdr->data, ev, 2000000000LL, 1000000LL, GB_HAVE_FUTEX);
    gb_wait_done(&r->hdr->data);
    CHECK(gb_now_ns() - t0 < 500000000LL);
    CHECK_EQ(atomic_load(&r->hdr->data.waiters), 0);

    /* a sleeping thread is woken by a commit, which makes exactly the wake
     * calls needed */
    sleeper_arg a = {.r = r};
    pthread_t th;
    pthread_create(&th, NULL, sleeper, &a);
    while (!atomic_load(&a.ready))
        sched_yield();
    usleep(20000);
    uint64_t before = gb_load_u64(&r->hdr->wake_calls);
    write_u64s(r, 1, 1, 1);
    pthread_join(th, NULL);
    CHECK(atomic_load(&a.woke));
    CHECK(gb_load_u64(&r->hdr->wake_calls) - before <= 1);
    CHECK_EQ(atomic_load(&r->hdr->data.waiters), 0);
    seg_free(&s);
}

/* ------------------------------------------------------------------ */
/* Group: MPMC queue under contention (threads)                        */
/* ------------------------------------------------------------------ */

#define MP_PRODUCERS 3
#define MP_CONSUMERS 3
#define MP_ITEMS ((uint64_t)(quick ? 10000 : 100000))

typedef struct mpmc {
    gb_ring *r;
    _Atomic uint8_t *seen;      /* [producer * MP_ITEMS + i] */
    _Atomic long consumed;
    _Atomic long dup, order, bad;
} mpmc;

typedef struct mp_arg {
    mpmc *m;
    int id;
} mp_arg;

static void wait_a_little(gb_waitq *q, int (*ready)(gb_ring *), gb_ring *r)
{
    uint32_t ev = gb_wait_prepare(q);
    if (!ready(r))
        gb_wait_sleep(q, ev, 5000000LL, 200000LL, GB_HAVE_FUTEX);
    gb_wait_done(q);
}

static int has_space(gb_ring *r) { return gb_queue_size(r) < (int64_t)r->capacity; }
static int has_data(gb_ring *r) { return gb_queue_size(r) > 0; }

static void *mp_producer(void *p)
{
    mp_arg *a = p;
    gb_ring *r = a->m->r;
    uint32_t pid = 1000 + (uint32_t)a->id;
    for (uint64_t i = 0; i < MP_ITEMS; i++) {
        uint64_t v = ((uint64_t)a->id << 32) | i, pos = 0, blocker = 0;
        for (;;) {
            int rc = gb_queue_put_begin(r, pid, 0, &pos, &blocker);
            if (rc == GB_OK)
                break;
            if (rc == GB_FULL_RING)
                wait_a_little(&r->hdr->space, has_space, r);
            else
                sched_yield(); /* BUSY: a live consumer is mid-read */
        }
        gb_slot *s = gb_slot_at(r, pos);
        memcpy(gb_payload(s), &v, 8);
        memcpy(gb_payload(s) + 8, &(uint64_t){~v}, 8);
        gb_queue_put_commit(r, pid, pos, 16);
    }
    return NULL;
}

static void *mp_consumer(void *p)
{
    mp_arg *a = p;
    mpmc *m = a->m;
    gb_ring *r = m->r;
    uint32_t pid = 2000 + (uint32_t)a->id;
    int64_t last[MP_PRODUCERS];
    for (int k = 0; k < MP_PRODUCERS; k++)
        last[k] = -1;
    const long total = (long)MP_PRODUCERS * MP_ITEMS;
    while (TLOAD(m->consumed) < total) {
        uint64_t pos = 0, blocker = 0;
        int rc = gb_queue_get_begin(r, pid, 0, &pos, &blocker);
        if (rc == GB_EMPTY) {
            wait_a_little(&r->hdr->data, has_data, r);
            continue;
        }
        if (rc == GB_BUSY) {
            sched_yield(); /* a live producer is mid-write */
            continue;
        }
        gb_slot *s = gb_slot_at(r, pos);
        uint64_t v, check;
        uint64_t len = atomic_load_explicit(&s->len, memory_order_relaxed);
        memcpy(&v, gb_payload(s), 8);
        memcpy(&check, gb_payload(s) + 8, 8);
        gb_queue_get_commit(r, pos);
        uint64_t prod = v >> 32, i = v & 0xffffffffu;
        if (len != 16 || check != ~v || prod >= MP_PRODUCERS || i >= MP_ITEMS) {
            TINC(m->bad);
            TINC(m->consumed);
            continue;
        }
        if (TINC(m->seen[prod * MP_ITEMS + i]) != 0)
            TINC(m->dup);
        if ((int64_t)i <= last[prod])
            TINC(m->order); /* one producer's items out of order */
        last[prod] = (int64_t)i;
        TINC(m->consumed);
    }
    /* wake peers still asleep so they see the end */
    gb_wake(r, &r->hdr->data);
    return NULL;
}

static void run_mpmc(uint32_t capacity)
{
    seg s;
    CHECK_EQ(seg_make(&s, GB_KIND_OBJECT, GB_FLAG_QUEUE, capacity, 16, 0), GB_OK);
    mpmc m = {.r = &s.r};
    m.seen = xcalloc((size_t)MP_PRODUCERS * MP_ITEMS);
    pthread_t pt[MP_PRODUCERS], ct[MP_CONSUMERS];
    mp_arg pa[MP_PRODUCERS], ca[MP_CONSUMERS];
    for (int i = 0; i < MP_CONSUMERS; i++) {
        ca[i] = (mp_arg){&m, i};
        pthread_create(&ct[i], NULL, mp_consumer, &ca[i]);
    }
    for (int i = 0; i < MP_PRODUCERS; i++) {
        pa[i] = (mp_arg){&m, i};
        pthread_create(&pt[i], NULL, mp_producer, &pa[i]);
    }
    for (int i = 0; i < MP_PRODUCERS; i++)
        pthread_join(pt[i], NULL);
    for (int i = 0; i < MP_CONSUMERS; i++)
        pthread_join(ct[i], NULL);
    long missing = 0;
    for (long k = 0; k < (long)(MP_PRODUCERS * MP_ITEMS); k++)
        missing += TLOAD(m.seen[k]) == 0;
    CHECK_EQ(TLOAD(m.consumed), (long)MP_PRODUCERS * MP_ITEMS);
    CHECK_EQ(missing, 0);
    CHECK_EQ(TLOAD(m.dup), 0);
    CHECK_EQ(TLOAD(m.bad), 0);
    CHECK_EQ(TLOAD(m.order), 0);
    CHECK_EQ(gb_queue_size(&s.r), 0);
    CHECK_EQ(TLOAD(s.r.hdr->data.waiters), 0);
    CHECK_EQ(TLOAD(s.r.hdr->space.waiters), 0);
    uint64_t pos = 0, blocker = 0;
    CHECK_EQ(gb_queue_get_begin(&s.r, 1, 0, &pos, &blocker), GB_EMPTY);
    free((void *)m.seen);
    seg_free(&s);
}

static void t_mpmc(void)
{
    run_mpmc(1);  /* maximal contention: every put waits for a get */
    run_mpmc(7);
    run_mpmc(256);
}

/* ------------------------------------------------------------------ */
/* Group: stream torn-read check (threads)                             */
/* ------------------------------------------------------------------ */

/* 4 KiB samples: long copies, many chances to tear (512 B with --quick:
 * ThreadSanitizer checks every 8 bytes of every copy) */
#define TR_WORDS (quick ? 64 : 512)
#define TR_READERS 3

typedef struct torn {
    gb_ring *r;
    _Atomic int done;
    uint64_t total;
    _Atomic long torn, ok, stale, order, accounted_bad;
} torn;

static int sample_ok(const uint64_t *buf, uint64_t pos, uint64_t len)
{
    if (len != (uint64_t)TR_WORDS * 8 || buf[0] != pos)
        return 0;
    uint64_t sum = 0;
    for (int j = 1; j < TR_WORDS - 1; j++) {
        if (buf[j] != pos * 0x9E3779B97F4A7C15ULL + (uint64_t)j)
            return 0;
        sum += buf[j];
    }
    return buf[TR_WORDS - 1] == sum;
}

static void *tr_writer(void *p)
{
    torn *t = p;
    gb_ring *r = t->r;
    uint64_t *src = xcalloc(TR_WORDS * 8);
    for (uint64_t n = 0; n < t->total; n++) {
        uint64_t pos, sum = 0;
        uint8_t *dst = gb_stream_begin(r, 1, &pos);
        src[0] = pos;
        for (int j = 1; j < TR_WORDS - 1; j++) {
            src[j] = pos * 0x9E3779B97F4A7C15ULL + (uint64_t)j;
            sum += src[j];
        }
        src[TR_WORDS - 1] = sum;
        gb_seqlock_copy(dst, src, TR_WORDS * 8);
        gb_stream_commit(r, 1, pos, TR_WORDS * 8);
    }
    free(src);
    TSTORE(t->done, 1);
    gb_wake(r, &r->hdr->data);
    return NULL;
}

/* "next" readers: every sample either read intact, in order, or counted as
 * an overrun; none torn. */
static void *tr_reader(void *p)
{
    torn *t = p;
    gb_ring *r = t->r;
    uint64_t *buf = xcalloc(TR_WORDS * 8);
    uint64_t cursor = 0, overruns = 0, reads = 0, len;
    int64_t last = -1;
    while (cursor < t->total) {
        uint64_t tl = gb_stream_clamp(r, &cursor, &overruns);
        if (cursor >= tl) {
            uint32_t ev = gb_wait_prepare(&r->hdr->data);
            if (gb_stream_tail(r) <= cursor)
                gb_wait_sleep(&r->hdr->data, ev, 5000000LL, 200000LL, GB_HAVE_FUTEX);
            gb_wait_done(&r->hdr->data);
            continue;
        }
        memset(buf, 0, TR_WORDS * 8);
        int rc = gb_read_copy(r, cursor, buf, TR_WORDS * 8, &len);
        if (rc != GB_OK) {
            TINC(t->stale);
            continue; /* lapped during the copy: clamp again */
        }
        if (!sample_ok(buf, cursor, len))
            TINC(t->torn);
        if ((int64_t)cursor <= last)
            TINC(t->order);
        last = (int64_t)cursor;
        cursor++;
        reads++;
        TINC(t->ok);
    }
    if (reads + overruns != t->total)
        TINC(t->accounted_bad);
    free(buf);
    return NULL;
}

/* "latest" readers: hammer the newest sample while it is being replaced */
static void *tr_latest(void *p)
{
    torn *t = p;
    gb_ring *r = t->r;
    uint64_t *buf = xcalloc(TR_WORDS * 8);
    uint64_t len;
    while (!TLOAD(t->done)) {
        uint64_t tl = gb_stream_tail(r);
        if (tl == 0)
            continue;
        if (gb_read_copy(r, tl - 1, buf, TR_WORDS * 8, &len) != GB_OK) {
            TINC(t->stale);
            continue;
        }
        if (!sample_ok(buf, tl - 1, len))
            TINC(t->torn);
        TINC(t->ok);
    }
    free(buf);
    return NULL;
}

static void t_torn(void)
{
    uint32_t caps[] = {1, 4};
    for (size_t c = 0; c < sizeof caps / sizeof caps[0]; c++) {
        seg s;
        CHECK_EQ(seg_make(&s, GB_KIND_ARRAY, 0, caps[c], TR_WORDS * 8, 0), GB_OK);
        torn t = {.r = &s.r, .total = quick ? 10000 : 200000};
        pthread_t w, rd[TR_READERS], lt;
        for (int i = 0; i < TR_READERS; i++)
            pthread_create(&rd[i], NULL, tr_reader, &t);
        pthread_create(&lt, NULL, tr_latest, &t);
        pthread_create(&w, NULL, tr_writer, &t);
        pthread_join(w, NULL);
        for (int i = 0; i < TR_READERS; i++)
            pthread_join(rd[i], NULL);
        pthread_join(lt, NULL);
        CHECK_EQ(TLOAD(t.torn), 0);
        CHECK_EQ(TLOAD(t.order), 0);
        CHECK_EQ(TLOAD(t.accounted_bad), 0);
        CHECK(TLOAD(t.ok) > 0);
        printf("  torn[capacity %u]: %ld intact reads, %ld stale retries, 0 torn expected, %ld seen\n",
               caps[c], TLOAD(t.ok), TLOAD(t.stale), TLOAD(t.torn));
        seg_free(&s);
    }
}

/* ------------------------------------------------------------------ */
/* Peers: threads as processes on one mapping                          */
/* ------------------------------------------------------------------ */
/* These groups (and mpmc, torn above) are what the ThreadSanitizer build
 * checks (tests/test_c_core.py, suppressions in tests/c/tsan.supp): every
 * peer sees the ring only through the core's calls, and whatever the test
 * itself shares between threads is relaxed (TINC, TLOAD), so the only
 * happens-before edges are the core's.  Each thread keeps its results in
 * its own struct; the main thread reads them after pthread_join. */

/* seqlock: the one deliberate race, made to happen every time.  The main
 * thread copies sample 0 (gb_read_copy -> gb_seqlock_copy); a writer thread,
 * told by a relaxed flag (no happens-before), then reuses that slot.  Under
 * ThreadSanitizer this is a reported race between gb_seqlock_copy and the
 * writer's payload stores (suppressed by name, and only that); the protocol
 * answer is the re-check, which now fails, so the copy is thrown away. */
typedef struct sq_arg {
    gb_ring *r;
    _Atomic int step;
} sq_arg;

static void *sq_writer(void *p)
{
    sq_arg *a = p;
    while (TLOAD(a->step) != 1)
        sched_yield();
    write_u64s(a->r, 1, 200, 4); /* position 1, slot 1 */
    write_u64s(a->r, 1, 300, 4); /* position 2: slot 0, sample 0's */
    TSTORE(a->step, 2);
    return NULL;
}

static void t_seqlock(void)
{
    seg s;
    CHECK_EQ(seg_make(&s, GB_KIND_ARRAY, 0, 1, 32, 0), GB_OK); /* 2 slots */
    gb_ring *r = &s.r;
    write_u64s(r, 1, 100, 4);
    sq_arg a = {.r = r};
    pthread_t th;
    pthread_create(&th, NULL, sq_writer, &a);
    uint64_t w = 0, len = 0, buf[4] = {0};
    const uint8_t *pl = NULL;
    CHECK_EQ(gb_read_begin(r, 0, &w, &pl, &len), GB_OK);
    gb_seqlock_copy(buf, pl, (size_t)len);
    CHECK(gb_read_check(r, 0, w)); /* nobody wrote yet: the copy stands */
    CHECK_EQ(buf[0], 100);
    TSTORE(a.step, 1);
    while (TLOAD(a.step) != 2)
        sched_yield();
    CHECK(!gb_read_check(r, 0, w)); /* overwritten: the copy is discarded */
    pthread_join(th, NULL);
    CHECK_EQ(gb_read_copy(r, 0, buf, sizeof buf, &len), GB_STALE);
    CHECK_EQ(gb_read_copy(r, 2, buf, sizeof buf, &len), GB_OK);
    CHECK_EQ(buf[0], 300);
    seg_free(&s);
}

/* wakers: sleepers and wakers on both wait queues of a queue ring.  Round 0
 * paces the producers (consumers run dry and sleep on `data`), round 1 the
 * consumers (producers find the ring full and sleep on `space`).  Every
 * sleep has a 5 s timeout while items keep flowing, so a sleep that times
 * out is a lost wake-up. */
#define WK_PRODUCERS 2
#define WK_CONSUMERS 3
#define WK_SLEEP_NS 5000000000LL

typedef struct wk_shared {
    gb_ring *r;
    uint64_t items;     /* per producer */
    int pace_put, pace_get;
    _Atomic long consumed; /* progress for the main thread only (relaxed) */
    _Atomic int stop;
} wk_shared;

typedef struct wk_thread {
    wk_shared *sh;
    int id;
    long sleeps, timeouts, got, bad, order;
    uint8_t *seen; /* consumers: [producer * items + i], private */
} wk_thread;

/* Sleep on q unless ready(r) or stop: the protocol of gb_wait_prepare. */
static void wk_sleep(wk_thread *t, gb_waitq *q, int put)
{
    gb_ring *r = t->sh->r;
    uint32_t ev = gb_wait_prepare(q);
    int64_t n = gb_queue_size(r);
    if (!(put ? n < (int64_t)r->capacity : n > 0) && !TLOAD(t->sh->stop)) {
        t->sleeps++;
        if (gb_wait_sleep(q, ev, WK_SLEEP_NS, 200000LL, GB_HAVE_FUTEX) == 1)
            t->timeouts++;
    }
    gb_wait_done(q);
}

static void pace(int every, uint64_t i)
{
    if (every && i % (uint64_t)every == 0)
        usleep(200);
}

static void *wk_producer(void *p)
{
    wk_thread *t = p;
    gb_ring *r = t->sh->r;
    uint32_t pid = 1000 + (uint32_t)t->id;
    for (uint64_t i = 0; i < t->sh->items; i++) {
        uint64_t v = ((uint64_t)t->id << 32) | i, pos = 0, blocker = 0;
        int rc;
        while ((rc = gb_queue_put_begin(r, pid, 0, &pos, &blocker)) != GB_OK) {
            if (rc == GB_FULL_RING)
                wk_sleep(t, &r->hdr->space, 1);
            else
                sched_yield(); /* BUSY: a live consumer is mid-read */
        }
        memcpy(gb_payload(gb_slot_at(r, pos)), &v, 8);
        memcpy(gb_payload(gb_slot_at(r, pos)) + 8, &(uint64_t){~v}, 8);
        gb_queue_put_commit(r, pid, pos, 16);
        pace(t->sh->pace_put, i);
    }
    return NULL;
}

static void *wk_consumer(void *p)
{
    wk_thread *t = p;
    gb_ring *r = t->sh->r;
    uint32_t pid = 2000 + (uint32_t)t->id;
    int64_t last[WK_PRODUCERS] = {-1, -1};
    for (;;) {
        uint64_t pos = 0, blocker = 0;
        int rc = gb_queue_get_begin(r, pid, 0, &pos, &blocker);
        if (rc == GB_EMPTY) {
            if (TLOAD(t->sh->stop))
                return NULL;
            wk_sleep(t, &r->hdr->data, 0);
            continue;
        }
        if (rc == GB_BUSY) {
            sched_yield();
            continue;
        }
        gb_slot *s = gb_slot_at(r, pos);
        uint64_t v, check, len = gb_slot_len(r, pos);
        memcpy(&v, gb_payload(s), 8);
        memcpy(&check, gb_payload(s) + 8, 8);
        gb_queue_get_commit(r, pos);
        uint64_t prod = v >> 32, i = v & 0xffffffffu;
        t->got++;
        TINC(t->sh->consumed);
        if (len != 16 || check != ~v || prod >= WK_PRODUCERS || i >= t->sh->items) {
            t->bad++;
            continue;
        }
        t->seen[prod * t->sh->items + i]++;
        if ((int64_t)i <= last[prod])
            t->order++;
        last[prod] = (int64_t)i;
        pace(t->sh->pace_get, (uint64_t)t->got);
    }
}

static void t_wakers(void)
{
    for (int round = 0; round < 2; round++) {
        seg s;
        CHECK_EQ(seg_make(&s, GB_KIND_OBJECT, GB_FLAG_QUEUE, 4, 16, 0), GB_OK);
        wk_shared sh = {.r = &s.r, .items = quick ? 1500 : 6000,
                        .pace_put = round == 0 ? 8 : 0, .pace_get = round == 1 ? 8 : 0};
        wk_thread pt[WK_PRODUCERS], ct[WK_CONSUMERS];
        pthread_t pth[WK_PRODUCERS], cth[WK_CONSUMERS];
        uint64_t total = sh.items * WK_PRODUCERS;
        for (int i = 0; i < WK_CONSUMERS; i++) {
            ct[i] = (wk_thread){.sh = &sh, .id = i, .seen = xcalloc((size_t)total)};
            pthread_create(&cth[i], NULL, wk_consumer, &ct[i]);
        }
        for (int i = 0; i < WK_PRODUCERS; i++) {
            pt[i] = (wk_thread){.sh = &sh, .id = i};
            pthread_create(&pth[i], NULL, wk_producer, &pt[i]);
        }
        for (int i = 0; i < WK_PRODUCERS; i++)
            pthread_join(pth[i], NULL);
        int64_t deadline = gb_now_ns() + 120000000000LL;
        while (TLOAD(sh.consumed) < (long)total && gb_now_ns() < deadline)
            usleep(1000);
        /* the consumers' exit: a flag, then a wake for those asleep */
        TSTORE(sh.stop, 1);
        gb_wake_force(&s.r, &s.r.hdr->data);
        for (int i = 0; i < WK_CONSUMERS; i++)
            pthread_join(cth[i], NULL);
        long sleeps[2] = {0, 0}, timeouts = 0, got = 0, bad = 0, order = 0, missing = 0,
             dup = 0;
        for (int i = 0; i < WK_PRODUCERS; i++) {
            sleeps[1] += pt[i].sleeps;
            timeouts += pt[i].timeouts;
        }
        for (int i = 0; i < WK_CONSUMERS; i++) {
            sleeps[0] += ct[i].sleeps;
            timeouts += ct[i].timeouts;
            got += ct[i].got;
            bad += ct[i].bad;
            order += ct[i].order;
        }
        for (uint64_t k = 0; k < total; k++) {
            int n = 0;
            for (int i = 0; i < WK_CONSUMERS; i++)
                n += ct[i].seen[k];
            missing += n == 0;
            dup += n > 1;
        }
        CHECK_EQ(got, (long)total);
        CHECK_EQ(missing, 0);
        CHECK_EQ(dup, 0);
        CHECK_EQ(bad, 0);
        CHECK_EQ(order, 0);
        CHECK_EQ(timeouts, 0); /* no lost wake-up */
        CHECK(sleeps[round] > 0); /* the paced side's peers did sleep */
        CHECK_EQ(TLOAD(s.r.hdr->data.waiters), 0);
        CHECK_EQ(TLOAD(s.r.hdr->space.waiters), 0);
        printf("  wakers[%s paced]: %ld sleeps on data, %ld on space, %llu wake calls, "
               "%ld timed out\n", round ? "get" : "put", sleeps[0], sleeps[1],
               (unsigned long long)gb_load_u64(&s.r.hdr->wake_calls), timeouts);
        for (int i = 0; i < WK_CONSUMERS; i++)
            free(ct[i].seen);
        seg_free(&s);
    }
}

/* reclaim: producers and consumers at work while claimants die.  A victim
 * thread takes a pid (reusing an earlier victim's, with a new start time),
 * claims a slot as producer or consumer, and dies holding it.  Death is
 * what the binding's liveness check sees (a pid gone, or a pid whose start
 * time differs from the claim's): here a table of pid -> start time, 0 for
 * dead.  The victim's last act stores 0 with release and a peer's check
 * loads it with acquire: the stand-in for the kernel ordering everything a
 * dead process did before anyone can observe its death. */
#define RC_PRODUCERS 2
#define RC_CONSUMERS 2
#define RC_VICTIMS 8
#define RC_MAXPID 8192

static _Atomic uint64_t rc_life[RC_MAXPID]; /* pid -> start time, 0 = dead */

static int rc_alive(uint32_t pid, uint64_t start)
{
    /* acquire: pairs with the dying victim's release store */
    uint64_t s = pid < RC_MAXPID ? atomic_load_explicit(&rc_life[pid], memory_order_acquire) : 0;
    return s != 0 && (start == 0 || s == start);
}

/* What the binding's _recover does for a claim in our way. */
static int rc_recover(gb_ring *r, uint64_t at, uint64_t blocker)
{
    uint32_t pid = gb_word_pid(blocker), st = gb_word_state(blocker);
    if (pid == 0 || (st != GB_WRITING && st != GB_READING))
        return 0;
    if (rc_alive(pid, gb_slot_claim_start(r, at, blocker)))
        return 0;
    return gb_queue_recover(r, at, blocker);
}

typedef struct rc_shared {
    gb_ring *r;
    uint64_t items;        /* per producer, at least (and while victims live) */
    uint64_t max_items;    /* per producer, at most */
    _Atomic long consumed;
    _Atomic int stop, victims_done;
} rc_shared;

typedef struct rc_thread {
    rc_shared *sh;
    int id;
    uint32_t pid;
    uint64_t start;
    int victim_put; /* victims: die holding a put claim (else a get claim) */
    long got, bad, order, recovered, gave_up;
    uint64_t produced;
    uint64_t held; /* a dying consumer: the item it took with it */
    int has_held;
    uint8_t *seen;
} rc_thread;

/* Claim as producer (put) or consumer; GB_OK, or GB_EMPTY once stop is set
 * and nothing is left (consumers). */
static int rc_claim(rc_thread *t, int put, uint64_t *pos)
{
    gb_ring *r = t->sh->r;
    int64_t deadline = gb_now_ns() + 60000000000LL;
    for (;;) {
        uint64_t blocker = 0;
        int rc = put ? gb_queue_put_begin(r, t->pid, t->start, pos, &blocker)
                     : gb_queue_get_begin(r, t->pid, t->start, pos, &blocker);
        if (rc == GB_OK)
            return GB_OK;
        if (gb_now_ns() > deadline) {
            t->gave_up++;
            return GB_EMPTY;
        }
        if (rc == GB_BUSY || rc == GB_FULL_RING) {
            if (rc == GB_BUSY && rc_recover(r, *pos, blocker)) {
                t->recovered++;
                continue;
            }
            if (rc == GB_FULL_RING) {
                uint32_t ev = gb_wait_prepare(&r->hdr->space);
                if (gb_queue_size(r) >= (int64_t)r->capacity)
                    gb_wait_sleep(&r->hdr->space, ev, 2000000LL, 200000LL, GB_HAVE_FUTEX);
                gb_wait_done(&r->hdr->space);
            } else {
                sched_yield();
            }
            continue;
        }
        /* GB_EMPTY */
        if (TLOAD(t->sh->stop))
            return GB_EMPTY;
        uint32_t ev = gb_wait_prepare(&r->hdr->data);
        if (gb_queue_size(r) <= 0)
            gb_wait_sleep(&r->hdr->data, ev, 2000000LL, 200000LL, GB_HAVE_FUTEX);
        gb_wait_done(&r->hdr->data);
    }
}

static void *rc_producer(void *p)
{
    rc_thread *t = p;
    gb_ring *r = t->sh->r;
    /* traffic goes on until every victim is dead, so a dying consumer always
     * finds an item to take with it */
    for (uint64_t i = 0; i < t->sh->max_items &&
                         (i < t->sh->items || !TLOAD(t->sh->victims_done)); i++) {
        uint64_t v = ((uint64_t)t->id << 32) | i, pos = 0;
        if (rc_claim(t, 1, &pos) != GB_OK)
            return NULL;
        memcpy(gb_payload(gb_slot_at(r, pos)), &v, 8);
        memcpy(gb_payload(gb_slot_at(r, pos)) + 8, &(uint64_t){~v}, 8);
        gb_queue_put_commit(r, t->pid, pos, 16);
        t->produced++;
        if (i % 64 == 0)
            sched_yield();
    }
    return NULL;
}

static void *rc_consumer(void *p)
{
    rc_thread *t = p;
    gb_ring *r = t->sh->r;
    int64_t last[RC_PRODUCERS] = {-1, -1};
    uint64_t pos = 0;
    while (rc_claim(t, 0, &pos) == GB_OK) {
        uint64_t v, check, len = gb_slot_len(r, pos);
        memcpy(&v, gb_payload(gb_slot_at(r, pos)), 8);
        memcpy(&check, gb_payload(gb_slot_at(r, pos)) + 8, 8);
        gb_queue_get_commit(r, pos);
        uint64_t prod = v >> 32, i = v & 0xffffffffu;
        t->got++;
        TINC(t->sh->consumed);
        if (len != 16 || check != ~v || prod >= RC_PRODUCERS || i >= t->sh->max_items) {
            t->bad++;
            continue;
        }
        t->seen[prod * t->sh->max_items + i]++;
        if ((int64_t)i <= last[prod])
            t->order++;
        last[prod] = (int64_t)i;
    }
    return NULL;
}

static void *rc_victim(void *p)
{
    rc_thread *t = p;
    gb_ring *r = t->sh->r;
    uint64_t pos = 0;
    /* relaxed: the victim's own birth; only its death needs ordering */
    atomic_store_explicit(&rc_life[t->pid], t->start, memory_order_relaxed);
    if (rc_claim(t, t->victim_put, &pos) == GB_OK) {
        if (t->victim_put) {
            /* half an item, never committed */
            memset(gb_payload(gb_slot_at(r, pos)), 0xEE, 8);
        } else {
            memcpy(&t->held, gb_payload(gb_slot_at(r, pos)), 8);
            t->has_held = 1;
        }
    }
    /* release: everything this "process" did is visible to whoever sees
     * it dead (and frees its claim) */
    atomic_store_explicit(&rc_life[t->pid], 0, memory_order_release);
    return NULL;
}

static void t_reclaim(void)
{
    seg s;
    CHECK_EQ(seg_make(&s, GB_KIND_OBJECT, GB_FLAG_QUEUE, 4, 16, 0), GB_OK);
    gb_ring *r = &s.r;
    rc_shared sh = {.r = r, .items = quick ? 2000 : 20000, .max_items = 1000000};
    uint64_t total = 0, cap = sh.max_items * RC_PRODUCERS;
    rc_thread pt[RC_PRODUCERS], ct[RC_CONSUMERS], vt[RC_VICTIMS];
    pthread_t pth[RC_PRODUCERS], cth[RC_CONSUMERS], vth;
    for (int i = 0; i < RC_CONSUMERS; i++) {
        ct[i] = (rc_thread){.sh = &sh, .id = i, .pid = 2000 + (uint32_t)i, .start = 7,
                            .seen = xcalloc((size_t)cap)};
        atomic_store(&rc_life[ct[i].pid], ct[i].start);
    }
    for (int i = 0; i < RC_PRODUCERS; i++) {
        pt[i] = (rc_thread){.sh = &sh, .id = i, .pid = 1000 + (uint32_t)i, .start = 7};
        atomic_store(&rc_life[pt[i].pid], pt[i].start);
    }
    for (int i = 0; i < RC_CONSUMERS; i++)
        pthread_create(&cth[i], NULL, rc_consumer, &ct[i]);
    for (int i = 0; i < RC_PRODUCERS; i++)
        pthread_create(&pth[i], NULL, rc_producer, &pt[i]);
    /* victims one after another, while the traffic runs; two pids, so
     * later victims reuse an earlier (dead) victim's pid */
    long held = 0;
    for (int v = 0; v < RC_VICTIMS; v++) {
        vt[v] = (rc_thread){.sh = &sh, .id = 100 + v, .pid = 5000 + (uint32_t)(v % 2),
                            .start = 1000 + (uint64_t)v, .victim_put = (v / 2) % 2 == 0};
        pthread_create(&vth, NULL, rc_victim, &vt[v]);
        pthread_join(vth, NULL);
        held += vt[v].has_held;
        usleep(2000);
    }
    TSTORE(sh.victims_done, 1);
    for (int i = 0; i < RC_PRODUCERS; i++) {
        pthread_join(pth[i], NULL);
        total += pt[i].produced;
    }
    int64_t deadline = gb_now_ns() + 120000000000LL;
    while (TLOAD(sh.consumed) < (long)(total - (uint64_t)held) && gb_now_ns() < deadline)
        usleep(1000);
    TSTORE(sh.stop, 1);
    gb_wake_force(r, &r->hdr->data);
    for (int i = 0; i < RC_CONSUMERS; i++)
        pthread_join(cth[i], NULL);

    long got = 0, bad = 0, order = 0, recovered = 0, gave_up = 0, missing = 0, dup = 0,
         lost_ok = 0;
    for (int i = 0; i < RC_PRODUCERS; i++) {
        recovered += pt[i].recovered;
        gave_up += pt[i].gave_up;
    }
    for (int i = 0; i < RC_CONSUMERS; i++) {
        got += ct[i].got;
        bad += ct[i].bad;
        order += ct[i].order;
        recovered += ct[i].recovered;
        gave_up += ct[i].gave_up;
    }
    for (int v = 0; v < RC_VICTIMS; v++)
        gave_up += vt[v].gave_up;
    for (uint64_t k = 0; k < cap; k++) {
        int n = 0;
        for (int i = 0; i < RC_CONSUMERS; i++)
            n += ct[i].seen[k];
        dup += n > 1;
        if (k % sh.max_items >= pt[k / sh.max_items].produced) {
            missing -= n; /* never produced, yet consumed: counts as missing < 0 */
            continue;
        }
        int lost = 0;
        for (int v = 0; v < RC_VICTIMS; v++)
            if (vt[v].has_held &&
                (vt[v].held >> 32) * sh.max_items + (vt[v].held & 0xffffffffu) == k)
                lost = 1;
        if (lost)
            lost_ok += n == 0; /* a dead consumer's item is gone, not duplicated */
        else
            missing += n == 0;
    }
    CHECK_EQ(gave_up, 0);
    CHECK_EQ(got, (long)total - held);
    CHECK_EQ(missing, 0);
    CHECK_EQ(lost_ok, held);
    CHECK_EQ(dup, 0);
    CHECK_EQ(bad, 0);   /* a dead producer's half item is never delivered */
    CHECK_EQ(order, 0);
    /* claims still held by the dead (a consumer's, whose slot no producer
     * reached again) go the same way; then the ring works and is clean */
    rc_thread me = {.sh = &sh, .id = 0, .pid = 1000, .start = 7};
    TSTORE(sh.stop, 0);
    for (uint64_t i = 0; i < 2u * r->nslots; i++) {
        uint64_t pos = 0, v = 0;
        CHECK_EQ(rc_claim(&me, 1, &pos), GB_OK);
        memcpy(gb_payload(gb_slot_at(r, pos)), &i, 8);
        gb_queue_put_commit(r, me.pid, pos, 8);
        CHECK_EQ(rc_claim(&me, 0, &pos), GB_OK);
        memcpy(&v, gb_payload(gb_slot_at(r, pos)), 8);
        gb_queue_get_commit(r, pos);
        CHECK_EQ(v, i);
    }
    for (uint32_t k = 0; k < r->nslots; k++)
        CHECK_EQ(gb_word_state(gb_slot_word(r, k)), GB_FREE);
    CHECK_EQ(gb_queue_size(r), 0);
    printf("  reclaim: %llu items, %d victims (%ld died holding an item), %ld claims "
           "recovered by peers\n", (unsigned long long)total, RC_VICTIMS, held,
           recovered + me.recovered);
    CHECK_EQ(recovered + me.recovered, RC_VICTIMS); /* each dead claim, once */
    for (int i = 0; i < RC_CONSUMERS; i++)
        free(ct[i].seen);
    seg_free(&s);
}

/* attach: peers open the segment while its creator is still laying it out
 * (gb.attach racing gb.create on a fresh, zero-filled segment).  An attacher
 * sees "not a segment" or the finished header, never a half-made one. */
#define AT_PEERS 3

typedef struct at_arg {
    uint8_t *mem;
    uint64_t size;
    long early, other, bad;
    int ok;
} at_arg;

static void *at_peer(void *p)
{
    at_arg *a = p;
    int64_t deadline = gb_now_ns() + 60000000000LL;
    gb_ring r;
    while (gb_now_ns() < deadline) {
        int rc = gb_ring_open(&r, a->mem, a->size);
        if (rc == GB_E_MAGIC) {
            a->early++;
            sched_yield();
            continue;
        }
        if (rc != GB_OK) {
            a->other++;
            continue;
        }
        a->ok = 1;
        if (r.nslots != 8 || r.capacity != 7 || r.hdr->meta_len != strlen(META) ||
            memcmp(r.base + r.hdr->meta_offset, META, strlen(META)) != 0 ||
            gb_read_begin(&r, 0, &(uint64_t){0}, &(const uint8_t *){NULL},
                          &(uint64_t){0}) != GB_STALE)
            a->bad++;
        return NULL;
    }
    return NULL;
}

static void t_attach(void)
{
    for (int round = 0; round < (quick ? 20 : 100); round++) {
        uint64_t size = gb_ring_nbytes(8, 64, (uint32_t)strlen(META));
        at_arg a[AT_PEERS];
        pthread_t th[AT_PEERS];
        uint8_t *mem = xcalloc((size_t)size); /* a new segment reads as zeros */
        for (int i = 0; i < AT_PEERS; i++) {
            a[i] = (at_arg){.mem = mem, .size = size};
            pthread_create(&th[i], NULL, at_peer, &a[i]);
        }
        if (round % 2)
            sched_yield();
        CHECK_EQ(gb_ring_init(mem, size, GB_KIND_ARRAY, 0, 7, 64, 0, 1, META,
                              (uint32_t)strlen(META), 1, 1), GB_OK);
        for (int i = 0; i < AT_PEERS; i++) {
            pthread_join(th[i], NULL);
            CHECK(a[i].ok);
            CHECK_EQ(a[i].other, 0);
            CHECK_EQ(a[i].bad, 0);
        }
        free(mem);
    }
}

/* ------------------------------------------------------------------ */
/* Driver                                                              */
/* ------------------------------------------------------------------ */

typedef struct group {
    const char *name;
    void (*fn)(void);
    int known_bug; /* run only when named: documents a reported core bug */
} group;

static const group GROUPS[] = {
    {"layout", t_layout, 0},
    {"init", t_init, 0},
    {"open", t_open, 0},
    {"fuzz", t_fuzz, 0},
    {"stream", t_stream, 0},
    {"queue", t_queue, 0},
    {"recover", t_recover, 0},
    {"wait", t_wait, 0},
    {"mpmc", t_mpmc, 0},
    {"torn", t_torn, 0},
    {"overflow", t_overflow, 0},
    {"copy", t_copy, 0},
    {"wrap40", t_wrap40, 0},
    {"seqlock", t_seqlock, 0},
    {"wakers", t_wakers, 0},
    {"reclaim", t_reclaim, 0},
    {"attach", t_attach, 0},
};
#define NGROUPS (sizeof GROUPS / sizeof GROUPS[0])

static void run(const group *g)
{
    long f0 = atomic_load(&n_fail);
    int64_t t0 = gb_now_ns();
    cur_group = g->name;
    g->fn();
    printf("%-9s %s (%.2f s)\n", g->name, atomic_load(&n_fail) == f0 ? "ok" : "FAILED",
           (double)(gb_now_ns() - t0) / 1e9);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    alarm(600); /* a hang is a failure, not a stuck CI run */
    if (argc > 1 && strcmp(argv[1], "--quick") == 0) {
        quick = 1;
        argc--, argv++;
    }
    if (argc > 1 && strcmp(argv[1], "--list") == 0) {
        for (size_t i = 0; i < NGROUPS; i++)
            printf("%s%s\n", GROUPS[i].name, GROUPS[i].known_bug ? " (known bug)" : "");
        return 0;
    }
    if (argc == 1) {
        for (size_t i = 0; i < NGROUPS; i++)
            if (!GROUPS[i].known_bug)
                run(&GROUPS[i]);
    } else {
        for (int a = 1; a < argc; a++) {
            size_t i;
            for (i = 0; i < NGROUPS; i++)
                if (strcmp(argv[a], GROUPS[i].name) == 0)
                    break;
            if (i == NGROUPS) {
                fprintf(stderr, "unknown group %s (see --list)\n", argv[a]);
                return 2;
            }
            run(&GROUPS[i]);
        }
    }
    printf("%ld passed, %ld failed\n", atomic_load(&n_pass), atomic_load(&n_fail));
    return atomic_load(&n_fail) ? 1 : 0;
}
