"""The functions' port guard ruleset (no root: the text only; tests/ns/test_tcp_proof.py
shows it working)."""

from hyperplane.lab import portguard
from hyperplane.lab.state import FunctionInfo


def fn(name, i, ipv6):
    return FunctionInfo(name=name, ns=f"x-{name}", ifname="eth0", mac=f"02:00:00:00:03:0{i}",
                        ipv4=f"10.0.0.{10 + i}", ipv6=ipv6, ipv6_allowed=bool(ipv6), group="g",
                        subnets=(), security_groups=(), gateway4="10.0.0.1", gateway6=None)


def test_link_local_is_the_kernels_eui64():
    assert portguard.link_local("02:00:00:00:03:00") == "fe80::ff:fe00:300"
    assert portguard.link_local("00:11:22:33:44:55") == "fe80::211:22ff:fe33:4455"


def test_each_port_jumps_to_its_own_chain_and_every_claim_is_pinned():
    text = portguard.ruleset("t1", (fn("api", 0, "fd00::a"), fn("worker", 1, None)))
    assert text.startswith("table bridge hp_t1_portguard {")
    assert '"t1-f0" : jump fn0, "t1-f1" : jump fn1' in text
    api = text[text.index("chain fn0"):text.index("chain fn1")]
    assert "arp saddr ether != 02:00:00:00:03:00" in api
    assert "arp saddr ip != 10.0.0.10" in api
    assert "ip6 saddr != { fe80::ff:fe00:300, fd00::a }" in api
    # NA targets: only api's own two addresses, with api's MAC in the option
    assert api.count("nd-neighbor-advert @th,64,128 0x") == 4
    assert "0x0201020000000300 accept" in api
    assert api.rstrip().endswith("counter name drops_fn0 drop\n  }".rstrip())


def test_no_functions_no_dispatch():
    assert "vmap" not in portguard.ruleset("t1", ())
