/* The flow key and the keyed hash that indexes it. */
#ifndef HP_FLOW_H
#define HP_FLOW_H

#include "hp_types.h"

/* One layout for IPv4 and IPv6: an IPv4 address takes the first 4 bytes, the rest stay zero. */
typedef struct hp_flow_key {
    uint8_t src[16];
    uint8_t dst[16];
    uint16_t sport;      /* host byte order */
    uint16_t dport;
    uint8_t family;      /* 4 or 6 */
    uint8_t proto;       /* 6 TCP, 17 UDP */
    uint16_t pad;        /* always zero, so keys compare with memcmp */
} hp_flow_key;

typedef struct hp_hash_seed {
    uint64_t k0, k1;
} hp_hash_seed;

#define HP_SIP_ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define HP_SIPROUND()                                                                  \
    do {                                                                               \
        v0 += v1; v1 = HP_SIP_ROTL(v1, 13); v1 ^= v0; v0 = HP_SIP_ROTL(v0, 32);        \
        v2 += v3; v3 = HP_SIP_ROTL(v3, 16); v3 ^= v2;                                  \
        v0 += v3; v3 = HP_SIP_ROTL(v3, 21); v3 ^= v0;                                  \
        v2 += v1; v1 = HP_SIP_ROTL(v1, 17); v1 ^= v2; v2 = HP_SIP_ROTL(v2, 32);        \
    } while (0)

/* SipHash-1-3 (Aumasson & Bernstein). Inline: every caller hashes a fixed length (a flow key,
 * an endpoint, a pool's draw), so the compiler unrolls it; a new connection hashes four times,
 * and as a call with a loop that was a fifth of its cost. */
static inline uint64_t hp_siphash13(const hp_hash_seed *seed, const void *data, size_t len)
{
    const uint8_t *in = data;
    uint64_t v0 = 0x736f6d6570736575ull ^ seed->k0;
    uint64_t v1 = 0x646f72616e646f6dull ^ seed->k1;
    uint64_t v2 = 0x6c7967656e657261ull ^ seed->k0;
    uint64_t v3 = 0x7465646279746573ull ^ seed->k1;
    size_t words = len / 8;
    for (size_t w = 0; w < words; w++, in += 8) {
        uint64_t m;
        __builtin_memcpy(&m, in, 8);   /* little endian on every machine we build for */
        v3 ^= m;
        HP_SIPROUND();
        v0 ^= m;
    }
    uint64_t b = (uint64_t)len << 56;
    for (size_t i = 0; i < (len & 7); i++)
        b |= (uint64_t)in[i] << (8 * i);
    v3 ^= b;
    HP_SIPROUND();
    v0 ^= b;
    v2 ^= 0xff;
    HP_SIPROUND();
    HP_SIPROUND();
    HP_SIPROUND();
    return v0 ^ v1 ^ v2 ^ v3;
}

/* SipHash-1-3 over the key: an attacker who does not know the seed cannot aim at a bucket. */
static inline uint64_t hp_flow_hash(const hp_hash_seed *seed, const hp_flow_key *key)
{
    /* The key is 40 bytes with zeroed padding, so five whole words. */
    _Static_assert(sizeof(hp_flow_key) == 40, "flow key layout");
    return hp_siphash13(seed, key, sizeof *key);
}

/* SplitMix64: small, fast and easy to mirror in the Python model draw for draw. */
static inline uint64_t hp_splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Fills a seed from the kernel's random source; falls back to time and address entropy. */
void hp_random_seed(hp_hash_seed *seed);

#endif
