# Declarations of the C ring core (global_buffer/csrc/gb_ring.h).  Nothing
# but declarations: the layout and every atomic live in C.
from libc.stdint cimport uint32_t, uint64_t, int64_t, uint8_t

cdef extern from "csrc/gb_ring.h" nogil:
    # the C types of the shared atomics, so that pointers to them reach the
    # accessors below uncast (and the build is warning-free)
    ctypedef uint64_t gb_au64 "_Atomic uint64_t"
    ctypedef int64_t gb_ai64 "_Atomic int64_t"

    enum:
        GB_HEADER_SIZE
        GB_SLOT_HEADER
        GB_KIND_ARRAY
        GB_KIND_MESSAGE
        GB_KIND_OBJECT
        GB_KIND_BYTES
        GB_FLAG_QUEUE
        GB_FLAG_BROADCAST
        GB_FREE
        GB_WRITING
        GB_FULL
        GB_READING
        GB_OK
        GB_EMPTY
        GB_FULL_RING
        GB_BUSY
        GB_STALE
        GB_E_MAGIC
        GB_E_VERSION
        GB_E_LAYOUT
        GB_E_SIZE
        GB_E_ARG
        GB_HAVE_FUTEX
        GB_LAYOUT_VERSION
        GB_MAX_PEERS
        GB_ROLE_WRITER
        GB_ROLE_READER

    ctypedef struct gb_waitq:
        pass

    ctypedef struct gb_header:
        uint32_t version
        uint32_t kind
        uint32_t flags
        uint32_t nslots
        uint32_t capacity
        uint64_t slot_size
        uint64_t slot_stride
        uint64_t slots_offset
        uint64_t total_size
        uint64_t schema_hash
        uint32_t meta_offset
        uint32_t meta_len
        int64_t maxsize
        uint64_t owner_pid
        uint64_t owner_start
        int64_t created_ns
        # atomics: reached only through the accessors below
        gb_au64 tail
        gb_au64 head
        gb_au64 wlock
        gb_ai64 pending
        gb_au64 writer_pid
        gb_au64 writer_start
        gb_ai64 unfinished
        gb_au64 wake_calls
        gb_au64 readers
        gb_waitq data
        gb_waitq space
        gb_waitq join

    ctypedef struct gb_slot:
        pass

    ctypedef struct gb_ring:
        uint8_t *base
        gb_header *hdr
        uint8_t *slots
        uint64_t stride
        uint64_t slot_size
        uint32_t nslots
        uint32_t capacity
        uint32_t kind
        uint32_t flags

    int64_t gb_now_ns()
    void gb_cpu_relax()
    void gb_sleep_ns(int64_t ns)
    void gb_copy_streaming(void *dst, const void *src, size_t n)
    uint64_t gb_llc_bytes()
    int gb_stream_copy_wanted(uint64_t item, uint64_t footprint, uint64_t llc)

    uint64_t gb_ring_nbytes(uint32_t nslots, uint64_t slot_size, uint32_t meta_len)
    int gb_ring_init(void *mem, uint64_t size, uint32_t kind, uint32_t flags,
                     uint32_t capacity, uint64_t slot_size, int64_t maxsize,
                     uint64_t schema_hash, const void *meta, uint32_t meta_len,
                     uint64_t owner_pid, uint64_t owner_start)
    int gb_ring_open(gb_ring *r, void *mem, uint64_t size)

    uint32_t gb_wait_prepare(gb_waitq *q)
    void gb_wait_done(gb_waitq *q)
    uint32_t gb_wait_count(const gb_waitq *q)
    int gb_wait_sleep(gb_waitq *q, uint32_t seen, int64_t timeout_ns, int64_t poll_ns,
                      int use_futex)
    void gb_wake(gb_ring *r, gb_waitq *q)
    void gb_wake_force(gb_ring *r, gb_waitq *q)

    uint64_t gb_word_pos(uint64_t w)
    uint32_t gb_word_pid(uint64_t w)
    uint32_t gb_word_state(uint64_t w)
    gb_slot *gb_slot_at(const gb_ring *r, uint64_t pos)
    uint8_t *gb_payload(gb_slot *s)

    uint8_t *gb_stream_begin(gb_ring *r, uint32_t pid, uint64_t *pos_out)
    void gb_stream_commit(gb_ring *r, uint32_t pid, uint64_t pos, uint64_t len)
    void gb_stream_commit_at(gb_ring *r, uint32_t pid, uint64_t pos, uint64_t len,
                             int64_t now_ns)
    void gb_stream_abort(gb_ring *r, uint64_t pos)
    uint8_t *gb_stream_begin_at(gb_ring *r, uint32_t pid, uint64_t pos)
    int gb_stream_skipped(const gb_ring *r, uint64_t pos)
    uint64_t gb_stream_tail(const gb_ring *r)
    uint64_t gb_stream_clamp(const gb_ring *r, uint64_t *cursor, uint64_t *overruns)
    int gb_read_begin(const gb_ring *r, uint64_t pos, uint64_t *word,
                      const uint8_t **payload, uint64_t *len)
    int gb_read_check(const gb_ring *r, uint64_t pos, uint64_t word)
    int gb_read_copy(const gb_ring *r, uint64_t pos, void *dst, uint64_t cap,
                     uint64_t *len)

    int gb_queue_put_begin(gb_ring *r, uint32_t pid, uint64_t start, uint64_t *pos_out,
                           uint64_t *blocker)
    void gb_queue_put_commit(gb_ring *r, uint32_t pid, uint64_t pos, uint64_t len)
    int gb_queue_get_begin(gb_ring *r, uint32_t pid, uint64_t start, uint64_t *pos_out,
                           uint64_t *blocker)
    void gb_queue_get_commit(gb_ring *r, uint64_t pos)
    void gb_count_store(uint64_t *p, uint64_t v)
    int gb_queue_recover(gb_ring *r, uint64_t at, uint64_t word)
    int64_t gb_queue_size(const gb_ring *r)
    int gb_spin_tail(const gb_ring *r, uint64_t seen, int64_t spin_ns)
    int gb_spin_queue(const gb_ring *r, int put, int64_t limit, int64_t spin_ns)

    void gb_set_heartbeat(gb_ring *r, int64_t now)
    int64_t gb_get_heartbeat(const gb_ring *r)
    void gb_set_writer(gb_ring *r, uint64_t pid, uint64_t start)
    uint64_t gb_load_u64(gb_au64 *p)
    int64_t gb_load_i64(gb_ai64 *p)
    int64_t gb_add_i64(gb_ai64 *p, int64_t v)
    uint64_t gb_add_u64(gb_au64 *p, int64_t v)
    uint64_t gb_slot_word(const gb_ring *r, uint64_t pos)
    uint64_t gb_slot_owner_start(const gb_ring *r, uint64_t pos)
    uint64_t gb_slot_claim_start(const gb_ring *r, uint64_t at, uint64_t claim)
    uint64_t gb_slot_aux(const gb_ring *r, uint64_t pos)
    void gb_slot_set_aux(gb_ring *r, uint64_t pos, uint64_t aux)
    uint64_t gb_slot_len(const gb_ring *r, uint64_t pos)

    int gb_lock_try(gb_au64 *lock, uint64_t pid)
    uint64_t gb_lock_holder(gb_au64 *lock)
    int gb_lock_steal(gb_au64 *lock, uint64_t dead, uint64_t pid)
    void gb_lock_release(gb_au64 *lock)

    ctypedef struct gb_blob:
        uint64_t magic
        uint64_t size
        gb_au64 state
        gb_au64 len
    uint64_t GB_BLOB_MAGIC

    int gb_peer_add(gb_ring *r, uint32_t pid, uint32_t role, uint64_t start)
    void gb_peer_del(gb_ring *r, int idx, uint64_t who)
    uint64_t gb_peer_get(const gb_ring *r, int idx, uint64_t *start)
    uint32_t gb_fd_armed(const gb_ring *r)
    void gb_arm_fd(gb_ring *r)
