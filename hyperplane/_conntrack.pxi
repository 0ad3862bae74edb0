# Filtered listings, counts, deletion and the event stream of the connection table
# (csrc/nat/conntrack.c hp_ct_scan, csrc/nat/events.c), as module functions the Nat's methods call:
# included by _core.pyx.

from .ctfilter import ConnFilter, ADDRESS_KEYS as _FILTER_ADDRS, PORT_KEYS as _FILTER_PORTS
from .connection import ConnEvent, EVENT_TYPES, DESTROY_REASONS

DEF EVENT_RING = 65536          # events a reader may fall behind before it loses some
DEF EVENT_CHUNK = 2048          # events copied per hold of the table lock


cdef int _fill_filter(hp_ct_filter *f, object spec) except -1:
    """The C filter of a ConnFilter or its JSON form; 0 tests when spec is empty."""
    memset(f, 0, sizeof(hp_ct_filter))
    if spec is None:
        return 0
    cf = spec if isinstance(spec, ConnFilter) else ConnFilter.parse(spec)
    cdef int a
    if cf.family is not None:
        f.what |= HP_CTF_FAMILY
        f.family = cf.family
    if cf.proto is not None:
        f.what |= HP_CTF_PROTO
        f.proto = cf.proto
    if cf.states is not None:
        f.what |= HP_CTF_STATES
        for name in cf.states:
            f.states |= 1u << STATES.index(name)
    if cf.eni is not None:
        f.what |= HP_CTF_ENI
        f.eni = cf.eni
    if cf.owner is not None:
        f.what |= HP_CTF_OWNER
        f.owner = cf.owner
    if cf.assured is not None:
        f.what |= HP_CTF_FLAGS
        f.flags_mask = vocab.F_ASSURED
        f.flags_want = vocab.F_ASSURED if cf.assured else 0
    for a in range(3):
        net = getattr(cf, _FILTER_ADDRS[a])
        if net is not None:
            f.what |= HP_CTF_ADDR << a
            raw = net.network_address.packed
            memcpy(f.addr[a], <const uint8_t *>raw, len(raw))
            f.plen[a] = net.prefixlen
        rng = getattr(cf, _FILTER_PORTS[a])
        if rng is not None:
            f.what |= HP_CTF_PORT << a
            f.port_lo[a], f.port_hi[a] = rng
    return 0


cdef object _scan_page(Nat self, cursor, int limit, spec, bint delete, uint64_t now_ms):
    """Up to limit live connections that pass the filter, from table slot cursor on, in one
    hold of the table lock (at most HP_CHUNK_SCAN slots, in steps that check the clock); with
    delete, they are removed as `conntrack -D` removes them. Returns (connections, next cursor
    or None at the end of the table)."""
    cdef uint32_t cap = self.nat.ct.capacity, i, end, got = 0, n, k, step_end
    cdef uint32_t step = HP_STEP_DELETE if delete else HP_STEP_SCAN
    cdef hp_ct_filter f
    if limit <= 0:
        raise ValueError("limit must be positive")
    if cursor is None or cursor < 0:
        raise ValueError("cursor must be a non-negative integer")
    _fill_filter(&f, spec)
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
            while i < end and got < <uint32_t>limit:
                step_end = end if end - i < step else i + step
                n = hp_ct_scan(&self.nat.ct, &f, i, step_end, ids + got, limit - got, &i)
                for k in range(got, got + n):
                    if delete:
                        hp_nat_remove_conn(self.nat, ids[k], now_ms, &buf[k])
                    else:
                        _copy(self.nat, ids[k], &buf[k])
                got += n
                if hp_lock_spent(&self.lock):
                    break
            self._release()
        page = [self._conn(&buf[k], ids[k]) for k in range(got)]
    finally:
        free(buf)
        free(ids)
    return page, (i if i < cap else None)


cdef object _count(Nat self, spec):
    cdef uint32_t cap = self.nat.ct.capacity, i = 0, end, total = 0
    cdef hp_ct_filter f
    _fill_filter(&f, spec)
    if f.what == 0:
        return len(self)
    with nogil:
        while i < cap:
            self._acquire()
            end = cap if cap - i < HP_CHUNK_SCAN else i + HP_CHUNK_SCAN
            while i < end:
                total += hp_ct_scan(&self.nat.ct, &f, i, end if end - i < HP_STEP_SCAN
                                    else i + HP_STEP_SCAN, NULL, 0xFFFFFFFF, &i)
                if hp_lock_spent(&self.lock):
                    break
            self._release()
    return total


cdef class EventReader:
    """A reader of the connection event stream (Nat.events()): sees the changes made after
    it was created, those that pass its filter. It has its own cursor into the core's bounded
    ring, which the writers never wait for: a reader that falls a whole ring behind loses the
    oldest events, and read() says how many."""

    cdef Nat nat
    cdef uint64_t cursor
    cdef hp_ct_filter f
    cdef hp_event *buf
    cdef readonly uint64_t lost     # events this reader lost, in all

    def __cinit__(self, Nat nat, spec=None):
        self.nat = nat
        _fill_filter(&self.f, spec)
        self.buf = <hp_event *>malloc(EVENT_CHUNK * sizeof(hp_event))
        if not self.buf:
            raise MemoryError()
        cdef hp_event_ring *ring = NULL
        if nat.nat.events == NULL:     # the first reader: allocate outside the table lock
            ring = hp_events_create(EVENT_RING)
            if ring == NULL:
                raise MemoryError()
        with nogil:
            nat._acquire()
            if nat.nat.events == NULL:
                nat.nat.events, ring = ring, NULL
            self.cursor = nat.nat.events.head
            nat._release()
        hp_events_destroy(ring)        # another reader installed one first

    def __dealloc__(self):
        free(self.buf)

    def read(self, uint32_t max=EVENT_CHUNK):
        """The events since the last read (at most max, oldest first) that pass the filter,
        as ConnEvent objects, and how many were lost since the last read."""
        cdef uint32_t n, i, kept = 0
        cdef uint64_t lost = 0
        cdef hp_event *e
        if max > EVENT_CHUNK:
            max = EVENT_CHUNK
        with nogil:
            self.nat._acquire()
            n = hp_events_read(self.nat.nat.events, &self.cursor, self.buf, max, &lost)
            self.nat._release()
            for i in range(n):
                e = &self.buf[i]
                if hp_ct_match(&self.nat.nat.ct, &self.f, &e.conn, e.owner):
                    self.buf[kept] = e[0]
                    kept += 1
        self.lost += lost
        return [self._event(&self.buf[i]) for i in range(kept)], lost

    @property
    def pending(self):
        """Events written that this reader has not read yet (filtered or not)."""
        return self.nat.nat.events.head - self.cursor

    cdef object _event(self, const hp_event *e):
        cdef hp_conn_record rec
        memset(&rec, 0, sizeof(rec))
        rec.conn = e.conn
        rec.stats.packets[0], rec.stats.packets[1] = e.packets[0], e.packets[1]
        rec.stats.bytes[0], rec.stats.bytes[1] = e.bytes[0], e.bytes[1]
        rec.stats.owner = e.owner
        update = e.type == HP_EV_UPDATE
        return ConnEvent(seq=e.seq, type=EVENT_TYPES[e.type - 1], time_ms=e.now_ms,
                         conn=self.nat._conn(&rec, e.id),
                         old_state=STATES[e.old_state] if update else None,
                         old_flags=e.old_flags if update else None,
                         reason=DESTROY_REASONS[e.reason - 1]
                         if e.type == HP_EV_DESTROY else None)
