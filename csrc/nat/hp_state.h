/* The NAT's state region: everything a data plane needs to carry on after it was killed.
 *
 * One file-backed MAP_SHARED mapping (mode 0600; anonymous memory when there is no path), laid
 * out as:
 *   page 0      hp_state_hdr: magic, layout version and sizes, the config that shaped it
 *   page 1...   hp_nat_shared: hash seed, port-choice state, counters, drops, ENI addresses,
 *               the offsets of the ENI pools, the journal's head
 *               the journal (expired connections not yet read)
 *               the connection table: entries, their side arrays (HP_CT_ARRAYS), the index
 *   then        one block per ENI, appended when it is added (or the block of a released
 *               ENI whose id it takes, when its pools fit there): its port pools
 * Inside the region only offsets and indices; every pointer is process-local, made at attach.
 *
 * Attaching (the file exists and its header matches) validates every live entry and rebuilds
 * what is derived from the entries: the index, the table's free and LRU lists, and each pool's
 * owners, mappings and free ports (keeping its quarantine). A process killed in the middle of
 * an update thus loses at most the connection it was writing, never a port a live connection
 * holds. See docs/semantics.md section 10. */
#ifndef HP_STATE_H
#define HP_STATE_H

#include "hp_types.h"

#define HP_STATE_MAGIC "HPNATST\x01"
#define HP_STATE_VERSION 5u
/* The build that wrote a file: setup.py passes a digest of csrc/'s headers, so a rebuilt core
 * whose structures mean something else refuses the file even when every size matches. */
#ifndef HP_BUILD_HASH
#define HP_BUILD_HASH 0ull
#endif
#define HP_BOOT_ID_LEN 36
/* A refused file is renamed to its path with this suffix (an older one replaced) and never
 * mapped: the next start makes a fresh one, the bad one stays for inspection. */
#define HP_STATE_REJECTED_SUFFIX ".rejected"

/* What shapes the region: attach needs the same values. */
typedef struct hp_state_config {
    uint32_t capacity;
    uint16_t port_lo, port_hi;
    uint32_t per_connection;
    uint32_t journal_size;
    uint64_t quarantine_ms;
    uint64_t timeouts_ms[HP_S_COUNT];
} hp_state_config;

typedef struct hp_state_hdr {
    char magic[8];               /* written last when the file is made */
    uint32_t version;
    uint32_t n_layout;
    uint64_t layout[16];         /* sizes of the structures the region holds */
    uint64_t fixed_bytes;        /* header, NAT, journal and table */
    uint64_t build_hash;         /* HP_BUILD_HASH of the writer */
    char boot_id[HP_BOOT_ID_LEN];    /* the kernel's boot id when it was made */
    uint32_t pad;
    hp_state_config config;
} hp_state_hdr;

/* Checks the rest of an existing file before anything of it is mapped: fd is open on it,
 * file_size its size (at least the fixed part). Returns 0, or -EINVAL with a message. */
typedef int (*hp_region_check_fn)(void *ctx, int fd, uint64_t file_size, char *err,
                                  size_t errlen);

/* The mapping: process-local. */
typedef struct hp_region {
    int fd;                      /* -1: anonymous memory */
    uint8_t *base;               /* the fixed part */
    size_t size, map_len;        /* its size; what was mapped (anonymous memory is aligned) */
    int fresh;                   /* made now, not attached */
} hp_region;

/* Maps the fixed part: path NULL gives zeroed anonymous memory; else the file is opened
 * (created 0600 when missing or never completed), locked against a second process, its header
 * checked against want (layout, build, boot, config, size) and the rest by check (may be
 * NULL). Returns 0; -EINVAL with one line in err when the file is refused (then renamed to
 * path HP_STATE_REJECTED_SUFFIX, never mapped); or another -errno. */
int hp_region_open(hp_region *st, const char *path, const hp_state_hdr *want,
                   hp_region_check_fn check, void *check_ctx, char *err, size_t errlen);
/* This boot's id (/proc/sys/kernel/random/boot_id), or zeros when it cannot be read. */
void hp_region_boot_id(char out[HP_BOOT_ID_LEN]);
/* Marks a freshly made file complete (writes the header, magic last). */
void hp_region_commit(hp_region *st, const hp_state_hdr *hdr);
/* Maps len bytes at offset off of the file (zeroed anonymous memory without a file); fresh
 * extends the file first. NULL on failure. */
void *hp_region_map(hp_region *st, uint64_t off, size_t len, int fresh);
void hp_region_unmap(void *mem, size_t len);
void hp_region_close(hp_region *st);

#endif
