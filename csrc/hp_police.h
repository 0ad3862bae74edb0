/* Fast, visible refusals (docs/semantics.md section 12): a new connection refused for lack of
 * resources is answered at once, in place of the frame that asked, rate-limited. */
#ifndef HP_POLICE_H
#define HP_POLICE_H

#include "hp_nat.h"

#define HP_REFUSAL_PER_S 1000
#define HP_REFUSAL_BURST 100

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
