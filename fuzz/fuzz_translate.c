/* Fuzz target 1: one batch of frames through hp_nat_translate / hp_nat_translate_ex, either
 * direction, with or without virtio-net headers, on a NAT that already holds connections.
 *
 * Input: [cfg][batch] then frames as [flags][len hi][len lo][bytes...]
 *   cfg:   bits 0-1 NAT variant, bit 2 vnet, bit 3 no MTU check (translate_ex), bits 4-7 clock
 *   batch: bit 0 direction (1 = IN), bits 1-2 ingress ENI, bit 3 ingress ENI = the first
 *          aimed connection's
 *   flags: bit 0 fix the checksums, bit 1 aim at a live connection (its tuple replaces the
 *          frame's), bits 2-7 which connection
 * Aiming and fixing let mutation reach the forwarding path; the oracles run on every frame. */
#include "fz.h"

#include <string.h>

static const uint32_t clock_steps[16] = {
    0, 1, 500, 999, 1000, 9999, 10000, 29999, 30000, 60000, 120000, 180000, 240001, 350000,
    500000, 7440000,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    uint8_t cfg = data[0], batch = data[1];
    int vnet = (cfg >> 2) & 1, check_mtu = !((cfg >> 3) & 1), dir = batch & 1;
    fz_world *w = fz_world_get(cfg & 3);
    w->now = FZ_T0 + clock_steps[cfg >> 4];
    uint16_t in_eni = (uint16_t)(((batch >> 1) & 3) % w->nat->n_enis);
    int eni_from_aim = (batch >> 3) & 1;

    static uint8_t store[FZ_MAX_BATCH][FZ_MAX_FRAME];
    uint8_t *frames[FZ_MAX_BATCH];
    uint32_t lens[FZ_MAX_BATCH], n = 0;
    size_t at = 2;
    while (at < size && n < FZ_MAX_BATCH) {
        uint8_t fl = data[at++];
        size_t len = at + 2 <= size ? (size_t)(data[at] << 8 | data[at + 1]) : 0;
        at += 2;
        if (at > size)
            at = size;
        if (len > size - at)
            len = size - at;
        if (len > FZ_MAX_FRAME)
            len = FZ_MAX_FRAME;
        memcpy(store[n], data + at, len);
        at += len;
        if (fl & 2) {
            int e = fz_aim(w, store[n], (uint32_t)len, vnet, dir, fl >> 2);
            if (e >= 0 && eni_from_aim) {
                in_eni = (uint16_t)e;
                eni_from_aim = 0;
            }
        }
        if (fl & 1)
            fz_fix_checksums(store[n], (uint32_t)len, vnet);
        frames[n] = store[n];
        lens[n] = (uint32_t)len;
        n++;
    }
    if (n)
        fz_translate_checked(w, frames, lens, n, dir, in_eni, vnet, check_mtu, NULL);
    return 0;
}
