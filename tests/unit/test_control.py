"""The control server with a fake handler set (no root, no data plane): idle clients, slow
readers, hostile input, many clients, paging and deadlines affect only the client that
causes them."""

from __future__ import annotations

import json
import os
import resource
import socket
import stat
import threading
import time

import pytest

from hyperplane import control


def fake_connections(n):
    """A table of ``n`` connections behind a cursor API, like Nat.connections_page."""
    def page(cursor, limit):
        end = min(n, cursor + limit)
        return [{"id": i, "src": f"10.0.{i >> 8 & 255}.{i & 255}"} for i in range(cursor, end)], \
            (end if end < n else None)
    return page


@pytest.fixture
def server(tmp_path):
    servers = []

    def make(n_conns=2500, **kw):
        s = control.ControlServer(tmp_path / f"s{len(servers)}.sock", **kw)
        s.register("status", lambda req: {"pid": os.getpid(), "ok": True})
        s.register("echo", lambda req: {"args": req})
        s.register("conntrack", lambda req: control.cursor_pages(
            fake_connections(req.get("n", n_conns)), size=req.get("page_size", 1000)))
        s.register("boom", lambda req: 1 / 0)
        s.register("slow", lambda req: time.sleep(req.get("seconds", 0.5)) or {"slept": True})

        def half_listing(req):
            yield [1, 2]
            raise RuntimeError("the table went away")
        s.register("half", half_listing)
        servers.append(s.start())
        return s
    yield make
    for s in servers:
        s.stop()


def ask(s, command, **kw):
    return control.request(None, command, path=s.path, timeout=kw.pop("timeout", 5.0), **kw)


def raw(s) -> socket.socket:
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.settimeout(5)
    c.connect(str(s.path))
    return c


def read_lines(c: socket.socket) -> list[dict]:
    data = b""
    while chunk := c.recv(65536):
        data += chunk
    return [json.loads(line) for line in data.splitlines()]


def timed(fn):
    t0 = time.monotonic()
    out = fn()
    return out, time.monotonic() - t0


def wait_until(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


# -- answers ---------------------------------------------------------------------------------

def test_one_shot_answer_and_socket_is_private(server):
    s = server()
    assert ask(s, "status") == {"pid": os.getpid(), "ok": True}
    assert ask(s, "echo", x=1)["args"] == {"command": "echo", "x": 1}
    assert stat.S_IMODE(os.stat(s.path).st_mode) == 0o600


def test_listing_streams_pages_then_done(server):
    s = server(n_conns=2500)
    c = raw(s)
    c.sendall(b'{"command": "conntrack"}\n')
    lines = read_lines(c)
    assert [len(l["page"]) for l in lines[:-1]] == [1000, 1000, 500]
    assert lines[-1] == {"done": True}
    pages = list(control.listing(None, "conntrack", path=s.path))
    assert [x["id"] for p in pages for x in p] == list(range(2500))
    assert ask(s, "conntrack", n=0) == {"items": []}
    assert len(ask(s, "conntrack", n=10)["items"]) == 10


def test_errors_are_one_line_and_the_server_goes_on(server):
    s = server()
    with pytest.raises(control.ControlError, match="unknown command 'nope'.*known: boom"):
        ask(s, "nope")
    with pytest.raises(control.ControlError, match="ZeroDivisionError"):
        ask(s, "boom")
    it = control.listing(None, "half", path=s.path)
    assert next(it) == [1, 2]
    with pytest.raises(control.ControlError, match="the table went away"):
        next(it)
    assert ask(s, "status")["ok"]
    assert s.stats()["handler_errors"] == 2


@pytest.mark.parametrize("payload, error", [
    (b"not json\n", "not JSON"),
    (b"[1, 2]\n", "JSON object with a 'command'"),
    (b'{"command": 7}\n', "JSON object with a 'command'"),
    (b"\xff\xfe\x00garbage\n", "not JSON"),
    (b"\n", "empty request"),
    (b"x" * (control.MAX_REQUEST + 10), "longer than"),
])
def test_hostile_requests_get_an_error(server, payload, error):
    s = server()
    c = raw(s)
    try:
        c.sendall(payload)
    except OSError:
        pass           # the server may close first on an oversized request
    lines = read_lines(c)
    assert len(lines) == 1 and error in lines[0]["error"]
    assert ask(s, "status")["ok"]


def test_a_client_that_closes_early_does_not_hurt(server):
    s = server(n_conns=200_000)
    for _ in range(5):
        c = raw(s)
        c.sendall(b'{"command": "conntrack"}\n')
        c.recv(100)
        c.close()
        c = raw(s)
        c.close()                      # connects and goes without a word
    assert ask(s, "status")["ok"]
    assert wait_until(lambda: s.stats()["clients"] == 0)


# -- deadlines and bounds --------------------------------------------------------------------

def test_idle_clients_do_not_delay_others(server):
    s = server(read_timeout=30.0)
    idle = [raw(s) for _ in range(20)]
    try:
        assert wait_until(lambda: s.stats()["clients"] == 20)
        answer, took = timed(lambda: ask(s, "status"))
        assert answer["ok"] and took < 0.1, took
    finally:
        for c in idle:
            c.close()


def test_an_idle_client_is_dropped_at_its_read_deadline(server):
    s = server(read_timeout=0.3)
    c = raw(s)
    c.sendall(b'{"command": "sta')              # half a request, then nothing
    lines, took = timed(lambda: read_lines(c))
    assert "no complete request within 0.3 s" in lines[0]["error"]
    assert 0.25 < took < 2.0
    assert s.stats()["timed_out"] == 1


def test_a_reader_that_never_reads_is_dropped_at_its_write_deadline(server):
    s = server(n_conns=1_000_000, write_timeout=0.5)
    c = raw(s)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.sendall(b'{"command": "conntrack"}\n')    # and never reads
    assert wait_until(lambda: s.stats()["timed_out"] == 1, timeout=5)
    answer, took = timed(lambda: ask(s, "status"))
    assert answer["ok"] and took < 0.5
    c.close()


def test_slow_readers_hold_one_page_not_the_table(server):
    """A listing of 1,000,000 connections to readers that take their time: the server makes
    a page only when the previous one is sent, so its memory stays flat."""
    s = server(n_conns=1_000_000)
    got = []

    def slow_reader():
        n = 0
        for i, page in enumerate(control.listing(None, "conntrack", path=s.path)):
            n += len(page)
            if i % 100 == 0:
                time.sleep(0.01)
        got.append(n)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    threads = [threading.Thread(target=slow_reader) for _ in range(3)]
    for t in threads:
        t.start()
    answer, took = timed(lambda: ask(s, "status"))    # meanwhile, others are served at once
    assert answer["ok"] and took < 0.5
    for t in threads:
        t.join(60)
    assert got == [1_000_000] * 3
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 50, grown_mb        # readers and server in one process: both bounded


def test_past_the_client_bound_a_clear_refusal(server):
    s = server(max_clients=4, read_timeout=30.0)
    held = [raw(s) for _ in range(4)]
    try:
        assert wait_until(lambda: s.stats()["clients"] == 4)
        (err, took) = timed(lambda: pytest.raises(control.ControlError, ask, s, "status"))
        assert "busy: 4 clients" in str(err.value) and took < 0.5
        assert s.stats()["refused_busy"] == 1
    finally:
        for c in held:
            c.close()
    assert wait_until(lambda: s.stats()["clients"] == 0)
    assert ask(s, "status")["ok"]


def test_slow_handlers_run_side_by_side(server):
    s = server()
    results = []
    threads = [threading.Thread(target=lambda: results.append(ask(s, "slow", seconds=0.5)))
               for _ in range(5)]
    _, took = timed(lambda: ([t.start() for t in threads], [t.join() for t in threads]))
    assert len(results) == 5 and took < 2.0, took


def test_stop_closes_the_socket_and_clients(server):
    s = server(read_timeout=30.0)
    c = raw(s)
    s.stop()
    assert not s.path.exists()
    try:
        assert b"done" not in c.recv(1000)
    except ConnectionResetError:
        pass                      # closed under the client: either way, it is told at once
    with pytest.raises(control.NotRunning, match="no data plane is running"):
        ask(s, "status")


def test_stop_returns_once_every_handler_is_out(server):
    """A handler still running when the server stops (one inside the data plane, say) is
    waited for: stop() returns after it ended, or names it when it outlives the timeout."""
    s = server()
    inside, leave = threading.Event(), threading.Event()

    def busy(req):
        inside.set()
        leave.wait(10)
        return {"left": True}
    s.register("busy", busy)

    def call(srv):                       # its connection is cut by stop(): no answer
        try:
            ask(srv, "busy", timeout=10)
        except (control.ControlError, OSError):
            pass
    client = threading.Thread(target=call, args=(s,))
    client.start()
    assert inside.wait(5)
    running = s.stop(timeout=0.2)
    assert [t.name for t in running] == ["control-client"]
    leave.set()
    assert running[0].join(5) is None and not running[0].is_alive()
    client.join(5)
    s2 = server()
    s2.register("busy", busy)
    inside.clear()
    leave.clear()
    threading.Thread(target=call, args=(s2,)).start()
    assert inside.wait(5)
    threading.Timer(0.2, leave.set).start()
    assert s2.stop(timeout=5) == []                 # it waited for the handler to finish


# -- the client's deadline -------------------------------------------------------------------

def test_the_client_gives_up_at_its_deadline(tmp_path):
    """A server that accepts and never answers: the client fails with one line, in time."""
    path = tmp_path / "mute.sock"
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(str(path))
    mute.listen(1)
    try:
        err, took = timed(lambda: pytest.raises(control.ControlError, control.request, None,
                                                "status", path=path, timeout=0.3))
        assert "did not answer within 0.3 s" in str(err.value) and took < 2
    finally:
        mute.close()


def test_paged_groups_lazily():
    taken = []

    def items():
        for i in range(25):
            taken.append(i)
            yield i
    pages = control.paged(items(), size=10)
    assert next(pages) == list(range(10)) and len(taken) == 10
    assert [len(p) for p in pages] == [10, 5]


# -- the daemon's conntrack handler on a real table ------------------------------------------

def test_the_daemon_lists_a_real_table_in_pages(tmp_path):
    """Daemon.conntrack_pages over a C Nat of 20,000 UDP connections: every one listed once,
    in pages of the asked size (through the core's paging when it has it)."""
    import struct
    from types import SimpleNamespace

    import framegen
    from hyperplane import vocab
    from hyperplane._core import Nat
    from hyperplane.ctcontrol import ConntrackService
    n = 20_000
    nat = Nat(capacity=32768, port_seed=7)
    g = nat.add_group()
    nat.group_add_eni(g, nat.add_eni("10.0.1.4"))
    nat.add_source("10.200.0.11", g)
    template = framegen.udp("10.200.0.11", "10.0.1.10", 1024, 9000, payload=bytes(22))
    frames = bytearray(template * n)
    for i in range(n):
        struct.pack_into("!HH", frames, i * 64 + 34, 1024 + i, 9000)
        struct.pack_into("!H", frames, i * 64 + 40, 0)              # no UDP checksum
    assert nat.translate_packed(bytes(frames), bytearray(len(frames)), 64, vocab.OUT, 1000) == n
    service = ConntrackService(nat, now_ms=lambda: 1000, functions=dict)
    with control.ControlServer(tmp_path / "d.sock") as s:
        s.register("conntrack", service.listing)
        pages = list(control.listing(None, "conntrack", path=s.path, page_size=700))
    assert max(len(p) for p in pages) == 700
    sports = [c["sport"] for p in pages for c in p]
    assert sorted(sports) == list(range(1024, 1024 + n))
