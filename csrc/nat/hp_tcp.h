/* TCP tracking of a connection: valid flag combinations, window tracking after Linux's
 * nf_conntrack_proto_tcp.c (tcp_in_window, tcp_options, tcp_sack), the RST rule and the state
 * machine (docs/semantics.md 2.2 and 2.3). */
#ifndef HP_TCP_H
#define HP_TCP_H

#include "hp_conntrack.h"
#include "hp_packet.h"

#define HP_TCP_URG 32

/* Whether the flags are a combination a TCP stack sends (Linux's tcp_valid_flags): PSH, ECE
 * and CWR aside, one of SYN, SYN|ACK, RST, RST|ACK, FIN|ACK, ACK, each also with URG where
 * Linux allows it. Inline, as the next one: every TCP packet asks. */
static inline int hp_tcp_valid_flags(uint8_t flags)
{
    switch (flags & (HP_TCP_FIN | HP_TCP_SYN | HP_TCP_RST | HP_TCP_ACK | HP_TCP_URG)) {
    case HP_TCP_SYN: case HP_TCP_SYN | HP_TCP_URG: case HP_TCP_SYN | HP_TCP_ACK:
    case HP_TCP_RST: case HP_TCP_RST | HP_TCP_ACK:
    case HP_TCP_FIN | HP_TCP_ACK: case HP_TCP_FIN | HP_TCP_ACK | HP_TCP_URG:
    case HP_TCP_ACK: case HP_TCP_ACK | HP_TCP_URG:
        return 1;
    default:
        return 0;
    }
}

/* Whether this segment is a SYN that reopens a TIME_WAIT or CLOSE connection: the entry is
 * replaced by a new connection. */
static inline int hp_tcp_reopens(const hp_conn *c, int dir, uint8_t flags)
{
    return dir == HP_DIR_OUT && (flags & (HP_TCP_SYN | HP_TCP_ACK)) == HP_TCP_SYN &&
           (c->state == HP_S_TIME_WAIT || c->state == HP_S_CLOSE);
}

/* Whether the segment is one Linux ignores (its state table's sIG, passed without a look):
 * an ACK (no SYN, FIN or RST) from the reply side while the connection is in SYN_SENT, the
 * inside's SYN not answered yet. It is forwarded, and nothing of the connection changes. */
static inline int hp_tcp_ignored(const hp_conn *c, int dir, uint8_t flags)
{
    return dir == HP_DIR_IN && c->state == HP_S_SYN_SENT &&
           (flags & (HP_TCP_SYN | HP_TCP_ACK | HP_TCP_RST | HP_TCP_FIN)) == HP_TCP_ACK;
}

/* The window state of a new connection from its first SYN (Linux tcp_new): the inside's
 * side is known, the other not yet; the SYN then goes through hp_tcp_track as any segment. */
void hp_tcp_new(hp_tcp_win *w, const hp_pkt *pkt);

/* Checks a segment of connection c travelling in direction dir against the window state w
 * and, when it is acceptable, updates w. Returns HP_R_NONE, HP_R_TCP_OUT_OF_WINDOW or
 * HP_R_TCP_BAD_RST; a refused segment leaves w as it was. */
int hp_tcp_track(hp_tcp_win *w, const hp_conn *c, int dir, const hp_pkt *pkt);

/* The state after an accepted segment; may change c->flags. */
uint8_t hp_tcp_next_state(hp_conn *c, int dir, uint8_t flags);

#endif
