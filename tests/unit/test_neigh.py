"""The data plane's neighbour table (csrc/dp/neigh.c): pinned entries nothing learned replaces,
a share of learned entries per port, ageing of learned entries."""

import time

import pytest

core = pytest.importorskip("hyperplane._core")

MAC, OTHER = "02:00:00:00:01:20", "02:00:00:00:06:66"


def dataplane(capacity=4096):
    nat = core.Nat()
    nat.add_eni("10.0.1.4")
    return core.DataPlane(nat, neigh_capacity=capacity)


def test_a_pinned_entry_is_never_replaced_by_a_learned_one():
    dp = dataplane()
    dp.set_neighbor("10.0.1.20", MAC, pinned=True)
    with pytest.raises(PermissionError):
        dp.set_neighbor("10.0.1.20", OTHER)
    assert dp.neighbor("10.0.1.20", with_pinned=True) == (MAC, True)
    dp.set_neighbor("10.0.1.20", OTHER, pinned=True)      # the lab itself may change it
    assert dp.neighbor("10.0.1.20") == OTHER
    dp.set_neighbor("10.0.1.21", MAC)
    assert dp.neighbor("10.0.1.21", with_pinned=True) == (MAC, False)


def test_learned_entries_have_a_share_pinned_ones_do_not():
    dp = dataplane(capacity=64)                           # a quarter of it learned per port
    for i in range(16):
        dp.set_neighbor(f"10.0.1.{100 + i}", MAC)
    with pytest.raises(OSError):
        dp.set_neighbor("10.0.1.200", MAC)
    for i in range(16):                                   # the lab's own still fit
        dp.set_neighbor(f"10.0.2.{100 + i}", MAC, pinned=True)
    dp.del_neighbor("10.0.1.100")
    dp.set_neighbor("10.0.1.200", MAC)                    # room again


def test_learned_entries_age_out_pinned_ones_stay():
    dp = dataplane()
    dp.set_neighbor("10.0.1.20", MAC, pinned=True)
    dp.set_neighbor("10.0.1.21", MAC)
    assert dp.age_neighbors(60_000) == 0
    deadline = time.monotonic() + 5          # confirmed in whole seconds: at most one to wait
    aged = 0
    while not aged and time.monotonic() < deadline:
        aged = dp.age_neighbors(0)
        time.sleep(0.05)
    assert aged == 1
    assert dp.neighbor("10.0.1.21") is None and dp.neighbor("10.0.1.20") == MAC
