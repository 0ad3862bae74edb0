/* The connection table. Entries live in one array allocated at creation; two open-addressing
 * index entries per connection (original and reply tuple, linear probing, backward-shift
 * deletion so there are no tombstones); one LRU list per state, so the oldest connection of
 * each state is at the head of its list and expiry never scans. */
#include "hp_conntrack.h"

#include <stdlib.h>
#include <string.h>

_Static_assert(sizeof(hp_conn) == 64, "a connection entry is one cache line");
_Static_assert(sizeof(hp_conn_stats) == 64, "connection counters and interval: one line");
_Static_assert(sizeof(hp_conn_flowbase) == 24, "flow-log base layout");
_Static_assert(sizeof(hp_tcp_win) == 40, "TCP window state layout");

/* Keep the index at most 70% full: linear probing stays short, the 32-bit tags filter the rest. */
uint64_t hp_ct_index_slots(uint64_t capacity)
{
    uint64_t want = (capacity * 2 * 10 + 6) / 7;
    uint64_t n = 16;
    while (n < want)
        n <<= 1;
    return n;
}

#define CT_ALIGN 64

static size_t align_up(size_t n)
{
    return (n + CT_ALIGN - 1) & ~(size_t)(CT_ALIGN - 1);
}

/* Lays the arrays out one after the other: binds them at mem when ct is given, and returns the
 * bytes they take. */
static size_t layout(hp_ct *ct, uint32_t capacity, uint8_t *mem)
{
    size_t off = 0;
#define PLACE(type, name)                                        \
    if (ct)                                                      \
        ct->name = (type *)(mem + off);                          \
    off = align_up(off + (size_t)capacity * sizeof(type));
    HP_CT_ARRAYS(PLACE)
#undef PLACE
    if (ct)
        ct->slots = (hp_ct_slot *)(mem + off);
    return off + align_up(hp_ct_index_slots(capacity) * sizeof(hp_ct_slot));
}

size_t hp_ct_region_bytes(uint32_t capacity)
{
    return layout(NULL, capacity, NULL);
}

/* The free list in id order (a fresh table hands out 0, 1, 2, ...) over the free entries. */
static void link_free(hp_ct *ct)
{
    ct->free_head = HP_CT_NONE;
    for (uint32_t i = ct->capacity; i-- > 0;)
        if (ct->conns[i].state == HP_S_NONE) {
            ct->conns[i].lru_next = ct->free_head;
            ct->free_head = i;
        }
}

int hp_ct_init(hp_ct *ct, uint32_t capacity, void *mem, int fresh, const hp_hash_seed *seed,
               const hp_eni_addr *enis, const hp_timeouts *timeouts)
{
    memset(ct, 0, sizeof *ct);
    if (capacity == 0 || capacity > HP_MAX_CAPACITY)
        return -1;
    layout(ct, capacity, mem);
    ct->capacity = capacity;
    ct->mask = (uint32_t)(hp_ct_index_slots(capacity) - 1);
    ct->seed = *seed;
    ct->enis = enis;
    ct->timeouts = timeouts;
    for (int s = 0; s < HP_S_COUNT; s++)
        ct->lru_head[s] = ct->lru_tail[s] = HP_CT_NONE;
    if (fresh)
        link_free(ct);
    return 0;
}

void hp_ct_orig_key(const hp_conn *c, hp_flow_key *out)
{
    memcpy(out->src, c->src, 16);
    memcpy(out->dst, c->dst, 16);
    out->sport = c->sport;
    out->dport = c->dport;
    out->family = c->family;
    out->proto = c->proto;
    out->pad = 0;
}

void hp_ct_reply_key(const hp_ct *ct, const hp_conn *c, hp_flow_key *out)
{
    memcpy(out->src, c->dst, 16);
    memcpy(out->dst, ct->enis[c->eni].addr[c->family == 6], 16);
    out->sport = c->dport;
    out->dport = c->nat_port;
    out->family = c->family;
    out->proto = c->proto;
    out->pad = 0;
}

static int matches(const hp_ct *ct, const hp_conn *c, int dir, const hp_flow_key *k)
{
    if (c->family != k->family || c->proto != k->proto)
        return 0;
    if (dir == HP_DIR_OUT)
        return c->sport == k->sport && c->dport == k->dport &&
               memcmp(c->src, k->src, 16) == 0 && memcmp(c->dst, k->dst, 16) == 0;
    return c->dport == k->sport && c->nat_port == k->dport &&
           memcmp(c->dst, k->src, 16) == 0 &&
           memcmp(ct->enis[c->eni].addr[c->family == 6], k->dst, 16) == 0;
}

uint32_t hp_ct_lookup_hashed(const hp_ct *ct, const hp_flow_key *key, uint32_t hash, int dir)
{
    for (uint32_t i = hash & ct->mask;; i = (i + 1) & ct->mask) {
        const hp_ct_slot *s = &ct->slots[i];
        if (s->ref == 0)
            return HP_CT_NONE;
        if (s->hash != hash || ((s->ref - 1) & 1) != (uint32_t)dir)
            continue;
        uint32_t id = (s->ref - 1) >> 1;
        if (matches(ct, &ct->conns[id], dir, key))
            return id;
    }
}

uint32_t hp_ct_lookup(const hp_ct *ct, const hp_flow_key *key, int dir)
{
    return hp_ct_lookup_hashed(ct, key, hp_ct_hash(ct, key), dir);
}

static void index_insert(hp_ct *ct, uint32_t hash, uint32_t ref)
{
    uint32_t i = hash & ct->mask;
    while (ct->slots[i].ref != 0)
        i = (i + 1) & ct->mask;
    ct->slots[i].hash = hash;
    ct->slots[i].ref = ref;
}

static void index_remove(hp_ct *ct, uint32_t hash, uint32_t ref)
{
    uint32_t i = hash & ct->mask;
    while (ct->slots[i].ref != ref)
        i = (i + 1) & ct->mask;
    /* Backward shift: pull later entries of the probe run into the hole when their home
     * bucket does not lie cyclically between the hole and where they sit. */
    for (uint32_t j = i;;) {
        j = (j + 1) & ct->mask;
        if (ct->slots[j].ref == 0)
            break;
        uint32_t home = ct->slots[j].hash & ct->mask;
        int stays = (i <= j) ? (i < home && home <= j) : (i < home || home <= j);
        if (!stays) {
            ct->slots[i] = ct->slots[j];
            i = j;
        }
    }
    ct->slots[i].ref = 0;
}

static void lru_unlink(hp_ct *ct, uint32_t id)
{
    hp_conn *c = &ct->conns[id];
    if (c->lru_prev != HP_CT_NONE)
        ct->conns[c->lru_prev].lru_next = c->lru_next;
    else
        ct->lru_head[c->state] = c->lru_next;
    if (c->lru_next != HP_CT_NONE)
        ct->conns[c->lru_next].lru_prev = c->lru_prev;
    else
        ct->lru_tail[c->state] = c->lru_prev;
}

static void lru_append(hp_ct *ct, uint32_t id)
{
    hp_conn *c = &ct->conns[id];
    uint32_t tail = ct->lru_tail[c->state];
    c->lru_prev = tail;
    c->lru_next = HP_CT_NONE;
    if (tail != HP_CT_NONE)
        ct->conns[tail].lru_next = id;
    else
        ct->lru_head[c->state] = id;
    ct->lru_tail[c->state] = id;
}

uint32_t hp_ct_insert(hp_ct *ct, const hp_flow_key *orig, uint16_t eni, uint16_t nat_port,
                      uint8_t state, uint64_t now_ms)
{
    return hp_ct_insert_hashed(ct, orig, hp_ct_hash(ct, orig), eni, nat_port, state, now_ms);
}

uint32_t hp_ct_insert_hashed(hp_ct *ct, const hp_flow_key *orig, uint32_t orig_hash,
                             uint16_t eni, uint16_t nat_port, uint8_t state, uint64_t now_ms)
{
    uint32_t id = ct->free_head;
    if (id == HP_CT_NONE)
        return HP_CT_NONE;
    /* The reply tuple's slot is somewhere random: ask for it first, fill the entry meanwhile. */
    hp_flow_key reply = *orig;
    memcpy(reply.src, orig->dst, 16);
    memcpy(reply.dst, ct->enis[eni].addr[orig->family == 6], 16);
    reply.sport = orig->dport;
    reply.dport = nat_port;
    uint32_t reply_hash = hp_ct_hash(ct, &reply);
    hp_ct_prefetch_slot(ct, reply_hash);

    hp_conn *c = &ct->conns[id];
    ct->free_head = c->lru_next;
#define ZERO(type, name) memset(&ct->name[id], 0, sizeof(type));
    HP_CT_ARRAYS(ZERO)
#undef ZERO
    memcpy(c->src, orig->src, 16);
    memcpy(c->dst, orig->dst, 16);
    c->sport = orig->sport;
    c->dport = orig->dport;
    c->family = orig->family;
    c->proto = orig->proto;
    c->nat_port = nat_port;
    c->eni = eni;
    c->state = state;
    c->last_seen_ms = now_ms;
    c->start_s = (uint32_t)(now_ms / 1000);
    if (id >= ct->high_water)
        ct->high_water = id + 1;
    lru_append(ct, id);
    index_insert(ct, orig_hash, (id << 1 | HP_DIR_OUT) + 1);
    index_insert(ct, reply_hash, (id << 1 | HP_DIR_IN) + 1);
    ct->count++;
    return id;
}

void hp_ct_delete(hp_ct *ct, uint32_t id)
{
    hp_conn *c = &ct->conns[id];
    hp_flow_key k;
    hp_ct_orig_key(c, &k);
    index_remove(ct, hp_ct_hash(ct, &k), (id << 1 | HP_DIR_OUT) + 1);
    hp_ct_reply_key(ct, c, &k);
    index_remove(ct, hp_ct_hash(ct, &k), (id << 1 | HP_DIR_IN) + 1);
    lru_unlink(ct, id);
    c->state = HP_S_NONE;
    c->lru_next = ct->free_head;   /* last removed, first reused */
    ct->free_head = id;
    ct->count--;
}

void hp_ct_touch(hp_ct *ct, uint32_t id, uint8_t new_state, uint64_t now_ms)
{
    hp_conn *c = &ct->conns[id];
    c->last_seen_ms = now_ms;
    if (c->state == new_state && ct->lru_tail[new_state] == id)
        return;
    lru_unlink(ct, id);
    c->state = new_state;
    lru_append(ct, id);
}

uint32_t hp_ct_next_expired(const hp_ct *ct, uint64_t now_ms)
{
    for (int s = 1; s < HP_S_COUNT; s++) {
        uint32_t id = ct->lru_head[s];
        if (id != HP_CT_NONE && hp_ct_expired(ct, &ct->conns[id], now_ms))
            return id;
    }
    return HP_CT_NONE;
}

uint32_t hp_ct_early_drop_victim(const hp_ct *ct)
{
    uint32_t victim = HP_CT_NONE;
    uint64_t oldest = UINT64_MAX;
    for (int s = 1; s < HP_S_COUNT; s++) {
        uint32_t id = ct->lru_head[s];
        for (int n = 0; n < HP_CT_EARLY_DROP_SCAN && id != HP_CT_NONE; n++) {
            const hp_conn *c = &ct->conns[id];
            if (!(c->flags & HP_F_ASSURED)) {
                if (c->last_seen_ms < oldest) {
                    oldest = c->last_seen_ms;
                    victim = id;
                }
                break;           /* the list is oldest first: later entries are younger */
            }
            id = c->lru_next;
        }
    }
    return victim;
}

uint32_t hp_ct_next_live(const hp_ct *ct, uint32_t from)
{
    for (uint32_t i = from; i < ct->high_water; i++)
        if (ct->conns[i].state != HP_S_NONE)
            return i;
    return HP_CT_NONE;
}

void hp_ct_flow_read(const hp_conn *c, const hp_conn_stats *st, const hp_conn_flowbase *b,
                     hp_flow_ival out[2])
{
    uint32_t ref = (uint32_t)c->last_seen_ms;   /* no packet of the interval is later */
    for (int d = 0; d < 2; d++) {
        hp_flow_ival *o = &out[d];
        memset(o, 0, sizeof *o);
        if (!(st->seen & (1u << d)))
            continue;
        o->seen = 1;
        o->first_ms = c->last_seen_ms - (uint32_t)(ref - st->first_ms[d]);
        o->last_ms = c->last_seen_ms - (uint32_t)(ref - st->last_ms[d]);
        o->packets = (uint32_t)st->packets[d] - b->packets[d];
        o->bytes = st->bytes[d] - b->bytes[d];
        o->tcp_flags = st->tcp_flags[d];
    }
}

void hp_ct_flow_reset(hp_ct *ct, uint32_t id)
{
    hp_conn_stats *st = &ct->stats[id];
    hp_conn_flowbase *b = &ct->flowbase[id];
    for (int d = 0; d < 2; d++) {
        b->bytes[d] = st->bytes[d];
        b->packets[d] = (uint32_t)st->packets[d];
        st->tcp_flags[d] = 0;
    }
    st->seen = 0;
}

size_t hp_ct_memory(const hp_ct *ct)
{
    return hp_ct_region_bytes(ct->capacity);
}

void hp_ct_repair_begin(hp_ct *ct)
{
    memset(ct->slots, 0, (size_t)(ct->mask + 1) * sizeof *ct->slots);
    ct->count = 0;
}

void hp_ct_repair_hash(const hp_ct *ct, uint32_t id, uint32_t hash[2])
{
    hp_flow_key k;
    hp_ct_orig_key(&ct->conns[id], &k);
    hash[HP_DIR_OUT] = hp_ct_hash(ct, &k);
    hp_ct_prefetch_slot(ct, hash[HP_DIR_OUT]);
    hp_ct_reply_key(ct, &ct->conns[id], &k);
    hash[HP_DIR_IN] = hp_ct_hash(ct, &k);
    hp_ct_prefetch_slot(ct, hash[HP_DIR_IN]);
}

int hp_ct_repair_taken(const hp_ct *ct, uint32_t id, const uint32_t hash[2])
{
    hp_flow_key k;
    hp_ct_orig_key(&ct->conns[id], &k);
    if (hp_ct_lookup_hashed(ct, &k, hash[HP_DIR_OUT], HP_DIR_OUT) != HP_CT_NONE)
        return 1;
    hp_ct_reply_key(ct, &ct->conns[id], &k);
    return hp_ct_lookup_hashed(ct, &k, hash[HP_DIR_IN], HP_DIR_IN) != HP_CT_NONE;
}

void hp_ct_repair_adopt(hp_ct *ct, uint32_t id, const uint32_t hash[2])
{
    index_insert(ct, hash[HP_DIR_OUT], (id << 1 | HP_DIR_OUT) + 1);
    index_insert(ct, hash[HP_DIR_IN], (id << 1 | HP_DIR_IN) + 1);
    ct->count++;
}

static const hp_conn *sort_conns;

static int by_state_then_age(const void *a, const void *b)
{
    const hp_conn *x = &sort_conns[*(const uint32_t *)a], *y = &sort_conns[*(const uint32_t *)b];
    if (x->state != y->state)
        return x->state < y->state ? -1 : 1;
    if (x->last_seen_ms != y->last_seen_ms)
        return x->last_seen_ms < y->last_seen_ms ? -1 : 1;
    return *(const uint32_t *)a < *(const uint32_t *)b ? -1 : 1;
}

int hp_ct_repair_finish(hp_ct *ct)
{
    uint32_t *ids = malloc(((size_t)ct->count + 1) * sizeof *ids);
    if (!ids)
        return -1;
    uint32_t n = 0;
    for (uint32_t i = 0; i < ct->capacity && n < ct->count; i++)
        if (ct->conns[i].state != HP_S_NONE)
            ids[n++] = i;
    ct->high_water = n ? ids[n - 1] + 1 : 0;
    link_free(ct);
    sort_conns = ct->conns;   /* attach runs once, before any other thread uses the table */
    qsort(ids, n, sizeof *ids, by_state_then_age);
    for (int s = 0; s < HP_S_COUNT; s++)
        ct->lru_head[s] = ct->lru_tail[s] = HP_CT_NONE;
    for (uint32_t i = 0; i < n; i++)
        lru_append(ct, ids[i]);
    free(ids);
    return 0;
}

void hp_ct_lookup_batch(const hp_ct *ct, const hp_flow_key *keys, uint32_t n, int dir,
                        uint32_t *ids)
{
    /* A software pipeline: key i + 2D has its slot prefetched, key i + D its entry (its slot
     * has had D lookups' time to arrive), key i is looked up. Every lookup keeps 2D misses in
     * flight instead of waiting at the end of each phase of a fixed group. */
    enum { D = HP_CT_PIPELINE, RING = 4 * HP_CT_PIPELINE };
    _Static_assert((RING & (RING - 1)) == 0, "the ring of hashes is a power of two");
    uint32_t hashes[RING];
    uint32_t ahead = n < 2 * D ? n : 2 * D;
    for (uint32_t j = 0; j < ahead; j++) {
        hashes[j] = hp_ct_hash(ct, &keys[j]);
        hp_ct_prefetch_slot(ct, hashes[j]);
    }
    for (uint32_t j = 0; j < D && j < n; j++)
        hp_ct_prefetch_entry(ct, hashes[j], dir, 0);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t far = i + 2 * D, mid = i + D;
        if (far < n) {
            hashes[far & (RING - 1)] = hp_ct_hash(ct, &keys[far]);
            hp_ct_prefetch_slot(ct, hashes[far & (RING - 1)]);
        }
        if (mid < n)
            hp_ct_prefetch_entry(ct, hashes[mid & (RING - 1)], dir, 0);
        ids[i] = hp_ct_lookup_hashed(ct, &keys[i], hashes[i & (RING - 1)], dir);
    }
}

static int prefix_matches(const uint8_t *a, const uint8_t *want, uint8_t plen)
{
    uint8_t whole = plen / 8, rest = plen % 8;
    if (memcmp(a, want, whole) != 0)
        return 0;
    return rest == 0 || ((a[whole] ^ want[whole]) & (uint8_t)(0xFF << (8 - rest))) == 0;
}

int hp_ct_match(const hp_ct *ct, const hp_ct_filter *f, const hp_conn *c, uint32_t owner)
{
    if (!f || f->what == 0)
        return 1;
    uint32_t w = f->what;
    if (((w & HP_CTF_FAMILY) && c->family != f->family) ||
        ((w & HP_CTF_PROTO) && c->proto != f->proto) ||
        ((w & HP_CTF_STATES) && !(f->states & (1u << c->state))) ||
        ((w & HP_CTF_ENI) && c->eni != f->eni) ||
        ((w & HP_CTF_OWNER) && owner != f->owner) ||
        ((w & HP_CTF_FLAGS) && (c->flags & f->flags_mask) != f->flags_want))
        return 0;
    const uint8_t *addr[HP_CTA_COUNT] = {c->src, c->dst, ct->enis[c->eni].addr[c->family == 6]};
    const uint16_t port[HP_CTA_COUNT] = {c->sport, c->dport, c->nat_port};
    for (int a = 0; a < HP_CTA_COUNT; a++) {
        if ((w & (HP_CTF_ADDR << a)) && !prefix_matches(addr[a], f->addr[a], f->plen[a]))
            return 0;
        if ((w & (HP_CTF_PORT << a)) && (port[a] < f->port_lo[a] || port[a] > f->port_hi[a]))
            return 0;
    }
    return 1;
}

uint32_t hp_ct_scan(const hp_ct *ct, const hp_ct_filter *f, uint32_t from, uint32_t to,
                    uint32_t *ids, uint32_t max, uint32_t *next)
{
    uint32_t got = 0, i = from;
    if (to > ct->capacity)
        to = ct->capacity;
    uint32_t live_end = to < ct->high_water ? to : ct->high_water;
    for (; i < live_end && got < max; i++) {
        const hp_conn *c = &ct->conns[i];
        if (c->state == HP_S_NONE)
            continue;
        /* the owner lives on the counters' line: read it only for a filter that asks */
        uint32_t owner = f && (f->what & HP_CTF_OWNER) ? ct->stats[i].owner : 0;
        if (!hp_ct_match(ct, f, c, owner))
            continue;
        if (ids)
            ids[got] = i;
        got++;
    }
    if (got < max && i >= live_end && i < to)
        i = to;              /* nothing is live past the high water: all of it looked at */
    *next = i;
    return got;
}
