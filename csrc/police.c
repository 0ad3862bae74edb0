/* Token buckets and refusals. See hp_police.h. */
#include "hp_police.h"
#include "hp_packet.h"

#include <string.h>

#define ETH_LEN 14
#define QUOTE4_MAX (576 - 20 - 8)      /* RFC 1812 4.3.2.3: the error fits in 576 bytes */
#define QUOTE6_MAX (1280 - 40 - 8)     /* RFC 4443 2.4(c): within the minimum MTU */

void hp_bucket_init(hp_bucket *b, uint32_t rate, uint32_t burst, uint64_t now_ms)
{
    b->rate = rate;
    b->burst = burst ? burst : 1;
    b->milli = (uint64_t)b->burst * 1000;
    b->last_ms = now_ms;
}

static uint16_t csum_finish(uint32_t initial, const uint8_t *data, size_t len)
{
    return (uint16_t)~hp_csum_fold_sum(data, len, initial);
}

/* The pseudo-header sum of src/dst (alen bytes each), protocol and length. */
static uint32_t pseudo_sum(const uint8_t *src, const uint8_t *dst, int alen, uint8_t proto,
                           uint32_t len)
{
    uint32_t s = hp_csum_fold_sum(src, (size_t)alen, 0);
    s = hp_csum_fold_sum(dst, (size_t)alen, s);
    return s + proto + (len >> 16) + (len & 0xffff);
}

/* Writes the IP header of the answer (swapped addresses, TTL 64) at ip; returns its length. */
static uint32_t put_ip(uint8_t *ip, const uint8_t *orig, int v6, uint8_t proto, uint32_t payload)
{
    if (v6) {
        memset(ip, 0, 40);
        ip[0] = 0x60;
        hp_put_be16(ip + 4, (uint16_t)payload);
        ip[6] = proto;
        ip[7] = 64;
        memcpy(ip + 8, orig + 24, 16);
        memcpy(ip + 24, orig + 8, 16);
        return 40;
    }
    memset(ip, 0, 20);
    ip[0] = 0x45;
    hp_put_be16(ip + 2, (uint16_t)(20 + payload));
    hp_put_be16(ip + 6, 0x4000);             /* DF */
    ip[8] = 64;
    ip[9] = proto;
    memcpy(ip + 12, orig + 16, 4);
    memcpy(ip + 16, orig + 12, 4);
    hp_put_be16(ip + 10, csum_finish(0, ip, 20));
    return 20;
}

uint32_t hp_refusal_build(const uint8_t *frame, uint32_t len, uint8_t *out, uint32_t cap)
{
    /* Parsed again (the NAT's parse needs a writable frame): only the fields used here. */
    if (len < ETH_LEN + 20)
        return 0;
    uint16_t et = hp_be16(frame + 12);
    const uint8_t *ip = frame + ETH_LEN;
    uint32_t avail = len - ETH_LEN, ihl, l3len;
    uint8_t proto;
    int v6 = et == 0x86DD;
    if (et == 0x0800 && (ip[0] >> 4) == 4) {
        ihl = (ip[0] & 15u) * 4;
        l3len = hp_be16(ip + 2);
        proto = ip[9];
        if (ihl < 20 || l3len < ihl || l3len > avail || (hp_be16(ip + 6) & 0x1fff))
            return 0;
    } else if (v6 && avail >= 40 && (ip[0] >> 4) == 6) {
        ihl = 40;                            /* extension headers: answered by ICMP only */
        l3len = 40 + hp_be16(ip + 4);
        proto = ip[6];
        if (l3len > avail)
            return 0;
    } else {
        return 0;
    }
    int alen = v6 ? 16 : 4;
    const uint8_t *src = ip + (v6 ? 8 : 12), *dst = ip + (v6 ? 24 : 16);
    const uint8_t *l4 = ip + ihl;
    uint32_t l4len = l3len - ihl;
    uint8_t *oip = out + ETH_LEN;
    if (cap < ETH_LEN + 60 + 8)
        return 0;
    memcpy(out, frame + 6, 6);
    memcpy(out + 6, frame, 6);
    memcpy(out + 12, frame + 12, 2);

    if (proto == 6) {
        if (l4len < 20 || (l4[13] & (HP_TCP_SYN | HP_TCP_ACK | HP_TCP_RST)) != HP_TCP_SYN)
            return 0;
        /* RFC 9293 3.10.7.1: to a segment without ACK, <SEQ=0><ACK=SEG.SEQ+SEG.LEN><RST,ACK>. */
        uint32_t doff = (l4[12] >> 4) * 4u;
        if (doff < 20 || doff > l4len)
            return 0;
        uint32_t seg_len = l4len - doff + 1 + ((l4[13] & HP_TCP_FIN) != 0);
        uint32_t ack = ((uint32_t)l4[4] << 24 | (uint32_t)l4[5] << 16 | (uint32_t)l4[6] << 8 |
                        l4[7]) + seg_len;
        uint32_t hl = put_ip(oip, ip, v6, 6, 20);
        uint8_t *t = oip + hl;
        memset(t, 0, 20);
        memcpy(t, l4 + 2, 2);
        memcpy(t + 2, l4, 2);
        t[8] = (uint8_t)(ack >> 24);
        t[9] = (uint8_t)(ack >> 16);
        t[10] = (uint8_t)(ack >> 8);
        t[11] = (uint8_t)ack;
        t[12] = 5 << 4;
        t[13] = HP_TCP_RST | HP_TCP_ACK;
        hp_put_be16(t + 16, csum_finish(pseudo_sum(dst, src, alen, 6, 20), t, 20));
        return ETH_LEN + hl + 20;
    }
    if (proto != 17 && !v6)
        return 0;
    uint32_t quote = l3len < (v6 ? QUOTE6_MAX : QUOTE4_MAX) ? l3len
                                                             : (v6 ? QUOTE6_MAX : QUOTE4_MAX);
    uint32_t hl = v6 ? 40 : 20;
    if (cap < ETH_LEN + hl + 8 + quote)
        quote = cap - ETH_LEN - hl - 8;
    put_ip(oip, ip, v6, v6 ? 58 : 1, 8 + quote);
    uint8_t *icmp = oip + hl;
    memset(icmp, 0, 8);
    icmp[0] = v6 ? 1 : 3;
    icmp[1] = v6 ? 1 : 13;
    memcpy(icmp + 8, ip, quote);
    uint32_t initial = v6 ? pseudo_sum(dst, src, 16, 58, 8 + quote) : 0;
    hp_put_be16(icmp + 2, csum_finish(initial, icmp, 8 + quote));
    return ETH_LEN + hl + 8 + quote;
}
