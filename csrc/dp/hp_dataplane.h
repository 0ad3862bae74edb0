/* The data-plane loop: one inside port (the functions' side) and one port per ENI, each an
 * AF_PACKET ring pair (hp_ring.h) with virtio-net headers. Per batch: rx from a port, check the
 * destination MAC, hp_nat_translate() the batch, then set the Ethernet addresses of what is
 * forwarded (egress port's MAC, the next hop's from the neighbour table), copy it to the egress
 * port's tx ring and flush each tx ring once. What the NAT punts (ARP, ICMP, NDP, neighbour
 * misses, ...) and broadcast / multicast ARP and ICMP go to a bounded punt queue that the
 * slow path drains (full: counted PUNT_OVERFLOW, never waited on).
 *
 * Threads (docs/semantics.md, "Threads and the table lock"): the loop runs on a thread of its
 * own (hp_dp_start) or on the caller's (hp_dp_run). The table lock (hp_dp_set_lock; owned by
 * whoever owns the NAT) is held by the loop for one batch at a time, and taken by every other
 * call here that touches the NAT, the tx rings, the ports or the neighbour table, so they are
 * safe from any thread while the loop runs: none may be called with the lock already held.
 * Punts pass through a double buffer swapped under a small punt lock of its own. */
#ifndef HP_DATAPLANE_H
#define HP_DATAPLANE_H

#include <pthread.h>

#include "hp_nat.h"
#include "hp_neigh.h"
#include "hp_police.h"
#include "hp_ring.h"

#define HP_DP_MAX_PORTS 64
_Static_assert(HP_DP_MAX_PORTS <= HP_POLICE_PORTS, "a punt bucket per port");
#define HP_DP_BATCH 64
#define HP_DP_PORT_NONE HP_NEIGH_ANY_PORT  /* a neighbour entry valid on any port; no egress port */
#define HP_DP_LINEAR_MAX 2048    /* default hp_dp.linear_max */

enum hp_dp_role { HP_DP_INSIDE = 0, HP_DP_ENI = 1 };

/* Loop counters (the loop's drops and punts by reason are in hp_dp.drops). LOCK_WAITS: batches
 * that found the table lock held by another thread; LOCK_WAIT_NS: their total wait;
 * LOCK_WAIT_MAX_NS: the longest (a gauge). */
#define HP_DP_COUNTERS(X) \
    X(RX_FRAMES) X(RX_BYTES) X(TX_FRAMES) X(TX_BYTES) \
    X(FORWARDED) X(NAT_DROPPED) X(PUNTED) X(PUNT_OVERFLOW) X(MCAST_IGNORED) \
    X(INJECTED) X(INJECT_FAILED) X(BATCHES) X(POLLS) X(RUNS) \
    X(LOCK_WAITS) X(LOCK_WAIT_NS) X(LOCK_WAIT_MAX_NS) X(PUNT_POLICED)
#define HP_DP_COUNTER_ENUM(name) HP_DP_C_##name,
enum hp_dp_counter { HP_DP_COUNTERS(HP_DP_COUNTER_ENUM) HP_DP_C_COUNT };
#undef HP_DP_COUNTER_ENUM
extern const char *const hp_dp_counter_names[HP_DP_C_COUNT];

typedef struct hp_dp_port {
    hp_ring *ring;
    int ifindex;
    uint8_t mac[6];
    uint8_t role;                /* enum hp_dp_role */
    uint8_t dirty;               /* tx committed during this batch */
    uint8_t removed;             /* hp_dp_remove_port(): not polled, no route to it */
    uint16_t eni;                /* ENI id (role ENI) */
    uint32_t removed_gen;        /* ports_gen that its removal made */
    /* Role ENI: destinations inside the prefix are on-link, others go to the gateway. A family
     * without a prefix is all on-link. [0] IPv4 (first 4 bytes), [1] IPv6. */
    uint8_t has_net[2], has_gw[2];
    uint8_t plen[2];
    uint8_t net[2][16];
    uint8_t gw[2][16];
    /* One-entry next-hop cache. */
    uint8_t nh_valid, nh_family;
    uint8_t nh_addr[16];
    uint8_t nh_mac[6];
} hp_dp_port;

/* One punted frame: the Ethernet frame (no virtio-net header) is in the punt arena. */
typedef struct hp_dp_punt {
    uint16_t in_port;            /* port it arrived on (or was given to hp_dp_input) */
    uint16_t out_port;           /* NEIGH_MISS: the egress port; else HP_DP_PORT_NONE */
    uint8_t reason;              /* enum hp_reason */
    uint8_t pad;
    uint8_t vnet[10];            /* the frame's virtio-net header as received */
    uint32_t conn;               /* connection id, HP_CT_NONE when none */
    uint32_t off, len;           /* the frame's bytes in the arena */
} hp_dp_punt;

/* One side of the punt double buffer. */
typedef struct hp_dp_punt_buf {
    hp_dp_punt *punts;
    uint32_t n;
    uint32_t arena_used;
    uint8_t *arena;
} hp_dp_punt_buf;

typedef uint64_t (*hp_dp_clock_fn)(void *ctx);

typedef struct hp_dp {
    hp_nat *nat;
    hp_dp_port ports[HP_DP_MAX_PORTS];
    uint32_t n_ports;
    uint32_t ports_gen;          /* bumped when a port is removed or reused: the loop re-reads
                                    its set */
    uint32_t loop_gen;           /* the ports_gen the running loop last built its set from */
    int loop_active;             /* a loop runs (forwarding thread or hp_dp_run) */
    int inside;                  /* port index of the inside port, -1 until added */
    int16_t eni_port[HP_MAX_ENIS];
    hp_neigh_table neigh;
    pthread_mutex_t *lock;       /* the table lock (NULL: none, single-threaded use) */
    /* Punts: the loop fills buf[fill] under punt_lock; hp_dp_punt_take() swaps the sides. */
    pthread_mutex_t punt_lock;
    hp_dp_punt_buf buf[2];
    uint32_t fill;
    uint32_t punt_cap, arena_cap;
    int punt_fd;                 /* eventfd: written when punts arrive and a reader is armed */
    int punt_armed;              /* a reader waits in hp_dp_punt_wait() */
    int wake_fd;                 /* eventfd: hp_dp_wake() makes a run return */
    int wake_flag;               /* set by hp_dp_wake(), checked every round */
    int stop_flag;               /* hp_dp_stop(): the forwarding thread ends */
    int punted;                  /* the loop queued punts since it last notified */
    int thread_running;
    pthread_t thread;
    uint32_t spin_us;            /* busy-poll this long before sleeping in poll() */
    /* Frames up to this size go through the tx ring as one linear skb (non-GSO); bigger ones
     * are sent from where they are (hp_ring_tx_send). */
    uint32_t linear_max;
    hp_dp_clock_fn clock;
    void *clock_ctx;
    uint64_t counters[HP_DP_C_COUNT];
    uint64_t drops[HP_R_COUNT];  /* the loop's own drops and punts, by reason */
    hp_punt_police police;       /* punts per (port, source MAC) and class, hp_police.h */
    uint8_t *scratch;            /* hp_dp_input's copy of a frame */
    uint8_t *frames[HP_DP_BATCH];
    uint32_t lens[HP_DP_BATCH];
    hp_result results[HP_DP_BATCH];
} hp_dp;

/* neigh_cap: neighbour entries (0: 4096); punt_cap: queued frames (0: 1024); punt_bytes: their
 * total size (0: 4 MB). Returns NULL on allocation failure. */
hp_dp *hp_dp_create(hp_nat *nat, uint32_t neigh_cap, uint32_t punt_cap, uint32_t punt_bytes);
void hp_dp_destroy(hp_dp *dp);

/* The table lock the loop holds per batch and every other call here takes (call before the
 * loop first runs; NULL: no locking). */
void hp_dp_set_lock(hp_dp *dp, pthread_mutex_t *lock);

/* Opens a ring pair on ifindex (outside the lock) and attaches it (under it): safe while the
 * loop runs, which picks the port up within a round. role HP_DP_INSIDE (once) or HP_DP_ENI
 * (eni: its id in the NAT, one port per ENI). rx_frames / tx_frames: ring slots (0: defaults).
 * Returns the port index or -errno. */
int hp_dp_add_port(hp_dp *dp, int ifindex, const uint8_t mac[6], int role, int eni,
                   uint32_t rx_frames, uint32_t tx_frames, int qdisc_bypass);
/* Retires an ENI port (its ENI reclaimed): no route leads to it any more and the loop stops
 * polling it, so its interface may be deleted. The slot and its ring stay until a later
 * hp_dp_add_port() reuses the slot, which it does only once the loop has rebuilt its poll set
 * without it (the loop reads ports[] without the lock), so ENIs can come and go for ever.
 * Returns 0 or -EINVAL. */
int hp_dp_remove_port(hp_dp *dp, int port);
/* An ENI port's subnet for one family (4 or 6): prefix (4 or 16 bytes) / plen, and the
 * gateway (NULL: none, off-link destinations are then dropped NO_ROUTE). */
int hp_dp_set_subnet(hp_dp *dp, int port, int family, const uint8_t *prefix, int plen,
                     const uint8_t *gateway);

/* Neighbour table (hp_neigh.h): port HP_DP_PORT_NONE (or -1) is valid on every port; a port's
 * own entry wins. addr is 4 or 16 bytes; flags HP_NEIGH_PINNED or 0 (learned). Returns 0,
 * -ENOSPC when full (or the port's learned share is), -EPERM when a learned entry would
 * replace a pinned one, -EINVAL. */
int hp_dp_set_neigh(hp_dp *dp, int port, int family, const uint8_t *addr, const uint8_t mac[6],
                    int flags);
int hp_dp_del_neigh(hp_dp *dp, int port, int family, const uint8_t *addr);
/* Copies into mac the MAC for addr as the loop sees it from port (own entry, then any-port
 * entry), into flags (may be NULL) the entry's flags. Returns 0, -ENOENT or -EINVAL. */
int hp_dp_get_neigh(hp_dp *dp, int port, int family, const uint8_t *addr, uint8_t mac[6],
                    int *flags);
/* Removes the learned entries not confirmed in the last max_age_ms; returns how many. */
uint32_t hp_dp_age_neigh(hp_dp *dp, uint64_t max_age_ms);
void hp_dp_clear_neigh(hp_dp *dp);

/* Runs the loop on the calling thread until a punt is queued (after the batch that queued it),
 * timeout_ms passes (< 0: no timeout), max_batches batches ran (0: no limit), or hp_dp_wake().
 * Returns the number of frames received, -EBUSY when the forwarding thread runs, or -errno
 * (poll failed). */
int64_t hp_dp_run(hp_dp *dp, int timeout_ms, uint32_t max_batches);
/* Thread-safe: makes the current (or next) hp_dp_run return. */
void hp_dp_wake(hp_dp *dp);

/* The forwarding thread: runs the loop until hp_dp_stop() (which joins it). start returns 0,
 * -EALREADY or -errno. */
int hp_dp_start(hp_dp *dp);
void hp_dp_stop(hp_dp *dp);

/* The punt queue, for one reader thread at a time. hp_dp_punt_wait() blocks up to timeout_ms
 * until punts are queued and returns how many; hp_dp_punt_take() takes everything queued (in
 * arrival order) and returns the count: read them with hp_dp_punt_get/_data until the next
 * take. */
uint32_t hp_dp_punt_pending(hp_dp *dp);
uint32_t hp_dp_punt_wait(hp_dp *dp, int timeout_ms);
uint32_t hp_dp_punt_take(hp_dp *dp);
static inline const hp_dp_punt *hp_dp_punt_get(const hp_dp *dp, uint32_t i)
{
    return &dp->buf[dp->fill ^ 1].punts[i];
}
static inline const uint8_t *hp_dp_punt_data(const hp_dp *dp, const hp_dp_punt *p)
{
    return dp->buf[dp->fill ^ 1].arena + p->off;
}

/* Sends an Ethernet frame out of a port as is (vnet_hdr: its 10-byte virtio-net header, NULL:
 * zeroed), flushed at once. Returns 0 or -errno (-ENOBUFS: tx ring full). */
int hp_dp_inject(hp_dp *dp, int port, const uint8_t *frame, uint32_t len, const uint8_t *vnet_hdr);
/* Processes an Ethernet frame as if it had arrived on port (the NAT translates it, forwards or
 * punts it): for frames the slow path re-injects, e.g. after PORTS_EXHAUSTED. Returns the
 * verdict (enum hp_verdict) or -errno. */
int hp_dp_input(hp_dp *dp, int port, const uint8_t *frame, uint32_t len,
                const uint8_t *vnet_hdr, hp_result *result);

/* CLOCK_MONOTONIC in milliseconds: the clock the loop uses unless hp_dp_set_clock() says. */
uint64_t hp_dp_now_ms(void);
void hp_dp_set_clock(hp_dp *dp, hp_dp_clock_fn fn, void *ctx);

/* Refreshes every port's kernel drop count (PACKET_STATISTICS). Takes the lock. */
void hp_dp_update_stats(hp_dp *dp);

/* One port as hp_dp_ports_view() copied it: a reused slot changes its ring, so readers on
 * other threads take copies made under the lock, not pointers. */
typedef struct hp_dp_port_view {
    hp_dp_port port;             /* port.ring: not to be followed */
    hp_ring_stats st;
    uint32_t rx_nr, tx_nr;
} hp_dp_port_view;
/* Refreshes the kernel drop counts and copies every port (at most max) under the lock.
 * Returns the number of ports. */
uint32_t hp_dp_ports_view(hp_dp *dp, hp_dp_port_view *out, uint32_t max);

#endif
