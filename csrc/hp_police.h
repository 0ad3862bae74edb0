/* Fast, visible refusals (docs/semantics.md section 13): a new connection refused for lack of
 * resources is answered at once, in place of the frame that asked, rate-limited. */
#ifndef HP_POLICE_H
#define HP_POLICE_H

#include "hp_nat.h"
#include "hp_reject.h"

#define HP_REFUSAL_PER_S 1000
#define HP_REFUSAL_BURST 100
#define HP_PUNT_PER_S 200        /* punts per second of one reason from one port ... */
#define HP_PUNT_BURST 100        /* ... and at once */
#define HP_POLICE_PORTS 64       /* = HP_DP_MAX_PORTS */
/* NEIGH_MISS punts are frames of tracked connections waiting for ARP / NDP: the slow path
 * queues them (bounded per next hop) and sends them once resolved. A cold neighbour on a busy
 * port (many new flows while a loaded slow path resolves it) punts hundreds at once, so they get a bucket of their own this big, at least; a flood of them still costs
 * the slow path no more than this a second and leaves the other reasons' buckets alone. */
#define HP_NEIGH_MISS_PER_S 2000
#define HP_NEIGH_MISS_BURST 512       /* half a punt buffer side: ARP keeps room */

/* A token bucket per (port, punt reason): the slow path gets at most so many frames of a kind
 * from a port, whatever floods it; the rest is dropped in C and counted by reason. */
typedef struct hp_punt_police {
    hp_rate rate[HP_POLICE_PORTS][HP_R_COUNT];
    uint64_t policed[HP_R_COUNT];
} hp_punt_police;

/* Every (port, reason) bucket at per_s and burst; NEIGH_MISS at least at its own limits. */
void hp_police_init(hp_punt_police *p, uint32_t per_s, uint32_t burst);
/* Whether a frame of reason from port may be punted now; counts it in policed when not. */
static inline int hp_police_punt(hp_punt_police *p, uint32_t port, int reason, uint64_t now_ms)
{
    if (port >= HP_POLICE_PORTS || reason < 0 || reason >= HP_R_COUNT)
        return 1;
    if (hp_rate_take(&p->rate[port][reason], now_ms))
        return 1;
    p->policed[reason]++;
    return 0;
}

/* Turns a refused datagram into the ICMP destination unreachable, administratively prohibited
 * (RFC 5508 REQ-8: type 3 code 13; ICMPv6 type 1 code 1) from its destination back to its
 * source, quoting as much of it as fits in the frame (its IP header and first 8 bytes of
 * payload at least). Returns 0, or -1 when the frame is too short for that (unchanged). */
int hp_unreach_build(hp_pkt *pkt);

/* After the NAT refused a new connection with reason (FUNCTION_LIMIT, TABLE_FULL): a TCP SYN
 * becomes a RST (hp_rst_build), a UDP datagram an ICMP error, sent back to the inside port
 * (res FORWARD, port 0, the reason kept) while nat->refusal_rate allows. */
void hp_nat_refusal(hp_nat *nat, hp_pkt *pkt, uint64_t now_ms, hp_result *res);

#endif
