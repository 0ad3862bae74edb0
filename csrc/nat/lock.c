/* The table lock and its hold budgets. See hp_lock.h. */
#include "hp_lock.h"

#include <time.h>

uint64_t hp_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int hp_lock_init(hp_table_lock *l)
{
    /* Priority inheritance: a holder preempted while a realtime forwarding thread waits for
     * the lock runs at the waiter's priority until it lets go. */
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setprotocol(&a, PTHREAD_PRIO_INHERIT);
    int rc = pthread_mutex_init(&l->mutex, &a);
    pthread_mutexattr_destroy(&a);
    l->hold_start_ns = l->holds = l->holds_over = l->hold_max_ns = l->hold_total_ns = 0;
    return rc;
}

void hp_lock_destroy(hp_table_lock *l)
{
    pthread_mutex_destroy(&l->mutex);
}

void hp_lock_acquire(hp_table_lock *l)
{
    pthread_mutex_lock(&l->mutex);
    l->hold_start_ns = hp_mono_ns();
}

void hp_lock_release(hp_table_lock *l)
{
    uint64_t held = hp_mono_ns() - l->hold_start_ns;
    l->holds++;
    l->hold_total_ns += held;
    l->holds_over += held > HP_LOCK_BUDGET_NS;
    if (held > l->hold_max_ns)
        l->hold_max_ns = held;
    pthread_mutex_unlock(&l->mutex);
}

void hp_lock_stats_take(hp_table_lock *l, hp_lock_stats *out, int reset)
{
    pthread_mutex_lock(&l->mutex);
    out->holds = l->holds;
    out->holds_over = l->holds_over;
    out->hold_max_ns = l->hold_max_ns;
    out->hold_total_ns = l->hold_total_ns;
    if (reset)
        l->holds = l->holds_over = l->hold_max_ns = l->hold_total_ns = 0;
    pthread_mutex_unlock(&l->mutex);
}
