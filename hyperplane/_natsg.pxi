# Security groups, the reject journal, per-ENI counters and the RST limit (csrc/nat/natsg.c), as
# module functions the Nat's methods call: included by _core.pyx.

from .flowlog import Rejected
from .connection import addr_str as _addr_str

_PROTO_KEYS = ("tcp", "udp")


def _compile_rules(rules):
    """Rules as (proto, port_lo, port_hi, family, prefix, plen) (lab.secgroups.SgRule) to a
    bytes block of hp_sg_rule; ValueError naming the first bad one."""
    out = bytearray(len(rules) * sizeof(hp_sg_rule))
    cdef hp_sg_rule *r
    cdef uint8_t *base = out
    cdef Py_ssize_t i
    for i in range(len(rules)):
        rule = rules[i]
        proto, lo, hi, family, prefix, plen = rule
        fam, raw = addr_bytes(prefix)
        if (fam != family or proto not in (0, 6, 17) or not 0 <= lo <= hi <= 65535
                or not 0 <= plen <= (32 if fam == 4 else 128)):
            raise ValueError(f"bad security-group rule {tuple(rule)!r}")
        r = <hp_sg_rule *>(base + i * sizeof(hp_sg_rule))
        memcpy(r.prefix, <const uint8_t *>raw, 16)
        r.port_lo, r.port_hi, r.family, r.proto, r.plen = lo, hi, fam, proto, plen
    return out


cdef object _set_group_rules(Nat self, int group, rules):
    cdef hp_nat_obs *o = <hp_nat_obs *>self.nat
    if not 0 <= group < o.n_groups:
        raise ValueError(f"no group {group}")
    cdef hp_sg_set *new = NULL
    cdef hp_sg_set *old
    cdef bytes block
    if rules is not None:
        rules = list(rules)
        block = bytes(_compile_rules(rules))
        new = hp_sg_set_new(<const hp_sg_rule *><const uint8_t *>block, len(rules))
        if new == NULL:
            raise MemoryError("cannot allocate a rule set")
    with nogil:
        self._acquire()
        old = hp_nat_swap_group_rules(self.nat, group, new)
        self._release()
        hp_sg_set_free(old)


cdef object _sg_counters(Nat self, int group):
    cdef hp_nat_obs *o = <hp_nat_obs *>self.nat
    if not 0 <= group < o.n_groups:
        raise ValueError(f"no group {group}")
    cdef hp_sg_set *s
    cdef uint64_t denied
    cdef uint32_t cap = 0, n = 0, i
    cdef int has_rules = 0
    cdef uint64_t *hits = NULL
    try:
        while True:     # copied under the lock, built after it (no GIL while it is held)
            with nogil:
                self._acquire()
                s = o.groups[group].sg
                denied = o.groups[group].sg_denied
                has_rules = s != NULL
                n = s.n if has_rules else 0
                if n <= cap:
                    for i in range(n):
                        hits[i] = s.hits[i]
                self._release()
            if n <= cap:
                break
            free(hits)
            cap = n
            hits = <uint64_t *>malloc(cap * sizeof(uint64_t))
            if hits == NULL:
                raise MemoryError()
        return {"denied": denied, "rules": [hits[i] for i in range(n)] if has_rules else None}
    finally:
        free(hits)


cdef object _rejected(Nat self, uint32_t max_records):
    cdef hp_nat_obs *o = <hp_nat_obs *>self.nat
    cdef uint32_t n = 0, i
    if max_records > HP_REJECT_RING:
        max_records = HP_REJECT_RING
    cdef hp_reject *buf = <hp_reject *>malloc(max(max_records, 1) * sizeof(hp_reject))
    if buf == NULL:
        raise MemoryError()
    try:
        with nogil:
            self._acquire()
            n = hp_reject_take(&o.rejects, buf, max_records)
            self._release()
        out = []
        for i in range(n):
            r = &buf[i]
            fam = r.family
            src, dst = _addr_str(fam, r.src[:16]), _addr_str(fam, r.dst[:16])
            reason = REASONS[r.reason]
            if r.dir == 0:      # egress denial: as the ENI would have sent it
                eni_addr = _addr_str(fam, self.nat.eni_addr[r.eni].addr[fam == 6][:16])
                out.append(Rejected(r.eni, "egress", fam, r.proto, eni_addr, dst, r.sport,
                                    r.dport, r.len, r.ms, r.tcp_flags, src, reason))
            else:
                out.append(Rejected(r.eni, "ingress", fam, r.proto, src, dst, r.sport, r.dport,
                                    r.len, r.ms, r.tcp_flags, "-", reason))
        return out
    finally:
        free(buf)


cdef object _eni_counters(Nat self, int eni):
    cdef hp_nat_obs *o = <hp_nat_obs *>self.nat
    if not 0 <= eni < self.nat.n_enis:
        raise ValueError(f"no ENI {eni}")
    cdef hp_eni_counters c
    with nogil:
        self._acquire()
        c = o.eni_ctr[eni]
        self._release()
    return {"packets_out": c.packets[0], "packets_in": c.packets[1],
            "bytes_out": c.bytes[0], "bytes_in": c.bytes[1],
            "attempts": dict(zip(_PROTO_KEYS, c.attempts)),
            "established": dict(zip(_PROTO_KEYS, c.established)),
            "active": dict(zip(_PROTO_KEYS, c.active)),
            "port_errors": c.port_errors, "idle_timeouts": c.idle_timeouts,
            "drops": c.drops, "rst_sent": c.rst_sent,
            "drops_by_reason": {REASONS[i]: c.drop_reasons[i] for i in range(HP_R_COUNT)
                                if c.drop_reasons[i]}}


cdef object _set_rst_limit(Nat self, uint32_t per_s, uint32_t burst):
    cdef hp_nat_obs *o = <hp_nat_obs *>self.nat
    with nogil:
        self._acquire()
        hp_rate_init(&o.rst_rate, per_s, burst)
        self._release()
