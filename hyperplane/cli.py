"""The `hyperplane` command: build a lab, run the data plane in it, look inside, tear it down."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import __version__, control, runtime
from .config import ConfigError, default_config, load_config
from .errors import CliError, HyperplaneError
from .lab.topology import LabError, LabState

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
    labs = runtime.prefixes()
    if len(labs) == 1:
        return labs[0]
    if len(labs) > 1:
        raise CliError(f"several labs are up ({', '.join(labs)}): choose one with --prefix")
    return "hp"


def attach_state(prefix: str) -> LabState:
    try:
        return LabState.load(prefix)
    except FileNotFoundError:
        raise CliError(f"lab {prefix!r} is not up (start it with: sudo hyperplane up)") from None


def ask(prefix: str, command: str, **kw) -> dict:
    try:
        return control.request(prefix, command, **kw)
    except control.NotRunning as e:
        raise CliError(str(e), EXIT_NOT_RUNNING) from None
    except control.ControlError as e:
        raise CliError(str(e)) from None


def ask_listing(prefix: str, command: str, **kw):
    """The pages of a listing, as they arrive."""
    try:
        yield from control.listing(prefix, command, **kw)
    except control.NotRunning as e:
        raise CliError(str(e), EXIT_NOT_RUNNING) from None
    except control.ControlError as e:
        raise CliError(str(e)) from None


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


# --- up / down ----------------------------------------------------------------------------

def cmd_up(args) -> int:
    need_root("hyperplane up")
    check_kernel()
    try:
        cfg = load_config(args.config) if args.config else default_config()
        if args.prefix:
            cfg = cfg.with_prefix(args.prefix)
    except ConfigError as e:            # its text starts with the file's name
        raise CliError(f"bad config: {e}") from None
    state, pid = start_lab(cfg)
    from .render import lab_picture
    print(lab_picture(state, ask(state.prefix, "status"), runtime.restarts(state.prefix)))
    print(f"data plane pid {pid}, kept running by a supervisor; flow logs in "
          f"{runtime.paths(state.prefix).flow_logs}/ (removed by down unless --keep-logs)")
    if args.detach:
        return 0
    print("forwarding; press Ctrl-C to stop and remove the lab", file=sys.stderr)
    try:
        while runtime.pid_of(state.prefix, runtime.SUPERVISOR):
            time.sleep(0.5)
        print("the supervisor exited; see " + str(runtime.paths(state.prefix).log),
              file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return cmd_down(argparse.Namespace(prefix=state.prefix, all=False, keep_logs=False))


def start_lab(cfg):
    """runtime.up with dots while the data plane starts."""
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
        return runtime.up(cfg, progress=progress,
                          notice=lambda text: print(text, file=sys.stderr))
    finally:
        if shown:
            print(file=sys.stderr)


def cmd_down(args) -> int:
    need_root("hyperplane down")
    from .lab.cleanup import lab_namespaces
    prefixes = runtime.prefixes() if args.all else [resolve_prefix(args)]
    if args.all:
        from .lab import netns
        prefixes = sorted(set(prefixes) | {ns.rsplit("-", 1)[0] for ns in netns.list_namespaces()
                                            if ns.endswith("-hp")})
    for prefix in prefixes:
        report = runtime.down(prefix, keep_logs=args.keep_logs)
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
        state = attach_state(prefix)
    except CliError as e:
        raise CliError(str(e), EXIT_NOT_RUNNING) from None
    run = runtime.status(prefix)
    try:
        dp = control.request(prefix, "status", timeout=5.0) if run["running"] else None
    except control.ControlError:
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
    prefix = resolve_prefix(args)
    attach_state(prefix)
    try:
        pid = runtime.restart(prefix)
    except runtime.RuntimeFailure as e:
        raise CliError(str(e)) from None
    count = runtime.restarts(prefix)["count"]
    print(f"data plane restarted: pid {pid} (restarts so far: {count})")
    return EXIT_OK


def cmd_exec(args) -> int:
    prefix = resolve_prefix(args)
    state = attach_state(prefix)
    cmd = args.cmd[1:] if args.cmd and args.cmd[0] == "--" else args.cmd
    if not cmd:
        raise CliError("give a command after --, e.g. hyperplane exec api -- ip addr")
    try:
        ns = state.namespace_of(args.name)
    except (KeyError, LabError) as e:
        raise CliError(str(e)) from None
    need_root("hyperplane exec")
    os.execvp("ip", ["ip", "netns", "exec", ns, *cmd])


def cmd_conntrack(args) -> int:
    """Prints the listing as its pages arrive: a table, or (--json) one JSON array."""
    from .render import ConntrackPrinter, JsonArrayPrinter
    prefix = resolve_prefix(args)
    rounds = 0
    while True:
        printer = JsonArrayPrinter(sys.stdout) if args.json else ConntrackPrinter(sys.stdout)
        if args.watch and not args.json:
            sys.stdout.write("\033[2J\033[H")
        for page in ask_listing(prefix, "conntrack"):
            printer.page(page)
        printer.end()
        sys.stdout.flush()
        rounds += 1
        if not args.watch or (args.count and rounds >= args.count):
            return EXIT_OK
        try:
            time.sleep(args.interval)
        except KeyboardInterrupt:      # the way to end --watch
            return EXIT_OK


def cmd_eni(args) -> int:
    from .render import eni_table
    enis = ask(resolve_prefix(args), "eni")["enis"]
    print_json(enis) if args.json else print(eni_table(enis))
    return 0


def cmd_set_function(args) -> int:
    sgs = [s for s in args.security_groups.split(",") if s]
    got = ask(resolve_prefix(args), "set-function", function=args.function, subnet=args.subnet,
              security_groups=sgs)
    print(f"{got['function']}: new connections on the ENIs of {got['group']}")
    return 0


def cmd_stats(args) -> int:
    from .render import stats_table
    stats = ask(resolve_prefix(args), "stats")
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


def cmd_trace(args) -> int:
    from .teach.cli import cmd_trace as trace
    return trace(args)


def cmd_demo(args) -> int:
    need_root("hyperplane demo")
    from .demo import run_demo
    return run_demo(keep=args.keep)


# --- argument parsing ---------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="hyperplane",
        description="A userspace V2N NAT (Lambda's Hyperplane ENI) on network namespaces.",
        epilog="Start with: sudo hyperplane demo\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"hyperplane {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--prefix", help="the lab's name prefix (default: the one lab that is "
                                         "up, else 'hp')")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("up", parents=[common], help="build the lab and start the data plane")
    p.add_argument("-c", "--config", help="lab config (TOML); default: the built-in lab")
    p.add_argument("--detach", action="store_true",
                   help="return once the data plane forwards (default: stay, Ctrl-C removes)")
    p.set_defaults(fn=cmd_up)

    p = sub.add_parser("down", parents=[common],
                       help="remove everything the lab made (also after a crash)")
    p.add_argument("--all", action="store_true", help="every lab found, whatever its prefix")
    p.add_argument("--keep-logs", action="store_true",
                   help=f"keep the data plane's log and the flow logs in {runtime.RUN_DIR}")
    p.set_defaults(fn=cmd_down)

    p = sub.add_parser("status", parents=[common],
                       help="namespaces, addresses, ENIs, the data plane's pid and restarts "
                            "(exit 0 running, 3 not running)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_status)

    p = sub.add_parser("restart", parents=[common],
                       help="restart the data plane (its supervisor does it and counts it)")
    p.set_defaults(fn=cmd_restart)

    p = sub.add_parser("exec", parents=[common],
                       help="run a command in a function's or host's namespace")
    p.add_argument("name", help="function or host name (or a namespace name)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    p.set_defaults(fn=cmd_exec)

    p = sub.add_parser("conntrack", parents=[common],
                       help="the tracked connections, printed as they stream in")
    p.add_argument("--json", action="store_true",
                   help="one JSON array of connection objects (streamed, in table order)")
    p.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    p.add_argument("--count", type=int, default=0, help="with --watch: stop after N refreshes")
    p.set_defaults(fn=cmd_conntrack)

    p = sub.add_parser("eni", parents=[common], help="the ENIs and the ports they use")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_eni)

    p = sub.add_parser("set-function", parents=[common],
                       help="change a running function's subnet and security groups: its new "
                            "connections open on that pair's ENI")
    p.add_argument("function")
    p.add_argument("--subnet", required=True)
    p.add_argument("--security-groups", default="", help="comma-separated ids")
    p.set_defaults(fn=cmd_set_function)

    p = sub.add_parser("stats", parents=[common],
                       help="counters: forwarded, dropped by reason, NAT-gateway metrics")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--prometheus", action="store_true",
                     help="Prometheus text, as the metrics endpoint serves it")
    p.set_defaults(fn=cmd_stats)

    p = sub.add_parser("demo", help="build the default lab, send traffic through it, show "
                                    "what the NAT did, remove the lab")
    p.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("trace", parents=[common],
                       help="one packet through the reference model step by step, the C "
                            "core's verdict and bytes beside it")
    from .teach.cli import add_trace_arguments
    add_trace_arguments(p)
    p.set_defaults(fn=cmd_trace)

    p = sub.add_parser("bench", help="Hyperplane beside kernel routing and the kernel's NAT: "
                                     "throughput, zero-loss rates, connection rates, latency, "
                                     "table scale, CPU cost; a table, bench.json, bench.png")
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
