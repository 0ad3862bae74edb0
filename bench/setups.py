"""Set-ups shared by the benchmarks: NATs filled with known flows, packed frames."""

import os
import random
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import framegen  # noqa: E402

from hyperplane import model, vocab  # noqa: E402
from hyperplane._core import Nat  # noqa: E402

FRAME = 64                     # bytes per frame in the packed benchmarks
SERVER = "10.9.0.10"             # outside the ENI addresses: no frame hairpins


def function_addr(i):
    return f"10.200.{i // 250}.{i % 250 + 1}"


def udp64(src, sport, dst=SERVER, dport=9000):
    """A 64-byte UDP frame (14 Ethernet + 20 IPv4 + 8 UDP + 22 payload)."""
    return framegen.udp(src, dst, sport, dport, payload=bytes(FRAME - 42))


def make_nat(cls, n_sources, capacity, **kw):
    """A NAT with one group, ENI and source per function, so each function owns 65,000 ports."""
    nat = cls(capacity=capacity, port_seed=7, **kw)
    for i in range(n_sources):
        eni = nat.add_eni(f"10.0.{1 + i // 250}.{4 + i % 250}")
        g = nat.add_group()
        nat.group_add_eni(g, eni)
        nat.add_source(function_addr(i), g)
    return nat


def packed_flows(n, per_source=60000, first_sport=1024):
    """n UDP flows spread over ceil(n / per_source) functions, packed FRAME bytes apart."""
    sources = (n + per_source - 1) // per_source
    blob = bytearray(n * FRAME)
    i = 0
    for s in range(sources):
        template = udp64(function_addr(s), first_sport)
        for k in range(min(per_source, n - i)):
            off = i * FRAME
            blob[off:off + FRAME] = template
            struct.pack_into("!H", blob, off + 34, first_sport + k)   # UDP source port
            struct.pack_into("!H", blob, off + 40, 0)                 # no UDP checksum
            i += 1
    return bytes(blob), sources


def filled_c_nat(n):
    """A C NAT holding n live UDP connections, and the packed frames that made them."""
    frames, sources = packed_flows(n)
    nat = make_nat(Nat, sources, capacity=max(n, 1024))
    work = bytearray(len(frames))
    made = nat.translate_packed(frames, work, FRAME, vocab.OUT, 1000)
    assert made == n, {k: v for k, v in nat.counters().items() if v}
    return nat, frames


def filled_tcp_nat(n):
    """A C NAT holding n ESTABLISHED TCP connections of one function (its MAC bound, as the
    daemon binds it), and the packed frames of one ACK with 10 bytes of data on each: every
    frame passes the window check and the MAC check, and sending them again keeps them so."""
    nat = make_nat(Nat, 0, capacity=max(n, 1024))
    eni = nat.add_eni("10.0.1.4")
    g = nat.add_group()
    nat.group_add_eni(g, eni)
    src = function_addr(0)
    nat.add_source(src, g, mac=framegen.ETH_SRC.hex(":"))
    acks = []
    for i in range(n):
        sport = 1024 + i
        syn = framegen.tcp(src, SERVER, sport, 443, "S", seq=1000)
        assert nat.translate([syn], vocab.OUT, 0)[0][0] == vocab.FORWARD
        f = framegen.fields(syn)
        synack = framegen.tcp(SERVER, f["src"], 443, f["sport"], "SA", seq=5000, ack=1001)
        assert nat.translate([synack], vocab.IN, 0)[0][0] == vocab.FORWARD
        acks.append(framegen.tcp(src, SERVER, sport, 443, "A", seq=1001, ack=5001,
                                 payload=bytes(10)))
    size = max(len(f) for f in acks)           # padding: the IP length keeps the real size
    return nat, b"".join(bytes(f) + bytes(size - len(f)) for f in acks), size


def shuffled_keys(frames, n):
    """Packed 40-byte original-direction keys of the n flows, in random order."""
    from hyperplane._core import pack_key
    order = list(range(n))
    random.Random(1).shuffle(order)
    out = bytearray()
    for i in order:
        f = frames[i * FRAME:(i + 1) * FRAME]
        src = ".".join(str(b) for b in f[26:30])
        sport = struct.unpack_from("!H", f, 34)[0]
        out += pack_key(src, SERVER, sport, 9000, 17)
    return bytes(out)


def shuffled_frames(frames, seed):
    """The packed frames in a random order (one per seed)."""
    n = len(frames) // FRAME
    order = list(range(n))
    random.Random(seed).shuffle(order)
    out = bytearray(len(frames))
    for j, i in enumerate(order):
        out[j * FRAME:(j + 1) * FRAME] = frames[i * FRAME:(i + 1) * FRAME]
    return bytes(out)


def per_op(benchmark, n, label="ns per operation"):
    """Records the median time per operation in nanoseconds beside pytest-benchmark's figures
    (conftest.py prints them at the end)."""
    ns = benchmark.stats.stats.median / n * 1e9
    benchmark.extra_info[label] = round(ns, 1)
    return ns


def model_nat_with_flows(n):
    nat = make_nat(model.Nat, 1, capacity=max(n, 1024))
    frames = [udp64(function_addr(0), 1024 + k) for k in range(n)]
    nat.translate(frames, vocab.OUT, 1000)
    return nat
