# The packet I/O and the data-plane loop (csrc/dp/hp_ring.h, csrc/dp/hp_dataplane.h).
# Included at the end of _core.pyx, after `cdef class Nat` (which has `cdef hp_nat *nat`).
# Nothing here runs per packet on the fast path: the loop runs in C without the GIL, on a thread
# of its own (DataPlane.start) or the caller's (DataPlane.run).

cimport cython
cimport hyperplane._ring_decl as rd
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy
from libc.errno cimport errno, ENOBUFS, ENOENT, ENOMEM, EPERM

import collections as _dp_collections
import fcntl as _dp_fcntl
import ipaddress as _dp_ipaddress
import os as _dp_os
import socket as _dp_socket
import struct as _dp_struct
import threading as _dp_threading

# A punted frame with everything the slow path may need: the port it came in on, the reason
# (an index into vocab.REASONS), the Ethernet frame, the egress port of a NEIGH_MISS (else
# None), the connection id (-1: none) and the 10-byte virtio-net header it arrived with.
Punt = _dp_collections.namedtuple("Punt", "port reason frame egress conn vnet")

_DP_ROLES = {"inside": rd.HP_DP_INSIDE, "eni": rd.HP_DP_ENI}
_DP_ROLE_NAMES = {rd.HP_DP_INSIDE: "inside", rd.HP_DP_ENI: "eni"}
_SIOCGIFHWADDR = 0x8927
# Default rx ring slots by role: the inside port takes every function's traffic. A slot is
# 2 KB (bigger frames take the copy path, csrc/dp/hp_ring.h); more slots ride out longer
# scheduling stalls of the loop without drops under a flood of small frames from the customer
# side (docs/semantics.md, section 12).
_DP_DEFAULT_RX = {"inside": 8192, "eni": 4096}


def _dp_ifindex(iface):
    if isinstance(iface, int):
        return iface, _dp_socket.if_indextoname(iface)
    return _dp_socket.if_nametoindex(iface), iface


def _dp_iface_mac(str ifname):
    """The interface's MAC in the current network namespace (no sysfs needed)."""
    s = _dp_socket.socket(_dp_socket.AF_INET, _dp_socket.SOCK_DGRAM)
    try:
        info = _dp_fcntl.ioctl(s.fileno(), _SIOCGIFHWADDR,
                               _dp_struct.pack("256s", ifname.encode()[:15]))
    finally:
        s.close()
    return bytes(info[18:24])


def _dp_mac_bytes(mac):
    if isinstance(mac, (bytes, bytearray)):
        if len(mac) != 6:
            raise ValueError("a MAC address is 6 bytes")
        return bytes(mac)
    parts = str(mac).replace("-", ":").split(":")
    if len(parts) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return bytes(int(p, 16) for p in parts)


cdef str _dp_mac_str(const uint8_t *m):
    return ":".join(f"{m[i]:02x}" for i in range(6))


def _dp_addr(addr):
    """(family, packed bytes) of an address string or ipaddress object."""
    ip = _dp_ipaddress.ip_address(addr)
    return ip.version, ip.packed


cdef int _dp_check(int rc, str what) except -1:
    if rc < 0:
        raise errors.errno_error(rc, what)
    return rc


cdef class Ring:
    """One AF_PACKET TPACKET_V2 rx + tx ring pair on an interface, for tests and tools.

    recv() copies frames out of the ring (each starting with its 10-byte virtio-net header
    when vnet); send() copies frames in (vnet: a zeroed header is prepended unless the frame
    is given as (vnet_header, frame)). Per-frame Python: not the data plane's fast path.
    """
    cdef rd.hp_ring *r
    cdef readonly str ifname

    def __cinit__(self, iface, frames=0, tx_frames=0, vnet=True, qdisc_bypass=False):
        ifindex, self.ifname = _dp_ifindex(iface)
        self.r = rd.hp_ring_open(ifindex, frames, tx_frames, 1 if vnet else 0,
                                 1 if qdisc_bypass else 0)
        if self.r == NULL:
            err = errno
            raise errors.errno_error(-err, f"hp_ring_open({self.ifname})")

    def __dealloc__(self):
        if self.r != NULL:
            rd.hp_ring_close(self.r)
            self.r = NULL

    def close(self):
        if self.r != NULL:
            rd.hp_ring_close(self.r)
            self.r = NULL

    cdef rd.hp_ring *_ring(self) except NULL:
        if self.r == NULL:
            raise ValueError("ring is closed")
        return self.r

    def fileno(self):
        return self._ring().fd

    @property
    def vnet(self):
        return bool(self._ring().vnet)

    @property
    def frames(self):
        return self._ring().rx_nr

    @property
    def frame_size(self):
        return self._ring().frame_size

    def recv(self, unsigned int max=64, timeout_ms=0):
        """Up to max frames as bytes, waiting up to timeout_ms (None: forever) for the first."""
        cdef rd.hp_ring *r = self._ring()
        cdef uint8_t *data[64]
        cdef uint32_t lens[64]
        cdef uint32_t n, i
        cdef rd.pollfd pfd
        cdef int tmo = -1 if timeout_ms is None else int(timeout_ms)
        if max > 64:
            max = 64
        n = rd.hp_ring_rx_peek(r, data, lens, max)
        if n == 0 and tmo != 0:
            if r.rx_held:
                rd.hp_ring_rx_release(r)
            pfd.fd = r.fd
            pfd.events = rd.POLLIN
            with nogil:
                rd.poll(&pfd, 1, tmo)
            n = rd.hp_ring_rx_peek(r, data, lens, max)
        out = [data[i][:lens[i]] for i in range(n)]
        rd.hp_ring_rx_release(r)
        return out

    def send(self, frames, bint flush=True, bint direct=False):
        """Queues frames (bytes, or (vnet_header, bytes)); returns how many fit in the ring.
        direct: each frame (its virtio-net header first) is sent at once by its own send(),
        after what the ring holds, as the loop sends GSO super-frames (hp_ring_tx_send)."""
        cdef rd.hp_ring *r = self._ring()
        cdef const uint8_t *vh
        cdef const uint8_t *fp
        cdef bytes vb, fb
        sent = 0
        for f in frames:
            if isinstance(f, tuple):
                vb, fb = bytes(f[0]), bytes(f[1])
                if len(vb) != 10:
                    raise ValueError("a virtio-net header is 10 bytes")
                vh = vb
            else:
                fb = bytes(f)
                vh = NULL
            if direct:
                fb = (vb if vh != NULL else bytes(10 if r.vnet else 0)) + fb
                fp = fb
                _dp_check(rd.hp_ring_tx_send(r, fp, len(fb)), "hp_ring_tx_send")
                sent += 1
                continue
            fp = fb
            rc = rd.hp_ring_tx_copy(r, vh, fp, len(fb))
            if rc == -ENOBUFS:   # the ring is full: flush what is queued and try once more
                rd.hp_ring_tx_flush(r)
                rc = rd.hp_ring_tx_copy(r, vh, fp, len(fb))
            if rc < 0:
                if rc == -ENOBUFS:
                    break
                _dp_check(rc, "hp_ring_tx_copy")
            sent += 1
        if flush:
            _dp_check(rd.hp_ring_tx_flush(r), "send")
        return sent

    def flush(self):
        _dp_check(rd.hp_ring_tx_flush(self._ring()), "send")

    def stats(self):
        cdef rd.hp_ring *r = self._ring()
        rd.hp_ring_update_stats(r)
        s = r.st
        return {"rx_frames": s.rx_frames, "rx_bytes": s.rx_bytes, "rx_outgoing": s.rx_outgoing,
                "rx_truncated": s.rx_truncated, "rx_copied": s.rx_copied,
                "rx_kernel_drops": s.rx_kernel_drops,
                "tx_frames": s.tx_frames, "tx_bytes": s.tx_bytes, "tx_full": s.tx_full,
                "tx_sends": s.tx_sends, "tx_errors": s.tx_errors, "tx_direct": s.tx_direct}


@cython.no_gc_clear      # the loop uses the Nat until close(): keep the reference to the end
cdef class DataPlane:
    """The C loop over one inside port and one port per ENI, translating through a Nat.

        dp = DataPlane(nat)
        inside = dp.add_port("hpin", role="inside")
        p1 = dp.add_port("hpe0", role="eni", eni=0, v4_subnet="10.0.1.0/24",
                         v4_gateway="10.0.1.1")
        dp.set_neighbor("10.200.0.11", "02:00:00:00:00:11", port=inside)
        dp.set_neighbor("10.0.1.1", "02:00:00:00:01:01", port=p1)
        dp.start()                       # the forwarding thread (C, no GIL)
        while True:
            slow.handle(dp.punts(100))   # waits up to 100 ms without the GIL
        dp.stop()

    Or drive the loop by hand: dp.run(100) forwards on the calling thread until something is
    punted or the timeout, then dp.punts() drains the queue.

    Every method is safe from any thread while the loop runs: those that touch the NAT, the
    rings or the neighbour table take the Nat's table lock (which the loop holds per batch)
    with the GIL released. punts() is for one reader thread at a time.
    """
    MAX_PORTS = rd.HP_DP_MAX_PORTS    # ports at once (a removed ENI's slot is reused)

    cdef rd.hp_dp *dp
    cdef readonly object nat
    cdef list _info
    cdef bint _running
    cdef object _reader          # serialises punts() callers: the read side is not shared

    def __cinit__(self, Nat nat not None, neigh_capacity=4096, punt_capacity=1024,
                  punt_bytes=4 << 20, spin_us=0):
        if nat.nat == NULL:
            raise ValueError("the Nat has no C state")
        self.dp = rd.hp_dp_create(<void *>nat.nat, neigh_capacity, punt_capacity, punt_bytes)
        if self.dp == NULL:
            raise errors.CoreMemoryError(ENOMEM, "hp_dp_create")
        rd.hp_dp_set_lock(self.dp, &nat.lock.mutex)
        self.dp.spin_us = spin_us
        self.nat = nat
        self._info = []
        self._running = False
        self._reader = _dp_threading.Lock()

    def __dealloc__(self):
        if self.dp != NULL:
            with nogil:
                rd.hp_dp_destroy(self.dp)     # stops the forwarding thread first
            self.dp = NULL

    def close(self):
        """Stops the forwarding thread and closes every port's socket now (also done when the
        object goes away)."""
        cdef rd.hp_dp *dp = self.dp
        if self._running:
            raise RuntimeError("DataPlane is running")
        if dp != NULL:
            self.dp = NULL
            with nogil:
                rd.hp_dp_destroy(dp)

    def start(self):
        """Starts the forwarding thread: the loop runs in C, without the GIL, until stop()."""
        cdef rd.hp_dp *dp = self._idle()
        _dp_check(rd.hp_dp_start(dp), "start")

    def stop(self):
        """Stops the forwarding thread and waits for it (at most one round of the loop)."""
        cdef rd.hp_dp *dp = self._live()
        with nogil:
            rd.hp_dp_stop(dp)

    @property
    def forwarding(self):
        """True while the forwarding thread runs."""
        return self.dp != NULL and self.dp.thread_running != 0

    cdef rd.hp_dp *_live(self) except NULL:
        if self.dp == NULL:
            raise ValueError("DataPlane is closed")
        return self.dp

    cdef rd.hp_dp *_idle(self) except NULL:
        """The loop must not be running (run() by hand, or start())."""
        if self.dp == NULL:
            raise ValueError("DataPlane is closed")
        if self._running or self.dp.thread_running:
            raise RuntimeError("DataPlane is running")
        return self.dp

    @staticmethod
    def now_ms():
        """The loop's clock (CLOCK_MONOTONIC, ms): pass it to Nat.expire()."""
        return rd.hp_dp_now_ms()

    property spin_us:
        """Busy-poll this many microseconds before sleeping in poll() (0: sleep at once)."""
        def __get__(self):
            return self.dp.spin_us if self.dp != NULL else 0
        def __set__(self, value):
            self._live().spin_us = value

    property linear_max:
        """Non-GSO frames up to this many bytes leave as one linear skb (the kernel copies
        them whole from the tx ring) instead of ring-page fragments; 0: never."""
        def __get__(self):
            return self.dp.linear_max if self.dp != NULL else 0
        def __set__(self, value):
            self._live().linear_max = value

    def remove_port(self, int port):
        """Retires an ENI port (its ENI reclaimed): nothing is routed to it, the loop stops
        polling it, and its interface may then be deleted. Safe while the loop runs."""
        cdef rd.hp_dp *dp = self._live()
        cdef int rc
        with nogil:
            rc = rd.hp_dp_remove_port(dp, port)
        _dp_check(rc, f"remove_port({port})")

    def add_port(self, iface, role="inside", eni=None, mac=None, v4_subnet=None,
                 v4_gateway=None, v6_subnet=None, v6_gateway=None, frames=0, tx_frames=0,
                 qdisc_bypass=True):
        """Opens a ring pair on iface (name or index, in the current namespace); returns the
        port index. role "inside" (one) or "eni" (eni = the Nat's ENI id, one port each).
        mac: the port's MAC (default: the interface's; a MAC of its own is cheaper, the
        namespace's kernel then drops the frames as PACKET_OTHERHOST at once). Subnets /
        gateways: ENI next hops. frames / tx_frames: ring slots, 0 for the defaults (rx 8192
        inside, 4096 on an ENI, 2 KB each; tx 128, 68 KB each). An ENI port may take the slot
        of one removed earlier. Safe while the loop runs: the ring is opened outside the table
        lock and attached under it."""
        cdef rd.hp_dp *dp = self._live()
        cdef bytes mb
        cdef int c_ifindex, c_role, c_eni, rc
        cdef uint32_t c_frames, c_tx
        cdef int c_bypass = 1 if qdisc_bypass else 0
        ifindex, ifname = _dp_ifindex(iface)
        if role not in _DP_ROLES:
            raise ValueError(f"role must be one of {sorted(_DP_ROLES)}")
        if role == "eni" and eni is None:
            raise ValueError("an ENI port needs eni=<ENI id>")
        mb = _dp_mac_bytes(mac) if mac is not None else _dp_iface_mac(ifname)
        if not frames:
            frames = _DP_DEFAULT_RX[role]
        c_ifindex, c_role, c_eni = ifindex, _DP_ROLES[role], -1 if eni is None else eni
        c_frames, c_tx = frames, tx_frames
        cdef const uint8_t *mp = mb
        with nogil:
            rc = rd.hp_dp_add_port(dp, c_ifindex, mp, c_role, c_eni, c_frames, c_tx, c_bypass)
        port = _dp_check(rc, f"add_port({ifname})")
        # _info is read by index: a new port is appended or reuses a removed ENI's slot
        # (add_port() is not called from two threads at once).
        while len(self._info) <= port:
            self._info.append(None)
        self._info[port] = {"ifname": ifname}
        if v4_subnet is not None:
            self.set_subnet(port, v4_subnet, v4_gateway)
        if v6_subnet is not None:
            self.set_subnet(port, v6_subnet, v6_gateway)
        return port

    def set_subnet(self, int port, subnet, gateway=None):
        """An ENI port's on-link prefix for one family, and the gateway for the rest."""
        cdef rd.hp_dp *dp = self._live()
        cdef bytes pb, gb
        cdef const uint8_t *gp = NULL
        cdef const uint8_t *pp
        cdef int fam, plen, rc
        net = _dp_ipaddress.ip_network(subnet, strict=False)
        pb = net.network_address.packed
        if gateway is not None:
            gw = _dp_ipaddress.ip_address(gateway)
            if gw.version != net.version:
                raise ValueError("gateway and subnet are of different families")
            gb = gw.packed
            gp = gb
        pp, fam, plen = pb, net.version, net.prefixlen
        with nogil:
            rc = rd.hp_dp_set_subnet(dp, port, fam, pp, plen, gp)
        _dp_check(rc, "set_subnet")

    def set_neighbor(self, addr, mac, port=None, pinned=False):
        """addr is at mac (on port; None: on any port, a port's own entry wins). pinned: an
        entry the lab knows, which nothing learned replaces; else a learned one (confirmed
        now, aged by age_neighbors). A learned entry for a pinned one raises PermissionError;
        a full table, or a port's full share of learned entries, OSError ENOSPC."""
        cdef rd.hp_dp *dp = self._live()
        cdef bytes ab, mb
        cdef int c_port = -1 if port is None else port, c_fam, rc
        cdef int c_flags = 1 if pinned else 0
        fam, ab = _dp_addr(addr)
        mb = _dp_mac_bytes(mac)
        cdef const uint8_t *ap = ab
        cdef const uint8_t *mp = mb
        c_fam = fam
        with nogil:
            rc = rd.hp_dp_set_neigh(dp, c_port, c_fam, ap, mp, c_flags)
        if rc == -EPERM:
            raise PermissionError(EPERM, f"set_neighbor({addr}): the lab pinned it")
        _dp_check(rc, f"set_neighbor({addr})")

    def del_neighbor(self, addr, port=None):
        """Removes an entry; False when there was none."""
        cdef rd.hp_dp *dp = self._live()
        cdef bytes ab
        cdef int c_port = -1 if port is None else port, c_fam, rc
        fam, ab = _dp_addr(addr)
        cdef const uint8_t *ap = ab
        c_fam = fam
        with nogil:
            rc = rd.hp_dp_del_neigh(dp, c_port, c_fam, ap)
        if rc == -ENOENT:
            return False
        _dp_check(rc, "del_neighbor")
        return True

    def neighbor(self, addr, port=None, with_pinned=False):
        """The MAC the loop would use for addr on port (own entry, then any-port), or None;
        with_pinned: (mac, pinned) or None."""
        cdef rd.hp_dp *dp = self._live()
        cdef bytes ab
        cdef uint8_t m[6]
        cdef int c_port = -1 if port is None else port, c_fam, rc, c_flags = 0
        fam, ab = _dp_addr(addr)
        cdef const uint8_t *ap = ab
        c_fam = fam
        with nogil:
            rc = rd.hp_dp_get_neigh(dp, c_port, c_fam, ap, m, &c_flags)
        if rc != 0:
            return None
        return (_dp_mac_str(m), bool(c_flags & 1)) if with_pinned else _dp_mac_str(m)

    def age_neighbors(self, max_age_ms):
        """Removes the learned entries not confirmed in the last max_age_ms; how many."""
        cdef rd.hp_dp *dp = self._live()
        cdef uint64_t age = max_age_ms
        cdef unsigned int n
        with nogil:
            n = rd.hp_dp_age_neigh(dp, age)
        return n

    def clear_neighbors(self):
        cdef rd.hp_dp *dp = self._live()
        with nogil:
            rd.hp_dp_clear_neigh(dp)

    def run(self, int timeout_ms=100, unsigned int max_batches=0):
        """Runs the loop on this thread until frames were punted, timeout_ms passed (-1: none),
        max_batches ran (0: no limit) or wake(). Returns the number of frames received. Not
        while the forwarding thread runs (start())."""
        cdef rd.hp_dp *dp = self._idle()
        cdef int64_t n
        self._running = True
        try:
            with nogil:
                n = rd.hp_dp_run(dp, timeout_ms, max_batches)
        finally:
            self._running = False
        if n < 0:
            raise errors.errno_error(n, "hp_dp_run")
        return n

    def wake(self):
        """Makes the current (or next) run() return; safe from any thread."""
        if self.dp != NULL:
            rd.hp_dp_wake(self.dp)

    def pending_punts(self):
        cdef rd.hp_dp *dp = self.dp
        if dp == NULL:
            return 0
        with nogil:
            n = rd.hp_dp_punt_pending(dp)
        return n

    def punts(self, int timeout_ms=0, bint full=True):
        """Takes what was punted: a list of Punt (full) or (port, reason, frame) tuples, in
        arrival order. timeout_ms: when nothing is queued, wait up to this long without the
        GIL (-1: until something is; 0: do not wait). One reader thread at a time."""
        cdef rd.hp_dp *dp = self._live()
        cdef uint32_t i, n
        cdef const rd.hp_dp_punt *p
        cdef const uint8_t *d
        out = []
        with self._reader:
            with nogil:
                if timeout_ms != 0:
                    rd.hp_dp_punt_wait(dp, timeout_ms)
                n = rd.hp_dp_punt_take(dp)
            for i in range(n):
                p = rd.hp_dp_punt_get(dp, i)
                d = rd.hp_dp_punt_data(dp, p)
                frame = d[:p.len]
                if full:
                    out.append(Punt(p.in_port, p.reason, frame,
                                    None if p.out_port == rd.HP_DP_PORT_NONE else p.out_port,
                                    -1 if p.conn == 0xFFFFFFFF else p.conn,
                                    p.vnet[:10]))
                else:
                    out.append((p.in_port, p.reason, frame))
        return out

    def inject(self, int port, frame, vnet=None):
        """Sends an Ethernet frame out of port as is (vnet: its 10-byte virtio-net header,
        for a GSO frame or a partial checksum; None: none)."""
        cdef rd.hp_dp *dp = self._live()
        cdef bytes fb = bytes(frame)
        cdef bytes vb
        cdef const uint8_t *vp = NULL
        cdef const uint8_t *fp = fb
        cdef uint32_t n = len(fb)
        cdef int rc
        if vnet is not None:
            vb = bytes(vnet)
            if len(vb) != 10:
                raise ValueError("a virtio-net header is 10 bytes")
            vp = vb
        with nogil:
            rc = rd.hp_dp_inject(dp, port, fp, n, vp)
        _dp_check(rc, "inject")

    def input(self, int port, frame, vnet=None):
        """Processes an Ethernet frame as if it had arrived on port (translate, then forward
        or punt). Returns (verdict, reason, egress, conn) as Nat.translate does."""
        cdef rd.hp_dp *dp = self._live()
        cdef bytes fb = bytes(frame)
        cdef bytes vb
        cdef rd.hp_result res
        cdef const uint8_t *vp = NULL
        cdef const uint8_t *fp = fb
        cdef uint32_t n = len(fb)
        cdef int rc
        if vnet is not None:
            vb = bytes(vnet)
            if len(vb) != 10:
                raise ValueError("a virtio-net header is 10 bytes")
            vp = vb
        with nogil:
            rc = rd.hp_dp_input(dp, port, fp, n, vp, &res)
        _dp_check(rc, "input")
        return (res.verdict, res.reason, res.port, -1 if res.conn == 0xFFFFFFFF else res.conn)

    def counters(self):
        """Loop counters, and "drop.<REASON>" for the loop's own drops and punts (NOT_OUR_MAC,
        NEIGH_MISS, NO_ROUTE, TX_FULL, ...; the Nat counts its own). Readable while running."""
        cdef rd.hp_dp *dp = self._live()
        cdef int i
        out = {}
        for i in range(rd.HP_DP_C_COUNT):
            out[rd.hp_dp_counter_names[i].decode().lower()] = dp.counters[i]
        for i in range(rd.HP_R_COUNT):
            out["drop." + rd.hp_reason_names[i].decode()] = dp.drops[i]
        for i in range(rd.HP_R_COUNT):
            out["policed." + rd.hp_reason_names[i].decode()] = dp.police.policed[i]
        for i in range(rd.HP_PC_COUNT):
            out["policed_class." + rd.hp_police_class_names[i].decode()] = \
                dp.police.policed_class[i]
        out["punts_from_strangers"] = dp.police.strangers
        return out

    def set_punt_limit(self, uint32_t per_s, uint32_t burst):
        """Punts let through per second and at once, per source (port, MAC) and class (ARP,
        NDP, echo, ICMP errors, other; docs/semantics.md section 13; default 200 and 100).
        Before start(): the buckets are not locked."""
        if per_s == 0 or burst == 0:
            raise ValueError("per_s and burst must be positive")
        rd.hp_police_init(&self._live().police, per_s, burst)

    def ports(self):
        """One dict per port: index, ifname, ifindex, mac, role, eni, subnets and ring stats.
        Readable while running (copied under the table lock: a slot can be reused)."""
        cdef rd.hp_dp *dp = self._live()
        cdef rd.hp_dp_port_view views[rd.HP_DP_MAX_PORTS]
        cdef rd.hp_dp_port *p
        cdef uint32_t i, n
        with nogil:
            n = rd.hp_dp_ports_view(dp, views, rd.HP_DP_MAX_PORTS)
        out = []
        for i in range(n):
            p = &views[i].port
            if i >= len(self._info) or self._info[i] is None:
                continue             # being added by another thread: not registered here yet
            d = {"index": i, "ifname": self._info[i]["ifname"], "ifindex": p.ifindex,
                 "mac": _dp_mac_str(p.mac), "role": _DP_ROLE_NAMES[p.role],
                 "eni": p.eni if p.role == rd.HP_DP_ENI else None, "removed": bool(p.removed)}
            for f, ver, alen in ((0, "v4", 4), (1, "v6", 16)):
                if p.has_net[f]:
                    net = _dp_ipaddress.ip_address(p.net[f][:alen])
                    d[ver + "_subnet"] = f"{net}/{p.plen[f]}"
                    d[ver + "_gateway"] = (str(_dp_ipaddress.ip_address(p.gw[f][:alen]))
                                           if p.has_gw[f] else None)
            s = views[i].st
            d.update({"rx_frames": s.rx_frames, "rx_bytes": s.rx_bytes,
                      "rx_outgoing": s.rx_outgoing, "rx_truncated": s.rx_truncated,
                      "rx_copied": s.rx_copied,
                      "rx_kernel_drops": s.rx_kernel_drops, "tx_frames": s.tx_frames,
                      "tx_bytes": s.tx_bytes, "tx_full": s.tx_full, "tx_sends": s.tx_sends,
                      "tx_errors": s.tx_errors, "tx_direct": s.tx_direct,
                      "ring_frames": views[i].rx_nr,
                      "tx_ring_frames": views[i].tx_nr})
            out.append(d)
        return out


def police_takes(uint32_t per_s, uint32_t burst, events):
    """Which punts of events [(port, reason, frame, now_ms), ...] a fresh policer lets
    through (frame: from its Ethernet header), and the count it policed by reason index: for
    tests of the C buckets."""
    cdef rd.hp_punt_police *p = <rd.hp_punt_police *>malloc(sizeof(rd.hp_punt_police))
    cdef bytes b
    if not p:
        raise MemoryError()
    try:
        rd.hp_police_init(p, per_s, burst)
        passed = []
        for port, reason, frame, now in events:
            b = bytes(frame)
            passed.append(bool(rd.hp_police_punt(p, port, reason, b, len(b), now)))
        return passed, {i: p.policed[i] for i in range(rd.HP_R_COUNT) if p.policed[i]}
    finally:
        free(p)
