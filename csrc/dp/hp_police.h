/* The punt policer (docs/semantics.md section 13): frames the loop hands to the slow path,
 * charged per (port, source MAC) and class, so that no sender spends another's budget. */
#ifndef HP_POLICE_H
#define HP_POLICE_H

#include "hp_nat.h"
#include "hp_reject.h"
#define HP_PUNT_PER_S 200        /* punts per second of one class from one source ... */
#define HP_PUNT_BURST 100        /* ... and at once */
#define HP_POLICE_PORTS 64       /* = HP_DP_MAX_PORTS */
/* NEIGH_MISS punts are frames of tracked connections waiting for ARP / NDP: the slow path
 * queues them (bounded per next hop) and sends them once resolved. A cold neighbour on a busy
 * port punts hundreds at once, so they get a bucket of their own per port, this big at least;
 * a flood of them still costs the slow path no more than this a second and leaves the other
 * classes' buckets alone. */
#define HP_NEIGH_MISS_PER_S 2000
#define HP_NEIGH_MISS_BURST 512       /* half a punt buffer side: ARP keeps room */

/* What a punt asks of the slow path, each with its own bucket (docs/semantics.md section 13):
 * one kind flooding leaves the others theirs. TTL_EXCEEDED and TOO_BIG punts are ICMP errors
 * to make; fragments and the rest are OTHER. */
#define HP_POLICE_CLASSES(X) X(ARP) X(NDP) X(ECHO) X(ICMP_ERR) X(OTHER) X(NEIGH_MISS)
#define HP_PC_ENUM(name) HP_PC_##name,
enum hp_police_class { HP_POLICE_CLASSES(HP_PC_ENUM) HP_PC_COUNT };
#undef HP_PC_ENUM
extern const char *const hp_police_class_names[HP_PC_COUNT];

/* Sources: a punt is charged to the (port, source MAC) that sent it, so one function on the
 * shared inside port, or one neighbour on an ENI, cannot spend another's budget. A source gets
 * a slot in a 4-way set (keyed hash) when one is free or idle for HP_POLICE_IDLE_MS and its
 * port's admission bucket allows; until then, and for a MAC that cannot get one, it shares its
 * port's stranger buckets, so MACs made up by the thousand share one budget. */
#define HP_POLICE_SLOTS 1024
#define HP_POLICE_WAYS 4
#define HP_POLICE_IDLE_MS 10000
#define HP_POLICE_ADMIT_PER_S 2
#define HP_POLICE_ADMIT_BURST 16

typedef struct hp_police_source {
    uint8_t mac[6];
    uint16_t port;               /* port + 1; 0: a free slot */
    uint64_t last_ms;
    hp_rate rate[HP_PC_COUNT - 1];       /* all but NEIGH_MISS, which is per port */
} hp_police_source;

typedef struct hp_punt_police {
    hp_police_source slot[HP_POLICE_SLOTS];
    hp_rate stranger[HP_POLICE_PORTS][HP_PC_COUNT - 1];
    hp_rate neigh_miss[HP_POLICE_PORTS];
    hp_rate admit[HP_POLICE_PORTS];
    uint32_t per_s, burst;
    hp_hash_seed seed;
    uint64_t policed[HP_R_COUNT];        /* by punt reason */
    uint64_t policed_class[HP_PC_COUNT];
    uint64_t strangers;                  /* punts charged to a stranger bucket */
} hp_punt_police;

/* Every bucket at per_s and burst; NEIGH_MISS at least at its own limits. Forgets sources. */
void hp_police_init(hp_punt_police *p, uint32_t per_s, uint32_t burst);
/* The class of a punt of reason whose frame starts at eth (its Ethernet header, elen bytes). */
int hp_police_class(int reason, const uint8_t *eth, uint32_t elen);
/* Whether a frame of reason from port (eth: its Ethernet header, elen bytes) may be punted
 * now; counts it by reason and class when not. */
int hp_police_punt(hp_punt_police *p, uint32_t port, int reason, const uint8_t *eth,
                   uint32_t elen, uint64_t now_ms);

#endif
