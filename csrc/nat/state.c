/* The state region (hp_state.h): mapping a file or anonymous memory, its header. */
#define _GNU_SOURCE
#include "hp_state.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define HUGE_PAGE ((size_t)2 << 20)

static int fail(char *err, size_t errlen, int code, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* Zeroed anonymous memory on transparent huge pages where the kernel allows (with a million
 * connections, 4 KB pages make every lookup a TLB miss as well as a cache miss), written now
 * so the data path never page-faults. */
static int map_anonymous(hp_region *st, size_t size)
{
    size_t len = size + HUGE_PAGE;
    uint8_t *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return -ENOMEM;
    uint8_t *aligned = (uint8_t *)(((uintptr_t)p + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
    if (aligned > p)
        munmap(p, (size_t)(aligned - p));
    size_t tail = (size_t)((p + len) - (aligned + size));
    if (tail)
        munmap(aligned + size, tail);
    madvise(aligned, size, MADV_HUGEPAGE);
    memset(aligned, 0, size);
    st->base = aligned;
    st->map_len = size;
    return 0;
}

static int map_file(hp_region *st, size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, st->fd, 0);
    if (p == MAP_FAILED)
        return -errno;
    st->base = p;
    st->map_len = size;
    return 0;
}

/* The first difference between the file's config and the one asked for, as a message. */
static int config_differs(const hp_state_config *have, const hp_state_config *want, char *err,
                          size_t errlen, const char *path)
{
#define DIFF(field, name)                                                                    \
    if (have->field != want->field)                                                          \
        return fail(err, errlen, -EINVAL, "state file %s was made with %s %llu, not %llu",   \
                    path, name, (unsigned long long)have->field,                             \
                    (unsigned long long)want->field);
    DIFF(capacity, "capacity")
    DIFF(port_lo, "lowest port")
    DIFF(port_hi, "highest port")
    DIFF(per_connection, "per-connection mapping")
    DIFF(journal_size, "journal size")
    DIFF(quarantine_ms, "quarantine_ms")
#undef DIFF
    for (int s = 0; s < HP_S_COUNT; s++)
        if (have->timeouts_ms[s] != want->timeouts_ms[s])
            return fail(err, errlen, -EINVAL,
                        "state file %s was made with timeout %s %llu ms, not %llu", path,
                        hp_state_names[s], (unsigned long long)have->timeouts_ms[s],
                        (unsigned long long)want->timeouts_ms[s]);
    return 0;
}

static int check_header(const hp_state_hdr *have, const hp_state_hdr *want, char *err,
                        size_t errlen, const char *path)
{
    if (memcmp(have->magic, HP_STATE_MAGIC, 8) != 0)
        return fail(err, errlen, -EINVAL, "%s is not a Hyperplane state file", path);
    if (have->version != want->version || have->n_layout != want->n_layout ||
        memcmp(have->layout, want->layout, sizeof have->layout) != 0)
        return fail(err, errlen, -EINVAL,
                    "state file %s was written by a build with another layout (version %u, "
                    "this build %u)", path, have->version, want->version);
    if (have->build_hash != want->build_hash)
        return fail(err, errlen, -EINVAL,
                    "state file %s was written by another build (%016llx, this one %016llx)",
                    path, (unsigned long long)have->build_hash,
                    (unsigned long long)want->build_hash);
    if (memcmp(have->boot_id, want->boot_id, HP_BOOT_ID_LEN) != 0)
        return fail(err, errlen, -EINVAL, "state file %s is from another boot", path);
    return 0;
}

void hp_region_boot_id(char out[HP_BOOT_ID_LEN])
{
    memset(out, 0, HP_BOOT_ID_LEN);
    int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t got = read(fd, out, HP_BOOT_ID_LEN);
    if (got != HP_BOOT_ID_LEN)
        memset(out, 0, HP_BOOT_ID_LEN);
    close(fd);
}

/* A refused file goes aside (never mapped), and the message says where. */
static void keep_aside(const char *path, char *err, size_t errlen)
{
    char aside[4096];
    if (snprintf(aside, sizeof aside, "%s" HP_STATE_REJECTED_SUFFIX, path) >= (int)sizeof aside)
        return;
    size_t used = err ? strnlen(err, errlen) : 0;
    if (rename(path, aside) == 0) {
        if (err && used < errlen)
            snprintf(err + used, errlen - used, "; kept as %s", aside);
    } else if (err && used < errlen) {
        snprintf(err + used, errlen - used, "; cannot move it aside: %s", strerror(errno));
    }
}

/* An existing file: its header, its size, then the rest (check). 0 or -EINVAL. */
static int check_existing(int fd, const hp_state_hdr *have, const hp_state_hdr *want,
                          hp_region_check_fn check, void *ctx, char *err, size_t errlen,
                          const char *path, int *sound)
{
    *sound = 0;
    int r = check_header(have, want, err, errlen, path);
    if (r)
        return r;
    /* A file of another config is sound: it is refused but stays where it is (the config
     * may come back). fixed_bytes follows from the config, so it is compared after. */
    *sound = 1;
    if ((r = config_differs(&have->config, &want->config, err, errlen, path)) != 0)
        return r;
    *sound = 0;
    if (have->fixed_bytes != want->fixed_bytes)
        return fail(err, errlen, -EINVAL, "state file %s has an unexpected size", path);
    struct stat sb;
    if (fstat(fd, &sb) != 0)
        return fail(err, errlen, -errno, "cannot stat %s: %s", path, strerror(errno));
    if ((uint64_t)sb.st_size < want->fixed_bytes)
        return fail(err, errlen, -EINVAL, "state file %s is truncated (%lld bytes of %llu)",
                    path, (long long)sb.st_size, (unsigned long long)want->fixed_bytes);
    return check ? check(ctx, fd, (uint64_t)sb.st_size, err, errlen) : 0;
}

int hp_region_open(hp_region *st, const char *path, const hp_state_hdr *want,
                   hp_region_check_fn check, void *check_ctx, char *err, size_t errlen)
{
    memset(st, 0, sizeof *st);
    st->fd = -1;
    size_t size = want->fixed_bytes;
    if (!path) {
        st->fresh = 1;
        st->size = size;
        return map_anonymous(st, size);
    }
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return fail(err, errlen, -errno, "cannot open state file %s: %s", path, strerror(errno));
    st->fd = fd;
    int r;
    /* One process at a time: a second data plane on the same state would corrupt it. The
     * kernel drops the lock when the holder dies, however it dies. */
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        r = errno == EWOULDBLOCK
                ? fail(err, errlen, -EBUSY, "state file %s is in use by another process", path)
                : fail(err, errlen, -errno, "cannot lock %s: %s", path, strerror(errno));
        goto out;
    }
    if (fchmod(fd, 0600) != 0) {
        r = fail(err, errlen, -errno, "cannot chmod %s: %s", path, strerror(errno));
        goto out;
    }
    hp_state_hdr have;
    ssize_t got = pread(fd, &have, sizeof have, 0);
    static const char zero[8];
    if (got > 0 && (got < (ssize_t)8 || memcmp(have.magic, zero, 8) != 0) &&
        got < (ssize_t)sizeof have) {
        r = fail(err, errlen, -EINVAL, "state file %s is truncated (%zd bytes)", path, got);
        keep_aside(path, err, errlen);
        goto out;
    }
    if (got == (ssize_t)sizeof have && memcmp(have.magic, zero, 8) != 0) {
        int sound;
        r = check_existing(fd, &have, want, check, check_ctx, err, errlen, path, &sound);
        if (r != 0) {
            if (r == -EINVAL && !sound)
                keep_aside(path, err, errlen);
            goto out;
        }
    } else {
        /* New, or made by a process that died before it was complete: start afresh. */
        st->fresh = 1;
        int e = ftruncate(fd, 0) != 0 ? errno : posix_fallocate(fd, 0, (off_t)size);
        if (e != 0) {
            r = fail(err, errlen, e == ENOSPC ? -ENOMEM : -e, "cannot size state file %s: %s",
                     path, strerror(e));
            goto out;
        }
    }
    st->size = size;
    if ((r = map_file(st, size)) != 0) {
        fail(err, errlen, r, "cannot map state file %s: %s", path, strerror(-r));
        goto out;
    }
    return 0;
out:
    close(fd);
    st->fd = -1;
    return r;
}

void hp_region_commit(hp_region *st, const hp_state_hdr *hdr)
{
    hp_state_hdr *h = (hp_state_hdr *)st->base;
    memcpy((char *)h + 8, (const char *)hdr + 8, sizeof *hdr - 8);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    memcpy(h->magic, hdr->magic, 8);
}

void *hp_region_map(hp_region *st, uint64_t off, size_t len, int fresh)
{
    void *p;
    if (st->fd < 0) {
        p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
                 -1, 0);
    } else {
        if (fresh && posix_fallocate(st->fd, (off_t)off, (off_t)len) != 0)
            return NULL;
        p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, st->fd,
                 (off_t)off);
    }
    return p == MAP_FAILED ? NULL : p;
}

void hp_region_unmap(void *mem, size_t len)
{
    if (mem)
        munmap(mem, len);
}

void hp_region_close(hp_region *st)
{
    if (st->base)
        munmap(st->base, st->map_len);
    if (st->fd >= 0)
        close(st->fd);
    st->base = NULL;
    st->fd = -1;
}
