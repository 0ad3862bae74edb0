/* SipHash-1-3 (Aumasson & Bernstein) over flow keys, and the start-up seed. */
#include "hp_flow.h"

#include <string.h>
#include <sys/random.h>
#include <time.h>

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND()                                                         \
    do {                                                                   \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);          \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                             \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                             \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);          \
    } while (0)

static inline uint64_t load64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);   /* little endian on every machine we build for */
    return v;
}

uint64_t hp_siphash13(const hp_hash_seed *seed, const void *data, size_t len)
{
    const uint8_t *in = data;
    uint64_t v0 = 0x736f6d6570736575ull ^ seed->k0;
    uint64_t v1 = 0x646f72616e646f6dull ^ seed->k1;
    uint64_t v2 = 0x6c7967656e657261ull ^ seed->k0;
    uint64_t v3 = 0x7465646279746573ull ^ seed->k1;
    const uint8_t *end = in + (len & ~(size_t)7);
    for (; in != end; in += 8) {
        uint64_t m = load64(in);
        v3 ^= m;
        SIPROUND();
        v0 ^= m;
    }
    uint64_t b = (uint64_t)len << 56;
    for (size_t i = 0; i < (len & 7); i++)
        b |= (uint64_t)in[i] << (8 * i);
    v3 ^= b;
    SIPROUND();
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND();
    SIPROUND();
    SIPROUND();
    return v0 ^ v1 ^ v2 ^ v3;
}

uint64_t hp_flow_hash(const hp_hash_seed *seed, const hp_flow_key *key)
{
    /* The key is 40 bytes with zeroed padding, so five whole words. */
    _Static_assert(sizeof(hp_flow_key) == 40, "flow key layout");
    return hp_siphash13(seed, key, sizeof *key);
}

void hp_random_seed(hp_hash_seed *seed)
{
    if (getrandom(seed, sizeof *seed, 0) == (ssize_t)sizeof *seed)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t s = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)(uintptr_t)seed;
    seed->k0 = hp_splitmix64(&s);
    seed->k1 = hp_splitmix64(&s);
}
