/* Frame parsing, bounds checks and incremental checksum rewriting (RFC 1624). */
#ifndef HP_PACKET_H
#define HP_PACKET_H

#include "hp_flow.h"

#define HP_VNET_HDR_LEN 10
#define HP_VNET_F_NEEDS_CSUM 1
#define HP_GSO_UDP_L4 5

typedef struct hp_vnet_hdr {
    uint8_t flags, gso_type;
    uint16_t hdr_len, gso_size, csum_start, csum_offset;   /* little endian on the wire */
} __attribute__((packed)) hp_vnet_hdr;

enum { HP_TCP_FIN = 1, HP_TCP_SYN = 2, HP_TCP_RST = 4, HP_TCP_PSH = 8, HP_TCP_ACK = 16 };

/* What the parser learned about a frame. Offsets count from the Ethernet header. */
typedef struct hp_pkt {
    uint8_t *eth;
    hp_vnet_hdr *vnet;           /* NULL unless the batch carries virtio-net headers */
    uint32_t len;                /* bytes from eth */
    uint32_t l3len;              /* IP total length */
    uint16_t l3, l4, l4hdr;      /* l4hdr: TCP data offset * 4, or 8 for UDP */
    uint8_t family, proto, tcp_flags;
    uint8_t partial_csum;        /* the L4 checksum is a partial (pseudo-header) sum */
    hp_flow_key key;
} hp_pkt;

/* Parses and checks a frame (docs/semantics.md section 1, steps 1-17). Returns HP_R_NONE when
 * the frame is TCP or UDP ready for the NAT, or the reason to drop or punt it. */
int hp_parse(uint8_t *frame, uint32_t len, int vnet, hp_pkt *pkt);

/* Whether a reason from hp_parse means punt (slow path) rather than drop. */
int hp_reason_is_punt(int reason);

/* RFC 1624 eq. 3 over 16-bit words in network order. */
uint16_t hp_csum_replace(uint16_t check, const uint8_t *old_bytes, const uint8_t *new_bytes,
                         size_t n_bytes);
/* Ones' complement sum of a buffer, folded, not inverted. */
uint16_t hp_csum_fold_sum(const uint8_t *data, size_t len, uint32_t initial);

/* Rewrites the source (OUT) or destination (IN) address and port, decrements TTL / hop
 * limit and fixes every checksum. addr is 4 or 16 bytes as the family says. */
void hp_rewrite(hp_pkt *pkt, int dir, const uint8_t *addr, uint16_t port);
/* The same, with the TTL / hop limit left alone when dec_ttl is 0 (a hairpinned frame's
 * second pass through the NAT). */
void hp_rewrite_ex(hp_pkt *pkt, int dir, const uint8_t *addr, uint16_t port, int dec_ttl);

/* Number of wire packets and bytes the frame stands for (GSO frames are several). */
void hp_pkt_wire_size(const hp_pkt *pkt, uint32_t *packets, uint64_t *bytes);

static inline uint16_t hp_be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline void hp_put_be16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }

#endif
