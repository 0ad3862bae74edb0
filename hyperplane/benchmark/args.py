"""The arguments of `hyperplane bench` (light to import: the CLI builds its parser from it)."""

from __future__ import annotations

import argparse

# what --tests selects, in the order they run (suite.TESTS holds the same names)
TEST_NAMES = ("tcp-1", "tcp-1-conntrack-poll", "tcp-1-reverse", "tcp-4", "tcp-4-reverse", "udp64-1flow",
              "udp64-10kflows", "tcp-conn-rate", "udp-flow-rate", "rtt-idle", "rtt-loaded",
              "scale-10k", "scale-100k", "scale-1m")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--quick", action="store_true",
                    help="every test briefly, small tables (proves the harness works; the "
                         "figures are not comparable)")
    ap.add_argument("--tests", help="comma-separated, of: " + ",".join(TEST_NAMES))
    ap.add_argument("--repeat", type=int, help="repeats, medians reported (default 3, "
                                               "quick 1)")
    ap.add_argument("--out", default="bench-out", help="folder for bench.json and bench.png "
                                                      "(default: ./bench-out)")
    ap.add_argument("--prefix", help="lab prefix (default: 'bn' + two random characters)")
    ap.add_argument("--forwarding", default="", metavar="KEY=VALUE,...",
                    help="the lab's [hyperplane.forwarding] for this run, e.g. "
                         "'scheduling=realtime,cpus=1,spin_us=50' (cpus: CPU numbers joined "
                         "by +); default: the config's defaults")


def forwarding_table(text: str) -> dict:
    """'scheduling=realtime,cpus=0+1,spin_us=50' as a [hyperplane.forwarding] table."""
    out: dict = {}
    for item in filter(None, (i.strip() for i in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--forwarding: {item!r} is not KEY=VALUE")
        if key == "cpus":
            out[key] = [int(c) for c in value.split("+") if c]
        elif value.isdigit():
            out[key] = int(value)
        else:
            out[key] = value
    return out
