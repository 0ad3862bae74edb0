/* Invariants of the connection table, its index and LRU lists, and of the port pools, checked
 * from the outside (public structures only) after every operation of a fuzz input. */
#include "fz.h"
#include "hp_quota.h"

#include <stdlib.h>
#include <string.h>

/* Zeroed scratch memory, kept between checks: the checker runs after every operation and
 * allocating each time would cost more than the checks. */
enum { SCR_MARK, SCR_SEEN, SCR_WHERE, SCR_REFS, SCR_COUNT };
static void *scratch(int slot, size_t bytes)
{
    static void *buf[SCR_COUNT];
    static size_t cap[SCR_COUNT];
    if (bytes > cap[slot]) {
        free(buf[slot]);
        buf[slot] = malloc(bytes);
        if (!buf[slot])
            abort();
        cap[slot] = bytes;
    }
    memset(buf[slot], 0, bytes);
    return buf[slot];
}

static int tcp_state(int s) { return s >= HP_S_SYN_SENT && s <= HP_S_CLOSE; }
static int udp_state(int s) { return s == HP_S_UDP_FIRST || s == HP_S_UDP_STREAM; }

static void check_conn_fields(const fz_world *w, uint32_t id)
{
    const hp_nat *nat = w->nat;
    const hp_conn *c = &nat->ct.conns[id];
    if (c->state >= HP_S_COUNT)
        fz_fail("conn %u: state %u out of range", id, c->state);
    if (c->family != 4 && c->family != 6)
        fz_fail("conn %u: family %u", id, c->family);
    if (!(c->proto == 6 && tcp_state(c->state)) && !(c->proto == 17 && udp_state(c->state)))
        fz_fail("conn %u: protocol %u in state %s", id, c->proto, hp_state_names[c->state]);
    if (c->eni >= nat->n_enis || !nat->eni_addr[c->eni].has[c->family == 6])
        fz_fail("conn %u: ENI %u without an address of family %u", id, c->eni, c->family);
    if (c->nat_port < nat->cfg.port_lo || c->nat_port > nat->cfg.port_hi)
        fz_fail("conn %u: external port %u outside the range", id, c->nat_port);
    if (c->last_seen_ms > w->now)
        fz_fail("conn %u: last seen in the future", id);
    if (c->family == 4)
        for (int i = 4; i < 16; i++)
            if (c->src[i] || c->dst[i])
                fz_fail("conn %u: IPv4 address with non-zero padding", id);
}

/* Every live entry in both index slots, each slot naming a live entry whose key hashes to
 * it, no empty slot between a slot and its home bucket (lookups would stop short). */
static void check_index(const hp_ct *ct, uint8_t *seen_ref)
{
    uint32_t used = 0, nslots = ct->mask + 1;
    for (uint32_t i = 0; i < nslots; i++) {
        const hp_ct_slot *s = &ct->slots[i];
        if (s->ref == 0)
            continue;
        used++;
        uint32_t id = (s->ref - 1) >> 1, dir = (s->ref - 1) & 1;
        if (id >= ct->capacity || ct->conns[id].state == HP_S_NONE)
            fz_fail("index slot %u names connection %u, not live", i, id);
        if (seen_ref[s->ref - 1]++)
            fz_fail("connection %u is in the index twice (dir %u)", id, dir);
        hp_flow_key k;
        if (dir == HP_DIR_OUT)
            hp_ct_orig_key(&ct->conns[id], &k);
        else
            hp_ct_reply_key(ct, &ct->conns[id], &k);
        if (hp_ct_hash(ct, &k) != s->hash)
            fz_fail("index slot %u: stored hash is not the key's (conn %u dir %u)", i, id, dir);
        for (uint32_t j = s->hash & ct->mask; j != i; j = (j + 1) & ct->mask)
            if (ct->slots[j].ref == 0)
                fz_fail("index slot %u unreachable: empty slot %u after its home", i, j);
    }
    if (used != 2 * ct->count)
        fz_fail("index holds %u slots for %u connections", used, ct->count);
}

static void check_lists(const fz_world *w, uint8_t *mark)
{
    const hp_ct *ct = &w->nat->ct;
    uint32_t cap = ct->capacity, live = 0, listed = 0;
    for (uint32_t id = 0; id < cap; id++) {
        if (ct->conns[id].state == HP_S_NONE)
            continue;
        live++;
        if (id >= ct->high_water)
            fz_fail("conn %u is live at or above the high water %u: scans would miss it", id,
                    ct->high_water);
        check_conn_fields(w, id);
    }
    if (live != ct->count || ct->count > cap)
        fz_fail("count %u, %u live entries, capacity %u", ct->count, live, cap);

    /* LRU lists: every live entry on the list of its state, links both ways, oldest first. */
    memset(mark, 0, cap);
    for (int s = 1; s < HP_S_COUNT; s++) {
        uint32_t prev = HP_CT_NONE, steps = 0;
        uint64_t last = 0;
        for (uint32_t id = ct->lru_head[s]; id != HP_CT_NONE; id = ct->conns[id].lru_next) {
            if (id >= cap || steps++ > cap || mark[id]++)
                fz_fail("LRU list of %s broken at %u (cycle or bad id)", hp_state_names[s], id);
            const hp_conn *c = &ct->conns[id];
            if (c->state != s)
                fz_fail("conn %u in state %s sits on the %s list", id, hp_state_names[c->state],
                        hp_state_names[s]);
            if (c->lru_prev != prev)
                fz_fail("conn %u: lru_prev %u, expected %u", id, c->lru_prev, prev);
            if (c->last_seen_ms < last)
                fz_fail("%s list not oldest first at conn %u", hp_state_names[s], id);
            last = c->last_seen_ms;
            prev = id;
            listed++;
        }
        if (ct->lru_tail[s] != prev)
            fz_fail("tail of %s list is %u, the walk ends at %u", hp_state_names[s],
                    ct->lru_tail[s], prev);
    }
    if (listed != ct->count)
        fz_fail("LRU lists hold %u entries, count is %u", listed, ct->count);
    if (ct->lru_head[HP_S_NONE] != HP_CT_NONE)
        fz_fail("a list for free entries");

    /* Free list: exactly the entries not live. */
    uint32_t nfree = 0;
    for (uint32_t id = ct->free_head; id != HP_CT_NONE; id = ct->conns[id].lru_next) {
        if (id >= cap || nfree++ > cap || mark[id]++)
            fz_fail("free list broken at %u (cycle, bad id or a live entry)", id);
        if (ct->conns[id].state != HP_S_NONE)
            fz_fail("free list holds live conn %u", id);
    }
    if (nfree + ct->count != cap)
        fz_fail("free %u + live %u != capacity %u", nfree, ct->count, cap);
}

/* Every port of a pool is exactly one of: free, quarantined, used by live connections; and
 * in endpoint-independent mode the mapping index agrees with the connections. */
static void check_pool(const fz_world *w, uint32_t e, int f, int proto)
{
    const hp_nat *nat = w->nat;
    hp_pool *p = hp_nat_pool((hp_nat *)nat, (int)e, f ? 6 : 4, proto ? 17 : 6);
    if (!p)
        fz_fail("ENI %u family %d: no pool", e, f ? 6 : 4);
    if (p->lo != nat->cfg.port_lo || p->hi != nat->cfg.port_hi || p->size != p->hi - p->lo + 1u)
        fz_fail("pool bounds changed");
    if (p->st->nfree > p->size || p->st->q_count > p->size || (p->size && p->st->q_head >= p->size))
        fz_fail("pool counters out of range: free %u quarantined %u head %u size %u", p->st->nfree,
                p->st->q_count, p->st->q_head, p->size);
    enum { FREE = 1, QUAR = 2 };
    uint8_t *where = scratch(SCR_WHERE, p->size);
    uint32_t *refs = scratch(SCR_REFS, p->size * sizeof *refs);
    for (uint32_t i = 0; i < p->st->nfree; i++) {
        uint16_t port = p->free[i];
        if (port < p->lo || port > p->hi || where[port - p->lo])
            fz_fail("free array: port %u out of range or twice", port);
        where[port - p->lo] = FREE;
    }
    uint64_t until = 0;
    for (uint32_t i = 0; i < p->st->q_count; i++) {
        uint32_t at = (p->st->q_head + i) % p->size;
        uint16_t port = p->q_port[at];
        if (port < p->lo || port > p->hi || where[port - p->lo])
            fz_fail("quarantine: port %u out of range, twice or also free", port);
        where[port - p->lo] = QUAR;
        if (p->q_until[at] < until)
            fz_fail("quarantine FIFO not in release order");
        until = p->q_until[at];
    }
    const hp_ct *ct = &nat->ct;
    int mapped = !nat->cfg.per_connection;
    for (uint32_t id = 0; id < ct->capacity; id++) {
        const hp_conn *c = &ct->conns[id];
        if (c->state == HP_S_NONE || c->eni != e || (c->family == 6) != f ||
            (c->proto == 17) != proto)
            continue;
        uint32_t i = c->nat_port - p->lo;
        if (where[i])
            fz_fail("conn %u uses port %u, which is %s", id, c->nat_port,
                    where[i] == FREE ? "free" : "quarantined");
        refs[i]++;
        if (!mapped && refs[i] > 1)
            fz_fail("port %u shared by connections in per-connection mode", c->nat_port);
        if (mapped && (p->owner[i].port != c->sport || memcmp(p->owner[i].addr, c->src, 16)))
            fz_fail("conn %u: port %u is owned by another inside endpoint", id, c->nat_port);
    }
    uint32_t used = 0;
    for (uint32_t i = 0; i < p->size; i++) {
        if (!where[i] && !refs[i])
            fz_fail("port %u leaked: not free, not quarantined, no connection", p->lo + i);
        if (refs[i]) {
            used++;
            if (mapped && p->owner[i].refs != refs[i])
                fz_fail("port %u: %u references recorded, %u connections", p->lo + i,
                        p->owner[i].refs, refs[i]);
            if (mapped) {
                uint32_t h = hp_pool_endpoint_hash(p->seed, p->owner[i].addr, p->owner[i].port);
                if (hp_pool_map_find(p, p->owner[i].addr, p->owner[i].port, h) != p->lo + i)
                    fz_fail("mapping of port %u not found from its inside endpoint", p->lo + i);
            }
        }
    }
    if (hp_pool_in_use(p) != used || hp_pool_quarantined(p) != p->st->q_count)
        fz_fail("pool says %u in use, %u ports have connections", hp_pool_in_use(p), used);
    uint32_t map_used = 0;
    for (uint32_t i = 0; i <= p->map_mask; i++) {
        uint16_t ext = p->map[i];
        if (!ext)
            continue;
        map_used++;
        if (ext < p->lo || ext > p->hi || !refs[ext - p->lo])
            fz_fail("mapping index holds port %u without connections", ext);
    }
    if (map_used != (mapped ? used : 0))
        fz_fail("mapping index holds %u ports, %u in use", map_used, used);
}

void fz_check_invariants(const fz_world *w)
{
    const hp_nat *nat = w->nat;
    const hp_ct *ct = &nat->ct;
    uint8_t *mark = scratch(SCR_MARK, ct->capacity);
    uint8_t *seen_ref = scratch(SCR_SEEN, 2 * (size_t)ct->capacity);
    check_lists(w, mark);
    check_index(ct, seen_ref);
    for (uint32_t id = 0; id < ct->capacity; id++) {
        if (ct->conns[id].state == HP_S_NONE)
            continue;
        hp_flow_key k;
        hp_ct_orig_key(&ct->conns[id], &k);
        if (hp_ct_lookup(ct, &k, HP_DIR_OUT) != id)
            fz_fail("conn %u not found by its original tuple", id);
        hp_ct_reply_key(ct, &ct->conns[id], &k);
        if (hp_ct_lookup(ct, &k, HP_DIR_IN) != id)
            fz_fail("conn %u not found by its reply tuple", id);
    }
    for (uint32_t e = 0; e < nat->n_enis; e++)
        for (int f = 0; f < 2; f++)
            if (nat->eni_addr[e].has[f])
                for (int proto = 0; proto < 2; proto++)
                    check_pool(w, e, f, proto);

    /* Per-ENI live connection counts (metrics) agree with the table. */
    for (uint32_t e = 0; e < nat->n_enis; e++) {
        uint64_t live[2] = { 0, 0 };
        for (uint32_t id = 0; id < ct->capacity; id++)
            if (ct->conns[id].state != HP_S_NONE && ct->conns[id].eni == e)
                live[ct->conns[id].proto == 17]++;
        if (nat->eni_ctr[e].active[0] != live[0] || nat->eni_ctr[e].active[1] != live[1])
            fz_fail("ENI %u counts %llu TCP / %llu UDP active, the table holds %llu / %llu", e,
                    (unsigned long long)nat->eni_ctr[e].active[0],
                    (unsigned long long)nat->eni_ctr[e].active[1],
                    (unsigned long long)live[0], (unsigned long long)live[1]);
    }

    /* Per-ENI drops by reason add up to its drops. */
    for (uint32_t e = 0; e < nat->n_enis; e++) {
        uint64_t sum = 0;
        for (int r = 0; r < HP_R_COUNT; r++)
            sum += nat->eni_ctr[e].drop_reasons[r];
        if (sum != nat->eni_ctr[e].drops)
            fz_fail("ENI %u: drops by reason add up to %llu, drops %llu", e,
                    (unsigned long long)sum, (unsigned long long)nat->eni_ctr[e].drops);
    }
    /* Flow-log intervals: a direction is seen exactly when it counted packets since the
     * last harvest, and its flags are clear when it is not. */
    for (uint32_t id = 0; id < ct->capacity; id++) {
        if (ct->conns[id].state == HP_S_NONE)
            continue;
        const hp_conn_stats *st = &ct->stats[id];
        for (int d = 0; d < 2; d++) {
            int seen = (st->seen >> d) & 1;
            uint32_t n = (uint32_t)st->packets[d] - ct->flowbase[id].packets[d];
            if (seen != (n != 0) || (!seen && st->tcp_flags[d]))
                fz_fail("conn %u dir %d: seen %d, %u packets, flags %u since the last harvest",
                        id, d, seen, n, st->tcp_flags[d]);
        }
    }

    /* Each function's connection count (its quota's) is the number of live connections it
     * owns: kept up as they come and go, and recounted from the table after an attach. */
    for (uint32_t i = 0; i < nat->n_sources; i++) {
        uint32_t owned = 0;
        for (uint32_t id = 0; id < ct->capacity; id++)
            owned += ct->conns[id].state != HP_S_NONE && ct->stats[id].owner == i;
        if (nat->funcs[i].conns != owned)
            fz_fail("function %u counts %u connections, owns %u", i, nat->funcs[i].conns, owned);
    }

    uint64_t created = nat->counters[HP_C_CONN_CREATED];
    uint64_t gone = nat->counters[HP_C_CONN_EXPIRED] + nat->counters[HP_C_CONN_EARLY_DROPPED] +
                    w->deletes;
    if (created - gone != ct->count)
        fz_fail("created %llu - expired/dropped/deleted %llu != %u live", (unsigned long long)created,
                (unsigned long long)gone, ct->count);
    if (nat->sh->j_count > nat->cfg.journal_size ||
        (nat->cfg.journal_size && nat->sh->j_head >= nat->cfg.journal_size))
        fz_fail("journal: %u records, head %u, size %u", nat->sh->j_count, nat->sh->j_head,
                nat->cfg.journal_size);
    if (nat->sh->j_deleting)
        fz_fail("journal: the delete-under-way mark is still up between operations");
}
