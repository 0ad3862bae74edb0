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
    return 0;
}

void hp_neigh_free(hp_neigh_table *t)
{
    free(t->slots);
    t->slots = NULL;
}

static inline uint32_t neigh_hash(int family, uint16_t port, const uint8_t *addr)
{
    /* Lookups from forwarded traffic stop at the first empty slot of a half-empty table, and
     * entries come from the control plane, so a plain multiplicative hash is enough. */
    uint64_t h = 0x9E3779B97F4A7C15ull * (uint64_t)(family * 65536u + port + 1);
    int n = family == 6 ? 16 : 4;
    for (int i = 0; i < n; i += 4) {
        uint32_t w;
        memcpy(&w, addr + i, 4);
        h = (h ^ w) * 0xBF58476D1CE4E5B9ull;
    }
    return (uint32_t)(h >> 32);
}

static hp_neigh *neigh_find(const hp_neigh_table *t, uint16_t port, int family,
                            const uint8_t *addr)
{
    int n = family == 6 ? 16 : 4;
    uint32_t i = neigh_hash(family, port, addr) & t->mask;
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
        uint32_t i = neigh_hash(old[s].family, old[s].port, old[s].addr) & t->mask;
        while (t->slots[i].used)
            i = (i + 1) & t->mask;
        t->slots[i] = old[s];
        t->used++;
    }
    free(old);
}

int hp_neigh_set(hp_neigh_table *t, uint16_t port, int family, const uint8_t *addr,
                 const uint8_t mac[6])
{
    hp_neigh *e = neigh_find(t, port, family, addr);
    if (e) {
        memcpy(e->mac, mac, 6);
        return 0;
    }
    uint32_t slots = t->mask + 1;
    if (t->count + 1 > slots / 2)
        return -ENOSPC;
    if (t->used + 1 > slots / 4 * 3)
        neigh_rehash(t);
    uint32_t i = neigh_hash(family, port, addr) & t->mask;
    while (t->slots[i].used == 1)
        i = (i + 1) & t->mask;
    e = &t->slots[i];
    if (e->used == 0)
        t->used++;
    e->used = 1;
    e->family = (uint8_t)family;
    e->port = port;
    memcpy(e->addr, addr, 16);
    memcpy(e->mac, mac, 6);
    t->count++;
    return 0;
}

int hp_neigh_del(hp_neigh_table *t, uint16_t port, int family, const uint8_t *addr)
{
    hp_neigh *e = neigh_find(t, port, family, addr);
    if (!e)
        return -ENOENT;
    e->used = 2;
    t->count--;
    return 0;
}

uint32_t hp_neigh_del_port(hp_neigh_table *t, uint16_t port)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i <= t->mask; i++) {
        hp_neigh *e = &t->slots[i];
        if (e->used == 1 && e->port == port) {
            e->used = 2;
            t->count--;
            n++;
        }
    }
    return n;
}

void hp_neigh_clear(hp_neigh_table *t)
{
    memset(t->slots, 0, (size_t)(t->mask + 1) * sizeof(*t->slots));
    t->count = t->used = 0;
}

const uint8_t *hp_neigh_lookup(const hp_neigh_table *t, uint16_t port, int family,
                               const uint8_t *addr)
{
    const hp_neigh *e = neigh_find(t, port, family, addr);
    if (!e && port != HP_NEIGH_ANY_PORT)
        e = neigh_find(t, HP_NEIGH_ANY_PORT, family, addr);
    return e ? e->mac : NULL;
}
