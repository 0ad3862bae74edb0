/* A pool of external ports for one (ENI, family, protocol): O(1) random allocation,
 * quarantine before reuse, endpoint-independent mappings with reference counts. */
#ifndef HP_PORTALLOC_H
#define HP_PORTALLOC_H

#include "hp_flow.h"

typedef struct hp_port_owner {
    uint8_t addr[16];            /* inside address that owns the mapping */
    uint16_t port;               /* inside port */
    uint16_t pad;
    uint32_t refs;               /* live connections using this external port */
} hp_port_owner;

/* The pool's counters, in the state region with its arrays. */
typedef struct hp_pool_state {
    uint32_t nfree;
    uint32_t q_head, q_count;
    uint32_t pad;
    hp_hash_seed key;            /* this pool's secret: port choice is SipHash(key, draws) */
    uint64_t draws;              /* the counter the PRF runs over (RFC 6056 algorithm 4-like) */
} hp_pool_state;

/* A process-local view: the constants and where the region holds the rest. */
typedef struct hp_pool {
    uint16_t lo, hi;
    uint32_t size;               /* hi - lo + 1 */
    hp_pool_state *st;
    uint16_t *free;              /* free ports; order matters (the model mirrors it) */
    uint16_t *q_port;            /* quarantine FIFO */
    uint64_t *q_until;
    uint32_t *q_charge;          /* whom each quarantined port is charged to: owner + 1, 0 none */
    hp_port_owner *owner;        /* indexed by port - lo */
    uint16_t *map;               /* (inside addr, port) -> external port; 0 = empty */
    uint32_t map_mask;
    const hp_hash_seed *seed;
} hp_pool;

/* Bytes of region memory a pool of ports lo..hi needs. */
size_t hp_pool_region_bytes(uint16_t lo, uint16_t hi);
/* Points the pool at its region memory (hp_pool_region_bytes, 64-byte aligned). fresh: the
 * memory is zeroed and every port starts free; else hp_pool_repair_* rebuild it. */
int hp_pool_init(hp_pool *p, uint16_t lo, uint16_t hi, const hp_hash_seed *seed, void *mem,
                 int fresh);

/* Attach: forget who holds what, let each surviving connection claim its port, then rebuild
 * the free ports from what nobody claimed, keeping the quarantine (less the claimed ports). */
void hp_pool_repair_begin(hp_pool *p);
/* -1 (nothing changes) when port is outside the pool, or held by a connection claimed
 * before and not shareable (mapped: the same inside endpoint shares it). */
int hp_pool_repair_claim(hp_pool *p, uint16_t port, const uint8_t addr[16], uint16_t sport,
                         int mapped);
/* Mapped pools, before the claims: a torn entry claiming a port first would take the
 * mapping from every whole connection sharing it. So each live entry votes for its port's
 * owner (vote: a majority vote kept in owner[]), then counts for the winner (count: in free[],
 * rebuilt by repair_finish), and attested says whether the entry's endpoint owns its port by
 * two votes or more; those claim first. Then repair_begin again for the claims. */
void hp_pool_repair_vote(hp_pool *p, uint16_t port, const uint8_t addr[16], uint16_t sport);
void hp_pool_repair_count(hp_pool *p, uint16_t port, const uint8_t addr[16], uint16_t sport);
int hp_pool_repair_attested(const hp_pool *p, uint16_t port, const uint8_t addr[16],
                            uint16_t sport);
/* Returns the number of quarantine entries dropped (claimed, duplicate or out of range), or
 * -1 when out of memory. */
int hp_pool_repair_finish(hp_pool *p, int mapped);

/* Whether a port is free or out of quarantine (hp_pool_alloc finds one after
 * hp_pool_q_pop has moved it); changes nothing. */
int hp_pool_has_free(const hp_pool *p, uint64_t now_ms);
/* Moves the oldest port whose quarantine has ended to the free ports: 1 and whom it was
 * charged to (owner + 1, 0 none) in *charge, or 0 when none has ended. The NAT pops at most
 * HP_QUARANTINE_MOVES at a time and hands each charge back (docs/semantics.md 13). */
#define HP_QUARANTINE_MOVES 64
int hp_pool_q_pop(hp_pool *p, uint64_t now_ms, uint32_t *charge);
/* A free port at random (RFC 6056), or 0 when none is free. */
uint16_t hp_pool_alloc(hp_pool *p);
/* Sets a fresh pool's secret key (the NAT draws one per pool from its seeded generator). */
void hp_pool_set_key(hp_pool *p, uint64_t k0, uint64_t k1);
/* Hands a port back, into quarantine when quarantine_ms > 0, there still charged to charge
 * (owner + 1, 0 none) until hp_pool_q_pop moves it out. */
void hp_pool_release(hp_pool *p, uint16_t port, uint64_t now_ms, uint64_t quarantine_ms,
                     uint32_t charge);

/* The hash of an inside endpoint the mapping index uses; the same for every pool of a NAT (one
 * seed), so a new connection computes it once whatever the number of ENIs it asks. */
uint32_t hp_pool_endpoint_hash(const hp_hash_seed *seed, const uint8_t addr[16], uint16_t port);
/* Endpoint-independent mapping: the external port of (addr, port), or 0. */
uint16_t hp_pool_map_find(const hp_pool *p, const uint8_t addr[16], uint16_t port, uint32_t hash);
/* Records a fresh mapping with one reference. */
void hp_pool_map_add(hp_pool *p, uint16_t ext, const uint8_t addr[16], uint16_t port,
                     uint32_t hash);
void hp_pool_ref(hp_pool *p, uint16_t ext);
/* Drops a reference; the last one removes the mapping and releases the port (returns 1). */
int hp_pool_unref(hp_pool *p, uint16_t ext, int mapped, uint64_t now_ms, uint64_t quarantine_ms,
                  uint32_t charge);

uint32_t hp_pool_in_use(const hp_pool *p);       /* allocated, not free nor quarantined */
uint32_t hp_pool_quarantined(const hp_pool *p);
size_t hp_pool_memory(const hp_pool *p);

#endif
