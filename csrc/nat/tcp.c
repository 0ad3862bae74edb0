/* TCP tracking (docs/semantics.md 2.2, 2.3): Linux's tcp_in_window without its liberal modes
 * and retransmission counting; RSTs follow RFC 5961 section 3 (exact sequence number). */
#include "hp_tcp.h"

#include <string.h>

#define TCP_MAX_WSCALE 14
#define MAXACKWINCONST 66000    /* Linux: the ack may lag td_end by this much at least */

enum { OPT_EOL = 0, OPT_NOP = 1, OPT_WINDOW = 3, OPT_SACK_PERM = 4, OPT_SACK = 5 };

static inline uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Sequence number order, modulo 2^32. */
static inline int before(uint32_t a, uint32_t b) { return (int32_t)(a - b) < 0; }
static inline int after(uint32_t a, uint32_t b) { return before(b, a); }

/* The next well-formed option at or after *i, walking as Linux does: EOL ends, NOP is one
 * byte, any other needs a length >= 2 that fits, else the walk stops. Returns 0 at the end,
 * else 1 with *at the option's offset, and *i past it. */
static int next_option(const uint8_t *opt, uint32_t len, uint32_t *i, uint32_t *at)
{
    while (*i < len && opt[*i] == OPT_NOP)
        (*i)++;
    if (*i >= len || opt[*i] == OPT_EOL || len - *i < 2)
        return 0;
    uint8_t size = opt[*i + 1];
    if (size < 2 || size > len - *i)
        return 0;
    *at = *i;
    *i += size;
    return 1;
}

/* Window scale and SACK-permitted from a SYN's options (Linux tcp_options). */
static void parse_options(const uint8_t *opt, uint32_t len, hp_tcp_dir *d)
{
    if (len == 0)
        return;
    d->scale = 0;
    d->flags = 0;
    for (uint32_t i = 0, at; next_option(opt, len, &i, &at);) {
        uint8_t kind = opt[at], size = opt[at + 1];
        if (kind == OPT_SACK_PERM && size == 2) {
            d->flags |= HP_TW_SACK_PERM;
        } else if (kind == OPT_WINDOW && size == 3) {
            d->scale = opt[at + 2] < TCP_MAX_WSCALE ? opt[at + 2] : TCP_MAX_WSCALE;
            d->flags |= HP_TW_WSCALE;
        }
    }
}

/* The highest right edge of the first SACK option's blocks, if after *sack (Linux tcp_sack). */
static void parse_sack(const uint8_t *opt, uint32_t len, uint32_t *sack)
{
    for (uint32_t i = 0, at; next_option(opt, len, &i, &at);) {
        uint8_t size = opt[at + 1];
        if (opt[at] == OPT_SACK && size >= 10 && (size - 2) % 8 == 0) {
            for (uint32_t b = 2; b < size; b += 8) {
                uint32_t right = be32(opt + at + b + 4);
                if (after(right, *sack))
                    *sack = right;
            }
            return;
        }
    }
}

/* The segment's fields the tracking reads. */
typedef struct seg {
    uint32_t seq, ack, end, win;
    uint8_t flags;
    const uint8_t *opt;
    uint32_t optlen;
} seg;

static inline void read_segment(const hp_pkt *pkt, seg *s)
{
    const uint8_t *th = pkt->eth + pkt->l4;
    uint32_t datalen = pkt->l3len - (uint32_t)(pkt->l4 - pkt->l3) - pkt->l4hdr;
    s->flags = pkt->tcp_flags;
    s->seq = be32(th + 4);
    s->ack = be32(th + 8);
    s->win = hp_be16(th + 14);
    s->end = s->seq + datalen + !!(s->flags & HP_TCP_SYN) + !!(s->flags & HP_TCP_FIN);
    s->opt = th + 20;
    s->optlen = pkt->l4hdr - 20u;
}

/* A side's window scale; never past RFC 7323's 14, even read from a damaged state file. */
static inline uint8_t scale_of(const hp_tcp_dir *d)
{
    return d->scale < TCP_MAX_WSCALE ? d->scale : TCP_MAX_WSCALE;
}

/* Linux tcp_in_window: 1 and w updated when acceptable, else 0 and w unchanged. */
static int in_window(hp_tcp_win *w, uint8_t state, uint8_t conn_flags, int dir, const seg *s)
{
    hp_tcp_dir *snd = &w->dir[dir], *rcv = &w->dir[!dir];
    uint32_t ack = s->ack, sack = s->ack, win = s->win;
    int syn = s->flags & HP_TCP_SYN, has_ack = s->flags & HP_TCP_ACK;

    if (rcv->flags & HP_TW_SACK_PERM)
        parse_sack(s->opt, s->optlen, &sack);
    /* A side seen for the first time, or a SYN sent again, changes the state before the
     * check: then work on a copy, kept only if the segment passes. Every other segment (the
     * established flow's) is checked in place: nothing is written before the check. */
    hp_tcp_win t;
    int first = snd->td_maxwin == 0;
    /* Linux since 2022 (nf_conntrack_proto_tcp.c, "re-init for syn packets only"): only a
     * SYN, from either side, in SYN_SENT (not after a simultaneous open's SYN) or SYN_RECV,
     * reaching past this side's end re-initialises it; any other segment is checked. */
    int restart = !first && syn && after(s->end, snd->td_end) &&
        ((state == HP_S_SYN_SENT && !(conn_flags & HP_F_SYN_REPLY)) || state == HP_S_SYN_RECV);
    if (first || restart) {
        t = *w;
        snd = &t.dir[dir];
        rcv = &t.dir[!dir];
    }
    if (first) {
        if (syn) {                          /* the first SYN (or SYN|ACK) of this side */
            snd->td_end = snd->td_maxend = s->end;
            snd->td_maxwin = win ? win : 1;
            parse_options(s->opt, s->optlen, snd);
            /* RFC 7323: window scaling only when both sides offer it. */
            if (!((snd->flags & HP_TW_WSCALE) && (rcv->flags & HP_TW_WSCALE)))
                snd->scale = rcv->scale = 0;
            if (!has_ack) {
                *w = t;
                return 1;
            }
        } else {                            /* this side's history is unknown: adopt it */
            snd->td_end = s->end;
            uint32_t swin = win << scale_of(snd);
            snd->td_maxwin = swin ? swin : 1;
            snd->td_maxend = s->end + snd->td_maxwin;
            if (rcv->td_maxwin == 0)
                rcv->td_end = rcv->td_maxend = sack;
            else if (sack == rcv->td_end + 1)
                rcv->td_end++;              /* the answer to a keepalive */
        }
    } else if (restart) {
        /* A SYN (or SYN|ACK) sent again with a new initial sequence number (RFC 793 restart):
         * this side starts again as with its first SYN (Linux tcp_init_sender). */
        snd->td_end = snd->td_maxend = s->end;
        snd->td_maxwin = win ? win : 1;
        parse_options(s->opt, s->optlen, snd);
        if (dir == HP_DIR_IN) {
            if (!((snd->flags & HP_TW_WSCALE) && (rcv->flags & HP_TW_WSCALE)))
                snd->scale = rcv->scale = 0;
            if (!has_ack) {
                *w = t;
                return 1;
            }
        }
    }
    if (!has_ack)
        ack = sack = rcv->td_end;

    uint32_t maxackwin = snd->td_maxwin > MAXACKWINCONST ? snd->td_maxwin : MAXACKWINCONST;
    int in_recv_win = !rcv->td_maxwin || after(s->end, snd->td_end - rcv->td_maxwin - 1);
    if (!(before(s->seq, snd->td_maxend + 1) && in_recv_win &&
          before(sack, rcv->td_end + 1) && after(sack, rcv->td_end - maxackwin - 1)))
        return 0;

    if (!syn)
        win <<= scale_of(snd);
    uint32_t swin = win + (sack - ack);
    if (snd->td_maxwin < swin)
        snd->td_maxwin = swin;
    if (after(s->end, snd->td_end))
        snd->td_end = s->end;
    if (has_ack) {
        if (!(snd->flags & HP_TW_MAXACK_SET)) {
            snd->td_maxack = ack;
            snd->flags |= HP_TW_MAXACK_SET;
        } else if (after(ack, snd->td_maxack)) {
            snd->td_maxack = ack;
        }
    }
    if (rcv->td_maxwin != 0 && after(s->end, snd->td_maxend))
        rcv->td_maxwin += s->end - snd->td_maxend;
    if (after(sack + win, rcv->td_maxend - 1)) {
        rcv->td_maxend = sack + win;
        if (win == 0)
            rcv->td_maxend++;
    }
    if (first || restart)
        *w = t;
    return 1;
}

/* RFC 5961 3.2 seen from the middle: an RST closes only when its sequence number is exactly
 * the one the receiver expects: the sender's next (td_end) or the receiver's last ack. An RST
 * from a side not seen yet answers the SYN and must acknowledge it exactly (RFC 793). */
static int rst_acceptable(const hp_tcp_win *w, int dir, const seg *s)
{
    const hp_tcp_dir *snd = &w->dir[dir], *rcv = &w->dir[!dir];
    if (snd->td_maxwin == 0)
        return (s->flags & HP_TCP_ACK) && rcv->td_maxwin != 0 && s->ack == rcv->td_end;
    return s->seq == snd->td_end ||
           ((rcv->flags & HP_TW_MAXACK_SET) && s->seq == rcv->td_maxack);
}

void hp_tcp_new(hp_tcp_win *w, const hp_pkt *pkt)
{
    seg s;
    read_segment(pkt, &s);
    hp_tcp_dir *d = &w->dir[HP_DIR_OUT];
    memset(w, 0, sizeof *w);
    d->td_end = d->td_maxend = s.end;
    d->td_maxwin = s.win ? s.win : 1;
    parse_options(s.opt, s.optlen, d);
}

int hp_tcp_track(hp_tcp_win *w, const hp_conn *c, int dir, const hp_pkt *pkt)
{
    seg s;
    read_segment(pkt, &s);
    if (s.flags & HP_TCP_RST)
        return rst_acceptable(w, dir, &s) ? HP_R_NONE : HP_R_TCP_BAD_RST;
    return in_window(w, c->state, c->flags, dir, &s) ? HP_R_NONE : HP_R_TCP_OUT_OF_WINDOW;
}

uint8_t hp_tcp_next_state(hp_conn *c, int d, uint8_t tcp_flags)
{
    uint8_t s = c->state;
    int closer = (c->flags & HP_F_CLOSER_REPLY) ? HP_DIR_IN : HP_DIR_OUT;
    if (tcp_flags & HP_TCP_RST)
        return HP_S_CLOSE;
    if ((tcp_flags & HP_TCP_SYN) && (tcp_flags & HP_TCP_ACK)) {
        if (d == HP_DIR_IN && (s == HP_S_SYN_SENT || s == HP_S_SYN_RECV))
            return HP_S_SYN_RECV;
        if (d == HP_DIR_OUT && s == HP_S_SYN_SENT && (c->flags & HP_F_SYN_REPLY))
            return HP_S_SYN_RECV;           /* simultaneous open: our side's SYN|ACK */
        return s;
    }
    if (tcp_flags & HP_TCP_SYN) {
        if (d == HP_DIR_IN && s == HP_S_SYN_SENT)
            c->flags |= HP_F_SYN_REPLY;     /* simultaneous open (Linux SYN_SENT2) */
        return s;
    }
    if (tcp_flags & HP_TCP_FIN) {
        if (s == HP_S_SYN_RECV || s == HP_S_ESTABLISHED) {
            c->flags |= HP_F_FIN_SEEN | (d == HP_DIR_IN ? HP_F_CLOSER_REPLY : 0);
            return HP_S_FIN_WAIT;
        }
        if ((s == HP_S_FIN_WAIT || s == HP_S_CLOSE_WAIT) && d != closer)
            return HP_S_LAST_ACK;
        return s;
    }
    if (tcp_flags & HP_TCP_ACK) {
        if (s == HP_S_SYN_RECV && d == HP_DIR_OUT)
            return HP_S_ESTABLISHED;
        if (s == HP_S_FIN_WAIT && d != closer)
            return HP_S_CLOSE_WAIT;
        if (s == HP_S_LAST_ACK && d == closer)
            return HP_S_TIME_WAIT;
    }
    return s;
}
