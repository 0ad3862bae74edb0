/* Port pools (docs/semantics.md section 5): a free array with swap-remove for O(1) random
 * allocation, a FIFO quarantine, and an open-addressing map from inside endpoint to external
 * port for endpoint-independent mapping. */
#include "hp_portalloc.h"

#include <stdlib.h>
#include <string.h>

#define HP_QUARANTINE_MOVES 64   /* ports released from quarantine per allocation, at most */

int hp_pool_init(hp_pool *p, uint16_t lo, uint16_t hi, const hp_hash_seed *seed)
{
    memset(p, 0, sizeof *p);
    if (lo == 0 || hi < lo)
        return -1;
    p->lo = lo;
    p->hi = hi;
    p->size = (uint32_t)hi - lo + 1;
    uint32_t nmap = 16;
    while (nmap < 2 * p->size)
        nmap <<= 1;
    p->free = malloc(p->size * sizeof *p->free);
    p->q_port = malloc(p->size * sizeof *p->q_port);
    p->q_until = malloc(p->size * sizeof *p->q_until);
    p->owner = malloc(p->size * sizeof *p->owner);
    p->map = malloc(nmap * sizeof *p->map);
    if (!p->free || !p->q_port || !p->q_until || !p->owner || !p->map) {
        hp_pool_free(p);
        return -1;
    }
    /* Written now rather than zeroed lazily by the kernel: the data path never page-faults. */
    memset(p->owner, 0, p->size * sizeof *p->owner);
    memset(p->map, 0, nmap * sizeof *p->map);
    memset(p->q_port, 0, p->size * sizeof *p->q_port);
    memset(p->q_until, 0, p->size * sizeof *p->q_until);
    p->map_mask = nmap - 1;
    p->seed = seed;
    for (uint32_t i = 0; i < p->size; i++)
        p->free[i] = (uint16_t)(lo + i);
    p->nfree = p->size;
    return 0;
}

void hp_pool_free(hp_pool *p)
{
    free(p->free);
    free(p->q_port);
    free(p->q_until);
    free(p->owner);
    free(p->map);
    memset(p, 0, sizeof *p);
}

uint16_t hp_pool_alloc(hp_pool *p, uint64_t *rng, uint64_t now_ms)
{
    for (int moved = 0; moved < HP_QUARANTINE_MOVES && p->q_count > 0 &&
                        p->q_until[p->q_head] <= now_ms; moved++) {
        p->free[p->nfree++] = p->q_port[p->q_head];
        p->q_head = (p->q_head + 1) % p->size;
        p->q_count--;
    }
    if (p->nfree == 0)
        return 0;
    uint64_t r = hp_splitmix64(rng);
    uint32_t i = (uint32_t)(((r >> 32) * p->nfree) >> 32);
    uint16_t port = p->free[i];
    p->free[i] = p->free[--p->nfree];
    return port;
}

void hp_pool_release(hp_pool *p, uint16_t port, uint64_t now_ms, uint64_t quarantine_ms)
{
    if (quarantine_ms == 0) {
        p->free[p->nfree++] = port;
        return;
    }
    uint32_t tail = (p->q_head + p->q_count) % p->size;
    p->q_port[tail] = port;
    p->q_until[tail] = now_ms + quarantine_ms;
    p->q_count++;
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

void hp_pool_unref(hp_pool *p, uint16_t ext, int mapped, uint64_t now_ms, uint64_t quarantine_ms)
{
    if (mapped) {
        if (--p->owner[ext - p->lo].refs > 0)
            return;
        map_remove(p, ext);
    }
    hp_pool_release(p, ext, now_ms, quarantine_ms);
}

uint32_t hp_pool_in_use(const hp_pool *p)
{
    return p->size - p->nfree - p->q_count;
}

uint32_t hp_pool_quarantined(const hp_pool *p)
{
    return p->q_count;
}

size_t hp_pool_memory(const hp_pool *p)
{
    return (size_t)p->size * (sizeof *p->free + sizeof *p->q_port + sizeof *p->q_until +
                              sizeof *p->owner) +
           (size_t)(p->map_mask + 1) * sizeof *p->map;
}
