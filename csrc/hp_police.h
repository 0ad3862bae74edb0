/* Token buckets for what the data plane does on its own initiative: refusals sent to the
 * functions and frames punted to the slow path (docs/semantics.md section 12). */
#ifndef HP_POLICE_H
#define HP_POLICE_H

#include <stdint.h>

typedef struct hp_bucket {
    uint64_t last_ms;
    uint64_t milli;              /* tokens, in thousandths */
    uint32_t rate;               /* tokens per second; 0: unlimited */
    uint32_t burst;              /* tokens at most */
} hp_bucket;

/* A full bucket. rate 0: every take succeeds. */
void hp_bucket_init(hp_bucket *b, uint32_t rate, uint32_t burst, uint64_t now_ms);

/* Takes a token if there is one. */
static inline int hp_bucket_take(hp_bucket *b, uint64_t now_ms)
{
    if (b->rate == 0)
        return 1;
    if (now_ms > b->last_ms) {
        uint64_t cap = (uint64_t)b->burst * 1000;
        uint64_t add = (now_ms - b->last_ms) * b->rate;     /* ms * tokens/s = milli-tokens */
        b->milli = add >= cap - b->milli ? cap : b->milli + add;
        b->last_ms = now_ms;
    }
    if (b->milli < 1000)
        return 0;
    b->milli -= 1000;
    return 1;
}

/* The answer to a refused new connection (section 12): for a TCP SYN a RST from the
 * destination, for anything else an ICMP destination unreachable, administratively prohibited
 * (RFC 5508 REQ-8: type 3 code 13, ICMPv6 type 1 code 1) from the destination's address,
 * quoting the refused datagram. frame is an Ethernet frame without virtio-net header; the
 * answer goes back to its sender's MAC from the MAC it was sent to. Returns the answer's
 * length, or 0 when there is none (not TCP or UDP, not the start of a connection, too short,
 * or cap too small). */
uint32_t hp_refusal_build(const uint8_t *frame, uint32_t len, uint8_t *out, uint32_t cap);

#endif
