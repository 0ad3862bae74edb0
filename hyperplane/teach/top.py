"""`hyperplane top`: the connection table as it changes, full screen (Rich).

The screen shows a window of the table, never all of it: the first WINDOW connections that
match the filters (the daemon's paged listing, read again every REFRESH_S; the listing is
closed after the page that fills the window), kept current between two reads by the event
stream (`conntrack -E`: NEW, UPDATE, DESTROY). A connection that ends stays on screen, dimmed,
for LINGER_S. The ENI pools, the total count and the drops come from `eni`, `conntrack -C` and
`stats` on the same refresh; NEW and DESTROY move the count between two reads; drops are
shown as rates.

Two threads feed it (listing and events) and the screen thread only draws: a key is handled
and drawn at once, whatever the daemon is doing; what the feed learnt is drawn within NEWS_S
(a burst of events costs one draw); the countdowns are drawn every TICK_S.
"""

from __future__ import annotations

import os
import select
import sys
import termios
import threading
import time
import tty
from dataclasses import dataclass, field

from .. import control

WINDOW = 2000               # connections held at most (the screen shows a page of them)
REFRESH_S = 2.0             # listing, count, ENIs and stats read again this often
LINGER_S = 3.0              # an ended connection stays on screen, dimmed, this long
TICK_S = 0.5                # the screen is redrawn this often (the countdowns), and at each key
NEWS_S = 0.25               # what the feed learnt (events, a listing) is drawn this soon, at most
                            # this often
RECENT = 6                  # events listed under the table

STATE_STYLE = {
    "SYN_SENT": "yellow", "SYN_RECV": "yellow", "ESTABLISHED": "green",
    "FIN_WAIT": "magenta", "CLOSE_WAIT": "magenta", "LAST_ACK": "magenta",
    "TIME_WAIT": "blue", "CLOSE": "red", "UDP_FIRST": "cyan", "UDP_STREAM": "bright_cyan",
}
SORTS = ("table", "state", "timeout", "function", "destination", "packets")
PROTOS = (None, "tcp", "udp")
KEYS = "q quit  s sort  r reverse  p tcp/udp  ↑↓ PgUp PgDn scroll"


def conn_key(c: dict) -> tuple:
    return (c["id"], c["protocol"], c["src"], c["sport"], c["dst"], c["dport"])


def endpoint(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def event_text(e: dict) -> str:
    """One event in a line: time, type, the connection, and what changed."""
    what = {"NEW": e["state"], "UPDATE": f"{e.get('old_state') or '?'}→{e['state']}",
            "DESTROY": f"gone ({e.get('reason') or 'ended'})"}[e["event"]]
    clock = (e.get("time") or "")[11:23]
    return (f"{clock} {e['event']:<7} {e['protocol']} {endpoint(e['src'], e['sport'])}>"
            f"{endpoint(e['dst'], e['dport'])} {what}")


@dataclass
class Row:
    conn: dict
    seen: float                     # monotonic time its timeout_s was read
    changed: float = 0.0            # last state change seen (to highlight it)
    gone: float | None = None       # when its DESTROY came

    def timeout_left(self, now: float) -> int:
        return max(0, int(self.conn.get("timeout_s", 0) - (now - self.seen)))


@dataclass
class Snapshot:
    """What the feed threads learnt, read by the screen thread under the lock."""
    rows: dict = field(default_factory=dict)        # conn_key -> Row
    total: int | None = None
    enis: list = field(default_factory=list)
    eni_taken: dict = field(default_factory=dict)   # ENI id -> monotonic time it appeared
    drop_rates: dict = field(default_factory=dict)  # reason -> per second
    events: int = 0
    event_rate: float = 0.0
    error: str | None = None
    refreshed: float = 0.0
    recent: list = field(default_factory=list)      # the last RECENT events, as text
    news: bool = False                              # learnt something since the last draw


class Feed:
    """The daemon's listing, counts, ENIs and stats (one thread) and its events (another)."""

    def __init__(self, prefix: str, spec: dict, window: int = WINDOW):
        self.prefix, self.spec, self.window = prefix, spec, window
        self.lock = threading.Lock()
        self.snap = Snapshot()
        self.stopping = threading.Event()
        self._drops_before: tuple[float, dict] | None = None
        self._events_before = (time.monotonic(), 0)
        self.threads = [threading.Thread(target=self._refresh_loop, name="top-listing", daemon=True),
                        threading.Thread(target=self._event_loop, name="top-events", daemon=True)]

    def start(self) -> "Feed":
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        self.stopping.set()

    # -- listing, count, ENIs, stats ---------------------------------------------------------

    def read_window(self) -> list[dict]:
        conns = []
        pages = control.listing(self.prefix, "conntrack", filter=self.spec,
                                page_size=min(self.window, control.PAGE_SIZE))
        try:
            for page in pages:
                conns.extend(page)
                if len(conns) >= self.window:
                    break
        finally:
            pages.close()                   # the rest of the table is never read
        return conns[:self.window]

    def refresh(self) -> None:
        try:
            conns = self.read_window()
            total = control.request(self.prefix, "conntrack-count", filter=self.spec)["count"]
            enis = control.request(self.prefix, "eni")["enis"]
            stats = control.request(self.prefix, "stats")
        except control.ControlError as e:
            with self.lock:
                self.snap.error = str(e)
            return
        from ..metrics import by_reason
        now = time.monotonic()
        drops = by_reason(stats, "drop")
        rates = {}
        if self._drops_before:
            then, before = self._drops_before
            rates = {r: (n - before.get(r, 0)) / max(now - then, 1e-3) for r, n in drops.items()
                     if n != before.get(r, 0)}
        self._drops_before = (now, drops)
        with self.lock:
            old = self.snap.rows
            rows = {}
            for c in conns:
                k = conn_key(c)
                prev = old.get(k)
                changed = prev.changed if prev and prev.conn["state"] == c["state"] else (
                    now if prev else 0.0)
                rows[k] = Row(c, now, changed)
            for k, r in old.items():        # ended ones linger; events since the read stay
                if k not in rows and (r.gone is not None or r.seen > now - REFRESH_S / 2):
                    rows[k] = r
            self.snap.rows = rows
            self.snap.total = total
            for e in enis:
                if e["status"] != "Deleted":
                    self.snap.eni_taken.setdefault(e["id"], now if self.snap.refreshed else 0.0)
            self.snap.enis = enis
            self.snap.drop_rates = rates
            self.snap.error = None
            self.snap.refreshed = now
            self.snap.news = True

    def _refresh_loop(self) -> None:
        while not self.stopping.is_set():
            self.refresh()
            self.stopping.wait(REFRESH_S)

    # -- events ------------------------------------------------------------------------------

    def apply(self, events: list[dict]) -> None:
        now = time.monotonic()
        with self.lock:
            rows = self.snap.rows
            for e in events:
                if e.get("event") not in ("NEW", "UPDATE", "DESTROY"):
                    continue
                self.snap.events += 1
                self.snap.news = True
                self.snap.recent.append(event_text(e))
                if self.snap.total is not None and e["event"] != "UPDATE":
                    # the count kept current between two reads, as the window is
                    self.snap.total = max(0, self.snap.total + (1 if e["event"] == "NEW" else -1))
                k = conn_key(e)
                row = rows.get(k)
                if e["event"] == "DESTROY":
                    if row is not None:
                        row.gone = now
                        row.conn = {**row.conn, **e, "timeout_s": 0}
                elif row is not None:
                    if row.conn["state"] != e["state"]:
                        row.changed = now
                    row.conn, row.seen = e, now
                elif len(rows) < self.window:
                    rows[k] = Row(e, now, now)
            del self.snap.recent[:-RECENT]
            for k in [k for k, r in rows.items() if r.gone is not None and now - r.gone > LINGER_S]:
                del rows[k]
            then, count = self._events_before
            if now - then >= 1.0:
                self.snap.event_rate = (self.snap.events - count) / (now - then)
                self._events_before = (now, self.snap.events)

    def _event_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                for page in control.listing(self.prefix, "conntrack-events", filter=self.spec,
                                            timeout=5.0):
                    self.apply(page)        # an empty page is the stream's heartbeat
                    if self.stopping.is_set():
                        return
            except control.ControlError as e:
                with self.lock:
                    self.snap.error = f"events: {e}"
            self.stopping.wait(1.0)


# -- the screen ---------------------------------------------------------------------------------

@dataclass
class View:
    sort: str = "table"
    reverse: bool = False
    proto: str | None = None
    offset: int = 0
    last_draw_ms: float = 0.0
    last_key_ms: float | None = None

    def key(self, k: str, page: int) -> bool:
        """Handles a key; False means quit."""
        if k in ("q", "Q", "\x03"):
            return False
        if k == "s":
            self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        elif k == "r":
            self.reverse = not self.reverse
        elif k == "p":
            self.proto = PROTOS[(PROTOS.index(self.proto) + 1) % len(PROTOS)]
            self.offset = 0
        elif k in ("\x1b[B", "j"):
            self.offset += 1
        elif k in ("\x1b[A", "k"):
            self.offset = max(0, self.offset - 1)
        elif k == "\x1b[6~":
            self.offset += page
        elif k == "\x1b[5~":
            self.offset = max(0, self.offset - page)
        return True


def sort_rows(rows: list[Row], view: View, now: float) -> list[Row]:
    keys = {
        "table": lambda r: r.conn["id"],
        "state": lambda r: r.conn["state"],
        "timeout": lambda r: r.timeout_left(now),
        "function": lambda r: (r.conn.get("function") or "", r.conn["src"], r.conn["sport"]),
        "destination": lambda r: (r.conn["dst"], r.conn["dport"]),
        "packets": lambda r: r.conn["packets_out"] + r.conn["packets_in"],
    }
    if view.proto:
        rows = [r for r in rows if r.conn["protocol"] == view.proto]
    return sorted(rows, key=keys[view.sort], reverse=view.reverse)


def gauge(used: int, quarantined: int, size: int, width: int) -> str:
    u = round(width * used / size) if size else 0
    q = round(width * quarantined / size) if size else 0
    return "█" * u + "▒" * q + "·" * max(0, width - u - q)


def render(snap: Snapshot, view: View, width: int, height: int, prefix: str):
    """The whole screen as a Rich renderable, for a terminal of width x height."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text
    now = time.monotonic()
    lines = []
    shown_total = "?" if snap.total is None else f"{snap.total:,}"
    head = Text(f"hyperplane top  lab {prefix}  connections {shown_total} "
                f"(window {len(snap.rows):,})  events {snap.event_rate:.0f}/s",
                style="bold reverse", no_wrap=True, overflow="ellipsis")
    lines.append(head)
    if snap.error:
        lines.append(Text(f"! {snap.error}", style="bold red", no_wrap=True, overflow="ellipsis"))
    families = ("4", "6") if width >= 140 else ("4",)
    for e in snap.enis:
        if e["status"] == "Deleted":
            continue
        pools = "  ".join(
            f"{name} {gauge(p['in_use'], p['quarantined'], p['size'], 8)} "
            f"{p['in_use']}/{p['quarantined']}/{p['free']}"
            for name, p in sorted(e["ports"].items()) if name.endswith(families))
        taken = snap.eni_taken.get(e["id"], 0.0)
        fresh = taken and now - taken < 10
        lines.append(Text(f"ENI {e['index']} {e['status']:<6} {pools}"
                          + ("  NEW ENI TAKEN" if fresh else ""),
                          style="bold yellow" if fresh else "", no_wrap=True, overflow="ellipsis"))
    drops = sorted(snap.drop_rates.items(), key=lambda kv: -kv[1])
    lines.append(Text("drops/s " + ("  ".join(f"{r} {v:.1f}" for r, v in drops) if drops
                                    else "none"),
                      style="red" if drops else "dim", no_wrap=True, overflow="ellipsis"))
    filt = (f"  proto {view.proto}" if view.proto else "")
    timing = f"draw {view.last_draw_ms:.0f} ms" + (
        f" key {view.last_key_ms:.0f} ms" if view.last_key_ms is not None else "")
    lines.append(Text(f"{timing}   sort {view.sort}{' (reversed)' if view.reverse else ''}"
                      f"{filt}   ports: used/quarantined/free", style="dim", no_wrap=True,
                      overflow="ellipsis"))
    page = max(1, height - len(lines) - 4 - RECENT)
    rows = sort_rows(list(snap.rows.values()), view, now)
    view.offset = min(view.offset, max(0, len(rows) - page))
    table = Table(box=None, padding=(0, 1), show_edge=False, expand=False, pad_edge=False)
    for name, w in (("pr", 3), ("state", 11), ("function side", None), ("customer side", None),
                    ("ENI side", None), ("left", 5)):
        table.add_column(name, width=w, no_wrap=True, overflow="ellipsis",
                         justify="right" if name == "left" else "left")
    for r in rows[view.offset:view.offset + page]:
        c = r.conn
        style = "dim strike" if r.gone is not None else STATE_STYLE.get(c["state"], "")
        if r.gone is None and now - r.changed < 1.5 and r.changed:
            style += " bold"
        table.add_row(c["protocol"], c["state"] if r.gone is None else "gone",
                      endpoint(c["src"], c["sport"]), endpoint(c["dst"], c["dport"]),
                      endpoint(c["nat_addr"], c["nat_port"]),
                      f"{r.timeout_left(now)}s", style=style)
    lines.append(table)
    lines += [Text("") for _ in range(max(0, page - len(rows[view.offset:view.offset + page])))]
    lines.append(Text("recent events", style="dim", no_wrap=True))
    recent = snap.recent[-RECENT:]
    lines += [Text(t, no_wrap=True, overflow="ellipsis") for t in recent]
    lines += [Text("") for _ in range(RECENT - len(recent))]
    lines.append(Text(f"{view.offset + 1}-{min(len(rows), view.offset + page)} of {len(rows)}   "
                      + KEYS, style="reverse", no_wrap=True, overflow="ellipsis"))
    return Group(*lines)


def screenshot_svg(ansi: str, width: int = 80, title: str = "hyperplane top") -> str:
    """A terminal's screen (text with its ANSI colour codes, as `tmux capture-pane -e -p`
    gives it) as an SVG picture of that terminal."""
    import io

    from rich.console import Console
    from rich.text import Text
    console = Console(record=True, width=width, file=io.StringIO(), force_terminal=True,
                      color_system="truecolor")
    for line in ansi.rstrip("\n").split("\n"):
        console.print(Text.from_ansi(line, no_wrap=True, overflow="crop"), no_wrap=True,
                      crop=True)
    return console.export_svg(title=title)


def read_key(fd: int, timeout: float) -> str | None:
    """One key (an escape sequence whole), or None after timeout."""
    if not select.select([fd], [], [], timeout)[0]:
        return None
    data = os.read(fd, 16)
    return data.decode(errors="replace") if data else "q"


def run(prefix: str, spec: dict) -> int:
    from rich.console import Console
    from rich.live import Live
    console = Console()
    feed = Feed(prefix, spec).start()
    view = View()
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd) if os.isatty(fd) else None
    try:
        if saved:
            tty.setcbreak(fd)
        with Live(console=console, screen=True, auto_refresh=False) as live:
            next_tick = time.monotonic()
            while True:
                key = read_key(fd, max(0.0, min(next_tick - time.monotonic(), NEWS_S)))
                pressed = time.monotonic()
                if key is not None and not view.key(key, max(1, console.size.height - 8)):
                    return 0
                if key is None and pressed >= next_tick:
                    next_tick += TICK_S     # the ticks keep their period, whatever a draw takes
                    if next_tick <= pressed:        # late (a stalled terminal): start again
                        next_tick = pressed + TICK_S
                elif key is None and not feed.snap.news:
                    continue
                with feed.lock:     # the screen is built from copies: drawn without the lock
                    screen = render(feed.snap, view, console.size.width, console.size.height,
                                    prefix)
                    feed.snap.news = False
                live.update(screen, refresh=True)
                last_draw = time.monotonic()
                view.last_draw_ms = (last_draw - pressed) * 1000
                if key is not None:
                    view.last_key_ms = (last_draw - pressed) * 1000
    finally:
        feed.stop()
        if saved:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
