/* Platform shims for the global_buffer ring core: monotonic time, CPU
 * relax hint, and the wait backend (futex on Linux, bounded sleep elsewhere).
 *
 * Plain C11, no Python.h.  Linux is built and tested; the macOS and Windows
 * branches compile by design but are unverified (see docs/platforms.md).
 */
#ifndef GB_PLATFORM_H
#define GB_PLATFORM_H

#include <stdint.h>
#include <stdatomic.h>

#if defined(__linux__)
#  define GB_HAVE_FUTEX 1
#  include <errno.h>
#  include <time.h>
#  include <unistd.h>
#  include <sys/syscall.h>
#  include <linux/futex.h>
#elif defined(_WIN32)
#  define GB_HAVE_FUTEX 0
#  define WIN32_LEAN_AND_MEAN
#  include <windows.h>
#else
#  define GB_HAVE_FUTEX 0
#  include <errno.h>
#  include <time.h>
#  include <unistd.h>
#endif

#if defined(_MSC_VER)
#  include <intrin.h>
#  define GB_INLINE static __inline
#else
#  define GB_INLINE static inline
#endif

#include <stddef.h>
#include <string.h>
#if defined(__x86_64__) || defined(_M_X64)
#  include <emmintrin.h>  /* SSE2: part of every x86-64 CPU */
#  define GB_HAVE_STREAM_COPY 1
#else
#  define GB_HAVE_STREAM_COPY 0
#endif

/* Nanoseconds on a clock shared by every process on the host (heartbeats are
 * compared across processes, so a per-process clock would be wrong). */
GB_INLINE int64_t gb_now_ns(void)
{
#if defined(_WIN32)
    static LARGE_INTEGER freq;
    LARGE_INTEGER c;
    if (freq.QuadPart == 0)
        QueryPerformanceFrequency(&freq);
    QueryPerformanceCounter(&c);
    return (int64_t)((double)c.QuadPart * 1e9 / (double)freq.QuadPart);
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
#endif
}

/* Hint to the CPU that we are spinning (frees the sibling hyperthread). */
GB_INLINE void gb_cpu_relax(void)
{
#if defined(_MSC_VER) && (defined(_M_X64) || defined(_M_IX86))
    _mm_pause();
#elif defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    atomic_signal_fence(memory_order_seq_cst);
#endif
}

/* Copy n bytes with non-temporal (streaming) stores where the CPU has them.
 *
 * For a ring much larger than the last-level cache, ordinary stores first
 * read every destination line into the cache (read-for-ownership) and then
 * evict lines a reader will never find there anyway; streaming stores skip
 * both, which halves the cost of a 1080p frame into an 8-slot ring on the
 * machines we measured (docs/benchmarks.md).  For rings that fit in cache,
 * plain memcpy is faster: the caller decides (gb_stream_copy_wanted).
 *
 * Ends with a store fence: streaming stores are weakly ordered even on x86,
 * and the release store that publishes the slot does not order them.  After
 * this returns every byte is globally visible before any later store. */
GB_INLINE void gb_copy_streaming(void *dst, const void *src, size_t n)
{
#if GB_HAVE_STREAM_COPY
    uint8_t *d = (uint8_t *)dst;
    const uint8_t *s = (const uint8_t *)src;
    size_t head = (size_t)(-(uintptr_t)d & 15u);
    if (n < 256) {
        memcpy(d, s, n);
        return;
    }
    /* Streaming stores are not ordered after earlier plain stores, not
     * even on x86: without this fence they could become visible before the
     * slot's WRITING mark, and a reader's seqlock re-check would pass over
     * a half-new payload. */
    _mm_sfence();
    memcpy(d, s, head);  /* bring d to a 16-byte boundary */
    d += head, s += head, n -= head;
    for (; n >= 64; d += 64, s += 64, n -= 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)(const void *)s);
        __m128i b = _mm_loadu_si128((const __m128i *)(const void *)(s + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(const void *)(s + 32));
        __m128i e = _mm_loadu_si128((const __m128i *)(const void *)(s + 48));
        _mm_stream_si128((__m128i *)(void *)d, a);
        _mm_stream_si128((__m128i *)(void *)(d + 16), b);
        _mm_stream_si128((__m128i *)(void *)(d + 32), c);
        _mm_stream_si128((__m128i *)(void *)(d + 48), e);
    }
    memcpy(d, s, n);
    _mm_sfence();
#else
    memcpy(dst, src, n);
#endif
}

/* Bytes of last-level cache one process can count on, or 0 when unknown.
 * Capped at 32 MiB: virtual machines report the host's whole L3 (320 MiB
 * seen on a 2-vCPU EPYC guest), and a chiplet CPU's L3 is per core complex
 * anyway. */
GB_INLINE uint64_t gb_llc_bytes(void)
{
    uint64_t cap = (uint64_t)32 << 20;
#if defined(_SC_LEVEL3_CACHE_SIZE)
    long v = sysconf(_SC_LEVEL3_CACHE_SIZE);
#  if defined(_SC_LEVEL2_CACHE_SIZE)
    if (v <= 0)
        v = sysconf(_SC_LEVEL2_CACHE_SIZE);
#  endif
    if (v > 0)
        return (uint64_t)v < cap ? (uint64_t)v : cap;
#endif
    return 0;
}

/* Should copies of `item` bytes into a ring of `footprint` bytes stream?
 * Only for large items (small ones are read back at once from cache) and a
 * ring that cannot stay cache-resident: more than half the last-level cache,
 * which on a shared L3 is about what one busy process keeps (measured:
 * 3 x 4 MiB slots memcpy wins, 3 x 6 MiB streaming wins by 1.8x). */
GB_INLINE int gb_stream_copy_wanted(uint64_t item, uint64_t footprint, uint64_t llc)
{
    if (!GB_HAVE_STREAM_COPY || item < ((uint64_t)1 << 20))
        return 0;
    if (llc == 0)
        llc = (uint64_t)32 << 20;
    return footprint > llc / 2;
}

/* Sleep about ns nanoseconds (a back-off, not a timer). */
GB_INLINE void gb_sleep_ns(int64_t ns)
{
#if defined(_WIN32)
    Sleep((DWORD)(ns / 1000000));
#else
    struct timespec ts;
    ts.tv_sec = (time_t)(ns / 1000000000LL);
    ts.tv_nsec = (long)(ns % 1000000000LL);
    nanosleep(&ts, NULL);
#endif
}

/* Sleep until *word != expected, a wake, a signal, or timeout_ns elapses.
 * Spurious returns are allowed; callers re-check their condition.
 * Returns 0 on wake/changed, 1 on timeout, 2 on signal (EINTR).
 *
 * Without a futex (or with use_futex == 0, which benchmarks use to measure
 * the fallback on Linux) the word is polled with a sleep of poll_ns; the
 * caller grows it adaptively between poll_min and poll_max. */
GB_INLINE int gb_futex_wait(_Atomic uint32_t *word, uint32_t expected,
                            int64_t timeout_ns, int64_t poll_ns, int use_futex)
{
#if GB_HAVE_FUTEX
    struct timespec ts;
    if (!use_futex)
        goto poll;
    if (timeout_ns < 0)
        timeout_ns = 0;
    ts.tv_sec = (time_t)(timeout_ns / 1000000000LL);
    ts.tv_nsec = (long)(timeout_ns % 1000000000LL);
    /* Not FUTEX_PRIVATE_FLAG: the waker lives in another process. */
    long rc = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, expected, &ts,
                      NULL, 0);
    if (rc == 0)
        return 0;
    if (errno == ETIMEDOUT)
        return 1;
    if (errno == EINTR)
        return 2;
    return 0; /* EAGAIN: the word already changed */
poll:
#else
    (void)use_futex;
#endif
    {
    int64_t d = poll_ns < timeout_ns ? poll_ns : timeout_ns;
    if (d < 0)
        d = 0;
    /* relaxed: only a hint to stop sleeping early; callers re-check. */
    if (atomic_load_explicit(word, memory_order_relaxed) != expected)
        return 0;
#  if defined(_WIN32)
    Sleep((DWORD)(d / 1000000));
#  else
    {
        struct timespec ts;
        ts.tv_sec = (time_t)(d / 1000000000LL);
        ts.tv_nsec = (long)(d % 1000000000LL);
        if (nanosleep(&ts, NULL) != 0 && errno == EINTR)
            return 2;
    }
#  endif
    return d >= timeout_ns ? 1 : 0;
    }
}

/* Wake every process sleeping on word. */
GB_INLINE void gb_futex_wake_all(_Atomic uint32_t *word)
{
#if GB_HAVE_FUTEX
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, 0x7fffffff, NULL, NULL,
            0);
#else
    (void)word; /* pollers notice the changed word by themselves */
#endif
}

#endif /* GB_PLATFORM_H */
