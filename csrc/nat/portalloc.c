/* Port pools (docs/semantics.md section 5): a free array with swap-remove for O(1) random
 * allocation, a FIFO quarantine, and an open-addressing map from inside endpoint to external
 * port for endpoint-independent mapping. */
#include "hp_portalloc.h"

#include <stdlib.h>
#include <string.h>

static size_t align_up(size_t n)
{
    return (n + 63) & ~(size_t)63;
}

static uint32_t map_slots(uint32_t size)
{
    uint32_t nmap = 16;
    while (nmap < 2 * size)
        nmap <<= 1;
    return nmap;
}

/* Lays the pool out in mem (when p is given); returns the bytes it takes. */
static size_t layout(hp_pool *p, uint32_t size, uint8_t *mem)
{
    size_t off = 0;
#define PLACE(field, bytes)                       \
    if (p)                                        \
        p->field = (void *)(mem + off);           \
    off = align_up(off + (bytes));
    PLACE(st, sizeof(hp_pool_state))
    PLACE(free, size * sizeof(uint16_t))
    PLACE(q_port, size * sizeof(uint16_t))
    PLACE(q_until, size * sizeof(uint64_t))
    PLACE(q_charge, size * sizeof(uint32_t))
    PLACE(owner, size * sizeof(hp_port_owner))
    PLACE(map, map_slots(size) * sizeof(uint16_t))
#undef PLACE
    return off;
}

size_t hp_pool_region_bytes(uint16_t lo, uint16_t hi)
{
    return hi < lo ? 0 : layout(NULL, (uint32_t)hi - lo + 1, NULL);
}

int hp_pool_init(hp_pool *p, uint16_t lo, uint16_t hi, const hp_hash_seed *seed, void *mem,
                 int fresh)
{
    memset(p, 0, sizeof *p);
    if (lo == 0 || hi < lo)
        return -1;
    p->lo = lo;
    p->hi = hi;
    p->size = (uint32_t)hi - lo + 1;
    layout(p, p->size, mem);
    p->map_mask = map_slots(p->size) - 1;
    p->seed = seed;
    if (fresh) {
        for (uint32_t i = 0; i < p->size; i++)
            p->free[i] = (uint16_t)(lo + i);
        p->st->nfree = p->size;
    }
    return 0;
}

void hp_pool_set_key(hp_pool *p, uint64_t k0, uint64_t k1)
{
    p->st->key.k0 = k0;
    p->st->key.k1 = k1;
    p->st->draws = 0;
}

int hp_pool_has_free(const hp_pool *p, uint64_t now_ms)
{
    return p->st->nfree > 0 || (p->st->q_count > 0 && p->q_until[p->st->q_head] <= now_ms);
}

int hp_pool_q_pop(hp_pool *p, uint64_t now_ms, uint32_t *charge)
{
    if (p->st->q_count == 0 || p->q_until[p->st->q_head] > now_ms)
        return 0;
    *charge = p->q_charge[p->st->q_head];
    p->free[p->st->nfree++] = p->q_port[p->st->q_head];
    p->st->q_head = (p->st->q_head + 1) % p->size;
    p->st->q_count--;
    return 1;
}

uint16_t hp_pool_alloc(hp_pool *p)
{
    if (p->st->nfree == 0)
        return 0;
    /* A keyed PRF over a per-pool counter: a function that learns its own ports learns
     * nothing about its neighbours' (one key per pool), nor about the next ones. */
    uint8_t draw[8];
    for (int b = 0; b < 8; b++)
        draw[b] = (uint8_t)(p->st->draws >> (8 * b));
    p->st->draws++;
    uint64_t r = hp_siphash13(&p->st->key, draw, sizeof draw);
    uint32_t i = (uint32_t)(((r >> 32) * p->st->nfree) >> 32);
    uint16_t port = p->free[i];
    p->free[i] = p->free[--p->st->nfree];
    return port;
}

void hp_pool_release(hp_pool *p, uint16_t port, uint64_t now_ms, uint64_t quarantine_ms,
                     uint32_t charge)
{
    if (quarantine_ms == 0) {
        p->free[p->st->nfree++] = port;
        return;
    }
    uint32_t tail = (p->st->q_head + p->st->q_count) % p->size;
    p->q_port[tail] = port;
    p->q_until[tail] = now_ms + quarantine_ms;
    p->q_charge[tail] = charge;
    p->st->q_count++;
}

uint32_t hp_pool_endpoint_hash(const hp_hash_seed *seed, const uint8_t addr[16], uint16_t port)
{
    uint8_t buf[18];
    memcpy(buf, addr, 16);
    memcpy(buf + 16, &port, 2);
    return (uint32_t)hp_siphash13(seed, buf, sizeof buf);
}

static uint32_t endpoint_hash(const hp_pool *p, const uint8_t addr[16], uint16_t port)
{
    return hp_pool_endpoint_hash(p->seed, addr, port);
}

uint16_t hp_pool_map_find(const hp_pool *p, const uint8_t addr[16], uint16_t port, uint32_t hash)
{
    for (uint32_t i = hash & p->map_mask;; i = (i + 1) & p->map_mask) {
        uint16_t ext = p->map[i];
        if (ext == 0)
            return 0;
        const hp_port_owner *o = &p->owner[ext - p->lo];
        if (o->port == port && memcmp(o->addr, addr, 16) == 0)
            return ext;
    }
}

void hp_pool_map_add(hp_pool *p, uint16_t ext, const uint8_t addr[16], uint16_t port,
                     uint32_t hash)
{
    hp_port_owner *o = &p->owner[ext - p->lo];
    memcpy(o->addr, addr, 16);
    o->port = port;
    o->refs = 1;
    uint32_t i = hash & p->map_mask;
    while (p->map[i] != 0)
        i = (i + 1) & p->map_mask;
    p->map[i] = ext;
}

static void map_remove(hp_pool *p, uint16_t ext)
{
    const hp_port_owner *o = &p->owner[ext - p->lo];
    uint32_t i = endpoint_hash(p, o->addr, o->port) & p->map_mask;
    while (p->map[i] != ext)
        i = (i + 1) & p->map_mask;
    for (uint32_t j = i;;) {    /* backward shift, as in the connection index */
        j = (j + 1) & p->map_mask;
        if (p->map[j] == 0)
            break;
        const hp_port_owner *oj = &p->owner[p->map[j] - p->lo];
        uint32_t home = endpoint_hash(p, oj->addr, oj->port) & p->map_mask;
        int stays = (i <= j) ? (i < home && home <= j) : (i < home || home <= j);
        if (!stays) {
            p->map[i] = p->map[j];
            i = j;
        }
    }
    p->map[i] = 0;
}

void hp_pool_ref(hp_pool *p, uint16_t ext)
{
    p->owner[ext - p->lo].refs++;
}

int hp_pool_unref(hp_pool *p, uint16_t ext, int mapped, uint64_t now_ms, uint64_t quarantine_ms,
                  uint32_t charge)
{
    if (mapped) {
        if (--p->owner[ext - p->lo].refs > 0)
            return 0;
        map_remove(p, ext);
    }
    hp_pool_release(p, ext, now_ms, quarantine_ms, charge);
    return 1;
}

uint32_t hp_pool_in_use(const hp_pool *p)
{
    return p->size - p->st->nfree - p->st->q_count;
}

uint32_t hp_pool_quarantined(const hp_pool *p)
{
    return p->st->q_count;
}

size_t hp_pool_memory(const hp_pool *p)
{
    return hp_pool_region_bytes(p->lo, p->hi);
}

void hp_pool_repair_begin(hp_pool *p)
{
    memset(p->owner, 0, p->size * sizeof *p->owner);
    memset(p->map, 0, (p->map_mask + 1) * sizeof *p->map);
    memset(p->free, 0, p->size * sizeof *p->free);     /* the votes' counts until finish */
}

static int is_candidate(const hp_port_owner *o, const uint8_t addr[16], uint16_t sport)
{
    return o->port == sport && memcmp(o->addr, addr, 16) == 0;
}

void hp_pool_repair_vote(hp_pool *p, uint16_t port, const uint8_t addr[16], uint16_t sport)
{
    if (port < p->lo || port > p->hi)
        return;
    hp_port_owner *o = &p->owner[port - p->lo];     /* Boyer-Moore: refs is the lead */
    if (o->refs == 0) {
        memcpy(o->addr, addr, 16);
        o->port = sport;
        o->refs = 1;
    } else if (is_candidate(o, addr, sport)) {
        o->refs++;
    } else {
        o->refs--;
    }
}

void hp_pool_repair_count(hp_pool *p, uint16_t port, const uint8_t addr[16], uint16_t sport)
{
    if (port >= p->lo && port <= p->hi && is_candidate(&p->owner[port - p->lo], addr, sport) &&
        p->free[port - p->lo] < UINT16_MAX)
        p->free[port - p->lo]++;
}

int hp_pool_repair_attested(const hp_pool *p, uint16_t port, const uint8_t addr[16],
                            uint16_t sport)
{
    return port >= p->lo && port <= p->hi &&
           is_candidate(&p->owner[port - p->lo], addr, sport) && p->free[port - p->lo] >= 2;
}

int hp_pool_repair_claim(hp_pool *p, uint16_t port, const uint8_t addr[16], uint16_t sport,
                         int mapped)
{
    if (port < p->lo || port > p->hi)
        return -1;
    hp_port_owner *o = &p->owner[port - p->lo];
    if (o->refs == 0) {
        if (mapped) {
            /* One port per inside endpoint: a second (torn) entry claiming another port for
             * an endpoint already mapped would leave two mappings, one never found. */
            uint32_t hash = endpoint_hash(p, addr, sport);
            if (hp_pool_map_find(p, addr, sport, hash) != 0)
                return -1;
            hp_pool_map_add(p, port, addr, sport, hash);
        } else {
            o->refs = 1;      /* a marker until repair_finish */
        }
        return 0;
    }
    if (!mapped || o->port != sport || memcmp(o->addr, addr, 16) != 0)
        return -1;
    o->refs++;
    return 0;
}

int hp_pool_repair_finish(hp_pool *p, int mapped)
{
    uint8_t *quarantined = calloc(p->size, 1);
    uint16_t *q_port = malloc(p->size * sizeof *q_port);
    uint64_t *q_until = malloc(p->size * sizeof *q_until);
    uint32_t *q_charge = malloc(p->size * sizeof *q_charge);
    if (!quarantined || !q_port || !q_until || !q_charge) {
        free(quarantined);
        free(q_port);
        free(q_until);
        free(q_charge);
        return -1;
    }
    /* Keep the quarantine in order, less what a connection holds or is there twice. */
    hp_pool_state *st = p->st;
    uint32_t kept = 0, count = st->q_head < p->size && st->q_count <= p->size ? st->q_count : 0;
    for (uint32_t i = 0; i < count; i++) {
        uint32_t at = (st->q_head + i) % p->size;
        uint16_t port = p->q_port[at];
        if (port < p->lo || port > p->hi || p->owner[port - p->lo].refs > 0 ||
            quarantined[port - p->lo])
            continue;
        quarantined[port - p->lo] = 1;
        q_port[kept] = port;
        q_charge[kept] = p->q_charge[at];
        q_until[kept++] = p->q_until[at];
    }
    memcpy(p->q_port, q_port, kept * sizeof *q_port);
    memcpy(p->q_until, q_until, kept * sizeof *q_until);
    memcpy(p->q_charge, q_charge, kept * sizeof *q_charge);
    st->q_head = 0;
    st->q_count = kept;
    st->nfree = 0;
    for (uint32_t i = 0; i < p->size; i++)
        if (p->owner[i].refs == 0 && !quarantined[i])
            p->free[st->nfree++] = (uint16_t)(p->lo + i);
    if (!mapped)
        memset(p->owner, 0, p->size * sizeof *p->owner);
    free(quarantined);
    free(q_port);
    free(q_until);
    free(q_charge);
    return (int)(count - kept);
}
