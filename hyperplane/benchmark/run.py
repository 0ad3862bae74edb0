"""`hyperplane bench`: builds one lab, runs every test through every middle, interleaved,
prints a table as it goes and writes DIR/bench.json and DIR/bench.png."""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import string
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from ..api import Lab
from ..errors import RuntimeFailure
from ..lab import netns
from . import report
from .report import KERNEL_NATS
from .middles import build_middles, masquerade_count, prepare_server, bench_config
from .args import TEST_NAMES, add_arguments, forwarding_table
from .suite import TESTS, Ctx, Settings, machine_busy
from .tools import Procs
from .placement import Sampler, allowed_cpus, place_forwarding

BUSY = 0.15                          # warn above this share of the CPUs busy before we start
CONNTRACK_MAX = "/proc/sys/net/netfilter/nf_conntrack_max"


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def machine() -> dict:
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gib": round(mem, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            **cpu_idle()}


def cpu_idle(sys_root: str = "/sys") -> dict:
    """How an idle CPU sleeps. In a VM whose guest halt polling is off (haltpoll's
    guest_halt_poll_ns 0), waking a thread on an idle virtual CPU costs a trip through the host:
    idle round trips through Hyperplane were 100 us with it off and 42 us with 200 us of
    polling, the kernel's NAT 13 us either way (docs/performance.md)."""
    def read(path):
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            return None
    poll_ns = read(f"{sys_root}/module/haltpoll/parameters/guest_halt_poll_ns")
    return {"cpuidle_driver": read(f"{sys_root}/devices/system/cpu/cpuidle/current_driver"),
            "guest_halt_poll_ns": int(poll_ns) if poll_ns and poll_ns.isdigit() else None}


def _start_lab(prefix: str, capacity: int, forwarding: dict | None) -> Lab:
    """The benchmark's lab (hyperplane.Lab): built, its data plane forwarding."""
    try:
        return Lab.up(bench_config(prefix, capacity, forwarding), prefix=prefix)
    except RuntimeFailure as e:
        raise RuntimeError(f"the data plane did not start: {e}") from None


def _teardown(lab: Lab | None, prefix: str) -> None:
    if lab is not None:             # a lab that failed to come up removed itself
        try:
            lab.down()
        except Exception as e:
            log(f"removing the lab: {e}")
    left = [n for n in netns.list_namespaces() if n.startswith(f"{prefix}-")]
    if left:
        log(f"WARNING: namespaces still present: {', '.join(left)}")


def _flatten(d, prefix="") -> dict[str, float]:
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    elif isinstance(d, (int, float)) and not isinstance(d, bool):
        out[prefix[:-1]] = d
    return out


def dataplane_counters(lab: Lab) -> dict[str, float]:
    """The data plane's counters, flat ("dataplane.drop.TX_FULL": 3, ...); empty when it does
    not answer within 2 s (a stalled data plane must not stall the run)."""
    try:
        return _flatten(lab.stats(timeout=2.0))
    except Exception:
        return {}


def _forwarding_stats(lab: Lab):
    """How the data plane says its forwarding thread is scheduled (None if it does not
    answer)."""
    try:
        return lab.stats(timeout=2.0).get("forwarding")
    except Exception:
        return None


def _keep_dataplane_log(lab: Lab, out_dir: Path) -> None:
    """After a failed measurement the data plane's log goes beside bench.json."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "dataplane.log").write_bytes(lab.log_path.read_bytes()[-1_000_000:])
        log(f"the data plane's log: {out_dir / 'dataplane.log'}")
    except Exception as e:
        log(f"the data plane's log could not be kept: {e}")


class ConntrackLimit:
    """The kernel's conntrack limit is global (only the first namespace may set it): raised for
    the 1M-connection test when it is lower, and put back."""

    def __init__(self):
        self.saved: int | None = None

    def at_least(self, n: int) -> None:
        try:
            cur = int(Path(CONNTRACK_MAX).read_text())
            if cur < n:
                Path(CONNTRACK_MAX).write_text(str(n))
                self.saved = cur if self.saved is None else self.saved
                log(f"raised the global nf_conntrack_max from {cur} to {n} for the table-scale "
                    "test (put back at the end)")
        except OSError as e:
            log(f"WARNING: cannot raise nf_conntrack_max ({e}): the kernel NAT will drop "
                "flows beyond its limit")

    def restore(self) -> None:
        if self.saved is not None:
            try:
                Path(CONNTRACK_MAX).write_text(str(self.saved))
            except OSError:
                pass


def worst_placement(runs: dict) -> dict:
    """metric -> (the worst figure over the placements that measured it, its CPU)."""
    from .suite import METRICS
    out: dict = {}
    for cpu, figures in runs.items():
        for k, v in (figures or {}).items():
            higher = METRICS[k][1]
            if k not in out or (v < out[k][0] if higher else v > out[k][0]):
                out[k] = (v, cpu)
    return out


def _progress(rep: str, test: str, middle: str, figures: dict, elapsed: float) -> None:
    from .suite import METRICS
    shown = "  ".join(f"{k} {report._fmt(v)} {METRICS[k][0]}" for k, v in figures.items())
    log(f"[{elapsed:5.0f}s] {rep:>5} {test:16} {middle:15} {shown}")


def run(settings: Settings, names: list[str], repeat: int, out_dir: Path,
        prefix: str, forwarding: dict | None = None) -> int:
    tests = [t for t in TESTS if t.name in names]
    scale_max = max((settings.scale[t.name] for t in tests if t.once), default=0)
    capacity = max(262_144, int(scale_max * 1.2) + 100_000)
    procs = Procs()                       # builds hpbench first: fail before building a lab
    limit = ConntrackLimit()
    lab: Lab | None = None
    t_start = time.monotonic()
    errors: list[str] = []
    try:
        log(f"building lab {prefix!r}: the middles between the same functions and server")
        lab = _start_lab(prefix, capacity, forwarding)
        state = lab.state
        unavailable: dict[str, str] = {}
        middles = build_middles(state, unavailable)
        for why in unavailable.values():
            log(f"WARNING: {why}; the run goes on without it")
        prepare_server(state)
        dp_pid = lab.pid
        host = state.hosts[0]
        ctx = Ctx(settings=settings, procs=procs, middles=middles, server_ns=host.ns,
                  server_addr=host.ipv4, prefix=prefix, dp_pid=dp_pid)
        if scale_max:
            limit.at_least(int(scale_max * 1.3) + 100_000)
        # warm-up, not counted: neighbours learnt, every middle carries traffic
        from .suite import Flows, send
        for m in middles.values():
            w = send(ctx, m, Flows("warmup", "bulk", 1), 10_000, 0.2)
            if not w["received"]:
                raise RuntimeError(f"nothing came through the {m.name} middle")
        for name in (n for n in KERNEL_NATS if n in middles):
            if masquerade_count(middles[name]) == 0:
                raise RuntimeError(f"the {name} middle did not masquerade")
        busy = machine_busy()
        if busy > BUSY:
            log(f"WARNING: the machine is {busy * 100:.0f}% busy before the benchmark starts "
                "(other processes): figures will be noisy, Hyperplane's (which needs a core "
                "of its own) most")
        log(f"{'time':>7} {'rep':>5} {'test':16} {'middle':15} figures")
        order = list(middles)
        # repeats of the repeated tests, then the table-scale ones (once: the tables they fill
        # would stay behind every later test)
        passes = [(rep, [t for t in tests if not t.once]) for rep in range(repeat)]
        passes.append((0, [t for t in tests if t.once]))
        cpus = allowed_cpus(dp_pid) if (os.cpu_count() or 1) > 1 else []
        log(f"Hyperplane runs every test with its forwarding thread put on each of the CPUs "
            f"{cpus} in turn; its figure is the worst of them" if len(cpus) > 1 else
            "one placement of the forwarding thread")

        def measure(t, m: str, rep: int, cpu: int | None) -> dict | None:
            """One test through one middle (Hyperplane: its forwarding thread first put on
            `cpu`); the figures, or None when it failed."""
            rep_s = "once" if t.once else f"{rep + 1}/{repeat}"
            shown = m if cpu is None else f"{m}@cpu{cpu}"
            t0 = time.monotonic()
            before = dataplane_counters(lab) if m == "hyperplane" else {}
            placed = place_forwarding(dp_pid, cpu) if cpu is not None else None
            ctx.label = shown
            try:
                with Sampler(procs.procs, dp_pid if m == "hyperplane" else None) as where:
                    figures, detail = t.run(ctx, middles[m])
            except RuntimeError as e:   # one failed measurement: the others go on
                procs.kill_all()
                errors.append(f"{t.name} through {shown} (repeat {rep + 1}): {e}")
                ctx.samples.append({"test": t.name, "middle": m, "forwarding_cpu": cpu,
                                    "repeat": rep, "error": str(e)})
                log(f"[{time.monotonic() - t_start:5.0f}s] {rep_s:>5} {t.name:16} "
                    f"{shown:10} FAILED: {e}")
                return None
            if m == "hyperplane":
                after = dataplane_counters(lab)
                detail["dataplane_counters"] = {k: v - before.get(k, 0)
                                                for k, v in after.items()
                                                if v != before.get(k, 0)}
            for k, v in figures.items():
                ctx.record(k, shown, v)
            ctx.samples.append({"test": t.name, "middle": m, "forwarding_cpu": cpu,
                                "forwarding_placed": placed, "repeat": rep,
                                "seconds": time.monotonic() - t0, "figures": figures,
                                "placement": where.result(), **detail})
            _progress(rep_s, t.name, shown, figures, time.monotonic() - t_start)
            return figures

        for rep, batch in passes:
            for t in batch:
                for m in order:
                    if m != "hyperplane" or len(cpus) < 2:
                        measure(t, m, rep, None)
                        continue
                    runs = {c: measure(t, m, rep, c) for c in cpus}
                    for k, (v, c) in worst_placement(runs).items():
                        ctx.record(k, m, v)
                        if (k, f"{m}@cpu{c}") in ctx.limited:
                            ctx.limited.add((k, m))
            order = order[1:] + order[:1]     # who goes first changes every repeat
        rows = report.results(ctx.values, ctx.limited)
        when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        info = machine()
        head = (f"{'QUICK (figures not comparable): ' if settings.quick else ''}medians of "
                f"{repeat} repeat(s), {when}, {info['cpus']} CPUs {info['cpu_model']}, "
                f"kernel {info['kernel']}, machine {busy * 100:.0f}% busy before the start")
        print(head)
        print(report.table(rows))
        for e in errors:
            print(f"FAILED: {e}")
        out_dir.mkdir(parents=True, exist_ok=True)
        doc = {"when": when, "quick": settings.quick, "repeat": repeat, "tests": names,
               "forwarding": {"config": forwarding or {},
                              "stats": _forwarding_stats(lab)},
               "settings": vars(settings), "machine": {**info, "busy_before": busy},
               "middles": {k: vars(v) for k, v in middles.items()},
               "middles_unavailable": unavailable,
               "duration_s": time.monotonic() - t_start,
               "errors": errors, "results": rows, "samples": ctx.samples}
        (out_dir / "bench.json").write_text(json.dumps(doc, indent=1, default=str))
        (out_dir / "bench.md").write_text(head + "\n\n" + report.markdown(rows) + "\n")
        why = report.chart(rows, out_dir / "bench.png", head, report.loss_curves(ctx.samples))
        log(f"wrote {out_dir / 'bench.json'}" +
            (f" and {out_dir / 'bench.png'}" if why is None else f" (no chart: {why})"))
        return 1 if errors else 0
    finally:
        procs.kill_all()
        if errors and lab is not None:
            _keep_dataplane_log(lab, out_dir)
        _teardown(lab, prefix)
        limit.restore()


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="hyperplane bench", description=__doc__.split("\n")[0])
    add_arguments(ap)
    return ap


def main(args: argparse.Namespace) -> int:
    """Runs the benchmark from parsed arguments; RuntimeError for failures to report."""
    if os.geteuid() != 0:
        raise RuntimeError("hyperplane bench needs root (network namespaces): run it with sudo")
    names = TEST_NAMES if not args.tests else [n.strip() for n in args.tests.split(",")]
    unknown = [n for n in names if n not in TEST_NAMES]
    if unknown:
        raise RuntimeError(f"unknown test(s) {', '.join(unknown)}; known: {', '.join(TEST_NAMES)}")
    try:
        forwarding = forwarding_table(args.forwarding)
        bench_config("bn", 1, forwarding)            # its values checked before any lab
    except ValueError as e:
        raise RuntimeError(str(e)) from None
    repeat = args.repeat or (1 if args.quick else 3)
    if repeat < 1:
        raise RuntimeError("--repeat must be at least 1")
    prefix = args.prefix or "bn" + "".join(random.choices(string.ascii_lowercase
                                                              + string.digits, k=2))

    def on_term(signum, _frame):
        raise SystemExit(128 + signum)    # runs the finally blocks
    old = signal.signal(signal.SIGTERM, on_term)
    try:
        return run(Settings.for_run(args.quick), names, repeat, Path(args.out), prefix,
                   forwarding)
    finally:
        signal.signal(signal.SIGTERM, old)


if __name__ == "__main__":
    try:
        sys.exit(main(parser().parse_args()))
    except RuntimeError as e:
        print(f"hyperplane bench: {e}", file=sys.stderr)
        sys.exit(1)
