/* The connection event stream (`hyperplane conntrack -E`, docs/cli.md): NEW, UPDATE (a state
 * or flag change) and DESTROY (with its reason), appended by whoever changes the table, under
 * the table lock, to a bounded ring that overwrites its oldest event. The writer never waits
 * for a reader: each reader keeps its own cursor, and one that falls a ring behind learns how
 * many events it lost (as conntrack's ENOBUFS). */
#ifndef HP_EVENTS_H
#define HP_EVENTS_H

#include "hp_conntrack.h"

enum hp_event_type { HP_EV_NEW = 1, HP_EV_UPDATE = 2, HP_EV_DESTROY = 3 };

#define HP_DESTROY_REASONS(X) \
    X(NONE) X(EXPIRED) X(RESET) X(DELETED) X(EARLY_DROP) X(REOPENED)
#define HP_DESTROY_ENUM(name) HP_DR_##name,
enum hp_destroy_reason { HP_DESTROY_REASONS(HP_DESTROY_ENUM) HP_DR_COUNT };
#undef HP_DESTROY_ENUM
extern const char *const hp_destroy_reason_names[HP_DR_COUNT];

typedef struct hp_event {
    uint64_t seq;                /* 1, 2, ... in the order the table changed */
    uint64_t now_ms;             /* the data plane's clock */
    hp_conn conn;                /* the entry after the change (as it was, for DESTROY) */
    uint64_t packets[2], bytes[2];
    uint32_t id, owner;
    uint8_t type;                /* enum hp_event_type */
    uint8_t old_state, old_flags;    /* UPDATE: what changed from */
    uint8_t reason;              /* DESTROY: enum hp_destroy_reason */
    uint32_t pad;
} hp_event;

typedef struct hp_event_ring {
    hp_event *ev;
    uint32_t mask;               /* size - 1, a power of two */
    uint64_t head;               /* events written so far */
} hp_event_ring;

/* A ring of at least size events (rounded up to a power of two); NULL when out of memory. */
hp_event_ring *hp_events_create(uint32_t size);
void hp_events_destroy(hp_event_ring *r);

void hp_events_push(hp_event_ring *r, int type, const hp_ct *ct, uint32_t id, uint8_t old_state,
                    uint8_t old_flags, int reason, uint64_t now_ms);

/* The writer's hook: one test when no one listens (ring NULL). */
static inline void hp_event_note(hp_event_ring *r, int type, const hp_ct *ct, uint32_t id,
                            uint8_t old_state, uint8_t old_flags, int reason, uint64_t now_ms)
{
    if (r)
        hp_events_push(r, type, ct, id, old_state, old_flags, reason, now_ms);
}

/* Copies up to max events after *cursor (events read so far) into out and advances the
 * cursor; *lost gets how many were overwritten before this reader took them. */
uint32_t hp_events_read(const hp_event_ring *r, uint64_t *cursor, hp_event *out, uint32_t max,
                        uint64_t *lost);

#endif
