/* The data plane's neighbour table: (port, family, address) -> MAC, an open-addressing hash
 * table kept at most half full. Entries come from the control plane (slow path); lookups come
 * from forwarded traffic. Not thread-safe: the data plane calls it under its table lock. */
#ifndef HP_NEIGH_H
#define HP_NEIGH_H

#include <stdint.h>

#define HP_NEIGH_ANY_PORT 0xFFFFu   /* an entry valid on every port; a port's own entry wins */

typedef struct hp_neigh {
    uint8_t used;                /* 0 empty, 1 live, 2 deleted */
    uint8_t family;              /* 4 or 6 */
    uint16_t port;               /* port index, or HP_NEIGH_ANY_PORT */
    uint8_t addr[16];            /* IPv4 in the first 4 bytes, the rest zero */
    uint8_t mac[6];
    uint8_t pad[2];
} hp_neigh;

typedef struct hp_neigh_table {
    hp_neigh *slots;
    uint32_t mask;
    uint32_t count;              /* live entries */
    uint32_t used;               /* live + deleted slots */
} hp_neigh_table;

/* capacity: entries (0: 4096). Returns 0 or -ENOMEM. */
int hp_neigh_init(hp_neigh_table *t, uint32_t capacity);
void hp_neigh_free(hp_neigh_table *t);

/* addr: 16 bytes (IPv4 zero-padded). set returns 0 or -ENOSPC; del 0 or -ENOENT. */
int hp_neigh_set(hp_neigh_table *t, uint16_t port, int family, const uint8_t *addr,
                 const uint8_t mac[6]);
int hp_neigh_del(hp_neigh_table *t, uint16_t port, int family, const uint8_t *addr);
/* Deletes every entry of one port (not the any-port ones); returns how many. */
uint32_t hp_neigh_del_port(hp_neigh_table *t, uint16_t port);
void hp_neigh_clear(hp_neigh_table *t);

/* The MAC for addr seen from port: the port's own entry, then the any-port entry; or NULL. */
const uint8_t *hp_neigh_lookup(const hp_neigh_table *t, uint16_t port, int family,
                               const uint8_t *addr);

#endif
