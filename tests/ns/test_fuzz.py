"""Frame fuzzer: malformed frames (scapy-built, truncated, with bogus lengths and odd header
chains) and random bytes, 100,000 into each side of a running data plane. It must keep running,
count the drops by reason, and still translate real traffic afterwards."""

from __future__ import annotations

import os
import random
import socket
import time

import pytest

from test_v2n import ECHO, running_lab

FRAMES_PER_SIDE = int(os.environ.get("HP_FUZZ_FRAMES", "100000"))


def corpus(dst_mac: str, src_mac: str, src_ip: str, dst_ip: str, src6: str, dst6: str) -> list[bytes]:
    """Valid and broken frames built with scapy: every truncation, bad lengths, odd chains."""
    from scapy.all import (ARP, ICMP, IP, UDP, TCP, Ether, ICMPv6EchoRequest, ICMPv6ND_NS,
                           IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop,
                           IPv6ExtHdrRouting, IPerror, Raw, UDPerror, raw)
    eth = Ether(dst=dst_mac, src=src_mac)
    base = [
        eth / IP(src=src_ip, dst=dst_ip) / TCP(sport=40000, dport=ECHO, flags="S"),
        eth / IP(src=src_ip, dst=dst_ip) / UDP(sport=40001, dport=ECHO) / (b"x" * 20),
        eth / IPv6(src=src6, dst=dst6) / TCP(sport=40002, dport=ECHO, flags="S"),
        eth / IPv6(src=src6, dst=dst6) / UDP(sport=40003, dport=ECHO) / (b"y" * 20),
        eth / IPv6(src=src6, dst=dst6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting()
        / IPv6ExtHdrDestOpt() / UDP(sport=40004, dport=ECHO),
        eth / IPv6(src=src6, dst=dst6) / IPv6ExtHdrFragment(m=1) / UDP() / (b"z" * 40),
        eth / IP(src=src_ip, dst=dst_ip, flags="MF") / UDP() / (b"f" * 40),
        eth / IP(src=src_ip, dst=dst_ip, frag=3) / (b"g" * 40),
        eth / IP(src=src_ip, dst=dst_ip) / ICMP(type=3, code=3) / IPerror(src=dst_ip, dst=src_ip)
        / UDPerror(sport=ECHO, dport=40001),
        eth / IP(src=src_ip, dst=dst_ip) / ICMP(type=8),
        eth / IPv6(src=src6, dst=dst6) / ICMPv6EchoRequest(),
        eth / IPv6(src=src6, dst="ff02::1:ff00:1") / ICMPv6ND_NS(tgt=dst6),
        Ether(dst="ff:ff:ff:ff:ff:ff", src=src_mac) / ARP(hwsrc=src_mac, pdst=dst_ip, psrc=src_ip),
        eth / IP(src=src_ip, dst=dst_ip, proto=47) / Raw(b"gre?" * 5),
        eth / IP(src=src_ip, dst=dst_ip, ttl=1) / UDP(dport=ECHO),
    ]
    out = []
    for p in base:
        b = raw(p)
        out.append(b)
        out += [b[:n] for n in range(len(b))]                 # every truncation
    # bogus lengths and header fields
    v4 = bytearray(raw(base[1]))
    for ihl in (0, 1, 4, 15):
        f = bytearray(v4); f[14] = 0x40 | ihl; out.append(bytes(f))
    for tot in (0, 19, 21, 65535):
        f = bytearray(v4); f[16:18] = tot.to_bytes(2, "big"); out.append(bytes(f))
    f = bytearray(v4); f[14] = 0x65; out.append(bytes(f))  # version 6 in an IPv4 frame
    t4 = bytearray(raw(base[0]))
    for doff in (0, 1, 4, 15):
        f = bytearray(t4); f[46] = doff << 4; out.append(bytes(f))
    u4 = bytearray(raw(base[1]))
    for ulen in (0, 7, 9, 65535):
        f = bytearray(u4); f[38:40] = ulen.to_bytes(2, "big"); out.append(bytes(f))
    v6 = bytearray(raw(base[4]))
    for plen in (0, 1, 8, 65535):
        f = bytearray(v6); f[18:20] = plen.to_bytes(2, "big"); out.append(bytes(f))
    for hl in (200, 255):                                   # an extension header past the end
        f = bytearray(v6); f[55] = hl; out.append(bytes(f))
    loop = bytearray(raw(base[4])); loop[54] = 0            # hop-by-hop chaining to itself
    out.append(bytes(loop))
    return out


def mutants(seeds: list[bytes], n: int, rng: random.Random, dst_mac: bytes):
    """n frames: the seeds, byte flips of them, and pure random bytes behind our MAC."""
    for i in range(n):
        kind = i % 4
        if kind == 0:
            f = seeds[rng.randrange(len(seeds))]
        elif kind in (1, 2):
            f = bytearray(seeds[rng.randrange(len(seeds))])
            for _ in range(rng.randint(1, 4)):
                if len(f) > 14:
                    f[rng.randrange(14, len(f))] = rng.randrange(256)
            f = bytes(f)
        else:
            f = dst_mac + rng.randbytes(rng.randint(0, 200))
        yield f if len(f) >= 14 else f + bytes(14 - len(f))


def control_status(run):
    from hyperplane import control
    return control.request(run.prefix, "status")


def blast(ns: str, ifname: str, frames, burst: int = 64, pause: float = 0.002) -> int:
    """Sends frames from a namespace's interface, a burst at a time: many of them go to the
    Python slow path, which is slower than the wire, and a frame the ring had no room for
    would test nothing."""
    from hyperplane.lab import netns
    s = netns.socket(ns, socket.AF_PACKET, socket.SOCK_RAW, 0)
    s.bind((ifname, 0))
    sent = 0
    deadline = time.monotonic() + 120
    with s:
        for f in frames:
            while True:
                try:
                    s.send(f)
                    break
                except BlockingIOError:
                    time.sleep(0.001)
                except OSError:          # e.g. a frame too short for the device: skip it
                    break
            sent += 1
            if sent % burst == 0:
                time.sleep(pause)
            if time.monotonic() > deadline:
                break
    return sent


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("fuzz")) as r:
        yield r


def test_fuzz_both_sides_then_traffic_still_flows(run):
    st = run.state
    api, web = st.function("api"), st.host("web")
    eni = st.enis_of(api.group)[0]
    rng = random.Random(2026)
    inside_seeds = corpus(st.inside.mac, api.mac, api.ipv4, web.ipv4, api.ipv6, web.ipv6)
    outside_seeds = corpus(eni.mac, web.mac, web.ipv4, eni.ipv4, web.ipv6, eni.ipv6)
    before = run.stats()
    mac_in = bytes.fromhex(st.inside.mac.replace(":", ""))
    mac_out = bytes.fromhex(eni.mac.replace(":", ""))
    # From the functions' bridge itself: the lab's port guard (portguard.py) would stop most
    # mutants at api's port, and the data plane's parser is what is under test here.
    from hyperplane.lab.names import if_lambda_bridge, ns_lambda
    sent_in = blast(ns_lambda(run.prefix), if_lambda_bridge(run.prefix),
                    mutants(inside_seeds, FRAMES_PER_SIDE, rng, mac_in))
    sent_out = blast(web.ns, web.ifname, mutants(outside_seeds, FRAMES_PER_SIDE, rng, mac_out))
    assert sent_in == FRAMES_PER_SIDE and sent_out == FRAMES_PER_SIDE
    time.sleep(1.0)
    after = run.stats()                       # still answering
    rx = after["dataplane"]["rx_frames"] - before["dataplane"]["rx_frames"]
    ports = control_status(run)["ports"]
    lost = sum(p["rx_kernel_drops"] for p in ports)
    # The bridges drop what no switch forwards (a multicast or zero source MAC, frames
    # shorter than a header); everything else must reach the data plane.
    assert rx > FRAMES_PER_SIDE, f"the data plane saw only {rx} frames ({lost} lost in rings)"
    drops = {k: after["nat"][k] - before["nat"][k] for k in after["nat"] if k.startswith("drop.")}
    # (Frames shorter than an Ethernet header never get here: the kernel refuses them. The
    # unit tests feed those to the parser directly.)
    for reason in ("IPV4_TRUNCATED", "IPV4_BAD_IHL", "IPV4_BAD_TOTAL_LEN",
                   "IPV6_TRUNCATED", "IPV6_EXT_TRUNCATED", "L4_TRUNCATED", "TCP_BAD_DOFF",
                   "UDP_BAD_LEN", "IPV4_BAD_CHECKSUM"):
        assert drops["drop." + reason] > 0, f"no {reason} drops counted: {drops}"
    # ... and it still translates correctly.
    for proto in ("tcp", "udp"):
        for dst in (web.ipv4, web.ipv6):
            r = run.echo("api", proto, dst, text="after the storm")
            assert r.returncode == 0 and r.stdout.strip() == "after the storm", (proto, dst, r.stderr)
