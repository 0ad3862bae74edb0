"""`hyperplane trace`: the steps of five packets, and the model and the C core agreeing on
every verdict and byte (a disagreement is an error)."""

from pathlib import Path

import pytest

pytest.importorskip("hyperplane._core")

from hyperplane.config import default_config  # noqa: E402
from hyperplane.lab.topology import build_topology  # noqa: E402
from hyperplane.model import packet as model_packet  # noqa: E402
from hyperplane.teach import packets, trace  # noqa: E402
from hyperplane.vocab import DROP, FORWARD  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
STATE = build_topology(default_config()).state()


def traced(**kw):
    outcomes = trace.run(STATE, packets.describe(STATE, **kw))
    last = outcomes[-1]
    return last, {s.name: s for s in last.steps}, trace.render(STATE, outcomes)


def test_outbound_syn():
    last, steps, text = traced(src="api", dst="web:8080", flags="syn")
    assert last.model == last.core and last.model[:2] == (FORWARD, 0)
    assert last.model_frame == last.core_frame != last.packet.frame
    assert list(steps) == ["parse", "lookup", "source", "security group", "port", "window",
                           "state"]
    assert "miss" in steps["lookup"].lines[-1]
    assert "rule 0 matches" in steps["security group"].lines[-1]
    assert "drawn at random" in steps["port"].lines[0]
    assert "in window" == steps["window"].lines[-1]
    assert "stays SYN_SENT" in steps["state"].lines[0]
    assert steps["lookup"].site.startswith("hyperplane/model/nat.py:")
    # The rewrite's arithmetic: RFC 1624 gives exactly the checksums the frame carries.
    assert text.count("(as written)") == 2 and "DIFFERS" not in text
    assert "source: 10.200.0.11:40000 -> 10.0.1.4:" in text
    assert "C core FORWARD NONE, port 1, connection 0, the same bytes" in text


def test_reply_syn_ack():
    last, steps, text = traced(src="web:8080", dst="api", flags="syn-ack", conn="syn-sent")
    assert last.model == last.core and last.model[0] == FORWARD
    assert "hit: connection 0, SYN_SENT" in steps["lookup"].lines[-1]
    assert "reply tuple" in steps["lookup"].lines[1]
    assert "SYN_SENT -> SYN_RECV" in steps["state"].lines[0]
    assert "destination: 10.0.1.4:" in text and "-> 10.200.0.11:40000" in text
    assert text.startswith("setup: api:40000 -> web:8080 tcp S: FORWARD")


def test_unsolicited_inbound_syn():
    last, steps, text = traced(src="web", dst="api:22", flags="syn")
    assert last.model == last.core == (DROP, trace.R["IN_UNSOLICITED_SYN"], 0, -1)
    assert "miss" in steps["lookup"].lines[-1]
    assert "decided at hyperplane/model/nat.py:" in text
    assert last.core_frame == last.packet.frame        # a dropped frame is left alone


def test_blind_rst_changes_nothing():
    last, steps, text = traced(src="web:8080", dst="api", flags="rst", seq=705000,
                               conn="established")
    assert last.model == last.core == (DROP, trace.R["TCP_BAD_RST"], 0, -1)
    assert "expected (700001)" in steps["rst"].lines[0]
    assert "blind RST" in steps["rst"].lines[1]
    exact, steps, _ = traced(src="web:8080", dst="api", flags="rst", conn="established")
    assert exact.model[0] == FORWARD and "acceptable: the connection closes" in steps["rst"].lines[1]


@pytest.mark.parametrize("how,reason", [("ip-checksum", "IPV4_BAD_CHECKSUM"),
                                        ("truncated", "IPV4_TRUNCATED"),
                                        ("tcp-doff", "TCP_BAD_DOFF"),
                                        ("bad-flags", "TCP_BAD_FLAGS")])
def test_malformed_frame(how, reason):
    last, steps, text = traced(src="api", dst="web:8080", flags="syn", malformed=how)
    assert last.model == last.core and trace.REASONS[last.model[1]] == reason
    assert f"{reason}: decided at hyperplane/model/packet.py:" in text or \
        f"{reason}: decided at hyperplane/model/tcp.py:" in text or \
        f"{reason}: decided at hyperplane/model/nat.py:" in text
    if how == "ip-checksum":
        assert "a correct one to 0xffff" in text


def test_udp_ipv6_and_a_timeout():
    last, steps, _ = traced(src="api", dst="web:7", proto="udp", ipv6=True)
    assert last.model == last.core and last.model[0] == FORWARD
    assert "rule 1 matches" in steps["security group"].lines[-1]
    late, steps, _ = traced(src="api", dst="web:8080", flags="ack", conn="established", wait_s=400)
    assert "expired" in steps["lookup"].lines[-1]
    assert late.model == late.core and trace.REASONS[late.model[1]] == "TCP_NOT_SYN"


def test_a_disagreement_is_an_error(monkeypatch):
    """A model that rewrote one byte differently from the C core makes the trace fail."""
    real = model_packet.rewrite

    def off_by_one(frame, pkt, direction, addr, port, dec_ttl=1):
        real(frame, pkt, direction, addr, port + 1, dec_ttl)
    monkeypatch.setattr("hyperplane.model.nat.rewrite", off_by_one)
    with pytest.raises(trace.TraceMismatch, match="disagree"):
        trace.run(STATE, packets.describe(STATE, src="api", dst="web:8080"))


def test_pcap_packets_replay(tmp_path):
    from scapy.utils import wrpcap
    from scapy.layers.l2 import Ether
    plan = packets.describe(STATE, src="web:8080", dst="api", flags="syn-ack", conn="syn-sent")
    path = tmp_path / "two.pcap"
    wrpcap(str(path), [Ether(p.frame) for p in plan])
    last = trace.run(STATE, packets.from_pcap(STATE, str(path)))[-1]
    assert last.model[0] == FORWARD and last.packet.direction == 1


def test_sections_exist():
    text = (ROOT / "docs" / "semantics.md").read_text()
    for heading in set(trace.SECTIONS.values()):
        assert f"# {heading}" in text, heading


def test_untraced_model_keeps_its_no_op_tracer():
    from hyperplane.model import Nat
    from hyperplane.model.tracing import no_trace
    assert Nat().trace is no_trace
