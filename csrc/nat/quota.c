/* Per-function quotas: what the hooks of hp_quota.h do out of line. */
#include "hp_quota.h"

#include <stdlib.h>
#include <string.h>

#define HP_FUNC_COUNTER_NAME(name) #name,
const char *const hp_func_counter_names[HP_FC_COUNT] = { HP_FUNC_COUNTERS(HP_FUNC_COUNTER_NAME) };
#undef HP_FUNC_COUNTER_NAME

int hp_quota_reserve(hp_nat *nat, uint32_t n)
{
    if (n <= nat->cap_funcs)
        return 0;
    uint32_t ncap = nat->cap_funcs ? nat->cap_funcs : 16;
    while (ncap < n)
        ncap *= 2;
    hp_func *p = realloc(nat->funcs, (size_t)ncap * sizeof *p);
    if (!p)
        return -1;
    memset(p + nat->cap_funcs, 0, (size_t)(ncap - nat->cap_funcs) * sizeof *p);
    nat->funcs = p;
    nat->cap_funcs = ncap;
    return 0;
}

int hp_quota_set(hp_nat *nat, int family, const uint8_t *addr, uint32_t max_conns,
                 uint32_t max_ports)
{
    uint8_t key[16] = { 0 };
    memcpy(key, addr, family == 4 ? 4 : 16);
    for (uint32_t i = 0; i < nat->n_sources; i++) {
        const hp_source *s = &nat->sources[i];
        if (s->family == family && memcmp(s->addr, key, 16) == 0) {
            hp_func *f = &nat->funcs[s->owner];
            f->max_conns = max_conns;
            f->max_ports = max_ports;
            return 0;
        }
    }
    return -1;
}

static hp_func_pool *find_pool(const hp_func *f, uint32_t eni)
{
    for (uint32_t i = 0; i < f->n_pools; i++)
        if (f->pools[i].eni == eni)
            return (hp_func_pool *)&f->pools[i];
    return NULL;
}

int hp_quota_port_ok(const hp_func *f, uint32_t eni, int family, int proto)
{
    if (f->max_ports == 0)
        return 1;
    const hp_func_pool *p = find_pool(f, eni);
    return !p || p->held[family == 6][proto == 17] < f->max_ports;
}

static int pool_empty(const hp_func_pool *p)
{
    return (p->held[0][0] | p->held[0][1] | p->held[1][0] | p->held[1][1]) == 0;
}

void hp_quota_port_add(hp_func *f, uint32_t eni, int family, int proto, int delta)
{
    hp_func_pool *p = find_pool(f, eni);
    if (!p) {
        if (delta < 0)
            return;
        /* An ENI the function has no port of: take an empty entry, else a new one. There
         * is an entry for every ENI of the NAT: a function moved to another group keeps its
         * ports on the old group's ENIs, so its group's limit is no bound. */
        for (uint32_t i = 0; i < f->n_pools && !p; i++)
            if (pool_empty(&f->pools[i]))
                p = &f->pools[i];
        if (!p) {
            if (f->n_pools >= HP_MAX_ENIS)     /* not reached: eni < n_enis <= HP_MAX_ENIS */
                return;
            p = &f->pools[f->n_pools++];
        }
        memset(p, 0, sizeof *p);
        p->eni = eni;
    }
    uint32_t *held = &p->held[family == 6][proto == 17];
    if (delta > 0)
        (*held)++;
    else if (*held > 0)
        (*held)--;
}

uint32_t hp_quota_deleted(hp_nat *nat, uint32_t id, const hp_pool *pool, uint64_t quarantine_ms)
{
    uint32_t owner = nat->ct.stats[id].owner;
    hp_func *f = hp_quota_func(nat, owner);
    if (!f)
        return 0;
    const hp_conn *c = &nat->ct.conns[id];
    f->conns -= f->conns > 0;
    /* Endpoint-independent: the port is the function's until its last connection goes. */
    if (!nat->cfg.per_connection && pool->owner[c->nat_port - pool->lo].refs != 1)
        return 0;
    if (quarantine_ms)
        return owner + 1;        /* charged while it waits */
    hp_quota_port_add(f, c->eni, c->family, c->proto, -1);      /* back at once */
    return 0;
}

void hp_quota_drain(hp_nat *nat, uint32_t eni, int family, int proto, uint64_t now_ms)
{
    hp_pool *pool = hp_nat_pool(nat, (int)eni, family, proto);
    uint32_t charge;
    for (int n = 0; pool && n < HP_QUARANTINE_MOVES && hp_pool_q_pop(pool, now_ms, &charge); n++) {
        hp_func *f = charge ? hp_quota_func(nat, charge - 1) : NULL;
        if (f)
            hp_quota_port_add(f, eni, family, proto, -1);
    }
}

void hp_quota_drain_all(hp_nat *nat, uint64_t now_ms)
{
    for (uint32_t e = 0; e < nat->n_enis; e++)
        for (int fam = 4; fam <= 6; fam += 2)
            for (int proto = 6; proto <= 17; proto += 11)
                hp_quota_drain(nat, e, fam, proto, now_ms);
}

uint32_t hp_quota_share_used(const hp_nat *nat, uint32_t eni)
{
    uint32_t most = 0;
    for (uint32_t i = 0; i < nat->n_sources; i++) {
        const hp_func *f = &nat->funcs[i];
        const hp_func_pool *p = nat->sources[i].owner == i && f->max_ports ? find_pool(f, eni)
                                                                            : NULL;
        for (int k = 0; p && k < 4; k++) {
            uint64_t used = (uint64_t)p->held[k / 2][k % 2] * 1000 / f->max_ports;
            if (used > most)
                most = (uint32_t)(used < 1000 ? used : 1000);
        }
    }
    return most;
}

hp_func *hp_quota_func_of_addr(hp_nat *nat, int family, const uint8_t addr[16])
{
    for (uint32_t i = 0; i < nat->n_sources; i++) {
        const hp_source *s = &nat->sources[i];
        if (s->family == family && memcmp(s->addr, addr, 16) == 0)
            return hp_quota_func(nat, s->owner);
    }
    return NULL;
}

void hp_quota_recount(hp_nat *nat)
{
    for (uint32_t i = 0; i < nat->n_sources; i++) {
        nat->funcs[i].conns = 0;
        nat->funcs[i].n_pools = 0;
    }
    for (uint32_t id = hp_ct_next_live(&nat->ct, 0); id != HP_CT_NONE;
         id = hp_ct_next_live(&nat->ct, id + 1)) {
        const hp_conn *c = &nat->ct.conns[id];
        hp_func *f = hp_quota_func(nat, nat->ct.stats[id].owner);
        if (!f)
            continue;
        f->conns++;
        if (nat->cfg.per_connection)     /* a port per connection */
            hp_quota_port_add(f, c->eni, c->family, c->proto, 1);
    }
    /* Endpoint-independent: a port shared by connections counts once, for its mapping. And
     * a port in quarantine for the function it is charged to (the repair kept the charges
     * with the quarantine; one naming no function counts for no one). */
    for (uint32_t e = 0; e < nat->n_enis; e++)
        for (int fam = 4; fam <= 6; fam += 2)
            for (int proto = 6; proto <= 17; proto += 11) {
                hp_pool *pool = hp_nat_pool(nat, (int)e, fam, proto);
                for (uint32_t i = 0; pool && !nat->cfg.per_connection && i < pool->size; i++) {
                    hp_func *f = pool->owner[i].refs ? hp_quota_func_of_addr(nat, fam, pool->owner[i].addr)
                                                     : NULL;
                    if (f)
                        hp_quota_port_add(f, e, fam, proto, 1);
                }
                for (uint32_t i = 0; pool && i < pool->st->q_count; i++) {
                    uint32_t charge = pool->q_charge[(pool->st->q_head + i) % pool->size];
                    hp_func *f = charge ? hp_quota_func(nat, charge - 1) : NULL;
                    if (f)
                        hp_quota_port_add(f, e, fam, proto, 1);
                }
            }
}
