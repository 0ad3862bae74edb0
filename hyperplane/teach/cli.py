"""The teaching subcommands' arguments and entry points; hyperplane/cli.py only adds them."""

from __future__ import annotations

import argparse
import sys

TRACE_EXAMPLES = """examples:
  hyperplane trace --from api --to web:8080 --tcp syn                 an outbound SYN
  hyperplane trace --from web:8080 --to api --tcp syn-ack --conn syn-sent      its reply
  hyperplane trace --from web --to api:22 --tcp syn                   unsolicited inbound
  hyperplane trace --from web:8080 --to api --tcp rst --seq 705000 --conn established
  hyperplane trace --from api --to web:8080 --tcp syn --malform ip-checksum
  hyperplane trace --from worker --to api --udp --hairpin web:7
  hyperplane trace --pcap inside.pcap --packet 3
  sudo hyperplane trace --live --from api        (then make api send something)"""


def add_trace_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = TRACE_EXAMPLES
    p.add_argument("-c", "--config", help="lab config (TOML) whose topology the NAT gets; "
                                          "default: the running lab's (--prefix), else the "
                                          "built-in lab")
    p.add_argument("--from", dest="src", help="sender: a function, a host or an address, "
                                              "NAME[:PORT]")
    p.add_argument("--to", dest="dst", help="receiver, NAME[:PORT]")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--tcp", metavar="FLAGS", help="a TCP segment: syn, syn-ack, ack, rst, "
                                                      "fin-ack, data, or letters (SA)")
    kind.add_argument("--udp", action="store_true", help="a UDP datagram")
    p.add_argument("-6", "--ipv6", action="store_true", help="the ends' IPv6 addresses")
    p.add_argument("--conn", choices=("syn-sent", "established", "closed", "udp"),
                   help="first bring the function's connection to the host into this state "
                        "with real packets")
    p.add_argument("--seq", type=int, help="TCP sequence number (default: the one expected)")
    p.add_argument("--ack", type=int, help="TCP acknowledgment number")
    p.add_argument("--ttl", type=int, default=64)
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="let this much time pass before the traced packet (timeouts)")
    p.add_argument("--mac", help="source MAC of the function's frame: another function's "
                                 "name or a MAC (a spoofed source)")
    p.add_argument("--malform", choices=("ip-checksum", "truncated", "tcp-doff", "ttl",
                                         "bad-flags"), help="break the frame on purpose")
    p.add_argument("--hairpin", metavar="HOST[:PORT]",
                   help="hairpinning: --to (a function) first opens a connection to HOST, then "
                        "--from (a function) sends to the ENI address and port it got")
    p.add_argument("--pcap", help="trace a packet of this pcap (those before it are the setup)")
    p.add_argument("--packet", type=int, help="with --pcap: its number, from 1 (default: the last)")
    p.add_argument("--live", action="store_true",
                   help="capture the next TCP/UDP packet the function --from sends in the "
                        "running lab, then trace it (root)")
    p.add_argument("--timeout", type=float, default=30.0, help="with --live: seconds to wait")


def _state(args):
    from ..config import default_config, load_config
    from ..lab.state import LabState
    from ..lab.topology import build_topology
    if args.config:
        return build_topology(load_config(args.config)).state()
    if args.prefix or args.live:
        from .. import runtime
        prefix = args.prefix or (runtime.prefixes() or ["hp"])[0]
        try:
            return LabState.load(prefix)
        except FileNotFoundError:
            if args.live:
                raise
    return build_topology(default_config()).state()


def cmd_trace(args) -> int:
    from . import packets, trace
    state = _state(args)
    try:
        if args.pcap:
            plan = packets.from_pcap(state, args.pcap, args.packet)
        elif args.live:
            from ..capture import capture_one
            if not args.src:
                raise packets.DescriptionError("--live needs --from FUNCTION")
            fn = state.function(args.src)
            print(f"waiting up to {args.timeout:g} s for a TCP/UDP packet from {fn.name} "
                  f"({fn.ns}, {fn.ifname})", file=sys.stderr)
            raw = capture_one(fn.ns, fn.ifname, args.timeout)
            if raw is None:
                raise packets.DescriptionError(f"no packet from {fn.name} in {args.timeout:g} s")
            plan = [trace.Packet(raw, 0, 0, f"captured live from {fn.name}", packets.START_MS)]
        else:
            if not (args.src and args.dst):
                raise packets.DescriptionError("give --from and --to (or --pcap, or --live)")
            plan = packets.describe(
                state, args.src, args.dst, proto="udp" if args.udp else "tcp",
                flags=args.tcp or "syn", conn=args.conn, seq=args.seq, ack=args.ack,
                ttl=args.ttl, ipv6=args.ipv6, wait_s=args.wait, mac=args.mac,
                malformed=args.malform, hairpin=args.hairpin)
    except (packets.DescriptionError, KeyError) as e:
        print(f"hyperplane trace: {e}", file=sys.stderr)
        return 2
    try:
        outcomes = trace.run(state, plan)
    except trace.TraceMismatch as e:
        print(f"hyperplane trace: {e}", file=sys.stderr)
        return 1
    print(trace.render(state, outcomes))
    return 0
