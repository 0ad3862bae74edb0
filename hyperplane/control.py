"""The control socket: the CLI asks the running data plane for status, counters, ENIs and
connections over a Unix socket in the run folder.

Protocol (one connection per request): the client sends one JSON object on one line,
``{"command": NAME, ...arguments}``. The server answers with JSON lines:

- a one-shot answer is a single object (never with a "page" key);
- a listing is streamed: ``{"page": [item, ...]}`` lines, then ``{"done": true}``;
- a stream (``Stream``, e.g. the event stream) is a listing without an end, whose lines have
  no write deadline: its handler keeps nothing for a reader that stops reading (it simply
  produces nothing until the reader takes the line it holds); empty pages are heartbeats;
- an error, at any point (also in the middle of a listing), is ``{"error": "..."}``.

The server cannot be stalled by its clients: each client has its own thread and its own
deadlines (the request must arrive within ``read_timeout``; each line of the answer must be
taken within ``write_timeout``), the number of clients is bounded (past it a client gets a
"busy" error at once), and a listing produces its next page only when the previous one has
been sent, so a slow reader holds one page, not the whole table. Handlers run on the client
threads, never on the forwarding thread; they must use thread-safe calls only.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

from . import runfolder
from .errors import ControlError, ErrorAnswer, NotRunning

log = logging.getLogger("hyperplane.control")

MAX_REQUEST = 64 << 10       # a request is a command and a few arguments
MAX_LINE = 64 << 20          # one answer line (a page, or a one-shot answer) on the client
PAGE_SIZE = 1000             # items per page, the default of listings

Handler = Callable[[dict], "dict | Iterable[list]"]


def socket_path(prefix: str, run_dir: str | Path | None = None) -> Path:
    return runfolder.paths(prefix, run_dir).socket


class Stream:
    """A handler's answer that streams pages until the client goes away, without the write
    deadline of a listing: the handler must hold nothing while it waits for a slow reader."""

    def __init__(self, pages: Iterable[list]):
        self.pages = pages

    def __iter__(self):
        return iter(self.pages)


def _line(obj) -> bytes:
    return json.dumps(obj, default=str, separators=(",", ":")).encode() + b"\n"


# --- server -------------------------------------------------------------------------------

class ControlServer:
    """Serves requests on a Unix socket, one thread per client, at most ``max_clients``."""

    def __init__(self, path: str | Path, max_clients: int = 32, read_timeout: float = 2.0,
                 write_timeout: float = 5.0):
        self.path = Path(path)
        self.max_clients = max_clients
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.handlers: dict[str, Handler] = {}
        self._slots = threading.BoundedSemaphore(max_clients)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._clients: set[socket.socket] = set()
        self._client_threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self.counts = {"accepted": 0, "refused_busy": 0, "timed_out": 0, "bad_requests": 0,
                       "handler_errors": 0, "client_gone": 0}

    def register(self, command: str, handler: Handler) -> None:
        """``handler(request)`` returns a dict (one answer) or an iterable of pages (lists)."""
        self.handlers[command] = handler

    def _count(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1

    def stats(self) -> dict:
        with self._lock:
            return {**self.counts, "clients": len(self._clients)}

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> "ControlServer":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # bind under a temporary name and chmod before the rename: the socket is never
        # reachable with a wider mode
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(tmp))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
        s.listen(128)
        self._sock = s
        self._thread = threading.Thread(target=self._accept_loop, name="control-accept",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> list[threading.Thread]:
        """Stops accepting, cuts every client off and joins their threads (a handler may be
        inside the data plane: it must be out before the data plane is freed). Returns the
        threads still running after ``timeout`` (empty when all ended)."""
        deadline = time.monotonic() + timeout
        self._stopping.set()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)    # wakes accept()
            except OSError:
                pass
            self._sock.close()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            clients = list(self._clients)
        for c in clients:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        try:
            if self.path.exists() and self._sock is not None:
                self.path.unlink()
        except OSError:
            pass
        with self._lock:
            threads = list(self._client_threads)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return [t for t in threads if t.is_alive()]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- serving ---------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(0.01)      # e.g. EMFILE: let clients finish, never spin
                continue
            if not self._slots.acquire(blocking=False):
                self._refuse(conn)
                continue
            self._count("accepted")
            t = threading.Thread(target=self._serve, args=(conn,), name="control-client",
                                 daemon=True)
            with self._lock:
                self._clients.add(conn)
                self._client_threads.add(t)
            t.start()

    def _refuse(self, conn: socket.socket) -> None:
        """Past the bound: one short line, without waiting for the client in any way."""
        self._count("refused_busy")
        try:
            conn.setblocking(False)
            conn.send(_line({"error": f"busy: {self.max_clients} clients are being served; "
                                      "try again"}))
        except OSError:
            pass
        conn.close()

    def _serve(self, conn: socket.socket) -> None:
        try:
            try:
                req = self._read_request(conn)
            except socket.timeout:
                self._count("timed_out")
                self._send(conn, {"error": f"no complete request within "
                                           f"{self.read_timeout:g} s"})
                return
            except ValueError as e:
                self._count("bad_requests")
                self._send(conn, {"error": f"bad request: {e}"})
                return
            self._answer(conn, req)
        except socket.timeout:
            self._count("timed_out")          # the client did not take its answer in time
        except OSError:
            self._count("client_gone")
        finally:
            with self._lock:
                self._clients.discard(conn)
                self._client_threads.discard(threading.current_thread())
            conn.close()
            self._slots.release()

    def _read_request(self, conn: socket.socket) -> dict:
        deadline = time.monotonic() + self.read_timeout
        data = bytearray()
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout()
            conn.settimeout(left)
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_REQUEST:
                raise ValueError(f"longer than {MAX_REQUEST} bytes")
        line = bytes(data).split(b"\n", 1)[0].strip()
        if not line:
            raise ValueError("empty request")
        try:
            req = json.loads(line)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"not JSON ({e})") from None
        if not isinstance(req, dict) or not isinstance(req.get("command"), str):
            raise ValueError("a request is a JSON object with a 'command'")
        return req

    def _send(self, conn: socket.socket, obj, deadline: bool = True) -> None:
        """One line, within the write deadline (sendall's timeout covers the whole line);
        without a deadline for a Stream."""
        conn.settimeout(self.write_timeout if deadline else None)
        conn.sendall(_line(obj))

    def _answer(self, conn: socket.socket, req: dict) -> None:
        handler = self.handlers.get(req["command"])
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            self._send(conn, {"error": f"unknown command {req['command']!r}; known: {known}"})
            return
        try:
            answer = handler(req)
        except Exception as e:
            self._count("handler_errors")
            log.exception("control request %r failed", req.get("command"))
            self._send(conn, {"error": f"{type(e).__name__}: {e}"})
            return
        if isinstance(answer, dict):
            self._send(conn, answer)
            return
        deadline = not isinstance(answer, Stream)
        pages = iter(answer)
        try:
            while True:
                try:
                    page = next(pages)
                except StopIteration:
                    break
                except Exception as e:
                    self._count("handler_errors")
                    log.exception("listing %r failed", req.get("command"))
                    self._send(conn, {"error": f"{type(e).__name__}: {e}"})
                    return
                self._send(conn, {"page": list(page)}, deadline)
            self._send(conn, {"done": True})
        finally:
            close = getattr(pages, "close", None)
            if close:
                close()


def paged(items: Iterable, size: int = PAGE_SIZE) -> Iterator[list]:
    """Groups an iterable into pages, taking from it only as pages are sent."""
    page = []
    for item in items:
        page.append(item)
        if len(page) >= size:
            yield page
            page = []
    if page:
        yield page


def cursor_pages(fetch: Callable[[int, int], tuple[list, int | None]], convert=lambda x: x,
                 size: int = PAGE_SIZE) -> Iterator[list]:
    """Pages from a cursor API such as ``Nat.connections_page(cursor, limit)``: one fetch per
    page, made when the previous page has been sent."""
    cursor = 0
    while cursor is not None:
        items, cursor = fetch(cursor, size)
        if items:
            yield [convert(x) for x in items]


# --- client -------------------------------------------------------------------------------

class _Connection:
    """One request on one connection; the answer is read line by line."""

    def __init__(self, path: Path, command: str, args: dict, timeout: float):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            self.sock.close()
            raise NotRunning(f"no data plane is running here ({path} does not answer); "
                             "start it with: hyperplane up") from None
        except socket.timeout:
            self.sock.close()
            raise ControlError(f"the data plane did not accept within {timeout:g} s") from None
        except OSError as e:
            self.sock.close()
            raise ControlError(f"cannot reach the data plane at {path}: {e.strerror}") from None
        self.timeout = timeout
        self.file = self.sock.makefile("rb")
        try:
            self.sock.sendall(_line({"command": command, **args}))
        except socket.timeout:
            self.close()
            raise ControlError(f"the data plane did not take the request within "
                               f"{timeout:g} s") from None
        except OSError as e:
            # the server may have answered and closed first (e.g. "busy"): say what it said
            try:
                self.read()
            except ErrorAnswer:
                self.close()
                raise
            except ControlError:
                pass
            self.close()
            raise ControlError(f"sending the request failed: {e.strerror or e}") from None

    def read(self) -> dict:
        try:
            line = self.file.readline(MAX_LINE + 1)
        except socket.timeout:
            raise ControlError(f"the data plane did not answer within {self.timeout:g} s") \
                from None
        except OSError as e:
            raise ControlError(f"reading the answer failed: {e.strerror or e}") from None
        if not line:
            raise ControlError("the data plane closed the connection without answering")
        if len(line) > MAX_LINE:
            raise ControlError(f"an answer line is longer than {MAX_LINE} bytes")
        try:
            obj = json.loads(line)
        except ValueError:
            raise ControlError("the data plane's answer is not JSON") from None
        if not isinstance(obj, dict):
            raise ControlError("the data plane's answer is not a JSON object")
        if "error" in obj:
            raise ErrorAnswer(str(obj["error"]))
        return obj

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def _path(prefix: str | None, run_dir, path) -> Path:
    if path is not None:
        return Path(path)
    return socket_path(prefix, run_dir)


def request(prefix: str | None, command: str, run_dir: str | Path | None = None,
            timeout: float = 10.0, path: str | Path | None = None, **args) -> dict:
    """Sends one command and returns its one-shot answer. A listing's pages are gathered
    into ``{"items": [...]}`` (use ``listing()`` to handle them as they come)."""
    c = _Connection(_path(prefix, run_dir, path), command, args, timeout)
    try:
        first = c.read()
        if "done" in first:                 # an empty listing
            return {"items": []}
        if "page" not in first:
            return first
        items = list(first["page"])
        while "done" not in (obj := c.read()):
            items.extend(obj.get("page", ()))
        return {"items": items}
    finally:
        c.close()


def listing(prefix: str | None, command: str, run_dir: str | Path | None = None,
            timeout: float = 10.0, path: str | Path | None = None, **args) -> Iterator[list]:
    """Sends one command whose answer is a listing and yields its pages as they arrive;
    ``timeout`` bounds the wait for each page. The connection is opened at once (so a data
    plane that is not running raises here, not at the first ``next()``)."""
    c = _Connection(_path(prefix, run_dir, path), command, args, timeout)
    return _pages(c)


def _pages(c: _Connection) -> Iterator[list]:
    try:
        while True:
            obj = c.read()
            if "done" in obj:
                return
            if "page" not in obj:
                raise ControlError("expected a listing, got a one-shot answer")
            yield obj["page"]
    finally:
        c.close()
