/* Fuzz target 3: attaching a damaged state file (docs/semantics.md section 10). A state file
 * made by a NAT of the fuzz world (ENIs, connections, quarantine, journal) is copied, patched
 * by the input and attached. A refused file must be moved aside (never mapped); an accepted
 * one must take its ENIs back, forward its connections' packets both ways, expire and close,
 * all without a sanitizer report.
 *
 * Input: [cut] then patches, each [sel] [len] [bytes...] (missing bytes read as zero):
 *   cut:  bit 7 set: the file is cut to (cut & 0x7f) / 128 of its size before patching
 *   sel:  < 0x80: a field the attach checks (fields[sel % n], see below); else a raw offset
 *         from the next three bytes (mod the file's size)
 *   len:  1-8 bytes (len % 8 + 1) written there */
#include "fz.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_PATCHES 32
#define MAX_FRAMES 16

static uint8_t *template_bytes, *work;
static size_t template_len;
static hp_nat_config cfg;
static char path[96], aside[112];
static uint64_t fields[64];
static size_t n_fields;

static void add_field(uint64_t off)
{
    if (n_fields < sizeof fields / sizeof fields[0] && off < template_len)
        fields[n_fields++] = off;
}

static void cleanup(void)
{
    unlink(path);
    unlink(aside);
}

/* The template: the world's state file as its NAT has it now (a shared mapping: the file is
 * the state), and the offsets of what attach must not trust. */
static void init(void)
{
    fz_world *w = fz_world_get(0);
    cfg = w->cfg;
    int fd = open(w->path, O_RDONLY);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0)
        fz_fail("cannot read the world's state file %s", w->path);
    template_len = (size_t)sb.st_size;
    template_bytes = malloc(template_len);
    work = malloc(template_len);
    if (!template_bytes || !work || pread(fd, template_bytes, template_len, 0) != (ssize_t)template_len)
        fz_fail("cannot read %zu bytes of %s", template_len, w->path);
    close(fd);
    const hp_nat *nat = w->nat;
    uint64_t sh = (uint64_t)((const uint8_t *)nat->sh - nat->state.base);
    add_field(offsetof(hp_state_hdr, version));
    add_field(offsetof(hp_state_hdr, fixed_bytes));
    add_field(offsetof(hp_state_hdr, build_hash));
    add_field(offsetof(hp_state_hdr, boot_id));
    add_field(offsetof(hp_state_hdr, config.capacity));
    add_field(sh + offsetof(hp_nat_shared, n_enis));
    add_field(sh + offsetof(hp_nat_shared, j_head));
    add_field(sh + offsetof(hp_nat_shared, j_count));
    add_field(sh + offsetof(hp_nat_shared, j_deleting));
    add_field(sh + offsetof(hp_nat_shared, end));
    for (uint32_t e = 0; e < 4; e++) {
        add_field(sh + offsetof(hp_nat_shared, eni_off) + e * sizeof(uint64_t));
        add_field(sh + offsetof(hp_nat_shared, eni_len) + e * sizeof(uint64_t));
        add_field(sh + offsetof(hp_nat_shared, eni_free) + e);
        add_field(sh + offsetof(hp_nat_shared, eni_addr) + e * sizeof(hp_eni_addr) +
                  offsetof(hp_eni_addr, has));
        if (e < nat->n_enis)                     /* the pool counters at the block's start */
            add_field(nat->sh->eni_off[e]);
    }
    uint64_t conns = (uint64_t)((const uint8_t *)nat->ct.conns - nat->state.base);
    uint64_t stats = (uint64_t)((const uint8_t *)nat->ct.stats - nat->state.base);
    for (uint32_t id = 0, n = 0; id < nat->ct.capacity && n < 6; id++) {
        if (nat->ct.conns[id].state == HP_S_NONE)
            continue;
        n++;
        add_field(conns + id * sizeof(hp_conn) + offsetof(hp_conn, eni));
        add_field(conns + id * sizeof(hp_conn) + offsetof(hp_conn, nat_port));
        add_field(conns + id * sizeof(hp_conn) + offsetof(hp_conn, family));
        add_field(stats + id * sizeof(hp_conn_stats) + offsetof(hp_conn_stats, owner));
    }
    snprintf(path, sizeof path, "/dev/shm/hp-fuzz-%d-attach.state", (int)getpid());
    snprintf(aside, sizeof aside, "%s" HP_STATE_REJECTED_SUFFIX, path);
    atexit(cleanup);
}

static size_t damage(const uint8_t *data, size_t size)
{
    size_t at = 0, len = template_len;
    memcpy(work, template_bytes, template_len);
    uint8_t cut = size ? data[at++] : 0;
    if (cut & 0x80)
        len = template_len * (cut & 0x7f) / 128;
    for (int k = 0; k < MAX_PATCHES && at < size; k++) {
        uint8_t sel = data[at++];
        uint64_t off;
        if (sel < 0x80) {
            off = fields[sel % n_fields];
        } else {
            off = 0;
            for (int i = 0; i < 3; i++)
                off = off << 8 | (at < size ? data[at++] : 0);
            off %= template_len;
        }
        size_t n = (at < size ? data[at++] : 0) % 8 + 1;
        for (size_t i = 0; i < n && off + i < template_len; i++)
            work[off + i] = at < size ? data[at++] : 0;
    }
    return len;
}

static void write_file(size_t len)
{
    unlink(aside);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || write(fd, work, len) != (ssize_t)len)
        fz_fail("cannot write %s", path);
    close(fd);
}

/* An attached NAT at work: its live ENIs back with their ids (as the file says them), one
 * group, the world's sources, a packet each way for the first connections, a late expiry;
 * then the last ENI retired and released, and a new one in its id and block. */
static void exercise(hp_nat *nat)
{
    uint32_t n_enis = nat->n_enis;
    for (uint32_t e = 0; e < n_enis; e++) {
        if (nat->sh->eni_free[e])
            continue;
        const hp_eni_addr a = nat->eni_addr[e];
        /* Bytes past an address (damage the check does not read) make it another ENI:
         * the data plane then refuses to start, as it does for a changed config. */
        if (hp_nat_add_eni_at(nat, a.has[0] ? a.addr[0] : NULL, a.has[1] ? a.addr[1] : NULL,
                              (int)e) != (int)e)
            return;
    }
    int g = hp_nat_add_group(nat);
    for (uint32_t e = 0; e < n_enis; e++)
        hp_nat_group_add_eni(nat, g, (int)e);
    for (int i = 0; i < fz_n_sources; i++) {
        hp_flow_key k;
        fz_source_addr(i, &k);
        hp_nat_add_source(nat, k.family, k.src, g, 1);
    }
    static uint8_t store[MAX_FRAMES][FZ_MAX_FRAME];
    uint8_t *frames[MAX_FRAMES];
    uint32_t lens[MAX_FRAMES], n = 0;
    hp_result res[MAX_FRAMES];
    for (int dir = HP_DIR_OUT; dir <= HP_DIR_IN; dir++) {
        uint16_t in_eni = 0;
        n = 0;
        for (uint32_t id = 0; id < nat->ct.capacity && n < MAX_FRAMES; id++) {
            const hp_conn *c = &nat->ct.conns[id];
            if (c->state == HP_S_NONE)
                continue;
            fz_frame_spec s;
            memset(&s, 0, sizeof s);
            s.k.family = c->family;
            s.k.proto = c->proto;
            if (dir == HP_DIR_OUT) {
                memcpy(s.k.src, c->src, 16);
                memcpy(s.k.dst, c->dst, 16);
                s.k.sport = c->sport;
                s.k.dport = c->dport;
            } else {                     /* the reply tuple, on the connection's ENI */
                memcpy(s.k.src, c->dst, 16);
                memcpy(s.k.dst, nat->eni_addr[c->eni].addr[c->family == 6], 16);
                s.k.sport = c->dport;
                s.k.dport = c->nat_port;
                in_eni = c->eni;
            }
            s.tcp_flags = HP_TCP_ACK;
            s.ttl = 64;
            s.payload = 10;
            lens[n] = fz_build(store[n], FZ_MAX_FRAME, &s);
            frames[n] = store[n];
            n++;
        }
        if (n)
            hp_nat_translate(nat, frames, lens, n, dir, in_eni, 0, FZ_T0 + 1000, res);
    }
    hp_conn_record out[64];
    while (hp_nat_expire(nat, FZ_T0 + 100000000ull, (size_t)-1, out, 64) == 64)
        ;
    int last = (int)n_enis - 1;
    hp_eni_pools *unmap = NULL;
    if (last < 0 || hp_nat_group_retire_eni(nat, g, last) != 0 ||
        hp_nat_eni_release(nat, last, &unmap) != 0)
        return;
    hp_nat_eni_unmap(unmap);
    const uint8_t v4[4] = { 10, 0, 77, 4 };
    if (hp_nat_add_eni_at(nat, v4, NULL, last) != last)
        fz_fail("a new ENI cannot take the id %d just released", last);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!template_bytes)
        init();
    write_file(damage(data, size));
    hp_nat *nat = NULL;
    char err[512] = "";
    int r = hp_nat_open(&cfg, path, &nat, err, sizeof err);
    if (r == 0) {
        exercise(nat);
        hp_nat_destroy(nat);
        return 0;
    }
    if (r != -EINVAL)
        fz_fail("attach failed with %d (%s), not a refusal", r, err);
    if (!err[0] || strchr(err, '\n'))
        fz_fail("a refusal in other than one line: \"%s\"", err);
    /* Refused for damage: moved aside. Refused for another config: left in place. */
    int moved = access(path, F_OK) != 0 && access(aside, F_OK) == 0;
    int kept = access(path, F_OK) == 0 && access(aside, F_OK) != 0;
    if (!(strstr(err, "; kept as ") ? moved : kept))
        fz_fail("refused (%s) but the file is %s", err, moved ? "moved" : "in place");
    return 0;
}
