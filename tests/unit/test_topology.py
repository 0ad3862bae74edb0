"""The lab topology as a value: names, MACs, addresses, routes, ENIs (no root needed)."""

import dataclasses
import ipaddress
import json

import pytest

from hyperplane import vocab
from hyperplane.config import ConfigError, default_config, loads_config
from hyperplane.lab.topology import (DATAPLANE, FUNCTION, HOST, IFNAMSIZ, LAMBDA, VPC,
                                     LabError, LabState, build_topology, eni_veth,
                                     is_lab_link, is_lab_namespace, mac)


@pytest.fixture
def topo():
    return build_topology(default_config())


def test_namespaces_and_roles(topo):
    assert [(n.name, n.role) for n in topo.namespaces] == [
        ("hp-hp", DATAPLANE), ("hp-lambda", LAMBDA), ("hp-vpc", VPC),
        ("hp-h-web", HOST), ("hp-h-db", HOST),
        ("hp-f-api", FUNCTION), ("hp-f-worker", FUNCTION), ("hp-f-report", FUNCTION)]
    assert (topo.dataplane_ns, topo.lambda_ns, topo.vpc_ns) == ("hp-hp", "hp-lambda", "hp-vpc")


def test_dataplane_namespace_is_quiet(topo):
    sysctls = dict(topo.namespaces[0].sysctls)
    assert sysctls["net/ipv4/ip_forward"] == "0"
    assert sysctls["net/ipv6/conf/default/disable_ipv6"] == "1"
    vpc = dict(topo.namespaces[2].sysctls)
    assert vpc["net/ipv4/ip_forward"] == "1" and vpc["net/ipv6/conf/all/forwarding"] == "1"


def test_dataplane_ports(topo):
    ports = [v.end for v in topo.veths if v.end.ns == "hp-hp"]
    assert [p.ifname for p in ports] == ["hp-in", "hp-e0", "hp-e1"]
    for p in ports:
        assert p.addresses == () and not p.ipv6 and p.drop_ingress and p.mac
    assert topo.inside.ifname == "hp-in" and topo.inside.peer == "hp-inp"
    assert topo.inside.gateway4 == "10.200.0.1" and topo.inside.gateway6 == "fd00:200::1"
    assert topo.inside.mac == ports[0].mac


def test_lambda_bridge_joins_inside_peer_and_functions(topo):
    on_lbr = [e.ifname for v in topo.veths for e in (v.end, v.peer) if e.master == "hp-lbr"]
    assert on_lbr == ["hp-inp", "hp-f0", "hp-f1", "hp-f2"]
    lbr = [b for b in topo.bridges if b.ifname == "hp-lbr"][0]
    assert lbr.ns == "hp-lambda" and lbr.addresses == ()


def test_functions(topo):
    api, worker, report = topo.functions
    assert (api.ns, api.ifname) == ("hp-f-api", "eth0")
    assert [f.ipv4 for f in topo.functions] == ["10.200.0.11", "10.200.0.12", "10.200.0.13"]
    # every function has both addresses; whether it may use IPv6 is the NAT's business
    assert [f.ipv6 for f in topo.functions] == ["fd00:200::b", "fd00:200::c", "fd00:200::d"]
    assert [f.ipv6_allowed for f in topo.functions] == [True, False, False]
    assert api.group == worker.group == "app|sg-web" and report.group == "data|sg-db"
    assert api.gateway4 == "10.200.0.1" and api.gateway6 == "fd00:200::1"
    eth0 = [v.peer for v in topo.veths if v.peer.ns == "hp-f-api"][0]
    assert eth0.addresses == ("10.200.0.11/24", "fd00:200::b/64") and eth0.mac == api.mac
    routes = [(r.family, r.dst, r.gateway) for r in topo.routes if r.ns == "hp-f-api"]
    assert routes == [(4, "default", "10.200.0.1"), (6, "default", "fd00:200::1")]


def test_vpc_router_and_hosts(topo):
    s0, s1 = [b for b in topo.bridges if b.ns == "hp-vpc"]
    assert (s0.ifname, s0.addresses) == ("hp-s0", ("10.0.1.1/24", "fd00:1::1/64"))
    assert (s1.ifname, s1.addresses) == ("hp-s1", ("10.0.2.1/24",))
    web, db = topo.hosts
    assert (web.ns, web.ipv4, web.ipv6, web.gateway4) == ("hp-h-web", "10.0.1.10", "fd00:1::a",
                                                         "10.0.1.1")
    assert (db.ipv4, db.ipv6, db.gateway6) == ("10.0.2.10", None, None)
    assert [(r.family, r.gateway) for r in topo.routes if r.ns == "hp-h-web"] == [
        (4, "10.0.1.1"), (6, "fd00:1::1")]
    assert [(r.family, r.gateway) for r in topo.routes if r.ns == "hp-h-db"] == [(4, "10.0.2.1")]
    peers = {v.end.ifname: v.end.master for v in topo.veths if v.end.ns == "hp-vpc"}
    assert peers == {"hp-h0": "hp-s0", "hp-h1": "hp-s1"}


def test_enis_one_per_subnet_and_security_groups(topo):
    e0, e1 = topo.enis
    assert (e0.id, e0.ifname, e0.peer, e0.subnet, e0.group) == (0, "hp-e0", "hp-e0p", "app",
                                                                "app|sg-web")
    assert (e0.ipv4, e0.ipv6, e0.gateway4, e0.gateway6) == ("10.0.1.4", "fd00:1::4", "10.0.1.1",
                                                            "fd00:1::1")
    assert (e0.cidr4, e0.cidr6) == ("10.0.1.0/24", "fd00:1::/64")
    assert (e1.ipv4, e1.ipv6, e1.subnet, e1.security_groups) == ("10.0.2.4", None, "data",
                                                                 ("sg-db",))
    assert [(g.index, g.key, g.functions) for g in topo.groups] == [
        (0, "app|sg-web", ("api", "worker")), (1, "data|sg-db", ("report",))]
    # the ENI peer sits on its subnet's bridge; the addresses are the data plane's
    v = [v for v in topo.veths if v.end.ifname == "hp-e0"][0]
    assert v.peer.ns == "hp-vpc" and v.peer.ifname == "hp-e0p" and v.peer.master == "hp-s0"
    assert v.end.addresses == () and v.peer.addresses == ()


def test_macs_are_unique_locally_administered_unicast(topo):
    macs = [e.mac for v in topo.veths for e in (v.end, v.peer) if e.mac]
    macs += [b.mac for b in topo.bridges]
    assert len(macs) == len(set(macs))
    for m in macs:
        first = int(m.split(":")[0], 16)
        assert first & 0x02 and not first & 0x01, m
        assert m.startswith("02:48:50:")
    assert mac(1, 0x1234) == "02:48:50:01:12:34"
    with pytest.raises(ValueError):
        mac(1, 1 << 16)


def test_interface_names_fit_and_carry_the_prefix():
    cfg = default_config("abcd")
    topo = build_topology(cfg)
    for ns, ifname in topo.links():
        assert len(ifname) <= IFNAMSIZ, ifname
        assert ifname == "eth0" or ifname.startswith("abcd-"), ifname
        assert is_lab_namespace("abcd", ns)
    st = topo.state()
    for _ in range(200):                       # ENI ids into three digits still fit
        st.with_eni(st.next_eni("app", ["sg-web"]))
    assert len(st.enis[-1].peer) <= IFNAMSIZ


def test_names_are_unique(topo):
    links = topo.links()
    assert len(links) == len(set(links))
    assert len({n.name for n in topo.namespaces}) == len(topo.namespaces)


def test_cleanup_name_patterns():
    assert is_lab_namespace("hp", "hp-hp") and is_lab_namespace("hp", "hp-lambda")
    assert is_lab_namespace("hp", "hp-vpc") and is_lab_namespace("hp", "hp-f-api")
    assert is_lab_namespace("hp", "hp-h-db")
    assert not is_lab_namespace("hp", "hp2-hp")       # another lab's prefix
    assert not is_lab_namespace("hp", "hp-other")     # not a name the lab makes
    assert not is_lab_namespace("hp", "hp-f-")
    assert not is_lab_namespace("h", "hp-hp")
    assert is_lab_link("hp", "hp-e12p") and not is_lab_link("hp", "hpx-e0")
    assert not is_lab_link("hp", "eth0")


def test_state_round_trips_through_json(topo):
    st = topo.state()
    d = json.loads(st.to_json())
    assert d["prefix"] == "hp" and d["dataplane_ns"] == "hp-hp"
    assert d["inside"]["mac"] == topo.inside.mac
    assert [e["ifname"] for e in d["enis"]] == ["hp-e0", "hp-e1"]
    assert d["config"]["hyperplane"]["profile"] == "aws"
    assert {n["name"]: n["role"] for n in d["namespaces"]}["hp-hp"] == "dataplane"
    assert {n["name"]: n["addresses"] for n in d["namespaces"]}["hp-h-web"] == [
        "10.0.1.10/24", "fd00:1::a/64"]
    back = LabState.from_dict(d)
    assert back == st
    assert back.config == default_config() and back.config.nat_args() == st.config.nat_args()
    assert st.function("api").ipv4 == "10.200.0.11" and st.host("db").subnet == "data"
    assert st.namespace_of("api") == "hp-f-api" and st.namespace_of("hp-vpc") == "hp-vpc"
    with pytest.raises(KeyError):
        st.namespace_of("nobody")


def test_state_save_and_load(tmp_path, topo):
    st = topo.state()
    p = st.save(tmp_path)
    assert p == tmp_path / "hp.json"
    assert LabState.load("hp", tmp_path) == st
    with pytest.raises(FileNotFoundError):
        LabState.load("zz", tmp_path)


def test_next_eni_grows_a_group(topo):
    st = topo.state()
    e = st.next_eni("app", ["sg-web"])
    assert (e.id, e.ifname, e.peer, e.ipv4, e.ipv6) == (2, "hp-e2", "hp-e2p", "10.0.1.5",
                                                        "fd00:1::5")
    assert e.mac == mac(1, 2) and e.group == "app|sg-web"
    assert len(st.enis) == 2                     # pure: nothing recorded yet
    st.with_eni(e)
    assert [x.id for x in st.enis_of("app|sg-web")] == [0, 2]
    e3 = st.next_eni("data", ["sg-x", "sg-a"])
    assert (e3.id, e3.ipv4, e3.ipv6, e3.group) == (3, "10.0.2.5", None, "data|sg-a,sg-x")
    st.with_eni(e3)
    assert st.group("data|sg-a,sg-x").index == 2   # a new group, known from now on
    spec = eni_veth("hp", e3, st.subnet("data"))
    assert spec.end.drop_ingress and spec.peer.master == "hp-s1"
    st.without_eni(2)                            # released: its id and address go again
    assert [x.id for x in st.enis] == [0, 1, 3]
    again = st.next_eni("app", ["sg-web"])
    assert (again.id, again.ifname, again.ipv4) == (2, "hp-e2", "10.0.1.5")
    assert again.eni_id != e.eni_id              # named by the ENIs made before it: a new one
    assert st.enis_made == 4
    assert LabState.from_json(st.to_json()).enis_made == 4


def test_next_eni_runs_out_of_ids_only_with_every_id_held(topo):
    st = topo.state()
    st.subnets = [dataclasses.replace(sn, cidr4="10.0.0.0/16", cidr6=None)
                  if sn.name == "app" else sn for sn in st.subnets]
    while len(st.enis) < vocab.MAX_ENIS:
        st.with_eni(st.next_eni("app", ["sg-web"]))
    with pytest.raises(LabError, match="1024 ENIs, as many as the NAT has ids"):
        st.next_eni("app", ["sg-web"])
    st.without_eni(700)
    assert st.next_eni("app", ["sg-web"]).id == 700


def test_next_eni_errors(topo):
    st = topo.state()
    with pytest.raises(LabError, match="no subnet named 'nope'"):
        st.next_eni("nope", [])


LAB = """
prefix = "t"
[vpc.subnets.s]
cidr4 = "10.0.0.0/28"
cidr6 = "fd00:9::/64"
[hosts.h0]
subnet = "s"
[hosts.fixed]
subnet = "s"
address4 = "10.0.0.5"
[functions.f]
subnet_ids = ["s"]
"""


def test_enis_skip_host_addresses_and_run_out():
    topo = build_topology(loads_config(LAB))
    h0, fixed = topo.hosts
    assert (h0.ipv4, h0.ipv6) == ("10.0.0.10", "fd00:9::a")
    assert (fixed.ipv4, fixed.ipv6) == ("10.0.0.5", "fd00:9::5")
    assert topo.enis[0].ipv4 == "10.0.0.4"
    st = topo.state()
    got = []
    while True:
        try:
            e = st.next_eni("s", [])
        except LabError as err:
            assert "no free address" in str(err)
            break
        st.with_eni(e)
        got.append(e.ipv4)
    # .4 is the first ENI, .5 and .10 are hosts, .15 is the broadcast address
    assert got == [f"10.0.0.{i}" for i in (6, 7, 8, 9, 11, 12, 13, 14)]


def test_hosts_get_explicit_ipv6_and_skip_taken_numbers():
    topo = build_topology(loads_config(LAB + '[hosts.v6]\nsubnet = "s"\naddress6 = "fd00:9::b"\n'))
    h0, fixed, v6 = topo.hosts
    assert (v6.ipv4, v6.ipv6) == ("10.0.0.11", "fd00:9::b")
    topo = build_topology(loads_config(LAB + '[hosts.v6]\nsubnet = "s"\naddress6 = "fd00:9::a"\n'))
    h0, fixed, v6 = topo.hosts
    # fd00:9::a is taken by the explicit host, so h0 moves on to .11 / ::b
    assert (h0.ipv4, h0.ipv6, v6.ipv6) == ("10.0.0.11", "fd00:9::b", "fd00:9::a")


def test_derived_ipv6_collision_is_a_config_error():
    text = LAB + ('[hosts.a]\nsubnet = "s"\naddress6 = "fd00:9::c"\n'
                  '[hosts.b]\nsubnet = "s"\naddress4 = "10.0.0.12"\n')
    with pytest.raises(ConfigError) as ei:
        build_topology(loads_config(text))
    assert ei.value.field == "hosts.b.address6"


def test_many_enis_in_one_subnet_do_not_collide_with_hosts():
    fns = "".join(f'[functions.f{i}]\nsubnet_ids = ["app"]\nsecurity_group_ids = ["sg{i}"]\n'
                  f'[vpc.security_groups.sg{i}]\n' for i in range(9))
    hosts = "".join(f'[hosts.h{i}]\nsubnet = "app"\n' for i in range(3))
    topo = build_topology(loads_config('[vpc.subnets.app]\ncidr4 = "10.0.1.0/24"\n'
                                       + hosts + fns))
    addrs = [h.ipv4 for h in topo.hosts] + [e.ipv4 for e in topo.enis]
    assert len(addrs) == len(set(addrs)) == 12
    assert [h.ipv4 for h in topo.hosts] == ["10.0.1.10", "10.0.1.11", "10.0.1.12"]
    assert [e.ipv4 for e in topo.enis][-3:] == ["10.0.1.13", "10.0.1.14", "10.0.1.15"]
    assert len(topo.groups) == 9


def test_inside_without_ipv6():
    topo = build_topology(loads_config('[inside]\ncidr6 = ""\n[vpc.subnets.a]\n'
                                       'cidr4 = "10.0.1.0/24"\n[functions.f]\n'
                                       'subnet_ids = ["a"]\n'))
    f = topo.functions[0]
    assert f.ipv6 is None and f.gateway6 is None and topo.inside.gateway6 is None
    assert [r.family for r in topo.routes if r.ns == f.ns] == [4]


def test_addresses_are_inside_their_networks(topo):
    for f in topo.functions:
        assert ipaddress.ip_address(f.ipv4) in ipaddress.ip_network(topo.inside.cidr4)
        assert ipaddress.ip_address(f.ipv6) in ipaddress.ip_network(topo.inside.cidr6)
    for e in topo.enis:
        assert ipaddress.ip_address(e.ipv4) in ipaddress.ip_network(e.cidr4)


# -- security groups, compiled for the data plane ---------------------------------------------

SG_LAB = """
prefix = "sg"
[vpc.subnets.app]
cidr4 = "10.0.1.0/24"
cidr6 = "fd00:1::/64"
[vpc.subnets.data]
cidr4 = "10.0.2.0/24"
[vpc.security_groups.web]
egress = [
  { protocol = "tcp", port = 443, cidr4 = "0.0.0.0/0" },
  { protocol = "tcp", port = 443, cidr4 = "0.0.0.0/0", description = "twice: kept once" },
  { protocol = "udp", from_port = 1000, to_port = 2000, cidr6 = "fd00::/8" },
  { protocol = "all", security_group_id = "servers" },
]
[vpc.security_groups.db]
egress = [{ protocol = "tcp", port = 5432, security_group_id = "servers" }]
[vpc.security_groups.servers]
egress = []
[vpc.security_groups.open]
[hosts.s1]
subnet = "app"
security_group_ids = ["servers"]
[hosts.s2]
subnet = "data"
security_group_ids = ["servers"]
[hosts.other]
subnet = "app"
[functions.a]
subnet_ids = ["app"]
security_group_ids = ["web", "db"]
[functions.b]
subnet_ids = ["data"]
[functions.c]
subnet_ids = ["data"]
security_group_ids = ["open"]
"""


def test_security_groups_compile_to_compact_rules():
    from hyperplane.lab.secgroups import SgRule
    topo = build_topology(loads_config(SG_LAB))
    rules = topo.sg_rules()
    assert rules["web"] == (
        SgRule(6, 443, 443, 4, "0.0.0.0", 0),
        SgRule(17, 1000, 2000, 6, "fd00::", 8),
        SgRule(0, 0, 65535, 4, "10.0.1.10", 32),      # s1, both families
        SgRule(0, 0, 65535, 6, "fd00:1::a", 128),
        SgRule(0, 0, 65535, 4, "10.0.2.10", 32))      # s2, IPv4 only subnet
    assert rules["db"] == (SgRule(6, 5432, 5432, 4, "10.0.1.10", 32),
                           SgRule(6, 5432, 5432, 6, "fd00:1::a", 128),
                           SgRule(6, 5432, 5432, 4, "10.0.2.10", 32))
    assert rules["servers"] == ()
    assert rules["open"] == (SgRule(0, 0, 65535, 4, "0.0.0.0", 0),
                             SgRule(0, 0, 65535, 6, "::", 0))
    assert all(isinstance(x, tuple) and len(x) == 6 for r in rules.values() for x in r)
    st = topo.state()
    assert st.sg_rules() == rules
    a = st.group_rules("app|db,web")                  # an ENI's groups: the union
    assert set(a) == set(rules["web"]) | set(rules["db"])
    assert st.group_rules("data|") == rules["open"]   # no group: the default, allow all


def test_rules_decide_like_security_groups():
    st = build_topology(loads_config(SG_LAB)).state()
    a = st.group_rules("app|db,web")

    def allowed(proto, fam, dst, port):
        return any(r.allows(proto, fam, dst, port) for r in a)

    assert allowed(6, 4, "93.184.216.34", 443) and not allowed(6, 4, "93.184.216.34", 80)
    assert allowed(17, 6, "fd00:9::1", 1500) and not allowed(17, 6, "fd00:9::1", 999)
    assert allowed(17, 4, "10.0.1.10", 53)               # servers: every protocol
    assert allowed(1, 4, "10.0.2.10", 0)                  # ICMP to a server: "all"
    assert not allowed(6, 4, "10.0.1.11", 22)             # "other" is not in the group
    assert allowed(6, 4, "10.0.1.11", 443)


def test_rule_change_reaches_the_saved_state(tmp_path):
    st = build_topology(loads_config(SG_LAB)).state()
    st.save(tmp_path)
    assert LabState.load("sg", tmp_path).sg_rules() == st.sg_rules()


# -- the split: public names stay importable from topology ------------------------------------

def test_topology_reexports_names_and_state():
    from hyperplane import runfolder
    from hyperplane.lab import names, state, topology
    for n in ("ns_dataplane", "ns_function", "if_eni", "if_eni_peer", "is_lab_namespace", "mac",
              "IFNAMSIZ", "MAC_ENI", "ROLES"):
        assert getattr(topology, n) is getattr(names, n)
    for n in ("LabState", "EniInfo", "FunctionInfo", "GroupInfo", "HostInfo", "InsidePort",
              "NamespaceInfo", "SubnetInfo", "LabError"):
        assert getattr(topology, n) is getattr(state, n)
    assert topology.RUN_DIR is runfolder.RUN_DIR


# -- the examples ------------------------------------------------------------------------------

EXAMPLES = sorted((__import__("pathlib").Path(__file__).resolve().parents[2] / "examples")
                  .glob("*.toml"))


def test_examples_are_there():
    assert {p.name for p in EXAMPLES} >= {"default.toml", "dual-stack.toml",
                                          "many-functions.toml", "small-pool.toml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_builds_a_topology(path, tmp_path):
    from hyperplane.config import load_config
    cfg = load_config(path)
    topo = build_topology(cfg)
    assert len(topo.functions) == len(cfg.functions) >= 2
    assert len(topo.enis) == len({f.group_key for f in cfg.functions})
    for ns, ifname in topo.links():
        assert len(ifname) <= IFNAMSIZ
    st = topo.state()
    st.save(tmp_path)
    back = LabState.load(cfg.prefix, tmp_path)
    assert back == st and back.config == cfg
    for g in st.groups:
        assert st.group_rules(g.key) is not None
    for f in st.functions:                   # IPv6 only where every subnet is dual-stack
        if f.ipv6_allowed:
            assert all(st.subnet(s).dual_stack for s in f.subnets)


def test_example_specifics():
    from hyperplane.config import load_config
    by = {p.name: load_config(p) for p in EXAMPLES}
    ds = by["dual-stack.toml"]
    assert all(s.dual_stack for s in ds.subnets) and ds.function("frontend").ipv6
    sp = by["small-pool.toml"].hyperplane
    assert sp.ports_per_eni == 10 and sp.eni_limit == 4 and sp.flow_logs.interval_s == 1
    assert sp.metrics.enabled and "pkt-srcaddr" in sp.flow_logs.fields
    mf = by["many-functions.toml"]
    assert len(mf.functions) == 24 and any(len(f.subnet_ids) > 1 for f in mf.functions)
