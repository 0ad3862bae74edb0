/* The punt policer. See hp_police.h. */
#include "hp_police.h"

#include <string.h>

#define HP_PC_NAME(name) #name,
const char *const hp_police_class_names[HP_PC_COUNT] = { HP_POLICE_CLASSES(HP_PC_NAME) };
#undef HP_PC_NAME

void hp_police_init(hp_punt_police *p, uint32_t per_s, uint32_t burst)
{
    uint32_t nm_per_s = per_s > HP_NEIGH_MISS_PER_S ? per_s : HP_NEIGH_MISS_PER_S;
    uint32_t nm_burst = burst > HP_NEIGH_MISS_BURST ? burst : HP_NEIGH_MISS_BURST;
    memset(p->slot, 0, sizeof p->slot);
    for (int q = 0; q < HP_POLICE_PORTS; q++) {
        for (int c = 0; c < HP_PC_COUNT - 1; c++)
            hp_rate_init(&p->stranger[q][c], per_s, burst);
        hp_rate_init(&p->neigh_miss[q], nm_per_s, nm_burst);
        hp_rate_init(&p->admit[q], HP_POLICE_ADMIT_PER_S, HP_POLICE_ADMIT_BURST);
    }
    p->per_s = per_s;
    p->burst = burst;
    hp_random_seed(&p->seed);
    memset(p->policed, 0, sizeof p->policed);
    memset(p->policed_class, 0, sizeof p->policed_class);
    p->strangers = 0;
}

int hp_police_class(int reason, const uint8_t *eth, uint32_t elen)
{
    switch (reason) {
    case HP_R_NEIGH_MISS: return HP_PC_NEIGH_MISS;
    case HP_R_ARP: return HP_PC_ARP;
    case HP_R_TTL_EXCEEDED: case HP_R_TOO_BIG: return HP_PC_ICMP_ERR;
    case HP_R_ICMP: break;
    default: return HP_PC_OTHER;
    }
    if (elen < 14 + 40 + 1)
        return HP_PC_OTHER;
    uint16_t et = (uint16_t)(eth[12] << 8 | eth[13]);
    const uint8_t *ip = eth + 14;
    if (et == 0x0800) {
        uint32_t ihl = (ip[0] & 15u) * 4u;
        if (14 + ihl >= elen)
            return HP_PC_OTHER;
        uint8_t type = ip[ihl];
        if (type == 8 || type == 0)
            return HP_PC_ECHO;
        return type == 3 || type == 4 || type == 5 || type == 11 || type == 12 ? HP_PC_ICMP_ERR
                                                                             : HP_PC_OTHER;
    }
    if (et == 0x86DD && ip[6] == 58) {       /* ICMPv6 right after the fixed header */
        uint8_t type = ip[40];
        if (type >= 133 && type <= 137)
            return HP_PC_NDP;
        if (type == 128 || type == 129)
            return HP_PC_ECHO;
        return type >= 1 && type <= 4 ? HP_PC_ICMP_ERR : HP_PC_OTHER;
    }
    return HP_PC_OTHER;
}

/* The source's buckets: its slot, a free or idle one it may take now, or NULL (a stranger). */
static hp_police_source *source_of(hp_punt_police *p, uint32_t port, const uint8_t *mac,
                                   uint64_t now_ms)
{
    uint8_t key[8] = { mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], (uint8_t)port };
    uint32_t set = (uint32_t)hp_siphash13(&p->seed, key, sizeof key) %
                   (HP_POLICE_SLOTS / HP_POLICE_WAYS);
    hp_police_source *ways = &p->slot[set * HP_POLICE_WAYS], *take = NULL;
    for (int w = 0; w < HP_POLICE_WAYS; w++) {
        hp_police_source *s = &ways[w];
        if (s->port == port + 1 && memcmp(s->mac, mac, 6) == 0) {
            s->last_ms = now_ms;
            return s;
        }
        if (!take && (s->port == 0 || now_ms - s->last_ms >= HP_POLICE_IDLE_MS))
            take = s;
    }
    if (!take || !hp_rate_take(&p->admit[port], now_ms))
        return NULL;
    memcpy(take->mac, mac, 6);
    take->port = (uint16_t)(port + 1);
    take->last_ms = now_ms;
    for (int c = 0; c < HP_PC_COUNT - 1; c++)
        hp_rate_init(&take->rate[c], p->per_s, p->burst);
    return take;
}

int hp_police_punt(hp_punt_police *p, uint32_t port, int reason, const uint8_t *eth,
                   uint32_t elen, uint64_t now_ms)
{
    if (port >= HP_POLICE_PORTS || reason < 0 || reason >= HP_R_COUNT)
        return 1;
    int c = hp_police_class(reason, eth, elen);
    hp_rate *bucket;
    if (c == HP_PC_NEIGH_MISS) {
        bucket = &p->neigh_miss[port];
    } else {
        hp_police_source *s = elen >= 12 ? source_of(p, port, eth + 6, now_ms) : NULL;
        if (!s)
            p->strangers++;
        bucket = s ? &s->rate[c] : &p->stranger[port][c];
    }
    if (hp_rate_take(bucket, now_ms))
        return 1;
    p->policed[reason]++;
    p->policed_class[c]++;
    return 0;
}
