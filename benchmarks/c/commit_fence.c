/* Cost of the no-waiter wake check in the stream commit, in TSC ticks per
 * write of 64 floats on a malloc'd ring: release gb_stream_commit vs. the
 * same commit without gb_wake, vs. an xchg publish, vs. a compiler barrier
 * only (what an asymmetric membarrier() design would leave on this path).
 *
 *   gcc -O2 -std=gnu11 -I../../global_buffer/csrc commit_fence.c -o /tmp/commit_fence && /tmp/commit_fence
 * (x86-64 only: uses __rdtsc).  See docs/benchmarks.md. */
#include <stdio.h>
#include <stdlib.h>
#include <x86intrin.h>
#include "gb_ring.h"

static gb_ring R;
static float src[64];

/* variants of the commit tail */
static inline __attribute__((always_inline)) void commit_nowake(gb_ring *r, uint32_t pid, uint64_t pos, uint64_t len) {
    gb_slot *s = gb_slot_at(r, pos);
    atomic_store_explicit(&s->len, len, memory_order_relaxed);
    atomic_store_explicit(&s->stamp_ns, gb_now_ns(), memory_order_relaxed);
    atomic_store_explicit(&s->word, gb_word(pos, pid, GB_FULL), memory_order_release);
    atomic_store_explicit(&r->hdr->tail, pos + 1, memory_order_release);
}
static inline __attribute__((always_inline)) void commit_xchg(gb_ring *r, uint32_t pid, uint64_t pos, uint64_t len) {
    gb_slot *s = gb_slot_at(r, pos);
    atomic_store_explicit(&s->len, len, memory_order_relaxed);
    atomic_store_explicit(&s->stamp_ns, gb_now_ns(), memory_order_relaxed);
    atomic_store_explicit(&s->word, gb_word(pos, pid, GB_FULL), memory_order_release);
    atomic_exchange_explicit(&r->hdr->tail, pos + 1, memory_order_seq_cst);
    if (atomic_load_explicit(&r->hdr->data.waiters, memory_order_seq_cst) != 0) {
        atomic_fetch_add_explicit(&r->hdr->data.ev, 1, memory_order_release);
        gb_futex_wake_all(&r->hdr->data.ev);
    }
}
static inline __attribute__((always_inline)) void commit_compiler_barrier(gb_ring *r, uint32_t pid, uint64_t pos, uint64_t len) {
    commit_nowake(r, pid, pos, len);
    atomic_signal_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&r->hdr->data.waiters, memory_order_relaxed) != 0) {
        atomic_fetch_add_explicit(&r->hdr->data.ev, 1, memory_order_release);
        gb_futex_wake_all(&r->hdr->data.ev);
    }
}

#define N 2000
#define REPS 2000
#define BENCH(NAME, COMMIT) do { \
    double best = 1e30, all[REPS]; \
    for (int rep = 0; rep < REPS; rep++) { \
        uint64_t t0 = __rdtsc(); \
        for (int i = 0; i < N; i++) { uint64_t pos; uint8_t *p = gb_stream_begin(&R, 1, &pos); \
            memcpy(p, src, sizeof src); COMMIT(&R, 1, pos, sizeof src); } \
        double c = (double)(__rdtsc() - t0) / N; all[rep] = c; if (c < best) best = c; } \
    qsort(all, REPS, sizeof(double), cmp); \
    printf("%-28s min %6.1f  p10 %6.1f  median %6.1f TSC ticks/write\n", NAME, best, all[REPS/10], all[REPS/2]); \
} while (0)
static int cmp(const void *a, const void *b) { double x=*(double*)a, y=*(double*)b; return x<y?-1:x>y; }

int main(void) {
    uint64_t n = gb_ring_nbytes(65, sizeof src, 0);
    void *mem = aligned_alloc(4096, (n + 4095) / 4096 * 4096);
    memset(mem, 0, n);
    if (gb_ring_init(mem, n, GB_KIND_ARRAY, 0, 64, sizeof src, 0, 0, NULL, 0, 1, 0) || gb_ring_open(&R, mem, n)) return 1;
    for (int k = 0; k < 3; k++) {
        BENCH("release (fence + load)", gb_stream_commit);
        BENCH("no wake at all", commit_nowake);
        BENCH("xchg tail + seq_cst load", commit_xchg);
        BENCH("compiler barrier only", commit_compiler_barrier);
    }
    return 0;
}
