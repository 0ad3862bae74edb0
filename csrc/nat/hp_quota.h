/* Per-function quotas (docs/semantics.md section 13): connections in the table and ports held
 * in each ENI pool, counted per function (the owner index of hp_source), checked when a
 * connection is created. nat.c keeps the books only through the hooks below (admit, refused,
 * created, early_dropped, deleted), so what a function is charged is decided here. */
#ifndef HP_QUOTA_H
#define HP_QUOTA_H

#include "hp_nat.h"

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

/* The hooks of a connection's life. Admit: whether f may have one more connection (a refusal
 * is counted). */
static inline int hp_quota_admit(hp_func *f)
{
    if (f->max_conns == 0 || f->conns < f->max_conns)
        return 1;
    f->counters[HP_FC_REFUSED_CONNECTIONS]++;
    return 0;
}

/* A new connection of f refused for lack of resources (TABLE_FULL, PORTS_EXHAUSTED, or
 * FUNCTION_LIMIT: f at its port quota), counted for f. Returns reason. */
static inline int hp_quota_refused(hp_func *f, int reason)
{
    if (reason == HP_R_TABLE_FULL)
        f->counters[HP_FC_TABLE_FULL]++;
    else if (reason == HP_R_PORTS_EXHAUSTED)
        f->counters[HP_FC_PORTS_EXHAUSTED]++;
    else if (reason == HP_R_FUNCTION_LIMIT)
        f->counters[HP_FC_REFUSED_PORTS]++;
    return reason;
}

/* A connection of f made (its port was charged when it was taken: hp_quota_port_add). */
static inline void hp_quota_created(hp_func *f)
{
    f->conns++;
    f->counters[HP_FC_CREATED]++;
}

/* A connection of source index owner dropped early to make room. */
static inline void hp_quota_early_dropped(hp_nat *nat, uint32_t owner)
{
    hp_func *f = hp_quota_func(nat, owner);
    if (f)
        f->counters[HP_FC_EARLY_DROPPED]++;
}

/* Connection id, whose port is in pool, about to be deleted: it no longer counts for its
 * function, and its port goes back to the function's quota at once, or (quarantine_ms, the
 * connection's last) stays charged while it waits. Returns the charge to keep with the port
 * in quarantine (owner + 1; 0: none). */
uint32_t hp_quota_deleted(hp_nat *nat, uint32_t id, const hp_pool *pool, uint64_t quarantine_ms);
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

/* Recounts every function's connections and ports from the table and the pools' quarantines
 * (after the sources were added again to a NAT attached to existing state). */
void hp_quota_recount(hp_nat *nat);

#endif
