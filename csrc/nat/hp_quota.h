/* Per-function quotas (docs/semantics.md section 13): connections in the table and ports held
 * in each ENI pool, counted per function (the owner index of hp_source), checked when a
 * connection is created; and early drop of unassured connections when the table is full. */
#ifndef HP_QUOTA_H
#define HP_QUOTA_H

#include "hp_nat.h"

#define HP_EARLY_DROP_SCAN 8     /* entries looked at from the head of each state's list */

/* Per-function counters, by X-macro so the names reach Python without a second list. */
#define HP_FUNC_COUNTERS(X) \
    X(CREATED) X(REFUSED_CONNECTIONS) X(REFUSED_PORTS) X(TABLE_FULL) X(PORTS_EXHAUSTED) \
    X(EARLY_DROPPED)
#define HP_FUNC_COUNTER_ENUM(name) HP_FC_##name,
enum hp_func_counter { HP_FUNC_COUNTERS(HP_FUNC_COUNTER_ENUM) HP_FC_COUNT };
#undef HP_FUNC_COUNTER_ENUM
extern const char *const hp_func_counter_names[HP_FC_COUNT];

/* Ports a function holds in the pools of one ENI, [family: 0 IPv4, 1 IPv6][proto: 0 TCP, 1 UDP]. */
typedef struct hp_func_pool {
    uint32_t eni;
    uint32_t held[2][2];
} hp_func_pool;

typedef struct hp_func {
    uint32_t max_conns;          /* 0: no quota */
    uint32_t max_ports;          /* per pool; 0: no quota */
    uint32_t conns;              /* live connections it owns */
    uint32_t n_pools;            /* entries of pools in use (an entry all zero is reused) */
    uint64_t counters[HP_FC_COUNT];
    /* Its own budgets for answers (idle RSTs, refusals: hp_answer.h), so one function's
     * flood of refused or expired segments leaves the others theirs. per_s 0: not yet set. */
    hp_rate rst_rate, refusal_rate;
    hp_func_pool pools[HP_MAX_ENIS];     /* every ENI can hold its ports (groups change) */
} hp_func;

/* Makes room for the functions of n sources (hp_nat_add_source calls it). 0 or -1. */
int hp_quota_reserve(hp_nat *nat, uint32_t n);
/* Sets the quotas of the function that owns source addr (family 4 or 6). 0 or -1 (no such
 * source). */
int hp_quota_set(hp_nat *nat, int family, const uint8_t *addr, uint32_t max_conns,
                 uint32_t max_ports);

/* The function that owns source address addr (16 bytes), or NULL. */
hp_func *hp_quota_func_of_addr(hp_nat *nat, int family, const uint8_t addr[16]);

/* The function of a source index, NULL when out of range. */
static inline hp_func *hp_quota_func(hp_nat *nat, uint32_t owner)
{
    return owner < nat->n_sources ? &nat->funcs[owner] : NULL;
}

static inline int hp_quota_conn_ok(const hp_func *f)
{
    return f->max_conns == 0 || f->conns < f->max_conns;
}
/* Whether the function may take one more port of the pool (eni, family, proto). */
int hp_quota_port_ok(const hp_func *f, uint32_t eni, int family, int proto);
/* A port of the pool taken (+1) or handed back (-1). */
void hp_quota_port_add(hp_func *f, uint32_t eni, int family, int proto, int delta);

/* Ends the quarantine of up to HP_QUARANTINE_MOVES ports of the pool (eni, family, proto)
 * whose time is up, each handing its charge back to the function that held it. */
void hp_quota_drain(hp_nat *nat, uint32_t eni, int family, int proto, uint64_t now_ms);
/* The same for every pool of every ENI. */
void hp_quota_drain_all(hp_nat *nat, uint64_t now_ms);

/* The largest share of its port quota any function holds in one pool of ENI eni, in
 * thousandths (1000: one is at its quota there; 0 without quotas): the control plane grows a
 * group before a function reaches its share, as it does before a pool fills. */
uint32_t hp_quota_share_used(const hp_nat *nat, uint32_t eni);

/* The unassured connection to drop to make room: the oldest (last seen first) among the first
 * HP_EARLY_DROP_SCAN entries of each state's list, as Linux's early_drop; HP_CT_NONE when
 * every entry looked at is assured. */
uint32_t hp_quota_early_drop_victim(const hp_ct *ct);

/* Recounts every function's connections and ports from the table and the pools' quarantines
 * (after the sources were added again to a NAT attached to existing state). */
void hp_quota_recount(hp_nat *nat);

#endif
