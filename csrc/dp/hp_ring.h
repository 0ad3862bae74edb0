/* Packet I/O on one interface: an AF_PACKET socket with an mmap'd TPACKET_V2 RX ring and TX
 * ring, bound to one ifindex. With vnet set, PACKET_VNET_HDR is on: every rx frame is preceded
 * by a 10-byte virtio-net header (GSO super-frames up to 64 KB, partial checksums), and every tx
 * frame starts with one.
 *
 * RX: small slots, many of them. A flood of small frames (pings, fragments, TTL 1) must find
 * room while the loop is not scheduled, so the rx ring counts slots, not bytes: 2 KB slots hold
 * every frame up to the MTU, and a bigger frame (a GSO super-frame) takes the kernel's copy path
 * (PACKET_COPY_THRESH): its slot is marked TP_STATUS_COPY and the whole frame waits on the
 * socket's receive queue, in the same order, where rx_peek reads it into a buffer of the ring's.
 * hp_ring_rx_peek() hands out pointers INTO the ring or into those buffers (to the virtio-net
 * header when vnet, else to the Ethernet header); they stay valid, and writable, until
 * hp_ring_rx_release(). Frames we sent ourselves (PACKET_OUTGOING) and truncated frames are
 * skipped and counted.
 *
 * TX: hp_ring_tx_slot() returns the data area of the next free slot (NULL when the ring is
 * full); write the frame (virtio-net header first when vnet) and hp_ring_tx_commit() its
 * length; hp_ring_tx_flush() hands everything committed to the kernel with one send(). */
#ifndef HP_RING_H
#define HP_RING_H

#include <stdint.h>
#include <stddef.h>

#define HP_RING_DEFAULT_FRAMES 2048      /* rx: absorbs the loop's scheduling hiccups */
#define HP_RING_DEFAULT_TX_FRAMES 128    /* tx: flushed every batch, freed as sent */
#define HP_RING_BLOCK_SIZE (1u << 20)
/* A tx slot (and a copy buffer) holds a 64 KB GSO super-frame with its headers: 15 in every
 * 1 MB block. */
#define HP_RING_FRAME_SIZE 69904u
/* An rx slot holds a frame up to 1972 bytes after its headers: 512 in every 1 MB block. */
#define HP_RING_RX_SLOT_SIZE 2048u
/* Copied (big) frames handed out between two releases; a peek stops at this many. */
#define HP_RING_COPY_BUFS 64

typedef struct hp_ring_stats {
    uint64_t rx_frames, rx_bytes;       /* frames handed out by rx_peek */
    uint64_t rx_outgoing;               /* PACKET_OUTGOING frames skipped */
    uint64_t rx_truncated;              /* frames cut short (copy path refused), skipped */
    uint64_t rx_copied;                 /* big frames read from the socket (copy path) */
    uint64_t rx_kernel_drops;           /* ring full in the kernel (PACKET_STATISTICS) */
    uint64_t tx_frames, tx_bytes;       /* frames committed */
    uint64_t tx_full;                   /* tx_slot found no free slot */
    uint64_t tx_sends, tx_errors;       /* send() calls, and those that failed (not EAGAIN) */
    uint64_t tx_direct;                 /* of tx_frames: sent from their buffer (tx_send) */
} hp_ring_stats;

typedef struct hp_ring {
    int fd;
    int send_fd;                        /* no rings, receives nothing: hp_ring_tx_send */
    int ifindex;
    int vnet;
    uint32_t frame_size;                /* tx slot size */
    uint32_t rx_nr, tx_nr;              /* frames in each ring */
    uint8_t *map;
    size_t map_len;
    uint8_t *rx, *tx;                   /* first slot of each ring */
    uint32_t rx_head;                   /* oldest slot not yet released */
    uint32_t rx_held;                   /* slots consumed by peeks since the last release */
    uint32_t tx_head;                   /* next slot to fill */
    uint32_t tx_queued;                 /* committed since the last flush */
    uint32_t tx_data_off;               /* slot start -> frame data */
    uint32_t copy_held;                 /* copy buffers handed out since the last release */
    uint8_t *copy;                      /* HP_RING_COPY_BUFS buffers of HP_RING_FRAME_SIZE */
    hp_ring_stats st;
} hp_ring;

/* Opens the socket and its rings on ifindex; rx_frames / tx_frames slots (0: defaults), each
 * rounded up to a whole number of blocks. qdisc_bypass: PACKET_QDISC_BYPASS on tx. Returns
 * NULL with errno set. */
hp_ring *hp_ring_open(int ifindex, uint32_t rx_frames, uint32_t tx_frames, int vnet,
                      int qdisc_bypass);
void hp_ring_close(hp_ring *r);

static inline int hp_ring_fd(const hp_ring *r) { return r->fd; }

/* Up to max ready frames, oldest first. data[i] points into the ring, lens[i] counts the
 * virtio-net header when vnet. Returns the number of frames. A second peek before the release
 * continues after the frames already handed out. */
uint32_t hp_ring_rx_peek(hp_ring *r, uint8_t **data, uint32_t *lens, uint32_t max);
/* Gives every slot handed out (or skipped) since the last release back to the kernel. */
void hp_ring_rx_release(hp_ring *r);
/* Whether a frame is waiting (without consuming it). */
int hp_ring_rx_ready(const hp_ring *r);

/* The data area of the next free tx slot, or NULL when the ring is full. */
uint8_t *hp_ring_tx_slot(hp_ring *r);
/* Bytes a tx slot can hold (virtio-net header included). */
static inline uint32_t hp_ring_tx_max(const hp_ring *r) { return r->frame_size - r->tx_data_off; }
/* Queues the slot returned by the last hp_ring_tx_slot() with len bytes. */
void hp_ring_tx_commit(hp_ring *r, uint32_t len);
/* One send() for everything committed. Returns 0, or -errno when the send failed. */
int hp_ring_tx_flush(hp_ring *r);
/* Copies one frame into the tx ring (a zeroed virtio-net header first when vnet and
 * vnet_hdr is NULL) and commits it; no flush. Returns 0, -ENOBUFS when full, -EMSGSIZE. */
int hp_ring_tx_copy(hp_ring *r, const uint8_t *vnet_hdr, const uint8_t *frame, uint32_t len);

/* Sends one frame (virtio-net header first when vnet) from where it is, by its own send()
 * on a socket without rings: the kernel copies it once into an skb of its own. A tx-ring
 * frame costs a copy into the ring and, for a frame bigger than its linear part, a second one
 * when the skb crosses into another namespace (its ring pages cannot go along). The ring is
 * flushed first, so frames leave in order. Returns 0, -EAGAIN when the ring still holds
 * frames the kernel could not take (send through the ring instead), -ENOBUFS when the socket
 * buffer is full, or -errno. */
int hp_ring_tx_send(hp_ring *r, const uint8_t *frame, uint32_t len);

/* Refreshes st.rx_kernel_drops from PACKET_STATISTICS (which resets the kernel's count). */
void hp_ring_update_stats(hp_ring *r);

#endif
