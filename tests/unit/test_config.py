"""Configuration loading and validation (no root needed)."""

import pytest

from hyperplane.config import (DEFAULT_LAB_PATH, Config, ConfigError, default_config,
                               eni_group_key, load_config, loads_config, parse_config)

BASE = """
prefix = "t1"
[[subnets]]
name = "app"
cidr4 = "10.0.1.0/24"
cidr6 = "fd00:1::/64"
[[subnets]]
name = "data"
cidr4 = "10.0.2.0/24"
"""


def cfg(extra: str = "", base: str = BASE) -> Config:
    return loads_config(base + extra)


def error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        loads_config(text)
    return ei.value


def test_default_config_is_the_documented_lab():
    c = default_config()
    assert c.prefix == "hp"
    assert c.mtu == 1500
    assert c.inside.cidr4 == "10.200.0.0/24" and c.inside.cidr6 == "fd00:200::/64"
    assert c.nat.profile == "aws" and c.nat.mapping == "endpoint-independent"
    assert c.nat.port_range == (536, 65535) and c.nat.ports_per_eni == 65000
    assert c.nat.capacity == 262144
    assert [s.name for s in c.subnets] == ["app", "data"]
    assert c.subnet("app").dual_stack and not c.subnet("data").dual_stack
    assert [(h.name, h.subnet) for h in c.hosts] == [("web", "app"), ("db", "data")]
    assert [f.name for f in c.functions] == ["api", "worker", "report"]
    api, worker, report = c.functions
    assert api.ipv6 and not worker.ipv6
    assert api.group_key == worker.group_key == "app|sg-web"
    assert report.group_key == "data|sg-db"


def test_default_lab_file_is_package_data():
    assert DEFAULT_LAB_PATH.name == "default_lab.toml" and DEFAULT_LAB_PATH.exists()
    assert load_config(DEFAULT_LAB_PATH) == default_config()


def test_default_config_with_prefix():
    assert default_config("t9z").prefix == "t9z"
    with pytest.raises(ConfigError) as ei:
        default_config("TOOLONG")
    assert ei.value.field == "prefix"


def test_round_trip_through_dict():
    c = default_config()
    assert parse_config(c.to_dict()) == c


def test_minimal_config_takes_defaults():
    c = loads_config("")
    assert c.prefix == "hp" and c.subnets == () and c.functions == ()
    assert c.nat.port_range == (536, 65535)


def test_security_groups_are_a_sorted_set():
    c = cfg("""
[[functions]]
name = "a"
subnets = ["app"]
security_groups = ["sg-b", "sg-a", "sg-b"]
[[functions]]
name = "b"
subnets = ["app", "data"]
security_groups = ["sg-a", "sg-b"]
""")
    a, b = c.functions
    assert a.security_groups == ("sg-a", "sg-b")
    assert a.group_key == b.group_key == "app|sg-a,sg-b"   # first subnet decides the ENI
    assert eni_group_key("x", []) == "x|"


def test_nat_timeouts_override():
    c = cfg("[nat]\nprofile = \"rfc\"\n[nat.timeouts]\nESTABLISHED = 432000\n")
    assert c.nat.profile == "rfc" and c.nat.timeouts == {"ESTABLISHED": 432000}


def test_error_names_file_field_and_problem():
    e = error('prefix = "hp"\n[[subnets]]\nname = "a"\ncidr4 = "10.0.0.0/33"\n')
    assert e.field == "subnets[0].cidr4"
    assert "not an IPv4 network" in e.problem
    assert str(e).startswith("subnets[0].cidr4: ")
    with pytest.raises(ConfigError) as ei:
        loads_config("mtu = 1", source="lab.toml")
    assert str(ei.value).startswith("lab.toml: mtu: ")


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


FUNC = '\n[[functions]]\nname = "{name}"\nsubnets = {subnets}\nsecurity_groups = ["sg"]\n'


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
    ('[nat]\nprofile = "linux"', "nat.profile", "aws, rfc"),
    ('[nat]\nmapping = "symmetric"', "nat.mapping", "endpoint-independent"),
    ('[nat]\nport_range = [1000]', "nat.port_range", "[low, high]"),
    ('[nat]\nport_range = [2000, 1000]', "nat.port_range", "above high"),
    ('[nat]\nport_range = [0, 1000]', "nat.port_range[0]", "out of range"),
    ('[nat]\ncapacity = 0', "nat.capacity", "out of range"),
    ('[nat]\ncapacity = true', "nat.capacity", "must be an integer"),
    ('[nat.timeouts]\nFOREVER = 5', "nat.timeouts.FOREVER", "unknown state"),
    ('[nat.timeouts]\nESTABLISHED = -5', "nat.timeouts.ESTABLISHED", "out of range"),
    ('[[subnets]]\nname = "a"', "subnets[0].cidr4", "missing"),
    ('[[subnets]]\ncidr4 = "10.0.0.0/24"', "subnets[0].name", "missing"),
    ('[[subnets]]\nname = "A b"\ncidr4 = "10.0.0.0/24"', "subnets[0].name", "a-z"),
    ('[[subnets]]\nname = "a"\ncidr4 = "10.0.0.0/29"', "subnets[0].cidr4", "/28"),
    ('subnets = 3', "subnets", "array of tables"),
])
def test_field_errors(text, field, words):
    e = error(text)
    assert e.field == field, str(e)
    assert words in e.problem, str(e)


@pytest.mark.parametrize("extra, field, words", [
    ('[[subnets]]\nname = "app"\ncidr4 = "10.0.9.0/24"', "subnets[2].name", "already the name"),
    ('[[subnets]]\nname = "x"\ncidr4 = "10.0.1.128/25"', "subnets[2].cidr4", "overlaps subnets[0]"),
    ('[[subnets]]\nname = "x"\ncidr4 = "10.0.9.0/24"\ncidr6 = "fd00:1::/48"',
     "subnets[2].cidr6", "overlaps"),
    ('[[hosts]]\nname = "h"\nsubnet = "nope"', "hosts[0].subnet", "no subnet named 'nope'"),
    ('[[hosts]]\nname = "h"', "hosts[0].subnet", "missing"),
    ('[[hosts]]\nname = "h"\nsubnet = "app"\n[[hosts]]\nname = "h"\nsubnet = "data"',
     "hosts[1].name", "already used by hosts[0]"),
    ('[[hosts]]\nname = "h"\nsubnet = "app"\naddress4 = "10.0.2.5"', "hosts[0].address4",
     "not in subnet 'app'"),
    ('[[hosts]]\nname = "h"\nsubnet = "app"\naddress4 = "10.0.1.2"', "hosts[0].address4",
     "reserved"),
    ('[[hosts]]\nname = "h"\nsubnet = "app"\naddress4 = "10.0.1.255"', "hosts[0].address4",
     "reserved"),
    ('[[hosts]]\nname = "h"\nsubnet = "app"\naddress4 = "fd00:1::5"', "hosts[0].address4",
     "not an IPv4 address"),
    ('[[hosts]]\nname = "h"\nsubnet = "data"\naddress6 = "fd00:1::5"', "hosts[0].address6",
     "has no cidr6"),
    ('[[hosts]]\nname = "h"\nsubnet = "app"\naddress4 = "10.0.1.20"\n'
     '[[hosts]]\nname = "g"\nsubnet = "app"\naddress4 = "10.0.1.20"', "hosts[1].address4",
     "already used by hosts[0]"),
    (FUNC.format(name="f", subnets='["nope"]'), "functions[0].subnets[0]", "no subnet named"),
    (FUNC.format(name="f", subnets='[]'), "functions[0].subnets", "non-empty list"),
    (FUNC.format(name="f", subnets='"app"'), "functions[0].subnets", "non-empty list"),
    (FUNC.format(name="f", subnets='["app", "app"]'), "functions[0].subnets", "twice"),
    (FUNC.format(name="Bad_Name", subnets='["app"]'), "functions[0].name", "a-z"),
    ('[[hosts]]\nname = "x"\nsubnet = "app"' + FUNC.format(name="x", subnets='["app"]'),
     "functions[0].name", "already used by hosts[0]"),
    ('[[functions]]\nname = "f"\nsubnets = ["app"]\nsecurity_groups = "sg"',
     "functions[0].security_groups", "list"),
    ('[[functions]]\nname = "f"\nsubnets = ["app"]\nsecurity_groups = ["a b"]',
     "functions[0].security_groups[0]", "characters"),
    ('[[functions]]\nname = "f"\nsubnets = ["app"]\nipv6 = "yes"', "functions[0].ipv6",
     "true or false"),
    ('[[functions]]\nname = "f"\nsubnets = ["app", "data"]\nipv6 = true', "functions[0].ipv6",
     "Ipv6AllowedForDualStack"),
    ('[[functions]]\nname = "f"\nsubnets = ["app"]\nruntime = "python"', "functions[0].runtime",
     "unknown setting"),
])
def test_cross_field_errors(extra, field, words):
    e = error(BASE + extra)
    assert e.field == field, str(e)
    assert words in e.problem, str(e)


def test_ipv6_function_needs_inside_cidr6():
    e = error(BASE + '[inside]\ncidr6 = ""\n[[functions]]\nname = "f"\nsubnets = ["app"]\n'
                     'ipv6 = true\n')
    assert e.field == "functions[0].ipv6" and "inside.cidr6" in e.problem
    c = cfg('[inside]\ncidr6 = ""\n[[functions]]\nname = "f"\nsubnets = ["app"]\n')
    assert c.inside.cidr6 is None


def test_ipv6_function_in_dual_stack_subnets_is_fine():
    c = cfg('[[functions]]\nname = "f"\nsubnets = ["app"]\nipv6 = true\n')
    assert c.functions[0].ipv6


def test_too_many_functions_for_the_inside_network():
    fns = "".join(FUNC.format(name=f"f{i}", subnets='["app"]') for i in range(5))
    e = error(BASE + '[inside]\ncidr4 = "10.200.0.0/28"\n' + fns)
    assert e.field == "inside.cidr4"
    assert "room for 4 functions" in e.problem and "has 5" in e.problem
    cfg('[inside]\ncidr4 = "10.200.0.0/28"\n' + fns.rsplit("[[functions]]", 1)[0])


def test_subnet_too_small_for_hosts_and_enis():
    small = 'prefix = "t"\n[[subnets]]\nname = "s"\ncidr4 = "10.0.0.0/28"\n'
    # a /28 holds .4 .. .14: 11 addresses, hosts take .10 up unless given one
    hosts = "".join(f'[[hosts]]\nname = "h{i}"\nsubnet = "s"\n' for i in range(5))
    fixed = "".join(f'[[hosts]]\nname = "x{i}"\nsubnet = "s"\naddress4 = "10.0.0.{i + 4}"\n'
                    for i in range(5))
    fns = "".join(f'[[functions]]\nname = "f{i}"\nsubnets = ["s"]\nsecurity_groups = ["g{i}"]\n'
                  for i in range(2))
    loads_config(small + hosts + fns[:len(fns) // 2])
    loads_config(small + hosts + fixed + fns[:len(fns) // 2])
    e = error(small + hosts + fixed + fns)
    assert e.field == "subnets[0].cidr4" and "room for 11" in e.problem
    e = error(small + hosts + '[[hosts]]\nname = "h5"\nsubnet = "s"\n')
    assert e.field == "subnets[0].cidr4" and "room for 5 hosts from .10" in e.problem


def test_to_dict_is_toml_shaped():
    d = default_config().to_dict()
    assert d["nat"]["port_range"] == [536, 65535]
    assert d["subnets"][1] == {"name": "data", "cidr4": "10.0.2.0/24"}
    assert d["functions"][0]["subnets"] == ["app"]
