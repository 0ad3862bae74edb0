"""`hyperplane top` with 100,000 connections (issue 18): runs tests/ns/test_top_load.py RUNS
times (root, tmux) and prints each run's figures and their medians as a Markdown table.

    sudo python3 bench/top_at_scale.py [RUNS]        (3 by default)

The test measures the time from a key sent to tmux to the pane showing its effect, the period
between two redraws of the pane, and the longest one-way delay of a UDP stream crossing the NAT
meanwhile (a gap in forwarding shows there)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHOWN = [("key_ms_median", "key to screen, median of 11 keys (ms)"),
         ("key_ms_max", "key to screen, slowest key (ms)"),
         ("redraw_s_median", "redraw period, median (s)"),
         ("redraw_s_max", "redraw period, longest (s)"),
         ("new_flow_ms_median", "new flow's datagram to its event on screen, median of 5 (ms)"),
         ("new_flow_ms_max", "new flow's datagram to its event on screen, slowest (ms)"),
         ("draw_ms_median", "draw, tick to screen written, median (ms)"),
         ("draw_ms_max", "draw, tick to screen written, longest (ms)"),
         ("max_one_way_delay_ms", "forwarding: longest one-way delay (ms)"),
         ("p99_one_way_delay_ms", "forwarding: p99 one-way delay (ms)"),
         ("first_screen_s", "top started to first full screen (s)"),
         ("connections", "connections counted on screen")]


def one_run() -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            "tests/ns/test_top_load.py"], cwd=ROOT,
                           env={**os.environ, "HP_TOP_FIGURES": out.name}, timeout=900)
        if r.returncode != 0:
            raise SystemExit(f"run failed (exit {r.returncode})")
        return json.loads(Path(out.name).read_text())


def main(argv: list[str]) -> int:
    runs = [one_run() for _ in range(int(argv[0]) if argv else 3)]
    print("| figure | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " | median |")
    print("|---|" + "---:|" * (len(runs) + 1))
    for key, label in SHOWN:
        values = [r[key] for r in runs]
        print(f"| {label} | " + " | ".join(str(v) for v in values)
              + f" | {statistics.median(values)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
