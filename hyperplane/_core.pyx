# cython: language_level=3
"""Thin bindings over the C core: own the C objects, expose batch calls, release the GIL."""

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_WRITABLE
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, calloc, free
from libc.errno cimport EINVAL, ENOSPC
from libc.string cimport memcpy, memset

from hyperplane._hp cimport *
from hyperplane._lock cimport (pthread_mutex_t, pthread_mutex_init, pthread_mutex_destroy,
                               pthread_mutex_lock, pthread_mutex_unlock, hp_table_lock,
                               hp_lock_stats, hp_lock_init, hp_lock_destroy, hp_lock_acquire,
                               hp_lock_release, hp_lock_spent, hp_lock_stats_take,
                               HP_CHUNK_FRAMES, HP_CHUNK_EXPIRE, HP_STEP_EXPIRE, HP_CHUNK_SCAN,
                               HP_STEP_SCAN, HP_STEP_DELETE, HP_CHUNK_LOOKUPS)

import os

from . import errors
from .connection import Connection, FlowInterval, addr_bytes, addr_str, mac_bytes
from .natparams import resolve
from . import vocab

REASONS = tuple(hp_reason_names[i].decode() for i in range(HP_R_COUNT))
STATES = tuple(hp_state_names[i].decode() for i in range(HP_S_COUNT))
COUNTERS = tuple(hp_counter_names[i].decode().lower() for i in range(HP_C_COUNT))
FUNC_COUNTERS = tuple(hp_func_counter_names[i].decode().lower() for i in range(HP_FC_COUNT))
SIZEOF_CONN = (sizeof(hp_conn) + sizeof(hp_conn_stats) + sizeof(hp_tcp_win)
               + sizeof(hp_conn_flowbase))
MAX_CAPACITY = HP_MAX_CAPACITY
MAX_ENIS = HP_MAX_ENIS


def index_slots(uint64_t capacity):
    """Index slots the C table gives this capacity (for the bound's test)."""
    return hp_ct_index_slots(capacity)

cdef inline void _copy(hp_nat *nat, uint32_t i, hp_conn_record *out) noexcept nogil:
    out.conn = nat.ct.conns[i]
    out.stats = nat.ct.stats[i]
    out.flowbase = nat.ct.flowbase[i]


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
    # The table lock (csrc/nat/hp_lock.h): the data plane's loop holds it per batch,
    # everything here per chunk, within its hold budget.
    cdef hp_table_lock lock
    # add_eni calls, one at a time (the slow half of each runs without the table lock)
    cdef pthread_mutex_t eni_lock

    def __cinit__(self, *args, **kwargs):
        self.nat = NULL
        hp_lock_init(&self.lock)
        pthread_mutex_init(&self.eni_lock, NULL)

    # Callers hold no GIL (acquire waits without blocking other Python threads) and take no
    # GIL before _release().
    cdef void _acquire(self) noexcept nogil:
        hp_lock_acquire(&self.lock)

    cdef void _release(self) noexcept nogil:
        hp_lock_release(&self.lock)

    def lock_stats(self, bint reset=False):
        """How long this object's calls held the table lock (not the forwarding loop's
        batches): holds, over_budget (holds longer than 200 us: preemption, or a chunk too
        big), max_hold_us, total_hold_us. reset: start counting again."""
        cdef hp_lock_stats st
        cdef int r = reset
        with nogil:
            hp_lock_stats_take(&self.lock, &st, r)
        return {"holds": st.holds, "over_budget": st.holds_over,
                "max_hold_us": st.hold_max_ns / 1000.0, "total_hold_us": st.hold_total_ns / 1000.0}

    def __init__(self, state_path=None, **kwargs):
        """state_path: keep the table, pools and counters in this file (csrc/nat/hp_state.h),
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
        raise errors.errno_error(r, f"a NAT for {p.capacity} connections",
                                 err.decode(errors="replace"))

    def __dealloc__(self):
        hp_nat_destroy(self.nat)
        hp_lock_destroy(&self.lock)
        pthread_mutex_destroy(&self.eni_lock)

    # --- configuration -------------------------------------------------------------------

    def add_eni(self, v4=None, v6=None, eni=None):
        """Adds an ENI with these addresses; returns its id: eni, or the lowest free id when
        eni is None (an id is free when no ENI had it or its ENI was released)."""
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
        if eni is not None and not 0 <= eni < HP_MAX_ENIS:
            raise ValueError(f"an ENI id is in 0..{HP_MAX_ENIS - 1}, not {eni}")
        cdef const uint8_t *p4 = <const uint8_t *>b4 if b4 is not None else NULL
        cdef const uint8_t *p6 = <const uint8_t *>b6 if b6 is not None else NULL
        cdef int e, want = -1 if eni is None else eni
        cdef hp_eni_prep prep
        with nogil:
            pthread_mutex_lock(&self.eni_lock)
            # The pools are mapped and filled (ms) before the table lock, which only sees
            # them appear.
            e = hp_nat_eni_prepare(self.nat, p4, p6, want, &prep)
            if e == 0:
                self._acquire()
                e = hp_nat_eni_commit(self.nat, &prep)
                self._release()
            pthread_mutex_unlock(&self.eni_lock)
        if e == errors.ENI_MISMATCH:    # nothing changes a state file's ENI's addresses now
            old = &self.nat.eni_addr[prep.id]
            have = " ".join([addr_str(4 if f == 0 else 6, old.addr[f][:16])
                             for f in range(2) if old.has[f]])
            raise errors.StateMismatch(
                EINVAL, f"ENI {prep.id} of the state file has {have}; "
                "its ENI must come back with the same addresses")
        if e == errors.ENI_IN_USE:
            raise errors.refused(f"ENI id {prep.id} is a live ENI's")
        if e < 0:
            raise errors.CoreLimit(ENOSPC,
                                   "cannot add an ENI (limit reached or out of memory)")
        return e

    def release_eni(self, int eni):
        """Gives a reclaimed ENI's id and state space back for the next ENI, once nothing is
        left of it (in no group, no connection, no port in use or quarantined, no unread
        record): True; False while something is (nothing changes)."""
        cdef int rc
        cdef hp_eni_pools *unmap = NULL
        with nogil:
            pthread_mutex_lock(&self.eni_lock)
            self._acquire()
            rc = hp_nat_eni_release(self.nat, eni, &unmap)
            self._release()
            hp_nat_eni_unmap(unmap)             # milliseconds: outside the table lock
            pthread_mutex_unlock(&self.eni_lock)
        if rc == errors.NAT_REFUSED:
            raise errors.refused(f"ENI {eni} is not a live ENI outside every group")
        return rc == 0

    def add_group(self):
        cdef int g
        with nogil:
            self._acquire()
            g = hp_nat_add_group(self.nat)
            self._release()
        if g < 0:
            raise errors.CoreLimit(ENOSPC, "cannot add a group")
        return g

    def group_add_eni(self, int group, int eni):
        cdef int rc
        with nogil:
            self._acquire()
            rc = hp_nat_group_add_eni(self.nat, group, eni)
            self._release()
        if rc != 0:
            raise errors.refused(f"cannot add ENI {eni} to group {group}")

    def group_retire_eni(self, int group, int eni):
        """Takes an ENI without connections out of its group (no new connection picks it);
        False, and nothing changes, while it has connections."""
        cdef int rc
        with nogil:
            self._acquire()
            rc = hp_nat_group_retire_eni(self.nat, group, eni)
            self._release()
        if rc == errors.NAT_REFUSED:
            raise errors.refused(f"ENI {eni} is not in group {group}")
        return rc != errors.ENI_BUSY

    def group_set_can_grow(self, int group, can_grow):
        """Whether the control plane can add an ENI to the group (it is below its limit): a
        function at its port share of every pool is then answered PORTS_EXHAUSTED (a punt:
        the group grows) instead of FUNCTION_LIMIT. docs/semantics.md section 13."""
        cdef int rc, on = bool(can_grow)
        with nogil:
            self._acquire()
            rc = hp_nat_group_set_can_grow(self.nat, group, on)
            self._release()
        if rc != 0:
            raise errors.refused(f"no group {group}")

    def eni_share_used(self, int eni):
        """The largest share of its port quota any function holds in one pool of the ENI,
        0.0 .. 1.0 (0.0 without quotas): what scale-out watches beside the pools' fill."""
        if not 0 <= eni < self.nat.n_enis:
            raise ValueError(f"no ENI {eni}")
        cdef uint32_t used
        with nogil:
            self._acquire()
            used = hp_quota_share_used(self.nat, eni)
            self._release()
        return used / 1000.0

    def add_source(self, addr, int group, allow_v6=False, mac=None):
        fam, raw = addr_bytes(addr)
        cdef bytes m = mac_bytes(mac) if mac is not None else None
        cdef int family = fam, v6 = bool(allow_v6), rc
        cdef const uint8_t *a = <const uint8_t *>raw
        cdef const uint8_t *mp = <const uint8_t *>m if m is not None else NULL
        with nogil:
            self._acquire()
            rc = hp_nat_add_source_mac(self.nat, family, a, group, v6, mp)
            self._release()
        if rc != 0:
            raise errors.refused(f"cannot add source {addr} to group {group}")

    def set_source_group(self, addr, int group):
        """Moves a function's address to another group: its new connections take that group's
        ENIs; live ones keep theirs."""
        fam, raw = addr_bytes(addr)
        cdef int family = fam, rc
        cdef const uint8_t *a = <const uint8_t *>raw
        with nogil:
            self._acquire()
            rc = hp_nat_set_source_group(self.nat, family, a, group)
            self._release()
        if rc != 0:
            raise errors.refused(f"cannot move source {addr} to group {group}")

    def set_quota(self, addr, max_connections=0, max_ports=0):
        """Quotas of the function that owns source addr: connections in the table and ports
        of each ENI pool (0: none). docs/semantics.md section 13."""
        fam, raw = addr_bytes(addr)
        if not (0 <= max_connections < 1 << 32 and 0 <= max_ports < 1 << 32):
            raise ValueError("quotas are 0 .. 2**32-1")
        cdef int family = fam, rc
        cdef const uint8_t *a = <const uint8_t *>raw
        cdef uint32_t conns = max_connections, ports = max_ports
        with nogil:
            self._acquire()
            rc = hp_quota_set(self.nat, family, a, conns, ports)
            self._release()
        if rc != 0:
            raise errors.refused(f"no source {addr}")

    def recount_quotas(self):
        """Recounts every function's connections and ports from the table (after the sources
        were added again to state this NAT attached to). One hold: at start, before traffic."""
        with nogil:
            self._acquire()
            hp_quota_recount(self.nat)
            self._release()

    def function_stats(self):
        """One dict per function (owner index, its first address, quotas, connections and
        ports held, counters by FUNC_COUNTERS name), in source order: copied under the table
        lock, turned into Python after."""
        cdef uint32_t n = 0, i, j
        cdef hp_func *funcs = NULL
        cdef hp_source *srcs = NULL
        with nogil:
            self._acquire()
            n = self.nat.n_sources
            funcs = <hp_func *>malloc((n if n else 1) * sizeof(hp_func))
            srcs = <hp_source *>malloc((n if n else 1) * sizeof(hp_source))
            if funcs != NULL and srcs != NULL:
                memcpy(srcs, self.nat.sources, n * sizeof(hp_source))
                for i in range(n):
                    memcpy(&funcs[i], hp_quota_func(self.nat, i), sizeof(hp_func))
            self._release()
        try:
            if funcs == NULL or srcs == NULL:
                raise MemoryError()
            out = []
            for i in range(n):
                if srcs[i].owner != i:
                    continue
                d = {"owner": i, "addr": addr_str(srcs[i].family, srcs[i].addr[:16]),
                     "max_connections": funcs[i].max_conns, "max_ports": funcs[i].max_ports,
                     "connections": funcs[i].conns,
                     "ports": sum(funcs[i].pools[j].held[a][b] for j in range(funcs[i].n_pools)
                                  for a in range(2) for b in range(2))}
                for j in range(HP_FC_COUNT):
                    d[FUNC_COUNTERS[j]] = funcs[i].counters[j]
                out.append(d)
            return out
        finally:
            free(funcs)
            free(srcs)

    # --- the batch calls -----------------------------------------------------------------

    def translate(self, frames, int direction, uint64_t now_ms, int eni=0, bint vnet=False,
                  bint check_mtu=True):
        """Translates bytearrays in place; returns (verdict, reason, port, conn) per frame.
        The bytearrays cannot be resized while it runs (it holds their buffers)."""
        cdef Py_ssize_t n = len(frames), i, held = 0, at, m
        if direction not in (vocab.OUT, vocab.IN):
            raise ValueError("direction must be vocab.OUT or vocab.IN")
        if n == 0:
            return []
        cdef _Batch b = _Batch(n)
        cdef Py_buffer *views = <Py_buffer *>calloc(n, sizeof(Py_buffer))
        if not views:
            raise MemoryError()
        try:
            for i in range(n):
                f = frames[i]
                if type(f) is not bytearray:
                    raise TypeError("frames must be bytearrays (they are rewritten in place)")
                PyObject_GetBuffer(f, &views[i], PyBUF_WRITABLE)
                held += 1
                b.ptrs[i] = <uint8_t *>views[i].buf
                b.lens[i] = views[i].len
            with nogil:
                at = 0
                while at < n:
                    m = min(n - at, HP_CHUNK_FRAMES)
                    self._acquire()
                    hp_nat_translate_ex(self.nat, b.ptrs + at, b.lens + at, m, direction, eni,
                                        vnet, check_mtu, now_ms, b.res + at)
                    self._release()
                    at += m
        finally:
            for i in range(held):
                PyBuffer_Release(&views[i])
            free(views)
        return [(b.res[i].verdict, b.res[i].reason, b.res[i].port,
                 -1 if b.res[i].conn == HP_CT_NONE else b.res[i].conn) for i in range(n)]

    def translate_packed(self, const uint8_t[::1] template, uint8_t[::1] work, uint32_t stride,
                         int direction, uint64_t now_ms, int eni=0, bint vnet=False):
        """Copies template into work and translates the frames packed in it every stride bytes.
        For benchmarks: one call, no Python per frame. Returns the number forwarded."""
        cdef uint32_t n = template.shape[0] // stride, i, forwarded = 0, at, m
        if work.shape[0] < template.shape[0] or n == 0:
            raise ValueError("work must be at least as large as template, holding >= 1 frame")
        cdef _Batch b = _Batch(n)
        with nogil:
            memcpy(&work[0], &template[0], n * stride)
            for i in range(n):
                b.ptrs[i] = &work[i * stride]
                b.lens[i] = stride
            at = 0
            while at < n:
                m = min(n - at, HP_CHUNK_FRAMES)
                self._acquire()
                hp_nat_translate(self.nat, b.ptrs + at, b.lens + at, m, direction, eni, vnet,
                                 now_ms, b.res + at)
                self._release()
                at += m
            for i in range(n):
                forwarded += b.res[i].verdict == 0
        return forwarded

    def lookup_packed(self, const uint8_t[::1] keys, int direction):
        """Looks up packed 40-byte flow keys (pack_key) in one batch; returns how many hit."""
        cdef uint32_t n = keys.shape[0] // sizeof(hp_flow_key), i, hits = 0, at, m
        cdef uint32_t *ids = <uint32_t *>malloc(max(n, 1) * sizeof(uint32_t))
        cdef const hp_flow_key *k = <const hp_flow_key *>&keys[0]
        if not ids:
            raise MemoryError()
        with nogil:
            at = 0
            while at < n:
                m = min(n - at, HP_CHUNK_LOOKUPS)
                self._acquire()
                hp_ct_lookup_batch(&self.nat.ct, k + at, m, direction, ids + at)
                self._release()
                at += m
            for i in range(n):
                hits += ids[i] != HP_CT_NONE
        free(ids)
        return hits

    def expire(self, uint64_t now_ms, max=1 << 30, bint collect=True):
        """Removes up to max expired connections, in holds of the table lock bounded by work
        and time. With collect, returns them as Connection objects (those found expired during
        lookups first); without, returns how many were removed."""
        cdef size_t remaining = max, chunk, got, step, g, r, jc, removed
        cdef size_t cap = self.nat.cfg.journal_size + HP_CHUNK_EXPIRE
        cdef hp_conn_record *buf = NULL
        cdef uint64_t before
        cdef bint drained = False, quarantines_ended = False
        if collect:
            buf = <hp_conn_record *>malloc(cap * sizeof(hp_conn_record))
            if not buf:
                raise MemoryError()
        out = [] if collect else 0
        try:
            while True:         # once at least: the journal is returned even for max=0
                chunk = remaining if remaining < HP_CHUNK_EXPIRE else HP_CHUNK_EXPIRE
                got = removed = 0
                with nogil:
                    self._acquire()
                    if not quarantines_ended:   # once a call, as the model does
                        hp_quota_drain_all(self.nat, now_ms)
                        quarantines_ended = True
                    while True:
                        step = chunk - removed if chunk - removed < HP_STEP_EXPIRE else HP_STEP_EXPIRE
                        before, jc = self.nat.counters[6], self.nat.sh.j_count
                        if collect:
                            g = hp_nat_expire(self.nat, now_ms, step, buf + got, cap - got)
                            r = g - jc          # the journal is copied first
                            got += g
                        else:
                            hp_nat_expire(self.nat, now_ms, step, NULL, 0)
                            r = self.nat.counters[6] - before
                        removed += r
                        drained = r < step
                        if (drained or removed == chunk
                                or hp_lock_spent(&self.lock)):
                            break
                    self._release()
                if collect:
                    for i in range(got):
                        out.append(self._conn(&buf[i], 0xFFFFFFFF))
                else:
                    out += removed
                remaining -= removed
                if drained or remaining == 0:
                    return out
        finally:
            free(buf)

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
        cdef uint32_t cid
        cdef hp_conn_record rec
        with nogil:
            self._acquire()
            cid = hp_nat_lookup(self.nat, &key, direction, now_ms)
            if cid != HP_CT_NONE:
                _copy(self.nat, cid, &rec)
            self._release()
        return None if cid == HP_CT_NONE else self._conn(&rec, cid)

    # --- introspection -------------------------------------------------------------------

    cdef object _conn(self, const hp_conn_record *r, uint32_t cid):
        cdef const hp_conn *c = &r.conn
        cdef const hp_conn_stats *st = &r.stats
        cdef hp_flow_ival iv[2]
        hp_ct_flow_read(c, st, &r.flowbase, iv)
        cdef int d
        fam = c.family
        flow = [None, None]
        for d in range(2):
            if iv[d].seen:
                flow[d] = FlowInterval(iv[d].packets, iv[d].bytes, iv[d].first_ms,
                                       iv[d].last_ms, iv[d].tcp_flags)
        return Connection(
            id=-1 if cid == 0xFFFFFFFF else cid, family=fam, proto=c.proto,
            src=addr_str(fam, c.src[:16]), dst=addr_str(fam, c.dst[:16]),
            sport=c.sport, dport=c.dport, eni=c.eni,
            nat_addr=addr_str(fam, self.nat.eni_addr[c.eni].addr[fam == 6][:16]),
            nat_port=c.nat_port, state=STATES[c.state], flags=c.flags,
            packets_out=st.packets[0], packets_in=st.packets[1],
            bytes_out=st.bytes[0], bytes_in=st.bytes[1],
            start_s=c.start_s, last_seen_ms=c.last_seen_ms, owner=st.owner,
            flow_out=flow[0], flow_in=flow[1])

    def connections_page(self, cursor=0, int limit=1000, filter=None):
        """Up to limit live connections from table slot cursor on, in one hold of the table
        lock (which scans at most HP_CHUNK_SCAN slots, so a page may come back short): returns
        (connections, next cursor or None at the end of the table). filter: a ConnFilter or
        its JSON form (hyperplane.ctfilter), tested in C while the table is scanned."""
        if filter is None:
            return self._page(cursor, limit, False)
        return _scan_page(self, cursor, limit, filter, False, 0)

    def count(self, filter=None):
        """How many live connections pass the filter: a scan in holds of the table lock
        bounded as a page's, nothing copied."""
        return _count(self, filter)

    def delete_page(self, cursor=0, int limit=1000, filter=None, uint64_t now_ms=0):
        """Removes up to limit live connections that pass the filter, from table slot cursor
        on, in one hold bounded as connections_page's, as `conntrack -D` does
        (docs/semantics.md 2.5): each one's port goes to quarantine as on expiry and a DESTROY
        event says DELETED. Returns (the removed connections as they were, for the flow log
        to close, next cursor or None)."""
        return _scan_page(self, cursor, limit, filter, True, now_ms)

    def events(self, filter=None):
        """A reader of the connection event stream from now on (EventReader)."""
        return EventReader(self, filter)

    def connections(self):
        """Every live connection, read page by page (the table may change between pages)."""
        return self._all_pages(self.connections_page)

    def flow_harvest_page(self, cursor=0, int limit=1000):
        """The flow-log harvest (docs/semantics.md 2.4): up to limit live connections with
        traffic since the last harvest, from table slot cursor on, each with its interval
        (flow_out / flow_in) as it was, and their intervals started again; in one hold of the
        table lock bounded as connections_page's. Returns (connections, next cursor or None
        at the end of the table). Listings (connections_page, get) reset nothing."""
        return self._page(cursor, limit, True)

    def flow_harvest(self):
        """Every connection with traffic since the last harvest, page by page (each reset as
        it is taken)."""
        return self._all_pages(self.flow_harvest_page)

    cdef object _page(self, cursor, int limit, bint harvest):
        """One page of a listing, or (harvest) of the connections with a flow-log interval,
        which are reset as they are copied."""
        cdef uint32_t cap = self.nat.ct.capacity, i, end, live_end, got = 0
        if limit <= 0:
            raise ValueError("limit must be positive")
        if cursor is None or cursor < 0:
            raise ValueError("cursor must be a non-negative integer")
        if cursor >= cap:
            return [], None
        i = cursor
        cdef hp_conn_record *buf = <hp_conn_record *>malloc(limit * sizeof(hp_conn_record))
        cdef uint32_t *ids = <uint32_t *>malloc(limit * sizeof(uint32_t))
        try:
            if not buf or not ids:
                raise MemoryError()
            end = cap if cap - i < HP_CHUNK_SCAN else i + HP_CHUNK_SCAN
            with nogil:
                self._acquire()
                # Nothing is live past the high water (hp_conntrack.h): the rest of the chunk
                # counts as looked at, as hp_ct_scan counts it.
                live_end = end if end < self.nat.ct.high_water else self.nat.ct.high_water
                while i < live_end and got < <uint32_t>limit:
                    if self.nat.ct.conns[i].state != 0 and (not harvest or
                                                           self.nat.ct.stats[i].seen != 0):
                        _copy(self.nat, i, &buf[got])
                        if harvest:
                            hp_ct_flow_reset(&self.nat.ct, i)
                        ids[got] = i
                        got += 1
                    i += 1
                    if i % HP_STEP_SCAN == 0 and hp_lock_spent(&self.lock):
                        break
                if got < <uint32_t>limit and live_end <= i < end:
                    i = end
                self._release()
            page = [self._conn(&buf[k], ids[k]) for k in range(got)]
        finally:
            free(buf)
            free(ids)
        return page, (i if i < cap else None)

    @staticmethod
    def _all_pages(page_fn):
        out = []
        cursor = 0
        while cursor is not None:
            page, cursor = page_fn(cursor, 4096)
            out.extend(page)
        return out

    def get(self, long conn_id):
        if conn_id < 0 or conn_id >= self.nat.ct.capacity:
            return None
        cdef uint32_t cid = conn_id
        cdef hp_conn_record rec
        with nogil:
            self._acquire()
            _copy(self.nat, cid, &rec)
            self._release()
        return None if rec.conn.state == 0 else self._conn(&rec, cid)

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
        cdef hp_pool *p
        cdef uint32_t size = 0, nfree = 0, in_use = 0, quarantined = 0
        with nogil:
            self._acquire()
            p = hp_nat_pool(self.nat, eni, family, proto)
            if p != NULL:
                size, nfree = p.size, p.st.nfree
                in_use, quarantined = hp_pool_in_use(p), hp_pool_quarantined(p)
            self._release()
        if p == NULL:
            raise ValueError(f"ENI {eni} has no IPv{family} pool")
        return {"size": size, "free": nfree, "in_use": in_use, "quarantined": quarantined}

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
include "_conntrack.pxi"
