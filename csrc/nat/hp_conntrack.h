/* The connection table: one entry per connection, indexed from both directions, with
 * per-state LRU lists so expiry never scans the table. Capacity fixed at creation. */
#ifndef HP_CONNTRACK_H
#define HP_CONNTRACK_H

#include "hp_flow.h"

#define HP_CT_NONE 0xFFFFFFFFu
#define HP_MAX_ENIS 1024
/* The largest table (hyperplane.vocab.MAX_CAPACITY holds the same number; a unit test checks):
 * about 7.5 GB with its index of 2**28 slots, far below where 32-bit slot references
 * ((id << 1 | dir) + 1) and the index mask overflow (2**31 slots, a capacity of ~751 million;
 * at 2**30 the index size wraps to 0). */
#define HP_MAX_CAPACITY (1u << 26)

/* Both addresses an ENI answers on; the reply tuple is derived from them, not stored. */
typedef struct hp_eni_addr {
    uint8_t addr[2][16];     /* [0] IPv4 (first 4 bytes), [1] IPv6 */
    uint8_t has[2];          /* which of the two exist */
} hp_eni_addr;

/* One cache line (64 bytes): everything a lookup, a state change and an expiry check read.
 * The original tuple is stored; the reply tuple is (dst, ENI address, dport, nat_port). */
typedef struct hp_conn {
    uint8_t src[16];
    uint8_t dst[16];
    uint16_t sport, dport;
    uint8_t family, proto;
    uint16_t nat_port;
    uint16_t eni;
    uint8_t state;               /* enum hp_state; HP_S_NONE marks a free slot */
    uint8_t flags;
    uint32_t start_s;            /* now_ms / 1000 when created */
    uint64_t last_seen_ms;
    uint32_t lru_prev, lru_next; /* on the list of its state; free-list link when unused */
} hp_conn;                        /* the table keeps the array line-aligned */

/* The counters, in an array of their own: written by every packet, never needed to find a
 * connection, so a lookup touches one line. 64-bit so they never wrap. The owner rides along:
 * every packet from the inside checks it, after the lookup. One cache line (64 bytes), so a
 * forwarded packet writes one line: its counters and its flow-log interval.
 *
 * The flow-log interval (docs/semantics.md 2.4): per direction, what was forwarded since the
 * last harvest (hp_ct_flow_take). Times are now_ms mod 2**32, read back against last_seen_ms
 * (exact while a harvest comes less than 49 days after the interval's first packet). */
typedef struct hp_conn_stats {
    uint64_t bytes[2];           /* [HP_DIR_OUT], [HP_DIR_IN] */
    uint64_t packets[2];
    uint32_t owner;              /* the function (hp_source.owner) the connection belongs to */
    uint32_t reply_ms;           /* UDP: now_ms of the first reply, mod 2**32 */
    uint32_t first_ms[2];        /* the interval's first and last packet, per direction */
    uint32_t last_ms[2];
    uint8_t tcp_flags[2];        /* AWS tcp-flags OR'd over the interval (hp_ct_flow_flags) */
    uint8_t seen;                /* bit 1 << dir: a packet in that direction this interval */
    uint8_t pad[5];
} hp_conn_stats;

/* Where the last harvest left each direction's counters: only a harvest or an expiry reads
 * it, so it stays out of the packet path's line. 24 bytes. */
typedef struct hp_conn_flowbase {
    uint64_t bytes[2];
    uint32_t packets[2];         /* mod 2**32: an interval holds fewer packets than that */
} hp_conn_flowbase;

/* One direction's traffic over a flow-log interval, as a harvest or an expiry hands it out. */
typedef struct hp_flow_ival {
    uint64_t first_ms, last_ms;  /* the data plane's clock */
    uint64_t bytes;
    uint32_t packets;
    uint8_t tcp_flags;
    uint8_t seen;                /* 0: no packet this way in the interval (the rest is 0) */
    uint16_t pad;
} hp_flow_ival;

/* AWS's tcp-flags of one segment: FIN 1, SYN 2, RST 4, and ACK 16 only beside SYN (SYN-ACK
 * is 18); PSH, URG, ECE, CWR and a lone ACK are not reported. */
static inline uint8_t hp_ct_flow_flags(uint8_t f)
{
    return (uint8_t)((f & 7) | (f & (uint8_t)(f << 3) & 16));
}

/* A packet forwarded in direction dir at now_ms: the interval's first (when it is the first)
 * and last packet, and its flags. The counters themselves are the stats' packets and bytes. */
static inline void hp_ct_flow_note(hp_conn_stats *st, int dir, uint8_t tcp_flags,
                                   uint64_t now_ms)
{
    uint8_t bit = (uint8_t)(1u << dir);
    if (!(st->seen & bit)) {
        st->seen |= bit;
        st->first_ms[dir] = (uint32_t)now_ms;
    }
    st->last_ms[dir] = (uint32_t)now_ms;
    st->tcp_flags[dir] |= hp_ct_flow_flags(tcp_flags);
}

/* TCP window tracking of one direction (the sender's view), as Linux's ip_ct_tcp_state. */
typedef struct hp_tcp_dir {
    uint32_t td_end;             /* highest seq + len sent */
    uint32_t td_maxend;          /* highest ack + window of the other side */
    uint32_t td_maxwin;          /* largest window seen; 0: this side not seen yet */
    uint32_t td_maxack;          /* highest ack sent (valid with HP_TW_MAXACK_SET) */
    uint8_t scale;               /* window scale from the SYN */
    uint8_t flags;               /* HP_TW_* */
    uint16_t pad;
} hp_tcp_dir;

enum { HP_TW_WSCALE = 1, HP_TW_SACK_PERM = 2, HP_TW_MAXACK_SET = 4 };

/* Both directions, in a third array indexed like conns: only TCP hits read it, after the
 * lookup. 40 bytes. */
typedef struct hp_tcp_win {
    hp_tcp_dir dir[2];           /* [HP_DIR_OUT], [HP_DIR_IN] */
} hp_tcp_win;

/* A connection as the journal and expiry hand it out. */
typedef struct hp_conn_record {
    hp_conn conn;
    hp_conn_stats stats;
    hp_conn_flowbase flowbase;
} hp_conn_record;

typedef struct hp_ct_slot {
    uint32_t hash;               /* low 32 bits of the key's hash: home bucket and tag */
    uint32_t ref;                /* (id << 1 | dir) + 1; 0 = empty */
} hp_ct_slot;

/* The arrays indexed by connection id, laid out one after the other in the state region
 * (csrc/nat/hp_state.h). Adding one is one line here: the field appears in hp_ct, the region makes
 * room for it, the state file's layout check covers its size, and an insert zeroes it. */
#define HP_CT_ARRAYS(X) \
    X(hp_conn, conns) \
    X(hp_conn_stats, stats) \
    X(hp_tcp_win, win) \
    X(hp_conn_flowbase, flowbase)

#define HP_CT_ARRAY_FIELD(type, name) type *name;
typedef struct hp_ct {
    HP_CT_ARRAYS(HP_CT_ARRAY_FIELD)
    hp_ct_slot *slots;
    uint32_t capacity, count, mask;
    uint32_t free_head;
    /* No id at or above it has been live since the table was made or attached: listings,
     * counts and hp_ct_next_live end there (a fresh table hands out ids from 0 up and reuses
     * the last freed first, so a table far larger than its traffic is listed at the cost of
     * its traffic). */
    uint32_t high_water;
    uint32_t lru_head[HP_S_COUNT], lru_tail[HP_S_COUNT];
    hp_hash_seed seed;
    const hp_eni_addr *enis;     /* owned by the NAT; read for reply-tuple compares */
    const hp_timeouts *timeouts;
} hp_ct;

/* Index slots for a capacity (70% load at most, a power of two); 64-bit so callers can check
 * the bound. */
uint64_t hp_ct_index_slots(uint64_t capacity);
/* Bytes of region memory a table of this capacity needs (entries, side arrays, index). */
size_t hp_ct_region_bytes(uint32_t capacity);
/* Points the table at its region memory (hp_ct_region_bytes, 64-byte aligned). fresh: the
 * memory is zeroed and the table starts empty; else the process-local links (index, free
 * list, LRU lists, count) are rebuilt by hp_ct_repair_* from the entries the memory holds. */
int hp_ct_init(hp_ct *ct, uint32_t capacity, void *mem, int fresh, const hp_hash_seed *seed,
               const hp_eni_addr *enis, const hp_timeouts *timeouts);

/* Attach: forget the index and count, then adopt the surviving entries one by one. */
void hp_ct_repair_begin(hp_ct *ct);
/* The hashes of entry id's original and reply tuples (its ENI must exist), prefetching
 * their index slots: repair hashes a batch first so the cache misses overlap. */
void hp_ct_repair_hash(const hp_ct *ct, uint32_t id, uint32_t hash[2]);
/* Whether an adopted entry already has entry id's original or reply tuple. */
int hp_ct_repair_taken(const hp_ct *ct, uint32_t id, const uint32_t hash[2]);
/* Indexes entry id (live, its tuples not taken). */
void hp_ct_repair_adopt(hp_ct *ct, uint32_t id, const uint32_t hash[2]);
/* Once every entry was adopted or marked free (state HP_S_NONE): rebuilds the free list and the LRU lists (oldest first by
 * last_seen_ms). Returns 0, or -1 when out of memory. */
int hp_ct_repair_finish(hp_ct *ct);

/* Hash of a key as the table computes it; the batch path computes it once and prefetches. */
static inline uint32_t hp_ct_hash(const hp_ct *ct, const hp_flow_key *key)
{
    return (uint32_t)hp_flow_hash(&ct->seed, key);
}
static inline void hp_ct_prefetch_slot(const hp_ct *ct, uint32_t hash)
{
    __builtin_prefetch(&ct->slots[hash & ct->mask]);
}

/* What a batched lookup prefetches besides the entry: the counters a forwarded packet writes,
 * and the window state a TCP packet reads. */
enum { HP_CT_PF_STATS = 1, HP_CT_PF_WIN = 2 };

/* The id of the first index slot whose tag and direction match: a hint for prefetching,
 * checked again by the lookup that follows (HP_CT_NONE when none matches). */
static inline uint32_t hp_ct_probable_id(const hp_ct *ct, uint32_t hash, int dir)
{
    for (uint32_t i = hash & ct->mask;; i = (i + 1) & ct->mask) {
        const hp_ct_slot *s = &ct->slots[i];
        if (s->ref == 0)
            return HP_CT_NONE;
        if (s->hash == hash && ((s->ref - 1) & 1) == (uint32_t)dir)
            return (s->ref - 1) >> 1;
    }
}

/* Second stage of a batched lookup, once the slot is (probably) in cache: prefetches the
 * entry (and the side arrays in what, HP_CT_PF_*) of the probable id. Entries inserted or
 * removed in between are fine. */
static inline void hp_ct_prefetch_entry(const hp_ct *ct, uint32_t hash, int dir, int what)
{
    uint32_t id = hp_ct_probable_id(ct, hash, dir);
    if (id == HP_CT_NONE)
        return;
    __builtin_prefetch(&ct->conns[id]);
    if (what & HP_CT_PF_STATS)
        __builtin_prefetch(&ct->stats[id], 1);
    if (what & HP_CT_PF_WIN)
        __builtin_prefetch(&ct->win[id], 1);
}

/* Third stage, once the entry is (probably) in cache: its neighbours on its state's list,
 * which the packet's touch relinks: two more cache misses per packet, random ones, which in a
 * batch overlap. Worth a pass over the batch only where the table outgrows the caches
 * (translating 64-byte frames in random order over 30k / 100k / 300k / 1M connections: 72 /
 * 137 / 180 / 220 ns a frame without it, 79 / 110 / 143 / 175 with it; 2-core EPYC VM). */
#define HP_CT_PREFETCH_LISTS_FROM 65536u

static inline void hp_ct_prefetch_neighbours(const hp_ct *ct, uint32_t hash, int dir)
{
    uint32_t id = hp_ct_probable_id(ct, hash, dir);
    if (id == HP_CT_NONE || ct->lru_tail[ct->conns[id].state] == id)
        return;
    const hp_conn *c = &ct->conns[id];
    if (c->lru_prev != HP_CT_NONE)
        __builtin_prefetch(&ct->conns[c->lru_prev], 1);
    if (c->lru_next != HP_CT_NONE)
        __builtin_prefetch(&ct->conns[c->lru_next], 1);
}

/* The connection whose tuple in direction dir (original: HP_DIR_OUT, reply: HP_DIR_IN) equals
 * key, or HP_CT_NONE. */
uint32_t hp_ct_lookup_hashed(const hp_ct *ct, const hp_flow_key *key, uint32_t hash, int dir);
uint32_t hp_ct_lookup(const hp_ct *ct, const hp_flow_key *key, int dir);
/* How many keys apart the batch's stages run (hp_ct_lookup_batch): slot prefetch, entry
 * prefetch, lookup. */
#ifndef HP_CT_PIPELINE
#define HP_CT_PIPELINE 8
#endif
/* Many lookups in a pipeline: the slot of a key 2 * HP_CT_PIPELINE ahead is prefetched, the
 * entry of a key HP_CT_PIPELINE ahead, while the key in hand is looked up; so the memory
 * latency of one key overlaps with the others'. */
void hp_ct_lookup_batch(const hp_ct *ct, const hp_flow_key *keys, uint32_t n, int dir,
                        uint32_t *ids);

/* Inserts a new connection; HP_CT_NONE when the table is full (it never evicts). */
uint32_t hp_ct_insert(hp_ct *ct, const hp_flow_key *orig, uint16_t eni, uint16_t nat_port,
                      uint8_t state, uint64_t now_ms);
/* The same, with the original tuple's hash already computed (the batch path has it). */
static inline void hp_ct_prefetch_free(const hp_ct *ct)
{
    /* The entry the next insert takes, for writing: the NAT asks while it picks a port. */
    if (ct->free_head != HP_CT_NONE) {
        __builtin_prefetch(&ct->conns[ct->free_head], 1);
        __builtin_prefetch(&ct->stats[ct->free_head], 1);
        __builtin_prefetch(&ct->win[ct->free_head], 1);
        __builtin_prefetch(&ct->flowbase[ct->free_head], 1);
    }
}
uint32_t hp_ct_insert_hashed(hp_ct *ct, const hp_flow_key *orig, uint32_t orig_hash,
                             uint16_t eni, uint16_t nat_port, uint8_t state, uint64_t now_ms);
void hp_ct_delete(hp_ct *ct, uint32_t id);

/* Marks activity: sets last_seen and moves the entry to the tail of its state's list. */
void hp_ct_touch(hp_ct *ct, uint32_t id, uint8_t new_state, uint64_t now_ms);

static inline int hp_ct_expired(const hp_ct *ct, const hp_conn *c, uint64_t now_ms)
{
    return now_ms >= c->last_seen_ms + ct->timeouts->ms[c->state];
}

/* The next expired connection (state lists in enum order, oldest first), or HP_CT_NONE. */
uint32_t hp_ct_next_expired(const hp_ct *ct, uint64_t now_ms);

#define HP_CT_EARLY_DROP_SCAN 8  /* entries looked at from the head of each state's list */
/* The unassured connection to drop to make room in a full table: the oldest (last seen first)
 * among the first HP_CT_EARLY_DROP_SCAN entries of each state's list, as Linux's early_drop;
 * HP_CT_NONE when every entry looked at is assured. */
uint32_t hp_ct_early_drop_victim(const hp_ct *ct);

/* Iteration: the first live id >= from, or HP_CT_NONE. */
uint32_t hp_ct_next_live(const hp_ct *ct, uint32_t from);

/* The reply tuple of a live connection. */
void hp_ct_reply_key(const hp_ct *ct, const hp_conn *c, hp_flow_key *out);
void hp_ct_orig_key(const hp_conn *c, hp_flow_key *out);

/* The flow-log interval of a connection (record: its entry, counters and base), per
 * direction. */
void hp_ct_flow_read(const hp_conn *c, const hp_conn_stats *st, const hp_conn_flowbase *b,
                     hp_flow_ival out[2]);
/* Starts a new interval: the counters as they are become the base, nothing seen. */
void hp_ct_flow_reset(hp_ct *ct, uint32_t id);

/* Bytes the table holds per connection slot, both index entries included. */
size_t hp_ct_memory(const hp_ct *ct);

/* A filter over connections, as `hyperplane conntrack` and the event stream take it
 * (docs/cli.md): each test whose HP_CTF_* bit is set in `what` must hold. Addresses: the
 * inside source, the destination and the ENI address (the reply tuple's destination), each a
 * prefix; ports: sport, dport and the NAT port, each a range. */
enum {
    HP_CTF_FAMILY = 1, HP_CTF_PROTO = 2, HP_CTF_STATES = 4, HP_CTF_ENI = 8, HP_CTF_OWNER = 16,
    HP_CTF_FLAGS = 32,
    HP_CTF_ADDR = 64,            /* << HP_CTA_*: one bit per address */
    HP_CTF_PORT = 512,           /* << HP_CTA_*: one bit per port */
};
enum { HP_CTA_SRC = 0, HP_CTA_DST = 1, HP_CTA_NAT = 2, HP_CTA_COUNT = 3 };

typedef struct hp_ct_filter {
    uint32_t what;
    uint32_t states;             /* bit 1 << state */
    uint32_t owner;
    uint16_t eni;
    uint8_t family, proto;
    uint8_t flags_mask, flags_want;  /* (flags & mask) == want */
    uint8_t plen[HP_CTA_COUNT];
    uint8_t pad;
    uint8_t addr[HP_CTA_COUNT][16];
    uint16_t port_lo[HP_CTA_COUNT], port_hi[HP_CTA_COUNT];
} hp_ct_filter;

/* Whether a connection (its entry and owner) passes the filter; NULL passes everything. */
int hp_ct_match(const hp_ct *ct, const hp_ct_filter *f, const hp_conn *c, uint32_t owner);
/* The live connections that pass the filter among table slots [from, to): their ids go to ids
 * (at most max; NULL: only counted). Returns how many matched; *next is the slot after the
 * last one looked at (to, unless max was reached first). */
uint32_t hp_ct_scan(const hp_ct *ct, const hp_ct_filter *f, uint32_t from, uint32_t to,
                    uint32_t *ids, uint32_t max, uint32_t *next);

#endif
