/* Shared pieces of the fuzz targets: a small NAT world with a few connections set up, reset to
 * its snapshot before every input; an independent reference parser and frame builder; the
 * per-frame oracles and the table / index / pool invariant checker. Written against the
 * public headers of the C core only. */
#ifndef FZ_H
#define FZ_H

#include "hp_nat.h"

#include <stddef.h>
#include <stdint.h>

#define FZ_VARIANTS 3
#define FZ_MAX_BATCH 16
#define FZ_MAX_FRAME 2048
#define FZ_T0 1000000u          /* the clock when the world was set up, ms */

/* Aborts with a message: libFuzzer reports it as a crash and keeps the input. */
void fz_fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

/* What the reference parser (docs/semantics.md section 1, written from the spec, not from
 * packet.c) learned. Offsets count from the start of the buffer (vnet header included). */
typedef struct fz_parsed {
    int reason;                  /* HP_R_NONE or the parse reason the spec gives */
    int vnet;
    uint32_t eth, l3, l4, end;   /* end: l3 + IP total length */
    int family, proto;
    int have_l3, have_l4;        /* headers whose fields can be read (and fixed) */
    uint32_t ihl;
    int partial;                 /* vnet NEEDS_CSUM */
    int gso_type;
} fz_parsed;

/* mtu 0: no MTU check. */
void fz_parse(const uint8_t *f, uint32_t len, int vnet, uint32_t mtu, fz_parsed *p);

/* Makes the IPv4 header checksum and the L4 checksum (full, or partial when the frame's vnet
 * header says NEEDS_CSUM) right, where the headers are within the frame. */
void fz_fix_checksums(uint8_t *f, uint32_t len, int vnet);

/* Offset of the L4 checksum field; the checksum's ones' complement error (0 when it
 * verifies; partial: the field against the pseudo-header sum); the IPv4 header check. */
uint32_t fz_csum_at(const fz_parsed *p);
uint16_t fz_csum_residual(const uint8_t *f, const fz_parsed *p);
int fz_ipv4_csum_ok(const uint8_t *f, const fz_parsed *p);

/* Tuple fields of a parsed frame (addresses 16 bytes, IPv4 in the first 4). */
void fz_tuple(const uint8_t *f, const fz_parsed *p, hp_flow_key *k);
/* Overwrites a frame's addresses and ports with k (same family). */
void fz_set_tuple(uint8_t *f, const fz_parsed *p, const hp_flow_key *k);

/* A well-formed frame. vnet_mode: 0 none, 1 plain vnet header, 2 NEEDS_CSUM (partial),
 * 3 GSO (TCP: TCPV4/6, UDP: UDP_L4). Returns its length. */
typedef struct fz_frame_spec {
    hp_flow_key k;
    uint8_t tcp_flags, ttl, vnet_mode, zero_udp_csum;
    uint16_t payload;
    uint32_t seq, ack;           /* TCP */
    uint8_t opts[40], optlen;    /* TCP options, optlen a multiple of 4 */
} fz_frame_spec;
uint32_t fz_build(uint8_t *buf, uint32_t cap, const fz_frame_spec *s);

/* The world: one NAT of a variant (mapping mode, sizes, timeouts), its ENIs, groups and
 * sources, a few connections, and the snapshot it returns to. */
#define FZ_MAX_WORLD_ENIS 8
typedef struct fz_world {
    hp_nat *nat;
    hp_nat_config cfg;
    int variant;
    char path[96];               /* the state file, when the core keeps one */
    int dirty;                   /* reattached since the snapshot: rebuild before reuse */
    uint64_t now;
    uint64_t deletes;            /* connections removed other than by expiry */
    /* The configuration as made, so a reattach can make it again: ENIs (IPv6 or not) in
     * order, and the group each joined. */
    uint32_t n_enis;
    uint8_t eni_v6[FZ_MAX_WORLD_ENIS], eni_group[FZ_MAX_WORLD_ENIS];
    /* Security-group rule sets of group 2, made once and swapped in and out (op 11);
     * sg_current indexes them, -1: none (allow all). */
    struct hp_sg_set *sg[3];
    int sg_current, snap_sg;
    uint32_t base_enis;          /* ENIs at snapshot time */
    struct fz_region { void *ptr, *copy; size_t len; } *regions;
    size_t n_regions, cap_regions;
    uint64_t snap_now, snap_deletes;
} fz_world;

/* The world of a variant, restored to its snapshot. */
fz_world *fz_world_get(int variant);

/* Number of sources registered (the first fz_n_sources entries of fz_source_addr). */
extern const int fz_n_sources;
void fz_source_addr(int i, hp_flow_key *k);   /* fills family and src */
void fz_dst_addr(int i, int family, uint8_t out[16]);
/* Sets the quotas of source i's function (0: none), as the config's per-function quotas. */
void fz_world_set_quota(fz_world *w, int source, uint32_t max_conns, uint32_t max_ports);
/* Adds an ENI (at most a few past the base ones) to a group; -1 when none is added. */
int fz_world_add_eni(fz_world *w, int group, int with_v6);

/* Gives group 2 rule set k (0: TCP to 10.0.9.0/24 ports 80-443, UDP to port 53 anywhere,
 * anything to fd00:9::/32; 1: TCP port 80 only; 2: no rule, so nothing new goes out), or none
 * (allow all) when k is 3. */
void fz_world_set_rules(fz_world *w, int k);

/* Closes the NAT as a killed process would leave it and opens it again from its state file,
 * after n_tear torn writes: tear[i] = (victim, donor, split): the first split % 64 bytes of
 * entry victim (mod capacity) come from entry donor, as if an insert stopped half-way, or are
 * zeroed when split has bit 7. The attach must keep every entry nothing tore, as it was (but
 * for two per torn entry, which may now hold their tuple or port), and leave the invariants
 * true. No-op when the core has no state file. */
void fz_world_restart(fz_world *w, const uint8_t (*tear)[3], uint32_t n_tear);

/* Translates frames (copies in exact-size heap buffers, so ASan sees any overread), checks
 * every per-frame oracle, then the invariants. frames are rewritten in place; the results go
 * to out unless it is NULL. */
void fz_translate_checked(fz_world *w, uint8_t **frames, const uint32_t *lens, uint32_t n,
                          int dir, uint16_t in_eni, int vnet, int check_mtu, hp_result *out);

/* Aims a frame at the sel-th live connection of its family and protocol: its original (OUT)
 * or reply (IN) tuple replaces the frame's. Returns the connection's ENI, or -1 when the frame
 * has no readable L4 header or no connection fits. */
int fz_aim(fz_world *w, uint8_t *f, uint32_t len, int vnet, int dir, uint32_t sel);

/* The nth live connection (wrapping), or HP_CT_NONE when the table is empty. */
uint32_t fz_nth_live(const fz_world *w, uint32_t n);

/* Expiry with its oracle: every record handed out had expired; with max unbounded and an out
 * buffer large enough, no expired connection is left. */
void fz_expire_checked(fz_world *w, size_t max, size_t out_max, int with_out);
void fz_delete_checked(fz_world *w, uint32_t id);
void fz_lookup_checked(fz_world *w, uint32_t id);

/* Table, index, LRU, free list, pool, quarantine and mapping invariants; aborts on any. */
void fz_check_invariants(const fz_world *w);

#endif
