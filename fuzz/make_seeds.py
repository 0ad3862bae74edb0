"""Writes the seed corpora of the fuzz targets from the frames the tests use
(tests/framegen.py): well-formed TCP/UDP frames of both families, with and without virtio-net
headers (partial checksums, GSO), IPv6 extension headers and options, every malformed kind,
and short op programs for the sequence target. See fuzz_translate.c / fuzz_ops.c for the
input formats.

    python3 fuzz/make_seeds.py OUT_DIR     (writes OUT_DIR/translate, OUT_DIR/ops and OUT_DIR/state)
"""

import hashlib
import os
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import framegen as fg  # noqa: E402

SRC4, SRC6 = "10.200.0.11", "fd00:200::11"
DST4, DST6 = "10.0.9.9", "fd00:9::9"
FIX, AIM = 1, 2


def frames():
    """(frame, vnet) pairs."""
    for src, dst in ((SRC4, DST4), (SRC6, DST6)):
        yield fg.tcp(src, dst, 4000, 80, "S"), False
        yield fg.tcp(src, dst, 4000, 80, "A", payload=b"x" * 40), False
        yield fg.tcp(src, dst, 4000, 80, "FA"), False
        yield fg.tcp(src, dst, 4000, 80, "R"), False
        yield fg.tcp(src, dst, 4000, 80, "S", tcp_options=b"\x02\x04\x05\xb4"), False
        yield fg.tcp(src, dst, 4000, 80, "S", tcp_options=b"\x02\x04\x05\xb4\x04\x02\x01\x01\x03\x03\x07\x01"), False
        yield fg.tcp(src, dst, 4000, 80, "A", tcp_options=b"\x01\x01\x05\x0a" + bytes(range(8))), False
        yield fg.udp(src, dst, 4001, 53, payload=b"query"), False
        yield fg.udp(src, dst, 4001, 53, payload=b"q", ttl=2), False
        yield fg.tcp(src, dst, 4000, 80, "S", vnet=True), True
        yield fg.tcp(src, dst, 4000, 80, "A", payload=b"y" * 100, needs_csum=True), True
        yield fg.udp(src, dst, 4001, 53, payload=b"z" * 30, needs_csum=True), True
        gso = fg.GSO_TCPV4 if src == SRC4 else fg.GSO_TCPV6
        yield fg.tcp(src, dst, 4000, 80, "A", payload=bytes(3000), needs_csum=True,
                     gso_type=gso, gso_size=1448), True
        yield fg.udp(src, dst, 4001, 53, payload=bytes(2000), needs_csum=True,
                     gso_type=fg.GSO_UDP_L4, gso_size=1000), True
    yield fg.udp(SRC4, DST4, 4001, 53, payload=b"n", zero_csum=True), False
    yield fg.tcp(SRC4, DST4, 4000, 80, "S", ip_options=b"\x01\x01\x01\x00"), False
    yield fg.udp(SRC6, DST6, 4001, 53, ext=[0, 60, 43]), False
    yield fg.tcp(SRC6, DST6, 4000, 80, "S", ext=[51]), False
    yield fg.udp(SRC6, DST6, 4001, 53, ext=[44]), False
    for kind in fg.MALFORMED_KINDS:
        yield fg.malformed(kind)


def record(flags, frame):
    return bytes([flags]) + struct.pack("!H", len(frame)) + bytes(frame)


def translate_seeds():
    for frame, vnet in frames():
        cfg = (4 if vnet else 0)
        for variant in range(3):
            yield bytes([cfg | variant, 0]) + record(0, frame)             # OUT, as built
        yield bytes([cfg, 1 | 8]) + record(FIX | AIM, frame)               # IN, at a connection
        yield bytes([cfg | 0x70, 0]) + record(FIX | AIM | 4, frame)        # OUT, later clock
    syn = fg.tcp(SRC4, DST4, 5555, 80, "S")
    yield bytes([0, 0]) + record(0, syn) + record(0, syn) + record(FIX | AIM, syn)
    ack = fg.tcp(SRC4, DST4, 4000, 80, "A")
    yield bytes([0, 1 | 8]) + b"".join(record(FIX | AIM | (i << 2), ack) for i in range(4))


def out(a, b, c, d=0, e=0):
    """Op 0: an OUT frame (fuzz_ops.c out_spec)."""
    return bytes([0, a, b, c, d, e])


def reply(sel, flags, m=0, e=0):
    """Op 1: an IN frame for the sel-th live connection (fuzz_ops.c in_spec)."""
    return bytes([1, sel, flags, m, e])


TICK, EXPIRE, DELETE, ADD_ENI, LOOKUP = 3, 4, 5, 7, 8


def ops_seeds():
    S, A, F, R = fg.SYN, fg.ACK, fg.FIN, fg.RST
    # A new TCP connection (10.200.0.11:4001 -> 10.0.9.9:80, id 6 after the 6 set up) through
    # its handshake, data and close, then time passes and everything expires.
    conn = 0x01
    life = (out(0, conn, S, 0, 0x04) + reply(6, S | A, 0, 0x04) + out(0, conn, A, 4, 0x08)
            + reply(6, A, 0, 0)
            + out(0, conn, F | A) + reply(6, F | A) + out(0, conn, A)
            + bytes([TICK, 13, EXPIRE, 0x0F, LOOKUP, 0]))
    udp = out(0x10, 0x01, 0) + reply(6, 0) + bytes([TICK, 9, EXPIRE, 0x1F, DELETE, 0, LOOKUP, 1])
    batch = bytes([6, 7]) + bytes([0x10, 0x20, 0, 9, 0] * 8) + bytes([ADD_ENI, 6]) + out(0x10, 0x20, 0, 9)
    mixed = (out(0x14, 0x10, 0, 20) + out(0x01, 0x20, S, 50) + reply(3, R, 0x08)
             + reply(1, A, 0x18, 0x05) + bytes([TICK, 15, EXPIRE, 0x7F]))
    in_batch = bytes([9, 3]) + reply(0, A)[1:] + reply(1, 0)[1:] + reply(2, F | A)[1:]
    for variant in range(3):
        for program in (life, udp, batch, mixed, in_batch):
            yield bytes([variant]) + program
    syn = fg.tcp(SRC4, DST4, 4000, 80, "S")
    yield bytes([0, 2, 4, len(syn)]) + bytes(syn) + bytes([2, 1 | 4 | 8, len(syn)]) + bytes(syn)


def state_seeds():
    """fuzz_state.c: the file whole, cut, and with each checked field (selector k) or a raw
    offset overwritten."""
    yield b"\x00"
    yield b"\xc0"                                       # cut to half
    for k in range(48):
        yield bytes([0, k, 7]) + b"\xff" * 8            # a field set to all ones
        yield bytes([0, k, 3, 1, 0x10, 0, 0])           # ... to a small number
    yield bytes([0, 0x80, 0, 0x10, 0x20, 7]) + bytes(8)  # a raw offset in the shared part


def write(directory, seeds):
    os.makedirs(directory, exist_ok=True)
    for seed in seeds:
        name = hashlib.sha1(seed).hexdigest()
        with open(os.path.join(directory, name), "wb") as f:
            f.write(seed)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "fuzz/seeds"
    write(os.path.join(out, "translate"), translate_seeds())
    write(os.path.join(out, "ops"), ops_seeds())
    write(os.path.join(out, "state"), state_seeds())


if __name__ == "__main__":
    main()
