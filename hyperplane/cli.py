"""The `hyperplane` command: build a lab, run the data plane in it, look inside, tear it down."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from . import __version__, runfolder
from .api import Lab
from .errors import (CliError, ConfigError, ControlError, HyperplaneError, LabError, NotRunning,
                     RuntimeFailure)

# Exit codes (also in `hyperplane --help` and the README).
EXIT_OK = 0
EXIT_FAIL = 1            # any failure, one line on stderr
EXIT_USAGE = 2           # bad arguments (argparse)
EXIT_NOT_RUNNING = 3     # status, or a question to the data plane: the data plane is not running
EXIT_INTERRUPTED = 130   # Ctrl-C
EXIT_PIPE = 141          # the reader of our output went away (`hyperplane conntrack | head`)
EXIT_CODES = f"""exit codes:
  {EXIT_OK}    success (status: the data plane is running)
  {EXIT_FAIL}    failure (one line on stderr says why)
  {EXIT_USAGE}    bad arguments
  {EXIT_NOT_RUNNING}    the data plane is not running (status, conntrack, eni, stats, restart)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)
  {EXIT_PIPE}  the output pipe was closed (e.g. `hyperplane conntrack | head`)"""


# --- helpers ------------------------------------------------------------------------------

def need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise CliError(f"{what} needs root (network namespaces, AF_PACKET sockets): "
                       f"run it with sudo")


def check_kernel() -> None:
    """The kernel features the lab and the data plane stand on."""
    missing = []
    if not Path("/proc/net/packet").exists():
        missing.append("AF_PACKET sockets (CONFIG_PACKET)")
    if not Path("/proc/self/ns/net").exists():
        missing.append("network namespaces (CONFIG_NET_NS)")
    if not Path("/proc/sys/net/ipv6").exists():
        missing.append("IPv6 (CONFIG_IPV6)")
    if missing:
        raise CliError("this kernel lacks " + ", ".join(missing))


def resolve_prefix(args) -> str:
    if args.prefix:
        return args.prefix
    labs = Lab.prefixes()
    if len(labs) == 1:
        return labs[0]
    if len(labs) > 1:
        raise CliError(f"several labs are up ({', '.join(labs)}): choose one with --prefix")
    return "hp"


def attach_lab(prefix: str, not_up: int = EXIT_FAIL):
    """The running lab through the public API (hyperplane.Lab); not_up: the exit code when
    the lab is not up."""
    try:
        return Lab.attach(prefix)
    except LabError as e:
        raise CliError(f"{e}; start it with: sudo hyperplane up", not_up) from None


@contextlib.contextmanager
def data_plane_errors():
    """The data plane's failures as one line each: not running (exit 3), or what it said."""
    try:
        yield
    except NotRunning as e:
        raise CliError(str(e), EXIT_NOT_RUNNING) from None
    except ControlError as e:
        raise CliError(str(e)) from None


def conntrack_pages(prefix: str, spec: dict, **kw):
    """The pages of a conntrack listing (Lab.conntrack_pages), as they arrive."""
    with data_plane_errors():
        yield from Lab.conntrack_pages(prefix, spec, **kw)


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


# --- up / down ----------------------------------------------------------------------------

def cmd_up(args) -> int:
    from .config import default_config, load_config
    need_root("hyperplane up")
    check_kernel()
    try:
        cfg = load_config(args.config) if args.config else default_config()
        if args.prefix:
            cfg = cfg.with_prefix(args.prefix)
    except ConfigError as e:            # its text starts with the file's name
        raise CliError(f"bad config: {e}") from None
    lab = start_lab(cfg)
    pid = lab.pid
    lab.detach()                # the lab outlives this process; `hyperplane down` removes it
    with data_plane_errors():
        print(lab.picture())
    print(f"data plane pid {pid}, kept running by a supervisor; flow logs in "
          f"{lab.paths.flow_logs}/ (removed by down unless --keep-logs)")
    if args.detach:
        return 0
    print("forwarding; press Ctrl-C to stop and remove the lab", file=sys.stderr)
    try:
        while lab.supervisor_pid:
            time.sleep(0.5)
        print("the supervisor exited; see " + str(lab.paths.log), file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return cmd_down(argparse.Namespace(prefix=lab.prefix, all=False, keep_logs=False))


def start_lab(cfg):
    """Lab.up with dots while the data plane starts."""
    shown = []

    def progress():
        if not shown:
            print("starting the data plane ", end="", file=sys.stderr, flush=True)
            shown.append(time.monotonic())
        elif time.monotonic() - shown[-1] > 0.2:
            print(".", end="", file=sys.stderr, flush=True)
            shown.append(time.monotonic())
    print(f"building lab {cfg.prefix!r}: {len(cfg.functions)} functions, "
          f"{len(cfg.subnets)} subnets, {len(cfg.hosts)} hosts", file=sys.stderr)
    try:
        return Lab.up(cfg, prefix=cfg.prefix, progress=progress,
                      notice=lambda text: print(text, file=sys.stderr))
    finally:
        if shown:
            print(file=sys.stderr)


def cmd_down(args) -> int:
    need_root("hyperplane down")
    from .lab.cleanup import lab_namespaces
    prefixes = Lab.prefixes() if args.all else [resolve_prefix(args)]
    if args.all:
        from .lab import netns
        prefixes = sorted(set(prefixes) | {ns.rsplit("-", 1)[0] for ns in netns.list_namespaces()
                                            if ns.endswith("-hp")})
    for prefix in prefixes:
        report = Lab.remove(prefix, keep_logs=args.keep_logs)
        if report.removed_anything:
            print(f"lab {prefix!r}: stopped {len(report.killed)} processes, removed "
                  f"{len(report.namespaces)} namespaces and {len(report.links)} links")
        else:
            print(f"lab {prefix!r}: nothing left to remove")
        for err in report.errors:
            print(f"  warning: {err}", file=sys.stderr)
        if lab_namespaces(prefix):
            raise CliError(f"namespaces of {prefix!r} are still present: "
                           f"{', '.join(lab_namespaces(prefix))}")
    return 0


# --- looking inside -----------------------------------------------------------------------

def cmd_status(args) -> int:
    prefix = resolve_prefix(args)
    try:
        lab = Lab.attach(prefix)
    except LabError:
        raise CliError(f"lab {prefix!r} is not up (start it with: sudo hyperplane up)",
                       EXIT_NOT_RUNNING) from None
    state = lab.state
    run = lab.supervision()
    try:
        dp = lab.status(timeout=5.0) if run["running"] else None
    except ControlError:
        dp = None
    running = dp is not None
    if args.json:
        d = state.to_dict()
        d["dataplane"] = {"pid": dp["pid"] if dp else None, "running": running,
                          "uptime_s": dp["uptime_s"] if dp else None,
                          "supervisor_pid": run["supervisor_pid"],
                          "restarts": run["restarts"],
                          "stopped_reason": (None if running else
                                             run["restarts"].get("stopped", {}).get("reason"))}
        if dp:
            d["enis"] = dp["enis"]
        print_json(d)
    else:
        from .render import lab_picture
        print(lab_picture(state, dp, run["restarts"]))
    return EXIT_OK if running else EXIT_NOT_RUNNING


def cmd_restart(args) -> int:
    need_root("hyperplane restart")
    lab = attach_lab(resolve_prefix(args))
    try:
        pid = lab.restart_dataplane()
    except RuntimeFailure as e:
        raise CliError(str(e)) from None
    print(f"data plane restarted: pid {pid}")
    return EXIT_OK


def cmd_exec(args) -> int:
    lab = attach_lab(resolve_prefix(args))
    cmd = args.cmd[1:] if args.cmd and args.cmd[0] == "--" else args.cmd
    if not cmd:
        raise CliError("give a command after --, e.g. hyperplane exec api -- ip addr")
    try:
        ns = lab.namespace(args.name)
    except (KeyError, LabError) as e:
        raise CliError(str(e)) from None
    need_root("hyperplane exec")
    os.execvp("ip", ["ip", "netns", "exec", ns, *cmd])


def conntrack_filter(args) -> dict:
    """The filter options as the data plane takes them (hyperplane.ctfilter's keys)."""
    spec = {"proto": args.proto, "family": args.family, "state": args.state,
            "function": args.function, "eni": args.eni, "assured": args.assured,
            "src": args.src, "dst": args.dst, "sport": args.sport, "dport": args.dport}
    # The reply tuple is (dst, dport) -> (nat_addr, nat_port): its source is the original's
    # destination, so a reply filter on it joins the original's.
    for mine, theirs in (("reply_src", "dst"), ("reply_port_src", "dport")):
        value = getattr(args, mine)
        if value is not None:
            if spec[theirs] is not None and str(spec[theirs]) != str(value):
                raise CliError(f"--{mine.replace('_', '-')} is the original destination: it "
                               f"cannot differ from --{theirs}", EXIT_USAGE)
            spec[theirs] = value
    spec["nat_addr"], spec["nat_port"] = args.reply_dst, args.reply_port_dst
    spec = {k: v for k, v in spec.items() if v is not None}
    from .ctfilter import ConnFilter
    try:                                # checked here too, so a typo is a usage error
        ConnFilter.parse({k: v for k, v in spec.items() if k != "function"})
    except ValueError as e:
        raise CliError(str(e), EXIT_USAGE) from None
    return spec


def cmd_conntrack(args) -> int:
    """-L (default): the listing as its pages arrive; -C: a count; -D / -F: delete; -E: the
    event stream."""
    prefix = resolve_prefix(args)
    spec = conntrack_filter(args)
    if args.action == "count":
        with data_plane_errors():
            n = Lab.conntrack_count(prefix, spec)
        print(json.dumps({"count": n}) if args.json else n)
        return EXIT_OK
    if args.action == "delete" and not spec:
        raise CliError("-D deletes the connections that match a filter: give one, or flush "
                       "the whole table with -F", EXIT_USAGE)
    if args.action == "events":
        return conntrack_events(prefix, spec, args)
    if args.action == "flush" and not (args.json or args.json_lines):
        # as conntrack -F: how many, not each one (-D, or -F -j, lists them)
        n = sum(item["deleted"] for page in conntrack_pages(prefix, spec, delete=True,
                                                            brief=True, timeout=60.0)
                for item in page)
        print(f"{n} connection{'s' if n != 1 else ''} deleted", file=sys.stderr)
        return EXIT_OK
    delete = args.action != "list"                                          # -D, -F -j
    rounds = 0
    while True:
        printer = listing_printer(args)
        if args.watch and not (args.json or args.json_lines):
            sys.stdout.write("\033[2J\033[H")
        for page in conntrack_pages(prefix, spec, delete=delete):
            printer.page(page)
        printer.end()
        sys.stdout.flush()
        if delete:
            print(f"{printer.count} connection{'s' if printer.count != 1 else ''} deleted",
                  file=sys.stderr)
        rounds += 1
        if not args.watch or (args.rounds and rounds >= args.rounds):
            return EXIT_OK
        try:
            time.sleep(args.interval)
        except KeyboardInterrupt:      # the way to end --watch
            return EXIT_OK


def listing_printer(args):
    from .render import ConntrackPrinter, JsonArrayPrinter, JsonLinesPrinter
    if args.json_lines:
        return JsonLinesPrinter(sys.stdout)
    return JsonArrayPrinter(sys.stdout) if args.json else ConntrackPrinter(sys.stdout)


def conntrack_events(prefix: str, spec: dict, args) -> int:
    """Events as they happen, one line each (JSON lines with --json), until Ctrl-C or
    --max-events; a LOST line when the data plane had to drop some for this reader."""
    from .api import Lab
    from .render import event_line
    shown = 0
    try:
        with Lab.conntrack_events(prefix, spec) as stream:
            for event in stream:
                sys.stdout.write((json.dumps(event) if args.json or args.json_lines
                                  else event_line(event)) + "\n")
                sys.stdout.flush()
                shown += event["event"] != "LOST"
                if args.max_events and shown >= args.max_events:
                    return EXIT_OK
    except NotRunning as e:
        raise CliError(str(e), EXIT_NOT_RUNNING) from None
    except KeyboardInterrupt:          # the way to end -E
        return EXIT_OK
    return EXIT_OK


def cmd_eni(args) -> int:
    from .render import eni_table
    with data_plane_errors():
        enis = attach_lab(resolve_prefix(args), EXIT_NOT_RUNNING).enis()
    print_json(enis) if args.json else print(eni_table(enis))
    return 0


def cmd_set_function(args) -> int:
    sgs = [s for s in args.security_groups.split(",") if s]
    with data_plane_errors():
        group = attach_lab(resolve_prefix(args)).set_function(args.function, args.subnet, sgs)
    print(f"{args.function}: new connections on the ENIs of {group}")
    return 0


def cmd_stats(args) -> int:
    from .render import stats_table
    if args.prometheus and args.json:
        raise CliError("--prometheus and --json: choose one", EXIT_USAGE)
    with data_plane_errors():
        stats = attach_lab(resolve_prefix(args), EXIT_NOT_RUNNING).stats()
    if args.prometheus:
        from .metrics import render
        print(render(stats), end="")
    elif args.json:
        print_json(stats)
    else:
        print(stats_table(stats))
    return 0


def cmd_bench(args) -> int:
    need_root("hyperplane bench")
    from .benchmark.run import main as bench_main
    try:
        return bench_main(args)
    except RuntimeError as e:
        raise CliError(str(e)) from None


def cmd_top(args) -> int:
    from .teach.top import run
    return run(resolve_prefix(args), conntrack_filter(args))


def cmd_trace(args) -> int:
    from .teach.cli import cmd_trace as trace
    return trace(args)


def cmd_demo(args) -> int:
    need_root("hyperplane demo")
    from .demo import run_demo
    return run_demo(keep=args.keep, pcap=args.pcap)


# --- check --------------------------------------------------------------------------------

EXIT_INVALID = 1         # check: the config is invalid


def cmd_check(args) -> int:
    """Validates a lab config as `up` would, without root, building nothing."""
    from .config import load_config
    from .lab.topology import build_topology
    from .render import lab_plan
    try:
        if args.config == "-":
            from .config import loads_config
            cfg = loads_config(sys.stdin.read(), source="<stdin>")
        else:
            cfg = load_config(args.config)
        if args.prefix:
            cfg = cfg.with_prefix(args.prefix)
        state = build_topology(cfg).state()
    except ConfigError as e:
        errors = [{"field": x.field, "problem": x.problem, "source": x.source or args.config}
                  for x in e.errors]
        if args.json:
            print_json({"valid": False, "config": args.config, "errors": errors})
        else:
            for x in errors:
                print(f"{x['source']}: invalid: {x['field']}: {x['problem']}", file=sys.stderr)
            if len(errors) > 1:
                print(f"{errors[0]['source']}: {len(errors)} problems", file=sys.stderr)
        return EXIT_INVALID
    except LabError as e:              # a config that parses but cannot be laid out
        if args.json:
            print_json({"valid": False, "config": args.config,
                        "errors": [{"field": "lab", "problem": str(e), "source": args.config}]})
        else:
            print(f"{args.config}: invalid: lab: {e}", file=sys.stderr)
        return EXIT_INVALID
    if args.json:
        print_json({"valid": True, "config": args.config, "lab": state.to_dict()})
    else:
        print(lab_plan(state))
    return EXIT_OK


# --- shell completion -----------------------------------------------------------------------

# Where `hyperplane completion SHELL --install` puts the script: the places bash-completion
# and zsh (with the folder on its fpath) look for a user's completions.
COMPLETION_FILES = {"bash": "~/.local/share/bash-completion/completions/hyperplane",
                    "zsh": "~/.zfunc/_hyperplane"}


def completion_script(shell: str) -> str:
    """The completion script for shell, generated from the parser by shtab, so it always
    offers exactly the commands and options the parser has."""
    import shtab
    return shtab.complete(parser(), shell)


def cmd_completion(args) -> int:
    script = completion_script(args.shell)
    if not args.install:
        sys.stdout.write(script)
        return EXIT_OK
    path = Path(COMPLETION_FILES[args.shell]).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    hint = ("" if args.shell == "bash" else
            "; add `fpath=(~/.zfunc $fpath); autoload -U compinit; compinit` to ~/.zshrc")
    print(f"wrote {path}: new {args.shell} shells complete `hyperplane`{hint}")
    return EXIT_OK


# --- argument parsing ---------------------------------------------------------------------

class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog):
        super().__init__(prog, max_help_position=32)


def _command(sub, name: str, summary: str, description: str, examples: list[str],
             parents=(), **kw) -> argparse.ArgumentParser:
    """A subcommand with its one-line summary (in `hyperplane --help`), a description and
    examples (in its own --help and docs/cli.md)."""
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)
    return sub.add_parser(name, parents=list(parents), help=summary,
                          description=f"{summary[0].upper()}{summary[1:]}.\n\n{description}",
                          epilog=epilog, formatter_class=_Formatter, **kw)


CONNTRACK_DESCRIPTION = """\
Lists the data plane's connection table as its pages stream in (-L, the default), counts
(-C), deletes (-D, with a filter) or flushes (-F, all or what the filters select) connections,
or follows the table's events as they happen (-E: NEW, UPDATE on a state change or when a
connection is answered or assured, DESTROY with the reason: EXPIRED, RESET, DELETED,
EARLY_DROP, REOPENED). The filters are applied by the data plane while it scans the table.

A deleted connection's next packet behaves as a new one: a UDP datagram or a TCP SYN from the
function opens a new connection; any other TCP segment is answered with a RST (as after an
idle timeout), a reply from the customer side is dropped as unsolicited. Its flow-log record
is closed and its port is quarantined as on expiry (docs/semantics.md 2.5).

Tuples: the original is src:sport -> dst:dport (the function to the server), the reply
dst:dport -> ENI address:NAT port. -s/-d/--sport/--dport test the original tuple,
-r/-q/--reply-port-src/--reply-port-dst the reply tuple. Addresses take a prefix
(10.0.1.0/24), ports a range (1000-2000)."""


def _family(value: str) -> int:
    try:
        return {"ipv4": 4, "4": 4, "ipv6": 6, "6": 6}[value.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"ipv4 or ipv6, not {value!r}") from None


def _conntrack_filter_arguments(p: argparse.ArgumentParser) -> None:
    """The filters of `conntrack` (and `top`), as conntrack_filter() reads them."""
    f = p.add_argument_group("filters (all must hold)")
    f.add_argument("-p", "--proto", choices=("tcp", "udp"), help="the protocol")
    f.add_argument("-f", "--family", type=_family, metavar="{ipv4,ipv6}",
                   help="the address family")
    f.add_argument("-s", "--src", "--orig-src", dest="src", metavar="ADDR[/LEN]",
                   help="original source: the function's address")
    f.add_argument("-d", "--dst", "--orig-dst", dest="dst", metavar="ADDR[/LEN]",
                   help="original destination: the server in the customer VPC")
    f.add_argument("-r", "--reply-src", dest="reply_src", metavar="ADDR[/LEN]",
                   help="reply source (the original destination)")
    f.add_argument("-q", "--reply-dst", dest="reply_dst", metavar="ADDR[/LEN]",
                   help="reply destination: the ENI address the connection leaves from")
    f.add_argument("--sport", "--orig-port-src", dest="sport", metavar="PORT[-PORT]",
                   help="original source port")
    f.add_argument("--dport", "--orig-port-dst", dest="dport", metavar="PORT[-PORT]",
                   help="original destination port")
    f.add_argument("--reply-port-src", dest="reply_port_src", metavar="PORT[-PORT]",
                   help="reply source port (the original destination port)")
    f.add_argument("--reply-port-dst", dest="reply_port_dst", metavar="PORT[-PORT]",
                   help="reply destination port: the NAT's external port")
    f.add_argument("--state", metavar="STATE[,STATE]",
                   help="connection states, e.g. ESTABLISHED or SYN_SENT,SYN_RECV")
    f.add_argument("--function", metavar="NAME", help="the function that owns the connection")
    f.add_argument("--eni", type=int, metavar="ID", help="the ENI the connection leaves from")
    assured = f.add_mutually_exclusive_group()
    assured.add_argument("--assured", dest="assured", action="store_const", const=True,
                         help="assured connections only (answered, established)")
    assured.add_argument("--unassured", dest="assured", action="store_const", const=False,
                         help="connections not assured yet")


def _conntrack_arguments(p: argparse.ArgumentParser) -> None:
    act = p.add_argument_group("actions (one at most; default -L)").add_mutually_exclusive_group()
    for flags, value, text in (
            (("-L", "--list"), "list", "list the connections (default)"),
            (("-C", "--count"), "count", "print how many connections match"),
            (("-D", "--delete"), "delete", "delete the connections that match the filters "
                                           "(a filter is required) and list them"),
            (("-F", "--flush"), "flush", "delete every connection, or those the filters "
                                         "select, and say how many (with -j: list them)"),
            (("-E", "--event"), "events", "print the table's events as they happen, until "
                                          "Ctrl-C")):
        act.add_argument(*flags, dest="action", action="store_const", const=value, help=text)
    p.set_defaults(action="list")
    _conntrack_filter_arguments(p)
    o = p.add_argument_group("output")
    o.add_argument("--json-lines", action="store_true",
                   help="one JSON object a line, as they arrive (with -j: one JSON array)")
    o.add_argument("--watch", action="store_true", help="-L: refresh until Ctrl-C")
    o.add_argument("--interval", type=float, default=1.0,
                   help="--watch: seconds between refreshes (default 1)")
    o.add_argument("--rounds", type=int, default=0, help="--watch: stop after N refreshes")
    o.add_argument("--max-events", type=int, default=0, metavar="N",
                   help="-E: stop after N events")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="hyperplane",
        description="A userspace V2N NAT (Lambda's Hyperplane ENI) on network namespaces.",
        epilog="Start with: sudo hyperplane demo\n\n" + EXIT_CODES, formatter_class=_Formatter)
    ap.add_argument("--version", action="version", version=f"hyperplane {__version__}")
    ap.add_argument("-j", "--json", action="store_true",
                    help="JSON output (before or after the command, as `ip -j`)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--prefix", help="the lab's name prefix (default: the one lab that is "
                                         "up, else 'hp')")
    # -j after the command too; SUPPRESS keeps a -j given before it.
    with_json = argparse.ArgumentParser(add_help=False)
    with_json.add_argument("-j", "--json", action="store_true", default=argparse.SUPPRESS,
                           help="JSON output")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _command(sub, "up", "build the lab and start the data plane",
                 "Builds the namespaces, links and addresses of a lab config (the built-in lab "
                 "without -c), starts the data plane under a supervisor that restarts it, and "
                 "prints the lab. Needs root.",
                 ["sudo hyperplane up --detach", "sudo hyperplane up -c examples/dual-stack.toml"],
                 [common])
    p.add_argument("-c", "--config", help="lab config (TOML); default: the built-in lab")
    p.add_argument("--detach", action="store_true",
                   help="return once the data plane forwards (default: stay, Ctrl-C removes)")
    p.set_defaults(fn=cmd_up)

    p = _command(sub, "check", "validate a lab config without building anything",
                 "Reads and validates a lab config as `up` would, without root, and prints "
                 "what the lab would be: its functions with their addresses and ENI groups, "
                 "the ENIs, subnets and hosts; or the error with the field it is in.\n\n"
                 f"exit codes: {EXIT_OK} valid, {EXIT_INVALID} invalid, {EXIT_USAGE} bad "
                 "arguments (as `nft -c`).",
                 ["hyperplane check -c examples/default.toml",
                  "hyperplane check -c lab.toml --json | jq .lab.functions",
                  "generate-lab | hyperplane check -c -"], [common, with_json])
    p.add_argument("-c", "--config", required=True, help="lab config (TOML); - reads stdin")
    p.set_defaults(fn=cmd_check)

    p = _command(sub, "down", "remove everything the lab made (also after a crash)",
                 "Stops the data plane and its supervisor and removes the lab's namespaces, "
                 "links and run files (the flow logs too, unless --keep-logs). Needs root.",
                 ["sudo hyperplane down", "sudo hyperplane down --prefix t1 --keep-logs"],
                 [common])
    p.add_argument("--all", action="store_true", help="every lab found, whatever its prefix")
    p.add_argument("--keep-logs", action="store_true",
                   help=f"keep the data plane's log and the flow logs in {runfolder.RUN_DIR}")
    p.set_defaults(fn=cmd_down)

    p = _command(sub, "status", "the lab and its data plane",
                 "Namespaces, addresses, ENIs, the data plane's pid and its restarts. Exit 0 "
                 "when the data plane runs, 3 when it does not.",
                 ["hyperplane status", "hyperplane -j status | jq .dataplane"],
                 [common, with_json])
    p.set_defaults(fn=cmd_status)

    p = _command(sub, "restart", "restart the data plane",
                 "Asks the supervisor to restart the data plane, which attaches to the state "
                 "file: established connections survive. Needs root.",
                 ["sudo hyperplane restart"], [common])
    p.set_defaults(fn=cmd_restart)

    p = _command(sub, "exec", "run a command in a function's or host's namespace",
                 "Runs COMMAND inside the network namespace of a function or a customer host "
                 "of the lab (ip netns exec). Needs root.",
                 ["sudo hyperplane exec api -- curl -s http://10.0.1.10:8080/",
                  "sudo hyperplane exec web -- ss -tn"], [common])
    p.add_argument("name", help="function or host name (or a namespace name)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    p.set_defaults(fn=cmd_exec)

    p = _command(sub, "conntrack", "the tracked connections: list, count, delete, events",
                 CONNTRACK_DESCRIPTION,
                 ["hyperplane conntrack", "hyperplane conntrack -p udp -d 10.0.1.10 -C",
                  "hyperplane conntrack --state ESTABLISHED --function api -j",
                  "hyperplane conntrack -D -p tcp --dport 8080",
                  "hyperplane conntrack -F", "hyperplane conntrack -E -p tcp",
                  "hyperplane conntrack -E --json | jq -c 'select(.event == \"DESTROY\")'"],
                 [common, with_json])
    _conntrack_arguments(p)
    p.set_defaults(fn=cmd_conntrack)

    p = _command(sub, "eni", "the ENIs and the ports they use",
                 "Every ENI the lab made (Deleted ones too): status, port, MAC, addresses, "
                 "subnet, security groups and ports in use.",
                 ["hyperplane eni", "hyperplane eni -j"], [common, with_json])
    p.set_defaults(fn=cmd_eni)

    p = _command(sub, "set-function", "change a running function's subnet and security groups",
                 "The function's new connections open on the ENI of the new (subnet, security "
                 "groups) pair, made on demand; live connections keep theirs until they end.",
                 ["hyperplane set-function api --subnet data --security-groups sg-db"],
                 [common])
    p.add_argument("function")
    p.add_argument("--subnet", required=True)
    p.add_argument("--security-groups", default="", help="comma-separated ids")
    p.set_defaults(fn=cmd_set_function)

    p = _command(sub, "stats", "counters: forwarded, dropped by reason, NAT-gateway metrics",
                 "NAT-gateway style metrics, drops and punts by reason, per-ENI and "
                 "per-function figures, the data plane's and the slow path's counters.",
                 ["hyperplane stats", "hyperplane stats -j | jq .nat",
                  "hyperplane stats --prometheus"], [common, with_json])
    p.add_argument("--prometheus", action="store_true",
                   help="Prometheus text, as the metrics endpoint serves it")
    p.set_defaults(fn=cmd_stats)

    p = _command(sub, "demo", "a narrated run through the default lab",
                 "Builds the default lab, sends traffic through it, shows what the NAT did "
                 "(connections, ENIs, counters) and removes the lab. Needs root.",
                 ["sudo hyperplane demo", "sudo hyperplane demo --keep"])
    p.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    p.add_argument("--pcap", metavar="DIR", help="capture each side of the NAT into DIR: "
                   "inside.pcap, outside.pcap and index.json pairing each connection's halves")
    p.set_defaults(fn=cmd_demo)

    p = _command(sub, "top", "the connection table live, full screen",
                 "Connections appearing, changing state (coloured by state), counting down "
                 "their timeouts and leaving; both tuples; ENI pool gauges (ports in use / "
                 "quarantined / free) and a new ENI as it is taken; drops by reason as rates. "
                 "It shows a window of the table (the daemon's paged listing, kept current by "
                 "its event stream), never all of it. Filters as in conntrack; keys on screen, "
                 "q quits.", ["hyperplane top", "hyperplane top -p tcp --function api"], [common])
    _conntrack_filter_arguments(p)
    p.set_defaults(fn=cmd_top)

    p = _command(sub, "trace", "one packet through the reference model, step by step",
                 "Runs one packet through the reference model with tracing on and prints each "
                 "step; the C core's verdict and bytes are shown beside it.",
                 ["hyperplane trace --from api --to web:8080 --tcp syn"], [common])
    from .teach.cli import add_trace_arguments
    add_trace_arguments(p)
    p.set_defaults(fn=cmd_trace)

    p = _command(sub, "completion", "shell completion for bash or zsh",
                 "Prints the completion script for the shell, generated from this parser; with "
                 "--install writes it where the shell finds it for this user "
                 f"(bash: {COMPLETION_FILES['bash']}, zsh: {COMPLETION_FILES['zsh']}).",
                 ["hyperplane completion bash --install",
                  "hyperplane completion bash | sudo tee /etc/bash_completion.d/hyperplane",
                  "hyperplane completion zsh > ~/.zfunc/_hyperplane"])
    p.add_argument("shell", choices=("bash", "zsh"))
    p.add_argument("--install", action="store_true",
                   help="write it to the user's completion folder instead of printing it")
    p.set_defaults(fn=cmd_completion)

    p = _command(sub, "bench", "Hyperplane beside kernel routing and the kernel's NAT",
                 "Throughput, zero-loss rates, connection rates, latency, table scale and CPU "
                 "cost, each beside the kernel's NAT in the same run: a table, bench.json and "
                 "bench.png. Needs root.",
                 ["sudo hyperplane bench --quick", "sudo hyperplane bench --tests tcp-1,udp64-1flow"])
    from .benchmark.args import add_arguments as bench_arguments
    bench_arguments(p)
    p.set_defaults(fn=cmd_bench)
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        code = args.fn(args) or EXIT_OK
        sys.stdout.flush()
        return code
    except CliError as e:
        return _fail(str(e), e.code)
    except HyperplaneError as e:
        return _fail(str(e), EXIT_FAIL)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader is gone: nothing more to say, and nothing at exit either
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_PIPE


def _fail(message: str, code: int) -> int:
    try:
        print(f"hyperplane: {message}", file=sys.stderr)
    except OSError:
        pass
    return code


if __name__ == "__main__":
    sys.exit(main())
