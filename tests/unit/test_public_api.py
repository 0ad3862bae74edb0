"""The public names of `hyperplane` without a lab: the Nat switch (C core or the model), config
inputs, counter deltas, the connection round trip and each namespace's hosts file."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

import hyperplane
from hyperplane.api import Counting, as_config, flat_counters
from hyperplane.config import ConfigError, default_config
from hyperplane.lab import build_topology, hostsfile

from docfiles import ROOT


def _nat_in(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "HYPERPLANE_PUREPYTHON"}
    if env_value is not None:
        env["HYPERPLANE_PUREPYTHON"] = env_value
    env["PYTHONPATH"] = str(ROOT)
    r = subprocess.run([sys.executable, "-c", "import hyperplane; print(hyperplane.Nat)"],
                       env=env, capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_nat_is_the_model_with_purepython_and_the_c_core_without():
    pytest.importorskip("hyperplane._core")
    assert _nat_in("1") == "<class 'hyperplane.model.nat.Nat'>"
    assert _nat_in(None) == "<class 'hyperplane._core.Nat'>"
    assert _nat_in("0") == "<class 'hyperplane._core.Nat'>"


def test_both_nats_answer_alike_through_the_public_name():
    """One interface: what a user's code calls on hyperplane.Nat works on either."""
    from hyperplane.model import Nat as Model
    core = pytest.importorskip("hyperplane._core")
    for cls in (Model, core.Nat):
        nat = cls(capacity=64)
        eni = nat.add_eni("10.0.1.4")
        grp = nat.add_group()
        nat.group_add_eni(grp, eni)
        nat.add_source("10.200.0.11", grp)
        assert len(nat) == 0 and nat.connections() == []
        assert nat.pool_stats(eni, 4, 6)["size"] == 65000
        assert "drop.IN_UNSOLICITED_SYN" in nat.counters()
    assert hyperplane.Nat in (Model, core.Nat)
    assert hyperplane.Connection is hyperplane.connection.Connection


def test_public_names_are_exported():
    for name in hyperplane.__all__:
        assert getattr(hyperplane, name) is not None, name
    assert hyperplane.Lab.__doc__ and hyperplane.Lab.up.__doc__


def test_as_config_takes_a_path_a_dict_a_config_or_nothing(tmp_path):
    default = default_config()
    assert as_config(None) == default
    assert as_config(default) is default
    p = tmp_path / "lab.toml"
    p.write_text('[vpc.subnets.app]\ncidr4 = "10.0.1.0/24"\n[vpc.security_groups.sg-a]\n'
                 '[functions.api]\nsubnet_ids = ["app"]\nsecurity_group_ids = ["sg-a"]\n')
    from_path = as_config(p)
    from_dict = as_config({"vpc": {"subnets": {"app": {"cidr4": "10.0.1.0/24"}},
                                   "security_groups": {"sg-a": {}}},
                           "functions": {"api": {"subnet_ids": ["app"],
                                                 "security_group_ids": ["sg-a"]}}})
    assert [f.name for f in from_path.functions] == [f.name for f in from_dict.functions]
    with pytest.raises(ConfigError, match="functions.api"):
        as_config({"functions": {"api": {"subnet_ids": ["nowhere"]}}})


def test_flat_counters_sum_reasons_over_both_stages():
    stats = {"nat": {"conn_created": 2, "drop.IN_UNSOLICITED_SYN": 1, "drop.ARP": 0},
             "dataplane": {"rx_frames": 9, "drop.IN_UNSOLICITED_SYN": 2, "drop.ARP": 4},
             "connections": 1}
    flat = flat_counters(stats)
    assert flat["drop.IN_UNSOLICITED_SYN"] == 3 and flat["conn_created"] == 2
    assert flat["punt.ARP"] == 4 and flat["connections"] == 1


def test_counting_gives_deltas_live_and_frozen():
    values = {"drop.X": 5, "conn_created": 1}
    c = Counting(lambda: dict(values))
    values["drop.X"] = 7
    assert c["drop.X"] == 2                      # inside the block: so far
    c.after = dict(values)
    values["drop.X"] = 100
    assert c["drop.X"] == 2 and c["conn_created"] == 0   # after: over the block
    assert c.changed() == {"drop.X": 2}
    with pytest.raises(KeyError, match="known: conn_created, drop.X"):
        c["drop.TYPO"]


def test_a_connection_comes_back_from_its_listing_form():
    from hyperplane.connection import Connection, FlowInterval
    c = Connection(id=3, family=4, proto=6, src="10.200.0.11", dst="10.0.1.10", sport=40000,
                   dport=8080, eni=0, nat_addr="10.0.1.4", nat_port=5000, state="ESTABLISHED",
                   flags=15, packets_out=3, packets_in=2, bytes_out=180, bytes_in=120,
                   start_s=1, last_seen_ms=1000, owner=0,
                   flow_out=FlowInterval(3, 180, 1, 2, 2), flow_in=None)
    d = c.to_dict()
    d["a_key_added_later"] = "ignored"
    assert Connection.from_dict(d) == c


def test_each_namespace_resolves_what_it_can_reach():
    state = build_topology(default_config()).state()       # api: IPv6 allowed; worker: not
    api, worker, web, db = (state.function("api"), state.function("worker"),
                            state.host("web"), state.host("db"))
    names = lambda viewer: {(a, n) for a, n in hostsfile.entries(state, viewer)}
    assert (web.ipv4, "web") in names(api) and (web.ipv6, "web") in names(api)
    assert (web.ipv4, "web") in names(worker) and (web.ipv6, "web") not in names(worker)
    assert (worker.ipv6, "worker") in names(api)           # functions share the inside net
    assert (db.ipv4, "db") in names(web) and db.ipv6 is None
    assert (api.ipv4, "api") in names(web)                 # resolves; V2N refuses it
    every = {f.name for f in state.functions} | {h.name for h in state.hosts}
    for viewer in (*state.functions, *state.hosts):
        text = hostsfile.render(state, viewer)
        assert {line.split("\t")[1] for line in text.splitlines()[3:]} == every
        assert text.splitlines()[3] == f"{viewer.ipv4}\t{viewer.name}"   # itself first
        # the machine's own name is loopback there (servers look it up as they bind)
        assert socket.gethostname() in text.splitlines()[1].split("\t")[1].split()


def test_no_name_lookup_leaves_a_lab_namespace(tmp_path, monkeypatch):
    monkeypatch.setattr(hostsfile, "ETC_NETNS", tmp_path)
    state = build_topology(default_config()).state()
    hostsfile.write(state)
    for viewer in (*state.functions, *state.hosts):
        resolv = (tmp_path / viewer.ns / "resolv.conf").read_text()
        servers = [line.split()[1] for line in resolv.splitlines() if line.startswith("nameserver")]
        assert servers == ["127.0.0.1"]
    removed = hostsfile.remove(state.prefix, tmp_path)
    assert len(removed) == 2 * (len(state.functions) + len(state.hosts))
    assert not any(tmp_path.iterdir())


def test_hosts_files_are_found_and_removed_by_prefix(tmp_path):
    for ns in ("zz-f-api", "zz-h-web", "zzz-f-api", "other"):
        (tmp_path / ns).mkdir()
        (tmp_path / ns / "hosts").write_text("x")
    (tmp_path / "zz-h-web" / "resolv.conf").write_text("the user's")
    assert [p.name for p in hostsfile.lab_folders("zz", tmp_path)] == ["zz-f-api", "zz-h-web"]
    removed = hostsfile.remove("zz", tmp_path)
    assert sorted(p.parent.name for p in removed) == ["zz-f-api", "zz-h-web"]
    assert not (tmp_path / "zz-f-api").exists()
    assert (tmp_path / "zz-h-web" / "resolv.conf").exists()      # not ours: kept
    assert (tmp_path / "zzz-f-api" / "hosts").exists() and (tmp_path / "other").exists()
