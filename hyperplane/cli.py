"""The `hyperplane` command: build a lab, run the data plane in it, look inside, tear it down."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import __version__, control
from .config import ConfigError, default_config, load_config
from .lab.topology import RUN_DIR, LabError, LabState

EXIT_FAIL = 1
UP_TIMEOUT_S = 20.0


class CliError(Exception):
    """A failure the user can act on: printed without a traceback."""


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


def running_prefixes(run_dir=None) -> list[str]:
    d = Path(run_dir or RUN_DIR)
    return sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []


def resolve_prefix(args) -> str:
    if args.prefix:
        return args.prefix
    labs = running_prefixes()
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
    except control.ControlError as e:
        raise CliError(str(e)) from None


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def pid_file(prefix: str) -> Path:
    return Path(RUN_DIR) / f"{prefix}.pid"


def log_file(prefix: str) -> Path:
    return Path(RUN_DIR) / f"{prefix}-dataplane.log"


def flow_log_dir(prefix: str) -> Path:
    from .flowlog import default_folder
    return default_folder(RUN_DIR, prefix)


# --- up / down ----------------------------------------------------------------------------

def start_dataplane(state: LabState) -> int:
    from .lab import netns
    with open(log_file(state.prefix), "ab") as log:     # the child keeps its own copy
        proc = netns.popen(state.dataplane_ns,
                           [sys.executable, "-m", "hyperplane.daemon", "--prefix", state.prefix],
                           stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                           start_new_session=True)
    pid_file(state.prefix).write_text(str(proc.pid))
    deadline = time.monotonic() + UP_TIMEOUT_S
    shown = False
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_file(state.prefix).read_text(errors="replace").splitlines()[-15:]
            raise CliError("the data plane exited while starting:\n  " + "\n  ".join(tail))
        try:
            control.request(state.prefix, "status", timeout=2.0)
            if shown:
                print(" ready", file=sys.stderr)
            return proc.pid
        except control.ControlError:
            if not shown:
                print("starting the data plane ", end="", file=sys.stderr, flush=True)
                shown = True
            print(".", end="", file=sys.stderr, flush=True)
            time.sleep(0.2)
    proc.kill()
    raise CliError(f"the data plane did not answer within {UP_TIMEOUT_S:.0f} s "
                   f"(log: {log_file(state.prefix)})")


def cmd_up(args) -> int:
    need_root("hyperplane up")
    check_kernel()
    try:
        cfg = load_config(args.config) if args.config else default_config()
        if args.prefix:
            cfg = cfg.with_prefix(args.prefix)
    except ConfigError as e:            # its text starts with the file's name
        raise CliError(f"bad config: {e}") from None
    from .lab import Lab
    from .lab.cleanup import find
    left = find(cfg.prefix)
    if left:
        raise CliError(f"lab {cfg.prefix!r} is already up (or left over: "
                       f"{', '.join(left.namespaces) or ', '.join(left.root_links)}); "
                       f"run: sudo hyperplane down --prefix {cfg.prefix}")
    print(f"building lab {cfg.prefix!r}: {len(cfg.functions)} functions, "
          f"{len(cfg.subnets)} subnets, {len(cfg.hosts)} hosts", file=sys.stderr)
    lab = Lab(cfg)
    try:
        state = lab.up(clean=False)
        pid = start_dataplane(state)
    except BaseException:
        lab.down()
        raise
    from .render import lab_picture
    print(lab_picture(state, ask(state.prefix, "status")))
    print(f"data plane pid {pid}; flow logs in {flow_log_dir(state.prefix)}/ "
          f"(removed by down unless --keep-logs)")
    if args.detach:
        return 0
    print("forwarding; press Ctrl-C to stop and remove the lab", file=sys.stderr)
    try:
        while _alive(pid):
            time.sleep(0.5)
        print("the data plane exited; see " + str(log_file(state.prefix)), file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return cmd_down(argparse.Namespace(prefix=state.prefix, all=False, keep_logs=False))
    finally:
        if not args.detach and _alive(pid):
            lab.down()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie of ours counts as gone
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def stop_dataplane(prefix: str, timeout: float = 5.0) -> None:
    try:
        pid = int(pid_file(prefix).read_text())
    except (FileNotFoundError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    pid_file(prefix).unlink(missing_ok=True)


def cmd_down(args) -> int:
    need_root("hyperplane down")
    from .lab.cleanup import cleanup, lab_namespaces
    prefixes = running_prefixes() if args.all else [resolve_prefix(args)]
    if args.all:
        from .lab import netns
        prefixes = sorted(set(prefixes) | {ns.rsplit("-", 1)[0] for ns in netns.list_namespaces()
                                            if ns.endswith("-hp")})
    for prefix in prefixes:
        stop_dataplane(prefix)
        report = cleanup(prefix)
        control.socket_path(prefix).unlink(missing_ok=True)
        if not args.keep_logs:
            log_file(prefix).unlink(missing_ok=True)
            shutil.rmtree(flow_log_dir(prefix), ignore_errors=True)
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
    state = attach_state(prefix)
    try:
        dp = control.request(prefix, "status", timeout=5.0)
    except control.ControlError:
        dp = None
    if args.json:
        d = state.to_dict()
        d["dataplane"] = {"pid": dp["pid"] if dp else None, "running": dp is not None,
                          "uptime_s": dp["uptime_s"] if dp else None}
        if dp:
            d["enis"] = dp["enis"]
        print_json(d)
        return 0
    from .render import lab_picture
    print(lab_picture(state, dp))
    return 0


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
    from .render import conntrack_table
    prefix = resolve_prefix(args)
    rounds = 0
    while True:
        conns = ask(prefix, "conntrack")["connections"]
        if args.json:
            print_json(conns)
        else:
            if args.watch:
                print("\033[2J\033[H", end="")
            print(conntrack_table(conns))
        rounds += 1
        if not args.watch or (args.count and rounds >= args.count):
            return 0
        try:
            time.sleep(args.interval)
        except KeyboardInterrupt:
            return 0


def cmd_eni(args) -> int:
    from .render import eni_table
    enis = ask(resolve_prefix(args), "eni")["enis"]
    print_json(enis) if args.json else print(eni_table(enis))
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


def cmd_demo(args) -> int:
    need_root("hyperplane demo")
    from .demo import run_demo
    return run_demo(keep=args.keep)


# --- argument parsing ---------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="hyperplane",
        description="A userspace V2N NAT (Lambda's Hyperplane ENI) on network namespaces.",
        epilog="Start with: sudo hyperplane demo")
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
                   help="keep the data plane's log and the flow logs in " + str(RUN_DIR))
    p.set_defaults(fn=cmd_down)

    p = sub.add_parser("status", parents=[common],
                       help="namespaces, addresses, ENIs and the data plane's pid")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_status)

    p = sub.add_parser("exec", parents=[common],
                       help="run a command in a function's or host's namespace")
    p.add_argument("name", help="function or host name (or a namespace name)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    p.set_defaults(fn=cmd_exec)

    p = sub.add_parser("conntrack", parents=[common], help="the tracked connections")
    p.add_argument("--json", action="store_true")
    p.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    p.add_argument("--count", type=int, default=0, help="with --watch: stop after N refreshes")
    p.set_defaults(fn=cmd_conntrack)

    p = sub.add_parser("eni", parents=[common], help="the ENIs and the ports they use")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_eni)

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
        return args.fn(args) or 0
    except CliError as e:
        print(f"hyperplane: {e}", file=sys.stderr)
        return EXIT_FAIL
    except (LabError, ConfigError) as e:
        print(f"hyperplane: {e}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
