/* The NAT's life over its state region (hp_state.h): making or attaching the region, adding
 * ENIs (their pools appended to it), the repair pass of an attach, and the end. */
#include "hp_nat.h"
#include "hp_answer.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PAGE 4096u
#define HUGE_PAGE ((size_t)2 << 20)

static size_t round_up(size_t n, size_t to)
{
    return (n + to - 1) / to * to;
}

/* Where the parts of the fixed region go. */
typedef struct layout {
    size_t shared, journal, table, fixed;
} layout;

static layout place(const hp_nat_config *cfg)
{
    layout l;
    size_t table_bytes = hp_ct_region_bytes(cfg->capacity);
    l.shared = PAGE;
    l.journal = round_up(l.shared + sizeof(hp_nat_shared), 64);
    size_t end = l.journal + (size_t)cfg->journal_size * sizeof(hp_conn_record);
    l.table = round_up(end, table_bytes >= HUGE_PAGE ? HUGE_PAGE : PAGE);
    l.fixed = round_up(l.table + table_bytes, PAGE);
    return l;
}

/* The header a state file of this config and this build has. */
static void header(const hp_nat_config *cfg, hp_state_hdr *h)
{
    memset(h, 0, sizeof *h);
    memcpy(h->magic, HP_STATE_MAGIC, 8);
    h->version = HP_STATE_VERSION;
    uint64_t layout_sizes[] = {
        sizeof(hp_state_hdr), sizeof(hp_nat_shared), sizeof(hp_conn_record),
        sizeof(hp_ct_slot), sizeof(hp_pool_state), sizeof(hp_port_owner),
        HP_S_COUNT, HP_C_COUNT, HP_R_COUNT, HP_MAX_ENIS,
#define SIZE(type, name) sizeof(type),
        HP_CT_ARRAYS(SIZE)
#undef SIZE
    };
    _Static_assert(sizeof layout_sizes <= sizeof h->layout, "room for the layout sizes");
    h->n_layout = sizeof layout_sizes / sizeof layout_sizes[0];
    memcpy(h->layout, layout_sizes, sizeof layout_sizes);
    h->fixed_bytes = place(cfg).fixed;
    h->build_hash = HP_BUILD_HASH;
    hp_region_boot_id(h->boot_id);
    hp_state_config *c = &h->config;
    c->capacity = cfg->capacity;
    c->port_lo = cfg->port_lo;
    c->port_hi = cfg->port_hi;
    c->per_connection = cfg->per_connection;
    c->journal_size = cfg->journal_size;
    c->quarantine_ms = cfg->quarantine_ms;
    for (int s = 0; s < HP_S_COUNT; s++)
        c->timeouts_ms[s] = cfg->timeouts.ms[s];
}

/* The families an ENI has, as the number of its pools' blocks. */
static size_t eni_bytes(const hp_nat *nat, const hp_eni_addr *a)
{
    size_t pool = hp_pool_region_bytes(nat->cfg.port_lo, nat->cfg.port_hi);
    return round_up((size_t)(a->has[0] + a->has[1]) * 2 * pool, PAGE);
}

/* The attach's check of the shared part (hp_region_check_fn), read with pread before
 * anything is mapped: every count against its bound, every ENI block inside the file, on a
 * page, after the fixed part and apart from the others. What the repair pass rebuilds (the
 * index, lists, pools' free ports) or bounds itself (entries, the journal ring, the
 * quarantine) is left to it. */
typedef struct shared_check { const hp_nat *nat; const char *path; } shared_check;

static int check_shared(void *ctx, int fd, uint64_t file_size, char *err, size_t errlen)
{
    const hp_nat *nat = ((const shared_check *)ctx)->nat;
    const char *path = ((const shared_check *)ctx)->path;
    layout l = place(&nat->cfg);
    hp_nat_shared *sh = malloc(sizeof *sh);
    if (!sh)
        return -ENOMEM;
    int r = -EINVAL;
#define REFUSE(fmt, ...)                                                                    \
    do {                                                                                    \
        snprintf(err, errlen, "state file %s " fmt, path, __VA_ARGS__);                     \
        goto out;                                                                           \
    } while (0)
    if (pread(fd, sh, sizeof *sh, (off_t)l.shared) != (ssize_t)sizeof *sh)
        REFUSE("%s", "is too short for its shared part");
    if (sh->n_enis > HP_MAX_ENIS)
        REFUSE("has %u ENIs, more than %u", sh->n_enis, HP_MAX_ENIS);
    if (sh->end < l.fixed || sh->end > file_size)
        REFUSE("ends its ENI blocks at %llu, outside %llu..%llu (the file's size)",
               (unsigned long long)sh->end, (unsigned long long)l.fixed,
               (unsigned long long)file_size);
    for (uint32_t e = 0; e < sh->n_enis; e++) {
        const hp_eni_addr *a = &sh->eni_addr[e];
        if (sh->eni_free[e] > 1)
            REFUSE("marks ENI %u neither live nor free (%u)", e, sh->eni_free[e]);
        int live = !sh->eni_free[e];
        if (live && (a->has[0] > 1 || a->has[1] > 1 || !(a->has[0] | a->has[1])))
            REFUSE("has ENI %u without an address", e);
        uint64_t off = sh->eni_off[e], len = sh->eni_len[e];
        if (live && len < eni_bytes(nat, a))
            REFUSE("gives ENI %u a block of %llu bytes, too small for its pools", e,
                   (unsigned long long)len);
        if (len == 0)                      /* a free id that never had a block */
            continue;
        if (off % PAGE || off < l.fixed || off > sh->end || len > sh->end - off)
            REFUSE("puts ENI %u's block (%llu bytes at %llu) outside its ENI space", e,
                   (unsigned long long)len, (unsigned long long)off);
        for (uint32_t o = 0; o < e; o++) {
            uint64_t ooff = sh->eni_off[o], olen = sh->eni_len[o];
            if (olen && off < ooff + olen && ooff < off + len)
                REFUSE("has overlapping blocks for ENIs %u and %u", o, e);
        }
    }
    r = 0;
#undef REFUSE
out:
    free(sh);
    return r;
}

/* Maps the block at off of an ENI with addresses a and points its pools at it (fresh: all
 * ports free, each pool's key drawn). Returns them, not yet the NAT's; NULL when it cannot. */
static hp_eni_pools *map_eni(hp_nat *nat, const hp_eni_addr *a, uint64_t off, int fresh)
{
    hp_eni_pools *pools = calloc(1, sizeof *pools);
    if (!pools)
        return NULL;
    pools->mem_len = eni_bytes(nat, a);
    pools->mem = hp_region_map(&nat->state, off, pools->mem_len, fresh);
    if (!pools->mem) {
        free(pools);
        return NULL;
    }
    uint8_t *at = pools->mem;
    size_t pool = hp_pool_region_bytes(nat->cfg.port_lo, nat->cfg.port_hi);
    for (int f = 0; f < 2; f++)
        for (int p = 0; a->has[f] && p < 2; p++, at += pool)
        {
            hp_pool_init(&pools->pool[f][p], nat->cfg.port_lo, nat->cfg.port_hi,
                         &nat->cfg.hash_seed, at, fresh);
            if (fresh) {            /* each pool's key: two draws of the NAT's generator */
                uint64_t k0 = hp_splitmix64(&nat->sh->rng);
                hp_pool_set_key(&pools->pool[f][p], k0, hp_splitmix64(&nat->sh->rng));
            }
        }
    return pools;
}

static int entry_valid(const hp_nat *nat, const hp_conn *c)
{
    int udp = c->state == HP_S_UDP_FIRST || c->state == HP_S_UDP_STREAM;
    return c->state < HP_S_COUNT && (c->family == 4 || c->family == 6) &&
           (c->proto == 17) == udp && (c->proto == 6 || c->proto == 17) &&
           c->eni < nat->n_enis && nat->eni_addr[c->eni].has[c->family == 6];
}

static void pools_repair_begin(hp_nat *nat)
{
    for (uint32_t e = 0; e < nat->n_enis; e++)
        for (int f = 0; f < 2; f++)
            for (int p = 0; nat->eni_addr[e].has[f] && p < 2; p++)
                hp_pool_repair_begin(&nat->eni_pools[e]->pool[f][p]);
}

/* Mapped: marks the live entries whose inside endpoint owns their port by two votes or more
 * (hp_pool_repair_vote). A tear makes one entry, which is then alone in claiming what it
 * claims: claiming after the attested ones, it costs at most the entries of its own tuples,
 * never a whole mapping's connections. */
static void attest(hp_nat *nat, uint8_t *attested)
{
    hp_ct *ct = &nat->ct;
    for (int pass = 0; pass < 3; pass++)
        for (uint32_t id = 0; id < ct->capacity; id++) {
            const hp_conn *c = &ct->conns[id];
            if (c->state == HP_S_NONE)
                continue;
            hp_pool *p = hp_nat_pool(nat, c->eni, c->family, c->proto);
            if (pass == 0)
                hp_pool_repair_vote(p, c->nat_port, c->src, c->sport);
            else if (pass == 1)
                hp_pool_repair_count(p, c->nat_port, c->src, c->sport);
            else
                attested[id] = (uint8_t)hp_pool_repair_attested(p, c->nat_port, c->src,
                                                                c->sport);
        }
    pools_repair_begin(nat);
}

/* The attach's repair pass (hp_state.h): keeps every live entry that is whole, unique and
 * holds a port nobody else holds; rebuilds the rest from them. */
static int repair(hp_nat *nat)
{
    hp_nat_shared *sh = nat->sh;
    if (nat->cfg.journal_size == 0 || sh->j_head >= nat->cfg.journal_size ||
        sh->j_count > nat->cfg.journal_size)
        sh->j_head = sh->j_count = 0;
    /* A mark that is not 1, or that no record backs, names no delete. */
    sh->j_deleting = sh->j_deleting == 1 && sh->j_count > 0;
    int mapped = !nat->cfg.per_connection;
    for (uint32_t e = 0; e < nat->n_enis; e++)     /* counted again from the adopted entries */
        memset(nat->eni_ctr[e].active, 0, sizeof nat->eni_ctr[e].active);
    pools_repair_begin(nat);
    hp_ct *ct = &nat->ct;
    hp_ct_repair_begin(ct);
    for (uint32_t id = 0; id < ct->capacity; id++) {
        hp_conn *c = &ct->conns[id];
        if (c->state != HP_S_NONE && !entry_valid(nat, c)) {
            c->state = HP_S_NONE;
            nat->repaired++;
        }
    }
    uint8_t *attested = NULL;
    if (mapped) {
        if (!(attested = calloc(ct->capacity, 1)))
            return -1;
        attest(nat, attested);
    }
    enum { BATCH = 64 };
    uint32_t hash[BATCH][2];
    /* Round 0: the attested entries (all of them when not mapped); round 1: the rest. */
    for (int round = 0; round < 2; round++)
        for (uint32_t base = 0; base < ct->capacity; base += BATCH) {
            uint32_t n = ct->capacity - base < BATCH ? ct->capacity - base : BATCH;
            uint8_t mine[BATCH];
            for (uint32_t i = 0; i < n; i++) {  /* hash the batch, prefetching index slots */
                int first = !attested || attested[base + i];
                mine[i] = ct->conns[base + i].state != HP_S_NONE && first == (round == 0);
                if (mine[i])
                    hp_ct_repair_hash(ct, base + i, hash[i]);
            }
            for (uint32_t i = 0; i < n; i++) {
                uint32_t id = base + i;
                hp_conn *c = &ct->conns[id];
                if (!mine[i])
                    continue;
                if (hp_ct_repair_taken(ct, id, hash[i]) ||
                    hp_pool_repair_claim(hp_nat_pool(nat, c->eni, c->family, c->proto),
                                         c->nat_port, c->src, c->sport, mapped) != 0) {
                    c->state = HP_S_NONE;
                    nat->repaired++;
                    continue;
                }
                hp_ct_repair_adopt(ct, id, hash[i]);
                nat->eni_ctr[c->eni].active[c->proto == 17]++;
            }
        }
    free(attested);
    if (hp_ct_repair_finish(ct) != 0)
        return -1;
    for (uint32_t e = 0; e < nat->n_enis; e++)
        for (int f = 0; f < 2; f++)
            for (int p = 0; nat->eni_addr[e].has[f] && p < 2; p++) {
                int dropped = hp_pool_repair_finish(&nat->eni_pools[e]->pool[f][p], mapped);
                if (dropped < 0)
                    return -1;
                nat->repaired += (uint32_t)dropped;
            }
    return 0;
}

/* After the repair: a data plane killed between journalling a connection and deleting it
 * leaves both, and the connection would be logged twice (its record now, its entry when it
 * expires again). The record wins: while the mark is up, the newest record names the delete
 * under way, and an entry still exactly as it describes (tuple, port, state, times) is deleted.
 * Older records are finished deletes: an entry identical to one of them is a new connection
 * (a SYN_SENT deleted and made again in the same millisecond) and stays. */
static void finish_journalled(hp_nat *nat)
{
    hp_nat_shared *sh = nat->sh;
    if (!sh->j_deleting)
        return;
    const hp_conn *r =
        &nat->journal[(sh->j_head + sh->j_count - 1) % nat->cfg.journal_size].conn;
    hp_flow_key k;
    hp_ct_orig_key(r, &k);
    uint32_t id = hp_nat_lookup(nat, &k, HP_DIR_OUT, r->last_seen_ms);
    if (id != HP_CT_NONE && memcmp(&nat->ct.conns[id], r, offsetof(hp_conn, lru_prev)) == 0) {
        hp_nat_delete_conn(nat, id, r->last_seen_ms);
        nat->repaired++;
    }
    sh->j_deleting = 0;
}

int hp_nat_open(const hp_nat_config *cfg, const char *path, hp_nat **out, char *err,
                size_t errlen)
{
    *out = NULL;
    if (err && errlen)
        err[0] = 0;
    if (cfg->capacity == 0 || cfg->capacity > HP_MAX_CAPACITY || cfg->port_lo == 0 ||
        cfg->port_hi < cfg->port_lo) {
        snprintf(err, errlen, "capacity must be in 1..%u and ports in 1..65535",
                 HP_MAX_CAPACITY);
        return -EINVAL;
    }
    hp_nat *nat = calloc(1, sizeof *nat);
    if (!nat)
        return -ENOMEM;
    nat->cfg = *cfg;
    hp_state_hdr want;
    header(cfg, &want);
    shared_check sc = { nat, path };
    int r = hp_region_open(&nat->state, path, &want, check_shared, &sc, err, errlen);
    if (r != 0) {
        free(nat);
        return r;
    }
    layout l = place(cfg);
    uint8_t *base = nat->state.base;
    hp_nat_shared *sh = nat->sh = (hp_nat_shared *)(base + l.shared);
    nat->eni_addr = sh->eni_addr;
    nat->counters = sh->counters;
    nat->drops = sh->drops;
    nat->eni_ctr = sh->eni_ctr;
    nat->journal = (hp_conn_record *)(base + l.journal);
    int fresh = nat->state.fresh;
    if (fresh) {
        if (nat->cfg.hash_seed.k0 == 0 && nat->cfg.hash_seed.k1 == 0)
            hp_random_seed(&nat->cfg.hash_seed);
        sh->hash_seed = nat->cfg.hash_seed;
        sh->port_seed = sh->rng = cfg->port_seed;
        sh->end = l.fixed;
    } else {
        /* The keys the entries were hashed and the ports chosen with. */
        nat->cfg.hash_seed = sh->hash_seed;
        nat->cfg.port_seed = sh->port_seed;
        nat->attached = 1;
    }
    r = -ENOMEM;
    if (hp_nat_obs_init(nat) != 0)
        goto fail;
    hp_rate_init(&nat->refusal_rate, HP_REFUSAL_PER_S, HP_REFUSAL_BURST);
    if (hp_ct_init(&nat->ct, cfg->capacity, base + l.table, fresh, &nat->cfg.hash_seed,
                   nat->eni_addr, &nat->cfg.timeouts) != 0)
        goto fail;
    if (!fresh) {
        nat->n_enis = sh->n_enis;          /* bounded by check_shared */
        for (uint32_t e = 0; e < nat->n_enis; e++) {
            if (sh->eni_free[e]) {         /* released: whatever a kill left of it goes */
                memset(&nat->eni_addr[e], 0, sizeof nat->eni_addr[e]);
                memset(&nat->eni_ctr[e], 0, sizeof nat->eni_ctr[e]);
                continue;
            }
            nat->eni_back[e] = 1;
            if (!(nat->eni_pools[e] = map_eni(nat, &nat->eni_addr[e], sh->eni_off[e], 0))) {
                snprintf(err, errlen, "cannot map the pools of ENI %u of state file %s", e,
                         path);
                goto fail;
            }
        }
        if (repair(nat) != 0)
            goto fail;
        finish_journalled(nat);
    } else if (path) {
        hp_region_commit(&nat->state, &want);
    }
    *out = nat;
    return 0;
fail:
    hp_nat_destroy(nat);
    return r;
}

hp_nat *hp_nat_create(const hp_nat_config *cfg)
{
    hp_nat *nat;
    return hp_nat_open(cfg, NULL, &nat, NULL, 0) == 0 ? nat : NULL;
}

void hp_nat_destroy(hp_nat *nat)
{
    if (!nat)
        return;
    for (uint32_t e = 0; e < nat->n_enis; e++)
        hp_nat_eni_unmap(nat->eni_pools[e]);
    hp_nat_obs_free(nat);
    hp_events_destroy(nat->events);
    hp_region_close(&nat->state);
    free(nat->sources);
    free(nat->funcs);
    free(nat->groups);
    free(nat);
}

/* The id add_eni takes when given -1: the lowest ENI of the state file still to come back,
 * else the lowest free one, else the next. */
static int pick_eni_id(const hp_nat *nat)
{
    for (uint32_t e = 0; e < nat->n_enis; e++)
        if (nat->eni_back[e])
            return (int)e;
    for (uint32_t e = 0; e < nat->n_enis; e++)
        if (nat->sh->eni_free[e])
            return (int)e;
    return (int)nat->n_enis;
}

int hp_nat_eni_prepare(hp_nat *nat, const uint8_t *v4, const uint8_t *v6, int id,
                       hp_eni_prep *out)
{
    memset(out, 0, sizeof *out);
    if (!v4 && !v6)
        return -1;
    hp_eni_addr *a = &out->addr;
    const uint8_t *addrs[2] = { v4, v6 };
    for (int f = 0; f < 2; f++)
        if (addrs[f]) {
            memcpy(a->addr[f], addrs[f], f ? 16 : 4);
            a->has[f] = 1;
        }
    if (id < 0)
        id = pick_eni_id(nat);
    if (id >= HP_MAX_ENIS)
        return -1;
    out->id = (uint32_t)id;
    const hp_nat_shared *sh = nat->sh;
    int known = out->id < nat->n_enis;
    if (known && !sh->eni_free[id]) {
        if (!nat->eni_back[id])
            return -3;
        /* An ENI of the state file, coming back. */
        return memcmp(&nat->eni_addr[id], a, sizeof *a) != 0 ? -2 : 0;
    }
    /* Into the block its id had when the pools fit there, else appended at the region's end:
     * the file grows (or the old block is written again), the block is mapped and every port
     * of its pools written (milliseconds for 65,000-port pools), none of it seen by anyone
     * yet. */
    size_t need = eni_bytes(nat, a);
    uint64_t have = known ? sh->eni_len[id] : 0;
    out->off = have >= need ? sh->eni_off[id] : sh->end;
    out->len = have >= need ? have : need;
    out->pools = map_eni(nat, a, out->off, 1);
    return out->pools ? 0 : -1;
}

int hp_nat_eni_commit(hp_nat *nat, hp_eni_prep *prep)
{
    uint32_t e = prep->id;
    if (!prep->pools) {                    /* coming back: it is there already */
        nat->eni_back[e] = 0;
        return (int)e;
    }
    hp_nat_shared *sh = nat->sh;
    /* Ids skipped over (a lab whose ENI ids have gaps) are free and have no block. */
    for (uint32_t s = nat->n_enis; s < e; s++) {
        sh->eni_free[s] = 1;
        sh->eni_len[s] = 0;
        memset(&nat->eni_addr[s], 0, sizeof nat->eni_addr[s]);
    }
    /* In an order that a process killed at any point leaves consistent: the space first, then
     * the block, then the ENI, which counts only once it is marked live (or counted in). */
    if (prep->off + prep->len > sh->end)
        sh->end = prep->off + prep->len;
    sh->eni_off[e] = prep->off;
    sh->eni_len[e] = prep->len;
    nat->eni_addr[e] = prep->addr;
    memset(&nat->eni_ctr[e], 0, sizeof nat->eni_ctr[e]);
    nat->eni_pools[e] = prep->pools;
    prep->pools = NULL;
    if (e < nat->n_enis) {
        __atomic_store_n(&sh->eni_free[e], 0, __ATOMIC_RELEASE);
    } else {
        sh->eni_free[e] = 0;
        __atomic_store_n(&sh->n_enis, e + 1, __ATOMIC_RELEASE);
        nat->n_enis = e + 1;
    }
    return (int)e;
}

/* Whether a record still to be read (the journal, the reject ring) names the ENI: its reader
 * takes the ENI's address from eni_addr. */
static int records_name_eni(const hp_nat *nat, uint32_t eni)
{
    const hp_nat_shared *sh = nat->sh;
    for (uint32_t i = 0; i < sh->j_count; i++)
        if (nat->journal[(sh->j_head + i) % nat->cfg.journal_size].conn.eni == eni)
            return 1;
    const hp_reject_ring *r = &nat->rejects;
    for (uint32_t i = 0; i < r->count; i++)
        if (r->rec[(r->head + i) % HP_REJECT_RING].eni == eni)
            return 1;
    return 0;
}

int hp_nat_eni_release(hp_nat *nat, int eni, hp_eni_pools **unmap)
{
    *unmap = NULL;
    if (eni < 0 || (uint32_t)eni >= nat->n_enis || nat->sh->eni_free[eni] || nat->eni_back[eni])
        return -1;
    for (uint32_t g = 0; g < nat->n_groups; g++)
        for (uint32_t i = 0; i < nat->groups[g].n_enis; i++)
            if (nat->groups[g].enis[i] == eni)
                return -1;
    if (nat->eni_ctr[eni].active[0] || nat->eni_ctr[eni].active[1])
        return -2;
    for (int f = 0; f < 2; f++)
        for (int p = 0; nat->eni_addr[eni].has[f] && p < 2; p++)
            if (hp_pool_in_use(&nat->eni_pools[eni]->pool[f][p]) ||
                hp_pool_quarantined(&nat->eni_pools[eni]->pool[f][p]))
                return -2;
    if (records_name_eni(nat, (uint32_t)eni))
        return -2;
    __atomic_store_n(&nat->sh->eni_free[eni], 1, __ATOMIC_RELEASE);
    memset(&nat->eni_addr[eni], 0, sizeof nat->eni_addr[eni]);
    memset(&nat->eni_ctr[eni], 0, sizeof nat->eni_ctr[eni]);
    *unmap = nat->eni_pools[eni];
    nat->eni_pools[eni] = NULL;
    return 0;
}

void hp_nat_eni_unmap(hp_eni_pools *pools)
{
    if (pools) {
        hp_region_unmap(pools->mem, pools->mem_len);
        free(pools);
    }
}

void hp_nat_eni_discard(hp_eni_prep *prep)
{
    hp_nat_eni_unmap(prep->pools);
    prep->pools = NULL;
}

int hp_nat_add_eni_at(hp_nat *nat, const uint8_t *v4, const uint8_t *v6, int id)
{
    hp_eni_prep prep;
    int r = hp_nat_eni_prepare(nat, v4, v6, id, &prep);
    return r < 0 ? r : hp_nat_eni_commit(nat, &prep);
}

int hp_nat_add_eni(hp_nat *nat, const uint8_t *v4, const uint8_t *v6)
{
    return hp_nat_add_eni_at(nat, v4, v6, -1);
}
