"""Checks and resolves the NAT's constructor arguments, once for both implementations."""

from __future__ import annotations

from dataclasses import dataclass

from .vocab import DEFAULT_PORT_RANGE, MAPPINGS, MAX_CAPACITY, MAX_TIMEOUT_S, PROFILES, STATES


@dataclass(frozen=True)
class NatParams:
    capacity: int
    port_lo: int
    port_hi: int
    per_connection: bool
    timeouts_ms: tuple          # indexed by state number (vocab.STATES)
    quarantine_ms: int
    mtu_inside: int
    mtu_outside: int
    journal_size: int
    port_seed: int
    hash_seed: tuple | None     # (k0, k1) or None for a random one


def resolve(capacity=65536, port_range=DEFAULT_PORT_RANGE, mapping="endpoint-independent",
            profile="aws", timeouts=None, quarantine_ms=None, mtu_inside=1500,
            mtu_outside=1500, journal_size=4096, port_seed=0, hash_seed=None) -> NatParams:
    if not isinstance(capacity, int) or not 1 <= capacity <= MAX_CAPACITY:
        raise ValueError(f"capacity must be an integer in 1..{MAX_CAPACITY}, not {capacity!r}")
    try:
        lo, hi = (int(p) for p in port_range)
    except (TypeError, ValueError):
        raise ValueError(f"port_range must be two integers (low, high), not {port_range!r}") from None
    if not 1 <= lo <= hi <= 65535:
        raise ValueError(f"port_range must satisfy 1 <= low <= high <= 65535, not {lo}..{hi}")
    if mapping not in MAPPINGS:
        raise ValueError(f"mapping must be one of {', '.join(MAPPINGS)}, not {mapping!r}")
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}, not {profile!r}")
    seconds = dict(PROFILES[profile])
    for state, value in (timeouts or {}).items():
        if state not in seconds:
            raise ValueError(f"unknown state {state!r} in timeouts; known: {', '.join(seconds)}")
        if not isinstance(value, (int, float)) or not 0 < value <= MAX_TIMEOUT_S:
            raise ValueError(f"timeout for {state} must be a number of seconds in "
                             f"(0, {MAX_TIMEOUT_S}]")
        seconds[state] = value
    timeouts_ms = tuple(0 if s == "NONE" else int(seconds[s] * 1000) for s in STATES)
    if quarantine_ms is None:
        quarantine_ms = 2 * timeouts_ms[STATES.index("TIME_WAIT")]
    if not isinstance(quarantine_ms, int) or quarantine_ms < 0:
        raise ValueError("quarantine_ms must be a non-negative integer")
    for name, mtu in (("mtu_inside", mtu_inside), ("mtu_outside", mtu_outside)):
        if not isinstance(mtu, int) or not 68 <= mtu <= 65535:
            raise ValueError(f"{name} must be an integer in 68..65535, not {mtu!r}")
    if not isinstance(journal_size, int) or not 0 <= journal_size <= 1 << 24:
        raise ValueError("journal_size must be an integer in 0..16777216")
    if hash_seed is not None:
        hash_seed = (int(hash_seed[0]) & (2**64 - 1), int(hash_seed[1]) & (2**64 - 1))
    return NatParams(capacity, lo, hi, mapping == "per-connection", timeouts_ms, quarantine_ms,
                     mtu_inside, mtu_outside, journal_size, int(port_seed) & (2**64 - 1), hash_seed)
