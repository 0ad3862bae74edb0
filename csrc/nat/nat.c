/* The NAT decisions of docs/semantics.md section 3 over the connection table and port pools,
 * and the batch translation loop: parse and hash a whole batch first, prefetching index
 * slots, then look up and rewrite, so memory latency overlaps across frames. */
#include "hp_nat.h"
#include "hp_answer.h"
#include "hp_quota.h"
#include "hp_tcp.h"

#include <stdlib.h>
#include <string.h>

#define HP_BATCH 64
#define HP_FULL_TABLE_REAP 8

const char *const hp_counter_names[HP_C_COUNT] = {
    "FWD_OUT_PACKETS", "FWD_OUT_BYTES", "FWD_IN_PACKETS", "FWD_IN_BYTES",
    "CONN_CREATED", "CONN_ESTABLISHED", "CONN_EXPIRED", "JOURNAL_OVERFLOW",
    "REJECT_OVERFLOW", "RST_SENT", "RST_LIMITED",
    "CONN_EARLY_DROPPED", "REFUSAL_SENT", "REFUSAL_LIMITED", "HAIRPIN_PACKETS", "HAIRPIN_REFUSED",
    "TCP_IGNORED",
};

void hp_nat_config_default(hp_nat_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->capacity = 262144;
    cfg->port_lo = 536;
    cfg->port_hi = 65535;
    hp_timeouts_profile(&cfg->timeouts, 0);
    cfg->quarantine_ms = 2 * cfg->timeouts.ms[HP_S_TIME_WAIT];
    cfg->mtu_inside = cfg->mtu_outside = 1500;
    cfg->journal_size = 4096;
}

/* Grows an array of elements of size elem to hold one more; returns 0 on success. */
static int grow(void **arr, uint32_t n, uint32_t *cap, size_t elem)
{
    if (n < *cap)
        return 0;
    uint32_t ncap = *cap ? *cap * 2 : 16;
    void *p = realloc(*arr, ncap * elem);
    if (!p)
        return -1;
    *arr = p;
    *cap = ncap;
    return 0;
}

int hp_nat_add_group(hp_nat *nat)
{
    if (grow((void **)&nat->groups, nat->n_groups, &nat->cap_groups, sizeof *nat->groups))
        return -1;
    memset(&nat->groups[nat->n_groups], 0, sizeof *nat->groups);
    return (int)nat->n_groups++;
}

int hp_nat_group_add_eni(hp_nat *nat, int group, int eni)
{
    if (group < 0 || (uint32_t)group >= nat->n_groups || eni < 0 ||
        (uint32_t)eni >= nat->n_enis || nat->sh->eni_free[eni])
        return -1;
    hp_group *g = &nat->groups[group];
    if (g->n_enis >= HP_GROUP_MAX_ENIS)
        return -1;
    g->enis[g->n_enis++] = (uint16_t)eni;
    return 0;
}

int hp_nat_group_retire_eni(hp_nat *nat, int group, int eni)
{
    if (group < 0 || (uint32_t)group >= nat->n_groups || eni < 0 || (uint32_t)eni >= nat->n_enis)
        return -1;
    if (nat->eni_ctr[eni].active[0] || nat->eni_ctr[eni].active[1])
        return -2;
    hp_group *g = &nat->groups[group];
    for (uint32_t i = 0; i < g->n_enis; i++)
        if (g->enis[i] == eni) {
            memmove(&g->enis[i], &g->enis[i + 1], (g->n_enis - i - 1) * sizeof g->enis[0]);
            g->n_enis--;
            return 0;
        }
    return -1;
}

int hp_nat_group_set_can_grow(hp_nat *nat, int group, int can_grow)
{
    if (group < 0 || (uint32_t)group >= nat->n_groups)
        return -1;
    nat->groups[group].can_grow = (uint8_t)(can_grow != 0);
    return 0;
}

int hp_nat_set_source_group(hp_nat *nat, int family, const uint8_t *addr, int group)
{
    if (group < 0 || (uint32_t)group >= nat->n_groups)
        return -1;
    int found = 0;
    for (uint32_t i = 0; i < nat->n_sources; i++) {
        hp_source *s = &nat->sources[i];
        if (s->family == family && memcmp(s->addr, addr, family == 4 ? 4 : 16) == 0) {
            s->group = (uint16_t)group;
            found = 1;
        }
    }
    return found ? 0 : -1;
}

int hp_nat_add_source(hp_nat *nat, int family, const uint8_t *addr, int group, int allow_v6)
{
    return hp_nat_add_source_mac(nat, family, addr, group, allow_v6, NULL);
}

int hp_nat_add_source_mac(hp_nat *nat, int family, const uint8_t *addr, int group, int allow_v6,
                          const uint8_t *mac)
{
    if ((family != 4 && family != 6) || group < 0 || (uint32_t)group >= nat->n_groups)
        return -1;
    if (grow((void **)&nat->sources, nat->n_sources, &nat->cap_sources, sizeof *nat->sources) ||
        hp_quota_reserve(nat, nat->cap_sources))
        return -1;
    uint32_t i = nat->n_sources++;
    hp_source *s = &nat->sources[i];
    memset(s, 0, sizeof *s);
    memcpy(s->addr, addr, family == 4 ? 4 : 16);
    s->family = (uint8_t)family;
    s->group = (uint16_t)group;
    s->allow_v6 = (uint8_t)(allow_v6 != 0);
    s->owner = i;
    if (mac) {
        memcpy(s->mac, mac, 6);
        s->has_mac = 1;
        for (uint32_t j = 0; j < i; j++)     /* the function's other addresses */
            if (nat->sources[j].has_mac && memcmp(nat->sources[j].mac, mac, 6) == 0) {
                s->owner = nat->sources[j].owner;
                break;
            }
    }
    return 0;
}

/* Whether a frame from the inside carries the MAC of the function that owns its source. */
static inline int mac_matches(const hp_source *s, const hp_pkt *pkt)
{
    return !s->has_mac || memcmp(s->mac, pkt->eth + 6, 6) == 0;
}

static const hp_source *find_source(const hp_nat *nat, const hp_flow_key *k)
{
    for (uint32_t i = 0; i < nat->n_sources; i++) {
        const hp_source *s = &nat->sources[i];
        if (s->family == k->family && memcmp(s->addr, k->src, 16) == 0)
            return s;
    }
    return NULL;
}

hp_pool *hp_nat_pool(hp_nat *nat, int eni, int family, int proto)
{
    if (eni < 0 || (uint32_t)eni >= nat->n_enis)
        return NULL;
    int f = family == 6;
    if (!nat->eni_addr[eni].has[f])
        return NULL;
    return &nat->eni_pools[eni]->pool[f][proto == 17];
}

/* A connection's picture: its entry and its counters. */
static void record(const hp_nat *nat, uint32_t id, hp_conn_record *out)
{
    out->conn = nat->ct.conns[id];
    out->stats = nat->ct.stats[id];
    out->flowbase = nat->ct.flowbase[id];
}

static void journal_push(hp_nat *nat, uint32_t id)
{
    uint32_t size = nat->cfg.journal_size;
    if (nat->sh->j_count == size) {
        nat->counters[HP_C_JOURNAL_OVERFLOW]++;
        if (size == 0)
            return;
        nat->sh->j_head = (nat->sh->j_head + 1) % size;   /* the oldest record gives way */
        nat->sh->j_count--;
    }
    record(nat, id, &nat->journal[(nat->sh->j_head + nat->sh->j_count) % size]);
    nat->sh->j_count++;
    /* After the record: a kill between the two leaves a mark that names a whole record. */
    __atomic_store_n(&nat->sh->j_deleting, 1, __ATOMIC_RELEASE);
}

/* The connection journalled last is gone (or reopened): an attach leaves live entries alone. */
static inline void journal_done(hp_nat *nat)
{
    __atomic_store_n(&nat->sh->j_deleting, 0, __ATOMIC_RELEASE);
}

void hp_nat_delete_conn(hp_nat *nat, uint32_t id, uint64_t now_ms)
{
    const hp_conn *c = &nat->ct.conns[id];
    hp_pool *pool = hp_nat_pool(nat, c->eni, c->family, c->proto);
    /* Only a TCP connection that reached ESTABLISHED can have late segments worth keeping
     * its port from a new peer (TIME_WAIT's job); any other port is free at once. A port in
     * quarantine stays charged to its function until the quarantine ends (section 13). */
    uint64_t quarantine = c->proto == 6 && (c->flags & HP_F_ASSURED) ? nat->cfg.quarantine_ms : 0;
    uint32_t charge = hp_quota_deleted(nat, id, pool, quarantine);
    hp_pool_unref(pool, c->nat_port, !nat->cfg.per_connection, now_ms, quarantine, charge);
    nat->eni_ctr[c->eni].active[c->proto == 17]--;
    hp_ct_delete(&nat->ct, id);
    journal_done(nat);
}

void hp_nat_remove_conn(hp_nat *nat, uint32_t id, uint64_t now_ms, hp_conn_record *copy_to)
{
    if (copy_to)
        record(nat, id, copy_to);
    else
        journal_push(nat, id);
    hp_event_note(nat->events, HP_EV_DESTROY, &nat->ct, id, 0, 0, HP_DR_DELETED, now_ms);
    hp_nat_delete_conn(nat, id, now_ms);
}

/* IdleTimeoutCount (docs/semantics.md 9.2): an expired TCP connection that had been
 * established and was not closed (no FIN both ways, no RST): it went from active to idle. */
static int hp_idled_out(const hp_conn *c)
{
    return c->proto == 6 && (c->flags & HP_F_ASSURED) &&
           (c->state == HP_S_ESTABLISHED || c->state == HP_S_FIN_WAIT ||
            c->state == HP_S_CLOSE_WAIT || c->state == HP_S_LAST_ACK);
}

/* Removes an expired connection. Its record goes to copy_to when given, else to the journal
 * unless discard is set. */
static void expire_conn(hp_nat *nat, uint32_t id, uint64_t now_ms, hp_conn_record *copy_to,
                        int discard)
{
    if (copy_to)
        record(nat, id, copy_to);
    else if (!discard)
        journal_push(nat, id);
    nat->counters[HP_C_CONN_EXPIRED]++;
    const hp_conn *c = &nat->ct.conns[id];
    if (hp_idled_out(c))
        nat->eni_ctr[c->eni].idle_timeouts++;
    hp_event_note(nat->events, HP_EV_DESTROY, &nat->ct, id, 0, 0,
             c->state == HP_S_CLOSE ? HP_DR_RESET : HP_DR_EXPIRED, now_ms);
    hp_nat_delete_conn(nat, id, now_ms);
}

size_t hp_nat_expire(hp_nat *nat, uint64_t now_ms, size_t max, hp_conn_record *out,
                     size_t out_max)
{
    size_t written = 0;
    while (out && nat->sh->j_count > 0 && written < out_max) {
        out[written++] = nat->journal[nat->sh->j_head];
        nat->sh->j_head = (nat->sh->j_head + 1) % nat->cfg.journal_size;
        nat->sh->j_count--;
    }
    for (size_t removed = 0; removed < max; removed++) {
        uint32_t id = hp_ct_next_expired(&nat->ct, now_ms);
        if (id == HP_CT_NONE)
            break;
        expire_conn(nat, id, now_ms, out && written < out_max ? &out[written++] : NULL, !out);
    }
    return written;
}

/* A SYN reopens a closed connection (docs/semantics.md 2.2): the old one ends (its record
 * goes to the journal, as an expired one's does) and a new one takes its entry, its mapping
 * and its external port, with fresh counters, flags, window state and start time. */
static void reopen_conn(hp_nat *nat, uint32_t id, const hp_pkt *pkt, uint64_t now_ms)
{
    hp_conn *c = &nat->ct.conns[id];
    journal_push(nat, id);
    hp_event_note(nat->events, HP_EV_DESTROY, &nat->ct, id, 0, 0, HP_DR_REOPENED, now_ms);
    nat->counters[HP_C_CONN_EXPIRED]++;
    nat->counters[HP_C_CONN_CREATED]++;
    nat->eni_ctr[c->eni].attempts[0]++;
    c->flags &= HP_F_HAIRPIN;
    c->start_s = (uint32_t)(now_ms / 1000);
    hp_conn_stats *st = &nat->ct.stats[id];
    memset(st->bytes, 0, sizeof st->bytes);
    memset(st->packets, 0, sizeof st->packets);
    hp_ct_flow_reset(&nat->ct, id);     /* the new connection's first interval */
    hp_tcp_new(&nat->ct.win[id], pkt);
    hp_ct_touch(&nat->ct, id, HP_S_SYN_SENT, now_ms);
    journal_done(nat);
    hp_event_note(nat->events, HP_EV_NEW, &nat->ct, id, 0, 0, 0, now_ms);
}

/* A packet of connection id in direction dir: TCP tracking, then state, timers, counters and
 * rewrite. Returns the reason to drop it (nothing changed then), or HP_R_NONE. */
static int forward(hp_nat *nat, uint32_t id, hp_pkt *pkt, int dir, int dec_ttl,
                   uint64_t now_ms, hp_result *res)
{
    hp_conn *c = &nat->ct.conns[id];
    hp_eni_counters *ec = &nat->eni_ctr[c->eni];
    uint8_t old = c->state, state = old, old_flags = c->flags;
    int ignored = c->proto == 6 && hp_tcp_ignored(c, dir, pkt->tcp_flags);
    if (ignored) {
        nat->counters[HP_C_TCP_IGNORED]++;
    } else if (c->proto == 6) {
        if (hp_tcp_reopens(c, dir, pkt->tcp_flags)) {
            /* A new connection: the security group's rules of now decide. */
            const hp_source *src = find_source(nat, &pkt->key);
            if (src && hp_nat_sg_check(nat, &nat->groups[src->group], pkt, now_ms) != HP_R_NONE)
                return HP_R_SG_DENIED;
            reopen_conn(nat, id, pkt, now_ms);
            old = c->state;
            old_flags = c->flags;
        }
        int r = hp_tcp_track(&nat->ct.win[id], c, dir, pkt);
        if (r != HP_R_NONE)
            return r;
        state = hp_tcp_next_state(c, dir, pkt->tcp_flags);
        if (old == HP_S_SYN_RECV && state == HP_S_ESTABLISHED) {
            c->flags |= HP_F_ASSURED;
            nat->counters[HP_C_CONN_ESTABLISHED]++;
            ec->established[0]++;
        }
    } else if (old == HP_S_UDP_FIRST) {
        /* A stream (longer timeout) only once it stayed active HP_UDP_STREAM_MS after its
         * first reply, as Linux: a query and its answer keep the short timeout. */
        hp_conn_stats *st = &nat->ct.stats[id];
        if (!(c->flags & HP_F_REPLY_SEEN)) {
            if (dir == HP_DIR_IN)
                st->reply_ms = (uint32_t)now_ms;
        } else if ((uint32_t)((uint32_t)now_ms - st->reply_ms) >= HP_UDP_STREAM_MS) {
            state = HP_S_UDP_STREAM;
            c->flags |= HP_F_ASSURED;
        }
    }
    uint32_t packets;
    uint64_t bytes;
    hp_pkt_wire_size(pkt, &packets, &bytes);
    if (!ignored) {
        if (c->proto == 17 && dir == HP_DIR_IN && !(c->flags & HP_F_REPLY_SEEN))
            ec->established[1]++;
        if (dir == HP_DIR_IN)
            c->flags |= HP_F_REPLY_SEEN;
        hp_ct_touch(&nat->ct, id, state, now_ms);
        hp_conn_stats *st = &nat->ct.stats[id];
        st->packets[dir] += packets;
        st->bytes[dir] += bytes;
        hp_ct_flow_note(st, dir, pkt->tcp_flags, now_ms);
    }
    int fwd = dir == HP_DIR_OUT ? HP_C_FWD_OUT_PACKETS : HP_C_FWD_IN_PACKETS;
    nat->counters[fwd] += packets;
    nat->counters[fwd + 1] += bytes;
    ec->packets[dir] += packets;
    ec->bytes[dir] += bytes;
    if (state != old || ((c->flags ^ old_flags) & (HP_F_REPLY_SEEN | HP_F_ASSURED)))
        hp_event_note(nat->events, HP_EV_UPDATE, &nat->ct, id, old, old_flags, 0, now_ms);

    if (dir == HP_DIR_OUT)
        hp_rewrite_ex(pkt, dir, nat->eni_addr[c->eni].addr[c->family == 6], c->nat_port, dec_ttl);
    else
        hp_rewrite_ex(pkt, dir, c->src, c->sport, dec_ttl);
    res->verdict = HP_FORWARD;
    res->reason = HP_R_NONE;
    res->port = dir == HP_DIR_OUT ? (uint16_t)(c->eni + 1) : 0;
    res->conn = id;
    return HP_R_NONE;
}

/* Picks the ENI and external port for a new connection; returns the reason it can't. */
static int map_port(hp_nat *nat, const hp_group *g, const hp_flow_key *k, hp_func *f,
                    uint64_t now_ms, uint16_t *eni, uint16_t *ext)
{
    uint32_t ep_hash = 0;
    if (!nat->cfg.per_connection) {
        ep_hash = hp_pool_endpoint_hash(&nat->cfg.hash_seed, k->src, k->sport);
        for (uint32_t i = 0; i < g->n_enis; i++) {
            hp_pool *pool = hp_nat_pool(nat, g->enis[i], k->family, k->proto);
            if (pool && (*ext = hp_pool_map_find(pool, k->src, k->sport, ep_hash)) != 0) {
                hp_pool_ref(pool, *ext);
                *eni = g->enis[i];
                return HP_R_NONE;
            }
        }
    }
    if (g->n_enis == 0)     /* no ENI yet: the control plane creates the first one */
        return HP_R_PORTS_EXHAUSTED;
    /* The newest ENI with a free port: scale-out adds ENIs before the newest fills up, and an
     * older one whose ports came back still serves while the newest is full. A pool the
     * function holds its quota of (section 13) is passed over. A function at its share of
     * every pool makes its group grow (PORTS_EXHAUSTED: the control plane adds an ENI, on
     * which the function has its share again); only a group that cannot grow refuses it,
     * FUNCTION_LIMIT, while a pool still has a port for the others. */
    int over_quota = 0;
    for (uint32_t i = g->n_enis; i-- > 0;) {
        hp_pool *pool = hp_nat_pool(nat, g->enis[i], k->family, k->proto);
        if (!pool)
            continue;
        hp_quota_drain(nat, g->enis[i], k->family, k->proto, now_ms);
        if (!hp_quota_port_ok(f, g->enis[i], k->family, k->proto)) {
            over_quota |= hp_pool_has_free(pool, now_ms);
            continue;
        }
        *ext = hp_pool_alloc(pool);
        if (*ext == 0)
            continue;
        *eni = g->enis[i];
        hp_quota_port_add(f, *eni, k->family, k->proto, 1);
        if (!nat->cfg.per_connection)
            hp_pool_map_add(pool, *ext, k->src, k->sport, ep_hash);
        return HP_R_NONE;
    }
    return over_quota && !g->can_grow ? HP_R_FUNCTION_LIMIT : HP_R_PORTS_EXHAUSTED;
}

uint32_t hp_nat_lookup(const hp_nat *nat, const hp_flow_key *key, int dir, uint64_t now_ms)
{
    uint32_t id = hp_ct_lookup(&nat->ct, key, dir);
    if (id == HP_CT_NONE || hp_ct_expired(&nat->ct, &nat->ct.conns[id], now_ms))
        return HP_CT_NONE;
    return id;
}

/* Destinations a function must not reach through the NAT (docs/semantics.md 3): loopback,
 * link-local (169.254.169.254 included), multicast, broadcast, unspecified and reserved. */
static int is_martian(int family, const uint8_t *a)
{
    static const uint8_t zero[12];
    if (family == 4)
        return a[0] == 0 || a[0] == 127 || (a[0] == 169 && a[1] == 254) || a[0] >= 224;
    return memcmp(a, zero, 12) == 0                                     /* ::, ::1, ::/96 */
           || (memcmp(a, zero, 10) == 0 && a[10] == 0xff && a[11] == 0xff) /* ::ffff:0:0/96 */
           || (a[0] == 0xfe && (a[1] & 0x80) == 0x80)   /* fe80::/10 link-local, fec0::/10 */
           || a[0] == 0xff;                                                  /* multicast */
}

/* Whether the table has room for one more connection (section 13): expired connections go
 * first, then (may_drop) the oldest unassured one, as Linux's early_drop. */
static int make_room(hp_nat *nat, int may_drop, uint64_t now_ms)
{
    if (nat->ct.count < nat->ct.capacity)
        return 1;
    for (int i = 0; i < HP_FULL_TABLE_REAP; i++) {
        uint32_t old = hp_ct_next_expired(&nat->ct, now_ms);
        if (old == HP_CT_NONE)
            break;
        expire_conn(nat, old, now_ms, NULL, 0);
    }
    if (nat->ct.count < nat->ct.capacity)
        return 1;
    uint32_t victim = may_drop ? hp_ct_early_drop_victim(&nat->ct) : HP_CT_NONE;
    if (victim == HP_CT_NONE)
        return 0;
    journal_push(nat, victim);
    hp_event_note(nat->events, HP_EV_DESTROY, &nat->ct, victim, 0, 0, HP_DR_EARLY_DROP, now_ms);
    nat->counters[HP_C_CONN_EARLY_DROPPED]++;
    hp_quota_early_dropped(nat, nat->ct.stats[victim].owner);
    hp_nat_delete_conn(nat, victim, now_ms);
    return 1;
}

/* The ENI whose address of this family addr is, or -1. */
static int eni_of_addr(const hp_nat *nat, int family, const uint8_t *addr)
{
    int f = family == 6;
    for (uint32_t e = 0; e < nat->n_enis; e++)
        if (nat->eni_addr[e].has[f] && memcmp(nat->eni_addr[e].addr[f], addr, 16) == 0)
            return (int)e;
    return -1;
}

/* Section 3, direction OUT, after a lookup miss: a new connection or the reason for none. */
static int new_connection(hp_nat *nat, const hp_pkt *pkt, uint32_t hash, uint64_t now_ms,
                          uint32_t *id)
{
    const hp_flow_key *k = &pkt->key;
    const hp_source *src = find_source(nat, k);
    if (!src)
        return HP_R_UNKNOWN_SOURCE;
    if (!mac_matches(src, pkt))
        return HP_R_SPOOFED_SOURCE;
    if (is_martian(k->family, k->dst))
        return HP_R_MARTIAN_DST;
    const hp_group *g = &nat->groups[src->group];
    if (k->family == 6 &&
        (!src->allow_v6 || (g->n_enis > 0 && !nat->eni_addr[g->enis[g->n_enis - 1]].has[1])))
        return HP_R_V6_NOT_ALLOWED;
    if (k->proto == 6 &&
        (pkt->tcp_flags & (HP_TCP_SYN | HP_TCP_ACK | HP_TCP_RST | HP_TCP_FIN)) != HP_TCP_SYN)
        return HP_R_TCP_NOT_SYN;
    if (hp_nat_sg_check(nat, &nat->groups[src->group], pkt, now_ms) != HP_R_NONE)
        return HP_R_SG_DENIED;
    hp_func *f = &nat->funcs[src->owner];
    if (!hp_quota_admit(f))
        return HP_R_FUNCTION_LIMIT;
    /* No early drop when the group has no pool to take a port from: no connection anyway. */
    int may_drop = g->n_enis && hp_nat_pool(nat, g->enis[g->n_enis - 1], k->family, k->proto);
    if (!make_room(nat, may_drop, now_ms))
        return hp_quota_refused(f, HP_R_TABLE_FULL);
    hp_ct_prefetch_free(&nat->ct);
    uint16_t eni, ext;
    int r = map_port(nat, g, k, f, now_ms, &eni, &ext);
    if (r != HP_R_NONE) {
        if (r == HP_R_PORTS_EXHAUSTED && g->n_enis)
            nat->eni_ctr[g->enis[g->n_enis - 1]].port_errors++;
        return hp_quota_refused(f, r);
    }
    *id = hp_ct_insert_hashed(&nat->ct, k, hash, eni, ext,
                              k->proto == 6 ? HP_S_SYN_SENT : HP_S_UDP_FIRST, now_ms);
    nat->ct.stats[*id].owner = src->owner;
    hp_quota_created(f);
    if (k->proto == 6)
        hp_tcp_new(&nat->ct.win[*id], pkt);
    if (eni_of_addr(nat, k->family, k->dst) >= 0)
        nat->ct.conns[*id].flags |= HP_F_HAIRPIN;
    nat->counters[HP_C_CONN_CREATED]++;
    nat->eni_ctr[eni].attempts[k->proto == 17]++;
    nat->eni_ctr[eni].active[k->proto == 17]++;
    hp_event_note(nat->events, HP_EV_NEW, &nat->ct, *id, 0, 0, 0, now_ms);
    return HP_R_NONE;
}

static void refuse(hp_nat *nat, int reason, hp_result *res)
{
    res->verdict = hp_reason_is_punt(reason) ? HP_PUNT : HP_DROP;
    res->reason = (uint8_t)reason;
    res->port = 0;
    res->conn = HP_CT_NONE;
    nat->drops[reason]++;
}

static int is_pure_syn(const hp_pkt *pkt)
{
    return (pkt->tcp_flags & (HP_TCP_SYN | HP_TCP_ACK | HP_TCP_RST | HP_TCP_FIN)) == HP_TCP_SYN;
}

/* Why an IN frame to an ENI address matches no connection. */
static int no_match_reason(const hp_pkt *pkt)
{
    if (pkt->proto == 17)
        return HP_R_IN_NO_MATCH_UDP;
    return is_pure_syn(pkt) ? HP_R_IN_UNSOLICITED_SYN : HP_R_IN_NO_MATCH_TCP;
}

static int unsolicited_reason(const hp_nat *nat, const hp_pkt *pkt)
{
    if (eni_of_addr(nat, pkt->key.family, pkt->key.dst) < 0)
        return HP_R_IN_NOT_ENI_ADDR;
    return no_match_reason(pkt);
}

/* A live connection whose tuple in direction dir is key; one found expired is removed (and
 * journaled) and the lookup is a miss. */
static uint32_t lookup_live(hp_nat *nat, const hp_flow_key *key, uint32_t hash, int dir,
                            uint64_t now_ms, uint16_t *expired_eni)
{
    uint32_t id = hp_ct_lookup_hashed(&nat->ct, key, hash, dir);
    if (id != HP_CT_NONE && hp_ct_expired(&nat->ct, &nat->ct.conns[id], now_ms)) {
        if (expired_eni)
            *expired_eni = nat->ct.conns[id].eni;
        expire_conn(nat, id, now_ms, NULL, 0);
        id = HP_CT_NONE;
    }
    return id;
}

/* Hairpinning (RFC 4787 REQ-9 and section 6, RFC 5382 REQ-8): a frame from a function to an
 * ENI address, its source already translated by connection a, comes back in on that ENI as
 * if from outside: the same filter (only a reply of the receiver's own connection passes, so
 * a receiver that never sent to the sender's external address and port gets nothing), and
 * nothing is created for the receiver. The TTL was decremented once, on the way out. A
 * refusal counts for the ENI it was addressed to, by reason, as one from outside would. */
static int hairpin(hp_nat *nat, hp_pkt *pkt, uint32_t a_id, uint64_t now_ms, hp_result *res)
{
    const hp_conn *a = &nat->ct.conns[a_id];
    hp_flow_key k = pkt->key;
    memcpy(k.src, nat->eni_addr[a->eni].addr[a->family == 6], 16);
    k.sport = a->nat_port;
    int e = eni_of_addr(nat, k.family, k.dst);
    uint32_t id = lookup_live(nat, &k, hp_ct_hash(&nat->ct, &k), HP_DIR_IN, now_ms, NULL);
    int r = id == HP_CT_NONE ? no_match_reason(pkt) : forward(nat, id, pkt, HP_DIR_IN, 0, now_ms, res);
    if (r != HP_R_NONE) {
        nat->counters[HP_C_HAIRPIN_REFUSED]++;
        if (e >= 0)
            hp_nat_eni_drop(nat, (uint16_t)e, r);
    }
    return r;
}

static void translate_one(hp_nat *nat, hp_pkt *pkt, uint32_t hash, int dir, uint16_t in_eni,
                          uint64_t now_ms, hp_result *res)
{
    if (pkt->proto == 6 && !hp_tcp_valid_flags(pkt->tcp_flags)) {
        refuse(nat, HP_R_TCP_BAD_FLAGS, res);
        return;
    }
    uint16_t expired_eni = HP_ENI_NONE;
    uint32_t id = lookup_live(nat, &pkt->key, hash, dir, now_ms, &expired_eni);
    /* A reply comes back the way it left; a hairpin connection's replies only from inside. */
    if (id != HP_CT_NONE && dir == HP_DIR_IN &&
        (nat->ct.conns[id].eni != in_eni || (nat->ct.conns[id].flags & HP_F_HAIRPIN)))
        id = HP_CT_NONE;
    /* The owner came from the state file: an index past the sources is no one's. */
    if (id != HP_CT_NONE && dir == HP_DIR_OUT &&
        (nat->ct.stats[id].owner >= nat->n_sources ||
         !mac_matches(&nat->sources[nat->ct.stats[id].owner], pkt))) {
        refuse(nat, HP_R_SPOOFED_SOURCE, res);
        return;
    }
    int reason = HP_R_NONE, answer = 0;
    if (id == HP_CT_NONE) {
        reason = dir == HP_DIR_OUT ? new_connection(nat, pkt, hash, now_ms, &id)
                                   : unsolicited_reason(nat, pkt);
        /* A new connection refused for lack of resources is answered (section 13). */
        answer = dir == HP_DIR_OUT &&
                 (reason == HP_R_FUNCTION_LIMIT || reason == HP_R_TABLE_FULL);
    }
    if (reason == HP_R_NONE && dir == HP_DIR_OUT && (nat->ct.conns[id].flags & HP_F_HAIRPIN)) {
        /* A frame refused on the way back in leaves as it came: keep what the way out
         * rewrites (the IP header and the start of the L4 header). */
        uint8_t ip[40], l4[20];
        uint8_t *l3p = pkt->eth + pkt->l3, *l4p = pkt->eth + pkt->l4;
        size_t iplen = pkt->family == 4 ? 20 : 40, l4len = pkt->proto == 6 ? 18 : 8;
        memcpy(ip, l3p, iplen);
        memcpy(l4, l4p, l4len);
        reason = forward(nat, id, pkt, dir, 1, now_ms, res);
        if (reason == HP_R_NONE)
            reason = hairpin(nat, pkt, id, now_ms, res);
        if (reason == HP_R_NONE) {
            uint32_t packets;
            uint64_t bytes;
            hp_pkt_wire_size(pkt, &packets, &bytes);
            nat->counters[HP_C_HAIRPIN_PACKETS] += packets;
        } else {
            memcpy(l3p, ip, iplen);
            memcpy(l4p, l4, l4len);
        }
    } else if (reason == HP_R_NONE) {
        reason = forward(nat, id, pkt, dir, 1, now_ms, res);
    }
    if (reason != HP_R_NONE) {
        refuse(nat, reason, res);
        hp_nat_note_refused(nat, pkt, dir, in_eni, reason, now_ms);
        if (reason == HP_R_TCP_NOT_SYN)
            hp_nat_idle_rst(nat, pkt, expired_eni, now_ms, res);
        else if (answer)
            hp_nat_refusal(nat, pkt, now_ms, res);
    }
}

/* Frames from an ENI the parser would punt (section 13): one with TTL <= 1 only when it belongs
 * to a tracked flow (else the IN miss reason), a fragment only when it is addressed to an ENI.
 * Changes nothing. */
static int in_punt_reason(const hp_nat *nat, const hp_pkt *pkt, int reason, uint16_t in_eni,
                          uint64_t now_ms)
{
    if (reason == HP_R_TTL_EXCEEDED) {
        uint32_t id = hp_nat_lookup(nat, &pkt->key, HP_DIR_IN, now_ms);
        if (id == HP_CT_NONE || nat->ct.conns[id].eni != in_eni)
            return unsolicited_reason(nat, pkt);
        return reason;
    }
    if (reason == HP_R_FRAGMENT) {
        hp_flow_key k;
        int v6 = hp_be16(pkt->eth + 12) == 0x86DD;
        memset(&k, 0, sizeof k);
        k.family = v6 ? 6 : 4;
        memcpy(k.dst, pkt->eth + pkt->l3 + (v6 ? 24 : 16), v6 ? 16 : 4);
        if (eni_of_addr(nat, k.family, k.dst) < 0)
            return HP_R_IN_NOT_ENI_ADDR;
    }
    return reason;
}

void hp_nat_translate(hp_nat *nat, uint8_t *const *frames, const uint32_t *lens, uint32_t n,
                      int dir, uint16_t in_eni, int vnet, uint64_t now_ms, hp_result *out)
{
    hp_nat_translate_ex(nat, frames, lens, n, dir, in_eni, vnet, 1, now_ms, out);
}

void hp_nat_translate_ex(hp_nat *nat, uint8_t *const *frames, const uint32_t *lens, uint32_t n,
                         int dir, uint16_t in_eni, int vnet, int check_mtu, uint64_t now_ms,
                         hp_result *out)
{
    hp_pkt pkts[HP_BATCH];
    uint32_t hashes[HP_BATCH];
    uint8_t reasons[HP_BATCH];
    uint32_t mtu = !check_mtu ? UINT32_MAX
                   : dir == HP_DIR_OUT ? nat->cfg.mtu_outside : nat->cfg.mtu_inside;

    for (uint32_t base = 0; base < n; base += HP_BATCH) {
        uint32_t m = n - base < HP_BATCH ? n - base : HP_BATCH;
        for (uint32_t i = 0; i < m; i++) {
            hp_pkt *pkt = &pkts[i];
            int r = hp_parse(frames[base + i], lens[base + i], vnet, pkt);
            if (r == HP_R_NONE && (!pkt->vnet || pkt->vnet->gso_type == 0) && pkt->l3len > mtu)
                r = HP_R_TOO_BIG;
            reasons[i] = (uint8_t)r;
            if (r == HP_R_NONE) {
                hashes[i] = hp_ct_hash(&nat->ct, &pkt->key);
                hp_ct_prefetch_slot(&nat->ct, hashes[i]);
            }
        }
        /* The counters every hit writes; the window state only TCP reads. */
        for (uint32_t i = 0; i < m; i++)
            if (reasons[i] == HP_R_NONE)
                hp_ct_prefetch_entry(&nat->ct, hashes[i], dir,
                                     HP_CT_PF_STATS | (pkts[i].key.proto == 6 ? HP_CT_PF_WIN : 0));
        if (nat->ct.count >= HP_CT_PREFETCH_LISTS_FROM)
            for (uint32_t i = 0; i < m; i++)
                if (reasons[i] == HP_R_NONE)
                    hp_ct_prefetch_neighbours(&nat->ct, hashes[i], dir);
        for (uint32_t i = 0; i < m; i++) {
            hp_result *res = &out[base + i];
            res->port = 0;
            res->conn = HP_CT_NONE;
            if (reasons[i] == HP_R_NONE)
                translate_one(nat, &pkts[i], hashes[i], dir, in_eni, now_ms, res);
            else if (dir == HP_DIR_IN && hp_reason_is_punt(reasons[i]))
                refuse(nat, in_punt_reason(nat, &pkts[i], reasons[i], in_eni, now_ms), res);
            else
                refuse(nat, reasons[i], res);
            /* Every frame dropped on an ENI's port counts for the ENI, by reason. */
            if (dir == HP_DIR_IN && res->verdict == HP_DROP && in_eni < nat->n_enis)
                hp_nat_eni_drop(nat, in_eni, res->reason);
        }
    }
}
