/* The table lock (docs/semantics.md section 12): one process-local, priority-inheriting mutex
 * around the NAT's table, ports and counters. The data plane's loop holds it per batch; every
 * other caller per chunk of work (the HP_CHUNK_* sizes), checking the clock between steps
 * (HP_STEP_*) and ending the hold once it has run past HP_HOLD_BUDGET_NS, so that no caller
 * keeps the forwarding thread waiting for long. Holds longer than HP_LOCK_BUDGET_NS (the
 * contract) are counted. Callers never wait for anything else while they hold it. */
#ifndef HP_LOCK_H
#define HP_LOCK_H

#include <pthread.h>
#include <stdint.h>

#define HP_CHUNK_FRAMES 64          /* frames translated per hold (the loop's batch) */
#define HP_CHUNK_EXPIRE 256         /* connections expired per hold, at most */
#define HP_STEP_EXPIRE 16           /* ... in steps, checking the clock between them */
#define HP_CHUNK_SCAN 16384         /* table slots a listing scans per hold, at most */
#define HP_STEP_SCAN 512            /* ... in steps, checking the clock between them */
#define HP_STEP_DELETE 16           /* slots a deletion scans between two looks at the clock:
                                     * each match is a removal, dearer than a copy */
#define HP_CHUNK_LOOKUPS 1024       /* packed keys looked up per hold */
#define HP_HOLD_BUDGET_NS 100000ull /* a hold ends after the step that passes this */
#define HP_LOCK_BUDGET_NS 200000ull /* longer holds are counted */

typedef struct hp_table_lock {
    pthread_mutex_t mutex;
    uint64_t hold_start_ns;      /* of the hold under way */
    uint64_t holds, holds_over, hold_max_ns, hold_total_ns;    /* callers' holds, not the loop's */
} hp_table_lock;

typedef struct hp_lock_stats {
    uint64_t holds, holds_over, hold_max_ns, hold_total_ns;
} hp_lock_stats;

uint64_t hp_mono_ns(void);
/* 0, or an error number of pthread_mutex_init. */
int hp_lock_init(hp_table_lock *l);
void hp_lock_destroy(hp_table_lock *l);
void hp_lock_acquire(hp_table_lock *l);
/* Ends a hold, counting it. */
void hp_lock_release(hp_table_lock *l);
/* Whether the hold under way has used its budget: the caller ends it after this step. */
static inline int hp_lock_spent(const hp_table_lock *l)
{
    return hp_mono_ns() - l->hold_start_ns > HP_HOLD_BUDGET_NS;
}
/* The hold counters (taking the lock for a moment); reset: start counting again. */
void hp_lock_stats_take(hp_table_lock *l, hp_lock_stats *out, int reset);

#endif
