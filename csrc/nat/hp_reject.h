/* What the NAT refuses, made visible (docs/semantics.md section 9, docs/observability.md):
 * a bounded journal of rejected packets for flow-log REJECT records, per-ENI counters for the
 * NAT-gateway metrics, and the RST that answers a segment of a connection that idled out. */
#ifndef HP_REJECT_H
#define HP_REJECT_H

#include "hp_packet.h"

#define HP_ENI_NONE 0xFFFFu
#define HP_REJECT_RING 8192      /* records kept until read; more are counted and lost */

/* A rejected packet as the ENI saw it: 64 bytes. For an egress (security-group) denial src
 * is the function's address and sport its port: no NAT port was taken. */
typedef struct hp_reject {
    uint64_t ms;
    uint8_t src[16], dst[16];
    uint16_t sport, dport;
    uint16_t eni;
    uint16_t len;                /* bytes of the IP packet */
    uint8_t family, proto, tcp_flags, reason;
    uint8_t dir;                 /* HP_DIR_OUT: egress denial, HP_DIR_IN: unsolicited inbound */
    uint8_t pad[7];
} hp_reject;

typedef struct hp_reject_ring {
    hp_reject *rec;              /* HP_REJECT_RING records */
    uint32_t head, count;
} hp_reject_ring;

/* A token bucket in thousandths of a token: per_s tokens a second, at most burst. */
typedef struct hp_rate {
    uint64_t milli, last_ms;
    uint32_t per_s, burst;
} hp_rate;

/* NAT-gateway metrics of one ENI (the forwarding counters share the first cache line). */
typedef struct hp_eni_counters {
    uint64_t packets[2], bytes[2];   /* forwarded: [HP_DIR_OUT] to destinations, [HP_DIR_IN] back */
    uint64_t attempts[2];            /* [0] TCP, [1] UDP: connections created */
    uint64_t established[2];         /* TCP reached ESTABLISHED, UDP saw its first reply */
    uint64_t active[2];              /* live connections */
    uint64_t port_errors;            /* PORTS_EXHAUSTED on this (the group's newest) ENI */
    uint64_t idle_timeouts;          /* TCP connections that idled out before closing */
    uint64_t drops;                  /* frames dropped on its port, egress denials for it */
    uint64_t rst_sent;               /* RSTs answering a segment of its expired connection */
    uint64_t pad[2];
    uint64_t drop_reasons[HP_R_COUNT];   /* drops by reason (they add up to drops): only a
                                          * drop writes here, so it stays off the fast path */
} __attribute__((aligned(64))) hp_eni_counters;

void hp_reject_push(hp_reject_ring *ring, const hp_pkt *pkt, int dir, uint16_t eni, int reason,
                    uint64_t now_ms, uint64_t *overflow);
/* Moves up to max records, oldest first, into out; returns how many. */
uint32_t hp_reject_take(hp_reject_ring *ring, hp_reject *out, uint32_t max);

void hp_rate_init(hp_rate *r, uint32_t per_s, uint32_t burst);
/* Takes a token when one is there. */
int hp_rate_take(hp_rate *r, uint64_t now_ms);

/* Turns the parsed TCP segment into the RST that answers it (RFC 793 "Reset Generation"):
 * addresses, ports and MACs swapped; with ACK, seq = SEG.ACK and no ACK; without, seq 0 and
 * ACK SEG.SEQ + SEG.LEN; fresh IP header (no options or extension headers, TTL 64), full
 * checksums, no offload in the virtio-net header; bytes past it zeroed (the frame keeps its
 * length: the receiving stack trims to the IP length). */
void hp_rst_build(hp_pkt *pkt);

#endif
