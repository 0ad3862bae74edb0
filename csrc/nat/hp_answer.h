/* Fast, visible refusals (docs/semantics.md section 13): a new connection refused for lack of
 * resources is answered at once, in place of the frame that asked, rate-limited; idle RSTs
 * (section 9.2) share the budgets' rules. */
#ifndef HP_ANSWER_H
#define HP_ANSWER_H

#include "hp_nat.h"
#include "hp_reject.h"
#include "hp_flow.h"

#define HP_REFUSAL_PER_S 1000
#define HP_REFUSAL_BURST 100
#define HP_RST_PER_S 1000       /* idle RSTs (section 9.2), per function too */
#define HP_RST_BURST 100

/* Turns a refused datagram into the ICMP destination unreachable, administratively prohibited
 * (RFC 5508 REQ-8: type 3 code 13; ICMPv6 type 1 code 1) from its destination back to its
 * source, quoting as much of it as fits in the frame (its IP header and first 8 bytes of
 * payload at least). Returns 0, or -1 when the frame is too short for that (unchanged). */
int hp_unreach_build(hp_pkt *pkt);

/* The bucket an answer to pkt (rst: an idle RST, else a refusal) is charged to: its sending
 * function's own, made with the limits of the NAT's bucket (nat->rst_rate, refusal_rate) at
 * its first use or when those changed; the NAT's own for a source of no function. */
hp_rate *hp_police_answer_rate(hp_nat *nat, const hp_pkt *pkt, int rst);

/* After the NAT refused a new connection with reason (FUNCTION_LIMIT, TABLE_FULL): a TCP SYN
 * becomes a RST (hp_rst_build), a UDP datagram an ICMP error, sent back to the inside port
 * (res FORWARD, port 0, the reason kept) while the function's refusal budget allows. */
void hp_nat_refusal(hp_nat *nat, hp_pkt *pkt, uint64_t now_ms, hp_result *res);

#endif
