# The table lock (docs/semantics.md, "Threads and the table lock"): a process-local pthread
# mutex that the Nat owns and the data plane's loop holds per batch. Every holder takes it with
# the GIL released and never takes the GIL while holding it.
from libc.stdint cimport uint64_t

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_mutexattr_t:
        pass
    enum: PTHREAD_PRIO_INHERIT
    int pthread_mutexattr_init(pthread_mutexattr_t *a)
    int pthread_mutexattr_setprotocol(pthread_mutexattr_t *a, int protocol)
    int pthread_mutexattr_destroy(pthread_mutexattr_t *a)
    int pthread_mutex_init(pthread_mutex_t *m, const void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec *ts)
    enum: CLOCK_MONOTONIC


cdef inline uint64_t mono_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec


cdef inline int pi_mutex_init(pthread_mutex_t *m) noexcept nogil:
    """A priority-inheriting mutex: a holder preempted while the (realtime) forwarding thread
    waits for it runs at the waiter's priority until it lets go."""
    cdef pthread_mutexattr_t a
    pthread_mutexattr_init(&a)
    pthread_mutexattr_setprotocol(&a, PTHREAD_PRIO_INHERIT)
    cdef int rc = pthread_mutex_init(m, &a)
    pthread_mutexattr_destroy(&a)
    return rc
