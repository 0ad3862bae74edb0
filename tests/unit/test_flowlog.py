"""Flow logs: record formatting (default and custom formats), aggregation per interval from
the core's harvests, expiry and reject records, files with rotation and modes."""

from __future__ import annotations

import stat
from dataclasses import replace

from hyperplane import flowlog
from hyperplane.config import DEFAULT_FLOW_LOG_FIELDS as DEFAULT_FIELDS
from hyperplane.connection import Connection, FlowInterval
from hyperplane.flowlog import (Context, FlowLogWriter, FlowTracker, Record, Rejected,
                                format_record, parse)
from hyperplane.vocab import F_ASSURED, F_REPLY_SEEN

WALL0 = 1_700_000_000      # wall-clock second at data-plane time 0
wall = lambda ms: WALL0 + ms // 1000


def conn(**kw) -> Connection:
    d = dict(id=3, family=4, proto=6, src="10.200.0.11", dst="10.0.1.10", sport=40000,
             dport=80, eni=0, nat_addr="10.0.1.4", nat_port=1234, state="ESTABLISHED",
             flags=F_ASSURED | F_REPLY_SEEN, packets_out=0, packets_in=0, bytes_out=0,
             bytes_in=0, start_s=100, last_seen_ms=100_000)
    d.update(kw)
    return Connection(**d)


def fields(line: str, names=DEFAULT_FIELDS) -> dict:
    return dict(zip(names, line.split()))


def test_default_format_is_version_2_with_14_fields():
    r = Record(eni=0x1f, srcaddr="10.0.1.4", dstaddr="10.0.1.10", srcport=1234, dstport=80,
               protocol=6, packets=5, bytes=400, start=10, end=12, action="ACCEPT",
               direction="egress")
    line = format_record(r)
    assert line == ("2 123456789012 eni-0000000000000001f 10.0.1.4 10.0.1.10 1234 80 6 5 400 "
                    "10 12 ACCEPT OK")


def test_custom_format_takes_the_highest_version_and_the_new_fields():
    names = ("version", "interface-id", "srcaddr", "pkt-srcaddr", "pkt-dstaddr", "tcp-flags",
             "flow-direction", "traffic-path", "type", "subnet-id")
    r = Record(eni=1, srcaddr="10.0.1.4", dstaddr="10.0.1.10", srcport=1, dstport=2,
               protocol=6, packets=1, bytes=60, start=1, end=1, action="ACCEPT",
               direction="egress", pkt_srcaddr="10.200.0.11", pkt_dstaddr="10.0.1.10",
               tcp_flags=2)
    ctx = Context(interface_id=lambda e: f"eni-x{e}", subnet_id=lambda e: "subnet-app")
    got = fields(format_record(r, names, ctx), names)
    assert got == {"version": "5", "interface-id": "eni-x1", "srcaddr": "10.0.1.4",
                   "pkt-srcaddr": "10.200.0.11", "pkt-dstaddr": "10.0.1.10", "tcp-flags": "2",
                   "flow-direction": "egress", "traffic-path": "1", "type": "IPv4",
                   "subnet-id": "subnet-app"}
    assert format_record(r._replace(direction="ingress", protocol=17), names).split()[5:8] == \
        ["0", "ingress", "-"]           # UDP has no TCP flags; ingress has no traffic path
    assert format_record(r, ("version", "tcp-flags")).startswith("3 ")


def test_an_interval_logs_each_direction_with_the_cores_figures():
    t = FlowTracker(1000)
    c = conn(packets_out=7, packets_in=2, bytes_out=400, bytes_in=120, last_seen_ms=100_700,
             flow_out=FlowInterval(3, 180, 98_200, 100_700, 2 | 1),
             flow_in=FlowInterval(2, 120, 99_500, 100_100, 18))
    recs = t.tick([c], wall)
    assert [(r.direction, r.packets, r.bytes) for r in recs] == [("egress", 3, 180),
                                                                 ("ingress", 2, 120)]
    out, back = recs
    assert (out.srcaddr, out.srcport, out.dstaddr, out.dstport) == ("10.0.1.4", 1234, "10.0.1.10", 80)
    assert (back.srcaddr, back.srcport, back.dstaddr, back.dstport) == ("10.0.1.10", 80, "10.0.1.4", 1234)
    assert out.pkt_srcaddr == "10.200.0.11" and back.pkt_dstaddr == "10.200.0.11"
    assert (out.tcp_flags, back.tcp_flags) == (3, 18)
    assert (out.start, out.end) == (WALL0 + 98, WALL0 + 100)      # that direction's packets
    assert (back.start, back.end) == (WALL0 + 99, WALL0 + 100)
    # One direction only; a harvest without the connection gives nothing.
    recs = t.tick([replace(c, flow_in=None)], wall)
    assert [r.direction for r in recs] == ["egress"]
    assert t.tick([], wall) == []


def test_expiry_gives_the_last_record_at_the_next_tick_ending_at_the_last_packet():
    t = FlowTracker(1000)
    gone = conn(id=-1, last_seen_ms=101_200, flow_out=FlowInterval(3, 180, 100_900, 101_200, 1),
                flow_in=FlowInterval(1, 60, 101_000, 101_000, 1))
    t.expired([gone, conn(id=-1)], wall)      # the second: nothing since the last harvest
    recs = t.tick([], wall)
    assert [(r.direction, r.packets, r.bytes, r.start, r.end) for r in recs] == [
        ("egress", 3, 180, WALL0 + 100, WALL0 + 101), ("ingress", 1, 60, WALL0 + 101, WALL0 + 101)]
    assert t.tick([], wall) == []


def test_tracker_over_a_nat_records_real_packet_times_and_flags(NatClass):
    """The whole path without root: traffic through a NAT at known times, harvested."""
    from test_flowstats import session
    from test_model import make
    nat = make(NatClass)
    t = FlowTracker(60_000)
    session(nat, 3_000)                       # packets from 3.0 s to 3.7 s of an interval at 0
    recs = t.tick(nat.flow_harvest(), wall)
    assert [(r.direction, r.packets, r.start, r.end, r.tcp_flags) for r in recs] == [
        ("egress", 5, WALL0 + 3, WALL0 + 3, 3), ("ingress", 3, WALL0 + 3, WALL0 + 3, 19)]
    assert t.tick(nat.flow_harvest(), wall) == []
    assert not hasattr(t, "seen")             # nothing kept per connection


def test_rejects_aggregate_per_tuple_and_interval():
    t = FlowTracker(1000)
    syn = Rejected(eni=0, direction="ingress", family=4, proto=6, src="10.0.1.10",
                   dst="10.0.1.4", sport=5555, dport=22, length=60, time_ms=100_100,
                   tcp_flags=flowlog.TCP_SYN)
    t.rejected([syn, syn._replace(time_ms=100_900), syn._replace(dport=23)])
    recs = sorted(t.tick([], wall), key=lambda r: r.dstport)
    assert [(r.action, r.dstport, r.packets, r.bytes, r.tcp_flags) for r in recs] == [
        ("REJECT", 22, 2, 120, 2), ("REJECT", 23, 1, 60, 2)]
    assert recs[0].direction == "ingress" and t.totals[0].rejected_packets == 3
    assert t.tick([], wall) == []


def record(eni=0, n=1) -> Record:
    return Record(eni=eni, srcaddr="10.0.1.4", dstaddr="10.0.1.10", srcport=1234, dstport=80,
                  protocol=6, packets=n, bytes=60 * n, start=1, end=2, action="ACCEPT",
                  direction="egress")


def test_writer_one_file_per_eni_with_header_and_mode_0600(tmp_path):
    w = FlowLogWriter(tmp_path / "logs")
    assert w.write([record(0, 1), record(1, 2), record(0, 3)]) == 3
    w.close()
    assert stat.S_IMODE((tmp_path / "logs").stat().st_mode) == 0o700
    p0 = tmp_path / "logs" / "eni-00000000000000000.log"
    assert stat.S_IMODE(p0.stat().st_mode) == 0o600
    assert p0.read_text().splitlines()[0] == " ".join(DEFAULT_FIELDS)
    assert [r["packets"] for r in parse(p0)] == ["1", "3"]
    assert [r["packets"] for r in parse(tmp_path / "logs" / "eni-00000000000000001.log")] == ["2"]
    # Reopening appends below the existing header.
    w = FlowLogWriter(tmp_path / "logs")
    w.write([record(0, 4)])
    w.close()
    assert [r["packets"] for r in parse(p0)] == ["1", "3", "4"]


def test_writer_rotates_by_size_and_keeps_n(tmp_path):
    w = FlowLogWriter(tmp_path, max_bytes=1024, keep=2)
    line = len(format_record(record())) + 1
    header = len(" ".join(DEFAULT_FIELDS)) + 1
    per_file = (1024 - header) // line
    w.write([record(n=i) for i in range(per_file * 4 + 1)])
    w.close()
    base = tmp_path / "eni-00000000000000000.log"
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [base.name, base.name + ".1", base.name + ".2"]
    for p in tmp_path.iterdir():
        assert p.stat().st_size <= 1024 and stat.S_IMODE(p.stat().st_mode) == 0o600
        assert p.read_text().startswith(" ".join(DEFAULT_FIELDS) + "\n")
    # The newest records are in the live file, the older in .1, then .2; the oldest are gone.
    last = [int(r["packets"]) for r in parse(base)]
    older = [int(r["packets"]) for r in parse(str(base) + ".1")]
    assert last[-1] == per_file * 4 and older[-1] == last[0] - 1
    assert len(parse(str(base) + ".2")) == per_file


def test_wall_clock_maps_data_plane_time():
    w = flowlog.wall_clock(50_000, wall_now_s=1000.0)
    assert w(50_000) == 1000 and w(40_000) == 990
