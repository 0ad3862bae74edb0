"""The data plane's answers to `hyperplane conntrack`: filtered listings, counts, deletion and
the event stream, as control commands (hyperplane.control), run on the control server's
threads:

- ``conntrack`` ``{"filter": {...}, "page_size": n}``: pages of connections;
- ``conntrack-count`` ``{"filter": {...}}``: ``{"count": n}``;
- ``conntrack-delete`` ``{"filter": {...}}``: pages of the connections removed (docs/semantics.md
  2.5); an empty filter flushes the table;
- ``conntrack-events`` ``{"filter": {...}}``: a Stream of pages of events, until the client goes;
  its first page is empty and says the reader is subscribed (it sees every later change).

The filter's keys are hyperplane.ctfilter's, plus ``function`` (a function's name). Every
connection and event is one JSON object with the keys docs/cli.md lists ("JSON keys").
"""

from __future__ import annotations

import collections
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from . import control
from .connection import ConnEvent, Connection
from .ctfilter import ConnFilter
from .vocab import STATES

# The keys of a connection in every JSON listing (conntrack -j, -D, -E, Lab.connections), in
# docs/cli.md; a unit test holds describe() to exactly these.
CONNECTION_KEYS = (
    ("id", "the connection's slot in the table (reused after it ends)"),
    ("family", "4 or 6"),
    ("proto", "6 (TCP) or 17 (UDP)"),
    ("protocol", '"tcp" or "udp"'),
    ("state", "SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, "
              "CLOSE, UDP_FIRST or UDP_STREAM (docs/semantics.md 2.1)"),
    ("assured", "true once answered and established (TCP) or a stream (UDP): never dropped "
                "early"),
    ("flags", "the core's flag bits (REPLY_SEEN 1, ASSURED 2, CLOSER_REPLY 4, FIN_SEEN 8, "
              "SYN_REPLY 16, HAIRPIN 32)"),
    ("original", "the original tuple {src, sport, dst, dport}: the function to the server"),
    ("reply", "the reply tuple {src, sport, dst, dport}: the server to the ENI address and "
              "NAT port"),
    ("src", "original source address (the function's)"),
    ("sport", "original source port"),
    ("dst", "original destination address (the server's)"),
    ("dport", "original destination port"),
    ("nat_addr", "the ENI address the connection leaves from"),
    ("nat_port", "the external port the NAT chose"),
    ("eni", "the ENI's id"),
    ("owner", "the function's owner index"),
    ("function", "the function's name (null when unknown)"),
    ("packets_out", "packets forwarded function -> server"),
    ("packets_in", "packets forwarded server -> function"),
    ("bytes_out", "bytes forwarded function -> server"),
    ("bytes_in", "bytes forwarded server -> function"),
    ("timeout_s", "whole seconds left before the connection expires (0 in DESTROY events)"),
    ("start", "when it was created, ISO 8601 UTC"),
    ("start_epoch", "the same, seconds since the epoch"),
    ("last_seen", "its last packet, ISO 8601 UTC with milliseconds"),
    ("last_seen_epoch", "the same, seconds since the epoch"),
    ("start_s", "when it was created, the data plane's clock (seconds)"),
    ("last_seen_ms", "its last packet, the data plane's clock (milliseconds)"),
    ("flow_out", "the flow-log interval function -> server since the last harvest "
                 "{packets, bytes, first_ms, last_ms, tcp_flags}, or null"),
    ("flow_in", "the same, server -> function"),
)
# An event is a connection (the keys above, after the change) and these.
EVENT_KEYS = (
    ("event", '"NEW", "UPDATE", "DESTROY", or "LOST" (then only lost, lost_total, time, '
              'time_epoch)'),
    ("seq", "1, 2, ... in the order the table changed"),
    ("time", "when, ISO 8601 UTC with milliseconds"),
    ("time_epoch", "the same, seconds since the epoch"),
    ("old_state", "UPDATE: the state before (equal to state when only assured or the reply "
                  "changed); otherwise null"),
    ("reason", "DESTROY: EXPIRED, RESET (timed out after an RST), DELETED (-D / -F), "
               "EARLY_DROP (a full table), REOPENED (a new SYN on the closed tuple); "
               "otherwise null"),
    ("lost", "LOST: events this reader lost since the last line"),
    ("lost_total", "LOST: events this reader lost in all"),
)

EVENT_POLL_S = 0.02          # a reader's turn at the ring when it found nothing new
HEARTBEAT_S = 1.0            # an empty page this often on a quiet stream: a gone client shows


def iso(epoch: float) -> str:
    """ISO 8601 in UTC with milliseconds and a Z, as YYYY-MM-DDTHH:MM:SS.mmmZ."""
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


class Clock:
    """The data plane's milliseconds as wall-clock time, as of one moment."""

    def __init__(self, now_ms: int, wall_s: float | None = None):
        self.now_ms = now_ms
        self.offset_s = (time.time() if wall_s is None else wall_s) - now_ms / 1000

    def epoch(self, ms: float) -> float:
        return round(self.offset_s + ms / 1000, 3)


class ConntrackService:
    """nat: the C core; now_ms: the data plane's clock; functions: owner index -> name."""

    def __init__(self, nat, now_ms: Callable[[], int], functions: Callable[[], dict[int, str]]):
        self.nat = nat
        self.now_ms = now_ms
        self.functions = functions
        self.timeouts_ms = nat.params.timeouts_ms
        # Connections removed by a delete, for the housekeeping thread's flow log.
        self._deleted: collections.deque[Connection] = collections.deque()
        self._lock = threading.Lock()
        self.counts = {"deleted": 0, "event_readers": 0, "events_sent": 0, "events_lost": 0}

    def handlers(self) -> dict:
        return {"conntrack": self.listing, "conntrack-count": self.count,
                "conntrack-delete": self.delete, "conntrack-events": self.events}

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def stats(self) -> dict:
        with self._lock:
            return dict(self.counts)

    def take_deleted(self) -> list[Connection]:
        """The connections deleted since the last call (their flow-log records close)."""
        out = []
        while self._deleted:
            out.append(self._deleted.popleft())
        return out

    # -- requests --------------------------------------------------------------------------

    def filter_of(self, req: dict) -> ConnFilter:
        spec = dict(req.get("filter") or {})
        name = spec.pop("function", None)
        if name is not None:
            owners = {n: owner for owner, n in self.functions().items()}
            if name not in owners:
                raise ValueError(f"filter function: no function {name!r}; known: "
                                 f"{', '.join(sorted(owners))}")
            spec["owner"] = owners[name]
        return ConnFilter.parse(spec)

    def listing(self, req: dict):
        flt = self.filter_of(req) or None
        names = self.functions()
        return control.cursor_pages(
            lambda cursor, size: self.nat.connections_page(cursor, size, filter=flt),
            convert=lambda c: self.describe(c, Clock(self.now_ms()), names),
            size=int(req.get("page_size", control.PAGE_SIZE)))

    def count(self, req: dict) -> dict:
        return {"count": self.nat.count(self.filter_of(req) or None)}

    def delete(self, req: dict):
        """Pages of the removed connections; with ``"brief": true`` each page is one
        ``{"deleted": n}`` item instead (a flush of a big table ships no pictures)."""
        flt = self.filter_of(req) or None
        names = self.functions()
        brief = bool(req.get("brief"))
        size = int(req.get("page_size", control.PAGE_SIZE))
        cursor = 0
        while cursor is not None:
            removed, cursor = self.nat.delete_page(cursor, size, filter=flt,
                                                   now_ms=self.now_ms())
            if not removed:
                continue
            self._deleted.extend(removed)
            self._count("deleted", len(removed))
            if brief:
                yield [{"deleted": len(removed)}]
            else:
                clock = Clock(self.now_ms())
                yield [self.describe(c, clock, names) for c in removed]

    def events(self, req: dict) -> control.Stream:
        reader = self.nat.events(self.filter_of(req) or None)
        return control.Stream(self._event_pages(reader))

    def _event_pages(self, reader):
        self._count("event_readers")
        names = self.functions()
        quiet_since = time.monotonic()
        try:
            yield []            # subscribed: the client knows that it sees what follows
            while True:
                events, lost = reader.read()
                clock = Clock(self.now_ms())
                page = []
                if lost:
                    self._count("events_lost", lost)
                    page.append({"event": "LOST", "lost": lost, "lost_total": reader.lost,
                                 "time": iso(clock.epoch(clock.now_ms)),
                                 "time_epoch": clock.epoch(clock.now_ms)})
                page += [self.describe_event(e, clock, names) for e in events]
                if page:
                    self._count("events_sent", len(events))
                    yield page
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since >= HEARTBEAT_S:
                    yield []
                    quiet_since = time.monotonic()
                else:
                    time.sleep(EVENT_POLL_S)
        finally:
            self._count("event_readers", -1)

    # -- pictures --------------------------------------------------------------------------

    def describe(self, c: Connection, clock: Clock, names: dict[int, str]) -> dict:
        """A connection as JSON: Connection.to_dict() and the remaining timeout, the function's
        name and wall-clock times (ISO 8601 and epoch seconds)."""
        d = c.to_dict()
        left_ms = c.last_seen_ms + self.timeouts_ms[STATES.index(c.state)] - clock.now_ms
        d["timeout_s"] = max(0, left_ms) // 1000
        d["function"] = names.get(c.owner)
        start, last = clock.epoch(c.start_s * 1000), clock.epoch(c.last_seen_ms)
        d.update(start=iso(start), start_epoch=start, last_seen=iso(last),
                 last_seen_epoch=last)
        return d

    def describe_event(self, e: ConnEvent, clock: Clock, names: dict[int, str]) -> dict:
        at = clock.epoch(e.time_ms)
        d = {"event": e.type, "seq": e.seq, "time": iso(at), "time_epoch": at,
             "old_state": e.old_state, "reason": e.reason}
        d.update(self.describe(e.conn, clock, names))
        if e.type == "DESTROY":
            d["timeout_s"] = 0
        return d


# --- the client side: what the CLI and hyperplane.Lab call ----------------------------------

def connections(prefix: str, filter: dict | None = None, run_dir: str | Path | None = None,
                timeout: float = 30.0) -> Iterator[dict]:
    """The connections of a running lab that pass the filter, as JSON objects (the keys of
    CONNECTION_KEYS), page by page as the data plane sends them."""
    for page in control.listing(prefix, "conntrack", run_dir, timeout, filter=filter or {}):
        yield from page


def count(prefix: str, filter: dict | None = None, run_dir: str | Path | None = None,
          timeout: float = 30.0) -> int:
    return control.request(prefix, "conntrack-count", run_dir, timeout,
                           filter=filter or {})["count"]


def delete(prefix: str, filter: dict | None = None, run_dir: str | Path | None = None,
           timeout: float = 60.0) -> int:
    """Deletes the connections that pass the filter (every one with none); how many."""
    return sum(item["deleted"] for page in control.listing(
        prefix, "conntrack-delete", run_dir, timeout, filter=filter or {}, brief=True)
        for item in page)


class EventStream:
    """The connection events of a running lab, from now on, as JSON objects (EVENT_KEYS and
    CONNECTION_KEYS; a LOST item when the data plane dropped some for this reader), in the
    order the table changed. Iterate it; ``close()`` (or ``with``) ends it. ``timeout``
    bounds each wait for the next event (None: wait for ever)."""

    def __init__(self, prefix: str, filter: dict | None = None,
                 run_dir: str | Path | None = None, timeout: float | None = None) -> None:
        self.lost = 0
        self.timeout = timeout
        self._pages = control.listing(prefix, "conntrack-events", run_dir,
                                      2 * HEARTBEAT_S + 5, filter=filter or {})
        next(self._pages)      # the data plane subscribed us: every later change is seen

    def __iter__(self) -> Iterator[dict[str, Any]]:
        quiet_since = time.monotonic()
        for page in self._pages:
            if not page:                # a heartbeat: the stream is alive, nothing happened
                if self.timeout is not None and time.monotonic() - quiet_since > self.timeout:
                    raise TimeoutError(f"no connection event within {self.timeout:g} s")
                continue
            for event in page:
                if event["event"] == "LOST":
                    self.lost += event["lost"]
                yield event
            quiet_since = time.monotonic()

    def close(self) -> None:
        self._pages.close()

    def __enter__(self) -> "EventStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
