# The locks of the Cython layer: the table lock (csrc/nat/hp_lock.h; docs/semantics.md, "Threads
# and the table lock"), which the Nat owns and the data plane's loop holds per batch, and plain
# pthread mutexes. Every holder takes them with the GIL released and never takes the GIL while
# holding one.
from libc.stdint cimport uint64_t

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    int pthread_mutex_init(pthread_mutex_t *m, const void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)

cdef extern from "hp_lock.h" nogil:
    enum: HP_CHUNK_FRAMES
    enum: HP_CHUNK_EXPIRE
    enum: HP_STEP_EXPIRE
    enum: HP_CHUNK_SCAN
    enum: HP_STEP_SCAN
    enum: HP_STEP_DELETE
    enum: HP_CHUNK_LOOKUPS
    ctypedef struct hp_table_lock:
        pthread_mutex_t mutex
    ctypedef struct hp_lock_stats:
        uint64_t holds, holds_over, hold_max_ns, hold_total_ns
    uint64_t hp_mono_ns()
    int hp_lock_init(hp_table_lock *l)
    void hp_lock_destroy(hp_table_lock *l)
    void hp_lock_acquire(hp_table_lock *l)
    void hp_lock_release(hp_table_lock *l)
    int hp_lock_spent(const hp_table_lock *l)
    void hp_lock_stats_take(hp_table_lock *l, hp_lock_stats *out, int reset)
