"""Counter names in one style in every layer (issue 17): lower snake case, the reasons and
policer classes after a ``drop.`` / ``punt.`` / ``policed.`` / ``policed_class.`` keep their
upper-case names (a vocabulary, as connection states are)."""

import re

import pytest

from hyperplane import vocab
from hyperplane.model.nat import Nat as ModelNat

core = pytest.importorskip("hyperplane._core")

COUNTER = re.compile(r"[a-z][a-z0-9_]*")
BY_REASON = re.compile(r"(drop|punt|policed|policed_class)\.[A-Z][A-Z0-9_]*")


def odd_names(names) -> list[str]:
    return [n for n in names if not (COUNTER.fullmatch(n) or BY_REASON.fullmatch(n))]


def test_the_core_the_model_and_the_loop_name_their_counters_alike():
    nat = core.Nat()
    nat.add_eni("10.0.1.4")
    model = ModelNat()
    model.add_eni("10.0.1.4")
    for names in (core.COUNTERS, core.FUNC_COUNTERS, vocab.COUNTERS, nat.counters(),
                  model.counters(), core.DataPlane(nat).counters()):
        assert list(names) and odd_names(names) == [], names
    assert core.COUNTERS == vocab.COUNTERS
    assert set(nat.counters()) == set(model.counters())
    assert "fwd_out_packets" in nat.counters() and "rx_frames" in core.DataPlane(nat).counters()


def test_the_check_finds_an_odd_name():
    assert odd_names(["conn_created", "drop.SG_DENIED", "CONN_CREATED", "drop.sg",
                      "ConnCreated"]) == ["CONN_CREATED", "drop.sg", "ConnCreated"]
