/* Names for the enums in hp_types.h and the two timeout profiles (docs/semantics.md 2.1). */
#include "hp_types.h"

#define HP_NAME(name) #name,
const char *const hp_reason_names[HP_R_COUNT] = { HP_REASONS(HP_NAME) };
const char *const hp_state_names[HP_S_COUNT] = { HP_STATES(HP_NAME) };
#undef HP_NAME

void hp_timeouts_profile(hp_timeouts *t, int rfc)
{
    /* seconds, indexed by state */
    static const uint32_t aws[HP_S_COUNT] = {
        [HP_S_NONE] = 0, [HP_S_SYN_SENT] = 120, [HP_S_SYN_RECV] = 60,
        [HP_S_ESTABLISHED] = 350, [HP_S_FIN_WAIT] = 120, [HP_S_CLOSE_WAIT] = 60,
        [HP_S_LAST_ACK] = 30, [HP_S_TIME_WAIT] = 120, [HP_S_CLOSE] = 10,
        [HP_S_UDP_FIRST] = 30, [HP_S_UDP_STREAM] = 180,
    };
    static const uint32_t rfc_[HP_S_COUNT] = {
        [HP_S_NONE] = 0, [HP_S_SYN_SENT] = 240, [HP_S_SYN_RECV] = 240,
        [HP_S_ESTABLISHED] = 7440, [HP_S_FIN_WAIT] = 240, [HP_S_CLOSE_WAIT] = 240,
        [HP_S_LAST_ACK] = 240, [HP_S_TIME_WAIT] = 240, [HP_S_CLOSE] = 240,
        [HP_S_UDP_FIRST] = 300, [HP_S_UDP_STREAM] = 300,
    };
    const uint32_t *src = rfc ? rfc_ : aws;
    for (int s = 0; s < HP_S_COUNT; s++)
        t->ms[s] = (uint64_t)src[s] * 1000;
}
