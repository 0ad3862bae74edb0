"""The public Python API: ``hyperplane.Lab``, a running lab that a test drives.

    import hyperplane

    with hyperplane.Lab.up("lab.toml") as lab:          # a fresh prefix, removed at the end
        lab.popen("web", ["python3", "-m", "http.server", "8080"])
        out = lab.run("api", "curl -s http://web:8080/")
        conn, = lab.connections(function="api", dport=8080)
        assert conn.nat_addr == lab.enis()[0]["ipv4"]

``Lab.up`` does what ``hyperplane up --detach`` does (the namespaces built, a supervisor and
its data plane started, the control socket answering) and ``Lab.attach(prefix)`` picks up a
lab that is already up, e.g. one made by the CLI. Everything the lab made is found again by its
prefix, so ``down()`` removes it also after the data plane crashed.

This is the one public ``Lab``. ``hyperplane.lab.Lab`` (``hyperplane/lab/builder.py``) is the
internal namespace builder underneath it: it builds and removes namespaces and links, and
starts no data plane.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import signal as _signal
import socket
import string
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence, TypeVar, Union

from . import control, ctcontrol, runfolder
from .config import Config, default_config, load_config, parse_config
from .connection import Connection
from .ctcontrol import EventStream
from .ctfilter import KEYS
from .errors import ConfigError, LabError
from .lab.names import is_lab_namespace

if TYPE_CHECKING:
    from .capture import SidesCapture
    from .lab.state import FunctionInfo, HostInfo, LabState

T = TypeVar("T")
ConfigLike = Union[Config, Mapping[str, Any], str, "os.PathLike[str]", None]
Argv = Union[Sequence[str], str]

PREFIX_LEAD = "l"               # prefixes Lab.up chooses: "l" and 3 of [a-z0-9]
PREFIX_ALPHABET = string.ascii_lowercase + string.digits
DEFAULT_EXEC_TIMEOUT_S = 60.0
CONTROL_TIMEOUT_S = 10.0        # a control request's answer


class CommandFailed(LabError):
    """``Lab.run`` with ``check=True``: the command exited with a non-zero status."""

    def __init__(self, name: str, command: str, result: "subprocess.CompletedProcess[str]"):
        self.result = result
        detail = (result.stderr or result.stdout or "").strip()
        super().__init__(f"{name}: `{command}` exited with {result.returncode}"
                         + (f": {detail}" if detail else ""))


class WaitTimeout(LabError, TimeoutError):
    """``Lab.wait_for``: the condition did not hold before the deadline."""


def as_config(config: ConfigLike) -> Config:
    """A typed lab config from a path (TOML), a mapping (the TOML's tables), a ``Config``, or
    None (the built-in lab). Raises ``ConfigError`` naming the bad field."""
    if config is None:
        return default_config()
    if isinstance(config, Config):
        return config
    if isinstance(config, Mapping):
        return parse_config(config, source="<dict>")
    return load_config(os.fspath(config))


def missing_requirements() -> list[str]:
    """What this machine lacks to run a lab (empty when nothing): root, and the kernel's
    network namespaces, AF_PACKET sockets and IPv6, and iproute2's ``ip``."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (network namespaces and AF_PACKET sockets need CAP_NET_ADMIN and "
                       "CAP_SYS_ADMIN): run as root, e.g. with sudo")
    for path, what in (("/proc/self/ns/net", "network namespaces (CONFIG_NET_NS)"),
                       ("/proc/net/packet", "AF_PACKET sockets (CONFIG_PACKET)"),
                       ("/proc/sys/net/ipv6", "IPv6 (CONFIG_IPV6)")):
        if not Path(path).exists():
            missing.append(f"the kernel's {what}")
    if not any((Path(d) / "ip").exists() for d in os.get_exec_path()):
        missing.append("iproute2's `ip` command (ip netns exec)")
    return missing


# --- prefixes: one process owns a lab's prefix ----------------------------------------------

class _PrefixLock:
    """An flock on ``{run_dir}/{prefix}.lock``, held while this process owns the lab: two
    processes (pytest-xdist workers) never build under the same prefix, and a crashed owner's
    lock goes with it."""

    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd

    @classmethod
    def take(cls, path: Path) -> "_PrefixLock | None":
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            try:        # the file we locked is still the one at the path (not unlinked)
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    return cls(path, fd)
            except FileNotFoundError:
                pass
            os.close(fd)

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()          # while held: the next taker makes a new file
            os.close(self.fd)
            self.fd = -1


def _prefix_in_use(prefix: str, run_dir: Path) -> bool:
    """Whether anything of a lab ``prefix`` exists (namespaces, links, state, a process)."""
    from .lab import netns
    from .lab.state import LabState
    if any(is_lab_namespace(prefix, n) for n in netns.list_namespaces()):
        return True
    if any(name.startswith(prefix + "-") for _, name in socket.if_nameindex()):
        return True
    if LabState.path(prefix, run_dir).exists():
        return True
    return runfolder.pid_of(prefix, runfolder.SUPERVISOR, run_dir) is not None


def _take_prefix(prefix: str | None, run_dir: Path) -> tuple[str, _PrefixLock]:
    if prefix is not None:
        lock = _PrefixLock.take(run_dir / f"{prefix}.lock")
        if lock is None:
            raise LabError(f"lab {prefix!r} is owned by another process")
        return prefix, lock
    for _ in range(1000):                  # bounded: 46,656 names
        p = PREFIX_LEAD + "".join(random.choice(PREFIX_ALPHABET) for _ in range(3))
        lock = _PrefixLock.take(run_dir / f"{p}.lock")
        if lock is None:
            continue
        if not _prefix_in_use(p, run_dir):
            return p, lock
        lock.release()
    raise LabError("no free lab prefix found (too many labs up?)")


# --- counter deltas -------------------------------------------------------------------------

def flat_counters(stats: Mapping[str, Any]) -> dict[str, int]:
    """The data plane's counters in one flat mapping: the NAT's and the forwarding loop's
    (``fwd_out_packets``, ``rx_frames``, ...), drops and punts by reason summed over both
    (``drop.IN_UNSOLICITED_SYN``, ``punt.ARP``), and ``connections``."""
    from .metrics import split_reasons
    out: dict[str, int] = {}
    for stage in ("nat", "dataplane"):
        for key, value in split_reasons(stats.get(stage, {})).items():
            if isinstance(value, int):
                out[key] = out.get(key, 0) + value
    out["connections"] = int(stats.get("connections", 0))
    return out


class Counting(Mapping[str, int]):
    """Counter deltas over a ``with lab.counting() as c:`` block: ``c["drop.X"]`` is how much
    counter ``drop.X`` grew. Read inside the block, a value is the growth so far; after the
    block, the growth over the whole block. An unknown name raises KeyError (with the known
    ones), so a typo does not read as 0."""

    def __init__(self, read: Callable[[], dict[str, int]]):
        self._read = read
        self.before = read()
        self.after: dict[str, int] | None = None

    def _deltas(self) -> dict[str, int]:
        after = self.after if self.after is not None else self._read()
        return {k: after.get(k, 0) - self.before.get(k, 0) for k in {**self.before, **after}}

    def __getitem__(self, name: str) -> int:
        deltas = self._deltas()
        if name not in deltas:
            raise KeyError(f"no counter {name!r}; known: {', '.join(sorted(deltas))}")
        return deltas[name]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._deltas()))

    def __len__(self) -> int:
        return len(self._deltas())

    def changed(self) -> dict[str, int]:
        """The counters that moved, with their deltas."""
        return {k: v for k, v in sorted(self._deltas().items()) if v}

    def __repr__(self) -> str:
        return f"<Counting {self.changed()}>"


# --- the lab ----------------------------------------------------------------------------------

CONNECTION_FILTERS = tuple(k for k in KEYS if k != "owner")    # owner: function names it


class Lab:
    """A running lab: namespaces for the functions and the customer's hosts, the NAT's data
    plane between them (kept running by its supervisor), and a control socket to ask it.

    Make one with ``Lab.up(config)`` (it builds and starts the lab, and ``with`` removes it) or
    ``Lab.attach(prefix)`` (a lab that is already up). Names of functions and hosts are the
    config's; every function and host resolves the others' names.
    """

    def __init__(self, state: LabState, run_dir: Path | None = None, *, owned: bool = False,
                 _lock: _PrefixLock | None = None):
        """Use ``Lab.up`` or ``Lab.attach``."""
        self._state = state
        self.run_dir = run_dir
        self.owned = owned
        self._lock = _lock
        self._procs: list[subprocess.Popen[Any]] = []
        self._down = False

    # -- making and removing -------------------------------------------------------------------

    @classmethod
    def up(cls, config: ConfigLike = None, prefix: str | None = None, *,
           run_dir: str | os.PathLike[str] | None = None,
           timeout: float = runfolder.START_TIMEOUT_S,
           progress: Callable[[], None] | None = None,
           notice: Callable[[str], None] = lambda text: None) -> "Lab":
        """Builds the lab of ``config`` and starts its data plane; returns once it forwards.

        ``config``: a TOML path, a mapping of the same tables, a ``Config``, or None for the
        built-in lab. ``prefix``: the name prefix of everything the lab makes (1-4 of
        [a-z0-9]); None chooses a fresh one that no lab uses (the config's own ``prefix`` is
        the CLI's). Use it as a context manager to remove the lab at the end, whatever
        happens: ``with Lab.up(cfg) as lab: ...``.

        ``progress``: called now and then while the data plane starts; ``notice``: called
        with a line of text for what the user should know (as ``hyperplane up`` prints).

        Raises ``ConfigError`` (bad config), ``LabError`` (the prefix is taken by another
        process, or the lab cannot be built) or ``RuntimeFailure`` (the data plane did not
        start; the message has its log's last lines).
        """
        cfg = as_config(config)
        folder = runfolder.ensure_run_dir(run_dir)
        chosen, lock = _take_prefix(prefix, folder)
        try:
            cfg = cfg.with_prefix(chosen)
        except ConfigError:
            lock.release()
            raise
        rd = Path(run_dir) if run_dir is not None else None
        try:
            from . import runtime
            state, _pid = runtime.up(cfg, run_dir=rd, progress=progress, notice=notice)
        except BaseException:
            lock.release()
            raise
        return cls(state, rd, owned=True, _lock=lock)

    @classmethod
    def attach(cls, prefix: str, run_dir: str | os.PathLike[str] | None = None) -> "Lab":
        """The lab ``prefix`` that is already up (made by ``hyperplane up`` or another
        process). ``with`` leaves it up; ``down()`` removes it. LabError when it is not up."""
        from .lab.state import LabState
        rd = Path(run_dir) if run_dir is not None else None
        try:
            state = LabState.load(prefix, rd)
        except FileNotFoundError:
            raise LabError(f"lab {prefix!r} is not up (no {LabState.path(prefix, rd)})") \
                from None
        return cls(state, rd)

    @classmethod
    def prefixes(cls, run_dir: str | os.PathLike[str] | None = None) -> list[str]:
        """The prefixes of the labs that are up (those with a saved state in the run
        folder), sorted."""
        return runfolder.prefixes(run_dir)

    @classmethod
    def remove(cls, prefix: str, run_dir: str | os.PathLike[str] | None = None, *,
               keep_logs: bool = False) -> Any:
        """Removes lab ``prefix`` whatever is left of it, as ``hyperplane down`` does (also
        one whose state is gone); returns the cleanup's report: ``killed`` (pids),
        ``namespaces``, ``links``, ``errors`` and ``removed_anything``."""
        from . import runtime
        return runtime.down(prefix, run_dir, keep_logs=keep_logs)

    @classmethod
    def conntrack_count(cls, prefix: str, spec: Mapping[str, Any], *,
                        run_dir: str | os.PathLike[str] | None = None,
                        timeout: float = CONTROL_TIMEOUT_S) -> int:
        """How many connections of lab ``prefix`` pass ``spec``, a filter in the data plane's
        form (``hyperplane.ctfilter``'s keys and ``function``), as ``conntrack -C`` counts
        them; ``NotRunning`` when no data plane answers."""
        return int(control.request(prefix, "conntrack-count", run_dir, timeout,
                                   filter=dict(spec))["count"])

    @classmethod
    def conntrack_pages(cls, prefix: str, spec: Mapping[str, Any], *, delete: bool = False,
                        brief: bool = False, run_dir: str | os.PathLike[str] | None = None,
                        timeout: float = CONTROL_TIMEOUT_S) -> Iterator[list[dict[str, Any]]]:
        """The connections of lab ``prefix`` that pass ``spec`` (as ``conntrack_count``), as
        pages of listing dicts while they arrive (``hyperplane conntrack -L``); ``delete``:
        deletes them and lists what it deleted (``-D``), ``brief`` with it: each page one
        ``{"deleted": n}``. ``timeout`` bounds the wait for each page. Asked at once, so
        ``NotRunning`` raises here when no data plane answers."""
        extra = {"brief": True} if brief else {}
        return control.listing(prefix, "conntrack-delete" if delete else "conntrack", run_dir,
                               timeout, filter=dict(spec), **extra)

    @classmethod
    def conntrack_events(cls, prefix: str, spec: Mapping[str, Any], *,
                         run_dir: str | os.PathLike[str] | None = None,
                         timeout: float | None = None) -> EventStream:
        """The events of lab ``prefix`` that pass ``spec`` (as ``conntrack_count``), as
        ``hyperplane conntrack -E`` shows them: the iterator ``events()`` gives, for a lab
        known only by its prefix. ``NotRunning`` when no data plane answers."""
        return EventStream(prefix, dict(spec), run_dir=run_dir, timeout=timeout)

    def down(self, keep_logs: bool = False) -> None:
        """Stops the data plane and its supervisor and removes every namespace, link and file
        of the lab (``keep_logs``: not its log and flow logs). Safe to call again."""
        try:
            self.remove(self.prefix, self.run_dir, keep_logs=keep_logs)
        finally:
            for p in self._procs:           # killed by the cleanup: collect them
                with contextlib.suppress(Exception):
                    p.kill()
                    p.wait(5)
            self._procs.clear()
            self._down = True
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def detach(self) -> None:
        """Leaves the lab up after this process: ``with`` no longer removes it, another
        process may take it over (``Lab.attach``, ``hyperplane down``)."""
        self.owned = False
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.owned:
            self.down()

    def __repr__(self) -> str:
        return f"<hyperplane.Lab {self.prefix!r}{' down' if self._down else ''}>"

    # -- what the lab is -----------------------------------------------------------------------

    @property
    def prefix(self) -> str:
        """The name prefix of everything this lab made."""
        return self._state.prefix

    @property
    def state(self) -> LabState:
        """The lab as built (namespaces, functions, hosts, subnets, ENIs), re-read from its
        saved state so ENIs added while it runs are there."""
        from .lab.state import LabState
        with contextlib.suppress(FileNotFoundError, ValueError):
            self._state = LabState.load(self.prefix, self.run_dir)
        return self._state

    @property
    def config(self) -> Config:
        """The typed config the lab was built from (its prefix this lab's)."""
        return self._state.config

    @property
    def functions(self) -> list[str]:
        """The functions' names."""
        return [f.name for f in self._state.functions]

    @property
    def hosts(self) -> list[str]:
        """The customer hosts' names."""
        return [h.name for h in self._state.hosts]

    @property
    def pid(self) -> int | None:
        """The data plane's pid, None while it does not run."""
        return runfolder.pid_of(self.prefix, runfolder.DATAPLANE, self.run_dir)

    @property
    def log_path(self) -> Path:
        """The data plane's (and its supervisor's) log file."""
        return runfolder.paths(self.prefix, self.run_dir).log

    def namespace(self, name: str) -> str:
        """The network namespace of a function or host (or a namespace name itself)."""
        try:
            return self._state.namespace_of(name)
        except KeyError as e:
            raise LabError(str(e.args[0])) from None

    def _member(self, name: str) -> FunctionInfo | HostInfo:
        for item in (*self._state.functions, *self._state.hosts):
            if item.name == name:
                return item
        raise LabError(f"no function or host named {name!r} in lab {self.prefix!r} "
                       f"(functions: {', '.join(self.functions)}; hosts: "
                       f"{', '.join(self.hosts)})")

    def address(self, name: str, family: int = 4) -> str:
        """A function's or host's IPv4 (``family=4``) or IPv6 (``family=6``) address."""
        if family not in (4, 6):
            raise ValueError(f"family is 4 or 6, not {family!r}")
        item = self._member(name)
        addr = item.ipv4 if family == 4 else item.ipv6
        if addr is None:
            raise LabError(f"{name} has no IPv6 address (its network is IPv4 only)")
        return addr

    # -- running commands inside ---------------------------------------------------------------

    def exec(self, name: str, argv: Argv, *, check: bool = False,
             timeout: float | None = DEFAULT_EXEC_TIMEOUT_S, input: str | None = None,
             env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None
             ) -> "subprocess.CompletedProcess[str]":
        """Runs ``argv`` in the namespace of function or host ``name`` and waits for it;
        output is captured as text. A string runs through ``sh -c``. ``check``: raise
        ``subprocess.CalledProcessError`` on a non-zero exit. Names of the lab resolve."""
        from .lab import netns
        return netns.exec(self.namespace(name), argv, check=check, timeout=timeout,
                          input=input, env=dict(env) if env is not None else None, cwd=cwd)

    def popen(self, name: str, argv: Argv, **kwargs: Any) -> "subprocess.Popen[Any]":
        """Starts ``argv`` in the namespace of ``name`` (``subprocess.Popen`` keyword
        arguments apply) and returns at once; ``down()`` stops it if it still runs."""
        from .lab import netns
        proc: subprocess.Popen[Any] = netns.popen(self.namespace(name), argv, **kwargs)
        self._procs.append(proc)
        return proc

    def run(self, name: str, command: str, *, check: bool = True,
            timeout: float | None = DEFAULT_EXEC_TIMEOUT_S) -> str:
        """Runs a shell command line in the namespace of ``name`` and returns its standard
        output (as Mininet's ``node.cmd``). ``check``: raise ``CommandFailed`` (with its
        stderr) on a non-zero exit."""
        result = self.exec(name, command, timeout=timeout)
        if check and result.returncode != 0:
            raise CommandFailed(name, command, result)
        return result.stdout

    # -- asking the data plane -----------------------------------------------------------------

    def _ask(self, command: str, timeout: float = CONTROL_TIMEOUT_S, **args: Any
             ) -> dict[str, Any]:
        answer: dict[str, Any] = control.request(self.prefix, command, run_dir=self.run_dir,
                                                 timeout=timeout, **args)
        return answer

    def connections(self, **filters: Any) -> list[Connection]:
        """The tracked connections that pass every filter given, as ``hyperplane conntrack``
        filters them (in the data plane, while it scans the table): ``proto`` ("tcp", "udp"
        or 6, 17), ``family`` (4, 6), ``src`` / ``dst`` (an address or a prefix) and ``sport``
        / ``dport`` (a port or a range "lo-hi") of the original tuple, as the function sent
        it; ``nat_addr`` / ``nat_port``, the ENI's side; ``state`` (a name or a list);
        ``function`` (a name); ``eni`` (the ENI's index, or its ``eni-...`` id); ``assured``
        (bool)."""
        return [Connection.from_dict(item) for item in
                ctcontrol.connections(self.prefix, self._filter_spec(filters), self.run_dir)]

    def _filter_spec(self, filters: dict[str, Any]) -> dict[str, Any]:
        """The filters of connections() / events() as the data plane takes them."""
        unknown = set(filters) - set(CONNECTION_FILTERS)
        if unknown:
            raise TypeError(f"unknown connection filter(s) {', '.join(sorted(unknown))}; "
                            f"known: {', '.join(CONNECTION_FILTERS)}")
        spec = {k: v for k, v in filters.items() if v is not None}
        if isinstance(spec.get("eni"), str):
            spec["eni"] = self._eni_index(spec["eni"])
        return spec

    def events(self, *, timeout: float | None = None, **filters: Any) -> EventStream:
        """The connection table's events from now on, as ``hyperplane conntrack -E`` shows
        them, filtered as ``connections()``: an iterator of dicts with the keys docs/cli.md
        lists ("JSON keys of an event"), in the order the table changed: ``NEW``, ``UPDATE``
        (a state change, or the connection answered or assured; ``old_state`` says what it
        was), ``DESTROY`` (``reason``: EXPIRED, RESET, DELETED, EARLY_DROP, REOPENED), each
        with both tuples, the ENI and the function; and a ``LOST`` item when this reader fell
        so far behind that the data plane dropped events for it (``stream.lost`` counts
        them). Subscribed when this returns, so nothing that happens after is missed. Use it
        in a ``with`` block (or ``close()`` it); ``timeout``: TimeoutError when no event
        comes for that long::

            with lab.events(proto="tcp", dport=8080, timeout=10) as events:
                lab.exec("api", ["curl", "-s", f"http://{web}:8080/"])
                assert next(iter(events))["event"] == "NEW"
        """
        return EventStream(self.prefix, self._filter_spec(filters), run_dir=self.run_dir,
                           timeout=timeout)

    def capture(self, folder: str | os.PathLike[str]) -> "SidesCapture":
        """Captures on both sides of the NAT into ``folder`` while a ``with`` block runs (or
        from ``start()`` to ``stop()``): ``inside.pcap`` (the functions' side),
        ``outside.pcap`` (the customer VPC's, every ENI) and ``index.json``, which pairs each
        connection's two halves (tuple, display filter, frame numbers); tshark and Wireshark
        read the pcaps (hyperplane/capture.py)::

            with lab.capture(tmp_path):
                lab.exec("api", ["curl", "-s", f"http://{web}:8080/"])
            index = json.loads((tmp_path / "index.json").read_text())
        """
        from .capture import SidesCapture
        return SidesCapture(self.prefix, folder, self.state, self.run_dir)

    def count(self, **filters: Any) -> int:
        """How many connections pass the filters (``conntrack -C``), counted in the data
        plane without listing them."""
        return ctcontrol.count(self.prefix, self._filter_spec(filters), self.run_dir)

    def delete(self, **filters: Any) -> int:
        """Deletes the connections that pass the filters (``conntrack -D``; no filter: all of
        them, ``-F``) and returns how many: the NAT forgets them as on expiry (their flow-log
        records closed, their ports quarantined), so the next packet of one is a new
        connection's, or is refused as unsolicited from outside."""
        return ctcontrol.delete(self.prefix, self._filter_spec(filters), self.run_dir)

    def connection(self, **filters: Any) -> Connection:
        """The one connection that matches ``filters`` (as ``connections``); LookupError,
        with the table, when none or several do."""
        found = self.connections(**filters)
        if len(found) == 1:
            return found[0]
        from .render import conntrack_table
        listed = ", ".join(f"{k}={v!r}" for k, v in filters.items())
        raise LookupError(f"{len(found)} connections match {listed or 'no filter'} (want 1); "
                          "the table:\n" + conntrack_table([c.to_dict()
                                                            for c in self.connections()]))

    def _eni_index(self, eni: int | str) -> int:
        if isinstance(eni, int):
            return eni
        for e in self.state.enis:
            if eni in (e.eni_id, e.ifname):
                return e.id
        raise LabError(f"no ENI {eni!r} in lab {self.prefix!r}")

    def status(self, timeout: float = CONTROL_TIMEOUT_S) -> dict[str, Any]:
        """The data plane's own view (``pid``, ``uptime_s``, ``connections``, ``enis``);
        ``timeout``: how long to wait for the answer (``ControlError`` after it)."""
        return self._ask("status", timeout)

    def supervision(self) -> dict[str, Any]:
        """What the supervisor knows, without asking the data plane: ``running``,
        ``supervisor_pid``, ``pid`` and ``restarts`` (the restart record)."""
        from . import runtime
        return runtime.status(self.prefix, self.run_dir)

    @property
    def supervisor_pid(self) -> int | None:
        """The supervisor's pid, None once it exited."""
        return runfolder.pid_of(self.prefix, runfolder.SUPERVISOR, self.run_dir)

    @property
    def paths(self) -> runfolder.RunPaths:
        """The lab's files in the run folder (``log``, ``flow_logs``, ...)."""
        return runfolder.paths(self.prefix, self.run_dir)

    def picture(self) -> str:
        """The lab as ``hyperplane up`` and ``status`` draw it: functions, the data plane,
        ENIs, subnets and hosts."""
        from .render import lab_picture
        from . import runtime
        return lab_picture(self.state, self.status(), runtime.restarts(self.prefix,
                                                                       self.run_dir))

    def stats(self, timeout: float = CONTROL_TIMEOUT_S) -> dict[str, Any]:
        """Everything the data plane counts (``hyperplane stats --json``): ``nat`` and
        ``dataplane`` counters, ENIs with their pools, per-function and per-ENI figures.
        ``timeout``: how long to wait for the answer (``ControlError`` after it)."""
        return self._ask("stats", timeout)

    def counters(self) -> dict[str, int]:
        """The counters as one flat mapping (``flat_counters``): ``drop.<REASON>``,
        ``punt.<REASON>``, ``fwd_out_packets``, ``conn_created``, ``connections``, ..."""
        return flat_counters(self.stats())

    @contextlib.contextmanager
    def counting(self) -> Iterator[Counting]:
        """Counter deltas over a block::

            with lab.counting() as c:
                lab.exec("web", ["curl", "-m", "1", f"http://{eni}:80/"])
            assert c["drop.IN_UNSOLICITED_SYN"] >= 1
        """
        c = Counting(self.counters)
        try:
            yield c
        finally:
            with contextlib.suppress(control.ControlError):
                c.after = self.counters()

    def enis(self) -> list[dict[str, Any]]:
        """The ENIs as the data plane sees them (``hyperplane eni --json``): id, index,
        status, subnet, security groups, addresses, ports per pool."""
        enis: list[dict[str, Any]] = self._ask("eni")["enis"]
        return enis

    def flow_logs(self, eni: int | str | None = None) -> list[dict[str, str]]:
        """The flow-log records written so far (oldest first), each a dict keyed by the
        format's field names (``srcaddr``, ``dstport``, ``action``, ...), values as written.
        Records are written once per aggregation interval (``[hyperplane.flow_logs]
        interval_s``): wait for one with ``wait_for``. ``eni``: one ENI's only."""
        from .flowlog import parse
        folder = self.flow_log_folder
        if not folder.is_dir():
            return []
        records: list[dict[str, str]] = []
        wanted = None if eni is None else self._interface_id(eni)
        for f in sorted(folder.glob("*.log*"), key=_rotation_order):
            if wanted is None or f.name.split(".")[0] == wanted:
                records += parse(f)
        return records

    @property
    def flow_log_folder(self) -> Path:
        """Where the data plane writes the flow logs (one file per ENI)."""
        configured = self._state.config.hyperplane.flow_logs.folder
        return Path(configured) if configured else \
            runfolder.paths(self.prefix, self.run_dir).flow_logs

    def _interface_id(self, eni: int | str) -> str:
        index = self._eni_index(eni)
        for e in self._state.enis:
            if e.id == index:
                return e.eni_id
        raise LabError(f"no ENI {eni!r} in lab {self.prefix!r}")

    def wait_for(self, predicate: Callable[[], T], timeout: float = 10.0,
                 interval: float = 0.05, message: str | None = None) -> T:
        """Calls ``predicate()`` until it returns something true, and returns that; raises
        ``WaitTimeout`` after ``timeout`` seconds (with ``message``, if given)."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise WaitTimeout(message or f"not true within {timeout:g} s: "
                                             f"{getattr(predicate, '__name__', predicate)}")
            time.sleep(interval)

    # -- crash tests and changes ---------------------------------------------------------------

    def kill_dataplane(self, sig: int = _signal.SIGKILL, *, wait: bool = True,
                       timeout: float = runfolder.START_TIMEOUT_S) -> int | None:
        """Sends ``sig`` (SIGKILL: a crash) to the data plane. Its supervisor starts a new one
        on the same shared-memory state; ``wait``: return that one's pid once it answers
        (else None at once). LabError when no data plane runs."""
        proc = runfolder.Proc.find(self.prefix, runfolder.DATAPLANE, self.run_dir)
        if proc is None:
            raise LabError(f"the data plane of lab {self.prefix!r} is not running")
        with proc:
            proc.signal(sig)
            if not wait:
                return None
            proc.wait(runfolder.STOP_TIMEOUT_S)
        sup = runfolder.Proc.find(self.prefix, runfolder.SUPERVISOR, self.run_dir)
        try:
            from . import runtime
            return runtime.wait_ready(self.prefix, self.run_dir, timeout, old_pid=proc.pid,
                                      watch=sup)
        finally:
            if sup is not None:
                sup.close()

    def restart_dataplane(self, timeout: float = runfolder.START_TIMEOUT_S) -> int:
        """Restarts the data plane in order (as ``hyperplane restart``); its new pid once it
        answers. Connections survive (the state is in shared memory)."""
        from . import runtime
        return runtime.restart(self.prefix, self.run_dir, timeout)

    def set_function(self, name: str, subnet: str, security_groups: Sequence[str] = ()) -> str:
        """Changes a running function's VPC config: its new connections open on the ENIs of
        (``subnet``, ``security_groups``), made when new; live ones keep theirs. Returns the
        ENI group's key."""
        answer = self._ask("set-function", function=name, subnet=subnet,
                           security_groups=list(security_groups))
        return str(answer["group"])

    # -- for a failing test ----------------------------------------------------------------------

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the data plane's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def report(self, log_lines: int = 30) -> str:
        """What the lab looks like now, as text: its connection table, the counters that are
        not zero, the ENIs and the data plane's log tail (what the pytest plugin adds to a
        failing test's report)."""
        from .render import conntrack_table, eni_table
        parts = [f"lab {self.prefix!r}, data plane pid {self.pid}"]
        for title, make in (
                ("connections", lambda: conntrack_table(
                    [c.to_dict() for c in self.connections()])),
                ("counters (not zero)", lambda: "\n".join(
                    f"  {k} = {v}" for k, v in sorted(self.counters().items()) if v)
                 or "  (all zero)"),
                ("ENIs", lambda: eni_table(self.enis()))):
            try:
                body = make()
            except Exception as e:          # a dead data plane still gets a report
                body = f"  (not available: {e})"
            parts.append(f"-- {title}\n{body}")
        parts.append(f"-- data plane log ({self.log_path}), last lines\n"
                     f"{self.log_tail(log_lines)}")
        return "\n".join(parts)


def _rotation_order(path: Path) -> tuple[str, int]:
    """eni-x.log.2 before eni-x.log.1 before eni-x.log: oldest records first."""
    head, _, tail = path.name.partition(".log")
    return head, -int(tail[1:]) if tail[1:].isdigit() else 0
