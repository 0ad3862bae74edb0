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

/* SipHash-1-3 over the key: an attacker who does not know the seed cannot aim at a bucket. */
uint64_t hp_flow_hash(const hp_hash_seed *seed, const hp_flow_key *key);
uint64_t hp_siphash13(const hp_hash_seed *seed, const void *data, size_t len);

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
