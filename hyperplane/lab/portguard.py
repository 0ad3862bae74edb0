"""Per-port anti-spoofing on the functions' bridge (issue 7 part 4).

The functions share one bridge with the data plane's inside port. Unchecked, a broadcast
gratuitous ARP or an unsolicited NA from one function claiming the gateway's (or another
function's) address poisons the other functions' own neighbour caches. An nftables ``bridge``
table in the Lambda namespace (named with the lab's prefix, so it goes with the namespace and
``cleanup`` can name it) lets each function port pass only what the function may send: its
own MAC and addresses, ARP and NDP that claim nothing else, no router advertisements or
redirects. Everything else is dropped and counted per function (named counter ``drops_fnN``).
"""

from __future__ import annotations

import ipaddress
import json

from . import netns
from .names import if_function_peer, ns_lambda
from .state import FunctionInfo

ND_NS, ND_NA = "nd-neighbor-solicit", "nd-neighbor-advert"
# An NS/NA body is 24 bytes (type, code, checksum, flags/reserved, target); Linux appends one
# link-layer address option (type, length 1 = 8 bytes, MAC). Only these two shapes pass, so
# the option the receiver acts on is the one checked here.
ND_BODY, ND_WITH_LLA = 24, 32
OPT_SLLA, OPT_TLLA = 1, 2


def table_name(prefix: str) -> str:
    return f"hp_{prefix}_portguard"   # nft names cannot start with a digit


def counter_name(index: int) -> str:
    return f"drops_fn{index}"


def link_local(mac: str) -> str:
    """The EUI-64 link-local address the kernel gives an interface with this MAC."""
    b = bytearray(bytes.fromhex(mac.replace(":", "")))
    b[0] ^= 0x02
    iid = bytes(b[:3]) + b"\xff\xfe" + bytes(b[3:])
    return str(ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + iid))


def _lla_option(kind: int, mac: str) -> str:
    """Matches the ND option right after the 24-byte body: kind, length 1, then the MAC."""
    return f"@th,{ND_BODY * 8},64 0x{kind:02x}01{mac.replace(':', '')}"


def _target(addr: str) -> str:
    """Matches an NS/NA target (this nft has no ``icmpv6 taddr``): bytes 8-23 of the body."""
    return f"@th,64,128 0x{ipaddress.IPv6Address(addr).packed.hex()}"


def _chain(index: int, fn: FunctionInfo) -> str:
    drop = f'counter name {counter_name(index)} drop'
    own6 = [a for a in (link_local(fn.mac), fn.ipv6) if a]
    nd = "ether type ip6"
    rules = [
        f"ether saddr != {fn.mac} {drop}",
        # ARP: Ethernet/IPv4 only, claiming nothing but the function's own MAC and address
        f"ether type arp arp htype != 1 {drop}",
        f"ether type arp arp ptype != ip {drop}",
        f"ether type arp arp saddr ether != {fn.mac} {drop}",
        f"ether type arp arp saddr ip != {fn.ipv4} {drop}",
        "ether type arp accept",
        f"ether type ip ip saddr != {fn.ipv4} {drop}",
        "ether type ip accept",
        # IPv6: a router's messages are not a function's to send
        f"ether type ip6 icmpv6 type {{ nd-router-advert, nd-redirect }} {drop}",
        # DAD and MLD while an address is tentative come from :: (the lab uses nodad)
        *(f"{nd} ip6 saddr :: icmpv6 type {ND_NS} ip6 length {ND_BODY} {_target(a)} accept"
          for a in own6),
        f"{nd} ip6 saddr :: icmpv6 type {{ mld-listener-report, mld2-listener-report }} accept",
        f"{nd} ip6 saddr != {{ {', '.join(own6)} }} {drop}",
        f"{nd} icmpv6 type {ND_NS} ip6 length {ND_WITH_LLA} {_lla_option(OPT_SLLA, fn.mac)} accept",
        f"{nd} icmpv6 type {ND_NS} ip6 length {ND_BODY} accept",
        f"{nd} icmpv6 type {ND_NS} {drop}",
        *(f"{nd} icmpv6 type {ND_NA} {_target(a)} {shape}"
          for a in own6 for shape in (f"ip6 length {ND_WITH_LLA} {_lla_option(OPT_TLLA, fn.mac)} "
                                      "accept", f"ip6 length {ND_BODY} accept")),
        f"{nd} icmpv6 type {ND_NA} {drop}",
        "ether type ip6 accept",
        # VLAN tags, other ethertypes: nothing a function in this lab sends
        drop,
    ]
    body = "\n".join(f"    {r}" for r in rules)
    return f"  chain fn{index} {{\n{body}\n  }}\n"


def ruleset(prefix: str, functions: tuple[FunctionInfo, ...]) -> str:
    """The whole table: frames entering the bridge from function port N go through chain fnN
    (prerouting sees them before forwarding or local delivery)."""
    counters = "".join(f'  counter {counter_name(i)} {{ }}\n' for i in range(len(functions)))
    chains = "".join(_chain(i, fn) for i, fn in enumerate(functions))
    ports = ", ".join(f'"{if_function_peer(prefix, i)}" : jump fn{i}'
                      for i in range(len(functions)))
    dispatch = f"    iifname vmap {{ {ports} }}\n" if functions else ""
    return (f'table bridge {table_name(prefix)} {{\n{counters}{chains}'
            f"  chain ports {{\n    type filter hook prerouting priority filter; policy accept;\n"
            f"{dispatch}  }}\n}}\n")


def install(prefix: str, functions: tuple[FunctionInfo, ...]) -> None:
    r = netns.exec(ns_lambda(prefix), ["nft", "-f", "-"], input=ruleset(prefix, functions),
                   text=True)
    if r.returncode != 0:
        raise OSError(f"nft: {r.stderr.strip()}")


def remove(prefix: str) -> bool:
    """Deletes the table if its namespace still exists; True if it was there."""
    r = netns.exec(ns_lambda(prefix), ["nft", "delete", "table", "bridge", table_name(prefix)],
                   text=True)
    return r.returncode == 0


def drops(prefix: str) -> dict[int, int]:
    """Frames dropped per function index (packets of counter ``drops_fnN``)."""
    r = netns.exec(ns_lambda(prefix), ["nft", "-j", "list", "counters", "table", "bridge",
                                       table_name(prefix)], text=True)
    if r.returncode != 0:
        raise OSError(f"nft: {r.stderr.strip()}")
    out = {}
    for item in json.loads(r.stdout)["nftables"]:
        if c := item.get("counter"):
            out[int(c["name"].removeprefix(counter_name(0)[:-1]))] = c["packets"]
    return out
