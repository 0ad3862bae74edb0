/* The data-plane loop. See hp_dataplane.h. */
#define _GNU_SOURCE
#include "hp_dataplane.h"

#include <endian.h>
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define VNET_LEN HP_VNET_HDR_LEN
#define ETH_LEN 14

#define HP_DP_COUNTER_NAME(name) #name,
const char *const hp_dp_counter_names[HP_DP_C_COUNT] = { HP_DP_COUNTERS(HP_DP_COUNTER_NAME) };
#undef HP_DP_COUNTER_NAME

uint64_t hp_dp_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t now_us(void)
{
    return now_ns() / 1000u;
}

static inline uint64_t dp_now(const hp_dp *dp)
{
    return dp->clock ? dp->clock(dp->clock_ctx) : hp_dp_now_ms();
}

void hp_dp_set_clock(hp_dp *dp, hp_dp_clock_fn fn, void *ctx)
{
    dp->clock = fn;
    dp->clock_ctx = ctx;
}

static void dp_lock(hp_dp *dp)
{
    if (dp->lock)
        pthread_mutex_lock(dp->lock);
}

/* The loop's lock: free in the common case (trylock); a wait is timed and counted. */
static void dp_lock_batch(hp_dp *dp)
{
    if (!dp->lock || pthread_mutex_trylock(dp->lock) == 0)
        return;
    uint64_t t0 = now_ns();
    pthread_mutex_lock(dp->lock);
    uint64_t waited = now_ns() - t0;
    dp->counters[HP_DP_C_LOCK_WAITS]++;
    dp->counters[HP_DP_C_LOCK_WAIT_NS] += waited;
    if (waited > dp->counters[HP_DP_C_LOCK_WAIT_MAX_NS])
        dp->counters[HP_DP_C_LOCK_WAIT_MAX_NS] = waited;
}

static void dp_unlock(hp_dp *dp)
{
    if (dp->lock)
        pthread_mutex_unlock(dp->lock);
}

/* ---- creation ---------------------------------------------------------------------------- */

hp_dp *hp_dp_create(hp_nat *nat, uint32_t neigh_cap, uint32_t punt_cap, uint32_t punt_bytes)
{
    hp_dp *dp = calloc(1, sizeof(*dp));
    if (!dp)
        return NULL;
    dp->nat = nat;
    dp->inside = -1;
    dp->wake_fd = dp->punt_fd = -1;
    dp->linear_max = HP_DP_LINEAR_MAX;
    /* Priority-inheriting: the slow path holding it must not keep the realtime loop waiting. */
    pthread_mutexattr_t pi;
    pthread_mutexattr_init(&pi);
    pthread_mutexattr_setprotocol(&pi, PTHREAD_PRIO_INHERIT);
    pthread_mutex_init(&dp->punt_lock, &pi);
    pthread_mutexattr_destroy(&pi);
    hp_police_init(&dp->police, HP_PUNT_PER_S, HP_PUNT_BURST);
    for (uint32_t e = 0; e < HP_MAX_ENIS; e++)
        dp->eni_port[e] = -1;
    dp->punt_cap = punt_cap ? punt_cap : 1024;
    dp->arena_cap = punt_bytes ? punt_bytes : 4u << 20;
    int ok = hp_neigh_init(&dp->neigh, neigh_cap) == 0;
    for (int b = 0; b < 2; b++) {
        dp->buf[b].punts = calloc(dp->punt_cap, sizeof(hp_dp_punt));
        dp->buf[b].arena = malloc(dp->arena_cap);
        ok &= dp->buf[b].punts && dp->buf[b].arena;
    }
    dp->scratch = malloc(HP_RING_FRAME_SIZE);
    dp->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    dp->punt_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (!ok || !dp->scratch || dp->wake_fd < 0 || dp->punt_fd < 0) {
        hp_dp_destroy(dp);
        return NULL;
    }
    return dp;
}

void hp_dp_destroy(hp_dp *dp)
{
    if (!dp)
        return;
    hp_dp_stop(dp);
    for (uint32_t i = 0; i < dp->n_ports; i++)
        hp_ring_close(dp->ports[i].ring);
    if (dp->wake_fd >= 0)
        close(dp->wake_fd);
    if (dp->punt_fd >= 0)
        close(dp->punt_fd);
    hp_neigh_free(&dp->neigh);
    for (int b = 0; b < 2; b++) {
        free(dp->buf[b].punts);
        free(dp->buf[b].arena);
    }
    free(dp->scratch);
    pthread_mutex_destroy(&dp->punt_lock);
    free(dp);
}

void hp_dp_set_lock(hp_dp *dp, pthread_mutex_t *lock)
{
    dp->lock = lock;
}

/* Wakes the loop's poll() without making hp_dp_run() return (the loop re-reads its ports). */
static void poke(hp_dp *dp)
{
    uint64_t one = 1;
    ssize_t r = write(dp->wake_fd, &one, sizeof(one));
    (void)r;
}

/* A removed ENI slot that no loop can still be reading: the loop has rebuilt its poll set
 * since the removal, or no loop runs (its next run builds a fresh one). -1: none. */
static int reusable_slot(const hp_dp *dp)
{
    int active = __atomic_load_n(&dp->loop_active, __ATOMIC_SEQ_CST);
    uint32_t seen = __atomic_load_n(&dp->loop_gen, __ATOMIC_ACQUIRE);
    for (uint32_t i = 0; i < dp->n_ports; i++) {
        const hp_dp_port *p = &dp->ports[i];
        if (p->removed && (!active || (int32_t)(seen - p->removed_gen) >= 0))
            return (int)i;
    }
    return -1;
}

static int any_removed(hp_dp *dp)
{
    uint32_t n = __atomic_load_n(&dp->n_ports, __ATOMIC_ACQUIRE);
    for (uint32_t i = 0; i < n; i++)
        if (__atomic_load_n(&dp->ports[i].removed, __ATOMIC_ACQUIRE))
            return 1;
    return 0;
}

/* Under the lock. *old: the ring of a reused slot, to close once the lock is released. */
static int attach_port(hp_dp *dp, hp_ring *ring, int ifindex, const uint8_t mac[6], int role,
                       int eni, hp_ring **old)
{
    if (role == HP_DP_INSIDE && dp->inside >= 0)
        return -EEXIST;
    if (role == HP_DP_ENI && dp->eni_port[eni] >= 0)
        return -EEXIST;
    for (uint32_t i = 0; i < dp->n_ports; i++)
        if (!dp->ports[i].removed && dp->ports[i].ifindex == ifindex)
            return -EEXIST;
    int idx = role == HP_DP_ENI ? reusable_slot(dp) : -1;
    if (idx < 0 && dp->n_ports >= HP_DP_MAX_PORTS)
        return -ENOSPC;
    /* Built aside and copied in whole: a reused slot stays "removed" (never read by the loop)
     * until its new ring is in place. */
    hp_dp_port p;
    memset(&p, 0, sizeof(p));
    p.ring = ring;
    p.ifindex = ifindex;
    memcpy(p.mac, mac, 6);
    p.role = (uint8_t)role;
    p.eni = role == HP_DP_ENI ? (uint16_t)eni : 0;
    if (idx >= 0) {
        *old = dp->ports[idx].ring;
        p.removed = 1;
        dp->ports[idx] = p;
        __atomic_store_n(&dp->ports[idx].removed, 0, __ATOMIC_RELEASE);
        __atomic_add_fetch(&dp->ports_gen, 1, __ATOMIC_RELEASE);
    } else {
        idx = (int)dp->n_ports;
        dp->ports[idx] = p;
        /* The loop reads ports[] below n_ports without the lock: publish the entry first. */
        __atomic_store_n(&dp->n_ports, (uint32_t)idx + 1, __ATOMIC_RELEASE);
    }
    if (role == HP_DP_INSIDE)
        dp->inside = idx;
    else
        dp->eni_port[eni] = (int16_t)idx;
    return idx;
}

int hp_dp_add_port(hp_dp *dp, int ifindex, const uint8_t mac[6], int role, int eni,
                   uint32_t rx_frames, uint32_t tx_frames, int qdisc_bypass)
{
    if (role != HP_DP_INSIDE && role != HP_DP_ENI)
        return -EINVAL;
    if (role == HP_DP_ENI && (eni < 0 || eni >= HP_MAX_ENIS))
        return -EINVAL;
    /* Opening a ring (socket, mmap of megabytes) takes milliseconds: not under the lock. */
    hp_ring *ring = hp_ring_open(ifindex, rx_frames, tx_frames, 1, qdisc_bypass);
    if (!ring)
        return errno ? -errno : -ENOMEM;
    hp_ring *old = NULL;
    int idx;
    /* Every slot taken, but a removed one may be waiting for the loop to rebuild its poll
     * set: wake the loop and give it up to 200 ms (the ENI worker calls this, not the loop). */
    for (int tries = 0;; tries++) {
        dp_lock(dp);
        idx = attach_port(dp, ring, ifindex, mac, role, eni, &old);
        dp_unlock(dp);
        if (idx != -ENOSPC || tries >= 200 || !any_removed(dp))
            break;
        poke(dp);
        struct timespec ts = { 0, 1000000 };
        nanosleep(&ts, NULL);
    }
    hp_ring_close(old);
    if (idx < 0)
        hp_ring_close(ring);
    else
        poke(dp);
    return idx;
}

static void invalidate_next_hops(hp_dp *dp);

int hp_dp_remove_port(hp_dp *dp, int port)
{
    if (port < 0 || (uint32_t)port >= __atomic_load_n(&dp->n_ports, __ATOMIC_ACQUIRE))
        return -EINVAL;
    dp_lock(dp);
    hp_dp_port *p = &dp->ports[port];
    int rc = p->role == HP_DP_ENI && !p->removed ? 0 : -EINVAL;
    if (rc == 0) {
        dp->eni_port[p->eni] = -1;
        /* Its neighbours are not those of whatever ENI takes the slot next. */
        hp_neigh_del_port(&dp->neigh, (uint16_t)port);
        invalidate_next_hops(dp);
        __atomic_store_n(&p->removed, 1, __ATOMIC_RELEASE);
        p->removed_gen = __atomic_add_fetch(&dp->ports_gen, 1, __ATOMIC_RELEASE);
    }
    dp_unlock(dp);
    if (rc == 0)
        poke(dp);
    return rc;
}

int hp_dp_set_subnet(hp_dp *dp, int port, int family, const uint8_t *prefix, int plen,
                     const uint8_t *gateway)
{
    if (port < 0 || (uint32_t)port >= __atomic_load_n(&dp->n_ports, __ATOMIC_ACQUIRE) ||
        (family != 4 && family != 6))
        return -EINVAL;
    int f = family == 6;
    int alen = f ? 16 : 4;
    if (plen < 0 || plen > alen * 8)
        return -EINVAL;
    dp_lock(dp);
    hp_dp_port *p = &dp->ports[port];
    memset(p->net[f], 0, 16);
    memset(p->gw[f], 0, 16);
    p->has_net[f] = prefix != NULL;
    if (prefix) {
        memcpy(p->net[f], prefix, (size_t)alen);
        p->plen[f] = (uint8_t)plen;
        /* Keep only the prefix bits, so the on-link test is a masked compare. */
        for (int b = plen; b < alen * 8; b++)
            p->net[f][b >> 3] &= (uint8_t)~(0x80u >> (b & 7));
    }
    p->has_gw[f] = gateway != NULL;
    if (gateway)
        memcpy(p->gw[f], gateway, (size_t)alen);
    p->nh_valid = 0;
    dp_unlock(dp);
    return 0;
}

/* ---- neighbour table (csrc/dp/neigh.c) --------------------------------------------------------- */

static void invalidate_next_hops(hp_dp *dp)
{
    for (uint32_t i = 0; i < dp->n_ports; i++)
        dp->ports[i].nh_valid = 0;
}

/* Checks port and family and builds the 16-byte key. */
static int neigh_key(const hp_dp *dp, int port, int family, const uint8_t *addr, uint16_t *pt,
                     uint8_t key[16])
{
    if (family != 4 && family != 6)
        return -EINVAL;
    if (port < 0 || port == HP_DP_PORT_NONE)
        *pt = HP_DP_PORT_NONE;
    else if ((uint32_t)port < __atomic_load_n(&dp->n_ports, __ATOMIC_ACQUIRE))
        *pt = (uint16_t)port;
    else
        return -EINVAL;
    memset(key, 0, 16);
    memcpy(key, addr, family == 6 ? 16 : 4);
    return 0;
}

int hp_dp_set_neigh(hp_dp *dp, int port, int family, const uint8_t *addr, const uint8_t mac[6],
                    int flags)
{
    uint16_t pt;
    uint8_t key[16];
    if (neigh_key(dp, port, family, addr, &pt, key))
        return -EINVAL;
    uint64_t now = dp_now(dp);
    dp_lock(dp);
    invalidate_next_hops(dp);
    int rc = hp_neigh_set(&dp->neigh, pt, family, key, mac, flags, now);
    dp_unlock(dp);
    return rc;
}

uint32_t hp_dp_age_neigh(hp_dp *dp, uint64_t max_age_ms)
{
    uint64_t now = dp_now(dp);
    dp_lock(dp);
    uint32_t n = hp_neigh_age(&dp->neigh, now, max_age_ms);
    if (n)
        invalidate_next_hops(dp);
    dp_unlock(dp);
    return n;
}

int hp_dp_del_neigh(hp_dp *dp, int port, int family, const uint8_t *addr)
{
    uint16_t pt;
    uint8_t key[16];
    if (neigh_key(dp, port, family, addr, &pt, key))
        return -EINVAL;
    dp_lock(dp);
    int rc = hp_neigh_del(&dp->neigh, pt, family, key);
    if (rc == 0)
        invalidate_next_hops(dp);
    dp_unlock(dp);
    return rc;
}

void hp_dp_clear_neigh(hp_dp *dp)
{
    dp_lock(dp);
    hp_neigh_clear(&dp->neigh);
    invalidate_next_hops(dp);
    dp_unlock(dp);
}

int hp_dp_get_neigh(hp_dp *dp, int port, int family, const uint8_t *addr, uint8_t mac[6],
                    int *flags)
{
    uint16_t pt;
    uint8_t key[16];
    if (neigh_key(dp, port, family, addr, &pt, key))
        return -EINVAL;
    dp_lock(dp);
    const uint8_t *m = hp_neigh_lookup_ex(&dp->neigh, pt, family, key, flags);
    if (m)
        memcpy(mac, m, 6);
    dp_unlock(dp);
    return m ? 0 : -ENOENT;
}

/* ---- punt queue ---------------------------------------------------------------------------- */

uint32_t hp_dp_punt_pending(hp_dp *dp)
{
    pthread_mutex_lock(&dp->punt_lock);
    uint32_t n = dp->buf[dp->fill].n;
    pthread_mutex_unlock(&dp->punt_lock);
    return n;
}

uint32_t hp_dp_punt_take(hp_dp *dp)
{
    pthread_mutex_lock(&dp->punt_lock);
    /* The side the reader had is done with: empty it and hand it to the loop. */
    hp_dp_punt_buf *old = &dp->buf[dp->fill ^ 1];
    old->n = old->arena_used = 0;
    dp->fill ^= 1;
    uint32_t n = dp->buf[dp->fill ^ 1].n;
    pthread_mutex_unlock(&dp->punt_lock);
    return n;
}

uint32_t hp_dp_punt_wait(hp_dp *dp, int timeout_ms)
{
    uint64_t v;
    ssize_t r = read(dp->punt_fd, &v, sizeof(v));   /* a stale wake-up from an earlier batch */
    (void)r;
    /* Armed before looking, so a punt queued after the look writes the eventfd. */
    __atomic_store_n(&dp->punt_armed, 1, __ATOMIC_SEQ_CST);
    uint32_t n = hp_dp_punt_pending(dp);
    if (!n && timeout_ms != 0) {
        struct pollfd pfd = { .fd = dp->punt_fd, .events = POLLIN };
        poll(&pfd, 1, timeout_ms);
        n = hp_dp_punt_pending(dp);
    }
    __atomic_store_n(&dp->punt_armed, 0, __ATOMIC_SEQ_CST);
    return n;
}

/* After a batch that punted: wakes a waiting reader (one write per wait, not per batch). */
static void punt_notify(hp_dp *dp)
{
    if (__atomic_exchange_n(&dp->punt_armed, 0, __ATOMIC_SEQ_CST)) {
        uint64_t one = 1;
        ssize_t r = write(dp->punt_fd, &one, sizeof(one));
        (void)r;
    }
}

/* f points at the virtio-net header (len counts it). */
static void punt(hp_dp *dp, uint16_t in_port, uint16_t out_port, uint8_t reason, uint32_t conn,
                 const uint8_t *f, uint32_t len)
{
    uint32_t flen = len > VNET_LEN ? len - VNET_LEN : 0;
    pthread_mutex_lock(&dp->punt_lock);
    /* Policed under the punt lock: the forwarding thread and hp_dp_input's callers both punt. */
    if (!hp_police_punt(&dp->police, in_port, reason, f + VNET_LEN, flen, dp_now(dp))) {
        pthread_mutex_unlock(&dp->punt_lock);
        dp->counters[HP_DP_C_PUNT_POLICED]++;
        return;
    }
    hp_dp_punt_buf *b = &dp->buf[dp->fill];
    if (b->n >= dp->punt_cap || flen > dp->arena_cap - b->arena_used) {
        pthread_mutex_unlock(&dp->punt_lock);
        dp->counters[HP_DP_C_PUNT_OVERFLOW]++;
        return;
    }
    hp_dp_punt *p = &b->punts[b->n++];
    p->in_port = in_port;
    p->out_port = out_port;
    p->reason = reason;
    p->pad = 0;
    p->conn = conn;
    if (len >= VNET_LEN)
        memcpy(p->vnet, f, VNET_LEN);
    else
        memset(p->vnet, 0, VNET_LEN);
    p->off = b->arena_used;
    p->len = flen;
    memcpy(b->arena + p->off, f + VNET_LEN, flen);
    b->arena_used += (flen + 7u) & ~7u;
    if (b->arena_used > dp->arena_cap)
        b->arena_used = dp->arena_cap;
    pthread_mutex_unlock(&dp->punt_lock);
    dp->counters[HP_DP_C_PUNTED]++;
    dp->punted = 1;
}

/* ---- forwarding ---------------------------------------------------------------------------- */

static inline int on_link(const hp_dp_port *p, int f, const uint8_t *dst)
{
    if (!p->has_net[f])
        return 1;
    int plen = p->plen[f];
    int whole = plen >> 3;
    if (memcmp(dst, p->net[f], (size_t)whole) != 0)
        return 0;
    int rem = plen & 7;
    if (!rem)
        return 1;
    uint8_t mask = (uint8_t)(0xFF00u >> rem);
    return (dst[whole] & mask) == p->net[f][whole];
}

/* The MAC of the next hop for a frame leaving port q towards dst, or NULL (*reason says why). */
static inline const uint8_t *next_hop_mac(hp_dp *dp, uint16_t q, int family, const uint8_t *dst,
                                          int *reason)
{
    hp_dp_port *p = &dp->ports[q];
    int f = family == 6;
    int alen = f ? 16 : 4;
    uint8_t nh[16] = { 0 };
    if (p->role == HP_DP_INSIDE || on_link(p, f, dst)) {
        memcpy(nh, dst, (size_t)alen);
    } else if (p->has_gw[f]) {
        memcpy(nh, p->gw[f], (size_t)alen);
    } else {
        *reason = HP_R_NO_ROUTE;
        return NULL;
    }
    if (p->nh_valid && p->nh_family == family && memcmp(p->nh_addr, nh, 16) == 0)
        return p->nh_mac;
    const uint8_t *mac = hp_neigh_lookup(&dp->neigh, q, family, nh);
    if (!mac) {
        *reason = HP_R_NEIGH_MISS;
        return NULL;
    }
    p->nh_valid = 1;
    p->nh_family = (uint8_t)family;
    memcpy(p->nh_addr, nh, 16);
    memcpy(p->nh_mac, mac, 6);
    return p->nh_mac;
}

/* A frame the loop drops (reason): counted for the loop, and for the ENI it came in by or was
 * to leave by (eni; -1: none, e.g. inside to inside), in that ENI's PacketsDropCount. */
static void loop_drop(hp_dp *dp, int reason, int eni)
{
    dp->drops[reason]++;
    if (eni >= 0 && (uint32_t)eni < dp->nat->n_enis)
        hp_nat_eni_drop(dp->nat, (uint16_t)eni, reason);
}

/* The ENI a forwarded frame belongs to: the one it leaves by, else the one it came in by. */
static inline int frame_eni(const hp_dp *dp, uint16_t in_port, const hp_result *res)
{
    if (res->port)
        return res->port - 1;
    const hp_dp_port *in = &dp->ports[in_port];
    return in->role == HP_DP_ENI ? in->eni : -1;
}

/* A frame of len bytes (virtio-net header included) handed to the kernel. */
static inline void sent(hp_dp *dp, uint32_t len)
{
    dp->counters[HP_DP_C_FORWARDED]++;
    dp->counters[HP_DP_C_TX_FRAMES]++;
    dp->counters[HP_DP_C_TX_BYTES] += len - VNET_LEN;
}

/* A frame the NAT said to forward (f at its virtio-net header). */
static void forward(hp_dp *dp, uint16_t in_port, uint8_t *f, uint32_t len, const hp_result *res)
{
    int q;
    if (res->port == 0) {
        q = dp->inside;
    } else if ((uint32_t)res->port - 1 < HP_MAX_ENIS) {
        q = dp->eni_port[res->port - 1];
    } else {
        q = -1;
    }
    if (q < 0) {
        loop_drop(dp, HP_R_NO_ROUTE, frame_eni(dp, in_port, res));
        return;
    }
    uint8_t *eth = f + VNET_LEN;
    uint16_t et = hp_be16(eth + 12);
    int family = et == 0x86DD ? 6 : 4;
    const uint8_t *dst = eth + ETH_LEN + (family == 6 ? 24 : 16);
    int reason = HP_R_NONE;
    const uint8_t *mac = next_hop_mac(dp, (uint16_t)q, family, dst, &reason);
    if (!mac) {
        if (reason == HP_R_NEIGH_MISS) {
            dp->drops[reason]++;            /* a punt: the slow path resolves and sends it */
            punt(dp, in_port, (uint16_t)q, (uint8_t)reason, res->conn, f, len);
        } else {
            loop_drop(dp, reason, frame_eni(dp, in_port, res));
        }
        return;
    }
    hp_dp_port *out = &dp->ports[q];
    if (len > hp_ring_tx_max(out->ring)) {
        loop_drop(dp, HP_R_TOO_BIG, frame_eni(dp, in_port, res));
        return;
    }
    if (len - VNET_LEN > dp->linear_max) {
        /* A GSO super-frame (or a jumbo frame): through the ring it would be copied twice,
         * into the ring and, as its skb crosses into the peer's namespace, out of the ring's
         * pages; sent from where it is, the kernel copies it once (hp_ring_tx_send). */
        memcpy(f + VNET_LEN, mac, 6);
        memcpy(f + VNET_LEN + 6, out->mac, 6);
        int rc = hp_ring_tx_send(out->ring, f, len);
        if (rc == 0) {
            sent(dp, len);
            return;
        }
        if (rc != -EAGAIN) {
            loop_drop(dp, HP_R_TX_FULL, frame_eni(dp, in_port, res));
            return;
        }
    }
    uint8_t *slot = hp_ring_tx_slot(out->ring);
    if (!slot) {
        /* Hand the kernel what is queued; slots come back as the receivers consume them. */
        hp_ring_tx_flush(out->ring);
        slot = hp_ring_tx_slot(out->ring);
        if (!slot) {
            loop_drop(dp, HP_R_TX_FULL, frame_eni(dp, in_port, res));
            return;
        }
    }
    memcpy(slot, f, len);
    memcpy(slot + VNET_LEN, mac, 6);
    memcpy(slot + VNET_LEN + 6, out->mac, 6);
    /* The kernel copies the first hdr_len bytes of a tx-ring frame into the skb and hangs the
     * rest off it as page fragments of the ring. A small frame copied whole makes a plain
     * linear skb: nothing for the receiving stack to pull, no page references to drop. */
    hp_vnet_hdr *vh = (hp_vnet_hdr *)slot;
    if (vh->gso_type == 0 && len - VNET_LEN <= dp->linear_max)
        vh->hdr_len = htole16((uint16_t)(len - VNET_LEN));
    hp_ring_tx_commit(out->ring, len);
    out->dirty = 1;
    sent(dp, len);
}

/* Broadcast / multicast: ARP and ICMP / ICMPv6 (NDP) to the slow path, the rest ignored. */
static void slow_multicast(hp_dp *dp, uint16_t in_port, const uint8_t *f, uint32_t len)
{
    const uint8_t *eth = f + VNET_LEN;
    uint32_t elen = len - VNET_LEN;
    int reason = HP_R_NONE;
    if (elen >= ETH_LEN) {
        uint16_t et = hp_be16(eth + 12);
        if (et == 0x0806)
            reason = HP_R_ARP;
        else if (et == 0x0800 && elen >= ETH_LEN + 20 && eth[ETH_LEN + 9] == 1)
            reason = HP_R_ICMP;
        else if (et == 0x86DD && elen >= ETH_LEN + 40 && eth[ETH_LEN + 6] == 58)
            reason = HP_R_ICMP;
    }
    if (reason == HP_R_NONE) {
        dp->counters[HP_DP_C_MCAST_IGNORED]++;
        return;
    }
    dp->drops[reason]++;
    punt(dp, in_port, HP_DP_PORT_NONE, (uint8_t)reason, HP_CT_NONE, f, len);
}

/* One batch from port in_port: frames at their virtio-net headers. */
static void process_batch(hp_dp *dp, uint16_t in_port, uint8_t **data, uint32_t *lens,
                          uint32_t n, uint64_t now)
{
    hp_dp_port *in = &dp->ports[in_port];
    uint8_t *nf[HP_DP_BATCH];
    uint32_t nl[HP_DP_BATCH];
    uint32_t k = 0;
    uint64_t bytes = 0;

    for (uint32_t i = 0; i < n; i++) {
        uint8_t *f = data[i];
        uint32_t len = lens[i];
        bytes += len;
        if (len >= VNET_LEN + 6) {
            const uint8_t *eth = f + VNET_LEN;
            if (eth[0] & 1) {
                slow_multicast(dp, in_port, f, len);
                continue;
            }
            if (memcmp(eth, in->mac, 6) != 0) {
                loop_drop(dp, HP_R_NOT_OUR_MAC, in->role == HP_DP_ENI ? in->eni : -1);
                continue;
            }
        }
        /* Shorter frames go to the NAT, which counts them as truncated. */
        nf[k] = f;
        nl[k] = len;
        k++;
    }
    dp->counters[HP_DP_C_RX_FRAMES] += n;
    dp->counters[HP_DP_C_RX_BYTES] += bytes - (uint64_t)n * VNET_LEN;
    if (!k)
        return;

    int dir = in->role == HP_DP_INSIDE ? HP_DIR_OUT : HP_DIR_IN;
    hp_result *res = dp->results;
    hp_nat_translate(dp->nat, nf, nl, k, dir, in->eni, 1, now, res);
    for (uint32_t j = 0; j < k; j++) {
        if (j + 1 < k)
            __builtin_prefetch(nf[j + 1] + VNET_LEN + ETH_LEN);
        switch (res[j].verdict) {
        case HP_FORWARD:
            forward(dp, in_port, nf[j], nl[j], &res[j]);
            break;
        case HP_PUNT:
            punt(dp, in_port, HP_DP_PORT_NONE, res[j].reason, res[j].conn, nf[j], nl[j]);
            break;
        default:
            dp->counters[HP_DP_C_NAT_DROPPED]++;
            break;
        }
    }
}

static void flush_dirty(hp_dp *dp)
{
    for (uint32_t i = 0; i < dp->n_ports; i++) {
        hp_dp_port *p = &dp->ports[i];
        if (p->dirty || p->ring->tx_queued) {
            hp_ring_tx_flush(p->ring);
            p->dirty = 0;
        }
    }
}

/* ---- the loop ------------------------------------------------------------------------------ */

void hp_dp_wake(hp_dp *dp)
{
    __atomic_store_n(&dp->wake_flag, 1, __ATOMIC_RELEASE);
    poke(dp);
}

/* Consumes a pending wake-up: the flag is checked every round, the eventfd only wakes poll. */
static int take_wake(hp_dp *dp)
{
    if (!__atomic_load_n(&dp->wake_flag, __ATOMIC_ACQUIRE))
        return 0;
    __atomic_store_n(&dp->wake_flag, 0, __ATOMIC_RELAXED);
    uint64_t v;
    ssize_t r = read(dp->wake_fd, &v, sizeof(v));
    (void)r;
    return 1;
}

/* Builds the poll set from ports_gen gen; once built, the loop no longer looks at a slot removed
 * before gen, and hp_dp_add_port may reuse it (loop_gen). */
static uint32_t poll_set(hp_dp *dp, struct pollfd *pfd, uint32_t gen)
{
    uint32_t np = __atomic_load_n(&dp->n_ports, __ATOMIC_ACQUIRE);
    for (uint32_t i = 0; i < np; i++) {
        /* A removed port's interface may be gone: its socket would report POLLERR forever. */
        pfd[i].fd = __atomic_load_n(&dp->ports[i].removed, __ATOMIC_ACQUIRE) ? -1
                                                                             : dp->ports[i].ring->fd;
        pfd[i].events = POLLIN;
    }
    pfd[np].fd = dp->wake_fd;
    pfd[np].events = POLLIN;
    __atomic_store_n(&dp->loop_gen, gen, __ATOMIC_RELEASE);
    return np;
}

/* The loop. until_punt: return after a batch that queued punts (hp_dp_run); else run until
 * woken (the forwarding thread). Rx rings are the loop's alone, so peeking and releasing them
 * need no lock; translating and everything tx happen under the table lock, one batch per
 * hold, so other threads wait at most one batch. */
static int64_t loop(hp_dp *dp, int timeout_ms, uint32_t max_batches, int until_punt)
{
    struct pollfd pfd[HP_DP_MAX_PORTS + 1];
    int64_t frames = 0;
    uint32_t batches = 0;
    uint64_t start = hp_dp_now_ms();
    uint64_t deadline = timeout_ms < 0 ? UINT64_MAX : start + (uint64_t)timeout_ms;
    uint64_t spin_until = 0;

    dp->counters[HP_DP_C_RUNS]++;
    /* Before the set is read: a slot reused from here on is seen as such (reusable_slot). */
    __atomic_store_n(&dp->loop_active, 1, __ATOMIC_SEQ_CST);
    uint32_t gen = __atomic_load_n(&dp->ports_gen, __ATOMIC_ACQUIRE);
    uint32_t np = poll_set(dp, pfd, gen);
    if (take_wake(dp))
        goto out;
    for (;;) {
        int work = 0;
        if (__atomic_load_n(&dp->n_ports, __ATOMIC_ACQUIRE) != np ||
            __atomic_load_n(&dp->ports_gen, __ATOMIC_ACQUIRE) != gen) {
            gen = __atomic_load_n(&dp->ports_gen, __ATOMIC_ACQUIRE);
            np = poll_set(dp, pfd, gen);    /* a port was added, removed or reused */
        }
        uint64_t now = dp_now(dp);
        for (uint32_t i = 0; i < np; i++) {
            if (pfd[i].fd < 0)
                continue;
            hp_ring *r = dp->ports[i].ring;
            uint32_t n = hp_ring_rx_peek(r, dp->frames, dp->lens, HP_DP_BATCH);
            if (n) {
                dp_lock_batch(dp);
                process_batch(dp, (uint16_t)i, dp->frames, dp->lens, n, now);
                flush_dirty(dp);
                dp_unlock(dp);
                frames += n;
                batches++;
                work = 1;
            }
            if (r->rx_held)
                hp_ring_rx_release(r);
            if (max_batches && batches >= max_batches)
                goto out;
        }
        if (dp->punted) {
            dp->punted = 0;
            punt_notify(dp);
        }
        /* Frames the kernel could not take yet (socket buffer, peer backlog). */
        int tx_pending = 0;
        for (uint32_t i = 0; i < np; i++) {
            if (pfd[i].fd >= 0 &&
                __atomic_load_n(&dp->ports[i].ring->tx_queued, __ATOMIC_RELAXED)) {
                dp_lock(dp);
                hp_ring_tx_flush(dp->ports[i].ring);
                tx_pending |= dp->ports[i].ring->tx_queued != 0;
                dp_unlock(dp);
            }
        }
        if ((until_punt && hp_dp_punt_pending(dp)) || take_wake(dp))
            goto out;
        /* Checked every round, so a loaded loop still returns to the slow path on time. */
        uint64_t t = hp_dp_now_ms();
        if (t >= deadline)
            goto out;
        if (work) {
            spin_until = 0;
            continue;
        }
        if (dp->spin_us) {
            uint64_t u = now_us();
            if (!spin_until)
                spin_until = u + dp->spin_us;
            if (u < spin_until)
                continue;
        }
        uint64_t wait = deadline - t;
        int ms = wait > 1000 ? 1000 : (int)wait;
        if (tx_pending)
            ms = ms > 1 ? 1 : ms;
        dp->counters[HP_DP_C_POLLS]++;
        int rc = poll(pfd, np + 1, ms);
        if (rc < 0 && errno != EINTR) {
            frames = -errno;
            goto out;
        }
        if (rc > 0 && (pfd[np].revents & POLLIN)) {
            uint64_t v;
            ssize_t r = read(dp->wake_fd, &v, sizeof(v));   /* the flag says what it meant */
            (void)r;
        }
        spin_until = 0;
    }
out:
    dp->counters[HP_DP_C_BATCHES] += batches;
    __atomic_store_n(&dp->loop_active, 0, __ATOMIC_SEQ_CST);
    return frames;
}

int64_t hp_dp_run(hp_dp *dp, int timeout_ms, uint32_t max_batches)
{
    if (__atomic_load_n(&dp->thread_running, __ATOMIC_ACQUIRE))
        return -EBUSY;
    return loop(dp, timeout_ms, max_batches, 1);
}

static void *forwarding_thread(void *arg)
{
    hp_dp *dp = arg;
    while (!__atomic_load_n(&dp->stop_flag, __ATOMIC_ACQUIRE)) {
        if (loop(dp, -1, 0, 0) < 0) {
            /* poll() failed (EBADF, ENOMEM): back off rather than spin, keep forwarding. */
            struct timespec ts = { 0, 1000000 };
            nanosleep(&ts, NULL);
        }
    }
    return NULL;
}

int hp_dp_start(hp_dp *dp)
{
    if (dp->thread_running)
        return -EALREADY;
    __atomic_store_n(&dp->stop_flag, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&dp->thread_running, 1, __ATOMIC_RELEASE);
    int rc = pthread_create(&dp->thread, NULL, forwarding_thread, dp);
    if (rc) {
        __atomic_store_n(&dp->thread_running, 0, __ATOMIC_RELEASE);
        return -rc;
    }
    pthread_setname_np(dp->thread, "hp-forward");    /* for top -H, perf, /proc */
    return 0;
}

void hp_dp_stop(hp_dp *dp)
{
    if (!dp->thread_running)
        return;
    __atomic_store_n(&dp->stop_flag, 1, __ATOMIC_RELEASE);
    hp_dp_wake(dp);
    pthread_join(dp->thread, NULL);
    __atomic_store_n(&dp->thread_running, 0, __ATOMIC_RELEASE);
}

/* ---- frames from the slow path ------------------------------------------------------------ */

int hp_dp_inject(hp_dp *dp, int port, const uint8_t *frame, uint32_t len, const uint8_t *vnet_hdr)
{
    int rc;
    dp_lock(dp);
    if (port < 0 || (uint32_t)port >= dp->n_ports || dp->ports[port].removed) {
        dp->drops[HP_R_BAD_PORT]++;
        rc = -EINVAL;
        goto out;
    }
    hp_ring *r = dp->ports[port].ring;
    rc = hp_ring_tx_copy(r, vnet_hdr, frame, len);
    if (rc == -ENOBUFS) {
        hp_ring_tx_flush(r);
        rc = hp_ring_tx_copy(r, vnet_hdr, frame, len);
    }
    if (rc < 0) {
        dp->counters[HP_DP_C_INJECT_FAILED]++;
        goto out;
    }
    dp->counters[HP_DP_C_INJECTED]++;
    rc = hp_ring_tx_flush(r);
out:
    dp_unlock(dp);
    return rc;
}

int hp_dp_input(hp_dp *dp, int port, const uint8_t *frame, uint32_t len,
                const uint8_t *vnet_hdr, hp_result *result)
{
    if (len + VNET_LEN > HP_RING_FRAME_SIZE)
        return -EMSGSIZE;
    dp_lock(dp);
    if (port < 0 || (uint32_t)port >= dp->n_ports || dp->ports[port].removed) {
        dp_unlock(dp);
        return -EINVAL;
    }
    uint8_t *f = dp->scratch;
    if (vnet_hdr)
        memcpy(f, vnet_hdr, VNET_LEN);
    else
        memset(f, 0, VNET_LEN);
    memcpy(f + VNET_LEN, frame, len);
    uint32_t flen = len + VNET_LEN;
    hp_dp_port *in = &dp->ports[port];
    int dir = in->role == HP_DP_INSIDE ? HP_DIR_OUT : HP_DIR_IN;
    hp_result res;
    hp_nat_translate(dp->nat, &f, &flen, 1, dir, in->eni, 1, dp_now(dp), &res);
    if (res.verdict == HP_FORWARD)
        forward(dp, (uint16_t)port, f, flen, &res);
    else if (res.verdict == HP_PUNT)
        punt(dp, (uint16_t)port, HP_DP_PORT_NONE, res.reason, res.conn, f, flen);
    flush_dirty(dp);
    int punted = dp->punted;
    dp->punted = 0;
    dp_unlock(dp);
    if (punted)
        punt_notify(dp);
    if (result)
        *result = res;
    return res.verdict;
}

void hp_dp_update_stats(hp_dp *dp)
{
    dp_lock(dp);
    for (uint32_t i = 0; i < dp->n_ports; i++)
        hp_ring_update_stats(dp->ports[i].ring);
    dp_unlock(dp);
}

uint32_t hp_dp_ports_view(hp_dp *dp, hp_dp_port_view *out, uint32_t max)
{
    dp_lock(dp);
    uint32_t n = dp->n_ports < max ? dp->n_ports : max;
    for (uint32_t i = 0; i < n; i++) {
        hp_ring *r = dp->ports[i].ring;
        hp_ring_update_stats(r);
        out[i].port = dp->ports[i];
        out[i].st = r->st;
        out[i].rx_nr = r->rx_nr;
        out[i].tx_nr = r->tx_nr;
    }
    dp_unlock(dp);
    return n;
}
