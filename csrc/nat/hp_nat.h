/* The NAT: the connection table, the ENIs with their port pools, the functions (sources) and
 * the groups that map a function's (subnet, security groups) to its ENIs; and the batch call
 * that translates frames. */
#ifndef HP_NAT_H
#define HP_NAT_H

#include "hp_conntrack.h"
#include "hp_events.h"
#include "hp_packet.h"
#include "hp_portalloc.h"
#include "hp_reject.h"
#include "hp_secgroup.h"
#include "hp_state.h"

#define HP_GROUP_MAX_ENIS 64

typedef struct hp_nat_config {
    uint32_t capacity;           /* connections */
    uint16_t port_lo, port_hi;   /* per pool, default 536..65535 */
    uint8_t per_connection;      /* 0: endpoint-independent mapping, 1: a port per connection */
    uint8_t pad[3];
    uint64_t quarantine_ms;
    uint16_t mtu_inside, mtu_outside;
    uint32_t journal_size;       /* expired connections kept for the caller to read */
    uint64_t port_seed;          /* SplitMix64 seed for port choice */
    hp_hash_seed hash_seed;      /* all zero: random */
    hp_timeouts timeouts;
} hp_nat_config;

void hp_nat_config_default(hp_nat_config *cfg);

typedef struct hp_result {
    uint8_t verdict;             /* enum hp_verdict */
    uint8_t reason;              /* enum hp_reason */
    uint16_t port;               /* egress: 0 the inside port, e + 1 ENI e */
    uint32_t conn;               /* connection id, HP_CT_NONE when none */
} hp_result;

enum hp_counter {
    HP_C_FWD_OUT_PACKETS, HP_C_FWD_OUT_BYTES, HP_C_FWD_IN_PACKETS, HP_C_FWD_IN_BYTES,
    HP_C_CONN_CREATED, HP_C_CONN_ESTABLISHED, HP_C_CONN_EXPIRED, HP_C_JOURNAL_OVERFLOW,
    HP_C_REJECT_OVERFLOW, HP_C_RST_SENT, HP_C_RST_LIMITED,
    HP_C_CONN_EARLY_DROPPED, HP_C_REFUSAL_SENT, HP_C_REFUSAL_LIMITED, HP_C_HAIRPIN_PACKETS,
    HP_C_HAIRPIN_REFUSED, HP_C_TCP_IGNORED, HP_C_COUNT
};
extern const char *const hp_counter_names[HP_C_COUNT];

/* One address of a function. A function's addresses share its MAC and its owner index. */
typedef struct hp_source {
    uint8_t addr[16];
    uint8_t family;
    uint8_t allow_v6;
    uint16_t group;
    uint8_t mac[6];
    uint8_t has_mac;             /* 0: the MAC is not checked (tests, callers without one) */
    uint8_t pad;
    uint32_t owner;              /* the function: index of the first source with this MAC */
} hp_source;

typedef struct hp_group {
    uint16_t n_enis;
    uint16_t enis[HP_GROUP_MAX_ENIS];   /* oldest first; the last takes new connections */
    hp_sg_set *sg;               /* egress rules; NULL allows everything */
    uint64_t sg_denied;          /* new connections the rules refused */
    uint8_t can_grow;            /* the control plane can add an ENI (below its limit) */
} hp_group;

typedef struct hp_eni_pools {
    hp_pool pool[2][2];          /* [family: 0 IPv4, 1 IPv6][proto: 0 TCP, 1 UDP] */
    void *mem;                   /* their block of the state region */
    size_t mem_len;
} hp_eni_pools;

/* What the NAT keeps in its state region (hp_state.h) besides the journal, the table and the
 * pools. Indices and offsets only. A new persistent field goes here. */
typedef struct hp_nat_shared {
    hp_hash_seed hash_seed;
    uint64_t port_seed;          /* as given when the state was made */
    uint64_t rng;                /* port choice */
    uint32_t n_enis;             /* ENIs complete: raised last when one is added */
    uint32_t j_head, j_count;    /* the journal ring */
    /* 1 from journalling a connection to the end of its delete (or reopen): an attach finishes
     * that delete, and only it (finish_journalled in natstate.c). */
    uint32_t j_deleting;
    uint64_t end;                /* region bytes in use: the next ENI's pools go there */
    uint64_t eni_off[HP_MAX_ENIS];   /* where each ENI's pools are in the region */
    uint64_t eni_len[HP_MAX_ENIS];   /* the bytes of that block (0: none yet) */
    /* 1: the slot was released (its ENI reclaimed, nothing left of it): its id and its block
     * go to the next ENI whose pools fit there. Slots below n_enis only. */
    uint8_t eni_free[HP_MAX_ENIS];
    uint64_t counters[HP_C_COUNT];
    uint64_t drops[HP_R_COUNT];  /* drops and punts, by reason */
    hp_eni_addr eni_addr[HP_MAX_ENIS];
    hp_eni_counters eni_ctr[HP_MAX_ENIS];
} hp_nat_shared;

struct hp_func;

typedef struct hp_nat {
    hp_nat_config cfg;
    hp_ct ct;
    hp_region state;             /* the region: shared with the next process on this file */
    hp_nat_shared *sh;
    hp_eni_addr *eni_addr;       /* sh->eni_addr */
    hp_eni_pools *eni_pools[HP_MAX_ENIS];
    uint32_t n_enis;             /* sh->n_enis, as this process sees it */
    uint8_t eni_back[HP_MAX_ENIS];   /* an ENI of the state file that add_eni has not yet
                                      * given back since the attach */
    hp_source *sources;          /* sources and groups are process-local: re-added at start */
    uint32_t n_sources, cap_sources;
    hp_group *groups;
    uint32_t n_groups, cap_groups;
    struct hp_func *funcs;       /* per function, indexed like sources (hp_quota.h) */
    uint32_t cap_funcs;
    uint64_t *counters;          /* sh->counters */
    uint64_t *drops;             /* sh->drops */
    hp_conn_record *journal;     /* ring of connections that expired */
    hp_eni_counters *eni_ctr;    /* sh->eni_ctr, [HP_MAX_ENIS] */
    hp_reject_ring rejects;
    hp_rate rst_rate;            /* RSTs answering segments of expired connections */
    uint8_t attached;            /* the state came from a file made before */
    uint32_t repaired;           /* at attach: torn entries and quarantine records dropped */
    hp_rate refusal_rate;        /* answers to refused new connections (hp_answer.h) */
    hp_event_ring *events;       /* NULL until someone listens (hp_events.h) */
} hp_nat;

hp_nat *hp_nat_create(const hp_nat_config *cfg);
/* Creates the NAT with its state in the file at path (anonymous memory when path is NULL):
 * attaches to the state there when the file was made with the same config. Returns 0, or
 * -EINVAL (not a state file, another config or layout), -EBUSY (another process has it),
 * -ENOMEM or another -errno, with a message in err. */
int hp_nat_open(const hp_nat_config *cfg, const char *path, hp_nat **out, char *err,
                size_t errlen);
void hp_nat_destroy(hp_nat *nat);

/* Adds an ENI with id `id`, or with the lowest free id when id is -1; returns its id, -1 (no
 * room, a bad id, no address) or -3 (id is a live ENI's). v4 is 4 bytes, v6 16 bytes; either
 * may be NULL. An id is free when no ENI ever had it or its ENI was released. After an attach,
 * the ENIs of the state come back with their ids (with id -1: the lowest one still to come
 * back first): adding one returns its id when the addresses are the same, -2 when they
 * differ. A new ENI's pools go into the block of the released ENI that had the id when they
 * fit there, else at the region's end. */
int hp_nat_add_eni_at(hp_nat *nat, const uint8_t *v4, const uint8_t *v6, int id);
int hp_nat_add_eni(hp_nat *nat, const uint8_t *v4, const uint8_t *v6);
/* hp_nat_add_eni_at in two steps, so that the slow one runs without the table lock
 * (docs/semantics.md section 12): prepare maps and fills the new ENI's pools, which nothing
 * sees yet (0, or -1 / -2 / -3 as above); commit makes it the NAT's and returns its id. Calls
 * of prepare, commit and release (and add_eni) must not overlap one another: the caller
 * serializes them. A prepared ENI that is not committed is discarded (nothing in the region
 * counts it). */
typedef struct hp_eni_prep {
    hp_eni_addr addr;
    uint32_t id;
    uint64_t off, len;           /* its block */
    hp_eni_pools *pools;         /* NULL: an ENI of the state file, coming back */
} hp_eni_prep;
int hp_nat_eni_prepare(hp_nat *nat, const uint8_t *v4, const uint8_t *v6, int id,
                       hp_eni_prep *out);
int hp_nat_eni_commit(hp_nat *nat, hp_eni_prep *prep);
void hp_nat_eni_discard(hp_eni_prep *prep);
/* Gives an ENI's id and block back (its ENI reclaimed) once nothing is left of it: in no
 * group, no connection, no port in use or quarantined, no unread journal or reject record
 * naming it. Its address and counters are cleared; *unmap gets its pools, which the caller
 * frees with hp_nat_eni_unmap() after leaving the table lock (unmapping takes milliseconds).
 * 0; -2 while something is left (nothing changes); -1 for an id that is not a live ENI's or
 * an ENI still in a group. */
int hp_nat_eni_release(hp_nat *nat, int eni, hp_eni_pools **unmap);
void hp_nat_eni_unmap(hp_eni_pools *pools);
int hp_nat_add_group(hp_nat *nat);
int hp_nat_group_add_eni(hp_nat *nat, int group, int eni);
/* Takes an ENI out of its group (no new connection picks it) when it has no connection:
 * 0, -2 while it has some (nothing changes), -1 when it is not in the group. */
int hp_nat_group_retire_eni(hp_nat *nat, int group, int eni);
/* Whether the group can take one more ENI (the control plane knows its limit): a function
 * at its port share of every pool of a group that can grow is answered PORTS_EXHAUSTED (a
 * punt: the group grows) instead of FUNCTION_LIMIT (section 13). 0, or -1 (no such group). */
int hp_nat_group_set_can_grow(hp_nat *nat, int group, int can_grow);
int hp_nat_add_source(hp_nat *nat, int family, const uint8_t *addr, int group, int allow_v6);
/* Moves every source with this address to another group (a function's config changed): its
 * new connections take that group's ENIs, live ones keep theirs. 0, or -1 (no such source or
 * group). */
int hp_nat_set_source_group(hp_nat *nat, int family, const uint8_t *addr, int group);
/* The same with the function's MAC (6 bytes) that every frame from addr must carry; NULL: not
 * checked. */
int hp_nat_add_source_mac(hp_nat *nat, int family, const uint8_t *addr, int group, int allow_v6,
                          const uint8_t *mac);

/* Translates n frames in place. dir: HP_DIR_OUT for frames from the inside port, HP_DIR_IN for
 * frames from ENI in_eni. vnet: every frame starts with a virtio-net header. */
void hp_nat_translate(hp_nat *nat, uint8_t *const *frames, const uint32_t *lens, uint32_t n,
                      int dir, uint16_t in_eni, int vnet, uint64_t now_ms, hp_result *out);

/* The same with the MTU check (step 18) optional: the slow path translates reassembled
 * datagrams and fragments them again for the egress side. */
void hp_nat_translate_ex(hp_nat *nat, uint8_t *const *frames, const uint32_t *lens, uint32_t n,
                         int dir, uint16_t in_eni, int vnet, int check_mtu, uint64_t now_ms,
                         hp_result *out);

/* A live, unexpired connection whose tuple in direction dir is key, or HP_CT_NONE. Changes
 * nothing (the slow path uses it for ICMP errors that quote a flow). */
uint32_t hp_nat_lookup(const hp_nat *nat, const hp_flow_key *key, int dir, uint64_t now_ms);

/* Copies the journal (connections found expired during lookups) into out, then removes up to
 * max expired connections, copying each into out while there is room (out_max) and into the
 * journal after that; with out NULL the records are discarded. Returns the number of records
 * written to out. */
size_t hp_nat_expire(hp_nat *nat, uint64_t now_ms, size_t max, hp_conn_record *out,
                     size_t out_max);

/* Removes one connection (flush, or an ENI being deleted), releasing its port. */
void hp_nat_delete_conn(hp_nat *nat, uint32_t id, uint64_t now_ms);
/* Removes one connection as `conntrack -D` does (docs/semantics.md 2.5): its record goes to
 * copy_to (NULL: to the journal, as an expired one's) for the flow log to close it, its port
 * to quarantine as on expiry, and a DESTROY event says DELETED. */
void hp_nat_remove_conn(hp_nat *nat, uint32_t id, uint64_t now_ms, hp_conn_record *copy_to);

hp_pool *hp_nat_pool(hp_nat *nat, int eni, int family, int proto);

/* Security groups, reject journal, per-ENI counters (csrc/nat/natsg.c). */
int hp_nat_obs_init(hp_nat *nat);
void hp_nat_obs_free(hp_nat *nat);
/* Installs a group's rule set (NULL: allow all) and returns the old one, for the caller to
 * free once the table lock is released; (hp_sg_set *)-1 when the group does not exist. */
hp_sg_set *hp_nat_swap_group_rules(hp_nat *nat, int group, hp_sg_set *set);
/* HP_R_NONE, or HP_R_SG_DENIED (counted, journaled) for a new connection of group g. */
int hp_nat_sg_check(hp_nat *nat, hp_group *g, const hp_pkt *pkt, uint64_t now_ms);
/* A drop charged to ENI eni (its PacketsDropCount, by reason). */
static inline void hp_nat_eni_drop(hp_nat *nat, uint16_t eni, int reason)
{
    nat->eni_ctr[eni].drops++;
    nat->eni_ctr[eni].drop_reasons[reason]++;
}
/* A refused packet that made it past parsing: the reject journal. */
void hp_nat_note_refused(hp_nat *nat, const hp_pkt *pkt, int dir, uint16_t in_eni, int reason,
                         uint64_t now_ms);
/* A TCP segment from a function that matched no connection (TCP_NOT_SYN): turns it into a
 * RST back to the function when the rate limit allows; eni: the connection that just expired
 * on lookup, or HP_ENI_NONE. */
void hp_nat_idle_rst(hp_nat *nat, hp_pkt *pkt, uint16_t eni, uint64_t now_ms, hp_result *res);

#endif
