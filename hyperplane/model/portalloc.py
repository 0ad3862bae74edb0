"""External port pools (docs/semantics.md section 5).

One pool per (ENI, family, protocol). Ports are drawn at random (RFC 6056) from an array of
free ports, and a released port waits in quarantine before it can be drawn again, so a late
packet of an old connection does not land in a new one. The C core does exactly the same
steps, with the same PRNG, so both hand out the same ports in the same order.
"""

from __future__ import annotations

from collections import deque

MASK64 = (1 << 64) - 1

# How many ports one alloc() may move out of quarantine: bounded work per allocation.
QUARANTINE_MOVES_PER_ALLOC = 64


class SplitMix64:
    """A tiny 64-bit PRNG; one per NAT, shared by all its pools."""

    def __init__(self, seed: int):
        self.state = seed & MASK64

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & MASK64


def siphash13(k0: int, k1: int, data: bytes) -> int:
    """SipHash-1-3 of data with the key (k0, k1), as csrc/nat/flow.c computes it."""
    v0, v1 = 0x736F6D6570736575 ^ k0, 0x646F72616E646F6D ^ k1
    v2, v3 = 0x6C7967656E657261 ^ k0, 0x7465646279746573 ^ k1

    def sipround():
        nonlocal v0, v1, v2, v3
        v0 = (v0 + v1) & MASK64
        v1 = _rotl(v1, 13) ^ v0
        v0 = _rotl(v0, 32)
        v2 = (v2 + v3) & MASK64
        v3 = _rotl(v3, 16) ^ v2
        v0 = (v0 + v3) & MASK64
        v3 = _rotl(v3, 21) ^ v0
        v2 = (v2 + v1) & MASK64
        v1 = _rotl(v1, 17) ^ v2
        v2 = _rotl(v2, 32)

    whole = len(data) & ~7
    for i in range(0, whole, 8):
        m = int.from_bytes(data[i:i + 8], "little")
        v3 ^= m
        sipround()
        v0 ^= m
    b = (len(data) << 56) & MASK64 | int.from_bytes(data[whole:], "little")
    v3 ^= b
    sipround()
    v0 ^= b
    v2 ^= 0xFF
    for _ in range(3):
        sipround()
    return v0 ^ v1 ^ v2 ^ v3


class Owner:
    """Who an endpoint-independent mapping belongs to, and how many connections use it."""
    __slots__ = ("addr", "port", "refs")

    def __init__(self, addr: bytes, port: int):
        self.addr, self.port, self.refs = addr, port, 1


class Pool:
    def __init__(self, lo: int, hi: int, key: tuple[int, int]):
        self.lo, self.hi = lo, hi
        # Port choice is a keyed PRF over a counter, one secret key per pool (RFC 6056
        # algorithm 4-like): a function that learns its own ports learns nothing of others'.
        self.key = key
        self.draws = 0
        self.size = hi - lo + 1
        self.free = list(range(lo, hi + 1))     # order matters: draws index into it
        self.quarantine = deque()               # (port, release ms, charged owner), oldest first
        # Endpoint-independent mapping: external port -> owner, and the reverse index.
        self.owner: dict[int, Owner] = {}
        self.mapping: dict[tuple[bytes, int], int] = {}

    # -- allocation --------------------------------------------------------------------------

    def has_free(self, now_ms: int) -> bool:
        """Whether a port is free or out of quarantine; changes nothing."""
        return bool(self.free) or bool(self.quarantine and self.quarantine[0][1] <= now_ms)

    def drain(self, now_ms: int) -> list:
        """Ends the quarantine of up to QUARANTINE_MOVES_PER_ALLOC ports whose time is up,
        oldest first (bounded work per call); returns whom each was charged to (None: no
        one), so the NAT hands the charges back to their functions."""
        charges = []
        while (len(charges) < QUARANTINE_MOVES_PER_ALLOC and self.quarantine
               and self.quarantine[0][1] <= now_ms):
            port, _, charge = self.quarantine.popleft()
            self.free.append(port)
            charges.append(charge)
        return charges

    def alloc(self) -> int | None:
        """A free port at random, or None when every port is taken or in quarantine (the
        NAT drains the ports whose quarantine ended first)."""
        if not self.free:
            return None
        r = siphash13(*self.key, self.draws.to_bytes(8, "little"))
        self.draws += 1
        # Scale the top 32 bits of the draw into [0, len(free)): no modulo bias worth noting.
        i = ((r >> 32) * len(self.free)) >> 32
        port = self.free[i]
        # Swap-pop: the last free port takes the drawn one's place, O(1).
        self.free[i] = self.free[-1]
        self.free.pop()
        return port

    def release(self, port: int, now_ms: int, quarantine_ms: int, charge=None) -> None:
        """Hands a port back; in quarantine it stays charged to charge (an owner, or None)
        until drain() ends its quarantine."""
        if quarantine_ms == 0:
            self.free.append(port)
        else:
            self.quarantine.append((port, now_ms + quarantine_ms, charge))

    # -- endpoint-independent mappings -------------------------------------------------------

    def map_find(self, addr: bytes, port: int) -> int | None:
        """The external port already mapped to (inside addr, inside port), or None."""
        return self.mapping.get((addr, port))

    def map_add(self, ext: int, addr: bytes, port: int) -> None:
        """Records a fresh mapping for a just-allocated port, with one reference."""
        self.owner[ext] = Owner(addr, port)
        self.mapping[(addr, port)] = ext

    def ref(self, ext: int) -> None:
        self.owner[ext].refs += 1

    def unref(self, ext: int, now_ms: int, quarantine_ms: int, charge=None) -> None:
        """Drops one reference; the last one removes the mapping and releases the port."""
        owner = self.owner[ext]
        owner.refs -= 1
        if owner.refs == 0:
            del self.owner[ext]
            del self.mapping[(owner.addr, owner.port)]
            self.release(ext, now_ms, quarantine_ms, charge)

    # -- statistics --------------------------------------------------------------------------

    def stats(self) -> dict:
        free, quarantined = len(self.free), len(self.quarantine)
        return {"size": self.size, "free": free, "in_use": self.size - free - quarantined,
                "quarantined": quarantined}
