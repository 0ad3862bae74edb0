"""The ENI manager's policy (hyperplane.enimanager) against a fake lab: scale-out at the
high-water mark, exactly one new ENI at a time, the group limit and creation failures (a logged
error and a counter, never a loop), Idle and reclaim (scale-out ENIs first), requests."""

import logging
import threading
from dataclasses import dataclass


from hyperplane.enimanager import ACTIVE, DELETED, IDLE, PENDING, EniManager


@dataclass
class FakeEni:
    id: int
    group: str
    eni_id: str
    scale_out: bool = False
    status: str = "Active"
    subnet: str = "app"
    security_groups: tuple = ("sg-a",)
    ifname: str = ""
    mac: str = ""
    ipv4: str = ""
    ipv6: str | None = None


class FakeLab:
    """Pools of `size` ports per ENI; the test sets usage, connections and quarantined
    ports. A new ENI takes the lowest id no unreleased ENI holds, as the lab does."""

    def __init__(self, size=100, addresses=1000):
        self.size, self.addresses = size, addresses
        self.enis: list[FakeEni] = []               # every ENI made
        self.held: set[int] = set()                 # ids not released
        self.in_use: dict[int, int] = {}
        self.conns: dict[int, int] = {}
        self.quarantined: dict[int, int] = {}
        self.in_group: set[int] = set()
        self.fail_attach = False

    def add(self, group, scale_out=False):
        if self.addresses == 0:
            raise RuntimeError("subnet has no free address")
        self.addresses -= 1
        i = min(set(range(len(self.held) + 1)) - self.held)
        e = FakeEni(i, group, f"eni-{len(self.enis):017x}", scale_out, ipv4=f"10.0.1.{4 + i}")
        self.enis.append(e)
        self.held.add(i)
        self.in_use[i] = self.conns[i] = self.quarantined[i] = 0
        return e

    # the Backend protocol
    def create(self, group, scale_out):
        return self.add(group, scale_out)

    def attach(self, eni):
        if self.fail_attach:
            raise RuntimeError("data plane has no free port")
        self.in_group.add(eni.id)

    def usage(self, eni):
        return self.in_use[eni.id] / self.size

    def pools(self, eni):
        return {"udp4": {"size": self.size, "free": self.size - self.in_use[eni.id],
                         "in_use": self.in_use[eni.id], "quarantined": 0}}

    def connections(self, eni):
        return self.conns[eni.id]

    def retire(self, eni):
        if self.conns[eni.id]:
            return False
        self.in_group.discard(eni.id)
        return True

    def destroy(self, eni):
        self.in_group.discard(eni.id)

    def release(self, eni):
        if self.quarantined[eni.id]:
            return False
        self.held.discard(eni.id)
        self.addresses += 1
        return True


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def manager(lab, clock, **kw):
    first = lab.add("g")
    lab.in_group.add(first.id)
    m = EniManager(lab, clock=clock, **{"high_water": 0.9, "limit": 3, "idle_reclaim_s": 10,
                                        **kw})
    m.adopt(first)
    lab.conns[first.id] = 1
    return m


def ask(m, group):
    """request() from this thread, answered by one worker round on another."""
    def answer():
        assert m.wake.wait(5)
        m.wake.clear()
        m.step()
    t = threading.Thread(target=answer)
    t.start()
    try:
        return m.request(group, timeout=5)
    finally:
        t.join()


def statuses(m):
    return [(e["index"], e["status"]) for e in m.listing()]


def test_scale_out_once_past_high_water_then_the_new_one_fills():
    lab, clock = FakeLab(), Clock()
    m = manager(lab, clock)
    lab.in_use[0] = 89
    m.step()
    assert statuses(m) == [(0, ACTIVE)]
    lab.in_use[0] = 90
    for _ in range(5):                          # exactly one, however many rounds
        m.step()
    listing = m.listing()
    assert [e["status"] for e in listing] == [ACTIVE, IDLE]   # the new one: no conns yet
    assert [h["status"] for h in listing[0]["history"]] == [ACTIVE]
    assert [h["status"] for h in listing[1]["history"]] == [PENDING, ACTIVE, IDLE]
    assert lab.in_group == {0, 1} and m.counters["scale_outs"] == 1
    lab.conns[1], lab.in_use[1] = 5, 90          # the new one past high water: one more
    m.step()
    assert len(lab.enis) == 3 and lab.enis[2].scale_out


def test_limit_is_logged_once_and_counted_never_a_loop(caplog):
    lab, clock = FakeLab(), Clock()
    m = manager(lab, clock, limit=2)
    lab.in_use[0] = 95
    m.step()
    lab.in_use[0] = lab.in_use[1] = lab.size   # every port of both taken
    lab.conns[1] = 95
    with caplog.at_level(logging.ERROR, "hyperplane.eni"):
        for _ in range(20):
            m.step()
            assert ask(m, "g") is False             # exhausted: refused, not created
    assert len(lab.enis) == 2 and m.counters["limit_reached"] == 1
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "limit of 2 ENIs" in errors[0].getMessage()


def test_failed_creation_backs_off_and_cleans_up(caplog):
    lab, clock = FakeLab(addresses=1), Clock()
    m = manager(lab, clock)
    lab.in_use[0] = 95
    with caplog.at_level(logging.ERROR, "hyperplane.eni"):
        for _ in range(10):
            m.step()                            # the subnet is full: one try per back-off
    assert m.counters["create_errors"] == 1 and len(lab.enis) == 1
    assert "no free address" in caplog.records[-1].getMessage()
    lab.addresses, lab.fail_attach = 5, True    # an address, but the data plane is full
    clock.t = 5
    m.step()
    assert m.counters["create_errors"] == 2 and lab.addresses == 5   # veth removed again
    assert statuses(m)[-1] == (1, DELETED) and lab.in_group == {0}
    clock.t, lab.fail_attach = 10, False
    m.step()                                    # the failed one's id was released: reused
    assert statuses(m)[-2:] == [(1, DELETED), (1, IDLE)] and lab.in_group == {0, 1}


def test_idle_then_reclaim_scale_out_first_then_the_last():
    lab, clock = FakeLab(), Clock()
    m = manager(lab, clock)
    lab.in_use[0] = 95
    m.step()                                    # ENI 1 (scale-out)
    lab.conns[0] = lab.in_use[0] = 0
    m.step()
    assert statuses(m) == [(0, IDLE), (1, IDLE)]
    clock.t = 5
    lab.conns[1] = 2                            # a connection: Active again
    m.step()
    assert statuses(m) == [(0, IDLE), (1, ACTIVE)]
    clock.t = 20                                # ENI 0 idle long enough, but it is the first
    m.step()
    assert statuses(m) == [(0, IDLE), (1, ACTIVE)]
    lab.conns[1] = 0
    m.step()
    clock.t = 29.9
    m.step()
    assert statuses(m) == [(0, IDLE), (1, IDLE)]
    clock.t = 30
    m.step()                                    # the scale-out one goes first
    assert statuses(m) == [(0, IDLE), (1, DELETED)] and lab.in_group == {0}
    m.step()
    assert statuses(m) == [(0, DELETED), (1, DELETED)] and lab.in_group == set()
    assert m.counters["reclaimed"] == 2
    # The next connection asks for an ENI: Pending, then Active, on demand.
    assert ask(m, "g") is True
    assert statuses(m)[-1] == (0, IDLE) and lab.in_group == {0}     # a released id again
    assert m.counters["on_demand"] == 1


def test_a_deleted_eni_is_released_once_its_quarantine_ends():
    """Reclaimed, its veth gone, but its ports in quarantine: Deleted, its id and address
    still its own; given back once the quarantine is over, then taken by the next ENI. The
    listing keeps the Deleted one beside its successor."""
    lab, clock = FakeLab(), Clock()
    m = manager(lab, clock)
    lab.conns[0] = 0
    lab.quarantined[0] = 3
    m.step()
    clock.t = 10
    m.step()
    assert statuses(m) == [(0, DELETED)] and lab.held == {0}
    assert m.listing()[0]["released"] is False
    m.step()
    assert lab.held == {0} and m.counters["released"] == 0
    lab.quarantined[0] = 0
    m.step()
    assert lab.held == set() and m.counters["released"] == 1
    assert m.listing()[0]["released"] is True
    assert ask(m, "g") is True
    old, new = m.listing()
    assert (old["index"], old["status"]) == (0, DELETED)
    assert (new["index"], new["status"], new["released"]) == (0, IDLE, False)
    assert new["id"] != old["id"] and new["ipv4"] == old["ipv4"]


def test_enis_come_and_go_for_ever():
    """More ENIs made and reclaimed than a NAT has ids (1,024): each takes a released id,
    and the listing keeps only the last DELETED_KEPT Deleted ones."""
    from hyperplane.enimanager import DELETED_KEPT
    lab, clock = FakeLab(addresses=3), Clock()
    m = manager(lab, clock, idle_reclaim_s=1)
    lab.conns[0] = 0
    m.step()                                    # Idle
    for i in range(1100):
        clock.t += 1
        m.step()                                # reclaimed and released
        assert lab.held == set(), i
        assert ask(m, "g") is True              # the next one, on demand, Idle at once
        assert lab.held == {0}
    assert len(lab.enis) == 1101
    listing = m.listing()
    assert len(listing) == DELETED_KEPT + 1 and listing[-1]["status"] == IDLE
    assert m.counters["released"] == 1100 and m.counters["create_errors"] == 0


def test_reclaim_backs_off_when_a_connection_arrives():
    lab, clock = FakeLab(), Clock()
    m = manager(lab, clock)
    lab.conns[0] = 0
    m.step()
    clock.t = 10

    real = lab.retire
    def racing(eni):                            # a connection lands before the retire
        lab.conns[eni.id] = 1
        return real(eni)
    lab.retire = racing
    m.step()
    assert statuses(m) == [(0, ACTIVE)] and lab.in_group == {0}


def test_request_from_another_thread_is_answered_by_the_worker():
    lab, clock = FakeLab(), Clock()
    m = manager(lab, clock)
    lab.in_use[0] = lab.size                    # full: exhausted
    stop = threading.Event()
    worker = threading.Thread(target=m.run, args=(stop, 0.01))
    worker.start()
    try:
        assert m.request("g", timeout=5) is True
    finally:
        stop.set()
        worker.join()
    assert lab.in_group == {0, 1}


def test_a_request_with_free_ports_somewhere_creates_nothing():
    lab, clock = FakeLab(), Clock()
    m = manager(lab, clock)
    lab.in_use[0] = 50
    assert ask(m, "g") is True
    assert len(lab.enis) == 1


def test_listing_fields():
    lab, clock = FakeLab(), Clock()
    m = manager(lab, clock)
    (e,) = m.listing()
    assert e["id"].startswith("eni-") and len(e["id"]) == 21
    for k in ("status", "subnet", "security_groups", "ipv4", "ipv6", "ports", "ports_in_use",
              "history"):
        assert k in e
    assert e["ports"]["udp4"]["size"] == 100
