"""`hyperplane top`'s screen without a daemon: a full window renders in 80x24, keys change the
view, events update the window (NEW, UPDATE, DESTROY and its linger)."""

import io
import time

import pytest

pytest.importorskip("rich")

from rich.console import Console  # noqa: E402
from rich.terminal_theme import SVG_EXPORT_THEME  # noqa: E402

from hyperplane.teach import top  # noqa: E402


def conn(i, state="ESTABLISHED", proto="tcp"):
    return {"id": i, "protocol": proto, "state": state, "src": "10.200.0.11", "sport": 1024 + i,
            "dst": "10.0.1.10", "dport": 8080, "nat_addr": "10.0.1.4", "nat_port": 2000 + i,
            "timeout_s": 300, "packets_out": i, "packets_in": 1, "function": "api"}


def snapshot(n):
    now = time.monotonic()
    snap = top.Snapshot(total=100_000)
    snap.rows = {top.conn_key(c): top.Row(c, now) for c in (conn(i) for i in range(n))}
    snap.enis = [{"id": "eni-x", "index": 0, "status": "Active",
                  "ports": {"tcp4": {"size": 65000, "in_use": 60000, "quarantined": 1000,
                                     "free": 4000}}}]
    snap.drop_rates = {"IN_UNSOLICITED_SYN": 2.5}
    return snap


def draw(snap, view, width=80, height=24) -> list[str]:
    console = Console(width=width, height=height, record=True, color_system=None)
    console.print(top.render(snap, view, width, height, "hp"))
    return console.export_text().splitlines()


def test_a_full_window_fits_80x24():
    lines = draw(snapshot(top.WINDOW), top.View())
    assert len(lines) <= 24 and all(len(l) <= 80 for l in lines)
    assert "connections 100,000 (window 2,000)" in lines[0]
    assert "IN_UNSOLICITED_SYN 2.5" in "\n".join(lines)
    assert "q quit" in lines[-1]


def test_draw_and_key_times_are_on_an_80_column_screen():
    lines = draw(snapshot(3), top.View(sort="destination", reverse=True, proto="tcp",
                                       last_draw_ms=12, last_key_ms=3))
    assert any(l.startswith("draw 12 ms key 3 ms   sort destination (reversed)  proto tcp")
               for l in lines), lines


def test_keys_sort_scroll_filter_and_quit():
    view = top.View()
    assert view.key("s", 10) and view.sort == "state"
    assert view.key("r", 10) and view.reverse
    assert view.key("p", 10) and view.proto == "tcp"
    assert view.key("\x1b[6~", 10) and view.offset == 10
    assert view.key("\x1b[A", 10) and view.offset == 9
    assert not view.key("q", 10)


def test_events_move_the_window():
    feed = top.Feed("hp", {}, window=3)
    feed.apply([{**conn(1, "SYN_SENT"), "event": "NEW"}])
    row = feed.snap.rows[top.conn_key(conn(1))]
    assert row.conn["state"] == "SYN_SENT"
    feed.apply([{**conn(1), "event": "UPDATE", "old_state": "SYN_RECV"}])
    assert row.conn["state"] == "ESTABLISHED" and row.changed
    feed.apply([{**conn(1, "TIME_WAIT"), "event": "DESTROY", "reason": "EXPIRED"}])
    assert row.gone is not None and "gone (EXPIRED)" in feed.snap.recent[-1]
    row.gone -= top.LINGER_S + 1
    feed.apply([])
    assert top.conn_key(conn(1)) not in feed.snap.rows
    for i in range(5):                  # never more than the window
        feed.apply([{**conn(10 + i), "event": "NEW"}])
    assert len(feed.snap.rows) == 3


def test_events_keep_the_count_between_two_reads():
    feed = top.Feed("hp", {}, window=3)
    feed.apply([{**conn(1, "SYN_SENT"), "event": "NEW"}])
    assert feed.snap.total is None      # not read yet: nothing to count from
    feed.snap.total = 7
    feed.apply([{**conn(2, "SYN_SENT"), "event": "NEW"}, {**conn(2), "event": "UPDATE"}])
    assert feed.snap.total == 8
    feed.apply([{**conn(1), "event": "DESTROY"}, {**conn(2), "event": "DESTROY"}])
    assert feed.snap.total == 6


def test_a_screen_in_ansi_becomes_an_svg_of_it():
    console = Console(width=80, height=24, force_terminal=True, color_system="standard",
                      file=io.StringIO())
    console.print(top.render(snapshot(3), top.View(), 80, 24, "hp"))
    svg = top.screenshot_svg(console.file.getvalue())
    assert svg.startswith("<svg") and "hyperplane&#160;top" in svg
    assert svg.count("ESTABLISHED") == 3
    green = SVG_EXPORT_THEME.ansi_colors[2].hex         # ESTABLISHED's colour, as drawn
    assert f"fill: {green}" in svg
