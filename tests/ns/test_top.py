"""`hyperplane top` under tmux in 80x24 on a running lab: a curl's connection appears, goes
SYN_SENT -> ESTABLISHED -> TIME_WAIT and leaves (TIME_WAIT shortened to a few seconds); a key
is answered on screen; q quits. HP_TOP_SCREENSHOT=FOLDER keeps the screen there twice, in
TIME_WAIT and once the connection left (`make top-screenshot`: docs/pictures/top-*.svg, .txt)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_observe import running_lab
from test_v2n import ECHO

ROOT = Path(__file__).resolve().parents[2]
HTTP = 8080
pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is missing")


def screen(session: str, ansi: bool = False) -> str:
    """The pane's text (with its colours as ANSI codes when `ansi`)."""
    r = subprocess.run(["tmux", "capture-pane", "-p", *(["-e"] if ansi else []), "-t", session],
                       capture_output=True, text=True, timeout=10)
    return r.stdout


def keep_screenshot(session: str, name: str) -> None:
    """With HP_TOP_SCREENSHOT=FOLDER, the pane as it is now as FOLDER/name.svg (its colours)
    and FOLDER/name.txt; nothing without."""
    folder = os.environ.get("HP_TOP_SCREENSHOT")
    if not folder:
        return
    from hyperplane.teach.top import screenshot_svg
    ansi = screen(session, ansi=True)
    (Path(folder) / f"{name}.svg").write_text(screenshot_svg(ansi))
    (Path(folder) / f"{name}.txt").write_text(screen(session))


def serve_http(lab):
    """Python's http.server on host web, port HTTP, once it listens."""
    server = lab.popen("web", [sys.executable, "-m", "http.server", str(HTTP), "--bind",
                               "0.0.0.0", "--directory", str(ROOT / "docs" / "pictures")],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    listening = ("import socket, time\n"
                 "for i in range(100):\n"
                 "    try: socket.create_connection(('127.0.0.1', %d), 1).close(); break\n"
                 "    except OSError: time.sleep(0.1)\n"
                 "else: raise SystemExit('http.server does not listen')\n" % HTTP)
    r = lab.exec("web", [sys.executable, "-c", listening], timeout=20)
    assert r.returncode == 0, r.stderr
    return server


def wait_screen(session: str, predicate, what: str, timeout: float = 20.0,
                poll: float = 0.1) -> str:
    end = time.monotonic() + timeout
    text = ""
    while time.monotonic() < end:
        text = screen(session)
        if predicate(text):
            return text
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}; the screen:\n{text}")


def test_top_follows_a_connection_and_quits():
    with running_lab("[hyperplane.timeouts]\nTIME_WAIT = 4\n", ["--tcp", str(ECHO)]) as lab:
        session = f"hptop-{lab.prefix}"
        server = serve_http(lab)
        subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "80", "-y", "24",
                        f"cd {ROOT} && {sys.executable} -m hyperplane.cli top --prefix "
                        f"{lab.prefix}"], check=True, timeout=10)
        try:
            wait_screen(session, lambda t: "hyperplane top" in t and "ENI 0" in t, "top to start")
            web = lab.state.host("web")
            r = lab.exec("api", ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                 "--max-time", "5", f"http://{web.ipv4}:{HTTP}/"], timeout=20)
            assert r.returncode == 0 and r.stdout == "200", (r.stdout, r.stderr)
            text = wait_screen(session, lambda t: "→TIME_WAIT" in t, "TIME_WAIT")
            assert "→ESTABLISHED" in text and f"{web.ipv4}:{HTTP}" in text
            # The pools are read every REFRESH_S: the next read counts the port (TIME_WAIT
            # lasts longer).
            text = wait_screen(session, lambda t: "ENI 0 Active tcp4" in t and " 1/0/64999 " in t
                               and "tcp  TIME_WAIT" in t, "the port counted in ENI 0's pool")
            assert all(len(line) <= 80 for line in text.splitlines())
            keep_screenshot(session, "top-time-wait")
            # Past TIME_WAIT's 4 s the connection leaves (DESTROY) and then the window.
            wait_screen(session, lambda t: "gone (" in t, "the connection to leave", timeout=30)
            keep_screenshot(session, "top-gone")
            pressed = time.monotonic()
            subprocess.run(["tmux", "send-keys", "-t", session, "s"], check=True, timeout=10)
            wait_screen(session, lambda t: "sort state" in t, "the key s", timeout=5)
            print(f"key s shown after {(time.monotonic() - pressed) * 1000:.0f} ms")
            subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True, timeout=10)
            end = time.monotonic() + 10
            while time.monotonic() < end and subprocess.run(
                    ["tmux", "has-session", "-t", session], capture_output=True).returncode == 0:
                time.sleep(0.1)
            assert subprocess.run(["tmux", "has-session", "-t", session],
                                  capture_output=True).returncode != 0, "q did not quit"
        finally:
            subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
            server.kill()
            server.wait()
