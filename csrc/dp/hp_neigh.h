/* The data plane's neighbour table: (port, family, address) -> MAC, an open-addressing hash
 * table kept at most half full, indexed by a keyed hash (SipHash, a seed drawn at creation),
 * so the wire cannot aim entries at one probe chain. Entries come from the control plane (the
 * slow path); lookups come from forwarded traffic. Not thread-safe: the data plane calls it
 * under its table lock.
 *
 * Two kinds of entry (docs/semantics.md section 13): pinned ones, which the lab knows (its
 * hosts, the subnet gateways, the functions) and nothing learned from the wire replaces; and
 * learned ones, at most per_port of them on each port (so one port's neighbours cannot crowd
 * out another's), which age out when not confirmed for a while. */
#ifndef HP_NEIGH_H
#define HP_NEIGH_H

#include "hp_flow.h"

#include <stdint.h>

#define HP_NEIGH_ANY_PORT 0xFFFFu   /* an entry valid on every port; a port's own entry wins */
#define HP_NEIGH_PORTS 65           /* learned-entry counts: ports 0..63, then the any-port ones */

enum { HP_NEIGH_PINNED = 1 };

typedef struct hp_neigh {
    uint8_t used;                /* 0 empty, 1 live, 2 deleted */
    uint8_t family;              /* 4 or 6 */
    uint16_t port;               /* port index, or HP_NEIGH_ANY_PORT */
    uint8_t addr[16];            /* IPv4 in the first 4 bytes, the rest zero */
    uint8_t mac[6];
    uint8_t flags;               /* HP_NEIGH_PINNED */
    uint8_t pad;
    uint32_t confirmed_s;        /* learned: when last set (now_ms / 1000) */
} hp_neigh;

typedef struct hp_neigh_table {
    hp_neigh *slots;
    uint32_t mask;
    uint32_t count;              /* live entries */
    uint32_t used;               /* live + deleted slots */
    uint32_t per_port;           /* learned entries a port may hold */
    uint32_t learned[HP_NEIGH_PORTS];
    hp_hash_seed seed;
} hp_neigh_table;

/* capacity: entries (0: 4096); a port holds at most a quarter of them learned. Returns 0 or
 * -ENOMEM. */
int hp_neigh_init(hp_neigh_table *t, uint32_t capacity);
void hp_neigh_free(hp_neigh_table *t);

/* addr: 16 bytes (IPv4 zero-padded). flags: HP_NEIGH_PINNED or 0 (learned, confirmed at
 * now_ms). Returns 0; -EPERM when a learned entry would replace a pinned one; -ENOSPC when the
 * table or the port's share of learned entries is full. */
int hp_neigh_set(hp_neigh_table *t, uint16_t port, int family, const uint8_t *addr,
                 const uint8_t mac[6], int flags, uint64_t now_ms);
/* 0 or -ENOENT. */
int hp_neigh_del(hp_neigh_table *t, uint16_t port, int family, const uint8_t *addr);
/* Deletes every entry of one port (not the any-port ones); returns how many. */
uint32_t hp_neigh_del_port(hp_neigh_table *t, uint16_t port);
/* Deletes the learned entries not confirmed in the last max_age_ms; returns how many. */
uint32_t hp_neigh_age(hp_neigh_table *t, uint64_t now_ms, uint64_t max_age_ms);
void hp_neigh_clear(hp_neigh_table *t);

/* The MAC for addr seen from port: the port's own entry, then the any-port entry; or NULL.
 * flags (may be NULL) gets the entry's flags. */
const uint8_t *hp_neigh_lookup_ex(const hp_neigh_table *t, uint16_t port, int family,
                                  const uint8_t *addr, int *flags);
static inline const uint8_t *hp_neigh_lookup(const hp_neigh_table *t, uint16_t port,
                                             int family, const uint8_t *addr)
{
    return hp_neigh_lookup_ex(t, port, family, addr, NULL);
}

#endif
