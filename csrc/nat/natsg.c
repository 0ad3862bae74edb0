/* The NAT's Lambda-facing extras over nat.c: security-group checks at connection creation,
 * the reject journal, per-ENI counters and the idle-timeout RST (docs/semantics.md 9). */
#include "hp_nat.h"
#include "hp_answer.h"

#include <stdlib.h>
#include <string.h>


int hp_nat_obs_init(hp_nat *nat)
{
    /* nat->eni_ctr lives in the state region (hp_nat_shared): it outlives the process. */
    nat->rejects.rec = calloc(HP_REJECT_RING, sizeof *nat->rejects.rec);
    hp_rate_init(&nat->rst_rate, HP_RST_PER_S, HP_RST_BURST);
    return nat->rejects.rec ? 0 : -1;
}

void hp_nat_obs_free(hp_nat *nat)
{
    for (uint32_t g = 0; g < nat->n_groups; g++)
        hp_sg_set_free(nat->groups[g].sg);
    free(nat->rejects.rec);
}

hp_sg_set *hp_nat_swap_group_rules(hp_nat *nat, int group, hp_sg_set *set)
{
    if (group < 0 || (uint32_t)group >= nat->n_groups)
        return (hp_sg_set *)-1;
    hp_sg_set *old = nat->groups[group].sg;
    nat->groups[group].sg = set;
    return old;
}

static uint16_t newest_eni(const hp_group *g)
{
    return g->n_enis ? g->enis[g->n_enis - 1] : HP_ENI_NONE;
}

int hp_nat_sg_check(hp_nat *nat, hp_group *g, const hp_pkt *pkt, uint64_t now_ms)
{
    if (!g->sg)
        return HP_R_NONE;
    int rule = hp_sg_match(g->sg, &pkt->key);
    if (rule >= 0) {
        g->sg->hits[rule]++;
        return HP_R_NONE;
    }
    g->sg_denied++;
    uint16_t eni = newest_eni(g);
    if (eni != HP_ENI_NONE) {
        hp_nat_eni_drop(nat, eni, HP_R_SG_DENIED);
        if (nat->eni_addr[eni].has[pkt->family == 6])   /* a record names the ENI's address */
                hp_reject_push(&nat->rejects, pkt, HP_DIR_OUT, eni, HP_R_SG_DENIED, now_ms,
                           &nat->counters[HP_C_REJECT_OVERFLOW]);
    }
    return HP_R_SG_DENIED;
}

void hp_nat_note_refused(hp_nat *nat, const hp_pkt *pkt, int dir, uint16_t in_eni, int reason,
                         uint64_t now_ms)
{
    if (dir != HP_DIR_IN || in_eni >= nat->n_enis)
        return;
    if (reason == HP_R_IN_UNSOLICITED_SYN || reason == HP_R_IN_NO_MATCH_TCP ||
        reason == HP_R_IN_NO_MATCH_UDP)
        hp_reject_push(&nat->rejects, pkt, HP_DIR_IN, in_eni, reason, now_ms,
                       &nat->counters[HP_C_REJECT_OVERFLOW]);
}

void hp_nat_idle_rst(hp_nat *nat, hp_pkt *pkt, uint16_t eni, uint64_t now_ms, hp_result *res)
{
    if (pkt->tcp_flags & HP_TCP_RST)
        return;                  /* never answer a RST (RFC 793) */
    if (!hp_rate_take(hp_police_answer_rate(nat, pkt, 1), now_ms)) {
        nat->counters[HP_C_RST_LIMITED]++;
        return;
    }
    hp_rst_build(pkt);
    nat->counters[HP_C_RST_SENT]++;
    if (eni < nat->n_enis)
        nat->eni_ctr[eni].rst_sent++;
    res->verdict = HP_FORWARD;   /* reason stays TCP_NOT_SYN: the segment itself was dropped */
    res->port = 0;
}
