"""The control socket: one JSON request per connection, one JSON answer.

The data-plane process listens on a Unix socket in the run directory; the CLI asks it for
status, connections, ENIs and counters. Requests are served by the data-plane's own loop
between batches, so answers are consistent snapshots and need no locks in the C core.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from .lab.topology import RUN_DIR

MAX_MESSAGE = 64 << 20


class ControlError(RuntimeError):
    pass


def socket_path(prefix: str, run_dir: str | Path | None = None) -> Path:
    return Path(run_dir or RUN_DIR) / f"{prefix}.sock"


def request(prefix: str, command: str, run_dir: str | Path | None = None,
            timeout: float = 10.0, **args) -> dict:
    """Sends one command to the running data plane and returns its answer."""
    path = socket_path(prefix, run_dir)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        s.close()
        raise ControlError(f"no data plane is running for lab {prefix!r} ({path} does not "
                           "answer); start it with: hyperplane up") from None
    with s:
        s.sendall(json.dumps({"command": command, **args}).encode() + b"\n")
        data = bytearray()
        while chunk := s.recv(1 << 16):
            data += chunk
            if len(data) > MAX_MESSAGE:
                raise ControlError("answer too large")
    if not data:
        raise ControlError("the data plane closed the connection without answering")
    answer = json.loads(data)
    if "error" in answer:
        raise ControlError(answer["error"])
    return answer


def listen(prefix: str, run_dir: str | Path | None = None) -> socket.socket:
    path = socket_path(prefix, run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    os.chmod(path, 0o600)
    s.listen(16)
    return s


def read_request(conn: socket.socket) -> dict:
    conn.settimeout(5.0)
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > 1 << 20:
            raise ControlError("request too large")
    req = json.loads(data or b"{}")
    if not isinstance(req, dict) or not isinstance(req.get("command"), str):
        raise ControlError("a request is a JSON object with a 'command'")
    return req


def reply(conn: socket.socket, answer: dict) -> None:
    try:
        conn.sendall(json.dumps(answer, default=str).encode())
    except OSError:
        pass
    finally:
        conn.close()
