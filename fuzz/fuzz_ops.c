/* Fuzz target 2: a small program of operations on one NAT: frames built from compact
 * descriptors (OUT from known and unknown functions, IN replies to live connections, right or
 * subtly wrong), raw frames, batches, clock ticks, expiries, deletions, lookups and new ENIs.
 * The per-frame oracles and the table / index / pool invariants are checked after every op.
 *
 * Input: [variant] then ops, each an opcode byte (mod 10) and its argument bytes (missing
 * bytes read as zero):
 *   0 OUT frame   a b c d e  (see out_spec)       5 delete    sel
 *   1 IN frame    sel fl m e (see in_spec)        6 OUT batch n, n x (a b c d e)
 *   2 raw frame   how len bytes...                7 add ENI   group | v6 << 2
 *   3 tick        step | harvest << 4               8 lookup    sel
 *   4 expire      max | out << 3 | out_max << 4   9 IN batch  n, n x (sel fl m e)
 *  10 restart     n, n x (victim donor split): killed and attached again (fz_world_restart)
 *  11 rules       k: group 2's security-group rules (fz_world_set_rules)
 *  12 quota       source, conns, ports: a function's quotas (low 3 bits each; 0: none)
 * e, the TCP sequence numbers (see set_seq). */
#include "fz.h"

#include <stdint.h>
#include <string.h>

#define MAX_OPS 64

typedef struct prog { const uint8_t *data; size_t size, at; } prog;

static uint8_t next(prog *p) { return p->at < p->size ? p->data[p->at++] : 0; }

static const uint16_t sports[4] = { 4000, 4001, 40000, 1024 };
static const uint16_t dports[4] = { 80, 443, 53, 444 };   /* 444: just past a rule */
static const uint8_t ttls[4] = { 64, 2, 1, 255 };
static const uint32_t steps[16] = {
    0, 1, 10, 100, 999, 1000, 5000, 10000, 29999, 30000, 60000, 120000, 180000, 240000,
    350000, 7440000,
};

/* The sequence numbers the program's TCP peers are at, per connection id and direction (0:
 * none yet), so that built frames can be in window for the NAT's window tracking. */
#define SEQ_IDS 64
static uint32_t seq_next[SEQ_IDS][2];

/* TCP options: 1 a SYN's (MSS, SACK permitted, window scale 7), 2 a SACK block beyond the
 * ack, 3 malformed (a length past the end). */
static void set_options(fz_frame_spec *s, int kind)
{
    static const uint8_t syn[12] = { 2, 4, 5, 0xb4, 4, 2, 1, 1, 3, 3, 7, 1 };
    static const uint8_t bad[4] = { 1, 3, 9, 1 };
    s->optlen = 0;
    if (kind == 1) {
        memcpy(s->opts, syn, sizeof syn);
        s->optlen = sizeof syn;
    } else if (kind == 2) {
        uint8_t sack[12] = { 1, 1, 5, 10 };
        uint32_t left = s->ack + 100, right = s->ack + 2000;
        for (int i = 0; i < 4; i++) {
            sack[4 + i] = (uint8_t)(left >> (24 - 8 * i));
            sack[8 + i] = (uint8_t)(right >> (24 - 8 * i));
        }
        memcpy(s->opts, sack, sizeof sack);
        s->optlen = sizeof sack;
    } else if (kind == 3) {
        memcpy(s->opts, bad, sizeof bad);
        s->optlen = sizeof bad;
    }
}

/* e: bits 0-1: 0 the next sequence number and the peer's as ack (bits 2-3: TCP options, see
 * set_options), 1 / 2 that moved forward / back by (e >> 2) * 4096, 3 arbitrary. */
static void set_seq(fz_frame_spec *s, uint32_t id, int dir, uint8_t e)
{
    int known = id < SEQ_IDS && seq_next[id][dir];
    uint32_t mine = known ? seq_next[id][dir] : (dir == HP_DIR_OUT ? 1000 : 500000);
    uint32_t theirs = id < SEQ_IDS ? seq_next[id][!dir] : 0, off = (uint32_t)(e >> 2) << 12;
    switch (e & 3) {
    case 1: mine += off; break;
    case 2: mine -= off; break;
    case 3: mine = (uint32_t)e << 24; theirs = e * 77777u; break;
    }
    s->seq = mine;
    s->ack = s->tcp_flags & HP_TCP_ACK ? theirs : 0;
    if ((e & 3) == 0)
        set_options(s, (e >> 2) & 3);
}

/* Where the peer of a forwarded TCP frame is now. */
static void advance_seq(const fz_frame_spec *s, const hp_result *r, int dir)
{
    if (r->verdict != HP_FORWARD || s->k.proto != 6 || r->conn >= SEQ_IDS)
        return;
    seq_next[r->conn][dir] = s->seq + s->payload + !!(s->tcp_flags & HP_TCP_SYN) +
                             !!(s->tcp_flags & HP_TCP_FIN);
}

/* a: source (bits 0-3), UDP (4), destination (5-6), UDP without checksum (7)
 * b: source port (0-1), destination port (2-3), vnet mode (4-5), TTL (6-7)
 * c: TCP flags   d: payload / 6   e: sequence numbers */
static fz_frame_spec out_spec(fz_world *w, prog *p)
{
    uint8_t a = next(p), b = next(p), c = next(p), d = next(p), e = next(p);
    fz_frame_spec s;
    memset(&s, 0, sizeof s);
    fz_source_addr(a & 15, &s.k);
    fz_dst_addr((a >> 5) & 3, s.k.family, s.k.dst);
    s.k.proto = (a >> 4) & 1 ? 17 : 6;
    s.zero_udp_csum = a >> 7;
    s.k.sport = sports[b & 3];
    s.k.dport = dports[(b >> 2) & 3];
    s.vnet_mode = (b >> 4) & 3;
    s.ttl = ttls[b >> 6];
    s.tcp_flags = c;
    s.payload = (uint16_t)(d * 6);
    set_seq(&s, hp_nat_lookup(w->nat, &s.k, HP_DIR_OUT, w->now), HP_DIR_OUT, e);
    return s;
}

/* A frame for the reply direction of the sel-th live connection; m: wrong ENI (bit 0), wrong
 * external port (1), wrong ENI address (2), vnet mode (3-4), TTL (5-6), large (7). */
static fz_frame_spec in_spec(fz_world *w, prog *p, uint16_t *in_eni)
{
    uint8_t sel = next(p), fl = next(p), m = next(p), e = next(p);
    fz_frame_spec s;
    memset(&s, 0, sizeof s);
    uint32_t id = fz_nth_live(w, sel);    /* HP_CT_NONE when the table is empty */
    if (id != HP_CT_NONE) {
        const hp_conn *c = &w->nat->ct.conns[id];
        hp_ct_reply_key(&w->nat->ct, c, &s.k);
        *in_eni = c->eni;
    } else {                                    /* nothing live: unsolicited */
        s.k.family = 4;
        s.k.proto = sel & 1 ? 17 : 6;
        fz_dst_addr(0, 4, s.k.src);
        memcpy(s.k.dst, w->nat->eni_addr[0].addr[0], 4);
        s.k.sport = 80;
        s.k.dport = (uint16_t)(w->nat->cfg.port_lo + sel);
        *in_eni = 0;
    }
    if (m & 1)
        *in_eni = (uint16_t)((*in_eni + 1) % w->nat->n_enis);
    if (m & 2)
        s.k.dport ^= 1;
    if (m & 4)
        fz_dst_addr(3, s.k.family, s.k.dst);    /* ENI 0's address, maybe not the conn's */
    s.vnet_mode = (m >> 3) & 3;
    s.ttl = ttls[(m >> 5) & 3];
    s.tcp_flags = fl;
    s.payload = m >> 7 ? 1400 : sel;
    set_seq(&s, id, HP_DIR_IN, e);
    return s;
}

static void send_specs(fz_world *w, fz_frame_spec *specs, uint32_t n, int dir, uint16_t in_eni)
{
    static uint8_t store[FZ_MAX_BATCH][FZ_MAX_FRAME];
    uint8_t *frames[FZ_MAX_BATCH];
    uint32_t lens[FZ_MAX_BATCH];
    int vnet = specs[0].vnet_mode != 0;
    for (uint32_t i = 0; i < n; i++) {
        if (!vnet)
            specs[i].vnet_mode = 0;
        else if (!specs[i].vnet_mode)
            specs[i].vnet_mode = 1;             /* one batch, one header convention */
        frames[i] = store[i];
        lens[i] = fz_build(store[i], FZ_MAX_FRAME, &specs[i]);
    }
    hp_result res[FZ_MAX_BATCH];
    fz_translate_checked(w, frames, lens, n, dir, in_eni, vnet, 1, res);
    for (uint32_t i = 0; i < n; i++)
        advance_seq(&specs[i], &res[i], dir);
}

static void raw_frame(fz_world *w, prog *p)
{
    uint8_t how = next(p), len = next(p);
    static uint8_t buf[256];
    uint32_t n = 0;
    while (n < len && p->at < p->size)
        buf[n++] = next(p);
    int dir = how & 1, vnet = (how >> 1) & 1;
    uint16_t in_eni = (uint16_t)((how >> 4) % w->nat->n_enis);
    if (how & 8) {                              /* aim at a live connection */
        int e = fz_aim(w, buf, n, vnet, dir, how >> 4);
        if (e >= 0)
            in_eni = (uint16_t)e;
    }
    if (how & 4)
        fz_fix_checksums(buf, n, vnet);
    uint8_t *frames[1] = { buf };
    fz_translate_checked(w, frames, &n, 1, dir, in_eni, vnet, 1, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    prog p = { data, size, 1 };
    fz_world *w = fz_world_get(data[0]);
    memset(seq_next, 0, sizeof seq_next);
    fz_frame_spec specs[FZ_MAX_BATCH];
    for (int ops = 0; ops < MAX_OPS && p.at < p.size; ops++) {
        uint8_t op = next(&p) % 13, arg, tear[4][3];
        uint16_t in_eni = 0;
        uint32_t n;
        switch (op) {
        case 0:
            specs[0] = out_spec(w, &p);
            send_specs(w, specs, 1, HP_DIR_OUT, 0);
            break;
        case 1:
            specs[0] = in_spec(w, &p, &in_eni);
            send_specs(w, specs, 1, HP_DIR_IN, in_eni);
            break;
        case 2:
            raw_frame(w, &p);
            break;
        case 3:
            arg = next(&p);
            w->now += steps[arg & 15];
            if (arg & 16)       /* a flow-log harvest: every interval starts again */
                for (uint32_t id = 0; id < w->nat->ct.capacity; id++)
                    if (w->nat->ct.conns[id].state != HP_S_NONE)
                        hp_ct_flow_reset(&w->nat->ct, id);
            fz_check_invariants(w);
            break;
        case 4:
            arg = next(&p);
            fz_expire_checked(w, (arg & 7) == 7 ? SIZE_MAX : (size_t)(arg & 7), arg >> 4,
                              (arg >> 3) & 1);
            break;
        case 5:
            fz_delete_checked(w, fz_nth_live(w, next(&p)));
            break;
        case 6:
            n = 1 + next(&p) % FZ_MAX_BATCH;
            for (uint32_t i = 0; i < n; i++)
                specs[i] = out_spec(w, &p);
            send_specs(w, specs, n, HP_DIR_OUT, 0);
            break;
        case 7:
            arg = next(&p);
            fz_world_add_eni(w, arg & 3, (arg >> 2) & 1);
            break;
        case 8:
            fz_lookup_checked(w, fz_nth_live(w, next(&p)));
            break;
        case 9:
            /* One ingress ENI per batch: the first frame's. */
            n = 1 + next(&p) % FZ_MAX_BATCH;
            for (uint32_t i = 0; i < n; i++) {
                uint16_t e;
                specs[i] = in_spec(w, &p, &e);
                if (i == 0)
                    in_eni = e;
            }
            send_specs(w, specs, n, HP_DIR_IN, in_eni);
            break;
        case 10:
            n = next(&p) % 5;
            for (uint32_t i = 0; i < n; i++)
                for (int j = 0; j < 3; j++)
                    tear[i][j] = next(&p);
            fz_world_restart(w, (const uint8_t (*)[3])tear, n);
            break;
        case 11:
            fz_world_set_rules(w, next(&p) & 3);
            fz_check_invariants(w);
            break;
        case 12:
            arg = next(&p);
            n = next(&p);
            fz_world_set_quota(w, arg, n & 7, (n >> 3) & 7);
            fz_check_invariants(w);
            break;
        }
    }
    return 0;
}
