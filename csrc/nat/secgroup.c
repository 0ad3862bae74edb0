/* Security-group rule sets: a linear scan, first match wins. Groups have tens of rules and
 * the scan runs once per new connection, never per packet. */
#include "hp_secgroup.h"

#include <stdlib.h>
#include <string.h>

static int rule_valid(const hp_sg_rule *r)
{
    if (r->family != 4 && r->family != 6)
        return 0;
    if (r->plen > (r->family == 4 ? 32 : 128))
        return 0;
    if (r->proto != 0 && r->proto != 6 && r->proto != 17)
        return 0;
    return r->port_lo <= r->port_hi;
}

hp_sg_set *hp_sg_set_new(const hp_sg_rule *rules, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        if (!rule_valid(&rules[i]))
            return NULL;
    hp_sg_set *s = calloc(1, sizeof *s + (size_t)n * sizeof *rules);
    if (!s)
        return NULL;
    s->hits = calloc(n ? n : 1, sizeof *s->hits);
    if (!s->hits) {
        free(s);
        return NULL;
    }
    s->n = n;
    if (n)
        memcpy(s->rules, rules, (size_t)n * sizeof *rules);
    /* Bits past the prefix length are ignored: clear them once, compare bytes later. */
    for (uint32_t i = 0; i < n; i++) {
        hp_sg_rule *r = &s->rules[i];
        uint32_t alen = r->family == 4 ? 4 : 16;
        for (uint32_t b = 0; b < 16; b++) {
            uint32_t bits = b >= alen ? 0 : r->plen >= (b + 1) * 8 ? 8
                            : r->plen > b * 8 ? r->plen - b * 8 : 0;
            r->prefix[b] &= (uint8_t)(0xFF00u >> bits);
        }
    }
    return s;
}

void hp_sg_set_free(hp_sg_set *s)
{
    if (!s)
        return;
    free(s->hits);
    free(s);
}

static int prefix_match(const hp_sg_rule *r, const uint8_t *addr)
{
    uint32_t whole = r->plen >> 3, rem = r->plen & 7;
    if (memcmp(addr, r->prefix, whole) != 0)
        return 0;
    return !rem || (addr[whole] & (uint8_t)(0xFF00u >> rem)) == r->prefix[whole];
}

int hp_sg_match(const hp_sg_set *s, const hp_flow_key *key)
{
    for (uint32_t i = 0; i < s->n; i++) {
        const hp_sg_rule *r = &s->rules[i];
        if (r->family != key->family)
            continue;
        if (r->proto && (r->proto != key->proto || key->dport < r->port_lo ||
                         key->dport > r->port_hi))
            continue;
        if (prefix_match(r, key->dst))
            return (int)i;
    }
    return -1;
}
