/* Frame parsing with every bound checked before it is read (docs/semantics.md section 1), and
 * the in-place rewrite with incremental checksums (section 4). */
#include "hp_packet.h"

#include <string.h>

#define ETH_HLEN 14
#define ETHERTYPE_IPV4 0x0800
#define ETHERTYPE_IPV6 0x86DD
#define ETHERTYPE_ARP 0x0806
#define IPV6_MAX_EXT_HEADERS 8

int hp_reason_is_punt(int reason)
{
    switch (reason) {
    case HP_R_ARP: case HP_R_FRAGMENT: case HP_R_ICMP: case HP_R_TTL_EXCEEDED:
    case HP_R_TOO_BIG: case HP_R_PORTS_EXHAUSTED: case HP_R_NEIGH_MISS:
        return 1;
    default:
        return 0;
    }
}

static inline uint16_t fold(uint32_t s)
{
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
    return (uint16_t)s;
}

static inline uint32_t be32_of_native(uint32_t w)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return __builtin_bswap32(w);
#else
    return w;
#endif
}

uint16_t hp_csum_fold_sum(const uint8_t *data, size_t len, uint32_t initial)
{
    uint64_t s = initial;
    size_t i = 0;
    /* 32-bit words first: 2^16 = 1 modulo 0xffff, so the folded sum is the same (RFC 1071). */
    for (; i + 3 < len; i += 4) {
        uint32_t w;
        memcpy(&w, data + i, 4);      /* one load: gcc -O2 does not merge the byte loads */
        s += be32_of_native(w);
    }
    for (; i + 1 < len; i += 2)
        s += (uint32_t)(data[i] << 8 | data[i + 1]);
    if (i < len)
        s += (uint32_t)data[i] << 8;
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
    return (uint16_t)s;
}

/* Adds ~old and new word by word (n_bytes even) to a running ones' complement sum. */
static inline uint32_t sum_delta(uint32_t s, const uint8_t *old_b, const uint8_t *new_b,
                                 size_t n_bytes)
{
    for (size_t i = 0; i < n_bytes; i += 2) {
        s += (uint16_t)~hp_be16(old_b + i);
        s += hp_be16(new_b + i);
    }
    return s;
}

uint16_t hp_csum_replace(uint16_t check, const uint8_t *old_bytes, const uint8_t *new_bytes,
                         size_t n_bytes)
{
    return (uint16_t)~fold(sum_delta((uint16_t)~check, old_bytes, new_bytes, n_bytes));
}

static int is_ipv6_ext(uint8_t nh)
{
    return nh == 0 || nh == 43 || nh == 60 || nh == 44 || nh == 51;
}

/* Whether IPv4 options carry a loose or strict source route (walked as Linux's
 * ip_options_compile reads them; a malformed length ends the walk). */
static int ipv4_source_routed(const uint8_t *opt, uint32_t len)
{
    for (uint32_t i = 0; i < len;) {
        uint8_t type = opt[i];
        if (type == 0)
            return 0;
        if (type == 1) {
            i++;
            continue;
        }
        if (len - i < 2 || opt[i + 1] < 2 || opt[i + 1] > len - i)
            return 0;
        if (type == 131 || type == 137)     /* LSRR, SSRR */
            return 1;
        i += opt[i + 1];
    }
    return 0;
}

static int parse_ipv4(hp_pkt *pkt, const uint8_t *ip, uint32_t avail, uint32_t *l4len, uint8_t *ttl)
{
    if (avail < 20)
        return HP_R_IPV4_TRUNCATED;
    if (ip[0] >> 4 != 4)
        return HP_R_IPV4_BAD_VERSION;
    uint32_t ihl = (ip[0] & 15u) * 4;
    if (ihl < 20 || ihl > avail)
        return HP_R_IPV4_BAD_IHL;
    uint32_t tot = hp_be16(ip + 2);
    if (tot < ihl || tot > avail)
        return HP_R_IPV4_BAD_TOTAL_LEN;
    if (hp_csum_fold_sum(ip, ihl, 0) != 0xffff)
        return HP_R_IPV4_BAD_CHECKSUM;
    if (ihl > 20 && ipv4_source_routed(ip + 20, ihl - 20))
        return HP_R_SOURCE_ROUTE;
    if (hp_be16(ip + 6) & 0x3fff)
        return HP_R_FRAGMENT;
    pkt->family = 4;
    pkt->proto = ip[9];
    pkt->l4 = (uint16_t)(pkt->l3 + ihl);
    pkt->l3len = tot;
    *l4len = tot - ihl;
    *ttl = ip[8];
    memset(pkt->key.src, 0, 32);
    memcpy(pkt->key.src, ip + 12, 4);
    memcpy(pkt->key.dst, ip + 16, 4);
    return HP_R_NONE;
}

static int parse_ipv6(hp_pkt *pkt, const uint8_t *ip, uint32_t avail, uint32_t *l4len, uint8_t *ttl)
{
    if (avail < 40)
        return HP_R_IPV6_TRUNCATED;
    if (ip[0] >> 4 != 6)
        return HP_R_IPV6_BAD_VERSION;
    uint32_t end = 40 + (uint32_t)hp_be16(ip + 4);
    if (end > avail)
        return HP_R_IPV6_BAD_PAYLOAD_LEN;
    uint8_t nh = ip[6];
    uint32_t p = 40;
    for (int count = 1; is_ipv6_ext(nh); count++) {
        if (count > IPV6_MAX_EXT_HEADERS)
            return HP_R_IPV6_EXT_TOO_MANY;
        if (p + 8 > end)
            return HP_R_IPV6_EXT_TRUNCATED;
        if (nh == 44)
            return HP_R_FRAGMENT;
        uint32_t hl = nh == 51 ? ((uint32_t)ip[p + 1] + 2) * 4 : ((uint32_t)ip[p + 1] + 1) * 8;
        if (p + hl > end)
            return HP_R_IPV6_EXT_TRUNCATED;
        if (nh == 51 || (nh == 43 && ip[p + 3] > 0))   /* AH; a route with segments left */
            return HP_R_SOURCE_ROUTE;
        nh = ip[p];
        p += hl;
    }
    pkt->family = 6;
    pkt->proto = nh;
    pkt->l4 = (uint16_t)(pkt->l3 + p);
    pkt->l3len = end;
    *l4len = end - p;
    *ttl = ip[7];
    memcpy(pkt->key.src, ip + 8, 16);
    memcpy(pkt->key.dst, ip + 24, 16);
    return HP_R_NONE;
}

/* Whether a complete L4 checksum verifies (RFC 768, RFC 793, RFC 8200 8.1): over the pseudo
 * header and the segment (TCP) or datagram (UDP, its own length). An IPv4 UDP datagram
 * without one (0) passes; an IPv6 one must have one. */
static int l4_csum_ok(const hp_pkt *pkt)
{
    const uint8_t *l4 = pkt->eth + pkt->l4;
    uint32_t l4len = pkt->l3len - (uint32_t)(pkt->l4 - pkt->l3);
    uint32_t len = pkt->proto == 6 ? l4len : hp_be16(l4 + 4);
    if (pkt->proto == 17 && hp_be16(l4 + 6) == 0)
        return pkt->family == 4;
    uint32_t alen = pkt->family == 4 ? 4 : 16;
    const uint8_t *addrs = pkt->eth + pkt->l3 + (pkt->family == 4 ? 12 : 8);
    uint16_t pseudo = hp_csum_fold_sum(addrs, 2 * alen, pkt->proto + len);
    return hp_csum_fold_sum(l4, len, pseudo) == 0xffff;
}

int hp_parse(uint8_t *frame, uint32_t len, int vnet, hp_pkt *pkt)
{
    pkt->vnet = NULL;
    pkt->partial_csum = 0;
    pkt->tcp_flags = 0;
    if (vnet) {
        if (len < HP_VNET_HDR_LEN)
            return HP_R_VNET_TRUNCATED;
        pkt->vnet = (hp_vnet_hdr *)frame;
        frame += HP_VNET_HDR_LEN;
        len -= HP_VNET_HDR_LEN;
    }
    pkt->eth = frame;
    pkt->len = len;
    if (len < ETH_HLEN)
        return HP_R_ETH_TRUNCATED;
    uint16_t ethertype = hp_be16(frame + 12);
    if (ethertype == ETHERTYPE_ARP)
        return HP_R_ARP;

    uint32_t l4len;
    uint8_t ttl;
    int r;
    pkt->l3 = ETH_HLEN;
    if (ethertype == ETHERTYPE_IPV4)
        r = parse_ipv4(pkt, frame + ETH_HLEN, len - ETH_HLEN, &l4len, &ttl);
    else if (ethertype == ETHERTYPE_IPV6)
        r = parse_ipv6(pkt, frame + ETH_HLEN, len - ETH_HLEN, &l4len, &ttl);
    else
        return HP_R_ETHERTYPE;
    if (r != HP_R_NONE)
        return r;

    if (pkt->proto == (pkt->family == 4 ? 1 : 58))
        return HP_R_ICMP;
    if (pkt->proto != 6 && pkt->proto != 17)
        return HP_R_PROTO;
    const uint8_t *l4 = frame + pkt->l4;
    if (l4len < (pkt->proto == 6 ? 20u : 8u))
        return HP_R_L4_TRUNCATED;
    if (pkt->proto == 6) {
        uint32_t doff = l4[12] >> 4;
        if (doff < 5 || doff * 4 > l4len)
            return HP_R_TCP_BAD_DOFF;
        pkt->l4hdr = (uint16_t)(doff * 4);
        pkt->tcp_flags = l4[13];
    } else {
        uint32_t ulen = hp_be16(l4 + 4);
        int udp_gso = pkt->vnet && pkt->vnet->gso_type == HP_GSO_UDP_L4;
        if (!udp_gso && (ulen < 8 || ulen > l4len))
            return HP_R_UDP_BAD_LEN;
        pkt->l4hdr = 8;
    }
    if (pkt->vnet && (pkt->vnet->flags & HP_VNET_F_NEEDS_CSUM)) {
        if (pkt->vnet->csum_start != pkt->l4 ||
            pkt->vnet->csum_offset != (pkt->proto == 6 ? 16 : 6))
            return HP_R_VNET_BAD_CSUM;
        pkt->partial_csum = 1;
    } else if ((!pkt->vnet || pkt->vnet->gso_type == 0) && !l4_csum_ok(pkt)) {
        /* Before any state or timer sees it: the endpoint would discard it. A partial sum
         * cannot be checked (it is carried as it is, section 4), nor a GSO frame's (its
         * segments get theirs when they are cut). */
        return HP_R_L4_BAD_CHECKSUM;
    }
    pkt->key.sport = hp_be16(l4);
    pkt->key.dport = hp_be16(l4 + 2);
    pkt->key.family = pkt->family;
    pkt->key.proto = pkt->proto;
    pkt->key.pad = 0;
    if (ttl <= 1)            /* with the key: from an ENI, only a tracked flow's is punted */
        return HP_R_TTL_EXCEEDED;
    return HP_R_NONE;
}

void hp_rewrite(hp_pkt *pkt, int dir, const uint8_t *addr, uint16_t port)
{
    hp_rewrite_ex(pkt, dir, addr, port, 1);
}

void hp_rewrite_ex(hp_pkt *pkt, int dir, const uint8_t *addr, uint16_t port, int dec_ttl)
{
    uint8_t *ip = pkt->eth + pkt->l3;
    uint8_t *l4 = pkt->eth + pkt->l4;
    int v4 = pkt->family == 4;
    size_t alen = v4 ? 4 : 16;
    uint8_t *a = ip + (v4 ? (dir == HP_DIR_OUT ? 12 : 16) : (dir == HP_DIR_OUT ? 8 : 24));
    uint8_t *pp = l4 + (dir == HP_DIR_OUT ? 0 : 2);
    uint8_t *ck = l4 + (pkt->proto == 6 ? 16 : 6);
    uint8_t newport[2] = { (uint8_t)(port >> 8), (uint8_t)port };
    uint16_t check = hp_be16(ck);

    if (pkt->partial_csum) {
        /* The field holds the pseudo-header sum; the ports are summed when it is finished. */
        check = fold(sum_delta(check, a, addr, alen));
    } else if (!(pkt->proto == 17 && v4 && check == 0)) {
        uint32_t s = sum_delta((uint16_t)~check, a, addr, alen);
        s = sum_delta(s, pp, newport, 2);
        check = (uint16_t)~fold(s);
        if (pkt->proto == 17 && check == 0)
            check = 0xffff;
    }
    hp_put_be16(ck, check);

    if (v4) {
        uint8_t ttl_old[2] = { ip[8], ip[9] };
        uint8_t ttl_new[2] = { (uint8_t)(ip[8] - dec_ttl), ip[9] };
        uint32_t s = sum_delta((uint16_t)~hp_be16(ip + 10), a, addr, alen);
        s = sum_delta(s, ttl_old, ttl_new, 2);
        hp_put_be16(ip + 10, (uint16_t)~fold(s));
        ip[8] = ttl_new[0];
    } else {
        ip[7] = (uint8_t)(ip[7] - dec_ttl);
    }
    memcpy(a, addr, alen);
    memcpy(pp, newport, 2);
}

void hp_pkt_wire_size(const hp_pkt *pkt, uint32_t *packets, uint64_t *bytes)
{
    const hp_vnet_hdr *v = pkt->vnet;
    if (!v || v->gso_type == 0 || v->gso_size == 0) {
        *packets = 1;
        *bytes = pkt->l3len;
        return;
    }
    uint32_t hdrs = (uint32_t)(pkt->l4 + pkt->l4hdr - pkt->l3);
    uint32_t payload = pkt->l3len > hdrs ? pkt->l3len - hdrs : 0;
    uint32_t segs = (payload + v->gso_size - 1) / v->gso_size;
    if (segs == 0)
        segs = 1;
    *packets = segs;
    *bytes = pkt->l3len + (uint64_t)(segs - 1) * hdrs;
}
