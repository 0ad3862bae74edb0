/* The neighbour table. See hp_neigh.h. */
#include "hp_neigh.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static uint32_t pow2_at_least(uint32_t n)
{
    uint32_t p = 16;
    while (p < n && p < (1u << 30))
        p <<= 1;
    return p;
}

int hp_neigh_init(hp_neigh_table *t, uint32_t capacity)
{
    if (!capacity)
        capacity = 4096;
    /* At most half full, so probe chains stay short. */
    uint32_t slots = pow2_at_least(capacity * 2);
    memset(t, 0, sizeof(*t));
    t->slots = calloc(slots, sizeof(*t->slots));
    if (!t->slots)
        return -ENOMEM;
    t->mask = slots - 1;
    t->per_port = capacity / 4 ? capacity / 4 : 1;
    hp_random_seed(&t->seed);
    return 0;
}

void hp_neigh_free(hp_neigh_table *t)
{
    free(t->slots);
    t->slots = NULL;
}

static inline uint32_t neigh_hash(const hp_neigh_table *t, int family, uint16_t port,
                                  const uint8_t *addr)
{
    uint8_t key[20] = { (uint8_t)family, (uint8_t)(port >> 8), (uint8_t)port };
    memcpy(key + 4, addr, 16);
    return (uint32_t)hp_siphash13(&t->seed, key, sizeof key);
}

static inline uint32_t *learned_count(hp_neigh_table *t, uint16_t port)
{
    return &t->learned[port < HP_NEIGH_PORTS - 1 ? port : HP_NEIGH_PORTS - 1];
}

static hp_neigh *neigh_find(const hp_neigh_table *t, uint16_t port, int family,
                            const uint8_t *addr)
{
    int n = family == 6 ? 16 : 4;
    uint32_t i = neigh_hash(t, family, port, addr) & t->mask;
    for (uint32_t probes = 0; probes <= t->mask; probes++) {
        hp_neigh *e = &t->slots[i];
        if (e->used == 0)
            return NULL;
        if (e->used == 1 && e->port == port && e->family == family && memcmp(e->addr, addr, n) == 0)
            return e;
        i = (i + 1) & t->mask;
    }
    return NULL;
}

/* Rebuilds the table without deleted slots. */
static void neigh_rehash(hp_neigh_table *t)
{
    uint32_t slots = t->mask + 1;
    hp_neigh *old = malloc(slots * sizeof(*old));
    if (!old)
        return;
    memcpy(old, t->slots, slots * sizeof(*old));
    memset(t->slots, 0, slots * sizeof(*old));
    t->used = 0;
    for (uint32_t s = 0; s < slots; s++) {
        if (old[s].used != 1)
            continue;
        uint32_t i = neigh_hash(t, old[s].family, old[s].port, old[s].addr) & t->mask;
        while (t->slots[i].used)
            i = (i + 1) & t->mask;
        t->slots[i] = old[s];
        t->used++;
    }
    free(old);
}

static void neigh_remove(hp_neigh_table *t, hp_neigh *e)
{
    if (!(e->flags & HP_NEIGH_PINNED))
        (*learned_count(t, e->port))--;
    e->used = 2;
    t->count--;
}

int hp_neigh_set(hp_neigh_table *t, uint16_t port, int family, const uint8_t *addr,
                 const uint8_t mac[6], int flags, uint64_t now_ms)
{
    int pinned = (flags & HP_NEIGH_PINNED) != 0;
    hp_neigh *e = neigh_find(t, port, family, addr);
    if (e) {
        int was_pinned = (e->flags & HP_NEIGH_PINNED) != 0;
        if (was_pinned && !pinned)
            return -EPERM;
        if (!was_pinned && pinned)
            (*learned_count(t, port))--;
        memcpy(e->mac, mac, 6);
        e->flags = (uint8_t)(pinned ? HP_NEIGH_PINNED : 0);
        e->confirmed_s = (uint32_t)(now_ms / 1000u);
        return 0;
    }
    uint32_t slots = t->mask + 1;
    if (t->count + 1 > slots / 2 || (!pinned && *learned_count(t, port) >= t->per_port))
        return -ENOSPC;
    if (t->used + 1 > slots / 4 * 3)
        neigh_rehash(t);
    uint32_t i = neigh_hash(t, family, port, addr) & t->mask;
    while (t->slots[i].used == 1)
        i = (i + 1) & t->mask;
    e = &t->slots[i];
    if (e->used == 0)
        t->used++;
    memset(e, 0, sizeof *e);
    e->used = 1;
    e->family = (uint8_t)family;
    e->port = port;
    memcpy(e->addr, addr, 16);
    memcpy(e->mac, mac, 6);
    e->flags = (uint8_t)(pinned ? HP_NEIGH_PINNED : 0);
    e->confirmed_s = (uint32_t)(now_ms / 1000u);
    if (!pinned)
        (*learned_count(t, port))++;
    t->count++;
    return 0;
}

int hp_neigh_del(hp_neigh_table *t, uint16_t port, int family, const uint8_t *addr)
{
    hp_neigh *e = neigh_find(t, port, family, addr);
    if (!e)
        return -ENOENT;
    neigh_remove(t, e);
    return 0;
}

uint32_t hp_neigh_del_port(hp_neigh_table *t, uint16_t port)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i <= t->mask; i++) {
        hp_neigh *e = &t->slots[i];
        if (e->used == 1 && e->port == port) {
            neigh_remove(t, e);
            n++;
        }
    }
    return n;
}

uint32_t hp_neigh_age(hp_neigh_table *t, uint64_t now_ms, uint64_t max_age_ms)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i <= t->mask; i++) {
        hp_neigh *e = &t->slots[i];
        if (e->used == 1 && !(e->flags & HP_NEIGH_PINNED) &&
            (uint64_t)e->confirmed_s * 1000u + max_age_ms < now_ms) {
            neigh_remove(t, e);
            n++;
        }
    }
    return n;
}

void hp_neigh_clear(hp_neigh_table *t)
{
    memset(t->slots, 0, (size_t)(t->mask + 1) * sizeof(*t->slots));
    memset(t->learned, 0, sizeof t->learned);
    t->count = t->used = 0;
}

const uint8_t *hp_neigh_lookup_ex(const hp_neigh_table *t, uint16_t port, int family,
                                  const uint8_t *addr, int *flags)
{
    const hp_neigh *e = neigh_find(t, port, family, addr);
    if (!e && port != HP_NEIGH_ANY_PORT)
        e = neigh_find(t, HP_NEIGH_ANY_PORT, family, addr);
    if (flags)
        *flags = e ? e->flags : 0;
    return e ? e->mac : NULL;
}
