/* The reference parser, checksum helpers and frame builder of the fuzz targets. Written from
 * docs/semantics.md, independently of csrc/nat/packet.c, so the oracles compare two readings of
 * the spec rather than the code with itself. */
#include "fz.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void fz_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "\n*** FUZZ ORACLE FAILURE: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    abort();
}

static uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put32(uint8_t *p, uint32_t v) { put16(p, (uint16_t)(v >> 16)); put16(p + 2, (uint16_t)v); }
static uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static void putle16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }

static uint64_t add_words(const uint8_t *p, size_t n, uint64_t s)
{
    for (size_t i = 0; i + 1 < n; i += 2)
        s += be16(p + i);
    if (n & 1)
        s += (uint64_t)p[n - 1] << 8;
    return s;
}

static uint16_t fold64(uint64_t s)
{
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
    return (uint16_t)s;
}

/* The pseudo-header sum over l4len bytes of L4, not folded. */
static uint64_t pseudo_len(const uint8_t *f, const fz_parsed *p, uint32_t l4len)
{
    const uint8_t *ip = f + p->l3;
    uint64_t s;
    if (p->family == 4)
        s = add_words(ip + 12, 8, 0);
    else
        s = add_words(ip + 8, 32, 0);
    return s + (uint32_t)p->proto + (l4len >> 16) + (l4len & 0xffff);
}

static uint64_t pseudo(const uint8_t *f, const fz_parsed *p)
{
    return pseudo_len(f, p, p->end - p->l4);
}

/* What a full checksum covers (docs/semantics.md 1, step 16a): the TCP segment, or the UDP
 * datagram by its own length; 0 when that length does not fit (a UDP GSO frame's, whose
 * checksum is not checked). */
static uint32_t covered_len(const uint8_t *f, const fz_parsed *p)
{
    uint32_t l4len = p->end - p->l4;
    if (p->proto == 6)
        return l4len;
    uint32_t ulen = be16(f + p->l4 + 4);
    return ulen <= l4len ? ulen : 0;
}

static int full_csum_ok(const uint8_t *f, const fz_parsed *p)
{
    uint32_t n = covered_len(f, p);
    if (n == 0)
        return 0;
    if (p->proto == 17 && be16(f + fz_csum_at(p)) == 0)
        return p->family == 4;
    return fold64(add_words(f + p->l4, n, pseudo_len(f, p, n))) == 0xffff;
}

static int is_ext(int nh) { return nh == 0 || nh == 43 || nh == 60 || nh == 44 || nh == 51; }

void fz_parse(const uint8_t *f, uint32_t len, int vnet, uint32_t mtu, fz_parsed *p)
{
    memset(p, 0, sizeof *p);
    p->vnet = vnet;
#define DONE(r) do { p->reason = HP_R_##r; return; } while (0)
    uint32_t eth = 0;
    if (vnet) {
        if (len < 10)
            DONE(VNET_TRUNCATED);
        eth = 10;
        p->partial = f[0] & 1;
        p->gso_type = f[1];
    }
    p->eth = eth;
    if (len - eth < 14)
        DONE(ETH_TRUNCATED);
    uint16_t et = be16(f + eth + 12);
    if (et == 0x0806)
        DONE(ARP);
    if (et != 0x0800 && et != 0x86DD)
        DONE(ETHERTYPE);
    uint32_t l3 = eth + 14, avail = len - l3;
    const uint8_t *ip = f + l3;
    p->l3 = l3;
    if (et == 0x0800) {
        p->family = 4;
        if (avail < 20)
            DONE(IPV4_TRUNCATED);
        if (ip[0] >> 4 != 4)
            DONE(IPV4_BAD_VERSION);
        uint32_t ihl = (ip[0] & 15u) * 4;
        if (ihl < 20 || ihl > avail)
            DONE(IPV4_BAD_IHL);
        p->ihl = ihl;
        p->have_l3 = 1;
        uint32_t tot = be16(ip + 2);
        if (tot < ihl || tot > avail)
            DONE(IPV4_BAD_TOTAL_LEN);
        p->proto = ip[9];
        p->l4 = l3 + ihl;
        p->end = l3 + tot;
        if (fold64(add_words(ip, ihl, 0)) != 0xffff)
            DONE(IPV4_BAD_CHECKSUM);
        for (uint32_t o = 20; o < ihl;) {       /* a loose or strict source route */
            if (ip[o] == 0)
                break;
            if (ip[o] == 1) {
                o++;
                continue;
            }
            if (ihl - o < 2 || ip[o + 1] < 2 || ip[o + 1] > ihl - o)
                break;
            if (ip[o] == 131 || ip[o] == 137)
                DONE(SOURCE_ROUTE);
            o += ip[o + 1];
        }
        if (be16(ip + 6) & 0x3fff)
            DONE(FRAGMENT);
    } else {
        p->family = 6;
        if (avail < 40)
            DONE(IPV6_TRUNCATED);
        if (ip[0] >> 4 != 6)
            DONE(IPV6_BAD_VERSION);
        uint32_t end = 40 + be16(ip + 4);
        if (end > avail)
            DONE(IPV6_BAD_PAYLOAD_LEN);
        p->have_l3 = 1;
        p->end = l3 + end;
        int nh = ip[6], count = 0;
        uint32_t off = 40;
        while (is_ext(nh)) {
            if (++count > 8)
                DONE(IPV6_EXT_TOO_MANY);
            if (end - off < 8)
                DONE(IPV6_EXT_TRUNCATED);
            if (nh == 44)
                DONE(FRAGMENT);
            uint32_t hl = nh == 51 ? (ip[off + 1] + 2u) * 4 : (ip[off + 1] + 1u) * 8;
            if (hl > end - off)
                DONE(IPV6_EXT_TRUNCATED);
            if (nh == 51 || (nh == 43 && ip[off + 3] > 0))
                DONE(SOURCE_ROUTE);
            nh = ip[off];
            off += hl;
        }
        p->proto = nh;
        p->l4 = l3 + off;
    }
    uint32_t l4len = p->end - p->l4;
    if (p->proto == (p->family == 4 ? 1 : 58))
        DONE(ICMP);
    if (p->proto != 6 && p->proto != 17)
        DONE(PROTO);
    if (l4len < (p->proto == 6 ? 20u : 8u))
        DONE(L4_TRUNCATED);
    p->have_l4 = 1;
    const uint8_t *l4 = f + p->l4;
    if (p->proto == 6) {
        uint32_t doff = l4[12] >> 4;
        if (doff < 5 || doff * 4 > l4len)
            DONE(TCP_BAD_DOFF);
    } else if (!(vnet && p->gso_type == HP_GSO_UDP_L4)) {
        uint32_t ulen = be16(l4 + 4);
        if (ulen < 8 || ulen > l4len)
            DONE(UDP_BAD_LEN);
    }
    if (vnet && p->partial &&
        (le16(f + 6) != p->l4 - eth || le16(f + 8) != (p->proto == 6 ? 16 : 6)))
        DONE(VNET_BAD_CSUM);
    if (!(vnet && (p->partial || p->gso_type != 0)) && !full_csum_ok(f, p))
        DONE(L4_BAD_CHECKSUM);
    if ((p->family == 4 ? ip[8] : ip[7]) <= 1)
        DONE(TTL_EXCEEDED);
    if (mtu && !(vnet && p->gso_type != 0) && p->end - l3 > mtu)
        DONE(TOO_BIG);
    p->reason = HP_R_NONE;
#undef DONE
}

uint32_t fz_csum_at(const fz_parsed *p)
{
    return p->l4 + (p->proto == 6 ? 16 : 6);
}

void fz_fix_checksums(uint8_t *f, uint32_t len, int vnet)
{
    fz_parsed p;
    fz_parse(f, len, vnet, 0, &p);
    if (p.have_l3 && p.family == 4) {
        uint8_t *ip = f + p.l3;
        put16(ip + 10, 0);
        put16(ip + 10, (uint16_t)~fold64(add_words(ip, p.ihl, 0)));
        fz_parse(f, len, vnet, 0, &p);      /* past the header checksum now: to L4 */
    }
    if (!p.have_l4 || (p.proto != 6 && p.proto != 17))
        return;
    uint8_t *ck = f + fz_csum_at(&p);
    if (p.partial) {
        put16(ck, fold64(pseudo(f, &p)));
        return;
    }
    if (p.proto == 17 && p.family == 4 && be16(ck) == 0)
        return;                                     /* no checksum: stays so */
    uint32_t n = covered_len(f, &p);
    if (n == 0)
        return;
    put16(ck, 0);
    uint16_t c = (uint16_t)~fold64(add_words(f + p.l4, n, pseudo_len(f, &p, n)));
    put16(ck, p.proto == 17 && c == 0 ? 0xffff : c);
}

/* The ones' complement "error" of a checksum: zero when it verifies. Folded, with the two
 * zeros (0 and 0xffff) made one. The NAT's incremental update must leave it unchanged. */
uint16_t fz_csum_residual(const uint8_t *f, const fz_parsed *p)
{
    uint16_t r;
    if (p->partial) {
        uint16_t ps = fold64(pseudo(f, p));
        r = fold64((uint64_t)be16(f + fz_csum_at(p)) + (uint16_t)~ps);
    } else {
        r = (uint16_t)~fold64(add_words(f + p->l4, p->end - p->l4, pseudo(f, p)));
    }
    return r == 0xffff ? 0 : r;
}

int fz_ipv4_csum_ok(const uint8_t *f, const fz_parsed *p)
{
    return fold64(add_words(f + p->l3, p->ihl, 0)) == 0xffff;
}

void fz_tuple(const uint8_t *f, const fz_parsed *p, hp_flow_key *k)
{
    memset(k, 0, sizeof *k);
    const uint8_t *ip = f + p->l3;
    size_t alen = p->family == 4 ? 4 : 16;
    memcpy(k->src, ip + (p->family == 4 ? 12 : 8), alen);
    memcpy(k->dst, ip + (p->family == 4 ? 16 : 24), alen);
    k->sport = be16(f + p->l4);
    k->dport = be16(f + p->l4 + 2);
    k->family = (uint8_t)p->family;
    k->proto = (uint8_t)p->proto;
}

void fz_set_tuple(uint8_t *f, const fz_parsed *p, const hp_flow_key *k)
{
    uint8_t *ip = f + p->l3;
    size_t alen = p->family == 4 ? 4 : 16;
    memcpy(ip + (p->family == 4 ? 12 : 8), k->src, alen);
    memcpy(ip + (p->family == 4 ? 16 : 24), k->dst, alen);
    put16(f + p->l4, k->sport);
    put16(f + p->l4 + 2, k->dport);
}

uint32_t fz_build(uint8_t *buf, uint32_t cap, const fz_frame_spec *s)
{
    int v4 = s->k.family == 4, tcp = s->k.proto == 6;
    uint32_t eth = s->vnet_mode ? 10 : 0, l3 = eth + 14, l4 = l3 + (v4 ? 20 : 40);
    uint32_t hdr = tcp ? 20u + (s->optlen & ~3u) : 8, l4len = hdr + s->payload, end = l4 + l4len;
    if (end > cap)
        return 0;
    memset(buf, 0, end);
    for (uint32_t i = l4 + hdr; i < end; i++)
        buf[i] = (uint8_t)(i * 7);
    if (s->vnet_mode) {
        int gso = s->vnet_mode == 3;
        buf[0] = s->vnet_mode >= 2 ? 1 : 0;       /* GSO frames need a partial checksum */
        buf[1] = gso ? (tcp ? (v4 ? 1 : 4) : HP_GSO_UDP_L4) : 0;
        putle16(buf + 2, (uint16_t)(l4 - eth + hdr));
        putle16(buf + 4, gso ? 536 : 0);
        putle16(buf + 6, buf[0] ? (uint16_t)(l4 - eth) : 0);
        putle16(buf + 8, buf[0] ? (tcp ? 16 : 6) : 0);
    }
    uint8_t *e = buf + eth;
    memcpy(e, "\x02\0\0\0\0\x01\x02\0\0\0\0\x02", 12);
    put16(e + 12, v4 ? 0x0800 : 0x86DD);
    uint8_t *ip = buf + l3;
    if (v4) {
        ip[0] = 0x45;
        put16(ip + 2, (uint16_t)(20 + l4len));
        ip[8] = s->ttl;
        ip[9] = s->k.proto;
    } else {
        ip[0] = 0x60;
        put16(ip + 4, (uint16_t)l4len);
        ip[6] = s->k.proto;
        ip[7] = s->ttl;
    }
    uint8_t *t = buf + l4;
    if (tcp) {
        put32(t + 4, s->seq);
        put32(t + 8, s->ack);
        t[12] = (uint8_t)(hdr / 4 << 4);
        memcpy(t + 20, s->opts, hdr - 20);
        t[13] = s->tcp_flags;
        put16(t + 14, 65535);
    } else {
        put16(t + 4, (uint16_t)l4len);
    }
    fz_parsed p = { .vnet = s->vnet_mode != 0, .eth = eth, .l3 = l3, .l4 = l4, .end = end,
                    .family = s->k.family, .proto = s->k.proto };
    fz_set_tuple(buf, &p, &s->k);
    if (!(s->zero_udp_csum && !tcp && v4))
        put16(t + (tcp ? 16 : 6), 1);             /* any non-zero value: fixed below */
    fz_fix_checksums(buf, end, s->vnet_mode != 0);
    return end;
}
