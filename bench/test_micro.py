"""Micro-benchmarks of the C core, each beside the pure-Python reference model.

Run: make bench   (medians; the machine is shared and noisy, so compare ratios, not digits).
Each test's per-operation figure (ns per lookup, frames/s, bytes per connection, ...) is
printed in a table after pytest-benchmark's own (see conftest.py).
Targets (issue 2): lookup <= 50 ns; new connection with port allocation <= 250 ns;
>= 10 M frames/s of 64-byte frames on one core; <= 128 bytes per tracked connection;
lookups at 1,000,000 live connections no slower than 1.5x at 10,000.
"""

import pytest

from hyperplane import vocab
from hyperplane._core import Nat

from setups import (FRAME, SERVER, filled_tcp_nat, make_nat, model_nat_with_flows, packed_flows,
                    per_op, shuffled_frames, shuffled_keys, udp64, function_addr)

MODEL_N = 2000


@pytest.mark.parametrize("size", ["10k", "1m"])
def test_lookup_existing_flow(benchmark, request, size):
    nat, frames = request.getfixturevalue(f"nat_{size}")
    n = len(nat)
    keys = shuffled_keys(frames, n)
    hits = benchmark(nat.lookup_packed, keys, vocab.OUT)
    assert hits == n
    per_op(benchmark, n, "ns per lookup")


def test_lookup_existing_flow_model(benchmark):
    nat = model_nat_with_flows(MODEL_N)
    keys = [e.orig_key() for e in nat.table.conns.values()]

    def run():
        return sum(nat.table.lookup(k, vocab.OUT) is not None for k in keys)

    assert benchmark(run) == MODEL_N
    per_op(benchmark, MODEL_N, "ns per lookup")


def test_new_connection_with_port_allocation(benchmark):
    n = 60_000
    frames, sources = packed_flows(n)
    work = bytearray(len(frames))

    def setup():
        return (make_nat(Nat, sources, capacity=n),), {}

    def run(nat):
        assert nat.translate_packed(frames, work, FRAME, vocab.OUT, 1000) == n

    benchmark.pedantic(run, setup=setup, rounds=15)
    per_op(benchmark, n, "ns per new connection")


def test_new_connection_model(benchmark):
    from hyperplane import model
    frames = [udp64(function_addr(0), 1024 + k) for k in range(MODEL_N)]

    def setup():
        return (make_nat(model.Nat, 1, capacity=MODEL_N), [bytearray(f) for f in frames]), {}

    def run(nat, copies):
        nat.translate(copies, vocab.OUT, 1000)

    benchmark.pedantic(run, setup=setup, rounds=5)
    per_op(benchmark, MODEL_N, "ns per new connection")


def test_translate_64_byte_frames(benchmark, nat_10k):
    """Existing flows, OUT direction: parse, lookup, state, counters, rewrite, checksums."""
    nat, frames = nat_10k
    work = bytearray(len(frames))
    n = len(frames) // FRAME
    assert benchmark(nat.translate_packed, frames, work, FRAME, vocab.OUT, 2000) == n
    ns = per_op(benchmark, n, "ns per frame")
    benchmark.extra_info["M frames/s"] = round(1e3 / ns, 2)


@pytest.mark.parametrize("size", ["10k", "1m"])
def test_translate_64_byte_frames_random_order(benchmark, request, size):
    """As above, every flow once per pass in a new random order, as traffic over many flows
    comes: each pass meets the table in another order than the last one left it (the entries
    and their neighbours on the state lists are nowhere near each other in memory)."""
    nat, frames = request.getfixturevalue(f"nat_{size}")
    passes = [shuffled_frames(frames, 1), shuffled_frames(frames, 2)]
    work = bytearray(len(frames))
    n = len(frames) // FRAME

    def run():
        return sum(nat.translate_packed(p, work, FRAME, vocab.OUT, 2000) for p in passes)

    assert benchmark(run) == 2 * n
    per_op(benchmark, 2 * n, "ns per frame")


def test_translate_tcp_established(benchmark):
    """Established TCP flows, OUT direction: as above plus the window check (csrc/nat/tcp.c) and
    the owner's MAC check, 10,000 flows."""
    nat, frames, size = filled_tcp_nat(10_000)
    work = bytearray(len(frames))
    n = len(frames) // size
    assert benchmark(nat.translate_packed, frames, work, size, vocab.OUT, 2000) == n
    per_op(benchmark, n, "ns per frame")


def test_translate_model(benchmark):
    nat = model_nat_with_flows(MODEL_N)
    frames = [udp64(function_addr(0), 1024 + k) for k in range(MODEL_N)]

    def run():
        nat.translate([bytearray(f) for f in frames], vocab.OUT, 2000)

    benchmark.pedantic(run, rounds=5)
    ns = per_op(benchmark, MODEL_N, "ns per frame")
    benchmark.extra_info["M frames/s"] = round(1e3 / ns, 4)


def test_expire_1m_entries(benchmark):
    n = 1_000_000
    frames, sources = packed_flows(n)
    work = bytearray(len(frames))

    def setup():
        nat = make_nat(Nat, sources, capacity=n)
        nat.translate_packed(frames, work, FRAME, vocab.OUT, 1000)
        return (nat,), {}

    def run(nat):
        assert nat.expire(10**9, collect=False) == n

    benchmark.pedantic(run, setup=setup, rounds=3)
    per_op(benchmark, n, "ns per expired entry")


def test_expire_model(benchmark):
    def setup():
        return (model_nat_with_flows(MODEL_N),), {}

    def run(nat):
        assert len(nat.expire(10**9)) == MODEL_N

    benchmark.pedantic(run, setup=setup, rounds=5)
    per_op(benchmark, MODEL_N, "ns per expired entry")


def test_memory_per_connection(benchmark, nat_1m):
    """Not a timing: bytes of the table per tracked connection, both index entries included."""
    nat, _ = nat_1m
    mem = benchmark(nat.memory)
    benchmark.extra_info["bytes per connection"] = mem["per_connection"]
    benchmark.extra_info["bytes per entry"] = mem["entry_bytes"]
    benchmark.extra_info["bytes per port pool (ENI, protocol)"] = nat.pool_memory(0, 4, 17)
    assert mem["per_connection"] > 0


def _filtered_pages(nat, spec):
    out, cursor = [], 0
    while cursor is not None:
        page, cursor = nat.connections_page(cursor, 1000, filter=spec)
        out += page
    return out


def test_filtered_count_1m(benchmark, nat_1m):
    """`conntrack -p udp -d ADDR -C` in the core: a scan of the table, nothing copied."""
    nat, _ = nat_1m
    got = benchmark(nat.count, {"proto": "udp", "dst": SERVER})
    assert got == len(nat) == 1_000_000
    per_op(benchmark, nat.capacity, "ns per table slot")


def test_filtered_listing_1m(benchmark, nat_1m):
    """A listing that matches a few connections of 1M costs the scan and the matches: no
    Python object for the others."""
    nat, _ = nat_1m
    spec = {"proto": "udp", "sport": [1024, 1123]}
    got = benchmark(_filtered_pages, nat, spec)
    assert got and all(1024 <= c.sport <= 1123 for c in got)
    benchmark.extra_info["matches"] = len(got)
    per_op(benchmark, nat.capacity, "ns per table slot")
