/* AF_PACKET TPACKET_V2 rings with virtio-net headers. See hp_ring.h. */
#define _GNU_SOURCE
#include "hp_ring.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef PACKET_QDISC_BYPASS
#define PACKET_QDISC_BYPASS 20
#endif
#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23
#endif

#define HP_VNET_LEN 10
#define SLL_OFF TPACKET_ALIGN(sizeof(struct tpacket2_hdr))

#ifndef PACKET_COPY_THRESH
#define PACKET_COPY_THRESH 7
#endif

#define TX_PER_BLOCK (HP_RING_BLOCK_SIZE / HP_RING_FRAME_SIZE)
#define RX_PER_BLOCK (HP_RING_BLOCK_SIZE / HP_RING_RX_SLOT_SIZE)
_Static_assert(HP_RING_BLOCK_SIZE % HP_RING_RX_SLOT_SIZE == 0, "rx slots fill their blocks");

/* Copied frames wait in the socket's receive queue: room for a batch of GSO super-frames
 * (their skbs' true size is well above 64 KB). When it is full the kernel cuts the frame short
 * instead, and rx_peek counts it as truncated. */
#define COPY_RCVBUF (32u << 20)

/* Frames never straddle blocks: frame i is in block i / per_block. */
static inline size_t slot_off(uint32_t i, uint32_t per_block, uint32_t size)
{
    return (size_t)(i / per_block) * HP_RING_BLOCK_SIZE + (size_t)(i % per_block) * size;
}

static inline struct tpacket2_hdr *rx_hdr(const hp_ring *r, uint32_t i)
{
    return (struct tpacket2_hdr *)(r->rx + slot_off(i, RX_PER_BLOCK, HP_RING_RX_SLOT_SIZE));
}

static inline struct tpacket2_hdr *tx_hdr(const hp_ring *r, uint32_t i)
{
    return (struct tpacket2_hdr *)(r->tx + slot_off(i, TX_PER_BLOCK, HP_RING_FRAME_SIZE));
}

static inline uint32_t status_load(const struct tpacket2_hdr *h)
{
    return __atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE);
}

static inline void status_store(struct tpacket2_hdr *h, uint32_t v)
{
    __atomic_store_n(&h->tp_status, v, __ATOMIC_RELEASE);
}

/* The socket of hp_ring_tx_send: bound with protocol 0, so nothing is ever queued to it. A
 * packet socket with a tx ring sends only its ring, whatever buffer send() is given. */
static int open_send_socket(hp_ring *r, int qdisc_bypass, int sndbuf)
{
    int one = 1;
    r->send_fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
    if (r->send_fd < 0)
        return -1;
    if (r->vnet && setsockopt(r->send_fd, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof(one)) < 0)
        return -1;
    if (qdisc_bypass)
        (void)setsockopt(r->send_fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one));
    if (setsockopt(r->send_fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof(sndbuf)) < 0)
        (void)setsockopt(r->send_fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    struct sockaddr_ll sll;
    memset(&sll, 0, sizeof(sll));
    sll.sll_family = AF_PACKET;
    sll.sll_ifindex = r->ifindex;
    return bind(r->send_fd, (struct sockaddr *)&sll, sizeof(sll));
}

hp_ring *hp_ring_open(int ifindex, uint32_t rx_frames, uint32_t tx_frames, int vnet,
                      int qdisc_bypass)
{
    int one = 1, err;
    hp_ring *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->fd = r->send_fd = -1;
    r->ifindex = ifindex;
    r->vnet = vnet ? 1 : 0;
    r->frame_size = HP_RING_FRAME_SIZE;

    if (rx_frames == 0)
        rx_frames = HP_RING_DEFAULT_FRAMES;
    if (tx_frames == 0)
        tx_frames = HP_RING_DEFAULT_TX_FRAMES;
    if (rx_frames > (1u << 20) || tx_frames > (1u << 20)) {
        errno = EINVAL;
        goto fail;
    }
    uint32_t rx_blocks = (rx_frames + RX_PER_BLOCK - 1) / RX_PER_BLOCK;
    uint32_t tx_blocks = (tx_frames + TX_PER_BLOCK - 1) / TX_PER_BLOCK;
    r->rx_nr = rx_blocks * RX_PER_BLOCK;
    r->tx_nr = tx_blocks * TX_PER_BLOCK;
    /* Untouched until a big frame arrives: pages come as the copy path first uses them. */
    r->copy = malloc((size_t)HP_RING_COPY_BUFS * HP_RING_FRAME_SIZE);
    if (!r->copy)
        goto fail;

    /* Protocol 0: nothing is queued to the socket before the rings exist and bind() runs. */
    r->fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
    if (r->fd < 0)
        goto fail;
    int ver = TPACKET_V2;
    if (setsockopt(r->fd, SOL_PACKET, PACKET_VERSION, &ver, sizeof(ver)) < 0)
        goto fail;
    /* Before the rings: the kernel refuses PACKET_VNET_HDR once a ring exists. */
    if (r->vnet && setsockopt(r->fd, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof(one)) < 0)
        goto fail;
    /* A malformed tx frame is skipped instead of stopping the ring. */
    if (setsockopt(r->fd, SOL_PACKET, PACKET_LOSS, &one, sizeof(one)) < 0)
        goto fail;
    /* Optional: our own transmissions and the local stack's are not wanted on rx. */
    (void)setsockopt(r->fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof(one));
    if (qdisc_bypass)
        (void)setsockopt(r->fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one));
    /* tx frames stay charged to the socket until the receiver is done with them. */
    size_t tx_bytes = (size_t)r->tx_nr * r->frame_size;
    int sndbuf = (int)(tx_bytes > (1u << 30) ? (1u << 30) : tx_bytes);
    if (setsockopt(r->fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof(sndbuf)) < 0)
        (void)setsockopt(r->fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    /* Frames bigger than an rx slot go whole to the receive queue (see hp_ring.h). */
    if (setsockopt(r->fd, SOL_PACKET, PACKET_COPY_THRESH, &one, sizeof(one)) < 0)
        goto fail;
    int rcvbuf = COPY_RCVBUF;
    if (setsockopt(r->fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf)) < 0)
        (void)setsockopt(r->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));

    struct tpacket_req req = {
        .tp_block_size = HP_RING_BLOCK_SIZE,
        .tp_block_nr = rx_blocks,
        .tp_frame_size = HP_RING_RX_SLOT_SIZE,
        .tp_frame_nr = r->rx_nr,
    };
    if (setsockopt(r->fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof(req)) < 0)
        goto fail;
    req.tp_block_nr = tx_blocks;
    req.tp_frame_nr = r->tx_nr;
    req.tp_frame_size = HP_RING_FRAME_SIZE;
    if (setsockopt(r->fd, SOL_PACKET, PACKET_TX_RING, &req, sizeof(req)) < 0)
        goto fail;

    /* One mapping: the rx ring's blocks, then the tx ring's. */
    r->map_len = (size_t)(rx_blocks + tx_blocks) * HP_RING_BLOCK_SIZE;
    r->map = mmap(NULL, r->map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, 0);
    if (r->map == MAP_FAILED) {
        r->map = NULL;
        goto fail;
    }
    r->rx = r->map;
    r->tx = r->map + (size_t)rx_blocks * HP_RING_BLOCK_SIZE;
    r->tx_data_off = TPACKET2_HDRLEN - sizeof(struct sockaddr_ll);

    struct sockaddr_ll sll;
    memset(&sll, 0, sizeof(sll));
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(ETH_P_ALL);
    sll.sll_ifindex = ifindex;
    if (bind(r->fd, (struct sockaddr *)&sll, sizeof(sll)) < 0)
        goto fail;
    if (open_send_socket(r, qdisc_bypass, sndbuf) < 0)
        goto fail;
    return r;

fail:
    err = errno;
    hp_ring_close(r);
    errno = err;
    return NULL;
}

void hp_ring_close(hp_ring *r)
{
    if (!r)
        return;
    if (r->map)
        munmap(r->map, r->map_len);
    if (r->fd >= 0)
        close(r->fd);
    if (r->send_fd >= 0)
        close(r->send_fd);
    free(r->copy);
    free(r);
}

/* A slot marked TP_STATUS_COPY: its whole frame is the next one on the receive queue. Reads it
 * into a copy buffer (keep) or drops it; returns its length, 0 when it cannot be had. */
static uint32_t take_copy(hp_ring *r, int keep, uint8_t **data)
{
    uint8_t *buf = r->copy + (size_t)r->copy_held * HP_RING_FRAME_SIZE;
    ssize_t got = recv(r->fd, keep ? buf : NULL, keep ? HP_RING_FRAME_SIZE : 0,
                       MSG_DONTWAIT | (keep ? 0 : MSG_TRUNC));
    if (got <= 0 || !keep)
        return 0;
    r->copy_held++;
    r->st.rx_copied++;
    *data = buf;
    return (uint32_t)got;
}

uint32_t hp_ring_rx_peek(hp_ring *r, uint8_t **data, uint32_t *lens, uint32_t max)
{
    uint32_t n = 0;
    uint32_t idx = r->rx_head + r->rx_held;
    if (idx >= r->rx_nr)
        idx -= r->rx_nr;
    while (n < max && r->rx_held < r->rx_nr) {
        struct tpacket2_hdr *h = rx_hdr(r, idx);
        uint32_t status = status_load(h);
        if (!(status & TP_STATUS_USER))
            break;
        int copied = (status & TP_STATUS_COPY) != 0;
        if (copied && r->copy_held >= HP_RING_COPY_BUFS)
            break;                      /* the caller releases, then peeks again */
        r->rx_held++;
        if (++idx == r->rx_nr)
            idx = 0;
        /* Warm the next slot's header while this one is inspected. */
        __builtin_prefetch(rx_hdr(r, idx));
        const struct sockaddr_ll *sll = (const struct sockaddr_ll *)((uint8_t *)h + SLL_OFF);
        int outgoing = sll->sll_pkttype == PACKET_OUTGOING;
        int vlan = (status & TP_STATUS_VLAN_VALID) != 0;
        uint8_t *p = (uint8_t *)h + h->tp_mac;
        uint32_t len = h->tp_snaplen;
        int whole = len == h->tp_len;
        if (copied) {
            /* Read (or drop) the queued frame whatever the slot says, so the queue stays in
             * step with the ring. */
            len = take_copy(r, !outgoing && !vlan, &p);
            whole = len != 0;
        } else if (r->vnet) {
            p -= HP_VNET_LEN;
            len += HP_VNET_LEN;
        }
        if (outgoing) {
            r->st.rx_outgoing++;
            continue;
        }
        if (!whole || vlan) {
            /* Cut short (the copy path was full), or a VLAN tag the kernel took off: neither
             * is ours. */
            r->st.rx_truncated++;
            continue;
        }
        __builtin_prefetch(p);
        __builtin_prefetch(p + 64);
        data[n] = p;
        lens[n] = len;
        r->st.rx_bytes += len;
        n++;
    }
    r->st.rx_frames += n;
    return n;
}

void hp_ring_rx_release(hp_ring *r)
{
    uint32_t idx = r->rx_head;
    for (uint32_t i = 0; i < r->rx_held; i++) {
        status_store(rx_hdr(r, idx), TP_STATUS_KERNEL);
        if (++idx == r->rx_nr)
            idx = 0;
    }
    r->rx_head = idx;
    r->rx_held = 0;
    r->copy_held = 0;
}

int hp_ring_rx_ready(const hp_ring *r)
{
    uint32_t idx = r->rx_head + r->rx_held;
    if (idx >= r->rx_nr)
        idx -= r->rx_nr;
    if (r->rx_held >= r->rx_nr)
        return 0;
    return (status_load(rx_hdr(r, idx)) & TP_STATUS_USER) != 0;
}

uint8_t *hp_ring_tx_slot(hp_ring *r)
{
    struct tpacket2_hdr *h = tx_hdr(r, r->tx_head);
    uint32_t status = status_load(h);
    if (status != TP_STATUS_AVAILABLE) {
        if (status == TP_STATUS_WRONG_FORMAT) {
            /* Only without PACKET_LOSS; the kernel stopped on it: reclaim the slot. */
            status_store(h, TP_STATUS_AVAILABLE);
        } else {
            r->st.tx_full++;
            return NULL;
        }
    }
    return (uint8_t *)h + r->tx_data_off;
}

void hp_ring_tx_commit(hp_ring *r, uint32_t len)
{
    struct tpacket2_hdr *h = tx_hdr(r, r->tx_head);
    h->tp_len = len;
    status_store(h, TP_STATUS_SEND_REQUEST);
    if (++r->tx_head == r->tx_nr)
        r->tx_head = 0;
    r->tx_queued++;
    r->st.tx_frames++;
    r->st.tx_bytes += len;
}

int hp_ring_tx_flush(hp_ring *r)
{
    if (!r->tx_queued)
        return 0;
    r->st.tx_sends++;
    ssize_t ret = send(r->fd, NULL, 0, MSG_DONTWAIT);
    int err = ret < 0 ? errno : 0;
    /* The kernel stops at the first frame it cannot send (socket buffer full, the peer's
     * backlog full) and leaves the rest queued: keep flushing until the newest is taken. */
    uint32_t last = r->tx_head ? r->tx_head - 1 : r->tx_nr - 1;
    if (status_load(tx_hdr(r, last)) == TP_STATUS_SEND_REQUEST)
        r->tx_queued = 1;
    else
        r->tx_queued = 0;
    if (err && err != EAGAIN && err != ENOBUFS && err != EINTR) {
        r->st.tx_errors++;
        return -err;
    }
    return 0;
}

int hp_ring_tx_copy(hp_ring *r, const uint8_t *vnet_hdr, const uint8_t *frame, uint32_t len)
{
    uint32_t hl = r->vnet ? HP_VNET_LEN : 0;
    if (len + hl > hp_ring_tx_max(r))
        return -EMSGSIZE;
    uint8_t *p = hp_ring_tx_slot(r);
    if (!p)
        return -ENOBUFS;
    if (hl) {
        if (vnet_hdr)
            memcpy(p, vnet_hdr, HP_VNET_LEN);
        else
            memset(p, 0, HP_VNET_LEN);
    }
    memcpy(p + hl, frame, len);
    hp_ring_tx_commit(r, len + hl);
    return 0;
}

int hp_ring_tx_send(hp_ring *r, const uint8_t *frame, uint32_t len)
{
    if (r->tx_queued) {
        hp_ring_tx_flush(r);
        if (r->tx_queued)
            return -EAGAIN;      /* sent now, the frame would overtake the ring's */
    }
    ssize_t sent = send(r->send_fd, frame, len, MSG_DONTWAIT);
    if (sent < 0) {
        int err = errno;
        if (err == EAGAIN || err == ENOBUFS || err == EINTR) {
            r->st.tx_full++;
            return -ENOBUFS;
        }
        r->st.tx_errors++;
        return -err;
    }
    r->st.tx_frames++;
    r->st.tx_direct++;
    r->st.tx_bytes += len;
    return 0;
}

void hp_ring_update_stats(hp_ring *r)
{
    struct tpacket_stats ts;
    socklen_t sl = sizeof(ts);
    if (getsockopt(r->fd, SOL_PACKET, PACKET_STATISTICS, &ts, &sl) == 0)
        r->st.rx_kernel_drops += ts.tp_drops;
}
