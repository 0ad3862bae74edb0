/* Security groups (docs/semantics.md section 9): a NAT group's egress rules, compiled by the
 * control plane into a flat list and checked once per new connection. Stateful: replies and
 * later packets of an allowed connection never see the rules again. */
#ifndef HP_SECGROUP_H
#define HP_SECGROUP_H

#include "hp_flow.h"

/* One compiled rule: 24 bytes. proto 0 matches TCP and UDP (AWS's "all", every port). */
typedef struct hp_sg_rule {
    uint8_t prefix[16];          /* network address, IPv4 in the first 4 bytes */
    uint16_t port_lo, port_hi;   /* destination ports, inclusive */
    uint8_t family, proto, plen, pad;
} hp_sg_rule;

/* A group's rule set; replaced whole (new connections see the new set, live ones are never
 * checked again). Counters of the rules live with them. */
typedef struct hp_sg_set {
    uint32_t n;
    uint32_t pad;
    uint64_t *hits;              /* [n]: connections each rule let out (the first that matched) */
    hp_sg_rule rules[];
} hp_sg_set;

/* A set holding n rules, counters zero; NULL when out of memory or a rule is malformed
 * (family not 4/6, plen too long, ports reversed, proto not 0/6/17). */
hp_sg_set *hp_sg_set_new(const hp_sg_rule *rules, uint32_t n);
void hp_sg_set_free(hp_sg_set *s);

/* The first rule allowing key (its index), or -1 when none does. */
int hp_sg_match(const hp_sg_set *s, const hp_flow_key *key);

#endif
