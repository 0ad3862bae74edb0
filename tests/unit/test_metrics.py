"""Prometheus text: valid for prometheus_client's parser, with the documented metrics; punts
apart from drops; the endpoint serves it."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hyperplane import metrics
from hyperplane.metrics import render, split_reasons

STATS = {
    "nat": {"fwd_out_packets": 10, "conn_created": 3, "drop.PORTS_EXHAUSTED": 11,
            "drop.IN_NO_MATCH_UDP": 2, "drop.ICMP": 0},
    "dataplane": {"forwarded": 9, "drop.NEIGH_MISS": 1, "drop.TX_FULL": 4},
    "slowpath": {"arp_replied": 2},
    "connections": 3, "capacity": 1024,
    "enis": [{"id": 0, "eni_id": "eni-0123456789abcdef0", "status": "Active",
              "ports": {"tcp4": {"size": 100, "free": 90, "in_use": 8, "quarantined": 2},
                        "udp4": {"size": 100, "free": 100, "in_use": 0, "quarantined": 0}}},
             {"id": 1, "status": "Pending", "ports": {}}],
    "ports": [{"index": 0, "ifname": 'we"ird\\', "role": "inside", "rx_kernel_drops": 5,
               "tx_full": 0, "tx_direct": 9}],
    "per_eni": {"0": {"packets_out": 7, "packets_in": 6, "bytes_out": 700, "bytes_in": 600,
                      "attempts": {"tcp": 2, "udp": 1}, "established": {"tcp": 1},
                      "idle_timeouts": 1, "active": {"tcp": 1}, "rejected_packets": 0,
                      "port_errors": 3, "drops": 4, "rst_sent": 2,
                      "drops_by_reason": {"IN_NO_MATCH_UDP": 3, "SG_DENIED": 1}}},
    "secgroups": [{"group": "a|sg-x", "rules": [[6, 443, 443, 4, "0.0.0.0", 0]], "denied": 5,
                   "rule_hits": [9]},
                  {"group": "b|", "rules": None, "denied": 0, "rule_hits": None}],
    "flow_log": {"write_errors": 0},
}


def samples(text: str) -> dict:
    """{(sample name, frozenset(labels)): value} and the families' types."""
    out, types = {}, {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out, types


def test_exposition_parses_and_has_the_documented_metrics():
    text = render(STATS)
    got, types = samples(text)
    eni = ("eni", "eni-0123456789abcdef0")
    assert got[("hyperplane_eni_active_connection_count", frozenset({eni, ("protocol", "tcp")}))] == 1
    assert got[("hyperplane_eni_connection_attempt_count_total",
                frozenset({eni, ("protocol", "udp")}))] == 1
    assert got[("hyperplane_eni_connection_established_count_total",
                frozenset({eni, ("protocol", "tcp")}))] == 1
    assert got[("hyperplane_eni_idle_timeout_count_total", frozenset({eni}))] == 1
    assert got[("hyperplane_eni_idle_timeout_rst_count_total", frozenset({eni}))] == 2
    assert got[("hyperplane_eni_error_port_allocation_total", frozenset({eni}))] == 3
    assert got[("hyperplane_eni_packets_drop_count_total", frozenset({eni}))] == 4
    for reason, n in (("IN_NO_MATCH_UDP", 3), ("SG_DENIED", 1)):
        assert got[("hyperplane_eni_packets_drop_by_reason_total",
                    frozenset({eni, ("reason", reason)}))] == n
    assert got[("hyperplane_security_group_denied_total", frozenset({("group", "a|sg-x")}))] == 5
    assert got[("hyperplane_security_group_denied_total", frozenset({("group", "b|")}))] == 0
    assert got[("hyperplane_security_group_rule_hits_total",
                frozenset({("group", "a|sg-x"), ("rule", "0")}))] == 9
    for name, v in (("bytes_out_to_destination", 700), ("bytes_in_from_source", 700),
                    ("bytes_in_from_destination", 600), ("bytes_out_to_source", 600),
                    ("packets_out_to_destination", 7), ("packets_in_from_destination", 6)):
        assert got[(f"hyperplane_eni_{name}_total", frozenset({eni}))] == v, name
    assert types["hyperplane_eni_active_connection_count"] == "gauge"
    assert types["hyperplane_eni_bytes_out_to_destination"] == "counter"
    # Punts are not drops.
    assert got[("hyperplane_punts_total", frozenset({("reason", "PORTS_EXHAUSTED")}))] == 11
    assert got[("hyperplane_punts_total", frozenset({("reason", "NEIGH_MISS")}))] == 1
    assert ("hyperplane_drops_total", frozenset({("reason", "PORTS_EXHAUSTED")})) not in got
    assert got[("hyperplane_drops_total", frozenset({("reason", "TX_FULL")}))] == 4
    assert got[("hyperplane_packets_drop_count_total", frozenset())] == 6
    assert got[("hyperplane_error_port_allocation_total", frozenset())] == 11
    # Ring drops (label values escaped), pools, ENIs by state.
    assert got[("hyperplane_ring_rx_kernel_drops_total",
                frozenset({("port", "0"), ("ifname", 'we"ird\\'), ("role", "inside")}))] == 5
    assert got[("hyperplane_ring_tx_direct_total",
                frozenset({("port", "0"), ("ifname", 'we"ird\\'), ("role", "inside")}))] == 9
    assert got[("hyperplane_pool_ports", frozenset({eni, ("family", "ipv4"), ("protocol", "tcp"),
                                                    ("use", "quarantined")}))] == 2
    assert got[("hyperplane_pool_size", frozenset({eni, ("family", "ipv4"), ("protocol", "udp")}))] == 100
    assert got[("hyperplane_enis", frozenset({("state", "Active")}))] == 1
    assert got[("hyperplane_enis", frozenset({("state", "Pending")}))] == 1
    assert got[("hyperplane_enis", frozenset({("state", "Deleted")}))] == 0
    assert got[("hyperplane_nat_fwd_out_packets_total", frozenset())] == 10
    # An ENI without connections yet has every metric at zero.
    quiet = ("eni", "eni-00000000000000001")
    assert got[("hyperplane_eni_bytes_in_from_destination_total", frozenset({quiet}))] == 0
    assert got[("hyperplane_eni_active_connection_count",
                frozenset({quiet, ("protocol", "udp")}))] == 0
    assert got[("hyperplane_eni_active_connection_count", frozenset({eni, ("protocol", "udp")}))] == 0


def test_every_family_has_help_and_type_once():
    text = render(STATS)
    helps = [l.split()[2] for l in text.splitlines() if l.startswith("# HELP")]
    types = [l.split()[2] for l in text.splitlines() if l.startswith("# TYPE")]
    assert helps == types and len(set(types)) == len(types)
    assert text.endswith("\n")


def test_an_empty_answer_still_renders():
    got, _ = samples(render({}))
    assert got[("hyperplane_connections", frozenset())] == 0


def test_split_reasons_renames_punts_only():
    assert split_reasons({"drop.PORTS_EXHAUSTED": 1, "drop.TX_FULL": 2, "forwarded": 3}) == {
        "punt.PORTS_EXHAUSTED": 1, "drop.TX_FULL": 2, "forwarded": 3}


def test_endpoint_serves_the_text_and_survives_a_failed_scrape():
    calls = []

    def fetch():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("daemon busy")
        return render(STATS)

    srv = metrics.MetricsServer(fetch, port=0).start()
    try:
        url = f"http://127.0.0.1:{srv.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            samples(r.read().decode())
        with pytest.raises(urllib.error.HTTPError, match="503"):
            urllib.request.urlopen(url, timeout=5)
        with urllib.request.urlopen(url, timeout=5) as r:
            assert r.status == 200
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/other", timeout=5)
    finally:
        srv.stop()


def test_stats_table_idle_timeouts_and_drops_per_eni():
    from hyperplane.render import stats_table
    nat = {**STATS["nat"], "conn_established": 1, "conn_expired": 9, "fwd_out_bytes": 0,
           "fwd_in_packets": 0, "fwd_in_bytes": 0}
    lines = stats_table({**STATS, "nat": nat}).splitlines()
    # IdleTimeoutCount is the ENIs' idle timeouts, not every expiry.
    assert "  IdleTimeoutCount             1" in lines
    at = lines.index("drops by ENI and reason (frames dropped on its port, its SG denials)")
    assert [line.split() for line in lines[at + 1:at + 3]] == [["0", "IN_NO_MATCH_UDP", "3"],
                                                              ["0", "SG_DENIED", "1"]]
