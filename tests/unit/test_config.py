"""Configuration loading and validation (no root needed)."""

import json
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from hyperplane import natparams, vocab
from hyperplane.config import (ALLOW_ALL_EGRESS, DEFAULT_FLOW_LOG_FIELDS, DEFAULT_LAB_PATH,
                               MIN_PORTS_PER_ENI, Config, ConfigError, EgressRule,
                               default_config, eni_group_key, load_config, loads_config,
                               parse_config)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

BASE = """
prefix = "t1"
[vpc.subnets.app]
cidr4 = "10.0.1.0/24"
cidr6 = "fd00:1::/64"
[vpc.subnets.data]
cidr4 = "10.0.2.0/24"
[vpc.security_groups.sg]
[vpc.security_groups.sg-b]
[vpc.security_groups.sg-a]
"""


def cfg(extra: str = "", base: str = BASE) -> Config:
    return loads_config(base + extra)


def error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        loads_config(text)
    assert "\n" not in str(ei.value)                 # one line
    return ei.value


def fn(name="f", subnets='["app"]', extra=""):
    return f'\n[functions.{name}]\nsubnet_ids = {subnets}\nsecurity_group_ids = ["sg"]\n{extra}'


def test_default_config_is_the_documented_lab():
    c = default_config()
    assert c.prefix == "hp" and c.mtu == 1500 and c.vpc_id == "vpc-lab"
    assert c.inside.cidr4 == "10.200.0.0/24" and c.inside.cidr6 == "fd00:200::/64"
    hp = c.hyperplane
    assert c.nat is hp                                  # the old name still reads
    assert hp.profile == "aws" and hp.mapping == "endpoint-independent"
    assert hp.port_range == (536, 65535) and hp.ports_per_eni == 65000
    assert hp.capacity == 262144 and hp.eni_high_water == 0.9 and hp.eni_limit == 16
    assert hp.flow_logs.interval_s == 60 and hp.flow_logs.fields == DEFAULT_FLOW_LOG_FIELDS
    assert not hp.metrics.enabled
    assert [s.name for s in c.subnets] == ["app", "data"]
    assert c.subnet("app").dual_stack and not c.subnet("data").dual_stack
    assert [(h.name, h.subnet) for h in c.hosts] == [("web", "app"), ("db", "data")]
    assert [f.name for f in c.functions] == ["api", "worker", "report"]
    api, worker, report = c.functions
    assert api.ipv6_allowed_for_dual_stack and api.ipv6 and not worker.ipv6
    assert api.subnet_ids == api.subnets == ("app",)
    assert api.group_key == worker.group_key == "app|sg-web"
    assert report.group_key == "data|sg-db"
    assert c.security_group("sg-web").egress == ALLOW_ALL_EGRESS
    assert c.security_group("sg-database").egress == ()
    assert c.security_group("sg-db").egress[0] == EgressRule(
        "tcp", 5432, 5432, security_group_id="sg-database")


def test_default_lab_file_is_package_data_and_an_example():
    assert DEFAULT_LAB_PATH.name == "default_lab.toml" and DEFAULT_LAB_PATH.exists()
    assert load_config(DEFAULT_LAB_PATH) == default_config()
    assert load_config(EXAMPLES / "default.toml") == default_config()


def test_default_config_with_prefix():
    assert default_config("t9z").prefix == "t9z"
    with pytest.raises(ConfigError) as ei:
        default_config("TOOLONG")
    assert ei.value.field == "prefix"


def test_typed_value_is_frozen():
    c = default_config()
    with pytest.raises(FrozenInstanceError):
        c.prefix = "x"
    with pytest.raises(FrozenInstanceError):
        c.hyperplane.capacity = 1
    with pytest.raises(TypeError):
        c.hyperplane.timeouts["ESTABLISHED"] = 1


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_round_trip_through_the_saved_form(path):
    c = load_config(path)
    d = json.loads(json.dumps(c.to_dict()))             # as the lab state stores it
    back = Config.from_dict(d)
    assert back == c
    assert type(back.functions) is tuple and type(back.hyperplane.port_range) is tuple
    assert type(back.security_groups[0].egress) is tuple


def test_minimal_config_takes_defaults():
    c = loads_config("")
    assert c.prefix == "hp" and c.subnets == () and c.functions == ()
    assert c.hyperplane.port_range == (536, 65535)


def test_security_groups_are_a_sorted_set():
    c = cfg('[functions.a]\nsubnet_ids = ["app"]\nsecurity_group_ids = ["sg-b", "sg-a", "sg-b"]\n'
            '[functions.b]\nsubnet_ids = ["app", "data"]\nsecurity_group_ids = ["sg-a", "sg-b"]\n')
    a, b = c.functions
    assert a.security_group_ids == ("sg-a", "sg-b")
    assert a.group_key == b.group_key == "app|sg-a,sg-b"   # first subnet decides the ENI
    assert eni_group_key("x", []) == "x|"


def test_timeouts_override():
    c = cfg('[hyperplane]\nprofile = "rfc"\n[hyperplane.timeouts]\nESTABLISHED = 432000\n')
    assert c.hyperplane.profile == "rfc" and c.hyperplane.timeouts == {"ESTABLISHED": 432000}
    assert c.nat_args()["timeouts"] == {"ESTABLISHED": 432000}


def test_ports_per_eni_is_a_range_from_536():
    c = cfg("[hyperplane]\nports_per_eni = 10\n")
    assert c.hyperplane.port_range == (536, 545) and c.hyperplane.ports_per_eni == 10


def test_quotas_default_to_a_share_and_can_be_set_per_function():
    c = cfg('[hyperplane]\ncapacity = 1000\nport_range = [1000, 1099]\n'
            '[hyperplane.quotas]\nconnections_share = 0.25\n'
            + fn("a") + fn("b", extra="max_connections = 900\nmax_ports_per_pool = 100\n"))
    a, b = c.functions
    assert (a.max_connections, a.max_ports_per_pool) == (250, 50)    # 0.25 and the 0.5 default
    assert (b.max_connections, b.max_ports_per_pool) == (900, 100)
    c = cfg('[hyperplane]\ncapacity = 1\n' + fn())
    assert c.functions[0].max_connections == 1                       # never below one


def test_flow_log_format_and_metrics():
    c = cfg('[hyperplane.flow_logs]\nformat = "${version} ${pkt-srcaddr} ${tcp-flags}"\n'
            'interval_s = 1\nfolder = "/tmp/fl"\n[hyperplane.metrics]\nenabled = true\n'
            'port = 9999\n')
    fl = c.hyperplane.flow_logs
    assert fl.fields == ("version", "pkt-srcaddr", "tcp-flags") and fl.interval_s == 1
    assert fl.format == "${version} ${pkt-srcaddr} ${tcp-flags}" and fl.folder == "/tmp/fl"
    assert c.hyperplane.metrics.enabled and c.hyperplane.metrics.port == 9999


def test_flow_logs_and_metrics_take_their_defaults_from_the_config(tmp_path):
    """One typed value: the flow-log writer and the metrics endpoint default to the config's
    own defaults, with no options type of their own."""
    from hyperplane import flowlog, metrics
    fl = default_config().hyperplane.flow_logs
    w = flowlog.FlowLogWriter(tmp_path)
    assert (w.format.fields, w.max_bytes, w.keep) == (fl.fields, fl.max_bytes, fl.keep)
    assert flowlog.Context().account_id == fl.account_id
    srv = metrics.MetricsServer(lambda: "", port=0)
    srv.httpd.server_close()
    assert srv.httpd.server_address[0] == default_config().hyperplane.metrics.address


def test_egress_rules():
    c = cfg('[vpc.security_groups.r]\negress = [\n'
            '  { protocol = "tcp", port = 443, cidr4 = "0.0.0.0/0" },\n'
            '  { protocol = "udp", from_port = 1000, to_port = 2000, cidr6 = "::/0" },\n'
            '  { protocol = "udp", from_port = 53, cidr4 = "10.0.0.0/8" },\n'
            '  { protocol = "all", security_group_id = "sg" },\n'
            '  { protocol = "tcp", cidr4 = "10.0.0.0/8", description = "any tcp port" },\n]\n')
    r = c.security_group("r").egress
    assert [(x.proto, x.from_port, x.to_port) for x in r] == [
        (6, 443, 443), (17, 1000, 2000), (17, 53, 53), (0, 0, 65535), (6, 0, 65535)]
    assert (r[0].cidr4, r[1].cidr6, r[3].security_group_id) == ("0.0.0.0/0", "::/0", "sg")


def test_error_names_file_field_and_problem():
    e = error('[vpc.subnets.a]\ncidr4 = "10.0.0.0/33"\n')
    assert e.field == "vpc.subnets.a.cidr4"
    assert "not an IPv4 network" in e.problem
    assert str(e).startswith("vpc.subnets.a.cidr4: ")
    with pytest.raises(ConfigError) as ei:
        loads_config("mtu = 1", source="lab.toml")
    assert str(ei.value).startswith("lab.toml: mtu: ")


def test_the_briefs_example_message():
    e = error(BASE + '[functions.api]\nsubnet_ids = ["app", "x"]\n')
    assert str(e) == "functions.api.subnet_ids[1]: unknown subnet 'x' (subnets: app, data)"


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as ei:
        load_config(tmp_path / "nope.toml")
    assert ei.value.field == "file" and "cannot read" in ei.value.problem


def test_bad_toml(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("prefix = \n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert ei.value.field == "toml" and str(p) in str(ei.value)


def test_not_utf8(tmp_path):
    p = tmp_path / "latin1.toml"
    p.write_bytes('prefix = "hp"\n# caf\u00e9\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert ei.value.field == "file"
    assert str(ei.value) == f"{p}: file: not UTF-8 text (byte 0xe9 on line 2); save it as UTF-8"


def test_capacity_bound_is_shared_with_the_core():
    assert vocab.MAX_CAPACITY == 1 << 26
    c = cfg(f"[hyperplane]\ncapacity = {vocab.MAX_CAPACITY}\n")
    assert c.hyperplane.capacity == vocab.MAX_CAPACITY
    assert natparams.resolve(**c.nat_args()).capacity == vocab.MAX_CAPACITY   # same bound
    e = error(f"[hyperplane]\ncapacity = {vocab.MAX_CAPACITY + 1}\n")
    assert e.field == "hyperplane.capacity" and f"1..{vocab.MAX_CAPACITY}" in e.problem
    with pytest.raises(ValueError, match=str(vocab.MAX_CAPACITY)):
        natparams.resolve(capacity=vocab.MAX_CAPACITY + 1)
    e = error("[hyperplane]\ncapacity = 2147483648\n")        # the 2**31
    assert e.field == "hyperplane.capacity"


def test_core_bound_agrees_when_built():
    core = pytest.importorskip("hyperplane._core")
    if hasattr(core, "MAX_CAPACITY"):
        assert core.MAX_CAPACITY == vocab.MAX_CAPACITY
    assert core.MAX_ENIS == vocab.MAX_ENIS
    with pytest.raises(ValueError):
        core.Nat(capacity=vocab.MAX_CAPACITY + 1)


def test_timeout_bound_is_shared_with_the_core():
    cfg(f"[hyperplane.timeouts]\nESTABLISHED = {vocab.MAX_TIMEOUT_S}\n")
    e = error(f"[hyperplane.timeouts]\nESTABLISHED = {vocab.MAX_TIMEOUT_S + 1}\n")
    assert e.field == "hyperplane.timeouts.ESTABLISHED"
    with pytest.raises(ValueError):
        natparams.resolve(timeouts={"ESTABLISHED": vocab.MAX_TIMEOUT_S + 1})
    assert vocab.MAX_TIMEOUT_S * 1000 < 2**32


def test_smallest_port_range():
    lo = 60000
    c = cfg(f"[hyperplane]\nport_range = [{lo}, {lo + MIN_PORTS_PER_ENI - 1}]\n")
    assert c.hyperplane.ports_per_eni == MIN_PORTS_PER_ENI == 4
    e = error(f"[hyperplane]\nport_range = [{lo}, {lo + MIN_PORTS_PER_ENI - 2}]\n")
    assert e.field == "hyperplane.port_range" and "at least 4" in e.problem
    e = error("[hyperplane]\nport_range = [7000, 7000]\n")      # the one-port range
    assert e.field == "hyperplane.port_range"


@pytest.mark.parametrize("text, field, words", [
    ('prefix = "hyper"', "prefix", "1-4 characters"),
    ('prefix = "H"', "prefix", "1-4 characters"),
    ('prefix = 7', "prefix", "must be a string"),
    ('mtu = 100', "mtu", "out of range"),
    ('mtu = "big"', "mtu", "must be an integer"),
    ('colour = "blue"', "colour", "unknown setting"),
    ('[inside]\ncidr4 = "10.200.0.0"', "inside.cidr4", "prefix length"),
    ('[inside]\ncidr4 = "10.200.0.1/24"', "inside.cidr4", "did you mean 10.200.0.0/24"),
    ('[inside]\ncidr4 = "fd00::/64"', "inside.cidr4", "not an IPv4 network"),
    ('[inside]\ncidr6 = "10.0.0.0/8"', "inside.cidr6", "not an IPv6 network"),
    ('[inside]\ncidr = "10.0.0.0/8"', "inside.cidr", "unknown setting"),
    ('[vpc]\nid = "my-vpc"', "vpc.id", "vpc-NAME"),
    ('[vpc]\nsubnet = 1', "vpc.subnet", "unknown setting"),
    ('[hyperplane]\nprofile = "linux"', "hyperplane.profile", "aws, rfc"),
    ('[hyperplane]\nmapping = "symmetric"', "hyperplane.mapping", "endpoint-independent"),
    ('[hyperplane]\nport_range = [1000]', "hyperplane.port_range", "[low, high]"),
    ('[hyperplane]\nport_range = [2000, 1000]', "hyperplane.port_range", "above high"),
    ('[hyperplane]\nport_range = [0, 1000]', "hyperplane.port_range[0]", "out of range"),
    ('[hyperplane]\nports_per_eni = 3', "hyperplane.ports_per_eni", "out of range 4..65000"),
    ('[hyperplane]\nports_per_eni = 10\nport_range = [1, 10]', "hyperplane.ports_per_eni",
     "not both"),
    ('[hyperplane]\ncapacity = 0', "hyperplane.capacity", "out of range"),
    ('[hyperplane]\ncapacity = true', "hyperplane.capacity", "must be an integer"),
    ('[hyperplane]\neni_high_water = 0', "hyperplane.eni_high_water", "above 0"),
    ('[hyperplane]\neni_high_water = 1.5', "hyperplane.eni_high_water", "at most 1"),
    ('[hyperplane]\neni_high_water = "high"', "hyperplane.eni_high_water", "a number"),
    ('[hyperplane]\neni_limit = 0', "hyperplane.eni_limit", "out of range 1..64"),
    ('[hyperplane]\neni_limit = 65', "hyperplane.eni_limit", "out of range 1..64"),
    ('[hyperplane]\neni_idle_reclaim_s = 0', "hyperplane.eni_idle_reclaim_s", "out of range"),
    ('[hyperplane]\nnat = 1', "hyperplane.nat", "unknown setting"),
    ('[hyperplane.timeouts]\nFOREVER = 5', "hyperplane.timeouts.FOREVER", "unknown state"),
    ('[hyperplane.timeouts]\nESTABLISHED = -5', "hyperplane.timeouts.ESTABLISHED",
     "out of range"),
    ('[hyperplane.quotas]\nconnections_share = 0', "hyperplane.quotas.connections_share",
     "above 0"),
    ('[hyperplane.quotas]\nports_share = 2', "hyperplane.quotas.ports_share", "at most 1"),
    ('[hyperplane.quotas]\nshare = 2', "hyperplane.quotas.share", "unknown setting"),
    ('[hyperplane.flow_logs]\ninterval_s = 0', "hyperplane.flow_logs.interval_s",
     "out of range 1..600"),
    ('[hyperplane.flow_logs]\nfolder = "logs"', "hyperplane.flow_logs.folder", "absolute"),
    ('[hyperplane.flow_logs]\nenabled = "yes"', "hyperplane.flow_logs.enabled", "true or false"),
    ('[hyperplane.flow_logs]\nformat = "${version} ${colour}"', "hyperplane.flow_logs.format",
     "unknown field 'colour'"),
    ('[hyperplane.flow_logs]\nformat = "version srcaddr"', "hyperplane.flow_logs.format",
     "not a field like"),
    ('[hyperplane.flow_logs]\nformat = ""', "hyperplane.flow_logs.format", "is empty"),
    ('[hyperplane.flow_logs]\nmax_bytes = 100', "hyperplane.flow_logs.max_bytes",
     "out of range"),
    ('[hyperplane.flow_logs]\nkeep = 0', "hyperplane.flow_logs.keep", "out of range"),
    ('[hyperplane.flow_logs]\naccount_id = "12"', "hyperplane.flow_logs.account_id",
     "12 digits"),
    ('[hyperplane.flow_logs]\ninterval = 1', "hyperplane.flow_logs.interval",
     "unknown setting"),
    ('[hyperplane.metrics]\nport = 70000', "hyperplane.metrics.port", "out of range"),
    ('[hyperplane.metrics]\nenabled = 1', "hyperplane.metrics.enabled", "true or false"),
    ('[hyperplane.metrics]\naddress = "0.0.0.0"', "hyperplane.metrics.address",
     "unknown setting"),
    ('[vpc.subnets.a]\ncidr6 = "fd00::/64"', "vpc.subnets.a.cidr4", "missing"),
    ('[vpc.subnets.A_b]\ncidr4 = "10.0.0.0/24"', "vpc.subnets.A_b", "a-z"),
    ('[vpc.subnets.a]\ncidr4 = "10.0.0.0/29"', "vpc.subnets.a.cidr4", "/28"),
    ('[vpc.subnets.a]\ncidr4 = "10.0.0.0/24"\ncidr6 = "fd00::/125"', "vpc.subnets.a.cidr6",
     "/124"),
    ('[vpc.subnets.a]\ncidr4 = "10.0.0.0/24"\nzone = "x"', "vpc.subnets.a.zone",
     "unknown setting"),
    ('vpc = 3', "vpc", "must be a table"),
    ('[vpc.security_groups."a b"]', 'vpc.security_groups.a b', "security group id"),
])
def test_field_errors(text, field, words):
    e = error(text)
    assert e.field == field, str(e)
    assert words in e.problem, str(e)


def rule(body: str) -> str:
    return f'[vpc.security_groups.r]\negress = [{{ {body} }}]\n'


@pytest.mark.parametrize("extra, field, words", [
    ('[vpc.subnets.x]\ncidr4 = "10.0.1.128/25"', "vpc.subnets.x.cidr4", "overlaps subnet 'app'"),
    ('[vpc.subnets.x]\ncidr4 = "10.0.9.0/24"\ncidr6 = "fd00:1::/48"', "vpc.subnets.x.cidr6",
     "overlaps subnet 'app'"),
    ('[inside]\ncidr4 = "10.0.0.0/16"', "inside.cidr4", "overlaps subnet 'app'"),
    ('[inside]\ncidr6 = "fd00::/16"', "inside.cidr6", "overlaps subnet 'app'"),
    ('[hosts.h]\nsubnet = "nope"', "hosts.h.subnet", "unknown subnet 'nope'"),
    ('[hosts.h]\naddress4 = "10.0.1.20"', "hosts.h.subnet", "missing"),
    ('[hosts.h]\nsubnet = "app"\naddress4 = "10.0.2.5"', "hosts.h.address4",
     "not in subnet 'app'"),
    ('[hosts.h]\nsubnet = "app"\naddress4 = "10.0.1.2"', "hosts.h.address4", "reserved"),
    ('[hosts.h]\nsubnet = "app"\naddress4 = "10.0.1.255"', "hosts.h.address4", "reserved"),
    ('[hosts.h]\nsubnet = "app"\naddress4 = "fd00:1::5"', "hosts.h.address4",
     "not an IPv4 address"),
    ('[hosts.h]\nsubnet = "data"\naddress6 = "fd00:1::5"', "hosts.h.address6", "has no cidr6"),
    ('[hosts.h]\nsubnet = "app"\naddress4 = "10.0.1.20"\n'
     '[hosts.g]\nsubnet = "app"\naddress4 = "10.0.1.20"', "hosts.g.address4",
     "already used by hosts.h"),
    ('[hosts.h]\nsubnet = "app"\nsecurity_group_ids = ["nope"]',
     "hosts.h.security_group_ids[0]", "unknown security group 'nope'"),
    (fn(subnets='["nope"]'), "functions.f.subnet_ids[0]", "unknown subnet 'nope'"),
    (fn(subnets='[]'), "functions.f.subnet_ids", "non-empty list"),
    (fn(subnets='"app"'), "functions.f.subnet_ids", "non-empty list"),
    (fn(subnets='["app", "app"]'), "functions.f.subnet_ids[1]", "twice"),
    (fn(subnets='["app", 3]'), "functions.f.subnet_ids[1]", "must be a string"),
    ('[functions.f]\nsecurity_group_ids = ["sg"]', "functions.f.subnet_ids", "missing"),
    (fn(name="Bad_Name"), "functions.Bad_Name", "a-z"),
    ('[hosts.x]\nsubnet = "app"' + fn(name="x"), "functions.x", "also a host"),
    ('[functions.f]\nsubnet_ids = ["app"]\nsecurity_group_ids = "sg"',
     "functions.f.security_group_ids", "list"),
    ('[functions.f]\nsubnet_ids = ["app"]\nsecurity_group_ids = ["a b"]',
     "functions.f.security_group_ids[0]", "characters"),
    ('[functions.f]\nsubnet_ids = ["app"]\nsecurity_group_ids = ["sg-x"]',
     "functions.f.security_group_ids[0]", "unknown security group 'sg-x'"),
    (fn(extra="ipv6_allowed_for_dual_stack = \"yes\""),
     "functions.f.ipv6_allowed_for_dual_stack", "true or false"),
    (fn(subnets='["app", "data"]', extra="ipv6_allowed_for_dual_stack = true"),
     "functions.f.ipv6_allowed_for_dual_stack", "Ipv6AllowedForDualStack"),
    (fn(extra='runtime = "python"'), "functions.f.runtime", "unknown setting"),
    (fn(extra="subnets = [\"app\"]"), "functions.f.subnets", "unknown setting"),
    (fn(extra="max_connections = 0"), "functions.f.max_connections", "out of range"),
    (fn(extra="max_connections = 262145"), "functions.f.max_connections",
     "out of range 1..262144"),
    (fn(extra="max_ports_per_pool = 65001"), "functions.f.max_ports_per_pool",
     "out of range 1..65000"),
    (rule('protocol = "icmp", cidr4 = "0.0.0.0/0"'), "vpc.security_groups.r.egress[0].protocol",
     "tcp, udp, all"),
    (rule('cidr4 = "0.0.0.0/0"'), "vpc.security_groups.r.egress[0].protocol", "missing"),
    (rule('protocol = "all", port = 80, cidr4 = "0.0.0.0/0"'),
     "vpc.security_groups.r.egress[0].port", "leave ports out"),
    (rule('protocol = "tcp", port = 80, from_port = 80, cidr4 = "0.0.0.0/0"'),
     "vpc.security_groups.r.egress[0].port", "not both"),
    (rule('protocol = "tcp", port = 70000, cidr4 = "0.0.0.0/0"'),
     "vpc.security_groups.r.egress[0].port", "out of range"),
    (rule('protocol = "tcp", from_port = 90, to_port = 80, cidr4 = "0.0.0.0/0"'),
     "vpc.security_groups.r.egress[0].from_port", "above to_port 80"),
    (rule('protocol = "tcp", port = 80'), "vpc.security_groups.r.egress[0]",
     "exactly one destination"),
    (rule('protocol = "tcp", port = 80, cidr4 = "0.0.0.0/0", cidr6 = "::/0"'),
     "vpc.security_groups.r.egress[0]", "has cidr4, cidr6"),
    (rule('protocol = "tcp", port = 80, cidr4 = "10.0.0.1/8"'),
     "vpc.security_groups.r.egress[0].cidr4", "host bits"),
    (rule('protocol = "tcp", port = 80, cidr6 = "10.0.0.0/8"'),
     "vpc.security_groups.r.egress[0].cidr6", "not an IPv6 network"),
    (rule('protocol = "tcp", port = 80, security_group_id = "sg-nope"'),
     "vpc.security_groups.r.egress[0].security_group_id", "unknown security group 'sg-nope'"),
    (rule('protocol = "tcp", port = 80, cidr4 = "0.0.0.0/0", action = "deny"'),
     "vpc.security_groups.r.egress[0].action", "unknown setting"),
    ('[vpc.security_groups.r]\negress = "all"', "vpc.security_groups.r.egress",
     "a list of rules"),
    ('[vpc.security_groups.r]\ningress = []', "vpc.security_groups.r.ingress",
     "unknown setting"),
])
def test_cross_field_errors(extra, field, words):
    e = error(BASE + extra)
    assert e.field == field, str(e)
    assert words in e.problem, str(e)


def test_lambda_limits_subnets_and_security_groups():
    many = "".join(f'[vpc.subnets.s{i}]\ncidr4 = "10.1.{i}.0/28"\n' for i in range(17))
    groups = "".join(f"[vpc.security_groups.g{i}]\n" for i in range(6))
    ids = [f'"s{i}"' for i in range(17)]
    sgs = [f'"g{i}"' for i in range(6)]
    ok = f'[functions.f]\nsubnet_ids = [{", ".join(ids[:16])}]\n' \
         f'security_group_ids = [{", ".join(sgs[:5])}]\n'
    assert len(loads_config(many + groups + ok).functions[0].subnet_ids) == 16
    e = error(many + groups + f'[functions.f]\nsubnet_ids = [{", ".join(ids)}]\n')
    assert e.field == "functions.f.subnet_ids" and "at most 16" in e.problem
    e = error(many + groups + f'[functions.f]\nsubnet_ids = ["s0"]\n'
                              f'security_group_ids = [{", ".join(sgs)}]\n')
    assert e.field == "functions.f.security_group_ids" and "at most 5" in e.problem


def test_at_most_60_egress_rules():
    rules = ", ".join(f'{{ protocol = "tcp", port = {p}, cidr4 = "0.0.0.0/0" }}'
                      for p in range(61))
    e = error(f"[vpc.security_groups.r]\negress = [{rules}]\n")
    assert e.field == "vpc.security_groups.r.egress" and "at most 60" in e.problem


def test_ipv6_function_needs_inside_cidr6():
    e = error(BASE + '[inside]\ncidr6 = ""\n' + fn(extra="ipv6_allowed_for_dual_stack = true"))
    assert e.field == "functions.f.ipv6_allowed_for_dual_stack" and "inside.cidr6" in e.problem
    c = cfg('[inside]\ncidr6 = ""\n' + fn())
    assert c.inside.cidr6 is None


def test_ipv6_function_in_dual_stack_subnets_is_fine():
    c = cfg(fn(extra="ipv6_allowed_for_dual_stack = true"))
    assert c.functions[0].ipv6_allowed_for_dual_stack


def test_too_many_functions_for_the_inside_network():
    fns = "".join(fn(name=f"f{i}") for i in range(5))
    e = error(BASE + '[inside]\ncidr4 = "10.200.0.0/28"\n' + fns)
    assert e.field == "inside.cidr4"
    assert "room for 4 functions" in e.problem and "has 5" in e.problem
    cfg('[inside]\ncidr4 = "10.200.0.0/28"\n' + "".join(fn(name=f"f{i}") for i in range(4)))


def test_subnet_too_small_for_hosts_and_enis():
    small = 'prefix = "t"\n[vpc.subnets.s]\ncidr4 = "10.0.0.0/28"\n' \
            '[vpc.security_groups.g0]\n[vpc.security_groups.g1]\n'
    # a /28 holds .4 .. .14: 11 addresses, hosts take .10 up unless given one
    hosts = "".join(f'[hosts.h{i}]\nsubnet = "s"\n' for i in range(5))
    fixed = "".join(f'[hosts.x{i}]\nsubnet = "s"\naddress4 = "10.0.0.{i + 4}"\n'
                    for i in range(5))
    fns = [f'[functions.f{i}]\nsubnet_ids = ["s"]\nsecurity_group_ids = ["g{i}"]\n'
           for i in range(2)]
    loads_config(small + hosts + fns[0])
    loads_config(small + hosts + fixed + fns[0])
    e = error(small + hosts + fixed + "".join(fns))
    assert e.field == "vpc.subnets.s.cidr4" and "room for 11" in e.problem
    e = error(small + hosts + '[hosts.h5]\nsubnet = "s"\n')
    assert e.field == "vpc.subnets.s.cidr4" and "room for 5 hosts from .10" in e.problem


# -- the first layout --------------------------------------------------------------------------

OLD = """
prefix = "t1"
[nat]
port_range = [60000, 60003]
capacity = 1000
[nat.timeouts]
ESTABLISHED = 100
[[subnets]]
name = "app"
cidr4 = "10.0.1.0/24"
cidr6 = "fd00:1::/64"
[[hosts]]
name = "web"
subnet = "app"
[[functions]]
name = "api"
subnets = ["app"]
security_groups = ["sg-web", "sg-x"]
ipv6 = true
[[functions]]
name = "worker"
subnets = ["app"]
"""


def test_first_layout_is_converted():
    c = loads_config(OLD)
    assert c.hyperplane.port_range == (60000, 60003) and c.hyperplane.capacity == 1000
    assert c.hyperplane.timeouts == {"ESTABLISHED": 100}
    assert [s.name for s in c.subnets] == ["app"] and c.hosts[0].name == "web"
    api, worker = c.functions
    assert api.subnet_ids == ("app",) and api.security_group_ids == ("sg-web", "sg-x")
    assert api.ipv6_allowed_for_dual_stack and not worker.ipv6_allowed_for_dual_stack
    assert worker.security_group_ids == ()
    # every group a function named exists, with AWS's default egress
    assert [g.id for g in c.security_groups] == ["sg-web", "sg-x"]
    assert all(g.egress == ALLOW_ALL_EGRESS for g in c.security_groups)


def test_first_layout_errors_name_the_new_field_and_say_so():
    e = error(OLD + '[[functions]]\nname = "f"\nsubnets = ["nope"]\n')
    assert e.field == "functions.f.subnet_ids[0]" and "old layout" in e.problem
    e = error(OLD + '[hyperplane]\ncapacity = 5\n')
    assert e.field == "nat" and "[hyperplane]" in e.problem
    e = error('[[subnets]]\ncidr4 = "10.0.0.0/24"\n')
    assert e.field == "subnets[0].name" and "missing" in e.problem
    e = error('[[subnets]]\nname = "a"\ncidr4 = "10.0.0.0/24"\n[[subnets]]\nname = "a"\n'
              'cidr4 = "10.0.1.0/24"\n')
    assert e.field == "subnets[1].name" and "already" in e.problem
    e = error('subnets = 3')
    assert e.field == "subnets" and "array of tables" in e.problem
    e = error('[vpc.subnets.a]\ncidr4 = "10.0.0.0/24"\n[[subnets]]\nname = "b"\n'
              'cidr4 = "10.0.1.0/24"\n')
    assert e.field == "subnets" and "[vpc.subnets.NAME]" in e.problem


def test_saved_first_layout_state_still_loads():
    """A lab state written before the typed config held Config.to_dict() of the first layout."""
    from hyperplane.lab.state import _config
    old = {"prefix": "hp", "mtu": 1500, "inside": {"cidr4": "10.200.0.0/24"},
           "nat": {"profile": "aws", "mapping": "endpoint-independent",
                   "port_range": [536, 65535], "capacity": 262144, "timeouts": {}},
           "subnets": [{"name": "app", "cidr4": "10.0.1.0/24"}], "hosts": [],
           "functions": [{"name": "api", "subnets": ["app"], "security_groups": ["sg-web"],
                          "ipv6": False}]}
    c = _config(old)
    assert c.function("api").group_key == "app|sg-web" and c.hyperplane.capacity == 262144
    assert parse_config(old) == c


def test_forwarding_scheduling_defaults_to_fair_without_a_busy_poll():
    fw = default_config().hyperplane.forwarding
    assert (fw.scheduling, fw.cpus, fw.spin_us, fw.weight) == ("fair", (), 0, 100)
    c = cfg('[hyperplane.forwarding]\nscheduling = "realtime"\ncpus = [3, 1]\nspin_us = 50\n')
    fw = c.hyperplane.forwarding
    assert (fw.scheduling, fw.cpus, fw.spin_us) == ("realtime", (1, 3), 50)


def test_a_busy_poll_needs_cpus_of_its_own():
    """Spinning on a shared CPU takes it from the generator, function or test beside it."""
    base = BASE + "[hyperplane.forwarding]\n"
    assert "cpus" in str(error(base + "spin_us = 50\n"))
    assert "hyperplane.forwarding.scheduling" in str(error(base + 'scheduling = "spin"\n'))
    assert "twice" in str(error(base + "cpus = [1, 1]\n"))
    assert "hyperplane.forwarding.weight" in str(error(base + "weight = 0\n"))
