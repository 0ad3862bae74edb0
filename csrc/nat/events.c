/* The connection event ring (hp_events.h). */
#include "hp_events.h"

#include <stdlib.h>
#include <string.h>

#define HP_DESTROY_NAME(name) #name,
const char *const hp_destroy_reason_names[HP_DR_COUNT] = {HP_DESTROY_REASONS(HP_DESTROY_NAME)};
#undef HP_DESTROY_NAME

_Static_assert(sizeof(hp_event) == 128, "an event is two cache lines");

hp_event_ring *hp_events_create(uint32_t size)
{
    uint32_t n = 16;
    while (n < size && n < (1u << 24))
        n <<= 1;
    hp_event_ring *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->ev = calloc(n, sizeof *r->ev);
    if (!r->ev) {
        free(r);
        return NULL;
    }
    r->mask = n - 1;
    return r;
}

void hp_events_destroy(hp_event_ring *r)
{
    if (r)
        free(r->ev);
    free(r);
}

void hp_events_push(hp_event_ring *r, int type, const hp_ct *ct, uint32_t id, uint8_t old_state,
                    uint8_t old_flags, int reason, uint64_t now_ms)
{
    hp_event *e = &r->ev[r->head & r->mask];
    const hp_conn_stats *st = &ct->stats[id];
    e->seq = ++r->head;
    e->now_ms = now_ms;
    e->conn = ct->conns[id];
    memcpy(e->packets, st->packets, sizeof e->packets);
    memcpy(e->bytes, st->bytes, sizeof e->bytes);
    e->id = id;
    e->owner = st->owner;
    e->type = (uint8_t)type;
    e->old_state = old_state;
    e->old_flags = old_flags;
    e->reason = (uint8_t)reason;
}

uint32_t hp_events_read(const hp_event_ring *r, uint64_t *cursor, hp_event *out, uint32_t max,
                        uint64_t *lost)
{
    uint64_t size = (uint64_t)r->mask + 1, from = *cursor;
    *lost = 0;
    if (r->head > size && from < r->head - size) {
        *lost = r->head - size - from;
        from = r->head - size;
    }
    uint32_t n = 0;
    for (; from < r->head && n < max; from++)
        out[n++] = r->ev[from & r->mask];
    *cursor = from;
    return n;
}
