/* Refusals answered in place. See hp_answer.h. */
#include "hp_answer.h"
#include "hp_quota.h"

#include <string.h>

#define QUOTE4_MAX (576 - 20 - 8)      /* RFC 1812 4.3.2.3: the error fits in 576 bytes */
#define QUOTE6_MAX (1280 - 40 - 8)     /* RFC 4443 2.4(c): within the minimum MTU */

int hp_unreach_build(hp_pkt *pkt)
{
    uint8_t *eth = pkt->eth, *ip = eth + pkt->l3;
    int v4 = pkt->family == 4;
    uint32_t hl = v4 ? 20 : 40;
    uint32_t room = pkt->len - pkt->l3;          /* the frame's bytes from the IP header on */
    uint32_t need = (uint32_t)(pkt->l4 - pkt->l3) + 8;
    uint32_t quote = pkt->l3len < room - hl - 8 ? pkt->l3len : room - hl - 8;
    if (room < hl + 8 + need)
        return -1;
    if (quote > (v4 ? QUOTE4_MAX : QUOTE6_MAX))
        quote = v4 ? QUOTE4_MAX : QUOTE6_MAX;
    uint8_t src[16], dst[16], mac[6];
    memcpy(src, pkt->key.src, 16);
    memcpy(dst, pkt->key.dst, 16);
    memcpy(mac, eth, 6);
    memmove(eth, eth + 6, 6);
    memcpy(eth + 6, mac, 6);
    if (pkt->vnet)
        memset(pkt->vnet, 0, sizeof *pkt->vnet);
    memmove(ip + hl + 8, ip, quote);
    memset(ip + hl + 8 + quote, 0, room - hl - 8 - quote);
    memset(ip, 0, hl + 8);
    uint8_t *icmp = ip + hl;
    uint32_t alen = v4 ? 4 : 16;
    if (v4) {
        ip[0] = 0x45;
        hp_put_be16(ip + 2, (uint16_t)(hl + 8 + quote));
        ip[8] = 64;
        ip[9] = 1;
        memcpy(ip + 12, dst, 4);
        memcpy(ip + 16, src, 4);
        hp_put_be16(ip + 10, (uint16_t)~hp_csum_fold_sum(ip, 20, 0));
        icmp[0] = 3;
        icmp[1] = 13;
    } else {
        ip[0] = 0x60;
        hp_put_be16(ip + 4, (uint16_t)(8 + quote));
        ip[6] = 58;
        ip[7] = 64;
        memcpy(ip + 8, dst, 16);
        memcpy(ip + 24, src, 16);
        icmp[0] = 1;
        icmp[1] = 1;
    }
    /* ICMPv6 sums a pseudo header (addresses, length, next header); ICMP does not. */
    uint32_t s = v4 ? 0 : hp_csum_fold_sum(ip + 8, 2 * alen, 8 + quote + 58);
    hp_put_be16(icmp + 2, (uint16_t)~hp_csum_fold_sum(icmp, 8 + quote, s));
    pkt->proto = v4 ? 1 : 58;
    pkt->l4 = (uint16_t)(pkt->l3 + hl);
    pkt->l3len = hl + 8 + quote;
    pkt->partial_csum = 0;
    return 0;
}

hp_rate *hp_police_answer_rate(hp_nat *nat, const hp_pkt *pkt, int rst)
{
    hp_rate *limits = rst ? &nat->rst_rate : &nat->refusal_rate;
    hp_func *f = hp_quota_func_of_addr(nat, pkt->key.family, pkt->key.src);
    if (!f)
        return limits;
    hp_rate *r = rst ? &f->rst_rate : &f->refusal_rate;
    if (r->per_s != limits->per_s || r->burst != limits->burst)   /* first use, or new limits */
        hp_rate_init(r, limits->per_s, limits->burst);
    return r;
}

void hp_nat_refusal(hp_nat *nat, hp_pkt *pkt, uint64_t now_ms, hp_result *res)
{
    if (!hp_rate_take(hp_police_answer_rate(nat, pkt, 0), now_ms)) {
        nat->counters[HP_C_REFUSAL_LIMITED]++;
        return;
    }
    if (pkt->proto == 6)
        hp_rst_build(pkt);       /* only a pure SYN gets this far (section 3, step 3) */
    else if (hp_unreach_build(pkt) != 0)
        return;
    nat->counters[HP_C_REFUSAL_SENT]++;
    res->verdict = HP_FORWARD;
    res->port = 0;
}
