"""The ENI manager: the ENIs of each (subnet, security groups) group and their lifecycle.

One ENI per group is shared by every function of the group. An ENI is
Pending (being created: veth, addresses, data-plane port) -> Active (in its group, taking
connections) -> Idle (no connection since `since`; Active again when one comes) -> Deleted
(reclaimed after the idle time: out of its group, port detached, veth gone) -> released
(once nothing is left of it in the NAT, its quarantined ports' time included: its NAT id,
address and state space go to the next ENI), so ENIs can come and go for ever. The listing
keeps the last DELETED_KEPT released ENIs, for their history.

Scale-out before exhaustion: when the newest ENI of a group fills past the high-water mark,
exactly one new ENI is made ready (Pending, then Active) and joins the group, whose newest ENI
with a free port takes the new connections (csrc/nat/nat.c map_port). A group stops at its ENI
limit, and a failed creation (subnet full, data-plane port limit) waits a back-off: a logged
error and a counter each, never a loop that eats the subnet.

One thread (the daemon's ENI worker) drives it through step(); request() (the slow path, when
a group has no free port at all) and listing() (control) are safe from other threads. The
backend does the work (the daemon: lab, NAT, data plane; tests: a fake).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger("hyperplane.eni")

PENDING, ACTIVE, IDLE, DELETED = "Pending", "Active", "Idle", "Deleted"
RETRY_AFTER_S = 5.0          # a failed creation is tried again no sooner than this
DELETED_KEPT = 64            # released ENIs the listing still shows


class Backend(Protocol):
    def create(self, group: str, scale_out: bool):
        """Lab side: veth and addresses; returns the new ENI's info (status Pending)."""
    def attach(self, eni) -> None:
        """NAT, data-plane port and slow path first, then the group (ready before it joins)."""
    def usage(self, eni) -> float:
        """The fullest of its pools: (size - free) / size (quarantined ports count), or the
        largest share of its port quota one function holds there, whichever is more."""
    def set_can_grow(self, group: str, can_grow: bool) -> None:
        """Tells the NAT whether the group can take one more ENI (optional): a function at
        its port share everywhere is then answered PORTS_EXHAUSTED, not FUNCTION_LIMIT."""
    def pools(self, eni) -> dict:
        """Per pool (tcp4, udp4, ...): size, free, in_use, quarantined."""
    def connections(self, eni) -> int:
        """Its live connections."""
    def retire(self, eni) -> bool:
        """Takes it out of its group if it has no connection (atomically); False otherwise."""
    def destroy(self, eni) -> None:
        """Detaches its port, deletes its veth, records it Deleted in the lab (the lab keeps
        no other status: the manager's listing is where statuses live)."""
    def release(self, eni) -> bool:
        """A Deleted ENI: gives its NAT id, address and state space back once nothing is left
        of it (no connection, no port in quarantine); False while something is."""


@dataclass
class Record:
    info: object                          # lab EniInfo
    status: str
    scale_out: bool
    since: float                          # entered its status at (manager clock)
    history: list = field(default_factory=list)     # (status, wall time)
    released: bool = False                # Deleted, and its id and address given back


class EniManager:
    def __init__(self, backend: Backend, high_water: float = 0.9, limit: int = 16,
                 idle_reclaim_s: float = 600, clock=time.monotonic):
        self.backend = backend
        self.high_water, self.limit, self.idle_reclaim_s = high_water, limit, idle_reclaim_s
        self.clock = clock
        # By interface id (eni-...: a NAT id is reused once released), oldest first.
        self.records: dict[str, Record] = {}
        self.counters = {"created": 0, "scale_outs": 0, "on_demand": 0, "reclaimed": 0,
                         "released": 0, "limit_reached": 0, "create_errors": 0}
        self._lock = threading.Lock()               # records and requests, vs other threads
        self._requests: dict[str, threading.Event] = {}
        self._refused: dict[str, bool] = {}         # group -> its last request was refused
        self._at_limit: set[str] = set()            # groups whose limit was logged
        self._retry_at: dict[str, float] = {}       # group -> no creation before
        self._can_grow: dict[str, bool] = {}        # group -> what the NAT was told
        self.wake = threading.Event()

    # --- other threads -------------------------------------------------------------------

    def adopt(self, eni, status: str | None = None) -> None:
        """An ENI that exists already (built at `up`, or before a restart)."""
        status = status or eni.status
        with self._lock:
            self.records[eni.eni_id] = Record(eni, status, eni.scale_out, self.clock(),
                                              [(status, time.time())])

    def request(self, group: str, timeout: float) -> bool:
        """The group has no free port on any ENI (or no ENI): asks the worker for one and
        waits up to timeout; True when one became Active."""
        with self._lock:
            done = self._requests.get(group)
            if done is None:
                done = self._requests[group] = threading.Event()
        self.wake.set()
        return done.wait(timeout) and not self._refused.get(group, True)

    def listing(self) -> list[dict]:
        """Every ENI, Deleted ones included, oldest first: what `hyperplane eni` shows."""
        with self._lock:
            recs = [(r.info, r.status, r.scale_out, list(r.history), r.released)
                    for r in self.records.values()]
        out = []
        for info, status, scale_out, history, released in recs:
            pools = self.backend.pools(info) if status in (ACTIVE, IDLE) else {}
            out.append({"id": info.eni_id, "index": info.id, "status": status,
                        "released": released,
                        "subnet": info.subnet, "security_groups": list(info.security_groups),
                        "group": info.group, "ifname": info.ifname, "mac": info.mac,
                        "ipv4": info.ipv4, "ipv6": info.ipv6, "scale_out": scale_out,
                        "ports": pools,
                        "ports_in_use": sum(p["in_use"] for p in pools.values()),
                        "history": [{"status": s, "at": t} for s, t in history]})
        return out

    def groups(self) -> dict[str, list[Record]]:
        with self._lock:
            out: dict[str, list[Record]] = {}
            for r in self.records.values():
                if r.status != DELETED:
                    out.setdefault(r.info.group, []).append(r)
            return out

    # --- the worker ----------------------------------------------------------------------

    def step(self, known_groups=()) -> None:
        """One round: answers requests, scales out groups past the high-water mark, tracks
        Idle ENIs and reclaims the ones idle long enough."""
        with self._lock:
            requested = dict(self._requests)
        live = self.groups()
        for group in set(live) | set(requested) | set(known_groups):
            enis = live.get(group, [])
            if group in requested:
                ok = any(r.status in (ACTIVE, IDLE) and self.backend.usage(r.info) < 1.0
                         for r in enis) or self._create(group, scale_out=bool(enis))
                with self._lock:
                    self._refused[group] = not ok
                    self._requests.pop(group).set()
            elif enis and self._past_high_water(enis):
                self._create(group, scale_out=True)
            else:
                self._at_limit.discard(group)
        self._idle_and_reclaim()
        self._release_deleted()
        live = self.groups()
        for group in set(live) | set(known_groups):
            self._tell_can_grow(group, len(live.get(group, [])) < self.limit)

    def _tell_can_grow(self, group: str, can_grow: bool) -> None:
        setter = getattr(self.backend, "set_can_grow", None)
        if setter is not None and self._can_grow.get(group) != can_grow:
            setter(group, can_grow)
            self._can_grow[group] = can_grow

    def _past_high_water(self, enis: list[Record]) -> bool:
        newest = enis[-1]
        return newest.status in (ACTIVE, IDLE) and \
            self.backend.usage(newest.info) >= self.high_water

    def _create(self, group: str, scale_out: bool) -> bool:
        live = self.groups().get(group, [])
        if len(live) >= self.limit:
            if group not in self._at_limit:
                self._at_limit.add(group)
                self.counters["limit_reached"] += 1
                log.error("ENI group %s is at its limit of %d ENIs: no scale-out; new "
                          "connections wait for free ports on the ENIs it has", group,
                          self.limit)
            return False
        if self.clock() < self._retry_at.get(group, 0):
            return False
        started = time.monotonic()
        try:
            info = self.backend.create(group, scale_out)
        except Exception as e:
            return self._failed(group, f"cannot create an ENI for group {group}: {e}")
        self._set(info, PENDING, scale_out)
        try:
            self.backend.attach(info)
        except Exception as e:
            try:
                self.backend.destroy(info)
            except Exception:
                log.exception("cannot remove the ENI %s that failed", info.eni_id)
            self._set(info, DELETED, scale_out)
            return self._failed(group, f"cannot attach ENI {info.eni_id} of group {group}: {e}")
        self._set(info, ACTIVE, scale_out)
        self.counters["created"] += 1
        self.counters["scale_outs" if scale_out else "on_demand"] += 1
        log.info("ENI %s (%s) of group %s is Active%s, made in %.3f s", info.eni_id, info.ipv4,
                 group, " (scale-out)" if scale_out else "", time.monotonic() - started)
        return True

    def _failed(self, group: str, message: str) -> bool:
        self.counters["create_errors"] += 1
        self._retry_at[group] = self.clock() + RETRY_AFTER_S
        log.error("%s; retrying in %g s at the earliest", message, RETRY_AFTER_S)
        return False

    def _set(self, info, status: str, scale_out: bool | None = None) -> None:
        with self._lock:
            r = self.records.get(info.eni_id)
            if r is None:
                r = self.records[info.eni_id] = Record(info, status, bool(scale_out),
                                                       self.clock())
            r.status, r.since = status, self.clock()
            r.history.append((status, time.time()))

    def _idle_and_reclaim(self) -> None:
        now = self.clock()
        for group, enis in self.groups().items():
            due = []
            for r in enis:
                busy = self.backend.connections(r.info) > 0
                if r.status == ACTIVE and not busy:
                    self._set(r.info, IDLE)
                elif r.status == IDLE and busy:
                    self._set(r.info, ACTIVE)
                elif r.status == IDLE and now - r.since >= self.idle_reclaim_s:
                    due.append(r)
            if due:
                self._reclaim(enis, due)

    def _reclaim(self, enis: list[Record], due: list[Record]) -> None:
        """One ENI of a group per round: scale-out ones first, newest first; the group's
        first ENI only once it is the last one."""
        scale_outs = [r for r in due if r.scale_out]
        if scale_outs:
            victim = scale_outs[-1]
        elif len(enis) == 1:
            victim = due[0]
        else:
            return
        if not self.backend.retire(victim.info):          # a connection came meanwhile
            self._set(victim.info, ACTIVE)
            return
        try:
            self.backend.destroy(victim.info)
        except Exception:
            log.exception("cannot remove ENI %s", victim.info.eni_id)
        self._set(victim.info, DELETED)
        self.counters["reclaimed"] += 1
        log.info("ENI %s (%s) of group %s reclaimed after %g s idle", victim.info.eni_id,
                 victim.info.ipv4, victim.info.group, self.idle_reclaim_s)

    def _release_deleted(self) -> None:
        """Deleted ENIs give their id and address back once the NAT has nothing left of them
        (their ports' quarantine over); the listing keeps the last DELETED_KEPT of them."""
        with self._lock:
            waiting = [r for r in self.records.values() if r.status == DELETED and not r.released]
        for r in waiting:
            try:
                if not self.backend.release(r.info):
                    continue
            except Exception:
                log.exception("cannot release ENI %s", r.info.eni_id)
                continue
            with self._lock:
                r.released = True
                released = [k for k, x in self.records.items() if x.released]
                for k in released[:-DELETED_KEPT]:
                    del self.records[k]
            self.counters["released"] += 1
            log.info("ENI %s (%s) released: its id %d and address go to the next ENI",
                     r.info.eni_id, r.info.ipv4, r.info.id)

    def run(self, stopping: threading.Event, every_s: float = 0.05, known_groups=()) -> None:
        """The worker's loop: a round every every_s, or at once when a request comes."""
        while not stopping.is_set():
            self.wake.wait(every_s)
            self.wake.clear()
            self.step(known_groups)
