/* The lost wake-up that gb_wait_prepare once had (docs/design.md, "Memory
 * model"; SPEC §4), replayed deterministically in one thread.
 *
 * Sleeper S registers (gb_wait_prepare).  At GB_TEST_HOOK -- after S set
 * its ARMED bit, before its fence -- producer W2 puts item Y, and W2's wake
 * takes the ARMED bit and bumps ev; an awake consumer takes Y.  S re-checks:
 * empty.  W1 then puts X: the bit is gone, so W1 wakes nobody.  S must not
 * sleep through X: its futex wait has to return at once because ev moved
 * after S's snapshot.  With the snapshot taken after arming (the old order)
 * S slept until its timeout with X waiting.
 *
 * Exit status 0: S woke at once; 1: the wake-up was lost. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>

static void w2_runs(void);
#define GB_TEST_HOOK() w2_runs()
#include "gb_ring.h"

static gb_ring R;
static int hook_armed;

static void w2_runs(void)
{
    if (!hook_armed)
        return;
    hook_armed = 0;
    uint64_t pos, blk;
    if (gb_queue_put_begin(&R, 222, 0, &pos, &blk) != GB_OK)
        abort();
    gb_queue_put_commit(&R, 222, pos, 1); /* its gb_wake takes ARMED */
    if (gb_queue_get_begin(&R, 333, 0, &pos, &blk) != GB_OK)
        abort();
    gb_queue_get_commit(&R, pos); /* an awake consumer takes Y */
}

int main(void)
{
    uint64_t n = gb_ring_nbytes(4, 64, 0);
    void *mem = calloc(1, n);
    if (!mem || gb_ring_init(mem, n, GB_KIND_BYTES, GB_FLAG_QUEUE, 4, 64, 0, 0, NULL, 0, 1, 0)
                    != GB_OK || gb_ring_open(&R, mem, n) != GB_OK) {
        fprintf(stderr, "setup failed\n");
        return 2;
    }
    gb_waitq *q = &R.hdr->data;
    uint64_t pos, blk;
    hook_armed = 1;
    uint32_t seen = gb_wait_prepare(q); /* S registers; W2 runs inside */
    if (gb_queue_get_begin(&R, 444, 0, &pos, &blk) != GB_EMPTY) {
        fprintf(stderr, "S's re-check found an item: the replay is wrong\n");
        return 2;
    }
    if (gb_queue_put_begin(&R, 111, 0, &pos, &blk) != GB_OK) /* W1 puts X */
        return 2;
    gb_queue_put_commit(&R, 111, pos, 1);
    int64_t t0 = gb_now_ns();
    int w = gb_wait_sleep(q, seen, 300000000, 0, GB_HAVE_FUTEX); /* at most 300 ms */
    double ms = (double)(gb_now_ns() - t0) / 1e6;
    gb_wait_done(q);
    printf("sleeper %s after %.1f ms with an item waiting\n", w == 1 ? "timed out" : "returned",
           ms);
    free(mem);
    return w == 1;
}
