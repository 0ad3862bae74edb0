# cython: language_level=3
"""Thin bindings over the C core: own the C objects, expose batch calls, release the GIL."""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset

from hyperplane._hp cimport *

import errno as errnum
import os

from .connection import Connection, addr_bytes, addr_str, mac_bytes
from .natparams import resolve
from . import vocab

REASONS = tuple(hp_reason_names[i].decode() for i in range(HP_R_COUNT))
STATES = tuple(hp_state_names[i].decode() for i in range(HP_S_COUNT))
COUNTERS = tuple(hp_counter_names[i].decode() for i in range(HP_C_COUNT))
SIZEOF_CONN = sizeof(hp_conn) + sizeof(hp_conn_stats) + sizeof(hp_tcp_win)
MAX_CAPACITY = HP_MAX_CAPACITY


def index_slots(uint64_t capacity):
    """Index slots the C table gives this capacity (for the bound's test)."""
    return hp_ct_index_slots(capacity)


cdef class _Batch:
    """The arrays one batch call needs: frame pointers, lengths and results."""
    cdef uint8_t **ptrs
    cdef uint32_t *lens
    cdef hp_result *res

    def __cinit__(self, Py_ssize_t n):
        self.ptrs = <uint8_t **>malloc(max(n, 1) * sizeof(uint8_t *))
        self.lens = <uint32_t *>malloc(max(n, 1) * sizeof(uint32_t))
        self.res = <hp_result *>malloc(max(n, 1) * sizeof(hp_result))
        if not self.ptrs or not self.lens or not self.res:
            raise MemoryError()

    def __dealloc__(self):
        free(self.ptrs)
        free(self.lens)
        free(self.res)


cdef class Nat:
    """The NAT's C core; see docs/semantics.md section 8 for the API it shares with the model."""

    cdef hp_nat *nat
    cdef readonly object params

    def __cinit__(self, *args, **kwargs):
        self.nat = NULL

    # The table lock arrives with the data-plane thread (dp); until then a no-op.
    cdef void _acquire(self) noexcept nogil:
        pass

    cdef void _release(self) noexcept nogil:
        pass

    def __init__(self, state_path=None, **kwargs):
        """state_path: keep the table, pools and counters in this file (csrc/hp_state.h),
        attaching to what a previous process left there; None keeps them in private memory."""
        p = resolve(**kwargs)
        self.params = p
        cdef hp_nat_config cfg
        hp_nat_config_default(&cfg)
        cfg.capacity = p.capacity
        cfg.port_lo = p.port_lo
        cfg.port_hi = p.port_hi
        cfg.per_connection = p.per_connection
        cfg.quarantine_ms = p.quarantine_ms
        cfg.mtu_inside = p.mtu_inside
        cfg.mtu_outside = p.mtu_outside
        cfg.journal_size = p.journal_size
        cfg.port_seed = p.port_seed
        for s, ms in enumerate(p.timeouts_ms):
            cfg.timeouts.ms[s] = ms
        if p.hash_seed is not None:
            cfg.hash_seed.k0, cfg.hash_seed.k1 = p.hash_seed
        cdef char err[512]
        cdef bytes path = None if state_path is None else os.fsencode(state_path)
        cdef const char *cpath = NULL
        if path is not None:
            cpath = path
        cdef int r = hp_nat_open(&cfg, cpath, &self.nat, err, sizeof(err))
        if r == 0:
            return
        msg = err.decode(errors="replace")
        if r == -errnum.ENOMEM:
            raise MemoryError(msg or f"cannot allocate a NAT for {p.capacity} connections")
        if r == -errnum.EINVAL:
            raise ValueError(msg)
        raise OSError(-r, msg)

    def __dealloc__(self):
        hp_nat_destroy(self.nat)

    # --- configuration -------------------------------------------------------------------

    def add_eni(self, v4=None, v6=None):
        cdef bytes b4 = None, b6 = None
        cdef const hp_eni_addr *old
        if v4 is not None:
            fam, raw = addr_bytes(v4)
            if fam != 4:
                raise ValueError(f"not an IPv4 address: {v4}")
            b4 = raw[:4]
        if v6 is not None:
            fam, raw = addr_bytes(v6)
            if fam != 6:
                raise ValueError(f"not an IPv6 address: {v6}")
            b6 = raw
        if b4 is None and b6 is None:
            raise ValueError("an ENI needs an IPv4 or an IPv6 address")
        e = hp_nat_add_eni(self.nat, <const uint8_t *>b4 if b4 is not None else NULL,
                           <const uint8_t *>b6 if b6 is not None else NULL)
        if e == -2:
            old = &self.nat.eni_addr[self.nat.n_readded]
            have = " ".join([addr_str(4 if f == 0 else 6, old.addr[f][:16])
                             for f in range(2) if old.has[f]])
            raise ValueError(f"ENI {self.nat.n_readded} of the state file has {have}; ENIs "
                             "must come back in the same order with the same addresses")
        if e < 0:
            raise RuntimeError("cannot add an ENI (limit reached or out of memory)")
        return e

    def add_group(self):
        g = hp_nat_add_group(self.nat)
        if g < 0:
            raise MemoryError("cannot add a group")
        return g

    def group_add_eni(self, int group, int eni):
        if hp_nat_group_add_eni(self.nat, group, eni) != 0:
            raise ValueError(f"cannot add ENI {eni} to group {group}")

    def add_source(self, addr, int group, allow_v6=False, mac=None):
        fam, raw = addr_bytes(addr)
        cdef bytes m = mac_bytes(mac) if mac is not None else None
        if hp_nat_add_source_mac(self.nat, fam, <const uint8_t *>raw, group, bool(allow_v6),
                                 <const uint8_t *>m if m is not None else NULL) != 0:
            raise ValueError(f"cannot add source {addr} to group {group}")

    # --- the batch calls -----------------------------------------------------------------

    def translate(self, frames, int direction, uint64_t now_ms, int eni=0, bint vnet=False,
                  bint check_mtu=True):
        """Translates bytearrays in place; returns (verdict, reason, port, conn) per frame."""
        cdef Py_ssize_t n = len(frames), i
        if direction not in (vocab.OUT, vocab.IN):
            raise ValueError("direction must be vocab.OUT or vocab.IN")
        if n == 0:
            return []
        cdef _Batch b = _Batch(n)
        for i in range(n):
            f = frames[i]
            if type(f) is not bytearray:
                raise TypeError("frames must be bytearrays (they are rewritten in place)")
            b.ptrs[i] = <uint8_t *>PyByteArray_AS_STRING(f)
            b.lens[i] = PyByteArray_GET_SIZE(f)
        with nogil:
            hp_nat_translate_ex(self.nat, b.ptrs, b.lens, n, direction, eni, vnet, check_mtu,
                                now_ms, b.res)
        return [(b.res[i].verdict, b.res[i].reason, b.res[i].port,
                 -1 if b.res[i].conn == HP_CT_NONE else b.res[i].conn) for i in range(n)]

    def translate_packed(self, const uint8_t[::1] template, uint8_t[::1] work, uint32_t stride,
                         int direction, uint64_t now_ms, int eni=0, bint vnet=False):
        """Copies template into work and translates the frames packed in it every stride bytes.
        For benchmarks: one call, no Python per frame. Returns the number forwarded."""
        cdef uint32_t n = template.shape[0] // stride, i, forwarded = 0
        if work.shape[0] < template.shape[0] or n == 0:
            raise ValueError("work must be at least as large as template, holding >= 1 frame")
        cdef _Batch b = _Batch(n)
        with nogil:
            memcpy(&work[0], &template[0], n * stride)
            for i in range(n):
                b.ptrs[i] = &work[i * stride]
                b.lens[i] = stride
            hp_nat_translate(self.nat, b.ptrs, b.lens, n, direction, eni, vnet, now_ms, b.res)
            for i in range(n):
                forwarded += b.res[i].verdict == 0
        return forwarded

    def lookup_packed(self, const uint8_t[::1] keys, int direction):
        """Looks up packed 40-byte flow keys (pack_key) in one batch; returns how many hit."""
        cdef uint32_t n = keys.shape[0] // sizeof(hp_flow_key), i, hits = 0
        cdef uint32_t *ids = <uint32_t *>malloc(max(n, 1) * sizeof(uint32_t))
        if not ids:
            raise MemoryError()
        with nogil:
            hp_ct_lookup_batch(&self.nat.ct, <const hp_flow_key *>&keys[0], n, direction, ids)
            for i in range(n):
                hits += ids[i] != HP_CT_NONE
        free(ids)
        return hits

    def expire(self, uint64_t now_ms, max=1 << 30, bint collect=True):
        """Removes expired connections. With collect, returns them as Connection objects
        (those found expired during lookups first); without, returns how many were removed."""
        cdef size_t remaining = max, chunk, got, j, i
        cdef hp_conn_record *buf
        if not collect:
            before = self.nat.counters[6]
            with nogil:
                hp_nat_expire(self.nat, now_ms, remaining, NULL, 0)
            return self.nat.counters[6] - before
        out = []
        while True:
            j = self.nat.sh.j_count
            chunk = remaining if remaining < 4096 else 4096
            buf = <hp_conn_record *>malloc((j + chunk + 1) * sizeof(hp_conn_record))
            if not buf:
                raise MemoryError()
            try:
                with nogil:
                    got = hp_nat_expire(self.nat, now_ms, chunk, buf, j + chunk)
                for i in range(got):
                    out.append(self._conn(&buf[i].conn, &buf[i].stats, 0xFFFFFFFF))
            finally:
                free(buf)
            remaining -= got - j
            if got - j < chunk or remaining == 0:
                return out

    def lookup(self, src, dst, int sport, int dport, int proto, int direction, uint64_t now_ms):
        """The live connection whose original (OUT) or reply (IN) tuple this is, or None."""
        cdef hp_flow_key key
        fam, s = addr_bytes(src)
        fam2, d = addr_bytes(dst)
        if fam != fam2:
            return None
        memset(&key, 0, sizeof(key))
        memcpy(key.src, <const uint8_t *>s, 16)
        memcpy(key.dst, <const uint8_t *>d, 16)
        key.sport, key.dport, key.family, key.proto = sport, dport, fam, proto
        cdef uint32_t cid = hp_nat_lookup(self.nat, &key, direction, now_ms)
        return None if cid == HP_CT_NONE else self._live(cid)

    # --- introspection -------------------------------------------------------------------

    cdef object _live(self, uint32_t cid):
        return self._conn(&self.nat.ct.conns[cid], &self.nat.ct.stats[cid], cid)

    cdef object _conn(self, const hp_conn *c, const hp_conn_stats *st, uint32_t cid):
        fam = c.family
        return Connection(
            id=-1 if cid == 0xFFFFFFFF else cid, family=fam, proto=c.proto,
            src=addr_str(fam, c.src[:16]), dst=addr_str(fam, c.dst[:16]),
            sport=c.sport, dport=c.dport, eni=c.eni,
            nat_addr=addr_str(fam, self.nat.eni_addr[c.eni].addr[fam == 6][:16]),
            nat_port=c.nat_port, state=STATES[c.state], flags=c.flags,
            packets_out=st.packets[0], packets_in=st.packets[1],
            bytes_out=st.bytes[0], bytes_in=st.bytes[1],
            start_s=c.start_s, last_seen_ms=c.last_seen_ms, owner=st.owner)

    def connections(self):
        out = []
        cdef uint32_t i = hp_ct_next_live(&self.nat.ct, 0)
        while i != HP_CT_NONE:
            out.append(self._live(i))
            i = hp_ct_next_live(&self.nat.ct, i + 1)
        return out

    def get(self, long conn_id):
        if conn_id < 0 or conn_id >= self.nat.ct.capacity or self.nat.ct.conns[conn_id].state == 0:
            return None
        return self._live(conn_id)

    def __len__(self):
        return self.nat.ct.count

    @property
    def capacity(self):
        return self.nat.ct.capacity

    @property
    def attached(self):
        """True when the state came from a file a previous process made."""
        return bool(self.nat.attached)

    @property
    def repaired(self):
        """At attach: torn entries and quarantine records the repair pass dropped."""
        return self.nat.repaired

    def counters(self):
        d = {COUNTERS[i]: self.nat.counters[i] for i in range(HP_C_COUNT)}
        for i in range(HP_R_COUNT):
            d["drop." + REASONS[i]] = self.nat.drops[i]
        return d

    def pool_stats(self, int eni, int family, int proto):
        cdef hp_pool *p = hp_nat_pool(self.nat, eni, family, proto)
        if p == NULL:
            raise ValueError(f"ENI {eni} has no IPv{family} pool")
        return {"size": p.size, "free": p.st.nfree, "in_use": hp_pool_in_use(p),
                "quarantined": hp_pool_quarantined(p)}

    def memory(self):
        """Bytes the connection table holds (entries and both index entries per connection)."""
        table = hp_ct_memory(&self.nat.ct)
        return {"table_bytes": table, "per_connection": table / self.nat.ct.capacity,
                "entry_bytes": SIZEOF_CONN}

    def pool_memory(self, int eni, int family, int proto):
        cdef hp_pool *p = hp_nat_pool(self.nat, eni, family, proto)
        return hp_pool_memory(p) if p != NULL else 0

    # --- security groups, rejects, per-ENI counters (_natsg.pxi) -------------------------

    def set_group_rules(self, int group, rules):
        """Replaces a group's egress rules, (proto, port_lo, port_hi, family, prefix, plen)
        each (None: allow everything). New connections only: live ones stay."""
        _set_group_rules(self, group, rules)

    def sg_counters(self, int group):
        """{"denied": new connections refused, "rules": connections each rule let out, or
        None without rules}; the rule counters start again with a new rule set."""
        return _sg_counters(self, group)

    def rejected(self, uint32_t max=HP_REJECT_RING):
        """Takes up to max records of the reject journal (flowlog.Rejected), oldest first."""
        return _rejected(self, max)

    def eni_counters(self, int eni):
        """The NAT-gateway counters of one ENI (docs/observability.md)."""
        return _eni_counters(self, eni)

    def set_rst_limit(self, uint32_t per_s, uint32_t burst):
        """RSTs answering segments of expired connections: per_s a second, burst at once."""
        _set_rst_limit(self, per_s, burst)


def pack_key(src, dst, int sport, int dport, int proto):
    """A 40-byte flow key as the C table stores it (for lookup_packed)."""
    fam, s = addr_bytes(src)
    fam2, d = addr_bytes(dst)
    if fam != fam2:
        raise ValueError("src and dst must be of one family")
    return s + d + sport.to_bytes(2, "little") + dport.to_bytes(2, "little") + bytes([fam, proto, 0, 0])


include "_dataplane.pxi"
include "_natsg.pxi"
