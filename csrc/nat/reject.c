/* The reject journal, the RST rate limit and the RST itself (hp_reject.h). */
#include "hp_reject.h"

#include <string.h>

void hp_reject_push(hp_reject_ring *ring, const hp_pkt *pkt, int dir, uint16_t eni, int reason,
                    uint64_t now_ms, uint64_t *overflow)
{
    if (!ring->rec || ring->count == HP_REJECT_RING) {
        (*overflow)++;           /* the reader is behind: never wait for it */
        return;
    }
    hp_reject *r = &ring->rec[(ring->head + ring->count++) % HP_REJECT_RING];
    memset(r, 0, sizeof *r);
    r->ms = now_ms;
    memcpy(r->src, pkt->key.src, 16);
    memcpy(r->dst, pkt->key.dst, 16);
    r->sport = pkt->key.sport;
    r->dport = pkt->key.dport;
    r->eni = eni;
    r->len = (uint16_t)(pkt->l3len > 0xFFFF ? 0xFFFF : pkt->l3len);
    r->family = pkt->family;
    r->proto = pkt->proto;
    r->tcp_flags = pkt->tcp_flags;
    r->reason = (uint8_t)reason;
    r->dir = (uint8_t)dir;
}

uint32_t hp_reject_take(hp_reject_ring *ring, hp_reject *out, uint32_t max)
{
    uint32_t n = 0;
    for (; n < max && ring->count; n++, ring->count--) {
        out[n] = ring->rec[ring->head];
        ring->head = (ring->head + 1) % HP_REJECT_RING;
    }
    return n;
}

void hp_rate_init(hp_rate *r, uint32_t per_s, uint32_t burst)
{
    r->per_s = per_s;
    r->burst = burst;
    r->milli = (uint64_t)burst * 1000;
    r->last_ms = 0;
}

int hp_rate_take(hp_rate *r, uint64_t now_ms)
{
    uint64_t cap = (uint64_t)r->burst * 1000;
    if (now_ms > r->last_ms) {
        uint64_t elapsed = now_ms - r->last_ms;
        if (elapsed > cap)       /* enough to fill any bucket; keeps the product small */
            elapsed = cap;
        r->milli += elapsed * r->per_s;
        if (r->milli > cap)
            r->milli = cap;
        r->last_ms = now_ms;
    }
    if (r->milli < 1000)
        return 0;
    r->milli -= 1000;
    return 1;
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

void hp_rst_build(hp_pkt *pkt)
{
    uint8_t *eth = pkt->eth, *ip = eth + pkt->l3, *l4 = eth + pkt->l4;
    int v4 = pkt->family == 4;
    uint32_t alen = v4 ? 4 : 16, iphl = v4 ? 20 : 40;
    uint8_t flags = pkt->tcp_flags;
    uint32_t seq = be32(l4 + 4), ack = be32(l4 + 8);
    uint32_t seg_len = pkt->l3len - (uint32_t)(pkt->l4 - pkt->l3) - pkt->l4hdr +
                       !!(flags & HP_TCP_SYN) + !!(flags & HP_TCP_FIN);
    uint8_t src[16], dst[16], mac[6];
    memcpy(src, pkt->key.src, 16);
    memcpy(dst, pkt->key.dst, 16);
    uint16_t sport = pkt->key.sport, dport = pkt->key.dport;

    memcpy(mac, eth, 6);
    memmove(eth, eth + 6, 6);
    memcpy(eth + 6, mac, 6);
    if (pkt->vnet)
        memset(pkt->vnet, 0, sizeof *pkt->vnet);
    memset(ip, 0, pkt->len - pkt->l3);
    if (v4) {
        ip[0] = 0x45;
        hp_put_be16(ip + 2, 40);
        hp_put_be16(ip + 6, 0x4000);             /* DF */
        ip[8] = 64;
        ip[9] = 6;
        memcpy(ip + 12, dst, 4);
        memcpy(ip + 16, src, 4);
        hp_put_be16(ip + 10, (uint16_t)~hp_csum_fold_sum(ip, 20, 0));
    } else {
        ip[0] = 0x60;
        hp_put_be16(ip + 4, 20);
        ip[6] = 6;
        ip[7] = 64;
        memcpy(ip + 8, dst, 16);
        memcpy(ip + 24, src, 16);
    }
    uint8_t *t = ip + iphl;
    hp_put_be16(t, dport);
    hp_put_be16(t + 2, sport);
    if (flags & HP_TCP_ACK) {
        put_be32(t + 4, ack);
        t[13] = HP_TCP_RST;
    } else {
        put_be32(t + 8, seq + seg_len);
        t[13] = HP_TCP_RST | HP_TCP_ACK;
    }
    t[12] = 5 << 4;
    /* Pseudo header (addresses, protocol, length 20) and the segment. */
    uint32_t s = hp_csum_fold_sum(ip + (v4 ? 12 : 8), 2 * alen, 6 + 20);
    hp_put_be16(t + 16, (uint16_t)~hp_csum_fold_sum(t, 20, s));
    pkt->l4 = (uint16_t)(pkt->l3 + iphl);
    pkt->l4hdr = 20;
    pkt->l3len = iphl + 20;
    pkt->tcp_flags = t[13];
    pkt->partial_csum = 0;
}
