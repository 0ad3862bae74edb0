"""Flow logs: record formatting (default and custom formats), aggregation per interval from
connection listings, expiry and reject records, files with rotation and modes."""

from __future__ import annotations

import stat
from dataclasses import replace

import pytest

from hyperplane import flowlog
from hyperplane.connection import Connection
from hyperplane.flowlog import (DEFAULT_FIELDS, Context, FlowLogOptions, FlowLogWriter,
                                FlowTracker, Record, Rejected, format_record, parse)
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


def test_options_read_defensively_and_name_bad_fields():
    assert flowlog.options({}) == FlowLogOptions()
    o = flowlog.options({"hyperplane": {"flow_logs": {
        "interval": 1, "format": "${version} ${srcaddr} ${pkt-srcaddr}", "keep": 2}}})
    assert o.interval_s == 1.0 and o.fields == ("version", "srcaddr", "pkt-srcaddr") and o.keep == 2
    with pytest.raises(ValueError, match="bogus"):
        flowlog.options({"hyperplane": {"flow_logs": {"format": ["version", "bogus"]}}})
    with pytest.raises(ValueError, match="interval"):
        FlowLogOptions(interval_s=0)


def test_an_interval_logs_the_traffic_of_that_interval_both_ways():
    t = FlowTracker(1000)
    c = conn(packets_out=3, packets_in=2, bytes_out=180, bytes_in=120, start_s=100,
             last_seen_ms=100_700)
    recs = t.tick([c], 101_000, wall)
    assert [(r.direction, r.packets, r.bytes) for r in recs] == [("egress", 3, 180),
                                                                 ("ingress", 2, 120)]
    out, back = recs
    assert (out.srcaddr, out.srcport, out.dstaddr, out.dstport) == ("10.0.1.4", 1234, "10.0.1.10", 80)
    assert (back.srcaddr, back.srcport, back.dstaddr, back.dstport) == ("10.0.1.10", 80, "10.0.1.4", 1234)
    assert out.pkt_srcaddr == "10.200.0.11" and back.pkt_dstaddr == "10.200.0.11"
    assert out.tcp_flags & flowlog.TCP_SYN and back.tcp_flags == flowlog.TCP_SYN_ACK
    assert (out.start, out.end) == (WALL0 + 100, WALL0 + 100)     # first and last packet
    # Next interval: only the new traffic, start not before the interval began.
    c2 = replace(c, packets_out=5, bytes_out=300, last_seen_ms=102_900)
    recs = t.tick([c2], 103_000, wall)
    assert [(r.direction, r.packets, r.bytes) for r in recs] == [("egress", 2, 120)]
    assert (recs[0].start, recs[0].end) == (WALL0 + 101, WALL0 + 102)
    assert recs[0].tcp_flags == 0
    # A quiet interval: no record.
    assert t.tick([c2], 104_000, wall) == []


def test_a_restarted_data_plane_logs_only_the_traffic_since_the_previous_one():
    """After a restart (connections kept in the state file) the new tracker resumes from the
    connections' counters: no second SYN record, no traffic counted twice."""
    c = conn(packets_out=3, packets_in=2, bytes_out=180, bytes_in=120, start_s=100,
             last_seen_ms=100_700)
    t = FlowTracker(1000)
    t.resume([c], 101_000)
    assert t.tick([c], 102_000, wall) == []
    c2 = replace(c, packets_out=4, bytes_out=240, last_seen_ms=102_500)
    recs = t.tick([c2], 103_000, wall)
    assert [(r.direction, r.packets, r.bytes, r.tcp_flags) for r in recs] == [
        ("egress", 1, 60, 0)]


def test_expiry_gives_the_last_record_at_the_next_tick_ending_at_the_last_packet():
    t = FlowTracker(1000)
    c = conn(packets_out=1, bytes_out=60, last_seen_ms=100_000)
    assert len(t.tick([c], 100_500, wall)) == 1
    gone = replace(c, id=-1, packets_out=4, bytes_out=240, packets_in=1, bytes_in=60,
                   last_seen_ms=101_200)
    t.expired([gone], wall)          # found expired much later than its last packet
    recs = t.tick([], 500_000, wall)
    assert [(r.direction, r.packets, r.bytes, r.end) for r in recs] == [
        ("egress", 3, 180, WALL0 + 101), ("ingress", 1, 60, WALL0 + 101)]
    assert t.seen == {} and t.lost == 0
    tot = t.totals[0]
    assert (tot.packets_out, tot.packets_in, tot.bytes_out, tot.bytes_in) == (4, 1, 240, 60)
    assert tot.idle_timeouts == 1 and tot.attempts == {"tcp": 1} and tot.established == {"tcp": 1}


def test_totals_count_connections_once_and_active_per_listing():
    t = FlowTracker(1000)
    a = conn(packets_out=1, bytes_out=60, flags=0, state="SYN_SENT")
    b = conn(proto=17, sport=5353, nat_port=999, state="UDP_FIRST", flags=0, packets_out=1,
             bytes_out=40, eni=1)
    t.tick([a, b], 101_000, wall)
    t.tick([replace(a, flags=F_ASSURED, state="ESTABLISHED"), b], 102_000, wall)
    assert t.totals[0].attempts == {"tcp": 1} and t.totals[0].established == {"tcp": 1}
    assert t.totals[1].attempts == {"udp": 1} and t.totals[1].established == {}
    assert t.totals[0].active == {"tcp": 1} and t.totals[1].active == {"udp": 1}
    assert t.published[1]["attempts"] == {"udp": 1}     # the copy other threads read
    t.expired([replace(b, id=-1, packets_out=2, bytes_out=80)], wall)
    assert t.totals[1].packets_out == 2 and t.published[1]["packets_out"] == 1
    t.tick([], 103_000, wall)       # a is gone without an expiry record (e.g. flushed)
    assert t.lost == 1 and t.totals[0].active == {} and t.totals[1].active == {}


def test_reused_slot_is_a_new_connection():
    t = FlowTracker(1000)
    t.tick([conn(packets_out=5, bytes_out=300)], 101_000, wall)
    t.tick([conn(packets_out=1, bytes_out=60, sport=40001, start_s=101)], 102_000, wall)
    assert t.totals[0].attempts == {"tcp": 2} and t.totals[0].packets_out == 6


def test_rejects_aggregate_per_tuple_and_interval():
    t = FlowTracker(1000)
    syn = Rejected(eni=0, direction="ingress", family=4, proto=6, src="10.0.1.10",
                   dst="10.0.1.4", sport=5555, dport=22, length=60, time_ms=100_100,
                   tcp_flags=flowlog.TCP_SYN)
    t.rejected([syn, syn._replace(time_ms=100_900), syn._replace(dport=23)])
    recs = sorted(t.tick([], 101_000, wall), key=lambda r: r.dstport)
    assert [(r.action, r.dstport, r.packets, r.bytes, r.tcp_flags) for r in recs] == [
        ("REJECT", 22, 2, 120, 2), ("REJECT", 23, 1, 60, 2)]
    assert recs[0].direction == "ingress" and t.totals[0].rejected_packets == 3
    assert t.tick([], 102_000, wall) == []


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
