"""The NAT's state in a file (csrc/nat/hp_state.h): a process that dies, however it dies, leaves
its connections, ports and counters to the next one, which attaches and carries on.

A "crash" is a forked child that builds the NAT on the file, sends traffic and then calls
os._exit() or is killed with SIGKILL in the middle of its traffic; the test process attaches.
"""

import dataclasses
import json
import os
import signal
import stat
import struct
import time

import pytest

import framegen as fg
from hyperplane import vocab
from hyperplane.vocab import FORWARD, IN, OUT, R

core = pytest.importorskip("hyperplane._core")
Nat = core.Nat

SRCS = ["10.200.0.11", "10.200.0.12"]
SRC6 = "fd00:200::11"
ENIS = [("10.0.2.4", None), ("10.0.1.4", "fd00:1::4")]
DST, DST6 = "10.0.9.9", "fd00:9::9"
KW = dict(capacity=4096, port_range=(1000, 1063), hash_seed=None, port_seed=7)


def attach_topology(nat):
    """What the daemon does at every start: ENIs in order, then groups and sources (those are
    process-local). ENI 1 takes the group's new connections."""
    enis = [nat.add_eni(v4, v6) for v4, v6 in ENIS]
    grp = nat.add_group()
    for e in enis:
        nat.group_add_eni(grp, e)
    for s in SRCS:
        nat.add_source(s, grp)
    nat.add_source(SRC6, grp, allow_v6=True)
    return enis


def seg(src, dst, sport, dport, flags, seq, ack, payload=b""):
    """A TCP segment with these sequence numbers (framegen builds seq=1000, ack=0)."""
    frame = fg.tcp(src, dst, sport, dport, flags, payload=payload)
    f = fg.fields(frame)
    struct.pack_into("!II", frame, f["l4"] + 4, seq, ack)
    struct.pack_into("!H", frame, f["l4"] + 16, 0)
    l4 = bytes(frame[f["l4"]:f["end"]])
    csum = fg.checksum(l4, fg.pseudo_sum(fg.packed(src), fg.packed(dst), fg.TCP, len(l4)))
    struct.pack_into("!H", frame, f["l4"] + 16, csum)
    return frame


def send(nat, frame, direction, now, eni=0):
    (res,) = nat.translate([frame], direction, now, eni=eni)
    return res, fg.fields(frame)


class TcpFlow:
    """An established TCP connection: handshake, then data either way."""

    def __init__(self, nat, src, sport, now, dst=DST):
        self.src, self.sport, self.dst = src, sport, dst
        self.seq, self.rseq = 1000, 900000
        res, f = send(nat, seg(src, dst, sport, 443, "S", self.seq, 0), OUT, now)
        assert res[0] == FORWARD, res
        self.eni, self.nat_addr, self.nat_port = res[2] - 1, f["src"], f["sport"]
        self.seq += 1
        res, _ = self.reply(nat, "SA", now, syn=True)
        assert res[0] == FORWARD, res
        self.rseq += 1
        assert self.data(nat, now)[0][0] == FORWARD

    def data(self, nat, now, payload=b"data"):
        res, f = send(nat, seg(self.src, self.dst, self.sport, 443, "PA", self.seq, self.rseq,
                               payload), OUT, now)
        self.seq += len(payload)
        return res, f

    def reply(self, nat, flags, now, payload=b"", syn=False):
        res, f = send(nat, seg(self.dst, self.nat_addr, 443, self.nat_port, flags, self.rseq,
                               self.seq, payload), IN, now, eni=self.eni)
        self.rseq += len(payload)
        return res, f

    def state(self):
        return dict(src=self.src, sport=self.sport, dst=self.dst, eni=self.eni,
                    nat_addr=self.nat_addr, nat_port=self.nat_port, seq=self.seq,
                    rseq=self.rseq)

    @classmethod
    def restore(cls, d):
        flow = cls.__new__(cls)
        flow.__dict__.update(d)
        return flow


def udp_flow(nat, src, sport, now, dst=DST):
    res, f = send(nat, fg.udp(src, dst, sport, 53, payload=b"q"), OUT, now)
    assert res[0] == FORWARD, res
    back, g = send(nat, fg.udp(dst, f["src"], 53, f["sport"], payload=b"a"), IN, now,
                   eni=res[2] - 1)
    assert back[0] == FORWARD and (g["dst"], g["dport"]) == (src, sport)
    return dict(src=src, sport=sport, dst=dst, eni=res[2] - 1, nat_addr=f["src"],
                nat_port=f["sport"])


def in_child(fn):
    """Runs fn() in a forked child that then dies without cleanup; returns (pid, read end)
    of the pipe fn writes to."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            fn(w)
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 1
        os._exit(code)
    os.close(w)
    return pid, r


def read_json(r, timeout=30.0):
    """One JSON line from the child, with a deadline."""
    buf = b""
    deadline = time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        assert time.monotonic() < deadline, "the child did not report in time"
        chunk = os.read(r, 65536)
        assert chunk, "the child died before it reported"
        buf += chunk
    return json.loads(buf)


def held_ports(nat):
    """(eni, family, proto, nat_port) -> inside endpoints holding it."""
    held = {}
    for c in nat.connections():
        held.setdefault((c.eni, c.family, c.proto, c.nat_port), set()).add((c.src, c.sport))
    return held


def test_the_bound_agrees_and_fits_the_index():
    assert core.MAX_CAPACITY == vocab.MAX_CAPACITY
    # The index of the largest table: its mask and every slot reference ((id << 1 | dir) + 1)
    # fit in 32 bits with room to spare; the overflow starts at 2**31 slots.
    slots = core.index_slots(vocab.MAX_CAPACITY)
    assert slots == 1 << 28 and slots * 0.7 >= 2 * vocab.MAX_CAPACITY
    assert ((vocab.MAX_CAPACITY - 1) << 1 | 1) + 1 < 1 << 32
    assert core.index_slots(1 << 30) == 1 << 32          # the core's old bound wrapped a uint32
    with pytest.raises(ValueError, match="capacity"):
        Nat(capacity=vocab.MAX_CAPACITY + 1)


@pytest.mark.skipif(not os.environ.get("HP_BIG_TESTS"),
                    reason="needs about 8 GB of memory for a few seconds: set HP_BIG_TESTS=1")
def test_a_table_at_the_bound_works():
    nat = Nat(capacity=vocab.MAX_CAPACITY, port_seed=1)
    attach_topology(nat)
    assert nat.capacity == vocab.MAX_CAPACITY
    assert nat.memory()["table_bytes"] > 7 << 30
    flow = udp_flow(nat, SRCS[0], 5000, 0)
    assert len(nat) == 1 and nat.lookup(flow["src"], DST, 5000, 53, fg.UDP, OUT, 0) is not None


def test_anonymous_state_is_not_attached(tmp_path):
    nat = Nat(**KW)
    assert not nat.attached
    fresh = Nat(state_path=tmp_path / "s.state", **KW)
    assert not fresh.attached
    assert stat.S_IMODE(os.stat(tmp_path / "s.state").st_mode) == 0o600


def test_connections_survive_a_crash(tmp_path):
    path = str(tmp_path / "nat.state")

    def child(w):
        nat = Nat(state_path=path, **KW)
        assert not nat.attached
        attach_topology(nat)
        tcp = [TcpFlow(nat, SRCS[i % 2], 40000 + i, 1_000) for i in range(6)]
        udp = [udp_flow(nat, SRCS[0], 50000 + i, 1_000) for i in range(4)]
        v6 = udp_flow(nat, SRC6, 5353, 1_000, dst=DST6)
        os.write(w, (json.dumps(dict(tcp=[t.state() for t in tcp], udp=udp, v6=v6,
                                     counters=nat.counters(),
                                     conns=[dataclasses.asdict(c) for c in nat.connections()],
                                     pools=nat.pool_stats(1, 4, 6),
                                     eni=nat.eni_counters(1))) + "\n").encode())
        os._exit(0)      # no destructor, no unmapping: as a crash leaves it

    pid, r = in_child(child)
    before = read_json(r)
    assert os.waitpid(pid, 0)[1] == 0

    nat = Nat(state_path=path, **KW)
    assert nat.attached and nat.repaired == 0
    assert attach_topology(nat) == [0, 1]
    # (through JSON as the child sent them: the flow-log intervals are tuples there, lists here)
    assert [json.loads(json.dumps(dataclasses.asdict(c))) for c in nat.connections()] == \
        before["conns"]
    assert nat.counters() == before["counters"]
    assert nat.pool_stats(1, 4, 6) == before["pools"]
    assert nat.eni_counters(1) == before["eni"]            # per-ENI counters live there too

    now = 3_000        # 2 s after the UDP replies: the flows become streams (UDP_STREAM_MS)
    for d in before["tcp"]:
        flow = TcpFlow.restore(d)
        res, f = flow.data(nat, now)
        assert res[0] == FORWARD and (f["src"], f["sport"]) == (flow.nat_addr, flow.nat_port)
        res, f = flow.reply(nat, "A", now, payload=b"back")
        assert res[0] == FORWARD and (f["dst"], f["dport"]) == (flow.src, flow.sport)
    for d in before["udp"] + [before["v6"]]:
        res, f = send(nat, fg.udp(d["src"], d["dst"], d["sport"], 53), OUT, now)
        assert res[0] == FORWARD and (f["src"], f["sport"]) == (d["nat_addr"], d["nat_port"])
        res, f = send(nat, fg.udp(d["dst"], d["nat_addr"], 53, d["nat_port"]), IN, now,
                      eni=d["eni"])
        assert res[0] == FORWARD and (f["dst"], f["dport"]) == (d["src"], d["sport"])
    c = nat.counters()
    assert c["conn_created"] == before["counters"]["conn_created"]
    assert c["fwd_out_packets"] == before["counters"]["fwd_out_packets"] + 11
    assert c["fwd_in_packets"] == before["counters"]["fwd_in_packets"] + 11
    assert all(conn.state in ("ESTABLISHED", "UDP_STREAM") for conn in nat.connections())

    # New connections from other endpoints take only ports nobody holds, until none is left.
    old = held_ports(nat)
    new_ports = set()
    for sport in range(20000, 20200):
        res, f = send(nat, fg.udp(SRCS[1], DST, sport, 53), OUT, now)
        if res[0] != FORWARD or res[2] != 2:     # ENI 1 is full: the older ENI 0 takes over
            assert res[0] == FORWARD or res[1] == R["PORTS_EXHAUSTED"]
            break
        key = (1, 4, fg.UDP, f["sport"])
        assert key not in old and f["sport"] not in new_ports
        new_ports.add(f["sport"])
    held_before = {k[3] for k in old if k[:3] == (1, 4, fg.UDP)}
    assert new_ports | held_before == set(range(1000, 1064))


def test_listings_find_every_connection_below_the_high_water_also_after_attach(tmp_path):
    """Scans stop at the highest id live since the table was made or attached (a table far
    larger than its traffic lists at the cost of its traffic): connections that live only at
    high ids are still listed and counted, after an attach too, and a new connection that
    takes a freed low id is listed beside them."""
    path = str(tmp_path / "nat.state")
    first_timeout = vocab.PROFILES["aws"]["UDP_FIRST"] * 1000

    def child(w):
        nat = Nat(state_path=path, **KW)
        attach_topology(nat)
        for i in range(30):
            send(nat, fg.udp(SRCS[0], DST, 30000 + i, 53), OUT, 0)
        for i in (28, 29):                      # the last two stay, the others expire
            send(nat, fg.udp(SRCS[0], DST, 30000 + i, 53), OUT, first_timeout - 1)
        assert len(nat.expire(first_timeout)) == 28
        ids = sorted(c.id for c in nat.connections())
        os.write(w, (json.dumps(ids) + "\n").encode())
        os._exit(0)

    pid, r = in_child(child)
    assert read_json(r) == [28, 29]
    assert os.waitpid(pid, 0)[1] == 0
    nat = Nat(state_path=path, **KW)
    assert nat.attached
    attach_topology(nat)
    assert sorted(c.id for c in nat.connections()) == [28, 29]
    res, _ = send(nat, fg.udp(SRCS[1], DST, 40000, 53), OUT, first_timeout)
    assert res[0] == FORWARD and res[3] == 0     # the lowest free id
    assert sorted(c.id for c in nat.connections()) == [0, 28, 29]
    page, cursor = nat.connections_page(0, 1000)
    assert len(page) == 3 and cursor is None


def test_a_sigkill_in_the_middle_of_traffic_loses_no_port(tmp_path):
    path = str(tmp_path / "nat.state")
    kw = dict(KW, port_range=(1000, 1299), quarantine_ms=0)

    def child(w):
        nat = Nat(state_path=path, **kw)
        attach_topology(nat)
        flow = TcpFlow(nat, SRCS[0], 40000, 1_000)
        # New flows and expiries, as fast as it goes, until the parent kills us.
        i, now = 0, 1_000
        while True:
            sport = 10000 + i % 20000
            nat.translate([fg.udp(SRCS[1], DST, sport, 53)], OUT, now)
            if i % 7 == 0:
                now += 5_000
                nat.translate([seg(flow.src, flow.dst, flow.sport, 443, "A", flow.seq,
                                   flow.rseq)], OUT, now)
                nat.expire(now, 50)
            i += 1
            if i == 2000:   # well under way: the parent kills us while we go on
                os.write(w, (json.dumps(flow.state()) + "\n").encode())

    pid, r = in_child(child)
    flow = TcpFlow.restore(read_json(r))
    os.kill(pid, signal.SIGKILL)
    assert os.waitpid(pid, 0)[1] == signal.SIGKILL

    nat = Nat(state_path=path, **kw)
    assert nat.attached
    assert nat.repaired <= 1     # at most the connection being written
    attach_topology(nat)
    conns = nat.connections()
    assert conns and len(nat) == len(conns)
    held = held_ports(nat)
    assert all(len(owners) == 1 for owners in held.values())     # no port held twice
    assert sum(nat.eni_counters(1)["active"].values()) == len(conns)   # counted again
    udp_held = {k[3] for k in held if k[:3] == (1, 4, fg.UDP)}
    p = nat.pool_stats(1, 4, fg.UDP)
    assert p["in_use"] == len(udp_held) and p["free"] + p["in_use"] == p["size"]

    # The established connection carries on with its port.
    now = max(c.last_seen_ms for c in conns) + 1
    res, f = flow.data(nat, now)
    assert res[0] == FORWARD and (f["src"], f["sport"]) == (flow.nat_addr, flow.nat_port)
    res, f = flow.reply(nat, "A", now, payload=b"ok")
    assert res[0] == FORWARD and (f["dst"], f["dport"]) == (flow.src, flow.sport)
    # New connections never get a held port.
    for sport in range(30000, 30000 + p["free"]):
        res, f = send(nat, fg.udp(SRCS[0], DST, sport, 53), OUT, now)
        assert res[0] == FORWARD and f["sport"] not in udp_held
    res, _ = send(nat, fg.udp(SRCS[0], DST, 1, 53), OUT, now)
    assert res[0] == FORWARD and res[2] == 1     # ENI 1 is full: the group's older ENI 0
    # Expiry works on the rebuilt lists.
    live = len(nat)
    assert len(nat.expire(now + 10**9)) >= live and len(nat) == 0 and nat.connections() == []


def test_quarantine_and_journal_survive(tmp_path):
    # Only a TCP connection that reached ESTABLISHED quarantines its port.
    path = str(tmp_path / "nat.state")
    kw = dict(KW, quarantine_ms=60_000)
    est = 350_000                       # ESTABLISHED's timeout

    def syn(nat, sport, now):
        res, f = send(nat, seg(SRCS[0], DST, sport, 443, "S", 1, 0), OUT, now)
        return res, f

    def child(w):
        nat = Nat(state_path=path, **kw)
        attach_topology(nat)
        a = TcpFlow(nat, SRCS[0], 5000, 0).nat_port
        assert nat.expire(est, collect=False) == 1          # a: quarantined until est + 60 s
        b = TcpFlow(nat, SRCS[0], 5001, est + 10_000).nat_port
        # b's connection found expired by a new SYN: journal, quarantine; the SYN's
        # allocation frees a.
        res, _ = syn(nat, 5001, 2 * est + 20_000)
        assert res[0] == FORWARD
        os.write(w, (json.dumps([a, b]) + "\n").encode())
        os._exit(0)

    pid, r = in_child(child)
    a, b = read_json(r)
    os.waitpid(pid, 0)
    nat = Nat(state_path=path, **kw)
    attach_topology(nat)
    p = nat.pool_stats(1, 4, fg.TCP)
    assert (p["quarantined"], p["in_use"], p["free"]) == (1, 1, 62)
    now = 2 * est + 30_000
    assert [(c.sport, c.nat_port, c.state) for c in nat.expire(now)] == \
        [(5001, b, "ESTABLISHED")]
    ports = set()
    for sport in range(6000, 6062):
        res, f = syn(nat, sport, now)
        assert res[0] == FORWARD and res[2] == 2
        ports.add(f["sport"])
    assert a in ports and b not in ports      # b is in quarantine for another 50 s
    res, _ = syn(nat, 7000, now)
    assert res[0] == FORWARD and res[2] == 1  # ENI 1 is full: the group's older ENI 0


def test_a_mismatching_config_is_refused(tmp_path):
    path = tmp_path / "nat.state"
    nat = Nat(state_path=path, **KW)
    attach_topology(nat)
    del nat
    for change, word in ((dict(capacity=8192), "capacity 4096, not 8192"),
                         (dict(port_range=(1000, 1099)), "highest port 1063, not 1099"),
                         (dict(mapping="per-connection"), "per-connection"),
                         (dict(timeouts={"ESTABLISHED": 100}),
                          "timeout ESTABLISHED 350000 ms, not 100000")):
        with pytest.raises(ValueError, match=word):
            Nat(state_path=path, **dict(KW, **change))
    nat = Nat(state_path=path, **KW)
    assert nat.attached
    with pytest.raises(ValueError, match="ENI 0 of the state file has 10.0.2.4;"):
        nat.add_eni("10.0.7.4")


def test_one_process_at_a_time_and_only_state_files(tmp_path):
    path = tmp_path / "nat.state"
    nat = Nat(state_path=path, **KW)
    with pytest.raises(OSError, match="in use by another process"):
        Nat(state_path=path, **KW)
    del nat
    assert Nat(state_path=path, **KW).attached
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a state file" * 100)
    with pytest.raises(ValueError, match="not a Hyperplane state file"):
        Nat(state_path=junk, **KW)


def test_a_file_never_completed_starts_afresh(tmp_path):
    path = tmp_path / "nat.state"
    path.write_bytes(b"\0" * 10000)      # made by a process that died before the header
    nat = Nat(state_path=path, **KW)
    assert not nat.attached
    attach_topology(nat)
    del nat
    assert Nat(state_path=path, **KW).attached


# Where the attach's checks look (csrc/nat/hp_state.h, hp_nat.h): the header on page 0, the shared
# part on page 1.
HDR_BUILD_HASH, HDR_BOOT_ID = 152, 160
SHARED = 4096
SH_N_ENIS, SH_END, SH_ENI_OFF = SHARED + 32, SHARED + 48, SHARED + 56
SH_ENI_LEN = SH_ENI_OFF + 8 * 1024
SH_ENI_FREE = SH_ENI_LEN + 8 * 1024


def made_state(tmp_path):
    """A state file with both ENIs and a connection, as a killed data plane leaves it."""
    path = tmp_path / "nat.state"
    nat = Nat(state_path=path, **KW)
    attach_topology(nat)
    TcpFlow(nat, SRCS[0], 5000, 1000)
    del nat
    return path


def u64(path, at):
    return struct.unpack_from("<Q", path.read_bytes(), at)[0]


def patch(path, at, fmt, value):
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(struct.pack(fmt, value))


def refused(path, match):
    """Attaching path is refused with one line naming the file and where it went; the file is
    gone from its place (kept aside, never mapped) and the next start makes a fresh one."""
    with pytest.raises(ValueError, match=match) as e:
        Nat(state_path=path, **KW)
    line = str(e.value)
    assert "\n" not in line and str(path) in line
    aside = path.with_name(path.name + ".rejected")
    assert line.endswith(f"; kept as {aside}"), line
    assert aside.exists() and not path.exists()
    nat = Nat(state_path=path, **KW)
    assert not nat.attached
    return line


def test_a_truncated_state_file_is_refused_and_kept_aside(tmp_path):
    path = made_state(tmp_path)
    blob = path.read_bytes()
    path.write_bytes(blob[:len(blob) // 3])
    refused(path, "is truncated")
    path.unlink()
    path.write_bytes(blob[:100])                      # not even the whole header
    refused(path, "is truncated")


def test_eni_blocks_past_the_end_are_refused(tmp_path):
    path = made_state(tmp_path)
    os.truncate(path, u64(path, SH_ENI_OFF + 8) + 4096)   # ENI 1's block cut short
    refused(path, "ends its ENI blocks at .* outside")


@pytest.mark.parametrize("at, fmt, value, match", [
    (SH_N_ENIS, "<I", 5000, "has 5000 ENIs, more than 1024"),
    (SH_ENI_OFF, "<Q", None, "puts ENI 0's block .* outside its ENI space"),      # unaligned
    (SH_ENI_OFF + 8, "<Q", 0, "puts ENI 1's block"),                            # the header
    (SH_ENI_OFF + 8, "<Q", 1 << 62, "puts ENI 1's block"),
    (SH_END, "<Q", 1 << 62, "ends its ENI blocks at"),
    (SH_ENI_FREE + 1, "<B", 7, "marks ENI 1 neither live nor free"),
    (SH_ENI_LEN + 8, "<Q", 4096, "gives ENI 1 a block of 4096 bytes, too small"),
    (HDR_BUILD_HASH, "<Q", 0x1234, "written by another build"),
    (HDR_BOOT_ID, "<8s", b"00000000", "is from another boot"),
    (0, "<8s", b"HPNATSTX", "not a Hyperplane state file"),
])
def test_a_corrupted_state_file_is_refused(tmp_path, at, fmt, value, match):
    path = made_state(tmp_path)
    if value is None:
        value = u64(path, at) + 8
    patch(path, at, fmt, value)
    refused(path, match)


def test_overlapping_eni_blocks_are_refused(tmp_path):
    path = made_state(tmp_path)
    patch(path, SH_ENI_OFF + 8, "<Q", u64(path, SH_ENI_OFF))
    refused(path, "overlapping blocks for ENIs 0 and 1")


def test_released_enis_give_their_ids_and_blocks_to_the_next_across_a_restart(tmp_path):
    """A released ENI's id and block stay free in the file: after a restart the ENIs of the
    state come back with their ids, and a new ENI takes the free id and its block (the file
    does not grow) when its pools fit there; one whose pools do not fit goes to the end."""
    path = tmp_path / "nat.state"
    nat = Nat(state_path=path, **KW)
    assert [nat.add_eni(*a) for a in
            [("10.0.2.4", None), ("10.0.1.4", "fd00:1::4"), ("10.0.3.4", None)]] == [0, 1, 2]
    grp = nat.add_group()
    nat.group_add_eni(grp, 1)
    assert nat.group_retire_eni(grp, 1) is True and nat.release_eni(1) is True
    size = path.stat().st_size
    del nat
    nat = Nat(state_path=path, **KW)
    assert nat.attached
    with pytest.raises(ValueError, match="ENI 2 of the state file has 10.0.3.4"):
        nat.add_eni("10.0.3.9", eni=2)
    assert nat.add_eni("10.0.3.4", eni=2) == 2              # coming back, with its id
    assert nat.add_eni("10.0.2.4") == 0                     # the one still to come back
    assert nat.add_eni("10.0.5.4") == 1                     # the free id, in its block
    assert path.stat().st_size == size
    with pytest.raises(ValueError):
        nat.add_eni("10.0.6.4", eni=1)
    assert nat.release_eni(1) is True
    assert nat.add_eni("10.0.5.4", "fd00:5::4") == 1        # both families fit there too
    assert path.stat().st_size == size
    assert nat.release_eni(0) is True
    assert nat.add_eni("10.0.6.4", "fd00:6::4") == 0        # too big for a one-family block
    assert path.stat().st_size > size
    del nat
    nat = Nat(state_path=path, **KW)
    assert [nat.add_eni(*a) for a in [("10.0.6.4", "fd00:6::4"), ("10.0.5.4", "fd00:5::4"),
                                     ("10.0.3.4", None)]] == [0, 1, 2]


def test_a_connection_owned_by_no_function_is_no_ones(tmp_path):
    """A function index in the table past the functions the data plane added (a file whose
    entries were damaged) never reaches the source table: the connection is refused as
    spoofed rather than read out of bounds."""
    path = tmp_path / "nat.state"
    nat = Nat(state_path=path, **KW)
    attach_topology(nat)
    flow = TcpFlow(nat, SRCS[0], 5000, 1000)
    del nat
    nat = Nat(state_path=path, **KW)
    enis = [nat.add_eni(v4, v6) for v4, v6 in ENIS]     # no sources: every owner is out of range
    grp = nat.add_group()
    for e in enis:
        nat.group_add_eni(grp, e)
    res, _ = flow.data(nat, 2000)
    assert res[0] != FORWARD and res[1] == R["SPOOFED_SOURCE"]


SH_J_DELETING = SHARED + 44     # hp_nat_shared.j_deleting: a journalled delete under way


@pytest.mark.parametrize("under_way", [True, False], ids=["delete-under-way", "delete-finished"])
def test_an_attach_finishes_only_the_delete_a_kill_interrupted(tmp_path, under_way):
    """A connection found expired is journalled, then deleted. A data plane killed between
    the two leaves its record in the journal, its entry in the table and the mark that says a
    delete is under way: attached, the record is handed out once and the entry is gone (it
    would otherwise expire and be logged again). Without the mark the delete had finished, and
    an entry identical to the record is a new connection (a SYN_SENT deleted and made again in
    the same millisecond): it stays. The kill is made in the file: the deleted entry's state is
    written back, and the mark raised or not."""
    import socket as so
    path = tmp_path / "nat.state"
    nat = Nat(state_path=path, **KW)
    attach_topology(nat)
    flow = TcpFlow(nat, SRCS[0], 5000, 0)
    res, _ = flow.data(nat, 400_000)               # past ESTABLISHED's 350 s: journalled
    assert res[1] == R["TCP_NOT_SYN"]
    del nat
    blob = bytearray(path.read_bytes())
    assert struct.unpack_from("<I", blob, SH_J_DELETING)[0] == 0    # the delete finished
    tuple_bytes = (so.inet_aton(SRCS[0]) + bytes(12) + so.inet_aton(DST) + bytes(12)
                   + (5000).to_bytes(2, "little") + (443).to_bytes(2, "little"))
    at = [i for i in range(0, len(blob) - 64, 4) if blob[i:i + 36] == tuple_bytes]
    state = {i: blob[i + 42] for i in at}
    journal = [i for i in at if state[i] != 0]
    deleted = [i for i in at if state[i] == 0]
    assert len(journal) == 1 and len(deleted) == 1, state
    blob[deleted[0] + 42] = state[journal[0]]      # the entry is back, as the record has it
    struct.pack_into("<I", blob, SH_J_DELETING, int(under_way))
    path.write_bytes(bytes(blob))
    nat = Nat(state_path=path, **KW)
    attach_topology(nat)
    live = [c for c in nat.connections() if c.sport == 5000]
    records = [c for c in nat.expire(10_000_000) if c.sport == 5000]
    assert [c.state for c in records] == ["ESTABLISHED"] * (1 if under_way else 2), records
    assert len(live) == (0 if under_way else 1), live


def test_quarantined_ports_stay_charged_across_a_crash(tmp_path):
    """A port in quarantine is charged to the function that held it (docs/semantics.md 13):
    the charge is in the file beside the quarantine, kept by the repair pass and counted again
    by the recount, so a restart gives a function at its share no second share."""
    path = str(tmp_path / "nat.state")
    kw = dict(KW, quarantine_ms=60_000)

    def reset(nat, flow, now):
        res, _ = send(nat, seg(flow.src, flow.dst, flow.sport, 443, "R", flow.seq, 0), OUT, now)
        assert res[0] == FORWARD

    def child(w):
        nat = Nat(state_path=path, **kw)
        attach_topology(nat)
        nat.set_quota(SRCS[0], max_ports=4)
        for sport in range(5000, 5004):
            reset(nat, TcpFlow(nat, SRCS[0], sport, 0), 0)
        reset(nat, TcpFlow(nat, SRCS[1], 5000, 0), 0)
        assert nat.expire(10_000, collect=False) == 5       # CLOSE's timeout: quarantined
        assert nat.pool_stats(1, 4, fg.TCP)["quarantined"] == 5
        os.write(w, b"[]\n")
        os.kill(os.getpid(), signal.SIGKILL)

    pid, r = in_child(child)
    read_json(r)
    assert os.waitpid(pid, 0)[1] == signal.SIGKILL
    nat = Nat(state_path=path, **kw)
    assert nat.attached and nat.repaired == 0
    attach_topology(nat)
    nat.set_quota(SRCS[0], max_ports=4)
    nat.recount_quotas()
    ports = {s["addr"]: s["ports"] for s in nat.function_stats()}
    assert (ports[SRCS[0]], ports[SRCS[1]]) == (4, 1)
    assert nat.pool_stats(1, 4, fg.TCP)["quarantined"] == 5
    # At its share on ENI 1 (the group's first choice): its next connection takes ENI 0.
    res, _ = send(nat, seg(SRCS[0], DST, 6000, 443, "S", 1, 0), OUT, 20_000)
    assert res[0] == FORWARD and res[2] == 1
    nat.expire(70_000, collect=False)                       # the quarantine ends
    ports = {s["addr"]: s["ports"] for s in nat.function_stats()}
    assert (ports[SRCS[0]], ports[SRCS[1]]) == (1, 0)
    assert nat.pool_stats(1, 4, fg.TCP)["quarantined"] == 0
