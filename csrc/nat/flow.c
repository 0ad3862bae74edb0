/* The start-up seed of the keyed hashes (hp_flow.h). */
#include "hp_flow.h"

#include <string.h>
#include <sys/random.h>
#include <time.h>

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
