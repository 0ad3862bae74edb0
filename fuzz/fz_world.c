/* The fuzz world (a small NAT with connections, reset from a snapshot before every input so
 * each run is deterministic and cheap) and the oracles over translated frames. */
#include "fz.h"
#include "hp_quota.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const struct variant {
    uint8_t per_connection, rfc;
    uint32_t capacity, journal;
    uint16_t port_lo, port_hi, mtu_inside, mtu_outside;
    uint64_t quarantine_ms;
} variants[FZ_VARIANTS] = {
    /* endpoint-independent, quarantine of two TIME_WAITs, a small journal */
    { 0, 0, 32, 8, 1024, 1055, 1500, 1500, 240000 },
    /* a port per connection, no quarantine, no journal, RFC timeouts, smaller MTUs */
    { 1, 1, 48, 0, 2000, 2015, 1400, 1280, 0 },
    /* a tiny table and pools, a short quarantine, jumbo inside MTU */
    { 0, 0, 8, 2, 60000, 60011, 9000, 1500, 1000 },
};

/* Inside functions: address, group, IPv6 allowed. The last two are unknown to the NAT. */
static const struct { const char *addr; uint8_t family, group, allow_v6; } sources[] = {
    { "\x0a\xc8\x00\x0b", 4, 0, 1 },                                   /* 10.200.0.11 */
    { "\xfd\x00\x02\x00\0\0\0\0\0\0\0\0\0\0\0\x11", 6, 0, 1 },         /* fd00:200::11 */
    { "\x0a\xc8\x00\x0c", 4, 1, 0 },                                   /* 10.200.0.12 */
    { "\xfd\x00\x02\x00\0\0\0\0\0\0\0\0\0\0\0\x12", 6, 1, 1 },         /* newest ENI lacks v6 */
    { "\x0a\xc8\x00\x0d", 4, 2, 0 },                                   /* 10.200.0.13 */
    { "\xfd\x00\x02\x00\0\0\0\0\0\0\0\0\0\0\0\x13", 6, 2, 1 },
    { "\xfd\x00\x02\x00\0\0\0\0\0\0\0\0\0\0\0\x14", 6, 2, 0 },         /* v6 not allowed */
    { "\x0a\xc8\x00\x0e", 4, 3, 0 },                                   /* group without ENI */
    { "\x0a\xc8\x00\x63", 4, 0, 0 },                                   /* unknown */
    { "\xfd\x00\x02\x00\0\0\0\0\0\0\0\0\0\0\0\x99", 6, 0, 0 },         /* unknown */
};
const int fz_n_sources = 8;

void fz_source_addr(int i, hp_flow_key *k)
{
    i %= (int)(sizeof sources / sizeof sources[0]);
    memset(k->src, 0, 16);
    memcpy(k->src, sources[i].addr, sources[i].family == 4 ? 4 : 16);
    k->family = sources[i].family;
}

void fz_dst_addr(int i, int family, uint8_t out[16])
{
    static const uint8_t v4[4][4] = { { 10, 0, 9, 9 }, { 10, 0, 9, 10 }, { 192, 0, 2, 1 },
                                      { 10, 0, 1, 4 } };      /* the last is an ENI's */
    static const uint8_t v6[4][16] = {
        { 0xfd, 0, 0, 9, [15] = 9 }, { 0xfd, 0, 0, 9, [15] = 0x10 },
        { 0x20, 0x01, 0x0d, 0xb8, [15] = 1 }, { 0xfd, 0, 0, 1, [15] = 4 } };
    memset(out, 0, 16);
    memcpy(out, family == 4 ? v4[i & 3] : v6[i & 3], family == 4 ? 4 : 16);
}

/* ENI k: 10.0.(k+1).4 and fd00:(k+1)::4. */
static void eni_addrs(int k, uint8_t v4[4], uint8_t v6[16])
{
    uint8_t a4[4] = { 10, 0, (uint8_t)(k + 1), 4 };
    memcpy(v4, a4, 4);
    memset(v6, 0, 16);
    v6[0] = 0xfd;
    v6[3] = (uint8_t)(k + 1);
    v6[15] = 4;
}

#define FZ_BASE_ENIS 3
#define FZ_EXTRA_ENIS 4

/* -- snapshot --------------------------------------------------------------------------- */

static void add_region(fz_world *w, void *ptr, size_t len)
{
    if (!ptr || !len)
        return;
    if (w->n_regions == w->cap_regions) {
        w->cap_regions = w->cap_regions ? 2 * w->cap_regions : 32;
        w->regions = realloc(w->regions, w->cap_regions * sizeof *w->regions);
        if (!w->regions)
            abort();
    }
    struct fz_region *r = &w->regions[w->n_regions++];
    r->ptr = ptr;
    r->len = len;
    r->copy = malloc(len);
    if (!r->copy)
        abort();
    memcpy(r->copy, ptr, len);
}


/* Everything translation, expiry and deletion can write, as it is now. */
static void snapshot(fz_world *w)
{
    hp_nat *nat = w->nat;
    add_region(w, nat, sizeof *nat);
    add_region(w, nat->groups, nat->cap_groups * sizeof *nat->groups);
    add_region(w, nat->funcs, nat->cap_funcs * sizeof *nat->funcs);   /* quotas and counts */
    /* The state region: its fixed part (table, journal, counters), then a block per ENI. */
    add_region(w, nat->state.base, nat->state.size);
    for (uint32_t e = 0; e < nat->n_enis; e++) {
        add_region(w, nat->eni_pools[e], sizeof *nat->eni_pools[e]);
        add_region(w, nat->eni_pools[e]->mem, nat->eni_pools[e]->mem_len);
    }
    w->base_enis = nat->n_enis;
    w->snap_now = w->now;
    w->snap_deletes = w->deletes;
    w->snap_sg = w->sg_current;
}

static void restore(fz_world *w)
{
    hp_nat *nat = w->nat;
    for (uint32_t e = w->base_enis; e < nat->n_enis; e++) {   /* ENIs added since */
        /* Past the snapshot's end of the state file: as new file space, zero (an ENI added
         * again maps the same place and expects it so). */
        memset(nat->eni_pools[e]->mem, 0, nat->eni_pools[e]->mem_len);
        hp_region_unmap(nat->eni_pools[e]->mem, nat->eni_pools[e]->mem_len);
        free(nat->eni_pools[e]);
    }
    for (size_t i = 0; i < w->n_regions; i++)
        memcpy(w->regions[i].ptr, w->regions[i].copy, w->regions[i].len);
    w->now = w->snap_now;
    w->deletes = w->snap_deletes;
    w->sg_current = w->snap_sg;     /* the groups array, restored, holds its set again */
}

/* -- setup ------------------------------------------------------------------------------- */

static uint32_t setup_frame(fz_world *w, int dir, uint16_t in_eni, const fz_frame_spec *s)
{
    uint8_t buf[256];
    uint32_t len = fz_build(buf, sizeof buf, s);
    uint8_t *frames[1] = { buf };
    fz_translate_checked(w, frames, &len, 1, dir, in_eni, s->vnet_mode != 0, 1, NULL);
    return hp_nat_lookup(w->nat, &s->k, dir, w->now);   /* the connection it used */
}

/* A reply to connection id with the given TCP flags (ignored for UDP). */
static void setup_reply(fz_world *w, uint32_t id, uint8_t flags)
{
    if (id == HP_CT_NONE)
        fz_fail("setup: a connection was not created");
    const hp_conn *c = &w->nat->ct.conns[id];
    fz_frame_spec s = { .tcp_flags = flags, .ttl = 64 };
    hp_ct_reply_key(&w->nat->ct, c, &s.k);
    setup_frame(w, HP_DIR_IN, c->eni, &s);
}

static fz_frame_spec out_spec(int source, int dst, uint8_t proto, uint16_t sport,
                              uint16_t dport, uint8_t flags)
{
    fz_frame_spec s = { .tcp_flags = flags, .ttl = 64 };
    memset(&s.k, 0, sizeof s.k);
    fz_source_addr(source, &s.k);
    fz_dst_addr(dst, s.k.family, s.k.dst);
    s.k.proto = proto;
    s.k.sport = sport;
    s.k.dport = dport;
    return s;
}

static void setup_connections(fz_world *w)
{
    enum { S = HP_TCP_SYN, A = HP_TCP_ACK, F = HP_TCP_FIN };
    fz_frame_spec s;
    /* IPv4 TCP, established */
    s = out_spec(0, 0, 6, 4000, 80, S);
    uint32_t id = setup_frame(w, HP_DIR_OUT, 0, &s);
    setup_reply(w, id, S | A);
    s.tcp_flags = A;
    setup_frame(w, HP_DIR_OUT, 0, &s);
    /* IPv4 UDP with a reply */
    s = out_spec(0, 0, 17, 4001, 53, 0);
    setup_reply(w, setup_frame(w, HP_DIR_OUT, 0, &s), 0);
    /* IPv6 TCP, SYN sent */
    s = out_spec(1, 0, 6, 4000, 443, S);
    setup_frame(w, HP_DIR_OUT, 0, &s);
    /* IPv6 UDP through the two-ENI group */
    s = out_spec(5, 0, 17, 5000, 53, 0);
    setup_frame(w, HP_DIR_OUT, 0, &s);
    /* IPv4 TCP closing: established, then a FIN from inside */
    s = out_spec(4, 0, 6, 4000, 80, S);
    id = setup_frame(w, HP_DIR_OUT, 0, &s);
    setup_reply(w, id, S | A);
    s.tcp_flags = A;
    setup_frame(w, HP_DIR_OUT, 0, &s);
    s.tcp_flags = F | A;
    setup_frame(w, HP_DIR_OUT, 0, &s);
    /* IPv4 UDP of another group, no reply yet */
    s = out_spec(2, 1, 17, 4000, 123, 0);
    setup_frame(w, HP_DIR_OUT, 0, &s);
    if (w->nat->ct.count != 6)
        fz_fail("setup: %u connections instead of 6", w->nat->ct.count);
}

/* The configuration calls refuse what they must, and a NAT is created and destroyed whole. */
static void check_config_api(hp_nat *nat, const hp_nat_config *cfg)
{
    static const uint8_t a4[4] = { 10, 9, 9, 9 };
    if (hp_nat_add_eni(nat, NULL, NULL) != -1 || hp_nat_group_add_eni(nat, 99, 0) != -1 ||
        hp_nat_group_add_eni(nat, 0, 99) != -1 || hp_nat_add_source(nat, 5, a4, 0, 0) != -1 ||
        hp_nat_add_source(nat, 4, a4, 99, 0) != -1 || hp_nat_pool(nat, 99, 4, 6) != NULL ||
        hp_nat_pool(nat, 1, 6, 17) != NULL)
        fz_fail("a configuration call accepted bad arguments");
    hp_nat_config bad = *cfg;
    bad.capacity = 0;
    if (hp_nat_create(&bad))
        fz_fail("a NAT of capacity 0");
    hp_nat *other = hp_nat_create(cfg);
    if (!other || hp_nat_add_eni(other, a4, NULL) != 0 || hp_nat_add_group(other) != 0 ||
        hp_nat_group_add_eni(other, 0, 0) != 0 || hp_nat_add_source(other, 4, a4, 0, 0) != 0)
        fz_fail("a second NAT");
    hp_nat_destroy(other);
}

#define FZ_SG_GROUP 2

static void make_rule_sets(fz_world *w)
{
    hp_sg_rule a[3], b[1];
    memset(a, 0, sizeof a);
    memset(b, 0, sizeof b);
    a[0] = (hp_sg_rule){ .prefix = { 10, 0, 9, 0 }, .port_lo = 80, .port_hi = 443, .family = 4,
                         .proto = 6, .plen = 24 };
    a[1] = (hp_sg_rule){ .port_lo = 53, .port_hi = 53, .family = 4, .proto = 17, .plen = 0 };
    a[2] = (hp_sg_rule){ .prefix = { 0xfd, 0, 0, 9 }, .port_lo = 0, .port_hi = 65535,
                         .family = 6, .proto = 0, .plen = 32 };
    b[0] = (hp_sg_rule){ .port_lo = 80, .port_hi = 80, .family = 4, .proto = 6, .plen = 0 };
    w->sg[0] = hp_sg_set_new(a, 3);
    w->sg[1] = hp_sg_set_new(b, 1);
    w->sg[2] = hp_sg_set_new(NULL, 0);
    hp_sg_rule bad = { .family = 5 };
    if (!w->sg[0] || !w->sg[1] || !w->sg[2] || hp_sg_set_new(&bad, 1))
        fz_fail("rule sets");
}

void fz_world_set_rules(fz_world *w, int k)
{
    k = k >= 0 && k < 3 ? k : -1;
    if (hp_nat_swap_group_rules(w->nat, FZ_SG_GROUP, k < 0 ? NULL : w->sg[k]) == (hp_sg_set *)-1)
        fz_fail("swap_group_rules");
    w->sg_current = k;
}

/* The rules as AWS states them, written apart from secgroup.c: a rule of protocol 0 allows
 * TCP and UDP to every port; others their protocol within the port range; the destination
 * within the prefix. */
static int rules_allow(const hp_sg_set *set, const hp_flow_key *k)
{
    for (uint32_t i = 0; set && i < set->n; i++) {
        const hp_sg_rule *r = &set->rules[i];
        if (r->family != k->family)
            continue;
        if (r->proto && (r->proto != k->proto || k->dport < r->port_lo || k->dport > r->port_hi))
            continue;
        int bits = r->plen, ok = 1;
        for (int b = 0; b < bits && ok; b++)
            ok = ((r->prefix[b / 8] ^ k->dst[b / 8]) & (0x80 >> (b % 8))) == 0;
        if (ok)
            return 1;
    }
    return !set;
}

static int source_group(const hp_flow_key *k)
{
    for (int i = 0; i < fz_n_sources; i++)
        if (sources[i].family == k->family &&
            memcmp(sources[i].addr, k->src, k->family == 4 ? 4 : 16) == 0)
            return sources[i].group;
    return -1;
}

/* A new connection of group 2 is one its rules allow; a refusal for the rules is one they
 * deny. new_conn: the frame made a connection (known for single frames only). */
static void check_rules(const fz_world *w, const uint8_t *f, const fz_parsed *p,
                        const hp_result *r, int new_conn)
{
    if (p->reason != HP_R_NONE)
        return;
    hp_flow_key k;
    fz_tuple(f, p, &k);
    const hp_sg_set *set = w->sg_current < 0 ? NULL : w->sg[w->sg_current];
    int mine = source_group(&k) == FZ_SG_GROUP;
    if (r->reason == HP_R_SG_DENIED && (!mine || rules_allow(set, &k)))
        fz_fail("a new connection refused by rules that allow it (rule set %d)", w->sg_current);
    if (new_conn && mine && !rules_allow(set, &k))
        fz_fail("a new connection the rules deny (rule set %d) went out", w->sg_current);
}

/* The NAT frees the rule sets its groups hold when destroyed: the world keeps them. */
static void close_nat(fz_world *w)
{
    for (uint32_t g = 0; g < w->nat->n_groups; g++)
        hp_nat_swap_group_rules(w->nat, (int)g, NULL);
    hp_nat_destroy(w->nat);
    w->nat = NULL;
}

/* Adds ENIs, groups and sources as recorded in w (in order: ENI ids and groups come back the
 * same after a reattach). */
static void configure(fz_world *w)
{
    hp_nat *nat = w->nat;
    for (uint32_t e = 0; e < w->n_enis; e++) {
        uint8_t a4[4], a6[16];
        eni_addrs(e < FZ_BASE_ENIS ? (int)e : (int)e + 10, a4, a6);
        if (hp_nat_add_eni(nat, a4, w->eni_v6[e] ? a6 : NULL) != (int)e)
            fz_fail("add_eni did not give ENI %u", e);
    }
    for (int g = 0; g < 4; g++)           /* group 3 has no ENI until an op adds one */
        if (hp_nat_add_group(nat) != g)
            fz_fail("add_group");
    for (uint32_t e = 0; e < w->n_enis; e++) {
        if (hp_nat_group_add_eni(nat, w->eni_group[e], (int)e) != 0)
            fz_fail("group_add_eni");
        if (e == 0 && hp_nat_group_add_eni(nat, 2, 0) != 0)   /* group 2: ENIs 0 and 2 */
            fz_fail("group_add_eni");
    }
    for (int i = 0; i < fz_n_sources; i++)
        if (hp_nat_add_source(nat, sources[i].family, (const uint8_t *)sources[i].addr,
                              sources[i].group, sources[i].allow_v6))
            fz_fail("add_source");
    fz_world_set_rules(w, w->sg_current);
}

static hp_nat *open_nat(fz_world *w)
{
    hp_nat *nat = NULL;
    char err[256];
    int r = hp_nat_open(&w->cfg, w->path, &nat, err, sizeof err);
    if (r != 0)
        fz_fail("hp_nat_open(%s): %d %s", w->path, r, err);
    return nat;
}

static void remove_state_files(void)
{
    char path[96];
    for (int v = 0; v < FZ_VARIANTS; v++) {
        snprintf(path, sizeof path, "/dev/shm/hp-fuzz-%d-%d.state", (int)getpid(), v);
        unlink(path);
    }
}

static fz_world *build(int variant)
{
    const struct variant *v = &variants[variant];
    fz_world *w = calloc(1, sizeof *w);
    if (!w)
        abort();
    hp_nat_config *cfg = &w->cfg;
    hp_nat_config_default(cfg);
    cfg->capacity = v->capacity;
    cfg->port_lo = v->port_lo;
    cfg->port_hi = v->port_hi;
    cfg->per_connection = v->per_connection;
    cfg->quarantine_ms = v->quarantine_ms;
    cfg->mtu_inside = v->mtu_inside;
    cfg->mtu_outside = v->mtu_outside;
    cfg->journal_size = v->journal;
    cfg->port_seed = 0x5eed + (uint64_t)variant;
    cfg->hash_seed.k0 = 0x0123456789abcdefull;   /* fixed: runs are reproducible */
    cfg->hash_seed.k1 = 0xfedcba9876543210ull + (uint64_t)variant;
    hp_timeouts_profile(&cfg->timeouts, v->rfc);
    w->variant = variant;
    snprintf(w->path, sizeof w->path, "/dev/shm/hp-fuzz-%d-%d.state", (int)getpid(), variant);
    unlink(w->path);
    static int cleanup;
    if (!cleanup++)
        atexit(remove_state_files);

    if (!(w->nat = open_nat(w)))
        fz_fail("hp_nat_create failed");
    make_rule_sets(w);
    w->sg_current = 0;
    w->n_enis = FZ_BASE_ENIS;              /* ENI 1 is IPv4 only; ENI k joins group k */
    for (uint32_t e = 0; e < FZ_BASE_ENIS; e++) {
        w->eni_v6[e] = e != 1;
        w->eni_group[e] = (uint8_t)e;
    }
    configure(w);
    check_config_api(w->nat, cfg);
    w->now = FZ_T0;
    fz_check_invariants(w);
    setup_connections(w);
    snapshot(w);
    return w;
}

static void world_free(fz_world *w)
{
    close_nat(w);
    for (int k = 0; k < 3; k++)
        hp_sg_set_free(w->sg[k]);
    unlink(w->path);
    for (size_t i = 0; i < w->n_regions; i++)
        free(w->regions[i].copy);
    free(w->regions);
    free(w);
}

fz_world *fz_world_get(int variant)
{
    static fz_world *worlds[FZ_VARIANTS];
    variant %= FZ_VARIANTS;
    if (worlds[variant] && worlds[variant]->dirty) {
        world_free(worlds[variant]);
        worlds[variant] = NULL;
    }
    if (!worlds[variant])
        worlds[variant] = build(variant);
    else
        restore(worlds[variant]);
    return worlds[variant];
}

int fz_world_add_eni(fz_world *w, int group, int with_v6)
{
    hp_nat *nat = w->nat;
    if (nat->n_enis >= w->base_enis + FZ_EXTRA_ENIS)
        return -1;
    uint8_t a4[4], a6[16];
    eni_addrs((int)nat->n_enis + 10, a4, a6);
    int e = hp_nat_add_eni(nat, a4, with_v6 ? a6 : NULL);
    group %= (int)nat->n_groups;
    if (e < 0 || hp_nat_group_add_eni(nat, group, e) != 0)
        fz_fail("adding ENI %d failed", e);
    w->eni_v6[e] = (uint8_t)(with_v6 != 0);
    w->eni_group[e] = (uint8_t)group;
    w->n_enis = (uint32_t)e + 1;
    fz_check_invariants(w);
    return e;
}

void fz_world_restart(fz_world *w, const uint8_t (*tear)[3], uint32_t n_tear)
{
    hp_ct *ct = &w->nat->ct;
    uint32_t capacity = ct->capacity;
    hp_conn *before = malloc(capacity * sizeof *before);
    uint8_t *torn = calloc(capacity, 1);
    if (!before || !torn)
        abort();
    for (uint32_t i = 0; i < n_tear; i++) {
        uint32_t victim = tear[i][0] % capacity, donor = tear[i][1] % capacity;
        size_t split = tear[i][2] % sizeof(hp_conn);
        /* An insert writes a whole tuple of one family: a donor of the other would leave an
         * IPv4 entry with IPv6 address bytes, no write's half. */
        if ((tear[i][2] & 0x80) || ct->conns[victim].family != ct->conns[donor].family)
            memset(&ct->conns[victim], 0, split);
        else
            memcpy(&ct->conns[victim], &ct->conns[donor], split);
        torn[victim] = 1;
    }
    memcpy(before, ct->conns, capacity * sizeof *before);

    close_nat(w);
    w->nat = open_nat(w);
    w->dirty = 1;          /* the snapshot points into the old mapping */
    if (!w->nat->attached)
        fz_fail("reopening the state file did not attach");
    configure(w);
    hp_quota_recount(w->nat);      /* as the daemon does once its sources are back */
    ct = &w->nat->ct;
    uint32_t lost = 0;
    for (uint32_t id = 0; id < capacity; id++) {
        hp_conn a = before[id], b = ct->conns[id];
        a.lru_prev = a.lru_next = b.lru_prev = b.lru_next = 0;   /* rebuilt by the attach */
        if (b.state != HP_S_NONE && memcmp(&a, &b, sizeof a) != 0)
            fz_fail("attach kept entry %u, but not as it was", id);
        if (!torn[id] && a.state != HP_S_NONE && b.state == HP_S_NONE)
            lost++;
    }
    /* A torn entry may now hold another's tuples and port: the attach cannot tell which of the
     * two was torn and keeps one, so each tear may cost one whole entry per tuple and port. */
    if (lost > 2 * n_tear)
        fz_fail("attach dropped %u whole entries for %u torn ones", lost, n_tear);
    free(before);
    free(torn);
    if (!n_tear && w->nat->repaired)
        fz_fail("attach repaired %u things in a state nothing tore", w->nat->repaired);
    /* Entries the repair dropped were neither expired nor deleted: count them as deleted. */
    uint64_t created = w->nat->counters[HP_C_CONN_CREATED];
    w->deletes = created - w->nat->counters[HP_C_CONN_EXPIRED] -
                 w->nat->counters[HP_C_CONN_EARLY_DROPPED] - ct->count;
    fz_check_invariants(w);
}

/* -- oracles over frames ---------------------------------------------------------------- */

static int is_parse_reason(int r)
{
    switch (r) {
    case HP_R_VNET_TRUNCATED: case HP_R_ETH_TRUNCATED: case HP_R_ARP: case HP_R_ETHERTYPE:
    case HP_R_IPV4_TRUNCATED: case HP_R_IPV4_BAD_VERSION: case HP_R_IPV4_BAD_IHL:
    case HP_R_IPV4_BAD_TOTAL_LEN: case HP_R_IPV4_BAD_CHECKSUM: case HP_R_FRAGMENT:
    case HP_R_IPV6_TRUNCATED: case HP_R_IPV6_BAD_VERSION: case HP_R_IPV6_BAD_PAYLOAD_LEN:
    case HP_R_IPV6_EXT_TOO_MANY: case HP_R_IPV6_EXT_TRUNCATED: case HP_R_ICMP:
    case HP_R_PROTO: case HP_R_L4_TRUNCATED: case HP_R_TCP_BAD_DOFF: case HP_R_UDP_BAD_LEN:
    case HP_R_VNET_BAD_CSUM: case HP_R_TTL_EXCEEDED: case HP_R_TOO_BIG: case HP_R_SOURCE_ROUTE:
        return 1;
    default:
        return 0;
    }
}

static const char *reason_name(int r)
{
    return r >= 0 && r < HP_R_COUNT ? hp_reason_names[r] : "?";
}

static void key_expect(const hp_flow_key *got, const uint8_t *src, const uint8_t *dst,
                       uint16_t sport, uint16_t dport, const char *what)
{
    if (memcmp(got->src, src, 16) || memcmp(got->dst, dst, 16) || got->sport != sport ||
        got->dport != dport)
        fz_fail("%s: tuple is not the connection's (ports %u->%u, expected %u->%u)", what,
                got->sport, got->dport, sport, dport);
}

static void check_dropped(const uint8_t *before, const uint8_t *after, uint32_t len,
                          const fz_parsed *p, const hp_result *r)
{
    if (r->reason == HP_R_NONE || r->reason >= HP_R_COUNT)
        fz_fail("verdict %u with reason %u", r->verdict, r->reason);
    if ((r->verdict == HP_PUNT) != (hp_reason_is_punt(r->reason) != 0))
        fz_fail("verdict %u disagrees with reason %s", r->verdict, reason_name(r->reason));
    if (r->conn != HP_CT_NONE || r->port != 0)
        fz_fail("a frame not forwarded names connection %u, port %u", r->conn, r->port);
    if (p->reason != HP_R_NONE) {
        /* A malformed frame is refused for the reason the spec gives. A punt reason may be
         * overtaken by a drop after the lookup (an untracked frame is dropped in C). */
        int spec_punt = hp_reason_is_punt(p->reason);
        if (r->reason != p->reason && (!spec_punt || is_parse_reason(r->reason)))
            fz_fail("the spec says %s, the core says %s", reason_name(p->reason),
                    reason_name(r->reason));
    } else if (is_parse_reason(r->reason)) {
        fz_fail("a well-formed frame refused for %s", reason_name(r->reason));
    }
    if (memcmp(before, after, len) != 0)
        fz_fail("a frame not forwarded (%s) was changed", reason_name(r->reason));
}

static uint32_t be32_at(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* A TCP segment from a function that matched no connection comes back as a RST (FORWARD to
 * the inside port, reason TCP_NOT_SYN): addresses, ports and MACs swapped, the sequence
 * numbers RFC 793 gives, every checksum right, no partial checksum or GSO left. */
static void check_rst_answer(const uint8_t *before, const uint8_t *after, uint32_t len,
                             const fz_parsed *p, int dir, const hp_result *r)
{
    if (dir != HP_DIR_OUT || p->reason != HP_R_NONE || p->proto != 6)
        fz_fail("a RST answer to a frame that is not a well-formed TCP segment from inside");
    if (r->port != 0 || r->conn != HP_CT_NONE)
        fz_fail("a RST answer sent to port %u, connection %u", r->port, r->conn);
    uint8_t flags = before[p->l4 + 13];
    if (flags & HP_TCP_RST)
        fz_fail("a RST answered with a RST");
    fz_parsed q;
    fz_parse(after, len, p->vnet, 0, &q);
    if (q.reason != HP_R_NONE || q.proto != 6 || q.family != p->family || q.partial ||
        q.gso_type)
        fz_fail("the RST answer does not parse as a plain TCP segment (%s)",
                reason_name(q.reason));
    hp_flow_key in, out;
    fz_tuple(before, p, &in);
    fz_tuple(after, &q, &out);
    if (memcmp(in.src, out.dst, 16) || memcmp(in.dst, out.src, 16) || in.sport != out.dport ||
        in.dport != out.sport)
        fz_fail("the RST answer does not go back the way the segment came");
    if (memcmp(before + p->eth, after + q.eth + 6, 6) ||
        memcmp(before + p->eth + 6, after + q.eth, 6))
        fz_fail("the RST answer's MAC addresses are not swapped");
    if (q.family == 4 && !fz_ipv4_csum_ok(after, &q))
        fz_fail("the RST answer's IPv4 header checksum does not verify");
    /* docs/semantics.md 9.2: a fresh IP header, TTL 64, no offload, the rest zeroed. */
    const uint8_t *ip = after + q.l3;
    int fresh = q.family == 4 ? ip[0] == 0x45 && ip[8] == 64 : ip[7] == 64;
    if (!fresh || q.l4 != q.l3 + (q.family == 4 ? 20u : 40u))
        fz_fail("the RST answer's IP header is not a fresh one with TTL 64");
    for (uint32_t j = 0; j < len; j++)
        if ((j < q.eth || j >= q.end) && after[j] != 0)
            fz_fail("byte %u of the RST answer, outside its headers, is not zero", j);
    if (fz_csum_residual(after, &q) != 0)
        fz_fail("the RST answer's TCP checksum does not verify");
    const uint8_t *t = after + q.l4;
    uint32_t seg = p->end - p->l4 - (before[p->l4 + 12] >> 4) * 4u +
                   !!(flags & HP_TCP_SYN) + !!(flags & HP_TCP_FIN);
    if (flags & HP_TCP_ACK) {
        if (t[13] != HP_TCP_RST || be32_at(t + 4) != be32_at(before + p->l4 + 8))
            fz_fail("the RST answer to an ACK is not RST seq=ack");
    } else if (t[13] != (HP_TCP_RST | HP_TCP_ACK) ||
               be32_at(t + 8) != be32_at(before + p->l4 + 4) + seg) {
        fz_fail("the RST answer to a segment without ACK is not RST|ACK ack=seq+len");
    }
}

/* A datagram refused for lack of resources comes back as ICMP destination unreachable,
 * administratively prohibited (docs/semantics.md section 13): to the inside port, addresses and
 * MACs swapped, the quote starting with the datagram's own IP header. */
static void check_unreach_answer(const uint8_t *before, const uint8_t *after, const fz_parsed *p,
                                 int dir, const hp_result *r)
{
    if (dir != HP_DIR_OUT || p->reason != HP_R_NONE || p->proto != 17)
        fz_fail("an ICMP answer to a frame that is not a well-formed UDP datagram from inside");
    if (r->port != 0 || r->conn != HP_CT_NONE)
        fz_fail("an ICMP answer sent to port %u, connection %u", r->port, r->conn);
    int v4 = p->family == 4;
    const uint8_t *ip = after + p->l3, *icmp = ip + (v4 ? 20 : 40);
    uint32_t alen = v4 ? 4 : 16, src = v4 ? 12 : 8;
    if (ip[v4 ? 9 : 6] != (v4 ? 1 : 58) || icmp[0] != (v4 ? 3 : 1) || icmp[1] != (v4 ? 13 : 1))
        fz_fail("the answer to a refused datagram is not ICMP administratively prohibited");
    if (memcmp(ip + src, before + p->l3 + src + alen, alen) ||
        memcmp(ip + src + alen, before + p->l3 + src, alen) ||
        memcmp(icmp + 8, before + p->l3, v4 ? 20 : 40))
        fz_fail("the ICMP answer does not go back the way the datagram came, quoting it");
    if (memcmp(before + p->eth, after + p->eth + 6, 6) ||
        memcmp(before + p->eth + 6, after + p->eth, 6))
        fz_fail("the ICMP answer's MAC addresses are not swapped");
}

/* The connection checks of a forwarded frame. */
static void check_forwarded_conn(const hp_nat *nat, const uint8_t *before, const uint8_t *after,
                                 const fz_parsed *p, int dir, uint16_t in_eni, const hp_result *r)
{
    if (r->conn >= nat->ct.capacity || nat->ct.conns[r->conn].state == HP_S_NONE)
        fz_fail("forwarded on connection %u, not live", r->conn);
    const hp_conn *c = &nat->ct.conns[r->conn];
    if (c->family != p->family || c->proto != p->proto)
        fz_fail("forwarded on a connection of another family or protocol");
    const uint8_t *eni = nat->eni_addr[c->eni].addr[c->family == 6];
    hp_flow_key in, out;
    fz_tuple(before, p, &in);
    fz_tuple(after, p, &out);
    if (dir == HP_DIR_OUT) {
        if (r->port == 0) {
            /* Hairpinned: it went out on the sender's connection and came back in on the
             * receiver's (c): from c's destination (the sender's ENI address and port) to c's
             * inside endpoint. Both addresses and ports change, so the byte checks below do
             * not apply. */
            if (!(c->flags & HP_F_HAIRPIN))
                fz_fail("OUT frame sent to the inside on a connection that is no hairpin");
            /* Filtered as from outside: the receiver wrote to the sender first. */
            if (nat->ct.stats[r->conn].packets[HP_DIR_OUT] == 0)
                fz_fail("hairpinned to connection %u, whose function never wrote to the sender",
                        r->conn);
            key_expect(&in, in.src, eni, in.sport, c->nat_port, "hairpin before");
            key_expect(&out, c->dst, c->src, c->dport, c->sport, "hairpin after");
            if (p->family == 4 && !fz_ipv4_csum_ok(after, p))
                fz_fail("IPv4 header checksum does not verify after hairpinning");
            return;
        }
        key_expect(&in, c->src, c->dst, c->sport, c->dport, "OUT before");
        key_expect(&out, eni, c->dst, c->nat_port, c->dport, "OUT after");
        if (r->port != c->eni + 1)
            fz_fail("OUT frame sent to port %u, its ENI is %u", r->port, c->eni);
    } else {
        if (c->eni != in_eni)
            fz_fail("IN frame from ENI %u forwarded on a connection of ENI %u", in_eni, c->eni);
        key_expect(&in, c->dst, eni, c->dport, c->nat_port, "IN before");
        key_expect(&out, c->dst, c->src, c->dport, c->sport, "IN after");
        if (r->port != 0)
            fz_fail("IN frame sent to port %u", r->port);
    }
}

/* recycled: a full table dropped connections early during the batch, so the connection a frame
 * created may be gone and its id another's by now; its bytes are still checked. */
static void check_forwarded(const fz_world *w, const uint8_t *before, const uint8_t *after,
                            uint32_t len, const fz_parsed *p, int dir, uint16_t in_eni,
                            const hp_result *r, int recycled)
{
    if (p->reason != HP_R_NONE)
        fz_fail("forwarded a frame the spec refuses for %s", reason_name(p->reason));
    if (r->reason != HP_R_NONE)
        fz_fail("forwarded with reason %s", reason_name(r->reason));
    if (!recycled)
        check_forwarded_conn(w->nat, before, after, p, dir, in_eni, r);

    /* Only what a NAT may change changed: the rewritten address and port (both of each when
     * hairpinned: an OUT frame sent back to the inside), the TTL / hop limit, the IPv4 header
     * checksum and the L4 checksum. */
    int hairpin = dir == HP_DIR_OUT && r->port == 0;
    uint32_t alen = (p->family == 4 ? 4 : 16) * (hairpin ? 2 : 1);
    uint32_t addr = p->l3 + (p->family == 4 ? (dir == HP_DIR_OUT ? 12 : 16)
                                            : (dir == HP_DIR_OUT ? 8 : 24));
    uint32_t plen = hairpin ? 4 : 2;
    uint32_t port = p->l4 + (dir == HP_DIR_OUT ? 0 : 2), ck = fz_csum_at(p);
    uint32_t ttl = p->l3 + (p->family == 4 ? 8 : 7), ipck = p->l3 + 10;
    for (uint32_t j = 0; j < len; j++) {
        if (before[j] == after[j])
            continue;
        int allowed = (j >= addr && j < addr + alen) || j - port < plen || j - ck < 2 ||
                      j == ttl || (p->family == 4 && j - ipck < 2);
        if (!allowed)
            fz_fail("byte %u changed (0x%02x -> 0x%02x), not a field NAT rewrites", j,
                    before[j], after[j]);
    }
    if (after[ttl] != (uint8_t)(before[ttl] - 1))
        fz_fail("TTL %u -> %u", before[ttl], after[ttl]);
    if (p->family == 4 && !fz_ipv4_csum_ok(after, p))
        fz_fail("IPv4 header checksum does not verify after translation");

    uint16_t ck_before = (uint16_t)(before[ck] << 8 | before[ck + 1]);
    uint16_t ck_after = (uint16_t)(after[ck] << 8 | after[ck + 1]);
    if (!p->partial && p->proto == 17 && p->family == 4 && ck_before == 0) {
        if (ck_after != 0)
            fz_fail("a UDP frame without checksum got one (0x%04x)", ck_after);
        return;
    }
    if (!p->partial && p->proto == 17 && ck_after == 0)
        fz_fail("UDP checksum became 0 (means none)");
    uint16_t rb = fz_csum_residual(before, p), ra = fz_csum_residual(after, p);
    if (rb != ra)
        fz_fail("%s L4 checksum error changed: 0x%04x -> 0x%04x (field 0x%04x -> 0x%04x)",
                p->partial ? "partial" : "full", rb, ra, ck_before, ck_after);
}

/* The live connection a frame will hit, everything the table keeps of it (entry, counters,
 * TCP windows) as it was: a frame the NAT then refuses (a TCP segment out of window, say)
 * must leave it so. */
#define FZ_HIT_FIELD(type, name) type name;
typedef struct fz_hit {
    uint32_t id;
    HP_CT_ARRAYS(FZ_HIT_FIELD)
} fz_hit;
#undef FZ_HIT_FIELD

static void find_hit(const fz_world *w, const uint8_t *f, uint32_t len, int vnet, int dir,
                     uint16_t in_eni, fz_hit *h)
{
    const hp_ct *ct = &w->nat->ct;
    fz_parsed p;
    fz_parse(f, len, vnet, 0, &p);
    h->id = HP_CT_NONE;
    if (p.reason != HP_R_NONE)
        return;
    hp_flow_key k;
    fz_tuple(f, &p, &k);
    uint32_t id = hp_nat_lookup(w->nat, &k, dir, w->now);
    if (id == HP_CT_NONE || (dir == HP_DIR_IN && ct->conns[id].eni != in_eni))
        return;
    h->id = id;
#define FZ_HIT_SAVE(type, name) h->name = ct->name[id];
    HP_CT_ARRAYS(FZ_HIT_SAVE)
#undef FZ_HIT_SAVE
}

static void check_hit_unchanged(const fz_world *w, const fz_hit *h, const hp_result *r)
{
    const hp_ct *ct = &w->nat->ct;
    /* A hairpinned frame refused on its way back in keeps the update of its way out
     * (docs/semantics.md 3, hairpinning). */
    if (h->id == HP_CT_NONE || r->verdict == HP_FORWARD || (h->conns.flags & HP_F_HAIRPIN))
        return;
#define FZ_HIT_CHECK(type, name) \
    if (memcmp(&ct->name[h->id], &h->name, sizeof(type)) != 0) \
        fz_fail("a frame refused for %s changed %s of its connection %u", \
                reason_name(r->reason), #name, h->id);
    HP_CT_ARRAYS(FZ_HIT_CHECK)
#undef FZ_HIT_CHECK
}

void fz_translate_checked(fz_world *w, uint8_t **frames, const uint32_t *lens, uint32_t n,
                          int dir, uint16_t in_eni, int vnet, int check_mtu, hp_result *out)
{
    fz_hit hit = { .id = HP_CT_NONE };
    if (n > FZ_MAX_BATCH)
        n = FZ_MAX_BATCH;
    uint8_t *bufs[FZ_MAX_BATCH], *before[FZ_MAX_BATCH];
    hp_result res[FZ_MAX_BATCH];
    for (uint32_t i = 0; i < n; i++) {
        bufs[i] = malloc(lens[i]);
        before[i] = malloc(lens[i]);
        if ((!bufs[i] || !before[i]) && lens[i])
            abort();
        memcpy(bufs[i], frames[i], lens[i]);
        memcpy(before[i], frames[i], lens[i]);
        memset(&res[i], 0xA5, sizeof res[i]);
    }
    if (n == 1)     /* in a batch, an earlier frame may change the connection legitimately */
        find_hit(w, before[0], lens[0], vnet, dir, in_eni, &hit);
    uint64_t drops_before[HP_R_COUNT];
    memcpy(drops_before, w->nat->drops, sizeof drops_before);
    uint64_t fwd_before = w->nat->counters[HP_C_FWD_OUT_PACKETS] +
                          w->nat->counters[HP_C_FWD_IN_PACKETS];
    uint64_t early_before = w->nat->counters[HP_C_CONN_EARLY_DROPPED];
    if (check_mtu)
        hp_nat_translate(w->nat, bufs, lens, n, dir, in_eni, vnet, w->now, res);
    else
        hp_nat_translate_ex(w->nat, bufs, lens, n, dir, in_eni, vnet, 0, w->now, res);

    uint32_t mtu = !check_mtu ? 0 : dir == HP_DIR_OUT ? w->nat->cfg.mtu_outside
                                                       : w->nat->cfg.mtu_inside;
    uint32_t forwarded = 0;
    for (uint32_t i = 0; i < n; i++) {
        fz_parsed p;
        fz_parse(before[i], lens[i], vnet, mtu, &p);
        if (res[i].verdict == HP_FORWARD && res[i].reason != HP_R_NONE && p.proto == 17) {
            check_unreach_answer(before[i], bufs[i], &p, dir, &res[i]);
        } else if (res[i].verdict == HP_FORWARD && res[i].reason != HP_R_NONE) {
            check_rst_answer(before[i], bufs[i], lens[i], &p, dir, &res[i]);   /* idle, refused */
        } else if (res[i].verdict == HP_FORWARD) {
            check_forwarded(w, before[i], bufs[i], lens[i], &p, dir, in_eni, &res[i],
                            w->nat->counters[HP_C_CONN_EARLY_DROPPED] != early_before);
            forwarded++;
            if (dir == HP_DIR_OUT)
                check_rules(w, before[i], &p, &res[i], n == 1 && hit.id == HP_CT_NONE);
        } else if (res[i].verdict == HP_DROP || res[i].verdict == HP_PUNT) {
            check_dropped(before[i], bufs[i], lens[i], &p, &res[i]);
            check_hit_unchanged(w, &hit, &res[i]);
            check_rules(w, before[i], &p, &res[i], 0);
        } else {
            fz_fail("verdict %u", res[i].verdict);
        }
        memcpy(frames[i], bufs[i], lens[i]);
        if (out)
            out[i] = res[i];
        free(bufs[i]);
        free(before[i]);
    }
    uint64_t fwd_after = w->nat->counters[HP_C_FWD_OUT_PACKETS] +
                         w->nat->counters[HP_C_FWD_IN_PACKETS];
    if (fwd_after - fwd_before < forwarded)
        fz_fail("%u frames forwarded, packet counters grew by %llu", forwarded,
                (unsigned long long)(fwd_after - fwd_before));
    /* Every refused frame is counted once, under its reason. */
    uint32_t refused[HP_R_COUNT] = { 0 };
    for (uint32_t i = 0; i < n; i++)
        if (res[i].verdict != HP_FORWARD || res[i].reason != HP_R_NONE)   /* RST answers too */
            refused[res[i].reason]++;
    for (int r = 0; r < HP_R_COUNT; r++)
        if (w->nat->drops[r] - drops_before[r] != refused[r])
            fz_fail("%u frames refused for %s, its counter grew by %llu", refused[r],
                    reason_name(r), (unsigned long long)(w->nat->drops[r] - drops_before[r]));
    fz_check_invariants(w);
}

int fz_aim(fz_world *w, uint8_t *f, uint32_t len, int vnet, int dir, uint32_t sel)
{
    fz_parsed p;
    fz_parse(f, len, vnet, 0, &p);
    if (!p.have_l4)
        return -1;
    const hp_ct *ct = &w->nat->ct;
    uint32_t ids[64], n = 0;
    for (uint32_t id = hp_ct_next_live(ct, 0); id != HP_CT_NONE && n < 64;
         id = hp_ct_next_live(ct, id + 1))
        if (ct->conns[id].family == p.family && ct->conns[id].proto == p.proto)
            ids[n++] = id;
    if (n == 0)
        return -1;
    const hp_conn *c = &ct->conns[ids[sel % n]];
    hp_flow_key k;
    if (dir == HP_DIR_OUT)
        hp_ct_orig_key(c, &k);
    else
        hp_ct_reply_key(ct, c, &k);
    fz_set_tuple(f, &p, &k);
    return c->eni;
}

/* -- expiry, deletion, lookup -------------------------------------------------------------- */

uint32_t fz_nth_live(const fz_world *w, uint32_t n)
{
    const hp_ct *ct = &w->nat->ct;
    if (ct->count == 0)
        return HP_CT_NONE;
    n %= ct->count;
    for (uint32_t id = hp_ct_next_live(ct, 0); id != HP_CT_NONE; id = hp_ct_next_live(ct, id + 1))
        if (n-- == 0)
            return id;
    fz_fail("count says %u live connections, iteration found fewer", ct->count);
}

static int expired(const hp_nat *nat, const hp_conn *c, uint64_t now)
{
    return now >= c->last_seen_ms + nat->cfg.timeouts.ms[c->state];
}

void fz_expire_checked(fz_world *w, size_t max, size_t out_max, int with_out)
{
    hp_nat *nat = w->nat;
    enum { OUT_CAP = 64 };
    hp_conn_record out[OUT_CAP];
    if (out_max > OUT_CAP)
        out_max = OUT_CAP;
    uint32_t count = nat->ct.count, journal = nat->sh->j_count;
    uint64_t exp_before = nat->counters[HP_C_CONN_EXPIRED];
    size_t got = hp_nat_expire(nat, w->now, max, with_out ? out : NULL, out_max);
    hp_quota_drain_all(nat, w->now);
    uint32_t removed = count - nat->ct.count;
    if (nat->ct.count > count || removed > max)
        fz_fail("expire(max %zu) removed %u connections", max, removed);
    if (nat->counters[HP_C_CONN_EXPIRED] - exp_before != removed)
        fz_fail("expired counter grew by %llu, %u removed",
                (unsigned long long)(nat->counters[HP_C_CONN_EXPIRED] - exp_before), removed);
    size_t want = with_out ? (journal + removed < out_max ? journal + removed : out_max) : 0;
    if (got != want)
        fz_fail("expire returned %zu records, expected %zu", got, want);
    for (size_t i = 0; i < got; i++) {
        const hp_conn *c = &out[i].conn;
        /* The journal also keeps connections a SYN reopened (TIME_WAIT or CLOSE) before they
         * expired: they ended all the same. */
        int reopened = i < journal && c->proto == 6 &&
                       (c->state == HP_S_TIME_WAIT || c->state == HP_S_CLOSE);
        /* And the unassured ones a full table dropped early (semantics section 13). */
        int dropped = i < journal && !(c->flags & HP_F_ASSURED);
        if (c->state == HP_S_NONE || c->state >= HP_S_COUNT ||
            (!expired(nat, c, w->now) && !reopened && !dropped))
            fz_fail("expire handed out a connection that had not expired (state %u)", c->state);
    }
    if (removed < max && hp_ct_next_expired(&nat->ct, w->now) != HP_CT_NONE)
        fz_fail("expire stopped before max with expired connections left");
    fz_check_invariants(w);
}

void fz_delete_checked(fz_world *w, uint32_t id)
{
    if (id == HP_CT_NONE)
        return;
    hp_nat *nat = w->nat;
    uint32_t count = nat->ct.count;
    hp_flow_key orig, reply;
    hp_ct_orig_key(&nat->ct.conns[id], &orig);
    hp_ct_reply_key(&nat->ct, &nat->ct.conns[id], &reply);
    hp_nat_delete_conn(nat, id, w->now);
    w->deletes++;
    if (nat->ct.count != count - 1 || nat->ct.conns[id].state != HP_S_NONE)
        fz_fail("delete of %u left it in the table", id);
    if (hp_ct_lookup(&nat->ct, &orig, HP_DIR_OUT) != HP_CT_NONE ||
        hp_ct_lookup(&nat->ct, &reply, HP_DIR_IN) != HP_CT_NONE)
        fz_fail("a deleted connection's tuple still finds an entry");
    fz_check_invariants(w);
}

void fz_lookup_checked(fz_world *w, uint32_t id)
{
    if (id == HP_CT_NONE)
        return;
    const hp_nat *nat = w->nat;
    const hp_conn *c = &nat->ct.conns[id];
    hp_flow_key orig, reply;
    hp_ct_orig_key(c, &orig);
    hp_ct_reply_key(&nat->ct, c, &reply);
    uint32_t want = expired(nat, c, w->now) ? HP_CT_NONE : id;
    uint32_t a = hp_nat_lookup(nat, &orig, HP_DIR_OUT, w->now);
    uint32_t b = hp_nat_lookup(nat, &reply, HP_DIR_IN, w->now);
    if (a != want || b != want)
        fz_fail("lookup of connection %u: original %u, reply %u, expected %u", id, a, b, want);
    /* The batched lookup (no expiry check) finds the entry from both sides. */
    hp_flow_key keys[2] = { orig, reply };
    uint32_t ids[2];
    hp_ct_lookup_batch(&nat->ct, keys, 1, HP_DIR_OUT, &ids[0]);
    hp_ct_lookup_batch(&nat->ct, keys + 1, 1, HP_DIR_IN, &ids[1]);
    if (ids[0] != id || ids[1] != id)
        fz_fail("batched lookup of connection %u: %u, %u", id, ids[0], ids[1]);
    /* The other direction's tuple must not be mistaken for this one's. */
    if (memcmp(&orig, &reply, sizeof orig) != 0 &&
        hp_nat_lookup(nat, &orig, HP_DIR_IN, w->now) == id)
        fz_fail("connection %u found by its original tuple in the reply direction", id);
}

void fz_world_set_quota(fz_world *w, int source, uint32_t max_conns, uint32_t max_ports)
{
    hp_flow_key k;
    fz_source_addr(source % fz_n_sources, &k);
    if (hp_quota_set(w->nat, k.family, k.src, max_conns, max_ports) != 0)
        fz_fail("quota_set of a registered source");
    /* Unknown sources: refused. */
    uint8_t unknown[16] = { 0xfd, 0x99 };
    if (hp_quota_set(w->nat, 6, unknown, 1, 1) != -1)
        fz_fail("quota_set of an unknown source");
}
